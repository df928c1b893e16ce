"""PyTorch modules that train what pybnn runs.

In eval mode every module computes exactly what the pybnn layer it exports to computes
(docs/semantics.md), so a trained model predicts the same in both:

* sign(x) = +1 where x >= 0 (sign(0) = sign(-0.0) = +1), -1 where x < 0;
* convolutions pad as pybnn does: "valid", Keras "same" (the smaller half top/left, any
  stride) or explicit ((top, bottom), (left, right)); binary convolutions pad the binarized
  input with `pad_value` (0, +1 or -1);
* binary and int8 layers form the integer accumulator pybnn forms (exactly: integer values in
  float32 below 2**24, in float64 for int8), then apply pybnn's float32 output transform
  `y = acc * mult + bias`, one rounding per operation, in pybnn's order;
* BatchNorm2d / BatchNorm1d compute pybnn's `(x - mean) * (gamma / sqrt(var + eps)) + beta`.

In training mode the binarizations pass gradients straight through (|x| <= 1 for
activations) and the int8 quantizers fake-quantize with a straight-through estimator while
their observers follow the activation range.  Tensors are NCHW, as everywhere in PyTorch;
the exporter (export.py) transposes to pybnn's NHWC.
"""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..shapes import as_pair, as_padding, conv_output


# ---------------------------------------------------------------------------- binarization

def sign(x):
    """pybnn's binarization: +1 where x >= 0, -1 where x < 0 (sign(0) = +1; NaN gives +1)."""
    return 1 - 2 * (x < 0).to(x.dtype)


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return sign(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


def sign_ste(x):
    """sign(x) forward; backward, the straight-through estimator gated by |x| <= 1 (the
    gradient of hard-tanh, as BinaryNet trains)."""
    return _SignSTE.apply(x)


class BinaryActivation(nn.Module):
    """sign_ste as a module.  Exports to pybnn's Sign; after a BatchNorm pybnn folds both into
    per-channel thresholds, after a binary convolution into the convolution itself."""

    def forward(self, x):
        return sign_ste(x)


# ---------------------------------------------------------------------------- int8 activations

class Quantize(nn.Module):
    """Per-tensor int8 activation quantizer with a min/max observer: pybnn's Quantize.

    q = clamp(rint(x / scale) + zero_point, -128, 127), rounding half to even; the forward
    pass returns the real value (q - zero_point) * scale.  scale and zero_point follow from the
    observed range [min(lo, 0), max(hi, 0)] mapped onto [-128, 127] (0 is exact).

    Training mode follows the range with a moving average (`momentum`) and fake-quantizes
    with a straight-through gradient (zero where the value clips).  `calibrate(model, data)`
    measures the exact range on sample data instead (post-training calibration); while it
    observes, the module passes its input through unchanged."""

    def __init__(self, momentum=0.01):
        super().__init__()
        self.momentum = float(momentum)
        self.register_buffer("min_val", torch.tensor(math.inf))
        self.register_buffer("max_val", torch.tensor(-math.inf))
        self.observing = False

    @property
    def calibrated(self):
        return bool(torch.isfinite(self.min_val) and torch.isfinite(self.max_val))

    def reset(self):
        self.min_val.fill_(math.inf)
        self.max_val.fill_(-math.inf)

    def _observe(self, x, average):
        lo, hi = x.detach().min().float(), x.detach().max().float()
        if average and self.calibrated:
            self.min_val.add_(self.momentum * (lo - self.min_val))
            self.max_val.add_(self.momentum * (hi - self.max_val))
        else:
            self.min_val.copy_(torch.minimum(self.min_val, lo))
            self.max_val.copy_(torch.maximum(self.max_val, hi))

    def qparams(self):
        """(scale, zero_point): a float32 value as a Python float, and an int in [-128, 127]."""
        if not self.calibrated:
            raise ConfigError("Quantize: no activation range observed yet; train the model or run "
                              "pybnn.torch.calibrate(model, data) (or pass calibration_data to export)")
        lo, hi = min(float(self.min_val), 0.0), max(float(self.max_val), 0.0)
        scale = float(np.float32((hi - lo) / 255)) if hi > lo else 1.0
        return scale, int(np.clip(-128 - round(lo / scale), -128, 127))

    def quantize(self, x):
        """The int8 values (as a float tensor) pybnn's Quantize layer computes."""
        scale, zero_point = self.qparams()
        q = torch.round(x / torch.tensor(scale, dtype=x.dtype))
        q = torch.nan_to_num(q, nan=0.0, posinf=127.0, neginf=-128.0)
        return torch.clamp(q + zero_point, -128, 127)

    def forward(self, x):
        if self.training:
            self._observe(x, average=True)
        elif self.observing:
            self._observe(x, average=False)
            return x
        scale, zero_point = self.qparams()
        q = self.quantize(x)
        y = (q - zero_point) * torch.tensor(scale, dtype=x.dtype)
        if not self.training:
            return y
        raw = torch.round(x.detach() / scale) + zero_point
        inside = ((raw >= -128) & (raw <= 127)).to(x.dtype)
        return y.detach() + (x - x.detach()) * inside

    def extra_repr(self):
        return "uncalibrated" if not self.calibrated else "scale={:g}, zero_point={}".format(*self.qparams())


def calibrate(model, data, batch_size=256):
    """Post-training calibration: set the range of every Quantize in `model` to the exact
    min/max of its input over `data` (an (N, ...) tensor or array, run in eval mode in
    batches).  Returns the number of quantizers calibrated."""
    quantizers = [m for m in model.modules() if isinstance(m, Quantize)]
    if not quantizers:
        return 0
    data = torch.as_tensor(np.asarray(data, np.float32) if not torch.is_tensor(data) else data)
    modes = eval_mode(model)
    for q in quantizers:
        q.reset()
        q.observing = True
    try:
        with torch.no_grad():
            for start in range(0, len(data), batch_size):
                model(data[start:start + batch_size])
    finally:
        for q in quantizers:
            q.observing = False
        restore_mode(modes)
    return len(quantizers)


def recompute_batch_norm(model, data, batch_size=None):
    """Set the running statistics of every BatchNorm in `model` to the mean and variance of its
    input over `data` (in batches of `batch_size`, default all at once), everything else in
    eval mode.  A binary network flips weights until its last steps, so the moving averages
    of training lag behind the final weights; recomputing them once at the end is cheap."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    data = torch.as_tensor(np.asarray(data, np.float32) if not torch.is_tensor(data) else data)
    modes, momenta = eval_mode(model), [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
        m.train()
    try:
        with torch.no_grad():
            for start in range(0, len(data), batch_size or len(data)):
                model(data[start:start + (batch_size or len(data))])
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        restore_mode(modes)


def eval_mode(model):
    """Put every module in eval mode; returns what restore_mode needs (model.train(mode) would
    set all modules alike, and a container's flag need not match its children's)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    return modes


def restore_mode(modes):
    for m, training in modes:
        m.training = training


# ---------------------------------------------------------------------------- convolutions

class _Conv(nn.Module):
    """Latent float weights (out, in, kh, kw) or (out, in) for the dense form, an optional float
    bias, pybnn's padding rules.  Subclasses define how weights and inputs are quantized."""

    dense = False
    binary_weights = False  # latent weights whose sign is the weight (clip_latent_weights)

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding="valid", dilation=1,
                 bias=True):
        super().__init__()
        who = type(self).__name__
        for what, n in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
                raise ConfigError(f"{who}: {what} must be a positive int, got {n!r}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = as_pair(kernel_size, "kernel_size", who)
        self.stride = as_pair(stride, "stride", who)
        self.dilation = as_pair(dilation, "dilation", who)
        self.padding = as_padding(padding, who)
        shape = (self.out_channels, self.in_channels) + (() if self.dense else self.kernel_size)
        self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.empty(self.out_channels)) if bias else None
        # nn.Conv2d / nn.Linear's initialization
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.weight[0].numel())
            nn.init.uniform_(self.bias, -bound, bound)

    def pads(self, height, width):
        """((top, bottom), (left, right)) for an input of this size, as pybnn computes them."""
        if self.dense:
            return ((0, 0), (0, 0))
        who = type(self).__name__
        pt, pb, _ = conv_output(height, self.kernel_size[0], self.stride[0], self.dilation[0], self.padding, 0, who)
        pl, pr, _ = conv_output(width, self.kernel_size[1], self.stride[1], self.dilation[1], self.padding, 1, who)
        return ((pt, pb), (pl, pr))

    def _pad(self, x, value):
        if self.dense:
            return x
        (pt, pb), (pl, pr) = self.pads(x.shape[2], x.shape[3])
        return F.pad(x, (pl, pr, pt, pb), value=float(value)) if pt or pb or pl or pr else x

    def _op(self, x, w):
        if self.dense:
            return F.linear(x, w)
        return F.conv2d(x, w, None, self.stride, 0, self.dilation)

    def _channels(self, v):
        """A per-output-channel vector shaped to broadcast over the output (or the weights)."""
        return v.view((-1,) + (1,) * (1 if self.dense else 3))

    def _transform(self, acc, mult=None):
        """pybnn's float output transform y = acc * mult + bias, one rounding per operation."""
        shape = (1, -1) + (1,) * (acc.dim() - 2)
        if mult is not None:
            acc = acc * mult.view(shape)
        return acc if self.bias is None else acc + self.bias.view(shape)

    def alpha(self):
        """XNOR-Net's per-output-channel scale of binary weights: mean |w| over each filter."""
        return self.weight.abs().flatten(1).mean(1)

    def extra_repr(self):
        if self.dense:
            return f"{self.in_channels}, {self.out_channels}, bias={self.bias is not None}"
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding!r}, dilation={self.dilation}, bias={self.bias is not None}")


class BinaryConv2d(_Conv):
    """Binary input x binary weights (pybnn's BinaryConv2D): sign(x) and sign(w), both with
    straight-through gradients; the border of the binarized input holds `pad_value` (0, the
    PyTorch/larq default, +1 or -1).  scale=True multiplies each output channel by
    alpha = mean |w| (XNOR-Net); bias adds a float bias.  The accumulator is an integer, so
    this module and pybnn agree exactly."""

    binary_weights = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding="valid", dilation=1,
                 pad_value=0, bias=False, scale=False):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, bias)
        if pad_value not in (-1, 0, 1) or isinstance(pad_value, bool):
            raise ConfigError(f"{type(self).__name__}: pad_value must be -1, 0 or 1, got {pad_value!r}")
        self.pad_value, self.scale = int(pad_value), bool(scale)

    def forward(self, x):
        acc = self._op(self._pad(sign_ste(x), self.pad_value), sign_ste(self.weight))
        return self._transform(acc, self.alpha() if self.scale else None)

    def extra_repr(self):
        pad = "" if self.dense else f", pad_value={self.pad_value}"
        return f"{super().extra_repr()}{pad}, scale={self.scale}"


class FloatBinaryConv2d(_Conv):
    """Float input x binary weights scaled per output channel (BinaryConnect / BWN, pybnn's
    FloatBinaryConv2D): y = alpha * conv(x, sign(w)) + bias with alpha = mean |w|; the border
    is 0.  The accumulator is a float sum, so pybnn agrees to float rounding."""

    binary_weights = True

    def forward(self, x):
        return self._transform(self._op(self._pad(x, 0), sign_ste(self.weight)), self.alpha())


class Int8Conv2d(_Conv):
    """Int8 convolution (pybnn's Int8Conv2D behind a Quantize): the input is quantized per
    tensor by `self.input_quant` (a Quantize), the weights symmetrically per output channel
    (scale = max |w| / 127, values in [-127, 127]), the bias to int32 at input scale x weight
    scale; the output is float.

    Training mode fake-quantizes input and weights (straight-through) with a float bias.  Eval
    mode computes pybnn's integer arithmetic: the exact int32 accumulator (in float64) plus the
    int32 bias, then float32(acc) * (input_scale * weight_scale)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding="valid", dilation=1,
                 bias=True):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, bias)
        self.input_quant = Quantize()

    def weight_scale(self):
        """Per-output-channel weight scale (float32, positive)."""
        peak = self.weight.detach().abs().flatten(1).amax(1)
        return torch.where(peak > 0, peak / 127, torch.ones_like(peak))

    def weight_int(self):
        """The integer weights (as a float tensor) the exported file holds."""
        return torch.clamp(torch.round(self.weight.detach() / self._channels(self.weight_scale())), -127, 127)

    def _fake_weight(self):
        w = self.weight_int() * self._channels(self.weight_scale())
        return self.weight + (w - self.weight).detach()

    def int_bias(self):
        """The int32 bias at scale input_scale * weight_scale (float64 tensor), or None."""
        if self.bias is None:
            return None
        unit = self.input_quant.qparams()[0] * self.weight_scale().double()
        b = torch.where(unit > 0, self.bias.detach().double() / unit, torch.zeros_like(unit))
        return torch.clamp(torch.round(b), -2**31, 2**31 - 1)

    def multiplier(self):
        """float32(input_scale * weight_scale), computed in float64 as pybnn does."""
        return (self.input_quant.qparams()[0] * self.weight_scale().double()).float()

    def forward(self, x):
        if self.training or self.input_quant.observing:
            return self._transform(self._op(self._pad(self.input_quant(x), 0), self._fake_weight()))
        zero_point = self.input_quant.qparams()[1]
        q = (self.input_quant.quantize(x) - zero_point).double()  # the border is real 0: q - zp = 0
        acc = self._op(self._pad(q, 0), self.weight_int().double())
        ibias = self.int_bias()
        if ibias is not None:
            acc = acc + ibias.view((1, -1) + (1,) * (acc.dim() - 2))
        return acc.float() * self.multiplier().view((1, -1) + (1,) * (acc.dim() - 2))


class Int8BinaryConv2d(Int8Conv2d):
    """Int8 input x binary weights (pybnn's Int8BinaryConv2D behind a Quantize): an Int8Conv2d
    whose weights are sign(w) with the per-channel scale alpha = mean |w|."""

    binary_weights = True

    def weight_scale(self):
        return self.alpha().detach()

    def weight_int(self):
        return sign(self.weight.detach())

    def _fake_weight(self):
        return sign_ste(self.weight) * self._channels(self.alpha())


def _dense(conv_cls, doc):
    """The fully connected form of a convolution module: (in_features, out_features), weight
    (out, in) as nn.Linear."""

    def __init__(self, in_features, out_features, bias=conv_cls not in (BinaryConv2d,), **kwargs):
        conv_cls.__init__(self, in_features, out_features, 1, bias=bias, **kwargs)

    name = conv_cls.__name__.replace("Conv2d", "Linear")
    return type(name, (conv_cls,), {"__doc__": doc, "dense": True, "__init__": __init__,
                                    "__module__": __name__, "__qualname__": name})


BinaryLinear = _dense(BinaryConv2d, "Binary input x binary weights, fully connected (pybnn's BinaryDense); "
                      "scale=True multiplies by alpha = mean |w| per output.")
FloatBinaryLinear = _dense(FloatBinaryConv2d, "Float input x binary weights with alpha = mean |w| per output "
                           "(pybnn's FloatBinaryDense).")
Int8Linear = _dense(Int8Conv2d, "Int8 fully connected layer (pybnn's Int8Dense behind a Quantize).")
Int8BinaryLinear = _dense(Int8BinaryConv2d, "Int8 input x binary weights, fully connected (pybnn's "
                          "Int8BinaryDense behind a Quantize).")


def clip_latent_weights(model, bound=1.0):
    """Clamp the latent weights of every binary-weight module to [-bound, bound] (BinaryNet:
    call after each optimizer step so the straight-through gradient keeps flowing)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _Conv) and m.binary_weights:
                m.weight.clamp_(-bound, bound)


# ---------------------------------------------------------------------------- batch norm

class _PybnnRounding:
    """Eval forward in pybnn's float32 order: (x - mean) * (gamma / sqrt(var + eps)) + beta
    (nn.BatchNorm computes x * a + (beta - mean * a), which rounds differently)."""

    def forward(self, x):
        if self.training or self.running_mean is None:
            return super().forward(x)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        var = self.running_var + torch.tensor(self.eps, dtype=self.running_var.dtype)
        gamma = self.weight if self.affine else torch.ones_like(var)
        inv = gamma / torch.sqrt(var)
        y = (x - self.running_mean.view(shape)) * inv.view(shape)
        return y + self.bias.view(shape) if self.affine else y + torch.zeros_like(var).view(shape)


class BatchNorm2d(_PybnnRounding, nn.BatchNorm2d):
    """nn.BatchNorm2d whose eval forward rounds exactly as pybnn's BatchNormalization."""


class BatchNorm1d(_PybnnRounding, nn.BatchNorm1d):
    """nn.BatchNorm1d whose eval forward rounds exactly as pybnn's BatchNormalization."""
