"""CUDA benchmark against the device's copy bandwidth (run on a machine with a GPU).

    python benchmarks/bench_cuda.py [--shape 64 256 56 56] [--repeats 20] [--json out.json]
                                    [--host-costs]

Forward-train, forward-eval and backward-train for float32 and float16, both layouts:
median time (CUDA events), effective GB/s, and the ratio to the floor, where the floor
is bytes moved (3x / 2x / 5x the input, as in the CPU benchmark) divided by the
device's copy bandwidth measured in the same run (a device-to-device copy of the
input's size: 2x its bytes per copy; the best of cuMemcpyDtoD, an in-place streaming
kernel and PyTorch's device copy). Beside it, PyTorch BatchNorm2d + LeakyReLU on
the same device when torch with CUDA is available. Under NUMBA_ENABLE_CUDASIM=1 it
runs (slowly, with tiny shapes) only to check that it works.
"""
import argparse
import json

import numpy as np
from numba import cuda

import numbaabn
from numbaabn.bench import _median_time, _torch_times

PASSES = {"forward-train": 3, "forward-eval": 2, "backward-train": 5}


def timed(fn, prepare, repeats):
    times = []
    for i in range(repeats + 2):
        prepare()
        start, end = cuda.event(), cuda.event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        if i >= 2:
            times.append(start.elapsed_time(end) / 1e3)  # milliseconds -> seconds
    return float(np.median(times))


@cuda.jit
def _scale_in_place(a, f):
    """a *= f over a flat array, four loads in flight per thread (as numbaabn's kernels)."""
    T = cuda.gridsize(1)
    i = cuda.grid(1)
    n = a.size
    while i + 3 * T < n:
        u0, u1, u2, u3 = a[i], a[i + T], a[i + 2 * T], a[i + 3 * T]
        a[i], a[i + T], a[i + 2 * T], a[i + 3 * T] = u0 * f, u1 * f, u2 * f, u3 * f
        i += 4 * T
    while i < n:
        a[i] = a[i] * f
        i += T


def copy_bandwidth(nbytes, repeats):
    """Bytes read and written per second: the best of a device-to-device copy
    (cuMemcpyDtoD), an in-place streaming kernel, and PyTorch's device copy (a kernel;
    when torch with CUDA is installed), each over nbytes."""
    a = cuda.device_array(nbytes // 4, dtype=np.float32)
    b = cuda.device_array(nbytes // 4, dtype=np.float32)
    a.copy_to_device(np.ones(a.size, np.float32))
    times = [timed(lambda: b.copy_to_device(a), lambda: None, repeats)]
    blocks = getattr(cuda.get_current_device(), "MULTIPROCESSOR_COUNT", 1) * 8
    times.append(timed(lambda: _scale_in_place[blocks, 256](a, np.float32(1)), lambda: None,
                       repeats))
    try:
        import torch
        if torch.cuda.is_available():
            ta, tb = torch.as_tensor(a, device="cuda"), torch.as_tensor(b, device="cuda")
            times.append(timed(lambda: tb.copy_(ta), lambda: None, repeats))
    except ImportError:
        pass
    return 2 * a.nbytes / min(times)


@cuda.jit
def _twelve(a, b, c, n, s, ds, dc, coef, x, y, z, flag):  # the element-wise kernel's arguments
    if cuda.grid(1) == 0 and flag:
        a[0] = b[0] + c[0] + coef[0] + x + y + z + n + s + ds + dc


@cuda.jit
def _three(a, b, c):
    if cuda.grid(1) == 0:
        a[0] = b[0] - c[0]  # called with a = b = c: stays finite


def host_costs(C=2560):
    """Host microseconds of the small operations a call is made of: copies of a C-element
    float32 array through the device arrays' methods and through the driver functions
    numbaabn calls, an allocation, and kernel launches with 12 and 3 arguments."""
    from numba.cuda.cudadrv import driver
    d = cuda.device_array(C, np.float32)
    h = np.ones(C, np.float32)
    pinned = cuda.pinned_array(C, np.float32)
    one = np.float32(1)
    _twelve[1, 32](d, d, d, C, 1, 0, 0, d, one, one, one, False)
    _three[1, 32](d, d, d)
    ops = {
        "copy_to_device (method)": lambda: d.copy_to_device(h),
        "host_to_device (driver)": lambda: driver.host_to_device(d, h, h.nbytes),
        "copy_to_host (method)": lambda: d.copy_to_host(pinned),
        "device_to_host (driver)": lambda: driver.device_to_host(pinned, d, h.nbytes),
        "cuda.to_device": lambda: cuda.to_device(h),
        "cuda.device_array": lambda: cuda.device_array(C, np.float32),
        "launch, 12 arguments": lambda: _twelve[1, 32](d, d, d, C, 1, 0, 0, d, one, one, one,
                                                       False),
        "launch, 3 arguments": lambda: _three[1, 32](d, d, d),
    }
    # host time of each call (until it returns), the device idle before each
    return {name: _median_time(fn, cuda.synchronize, 200) * 1e6 for name, fn in ops.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", type=int, nargs=4, default=[64, 256, 56, 56])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--json")
    p.add_argument("--host-costs", action="store_true",
                   help="also time the host side of copies and launches (µs)")
    args = p.parse_args()
    if args.host_costs:
        costs = host_costs()
        for name, us in costs.items():
            print(f"{name:28} {us:8.1f} µs host")
    rows = []
    for dtype in (np.float32, np.float16):
        for fmt in ("NCHW", "NHWC"):
            N, C, H, W = args.shape
            shape = (N, C, H, W) if fmt == "NCHW" else (N, H, W, C)
            rng = np.random.default_rng(0)
            x0 = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
            dz0 = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
            x, dz = cuda.to_device(x0), cuda.to_device(dz0)
            x0d, dz0d = cuda.to_device(x0), cuda.to_device(dz0)
            w = cuda.to_device(np.ones(C, np.float32))
            b = cuda.to_device(np.zeros(C, np.float32))
            rm = cuda.to_device(np.zeros(C, np.float32))
            rv = cuda.to_device(np.ones(C, np.float32))
            kw = dict(activation="leaky_relu", data_format=fmt)
            bw = copy_bandwidth(x0.nbytes, args.repeats)
            t = {"forward-train": timed(
                    lambda: numbaabn.inplace_abn_forward(x, w, b, rm, rv, training=True, **kw),
                    lambda: x.copy_to_device(x0d), args.repeats),
                 "forward-eval": timed(
                    lambda: numbaabn.inplace_abn_forward(x, w, b, rm, rv, training=False, **kw),
                    lambda: x.copy_to_device(x0d), args.repeats)}
            x.copy_to_device(x0d)
            _, saved = numbaabn.inplace_abn_forward(x, w, b, rm, rv, training=True, **kw)
            t["backward-train"] = timed(lambda: numbaabn.inplace_abn_backward(dz, saved),
                                        lambda: dz.copy_to_device(dz0d), args.repeats)
            row = dict(shape=list(shape), dtype=np.dtype(dtype).name, layout=fmt,
                       copy_GBps=bw / 1e9)
            for op, sec in t.items():
                floor = PASSES[op] * x0.nbytes / bw
                row[op] = dict(seconds=sec, GBps=PASSES[op] * x0.nbytes / sec / 1e9,
                               ratio_to_floor=sec / floor)
            tt = _torch_times(x0, dz0, fmt, args.repeats, device="cuda", timer=timed)
            if tt:
                row["torch_forward_over_numbaabn"] = tt["torch_forward"] / t["forward-train"]
                row["torch_forward_backward_over_numbaabn"] = (
                    tt["torch_forward_backward"] / (t["forward-train"] + t["backward-train"]))
            rows.append(row)
            print(f"{str(tuple(shape)):22} {row['dtype']:8} {fmt:5} copy {bw / 1e9:7.1f} GB/s  "
                  + "  ".join(f"{op} {row[op]['seconds'] * 1e3:8.3f} ms "
                              f"{row[op]['GBps']:7.1f} GB/s {row[op]['ratio_to_floor']:5.2f}x"
                              for op in PASSES)
                  + ("  torch fwd {:.2f}x fwd+bwd {:.2f}x".format(
                      row["torch_forward_over_numbaabn"],
                      row["torch_forward_backward_over_numbaabn"]) if tt else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(rows=rows, host_costs_us=costs) if args.host_costs else rows, f,
                      indent=2)


if __name__ == "__main__":
    main()
