"""Binarization, quantization, normalization, activations and reshaping."""
import numpy as np

from .. import cpu
from .. import reference as ref
from .._kernels import bitpack as kpack, eltwise as kew
from ..errors import ConfigError, WeightsError
from ..shapes import words
from .base import KINDS, Layer, TensorSpec


class Sign(Layer):
    """Binarize to packed bits: +1 where x >= 0 (so sign(0) = +1, -0.0 too; NaN gives +1),
    -1 where x < 0; int8 input binarizes as q < zero_point.  After folding, a Sign can carry
    per-channel thresholds and directions (-1 where dir >= 0 and x < thr, or dir < 0 and
    x > thr).  Binary input passes through."""

    input_kinds = KINDS

    def __init__(self, name=None):
        super().__init__(name)
        self.thresholds = None  # (thr, dir) per channel, set by folding

    def _build(self, spec):
        if spec.kind == "binary":
            return spec
        # Default rule as thresholds, made once: int8 -> q < zero_point; float -> the fast x < 0 path.
        self._default = ((np.full(spec.channels, spec.zero_point, np.int32), np.ones(spec.channels, np.int8))
                         if spec.kind == "int8" else (None, None))
        return TensorSpec("binary", spec.shape)

    def _thresholds(self):
        return self.thresholds if self.thresholds is not None else self._default

    def aliases_input(self):
        return self.input_spec.kind == "binary"

    def call(self, x, out=None):
        spec = self.input_spec
        if spec.kind == "binary":
            return x
        c = spec.channels
        rows = x.reshape(-1, c)
        y = self._output(out, x.shape[0])
        thr, direction = self._thresholds()
        pack = kpack.pack_float if spec.kind == "float32" else kpack.pack_int8
        self.last_isa = pack(rows, y.reshape(rows.shape[0], words(c)), thr, direction, cpu.active(),
                             cpu.num_threads())
        return y

    def reference(self, x):
        if self.input_spec.kind == "binary":
            return x
        thr, direction = self._thresholds()
        negative = x < 0 if thr is None else ref.threshold_negative(x, thr, direction)
        return ref.pack_bits(negative).reshape(self.output_spec.array_shape(x.shape[0]))


class Quantize(Layer):
    """float32 -> int8 with a per-tensor scale and zero point (round half to even, as ONNX
    QuantizeLinear)."""

    def __init__(self, scale, zero_point=0, name=None):
        super().__init__(name)
        if not np.isfinite(scale) or scale <= 0:
            raise ConfigError(f"{name or 'Quantize'}: scale must be positive, got {scale!r}")
        if not -128 <= int(zero_point) <= 127:
            raise ConfigError(f"{name or 'Quantize'}: zero_point must be in [-128, 127], got {zero_point!r}")
        self.scale, self.zero_point = float(scale), int(zero_point)

    def get_config(self):
        return {"scale": self.scale, "zero_point": self.zero_point, "name": self.name}

    def _build(self, spec):
        return TensorSpec("int8", spec.shape, self.scale, self.zero_point)

    def call(self, x, out=None):
        return _into(out, ref.quantize(x, self.scale, self.zero_point))


class Dequantize(Layer):
    """int8 -> float32 ((q - zp) * scale) or binary -> float32 (±1)."""

    input_kinds = ("int8", "binary")

    def _build(self, spec):
        return TensorSpec("float32", spec.shape)

    def call(self, x, out=None):
        spec = self.input_spec
        if spec.kind == "binary":
            return _into(out, ref.unpack_bits(x, spec.grid[2]).reshape((x.shape[0],) + spec.shape))
        return _into(out, ref.dequantize(x, spec.scale, spec.zero_point))


class BatchNormalization(Layer):
    """Inference batch norm over the last axis: (x - mean) * (gamma / sqrt(var + eps)) + beta.
    Weights in Keras order: gamma, beta, moving_mean, moving_variance.  A model folds it into
    the preceding layer's multiplier/bias, or exactly into a following Sign's thresholds."""

    def __init__(self, epsilon=1e-3, name=None):
        super().__init__(name)
        if not np.isfinite(epsilon) or epsilon < 0:
            raise ConfigError(f"{name or 'BatchNormalization'}: epsilon must be >= 0, got {epsilon!r}")
        self.epsilon = float(epsilon)

    def get_config(self):
        return {"epsilon": self.epsilon, "name": self.name}

    def weight_specs(self):
        c = (self._require_built("weight_specs").input_spec.channels,)
        return [("gamma", c, "float"), ("beta", c, "float"), ("moving_mean", c, "float"),
                ("moving_variance", c, "float")]

    def _prepare(self):
        gamma, _, _, var = self._weights
        if np.any(var + np.float32(self.epsilon) <= 0):
            raise WeightsError(f"{self.name}: moving_variance + epsilon must be positive")
        self._inv = (gamma / np.sqrt(var + np.float32(self.epsilon))).astype(np.float32)

    def channel_steps(self):
        """(sub, mul, add) of the per-channel kernel (eltwise.h): reference.batch_norm's
        float32 operations in its order."""
        return self._weights[2], self._inv, self._weights[1]

    def call(self, x, out=None):
        return channelwise(self, x, out, *self.channel_steps())

    def reference(self, x):
        return ref.batch_norm(x, *self._weights, self.epsilon)


class ChannelAffine(Layer):
    """Per-channel scale and shift over the last axis: y = x * scale[c] + bias[c] in float32,
    the product rounded first; use_scale=False gives y = x + bias[c], use_bias=False
    y = x * scale[c].  What importers make of a multiplication or addition by a per-channel
    constant (ReActNet's learnable biases and RSign thresholds sign(x - b), Mul/Add/Sub by
    constants in ONNX graphs).  A model folds it like BatchNormalization: exactly into a
    following Sign's thresholds, and into a preceding convolution's multiplier and bias."""

    def __init__(self, use_scale=True, use_bias=True, name=None):
        super().__init__(name)
        if not (use_scale or use_bias):
            raise ConfigError(f"{name or 'ChannelAffine'}: use_scale and use_bias are both False (nothing to do)")
        self.use_scale, self.use_bias = bool(use_scale), bool(use_bias)

    def get_config(self):
        return {"use_scale": self.use_scale, "use_bias": self.use_bias, "name": self.name}

    def weight_specs(self):
        c = (self._require_built("weight_specs").input_spec.channels,)
        return ([("scale", c, "float")] if self.use_scale else []) + ([("bias", c, "float")] if self.use_bias else [])

    def _parts(self):
        weights = iter(self._weights)
        scale = next(weights) if self.use_scale else None
        return scale, (next(weights) if self.use_bias else None)

    def channel_steps(self):
        """(sub, mul, add) of the per-channel kernel (eltwise.h): reference.affine's order."""
        return (None,) + self._parts()

    def call(self, x, out=None):
        return channelwise(self, x, out, *self.channel_steps())

    def reference(self, x):
        return ref.affine(x, *self._parts())


class ReLU(Layer):
    """max(x, 0) (or negative_slope * x below 0), optionally capped at max_value."""

    def __init__(self, max_value=None, negative_slope=0.0, name=None):
        super().__init__(name)
        if max_value is not None and not max_value >= 0:
            raise ConfigError(f"{name or 'ReLU'}: max_value must be >= 0, got {max_value!r}")
        self.max_value, self.negative_slope = max_value, float(negative_slope)

    def get_config(self):
        return {"max_value": self.max_value, "negative_slope": self.negative_slope, "name": self.name}

    def call(self, x, out=None):
        if self.negative_slope == 0:
            # x * (x >= 0) is the reference's where(x >= 0, x, x * 0) bit for bit (-0.0 for
            # negative x, NaN for NaN), one pass of the per-channel kernel
            y = channelwise(self, x, out, relu=True)
        else:
            y = _leaky(x, np.float32(self.negative_slope), self._output(out, x.shape[0]))
        if self.max_value is not None:
            np.minimum(y, np.float32(self.max_value), out=y)
        return y

    def reference(self, x):
        return ref.relu(x, self.max_value, self.negative_slope)


class PReLU(Layer):
    """x where x >= 0, alpha[c] * x below; weights: alpha (C,)."""

    def weight_specs(self):
        return [("alpha", (self._require_built("weight_specs").input_spec.channels,), "float")]

    def call(self, x, out=None):
        return _leaky(x, self._weights[0], self._output(out, x.shape[0]))

    def reference(self, x):
        return ref.prelu(x, self._weights[0])


class Softmax(Layer):
    """Softmax over the last axis."""

    def call(self, x, out=None):
        return _into(out, ref.softmax(x))


class Flatten(Layer):
    """(H, W, C) -> (H*W*C,) in (h, w, c) order.  Binary tensors keep their packed pixel grid,
    so flattening them moves no data."""

    input_kinds = KINDS

    def _build(self, spec):
        return TensorSpec(spec.kind, (int(np.prod(spec.shape)),), spec.scale, spec.zero_point,
                          spec.grid if spec.kind == "binary" else None)

    def aliases_input(self):
        return True

    def call(self, x, out=None):
        if self.input_spec.kind == "binary":
            return x
        return x.reshape(x.shape[0], -1)


def channelwise(layer, x, out, sub=None, mul=None, add=None, res=None, relu=False):
    """The per-channel float32 kernel (eltwise.h) for a layer: x [- sub] [* mul] [+ add]
    [+ res] [relu], into `out` (or a new array); sets layer.last_isa."""
    y = layer._output(out, x.shape[0])
    c = x.shape[-1]
    rows = x.size // c if c else 0
    layer.last_isa = kew.channelwise(x.reshape(rows, c), y.reshape(rows, c), sub, mul, add,
                                     None if res is None else res.reshape(rows, c), relu, cpu.active(),
                                     cpu.num_threads())
    return y


def _leaky(x, slope, y):
    """y = x where x >= 0, else x * slope (reference.relu / prelu, same float32 operations)."""
    np.multiply(x, slope, out=y)
    np.copyto(y, x, where=x >= 0)
    return y


def _into(out, y):
    """y, copied into `out` when the caller gave an output buffer."""
    if out is None:
        return y
    np.copyto(out, y.reshape(out.shape))
    return out
