# cython: language_level=3
"""Per-channel float32 operations in one pass (include/pybnn/eltwise.h): the arithmetic of
BatchNormalization, ChannelAffine, Add and ReLU, alone or fused.

Validates every shape before touching memory (ValueError), runs without the GIL on up to
`threads` threads (rows split into contiguous ranges; the result does not depend on it) and
returns the ISA number (pybnn.cpu) of the variant that ran.
"""
from libc.stddef cimport size_t

cdef extern from "pybnn/eltwise.h" nogil:
    int pybnn_channelwise(int isa, int threads, const float *x, size_t rows, size_t c, const float *sub,
                          const float *mul, const float *add, const float *res, int relu, float *y)

include "_checks.pxi"


cdef const float *_vector(v, Py_ssize_t c, str name) except? NULL:
    cdef const float[::1] view
    if v is None:
        return NULL
    view = v
    if view.shape[0] != c:
        raise ValueError(f"{name} has {view.shape[0]} values; expected one per channel ({c})")
    return &view[0]


def channelwise(const float[:, ::1] x, float[:, ::1] y, sub=None, mul=None, add=None, res=None, bint relu=False,
                int isa=0, int threads=1):
    """y = x [- sub[c]] [* mul[c]] [+ add[c]] [+ res] [then * (t >= 0)], each step rounded to
    float32 in this order; x, y and res are (rows, C), the vectors (C,) float32."""
    cdef Py_ssize_t rows = x.shape[0], c = x.shape[1]
    cdef const float[:, ::1] r
    cdef const float *rp = NULL
    cdef const float *sp
    cdef const float *mp
    cdef const float *ap
    cdef int used
    _check_isa(isa)
    _check_threads(threads)
    if y.shape[0] != rows or y.shape[1] != c:
        raise ValueError(f"y has shape ({y.shape[0]}, {y.shape[1]}); expected ({rows}, {c})")
    if res is not None:
        r = res
        if r.shape[0] != rows or r.shape[1] != c:
            raise ValueError(f"res has shape ({r.shape[0]}, {r.shape[1]}); expected ({rows}, {c})")
        if rows * c:
            rp = &r[0, 0]
    sp = _vector(sub, c, "sub")
    mp = _vector(mul, c, "mul")
    ap = _vector(add, c, "add")
    if rows * c == 0:
        return isa
    with nogil:
        used = pybnn_channelwise(isa, threads, &x[0, 0], rows, c, sp, mp, ap, rp, relu, &y[0, 0])
    return used
