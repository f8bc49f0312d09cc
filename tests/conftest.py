import os
import sys

# The tests run the multi-threaded kernels from 131072 elements (the default is 2**21,
# where they start to pay on the 2-core machine): tensors of both twins stay small.
# Set before numbaabn is imported; tests that start processes pass it on.
os.environ.setdefault("NUMBAABN_PARALLEL_MIN", "131072")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))

collect_ignore = ["cuda"]  # run by test_cuda.py in its own process (simulator or GPU)

# Documented tolerances (README "Numerics"): error relative to the largest magnitude of
# the reference output. float16 forward: within one float16 ulp of the rounded
# reference; float16 backward recovers y from the float16 output z, so it inherits
# that rounding (about 5e-4 relative) amplified by the normalization.
TOL = {np.float64: 1e-12, np.float32: 2e-5, np.float16: 1e-2}
PDTYPE = {np.float64: np.float64, np.float32: np.float32, np.float16: np.float32}


def rel_err(got, ref, scale=None):
    """Max error relative to the reference's largest magnitude (or ``scale``, the
    size of the leading term where the result itself cancels to ~0)."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if not ref.size:
        return 0.0
    top = float(np.max(np.abs(ref)))
    top = max(top, scale or 0.0, 1e-300)
    return float(np.max(np.abs(got - ref))) / top


def assert_close(got, ref, dtype, what="", scale=None):
    err = rel_err(got, ref, scale)
    assert err <= TOL[dtype], f"{what}: relative error {err:.3g} > {TOL[dtype]:.1g}"


def assert_sums_close(got, ref, abs_sum, dtype, what="", slack=None):
    """Per-channel sums: error relative to the sum of the magnitudes of their terms
    (plus, for float16 data, ``slack``: see ``f16_slack`` in reference.py)."""
    if dtype == np.float16 and slack is not None:
        abs_sum = abs_sum + slack
    err = np.abs(np.asarray(got, np.float64) - ref) / np.maximum(abs_sum, 1e-300)
    assert err.max() <= TOL[dtype], f"{what}: relative error {err.max():.3g} > {TOL[dtype]:.1g}"


def assert_f16_forward(got, ref):
    """Within one float16 ulp of the float64 reference."""
    r16 = ref.astype(np.float16)
    ulp = np.spacing(np.abs(r16)).astype(np.float64)
    diff = np.abs(got.astype(np.float64) - ref)
    assert np.all(diff <= ulp + 1e-6 * max(np.abs(ref).max(), 1e-30)), float(np.max(diff / ulp))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def channels_of(shape, channels_last):
    return shape[-1] if channels_last else shape[1]


def snapshot(*arrays):
    return [None if a is None else (a.copy(), a.strides) for a in arrays]


def assert_unchanged(snap, *arrays):
    for s, a in zip(snap, arrays):
        if a is None:
            continue
        assert a.strides == s[1]
        assert a.tobytes() == s[0].tobytes(), "an array changed although the call raised"
