/* Max and average pooling of float32 and int8 NHWC tensors (binary max pooling on packed
 * bits is bpool.h).
 *
 *   max:  out[n, oh, ow, c] = max over the window's in-image pixels (padding never wins);
 *         float32 NaN propagates (any NaN in the window gives NaN, as NumPy's max).
 *   avg:  the mean over the window's in-image pixels (padding excluded from the count).
 *         float32: sum in float64 in window order, divided in float64, rounded to float32
 *         (the reference sums in float64 too; the two can differ only when a float64 sum
 *         rounds, i.e. for values spanning ~29 binary orders of magnitude).  int8: exact
 *         integer sum, divided rounding half away from zero (TFLite's rule); the quotient is
 *         taken in double, exact because |sum| + count < 2^53.
 *
 * How: each output pixel combines its window's input pixels one at a time as whole channel
 * rows (NHWC keeps a pixel's channels adjacent), so the work is a few row operations the
 * compiler vectorises.  Those row operations are written once as plain C;
 * PYBNN_POOL_VARIANT instantiates them per instruction set inside range functions with that
 * set's target attribute (an always_inline body takes its caller's target), so every
 * variant is the same arithmetic and the scalar variant is simply the portable C build.
 * Blocks of 64 channels go through all of a window's pixels at once, so their accumulators
 * stay in registers (about 3x faster than whole rows on 14x14x256 windows of 2x2).
 * Threads: contiguous ranges of output pixels.
 */
#ifndef PYBNN_POOL_H
#define PYBNN_POOL_H

#include <stdlib.h>

#include "pybnn/common.h"

enum { PYBNN_POOL_MAX_F32 = 0, PYBNN_POOL_MAX_I8 = 1, PYBNN_POOL_AVG_F32 = 2, PYBNN_POOL_AVG_I8 = 3 };

#define PYBNN_INLINE static inline __attribute__((always_inline))

/* ---------------------------------------------------------------- row operations
 * first: acc = the window's first pixel; step: acc = combine(acc, pixel);
 * finish: out = acc (divided by the window's in-image pixel count for averages). */
PYBNN_INLINE void pybnn_maxf_first(void *acc, const void *src, size_t c) { memcpy(acc, src, c * 4); }
PYBNN_INLINE void pybnn_maxf_step(void *acc, const void *src, size_t c) {
    float *a = (float *)acc;
    const float *s = (const float *)src;
    for (size_t i = 0; i < c; i++)  /* a NaN in acc stays: x > NaN is false */
        a[i] = (s[i] > a[i] || s[i] != s[i]) ? s[i] : a[i];
}
PYBNN_INLINE void pybnn_maxf_finish(const void *acc, void *dst, size_t c, int count) {
    (void)count;
    memcpy(dst, acc, c * 4);
}

PYBNN_INLINE void pybnn_maxi_first(void *acc, const void *src, size_t c) { memcpy(acc, src, c); }
PYBNN_INLINE void pybnn_maxi_step(void *acc, const void *src, size_t c) {
    int8_t *a = (int8_t *)acc;
    const int8_t *s = (const int8_t *)src;
    for (size_t i = 0; i < c; i++)
        a[i] = s[i] > a[i] ? s[i] : a[i];
}
PYBNN_INLINE void pybnn_maxi_finish(const void *acc, void *dst, size_t c, int count) {
    (void)count;
    memcpy(dst, acc, c);
}

PYBNN_INLINE void pybnn_avgf_first(void *acc, const void *src, size_t c) {
    double *a = (double *)acc;
    const float *s = (const float *)src;
    for (size_t i = 0; i < c; i++)
        a[i] = (double)s[i];
}
PYBNN_INLINE void pybnn_avgf_step(void *acc, const void *src, size_t c) {
    double *a = (double *)acc;
    const float *s = (const float *)src;
    for (size_t i = 0; i < c; i++)
        a[i] += (double)s[i];
}
PYBNN_INLINE void pybnn_avgf_finish(const void *acc, void *dst, size_t c, int count) {
    const double *a = (const double *)acc;
    float *d = (float *)dst;
    for (size_t i = 0; i < c; i++)
        d[i] = (float)(a[i] / (double)count);
}

PYBNN_INLINE void pybnn_avgi_first(void *acc, const void *src, size_t c) {
    int32_t *a = (int32_t *)acc;
    const int8_t *s = (const int8_t *)src;
    for (size_t i = 0; i < c; i++)
        a[i] = s[i];
}
PYBNN_INLINE void pybnn_avgi_step(void *acc, const void *src, size_t c) {
    int32_t *a = (int32_t *)acc;
    const int8_t *s = (const int8_t *)src;
    for (size_t i = 0; i < c; i++)
        a[i] += s[i];
}
PYBNN_INLINE void pybnn_avgi_finish(const void *acc, void *dst, size_t c, int count) {
    const int32_t *a = (const int32_t *)acc;
    int8_t *d = (int8_t *)dst;
    const double half = (double)(count / 2), n = (double)count;
    for (size_t i = 0; i < c; i++) {
        /* |sum| <= 128 * count < 2^31 (the Cython layer caps the window); the quotient of
         * two exact doubles truncated toward zero is the integer floor of a nonnegative. */
        double q = (double)(a[i] < 0 ? -a[i] : a[i]) + half;
        int32_t r = (int32_t)(q / n);
        d[i] = (int8_t)(a[i] < 0 ? -r : r);
    }
}

/* Channels per block: a block's accumulators (at most 64 doubles) live on the stack, and
 * with the block's width a compile-time constant the compiler keeps them in registers across
 * the window's pixels instead of loading and storing an accumulator row per pixel. */
#define PYBNN_POOL_CB 64

typedef struct pybnn_pool_job pybnn_pool_job;

struct pybnn_pool_job {
    void (*range)(const pybnn_pool_job *j, size_t lo, size_t hi);
    const uint8_t *x;
    int h, w, c, kh, kw, sh, sw, pad_top, pad_left, hout, wout;
    size_t total;
    uint8_t *out;
};

/* One block of cb channels of one output pixel: window rows [i0, i1) x columns [j0, j1),
 * pixels in row-major order.  FIRST/STEP/FINISH are one kind's row operations. */
#define PYBNN_POOL_BLOCK(FIRST, STEP, FINISH, cb)                                                  \
    do {                                                                                           \
        FIRST(acc, xb + ((size_t)i0 * w + j0) * pix + c0 * in, cb);                                \
        for (long i = i0; i < i1; i++)                                                             \
            for (long jj = (i == i0 ? j0 + 1 : j0); jj < j1; jj++)                                 \
                STEP(acc, xb + ((size_t)i * w + jj) * pix + c0 * in, cb);                          \
        FINISH(acc, dst + c0 * in, cb, count);                                                     \
    } while (0)

/* Output pixels [lo, hi) of the flattened (n, hout, wout) grid, for one kind. */
#define PYBNN_POOL_RANGE(name, FIRST, STEP, FINISH, IN, ACC, ATTR)                                 \
    ATTR static void name(const pybnn_pool_job *j, size_t lo, size_t hi) {                          \
        const size_t c = (size_t)j->c, in = IN, pix = c * in;                                      \
        const long w = j->w;                                                                       \
        double accbuf[PYBNN_POOL_CB * (ACC) / sizeof(double)];                                     \
        void *acc = accbuf;                                                                        \
        for (size_t p = lo; p < hi; p++) {                                                         \
            int ow = (int)(p % (size_t)j->wout), oh = (int)((p / (size_t)j->wout) % (size_t)j->hout); \
            size_t b = p / ((size_t)j->wout * (size_t)j->hout);                                    \
            const uint8_t *xb = j->x + b * (size_t)j->h * w * pix;                                 \
            uint8_t *dst = j->out + p * pix;                                                       \
            long ih0 = (long)oh * j->sh - j->pad_top, iw0 = (long)ow * j->sw - j->pad_left;        \
            long i0 = PYBNN_MAX(ih0, 0L), i1 = PYBNN_MIN(ih0 + j->kh, (long)j->h);                 \
            long j0 = PYBNN_MAX(iw0, 0L), j1 = PYBNN_MIN(iw0 + j->kw, w);                          \
            int count = (int)((i1 - i0) * (j1 - j0));                                              \
            size_t c0 = 0;                                                                         \
            for (; c0 + PYBNN_POOL_CB <= c; c0 += PYBNN_POOL_CB)                                   \
                PYBNN_POOL_BLOCK(FIRST, STEP, FINISH, PYBNN_POOL_CB);                              \
            if (c0 < c)                                                                            \
                PYBNN_POOL_BLOCK(FIRST, STEP, FINISH, c - c0);                                     \
        }                                                                                          \
    }

/* The four kinds compiled with target attribute ATTR. */
#define PYBNN_POOL_VARIANT(suffix, ATTR)                                                           \
    PYBNN_POOL_RANGE(pybnn_pool_maxf_##suffix, pybnn_maxf_first, pybnn_maxf_step, pybnn_maxf_finish, 4, 4, ATTR) \
    PYBNN_POOL_RANGE(pybnn_pool_maxi_##suffix, pybnn_maxi_first, pybnn_maxi_step, pybnn_maxi_finish, 1, 1, ATTR) \
    PYBNN_POOL_RANGE(pybnn_pool_avgf_##suffix, pybnn_avgf_first, pybnn_avgf_step, pybnn_avgf_finish, 4, 8, ATTR) \
    PYBNN_POOL_RANGE(pybnn_pool_avgi_##suffix, pybnn_avgi_first, pybnn_avgi_step, pybnn_avgi_finish, 1, 4, ATTR) \
    static void (*const pybnn_pool_ranges_##suffix[4])(const pybnn_pool_job *, size_t, size_t) = {  \
        pybnn_pool_maxf_##suffix, pybnn_pool_maxi_##suffix, pybnn_pool_avgf_##suffix, pybnn_pool_avgi_##suffix};

PYBNN_POOL_VARIANT(scalar, )
#if PYBNN_X86
PYBNN_POOL_VARIANT(avx2, PYBNN_TARGET_AVX2)
PYBNN_POOL_VARIANT(avx512, PYBNN_TARGET_AVX512)
#endif
#if PYBNN_NEON
PYBNN_POOL_VARIANT(neon, )
#endif

typedef void (*pybnn_pool_fn)(const pybnn_pool_job *, size_t, size_t);

static pybnn_pool_fn pybnn_pool_pick(int isa, int kind, int *used) {
#if PYBNN_NEON
    if (isa >= PYBNN_ISA_NEON) { *used = PYBNN_ISA_NEON; return pybnn_pool_ranges_neon[kind]; }
#endif
#if PYBNN_X86
    if (isa >= PYBNN_ISA_AVX512 && pybnn_isa_supported(PYBNN_ISA_AVX512)) { *used = PYBNN_ISA_AVX512; return pybnn_pool_ranges_avx512[kind]; }
    if (isa >= PYBNN_ISA_AVX2 && pybnn_isa_supported(PYBNN_ISA_AVX2)) { *used = PYBNN_ISA_AVX2; return pybnn_pool_ranges_avx2[kind]; }
#endif
    (void)isa;
    *used = PYBNN_ISA_SCALAR;
    return pybnn_pool_ranges_scalar[kind];
}

static void pybnn_pool_part(void *ctx, int part, int nparts) {
    const pybnn_pool_job *j = (const pybnn_pool_job *)ctx;
    size_t lo, hi;
    pybnn_par_range(j->total, part, nparts, &lo, &hi);
    if (lo < hi)
        j->range(j, lo, hi);
}

/* x: (n, h, w, c) of float32 (MAX_F32, AVG_F32) or int8 -> out (n, hout, wout, c), same
 * dtype.  Every window must hold at least one input pixel (the Cython layer checks it).
 * Returns the ISA used. */
static int pybnn_pool2d(int isa, int threads, int kind, const void *x, int n, int h, int w, int c,
                        int kh, int kw, int sh, int sw, int pad_top, int pad_left, int hout,
                        int wout, void *out) {
    int used;
    pybnn_pool_job j = {pybnn_pool_pick(isa, kind, &used), (const uint8_t *)x, h, w, c, kh, kw, sh, sw, pad_top, pad_left, hout, wout,
                        (size_t)n * hout * wout, (uint8_t *)out};
    /* Work (common.h units): ~3 ns per window position plus ~0.05 ns per channel value. */
    double work = (double)j.total * (double)kh * kw * (30.0 + 0.5 * c);
    pybnn_par_run(pybnn_par_parts(threads, j.total, work), pybnn_pool_part, &j);
    return used;
}

#endif /* PYBNN_POOL_H */
