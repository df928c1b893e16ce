# cython: language_level=3
"""Depthwise convolution accumulators of float32 and int8 NHWC tensors (include/pybnn/dwconv.h).

Validates every shape before touching memory (ValueError), runs without the GIL and returns
the ISA number (pybnn.cpu) of the variant that ran.
"""
import numpy as np

from libc.stdint cimport int32_t, uint8_t

cdef extern from "pybnn/dwconv.h" nogil:
    int pybnn_depthwise(int isa, int threads, int is_int8, const void *x, int n, int h, int w, int c,
                        int m, const void *wt, int kh, int kw, int sh, int sw, int dh, int dw,
                        int pad_top, int pad_left, int hout, int wout, int32_t zp, void *acc)

include "_checks.pxi"


def depthwise(x, w, int kh, int kw, int sh, int sw, int dh, int dw, int pad_top, int pad_left,
              int hout, int wout, int zero_point, acc, int isa=0, int threads=1):
    """acc (N*hout*wout, C*M) = depthwise convolution of x (N, H, W, C) with w (kh*kw, C*M):
    float32 x with float32 w and acc, or int8 x (zero point) with int32 w and acc."""
    for name, a in (("x", x), ("w", w), ("acc", acc)):
        if not isinstance(a, np.ndarray) or not a.flags.c_contiguous:
            raise ValueError(f"{name} must be a C-contiguous NumPy array")
    is_int8 = x.dtype == np.int8
    if not ((x.dtype == np.float32 and w.dtype == np.float32 and acc.dtype == np.float32) or
            (is_int8 and w.dtype == np.int32 and acc.dtype == np.int32)):
        raise ValueError(f"dtypes must be float32/float32/float32 or int8/int32/int32, got "
                         f"{x.dtype}/{w.dtype}/{acc.dtype}")
    if x.ndim != 4 or w.ndim != 2 or acc.ndim != 2 or not acc.flags.writeable:
        raise ValueError("x must be (N, H, W, C), w (kh*kw, C*M) and acc a writeable (rows, C*M) array")
    n, h, wd, c = x.shape
    _check_isa(isa)
    _check_threads(threads)
    if min(kh, kw, sh, sw, dh, dw, hout, wout) < 1 or min(pad_top, pad_left) < 0 or c < 1:
        raise ValueError("kernel, strides, dilation, output size and channels must be >= 1, pads >= 0")
    if w.shape[0] != kh * kw or w.shape[1] % c:
        raise ValueError(f"w has shape {w.shape}; expected ({kh * kw}, C*M) with C = {c}")
    if acc.shape != (n * hout * wout, w.shape[1]):
        raise ValueError(f"acc has shape {acc.shape}; expected {(n * hout * wout, w.shape[1])}")
    if max(n, h, wd, c, w.shape[1], n * hout * wout) > 2**31 - 1 or not -128 <= zero_point <= 127:
        raise ValueError("tensor too large or zero point out of int8 range")
    if acc.size == 0:
        return isa
    cdef const uint8_t[::1] xv = x.reshape(-1).view(np.uint8)
    cdef const uint8_t[::1] wv = w.reshape(-1).view(np.uint8)
    cdef uint8_t[::1] av = acc.reshape(-1).view(np.uint8)
    cdef int used, i8 = is_int8, cn = n, ch = h, cw = wd, cc = c, m = w.shape[1] // c
    with nogil:
        used = pybnn_depthwise(isa, threads, i8, &xv[0], cn, ch, cw, cc, m, &wv[0], kh, kw, sh, sw, dh, dw,
                               pad_top, pad_left, hout, wout, zero_point, &av[0])
    return used
