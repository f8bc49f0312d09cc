"""Write the CPU section of BENCHMARKS.md from a ``python -m numbaabn bench --json`` file.

    python benchmarks/report.py benchmarks/results_cpu.json [BENCHMARKS.md]
        [--runs benchmarks/results_cpu_runs.json]

Replaces everything from ``## CPU`` up to the next ``## `` heading; the other sections
(MPI, memory experiment, CUDA) are kept as they are. ``--runs`` names a JSON list of
several runs of the same code (the published one among them): the section then gives
each target in every run and its median, and a target counts as met where the median
meets it (this machine is shared: one run can meet a target that the next misses).
"""
import json
import statistics
import sys

OPS = ("forward-train", "forward-eval", "backward-train", "fused-eval")
MAIN, SMALL = (32, 128, 56, 56), (8, 64, 8, 8)
TARGETS = {"forward-train": 1.5, "forward-eval": 1.3, "backward-train": 1.6}


def _find(rows, shape, dtype, layout):
    return next((r for r in rows if tuple(r["shape"]) == shape and r["dtype"] == dtype
                 and r["layout"] == layout), None)


def _time(t):
    return f"{t * 1e3:.2f} ms" if t >= 1e-3 else f"{t * 1e6:.1f} µs"


def _bound(o):
    return f"; bound {o['read_bound_ratio']:.2f}x" if "read_bound_ratio" in o else ""


def _read_ratios(rows):
    """(min, median, max) of read-only pass time / in-place pass time over the rows of
    tensors above 1 MB (the small one's passes take a few µs)."""
    v = sorted(r[op]["read_over_stream"] for r in rows for op in OPS
               if "read_over_stream" in r[op] and r["bytes"] > 1 << 20)
    return (v[0], v[len(v) // 2], v[-1]) if v else None


def _met(ok):
    return "**met**" if ok else "not met"


def _main_rows(rows):
    return [_find(rows, MAIN, "float32", lay) for lay in ("NCHW", "NHWC")]


def _other_ratios(rows):
    """(ratio, shape, layout, op) of the float32 rows other than the main and small
    shapes, for the targeted operations."""
    return [(r[op]["ratio_to_floor"], tuple(r["shape"]), r["layout"], op) for r in rows
            if r["dtype"] == "float32" and tuple(r["shape"]) not in (MAIN, SMALL)
            for op in TARGETS]


def _small_back_to_back(rows):
    """Back-to-back forward-train seconds of the small shape, NCHW and NHWC (None where
    the results predate that measurement)."""
    return [_find(rows, SMALL, "float32", lay)["forward-train"].get("back_to_back_seconds")
            for lay in ("NCHW", "NHWC")]


def _torch_over_bound(rows):
    """(PyTorch fwd+bwd time over our read bound for forward-train + backward-train,
    shape, layout) of the float32 rows where PyTorch is under 4x slower than ours: the
    least time kernels that read their input in each of their passes can take at this
    row's measured read-only bandwidth (the "bound" of each cell). Rows where ours took
    less than that bound are left out: there it bounds nothing."""
    out = []
    for r in rows:
        if r["dtype"] != "float32" or "torch_forward_backward_over_floor" not in r or \
                r["torch_forward_backward_over_numbaabn"] >= 4:
            continue
        ft, bt = r["forward-train"], r["backward-train"]
        if "read_bound_ratio" not in ft:
            continue
        torch_s = r["torch_forward_backward_over_floor"] * (ft["floor_seconds"]
                                                           + bt["floor_seconds"])
        bound_s = (ft["read_bound_ratio"] * ft["floor_seconds"]
                   + bt["read_bound_ratio"] * bt["floor_seconds"])
        if ft["seconds"] + bt["seconds"] < bound_s:  # the small rows: serial kernels beat
            continue                                 # a bound set by threaded passes
        out.append((torch_s / bound_s, tuple(r["shape"]), r["layout"]))
    return out


def _torch_fb(rows):
    """(PyTorch fwd+bwd time over ours, shape, layout) of the float32 rows that have it."""
    return [(r["torch_forward_backward_over_numbaabn"], tuple(r["shape"]), r["layout"])
            for r in rows if "torch_forward_backward_over_numbaabn" in r
            and r["dtype"] == "float32"]


def _half_over_single(rows):
    """float16 time over float32 time of the main shape, each layout and operation."""
    return [_find(rows, MAIN, "float16", m["layout"])[op]["seconds"] / m[op]["seconds"]
            for m in _main_rows(rows) for op in TARGETS]


def table(rows):
    out = ["| shape | dtype | layout | GB/s fwd / bwd | forward-train | forward-eval | "
           "backward-train | fused eval | numpy | torch f | torch fb |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{_time(r[op]['seconds'])} ({r[op]['ratio_to_floor']:.2f}x{_bound(r[op])}; "
                 f"hot {r[op]['ratio_to_hot_floor']:.1f}x)" for op in OPS]
        opt = [f"{r[k]:.1f}x" if k in r else "–" for k in (
            "numpy_over_numbaabn", "torch_forward_over_numbaabn",
            "torch_forward_backward_over_numbaabn")]
        out.append(f"| {tuple(r['shape'])} | {r['dtype']} | {r['layout']} | "
                   f"{r['forward-train']['bandwidth_GBps']:.0f} / "
                   f"{r['backward-train']['bandwidth_GBps']:.0f} | " + " | ".join(cells + opt)
                   + " |")
    return "\n".join(out)


def targets(res):
    rows = res["rows"]
    main = _main_rows(rows)
    small = [_find(rows, SMALL, "float32", lay) for lay in ("NCHW", "NHWC")]
    lines = ["| target | measured | status |", "|---|---|---|"]

    def bound(op):
        b = [m[op].get("read_bound_ratio") for m in main]
        return "" if None in b else f" (read bound {b[0]:.2f}x / {b[1]:.2f}x)"

    for op, limit in TARGETS.items():
        v = [m[op]["ratio_to_floor"] for m in main]
        lines.append(f"| (32,128,56,56) f32 {op} ≤ {limit}x floor | {v[0]:.2f}x NCHW, "
                     f"{v[1]:.2f}x NHWC{bound(op)} | {_met(max(v) <= limit)} |")
    v = [m["fused-eval"]["ratio_to_floor"] for m in main]
    lines.append(f"| (issue 7) (32,128,56,56) f32 fused eval ≤ 1.3x floor | {v[0]:.2f}x NCHW, "
                 f"{v[1]:.2f}x NHWC{bound('fused-eval')} | {_met(max(v) <= 1.3)} |")
    oth = _other_ratios(rows)
    worst = max(oth)
    lines.append(f"| other shapes ≤ 2x (except the small one) | {min(oth)[0]:.2f}x–{worst[0]:.2f}x "
                 f"(worst: {worst[1]} {worst[2]} {worst[3]}) | {_met(worst[0] <= 2)} |")
    st = [s["forward-train"]["seconds"] for s in small]
    b2b = _small_back_to_back(rows)
    if None in b2b:  # results written before the back-to-back measurement existed
        lines.append(f"| (8,64,8,8) forward-train < 40 µs | {st[0] * 1e6:.1f} µs NCHW, "
                     f"{st[1] * 1e6:.1f} µs NHWC | {_met(max(st) < 40e-6)} |")
    else:
        lines.append(f"| (8,64,8,8) forward-train < 40 µs per call | back to back "
                     f"{b2b[0] * 1e6:.1f} µs NCHW, {b2b[1] * 1e6:.1f} µs NHWC; interleaved with "
                     f"the other operations and stream passes {st[0] * 1e6:.0f} / "
                     f"{st[1] * 1e6:.0f} µs | {_met(max(b2b) < 40e-6)} (back to back) |")
    tfb = _torch_fb(rows)
    if tfb:
        below = [f"{shape} {layout} {over:.1f}x" for over, shape, layout in _torch_over_bound(rows)
                 if over < 4]
        proof = (f"; where we are under 4x, PyTorch itself takes under 4x our read bound "
                 f"(forward-train + backward-train) on {', '.join(below)}: 4x faster there "
                 f"would need kernels faster than reading their input in each pass"
                 if below else "")
        lines.append(f"| fwd+bwd ≥ 4x faster than PyTorch | {min(tfb)[0]:.1f}x–{max(tfb)[0]:.1f}x "
                     f"(lowest: {min(tfb)[1]} {min(tfb)[2]}){proof} | "
                     f"{_met(min(tfb)[0] >= 4)} |")
    per_el = _half_over_single(rows)
    lines.append(f"| float16 within 2x of float32 time per element | {min(per_el):.2f}x–"
                 f"{max(per_el):.2f}x the float32 time | {_met(max(per_el) <= 2)} |")
    fc = res.get("first_call")
    if fc:
        warm, hidden = fc["warm"]["total_s"], fc.get("warm_no_scipy", {}).get("total_s")
        if hidden is None:  # SciPy not installed, or results from before it was timed
            lines.append(f"| warm-cache first call < 1 s | {warm:.2f} s (cold: "
                         f"{fc['cold']['total_s']:.1f} s) | {_met(warm < 1)} |")
        else:  # Numba's BLAS probe imports SciPy where it is installed
            status = _met(warm < 1) if warm < 1 or hidden >= 1 else \
                "**met** without SciPy, not met with it"
            lines.append(f"| warm-cache first call < 1 s | {hidden:.2f} s without SciPy (as "
                         f"installed: numbaabn does not need it), {warm:.2f} s with SciPy "
                         f"installed (Numba imports it to probe for BLAS); cold: "
                         f"{fc['cold']['total_s']:.1f} s | {status} |")
    return "\n".join(lines)


def _target_values(res):
    """(name, limit, value, lower_is_better) of each numeric target in one run."""
    rows = res["rows"]
    out = [(f"(32,128,56,56) f32 {op} {m['layout']}", limit, m[op]["ratio_to_floor"], True)
           for op, limit in list(TARGETS.items()) + [("fused-eval", 1.3)]
           for m in _main_rows(rows)]
    out.append(("other shapes, worst", 2.0, max(_other_ratios(rows))[0], True))
    b2b = _small_back_to_back(rows)
    if None not in b2b:
        out.append(("(8,64,8,8) forward-train µs, back to back, slower layout", 40.0,
                    max(b2b) * 1e6, True))
    tfb = _torch_fb(rows)
    if tfb:
        out.append(("PyTorch fwd+bwd over ours, lowest", 4.0, min(tfb)[0], False))
    out.append(("float16 time over float32, highest", 2.0, max(_half_over_single(rows)), True))
    hidden = res.get("first_call", {}).get("warm_no_scipy", {}).get("total_s")
    if hidden is not None:
        out.append(("warm first call s, without SciPy", 1.0, hidden, True))
    return out


def across(runs):
    """The targets in each of several runs, their median, and whether the median meets
    each."""
    per_run = [_target_values(r) for r in runs]
    head = ("| target | limit | " + " | ".join(f"run {i + 1}" for i in range(len(runs)))
            + " | median | runs meeting it | status (median) |")
    lines = [head, "|---|---|" + "---|" * (len(runs) + 3)]
    for k, (name, limit, _, lower) in enumerate(per_run[0]):
        vals = [pr[k][2] for pr in per_run]
        med = statistics.median(vals)
        ok = [(v <= limit) if lower else (v >= limit) for v in vals]
        lines.append(f"| {name} | {'≤' if lower else '≥'} {limit:g} | "
                     + " | ".join(f"{v:.2f}" for v in vals)
                     + f" | {med:.2f} | {sum(ok)} of {len(vals)} | "
                     f"{_met(med <= limit if lower else med >= limit)} |")
    by_row = {}
    for r in runs:
        for ratio, shape, layout, op in _other_ratios(r["rows"]):
            by_row.setdefault((shape, layout, op), []).append(ratio)
    meds = sorted(((statistics.median(v), k) for k, v in by_row.items()), reverse=True)
    above = [f"{k[0]} {k[1]} {k[2]} {m:.2f}x" for m, k in meds if m > 2]
    within = [m for m, _ in meds if m <= 2]
    lines.append("")
    lines.append("Other shapes row by row (median over the runs of each row and operation): "
                 + ("; ".join(above) + " above 2x" if above else "every one within 2x")
                 + (f", the highest of the others {within[0]:.2f}x." if within else "."))
    spread = []
    for r in runs:
        bw = [r2[op]["bandwidth_GBps"] for r2 in r["rows"] if r2["bytes"] > 1 << 20
              for op in ("forward-train", "backward-train")]
        spread.append(f"{min(bw):.0f}-{max(bw):.0f}")
    bound = {}
    for r in runs:
        for over, shape, layout in _torch_over_bound(r["rows"]):
            bound.setdefault((shape, layout), []).append(over)
    if bound:
        lines.append("")
        lines.append(
            "PyTorch fwd+bwd over our read bound (forward-train + backward-train), on the "
            "rows and runs where PyTorch was under 4x slower than ours, median (runs): "
            + "; ".join(f"{k[0]} {k[1]} {statistics.median(v):.2f}x ({len(v)})"
                        for k, v in sorted(bound.items())) + ". Under 4x, \"4x faster than "
            "PyTorch\" there needs kernels faster than reading their input in each pass.")
    lines.append("")
    lines.append("Operations' stream bandwidth by run, GB/s: " + ", ".join(
        f"run {i + 1} {s}" for i, s in enumerate(spread)) + "; main memory: " + ", ".join(
        f"{r['dram_bandwidth_GBps']:.0f}" for r in runs) + " GB/s.")
    return "\n".join(lines)


def regions(res):
    """The cost of a parallel region (bench.parallel_region_cost), where measured."""
    t = res.get("parallel_region_seconds")
    if not t:
        return ""
    return (f"Every multi-threaded kernel call starts and joins the threads: a parallel\n"
            f"region with one chunk of work took {t['back_to_back'] * 1e6:.0f} µs back to "
            f"back and {t['after_4MB_restore'] * 1e6:.0f} µs after\nrestoring a 4 MB array "
            f"(median; `parallel_region_seconds` in the JSON). The stream pass that\nsets "
            f"the floor pays it once; forward-train and backward-train run two kernels, "
            f"so rows\nof a few hundred microseconds would pay it twice against once: "
            f"tensors under `NUMBAABN_PARALLEL_MIN`\nelements (2^21 by default) run as one "
            f"serial item and pay none.")


def sweep(res):
    s = res.get("stream_by_size")
    if not s:
        return ""
    head = "| array | " + " | ".join(f"{mb} MB" for mb in s["MB"]) + " |"
    sep = "|---|" + "---|" * len(s["MB"])
    hot = "| back-to-back passes, GB/s | " + " | ".join(f"{v:.0f}" for v in s["hot_GBps"]) + " |"
    return "\n".join([head, sep, hot])


def read_bound(res):
    rr = _read_ratios(res["rows"])
    if rr is None:
        return ""
    costly = rr[1] > 0.75
    return f"""**{"Reading costs nearly as much as reading and writing" if costly else "Reading and writing in place against reading alone"}.** The floor counts a
byte read and a byte written alike, so a read-only pass (the statistics, the backward's
reduce) would take half an in-place read+write pass if bytes were all that counted. The
harness also times a read-only pass (`_read`, a uint32 sum, prefetching as the faster
stream did) over the same arrays after the same restore: over all rows above 1 MB it
took {rr[0]:.2f}-{rr[2]:.2f} (median {rr[1]:.2f}) of the in-place pass's time. A core is limited
by how fast it brings lines in, and writing them back in place costs less than
bringing them. The least time an operation that reads its input in each of its passes
can take is then its reading passes times the read-only pass: forward-train reads x
twice (statistics, then the transform), against a floor of 1.5 passes; backward-train
reads z and dz twice (reduce, then apply), against a floor of 1.25 passes of both.
"bound" in each cell is that least time over the floor, from this row's own read-only
passes (1.33x for forward-train and 1.6x for backward-train where a read-only pass takes
as long as an in-place one; here, at the median, {2 * rr[1] / 1.5:.2f}x and {2 * rr[1] / 1.25:.2f}x)."""


def _cpu_details(m):
    details = [d for d in (m.get("llvm_cpu") and f"LLVM `{m['llvm_cpu']}`", m.get("simd"),
                           m.get("l3_cache") and f"L3 {m['l3_cache']}") if d]
    return f" ({', '.join(details)})" if details else ""


def _floor_prefetch(res):
    m = res["machine"]
    kernels = ("The kernels prefetch in software here (`NUMBAABN_PREFETCH` on)"
               if m.get("prefetch", True) else
               "The kernels do not prefetch in software here (`NUMBAABN_PREFETCH` off)")
    cells = [r[op]["floor_prefetched"] for r in res["rows"] for op in OPS
             if "floor_prefetched" in r[op]]
    if not cells:  # results from before the twenty-sixth session: one way only
        return (f"{kernels}, and the pass prefetched as they do (the one way it then "
                "ran).")
    return (f"The pass runs twice, plain and prefetching 1 KB ahead of each 1024-element "
            f"chunk, and the faster median is the floor (on the Zen 3 the prefetched pass ran "
            f"~20% faster, on the Zen 4 the plain one 2-17%): here the prefetched one in "
            f"{sum(cells)} of {len(cells)} cells (`floor_prefetched` in the JSON). "
            f"{kernels}.")


def section(res, runs=()):
    m = res["machine"]
    return f"""## CPU (`python -m numbaabn bench --json benchmarks/results_cpu.json`)

Machine: {m['cpus']} cores of an `{m.get('cpu', '?')}`{_cpu_details(m)} (a shared virtual machine: other tenants
load the memory system, and the same row can vary by 1.5x between runs), Python
{m['python']}, NumPy {m['numpy']}, Numba {m['numba']}; PyTorch for the comparison columns when
installed. Raw results: `benchmarks/results_cpu.json`; this section is written by
`python benchmarks/report.py benchmarks/results_cpu.json{" --runs benchmarks/results_cpu_runs.json" if runs else ""}`.

**The floor.** Each cell is the median time and, in brackets, the ratio to the floor:
bytes that must move (3x the input for forward-train, 2x for forward-eval and the
fused eval layer, 5x for backward-train) divided by the streaming bandwidth. The
bandwidth is measured in the same process by a Numba in-place read+write pass
(`_stream`) over the very arrays the operation touches (x for the forwards; z and dz for
the backward), restored the same way before each pass, interleaved with the
operation's repeats, median of the same number of repeats (GB/s column: forward /
backward). {_floor_prefetch(res)} "hot" is the ratio to a stricter floor: the best of 7 back-to-back passes
over one cache-hot array of the input's size, measured before and after the row.

Why the floor is not the hot number: where the data lives decides the bandwidth, and
the operations cannot keep a tensor where a back-to-back stream keeps it. Streaming one
array back to back on this machine (`stream_by_size` in the JSON):

{sweep(res)}

Main memory streams at {res['dram_bandwidth_GBps']:.0f} GB/s (1 GiB array). Only what
fits the last-level cache streams fast. The (32,128,56,56)
float32 tensor is 51 MB: alone and hot it streams at the back-to-back rate, but the backward
reads z and dz (103 MB), and restoring the input before each repeat (a copy from a
second 51 MB array) leaves part of it in main memory: the same stream kernel over the
same arrays after the same restore runs at the bandwidth in the GB/s column. That is
the bandwidth the operation can have, so it is the floor; the hot ratio shows how far
each operation is from a cache-resident ideal it cannot reach here.

{regions(res)}

{read_bound(res)}

{table(res['rows'])}

numpy / torch f / torch fb: their time divided by numbaabn's, side by side in the same
run (numpy and torch fb: forward + backward; torch f: forward only; PyTorch
`BatchNorm{{1,2,3}}d + LeakyReLU(inplace=True)`, NHWC only for rank 4 via
`channels_last`).

### Targets (issues 5 and 7) — {"in this run alone (what counts is the median over the runs, next table)" if runs else "status with this run"}

{targets(res)}
{runs_section(runs)}
"""


def runs_section(runs):
    if not runs:
        return ""
    return f"""
### Targets across {len(runs)} runs of the same code

The same command run {len(runs)} times back to back (`benchmarks/results_cpu_runs.json`; the
table above is one of them). What the issue's targets are judged on is the median.

{across(runs)}
"""


def main(argv):
    args = list(argv[1:])
    runs = []
    if "--runs" in args:
        at = args.index("--runs")
        runs = json.load(open(args[at + 1]))
        del args[at:at + 2]
    res = json.load(open(args[0]))
    path = args[1] if len(args) > 1 else "BENCHMARKS.md"
    text = open(path).read()
    start = text.index("## CPU")
    end = text.index("\n## ", start + 1) + 1
    notes_at = text.find("### Why, as far as measured", start)
    notes = text[notes_at:end] if 0 <= notes_at < end else ""
    open(path, "w").write(text[:start] + section(res, runs) + notes + text[end:])
    print(targets(res))
    if runs:
        print(across(runs))


if __name__ == "__main__":
    main(sys.argv)
