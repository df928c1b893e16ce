# cython: language_level=3
"""Depthwise convolution of float32 and int8 NHWC tensors (include/pybnn/dwconv.h): the
accumulators (`depthwise`), or a prepared call with the output transform fused per block of
pixels (`DWConv`, what layers run).

Validates every shape before touching memory (ValueError), runs without the GIL and returns
the ISA number (pybnn.cpu) of the variant that ran.
"""
import numpy as np

cimport numpy as cnp
from libc.stdint cimport int8_t, int32_t, uint8_t

cnp.import_array()

include "_checks.pxi"
include "_arrays.pxi"

cdef extern from "pybnn/dwconv.h" nogil:
    int pybnn_depthwise(int isa, int threads, int is_int8, const void *x, int n, int h, int w, int c,
                        int m, const void *wt, int kh, int kw, int sh, int sw, int dh, int dw,
                        int pad_top, int pad_left, int hout, int wout, int32_t zp, const pybnn_ot *ot,
                        void *out)


cdef int _check_geometry(Py_ssize_t n, Py_ssize_t h, Py_ssize_t w, Py_ssize_t c, Py_ssize_t cm, int kh, int kw,
                         int sh, int sw, int dh, int dw, int pad_top, int pad_left, int hout, int wout,
                         int zero_point) except -1:
    if min(kh, kw, sh, sw, dh, dw, hout, wout) < 1 or min(pad_top, pad_left) < 0 or min(c, h, w) < 1:
        raise ValueError("kernel, strides, dilation, output size, H, W and channels must be >= 1, pads >= 0")
    if cm % c:
        raise ValueError(f"the kernel has {cm} output channels; expected a multiple of C = {c}")
    if max(n, h, w, c, cm, n * hout * wout) > 2**31 - 1 or not -128 <= zero_point <= 127:
        raise ValueError("tensor too large or zero point out of int8 range")
    return 0


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
    _check_geometry(n, h, wd, c, w.shape[1], kh, kw, sh, sw, dh, dw, pad_top, pad_left, hout, wout, zero_point)
    if w.shape[0] != kh * kw:
        raise ValueError(f"w has shape {w.shape}; expected ({kh * kw}, C*M) with C = {c}")
    if acc.shape != (n * hout * wout, w.shape[1]):
        raise ValueError(f"acc has shape {acc.shape}; expected {(n * hout * wout, w.shape[1])}")
    if acc.size == 0:
        return isa
    cdef const uint8_t[::1] xv = x.reshape(-1).view(np.uint8)
    cdef const uint8_t[::1] wv = w.reshape(-1).view(np.uint8)
    cdef uint8_t[::1] av = acc.reshape(-1).view(np.uint8)
    cdef int used, i8 = is_int8, cn = n, ch = h, cw = wd, cc = c, m = w.shape[1] // c
    with nogil:
        used = pybnn_depthwise(isa, threads, i8, &xv[0], cn, ch, cw, cc, m, &wv[0], kh, kw, sh, sw, dh, dw,
                               pad_top, pad_left, hout, wout, zero_point, NULL, &av[0])
    return used


cdef class DWConv:
    """A depthwise convolution with its kernel w (kh*kw, C*M: float32 for float32 input,
    int32 for int8 input with zero point a_zp), geometry and output transform checked once;
    a call checks its input, allocates the output unless given one and runs.  Equals
    `depthwise` followed by the transform of the accumulators (transform.pyx), bit for bit;
    by out_dtype (the GemmConv arguments, gemm.pyx):
      float32 (N, hout, wout, C*M): clip(float32(acc [+ ibias]) * mult + bias, lo, hi)
      int8    (N, hout, wout, C*M): clip(rint(float32(acc + ibias) * mult) + zp, qmin, qmax)
      uint32  (N, hout, wout, ceil(C*M/32)): packed bits (int8 input only, as the last two)."""

    cdef int kh, kw, sh, sw, dh, dw, pad_top, pad_left, hout, wout, a_zp, in_type, out_type
    cdef Py_ssize_t h, w, c, cm, last
    cdef const void *wp
    cdef pybnn_ot ot
    cdef object keep  # the arrays behind wp and the transform's pointers

    def __init__(self, wt, int h, int w, int c, int kh, int kw, int sh, int sw, int dh, int dw, int pad_top,
                 int pad_left, int hout, int wout, out_dtype, *, int a_zp=0, mult=None, bias=None,
                 float lo=-np.inf, float hi=np.inf, ibias=None, int zp=0, int qmin=-128, int qmax=127,
                 thr=None, dir=None):
        cdef str who = "DWConv"
        if not isinstance(wt, np.ndarray) or wt.ndim != 2 or wt.dtype not in (np.float32, np.int32):
            raise ValueError(f"{who}: the kernel must be a (kh*kw, C*M) float32 or int32 array")
        cdef bint int8 = wt.dtype == np.int32
        cdef cnp.npy_intp dims[2]
        dims[0], dims[1] = kh * kw, -1
        self.wp = _data(wt, cnp.NPY_INT32 if int8 else cnp.NPY_FLOAT32, 2, dims, f"{who}: kernel")
        self.cm = wt.shape[1]
        _check_geometry(1, h, w, c, self.cm, kh, kw, sh, sw, dh, dw, pad_top, pad_left, hout, wout, a_zp)
        self.out_type = np.dtype(out_dtype).num
        if not _output_transform(&self.ot, who, self.out_type, self.cm, int8, mult, bias, lo, hi, ibias, zp,
                                 qmin, qmax, thr, dir):
            raise ValueError(f"{who}: accumulators are what `depthwise` gives; out must be float32, int8 "
                             f"or uint32 (bits)")
        self.in_type = cnp.NPY_INT8 if int8 else cnp.NPY_FLOAT32
        self.h, self.w, self.c, self.a_zp = h, w, c, a_zp
        self.kh, self.kw, self.sh, self.sw, self.dh, self.dw = kh, kw, sh, sw, dh, dw
        self.pad_top, self.pad_left, self.hout, self.wout = pad_top, pad_left, hout, wout
        self.last = (self.cm + 31) // 32 if self.out_type == cnp.NPY_UINT32 else self.cm
        self.keep = (wt, mult, bias, ibias, thr, dir)

    def __call__(self, x, int isa, int threads, out=None):
        """The convolution of x, a C-contiguous array (N, h, w, c) or (N, h*w*c) of the input
        dtype, into `out` (N, hout, wout, last) if given, else a new array; returns (the
        output, the ISA number of the variant that ran)."""
        _check_isa(isa)
        _check_threads(threads)
        cdef cnp.npy_intp dims[4]
        cdef const void *xp = _nhwc_input(x, self.in_type, self.h, self.w, self.c, "DWConv", &dims[0])
        if dims[0] > 2**31 - 1:
            raise ValueError("DWConv: batch too large")
        dims[1], dims[2], dims[3] = self.hout, self.wout, self.last
        if out is None:
            out = cnp.PyArray_EMPTY(4, dims, self.out_type, 0)
        cdef void *op = _data(out, self.out_type, 4, dims, "DWConv: out", True)
        cdef int used = isa, n = dims[0], i8 = self.in_type == cnp.NPY_INT8
        if n == 0:
            return out, used
        with nogil:
            used = pybnn_depthwise(isa, threads, i8, xp, n, self.h, self.w, self.c, self.cm // self.c, self.wp,
                                   self.kh, self.kw, self.sh, self.sw, self.dh, self.dw, self.pad_top,
                                   self.pad_left, self.hout, self.wout, self.a_zp, &self.ot, op)
        if used < 0:
            raise MemoryError("DWConv: could not allocate scratch memory")
        return out, used
