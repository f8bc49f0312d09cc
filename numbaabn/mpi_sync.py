"""Synchronized statistics across workers.

The layer's ``comm`` is either an ``mpi4py`` communicator (anything with mpi4py's
buffer ``Allreduce(sendbuf, recvbuf, op)``, ``Get_rank()`` and ``Get_size()``) or an
object implementing the **allreduce-hook protocol**::

    class MyHook:
        rank: int                         # this worker, 0 <= rank < size
        size: int                         # number of workers
        def allreduce_sum(self, vec):     # vec: 1-D float64 NumPy array, the same
            ...                           # length on every worker; returns the
                                          # element-wise sum over all workers

``comm=None`` or a world of one worker means local statistics.

What travels, per call:

* forward: a fixed-size consistency check (channel count, dtype, layout, training
  flag, phase, and whether the worker's own validation passed), then one packed
  vector of every worker's ``(count, mean, M2)`` per channel. Each worker writes its
  triple into its own slot of a zero vector, so the sum is an exact all-gather;
  every worker then merges the slots in rank order with Chan et al.'s pairwise
  formula, which needs no global mean in advance and does not cancel, and gets
  bit-identical results (running statistics stay identical on every worker).
  Uneven shards and empty shards are exact; only the global count must exceed 1.
* backward: the same check, then one allreduce of the packed ``[S1, S2]``.

Parameter gradients stay local sums, as in data-parallel frameworks, which reduce
parameter gradients separately: :func:`allreduce_gradients` does that for a list of
arrays in one call.

A mismatch between workers raises ``RuntimeError`` on every worker, naming what
differs, instead of hanging or merging garbage. CUDA arrays need nothing special:
the O(C) vectors that travel are host arrays already.
"""
import numpy as np

__all__ = ["MPIHook", "as_hook", "merge_statistics", "allreduce_sum",
           "allreduce_gradients", "SynchronizationError"]

_META = 8  # ok flag, phase, C, dtype code, channels_last, training, spare, spare
_DTYPES = {"float16": 1, "float32": 2, "float64": 3}


class SynchronizationError(RuntimeError):
    """Workers disagree on what they are computing (raised on every worker)."""


class MPIHook:
    """The allreduce-hook protocol on top of an mpi4py communicator."""

    def __init__(self, comm):
        from mpi4py import MPI
        self.comm = comm
        self._sum = MPI.SUM
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()

    def allreduce_sum(self, vec):
        vec = np.ascontiguousarray(vec, dtype=np.float64)
        out = np.empty_like(vec)
        self.comm.Allreduce(vec, out, op=self._sum)
        return out


def as_hook(comm):
    """The hook for ``comm`` (an mpi4py communicator or a hook), or None when the
    statistics are local (``comm`` None or a world of one worker)."""
    if comm is None:
        return None
    if hasattr(comm, "allreduce_sum"):
        hook = comm
    elif hasattr(comm, "Allreduce") and hasattr(comm, "Get_size"):
        hook = _hook_cache.get(id(comm))
        if hook is None or hook.comm is not comm:
            hook = _hook_cache[id(comm)] = MPIHook(comm)
    else:
        raise TypeError(f"comm must be an mpi4py communicator or implement the allreduce "
                        f"hook protocol (rank, size, allreduce_sum); got {type(comm).__name__}")
    return hook if hook.size > 1 else None


_hook_cache = {}


def _gather(hook, row):
    """Exact all-gather through a sum: row i of the result is worker i's ``row``."""
    buf = np.zeros((hook.size, row.size))
    buf[hook.rank] = row
    out = np.asarray(hook.allreduce_sum(buf.ravel()), dtype=np.float64)
    if out.shape != (buf.size,):
        raise SynchronizationError(f"allreduce_sum returned shape {out.shape}, expected "
                                   f"({buf.size},)")
    return out.reshape(hook.size, row.size)


def check_consistent(hook, phase, C=0, dtype="float32", channels_last=False, training=True,
                     ok=True):
    """The fixed-size check that precedes every collective of a call.

    A worker whose own validation failed calls this with ``ok=False`` (then raises
    its own error); every other worker raises :class:`SynchronizationError`."""
    row = np.array([1.0 if ok else 0.0, phase, C, _DTYPES.get(str(dtype), 0),
                    float(channels_last), float(training), 0.0, 0.0])
    rows = _gather(hook, row)
    if not ok:
        return
    differs = (rows != rows[0]).any(axis=0)
    if not differs.any():
        return
    failed = np.flatnonzero(rows[:, 0] == 0.0)
    if failed.size:
        raise SynchronizationError(f"workers {failed.tolist()} raised before the collective "
                                   f"step; this worker stops too")
    j = int(np.flatnonzero(differs)[0])
    raise SynchronizationError(
        f"workers disagree on the {_META_NAMES[j]}: {rows[:, j].astype(int).tolist()} "
        f"(indexed by rank); every worker must call the layer with the same channels, "
        f"dtype, data_format and mode, and call forward and backward in step")


_META_NAMES = ["", "phase (1 forward, 2 backward)", "channel count",
               "dtype (1 float16, 2 float32, 3 float64)", "channels_last", "training flag",
               "", ""]


def merge_statistics(hook, count, mean, m2):
    """Global ``(count, mean, M2)`` from each worker's per-channel triple (one
    packed all-gather; the caller has run :func:`check_consistent`)."""
    C = mean.shape[0]
    rows = _gather(hook, np.concatenate(([float(count)], mean, m2)))
    n = 0.0
    mu = np.zeros(C)
    M2 = np.zeros(C)
    for r in rows:  # Chan et al., pairwise, in rank order: identical on every worker
        ni = r[0]
        if ni == 0:
            continue
        delta = r[1:1 + C] - mu
        tot = n + ni
        mu = mu + delta * (ni / tot)
        M2 = M2 + r[1 + C:] + delta * delta * (n * ni / tot)
        n = tot
    return int(n), mu, M2


def allreduce_sum(hook, sums):
    """Sum of the packed backward reductions ``[S1, S2]`` (shape (2, C)) over workers."""
    out = np.asarray(hook.allreduce_sum(np.ascontiguousarray(sums, dtype=np.float64).ravel()),
                     dtype=np.float64)
    return out.reshape(sums.shape)


def allreduce_gradients(comm, arrays, average=False):
    """Sum (or average) a list of gradient arrays over workers in one allreduce,
    in place; returns the list. Parameter gradients of the layers are local sums,
    so call this on them before the optimizer step."""
    arrays = [a for a in arrays if a is not None]
    hook = as_hook(comm)
    if hook is None or not arrays:
        return arrays
    packed = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])
    total = np.asarray(hook.allreduce_sum(packed), dtype=np.float64)
    if average:
        total /= hook.size
    offset = 0
    for a in arrays:
        a[...] = total[offset:offset + a.size].reshape(a.shape)
        offset += a.size
    return arrays
