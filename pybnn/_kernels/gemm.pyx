# cython: language_level=3
"""im2col and GEMM kernels: float/int8 patches, int8 and binary weights.

Every function checks shapes and sizes and raises ValueError before touching memory, runs
the C kernel without the GIL on up to `threads` threads (rows of the output, or output
channels when there are few rows, split into contiguous ranges; results are bit-identical
for every thread count, floats included), and returns the ISA number (pybnn.cpu) of the variant that
ran: the best one at or below `isa` that this build has and this CPU supports.

Packed weights are 1-D uint8 arrays made once by pack_int8_weights (igemm),
pack_int8_binary_weights (ibgemm), pack_float_binary_weights (fbgemm), pack_float_weights
(sgemm) or pack_binary_bits (either binary one, from bits), or read from a model file;
they start with a 64-byte header (magic, K, cout) that the GEMMs check, and every ISA
variant of a GEMM reads the same layout (documented in include/pybnn/igemm.h and fbgemm.h).
"""
from libc.stddef cimport ptrdiff_t
from libc.stdint cimport int8_t, int32_t, uint8_t, uint32_t

import numpy as np

cimport numpy as cnp

cnp.import_array()

cdef extern from "pybnn/im2col.h" nogil:
    int pybnn_im2col_f32(int threads, const float *x, Py_ssize_t n, Py_ssize_t h, Py_ssize_t w, Py_ssize_t c,
                         Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                         Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t pad_top, Py_ssize_t pad_left,
                         Py_ssize_t hout, Py_ssize_t wout, float *out)
    int pybnn_im2col_i8(int threads, const int8_t *x, Py_ssize_t n, Py_ssize_t h, Py_ssize_t w, Py_ssize_t c,
                        Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                        Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t pad_top, Py_ssize_t pad_left,
                        Py_ssize_t hout, Py_ssize_t wout, int8_t pad, int8_t *out)

cdef extern from "pybnn/igemm.h" nogil:
    size_t pybnn_igemm_packed_size(size_t k, size_t cout)
    int pybnn_igemm_check(const uint8_t *wp, size_t size, size_t k, size_t cout)
    void pybnn_igemm_pack(const int8_t *w, ptrdiff_t sn, ptrdiff_t sk, size_t k, size_t cout, uint8_t *dst)
    int pybnn_igemm(int isa, int threads, const int8_t *a, size_t lda, size_t m, const uint8_t *wp, size_t k,
                    size_t cout, int a_zp, int32_t *out, size_t ldo)
    size_t pybnn_ibgemm_packed_size(size_t k, size_t cout)
    int pybnn_ibgemm_check(const uint8_t *wp, size_t size, size_t k, size_t cout)
    void pybnn_ibgemm_pack_bits(const uint8_t *bits, size_t sn, size_t sk, size_t k, size_t cout, uint8_t *dst)
    int pybnn_ibgemm(int isa, int threads, const int8_t *a, size_t lda, size_t m, const uint8_t *wp, size_t k,
                   size_t cout, int a_zp, int32_t *out, size_t ldo)

cdef extern from "pybnn/fbgemm.h" nogil:
    size_t pybnn_fbgemm_packed_size(size_t k, size_t cout)
    int pybnn_fbgemm_check(const uint8_t *wp, size_t size, size_t k, size_t cout)
    void pybnn_fbgemm_pack_bits(const uint8_t *bits, size_t sn, size_t sk, size_t k, size_t cout, uint8_t *dst)
    size_t pybnn_sgemm_packed_size(size_t k, size_t cout)
    void pybnn_sgemm_pack(const float *w, size_t k, size_t cout, uint8_t *dst)
    int pybnn_fgemm_check(int fw, const uint8_t *wp, size_t size, size_t k, size_t cout)
    int pybnn_fgemm(int fw, int isa, int threads, const float *a, size_t lda, size_t m, const uint8_t *wp,
                    size_t k, size_t cout, float *out, size_t ldo)

cdef extern from "pybnn/gemmconv.h" nogil:
    enum:
        PYBNN_GC_SGEMM
        PYBNN_GC_FBGEMM
        PYBNN_GC_IGEMM
        PYBNN_GC_IBGEMM
    int pybnn_gemm_conv(int gemm, int isa, int threads, const void *x, Py_ssize_t n, Py_ssize_t h,
                        Py_ssize_t w, Py_ssize_t c, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                        Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t pad_top, Py_ssize_t pad_left, Py_ssize_t hout,
                        Py_ssize_t wout, const uint8_t *wp, size_t wbytes, size_t cout, int a_zp,
                        const pybnn_ot *ot, void *out)

# Largest K for which every result is exact in int32 whatever the values: igemm sums K
# products of at most 255 * 128 (a - zp, w); ibgemm K products of at most 255.
MAX_K_INT8 = 1 << 16
MAX_K_BINARY = 1 << 23
MAX_COUT = 1 << 24


include "_checks.pxi"
include "_arrays.pxi"


cdef int _check_im2col(tuple xshape, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                       Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t hout, Py_ssize_t wout,
                       tuple oshape) except -1:
    n, h, w, c = xshape
    if min(kh, kw, sh, sw, dh, dw) < 1:
        raise ValueError(f"kernel {kh}x{kw}, stride {sh}x{sw} and dilation {dh}x{dw} must be >= 1")
    if hout < 0 or wout < 0:
        raise ValueError(f"output size {hout}x{wout} must be >= 0")
    want = (n * hout * wout, kh * kw * c)
    if oshape != want:
        raise ValueError(f"im2col output has shape {oshape}, expected {want} for input "
                         f"{xshape}, kernel {kh}x{kw} and output {hout}x{wout}")
    return 0


def im2col_f32(const float[:, :, :, ::1] x, int kh, int kw, int sh, int sw, int dh, int dw,
               int pad_top, int pad_left, int hout, int wout, float[:, ::1] out, int threads=1):
    """Patch matrix of NHWC float `x` into `out` (N*hout*wout, kh*kw*C); pads with 0.0.

    Row (n, oh, ow), column (i, j, c): input pixel (oh*sh - pad_top + i*dh,
    ow*sw - pad_left + j*dw), channel c.  Returns the ISA used (always scalar: memcpy).
    """
    _check_threads(threads)
    _check_im2col((x.shape[0], x.shape[1], x.shape[2], x.shape[3]), kh, kw, sh, sw, dh, dw, hout, wout, (out.shape[0], out.shape[1]))
    cdef int isa = 0
    if out.shape[0] == 0 or out.shape[1] == 0:
        return isa
    with nogil:
        isa = pybnn_im2col_f32(threads, &x[0, 0, 0, 0], x.shape[0], x.shape[1], x.shape[2], x.shape[3],
                               kh, kw, sh, sw, dh, dw, pad_top, pad_left, hout, wout, &out[0, 0])
    return isa


def im2col_i8(const int8_t[:, :, :, ::1] x, int kh, int kw, int sh, int sw, int dh, int dw,
              int pad_top, int pad_left, int hout, int wout, int8_t pad, int8_t[:, ::1] out,
              int threads=1):
    """im2col_f32 for int8; outside taps read `pad` (the input zero point, i.e. real 0)."""
    _check_threads(threads)
    _check_im2col((x.shape[0], x.shape[1], x.shape[2], x.shape[3]), kh, kw, sh, sw, dh, dw, hout, wout, (out.shape[0], out.shape[1]))
    cdef int isa = 0
    if out.shape[0] == 0 or out.shape[1] == 0:
        return isa
    with nogil:
        isa = pybnn_im2col_i8(threads, &x[0, 0, 0, 0], x.shape[0], x.shape[1], x.shape[2], x.shape[3],
                              kh, kw, sh, sw, dh, dw, pad_top, pad_left, hout, wout, pad, &out[0, 0])
    return isa


cdef int _check_kc(Py_ssize_t k, Py_ssize_t cout, Py_ssize_t max_k) except -1:
    if not 1 <= k <= max_k:
        raise ValueError(f"K = {k} must be in [1, {max_k}]")
    if not 1 <= cout <= MAX_COUT:
        raise ValueError(f"cout = {cout} must be in [1, {MAX_COUT}]")
    return 0


cdef int _check_gemm(str name, tuple ashape, Py_ssize_t k, Py_ssize_t cout, Py_ssize_t max_k,
                     tuple oshape) except -1:
    _check_kc(k, cout, max_k)
    if ashape[1] != k:
        raise ValueError(f"{name}: activations have {ashape[1]} columns, expected K = {k}")
    if oshape != (ashape[0], cout):
        raise ValueError(f"{name}: output has shape {oshape}, expected {(ashape[0], cout)}")
    return 0


cdef int _check_zp(int a_zp) except -1:
    if not -128 <= a_zp <= 127:
        raise ValueError(f"activation zero point {a_zp} is outside [-128, 127]")
    return 0


# ---------------------------------------------------------------- packed weights

_GEMMS = {"sgemm": PYBNN_GC_SGEMM, "fbgemm": PYBNN_GC_FBGEMM, "igemm": PYBNN_GC_IGEMM, "ibgemm": PYBNN_GC_IBGEMM}


cdef int _gemm_id(str gemm) except -1:
    if gemm not in _GEMMS:
        raise ValueError(f"gemm must be one of {sorted(_GEMMS)}, got {gemm!r}")
    return _GEMMS[gemm]


cdef size_t _packed_size(int g, size_t k, size_t cout) noexcept nogil:
    if g == PYBNN_GC_IGEMM:
        return pybnn_igemm_packed_size(k, cout)
    if g == PYBNN_GC_IBGEMM:
        return pybnn_ibgemm_packed_size(k, cout)
    if g == PYBNN_GC_FBGEMM:
        return pybnn_fbgemm_packed_size(k, cout)
    return pybnn_sgemm_packed_size(k, cout)


cdef bint _packed_ok(int g, const uint8_t *wp, size_t size, size_t k, size_t cout) noexcept nogil:
    """The GEMM's own check of a packed buffer: size, magic, K, cout (igemm.h, fbgemm.h)."""
    if g == PYBNN_GC_IGEMM:
        return pybnn_igemm_check(wp, size, k, cout)
    if g == PYBNN_GC_IBGEMM:
        return pybnn_ibgemm_check(wp, size, k, cout)
    return pybnn_fgemm_check(g == PYBNN_GC_SGEMM, wp, size, k, cout)


def packed_size(str gemm, Py_ssize_t k, Py_ssize_t cout):
    """Bytes of `gemm`'s packed weights ("igemm", "ibgemm", "fbgemm" or "sgemm") for K, cout."""
    cdef int g = _gemm_id(gemm)
    _check_kc(k, cout, MAX_K_INT8 if g == PYBNN_GC_IGEMM else MAX_K_BINARY)
    return _packed_size(g, k, cout)


def packed_ok(str gemm, const uint8_t[::1] wpacked, k, cout):
    """True if `wpacked` passes `gemm`'s check for this K and cout (what every GEMM call checks
    first): its size, and a header of the gemm's magic, K and cout with zero reserved bytes."""
    cdef int g = _gemm_id(gemm)
    if not (1 <= k <= MAX_K_BINARY and 1 <= cout <= MAX_COUT) or wpacked.shape[0] < 64:
        return False
    return bool(_packed_ok(g, &wpacked[0], wpacked.shape[0], k, cout))


def pack_int8_weights(const int8_t[:, :] w):
    """Pack int8 weights w (cout, K) for igemm: a 1-D uint8 array (layout in igemm.h).  `w`
    may have any strides: the (K, cout) matrix of an HWIO kernel, transposed, packs as it is."""
    cdef Py_ssize_t cout = w.shape[0], k = w.shape[1]
    _check_kc(k, cout, MAX_K_INT8)
    packed = empty_aligned(pybnn_igemm_packed_size(k, cout))
    cdef uint8_t[::1] dst = packed
    with nogil:
        pybnn_igemm_pack(&w[0, 0], w.strides[0], w.strides[1], k, cout, &dst[0])
    return packed


def pack_binary_bits(str gemm, const uint8_t[::1] bits, Py_ssize_t K, Py_ssize_t cout, Py_ssize_t sn,
                     Py_ssize_t sk):
    """Pack the signs s[n, k] (n < cout, k < K) of a bit matrix for "fbgemm" or "ibgemm": s is -1
    where bit n*sn + k*sk of `bits` is 1 (bit e is bit e % 8 of byte e // 8).  An HWIO kernel's
    bits (a model file's plain `bits` tensor, or np.packbits(kernel < 0, bitorder="little"))
    have sn = 1, sk = cout.  Returns a 1-D uint8 array starting on a multiple of 64 bytes."""
    cdef int g = _gemm_id(gemm)
    if g != PYBNN_GC_FBGEMM and g != PYBNN_GC_IBGEMM:
        raise ValueError(f"pack_binary_bits: gemm must be 'fbgemm' or 'ibgemm', got {gemm!r}")
    _check_kc(K, cout, MAX_K_BINARY)
    _check_bits(bits, cout, K, sn, sk, "pack_binary_bits")
    packed = empty_aligned(_packed_size(g, K, cout))
    cdef uint8_t[::1] dst = packed
    with nogil:
        if g == PYBNN_GC_FBGEMM:
            pybnn_fbgemm_pack_bits(&bits[0], sn, sk, K, cout, &dst[0])
        else:
            pybnn_ibgemm_pack_bits(&bits[0], sn, sk, K, cout, &dst[0])
    return packed


def _pack_float_signs(str gemm, w):
    """Binarize float32 w (cout, K), -1 unless w >= 0 (so NaN gives -1), and pack it."""
    a = np.asarray(w)
    return pack_binary_bits(gemm, np.packbits(~(a >= 0), axis=None, bitorder="little"), a.shape[1], a.shape[0],
                            a.shape[1], 1)


def pack_int8_binary_weights(const float[:, ::1] w):
    """Binarize w (cout, K) (+1 where w >= 0, else -1) and pack it for ibgemm: 1 bit per
    weight, in 16-channel panels (layout in igemm.h)."""
    _check_kc(w.shape[1], w.shape[0], MAX_K_BINARY)
    return _pack_float_signs("ibgemm", w)


def pack_float_binary_weights(const float[:, ::1] w):
    """Binarize w (cout, K) like pack_int8_binary_weights and pack it for fbgemm (its own layout:
    panels of 32 channels, one 32-bit word per k; see include/pybnn/fbgemm.h)."""
    _check_kc(w.shape[1], w.shape[0], MAX_K_BINARY)
    return _pack_float_signs("fbgemm", w)


def pack_float_weights(const float[:, ::1] w):
    """Pack float32 weights w (K, cout) (a HWIO kernel reshaped; note: K first) for sgemm:
    panels of 32 channels, K rows of 32 floats each (layout in include/pybnn/fbgemm.h)."""
    cdef Py_ssize_t k = w.shape[0], cout = w.shape[1]
    _check_kc(k, cout, MAX_K_BINARY)
    packed = empty_aligned(pybnn_sgemm_packed_size(k, cout))
    cdef uint8_t[::1] dst = packed
    with nogil:
        pybnn_sgemm_pack(&w[0, 0], k, cout, &dst[0])
    return packed


# ---------------------------------------------------------------- GEMMs

def igemm(const int8_t[:, ::1] a, const uint8_t[::1] wpacked, int K, int cout, int a_zp,
          int32_t[:, ::1] out, int isa=0, int threads=1):
    """out[m, n] = sum_k (a[m, k] - a_zp) * w[n, k], exact int32; returns the ISA used."""
    _check_threads(threads)
    _check_gemm("igemm", (a.shape[0], a.shape[1]), K, cout, MAX_K_INT8, (out.shape[0], out.shape[1]))
    _check_zp(a_zp)
    if not pybnn_igemm_check(&wpacked[0], wpacked.shape[0], K, cout):
        raise ValueError(f"igemm: wpacked was not made by pack_int8_weights for K={K}, cout={cout}")
    cdef int used
    cdef size_t m = a.shape[0]
    with nogil:
        used = pybnn_igemm(isa, threads, &a[0, 0] if m else NULL, K, m, &wpacked[0], K, cout, a_zp,
                           &out[0, 0] if m else NULL, cout)
    return used


def ibgemm(const int8_t[:, ::1] a, const uint8_t[::1] wpacked, int K, int cout, int a_zp,
           int32_t[:, ::1] out, int isa=0, int threads=1):
    """out[m, n] = sum_k (a[m, k] - a_zp) * s[n, k] (s = +-1), exact int32; returns the ISA."""
    _check_threads(threads)
    _check_gemm("ibgemm", (a.shape[0], a.shape[1]), K, cout, MAX_K_BINARY, (out.shape[0], out.shape[1]))
    _check_zp(a_zp)
    if not pybnn_ibgemm_check(&wpacked[0], wpacked.shape[0], K, cout):
        raise ValueError(f"ibgemm: wpacked was not made by pack_int8_binary_weights for K={K}, cout={cout}")
    cdef int used
    cdef size_t m = a.shape[0]
    with nogil:
        used = pybnn_ibgemm(isa, threads, &a[0, 0] if m else NULL, K, m, &wpacked[0], K, cout, a_zp,
                          &out[0, 0] if m else NULL, cout)
    return used


cdef int _fgemm(bint fw, str name, str packer, const float[:, ::1] a, const uint8_t[::1] wpacked, int K,
                int cout, float[:, ::1] out, int isa, int threads) except -1:
    """fbgemm (fw = 0) or sgemm (fw = 1): checks, then the C driver without the GIL."""
    _check_threads(threads)
    _check_gemm(name, (a.shape[0], a.shape[1]), K, cout, MAX_K_BINARY, (out.shape[0], out.shape[1]))
    if not pybnn_fgemm_check(fw, &wpacked[0], wpacked.shape[0], K, cout):
        raise ValueError(f"{name}: wpacked was not made by {packer} for K={K}, cout={cout}")
    cdef int used
    cdef size_t m = a.shape[0]
    with nogil:
        used = pybnn_fgemm(fw, isa, threads, &a[0, 0] if m else NULL, K, m, &wpacked[0], K, cout,
                           &out[0, 0] if m else NULL, cout)
    return used


def fbgemm(const float[:, ::1] a, const uint8_t[::1] wpacked, int K, int cout,
           float[:, ::1] out, int isa=0, int threads=1):
    """out[m, n] = sum_k a[m, k] * s[n, k] (s = +-1), float32, each sum in k order (so the
    same bits on every ISA and thread count); returns the ISA used."""
    return _fgemm(False, "fbgemm", "pack_float_binary_weights", a, wpacked, K, cout, out, isa, threads)


def sgemm(const float[:, ::1] a, const uint8_t[::1] wpacked, int K, int cout,
          float[:, ::1] out, int isa=0, int threads=1):
    """out[m, n] = sum_k a[m, k] * w[k, n], float32, each sum in k order (one FMA per k where
    the ISA has FMA: the same bits for every thread count); returns the ISA used."""
    return _fgemm(True, "sgemm", "pack_float_weights", a, wpacked, K, cout, out, isa, threads)


cdef class GemmConv:
    """A convolution of NHWC x (N, h, w, c) by the GEMM `gemm` ("sgemm", "fbgemm": float32 x;
    "igemm", "ibgemm": int8 x, zero point a_zp, which also pads) with weights `wpacked` from
    its packer (K = kh*kw*c), followed by an output transform, fused per block of output rows
    (include/pybnn/gemmconv.h).  Everything but the input is checked once, here (a layer
    makes one per weights and output transform); a call checks x, allocates the output
    unless given one, and runs.  The result equals im2col_f32/_i8, then the GEMM, then the
    transform.py function of the output kind on whole matrices, bit for bit; by out_dtype:
      float32 (N, hout, wout, cout): clip(float32(acc [+ ibias]) * mult + bias, lo, hi)
      int8    (N, hout, wout, cout): clip(rint(float32(acc + ibias) * mult) + zp, qmin, qmax)
      uint32  (N, hout, wout, ceil(cout/32)): packed bits, -1 where dir >= 0 and acc < thr,
              or dir < 0 and acc > thr
    (int8 and bits outputs only for the int8 GEMMs, whose accumulators are int32.)"""

    cdef int g, kh, kw, sh, sw, dh, dw, pad_top, pad_left, hout, wout, a_zp, in_type, out_type
    cdef Py_ssize_t h, w, c, cout, last
    cdef const uint8_t *wp
    cdef size_t wsize
    cdef pybnn_ot ot
    cdef object keep  # the arrays behind wp and the transform's pointers

    def __init__(self, str gemm, wpacked, int h, int w, int c, int cout, int kh, int kw, int sh, int sw,
                 int dh, int dw, int pad_top, int pad_left, int hout, int wout, out_dtype, *, int a_zp=0,
                 mult=None, bias=None, float lo=-np.inf, float hi=np.inf, ibias=None, int zp=0,
                 int qmin=-128, int qmax=127, thr=None, dir=None):
        cdef int g = _gemm_id(gemm)
        cdef bint int8 = g == PYBNN_GC_IGEMM or g == PYBNN_GC_IBGEMM
        cdef str who = f"gemm_conv ({gemm})"
        if c < 1 or h < 1 or w < 1:
            raise ValueError(f"{who}: x must have H, W, C >= 1; got {(h, w, c)}")
        cdef Py_ssize_t k = <Py_ssize_t>kh * kw * c
        _check_im2col((1, h, w, c), kh, kw, sh, sw, dh, dw, hout, wout, (hout * wout, k))
        _check_kc(k, cout, MAX_K_INT8 if g == PYBNN_GC_IGEMM else MAX_K_BINARY)
        if int8:
            _check_zp(a_zp)
        cdef cnp.npy_intp dims[1]
        dims[0] = -1
        self.wp = <const uint8_t *>_data(wpacked, cnp.NPY_UINT8, 1, dims, f"{who}: wpacked")
        self.wsize = wpacked.shape[0]
        if not _packed_ok(g, self.wp, self.wsize, k, cout):
            raise ValueError(f"{who}: wpacked was not packed for {gemm} with K={k}, cout={cout}")
        self.out_type = np.dtype(out_dtype).num
        if self.out_type == cnp.NPY_INT32:
            raise ValueError(f"{who}: out must be float32, int8 or uint32 (bits); the accumulators "
                             f"(int32) come from im2col + {gemm}")
        _output_transform(&self.ot, who, self.out_type, cout, int8, mult, bias, lo, hi, ibias, zp, qmin, qmax,
                          thr, dir)
        self.g, self.in_type = g, cnp.NPY_INT8 if int8 else cnp.NPY_FLOAT32
        self.h, self.w, self.c, self.cout, self.a_zp = h, w, c, cout, a_zp
        self.kh, self.kw, self.sh, self.sw, self.dh, self.dw = kh, kw, sh, sw, dh, dw
        self.pad_top, self.pad_left, self.hout, self.wout = pad_top, pad_left, hout, wout
        self.last = (cout + 31) // 32 if self.out_type == cnp.NPY_UINT32 else cout
        self.keep = (wpacked, mult, bias, ibias, thr, dir)

    def __call__(self, x, int isa, int threads, out=None):
        """Convolution of x, a C-contiguous array (N, h, w, c) or (N, h*w*c) of the input
        dtype, on up to `threads` threads (results do not depend on it) with the best variant
        at or below `isa`; into `out` (N, hout, wout, last) if given, else a new array.
        Returns (the output, the ISA number of the GEMM variant that ran)."""
        _check_isa(isa)
        _check_threads(threads)
        cdef cnp.npy_intp dims[4]
        cdef const void *xp = _nhwc_input(x, self.in_type, self.h, self.w, self.c, "gemm_conv", &dims[0])
        dims[1], dims[2], dims[3] = self.hout, self.wout, self.last
        if out is None:
            out = cnp.PyArray_EMPTY(4, dims, self.out_type, 0)
        cdef void *op = _data(out, self.out_type, 4, dims, "gemm_conv: out", True)
        cdef int used
        with nogil:
            used = pybnn_gemm_conv(self.g, isa, threads, xp, dims[0], self.h, self.w, self.c, self.kh, self.kw,
                                   self.sh, self.sw, self.dh, self.dw, self.pad_top, self.pad_left, self.hout,
                                   self.wout, self.wp, self.wsize, self.cout, self.a_zp, &self.ot, op)
        if used < 0:
            raise MemoryError("gemm_conv: could not allocate scratch memory")
        return out, used


def gemm_conv(str gemm, x, wpacked, int cout, int kh, int kw, int sh, int sw, int dh, int dw,
              int pad_top, int pad_left, int hout, int wout, out, int isa=0, int threads=1, **transform):
    """GemmConv(gemm, wpacked, H, W, C of x, ..., out.dtype, **transform)(x, isa, threads, out):
    the convolution of x (N, H, W, C) into out; returns the ISA number of the GEMM variant
    that ran.  transform: a_zp and the output transform's arguments (see GemmConv)."""
    if not isinstance(x, cnp.ndarray) or x.ndim != 4:
        raise ValueError(f"gemm_conv ({gemm}): x must be a 4-D NumPy array (N, H, W, C)")
    if not isinstance(out, cnp.ndarray):
        raise ValueError(f"gemm_conv ({gemm}): out must be a NumPy array")
    conv = GemmConv(gemm, wpacked, x.shape[1], x.shape[2], x.shape[3], cout, kh, kw, sh, sw, dh, dw, pad_top,
                    pad_left, hout, wout, out.dtype, **transform)
    return conv(x, isa, threads, out)[1]
