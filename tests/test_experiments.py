"""The memory-footprint experiment in its fast mode: fields, ratios, files, plot."""
import csv
import fcntl
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from numbaabn import experiments


@pytest.fixture(scope="session")
def fast_run(tmp_path_factory):
    """The fast experiment, run once per test session: pytest-xdist's workers share it
    through their session's temporary directory, under a lock (with module scope it ran
    in each worker that ran one of its tests: ~100 s each; grouping the tests in one
    worker with --dist loadgroup does nothing on pytest 9.2, pytest-xdist#1386)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # this session's directory, not one worker's
    out = base / "experiment-fast"
    with open(base / "experiment-fast.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "stdout.txt").exists():  # written last, after a run that passed
            p = subprocess.run([sys.executable, "-m", "numbaabn", "experiment", "--fast",
                                "--out", str(out), "--variants", "standard", "inplace"],
                               capture_output=True, text=True, timeout=600)
            assert p.returncode == 0, p.stdout + p.stderr
            (out / "stdout.txt").write_text(p.stdout)
    with open(out / "results.json") as f:
        return out, json.load(f), (out / "stdout.txt").read_text()


def test_json_fields_and_ratio_from_measured_peaks(fast_run):
    _, r, stdout = fast_run
    h = r["headline"]
    c = r["config"]
    rows = {row["variant"]: row for row in r["depth_sweep"] if row["depth"] == c["depth"]
            and row["batch"] == c["batch"]}
    assert h["standard_step_peak_bytes"] == rows["standard"]["step_peak_bytes"]
    assert h["inplace_step_peak_bytes"] == rows["inplace"]["step_peak_bytes"]
    assert h["inplace_over_standard"] == pytest.approx(
        rows["inplace"]["step_peak_bytes"] / rows["standard"]["step_peak_bytes"])
    assert h["inplace_step_peak_bytes"] < h["standard_step_peak_bytes"]
    assert rows["inplace"]["tracemalloc_peak_bytes"] < rows["standard"]["tracemalloc_peak_bytes"]
    assert h["max_batch"]["inplace"] > h["max_batch"]["standard"] > 0
    assert h["batch_gain"] == pytest.approx(h["max_batch"]["inplace"] / h["max_batch"]["standard"])
    for var, search in r["budget_search"].items():
        probes = {int(k): v for k, v in search["probes"].items()}
        n = search["max_batch"]
        assert probes[n] <= c["budget_bytes"]  # measured to fit
        assert any(k > n and v > c["budget_bytes"] for k, v in probes.items())  # and a fail above
    assert h["loss_curve_max_rel_diff"]["inplace"] < 1e-4  # same math, float32 rounding
    assert "in-place peak / standard peak" in stdout


def test_sweeps_grow_with_depth_and_batch(fast_run):
    _, r, _ = fast_run
    for name, axis in (("depth_sweep", "depth"), ("batch_sweep", "batch")):
        for var in ("standard", "inplace"):
            rows = sorted((x for x in r[name] if x["variant"] == var), key=lambda x: x[axis])
            traced = [x["tracemalloc_peak_bytes"] for x in rows]
            assert traced == sorted(traced) and traced[0] < traced[-1]


def test_csv_and_plot(fast_run):
    out, r, _ = fast_run
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(r["depth_sweep"]) + len(r["batch_sweep"])
    assert {"variant", "step_peak_bytes", "tracemalloc_peak_bytes"} <= set(rows[0])
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not (out / "memory.png").exists()
    else:
        png = out / "memory.png"
        assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_parse_bytes():
    assert experiments.parse_bytes("2GiB") == 2 ** 31
    assert experiments.parse_bytes("512MiB") == 2 ** 29
    assert experiments.parse_bytes("1.5GB") == 1_500_000_000
    assert experiments.parse_bytes("1000") == 1000
    with pytest.raises(ValueError):
        experiments.parse_bytes("3 parsecs")


def test_in_process_step_losses_match():
    """The two NumPy networks compute the same math (fast, in this process)."""
    X, T = experiments._data(4, 8, 4, 0)
    a = experiments.NumpyNet("standard", 3, 8, 0)
    b = experiments.NumpyNet("inplace", 3, 8, 0)
    la = [a.step(X, T) for _ in range(4)]
    lb = [b.step(X, T) for _ in range(4)]
    np.testing.assert_allclose(la, lb, rtol=1e-5)
    assert la[-1] < la[0]


def test_max_batch_survives_a_flat_pair_of_probes(monkeypatch):
    """RSS noise can make the first two probes measure the same bytes: the secant step
    must not extrapolate a flat line (it once asked for a batch of 50 million)."""
    per_sample = 3 * 4 * 8 * 8 * 8  # bytes; the input alone is 4 * 8 * 8 * 8
    asked = []

    def fake_measure(variant, batch, **config):
        asked.append(batch)
        noise = per_sample * 24 if batch == 8 else 0  # probe 8 reads as high as probe 32
        return {"total_peak_bytes": 1_000_000 + per_sample * batch + noise}

    monkeypatch.setattr(experiments, "measure", fake_measure)
    budget = 1_000_000 + per_sample * 500
    n, probes = experiments.max_batch("standard", budget, channels=8, size=8, depth=2, seed=0)
    assert n == 500 or (fake_measure("standard", n + 1)["total_peak_bytes"] > budget
                        and probes[n] <= budget)
    assert max(asked) <= 8 * 500
