"""Command line and benchmark harness: they run and report what they measured."""
import json
import subprocess
import sys

import numpy as np
import pytest

import numbaabn
from numbaabn import bench


def test_check_command():
    p = subprocess.run([sys.executable, "-m", "numbaabn", "check", "--shape", "4", "8", "6", "6",
                        "--repeats", "2"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "check passed" in p.stdout and "faster" in p.stdout


def test_bench_row_fields_and_floors():
    row = bench.bench_row((4, 8, 16, 16), "float32", "NHWC", repeats=2, compare=True)
    assert row["bytes"] == 4 * 8 * 16 * 16 * 4 and row["hot_bandwidth_GBps"] > 0
    for op, passes in bench.PASSES.items():
        o = row[op]
        assert o["seconds"] > 0 and o["bandwidth_GBps"] > 0
        assert abs(o["floor_seconds"] - passes * row["bytes"] / (o["bandwidth_GBps"] * 1e9)) \
            <= 1e-9 + 1e-9 * o["floor_seconds"]
        assert abs(o["ratio_to_floor"] - o["seconds"] / o["floor_seconds"]) < 1e-9
        hot_floor = passes * row["bytes"] / (row["hot_bandwidth_GBps"] * 1e9)
        assert abs(o["ratio_to_hot_floor"] - o["seconds"] / hot_floor) < 1e-6 * o["ratio_to_hot_floor"]
        # read bound: READS read-only passes over the arrays the stream pass covers (x, or
        # z and dz), against the floor's PASSES input-sized moves at 2 per stream pass
        arrays = 2 if op == "backward-train" else 1
        assert o["read_over_stream"] > 0
        bound = bench.READS[op] * o["read_over_stream"] * 2 * arrays / passes
        assert abs(o["read_bound_ratio"] - bound) < 1e-9 * bound
    assert row["numpy_over_numbaabn"] > 0
    if "torch_forward_backward_over_numbaabn" in row:  # PyTorch installed
        ours = row["forward-train"]["seconds"] + row["backward-train"]["seconds"]
        floor = row["forward-train"]["floor_seconds"] + row["backward-train"]["floor_seconds"]
        torch_fb = row["torch_forward_backward_over_numbaabn"] * ours
        assert abs(row["torch_forward_backward_over_floor"] - torch_fb / floor) \
            < 1e-9 * torch_fb / floor


def test_read_pass_reads_every_word():
    """The read-only pass sums the words modulo 2**32 (in uint32 within a chunk, with
    and without prefetch): every word counts."""
    a = np.arange(5000, dtype=np.uint32) * np.uint32(2654435761)  # wraps: large words
    for ahead in bench.FLOOR_AHEAD:
        assert bench._read(a, ahead) == int(a.sum(dtype=np.uint64)) % 2 ** 32
        assert bench._read(a[:7], ahead) == int(a[:7].sum(dtype=np.uint64)) % 2 ** 32
        b = a.copy()
        b[4321] += np.uint32(1)
        assert bench._read(b, ahead) == (bench._read(a, ahead) + 1) % 2 ** 32


def test_stream_pass_scales_every_element():
    for ahead in bench.FLOOR_AHEAD:
        a = np.arange(3001, dtype=np.float32)
        bench._stream(a, np.float32(2.0), ahead)
        assert np.array_equal(a, 2 * np.arange(3001, dtype=np.float32))


def test_floor_is_the_faster_stream(monkeypatch):
    """The floor's stream runs plain and prefetched; the slower setting never sets it."""
    import time
    stream = bench._stream
    for slow in bench.FLOOR_AHEAD:
        def delayed(a, s, ahead=None, slow=slow):
            if ahead == slow:
                time.sleep(0.02)
            stream(a, s, ahead)
        monkeypatch.setattr(bench, "_stream", delayed)
        x = np.ones(1 << 12, np.float32)
        t = bench._paired_times({"op": (lambda: None, lambda: None, (x,))}, repeats=3)
        sec, stream_sec, read_sec, prefetched = t["op"]
        assert prefetched is (slow is None) and stream_sec < 0.02 and read_sec < 0.02


def test_bench_run_and_table():
    r = bench.run(rows=[((4, 8, 8, 8), ("float32", "float16"))], repeats=1, compare=False,
                  first_call=False, progress=False)
    assert [(x["dtype"], x["layout"]) for x in r["rows"]] == [
        ("float32", "NCHW"), ("float32", "NHWC"), ("float16", "NCHW"), ("float16", "NHWC")]
    assert r["dram_bandwidth_GBps"] > 0
    assert set(r["parallel_region_seconds"]) == {"back_to_back", "after_4MB_restore"}
    assert all(0 < t < 1 for t in r["parallel_region_seconds"].values())
    text = bench.table(r)
    assert "fwd-train" in text and "(4, 8, 8, 8)" in text and "a parallel region" in text
    json.dumps(r)  # serializable for --json
    # the machine: the prefetch setting in force and the CPU the kernels were compiled for
    from numbaabn import _config
    assert r["machine"]["prefetch"] is _config.PREFETCH
    assert r["machine"]["llvm_cpu"] == _config.host_cpu() and r["machine"]["llvm_cpu"]
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[1] / "benchmarks"))
    import report
    # the floor: the faster of the plain and the prefetched pass, said with how often
    # each won; the kernels' own setting beside it
    cells = [x[op]["floor_prefetched"] for x in r["rows"] for op in bench.PASSES]
    assert all(isinstance(c, bool) for c in cells)
    for on in (True, False):
        said = report._floor_prefetch(dict(r, machine=dict(r["machine"], prefetch=on)))
        assert ("do not prefetch" in said) is not on
        assert f"in {sum(cells)} of {len(cells)} cells" in said
    old = dict(r, rows=[{op: {k: v for k, v in x[op].items() if k != "floor_prefetched"}
                         for op in bench.PASSES} for x in r["rows"]])
    assert "one way" in report._floor_prefetch(old)
    assert f"LLVM `{_config.host_cpu()}`" in report._cpu_details(r["machine"])


def test_first_call_script_can_hide_scipy():
    """The "SciPy hidden" first call runs without SciPy even where it is installed (Numba
    then skips its BLAS probe, as on a machine without SciPy); the plain run reports
    whether Numba's first cache load imported it."""
    runs = {}
    for extra in ([], ["hide-scipy"]):
        p = subprocess.run([sys.executable, "-c", bench._FIRST_CALL] + extra,
                           capture_output=True, text=True, timeout=900)
        assert p.returncode == 0, p.stdout + p.stderr
        *times, scipy = p.stdout.split()
        assert len(times) == 3 and all(float(t) > 0 for t in times)
        runs[bool(extra)] = scipy
    assert runs[True] == "0"
    assert runs[False] == ("1" if bench._scipy_installed() else "0")
    text = bench.table(dict(machine={}, rows=[], dram_bandwidth_GBps=1.0, first_call={
        "warm_no_scipy": dict(import_s=0.1, first_forward_s=0.2, first_backward_s=0.3,
                              total_s=0.6, scipy_imported=False)}))
    assert "first call, warm cache, SciPy hidden: import 0.10 s" in text


def _fake_run(main_ft_nhwc, worst_other, torch_fb):
    """A minimal bench result: every ratio 1.0 except the ones named."""
    def op_block(ratio, seconds=1.0):
        return dict(ratio_to_floor=ratio, seconds=seconds, bandwidth_GBps=40.0)

    def row(shape, dtype, layout, **ratios):
        r = dict(shape=list(shape), dtype=dtype, layout=layout, bytes=2 << 20)
        for op in bench.PASSES:
            r[op] = op_block(ratios.get(op, 1.0), seconds=0.5 if dtype == "float16" else 1.0)
        return r

    small = [row((8, 64, 8, 8), "float32", lay) for lay in ("NCHW", "NHWC")]
    for s in small:
        s["forward-train"]["back_to_back_seconds"] = 30e-6
    rows = [row((32, 128, 56, 56), "float32", "NCHW"),
            row((32, 128, 56, 56), "float32", "NHWC", **{"forward-train": main_ft_nhwc}),
            row((32, 128, 56, 56), "float16", "NCHW"), row((32, 128, 56, 56), "float16", "NHWC"),
            row((256, 4096), "float32", "NCHW", **{"backward-train": worst_other})] + small
    rows[-1]["torch_forward_backward_over_numbaabn"] = torch_fb
    return dict(rows=rows, dram_bandwidth_GBps=40.0,
                first_call=dict(warm_no_scipy=dict(total_s=0.5)))


def test_report_across_runs_judges_the_median():
    """benchmarks/report.py: each target in every run, the median, how many runs meet
    it, and the status from the median (not from the best run)."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[1] / "benchmarks"))
    import report
    runs = [_fake_run(1.45, 2.5, 5.0), _fake_run(1.70, 1.9, 3.0), _fake_run(1.60, 1.8, 4.5)]
    lines = {line.split(" | ")[0].lstrip("| "): line for line in report.across(runs).splitlines()}
    ft = lines["(32,128,56,56) f32 forward-train NHWC"]
    assert "| 1.45 | 1.70 | 1.60 | 1.60 | 1 of 3 | not met |" in ft
    assert "| 1.00 | 1.00 | 1.00 | 1.00 | 3 of 3 | **met** |" in lines[
        "(32,128,56,56) f32 forward-train NCHW"]
    assert "| 2.50 | 1.90 | 1.80 | 1.90 | 2 of 3 | **met** |" in lines["other shapes, worst"]
    assert "| 5.00 | 3.00 | 4.50 | 4.50 | 2 of 3 | **met** |" in lines[
        "PyTorch fwd+bwd over ours, lowest"]
    assert "| 0.50 | 0.50 | 0.50 | 0.50 | 3 of 3 | **met** |" in lines[
        "float16 time over float32, highest"]
    two = report.across(runs[:2]).splitlines()
    assert "| 1.45 | 1.70 | 1.57 | 1 of 2 | not met |" in next(
        line for line in two if line.startswith("| (32,128,56,56) f32 forward-train NHWC"))
    by_row = next(line for line in report.across(runs).splitlines()
                  if line.startswith("Other shapes row by row"))
    assert "every one within 2x, the highest of the others 1.90x." in by_row
    high = [_fake_run(1.0, w, 5.0) for w in (2.5, 2.2, 1.8)]
    by_row = next(line for line in report.across(high).splitlines()
                  if line.startswith("Other shapes row by row"))
    assert "(256, 4096) NCHW backward-train 2.20x above 2x" in by_row


def test_chain_bench_times_each_operation(tmp_path):
    """benchmarks/bench_chain.py: numbaabn's calls in a chain of layers (each layer's
    input written by the one before), each operation's time per layer and its ratio to
    the stream pass run in the same places; the calls really ran (the running
    statistics moved, the gradients were written); ``--against`` exports a revision's
    package beside this one."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[1] / "benchmarks"))
    import bench_chain
    rows = bench_chain.run((4, 8, 6, 6), "NCHW", 2, 1)
    assert [r["op"] for r in rows] == list(bench_chain.OPS)
    assert all(0 < r["seconds"] < 1 and 0 < r["ratio_to_floor"] < np.inf for r in rows)
    chain = bench_chain.Chain((4, 6, 6, 8), "NHWC", 2, {"this": numbaabn})
    chain.step("this", numbaabn)
    assert all(np.abs(m).max() > 0 and np.abs(v - 1).max() > 0 for m, v in chain.running)
    assert not np.all(chain.g[0] == 1.0)
    if subprocess.run(["git", "-C", str(__import__("pathlib").Path(__file__).parents[1]),
                       "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout: --against has no revision to export")
    try:
        other = bench_chain._export("HEAD", str(tmp_path))
        assert other.__name__ == "numbaabn_against" and other is not numbaabn
        assert callable(other.inplace_abn_forward)
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.startswith("numbaabn_against")]:
            del sys.modules[name]
