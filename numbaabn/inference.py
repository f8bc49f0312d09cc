"""Lightweight CPU inference: fused eval layers, BN folding, importing trained weights.

* ``layer.fuse()`` (any numbaabn layer) returns a :class:`FusedABN`: the per-channel
  coefficients of the eval-mode forward computed once, so a call is a single pass
  over memory, ``x <- act(x * scale + shift)``, in place, for any batch size
  (N = 1 included: eval needs no batch statistics), both layouts, f16/f32/f64.
* :func:`fold` folds an eval-mode BN into the weights of the preceding dense or
  convolution layer.
* Importers build a layer whose eval output equals the originating framework's:
  :func:`from_torch_state_dict`, :func:`from_paddle_state_dict`,
  :func:`from_inplace_abn_state_dict` (mapillary's InPlace-ABN).
"""
import numpy as np

from . import _config, api, cpu

__all__ = ["FusedABN", "fold", "from_torch_state_dict", "from_paddle_state_dict",
           "from_inplace_abn_state_dict"]


def _eval_params(layer):
    """(scale s, bias b, mean, var, eps) in float64 for the eval forward of ``layer``."""
    C = layer.num_features
    w = np.ones(C) if layer.weight is None else np.asarray(layer.weight, np.float64)
    if layer.weight is not None and layer.weight_mode == "abs":
        s = np.abs(w) + layer.eps
    else:
        s = w
    b = np.zeros(C) if layer.bias is None else np.asarray(layer.bias, np.float64)
    rm, rv = layer._running()
    if rm is None:
        raise ValueError(f"{type(layer).__name__} keeps no running statistics "
                         "(track_running_stats=False): there is no eval-mode BN to fuse or fold")
    return s, b, np.asarray(rm, np.float64), np.asarray(rv, np.float64), float(layer.eps)


class FusedABN:
    """Eval-mode BN + activation with precomputed per-channel coefficients.

    ``scale = s / sqrt(running_var + eps)`` and ``shift = b - running_mean * scale``;
    calling applies ``act(x * scale + shift)`` over ``x`` in place and returns ``x``.

    The coefficients are the unfused eval path's (``cpu.fill_coefficients``), so the
    layer's output is the unfused layer's bit for bit. Two forms, per channel:

    * ``act(x * scale + shift)``, two per-channel constants per element, where the
      channel's offset is moderate, ``|running_mean * scale| <= 8 (|s| + |b|)``: its
      extra rounding, about ``ulp(running_mean * scale)``, is then at most ~16 ulps of
      the output's scale ``|s| + |b|`` (measured at the limit in float32: 13.7 ulps).
    * otherwise ``act((x - running_mean) * scale + bias)`` with the running mean
      subtracted first, in the data's precision (three constants): accurate for any
      offset.

    ``two_constant`` says whether every channel takes the first form; then the kernels
    load two constants per element instead of three (channels last: ~10% faster).
    """

    def __init__(self, scale_s, bias, mean, var, eps, activation="leaky_relu",
                 activation_param=None, data_format="NCHW"):
        self.act, self.alpha = api._activation(activation, activation_param, in_place=False)
        self.activation, self.activation_param = activation, activation_param
        self.channels_last = api._channels_last(data_format)
        self.data_format = data_format
        self.num_features = int(np.shape(mean)[0])
        self._params = (np.asarray(scale_s, np.float64), np.asarray(bias, np.float64),
                        np.asarray(mean, np.float64), np.asarray(var, np.float64), float(eps))
        s, b, m, v, e = self._params
        self.scale = s / np.sqrt(v + e)
        self.shift = b - m * self.scale
        self._coef = {}
        self.two_constant = not self._coefficients(np.dtype(np.float64))[0].any()

    def _coefficients(self, cdtype):
        if cdtype not in self._coef:
            s, b, m, v, e = self._params
            coef = np.zeros((10, self.num_features), cdtype)
            cpu.fill_coefficients(m, v, s, b, e, False, True, False, coef, False, 0.0,
                                  api._NO_RUNNING[np.dtype(np.float32)],
                                  api._NO_RUNNING[np.dtype(np.float32)])
            self._coef[cdtype] = coef
        return self._coef[cdtype]

    def __call__(self, x):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"FusedABN runs on NumPy arrays, got {type(x).__name__}")
        api._check_data(x, "input", writable=True)
        _config.restart_labels()  # before _coefficients, which may compile (see _config)
        c_axis = x.ndim - 1 if self.channels_last else 1
        if x.shape[c_axis] != self.num_features:
            raise ValueError(f"expected {self.num_features} channels on axis {c_axis}, got "
                             f"input of shape {x.shape}")
        cdtype = cpu.compute_dtype(x.dtype)
        views = api._views([x], c_axis, cpu)[0]
        a, ia, lo = api._act_constants(self.alpha, cdtype)
        cpu.forward(views, views, self._coefficients(cdtype), self.act, a, ia, lo)
        return x

    def __repr__(self):
        return (f"FusedABN({self.num_features}, activation={self.activation!r}, "
                f"data_format={self.data_format!r})")


def fuse(layer):
    """The eval-mode forward of ``layer`` as a :class:`FusedABN`."""
    s, b, m, v, e = _eval_params(layer)
    return FusedABN(s, b, m, v, e, activation=layer.activation,
                    activation_param=layer.activation_param, data_format=layer.data_format)


def fold(weight, bias, layer, axis=0):
    """Fold the eval-mode BN of ``layer`` into the preceding linear layer.

    ``weight`` has the output channels on ``axis``: ``axis=0`` for PyTorch/Paddle
    convolution ``(C_out, C_in, kh, kw)`` and ``nn.Linear`` ``(C_out, C_in)`` weights,
    ``axis=-1`` (or 1) for a NumPy dense layer ``y = x @ W`` with ``W`` of shape
    ``(C_in, C_out)``. ``bias`` is ``(C_out,)`` or None.

    Returns ``(weight', bias', activation, activation_param)``: applying the linear
    layer with ``weight'``, ``bias'`` and then ``activation`` equals applying the
    original linear layer and then ``layer`` in eval mode.
    """
    s, b, m, v, e = _eval_params(layer)
    scale = s / np.sqrt(v + e)
    W = np.asarray(weight)
    ax = axis % W.ndim
    if W.shape[ax] != scale.shape[0]:
        raise ValueError(f"weight has {W.shape[ax]} output channels on axis {axis}, the layer "
                         f"has {scale.shape[0]}")
    shape = [1] * W.ndim
    shape[ax] = -1
    out_dtype = W.dtype if W.dtype.kind == "f" else np.float64
    W2 = (W * scale.reshape(shape)).astype(out_dtype)
    b0 = np.zeros(scale.shape[0]) if bias is None else np.asarray(bias, np.float64)
    b2 = (scale * (b0 - m) + b).astype(out_dtype)
    return W2, b2, layer.activation, layer.activation_param


def _array(v):
    """A NumPy copy of a NumPy array or a framework tensor (torch, paddle)."""
    if hasattr(v, "detach"):
        v = v.detach()
    if hasattr(v, "cpu"):
        v = v.cpu()
    if hasattr(v, "numpy"):
        v = v.numpy()
    return np.array(v, copy=True)


def _build(state, keys, *, weight_mode, momentum, eps, activation, activation_param,
           data_format, dtype, cls):
    w, b, rm, rv = (None if k is None or k not in state else _array(state[k]) for k in keys)
    if rm is None or rv is None:
        raise KeyError(f"state dict needs {keys[2]!r} and {keys[3]!r}; has {sorted(state)}")
    C = rm.shape[0]
    layer = cls(C, activation=activation, activation_param=activation_param, eps=eps,
                momentum=momentum, data_format=data_format, dtype=dtype,
                weight_mode=weight_mode, affine=w is not None or b is not None)
    if layer.weight is not None:
        layer.weight[...] = 1.0 if w is None else w
        layer.bias[...] = 0.0 if b is None else b
    layer.running_mean[...] = rm
    layer.running_var[...] = rv
    return layer.eval()


def _prefixed(state, prefix):
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def from_torch_state_dict(state, prefix="", *, eps=1e-5, momentum=0.1, activation=None,
                          activation_param=None, data_format="NCHW", dtype="float32",
                          cls=None):
    """A layer equal in eval mode to ``torch.nn.BatchNorm1d/2d/3d`` (+ ``activation``).

    Keys ``weight``, ``bias``, ``running_mean``, ``running_var`` (after ``prefix``);
    ``num_batches_tracked`` is read into ``layer.num_batches_tracked`` and otherwise
    ignored. Conversions: PyTorch's ``momentum`` (default 0.1, the weight of the new
    batch) becomes ``1 - momentum`` (0.9); the weights are exact BN weights
    (``weight_mode="signed"``). PyTorch's running_var accumulates the unbiased batch
    variance; it is copied as is, so eval outputs match, but further training here
    accumulates the biased variance. ``cls`` defaults to ``ABN`` (any activation;
    ``InPlaceABN`` for an invertible one if you want in-place training).
    """
    state = _prefixed(state, prefix)
    layer = _build(state, ("weight", "bias", "running_mean", "running_var"),
                   weight_mode="signed", momentum=1.0 - momentum, eps=eps,
                   activation=activation, activation_param=activation_param,
                   data_format=data_format, dtype=dtype, cls=cls or api.ABN)
    if "num_batches_tracked" in state:
        layer.num_batches_tracked = int(_array(state["num_batches_tracked"]))
    return layer


def from_paddle_state_dict(state, prefix="", *, epsilon=1e-5, momentum=0.9, act=None,
                           data_layout="NCHW", dtype="float32"):
    """A :class:`numbaabn.BatchNorm` equal in eval mode to Paddle's ``BatchNorm``.

    Keys ``weight``, ``bias``, ``_mean``, ``_variance`` (after ``prefix``). Paddle's
    momentum convention is numbaabn's; nothing is converted."""
    state = _prefixed(state, prefix)
    layer = api.BatchNorm(np.shape(state["_mean"])[0], act=act, momentum=momentum,
                          epsilon=epsilon, dtype=dtype, data_layout=data_layout)
    layer.load_state_dict({k: _array(v) for k, v in state.items()
                           if k in ("weight", "bias", "_mean", "_variance")})
    return layer.eval()


def from_inplace_abn_state_dict(state, prefix="", *, eps=1e-5, momentum=0.1,
                                activation="leaky_relu", activation_param=0.01,
                                data_format="NCHW", dtype="float32"):
    """An :class:`numbaabn.InPlaceABN` equal in eval mode to mapillary's
    ``InPlaceABN`` / ``ABN`` (``weight``, ``bias``, ``running_mean``, ``running_var``).

    mapillary scales by ``|weight| + eps``: the layer keeps ``weight_mode="abs"``
    with the same ``eps``, so outputs match. Its ``momentum`` is PyTorch's (0.1 ->
    0.9 here) and its running_var is unbiased (copied as is; see
    :func:`from_torch_state_dict`). The activation is not in the state dict: pass
    the one the model was built with (mapillary's default: leaky_relu, 0.01)."""
    state = _prefixed(state, prefix)
    return _build(state, ("weight", "bias", "running_mean", "running_var"),
                  weight_mode="abs", momentum=1.0 - momentum, eps=eps,
                  activation=activation, activation_param=activation_param,
                  data_format=data_format, dtype=dtype, cls=api.InPlaceABN)
