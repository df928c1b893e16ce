# cython: language_level=3
"""Output transforms: GEMM accumulators (M, C) -> float, int8 or packed bits.

Each function checks shapes and raises ValueError before touching memory, runs without the
GIL on up to `threads` threads (rows split into contiguous ranges; the result does not depend
on it), and returns the ISA number (pybnn.cpu) of the variant that ran.  Results are
bit-identical on every ISA and to the NumPy expressions quoted in each docstring.
"""
from libc.stdint cimport int8_t, int32_t, uint32_t

cdef extern from "pybnn/output_transform.h" nogil:
    int pybnn_to_float_i32(int isa, int threads, const int32_t *acc, size_t m, size_t c, const float *mult,
                           const float *bias, float lo, float hi, float *out)
    int pybnn_to_float_f32(int isa, int threads, const float *acc, size_t m, size_t c, const float *mult,
                           const float *bias, float lo, float hi, float *out)
    int pybnn_to_int8(int isa, int threads, const int32_t *acc, size_t m, size_t c, const int32_t *bias,
                      const float *mult, int zp, int qmin, int qmax, int8_t *out)
    int pybnn_to_bits(int isa, int threads, const int32_t *acc, size_t m, size_t c, const int32_t *thr,
                      const int8_t *dir, uint32_t *out)


include "_checks.pxi"


cdef int _check(str name, tuple ashape, tuple oshape, tuple want_out, dict per_channel) except -1:
    if oshape != want_out:
        raise ValueError(f"{name}: output has shape {oshape}, expected {want_out} for input {ashape}")
    for pname, n in per_channel.items():
        if n != ashape[1]:
            raise ValueError(f"{name}: {pname} has {n} values, expected one per channel ({ashape[1]})")
    return 0


def to_float_i32(const int32_t[:, ::1] acc, const float[::1] mult, const float[::1] bias,
                 float lo, float hi, float[:, ::1] out, int isa=0,
                 int threads=1):
    """out = np.clip(acc.astype(np.float32) * mult + bias, lo, hi); returns the ISA used.

    lo = -inf / hi = inf for no bound (ReLU: lo = 0).  No FMA: rounds like NumPy.
    """
    cdef size_t m = acc.shape[0], c = acc.shape[1]
    _check_threads(threads)
    _check("to_float_i32", (m, c), (out.shape[0], out.shape[1]), (m, c),
           {"mult": mult.shape[0], "bias": bias.shape[0]})
    cdef int used
    # Empty arrays still go through the selector (its loops do nothing): same return value.
    with nogil:
        used = pybnn_to_float_i32(isa, threads, &acc[0, 0], m, c, &mult[0], &bias[0], lo, hi, &out[0, 0])
    return used


def to_float_f32(const float[:, ::1] acc, const float[::1] mult, const float[::1] bias,
                 float lo, float hi, float[:, ::1] out, int isa=0,
                 int threads=1):
    """out = np.clip(acc * mult + bias, lo, hi); `out` may be `acc`.  Returns the ISA used."""
    cdef size_t m = acc.shape[0], c = acc.shape[1]
    _check_threads(threads)
    _check("to_float_f32", (m, c), (out.shape[0], out.shape[1]), (m, c),
           {"mult": mult.shape[0], "bias": bias.shape[0]})
    cdef int used
    # Empty arrays still go through the selector (its loops do nothing): same return value.
    with nogil:
        used = pybnn_to_float_f32(isa, threads, &acc[0, 0], m, c, &mult[0], &bias[0], lo, hi, &out[0, 0])
    return used


def to_int8(const int32_t[:, ::1] acc, const int32_t[::1] bias, const float[::1] mult,
            int zp, int qmin, int qmax, int8_t[:, ::1] out, int isa=0,
                 int threads=1):
    """Requantize: out = np.clip(np.rint((acc + bias).astype(np.float32) * mult) + zp,
    qmin, qmax) (round half to even, int32 addition wrapping like NumPy's).

    A NaN product (only possible with a NaN or infinite mult) gives qmin.  Returns the ISA used.
    """
    cdef size_t m = acc.shape[0], c = acc.shape[1]
    _check_threads(threads)
    _check("to_int8", (m, c), (out.shape[0], out.shape[1]), (m, c),
           {"mult": mult.shape[0], "bias": bias.shape[0]})
    if not -128 <= zp <= 127:
        raise ValueError(f"to_int8: zero point {zp} is outside [-128, 127]")
    if not -128 <= qmin <= qmax <= 127:
        raise ValueError(f"to_int8: need -128 <= qmin <= qmax <= 127, got qmin={qmin}, qmax={qmax}")
    cdef int used
    # Empty arrays still go through the selector (its loops do nothing): same return value.
    with nogil:
        used = pybnn_to_int8(isa, threads, &acc[0, 0], m, c, &bias[0], &mult[0], zp, qmin, qmax, &out[0, 0])
    return used


def to_bits(const int32_t[:, ::1] acc, const int32_t[::1] thr, const int8_t[::1] dir,
            uint32_t[:, ::1] out, int isa=0,
                 int threads=1):
    """Binarize against per-channel thresholds into packed rows (M, ceil(C/32)) of uint32.

    Bit c%32 of word c//32 is 1 (value -1) where dir[c] >= 0 and acc < thr[c], or dir[c] < 0
    and acc > thr[c]; padding bits are 0.  Returns the ISA used.
    """
    cdef size_t m = acc.shape[0], c = acc.shape[1]
    _check_threads(threads)
    _check("to_bits", (m, c), (out.shape[0], out.shape[1]), (m, (c + 31) // 32),
           {"thr": thr.shape[0], "dir": dir.shape[0]})
    cdef int used
    # Empty arrays still go through the selector (its loops do nothing): same return value.
    with nogil:
        used = pybnn_to_bits(isa, threads, &acc[0, 0], m, c, &thr[0], &dir[0], &out[0, 0])
    return used
