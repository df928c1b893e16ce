/* Binary-weight GEMMs: float or int8 activations x weights of +-1.
 *
 *     fbgemm:  out[m, n] = sum_k a[m, k] * s[n, k]            a float32, out float32
 *     ibgemm:  out[m, n] = sum_k (a[m, k] - a_zp) * s[n, k]   a int8,    out int32 (exact)
 *
 * s[n, k] = +1 where bit k of row n is 0, -1 where it is 1.  The weights stay bit-packed:
 * the kernels expand the bits into sign masks on the fly, so no float or int8 copy of the
 * weights ever exists.  fbgemm flips the float sign bit with the mask (a XOR signmask);
 * ibgemm sums the activations whose bit is 1 and uses sum a*s = sum a - 2 sum_{bit=1} a.
 *
 * Packed weight layout (pybnn_bgemm_pack; every variant of both kernels streams it):
 *
 *     bytes [0, 16)   header: uint32 magic "PBB1", K, cout, 0 (little endian)
 *     then            cout rows of KW = ceil(K/32) little-endian uint32 words: value k of
 *                     row n is bit k%32 of word k/32 (bit 1 = -1); padding bits are 0
 *     then            cout int32 popcounts of the rows (the number of -1 weights)
 *
 * The rows are exactly the pybnn bit-packing convention (the same layout to_bits writes),
 * so binarized tensors produced elsewhere can be copied in word for word.
 */
#ifndef PYBNN_FBGEMM_H
#define PYBNN_FBGEMM_H

#include "pybnn/common.h"

#define PYBNN_BGEMM_MAGIC 0x31424250u /* "PBB1" */
#define PYBNN_BGEMM_HEADER 16

static inline size_t pybnn_bgemm_words(size_t k) { return (k + 31) / 32; }

static inline size_t pybnn_bgemm_packed_size(size_t k, size_t cout) {
    return PYBNN_BGEMM_HEADER + cout * pybnn_bgemm_words(k) * 4 + cout * 4;
}

static inline uint32_t pybnn_bgemm_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4); /* the packed buffer need not be 4-byte aligned */
    return v;
}

/* 1 if `wp` (of `size` bytes) was packed by pybnn_bgemm_pack for this K and cout. */
static inline int pybnn_bgemm_check(const uint8_t *wp, size_t size, size_t k, size_t cout) {
    return size == pybnn_bgemm_packed_size(k, cout) && pybnn_bgemm_u32(wp) == PYBNN_BGEMM_MAGIC &&
           pybnn_bgemm_u32(wp + 4) == k && pybnn_bgemm_u32(wp + 8) == cout;
}

/* Word `j` of row `n`, and the popcount of row `n`. */
static inline const uint8_t *pybnn_bgemm_row(const uint8_t *wp, size_t k, size_t n) {
    return wp + PYBNN_BGEMM_HEADER + n * pybnn_bgemm_words(k) * 4;
}
static inline int32_t pybnn_bgemm_popcount(const uint8_t *wp, size_t k, size_t cout, size_t n) {
    return (int32_t)pybnn_bgemm_u32(wp + PYBNN_BGEMM_HEADER + (cout * pybnn_bgemm_words(k) + n) * 4);
}

/* Row `n` counted from `rows`, the first row of a channel range (variants see only their range). */
static inline const uint8_t *pybnn_bgemm_wrow(const uint8_t *rows, size_t k, size_t n) {
    return rows + n * pybnn_bgemm_words(k) * 4;
}

/* w: (cout, k) float32 row-major; bit = 1 (weight -1) unless w >= 0 (so 0.0 and -0.0 give
 * +1; NaN gives -1).  dst: pybnn_bgemm_packed_size(k, cout) bytes. */
static inline void pybnn_bgemm_pack(const float *w, size_t k, size_t cout, uint8_t *dst) {
    const size_t kw = pybnn_bgemm_words(k);
    const uint32_t header[4] = {PYBNN_BGEMM_MAGIC, (uint32_t)k, (uint32_t)cout, 0};
    memcpy(dst, header, sizeof header);
    for (size_t n = 0; n < cout; n++) {
        int32_t pop = 0;
        for (size_t j = 0; j < kw; j++) {
            uint32_t word = 0;
            for (size_t b = 0; b < 32 && 32 * j + b < k; b++)
                word |= (uint32_t)!(w[n * k + 32 * j + b] >= 0.0f) << b;
            pop += pybnn_popcount32(word);
            memcpy(dst + PYBNN_BGEMM_HEADER + (n * kw + j) * 4, &word, 4);
        }
        memcpy(dst + PYBNN_BGEMM_HEADER + (cout * kw + n) * 4, &pop, 4);
    }
}

/* ================================================================ scalar */

static void pybnn_fbgemm_scalar(const float *a, size_t lda, size_t m, const uint8_t *rows, size_t k,
                                size_t cout, float *out, size_t ldo) {
    const size_t kw = pybnn_bgemm_words(k);
    for (size_t i = 0; i < m; i++) {
        const float *arow = a + i * lda;
        for (size_t n = 0; n < cout; n++) {
            const uint8_t *wrow = pybnn_bgemm_wrow(rows, k, n);
            float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f}; /* 4 chains: the adds do not wait on each other */
            for (size_t j = 0; j < kw; j++) {
                const uint32_t word = pybnn_bgemm_u32(wrow + 4 * j);
                const size_t nb = PYBNN_MIN(32, k - 32 * j);
                for (size_t b = 0; b < nb; b++) {
                    /* Multiply by -1 = flip the sign bit. */
                    uint32_t v;
                    memcpy(&v, arow + 32 * j + b, 4);
                    v ^= ((word >> b) & 1u) << 31;
                    float f;
                    memcpy(&f, &v, 4);
                    acc[b & 3] += f;
                }
            }
            out[i * ldo + n] = (acc[0] + acc[1]) + (acc[2] + acc[3]);
        }
    }
}

static void pybnn_ibgemm_scalar(const int8_t *a, size_t lda, size_t m, const uint8_t *rows,
                                const uint8_t *pops, size_t k, size_t cout, int a_zp, int32_t *out,
                                size_t ldo) {
    const size_t kw = pybnn_bgemm_words(k);
    for (size_t i = 0; i < m; i++) {
        const int8_t *arow = a + i * lda;
        for (size_t n = 0; n < cout; n++) {
            const uint8_t *wrow = pybnn_bgemm_wrow(rows, k, n);
            int32_t acc = 0;
            for (size_t j = 0; j < kw; j++) {
                const uint32_t word = pybnn_bgemm_u32(wrow + 4 * j);
                const size_t nb = PYBNN_MIN(32, k - 32 * j);
                for (size_t b = 0; b < nb; b++) {
                    /* x * (+-1) without a multiply: (x ^ -bit) + bit is x or -x. */
                    const int32_t x = (int32_t)arow[32 * j + b] - a_zp;
                    const int32_t bit = (int32_t)((word >> b) & 1u);
                    acc += (x ^ -bit) + bit;
                }
            }
            out[i * ldo + n] = acc;
        }
    }
}

#if PYBNN_X86
/* ================================================================ x86 helpers
 *
 * ibgemm on x86: u = a ^ 0x80 = a + 128 is the activation as an unsigned byte.  The 32 bits
 * of a word become 32 byte masks (0 or 0xFF = -1: broadcast, pshufb byte j/8 into byte j,
 * test bit j%8), and pmaddubsw(u, mask) = -(u0*bit0 + u1*bit1) >= -510 per int16 lane, so it
 * cannot saturate; int16 lanes are widened (pmaddwd by 1) every 32 words, before
 * 32 * 2 * 510 could exceed 32767.  With T = -sum_{bit=1} u, U = sum u, S = K - 2 popcount:
 *     sum (a - zp) s = sum u s - (128 + zp) S = U + 2T - (128 + zp) S.
 * Rows whose K is not a multiple of 32 finish from a 32-byte copy padded with -128 (u = 0).
 */
#define PYBNN_IBGEMM_FLUSH 32 /* words between int16 -> int32 widenings */

static inline void pybnn_ibgemm_tail(const int8_t *arow, size_t k, int8_t tail[32]) {
    memset(tail, -128, 32);
    memcpy(tail, arow + (k & ~(size_t)31), k & 31);
}

static inline int32_t pybnn_ibgemm_finish(int32_t usum, int32_t t, size_t k, int32_t pop, int a_zp) {
    /* Unsigned arithmetic: wraps like the SIMD lanes instead of being undefined. */
    return (int32_t)((uint32_t)usum + 2u * (uint32_t)t -
                     (uint32_t)(128 + a_zp) * ((uint32_t)k - 2u * (uint32_t)pop));
}

/* ================================================================ SSE4 */

PYBNN_TARGET_SSE4 static inline int32_t pybnn_bgemm_hsum_sse4(__m128i v) {
    v = _mm_add_epi32(v, _mm_shuffle_epi32(v, _MM_SHUFFLE(1, 0, 3, 2)));
    v = _mm_add_epi32(v, _mm_shuffle_epi32(v, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(v);
}

/* `nc` (1..4) channels of one row: 16 activations per step, 2 steps per weight word. */
PYBNN_TARGET_SSE4 static inline __attribute__((always_inline)) void
pybnn_ibgemm_row_sse4(const int8_t *arow, const int8_t *tail, size_t kw, const uint8_t *w, int nc,
                      int32_t t[4]) {
    const __m128i flip = _mm_set1_epi8((char)0x80), ones = _mm_set1_epi16(1);
    const __m128i bitsel = _mm_set1_epi64x((long long)0x8040201008040201ull);
    const __m128i idx0 = _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    const __m128i idx1 = _mm_setr_epi8(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    __m128i acc16[4], acc32[4];
    for (int c = 0; c < nc; c++) acc16[c] = acc32[c] = _mm_setzero_si128();
    const size_t kfull = tail ? kw - 1 : kw;
    for (size_t j = 0; j < kw; j++) {
        const int8_t *src = j < kfull ? arow + 32 * j : tail;
        const __m128i u0 = _mm_xor_si128(_mm_loadu_si128((const __m128i *)src), flip);
        const __m128i u1 = _mm_xor_si128(_mm_loadu_si128((const __m128i *)(src + 16)), flip);
        for (int c = 0; c < nc; c++) {
            const __m128i wv = _mm_set1_epi32((int)pybnn_bgemm_u32(w + (c * kw + j) * 4));
            const __m128i m0 = _mm_cmpeq_epi8(_mm_and_si128(_mm_shuffle_epi8(wv, idx0), bitsel), bitsel);
            const __m128i m1 = _mm_cmpeq_epi8(_mm_and_si128(_mm_shuffle_epi8(wv, idx1), bitsel), bitsel);
            acc16[c] = _mm_add_epi16(acc16[c], _mm_maddubs_epi16(u0, m0));
            acc16[c] = _mm_add_epi16(acc16[c], _mm_maddubs_epi16(u1, m1));
        }
        if (j % PYBNN_IBGEMM_FLUSH == PYBNN_IBGEMM_FLUSH - 1 || j == kw - 1) {
            for (int c = 0; c < nc; c++) {
                acc32[c] = _mm_add_epi32(acc32[c], _mm_madd_epi16(acc16[c], ones));
                acc16[c] = _mm_setzero_si128();
            }
        }
    }
    for (int c = 0; c < nc; c++) t[c] = pybnn_bgemm_hsum_sse4(acc32[c]);
}

/* sum over the row of u = a + 128 (psadbw against zero sums unsigned bytes). */
PYBNN_TARGET_SSE4 static inline int32_t pybnn_ibgemm_usum_sse4(const int8_t *arow, const int8_t *tail, size_t kw) {
    const __m128i flip = _mm_set1_epi8((char)0x80), zero = _mm_setzero_si128();
    __m128i s = zero;
    const size_t kfull = tail ? kw - 1 : kw;
    for (size_t j = 0; j < kw; j++) {
        const int8_t *src = j < kfull ? arow + 32 * j : tail;
        s = _mm_add_epi64(s, _mm_sad_epu8(_mm_xor_si128(_mm_loadu_si128((const __m128i *)src), flip), zero));
        s = _mm_add_epi64(s, _mm_sad_epu8(_mm_xor_si128(_mm_loadu_si128((const __m128i *)(src + 16)), flip), zero));
    }
    return (int32_t)(_mm_cvtsi128_si64(s) + _mm_extract_epi64(s, 1));
}

PYBNN_TARGET_SSE4 static void pybnn_ibgemm_sse4(const int8_t *a, size_t lda, size_t m, const uint8_t *rows,
                                                const uint8_t *pops, size_t k, size_t cout, int a_zp,
                                                int32_t *out, size_t ldo) {
    const size_t kw = pybnn_bgemm_words(k);
    int8_t tailbuf[32];
    for (size_t i = 0; i < m; i++) {
        const int8_t *arow = a + i * lda, *tail = NULL;
        if (k & 31) {
            pybnn_ibgemm_tail(arow, k, tailbuf);
            tail = tailbuf;
        }
        const int32_t usum = pybnn_ibgemm_usum_sse4(arow, tail, kw);
        int32_t t[4];
        for (size_t n = 0; n < cout;) {
            const int nc = n + 4 <= cout ? 4 : 1;
            if (nc == 4)
                pybnn_ibgemm_row_sse4(arow, tail, kw, pybnn_bgemm_wrow(rows, k, n), 4, t);
            else
                pybnn_ibgemm_row_sse4(arow, tail, kw, pybnn_bgemm_wrow(rows, k, n), 1, t);
            for (int c = 0; c < nc; c++)
                out[i * ldo + n + c] = pybnn_ibgemm_finish(usum, t[c], k, (int32_t)pybnn_bgemm_u32(pops + 4 * (n + c)), a_zp);
            n += nc;
        }
    }
}

/* fbgemm, 4 floats per step: lane i of step s tests bit 4s+i and flips the sign bit. */
PYBNN_TARGET_SSE4 static inline __attribute__((always_inline)) void
pybnn_fbgemm_row_sse4(const float *arow, size_t k, const uint8_t *w, size_t kw, int nc, float *out) {
    const __m128i sign = _mm_set1_epi32((int)0x80000000u), bits0 = _mm_setr_epi32(1, 2, 4, 8);
    __m128 acc[4];
    for (int c = 0; c < nc; c++) acc[c] = _mm_setzero_ps();
    for (size_t j = 0; j < kw; j++) {
        __m128i wv[4];
        for (int c = 0; c < nc; c++) wv[c] = _mm_set1_epi32((int)pybnn_bgemm_u32(w + (c * kw + j) * 4));
        __m128i bits = bits0;
        for (size_t k0 = 32 * j; k0 < PYBNN_MIN(32 * j + 32, k); k0 += 4, bits = _mm_slli_epi32(bits, 4)) {
            __m128 x;
            if (k0 + 4 <= k) {
                x = _mm_loadu_ps(arow + k0);
            } else {
                float tmp[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                memcpy(tmp, arow + k0, (k - k0) * sizeof(float));
                x = _mm_loadu_ps(tmp);
            }
            for (int c = 0; c < nc; c++) {
                const __m128i m = _mm_and_si128(_mm_cmpeq_epi32(_mm_and_si128(wv[c], bits), bits), sign);
                acc[c] = _mm_add_ps(acc[c], _mm_xor_ps(x, _mm_castsi128_ps(m)));
            }
        }
    }
    if (nc == 4) {
        const __m128 s01 = _mm_hadd_ps(acc[0], acc[1]), s23 = _mm_hadd_ps(acc[2], acc[3]);
        _mm_storeu_ps(out, _mm_hadd_ps(s01, s23));
    } else {
        for (int c = 0; c < nc; c++) {
            const __m128 s = _mm_hadd_ps(acc[c], acc[c]);
            out[c] = _mm_cvtss_f32(_mm_hadd_ps(s, s));
        }
    }
}

PYBNN_TARGET_SSE4 static void pybnn_fbgemm_sse4(const float *a, size_t lda, size_t m, const uint8_t *rows,
                                                size_t k, size_t cout, float *out, size_t ldo) {
    const size_t kw = pybnn_bgemm_words(k);
    for (size_t i = 0; i < m; i++) {
        for (size_t n = 0; n < cout;) {
            if (n + 4 <= cout) {
                pybnn_fbgemm_row_sse4(a + i * lda, k, pybnn_bgemm_wrow(rows, k, n), kw, 4, out + i * ldo + n);
                n += 4;
            } else {
                pybnn_fbgemm_row_sse4(a + i * lda, k, pybnn_bgemm_wrow(rows, k, n), kw, 1, out + i * ldo + n);
                n += 1;
            }
        }
    }
}

/* ================================================================ AVX2 */

PYBNN_TARGET_AVX2 static inline int32_t pybnn_bgemm_hsum_avx2(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

/* `nc` (1..4) channels of one row, 32 activations (one weight word) per step. */
PYBNN_TARGET_AVX2 static inline __attribute__((always_inline)) void
pybnn_ibgemm_row_avx2(const int8_t *arow, const int8_t *tail, size_t kw, const uint8_t *w, int nc,
                      int32_t t[4]) {
    const __m256i flip = _mm256_set1_epi8((char)0x80), ones = _mm256_set1_epi16(1);
    const __m256i bitsel = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    /* pshufb works per 128-bit lane: bytes 0-15 take word bytes 0,1; bytes 16-31 bytes 2,3. */
    const __m256i idx = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                         2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    __m256i acc16[4], acc32[4];
    for (int c = 0; c < nc; c++) acc16[c] = acc32[c] = _mm256_setzero_si256();
    const size_t kfull = tail ? kw - 1 : kw;
    for (size_t j = 0; j < kw; j++) {
        const int8_t *src = j < kfull ? arow + 32 * j : tail;
        const __m256i u = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)src), flip);
        for (int c = 0; c < nc; c++) {
            const __m256i wv = _mm256_set1_epi32((int)pybnn_bgemm_u32(w + (c * kw + j) * 4));
            const __m256i m = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(wv, idx), bitsel), bitsel);
            acc16[c] = _mm256_add_epi16(acc16[c], _mm256_maddubs_epi16(u, m));
        }
        if (j % PYBNN_IBGEMM_FLUSH == PYBNN_IBGEMM_FLUSH - 1 || j == kw - 1) {
            for (int c = 0; c < nc; c++) {
                acc32[c] = _mm256_add_epi32(acc32[c], _mm256_madd_epi16(acc16[c], ones));
                acc16[c] = _mm256_setzero_si256();
            }
        }
    }
    for (int c = 0; c < nc; c++) t[c] = pybnn_bgemm_hsum_avx2(acc32[c]);
}

PYBNN_TARGET_AVX2 static inline int32_t pybnn_ibgemm_usum_avx2(const int8_t *arow, const int8_t *tail, size_t kw) {
    const __m256i flip = _mm256_set1_epi8((char)0x80), zero = _mm256_setzero_si256();
    __m256i s = zero;
    const size_t kfull = tail ? kw - 1 : kw;
    for (size_t j = 0; j < kw; j++) {
        const int8_t *src = j < kfull ? arow + 32 * j : tail;
        s = _mm256_add_epi64(s, _mm256_sad_epu8(_mm256_xor_si256(_mm256_loadu_si256((const __m256i *)src), flip), zero));
    }
    const __m128i h = _mm_add_epi64(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    return (int32_t)(_mm_cvtsi128_si64(h) + _mm_extract_epi64(h, 1));
}

PYBNN_TARGET_AVX2 static void pybnn_ibgemm_avx2(const int8_t *a, size_t lda, size_t m, const uint8_t *rows,
                                                const uint8_t *pops, size_t k, size_t cout, int a_zp,
                                                int32_t *out, size_t ldo) {
    const size_t kw = pybnn_bgemm_words(k);
    int8_t tailbuf[32];
    for (size_t i = 0; i < m; i++) {
        const int8_t *arow = a + i * lda, *tail = NULL;
        if (k & 31) {
            pybnn_ibgemm_tail(arow, k, tailbuf);
            tail = tailbuf;
        }
        const int32_t usum = pybnn_ibgemm_usum_avx2(arow, tail, kw);
        int32_t t[4];
        for (size_t n = 0; n < cout;) {
            const int nc = n + 4 <= cout ? 4 : 1;
            if (nc == 4)
                pybnn_ibgemm_row_avx2(arow, tail, kw, pybnn_bgemm_wrow(rows, k, n), 4, t);
            else
                pybnn_ibgemm_row_avx2(arow, tail, kw, pybnn_bgemm_wrow(rows, k, n), 1, t);
            for (int c = 0; c < nc; c++)
                out[i * ldo + n + c] = pybnn_ibgemm_finish(usum, t[c], k, (int32_t)pybnn_bgemm_u32(pops + 4 * (n + c)), a_zp);
            n += nc;
        }
    }
}

/* fbgemm, 8 floats per step: vpsllvd moves bit 8s+i of the broadcast word into the sign bit
 * of lane i; masked with 0x80000000 and XOR-ed into the activations it negates them. */
PYBNN_TARGET_AVX2 static inline __attribute__((always_inline)) void
pybnn_fbgemm_row_avx2(const float *arow, size_t k, const uint8_t *w, size_t kw, int nc, float *out) {
    const __m256i sign = _mm256_set1_epi32((int)0x80000000u), iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i shift0 = _mm256_setr_epi32(31, 30, 29, 28, 27, 26, 25, 24), eight = _mm256_set1_epi32(8);
    __m256 acc[4];
    for (int c = 0; c < nc; c++) acc[c] = _mm256_setzero_ps();
    for (size_t j = 0; j < kw; j++) {
        __m256i wv[4];
        for (int c = 0; c < nc; c++) wv[c] = _mm256_set1_epi32((int)pybnn_bgemm_u32(w + (c * kw + j) * 4));
        __m256i shift = shift0;
        for (size_t k0 = 32 * j; k0 < PYBNN_MIN(32 * j + 32, k); k0 += 8, shift = _mm256_sub_epi32(shift, eight)) {
            __m256 x;
            if (k0 + 8 <= k)
                x = _mm256_loadu_ps(arow + k0);
            else /* vmaskmovps reads only the lanes < k - k0: safe at the end of the buffer */
                x = _mm256_maskload_ps(arow + k0, _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(k - k0)), iota));
            for (int c = 0; c < nc; c++) {
                const __m256i m = _mm256_and_si256(_mm256_sllv_epi32(wv[c], shift), sign);
                acc[c] = _mm256_add_ps(acc[c], _mm256_xor_ps(x, _mm256_castsi256_ps(m)));
            }
        }
    }
    if (nc == 4) {
        const __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
        _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1)));
    } else {
        for (int c = 0; c < nc; c++) {
            __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc[c]), _mm256_extractf128_ps(acc[c], 1));
            s = _mm_hadd_ps(s, s);
            out[c] = _mm_cvtss_f32(_mm_hadd_ps(s, s));
        }
    }
}

PYBNN_TARGET_AVX2 static void pybnn_fbgemm_avx2(const float *a, size_t lda, size_t m, const uint8_t *rows,
                                                size_t k, size_t cout, float *out, size_t ldo) {
    const size_t kw = pybnn_bgemm_words(k);
    for (size_t i = 0; i < m; i++) {
        for (size_t n = 0; n < cout;) {
            if (n + 4 <= cout) {
                pybnn_fbgemm_row_avx2(a + i * lda, k, pybnn_bgemm_wrow(rows, k, n), kw, 4, out + i * ldo + n);
                n += 4;
            } else {
                pybnn_fbgemm_row_avx2(a + i * lda, k, pybnn_bgemm_wrow(rows, k, n), kw, 1, out + i * ldo + n);
                n += 1;
            }
        }
    }
}
#endif /* PYBNN_X86 */

#if PYBNN_NEON
/* ================================================================ NEON */

/* fbgemm: vtstq marks the lanes whose weight bit is set; their sign bit is flipped. */
static void pybnn_fbgemm_neon(const float *a, size_t lda, size_t m, const uint8_t *rows, size_t k,
                              size_t cout, float *out, size_t ldo) {
    const size_t kw = pybnn_bgemm_words(k);
    const uint32_t bits_init[4] = {1, 2, 4, 8};
    const uint32x4_t sign = vdupq_n_u32(0x80000000u), bits0 = vld1q_u32(bits_init);
    for (size_t i = 0; i < m; i++) {
        const float *arow = a + i * lda;
        for (size_t n = 0; n < cout; n++) {
            const uint8_t *wrow = pybnn_bgemm_wrow(rows, k, n);
            float32x4_t acc = vdupq_n_f32(0.0f);
            for (size_t j = 0; j < kw; j++) {
                const uint32x4_t wv = vdupq_n_u32(pybnn_bgemm_u32(wrow + 4 * j));
                uint32x4_t bits = bits0;
                for (size_t k0 = 32 * j; k0 < PYBNN_MIN(32 * j + 32, k); k0 += 4, bits = vshlq_n_u32(bits, 4)) {
                    float tmp[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                    const float *src = arow + k0;
                    if (k0 + 4 > k) {
                        memcpy(tmp, src, (k - k0) * sizeof(float));
                        src = tmp;
                    }
                    const uint32x4_t msk = vandq_u32(vtstq_u32(wv, bits), sign);
                    const uint32x4_t x = veorq_u32(vreinterpretq_u32_f32(vld1q_f32(src)), msk);
                    acc = vaddq_f32(acc, vreinterpretq_f32_u32(x));
                }
            }
            float s[4];
            vst1q_f32(s, acc);
            out[i * ldo + n] = (s[0] + s[1]) + (s[2] + s[3]);
        }
    }
}

/* ibgemm: with T = sum_{bit=1} a (vtstq byte masks, pairwise-added int8 -> int16 -> int32),
 * sum (a - zp) s = A - 2T - zp (K - 2 popcount).  int16 lanes gain at most 4*128 per word
 * (two pairwise adds of two bytes) and are widened every PYBNN_IBGEMM_FLUSH_NEON words. */
#define PYBNN_IBGEMM_FLUSH_NEON 32
static void pybnn_ibgemm_neon(const int8_t *a, size_t lda, size_t m, const uint8_t *rows,
                              const uint8_t *pops, size_t k, size_t cout, int a_zp, int32_t *out,
                              size_t ldo) {
    const size_t kw = pybnn_bgemm_words(k);
    const uint8_t bitsel_init[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t bitsel = vld1q_u8(bitsel_init);
    for (size_t i = 0; i < m; i++) {
        const int8_t *arow = a + i * lda;
        int8_t tail[32] = {0}; /* a = 0 past K: adds nothing to A, and its bits are 0 */
        memcpy(tail, arow + (k & ~(size_t)31), k & 31);
        const size_t kfull = k / 32;
        int32_t asum = 0;
        for (size_t kk = 0; kk < k; kk++) asum += arow[kk];
        for (size_t n = 0; n < cout; n++) {
            const uint8_t *wrow = pybnn_bgemm_wrow(rows, k, n);
            int16x8_t acc16 = vdupq_n_s16(0);
            int32x4_t acc32 = vdupq_n_s32(0);
            for (size_t j = 0; j < kw; j++) {
                const int8_t *src = j < kfull ? arow + 32 * j : tail;
                const uint32_t word = pybnn_bgemm_u32(wrow + 4 * j);
                for (int h = 0; h < 2; h++) {
                    const uint8x16_t bytes = vcombine_u8(vdup_n_u8((uint8_t)(word >> (16 * h))),
                                                         vdup_n_u8((uint8_t)(word >> (16 * h + 8))));
                    const int8x16_t sel = vandq_s8(vld1q_s8(src + 16 * h), vreinterpretq_s8_u8(vtstq_u8(bytes, bitsel)));
                    acc16 = vpadalq_s8(acc16, sel);
                }
                if (j % PYBNN_IBGEMM_FLUSH_NEON == PYBNN_IBGEMM_FLUSH_NEON - 1 || j == kw - 1) {
                    acc32 = vpadalq_s16(acc32, acc16);
                    acc16 = vdupq_n_s16(0);
                }
            }
            int32_t s[4];
            vst1q_s32(s, acc32);
            const int32_t t = s[0] + s[1] + s[2] + s[3];
            const int32_t pop = (int32_t)pybnn_bgemm_u32(pops + 4 * n);
            out[i * ldo + n] = (int32_t)((uint32_t)asum - 2u * (uint32_t)t -
                                         (uint32_t)a_zp * ((uint32_t)k - 2u * (uint32_t)pop));
        }
    }
}
#endif /* PYBNN_NEON */

/* ================================================================ drivers
 *
 * Variants take the rows (and, for ibgemm, popcounts) of the channel range they compute and
 * its channel count.  The drivers split rows, or, when there are fewer rows than parts
 * (dense layers at small batch), output channels in groups of 4, into up to `threads`
 * contiguous ranges.  Channel ranges start at multiples of 4 and end at a multiple of 4 or
 * at cout, so every channel lands in the same 4-channel group of the SSE4/AVX2 fbgemm as
 * without threads and its float sum is rounded identically: results are bit-identical for
 * every thread count.  `wp` must have passed pybnn_bgemm_check(wp, size, k, cout); k >= 1. */
#define PYBNN_BGEMM_NGROUP 4

typedef void (*pybnn_fbgemm_fn)(const float *a, size_t lda, size_t m, const uint8_t *rows, size_t k,
                                size_t cout, float *out, size_t ldo);
typedef void (*pybnn_ibgemm_fn)(const int8_t *a, size_t lda, size_t m, const uint8_t *rows,
                                const uint8_t *pops, size_t k, size_t cout, int a_zp, int32_t *out,
                                size_t ldo);

static inline pybnn_fbgemm_fn pybnn_fbgemm_pick(int isa, int *used) {
#if PYBNN_NEON
    if (isa >= PYBNN_ISA_NEON) { *used = PYBNN_ISA_NEON; return pybnn_fbgemm_neon; }
#endif
#if PYBNN_X86
    if (isa >= PYBNN_ISA_AVX2 && pybnn_isa_supported(PYBNN_ISA_AVX2)) { *used = PYBNN_ISA_AVX2; return pybnn_fbgemm_avx2; }
    if (isa >= PYBNN_ISA_SSE4 && pybnn_isa_supported(PYBNN_ISA_SSE4)) { *used = PYBNN_ISA_SSE4; return pybnn_fbgemm_sse4; }
#endif
    (void)isa;
    *used = PYBNN_ISA_SCALAR;
    return pybnn_fbgemm_scalar;
}

static inline pybnn_ibgemm_fn pybnn_ibgemm_pick(int isa, int *used) {
#if PYBNN_NEON
    if (isa >= PYBNN_ISA_NEON) { *used = PYBNN_ISA_NEON; return pybnn_ibgemm_neon; }
#endif
#if PYBNN_X86
    if (isa >= PYBNN_ISA_AVX2 && pybnn_isa_supported(PYBNN_ISA_AVX2)) { *used = PYBNN_ISA_AVX2; return pybnn_ibgemm_avx2; }
    if (isa >= PYBNN_ISA_SSE4 && pybnn_isa_supported(PYBNN_ISA_SSE4)) { *used = PYBNN_ISA_SSE4; return pybnn_ibgemm_sse4; }
#endif
    (void)isa;
    *used = PYBNN_ISA_SCALAR;
    return pybnn_ibgemm_scalar;
}

typedef struct {
    pybnn_fbgemm_fn ffn;
    pybnn_ibgemm_fn ifn;
    const void *a;     /* float or int8 rows */
    size_t esize;      /* bytes per activation */
    const uint8_t *rows, *pops;
    size_t lda, m, k, cout, ldo;
    int a_zp, by_rows;
    void *out;         /* float or int32, 4 bytes per element */
} pybnn_bgemm_job;

static void pybnn_bgemm_part(void *ctx, int part, int nparts) {
    const pybnn_bgemm_job *j = (const pybnn_bgemm_job *)ctx;
    size_t r0 = 0, r1 = j->m, c0 = 0, c1 = j->cout, lo, hi;
    if (j->by_rows) {
        pybnn_par_range(j->m, part, nparts, &r0, &r1);
    } else {
        pybnn_par_range((j->cout + PYBNN_BGEMM_NGROUP - 1) / PYBNN_BGEMM_NGROUP, part, nparts, &lo, &hi);
        c0 = lo * PYBNN_BGEMM_NGROUP;
        c1 = PYBNN_MIN(hi * PYBNN_BGEMM_NGROUP, j->cout);
    }
    if (r0 >= r1 || c0 >= c1)
        return;
    const uint8_t *a = (const uint8_t *)j->a + r0 * j->lda * j->esize;
    const uint8_t *rows = pybnn_bgemm_wrow(j->rows, j->k, c0);
    uint8_t *out = (uint8_t *)j->out + (r0 * j->ldo + c0) * 4;
    if (j->ffn)
        j->ffn((const float *)a, j->lda, r1 - r0, rows, j->k, c1 - c0, (float *)out, j->ldo);
    else
        j->ifn((const int8_t *)a, j->lda, r1 - r0, rows, j->pops + 4 * c0, j->k, c1 - c0, j->a_zp,
               (int32_t *)out, j->ldo);
}

static inline void pybnn_bgemm_run(pybnn_bgemm_job *j, int threads, double work) {
    size_t groups = (j->cout + PYBNN_BGEMM_NGROUP - 1) / PYBNN_BGEMM_NGROUP;
    int nparts = pybnn_par_parts(threads, PYBNN_MAX(j->m, groups), work);
    j->by_rows = j->m >= (size_t)nparts * 4 || groups < (size_t)nparts;
    nparts = (int)PYBNN_MIN((size_t)nparts, j->by_rows ? j->m : groups);
    pybnn_par_run(nparts, pybnn_bgemm_part, j);
}

static inline int pybnn_fbgemm(int isa, int threads, const float *a, size_t lda, size_t m,
                               const uint8_t *wp, size_t k, size_t cout, float *out, size_t ldo) {
    int used;
    pybnn_bgemm_job j = {pybnn_fbgemm_pick(isa, &used), NULL, a, sizeof(float),
                         pybnn_bgemm_row(wp, k, 0), NULL, lda, m, k, cout, ldo, 0, 1, out};
    if (m)  /* Work (common.h units): one per 2 float adds. */
        pybnn_bgemm_run(&j, threads, (double)m * (double)cout * (double)k / 2.0);
    return used;
}

static inline int pybnn_ibgemm(int isa, int threads, const int8_t *a, size_t lda, size_t m,
                               const uint8_t *wp, size_t k, size_t cout, int a_zp, int32_t *out,
                               size_t ldo) {
    int used;
    pybnn_bgemm_job j = {NULL, pybnn_ibgemm_pick(isa, &used), a, 1, pybnn_bgemm_row(wp, k, 0),
                         wp + PYBNN_BGEMM_HEADER + cout * pybnn_bgemm_words(k) * 4, lda, m, k, cout,
                         ldo, a_zp, 1, out};
    if (m)  /* Work (common.h units): one per 6 multiply-adds. */
        pybnn_bgemm_run(&j, threads, (double)m * (double)cout * (double)k / 6.0);
    return used;
}

#endif
