"""Import Keras and Larq models from the files Keras writes, with h5py and json (no TensorFlow):

* `.h5` (Keras 2 / tf.keras `model.save("m.h5")`): the attribute `model_config` holds the
  architecture as JSON; group `model_weights/<layer>` has the attribute `weight_names` and one
  dataset per weight (`<layer>/kernel:0`, ...).
* `.keras` (Keras 3): a zip archive with `config.json` and `model.weights.h5`, whose weights sit
  at `layers/<layer class in snake_case>[_k]/vars/<i>` in the order the layer creates them.

Keras is NHWC like pybnn, so kernels and flattening orders carry over unchanged.  Larq's
QuantConv2D / QuantDense / QuantDepthwiseConv2D binarize their input (input_quantizer) and their
kernel (kernel_quantizer) with ste_sign, approx_sign or swish_sign, which all compute
sign(x) = +1 where x >= 0 at inference -- pybnn's binarization exactly -- and pad with
pad_values (0 or 1) after binarizing.  docs/convert.md lists what is recognised.
"""
import io
import json
import os
import re
import zipfile

import h5py
import numpy as np

from .. import layers as L
from ..errors import ConvertError
from ..reference import binarize
from ..shapes import as_pair, conv_output
from .graph import Builder, add_conv

# larq binary quantizers (class and function names): sign(x), +1 at 0
SIGNS = {"SteSign", "ApproxSign", "SwishSign", "ste_sign", "approx_sign", "swish_sign"}
IDENTITY = {"Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "ActivityRegularization",
            "AlphaDropout"}


class KValue:
    """A Keras tensor in the pybnn graph: node, kind ("float32" / "binary"), shape without
    the batch, and a pending zero padding (ZeroPadding2D) a following convolution absorbs."""

    __slots__ = ("node", "kind", "shape", "pad")

    def __init__(self, node, kind, shape, pad=None):
        self.node, self.kind, self.shape, self.pad = node, kind, tuple(shape), pad


def from_keras(path, outputs=None, name=None):
    """A pybnn.Model from a Keras / Larq `.h5` or `.keras` file (input and output NHWC, as in
    Keras).  outputs: layer names to make the model's outputs instead of the model's own."""
    path = str(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                config = json.loads(zf.read("config.json"))
                weights = _keras3_weights(io.BytesIO(zf.read("model.weights.h5")), config)
        else:
            with h5py.File(path, "r") as f:
                if "model_config" not in f.attrs:
                    raise ConvertError(f"{path}: no model_config attribute; pybnn imports whole-model files "
                                       f"(model.save), not weights-only files")
                config = json.loads(_text(f.attrs["model_config"]))
                weights = _keras2_weights(f["model_weights"] if "model_weights" in f else f)
    except ConvertError:
        raise
    except (OSError, KeyError, ValueError) as e:
        raise ConvertError(f"{path}: not a readable Keras model file: {e}") from None
    label = name or os.path.splitext(os.path.basename(path))[0]
    return _Importer(path, config, weights, label, outputs).run()


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _keras2_weights(group):
    """{layer name: {weight name ("kernel", "gamma", ...): array}} of a Keras 2 weights group."""
    out = {}
    for layer in group.attrs.get("layer_names", []):
        layer = _text(layer)
        g = group[layer]
        arrays = {}
        for wname in g.attrs.get("weight_names", []):
            wname = _text(wname)
            role = wname.split("/")[-1].split(":")[0]
            arrays["kernel" if role == "depthwise_kernel" else role] = np.asarray(g[wname])
        out[layer] = arrays
    return out


def _snake(name):
    """Keras 3's naming.to_snake_case of a class name."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _roles(cls, config):
    if cls == "BatchNormalization":
        return (["gamma"] if config.get("scale", True) else []) + (["beta"] if config.get("center", True) else []) \
            + ["moving_mean", "moving_variance"]
    if cls == "PReLU":
        return ["alpha"]
    return ["kernel", "bias"]


def _keras3_weights(fileobj, config):
    """Weights of a Keras 3 model.weights.h5, keyed like _keras2_weights (names from the
    layers' classes in model order, variables in creation order)."""
    out, used = {}, {}
    with h5py.File(fileobj, "r") as f:
        for entry in _layer_list(config):
            cls = _class(entry)
            key = _snake(cls)
            used[key] = used.get(key, -1) + 1
            path = key if used[key] == 0 else f"{key}_{used[key]}"
            group = None
            for root in ("layers", "_layer_checkpoint_dependencies"):
                if f"{root}/{path}/vars" in f:
                    group = f[f"{root}/{path}/vars"]
            if group is None:
                continue
            arrays = [np.asarray(group[str(i)]) for i in range(len(group))]
            out[_lname(entry)] = dict(zip(_roles(cls, entry.get("config", {})), arrays))
    return out


def _class(entry):
    cls = entry.get("class_name", "")
    return cls.split(">")[-1]  # "larq>QuantConv2D" registered names


def _lname(entry):
    return entry.get("name") or entry.get("config", {}).get("name")


def _layer_list(config):
    inner = config.get("config", config)
    layers = inner.get("layers") if isinstance(inner, dict) else inner
    if not isinstance(layers, list):
        raise ConvertError("model config has no layer list")
    return layers


class _Importer:
    def __init__(self, path, config, weights, name, outputs):
        self.path, self.config, self.weights, self.name = path, config, weights, name
        self.output_names = outputs
        self.b = Builder(path)
        self.values, self._signs = {}, {}

    def fail(self, name, cls, why):
        raise ConvertError(f"{self.path}: layer '{name}' ({cls}): {why}")

    # ------------------------------------------------------------ graph structure
    def run(self):
        kind = _class(self.config)
        layers = _layer_list(self.config)
        if kind == "Sequential":
            chain, inputs, outputs = self._sequential(layers)
        elif kind in ("Functional", "Model"):
            chain, inputs, outputs = self._functional(layers)
        else:
            raise ConvertError(f"{self.path}: a {kind!r} model; pybnn imports Sequential and functional models "
                               f"(subclassed models keep no architecture in the file)")
        for entry, inbound in chain:
            self.values[_lname(entry)] = self._layer(entry, [self.values[n] for n in inbound])
        outs = []
        for name in self.output_names or outputs:
            v = self.values.get(name)
            if v is None:
                raise ConvertError(f"{self.path}: no layer named '{name}'")
            if v.pad is not None:
                raise ConvertError(f"{self.path}: output '{name}' is a ZeroPadding2D output; pybnn pads only "
                                   f"inside convolutions")
            outs.append(v.node)
        return self.b.model([self.values[n].node for n in inputs], outs, self.name)

    def _sequential(self, layers):
        chain, prev = [], None
        first = layers[0] if layers else {}
        inputs = []
        if _class(first) != "InputLayer":
            shape = first.get("config", {}).get("batch_input_shape") or \
                self.config.get("config", {}).get("build_input_shape")
            if not shape:
                raise ConvertError(f"{self.path}: a Sequential model without an input shape")
            entry = {"class_name": "InputLayer", "config": {"batch_input_shape": shape, "name": "input"}}
            chain.append((entry, []))
            prev = "input"
            inputs.append(prev)
        for entry in layers:
            name = _lname(entry)
            if _class(entry) == "InputLayer":
                inputs.append(name)
                chain.append((entry, []))
            else:
                chain.append((entry, [prev]))
            prev = name
        return chain, inputs, [prev]

    def _functional(self, layers):
        chain = []
        for entry in layers:
            nodes = entry.get("inbound_nodes") or []
            if len(nodes) > 1:
                self.fail(_lname(entry), _class(entry), "is called more than once (a shared layer)")
            inbound = _history(nodes[0]) if nodes else []
            chain.append((entry, inbound))
        inner = self.config.get("config", {})
        return chain, _ends(inner.get("input_layers")), _ends(inner.get("output_layers"))

    # ------------------------------------------------------------ layers
    def _layer(self, entry, ins):
        cls, name, config = _class(entry), _lname(entry), entry.get("config", {})
        if cls == "InputLayer":
            shape = config.get("batch_input_shape") or config.get("batch_shape")
            if not shape or any(s is None for s in shape[1:]):
                self.fail(name, cls, f"needs a fixed input shape, got {shape}")
            dtype = config.get("dtype", "float32")
            dtype = dtype.get("config", {}).get("name", "float32") if isinstance(dtype, dict) else dtype
            if dtype != "float32":
                self.fail(name, cls, f"dtype {dtype}; pybnn imports float32 Keras inputs")
            return KValue(self.b.input(tuple(shape[1:]), name), "float32", shape[1:])
        if config.get("data_format", "channels_last") not in ("channels_last", None):
            self.fail(name, cls, "data_format channels_first; pybnn (like Keras' default) is channels_last")
        if len(ins) != 1 and cls not in ("Add", "Concatenate"):
            self.fail(name, cls, f"takes {len(ins)} inputs")
        method = getattr(self, "layer_" + cls, None)
        if cls in IDENTITY:
            return ins[0]
        if method is None:
            self.fail(name, cls, "this layer is not supported by the pybnn importer")
        x = ins[0]
        if x.pad is not None and cls not in ("Conv2D", "QuantConv2D", "DepthwiseConv2D", "QuantDepthwiseConv2D"):
            self.fail(name, cls, "follows a ZeroPadding2D; pybnn pads only inside convolutions")
        return method(name, cls, config, ins if cls in ("Add", "Concatenate") else x)

    def _w(self, name, cls, role, optional=False):
        w = self.weights.get(name, {}).get(role)
        if w is None and not optional:
            self.fail(name, cls, f"weight '{role}' is missing from the file")
        return w

    def _quantizer(self, name, cls, q, what):
        """None (no quantizer), "sign" or "magnitude_aware_sign"; anything else is an error."""
        if q is None:
            return None
        kind = q if isinstance(q, str) else q.get("class_name", "")
        kind = kind.split(">")[-1]
        if kind in ("NoOp", "NoOpQuantizer"):
            return None
        if kind in SIGNS:
            return "sign"
        if kind in ("MagnitudeAwareSign", "magnitude_aware_sign") and what == "kernel_quantizer":
            return "magnitude_aware_sign"
        self.fail(name, cls, f"{what} {kind!r} is not supported; pybnn imports ste_sign, approx_sign and "
                             f"swish_sign (and magnitude_aware_sign for kernels)")

    def _activation(self, name, cls, v, activation):
        """The layer's `activation` as a separate pybnn layer (ReLU fuses into convolutions)."""
        if activation in (None, "linear"):
            return v
        if activation == "relu":
            return KValue(self.b.add(L.ReLU, v.node, f"{name}/relu"), "float32", v.shape)
        if activation == "softmax":
            return KValue(self.b.add(L.Softmax, v.node, f"{name}/softmax"), "float32", v.shape)
        kind = activation if isinstance(activation, str) else (activation or {}).get("class_name", "")
        if kind.split(">")[-1] in SIGNS:
            return self._binarize(f"{name}/sign", v)
        self.fail(name, cls, f"activation {activation!r} is not supported (pybnn imports linear, relu, softmax "
                             f"and larq's ste_sign, approx_sign, swish_sign)")

    def _binarize(self, name, v):
        """The Sign of v's node (one per node, shared by every layer that binarizes it)."""
        if v.kind == "binary":
            return v
        key = id(v.node)
        if key not in self._signs:
            self._signs[key] = self.b.add(L.Sign, v.node, name)
        return KValue(self._signs[key], "binary", v.shape)

    def _conv(self, name, cls, config, x, depthwise=False):
        quant = cls.startswith("Quant")
        qin = self._quantizer(name, cls, config.get("input_quantizer"), "input_quantizer") if quant else None
        qk = self._quantizer(name, cls, config.get("depthwise_quantizer" if depthwise else "kernel_quantizer"),
                             "kernel_quantizer") if quant else None
        kernel = self._w(name, cls, "kernel").astype(np.float32)
        bias = self._w(name, cls, "bias", optional=True) if config.get("use_bias", True) else None
        kernel = _quantize_kernel(kernel, qk)
        if len(x.shape) != 3:
            self.fail(name, cls, f"takes (height, width, channels) input, got {list(x.shape)}")
        c = x.shape[2]
        groups = config.get("groups", 1)
        if depthwise:  # (KH, KW, C, M) -> grouped convolution with C groups, output c*M + m
            groups = c
            kernel = kernel.reshape(kernel.shape[0], kernel.shape[1], 1, -1)
        strides = as_pair(config.get("strides", 1), "strides", name)
        dilation = as_pair(config.get("dilation_rate", 1), "dilation_rate", name)
        padding = config.get("padding", "valid")
        if padding not in ("valid", "same"):
            self.fail(name, cls, f"padding {padding!r}")
        pad_values = float(config.get("pad_values", 0.0)) if padding == "same" else 0.0
        if qin == "sign":
            pre = x.pad
            x = self._binarize(f"{name}/input_sign", KValue(x.node, x.kind, x.shape))
            if pre is not None:  # ZeroPadding2D before the quantizer: its zeros binarize to +1
                x.pad = (pre[0], 1.0)
        pads, pad_value, (hh, ww) = self._pads(name, cls, x, padding, kernel.shape[:2], strides, dilation,
                                               pad_values)
        activation = config.get("activation")
        fused = "relu" if activation == "relu" else None
        n = add_conv(self.b, x.node, x.kind, kernel, None if bias is None else bias.astype(np.float32), name,
                     strides=strides, padding=pads, dilation=dilation, groups=groups, pad_value=pad_value,
                     activation=fused, where=f"layer '{name}' ({cls})")
        v = KValue(n, "float32", (hh, ww, kernel.shape[-1]))
        return v if fused else self._activation(name, cls, v, activation)

    def _pads(self, name, cls, x, padding, kernel_hw, strides, dilation, pad_values):
        """Explicit ((top, bottom), (left, right)) padding and its value for a convolution of x,
        absorbing a ZeroPadding2D before it."""
        extra, value = x.pad if x.pad is not None else (((0, 0), (0, 0)), None)
        own, out = [], []
        for axis, size in enumerate(x.shape[:2]):  # sizes after a ZeroPadding2D
            before, after, n = conv_output(size, kernel_hw[axis], strides[axis], dilation[axis], padding, axis, name)
            own.append((before, after))
            out.append(n)
        own_value = pad_values if padding == "same" else 0.0
        if value is not None and any(p for pair in own for p in pair) and own_value != value:
            self.fail(name, cls, f"pads with {own_value} after a ZeroPadding2D whose border holds {value}")
        value = own_value if value is None else value
        pads = tuple((a + c, b + d) for (a, b), (c, d) in zip(extra, own))
        if value != 0 and x.kind != "binary":
            self.fail(name, cls, f"pads a float input with {value}; pybnn pads float convolutions with zero")
        if value not in (0, 1, -1):
            self.fail(name, cls, f"pad_values={value}; pybnn binary convolutions pad with 0, +1 or -1")
        return pads, int(value), out

    def layer_Conv2D(self, name, cls, config, x):
        return self._conv(name, cls, config, x)

    layer_QuantConv2D = layer_Conv2D

    def layer_DepthwiseConv2D(self, name, cls, config, x):
        return self._conv(name, cls, config, x, depthwise=True)

    layer_QuantDepthwiseConv2D = layer_DepthwiseConv2D

    def layer_Dense(self, name, cls, config, x):
        quant = cls.startswith("Quant")
        qin = self._quantizer(name, cls, config.get("input_quantizer"), "input_quantizer") if quant else None
        qk = self._quantizer(name, cls, config.get("kernel_quantizer"), "kernel_quantizer") if quant else None
        if len(x.shape) != 1:
            self.fail(name, cls, f"takes (features,) input, got {list(x.shape)}; pybnn's dense layers need a "
                                 f"Flatten before them")
        kernel = _quantize_kernel(self._w(name, cls, "kernel").astype(np.float32), qk)
        bias = self._w(name, cls, "bias", optional=True) if config.get("use_bias", True) else None
        if qin == "sign":
            x = self._binarize(f"{name}/input_sign", x)
        activation = config.get("activation")
        fused = "relu" if activation == "relu" else None
        n = add_conv(self.b, x.node, x.kind, kernel, None if bias is None else bias.astype(np.float32), name,
                     dense=True, activation=fused, where=f"layer '{name}' ({cls})")
        v = KValue(n, "float32", (kernel.shape[-1],))
        return v if fused else self._activation(name, cls, v, activation)

    layer_QuantDense = layer_Dense

    def layer_BatchNormalization(self, name, cls, config, x):
        axis = config.get("axis", -1)
        axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
        if axis not in (-1, len(x.shape)):
            self.fail(name, cls, f"normalizes axis {axis}; pybnn normalizes channels (the last axis)")
        c = x.shape[-1]
        weights = [self._w(name, cls, "gamma", optional=True), self._w(name, cls, "beta", optional=True),
                   self._w(name, cls, "moving_mean"), self._w(name, cls, "moving_variance")]
        weights[0] = np.ones(c, np.float32) if weights[0] is None else weights[0]
        weights[1] = np.zeros(c, np.float32) if weights[1] is None else weights[1]
        n = self.b.add(L.BatchNormalization, x.node, name, weights, epsilon=config.get("epsilon", 1e-3))
        return KValue(n, "float32", x.shape)

    def layer_Activation(self, name, cls, config, x):
        return self._activation(name, cls, x, config.get("activation"))

    def layer_ReLU(self, name, cls, config, x):
        if config.get("threshold", 0) not in (0, None):
            self.fail(name, cls, "a nonzero threshold")
        n = self.b.add(L.ReLU, x.node, name, max_value=config.get("max_value"),
                       negative_slope=config.get("negative_slope", 0.0) or 0.0)
        return KValue(n, "float32", x.shape)

    def layer_LeakyReLU(self, name, cls, config, x):
        slope = config.get("negative_slope", config.get("alpha", 0.3))
        return KValue(self.b.add(L.ReLU, x.node, name, negative_slope=slope), "float32", x.shape)

    def layer_PReLU(self, name, cls, config, x):
        alpha = np.asarray(self._w(name, cls, "alpha"), np.float32)
        c = x.shape[-1]
        full = np.broadcast_to(alpha, x.shape)
        vec = full.reshape(-1, c)[0]
        if not np.array_equal(full, np.broadcast_to(vec, x.shape)):
            self.fail(name, cls, "alpha varies over height or width; pybnn's PReLU has one alpha per channel "
                                 "(use shared_axes=[1, 2])")
        return KValue(self.b.add(L.PReLU, x.node, name, [vec]), "float32", x.shape)

    def layer_Softmax(self, name, cls, config, x):
        if config.get("axis", -1) not in (-1, len(x.shape)):
            self.fail(name, cls, "softmax over an axis other than the last")
        return KValue(self.b.add(L.Softmax, x.node, name), "float32", x.shape)

    def _pool(self, name, cls, config, x, layer):
        size = as_pair(config.get("pool_size", 2), "pool_size", name)
        strides = as_pair(config.get("strides") or size, "strides", name)
        padding = config.get("padding", "valid")
        n = self.b.add(layer, x.node, name, pool_size=size, strides=strides, padding=padding)
        h, w = (conv_output(s, k, st, 1, padding, axis, name)[2]
                for axis, (s, k, st) in enumerate(zip(x.shape[:2], size, strides)))
        kind = x.kind if layer is L.MaxPool2D else "float32"
        return KValue(n, kind, (h, w, x.shape[2]))

    def layer_MaxPooling2D(self, name, cls, config, x):
        return self._pool(name, cls, config, x, L.MaxPool2D)

    def layer_AveragePooling2D(self, name, cls, config, x):
        return self._pool(name, cls, config, x, L.AveragePool2D)

    layer_MaxPool2D, layer_AvgPool2D = layer_MaxPooling2D, layer_AveragePooling2D

    def _global(self, name, cls, config, x, layer):
        if len(x.shape) != 3:
            self.fail(name, cls, f"takes (height, width, channels) input, got {list(x.shape)}")
        n = self.b.add(layer, x.node, name, pool_size=x.shape[:2], strides=1)
        kind = x.kind if layer is L.MaxPool2D else "float32"
        if config.get("keepdims", False):
            return KValue(n, kind, (1, 1, x.shape[2]))
        return KValue(self.b.add(L.Flatten, n, f"{name}/flatten"), kind, (x.shape[2],))

    def layer_GlobalAveragePooling2D(self, name, cls, config, x):
        return self._global(name, cls, config, x, L.AveragePool2D)

    def layer_GlobalMaxPooling2D(self, name, cls, config, x):
        return self._global(name, cls, config, x, L.MaxPool2D)

    layer_GlobalAvgPool2D, layer_GlobalMaxPool2D = layer_GlobalAveragePooling2D, layer_GlobalMaxPooling2D

    def layer_Flatten(self, name, cls, config, x):
        if len(x.shape) == 1:
            return x
        return KValue(self.b.add(L.Flatten, x.node, name), x.kind, (int(np.prod(x.shape)),))

    def layer_ZeroPadding2D(self, name, cls, config, x):
        p = config.get("padding", 1)
        if isinstance(p, int):
            p = ((p, p), (p, p))
        p = tuple(tuple(q) if isinstance(q, (list, tuple)) else (q, q) for q in p)
        if x.pad is not None or len(x.shape) != 3:
            self.fail(name, cls, "pads a tensor that is already padded or not (height, width, channels)")
        shape = (x.shape[0] + sum(p[0]), x.shape[1] + sum(p[1]), x.shape[2])
        return KValue(x.node, x.kind, shape, pad=(p, 0.0))

    def layer_Rescaling(self, name, cls, config, x):
        c = x.shape[-1]
        scale = np.broadcast_to(np.asarray(config.get("scale", 1.0), np.float32), (c,)).copy()
        offset = np.broadcast_to(np.asarray(config.get("offset", 0.0), np.float32), (c,)).copy()
        n = self.b.add(L.ChannelAffine, x.node, name, [scale, offset])
        return KValue(n, "float32", x.shape)

    def layer_Add(self, name, cls, config, xs):
        if len({x.shape for x in xs}) != 1:
            self.fail(name, cls, f"adds tensors of different shapes {[list(x.shape) for x in xs]}")
        return KValue(self.b.add(L.Add, [x.node for x in xs], name), "float32", xs[0].shape)

    def layer_Concatenate(self, name, cls, config, xs):
        axis = config.get("axis", -1)
        if axis not in (-1, len(xs[0].shape)):
            self.fail(name, cls, f"concatenates along axis {axis}; pybnn concatenates channels (the last axis)")
        kinds = {x.kind for x in xs}
        shape = xs[0].shape[:-1] + (sum(x.shape[-1] for x in xs),)
        return KValue(self.b.add(L.Concatenate, [x.node for x in xs], name),
                      kinds.pop() if len(kinds) == 1 else "float32", shape)


def _quantize_kernel(kernel, quantizer):
    """The kernel a larq layer computes with: sign(W) (+1 at 0), or sign(W) * mean|W| over all
    axes but the last (MagnitudeAwareSign, Bi-Real Net's scaled weights)."""
    if quantizer is None:
        return kernel
    signs = binarize(kernel)
    if quantizer == "sign":
        return signs
    alpha = np.mean(np.abs(kernel), axis=tuple(range(kernel.ndim - 1))).astype(np.float32)
    return signs * alpha


def _history(node):
    """Names of the layers a functional node takes, in order (Keras 2 and Keras 3 layouts)."""
    if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}}
        found = []

        def walk(obj):
            if isinstance(obj, dict):
                if obj.get("class_name") == "__keras_tensor__":
                    found.append(obj["config"]["keras_history"][0])
                else:
                    for v in obj.values():
                        walk(v)
            elif isinstance(obj, list):
                for v in obj:
                    walk(v)
        walk(node.get("args", []))
        return found
    return [item[0] for item in node]  # Keras 2: [[name, node_index, tensor_index, kwargs], ...]


def _ends(items):
    if not items:
        return []
    if isinstance(items[0], str):  # one tensor: [name, node_index, tensor_index]
        return [items[0]]
    return [item[0] for item in items]
