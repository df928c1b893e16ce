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
 * compiler vectorises.  Those row operations are written once as plain C; pybnn_pool_ops
 * instantiates them per instruction set by wrapping them in functions with that set's
 * target attribute (an always_inline body takes its caller's target), so every variant is
 * the same arithmetic and the scalar variant is simply the portable C build.
 * Threads: contiguous ranges of output pixels, each with its own accumulator row.
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

typedef struct {
    void (*first)(void *acc, const void *src, size_t c);
    void (*step)(void *acc, const void *src, size_t c);
    void (*finish)(const void *acc, void *dst, size_t c, int count);
    size_t in_size, acc_size; /* bytes per input value and per accumulator value */
} pybnn_pool_ops;

/* One table of the four kinds' row operations compiled with target attribute ATTR. */
#define PYBNN_POOL_VARIANT(suffix, ATTR)                                                           \
    ATTR static void pybnn_maxf_first_##suffix(void *a, const void *s, size_t c) { pybnn_maxf_first(a, s, c); } \
    ATTR static void pybnn_maxf_step_##suffix(void *a, const void *s, size_t c) { pybnn_maxf_step(a, s, c); }   \
    ATTR static void pybnn_maxf_finish_##suffix(const void *a, void *d, size_t c, int n) { pybnn_maxf_finish(a, d, c, n); } \
    ATTR static void pybnn_maxi_first_##suffix(void *a, const void *s, size_t c) { pybnn_maxi_first(a, s, c); } \
    ATTR static void pybnn_maxi_step_##suffix(void *a, const void *s, size_t c) { pybnn_maxi_step(a, s, c); }   \
    ATTR static void pybnn_maxi_finish_##suffix(const void *a, void *d, size_t c, int n) { pybnn_maxi_finish(a, d, c, n); } \
    ATTR static void pybnn_avgf_first_##suffix(void *a, const void *s, size_t c) { pybnn_avgf_first(a, s, c); } \
    ATTR static void pybnn_avgf_step_##suffix(void *a, const void *s, size_t c) { pybnn_avgf_step(a, s, c); }   \
    ATTR static void pybnn_avgf_finish_##suffix(const void *a, void *d, size_t c, int n) { pybnn_avgf_finish(a, d, c, n); } \
    ATTR static void pybnn_avgi_first_##suffix(void *a, const void *s, size_t c) { pybnn_avgi_first(a, s, c); } \
    ATTR static void pybnn_avgi_step_##suffix(void *a, const void *s, size_t c) { pybnn_avgi_step(a, s, c); }   \
    ATTR static void pybnn_avgi_finish_##suffix(const void *a, void *d, size_t c, int n) { pybnn_avgi_finish(a, d, c, n); } \
    static const pybnn_pool_ops pybnn_pool_ops_##suffix[4] = {                                     \
        {pybnn_maxf_first_##suffix, pybnn_maxf_step_##suffix, pybnn_maxf_finish_##suffix, 4, 4},   \
        {pybnn_maxi_first_##suffix, pybnn_maxi_step_##suffix, pybnn_maxi_finish_##suffix, 1, 1},   \
        {pybnn_avgf_first_##suffix, pybnn_avgf_step_##suffix, pybnn_avgf_finish_##suffix, 4, 8},   \
        {pybnn_avgi_first_##suffix, pybnn_avgi_step_##suffix, pybnn_avgi_finish_##suffix, 1, 4}};

PYBNN_POOL_VARIANT(scalar, )
#if PYBNN_X86
PYBNN_POOL_VARIANT(avx2, PYBNN_TARGET_AVX2)
PYBNN_POOL_VARIANT(avx512, PYBNN_TARGET_AVX512)
#endif
#if PYBNN_NEON
PYBNN_POOL_VARIANT(neon, )
#endif

static const pybnn_pool_ops *pybnn_pool_pick(int isa, int kind, int *used) {
#if PYBNN_NEON
    if (isa >= PYBNN_ISA_NEON) { *used = PYBNN_ISA_NEON; return &pybnn_pool_ops_neon[kind]; }
#endif
#if PYBNN_X86
    if (isa >= PYBNN_ISA_AVX512 && pybnn_isa_supported(PYBNN_ISA_AVX512)) { *used = PYBNN_ISA_AVX512; return &pybnn_pool_ops_avx512[kind]; }
    if (isa >= PYBNN_ISA_AVX2 && pybnn_isa_supported(PYBNN_ISA_AVX2)) { *used = PYBNN_ISA_AVX2; return &pybnn_pool_ops_avx2[kind]; }
#endif
    (void)isa;
    *used = PYBNN_ISA_SCALAR;
    return &pybnn_pool_ops_scalar[kind];
}

typedef struct {
    const pybnn_pool_ops *ops;
    const uint8_t *x;
    int h, w, c, kh, kw, sh, sw, pad_top, pad_left, hout, wout;
    size_t total;
    uint8_t *out;
    int failed; /* set by a part that could not allocate its accumulator row */
} pybnn_pool_job;

/* Output pixels [lo, hi) of the flattened (n, hout, wout) grid. */
static void pybnn_pool_part(void *ctx, int part, int nparts) {
    pybnn_pool_job *j = (pybnn_pool_job *)ctx;
    const pybnn_pool_ops *ops = j->ops;
    size_t lo, hi, c = (size_t)j->c, pix = c * ops->in_size;
    pybnn_par_range(j->total, part, nparts, &lo, &hi);
    if (lo >= hi)
        return;
    void *acc = malloc(c * ops->acc_size);
    if (!acc) {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    for (size_t p = lo; p < hi; p++) {
        int ow = (int)(p % (size_t)j->wout), oh = (int)((p / (size_t)j->wout) % (size_t)j->hout);
        size_t b = p / ((size_t)j->wout * (size_t)j->hout);
        const uint8_t *xb = j->x + b * (size_t)j->h * j->w * pix;
        long ih0 = (long)oh * j->sh - j->pad_top, iw0 = (long)ow * j->sw - j->pad_left;
        long i0 = PYBNN_MAX(ih0, 0L), i1 = PYBNN_MIN(ih0 + j->kh, (long)j->h);
        long j0 = PYBNN_MAX(iw0, 0L), j1 = PYBNN_MIN(iw0 + j->kw, (long)j->w);
        ops->first(acc, xb + ((size_t)i0 * j->w + j0) * pix, c);
        for (long i = i0; i < i1; i++)
            for (long jj = (i == i0 ? j0 + 1 : j0); jj < j1; jj++)
                ops->step(acc, xb + ((size_t)i * j->w + jj) * pix, c);
        ops->finish(acc, j->out + p * pix, c, (int)((i1 - i0) * (j1 - j0)));
    }
    free(acc);
}

/* x: (n, h, w, c) of float32 (MAX_F32, AVG_F32) or int8 -> out (n, hout, wout, c), same
 * dtype.  Every window must hold at least one input pixel (the Cython layer checks it).
 * Returns the ISA used, or -1 if a scratch row could not be allocated. */
static int pybnn_pool2d(int isa, int threads, int kind, const void *x, int n, int h, int w, int c,
                        int kh, int kw, int sh, int sw, int pad_top, int pad_left, int hout,
                        int wout, void *out) {
    int used;
    pybnn_pool_job j = {pybnn_pool_pick(isa, kind, &used), (const uint8_t *)x, h, w, c, kh, kw, sh,
                        sw, pad_top, pad_left, hout, wout, (size_t)n * hout * wout,
                        (uint8_t *)out, 0};
    /* Work (common.h units): ~3 ns per window position plus ~0.05 ns per channel value. */
    double work = (double)j.total * (double)kh * kw * (30.0 + 0.5 * c);
    pybnn_par_run(pybnn_par_parts(threads, j.total, work), pybnn_pool_part, &j);
    return j.failed ? -1 : used;
}

#endif /* PYBNN_POOL_H */
