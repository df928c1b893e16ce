"""NumPy reference implementation: the definition of every layer's semantics.

Plain, slow and independent of the compiled kernels; the tests compare every kernel and
every instruction-set path against these functions.  docs/semantics.md explains the rules.
"""
import numpy as np

# ---------------------------------------------------------------------------- binary values


def binarize(x):
    """+1 where x >= 0 (so 0 and -0.0 give +1), -1 where x < 0; NaN gives +1."""
    return np.where(np.asarray(x) < 0, np.float32(-1), np.float32(1)).astype(np.float32)


def pack_bits(negative):
    """Boolean array (..., C), True meaning -1, -> uint32 words (..., ceil(C/32)).

    Channel c is bit c % 32 of word c // 32 (little-endian words); padding bits are 0."""
    negative = np.asarray(negative, dtype=bool)
    c = negative.shape[-1]
    nwords = (c + 31) // 32
    padded = np.zeros(negative.shape[:-1] + (nwords * 32,), dtype=bool)
    padded[..., :c] = negative
    packed = np.packbits(padded, axis=-1, bitorder="little")
    return np.ascontiguousarray(packed).view("<u4").astype(np.uint32)


def unpack_bits(bits, channels):
    """uint32 words (..., words) -> float32 ±1 values (..., channels)."""
    bits = np.ascontiguousarray(bits, dtype="<u4")
    as_bytes = bits.view(np.uint8).reshape(bits.shape[:-1] + (bits.shape[-1] * 4,))
    negative = np.unpackbits(as_bytes, axis=-1, bitorder="little")[..., :channels]
    return np.where(negative == 1, np.float32(-1), np.float32(1)).astype(np.float32)


def threshold_negative(x, thr, direction):
    """True (-1) where direction >= 0 and x < thr, or direction < 0 and x > thr (per channel)."""
    return np.where(np.asarray(direction) >= 0, x < thr, x > thr)


# ---------------------------------------------------------------------------- convolution


def conv2d(x, w, strides, dilation, pads, pad_value=0, groups=1):
    """Direct convolution in exact arithmetic (int64 for integer inputs, float64 otherwise).

    x (N, H, W, C), w (KH, KW, C / groups, COUT), pads ((top, bottom), (left, right)); input
    pixels outside the image take `pad_value`.  With groups > 1, output channels
    [g*COUT/groups, (g+1)*COUT/groups) see input channels [g*C/groups, (g+1)*C/groups) only.
    Returns (N, HOUT, WOUT, COUT)."""
    if groups > 1:
        cg, fg = x.shape[3] // groups, w.shape[3] // groups
        return np.concatenate([conv2d(x[..., g * cg:(g + 1) * cg], w[..., g * fg:(g + 1) * fg], strides,
                                      dilation, pads, pad_value) for g in range(groups)], axis=-1)
    acc_type = np.int64 if np.issubdtype(np.asarray(x).dtype, np.integer) else np.float64
    x = np.asarray(x).astype(acc_type)
    w = np.asarray(w).astype(acc_type)
    (pt, pb), (pl, pr) = pads
    kh, kw = w.shape[:2]
    sh, sw = strides
    dh, dw = dilation
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=pad_value)
    hout = (xp.shape[1] - (kh - 1) * dh - 1) // sh + 1
    wout = (xp.shape[2] - (kw - 1) * dw - 1) // sw + 1
    out = np.zeros((x.shape[0], hout, wout, w.shape[3]), dtype=acc_type)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i * dh: i * dh + (hout - 1) * sh + 1: sh,
                       j * dw: j * dw + (wout - 1) * sw + 1: sw, :]
            out += patch @ w[i, j]
    return out


def binary_conv2d(x_pm, w, strides, dilation, pads, pad_value, groups=1):
    """±1 input and sign(w) weights: the integer dot count per output (int64)."""
    return conv2d(x_pm.astype(np.int64), binarize(w).astype(np.int64), strides, dilation, pads,
                  pad_value, groups)


def int8_conv2d(q, zero_point, w_int8, strides, dilation, pads, groups=1):
    """sum (q - zp) * w, padding with the zero point (real 0); exact int64."""
    return conv2d(q.astype(np.int64) - zero_point, w_int8.astype(np.int64), strides, dilation, pads, 0,
                  groups)


# ---------------------------------------------------------------------------- output transforms


def clamp(x, lo, hi):
    """x unless x < lo (then lo) or x > hi (then hi): NaN passes and -0.0 survives lo = 0.0.
    (np.clip gives this only from NumPy 2.1; earlier versions turn -0.0 into +0.0.)"""
    x = np.asarray(x)
    lo, hi = x.dtype.type(lo), x.dtype.type(hi)
    return np.where(x < lo, lo, np.where(x > hi, hi, x)).astype(x.dtype)


def to_float(acc, mult, bias, lo=-np.inf, hi=np.inf):
    """y = float32(acc) * mult + bias in float32, each operation rounded separately, clamped."""
    y = np.asarray(acc).astype(np.float32) * np.asarray(mult, np.float32)
    y = y + np.asarray(bias, np.float32)
    return clamp(y, lo, hi)


def requantize(acc, bias, mult, zero_point, qmin=-128, qmax=127):
    """int8 = clamp(rint(float32(acc + bias) * mult) + zp, qmin, qmax); rint rounds half to even."""
    total = (np.asarray(acc, np.int64) + np.asarray(bias, np.int64)).astype(np.float32)
    q = np.rint(total * np.asarray(mult, np.float32)).astype(np.int64) + int(zero_point)
    return np.clip(q, qmin, qmax).astype(np.int8)


def quantize(x, scale, zero_point):
    """float -> int8: clamp(rint(x / scale) + zp, -128, 127), half to even (ONNX QuantizeLinear)."""
    q = np.rint(np.asarray(x, np.float32) / np.float32(scale))
    q = np.clip(np.nan_to_num(q, nan=0.0, posinf=127, neginf=-128) + zero_point, -128, 127)
    return q.astype(np.int8)


def dequantize(q, scale, zero_point):
    """int8 -> float: float32(q - zp) * scale."""
    return (np.asarray(q, np.int32) - zero_point).astype(np.float32) * np.float32(scale)


# ---------------------------------------------------------------------------- other layers


def add(xs):
    """Sum of float32 tensors, left to right in float32."""
    total = np.asarray(xs[0], np.float32)
    for x in xs[1:]:
        total = (total + np.asarray(x, np.float32)).astype(np.float32)
    return total


def add_int8(qs, zero_points, mults, out_zero_point):
    """int8 = clamp(rint(sum_i float32(q_i - z_i) * m_i) + z_out, -128, 127), the sum left
    to right in float32 (m_i = float32(s_i / s_out)), rint half to even."""
    total = None
    for q, z, m in zip(qs, zero_points, mults):
        term = (np.asarray(q, np.int32) - z).astype(np.float32) * np.float32(m)
        total = term if total is None else (total + term).astype(np.float32)
    return np.clip(np.rint(total).astype(np.int64) + int(out_zero_point), -128, 127).astype(np.int8)


def batch_norm(x, gamma, beta, mean, var, epsilon):
    """(x - mean) * (gamma / sqrt(var + eps)) + beta, in float32, the factor computed first."""
    inv = (np.asarray(gamma, np.float32) /
           np.sqrt(np.asarray(var, np.float32) + np.float32(epsilon))).astype(np.float32)
    return ((np.asarray(x, np.float32) - np.asarray(mean, np.float32)) * inv
            + np.asarray(beta, np.float32)).astype(np.float32)


def affine(x, scale=None, bias=None):
    """x * scale[c] + bias[c] over the last axis in float32, the product rounded first (either
    part may be None)."""
    y = np.asarray(x, np.float32)
    if scale is not None:
        y = (y * np.asarray(scale, np.float32)).astype(np.float32)
    if bias is not None:
        y = (y + np.asarray(bias, np.float32)).astype(np.float32)
    return y


def relu(x, max_value=None, negative_slope=0.0):
    x = np.asarray(x, np.float32)
    y = np.where(x >= 0, x, x * np.float32(negative_slope)).astype(np.float32)
    return y if max_value is None else np.minimum(y, np.float32(max_value))


def prelu(x, alpha):
    x = np.asarray(x, np.float32)
    return np.where(x >= 0, x, x * np.asarray(alpha, np.float32)).astype(np.float32)


def softmax(x):
    x = np.asarray(x, np.float32)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def _windows(x, pool, strides, pads, fill):
    """(N, HOUT, WOUT, C, PH*PW) windows of x, out-of-image positions set to `fill`."""
    (pt, pb), (pl, pr) = pads
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=fill)
    hout = (xp.shape[1] - pool[0]) // strides[0] + 1
    wout = (xp.shape[2] - pool[1]) // strides[1] + 1
    taps = [xp[:, i: i + (hout - 1) * strides[0] + 1: strides[0],
               j: j + (wout - 1) * strides[1] + 1: strides[1], :]
            for i in range(pool[0]) for j in range(pool[1])]
    return np.stack(taps, axis=-1)


def max_pool(x, pool, strides, pads):
    """Max over each window; padded positions never win (float, int8 or ±1 values)."""
    x = np.asarray(x)
    fill = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    return _windows(x, pool, strides, pads, fill).max(axis=-1).astype(x.dtype)


def avg_pool(x, pool, strides, pads):
    """Mean over the in-image positions of each window (padding excluded from the count).

    float32: sum in float64 then divide, rounded to float32.  int8: integer sum, divided with
    rounding half away from zero (as TFLite), so no float round trip."""
    x = np.asarray(x)
    ones = np.ones(x.shape[:3] + (1,), dtype=np.int64)
    count = _windows(ones, pool, strides, pads, 0).sum(axis=-1)
    if x.dtype == np.int8:
        total = _windows(x.astype(np.int64), pool, strides, pads, 0).sum(axis=-1)
        return rounded_div(total, count).astype(np.int8)
    total = _windows(x.astype(np.float64), pool, strides, pads, 0).sum(axis=-1)
    return (total / count).astype(np.float32)


def rounded_div(total, count):
    """Integer division rounding half away from zero."""
    half = count // 2
    return np.where(total >= 0, (total + half) // count, -((-total + half) // count))
