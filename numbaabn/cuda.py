"""CUDA backend: numba.cuda kernels on device arrays (the twin of ``cpu.py``).

Same primitives, same math, same coefficient table (see ``cpu.py``):
``statistics``, ``forward``, ``backward_reduce``, ``backward_train``,
``backward_eval``. Inputs are any objects with ``__cuda_array_interface__``
(Numba device arrays, CuPy arrays, PyTorch CUDA tensors), used zero-copy: results
are written into the caller's memory. Device data must be C-contiguous; a layout
the kernels cannot walk in place raises instead of being copied.

Kernels:

* element-wise (forward, backward apply): one thread per element, grid-stride,
  on the flat array; the channel of element ``i`` is ``(i // S) % C`` for the
  channels-first view ``(N, C, S)`` and ``i % C`` for channels-last ``(M, C)``
  (``S = 1``): consecutive threads touch consecutive addresses in both layouts.
* reductions (statistics, backward reduce), float64 accumulation of values
  shifted by the channel's first element:
  channels first: block (channel, chunk), threads stride along the channel's rows
  (coalesced), shared-memory tree reduction; channels last: 2-D blocks, threads
  along x cover consecutive channels (coalesced), along y rows, reduced over y.
  Each block writes one partial; the O(C x blocks) partials are summed on the host
  (with a common shift, sums merge exactly), which is also where synchronized
  statistics are exchanged (staged through host memory).

``THREADS`` (threads per block, a power of two) and ``TILE`` (channels per block
in the channels-last reductions) are module attributes; tests set them small so
that tiny arrays still cross block and grid boundaries.
"""
import types as pytypes

import numpy as np
from numba import cuda, float64

from . import _scalar, cpu

IS_DEVICE = True
THREADS = 256          # threads per block; a power of two, at most MAX_THREADS
TILE = 32              # channels per block in the channels-last reductions
MAX_THREADS = 256      # size of the shared-memory reduction buffers
MAX_BLOCKS = 4096      # grid size cap for the grid-stride element-wise kernels


def _device(fn, overrides=None):
    if overrides:
        g = dict(fn.__globals__)
        g.update(overrides)
        fn = pytypes.FunctionType(fn.__code__, g, fn.__name__, fn.__defaults__, fn.__closure__)
    return cuda.jit(device=True)(fn)


_FAMILY_FUNCS = {f"{fam}_{op}": _device(getattr(_scalar, f"{fam}_{op}"))
                 for fam in ("leaky", "elu", "relu")
                 for op in ("forward", "inverse", "grad_from_output", "grad_from_input")}
act_forward = _device(_scalar.act_forward, _FAMILY_FUNCS)
act_inverse = _device(_scalar.act_inverse, _FAMILY_FUNCS)
act_grad_from_output = _device(_scalar.act_grad_from_output, _FAMILY_FUNCS)
act_grad_from_input = _device(_scalar.act_grad_from_input, _FAMILY_FUNCS)


@cuda.jit(device=True)
def _grad_and_centred(sv, dv, coef, c, act, a, ia, lo, from_x):
    """g = dL/dy and x̂ of one element (see cpu._grad_and_centred)."""
    if from_x:
        xc = sv - coef[0, c]
        return (act_grad_from_input(xc * coef[2, c] + coef[3, c], dv, act, a),
                xc * coef[7, c] + coef[8, c])
    return (act_grad_from_output(sv, dv, act, a),
            (act_inverse(sv, act, ia, lo) - coef[1, c]) * coef[7, c])


# ---- element-wise kernels -----------------------------------------------------------

@cuda.jit
def _forward_kernel(x, out, C, S, coef, act, a):
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < x.size:
        c = (i // S) % C
        out[i] = act_forward((x[i] - coef[0, c]) * coef[2, c] + coef[3, c], act, a)
        i += step


@cuda.jit
def _backward_apply_kernel(src, dz, dx, C, S, coef, act, a, ia, lo, from_x, train):
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < src.size:
        c = (i // S) % C
        gr, xh = _grad_and_centred(src[i], dz[i], coef, c, act, a, ia, lo, from_x)
        if train:
            dx[i] = coef[4, c] * gr + coef[5, c] * xh + coef[6, c]
        else:
            dx[i] = coef[4, c] * gr
        i += step


# ---- reductions -----------------------------------------------------------------------

@cuda.jit(device=True)
def _block_sum(s1, s2, tid, width):
    """Tree reduction of shared s1, s2 over ``width`` (a power of two) entries."""
    half = width // 2
    while half > 0:
        cuda.syncthreads()
        if tid < half:
            s1[tid] += s1[tid + half]
            s2[tid] += s2[tid + half]
        half //= 2
    cuda.syncthreads()


@cuda.jit(device=True)
def _pair(mode, sv, dv, k, coef, c, act, a, ia, lo, from_x):
    """The two summands of one element: (d, d²) for statistics (mode 0, d = x -
    shift), (g, g x̂) for the backward reduction (mode 1)."""
    if mode == 0:
        d = float64(sv) - k
        return d, d * d
    gr, xh = _grad_and_centred(sv, dv, coef, c, act, a, ia, lo, from_x)
    return float64(gr), float64(gr) * float64(xh)


@cuda.jit
def _reduce_cf(mode, x, dz, N, C, S, shift, coef, act, a, ia, lo, from_x, part):
    """Block (chunk j, channel c) of a channels-first view; part[c, j, :] = sums."""
    s1 = cuda.shared.array(MAX_THREADS, float64)
    s2 = cuda.shared.array(MAX_THREADS, float64)
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    j = cuda.blockIdx.x
    c = cuda.blockIdx.y
    total = N * S
    per = (total + cuda.gridDim.x - 1) // cuda.gridDim.x
    lo_k = j * per
    hi_k = min(total, lo_k + per)
    k0 = shift[c]
    acc1 = 0.0
    acc2 = 0.0
    q = lo_k + tid
    while q < hi_k:
        n = q // S
        idx = (n * C + c) * S + (q - n * S)
        u, v = _pair(mode, x[idx], dz[idx], k0, coef, c, act, a, ia, lo, from_x)
        acc1 += u
        acc2 += v
        q += nt
    s1[tid] = acc1
    s2[tid] = acc2
    _block_sum(s1, s2, tid, nt)
    if tid == 0:
        part[c, j, 0] = s1[0]
        part[c, j, 1] = s2[0]


@cuda.jit
def _reduce_cl(mode, x, dz, M, C, shift, coef, act, a, ia, lo, from_x, part):
    """Block (channel tile, row chunk j) of a channels-last view; threads along x
    are consecutive channels; part[c, j, :] = sums over the chunk's rows."""
    s1 = cuda.shared.array(MAX_THREADS, float64)
    s2 = cuda.shared.array(MAX_THREADS, float64)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    tw = cuda.blockDim.x
    th = cuda.blockDim.y
    c = cuda.blockIdx.x * tw + tx
    j = cuda.blockIdx.y
    per = (M + cuda.gridDim.y - 1) // cuda.gridDim.y
    m0 = j * per
    m1 = min(M, m0 + per)
    acc1 = 0.0
    acc2 = 0.0
    if c < C:
        k0 = shift[c]
        m = m0 + ty
        while m < m1:
            idx = m * C + c
            u, v = _pair(mode, x[idx], dz[idx], k0, coef, c, act, a, ia, lo, from_x)
            acc1 += u
            acc2 += v
            m += th
    t = ty * tw + tx
    s1[t] = acc1
    s2[t] = acc2
    half = th // 2  # reduce over y (rows), th a power of two
    while half > 0:
        cuda.syncthreads()
        if ty < half:
            s1[t] += s1[t + half * tw]
            s2[t] += s2[t + half * tw]
        half //= 2
    cuda.syncthreads()
    if ty == 0 and c < C:
        part[c, j, 0] = s1[tx]
        part[c, j, 1] = s2[tx]


@cuda.jit
def _first_kernel(x, C, S, out):
    """out[c] = the channel's first element (n = 0 or m = 0)."""
    c = cuda.grid(1)
    if c < C:
        out[c] = x[c * S]


# ---- host side ----------------------------------------------------------------------------

def as_device(a):
    """A Numba device array viewing ``a``'s memory (no copy)."""
    if hasattr(a, "copy_to_host"):  # Numba device array (or the simulator's)
        return a
    return cuda.as_cuda_array(a)


def kernel_view(a):
    return a


def compute_dtype(dtype):
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def _s(stream):
    return 0 if stream is None else stream


def empty_like(a, stream=None):
    d = as_device(a)
    return cuda.device_array(d.shape, dtype=d.dtype, stream=_s(stream))


def copy(a, stream=None):
    d = as_device(a)
    out = cuda.device_array(d.shape, dtype=d.dtype, stream=_s(stream))
    out.copy_to_device(d, stream=_s(stream))
    return out


def _to_host(d, stream):
    """Device -> host, complete on return (synchronizes ``stream``)."""
    h = d.copy_to_host(stream=_s(stream))
    if stream is not None:
        stream.synchronize()
    return h


def to_host(a):
    return as_device(a).copy_to_host()


def from_host(a):
    return cuda.to_device(np.ascontiguousarray(a))


def check_array(a, name, writable):
    """Device arrays must be C-contiguous (walked flat, in place) and writable."""
    d = as_device(a)
    if not d.is_c_contiguous():
        raise ValueError(f"{name}: CUDA arrays must be C-contiguous (got strides "
                         f"{getattr(d, 'strides', '?')}); "
                         "the kernels write in place and will not work on a hidden copy")
    iface = getattr(a, "__cuda_array_interface__", None) or {}
    if writable and iface.get("data", (0, False))[1]:
        raise ValueError(f"{name} is a read-only CUDA array; the in-place path writes into it")


def views(arrays, c_axis):
    """(flat device array, C, S) per array: S = 1 for channels last."""
    a0 = arrays[0]
    shape = tuple(a0.shape)
    C = shape[c_axis]
    S = 1 if c_axis == len(shape) - 1 else int(np.prod(shape[2:], dtype=np.int64))
    return [[(as_device(a).reshape(-1) if as_device(a).size else as_device(a), C, S)]
            for a in arrays]


def _grid(n):
    return max(1, min(MAX_BLOCKS, (n + THREADS - 1) // THREADS))


def _reduce(mode, x, dz, C, S, shift, coef, act, a, ia, lo, from_x, stream):
    rows = x.size // (C * S) if C and S else 0
    if S > 1:  # channels first
        chunks = max(1, min(64, (rows * S) // (THREADS * 8) or 1))
        part = cuda.device_array((C, chunks, 2), dtype=np.float64, stream=_s(stream))
        _reduce_cf[(chunks, C), THREADS, _s(stream)](mode, x, dz, rows, C, S, shift, coef, act, a, ia,
                                          lo, from_x, part)
    else:  # channels last: blocks of TILE channels x (THREADS // TILE) rows
        tw = min(TILE, THREADS)
        th = max(1, THREADS // tw)
        chunks = max(1, min(64, rows // (th * 8) or 1))
        part = cuda.device_array((C, chunks, 2), dtype=np.float64, stream=_s(stream))
        _reduce_cl[((C + tw - 1) // tw, chunks), (tw, th), _s(stream)](mode, x, dz, rows, C, shift, coef,
                                                          act, a, ia, lo, from_x, part)
    return _to_host(part, stream).sum(axis=1)  # (C, 2), staged through host memory


def statistics(vs, C, stream=None):
    """Per-channel count, mean and M2 (float64 host arrays), as ``cpu.statistics``."""
    (x, _, S), = vs
    count = x.size // C if C else 0
    if count == 0:
        return 0, np.zeros(C), np.zeros(C)
    st = _s(stream)
    first = cuda.device_array(C, dtype=x.dtype, stream=st)
    _first_kernel[(C + THREADS - 1) // THREADS, THREADS, st](x, C, S, first)
    shift = _to_host(first, stream).astype(np.float64)
    shift[~np.isfinite(shift)] = 0.0
    dummy = np.zeros((9, 1), np.float32)
    sums = _reduce(0, x, x, C, S, cuda.to_device(shift, stream=st),
                   cuda.to_device(dummy, stream=st), 0, np.float32(1), np.float32(1),
                   np.float32(-1), False, stream)
    out = np.ascontiguousarray(sums.T)  # (2, C): shifted sums -> (mean, M2), as on the CPU
    cpu._finalize(shift, float(count), out)
    return count, out[0], out[1]


def forward(vs, outs, coef, act, a, ia, lo, stream=None):
    (x, C, S), = vs
    (o, _, _), = outs
    if x.size:
        st = _s(stream)
        _forward_kernel[_grid(x.size), THREADS, st](x, o, C, S,
                                                     cuda.to_device(coef, stream=st), act, a)


def backward_reduce(srcs, dzs, coef, act, a, ia, lo, from_x, stream=None):
    (s, C, S), = srcs
    (d, _, _), = dzs
    if s.size == 0:
        return np.zeros((2, C))
    st = _s(stream)
    sums = _reduce(1, s, d, C, S, cuda.to_device(np.zeros(C), stream=st),
                   cuda.to_device(coef, stream=st), act, a, ia, lo, from_x, stream)
    return np.ascontiguousarray(sums.T)


def _apply(srcs, dzs, dxs, coef, act, a, ia, lo, from_x, train, stream):
    (s, C, S), = srcs
    (d, _, _), = dzs
    (o, _, _), = dxs
    if s.size:
        st = _s(stream)
        _backward_apply_kernel[_grid(s.size), THREADS, st](
            s, d, o, C, S, cuda.to_device(coef, stream=st), act, a, ia, lo, from_x, train)


def backward_train(srcs, dzs, dxs, coef, act, a, ia, lo, from_x, stream=None):
    _apply(srcs, dzs, dxs, coef, act, a, ia, lo, from_x, True, stream)


def backward_eval(srcs, dzs, dxs, coef, act, a, ia, lo, from_x, stream=None):
    _apply(srcs, dzs, dxs, coef, act, a, ia, lo, from_x, False, stream)
