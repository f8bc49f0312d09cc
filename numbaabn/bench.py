"""CPU benchmark against the memory-bandwidth floor: ``python -m numbaabn bench``.

For every row, in one process: each operation is timed after warm-up (median of
several repeats), with the arrays it reads restored before each repeat outside the
timed region (the backward's z as well as its dz: rewritten with the same values, so
that z is where the stream will find it), and right after each timed repeat the
streaming kernel (a Numba parallel kernel that reads and writes an array in place,
``_stream``) is timed over the very arrays the operation touches, restored the same
way, once plain and once prefetching ahead in software as the kernels can: the faster
of the two is the floor's.
The floor of a row is

    floor = passes x input bytes / bandwidth,   bandwidth = streamed bytes / median stream time

==================  ==========================================  ======  ===============
operation           what runs                                   passes  streamed arrays
==================  ==========================================  ======  ===============
forward-train       statistics + forward, in place              3       x
forward-eval        forward with running statistics, in place   2       x
backward-train      backward_reduce + backward_train, in place  5       z and dz
fused-eval          ``layer.fuse()`` inference layer, in place   2       x
==================  ==========================================  ======  ===============

The ratio column is ``time / floor``. Why the stream runs on the operation's own
arrays, in the operation's conditions: the bandwidth depends on where the data
lives. On the 2-core machine this was written on, a 51 MB array streamed
back-to-back runs at ~80 GB/s (the cache holds it), two such arrays (the backward's
z and dz, 103 MB) or an array just copied from another one stream at ~30 GB/s (main
memory). A floor measured on a cache-hot array of the input's size alone would hold
the backward to a bandwidth its working set cannot have. That strict number is kept
as ``hot_bandwidth_GBps`` / ``ratio_to_hot_floor`` in the JSON (best of 7 passes over
one cache-hot array of the input's size, before and after the row).

Optional columns, measured side by side: a plain NumPy implementation of the same
math and PyTorch's ``BatchNorm + LeakyReLU(inplace=True)`` (forward, and
forward+backward through autograd), each as its time divided by numbaabn's.
"""
import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from numba import njit, prange

import numbaabn
from numbaabn import _config
from numbaabn.cpu import _AHEAD, _ahead

ROWS = [((32, 128, 56, 56), ("float32", "float16", "float64")),
        ((256, 4096), ("float32",)),
        ((8, 64, 16, 32, 32), ("float32",)),
        ((64, 3, 224, 224), ("float32",)),
        ((64, 2048, 7, 7), ("float32",)),
        ((8, 64, 8, 8), ("float32",))]
PASSES = {"forward-train": 3, "forward-eval": 2, "backward-train": 5, "fused-eval": 2}
# Passes over the operation's arrays that read them (forward-train: statistics, then the
# transform; backward-train: reduce, then apply over z and dz). Where a read-only pass
# takes as long as an in-place read+write pass, READS read-only passes are the least
# time an operation can take: ``read_bound_ratio`` is that time over the floor.
READS = {"forward-train": 2, "forward-eval": 1, "backward-train": 2, "fused-eval": 1}


# The floor's passes run both ways, plain and prefetching ``_AHEAD`` bytes ahead of each
# chunk as the kernels can (``cpu._ahead``), and the faster one counts, whatever the
# kernels do on this CPU (``NUMBAABN_PREFETCH``): the floor is the fastest pass known.
# On the Zen 3 EPYC the prefetched pass ran ~20% faster (one sequential stream per core
# kept too few lines in flight), on the Zen 4 the plain one 2-17%. (An argument of the
# passes, not a global: Numba's cache ignores globals.)
FLOOR_AHEAD = (None, _AHEAD)


@njit(parallel=True, nogil=True, cache=True)
def _stream_pass(a, s, ahead):
    n = a.size
    for t in prange((n + 1023) // 1024):
        r = a[t * 1024:min(t * 1024 + 1024, n)]
        _ahead(r, ahead)
        for i in range(len(r)):
            r[i] = r[i] * s


def _stream(a, s, ahead=None):
    """``a *= s`` in place over a 1-D array, in chunks of 1024 elements, each chunk
    prefetching ``ahead`` bytes ahead (None: not)."""
    _stream_pass(a, s, ahead)


# The read-only pass sums each chunk's words in uint32, wrapping: a sum widened to
# int64 (as it was until the twenty-sixth session) converts every word, and on the
# Intel Xeon of BENCHMARKS.md that made the pass 1.2x slower than an in-place pass
# (51 MB, 15 alternating repeats: 2.23-2.31 ms against 1.71-1.76 ms wrapping, 1.87-1.96
# ms in place), a read "bound" that the kernels' own reads were not held to.
@njit(parallel=True, nogil=True, cache=True)
def _read_pass(a, ahead):
    n = a.size
    total = 0
    for t in prange((n + 1023) // 1024):
        r = a[t * 1024:min(t * 1024 + 1024, n)]
        _ahead(r, ahead)
        s = np.uint32(0)
        for i in range(len(r)):
            s = np.uint32(s + r[i])
        total += s
    return total


def _read(a, ahead=None):
    """A read-only pass over a 1-D uint32 array, prefetching as ``_stream`` does; returns
    the words' sum modulo 2**32 (it keeps the loads)."""
    return int(_read_pass(a, ahead)) & 0xFFFFFFFF


def stream_bandwidth(nbytes, repeats=7):
    """Bytes per second of an in-place read+write pass over a cache-hot array of
    ``nbytes`` (best of ``repeats`` back-to-back passes of each ``FLOOR_AHEAD``)."""
    a = np.ones(max(nbytes // 4, 1024), np.float32)
    best = np.inf
    for ahead in FLOOR_AHEAD:
        _stream(a, np.float32(1.0), ahead)
        for _ in range(repeats):
            t = time.perf_counter()
            _stream(a, np.float32(1.0), ahead)
            best = min(best, time.perf_counter() - t)
    return 2 * a.nbytes / best


SWEEP_MB = (8, 32, 64, 96, 128, 256)


def stream_by_size(sizes_mb=SWEEP_MB, repeats=7):
    """Back-to-back streaming bandwidth (GB/s, best of ``repeats``) per array size:
    where it drops is how much of the cache this process gets."""
    return dict(MB=list(sizes_mb),
                hot_GBps=[stream_bandwidth(mb << 20, repeats) / 1e9 for mb in sizes_mb])


def _median_time(fn, prepare, repeats, warmup=2):
    times = []
    for i in range(warmup + repeats):
        prepare()
        t = time.perf_counter()
        fn()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return float(np.median(times))


BACK_TO_BACK_MAX = 1 << 20  # bytes: rows this small also get a back-to-back per-call time


def _per_call(fn, prepare, calls=200, repeats=7):
    """Median over ``repeats`` loops of the time per call of ``calls`` back-to-back
    calls (after one ``prepare``). For small tensors, where the fixed costs of a call
    dominate: interleaved with other operations and stream passes (``_paired_times``),
    each call also pays for caches and branch predictors the others left cold."""
    times = []
    for _ in range(repeats + 1):
        prepare()
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t) / calls)
    return float(np.median(times[1:]))


def _layout(shape, fmt):
    if fmt == "NHWC" and len(shape) > 2:
        return (shape[0],) + shape[2:] + (shape[1],)
    return shape


def _numpy_fwd_bwd(x, dz, w, b, channels_last, slope=0.01, eps=1e-5):
    """Plain NumPy forward (training) and backward of the same math."""
    axes = tuple(i for i in range(x.ndim) if i != (x.ndim - 1 if channels_last else 1))
    shape = [1] * x.ndim
    shape[x.ndim - 1 if channels_last else 1] = -1
    mean = x.mean(axes, keepdims=True)
    var = x.var(axes, keepdims=True)
    inv = 1 / np.sqrt(var + eps)
    xhat = (x - mean) * inv
    s = (np.abs(w) + eps).reshape(shape)
    y = s * xhat + b.reshape(shape)
    z = np.where(y >= 0, y, slope * y)
    g = np.where(y >= 0, dz, slope * dz)
    M = x.size // x.shape[x.ndim - 1 if channels_last else 1]
    dx = s * inv * (g - g.sum(axes, keepdims=True) / M
                    - xhat * (g * xhat).sum(axes, keepdims=True) / M)
    return z, dx


def _torch_times(x0, dz0, fmt, repeats, device="cpu", timer=None):
    """PyTorch BatchNorm + LeakyReLU(inplace=True): forward (no grad) and forward +
    backward through autograd, on ``device`` ("cpu" or "cuda"), timed by ``timer``
    (``_median_time``'s signature). None where torch (or its CUDA) is missing."""
    try:
        import torch
    except ImportError:
        return None
    if device == "cuda" and not torch.cuda.is_available():
        return None
    if (device == "cpu" and x0.dtype == np.float16) or (fmt == "NHWC" and x0.ndim != 4):
        return None
    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    timer = timer or _median_time
    C = x0.shape[-1] if fmt == "NHWC" else x0.shape[1]
    bn_cls = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d,
              5: torch.nn.BatchNorm3d}[x0.ndim]
    tdt = {np.dtype(np.float64): torch.float64, np.dtype(np.float16): torch.float16}.get(
        x0.dtype, torch.float32)
    bn = bn_cls(C).to(device=device, dtype=tdt)
    act = torch.nn.LeakyReLU(0.01, inplace=True)
    fmt_kw = {"memory_format": torch.channels_last} if fmt == "NHWC" else {}

    def tensor(a):
        a = np.moveaxis(a, -1, 1) if fmt == "NHWC" else a
        return torch.from_numpy(np.ascontiguousarray(a)).to(device).contiguous(**fmt_kw)

    xt, dzt = tensor(x0), tensor(dz0)

    def fwd():
        with torch.no_grad():
            act(bn(xt))

    def fwd_bwd():
        xg = xt.detach().requires_grad_(True)
        act(bn(xg)).backward(dzt)

    return {"torch_forward": timer(fwd, lambda: None, repeats),
            "torch_forward_backward": timer(fwd_bwd, lambda: None, repeats)}


def _paired_times(ops, repeats, warmup=2):
    """Median times of each operation, of the stream over its arrays and of a read-only
    pass over them, interleaved: ``ops`` maps a name to ``(fn, prepare, stream_arrays)``.
    Every pass starts from the same ``prepare`` (the same cache state). The passes run
    once per ``FLOOR_AHEAD``: the stream's time is the lower of its medians, the read's
    is that of the same setting. Returns per name (operation, stream, read, prefetched:
    whether the faster stream prefetched)."""
    times = {name: ([], {a: ([], []) for a in FLOOR_AHEAD}) for name in ops}
    one = np.uint32(1)

    def words(a):  # the same bytes as uint32: no float (denormal, NaN) effects
        return a.reshape(-1).view(np.uint8)[:a.nbytes // 4 * 4].view(np.uint32)

    def timed(prepare, fn):
        prepare()
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    for i in range(warmup + repeats):
        for name, (fn, prepare, arrays) in ops.items():
            op = timed(prepare, fn)
            passes = {ahead: (timed(prepare, lambda: [_stream(words(a), one, ahead)
                                                      for a in arrays]),
                              timed(prepare, lambda: [_read(words(a), ahead)
                                                      for a in arrays]))
                      for ahead in FLOOR_AHEAD}
            if i >= warmup:
                times[name][0].append(op)
                for ahead, tp in passes.items():
                    for k in (0, 1):
                        times[name][1][ahead][k].append(tp[k])
    out = {}
    for name, (op, passes) in times.items():
        med = {ahead: (np.median(st), np.median(rd)) for ahead, (st, rd) in passes.items()}
        best = min(FLOOR_AHEAD, key=lambda ahead: med[ahead][0])
        out[name] = (float(np.median(op)), float(med[best][0]), float(med[best][1]),
                     best is not None)
    return out


def bench_row(shape, dtype, fmt, repeats=7, compare=True):
    """Times, bandwidths and floors for one (shape, dtype, layout) row."""
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal(_layout(shape, fmt), dtype=np.float32).astype(dtype)
    dz0 = rng.standard_normal(x0.shape, dtype=np.float32).astype(dtype)
    channels_last = fmt == "NHWC"
    C = x0.shape[-1] if channels_last else x0.shape[1]
    pd = np.float64 if dtype == "float64" else np.float32
    w, b = np.ones(C, pd), np.zeros(C, pd)
    rm, rv = np.zeros(C, pd), np.ones(C, pd)
    data_format = "NHWC" if channels_last else "NCHW"
    x, dz, z = np.empty_like(x0), np.empty_like(dz0), x0.copy()
    kw = dict(activation="leaky_relu", data_format=data_format)
    hot = stream_bandwidth(x0.nbytes)
    fused = numbaabn.InPlaceABN(C, data_format=data_format,
                                dtype="float64" if dtype == "float64" else "float32").fuse()
    _, saved = numbaabn.inplace_abn_forward(z, w, b, rm, rv, training=True, **kw)
    z0 = z.copy()
    # before every pass, what it reads is rewritten (the same values): the backward
    # reads z and dz, so both are restored, else the stream timed after it would find z
    # where the backward had just left it and the backward z where three other
    # operations had evicted it
    restore_x, restore_zdz = (lambda: np.copyto(x, x0)), (lambda: (np.copyto(z, z0),
                                                                   np.copyto(dz, dz0)))
    ops = {
        "forward-train": (lambda: numbaabn.inplace_abn_forward(x, w, b, rm, rv, training=True,
                                                               **kw), restore_x, (x,)),
        "forward-eval": (lambda: numbaabn.inplace_abn_forward(x, w, b, rm, rv, training=False,
                                                              **kw), restore_x, (x,)),
        "backward-train": (lambda: numbaabn.inplace_abn_backward(dz, saved), restore_zdz,
                           (z, dz)),
        "fused-eval": (lambda: fused(x), restore_x, (x,)),
    }
    t = _paired_times(ops, repeats)
    hot = max(hot, stream_bandwidth(x0.nbytes))  # best of before and after
    row = dict(shape=list(shape), dtype=dtype, layout=fmt, bytes=int(x0.nbytes),
               elements=int(x0.size), hot_bandwidth_GBps=hot / 1e9)
    for op, (sec, stream_sec, read_sec, prefetched) in t.items():
        bw = 2 * len(ops[op][2]) * x0.nbytes / stream_sec
        floor = PASSES[op] * x0.nbytes / bw
        row[op] = dict(seconds=sec, GBps=PASSES[op] * x0.nbytes / sec / 1e9,
                       bandwidth_GBps=bw / 1e9, floor_seconds=floor, ratio_to_floor=sec / floor,
                       ratio_to_hot_floor=sec * hot / (PASSES[op] * x0.nbytes),
                       read_over_stream=read_sec / stream_sec, floor_prefetched=prefetched,
                       read_bound_ratio=READS[op] * read_sec / floor)
    if x0.nbytes <= BACK_TO_BACK_MAX:  # training forward renormalizes: values stay O(1)
        row["forward-train"]["back_to_back_seconds"] = _per_call(ops["forward-train"][0],
                                                                 restore_x)
    ours = t["forward-train"][0] + t["backward-train"][0]
    if compare and dtype != "float16":
        xn, dzn = x0.astype(np.float32 if dtype == "float32" else np.float64), dz0
        tn = _median_time(lambda: _numpy_fwd_bwd(xn, dzn, w, b, channels_last), lambda: None,
                          max(3, repeats // 2))
        row["numpy_over_numbaabn"] = tn / ours
        tt = _torch_times(x0, dz0, fmt, repeats)
        if tt:
            row["torch_forward_over_numbaabn"] = tt["torch_forward"] / t["forward-train"][0]
            row["torch_forward_backward_over_numbaabn"] = tt["torch_forward_backward"] / ours
            # PyTorch's forward+backward against numbaabn's floor for the same work
            # (forward-train + backward-train): below 4, "4x faster than PyTorch" would
            # mean running below the floor
            row["torch_forward_backward_over_floor"] = tt["torch_forward_backward"] / (
                row["forward-train"]["floor_seconds"] + row["backward-train"]["floor_seconds"])
    return row


_FIRST_CALL = """
import sys, time
if sys.argv[1:] == ["hide-scipy"]:
    sys.modules["scipy"] = None  # imports of SciPy fail at once, as where it is not installed
t0 = time.perf_counter()
import numpy as np
import numbaabn
t1 = time.perf_counter()
x = np.random.default_rng(0).standard_normal((8, 64, 16, 16)).astype(np.float32)
y, saved = numbaabn.inplace_abn_forward(x, np.ones(64, np.float32), np.zeros(64, np.float32))
t2 = time.perf_counter()
numbaabn.inplace_abn_backward(np.ones_like(x), saved)
t3 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2, int(sys.modules.get("scipy") is not None))
"""


def _scipy_installed():
    return importlib.util.find_spec("scipy") is not None


def first_call_costs():
    """Import, first forward and first backward, with a cold and then a warm cache
    (fresh processes; NUMBA_CACHE_DIR pointed at a new folder).

    Where SciPy is installed, the warm-cache call is also timed with SciPy hidden
    ("warm_no_scipy"): Numba's first compilation or cache load in a process probes
    for BLAS by importing ``scipy.linalg`` (0.3-0.4 s on the machine of
    BENCHMARKS.md), which a process without SciPy (numbaabn does not need it) skips."""
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        runs = [("cold", []), ("warm", [])]
        if _scipy_installed():
            runs.append(("warm_no_scipy", ["hide-scipy"]))
        for label, extra in runs:
            p = subprocess.run([sys.executable, "-c", _FIRST_CALL] + extra, env=env,
                               capture_output=True, text=True, check=True)
            imp, fwd, bwd, scipy = map(float, p.stdout.split())
            out[label] = dict(import_s=imp, first_forward_s=fwd, first_backward_s=bwd,
                              total_s=imp + fwd + bwd, scipy_imported=bool(scipy))
    return out


def parallel_region_cost(repeats=51):
    """Median seconds of a parallel region with one chunk of work (``_stream`` over
    1024 elements: what every multi-threaded kernel call pays to start and join the
    threads), called back to back and after restoring a 4 MB array (as the rows'
    operations are). With ``OMP_WAIT_POLICY=PASSIVE`` each region wakes sleeping
    threads: its cost is a fixed part of every parallel kernel of a sub-millisecond row."""
    tiny = np.ones(1024, np.float32)
    src, dst = np.ones(1 << 20, np.float32), np.empty(1 << 20, np.float32)
    _stream(tiny, np.float32(1.0))
    out = {}
    for label, prepare in (("back_to_back", lambda: None),
                           ("after_4MB_restore", lambda: np.copyto(dst, src))):
        out[label] = _median_time(lambda: _stream(tiny, np.float32(1.0)), prepare, repeats)
    return out


def run(rows=ROWS, layouts=("NCHW", "NHWC"), repeats=7, compare=True, first_call=True,
        progress=True):
    results = dict(machine=machine(), rows=[])
    todo = [(s, d, f) for s, dts in rows for d in dts for f in layouts
            if not (len(s) == 2 and f == "NHWC")]
    from tqdm import tqdm
    for shape, dtype, fmt in tqdm(todo, desc="bench", disable=not progress, leave=False):
        results["rows"].append(bench_row(shape, dtype, fmt, repeats, compare))
    results["dram_bandwidth_GBps"] = stream_bandwidth(1 << 30, repeats=3) / 1e9
    results["stream_by_size"] = stream_by_size()
    results["parallel_region_seconds"] = parallel_region_cost()
    if first_call:
        results["first_call"] = first_call_costs()
    return results


def machine():
    info = dict(cpus=os.cpu_count(), numba_threads=int(__import__("numba").get_num_threads()),
                python=sys.version.split()[0], numpy=np.__version__,
                numba=__import__("numba").__version__, numbaabn=numbaabn.__version__,
                scipy_installed=_scipy_installed(), prefetch=_config.PREFETCH,
                llvm_cpu=_config.host_cpu())
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f
                               if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:  # the kernels' speed depends on the vector width and the last-level cache
        with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as f:
            info["l3_cache"] = f.read().strip()
    except OSError:
        pass
    from llvmlite import binding
    features = binding.get_host_cpu_features()
    info["simd"] = ("AVX-512" if features.get("avx512f") else
                    "AVX2" if features.get("avx2") else "SSE")
    return info


def table(results):
    lines = [f"machine: {results['machine']}",
             f"DRAM streaming bandwidth (1 GiB array): {results['dram_bandwidth_GBps']:.1f} GB/s",
             "back-to-back streaming by array size: " + ", ".join(
                 f"{mb} MB {bw:.0f} GB/s" for mb, bw in zip(
                     results.get("stream_by_size", {}).get("MB", []),
                     results.get("stream_by_size", {}).get("hot_GBps", []))),
             "a parallel region (start and join the threads): " + ", ".join(
                 f"{k.replace('_', ' ')} {v * 1e6:.1f} µs"
                 for k, v in results.get("parallel_region_seconds", {}).items()),
             "", f"{'shape':22} {'dtype':8} {'layout':6} {'GB/s*':>11} {'pf':>2} {'read/rw':>9} "
             f"{'fwd-train':>16} {'fwd-eval':>16} {'bwd-train':>16} {'fused-eval':>16} "
             f"{'numpy':>6} "
             f"{'torch f':>7} {'torch fb':>8}"]
    for r in results["rows"]:
        cells = []
        for op in ("forward-train", "forward-eval", "backward-train", "fused-eval"):
            o = r[op]
            t = o["seconds"]
            cells.append(f"{t * 1e3:8.3f}ms {o['ratio_to_floor']:5.2f}x" if t >= 1e-3 else
                         f"{t * 1e6:8.1f}us {o['ratio_to_floor']:5.2f}x")
        opt = [f"{r[k]:6.1f}x" if k in r else "     -"
               for k in ("numpy_over_numbaabn", "torch_forward_over_numbaabn",
                         "torch_forward_backward_over_numbaabn")]
        lines.append(f"{str(tuple(r['shape'])):22} {r['dtype']:8} {r['layout']:6} "
                     f"{r['forward-train']['bandwidth_GBps']:5.1f}/"
                     f"{r['backward-train']['bandwidth_GBps']:5.1f} "
                     + "".join("yn"[not r[op].get("floor_prefetched", False)]
                               for op in ("forward-train", "backward-train")) + " "
                     f"{r['forward-train'].get('read_over_stream', np.nan):4.2f}/"
                     f"{r['backward-train'].get('read_over_stream', np.nan):4.2f} "
                     + " ".join(cells) + " "
                     + " ".join(opt))
    for r in results["rows"]:
        b2b = r["forward-train"].get("back_to_back_seconds")
        if b2b is not None:
            lines.append(f"{str(tuple(r['shape']))} {r['dtype']} {r['layout']}: forward-train "
                         f"{b2b * 1e6:.1f} us per call back to back")
    lines += ["", "time and time/floor per operation; GB/s*: streaming bandwidth measured on "
              "the operation's arrays in its conditions (forward / backward); pf: whether the "
              "faster stream, which sets the floor, prefetched in software (forward, backward); "
              "read/rw: a read-only "
              "pass over the same arrays in the same conditions, over that in-place pass "
              "(forward / backward); numpy / torch f / torch fb: their time over numbaabn's "
              "(forward+backward; torch f: forward only)"]
    if "first_call" in results:
        names = {"cold": "cold cache", "warm": "warm cache",
                 "warm_no_scipy": "warm cache, SciPy hidden"}
        for k, v in results["first_call"].items():
            lines.append(f"first call, {names.get(k, k)}: import {v['import_s']:.2f} s, forward "
                         f"{v['first_forward_s']:.2f} s, backward {v['first_backward_s']:.2f} s "
                         f"(total {v['total_s']:.2f} s)")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="numbaabn bench", description=__doc__.split("\n")[0])
    add_arguments(p)
    return run_from_args(p.parse_args(argv))


def add_arguments(p):
    p.add_argument("--json", help="also write the results as JSON to this path")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="first shape only, no comparisons")
    p.add_argument("--no-compare", action="store_true", help="skip NumPy and PyTorch")


def run_from_args(args):
    rows = ROWS[:1] if args.quick else ROWS
    results = run(rows=rows, repeats=args.repeats, compare=not (args.no_compare or args.quick),
                  first_call=not args.quick)
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


_config.serialize_cache_saves([_stream_pass, _read_pass])  # saves under a lock (_config)


if __name__ == "__main__":
    sys.exit(main())
