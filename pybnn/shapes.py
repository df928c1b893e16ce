"""Shape arithmetic shared by every layer and the reference: one place for padding rules."""
import math

import numpy as np

from .errors import ConfigError, ShapeError


def as_pair(value, what, layer, minimum=1):
    """An int or a pair of ints -> a tuple of two ints >= minimum."""
    if isinstance(value, (int,)) and not isinstance(value, bool):
        value = (value, value)
    try:
        pair = tuple(int(v) for v in value)
        ok = len(pair) == 2 and all(p == v for p, v in zip(pair, value))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"{layer}: {what} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ConfigError(f"{layer}: {what} must be >= {minimum}, got {pair}")
    return pair


def as_padding(padding, layer):
    """'valid' | 'same' | int | (pad_h, pad_w) | ((top, bottom), (left, right))."""
    if isinstance(padding, str):
        if padding.lower() in ("valid", "same"):
            return padding.lower()
        raise ConfigError(f"{layer}: padding must be 'valid', 'same' or explicit ints, got {padding!r}")
    if isinstance(padding, int) and not isinstance(padding, bool):
        padding = ((padding, padding), (padding, padding))
    try:
        rows = [p if isinstance(p, (tuple, list)) else (p, p) for p in padding]
        pads = tuple(tuple(int(v) for v in r) for r in rows)
        ok = len(pads) == 2 and all(len(r) == 2 and min(r) >= 0 for r in pads)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"{layer}: explicit padding must be non-negative ((top, bottom), (left, right)),"
                          f" got {padding!r}")
    return pads


def conv_output(size, kernel, stride, dilation, padding, axis, layer):
    """(pad_before, pad_after, output_size) along one spatial axis (axis 0 = height, 1 = width).

    'same' follows Keras/TensorFlow: pad_total = max((ceil(size/stride) - 1) * stride +
    (kernel - 1) * dilation + 1 - size, 0), the smaller half before (top/left)."""
    span = (kernel - 1) * dilation + 1
    if padding == "valid":
        before = after = 0
    elif padding == "same":
        total = max((math.ceil(size / stride) - 1) * stride + span - size, 0)
        before, after = total // 2, total - total // 2
    else:
        before, after = padding[axis]
    padded = size + before + after
    if span > padded:
        dim = "height" if axis == 0 else "width"
        raise ShapeError(f"{layer}: kernel {dim} {kernel} (dilated span {span}) is larger than the "
                         f"padded input {dim} {padded} (input {size}, padding {before}+{after})")
    return before, after, (padded - span) // stride + 1


def words(channels):
    """32-bit words holding `channels` packed binary channels."""
    return (channels + 31) // 32


def nchw_flatten_order(c, h, w):
    """Where each feature of a flattened NCHW (C, H, W) tensor lies in pybnn's flattened NHWC
    one (index i of the result: the NCHW feature at NHWC position i), or None when H = W = 1
    and both orders agree.  Importers permute the first dense layer's weights with it."""
    return None if h * w == 1 else np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).ravel()
