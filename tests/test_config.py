"""Numba options are read in one place and overridable from the environment."""
import os
import subprocess
import sys
import time

import numpy as np

SCRIPT = """
import numpy as np, numbaabn
from numbaabn import _config
x = np.random.default_rng(0).standard_normal((4, 3, 5))
x0 = x.copy()
numbaabn.inplace_abn(x)
ref = (x0 - x0.mean((0, 2), keepdims=True)) / np.sqrt(x0.var((0, 2), keepdims=True) + 1e-5)
ref = np.where(ref >= 0, ref, 0.01 * ref)
assert np.allclose(x, ref, rtol=1e-12, atol=1e-12)
print(_config.CACHE, sorted(_config.FASTMATH) if _config.FASTMATH else False, _config.PARALLEL_MIN,
      _config.PREFETCH, _config.PREFETCH_CHUNK, _config.PREFETCH_ROW_MIN,
      _config.PREFETCH_STREAMS, _config.host_cpu())
"""


def run(**env):
    e = {k: v for k, v in os.environ.items() if not k.startswith("NUMBAABN_")}
    e.update(env)
    return subprocess.run([sys.executable, "-c", SCRIPT], env=e, capture_output=True,
                          text=True, timeout=600)


def test_defaults():
    p = run()
    assert p.returncode == 0, p.stderr
    *line, chunk, row_min, streams, cpu = p.stdout.split("\n")[0].split(" ")
    # NUMBAABN_PREFETCH=auto: on for the CPUs measured to gain, each with its distance
    # ahead of a channels-first chunk, its shortest prefetched row and its distance ahead
    # of the channels-last reductions' streams (1 KB, 512 bytes and none where it is
    # forced on elsewhere)
    auto = str(cpu in ("znver3", "rocketlake"))
    assert " ".join(line) == f"True ['afn', 'arcp', 'contract', 'nsz', 'reassoc'] 2097152 {auto}"
    assert (int(chunk), int(row_min), streams) == {
        "znver3": (4096, 512, "None"), "rocketlake": (1024, 0, "1024")}.get(cpu, (1024, 512, "None"))


def test_prefetch_auto_follows_the_cpu(monkeypatch):
    """``auto`` prefetches on the CPUs of PREFETCH_CPUS only; other values force it. The
    CPU is the one Numba compiles for: NUMBA_CPU_NAME where set (not "host")."""
    from numba.core import config
    from numbaabn import _config
    for cpu, setting, want in [("znver3", "auto", True), ("rocketlake", "auto", True),
                               ("znver4", " AUTO", False), ("skylake-avx512", "auto", False),
                               ("generic", "auto", False), ("znver4", "1", True),
                               ("znver3", "0", False), ("znver3", "off", False)]:
        assert _config._read_prefetch(setting, cpu) is want, (cpu, setting)
    monkeypatch.setattr(config, "CPU_NAME", "znver3")
    assert _config.host_cpu() == "znver3"
    monkeypatch.setattr(config, "CPU_NAME", "host")
    import llvmlite.binding as ll
    assert _config.host_cpu() == ll.get_host_cpu_name()


def test_overrides_still_compute_correctly():
    p = run(NUMBAABN_CACHE="0", NUMBAABN_FASTMATH="0", NUMBAABN_PARALLEL_MIN="1",
            NUMBAABN_PREFETCH="0")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split()[:4] == ["False", "False", "1", "False"]


def test_unsafe_fastmath_flags_are_refused():
    p = run(NUMBAABN_FASTMATH="nnan reassoc")
    assert p.returncode != 0 and "nnan" in p.stderr


def test_block_labels_restart_between_compilations(rng):
    """Numba's block-label counter doubles with each nested inline in a compilation
    (``_config.restart_labels``); past 1024 digits LLVM refused every new kernel (48
    tests of a clean-clone run failed so). The entry points restart it, and compiling
    with inlined calls works afterwards."""
    from numba import njit
    from numba.core import ir_utils
    import numbaabn

    label = ir_utils._the_max_label
    try:
        label.update(10 ** 1100)
        x = rng.standard_normal((4, 3, 5)).astype(np.float32)
        numbaabn.inplace_abn_forward(x, training=True)
        assert label._value < 10 ** 40
        label.update(10 ** 1100)
        x = rng.standard_normal((4, 3, 5)).astype(np.float32)
        y, saved = numbaabn.inplace_abn_forward(x)  # the backward restarts it too
        label.update(10 ** 1100)
        numbaabn.inplace_abn_backward(np.ones_like(x), saved)
        assert label._value < 10 ** 40

        @njit(inline="always")
        def step(v):  # blocks that survive into LLVM's IR, labelled by the counter
            if v > 0:
                return v + 1
            return v - 1

        @njit
        def total(n):  # at 10 ** 1100 this raised "name is too long"
            s = 0
            for i in range(n):
                s += step(i - 1)
            return s

        assert total(3) == -2 - 1 + 2
    finally:
        label._value = min(label._value, 10 ** 9)


SAVER = """
import sys, time
from numba.core.caching import IndexDataCacheFile
from numbaabn import _config
path, tag, start, n = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
f = IndexDataCacheFile(path, "probe", "stamp")
_config.serialize_saves(f)
_config.serialize_saves(f)  # idempotent: one lock, not two nested
while time.time() < start:
    pass
for i in range(n):
    f.save((tag, i), ("data", tag, i))
"""


def test_cache_saves_of_several_processes_keep_every_entry(tmp_path):
    """Four processes save 60 entries each to one function's disk cache at once, as
    pytest-xdist workers or MPI ranks compiling different signatures do: with
    ``_config.serialize_saves`` every entry is in the index and maps to its own data.
    (Without it, Numba's read-modify-write of the index lost entries and mapped keys to
    other keys' data in every run tried.)"""
    from numba.core.caching import IndexDataCacheFile

    from numbaabn import cpu
    assert cpu.fill_coefficients._cache._cache_file._numbaabn_serialized  # the package's
    start, n = time.time() + 5, 60
    procs = [subprocess.Popen([sys.executable, "-c", SAVER, str(tmp_path), str(k), str(start),
                               str(n)]) for k in range(4)]
    assert [p.wait(timeout=300) for p in procs] == [0] * 4
    f = IndexDataCacheFile(str(tmp_path), "probe", "stamp")
    for k in range(4):
        for i in range(n):
            assert f.load((str(k), i)) == ("data", str(k), i), (k, i)
