"""numbaabn in a chain of layers, as in a network: the time of its calls where each
layer's input was just written by the layer before it.

    python benchmarks/bench_chain.py [--shape 32,128,56,56] [--layout NCHW] [--layers 6]
        [--steps 20] [--against REV]

Each step runs a stand-in network of ``--layers`` layers: every layer's "convolution"
(a scaled copy on all threads, as a multi-threaded convolution writes its output from
every core) writes the next layer's buffer, then the in-place
BN+activation (forward-train) runs on it; the backward walks the chain back (each
"convolution" backward writes the next gradient), then an inference pass runs the fused
eval layers the same way. Only numbaabn's calls are timed; the table gives each
operation's median time per layer and its ratio to the floor measured in the same
places, in steps of their own after the timed ones (the benchmark's stream pass in place
of the layer's call: 3 passes' bytes for forward-train, 5 for backward-train, 2 for the
eval).

``bench.py`` times each operation again and again over the same arrays, restored by a
copy between calls; there the arrays an operation reads were streamed just before, and
what runs before the operation decides its speed (thirty-second session: prefetching
further ahead, and the forward's items taken dynamically, each measured 4-10% faster
that way, ran 3-18% slower here; BENCHMARKS.md). A change to the kernels should pay in
this chain too.

``--against REV`` runs the package of the git revision REV beside this one (exported
with ``git archive`` into a temporary folder, compiled on its first calls), the two
alternating step by step, and gives this / REV per operation with the 95% interval of
the median of the steps' ratios. ``--against HEAD`` with an unchanged working tree is
the control, the harness's own bias: 1.011 / 1.018 / 1.048 (forward-train /
backward-train / fused eval) on the machine of BENCHMARKS.md.
"""
import argparse
import importlib
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from numba import njit, prange

import numbaabn
from numbaabn import bench

OPS = ("forward-train", "backward-train", "fused-eval")


@njit(parallel=True, nogil=True, cache=True)
def _conv(a, s, out):
    """The stand-in convolution: ``out = a * s`` on all threads."""
    src, dst = a.reshape(-1), out.reshape(-1)
    for i in prange(src.size):
        dst[i] = src[i] * s


def _export(rev, folder):
    """The package of git revision ``rev`` as the module ``numbaabn_against``."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    archive = subprocess.run(["git", "-C", root, "archive", rev, "numbaabn"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    os.rename(os.path.join(folder, "numbaabn"), os.path.join(folder, "numbaabn_against"))
    sys.path.insert(0, folder)
    return importlib.import_module("numbaabn_against")


class Chain:
    """The buffers and parameters of a chain of ``layers`` layers."""

    def __init__(self, shape, layout, layers, packages):
        rng = np.random.default_rng(0)
        self.layout, self.layers = layout, layers
        C = shape[-1] if layout == "NHWC" else shape[1]
        self.x = [rng.standard_normal(shape, dtype=np.float32) for _ in range(layers + 1)]
        self.g = [np.ones(shape, np.float32) for _ in range(layers + 1)]
        self.w, self.b = np.ones(C, np.float32), np.zeros(C, np.float32)
        self.running = [(np.zeros(C, np.float32), np.ones(C, np.float32))
                        for _ in range(layers)]
        self.fused = {name: [p.InPlaceABN(C, data_format=layout).fuse()
                             for _ in range(layers)] for name, p in packages.items()}

    def step(self, name, package):
        """Seconds per layer of each operation of one training and one inference step."""
        x, g, L = self.x, self.g, self.layers
        t = dict.fromkeys(OPS, 0.0)
        saved = []
        for i in range(L):
            _conv(x[i], np.float32(1.01), x[i + 1])
            t0 = time.perf_counter()
            _, s = package.inplace_abn_forward(x[i + 1], self.w, self.b, *self.running[i],
                                               data_format=self.layout)
            t["forward-train"] += time.perf_counter() - t0
            saved.append(s)
        g[L].fill(1.0)
        for i in reversed(range(L)):
            t0 = time.perf_counter()
            package.inplace_abn_backward(g[i + 1], saved[i])
            t["backward-train"] += time.perf_counter() - t0
            _conv(g[i + 1], np.float32(0.99), g[i])
        for i in range(L):
            _conv(x[i], np.float32(1.01), x[i + 1])
            t0 = time.perf_counter()
            self.fused[name][i](x[i + 1])
            t["fused-eval"] += time.perf_counter() - t0
        return {op: v / L for op, v in t.items()}

    def floor_step(self):
        """Seconds per layer of the stream pass in the places of the layers' calls: over
        x (the forwards) and over z and dz (the backward)."""
        x, g, L, one = self.x, self.g, self.layers, np.uint32(1)

        def stream(*arrays):
            t0 = time.perf_counter()
            for a in arrays:
                bench._stream(a.reshape(-1).view(np.uint32), one, bench._AHEAD)
            return time.perf_counter() - t0
        fwd = bwd = 0.0
        for i in range(L):
            _conv(x[i], np.float32(1.01), x[i + 1])
            fwd += stream(x[i + 1])
        for i in reversed(range(L)):
            bwd += stream(x[i + 1], g[i + 1])
            _conv(g[i + 1], np.float32(0.99), g[i])
        return fwd / L, bwd / L


def run(shape, layout, layers, steps, against=None):
    packages = {"this": numbaabn}
    with tempfile.TemporaryDirectory() as folder:
        if against:
            packages["against"] = _export(against, folder)
        chain = Chain(shape, layout, layers, packages)
        times = {name: {op: [] for op in OPS} for name in packages}
        names = list(packages)
        for k in range(steps + 2):  # two steps of warm-up (compilation, first touch)
            for name in (names if k % 2 else names[::-1]):
                t = chain.step(name, packages[name])
                if k >= 2:
                    for op in OPS:
                        times[name][op].append(t[op])
        # the floor's steps apart: between the timed ones, their passes over every
        # buffer on both threads would change what each step starts from
        floors = [chain.floor_step() for _ in range(steps)]
    # an in-place stream pass moves an array's bytes twice: the floor of an operation
    # of bench.PASSES passes is that many halves of a pass over one of its arrays
    stream_x = np.median([f[0] for f in floors])
    stream_zdz = np.median([f[1] for f in floors]) / 2  # per array
    floor = {op: bench.PASSES[op] / 2 * (stream_zdz if op == "backward-train" else stream_x)
             for op in OPS}
    rows = []
    rng = np.random.default_rng(1)
    for op in OPS:
        mine = np.array(times["this"][op])
        row = dict(op=op, seconds=float(np.median(mine)),
                   ratio_to_floor=float(np.median(mine) / floor[op]))
        if against:
            ratio = mine / np.array(times["against"][op])
            boot = [np.median(rng.choice(ratio, ratio.size)) for _ in range(1000)]
            row.update(against_seconds=float(np.median(times["against"][op])),
                       this_over_against=float(np.median(ratio)),
                       interval=[float(np.percentile(boot, 2.5)),
                                 float(np.percentile(boot, 97.5))])
        rows.append(row)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="32,128,56,56",
                   help="the layers' input shape, channels where --layout puts them")
    p.add_argument("--layout", default="NCHW", choices=("NCHW", "NHWC"))
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--against", help="a git revision to compare with, step by step")
    args = p.parse_args(argv)
    shape = tuple(int(s) for s in args.shape.split(","))
    rows = run(shape, args.layout, args.layers, args.steps, args.against)
    print(f"{shape} float32 {args.layout}, {args.layers} layers, {args.steps} steps "
          f"(median per layer; floor: the stream pass in the same places)")
    for r in rows:
        line = f"{r['op']:15} {r['seconds'] * 1e3:8.3f} ms  {r['ratio_to_floor']:5.2f}x floor"
        if "this_over_against" in r:
            lo, hi = r["interval"]
            line += (f"   {args.against}: {r['against_seconds'] * 1e3:8.3f} ms, this / it "
                     f"{r['this_over_against']:.3f} [{lo:.3f}, {hi:.3f}]")
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
