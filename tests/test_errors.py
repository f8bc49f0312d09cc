"""Every bad input of SPEC section 5 raises before the first write: the input, the
gradient, the parameters and the running statistics stay bit-for-bit unchanged."""
import re

import numpy as np
import pytest

import numbaabn
from conftest import assert_unchanged, snapshot


def arrays(rng, shape=(4, 3, 5), dtype=np.float32, C=3):
    pd = np.float64 if dtype == np.float64 else np.float32
    x = rng.standard_normal(shape).astype(dtype)
    w, b = rng.standard_normal(C).astype(pd), rng.standard_normal(C).astype(pd)
    rm, rv = rng.standard_normal(C).astype(pd), (rng.random(C) + 0.5).astype(pd)
    return x, w, b, rm, rv


class FakeDeviceArray:
    """Anything with __cuda_array_interface__ counts as a device array."""
    __cuda_array_interface__ = {"shape": (3,), "typestr": "<f4", "data": (0, False),
                                "version": 3}
    shape, ndim, dtype = (3,), 1, np.dtype(np.float32)


def _ro(a):
    a.flags.writeable = False
    return a


# (id, exception, message fragment, mutate(x, w, b, rm, rv) -> args, kwargs)
CASES = [
    ("rank1", ValueError, "expected 2D to 5D", lambda x, w, b, rm, rv: ((x[0, 0], w, b, rm, rv), {})),
    ("rank6", ValueError, "expected 2D to 5D",
     lambda x, w, b, rm, rv: ((x.reshape(1, 4, 3, 5, 1, 1), w, b, rm, rv), {})),
    ("channels", ValueError, "shape (5,)", lambda x, w, b, rm, rv: ((x, w, b, rm, rv), {"data_format": "NHWC"})),
    ("int dtype", TypeError, "float16, float32 or float64",
     lambda x, w, b, rm, rv: ((x.view(np.int32), w, b, rm, rv), {})),
    ("complex dtype", TypeError, "float16, float32 or float64",
     lambda x, w, b, rm, rv: ((x.astype(np.complex64), w, b, rm, rv), {})),
    ("read-only", ValueError, "read-only", lambda x, w, b, rm, rv: ((_ro(x.view()), w, b, rm, rv), {})),
    ("weight length", ValueError, "weight must have shape (3,)",
     lambda x, w, b, rm, rv: ((x, np.ones(4, np.float32), b, rm, rv), {})),
    ("bias dtype", TypeError, "bias must be float32",
     lambda x, w, b, rm, rv: ((x, w, b.astype(np.float64), rm, rv), {})),
    ("running_var length", ValueError, "running_var must have shape",
     lambda x, w, b, rm, rv: ((x, w, b, rm, rv[:2]), {})),
    ("running_var missing", ValueError, "both be arrays or both be None",
     lambda x, w, b, rm, rv: ((x, w, b, rm, None), {})),
    ("running_mean missing", ValueError, "both be arrays or both be None",
     lambda x, w, b, rm, rv: ((x, w, b, None, rv), {})),
    ("read-only running stats", ValueError, "running_mean is read-only",
     lambda x, w, b, rm, rv: ((x, w, b, _ro(rm.view()), rv), {})),
    ("activation", ValueError, "unknown activation", lambda x, w, b, rm, rv: ((x, w, b, rm, rv), {"activation": "gelu"})),
    ("relu in place", ValueError, "not invertible", lambda x, w, b, rm, rv: ((x, w, b, rm, rv), {"activation": "relu"})),
    ("data_format", ValueError, "unknown data_format", lambda x, w, b, rm, rv: ((x, w, b, rm, rv), {"data_format": "CHWN"})),
    ("slope zero", ValueError, "activation_param", lambda x, w, b, rm, rv: ((x, w, b, rm, rv), {"activation_param": 0.0})),
    ("slope negative", ValueError, "activation_param",
     lambda x, w, b, rm, rv: ((x, w, b, rm, rv), {"activation": "elu", "activation_param": -1.0})),
    ("slope nan", ValueError, "activation_param", lambda x, w, b, rm, rv: ((x, w, b, rm, rv), {"activation_param": float("nan")})),
    ("eps zero", ValueError, "eps", lambda x, w, b, rm, rv: ((x, w, b, rm, rv), {"eps": 0.0})),
    ("eps negative", ValueError, "eps", lambda x, w, b, rm, rv: ((x, w, b, rm, rv), {"eps": -1e-5})),
    ("momentum high", ValueError, "momentum", lambda x, w, b, rm, rv: ((x, w, b, rm, rv), {"momentum": 1.5})),
    ("momentum low", ValueError, "momentum", lambda x, w, b, rm, rv: ((x, w, b, rm, rv), {"momentum": -0.1})),
    ("weight_mode", ValueError, "weight_mode", lambda x, w, b, rm, rv: ((x, w, b, rm, rv), {"weight_mode": "sign"})),
    ("one value per channel", ValueError, "expected more than 1 value per channel when training",
     lambda x, w, b, rm, rv: ((x[:1, :, :1], w, b, rm, rv), {})),
    ("one value per channel rank2", ValueError, "expected more than 1 value per channel",
     lambda x, w, b, rm, rv: ((x[:1, :, 0], w, b, rm, rv), {})),
    ("broadcast input", ValueError, "share memory",
     lambda x, w, b, rm, rv: ((np.lib.stride_tricks.as_strided(x, (4, 3, 5), (0, 20, 4)), w, b, rm, rv), {})),
    ("device weight", TypeError, "host and device", lambda x, w, b, rm, rv: ((x, FakeDeviceArray(), b, rm, rv), {})),
    ("list input", TypeError, "expected a numpy.ndarray", lambda x, w, b, rm, rv: ((x.tolist(), w, b, rm, rv), {})),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_forward_rejects_and_leaves_arrays_unchanged(case, rng):
    _, exc, fragment, make = case
    x, w, b, rm, rv = arrays(rng)
    snap = snapshot(x, w, b, rm, rv)
    args, kwargs = make(x, w, b, rm, rv)
    with pytest.raises(exc, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        numbaabn.inplace_abn_forward(*args, **kwargs)
    assert_unchanged(snap, x, w, b, rm, rv)


@pytest.mark.parametrize("fmt,nan_channels", [("NCHW", [1]), ("NHWC", [0, 2])])
def test_nan_input_raises_floating_point_error_naming_channels(fmt, nan_channels, rng):
    x, w, b, rm, rv = arrays(rng, shape=(4, 3, 5, 3) if fmt == "NHWC" else (4, 3, 5))
    for c in nan_channels:
        if fmt == "NCHW":
            x[2, c, 3] = np.nan
        else:
            x[1, 2, 0, c] = np.inf if c else np.nan
    snap = snapshot(x, w, b, rm, rv)
    with pytest.raises(FloatingPointError, match=re.escape(f"channels {nan_channels}")):
        numbaabn.inplace_abn_forward(x, w, b, rm, rv, data_format=fmt)
    assert_unchanged(snap, x, w, b, rm, rv)


def test_nan_in_eval_passes_through(rng):
    x, w, b, rm, rv = arrays(rng)
    x[0, 1, 0] = np.nan
    numbaabn.inplace_abn(x, w, b, rm, rv, training=False)
    assert np.isnan(x[0, 1, 0]) and np.isfinite(np.delete(x.ravel(), 5)).all()


def _forward(rng, **kw):
    x, w, b, rm, rv = arrays(rng)
    y, saved = numbaabn.inplace_abn_forward(x, w, b, rm, rv, **kw)
    return y, saved


BACKWARD_CASES = [
    ("no forward", RuntimeError, "without a forward", lambda dz, saved: (dz, None)),
    ("not a record", TypeError, "record", lambda dz, saved: (dz, {"z": 1})),
    ("shape", ValueError, "dz has shape", lambda dz, saved: (dz[:, :, :4], saved)),
    ("dtype", TypeError, "dz has dtype", lambda dz, saved: (dz.astype(np.float64), saved)),
    ("read-only", ValueError, "read-only", lambda dz, saved: (_ro(dz.view()), saved)),
    ("broadcast dz", ValueError, "share memory",
     lambda dz, saved: (np.lib.stride_tricks.as_strided(dz, dz.shape, (0, 0, 4)), saved)),
    ("device dz", TypeError, "host and device", lambda dz, saved: (FakeDeviceArray(), saved)),
]


@pytest.mark.parametrize("case", BACKWARD_CASES, ids=[c[0] for c in BACKWARD_CASES])
def test_backward_rejects_and_leaves_arrays_unchanged(case, rng):
    _, exc, fragment, make = case
    y, saved = _forward(rng)
    dz = rng.standard_normal(y.shape).astype(np.float32)
    snap = snapshot(y, dz)
    args = make(dz, saved)
    with pytest.raises(exc, match=fragment):
        numbaabn.inplace_abn_backward(*args)
    assert_unchanged(snap, y, dz)


def test_dz_overlapping_z_in_another_layout_raises(rng):
    x = rng.standard_normal((4, 4, 4)).astype(np.float32)
    y, saved = numbaabn.inplace_abn_forward(x, np.ones(4, np.float32), None, None, None)
    snap = snapshot(y)
    with pytest.raises(ValueError, match="overlaps"):
        numbaabn.inplace_abn_backward(y.transpose(0, 2, 1), saved)
    assert_unchanged(snap, y)


def test_dz_that_is_z_itself_works(rng):
    """Aliasing dz with z exactly (same buffer, same layout) is well defined."""
    import reference as ref
    x0 = rng.standard_normal((4, 3, 6))
    x = x0.copy()
    _, saved = numbaabn.inplace_abn_forward(x, activation="elu")
    _, _, _, ctx = ref.forward(x0, activation="elu")
    dz = x.copy()
    dx_ref = ref.backward(dz, ctx)[0]
    dx, _, _ = numbaabn.inplace_abn_backward(x, saved)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-12)


def test_signed_small_weight_backward_raises_naming_channels(rng):
    x, w, b, rm, rv = arrays(rng, C=3)
    w[:] = [1.0, 0.0, 1e-6]
    y, saved = numbaabn.inplace_abn_forward(x, w, b, rm, rv, weight_mode="signed")
    dz = rng.standard_normal(y.shape).astype(np.float32)
    snap = snapshot(y, dz, w, b, rm, rv)
    with pytest.raises(ValueError, match=r"channels \[1, 2\]"):
        numbaabn.inplace_abn_backward(dz, saved)
    assert_unchanged(snap, y, dz, w, b, rm, rv)


def test_module_backward_without_forward(rng):
    layer = numbaabn.InPlaceABN(3)
    with pytest.raises(RuntimeError, match="without a forward"):
        layer.backward(np.ones((2, 3), np.float32))
    x = rng.standard_normal((4, 3)).astype(np.float32)
    layer.backward(np.ones_like(layer(x)))
    with pytest.raises(RuntimeError, match="without a forward"):  # one backward per forward
        layer.backward(np.ones_like(x))


def test_module_constructor_checks():
    with pytest.raises(ValueError, match="not invertible"):
        numbaabn.InPlaceABN(3, activation="relu")
    numbaabn.ABN(3, activation="relu")
    with pytest.raises(ValueError, match="num_features"):
        numbaabn.InPlaceABN(0)
    with pytest.raises(TypeError, match="dtype"):
        numbaabn.InPlaceABN(3, dtype="int32")


def test_module_wrong_input_dtype_leaves_state_unchanged(rng):
    layer = numbaabn.InPlaceABN(3)  # float32 parameters
    x = rng.standard_normal((4, 3, 2))  # float64
    snap = snapshot(x, layer.running_mean, layer.running_var)
    with pytest.raises(TypeError, match="float32"):
        layer(x)
    assert_unchanged(snap, x, layer.running_mean, layer.running_var)
