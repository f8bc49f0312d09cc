"""Synchronized statistics under a real MPI (mpiexec from the mpich wheel)."""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import numbaabn
import reference as ref
from conftest import assert_close

WORKER = os.path.join(os.path.dirname(__file__), "_mpi_worker.py")
MPIEXEC = shutil.which("mpiexec")
MPI = pytest.importorskip("mpi4py.MPI", reason="mpi4py is in the test extra") if MPIEXEC else None
needs_mpiexec = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (pip install mpich)")


# Timeouts catch a hang, not slowness: the suite runs one pytest worker per core
# (pytest-xdist), so mpiexec's processes share the cores with the other workers.
def mpirun(n, scenario, timeout=600):
    env = dict(os.environ, NUMBAABN_PARALLEL_MIN="1000000000")  # 2 cores, P workers
    p = subprocess.run([MPIEXEC, "-n", str(n), sys.executable, WORKER, scenario],
                       capture_output=True, text=True, timeout=timeout, env=env)
    return p


@needs_mpiexec
@pytest.mark.parametrize("n", [2, 3])
def test_parity_with_single_process_on_the_whole_batch(n):
    """Even, uneven and empty shards; float64 and float32; both layouts; large
    offsets; running statistics bit-identical on every worker; SyncBatchNorm and
    convert_sync_batchnorm."""
    p = mpirun(n, "parity")
    assert p.returncode == 0, p.stdout + p.stderr
    assert sorted(re.findall(r"OK (\d+)", p.stdout)) == [str(r) for r in range(n)], p.stdout


@needs_mpiexec
@pytest.mark.parametrize("what", ["channels", "dtype", "layout", "mode", "local error"])
def test_mismatch_raises_on_every_worker_without_hanging(what):
    p = mpirun(2, "mismatch:" + what, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert len(re.findall(r"raised \w+ after", p.stdout)) == 2, p.stdout
    assert len(re.findall(r"OK \d", p.stdout)) == 2


@pytest.mark.parametrize("comm", ["none", "self", "hook"])
def test_one_worker_world_is_the_local_layer(comm, rng):
    if comm == "self" and MPI is None:
        pytest.skip("mpi4py not installed")

    class SumHook:  # the allreduce-hook protocol with one worker
        rank, size = 0, 1

        def allreduce_sum(self, vec):
            return vec.copy()

    c = {"none": None, "self": MPI.COMM_SELF if MPI else None, "hook": SumHook()}[comm]
    x0 = rng.standard_normal((6, 3, 4))
    a = numbaabn.InPlaceABNSync(3, c, dtype="float64")
    b = numbaabn.InPlaceABN(3, dtype="float64")
    xa, xb = x0.copy(), x0.copy()
    a(xa)
    b(xb)
    np.testing.assert_array_equal(xa, xb)
    dz = rng.standard_normal(x0.shape)
    np.testing.assert_array_equal(a.backward(dz.copy()), b.backward(dz.copy()))
    np.testing.assert_array_equal(a.running_var, b.running_var)


def test_custom_hook_with_two_simulated_workers(rng):
    """The hook protocol alone (no MPI): two workers in one process, driven in
    lockstep through threads, match the single process on the whole batch."""
    import threading

    class Pair:
        def __init__(self):
            self.barrier = threading.Barrier(2)
            self.slots = [None, None]
            self.lock = threading.Lock()

    class Hook:
        size = 2

        def __init__(self, pair, rank):
            self.pair, self.rank = pair, rank

        def allreduce_sum(self, vec):
            self.pair.slots[self.rank] = vec.copy()
            self.pair.barrier.wait()
            out = self.pair.slots[0] + self.pair.slots[1]
            self.pair.barrier.wait()
            return out

    pair = Pair()
    x_all = rng.standard_normal((7, 3, 5)) + 4
    dz_all = rng.standard_normal(x_all.shape)
    parts = [slice(0, 2), slice(2, 7)]
    results = [None, None]

    def run(r):
        layer = numbaabn.InPlaceABNSync(3, Hook(pair, r), dtype="float64", activation="elu")
        x = x_all[parts[r]].copy()
        layer(x)
        results[r] = (x, layer.backward(dz_all[parts[r]].copy()), layer.running_var.copy())

    ts = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    z_ref, _, rv_ref, ctx = ref.forward(x_all, np.ones(3), np.zeros(3), np.zeros(3), np.ones(3),
                                        activation="elu")
    dx_ref = ref.backward(dz_all, ctx)[0]
    for r in range(2):
        assert_close(results[r][0], z_ref[parts[r]], np.float64)
        assert_close(results[r][1], dx_ref[parts[r]], np.float64, scale=ctx["dx_scale"])
        np.testing.assert_allclose(results[r][2], rv_ref, rtol=1e-12)


def test_bad_comm_is_a_type_error():
    with pytest.raises(TypeError, match="allreduce hook protocol"):
        numbaabn.inplace_abn_forward(np.ones((4, 3)), comm=object())


@needs_mpiexec
def test_example_mpi_train_matches_single_process():
    example = os.path.join(os.path.dirname(__file__), "..", "examples", "mpi_train.py")
    p = subprocess.run([MPIEXEC, "-n", "2", sys.executable, example, "--steps", "15"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "loss curves match" in p.stdout
