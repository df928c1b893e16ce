"""Pooling kernels: float32/int8 max and average pooling (pool.pyx) and binary max pooling on
packed bits (max over ±1 is an AND of the encoded bits)."""
import numpy as np

from .. import cpu
from .. import reference as ref
from .._kernels import bconv as kbin
from .._kernels import pool as kpool
from ..errors import ShapeError
from ..shapes import as_pair, as_padding, conv_output
from .base import Layer, TensorSpec


class _Pool2D(Layer):
    input_kinds = ("float32", "int8")

    def __init__(self, pool_size=2, strides=None, padding="valid", name=None):
        super().__init__(name)
        who = name or type(self).__name__
        self.pool_size = as_pair(pool_size, "pool_size", who)
        self.strides = as_pair(strides if strides is not None else self.pool_size, "strides", who)
        self.padding = as_padding(padding, who)

    def get_config(self):
        return {"pool_size": list(self.pool_size), "strides": list(self.strides),
                "padding": self.padding if isinstance(self.padding, str) else [list(p) for p in self.padding],
                "name": self.name}

    def _build(self, spec):
        if len(spec.shape) != 3:
            raise ShapeError(f"{self.name}: takes (batch, height, width, channels) input, got {spec.describe()}")
        h, w, c = spec.shape
        pt, pb, hout = conv_output(h, self.pool_size[0], self.strides[0], 1, self.padding, 0, self.name)
        pl, pr, wout = conv_output(w, self.pool_size[1], self.strides[1], 1, self.padding, 1, self.name)
        if max(pt, pb) >= self.pool_size[0] or max(pl, pr) >= self.pool_size[1]:
            raise ShapeError(f"{self.name}: padding {((pt, pb), (pl, pr))} leaves windows with no input "
                             f"(pool size {self.pool_size})")
        self._pads = ((pt, pb), (pl, pr))
        self._out_hw = (hout, wout)
        return TensorSpec(spec.kind, (hout, wout, c), spec.scale, spec.zero_point)

    def mops(self):
        hout, wout = self._out_hw
        return hout * wout * self.input_spec.channels * self.pool_size[0] * self.pool_size[1] / 1e6

    def _pool(self, op, x, out):
        x = np.ascontiguousarray(x)
        y = self._output(out, x.shape[0])
        (pt, _), (pl, _) = self._pads
        self.last_isa = kpool.pool2d(op, x, *self.pool_size, *self.strides, pt, pl, *self._out_hw, y,
                                     cpu.active(), cpu.num_threads())
        return y


class MaxPool2D(_Pool2D):
    """Max pooling of float32, int8 (exact) or packed binary tensors."""

    input_kinds = ("float32", "int8", "binary")

    def call(self, x, out=None):
        if self.input_spec.kind != "binary":
            return self._pool("max", x, out)
        y = self._output(out, x.shape[0])
        (pt, _), (pl, _) = self._pads
        self.last_isa = kbin.bmaxpool2d(x, *self.pool_size, *self.strides, pt, pl, *self._out_hw, y,
                                        cpu.active(), cpu.num_threads())
        return y

    def reference(self, x):
        if self.input_spec.kind != "binary":
            return ref.max_pool(x, self.pool_size, self.strides, self._pads)
        values = ref.unpack_bits(x, self.input_spec.channels)
        return ref.pack_bits(ref.max_pool(values, self.pool_size, self.strides, self._pads) < 0)


class AveragePool2D(_Pool2D):
    """Mean over each window, padding excluded from the count; int8 stays int8 (integer sum,
    division rounding half away from zero)."""

    def call(self, x, out=None):
        return self._pool("avg", x, out)

    def reference(self, x):
        return ref.avg_pool(x, self.pool_size, self.strides, self._pads)


class GlobalAveragePooling2D(Layer):
    """Mean over height and width -> (C,); int8 as AveragePool2D."""

    input_kinds = ("float32", "int8")

    def _build(self, spec):
        if len(spec.shape) != 3:
            raise ShapeError(f"{self.name}: takes (batch, height, width, channels) input, got {spec.describe()}")
        return TensorSpec(spec.kind, (spec.shape[2],), spec.scale, spec.zero_point)

    def call(self, x, out=None):
        x = np.ascontiguousarray(x)
        n, h, w, c = x.shape
        y = self._output(out, n)
        self.last_isa = kpool.pool2d("avg", x, h, w, 1, 1, 0, 0, 1, 1, y.reshape(n, 1, 1, c), cpu.active(),
                                     cpu.num_threads())
        return y

    def reference(self, x):
        h, w = x.shape[1:3]
        return ref.avg_pool(x, (h, w), (1, 1), ((0, 0), (0, 0))).reshape(x.shape[0], -1)
