"""What the importers share: a builder that collects pybnn layers and their weights while an
importer walks a source graph, and the choice of convolution kind from the kernel's values."""
import numpy as np

from .. import layers as L
from ..errors import ConvertError, PyBNNError
from ..model import Model
from ..reference import binarize


class Builder:
    """Makes pybnn layers on the functional API with unique names and keeps their weights
    until the model is built (a layer's weights can be set only once it knows its input)."""

    def __init__(self, source):
        self.source = source  # the file or model name, for messages
        self.notes = []
        self._names, self._weights = set(), []

    def name(self, base):
        base = str(base) or "layer"
        name, k = base, 1
        while name in self._names:
            k += 1
            name = f"{base}_{k}"
        self._names.add(name)
        return name

    def input(self, shape, name, **kwargs):
        return L.Input(shape, name=self.name(name), **kwargs)

    def add(self, cls, inputs, name, weights=(), **config):
        """A new layer of class `cls` called on `inputs` (a node or a list); returns its node."""
        layer = cls(name=self.name(name), **config)
        node = layer(inputs)
        if weights:
            self._weights.append((layer, [np.asarray(w) for w in weights]))
        return node

    def model(self, inputs, outputs, name):
        """The pybnn.Model of the graph, with every layer's weights set."""
        try:
            model = Model(inputs, outputs, name=name)
            used = {id(layer) for layer in model.layers}
            for layer, weights in self._weights:
                if id(layer) in used:
                    layer.set_weights(weights)
        except PyBNNError as e:
            raise ConvertError(f"{self.source}: the imported graph does not build in pybnn: {e}") from None
        model.convert_notes = list(self.notes)
        return model


def binary_kernel(kernel):
    """(signs, alpha) when every output channel (the last axis) of `kernel` holds one magnitude
    alpha[c] >= 0 (XNOR-Net / Bi-Real weights: sign(W) * mean|W|, or plain ±1), else None.
    A channel of zeros has alpha 0; a channel mixing zeros with ±alpha (torch.sign(0) = 0 of
    a zero weight) is not binary."""
    k = np.asarray(kernel, np.float32)
    mag = np.abs(k).reshape(-1, k.shape[-1])
    alpha = mag.max(axis=0) if mag.size else np.zeros(k.shape[-1], np.float32)
    if not np.all((mag == alpha) | (alpha == 0)):
        return None
    return binarize(k), alpha.astype(np.float32)


def add_conv(b, x, kind, kernel, bias, name, *, strides=1, padding="valid", dilation=1, groups=1,
             pad_value=0, activation=None, dense=False, where=""):
    """A convolution (or dense layer) of the kind its input and kernel call for:

    | input  | kernel ±alpha per output channel | layer                                   |
    |--------|----------------------------------|-----------------------------------------|
    | binary | yes                              | BinaryConv2D (use_scale unless alpha=1) |
    | float  | yes                              | FloatBinaryConv2D (scale = alpha)       |
    | any    | no                               | Conv2D (binary input as ±1 floats)      |

    kernel: (KH, KW, Cin/groups, Cout) or, dense, (Cin, units); pad_value: what the border of a
    binary input holds (0 for PyTorch's zero padding)."""
    found = binary_kernel(kernel)
    geometry = ({"units": kernel.shape[-1]} if dense else
                dict(filters=kernel.shape[-1], kernel_size=kernel.shape[:2], strides=strides, padding=padding,
                     dilation_rate=dilation, groups=groups))
    use_bias = bias is not None
    extra = [bias] if use_bias else []
    if kind == "binary" and found is not None:
        signs, alpha = found
        cls = L.BinaryDense if dense else L.BinaryConv2D
        use_scale = not np.all(alpha == 1)
        if not dense:
            geometry["pad_value"] = pad_value
        return b.add(cls, x, name, [signs] + ([alpha] if use_scale else []) + extra,
                     use_bias=use_bias, use_scale=use_scale, activation=activation, **geometry)
    if kind == "binary" and pad_value != 0:
        raise ConvertError(f"{b.source}: {where}: the input is binary and padded with {pad_value}, but the kernel "
                           f"is not binary (one magnitude per output channel): a float convolution pads with 0")
    if kind == "float32" and found is not None:
        signs, alpha = found
        cls = L.FloatBinaryDense if dense else L.FloatBinaryConv2D
        return b.add(cls, x, name, [signs, alpha] + extra, use_bias=use_bias,
                     activation=activation, **geometry)
    if kind == "binary":
        b.notes.append(f"{where}: binary input but the kernel is not binary (one magnitude per output "
                       f"channel): a float {'Dense' if dense else 'Conv2D'} on ±1 values")
    cls = L.Dense if dense else L.Conv2D
    return b.add(cls, x, name, [kernel] + extra, use_bias=use_bias,
                 activation=activation, **geometry)
