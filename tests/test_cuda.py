"""Runs the CUDA suite (tests/cuda) in its own process: under Numba's CUDA simulator
by default (no GPU needed; NUMBA_ENABLE_CUDASIM must be set before numba is
imported), on the hardware when NUMBAABN_CUDA_HARDWARE=1."""
import os
import subprocess
import sys

import pytest

SUITE = os.path.join(os.path.dirname(__file__), "cuda")


def test_cuda_suite():
    pytest.importorskip("numba.cuda")
    env = dict(os.environ)
    if env.get("NUMBAABN_CUDA_HARDWARE") != "1":
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "-p", "no:warnings", SUITE], env=env, capture_output=True, text=True,
                       timeout=1500)
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-3000:]
    assert " passed" in p.stdout.splitlines()[-1]
