"""Convolution and dense layers of every kind.

| layer                         | input   | weights                  | accumulator            |
|-------------------------------|---------|--------------------------|------------------------|
| Conv2D / Dense                | float32 | float32                  | float (sgemm)          |
| BinaryConv2D / BinaryDense    | binary  | 1 bit (+ optional scale) | int: K - 2*popcount    |
| Int8Conv2D / Int8Dense        | int8    | int8, per-channel scale  | int32, exact           |
| FloatBinaryConv2D / ...Dense  | float32 | 1 bit + per-channel scale| float                  |
| Int8BinaryConv2D / ...Dense   | int8    | 1 bit + per-channel scale| int32, exact           |

Every kind computes an accumulator per output, then one output transform (see
reference.py): float  y = float32(acc [+ int bias]) * mult + bias, clamped by the activation;
int8 (int-accumulator kinds) the requantize rule; bits (after folding a Sign) a per-channel
threshold.  Dense layers are convolutions whose kernel covers the whole input grid.

Each kind keeps its kernel in the layout its GEMM reads (pybnn.layouts): packed once from
set_weights, or used in place from a model file's map.
"""
import copy

import numpy as np

from .. import cpu, layouts
from .. import reference as ref
from .._kernels import bconv as kbin, bitpack as kpack, dwconv as kdw, gemm as kgemm
from ..errors import ConfigError, ShapeError, WeightsError
from ..shapes import as_pair, as_padding, conv_output, words
from .base import Layer, TensorSpec

ACTIVATIONS = {None: (-np.inf, np.inf), "linear": (-np.inf, np.inf), "relu": (0.0, np.inf)}


class _Conv(Layer):
    acc = "float"          # what the accumulator holds: "float" or "int"
    kernel_kind = "float"  # what set_weights takes for the kernel: "float", "int8" or "bits"
    layout = None          # how the layer keeps it (pybnn.layouts): set by every kind
    dense = False
    gemm = None            # the GEMM of the fused im2col + GEMM + transform driver (gemm_conv)
    _dw = None             # depthwise layers: the (KH*KW, Cout) kernel the depthwise driver reads
    _parts = None          # other grouped layers: one ungrouped layer per group

    def __init__(self, filters, kernel_size, strides=1, padding="valid", dilation_rate=1,
                 use_bias=True, activation=None, name=None, groups=1):
        super().__init__(name)
        who = name or type(self).__name__
        if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
            raise ConfigError(f"{who}: groups must be a positive int, got {groups!r}")
        if self.dense and groups != 1:
            raise ConfigError(f"{who}: dense layers have no groups")
        if filters is not None and not isinstance(filters, bool) and isinstance(filters, (int, np.integer)) \
                and filters % groups:
            raise ConfigError(f"{who}: filters ({filters}) must be a multiple of groups ({groups})")
        self.groups = int(groups)
        if isinstance(filters, bool) or not isinstance(filters, (int, np.integer)) or filters < 1:
            raise ConfigError(f"{who}: {'units' if self.dense else 'filters'} must be a positive int, got {filters!r}")
        self.filters = int(filters)
        self.kernel_size = as_pair(kernel_size, "kernel_size", who)
        self.strides = as_pair(strides, "strides", who)
        self.dilation_rate = as_pair(dilation_rate, "dilation_rate", who)
        self.padding = as_padding(padding, who)
        self.use_bias = bool(use_bias)
        if activation not in ACTIVATIONS:
            raise ConfigError(f"{who}: activation must be one of {[a for a in ACTIVATIONS if a]} or None, "
                              f"got {activation!r}")
        self.activation = activation
        self._out = None  # output transform, set from the weights (and replaced by folding)

    def get_config(self):
        config = {"name": self.name, "filters": self.filters, "kernel_size": list(self.kernel_size),
                  "strides": list(self.strides), "padding": self.padding if isinstance(self.padding, str)
                  else [list(p) for p in self.padding], "dilation_rate": list(self.dilation_rate),
                  "use_bias": self.use_bias, "activation": self.activation}
        if self.dense:
            config["units"] = config.pop("filters")
            for key in ("kernel_size", "strides", "padding", "dilation_rate"):
                del config[key]
        elif self.groups != 1:  # absent when 1: files written before groups existed stay equal
            config["groups"] = self.groups
        return config

    # ------------------------------------------------------------ geometry
    def _build(self, spec):
        if self.dense:
            if len(spec.shape) != 1:
                raise ShapeError(f"{self.name}: a dense layer takes (batch, features) input, got "
                                 f"{spec.describe()}; add a Flatten first")
            # Binary input keeps its pixel grid: the dense kernel covers it (valid, stride 1).
            h, w, c = spec.grid if spec.kind == "binary" else (1, 1, spec.shape[0])
            self.kernel_size, self.strides, self.dilation_rate = (h, w), (1, 1), (1, 1)
            self._geom = (h, w, c, 0, 0, 0, 0, 1, 1)
            out_shape = (self.filters,)
        else:
            if len(spec.shape) != 3:
                raise ShapeError(f"{self.name}: takes (batch, height, width, channels) input, got {spec.describe()}")
            h, w, c = spec.shape
            kh, kw = self.kernel_size
            pt, pb, hout = conv_output(h, kh, self.strides[0], self.dilation_rate[0], self.padding, 0, self.name)
            pl, pr, wout = conv_output(w, kw, self.strides[1], self.dilation_rate[1], self.padding, 1, self.name)
            if c % self.groups:
                raise ShapeError(f"{self.name}: input channels ({c}) must be a multiple of groups ({self.groups})")
            self._geom = (h, w, c, pt, pb, pl, pr, hout, wout)
            out_shape = (hout, wout, self.filters)
        self._check_input(spec)
        return self._output_spec(out_shape, spec)

    def _check_input(self, spec):
        pass

    def _output_spec(self, shape, spec):
        return TensorSpec("float32", shape)

    @property
    def in_channels(self):
        return self._geom[2]

    @property
    def depth(self):
        """K: inputs summed per output."""
        return self.kernel_size[0] * self.kernel_size[1] * self.in_channels // self.groups

    def _pads(self):
        _, _, _, pt, pb, pl, pr, _, _ = self._geom
        return ((pt, pb), (pl, pr))

    # ------------------------------------------------------------ weights
    def _kernel_shape(self):
        kh, kw = self.kernel_size
        if self.dense:
            return (kh * kw * self.in_channels, self.filters)
        return (kh, kw, self.in_channels // self.groups, self.filters)

    def _extra_weights(self):
        return [("bias", (self.filters,), "float")] if self.use_bias else []

    def weight_specs(self):
        self._require_built("weight_specs")
        return [("kernel", self._kernel_shape(), self.kernel_kind)] + self._extra_weights()

    def _kernel4_shape(self):
        """The kernel as the convolution sees it: (KH, KW, Cin / groups, Cout); dense layers
        (1, 1, K, units), or (H, W, C, units) over a binary grid."""
        return (*self.kernel_size, self.in_channels // self.groups, self.filters)

    def _depthwise(self):
        """Grouped with one input channel per group, on float or int8 input: the depthwise
        kernel runs it, from a plain (KH*KW, Cout) copy of the kernel."""
        return self.groups > 1 and self.in_channels == self.groups and self.input_kinds != ("binary",)

    def _packed_shape(self):
        """Shape of the kernel in this layer's layout: (KH, KW, Cin, Cout), or one kernel per
        group (G, KH, KW, Cin/G, Cout/G); None when the layer keeps it plain."""
        if self._depthwise():
            return None
        kh, kw, cg, cout = self._kernel4_shape()
        return (kh, kw, cg, cout) if self.groups == 1 else (self.groups, kh, kw, cg, cout // self.groups)

    def stored_specs(self, packed=True):
        specs = super().stored_specs()
        shape = self._packed_shape()
        if shape and packed:
            specs[0] = ("kernel", shape, self.layout)
        return specs

    def _check_weight(self, spec, w, check_values):
        """A kernel may also come packed (a model file's tensor, in this layer's layout)."""
        if spec[0] != "kernel" or not isinstance(w, layouts.Packed):
            return super()._check_weight(spec, w, check_values)
        shape = self._packed_shape()
        if (w.layout, w.shape) != (self.layout, shape):
            raise WeightsError(f"{self.name}: kernel is {w.layout}{list(w.shape)}, expected {self.layout}{list(shape)}")
        problem = w.problem()
        if problem:
            raise WeightsError(f"{self.name}: kernel: {problem}")
        if check_values and not w.values_ok():
            raise WeightsError(f"{self.name}: kernel holds values outside the layer's range (int8 -128, NaN or inf)")
        return w

    def _named(self):
        return {spec[0]: w for spec, w in zip(self.weight_specs(), self._weights)}

    def _prepare(self):
        named = self._named()
        kernel = named["kernel"]
        if self.groups > 1:
            self._prepare_groups(kernel)
        else:
            if not isinstance(kernel, layouts.Packed):  # kept packed only: get_weights unpacks it
                kernel = self._weights[0] = layouts.pack(self.layout, kernel.reshape(self._kernel4_shape()))
            self._wpacked = kernel.array
        self._out = self._default_output(named)

    @property
    def _kernel4(self):
        """The logical kernel (KH, KW, Cin / groups, Cout) for the NumPy reference (unpacked:
        a new array)."""
        kernel = self._weights[0]
        return kernel.unpack() if isinstance(kernel, layouts.Packed) else kernel.reshape(self._kernel4_shape())

    # ------------------------------------------------------------ groups
    def _prepare_groups(self, kernel):
        """Depthwise layers (see _depthwise) run the depthwise kernel on the whole tensor; any
        other grouping runs one ungrouped layer per group (`_parts`), each on its slice of the
        channels with its group's kernel (a view of the grouped layout)."""
        h, w, c = self._geom[:3]
        kh, kw = self.kernel_size
        self._dw = self._parts = None
        if self._depthwise():
            if self.kernel_kind == "bits":  # a binary kernel keeps its signs only (get_weights: +-1)
                kernel = self._weights[0] = ref.binarize(kernel)
            self._dw = np.ascontiguousarray(kernel.reshape(kh * kw, self.filters),
                                            np.int32 if self.acc == "int" else np.float32)
            return
        if not isinstance(kernel, layouts.Packed):
            kernel = self._weights[0] = layouts.pack_groups(self.layout, kernel.reshape(self._kernel4_shape()),
                                                            self.groups)
        cg, fg = c // self.groups, self.filters // self.groups
        spec = self.input_spec
        part_spec = TensorSpec(spec.kind, (h, w, cg), spec.scale, spec.zero_point)
        self._parts = []
        for g in range(self.groups):
            config = dict(self.get_config(), name=f"{self.name}/group{g}", filters=fg)
            config.pop("groups")
            part = type(self).from_config(config)
            part.build(part_spec)
            sl = slice(g * fg, (g + 1) * fg)
            part.set_weights([kernel.group(g)] + [v[sl] for v in self._weights[1:]], check_values=False)
            self._parts.append(part)

    def _bound_parts(self):
        """The per-group layers with their slices of the current output transform (which
        folding may have replaced); made again only when it changes."""
        cached = self.__dict__.get("_parts_for")
        if cached is None or cached[0] is not self._out:
            fg = self.filters // self.groups
            hout, wout = self._geom[7:]
            kind = {"float": "float32", "int8": "int8", "bits": "binary"}[self._out["kind"]]
            spec = self.output_spec
            parts = []
            for g, part in enumerate(self._parts):
                bound = copy.copy(part)
                bound._out = {k: v[g * fg:(g + 1) * fg] if isinstance(v, np.ndarray) and v.ndim == 1 else v
                              for k, v in self._out.items()}
                bound.output_spec = TensorSpec(kind, (hout, wout, fg), spec.scale, spec.zero_point)
                parts.append(bound)
            self._parts_for = cached = (self._out, parts)
        return cached[1]

    def _call_groups(self, x, y):
        h, w, c, pt, _, pl, _, hout, wout = self._geom
        n = x.shape[0]
        cg, fg = c // self.groups, self.filters // self.groups
        bits_in, bits_out = self.input_spec.kind == "binary", self._out["kind"] == "bits"
        if bits_out:
            y[...] = 0  # padding bits of the last word stay 0
        rows_out = y.reshape(n * hout * wout, -1)
        for g, part in enumerate(self._bound_parts()):
            if bits_in:
                xg = np.zeros((n, h, w, words(cg)), np.uint32)
                kpack.copy_bits(x.reshape(n * h * w, -1), g * cg, xg.reshape(n * h * w, -1), 0, cg)
            else:
                xg = np.ascontiguousarray(x.reshape(n, h, w, c)[..., g * cg:(g + 1) * cg])
            yg = part.call(xg).reshape(n * hout * wout, -1)
            if bits_out:
                kpack.copy_bits(yg, 0, rows_out, g * fg, fg)
            else:
                rows_out[:, g * fg:(g + 1) * fg] = yg
        return part.last_isa

    def _default_output(self, named):
        lo, hi = ACTIVATIONS[self.activation]
        bias = named.get("bias", np.zeros(self.filters, np.float32))
        return {"kind": "float", "mult": np.ones(self.filters, np.float32), "bias": bias,
                "lo": lo, "hi": hi, "ibias": None}

    def mops(self):
        _, _, _, _, _, _, _, hout, wout = self._geom
        return 2.0 * hout * wout * self.filters * self.depth / 1e6

    # ------------------------------------------------------------ running
    def acc_range(self):
        """Bounds of the integer accumulator (int kinds), used to fold thresholds."""
        raise NotImplementedError

    def call(self, x, out=None):
        """One C call: im2col (or the bit copy), GEMM and output transform fused per block of
        rows, the transform applied while the block is in cache (no accumulator array, no
        second pass; bit-identical to transforming the whole accumulator matrix).  Kept to
        the few Python steps a 20 us layer can afford: each costs ~0.3-0.9 us right after a
        kernel (measured on a 7x7x256 binary convolution)."""
        if self._weights is None:
            raise ShapeError(f"{self.name}: has no weights; call set_weights() or load a weights file")
        y = self._output(None, x.shape[0]) if out is None else out
        if self._parts is not None:
            self.last_isa = self._call_groups(x, y)
            return y
        _, self.last_isa = self._kernel()(x, cpu.active(), cpu.num_threads(),
                                          y if y.ndim == 4 else y.reshape(x.shape[0], 1, 1, y.shape[-1]))
        return y

    def _kernel(self, dtype=None):
        """The layer's C call with its weights, geometry and output transform checked once
        (kgemm.GemmConv, kbin.BConv2D): calling it checks only the input, so a small layer
        costs little more than its arithmetic.  Made again when folding has replaced the
        transform (or set_weights the weights and transform).  dtype=np.int32: a call that
        returns the accumulators (benchmark breakdowns; not cached)."""
        if dtype is not None:
            return self._make_kernel(dtype, {})
        cached = self.__dict__.get("_kernel_for")
        if cached is None or cached[0] is not self._out:
            out = self._out
            if out["kind"] == "float":
                args = np.float32, dict(mult=out["mult"], bias=out["bias"], lo=out["lo"], hi=out["hi"],
                                        ibias=out["ibias"] if self.acc == "int" else None)
            elif out["kind"] == "int8":
                args = np.int8, dict(mult=out["mult"], ibias=out["ibias"], zp=out["zp"], qmin=out["qmin"],
                                     qmax=out["qmax"])
            else:
                args = np.uint32, dict(thr=out["thr"], dir=out["dir"])
            cached = self._kernel_for = (out, self._make_kernel(*args))
        return cached[1]

    def _make_kernel(self, dtype, params):
        """im2col, GEMM and output transform fused per block of output rows, in C (depthwise
        layers: the depthwise kernel and the transform, fused per block of pixels)."""
        h, w, c, pt, _, pl, _, hout, wout = self._geom
        zp = self.input_spec.zero_point if self.acc == "int" else 0
        if self._dw is not None:
            return kdw.DWConv(self._dw, h, w, c, *self.kernel_size, *self.strides, *self.dilation_rate, pt, pl,
                              hout, wout, dtype, a_zp=zp, **params)
        return kgemm.GemmConv(self.gemm, self._wpacked, h, w, c, self.filters, *self.kernel_size, *self.strides,
                              *self.dilation_rate, pt, pl, hout, wout, dtype, a_zp=zp, **params)

    def reference(self, x):
        if self._weights is None:
            raise ShapeError(f"{self.name}: has no weights; call set_weights() or load a weights file")
        acc = self._reference_acc(x)
        n = x.shape[0]
        acc = acc.reshape(-1, self.filters)
        out = self._out
        if out["kind"] == "float":
            if self.acc == "float":
                acc = acc.astype(np.float32)
            elif out["ibias"] is not None:
                acc = acc + out["ibias"]
            y = ref.to_float(acc, out["mult"], out["bias"], out["lo"], out["hi"])
        elif out["kind"] == "int8":
            y = ref.requantize(acc, out["ibias"], out["mult"], out["zp"], out["qmin"], out["qmax"])
        else:
            y = ref.pack_bits(ref.threshold_negative(acc, out["thr"], out["dir"]))
        return y.reshape(self.output_spec.array_shape(n))

    def _columns(self, x, im2col, pad=None):
        """im2col of an NHWC batch; a 1x1/stride-1/unpadded kernel needs none."""
        h, w, c, pt, pb, pl, pr, hout, wout = self._geom
        kh, kw = self.kernel_size
        n = x.shape[0]
        x4 = x.reshape(n, h, w, c)
        if (kh, kw) == (h, w) and (hout, wout) == (1, 1) and not (pt or pl):
            return x4.reshape(n, self.depth)  # dense: the whole input is one column
        if (kh, kw) == (1, 1) and self.strides == (1, 1) and not (pt or pb or pl or pr):
            return x4.reshape(n * h * w, c)
        cols = np.empty((n * hout * wout, self.depth), x.dtype)
        args = (x4, kh, kw, *self.strides, *self.dilation_rate, pt, pl, hout, wout)
        threads = cpu.num_threads()
        im2col(*args, cols, threads) if pad is None else im2col(*args, pad, cols, threads)
        return cols

    def _reference_input(self, x):
        h, w, c = self._geom[:3]
        return x.reshape(x.shape[0], h, w, c)

    def _reference_conv(self, x, kernel4, pad_value=0):
        return ref.conv2d(x, kernel4, self.strides, self.dilation_rate, self._pads(), pad_value, self.groups)


class Conv2D(_Conv):
    """Float32 convolution and dense layer: pybnn's register-blocked float GEMM (sgemm,
    fbgemm.h) fused with im2col and the output transform.  It beats NumPy's BLAS on
    convolution shapes (narrow outputs, tall patch matrices) and matches single-threaded
    BLAS on batch-sized dense layers (matrix-vector products bound by weight bandwidth),
    where it also keeps to pybnn's thread count: BLAS's own thread pool, which that count
    does not govern, made a 512 -> 1000 dense layer at batch 1 take 20 ms instead of 0.04 ms
    on a busy 2-core machine."""

    gemm = "sgemm"
    layout = "float32_sgemm"

    def _reference_acc(self, x):
        return self._reference_conv(self._reference_input(x), self._kernel4)


class FloatBinaryConv2D(_Conv):
    """Float input x binary weights with a per-output-channel scale (BinaryConnect / BWN):
    y = scale[c] * sum x * sign(w) + bias[c]."""

    input_kinds = ("float32",)
    kernel_kind = "bits"
    layout = "bits_fbgemm"
    gemm = "fbgemm"

    def _extra_weights(self):
        return [("scale", (self.filters,), "float")] + super()._extra_weights()

    def _default_output(self, named):
        out = super()._default_output(named)
        out["mult"] = named["scale"]
        return out

    def _accumulate(self, x):
        cols = self._columns(x, kgemm.im2col_f32)
        acc = np.empty((cols.shape[0], self.filters), np.float32)
        isa = kgemm.fbgemm(cols, self._wpacked, self.depth, self.filters, acc, cpu.active(), cpu.num_threads())
        return acc, isa

    def _reference_acc(self, x):
        return self._reference_conv(self._reference_input(x), ref.binarize(self._kernel4))


class BinaryConv2D(_Conv):
    """Binary input x binary weights: dot = K - 2*popcount(x XOR w) on packed bits.

    pad_value: what the border holds for the binary input: 0 (default, what larq and
    PyTorch BNN code compute), +1 (larq's pad_values=1) or -1 (daBNN, Bolt, BMXNet).
    use_scale adds a per-output-channel multiplier (XNOR-Net's alpha)."""

    input_kinds = ("binary",)
    kernel_kind = "bits"
    layout = "bits_xgemm"
    acc = "int"

    def __init__(self, filters, kernel_size, strides=1, padding="valid", dilation_rate=1,
                 pad_value=0, use_bias=False, use_scale=False, activation=None, name=None, groups=1):
        super().__init__(filters, kernel_size, strides, padding, dilation_rate, use_bias, activation, name, groups)
        if pad_value not in (-1, 0, 1) or isinstance(pad_value, bool):
            raise ConfigError(f"{name or type(self).__name__}: pad_value must be -1, 0 or 1, got {pad_value!r}")
        self.pad_value, self.use_scale = int(pad_value), bool(use_scale)

    def get_config(self):
        config = super().get_config()
        config["use_scale"] = self.use_scale
        if not self.dense:
            config["pad_value"] = self.pad_value
        return config

    def _extra_weights(self):
        scale = [("scale", (self.filters,), "float")] if self.use_scale else []
        return scale + super()._extra_weights()

    def _prepare(self):
        super()._prepare()
        h, w, c, pt, pb, pl, pr, hout, wout = self._geom
        # bconv2d's arguments from channels to pad_value
        self._conv_geometry = (c, self.filters, *self.kernel_size, *self.strides, *self.dilation_rate,
                               pt, pl, hout, wout, self.pad_value)
        self._pad_cache = {}  # shared with the folded copies of this layer (copy.copy)

    def _pad_terms(self):
        """(tapsum, corr) for bconv2d.  The border corrections depend on the geometry and the
        weights only, so they are made once, at the first call: not at load, since the tap
        sums read every weight bit and a mapped load reads none.  Without a border to correct
        (dense layers, valid padding, pad_value +1) the tap sums are never read."""
        terms = self._pad_cache.get("terms")
        if terms is None:
            h, w, c = self._geom[:3]
            if kbin.needs_pad_corrections(h, w, *self._conv_geometry):
                tapsum = kbin.tap_sums_packed(self._wpacked, c, self.filters, *self.kernel_size)
            else:
                tapsum = np.zeros((self.kernel_size[0] * self.kernel_size[1], self.filters), np.int32)
            terms = self._pad_cache["terms"] = (tapsum, kbin.pad_corrections(h, w, *self._conv_geometry, tapsum))
        return terms

    def _default_output(self, named):
        out = super()._default_output(named)
        if self.use_scale:
            out["mult"] = named["scale"]
        return out

    def acc_range(self):
        return -self.depth, self.depth

    def _make_kernel(self, dtype, params):
        h, w = self._geom[:2]
        tapsum, corr = self._pad_terms()
        return kbin.BConv2D(self._wpacked, h, w, *self._conv_geometry, tapsum, dtype, corr=corr, **params)

    def _accumulate(self, x):
        """The int32 accumulators alone (benchmark breakdowns)."""
        acc, isa = self._kernel(np.int32)(x, cpu.active(), cpu.num_threads())
        return acc.reshape(-1, self.filters), isa

    def _reference_acc(self, x):
        h, w, c = self._geom[:3]
        values = ref.unpack_bits(x, c)
        return ref.binary_conv2d(values, self._kernel4, self.strides, self.dilation_rate, self._pads(),
                                 self.pad_value, self.groups)


class Int8Conv2D(_Conv):
    """Int8 input x int8 weights (symmetric, per-output-channel kernel_scale), exact int32
    accumulation, int32 bias at scale input_scale * kernel_scale (the TFLite / ONNX
    QLinearConv convention).  output="float" dequantizes: y = float32(acc + bias) * mult;
    output="int8" requantizes to (output_scale, output_zero_point)."""

    input_kinds = ("int8",)
    kernel_kind = "int8"
    layout = "int8_igemm"
    acc = "int"
    scale_name = "kernel_scale"
    gemm = "igemm"

    def __init__(self, filters, kernel_size, strides=1, padding="valid", dilation_rate=1,
                 use_bias=True, activation=None, output="float", output_scale=None,
                 output_zero_point=0, name=None, groups=1):
        super().__init__(filters, kernel_size, strides, padding, dilation_rate, use_bias, activation, name, groups)
        who = name or type(self).__name__
        if output not in ("float", "int8"):
            raise ConfigError(f"{who}: output must be 'float' or 'int8', got {output!r}")
        if output == "int8":
            if output_scale is None or not np.isfinite(output_scale) or output_scale <= 0:
                raise ConfigError(f"{who}: output='int8' needs a positive output_scale, got {output_scale!r}")
            if not -128 <= int(output_zero_point) <= 127:
                raise ConfigError(f"{who}: output_zero_point must be in [-128, 127], got {output_zero_point!r}")
        self.output, self.output_scale, self.output_zero_point = output, output_scale, int(output_zero_point)

    def get_config(self):
        config = super().get_config()
        config.update(output=self.output, output_scale=self.output_scale,
                      output_zero_point=self.output_zero_point)
        return config

    def _output_spec(self, shape, spec):
        if self.output == "int8":
            return TensorSpec("int8", shape, self.output_scale, self.output_zero_point)
        return TensorSpec("float32", shape)

    def _extra_weights(self):
        bias = [("bias", (self.filters,), "int32")] if self.use_bias else []
        return [(self.scale_name, (self.filters,), "float")] + bias

    def _default_output(self, named):
        scale = named[self.scale_name]
        if self.scale_name == "kernel_scale" and not np.all(scale > 0):
            raise WeightsError(f"{self.name}: kernel_scale must be positive")
        ibias = named.get("bias")
        in_scale = self.input_spec.scale
        lo, hi = ACTIVATIONS[self.activation]
        if self.output == "float":
            mult = (np.float64(in_scale) * scale).astype(np.float32)
            return {"kind": "float", "mult": mult, "bias": np.zeros(self.filters, np.float32),
                    "lo": lo, "hi": hi, "ibias": ibias}
        mult = (np.float64(in_scale) * scale / self.output_scale).astype(np.float32)
        zp = self.output_zero_point
        return {"kind": "int8", "mult": mult, "zp": zp, "qmin": max(-128, zp) if lo == 0 else -128,
                "qmax": 127, "ibias": ibias if ibias is not None else np.zeros(self.filters, np.int32)}

    def acc_range(self):
        return -self.depth * 255 * 127, self.depth * 255 * 127

    def _accumulate(self, x):
        zp = self.input_spec.zero_point
        cols = self._columns(x, kgemm.im2col_i8, pad=zp)
        acc = np.empty((cols.shape[0], self.filters), np.int32)
        isa = getattr(kgemm, self.gemm)(cols, self._wpacked, self.depth, self.filters, zp, acc, cpu.active(),
                                        cpu.num_threads())
        return acc, isa

    def _reference_acc(self, x):
        return ref.int8_conv2d(self._reference_input(x), self.input_spec.zero_point, self._kernel4,
                               self.strides, self.dilation_rate, self._pads(), self.groups)


class Int8BinaryConv2D(Int8Conv2D):
    """Int8 input x binary weights with a per-output-channel scale: an Int8Conv2D whose
    weights are ±1 and whose kernel scale is the binary scale (alpha)."""

    kernel_kind = "bits"
    layout = "bits_ibgemm"
    scale_name = "scale"
    gemm = "ibgemm"

    def acc_range(self):
        return -self.depth * 255, self.depth * 255

    def _reference_acc(self, x):
        return ref.int8_conv2d(self._reference_input(x), self.input_spec.zero_point,
                               ref.binarize(self._kernel4).astype(np.int64), self.strides,
                               self.dilation_rate, self._pads(), self.groups)


def _dense(conv_cls, doc):
    """The dense form of a convolution kind: units instead of filters, kernel (in, units)."""

    def __init__(self, units, use_bias=conv_cls is not BinaryConv2D, activation=None, name=None, **kwargs):
        conv_cls.__init__(self, units, 1, use_bias=use_bias, activation=activation, name=name, **kwargs)

    name = conv_cls.__name__.replace("Conv2D", "Dense")
    return type(name, (conv_cls,), {"__doc__": doc, "dense": True, "__init__": __init__})


Dense = _dense(Conv2D, "Float32 fully connected layer (sgemm, see Conv2D).")
BinaryDense = _dense(BinaryConv2D, "Binary input x binary weights, fully connected.  After a Flatten "
                     "of a binary tensor it reads the packed bits in place.")
Int8Dense = _dense(Int8Conv2D, "Int8 fully connected layer (see Int8Conv2D).")
FloatBinaryDense = _dense(FloatBinaryConv2D, "Float input x binary weights, fully connected.")
Int8BinaryDense = _dense(Int8BinaryConv2D, "Int8 input x binary weights, fully connected.")
