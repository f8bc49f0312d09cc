"""Scalar math written once and compiled for each target.

``cpu.py`` compiles these with ``numba.njit(inline="always")``, ``cuda.py`` with
``numba.cuda.jit(device=True)``. Activation codes are small integers so that a
kernel takes the activation as an argument:

====  ==============  ===========================  ===========================
code  activation      z = act(y)                   y = act⁻¹(z)
====  ==============  ===========================  ===========================
0     identity        y                            z
1     leaky_relu      y if y >= 0 else a*y         z if z >= 0 else z/a
2     elu             y if y >= 0 else a*expm1(y)  z if z >= 0 else log1p(z/a)
3     relu            max(y, 0)                    (not invertible)
====  ==============  ===========================  ===========================

``lo`` is the largest value below zero that ``z/a`` may take in the ELU inverse
(the value just above -1 in the compute dtype), so that ``log1p`` stays finite.
"""
import math

IDENTITY, LEAKY_RELU, ELU, RELU = 0, 1, 2, 3


# Zeros are written ``a - a`` (a is a finite scalar of the compute dtype): an integer
# literal would promote float32 arithmetic to float64 in Numba.

def act_forward(y, act, a):
    if act == IDENTITY or y >= 0 or y != y:  # y != y: NaN passes through
        return y
    if act == LEAKY_RELU:
        return y * a
    if act == ELU:
        return a * math.expm1(y)
    return a - a  # RELU


def act_inverse(z, act, a, lo):
    if act == IDENTITY or z >= 0:
        return z
    if act == LEAKY_RELU:
        return z / a
    t = z / a  # ELU
    if t < lo:
        t = lo
    return math.log1p(t)


def act_grad_from_output(z, dz, act, a):
    """dL/dy from the output z and dL/dz (in-place path)."""
    if act == IDENTITY or z > 0:
        return dz
    if act == LEAKY_RELU:
        return dz * a if z < 0 else dz
    if act == ELU:
        return dz * (z + a) if z < 0 else dz
    return a - a  # RELU: z == 0 means y <= 0


def act_grad_from_input(y, dz, act, a):
    """dL/dy from the pre-activation y and dL/dz (standard path)."""
    if act == IDENTITY or y > 0:
        return dz
    if act == LEAKY_RELU:
        return dz * a if y < 0 else dz
    if act == ELU:
        return dz * (a * math.exp(y)) if y < 0 else dz
    return a - a  # RELU


# ---- float16 storage on the CPU (Numba's CPU target has no float16 type) ----------
# Exact IEEE binary16 <-> binary32 conversion on bit patterns, round-to-nearest-even,
# NaN payloads kept as NumPy keeps them.

def half_bits_to_float(h):
    h = h & 0xFFFF
    sign = (h & 0x8000) << 16
    e = (h >> 10) & 0x1F
    m = h & 0x3FF
    if e == 0x1F:
        bits = sign | 0x7F800000 | (m << 13)
    elif e != 0:
        bits = sign | ((e + 112) << 23) | (m << 13)
    elif m == 0:
        bits = sign
    else:  # subnormal: shift the significand up to bit 10 (no loop: IR-inlinable)
        s = 0
        if (m & 0x7E0) == 0:
            m <<= 6
            s += 6
        if (m & 0x780) == 0:
            m <<= 4
            s += 4
        if (m & 0x600) == 0:
            m <<= 2
            s += 2
        if (m & 0x400) == 0:
            m <<= 1
            s += 1
        bits = sign | ((113 - s) << 23) | ((m & 0x3FF) << 13)
    return bits


def float_bits_to_half(u):
    sign = (u >> 16) & 0x8000
    a = u & 0x7FFFFFFF
    if a >= 0x7F800000:  # Inf or NaN
        if a == 0x7F800000:
            return sign | 0x7C00
        r = 0x7C00 | ((a & 0x7FFFFF) >> 13)
        if r == 0x7C00:
            r = 0x7C01
        return sign | r
    if a >= 0x477FF000:  # rounds to 65520 or more: overflow
        return sign | 0x7C00
    if a >= 0x38800000:  # normal half: rebias the exponent, round on 13 bits
        a = a - 0x38000000
        return sign | ((a + 0xFFF + ((a >> 13) & 1)) >> 13)
    if a <= 0x33000000:  # at most 2**-25: rounds to zero
        return sign
    # subnormal half: significand with hidden bit, shifted right by 126 - e, RNE
    e = a >> 23
    m = (a & 0x7FFFFF) | 0x800000
    shift = 126 - e  # 14 .. 24
    q = m >> shift
    rem = m & ((1 << shift) - 1)
    half = 1 << (shift - 1)
    if rem > half or (rem == half and (q & 1) == 1):
        q += 1
    return sign | q
