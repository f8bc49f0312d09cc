"""In place for real: the output is the input, the gradient is the incoming
gradient, and nothing of the input's size is allocated."""
import tracemalloc

import numpy as np
import pytest

import numbaabn
from numbaabn import cpu


@pytest.mark.parametrize("shape,fmt", [((64, 64, 64, 64), "NCHW"), ((64, 64, 64, 64), "NHWC"),
                                       ((4, 1, 2048, 2048), "NCHW")])
@pytest.mark.parametrize("act", ["leaky_relu", "elu"])
def test_forward_backward_allocate_under_1mb(shape, fmt, act):
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)  # 64 MB
    dz = np.ones(shape, np.float32)
    C = shape[1] if fmt == "NCHW" else shape[-1]
    layer = numbaabn.InPlaceABN(C, activation=act, data_format=fmt)
    layer.backward(layer(x[:2].copy()) * 0 + 1)  # compile outside the traced region
    layer.zero_grad()
    tracemalloc.start()
    try:
        y = layer(x)
        dx = layer.backward(dz)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert y is x and dx is dz
    assert x.nbytes == 64 * 2 ** 20
    assert peak < 2 ** 20, f"peak traced allocation {peak} bytes"


def test_functional_identity_of_results():
    x = np.random.default_rng(1).standard_normal((4, 3, 5))
    y, saved = numbaabn.inplace_abn_forward(x)
    dz = np.ones_like(x)
    dx, _, _ = numbaabn.inplace_abn_backward(dz, saved)
    assert y is x and dx is dz


def test_kernels_allocate_nothing(monkeypatch):
    """The compiled kernels (the code that walks the input's elements) contain no heap
    allocation: their temporaries (the O(C) partial sums) are allocated by the Python
    layer, where tracemalloc sees them. Compiled per-channel code allocates its own
    (``fill_coefficients``; ``cpu._ONE``, the one-call training forward and backward,
    which run these kernels: O(blocks x C), blocks <= ``cpu.ITEMS``, whatever the batch
    and spatial size).
    Kernels are recompiled without the disk cache (cached code has no IR). The layer
    runs once more with the one-call functions refused, so that every kernel is
    dispatched on its own: where the one-call functions load from the disk cache, their
    kernels are not compiled in the process, and ``signatures`` would miss them.
    Checked: the float32 contiguous signatures of the families this test runs, whatever
    other tests compiled in the process before (the same code for other dtypes and
    layouts; rechecking each of them took 400 s of the suite)."""
    import numba

    from numbaabn import _config
    x = np.random.default_rng(2).standard_normal((2, 3, 4)).astype(np.float32)
    for one_call in (True, False):
        if not one_call:
            for name in ("forward_train_one", "forward_eval_one", "backward_train_one"):
                monkeypatch.setattr(cpu, name, lambda *args: None)
        for fmt in ("NCHW", "NHWC"):
            for act in ("leaky_relu", "elu"):
                layer = numbaabn.InPlaceABN(3 if fmt == "NCHW" else 4, data_format=fmt,
                                            activation=act)
                layer.backward(np.ones_like(layer(x.copy())))
                layer.eval()  # the eval backward runs the centred apply
                layer.backward(np.ones_like(layer(x.copy())))
    checked = set()
    for (name, fam), (serial, _) in cpu._KERNELS.items():
        if fam not in ("any", "leaky", "elu"):
            continue
        opts = dict(_config.jit_options(False), cache=False)
        fresh = numba.njit(**opts)(serial.py_func)
        for sig in serial.signatures:
            if sig[0].dtype != numba.float32 or sig[0].layout != "C":
                continue
            fresh.compile(sig)
            ir = fresh.inspect_llvm(sig)
            assert "define" in ir
            assert "NRT_MemInfo_alloc" not in ir and "NRT_Allocate" not in ir, name
            checked.add((name, fam))
    # every kernel of both layouts: statistics, forward (centred, plain), reduce, apply
    # (centred, plain); the ELU family as the leaky one
    assert len(checked) == 2 * (1 + 2 * (2 + 1 + 2)), sorted(checked)
