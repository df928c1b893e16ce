/* Output transforms: turn GEMM accumulators (M rows x C channels, row-major) into what the
 * next layer consumes, with per-channel parameters.  Standalone (the pybnn_to_* drivers, on
 * whole contiguous matrices) or fused: a kernel fills a pybnn_ot with the parameters and
 * calls pybnn_ot_apply on each block of rows it has just computed, while the block is still
 * in cache (pybnn_bconv2d does); both run the same variants, so the results are identical.
 *
 *   to_float_i32 / to_float_f32:  out = min(max(float(acc [+ ibias[c]]) * mult[c] + bias[c], lo), hi)
 *   to_int8:   out = clamp(rint(float(acc + bias[c]) * mult[c]) + zp, qmin, qmax)
 *   to_bits:   bit (= -1) where dir[c] >= 0 ? acc < thr[c] : acc > thr[c]; rows of
 *              ceil(C/32) little-endian uint32 words, value c in bit c%32 of word c/32,
 *              padding bits 0
 *
 * Results are bit-identical to NumPy's
 *   np.clip(acc.astype(np.float32) * mult + bias, lo, hi)
 *   np.clip(np.rint((acc + bias).astype(np.float32) * mult) + zp, qmin, qmax)
 * because every variant does the same float32 operations in the same order: multiply, then
 * add (the build uses -ffp-contract=off, so no FMA), then NumPy's clip, which keeps x unless
 * x < lo or x > hi (so NaN passes and -0.0 survives lo = 0.0).  vmaxps(lo, x) returns lo only
 * when lo > x and vminps(hi, y) returns hi only when hi < y: exactly that rule.
 */
#ifndef PYBNN_OUTPUT_TRANSFORM_H
#define PYBNN_OUTPUT_TRANSFORM_H

#include "pybnn/common.h"

/* Float value of the requantized product is clamped to +-PYBNN_OT_REQ_LIMIT before rounding to
 * int: the final clamp to [qmin, qmax] (within +-128) makes any larger magnitude saturate
 * the same way, and the bound keeps the float -> int32 conversion in range. */
#define PYBNN_OT_REQ_LIMIT 65536.0f

static inline float pybnn_ot_clip_f32(float x, float lo, float hi) {
    x = lo > x ? lo : x;
    return hi < x ? hi : x;
}

/* acc + bias wraps like NumPy's int32 addition (unsigned add: no undefined overflow). */
static inline int32_t pybnn_ot_add_wrap(int32_t a, int32_t b) { return (int32_t)((uint32_t)a + (uint32_t)b); }

static inline int8_t pybnn_ot_requant(int32_t acc, int32_t bias, float mult, int zp, int qmin, int qmax) {
    float x = (float)pybnn_ot_add_wrap(acc, bias) * mult;
    if (!(x >= -PYBNN_OT_REQ_LIMIT)) x = -PYBNN_OT_REQ_LIMIT; /* NaN goes to qmin, as in the SIMD code */
    if (x > PYBNN_OT_REQ_LIMIT) x = PYBNN_OT_REQ_LIMIT;
    /* Round half to even without libm: adding 1.5 * 2^23 leaves no fraction bits, so the
     * default rounding mode rounds x there (exact for |x| < 2^22). */
    const float r = (x + 12582912.0f) - 12582912.0f;
    const int q = (int)r + zp;
    return (int8_t)(q < qmin ? qmin : q > qmax ? qmax : q);
}

static inline int pybnn_ot_bit(int32_t acc, int32_t thr, int8_t dir) {
    return dir >= 0 ? acc < thr : acc > thr;
}

/* ================================================================ scalar
 * Every variant reads m rows of c channels from acc (row stride lda elements) and writes
 * rows of out (row stride ldo elements of its type; for bits, uint32 words); the
 * per-channel arrays hold c entries.  Callers transform a block of channels by offsetting
 * acc, out and the per-channel arrays (for bits, by whole 32-channel words). */

/* ibias may be NULL (nothing added). */
static void pybnn_to_float_i32_scalar(const int32_t *acc, size_t lda, size_t m, size_t c,
                                      const int32_t *ibias, const float *mult, const float *bias,
                                      float lo, float hi, float *out, size_t ldo) {
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < c; j++) {
            const int32_t a = ibias ? pybnn_ot_add_wrap(acc[i * lda + j], ibias[j]) : acc[i * lda + j];
            out[i * ldo + j] = pybnn_ot_clip_f32((float)a * mult[j] + bias[j], lo, hi);
        }
}

/* `out` may be `acc` (in place, same strides): each element is read before it is written. */
static void pybnn_to_float_f32_scalar(const float *acc, size_t lda, size_t m, size_t c, const float *mult,
                                      const float *bias, float lo, float hi, float *out, size_t ldo) {
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < c; j++)
            out[i * ldo + j] = pybnn_ot_clip_f32(acc[i * lda + j] * mult[j] + bias[j], lo, hi);
}

static void pybnn_to_int8_scalar(const int32_t *acc, size_t lda, size_t m, size_t c, const int32_t *bias,
                                 const float *mult, int zp, int qmin, int qmax, int8_t *out, size_t ldo) {
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < c; j++)
            out[i * ldo + j] = pybnn_ot_requant(acc[i * lda + j], bias[j], mult[j], zp, qmin, qmax);
}

static void pybnn_to_bits_scalar(const int32_t *acc, size_t lda, size_t m, size_t c, const int32_t *thr,
                                 const int8_t *dir, uint32_t *out, size_t ldo) {
    const size_t cw = (c + 31) / 32;
    for (size_t i = 0; i < m; i++) {
        for (size_t w = 0; w < cw; w++) {
            uint32_t word = 0;
            for (size_t b = 0; b < 32 && 32 * w + b < c; b++) {
                const size_t j = 32 * w + b;
                word |= (uint32_t)pybnn_ot_bit(acc[i * lda + j], thr[j], dir[j]) << b;
            }
            out[i * ldo + w] = word;
        }
    }
}

#if PYBNN_X86
/* ================================================================ AVX2
 * Channels go 8 at a time; the last C % 8 of each row reuse the scalar code, which does the
 * same operations, so results do not depend on where a channel falls. */

PYBNN_TARGET_AVX2 static void pybnn_to_float_i32_avx2(const int32_t *acc, size_t lda, size_t m, size_t c,
                                                      const int32_t *ibias, const float *mult, const float *bias,
                                                      float lo, float hi, float *out, size_t ldo) {
    const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
    for (size_t i = 0; i < m; i++) {
        const int32_t *row = acc + i * lda;
        float *dst = out + i * ldo;
        size_t j = 0;
        for (; j + 8 <= c; j += 8) {
            __m256i a = _mm256_loadu_si256((const __m256i *)(row + j));
            if (ibias)
                a = _mm256_add_epi32(a, _mm256_loadu_si256((const __m256i *)(ibias + j)));
            const __m256 x = _mm256_cvtepi32_ps(a);
            const __m256 y = _mm256_add_ps(_mm256_mul_ps(x, _mm256_loadu_ps(mult + j)), _mm256_loadu_ps(bias + j));
            _mm256_storeu_ps(dst + j, _mm256_min_ps(vhi, _mm256_max_ps(vlo, y)));
        }
        if (j < c)
            pybnn_to_float_i32_scalar(row + j, lda, 1, c - j, ibias ? ibias + j : NULL, mult + j, bias + j,
                                      lo, hi, dst + j, ldo);
    }
}

PYBNN_TARGET_AVX2 static void pybnn_to_float_f32_avx2(const float *acc, size_t lda, size_t m, size_t c,
                                                      const float *mult, const float *bias, float lo, float hi,
                                                      float *out, size_t ldo) {
    const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
    for (size_t i = 0; i < m; i++) {
        const float *row = acc + i * lda;
        float *dst = out + i * ldo;
        size_t j = 0;
        for (; j + 8 <= c; j += 8) {
            const __m256 x = _mm256_loadu_ps(row + j);
            const __m256 y = _mm256_add_ps(_mm256_mul_ps(x, _mm256_loadu_ps(mult + j)), _mm256_loadu_ps(bias + j));
            _mm256_storeu_ps(dst + j, _mm256_min_ps(vhi, _mm256_max_ps(vlo, y)));
        }
        for (; j < c; j++) dst[j] = pybnn_ot_clip_f32(row[j] * mult[j] + bias[j], lo, hi);
    }
}

PYBNN_TARGET_AVX2 static void pybnn_to_int8_avx2(const int32_t *acc, size_t lda, size_t m, size_t c,
                                                 const int32_t *bias, const float *mult, int zp, int qmin,
                                                 int qmax, int8_t *out, size_t ldo) {
    const __m256 lim_lo = _mm256_set1_ps(-PYBNN_OT_REQ_LIMIT), lim_hi = _mm256_set1_ps(PYBNN_OT_REQ_LIMIT);
    const __m256i vzp = _mm256_set1_epi32(zp), vqmin = _mm256_set1_epi32(qmin), vqmax = _mm256_set1_epi32(qmax);
    for (size_t i = 0; i < m; i++) {
        const int32_t *row = acc + i * lda;
        int8_t *dst = out + i * ldo;
        size_t j = 0;
        for (; j + 8 <= c; j += 8) {
            const __m256i s = _mm256_add_epi32(_mm256_loadu_si256((const __m256i *)(row + j)),
                                               _mm256_loadu_si256((const __m256i *)(bias + j)));
            __m256 x = _mm256_mul_ps(_mm256_cvtepi32_ps(s), _mm256_loadu_ps(mult + j));
            /* max(x, lo) returns lo for NaN (second operand), like the scalar code. */
            x = _mm256_min_ps(_mm256_max_ps(x, lim_lo), lim_hi);
            __m256i q = _mm256_add_epi32(_mm256_cvtps_epi32(x), vzp); /* vcvtps2dq: half to even */
            q = _mm256_min_epi32(_mm256_max_epi32(q, vqmin), vqmax);
            /* Already within int8, so the saturating packs just narrow. */
            const __m128i q16 = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
            _mm_storel_epi64((__m128i *)(dst + j), _mm_packs_epi16(q16, q16));
        }
        for (; j < c; j++) dst[j] = pybnn_ot_requant(row[j], bias[j], mult[j], zp, qmin, qmax);
    }
}

/* One output word (32 channels) at a time, its thresholds and directions loaded once for
 * all rows: per 8 channels and row, two compares and two movemasks. */
PYBNN_TARGET_AVX2 static void pybnn_to_bits_avx2(const int32_t *acc, size_t lda, size_t m, size_t c,
                                                 const int32_t *thr, const int8_t *dir, uint32_t *out,
                                                 size_t ldo) {
    const size_t cw = (c + 31) / 32;
    for (size_t w = 0; w < cw; w++) {
        const size_t j0 = 32 * w, groups = PYBNN_MIN((size_t)32, c - j0) / 8, rest = j0 + 8 * groups;
        __m256i t[4];
        uint32_t neg = 0; /* bit per channel: dir < 0, compare acc > thr */
        for (size_t g = 0; g < groups; g++) {
            t[g] = _mm256_loadu_si256((const __m256i *)(thr + j0 + 8 * g));
            const __m256i d = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(dir + j0 + 8 * g)));
            neg |= (uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(d)) << (8 * g);
        }
        for (size_t i = 0; i < m; i++) {
            const int32_t *row = acc + i * lda;
            uint32_t below = 0, above = 0;
            for (size_t g = 0; g < groups; g++) {
                const __m256i x = _mm256_loadu_si256((const __m256i *)(row + j0 + 8 * g));
                below |= (uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(t[g], x))) << (8 * g);
                above |= (uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(x, t[g]))) << (8 * g);
            }
            uint32_t word = (below & ~neg) | (above & neg);
            for (size_t j = rest; j < PYBNN_MIN(j0 + 32, c); j++)
                word |= (uint32_t)pybnn_ot_bit(row[j], thr[j], dir[j]) << (j - j0);
            out[i * ldo + w] = word;
        }
    }
}

/* ================================================================ AVX-512
 * Bits: 16 channels per compare into a mask register (the last ones through masked
 * loads), channel groups outside and rows inside so each group's thresholds stay in
 * registers over a block of rows.  This is what fused callers run (pybnn_ot_apply at level
 * PYBNN_OT_AVX512) on blocks still in L1; the standalone drivers, which stream whole arrays
 * through memory, stop at AVX2.
 * The float and int8 transforms stay on AVX2 at this level: inside the binary conv their
 * 512-bit float operations (the only heavy AVX-512 instructions there) cost 30-50 us per
 * call on the daBNN shapes, the core apparently slowing down around them, against 5-10 us
 * for the same work in 256-bit registers.  The int8 GEMM convolutions (gemmconv.h) do run
 * them at 512 bits (level PYBNN_OT_AVX512_ALL, below): there vpdpbusd already keeps the
 * 512-bit units busy, and the 512-bit requantize measured 3.5% faster on 3x3_64. */

PYBNN_TARGET_AVX512 static inline __mmask16 pybnn_ot_mask16(size_t j, size_t c) {
    return j >= c ? (__mmask16)0 : c - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (c - j)) - 1);
}

/* Each group of 16 channels is one little-endian half of an output word, stored as a
 * uint16; channels past c give 0 bits, and the groups run to the end of the last word
 * so its padding bits are written as 0. */
PYBNN_TARGET_AVX512 static void pybnn_to_bits_avx512(const int32_t *acc, size_t lda, size_t m, size_t c,
                                                     const int32_t *thr, const int8_t *dir, uint32_t *out,
                                                     size_t ldo) {
    uint16_t *halves = (uint16_t *)out;
    for (size_t j = 0; j < (c + 31) / 32 * 32; j += 16) {
        const __mmask16 k = pybnn_ot_mask16(j, c);
        const __m512i t = _mm512_maskz_loadu_epi32(k, thr + j);
        const __mmask16 neg = _mm512_cmplt_epi32_mask(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(k, dir + j)),
                                                      _mm512_setzero_si512());
        /* dir < 0 lanes take acc > thr, the others acc < thr */
        const __mmask16 below = (__mmask16)(k & ~neg), above = (__mmask16)(k & neg);
        const int32_t *row = acc + j;
        for (size_t i = 0; i < m; i++, row += lda) {
            const __m512i x = _mm512_maskz_loadu_epi32(k, row);
            halves[i * 2 * ldo + j / 16] =
                (uint16_t)(_mm512_mask_cmplt_epi32_mask(below, x, t) | _mm512_mask_cmpgt_epi32_mask(above, x, t));
        }
    }
}
/* The int8 and float transforms at 512 bits (level PYBNN_OT_AVX512_ALL, see above): the
 * same float operations in the same order as the other variants. */

/* clamp(rint(x) + zp, qmin, qmax) = rint(clamp(x, qmin - zp, qmax - zp)) + zp: rint is
 * monotonic and keeps the integers qmin - zp and qmax - zp, so one clamp in float replaces
 * both of pybnn_ot_requant's (and NaN, for which vmaxps returns its second operand, gives
 * qmin as there). */
PYBNN_TARGET_AVX512 static void pybnn_to_int8_avx512(const int32_t *acc, size_t lda, size_t m, size_t c,
                                                     const int32_t *bias, const float *mult, int zp, int qmin,
                                                     int qmax, int8_t *out, size_t ldo) {
    const __m512 lo = _mm512_set1_ps((float)(qmin - zp)), hi = _mm512_set1_ps((float)(qmax - zp));
    const __m512i vzp = _mm512_set1_epi32(zp);
    for (size_t j = 0; j < c; j += 16) {
        const __mmask16 k = pybnn_ot_mask16(j, c);
        const __m512i b = _mm512_maskz_loadu_epi32(k, bias + j);
        const __m512 mu = _mm512_maskz_loadu_ps(k, mult + j);
        const int32_t *row = acc + j;
        int8_t *dst = out + j;
        for (size_t i = 0; i < m; i++, row += lda, dst += ldo) {
            __m512 x = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_maskz_loadu_epi32(k, row), b)), mu);
            x = _mm512_min_ps(_mm512_max_ps(x, lo), hi);
            _mm512_mask_cvtepi32_storeu_epi8(dst, k, _mm512_add_epi32(_mm512_cvtps_epi32(x), vzp));
        }
    }
}

PYBNN_TARGET_AVX512 static void pybnn_to_float_i32_avx512(const int32_t *acc, size_t lda, size_t m, size_t c,
                                                          const int32_t *ibias, const float *mult,
                                                          const float *bias, float lo, float hi, float *out,
                                                          size_t ldo) {
    const __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
    for (size_t j = 0; j < c; j += 16) {
        const __mmask16 k = pybnn_ot_mask16(j, c);
        const __m512i ib = ibias ? _mm512_maskz_loadu_epi32(k, ibias + j) : _mm512_setzero_si512();
        const __m512 mu = _mm512_maskz_loadu_ps(k, mult + j), bi = _mm512_maskz_loadu_ps(k, bias + j);
        const int32_t *row = acc + j;
        float *dst = out + j;
        for (size_t i = 0; i < m; i++, row += lda, dst += ldo) {
            const __m512 x = _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_maskz_loadu_epi32(k, row), ib));
            const __m512 y = _mm512_add_ps(_mm512_mul_ps(x, mu), bi);
            _mm512_mask_storeu_ps(dst, k, _mm512_min_ps(vhi, _mm512_max_ps(vlo, y)));
        }
    }
}
#endif /* PYBNN_X86 */

#if PYBNN_NEON
/* ================================================================ NEON
 * Channels go 4 (float) or 8 (int8) at a time, the rest through the scalar code, which does
 * the same operations.  The clamps compare and select (vbsl): FMAX/FMIN would turn a NaN
 * into a bound only sometimes and order -0.0 below +0.0, NumPy's clip does neither.
 * The float transforms are aarch64 only: armv7's NEON flushes denormals to zero, NumPy on
 * the same CPU (VFP) does not, so armv7 keeps the scalar code for them.  int8 and bits are
 * exact there too: a requantized product is rounded to an integer (a denormal would round
 * to 0 either way) and thresholds are integer compares. */

#if defined(__aarch64__)
#define PYBNN_OT_NEON_FLOAT 1

static inline float32x4_t pybnn_ot_clip_neon(float32x4_t y, float32x4_t lo, float32x4_t hi) {
    y = vbslq_f32(vcgtq_f32(lo, y), lo, y);
    return vbslq_f32(vcltq_f32(hi, y), hi, y);
}

static void pybnn_to_float_i32_neon(const int32_t *acc, size_t lda, size_t m, size_t c, const int32_t *ibias,
                                    const float *mult, const float *bias, float lo, float hi, float *out,
                                    size_t ldo) {
    const float32x4_t vlo = vdupq_n_f32(lo), vhi = vdupq_n_f32(hi);
    for (size_t i = 0; i < m; i++) {
        const int32_t *row = acc + i * lda;
        float *dst = out + i * ldo;
        size_t j = 0;
        for (; j + 4 <= c; j += 4) {
            int32x4_t a = vld1q_s32(row + j);
            if (ibias)
                a = vaddq_s32(a, vld1q_s32(ibias + j)); /* wraps */
            const float32x4_t y = vaddq_f32(vmulq_f32(vcvtq_f32_s32(a), vld1q_f32(mult + j)), vld1q_f32(bias + j));
            vst1q_f32(dst + j, pybnn_ot_clip_neon(y, vlo, vhi));
        }
        if (j < c)
            pybnn_to_float_i32_scalar(row + j, lda, 1, c - j, ibias ? ibias + j : NULL, mult + j, bias + j,
                                      lo, hi, dst + j, ldo);
    }
}

static void pybnn_to_float_f32_neon(const float *acc, size_t lda, size_t m, size_t c, const float *mult,
                                    const float *bias, float lo, float hi, float *out, size_t ldo) {
    const float32x4_t vlo = vdupq_n_f32(lo), vhi = vdupq_n_f32(hi);
    for (size_t i = 0; i < m; i++) {
        const float *row = acc + i * lda;
        float *dst = out + i * ldo;
        size_t j = 0;
        for (; j + 4 <= c; j += 4) {
            const float32x4_t y = vaddq_f32(vmulq_f32(vld1q_f32(row + j), vld1q_f32(mult + j)), vld1q_f32(bias + j));
            vst1q_f32(dst + j, pybnn_ot_clip_neon(y, vlo, vhi));
        }
        for (; j < c; j++) dst[j] = pybnn_ot_clip_f32(row[j] * mult[j] + bias[j], lo, hi);
    }
}
#endif

/* 4 channels: clamp(rint(float(acc + bias) * mult) + zp, qmin, qmax) as int32, exactly as
 * pybnn_ot_requant (NaN to -limit first, then round half to even by adding 1.5 * 2^23). */
static inline int32x4_t pybnn_ot_requant_neon(int32x4_t s, float32x4_t mult, int32x4_t zp, int32x4_t qmin,
                                              int32x4_t qmax) {
    const float32x4_t lim_lo = vdupq_n_f32(-PYBNN_OT_REQ_LIMIT), lim_hi = vdupq_n_f32(PYBNN_OT_REQ_LIMIT);
    const float32x4_t magic = vdupq_n_f32(12582912.0f);
    float32x4_t x = vmulq_f32(vcvtq_f32_s32(s), mult);
    x = vbslq_f32(vcgeq_f32(x, lim_lo), x, lim_lo); /* false for NaN */
    x = vbslq_f32(vcgtq_f32(x, lim_hi), lim_hi, x);
    const int32x4_t q = vaddq_s32(vcvtq_s32_f32(vsubq_f32(vaddq_f32(x, magic), magic)), zp);
    return vminq_s32(vmaxq_s32(q, qmin), qmax);
}

static void pybnn_to_int8_neon(const int32_t *acc, size_t lda, size_t m, size_t c, const int32_t *bias,
                               const float *mult, int zp, int qmin, int qmax, int8_t *out, size_t ldo) {
    const int32x4_t vzp = vdupq_n_s32(zp), vqmin = vdupq_n_s32(qmin), vqmax = vdupq_n_s32(qmax);
    for (size_t i = 0; i < m; i++) {
        const int32_t *row = acc + i * lda;
        int8_t *dst = out + i * ldo;
        size_t j = 0;
        for (; j + 8 <= c; j += 8) {
            const int32x4_t q0 = pybnn_ot_requant_neon(vaddq_s32(vld1q_s32(row + j), vld1q_s32(bias + j)),
                                                       vld1q_f32(mult + j), vzp, vqmin, vqmax);
            const int32x4_t q1 = pybnn_ot_requant_neon(vaddq_s32(vld1q_s32(row + j + 4), vld1q_s32(bias + j + 4)),
                                                       vld1q_f32(mult + j + 4), vzp, vqmin, vqmax);
            /* already within int8: the narrowing moves only narrow */
            vst1_s8(dst + j, vmovn_s16(vcombine_s16(vmovn_s32(q0), vmovn_s32(q1))));
        }
        for (; j < c; j++) dst[j] = pybnn_ot_requant(row[j], bias[j], mult[j], zp, qmin, qmax);
    }
}

/* One output word (32 channels) at a time, its thresholds and directions loaded once for all
 * rows; a partial last word through the scalar code. */
static void pybnn_to_bits_neon(const int32_t *acc, size_t lda, size_t m, size_t c, const int32_t *thr,
                               const int8_t *dir, uint32_t *out, size_t ldo) {
    const size_t full = c / 32;
    for (size_t w = 0; w < full; w++) {
        int32x4_t t[8], x[8];
        for (int g = 0; g < 8; g++) t[g] = vld1q_s32(thr + 32 * w + 4 * g);
        const uint32_t neg = pybnn_neon_dirneg(dir + 32 * w);
        for (size_t i = 0; i < m; i++) {
            for (int g = 0; g < 8; g++) x[g] = vld1q_s32(acc + i * lda + 32 * w + 4 * g);
            out[i * ldo + w] = pybnn_neon_thr_word(x, t, neg);
        }
    }
    if (full * 32 < c)
        pybnn_to_bits_scalar(acc + full * 32, lda, m, c - full * 32, thr + full * 32, dir + full * 32, out + full, ldo);
}
#endif /* PYBNN_NEON */
#ifndef PYBNN_OT_NEON_FLOAT
#define PYBNN_OT_NEON_FLOAT 0
#endif

/* ================================================================ fused use
 * The parameters of one transform of int32 accumulators, for kernels that apply it to each
 * block of rows while the block is still in cache (pybnn_bconv2d).  Per-channel arrays are
 * indexed by absolute output channel. */

enum { PYBNN_OT_FLOAT_I32, PYBNN_OT_FLOAT_F32, PYBNN_OT_INT8, PYBNN_OT_BITS };

typedef struct {
    int kind;                 /* PYBNN_OT_FLOAT_I32 / _F32 (float32 out), PYBNN_OT_INT8, PYBNN_OT_BITS */
    const float *mult, *bias; /* float: y = clip(float32(acc [+ ibias]) * mult + bias, lo, hi) */
    const int32_t *ibias;     /* float: optional (NULL); int8: the int32 bias, required */
    float lo, hi;
    int zp, qmin, qmax;       /* int8: clamp(rint(float32(acc + ibias) * mult) + zp, qmin, qmax) */
    const int32_t *thr;       /* bits: -1 where dir >= 0 ? acc < thr : acc > thr */
    const int8_t *dir;
} pybnn_ot;

/* Variant levels of pybnn_ot_apply (PYBNN_OT_AVX512_ALL: every transform at 512 bits, for
 * callers on the AVX-512 path whose own kernel runs heavy 512-bit instructions). */
enum { PYBNN_OT_SCALAR, PYBNN_OT_AVX2, PYBNN_OT_AVX512, PYBNN_OT_AVX512_ALL, PYBNN_OT_NEON };

/* The level pybnn_ot_apply runs for instruction set `isa` (walking down as selectors do). */
static inline int pybnn_ot_level(int isa) {
#if PYBNN_NEON
    if (isa >= PYBNN_ISA_NEON)
        return PYBNN_OT_NEON;
#endif
#if PYBNN_X86
    if (isa >= PYBNN_ISA_AVX512 && pybnn_isa_supported(PYBNN_ISA_AVX512))
        return PYBNN_OT_AVX512;
    if (isa >= PYBNN_ISA_AVX2 && pybnn_isa_supported(PYBNN_ISA_AVX2))
        return PYBNN_OT_AVX2;
#endif
    return PYBNN_OT_SCALAR;
}

/* Bytes of an output element: float 4, int8 1, bits one uint32 word per 32 channels. */
static inline size_t pybnn_ot_esize(const pybnn_ot *t) { return t->kind == PYBNN_OT_INT8 ? 1 : 4; }

/* Output row stride, in elements of the output type, of a transform to c channels. */
static inline size_t pybnn_ot_ldo(const pybnn_ot *t, size_t c) {
    return t->kind == PYBNN_OT_BITS ? (c + 31) / 32 : c;
}

/* Transforms m rows of channels c0 .. c1-1 (acc: row stride lda, first element = channel
 * c0; float accumulators for PYBNN_OT_FLOAT_F32, which may transform in place) into output
 * rows at `out` (row stride ldo; channel j lands at element j, or bit j%32 of word j/32 for
 * bits, whose c0 must be a multiple of 32).  level: PYBNN_OT_SCALAR, PYBNN_OT_AVX2,
 * PYBNN_OT_AVX512 or PYBNN_OT_NEON (pybnn_ot_level), or PYBNN_OT_AVX512_ALL (see
 * pybnn_to_int8_avx512). */
static void pybnn_ot_apply(const pybnn_ot *t, int level, const void *accv, size_t lda, size_t m,
                           size_t c0, size_t c1, void *out, size_t ldo) {
    const size_t c = c1 - c0;
    const int32_t *acc = (const int32_t *)accv;
    (void)level;
    switch (t->kind) {
    case PYBNN_OT_FLOAT_F32: {
        float *o = (float *)out + c0;
#if PYBNN_OT_NEON_FLOAT
        if (level == PYBNN_OT_NEON) { pybnn_to_float_f32_neon((const float *)accv, lda, m, c, t->mult + c0, t->bias + c0, t->lo, t->hi, o, ldo); break; }
#endif
#if PYBNN_X86
        if (level >= PYBNN_OT_AVX2) { pybnn_to_float_f32_avx2((const float *)accv, lda, m, c, t->mult + c0, t->bias + c0, t->lo, t->hi, o, ldo); break; }
#endif
        pybnn_to_float_f32_scalar((const float *)accv, lda, m, c, t->mult + c0, t->bias + c0, t->lo, t->hi, o, ldo);
        break;
    }
    case PYBNN_OT_FLOAT_I32: {
        const int32_t *ib = t->ibias ? t->ibias + c0 : NULL;
        float *o = (float *)out + c0;
#if PYBNN_OT_NEON_FLOAT
        if (level == PYBNN_OT_NEON) { pybnn_to_float_i32_neon(acc, lda, m, c, ib, t->mult + c0, t->bias + c0, t->lo, t->hi, o, ldo); break; }
#endif
#if PYBNN_X86
        if (level == PYBNN_OT_AVX512_ALL) { pybnn_to_float_i32_avx512(acc, lda, m, c, ib, t->mult + c0, t->bias + c0, t->lo, t->hi, o, ldo); break; }
        if (level >= PYBNN_OT_AVX2) { pybnn_to_float_i32_avx2(acc, lda, m, c, ib, t->mult + c0, t->bias + c0, t->lo, t->hi, o, ldo); break; }
#endif
        pybnn_to_float_i32_scalar(acc, lda, m, c, ib, t->mult + c0, t->bias + c0, t->lo, t->hi, o, ldo);
        break;
    }
    case PYBNN_OT_INT8: {
        int8_t *o = (int8_t *)out + c0;
#if PYBNN_NEON
        if (level == PYBNN_OT_NEON) { pybnn_to_int8_neon(acc, lda, m, c, t->ibias + c0, t->mult + c0, t->zp, t->qmin, t->qmax, o, ldo); break; }
#endif
#if PYBNN_X86
        if (level == PYBNN_OT_AVX512_ALL) { pybnn_to_int8_avx512(acc, lda, m, c, t->ibias + c0, t->mult + c0, t->zp, t->qmin, t->qmax, o, ldo); break; }
        if (level >= PYBNN_OT_AVX2) { pybnn_to_int8_avx2(acc, lda, m, c, t->ibias + c0, t->mult + c0, t->zp, t->qmin, t->qmax, o, ldo); break; }
#endif
        pybnn_to_int8_scalar(acc, lda, m, c, t->ibias + c0, t->mult + c0, t->zp, t->qmin, t->qmax, o, ldo);
        break;
    }
    default: {
        uint32_t *o = (uint32_t *)out + c0 / 32;
#if PYBNN_NEON
        if (level == PYBNN_OT_NEON) { pybnn_to_bits_neon(acc, lda, m, c, t->thr + c0, t->dir + c0, o, ldo); break; }
#endif
#if PYBNN_X86
        if (level >= PYBNN_OT_AVX512) { pybnn_to_bits_avx512(acc, lda, m, c, t->thr + c0, t->dir + c0, o, ldo); break; }
        if (level == PYBNN_OT_AVX2) { pybnn_to_bits_avx2(acc, lda, m, c, t->thr + c0, t->dir + c0, o, ldo); break; }
#endif
        pybnn_to_bits_scalar(acc, lda, m, c, t->thr + c0, t->dir + c0, o, ldo);
        break;
    }
    }
}

/* ================================================================ drivers
 * acc/out are (m, c) row-major and contiguous (to_bits: out is (m, ceil(c/32))).  Each runs
 * the best variant at or below `isa` that is built and supported, with rows split into up
 * to `threads` contiguous ranges (each element's value depends only on its row and
 * channel), and returns its ISA. */

typedef struct {
    pybnn_ot t;       /* kind PYBNN_OT_FLOAT_F32: float accumulators, mult/bias/lo/hi only */
    int level;        /* PYBNN_OT_SCALAR, _AVX2 or _NEON: the standalone drivers stop at AVX2 */
    const void *acc;
    size_t m, c;
    void *out;
} pybnn_ot_job;

static void pybnn_ot_part(void *ctx, int part, int nparts) {
    const pybnn_ot_job *j = (const pybnn_ot_job *)ctx;
    const pybnn_ot *t = &j->t;
    size_t r0, r1, c = j->c, ldo = pybnn_ot_ldo(t, c);
    pybnn_par_range(j->m, part, nparts, &r0, &r1);
    if (r0 >= r1)
        return;
    pybnn_ot_apply(t, j->level, (const int32_t *)j->acc + r0 * c, c, r1 - r0, 0, c,
                   (char *)j->out + r0 * ldo * pybnn_ot_esize(t), ldo);
}

static inline int pybnn_ot_run(int isa, int threads, pybnn_ot_job *j) {
    const int level = pybnn_ot_level(isa);
    j->level = level == PYBNN_OT_AVX512 ? PYBNN_OT_AVX2 : level;
    /* Work (common.h units): two per element. */
    pybnn_par_run(pybnn_par_parts(threads, j->m, 2.0 * (double)j->m * (double)j->c), pybnn_ot_part, j);
    if (j->level == PYBNN_OT_NEON) /* armv7 keeps the scalar float transforms */
        return j->t.kind <= PYBNN_OT_FLOAT_F32 && !PYBNN_OT_NEON_FLOAT ? PYBNN_ISA_SCALAR : PYBNN_ISA_NEON;
    return j->level == PYBNN_OT_AVX2 ? PYBNN_ISA_AVX2 : PYBNN_ISA_SCALAR;
}

static inline int pybnn_to_float_i32(int isa, int threads, const int32_t *acc, size_t m, size_t c,
                                     const float *mult, const float *bias, float lo, float hi, float *out) {
    pybnn_ot_job j = {{PYBNN_OT_FLOAT_I32, mult, bias, NULL, lo, hi, 0, 0, 0, NULL, NULL}, 0, acc, m, c, out};
    return pybnn_ot_run(isa, threads, &j);
}

/* `out` may be `acc` (in place). */
static inline int pybnn_to_float_f32(int isa, int threads, const float *acc, size_t m, size_t c,
                                     const float *mult, const float *bias, float lo, float hi, float *out) {
    pybnn_ot_job j = {{PYBNN_OT_FLOAT_F32, mult, bias, NULL, lo, hi, 0, 0, 0, NULL, NULL}, 0, acc, m, c, out};
    return pybnn_ot_run(isa, threads, &j);
}

static inline int pybnn_to_int8(int isa, int threads, const int32_t *acc, size_t m, size_t c,
                                const int32_t *bias, const float *mult, int zp, int qmin, int qmax,
                                int8_t *out) {
    pybnn_ot_job j = {{PYBNN_OT_INT8, mult, NULL, bias, 0.0f, 0.0f, zp, qmin, qmax, NULL, NULL}, 0, acc, m, c, out};
    return pybnn_ot_run(isa, threads, &j);
}

static inline int pybnn_to_bits(int isa, int threads, const int32_t *acc, size_t m, size_t c,
                                const int32_t *thr, const int8_t *dir, uint32_t *out) {
    pybnn_ot_job j = {{PYBNN_OT_BITS, NULL, NULL, NULL, 0.0f, 0.0f, 0, 0, 0, thr, dir}, 0, acc, m, c, out};
    return pybnn_ot_run(isa, threads, &j);
}

#endif
