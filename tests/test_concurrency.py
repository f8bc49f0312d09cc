"""Thread and process safety for every threading layer Numba can pick here."""
import os
import subprocess
import sys

import pytest

WORKER = os.path.join(os.path.dirname(__file__), "_concurrency_worker.py")


def _layers():
    layers = ["workqueue", "omp"]
    try:
        from numba.np.ufunc import tbbpool  # noqa: F401
        layers.append("tbb")
    except ImportError:
        pass
    return layers


@pytest.mark.parametrize("layer", _layers())
def test_four_threads_then_fork(layer):
    env = dict(os.environ, NUMBA_THREADING_LAYER=layer, NUMBAABN_PARALLEL_MIN="4096")
    p = subprocess.run([sys.executable, WORKER], env=env, capture_output=True, text=True,
                       timeout=600)
    if p.returncode != 0 and "No threading layer could be loaded" in p.stderr:
        pytest.skip(f"threading layer {layer} is not available here")
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"OK {layer}" in p.stdout
