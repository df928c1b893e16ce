/* im2col: unfold NHWC images into the patch matrix a convolution multiplies by its weights.
 *
 * Output row r = (n*hout + oh)*wout + ow holds the kh*kw*C inputs seen by output pixel
 * (n, oh, ow), tap-major then channel: column (i*kw + j)*C + c.  Tap (i, j) reads input
 * pixel (oh*sh - pad_top + i*dh, ow*sw - pad_left + j*dw); taps outside the image read
 * the padding value (0.0 for floats, the input zero point for int8 so that it means 0).
 *
 * NHWC keeps the C channels of one tap contiguous in both the input and the output, so a
 * tap is a memcpy (and with dw == 1 a whole run of valid taps is one memcpy).  libc's
 * memcpy/memset are already vectorised for the CPU they run on, so there is one portable
 * variant; the functions return PYBNN_ISA_SCALAR like every selector returns its ISA.
 */
#ifndef PYBNN_IM2COL_H
#define PYBNN_IM2COL_H

#include "pybnn/common.h"

/* memcpy for the short runs of im2col (one or a few taps: 3x3_64 int8 copies 192 bytes at a
 * time): 16-byte chunks the compiler turns into vector moves, the last one overlapping the
 * one before, instead of a libc call per run (measured: the call dominated short runs). */
static inline void pybnn_im2col_copy(uint8_t *dst, const uint8_t *src, size_t n) {
    if (n < 16 || n > 1024) {
        memcpy(dst, src, n);
        return;
    }
    for (size_t i = 0; i + 16 < n; i += 16)
        memcpy(dst + i, src + i, 16);
    memcpy(dst + n - 16, src + n - 16, 16);
}

/* First tap index j in [0, kw) whose coordinate pos0 + j*d is >= 0, and one past the last
 * whose coordinate is < size: the valid taps along one axis form one contiguous range. */
static inline void pybnn_im2col_range(ptrdiff_t pos0, ptrdiff_t d, ptrdiff_t k, ptrdiff_t size,
                                      ptrdiff_t *j0, ptrdiff_t *j1) {
    ptrdiff_t lo = 0, hi = k;
    if (pos0 < 0) lo = (-pos0 + d - 1) / d;                 /* ceil(-pos0 / d) */
    if (pos0 + (k - 1) * d >= size) hi = pos0 >= size ? 0 : (size - 1 - pos0) / d + 1;
    if (lo > hi) lo = hi;
    *j0 = lo;
    *j1 = hi;
}

typedef struct {
    const uint8_t *x;
    ptrdiff_t h, w, c, kh, kw, sh, sw, dh, dw, pad_top, pad_left, hout, wout;
    size_t esize, rows;
    int fill_byte;
    uint8_t *out;
} pybnn_im2col_job;

/* Rows [lo, hi) of the patch matrix (row = flattened (n, oh, ow)) into dst (row lo first). */
static void pybnn_im2col_rows(const pybnn_im2col_job *jb, size_t lo, size_t hi, uint8_t *out) {
    const ptrdiff_t h = jb->h, w = jb->w, kh = jb->kh, kw = jb->kw, dh = jb->dh, dw = jb->dw;
    const ptrdiff_t hout = jb->hout, wout = jb->wout;
    const int fill_byte = jb->fill_byte;
    const size_t tap = (size_t)jb->c * jb->esize; /* bytes of one tap (C channels) */
    const size_t row = (size_t)(kh * kw) * tap;
    for (size_t r = lo; r < hi; r++) {
        const ptrdiff_t ow = (ptrdiff_t)(r % (size_t)wout), oh = (ptrdiff_t)((r / (size_t)wout) % (size_t)hout);
        const size_t n = r / ((size_t)wout * (size_t)hout);
        const uint8_t *img = jb->x + n * (size_t)h * w * tap;
        uint8_t *dst = out + (r - lo) * row;
        ptrdiff_t i0, i1, j0, j1;
        const ptrdiff_t y0 = oh * jb->sh - jb->pad_top, x0 = ow * jb->sw - jb->pad_left;
        pybnn_im2col_range(y0, dh, kh, h, &i0, &i1);
        pybnn_im2col_range(x0, dw, kw, w, &j0, &j1);
        for (ptrdiff_t i = 0; i < kh; i++, dst += kw * tap) {
            if (i < i0 || i >= i1 || j0 >= j1) {
                memset(dst, fill_byte, kw * tap);
                continue;
            }
            const uint8_t *src = img + ((size_t)(y0 + i * dh) * w + x0) * tap;
            if (j0 > 0) /* borders only: most rows need no padding */
                memset(dst, fill_byte, j0 * tap);
            if (dw == 1) {
                pybnn_im2col_copy(dst + j0 * tap, src + j0 * tap, (j1 - j0) * tap);
            } else {
                for (ptrdiff_t j = j0; j < j1; j++)
                    pybnn_im2col_copy(dst + j * tap, src + j * dw * tap, tap);
            }
            if (j1 < kw)
                memset(dst + j1 * tap, fill_byte, (kw - j1) * tap);
        }
    }
}

static void pybnn_im2col_part(void *ctx, int part, int nparts) {
    const pybnn_im2col_job *jb = (const pybnn_im2col_job *)ctx;
    size_t lo, hi;
    pybnn_par_range(jb->rows, part, nparts, &lo, &hi);
    pybnn_im2col_rows(jb, lo, hi, jb->out + lo * (size_t)(jb->kh * jb->kw * jb->c) * jb->esize);
}

/* Work (common.h units) of `rows` patch rows of `rowbytes` bytes: one per 3 bytes written,
 * plus ~10 ns per row. */
static inline double pybnn_im2col_work(size_t rows, size_t rowbytes) {
    return (double)rows * ((double)rowbytes / 3.0 + 100.0);
}

/* Shared body for both element types: padding is `fill_byte` in every byte; elements are
 * `esize` bytes.  Output rows are split into up to `threads` contiguous ranges.  Geometry
 * arguments are validated by the caller (the Cython layer). */
static inline void pybnn_im2col_bytes(int threads, const uint8_t *x, ptrdiff_t n_img, ptrdiff_t h,
                                      ptrdiff_t w, ptrdiff_t c, size_t esize, ptrdiff_t kh,
                                      ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t dh,
                                      ptrdiff_t dw, ptrdiff_t pad_top, ptrdiff_t pad_left,
                                      ptrdiff_t hout, ptrdiff_t wout, int fill_byte, uint8_t *out) {
    pybnn_im2col_job j = {x, h, w, c, kh, kw, sh, sw, dh, dw, pad_top, pad_left, hout, wout,
                          esize, (size_t)(n_img * hout * wout), fill_byte, out};
    double work = pybnn_im2col_work(j.rows, (size_t)(kh * kw * c) * esize);
    pybnn_par_run(pybnn_par_parts(threads, j.rows, work), pybnn_im2col_part, &j);
}

/* x: (n, h, w, c) float32; out: (n*hout*wout, kh*kw*c); padding is +0.0 (all-zero bytes). */
static inline int pybnn_im2col_f32(int threads, const float *x, ptrdiff_t n, ptrdiff_t h, ptrdiff_t w,
                                   ptrdiff_t c, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw,
                                   ptrdiff_t dh, ptrdiff_t dw, ptrdiff_t pad_top, ptrdiff_t pad_left,
                                   ptrdiff_t hout, ptrdiff_t wout, float *out) {
    pybnn_im2col_bytes(threads, (const uint8_t *)x, n, h, w, c, sizeof(float), kh, kw, sh, sw, dh,
                       dw, pad_top, pad_left, hout, wout, 0, (uint8_t *)out);
    return PYBNN_ISA_SCALAR;
}

/* Same for int8; padding is `pad` (one byte, so memset writes it). */
static inline int pybnn_im2col_i8(int threads, const int8_t *x, ptrdiff_t n, ptrdiff_t h, ptrdiff_t w,
                                  ptrdiff_t c, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw,
                                  ptrdiff_t dh, ptrdiff_t dw, ptrdiff_t pad_top, ptrdiff_t pad_left,
                                  ptrdiff_t hout, ptrdiff_t wout, int8_t pad, int8_t *out) {
    pybnn_im2col_bytes(threads, (const uint8_t *)x, n, h, w, c, 1, kh, kw, sh, sw, dh, dw, pad_top,
                       pad_left, hout, wout, (uint8_t)pad, (uint8_t *)out);
    return PYBNN_ISA_SCALAR;
}

#endif
