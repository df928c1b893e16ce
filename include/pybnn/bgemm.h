/* XNOR-popcount GEMM (binary activations x binary weights): the inner kernel of binary
 * convolutions and dense layers.  Family pybnn_xgemm (scalar, sse4, avx2, avx512, neon);
 * named "x" to stay apart from fbgemm.h's pybnn_bgemm_* (float/int8 activations x binary
 * weights).
 *
 * Contract of pybnn_xgemm_<isa>(a, lda, m, kwords, w, n, kbits, c, ldc):
 *     c[i*ldc + j] = kbits - 2 * popcount(A_i XOR W_j)     for i < m, j < n
 * A_i is the row of kwords uint32 words at a + i*lda (only 4-byte alignment needed), W_j
 * is output channel j of the packed weights below, kbits is the number of real (non
 * padding) bits in a row.  Padding bits are 0 in both A and W, so they never count and
 * the result is the exact +-1 dot product.  Nothing else is read or written.
 *
 * Packed weight layout (what pybnn_xgemm_pack_bits produces and every ISA reads):
 * output channels are grouped in blocks of PYBNN_XGEMM_NR = 8; a row of kwords uint32 is
 * viewed as k64 = ceil(kwords/2) little-endian uint64 (the last one's high half is 0 when
 * kwords is odd).  Block b stores, for each k < k64, the 8 channels' 64-bit words side by
 * side:
 *     uint64 W[cblocks][k64][8],  cblocks = ceil(n/8)
 * i.e. uint32 shape (cblocks, k64, 16) with word 2*r (low) and 2*r+1 (high) for channel
 * 8*b + r.  Channels beyond n in the last block are all zero (computed, never stored).
 * One k-step of a block is one 64-byte line: one zmm register (AVX-512 XORs it with the
 * input word broadcast to 8 lanes: lane = channel, no reduction at the end), two ymm
 * (AVX2), four q registers (NEON) or 8 adjacent uint64 (scalar).
 *
 * Every variant loops output-channel groups outside and rows inside, so a group's weights
 * (k64 * 64 bytes per block) stay in L1 while the rows stream past; callers keep
 * m * kwords * 4 bytes of A cache-sized (see pybnn_bconv2d).
 */
#ifndef PYBNN_BGEMM_H
#define PYBNN_BGEMM_H

#include "pybnn/common.h"

#define PYBNN_XGEMM_NR 8

typedef void (*pybnn_xgemm_fn)(const uint32_t *a, size_t lda, size_t m, size_t kwords,
                               const uint32_t *w, size_t n, int32_t kbits, int32_t *c,
                               size_t ldc);

static inline size_t pybnn_xgemm_k64(size_t kwords) { return (kwords + 1) / 2; }
static inline size_t pybnn_xgemm_cblocks(size_t n) { return (n + PYBNN_XGEMM_NR - 1) / PYBNN_XGEMM_NR; }

/* Number of uint32 in the packed weights of n channels of kwords words. */
static inline size_t pybnn_xgemm_wsize(size_t n, size_t kwords) {
    return pybnn_xgemm_cblocks(n) * pybnn_xgemm_k64(kwords) * 2 * PYBNN_XGEMM_NR;
}

/* Index of word q of channel j's row in the packed weights (k64 steps per block). */
static inline size_t pybnn_xgemm_at(size_t k64, size_t j, size_t q) {
    return ((j / PYBNN_XGEMM_NR) * k64 + q / 2) * 2 * PYBNN_XGEMM_NR + 2 * (j % PYBNN_XGEMM_NR) + q % 2;
}

/* Packs the signs of n channels over `taps` taps of c input channels each into the layout
 * above: channel j's row is, for each tap t, ceil(c/32) words holding input channel ch as bit
 * ch % 32 of word ch / 32 (padding bits 0).  Its sign at (t, ch) is bit j * sn + (t*c + ch) * sk
 * of `bits` (common.h, pybnn_sbit: sn = 1, sk = n for an HWIO kernel).  wp must hold
 * pybnn_xgemm_wsize(n, taps * ceil(c/32)) words.  Blocks of 8 channels outside, so an HWIO
 * kernel's bits are read a byte at a time and each 64-byte line of wp is written whole. */
static void pybnn_xgemm_pack_bits(const uint8_t *bits, size_t sn, size_t sk, size_t n, size_t taps, size_t c,
                                  uint32_t *wp) {
    const size_t words = (c + 31) / 32, k64 = pybnn_xgemm_k64(taps * words);
    memset(wp, 0, pybnn_xgemm_wsize(n, taps * words) * sizeof(uint32_t));
    for (size_t j0 = 0; j0 < n; j0 += PYBNN_XGEMM_NR)
        for (size_t t = 0; t < taps; t++)
            for (size_t ch = 0; ch < c; ch++) {
                uint32_t *w = wp + pybnn_xgemm_at(k64, j0, t * words + ch / 32);
                for (size_t r = 0; r < PYBNN_XGEMM_NR && j0 + r < n; r++)
                    w[2 * r] |= (uint32_t)pybnn_sbit(bits, sn, sk, j0 + r, t * c + ch) << (ch % 32);
            }
}

/* Unaligned little-endian 64-bit load (compiles to one mov). */
static inline uint64_t pybnn_xgemm_load64(const void *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* Writes kbits - 2*pc for the nc <= 4 valid channels of a half block. */
static inline void pybnn_xgemm_store(int32_t *c, size_t nc, int32_t kbits, const uint64_t pc[4]) {
    for (size_t r = 0; r < nc; r++)
        c[r] = kbits - 2 * (int32_t)pc[r];
}

/* ---------------------------------------------------------------- scalar / SSE4 */

/* Rows a .. a+(mr-1)*lda x 4 channels (half a block: wb points at its first channel's
 * word in k-step 0; k-steps are 16 words apart) with 64-bit popcounts.  mr is a
 * compile-time constant after inlining; 2 rows x 4 channels is what fits the 16
 * general-purpose registers of x86-64.  Inlined into the scalar and SSE4 variants:
 * compiled inside the SSE4 one, __builtin_popcountll becomes the POPCNT instruction (the
 * scalar build calls libgcc's portable routine instead; aarch64 uses CNT either way). */
static inline __attribute__((always_inline)) void
pybnn_xgemm_pop_block(const uint32_t *a, size_t lda, size_t kwords, const uint32_t *wb,
                      int32_t kbits, int32_t *c, size_t ldc, size_t nc, const int mr) {
    size_t kfull = kwords / 2;
    uint64_t acc[2][4] = {{0}}; /* mr <= 2 */
    for (size_t k = 0; k < kfull; k++) {
        const uint32_t *wk = wb + k * 16;
        uint64_t w0 = pybnn_xgemm_load64(wk), w1 = pybnn_xgemm_load64(wk + 2);
        uint64_t w2 = pybnn_xgemm_load64(wk + 4), w3 = pybnn_xgemm_load64(wk + 6);
        for (int r = 0; r < mr; r++) {
            uint64_t x = pybnn_xgemm_load64(a + r * lda + 2 * k);
            acc[r][0] += (uint64_t)__builtin_popcountll(x ^ w0);
            acc[r][1] += (uint64_t)__builtin_popcountll(x ^ w1);
            acc[r][2] += (uint64_t)__builtin_popcountll(x ^ w2);
            acc[r][3] += (uint64_t)__builtin_popcountll(x ^ w3);
        }
    }
    if (kwords & 1) { /* odd word count: the last input word alone, high half 0 */
        const uint32_t *wk = wb + kfull * 16;
        for (int r = 0; r < mr; r++) {
            uint64_t x = a[r * lda + 2 * kfull];
            for (int q = 0; q < 4; q++)
                acc[r][q] += (uint64_t)__builtin_popcountll(x ^ pybnn_xgemm_load64(wk + 2 * q));
        }
    }
    for (int r = 0; r < mr; r++)
        pybnn_xgemm_store(c + r * ldc, nc, kbits, acc[r]);
}

/* Half blocks outside, rows inside (2 at a time: each weight load serves both). */
static inline __attribute__((always_inline)) void
pybnn_xgemm_pop(const uint32_t *a, size_t lda, size_t m, size_t kwords, const uint32_t *w,
                size_t n, int32_t kbits, int32_t *c, size_t ldc) {
    size_t k64 = pybnn_xgemm_k64(kwords);
    for (size_t h = 0; h * 4 < n; h++) {
        const uint32_t *wb = w + (h / 2) * k64 * 16 + (h % 2) * 8;
        size_t nc = PYBNN_MIN((size_t)4, n - h * 4);
        int32_t *cc = c + h * 4;
        size_t i = 0;
        for (; i + 2 <= m; i += 2)
            pybnn_xgemm_pop_block(a + i * lda, lda, kwords, wb, kbits, cc + i * ldc, ldc, nc, 2);
        for (; i < m; i++)
            pybnn_xgemm_pop_block(a + i * lda, lda, kwords, wb, kbits, cc + i * ldc, ldc, nc, 1);
    }
}

static void pybnn_xgemm_scalar(const uint32_t *a, size_t lda, size_t m, size_t kwords,
                               const uint32_t *w, size_t n, int32_t kbits, int32_t *c,
                               size_t ldc) {
    pybnn_xgemm_pop(a, lda, m, kwords, w, n, kbits, c, ldc);
}

#if PYBNN_X86
PYBNN_TARGET_SSE4 static void pybnn_xgemm_sse4(const uint32_t *a, size_t lda, size_t m,
                                               size_t kwords, const uint32_t *w, size_t n,
                                               int32_t kbits, int32_t *c, size_t ldc) {
    pybnn_xgemm_pop(a, lda, m, kwords, w, n, kbits, c, ldc);
}

/* ---------------------------------------------------------------- AVX2
 * Without a vector popcount, bytes are counted by two 16-entry nibble lookups (vpshufb) and
 * summed in bytes before vpsadbw widens them to the 64-bit lanes (one per channel).  Two
 * tile kernels, chosen by row length:
 *   - short rows (k64 < PYBNN_XGEMM_AVX2_HS_K64): 3 rows x 8 channels, every XOR result
 *     counted by lookup (xor, 2 and, shift, 2 vpshufb, 2 adds per 4 channels and k-step);
 *   - long rows: 1 row x 4 channels with a Harley-Seal carry-save adder over groups of 8
 *     k-steps: 7 full adders (5 logic ops each) fold 8 XOR results into ones/twos/fours
 *     and one "eights" vector, the only one counted by lookup.  ~6 instead of ~8 ops per
 *     vector, but the adder state takes 3 registers per accumulator (no room for more
 *     rows) and each tile ends by counting ones/twos/fours, which short rows cannot
 *     amortize.
 * Measured inside this GEMM (Sapphire Rapids core, Gops, GEMM on the im2col matrix of the
 * daBNN shapes, k64 in brackets): lookup 3x8 / Harley-Seal 1x4 / scalar POPCNT 2x4 =
 * 5x5_256 [100] 674/739/457, 3x3_64 [9] 637/481/372, 3x3_128 [18] 658/592/457,
 * 3x3_256 [36] 667/696/456, 3x3_512 [72] 672/734/456, dense 4096 [64] 473/542/345. */

#define PYBNN_XGEMM_AVX2_HS_K64 32

PYBNN_TARGET_AVX2 static inline __m256i pybnn_popcnt8_avx2(__m256i x, __m256i lut, __m256i m4) {
    __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(x, m4));
    __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(x, 4), m4));
    return _mm256_add_epi8(lo, hi);
}

#define PYBNN_AVX2_NIBBLE_LUT                                                                     \
    _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, \
                     2, 3, 2, 3, 3, 4)

/* kbits - 2 * count of the 4 channels of a 64-bit-lane vector -> c[0 .. nc-1]. */
PYBNN_TARGET_AVX2 static inline void pybnn_xgemm_avx2_store4(int32_t *c, __m256i sum, int32_t kbits, size_t nc) {
    /* counts fit in 32 bits: gather the low halves of the 4 lanes */
    const __m256i evens = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    __m128i pc = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(sum, evens));
    __m128i res = _mm_sub_epi32(_mm_set1_epi32(kbits), _mm_slli_epi32(pc, 1));
    if (nc >= 4) {
        _mm_storeu_si128((__m128i *)c, res);
    } else {
        int32_t tmp[4];
        _mm_storeu_si128((__m128i *)tmp, res);
        memcpy(c, tmp, nc * sizeof(int32_t));
    }
}

/* One k-step of the lookup tile: input word q of each row (64 bits, or 32 when `odd`: the
 * last word of an odd count, high half 0) against the block's k-step at wk. */
PYBNN_TARGET_AVX2 static inline __attribute__((always_inline)) void
pybnn_xgemm_avx2_lut_step(__m256i bytes[][2], const uint32_t *a, size_t lda, size_t q, const uint32_t *wk,
                          __m256i lut, __m256i m4, const int mr, const int odd) {
    __m256i w0 = _mm256_loadu_si256((const __m256i *)wk), w1 = _mm256_loadu_si256((const __m256i *)(wk + 8));
    for (int r = 0; r < mr; r++) {
        const uint32_t *p = a + r * lda + q;
        __m256i x = _mm256_set1_epi64x((long long)(odd ? (uint64_t)p[0] : pybnn_xgemm_load64(p)));
        bytes[r][0] = _mm256_add_epi8(bytes[r][0], pybnn_popcnt8_avx2(_mm256_xor_si256(x, w0), lut, m4));
        bytes[r][1] = _mm256_add_epi8(bytes[r][1], pybnn_popcnt8_avx2(_mm256_xor_si256(x, w1), lut, m4));
    }
}

/* Lookup tile: rows a .. a+(mr-1)*lda x one block of 8 channels (wb: its k-step 0); byte
 * sums over runs of up to 31 k-steps (31 * 8 = 248 < 256).  mr <= 3 is a compile-time
 * constant after inlining. */
PYBNN_TARGET_AVX2 static inline __attribute__((always_inline)) void
pybnn_xgemm_avx2_lut(const uint32_t *a, size_t lda, size_t kwords, const uint32_t *wb,
                     int32_t kbits, int32_t *c, size_t ldc, size_t nc, const int mr) {
    const __m256i lut = PYBNN_AVX2_NIBBLE_LUT, m4 = _mm256_set1_epi8(0x0f), zero = _mm256_setzero_si256();
    size_t k64 = pybnn_xgemm_k64(kwords), kfull = kwords / 2;
    __m256i sum[3][2], bytes[3][2];
    for (int r = 0; r < mr; r++)
        sum[r][0] = sum[r][1] = zero;
    for (size_t k0 = 0; k0 < k64; k0 += 31) {
        size_t kend = PYBNN_MIN(k64, k0 + 31);
        for (int r = 0; r < mr; r++)
            bytes[r][0] = bytes[r][1] = zero;
        for (size_t k = k0; k < PYBNN_MIN(kend, kfull); k++)
            pybnn_xgemm_avx2_lut_step(bytes, a, lda, 2 * k, wb + k * 16, lut, m4, mr, 0);
        if (kend > kfull) /* the odd last word */
            pybnn_xgemm_avx2_lut_step(bytes, a, lda, 2 * kfull, wb + kfull * 16, lut, m4, mr, 1);
        for (int r = 0; r < mr; r++) {
            sum[r][0] = _mm256_add_epi64(sum[r][0], _mm256_sad_epu8(bytes[r][0], zero));
            sum[r][1] = _mm256_add_epi64(sum[r][1], _mm256_sad_epu8(bytes[r][1], zero));
        }
    }
    for (int r = 0; r < mr; r++) {
        pybnn_xgemm_avx2_store4(c + r * ldc, sum[r][0], kbits, nc);
        if (nc > 4)
            pybnn_xgemm_avx2_store4(c + r * ldc + 4, sum[r][1], kbits, nc - 4);
    }
}

/* Full adder of three vectors: per bit, l = a ^ b ^ c (the sum) and h = majority (the carry). */
#define PYBNN_CSA(h, l, a, b, c)                                                                  \
    do {                                                                                          \
        __m256i u_ = _mm256_xor_si256(a, b), c_ = (c);                                            \
        h = _mm256_or_si256(_mm256_and_si256(a, b), _mm256_and_si256(u_, c_));                    \
        l = _mm256_xor_si256(u_, c_);                                                             \
    } while (0)

/* Harley-Seal tile: one row x 4 channels (half a block: wb points at its first channel's
 * word in k-step 0).  Each group of 8 k-steps is added into the bit-sliced counters
 * ones, twos, fours (weights 1, 2, 4) and produces an "eights" vector whose byte counts
 * accumulate for up to 31 groups (31 * 8 = 248 < 256). */
PYBNN_TARGET_AVX2 static inline __attribute__((always_inline)) void
pybnn_xgemm_avx2_hs(const uint32_t *a, size_t kwords, const uint32_t *wb, int32_t kbits,
                    int32_t *c, size_t nc) {
    const __m256i lut = PYBNN_AVX2_NIBBLE_LUT, m4 = _mm256_set1_epi8(0x0f), zero = _mm256_setzero_si256();
    size_t kfull = kwords / 2, k = 0;
    __m256i ones = zero, twos = zero, fours = zero, eights = zero, sum = zero;
#define PYBNN_V(kk) _mm256_xor_si256(_mm256_set1_epi64x((long long)pybnn_xgemm_load64(a + 2 * (kk))), \
                                     _mm256_loadu_si256((const __m256i *)(wb + (kk) * 16)))
    for (int groups = 0; k + 8 <= kfull; k += 8) {
        __m256i ta, tb, fa, fb, e;
        PYBNN_CSA(ta, ones, ones, PYBNN_V(k), PYBNN_V(k + 1));
        PYBNN_CSA(tb, ones, ones, PYBNN_V(k + 2), PYBNN_V(k + 3));
        PYBNN_CSA(fa, twos, twos, ta, tb);
        PYBNN_CSA(ta, ones, ones, PYBNN_V(k + 4), PYBNN_V(k + 5));
        PYBNN_CSA(tb, ones, ones, PYBNN_V(k + 6), PYBNN_V(k + 7));
        PYBNN_CSA(fb, twos, twos, ta, tb);
        PYBNN_CSA(e, fours, fours, fa, fb);
        eights = _mm256_add_epi8(eights, pybnn_popcnt8_avx2(e, lut, m4));
        if (++groups == 31) {
            sum = _mm256_add_epi64(sum, _mm256_slli_epi64(_mm256_sad_epu8(eights, zero), 3));
            eights = zero;
            groups = 0;
        }
    }
    sum = _mm256_add_epi64(sum, _mm256_slli_epi64(_mm256_sad_epu8(eights, zero), 3));
    sum = _mm256_add_epi64(sum, _mm256_slli_epi64(_mm256_sad_epu8(pybnn_popcnt8_avx2(fours, lut, m4), zero), 2));
    sum = _mm256_add_epi64(sum, _mm256_slli_epi64(_mm256_sad_epu8(pybnn_popcnt8_avx2(twos, lut, m4), zero), 1));
    __m256i bytes = pybnn_popcnt8_avx2(ones, lut, m4); /* + fewer than 8 steps left: < 256 */
    for (; k < kfull; k++)
        bytes = _mm256_add_epi8(bytes, pybnn_popcnt8_avx2(PYBNN_V(k), lut, m4));
#undef PYBNN_V
    if (kwords & 1) { /* odd word count: the last input word alone, high half 0 */
        __m256i x = _mm256_xor_si256(_mm256_set1_epi64x((long long)a[2 * kfull]),
                                     _mm256_loadu_si256((const __m256i *)(wb + kfull * 16)));
        bytes = _mm256_add_epi8(bytes, pybnn_popcnt8_avx2(x, lut, m4));
    }
    pybnn_xgemm_avx2_store4(c, _mm256_add_epi64(sum, _mm256_sad_epu8(bytes, zero)), kbits, nc);
}
#undef PYBNN_CSA

PYBNN_TARGET_AVX2 static void pybnn_xgemm_avx2(const uint32_t *a, size_t lda, size_t m,
                                               size_t kwords, const uint32_t *w, size_t n,
                                               int32_t kbits, int32_t *c, size_t ldc) {
    size_t k64 = pybnn_xgemm_k64(kwords);
    if (k64 >= PYBNN_XGEMM_AVX2_HS_K64) {
        for (size_t h = 0; h * 4 < n; h++) { /* half blocks outside, rows inside */
            const uint32_t *wb = w + (h / 2) * k64 * 16 + (h % 2) * 8;
            size_t nc = PYBNN_MIN((size_t)4, n - h * 4);
            for (size_t i = 0; i < m; i++)
                pybnn_xgemm_avx2_hs(a + i * lda, kwords, wb, kbits, c + i * ldc + h * 4, nc);
        }
        return;
    }
    for (size_t cb = 0; cb * 8 < n; cb++) {
        const uint32_t *wb = w + cb * k64 * 16;
        size_t nc = PYBNN_MIN((size_t)8, n - cb * 8);
        int32_t *cc = c + cb * 8;
        size_t i = 0;
        for (; i + 3 <= m; i += 3)
            pybnn_xgemm_avx2_lut(a + i * lda, lda, kwords, wb, kbits, cc + i * ldc, ldc, nc, 3);
        for (; i < m; i++)
            pybnn_xgemm_avx2_lut(a + i * lda, lda, kwords, wb, kbits, cc + i * ldc, ldc, nc, 1);
    }
}

/* ---------------------------------------------------------------- AVX-512
 * VPOPCNTQ counts each 64-bit lane directly: per k-step and block, one XOR of the weight
 * line with the input word (broadcast to 8 lanes by the load unit), one VPOPCNTQ, one
 * 64-bit add, each lane accumulating one output channel: 3 ALU operations per 512 bit-MACs,
 * all on the two 512-bit ports.  A tile is MR rows x NB blocks (up to 6 x 32 channels: 24
 * accumulators + 4 weight registers of the 32), so each weight load serves MR rows and
 * each input broadcast NB blocks.  Measured 2.15-2.35 binary Tops on one Sapphire Rapids
 * core on the daBNN shapes' GEMMs (AVX2: 0.64-0.74). */

#define PYBNN_XGEMM_AVX512_MR 6
#define PYBNN_XGEMM_AVX512_NB 4

/* Rows a + min(r, mr-1)*lda for r < MR (rows past mr repeat the last one and are never
 * stored: one tile shape serves the remainder rows) x NB blocks starting at wb (blocks
 * bstride words apart); nc <= 8*NB valid channels.  MR and NB are compile-time constants
 * after inlining. */
PYBNN_TARGET_AVX512 static inline __attribute__((always_inline)) void
pybnn_xgemm_avx512_tile(const uint32_t *a, size_t lda, size_t mr, size_t kwords,
                        const uint32_t *wb, size_t bstride, int32_t kbits, int32_t *c,
                        size_t ldc, size_t nc, const int MR, const int NB, const int ODD) {
    const uint32_t *ar[PYBNN_XGEMM_AVX512_MR];
    __m512i acc[PYBNN_XGEMM_AVX512_MR][PYBNN_XGEMM_AVX512_NB];
    for (int r = 0; r < MR; r++) {
        ar[r] = a + PYBNN_MIN((size_t)r, mr - 1) * lda;
        for (int b = 0; b < NB; b++)
            acc[r][b] = _mm512_setzero_si512();
    }
    size_t kfull = kwords / 2;
    for (size_t k = 0; k < kfull; k++) {
        __m512i wv[PYBNN_XGEMM_AVX512_NB];
        for (int b = 0; b < NB; b++) {
            wv[b] = _mm512_loadu_si512((const void *)(wb + b * bstride + k * 16));
            /* Few rows (dense layers at batch 1-3) do too little per weight line to hide its
             * trip from L2: ask for it 8 k-steps ahead (+12-35% on the dense shapes whose
             * weights fit L2; past the block's end it only touches the next block). */
            if (MR <= 3)
                _mm_prefetch((const char *)(wb + b * bstride + (k + 8) * 16), _MM_HINT_T0);
        }
        for (int r = 0; r < MR; r++) {
            __m512i x = _mm512_set1_epi64((long long)pybnn_xgemm_load64(ar[r] + 2 * k));
            for (int b = 0; b < NB; b++)
                acc[r][b] = _mm512_add_epi64(acc[r][b], _mm512_popcnt_epi64(_mm512_xor_si512(x, wv[b])));
        }
    }
    if (ODD) { /* odd word count: the last input word alone, high half 0 */
        __m512i wv[PYBNN_XGEMM_AVX512_NB];
        for (int b = 0; b < NB; b++)
            wv[b] = _mm512_loadu_si512((const void *)(wb + b * bstride + kfull * 16));
        for (int r = 0; r < MR; r++) {
            __m512i x = _mm512_set1_epi64((long long)ar[r][2 * kfull]);
            for (int b = 0; b < NB; b++)
                acc[r][b] = _mm512_add_epi64(acc[r][b], _mm512_popcnt_epi64(_mm512_xor_si512(x, wv[b])));
        }
    }
    /* Counts fit in 32 bits: two blocks' low halves make one vector of 16 channels. */
    const __m512i lows = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i kb = _mm512_set1_epi32(kbits);
    for (int r = 0; r < MR; r++) {
        if ((size_t)r >= mr)
            break;
        for (int b = 0; b < NB; b += 2) {
            size_t ch = (size_t)b * 8;
            if (ch >= nc)
                break;
            __m512i pc = b + 1 < NB ? _mm512_permutex2var_epi32(acc[r][b], lows, acc[r][b + 1])
                                    : _mm512_castsi256_si512(_mm512_cvtepi64_epi32(acc[r][b]));
            __m512i res = _mm512_sub_epi32(kb, _mm512_slli_epi32(pc, 1));
            size_t left = nc - ch;
            __mmask16 keep = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
            _mm512_mask_storeu_epi32(c + r * ldc + ch, keep, res);
        }
    }
}

/* A tile of nb blocks; MR and ODD are compile-time constants after inlining. */
PYBNN_TARGET_AVX512 static inline __attribute__((always_inline)) void
pybnn_xgemm_avx512_nb(const uint32_t *a, size_t lda, size_t mr, size_t kwords, const uint32_t *wb,
                      size_t bstride, int32_t kbits, int32_t *c, size_t ldc, size_t nc, size_t nb,
                      const int MR, const int ODD) {
    switch (nb) {
    case 4: pybnn_xgemm_avx512_tile(a, lda, mr, kwords, wb, bstride, kbits, c, ldc, nc, MR, 4, ODD); break;
    case 3: pybnn_xgemm_avx512_tile(a, lda, mr, kwords, wb, bstride, kbits, c, ldc, nc, MR, 3, ODD); break;
    case 2: pybnn_xgemm_avx512_tile(a, lda, mr, kwords, wb, bstride, kbits, c, ldc, nc, MR, 2, ODD); break;
    default: pybnn_xgemm_avx512_tile(a, lda, mr, kwords, wb, bstride, kbits, c, ldc, nc, MR, 1, ODD); break;
    }
}

PYBNN_TARGET_AVX512 static void pybnn_xgemm_avx512(const uint32_t *a, size_t lda, size_t m,
                                                   size_t kwords, const uint32_t *w, size_t n,
                                                   int32_t kbits, int32_t *c, size_t ldc) {
    size_t bstride = pybnn_xgemm_k64(kwords) * 16, cblocks = pybnn_xgemm_cblocks(n);
    int odd = (int)(kwords & 1);
    for (size_t cb = 0; cb < cblocks; cb += PYBNN_XGEMM_AVX512_NB) {
        size_t nb = PYBNN_MIN((size_t)PYBNN_XGEMM_AVX512_NB, cblocks - cb);
        size_t nc = PYBNN_MIN((size_t)8 * PYBNN_XGEMM_AVX512_NB, n - cb * 8);
        const uint32_t *wb = w + cb * bstride;
        for (size_t i = 0; i < m; i += PYBNN_XGEMM_AVX512_MR) {
            size_t mr = PYBNN_MIN((size_t)PYBNN_XGEMM_AVX512_MR, m - i);
            const uint32_t *ai = a + i * lda;
            int32_t *ci = c + i * ldc + cb * 8;
            /* Few rows (dense layers at batch 1, the last rows of a chunk): a 1-row or
             * 3-row tile instead of recomputing a 6-row one.  Odd word counts get tiles of
             * their own: the extra step after the k-loop made GCC keep the 6-row tile's
             * accumulators on the stack too. */
            if (mr == 1) {
                if (odd) pybnn_xgemm_avx512_nb(ai, lda, mr, kwords, wb, bstride, kbits, ci, ldc, nc, nb, 1, 1);
                else pybnn_xgemm_avx512_nb(ai, lda, mr, kwords, wb, bstride, kbits, ci, ldc, nc, nb, 1, 0);
            } else if (mr <= 3) {
                if (odd) pybnn_xgemm_avx512_nb(ai, lda, mr, kwords, wb, bstride, kbits, ci, ldc, nc, nb, 3, 1);
                else pybnn_xgemm_avx512_nb(ai, lda, mr, kwords, wb, bstride, kbits, ci, ldc, nc, nb, 3, 0);
            } else {
                if (odd) pybnn_xgemm_avx512_nb(ai, lda, mr, kwords, wb, bstride, kbits, ci, ldc, nc, nb, 6, 1);
                else pybnn_xgemm_avx512_nb(ai, lda, mr, kwords, wb, bstride, kbits, ci, ldc, nc, nb, 6, 0);
            }
        }
    }
}
#endif /* PYBNN_X86 */

#if PYBNN_NEON
/* ---------------------------------------------------------------- NEON
 * A block's k-step is four q registers of two channels' 64-bit words each; the input word
 * is loaded into both halves of one register.  Per row, block and k-step: 4 EOR, 4 CNT
 * (per-byte counts) and 4 UADALP (pairwise add of the byte counts into uint16 lanes), i.e.
 * 12 instructions per 512 binary multiply-adds, with no widening until the end of a run
 * of PYBNN_XGEMM_NEON_CHUNK k-steps (a uint16 lane gains at most 2 * 8 per step).  UADALP
 * costs what a byte ADD costs on the Pi's cores in this mix (Cortex-A72/A76: one per cycle
 * on the second SIMD pipe, next to the EOR/CNT on both), and saves the byte sums' flush
 * every 31 steps.  A tile is MR rows x one block of 8 channels: each weight register
 * serves MR rows.  aarch64 (32 vector registers): 4 rows, 16 sums + 4 weights + 4 inputs;
 * armv7 (16): 2 rows, 8 + 4 + 2. */

#if defined(__aarch64__)
#define PYBNN_XGEMM_NEON_MR 4
#else
#define PYBNN_XGEMM_NEON_MR 2
#endif
#define PYBNN_XGEMM_NEON_CHUNK 4095

/* 8 bytes at p (4-byte aligned at least) in both halves of a q register.  aarch64: LD1R,
 * which needs no alignment and runs on the load pipe only (written out: GCC turns
 * vld1q_dup_u64 into a load and a DUP, one more SIMD instruction per row and k-step);
 * armv7's would need a :64 alignment hint, so a byte load and a register copy there. */
static inline uint8x16_t pybnn_xgemm_neon_dup64(const uint32_t *p) {
#if defined(__aarch64__)
    uint8x16_t x;
    __asm__("ld1r {%0.2d}, [%1]" : "=w"(x) : "r"(p), "m"(*(const uint32_t(*)[2])p));
    return x;
#else
    const uint8x8_t x = vld1_u8((const uint8_t *)p);
    return vcombine_u8(x, x);
#endif
}

/* k-step k of rows a .. a+(MR-1)*lda against the block at wb; ODD: the odd last word of a
 * row, alone (high half 0: reading its neighbour could run off the array). */
static inline __attribute__((always_inline)) void
pybnn_xgemm_neon_step(uint16x8_t acc[][4], const uint32_t *a, size_t lda, const uint32_t *wb, size_t k,
                      const int MR, const int ODD) {
    const uint8_t *wk = (const uint8_t *)(wb + k * 16);
    const uint8x16_t w0 = vld1q_u8(wk), w1 = vld1q_u8(wk + 16), w2 = vld1q_u8(wk + 32), w3 = vld1q_u8(wk + 48);
    for (int r = 0; r < MR; r++) {
        const uint8x16_t x = ODD ? vreinterpretq_u8_u64(vdupq_n_u64(a[r * lda + 2 * k]))
                                 : pybnn_xgemm_neon_dup64(a + r * lda + 2 * k);
        acc[r][0] = vpadalq_u8(acc[r][0], vcntq_u8(veorq_u8(x, w0)));
        acc[r][1] = vpadalq_u8(acc[r][1], vcntq_u8(veorq_u8(x, w1)));
        acc[r][2] = vpadalq_u8(acc[r][2], vcntq_u8(veorq_u8(x, w2)));
        acc[r][3] = vpadalq_u8(acc[r][3], vcntq_u8(veorq_u8(x, w3)));
    }
}

/* Rows a .. a+(MR-1)*lda x the block at wb (its k-step 0), nc <= 8 valid channels.  MR is
 * a compile-time constant after inlining. */
static inline __attribute__((always_inline)) void
pybnn_xgemm_neon_tile(const uint32_t *a, size_t lda, size_t kwords, const uint32_t *wb, int32_t kbits,
                      int32_t *c, size_t ldc, size_t nc, const int MR) {
    const size_t k64 = pybnn_xgemm_k64(kwords), kfull = kwords / 2;
    uint32_t tot[PYBNN_XGEMM_NEON_MR][8];
    memset(tot, 0, sizeof tot);
    for (size_t k0 = 0; k0 < k64; k0 += PYBNN_XGEMM_NEON_CHUNK) {
        const size_t kend = PYBNN_MIN(k64, k0 + PYBNN_XGEMM_NEON_CHUNK);
        uint16x8_t acc[PYBNN_XGEMM_NEON_MR][4];
        for (int r = 0; r < MR; r++)
            for (int q = 0; q < 4; q++) acc[r][q] = vdupq_n_u16(0);
        for (size_t k = k0; k < PYBNN_MIN(kend, kfull); k++)
            pybnn_xgemm_neon_step(acc, a, lda, wb, k, MR, 0);
        if (kend > kfull)
            pybnn_xgemm_neon_step(acc, a, lda, wb, kfull, MR, 1);
        for (int r = 0; r < MR; r++)
            for (int q = 0; q < 4; q++) { /* uint16 lanes 0-3: channel 2q, 4-7: channel 2q+1 */
                const uint64x2_t s = vpaddlq_u32(vpaddlq_u16(acc[r][q]));
                tot[r][2 * q] += (uint32_t)vgetq_lane_u64(s, 0);
                tot[r][2 * q + 1] += (uint32_t)vgetq_lane_u64(s, 1);
            }
    }
    for (int r = 0; r < MR; r++)
        for (size_t j = 0; j < nc; j++)
            c[r * ldc + j] = kbits - 2 * (int32_t)tot[r][j];
}

static void pybnn_xgemm_neon(const uint32_t *a, size_t lda, size_t m, size_t kwords,
                             const uint32_t *w, size_t n, int32_t kbits, int32_t *c, size_t ldc) {
    const size_t k64 = pybnn_xgemm_k64(kwords), mr = PYBNN_XGEMM_NEON_MR;
    for (size_t cb = 0; cb * 8 < n; cb++) { /* blocks outside: a block's weights stay in L1 */
        const uint32_t *wb = w + cb * k64 * 16;
        const size_t nc = PYBNN_MIN((size_t)8, n - cb * 8);
        int32_t *cc = c + cb * 8;
        size_t i = 0;
        for (; i + mr <= m; i += mr)
            pybnn_xgemm_neon_tile(a + i * lda, lda, kwords, wb, kbits, cc + i * ldc, ldc, nc, PYBNN_XGEMM_NEON_MR);
        for (; i < m; i++)
            pybnn_xgemm_neon_tile(a + i * lda, lda, kwords, wb, kbits, cc + i * ldc, ldc, nc, 1);
    }
}
#endif /* PYBNN_NEON */

/* Rows of the build's tallest GEMM tile (x86: AVX-512's 6, a multiple of the other x86
 * variants' 1-3 rows; ARM: NEON's, a multiple of the scalar variant's 2): drivers give
 * parts and chunks whole tiles of rows, so no tile runs part-empty but the last. */
#if PYBNN_NEON
#define PYBNN_XGEMM_TILE_ROWS PYBNN_XGEMM_NEON_MR
#else
#define PYBNN_XGEMM_TILE_ROWS 6
#endif

/* The variant for `isa` (walking down to scalar); *used receives its ISA number. */
static pybnn_xgemm_fn pybnn_xgemm_pick(int isa, int *used) {
#if PYBNN_NEON
    if (isa >= PYBNN_ISA_NEON) { *used = PYBNN_ISA_NEON; return pybnn_xgemm_neon; }
#endif
#if PYBNN_X86
    if (isa >= PYBNN_ISA_AVX512) { *used = PYBNN_ISA_AVX512; return pybnn_xgemm_avx512; }
    if (isa >= PYBNN_ISA_AVX2) { *used = PYBNN_ISA_AVX2; return pybnn_xgemm_avx2; }
    if (isa >= PYBNN_ISA_SSE4) { *used = PYBNN_ISA_SSE4; return pybnn_xgemm_sse4; }
#endif
    (void)isa;
    *used = PYBNN_ISA_SCALAR;
    return pybnn_xgemm_scalar;
}

static int pybnn_xgemm(int isa, const uint32_t *a, size_t lda, size_t m, size_t kwords,
                       const uint32_t *w, size_t n, int32_t kbits, int32_t *c, size_t ldc) {
    int used;
    pybnn_xgemm_pick(isa, &used)(a, lda, m, kwords, w, n, kbits, c, ldc);
    return used;
}


#endif /* PYBNN_BGEMM_H */
