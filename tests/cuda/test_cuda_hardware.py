"""CUDA kernels at real launch shapes (hardware only; the simulator is too slow for them).

The simulator suite (test_cuda_parity.py) crosses block and grid boundaries with tiny
arrays and tiny blocks; here the default THREADS, TILE and MAX_BLOCKS run on arrays large
enough to need many blocks, several reduction chunks, grid-stride loops over more than
MAX_BLOCKS * THREADS elements, channel counts that are not multiples of a tile, and
channel rows that do not line up with blocks. Also: zero-copy on CuPy arrays and PyTorch
CUDA tensors, where installed.
"""
import os

import numpy as np
import pytest
from numba import cuda

import numbaabn
import reference as ref
from conftest_shared import assert_close, assert_f16_forward, assert_sums_close

pytestmark = pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM") == "1",
                                reason="real launch shapes: hardware only")

CASES = [  # (shape, data_format)
    ((6, 70, 37, 41), "NCHW"),      # 637k elements, rows of 1517 (not a block multiple)
    ((9, 3, 300, 500), "NCHW"),     # 4.05M > MAX_BLOCKS * THREADS: grid-stride
    ((2, 5, 12, 7, 9), "NCHW"),     # rank 5, short rows: a block spans several images
    ((7, 13, 11, 300), "NHWC"),     # 300 channels: tiles of 32 with a partial last tile
    ((100003, 5), "NC"),            # many rows, few channels
    ((3, 5000), "NC"),              # few rows, many channels
    ((64, 17, 17, 2049), "NHWC"),   # 38M elements
]


@pytest.mark.parametrize("shape,fmt", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_large_shapes_against_reference(shape, fmt, dtype):
    rng = np.random.default_rng(sum(shape))
    C = shape[-1] if fmt == "NHWC" else shape[1]
    x0 = (rng.standard_normal(shape, dtype=np.float32) * 3 + 50).astype(dtype)  # offset
    dz0 = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
    w = rng.uniform(-2, 2, C)
    w = np.where(np.abs(w) < 0.2, -0.7, w).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    if dtype != np.float16:  # a zero weight: scale eps; b = 0 keeps x̂ = (y - b)/eps exact
        w[0] = b[0] = 0.0    # (README: the in-place accuracy limit; float16 y is subnormal)
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
    xd, dzd = cuda.to_device(x0), cuda.to_device(dz0)
    rmd, rvd = cuda.to_device(rm), cuda.to_device(rv)
    y, saved = numbaabn.inplace_abn_forward(xd, cuda.to_device(w), cuda.to_device(b), rmd, rvd,
                                            training=True, activation="leaky_relu",
                                            data_format=fmt)
    assert y is xd
    z, rm_ref, rv_ref, ctx = ref.forward(x0, w, b, rm, rv, training=True,
                                         activation="leaky_relu", channels_last=fmt == "NHWC")
    if dtype == np.float16:
        assert_f16_forward(y.copy_to_host(), z)
    else:
        assert_close(y.copy_to_host(), z, dtype, "forward")
    np.testing.assert_allclose(rmd.copy_to_host(), rm_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(rvd.copy_to_host(), rv_ref, rtol=1e-5, atol=1e-6)
    dx, dw, db = numbaabn.inplace_abn_backward(dzd, saved)
    assert dx is dzd
    dx_ref, dw_ref, db_ref = ref.backward(dz0, ctx)
    assert_close(dx.copy_to_host(), dx_ref, dtype, "dx", ctx["dx_scale"])
    assert_sums_close(dw.copy_to_host(), dw_ref, ctx["abs_sums"][1], dtype, "dweight",
                      ctx["f16_slack"][1])
    assert_sums_close(db.copy_to_host(), db_ref, ctx["abs_sums"][0], dtype, "dbias",
                      ctx["f16_slack"][0])


@pytest.mark.parametrize("fmt", ["NCHW", "NHWC"])
def test_eval_matches_host(fmt):
    """Forward-eval on the device gives the CPU kernels' float32 result to rounding."""
    rng = np.random.default_rng(7)
    shape = (5, 33, 19, 23) if fmt == "NCHW" else (5, 19, 23, 33)
    x0 = rng.standard_normal(shape, dtype=np.float32)
    p = [rng.standard_normal(33).astype(np.float32) for _ in range(3)]
    rv = (rng.random(33) + 0.5).astype(np.float32)
    xh = x0.copy()
    numbaabn.inplace_abn_forward(xh, p[0], p[1], p[2], rv.copy(), training=False,
                                 activation="elu", data_format=fmt)
    xd = cuda.to_device(x0)
    numbaabn.inplace_abn_forward(xd, *[cuda.to_device(q) for q in p], cuda.to_device(rv),
                                 training=False, activation="elu", data_format=fmt)
    np.testing.assert_allclose(xd.copy_to_host(), xh, rtol=2e-6, atol=2e-6)


def test_cupy_arrays_zero_copy():
    cp = pytest.importorskip("cupy")
    rng = np.random.default_rng(3)
    x0 = rng.standard_normal((4, 8, 10, 10), dtype=np.float32)
    x = cp.asarray(x0)
    y, saved = numbaabn.inplace_abn_forward(x, activation="leaky_relu")
    assert y is x
    z, _, _, ctx = ref.forward(x0, np.ones(8), np.zeros(8), activation="leaky_relu")
    assert_close(cp.asnumpy(x), z, np.float32)
    dz0 = rng.standard_normal(x0.shape, dtype=np.float32)
    dz = cp.asarray(dz0)
    dx, _, _ = numbaabn.inplace_abn_backward(dz, saved)
    assert dx is dz
    assert_close(cp.asnumpy(dz), ref.backward(dz0, ctx)[0], np.float32, scale=ctx["dx_scale"])


def test_torch_cuda_tensors_zero_copy():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    rng = np.random.default_rng(4)
    x0 = rng.standard_normal((4, 6, 6, 8), dtype=np.float32)
    x = torch.from_numpy(x0).cuda()
    ptr = x.data_ptr()
    layer = numbaabn.InPlaceABN(8, activation="elu", data_format="NHWC")
    assert layer(x) is x and x.data_ptr() == ptr
    z = ref.forward(x0, np.ones(8), np.zeros(8), activation="elu", channels_last=True)[0]
    assert_close(x.cpu().numpy(), z, np.float32)
    with pytest.raises(ValueError, match="C-contiguous"):
        numbaabn.inplace_abn_forward(torch.from_numpy(x0).cuda().permute(0, 3, 1, 2))
