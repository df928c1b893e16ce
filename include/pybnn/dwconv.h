/* Depthwise convolution (groups = input channels) of float32 and int8 NHWC tensors; this
 * computes the accumulators, the layer then applies its output transform (transform.pyx):
 *
 *   acc[n, oh, ow, c*M + j] = sum over the taps (i, k) whose input pixel lies in the image of
 *                             x'[n, oh*sh - pt + i*dh, ow*sw - pl + k*dw, c] * w[i, k, c*M + j]
 *
 * M is the depth multiplier (output channels per input channel); x' = x for float32 (summed
 * in float32 in tap order, the product and each sum rounded separately) or x - zero_point for
 * int8 (exact int32).  Taps outside the image add nothing: float convolutions pad with 0 and
 * int8 padding holds the zero point (real 0).  w: (KH*KW, C*M) row-major, i.e. the layer's
 * (KH, KW, 1, C*M) kernel, as float32 or int32.
 *
 * How: per output pixel an accumulator row over all C*M channels gets one row operation per
 * in-image tap; a pixel's channels are adjacent in NHWC, so the row operations vectorise.
 * They are written once in plain C and compiled per instruction set (pool.h does the same).
 * A grouped convolution with more than one input channel per group runs the layer's GEMM
 * kernels once per group instead (pybnn/layers/conv.py).
 * Threads: contiguous ranges of output pixels.
 */
#ifndef PYBNN_DWCONV_H
#define PYBNN_DWCONV_H

#include "pybnn/common.h"

#define PYBNN_DW_INLINE static inline __attribute__((always_inline))

/* acc[c*m + j] (+)= x'[c] * w[c*m + j] for one tap; first: assign instead of add. */
PYBNN_DW_INLINE void pybnn_dw_row_f32(float *acc, const void *xv, const void *wv, size_t c, size_t m,
                                      int32_t zp, int first) {
    const float *x = (const float *)xv, *w = (const float *)wv;
    (void)zp;
    if (m == 1) {
        if (first)
            for (size_t i = 0; i < c; i++)
                acc[i] = x[i] * w[i];
        else
            for (size_t i = 0; i < c; i++)
                acc[i] = acc[i] + x[i] * w[i];
        return;
    }
    for (size_t i = 0; i < c; i++)
        for (size_t j = 0; j < m; j++)
            acc[i * m + j] = (first ? 0.0f : acc[i * m + j]) + x[i] * w[i * m + j];
}

PYBNN_DW_INLINE void pybnn_dw_row_i8(int32_t *acc, const void *xv, const void *wv, size_t c, size_t m,
                                     int32_t zp, int first) {
    const int8_t *x = (const int8_t *)xv;
    const int32_t *w = (const int32_t *)wv;
    if (m == 1) {
        if (first)
            for (size_t i = 0; i < c; i++)
                acc[i] = ((int32_t)x[i] - zp) * w[i];
        else
            for (size_t i = 0; i < c; i++)
                acc[i] += ((int32_t)x[i] - zp) * w[i];
        return;
    }
    for (size_t i = 0; i < c; i++)
        for (size_t j = 0; j < m; j++)
            acc[i * m + j] = (first ? 0 : acc[i * m + j]) + ((int32_t)x[i] - zp) * w[i * m + j];
}

typedef void (*pybnn_dw_row_fn)(void *acc, const void *x, const void *w, size_t c, size_t m, int32_t zp,
                                int first);

#define PYBNN_DW_VARIANT(suffix, ATTR)                                                             \
    ATTR static void pybnn_dw_f32_##suffix(void *a, const void *x, const void *w, size_t c, size_t m,  \
                                          int32_t zp, int first) {                                 \
        pybnn_dw_row_f32((float *)a, x, w, c, m, zp, first);                                       \
    }                                                                                              \
    ATTR static void pybnn_dw_i8_##suffix(void *a, const void *x, const void *w, size_t c, size_t m,   \
                                         int32_t zp, int first) {                                  \
        pybnn_dw_row_i8((int32_t *)a, x, w, c, m, zp, first);                                      \
    }

PYBNN_DW_VARIANT(scalar, )
#if PYBNN_X86
PYBNN_DW_VARIANT(avx2, PYBNN_TARGET_AVX2)
PYBNN_DW_VARIANT(avx512, PYBNN_TARGET_AVX512)
#endif
#if PYBNN_NEON
PYBNN_DW_VARIANT(neon, )
#endif

static pybnn_dw_row_fn pybnn_dw_pick(int isa, int is_int8, int *used) {
#if PYBNN_NEON
    if (isa >= PYBNN_ISA_NEON) { *used = PYBNN_ISA_NEON; return is_int8 ? pybnn_dw_i8_neon : pybnn_dw_f32_neon; }
#endif
#if PYBNN_X86
    if (isa >= PYBNN_ISA_AVX512 && pybnn_isa_supported(PYBNN_ISA_AVX512)) {
        *used = PYBNN_ISA_AVX512;
        return is_int8 ? pybnn_dw_i8_avx512 : pybnn_dw_f32_avx512;
    }
    if (isa >= PYBNN_ISA_AVX2 && pybnn_isa_supported(PYBNN_ISA_AVX2)) {
        *used = PYBNN_ISA_AVX2;
        return is_int8 ? pybnn_dw_i8_avx2 : pybnn_dw_f32_avx2;
    }
#endif
    (void)isa;
    *used = PYBNN_ISA_SCALAR;
    return is_int8 ? pybnn_dw_i8_scalar : pybnn_dw_f32_scalar;
}

typedef struct {
    pybnn_dw_row_fn row;
    const uint8_t *x, *w;
    size_t in_size;  /* bytes per input value: 4 (float32) or 1 (int8) */
    int h, w_, c, m, kh, kw, sh, sw, dh, dw, pad_top, pad_left, hout, wout;
    int32_t zp;
    size_t total;    /* output pixels */
    uint8_t *acc;    /* (total, c*m) float32 or int32 */
} pybnn_dw_job;

static void pybnn_dw_part(void *ctx, int part, int nparts) {
    const pybnn_dw_job *j = (const pybnn_dw_job *)ctx;
    const size_t c = (size_t)j->c, cm = c * (size_t)j->m, pix = c * j->in_size;
    size_t lo, hi;
    pybnn_par_range(j->total, part, nparts, &lo, &hi);
    for (size_t p = lo; p < hi; p++) {
        int ow = (int)(p % (size_t)j->wout), oh = (int)((p / (size_t)j->wout) % (size_t)j->hout);
        size_t b = p / ((size_t)j->wout * (size_t)j->hout);
        const uint8_t *xb = j->x + b * (size_t)j->h * j->w_ * pix;
        uint8_t *acc = j->acc + p * cm * 4;
        int first = 1;
        for (int i = 0; i < j->kh; i++) {
            long ih = (long)oh * j->sh - j->pad_top + (long)i * j->dh;
            if (ih < 0 || ih >= j->h)
                continue;
            for (int k = 0; k < j->kw; k++) {
                long iw = (long)ow * j->sw - j->pad_left + (long)k * j->dw;
                if (iw < 0 || iw >= j->w_)
                    continue;
                j->row(acc, xb + ((size_t)ih * j->w_ + iw) * pix, j->w + ((size_t)i * j->kw + k) * cm * 4, c,
                       (size_t)j->m, j->zp, first);
                first = 0;
            }
        }
        if (first) /* no tap in the image (only possible with explicit padding) */
            memset(acc, 0, cm * 4);
    }
}

/* x: (n, h, w, c) float32 or int8 (is_int8; zp its zero point); w: (kh*kw, c*m) float32 or
 * int32; acc: (n*hout*wout, c*m) float32 or int32.  Geometry is checked by the Cython layer.
 * Returns the ISA used. */
static int pybnn_depthwise(int isa, int threads, int is_int8, const void *x, int n, int h, int w, int c,
                           int m, const void *wt, int kh, int kw, int sh, int sw, int dh, int dw,
                           int pad_top, int pad_left, int hout, int wout, int32_t zp, void *acc) {
    int used;
    pybnn_dw_job j = {pybnn_dw_pick(isa, is_int8, &used), (const uint8_t *)x, (const uint8_t *)wt,
                      is_int8 ? 1u : 4u, h, w, c, m, kh, kw, sh, sw, dh, dw, pad_top, pad_left, hout, wout,
                      zp, (size_t)n * hout * wout, (uint8_t *)acc};
    /* Work (common.h units): ~2 ns per tap plus ~0.03 ns per multiply-add. */
    double work = (double)j.total * kh * kw * (20.0 + 0.3 * (double)c * m);
    pybnn_par_run(pybnn_par_parts(threads, j.total, work), pybnn_dw_part, &j);
    return used;
}

#endif /* PYBNN_DWCONV_H */
