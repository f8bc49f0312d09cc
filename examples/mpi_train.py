"""Data-parallel training with synchronized in-place ABN.

    mpiexec -n 2 python examples/mpi_train.py

Each worker holds a shard of every batch; InPlaceABNSync normalizes with the
statistics of the whole batch, and the parameter gradients (local sums) are summed
across workers in one allreduce before the update. Rank 0 also trains the same
network in one process on the full batch and prints both loss curves: they agree
to rounding.
"""
import argparse

import numpy as np

import numbaabn
from numbaabn import mpi_sync


def make_data(seed=0, n=96, d=12, k=3):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    Y = np.tanh(X @ rng.standard_normal((d, k)))
    return X, Y


def train(X, Y, comm=None, rows=slice(None), steps=30, lr=0.1, seed=1):
    """Dense -> InPlaceABN(Sync) -> Dense -> InPlaceABN(Sync) -> Dense, MSE loss."""
    rng = np.random.default_rng(seed)
    sizes = [X.shape[1], 32, 32, Y.shape[1]]
    Ws = [rng.standard_normal((a, b)) / np.sqrt(a) for a, b in zip(sizes[:-1], sizes[1:])]
    bs = [np.zeros(b) for b in sizes[1:]]
    bns = [numbaabn.InPlaceABNSync(n, comm, activation="leaky_relu", activation_param=0.1,
                                   dtype="float64", data_format="NC") for n in sizes[1:-1]]
    x, y = X[rows], Y[rows]
    total = X.shape[0] * Y.shape[1]  # the loss is a mean over the whole batch
    losses = []
    for _ in range(steps):
        acts, h = [x], x
        for i, bn in enumerate(bns):
            h = bn(h @ Ws[i] + bs[i])  # in place: the dense output becomes z
            acts.append(h)
        out = h @ Ws[-1] + bs[-1]
        local = np.array([np.sum((out - y) ** 2)])
        losses.append(float(mpi_sync.allreduce_gradients(comm, [local])[0][0]) / total)
        d = 2.0 * (out - y) / total
        grads = []
        for i in range(len(Ws) - 1, -1, -1):
            grads.append([acts[i].T @ d, d.sum(0)])
            if i > 0:
                d = bns[i - 1].backward(d @ Ws[i].T)  # in place over d
        grads = grads[::-1]
        flat = [g for pair in grads for g in pair]
        flat += [a for bn in bns for a in (bn.weight_grad, bn.bias_grad)]
        mpi_sync.allreduce_gradients(comm, flat)  # one allreduce for every gradient
        for i, (gW, gb) in enumerate(grads):
            Ws[i] -= lr * gW
            bs[i] -= lr * gb
        for bn in bns:
            bn.weight -= lr * bn.weight_grad
            bn.bias -= lr * bn.bias_grad
            bn.zero_grad()
    return np.array(losses), bns


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    X, Y = make_data()
    cuts = np.linspace(0, X.shape[0], size + 1).astype(int)
    losses, bns = train(X, Y, comm, slice(cuts[rank], cuts[rank + 1]), steps=args.steps)
    if rank == 0:
        single, _ = train(X, Y, None, steps=args.steps)
        diff = np.max(np.abs(losses - single) / single)
        print(f"{size} workers, {args.steps} steps: loss {losses[0]:.5f} -> {losses[-1]:.5f}")
        print(f"single process, full batch:     loss {single[0]:.5f} -> {single[-1]:.5f}")
        print(f"max relative difference of the loss curves: {diff:.2e}")
        ok = diff < 1e-9 and losses[-1] < 0.5 * losses[0]
        print("loss curves match" if ok else "LOSS CURVES DIFFER")
        comm.Abort(1) if not ok else None


if __name__ == "__main__":
    main()
