# cython: language_level=3
"""Binary convolution (and dense, as H = W = 1) and binary max pooling on packed tensors.

Inputs are bit-packed NHWC: (N, H, W, words), words = ceil(C/32), bit 1 = -1 (see
bitpack.pyx).  Every function validates all shapes and geometry before touching memory
(ValueError), runs the C kernel without the GIL and returns the ISA number (pybnn.cpu) of
the variant that ran.  The C side is include/pybnn/bconv.h, bgemm.h and bpool.h.
"""
import numpy as np

cimport numpy as cnp
from libc.stdint cimport int8_t, int32_t, uint8_t, uint32_t

cnp.import_array()

cdef extern from "pybnn/bconv.h" nogil:
    ctypedef struct pybnn_conv_geom:
        int n, h, w, words, channels
        int cout, kh, kw, sh, sw, dh, dw
        int pad_top, pad_left, hout, wout
        int pad_value
    size_t pybnn_xgemm_k64(size_t kwords)
    size_t pybnn_xgemm_cblocks(size_t n)
    size_t pybnn_xgemm_wsize(size_t n, size_t kwords)
    void pybnn_xgemm_pack_bits(const uint8_t *bits, size_t sn, size_t sk, size_t n, size_t taps, size_t c,
                               uint32_t *wp)
    void pybnn_bconv_tap_sums(const uint32_t *wp, size_t cout, size_t taps, size_t c, int32_t *tapsum)
    long pybnn_bconv_corrections_size(const pybnn_conv_geom *g)
    int pybnn_bconv_needs_fix(const pybnn_conv_geom *g)
    int pybnn_bconv_corrections(const pybnn_conv_geom *g, const int32_t *tapsum, int32_t *corr)
    int pybnn_bconv2d(int isa, int threads, const pybnn_conv_geom *g, const uint32_t *x,
                      const uint32_t *wp, const int32_t *tapsum, const int32_t *corr,
                      const pybnn_ot *ot, void *out)

cdef extern from "pybnn/bpool.h" nogil:
    int pybnn_bmaxpool2d(int isa, int threads, const uint32_t *x, int n, int h, int w, int words, int kh,
                         int kw, int sh, int sw, int pad_top, int pad_left, int hout,
                         int wout, uint32_t *out)


include "_checks.pxi"
include "_arrays.pxi"


def packed_weights_shape(int channels, int cout, int kh, int kw):
    """Shape of pack_weights' result for (cout, kh, kw, channels) float weights:
    (ceil(cout/8), ceil(kh*kw*ceil(channels/32)/2), 16) uint32 (layout: bgemm.h)."""
    if channels < 1 or cout < 1 or kh < 1 or kw < 1:
        raise ValueError(f"channels, cout, kh, kw must be >= 1; got {channels}, {cout}, {kh}, {kw}")
    cdef size_t kwords = <size_t>kh * kw * ((channels + 31) // 32)
    return (int(pybnn_xgemm_cblocks(cout)), int(pybnn_xgemm_k64(kwords)), 16)


def pack_weights(const float[:, :, :, ::1] w):
    """Binarize (bit = w < 0) and pack float32 weights (Cout, KH, KW, C) into the layout
    bconv2d streams: uint32 (ceil(Cout/8), ceil(KH*KW*words/2), 16), i.e. per block of 8
    output channels and per 64-bit step of the tap-major (KH*KW*words) bit row, the eight
    channels' 64-bit words side by side (bgemm.h).  Every instruction-set path reads this
    one layout."""
    cdef Py_ssize_t cout = w.shape[0], kh = w.shape[1], kw = w.shape[2], c = w.shape[3]
    packed_weights_shape(c, cout, kh, kw)  # validates the sizes
    bits = np.packbits(np.asarray(w) < 0, axis=None, bitorder="little")
    return pack_weights_bits(bits, c, cout, kh, kw, kh * kw * c, 1)


def pack_weights_bits(const uint8_t[::1] bits, int channels, int cout, int kh, int kw, Py_ssize_t sn,
                      Py_ssize_t sk):
    """pack_weights from signs stored as bits: the weight of output channel co at tap (i, j),
    input channel c is -1 where bit co*sn + ((i*kw + j)*channels + c)*sk of `bits` is 1 (bit e
    is bit e % 8 of byte e // 8).  An HWIO kernel's bits (a model file's plain `bits` tensor,
    or np.packbits(kernel < 0, bitorder="little")) have sn = 1, sk = cout.  The result starts
    on a multiple of 64 bytes."""
    shape = packed_weights_shape(channels, cout, kh, kw)
    _check_bits(bits, cout, <Py_ssize_t>kh * kw * channels, sn, sk, "pack_weights_bits")
    wp = empty_aligned(shape, np.uint32)
    cdef uint32_t[:, :, ::1] wpv = wp
    with nogil:
        pybnn_xgemm_pack_bits(&bits[0], sn, sk, cout, <size_t>kh * kw, channels, &wpv[0, 0, 0])
    return wp


def tap_sums_packed(wpacked, int channels, int cout, int kh, int kw):
    """tap_sums of packed weights (from pack_weights or a model file), not counting padding
    bits: int32 (KH*KW, Cout)."""
    cdef cnp.npy_intp dims[3]
    dims[0], dims[1], dims[2] = packed_weights_shape(channels, cout, kh, kw)
    cdef const uint32_t *wp = <const uint32_t *>_data(wpacked, cnp.NPY_UINT32, 3, dims, "tap_sums_packed: wpacked")
    tapsum = np.empty((kh * kw, cout), np.int32)
    cdef int32_t[:, ::1] ts = tapsum
    with nogil:
        pybnn_bconv_tap_sums(wp, cout, <size_t>kh * kw, channels, &ts[0, 0])
    return tapsum


def tap_sums(w):
    """tapsum for bconv2d: int32 (KH*KW, Cout), the sum over channels of the binarized
    (+1 where w >= 0 or NaN, else -1) float weights (Cout, KH, KW, C) of each tap."""
    a = np.asarray(w)
    if a.ndim != 4:
        raise ValueError(f"weights must be (Cout, KH, KW, C); got shape {a.shape}")
    s = np.where(a < 0, -1, 1).astype(np.int32).sum(axis=3, dtype=np.int32)  # (cout, kh, kw)
    return np.ascontiguousarray(s.reshape(s.shape[0], -1).T)


cdef int _check_axis(str axis, long long size, int k, int s, int d, int pad, int out) except -1:
    """Output size `out` must come from the usual formula with some pad_end >= 0
    (ek = d*(k-1)+1) and pad >= 0.  Windows lying wholly in the padding are allowed
    (explicit pads larger than the kernel, as ONNX permits): the kernel reads no input
    for them and the padding correction gives pad_value times the tap sums."""
    if k < 1 or s < 1 or d < 1:
        raise ValueError(f"kernel, stride and dilation along {axis} must be >= 1; "
                         f"got {k}, {s}, {d}")
    if out < 1:
        raise ValueError(f"output {axis} must be >= 1, got {out}")
    cdef long long ek = <long long>d * (k - 1) + 1
    if pad < 0:
        raise ValueError(f"pad along {axis} must be >= 0, got {pad}")
    # out = floor((size + pad + pad_end - ek) / s) + 1 for some pad_end >= 0
    cdef long long hi = <long long>out * s + ek - size - pad - 1    # largest pad_end
    if hi < 0:
        raise ValueError(f"output {axis} {out} is inconsistent with input {size}, kernel {k}, "
                         f"stride {s}, dilation {d} and pad {pad} (no end padding >= 0 gives it)")
    return 0


cdef int _geometry(pybnn_conv_geom *g, Py_ssize_t n, Py_ssize_t h, Py_ssize_t wd, Py_ssize_t words,
                   int channels, int cout, int kh, int kw, int sh, int sw, int dh, int dw, int pad_top,
                   int pad_left, int hout, int wout, int pad_value) except -1:
    if channels < 1 or cout < 1:
        raise ValueError(f"channels and cout must be >= 1; got {channels} and {cout}")
    if words != (channels + 31) // 32:
        raise ValueError(f"x has {words} words per pixel; {channels} channels need "
                         f"{(channels + 31) // 32}")
    if h < 1 or wd < 1:
        raise ValueError(f"x must have H, W >= 1; got shape {(n, h, wd, words)}")
    if pad_value not in (-1, 0, 1):
        raise ValueError(f"pad_value must be -1, 0 or 1, got {pad_value}")
    _check_axis("height", h, kh, sh, dh, pad_top, hout)
    _check_axis("width", wd, kw, sw, dw, pad_left, wout)
    if <long long>kh * kw * channels > 2**31 - 1 or n > 2**31 - 1 or h > 2**31 - 1 or wd > 2**31 - 1:
        raise ValueError("convolution too large for 32-bit accumulators")
    g.n, g.h, g.w, g.words, g.channels = n, h, wd, words, channels
    g.cout, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw = cout, kh, kw, sh, sw, dh, dw
    g.pad_top, g.pad_left, g.hout, g.wout, g.pad_value = pad_top, pad_left, hout, wout, pad_value
    return 0


def needs_pad_corrections(int h, int w, int channels, int cout, int kh, int kw, int sh, int sw, int dh,
                          int dw, int pad_top, int pad_left, int hout, int wout, int pad_value):
    """True if bconv2d corrects the border for this geometry (some tap falls outside the input
    and pad_value != +1): only then does it read the tap sums."""
    cdef pybnn_conv_geom g
    _geometry(&g, 1, h, w, (channels + 31) // 32, channels, cout, kh, kw, sh, sw, dh, dw, pad_top,
              pad_left, hout, wout, pad_value)
    return bool(pybnn_bconv_needs_fix(&g))


def pad_corrections(int h, int w, int channels, int cout, int kh, int kw, int sh, int sw, int dh,
                    int dw, int pad_top, int pad_left, int hout, int wout, int pad_value, tapsum):
    """The padding corrections bconv2d adds for this geometry (the input is (N, h, w, words)
    for any N) and these tap sums: an int32 (pairs, cout) array, pairs = 0 when there is
    nothing to correct.  They depend on the geometry and the weights only: compute them once
    and pass them to every bconv2d call as `corr` (else each call computes them)."""
    cdef pybnn_conv_geom g
    cdef cnp.npy_intp dims[2]
    _geometry(&g, 1, h, w, (channels + 31) // 32, channels, cout, kh, kw, sh, sw, dh, dw, pad_top,
              pad_left, hout, wout, pad_value)
    dims[0], dims[1] = <cnp.npy_intp>kh * kw, cout
    cdef const int32_t *ts = <const int32_t *>_data(tapsum, cnp.NPY_INT32, 2, dims, "pad_corrections: tapsum")
    cdef long size = pybnn_bconv_corrections_size(&g)
    if size < 0:
        raise MemoryError("pad_corrections: out of memory")
    corr = np.empty((size // cout, cout), np.int32)
    if size and pybnn_bconv_corrections(&g, ts, <int32_t *>cnp.PyArray_DATA(corr)) < 0:
        raise MemoryError("pad_corrections: out of memory")
    return corr


cdef class BConv2D:
    """A binary convolution of packed x (N, h, w, words) (words = ceil(channels/32)) by
    wpacked from pack_weights, with its output transform.  Everything but the input is
    checked once, here (a layer makes one per weights and output transform), and the padding
    corrections are computed here unless given (corr, from pad_corrections); a call checks
    x, allocates the output unless given one, and runs.

    The accumulator of output (n, oh, ow, co) is
        acc = sum_{i,j,c} xval * wval
    with xval the +-1 input at (oh*sh - pad_top + i*dh, ow*sw - pad_left + j*dw), or
    pad_value (-1, 0, +1) outside; tapsum (KH*KW, cout) int32 = tap_sums(w) of the float
    weights.  What the output receives depends on out_dtype (the output transforms of
    transform.pyx, applied by the kernel to each block of rows while it is in cache, with
    bit-identical results):
      int32   (N, hout, wout, cout): acc itself (no transform arguments)
      float32 (N, hout, wout, cout): clip(float32(acc [+ ibias]) * mult + bias, lo, hi)
      int8    (N, hout, wout, cout): clip(rint(float32(acc + ibias) * mult) + zp, qmin, qmax)
      uint32  (N, hout, wout, ceil(cout/32)): packed bits, -1 where dir >= 0 and acc < thr,
              or dir < 0 and acc > thr
    Per-channel arrays (mult, bias float32; ibias, thr int32; dir int8) have cout entries.
    Every array must be a C-contiguous NumPy array of exactly that dtype (ValueError
    otherwise)."""

    cdef pybnn_conv_geom g
    cdef pybnn_ot ot
    cdef bint has_ot
    cdef int out_type
    cdef const uint32_t *wp
    cdef const int32_t *ts
    cdef const int32_t *cp
    cdef object keep  # the arrays behind the pointers

    def __init__(self, wpacked, int h, int w, int channels, int cout, int kh, int kw, int sh, int sw, int dh,
                 int dw, int pad_top, int pad_left, int hout, int wout, int pad_value, tapsum, out_dtype, *,
                 corr=None, mult=None, bias=None, float lo=-np.inf, float hi=np.inf, ibias=None, int zp=0,
                 int qmin=-128, int qmax=127, thr=None, dir=None):
        cdef cnp.npy_intp dims[4]
        _geometry(&self.g, 1, h, w, (channels + 31) // 32, channels, cout, kh, kw, sh, sw, dh, dw,
                  pad_top, pad_left, hout, wout, pad_value)
        dims[0], dims[1] = <cnp.npy_intp>kh * kw, cout
        self.ts = <const int32_t *>_data(tapsum, cnp.NPY_INT32, 2, dims, "bconv2d: tapsum")
        cdef size_t kwords = <size_t>kh * kw * ((channels + 31) // 32)
        dims[0], dims[1], dims[2] = pybnn_xgemm_cblocks(cout), pybnn_xgemm_k64(kwords), 16
        self.wp = <const uint32_t *>_data(wpacked, cnp.NPY_UINT32, 3, dims,
                                          "bconv2d: wpacked (from pack_weights, for this kernel)")
        cdef long csize = pybnn_bconv_corrections_size(&self.g)
        if csize < 0:
            raise MemoryError("bconv2d: out of memory")
        if corr is None:
            corr = pad_corrections(h, w, channels, cout, kh, kw, sh, sw, dh, dw, pad_top, pad_left, hout, wout,
                                   pad_value, tapsum)
        dims[0], dims[1] = csize // cout, cout
        self.cp = <const int32_t *>_data(corr, cnp.NPY_INT32, 2, dims,
                                         "bconv2d: corr (from pad_corrections, for this geometry)")
        self.out_type = np.dtype(out_dtype).num
        self.has_ot = _output_transform(&self.ot, "bconv2d", self.out_type, cout, True, mult, bias, lo, hi, ibias,
                                        zp, qmin, qmax, thr, dir)
        self.keep = (wpacked, tapsum, corr, mult, bias, ibias, thr, dir)

    def __call__(self, x, int isa, int threads, out=None):
        """Convolution of x (N, h, w, words) uint32 on up to `threads` threads (the result does
        not depend on it) with the best variant at or below `isa`; into `out` if given, else a
        new array.  Returns (the output, the ISA number of the GEMM variant that ran)."""
        _check_isa(isa)
        _check_threads(threads)
        if not isinstance(x, cnp.ndarray):
            raise ValueError("bconv2d: x must be a 4-D NumPy array (N, H, W, words)")
        cdef cnp.ndarray xa = <cnp.ndarray>x
        cdef cnp.npy_intp *xd = cnp.PyArray_DIMS(xa)
        if not (cnp.PyArray_NDIM(xa) == 4 and cnp.PyArray_EquivTypenums(cnp.PyArray_TYPE(xa), cnp.NPY_UINT32) and
                cnp.PyArray_IS_C_CONTIGUOUS(xa) and xd[1] == self.g.h and xd[2] == self.g.w and
                xd[3] == self.g.words):
            raise ValueError(f"bconv2d: x must be a C-contiguous uint32 array of shape "
                             f"(N, {self.g.h}, {self.g.w}, {self.g.words}); got {x.dtype} {x.shape}")
        if xd[0] > 2**31 - 1:
            raise ValueError("bconv2d: batch too large")
        cdef pybnn_conv_geom g = self.g
        g.n = <int>xd[0]
        cdef cnp.npy_intp dims[4]
        dims[0], dims[1], dims[2] = g.n, g.hout, g.wout
        dims[3] = (g.cout + 31) // 32 if self.out_type == cnp.NPY_UINT32 else g.cout
        if out is None:
            out = cnp.PyArray_EMPTY(4, dims, self.out_type, 0)
        cdef void *op = _data(out, self.out_type, 4, dims, "bconv2d: out", True)
        cdef const uint32_t *xp = <const uint32_t *>cnp.PyArray_DATA(xa)
        cdef const pybnn_ot *otp = &self.ot if self.has_ot else NULL
        cdef int used
        with nogil:
            used = pybnn_bconv2d(isa, threads, &g, xp, self.wp, self.ts, self.cp, otp, op)
        if used < 0:
            raise MemoryError("bconv2d: could not allocate scratch memory")
        return out, used


def bconv2d(x, wpacked, int channels, int cout, int kh, int kw, int sh, int sw, int dh, int dw,
            int pad_top, int pad_left, int hout, int wout, int pad_value, tapsum, out, int isa=0,
            int threads=1, **kwargs):
    """BConv2D(wpacked, H, W of x, channels, ..., out.dtype, **kwargs)(x, isa, threads, out):
    the binary convolution of x (N, H, W, words) into out; returns the ISA number of the
    GEMM variant that ran.  kwargs: corr and the output transform's arguments (see BConv2D)."""
    if not isinstance(x, cnp.ndarray) or cnp.PyArray_NDIM(<cnp.ndarray>x) != 4:
        raise ValueError("bconv2d: x must be a 4-D NumPy array (N, H, W, words)")
    if not isinstance(out, cnp.ndarray):
        raise ValueError("bconv2d: out must be a NumPy array")
    if x.shape[3] != (channels + 31) // 32:
        raise ValueError(f"x has {x.shape[3]} words per pixel; {channels} channels need "
                         f"{(channels + 31) // 32}")
    conv = BConv2D(wpacked, x.shape[1], x.shape[2], channels, cout, kh, kw, sh, sw, dh, dw, pad_top, pad_left,
                   hout, wout, pad_value, tapsum, out.dtype, **kwargs)
    return conv(x, isa, threads, out)[1]


def bmaxpool2d(const uint32_t[:, :, :, ::1] x, int kh, int kw, int sh, int sw, int pad_top,
               int pad_left, int hout, int wout, uint32_t[:, :, :, ::1] out, int isa=0,
               int threads=1):
    """Binary max pooling: out (N, hout, wout, words) = AND of the packed bits over each
    window (max of +-1 is +1 if any is +1); positions outside the input are skipped."""
    cdef Py_ssize_t n = x.shape[0], h = x.shape[1], wd = x.shape[2], words = x.shape[3]
    cdef int used
    _check_isa(isa)
    _check_threads(threads)
    if kh < 1 or kw < 1 or sh < 1 or sw < 1:
        raise ValueError(f"pool size and strides must be >= 1; got {kh}x{kw}, {sh}x{sw}")
    if hout < 1 or wout < 1 or h < 1 or wd < 1:
        raise ValueError(f"input and output H, W must be >= 1; got {h}x{wd} -> {hout}x{wout}")
    if pad_top < 0 or pad_left < 0:
        raise ValueError(f"pads must be >= 0; got {pad_top}, {pad_left}")
    # Windows move monotonically, so checking the first and the last one along each axis
    # proves every window overlaps the input.
    if pad_top >= kh or (<long long>hout - 1) * sh - pad_top >= h:
        raise ValueError(f"a pooling window along height lies entirely outside the input "
                         f"(H={h}, pool {kh}, stride {sh}, pad_top {pad_top}, hout {hout})")
    if pad_left >= kw or (<long long>wout - 1) * sw - pad_left >= wd:
        raise ValueError(f"a pooling window along width lies entirely outside the input "
                         f"(W={wd}, pool {kw}, stride {sw}, pad_left {pad_left}, wout {wout})")
    if (out.shape[0], out.shape[1], out.shape[2], out.shape[3]) != (n, hout, wout, words):
        raise ValueError(f"out has shape {(out.shape[0], out.shape[1], out.shape[2], out.shape[3])}; expected "
                         f"{(n, hout, wout, words)}")
    if n > 2**31 - 1 or h > 2**31 - 1 or wd > 2**31 - 1 or words > 2**31 - 1:
        raise ValueError("tensor too large")
    with nogil:
        used = pybnn_bmaxpool2d(isa, threads, &x[0, 0, 0, 0], n, h, wd, words, kh, kw, sh, sw,
                                pad_top, pad_left, hout, wout, &out[0, 0, 0, 0])
    return used
