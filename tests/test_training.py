"""A small NumPy MLP trained with InPlaceABN and with ABN: same loss curve."""
import numpy as np
import pytest

import numbaabn


def train(cls, steps=40, dtype=np.float64, fmt="NC", seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((128, 10)).astype(dtype)
    Y = np.tanh(X @ rng.standard_normal((10, 3))).astype(dtype)
    sizes = [10, 32, 32, 3]
    Ws = [(rng.standard_normal((a, b)) / np.sqrt(a)).astype(dtype)
          for a, b in zip(sizes[:-1], sizes[1:])]
    bs = [np.zeros(b, dtype) for b in sizes[1:]]
    dt = "float64" if dtype == np.float64 else "float32"
    bns = [cls(n, activation="leaky_relu", activation_param=0.1, dtype=dt, data_format=fmt)
           for n in sizes[1:-1]]
    lr, losses = 0.1, []
    for _ in range(steps):
        acts = [X]
        h = X
        for i, bn in enumerate(bns):
            h = h @ Ws[i] + bs[i]
            h = bn(h)  # InPlaceABN: overwrites h; ABN: a new array
            acts.append(h)
        out = h @ Ws[-1] + bs[-1]
        losses.append(float(np.mean((out - Y) ** 2)))
        d = (2.0 / out.size) * (out - Y)
        grads = []
        for i in range(len(Ws) - 1, -1, -1):
            grads.append((acts[i].T @ d, d.sum(0)))
            if i > 0:
                d = bns[i - 1].backward(d @ Ws[i].T)
        for i, (gW, gb) in enumerate(reversed(grads)):
            Ws[i] -= lr * gW
            bs[i] -= lr * gb
        for bn in bns:
            bn.weight -= lr * bn.weight_grad
            bn.bias -= lr * bn.bias_grad
            bn.zero_grad()
    return np.array(losses), bns


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-9), (np.float32, 1e-4)])
def test_inplace_and_standard_train_identically(dtype, rtol):
    a, bn_a = train(numbaabn.InPlaceABN, dtype=dtype)
    b, bn_b = train(numbaabn.ABN, dtype=dtype)
    np.testing.assert_allclose(a, b, rtol=rtol)
    assert a[-1] < 0.3 * a[0], "loss did not fall"
    for la, lb in zip(bn_a, bn_b):
        np.testing.assert_allclose(la.running_var, lb.running_var, rtol=rtol * 10)
