"""CPU inference with fused BN + activation layers, from weights saved in an .npz.

    python examples/cpu_inference.py [--dir DIR]

Trains a small network (dense -> InPlaceABN -> dense -> InPlaceABN -> dense) for a
few steps, saves its weights and statistics to DIR/model.npz, then loads them into
an inference network whose BN layers are fused (one in-place pass each) and, as an
alternative, folded into the preceding dense layers. Both give the eval-mode
network's output.
"""
import argparse
import os

import numpy as np

import numbaabn


def train_and_save(path, steps=20, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((256, 8)).astype(np.float32)
    Y = np.tanh(X @ rng.standard_normal((8, 2))).astype(np.float32)
    Ws = [(rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
          for a, b in ((8, 16), (16, 16), (16, 2))]
    bns = [numbaabn.InPlaceABN(16, data_format="NC") for _ in range(2)]
    for _ in range(steps):
        acts, h = [X], X
        for W, bn in zip(Ws, bns):
            h = bn(h @ W)
            acts.append(h)
        out = h @ Ws[2]
        d = 2 * (out - Y) / out.size
        grads = [acts[2].T @ d]
        d = bns[1].backward(d @ Ws[2].T)
        grads.append(acts[1].T @ d)
        d = bns[0].backward(d @ Ws[1].T)
        grads.append(acts[0].T @ d)
        for W, g in zip(Ws, grads[::-1]):
            W -= 0.1 * g
        for bn in bns:
            bn.weight -= 0.1 * bn.weight_grad
            bn.bias -= 0.1 * bn.bias_grad
            bn.zero_grad()
    arrays = {f"W{i}": W for i, W in enumerate(Ws)}
    for i, bn in enumerate(bns):
        arrays.update({f"bn{i}.{k}": v for k, v in bn.state_dict().items()})
    np.savez(path, **arrays)
    reference = X[:4].copy()
    h = reference
    for W, bn in zip(Ws, bns):
        h = bn.eval()(h @ W)
    return reference, h @ Ws[2]


def load_and_infer(path, x):
    data = np.load(path)
    Ws = [data[f"W{i}"] for i in range(3)]
    layers = []
    for i in range(2):
        bn = numbaabn.InPlaceABN(16, data_format="NC")
        bn.load_state_dict({k: data[f"bn{i}.{k}"] for k in bn.state_dict()})
        layers.append(bn.fuse())
    h = x
    for W, fused in zip(Ws, layers):
        h = fused(h @ W)  # the product's buffer, overwritten in place
    fused_out = h @ Ws[2]
    h = x
    for i, W in enumerate(Ws[:2]):  # folded: BN disappears into the dense weights
        bn = numbaabn.InPlaceABN(16, data_format="NC")
        bn.load_state_dict({k: data[f"bn{i}.{k}"] for k in bn.state_dict()})
        W2, b2, act, param = numbaabn.fold(W, None, bn, axis=-1)
        h = h @ W2 + b2
        h = np.where(h >= 0, h, 0.01 * h)
    return fused_out, h @ Ws[2]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default=".")
    args = parser.parse_args()
    path = os.path.join(args.dir, "model.npz")
    x, expected = train_and_save(path)
    fused, folded = load_and_infer(path, x)
    print("eval network output:\n", expected)
    err_fused = np.abs(fused - expected).max()
    err_folded = np.abs(folded - expected).max()
    print(f"max difference: fused {err_fused:.2e}, folded {err_folded:.2e}")
    if err_fused <= 1e-5 and err_folded <= 1e-4:
        print("fused inference matches")
    else:
        raise SystemExit("fused inference does NOT match")


if __name__ == "__main__":
    main()
