"""Tensor descriptions and the Layer base class.

A layer is config + weights + build(input spec) -> output spec + call (compiled kernels) +
reference (NumPy, the semantics).  Python validates and allocates; kernels fill outputs.
"""
import itertools
import re

import numpy as np

from .. import reference as ref
from ..errors import ConfigError, ShapeError, WeightsError
from ..layouts import Packed, empty_aligned
from ..shapes import words

KINDS = ("float32", "int8", "binary")


class TensorSpec:
    """What flows between layers, per sample (the batch axis is not included).

    kind: "float32", "int8" (with per-tensor scale and zero_point) or "binary" (bit-packed).
    shape: the logical shape, e.g. (H, W, C) or (C,).
    grid: binary tensors only, the (H, W, C) pixel grid their words are laid out on; the
    array is (N, H, W, ceil(C/32)) uint32.  A flattened binary tensor keeps its grid, so
    Flatten costs nothing and the following BinaryDense reads the bits in place."""

    __slots__ = ("kind", "shape", "scale", "zero_point", "grid")

    def __init__(self, kind, shape, scale=None, zero_point=None, grid=None):
        self.kind, self.shape = kind, tuple(int(s) for s in shape)
        self.scale = None if scale is None else float(scale)
        self.zero_point = None if zero_point is None else int(zero_point)
        if kind == "binary" and grid is None:
            grid = self.shape if len(self.shape) == 3 else (1, 1, int(np.prod(self.shape)))
        self.grid = None if grid is None else tuple(int(g) for g in grid)

    @property
    def channels(self):
        return self.shape[-1]

    def array_shape(self, batch):
        if self.kind == "binary":
            h, w, c = self.grid
            return (batch, h, w, words(c))
        return (batch,) + self.shape

    @property
    def dtype(self):
        return {"float32": np.float32, "int8": np.int8, "binary": np.uint32}[self.kind]

    def __repr__(self):
        q = f", scale={self.scale:g}, zero_point={self.zero_point}" if self.kind == "int8" else ""
        return f"TensorSpec({self.kind}, {self.shape}{q})"

    def describe(self):
        return f"{self.kind}{list(self.shape)}"


_order = itertools.count()  # creation / call order: a valid topological order of functional graphs


class Node:
    """A symbolic tensor of the functional API: the output of `layer`.  Calling a layer on
    nodes (or on Input layers) connects it; pybnn.Model(inputs, outputs) collects the graph."""

    __slots__ = ("layer",)

    def __init__(self, layer):
        self.layer = layer

    def __repr__(self):
        spec = self.layer.output_spec
        return f"Node({self.layer.name or type(self.layer).__name__}{'' if spec is None else ': ' + spec.describe()})"


def _snake(name):
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z][a-z])", "_", name).lower()


class Layer:
    """Base class.  Subclasses set `input_kinds` (kinds consumed natively) and implement
    _build(spec) -> output spec, weight_specs(), call(x) and reference(x)."""

    input_kinds = ("float32",)
    n_inputs = 1  # tensors the layer takes; None: two or more (Add, Concatenate)

    def __init__(self, name=None):
        if name is not None and (not isinstance(name, str) or not name):
            raise ConfigError(f"{type(self).__name__}: name must be a non-empty string, got {name!r}")
        self.name = name
        self.input_spec = self.output_spec = None
        self._weights = None
        self.version = 0  # bumped by set_weights so models know to re-fold
        self.last_isa = None  # instruction-set path the last call ran (for profiling)
        self.inbound = None  # functional API: the layers whose outputs this one takes
        self._order = next(_order)

    # ------------------------------------------------------------ functional API
    def __call__(self, inputs):
        """Connect this layer to earlier outputs (a Node, an Input layer, or a list of them
        for layers taking several tensors); returns this layer's output Node."""
        who = self.name or type(self).__name__
        many = isinstance(inputs, (list, tuple))
        nodes = list(inputs) if many else [inputs]
        for node in nodes:
            if not (isinstance(node, Node) or isinstance(node, Input)):
                raise ConfigError(f"{who}: layers are called on the outputs of other layers (or on an "
                                  f"Input layer), got {node!r}")
        if self.n_inputs is None and (not many or len(nodes) < 2):
            raise ConfigError(f"{who}: takes a list of two or more tensors, got {inputs!r}")
        if self.n_inputs == 1 and (many or isinstance(self, Input)):
            raise ConfigError(f"{who}: takes one tensor, got {inputs!r}" if not isinstance(self, Input)
                              else "Input layers are not called: call other layers on them")
        if self.inbound is not None:
            raise ConfigError(f"{who}: this layer is already connected; a layer instance is used once "
                              f"(make another layer for another place in the graph)")
        self.inbound = [node.layer if isinstance(node, Node) else node for node in nodes]
        self._order = next(_order)
        return Node(self)

    def input_kinds_for(self, specs):
        """The kind each input must have (the model inserts the documented conversions).
        Layers taking several tensors override this."""
        spec = specs[0]
        if spec.kind in self.input_kinds:
            return [spec.kind]
        if "float32" in self.input_kinds:
            return ["float32"]
        if "binary" in self.input_kinds and spec.kind in ("float32", "int8"):
            return ["binary"]
        return [None]  # no documented conversion: the model says what to insert

    def aliases_input(self):
        """True when call() returns a view of its input (no output buffer needed)."""
        return False

    # ------------------------------------------------------------ config
    def get_config(self):
        return {"name": self.name}

    @classmethod
    def from_config(cls, config):
        """Rebuild a layer from get_config(); a missing or unknown key is a ConfigError."""
        try:
            return cls(**config)
        except TypeError as e:
            raise ConfigError(f"{cls.__name__}: invalid config {config!r}: {e}") from None

    def default_name(self, index):
        return f"{_snake(type(self).__name__)}_{index}"

    # ------------------------------------------------------------ building
    def build(self, spec):
        """spec: the input's TensorSpec (a list of them for layers taking several tensors)."""
        if spec.kind not in self.input_kinds:
            raise ShapeError(f"{self.name}: takes {' or '.join(self.input_kinds)} input, got {spec.describe()}")
        self.input_spec = spec
        self.output_spec = self._build(spec)
        return self.output_spec

    def _build(self, spec):
        return spec

    # ------------------------------------------------------------ weights
    def weight_specs(self):
        """[(name, shape, dtype kind)] that set_weights expects; dtype kind is 'float', 'int8',
        'int32' or 'bits' (a binary kernel, given as floats)."""
        return []

    def stored_specs(self, packed=True):
        """[(name, shape, dtype)] of the weights as a model file stores them (docs/format.md):
        dtype float32, int8, int32, or a kernel layout (pybnn.layouts) with its own shape;
        packed=False: as formats 1.0/1.1 did, every kernel plain (binary ones as bits)."""
        plain = {"float": "float32", "int8": "int8", "int32": "int32", "bits": "bits"}
        return [(name, tuple(shape), plain[kind]) for name, shape, kind in self.weight_specs()]

    def set_weights(self, weights, check_values=True):
        """Set the weights (arrays in weight_specs order; binary kernels as any float array,
        binarized: -1 where w < 0).  check_values=False skips the value checks (finite
        floats, int8 in [-127, 127]), which read every weight: the model-file loader uses it
        so that a memory-mapped load does not touch the weight bytes (a bad value cannot
        make a kernel misbehave, only give a wrong result; load(verify=True) checks them)."""
        specs = self._require_built("set_weights").weight_specs()
        if not isinstance(weights, (list, tuple)):
            raise WeightsError(f"{self.name}: set_weights takes a list of arrays, got {type(weights).__name__}")
        if len(weights) != len(specs):
            names = ", ".join(f"{n}{tuple(s)}" for n, s, _ in specs) or "none"
            raise WeightsError(f"{self.name}: expected {len(specs)} weight arrays ({names}), got {len(weights)}")
        self._weights = [self._check_weight(spec, w, check_values) for spec, w in zip(specs, weights)]
        self.version += 1
        self._prepare()

    def _check_weight(self, spec, w, check_values):
        return _check_weight(self.name, spec, w, check_values)

    def get_weights(self):
        """The weights as set_weights takes them (new arrays; a kernel kept in a layout is
        unpacked, binary kernels as float32 +-1)."""
        if self._weights is None:
            return []
        return [w.unpack().reshape(shape) if isinstance(w, Packed) else w.copy()
                for (_, shape, _), w in zip(self.weight_specs(), self._weights)]

    def _prepare(self):
        """Lay weights out for the kernels, once (called by set_weights)."""

    @property
    def has_weights(self):
        return not self.weight_specs() or self._weights is not None

    def count_params(self):
        return sum(int(np.prod(shape)) for _, shape, _ in self.weight_specs())

    def weight_bytes(self):
        """Bytes the weights take in a model file (binary kernels at 1 bit per weight, plus
        the padding of their layout; docs/format.md)."""
        from ..io import tensor_nbytes
        return sum(tensor_nbytes(dtype, shape) for _, shape, dtype in self.stored_specs())

    def mops(self):
        """Millions of operations per sample (2 per multiply-add)."""
        return 0.0

    def _require_built(self, what):
        if self.output_spec is None:
            raise ConfigError(f"{self.name or type(self).__name__}: {what} needs the layer to be built "
                              f"(put it in a pybnn.Sequential model with an Input first)")
        return self

    # ------------------------------------------------------------ running
    def call(self, x, out=None):
        """Compute the output for a batch.  out: an array of the output's array shape and dtype
        to write into (the model's activation arena), or None to allocate one."""
        return x

    def reference(self, x):
        return self.call(x)

    def _output(self, out, n):
        """`out`, or a new array for a batch of n (output_spec.array_shape) starting on a cache
        line, as the arena's buffers do."""
        if out is not None:
            return out
        spec = self.output_spec
        return empty_aligned(spec.array_shape(n), spec.dtype)


def _check_weight(layer, spec, w, check_values=True):
    name, shape, kind = spec
    w = np.asarray(w)
    if w.dtype.kind not in "biuf" or w.dtype == bool:
        raise WeightsError(f"{layer}: weight '{name}' must be a numeric array, got dtype {w.dtype}")
    if tuple(w.shape) != tuple(shape):
        raise WeightsError(f"{layer}: weight '{name}' must have shape {tuple(shape)}, got {tuple(w.shape)}")
    if kind in ("float", "bits"):
        w = w.astype(np.float32, copy=False)  # a float32 file tensor is used in place
        if check_values and not np.all(np.isfinite(w)):
            raise WeightsError(f"{layer}: weight '{name}' contains NaN or infinity")
        # A binary kernel keeps only its signs, packed by the layer: get_weights returns ±1.
        return np.ascontiguousarray(w)
    if check_values:
        lo, hi = (-127, 127) if kind == "int8" else (-2**31, 2**31 - 1)
        if w.dtype.kind == "f" and not np.all(np.isfinite(w) & (w == np.round(w))):
            raise WeightsError(f"{layer}: weight '{name}' must hold integers ({kind}), got non-integer floats")
        if w.size and (w.min() < lo or w.max() > hi):
            raise WeightsError(f"{layer}: weight '{name}' must lie in [{lo}, {hi}] ({kind}), "
                               f"got [{w.min()}, {w.max()}]")
    return np.ascontiguousarray(w.astype(np.int8 if kind == "int8" else np.int32, copy=False))


class Input(Layer):
    """Model input.  dtype float32, int8 (give scale and zero_point) or uint8 (image pixels
    with scale and zero_point; they enter as int8 q = pixel - 128 with zero point zp - 128,
    exactly the same real values, so a uint8 image reaches an Int8 first layer without a
    float round trip)."""

    input_kinds = KINDS

    def __init__(self, shape, dtype="float32", scale=None, zero_point=None, name=None):
        super().__init__(name)
        try:
            self.shape = tuple(int(s) for s in ((shape,) if np.isscalar(shape) else shape))
        except (TypeError, ValueError):
            raise ConfigError(f"Input: shape must be a tuple of positive ints, got {shape!r}") from None
        if not self.shape or len(self.shape) not in (1, 3) or min(self.shape) < 1:
            raise ConfigError(f"Input: shape must be (H, W, C) or (C,) of positive ints, got {shape!r}")
        self.dtype = str(np.dtype(dtype)) if dtype in ("float32", "int8", "uint8", np.float32,
                                                       np.int8, np.uint8) else None
        if self.dtype is None:
            raise ConfigError(f"Input: dtype must be float32, int8 or uint8, got {dtype!r}")
        if self.dtype == "float32":
            if scale is not None or zero_point is not None:
                raise ConfigError("Input: scale/zero_point only apply to int8 or uint8 inputs")
        else:
            lo, hi = (-128, 127) if self.dtype == "int8" else (0, 255)
            if scale is None or not np.isfinite(scale) or scale <= 0:
                raise ConfigError(f"Input: a {self.dtype} input needs a positive scale, got {scale!r}")
            if zero_point is None or not lo <= int(zero_point) <= hi:
                raise ConfigError(f"Input: {self.dtype} zero_point must be in [{lo}, {hi}], got {zero_point!r}")
        self.scale, self.zero_point = scale, zero_point

    def get_config(self):
        return {"shape": list(self.shape), "dtype": self.dtype, "scale": self.scale,
                "zero_point": self.zero_point, "name": self.name}

    def spec(self):
        if self.dtype == "float32":
            return TensorSpec("float32", self.shape)
        zp = int(self.zero_point) - (128 if self.dtype == "uint8" else 0)
        return TensorSpec("int8", self.shape, self.scale, zp)

    def _build(self, spec):
        return self.spec()

    def convert(self, x):
        """Validate a user array and turn it into this input's tensor (a batch axis first)."""
        x = np.asarray(x)
        want = self.dtype
        if x.ndim != len(self.shape) + 1 or tuple(x.shape[1:]) != self.shape:
            raise ShapeError(f"{self.name}: expected input of shape (batch,) + {self.shape}, got {x.shape}")
        if want == "float32":
            if x.dtype.kind not in "fiu" or x.dtype == bool:
                raise ShapeError(f"{self.name}: expected a float32 array, got dtype {x.dtype}")
            return np.ascontiguousarray(x, dtype=np.float32)
        if x.dtype != np.dtype(want):
            raise ShapeError(f"{self.name}: expected a {want} array, got dtype {x.dtype}")
        if want == "uint8":
            return np.ascontiguousarray(x ^ np.uint8(0x80)).view(np.int8)  # pixel - 128
        return np.ascontiguousarray(x)


def to_user(spec, x):
    """A tensor as predict() returns it: float32 as is, int8 dequantized, binary as ±1 floats."""
    if spec.kind == "int8":
        return ref.dequantize(x, spec.scale, spec.zero_point)
    if spec.kind == "binary":
        return ref.unpack_bits(x, spec.grid[2]).reshape((x.shape[0],) + spec.shape)
    return x
