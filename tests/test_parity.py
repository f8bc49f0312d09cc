"""Kernels against the float64 reference: dtypes x activations x layouts x ranks x
modes x weight modes, through the module API (which covers the mode flags)."""
import sys

import numba
import numpy as np
import pytest

import numbaabn
import reference as ref
from numbaabn import _config, _scalar, cpu
from conftest import assert_close, assert_f16_forward, assert_sums_close, channels_of

SHAPES = {2: (9, 4), 3: (3, 4, 7), 4: (2, 3, 5, 4), 5: (2, 1, 3, 4, 3)}
MODES = ["train", "eval", "use_global_stats", "trainable_statistics"]


def make_layer(cls, C, dtype, act, cl, mode, weight_mode):
    kw = dict(activation=act, data_format="NHWC" if cl else "NCHW",
              dtype="float64" if dtype == np.float64 else "float32", weight_mode=weight_mode,
              use_global_stats=mode == "use_global_stats",
              trainable_statistics=mode == "trainable_statistics")
    layer = cls(C, **kw)
    if mode in ("eval", "trainable_statistics"):
        layer.eval()
    return layer


def init_params(layer, rng, weight_mode, dtype=np.float64):
    C = layer.num_features
    w = rng.standard_normal(C) * 1.5
    w = np.where(np.abs(w) < 0.2, -0.7, w)  # signed in place needs |w| >= threshold
    b = rng.standard_normal(C)
    if weight_mode == "abs" and dtype != np.float16:
        # sign(0) = +1 and scale = eps; b = 0 keeps x̂ = (y - b)/eps exact (see
        # test_numerics.py for the accuracy limit with b != 0). Not float16: y = eps·x̂
        # is subnormal there, so the output itself has lost x̂.
        w[0] = b[0] = 0.0
    layer.weight[:] = w
    layer.bias[:] = b
    layer.running_mean[:] = rng.standard_normal(C)
    layer.running_var[:] = rng.random(C) + 0.5


@pytest.mark.parametrize("weight_mode", ["abs", "signed"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("rank", [2, 3, 4, 5])
@pytest.mark.parametrize("cl", [False, True], ids=["NCHW", "NHWC"])
@pytest.mark.parametrize("act", ["identity", "leaky_relu", "elu"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_inplace_matches_reference(dtype, act, cl, rank, mode, weight_mode, rng):
    shape = SHAPES[rank]
    if cl and rank > 2:
        shape = (shape[0],) + shape[2:] + (shape[1],)
    check_inplace(dtype, act, cl, shape, mode, weight_mode, rng)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("shape", [(300, 4), (4, 10, 10, 3)], ids=["rank2", "rank4"])
@pytest.mark.parametrize("act", ["identity", "leaky_relu", "elu"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_widened_channels_last_rows_match_reference(dtype, act, shape, mode, rng, monkeypatch):
    """Channels-last rows merged into wide rows with tiled constants (``cpu._widen``:
    the path of large tensors; small ones take it only from 4096 rows), forced here on
    small tensors, with leftover rows (300 = 2 x 128 + 44; 400 = 2 x 160 + 80)."""
    monkeypatch.setattr(cpu, "_WIDEN_ROWS_MIN", 0)
    seen = []
    widen = cpu._widen

    def spy(group, target):
        parts = widen(group, target)
        seen.extend(r for _, r in parts)
        return parts

    monkeypatch.setattr(cpu, "_widen", spy)
    check_inplace(dtype, act, True, shape, mode, "abs", rng)
    assert max(seen) > 1 and 1 in seen  # widened rows and leftover rows both ran


@pytest.mark.parametrize("C", [1, 3, 5, 6, 12, 24, 100, 128, 200, 256])
def test_widened_rows_are_whole_vector_steps(C):
    """Merged channels-last rows hold a whole number of 16-element steps where C
    allows it, as close to ``_WIDE`` elements as that allows, and cover every row."""
    M = 5000
    v = np.zeros((M, C), np.float32)
    parts = cpu._widen((v,), 64)
    (wide,), r = parts[0]
    step = 16 // np.gcd(C, 16)
    assert r * C % 16 == 0 and cpu._WIDE - step * C < r * C <= cpu._WIDE
    assert wide.shape == (M // r, r * C) and np.shares_memory(wide, v)
    assert sum(g[0].shape[0] * g[0].shape[1] for g, _ in parts) == M * C


@pytest.mark.parametrize("cl", [False, True], ids=["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_large_tensor_walk_matches_reference(dtype, cl, rng, monkeypatch):
    """A tensor above the parallel threshold: many work items, rows prefetched ahead
    (``cpu._ahead``, switched on whatever the machine's default; never for float16),
    forward and backward against the reference."""
    monkeypatch.setattr(cpu._config, "PREFETCH", True)
    seen = []
    prefetch_bytes = cpu._prefetch_bytes

    def spy(v, row, target, distance):
        seen.append((distance, prefetch_bytes(v, row, target, distance)))
        return seen[-1][1]

    monkeypatch.setattr(cpu, "_prefetch_bytes", spy)
    # chunks of >= 512 bytes; channels first, rows of 9215 positions: their chunks start
    # off the rows' starts (cpu._chunk_end)
    shape = (4, 128, 128, 8) if cl else (2, 8, 97, 95)
    assert np.prod(shape) >= cpu._config.PARALLEL_MIN
    check_inplace(dtype, "leaky_relu", cl, shape, "train", "signed", rng)
    if dtype == np.float16:
        assert seen and all(b is None for _, b in seen)
    else:  # every walk at the distance asked (the channels-last reductions' streams: None
        # unless _config.PREFETCH_STREAMS is set and the rows are short, see
        # test_channels_last_statistics_read_four_streams)
        ahead = cpu._AHEAD if cl else cpu._config.PREFETCH_CHUNK
        assert seen and all(b == d for d, b in seen) and ahead in {d for d, _ in seen}
        assert {d for d, _ in seen} <= {ahead, None, cpu._config.PREFETCH_STREAMS}


@numba.njit
def chunks_of_rows(x, s0, s1):
    """(n, c, j0, j1) of every chunk the channels-first kernels walk rows s0:s1 in."""
    out = []
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            j0 = s0
            while j0 < s1:
                j1 = cpu._chunk_end(x, n, c, j0, s1)
                out.append((n, c, j0, j1))
                j0 = j1
    return out


@pytest.mark.parametrize("shape,cut", [((3, 5, 3000), slice(None)), ((2, 4, 2600), slice(7, None)),
                                       ((2, 3, 6000), slice(None, None, 3)),
                                       ((2, 2, 4096), slice(None))],
                         ids=["rows-3000", "offset-view", "strided", "rows-4096"])
@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
def test_channels_first_chunks_end_on_memory_blocks(shape, cut, dtype):
    """Long channels-first rows are walked in chunks of at most ``_BLOCK`` positions that
    end where memory is a whole number of ``_BLOCK`` elements from the view's first
    element, where the positions are contiguous (a large array's data starts 16 bytes
    past a 4 KB page: chunks then start near page boundaries); chunks tile each row
    once. Rows of a whole number of blocks
    keep chunks of exactly ``_BLOCK``."""
    x = np.zeros(shape, dtype)[:, :, cut]
    N, C, S = x.shape
    s0, s1 = 5, S - 3
    got = chunks_of_rows(x, s0, s1)
    assert len(got) >= N * C * ((s1 - s0) // cpu._BLOCK)
    ends = {}
    for n, c, j0, j1 in got:
        assert ends.get((n, c), s0) == j0 and 0 < j1 - j0 <= cpu._BLOCK
        ends[n, c] = j1
        if j1 < s1 and x.strides[2] == x.itemsize:  # strided rows: chunks of <= _BLOCK only
            off = (n * x.strides[0] + c * x.strides[1] + j1 * x.strides[2]) // x.itemsize
            assert off % cpu._BLOCK == 0
    assert ends == {(n, c): s1 for n in range(N) for c in range(C)}
    if S % cpu._BLOCK == 0 and x.strides[2] == x.itemsize:
        whole = chunks_of_rows(x, 0, S)
        assert all(j1 - j0 == cpu._BLOCK for _, _, j0, j1 in whole)


@pytest.mark.parametrize("cl", [False, True], ids=["NCHW", "NHWC"])
def test_prefetch_switched_off(cl, rng, monkeypatch):
    """``NUMBAABN_PREFETCH=0`` (``_config.PREFETCH``): no walk prefetches; the results
    still match the reference."""
    monkeypatch.setattr(cpu._config, "PREFETCH", False)
    seen = spy_walk(monkeypatch)
    shape = (4, 128, 128, 8) if cl else (2, 8, 96, 96)
    check_inplace(np.float32, "leaky_relu", cl, shape, "train", "signed", rng)
    assert seen and all(nb[3] is None for _, _, nb in seen)
    assert any(nb[0] * nb[1] * nb[2] > 1 for _, _, nb in seen)  # the parallel walks


def spy_walk(monkeypatch, whole_rows_seen=None, streams_seen=None):
    """Record (first view, kind, blocks) of every group ``cpu._walk`` yields (and in
    ``whole_rows_seen`` whether the walk asked for whole rows, in ``streams_seen``
    whether it was the reductions' walk)."""
    seen = []
    walk = cpu._walk

    def spy(groups, target, whole_rows=False, streams=False):
        for item in walk(groups, target, whole_rows, streams):
            seen.append((item[0][0], item[1], item[2]))
            if whole_rows_seen is not None:
                whole_rows_seen.append(whole_rows)
            if streams_seen is not None:
                streams_seen.append(streams)
            yield item

    monkeypatch.setattr(cpu, "_walk", spy)
    return seen


@pytest.mark.parametrize("shape", [(16, 256, 7, 7), (4, 64, 28, 28)], ids=["7x7", "28x28"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("row_min", [512, 0], ids=["rows>=512B", "all-rows"])
def test_large_tensor_short_rows_match_reference(row_min, dtype, shape, rng, monkeypatch):
    """Channels-first rows of at most ``cpu._BLOCK`` positions above the parallel
    threshold, taken whole by the parallel kernels (7x7: prefetched only where the CPU's
    shortest prefetched row, ``_config.PREFETCH_ROW_MIN``, allows; 28x28: rows of 3 KB,
    prefetched: switched on here whatever the machine's default), in place and on the
    standard path, against the reference. Every item is one contiguous piece of memory
    (whole samples, or channels of one sample); the reductions (statistics, backward
    reduce) walk in at most ``cpu._STREAM_ITEMS`` items."""
    monkeypatch.setattr(cpu._config, "PREFETCH", True)
    monkeypatch.setattr(cpu._config, "PREFETCH_ROW_MIN", row_min)
    assert np.prod(shape) >= cpu._config.PARALLEL_MIN and shape[2] * shape[3] <= cpu._BLOCK
    streams = []
    seen = spy_walk(monkeypatch, streams_seen=streams)
    check_inplace(dtype, "leaky_relu", False, shape, "train", "signed", rng)
    assert seen and all(kind == "cf" and nb[0] * nb[1] > 1 for _, kind, nb in seen)
    assert all((nb[3] is None) == (shape[2] == 7 and row_min == 512) for _, _, nb in seen)
    assert True in streams and False in streams
    for (v, _, nb), stats in zip(seen, streams):
        N, C, S = v.shape
        assert nb[0] * nb[1] * nb[2] == (cpu._STREAM_ITEMS if stats else cpu.ITEMS)
        assert nb[1] == 1 or nb[0] == N  # channel blocks only within one sample
        assert nb[2] == 1  # rows this short are never split

    check_standard(dtype, "elu", False, shape, rng)


def away_from_kink(x0, act, cl, dtype, z_of):
    """``x0`` with no leaky ReLU input within rounding of 0 (float32 and float64). The
    backward takes its branch (slope 1 or ``a``) from the sign of an output that
    rounding can flip there: both branches are right to rounding, the reference takes
    one, and one flipped element moves a channel's gradient sums by ~|dz|. (A (128,
    4096) tensor had one: z = 9.7e-9, -3.8e-10 after a change in the statistics'
    rounding.) Such elements (within 32 ulps of their channel's largest |z|: a channel
    of weight 0 in abs mode is all ~eps) move by 0.05 until none is left; ``z_of`` is
    the reference forward."""
    if act != "leaky_relu" or dtype == np.float16:
        return x0
    axis = x0.ndim - 1 if cl else 1
    others = tuple(i for i in range(x0.ndim) if i != axis)
    for _ in range(5):
        z = z_of(x0)
        near = np.abs(z) <= 32 * np.finfo(dtype).eps * np.abs(z).max(axis=others,
                                                                     keepdims=True)
        if not near.any():
            return x0
        x0 = x0.copy()
        x0[near] += dtype(0.05)
    raise AssertionError("test data: activation inputs stay next to 0")


def check_standard(dtype, act, cl, shape, rng):
    """ABN (the standard path: out of place) in training, offset data, against the
    reference; x and dz untouched."""
    layer = make_layer(numbaabn.ABN, channels_of(shape, cl), dtype, act, cl, "train",
                       "signed")
    init_params(layer, rng, "signed")
    p = [a.copy() for a in (layer.weight, layer.bias, layer.running_mean, layer.running_var)]
    x0 = away_from_kink((rng.standard_normal(shape) * 2 + 3).astype(dtype), act, cl, dtype,
                        lambda x: ref.forward(x, *p, training=True, activation=act,
                                              channels_last=cl, weight_mode="signed")[0])
    dz0 = rng.standard_normal(shape).astype(dtype)
    x, dz = x0.copy(), dz0.copy()
    y = layer(x)
    assert y is not x and np.array_equal(x, x0)
    z_ref, _, _, ctx = ref.forward(x0, *p, training=True, activation=act,
                                   channels_last=cl, weight_mode="signed")
    assert_close(y, z_ref, dtype, "forward")
    dx = layer.backward(dz)
    assert dx is not dz and np.array_equal(dz, dz0)
    dx_ref, dw_ref, db_ref = ref.backward(dz0, ctx)
    assert_close(dx, dx_ref, dtype, "dx")
    assert_sums_close(layer.weight_grad, dw_ref, ctx["abs_sums"][1], dtype, "dweight")
    assert_sums_close(layer.bias_grad, db_ref, ctx["abs_sums"][0], dtype, "dbias")


@pytest.mark.parametrize("shape", [(15, 2100), (4, 10, 16, 2056)], ids=["serial", "threads"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_wide_channels_last_rows_four_rows_at_a_time(dtype, shape, rng, monkeypatch):
    """Channels-last items at least ``cpu._JAM_MIN`` channels wide: the forward and the
    backward's write pass walk four rows at a time, then the rows left over one by one
    (one serial item of 15 rows; 64 items of 10 rows with threads); rows not a whole
    number of vectors. In place in training (centred forward, backward with the
    statistics' terms) and in eval (plain forward, ``dx = P g``), and on the standard
    path (out of place), against the reference."""
    M, C = int(np.prod(shape[:-1])), shape[-1]
    assert C >= cpu._JAM_MIN and C % 16
    serial = M * C * cpu._BACKWARD_WEIGHT < cpu._config.PARALLEL_MIN  # the backward too
    assert serial or M * C >= cpu._config.PARALLEL_MIN
    items = 1 if serial else cpu.ITEMS
    assert M % items == 0 and (M // items) % 4 and M // items > 4
    whole = []
    seen = spy_walk(monkeypatch, whole_rows_seen=whole)
    check_inplace(dtype, "leaky_relu", True, shape, "train", "signed", rng)
    check_inplace(dtype, "leaky_relu", True, shape, "eval", "signed", rng)
    check_standard(dtype, "identity", True, shape, rng)
    passes = [nb for (v, kind, nb), w in zip(seen, whole) if w and kind == "cl"]
    assert passes and all(nb[0] == items and nb[1] == 1 for nb in passes)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_split_channels_last_rows_prefetch_rows_ahead(dtype, rng, monkeypatch):
    """Channels-last rows too wide for one item are split in channel blocks in the
    reductions (their partial sums are (row blocks, C)); those kernels then prefetch the
    same channels whole rows ahead (``cpu._rows_ahead``), not the bytes past the block
    (the next block's channels). The element-wise passes (forward, backward apply) take
    whole rows, one contiguous piece per item, prefetched ``_AHEAD`` bytes past. Results
    against the reference. (Prefetch switched on whatever the machine's default.)"""
    monkeypatch.setattr(cpu._config, "PREFETCH", True)
    shape = (128, 4096)
    whole, streams = [], []
    seen = spy_walk(monkeypatch, whole, streams)
    check_inplace(dtype, "leaky_relu", True, shape, "train", "signed", rng)
    assert True in whole and False in whole
    for (v, _, nb), whole_rows, stats in zip(seen, whole, streams):
        assert v.strides[0] == shape[1] * v.itemsize
        if stats:  # see test_channels_last_statistics_read_four_streams
            continue
        if whole_rows:
            assert nb[:2] == (cpu.ITEMS, 1) and nb[3] == cpu._AHEAD
            continue
        piece = -(-v.shape[1] // nb[1]) * v.itemsize
        assert nb[1] > 1 and piece >= 512
        rows = -(-cpu._AHEAD // piece)
        assert nb[3] == rows * v.strides[0] and nb[3] > cpu._AHEAD


@pytest.mark.parametrize("shape", [(8, 128, 64, 32), (128, 4096), (4, 63, 97, 3)],
                         ids=["rows-follow", "split-rows", "odd"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("streams_ahead", [None, 1024], ids=["streams", "streams-prefetched"])
def test_channels_last_statistics_read_four_streams(streams_ahead, dtype, shape, rng,
                                                     monkeypatch):
    """The channels-last reductions' walk (``streams``: statistics, backward reduce)
    splits a tensor above the parallel threshold into at most ``cpu._STREAM_ITEMS`` row
    blocks, not prefetched unless ``_config.PREFETCH_STREAMS`` is set, and then only
    rows of at most ``cpu._STREAM_PREFETCH_MAX`` bytes; the element-wise walks of the
    same tensor keep ``cpu.ITEMS`` items and their prefetch (switched on here whatever
    the machine's default). Items of row counts that are not multiples of four (the
    odd shape: 97 * 4 * 63 positions widened, leftover rows) and the reference: forward
    and backward against it."""
    monkeypatch.setattr(cpu._config, "PREFETCH", True)
    monkeypatch.setattr(cpu._config, "PREFETCH_STREAMS", streams_ahead)
    if np.prod(shape) < cpu._config.PARALLEL_MIN:
        monkeypatch.setattr(cpu._config, "PARALLEL_MIN", int(np.prod(shape)))
    streams = []
    seen = spy_walk(monkeypatch, streams_seen=streams)
    check_inplace(dtype, "leaky_relu", True, shape, "train", "signed", rng)
    assert True in streams and False in streams
    prefetched = []
    for (v, kind, nb), stats in zip(seen, streams):
        assert kind == "cl"
        if stats:
            assert nb[0] <= cpu._STREAM_ITEMS and nb[0] * nb[1] > 1
            row = -(-v.shape[1] // nb[1])
            if streams_ahead is None or row * v.itemsize > cpu._STREAM_PREFETCH_MAX:
                assert nb[3] is None
            else:
                assert nb[3] == cpu._rows_ahead(v, row, streams_ahead) >= streams_ahead
                prefetched.append(nb[3])
        elif v.size * v.itemsize >= 1 << 20:
            assert nb[0] * nb[1] > cpu._STREAM_ITEMS and nb[3] is not None
    if streams_ahead is None:
        assert not prefetched
    elif dtype == np.float32 and shape != (128, 4096):  # merged rows of 2 KB, 1920 bytes
        assert prefetched


@pytest.mark.parametrize("rows", [1, 3, 4, 5, 31, 32, 33, 35, 36, 67])
def test_channels_last_statistics_every_row_once(rows, rng):
    """Four streams a quarter of the rows apart, the rows left over by four in the
    last block: every row counts once, whatever the count (one item, serial), against
    float64 NumPy; rows of a large offset keep the variance accurate."""
    C = 5
    x = (rng.standard_normal((rows, C)) + 1e3).astype(np.float32)
    count, mean, m2 = cpu.statistics([x], C)
    x64 = x.astype(np.float64)
    assert count == rows
    np.testing.assert_allclose(mean, x64.mean(0), rtol=1e-7)
    np.testing.assert_allclose(m2, ((x64 - x64.mean(0)) ** 2).sum(0),
                               rtol=2e-4, atol=1e-9 * rows)


def check_inplace(dtype, act, cl, shape, mode, weight_mode, rng):
    C = channels_of(shape, cl)
    layer = make_layer(numbaabn.InPlaceABN, C, dtype, act, cl, mode, weight_mode)
    init_params(layer, rng, weight_mode, dtype)
    w, b = layer.weight.copy(), layer.bias.copy()
    rm, rv = layer.running_mean.copy(), layer.running_var.copy()
    training = mode in ("train", "use_global_stats", "trainable_statistics")

    def z_of(x):
        return ref.forward(x, w, b, rm, rv, training=training, activation=act,
                           channels_last=cl, use_global_stats=mode == "use_global_stats",
                           weight_mode=weight_mode)

    x0 = away_from_kink((rng.standard_normal(shape) * 2 + 0.5).astype(dtype), act, cl,
                        dtype, lambda x: z_of(x)[0])
    dz0 = rng.standard_normal(shape).astype(dtype)

    x = x0.copy()
    y = layer(x)
    assert y is x
    z_ref, rm_ref, rv_ref, ctx = z_of(x0)
    if dtype == np.float16:
        assert_f16_forward(y, z_ref)
    else:
        assert_close(y, z_ref, dtype, "forward")
    tol_stats = 1e-12 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(layer.running_mean, rm_ref, rtol=tol_stats, atol=tol_stats)
    np.testing.assert_allclose(layer.running_var, rv_ref, rtol=tol_stats, atol=tol_stats)

    dz = dz0.copy()
    dx = layer.backward(dz)
    assert dx is dz
    dx_ref, dw_ref, db_ref = ref.backward(dz0, ctx)
    assert_close(dx, dx_ref, dtype, "dx", ctx["dx_scale"])
    assert_sums_close(layer.weight_grad, dw_ref, ctx["abs_sums"][1], dtype, "dweight",
                      ctx["f16_slack"][1])
    assert_sums_close(layer.bias_grad, db_ref, ctx["abs_sums"][0], dtype, "dbias",
                      ctx["f16_slack"][0])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cl", [False, True], ids=["NCHW", "NHWC"])
@pytest.mark.parametrize("act", ["identity", "leaky_relu", "elu", "relu"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_standard_path_matches_reference(dtype, act, cl, mode, rng):
    """ABN keeps its input: x untouched, a new output and a new gradient; zero and
    negative "signed" weights are fine there."""
    shape = (3, 6, 4, 5) if not cl else (3, 4, 5, 6)
    C = 6
    layer = make_layer(numbaabn.ABN, C, dtype, act, cl, mode, "signed")
    init_params(layer, rng, "abs")  # includes an exact zero weight
    layer.weight[1] = -2.0
    x0 = (rng.standard_normal(shape) * 3 - 1).astype(dtype)
    dz0 = rng.standard_normal(shape).astype(dtype)
    p = [a.copy() for a in (layer.weight, layer.bias, layer.running_mean, layer.running_var)]
    x, dz = x0.copy(), dz0.copy()
    y = layer(x)
    assert y is not x and np.array_equal(x, x0)
    training = mode != "eval"
    z_ref, _, _, ctx = ref.forward(x0, *p, training=training, activation=act,
                                   channels_last=cl, use_global_stats=mode == "use_global_stats",
                                   weight_mode="signed")
    if dtype == np.float16:
        assert_f16_forward(y, z_ref)
    else:
        assert_close(y, z_ref, dtype, "forward")
    dx = layer.backward(dz)
    assert dx is not dz and np.array_equal(dz, dz0)
    dx_ref, dw_ref, db_ref = ref.backward(dz0, ctx)
    tol_dtype = np.float32 if dtype == np.float16 else dtype  # x is kept: no z rounding
    assert_close(dx, dx_ref, tol_dtype if dtype != np.float16 else np.float16, "dx")
    assert_sums_close(layer.weight_grad, dw_ref, ctx["abs_sums"][1], tol_dtype, "dweight")
    assert_sums_close(layer.bias_grad, db_ref, ctx["abs_sums"][0], tol_dtype, "dbias")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_functional_without_params_or_running_stats(dtype, rng):
    """weight/bias None: s = 1, b = 0; no running stats: batch statistics in every
    mode (also training=False) and nothing is updated."""
    x0 = rng.standard_normal((5, 3, 4)).astype(dtype)
    for training in (True, False):
        x = x0.copy()
        y, saved = numbaabn.inplace_abn_forward(x, training=training, activation="elu",
                                                activation_param=0.5)
        z_ref, _, _, ctx = ref.forward(x0, activation="elu", activation_param=0.5)
        assert_close(y, z_ref, dtype)
        dz0 = rng.standard_normal(x0.shape).astype(dtype)
        dx, dw, db = numbaabn.inplace_abn_backward(dz0.copy(), saved)
        assert dw is None and db is None
        assert_close(dx, ref.backward(dz0, ctx)[0], dtype)


def test_inplace_abn_forward_only(rng):
    x0 = rng.standard_normal((4, 3, 2, 2))
    w, b = rng.standard_normal(3), rng.standard_normal(3)
    rm, rv = rng.standard_normal(3), rng.random(3) + 1
    x = x0.copy()
    assert numbaabn.inplace_abn(x, w, b, rm, rv, training=False) is x
    assert_close(x, ref.forward(x0, w, b, rm, rv, training=False)[0], np.float64)


# (shape, shape channels last): small (one serial item), and above the parallel threshold
# with rows not merged (channels last: C = 640 > cpu._WIDE)
ONE_CALL_SHAPES = {"small": ((4, 7, 6, 5), (4, 6, 5, 7)),
                   "parallel": ((8, 7, 48, 64), (4, 8, 8, 640))}


@pytest.mark.parametrize("act,size", [(act, size) for size in ONE_CALL_SHAPES
                                      for act in ("identity", "leaky_relu", "elu")
                                      if not (act == "elu" and size == "parallel")])
@pytest.mark.parametrize("cl", [False, True], ids=["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_training_forward_is_one_compiled_call(dtype, act, cl, size, rng, monkeypatch):
    """The in-place training forward (statistics, coefficients, running statistics,
    output) of one view of unmerged rows runs in one compiled call, serial or with the
    parallel kernels: the separate primitives must not run, and the result matches the
    reference; NaN raises with nothing written. (Not ELU on the parallel sizes: there,
    pre-activations below about -10 occur, where the in-place backward's recovery from
    ELU's output loses precision whichever forward ran (README, Numerics); the next test
    compares the one-call forward with the primitives' bit for bit, ELU included.)"""
    def refuse(*args, **kwargs):
        raise AssertionError("the separate primitives ran")

    monkeypatch.setattr(cpu, "statistics", refuse)
    monkeypatch.setattr(cpu, "forward", refuse)
    shape = ONE_CALL_SHAPES[size][cl]
    C = shape[-1] if cl else shape[1]
    assert (np.prod(shape) >= _config.PARALLEL_MIN) == (size == "parallel")
    check_inplace(dtype, act, cl, shape, "train", "abs", rng)
    x = rng.standard_normal(shape).astype(dtype)
    x[1, 2, 3, 4] = np.nan
    pdt = np.float64 if dtype == np.float64 else np.float32
    rm, rv = rng.standard_normal(C).astype(pdt), (rng.random(C) + 1).astype(pdt)
    before = [a.copy() for a in (x, rm, rv)]
    with pytest.raises(FloatingPointError, match="non-finite batch statistics"):
        numbaabn.inplace_abn_forward(x, None, None, rm, rv, activation=act,
                                     data_format="NHWC" if cl else "NCHW")
    for a, a0 in zip((x, rm, rv), before):
        assert np.array_equal(a, a0, equal_nan=True)


def one_call_and_primitives(monkeypatch, run, one_call, primitives, extra=()):
    """[run() through the one-call function ``one_call``, run() through the separate
    calls]: in the first, the separate ``primitives`` raise (and ``extra``, (name,
    value) pairs, are patched into cpu); in the second, ``one_call`` gives way."""
    def refuse(*args, **kwargs):
        raise AssertionError("the separate primitives ran")

    results = []
    for fused in (True, False):
        with monkeypatch.context() as m:
            for name in primitives if fused else ():
                m.setattr(cpu, name, refuse)
            for name, value in extra if fused else ():
                m.setattr(cpu, name, value)
            if not fused:
                m.setattr(cpu, one_call, lambda *args: None)
            results.append(run())
    return results


# (shape, layout, whether the one-call function takes it) of the one-call tests
ONE_CALL_CASES = [
    ((8, 7, 48, 64), "NCHW", True), ((4, 8, 8, 640), "NHWC", True),
    ((300, 1000), "NCHW", True), ((4, 7, 6, 5), "NCHW", True),
    ((8, 16, 32, 64), "NHWC", True),  # rows merged 8 at a time (cpu._widen), threads
    ((4, 32, 40, 3), "NHWC", True),  # rows merged 160 at a time, one serial item
    ((3, 45, 45, 64), "NHWC", False)]  # merged, 3 rows left over: the primitives run


def assert_one_call_equal(a, a1, shape, fmt):
    """The one-call result ``a`` equals the primitives' ``a1`` bit for bit; where
    channels-last rows are merged (``cpu._widen``), within 8 float32 ulps of the largest
    value. There the kernels run on the merged view in both, but LLVM, linking a kernel
    into the one-call function, may contract a product and a sum into one FMA where the
    kernel compiled alone does not, or the reverse, depending on whether the kernel's
    code came from Numba's disk cache (seen: (4, 32, 40, 3) NHWC weight gradient
    50.223183 against 50.223186, from the cache and freshly compiled)."""
    C = shape[-1] if fmt == "NHWC" else shape[1]
    rows = np.zeros((int(np.prod(shape)) // C, C), np.float32)
    merged = fmt == "NHWC" and cpu._widen((rows,), 0 if rows.size < _config.PARALLEL_MIN
                                          else cpu.ITEMS)[0][1] > 1
    if not merged:
        assert np.array_equal(a, a1)
    else:
        tol = 8 * np.finfo(np.float32).eps * np.abs(a1).max()
        np.testing.assert_allclose(a, a1, rtol=0, atol=tol)


@pytest.mark.parametrize("in_place", [True, False], ids=["in_place", "standard"])
@pytest.mark.parametrize("act", ["leaky_relu", "elu"])
@pytest.mark.parametrize("shape,fmt,one_call", ONE_CALL_CASES)
def test_one_call_training_backward_equals_the_primitives_bit_for_bit(
        shape, fmt, one_call, act, in_place, rng, monkeypatch):
    """The one-call training backward runs the kernels of ``backward_reduce`` and
    ``backward_train`` with their blocks: dx and the parameter gradients are those of
    the primitives (``backward_train_one`` refused), bit for bit, in place and on the
    standard path; where the one call applies (merged channels-last rows too), the
    primitives do not run."""
    x0 = (rng.standard_normal(shape) * 3 + 100).astype(np.float32)
    dz0 = rng.standard_normal(shape).astype(np.float32)
    C = shape[-1] if fmt == "NHWC" else shape[1]
    w, b = rng.standard_normal(C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
    calls, run_kernel = [], cpu._run

    def spy(twins, parallel, *args):
        calls.append(args)
        return run_kernel(twins, parallel, *args)

    def run():
        layer = (numbaabn.InPlaceABN if in_place else numbaabn.ABN)(
            C, activation=act, data_format=fmt, dtype="float32")
        layer.weight[:], layer.bias[:] = w, b
        layer(x0.copy())
        dx = layer.backward(dz0.copy())
        return dx, layer.weight_grad.copy(), layer.bias_grad.copy()

    results = one_call_and_primitives(
        monkeypatch, run, "backward_train_one",
        ("backward_reduce", "backward_train") if one_call else (),
        (("_run", spy),) if one_call else ())
    for a, a1 in zip(*results):
        assert_one_call_equal(a, a1, shape, fmt)
    if one_call:  # in place, dx is dz's own (merged) view: the kernel's in-place loop runs
        _, dz, dx, inplace = calls[-1][:4]
        assert inplace == in_place and (dx is dz) == in_place


@pytest.mark.parametrize("act", ["leaky_relu", "elu"])
@pytest.mark.parametrize("shape,fmt,one_call", ONE_CALL_CASES)
def test_one_call_training_forward_equals_the_primitives_bit_for_bit(shape, fmt, one_call, act,
                                                                     rng, monkeypatch):
    """The one-call training forward runs the kernels of ``statistics`` and ``forward``
    with their blocks: output, running statistics and saved coefficients are those of
    the separate primitives (``forward_train_one`` refused), bit for bit; where the one
    call applies (merged channels-last rows too), ``statistics`` does not run. ELU's
    forward on a tensor of 2**17 elements or more takes its own plan: the primitives."""
    x0 = (rng.standard_normal(shape) * 3 + 100).astype(np.float32)
    C = shape[-1] if fmt == "NHWC" else shape[1]
    w, b = rng.standard_normal(C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
    code = {"leaky_relu": _scalar.LEAKY_RELU, "elu": _scalar.ELU}[act]
    ours = one_call and cpu._plan(x0.size) == cpu._plan(x0.size, code)

    def run():
        x, rm, rv = x0.copy(), np.zeros(C, np.float32), np.ones(C, np.float32)
        _, saved = numbaabn.inplace_abn_forward(x, w, b, rm, rv, momentum=0.8,
                                                activation=act, data_format=fmt)
        return x, rm, rv, saved.coef

    results = one_call_and_primitives(monkeypatch, run, "forward_train_one",
                                      ("statistics",) if ours else ())
    for a, a1 in zip(*results):
        assert_one_call_equal(a, a1, shape, fmt)


@pytest.mark.parametrize("offset", [0.0, 1e4], ids=["plain", "centred"])
@pytest.mark.parametrize("act", ["identity", "leaky_relu", "elu"])
@pytest.mark.parametrize("shape,fmt,one_call",
                         ONE_CALL_CASES + [((4, 6, 5, 7), "NHWC", True)])
def test_one_call_eval_forward_equals_the_primitives_bit_for_bit(shape, fmt, one_call, act,
                                                                 offset, rng, monkeypatch):
    """The one-call eval forward (running statistics) runs ``fill_coefficients`` and the
    kernel ``forward`` would run, plain where every h is 0 (moderate running means),
    centred where one channel's offset is large: output and saved coefficients are those
    of the separate calls (``forward_eval_one`` refused), bit for bit, and match the
    float64 reference; where the one call applies (merged channels-last rows too),
    ``cpu.forward`` does not run."""
    C = shape[-1] if fmt == "NHWC" else shape[1]
    x0 = rng.standard_normal(shape).astype(np.float32)
    w, b = rng.standard_normal(C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
    rm = rng.standard_normal(C).astype(np.float32)
    rm[1] += offset
    rv = (rng.random(C) + 0.5).astype(np.float32)
    (x0.reshape(-1, C) if fmt == "NHWC" else np.moveaxis(x0, 1, 0))[1] += offset

    def run():
        x = x0.copy()
        _, saved = numbaabn.inplace_abn_forward(x, w, b, rm, rv, training=False,
                                                activation=act, data_format=fmt)
        return x, saved.coef

    results = one_call_and_primitives(monkeypatch, run, "forward_eval_one",
                                      ("forward",) if one_call else ())
    for a, a1 in zip(*results):
        assert_one_call_equal(a, a1, shape, fmt)
    assert results[0][1][0].any() == (offset > 0)  # centred only with the large offset
    want = ref.forward(x0.astype(np.float64), w, b, rm, rv, training=False, activation=act,
                       channels_last=fmt == "NHWC")[0]
    assert_close(results[0][0], want, np.float32, "eval forward")


@pytest.mark.parametrize("cl", [False, True], ids=["NCHW", "NHWC"])
def test_elu_is_threaded_from_a_sixteenth_of_the_threshold(cl, rng, monkeypatch):
    """ELU's kernels (an exponential or a logarithm per element) take the threads from
    ``PARALLEL_MIN / 16`` elements, the memory-bound ones from ``PARALLEL_MIN``. Between
    the two, the statistics run as one serial item and the ELU passes on the threads:
    the one-call forward gives way to the separate calls (one call cannot hold both
    plans), and forward and backward still match the reference."""
    shape = (4, 6, 8, 32) if cl else (4, 32, 6, 8)  # 6144 elements
    size = int(np.prod(shape))
    monkeypatch.setattr(_config, "PARALLEL_MIN", 8 * size)
    threads = numba.get_num_threads() > 1
    assert cpu._plan(size) == (0, False)
    assert cpu._plan(size, _scalar.ELU) == (cpu.ITEMS, threads)
    assert cpu._plan(size, _scalar.LEAKY_RELU) == (0, False)
    assert cpu._plan(size // 32, _scalar.ELU) == (0, False)
    results = []
    one_call = cpu.forward_train_one

    def spy(*args):
        results.append(one_call(*args))
        return results[-1]

    monkeypatch.setattr(cpu, "forward_train_one", spy)
    check_inplace(np.float32, "elu", cl, shape, "train", "abs", rng)
    assert results and all(r is None for r in results)


@pytest.mark.parametrize("cl", [False, True], ids=["NCHW", "NHWC"])
def test_backward_is_threaded_from_a_quarter_of_the_threshold(cl, rng, monkeypatch):
    """The backward's kernels (they read z and dz) take the threads from a quarter of
    ``PARALLEL_MIN`` elements. Between that and the threshold the forward runs as one
    serial item and the backward on the threads (the one-call training backward and
    the eval backward), and both match the reference."""
    shape = (4, 6, 8, 32) if cl else (4, 32, 6, 8)  # 6144 elements
    size = int(np.prod(shape))
    monkeypatch.setattr(_config, "PARALLEL_MIN", 2 * size)
    threads = numba.get_num_threads() > 1
    leaky = _scalar.LEAKY_RELU
    assert cpu._plan(size) == cpu._plan(size, leaky) == (0, False)
    assert cpu._plan(size, leaky, backward=True) == (cpu.ITEMS, threads)
    assert cpu._plan(size // 2, leaky, backward=True) == (cpu.ITEMS, threads)
    assert cpu._plan(size // 2 - 1, leaky, backward=True) == (0, False)
    plans = []
    plan = cpu._plan

    def spy(n, act=None, backward=False):
        plans.append((sys._getframe(1).f_code.co_name, backward, plan(n, act, backward)))
        return plans[-1][2]

    monkeypatch.setattr(cpu, "_plan", spy)
    check_inplace(np.float32, "leaky_relu", cl, shape, "train", "abs", rng)
    check_inplace(np.float32, "leaky_relu", cl, shape, "eval", "abs", rng)
    callers = {caller for caller, _, _ in plans}
    assert {"backward_train_one", "_backward_apply", "forward_train_one"} <= callers
    for caller, backward, p in plans:
        assert backward == ("backward" in caller), caller
        assert p == ((cpu.ITEMS, threads) if backward else (0, False)), caller


def test_thread_count_follows_numba(rng, monkeypatch):
    """``cpu._num_threads`` (Numba's C getter once its threads run, no locks) answers as
    ``numba.get_num_threads()`` after ``set_num_threads``, so a caller who asks for one
    thread gets the serial twins; where Numba lacks the private getter it asks Numba."""
    x = rng.standard_normal((8, 1 << 16)).astype(np.float32)
    numbaabn.inplace_abn(x)  # Numba's threads are launched from here on
    n = numba.get_num_threads()
    try:
        for k in sorted({1, n}):
            numba.set_num_threads(k)
            assert cpu._num_threads() == numba.get_num_threads() == k
            assert cpu._plan(_config.PARALLEL_MIN) == (cpu.ITEMS, k > 1)
    finally:
        numba.set_num_threads(n)
    calls = []
    monkeypatch.setattr(cpu, "_numba_parallel", object())
    monkeypatch.setattr(cpu.numba, "get_num_threads", lambda: calls.append(1) or 3)
    assert cpu._num_threads() == 3 and calls
