"""CUDA kernels against the float64 reference (simulator or hardware)."""
import numpy as np
import pytest
from numba import cuda

import numbaabn
import reference as ref
from conftest_shared import assert_close, assert_f16_forward, assert_sums_close

SHAPES = {"NCHW": (3, 4, 5, 2), "NHWC": (3, 5, 2, 4), "NC": (7, 4)}


def host(a):
    return a.copy_to_host()


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("fmt", ["NCHW", "NHWC", "NC"])
@pytest.mark.parametrize("act", ["identity", "leaky_relu", "elu"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_functional_parity_on_device(dtype, act, fmt, mode, rng):
    shape, C = SHAPES[fmt], 4
    pd = np.float64 if dtype == np.float64 else np.float32
    x0 = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    dz0 = rng.standard_normal(shape).astype(dtype)
    w = np.array([0.7, -1.3, 2.0, -0.4], pd)
    b = rng.standard_normal(C).astype(pd)
    rm, rv = rng.standard_normal(C).astype(pd), (rng.random(C) + 0.5).astype(pd)
    xd, dzd = cuda.to_device(x0), cuda.to_device(dz0)
    rmd, rvd = cuda.to_device(rm), cuda.to_device(rv)
    training = mode == "train"
    y, saved = numbaabn.inplace_abn_forward(xd, cuda.to_device(w), cuda.to_device(b), rmd, rvd,
                                            training=training, activation=act, data_format=fmt)
    assert y is xd
    z, rm_ref, rv_ref, ctx = ref.forward(x0, w, b, rm, rv, training=training, activation=act,
                                         channels_last=fmt == "NHWC")
    if dtype == np.float16:
        assert_f16_forward(host(y), z)
    else:
        assert_close(host(y), z, dtype, "forward")
    np.testing.assert_allclose(host(rmd), rm_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(host(rvd), rv_ref, rtol=1e-6, atol=1e-6)
    dx, dw, db = numbaabn.inplace_abn_backward(dzd, saved)
    assert dx is dzd
    dx_ref, dw_ref, db_ref = ref.backward(dz0, ctx)
    assert_close(host(dx), dx_ref, dtype, "dx", ctx["dx_scale"])
    assert_sums_close(host(dw), dw_ref, ctx["abs_sums"][1], dtype, "dweight", ctx["f16_slack"][1])
    assert_sums_close(host(db), db_ref, ctx["abs_sums"][0], dtype, "dbias", ctx["f16_slack"][0])


@pytest.mark.parametrize("act", ["relu", "leaky_relu"])
def test_standard_path_and_modules_on_device(act, rng):
    """Layers keep NumPy state and accept device inputs; ABN keeps its input."""
    x0 = rng.standard_normal((4, 3, 6)).astype(np.float32)
    dz0 = rng.standard_normal(x0.shape).astype(np.float32)
    layer = numbaabn.ABN(3, activation=act)
    layer.weight[:] = [1.5, 0.0, -1.0]
    xd = cuda.to_device(x0)
    y = layer(xd)
    np.testing.assert_array_equal(host(xd), x0)  # input kept
    z, rm_ref, _, ctx = ref.forward(x0, layer.weight.copy(), layer.bias, np.zeros(3),
                                    np.ones(3), activation=act)
    assert_close(host(y), z, np.float32)
    np.testing.assert_allclose(layer.running_mean, rm_ref, rtol=1e-6, atol=1e-7)
    dx = layer.backward(cuda.to_device(dz0))
    dx_ref, dw_ref, _ = ref.backward(dz0, ctx)
    assert_close(host(dx), dx_ref, np.float32, scale=ctx["dx_scale"])
    assert isinstance(layer.weight_grad, np.ndarray)
    assert_sums_close(layer.weight_grad, dw_ref, ctx["abs_sums"][1], np.float32)
    assert set(layer.state_dict()) == {"weight", "bias", "running_mean", "running_var"}


def test_inplace_module_on_device(rng):
    layer = numbaabn.InPlaceABN(4, activation="elu", data_format="NHWC")
    x0 = rng.standard_normal((2, 3, 4)).astype(np.float32)
    xd = cuda.to_device(x0)
    assert layer(xd) is xd
    z = ref.forward(x0, np.ones(4), np.zeros(4), activation="elu", channels_last=True)[0]
    assert_close(host(xd), z, np.float32)


def test_device_errors_leave_arrays_unchanged(rng):
    x0 = rng.standard_normal((4, 3, 5)).astype(np.float32)
    xd = cuda.to_device(x0)
    with pytest.raises(TypeError, match="host and device"):
        numbaabn.inplace_abn_forward(xd, np.ones(3, np.float32))
    x0[1, 2, 3] = np.nan
    xd = cuda.to_device(x0)
    with pytest.raises(FloatingPointError, match=r"channels \[2\]"):
        numbaabn.inplace_abn_forward(xd)
    np.testing.assert_array_equal(host(xd), x0)
    with pytest.raises(ValueError, match="expected more than 1 value"):
        numbaabn.inplace_abn_forward(cuda.to_device(x0[:1, :, :1].copy()))
    y, saved = numbaabn.inplace_abn_forward(cuda.to_device(np.ones((2, 3), np.float32) * [[1], [2]]))
    with pytest.raises(TypeError, match="host and device"):
        numbaabn.inplace_abn_backward(np.ones((2, 3), np.float32), saved)


def test_stream_argument(rng):
    """Kernels and copies queued on a user stream give the same results."""
    x0 = rng.standard_normal((3, 4, 6)).astype(np.float32)
    dz0 = rng.standard_normal(x0.shape).astype(np.float32)
    stream = cuda.stream()
    a, b = cuda.to_device(x0, stream=stream), cuda.to_device(x0)
    ya, saved_a = numbaabn.inplace_abn_forward(a, activation="elu", stream=stream)
    yb, saved_b = numbaabn.inplace_abn_forward(b, activation="elu")
    da, _, _ = numbaabn.inplace_abn_backward(cuda.to_device(dz0, stream=stream), saved_a)
    db, _, _ = numbaabn.inplace_abn_backward(cuda.to_device(dz0), saved_b)
    stream.synchronize()
    np.testing.assert_array_equal(ya.copy_to_host(), yb.copy_to_host())
    np.testing.assert_array_equal(da.copy_to_host(), db.copy_to_host())


def test_buffers_reused_per_stream_and_bounded():
    """Small work buffers are reused per (thread, stream) and the cache is bounded."""
    from numbaabn import cuda as ncuda
    s1, s2 = cuda.stream(), cuda.stream()
    a = ncuda._buffer(s1, "t", (3, 2), np.float64)
    assert ncuda._buffer(s1, "t", (3, 2), np.float64) is a
    assert ncuda._buffer(s2, "t", (3, 2), np.float64) is not a   # another stream
    assert ncuda._buffer(s1, "t", (3, 2), np.float32) is not a   # another dtype
    for k in range(ncuda._BUFFERS_PER_STREAM):
        ncuda._buffer(s1, "t", (k + 4,), np.float64)
    assert ncuda._buffer(s1, "t", (3, 2), np.float64) is not a   # evicted
    assert len(ncuda._buffers(s1)) <= ncuda._BUFFERS_PER_STREAM
    # a reused coefficient buffer carries each call's values
    x0 = np.random.default_rng(5).standard_normal((6, 3, 4)).astype(np.float32)
    for shift in (0.0, 10.0):
        xd = cuda.to_device(x0 + np.float32(shift))
        numbaabn.inplace_abn_forward(xd, activation="identity")
        z = ref.forward(x0 + shift, np.ones(3), np.zeros(3), activation="identity")[0]
        assert_close(xd.copy_to_host(), z, np.float32)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_host_device_copies(dtype, rng):
    """The driver-level copies (copy_from_host, _to_host, copy) move every byte, on the
    default stream and on a user stream, and fall back to the arrays' own methods for a
    strided device view or a host array of another dtype (which refuse it, as before)."""
    from numbaabn import cuda as ncuda
    h = rng.standard_normal((5, 7)).astype(dtype)
    for stream in (None, cuda.stream()):
        d1 = cuda.device_array(7, dtype)  # 1-D, as the parameters and coefficients' rows
        ncuda.copy_from_host(d1, h[2], stream)
        np.testing.assert_array_equal(ncuda._to_host(d1, stream), h[2])
        d = cuda.device_array(h.shape, dtype)
        ncuda.copy_from_host(d, h, stream)
        back = ncuda._to_host(d, stream)
        np.testing.assert_array_equal(back, h)
        pinned = cuda.pinned_array(h.shape, dtype)
        assert ncuda._to_host(d, stream, pinned) is pinned
        np.testing.assert_array_equal(pinned, h)
        c = ncuda.copy(d, stream)
        if stream is not None:
            stream.synchronize()
        np.testing.assert_array_equal(c.copy_to_host(), h)
        ncuda.copy_from_host(d, h.T.copy().T, stream)  # an F-ordered host array
        np.testing.assert_array_equal(ncuda._to_host(d, stream), h)
    d = cuda.to_device(h)
    np.testing.assert_array_equal(ncuda.to_host(d[:, ::2]), h[:, ::2])  # strided view
    other = np.float32 if dtype == np.float64 else np.float64
    with pytest.raises(TypeError):  # never reinterpreted as the device array's dtype
        ncuda.copy_from_host(cuda.device_array(7, other), h[0])
    g = ncuda.from_host(h[1])
    np.testing.assert_array_equal(g.copy_to_host(), h[1])
    empty = cuda.device_array((0, 3), dtype)
    ncuda.copy_from_host(empty, np.zeros((0, 3), dtype))
    assert ncuda._to_host(empty, None).shape == (0, 3)
