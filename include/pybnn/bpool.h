/* Binary max pooling on bit-packed NHWC tensors.
 *
 * max over +-1 values is +1 as soon as one value is +1 (bit 0), so the output bit is the
 * AND of the window's bits.  Window positions outside the input are skipped (every window
 * must hold at least one input pixel: the Cython layer checks it).  Padding bits stay 0
 * because they are 0 in every input word.
 *
 * Family pybnn_band (dst &= src over `words` words): scalar, avx2; the window walk
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
#endif

static pybnn_band_fn pybnn_band_pick(int isa, int *used) {
#if PYBNN_X86
    if (isa >= PYBNN_ISA_AVX2) { *used = PYBNN_ISA_AVX2; return pybnn_band_avx2; }
#endif
    (void)isa;
    *used = PYBNN_ISA_SCALAR;
    return pybnn_band_scalar;
}

/* x: (n, h, w, words) -> out: (n, hout, wout, words). */
static int pybnn_bmaxpool2d(int isa, const uint32_t *x, int n, int h, int w, int words, int kh,
                            int kw, int sh, int sw, int pad_top, int pad_left, int hout, int wout,
                            uint32_t *out) {
    int used;
    pybnn_band_fn band = pybnn_band_pick(isa, &used);
    size_t wd = (size_t)words;
    for (int b = 0; b < n; b++) {
        const uint32_t *xb = x + (size_t)b * h * w * wd;
        for (int oh = 0; oh < hout; oh++) {
            long ih0 = (long)oh * sh - pad_top;
            long i0 = PYBNN_MAX(ih0, 0L), i1 = PYBNN_MIN(ih0 + kh, (long)h);
            for (int ow = 0; ow < wout; ow++) {
                long iw0 = (long)ow * sw - pad_left;
                long j0 = PYBNN_MAX(iw0, 0L), j1 = PYBNN_MIN(iw0 + kw, (long)w);
                uint32_t *dst = out + (((size_t)b * hout + oh) * wout + ow) * wd;
                /* Start from the first in-range pixel rather than all-ones, so padding
                 * bits are copied zeros. */
                memcpy(dst, xb + ((size_t)i0 * w + j0) * wd, wd * sizeof(uint32_t));
                for (long i = i0; i < i1; i++)
                    for (long j = (i == i0 ? j0 + 1 : j0); j < j1; j++)
                        band(dst, xb + ((size_t)i * w + j) * wd, wd);
            }
        }
    }
    return used;
}

#endif /* PYBNN_BPOOL_H */
