"""Numba options, read once from the environment and used by every kernel.

=========================  =========================================================
variable                   meaning (default)
=========================  =========================================================
``NUMBAABN_CACHE``         ``1``: cache compiled kernels on disk (``0`` disables)
``NUMBAABN_FASTMATH``      ``1``: fast-math flags that keep NaN/Inf semantics
                           (``nsz arcp contract afn reassoc``; never ``nnan``/``ninf``);
                           ``0`` disables, or a space-separated list of flags
``NUMBAABN_PARALLEL_MIN``  element count from which the multi-threaded kernels run
                           (``2097152``, 2**21; the backward's from a quarter of it,
                           ELU's from a sixteenth of those);
                           smaller tensors run as one serial item and pay no thread
                           start-up, which on the 2-core VM of BENCHMARKS.md costs
                           60-130 µs a kernel: lower it where threads start cheaply
                           or there are more cores
``NUMBAABN_PREFETCH``      ``auto``: large float32/float64 walks prefetch ahead in
                           software where the host CPU (LLVM's name for it) is
                           one of ``PREFETCH_CPUS``, measured to gain from it:
                           ``znver3`` (an AVX2 Zen 3 EPYC, ~20% faster) and
                           ``rocketlake`` (what LLVM calls the AVX-512 Intel
                           Xeon VM of BENCHMARKS.md: 0-18% less time a call,
                           7x7 rows too, and the channels-last reductions'
                           streams of rows up to 2 KB); not elsewhere (a Zen 4
                           EPYC, ``znver4``, ran 0-40% slower with it; unmeasured
                           CPUs get their hardware prefetcher alone). ``1`` /
                           ``0`` force it on / off
``NUMBA_THREADING_LAYER``  Numba's own variable; numbaabn works with every layer
``OMP_WAIT_POLICY``        set to ``PASSIVE`` by numbaabn unless already set: GNU
                           OpenMP threads (Numba's default layer on Linux) otherwise
                           spin after each kernel and fight NumPy's BLAS threads for
                           the cores (a training step mixing matmuls and BN ran 7x
                           slower on 2 cores). It takes effect when the OpenMP runtime
                           loads, i.e. if nothing loaded it before numbaabn's import.
=========================  =========================================================
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from numba.core import ir_utils as _ir_utils  # noqa: E402 (after the variable above)
from numba.core.compiler_lock import global_compiler_lock as _compiler_lock  # noqa: E402

_SAFE_FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})


def _read_fastmath(value):
    value = value.strip().lower()
    if value in ("0", "false", "no", "off", ""):
        return False
    if value in ("1", "true", "yes", "on"):
        return set(_SAFE_FASTMATH)
    flags = set(value.replace(",", " ").split())
    unsafe = flags - _SAFE_FASTMATH
    if unsafe:
        raise ValueError(
            f"NUMBAABN_FASTMATH: flags {sorted(unsafe)} are not allowed (they break "
            f"NaN/Inf semantics); choose among {sorted(_SAFE_FASTMATH)}")
    return flags


def _read_switch(value):
    return value.strip().lower() not in ("0", "false", "no", "off")


# The CPUs measured to gain from software prefetch, each with how far ahead (bytes) a
# channels-first chunk of 1024 elements asks for its lines (channels-last rows: 1024
# bytes everywhere, cpu._AHEAD), the shortest row or chunk (bytes) that prefetches, and
# how far ahead the four streams of the channels-last reductions ask for their rows'
# lines (None: they do not; see cpu._STREAM_ITEMS).
# On the Zen 3, 4096 bytes ahead of a chunk ran faster than 1024 ((32, 128, 56, 56)
# float32, 31-41 alternating calls, 4 runs: forward-train 1.60-1.64 -> 1.42-1.45x the
# floor, forward-eval 1.23 -> 1.11-1.15x; 8192 the same), and prefetching 7x7 rows
# made (64, 2048, 7, 7) forward-eval 1.4x slower. On the Xeon, 15 alternating calls,
# distances 0 / 512 / 1024 / 2048 / 4096 bytes: forward-train 1.73 / 1.62 / 1.63 / 1.70
# / 1.74x, forward-eval 1.19 / 1.14 / 1.15 / 1.25 / 1.33x; 7x7 rows prefetched, (64,
# 2048, 7, 7) NCHW, two runs of 13: forward-train 1.90 / 2.19 -> 1.60 / 1.82x,
# backward-train 1.66 / 1.92 -> 1.36 / 1.59x, forward-eval 1.29 / 1.43 -> 1.19 / 1.51x.
PREFETCH_CPUS = {"znver3": (4096, 512, None), "rocketlake": (1024, 0, 1024)}


def host_cpu():
    """LLVM's name for the CPU the kernels are compiled for (Numba's ``NUMBA_CPU_NAME``
    where set, else the host's: ``znver3``, ``znver4``, ``skylake-avx512``...)."""
    from numba.core import config
    import llvmlite.binding as ll
    name = config.CPU_NAME
    return name if name and name != "host" else ll.get_host_cpu_name()


def _read_prefetch(value, cpu):
    if value.strip().lower() == "auto":
        return cpu in PREFETCH_CPUS
    return _read_switch(value)


CACHE = _read_switch(os.environ.get("NUMBAABN_CACHE", "1"))
FASTMATH = _read_fastmath(os.environ.get("NUMBAABN_FASTMATH", "1"))
PARALLEL_MIN = int(os.environ.get("NUMBAABN_PARALLEL_MIN", str(1 << 21)))
_CPU = host_cpu()
PREFETCH = _read_prefetch(os.environ.get("NUMBAABN_PREFETCH", "auto"), _CPU)
# where it is forced on elsewhere: 1 KB ahead, rows from 512 bytes, streams not
PREFETCH_CHUNK, PREFETCH_ROW_MIN, PREFETCH_STREAMS = PREFETCH_CPUS.get(_CPU, (1024, 512, None))


def jit_options(parallel):
    """Keyword arguments for ``numba.njit`` of a kernel (serial or parallel twin)."""
    return dict(cache=CACHE, fastmath=FASTMATH, nogil=True, parallel=parallel,
                error_model="numpy")


# Numba (0.68) numbers the blocks of its IR with one process-wide counter, and an
# inline="always" call offsets the callee's labels by it, labels that the callee's own
# inlined calls had already offset by it: the counter doubles with each level of
# nesting, in every compilation. The kernels here nest 4-6 levels (kernel, rows,
# gradient, activation, load...): the counter grew ~17 decimal digits per
# specialization compiled (a training forward and backward of one dtype, layout and
# activation), and LLVM refuses names over 1024 characters ("name is too long": the
# block labels are "B<counter>"), so a process that had compiled ~60 of them (the
# test suite) could compile no more. Labels need only be unique within one
# function's IR, and a compilation offsets every IR it takes in (inlined, cached)
# past its own labels, so between compilations the counter can start again from 0.
LABELS_MAX = 10 ** 30


def restart_labels():
    """Set Numba's block-label counter back to 0 where it is above ``LABELS_MAX`` and
    no compilation is running (called before the kernels that may compile)."""
    label = _ir_utils._the_max_label
    if label._value <= LABELS_MAX or _compiler_lock.is_locked():  # or: mid-compilation
        return
    with _compiler_lock:  # waits for another thread's compilation
        label._value = 0


# Numba (0.68) adds an entry to a function's disk cache by reading the function's
# index, taking the first data-file number the index does not use, and writing the
# index, then the data file, each atomically but with no lock between the read and
# the writes. Two processes that compile two signatures of one function at once (the
# test suite's pytest-xdist workers, MPI ranks, a multiprocessing pool) can take the
# same number: one signature's entry is lost (a recompilation later), or, where the
# index of one and the data of the other are written last, the index maps a signature
# to the other's machine code, which the next process then runs on arrays of the
# wrong type. (numba#10128 reports the same kind of race between a gufunc's two
# files; a file lock is the fix its maintainers proposed.) The saves of numbaabn's
# functions take an exclusive lock on one file of their cache directory.
LOCK_NAME = "numbaabn-saves.lock"


def serialize_saves(cache_file):
    """Make ``cache_file`` (a Numba ``IndexDataCacheFile``) save its entries under an
    exclusive ``flock`` on ``LOCK_NAME`` in its directory (unlocked where that file
    cannot be opened). Idempotent; a no-op where ``fcntl`` is missing (Windows)."""
    try:
        import fcntl
    except ImportError:
        return
    if getattr(cache_file, "_numbaabn_serialized", False):
        return
    save = cache_file.save
    path = os.path.join(cache_file._cache_path, LOCK_NAME)

    def locked_save(key, data):
        try:
            lock = open(path, "a")
        except OSError:  # as Numba's own save would fail there
            return save(key, data)
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            save(key, data)

    cache_file.save = locked_save
    cache_file._numbaabn_serialized = True


def serialize_cache_saves(objects):
    """``serialize_saves`` on the disk cache of every Numba dispatcher in ``objects``
    (a module's globals: dispatchers, and dicts, tuples and lists of them)."""
    from numba.core.dispatcher import Dispatcher
    for o in objects:
        if isinstance(o, Dispatcher):
            cache_file = getattr(getattr(o, "_cache", None), "_cache_file", None)
            if cache_file is not None:  # None: not cached
                serialize_saves(cache_file)
        elif isinstance(o, dict):
            serialize_cache_saves(o.values())
        elif isinstance(o, (tuple, list)):
            serialize_cache_saves(o)
