"""export(): a PyTorch nn.Sequential -> a pybnn model file and the equivalent pybnn model.

The exporter runs the example input through the torch model module by module (so it knows
every tensor's shape), turns each module into pybnn layers with a converter from CONVERTERS
(keyed by the module's exact type: a subclass may compute something else, so it is refused
rather than guessed), builds a pybnn.Sequential, sets its weights and saves it.  pybnn folds
BatchNorm and Sign at build time itself, so the file holds the unfolded layers and
`model.summary()` lists the folds.

Layout: torch is NCHW, pybnn NHWC.  Kernels are transposed to (kh, kw, in, out) and dense
kernels to (in, out).  nn.Flatten of a (C, H, W) map gives features in (c, h, w) order, pybnn's
Flatten in (h, w, c) order: the exporter carries that permutation of the features forward and
applies it to the next layers that hold per-feature parameters (BatchNorm1d, PReLU) and to the
columns of the next Linear, whose outputs are in natural order again.  A model may not end on
permuted features.

A converter takes (module, Step) and returns [(pybnn layer, weight arrays or None)]; a graph
walker would call the same converters with the shapes of each node.
"""
import numpy as np
import torch
import torch.nn as nn

from .. import layers as L
from ..errors import ConfigError, PyBNNError
from ..model import Sequential
from ..shapes import as_pair, nchw_flatten_order
from . import modules as M


class Step:
    """What a converter knows about one module: its qualified name in the torch model, the
    per-sample shapes of its input and output (torch order), and the feature permutation
    (pybnn feature i is torch feature perm[i]) of a flattened input."""

    def __init__(self, name, module, in_shape, out_shape, perm):
        self.name, self.module = name, module
        self.in_shape, self.out_shape, self.perm = tuple(in_shape), tuple(out_shape), perm

    def fail(self, why):
        raise ConfigError(f"module '{self.name}' ({type(self.module).__name__}): {why}")

    @property
    def channels(self):
        return self.in_shape[0]

    def per_channel(self, values):
        """A per-channel (or per-feature) parameter in pybnn's order."""
        values = _numpy(values)
        return values[self.perm] if self.perm is not None and len(self.in_shape) == 1 else values


def _numpy(t):
    return t.detach().cpu().numpy().astype(np.float32) if torch.is_tensor(t) else np.asarray(t, np.float32)


def _padding(module):
    """A torch padding (int pair or 'same'/'valid') as pybnn's padding."""
    if isinstance(module.padding, str):
        return module.padding  # torch's "same" (stride 1 only) puts the odd pixel bottom/right, as pybnn
    ph, pw = module.padding
    return ((ph, ph), (pw, pw))


def _kernel(step, weight):
    """(out, in, kh, kw) -> (kh, kw, in, out); (out, in) -> (in, out) with the columns in pybnn's
    feature order."""
    w = _numpy(weight)
    if w.ndim == 4:
        return np.ascontiguousarray(w.transpose(2, 3, 1, 0))
    if len(step.in_shape) != 1:
        step.fail(f"takes a {step.in_shape} tensor; pybnn's dense layers take flat features, put an "
                  f"nn.Flatten first")
    return np.ascontiguousarray((w if step.perm is None else w[:, step.perm]).T)


# ---------------------------------------------------------------------------- converters

def _conv_args(m):
    if m.dense:
        return {"units": m.out_channels, "use_bias": m.bias is not None}
    return {"filters": m.out_channels, "kernel_size": m.kernel_size, "strides": m.stride, "padding": m.padding,
            "dilation_rate": m.dilation, "use_bias": m.bias is not None}


def _layer(kind, m, step, **config):
    cls = getattr(L, kind.replace("Conv2D", "Dense") if m.dense else kind)
    return cls(**_conv_args(m), **config, name=step.name)


def _bias(m):
    return [] if m.bias is None else [_numpy(m.bias)]


def torch_conv2d(m, step):
    if m.groups != 1:
        step.fail(f"groups={m.groups}: pybnn convolutions are dense (groups=1)")
    if m.padding_mode != "zeros":
        step.fail(f"padding_mode={m.padding_mode!r}: pybnn pads float convolutions with zeros")
    layer = L.Conv2D(m.out_channels, m.kernel_size, m.stride, _padding(m), m.dilation,
                     use_bias=m.bias is not None, name=step.name)
    return [(layer, [_kernel(step, m.weight)] + _bias(m))]


def torch_linear(m, step):
    return [(L.Dense(m.out_features, use_bias=m.bias is not None, name=step.name),
             [_kernel(step, m.weight)] + _bias(m))]


def binary_conv(m, step):
    config = {"use_scale": m.scale} if m.dense else {"use_scale": m.scale, "pad_value": m.pad_value}
    scale = [_numpy(m.alpha())] if m.scale else []
    return [(_layer("BinaryConv2D", m, step, **config), [_kernel(step, M.sign(m.weight))] + scale + _bias(m))]


def float_binary_conv(m, step):
    return [(_layer("FloatBinaryConv2D", m, step), [_kernel(step, M.sign(m.weight)), _numpy(m.alpha())] + _bias(m))]


def int8_conv(m, step):
    quantize = quantizer(m.input_quant, step, f"{step.name}.input_quant")
    kind = "Int8BinaryConv2D" if isinstance(m, M.Int8BinaryConv2d) else "Int8Conv2D"
    ibias = m.int_bias()
    weights = [_kernel(step, m.weight_int()).astype(np.int8), _numpy(m.weight_scale())]
    weights += [] if ibias is None else [ibias.numpy().astype(np.int32)]
    return quantize + [(_layer(kind, m, step, output="float"), weights)]


def quantizer(m, step, name=None):
    scale, zero_point = m.qparams()  # export() has checked that every quantizer is calibrated
    return [(L.Quantize(scale, zero_point, name=name or step.name), None)]


def batch_norm(m, step):
    if m.running_mean is None:
        step.fail("has no running statistics (track_running_stats=False), so its eval output depends on "
                  "the batch; pybnn needs fixed statistics")
    if len(step.in_shape) not in (1, 3):
        step.fail(f"normalizes a {step.in_shape} tensor; pybnn normalizes (C,) features or (C, H, W) maps")
    c = step.channels
    gamma = m.weight if m.affine else np.ones(c, np.float32)
    beta = m.bias if m.affine else np.zeros(c, np.float32)
    weights = [step.per_channel(v) for v in (gamma, beta, m.running_mean, m.running_var)]
    return [(L.BatchNormalization(epsilon=m.eps, name=step.name), weights)]


def sign(m, step):
    return [(L.Sign(name=step.name), None)]


def relu(m, step):
    return [(L.ReLU(name=step.name), None)]


def relu6(m, step):
    return [(L.ReLU(max_value=6.0, name=step.name), None)]


def leaky_relu(m, step):
    return [(L.ReLU(negative_slope=m.negative_slope, name=step.name), None)]


def prelu(m, step):
    alpha = _numpy(m.weight)
    if alpha.size not in (1, step.channels):
        step.fail(f"has {alpha.size} slopes for {step.channels} channels")
    alpha = np.broadcast_to(alpha, (step.channels,))
    return [(L.PReLU(name=step.name), [step.per_channel(alpha)])]


def softmax(m, step):
    channel_dims = (None, 1, -1) if len(step.in_shape) == 1 else (None, 1, -3)  # None: torch picks dim 1
    if m.dim not in channel_dims:
        step.fail(f"dim={m.dim}: pybnn's Softmax runs over the channels (dim=1)")
    return [(L.Softmax(name=step.name), None)]


def flatten(m, step):
    if m.start_dim != 1 or m.end_dim != -1:
        step.fail(f"start_dim={m.start_dim}, end_dim={m.end_dim}: pybnn flattens everything but the batch")
    return [(L.Flatten(name=step.name), None)]


def _pool_window(step, kind, kernel, stride, padding, dilation, ceil_mode):
    if dilation not in (1, (1, 1)):
        step.fail(f"dilation={dilation}: pybnn pools have no dilation")
    (kh, kw), (sh, sw) = as_pair(kernel, "kernel_size", step.name), as_pair(stride, "stride", step.name)
    ph, pw = as_pair(padding, "padding", step.name, minimum=0)
    h, w = step.in_shape[1:]
    floor = ((h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)
    if ceil_mode and floor != step.out_shape[1:]:
        step.fail(f"ceil_mode=True gives {step.out_shape[1:]} outputs; pybnn rounds down to {floor}")
    return getattr(L, kind)((kh, kw), (sh, sw), ((ph, ph), (pw, pw)), name=step.name)


def max_pool(m, step):
    if m.return_indices:
        step.fail("return_indices=True: pybnn returns pooled values only")
    return [(_pool_window(step, "MaxPool2D", m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode), None)]


def avg_pool(m, step):
    if m.divisor_override is not None:
        step.fail(f"divisor_override={m.divisor_override}: pybnn divides by the window's in-image size")
    if m.count_include_pad and m.padding not in (0, (0, 0)):
        step.fail("count_include_pad=True with padding: pybnn excludes the padding from the mean, as Keras; "
                  "use count_include_pad=False")
    return [(_pool_window(step, "AveragePool2D", m.kernel_size, m.stride, m.padding, 1, m.ceil_mode), None)]


def adaptive_pool(m, step):
    (h, w), (oh, ow) = step.in_shape[1:], step.out_shape[1:]
    if h % oh or w % ow:
        step.fail(f"output {oh}x{ow} does not divide the {h}x{w} input into equal windows")
    kind = "MaxPool2D" if isinstance(m, nn.AdaptiveMaxPool2d) else "AveragePool2D"
    if isinstance(m, nn.AdaptiveMaxPool2d) and m.return_indices:
        step.fail("return_indices=True: pybnn returns pooled values only")
    return [(getattr(L, kind)((h // oh, w // ow), name=step.name), None)]


def nothing(m, step):
    return []  # identity in eval mode


CONVERTERS = {
    nn.Conv2d: torch_conv2d, nn.Linear: torch_linear,
    M.BinaryConv2d: binary_conv, M.BinaryLinear: binary_conv,
    M.FloatBinaryConv2d: float_binary_conv, M.FloatBinaryLinear: float_binary_conv,
    M.Int8Conv2d: int8_conv, M.Int8Linear: int8_conv, M.Int8BinaryConv2d: int8_conv, M.Int8BinaryLinear: int8_conv,
    M.Quantize: quantizer, M.BinaryActivation: sign,
    nn.BatchNorm1d: batch_norm, nn.BatchNorm2d: batch_norm, M.BatchNorm1d: batch_norm, M.BatchNorm2d: batch_norm,
    nn.ReLU: relu, nn.ReLU6: relu6, nn.LeakyReLU: leaky_relu, nn.PReLU: prelu, nn.Softmax: softmax,
    nn.Flatten: flatten, nn.MaxPool2d: max_pool, nn.AvgPool2d: avg_pool,
    nn.AdaptiveAvgPool2d: adaptive_pool, nn.AdaptiveMaxPool2d: adaptive_pool,
    nn.Identity: nothing, nn.Dropout: nothing, nn.Dropout2d: nothing,
}
# After an nn.Flatten of a (C, H, W) map: modules that keep the features' order (elementwise or
# per-feature ones) and those that consume it (dense layers).
_KEEPS_FEATURE_ORDER = (M.BinaryActivation, M.Quantize, nn.BatchNorm1d, nn.ReLU, nn.ReLU6, nn.LeakyReLU,
                        nn.PReLU, nn.Identity, nn.Dropout, nn.Softmax, nn.Flatten)
_CONSUMES_FEATURE_ORDER = (nn.Linear, M._Conv)


# ---------------------------------------------------------------------------- export

def _leaves(module, prefix=""):
    """(qualified name, module) of an nn.Sequential's modules, nested Sequentials flattened."""
    for name, child in module.named_children():
        qualified = f"{prefix}{name}"
        if type(child) is nn.Sequential:
            yield from _leaves(child, qualified + ".")
        else:
            yield qualified, child


def _pybnn_shape(torch_shape):
    return torch_shape[1:] + torch_shape[:1] if len(torch_shape) == 3 else torch_shape


def export(model, path, example_input, calibration_data=None, name="model", print_summary=False):
    """Export a trained nn.Sequential to the pybnn model file `path`; return the pybnn model.

    example_input: a batch (N, C, H, W) or (N, features) as the torch model takes it (a tensor
    or an array); it fixes the input shape.  calibration_data: a batch to calibrate every int8
    activation quantizer on (post-training calibration, see calibrate()); without it the
    ranges observed in training are used.  The model runs in eval mode (every module's mode
    is restored).  Anything pybnn cannot run raises pybnn.ConfigError naming the module and
    why, and no file is written.  The returned model takes NHWC input (see nhwc());
    print_summary=True prints its summary, folds included."""
    if type(model) is not nn.Sequential:
        raise ConfigError(f"export takes an nn.Sequential, got {type(model).__name__} (its forward() is not "
                          f"a chain the exporter can read)")
    if calibration_data is not None:
        M.calibrate(model, calibration_data)
    for qualified, module in model.named_modules():
        if isinstance(module, M.Quantize) and not module.calibrated:
            raise ConfigError(f"module '{qualified}' (Quantize): no activation range observed; pass "
                              f"calibration_data to export (or train the model in training mode first)")
    x = example_input if torch.is_tensor(example_input) else torch.as_tensor(np.asarray(example_input, np.float32))
    x = x.detach().float()
    if x.dim() not in (2, 4) or len(x) < 1:
        raise ConfigError(f"export: example_input must be a batch (N, C, H, W) or (N, features), got {tuple(x.shape)}")
    modes = M.eval_mode(model)
    try:
        with torch.no_grad():
            entries = _convert_chain(_leaves(model), x)
    finally:
        M.restore_mode(modes)

    inputs = L.Input(_pybnn_shape(tuple(x.shape[1:])), name="input")
    try:
        pmodel = Sequential([inputs] + [layer for layer, _, _ in entries], name=name)
    except PyBNNError as e:
        raise ConfigError(f"export: pybnn cannot run this model: {e}") from None
    for layer, weights, step in entries:
        if weights is not None:
            layer.set_weights(weights)
        if step is not None and tuple(layer.output_spec.shape) != _pybnn_shape(step.out_shape):
            step.fail(f"torch computes {step.out_shape} (pybnn order {_pybnn_shape(step.out_shape)}), the pybnn "
                      f"layer {tuple(layer.output_spec.shape)}")
    pmodel.save(path)
    if print_summary:
        pmodel.summary()
    return pmodel


def _convert_chain(leaves, x):
    """Run x through the (qualified name, module) chain and convert every module: a list of
    (pybnn layer, weights, Step of the module, on its last layer only)."""
    entries, perm, step = [], None, None
    for qualified, module in leaves:
        convert = CONVERTERS.get(type(module))
        if convert is None:
            supported = ", ".join(sorted({t.__name__ for t in CONVERTERS}))
            raise ConfigError(f"module '{qualified}' ({type(module).__name__}): pybnn has no layer for it "
                              f"(supported: {supported})")
        try:
            y = module(x)
        except PyBNNError as e:
            raise ConfigError(f"module '{qualified}' ({type(module).__name__}): {e}") from None
        except Exception as e:
            raise ConfigError(f"module '{qualified}' ({type(module).__name__}) fails on the example input of "
                              f"shape {tuple(x.shape)}: {e}") from None
        step = Step(qualified, module, x.shape[1:], y.shape[1:], perm)
        if perm is not None and not isinstance(module, _KEEPS_FEATURE_ORDER + _CONSUMES_FEATURE_ORDER):
            step.fail("follows an nn.Flatten of a (C, H, W) map, whose features pybnn orders (H, W, C); "
                      "only elementwise modules, BatchNorm1d, PReLU and dense layers may come between")
        produced = convert(module, step)
        entries += [(layer, weights, step if i == len(produced) - 1 else None)
                    for i, (layer, weights) in enumerate(produced)]
        if isinstance(module, nn.Flatten) and x.dim() == 4:
            c, h, w = x.shape[1:]
            perm = nchw_flatten_order(c, h, w)
        elif isinstance(module, _CONSUMES_FEATURE_ORDER):
            perm = None
        x = y
    if perm is not None:
        step.fail("the model ends on flattened (C, H, W) features, which pybnn orders (H, W, C); end with a "
                  "Linear layer")
    return entries


def nhwc(x):
    """A torch NCHW batch (tensor or array) as the float32 NHWC array pybnn takes; (N, F) stays."""
    x = x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)
    x = x.astype(np.float32, copy=False)
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1) if x.ndim == 4 else x)
