# cython: language_level=3
"""Bit packing of activations into pybnn's binary encoding, and unpacking.

Encoding: (..., C) -> (..., ceil(C/32)) little-endian uint32; channel c is bit c % 32 of
word c // 32; bit 0 = +1, bit 1 = -1; padding bits are 0.  See include/pybnn/bitpack.h.

Every function checks shapes before touching memory (ValueError on mismatch), runs the C
kernel without the GIL on up to `threads` threads (rows split into contiguous ranges; the
result does not depend on it) and returns the ISA number (pybnn.cpu) of the variant that ran.
"""
from libc.stdint cimport uint32_t, int8_t, int32_t

cdef extern from "pybnn/bitpack.h" nogil:
    int pybnn_pack_float(int isa, int threads, const float *x, size_t m, size_t c, const float *thr,
                         const int8_t *dir, uint32_t *out)
    int pybnn_pack_int8(int isa, int threads, const int8_t *q, size_t m, size_t c, const int32_t *thr,
                        const int8_t *dir, uint32_t *out)
    int pybnn_unpack(int isa, int threads, const uint32_t *bits, size_t m, size_t c, float *out)
    void pybnn_copy_bits(const uint32_t *src, size_t m, size_t src_words, size_t c0, uint32_t *dst,
                         size_t dst_words, size_t d0, size_t n)


include "_checks.pxi"


cdef int _check_packed(Py_ssize_t rows, Py_ssize_t words, Py_ssize_t m, Py_ssize_t c,
                       str what) except -1:
    cdef Py_ssize_t expected = (c + 31) // 32
    if rows != m or words != expected:
        raise ValueError(f"{what} has shape ({rows}, {words}); expected ({m}, {expected}) "
                         f"for {m} rows of {c} channels")
    return 0


def pack_float(const float[:, ::1] x, uint32_t[:, ::1] out, thr=None, dir=None, int isa=0,
               int threads=1):
    """Pack float32 x (M, C) into out (M, ceil(C/32)).

    Without thresholds bit = x < 0.  With thr (float32[C]) and dir (int8[C]):
    bit = x < thr[c] where dir[c] >= 0, x > thr[c] where dir[c] < 0.  NaN gives bit 0.
    """
    cdef Py_ssize_t m = x.shape[0], c = x.shape[1]
    cdef const float[::1] thr_v
    cdef const int8_t[::1] dir_v
    cdef const float *tp = NULL
    cdef const int8_t *dp = NULL
    cdef int used
    _check_isa(isa)
    _check_threads(threads)
    _check_packed(out.shape[0], out.shape[1], m, c, "out")
    if (thr is None) != (dir is None):
        raise ValueError("thr and dir must be given together (or both None)")
    if thr is not None:
        thr_v = thr
        dir_v = dir
        if thr_v.shape[0] != c or dir_v.shape[0] != c:
            raise ValueError(f"thr and dir need {c} entries (one per channel); got "
                             f"{thr_v.shape[0]} and {dir_v.shape[0]}")
        tp = &thr_v[0]  # boundscheck is off: for C == 0 this is just the data pointer
        dp = &dir_v[0]
    with nogil:
        used = pybnn_pack_float(isa, threads, &x[0, 0], m, c, tp, dp, &out[0, 0])
    return used


def pack_int8(const int8_t[:, ::1] q, uint32_t[:, ::1] out, const int32_t[::1] thr,
              const int8_t[::1] dir, int isa=0, int threads=1):
    """Pack int8 q (M, C) into out (M, ceil(C/32)) with int32 thresholds thr[C] and
    directions dir[C]: bit = q < thr[c] where dir[c] >= 0, q > thr[c] where dir[c] < 0.
    Plain binarization of a quantized tensor: thr = zero_point, dir = +1."""
    cdef Py_ssize_t m = q.shape[0], c = q.shape[1]
    cdef int used
    _check_isa(isa)
    _check_threads(threads)
    _check_packed(out.shape[0], out.shape[1], m, c, "out")
    if thr.shape[0] != c or dir.shape[0] != c:
        raise ValueError(f"thr and dir need {c} entries (one per channel); got "
                         f"{thr.shape[0]} and {dir.shape[0]}")
    with nogil:
        used = pybnn_pack_int8(isa, threads, &q[0, 0], m, c, &thr[0], &dir[0], &out[0, 0])
    return used


def unpack(const uint32_t[:, ::1] bits, int channels, float[:, ::1] out, int isa=0, int threads=1):
    """Unpack bits (M, ceil(channels/32)) into out (M, channels) as +1.0 / -1.0."""
    cdef Py_ssize_t m = bits.shape[0]
    cdef int used
    _check_isa(isa)
    _check_threads(threads)
    if channels < 0:
        raise ValueError(f"channels must be >= 0, got {channels}")
    _check_packed(bits.shape[0], bits.shape[1], m, channels, "bits")
    if out.shape[0] != m or out.shape[1] != channels:
        raise ValueError(f"out has shape ({out.shape[0]}, {out.shape[1]}); expected "
                         f"({m}, {channels})")
    with nogil:
        used = pybnn_unpack(isa, threads, &bits[0, 0], m, channels, &out[0, 0])
    return used


def copy_bits(const uint32_t[:, ::1] src, Py_ssize_t c0, uint32_t[:, ::1] dst, Py_ssize_t d0, Py_ssize_t n):
    """Channels [c0, c0 + n) of each packed row of src (M, words) into channels [d0, d0 + n) of
    the same row of dst (M, words'); dst's other bits are kept."""
    cdef Py_ssize_t m = src.shape[0]
    if dst.shape[0] != m:
        raise ValueError(f"src has {m} rows, dst {dst.shape[0]}")
    if min(c0, d0, n) < 0 or c0 + n > 32 * src.shape[1] or d0 + n > 32 * dst.shape[1]:
        raise ValueError(f"channel range out of bounds: [{c0}, {c0 + n}) of {32 * src.shape[1]} bits -> "
                         f"[{d0}, {d0 + n}) of {32 * dst.shape[1]} bits")
    if m == 0 or n == 0:
        return
    with nogil:
        pybnn_copy_bits(&src[0, 0], m, src.shape[1], c0, &dst[0, 0], dst.shape[1], d0, n)
