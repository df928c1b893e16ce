/* Bit packing: real-valued activations -> packed binary tensors, and back.
 *
 * Encoding (fixed, shared by every binary kernel): a tensor with C channels is stored as
 * rows of words = ceil(C/32) little-endian uint32; channel c is bit (c % 32) of word
 * (c / 32).  Bit 0 means +1, bit 1 means -1.  Padding bits (channels >= C in the last
 * word) are always 0, so XOR/popcount over whole words never counts them.
 *
 * Binarization uses comparisons, never the IEEE sign bit: x = -0.0 gives +1 and NaN gives
 * +1 (bit 0) because every comparison with NaN is false.  With per-channel thresholds,
 * bit = (x < thr[c]) where dir[c] >= 0 and bit = (x > thr[c]) where dir[c] < 0; that is
 * how a folded batch-norm + sign becomes one comparison (dir < 0 for a negative scale).
 *
 * Families (one variant per ISA + selector returning the ISA it ran):
 *   pybnn_pack_float  scalar, sse4, avx2, avx512, neon
 *   pybnn_pack_int8   scalar, sse4, avx2, avx512, neon
 *   pybnn_unpack      scalar, avx2, avx512, neon
 * The AVX-512 variants compare 16 channels into a mask register: one instruction gives 16
 * bits of a word, and masked loads handle the partial last word (no scalar tail).
 * All take C-contiguous rows: x is m x c, packed rows are m x ceil(c/32).
 */
#ifndef PYBNN_BITPACK_H
#define PYBNN_BITPACK_H

#include "pybnn/common.h"

static inline size_t pybnn_words(size_t channels) { return (channels + 31) / 32; }

/* ---------------------------------------------------------------- scalar helpers */

/* One word from n <= 32 floats, plain rule: bit = x < 0. */
static inline uint32_t pybnn_pack_word_f32(const float *x, size_t n) {
    uint32_t w = 0;
    for (size_t c = 0; c < n; c++)
        w |= (uint32_t)(x[c] < 0.0f) << c;
    return w;
}

/* One word from n <= 32 floats with thresholds and directions. */
static inline uint32_t pybnn_pack_word_f32_thr(const float *x, const float *thr,
                                               const int8_t *dir, size_t n) {
    uint32_t w = 0;
    for (size_t c = 0; c < n; c++) {
        int bit = dir[c] >= 0 ? (x[c] < thr[c]) : (x[c] > thr[c]);
        w |= (uint32_t)bit << c;
    }
    return w;
}

static inline uint32_t pybnn_pack_word_i8_thr(const int8_t *q, const int32_t *thr,
                                              const int8_t *dir, size_t n) {
    uint32_t w = 0;
    for (size_t c = 0; c < n; c++) {
        int32_t v = q[c];
        int bit = dir[c] >= 0 ? (v < thr[c]) : (v > thr[c]);
        w |= (uint32_t)bit << c;
    }
    return w;
}

/* Packs one row; `full` words are done by the caller's SIMD code, this finishes the rest
 * (the partial last word, whose padding bits stay 0 because only real channels are set). */
static inline void pybnn_pack_float_row_tail(const float *x, size_t c, const float *thr,
                                             const int8_t *dir, uint32_t *out, size_t full) {
    for (size_t k = full; k * 32 < c; k++) {
        size_t n = PYBNN_MIN((size_t)32, c - k * 32);
        out[k] = thr ? pybnn_pack_word_f32_thr(x + k * 32, thr + k * 32, dir + k * 32, n)
                     : pybnn_pack_word_f32(x + k * 32, n);
    }
}

static inline void pybnn_pack_int8_row_tail(const int8_t *q, size_t c, const int32_t *thr,
                                            const int8_t *dir, uint32_t *out, size_t full) {
    for (size_t k = full; k * 32 < c; k++) {
        size_t n = PYBNN_MIN((size_t)32, c - k * 32);
        out[k] = pybnn_pack_word_i8_thr(q + k * 32, thr + k * 32, dir + k * 32, n);
    }
}

/* ---------------------------------------------------------------- pack_float */

/* x: m x c floats; thr/dir: c entries each, or both NULL for the plain rule;
 * out: m x ceil(c/32) words. */
static void pybnn_pack_float_scalar(const float *x, size_t m, size_t c, const float *thr,
                                    const int8_t *dir, uint32_t *out) {
    size_t words = pybnn_words(c);
    for (size_t i = 0; i < m; i++)
        pybnn_pack_float_row_tail(x + i * c, c, thr, dir, out + i * words, 0);
}

#if PYBNN_X86
/* Sign mask (0x80000000 where dir < 0) for 4 channels: flipping the sign of both x and
 * thr turns "x > thr" into "-x < -thr", so one less-than compare serves both directions
 * (NaN stays NaN and still compares false). */
PYBNN_TARGET_SSE4 static inline __m128 pybnn_dirsign_sse4(const int8_t *dir) {
    int32_t d4;
    memcpy(&d4, dir, 4);
    __m128i d = _mm_cvtepi8_epi32(_mm_cvtsi32_si128(d4));
    return _mm_castsi128_ps(_mm_and_si128(d, _mm_set1_epi32((int32_t)0x80000000u)));
}

PYBNN_TARGET_SSE4 static void pybnn_pack_float_sse4(const float *x, size_t m, size_t c,
                                                    const float *thr, const int8_t *dir,
                                                    uint32_t *out) {
    size_t words = pybnn_words(c), full = c / 32;
    const __m128 zero = _mm_setzero_ps();
    for (size_t i = 0; i < m; i++) {
        const float *xr = x + i * c;
        uint32_t *o = out + i * words;
        for (size_t k = 0; k < full; k++) {
            uint32_t w = 0;
            for (int g = 0; g < 8; g++) {
                size_t ch = k * 32 + (size_t)g * 4;
                __m128 v = _mm_loadu_ps(xr + ch), t = zero;
                if (thr) {
                    __m128 s = pybnn_dirsign_sse4(dir + ch);
                    v = _mm_xor_ps(v, s);
                    t = _mm_xor_ps(_mm_loadu_ps(thr + ch), s);
                }
                w |= (uint32_t)_mm_movemask_ps(_mm_cmplt_ps(v, t)) << (g * 4);
            }
            o[k] = w;
        }
        pybnn_pack_float_row_tail(xr, c, thr, dir, o, full);
    }
}

PYBNN_TARGET_AVX2 static inline __m256 pybnn_dirsign_avx2(const int8_t *dir) {
    __m256i d = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)dir));
    return _mm256_castsi256_ps(_mm256_and_si256(d, _mm256_set1_epi32((int32_t)0x80000000u)));
}

PYBNN_TARGET_AVX2 static void pybnn_pack_float_avx2(const float *x, size_t m, size_t c,
                                                    const float *thr, const int8_t *dir,
                                                    uint32_t *out) {
    size_t words = pybnn_words(c), full = c / 32;
    const __m256 zero = _mm256_setzero_ps();
    for (size_t i = 0; i < m; i++) {
        const float *xr = x + i * c;
        uint32_t *o = out + i * words;
        if (thr) {
            for (size_t k = 0; k < full; k++) {
                uint32_t w = 0;
                for (int g = 0; g < 4; g++) {
                    size_t ch = k * 32 + (size_t)g * 8;
                    __m256 s = pybnn_dirsign_avx2(dir + ch);
                    __m256 v = _mm256_xor_ps(_mm256_loadu_ps(xr + ch), s);
                    __m256 t = _mm256_xor_ps(_mm256_loadu_ps(thr + ch), s);
                    w |= (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(v, t, _CMP_LT_OQ)) << (g * 8);
                }
                o[k] = w;
            }
        } else {
            for (size_t k = 0; k < full; k++) {
                const float *p = xr + k * 32;
                /* Ordered compare: false for NaN; -0.0 < 0 is false.  movemask of x itself
                 * would read the sign bit and get both wrong. */
                uint32_t b0 = (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(p), zero, _CMP_LT_OQ));
                uint32_t b1 = (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(p + 8), zero, _CMP_LT_OQ));
                uint32_t b2 = (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(p + 16), zero, _CMP_LT_OQ));
                uint32_t b3 = (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(p + 24), zero, _CMP_LT_OQ));
                o[k] = b0 | b1 << 8 | b2 << 16 | b3 << 24;
            }
        }
        pybnn_pack_float_row_tail(xr, c, thr, dir, o, full);
    }
}

PYBNN_TARGET_AVX512 static inline __mmask16 pybnn_bp_mask16(size_t j, size_t c) {
    return j >= c ? (__mmask16)0 : c - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (c - j)) - 1);
}

/* Lanes whose dir < 0 (they compare x > thr instead of x < thr). */
PYBNN_TARGET_AVX512 static inline __mmask16 pybnn_dirneg_avx512(const int8_t *dir, __mmask16 k) {
    return _mm512_cmplt_epi32_mask(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(k, dir)), _mm512_setzero_si512());
}

/* 16 channels at ch (the first `valid` lanes) -> 16 bits: x < thr (dir >= 0) or x > thr
 * (dir < 0), or x < 0 without thresholds.  Ordered compares: false for NaN, and -0.0 < 0
 * is false, as the scalar rule. */
PYBNN_TARGET_AVX512 static inline __mmask16 pybnn_pack16_f32(const float *x, const float *thr, const int8_t *dir,
                                                             size_t ch, __mmask16 valid) {
    const __m512 v = _mm512_maskz_loadu_ps(valid, x + ch);
    if (!thr)
        return _mm512_mask_cmp_ps_mask(valid, v, _mm512_setzero_ps(), _CMP_LT_OQ);
    const __m512 t = _mm512_maskz_loadu_ps(valid, thr + ch);
    const __mmask16 neg = pybnn_dirneg_avx512(dir + ch, valid);
    return (__mmask16)(_mm512_mask_cmp_ps_mask((__mmask16)(valid & ~neg), v, t, _CMP_LT_OQ) |
                       _mm512_mask_cmp_ps_mask((__mmask16)(valid & neg), v, t, _CMP_GT_OQ));
}

PYBNN_TARGET_AVX512 static void pybnn_pack_float_avx512(const float *x, size_t m, size_t c,
                                                        const float *thr, const int8_t *dir,
                                                        uint32_t *out) {
    size_t words = pybnn_words(c), full = c / 32;
    for (size_t i = 0; i < m; i++) {
        const float *xr = x + i * c;
        uint32_t *o = out + i * words;
        if (thr) {
            for (size_t k = 0; k < full; k++)
                o[k] = pybnn_pack16_f32(xr, thr, dir, 32 * k, 0xffff) |
                       (uint32_t)pybnn_pack16_f32(xr, thr, dir, 32 * k + 16, 0xffff) << 16;
        } else { /* its own loop: the common case, without the thresholds' loads */
            for (size_t k = 0; k < full; k++)
                o[k] = pybnn_pack16_f32(xr, NULL, NULL, 32 * k, 0xffff) |
                       (uint32_t)pybnn_pack16_f32(xr, NULL, NULL, 32 * k + 16, 0xffff) << 16;
        }
        if (full < words) /* partial last word: masked lanes give 0 bits */
            o[full] = pybnn_pack16_f32(xr, thr, dir, 32 * full, pybnn_bp_mask16(32 * full, c)) |
                      (uint32_t)pybnn_pack16_f32(xr, thr, dir, 32 * full + 16, pybnn_bp_mask16(32 * full + 16, c)) << 16;
    }
}
#endif /* PYBNN_X86 */

#if PYBNN_NEON
/* 32 floats at x -> one word: x < t, or with thresholds the same sign-flip trick as the x86
 * variants (flipping the sign of x and thr where dir < 0 turns x > thr into -x < -thr; NaN
 * stays NaN and compares false).  Ordered compares: -0.0 < 0 is false. */
static inline uint32_t pybnn_pack_word_f32_neon(const float *x, const float *thr, const int8_t *dir) {
    uint32x4_t m[8];
    for (int g = 0; g < 8; g++) {
        float32x4_t v = vld1q_f32(x + 4 * g), t = vdupq_n_f32(0.0f);
        if (thr) {
            const int8x8_t d8 = vld1_s8(dir + 8 * (g / 2)); /* 8 directions, 4 of them for this group */
            const int16x4_t d16 = g % 2 ? vget_high_s16(vmovl_s8(d8)) : vget_low_s16(vmovl_s8(d8));
            const uint32x4_t sign = vandq_u32(vreinterpretq_u32_s32(vmovl_s16(d16)), vdupq_n_u32(0x80000000u));
            v = vreinterpretq_f32_u32(veorq_u32(vreinterpretq_u32_f32(v), sign));
            t = vreinterpretq_f32_u32(veorq_u32(vreinterpretq_u32_f32(vld1q_f32(thr + 4 * g)), sign));
        }
        m[g] = vcltq_f32(v, t);
    }
    return pybnn_neon_mask16(m[0], m[1], m[2], m[3]) | pybnn_neon_mask16(m[4], m[5], m[6], m[7]) << 16;
}

static void pybnn_pack_float_neon(const float *x, size_t m, size_t c, const float *thr,
                                  const int8_t *dir, uint32_t *out) {
    size_t words = pybnn_words(c), full = c / 32;
    for (size_t i = 0; i < m; i++) {
        const float *xr = x + i * c;
        uint32_t *o = out + i * words;
        if (thr) {
            for (size_t k = 0; k < full; k++)
                o[k] = pybnn_pack_word_f32_neon(xr + 32 * k, thr + 32 * k, dir + 32 * k);
        } else {
            for (size_t k = 0; k < full; k++)
                o[k] = pybnn_pack_word_f32_neon(xr + 32 * k, NULL, NULL);
        }
        pybnn_pack_float_row_tail(xr, c, thr, dir, o, full);
    }
}

/* Int8 values widened to int32 against int32 thresholds: both compares, chosen per channel
 * by dir's sign (negating instead would overflow for thr = INT32_MIN). */
static void pybnn_pack_int8_neon(const int8_t *q, size_t m, size_t c, const int32_t *thr,
                                 const int8_t *dir, uint32_t *out) {
    size_t words = pybnn_words(c), full = c / 32;
    for (size_t i = 0; i < m; i++) {
        const int8_t *qr = q + i * c;
        uint32_t *o = out + i * words;
        for (size_t k = 0; k < full; k++) {
            int32x4_t x[8], t[8];
            for (int h = 0; h < 2; h++) {
                const int8x16_t v = vld1q_s8(qr + 32 * k + 16 * h);
                const int16x8_t lo = vmovl_s8(vget_low_s8(v)), hi = vmovl_s8(vget_high_s8(v));
                x[4 * h] = vmovl_s16(vget_low_s16(lo)), x[4 * h + 1] = vmovl_s16(vget_high_s16(lo));
                x[4 * h + 2] = vmovl_s16(vget_low_s16(hi)), x[4 * h + 3] = vmovl_s16(vget_high_s16(hi));
            }
            for (int g = 0; g < 8; g++) t[g] = vld1q_s32(thr + 32 * k + 4 * g);
            o[k] = pybnn_neon_thr_word(x, t, pybnn_neon_dirneg(dir + 32 * k));
        }
        pybnn_pack_int8_row_tail(qr, c, thr, dir, o, full);
    }
}

/* Each channel's bit selects -1.0 or +1.0 (vtst with its bit in the word). */
static void pybnn_unpack_neon(const uint32_t *bits, size_t m, size_t c, float *out) {
    size_t words = pybnn_words(c), full = c / 32;
    static const uint32_t sel0[4] = {1, 2, 4, 8};
    const uint32x4_t sel = vld1q_u32(sel0);
    const float32x4_t one = vdupq_n_f32(1.0f), minus_one = vdupq_n_f32(-1.0f);
    for (size_t i = 0; i < m; i++) {
        const uint32_t *b = bits + i * words;
        float *o = out + i * c;
        for (size_t k = 0; k < full; k++) {
            const uint32_t word = b[k];
            for (int g = 0; g < 8; g++) {
                const uint32x4_t hit = vtstq_u32(vdupq_n_u32(word >> (4 * g)), sel);
                vst1q_f32(o + 32 * k + 4 * g, vbslq_f32(hit, minus_one, one));
            }
        }
        for (size_t ch = full * 32; ch < c; ch++)
            o[ch] = ((b[ch / 32] >> (ch % 32)) & 1u) ? -1.0f : 1.0f;
    }
}
#endif /* PYBNN_NEON */

static int pybnn_pack_float_serial(int isa, const float *x, size_t m, size_t c, const float *thr,
                            const int8_t *dir, uint32_t *out) {
#if PYBNN_NEON
    if (isa >= PYBNN_ISA_NEON) { pybnn_pack_float_neon(x, m, c, thr, dir, out); return PYBNN_ISA_NEON; }
#endif
#if PYBNN_X86
    if (isa >= PYBNN_ISA_AVX512) { pybnn_pack_float_avx512(x, m, c, thr, dir, out); return PYBNN_ISA_AVX512; }
    if (isa >= PYBNN_ISA_AVX2) { pybnn_pack_float_avx2(x, m, c, thr, dir, out); return PYBNN_ISA_AVX2; }
    if (isa >= PYBNN_ISA_SSE4) { pybnn_pack_float_sse4(x, m, c, thr, dir, out); return PYBNN_ISA_SSE4; }
#endif
    pybnn_pack_float_scalar(x, m, c, thr, dir, out);
    return PYBNN_ISA_SCALAR;
}

/* ---------------------------------------------------------------- pack_int8 */

/* q: m x c int8; thr (int32) and dir (int8): c entries each; out: m x ceil(c/32). */
static void pybnn_pack_int8_scalar(const int8_t *q, size_t m, size_t c, const int32_t *thr,
                                   const int8_t *dir, uint32_t *out) {
    size_t words = pybnn_words(c);
    for (size_t i = 0; i < m; i++)
        pybnn_pack_int8_row_tail(q + i * c, c, thr, dir, out + i * words, 0);
}

#if PYBNN_X86
/* Both comparisons are computed and blended on dir's sign: negating instead (as for
 * floats) would overflow for thr = INT32_MIN.  A sign-extended negative int8 has the high
 * bit set in all four bytes, which is what blendv_epi8 looks at. */
PYBNN_TARGET_SSE4 static void pybnn_pack_int8_sse4(const int8_t *q, size_t m, size_t c,
                                                   const int32_t *thr, const int8_t *dir,
                                                   uint32_t *out) {
    size_t words = pybnn_words(c), full = c / 32;
    for (size_t i = 0; i < m; i++) {
        const int8_t *qr = q + i * c;
        uint32_t *o = out + i * words;
        for (size_t k = 0; k < full; k++) {
            uint32_t w = 0;
            for (int g = 0; g < 8; g++) {
                size_t ch = k * 32 + (size_t)g * 4;
                int32_t q4, d4;
                memcpy(&q4, qr + ch, 4);
                memcpy(&d4, dir + ch, 4);
                __m128i v = _mm_cvtepi8_epi32(_mm_cvtsi32_si128(q4));
                __m128i d = _mm_cvtepi8_epi32(_mm_cvtsi32_si128(d4));
                __m128i t = _mm_loadu_si128((const __m128i *)(thr + ch));
                __m128i r = _mm_blendv_epi8(_mm_cmpgt_epi32(t, v), _mm_cmpgt_epi32(v, t), d);
                w |= (uint32_t)_mm_movemask_ps(_mm_castsi128_ps(r)) << (g * 4);
            }
            o[k] = w;
        }
        pybnn_pack_int8_row_tail(qr, c, thr, dir, o, full);
    }
}

PYBNN_TARGET_AVX2 static void pybnn_pack_int8_avx2(const int8_t *q, size_t m, size_t c,
                                                   const int32_t *thr, const int8_t *dir,
                                                   uint32_t *out) {
    size_t words = pybnn_words(c), full = c / 32;
    for (size_t i = 0; i < m; i++) {
        const int8_t *qr = q + i * c;
        uint32_t *o = out + i * words;
        for (size_t k = 0; k < full; k++) {
            uint32_t w = 0;
            for (int g = 0; g < 4; g++) {
                size_t ch = k * 32 + (size_t)g * 8;
                __m256i v = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(qr + ch)));
                __m256i d = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(dir + ch)));
                __m256i t = _mm256_loadu_si256((const __m256i *)(thr + ch));
                __m256i r = _mm256_blendv_epi8(_mm256_cmpgt_epi32(t, v), _mm256_cmpgt_epi32(v, t), d);
                w |= (uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(r)) << (g * 8);
            }
            o[k] = w;
        }
        pybnn_pack_int8_row_tail(qr, c, thr, dir, o, full);
    }
}

PYBNN_TARGET_AVX512 static inline __mmask16 pybnn_pack16_i8(const int8_t *q, const int32_t *thr, const int8_t *dir,
                                                            size_t ch, __mmask16 valid) {
    const __m512i v = _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(valid, q + ch));
    const __m512i t = _mm512_maskz_loadu_epi32(valid, thr + ch);
    const __mmask16 neg = pybnn_dirneg_avx512(dir + ch, valid);
    return (__mmask16)(_mm512_mask_cmplt_epi32_mask((__mmask16)(valid & ~neg), v, t) |
                       _mm512_mask_cmpgt_epi32_mask((__mmask16)(valid & neg), v, t));
}

PYBNN_TARGET_AVX512 static void pybnn_pack_int8_avx512(const int8_t *q, size_t m, size_t c,
                                                       const int32_t *thr, const int8_t *dir,
                                                       uint32_t *out) {
    size_t words = pybnn_words(c), full = c / 32;
    for (size_t i = 0; i < m; i++) {
        const int8_t *qr = q + i * c;
        uint32_t *o = out + i * words;
        for (size_t k = 0; k < full; k++)
            o[k] = pybnn_pack16_i8(qr, thr, dir, 32 * k, 0xffff) |
                   (uint32_t)pybnn_pack16_i8(qr, thr, dir, 32 * k + 16, 0xffff) << 16;
        if (full < words)
            o[full] = pybnn_pack16_i8(qr, thr, dir, 32 * full, pybnn_bp_mask16(32 * full, c)) |
                      (uint32_t)pybnn_pack16_i8(qr, thr, dir, 32 * full + 16, pybnn_bp_mask16(32 * full + 16, c)) << 16;
    }
}
#endif /* PYBNN_X86 */

static int pybnn_pack_int8_serial(int isa, const int8_t *q, size_t m, size_t c, const int32_t *thr,
                           const int8_t *dir, uint32_t *out) {
#if PYBNN_NEON
    if (isa >= PYBNN_ISA_NEON) { pybnn_pack_int8_neon(q, m, c, thr, dir, out); return PYBNN_ISA_NEON; }
#endif
#if PYBNN_X86
    if (isa >= PYBNN_ISA_AVX512) { pybnn_pack_int8_avx512(q, m, c, thr, dir, out); return PYBNN_ISA_AVX512; }
    if (isa >= PYBNN_ISA_AVX2) { pybnn_pack_int8_avx2(q, m, c, thr, dir, out); return PYBNN_ISA_AVX2; }
    if (isa >= PYBNN_ISA_SSE4) { pybnn_pack_int8_sse4(q, m, c, thr, dir, out); return PYBNN_ISA_SSE4; }
#endif
    (void)isa;
    pybnn_pack_int8_scalar(q, m, c, thr, dir, out);
    return PYBNN_ISA_SCALAR;
}

/* ---------------------------------------------------------------- unpack */

/* bits: m x ceil(c/32) words -> out: m x c floats of +1.0 / -1.0 (padding bits ignored). */
static void pybnn_unpack_scalar(const uint32_t *bits, size_t m, size_t c, float *out) {
    size_t words = pybnn_words(c);
    for (size_t i = 0; i < m; i++) {
        const uint32_t *b = bits + i * words;
        float *o = out + i * c;
        for (size_t k = 0; k < words; k++) {
            size_t n = PYBNN_MIN((size_t)32, c - k * 32);
            for (size_t l = 0; l < n; l++) {
                /* The channel's bit becomes the sign of 1.0f: branch-free, vectorizable. */
                uint32_t u = 0x3f800000u | ((b[k] >> l) & 1u) << 31;
                memcpy(o + k * 32 + l, &u, 4);
            }
        }
    }
}

#if PYBNN_X86
PYBNN_TARGET_AVX2 static void pybnn_unpack_avx2(const uint32_t *bits, size_t m, size_t c,
                                                float *out) {
    size_t words = pybnn_words(c), full = c / 32;
    /* Shift channel bit l of each 8-channel group to bit 31 (the float sign), then OR in 1.0. */
    const __m256i shift0 = _mm256_setr_epi32(31, 30, 29, 28, 27, 26, 25, 24);
    const __m256i signbit = _mm256_set1_epi32((int32_t)0x80000000u);
    const __m256i one = _mm256_castps_si256(_mm256_set1_ps(1.0f));
    for (size_t i = 0; i < m; i++) {
        const uint32_t *b = bits + i * words;
        float *o = out + i * c;
        for (size_t k = 0; k < full; k++) {
            __m256i w = _mm256_set1_epi32((int32_t)b[k]);
            for (int g = 0; g < 4; g++) {
                __m256i sh = _mm256_sub_epi32(shift0, _mm256_set1_epi32(g * 8));
                __m256i s = _mm256_and_si256(_mm256_sllv_epi32(w, sh), signbit);
                _mm256_storeu_si256((__m256i *)(o + k * 32 + g * 8), _mm256_or_si256(s, one));
            }
        }
        for (size_t ch = full * 32; ch < c; ch++)
            o[ch] = ((b[ch / 32] >> (ch % 32)) & 1u) ? -1.0f : 1.0f;
    }
}

/* Each half word is a mask choosing -1.0 or +1.0 per lane. */
PYBNN_TARGET_AVX512 static void pybnn_unpack_avx512(const uint32_t *bits, size_t m, size_t c,
                                                    float *out) {
    size_t words = pybnn_words(c);
    const __m512 one = _mm512_set1_ps(1.0f), minus_one = _mm512_set1_ps(-1.0f);
    for (size_t i = 0; i < m; i++) {
        const uint32_t *b = bits + i * words;
        float *o = out + i * c;
        for (size_t j = 0; j < c; j += 16) {
            const __mmask16 neg = (__mmask16)(b[j / 32] >> (j % 32));
            _mm512_mask_storeu_ps(o + j, pybnn_bp_mask16(j, c), _mm512_mask_blend_ps(neg, one, minus_one));
        }
    }
}
#endif

static int pybnn_unpack_serial(int isa, const uint32_t *bits, size_t m, size_t c, float *out) {
#if PYBNN_NEON
    if (isa >= PYBNN_ISA_NEON) { pybnn_unpack_neon(bits, m, c, out); return PYBNN_ISA_NEON; }
#endif
#if PYBNN_X86
    if (isa >= PYBNN_ISA_AVX512) { pybnn_unpack_avx512(bits, m, c, out); return PYBNN_ISA_AVX512; }
    if (isa >= PYBNN_ISA_AVX2) { pybnn_unpack_avx2(bits, m, c, out); return PYBNN_ISA_AVX2; }
#endif
    (void)isa;
    pybnn_unpack_scalar(bits, m, c, out);
    return PYBNN_ISA_SCALAR;
}

/* ---------------------------------------------------------------- drivers
 * The *_serial selectors above run one range of rows; the drivers split the m rows into up
 * to `threads` contiguous ranges (each row is packed independently) and return the ISA. */

enum { PYBNN_BP_FLOAT, PYBNN_BP_INT8, PYBNN_BP_UNPACK };

typedef struct {
    int kind, isa;
    const void *in;
    size_t m, c;
    const void *thr;
    const int8_t *dir;
    void *out;
} pybnn_bp_job;

static int pybnn_bp_rows(const pybnn_bp_job *j, size_t r0, size_t r1) {
    size_t c = j->c, words = pybnn_words(c);
    switch (j->kind) {
    case PYBNN_BP_FLOAT:
        return pybnn_pack_float_serial(j->isa, (const float *)j->in + r0 * c, r1 - r0, c,
                                       (const float *)j->thr, j->dir, (uint32_t *)j->out + r0 * words);
    case PYBNN_BP_INT8:
        return pybnn_pack_int8_serial(j->isa, (const int8_t *)j->in + r0 * c, r1 - r0, c,
                                      (const int32_t *)j->thr, j->dir, (uint32_t *)j->out + r0 * words);
    default:
        return pybnn_unpack_serial(j->isa, (const uint32_t *)j->in + r0 * words, r1 - r0, c,
                                   (float *)j->out + r0 * c);
    }
}

static void pybnn_bp_part(void *ctx, int part, int nparts) {
    const pybnn_bp_job *j = (const pybnn_bp_job *)ctx;
    size_t r0, r1;
    pybnn_par_range(j->m, part, nparts, &r0, &r1);
    if (r0 < r1)
        pybnn_bp_rows(j, r0, r1);
}

static int pybnn_bp_run(int threads, const pybnn_bp_job *j) {
    /* Work (common.h units): packing streams its input once; see PYBNN_PAR_STREAMING
     * (QuickNet's 56x56x64 Sign after a 2-thread Add: 20 us on one thread, 8 us on two). */
    int nparts = pybnn_par_parts(threads, j->m, PYBNN_PAR_STREAMING * (double)j->m * (double)j->c);
    if (nparts > 1)
        pybnn_par_run(nparts, pybnn_bp_part, (void *)j);
    /* The serial call also tells which variant runs (with 0 rows when already done). */
    return pybnn_bp_rows(j, nparts > 1 ? j->m : 0, j->m);
}

static int pybnn_pack_float(int isa, int threads, const float *x, size_t m, size_t c,
                            const float *thr, const int8_t *dir, uint32_t *out) {
    pybnn_bp_job j = {PYBNN_BP_FLOAT, isa, x, m, c, thr, dir, out};
    return pybnn_bp_run(threads, &j);
}

static int pybnn_pack_int8(int isa, int threads, const int8_t *q, size_t m, size_t c,
                           const int32_t *thr, const int8_t *dir, uint32_t *out) {
    pybnn_bp_job j = {PYBNN_BP_INT8, isa, q, m, c, thr, dir, out};
    return pybnn_bp_run(threads, &j);
}

static int pybnn_unpack(int isa, int threads, const uint32_t *bits, size_t m, size_t c, float *out) {
    pybnn_bp_job j = {PYBNN_BP_UNPACK, isa, bits, m, c, NULL, NULL, out};
    return pybnn_bp_run(threads, &j);
}

/* ---------------------------------------------------------------- channel ranges
 *
 * pybnn_copy_bits: for each of m rows, channels [c0, c0 + n) of src (src_words words per row)
 * go to channels [d0, d0 + n) of dst (dst_words per row); dst's other bits are kept.  This
 * slices and joins packed tensors along channels at any bit offset (grouped binary
 * convolutions, concatenation).  The caller checks c0 + n <= 32 * src_words and
 * d0 + n <= 32 * dst_words. */
static inline uint32_t pybnn_bits_at(const uint32_t *row, size_t words, size_t bit) {
    size_t w = bit / 32, s = bit % 32;
    uint32_t v = row[w] >> s;
    if (s && w + 1 < words)
        v |= row[w + 1] << (32 - s);
    return v;
}

static void pybnn_copy_bits(const uint32_t *src, size_t m, size_t src_words, size_t c0, uint32_t *dst,
                            size_t dst_words, size_t d0, size_t n) {
    for (size_t r = 0; r < m; r++) {
        const uint32_t *s = src + r * src_words;
        uint32_t *d = dst + r * dst_words;
        for (size_t t = 0; t < n;) {
            size_t pos = d0 + t, shift = pos % 32, len = PYBNN_MIN(n - t, 32 - shift);
            uint32_t mask = len == 32 ? 0xFFFFFFFFu : ((1u << len) - 1u);
            uint32_t v = pybnn_bits_at(s, src_words, c0 + t) & mask;
            d[pos / 32] = (d[pos / 32] & ~(mask << shift)) | (v << shift);
            t += len;
        }
    }
}

#endif /* PYBNN_BITPACK_H */
