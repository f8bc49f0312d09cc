"""Numba options, read once from the environment and used by every kernel.

=========================  =========================================================
variable                   meaning (default)
=========================  =========================================================
``NUMBAABN_CACHE``         ``1``: cache compiled kernels on disk (``0`` disables)
``NUMBAABN_FASTMATH``      ``1``: fast-math flags that keep NaN/Inf semantics
                           (``nsz arcp contract afn reassoc``; never ``nnan``/``ninf``);
                           ``0`` disables, or a space-separated list of flags
``NUMBAABN_PARALLEL_MIN``  element count from which the multi-threaded kernels run
                           (``2097152``, 2**21; ELU's kernels from a sixteenth of it);
                           smaller tensors run as one serial item and pay no thread
                           start-up, which on the 2-core VM of BENCHMARKS.md costs
                           60-120 µs a kernel: lower it where threads start cheaply
                           or there are more cores
``NUMBAABN_PREFETCH``      ``1``: large float32/float64 walks prefetch ahead in
                           software (``0`` disables; so does the benchmark's
                           floor pass). It ran ~20% faster on an AVX2 Zen 3 EPYC
                           and 0-40% slower on a Zen 4 EPYC (BENCHMARKS.md)
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


CACHE = _read_switch(os.environ.get("NUMBAABN_CACHE", "1"))
FASTMATH = _read_fastmath(os.environ.get("NUMBAABN_FASTMATH", "1"))
PARALLEL_MIN = int(os.environ.get("NUMBAABN_PARALLEL_MIN", str(1 << 21)))
PREFETCH = _read_switch(os.environ.get("NUMBAABN_PREFETCH", "1"))


def jit_options(parallel):
    """Keyword arguments for ``numba.njit`` of a kernel (serial or parallel twin)."""
    return dict(cache=CACHE, fastmath=FASTMATH, nogil=True, parallel=parallel,
                error_model="numpy")
