"""The CUDA suite: run by tests/test_cuda.py in its own process, under Numba's CUDA
simulator (NUMBA_ENABLE_CUDASIM=1, set before numba is imported) or, with
NUMBAABN_CUDA_HARDWARE=1 on a machine with a GPU, on the hardware."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Tiny blocks so that tiny arrays still cross block and grid boundaries (on
    hardware the defaults run: the same tests, real launch shapes)."""
    from numbaabn import cuda as ncuda
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        monkeypatch.setattr(ncuda, "THREADS", 4)
        monkeypatch.setattr(ncuda, "TILE", 2)
        monkeypatch.setattr(ncuda, "MAX_BLOCKS", 3)
        monkeypatch.setattr(ncuda, "BLOCK_WORK", 4)
    yield


@pytest.fixture
def rng():
    import numpy as np
    return np.random.default_rng(2024)
