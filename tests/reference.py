"""A slow, obviously correct float64 NumPy implementation of SPEC section 1.

Written from the formulas, independent of the kernels: it keeps the input x and
differentiates with respect to it directly; it never inverts the activation.
"""
import numpy as np

DEFAULT_PARAM = {"identity": None, None: None, "leaky_relu": 0.01, "elu": 1.0, "relu": None}


def _act(y, activation, a):
    if activation in (None, "identity"):
        return y
    if activation == "leaky_relu":
        return np.where(y >= 0, y, a * y)
    if activation == "elu":
        return np.where(y >= 0, y, a * np.expm1(np.minimum(y, 0)))
    if activation == "relu":
        return np.maximum(y, 0)
    raise ValueError(activation)


def _act_grad(y, activation, a):
    """dz/dy as a function of y."""
    if activation in (None, "identity"):
        return np.ones_like(y)
    if activation == "leaky_relu":
        return np.where(y >= 0, 1.0, a)
    if activation == "elu":
        return np.where(y >= 0, 1.0, a * np.exp(np.minimum(y, 0)))
    if activation == "relu":
        return (y > 0).astype(np.float64)
    raise ValueError(activation)


def _to_ncs(x, channels_last):
    x = np.asarray(x, dtype=np.float64)
    if channels_last:
        x = np.moveaxis(x, -1, 1)
    return x.reshape(x.shape[0], x.shape[1], -1)


def _from_ncs(v, shape, channels_last):
    if channels_last:
        inner = (shape[0], shape[-1]) + tuple(shape[1:-1])
        return np.moveaxis(v.reshape(inner), 1, -1)
    return v.reshape(shape)


def forward(x, weight=None, bias=None, running_mean=None, running_var=None, *, training=True,
            momentum=0.9, eps=1e-5, activation="leaky_relu", activation_param=None,
            channels_last=False, use_global_stats=False, weight_mode="abs"):
    """Returns (z, new_running_mean, new_running_var, ctx) in float64."""
    a = DEFAULT_PARAM[activation] if activation_param is None else activation_param
    v = _to_ncs(x, channels_last)
    C = v.shape[1]
    has_running = running_mean is not None
    batch = not has_running or (training and not use_global_stats)
    if batch:
        mean = v.mean(axis=(0, 2))
        var = ((v - mean[None, :, None]) ** 2).mean(axis=(0, 2))
    else:
        mean = np.asarray(running_mean, np.float64)
        var = np.asarray(running_var, np.float64)
    w = np.ones(C) if weight is None else np.asarray(weight, np.float64)
    s = (np.abs(w) + eps if weight is not None else w) if weight_mode == "abs" else w
    b = np.zeros(C) if bias is None else np.asarray(bias, np.float64)
    inv_std = 1.0 / np.sqrt(var + eps)
    xhat = (v - mean[None, :, None]) * inv_std[None, :, None]
    y = s[None, :, None] * xhat + b[None, :, None]
    z = _act(y, activation, a)
    rm = rv = None
    if has_running:
        rm, rv = np.asarray(running_mean, np.float64), np.asarray(running_var, np.float64)
        if batch:
            rm = momentum * rm + (1 - momentum) * mean
            rv = momentum * rv + (1 - momentum) * var
    ctx = dict(xhat=xhat, y=y, s=s, w=w, inv_std=inv_std, batch=batch, activation=activation,
               a=a, shape=np.shape(x), channels_last=channels_last, weight_mode=weight_mode,
               has_weight=weight is not None)
    return _from_ncs(z, np.shape(x), channels_last), rm, rv, ctx


def backward(dz, ctx):
    """Returns (dx, dweight, dbias) in float64 (dweight w.r.t. the raw weight)."""
    d = _to_ncs(dz, ctx["channels_last"])
    g = d * _act_grad(ctx["y"], ctx["activation"], ctx["a"])
    xhat, s, inv_std = ctx["xhat"], ctx["s"], ctx["inv_std"]
    M = xhat.shape[0] * xhat.shape[2]
    S1 = g.sum(axis=(0, 2))
    S2 = (g * xhat).sum(axis=(0, 2))
    if ctx["batch"]:
        dx = (s * inv_std)[None, :, None] * (g - S1[None, :, None] / M
                                             - xhat * S2[None, :, None] / M)
    else:
        dx = (s * inv_std)[None, :, None] * g
    if ctx["weight_mode"] == "abs" and ctx["has_weight"]:
        dw = S2 * np.where(ctx["w"] >= 0, 1.0, -1.0)
    else:
        dw = S2
    ctx["dx_scale"] = float(np.max(np.abs((s * inv_std)[None, :, None] * g), initial=0.0))
    ctx["abs_sums"] = (np.abs(g).sum(axis=(0, 2)), np.abs(g * xhat).sum(axis=(0, 2)))
    # ELU's gradient from its output is dz (z + a): for very negative y, z ~ -a, and an
    # output stored in float16 loses (z + a) to cancellation, an absolute error of up
    # to ulp16(a) |dz| per element. The float16 tolerance of the sums includes it.
    elu = ctx["activation"] == "elu"
    absd = np.abs(d)
    ctx["f16_slack"] = ((ctx["a"] if elu else 0.0) * absd.sum(axis=(0, 2)),
                        (ctx["a"] if elu else 0.0) * (absd * np.abs(xhat)).sum(axis=(0, 2)))
    return _from_ncs(dx, ctx["shape"], ctx["channels_last"]), dw, S1
