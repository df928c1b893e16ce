"""Layers that take several tensors: Add (residual shortcuts) and Concatenate (channels).

They are called with a list in the functional API: `L.Add()([x, shortcut])`.  Inputs of
other kinds than the layer takes get the documented conversions from the model (int8 or
binary -> Dequantize -> float32), exactly as single-input layers do.
"""
import numpy as np

from .. import reference as ref
from .._kernels import bitpack as kpack
from ..errors import ConfigError, ShapeError
from .base import KINDS, Layer, TensorSpec
from .core import channelwise


class _Merge(Layer):
    n_inputs = None

    def _names(self):
        return ", ".join(f"'{layer.name}'" for layer in self.inbound or []) or "its inputs"

    def build(self, specs):
        if not isinstance(specs, (list, tuple)) or len(specs) < 2:
            raise ShapeError(f"{self.name}: takes two or more tensors, got {specs!r}")
        for spec in specs:
            if spec.kind not in self.input_kinds:
                raise ShapeError(f"{self.name}: takes {' or '.join(self.input_kinds)} inputs, got {spec.describe()}")
        self.input_specs = list(specs)
        self.input_spec = specs[0]
        self.output_spec = self._build(self.input_specs)
        return self.output_spec


class Add(_Merge):
    """Elementwise sum of two or more tensors of one shape (residual shortcuts).

    Float32 by default: every input is converted to float32 (int8 and binary inputs through
    Dequantize) and summed left to right in float32.  With output_scale (and
    output_zero_point) the layer adds int8 tensors and writes int8:
    q = clamp(rint(sum_i float32(q_i - z_i) * float32(s_i / s_out)) + z_out, -128, 127),
    summed left to right in float32, rint half to even (reference.add_int8)."""

    input_kinds = ("float32", "int8")

    def __init__(self, output_scale=None, output_zero_point=0, name=None):
        super().__init__(name)
        who = name or "Add"
        if output_scale is not None and (not np.isfinite(output_scale) or output_scale <= 0):
            raise ConfigError(f"{who}: output_scale must be positive (or None for float32 output), "
                              f"got {output_scale!r}")
        if not -128 <= int(output_zero_point) <= 127:
            raise ConfigError(f"{who}: output_zero_point must be in [-128, 127], got {output_zero_point!r}")
        self.output_scale = None if output_scale is None else float(output_scale)
        self.output_zero_point = int(output_zero_point)
        # Set by folding: (k, (sub, mul, add)) when input k is a BatchNormalization's or
        # ChannelAffine's output folded into this layer (k is 0 or 1); None otherwise.
        self.folded, self._folded_reference = None, None

    def get_config(self):
        return {"output_scale": self.output_scale, "output_zero_point": self.output_zero_point, "name": self.name}

    def input_kinds_for(self, specs):
        if self.output_scale is None:
            return ["float32"] * len(specs)
        return ["int8" if s.kind == "int8" else None for s in specs]  # float -> int8 needs a Quantize

    def _build(self, specs):
        shapes = {s.shape for s in specs}
        if len(shapes) != 1:
            raise ShapeError(f"{self.name}: inputs from {self._names()} must have one shape, got "
                             f"{[s.describe() for s in specs]}")
        if self.output_scale is None:
            return TensorSpec("float32", specs[0].shape)
        self._mults = [np.float32(s.scale / self.output_scale) for s in specs]
        return TensorSpec("int8", specs[0].shape, self.output_scale, self.output_zero_point)

    def call(self, xs, out=None):
        if self.output_spec.kind == "int8":
            y = self._output(out, xs[0].shape[0])
            np.copyto(y, self.reference(xs))
            return y
        # float32, left to right: x0 + x1 in one pass of the per-channel kernel (with the
        # steps of a BatchNormalization / ChannelAffine folded into this Add on one of them:
        # x + y == y + x exactly, so the folded input may be either), then each further input
        k, steps = self.folded if self.folded else (0, (None, None, None))
        y = channelwise(self, xs[k], out, *steps, res=xs[1 - k])
        for x in xs[2:]:
            channelwise(self, y, y, res=x)
        return y

    def reference(self, xs):
        if self.output_spec.kind == "int8":
            return ref.add_int8(xs, [s.zero_point for s in self.input_specs], self._mults,
                                self.output_zero_point)
        if self.folded:
            k = self.folded[0]
            xs = list(xs)
            xs[k] = self._folded_reference(xs[k])
        return ref.add(xs)


class Concatenate(_Merge):
    """Concatenation along channels (the last axis) of tensors with the same other sizes.

    Float32 and binary inputs stay what they are; int8 inputs too when they all have the
    same scale and zero point.  Any other mix is converted to float32 (Dequantize) first.
    Binary tensors whose channel counts (all but the last) are multiples of 32 are joined
    word by word; other counts have their bits shifted into place (bitpack.copy_bits)."""

    input_kinds = KINDS

    def __init__(self, axis=-1, name=None):
        super().__init__(name)
        if axis != -1:
            raise ConfigError(f"{name or 'Concatenate'}: only axis=-1 (channels, NHWC) is supported, got {axis!r}")
        self.axis = -1

    def get_config(self):
        return {"axis": self.axis, "name": self.name}

    def input_kinds_for(self, specs):
        kinds = {s.kind for s in specs}
        if len(kinds) == 1 and (kinds != {"int8"} or len({(s.scale, s.zero_point) for s in specs}) == 1):
            return [s.kind for s in specs]
        return ["float32"] * len(specs)

    def _build(self, specs):
        lead = {s.shape[:-1] for s in specs}
        if len(lead) != 1:
            raise ShapeError(f"{self.name}: inputs from {self._names()} must agree in all but the channel "
                             f"axis, got {[s.describe() for s in specs]}")
        if specs[0].kind == "binary" and any(s.grid != TensorSpec("binary", s.shape).grid for s in specs):
            raise ShapeError(f"{self.name}: binary tensors are concatenated before a Flatten, not after "
                             f"(their bits stay on the pixel grid {[s.grid for s in specs]})")
        channels = sum(s.shape[-1] for s in specs)
        s = specs[0]
        self._channels = [spec.shape[-1] for spec in specs]
        self._wordwise = all(c % 32 == 0 for c in self._channels[:-1])
        return TensorSpec(s.kind, s.shape[:-1] + (channels,), s.scale, s.zero_point)

    def call(self, xs, out=None):
        y = self._output(out, xs[0].shape[0])
        if self.output_spec.kind != "binary" or self._wordwise:
            np.concatenate(xs, axis=-1, out=y)
            return y
        y[...] = 0  # padding bits stay 0
        rows = y.reshape(-1, y.shape[-1])
        offset = 0
        for x, c in zip(xs, self._channels):
            kpack.copy_bits(x.reshape(rows.shape[0], -1), 0, rows, offset, c)
            offset += c
        return y

    def reference(self, xs):
        if self.output_spec.kind != "binary":
            return np.concatenate(xs, axis=-1)
        values = [ref.unpack_bits(x, c) for x, c in zip(xs, self._channels)]
        return ref.pack_bits(np.concatenate(values, axis=-1) < 0)
