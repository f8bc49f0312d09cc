"""CUDA backend: numba.cuda kernels on device arrays (the twin of ``cpu.py``).

Same primitives, same math, same coefficient table (see ``cpu.py``):
``statistics``, ``forward``, ``backward_reduce``, ``backward_train``,
``backward_eval``. Inputs are any objects with ``__cuda_array_interface__``
(Numba device arrays, CuPy arrays, PyTorch CUDA tensors), used zero-copy: results
are written into the caller's memory. Device data must be C-contiguous; a layout
the kernels cannot walk in place raises instead of being copied.

Kernels (one per operation, activation and layout, made on first use so that the
operation and the activation are compile-time constants):

* element-wise (forward, backward apply): grid-stride over the flat array; each
  thread handles ``UNROLL`` elements ``T`` apart per round (all loads issued before
  the arithmetic) and keeps each element's channel, ``(i // S) % C`` for the
  channels-first view ``(N, C, S)`` and ``i % C`` for channels last ``(M, C)``
  (``S = 1``), by additions: consecutive threads touch consecutive addresses in
  both layouts, and no 64-bit division runs in the loop.
* reductions (statistics, backward reduce), float64 accumulation, the statistics
  of values shifted by the channel's first element: channels first, block
  (chunk, channel), threads walk the chunk's (image, position) pairs; channels last,
  2-D blocks, threads along x cover consecutive channels, along y rows, reduced over
  y. Each block writes one partial; the O(C x blocks) partials are summed on the host
  (with a common shift, sums merge exactly), which is also where the coefficients are
  computed and synchronized statistics exchanged (staged through host memory).

Small buffers (coefficient table, partial sums, their page-locked host copies) are
reused per host thread and stream (see ``_buffer``).

``THREADS`` (threads per block, a power of two), ``TILE`` (channels per block in the
channels-last reductions), ``MAX_BLOCKS`` and ``BLOCK_WORK`` are module attributes;
the simulator tests set them small so that tiny arrays still cross block, chunk and
grid boundaries.
"""
import collections
import math
import threading
import types as pytypes

import numpy as np
from numba import cuda, float64, int64
from numba.cuda.cudadrv import driver as _driver  # the simulator's under NUMBA_ENABLE_CUDASIM

from . import _scalar, cpu

IS_DEVICE = True
THREADS = 256          # threads per block; a power of two, at most MAX_THREADS
TILE = 32              # channels per block in the channels-last reductions
MAX_THREADS = 256      # size of the shared-memory reduction buffers
MAX_BLOCKS = 4096      # grid size cap for the grid-stride element-wise kernels
UNROLL = 4             # elements per thread per loop round (loads in flight)
REDUCE_BLOCKS = 1024   # blocks a reduction aims for (enough to fill the device) ...
BLOCK_WORK = 4096      # ... while each block sums at least this many values
# 1024 blocks of 256 threads fill an H100 (132 SMs x 2048 threads). Each block writes
# one partial per channel that the host copies and sums: with 2048, (64, 56, 56, 256)
# channels last had 256 chunks (a 1 MB copy and a 131k-element sum per call); with 1024,
# 128. Through the layer on the H100, 3 alternating runs of 20 calls, float32/float16:
# forward-train 867-934 -> 777-829 µs, backward-train 963-1011 -> 907-943 µs (512 and
# 264 blocks: the same within the noise); channels first (8 -> 4 chunks) unchanged.


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
def _grad(sv, dv, coef, c, act, a, from_x):
    """g = dL/dy of one element (see cpu._grad)."""
    if from_x:
        return act_grad_from_input((sv - coef[0, c]) * coef[2, c] + coef[3, c], dv, act, a)
    return act_grad_from_output(sv, dv, act, a)


@cuda.jit(device=True)
def _grad_and_centred(sv, dv, coef, c, act, a, ia, lo, from_x):
    """g = dL/dy and x̂ of one element (see cpu._grad_and_centred)."""
    gr = _grad(sv, dv, coef, c, act, a, from_x)
    if from_x:
        return gr, (sv - coef[0, c]) * coef[7, c] + coef[8, c]
    return gr, (act_inverse(sv, act, ia, lo) - coef[1, c]) * coef[7, c]


# ---- element-wise kernels -----------------------------------------------------------
#
# Thread t of T handles the flat elements e, e + T, e + 2T, e + 3T (UNROLL lanes), then
# e += UNROLL * T: consecutive threads touch consecutive addresses, and each thread has
# UNROLL loads in flight before it computes. Lane k keeps the position (s, c) of its
# element (s = e % S, c = (e // S) % C) and moves it on with additions: one division
# per lane at the start, none in the loop (64-bit division is a long instruction
# sequence on the GPU, and the loop is otherwise a handful of instructions).

@cuda.jit(device=True)
def _locate(e, S, C):
    """(s, c) of flat element e of a channels-first (.., C, S) view (S = 1: channels last)."""
    q = e // S
    return e - q * S, q % C


@cuda.jit(device=True)
def _advance(s, c, ds, dc, S, C):
    """(s, c) of the element D further on, given ds = D % S and dc = (D // S) % C
    (s + ds < 2S and c + dc + 1 < 2C: one correction each)."""
    s += ds
    c += dc
    if s >= S:
        s -= S
        c += 1
    if c >= C:
        c -= C
    return s, c


@cuda.jit(device=True)
def _take(src, dz, i, u, v, k, both):
    """u[k] = src[i] and v[k] = dz[i] (or src[i] when ``both`` is false: dz not read),
    converted to the dtype of u and v."""
    u[k] = src[i]
    v[k] = dz[i] if both else u[k]


def _map_kernel(op, act):
    """The element-wise kernel of ``op`` and activation code ``act`` (compile-time
    constants): 0 forward ``out = act((x - h) g + e)``, 1 backward train, 2 backward
    eval (``dx`` from the output ``src`` and ``dz``; see cpu.py for the coefficient rows)."""

    @cuda.jit(device=True)
    def value(sv, dv, coef, c, a, ia, lo, from_x):
        if op == 0:
            return act_forward((sv - coef[0, c]) * coef[2, c] + coef[3, c], act, a)
        gr = _grad(sv, dv, coef, c, act, a, from_x)
        if op == 2:
            return coef[4, c] * gr
        v = sv if from_x else act_inverse(sv, act, ia, lo)  # P g + Q' (v - m) + R'
        return coef[4, c] * gr + coef[5, c] * (v - coef[9, c]) + coef[6, c]

    @cuda.jit
    def kernel(src, dz, out, C, S, ds, dc, coef, a, ia, lo, from_x):
        T = cuda.gridsize(1)
        e = cuda.grid(1)
        n = src.size
        sk = cuda.local.array(UNROLL, int64)
        ck = cuda.local.array(UNROLL, int64)
        u = cuda.local.array(UNROLL, coef.dtype)  # loads converted to the compute dtype
        v = cuda.local.array(UNROLL, coef.dtype)
        for k in range(UNROLL):
            sk[k], ck[k] = _locate(e + k * T, S, C)
        while e + (UNROLL - 1) * T < n:
            for k in range(UNROLL):
                _take(src, dz, e + k * T, u, v, k, op != 0)
            for k in range(UNROLL):
                out[e + k * T] = value(u[k], v[k], coef, ck[k], a, ia, lo, from_x)
                sk[k], ck[k] = _advance(sk[k], ck[k], ds, dc, S, C)
            e += UNROLL * T
        for k in range(UNROLL - 1):  # the last, partial round
            i = e + k * T
            if i < n:
                _take(src, dz, i, u, v, k, op != 0)
                out[i] = value(u[k], v[k], coef, ck[k], a, ia, lo, from_x)
    return kernel


# ---- reductions -----------------------------------------------------------------------
#
# Each block sums one channel (channels first) or one tile of channels (channels last)
# over a chunk of the rows, in float64, each thread with UNROLL loads in flight; a
# shared-memory tree reduces the threads; part[:, c, j] holds chunk j's sums and, for
# the statistics, part[0, c, J] the channel's shift (its first element, 0 if not finite),
# read by every block, so the statistics are one kernel and one copy to the host.

@cuda.jit(device=True)
def _block_sum(s1, s2, tid, width, stride):
    """Tree reduction of shared s1, s2 over ``width`` (a power of two) entries
    ``stride`` apart, starting at ``tid``."""
    half = width // 2
    while half > 0:
        cuda.syncthreads()
        if tid < half * stride:
            s1[tid] += s1[tid + half * stride]
            s2[tid] += s2[tid + half * stride]
        half //= 2
    cuda.syncthreads()


@cuda.jit(device=True)
def _shift(v):
    k = float64(v)
    return k if math.isfinite(k) else 0.0


def _reduce_kernels(mode, act):
    """The channels-first and channels-last reductions of ``mode`` and activation code
    ``act`` (compile-time constants): 0 statistics, sums of (d, d²) with d = x - shift;
    1 backward, sums of (g, g x̂) from the output ``x`` and ``dz``. ``part[0/1, c, j]``
    receives chunk j's two sums."""

    @cuda.jit(device=True)
    def pair(sv, dv, k0, coef, c, a, ia, lo, from_x):
        if mode == 0:
            d = float64(sv) - k0
            return d, d * d
        gr, xh = _grad_and_centred(sv, dv, coef, c, act, a, ia, lo, from_x)
        return float64(gr), float64(gr) * float64(xh)

    @cuda.jit(device=True)
    def finish(part, c, j, J, sum1, sum2, k0):
        part[0, c, j] = sum1
        part[1, c, j] = sum2
        if mode == 0 and j == 0:
            part[0, c, J] = k0

    @cuda.jit
    def cf(x, dz, N, C, S, coef, a, ia, lo, from_x, part):
        """Block (chunk j, channel c): the chunk's share of the channel's N·S values,
        walked as (image n, position s) with additions."""
        s1 = cuda.shared.array(MAX_THREADS, float64)
        s2 = cuda.shared.array(MAX_THREADS, float64)
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        j = cuda.blockIdx.x
        J = cuda.gridDim.x
        c = cuda.blockIdx.y
        total = N * S
        per = (total + J - 1) // J
        q = j * per + tid
        hi = min(total, j * per + per)
        k0 = _shift(x[c * S]) if mode == 0 else 0.0
        base = c * S
        CS = C * S
        dn = (UNROLL * nt) // S
        dsx = (UNROLL * nt) - dn * S
        nk = cuda.local.array(UNROLL, int64)
        sk = cuda.local.array(UNROLL, int64)
        u = cuda.local.array(UNROLL, coef.dtype)  # loads converted to the compute dtype
        v = cuda.local.array(UNROLL, coef.dtype)
        for k in range(UNROLL):
            nk[k] = (q + k * nt) // S
            sk[k] = q + k * nt - nk[k] * S
        acc1 = 0.0
        acc2 = 0.0
        while q + (UNROLL - 1) * nt < hi:
            for k in range(UNROLL):
                _take(x, dz, nk[k] * CS + base + sk[k], u, v, k, mode != 0)
            for k in range(UNROLL):
                p1, p2 = pair(u[k], v[k], k0, coef, c, a, ia, lo, from_x)
                acc1 += p1
                acc2 += p2
                sk[k] += dsx
                nk[k] += dn
                if sk[k] >= S:
                    sk[k] -= S
                    nk[k] += 1
            q += UNROLL * nt
        for k in range(UNROLL - 1):
            if q + k * nt < hi:
                _take(x, dz, nk[k] * CS + base + sk[k], u, v, k, mode != 0)
                p1, p2 = pair(u[k], v[k], k0, coef, c, a, ia, lo, from_x)
                acc1 += p1
                acc2 += p2
        s1[tid] = acc1
        s2[tid] = acc2
        _block_sum(s1, s2, tid, nt, 1)
        if tid == 0:
            finish(part, c, j, J, s1[0], s2[0], k0)

    @cuda.jit
    def cl(x, dz, M, C, coef, a, ia, lo, from_x, part):
        """Block (channel tile, row chunk j): threads along x are consecutive channels,
        along y rows."""
        s1 = cuda.shared.array(MAX_THREADS, float64)
        s2 = cuda.shared.array(MAX_THREADS, float64)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tw = cuda.blockDim.x
        th = cuda.blockDim.y
        c = cuda.blockIdx.x * tw + tx
        j = cuda.blockIdx.y
        J = cuda.gridDim.y
        per = (M + J - 1) // J
        m = j * per + ty
        m1 = min(M, j * per + per)
        acc1 = 0.0
        acc2 = 0.0
        k0 = 0.0
        if c < C:
            if mode == 0:
                k0 = _shift(x[c])
            u = cuda.local.array(UNROLL, coef.dtype)
            v = cuda.local.array(UNROLL, coef.dtype)
            while m + (UNROLL - 1) * th < m1:
                for k in range(UNROLL):
                    _take(x, dz, (m + k * th) * C + c, u, v, k, mode != 0)
                for k in range(UNROLL):
                    p1, p2 = pair(u[k], v[k], k0, coef, c, a, ia, lo, from_x)
                    acc1 += p1
                    acc2 += p2
                m += UNROLL * th
            while m < m1:
                _take(x, dz, m * C + c, u, v, 0, mode != 0)
                p1, p2 = pair(u[0], v[0], k0, coef, c, a, ia, lo, from_x)
                acc1 += p1
                acc2 += p2
                m += th
        t = ty * tw + tx
        s1[t] = acc1
        s2[t] = acc2
        _block_sum(s1, s2, t, th, tw)  # over y (rows)
        if ty == 0 and c < C:
            finish(part, c, j, J, s1[tx], s2[tx], k0)
    return cf, cl


_KERNELS = {}


def _kernel(kind, op, act):
    """Kernel ``kind`` ("map", "cf" or "cl") for ``op`` (the map's op, the reductions'
    mode) and activation code ``act``, made on first use and compiled on first launch."""
    key = (kind, op, act)
    if key not in _KERNELS:
        if kind == "map":
            _KERNELS[key] = _map_kernel(op, act)
        else:  # both layouts' reductions come from one factory call
            _KERNELS["cf", op, act], _KERNELS["cl", op, act] = _reduce_kernels(op, act)
    return _KERNELS[key]


# ---- host side ----------------------------------------------------------------------------

def as_device(a):
    """A Numba device array viewing ``a``'s memory (no copy)."""
    if hasattr(a, "copy_to_host"):  # Numba device array (or the simulator's)
        return a
    return cuda.as_cuda_array(a)


def kernel_view(a):
    return a


compute_dtype = cpu.compute_dtype  # float32 arithmetic for float16/float32, float64 for float64


def _s(stream):
    return 0 if stream is None else stream


def empty_like(a, stream=None):
    d = as_device(a)
    return cuda.device_array(d.shape, dtype=d.dtype, stream=_s(stream))


# Copies go through the driver's functions (cuMemcpy*), not the device arrays' methods:
# on the H100 VM of BENCHMARKS.md, DeviceNDArray.copy_to_device of a 10 KB table took
# 86-103 µs of host time and copy_to_host 21 µs, against 5 and 9.5 µs for
# ``driver.host_to_device`` / ``device_to_host`` on the same arrays (the rest is Numba's
# Python around the call: views, checks, context lookups), and cuda.to_device 119 µs
# against 30 µs for device_array + host_to_device. Both ends are C-contiguous (device
# arrays are checked by ``check_array`` or made here) and of the same dtype and shape;
# the methods stay for anything else. The semantics are the methods' (the same driver
# calls): to the device, the call returns once the host data is staged; to the host,
# once the copy is complete (``stream`` synchronized).

def _plain(d, h):
    return (h.flags.c_contiguous and d.is_c_contiguous() and h.dtype == d.dtype
            and tuple(h.shape) == tuple(d.shape))


def copy_from_host(d, h, stream=None):
    """``d[...] = h``: the device array ``d`` from the host array ``h``."""
    h = np.ascontiguousarray(h)
    if not _plain(d, h):
        d.copy_to_device(h, stream=_s(stream))
    elif h.nbytes:
        _driver.host_to_device(d, h, h.nbytes, stream=_s(stream))


def _to_host(d, stream, out=None):
    """Device -> host (into ``out`` if given), complete on return (synchronizes ``stream``)."""
    if out is None and d.is_c_contiguous():
        out = np.empty(d.shape, d.dtype)
    if out is None or not _plain(d, out):
        out = d.copy_to_host(out, stream=_s(stream))
    elif out.nbytes:
        _driver.device_to_host(out, d, out.nbytes, stream=_s(stream))
    if stream is not None:
        stream.synchronize()
    return out


def copy(a, stream=None):
    d = as_device(a)
    out = cuda.device_array(d.shape, dtype=d.dtype, stream=_s(stream))
    if not d.is_c_contiguous():
        out.copy_to_device(d, stream=_s(stream))
    elif d.nbytes:
        _driver.device_to_device(out, d, d.nbytes, stream=_s(stream))
    return out


# ---- reused buffers ---------------------------------------------------------------------
#
# Each call needs a few small buffers: the coefficient table on the device, the partial
# sums on the device and in page-locked host memory. An allocation is a driver call
# that costs as much as a small kernel launch (135 µs for cuMemAlloc on the H100 this
# was measured on, against 44 µs for a small copy), so they are kept per host thread,
# CUDA context and stream, and reused: work queued on one stream runs in order, so a
# buffer is never rewritten while an earlier kernel of the same stream still reads it.
# Host-to-device copies go from pageable memory (the call returns once the source is
# staged, so the host buffer may change at once); device-to-host copies of the
# partial sums land in page-locked memory and are waited for.

_BUFFERS_PER_STREAM = 32   # buffers kept per stream (least recently used dropped)
_STREAMS_PER_THREAD = 16   # streams kept per host thread (likewise)
_local = threading.local()


def _buffers(stream):
    """This host thread's buffers for ``stream`` (None: the default stream) on the
    current device (Numba uses the device's primary context); the key holds the stream
    object, so its id is never reused while the entry lives."""
    per_thread = getattr(_local, "buffers", None)
    if per_thread is None:
        per_thread = _local.buffers = collections.OrderedDict()
    key = (getattr(cuda.current_context().device, "id", 0), stream)  # simulator: no id
    cache = per_thread.pop(key, None)
    if cache is None:
        cache = collections.OrderedDict()
        while len(per_thread) >= _STREAMS_PER_THREAD:
            per_thread.popitem(last=False)
    per_thread[key] = cache
    return cache


def _buffer(stream, name, shape, dtype, pinned=False):
    """A device (or page-locked host) array of this shape and dtype, reused across calls."""
    cache = _buffers(stream)
    key = (name, shape, np.dtype(dtype).str, pinned)
    buf = cache.pop(key, None)
    if buf is None:
        buf = (cuda.pinned_array(shape, dtype) if pinned
               else cuda.device_array(shape, dtype=dtype, stream=_s(stream)))
        while len(cache) >= _BUFFERS_PER_STREAM:
            cache.popitem(last=False)
    cache[key] = buf  # most recently used last
    return buf


def _upload(coef, stream):
    """The coefficient table on the device, in a reused buffer."""
    d = _buffer(stream, "coef", coef.shape, coef.dtype)
    copy_from_host(d, coef, stream)
    return d


def to_host(a):
    return _to_host(as_device(a), None)


def from_host(a):
    h = np.ascontiguousarray(a)
    d = cuda.device_array(h.shape, dtype=h.dtype)
    copy_from_host(d, h)
    return d


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


def _elementwise_grid(n, C, S):
    """Blocks, and the (ds, dc) step of the lanes' positions, for n elements."""
    blocks = max(1, min(MAX_BLOCKS, -(-n // (THREADS * UNROLL))))
    D = UNROLL * blocks * THREADS
    return blocks, D % S, (D // S) % C


def _reduce(mode, x, dz, C, S, coef, act, a, ia, lo, from_x, stream):
    """(2, C, J + 1) float64 partial sums on the host, (page-locked, reused: read before
    the next call on this stream): J chunks, then the shifts in [0, :, J]; and J."""
    st = _s(stream)
    rows = x.size // (C * S)
    if S > 1:  # channels first: blocks (chunk, channel)
        J = max(1, min(-(-REDUCE_BLOCKS // C), (rows * S) // BLOCK_WORK))
        part = _buffer(stream, "part", (2, C, J + 1), np.float64)
        _kernel("cf", mode, act)[(J, C), THREADS, st](x, dz, rows, C, S, coef, a, ia, lo,
                                                      from_x, part)
    else:  # channels last: blocks of tw channels x th rows
        tw = min(TILE, THREADS, 1 << max(0, (C - 1).bit_length()))
        th = THREADS // tw
        tiles = -(-C // tw)
        J = max(1, min(-(-REDUCE_BLOCKS // tiles), (rows * tw) // BLOCK_WORK))
        part = _buffer(stream, "part", (2, C, J + 1), np.float64)
        _kernel("cl", mode, act)[(tiles, J), (tw, th), st](x, dz, rows, C, coef, a, ia, lo,
                                                           from_x, part)
    host = _to_host(part, stream, _buffer(stream, "part", part.shape, np.float64, pinned=True))
    return host, J  # staged through host memory


def statistics(vs, C, stream=None):
    """Per-channel count, mean and M2 (float64 host arrays), as ``cpu.statistics``."""
    (x, _, S), = vs
    count = x.size // C if C else 0
    if count == 0:
        return 0, np.zeros(C), np.zeros(C)
    # the statistics never read the table: only its dtype, the loads' compute dtype, counts
    no_coef = _buffer(stream, "no_coef", (10, 1), compute_dtype(x.dtype))
    part, J = _reduce(0, x, x, C, S, no_coef, 0, np.float32(1), np.float32(1),
                      np.float32(-1), False, stream)
    out = part[:, :, :J].sum(axis=2)  # (2, C) shifted sums
    cpu._finalize(part[0, :, J].copy(), float(count), out)  # -> (mean, M2), as on the CPU
    return count, out[0], out[1]


def _map(op, srcs, dzs, outs, coef, act, a, ia, lo, from_x, stream):
    (s, C, S), = srcs
    (d, _, _), = dzs
    (o, _, _), = outs
    if s.size:
        blocks, ds, dc = _elementwise_grid(s.size, C, S)
        _kernel("map", op, act)[blocks, THREADS, _s(stream)](
            s, d, o, C, S, ds, dc, _upload(coef, stream), a, ia, lo, from_x)


def forward(vs, outs, coef, act, a, ia, lo, stream=None):
    _map(0, vs, vs, outs, coef, act, a, ia, lo, False, stream)


def backward_reduce(srcs, dzs, coef, act, a, ia, lo, from_x, stream=None):
    (s, C, S), = srcs
    (d, _, _), = dzs
    if s.size == 0:
        return np.zeros((2, C))
    part, J = _reduce(1, s, d, C, S, _upload(coef, stream), act, a, ia, lo, from_x, stream)
    return part[:, :, :J].sum(axis=2)


def backward_train(srcs, dzs, dxs, coef, act, a, ia, lo, from_x, stream=None):
    _map(1, srcs, dzs, dxs, coef, act, a, ia, lo, from_x, stream)


def backward_eval(srcs, dzs, dxs, coef, act, a, ia, lo, from_x, stream=None):
    _map(2, srcs, dzs, dxs, coef, act, a, ia, lo, from_x, stream)
