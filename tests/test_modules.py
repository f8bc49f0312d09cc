"""Module API: modes, state dicts, Paddle facades, conversion to synchronized twins."""
import numpy as np
import pytest

import numbaabn
import reference as ref
from conftest import assert_close


def test_momentum_convention_is_paddles(rng):
    """running = momentum * running + (1 - momentum) * batch (mapillary's docstring and
    code disagreed on which side momentum weighs; this pins it)."""
    layer = numbaabn.InPlaceABN(2, dtype="float64", momentum=0.9)
    x = rng.standard_normal((50, 2)) * [2.0, 0.5] + [1.0, -3.0]
    mean, var = x.mean(0), x.var(0)
    layer(x.copy())
    np.testing.assert_allclose(layer.running_mean, 0.1 * mean, rtol=1e-12)
    np.testing.assert_allclose(layer.running_var, 0.9 + 0.1 * var, rtol=1e-12)  # biased var


def test_eval_uses_running_stats_and_updates_nothing(rng):
    layer = numbaabn.InPlaceABN(3, dtype="float64").eval()
    layer.running_mean[:] = [1, 2, 3]
    layer.running_var[:] = [4, 5, 6]
    x0 = rng.standard_normal((4, 3, 2))
    x = x0.copy()
    layer(x)
    z, _, _, _ = ref.forward(x0, layer.weight, layer.bias, [1, 2, 3], [4, 5, 6], training=False)
    assert_close(x, z, np.float64)
    np.testing.assert_array_equal(layer.running_mean, [1, 2, 3])


def test_trainable_statistics_in_eval_uses_batch_stats_and_updates(rng):
    layer = numbaabn.InPlaceABN(3, dtype="float64", trainable_statistics=True).eval()
    x0 = rng.standard_normal((6, 3, 4)) + 5
    x = x0.copy()
    layer(x)
    z, rm, rv, ctx = ref.forward(x0, np.ones(3), np.zeros(3), np.zeros(3), np.ones(3))
    assert_close(x, z, np.float64)
    np.testing.assert_allclose(layer.running_mean, rm, rtol=1e-12)
    dz = rng.standard_normal(x.shape)
    dx = layer.backward(dz.copy())
    assert_close(dx, ref.backward(dz, ctx)[0], np.float64, scale=ctx["dx_scale"])  # true gradient


def test_state_dict_round_trip_and_validation(rng):
    a = numbaabn.InPlaceABN(4)
    a.weight[:] = rng.standard_normal(4)
    a.running_var[:] = 3.0
    d = a.state_dict()
    assert set(d) == {"weight", "bias", "running_mean", "running_var"}
    d["weight"][0] = 99.0  # a copy, not a view
    assert a.weight[0] != 99.0
    b = numbaabn.InPlaceABN(4)
    w_id = id(b.weight)
    b.load_state_dict(a.state_dict())
    assert id(b.weight) == w_id and np.array_equal(b.weight, a.weight)
    before = b.state_dict()
    bad = a.state_dict()
    bad["running_var"] = np.ones(5)
    with pytest.raises(ValueError, match="running_var"):
        b.load_state_dict(bad)
    with pytest.raises(KeyError, match="missing"):
        b.load_state_dict({"weight": np.ones(4)})
    for k, v in before.items():  # nothing was copied by the failed loads
        np.testing.assert_array_equal(b.state_dict()[k], v)
    nb = numbaabn.InPlaceABN(4, affine=False)
    assert set(nb.state_dict()) == {"running_mean", "running_var"}
    assert nb.weight is None and nb.weight_grad is None


def test_grads_accumulate_and_zero_grad(rng):
    layer = numbaabn.InPlaceABN(3, dtype="float64")
    x0 = rng.standard_normal((5, 3))
    dz = rng.standard_normal((5, 3))
    layer.backward(dz.copy()) if False else None
    layer(x0.copy())
    layer.backward(dz.copy())
    g1 = layer.weight_grad.copy()
    layer(x0.copy())
    layer.backward(dz.copy())
    np.testing.assert_allclose(layer.weight_grad, 2 * g1, rtol=1e-12)
    layer.zero_grad()
    assert not layer.weight_grad.any() and not layer.bias_grad.any()


@pytest.mark.parametrize("in_place,act", [(True, "leaky_relu"), (False, "leaky_relu"),
                                          (True, "relu"), (False, None)])
def test_paddle_batchnorm_facade(in_place, act, rng):
    layer = numbaabn.BatchNorm(4, act=act, in_place=in_place, dtype="float64")
    layer.weight[:] = [1.0, -2.0, 0.5, 0.0] if not (in_place and act != "relu") else [1, -2, .5, 3]
    x0 = rng.standard_normal((3, 4, 5))
    x = x0.copy()
    y = layer(x)
    runs_in_place = in_place and act != "relu"
    assert (y is x) == runs_in_place
    if not runs_in_place:
        np.testing.assert_array_equal(x, x0)
    z, rm, rv, ctx = ref.forward(x0, layer.weight, layer.bias, np.zeros(4), np.ones(4),
                                 activation=act, weight_mode="signed")
    assert_close(y, z, np.float64)
    np.testing.assert_allclose(layer._mean, rm, rtol=1e-12)
    np.testing.assert_allclose(layer._variance, rv, rtol=1e-12)
    assert set(layer.state_dict()) == {"weight", "bias", "_mean", "_variance"}
    dz = rng.standard_normal(x0.shape)
    dx = layer.backward(dz.copy())
    dx_ref, dw_ref, db_ref = ref.backward(dz, ctx)
    assert_close(dx, dx_ref, np.float64, scale=ctx["dx_scale"])
    np.testing.assert_allclose(layer.weight_grad, dw_ref, rtol=1e-10, atol=1e-12)


def test_paddle_is_test_and_use_global_stats(rng):
    layer = numbaabn.BatchNorm(2, is_test=True, dtype="float64")
    x0 = rng.standard_normal((4, 2))
    y = layer(x0.copy())
    assert_close(y, ref.forward(x0, np.ones(2), np.zeros(2), np.zeros(2), np.ones(2),
                                training=False, activation=None, weight_mode="signed")[0],
                 np.float64)
    np.testing.assert_array_equal(layer.running_mean, 0)
    g = numbaabn.BatchNorm(2, use_global_stats=True, dtype="float64")
    g.running_mean[:] = [1, -1]
    y = g(x0.copy())
    z, rm, _, ctx = ref.forward(x0, np.ones(2), np.zeros(2), [1, -1], np.ones(2), training=True,
                                use_global_stats=True, activation=None, weight_mode="signed")
    assert_close(y, z, np.float64)
    np.testing.assert_array_equal(g.running_mean, [1, -1])
    dz = rng.standard_normal(x0.shape)
    assert_close(g.backward(dz.copy()), ref.backward(dz, ctx)[0], np.float64)


def test_sync_batchnorm_local_and_options(rng):
    layer = numbaabn.SyncBatchNorm(3, weight_attr=False, bias_attr=False,
                                   track_running_stats=False)
    assert layer.weight is None and layer.bias is None and layer.running_mean is None
    x0 = rng.standard_normal((6, 3, 2)).astype(np.float32)
    y = layer(x0.copy())
    assert_close(y, ref.forward(x0, None, None, activation=None)[0], np.float32)
    layer.eval()  # no running stats: batch statistics in eval too
    assert_close(layer(x0.copy()), ref.forward(x0, None, None, activation=None)[0], np.float32)


def test_convert_sync_batchnorm_shares_state():
    class Net:
        def __init__(self):
            self.blocks = [numbaabn.InPlaceABN(3), (numbaabn.BatchNorm(4), "not a layer")]
            self.head = {"bn": numbaabn.ABN(2)}
            self.other = 5
    net = Net()
    old = net.blocks[0]
    comm = object()
    out = numbaabn.convert_sync_batchnorm(net, comm)
    assert out is net
    new = net.blocks[0]
    assert new is not old and type(new) is type(old) and new.comm is comm
    assert new.weight is old.weight and new.running_var is old.running_var
    assert net.blocks[1][0].comm is comm and net.blocks[1][1] == "not a layer"
    assert net.head["bn"].comm is comm and net.other == 5
    single = numbaabn.convert_sync_batchnorm(numbaabn.InPlaceABN(2), comm)
    assert single.comm is comm


def test_repr_and_modes():
    layer = numbaabn.InPlaceABN(3)
    assert "InPlaceABN(3" in repr(layer)
    assert layer.eval() is layer and not layer.training
    assert layer.train() is layer and layer.training
