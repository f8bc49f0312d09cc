"""Hard numerics: large offsets, strided views, float16 bit patterns, ELU clamping,
and the documented accuracy limit of the in-place inversion."""
import numpy as np
import pytest
from numba import njit

import numbaabn
import reference as ref
from conftest import assert_close
from numbaabn import cpu


@pytest.mark.parametrize("shape,fmt", [((64, 4, 32, 32), "NCHW"), ((64, 32, 32, 4), "NHWC"),
                                       ((1, 1, 500_000), "NCHW"), ((500_000, 1), "NC")])
@pytest.mark.parametrize("path", ["in place", "standard"])
def test_large_offset_float32(shape, fmt, path, rng):
    """x = 1e4 + N(0, 1) in float32: variance within 1e-3 relative, output accurate."""
    x0 = (1e4 + rng.standard_normal(shape)).astype(np.float32)
    C = shape[1] if fmt == "NCHW" else shape[-1]
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
    x = x0.copy()
    cls = numbaabn.InPlaceABN if path == "in place" else numbaabn.ABN
    layer = cls(C, activation="leaky_relu", data_format=fmt, momentum=0.0)
    z_ref, rm_ref, rv_ref, ctx = ref.forward(x0, layer.weight, layer.bias, rm, rv,
                                             momentum=0.0, channels_last=fmt == "NHWC")
    y = layer(x)
    np.testing.assert_allclose(layer.running_var, rv_ref, rtol=1e-3)
    np.testing.assert_allclose(layer.running_mean, rm_ref, rtol=1e-7)
    assert_close(y, z_ref, np.float32, "forward")
    dz0 = rng.standard_normal(shape).astype(np.float32)
    dx = layer.backward(dz0.copy())
    assert_close(dx, ref.backward(dz0, ctx)[0], np.float32, "dx")


@pytest.mark.parametrize("shape,fmt", [((64, 4, 32, 32), "NCHW"), ((64, 32, 32, 4), "NHWC"),
                                       ((1, 2, 300_000), "NCHW"), ((300_000, 3), "NC"),
                                       ((4096, 3), "NHWC"), ((64, 32768), "NC")])
@pytest.mark.parametrize("case", ["outlier first", "sorted", "tiny spread"])
def test_statistics_hard_data_float32(shape, fmt, case, rng):
    """Statistics of float32 data that defeat naive shifted sums, against float64:
    an outlier as the first element (10^4 sigma: the centre of the block sums must
    not stay there), sorted data, and a spread 1e-4 of the mean. (64, 32768): the
    channels-last centre's sample is read by all threads (``cpu._SAMPLE_SERIAL_MAX``)."""
    x0 = rng.standard_normal(shape)
    if case == "outlier first":
        x0.flat[0] = 1e4
    elif case == "sorted":
        x0 = np.sort(x0, axis=None).reshape(shape)
    else:
        x0 = 1.0 + 1e-4 * x0
    x0 = x0.astype(np.float32)
    c_axis = 1 if fmt == "NCHW" else x0.ndim - 1
    C = shape[c_axis]
    views = [np.moveaxis(x0, c_axis, -1).reshape(-1, C)] if fmt != "NCHW" else \
        [x0.reshape(shape[0], C, -1)]
    if shape == (64, 32768):  # the case meant for the threaded sample takes it
        assert cpu._sample_rows(64) * C > cpu._SAMPLE_SERIAL_MAX
    count, mean, m2 = cpu.statistics(views, C)
    xd = np.moveaxis(x0.astype(np.float64), c_axis, -1).reshape(-1, C)
    ref_mean = xd.mean(0)
    ref_m2 = ((xd - ref_mean) ** 2).sum(0)
    assert count == xd.shape[0]
    np.testing.assert_allclose(m2, ref_m2, rtol=2e-6)
    assert np.all(np.abs(mean - ref_mean) <= 1e-6 * np.sqrt(ref_m2 / count))


@njit
def _vector_sums(x, n0, n1, c, k):
    return cpu._vector_sums(x, n0, n1, c, k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vector_row_sums_count_each_value_once(dtype):
    """``cpu._vector_sums`` (the statistics of a channel's short rows as LLVM vectors,
    each row's rest covered by its last vector with the lanes already counted selected
    to 0): every value of one to three rows of 1 to 4 vectors and a few, at every
    alignment, of the channel asked for and no other, counted exactly once. The values
    k + 1, k + 2, ... make the sums exact integers, so a value counted twice or missed
    changes them; a NaN or an infinity anywhere gives float64 NumPy's sums."""
    w = cpu._VECTOR_BYTES // np.dtype(dtype).itemsize
    k = dtype(1000.0)
    for n in range(w, 4 * w + 3):
        for off in (0, 1, 3):
            buf = np.zeros(3 * 2 * n + off, dtype)
            x = buf[off:].reshape(3, 2, n)  # (N, C, S): rows of channel 1 between channel 0's
            x[:, 0] = -5.0
            d = np.arange(1, 3 * n + 1, dtype=np.float64).reshape(3, n)
            x[:, 1] = k + d
            for n0, n1 in ((0, 1), (1, 3), (0, 3)):
                dd = d[n0:n1]
                assert _vector_sums(x, n0, n1, 1, k) == (dd.sum(), (dd * dd).sum()), (n, off)
    for n in (w + 1, 3 * w - 1):
        for p in range(n):
            for bad in (np.nan, np.inf, -np.inf):
                x = np.empty((2, 1, n), dtype)
                x[:] = k + np.arange(1, n + 1)
                x[1, 0, p] = bad
                dd = x.astype(np.float64) - np.float64(k)
                want = np.array([dd.sum(), (dd * dd).sum()])
                got = np.array(_vector_sums(x, 0, 2, 0, k))
                assert np.array_equal(got, want, equal_nan=True), (n, p, bad, got, want)


@njit
def _vector_leaky(row, h, g, e, a):
    cpu._vector_leaky(row, h, g, e, a)


def _leaky_exact(y, a):
    """``_scalar.leaky_forward`` on exact values (float64): the larger of y and y a
    where a <= 1, else the smaller; NaN stays NaN."""
    t = y * a
    return np.where(np.isnan(y), np.nan, np.maximum(y, t) if a <= 1 else np.minimum(y, t))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vector_leaky_forward_writes_each_value_once(dtype):
    """``cpu._vector_leaky`` (a short row's in-place leaky ReLU forward as LLVM vectors:
    whole vectors, then the row's last vector, read before any store): every value of
    rows of 1 to 4 vectors and a few, at three alignments, transformed exactly once and
    nothing outside the row touched. Inputs, constants and slopes are small integers and
    powers of two, so every output is exact: a value missed (left as its input) or
    transformed twice changes it. A NaN at any position stays NaN and leaves the other
    values exact."""
    w = cpu._FORWARD_BYTES // np.dtype(dtype).itemsize
    h, g, e = dtype(1000.0), dtype(2.0), dtype(-8.0)
    buf = np.empty(5 * w + 8, dtype)
    for a in (dtype(0.25), dtype(1.0), dtype(4.0)):
        for n in range(w, 4 * w + 3):
            x = h + np.arange(n, dtype=np.float64) - n // 2
            want = _leaky_exact((x - h) * g + e, a)
            for off in (0, 1, 3):
                buf[:] = -7.0
                row = buf[off:off + n]
                row[:] = x
                _vector_leaky(row, h, g, e, a)
                assert np.array_equal(row, want), (float(a), n, off)
                assert np.all(buf[:off] == -7.0) and np.all(buf[off + n:] == -7.0), (n, off)
    for n in (w + 1, 3 * w - 1):
        x = h + np.arange(n, dtype=np.float64) - n // 2
        for p in range(n):
            row = buf[1:1 + n]
            row[:] = x
            row[p] = np.nan
            want = _leaky_exact((row.astype(np.float64) - h) * g + e, dtype(0.25))
            _vector_leaky(row, h, g, e, dtype(0.25))
            assert np.array_equal(row, want, equal_nan=True), (n, p)


def test_vector_rows_chosen():
    """Which short channels-first rows the in-place forward runs as vectors
    (``cpu._vector_rows``): contiguous float32 rows of 8 values or more (float64: 4), in
    place, leaky family; not float16 bits, strided rows, shorter rows, the standard path
    or the other families."""
    for dtype, w in ((np.float32, 8), (np.float64, 4)):
        assert cpu._FORWARD_BYTES // np.dtype(dtype).itemsize == w
        for S in (w - 1, w, 49):
            x = np.zeros((2, 3, S), dtype)
            assert cpu._vector_rows(x, True, True) == (S >= w), (dtype, S)
            assert not cpu._vector_rows(x, False, True)
            assert not cpu._vector_rows(x, True, False)
        assert not cpu._vector_rows(np.zeros((2, 3, 98), dtype)[:, :, ::2], True, True)
    assert not cpu._vector_rows(np.zeros((2, 3, 49), np.uint16), True, True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("S", [7, 8, 9, 17, 33, 49, 64, 196])
@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided"])
@pytest.mark.parametrize("act,param", [("identity", None), ("leaky_relu", 0.01),
                                       ("leaky_relu", 3.0)])
def test_forward_short_rows(S, dtype, strided, act, param, rng):
    """The in-place forward of whole short channels-first rows (``cpu._forward_cf``:
    ``_vector_leaky`` where ``cpu._vector_rows``, the loop elsewhere), training and
    eval, against the float64 reference; the values between strided rows are not
    touched."""
    C = 6
    base = (rng.standard_normal((5, C, 2 * S if strided else S)) * 2 + 0.5).astype(dtype)
    w = np.linspace(-1.5, 2, C).astype(dtype)
    b = np.linspace(-1, 1, C).astype(dtype)
    for training in (True, False):
        x0 = base.copy()
        x = x0[:, :, ::2] if strided else x0
        rm, rv = np.linspace(-0.5, 0.5, C).astype(dtype), np.linspace(0.5, 2, C).astype(dtype)
        want = ref.forward(x.copy(), w, b, rm.copy(), rv.copy(), training=training,
                           activation=act, activation_param=param)[0]
        numbaabn.inplace_abn_forward(x, w, b, rm, rv, training=training, activation=act,
                                     activation_param=param)
        assert_close(x, want, dtype, f"{act} {param} training={training}")
        if strided:
            assert np.array_equal(x0[:, :, 1::2], base[:, :, 1::2])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("S", [7, 9, 16, 17, 33, 49, 63, 64, 80, 196, 1024])
@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided"])
def test_statistics_short_rows(S, dtype, strided, rng):
    """Channels-first statistics of whole short rows (``cpu._row_sums``: a channel's
    rows of an item ``_BLOCK // S`` at a time, as vectors where ``cpu._vectors_fit``,
    e.g. 16, 17, 49, 64 or 196 contiguous float32 values, the plain loop otherwise; 12
    samples: several groups of rows where S > 85) on data with an offset, against
    float64."""
    C, N = 6, 12
    x0 = (1e3 + rng.standard_normal((N, C, 2 * S if strided else S))).astype(dtype)
    x = x0[:, :, ::2] if strided else x0
    count, mean, m2 = cpu.statistics([x], C)
    xd = x.astype(np.float64).transpose(1, 0, 2).reshape(C, -1)
    ref_mean = xd.mean(1)
    ref_m2 = ((xd - ref_mean[:, None]) ** 2).sum(1)
    assert count == N * S
    np.testing.assert_allclose(m2, ref_m2, rtol=2e-6 if dtype == np.float32 else 1e-12)
    tol = 1e-6 if dtype == np.float32 else 1e-12  # float64: a few ulps of the offset
    assert np.all(np.abs(mean - ref_mean) <= tol * np.sqrt(ref_m2 / count))


@pytest.mark.parametrize("fmt", ["NCHW", "NHWC"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("large", [False, True])
def test_forward_two_constants_per_channel(fmt, training, large, rng):
    """In eval, a channel whose offset is moderate, |mean g| <= 8 (|s| + |b|), is computed
    as y = x g + (b - mean g) (h = 0 in the coefficients; where every channel is, the
    plain kernels run); a larger offset, and every channel in training, keeps the
    centred form. float32, identity, against the float64 reference: the moderate
    channels (two of them just inside the limit) within 20 ulps of |s| + |b|; the
    large-offset channel (1e4 + N(0, 1), mixed in with ``large``) within 2 ulps of its
    output's scale, as before the two-constant form."""
    C, M = 5, 4096
    s = np.array([1.0, 1.0, 0.5, 2.0, 1.0])
    b = np.array([0.0, 0.0, 2.0, -1.0, 0.3])
    std = np.array([1.0, 0.01, 3.0, 0.5, 1.0])
    g = s / std
    mu = np.array([0.3, 0.0, 0.0, 0.0, 0.0])
    mu[1] = -7.9 * (s[1] + abs(b[1])) / g[1]  # near the limit, both signs
    mu[2] = 7.9 * (s[2] + abs(b[2])) / g[2]
    mu[3] = 3.0 * std[3]
    mu[4] = 1e4 if large else -2.0
    x0 = (rng.standard_normal((M, C)) * std + mu).astype(np.float32)
    if fmt == "NCHW":
        x0 = np.ascontiguousarray(x0.reshape(16, 256, C).transpose(0, 2, 1))
    rm, rv = mu.astype(np.float32), (std ** 2).astype(np.float32)
    z, _, _, _ = ref.forward(x0, s.astype(np.float32), b.astype(np.float32), rm, rv,
                             training=training, activation="identity", momentum=0.0,
                             channels_last=fmt == "NHWC", weight_mode="signed")
    x = x0.copy()
    _, saved = numbaabn.inplace_abn_forward(
        x, s.astype(np.float32), b.astype(np.float32), rm.copy(), rv.copy(),
        training=training, activation="identity", data_format=fmt, weight_mode="signed",
        momentum=0.0)
    assert np.array_equal(saved.coef[0] == 0, [not training] * 4 + [not (training or large)])
    def channel_max(a):
        return np.moveaxis(a, 1 if fmt == "NCHW" else -1, -1).reshape(-1, C).max(axis=0)

    err = channel_max(np.abs(x.astype(np.float64) - z))
    scale = channel_max(np.abs(z))
    ulp = 2.0 ** -24
    assert np.all(err[:4] <= 20 * ulp * (s[:4] + np.abs(b[:4]))), err / ulp
    assert err[4] <= (2 * ulp * scale[4] if large else 20 * ulp * (s[4] + abs(b[4]))), err / ulp
    if not (training or large):  # plain kernels ran: the centred ones' bits with h = 0
        y = x0.copy()
        v = y.reshape(16, C, 256) if fmt == "NCHW" else y.reshape(-1, C)
        kind = "cf" if fmt == "NCHW" else "cl"
        cpu._run(cpu._KERNELS["forward_" + kind, cpu._scalar.FAMILY[saved.act]], False, v, v,
                 True, saved.coef, saved.alpha, saved.ialpha, saved.lo, 1, 1, 1, None)
        np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("fmt", ["NCHW", "NHWC"])
def test_backward_apply_folds_moderate_bias(fmt, rng):
    """In place, the apply computes dx = P g + Q' (y - m) + R' (cpu.gradient_coefficients):
    a channel with |b| <= 8 |s| folds its bias into R' (m = 0; where every channel does,
    the plain kernels run), a larger bias keeps m = b. float32, identity, a gradient
    correlated with x̂ (so that Q is about as large as P): dx against the float64 backward
    of the same float32 output z, within 24 ulps of the channel's largest |dx| (folding
    b/s = 100 would cost ~80)."""
    C, M = 5, 4096
    s = np.array([1.0, 0.5, 2.0, 1.0, 1.0], np.float32)
    b = np.array([0.0, 3.9, -15.9, 0.3, 100.0], np.float32)  # b / s: 0, 7.8, -7.95, 0.3, 100
    for fold_all in (True, False):
        bb = b.copy()
        if fold_all:
            bb[4] = 5.0
        x0 = rng.standard_normal((M, C)).astype(np.float32)
        dz0 = (0.8 * (x0 - x0.mean(0)) / x0.std(0)
               + 0.5 * rng.standard_normal((M, C))).astype(np.float32)
        if fmt == "NCHW":  # (16, C, 256)
            x0, dz0 = (np.ascontiguousarray(a.reshape(16, 256, C).transpose(0, 2, 1))
                       for a in (x0, dz0))
        z = x0.copy()
        _, saved = numbaabn.inplace_abn_forward(z, s, bb, training=True, activation="identity",
                                                data_format=fmt, weight_mode="signed")
        dx = dz0.copy()
        numbaabn.inplace_abn_backward(dx, saved)
        # the reference: the float64 backward from the float32 output z
        ax = 1 if fmt == "NCHW" else -1
        zc, gc, dxc = (np.moveaxis(a.astype(np.float64), ax, -1).reshape(-1, C)
                       for a in (z, dz0, dx))
        xd = np.moveaxis(x0.astype(np.float64), ax, -1).reshape(-1, C)
        A = s / np.sqrt(xd.var(0) + 1e-5)
        xh = (zc - bb) / s
        want = A * (gc - gc.mean(0) - xh * (gc * xh).mean(0))
        err = np.abs(dxc - want).max(0) / np.abs(want).max(0)
        assert np.all(err <= 24 * 2.0 ** -24), err / 2.0 ** -24
        # the rule itself, in the apply's coefficients
        coef = saved.coef.copy()
        cpu.gradient_coefficients(coef, np.ones((2, C)), float(M), True, False, np.ones((2, C)),
                                  s, False, np.empty(0, np.float32), np.empty(0, np.float32))
        np.testing.assert_array_equal(coef[9], [0, 0, 0, 0, 0 if fold_all else 100])


def _strided_cases(rng):
    base = rng.standard_normal((6, 8, 10, 12))
    yield "transposed spatial", base.transpose(0, 1, 3, 2), "NCHW"
    yield "negative strides", base[::-1, :, ::-2, ::-1], "NCHW"
    yield "sliced channels", base[:, 1:7:2], "NCHW"
    yield "fortran order", np.asfortranarray(base), "NCHW"
    yield "channels-last memory, NCHW format", np.ascontiguousarray(
        base.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2), "NCHW"
    yield "NHWC sliced", base[:, ::2, 1:, :5], "NHWC"
    yield "NHWC outer dims not mergeable", base.transpose(1, 0, 2, 3)[:, :, ::3], "NHWC"
    yield "rank 2 column major", np.asfortranarray(base[:, :, 0, 0]), "NC"
    yield "rank 5 mixed", rng.standard_normal((3, 4, 5, 6, 7)).transpose(0, 1, 4, 2, 3), "NCDHW"


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_strided_views_written_in_place(dtype, rng):
    for name, base, fmt in _strided_cases(rng):
        holder = base.astype(dtype) if dtype != np.float64 else base.copy(order="K")
        if dtype != np.float64:  # rebuild the same strided pattern in the new dtype
            holder = _same_pattern(base, dtype)
        x = holder
        x0 = np.array(x, copy=True)
        cl = fmt in ("NHWC",)
        C = x.shape[-1] if cl else x.shape[1]
        w = np.linspace(-1.5, 2.0, C).astype(np.float64 if dtype == np.float64 else np.float32)
        b = np.linspace(0.5, -0.5, C).astype(w.dtype)
        y, saved = numbaabn.inplace_abn_forward(x, w, b, None, None, data_format=fmt)
        assert y is x
        z_ref, _, _, ctx = ref.forward(x0, w, b, channels_last=cl)
        assert_close(x, z_ref, dtype if dtype != np.float16 else np.float16, name)
        dz0 = rng.standard_normal(x.shape).astype(dtype)
        dz = _same_pattern(dz0, dtype, like=x)
        dx, _, _ = numbaabn.inplace_abn_backward(dz, saved)
        assert dx is dz
        assert_close(dx, ref.backward(dz0, ctx)[0], dtype, name + " dx")


def _same_pattern(a, dtype, like=None):
    """An array of ``dtype`` with ``a``'s values laid out with ``like``'s (or ``a``'s)
    stride pattern: a bigger buffer viewed through the same index map."""
    like = a if like is None else like
    itemsize = np.dtype(like.dtype).itemsize
    order = np.argsort([-abs(s) for s in like.strides])
    buf = np.empty(tuple(like.shape[i] for i in order), dtype)
    v = buf.transpose(np.argsort(order))
    v[...] = a
    flips = tuple(slice(None, None, -1) if s < 0 else slice(None) for s in like.strides)
    out = v[flips]
    out[...] = a[flips][flips] if False else a
    del itemsize
    return out


ALL_HALVES = np.arange(65536, dtype=np.uint16)


def signalling(bits, quiet_bit, exponent):
    """Which of the bit patterns are signalling NaNs (exponent all ones, payload
    nonzero, quiet bit clear)."""
    payload = bits & (quiet_bit * 2 - 1)
    return ((bits & exponent) == exponent) & (payload != 0) & ((bits & quiet_bit) == 0)


def quieted32(f):
    """float32 values with every signalling NaN made quiet (as float32 arithmetic does)."""
    u = f.view(np.uint32).copy()
    u[signalling(u, np.uint32(1 << 22), np.uint32(0x7F800000))] |= np.uint32(1 << 22)
    return u.view(np.float32)


def test_float16_all_bit_patterns_load_like_numpy():
    """Every float16 pattern loads as NumPy's ``astype(float32)``, except that with
    F16C a signalling NaN comes out quiet (the kernels only compute with what they
    load; float32 arithmetic quiets it in NumPy too), and through arithmetic and back
    every pattern gives NumPy's bits."""
    @njit
    def through_kernel_conversions(h, f32, out, one, zero):
        for i in range(h.size):
            f32[i] = cpu.load(h[i])
            out[i] = cpu.store(cpu.load(h[i]) * one + zero, out)

    f32, out = np.empty(65536, np.float32), np.empty_like(ALL_HALVES)
    through_kernel_conversions(ALL_HALVES, f32, out, np.float32(1), np.float32(0))
    numpy_f32 = ALL_HALVES.view(np.float16).astype(np.float32)
    expected = quieted32(numpy_f32) if cpu.HARDWARE_HALF else numpy_f32
    assert signalling(ALL_HALVES, np.uint16(0x200), np.uint16(0x7C00)).sum() == 1022
    assert np.array_equal(f32.view(np.uint32), expected.view(np.uint32))
    with np.errstate(invalid="ignore"):
        computed = numpy_f32 * np.float32(1) + np.float32(0)
    assert np.array_equal(out, computed.astype(np.float16).view(np.uint16))


def test_float32_to_float16_rounding_like_numpy(rng):
    """Every computed float32 value (never a signalling NaN) stores as NumPy's
    ``astype(float16)``: random patterns, every half's exact ties and neighbours."""
    @njit
    def to_half(f, out):
        for i in range(f.size):
            out[i] = cpu.store(f[i], out)

    u = rng.integers(0, 2 ** 32, 1_000_000, dtype=np.uint64).astype(np.uint32)
    grid = np.arange(1 << 19, dtype=np.uint32) << 13  # every half, as float32 bits
    # exact ties, just below and just above, and the lowest bits, around every half
    u = np.concatenate([u, grid, grid + 0x1000, grid + 0xFFF, grid + 0x1001, grid + 1])
    f = quieted32(u.view(np.float32))
    assert np.isnan(f).sum() > 1000  # NaN payloads are among the patterns
    out = np.empty(f.size, np.uint16)
    to_half(f, out)
    with np.errstate(over="ignore"):
        expected = f.astype(np.float16).view(np.uint16)
    assert np.array_equal(out, expected), int((out != expected).sum())


@pytest.mark.parametrize("kind", ["cf", "cl"])
@pytest.mark.parametrize("size", ["serial", "parallel"])
def test_float16_kernels_every_pattern_like_numpy(kind, size, rng):
    """Every float16 pattern (NaN payloads, signalling ones, infinities, subnormals)
    through the forward and the eval backward gives the bits of NumPy's float32
    computation of the same expressions converted with ``astype``. Coefficients are
    chosen so that the float32 arithmetic is exact (the kernels contract into FMA;
    NumPy rounds twice): the test is about the conversions."""
    copies = 1 if size == "serial" else cpu._config.PARALLEL_MIN // 65536 + 1
    C = 8
    x16 = rng.permutation(np.tile(ALL_HALVES, copies)).view(np.float16)
    dz16 = rng.permutation(np.tile(ALL_HALVES, copies)).view(np.float16)
    as_views = ((lambda a: a.reshape(2 * copies, C, -1)) if kind == "cf"
                else (lambda a: a.reshape(-1, C)))
    per_channel = ((lambda r: r[None, :, None]) if kind == "cf" else (lambda r: r))
    slope = np.float32(0.01)
    a, ia, lo = numbaabn.api._act_constants(float(slope), np.float32)
    x32, dz32 = (as_views(v.astype(np.float32)) for v in (x16, dz16))
    for h_row in (np.zeros(C, np.float32), np.array([0, 0.25, -0.5, 2, 0, 1, -4, 0.75],
                                                    np.float32)):
        coef = np.zeros((10, C), np.float32)
        coef[0], coef[2], coef[3], coef[4] = h_row, 1, h_row, 1.5  # y = (x - h) * 1 + h
        h = per_channel(h_row)
        with np.errstate(invalid="ignore", over="ignore"):
            y = (x32 - h) * np.float32(1) + h
            expected = np.where(y >= 0, y, slope * y).astype(np.float16)
        out = np.empty_like(x16)
        cpu.forward([as_views(x16.view(np.uint16))], [as_views(out.view(np.uint16))], coef,
                    1, a, ia, lo)
        same = out.view(np.uint16) == as_views(expected).reshape(-1).view(np.uint16)
        zeros = (out == 0) & (expected.reshape(-1) == 0)  # nsz: a zero's sign is free
        assert (same | zeros).all(), int((~(same | zeros)).sum())
    with np.errstate(invalid="ignore", over="ignore"):
        grad = np.where(x32 >= 0, dz32, slope * dz32)
        expected = (np.float32(1.5) * grad).astype(np.float16)
    dx = np.empty_like(dz16)
    cpu.backward_eval([as_views(x16.view(np.uint16))], [as_views(dz16.view(np.uint16))],
                      [as_views(dx.view(np.uint16))], coef, 1, a, ia, lo, False)
    assert np.array_equal(dx.view(np.uint16), expected.reshape(-1).view(np.uint16))


def test_elu_inverse_is_clamped_and_finite():
    """Very negative y: z/a rounds to -1; the inverse clamps it and stays finite."""
    for dtype in (np.float32, np.float64):
        x = np.array([[-1e3, 0.0, 5.0, -40.0]], dtype).T.repeat(2, 1)  # (4, 2)
        x[:, 1] = [1.0, 2.0, 3.0, 4.0]
        w = np.array([30.0, 1.0], x.dtype)
        y, saved = numbaabn.inplace_abn_forward(x, w, None, None, None, activation="elu",
                                                data_format="NC")
        assert np.all(y[:, 0] >= -1.0)
        dx, dw, db = numbaabn.inplace_abn_backward(np.ones_like(x), saved)
        assert db is None and np.isfinite(dx).all() and np.isfinite(dw).all()


@pytest.mark.parametrize("slope", [0.01, 0.5, 1.0, 2.0, 3.0])
@pytest.mark.parametrize("kind", ["cf", "cl"])
@pytest.mark.parametrize("size", ["serial", "parallel"])
def test_leaky_forward_exact_on_special_values(slope, kind, size, rng):
    """The leaky forward is computed as max(y, a*y) for a <= 1 and min(y, a*y) above
    (one instruction instead of a compare and a blend); bit for bit it must equal
    ``y if y >= 0 else a*y`` on infinities, NaN, denormals and overflow (zeros compare
    by value: nsz is among the fast-math flags)."""
    special = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 1e-40, -1e-40,
                        3e38, -3e38, 1.0, -1.0, 0.5, -2.5], np.float32)
    C = 8
    M = (cpu._config.PARALLEL_MIN if size == "parallel" else 64) // C
    x = rng.permutation(np.resize(special, M * C)).astype(np.float32)
    views = x.reshape(2, C, -1) if kind == "cf" else x.reshape(-1, C)
    coef = np.zeros((10, C), np.float32)
    coef[0] = np.array([0, 0, 0, 1, -1, 0.25, 0, 0], np.float32)  # h: y = x - h exactly
    coef[2] = 1  # g = 1, e = 0
    h = coef[0][None, :, None] if kind == "cf" else coef[0]
    y = views - h
    with np.errstate(over="ignore"):
        expected = np.where(y >= 0, y, np.float32(slope) * y)
    a, ia, lo = numbaabn.api._act_constants(slope, np.float32)
    cpu.forward([views], [views], coef, 1, a, ia, lo)
    assert np.array_equal(views, expected, equal_nan=True)
    assert np.array_equal(np.signbit(views[y != 0]), np.signbit(expected[y != 0]))


def test_one_value_per_channel_in_eval(rng):
    """M = 1 is fine in eval: running statistics, nothing to reduce."""
    x0 = rng.standard_normal((1, 5))
    rm, rv = rng.standard_normal(5), rng.random(5) + 0.5
    x = x0.copy()
    numbaabn.inplace_abn(x, None, None, rm, rv, training=False)
    assert_close(x, ref.forward(x0, None, None, rm, rv, training=False)[0], np.float64)


def test_inplace_inversion_accuracy_limit_documented(rng):
    """In place, x̂ = (y - b)/s: its error is about ulp(|y|)/s. With "abs" weights
    at zero (s = eps) and b != 0 that is ulp(|b|)/eps. float64 keeps ~1e-11 there;
    this is the bound the README documents (not a defect of the kernels)."""
    x0 = rng.standard_normal((8, 2, 50))
    w, b = np.array([0.0, 1.0]), np.array([0.7, 0.7])
    x = x0.copy()
    _, saved = numbaabn.inplace_abn_forward(x, w, b, None, None, activation="identity")
    _, _, _, ctx = ref.forward(x0, w, b, activation="identity")
    dz0 = rng.standard_normal(x0.shape)
    dx, dw, db = numbaabn.inplace_abn_backward(dz0.copy(), saved)
    dx_ref, dw_ref, db_ref = ref.backward(dz0, ctx)
    bound = np.finfo(np.float64).eps * 0.7 / 1e-5 * 10
    assert abs(dw[0] - dw_ref[0]) <= bound * ctx["abs_sums"][1][0]
    assert abs(dw[1] - dw_ref[1]) <= 1e-12 * ctx["abs_sums"][1][1]
