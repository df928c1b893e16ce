/* igemm: int8 activations x int8 weights -> exact int32.
 *
 *     out[m, n] = sum_k (a[m, k] - a_zp) * w[n, k]
 *
 * a is (M, K) int8 with row stride lda; out is (M, cout) int32 with row stride ldo.
 * Every product is at most 128*128 and pairs of products are summed in int32
 * (vpmaddwd / pmaddwd on sign-extended int16, or smull + sadalp on NEON), so nothing
 * saturates; results are exact while the true sum fits in int32 (K below ~130000).
 *
 * Packed weight layout (pybnn_igemm_pack; every variant streams the same bytes, so the
 * ISA may change between calls):
 *
 *     bytes [0, 16)   header: uint32 magic "PBI8", K, cout, 0 (little endian)
 *     then            panels: ceil(cout/8) panels of 8 output channels; panel p holds
 *                     Kp/2 blocks of 16 bytes (Kp = K rounded up to a multiple of 4);
 *                     block q is the k-pair (2q, 2q+1) of channels 8p..8p+7 interleaved:
 *                     w[8p,2q] w[8p,2q+1] w[8p+1,2q] w[8p+1,2q+1] ... w[8p+7,2q+1]
 *     then            ceil(cout/8)*8 int32 row sums sum_k w[n, k]
 *
 * Missing channels and k >= K are zero.  A k-pair of 8 channels sign-extends to exactly one
 * ymm of int16 pairs, which vpmaddwd against a broadcast (a[2q], a[2q+1]) turns into 8
 * int32 partial sums, one per channel: an outer-product kernel without horizontal sums.
 * The row sums fold the activation zero point out of the inner loop:
 * sum (a - zp) w = sum a w - zp * rowsum.
 */
#ifndef PYBNN_IGEMM_H
#define PYBNN_IGEMM_H

#include "pybnn/common.h"

#define PYBNN_IGEMM_MAGIC 0x38494250u /* "PBI8" */
#define PYBNN_IGEMM_HEADER 16
#define PYBNN_IGEMM_NR 8 /* output channels per panel */

static inline size_t pybnn_igemm_kpad(size_t k) { return (k + 3) & ~(size_t)3; }
static inline size_t pybnn_igemm_npanels(size_t cout) { return (cout + PYBNN_IGEMM_NR - 1) / PYBNN_IGEMM_NR; }

static inline size_t pybnn_igemm_packed_size(size_t k, size_t cout) {
    const size_t np = pybnn_igemm_npanels(cout);
    return PYBNN_IGEMM_HEADER + np * pybnn_igemm_kpad(k) * PYBNN_IGEMM_NR + np * PYBNN_IGEMM_NR * 4;
}

static inline uint32_t pybnn_igemm_load_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4); /* the packed buffer need not be 4-byte aligned */
    return v;
}

/* 1 if `wp` (of `size` bytes) was packed by pybnn_igemm_pack for this K and cout. */
static inline int pybnn_igemm_check(const uint8_t *wp, size_t size, size_t k, size_t cout) {
    return size == pybnn_igemm_packed_size(k, cout) && pybnn_igemm_load_u32(wp) == PYBNN_IGEMM_MAGIC &&
           pybnn_igemm_load_u32(wp + 4) == k && pybnn_igemm_load_u32(wp + 8) == cout;
}

static inline const int8_t *pybnn_igemm_panels(const uint8_t *wp) { return (const int8_t *)(wp + PYBNN_IGEMM_HEADER); }

static inline const uint8_t *pybnn_igemm_rowsums(const uint8_t *wp, size_t k, size_t cout) {
    return wp + PYBNN_IGEMM_HEADER + pybnn_igemm_npanels(cout) * pybnn_igemm_kpad(k) * PYBNN_IGEMM_NR;
}

/* w: (cout, k) int8 row-major; dst: pybnn_igemm_packed_size(k, cout) bytes. */
static inline void pybnn_igemm_pack(const int8_t *w, size_t k, size_t cout, uint8_t *dst) {
    const size_t kp = pybnn_igemm_kpad(k);
    const uint32_t header[4] = {PYBNN_IGEMM_MAGIC, (uint32_t)k, (uint32_t)cout, 0};
    memset(dst, 0, pybnn_igemm_packed_size(k, cout));
    memcpy(dst, header, sizeof header);
    int8_t *panels = (int8_t *)(dst + PYBNN_IGEMM_HEADER);
    uint8_t *sums = (uint8_t *)pybnn_igemm_rowsums(dst, k, cout);
    for (size_t n = 0; n < cout; n++) {
        int8_t *panel = panels + (n / PYBNN_IGEMM_NR) * kp * PYBNN_IGEMM_NR;
        const size_t lane = n % PYBNN_IGEMM_NR;
        int32_t sum = 0;
        for (size_t kk = 0; kk < k; kk++) {
            panel[(kk / 2) * 2 * PYBNN_IGEMM_NR + lane * 2 + (kk & 1)] = w[n * k + kk];
            sum += w[n * k + kk];
        }
        memcpy(sums + n * 4, &sum, 4);
    }
}

/* ---------------------------------------------------------------- scalar */

/* Reference variant: (a - zp) * w directly, independent of the row sums. */
static void pybnn_igemm_scalar(const int8_t *a, size_t lda, size_t m, const int8_t *panels,
                               const uint8_t *sums, size_t k, size_t cout, int a_zp, int32_t *out,
                               size_t ldo) {
    (void)sums;
    const size_t kp = pybnn_igemm_kpad(k), np = pybnn_igemm_npanels(cout);
    for (size_t i = 0; i < m; i++) {
        const int8_t *arow = a + i * lda;
        for (size_t p = 0; p < np; p++) {
            const int8_t *panel = panels + p * kp * PYBNN_IGEMM_NR;
            int32_t acc[PYBNN_IGEMM_NR] = {0};
            for (size_t kk = 0; kk < k; kk++) {
                const int32_t x = (int32_t)arow[kk] - a_zp;
                const int8_t *wk = panel + (kk / 2) * 2 * PYBNN_IGEMM_NR + (kk & 1);
                for (int j = 0; j < PYBNN_IGEMM_NR; j++) acc[j] += x * wk[2 * j];
            }
            const size_t nr = PYBNN_MIN(PYBNN_IGEMM_NR, cout - p * PYBNN_IGEMM_NR);
            memcpy(out + i * ldo + p * PYBNN_IGEMM_NR, acc, nr * sizeof(int32_t));
        }
    }
}

#if PYBNN_X86
/* ---------------------------------------------------------------- x86 helpers */

/* a[k0 .. k0+16) as 8 int32 words, each the int16 pair (a[2q], a[2q+1]) ready to broadcast.
 * Past the end of the row (k >= k_end) the pair is zero, and nothing past it is read. */
PYBNN_TARGET_SSE4 static inline __attribute__((always_inline)) void
pybnn_igemm_pairs16_sse4(const int8_t *arow, size_t k0, size_t k_end, int32_t pairs[8]) {
    __m128i v;
    if (k0 + 16 <= k_end) {
        v = _mm_loadu_si128((const __m128i *)(arow + k0));
    } else {
        int8_t tmp[16] = {0};
        memcpy(tmp, arow + k0, k_end - k0);
        v = _mm_loadu_si128((const __m128i *)tmp);
    }
    _mm_storeu_si128((__m128i *)pairs, _mm_cvtepi8_epi16(v));
    _mm_storeu_si128((__m128i *)(pairs + 4), _mm_cvtepi8_epi16(_mm_srli_si128(v, 8)));
}

/* Same with one AVX2 sign extension (kept separate so AVX2 code stays VEX-encoded). */
PYBNN_TARGET_AVX2 static inline __attribute__((always_inline)) void
pybnn_igemm_pairs16_avx2(const int8_t *arow, size_t k0, size_t k_end, int32_t pairs[8]) {
    __m128i v;
    if (k0 + 16 <= k_end) {
        v = _mm_loadu_si128((const __m128i *)(arow + k0));
    } else {
        int8_t tmp[16] = {0};
        memcpy(tmp, arow + k0, k_end - k0);
        v = _mm_loadu_si128((const __m128i *)tmp);
    }
    _mm256_storeu_si256((__m256i *)pairs, _mm256_cvtepi8_epi16(v));
}

/* ---------------------------------------------------------------- SSE4 */

/* One row, `np` (1..4) panels starting at `panel`: 2 accumulators of 4 channels each. */
PYBNN_TARGET_SSE4 static inline __attribute__((always_inline)) void
pybnn_igemm_row_sse4(const int8_t *arow, size_t k, size_t kp, const int8_t *panel, const uint8_t *sums,
                     int np, int a_zp, int32_t *out, size_t nr_last) {
    __m128i acc[8];
    int32_t pairs[8];
    for (int p = 0; p < 2 * np; p++) acc[p] = _mm_setzero_si128();
    for (size_t k0 = 0; k0 < kp; k0 += 16) {
        pybnn_igemm_pairs16_sse4(arow, k0, k, pairs);
        const int nq = (int)(PYBNN_MIN(kp - k0, 16) / 2);
        const int8_t *wq = panel + k0 * PYBNN_IGEMM_NR;
        for (int q = 0; q < nq; q++, wq += 16) {
            const __m128i b = _mm_set1_epi32(pairs[q]);
            for (int p = 0; p < np; p++) {
                const int8_t *wpq = wq + (size_t)p * kp * PYBNN_IGEMM_NR;
                const __m128i w0 = _mm_cvtepi8_epi16(_mm_loadl_epi64((const __m128i *)wpq));
                const __m128i w1 = _mm_cvtepi8_epi16(_mm_loadl_epi64((const __m128i *)(wpq + 8)));
                acc[2 * p] = _mm_add_epi32(acc[2 * p], _mm_madd_epi16(w0, b));
                acc[2 * p + 1] = _mm_add_epi32(acc[2 * p + 1], _mm_madd_epi16(w1, b));
            }
        }
    }
    const __m128i zp = _mm_set1_epi32(a_zp);
    for (int p = 0; p < np; p++) {
        int32_t res[8];
        for (int h = 0; h < 2; h++) {
            const __m128i s = _mm_loadu_si128((const __m128i *)(sums + p * 32 + h * 16));
            _mm_storeu_si128((__m128i *)(res + 4 * h), _mm_sub_epi32(acc[2 * p + h], _mm_mullo_epi32(s, zp)));
        }
        memcpy(out + p * PYBNN_IGEMM_NR, res, (p == np - 1 ? nr_last : PYBNN_IGEMM_NR) * sizeof(int32_t));
    }
}

PYBNN_TARGET_SSE4 static void pybnn_igemm_sse4(const int8_t *a, size_t lda, size_t m, const int8_t *panels,
                                               const uint8_t *sums, size_t k, size_t cout, int a_zp,
                                               int32_t *out, size_t ldo) {
    const size_t kp = pybnn_igemm_kpad(k), np = pybnn_igemm_npanels(cout);
    for (size_t i = 0; i < m; i++) {
        for (size_t p = 0; p < np;) {
            const size_t n0 = p * PYBNN_IGEMM_NR;
            const int8_t *panel = panels + p * kp * PYBNN_IGEMM_NR;
            if (p + 4 <= np) {
                const size_t last = PYBNN_MIN(PYBNN_IGEMM_NR, cout - n0 - 3 * PYBNN_IGEMM_NR);
                pybnn_igemm_row_sse4(a + i * lda, k, kp, panel, sums + n0 * 4, 4, a_zp, out + i * ldo + n0, last);
                p += 4;
            } else {
                const size_t last = PYBNN_MIN(PYBNN_IGEMM_NR, cout - n0);
                pybnn_igemm_row_sse4(a + i * lda, k, kp, panel, sums + n0 * 4, 1, a_zp, out + i * ldo + n0, last);
                p += 1;
            }
        }
    }
}

/* ---------------------------------------------------------------- AVX2 */

/* One row, `np` (1..4) panels of 8 channels: one ymm accumulator per panel.  Per k-pair:
 * one broadcast of (a[2q], a[2q+1]) and, per panel, vpmovsxbw + vpmaddwd + vpaddd. */
PYBNN_TARGET_AVX2 static inline __attribute__((always_inline)) void
pybnn_igemm_row_avx2(const int8_t *arow, size_t k, size_t kp, const int8_t *panel, const uint8_t *sums,
                     int np, int a_zp, int32_t *out, size_t nr_last) {
    __m256i acc[4];
    int32_t pairs[8];
    for (int p = 0; p < np; p++) acc[p] = _mm256_setzero_si256();
    for (size_t k0 = 0; k0 < kp; k0 += 16) {
        pybnn_igemm_pairs16_avx2(arow, k0, k, pairs);
        const int nq = (int)(PYBNN_MIN(kp - k0, 16) / 2);
        const int8_t *wq = panel + k0 * PYBNN_IGEMM_NR;
        for (int q = 0; q < nq; q++, wq += 16) {
            const __m256i b = _mm256_set1_epi32(pairs[q]);
            for (int p = 0; p < np; p++) {
                const __m128i w8 = _mm_loadu_si128((const __m128i *)(wq + (size_t)p * kp * PYBNN_IGEMM_NR));
                acc[p] = _mm256_add_epi32(acc[p], _mm256_madd_epi16(_mm256_cvtepi8_epi16(w8), b));
            }
        }
    }
    const __m256i zp = _mm256_set1_epi32(a_zp);
    for (int p = 0; p < np; p++) {
        const __m256i s = _mm256_loadu_si256((const __m256i *)(sums + p * 32));
        const __m256i r = _mm256_sub_epi32(acc[p], _mm256_mullo_epi32(s, zp));
        if (p < np - 1 || nr_last == PYBNN_IGEMM_NR) {
            _mm256_storeu_si256((__m256i *)(out + p * PYBNN_IGEMM_NR), r);
        } else {
            int32_t res[8];
            _mm256_storeu_si256((__m256i *)res, r);
            memcpy(out + p * PYBNN_IGEMM_NR, res, nr_last * sizeof(int32_t));
        }
    }
}

PYBNN_TARGET_AVX2 static void pybnn_igemm_avx2(const int8_t *a, size_t lda, size_t m, const int8_t *panels,
                                               const uint8_t *sums, size_t k, size_t cout, int a_zp,
                                               int32_t *out, size_t ldo) {
    const size_t kp = pybnn_igemm_kpad(k), np = pybnn_igemm_npanels(cout);
    for (size_t i = 0; i < m; i++) {
        for (size_t p = 0; p < np;) {
            const size_t n0 = p * PYBNN_IGEMM_NR;
            const int8_t *panel = panels + p * kp * PYBNN_IGEMM_NR;
            if (p + 4 <= np) {
                const size_t last = PYBNN_MIN(PYBNN_IGEMM_NR, cout - n0 - 3 * PYBNN_IGEMM_NR);
                pybnn_igemm_row_avx2(a + i * lda, k, kp, panel, sums + n0 * 4, 4, a_zp, out + i * ldo + n0, last);
                p += 4;
            } else {
                const size_t last = PYBNN_MIN(PYBNN_IGEMM_NR, cout - n0);
                pybnn_igemm_row_avx2(a + i * lda, k, kp, panel, sums + n0 * 4, 1, a_zp, out + i * ldo + n0, last);
                p += 1;
            }
        }
    }
}
#endif /* PYBNN_X86 */

#if PYBNN_NEON
/* ---------------------------------------------------------------- NEON */

/* One row, one panel: per k-pair, vmull_s8 of 4 channels x (a0, a1) gives 8 int16 products
 * (|p| <= 16384, exact) and vpadalq_s16 adds each pair into that channel's int32 sum. */
static void pybnn_igemm_neon(const int8_t *a, size_t lda, size_t m, const int8_t *panels,
                             const uint8_t *sums, size_t k, size_t cout, int a_zp, int32_t *out,
                             size_t ldo) {
    const size_t kp = pybnn_igemm_kpad(k), np = pybnn_igemm_npanels(cout);
    const int32x4_t zp = vdupq_n_s32(a_zp);
    for (size_t i = 0; i < m; i++) {
        const int8_t *arow = a + i * lda;
        for (size_t p = 0; p < np; p++) {
            const int8_t *wq = panels + p * kp * PYBNN_IGEMM_NR;
            int32x4_t acc0 = vdupq_n_s32(0), acc1 = vdupq_n_s32(0);
            for (size_t q = 0; q < kp / 2; q++, wq += 16) {
                const int8_t a0 = 2 * q < k ? arow[2 * q] : 0, a1 = 2 * q + 1 < k ? arow[2 * q + 1] : 0;
                /* (a0, a1) repeated in 8 bytes, matching the (k0, k1) byte order of a channel. */
                const uint16_t pair = (uint16_t)((uint8_t)a0 | ((unsigned)(uint8_t)a1 << 8));
                const int8x8_t b = vreinterpret_s8_u16(vdup_n_u16(pair));
                const int8x16_t w = vld1q_s8(wq);
                acc0 = vpadalq_s16(acc0, vmull_s8(vget_low_s8(w), b));
                acc1 = vpadalq_s16(acc1, vmull_s8(vget_high_s8(w), b));
            }
            int32_t s[8], res[8];
            memcpy(s, sums + p * 32, 32);
            vst1q_s32(res, vsubq_s32(acc0, vmulq_s32(vld1q_s32(s), zp)));
            vst1q_s32(res + 4, vsubq_s32(acc1, vmulq_s32(vld1q_s32(s + 4), zp)));
            memcpy(out + i * ldo + p * PYBNN_IGEMM_NR, res,
                   PYBNN_MIN(PYBNN_IGEMM_NR, cout - p * PYBNN_IGEMM_NR) * sizeof(int32_t));
        }
    }
}
#endif /* PYBNN_NEON */

/* ---------------------------------------------------------------- driver
 *
 * Variants take the panels and row sums of the channel range they compute (starting at a
 * panel boundary) and its channel count; the driver splits rows, or, when there are fewer
 * rows than parts (dense layers at small batch), output-channel panels, into up to
 * `threads` contiguous ranges.  Integer results: identical for any split. */
typedef void (*pybnn_igemm_fn)(const int8_t *a, size_t lda, size_t m, const int8_t *panels,
                               const uint8_t *sums, size_t k, size_t cout, int a_zp, int32_t *out,
                               size_t ldo);

/* The variant for `isa` (walking down to scalar); *used receives its ISA number. */
static inline pybnn_igemm_fn pybnn_igemm_pick(int isa, int *used) {
#if PYBNN_NEON
    if (isa >= PYBNN_ISA_NEON) { *used = PYBNN_ISA_NEON; return pybnn_igemm_neon; }
#endif
#if PYBNN_X86
    if (isa >= PYBNN_ISA_AVX2 && pybnn_isa_supported(PYBNN_ISA_AVX2)) { *used = PYBNN_ISA_AVX2; return pybnn_igemm_avx2; }
    if (isa >= PYBNN_ISA_SSE4 && pybnn_isa_supported(PYBNN_ISA_SSE4)) { *used = PYBNN_ISA_SSE4; return pybnn_igemm_sse4; }
#endif
    (void)isa;
    *used = PYBNN_ISA_SCALAR;
    return pybnn_igemm_scalar;
}

typedef struct {
    pybnn_igemm_fn fn;
    const int8_t *a, *panels;
    const uint8_t *sums;
    size_t lda, m, k, kp, cout, ldo;
    int a_zp, by_rows;
    int32_t *out;
} pybnn_igemm_job;

static void pybnn_igemm_part(void *ctx, int part, int nparts) {
    const pybnn_igemm_job *j = (const pybnn_igemm_job *)ctx;
    size_t lo, hi;
    if (j->by_rows) {
        pybnn_par_range(j->m, part, nparts, &lo, &hi);
        if (lo < hi)
            j->fn(j->a + lo * j->lda, j->lda, hi - lo, j->panels, j->sums, j->k, j->cout, j->a_zp,
                  j->out + lo * j->ldo, j->ldo);
    } else {
        pybnn_par_range(pybnn_igemm_npanels(j->cout), part, nparts, &lo, &hi);
        size_t c0 = lo * PYBNN_IGEMM_NR, c1 = PYBNN_MIN(hi * PYBNN_IGEMM_NR, j->cout);
        if (c0 < c1)
            j->fn(j->a, j->lda, j->m, j->panels + lo * j->kp * PYBNN_IGEMM_NR, j->sums + c0 * 4, j->k,
                  c1 - c0, j->a_zp, j->out + c0, j->ldo);
    }
}

/* Runs the best variant at or below `isa` that is built and supported on up to `threads`
 * threads; returns its ISA.  `wp` must have passed pybnn_igemm_check(wp, size, k, cout); k >= 1. */
static inline int pybnn_igemm(int isa, int threads, const int8_t *a, size_t lda, size_t m,
                              const uint8_t *wp, size_t k, size_t cout, int a_zp, int32_t *out,
                              size_t ldo) {
    int used;
    pybnn_igemm_job j = {pybnn_igemm_pick(isa, &used), a, pybnn_igemm_panels(wp),
                         pybnn_igemm_rowsums(wp, k, cout), lda, m, k, pybnn_igemm_kpad(k), cout,
                         ldo, a_zp, 1, out};
    if (m == 0)
        return used;
    size_t np = pybnn_igemm_npanels(cout);
    /* Work (common.h units): one per 4 multiply-adds. */
    int nparts = pybnn_par_parts(threads, PYBNN_MAX(m, np), (double)m * (double)cout * (double)k / 4.0);
    j.by_rows = m >= (size_t)nparts * 4 || np < (size_t)nparts;
    nparts = (int)PYBNN_MIN((size_t)nparts, j.by_rows ? m : np);
    pybnn_par_run(nparts, pybnn_igemm_part, &j);
    return used;
}

#endif
