"""Memory-footprint experiments: what in-place ABN saves in a training step.

A deep stack of blocks ``1x1 convolution -> BN + leaky ReLU`` on float32 feature
maps of ``N`` samples, ``C`` channels and ``H x W`` positions is trained (forward,
backward, SGD update). NumPy variants hold the maps channels-last as ``(N*H*W, C)``
rows, where a 1x1 convolution is one matrix product; BN runs with
``data_format="NC"`` on them. Variants:

* ``"standard"``: :class:`numbaabn.ABN`, which keeps a copy of its input and returns
  a new output (two buffers per block, as standard frameworks keep);
* ``"inplace"``: :class:`numbaabn.InPlaceABN`, which overwrites the convolution's
  output and recovers everything from it in backward (one buffer per block);
* ``"torch"``: PyTorch ``Conv2d(1x1) + BatchNorm2d + LeakyReLU(inplace=True)``
  with autograd, when torch is installed.

Every measurement runs in a fresh Python process, so one variant cannot pollute
another's peak. Per measurement:

``step_peak_bytes``     peak resident memory during the training steps above the
                        resident memory just before them (activations, gradients,
                        temporaries); from a psutil sampler (1 ms) and the kernel's
                        high-water mark (``VmHWM``, reset before the steps)
``total_peak_bytes``    the same above the process's baseline before the data and
                        the network existed (what a memory budget must hold)
``tracemalloc_peak_bytes``  Python-visible peak allocation of one step (NumPy
                        arrays; not torch's allocator)
``seconds_per_step``    median wall time of a training step
``losses``              the loss of every step (the variants compute the same math)

Script use::

    from numbaabn import experiments
    r = experiments.measure("inplace", depth=16, batch=32)          # one process
    rows = experiments.sweep("depth", [4, 8, 16], batch=32)         # both variants
    n = experiments.max_batch("inplace", budget=2 * 2**30, depth=16)
    results = experiments.run(out_dir="results")                    # the CLI's job
"""
import argparse
import csv
import gc
import json
import os
import subprocess
import sys
import threading
import time
import tracemalloc

import numpy as np

VARIANTS = ("standard", "inplace", "torch")
DEFAULTS = dict(depth=24, batch=64, channels=32, size=16, steps=2, seed=0)


def _has_torch():
    import importlib.util
    return importlib.util.find_spec("torch") is not None


def available_variants():
    return [v for v in VARIANTS if v != "torch" or _has_torch()]


# ---- memory probes ------------------------------------------------------------------

def _rss():
    import psutil
    return psutil.Process().memory_info().rss


def _reset_hwm():
    """Reset the kernel's peak-RSS counter (Linux >= 4.0); False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim_heap():
    """Give free heap pages back to the OS (glibc ``malloc_trim``; nothing elsewhere), so
    that memory a warm-up freed is not silently reused by the measured steps."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _hwm():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class _Sampler:
    """Samples the resident set size every ``interval`` seconds in a thread."""

    def __init__(self, interval=0.001):
        self.interval, self.peak = interval, _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


# ---- the networks --------------------------------------------------------------------

def _init(depth, channels, seed):
    rng = np.random.default_rng(seed)
    Ws = [(rng.standard_normal((channels, channels)) / np.sqrt(channels)).astype(np.float32)
          for _ in range(depth)]
    bs = [np.zeros(channels, np.float32) for _ in range(depth)]
    return Ws, bs


def _map_bytes(batch, channels, size):
    """Bytes of one float32 activation map of ``batch`` samples."""
    return 4 * batch * size * size * channels


def _data(batch, channels, size, seed):
    """Input and target maps, channels-last rows: shape (batch * size * size, channels)."""
    rng = np.random.default_rng(seed + 1)
    X = rng.standard_normal((batch * size * size, channels), dtype=np.float32)
    T = rng.standard_normal((batch * size * size, channels), dtype=np.float32)
    return X, T


class NumpyNet:
    """1x1 convolutions (one matrix product on (N*H*W, C) rows) and BN + leaky ReLU."""

    def __init__(self, variant, depth, channels, seed, lr=0.05):
        import numbaabn
        cls = numbaabn.InPlaceABN if variant == "inplace" else numbaabn.ABN
        self.Ws, self.bs = _init(depth, channels, seed)
        self.bns = [cls(channels, data_format="NC") for _ in range(depth)]
        self.lr = lr

    def prepare(self, X, T):
        return X, T

    def step(self, X, T):
        inputs = []
        h = X
        for W, b, bn in zip(self.Ws, self.bs, self.bns):
            inputs.append(h)          # the convolution keeps its input for backward
            h = bn(h @ W.T + b)       # InPlaceABN: the product's buffer, overwritten;
        diff = h - T                  # ABN: a new output (and a kept copy of its input)
        loss = float(np.mean(diff * diff))
        d = diff
        d *= 2.0 / diff.size
        del h, diff
        for i in range(len(self.Ws) - 1, -1, -1):
            d = self.bns[i].backward(d)
            gW = d.T @ inputs[i]
            gb = d.sum(axis=0)
            d = d @ self.Ws[i] if i else None
            inputs[i] = None
            self.Ws[i] -= self.lr * gW
            self.bs[i] -= self.lr * gb
            bn = self.bns[i]
            bn.weight -= self.lr * bn.weight_grad
            bn.bias -= self.lr * bn.bias_grad
            bn.zero_grad()
        return loss


class TorchNet:
    """The same network in PyTorch: Conv2d(1x1) + BatchNorm2d + LeakyReLU(inplace)."""

    def __init__(self, depth, channels, size, seed, lr=0.05):
        import torch
        self.size = size
        Ws, _ = _init(depth, channels, seed)
        layers = []
        for W in Ws:
            conv = torch.nn.Conv2d(channels, channels, 1)
            with torch.no_grad():
                conv.weight.copy_(torch.from_numpy(W)[:, :, None, None])
                conv.bias.zero_()
            layers += [conv, torch.nn.BatchNorm2d(channels, momentum=0.1),
                       torch.nn.LeakyReLU(0.01, inplace=True)]
        self.net = torch.nn.Sequential(*layers)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=lr)
        self.torch = torch

    def prepare(self, X, T):
        """NCHW tensors, as PyTorch convolutions expect (once, outside the steps)."""
        C, n = X.shape[1], X.shape[0] // (self.size * self.size)
        as_nchw = lambda a: self.torch.from_numpy(  # noqa: E731
            np.ascontiguousarray(a.reshape(n, self.size, self.size, C).transpose(0, 3, 1, 2)))
        return as_nchw(X), as_nchw(T)

    def step(self, x, t):
        torch = self.torch
        self.opt.zero_grad(set_to_none=True)
        loss = torch.mean((self.net(x) - t) ** 2)
        loss.backward()
        self.opt.step()
        return float(loss)


# ---- one measurement, in this process --------------------------------------------------

def _measure_here(variant, depth, batch, channels, size, steps, seed, trace=True):
    gc.collect()
    if variant == "torch":
        import torch
        torch.set_num_threads(os.cpu_count() or 1)
        make = lambda: TorchNet(depth, channels, size, seed)  # noqa: E731
    else:
        import numbaabn  # noqa: F401  (import and kernel loading are not the network)
        make = lambda: NumpyNet(variant, depth, channels, seed)  # noqa: E731
    # compile / load every kernel the measured steps use: which ones run depends on the
    # batch (serial small-tensor path, widened rows, parallel twins), so warm up at the
    # measured batch; loading one inside a measured step added 0.15-1.7 MiB of RSS to it
    warm = make()
    warm.step(*warm.prepare(*_data(batch, channels, size, seed)))
    del warm
    gc.collect()
    _trim_heap()
    rss0 = _rss()
    net = make()
    X, T = net.prepare(*_data(batch, channels, size, seed))
    gc.collect()
    before = _rss()
    hwm_ok = _reset_hwm()
    times, losses = [], []
    with _Sampler() as sampler:
        for _ in range(steps):
            t = time.perf_counter()
            losses.append(net.step(X, T))
            times.append(time.perf_counter() - t)
    peak = max(sampler.peak, _hwm() if hwm_ok else 0)
    traced = None
    if trace:  # one more step, under tracemalloc (slower: not timed)
        tracemalloc.start()
        start = tracemalloc.get_traced_memory()[0]
        losses.append(net.step(X, T))
        traced = tracemalloc.get_traced_memory()[1] - start
        tracemalloc.stop()
    return dict(variant=variant, depth=depth, batch=batch, channels=channels, size=size,
                steps=steps, step_peak_bytes=int(peak - before),
                total_peak_bytes=int(peak - rss0),
                tracemalloc_peak_bytes=None if traced is None else int(traced),
                seconds_per_step=float(np.median(times)), losses=losses,
                activation_bytes_per_buffer=_map_bytes(batch, channels, size),
                hwm_reset=hwm_ok)


def measure(variant, depth=DEFAULTS["depth"], batch=DEFAULTS["batch"],
            channels=DEFAULTS["channels"], size=DEFAULTS["size"], steps=DEFAULTS["steps"],
            seed=DEFAULTS["seed"], trace=True):
    """Measure one training configuration in a fresh Python process; returns a dict
    (see the module docstring for the fields). ``trace=False`` skips the extra step
    under tracemalloc. Identical configurations are measured once per session."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    spec = json.dumps(dict(variant=variant, depth=depth, batch=batch, channels=channels,
                           size=size, steps=steps, seed=seed, trace=trace), sort_keys=True)
    if spec not in _measured:
        p = subprocess.run([sys.executable, "-m", "numbaabn.experiments", "--worker", spec],
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"measurement {spec} failed:\n{p.stderr[-3000:]}")
        _measured[spec] = json.loads(p.stdout.strip().splitlines()[-1])
    return dict(_measured[spec])


_measured = {}


def sweep(axis, values, variants=None, progress=None, **config):
    """``measure`` every variant for each value of ``axis`` ("depth" or "batch")."""
    variants = variants or available_variants()
    rows = []
    for v in values:
        for var in variants:
            rows.append(measure(var, **dict(config, **{axis: v})))
            if progress:
                progress.update(1)
    return rows


def max_batch(variant, budget, progress=None, **config):
    """Largest batch whose training step fits in ``budget`` bytes (``total_peak_bytes``,
    measured). Memory is affine in the batch size, so two probes predict the answer;
    measured bisection around the prediction then finds it. Returns (batch, probes)."""
    config = {k: v for k, v in {**DEFAULTS, **config}.items() if k != "batch"}
    config.update(steps=1, trace=False)  # memory, not time: one step per probe
    probes = {}

    def fits(n):
        if n not in probes:
            probes[n] = measure(variant, batch=n, **config)["total_peak_bytes"]
            if progress:
                progress.update(1)
        return probes[n] <= budget

    step = lambda n: max(1, n // 100)  # noqa: E731  (1%: each probe is a training step)
    x0, x1 = 8, 32
    fits(x0), fits(x1)
    # a sample costs at least its input's bytes: RSS noise between two probes must not
    # make the line flat (a secant step once jumped to a batch of 50 million)
    least = _map_bytes(1, config["channels"], config["size"])
    for _ in range(6):  # secant steps on the measured (batch, bytes) line
        slope = max((probes[x1] - probes[x0]) / (x1 - x0), least)
        guess = max(1, min(x1 + int((budget - probes[x1]) / slope), 8 * x1))
        if guess in probes:
            break
        fits(guess)
        x0, x1 = x1, guess
    # measured memory is not perfectly monotonic in the batch (RSS noise of a few MiB):
    # the answer is the largest fitting batch below the smallest failing one
    bad = [n for n, b in probes.items() if b > budget]
    hi = min(bad) if bad else None
    lo = max((n for n, b in probes.items() if b <= budget and (hi is None or n < hi)), default=0)
    grow = step(lo)
    while hi is None:  # no failing batch measured yet: 1% above, then growing steps
        n = lo + grow
        if fits(n):
            lo, grow = n, max(grow, lo // 4)
        else:
            hi = n
    while hi - lo > step(max(lo, 1)):  # measured bisection, to 1%
        mid = (lo + hi) // 2 if lo else hi // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo, {int(k): int(v) for k, v in sorted(probes.items())}


# ---- the whole experiment (the CLI's main job) ----------------------------------------------

def parse_bytes(text):
    """'2GiB', '512MiB', '1.5GB', '1000000' -> bytes."""
    units = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2 ** 10, "mib": 2 ** 20,
             "gib": 2 ** 30}
    t = text.strip().lower()
    num = t.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = t[len(num):].strip()
    if unit not in units:
        raise ValueError(f"unknown unit in {text!r}; use B, KiB, MiB, GiB, KB, MB or GB")
    return int(float(num) * units[unit])


def run(out_dir="results", depths=(4, 8, 16, 24), batches=(16, 32, 64), budget=2 ** 28,
        variants=None, quiet=False, **config):
    """Depth sweep, batch sweep and the budget search; writes ``results.json``,
    ``results.csv`` and (with matplotlib) ``memory.png`` into ``out_dir``."""
    from tqdm import tqdm
    variants = variants or available_variants()
    config = {**{k: v for k, v in DEFAULTS.items() if k not in ("depth", "batch")}, **config}
    depth, batch = max(depths), max(batches)  # the headline configuration
    total = (len(depths) + len(batches)) * len(variants) + 4 * len(variants)
    bar = tqdm(total=total, desc="measuring", unit="run", disable=quiet, leave=False)
    t0 = time.perf_counter()
    by_depth = sweep("depth", depths, variants, bar, batch=batch, **config)
    by_batch = sweep("batch", batches, variants, bar, depth=depth, **config)
    budget_rows = {}
    for var in variants:
        n, probes = max_batch(var, budget, bar, depth=depth, **config)
        budget_rows[var] = dict(max_batch=n, probes=probes)
    bar.close()
    head = {r["variant"]: r for r in by_depth if r["depth"] == depth}
    ratio = head["inplace"]["step_peak_bytes"] / head["standard"]["step_peak_bytes"]
    curves = {v: head[v]["losses"] for v in variants}
    std = np.array(curves["standard"])
    results = dict(
        config=dict(config, depth=depth, batch=batch, depths=list(depths),
                    batches=list(batches), budget_bytes=budget, variants=variants,
                    dtype="float32", activation="leaky_relu", layout="(N*H*W, C) rows"),
        headline=dict(
            standard_step_peak_bytes=head["standard"]["step_peak_bytes"],
            inplace_step_peak_bytes=head["inplace"]["step_peak_bytes"],
            inplace_over_standard=ratio,
            max_batch={v: budget_rows[v]["max_batch"] for v in variants},
            batch_gain=budget_rows["inplace"]["max_batch"] / budget_rows["standard"]["max_batch"],
            loss_curve_max_rel_diff={
                v: float(np.max(np.abs(np.array(curves[v]) - std) / np.abs(std)))
                for v in variants if v != "standard"}),
        depth_sweep=by_depth, batch_sweep=by_batch, budget_search=budget_rows,
        seconds=time.perf_counter() - t0)
    write(results, out_dir)
    if not quiet:
        print(report(results))
    return results


def write(results, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    fields = ["sweep", "variant", "depth", "batch", "channels", "size", "step_peak_bytes",
              "total_peak_bytes", "tracemalloc_peak_bytes", "seconds_per_step"]
    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fields, extrasaction="ignore")
        w.writeheader()
        for name in ("depth_sweep", "batch_sweep"):
            for r in results[name]:
                w.writerow(dict(r, sweep=name.split("_")[0]))
    results["plot"] = _plot(results, out_dir)


def _plot(results, out_dir):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, name, axis in ((axes[0], "depth_sweep", "depth"), (axes[1], "batch_sweep", "batch")):
        for var in results["config"]["variants"]:
            rows = sorted((r for r in results[name] if r["variant"] == var), key=lambda r: r[axis])
            ax.plot([r[axis] for r in rows], [r["step_peak_bytes"] / 2 ** 20 for r in rows],
                    "o-", label=var)
        ax.set_xlabel(axis)
        ax.set_ylabel("peak training-step memory (MiB)")
        ax.grid(alpha=0.3)
        ax.legend()
    c = results["config"]
    fig.suptitle(f"numbaabn: 1x1 conv + BN + leaky ReLU, C={c['channels']}, "
                 f"{c['size']}x{c['size']}, float32")
    fig.tight_layout()
    path = os.path.join(out_dir, "memory.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(results):
    h, c = results["headline"], results["config"]
    mib = lambda b: f"{b / 2 ** 20:8.1f}"  # noqa: E731
    fmt = lambda b: "-" if b is None else mib(b)  # noqa: E731
    lines = [f"Training step of {c['depth']} blocks (1x1 conv + BN + leaky ReLU), batch "
             f"{c['batch']}, {c['channels']} channels, {c['size']}x{c['size']}, float32", "",
             f"{'sweep':7} {'variant':9} {'depth':>5} {'batch':>5} {'step peak MiB':>14} "
             f"{'tracemalloc MiB':>16} {'ms/step':>8}"]
    for name in ("depth_sweep", "batch_sweep"):
        for r in results[name]:
            lines.append(f"{name.split('_')[0]:7} {r['variant']:9} {r['depth']:5d} "
                         f"{r['batch']:5d} {mib(r['step_peak_bytes']):>14} "
                         f"{fmt(r['tracemalloc_peak_bytes']):>16} "
                         f"{r['seconds_per_step'] * 1e3:8.1f}")
    lines += ["", f"in-place peak / standard peak: {h['inplace_over_standard']:.3f}  "
                  f"({mib(h['inplace_step_peak_bytes']).strip()} MiB vs "
                  f"{mib(h['standard_step_peak_bytes']).strip()} MiB)",
              f"largest batch under {c['budget_bytes'] / 2 ** 30:g} GiB: " + ", ".join(
                  f"{v} {n}" for v, n in h["max_batch"].items())
              + f"  (in-place fits {h['batch_gain']:.2f}x more)",
              "loss curves vs standard, max relative difference: " + ", ".join(
                  f"{v} {d:.1e}" for v, d in h["loss_curve_max_rel_diff"].items())]
    plot = results.get("plot")
    lines.append(f"plot: {plot}" if plot else
                 "plot: not drawn (pip install 'numbaabn[plot]' for memory.png)")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="numbaabn experiment",
                                description="Memory footprint of in-place vs standard ABN.")
    add_arguments(p)
    args = p.parse_args(argv)
    return run_from_args(args)


def add_arguments(p):
    p.add_argument("--out", default="results", help="output folder (default: results)")
    p.add_argument("--budget", default="256MiB",
                   help="memory budget for the batch search (default 256MiB; e.g. 2GiB)")
    p.add_argument("--depths", type=int, nargs="+", default=[4, 8, 16, 24])
    p.add_argument("--batches", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--channels", type=int, default=DEFAULTS["channels"])
    p.add_argument("--size", type=int, default=DEFAULTS["size"], help="spatial side")
    p.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=None)
    p.add_argument("--fast", action="store_true", help="tiny sizes (seconds; for tests)")
    p.add_argument("--quiet", action="store_true")


def run_from_args(args):
    kw = dict(depths=args.depths, batches=args.batches, channels=args.channels,
              size=args.size, steps=args.steps, budget=parse_bytes(args.budget))
    if args.fast:
        kw.update(depths=[2, 4], batches=[8, 16], channels=8, size=16, steps=2,
                  budget=parse_bytes("256MiB"))
    run(out_dir=args.out, variants=args.variants, quiet=args.quiet, **kw)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(_measure_here(**json.loads(sys.argv[2]))))
    else:
        sys.exit(main())
