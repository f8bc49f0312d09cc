"""Run under ``mpiexec -n P`` by test_mpi.py. Each worker holds a shard of a batch
that every worker can rebuild from the seed; results are compared with the
single-process layer on the whole batch. Prints "OK <rank>" on success."""
import sys
import time

import numpy as np
from mpi4py import MPI

import numbaabn
from numbaabn import mpi_sync

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()


def shards(total, kind):
    if kind == "even":
        cuts = [total * i // size for i in range(size + 1)]
    elif kind == "uneven":
        w = np.arange(1, size + 1, dtype=float)
        cuts = [0] + list(np.round(np.cumsum(w) / w.sum() * total).astype(int))
    elif kind == "empty":  # worker 0 holds nothing
        cuts = [0, 0] + [total * i // (size - 1) for i in range(1, size)]
    else:
        raise ValueError(kind)
    return cuts


def parity(kind, dtype, fmt, act, offset):
    rng = np.random.default_rng(7)
    N, C = 12, 5
    shape = (N, C, 3, 4) if fmt == "NCHW" else (N, 3, 4, C)
    x_all = (offset + rng.standard_normal(shape) * 2).astype(dtype)
    dz_all = rng.standard_normal(shape).astype(dtype)
    cuts = shards(N, kind)
    lo, hi = cuts[rank], cuts[rank + 1]
    dt = "float64" if dtype == np.float64 else "float32"
    ref_layer = numbaabn.InPlaceABN(C, activation=act, data_format=fmt, dtype=dt)
    sync = numbaabn.InPlaceABNSync(C, comm, activation=act, data_format=fmt, dtype=dt)
    for layer in (ref_layer, sync):
        layer.weight[:] = np.linspace(-1.5, 2.0, C)
        layer.bias[:] = np.linspace(0.3, -0.4, C)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for step in range(2):  # two steps: running statistics keep agreeing
        x_ref = x_all.copy()
        ref_layer(x_ref)
        dx_ref = ref_layer.backward(dz_all.copy())
        x = x_all[lo:hi].copy()
        sync(x)
        dx = sync.backward(dz_all[lo:hi].copy())
        scale = np.abs(x_ref).max()
        assert np.abs(x - x_ref[lo:hi]).max() <= tol * scale if x.size else True, "forward"
        np.testing.assert_allclose(sync.running_mean, ref_layer.running_mean, rtol=tol,
                                   atol=tol * abs(offset + 1))
        np.testing.assert_allclose(sync.running_var, ref_layer.running_var, rtol=tol * 10)
        if dx.size:
            assert np.abs(dx - dx_ref[lo:hi]).max() <= tol * 10 * np.abs(dx_ref).max(), "dx"
    grads = [sync.weight_grad.astype(np.float64), sync.bias_grad.astype(np.float64)]
    mpi_sync.allreduce_gradients(comm, grads)
    gtol = 1e-10 if dtype == np.float64 else 1e-4
    for g, r in zip(grads, (ref_layer.weight_grad, ref_layer.bias_grad)):
        np.testing.assert_allclose(g, r, rtol=gtol, atol=gtol * np.abs(r).max())
    # identical (bit for bit) running statistics on every worker
    for a in (sync.running_mean, sync.running_var):
        everyone = comm.allgather(a.tobytes())
        assert all(e == everyone[0] for e in everyone), "running statistics differ"


def large_offset():
    rng = np.random.default_rng(3)
    x_all = (1e4 + rng.standard_normal((64, 2, 100))).astype(np.float32)
    cuts = shards(64, "uneven")
    layer = numbaabn.InPlaceABNSync(2, comm, momentum=0.0)
    layer(x_all[cuts[rank]:cuts[rank + 1]].copy())
    ref = x_all.astype(np.float64).var(axis=(0, 2))
    np.testing.assert_allclose(layer.running_var, ref, rtol=1e-3)


def sync_batchnorm():
    rng = np.random.default_rng(5)
    x_all = rng.standard_normal((9, 3, 4))
    cuts = shards(9, "uneven")
    a = numbaabn.SyncBatchNorm(3, comm=comm, weight_attr=False)
    a.dtype = np.dtype(np.float64)
    a.running_mean = a.running_mean.astype(np.float64)
    a.running_var = a.running_var.astype(np.float64)
    a.bias = a.bias.astype(np.float64)
    a.bias_grad = a.bias_grad.astype(np.float64)
    x = x_all[cuts[rank]:cuts[rank + 1]]
    x0 = x.copy()
    y = a(x)
    assert np.array_equal(x, x0) and y is not x  # standard path: input untouched
    m, v = x_all.mean((0, 2)), x_all.var((0, 2))
    expected = (x0 - m[None, :, None]) / np.sqrt(v[None, :, None] + 1e-5)
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-12)
    converted = numbaabn.convert_sync_batchnorm([numbaabn.BatchNorm(3, dtype="float64")], comm)
    y2 = converted[0](x0.copy())
    np.testing.assert_allclose(y2, expected, rtol=1e-10, atol=1e-12)


def mismatch(what):
    """Every worker must raise (not hang): the caller's timeout enforces it."""
    C = 4 + (1 if (what == "channels" and rank == 1) else 0)
    dtype = np.float64 if (what == "dtype" and rank == 1) else np.float32
    x = np.random.default_rng(rank).standard_normal((6, C, 3)).astype(dtype)
    fmt = "NHWC" if (what == "layout" and rank == 1) else "NCHW"
    if fmt == "NHWC":
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    layer = numbaabn.InPlaceABNSync(C, comm, dtype="float64" if dtype == np.float64 else "float32",
                                    data_format=fmt)
    if what == "mode" and rank == 1:
        layer.eval()
    if what == "local error" and rank == 1:
        x.flags.writeable = False
    t = time.perf_counter()
    try:
        layer(x)
    except (mpi_sync.SynchronizationError, ValueError) as e:
        print(f"raised {type(e).__name__} after {time.perf_counter() - t:.3f}s: {e}", flush=True)
        return
    raise AssertionError("no error on this worker")


def check_cost():
    """Time of the consistency check alone (one fixed-size allreduce)."""
    hook = mpi_sync.as_hook(comm)
    for _ in range(10):
        mpi_sync.check_consistent(hook, 1, 64, "float32", False, True)
    comm.Barrier()
    t = time.perf_counter()
    n = 2000
    for _ in range(n):
        mpi_sync.check_consistent(hook, 1, 64, "float32", False, True)
    if rank == 0:
        print(f"consistency check: {(time.perf_counter() - t) / n * 1e6:.1f} us per call "
              f"on {size} workers", flush=True)


def main(scenario):
    if scenario == "parity":
        for kind in ("even", "uneven", "empty"):
            for dtype in (np.float64, np.float32):
                for fmt in ("NCHW", "NHWC"):
                    parity(kind, dtype, fmt, "leaky_relu" if fmt == "NCHW" else "elu",
                           0.0 if dtype == np.float64 else 3.0)
        large_offset()
        sync_batchnorm()
    elif scenario.startswith("mismatch:"):
        mismatch(scenario.split(":", 1)[1])
    elif scenario == "cost":
        check_cost()
    else:
        raise ValueError(scenario)
    print(f"OK {rank}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
