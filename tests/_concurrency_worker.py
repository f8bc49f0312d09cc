"""Run by test_concurrency.py in a fresh process (NUMBA_THREADING_LAYER set there):
four Python threads call the kernels at once, then a forked child calls them."""
import os
import sys
import threading

import numpy as np

import numbaabn


def work(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4, 16, 64, 64)).astype(np.float32)  # parallel kernels
    layer = numbaabn.InPlaceABN(16, activation="elu")
    y = layer(x.copy())
    dx = layer.backward(np.ones_like(x))
    return y, dx


def main():
    expected = [work(s) for s in range(4)]
    results = [None] * 4
    errors = []

    def run(i):
        try:
            for _ in range(5):
                results[i] = work(i)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for (y, dx), (ye, dxe) in zip(results, expected):
        assert np.array_equal(y, ye) and np.array_equal(dx, dxe)
    import numba
    layer_used = numba.threading_layer()
    pid = os.fork()
    if pid == 0:
        try:
            y, dx = work(0)
            # the child runs the serial twins: LLVM may vectorize their float32 block
            # sums with other lanes than the parallel twins', so compare to rounding
            ok = np.allclose(y, expected[0][0], rtol=1e-5, atol=1e-6) and np.allclose(
                dx, expected[0][1], rtol=1e-5, atol=1e-6)
        except BaseException as e:
            print("child failed:", repr(e), file=sys.stderr, flush=True)
            ok = False
        os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    print("OK", layer_used)


if __name__ == "__main__":
    sys.exit(main())
