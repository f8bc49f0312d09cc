"""Inference: fused eval layers, BN folding, importers."""
import os
import subprocess
import sys

import numpy as np
import pytest

import numbaabn
import reference as ref


def trained(cls, C, dtype, act, fmt, rng, weight_mode="abs"):
    layer = cls(C, activation=act, data_format=fmt, weight_mode=weight_mode,
                dtype="float64" if dtype == np.float64 else "float32")
    layer.weight[:] = rng.standard_normal(C) * 1.5
    layer.bias[:] = rng.standard_normal(C)
    layer.running_mean[:] = rng.standard_normal(C) * 3
    layer.running_var[:] = rng.random(C) + 0.2
    return layer.eval()


@pytest.mark.parametrize("offset", ["moderate", "large"])
@pytest.mark.parametrize("fmt", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("cls,act", [(numbaabn.InPlaceABN, "leaky_relu"),
                                     (numbaabn.InPlaceABN, "elu"), (numbaabn.ABN, "relu")])
def test_fused_matches_unfused_eval(cls, act, dtype, fmt, offset, rng):
    """Moderate offsets: the two-constant form act(x * scale + shift), within a few ulps
    of the output's scale; large offsets: the centred form. Both bit for bit the unfused
    eval path (the same coefficients) and against the float64 reference."""
    C = 6
    layer = trained(cls, C, dtype, act, fmt, rng)
    if offset == "moderate":
        layer.running_mean[:] = rng.standard_normal(C)
    else:
        layer.running_mean[:] = 1e3 + rng.standard_normal(C)  # 1e3 / std >> 8
    fused = layer.fuse()
    assert fused.two_constant == (offset == "moderate")
    for N in (1, 5):  # eval needs no batch statistics: N = 1 works
        shape = (N, C, 4, 3) if fmt == "NCHW" else (N, 4, 3, C)
        x0 = (rng.standard_normal(shape) * 2 + layer.running_mean.astype(np.float64).reshape(
            (C, 1, 1) if fmt == "NCHW" else (C,))).astype(dtype)
        unfused = layer(x0.copy())
        x = x0.copy()
        assert fused(x) is x
        z = ref.forward(x0, layer.weight, layer.bias, layer.running_mean, layer.running_var,
                        training=False, activation=act, channels_last=fmt == "NHWC")[0]
        np.testing.assert_array_equal(x, unfused)
        if fused.two_constant:  # extra rounding about ulp(mean * scale) <= 16 ulps of scale
            tol = {np.float64: 1e-14, np.float32: 4e-6, np.float16: 2e-3}[dtype]
        else:
            tol = {np.float64: 1e-12, np.float32: 2e-6, np.float16: 2e-3}[dtype]
        assert np.abs(x.astype(np.float64) - z).max() <= tol * np.abs(z).max()
    np.testing.assert_allclose(fused.scale, (np.abs(layer.weight.astype(np.float64)) + 1e-5)
                               / np.sqrt(layer.running_var.astype(np.float64) + 1e-5),
                               rtol=1e-12)


def test_fused_two_constant_error_bound(rng):
    """At the limit |mean * scale| = 8 (|s| + |b|), float32, many values: the two-constant
    form stays within 20 ulps of |s| + |b| of the float64 result."""
    C = 64
    layer = numbaabn.InPlaceABN(C, activation="identity", dtype="float32")
    layer.weight[:] = rng.uniform(0.5, 2, C)
    layer.bias[:] = rng.standard_normal(C)
    layer.running_var[:] = rng.uniform(0.5, 2, C)
    s = np.abs(layer.weight.astype(np.float64)) + 1e-5
    g = s / np.sqrt(layer.running_var.astype(np.float64) + 1e-5)
    layer.running_mean[:] = 8 * (s + np.abs(layer.bias)) / g * 0.999
    layer.eval()
    fused = layer.fuse()
    assert fused.two_constant
    x0 = (rng.standard_normal((512, C)) * np.sqrt(layer.running_var)
          + layer.running_mean).astype(np.float32)
    x = x0.copy()
    fused(x)
    z = (x0.astype(np.float64) - layer.running_mean) * g + layer.bias
    err = np.abs(x - z) / (s + np.abs(layer.bias))
    assert err.max() <= 20 * 2.0 ** -24, err.max() / 2.0 ** -24
def test_fused_rejects_bad_input_without_writing(rng):
    fused = trained(numbaabn.InPlaceABN, 4, np.float32, "leaky_relu", "NCHW", rng).fuse()
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    x0 = x.copy()
    with pytest.raises(ValueError, match="4 channels"):
        fused(x)
    np.testing.assert_array_equal(x, x0)
    with pytest.raises(TypeError):
        fused(x.astype(np.int32))


@pytest.mark.parametrize("weight_mode", ["abs", "signed"])
def test_fold_dense_and_conv(weight_mode, rng):
    C_in, C_out = 5, 4
    bn = trained(numbaabn.ABN, C_out, np.float64, "leaky_relu", "NC", rng, weight_mode)
    x = rng.standard_normal((7, C_in))
    # NumPy dense y = x @ W, output channels on the last axis
    W, b = rng.standard_normal((C_in, C_out)), rng.standard_normal(C_out)
    W2, b2, act, param = numbaabn.fold(W, b, bn, axis=-1)
    expected = bn(x @ W + b)
    y = x @ W2 + b2
    got = np.where(y >= 0, y, 0.01 * y)
    assert act == "leaky_relu"
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    # PyTorch-style (C_out, C_in) weight, output channels on axis 0, no bias
    Wt = rng.standard_normal((C_out, C_in))
    W2, b2, _, _ = numbaabn.fold(Wt, None, bn, axis=0)
    y = x @ W2.T + b2
    np.testing.assert_allclose(np.where(y >= 0, y, 0.01 * y), bn(x @ Wt.T),
                               rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="output channels"):
        numbaabn.fold(Wt, None, bn, axis=1)


def test_mapillary_importer_matches_its_formula(rng):
    """mapillary's eval: leaky_relu((x - rm)/sqrt(rv + eps) * (|w| + eps) + b)."""
    C = 3
    state = {"weight": rng.standard_normal(C).astype(np.float32),
             "bias": rng.standard_normal(C).astype(np.float32),
             "running_mean": rng.standard_normal(C).astype(np.float32),
             "running_var": (rng.random(C) + 0.5).astype(np.float32)}
    layer = numbaabn.from_inplace_abn_state_dict({"bn." + k: v for k, v in state.items()},
                                                 prefix="bn.")
    assert layer.weight_mode == "abs" and layer.momentum == pytest.approx(0.9)
    x0 = rng.standard_normal((4, C, 5)).astype(np.float32)
    s = (np.abs(state["weight"].astype(np.float64)) + 1e-5)[None, :, None]
    y = ((x0 - state["running_mean"][None, :, None])
         / np.sqrt(state["running_var"][None, :, None].astype(np.float64) + 1e-5) * s
         + state["bias"][None, :, None])
    expected = np.where(y >= 0, y, 0.01 * y)
    np.testing.assert_allclose(layer(x0.copy()), expected, rtol=2e-6, atol=2e-6)


def test_torch_importer_matches_torch_eval(rng):
    torch = pytest.importorskip("torch")
    C = 5
    bn = torch.nn.BatchNorm2d(C, momentum=0.2)
    with torch.no_grad():
        bn.weight.copy_(torch.randn(C))
        bn.weight[0] = 0.0  # exact BN: a zero weight is fine
        bn.bias.copy_(torch.randn(C))
    bn.train()
    for _ in range(3):
        bn(torch.randn(4, C, 3, 3) * 2 + 1)  # real running statistics
    bn.eval()
    layer = numbaabn.from_torch_state_dict(bn.state_dict(), momentum=0.2,
                                           activation="leaky_relu")
    assert layer.num_batches_tracked == 3 and layer.momentum == pytest.approx(0.8)
    x0 = rng.standard_normal((2, C, 4, 4)).astype(np.float32)
    with torch.no_grad():
        expected = torch.nn.functional.leaky_relu(bn(torch.from_numpy(x0)), 0.01).numpy()
    np.testing.assert_allclose(layer(x0.copy()), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.fuse()(x0.copy()), expected, rtol=1e-5, atol=1e-6)


def test_paddle_importer(rng):
    C = 4
    state = {"weight": rng.standard_normal(C).astype(np.float32),
             "bias": rng.standard_normal(C).astype(np.float32),
             "_mean": rng.standard_normal(C).astype(np.float32),
             "_variance": (rng.random(C) + 0.5).astype(np.float32)}
    layer = numbaabn.from_paddle_state_dict(state, act="relu")
    x0 = rng.standard_normal((3, C, 2)).astype(np.float32)
    z = ref.forward(x0, state["weight"], state["bias"], state["_mean"], state["_variance"],
                    training=False, activation="relu", weight_mode="signed")[0]
    np.testing.assert_allclose(layer(x0.copy()), z, rtol=2e-6, atol=2e-6)
    try:
        import paddle
    except ImportError:
        return  # the comparison with Paddle itself needs paddle installed
    pbn = paddle.nn.BatchNorm(C, act="relu", is_test=True)
    pbn.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
    np.testing.assert_allclose(layer(x0.copy()), pbn(paddle.to_tensor(x0)).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_mapillary_package_when_installed(rng):
    inplace_abn = pytest.importorskip("inplace_abn")
    torch = pytest.importorskip("torch")
    m = inplace_abn.ABN(4)
    m.eval()
    layer = numbaabn.from_inplace_abn_state_dict(m.state_dict())
    x0 = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    with torch.no_grad():
        expected = m(torch.from_numpy(x0)).numpy()
    np.testing.assert_allclose(layer(x0.copy()), expected, rtol=1e-5, atol=1e-6)


def test_cpu_inference_example(tmp_path):
    example = os.path.join(os.path.dirname(__file__), "..", "examples", "cpu_inference.py")
    p = subprocess.run([sys.executable, example, "--dir", str(tmp_path)], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "fused inference matches" in p.stdout
