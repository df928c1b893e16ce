# cython: language_level=3
"""Max and average pooling of float32 and int8 NHWC tensors (include/pybnn/pool.h).

Validates every shape before touching memory (ValueError), runs without the GIL and
returns the ISA number (pybnn.cpu) of the variant that ran.  Binary max pooling on packed
bits is bconv.bmaxpool2d.
"""
import numpy as np

from libc.stdint cimport uint8_t

cdef extern from "pybnn/pool.h" nogil:
    int PYBNN_POOL_MAX_F32, PYBNN_POOL_MAX_I8, PYBNN_POOL_AVG_F32, PYBNN_POOL_AVG_I8
    int pybnn_pool2d(int isa, int threads, int kind, const void *x, int n, int h, int w, int c,
                     int kh, int kw, int sh, int sw, int pad_top, int pad_left, int hout,
                     int wout, void *out)

include "_checks.pxi"


def pool2d(str op, x, int kh, int kw, int sh, int sw, int pad_top, int pad_left, int hout,
           int wout, out, int isa=0, int threads=1):
    """op "max" or "avg" over (N, H, W, C) float32 or int8 `x` into `out` (N, hout, wout, C)
    of the same dtype: windows kh x kw at strides sh x sw starting pad_top/pad_left before
    the input; positions outside the input are skipped (and not counted by "avg")."""
    if op not in ("max", "avg"):
        raise ValueError(f"op must be 'max' or 'avg', got {op!r}")
    if not isinstance(x, np.ndarray) or not isinstance(out, np.ndarray):
        raise ValueError("x and out must be NumPy arrays")
    if x.dtype not in (np.float32, np.int8) or out.dtype != x.dtype:
        raise ValueError(f"x and out must both be float32 or both int8; got {x.dtype} and {out.dtype}")
    if x.ndim != 4 or not x.flags.c_contiguous or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("x must be a C-contiguous (N, H, W, C) array and out a writeable C-contiguous one")
    n, h, w, c = x.shape
    _check_isa(isa)
    _check_threads(threads)
    _check_pool_geom(h, w, kh, kw, sh, sw, pad_top, pad_left, hout, wout)
    if out.shape != (n, hout, wout, c):
        raise ValueError(f"out has shape {out.shape}; expected {(n, hout, wout, c)}")
    if n > 2**31 - 1 or c > 2**31 - 1 or <long long>kh * kw > 2**24:
        raise ValueError("tensor or window too large")
    if x.size == 0:
        return isa
    cdef int kind = ((PYBNN_POOL_MAX_F32 if op == "max" else PYBNN_POOL_AVG_F32) if x.dtype == np.float32
                     else (PYBNN_POOL_MAX_I8 if op == "max" else PYBNN_POOL_AVG_I8))
    cdef const uint8_t[::1] xv = x.reshape(-1).view(np.uint8)
    cdef uint8_t[::1] ov = out.reshape(-1).view(np.uint8)
    cdef int used, cn = n, ch = h, cw = w, cc = c
    with nogil:
        used = pybnn_pool2d(isa, threads, kind, &xv[0], cn, ch, cw, cc, kh, kw, sh, sw, pad_top,
                            pad_left, hout, wout, &ov[0])
    return used
