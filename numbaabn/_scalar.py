"""Scalar math written once and compiled for each target.

``cpu.py`` compiles these with ``numba.njit(inline="always")``, ``cuda.py`` with
``numba.cuda.jit(device=True)``. Activations come in three families, each a set
of four functions with the same signatures:

===========  ===========================  ============================  ========================
family       z = act(y)                   y = act⁻¹(z)                  dL/dy from z, dL/dz
===========  ===========================  ============================  ========================
leaky        y if y >= 0 else a*y         z if z >= 0 else z/a          dz if z >= 0 else a*dz
elu          y if y >= 0 else a*expm1(y)  z if z >= 0 else log1p(z/a)   dz if z >= 0 else dz*(z+a)
relu         y if y >= 0 else 0           (not invertible)              (standard path only)
===========  ===========================  ============================  ========================

``"identity"`` is the leaky family with ``a = 1`` (exactly: every branch returns
its input). ``ia`` is ``1/a``; ``lo`` is the value just above -1 in the compute
dtype, to which ELU's inverse clamps ``z/a`` so that ``log1p`` stays finite. Each
branch is a cheap expression, so compilers turn the branches into selects and
vectorize. The ``act_*`` dispatchers choose the family from an integer code (for
targets where a uniform branch is free, such as CUDA).
"""
import math

import numpy as np

IDENTITY, LEAKY_RELU, ELU, RELU = 0, 1, 2, 3
FAMILY = {IDENTITY: "leaky", LEAKY_RELU: "leaky", ELU: "elu", RELU: "relu"}

# Zeros are written ``a - a`` (a is a finite scalar of the compute dtype): an integer
# literal would promote float32 arithmetic to float64 in Numba.


def leaky_forward(y, a):
    t = y * a
    if a <= 1:
        return y if y > t else t
    return y if y < t else t


def leaky_inverse(z, ia, lo):
    return z if z >= 0 else z * ia


def leaky_grad_from_output(z, dz, a):
    return dz if z >= 0 else dz * a


def leaky_grad_from_input(y, dz, a):
    return dz if y >= 0 else dz * a


def elu_forward(y, a):
    return y if y >= 0 else a * math.expm1(y)


def elu_inverse(z, ia, lo):
    if z >= 0:
        return z
    t = z * ia
    return math.log1p(t if not t < lo else lo)  # NaN passes through


def elu_grad_from_output(z, dz, a):
    return dz if z >= 0 else dz * (z + a)


def elu_grad_from_input(y, dz, a):
    return dz if y >= 0 else dz * (a * math.exp(y))


def relu_forward(y, a):
    return y if y >= 0 or y != y else a - a  # a = 0 for relu; NaN passes through


def relu_inverse(z, ia, lo):
    return z  # never called: relu does not run in place


def relu_grad_from_output(z, dz, a):
    return dz if z > 0 else a - a


def relu_grad_from_input(y, dz, a):
    return dz if y > 0 else a - a


def act_forward(y, act, a):
    if act == ELU:
        return elu_forward(y, a)
    if act == RELU:
        return relu_forward(y, a)
    return leaky_forward(y, a)


def act_inverse(z, act, ia, lo):
    if act == ELU:
        return elu_inverse(z, ia, lo)
    return leaky_inverse(z, ia, lo)


def act_grad_from_output(z, dz, act, a):
    if act == ELU:
        return elu_grad_from_output(z, dz, a)
    if act == RELU:
        return relu_grad_from_output(z, dz, a)
    return leaky_grad_from_output(z, dz, a)


def act_grad_from_input(y, dz, act, a):
    if act == ELU:
        return elu_grad_from_input(y, dz, a)
    if act == RELU:
        return relu_grad_from_input(y, dz, a)
    return leaky_grad_from_input(y, dz, a)


# ---- float16 storage on the CPU (Numba's CPU target has no float16 type) ----------
# Exact IEEE binary16 <-> binary32 conversion on bit patterns, round-to-nearest-even,
# NaN payloads kept as NumPy keeps them. Each case is a cheap expression (no loops,
# no early returns), so the compiler turns the cases into selects.

def half_bits_to_float(h):
    """float16 bit pattern -> float32 value."""
    h = h & 0xFFFF
    em = h & 0x7FFF
    sign = (h & 0x8000) << 16
    if em >= 0x7C00:  # Inf, NaN (payload kept)
        bits = sign | 0x7F800000 | ((em & 0x3FF) << 13)
    elif em >= 0x0400:  # normal: rebias the exponent
        bits = sign | ((em << 13) + 0x38000000)
    else:  # zero or subnormal: m * 2**-24, exact in float32
        bits = sign | np.float32(np.float32(em) * np.float32(5.9604644775390625e-08)).view(
            np.uint32)
    return np.uint32(bits).view(np.float32)


def float_to_half_bits(f):
    """float32 value -> float16 bit pattern (uint16), round to nearest even."""
    u = np.float32(f).view(np.uint32)
    sign = (u >> 16) & 0x8000
    a = u & 0x7FFFFFFF
    if a >= 0x477FF000:  # rounds to 65520 or more: Inf; NaN keeps its payload like NumPy
        r = 0x7C00
        if a > 0x7F800000:
            r = 0x7C00 | ((a & 0x7FFFFF) >> 13)
            if r == 0x7C00:
                r = 0x7C01
    elif a >= 0x38800000:  # normal half: rebias the exponent, round on 13 bits
        n = a - 0x38000000
        r = (n + 0xFFF + ((n >> 13) & 1)) >> 13
    else:  # subnormal or zero: adding 0.5 rounds |f| to a multiple of 2**-24 (RNE)
        r = np.float32(np.uint32(a).view(np.float32) + np.float32(0.5)).view(np.uint32) \
            - 0x3F000000
    return np.uint16(sign | r)
