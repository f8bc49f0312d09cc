"""Finite differences in float64: dx, dweight, dbias of L = Σ r · z for a fixed r."""
import numpy as np
import pytest

import numbaabn


def loss(x, w, b, act, weight_mode, cl, training, rm, rv):
    z = x.copy()
    numbaabn.inplace_abn(z, w, b, None if rm is None else rm.copy(),
                         None if rv is None else rv.copy(), training=training,
                         activation=act, weight_mode=weight_mode,
                         data_format="NHWC" if cl else "NCHW")
    return z


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("cl", [False, True])
@pytest.mark.parametrize("weight_mode", ["abs", "signed"])
@pytest.mark.parametrize("act", ["identity", "leaky_relu", "elu"])
def test_finite_differences(act, weight_mode, cl, training, rng):
    shape = (3, 4, 5, 3) if cl else (3, 3, 4, 5)
    C = 3
    x = rng.standard_normal(shape) * 1.3 + 0.4
    w = np.array([0.8, -1.2, 1.7])
    b = rng.standard_normal(C)
    rm, rv = rng.standard_normal(C), rng.random(C) + 0.5
    r = rng.standard_normal(shape)
    args = (act, weight_mode, cl, training, rm, rv)

    z = x.copy()
    _, saved = numbaabn.inplace_abn_forward(z, w, b, rm.copy(), rv.copy(), training=training,
                                            activation=act, weight_mode=weight_mode,
                                            data_format="NHWC" if cl else "NCHW")
    dx, dw, db = numbaabn.inplace_abn_backward(r.copy(), saved)

    h = 1e-6

    def fd(f, v):
        g = np.zeros_like(v)
        for i in np.ndindex(v.shape):
            vp, vm = v.copy(), v.copy()
            vp[i] += h
            vm[i] -= h
            g[i] = (np.sum(r * f(vp)) - np.sum(r * f(vm))) / (2 * h)
        return g

    gx = fd(lambda v: loss(v, w, b, *args), x)
    gw = fd(lambda v: loss(x, v, b, *args), w)
    gb = fd(lambda v: loss(x, w, v, *args), b)
    np.testing.assert_allclose(dx, gx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dw, gw, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(db, gb, rtol=1e-5, atol=1e-6)
