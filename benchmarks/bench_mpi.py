"""Overhead of synchronized over local in-place ABN, measured side by side.

    mpiexec -n 2 python benchmarks/bench_mpi.py [--shape 16 128 56 56]

Every worker alternates local (InPlaceABN) and synchronized (InPlaceABNSync) forward
+ backward on its own shard and reports medians; each worker runs its kernels on
NUMBA_NUM_THREADS threads (set it so that workers x threads <= cores). Also times
the consistency check alone (one fixed-size allreduce).
"""
import argparse
import time

import numpy as np
from mpi4py import MPI

import numbaabn
from numbaabn import mpi_sync


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shape", type=int, nargs=4, default=[16, 128, 56, 56])
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args()
    comm = MPI.COMM_WORLD
    shape = tuple(args.shape)
    rng = np.random.default_rng(comm.Get_rank())
    x0 = rng.standard_normal(shape, dtype=np.float32)
    dz0 = rng.standard_normal(shape, dtype=np.float32)
    x, dz = x0.copy(), dz0.copy()
    layers = {"local": numbaabn.InPlaceABN(shape[1]),
              "sync": numbaabn.InPlaceABNSync(shape[1], comm)}
    times = {k: [] for k in layers}
    for rep in range(args.repeats + 2):
        for name, layer in layers.items():
            np.copyto(x, x0)
            np.copyto(dz, dz0)
            comm.Barrier()
            t = time.perf_counter()
            layer(x)
            layer.backward(dz)
            dt = time.perf_counter() - t
            if rep >= 2:
                times[name].append(dt)
    hook = mpi_sync.as_hook(comm)
    comm.Barrier()
    t = time.perf_counter()
    for _ in range(200):
        mpi_sync.check_consistent(hook, 1, shape[1], "float32", False, True)
    check = (time.perf_counter() - t) / 200
    med = {k: float(np.median(v)) for k, v in times.items()}
    allmed = comm.gather(med, root=0)
    if comm.Get_rank() == 0:
        loc = np.median([m["local"] for m in allmed])
        syn = np.median([m["sync"] for m in allmed])
        print(f"{comm.Get_size()} workers, {shape} float32 per worker, forward+backward "
              f"(median of {args.repeats}): local {loc * 1e3:.1f} ms, synchronized "
              f"{syn * 1e3:.1f} ms, overhead {syn / loc:.3f}x")
        print(f"consistency check alone: {check * 1e6:.0f} us per call")


if __name__ == "__main__":
    main()
