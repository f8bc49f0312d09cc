"""CPU backend: Numba kernels on NumPy arrays.

Primitives (the seams of mapillary's ``include/inplace_abn.h``; ``cuda.py`` has the
same names):

``statistics``       per-channel ``(count, mean, M2)`` of the input        (reads x)
``forward``          ``out = act((x - h) * g + e)`` per channel             (reads x, writes out)
``backward_reduce``  per-channel ``S1 = Σ g`` and ``S2 = Σ g x̂``            (reads src, dz)
``backward_train``   ``dx = P g + Q x̂ + R`` (as ``P g + Q' (v - m) + R'``)   (reads src, dz, writes dx)
``backward_eval``    ``dx = P g``                                          (reads src, dz, writes dx)

Every primitive takes ``stream=None`` (CUDA streams; ignored on the CPU).
The synchronization hooks of ``mpi_sync.py`` slot in between ``statistics`` and
``forward`` and between ``backward_reduce`` and ``backward_train``.

Every primitive takes a list of canonical views, all of one layout: ``(N, C, S)``
arrays (channels first) or ``(M, C)`` arrays (channels last); usually the list has
one view. Per-channel coefficients come in one ``(10, C)`` array of the compute dtype
(float32 for float16/float32 data, float64 for float64), rows:

    0 h         the mean rounded to the compute dtype; ``x - h`` is exact for x
                near the mean, which keeps float32 accurate when |mean| >> std;
                0 in eval where the offset is moderate (see ``fill_coefficients``)
    1 b         the bias (shift of y)
    2 g         s * inv_std (the forward's scale)
    3 e         b - l * g, where l = mean - h: the forward is y = (x - h) * g + e
    4 P, 5 Q', 6 R', 9 m   the apply's ``dx = P g + Q' (v - m) + R'``, v = y (in
                place) or x (standard): see ``gradient_coefficients``
    7 k         x̂ = (y - b) * k with k = 1/s (in place), or
    8 f         x̂ = (x - h) * k + f with k = inv_std, f = -l * k (standard path)

The compensation lives in per-channel constants rather than in the order of
operations, because the ``reassoc`` fast-math flag (needed to vectorize the
reductions) may reorder ``(x - h) - l`` into ``x - (h + l)``.

``g = dL/dy`` and ``x̂`` are recomputed per element: from the output ``z`` through
the activation's inverse (in-place path, ``from_x=False``, ``src`` is ``z``) or from
a saved copy of the input (standard path, ``from_x=True``, ``src`` is ``x``). Nothing of the input's
size is allocated: the only temporaries are per-block partial sums, O(C · blocks).

float16 data is processed through its uint16 bit pattern (``kernel_view``), with
exact round-to-nearest-even conversion, because Numba's CPU target has no float16
(NaNs: see the conversion note below).
Statistics and gradient sums accumulate in float64 over block sums of the compute
dtype (see ``_BLOCK``).
"""
import math
import os
import threading
import types as pytypes

import numba
from numba.np.ufunc import parallel as _numba_parallel
import numpy as np
from numba import njit, prange, types
from llvmlite import ir as llir
from numba.core import cgutils
from numba.extending import intrinsic, overload

from . import _config, _scalar

# NumPy's native float dtypes are singletons: an identity test answers for nearly every
# array. A dtype compared with ``==`` or ``in`` goes through NumPy's conversion code:
# 2.5-6 µs a test once a copy of a few MB has evicted the caches (as a layer called
# between two others finds them), a third of that with the identity test first.
_F16, _F32, _F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)

_inline = njit(inline="always")


# ---- float16 conversion: the CPU's F16C instructions where the target has them ------
# LLVM's fpext/fptrunc between half and float compile to vcvtph2ps/vcvtps2ph (exact,
# round to nearest even) and vectorize. Without F16C (or with a Numba target other
# than the host) LLVM would call a runtime helper that Numba does not link, so the
# exact integer conversions of ``_scalar`` are used.
#
# NaNs: the hardware quiets a signalling NaN on load and stores a float32 NaN as the
# quiet float16 NaN of its top payload bits; NumPy keeps a signalling NaN signalling
# both ways. The kernels convert only values that they compute with (loads) or have
# computed (stores), and the first float32 operation quiets a signalling NaN in
# NumPy's computation too, so every output is the same bits as NumPy's float32
# computation converted with ``astype`` (tests: every float16 pattern through the
# forward and the backward). Giving the loads and stores NumPy's NaN patterns instead
# (a select per element, until the twelfth session) took ~45 of the forward loop's ~75
# AVX2 instructions per 16 elements: on an AMD EPYC (Zen 3, no AVX-512) the float16
# forward ran at 7.0 ms against 1.2 ms without it, the statistics 2.2 against 1.0 ms
# ((32, 128, 56, 56), kernels alone).

def _target_has_f16c():
    cfg = numba.core.config
    if cfg.CPU_NAME or cfg.CPU_FEATURES:
        return "+f16c" in (cfg.CPU_FEATURES or "")
    from llvmlite import binding
    return bool(binding.get_host_cpu_features().get("f16c", False))


HARDWARE_HALF = _target_has_f16c()


@intrinsic
def _half_bits_to_float_hw(typingctx, bits):
    """float16 bits (an unsigned integer) -> float32: fpext (exact; a signalling NaN
    comes out quiet)."""
    def codegen(context, builder, sig, args):
        v = builder.trunc(args[0], llir.IntType(16)) if bits.bitwidth > 16 else args[0]
        return builder.fpext(builder.bitcast(v, llir.HalfType()), llir.FloatType())
    return types.float32(bits), codegen


@intrinsic
def _float_to_half_bits_hw(typingctx, value):
    """float32 -> float16 bits: fptrunc (round to nearest even; a NaN comes out as the
    quiet NaN of its top payload bits, which is NumPy's result for a quiet NaN)."""
    def codegen(context, builder, sig, args):
        return builder.bitcast(builder.fptrunc(args[0], llir.HalfType()), llir.IntType(16))
    return types.uint16(types.float32), codegen


if HARDWARE_HALF:
    half_bits_to_float = _half_bits_to_float_hw
    float_to_half_bits = _float_to_half_bits_hw
else:  # plain compiled functions, not IR-inlined (LLVM inlines them): Numba's IR
    # inliner trips its own SSA check on their branches (harmless but noisy warnings)
    half_bits_to_float = njit(cache=_config.CACHE)(_scalar.half_bits_to_float)
    float_to_half_bits = njit(cache=_config.CACHE)(_scalar.float_to_half_bits)


def act_forward(y, a):
    """Placeholder name: each activation family's kernels bind it (see _FAMILIES)."""


act_inverse = act_grad_from_output = act_grad_from_input = act_forward


# ---- software prefetch: more cache lines in flight than one sequential stream gets ----
# The hardware prefetcher follows a sequential stream within a 4 KB page, so one
# stream per core keeps few lines in flight: on the 2-core machine this was written on
# an in-place pass with four concurrent streams per core ran ~20% faster than one.
# The kernels walk one stream per array and ask for the lines _AHEAD bytes ahead of
# each chunk instead (a prefetch past the end of an array never faults). That was a Zen
# 3 EPYC (znver3); on a Zen 4 EPYC (znver4) the same prefetch made the kernels 0-40%
# slower, on an Intel Xeon VM (rocketlake) 0-18% faster, so it runs only where
# _config.PREFETCH is on (``NUMBAABN_PREFETCH``: by default on the CPUs of
# ``_config.PREFETCH_CPUS``).

@intrinsic
def _prefetch(typingctx, arr, offset):
    """Hint: fetch the cache line at byte ``offset`` from the start of ``arr``'s data."""
    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        i8p = llir.IntType(8).as_pointer()
        ptr = builder.gep(builder.bitcast(ary.data, i8p), [args[1]])
        i32 = llir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, llir.FunctionType(llir.VoidType(), [i8p, i32, i32, i32]),
            "llvm.prefetch.p0i8")
        builder.call(fn, [ptr, i32(0), i32(3), i32(1)])  # read, keep in all levels, data
        return context.get_dummy_value()
    return types.void(arr, types.intp), codegen


# Prefetch distances in bytes (_prefetch_bytes picks one per walk). A channels-first
# chunk (_BLOCK elements) asks for its lines _config.PREFETCH_CHUNK bytes ahead, chosen
# per CPU (see _config.PREFETCH_CPUS). Channels-last rows ask 1024 bytes ahead: on the
# Zen 3 (rows of 512 bytes there) they ran 3-9% slower at 512 and at 1536-4096 bytes
# ahead; on the Xeon, (32, 128, 56, 56) NHWC forward-train 1.52 / 1.51 / 1.46 / 1.51x
# the floor at 256 / 512 / 1024 / 2048 bytes. bench's prefetched floor pass asks for
# 1024 too.
_AHEAD = 1024  # ahead of each channels-last row


def _ahead(row, nbytes):
    """Prefetch the lines ``nbytes`` past each 64-byte line of ``row`` (1-D, contiguous);
    nothing where ``nbytes`` is None (resolved at compile time, see ``_prefetch_bytes``)."""


@overload(_ahead, inline="always")
def _ahead_impl(row, nbytes):
    if isinstance(nbytes, types.NoneType):
        return lambda row, nbytes: None

    def impl(row, nbytes):
        for off in range(0, len(row) * row.itemsize, 64):
            _prefetch(row, off + nbytes)
    return impl


# ---- storage <-> compute conversion -----------------------------------------------

def load(v):
    """Storage element -> compute value (float16 bits -> float32)."""


def store(v, arr):
    """Compute value -> element of ``arr``'s storage dtype."""


@overload(load, inline="always")
def _load(v):
    if isinstance(v, types.Integer):
        return lambda v: half_bits_to_float(v)
    return lambda v: v


@overload(store, inline="always")
def _store(v, arr):
    if isinstance(arr.dtype, types.Integer):
        return lambda v, arr: float_to_half_bits(np.float32(v))
    if arr.dtype == types.float32:
        return lambda v, arr: np.float32(v)
    return lambda v, arr: np.float64(v)


def kernel_view(a):
    """The array the kernels see: float16 as its uint16 bit pattern, others as is."""
    return a.view(np.uint16) if a.dtype == np.float16 else a


def compute_dtype(dtype):
    """float32 arithmetic for float16/float32 storage, float64 for float64."""
    return np.float64 if dtype is _F64 or (dtype is not _F32 and np.dtype(dtype) == _F64) \
        else np.float32


# ---- blocking: every kernel walks items of (channel block, row block, inner block) --

@_inline
def _span(j, nb, n):
    q = (n + nb - 1) // nb
    lo = min(j * q, n)
    return lo, min(lo + q, n)


@_inline
def _item_cf(t, N, C, S, nbn, nbc, nbs):
    """Item t of a channels-first walk: rows n0:n1, channels c0:c1, positions s0:s1,
    and j, the row of ``part`` its partial sums go to (one per row and position block).
    Rows are the outer loop and channels the inner one, so an item reads memory in
    order (rows of few positions, e.g. 7x7, are not scattered reads)."""
    per = nbc * nbs
    jn = t // per
    r = t - jn * per
    jc = r // nbs
    js = r - jc * nbs
    n0, n1 = _span(jn, nbn, N)
    c0, c1 = _span(jc, nbc, C)
    s0, s1 = _span(js, nbs, S)
    return jn * nbs + js, n0, n1, c0, c1, s0, s1


@_inline
def _item_cl(t, M, C, nbm, nbc):
    """Item t of a channels-last walk: rows m0:m1, channels c0:c1 (row block jm)."""
    jm = t // nbc
    m0, m1 = _span(jm, nbm, M)
    c0, c1 = _span(t - jm * nbc, nbc, C)
    return jm, m0, m1, c0, c1


def _at(v, i):
    """v[i] for a per-channel slice, v itself for a scalar (resolved at compile time)."""


@overload(_at, inline="always")
def _at_impl(v, i):
    if isinstance(v, types.Array):
        return lambda v, i: v[i]
    return lambda v, i: v


def _grad_and_centred(sv, dv, h, b, g, e, k, f, a, ia, lo, from_x):
    """g = dL/dy and x̂ for one element, from z (in place) or x (standard); h, b, g,
    e, k, f are the channel's coefficients (rows 0, 1, 2, 3, 7, 8)."""
    if from_x:
        xc = sv - h
        return act_grad_from_input(xc * g + e, dv, a), xc * k + f
    return act_grad_from_output(sv, dv, a), (act_inverse(sv, ia, lo) - b) * k


def _grad(sv, dv, h, g, e, a, from_x):
    if from_x:
        return act_grad_from_input((sv - h) * g + e, dv, a)
    return act_grad_from_output(sv, dv, a)


# ---- channels first: views (N, C, S) -----------------------------------------------
# Inner loops index 1-D row views sliced to the block and count from 0 (x[n, c, s0:s1],
# i in range(s1 - s0)): a loop starting at an index of unknown sign makes Numba check
# for negative indices, which kept LLVM from vectorizing (5x slower).
# Short rows (S <= _BLOCK: 7x7, 14x14, 28x28; one position block, s0:s1 = 0:S) are
# taken whole, indexed (x[n, c]) rather than sliced and without the chunk loop: a row
# of 49 values is over in a few vector instructions, and the slices, the chunk bounds
# and their branches were a large share of its time. 31 alternating calls against the
# chunked walk, float32 NCHW: (64, 2048, 7, 7) forward-eval 2.00 -> 1.68x the floor,
# forward-train 2.97 -> 2.50x, backward-train 2.50 -> 2.37x; (32, 512, 14, 14) 1.43 ->
# 1.14x, 1.89 -> 1.64x, 2.54 -> 2.47x; (32, 256, 28, 28) forward-eval 1.32 -> 1.22x.
# Longer rows are walked in chunks of at most _BLOCK positions that end where memory
# is a whole number of _BLOCK elements from the view's first element (_chunk_end), not
# every _BLOCK positions from each row's start: a large array's data starts 16 bytes
# past a 4 KB page, so each chunk, and the prefetch of the lines ahead of it, keeps to
# about one page. On the Xeon of BENCHMARKS.md, (32, 128, 56, 56) float32 NCHW (rows
# of 3136 positions, 12.25 KB), after the bench's restore: the statistics' loop alone,
# 21-41 alternating calls, 1.16-1.26 -> 1.07-1.15 read-only passes; through the layer,
# 15-31 alternating calls, five runs, in floors (the prefetched stream pass),
# forward-train 1.62-1.74 -> 1.57-1.67, forward-eval 1.20-1.33 -> 1.09-1.23,
# backward-train 1.70-1.88 -> 1.63-1.74. Rows of a whole number of blocks (64x64,
# 224x224) are walked as before.


@_inline
def _chunk_end(x, n, c, j0, s1):
    """End of the chunk of row (n, c) of ``x`` starting at position j0, at most _BLOCK
    positions on: where the row's positions are contiguous, the next one a whole number
    of _BLOCK elements from x's first element in memory, or s1 (see the note above)."""
    off = (n * x.strides[0] + c * x.strides[1] + j0 * x.strides[2]) // x.itemsize
    return min(s1, j0 + _BLOCK - off % _BLOCK)


@_inline
def _fold(part, out):
    """Add the per-row-block partial sums of a walk, (blocks, 2, C), into out (2, C)."""
    for jm in range(part.shape[0]):
        for c in range(out.shape[1]):
            out[0, c] += part[jm, 0, c]
            out[1, c] += part[jm, 1, c]


@njit(cache=_config.CACHE)
def _finalize(shift, count, out):
    """Shifted sums -> (mean, M2) in place: out[0] = mean, out[1] = M2."""
    for c in range(shift.shape[0]):
        m = out[0, c] / count
        out[1, c] = max(out[1, c] - out[0, c] * m, 0.0)
        out[0, c] = shift[c] + m


@njit(cache=_config.CACHE)  # not IR-inlined: the float16 decoder's branches trip Numba's SSA check
def _init_shift(first, shift):
    """shift[c] = the channel's first element (0 where it is not finite)."""
    for c in range(shift.shape[0]):
        v = np.float64(load(first[c]))
        shift[c] = v if np.isfinite(v) else 0.0


def _as(v, zero):
    """v converted to the type of ``zero`` (the compute dtype)."""


@overload(_as, inline="always")
def _as_impl(v, zero):
    if zero == types.float32:
        return lambda v, zero: np.float32(v)
    return lambda v, zero: np.float64(v)


@_inline
def _recentre(a1, a2, cnt, k, knew):
    """Sums a1 = Σ(x - k), a2 = Σ(x - k)² of cnt values -> the same sums about knew."""
    dl = np.float64(knew) - np.float64(k)
    return a1 - cnt * dl, a2 + dl * (cnt * dl - 2.0 * a1)


# Statistics and gradient sums: each element is added to a partial sum of the
# compute dtype over a block of at most _BLOCK elements (channels first) or _ROWS
# rows (channels last), and the block sums accumulate in float64. The rounding error
# of a float32 block sum is bounded by the block length (<= ~2e-6, typically ~3e-7), it
# does not grow with the tensor, and the block loops run at the speed of float32
# vectors (float64 accumulation of every element converts every element: ~1.5x
# slower). For float64 data the blocks are float64. Statistics are centred: channels
# first, each work item on the mean of the first _CENTRE values of each channel's row
# (short rows: the whole row of the item's first sample, read just before the others);
# channels last, every item on one centre per channel, the mean of 8-32 rows spread
# over the tensor (_sample_centre, before the items: an item's own first block would be
# read twice from beyond L1, ~0.1-0.3 stream passes where items are short). An outlier
# moves a centre by at most its share of the values or rows it is the mean of. Each
# item's sums move to the channel's shift exactly in float64 before they fold. Limit:
# float32 squares overflow beyond |x - mean| ~ 1e19, where the statistics come out
# non-finite and training raises.
_BLOCK = 1024
_ROWS = 32
# Until the twenty-sixth session the centre was the mean of a long row's first block
# (1024 values), a second pass over them from L1. On the Xeon, statistics alone after
# a restore, (32, 128, 56, 56) float32 NCHW, 21 alternating calls, four runs, in
# prefetched read-only passes: 1024 values 1.45 / 1.39 / 1.43 / 1.44, 256 values 1.34 /
# 1.30 / 1.40 / 1.37 (64: 1.33 / 1.31). Fewer values let an outlier move the centre
# further: the M2 of (1, 2, 300000) N(0, 1) with a first value of 1e4, worst relative
# error of 5 draws, 3.0e-7 at 1024 and 256 values, 6.1e-7 at 128, 1.1e-6 at 64.
_CENTRE = 256


@_inline
def _centred_sums(blk, k, zero):
    """Σ(x - k) and Σ(x - k)² over one block, summed in the compute dtype (the type of
    ``zero``), returned as float64."""
    b1 = zero
    b2 = zero
    for i in range(len(blk)):
        d = load(blk[i]) - k
        b1 += d
        b2 += d * d
    return np.float64(b1), np.float64(b2)


# Short rows' sums as LLVM vector code (_row_sums, _row_mean). LLVM vectorizes
# _centred_sums' loop 32 float32 values a round (two 16-lane vectors) and adds what is
# left one value at a time, each add waiting on the last: a 7x7 row of 49 values is one
# vector round and 17 dependent scalar adds. _vector_sums adds whole 64-byte vectors
# into vector accumulators, a row's even and odd vectors into two pairs of them (two
# chains of dependent adds), and covers each row's rest with one more vector, the
# row's last W values, whose lanes already counted are selected to 0 (exactly 0: a NaN
# or an infinity there was counted once, by its own vector); its loads stay inside the
# row. The sums then go down one tree of shuffles and adds together. Until the
# thirtieth session it summed one row a call into one pair, its tree, float64
# conversion and partial sums paid per row: ~40 cycles a 7x7 row on each core, so the
# statistics of (64, 2048, 7, 7) took 1.55-1.62 read-only passes whether the tensor was
# in cache or not. It now sums the rows of one channel of an item, _GROUP // S rows at
# a time (lanes of 16 values or fewer: an offset channel's output as accurate as with
# one row of 256 values a call, the worst of 30 draws of tests/test_numerics.py's
# two-constant data at 0.77 of its bound against 0.71), so the statistics walk an item
# channel by channel, each channel's rows sample after sample (one sequential stream
# per sample of the item); rows of over half a group (one row a call) are not
# prefetched there (28x28, 31 alternating calls: 1.37 prefetched against 1.27 read
# passes). Any contiguous row of at least one vector takes it (_vectors_fit): with the
# tree paid once per group, the rules measured for a tree per row (rows shorter than
# three vectors or of a whole number of rounds were faster in the loop) no longer
# apply. Statistics alone through cpu.statistics after a restore, the twenty-ninth
# session's package imported beside this one, 31 alternating calls, in read-only
# passes, prefetched: (64, 2048, 7, 7) 1.65 -> 1.21, (32, 512, 14, 14) 1.28 -> 1.09;
# with groups of 256 values, (64, 1024, 8, 8) 1.49 -> 1.22, (16, 2048, 7, 7) 3.28 ->
# 1.65, (32, 256, 28, 28) 1.31 -> 1.29 (the same walk: one row a group).
_VECTOR_BYTES = 64  # one AVX-512 register; LLVM splits it in two where vectors are 32
_GROUP = 512  # values of a channel's short rows summed in the compute dtype at a time


def _vector_types(context, builder, aty, value, nbytes):
    """For the intrinsics' code: the array struct of ``value`` (an array of Numba type
    ``aty``), its element size in bytes, the lanes w of an ``nbytes``-byte vector of its
    dtype, the element and vector LLVM types, and ``splat(v, typ=vector type)``."""
    ary = context.make_array(aty)(context, builder, value)
    size = aty.dtype.bitwidth // 8
    w = nbytes // size
    ft = context.get_value_type(aty.dtype)
    vt = llir.VectorType(ft, w)

    def splat(v, typ=vt):
        out = cgutils.get_null_value(typ)
        for lane in range(w):
            out = builder.insert_element(out, v, llir.IntType(32)(lane))
        return out
    return ary, size, w, ft, vt, splat


@intrinsic
def _vector_sums(typingctx, x, n0, n1, c, k):
    """``(Σ(v - k), Σ(v - k)²)`` over the rows n0:n1 of channel c of an (N, C, S)
    float32/float64 array whose rows are contiguous and at least ``_VECTOR_BYTES``
    bytes, in lanes of its own dtype, as float64."""
    ret = types.UniTuple(types.float64, 2)

    def codegen(context, builder, sig, args):
        ary, size, w, ft, vt, splat = _vector_types(context, builder, sig.args[0], args[0],
                                                    _VECTOR_BYTES)
        i32, i64 = llir.IntType(32), llir.IntType(64)
        zero = cgutils.get_null_value(vt)
        ks = splat(args[4])
        # two pairs of accumulators, (Σ, Σ²) of a row's even and of its odd vectors: two
        # chains of dependent adds, each lane summing half as many values
        accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(2)]
                for _ in range(2)]

        def add(v, pair, keep=None):
            acc1, acc2 = accs[pair]
            d = builder.fsub(v, ks)
            if keep is not None:
                d = builder.select(keep, d, zero)
            builder.store(builder.fadd(builder.load(acc1), d), acc1)
            builder.store(builder.fadd(builder.load(acc2), builder.fmul(d, d)), acc2)

        stride_n, stride_c, _ = cgutils.unpack_tuple(builder, ary.strides, 3)
        S = cgutils.unpack_tuple(builder, ary.shape, 3)[2]
        rest = builder.srem(S, i64(w))
        lanes = llir.Constant(llir.VectorType(i64, w), list(range(w)))
        keep = builder.icmp_signed(">=", lanes, splat(builder.sub(i64(w), rest),
                                                      llir.VectorType(i64, w)))
        data = builder.bitcast(ary.data, llir.IntType(8).as_pointer())
        channel = builder.mul(args[3], stride_c)
        with cgutils.for_range_slice(builder, args[1], args[2], i64(1)) as (n, _):
            row = builder.bitcast(builder.gep(data, [builder.add(
                builder.mul(n, stride_n), channel)]), ft.as_pointer())

            def vector_at(i):
                ptr = builder.bitcast(builder.gep(row, [i]), vt.as_pointer())
                return builder.load(ptr, align=size)

            with cgutils.for_range(builder, builder.sdiv(S, i64(2 * w))) as loop:
                at = builder.mul(loop.index, i64(2 * w))
                add(vector_at(at), 0)
                add(vector_at(builder.add(at, i64(w))), 1)
            whole = builder.sdiv(S, i64(w))
            with builder.if_then(builder.trunc(whole, llir.IntType(1))):  # odd: one more
                add(vector_at(builder.sub(builder.mul(whole, i64(w)), i64(w))), 0)
            with builder.if_then(builder.icmp_signed(">", rest, i64(0))):
                add(vector_at(builder.sub(S, i64(w))), 1, keep)
        # both sums in one tree: each round adds the halves of each sum's m lanes into one
        # vector of m lanes, the first sum's h partials then the second's; the next round
        # takes both halves from that vector (its lanes 0:m and m:2m as m -> h)
        v1, v2 = (builder.fadd(builder.load(accs[0][i]), builder.load(accs[1][i]))
                  for i in range(2))
        m = w
        while m > 1:
            h = m // 2
            lo, hi = (builder.shuffle_vector(v1, v2, llir.Constant(
                llir.VectorType(i32, m), lanes)) for lanes in (
                list(range(h)) + list(range(m, m + h)),
                list(range(h, m)) + list(range(m + h, 2 * m))))
            v1 = v2 = builder.fadd(lo, hi)  # m lanes: h of the first sum, h of the second
            m = h
        v = v1  # 2 lanes: the two sums
        if size != 8:
            v = builder.fpext(v, llir.VectorType(llir.DoubleType(), 2))
        sums = [builder.extract_element(v, i32(lane)) for lane in (0, 1)]
        return context.make_tuple(builder, ret, sums)
    return ret(x, n0, n1, c, k), codegen


def _row_sums(x, n0, n1, c, k, zero):
    """``_centred_sums`` of the whole short rows n0:n1 of channel c of ``x`` (N, C, S):
    ``_vector_sums`` where ``x`` is float32/float64 and ``_vectors_fit`` (the dtype
    resolved at compile time, the rest at run time), else row by row."""


def _lanes(x, zero, nbytes=_VECTOR_BYTES):
    """(At compile time) the lanes of an ``nbytes`` vector of ``x``'s element type
    (``_vector_sums``'s by default), or 0 where the vector code does not take it (float16
    bits, or data of another compute dtype than ``zero``'s type)."""
    if x.dtype in (types.float32, types.float64) and zero == x.dtype:
        return nbytes // (x.dtype.bitwidth // 8)
    return 0


@_inline
def _rows_centred_sums(x, n0, n1, c, k, zero):
    """``_centred_sums`` of the rows n0:n1 of channel c, row by row."""
    a1 = 0.0
    a2 = 0.0
    for n in range(n0, n1):
        b1, b2 = _centred_sums(x[n, c], k, zero)
        a1 += b1
        a2 += b2
    return a1, a2


@overload(_row_sums, inline="always")
def _row_sums_impl(x, n0, n1, c, k, zero):
    w = _lanes(x, zero)
    if not w:
        return lambda x, n0, n1, c, k, zero: _rows_centred_sums(x, n0, n1, c, k, zero)

    def impl(x, n0, n1, c, k, zero):
        if _vectors_fit(x, w):
            return _vector_sums(x, n0, n1, c, k)
        return _rows_centred_sums(x, n0, n1, c, k, zero)
    return impl


def _row_mean(x, n, c, zero):
    """``_block_mean`` of the whole short row (n, c) of ``x``, from ``_vector_sums``
    where ``_row_sums`` takes them. Its own overload rather than ``_row_sums(...)[0] /
    S``: a second IR-inlined ``_centred_sums`` in one kernel trips Numba's SSA check
    (warnings), and without IR inlining the gain was lost; the fallback needs one sum,
    not two."""


@overload(_row_mean, inline="always")
def _row_mean_impl(x, n, c, zero):
    w = _lanes(x, zero)
    if not w:
        return lambda x, n, c, zero: _block_mean(x[n, c], zero)

    def impl(x, n, c, zero):
        if _vectors_fit(x, w):
            return _as(_vector_sums(x, n, n + 1, c, zero)[0] / x.shape[2], zero)
        return _block_mean(x[n, c], zero)
    return impl


@_inline
def _vectors_fit(x, w):
    """Whether ``_vector_sums`` takes the rows of ``x`` (N, C, S): contiguous, at least
    one vector of w lanes."""
    return x.shape[2] >= w and x.strides[2] == x.itemsize


@_inline
def _block_mean(blk, zero):
    """Mean of one block, summed in the compute dtype (a channel's centre)."""
    k = zero
    for i in range(len(blk)):
        k += load(blk[i])
    return k / _as(len(blk), zero)


def _statistics_cf(x, shift, part, scratch, nbn, nbc, nbs, ahead, out, zero):
    N, C, S = x.shape
    rows = max(1, _GROUP // S)  # short rows summed in the compute dtype at a time
    for t in prange(nbn * nbc * nbs):
        j, n0, n1, c0, c1, s0, s1 = _item_cf(t, N, C, S, nbn, nbc, nbs)
        p1, p2, kc = part[j, 0], part[j, 1], scratch[j, 0]
        for c in range(c0, c1):
            p1[c] = 0.0
            p2[c] = 0.0
        if s1 == s0 or n1 == n0:
            continue
        if S <= _BLOCK:  # whole short rows, each channel's rows of the item in turn
            for c in range(c0, c1):
                if rows > 1:  # rows over half a group are not prefetched (see above)
                    for n in range(n0, n1):
                        _ahead(x[n, c], ahead)
                kc[c] = _row_mean(x, n0, c, zero)  # centred on its first row's mean
                for g in range(n0, n1, rows):
                    a1, a2 = _row_sums(x, g, min(g + rows, n1), c, kc[c], zero)
                    p1[c] += a1
                    p2[c] += a2
        else:
            for n in range(n0, n1):
                for c in range(c0, c1):
                    xr = x[n, c, s0:s1]
                    if n == n0:  # centre the channel on the mean of its first values
                        kc[c] = _block_mean(xr[:min(_CENTRE, s1 - s0)], zero)
                    k = kc[c]
                    a1 = 0.0
                    a2 = 0.0
                    j0 = s0
                    while j0 < s1:
                        j1 = _chunk_end(x, n, c, j0, s1)
                        blk = x[n, c, j0:j1]
                        _ahead(blk, ahead)
                        b1, b2 = _centred_sums(blk, k, zero)
                        a1 += b1
                        a2 += b2
                        j0 = j1
                    p1[c] += a1
                    p2[c] += a2
        cnt = np.float64((n1 - n0) * (s1 - s0))
        for c in range(c0, c1):
            p1[c], p2[c] = _recentre(p1[c], p2[c], cnt, kc[c], shift[c])
    _fold(part, out)


# The forward computes act((x - h) g + e). Where every channel's h is 0 (the
# coefficients chose two constants for each, see fill_coefficients) it runs the
# "plain" twins of the forward kernels instead (bound with _CENTRED = False, a
# compile-time constant): act(x g + e), the same values bit for bit (x - 0 == x), one
# per-channel constant fewer to load per element. The backward's apply likewise,
# P g + Q' (v - m) + R' where every m is 0 (see gradient_coefficients).
_CENTRED = True


def _centred(v, h):
    return v - h if _CENTRED else v


def _forward_chunk(xr, orow, inplace, h, g, e, a):
    if inplace:  # one array reference: no runtime alias check, vectorizes
        for i in range(len(xr)):
            xr[i] = store(act_forward(_centred(load(xr[i]), h) * g + e, a), xr)
    else:
        for i in range(len(xr)):
            orow[i] = store(act_forward(_centred(load(xr[i]), h) * g + e, a), orow)


# A short row's in-place leaky ReLU (and identity) forward as LLVM vector code
# (_vector_leaky). LLVM vectorizes _forward_chunk's loop 32 float32 values a round and
# does the rest one value at a time: a 7x7 row is one round and 17 scalar elements.
# _vector_leaky computes the row's last vector first, then walks its whole vectors, and
# stores the last vector's results last: the lanes it shares with the last whole
# vector get the same value twice, each computed from the input, so the row is over in
# whole vectors and no load or store leaves the row. Vectors of 32 bytes, the width
# LLVM gives the loops on this AVX-512 target. The short-row walk runs it in a loop
# nest of its own: with the choice between it and _forward_chunk inside the row loop,
# Numba's reference-count pruning left an atomic incref and decref of each row view in
# the loop (seen in the assembly), and the forward ran 1.65-1.69 against 1.37-1.38
# stream passes. Long rows' chunks keep _forward_chunk: through _vector_leaky,
# (32, 128, 56, 56) ran 1.32 against 1.26 stream passes. The forward kernel alone after
# a restore, 31 alternating calls, in prefetched stream passes, _forward_chunk ->
# _vector_leaky: (64, 2048, 7, 7) 1.36-1.43 -> 1.31-1.39 (five runs, each faster),
# (32, 512, 14, 14) 1.19 -> 1.19, (32, 256, 28, 28) 1.24 / 1.26 -> 1.21 / 1.26,
# (16, 64, 28, 28) (3.2 MB) 1.45-1.51 -> 0.99-1.05 (three runs); through the layer,
# 21 alternating calls, in floors, (64, 2048, 7, 7) forward-train 1.99 / 1.96 -> 1.82 /
# 1.91, forward-eval 1.49 / 1.48 -> 1.46 / 1.42; (8, 64, 8, 8) forward-eval 0.33 ->
# 0.25 (101 calls).
_FORWARD_BYTES = 32


@intrinsic
def _vector_leaky(typingctx, row, h, g, e, a):
    """In place over a 1-D float32/float64 row of contiguous elements and at least
    ``_FORWARD_BYTES`` bytes: ``row = leaky_forward((row - h) * g + e, a)``, with h, g,
    e, a of the row's dtype (``_scalar.leaky_forward``: the larger of y and y a where
    a <= 1, else the smaller; NaN where y is NaN)."""
    def codegen(context, builder, sig, args):
        ary, size, w, ft, vt, splat = _vector_types(context, builder, sig.args[0], args[0],
                                                    _FORWARD_BYTES)
        i64 = llir.IntType(64)
        hs, gs, es, as_ = (splat(v) for v in args[1:])
        small = builder.fcmp_ordered("<=", args[4], ft(1.0))

        def leaky(ptr):
            y = builder.fadd(builder.fmul(builder.fsub(builder.load(ptr, align=size), hs),
                                          gs), es)
            t = builder.fmul(y, as_)
            keep = builder.select(small, builder.fcmp_ordered(">", y, t),
                                  builder.fcmp_ordered("<", y, t))
            return builder.select(keep, y, t)

        def vector_ptr(i):
            return builder.bitcast(builder.gep(ary.data, [i]), vt.as_pointer())

        n = builder.extract_value(ary.shape, 0)
        last = vector_ptr(builder.sub(n, i64(w)))
        tail = leaky(last)  # read before any store
        with cgutils.for_range(builder, builder.sdiv(n, i64(w))) as loop:
            ptr = vector_ptr(builder.mul(loop.index, i64(w)))
            builder.store(leaky(ptr), ptr, align=size)
        builder.store(tail, last, align=size)
        return context.get_dummy_value()
    if row.dtype not in (types.float32, types.float64) or \
            any(v != row.dtype for v in (h, g, e, a)):
        return None
    return types.void(row, h, g, e, a), codegen


def _leaky_lanes(x):
    """(At compile time) the lanes of ``_vector_leaky`` for ``x``'s dtype, 0 where it
    does not take it (float16 bits)."""


@overload(_leaky_lanes, inline="always")
def _leaky_lanes_impl(x):
    w = _lanes(x, x.dtype, _FORWARD_BYTES)
    return lambda x: w


def _leaky_row(xr, h, g, e, a):
    """``_vector_leaky`` (nothing where ``_leaky_lanes`` is 0: never called there)."""


@overload(_leaky_row, inline="always")
def _leaky_row_impl(xr, h, g, e, a):
    if not _lanes(xr, xr.dtype, _FORWARD_BYTES):
        return lambda xr, h, g, e, a: None
    return lambda xr, h, g, e, a: _vector_leaky(xr, h, g, e, _as(a, h))


@_inline
def _vector_rows(x, inplace, leaky):
    """Whether the forward of the short channels-first rows of ``x`` (N, C, S) runs
    ``_vector_leaky``: in place, the leaky family (``leaky``), float32/float64, rows
    contiguous and at least one vector long."""
    lanes = _leaky_lanes(x)
    return leaky and inplace and 0 < lanes <= x.shape[2] and x.strides[2] == x.itemsize


_LEAKY = False  # the family's activation is leaky ReLU (or identity): see _family


def _forward_cf(x, out, inplace, coef, a, ia, lo, nbn, nbc, nbs, ahead):
    N, C, S = x.shape
    vector = _vector_rows(x, inplace, _LEAKY)  # short rows: see the note on _vector_leaky
    for t in prange(nbn * nbc * nbs):
        j, n0, n1, c0, c1, s0, s1 = _item_cf(t, N, C, S, nbn, nbc, nbs)
        if S <= _BLOCK and vector:  # whole short rows (see the channels-first note)
            for n in range(n0, n1):
                for c in range(c0, c1):
                    xr = x[n, c]
                    _ahead(xr, ahead)
                    _leaky_row(xr, coef[0, c], coef[2, c], coef[3, c], a)
            continue
        if S <= _BLOCK:
            for n in range(n0, n1):
                for c in range(c0, c1):
                    xr = x[n, c]
                    _ahead(xr, ahead)
                    _forward_chunk(xr, out[n, c], inplace, coef[0, c], coef[2, c], coef[3, c],
                                   a)
            continue
        for n in range(n0, n1):
            for c in range(c0, c1):
                h = coef[0, c]
                g = coef[2, c]
                e = coef[3, c]
                j0 = s0
                while j0 < s1:
                    j1 = _chunk_end(x, n, c, j0, s1)
                    xr = x[n, c, j0:j1]
                    _ahead(xr, ahead)
                    _forward_chunk(xr, out[n, c, j0:j1], inplace, h, g, e, a)
                    j0 = j1


@_inline
def _chunk_pair(src, dz, n, c, j0, s1, ahead):
    """Chunk j0:j1 (``_chunk_end`` of ``src``) of row (n, c) of ``src`` and ``dz``, with
    the lines ahead of both requested: ``(j1, src chunk, dz chunk)``."""
    j1 = _chunk_end(src, n, c, j0, s1)
    sr = src[n, c, j0:j1]
    dr = dz[n, c, j0:j1]
    _ahead(sr, ahead)
    _ahead(dr, ahead)
    return j1, sr, dr


def _grad_sums(sr, dr, coef, c, a, ia, lo, from_x):
    """Σ g and Σ g x̂ over one chunk of channel c, summed in the compute dtype, as
    float64."""
    h, b, g, e, k, f = coef[0, c], coef[1, c], coef[2, c], coef[3, c], coef[7, c], coef[8, c]
    b1 = a - a
    b2 = a - a
    for i in range(len(sr)):
        gr, xh = _grad_and_centred(load(sr[i]), load(dr[i]), h, b, g, e, k, f, a, ia, lo,
                                   from_x)
        b1 += gr
        b2 += gr * xh
    return np.float64(b1), np.float64(b2)


def _backward_reduce_cf(src, dz, coef, a, ia, lo, from_x, part, scratch, nbn, nbc, nbs, ahead,
                        out):
    N, C, S = src.shape
    for t in prange(nbn * nbc * nbs):
        j, n0, n1, c0, c1, s0, s1 = _item_cf(t, N, C, S, nbn, nbc, nbs)
        p1, p2 = part[j, 0], part[j, 1]
        for c in range(c0, c1):
            p1[c] = 0.0
            p2[c] = 0.0
        if S <= _BLOCK:  # whole short rows (see the channels-first note)
            for n in range(n0, n1):
                for c in range(c0, c1):
                    sr = src[n, c]
                    dr = dz[n, c]
                    _ahead(sr, ahead)
                    _ahead(dr, ahead)
                    a1, a2 = _grad_sums(sr, dr, coef, c, a, ia, lo, from_x)
                    p1[c] += a1
                    p2[c] += a2
            continue
        for n in range(n0, n1):
            for c in range(c0, c1):
                j0 = s0
                while j0 < s1:
                    j0, sr, dr = _chunk_pair(src, dz, n, c, j0, s1, ahead)
                    a1, a2 = _grad_sums(sr, dr, coef, c, a, ia, lo, from_x)
                    p1[c] += a1
                    p2[c] += a2
    _fold(part, out)


def _train_rows(srs, drs, xrs, dx, cc, a, ia, lo, from_x):
    """The training rows of _apply_rows: dx = P g + Q' (v - m) + R', v = x (standard,
    ``from_x``) or y (in place, recovered by the activation's inverse); called with a
    literal ``from_x``, so that each call compiles one path."""
    h, g, e, p, q, r, m = cc
    for i in range(len(srs[0])):
        hi, gi, ei, pi, qi, ri, mi = (_at(h, i), _at(g, i), _at(e, i), _at(p, i), _at(q, i),
                                      _at(r, i), _at(m, i))
        for k in range(len(srs)):
            sv = load(srs[k][i])
            v = sv if from_x else act_inverse(sv, ia, lo)
            xrs[k][i] = store(pi * _grad(sv, load(drs[k][i]), hi, gi, ei, a, from_x)
                              + qi * _centred(v, mi) + ri, dx)


def _apply_rows(srs, drs, xrs, dx, cc, a, ia, lo, from_x, train):
    """Rows of the backward's write pass: ``xr = P g + Q' (v - m) + R'`` (``train``) or
    ``P g`` for each row of the tuples ``srs``, ``drs``, ``xrs`` (one row, or four with
    the same channels: each channel's coefficients are loaded once for them, see
    _JAM_MIN). ``cc`` holds the coefficients (h, g, e, P, Q', R', m: rows 0, 2, 3, 4, 5,
    6, 9): scalars for a channels-first row, per-channel slices for a channels-last one
    (``_at`` picks).
    In place, the caller passes ``drs`` as ``xrs``: loads and stores then go through one
    reference and LLVM vectorizes without a runtime alias check (which would fail and
    take the scalar loop: 2x slower)."""
    h, g, e, p, q, r, m = cc
    # one loop per case, from_x a literal in each (_train_rows): with from_x tested per
    # element LLVM kept both paths (1.9 stream passes instead of 1.1, channels first)
    if train and from_x:
        _train_rows(srs, drs, xrs, dx, cc, a, ia, lo, True)
    elif train:
        _train_rows(srs, drs, xrs, dx, cc, a, ia, lo, False)
    else:
        for i in range(len(srs[0])):
            hi, gi, ei, pi = _at(h, i), _at(g, i), _at(e, i), _at(p, i)
            for k in range(len(srs)):
                xrs[k][i] = store(pi * _grad(load(srs[k][i]), load(drs[k][i]), hi, gi, ei, a,
                                             from_x), dx)


def _backward_apply_cf(src, dz, dx, inplace, coef, a, ia, lo, from_x, train, nbn, nbc, nbs,
                       ahead):
    N, C, S = src.shape
    for t in prange(nbn * nbc * nbs):
        j, n0, n1, c0, c1, s0, s1 = _item_cf(t, N, C, S, nbn, nbc, nbs)
        for n in range(n0, n1):
            for c in range(c0, c1):
                cc = (coef[0, c], coef[2, c], coef[3, c], coef[4, c], coef[5, c], coef[6, c],
                      coef[9, c])
                if S <= _BLOCK:  # whole short rows (see the channels-first note)
                    sr = src[n, c]
                    dr = dz[n, c]
                    _ahead(sr, ahead)
                    _ahead(dr, ahead)
                    drs = (dr,)
                    if inplace:
                        _apply_rows((sr,), drs, drs, dx, cc, a, ia, lo, from_x, train)
                    else:
                        _apply_rows((sr,), drs, (dx[n, c],), dx, cc, a, ia, lo, from_x, train)
                    continue
                j0 = s0
                while j0 < s1:
                    j1, sr, dr = _chunk_pair(src, dz, n, c, j0, s1, ahead)
                    drs = (dr,)
                    if inplace:
                        _apply_rows((sr,), drs, drs, dx, cc, a, ia, lo, from_x, train)
                    else:
                        _apply_rows((sr,), drs, (dx[n, c, j0:j1],), dx, cc, a, ia, lo, from_x,
                                    train)
                    j0 = j1


# ---- channels last: views (M, C) ---------------------------------------------------

@_inline
def _sample_rows(M):
    """Rows in the channels-last centre's sample: _ROWS, fewer where the tensor has
    under 8 * _ROWS rows (at most an eighth of them, at least 8): the sample is read
    from memory again by the items."""
    return min(_ROWS, M, max(8, M // 8))


@_inline
def _sample_centre(x, kc, c0, c1, zero):
    """kc[c] for c0 <= c < c1 = the mean of ``_sample_rows`` rows of x spread evenly over
    its M rows, summed in the compute dtype (the type of ``zero``)."""
    M = x.shape[0]
    R = _sample_rows(M)
    k = kc[c0:c1]
    for c in range(c1 - c0):
        k[c] = zero
    for i in range(R):
        xr = x[(i * M) // R, c0:c1]
        for c in range(c1 - c0):
            k[c] += load(xr[c])
    for c in range(c1 - c0):
        k[c] /= _as(max(R, 1), zero)


_SAMPLE_SERIAL_MAX = 1 << 17  # elements: a larger sample is read by all threads


# The channels-last reductions (statistics, backward reduce) read each item as four
# streams a quarter of its rows apart (one row of each a pass: a quarter of the block
# sums' loads and stores per element), in at most _STREAM_ITEMS items, not prefetched
# in software except where said below. Four adjacent rows a pass (until the
# sixteenth session) ran 2-2.5x slower than one sequential read on the sixteenth
# session's AMD EPYC (Zen 4): its hardware prefetcher follows four sequential
# streams, not lines taken 512 bytes apart in turn (one thread, 51 MB, a
# plain Numba loop: 9-11 GB/s adjacent, 23-27 GB/s in four streams, 28 GB/s a flat
# sum). Statistics alone after a restore, 15 alternating calls, in stream passes,
# adjacent rows prefetched in 64 items -> four streams in 8 items, not prefetched:
# (32, 128, 56, 56) NHWC 1.56-1.92 -> 1.05-1.14, (64, 3, 224, 224) 1.54 -> 1.18,
# (8, 64, 16, 32, 32) 1.54 -> 1.12, (64, 2048, 7, 7) 1.92 -> 1.23 (channels first:
# 1.20, 1.00, 0.99, 1.67). Prefetching the streams made them slower (1.07 -> 1.40 on
# the first shape), and so did 64 items (shorter streams: 1.18 -> 1.56 on the second).
# The backward reduce, one row a pass prefetched in 64 items -> four streams in 8:
# 1.32-1.40 -> 1.17-1.19 stream passes of z and dz on the first shape (channels first
# 1.03-1.47), 0.90 on (64, 2048, 7, 7), 1.29 on (64, 3, 224, 224) (channels first 1.09,
# 1.53).
_STREAM_ITEMS = 8
# Where _config.PREFETCH_STREAMS is set (the Xeon of BENCHMARKS.md), the streams ask for
# the lines that distance past each row's, for rows of up to _STREAM_PREFETCH_MAX bytes:
# all of a row's lines are asked for at once, and longer rows' bursts ran slower.
# Statistics alone after a restore, float32, 31 alternating calls, two runs, in
# read-only passes, not prefetched -> 1024 bytes ahead: (100352, 128) (merged rows of
# 2 KB) 1.34 / 1.38 -> 1.25 / 1.29, (3211264, 3) (rows of 1920 bytes) 1.45 / 1.53 ->
# 1.32 / 1.40, (3136, 2048) (rows of 8 KB) 1.41 / 1.37 -> 1.62 / 1.51. Through the
# layer, (32, 128, 56, 56) NHWC, 21 alternating calls, three runs, in floors:
# forward-train 1.63 / 1.62 / 1.69 -> 1.58 / 1.53 / 1.73, backward-train 1.74 / 1.64 /
# 1.50 -> 1.61 / 1.62 / 1.54; (64, 2048, 7, 7) NHWC backward-train 1.84 / 1.66 -> 1.96 /
# 1.77 with its 8 KB rows prefetched, hence the limit.
_STREAM_PREFETCH_MAX = 2048


def _statistics_cl(x, shift, part, scratch, nbm, nbc, _nb, ahead, out, zero):
    M, C = x.shape
    kc = scratch[0, 2]  # the channels' common centre, before the items
    if _sample_rows(M) * C <= _SAMPLE_SERIAL_MAX:
        _sample_centre(x, kc, 0, C, zero)
    else:  # by channel blocks of about 1024
        nb = (C + 1023) // 1024
        for j in prange(nb):
            s0, s1 = _span(j, nb, C)
            _sample_centre(x, kc, s0, s1, zero)
    for t in prange(nbm * nbc):
        jm, m0, m1, c0, c1 = _item_cl(t, M, C, nbm, nbc)
        w = c1 - c0
        p1, p2 = part[jm, 0, c0:c1], part[jm, 1, c0:c1]
        b1, b2, k = scratch[jm, 0, c0:c1], scratch[jm, 1, c0:c1], kc[c0:c1]
        for c in range(w):
            p1[c] = 0.0
            p2[c] = 0.0
        if m1 == m0:
            continue
        q = (m1 - m0) // 4  # four streams, a quarter of the item's rows apart
        for i0 in range(0, q + 1, _ROWS // 4):  # block sums of _ROWS rows; the last
            for c in range(w):                  # block also takes the n % 4 rows left
                b1[c] = zero
                b2[c] = zero
            for m in range(m0 + i0, m0 + min(i0 + _ROWS // 4, q)):
                xr = x[m, c0:c1]
                xs = x[m + q, c0:c1]
                xu = x[m + 2 * q, c0:c1]
                xv = x[m + 3 * q, c0:c1]
                _ahead(xr, ahead)
                _ahead(xs, ahead)
                _ahead(xu, ahead)
                _ahead(xv, ahead)
                for c in range(w):
                    d = load(xr[c]) - k[c]
                    e = load(xs[c]) - k[c]
                    f = load(xu[c]) - k[c]
                    g = load(xv[c]) - k[c]
                    b1[c] += (d + e) + (f + g)
                    b2[c] += (d * d + e * e) + (f * f + g * g)
            if i0 + _ROWS // 4 > q:
                for m in range(m0 + 4 * q, m1):
                    xr = x[m, c0:c1]
                    for c in range(w):
                        d = load(xr[c]) - k[c]
                        b1[c] += d
                        b2[c] += d * d
            for c in range(w):
                p1[c] += np.float64(b1[c])
                p2[c] += np.float64(b2[c])
        s = shift[c0:c1]
        cnt = np.float64(m1 - m0)
        for c in range(w):
            p1[c], p2[c] = _recentre(p1[c], p2[c], cnt, k[c], s[c])
    _fold(part, out)


def _forward_rows(xs, os, inplace, h, g, e, a, out):
    """The channels-last forward of the rows of the tuple ``xs`` (one row, or four with
    the same channels: each channel's constants are loaded once for them, see _JAM_MIN)
    into the rows of ``os``; in place ``os`` is not used, and loads and stores go
    through one reference (no runtime alias check, see _apply_rows)."""
    if inplace:
        for c in range(len(xs[0])):
            hc, gc, ec = h[c], g[c], e[c]
            for k in range(len(xs)):
                xs[k][c] = store(act_forward(_centred(load(xs[k][c]), hc) * gc + ec, a), out)
    else:
        for c in range(len(xs[0])):
            hc, gc, ec = h[c], g[c], e[c]
            for k in range(len(xs)):
                os[k][c] = store(act_forward(_centred(load(xs[k][c]), hc) * gc + ec, a), out)


# The element-wise passes on wide channels-last rows (an item at least _JAM_MIN
# channels wide: 2048 and 4096 channels, not merged) walk four rows at a time, each
# channel's constants loaded once for the four: a whole row's constants (16-56 KB) do
# not stay in L1 while the rows stream through it (the same kernel ran 0.9-1.1 stream
# passes on (3136, 2048) with the constants of 512 channels repeated, 1.7-1.8 with the
# row's own). The kernels alone after a restore, 15-31 alternating calls, 3-4 runs, in
# stream passes, one row (plain forward and the apply; the centred forward in groups of
# 8 rows 512 channels at a time, the twenty-first session's) -> four rows:
# (3136, 2048) plain forward 1.62-1.70 -> 1.41-1.61, centred 1.84-2.44 -> 1.45-1.84,
# backward apply 1.25-1.33 -> 1.08-1.12; (256, 4096) (one serial item) the forwards
# unchanged within the noise (1.41-2.22 and 1.30-1.80), the apply 1.47-1.91 -> 1.03-1.93
# (three runs of four 1.03-1.31). A plain Numba forward on (6272, 1024): 1.31-1.67 ->
# 1.27-1.54; on merged rows of 512 four rows were 1.5-1.9x slower (lines 2 KB apart in
# turn, not one sequential stream): 1024 channels keep one row at a time.
_JAM_MIN = 2048


def _forward_cl(x, out, inplace, coef, a, ia, lo, nbm, nbc, _nb, ahead):
    M, C = x.shape
    for t in prange(nbm * nbc):
        jm, m0, m1, c0, c1 = _item_cl(t, M, C, nbm, nbc)
        h, g, e = coef[0, c0:c1], coef[2, c0:c1], coef[3, c0:c1]
        m = m0
        if c1 - c0 >= _JAM_MIN:
            while m + 4 <= m1:
                xs = (x[m, c0:c1], x[m + 1, c0:c1], x[m + 2, c0:c1], x[m + 3, c0:c1])
                _forward_rows(xs, (out[m, c0:c1], out[m + 1, c0:c1], out[m + 2, c0:c1],
                                   out[m + 3, c0:c1]), inplace, h, g, e, a, out)
                m += 4
        for m in range(m, m1):
            xr = x[m, c0:c1]
            _ahead(xr, ahead)
            _forward_rows((xr,), (out[m, c0:c1],), inplace, h, g, e, a, out)


def _backward_reduce_cl(src, dz, coef, a, ia, lo, from_x, part, scratch, nbm, nbc, _nb, ahead,
                        out):
    M, C = src.shape
    for t in prange(nbm * nbc):
        jm, m0, m1, c0, c1 = _item_cl(t, M, C, nbm, nbc)
        w = c1 - c0
        h, b, g, e = coef[0, c0:c1], coef[1, c0:c1], coef[2, c0:c1], coef[3, c0:c1]
        k, f = coef[7, c0:c1], coef[8, c0:c1]
        p1, p2 = part[jm, 0, c0:c1], part[jm, 1, c0:c1]
        b1, b2 = scratch[jm, 0, c0:c1], scratch[jm, 1, c0:c1]
        for c in range(w):
            p1[c] = 0.0
            p2[c] = 0.0
        q = (m1 - m0) // 4  # four streams, as in _statistics_cl
        for i0 in range(0, q + 1, _ROWS // 4):
            for c in range(w):
                b1[c] = a - a
                b2[c] = a - a
            for m in range(m0 + i0, m0 + min(i0 + _ROWS // 4, q)):
                s0, s1, s2, s3 = (src[m, c0:c1], src[m + q, c0:c1], src[m + 2 * q, c0:c1],
                                  src[m + 3 * q, c0:c1])
                d0, d1, d2, d3 = (dz[m, c0:c1], dz[m + q, c0:c1], dz[m + 2 * q, c0:c1],
                                  dz[m + 3 * q, c0:c1])
                _ahead(s0, ahead)
                _ahead(s1, ahead)
                _ahead(s2, ahead)
                _ahead(s3, ahead)
                _ahead(d0, ahead)
                _ahead(d1, ahead)
                _ahead(d2, ahead)
                _ahead(d3, ahead)
                for c in range(w):
                    g0, x0 = _grad_and_centred(load(s0[c]), load(d0[c]), h[c], b[c], g[c],
                                               e[c], k[c], f[c], a, ia, lo, from_x)
                    g1, x1 = _grad_and_centred(load(s1[c]), load(d1[c]), h[c], b[c], g[c],
                                               e[c], k[c], f[c], a, ia, lo, from_x)
                    g2, x2 = _grad_and_centred(load(s2[c]), load(d2[c]), h[c], b[c], g[c],
                                               e[c], k[c], f[c], a, ia, lo, from_x)
                    g3, x3 = _grad_and_centred(load(s3[c]), load(d3[c]), h[c], b[c], g[c],
                                               e[c], k[c], f[c], a, ia, lo, from_x)
                    b1[c] += (g0 + g1) + (g2 + g3)
                    b2[c] += (g0 * x0 + g1 * x1) + (g2 * x2 + g3 * x3)
            if i0 + _ROWS // 4 > q:
                for m in range(m0 + 4 * q, m1):
                    sr = src[m, c0:c1]
                    dr = dz[m, c0:c1]
                    for c in range(w):
                        gr, xh = _grad_and_centred(load(sr[c]), load(dr[c]), h[c], b[c],
                                                   g[c], e[c], k[c], f[c], a, ia, lo, from_x)
                        b1[c] += gr
                        b2[c] += gr * xh
            for c in range(w):
                p1[c] += np.float64(b1[c])
                p2[c] += np.float64(b2[c])
    _fold(part, out)


def _backward_apply_cl(src, dz, dx, inplace, coef, a, ia, lo, from_x, train, nbm, nbc, _nb,
                       ahead):
    M, C = src.shape
    for t in prange(nbm * nbc):
        jm, m0, m1, c0, c1 = _item_cl(t, M, C, nbm, nbc)
        cc = (coef[0, c0:c1], coef[2, c0:c1], coef[3, c0:c1], coef[4, c0:c1], coef[5, c0:c1],
              coef[6, c0:c1], coef[9, c0:c1])
        m = m0
        if c1 - c0 >= _JAM_MIN:
            while m + 4 <= m1:
                srs = (src[m, c0:c1], src[m + 1, c0:c1], src[m + 2, c0:c1], src[m + 3, c0:c1])
                drs = (dz[m, c0:c1], dz[m + 1, c0:c1], dz[m + 2, c0:c1], dz[m + 3, c0:c1])
                if inplace:
                    _apply_rows(srs, drs, drs, dx, cc, a, ia, lo, from_x, train)
                else:
                    _apply_rows(srs, drs, (dx[m, c0:c1], dx[m + 1, c0:c1], dx[m + 2, c0:c1],
                                           dx[m + 3, c0:c1]), dx, cc, a, ia, lo, from_x, train)
                m += 4
        for m in range(m, m1):
            sr = src[m, c0:c1]
            drs = (dz[m, c0:c1],)
            _ahead(sr, ahead)
            _ahead(drs[0], ahead)
            if inplace:
                _apply_rows((sr,), drs, drs, dx, cc, a, ia, lo, from_x, train)
            else:
                _apply_rows((sr,), drs, (dx[m, c0:c1],), dx, cc, a, ia, lo, from_x, train)


def _clone(fn, suffix, overrides):
    """A copy of ``fn`` with some globals replaced and its own qualname.

    The qualname matters: Numba's disk cache keys entries by qualname and signature,
    not by globals or by the ``parallel`` flag, so copies sharing one qualname would
    load each other's machine code."""
    g = dict(fn.__globals__)
    g.update(overrides)
    f = pytypes.FunctionType(fn.__code__, g, fn.__name__ + suffix, fn.__defaults__,
                             fn.__closure__)
    f.__qualname__ = fn.__qualname__ + suffix
    return f


def _family(name, centred=True):
    """Globals that bind the kernels to one activation family of ``_scalar`` (and, with
    ``centred=False``, the forward to its plain form)."""
    tag = name if centred else name + "_plain"
    ov = {f"act_{op}": _inline(getattr(_scalar, f"{name}_{op}"))
          for op in ("forward", "inverse", "grad_from_output", "grad_from_input")}
    ov["_CENTRED"] = centred
    ov["_LEAKY"] = name == "leaky"
    ov["_centred"] = _inline(_clone(_centred, "_" + tag, ov))
    for helper in (_forward_chunk, _forward_rows, _grad_and_centred, _grad_sums, _grad,
                   _train_rows, _apply_rows):
        ov[helper.__name__] = _inline(_clone(helper, "_" + tag, ov))
    return ov


_FAMILIES = {name: _family(name) for name in ("leaky", "elu", "relu")}
_PLAIN = {name: _family(name, centred=False) for name in _FAMILIES}


def _twins(fn, suffix, ov):
    """The serial and the parallel kernel of ``fn`` bound to the globals ``ov``."""
    return tuple(njit(**_config.jit_options(par))(_clone(fn, f"{suffix}_{tag}", ov))
                 for par, tag in ((False, "serial"), (True, "parallel")))


_KERNELS = {}
for _fn in (_statistics_cf, _statistics_cl, _forward_cf, _forward_cl, _backward_reduce_cf,
            _backward_reduce_cl, _backward_apply_cf, _backward_apply_cl):
    for _fam in (("any",) if _fn.__name__.startswith("_statistics") else _FAMILIES):
        _KERNELS[_fn.__name__[1:], _fam] = _twins(_fn, f"_{_fam}", _FAMILIES.get(_fam, {}))
for _fn in (_forward_cf, _forward_cl, _backward_apply_cf, _backward_apply_cl):  # "plain_..."
    for _fam in _PLAIN:
        _KERNELS["plain" + _fn.__name__, _fam] = _twins(_fn, f"_{_fam}_plain", _PLAIN[_fam])


# ---- threads: which twin runs, and how concurrent callers stay safe ---------------
# Numba's workqueue layer must not be entered by two Python threads at once, and the
# GNU OpenMP layer must not be used by a child forked from a process that used it.
# So: the parallel twin runs under a lock unless the layer is known to be thread
# safe, and a forked child of a process that ran a parallel kernel uses the serial
# twins (same results, one thread).

_lock = threading.Lock()
_layer = None          # Numba's threading layer, known after the first parallel call
_serial_only = False   # set in a forked child of a process that used the pool


def _after_fork_in_child():
    global _lock, _serial_only
    _lock = threading.Lock()
    if _layer is not None and _layer != "tbb":
        _serial_only = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


ITEMS = 64  # work items of a large tensor's walk, whatever the number of threads
# Each thread runs one static block of a walk's items (Numba's prange). The thirty-first
# session had the forward's kernels take their items dynamically instead (an atomic
# counter: a thread that wakes late takes fewer), measured 0.92-0.96 of the time with
# each operation repeated over the same array after a restore; the thirty-second session
# withdrew it: in a chain of layers (each layer's input freshly written by the layer
# before it, as in a network), forward-train ran 1.02-1.09x slower with it on every
# large shape ((32, 128, 56, 56) NCHW 1.062-1.083, five runs; NHWC 1.027-1.029; (8, 64,
# 16, 32, 32) 1.086; (64, 3, 224, 224) 1.069; (64, 2048, 7, 7) 1.025), the fused eval
# 0.92-1.08 by shape (see BENCHMARKS.md, thirty-second session).


# ELU's kernels compute an exponential or a logarithm per element (scalar calls: no
# vector math library): an element weighs about 16 of the memory-bound ones in the
# choice between one serial item and the threads. (256, 4096) and (32, 64, 32, 32)
# float32 ELU, serial over parallel time: 1.65-1.85 (forward-train, -eval, backward).
_WEIGHT = {_scalar.ELU: 16}
# The backward's kernels read two tensors (z or x, and dz) and the training backward's
# two passes move five tensors' bytes: an element weighs 4 of the forward's, so they
# take the threads from a quarter of PARALLEL_MIN (2^19 elements by default). Through
# the layer after the bench's restore, paired in one process, 31 alternating calls,
# float32 backward-train in floors, serial -> parallel: (256, 4096) 1.42 -> 1.03-1.10
# (two runs), (16, 2048, 7, 7) NCHW 2.41 -> 1.12, NHWC 1.91 -> 1.10, (16, 64, 32, 32)
# 1.43 -> 0.95 and 1.63 -> 1.04; 786432 elements ((192, 4096), (12, 64, 32, 32),
# (8, 2048, 7, 7), both layouts) 1.13-1.50 -> 0.87-1.14; (128, 4096) about even
# (0.94-1.00 -> 1.01-1.03); (64, 4096) 0.74-0.76 -> 0.95-0.99. The forwards keep the
# threshold: at 2^20 elements (256, 4096) forward-train ran 1.32-1.42 serial against
# 1.43-1.52 parallel (other shapes of that size gained).
_BACKWARD_WEIGHT = 4


def _plan(size, act=None, backward=False):
    """(work items to aim for, whether the parallel twin runs): one serial item below
    ``PARALLEL_MIN`` elements (those of ``act``'s kernels weighted by ``_WEIGHT``, and
    by ``_BACKWARD_WEIGHT`` in the backward), else ``ITEMS`` items. The split depends
    on the size only, not on the number of threads, so the partial sums are the same
    on every machine (the serial and parallel twins may still differ in the last bits:
    LLVM may vectorize their float32 block sums with different lanes)."""
    weight = _WEIGHT.get(act, 1) * (_BACKWARD_WEIGHT if backward else 1)
    if size * weight < _config.PARALLEL_MIN:
        return 0, False
    return ITEMS, not _serial_only and _num_threads() > 1


def _num_threads():
    """``numba.get_num_threads()``, the calling thread's count. Numba's function takes
    two locks on every call, one of them a multiprocessing lock (a semaphore): after the
    copy of a few MB that evicts the caches it took 31-38 µs, against ~5 µs here (warm:
    0.69 against 0.18 µs), and a training forward asks twice. Once Numba has launched
    its threads, its C getter alone gives the same answer."""
    get = getattr(_numba_parallel, "_get_num_threads", None)
    if get is not None and getattr(_numba_parallel, "_is_initialized", False):
        return get()
    return numba.get_num_threads()


def _run(twins, parallel, *args):
    """Run the serial or the parallel one of ``twins`` (a pair of ``_KERNELS`` or
    ``_ONE``)."""
    _config.restart_labels()
    serial, par = twins
    if not parallel:
        return serial(*args)
    global _layer
    if _layer in ("tbb", "omp"):
        return par(*args)
    with _lock:
        out = par(*args)
        if _layer is None:
            _layer = numba.threading_layer()
        return out


def _blocks_cf(shape, target):
    """(row blocks, channel blocks, position blocks) of a channels-first walk.

    Each item is one contiguous piece of memory: blocks of whole samples (all channels)
    where there are as many samples as items, else blocks of channels within a sample.
    Until the twenty-first session, rows of few positions (7x7, 14x14) were grouped
    into items of several samples and a block of channels, so that the statistics
    centred each channel once per item: such an item reads one piece per sample, a
    sample's length apart, and the hardware prefetcher starts over on each. Through
    the layer, float32, 11 alternating repeats after the bench's restore, in floors,
    grouped -> contiguous (the reductions in ``_STREAM_ITEMS`` items, see ``_walk``):
    (64, 2048, 7, 7) forward-train 2.71 -> 1.96, forward-eval 1.89 -> 1.31,
    backward-train 2.17 -> 1.36; (32, 512, 14, 14) 2.86 -> 2.06, 2.19 -> 1.65,
    1.93 -> 1.52; (32, 256, 28, 28) 2.08 -> 1.55, 1.58 -> 1.20, 1.42 -> 1.30. Rows of
    ``_BLOCK`` positions or more were already walked this way."""
    N, C, S = shape
    if not target:
        return 1, 1, 1
    nbn = max(1, min(N, target))
    nbc = max(1, min(C, -(-target // nbn)))
    nbs = max(1, min(-(-S // 4096), -(-target // (nbn * nbc))))
    return nbn, nbc, nbs


def _blocks_cl(shape, target, whole_rows=False):
    """(row blocks, channel blocks, 1) of a channels-last walk. ``whole_rows`` (the
    element-wise passes: forward, backward apply, which keep no partial sums): items
    of whole rows wherever there are as many rows as items, so that each item reads one
    contiguous piece. Split rows read pieces a row's length apart; (256, 4096) and
    (64, 2048, 7, 7) NHWC, kernels alone, 41 alternating calls, two runs, in stream
    passes: forward 1.81-1.90 -> 1.60-1.62 and 1.51-1.52 -> 1.42-1.48, backward apply
    1.18-1.31 -> 1.04-1.16 and 1.24-1.26 -> 0.94-1.00. The reductions keep blocks of
    channels: their partial sums are (row blocks, C)."""
    M, C = shape
    if not target:
        return 1, 1, 1
    if whole_rows and M >= target:
        return target, 1, 1
    nbm = max(1, min(-(-M // 64), target))
    nbc = max(1, min(-(-C // 64), -(-target // nbm)))
    return nbm, nbc, 1


def _size(views):
    return sum(v.size for v in views)


_WIDE = 512  # channels-last rows are merged into rows of about this many elements
_WIDEN_ROWS_MIN = 4096  # ... in a small tensor, from this many rows (see _widen)


def _widen(group, target):
    """Split a group of same-shape views (source, gradient, output...) for the walk.

    A channels-last ``(M, C)`` walk runs its inner loop over the C channels of a row:
    with few channels (C = 3) it cannot vectorize and pays its loop overhead every few
    elements. When every array of the group has contiguous rows, r rows are merged into
    one row of r * C elements (a view, never a copy) and the per-channel constants are
    tiled r times; the leftover M % r rows form a second group. Returns a list of
    ``(group, r)``; arrays that were the same object stay the same object.

    A small tensor (``target`` 0: one serial item) is widened only when it has many
    rows: tiling the constants and folding the tiled sums costs ~15-40 µs a call, a
    row ~14 ns. Measured forward-train, widened vs not: (8, 8, 8, 64) 69 vs 50 µs,
    (8, 8, 8, 3) 95 vs 52 µs, (16, 32, 32, 3) 122 vs 350 µs.

    r * C is a whole number of 16-element steps where C allows it (C = 3: rows of 480,
    not 510): the vectorized loops then leave no scalar tail per row. (64, 3, 224, 224)
    NHWC statistics alone, 41 alternating calls, two runs: 1.34-1.38 -> 1.29-1.31 stream
    passes (with the four-row statistics, which alone ran it at 1.46-1.49)."""
    v = group[0]
    if v.ndim != 2:
        return [(group, 1)]
    M, C = v.shape
    r = _WIDE // max(C, 1)
    step = 16 // math.gcd(C, 16)  # rows of whole 16-element steps: no scalar tail
    if r > step:
        r -= r % step
    r = min(M, r)
    if r <= 1 or (not target and M < _WIDEN_ROWS_MIN):
        return [(group, 1)]
    for a in group:
        if a.strides != (C * a.itemsize, a.itemsize):
            return [(group, 1)]
    q = M // r * r
    parts = [(_merged(group, lambda b: b[:q].reshape(q // r, r * C)), r)]
    if q < M:
        parts.append((_merged(group, lambda b: b[q:]), 1))
    return parts


def _merged(group, view):
    """``view`` of every array of ``group``; the same object gives the same view."""
    out = []
    for i, a in enumerate(group):
        j = 0
        while group[j] is not a:
            j += 1
        out.append(out[j] if j < i else view(a))
    return tuple(out)


def _walk(groups, target, whole_rows=False, streams=False):
    """(group, kind, blocks, r) for every group of same-shape views: blocks are the
    walk's (row, channel, position) blocks and its prefetch distance; r > 1 when
    channels-last rows were merged (``_widen``); ``whole_rows``: see ``_blocks_cl``;
    ``streams``: the channels-last reductions' walk (``_STREAM_ITEMS``)."""
    for group in groups:
        for g, r in _widen(group, target):
            v = g[0]
            if v.ndim == 2 and streams:
                nb = _blocks_cl(v.shape, min(target, _STREAM_ITEMS))
                row = -(-v.shape[1] // nb[1])
                short = row * v.itemsize <= _STREAM_PREFETCH_MAX
                ahead = _rows_ahead(v, row, _prefetch_bytes(
                    v, row, target, _config.PREFETCH_STREAMS if short else None))
                yield g, "cl", nb + (ahead,), r
            elif v.ndim == 3:
                # the reductions over short rows (7x7...) in _STREAM_ITEMS items: each
                # item's channels are centred on its first sample (each of its rows read
                # twice: until the twenty-eighth session in a pass of its own, now again
                # from L1 as it is read) and its partial sums fold. Before that change,
                # (64, 2048, 7, 7) and (32, 512, 14, 14), 11 alternating repeats,
                # forward-train in floors, 4, 8, 16, 64 items: 2.12, 2.05, 2.23, 2.65 and
                # 2.71, 2.52, 2.75, 3.23 (not measured again since)
                short = streams and v.shape[2] < _BLOCK
                nb = _blocks_cf(v.shape, min(target, _STREAM_ITEMS) if short else target)
                row = min(-(-v.shape[2] // nb[2]), _BLOCK)
                yield g, "cf", nb + (_prefetch_bytes(v, row, target,
                                                        _config.PREFETCH_CHUNK),), r
            else:
                nb = _blocks_cl(v.shape, target, whole_rows)
                row = -(-v.shape[1] // nb[1])
                ahead = _rows_ahead(v, row, _prefetch_bytes(v, row, target, _AHEAD))
                yield g, "cl", nb + (ahead,), r


def _prefetch_bytes(v, row, target, distance):
    """How far ahead the walk's kernels prefetch (``_ahead``): ``distance`` bytes, or
    None: not for a small tensor (one item, in cache), not for float16 (prefetching made
    its passes 6-20% slower while they were bound by the conversions; with the plain
    conversions, (32, 128, 56, 56), two runs of 9 repeats: NCHW backward-train
    1.47-1.49x -> 1.88-1.96x the floor, NHWC forward-train 2.32-3.35x -> 1.95-2.24x: not
    kept), not for chunks under ``_config.PREFETCH_ROW_MIN`` bytes (on the Zen 3, 512:
    the prefetch loop in the row loop of a 7x7 row made (64, 2048, 7, 7) forward-eval
    1.4x slower, even where it did not run; on the Xeon short rows gain, see
    ``_config.PREFETCH_CPUS``), nowhere where ``_config.PREFETCH`` is off
    (``NUMBAABN_PREFETCH``: 0, or ``auto`` on a CPU not in ``_config.PREFETCH_CPUS``)."""
    if not _config.PREFETCH or not target or v.itemsize < 4 or \
            row * v.itemsize < _config.PREFETCH_ROW_MIN:
        return None
    return distance


def _rows_ahead(v, row, ahead):
    """A channels-last walk's prefetch distance: ``ahead`` bytes past each row where
    an item's rows follow one another (one channel block, ``row`` the whole row),
    else the same channels whole rows ahead, at least ``ahead`` bytes of them. Where
    the channels are split into blocks, the bytes just past an item's row are the next
    block's channels, read by another item; the item's next row is a full row away.
    (256, 4096) float32 (rows of 16 KB split in 1 KB blocks) and (64, 2048, 7, 7) NHWC
    (8 KB in 4 KB), 31-61 alternating calls against the bytes-past prefetch:
    backward-train 2.70-2.78 -> 2.48-2.60x and 2.80 -> 2.49x the floor, 7x7
    forward-eval 1.60 -> 1.38x; rows that follow one another are unchanged."""
    piece = row * v.itemsize
    if ahead is None:
        return None
    if v.strides[0] == piece:
        return ahead
    return -(-ahead // piece) * v.strides[0]


@njit(cache=_config.CACHE)
def _tile(a, r):
    """(K, C) -> (K, r * C), each row repeated r times along it (compiled: np.tile
    costs ~6 µs a call, a noticeable share of a small tensor's forward)."""
    K, C = a.shape
    out = np.empty((K, r * C), a.dtype)
    for k in range(K):
        for j in range(r):
            for c in range(C):
                out[k, j * C + c] = a[k, c]
    return out


def _tiled(a, r, cache):
    """Per-channel constants ((C,) or (K, C)) repeated r times along the last axis."""
    if r == 1:
        return a
    if r not in cache:
        cache[r] = _tile(a.reshape(-1, a.shape[-1]), r).reshape(a.shape[:-1] + (-1,))
    return cache[r]


@njit(cache=_config.CACHE)
def _fold_tiled(wide, out):
    """Add the sums of the tiled copies of each channel, (2, r * C), into out (2, C)."""
    C = out.shape[1]
    for k in range(2):
        for j in range(wide.shape[1] // C):
            for c in range(C):
                out[k, c] += wide[k, j * C + c]


def _fold_tiles(wide, r, out):
    if r > 1:
        _fold_tiled(wide, out)


@njit(cache=_config.CACHE)
def _tiled_in(a, r):
    """``_tiled`` in compiled code, for the one-call functions: ``a`` (K, C) itself
    where r == 1, else a new (K, r * C) array of its rows repeated r times."""
    return a if r == 1 else _tile(a, r)


@njit(cache=_config.CACHE)
def _folded(wide, C):
    """(2, C) sums of a walk's (2, W) sums: ``wide`` itself where W == C, else the sums
    of its tiled copies (rows merged, ``_widen``), added into zeros as ``statistics``
    and ``backward_reduce`` add them."""
    if wide.shape[1] == C:
        return wide
    out = np.zeros((2, C))
    _fold_tiled(wide, out)
    return out


def _scratch(shape, nb, dtype):
    """Per-block sums and centres of a walk (compute dtype), (blocks, 3, C)."""
    return np.empty((nb[0] * nb[2], 3, shape[1]), dtype)


def _partials(shape, nb):
    """Per-block float64 partial sums of a walk, (blocks, 2, C)."""
    return np.empty((nb[0] * nb[2], 2, shape[1]))


# ---- per-channel coefficients, and the training forward in one call ---------------

# eval forward: h = 0 where |mean g| <= OFFSET_LIMIT (|s| + |b|) (fill_coefficients);
# in-place apply: m = 0 where |b| <= OFFSET_LIMIT |s| (gradient_coefficients)
OFFSET_LIMIT = 8.0

@njit(**_config.jit_options(False))
def fill_coefficients(mean, var, w, b, eps, abs_mode, in_place, batch_stats, coef,
                      update, momentum, running_mean, running_var):
    """Rows 0-3, 7, 8 of ``coef`` (see above) from float64 statistics and
    parameters, then (``update``) the running statistics. Returns False, having
    written nothing, where batch statistics are not finite.

    With running statistics (eval), a channel whose offset is moderate,
    ``|mean * g| <= OFFSET_LIMIT (|s| + |b|)``, gets ``h = 0``: the forward is then
    ``x g + e`` with ``e = b - mean g``, whose extra rounding, about ``ulp(mean g)``,
    is within ~16 ulps of the output's scale ``|s| + |b|`` (measured at the limit in
    float32: 13.7 ulps). Where every h is 0 the forward loads two constants per element
    instead of three (``forward``). Other channels (a large offset, statistics that
    are not finite) and every channel in training keep the centred form, accurate for
    any offset: in training the in-place backward recovers x̂ from the output, and the
    rule there made the float32 training of the memory experiment (24 layers, 3 steps)
    deviate 4.9e-4 from float64 instead of 1.0e-4."""
    C = mean.shape[0]
    if batch_stats:
        for c in range(C):
            if not (np.isfinite(mean[c]) and np.isfinite(var[c])):
                return False
    # the square roots and divisions in loops of their own, which vectorize: 4096
    # channels, 29 -> 18 µs (the same values)
    scales, inv_stds, inv_scales = np.empty(C), np.empty(C), np.empty(C)
    if abs_mode:
        for c in range(C):
            scales[c] = abs(w[c]) + eps
    else:
        for c in range(C):
            scales[c] = w[c]
    for c in range(C):
        inv_stds[c] = 1.0 / np.sqrt(var[c] + eps)
        inv_scales[c] = 1.0 / scales[c] if scales[c] != 0 else np.inf
    for c in range(C):
        s = scales[c]
        inv_std = inv_stds[c]
        g = s * inv_std
        if not batch_stats and abs(mean[c] * g) <= OFFSET_LIMIT * (abs(s) + abs(b[c])):
            coef[0, c] = 0.0                  # two constants: y = x g + (b - mean g)
        else:
            coef[0, c] = mean[c]              # centred: rounded to the compute dtype
        low = mean[c] - np.float64(coef[0, c])
        coef[1, c] = b[c]
        coef[2, c] = g
        coef[3, c] = b[c] - low * g
        if in_place:
            coef[7, c] = inv_scales[c]  # backward refuses a signed zero
        else:
            coef[7, c] = inv_std
            coef[8, c] = -low * inv_std
    if update:  # nothing can fail after the coefficients: the write pass follows
        for c in range(C):
            running_mean[c] = momentum * running_mean[c] + (1.0 - momentum) * mean[c]
            running_var[c] = momentum * running_var[c] + (1.0 - momentum) * var[c]
    return True


@njit(cache=_config.CACHE)  # no fast-math: rounds as NumPy's expressions did
def gradient_coefficients(coef, sums, count, train, from_x, local, w, abs_mode, dweight,
                          dbias):
    """The apply's rows of ``coef`` from the gradient sums ``sums`` (float64 (2, C): Σg,
    Σg·x̂ over all workers): row 4 P, and with ``train`` (else the statistics were
    constants and ``dx = P g``) rows 5, 6, 9 of ``dx = P g + Q' (v - m) + R'``, the form
    ``dx = P g + Q x̂ + R`` takes with ``x̂ = (v - m) k + f`` written out: v = y, m = b,
    f = 0 in place; v = x, m = h, f = row 8 on the standard path; Q' = Q k, R' = R + Q f.
    In place, a channel whose bias is moderate, ``|b| <= OFFSET_LIMIT |s|``, takes m = 0
    and R' = R - Q k b: one constant fewer per element, and where every m is 0 the plain
    kernels run (``backward_train``). Its extra rounding, ``ulp(Q k b)``, is within
    ~2 OFFSET_LIMIT ulps of ``|P| rms(g)`` (|Q| <= |P| rms(g) rms(x̂)), the same order as
    the in-place recovery's own ``ulp(|y|)/s`` (README, Numerics).
    Then the parameter gradients from this worker's sums ``local`` into ``dweight``
    (Σg·x̂, times sign(w) with abs_mode) and ``dbias`` (Σg), each of length C or 0 (not
    wanted). One compiled call in place of eight NumPy expressions and their
    temporaries: (256, 4096) float32 backward-train, 61 alternating calls, 2.43-2.52 ->
    2.20-2.28x the floor."""
    C = coef.shape[1]
    for c in range(C):
        A = np.float64(coef[2, c])
        coef[4, c] = A
        if train:
            Q = -A * sums[1, c] / count
            R = -A * sums[0, c] / count
            k = np.float64(coef[7, c])
            if from_x:
                m = np.float64(coef[0, c])
                R += Q * np.float64(coef[8, c])
            else:
                m = np.float64(coef[1, c])
                if abs(m * k) <= OFFSET_LIMIT:
                    R -= Q * k * m
                    m = 0.0
            coef[5, c] = Q * k
            coef[6, c] = R
            coef[9, c] = m
    for c in range(len(dweight)):
        dweight[c] = local[1, c] * (1.0 if w[c] >= 0 else -1.0) if abs_mode else local[1, c]
    for c in range(len(dbias)):
        dbias[c] = local[0, c]


# bound per layout, family and twin (_clone)
#
# Constants the one-call functions pass to the kernels are typed as Python's arguments
# are, bool and int64 (np.bool_(True), np.int64(1)): a literal True or 1 passed from
# compiled code is typed Literal[bool](True), Literal[int](1), and each kernel would be
# compiled a second (and, for the small forward's blocks, a third) time for it, in
# every process with a cold cache. Before: 190 of the 498 specializations a test run
# compiled (cpu.py's index files after a clean-clone CI) were such literal copies.
_one_statistics = _one_forward = _one_forward_plain = _one_reduce = _one_apply = None
_one_apply_plain = None


def _forward_train_one(x, first, w, b, eps, abs_mode, coef, update, momentum, rm, rv, a, ia,
                       lo, zero, r, s0, s1, s2, sa, f0, f1, f2, fa):
    """statistics + coefficients + running statistics + forward of one view in one
    compiled call: the kernels ``statistics`` and ``forward`` run, with their blocks
    (s0, s1, s2) and (f0, f1, f2) and prefetch distances sa and fa (``_walk``), so the
    results are theirs bit for bit. ``x`` is the walk's view: channels-last rows merged
    r at a time (``_widen``; ``first`` is the input's first row, C elements), the
    constants tiled and the sums folded as the primitives do. Returns (ok, sums):
    sums[0] the mean, sums[1] the variance; nothing is written where not ok."""
    yes = np.bool_(True)  # not a literal (see above)
    C = coef.shape[1]
    W = x.shape[1]  # C, or r * C (merged rows)
    shift = np.zeros(C)
    _init_shift(first, shift)
    wide = np.zeros((2, W))
    _one_statistics(x, _tiled_in(shift.reshape((1, C)), r)[0], np.empty((s0 * s2, 2, W)),
                    np.empty((s0 * s2, 3, W), coef.dtype), s0, s1, s2, sa, wide, zero)
    sums = _folded(wide, C)
    count = x.size // C
    _finalize(shift, np.float64(count), sums)
    for c in range(C):
        sums[1, c] /= count
    if not fill_coefficients(sums[0], sums[1], w, b, eps, abs_mode, yes, yes, coef, update,
                             momentum, rm, rv):
        return False, sums
    _one_forward(x, x, yes, _tiled_in(coef, r), a, ia, lo, f0, f1, f2, fa)
    return True, sums


def _backward_train_one(src, dz, dx, inplace, coef, a, ia, lo, from_x, count, w, abs_mode,
                        dweight, dbias, rep, r0, r1, r2, ra, p0, p1, p2, pa):
    """backward_reduce + gradient_coefficients + backward_train of one view in one
    compiled call, with the blocks (r0, r1, r2, ra) of the reduce and (p0, p1, p2, pa)
    of the apply (``_walk``): the primitives' kernels, so their results bit for bit.
    Channels-last rows merged ``rep`` at a time as in ``_forward_train_one``."""
    yes = np.bool_(True)  # not a literal (see above)
    C = coef.shape[1]
    W = src.shape[1]  # C, or rep * C (merged rows)
    wide = np.zeros((2, W))
    _one_reduce(src, dz, _tiled_in(coef, rep), a, ia, lo, from_x, np.empty((r0 * r2, 2, W)),
                np.empty((r0 * r2, 3, W), coef.dtype), r0, r1, r2, ra, wide)
    sums = _folded(wide, C)
    gradient_coefficients(coef, sums, count, yes, from_x, sums, w, abs_mode, dweight, dbias)
    ct = _tiled_in(coef, rep)  # again: with the rows gradient_coefficients wrote
    for c in range(C):
        if coef[9, c] != 0:
            _one_apply(src, dz, dx, inplace, ct, a, ia, lo, from_x, yes, p0, p1, p2, pa)
            return
    _one_apply_plain(src, dz, dx, inplace, ct, a, ia, lo, from_x, yes, p0, p1, p2, pa)


def _forward_eval_one(x, mean, var, w, b, eps, abs_mode, coef, rm, rv, a, ia, lo, r, f0, f1,
                      f2, fa):
    """fill_coefficients from running statistics + the in-place forward of one view in
    one compiled call, with the forward's blocks (f0, f1, f2, fa): the kernel
    ``forward`` would run (plain where every h is 0), so its results bit for bit.
    Channels-last rows merged r at a time as in ``_forward_train_one``."""
    yes = np.bool_(True)  # not a literal (see above)
    # never False without batch statistics
    fill_coefficients(mean, var, w, b, eps, abs_mode, yes, np.bool_(False), coef,
                      np.bool_(False), 0.0, rm, rv)
    ct = _tiled_in(coef, r)
    for c in range(coef.shape[1]):
        if coef[0, c] != 0:
            _one_forward(x, x, yes, ct, a, ia, lo, f0, f1, f2, fa)
            return
    _one_forward_plain(x, x, yes, ct, a, ia, lo, f0, f1, f2, fa)


# (serial, parallel) one-call functions by (layout, family): the training forward, by
# ("eval", layout, family) the eval forward, and by ("backward", layout, family) the
# training backward. They run the primitives' kernels with the same blocks, hence the
# same results, bit for bit where LLVM compiles a kernel alike in both places: linked
# into a one-call function, a kernel may get a product and a sum contracted into one
# FMA where alone it does not, or the reverse (seen on merged channels-last rows, with
# the one call loaded from the disk cache: the last float32 bit of some sums; see
# tests/test_parity.py). Not in _KERNELS: they allocate
# (their O(C) sums and blocks' partial sums), which tests/test_inplace_memory.py forbids
# the kernels
def _one_twins(fn, suffix, callees):
    """The (serial, parallel) pair of ``fn`` calling the serial, resp. the parallel, twin
    of each kernel: ``callees`` maps a global name of ``fn`` to a ``_KERNELS`` key. Both
    are compiled without ``parallel``: they only call the kernels."""
    return tuple(njit(**_config.jit_options(False))(_clone(
        fn, f"{suffix}_{tag}", {name: _KERNELS[key][i] for name, key in callees.items()}))
        for i, tag in enumerate(("serial", "parallel")))


_ONE = {}
for _kind in ("cf", "cl"):
    for _fam in _FAMILIES:
        _ONE[_kind, _fam] = _one_twins(_forward_train_one, f"_{_kind}_{_fam}", {
            "_one_statistics": ("statistics_" + _kind, "any"),
            "_one_forward": ("forward_" + _kind, _fam)})
        _ONE["eval", _kind, _fam] = _one_twins(_forward_eval_one, f"_{_kind}_{_fam}", {
            "_one_forward": ("forward_" + _kind, _fam),
            "_one_forward_plain": ("plain_forward_" + _kind, _fam)})
        _ONE["backward", _kind, _fam] = _one_twins(_backward_train_one, f"_{_kind}_{_fam}", {
            "_one_reduce": ("backward_reduce_" + _kind, _fam),
            "_one_apply": ("backward_apply_" + _kind, _fam),
            "_one_apply_plain": ("plain_backward_apply_" + _kind, _fam)})


def _forward_train_small(x, first, w, b, eps, abs_mode, coef, update, momentum, rm, rv, a,
                         ia, lo, zero, r):
    """``_forward_train_one`` of a small tensor (one serial item, not prefetched), its
    blocks passed from compiled code: ~1 µs less a call than passing them from Python
    (8 more arguments to type)."""
    one = np.int64(1)  # not a literal (see above)
    return _one(x, first, w, b, eps, abs_mode, coef, update, momentum, rm, rv, a, ia, lo,
                zero, r, one, one, one, None, one, one, one, None)


_SMALL = {key: njit(**_config.jit_options(False))(_clone(
    _forward_train_small, f"_{key[0]}_{key[1]}", {"_one": twins[0]}))
    for key, twins in _ONE.items() if len(key) == 2}


# ---- primitives --------------------------------------------------------------------

IS_DEVICE = False


def empty_like(a, stream=None):
    return np.empty_like(a)


def copy(a, stream=None):
    return a.copy()


def statistics(views, C, stream=None):
    """Per-channel count, mean and M2 (sum of squared deviations), float64 (C,).

    Each work item centres its sums (channels first, on the mean of the first
    ``_CENTRE`` values of each channel's row, or of the whole row where rows are short;
    channels last, on the mean of rows sampled over the tensor), then moves them to the
    channel's first element (exactly, in float64) to merge: the variance stays
    accurate for data with a large offset (x = 1e4 + N(0, 1)) or an outlier."""
    size = _size(views)
    count = size // C if C else 0
    shift = np.zeros(C)
    if count == 0:
        return 0, shift, np.zeros(C)
    first = views[0]
    _init_shift(first[0, :, 0] if first.ndim == 3 else first[0], shift)
    sums = np.zeros((2, C))
    target, par = _plan(size)
    cdt = compute_dtype(first.dtype)
    tiles = {}
    for (v,), kind, nb, r in _walk([(v,) for v in views], target, streams=True):
        out = sums if r == 1 else np.zeros((2, r * C))
        _run(_KERNELS["statistics_" + kind, "any"], par, v, _tiled(shift, r, tiles),
             _partials(v.shape, nb), _scratch(v.shape, nb, cdt), *nb, out, cdt(0))
        _fold_tiles(out, r, sums)
    _finalize(shift, float(count), sums)
    return count, sums[0], sums[1]


def forward_train_one(views, w, b, eps, abs_mode, coef, update, momentum, rm, rv, act, a,
                      ia, lo):
    """The in-place training forward in one compiled call (``_forward_train_one``):
    ``(ok, (mean, var))``, nothing written where not ok (non-finite statistics). None
    where the walk is not one view (several leaf views, or channels-last rows merged by
    ``_widen`` with rows left over), or where the forward's plan differs from the
    statistics' (ELU): then ``statistics`` and ``forward`` run. The caller checks that
    there is more than one value per channel.

    One call instead of ``statistics``, ``fill_coefficients`` and ``forward`` saves
    their dispatches and Python: about 10 µs on a small tensor; through the layer,
    against the primitives, 25 alternating repeats, (256, 4096) float32 0.85-0.91 of
    the time, (64, 2048, 7, 7) NHWC 0.88-0.94."""
    if len(views) != 1:
        return None
    target, par = _plan(views[0].size)
    if _plan(views[0].size, act) != (target, par):  # the forward's walk is another
        return None
    walk = list(_walk([views], target, streams=True))  # the statistics' walk
    if len(walk) != 1:
        return None
    (v,), kind, nbs, r = walk[0]
    first = v[0, :, 0] if kind == "cf" else v[0, :coef.shape[1]]
    key = (kind, _scalar.FAMILY[act])
    if not target:  # one serial item, not prefetched: _walk's blocks, compiled in
        return _SMALL[key](v, first, w, b, eps, abs_mode, coef, update, momentum, rm, rv, a,
                           ia, lo, coef.dtype.type(0), r)
    nbf = next(_walk([views], target, True))[2]
    return _run(_ONE[key], par, v, first, w, b, eps, abs_mode, coef, update, momentum, rm,
                rv, a, ia, lo, coef.dtype.type(0), r, *nbs, *nbf)


def forward_eval_one(views, mean, var, w, b, eps, abs_mode, coef, rm, rv, act, a, ia, lo):
    """The in-place eval forward (running statistics ``mean``, ``var``) in one compiled
    call (``_forward_eval_one``): ``fill_coefficients`` and ``forward``. Returns True,
    or None where the walk is not one view (several leaf views, merged channels-last
    rows with rows left over): then they run apart.
    Saves the forward's Python and a dispatch; through the layer, float32, after the
    bench's restore, 41 alternating repeats: (256, 4096) 206 -> 187 µs, (8, 64, 8, 8)
    36.5 -> 27.0 µs."""
    if len(views) != 1:
        return None
    target, par = _plan(views[0].size, act)
    walk = list(_walk([views], target, True))
    if len(walk) != 1:
        return None
    (v,), kind, nb, r = walk[0]
    _run(_ONE["eval", kind, _scalar.FAMILY[act]], par, v, mean, var, w, b, eps, abs_mode,
         coef, rm, rv, a, ia, lo, r, *nb)
    return True


def forward(views, outs, coef, act, a, ia, lo, stream=None):
    """``out = act((x - h) * g + e)``; ``outs`` may be ``views`` (in place). Where
    every channel's h is 0 the plain kernels run, ``act(x * g + e)``: the same values,
    two constants loaded per element instead of three."""
    target, par = _plan(_size(views), act)
    fam = _scalar.FAMILY[act]
    name = "plain_forward_" if not coef[0].any() else "forward_"
    tiles = {}
    for (v, o), kind, nb, r in _walk(zip(views, outs), target, True):
        _run(_KERNELS[name + kind, fam], par, v, o, o is v, _tiled(coef, r, tiles), a, ia,
             lo, *nb)


def backward_reduce(srcs, dzs, coef, act, a, ia, lo, from_x, stream=None):
    """Per-channel ``S1 = Σ g`` and ``S2 = Σ g x̂`` in float64, shape (2, C)."""
    C = coef.shape[1]
    sums = np.zeros((2, C))
    target, par = _plan(_size(srcs), act, backward=True)
    fam = _scalar.FAMILY[act]
    tiles = {}
    for (v, d), kind, nb, r in _walk(zip(srcs, dzs), target, streams=True):
        out = sums if r == 1 else np.zeros((2, r * C))
        _run(_KERNELS["backward_reduce_" + kind, fam], par, v, d, _tiled(coef, r, tiles), a,
             ia, lo, from_x, _partials(v.shape, nb), _scratch(v.shape, nb, coef.dtype), *nb,
             out)
        _fold_tiles(out, r, sums)
    return sums


def _backward_apply(srcs, dzs, dxs, coef, act, a, ia, lo, from_x, train):
    target, par = _plan(_size(srcs), act, backward=True)
    fam = _scalar.FAMILY[act]
    name = "plain_backward_apply_" if train and not coef[9].any() else "backward_apply_"
    tiles = {}
    for (v, d, o), kind, nb, r in _walk(zip(srcs, dzs, dxs), target, True):
        _run(_KERNELS[name + kind, fam], par, v, d, o, o is d, _tiled(coef, r, tiles), a,
             ia, lo, from_x, train, *nb)


def backward_train_one(srcs, dzs, dxs, coef, act, a, ia, lo, from_x, count, w, abs_mode,
                       dweight, dbias):
    """The training backward (no synchronization) in one compiled call
    (``_backward_train_one``): the gradient sums, ``gradient_coefficients`` (into
    ``coef``, ``dweight``, ``dbias``) and ``dx``. Returns True, or None where the walks
    are not one view each, merged alike (several leaf views, merged channels-last rows
    with rows left over, dx's rows not mergeable): then the primitives run. Through the
    layer, against the primitives, 25-31 alternating repeats: (256, 4096) float32
    0.79-0.91 of the time (one run 1.01), (64, 2048, 7, 7) 0.83-0.88, (8, 64, 8, 8) 0.68."""
    if len(srcs) != 1:
        return None
    target, par = _plan(srcs[0].size, act, backward=True)
    reduce = list(_walk([(srcs[0], dzs[0])], target, streams=True))
    apply = list(_walk([(srcs[0], dzs[0], dxs[0])], target, True))
    if len(reduce) != 1 or len(apply) != 1 or reduce[0][3] != apply[0][3]:
        return None
    nbr = reduce[0][2]
    (v, d, o), kind, nba, r = apply[0]  # o is d in place (the same merged view)
    _run(_ONE["backward", kind, _scalar.FAMILY[act]], par, v, d, o, o is d, coef, a, ia, lo,
         from_x, count, w, abs_mode, dweight, dbias, r, *nbr, *nba)
    return True


def backward_train(srcs, dzs, dxs, coef, act, a, ia, lo, from_x, stream=None):
    """``dx = P g + Q x̂ + R``; ``dxs`` may be ``dzs`` (in place)."""
    _backward_apply(srcs, dzs, dxs, coef, act, a, ia, lo, from_x, True)


def backward_eval(srcs, dzs, dxs, coef, act, a, ia, lo, from_x, stream=None):
    """``dx = P g`` (statistics were constants); ``dxs`` may be ``dzs``."""
    _backward_apply(srcs, dzs, dxs, coef, act, a, ia, lo, from_x, False)


# the disk cache of every compiled function above saves under a lock (see _config)
_config.serialize_cache_saves([v for k, v in globals().items() if not k.startswith("__")])
