"""Functional and module API of numbaabn.

The functions here validate every argument in plain Python, then call the backend
primitives (``cpu.py`` for NumPy arrays, ``cuda.py`` for CUDA arrays). Nothing is
written before every check has passed: a call that raises leaves the input, the
gradient, the parameters and the running statistics bit-for-bit unchanged.
"""
import math
import numbers
import sys

import numpy as np

from . import _config, _scalar, cpu, mpi_sync

__all__ = [
    "inplace_abn_forward", "inplace_abn_backward", "inplace_abn",
    "InPlaceABN", "ABN", "InPlaceABNSync", "BatchNorm", "SyncBatchNorm",
    "convert_sync_batchnorm", "SIGNED_WEIGHT_MIN",
]

# name -> (code, default activation_param, invertible)
_ACTIVATIONS = {
    "identity": (_scalar.IDENTITY, 1.0, True),    # the leaky family with a = 1
    "leaky_relu": (_scalar.LEAKY_RELU, 0.01, True),
    "elu": (_scalar.ELU, 1.0, True),
    "relu": (_scalar.RELU, 0.0, False),           # a = 0: the zero of relu's branch
}
_INPLACE_NAMES = "'identity' (or None), 'leaky_relu', 'elu'"
_FIRST = {"NCHW", "NC", "NCL", "NCDHW"}
_LAST = {"NHWC", "NLC", "NDHWC"}
_FLOATS = (np.float16, np.float32, np.float64)
_F16, _F32, _F64 = cpu._F16, cpu._F32, cpu._F64  # dtype tests by identity first


def SIGNED_WEIGHT_MIN(dtype):
    """Smallest ``|weight|`` that the in-place backward can invert in "signed" mode.

    ``x̂ = (y - b) / w`` loses all accuracy when ``|w|`` approaches the rounding
    error of ``y``; the threshold is ``sqrt(finfo(dtype).eps)`` of the data dtype
    (about 3.1e-2 for float16, 3.5e-4 for float32, 1.5e-8 for float64). "abs" mode
    never needs it: its scale ``|w| + eps`` is at least ``eps``.
    """
    return float(np.sqrt(np.finfo(dtype).eps))


# ---- backends ---------------------------------------------------------------------

def _is_device(a):
    """A CUDA array: ``__cuda_array_interface__`` (or Numba's simulator arrays)."""
    if a is None or isinstance(a, np.ndarray):
        return False
    if hasattr(a, "__cuda_array_interface__"):
        return True
    if "numba.cuda" not in sys.modules:  # only consulted once numba.cuda is in use
        return False
    from numba import cuda
    if hasattr(cuda, "is_cuda_array"):
        return bool(cuda.is_cuda_array(a))
    return type(a).__name__ == "FakeCUDAArray"  # Numba's CUDA simulator


def _backend_for(x, others, names, host_params=False):
    """The backend module for ``x``; every other array must live where ``x`` lives
    (``host_params``: layers keep NumPy state and accept device inputs)."""
    if isinstance(x, np.ndarray):
        for a, name in zip(others, names):
            if a is not None and not isinstance(a, np.ndarray):
                where = "a CUDA array" if _is_device(a) else type(a).__name__
                raise TypeError(f"{name} must be a numpy.ndarray like the input (got {where}); "
                                "host and device arrays cannot be mixed")
        return cpu
    if _is_device(x):
        for a, name in zip(others, names):
            if a is not None and not _is_device(a) and not (host_params and
                                                             isinstance(a, np.ndarray)):
                raise TypeError(f"{name} must be a CUDA array like the input (got "
                                f"{type(a).__name__}); host and device arrays cannot be mixed")
        from . import cuda
        return cuda
    raise TypeError(f"expected a numpy.ndarray or an object with __cuda_array_interface__, "
                    f"got {type(x).__name__}")


# ---- option checks ----------------------------------------------------------------

def _is_real(v):
    """A real number, not a bool (a float is checked first: an ABC check costs ~0.7 µs,
    a noticeable share of a small tensor's call)."""
    return type(v) is float or (isinstance(v, numbers.Real) and not isinstance(v, bool))


def _activation(activation, activation_param, in_place):
    name = "identity" if activation is None else activation
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected one of "
                         f"{_INPLACE_NAMES}, or 'relu' on the standard path")
    code, default, invertible = _ACTIVATIONS[name]
    if in_place and not invertible:
        raise ValueError(f"activation {name!r} is not invertible, so it cannot run in place; "
                         f"in-place activations are {_INPLACE_NAMES} (use ABN or "
                         f"BatchNorm(in_place=False) for {name!r})")
    if code in (_scalar.IDENTITY, _scalar.RELU) or activation_param is None:
        return code, default
    if (not _is_real(activation_param)
            or not math.isfinite(activation_param) or activation_param <= 0):
        raise ValueError(f"activation_param for {name!r} must be a finite number > 0, "
                         f"got {activation_param!r}")
    return code, float(activation_param)


def _channels_last(data_format):
    if data_format in _FIRST:
        return False
    if data_format in _LAST:
        return True
    raise ValueError(f"unknown data_format {data_format!r}; expected 'NCHW' (channels first; "
                     f"synonyms 'NC', 'NCL', 'NCDHW') or 'NHWC' (channels last; synonyms "
                     f"'NLC', 'NDHWC')")


def _options(momentum, eps, weight_mode):
    if (not _is_real(eps) or not math.isfinite(eps)
            or eps <= 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    if (not _is_real(momentum)
            or not 0.0 <= momentum <= 1.0):
        raise ValueError(f"momentum must be a number in [0, 1], got {momentum!r}")
    if weight_mode not in ("abs", "signed"):
        raise ValueError(f"weight_mode must be 'abs' or 'signed', got {weight_mode!r}")


def _param_dtype(dtype):
    return _F64 if dtype is _F64 or (dtype is not _F32 and dtype == _F64) else _F32


# ---- array checks -----------------------------------------------------------------

def _overlaps_itself(a, flags):
    """True unless the strides prove that no two elements share memory (``flags``:
    ``a.flags``, which NumPy builds anew on each access)."""
    if flags.c_contiguous or flags.f_contiguous:
        return False
    dims = sorted((abs(s), n) for s, n in zip(a.strides, a.shape) if n > 1)
    if a.size == 0:
        return False
    span = a.itemsize
    for stride, n in dims:
        if stride < span:
            return True
        span += stride * (n - 1)
    return False


def _check_data(x, name, writable):
    dt = getattr(x, "dtype", None)
    if dt is not _F32 and dt is not _F64 and dt is not _F16 and dt not in _FLOATS:
        raise TypeError(f"{name} must be float16, float32 or float64, got dtype {dt}")
    if not 2 <= x.ndim <= 5:
        raise ValueError(f"expected 2D to 5D {name} (got {x.ndim}D {name} of shape "
                         f"{tuple(x.shape)})")
    if isinstance(x, np.ndarray):
        flags = x.flags
        if writable and not flags.writeable:
            raise ValueError(f"{name} is read-only; the in-place path writes its result into "
                             f"{name} (pass a writable array, e.g. {name}.copy())")
        if writable and _overlaps_itself(x, flags):
            raise ValueError(f"{name} has elements that share memory (a broadcast or "
                             f"overlapping strided view); writing into it in place would "
                             f"corrupt the result; pass an array with distinct elements")


def _check_param(p, name, C, pdtype, writable):
    if p is None:
        return
    if p.ndim != 1 or p.shape[0] != C:
        raise ValueError(f"{name} must have shape ({C},) to match the input's {C} channels, "
                         f"got shape {tuple(p.shape)}")
    if p.dtype is not pdtype and p.dtype != pdtype:
        raise TypeError(f"{name} must be {pdtype} for this input (parameters are float32 for "
                        f"float16/float32 data, float64 for float64 data), got {p.dtype}")
    if writable and isinstance(p, np.ndarray) and not p.flags.writeable:
        raise ValueError(f"{name} is read-only but must be updated in training")


# ---- canonical views --------------------------------------------------------------

def _as_shape(a, shape):
    """A view of ``a`` with ``shape``, or None where that would need a copy."""
    try:
        return np.reshape(a, shape, copy=False)
    except ValueError:
        return None


def _plan(arrays, c_axis):
    """How to walk ``arrays`` (same shape) in place: ("cf"|"cl", k).

    The layout is chosen by memory, not by ``data_format``: channels last when the
    channel stride is the smallest, so that the inner loop of the kernel is the
    contiguous one. ``k`` leading non-channel dims are iterated in Python when a
    strided layout cannot merge them into one axis (rare; never for contiguous data).
    """
    a = arrays[0]
    strides = [abs(s) for s, n in zip(a.strides, a.shape) if n > 1]
    cs = abs(a.strides[c_axis]) if a.shape[c_axis] > 1 else 0
    spatial = int(np.prod(a.shape[2:])) if c_axis == 1 else 1
    if c_axis == a.ndim - 1 or spatial == 1 or (strides and cs <= min(strides)):
        kind, moved = "cl", [np.moveaxis(b, c_axis, -1) for b in arrays]
        outer = moved[0].shape[:-1]
    else:
        kind, moved = "cf", [np.moveaxis(b, c_axis, 1) for b in arrays]
        outer = moved[0].shape[2:]
    for k in range(len(outer)):
        if all(_leaf_views(m, kind, k, first_only=True) for m in moved):
            return kind, k, moved
    return kind, len(outer), moved  # not reached: one trailing dim always merges


def _leaf_views(m, kind, k, first_only=False):
    """Canonical views of ``m`` (channel axis moved) with ``k`` dims split off."""
    if kind == "cl":
        lead, rest = m.shape[:k], m.shape[k:-1]
        shape = (int(np.prod(rest)), m.shape[-1])
        pre = ()
    else:
        lead, rest = m.shape[2:2 + k], m.shape[2 + k:]
        shape = (m.shape[0], m.shape[1], int(np.prod(rest)))
        pre = (slice(None), slice(None))
    views = []
    for idx in np.ndindex(*lead):
        v = _as_shape(m[pre + idx], shape)
        if v is None:
            return None
        views.append(v)
        if first_only:
            return views
    return views


def _views(arrays, c_axis, backend):
    """Canonical views of same-shaped ``arrays``: one list of views per array."""
    if backend.IS_DEVICE:
        return backend.views(arrays, c_axis)
    a = arrays[0]
    contiguous = True
    for b in arrays:
        contiguous = contiguous and b.flags.c_contiguous
    if contiguous:  # the common case, without planning
        C = a.shape[c_axis]
        rows = a.size // C if C else 0
        if c_axis == a.ndim - 1 or rows == a.shape[0]:
            shape = (rows, C)                      # channels last, or no spatial extent
        else:
            shape = (a.shape[0], C, rows // a.shape[0])
        return [[backend.kernel_view(b.reshape(shape))] for b in arrays]
    kind, k, moved = _plan(arrays, c_axis)
    return [[backend.kernel_view(v) for v in _leaf_views(m, kind, k)] for m in moved]


# ---- the saved record -------------------------------------------------------------

class _Saved:
    """What backward needs: O(C) arrays, scalars, and a reference to the buffer the
    forward wrote (in place: the output z; standard path: a copy of the input x)."""
    __slots__ = ("backend", "src", "shape", "dtype", "c_axis", "from_x",
                 "batch_stats", "count", "coef", "weight", "has_bias",
                 "weight_mode", "act", "alpha", "ialpha", "lo", "hook", "channels_last",
                 "device_grads", "stream")


def _host(a):
    """A host (NumPy) array for ``a``: ``a`` itself, or a copy of a device array."""
    if a is None or isinstance(a, np.ndarray):
        return a
    from . import cuda
    return cuda.to_host(a)


def _hook(comm):
    """The allreduce hook of ``comm``, or None for local statistics."""
    return None if comm is None else mpi_sync.as_hook(comm)


def _act_constants(alpha, cdtype):
    """(a, 1/a, lo) in the compute dtype; lo is the value just above -1, to which
    ELU's inverse clamps z/a."""
    key = (alpha, cdtype)
    if key not in _ACT_CONSTANTS:
        _ACT_CONSTANTS[key] = (cdtype(alpha), cdtype(1.0 / alpha) if alpha else cdtype(1.0),
                               np.nextafter(cdtype(-1), cdtype(0)))
    return _ACT_CONSTANTS[key]


_ACT_CONSTANTS = {}
_NO_WEIGHT = np.zeros(0)
_NO_RUNNING = {np.dtype(np.float32): np.zeros(0, np.float32),
               np.dtype(np.float64): np.zeros(0, np.float64)}


def _forward(x, weight, bias, running_mean, running_var, *, training, momentum, eps,
             activation, activation_param, data_format, use_global_stats, weight_mode,
             comm, in_place, host_params=False, stream=None):
    """Shared forward of the in-place and the standard path; returns (out, saved)."""
    _config.restart_labels()  # see _config: before anything that may compile
    # ---- validate everything; nothing is written in this section
    names = ("weight", "bias", "running_mean", "running_var")
    hook = _hook(comm)
    try:
        backend = _backend_for(x, (weight, bias, running_mean, running_var), names,
                               host_params)
        caller_x = x  # in place, the caller's own object is returned
        if backend.IS_DEVICE:  # a zero-copy Numba view of any CUDA array (CuPy, torch...)
            x = backend.as_device(x)
        act, alpha = _activation(activation, activation_param, in_place)
        channels_last = _channels_last(data_format)
        _options(momentum, eps, weight_mode)
        _check_data(x, "input", writable=in_place)
        if backend.IS_DEVICE:
            backend.check_array(x, "input", in_place)
        c_axis = x.ndim - 1 if channels_last else 1
        C = x.shape[c_axis]
        pdtype = _param_dtype(x.dtype)
        if (running_mean is None) != (running_var is None):
            raise ValueError(
                "running_mean and running_var must both be arrays or both be None (got "
                f"running_mean={'None' if running_mean is None else 'an array'}, "
                f"running_var={'None' if running_var is None else 'an array'})")
        has_running = running_mean is not None
        batch_stats = not has_running or (training and not use_global_stats)
        update = has_running and training and not use_global_stats
        for p, name in zip((weight, bias, running_mean, running_var), names):
            _check_param(p, name, C, pdtype, writable=update and name.startswith("running"))
        cdtype = backend.compute_dtype(x.dtype)
        if in_place:
            views = out_views = _views([x], c_axis, backend)[0]
        else:
            out = backend.empty_like(x, stream=stream)
            views, out_views = _views([x, out], c_axis, backend)
    except Exception:
        if hook is not None:  # the other workers must not wait for this one
            mpi_sync.check_consistent(hook, 1, ok=False)
        raise
    if hook is not None:
        mpi_sync.check_consistent(hook, 1, C, x.dtype, channels_last, batch_stats)

    # ---- per-channel inputs of the coefficients, on the host
    w = None if weight is None else np.asarray(_host(weight), dtype=np.float64)
    b = np.zeros(C) if bias is None else np.asarray(_host(bias), dtype=np.float64)
    w_arg = np.ones(C) if w is None else w
    coef = np.zeros((10, C), dtype=cdtype)  # rows: see cpu.py
    abs_mode = weight_mode == "abs" and w is not None
    rm_arg = _host(running_mean) if update else _NO_RUNNING[pdtype]
    rv_arg = _host(running_var) if update else _NO_RUNNING[pdtype]
    a, ia, lo = _act_constants(alpha, cdtype)
    count = x.size // C if C else 0

    # the whole in-place training forward in one compiled call (None: see forward_train_one)
    one = None
    if batch_stats and in_place and hook is None and not backend.IS_DEVICE and count > 1:
        one = backend.forward_train_one(views, w_arg, b, float(eps), abs_mode, coef, update,
                                        float(momentum), rm_arg, rv_arg, act, a, ia, lo)
    if one is not None:
        if not one[0]:
            raise _non_finite(*one[1])
        return caller_x, _saved(backend, x, x, c_axis, in_place, batch_stats, count, coef, w,
                                bias, weight_mode, hook, channels_last, host_params, stream,
                                act, a, ia, lo)

    # ---- statistics: the running ones (eval), or a read-only pass over the batch,
    # merged across workers when synchronized
    if not batch_stats:
        mean = np.asarray(_host(running_mean), dtype=np.float64)
        var = np.asarray(_host(running_var), dtype=np.float64)
        # the in-place eval forward in one compiled call (None: see forward_eval_one)
        if in_place and not backend.IS_DEVICE and backend.forward_eval_one(
                views, mean, var, w_arg, b, float(eps), abs_mode, coef, rm_arg, rv_arg, act,
                a, ia, lo):
            return caller_x, _saved(backend, x, x, c_axis, in_place, batch_stats, count, coef,
                                    w, bias, weight_mode, hook, channels_last, host_params,
                                    stream, act, a, ia, lo)
    else:
        count, mean, m2 = backend.statistics(views, C, stream=stream)
        if hook is not None:
            count, mean, m2 = mpi_sync.merge_statistics(hook, count, mean, m2)
        if training and count <= 1:
            raise ValueError(f"expected more than 1 value per channel when training, got "
                             f"input size {tuple(x.shape)}"
                             + (f" ({count} in all across workers)" if hook else ""))
        var = m2 / count if count else np.zeros(C)

    # ---- coefficients (and the check of the batch statistics)
    if not cpu.fill_coefficients(mean, var, w_arg, b, float(eps), abs_mode, in_place,
                                 batch_stats, coef, update, float(momentum), rm_arg, rv_arg):
        raise _non_finite(mean, var)

    # ---- write
    if in_place:
        out, src = caller_x, x
    else:
        src = backend.copy(x, stream=stream)
    backend.forward(views, out_views, coef, act, a, ia, lo, stream=stream)
    if update and _is_device(running_mean):  # running statistics live on the device
        backend.copy_from_host(backend.as_device(running_mean), rm_arg, stream)
        backend.copy_from_host(backend.as_device(running_var), rv_arg, stream)

    return out, _saved(backend, x, src, c_axis, in_place, batch_stats, count, coef, w, bias,
                       weight_mode, hook, channels_last, host_params, stream, act, a, ia, lo)


def _non_finite(mean, var):
    bad = np.flatnonzero(~(np.isfinite(mean) & np.isfinite(var)))
    return FloatingPointError(f"non-finite batch statistics in channels {bad.tolist()}"
                              " (the input holds NaN or Inf there); nothing was written")


def _saved(backend, x, src, c_axis, in_place, batch_stats, count, coef, w, bias, weight_mode,
           hook, channels_last, host_params, stream, act, a, ia, lo):
    saved = _Saved()
    saved.backend, saved.src = backend, src
    saved.shape, saved.dtype, saved.c_axis = tuple(x.shape), x.dtype, c_axis
    saved.from_x, saved.batch_stats, saved.count = not in_place, batch_stats, count
    saved.coef, saved.weight = coef, w
    saved.has_bias, saved.weight_mode, saved.hook = bias is not None, weight_mode, hook
    saved.channels_last = channels_last
    saved.device_grads = backend.IS_DEVICE and not host_params
    saved.stream = stream
    saved.act, saved.alpha, saved.ialpha, saved.lo = act, a, ia, lo
    return saved


def _backward(dz, saved, in_place, stream=None):
    """Shared backward; writes dx over dz (in place) or into a new array."""
    _config.restart_labels()
    if saved is None:
        raise RuntimeError("backward called without a forward: pass the saved record that "
                           "the forward returned (each record serves one backward)")
    if not isinstance(saved, _Saved):
        raise TypeError(f"saved must be the record returned by the forward, got "
                        f"{type(saved).__name__}")
    hook = saved.hook
    try:
        backend = saved.backend
        if not isinstance(dz, np.ndarray) and not _is_device(dz):
            raise TypeError(f"dz must be an array like the forward's input, got {type(dz).__name__}")
        if _is_device(dz) != backend.IS_DEVICE:
            raise TypeError("dz must live where the forward's input lived; host and device "
                            "arrays cannot be mixed")
        caller_dz = dz
        if backend.IS_DEVICE:  # zero-copy Numba view (CuPy, torch, ...)
            dz = backend.as_device(dz)
        if tuple(dz.shape) != saved.shape:
            raise ValueError(f"dz has shape {tuple(dz.shape)} but the forward's input had shape "
                             f"{saved.shape}")
        if dz.dtype is not saved.dtype and dz.dtype != saved.dtype:
            raise TypeError(f"dz has dtype {dz.dtype} but the forward's input had dtype "
                            f"{saved.dtype}")
        _check_data(dz, "dz", writable=in_place)
        if backend.IS_DEVICE:
            backend.check_array(dz, "dz", in_place)
        src = saved.src
        if in_place and isinstance(dz, np.ndarray) and dz is not src and \
                np.may_share_memory(dz, src) and not (
                    dz.__array_interface__["data"][0] == src.__array_interface__["data"][0]
                    and dz.strides == src.strides):
            raise ValueError("dz overlaps the forward's output z in a different layout; the "
                             "in-place backward reads z while it writes dz (pass dz as its own "
                             "array, or z itself)")
        w = saved.weight
        if saved.weight_mode == "signed" and w is not None:
            small = np.flatnonzero(~(np.abs(w) >= SIGNED_WEIGHT_MIN(saved.dtype)))
            if small.size and in_place:
                raise ValueError(
                    f"weight_mode='signed': channels {small.tolist()} have |weight| below "
                    f"{SIGNED_WEIGHT_MIN(saved.dtype):.3g}, so x̂ = (y - b) / weight cannot be "
                    f"recovered from the output in place; use weight_mode='abs' or the standard "
                    f"path (ABN / BatchNorm(in_place=False)); nothing was written")
    except Exception:
        if hook is not None:
            mpi_sync.check_consistent(hook, 2, ok=False)
        raise
    if hook is not None:
        mpi_sync.check_consistent(hook, 2, saved.coef.shape[1], saved.dtype,
                                  saved.channels_last, saved.batch_stats)

    # ---- reduce, synchronize, apply
    stream = saved.stream if stream is None else stream
    if in_place:
        out = caller_dz if backend.IS_DEVICE else dz
        src_views, dz_views = _views([src, dz], saved.c_axis, backend)
        out_views = dz_views
    else:
        out = backend.empty_like(dz, stream=stream)
        src_views, dz_views, out_views = _views([src, dz, out], saved.c_axis, backend)
    coef, act, a, ia, lo = saved.coef.copy(), saved.act, saved.alpha, saved.ialpha, saved.lo
    train = saved.batch_stats and saved.count > 0
    pdtype = _param_dtype(saved.dtype)
    C = coef.shape[1]
    dw = np.empty(C if w is not None else 0, pdtype)
    db = np.empty(C if saved.has_bias else 0, pdtype)
    w_arg, abs_mode = _NO_WEIGHT if w is None else w, saved.weight_mode == "abs"
    # the whole training backward in one compiled call (None: see backward_train_one)
    one = None
    if train and hook is None and not backend.IS_DEVICE:
        one = backend.backward_train_one(src_views, dz_views, out_views, coef, act, a, ia, lo,
                                         saved.from_x, float(saved.count), w_arg, abs_mode,
                                         dw, db)
    if one is None:
        local = backend.backward_reduce(src_views, dz_views, coef, act, a, ia, lo,
                                        saved.from_x, stream=stream)
        sums = local
        if saved.batch_stats and hook is not None:
            sums = mpi_sync.allreduce_sum(hook, local)
        cpu.gradient_coefficients(coef, sums, float(saved.count), train, saved.from_x, local,
                                  w_arg, abs_mode, dw, db)
        if train:
            backend.backward_train(src_views, dz_views, out_views, coef, act, a, ia, lo,
                                   saved.from_x, stream=stream)
        else:
            backend.backward_eval(src_views, dz_views, out_views, coef, act, a, ia, lo,
                                  saved.from_x, stream=stream)
    dweight = None if w is None else dw
    dbias = db if saved.has_bias else None
    if saved.device_grads:  # functional API on device arrays: gradients on the device
        dweight = None if dweight is None else backend.from_host(dweight)
        dbias = None if dbias is None else backend.from_host(dbias)
    return out, dweight, dbias


# ---- public functions -------------------------------------------------------------

_MATH = r"""
    Per channel ``c``, over the ``M`` elements of the channel (batch and spatial
    axes; all workers when ``comm`` is given)::

        mean = Σx / M            var = Σ(x - mean)² / M        (biased)
        x̂ = (x - mean) / sqrt(var + eps)
        y = s x̂ + b              s = |w| + eps ("abs", default)  or  s = w ("signed")
        z = act(y)               written over x

    With running statistics, training updates them (Paddle's convention;
    PyTorch's ``momentum=0.1`` is ``momentum=0.9`` here, and PyTorch keeps the
    unbiased variance where this keeps the biased one)::

        running_mean = momentum * running_mean + (1 - momentum) * mean
        running_var  = momentum * running_var  + (1 - momentum) * var
"""

_SHAPE = """
    Shape
    -----
    x : ``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)`` or ``(N, C, D, H, W)`` with
        ``data_format="NCHW"`` (or its synonyms ``"NC"``, ``"NCL"``, ``"NCDHW"``);
        ``(N, L, C)``, ``(N, H, W, C)``, ``(N, D, H, W, C)`` with ``"NHWC"`` (or
        ``"NLC"``, ``"NDHWC"``). Any strides; float16, float32 or float64.
    weight, bias, running_mean, running_var : ``(C,)``, float32 for float16/float32
        data, float64 for float64 data, or None.
"""


def inplace_abn_forward(x, weight=None, bias=None, running_mean=None, running_var=None, *,
                        training=True, momentum=0.9, eps=1e-5, activation="leaky_relu",
                        activation_param=None, data_format="NCHW", use_global_stats=False,
                        weight_mode="abs", comm=None, stream=None):
    return _forward(x, weight, bias, running_mean, running_var, training=training,
                    momentum=momentum, eps=eps, activation=activation,
                    activation_param=activation_param, data_format=data_format,
                    use_global_stats=use_global_stats, weight_mode=weight_mode, comm=comm,
                    in_place=True, stream=stream)


inplace_abn_forward.__doc__ = """In-place activated batch normalization, forward: ``x <- act(BN(x))``.
""" + _MATH + """
    Parameters
    ----------
    x : array, written in place (NumPy array: CPU kernels; CUDA array: CUDA kernels)
    weight, bias : per-channel affine parameters, or None (``s = 1``, ``b = 0``)
    running_mean, running_var : running statistics, updated in training; both None
        to normalize with batch statistics in every mode and update nothing
    training : bool. False (eval) normalizes with the running statistics.
    momentum : float in [0, 1]; eps : float > 0
    activation : ``"identity"`` (or None), ``"leaky_relu"``, ``"elu"``
    activation_param : slope of leaky_relu (default 0.01) or alpha of elu (1.0)
    data_format : ``"NCHW"`` (channels first) or ``"NHWC"`` (channels last)
    use_global_stats : bool. True normalizes with the running statistics even in
        training and updates nothing.
    weight_mode : ``"abs"`` (mapillary InPlace-ABN: ``s = |w| + eps``, always
        invertible) or ``"signed"`` (``s = w``: exact BatchNorm, as PaddlePaddle)
    comm : None, an ``mpi4py`` communicator or an allreduce hook (see ``mpi_sync``):
        statistics of the whole batch across workers
    stream : a ``numba.cuda`` stream for CUDA arrays (None: the default stream);
        kernels and copies are queued on it; the O(C) results the host needs are
        synchronized. Ignored for NumPy arrays.

    Returns
    -------
    y : ``x`` itself, overwritten with the output
    saved : record for :func:`inplace_abn_backward` (O(C) arrays and a reference
        to ``y``; ``y`` must not be modified before the backward)
""" + _SHAPE + """
    Raises
    ------
    ValueError, TypeError : bad arguments, before anything is written
    FloatingPointError : NaN/Inf in ``x`` while computing batch statistics, raised
        after the statistics pass and before anything is written
"""


def inplace_abn_backward(dz, saved, stream=None):
    """In-place activated batch normalization, backward: ``dz <- dL/dx``.

    Recovers ``y = act⁻¹(z)``, ``g = dL/dy`` and ``x̂ = (y - b) / s`` from the
    forward's output ``z`` and the incoming gradient, element by element::

        S1 = Σ g        S2 = Σ g x̂          (over all workers when synchronized)
        training:  dx = s inv_std (g - S1/M - x̂ S2/M)
        eval:      dx = s inv_std g
        dbias = S1 (local)     dweight = S2 (local) · sign(w)  ("abs", sign(0) = +1)
                               dweight = S2 (local)            ("signed")

    Parameters
    ----------
    dz : array shaped and typed like the forward's input, written in place
    saved : the record returned by :func:`inplace_abn_forward`
    stream : CUDA stream (None: the forward's)

    Returns
    -------
    dx : ``dz`` itself, overwritten with the input gradient
    dweight, dbias : new ``(C,)`` arrays, or None where weight/bias were None

    Raises
    ------
    RuntimeError : no forward record
    ValueError : ``dz`` of another shape, read-only or self-overlapping; "signed"
        weights with ``|w| < SIGNED_WEIGHT_MIN(dtype)`` (named, before any write)
    TypeError : ``dz`` of another dtype, or on another device
    """
    return _backward(dz, saved, in_place=True, stream=stream)


def inplace_abn(x, weight=None, bias=None, running_mean=None, running_var=None, **kwargs):
    """Forward only (inference, experiments): ``x <- act(BN(x))``; returns ``x``.

    Takes the keyword arguments of :func:`inplace_abn_forward`."""
    return inplace_abn_forward(x, weight, bias, running_mean, running_var, **kwargs)[0]


# ---- modules ----------------------------------------------------------------------

class InPlaceABN:
    """In-place activated batch normalization layer with moving statistics.

    ``layer(x)`` overwrites ``x`` with ``act(BN(x))``; ``layer.backward(dz)``
    overwrites ``dz`` with ``dL/dx`` and accumulates ``weight_grad`` and
    ``bias_grad``. State is held in NumPy arrays.
""" + _MATH + """
    Parameters
    ----------
    num_features : int, the channel count C
    activation, activation_param, eps, momentum, data_format, weight_mode :
        as in :func:`inplace_abn_forward`
    dtype : ``"float32"`` (parameters float32; float16 or float32 input) or
        ``"float64"``; ``"float16"`` means float16 input with float32 parameters
    affine : bool, learnable ``weight`` (ones) and ``bias`` (zeros)
    use_global_stats : normalize with the running statistics in training too
    trainable_statistics : in eval mode, normalize with batch statistics and update
        the running statistics (PaddlePaddle's flag); the backward is the true
        gradient of that forward (PaddlePaddle 3.x instead treats the statistics as
        constants in its backward)
    comm : synchronize statistics across workers (see ``InPlaceABNSync``)
""" + _SHAPE
    _in_place = True
    _state_names = ("weight", "bias", "running_mean", "running_var")

    def __init__(self, num_features, *, activation="leaky_relu", activation_param=None,
                 eps=1e-5, momentum=0.9, data_format="NCHW", dtype="float32",
                 weight_mode="abs", affine=True, use_global_stats=False,
                 trainable_statistics=False, comm=None):
        if not isinstance(num_features, numbers.Integral) or num_features < 1:
            raise ValueError(f"num_features must be a positive integer, got {num_features!r}")
        _activation(activation, activation_param, self._in_place)
        _channels_last(data_format)
        _options(momentum, eps, weight_mode)
        if str(np.dtype(dtype)) not in ("float16", "float32", "float64"):
            raise TypeError(f"dtype must be 'float16', 'float32' or 'float64', got {dtype!r}")
        pdtype = _param_dtype(np.dtype(dtype))
        C = int(num_features)
        self.num_features = C
        self.activation, self.activation_param = activation, activation_param
        self.eps, self.momentum, self.data_format = eps, momentum, data_format
        self.dtype, self.weight_mode, self.affine = np.dtype(dtype), weight_mode, affine
        self.use_global_stats = use_global_stats
        self.trainable_statistics = trainable_statistics
        self.comm = comm
        self.weight = np.ones(C, pdtype) if affine else None
        self.bias = np.zeros(C, pdtype) if affine else None
        self.running_mean = np.zeros(C, pdtype)
        self.running_var = np.ones(C, pdtype)
        self.weight_grad = np.zeros(C, pdtype) if affine else None
        self.bias_grad = np.zeros(C, pdtype) if affine else None
        self.training = True
        self._saved = None

    def train(self, mode=True):
        """Training mode (batch statistics, running statistics updated); returns self."""
        self.training = bool(mode)
        return self

    def eval(self):
        """Eval mode (running statistics); returns self."""
        return self.train(False)

    def zero_grad(self):
        """Set ``weight_grad`` and ``bias_grad`` to zero."""
        for g in (self.weight_grad, self.bias_grad):
            if g is not None:
                g[...] = 0

    def _running(self):
        return self.running_mean, self.running_var

    def _batch_mode(self):
        return self.training or self.trainable_statistics

    def forward(self, x):
        """``act(BN(x))``: written over ``x`` (in-place layers) or returned new."""
        self._saved = None
        rm, rv = self._running()
        out, self._saved = _forward(
            x, self.weight, self.bias, rm, rv, training=self._batch_mode(),
            momentum=self.momentum, eps=self.eps, activation=self.activation,
            activation_param=self.activation_param, data_format=self.data_format,
            use_global_stats=self.use_global_stats, weight_mode=self._mode(),
            comm=self.comm, in_place=self._in_place, host_params=True)
        return out

    __call__ = forward

    def _mode(self):
        return self.weight_mode

    def backward(self, dz):
        """Input gradient of the last forward (in place over ``dz`` for in-place
        layers); accumulates ``weight_grad`` and ``bias_grad``."""
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward called without a forward "
                               "(each forward serves one backward)")
        dx, dw, db = _backward(dz, self._saved, in_place=self._in_place)
        if dw is not None:
            self.weight_grad += dw
        if db is not None:
            self.bias_grad += db
        self._saved = None
        return dx

    def fuse(self):
        """The eval-mode forward as a :class:`numbaabn.inference.FusedABN`: per-channel
        coefficients computed once, then one in-place pass per call (inference)."""
        from .inference import fuse
        return fuse(self)

    def state_dict(self):
        """Copies of the parameters and running statistics, as NumPy arrays."""
        return {k: np.array(v, copy=True) for k, v in self._state_items() if v is not None}

    def _state_items(self):
        return [(k, getattr(self, a)) for k, a in zip(self._state_names, (
            "weight", "bias", "running_mean", "running_var"))]

    def load_state_dict(self, state):
        """Copy arrays from ``state`` (keys as in :meth:`state_dict`) into the layer.

        Every key and shape is checked before anything is copied."""
        items = [(k, v) for k, v in self._state_items() if v is not None]
        expected = {k for k, _ in items}
        missing, extra = expected - set(state), set(state) - expected
        if missing or extra:
            raise KeyError(f"state_dict keys do not match: missing {sorted(missing)}, "
                           f"unexpected {sorted(extra)}")
        for k, v in items:
            src = np.asarray(state[k])
            if src.shape != v.shape:
                raise ValueError(f"{k}: expected shape {v.shape}, got {src.shape}")
            if src.dtype.kind not in "fiu":
                raise TypeError(f"{k}: expected a real array, got dtype {src.dtype}")
        for k, v in items:
            v[...] = np.asarray(state[k])

    def __repr__(self):
        return (f"{type(self).__name__}({self.num_features}, activation={self.activation!r}, "
                f"momentum={self.momentum}, eps={self.eps}, data_format={self.data_format!r}, "
                f"weight_mode={self._mode()!r})")


class ABN(InPlaceABN):
    """Standard BN + activation: keeps a copy of its input and returns a new output.

    Same signature as :class:`InPlaceABN`; any activation including ``"relu"``.
    ``backward(dz)`` returns a new gradient array and leaves ``dz`` untouched. The
    baseline for memory experiments and the path for non-invertible activations.
    """
    _in_place = False


class InPlaceABNSync(InPlaceABN):
    """:class:`InPlaceABN` whose statistics are those of the whole batch across the
    workers of ``comm`` (an mpi4py communicator or an allreduce hook)."""

    def __init__(self, num_features, comm, **kwargs):
        super().__init__(num_features, comm=comm, **kwargs)


class BatchNorm(InPlaceABN):
    """PaddlePaddle's ``paddle.nn.BatchNorm`` (names and semantics; exact "signed"
    weights), optionally in place.

    Parameters
    ----------
    num_channels : int
    act : None, ``"identity"``, ``"leaky_relu"``, ``"elu"``, ``"relu"``
    is_test : bool, eval mode whatever ``train()`` says
    momentum, epsilon : as Paddle (``momentum=0.9`` keeps 90% of the old statistics)
    dtype : ``"float32"`` or ``"float64"``
    data_layout : ``"NCHW"`` or ``"NHWC"``
    in_place : bool, True with an invertible ``act`` runs the in-place path (the input
        is overwritten); otherwise the standard path (a new output)
    use_global_stats, trainable_statistics : Paddle's mode flags

    ``state_dict`` uses Paddle's keys ``weight``, ``bias``, ``_mean``, ``_variance``.
    """
    _state_names = ("weight", "bias", "_mean", "_variance")

    def __init__(self, num_channels, act=None, is_test=False, momentum=0.9, epsilon=1e-5,
                 dtype="float32", data_layout="NCHW", in_place=False, use_global_stats=False,
                 trainable_statistics=False):
        invertible = _ACTIVATIONS.get("identity" if act is None else act, (0, 0, False))[2]
        self._in_place = bool(in_place) and invertible
        super().__init__(num_channels, activation=act, eps=epsilon, momentum=momentum,
                         data_format=data_layout, dtype=dtype, weight_mode="signed",
                         use_global_stats=use_global_stats,
                         trainable_statistics=trainable_statistics)
        self.is_test = bool(is_test)

    def _batch_mode(self):
        return (self.training and not self.is_test) or self.trainable_statistics

    @property
    def _mean(self):
        return self.running_mean

    @property
    def _variance(self):
        return self.running_var


class SyncBatchNorm(InPlaceABN):
    """PaddlePaddle's ``paddle.nn.SyncBatchNorm``: batch normalization (no
    activation, exact "signed" weights, a new output) with the statistics of the
    whole batch across the workers of ``comm``.

    ``weight_attr=False`` / ``bias_attr=False``: no weight / bias.
    ``track_running_stats=False``: no running statistics; batch statistics always.
    """
    _in_place = False
    _state_names = ("weight", "bias", "_mean", "_variance")

    def __init__(self, num_features, epsilon=1e-5, momentum=0.9, track_running_stats=True,
                 weight_attr=None, bias_attr=None, data_format="NCHW", comm=None):
        super().__init__(num_features, activation="identity", eps=epsilon, momentum=momentum,
                         data_format=data_format, weight_mode="signed", comm=comm)
        if weight_attr is False:
            self.weight = self.weight_grad = None
        if bias_attr is False:
            self.bias = self.bias_grad = None
        self.track_running_stats = bool(track_running_stats)
        if not self.track_running_stats:
            self.running_mean = self.running_var = None

    def _running(self):
        return (self.running_mean, self.running_var) if self.track_running_stats else (None, None)


def convert_sync_batchnorm(layers, comm):
    """Synchronized twins of the BatchNorm-like layers in ``layers``.

    ``layers`` may be a layer, a list, a tuple, a dict, or an object whose attributes
    hold layers (searched recursively). Each :class:`InPlaceABN`-family layer is
    replaced by a twin with ``comm`` set that shares its parameter and statistics
    arrays (same objects). Lists and dicts are updated in place; the converted
    structure is returned.
    """
    return _convert(layers, comm, set())


def _convert(obj, comm, seen):
    if isinstance(obj, InPlaceABN):
        twin = object.__new__(type(obj))
        twin.__dict__.update(obj.__dict__)
        twin.comm = comm
        twin._saved = None
        return twin
    if id(obj) in seen:
        return obj
    seen.add(id(obj))
    if isinstance(obj, list):
        obj[:] = [_convert(o, comm, seen) for o in obj]
        return obj
    if isinstance(obj, tuple):
        return type(obj)(_convert(o, comm, seen) for o in obj)
    if isinstance(obj, dict):
        for k in list(obj):
            obj[k] = _convert(obj[k], comm, seen)
        return obj
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        for k, v in list(vars(obj).items()):
            new = _convert(v, comm, seen)
            if new is not v:
                setattr(obj, k, new)
    return obj
