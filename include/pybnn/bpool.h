/* Binary max pooling on bit-packed NHWC tensors.
 *
 * max over +-1 values is +1 as soon as one value is +1 (bit 0), so the output bit is the
 * AND of the window's bits.  Window positions outside the input are skipped (every window
 * must hold at least one input pixel: the Cython layer checks it).  Padding bits stay 0
 * because they are 0 in every input word.
 *
 * Family pybnn_band (dst &= src over `words` words): scalar, avx2, avx512, neon; the window walk
 * pybnn_bmaxpool2d(isa, ...) is shared and returns the ISA of the variant it used.
 */
#ifndef PYBNN_BPOOL_H
#define PYBNN_BPOOL_H

#include "pybnn/common.h"

typedef void (*pybnn_band_fn)(uint32_t *dst, const uint32_t *src, size_t words);

static void pybnn_band_scalar(uint32_t *dst, const uint32_t *src, size_t words) {
    for (size_t q = 0; q < words; q++)
        dst[q] &= src[q];
}

#if PYBNN_X86
PYBNN_TARGET_AVX2 static void pybnn_band_avx2(uint32_t *dst, const uint32_t *src, size_t words) {
    size_t q = 0;
    for (; q + 8 <= words; q += 8) {
        __m256i d = _mm256_loadu_si256((const __m256i *)(dst + q));
        __m256i s = _mm256_loadu_si256((const __m256i *)(src + q));
        _mm256_storeu_si256((__m256i *)(dst + q), _mm256_and_si256(d, s));
    }
    for (; q < words; q++)
        dst[q] &= src[q];
}

PYBNN_TARGET_AVX512 static void pybnn_band_avx512(uint32_t *dst, const uint32_t *src, size_t words) {
    for (size_t q = 0; q < words; q += 16) { /* the last 1-16 words through a mask */
        const __mmask16 k = words - q >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (words - q)) - 1);
        const __m512i d = _mm512_maskz_loadu_epi32(k, dst + q), s = _mm512_maskz_loadu_epi32(k, src + q);
        _mm512_mask_storeu_epi32(dst + q, k, _mm512_and_si512(d, s));
    }
}
#endif

#if PYBNN_NEON
static void pybnn_band_neon(uint32_t *dst, const uint32_t *src, size_t words) {
    size_t q = 0;
    for (; q + 4 <= words; q += 4)
        vst1q_u32(dst + q, vandq_u32(vld1q_u32(dst + q), vld1q_u32(src + q)));
    for (; q < words; q++)
        dst[q] &= src[q];
}
#endif

static pybnn_band_fn pybnn_band_pick(int isa, int *used) {
#if PYBNN_NEON
    if (isa >= PYBNN_ISA_NEON) { *used = PYBNN_ISA_NEON; return pybnn_band_neon; }
#endif
#if PYBNN_X86
    if (isa >= PYBNN_ISA_AVX512) { *used = PYBNN_ISA_AVX512; return pybnn_band_avx512; }
    if (isa >= PYBNN_ISA_AVX2) { *used = PYBNN_ISA_AVX2; return pybnn_band_avx2; }
#endif
    (void)isa;
    *used = PYBNN_ISA_SCALAR;
    return pybnn_band_scalar;
}

typedef struct {
    pybnn_band_fn band;
    const uint32_t *x;
    int h, w, words, kh, kw, sh, sw, pad_top, pad_left, hout, wout;
    size_t total;
    uint32_t *out;
} pybnn_bpool_job;

/* Output pixels [lo, hi) of the flattened (n, hout, wout) grid. */
static void pybnn_bpool_part(void *ctx, int part, int nparts) {
    const pybnn_bpool_job *j = (const pybnn_bpool_job *)ctx;
    size_t lo, hi, wd = (size_t)j->words;
    pybnn_par_range(j->total, part, nparts, &lo, &hi);
    for (size_t p = lo; p < hi; p++) {
        int ow = (int)(p % (size_t)j->wout), oh = (int)((p / (size_t)j->wout) % (size_t)j->hout);
        size_t b = p / ((size_t)j->wout * (size_t)j->hout);
        const uint32_t *xb = j->x + b * (size_t)j->h * j->w * wd;
        long ih0 = (long)oh * j->sh - j->pad_top, iw0 = (long)ow * j->sw - j->pad_left;
        long i0 = PYBNN_MAX(ih0, 0L), i1 = PYBNN_MIN(ih0 + j->kh, (long)j->h);
        long j0 = PYBNN_MAX(iw0, 0L), j1 = PYBNN_MIN(iw0 + j->kw, (long)j->w);
        uint32_t *dst = j->out + p * wd;
        /* Start from the first in-range pixel rather than all-ones, so padding
         * bits are copied zeros. */
        memcpy(dst, xb + ((size_t)i0 * j->w + j0) * wd, wd * sizeof(uint32_t));
        for (long i = i0; i < i1; i++)
            for (long jj = (i == i0 ? j0 + 1 : j0); jj < j1; jj++)
                j->band(dst, xb + ((size_t)i * j->w + jj) * wd, wd);
    }
}

/* x: (n, h, w, words) -> out: (n, hout, wout, words); output pixels are split into up to
 * `threads` contiguous ranges. */
static int pybnn_bmaxpool2d(int isa, int threads, const uint32_t *x, int n, int h, int w,
                            int words, int kh, int kw, int sh, int sw, int pad_top, int pad_left,
                            int hout, int wout, uint32_t *out) {
    int used;
    pybnn_bpool_job j = {pybnn_band_pick(isa, &used), x, h, w, words, kh, kw, sh, sw, pad_top,
                         pad_left, hout, wout, (size_t)n * hout * wout, out};
    /* Work (common.h units): ~3 ns per window position plus its words. */
    double work = (double)j.total * (double)kh * kw * (30.0 + words);
    pybnn_par_run(pybnn_par_parts(threads, j.total, work), pybnn_bpool_part, &j);
    return used;
}

#endif /* PYBNN_BPOOL_H */
