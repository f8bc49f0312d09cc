"""Command line: ``python -m numbaabn [experiment|check]`` (or the ``numbaabn`` script).

``experiment``  (the default) memory footprint of in-place vs standard ABN in a
                training step; writes results.json, results.csv, memory.png
``bench``  CPU benchmark against the memory-bandwidth floor (BENCHMARKS.md)
``check``  one InPlaceABN layer: forward and backward against a float64 NumPy
           implementation, then the time of each next to NumPy's, side by side.
"""
import argparse
import sys
import time

import numpy as np


def _numpy_abn(x, w, b, slope=0.01, eps=1e-5):
    """Plain NumPy forward + backward of the same math (allocates freely)."""
    axes = (0, 2, 3)
    mean = x.mean(axes, keepdims=True)
    var = x.var(axes, keepdims=True)
    xhat = (x - mean) / np.sqrt(var + eps)
    s = (np.abs(w) + eps).reshape(1, -1, 1, 1)
    y = s * xhat + b.reshape(1, -1, 1, 1)
    z = np.where(y >= 0, y, slope * y)
    return z, xhat, s, var, y


def _numpy_backward(dz, y, xhat, s, var, slope=0.01, eps=1e-5):
    axes = (0, 2, 3)
    g = np.where(y >= 0, dz, slope * dz)
    M = dz.size // dz.shape[1]
    s1 = g.sum(axes, keepdims=True)
    s2 = (g * xhat).sum(axes, keepdims=True)
    return s / np.sqrt(var + eps) * (g - s1 / M - xhat * s2 / M)


def check(args):
    import numbaabn
    shape = tuple(args.shape)
    rng = np.random.default_rng(0)
    C = shape[1]
    x0 = rng.standard_normal(shape, dtype=np.float32) * 2 + 1
    dz0 = rng.standard_normal(shape, dtype=np.float32)
    layer = numbaabn.InPlaceABN(C)
    t0 = time.perf_counter()
    x = x0.copy()
    layer(x)
    dx = layer.backward(dz0.copy())
    first = time.perf_counter() - t0
    z_ref, xhat, s, var, y = _numpy_abn(x0.astype(np.float64), np.ones(C), np.zeros(C))
    dx_ref = _numpy_backward(dz0.astype(np.float64), y, xhat, s, var)
    ef = np.abs(x - z_ref).max() / np.abs(z_ref).max()
    eb = np.abs(dx - dx_ref).max() / np.abs(dx_ref).max()
    print(f"InPlaceABN {shape} float32: forward rel. error {ef:.2e}, backward {eb:.2e} "
          f"(first call incl. compile/cache load {first:.2f} s)")
    ok = ef < 1e-5 and eb < 1e-4
    times = {"numbaabn": [], "numpy": []}
    for _ in range(args.repeats):
        x = x0.copy()
        dz = dz0.copy()
        t = time.perf_counter()
        layer(x)
        layer.backward(dz)
        times["numbaabn"].append(time.perf_counter() - t)
        x = x0.copy()
        t = time.perf_counter()
        z, xh, s_, v, yy = _numpy_abn(x, np.ones(C, np.float32), np.zeros(C, np.float32))
        _numpy_backward(dz0, yy, xh, s_, v)
        times["numpy"].append(time.perf_counter() - t)
    tn, tp = np.median(times["numbaabn"]), np.median(times["numpy"])
    print(f"forward+backward, median of {args.repeats}: numbaabn {tn * 1e3:.1f} ms, "
          f"NumPy {tp * 1e3:.1f} ms: numbaabn is {tp / tn:.1f}x faster (same run)")
    print("check passed" if ok else "CHECK FAILED")
    return 0 if ok else 1


def main(argv=None):
    parser = argparse.ArgumentParser(prog="numbaabn", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    from . import experiments
    p = sub.add_parser("experiment", help="memory footprint of in-place vs standard ABN")
    experiments.add_arguments(p)
    p.set_defaults(func=experiments.run_from_args)
    from . import bench
    p = sub.add_parser("bench", help="CPU benchmark against the memory-bandwidth floor")
    bench.add_arguments(p)
    p.set_defaults(func=bench.run_from_args)
    p = sub.add_parser("check", help="forward/backward check and timing of one layer")
    p.add_argument("--shape", type=int, nargs=4, default=[16, 64, 56, 56])
    p.add_argument("--repeats", type=int, default=5)
    p.set_defaults(func=check)
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["experiment"] + list(argv or sys.argv[1:]))
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
