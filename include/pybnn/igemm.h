/* igemm / ibgemm: int8 activations x int8 or binary (+-1) weights -> exact int32.
 *
 *     igemm:          out[m, n] = sum_k (a[m, k] - a_zp) * w[n, k]    w int8, 1 byte per weight
 *     ibgemm:         out[m, n] = sum_k (a[m, k] - a_zp) * s[n, k]    s = +-1, 1 bit per weight
 *
 * a is (M, K) int8 with row stride lda; out is (M, cout) int32 with row stride ldo.  Both are
 * exact: every kernel accumulates in int32 (or in int16 for a proven bounded number of steps)
 * with wrapping adds, and the true result fits in int32 for the K the Python layer allows
 * (|sum| <= 255 * 128 * K < 2^31 for K <= 65536; 255 * K for binary weights, K <= 2^23).
 * (The int8 x binary functions are named pybnn_ibgemm_*: fbgemm.h still has pybnn_ibgemm_*.)
 *
 * Both packed layouts group output channels into panels of 16 and K into quads of 4: the
 * operand shape of one AVX-512 VNNI vpdpbusd (16 int32 lanes, each the dot product of 4
 * unsigned bytes with 4 signed bytes).
 *
 * igemm (pybnn_igemm_pack):
 *     bytes [0, 64)   header: uint32 magic "PBQ8", K, cout, then 52 zero bytes (little endian;
 *                     common.h, pybnn_pack_header)
 *     then            ceil(cout/16) panels of KQ = ceil(K/4) blocks of 64 bytes; byte 4c + j of
 *                     block q of panel p is w[16p + c, 4q + j] (int8), 0 where the channel or
 *                     k does not exist
 *     then            ceil(cout/16)*16 int32 wsum[n] = sum_k w[n, k] (0 past cout)
 *     The AVX-512 kernel loads whole 64-byte blocks: with the panels 64-byte aligned (the
 *     buffer on a multiple of 64, as pybnn allocates it and model files place it) it runs
 *     5-10% faster.
 *
 * ibgemm (pybnn_ibgemm_pack_bits):
 *     bytes [0, 64)   header: uint32 magic "PBQ1", K, cout, then 52 zero bytes
 *     then            ceil(cout/16) panels of KQ little-endian uint64 words; bit
 *                     32*(c%2) + 8*j + c/2 of word q of panel p is 1 iff s[16p + c, 4q + j] = -1
 *                     (0 where the channel or k does not exist)
 *     then            ceil(cout/16)*16 int32 wsum[n] = sum_k s[n, k] = K - 2 * (number of -1)
 *
 * The AVX-512 kernels feed vpdpbusd the activations as unsigned bytes u = a + 128 (a ^ 0x80)
 * and the weights as signed bytes, and fold the shift out per channel at the end:
 *     sum_k (a - zp) w = sum_k u w - (128 + zp) * wsum[n].
 * The narrower variants multiply sign-extended int16 (or pmaddubsw u by bit masks, below)
 * and subtract zp * wsum.
 *
 * Why that bit order: a 64-bit word broadcast to every 64-bit lane puts, in the 32-bit lane of
 * channel c, the word's half c%2; byte j of that lane holds the bits of k = 4q + j of the 8
 * channels of parity c%2, and channel c is bit c/2 in it.  So one AND (or vptestmb) with a
 * constant byte pattern 1 << (c/2) and one compare turn the word into per-byte weight masks in
 * exactly the 16 channels x 4 k byte order above, at any vector width (16, 32 or 64 bytes),
 * without a shuffle.
 *
 * Variants:
 *     scalar  direct sum of (a - zp) * w, the reference
 *     sse4    rows in blocks of 6 sign-extended to int16 in an L1 buffer, pmaddwd with the
 *             sign-extended weights; ibgemm: pmaddubsw of a + 128 with the bit masks
 *     avx2    the same at 256 bits
 *     avx512  vpdpbusd, 6 rows x 64 channels per micro-kernel; ibgemm expands the bits to +-1
 *             bytes in registers (once per block of rows, kept in L1) for the same kernel
 *     neon    vmull_s8 + vpadal, 2 rows (armv7: 1) x 16 channels; ibgemm 1 row
 *     neon_dotprod  SDOT (ARMv8.2 dot product, chosen at run time), 4 rows x 16 channels
 */
#ifndef PYBNN_IGEMM_H
#define PYBNN_IGEMM_H

#include "pybnn/common.h"

#include <stdlib.h> /* aligned_alloc, free */

#define PYBNN_IGEMM_MAGIC 0x38514250u /* "PBQ8" */
#define PYBNN_IBGEMM_MAGIC 0x31514250u  /* "PBQ1" */
#define PYBNN_IGEMM_HEADER PYBNN_PACK_HEADER
#define PYBNN_IGEMM_NP 16 /* output channels per panel */

static inline size_t pybnn_igemm_kq(size_t k) { return (k + 3) / 4; }
static inline size_t pybnn_igemm_npanels(size_t cout) { return (cout + PYBNN_IGEMM_NP - 1) / PYBNN_IGEMM_NP; }

/* Bytes per panel: KQ blocks of 64 bytes (int8) or KQ words of 8 bytes (binary). */
static inline size_t pybnn_igemm_panel_bytes(size_t k, int binary) { return pybnn_igemm_kq(k) * (binary ? 8 : 64); }

static inline size_t pybnn_igemm_packed_size_any(size_t k, size_t cout, int binary) {
    const size_t np = pybnn_igemm_npanels(cout);
    return PYBNN_IGEMM_HEADER + np * pybnn_igemm_panel_bytes(k, binary) + np * PYBNN_IGEMM_NP * 4;
}
static inline size_t pybnn_igemm_packed_size(size_t k, size_t cout) { return pybnn_igemm_packed_size_any(k, cout, 0); }
static inline size_t pybnn_ibgemm_packed_size(size_t k, size_t cout) { return pybnn_igemm_packed_size_any(k, cout, 1); }

/* Unaligned little-endian loads: the packed buffer and the activations need no alignment. */
static inline uint32_t pybnn_igemm_load_u32(const void *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}
static inline uint64_t pybnn_igemm_load_u64(const void *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}
static inline int32_t pybnn_igemm_load_i32(const void *p) { return (int32_t)pybnn_igemm_load_u32(p); }

/* 1 if `wp` (of `size` bytes) was packed by pybnn_igemm_pack (binary = 0) or
 * pybnn_ibgemm_pack_bits (binary = 1) for this K and cout.  Only the header and size are
 * checked: whatever the panels and wsums hold, the kernels read inside the buffer (wsums only
 * enter wrapping int32 arithmetic), so a corrupt buffer gives wrong numbers, never a fault. */
static inline int pybnn_igemm_check_any(const uint8_t *wp, size_t size, size_t k, size_t cout, int binary) {
    return pybnn_pack_header_ok(wp, size, pybnn_igemm_packed_size_any(k, cout, binary),
                                binary ? PYBNN_IBGEMM_MAGIC : PYBNN_IGEMM_MAGIC, k, cout);
}
static inline int pybnn_igemm_check(const uint8_t *wp, size_t size, size_t k, size_t cout) {
    return pybnn_igemm_check_any(wp, size, k, cout, 0);
}
static inline int pybnn_ibgemm_check(const uint8_t *wp, size_t size, size_t k, size_t cout) {
    return pybnn_igemm_check_any(wp, size, k, cout, 1);
}

static inline const uint8_t *pybnn_igemm_panels(const uint8_t *wp) { return wp + PYBNN_IGEMM_HEADER; }
static inline const uint8_t *pybnn_igemm_wsums(const uint8_t *wp, size_t k, size_t cout, int binary) {
    return wp + PYBNN_IGEMM_HEADER + pybnn_igemm_npanels(cout) * pybnn_igemm_panel_bytes(k, binary);
}

/* w[n, kk] = w[n * sn + kk * sk] (n < cout, kk < k): sn = k, sk = 1 for a (cout, k) row-major
 * matrix; sn = 1, sk = cout for an HWIO kernel.  dst: pybnn_igemm_packed_size(k, cout) bytes. */
static inline void pybnn_igemm_pack(const int8_t *w, ptrdiff_t sn, ptrdiff_t sk, size_t k, size_t cout,
                                    uint8_t *dst) {
    const size_t pb = pybnn_igemm_panel_bytes(k, 0);
    memset(dst, 0, pybnn_igemm_packed_size(k, cout));
    pybnn_pack_header(dst, PYBNN_IGEMM_MAGIC, k, cout);
    uint8_t *panels = dst + PYBNN_IGEMM_HEADER, *sums = (uint8_t *)pybnn_igemm_wsums(dst, k, cout, 0);
    for (size_t n = 0; n < cout; n++) {
        uint8_t *col = panels + (n / PYBNN_IGEMM_NP) * pb + (n % PYBNN_IGEMM_NP) * 4;
        int32_t sum = 0;
        for (size_t kk = 0; kk < k; kk++) {
            const int8_t v = w[(ptrdiff_t)n * sn + (ptrdiff_t)kk * sk];
            col[(kk / 4) * 64 + kk % 4] = (uint8_t)v;
            sum += v;
        }
        memcpy(sums + n * 4, &sum, 4);
    }
}

/* Bit of channel c (within its panel) and k offset j (within its quad) in a panel word. */
static inline unsigned pybnn_ibgemm_bit(size_t c, size_t j) { return (unsigned)(32 * (c % 2) + 8 * j + c / 2); }

/* Signs s[n, kk] = bit n * sn + kk * sk of `bits` (common.h, pybnn_sbit; 1 = -1) for n < cout,
 * kk < k; dst: pybnn_ibgemm_packed_size(k, cout) bytes. */
static inline void pybnn_ibgemm_pack_bits(const uint8_t *bits, size_t sn, size_t sk, size_t k, size_t cout,
                                          uint8_t *dst) {
    const size_t pb = pybnn_igemm_panel_bytes(k, 1);
    memset(dst, 0, pybnn_ibgemm_packed_size(k, cout));
    pybnn_pack_header(dst, PYBNN_IBGEMM_MAGIC, k, cout);
    uint8_t *panels = dst + PYBNN_IGEMM_HEADER, *sums = (uint8_t *)pybnn_igemm_wsums(dst, k, cout, 1);
    for (size_t n = 0; n < cout; n++) {
        uint8_t *panel = panels + (n / PYBNN_IGEMM_NP) * pb;
        const size_t c = n % PYBNN_IGEMM_NP;
        int32_t sum = 0;
        for (size_t kk = 0; kk < k; kk++) {
            const unsigned neg = pybnn_sbit(bits, sn, sk, n, kk);
            const unsigned bit = pybnn_ibgemm_bit(c, kk % 4);
            panel[(kk / 4) * 8 + bit / 8] |= (uint8_t)(neg << (bit % 8));
            sum += neg ? -1 : 1;
        }
        memcpy(sums + n * 4, &sum, 4);
    }
}

/* Wrapping int32 arithmetic for the corrections (the true results fit; the steps may not). */
static inline int32_t pybnn_igemm_wrap(int64_t v) { return (int32_t)(uint32_t)(uint64_t)v; }

/* Per-channel corrections of channels [n, n + cnt): mul * wsum[n ..]. */
static inline void pybnn_igemm_colsub(const uint8_t *sums, size_t n, size_t cnt, int32_t mul, int32_t *dst) {
    for (size_t c = 0; c < cnt; c++)
        dst[c] = pybnn_igemm_wrap((int64_t)mul * pybnn_igemm_load_i32(sums + 4 * (n + c)));
}

/* Blocking: n items in nb = ceil(n / bmax) near-equal blocks (sizes differ by at most 1), so
 * no block is a short remainder (49 rows in blocks of 6 are 4 x 5 + 5 x 6, not 8 x 6 + 1). */
static inline size_t pybnn_igemm_nblocks(size_t n, size_t bmax) { return (n + bmax - 1) / bmax; }
static inline size_t pybnn_igemm_bstart(size_t n, size_t nb, size_t b) { return n * b / nb; }

/* ---------------------------------------------------------------- scalar
 *
 * Variants take the panels and wsums of the channel range they compute (starting at a
 * panel boundary) and its channel count. */

static void pybnn_igemm_scalar(const int8_t *a, size_t lda, size_t m, const uint8_t *panels,
                               const uint8_t *sums, size_t k, size_t cout, int a_zp, int32_t *out,
                               size_t ldo) {
    (void)sums;
    const size_t pb = pybnn_igemm_panel_bytes(k, 0);
    for (size_t i = 0; i < m; i++) {
        for (size_t n = 0; n < cout; n++) {
            const int8_t *col = (const int8_t *)panels + (n / PYBNN_IGEMM_NP) * pb + (n % PYBNN_IGEMM_NP) * 4;
            int32_t acc = 0;
            for (size_t kk = 0; kk < k; kk++)
                acc += ((int32_t)a[i * lda + kk] - a_zp) * col[(kk / 4) * 64 + kk % 4];
            out[i * ldo + n] = acc;
        }
    }
}

static void pybnn_ibgemm_scalar(const int8_t *a, size_t lda, size_t m, const uint8_t *panels,
                              const uint8_t *sums, size_t k, size_t cout, int a_zp, int32_t *out,
                              size_t ldo) {
    (void)sums;
    const size_t pb = pybnn_igemm_panel_bytes(k, 1);
    for (size_t i = 0; i < m; i++) {
        for (size_t n = 0; n < cout; n++) {
            const uint8_t *panel = panels + (n / PYBNN_IGEMM_NP) * pb;
            int32_t acc = 0;
            for (size_t kk = 0; kk < k; kk++) {
                /* x * (+-1) without a multiply: (x ^ -bit) + bit is x or -x. */
                const int32_t x = (int32_t)a[i * lda + kk] - a_zp;
                const int32_t bit =
                    (int32_t)((pybnn_igemm_load_u64(panel + (kk / 4) * 8) >> pybnn_ibgemm_bit(n % PYBNN_IGEMM_NP, kk % 4)) & 1);
                acc += (x ^ -bit) + bit;
            }
            out[i * ldo + n] = acc;
        }
    }
}

#if PYBNN_X86
/* ---------------------------------------------------------------- x86 building blocks */

/* acc + pmaddwd(w, b), acc + pmaddubsw(u, m) and acc + vpdpbusd(u, s), with the accumulator
 * tied to one register by inline assembly: GCC 12 gives each new accumulator value a fresh
 * register and copies it back (with the intrinsics the tiles ran 2-3x slower, and spilled). */
/* (SSE's 2-operand forms overwrite w / u: the compiler copies them first only if they are
 * used again.) */
PYBNN_TARGET_SSE4 static inline __attribute__((always_inline)) __m128i pybnn_igemm_madd_sse4(__m128i acc, __m128i w,
                                                                                            __m128i b) {
    __asm__("pmaddwd %2, %1\n\tpaddd %1, %0" : "+x"(acc), "+x"(w) : "x"(b));
    return acc;
}
PYBNN_TARGET_SSE4 static inline __attribute__((always_inline)) __m128i pybnn_ibgemm_maddubs_sse4(__m128i acc, __m128i u,
                                                                                              __m128i m) {
    __asm__("pmaddubsw %2, %1\n\tpaddw %1, %0" : "+x"(acc), "+x"(u) : "x"(m));
    return acc;
}
PYBNN_TARGET_AVX2 static inline __attribute__((always_inline)) __m256i pybnn_igemm_madd_avx2(__m256i acc, __m256i w,
                                                                                            __m256i b) {
    __m256i t;
    __asm__("vpmaddwd %3, %2, %1\n\tvpaddd %1, %0, %0" : "+x"(acc), "=&x"(t) : "x"(w), "x"(b));
    return acc;
}
PYBNN_TARGET_AVX2 static inline __attribute__((always_inline)) __m256i pybnn_ibgemm_maddubs_avx2(__m256i acc, __m256i u,
                                                                                              __m256i m) {
    __m256i t;
    __asm__("vpmaddubsw %3, %2, %1\n\tvpaddw %1, %0, %0" : "+x"(acc), "=&x"(t) : "x"(u), "x"(m));
    return acc;
}
PYBNN_TARGET_AVX512 static inline __attribute__((always_inline)) __m512i pybnn_igemm_dpbusd(__m512i acc, __m512i u,
                                                                                           __m512i s) {
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u), "v"(s));
    return acc;
}

/* GCC also keeps an array of vector accumulators in memory even when every index is a
 * constant, so the tiles name each accumulator (acc<row><col>) and expand per-row and
 * per-column code with these; conditions on the constant mr / nz drop the unused ones.  Each
 * tile shape is its own non-inlined function, picked from a table, so that its register
 * allocation does not depend on the driver around it (inlined, GCC spilled accumulators). */
#define PYBNN_ROWS6(X) X(0) X(1) X(2) X(3) X(4) X(5)
#define PYBNN_COLS2(X, r) X(r, 0) X(r, 1)
#define PYBNN_COLS4(X, r) X(r, 0) X(r, 1) X(r, 2) X(r, 3)

/* ---------------------------------------------------------------- SSE4 / AVX2
 *
 * Rows go in blocks of PYBNN_IGEMM_MR, K in blocks of at most PYBNN_IGEMM_KC.  Each (row
 * block, K block) is first copied into a small L1 buffer in the form the multiply wants
 * (igemm: int16, zero-padded to whole quads; ibgemm: u = a + 128 bytes, padded with 0, and
 * the row sums of u), then every channel tile sweeps that buffer with its accumulators in
 * registers.  Partial sums of a K block go through `out` (or a local tile).
 *
 * igemm, per quad q and 4 channels: the 16 weight bytes (4 channels x 4 k) sign-extend to
 * int16, the row's 4 activations broadcast as int16 to every 64-bit lane, and pmaddwd gives 8
 * int32 (channel, k pair) sums, |v| <= 2 * 128 * 128, exact.  The two pairs of a channel are
 * added once per tile (phaddd).  Result: sum a w - zp wsum.
 *
 * ibgemm, per quad and 8 channels (4 on SSE4): u (4 bytes) broadcast, and the bit masks
 * m = 0 / -1 (weight -1) of 8 channels x 4 k; pmaddubsw(u, m) = -(u0 m0 + u1 m1) per int16
 * lane is in [-510, 0], never saturates, and is added in int16 for at most
 * PYBNN_IBGEMM_FLUSH = 64 quads (64 * 510 = 32640 <= 32767) before pmaddwd by 1 widens the
 * lanes to int32.  With T = that sum, U = sum_k u and S = wsum:
 *     sum (a - zp) s = sum u s - (128 + zp) S = U + 2T - (128 + zp) S.
 */
#define PYBNN_IGEMM_MR 6 /* rows per block */
#define PYBNN_IGEMM_KC 1024 /* K per block: the int16 buffer is at most 6 x 1024 x 2 = 12 KB */
#define PYBNN_IBGEMM_FLUSH 64 /* quads between int16 -> int32 widenings (bound above) */

/* Copies rows [0, mr) of a, columns [k0, k0 + 4 nq) (real up to k), into buf (row stride
 * PYBNN_IGEMM_KC int16), sign-extended, zero past k. */
PYBNN_TARGET_SSE4 static inline __attribute__((always_inline)) void
pybnn_igemm_widen_sse4(const int8_t *a, size_t lda, int mr, size_t k0, size_t nq, size_t k, int16_t *buf) {
    const size_t len = PYBNN_MIN(4 * nq, k - k0);
    for (int r = 0; r < mr; r++) {
        const int8_t *src = a + (size_t)r * lda + k0;
        int16_t *dst = buf + (size_t)r * PYBNN_IGEMM_KC;
        /* 16 values per step: may write up to 12 int16 past the quads, which the row stride
         * has room for (KC is a multiple of 16). */
        for (size_t x = 0; x < 4 * nq; x += 16) {
            __m128i v;
            if (x + 16 <= len) {
                v = _mm_loadu_si128((const __m128i *)(src + x));
            } else {
                int8_t tmp[16] = {0};
                if (x < len)
                    memcpy(tmp, src + x, len - x);
                v = _mm_loadu_si128((const __m128i *)tmp);
            }
            _mm_storeu_si128((__m128i *)(dst + x), _mm_cvtepi8_epi16(v));
            _mm_storeu_si128((__m128i *)(dst + x + 8), _mm_cvtepi8_epi16(_mm_srli_si128(v, 8)));
        }
    }
}

/* Like pybnn_igemm_widen_sse4 for ibgemm: u = a + 128 bytes (0 past k), usum[r] += sum u. */
PYBNN_TARGET_SSE4 static inline __attribute__((always_inline)) void
pybnn_ibgemm_flip_sse4(const int8_t *a, size_t lda, int mr, size_t k0, size_t nq, size_t k, uint8_t *buf,
                     int32_t *usum) {
    const size_t len = PYBNN_MIN(4 * nq, k - k0);
    const __m128i flip = _mm_set1_epi8((char)0x80), zero = _mm_setzero_si128();
    for (int r = 0; r < mr; r++) {
        const int8_t *src = a + (size_t)r * lda + k0;
        uint8_t *dst = buf + (size_t)r * PYBNN_IGEMM_KC;
        __m128i s = zero;
        for (size_t x = 0; x < 4 * nq; x += 16) {
            __m128i u;
            if (x + 16 <= len) {
                u = _mm_xor_si128(_mm_loadu_si128((const __m128i *)(src + x)), flip);
            } else {
                int8_t tmp[16];
                memset(tmp, -128, 16); /* u = 0 */
                if (x < len)
                    memcpy(tmp, src + x, len - x);
                u = _mm_xor_si128(_mm_loadu_si128((const __m128i *)tmp), flip);
            }
            s = _mm_add_epi64(s, _mm_sad_epu8(u, zero));
            _mm_storeu_si128((__m128i *)(dst + x), u);
        }
        usum[r] += (int32_t)(_mm_cvtsi128_si64(s) + _mm_extract_epi64(s, 1));
    }
}

/* The tiles compute mr rows x ng groups of channels starting at channel n0 (SSE4: groups of 4
 * channels, AVX2: groups of 8; 2 accumulators per group and row).  Blocks of 3-6 rows use
 * one group; blocks of 1-2 rows use 2-4 groups, so that several weight streams are in
 * flight: at batch 1 every weight comes from memory once, and one stream per tile ran 25-35%
 * slower than the previous kernels there.  Group g reads its weight bytes at wg[g]. */
#define PYBNN_GROUPS4(X, r) X(r, 0) X(r, 1) X(r, 2) X(r, 3)
#define PYBNN_IGEMM_WGROUPS(CG)                                                                    \
    const int8_t *wg[4] = {w, w, w, w};                                                            \
    for (int g = 0; g < ng; g++) {                                                                 \
        const size_t ch = n0 + (size_t)(CG) * g;                                                   \
        wg[g] = w + (ch / 16) * pb + (ch % 16) * 4;                                                \
    }

/* mr rows x ng groups of 4 channels: accumulators (2 channels x 2 k pairs) acc<row><group>_0/1. */
PYBNN_TARGET_SSE4 static inline __attribute__((always_inline)) void
pybnn_igemm_tile_SSE4(const int16_t *buf, const int8_t *w, size_t n0, size_t pb, size_t nq, int32_t *c,
                      size_t ldc, int nc, int accumulate, const int32_t *csub, const int mr, const int ng) {
    PYBNN_IGEMM_WGROUPS(4)
#define PYBNN_DECL(r, g) __m128i acc##r##g##_0 = _mm_setzero_si128(), acc##r##g##_1 = acc##r##g##_0;
#define PYBNN_DECL_ROW(r) PYBNN_GROUPS4(PYBNN_DECL, r)
#define PYBNN_MAC(r, g)                                                                            \
    if (ng > g) {                                                                                  \
        acc##r##g##_0 = pybnn_igemm_madd_sse4(acc##r##g##_0, w##g##_0, b);                         \
        acc##r##g##_1 = pybnn_igemm_madd_sse4(acc##r##g##_1, w##g##_1, b);                         \
    }
#define PYBNN_LOADW(g)                                                                             \
    __m128i w##g##_0 = _mm_setzero_si128(), w##g##_1 = w##g##_0;                                   \
    if (ng > g) {                                                                                  \
        w##g##_0 = _mm_cvtepi8_epi16(_mm_loadl_epi64((const __m128i *)(wg[g] + 64 * q)));          \
        w##g##_1 = _mm_cvtepi8_epi16(_mm_loadl_epi64((const __m128i *)(wg[g] + 64 * q + 8)));      \
    }
#define PYBNN_ROW(r)                                                                               \
    if (mr > r) {                                                                                  \
        const __m128i b = _mm_set1_epi64x((long long)pybnn_igemm_load_u64(buf + r * PYBNN_IGEMM_KC + 4 * q)); \
        PYBNN_GROUPS4(PYBNN_MAC, r)                                                                \
    }
#define PYBNN_OUT(r, g)                                                                            \
    if (mr > r && ng > g && nc > 4 * g) {                                                          \
        const int cnt = PYBNN_MIN(4, nc - 4 * g);                                                  \
        int32_t res[4];                                                                            \
        __m128i v = _mm_hadd_epi32(acc##r##g##_0, acc##r##g##_1);                                  \
        if (accumulate) {                                                                          \
            memcpy(res, c + r * ldc + 4 * g, cnt * sizeof(int32_t));                               \
            v = _mm_add_epi32(v, _mm_loadu_si128((const __m128i *)res));                           \
        }                                                                                          \
        if (csub)                                                                                  \
            v = _mm_sub_epi32(v, _mm_loadu_si128((const __m128i *)(csub + 4 * g)));                \
        _mm_storeu_si128((__m128i *)res, v);                                                       \
        memcpy(c + r * ldc + 4 * g, res, cnt * sizeof(int32_t));                                   \
    }
#define PYBNN_OUT_ROW(r) PYBNN_GROUPS4(PYBNN_OUT, r)
    PYBNN_ROWS6(PYBNN_DECL_ROW)
    for (size_t q = 0; q < nq; q++) {
        PYBNN_LOADW(0) PYBNN_LOADW(1) PYBNN_LOADW(2) PYBNN_LOADW(3)
        PYBNN_ROWS6(PYBNN_ROW)
    }
    PYBNN_ROWS6(PYBNN_OUT_ROW)
#undef PYBNN_DECL
#undef PYBNN_DECL_ROW
#undef PYBNN_MAC
#undef PYBNN_LOADW
#undef PYBNN_ROW
#undef PYBNN_OUT
#undef PYBNN_OUT_ROW
}

/* mr rows x ng groups of 8 channels: accumulators (4 channels x 2 k pairs) acc<row><group>_0/1. */
PYBNN_TARGET_AVX2 static inline __attribute__((always_inline)) void
pybnn_igemm_tile_AVX2(const int16_t *buf, const int8_t *w, size_t n0, size_t pb, size_t nq, int32_t *c,
                      size_t ldc, int nc, int accumulate, const int32_t *csub, const int mr, const int ng) {
    PYBNN_IGEMM_WGROUPS(8)
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
#define PYBNN_DECL(r, g) __m256i acc##r##g##_0 = _mm256_setzero_si256(), acc##r##g##_1 = acc##r##g##_0;
#define PYBNN_DECL_ROW(r) PYBNN_GROUPS4(PYBNN_DECL, r)
#define PYBNN_MAC(r, g)                                                                            \
    if (ng > g) {                                                                                  \
        acc##r##g##_0 = pybnn_igemm_madd_avx2(acc##r##g##_0, w##g##_0, b);                         \
        acc##r##g##_1 = pybnn_igemm_madd_avx2(acc##r##g##_1, w##g##_1, b);                         \
    }
#define PYBNN_LOADW(g)                                                                             \
    __m256i w##g##_0 = _mm256_setzero_si256(), w##g##_1 = w##g##_0;                               \
    if (ng > g) {                                                                                  \
        w##g##_0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(wg[g] + 64 * q)));       \
        w##g##_1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(wg[g] + 64 * q + 16)));  \
    }
#define PYBNN_ROW(r)                                                                               \
    if (mr > r) {                                                                                  \
        const __m256i b = _mm256_set1_epi64x((long long)pybnn_igemm_load_u64(buf + r * PYBNN_IGEMM_KC + 4 * q)); \
        PYBNN_GROUPS4(PYBNN_MAC, r)                                                                \
    }
    /* hadd: [c0 c1 c4 c5 | c2 c3 c6 c7]; the 64-bit permute puts them in order. */
#define PYBNN_OUT(r, g)                                                                            \
    if (mr > r && ng > g && nc > 8 * g) {                                                          \
        const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32(nc - 8 * g), lanes);             \
        __m256i v = _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc##r##g##_0, acc##r##g##_1), _MM_SHUFFLE(3, 1, 2, 0)); \
        if (accumulate)                                                                            \
            v = _mm256_add_epi32(v, _mm256_maskload_epi32(c + r * ldc + 8 * g, live));             \
        if (csub)                                                                                  \
            v = _mm256_sub_epi32(v, _mm256_loadu_si256((const __m256i *)(csub + 8 * g)));          \
        _mm256_maskstore_epi32(c + r * ldc + 8 * g, live, v);                                      \
    }
#define PYBNN_OUT_ROW(r) PYBNN_GROUPS4(PYBNN_OUT, r)
    PYBNN_ROWS6(PYBNN_DECL_ROW)
    for (size_t q = 0; q < nq; q++) {
        PYBNN_LOADW(0) PYBNN_LOADW(1) PYBNN_LOADW(2) PYBNN_LOADW(3)
        PYBNN_ROWS6(PYBNN_ROW)
    }
    PYBNN_ROWS6(PYBNN_OUT_ROW)
#undef PYBNN_DECL
#undef PYBNN_DECL_ROW
#undef PYBNN_MAC
#undef PYBNN_LOADW
#undef PYBNN_ROW
#undef PYBNN_OUT
#undef PYBNN_OUT_ROW
}
#undef PYBNN_IGEMM_WGROUPS

typedef void (*pybnn_igemm_tile16_fn)(const int16_t *buf, const int8_t *w, size_t n0, size_t pb, size_t nq,
                                      int32_t *c, size_t ldc, int nc, int accumulate, const int32_t *csub);
#define PYBNN_IGEMM_TILE_FN(ISA, MR, NG)                                                             \
    PYBNN_TARGET_##ISA static __attribute__((noinline)) void pybnn_igemm_tile_##ISA##_##MR##_##NG(   \
        const int16_t *buf, const int8_t *w, size_t n0, size_t pb, size_t nq, int32_t *c, size_t ldc, \
        int nc, int accumulate, const int32_t *csub) {                                               \
        pybnn_igemm_tile_##ISA(buf, w, n0, pb, nq, c, ldc, nc, accumulate, csub, MR, NG);            \
    }
/* [0..5]: 1-6 rows x 1 group, [6]: 2 x 2, [7]: 1 x 4, [8]: 1 x 2 (pybnn_igemm_tile_index). */
#define PYBNN_IGEMM_TILE_TABLE(ISA)                                                                  \
    PYBNN_IGEMM_TILE_FN(ISA, 1, 1) PYBNN_IGEMM_TILE_FN(ISA, 2, 1) PYBNN_IGEMM_TILE_FN(ISA, 3, 1)     \
    PYBNN_IGEMM_TILE_FN(ISA, 4, 1) PYBNN_IGEMM_TILE_FN(ISA, 5, 1) PYBNN_IGEMM_TILE_FN(ISA, 6, 1)     \
    PYBNN_IGEMM_TILE_FN(ISA, 2, 2) PYBNN_IGEMM_TILE_FN(ISA, 1, 4) PYBNN_IGEMM_TILE_FN(ISA, 1, 2)     \
    static const pybnn_igemm_tile16_fn pybnn_igemm_tiles_##ISA[9] = {                                \
        pybnn_igemm_tile_##ISA##_1_1, pybnn_igemm_tile_##ISA##_2_1, pybnn_igemm_tile_##ISA##_3_1,    \
        pybnn_igemm_tile_##ISA##_4_1, pybnn_igemm_tile_##ISA##_5_1, pybnn_igemm_tile_##ISA##_6_1,    \
        pybnn_igemm_tile_##ISA##_2_2, pybnn_igemm_tile_##ISA##_1_4, pybnn_igemm_tile_##ISA##_1_2};
PYBNN_IGEMM_TILE_TABLE(SSE4)
PYBNN_IGEMM_TILE_TABLE(AVX2)

/* Groups per tile for a block of mr rows and its index in the tile tables. */
static inline int pybnn_igemm_groups(int mr) { return mr == 1 ? 4 : mr == 2 ? 2 : 1; }
static inline int pybnn_igemm_tile_index(int mr, int ng) {
    return ng == 1 ? mr - 1 : ng == 4 ? 7 : mr == 2 ? 6 : 8;
}

/* The SSE4 / AVX2 igemm: row blocks, K blocks widened into buf, tiles of ng groups of CG
 * channels (fewer groups at the end, where the panels run out: a group never reads past them). */
#define PYBNN_IGEMM_DRIVER(ISA, CG)                                                                  \
    const size_t kq = pybnn_igemm_kq(k), pb = pybnn_igemm_panel_bytes(k, 0);                       \
    const size_t cpad = pybnn_igemm_npanels(cout) * PYBNN_IGEMM_NP;                                 \
    int16_t buf[PYBNN_IGEMM_MR * PYBNN_IGEMM_KC + 16];                                              \
    int32_t csub[4 * (CG)];                                                                         \
    const size_t nib = pybnn_igemm_nblocks(m, PYBNN_IGEMM_MR);                                      \
    for (size_t ib = 0; ib < nib; ib++) {                                                           \
        const size_t i0 = pybnn_igemm_bstart(m, nib, ib);                                           \
        const int mr = (int)(pybnn_igemm_bstart(m, nib, ib + 1) - i0);                              \
        /* a single row may use the whole buffer: fewer partial sums through memory */              \
        const size_t nkb = pybnn_igemm_nblocks(kq, PYBNN_IGEMM_KC / 4 * (mr == 1 ? PYBNN_IGEMM_MR : 1)); \
        for (size_t kb = 0; kb < nkb; kb++) {                                                       \
            const size_t q0 = pybnn_igemm_bstart(kq, nkb, kb), nq = pybnn_igemm_bstart(kq, nkb, kb + 1) - q0; \
            const int last = kb == nkb - 1;                                                         \
            pybnn_igemm_widen_sse4(a + i0 * lda, lda, mr, 4 * q0, nq, k, buf);                      \
            for (size_t n0 = 0; n0 < cout;) {                                                       \
                int ng = pybnn_igemm_groups(mr);                                                    \
                while (ng > 1 && n0 + (size_t)(CG) * ng > cpad)                                     \
                    ng /= 2;                                                                        \
                const size_t nt = (size_t)(CG) * ng;                                                \
                if (last)                                                                           \
                    pybnn_igemm_colsub(sums, n0, nt, a_zp, csub);                                   \
                pybnn_igemm_tiles_##ISA[pybnn_igemm_tile_index(mr, ng)](                            \
                    buf, (const int8_t *)panels + q0 * 64, n0, pb, nq, out + i0 * ldo + n0, ldo,    \
                    (int)PYBNN_MIN(nt, cout - n0), kb > 0, last ? csub : NULL);                     \
                n0 += nt;                                                                           \
            }                                                                                       \
        }                                                                                           \
    }

PYBNN_TARGET_SSE4 static void pybnn_igemm_sse4(const int8_t *a, size_t lda, size_t m, const uint8_t *panels,
                                               const uint8_t *sums, size_t k, size_t cout, int a_zp,
                                               int32_t *out, size_t ldo) {
    PYBNN_IGEMM_DRIVER(SSE4, 4)
}

PYBNN_TARGET_AVX2 static void pybnn_igemm_avx2(const int8_t *a, size_t lda, size_t m, const uint8_t *panels,
                                               const uint8_t *sums, size_t k, size_t cout, int a_zp,
                                               int32_t *out, size_t ldo) {
    PYBNN_IGEMM_DRIVER(AVX2, 8)
}
#undef PYBNN_IGEMM_DRIVER

/* Bit selectors: a 64-bit lane of the broadcast word holds 2 channels (c, c + 1, c even) and
 * needs bit c/2 of every byte, so the selector of the vector whose first channel is c0 is
 * 0x0101..01 << (c0/2 + lane).  SSE4: 4 channels 4g .. 4g+3. */
#define PYBNN_IBGEMM_BYTES 0x0101010101010101ull
PYBNN_TARGET_SSE4 static inline __m128i pybnn_ibgemm_sel_sse4(int g) {
    return _mm_set_epi64x((long long)(PYBNN_IBGEMM_BYTES << (2 * g + 1)), (long long)(PYBNN_IBGEMM_BYTES << (2 * g)));
}

#define PYBNN_IBGEMM_MR_SSE4 4

/* mr rows x 8 channels (channel groups 2h, 2h+1 of the panel) over nq quads, into the local
 * int32 tile ct[mr][8], which the caller initialised. */
PYBNN_TARGET_SSE4 static inline __attribute__((always_inline)) void
pybnn_ibgemm_tile_SSE4(const uint8_t *buf, const uint8_t *bits, size_t nq, int h, int32_t ct[][16],
                     const int mr) {
    const __m128i s0 = pybnn_ibgemm_sel_sse4(2 * h), s1 = pybnn_ibgemm_sel_sse4(2 * h + 1), ones = _mm_set1_epi16(1);
#define PYBNN_DECL(r, z) __m128i acc##r##z = _mm_setzero_si128();
#define PYBNN_DECL_ROW(r) PYBNN_COLS2(PYBNN_DECL, r)
#define PYBNN_MAC(r, z) acc##r##z = pybnn_ibgemm_maddubs_sse4(acc##r##z, u, m##z);
#define PYBNN_ROW(r)                                                                               \
    if (mr > r) {                                                                                  \
        const __m128i u = _mm_set1_epi32(pybnn_igemm_load_i32(buf + r * PYBNN_IGEMM_KC + 4 * q));  \
        PYBNN_COLS2(PYBNN_MAC, r)                                                                  \
    }
#define PYBNN_FLUSH(r, z)                                                                          \
    if (mr > r) {                                                                                  \
        int32_t *t = &ct[r][4 * z];                                                                \
        _mm_storeu_si128((__m128i *)t, _mm_add_epi32(_mm_loadu_si128((const __m128i *)t), _mm_madd_epi16(acc##r##z, ones))); \
        acc##r##z = _mm_setzero_si128();                                                           \
    }
#define PYBNN_FLUSH_ROW(r) PYBNN_COLS2(PYBNN_FLUSH, r)
    PYBNN_ROWS6(PYBNN_DECL_ROW)
    for (size_t q0 = 0; q0 < nq; q0 += PYBNN_IBGEMM_FLUSH) {
        const size_t q1 = PYBNN_MIN(nq, q0 + PYBNN_IBGEMM_FLUSH);
        for (size_t q = q0; q < q1; q++) {
            const __m128i wv = _mm_set1_epi64x((long long)pybnn_igemm_load_u64(bits + 8 * q));
            const __m128i m0 = _mm_cmpeq_epi8(_mm_and_si128(wv, s0), s0);
            const __m128i m1 = _mm_cmpeq_epi8(_mm_and_si128(wv, s1), s1);
            PYBNN_ROWS6(PYBNN_ROW)
        }
        PYBNN_ROWS6(PYBNN_FLUSH_ROW)
    }
#undef PYBNN_DECL
#undef PYBNN_DECL_ROW
#undef PYBNN_MAC
#undef PYBNN_ROW
#undef PYBNN_FLUSH
#undef PYBNN_FLUSH_ROW
}

typedef void (*pybnn_ibgemm_tile_fn)(const uint8_t *buf, const uint8_t *bits, size_t nq, int h, int32_t ct[][16]);
#define PYBNN_IBGEMM_TILE_FN(ISA, MR)                                                                  \
    PYBNN_TARGET_##ISA static __attribute__((noinline)) void pybnn_ibgemm_tile_##ISA##_##MR(           \
        const uint8_t *buf, const uint8_t *bits, size_t nq, int h, int32_t ct[][16]) {               \
        pybnn_ibgemm_tile_##ISA(buf, bits, nq, h, ct, MR);                                             \
    }
#define PYBNN_IBGEMM_TILE_TABLE(ISA)                                                                   \
    PYBNN_IBGEMM_TILE_FN(ISA, 1) PYBNN_IBGEMM_TILE_FN(ISA, 2) PYBNN_IBGEMM_TILE_FN(ISA, 3)                 \
    PYBNN_IBGEMM_TILE_FN(ISA, 4) PYBNN_IBGEMM_TILE_FN(ISA, 5) PYBNN_IBGEMM_TILE_FN(ISA, 6)                 \
    static const pybnn_ibgemm_tile_fn pybnn_ibgemm_tiles_##ISA[6] = {                                    \
        pybnn_ibgemm_tile_##ISA##_1, pybnn_ibgemm_tile_##ISA##_2, pybnn_ibgemm_tile_##ISA##_3,             \
        pybnn_ibgemm_tile_##ISA##_4, pybnn_ibgemm_tile_##ISA##_5, pybnn_ibgemm_tile_##ISA##_6};

/* Shared K-block loop of the SSE4 and AVX2 ibgemm: tile(buf, bits, nq, h, ct, mr) computes
 * 16 channels (AVX2, h = 0) or 8 (SSE4, h = 0/1 for the panel halves) into ct. */
#define PYBNN_IBGEMM_DRIVER(ISA, MR, NT)                                                      \
    const size_t kq = pybnn_igemm_kq(k), pb = pybnn_igemm_panel_bytes(k, 1);                      \
    uint8_t buf[MR * PYBNN_IGEMM_KC + 16];                                                         \
    int32_t usum[MR];                                                                              \
    int32_t ct[MR][16];                                                                            \
    const size_t nib = pybnn_igemm_nblocks(m, MR), nkb = pybnn_igemm_nblocks(kq, PYBNN_IGEMM_KC / 4); \
    for (size_t ib = 0; ib < nib; ib++) {                                                          \
        const size_t i0 = pybnn_igemm_bstart(m, nib, ib);                                          \
        const int mr = (int)(pybnn_igemm_bstart(m, nib, ib + 1) - i0);                             \
        memset(usum, 0, sizeof usum);                                                              \
        for (size_t kb = 0; kb < nkb; kb++) {                                                      \
            const size_t q0 = pybnn_igemm_bstart(kq, nkb, kb);                                     \
            const size_t nq = pybnn_igemm_bstart(kq, nkb, kb + 1) - q0;                            \
            const int last = kb == nkb - 1;                                                        \
            pybnn_ibgemm_flip_sse4(a + i0 * lda, lda, mr, 4 * q0, nq, k, buf, usum);               \
            for (size_t n0 = 0; n0 < cout; n0 += NT) {                                             \
                const int nc = (int)PYBNN_MIN(NT, cout - n0);                                      \
                const uint8_t *bits = panels + (n0 / 16) * pb + q0 * 8;                            \
                int32_t *c = out + i0 * ldo + n0;                                                  \
                for (int r = 0; r < mr; r++) {                                                     \
                    memset(ct[r], 0, sizeof ct[r]);                                                \
                    if (q0 > 0)                                                                    \
                        memcpy(ct[r], c + r * ldo, nc * sizeof(int32_t));                          \
                }                                                                                  \
                pybnn_ibgemm_tiles_##ISA[mr - 1](buf, bits, nq, (int)(n0 % 16) / NT, ct);             \
                for (int r = 0; r < mr; r++) {                                                     \
                    if (last)                                                                      \
                        for (int x = 0; x < nc; x++) /* U + 2T - (128 + zp) S */                   \
                            ct[r][x] = pybnn_igemm_wrap((int64_t)usum[r] + 2 * (int64_t)ct[r][x] - \
                                                        (int64_t)(128 + a_zp) *                    \
                                                            pybnn_igemm_load_i32(sums + 4 * (n0 + x))); \
                    memcpy(c + r * ldo, ct[r], nc * sizeof(int32_t));                              \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
    }

PYBNN_IBGEMM_TILE_TABLE(SSE4)

PYBNN_TARGET_SSE4 static void pybnn_ibgemm_sse4(const int8_t *a, size_t lda, size_t m, const uint8_t *panels,
                                                const uint8_t *sums, size_t k, size_t cout, int a_zp,
                                                int32_t *out, size_t ldo) {
    PYBNN_IBGEMM_DRIVER(SSE4, PYBNN_IBGEMM_MR_SSE4, 8)
}

/* ---------------------------------------------------------------- AVX2 */

#define PYBNN_IBGEMM_MR_AVX2 6

/* mr rows x the 16 channels of a panel: 2 int16 accumulators (8 channels x 2 k pairs) per
 * row; 12 accumulators + 2 masks + 1 broadcast + 1 temporary = 16 ymm (selectors from memory). */
PYBNN_TARGET_AVX2 static inline __attribute__((always_inline)) void
pybnn_ibgemm_tile_AVX2(const uint8_t *buf, const uint8_t *bits, size_t nq, int h, int32_t ct[][16],
                     const int mr) {
    (void)h;
    const __m256i s0 = _mm256_setr_epi64x((long long)PYBNN_IBGEMM_BYTES, (long long)(PYBNN_IBGEMM_BYTES << 1),
                                          (long long)(PYBNN_IBGEMM_BYTES << 2), (long long)(PYBNN_IBGEMM_BYTES << 3));
    const __m256i s1 = _mm256_slli_epi64(s0, 4), ones = _mm256_set1_epi16(1);
#define PYBNN_DECL(r, z) __m256i acc##r##z = _mm256_setzero_si256();
#define PYBNN_DECL_ROW(r) PYBNN_COLS2(PYBNN_DECL, r)
#define PYBNN_MAC(r, z) acc##r##z = pybnn_ibgemm_maddubs_avx2(acc##r##z, u, m##z);
#define PYBNN_ROW(r)                                                                               \
    if (mr > r) {                                                                                  \
        const __m256i u = _mm256_set1_epi32(pybnn_igemm_load_i32(buf + r * PYBNN_IGEMM_KC + 4 * q)); \
        PYBNN_COLS2(PYBNN_MAC, r)                                                                  \
    }
#define PYBNN_FLUSH(r, z)                                                                          \
    if (mr > r) {                                                                                  \
        int32_t *t = &ct[r][8 * z];                                                                \
        _mm256_storeu_si256((__m256i *)t, _mm256_add_epi32(_mm256_loadu_si256((const __m256i *)t), \
                                                           _mm256_madd_epi16(acc##r##z, ones)));   \
        acc##r##z = _mm256_setzero_si256();                                                        \
    }
#define PYBNN_FLUSH_ROW(r) PYBNN_COLS2(PYBNN_FLUSH, r)
    PYBNN_ROWS6(PYBNN_DECL_ROW)
    for (size_t q0 = 0; q0 < nq; q0 += PYBNN_IBGEMM_FLUSH) {
        const size_t q1 = PYBNN_MIN(nq, q0 + PYBNN_IBGEMM_FLUSH);
        for (size_t q = q0; q < q1; q++) {
            const __m256i wv = _mm256_set1_epi64x((long long)pybnn_igemm_load_u64(bits + 8 * q));
            const __m256i m0 = _mm256_cmpeq_epi8(_mm256_and_si256(wv, s0), s0);
            const __m256i m1 = _mm256_cmpeq_epi8(_mm256_and_si256(wv, s1), s1);
            PYBNN_ROWS6(PYBNN_ROW)
        }
        PYBNN_ROWS6(PYBNN_FLUSH_ROW)
    }
#undef PYBNN_DECL
#undef PYBNN_DECL_ROW
#undef PYBNN_MAC
#undef PYBNN_ROW
#undef PYBNN_FLUSH
#undef PYBNN_FLUSH_ROW
}

PYBNN_IBGEMM_TILE_TABLE(AVX2)

PYBNN_TARGET_AVX2 static void pybnn_ibgemm_avx2(const int8_t *a, size_t lda, size_t m, const uint8_t *panels,
                                                const uint8_t *sums, size_t k, size_t cout, int a_zp,
                                                int32_t *out, size_t ldo) {
    PYBNN_IBGEMM_DRIVER(AVX2, PYBNN_IBGEMM_MR_AVX2, 16)
}
#undef PYBNN_IBGEMM_DRIVER

/* ---------------------------------------------------------------- AVX-512
 *
 * vpdpbusd(acc, u, w) adds 4 exact products u * w (u unsigned, w signed) per int32 lane
 * without saturation (the saturating form is vpdpbusds).  The micro-kernel holds mr <= 6 rows
 * x nz <= 4 panels (64 channels) = 24 zmm accumulators; per quad it loads the nz weight
 * vectors once and broadcasts each row's 4 activations (u = a ^ 0x80), and the result is
 * sum u w - (128 + zp) wsum.
 *
 * Loop order per part: rows in super-blocks of at most PYBNN_IGEMM_MC512, then K blocks, then
 * groups of 4 panels, then row blocks of 6.  Each K block of a super-block's rows is first
 * copied as u (0 past K, so no tail case) into a buffer that the groups share; the group's
 * weights for the K block (64 channels x K block) stay in L1 while all rows of the
 * super-block stream past them, so weights come from L2 or memory once per MC512 rows.  K is
 * one block up to PYBNN_IGEMM_KC1_512 (partial sums would otherwise go through memory), else
 * blocks of at most PYBNN_IGEMM_KC512.
 *
 * ibgemm runs the same micro-kernel on +-1 bytes: the first row block of each (K block, group)
 * expands the bits in registers (vptestmb with the bit selectors, vpblendmb: 2 instructions
 * per 64 weights) and stores them to an L1 buffer that the other row blocks read.  When a
 * part has several super-blocks and the expanded weights are small (up to
 * PYBNN_IBGEMM_EXPAND_ALL bytes), they are expanded once per call instead.
 *
 * Measured on the int8 convolution shapes (1 core, kernel alone): 590-650 Gops, about 85%
 * of the micro-kernel's own speed in L1 (~745); ibgemm within 1% of igemm except at 49 rows
 * (4% slower: the expansion is amortised over fewer rows).
 *
 * The driver takes its rows through a pybnn_igemm_io: a matrix (the igemm / ibgemm entry
 * points), or a convolution's patch rows gathered from the image by gemmconv.h, which also
 * transforms each finished tile (implicit GEMM: no im2col pass).
 */
#define PYBNN_IGEMM_MC512 96   /* rows per super-block */
#define PYBNN_IGEMM_KC512 512  /* K per block when K is split */
#define PYBNN_IGEMM_KC1_512 640 /* largest unsplit K; a multiple of 64, >= PYBNN_IGEMM_KC512 */
#define PYBNN_IBGEMM_EXPAND_ALL (256 * 1024)

/* Byte selectors of the ibgemm bit order for the 16 channels of a zmm (bit c/2, see above). */
#define PYBNN_IBGEMM_SEL512                                                                            \
    _mm512_setr_epi64((long long)PYBNN_IBGEMM_BYTES, (long long)(PYBNN_IBGEMM_BYTES << 1),                \
                      (long long)(PYBNN_IBGEMM_BYTES << 2), (long long)(PYBNN_IBGEMM_BYTES << 3),          \
                      (long long)(PYBNN_IBGEMM_BYTES << 4), (long long)(PYBNN_IBGEMM_BYTES << 5),          \
                      (long long)(PYBNN_IBGEMM_BYTES << 6), (long long)(PYBNN_IBGEMM_BYTES << 7))

/* The micro-kernel.  expand = 0: weights from w (panel stride wps).  expand = 1 (ibgemm, the
 * first row block of a K block): weights from the bits (panel stride bpb), expanded to +-1
 * bytes in registers and also stored to w for the later row blocks; the stores overlap the
 * multiply-adds, which a separate expansion pass could not (it cost 2x more). */
PYBNN_TARGET_AVX512 static inline __attribute__((always_inline)) void
pybnn_igemm_tile_avx512(const uint8_t *buf, const int8_t *w, size_t wps, size_t nq, int32_t *c, size_t ldc,
                        int accumulate, const int32_t *csub, __mmask16 mlast, const uint8_t *bits, size_t bpb,
                        const int mr, const int nz, const int expand) {
    __m512i w0, w1, w2, w3, sel = _mm512_setzero_si512(), plus = sel, minus = sel;
    if (expand) {
        sel = PYBNN_IBGEMM_SEL512;
        plus = _mm512_set1_epi8(1);
        minus = _mm512_set1_epi8(-1);
    }
#define PYBNN_MASK(z) (z == nz - 1 ? mlast : (__mmask16)0xFFFF)
#define PYBNN_DECL(r, z)                                                                           \
    __m512i acc##r##z = _mm512_setzero_si512();                                                    \
    if (accumulate && mr > r && nz > z)                                                            \
        acc##r##z = _mm512_maskz_loadu_epi32(PYBNN_MASK(z), c + r * ldc + 16 * z);
#define PYBNN_DECL_ROW(r) PYBNN_COLS4(PYBNN_DECL, r)
#define PYBNN_LOADW(z)                                                                             \
    if (nz > z) {                                                                                  \
        if (expand) {                                                                              \
            w##z = _mm512_set1_epi64((long long)pybnn_igemm_load_u64(bits + z * bpb + 8 * q));     \
            w##z = _mm512_mask_blend_epi8(_mm512_test_epi8_mask(w##z, sel), plus, minus);          \
            _mm512_store_si512((void *)(w + z * wps + 64 * q), w##z);                              \
        } else {                                                                                   \
            w##z = _mm512_loadu_si512((const void *)(w + z * wps + 64 * q));                       \
        }                                                                                          \
    }
#define PYBNN_MAC(r, z) if (nz > z) acc##r##z = pybnn_igemm_dpbusd(acc##r##z, b, w##z);
#define PYBNN_ROW(r)                                                                               \
    if (mr > r) {                                                                                  \
        const __m512i b = _mm512_set1_epi32(pybnn_igemm_load_i32(buf + r * PYBNN_IGEMM_KC1_512 + 4 * q)); \
        PYBNN_COLS4(PYBNN_MAC, r)                                                                  \
    }
#define PYBNN_OUT(r, z)                                                                            \
    if (mr > r && nz > z) {                                                                        \
        __m512i v = acc##r##z;                                                                     \
        if (csub)                                                                                  \
            v = _mm512_sub_epi32(v, _mm512_loadu_si512((const void *)(csub + 16 * z)));            \
        _mm512_mask_storeu_epi32(c + r * ldc + 16 * z, PYBNN_MASK(z), v);                          \
    }
#define PYBNN_OUT_ROW(r) PYBNN_COLS4(PYBNN_OUT, r)
    PYBNN_ROWS6(PYBNN_DECL_ROW)
    for (size_t q = 0; q < nq; q++) {
        PYBNN_LOADW(0) PYBNN_LOADW(1) PYBNN_LOADW(2) PYBNN_LOADW(3)
        PYBNN_ROWS6(PYBNN_ROW)
    }
    PYBNN_ROWS6(PYBNN_OUT_ROW)
#undef PYBNN_MASK
#undef PYBNN_DECL
#undef PYBNN_DECL_ROW
#undef PYBNN_LOADW
#undef PYBNN_MAC
#undef PYBNN_ROW
#undef PYBNN_OUT
#undef PYBNN_OUT_ROW
}

typedef void (*pybnn_igemm_tile512_fn)(const uint8_t *buf, const int8_t *w, size_t wps, size_t nq, int32_t *c,
                                       size_t ldc, int accumulate, const int32_t *csub, __mmask16 mlast,
                                       const uint8_t *bits, size_t bpb);
#define PYBNN_IGEMM_T512_FN(MR, NZ, X)                                                               \
    PYBNN_TARGET_AVX512 static __attribute__((noinline)) void pybnn_igemm_tile_avx512_##MR##_##NZ##_##X( \
        const uint8_t *buf, const int8_t *w, size_t wps, size_t nq, int32_t *c, size_t ldc, int accumulate, \
        const int32_t *csub, __mmask16 mlast, const uint8_t *bits, size_t bpb) {                     \
        pybnn_igemm_tile_avx512(buf, w, wps, nq, c, ldc, accumulate, csub, mlast, bits, bpb, MR, NZ, X); \
    }
#define PYBNN_IGEMM_T512_ROW(MR, X)                                                                  \
    PYBNN_IGEMM_T512_FN(MR, 1, X) PYBNN_IGEMM_T512_FN(MR, 2, X) PYBNN_IGEMM_T512_FN(MR, 3, X)        \
    PYBNN_IGEMM_T512_FN(MR, 4, X)
#define PYBNN_IGEMM_T512_ROWS(X)                                                                     \
    PYBNN_IGEMM_T512_ROW(1, X) PYBNN_IGEMM_T512_ROW(2, X) PYBNN_IGEMM_T512_ROW(3, X)                 \
    PYBNN_IGEMM_T512_ROW(4, X) PYBNN_IGEMM_T512_ROW(5, X) PYBNN_IGEMM_T512_ROW(6, X)
PYBNN_IGEMM_T512_ROWS(0)
PYBNN_IGEMM_T512_ROWS(1)
#define PYBNN_IGEMM_T512_NAMES(MR, X)                                                                \
    {pybnn_igemm_tile_avx512_##MR##_1_##X, pybnn_igemm_tile_avx512_##MR##_2_##X,                     \
     pybnn_igemm_tile_avx512_##MR##_3_##X, pybnn_igemm_tile_avx512_##MR##_4_##X}
#define PYBNN_IGEMM_T512_TABLE(X)                                                                    \
    {PYBNN_IGEMM_T512_NAMES(1, X), PYBNN_IGEMM_T512_NAMES(2, X), PYBNN_IGEMM_T512_NAMES(3, X),      \
     PYBNN_IGEMM_T512_NAMES(4, X), PYBNN_IGEMM_T512_NAMES(5, X), PYBNN_IGEMM_T512_NAMES(6, X)}
/* [expand][rows - 1][panels - 1] */
static const pybnn_igemm_tile512_fn pybnn_igemm_tiles_avx512[2][6][4] = {PYBNN_IGEMM_T512_TABLE(0),
                                                                         PYBNN_IGEMM_T512_TABLE(1)};

/* Rows [0, mc) of a, columns [0, 4 nq) (real up to len), as u = a ^ 0x80 (0 past len) into
 * dst (row stride PYBNN_IGEMM_KC1_512). */
PYBNN_TARGET_AVX512 static inline void pybnn_igemm_flip_avx512(const int8_t *a, size_t lda, size_t mc, size_t len,
                                                               size_t nq, uint8_t *dst) {
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    for (size_t r = 0; r < mc; r++)
        for (size_t x = 0; x < 4 * nq; x += 64) {
            __m512i u;
            if (x + 64 <= len) {
                u = _mm512_xor_si512(_mm512_loadu_si512((const void *)(a + r * lda + x)), flip);
            } else { /* fault-free masked load of the last bytes; u = 0 past them */
                const __mmask64 km = x < len ? ((__mmask64)1 << (len - x)) - 1 : 0;
                u = _mm512_maskz_mov_epi8(km, _mm512_xor_si512(_mm512_maskz_loadu_epi8(km, a + r * lda + x), flip));
            }
            _mm512_store_si512((void *)(dst + r * PYBNN_IGEMM_KC1_512 + x), u);
        }
}

/* nz panels (stride pb bytes) x nq words of bits -> dst: nz panels of nq x 64 bytes +-1. */
PYBNN_TARGET_AVX512 static inline void pybnn_ibgemm_expand_avx512(const uint8_t *bits, size_t pb, int nz, size_t nq,
                                                                int8_t *dst) {
    const __m512i sel = PYBNN_IBGEMM_SEL512, plus = _mm512_set1_epi8(1), minus = _mm512_set1_epi8(-1);
    for (int z = 0; z < nz; z++)
        for (size_t q = 0; q < nq; q++) {
            const __m512i wv = _mm512_set1_epi64((long long)pybnn_igemm_load_u64(bits + z * pb + 8 * q));
            _mm512_store_si512((void *)(dst + (z * nq + q) * 64),
                               _mm512_mask_blend_epi8(_mm512_test_epi8_mask(wv, sel), plus, minus));
        }
}

/* Where the AVX-512 driver gets its rows and what it does with finished outputs, so that a
 * convolution can feed it patch rows gathered straight from the image (no im2col pass) and
 * transform each tile while it is in L1 (gemmconv.h):
 *   fetch(ctx, i, mc, k0, len, nq, dst): rows [i, i + mc) of A, columns [k0, k0 + len), as
 *       u = a ^ 0x80 into dst (row stride PYBNN_IGEMM_KC1_512), 0 in columns [len, 4 nq);
 *   done(ctx, acc, lda, i, mr, c0, c1), optional: rows [i, i + mr) of channels [c0, c1) of
 *       the result are final (acc: row i, channel c0; row stride lda).  With done, `out` is
 *       scratch for the rows of one super-block (PYBNN_IGEMM_MC512 x ldo int32), not the
 *       whole result. */
typedef struct {
    void (*fetch)(const void *ctx, size_t i, size_t mc, size_t k0, size_t len, size_t nq, uint8_t *dst);
    void (*done)(const void *ctx, const int32_t *acc, size_t lda, size_t i, size_t mr, size_t c0, size_t c1);
    const void *ctx;
} pybnn_igemm_io;

typedef struct {
    const int8_t *a;
    size_t lda;
} pybnn_igemm_matrix;

PYBNN_TARGET_AVX512 static void pybnn_igemm_fetch_matrix_avx512(const void *ctx, size_t i, size_t mc, size_t k0,
                                                                size_t len, size_t nq, uint8_t *dst) {
    const pybnn_igemm_matrix *a = (const pybnn_igemm_matrix *)ctx;
    pybnn_igemm_flip_avx512(a->a + i * a->lda + k0, a->lda, mc, len, nq, dst);
}

PYBNN_TARGET_AVX512 static inline __attribute__((always_inline)) void
pybnn_igemm_run_avx512(const pybnn_igemm_io *io, size_t m, const uint8_t *panels, const uint8_t *sums,
                       size_t k, size_t cout, int a_zp, int32_t *out, size_t ldo, int binary) {
    const size_t kq = pybnn_igemm_kq(k), pb = pybnn_igemm_panel_bytes(k, binary), np = pybnn_igemm_npanels(cout);
    const size_t nkb = kq <= PYBNN_IGEMM_KC1_512 / 4 ? 1 : pybnn_igemm_nblocks(kq, PYBNN_IGEMM_KC512 / 4);
    const size_t nib = pybnn_igemm_nblocks(m, PYBNN_IGEMM_MC512);
    /* One group of panels: nothing to share, so each row block is copied just before its
     * tile, while it is in L1 (measured +7% on 3x3_64 over copying the super-block first). */
    const int flip_late = np <= 4;
    int32_t csub[64];
    uint8_t ubuf[PYBNN_IGEMM_MC512 * PYBNN_IGEMM_KC1_512] __attribute__((aligned(64)));
    /* 4 panels x 64 bytes per quad; blocks have at most KC1_512 / 4 quads */
    int8_t wbuf[4 * 64 * (PYBNN_IGEMM_KC1_512 / 4)] __attribute__((aligned(64)));
    for (size_t ib = 0; ib < nib; ib++) {
        const size_t i0 = pybnn_igemm_bstart(m, nib, ib), mc = pybnn_igemm_bstart(m, nib, ib + 1) - i0;
        const size_t nrb = pybnn_igemm_nblocks(mc, 6);
        for (size_t kb = 0; kb < nkb; kb++) {
            const size_t q0 = pybnn_igemm_bstart(kq, nkb, kb), nq = pybnn_igemm_bstart(kq, nkb, kb + 1) - q0;
            const size_t len = PYBNN_MIN(4 * nq, k - 4 * q0);
            const int last = kb == nkb - 1;
            if (!flip_late)
                io->fetch(io->ctx, i0, mc, 4 * q0, len, nq, ubuf);
            for (size_t p0 = 0; p0 < np; p0 += 4) {
                const int nz = (int)PYBNN_MIN(4, np - p0);
                const size_t cl = cout - 16 * (p0 + nz - 1); /* channels in the group's last panel */
                const __mmask16 mlast = cl >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << cl) - 1);
                if (last)
                    pybnn_igemm_colsub(sums, 16 * p0, 16 * (size_t)nz, 128 + a_zp, csub);
                const int8_t *w = binary ? wbuf : (const int8_t *)panels + p0 * pb + q0 * 64;
                const size_t wps = binary ? nq * 64 : pb;
                for (size_t rb = 0; rb < nrb; rb++) {
                    const size_t r0 = pybnn_igemm_bstart(mc, nrb, rb);
                    const int mr = (int)(pybnn_igemm_bstart(mc, nrb, rb + 1) - r0);
                    const uint8_t *u = ubuf + r0 * PYBNN_IGEMM_KC1_512;
                    if (flip_late) {
                        io->fetch(io->ctx, i0 + r0, (size_t)mr, 4 * q0, len, nq, ubuf);
                        u = ubuf;
                    }
                    int32_t *c = out + (io->done ? r0 : i0 + r0) * ldo + 16 * p0;
                    /* ibgemm: the first row block expands the bits into wbuf */
                    pybnn_igemm_tiles_avx512[binary && rb == 0][mr - 1][nz - 1](
                        u, w, wps, nq, c, ldo, kb > 0, last ? csub : NULL, mlast, panels + p0 * pb + q0 * 8, pb);
                    if (last && io->done)
                        io->done(io->ctx, c, ldo, i0 + r0, (size_t)mr, 16 * p0, PYBNN_MIN(cout, 16 * (p0 + 4)));
                }
            }
        }
    }
}

/* igemm (binary = 0) or ibgemm (binary = 1) on rows from io. */
PYBNN_TARGET_AVX512 static void pybnn_igemm_io_avx512(const pybnn_igemm_io *io, size_t m, const uint8_t *panels,
                                                      const uint8_t *sums, size_t k, size_t cout, int a_zp,
                                                      int32_t *out, size_t ldo, int binary) {
    /* ibgemm: several super-blocks would expand every weight block once each: if the
     * expanded weights (the igemm layout, 8x the bits) are small enough to stay in L2,
     * expand them all once and run the int8 kernel on them.  (Larger, the stores to L3 cost
     * more than they save.) */
    const size_t kq = pybnn_igemm_kq(k), np = pybnn_igemm_npanels(cout);
    if (binary && m > PYBNN_IGEMM_MC512 && np * kq * 64 <= PYBNN_IBGEMM_EXPAND_ALL) {
        int8_t *w = (int8_t *)aligned_alloc(64, np * kq * 64);
        if (w) {
            for (size_t p = 0; p < np; p++)
                pybnn_ibgemm_expand_avx512(panels + p * kq * 8, kq * 8, 1, kq, w + p * kq * 64);
            pybnn_igemm_run_avx512(io, m, (const uint8_t *)w, sums, k, cout, a_zp, out, ldo, 0);
            free(w);
            return;
        }
    }
    if (binary)
        pybnn_igemm_run_avx512(io, m, panels, sums, k, cout, a_zp, out, ldo, 1);
    else
        pybnn_igemm_run_avx512(io, m, panels, sums, k, cout, a_zp, out, ldo, 0);
}

PYBNN_TARGET_AVX512 static void pybnn_igemm_avx512(const int8_t *a, size_t lda, size_t m, const uint8_t *panels,
                                                   const uint8_t *sums, size_t k, size_t cout, int a_zp,
                                                   int32_t *out, size_t ldo) {
    const pybnn_igemm_matrix src = {a, lda};
    const pybnn_igemm_io io = {pybnn_igemm_fetch_matrix_avx512, NULL, &src};
    pybnn_igemm_io_avx512(&io, m, panels, sums, k, cout, a_zp, out, ldo, 0);
}

PYBNN_TARGET_AVX512 static void pybnn_ibgemm_avx512(const int8_t *a, size_t lda, size_t m, const uint8_t *panels,
                                                    const uint8_t *sums, size_t k, size_t cout, int a_zp,
                                                    int32_t *out, size_t ldo) {
    const pybnn_igemm_matrix src = {a, lda};
    const pybnn_igemm_io io = {pybnn_igemm_fetch_matrix_avx512, NULL, &src};
    pybnn_igemm_io_avx512(&io, m, panels, sums, k, cout, a_zp, out, ldo, 1);
}
#endif /* PYBNN_X86 */

#if PYBNN_NEON
/* ---------------------------------------------------------------- NEON
 *
 * neon (every ARM CPU with NEON: Cortex-A7/A53/A72, armv7 and aarch64): igemm takes 2 rows
 * (aarch64; 1 on armv7) x one panel at a time: each row's 4 activations of a quad repeated
 * against 4 channels x 4 k weight bytes by vmull_s8 (|product| <= 128 * 128 fits int16 exactly; no two products are
 * added in 16 bits, which could overflow) + vpadal into (channel, k pair) int32 lanes:
 * 2 instructions per 8 multiply-adds.  ibgemm: the bit masks of 4 channels (vtst with the
 * selectors of the layout) pick the activations of the -1 weights; with T their sum and
 * A = sum_k a,
 *     sum (a - zp) s = A - 2T - zp S.
 *
 * neon_dotprod (aarch64 with the ARMv8.2 dot product: Cortex-A76 = Raspberry Pi 5, A55,
 * A78, ...; chosen at run time, common.h): SDOT adds 4 products of 4 byte pairs into each
 * int32 lane, exactly, 16 multiply-adds per instruction.  A tile is up to 4 rows x one panel
 * of 16 channels: 16 int32x4 sums + 4 weight registers + the row broadcasts fit the 32
 * vector registers, and each weight load serves 4 rows.  ibgemm expands the quad's 64 bits
 * to +-1 bytes once per tile row group (4 vtst + 4 orr) and multiplies them by SDOT too. */

/* The 4 activations of quad q (0 past k) as one 32-bit word. */
static inline uint32_t pybnn_igemm_quad(const int8_t *row, size_t q, size_t k) {
    if (4 * q + 4 <= k)
        return pybnn_igemm_load_u32(row + 4 * q);
    uint8_t t[4] = {0, 0, 0, 0};
    memcpy(t, row + 4 * q, k - 4 * q);
    return pybnn_igemm_load_u32(t);
}

/* Stores channels [n, n + cnt) of acc (4 int32x4, channels in order) minus mul * wsum[n ..]. */
static inline void pybnn_igemm_store_neon(const int32x4_t acc[4], const uint8_t *sums, size_t n, size_t cnt,
                                          int32_t mul, int32_t *dst) {
    int32_t res[16], ws[16];
    memcpy(ws, sums + 4 * n, sizeof ws);
    for (int g = 0; g < 4; g++)
        vst1q_s32(res + 4 * g, vsubq_s32(acc[g], vmulq_s32(vld1q_s32(ws + 4 * g), vdupq_n_s32(mul))));
    memcpy(dst, res, cnt * sizeof(int32_t));
}

/* One quad q of rows a .. a+(MR-1)*lda against the panel's block at blk (64 bytes: 4 k of
 * 16 channels); TAIL: the last quad of a k that is not a multiple of 4. */
static inline __attribute__((always_inline)) void
pybnn_igemm_neon_step(int32x4_t pairs[][8], const int8_t *a, size_t lda, const int8_t *blk, size_t q, size_t k,
                      const int MR, const int TAIL) {
    int8x16_t w[4];
    for (int g = 0; g < 4; g++) w[g] = vld1q_s8(blk + 16 * g);
    for (int r = 0; r < MR; r++) {
        const uint32_t quad = TAIL ? pybnn_igemm_quad(a + r * lda, q, k) : pybnn_igemm_load_u32(a + r * lda + 4 * q);
        const int8x16_t ad = vreinterpretq_s8_u32(vdupq_n_u32(quad));
        for (int g = 0; g < 4; g++) {
#if defined(__aarch64__) /* SMULL2 reads the high halves in place */
            pairs[r][2 * g + 1] = vpadalq_s16(pairs[r][2 * g + 1], vmull_high_s8(w[g], ad));
#else
            pairs[r][2 * g + 1] = vpadalq_s16(pairs[r][2 * g + 1], vmull_s8(vget_high_s8(w[g]), vget_low_s8(ad)));
#endif
            pairs[r][2 * g] = vpadalq_s16(pairs[r][2 * g], vmull_s8(vget_low_s8(w[g]), vget_low_s8(ad)));
        }
    }
}

/* Rows a .. a+(MR-1)*lda x the panel at blk -> channels [n0, n0 + cnt) of their outputs. */
static inline __attribute__((always_inline)) void
pybnn_igemm_neon_tile(const int8_t *a, size_t lda, const int8_t *blk, const uint8_t *sums, size_t k, size_t n0,
                      size_t cnt, int a_zp, int32_t *out, size_t ldo, const int MR) {
    const size_t kfull = k / 4;
    int32x4_t pairs[2][8]; /* lanes (c, k0+k1), (c, k2+k3), (c+1, ...), ... */
    for (int r = 0; r < MR; r++)
        for (int g = 0; g < 8; g++) pairs[r][g] = vdupq_n_s32(0);
    for (size_t q = 0; q < kfull; q++)
        pybnn_igemm_neon_step(pairs, a, lda, blk + 64 * q, q, k, MR, 0);
    if (k % 4)
        pybnn_igemm_neon_step(pairs, a, lda, blk + 64 * kfull, kfull, k, MR, 1);
    for (int r = 0; r < MR; r++) {
        int32x4_t acc[4];
        for (int g = 0; g < 4; g++)
            acc[g] = vcombine_s32(vpadd_s32(vget_low_s32(pairs[r][2 * g]), vget_high_s32(pairs[r][2 * g])),
                                  vpadd_s32(vget_low_s32(pairs[r][2 * g + 1]), vget_high_s32(pairs[r][2 * g + 1])));
        pybnn_igemm_store_neon(acc, sums, n0, cnt, a_zp, out + r * ldo + n0);
    }
}

/* Row tiles outside (aarch64: 2 rows, 16 sums + 4 weight registers, each weight load serving
 * both; armv7's 16 registers hold one row's 8 sums), panels inside. */
static void pybnn_igemm_neon(const int8_t *a, size_t lda, size_t m, const uint8_t *panels,
                             const uint8_t *sums, size_t k, size_t cout, int a_zp, int32_t *out,
                             size_t ldo) {
    const size_t pb = pybnn_igemm_panel_bytes(k, 0), np = pybnn_igemm_npanels(cout);
#if defined(__aarch64__)
    const size_t mr = 2;
#else
    const size_t mr = 1;
#endif
    for (size_t i = 0; i < m; i += mr) {
        for (size_t p = 0; p < np; p++) {
            const int8_t *blk = (const int8_t *)panels + p * pb;
            const size_t n0 = p * PYBNN_IGEMM_NP, cnt = PYBNN_MIN(PYBNN_IGEMM_NP, cout - n0);
            if (mr == 2 && i + 1 < m)
                pybnn_igemm_neon_tile(a + i * lda, lda, blk, sums, k, n0, cnt, a_zp, out + i * ldo, ldo, 2);
            else
                pybnn_igemm_neon_tile(a + i * lda, lda, blk, sums, k, n0, cnt, a_zp, out + i * ldo, ldo, 1);
        }
    }
}

#define PYBNN_IBGEMM_FLUSH_NEON 64 /* quads: an int16 lane gains at most 2 * 128 per quad */

static void pybnn_ibgemm_neon(const int8_t *a, size_t lda, size_t m, const uint8_t *panels,
                              const uint8_t *sums, size_t k, size_t cout, int a_zp, int32_t *out,
                              size_t ldo) {
    const size_t kq = pybnn_igemm_kq(k), pb = pybnn_igemm_panel_bytes(k, 1), np = pybnn_igemm_npanels(cout);
    uint8x16_t sel[4]; /* channels 4g .. 4g+3: bits 2g (low 8 bytes) and 2g + 1 */
    for (int g = 0; g < 4; g++) sel[g] = vcombine_u8(vdup_n_u8((uint8_t)(1u << (2 * g))), vdup_n_u8((uint8_t)(2u << (2 * g))));
    for (size_t i = 0; i < m; i++) {
        const int8_t *row = a + i * lda;
        int32_t asum = 0;
        for (size_t kk = 0; kk < k; kk++) asum += row[kk];
        for (size_t p = 0; p < np; p++) {
            const uint8_t *bits = panels + p * pb;
            int32x4_t acc[4];
            for (int g = 0; g < 4; g++) acc[g] = vdupq_n_s32(0);
            for (size_t q0 = 0; q0 < kq; q0 += PYBNN_IBGEMM_FLUSH_NEON) {
                int16x8_t acc16[4];
                for (int g = 0; g < 4; g++) acc16[g] = vdupq_n_s16(0);
                for (size_t q = q0; q < PYBNN_MIN(kq, q0 + PYBNN_IBGEMM_FLUSH_NEON); q++) {
                    const int8x16_t ad = vreinterpretq_s8_u32(vdupq_n_u32(pybnn_igemm_quad(row, q, k)));
                    const uint8x16_t wv = vreinterpretq_u8_u64(vdupq_n_u64(pybnn_igemm_load_u64(bits + 8 * q)));
                    for (int g = 0; g < 4; g++)
                        acc16[g] = vpadalq_s8(acc16[g], vandq_s8(ad, vreinterpretq_s8_u8(vtstq_u8(wv, sel[g]))));
                }
                for (int g = 0; g < 4; g++) acc[g] = vpadalq_s16(acc[g], acc16[g]);
            }
            /* A - 2T - zp S, as (A - 2T) - zp S with the store helper. */
            for (int g = 0; g < 4; g++) acc[g] = vsubq_s32(vdupq_n_s32(asum), vshlq_n_s32(acc[g], 1));
            pybnn_igemm_store_neon(acc, sums, p * PYBNN_IGEMM_NP, PYBNN_MIN(PYBNN_IGEMM_NP, cout - p * PYBNN_IGEMM_NP),
                                   a_zp, out + i * ldo + p * PYBNN_IGEMM_NP);
        }
    }
}

#if PYBNN_DOTPROD
/* One quad q of a tile (below): weights of the panel at w (igemm bytes, or ibgemm bits when
 * BITS) against rows a .. a+(MR-1)*lda; TAIL: the last quad of a k that is not a multiple
 * of 4 (its missing activations read as 0). */
PYBNN_TARGET_DOTPROD static inline __attribute__((always_inline)) void
pybnn_igemm_dot_step(int32x4_t acc[][4], const int8_t *a, size_t lda, const uint8_t *w, size_t q, size_t k,
                     const int MR, const int BITS, const int TAIL) {
    int8x16_t wv[4];
    if (BITS) { /* +-1 bytes: -1 (all ones) where the bit is set, else +1 */
        const uint8x16_t bv = vreinterpretq_u8_u64(vdupq_n_u64(pybnn_igemm_load_u64(w + 8 * q)));
        for (int g = 0; g < 4; g++) {
            const uint8x16_t sel = vcombine_u8(vdup_n_u8((uint8_t)(1u << (2 * g))), vdup_n_u8((uint8_t)(2u << (2 * g))));
            wv[g] = vreinterpretq_s8_u8(vorrq_u8(vtstq_u8(bv, sel), vdupq_n_u8(1)));
        }
    } else {
        for (int g = 0; g < 4; g++) wv[g] = vld1q_s8((const int8_t *)w + 64 * q + 16 * g);
    }
    for (int r = 0; r < MR; r++) {
        const uint32_t quad = TAIL ? pybnn_igemm_quad(a + r * lda, q, k) : pybnn_igemm_load_u32(a + r * lda + 4 * q);
        const int8x16_t ad = vreinterpretq_s8_u32(vdupq_n_u32(quad));
        for (int g = 0; g < 4; g++) acc[r][g] = vdotq_s32(acc[r][g], wv[g], ad);
    }
}

/* Rows a .. a+(MR-1)*lda x one panel -> the int32 sums minus a_zp * wsum, channels
 * [n0, n0 + cnt).  MR and BITS are compile-time constants after inlining. */
PYBNN_TARGET_DOTPROD static inline __attribute__((always_inline)) void
pybnn_igemm_dot_tile(const int8_t *a, size_t lda, const uint8_t *w, const uint8_t *sums, size_t k, size_t n0,
                     size_t cnt, int a_zp, int32_t *out, size_t ldo, const int MR, const int BITS) {
    const size_t kfull = k / 4;
    int32x4_t acc[4][4];
    for (int r = 0; r < MR; r++)
        for (int g = 0; g < 4; g++) acc[r][g] = vdupq_n_s32(0);
    for (size_t q = 0; q < kfull; q++)
        pybnn_igemm_dot_step(acc, a, lda, w, q, k, MR, BITS, 0);
    if (k % 4)
        pybnn_igemm_dot_step(acc, a, lda, w, kfull, k, MR, BITS, 1);
    for (int r = 0; r < MR; r++) pybnn_igemm_store_neon(acc[r], sums, n0, cnt, a_zp, out + r * ldo + n0);
}

/* Row tiles of 4 outside (their activations stay in L1), panels inside. */
PYBNN_TARGET_DOTPROD static inline __attribute__((always_inline)) void
pybnn_igemm_dot_run(const int8_t *a, size_t lda, size_t m, const uint8_t *panels, const uint8_t *sums, size_t k,
                    size_t cout, int a_zp, int32_t *out, size_t ldo, const int BITS) {
    const size_t pb = pybnn_igemm_panel_bytes(k, BITS), np = pybnn_igemm_npanels(cout);
    for (size_t i = 0; i < m; i += 4) {
        const int8_t *ai = a + i * lda;
        int32_t *oi = out + i * ldo;
        for (size_t p = 0; p < np; p++) {
            const uint8_t *w = panels + p * pb;
            const size_t n0 = p * PYBNN_IGEMM_NP, cnt = PYBNN_MIN(PYBNN_IGEMM_NP, cout - n0);
            switch (PYBNN_MIN((size_t)4, m - i)) {
            case 4: pybnn_igemm_dot_tile(ai, lda, w, sums, k, n0, cnt, a_zp, oi, ldo, 4, BITS); break;
            case 3: pybnn_igemm_dot_tile(ai, lda, w, sums, k, n0, cnt, a_zp, oi, ldo, 3, BITS); break;
            case 2: pybnn_igemm_dot_tile(ai, lda, w, sums, k, n0, cnt, a_zp, oi, ldo, 2, BITS); break;
            default: pybnn_igemm_dot_tile(ai, lda, w, sums, k, n0, cnt, a_zp, oi, ldo, 1, BITS); break;
            }
        }
    }
}

PYBNN_TARGET_DOTPROD static void pybnn_igemm_neon_dotprod(const int8_t *a, size_t lda, size_t m, const uint8_t *panels,
                                                          const uint8_t *sums, size_t k, size_t cout, int a_zp,
                                                          int32_t *out, size_t ldo) {
    pybnn_igemm_dot_run(a, lda, m, panels, sums, k, cout, a_zp, out, ldo, 0);
}

PYBNN_TARGET_DOTPROD static void pybnn_ibgemm_neon_dotprod(const int8_t *a, size_t lda, size_t m, const uint8_t *panels,
                                                           const uint8_t *sums, size_t k, size_t cout, int a_zp,
                                                           int32_t *out, size_t ldo) {
    pybnn_igemm_dot_run(a, lda, m, panels, sums, k, cout, a_zp, out, ldo, 1);
}
#endif /* PYBNN_DOTPROD */
#endif /* PYBNN_NEON */

/* ---------------------------------------------------------------- drivers
 *
 * The drivers split rows or output channels (whole panels of 16) into up to `threads`
 * contiguous ranges (see pybnn_igemm_run).  Integer results: identical for any split. */
typedef void (*pybnn_igemm_fn)(const int8_t *a, size_t lda, size_t m, const uint8_t *panels,
                               const uint8_t *sums, size_t k, size_t cout, int a_zp, int32_t *out,
                               size_t ldo);

/* The variant for `isa` (walking down to scalar); *used receives its ISA number. */
static inline pybnn_igemm_fn pybnn_igemm_pick_any(int isa, int binary, int *used) {
#if PYBNN_DOTPROD
    if (isa >= PYBNN_ISA_NEON_DOTPROD && pybnn_isa_supported(PYBNN_ISA_NEON_DOTPROD)) {
        *used = PYBNN_ISA_NEON_DOTPROD;
        return binary ? pybnn_ibgemm_neon_dotprod : pybnn_igemm_neon_dotprod;
    }
#endif
#if PYBNN_NEON
    if (isa >= PYBNN_ISA_NEON) { *used = PYBNN_ISA_NEON; return binary ? pybnn_ibgemm_neon : pybnn_igemm_neon; }
#endif
#if PYBNN_X86
    if (isa >= PYBNN_ISA_AVX512 && pybnn_isa_supported(PYBNN_ISA_AVX512)) {
        *used = PYBNN_ISA_AVX512;
        return binary ? pybnn_ibgemm_avx512 : pybnn_igemm_avx512;
    }
    if (isa >= PYBNN_ISA_AVX2 && pybnn_isa_supported(PYBNN_ISA_AVX2)) {
        *used = PYBNN_ISA_AVX2;
        return binary ? pybnn_ibgemm_avx2 : pybnn_igemm_avx2;
    }
    if (isa >= PYBNN_ISA_SSE4 && pybnn_isa_supported(PYBNN_ISA_SSE4)) {
        *used = PYBNN_ISA_SSE4;
        return binary ? pybnn_ibgemm_sse4 : pybnn_igemm_sse4;
    }
#endif
    (void)isa;
    *used = PYBNN_ISA_SCALAR;
    return binary ? pybnn_ibgemm_scalar : pybnn_igemm_scalar;
}

typedef struct {
    pybnn_igemm_fn fn;
    const int8_t *a;
    const uint8_t *panels, *sums;
    size_t lda, m, k, pb, cout, ldo;
    int a_zp;
    size_t unit; /* 0: split rows; else split channels in units of this many panels */
    int32_t *out;
} pybnn_igemm_job;

static void pybnn_igemm_part(void *ctx, int part, int nparts) {
    const pybnn_igemm_job *j = (const pybnn_igemm_job *)ctx;
    size_t lo, hi;
    if (!j->unit) {
        pybnn_par_range(j->m, part, nparts, &lo, &hi);
        if (lo < hi)
            j->fn(j->a + lo * j->lda, j->lda, hi - lo, j->panels, j->sums, j->k, j->cout, j->a_zp,
                  j->out + lo * j->ldo, j->ldo);
    } else {
        const size_t np = pybnn_igemm_npanels(j->cout);
        pybnn_par_range((np + j->unit - 1) / j->unit, part, nparts, &lo, &hi);
        size_t c0 = lo * j->unit * PYBNN_IGEMM_NP, c1 = PYBNN_MIN(hi * j->unit * PYBNN_IGEMM_NP, j->cout);
        if (c0 < c1)
            j->fn(j->a, j->lda, j->m, j->panels + lo * j->unit * j->pb, j->sums + c0 * 4, j->k, c1 - c0, j->a_zp,
                  j->out + c0, j->ldo);
    }
}

/* Output channels [c0, c1) of the GEMM on one thread (c0 a multiple of 16, a panel
 * boundary) by the variant fn: out points at channel c0 of row 0. */
static inline void pybnn_igemm_cols(pybnn_igemm_fn fn, int binary, const int8_t *a, size_t lda, size_t m,
                                    const uint8_t *wp, size_t k, size_t cout, size_t c0, size_t c1, int a_zp,
                                    int32_t *out, size_t ldo) {
    fn(a, lda, m, pybnn_igemm_panels(wp) + c0 / PYBNN_IGEMM_NP * pybnn_igemm_panel_bytes(k, binary),
       pybnn_igemm_wsums(wp, k, cout, binary) + 4 * c0, k, c1 - c0, a_zp, out, ldo);
}

/* Multiply-adds per work unit (common.h: ~0.1 ns of one core) of each variant, from its
 * speed on the int8 convolution shapes. */
static inline double pybnn_igemm_macs_per_unit(int used, int binary) {
    switch (used) {
    case PYBNN_ISA_AVX512: return 30.0;                /* ~620 Gops */
    case PYBNN_ISA_AVX2: return binary ? 10.0 : 7.0;   /* ~200 / ~140 Gops */
    case PYBNN_ISA_SSE4: return binary ? 5.0 : 3.5;    /* ~100 / ~70 Gops */
    default: return 3.0;
    }
}

static inline int pybnn_igemm_run(int isa, int threads, const int8_t *a, size_t lda, size_t m,
                                  const uint8_t *wp, size_t k, size_t cout, int a_zp, int32_t *out,
                                  size_t ldo, int binary) {
    int used;
    pybnn_igemm_job j = {pybnn_igemm_pick_any(isa, binary, &used), a, pybnn_igemm_panels(wp),
                         pybnn_igemm_wsums(wp, k, cout, binary), lda, m, k, pybnn_igemm_panel_bytes(k, binary),
                         cout, ldo, a_zp, 0, out};
    if (m == 0)
        return used;
    size_t np = pybnn_igemm_npanels(cout);
    double work = (double)m * (double)cout * (double)k / pybnn_igemm_macs_per_unit(used, binary);
    int nparts = pybnn_par_parts(threads, PYBNN_MAX(m, np), work);
    /* Split rows unless there are fewer than 16 per part (dense layers at small batch: then
     * channels, in whole groups of 4 panels -- the AVX-512 micro-kernel's 64 channels --
     * when there are enough of them).  Measured on the conv shapes (49-784 rows, 128-512
     * channels, 2 threads): rows scale 1.78-1.98x, channels 1.61-1.78x, although every row
     * part reads all the weights; a channel part re-copies every activation block. */
    if (nparts > 1 && np >= (size_t)nparts && m < 16 * (size_t)nparts) {
        j.unit = np >= 4 * (size_t)nparts ? 4 : 1;
        nparts = (int)PYBNN_MIN((size_t)nparts, (np + j.unit - 1) / j.unit);
    } else {
        nparts = (int)PYBNN_MIN((size_t)nparts, m);
    }
    pybnn_par_run(nparts, pybnn_igemm_part, &j);
    return used;
}

/* Run the best variant at or below `isa` that is built and supported on up to `threads`
 * threads; return its ISA.  `wp` must have passed pybnn_igemm_check / pybnn_ibgemm_check for
 * this k and cout; k >= 1. */
static inline int pybnn_igemm(int isa, int threads, const int8_t *a, size_t lda, size_t m, const uint8_t *wp,
                              size_t k, size_t cout, int a_zp, int32_t *out, size_t ldo) {
    return pybnn_igemm_run(isa, threads, a, lda, m, wp, k, cout, a_zp, out, ldo, 0);
}
static inline int pybnn_ibgemm(int isa, int threads, const int8_t *a, size_t lda, size_t m, const uint8_t *wp,
                               size_t k, size_t cout, int a_zp, int32_t *out, size_t ldo) {
    return pybnn_igemm_run(isa, threads, a, lda, m, wp, k, cout, a_zp, out, ldo, 1);
}

#endif
