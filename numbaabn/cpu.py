"""CPU backend: Numba kernels on NumPy arrays.

Primitives (the seams of mapillary's ``include/inplace_abn.h``; ``cuda.py`` has the
same names):

``statistics``       per-channel ``(count, mean, M2)`` of the input        (reads x)
``forward``          ``out = act((x - h) * g + e)`` per channel             (reads x, writes out)
``backward_reduce``  per-channel ``S1 = Σ g`` and ``S2 = Σ g x̂``            (reads src, dz)
``backward_train``   ``dx = P g + Q x̂ + R``                                (reads src, dz, writes dx)
``backward_eval``    ``dx = P g``                                          (reads src, dz, writes dx)

Every primitive takes ``stream=None`` (CUDA streams; ignored on the CPU).
The synchronization hooks of ``mpi_sync.py`` slot in between ``statistics`` and
``forward`` and between ``backward_reduce`` and ``backward_train``.

Every primitive takes a list of canonical views, all of one layout: ``(N, C, S)``
arrays (channels first) or ``(M, C)`` arrays (channels last); usually the list has
one view. Per-channel coefficients come in one ``(9, C)`` array of the compute dtype
(float32 for float16/float32 data, float64 for float64), rows:

    0 h         the mean rounded to the compute dtype; ``x - h`` is exact for x
                near the mean, which keeps float32 accurate when |mean| >> std
    1 b         the bias (shift of y)
    2 g         s * inv_std (the forward's scale)
    3 e         b - l * g, where l = mean - h: the forward is y = (x - h) * g + e
    4 P, 5 Q, 6 R   backward coefficients
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
exact round-to-nearest-even conversion, because Numba's CPU target has no float16.
Statistics and gradient sums accumulate in float64.
"""
import os
import threading
import types as pytypes

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from . import _config, _scalar

_inline = njit(inline="always")
# Not IR-inlined (LLVM inlines them): Numba's IR inliner trips its own SSA check on the
# branches of these two (harmless but noisy NumbaIRAssumptionWarnings at compile time).
half_bits_to_float = njit(cache=_config.CACHE)(_scalar.half_bits_to_float)
float_to_half_bits = njit(cache=_config.CACHE)(_scalar.float_to_half_bits)


def act_forward(y, a):
    """Placeholder name: each activation family's kernels bind it (see _FAMILIES)."""


act_inverse = act_grad_from_output = act_grad_from_input = act_forward


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
        return lambda v, arr: float_to_half_bits(v)
    if arr.dtype == types.float32:
        return lambda v, arr: np.float32(v)
    return lambda v, arr: np.float64(v)


def kernel_view(a):
    """The array the kernels see: float16 as its uint16 bit pattern, others as is."""
    return a.view(np.uint16) if a.dtype == np.float16 else a


def compute_dtype(dtype):
    """float32 arithmetic for float16/float32 storage, float64 for float64."""
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


# ---- blocking: every kernel walks items of (channel block, row block, inner block) --

@_inline
def _span(j, nb, n):
    q = (n + nb - 1) // nb
    lo = min(j * q, n)
    return lo, min(lo + q, n)


@_inline
def _item_cf(t, C, N, S, nbn, nbs):
    """Item t of a channels-first walk: channel c, rows n0:n1, positions s0:s1."""
    per = nbn * nbs
    c = t // per
    r = t - c * per
    jn = r // nbs
    n0, n1 = _span(jn, nbn, N)
    s0, s1 = _span(r - jn * nbs, nbs, S)
    return c, n0, n1, s0, s1


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

@_inline
def _fold_cf(part, per, out):
    """Add the per-item partial sums of a channels-first walk into out (2, C)."""
    for c in range(out.shape[1]):
        for j in range(c * per, (c + 1) * per):
            out[0, c] += part[j, 0]
            out[1, c] += part[j, 1]


@_inline
def _fold_cl(part, out):
    """Add the per-row-block partial sums of a channels-last walk into out (2, C)."""
    for jm in range(part.shape[0]):
        for c in range(out.shape[1]):
            out[0, c] += part[jm, 0, c]
            out[1, c] += part[jm, 1, c]


@_inline
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


def _statistics_cf(x, shift, init, final, count, part, nbn, nbs, out):
    N, C, S = x.shape
    if init:
        _init_shift(x[0, :, 0], shift)
    per = nbn * nbs
    for t in prange(C * per):
        c, n0, n1, s0, s1 = _item_cf(t, C, N, S, nbn, nbs)
        k = shift[c]
        a1 = 0.0
        a2 = 0.0
        for n in range(n0, n1):
            xr = x[n, c, s0:s1]
            for i in range(s1 - s0):
                d = np.float64(load(xr[i])) - k
                a1 += d
                a2 += d * d
        part[t, 0] = a1
        part[t, 1] = a2
    _fold_cf(part, per, out)
    if final:
        _finalize(shift, count, out)


def _forward_cf(x, out, inplace, coef, a, ia, lo, nbn, nbs):
    N, C, S = x.shape
    for t in prange(C * nbn * nbs):
        c, n0, n1, s0, s1 = _item_cf(t, C, N, S, nbn, nbs)
        h = coef[0, c]
        g = coef[2, c]
        e = coef[3, c]
        for n in range(n0, n1):
            xr = x[n, c, s0:s1]
            if inplace:  # one array reference: no runtime alias check, vectorizes
                for i in range(s1 - s0):
                    xr[i] = store(act_forward((load(xr[i]) - h) * g + e, a), x)
            else:
                orow = out[n, c, s0:s1]
                for i in range(s1 - s0):
                    orow[i] = store(act_forward((load(xr[i]) - h) * g + e, a), out)


def _backward_reduce_cf(src, dz, coef, a, ia, lo, from_x, part, nbn, nbs, out):
    N, C, S = src.shape
    per = nbn * nbs
    for t in prange(C * per):
        c, n0, n1, s0, s1 = _item_cf(t, C, N, S, nbn, nbs)
        h, b, g, e, k, f = coef[0, c], coef[1, c], coef[2, c], coef[3, c], coef[7, c], coef[8, c]
        a1 = 0.0
        a2 = 0.0
        for n in range(n0, n1):
            sr = src[n, c, s0:s1]
            dr = dz[n, c, s0:s1]
            for i in range(s1 - s0):
                gr, xh = _grad_and_centred(load(sr[i]), load(dr[i]), h, b, g, e, k, f, a, ia,
                                           lo, from_x)
                a1 += np.float64(gr)
                a2 += np.float64(gr) * np.float64(xh)
        part[t, 0] = a1
        part[t, 1] = a2
    _fold_cf(part, per, out)


def _apply_row(sr, dr, xr, dx, cc, a, ia, lo, from_x, train):
    """One row of the backward's write pass: ``xr = P g + Q x̂ + R`` (``train``) or
    ``P g``. ``cc`` holds the coefficients (h, b, g, e, k, f, P, Q, R): scalars for a
    channels-first row, per-channel slices for a channels-last one (``_at`` picks).
    In place, the caller passes ``dr`` as ``xr``: loads and stores then go through one
    reference and LLVM vectorizes without a runtime alias check (which would fail and
    take the scalar loop: 2x slower)."""
    h, b, g, e, k, f, p, q, r = cc
    if train:
        for i in range(len(xr)):
            gr, xh = _grad_and_centred(load(sr[i]), load(dr[i]), _at(h, i), _at(b, i),
                                       _at(g, i), _at(e, i), _at(k, i), _at(f, i), a, ia, lo,
                                       from_x)
            xr[i] = store(_at(p, i) * gr + _at(q, i) * xh + _at(r, i), dx)
    else:
        for i in range(len(xr)):
            xr[i] = store(_at(p, i) * _grad(load(sr[i]), load(dr[i]), _at(h, i), _at(g, i),
                                            _at(e, i), a, from_x), dx)


def _backward_apply_cf(src, dz, dx, inplace, coef, a, ia, lo, from_x, train, nbn, nbs):
    N, C, S = src.shape
    for t in prange(C * nbn * nbs):
        c, n0, n1, s0, s1 = _item_cf(t, C, N, S, nbn, nbs)
        cc = (coef[0, c], coef[1, c], coef[2, c], coef[3, c], coef[7, c], coef[8, c],
              coef[4, c], coef[5, c], coef[6, c])
        for n in range(n0, n1):
            sr = src[n, c, s0:s1]
            dr = dz[n, c, s0:s1]
            if inplace:
                _apply_row(sr, dr, dr, dx, cc, a, ia, lo, from_x, train)
            else:
                _apply_row(sr, dr, dx[n, c, s0:s1], dx, cc, a, ia, lo, from_x, train)


# ---- channels last: views (M, C) ---------------------------------------------------

def _statistics_cl(x, shift, init, final, count, part, nbm, nbc, out):
    M, C = x.shape
    if init:
        _init_shift(x[0], shift)
    for t in prange(nbm * nbc):
        jm, m0, m1, c0, c1 = _item_cl(t, M, C, nbm, nbc)
        w = c1 - c0
        p1 = part[jm, 0, c0:c1]
        p2 = part[jm, 1, c0:c1]
        k = shift[c0:c1]
        for c in range(w):
            p1[c] = 0.0
            p2[c] = 0.0
        for m in range(m0, m1):
            xr = x[m, c0:c1]
            for c in range(w):
                d = np.float64(load(xr[c])) - k[c]
                p1[c] += d
                p2[c] += d * d
    _fold_cl(part, out)
    if final:
        _finalize(shift, count, out)


def _forward_cl(x, out, inplace, coef, a, ia, lo, nbm, nbc):
    M, C = x.shape
    for t in prange(nbm * nbc):
        jm, m0, m1, c0, c1 = _item_cl(t, M, C, nbm, nbc)
        w = c1 - c0
        h = coef[0, c0:c1]
        g = coef[2, c0:c1]
        e = coef[3, c0:c1]
        for m in range(m0, m1):
            xr = x[m, c0:c1]
            if inplace:
                for c in range(w):
                    xr[c] = store(act_forward((load(xr[c]) - h[c]) * g[c] + e[c], a), x)
            else:
                orow = out[m, c0:c1]
                for c in range(w):
                    orow[c] = store(act_forward((load(xr[c]) - h[c]) * g[c] + e[c], a), out)


def _backward_reduce_cl(src, dz, coef, a, ia, lo, from_x, part, nbm, nbc, out):
    M, C = src.shape
    for t in prange(nbm * nbc):
        jm, m0, m1, c0, c1 = _item_cl(t, M, C, nbm, nbc)
        w = c1 - c0
        h, b, g, e = coef[0, c0:c1], coef[1, c0:c1], coef[2, c0:c1], coef[3, c0:c1]
        k, f = coef[7, c0:c1], coef[8, c0:c1]
        p1 = part[jm, 0, c0:c1]
        p2 = part[jm, 1, c0:c1]
        for c in range(w):
            p1[c] = 0.0
            p2[c] = 0.0
        for m in range(m0, m1):
            sr = src[m, c0:c1]
            dr = dz[m, c0:c1]
            for c in range(w):
                gr, xh = _grad_and_centred(load(sr[c]), load(dr[c]), h[c], b[c], g[c], e[c],
                                           k[c], f[c], a, ia, lo, from_x)
                p1[c] += np.float64(gr)
                p2[c] += np.float64(gr) * np.float64(xh)
    _fold_cl(part, out)


def _backward_apply_cl(src, dz, dx, inplace, coef, a, ia, lo, from_x, train, nbm, nbc):
    M, C = src.shape
    for t in prange(nbm * nbc):
        jm, m0, m1, c0, c1 = _item_cl(t, M, C, nbm, nbc)
        cc = (coef[0, c0:c1], coef[1, c0:c1], coef[2, c0:c1], coef[3, c0:c1], coef[7, c0:c1],
              coef[8, c0:c1], coef[4, c0:c1], coef[5, c0:c1], coef[6, c0:c1])
        for m in range(m0, m1):
            sr = src[m, c0:c1]
            dr = dz[m, c0:c1]
            if inplace:
                _apply_row(sr, dr, dr, dx, cc, a, ia, lo, from_x, train)
            else:
                _apply_row(sr, dr, dx[m, c0:c1], dx, cc, a, ia, lo, from_x, train)


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


def _family(name):
    """Globals that bind the kernels to one activation family of ``_scalar``."""
    ov = {f"act_{op}": _inline(getattr(_scalar, f"{name}_{op}"))
          for op in ("forward", "inverse", "grad_from_output", "grad_from_input")}
    for helper in (_grad_and_centred, _grad, _apply_row):
        ov[helper.__name__] = _inline(_clone(helper, "_" + name, ov))
    return ov


_FAMILIES = {name: _family(name) for name in ("leaky", "elu", "relu")}
_KERNELS = {}
for _fn in (_statistics_cf, _statistics_cl, _forward_cf, _forward_cl, _backward_reduce_cf,
            _backward_reduce_cl, _backward_apply_cf, _backward_apply_cl):
    for _fam in (("any",) if _fn.__name__.startswith("_statistics") else _FAMILIES):
        _ov = _FAMILIES.get(_fam, {})
        _KERNELS[_fn.__name__[1:], _fam] = tuple(
            njit(**_config.jit_options(par))(_clone(_fn, f"_{_fam}_{tag}", _ov))
            for par, tag in ((False, "serial"), (True, "parallel")))


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


def _threads(size):
    """Number of work items to aim for (0: run the serial twin)."""
    if size < _config.PARALLEL_MIN or _serial_only:
        return 0
    n = numba.get_num_threads()
    return 0 if n <= 1 else 4 * n


def _run(key, parallel, *args):
    serial, par = _KERNELS[key]
    if not parallel:
        return serial(*args)
    global _layer
    if _layer in ("tbb", "omp"):
        return par(*args)
    with _lock:
        par(*args)
        if _layer is None:
            _layer = numba.threading_layer()


def _blocks_cf(shape, target):
    N, C, S = shape
    if not target:
        return 1, 1
    nbn = max(1, min(N, -(-target // C)))
    nbs = max(1, min(-(-S // 4096), -(-target // (C * nbn))))
    return nbn, nbs


def _blocks_cl(shape, target):
    M, C = shape
    if not target:
        return 1, 1
    nbm = max(1, min(-(-M // 64), target))
    nbc = max(1, min(-(-C // 64), -(-target // nbm)))
    return nbm, nbc


def _size(views):
    return sum(v.size for v in views)


def _walk(views, target):
    for v in views:
        if v.ndim == 3:
            yield v, "cf", _blocks_cf(v.shape, target)
        else:
            yield v, "cl", _blocks_cl(v.shape, target)


def _partials(kind, shape, nb):
    if kind == "cf":
        return np.empty((shape[1] * nb[0] * nb[1], 2))
    return np.empty((nb[0], 2, shape[1]))


# ---- primitives --------------------------------------------------------------------

IS_DEVICE = False


def empty_like(a, stream=None):
    return np.empty_like(a)


def copy(a, stream=None):
    return a.copy()


def statistics(views, C, stream=None):
    """Per-channel count, mean and M2 (sum of squared deviations), float64 (C,).

    Sums are shifted by the channel's first element, which keeps the variance
    accurate for data with a large offset (x = 1e4 + N(0, 1))."""
    size = _size(views)
    count = size // C if C else 0
    shift = np.zeros(C)
    if count == 0:
        return 0, shift, np.zeros(C)
    sums = np.zeros((2, C))
    target = _threads(size)
    last = len(views) - 1
    for j, (v, kind, nb) in enumerate(_walk(views, target)):
        _run(("statistics_" + kind, "any"), bool(target), v, shift, j == 0, j == last,
             float(count), _partials(kind, v.shape, nb), nb[0], nb[1], sums)
    return count, sums[0], sums[1]


def forward(views, outs, coef, act, a, ia, lo, stream=None):
    """``out = act((x - h) * g + e)``; ``outs`` may be ``views`` (in place)."""
    target = _threads(_size(views))
    fam = _scalar.FAMILY[act]
    for (v, kind, nb), o in zip(_walk(views, target), outs):
        _run(("forward_" + kind, fam), bool(target), v, o, o is v, coef, a, ia, lo, nb[0],
             nb[1])


def backward_reduce(srcs, dzs, coef, act, a, ia, lo, from_x, stream=None):
    """Per-channel ``S1 = Σ g`` and ``S2 = Σ g x̂`` in float64, shape (2, C)."""
    sums = np.zeros((2, coef.shape[1]))
    target = _threads(_size(srcs))
    fam = _scalar.FAMILY[act]
    for (v, kind, nb), d in zip(_walk(srcs, target), dzs):
        _run(("backward_reduce_" + kind, fam), bool(target), v, d, coef, a, ia, lo, from_x,
             _partials(kind, v.shape, nb), nb[0], nb[1], sums)
    return sums


def _backward_apply(srcs, dzs, dxs, coef, act, a, ia, lo, from_x, train):
    target = _threads(_size(srcs))
    fam = _scalar.FAMILY[act]
    for (v, kind, nb), d, o in zip(_walk(srcs, target), dzs, dxs):
        _run(("backward_apply_" + kind, fam), bool(target), v, d, o, o is d, coef, a, ia, lo,
             from_x, train, nb[0], nb[1])


def backward_train(srcs, dzs, dxs, coef, act, a, ia, lo, from_x, stream=None):
    """``dx = P g + Q x̂ + R``; ``dxs`` may be ``dzs`` (in place)."""
    _backward_apply(srcs, dzs, dxs, coef, act, a, ia, lo, from_x, True)


def backward_eval(srcs, dzs, dxs, coef, act, a, ia, lo, from_x, stream=None):
    """``dx = P g`` (statistics were constants); ``dxs`` may be ``dzs``."""
    _backward_apply(srcs, dzs, dxs, coef, act, a, ia, lo, from_x, False)
