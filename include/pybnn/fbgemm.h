/* The float-activation GEMMs, one register-blocked kernel family for two weight types:
 *
 *     fbgemm:  out[m, n] = sum_k a[m, k] * s[n, k]     binary weights (FloatBinaryConv2D/Dense)
 *     sgemm:   out[m, n] = sum_k a[m, k] * w[k, n]     float32 weights (Conv2D)
 *
 * s[n, k] = +1 where the weight's bit is 0, -1 where it is 1.  Binary weights stay bit-packed:
 * the kernels expand the bits on the fly, so no float copy of them ever exists.  Float
 * weights are read in place from the (K, cout) row-major matrix of the layer (a view of the
 * HWIO kernel, so a memory-mapped model file is used as it is).  The kernels differ only in
 * how a vector of weights is made (FW = 0: from bits, FW = 1: a load).  (The int8 x binary
 * GEMM is in igemm.h.)
 */
#ifndef PYBNN_FBGEMM_H
#define PYBNN_FBGEMM_H

#include "pybnn/common.h"

/* ================================================================ fbgemm
 *
 * fbgemm has a weight layout of its own (pybnn_fbgemm_pack_bits), in panels of 32 output channels:
 *
 *     bytes [0, 64)   header: uint32 magic "PFB1", K, cout, then 52 zero bytes (little endian;
 *                     common.h, pybnn_pack_header)
 *     then            ceil(cout/32) panels of K little-endian uint32 words: bit j of word k of
 *                     panel p is the weight of channel 32p + j at depth k (bit 1 = -1); the
 *                     bits of channels >= cout are 0
 *
 * One word holds the signs that 32 channels apply to the same activation a[m, k], which is
 * what a register-blocked GEMM wants: a tile of MR rows x NR channels keeps its sums in vector
 * registers and, for each k, multiply-adds the broadcast a[m, k] with vectors of +-1.0f made
 * from the bits in registers (AVX-512: the bits are the mask of a blend of 1.0 and -1.0;
 * AVX2, SSE4 and NEON: each byte indexes pybnn_fbgemm_signs, a 8 KiB table of 8 signs).  No
 * float copy of the weights is ever made, so they stay 1 bit each all the way into L1.
 *
 * Every output is summed in k order with one rounding per k: acc = 0, then acc = acc + (+-a)
 * (a product with +-1 is exact, so an FMA rounds exactly as that add).  Every variant, tile
 * shape and thread count therefore gives the same bits (armv7 NEON aside: it flushes denormals
 * to zero), and the error is that of recursive summation, at most (K-1) u sum_k |a[m, k]| with
 * u = 2^-24 (typically ~sqrt(K) u sum_k |a[m, k]|). */
#define PYBNN_FBGEMM_MAGIC 0x31424650u /* "PFB1" */
#define PYBNN_FBGEMM_HEADER PYBNN_PACK_HEADER

static inline size_t pybnn_fbgemm_panels(size_t cout) { return (cout + 31) / 32; }

static inline size_t pybnn_fbgemm_packed_size(size_t k, size_t cout) {
    return PYBNN_FBGEMM_HEADER + pybnn_fbgemm_panels(cout) * k * 4;
}

static inline uint32_t pybnn_fbgemm_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4); /* the packed buffer need not be aligned */
    return v;
}

/* 1 if `wp` (of `size` bytes) was packed by pybnn_fbgemm_pack_bits for this K and cout. */
static inline int pybnn_fbgemm_check(const uint8_t *wp, size_t size, size_t k, size_t cout) {
    return pybnn_pack_header_ok(wp, size, pybnn_fbgemm_packed_size(k, cout), PYBNN_FBGEMM_MAGIC, k, cout);
}

/* Signs s[n, kk] = bit n * sn + kk * sk of `bits` (common.h, pybnn_sbit; 1 = -1) for n < cout,
 * kk < k; dst: pybnn_fbgemm_packed_size(k, cout) bytes. */
static inline void pybnn_fbgemm_pack_bits(const uint8_t *bits, size_t sn, size_t sk, size_t k, size_t cout,
                                          uint8_t *dst) {
    pybnn_pack_header(dst, PYBNN_FBGEMM_MAGIC, k, cout);
    for (size_t p = 0; p < pybnn_fbgemm_panels(cout); p++)
        for (size_t kk = 0; kk < k; kk++) {
            uint32_t word = 0;
            for (size_t j = 0; j < 32 && 32 * p + j < cout; j++)
                word |= (uint32_t)pybnn_sbit(bits, sn, sk, 32 * p + j, kk) << j;
            memcpy(dst + PYBNN_FBGEMM_HEADER + (p * k + kk) * 4, &word, 4);
        }
}

/* ================================================================ sgemm
 *
 * sgemm's weights are packed as fbgemm's, with a float where fbgemm has a bit
 * (pybnn_sgemm_pack): a 64-byte header (magic "PFS1", K, cout, 52 zero bytes), then ceil(cout/32) panels
 * of K rows of 32 floats (row k of panel p: channels 32p .. 32p+31 at depth k, zeros beyond
 * cout).  A tile then reads its weights as one contiguous stream, whatever cout is: in the
 * (K, cout) matrix itself, rows a power-of-two stride apart fall into a few L1 sets and evict
 * each other (measured: 1.5x slower on 3x3_512).  K is cut into near-equal blocks of at most
 * PYBNN_SGEMM_KC (a block of every panel stays in L2 while every row tile passes it, as in
 * BLIS); each output is still summed in k order (the sums go through `out` between blocks,
 * exactly), with one FMA per k where the ISA has FMA (AVX2, AVX-512, aarch64) and a multiply then an
 * add otherwise (SSE4, scalar, armv7).  A variant therefore gives the same bits for every
 * thread count and tile shape, and AVX2 and AVX-512 the same bits as each other; the error
 * is that of a recursive dot product, at most gamma_K sum_k |a[m,k] w[k,n]|. */
#define PYBNN_SGEMM_MAGIC 0x31534650u /* "PFS1" */
#define PYBNN_SGEMM_KC 512 /* measured 128 / 256 / 512: 512 best or equal on every conv shape */

static inline size_t pybnn_sgemm_packed_size(size_t k, size_t cout) {
    return PYBNN_FBGEMM_HEADER + pybnn_fbgemm_panels(cout) * k * 32 * 4;
}

static inline int pybnn_sgemm_check(const uint8_t *wp, size_t size, size_t k, size_t cout) {
    return pybnn_pack_header_ok(wp, size, pybnn_sgemm_packed_size(k, cout), PYBNN_SGEMM_MAGIC, k, cout);
}

/* pybnn_fbgemm_check (fw = 0) or pybnn_sgemm_check (fw = 1). */
static inline int pybnn_fgemm_check(int fw, const uint8_t *wp, size_t size, size_t k, size_t cout) {
    return fw ? pybnn_sgemm_check(wp, size, k, cout) : pybnn_fbgemm_check(wp, size, k, cout);
}

/* w: (k, cout) float32 row-major (as a HWIO kernel is); dst: pybnn_sgemm_packed_size bytes. */
static inline void pybnn_sgemm_pack(const float *w, size_t k, size_t cout, uint8_t *dst) {
    pybnn_pack_header(dst, PYBNN_SGEMM_MAGIC, k, cout);
    for (size_t p = 0; p < pybnn_fbgemm_panels(cout); p++)
        for (size_t kk = 0; kk < k; kk++) {
            float row[32] = {0.0f};
            memcpy(row, w + kk * cout + 32 * p, PYBNN_MIN(32, cout - 32 * p) * sizeof(float));
            memcpy(dst + PYBNN_FBGEMM_HEADER + (p * k + kk) * 128, row, sizeof row);
        }
}

/* Computes rows [0, mr) x channels [0, nc) of out from k steps of the panels at w (FW = 0:
 * bits, 1: floats; a tile starts at a panel unless the variant says otherwise), whose full
 * depth (the distance between panels) is kp.  acc_in: add to what `out` holds (a later K
 * block) instead of starting from 0. */
typedef void (*pybnn_fbgemm_tile_fn)(const float *a, size_t lda, size_t mr, const uint8_t *w, size_t kp,
                                     size_t k, size_t nc, float *out, size_t ldo, int acc_in);

/* Byte offset of channel n0 (a multiple of 8) from the start of a tile's panels. */
#define PYBNN_FB_AT(FW, kp, n0) (((n0) / 32 * (kp) * 4 + (n0) % 32 / 8) * ((FW) ? 32 : 1))

/* The loop every SIMD variant shares: K in blocks of kc (float weights; the bits of a
 * binary panel are all in L1/L2 anyway, kc = k), rows in near-equal tiles of at most `mr`
 * (49 rows are 13+12+12+12, not 4x12+1: a thin tile wastes most of its issue slots),
 * channels in blocks of `nr` (a multiple of 32).  A row tile's activations stay in L1 while
 * all channel blocks stream their weights past them. */
static inline __attribute__((always_inline)) void
pybnn_fbgemm_tiles(pybnn_fbgemm_tile_fn tile, size_t mr, size_t nr, const float *a, size_t lda, size_t m,
                   const uint8_t *w, size_t k, size_t cout, float *out, size_t ldo, const int FW) {
    const size_t ntiles = (m + mr - 1) / mr, nk = FW ? (k + PYBNN_SGEMM_KC - 1) / PYBNN_SGEMM_KC : 1;
    const size_t kc = (k + nk - 1) / nk;
    for (size_t k0 = 0; k0 < k; k0 += kc) {
        const size_t kb = PYBNN_MIN(kc, k - k0);
        const uint8_t *wk = w + k0 * 128; /* FW only: k0 = 0 for bits */
        for (size_t t = 0, r0 = 0; t < ntiles; t++) {
            const size_t rows = m / ntiles + (t < m % ntiles);
            for (size_t n0 = 0; n0 < cout; n0 += nr)
                tile(a + r0 * lda + k0, lda, rows, wk + PYBNN_FB_AT(FW, k, n0), k, kb, PYBNN_MIN(nr, cout - n0),
                     out + r0 * ldo + n0, ldo, k0 > 0);
            r0 += rows;
        }
    }
}

/* Defines the two entry points of a variant from its tile function TILE(..., FW). */
#define PYBNN_FB_ENTRIES(ATTR, NAME, TILE, MR, NR)                                                 \
    ATTR static void pybnn_fb_##NAME##_bits(const float *a, size_t lda, size_t mr, const uint8_t *w, \
                                            size_t kp, size_t k, size_t nc, float *out, size_t ldo,  \
                                            int acc_in) {                                            \
        TILE(a, lda, mr, w, kp, k, nc, out, ldo, acc_in, 0);                                         \
    }                                                                                                \
    ATTR static void pybnn_fb_##NAME##_f32(const float *a, size_t lda, size_t mr, const uint8_t *w,  \
                                           size_t kp, size_t k, size_t nc, float *out, size_t ldo,   \
                                           int acc_in) {                                             \
        TILE(a, lda, mr, w, kp, k, nc, out, ldo, acc_in, 1);                                         \
    }                                                                                                \
    ATTR static void pybnn_fbgemm_##NAME(const float *a, size_t lda, size_t m, const uint8_t *w,     \
                                         size_t k, size_t cout, float *out, size_t ldo) {            \
        pybnn_fbgemm_tiles(pybnn_fb_##NAME##_bits, MR, NR, a, lda, m, w, k, cout, out, ldo, 0);      \
    }                                                                                                \
    ATTR static void pybnn_sgemm_##NAME(const float *a, size_t lda, size_t m, const uint8_t *w,      \
                                        size_t k, size_t cout, float *out, size_t ldo) {             \
        pybnn_fbgemm_tiles(pybnn_fb_##NAME##_f32, MR, NR, a, lda, m, w, k, cout, out, ldo, 1);       \
    }

/* ================================================================ scalar */

static void pybnn_fbgemm_scalar(const float *a, size_t lda, size_t m, const uint8_t *panels, size_t k,
                                size_t cout, float *out, size_t ldo) {
    for (size_t i = 0; i < m; i++)
        for (size_t n0 = 0; n0 < cout; n0 += 32) {
            const uint8_t *w = panels + n0 / 32 * k * 4;
            const size_t nc = PYBNN_MIN(32, cout - n0);
            float acc[32] = {0.0f};
            for (size_t kk = 0; kk < k; kk++) {
                const float x = a[i * lda + kk];
                const uint32_t word = pybnn_fbgemm_u32(w + 4 * kk);
                for (size_t j = 0; j < nc; j++)
                    acc[j] += (word >> j) & 1u ? -x : x;
            }
            memcpy(out + i * ldo + n0, acc, nc * sizeof(float));
        }
}

static void pybnn_sgemm_scalar(const float *a, size_t lda, size_t m, const uint8_t *panels, size_t k,
                               size_t cout, float *out, size_t ldo) {
    for (size_t i = 0; i < m; i++)
        for (size_t n0 = 0; n0 < cout; n0 += 32) {
            const float *w = (const float *)(const void *)(panels + n0 / 32 * k * 128);
            const size_t nc = PYBNN_MIN(32, cout - n0);
            float acc[32] = {0.0f};
            for (size_t kk = 0; kk < k; kk++) {
                const float x = a[i * lda + kk];
                for (size_t j = 0; j < nc; j++)
                    acc[j] += x * w[kk * 32 + j];
            }
            memcpy(out + i * ldo + n0, acc, nc * sizeof(float));
        }
}

#if PYBNN_X86 || PYBNN_NEON
/* pybnn_fbgemm_signs[b][j] = -1.0f where bit j of byte b is set, else +1.0f. */
#define PYBNN_FB_S(b, j) ((((b) >> (j)) & 1) ? -1.0f : 1.0f)
#define PYBNN_FB_ROW(b)                                                                            \
    {PYBNN_FB_S(b, 0), PYBNN_FB_S(b, 1), PYBNN_FB_S(b, 2), PYBNN_FB_S(b, 3),                       \
     PYBNN_FB_S(b, 4), PYBNN_FB_S(b, 5), PYBNN_FB_S(b, 6), PYBNN_FB_S(b, 7)}
#define PYBNN_FB_ROW4(b) PYBNN_FB_ROW(b), PYBNN_FB_ROW(b + 1), PYBNN_FB_ROW(b + 2), PYBNN_FB_ROW(b + 3)
#define PYBNN_FB_ROW16(b) PYBNN_FB_ROW4(b), PYBNN_FB_ROW4(b + 4), PYBNN_FB_ROW4(b + 8), PYBNN_FB_ROW4(b + 12)
#define PYBNN_FB_ROW64(b) PYBNN_FB_ROW16(b), PYBNN_FB_ROW16(b + 16), PYBNN_FB_ROW16(b + 32), PYBNN_FB_ROW16(b + 48)
static const float pybnn_fbgemm_signs[256][8] __attribute__((aligned(32))) = {
    PYBNN_FB_ROW64(0), PYBNN_FB_ROW64(64), PYBNN_FB_ROW64(128), PYBNN_FB_ROW64(192)};

/* acc[r][v] = UPDATE for every row r and vector v of a tile, where UPDATE may use x, the
 * broadcast activation XR of row r, and s[v], the signs of vector v.  The loop nest follows
 * the tile's shape so that few registers are live besides the MR x NV sums: a tall tile
 * broadcasts one row at a time (all s[v] live), a wide one keeps its few rows broadcast. */
#define PYBNN_FB_MULADD(VT, XR, UPDATE)                                                            \
    if (MR > NV) {                                                                                 \
        for (int r = 0; r < MR; r++) {                                                             \
            const VT x = XR;                                                                       \
            for (int v = 0; v < NV; v++) acc[r][v] = UPDATE;                                       \
        }                                                                                          \
    } else {                                                                                       \
        VT xs[8];                                                                                  \
        for (int r = 0; r < MR; r++) xs[r] = XR;                                                   \
        for (int v = 0; v < NV; v++)                                                               \
            for (int r = 0; r < MR; r++) {                                                         \
                const VT x = xs[r];                                                                \
                acc[r][v] = UPDATE;                                                                \
            }                                                                                      \
    }

/* Stores the first n (1..lanes) floats of a vector spilled to `v`. */
static inline void pybnn_fbgemm_store_part(float *dst, const float *v, size_t n) { memcpy(dst, v, n * sizeof(float)); }
#endif

#if PYBNN_X86
/* ================================================================ SSE4 */

/* MR rows x NV vectors of 4 channels.  Bits: vector v reads byte v/2%4 of the words of panel
 * v/8 (so `w` may start at any byte of a panel when NV <= 2).  No FMA: a multiply then an
 * add (with binary weights the product is exact, so that rounds as the FMA variants). */
PYBNN_TARGET_SSE4 static inline __attribute__((always_inline)) void
pybnn_fbgemm_kernel_sse4(const float *a, size_t lda, const uint8_t *w, size_t kp, size_t k, float *out,
                         size_t ldo, size_t nc, int acc_in, const int MR, const int NV, const int FW) {
    const float *wf = (const float *)(const void *)w;
    __m128 acc[6][8]; /* [MR][NV]: fixed bounds, or the arrays would be VLAs and live in memory */
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < NV; v++) {
            float tmp[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            if (acc_in && (size_t)(4 * v) < nc)
                memcpy(tmp, out + r * ldo + 4 * v, PYBNN_MIN(4, nc - 4 * v) * sizeof(float));
            acc[r][v] = _mm_loadu_ps(tmp);
        }
    for (size_t kk = 0; kk < k; kk++) {
        __m128 s[8];
        for (int v = 0; v < NV; v++)
            s[v] = FW ? _mm_loadu_ps(wf + (v / 8 * kp + kk) * 32 + v % 8 * 4)
                      : _mm_load_ps(pybnn_fbgemm_signs[w[(v / 8 * kp + kk) * 4 + v / 2 % 4]] + 4 * (v % 2));
        PYBNN_FB_MULADD(__m128, _mm_set1_ps(a[r * lda + kk]), _mm_add_ps(acc[r][v], _mm_mul_ps(x, s[v])));
    }
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < NV; v++) { /* constant bounds: unrolled, so acc stays in registers */
            float tmp[4];
            if ((size_t)(4 * v + 4) <= nc) {
                _mm_storeu_ps(out + r * ldo + 4 * v, acc[r][v]);
            } else if ((size_t)(4 * v) < nc) {
                _mm_storeu_ps(tmp, acc[r][v]);
                pybnn_fbgemm_store_part(out + r * ldo + 4 * v, tmp, nc - 4 * v);
            }
        }
}

/* Tiles of up to 6 rows x 32 channels: one row does the whole panel (8 sums in flight),
 * more rows go 8 channels at a time. */
PYBNN_TARGET_SSE4 static inline __attribute__((always_inline)) void
pybnn_fbgemm_tile_sse4(const float *a, size_t lda, size_t mr, const uint8_t *w, size_t kp, size_t k, size_t nc,
                       float *out, size_t ldo, int acc_in, const int FW) {
    if (mr == 1) {
        pybnn_fbgemm_kernel_sse4(a, lda, w, kp, k, out, ldo, nc, acc_in, 1, 8, FW);
        return;
    }
    for (size_t n0 = 0; n0 < nc; n0 += 8) {
        const uint8_t *ws = w + PYBNN_FB_AT(FW, kp, n0);
        const size_t c = PYBNN_MIN(8, nc - n0);
        float *o = out + n0;
        switch (mr) {
        case 2: pybnn_fbgemm_kernel_sse4(a, lda, ws, kp, k, o, ldo, c, acc_in, 2, 2, FW); break;
        case 3: pybnn_fbgemm_kernel_sse4(a, lda, ws, kp, k, o, ldo, c, acc_in, 3, 2, FW); break;
        case 4: pybnn_fbgemm_kernel_sse4(a, lda, ws, kp, k, o, ldo, c, acc_in, 4, 2, FW); break;
        case 5: pybnn_fbgemm_kernel_sse4(a, lda, ws, kp, k, o, ldo, c, acc_in, 5, 2, FW); break;
        default: pybnn_fbgemm_kernel_sse4(a, lda, ws, kp, k, o, ldo, c, acc_in, 6, 2, FW); break;
        }
    }
}

PYBNN_FB_ENTRIES(PYBNN_TARGET_SSE4, sse4, pybnn_fbgemm_tile_sse4, 6, 32)

/* ================================================================ AVX2 */

/* MR rows x NV vectors of 8 channels; bits: vector v is byte v%4 of the words of panel v/4. */
PYBNN_TARGET_AVX2 static inline __attribute__((always_inline)) void
pybnn_fbgemm_kernel_avx2(const float *a, size_t lda, const uint8_t *w, size_t kp, size_t k, float *out,
                         size_t ldo, size_t nc, int acc_in, const int MR, const int NV, const int FW) {
    const float *wf = (const float *)(const void *)w;
    __m256 acc[6][8];
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < NV; v++) {
            if (acc_in && (size_t)(8 * v + 8) <= nc) {
                acc[r][v] = _mm256_loadu_ps(out + r * ldo + 8 * v);
            } else {
                float tmp[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
                if (acc_in && (size_t)(8 * v) < nc)
                    memcpy(tmp, out + r * ldo + 8 * v, (nc - 8 * v) * sizeof(float));
                acc[r][v] = _mm256_loadu_ps(tmp);
            }
        }
#pragma GCC unroll 4 /* measured: +3-10% here; neutral for SSE4, a loss for AVX-512 */
    for (size_t kk = 0; kk < k; kk++) {
        __m256 s[8];
        for (int v = 0; v < NV; v++)
            s[v] = FW ? _mm256_loadu_ps(wf + (v / 4 * kp + kk) * 32 + v % 4 * 8)
                      : _mm256_load_ps(pybnn_fbgemm_signs[w[(v / 4 * kp + kk) * 4 + v % 4]]);
        PYBNN_FB_MULADD(__m256, _mm256_set1_ps(a[r * lda + kk]), _mm256_fmadd_ps(x, s[v], acc[r][v]));
    }
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < NV; v++) {
            float tmp[8];
            if ((size_t)(8 * v + 8) <= nc) {
                _mm256_storeu_ps(out + r * ldo + 8 * v, acc[r][v]);
            } else if ((size_t)(8 * v) < nc) {
                _mm256_storeu_ps(tmp, acc[r][v]);
                pybnn_fbgemm_store_part(out + r * ldo + 8 * v, tmp, nc - 8 * v);
            }
        }
}

#define PYBNN_FB_AVX2(MR, NV) pybnn_fbgemm_kernel_avx2(a, lda, wp, kp, k, out + n0, ldo, c, acc_in, MR, NV, FW)

/* Tiles of up to 6 rows x 64 channels.  Many rows go 16 channels at a time: 6 x 16 is 12
 * sums, as a float GEMM's 6x16 AVX2 kernel.  One row takes 64 channels, two rows 32, so
 * that 8 sums are in flight. */
PYBNN_TARGET_AVX2 static inline __attribute__((always_inline)) void
pybnn_fbgemm_tile_avx2(const float *a, size_t lda, size_t mr, const uint8_t *w, size_t kp, size_t k, size_t nc,
                       float *out, size_t ldo, int acc_in, const int FW) {
    const size_t nv = mr == 1 ? 8 : mr == 2 ? 4 : 2; /* vectors of 8 channels per kernel call */
    for (size_t n0 = 0; n0 < nc; n0 += 8 * nv) {
        const uint8_t *wp = w + PYBNN_FB_AT(FW, kp, n0); /* 16-channel tiles may start mid-panel */
        const size_t c = PYBNN_MIN(8 * nv, nc - n0);
        switch (mr) {
        case 1:
            if (c > 32)
                PYBNN_FB_AVX2(1, 8);
            else
                PYBNN_FB_AVX2(1, 4);
            break;
        case 2: PYBNN_FB_AVX2(2, 4); break;
        case 3: PYBNN_FB_AVX2(3, 2); break;
        case 4: PYBNN_FB_AVX2(4, 2); break;
        case 5: PYBNN_FB_AVX2(5, 2); break;
        default: PYBNN_FB_AVX2(6, 2); break;
        }
    }
}
#undef PYBNN_FB_AVX2

PYBNN_FB_ENTRIES(PYBNN_TARGET_AVX2, avx2, pybnn_fbgemm_tile_avx2, 6, 64)

/* ================================================================ AVX-512 */

/* The 16 signs at p as a mask register, loaded straight from memory (kmovw k, m16: a load
 * uop only).  Left to itself GCC routes masks through a general register and kmovw k, r32,
 * which takes a port-5 slot from the FMAs and blends. */
typedef uint16_t __attribute__((aligned(1), may_alias)) pybnn_fbgemm_u16;
PYBNN_TARGET_AVX512 static inline __attribute__((always_inline)) __mmask16 pybnn_fbgemm_mask16(const uint8_t *p) {
    __mmask16 m;
    __asm__("kmovw %1, %0" : "=k"(m) : "m"(*(const pybnn_fbgemm_u16 *)p));
    return m;
}

/* MR rows x NP panels (2 vectors of 16 channels each); bits: a blend of 1.0 and -1.0 under
 * the mask of 16 bits makes the signs, one uop per 16. */
PYBNN_TARGET_AVX512 static inline __attribute__((always_inline)) void
pybnn_fbgemm_kernel_avx512(const float *a, size_t lda, const uint8_t *w, size_t kp, size_t k, float *out,
                           size_t ldo, size_t nc, int acc_in, const int MR, const int NP, const int FW) {
    const __m512 one = _mm512_set1_ps(1.0f), minus = _mm512_set1_ps(-1.0f);
    const float *wf = (const float *)(const void *)w;
    const int NV = 2 * NP;
    __m512 acc[12][8];
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < NV; v++) {
            const size_t n = (size_t)(16 * v) < nc ? PYBNN_MIN(16, nc - 16 * v) : 0;
            acc[r][v] = acc_in ? _mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), out + r * ldo + 16 * v)
                               : _mm512_setzero_ps();
        }
    for (size_t kk = 0; kk < k; kk++) {
        __m512 s[8];
        for (int v = 0; v < NV; v++)
            s[v] = FW ? _mm512_loadu_ps(wf + (v / 2 * kp + kk) * 32 + v % 2 * 16)
                      : _mm512_mask_blend_ps(pybnn_fbgemm_mask16(w + (v / 2 * kp + kk) * 4 + v % 2 * 2), one, minus);
        PYBNN_FB_MULADD(__m512, _mm512_set1_ps(a[r * lda + kk]), _mm512_fmadd_ps(x, s[v], acc[r][v]));
    }
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < NV; v++)
            if ((size_t)(16 * v) < nc) {
                const size_t n = PYBNN_MIN(16, nc - 16 * v);
                _mm512_mask_storeu_ps(out + r * ldo + 16 * v, (__mmask16)((1u << n) - 1), acc[r][v]);
            }
}

#define PYBNN_FB_AVX512(MR, NP) pybnn_fbgemm_kernel_avx512(a, lda, wp, kp, k, out + n0, ldo, c, acc_in, MR, NP, FW)

/* Tiles of up to 12 rows x 128 channels.  Many rows go 32 channels (one panel) at a time:
 * 12 x 32 is 24 sums, as a float GEMM's 12x32 AVX-512 kernel.  Few rows take up to 4 panels
 * at once so that at least 8 sums are in flight (4-cycle FMA latency, 2 FMA ports), without
 * running out of the 32 registers. */
PYBNN_TARGET_AVX512 static inline __attribute__((always_inline)) void
pybnn_fbgemm_tile_avx512(const float *a, size_t lda, size_t mr, const uint8_t *w, size_t kp, size_t k,
                         size_t nc, float *out, size_t ldo, int acc_in, const int FW) {
    const size_t np = mr <= 2 ? 4 : mr == 3 ? 2 : 1; /* panels per kernel call */
    for (size_t n0 = 0; n0 < nc; n0 += 32 * np) {
        const uint8_t *wp = w + PYBNN_FB_AT(FW, kp, n0);
        const size_t c = PYBNN_MIN(32 * np, nc - n0);
        switch ((mr - 1) * 4 + (c - 1) / 32) {
        case 0: PYBNN_FB_AVX512(1, 1); break;
        case 1: PYBNN_FB_AVX512(1, 2); break;
        case 2: PYBNN_FB_AVX512(1, 3); break;
        case 3: PYBNN_FB_AVX512(1, 4); break;
        case 4: PYBNN_FB_AVX512(2, 1); break;
        case 5: PYBNN_FB_AVX512(2, 2); break;
        case 6: PYBNN_FB_AVX512(2, 3); break;
        case 7: PYBNN_FB_AVX512(2, 4); break;
        case 8: PYBNN_FB_AVX512(3, 1); break;
        case 9: PYBNN_FB_AVX512(3, 2); break;
        case 12: PYBNN_FB_AVX512(4, 1); break;
        case 16: PYBNN_FB_AVX512(5, 1); break;
        case 20: PYBNN_FB_AVX512(6, 1); break;
        case 24: PYBNN_FB_AVX512(7, 1); break;
        case 28: PYBNN_FB_AVX512(8, 1); break;
        case 32: PYBNN_FB_AVX512(9, 1); break;
        case 36: PYBNN_FB_AVX512(10, 1); break;
        case 40: PYBNN_FB_AVX512(11, 1); break;
        default: PYBNN_FB_AVX512(12, 1); break;
        }
    }
}
#undef PYBNN_FB_AVX512

PYBNN_FB_ENTRIES(PYBNN_TARGET_AVX512, avx512, pybnn_fbgemm_tile_avx512, 12, 128)
#endif /* PYBNN_X86 */

#if PYBNN_NEON
/* ================================================================ NEON */

/* As SSE4.  aarch64 (and armv7 with VFPv4) multiply-adds fused; plain armv7 multiplies then
 * adds: with binary weights the product is exact, so both round like the other variants. */
#if defined(__aarch64__) || defined(__ARM_FEATURE_FMA)
#define PYBNN_FB_NEON_MLA(acc, x, s) vfmaq_f32(acc, x, s)
#else
#define PYBNN_FB_NEON_MLA(acc, x, s) vmlaq_f32(acc, x, s)
#endif

static inline __attribute__((always_inline)) void
pybnn_fbgemm_kernel_neon(const float *a, size_t lda, const uint8_t *w, size_t kp, size_t k, float *out,
                         size_t ldo, size_t nc, int acc_in, const int MR, const int NV, const int FW) {
    const float *wf = (const float *)(const void *)w;
    float32x4_t acc[4][8];
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < NV; v++) {
            float tmp[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            if (acc_in && (size_t)(4 * v) < nc)
                memcpy(tmp, out + r * ldo + 4 * v, PYBNN_MIN(4, nc - 4 * v) * sizeof(float));
            acc[r][v] = vld1q_f32(tmp);
        }
    for (size_t kk = 0; kk < k; kk++) {
        float32x4_t s[8];
        for (int v = 0; v < NV; v++)
            s[v] = FW ? vld1q_f32(wf + (v / 8 * kp + kk) * 32 + v % 8 * 4)
                      : vld1q_f32(pybnn_fbgemm_signs[w[(v / 8 * kp + kk) * 4 + v / 2 % 4]] + 4 * (v % 2));
        PYBNN_FB_MULADD(float32x4_t, vdupq_n_f32(a[r * lda + kk]), PYBNN_FB_NEON_MLA(acc[r][v], x, s[v]));
    }
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < NV; v++) {
            float *dst = out + r * ldo + 4 * v;
            if ((size_t)(4 * v + 4) <= nc) {
                vst1q_f32(dst, acc[r][v]);
            } else if ((size_t)(4 * v) < nc) {
                /* Lane stores: through a spill buffer (as x86) aarch64 GCC kept every sum in memory. */
                if (nc - 4 * v >= 2)
                    vst1_f32(dst, vget_low_f32(acc[r][v]));
                else
                    vst1q_lane_f32(dst, acc[r][v], 0);
                if (nc - 4 * v == 3)
                    vst1q_lane_f32(dst + 2, acc[r][v], 2);
            }
        }
}

/* Tiles of up to 4 rows x 32 channels (armv7 has 16 vector registers). */
static inline __attribute__((always_inline)) void
pybnn_fbgemm_tile_neon(const float *a, size_t lda, size_t mr, const uint8_t *w, size_t kp, size_t k, size_t nc,
                       float *out, size_t ldo, int acc_in, const int FW) {
    if (mr == 1) {
        pybnn_fbgemm_kernel_neon(a, lda, w, kp, k, out, ldo, nc, acc_in, 1, 8, FW);
        return;
    }
    for (size_t n0 = 0; n0 < nc; n0 += 8) {
        const uint8_t *ws = w + PYBNN_FB_AT(FW, kp, n0);
        const size_t c = PYBNN_MIN(8, nc - n0);
        float *o = out + n0;
        switch (mr) {
        case 2: pybnn_fbgemm_kernel_neon(a, lda, ws, kp, k, o, ldo, c, acc_in, 2, 2, FW); break;
        case 3: pybnn_fbgemm_kernel_neon(a, lda, ws, kp, k, o, ldo, c, acc_in, 3, 2, FW); break;
        default: pybnn_fbgemm_kernel_neon(a, lda, ws, kp, k, o, ldo, c, acc_in, 4, 2, FW); break;
        }
    }
}
#undef PYBNN_FB_NEON_MLA

PYBNN_FB_ENTRIES(, neon, pybnn_fbgemm_tile_neon, 4, 32)
#endif /* PYBNN_NEON */

/* ================================================================ drivers
 *
 * Split rows into up to `threads` contiguous ranges, or channel panels when there are fewer
 * than 64 rows per part: each part then gets every row in full-height tiles (49 rows on 2
 * threads as 25 + 24 rows would make thin tiles) and reads all activations, which are small
 * then.  Every output is summed in k order whatever its range and tile, so results are
 * bit-identical for every thread count.  k >= 1. */

typedef void (*pybnn_fbgemm_fn)(const float *a, size_t lda, size_t m, const uint8_t *panels, size_t k,
                                size_t cout, float *out, size_t ldo);

/* The variant of fbgemm (fw = 0) or sgemm (fw = 1) for `isa`; *used = the ISA it runs. */
static inline pybnn_fbgemm_fn pybnn_fbgemm_pick(int isa, int fw, int *used) {
#define PYBNN_FB_PICK(ISA, NAME)                                                                   \
    if (isa >= ISA && pybnn_isa_supported(ISA)) {                                                   \
        *used = ISA;                                                                                \
        return fw ? pybnn_sgemm_##NAME : pybnn_fbgemm_##NAME;                                       \
    }
#if PYBNN_NEON
    PYBNN_FB_PICK(PYBNN_ISA_NEON, neon)
#endif
#if PYBNN_X86
    PYBNN_FB_PICK(PYBNN_ISA_AVX512, avx512)
    PYBNN_FB_PICK(PYBNN_ISA_AVX2, avx2)
    PYBNN_FB_PICK(PYBNN_ISA_SSE4, sse4)
#endif
#undef PYBNN_FB_PICK
    (void)isa;
    *used = PYBNN_ISA_SCALAR;
    return fw ? pybnn_sgemm_scalar : pybnn_fbgemm_scalar;
}

typedef struct {
    pybnn_fbgemm_fn fn;
    const float *a;
    const uint8_t *panels;
    size_t lda, m, k, cout, ldo, panel_bytes;
    float *out;
    int by_rows;
} pybnn_fbgemm_job;

static void pybnn_fbgemm_part(void *ctx, int part, int nparts) {
    const pybnn_fbgemm_job *j = (const pybnn_fbgemm_job *)ctx;
    size_t lo, hi;
    if (j->by_rows) {
        pybnn_par_range(j->m, part, nparts, &lo, &hi);
        if (lo < hi)
            j->fn(j->a + lo * j->lda, j->lda, hi - lo, j->panels, j->k, j->cout, j->out + lo * j->ldo, j->ldo);
    } else {
        pybnn_par_range(pybnn_fbgemm_panels(j->cout), part, nparts, &lo, &hi);
        if (lo < hi)
            j->fn(j->a, j->lda, j->m, j->panels + lo * j->panel_bytes, j->k, PYBNN_MIN(32 * hi, j->cout) - 32 * lo,
                  j->out + 32 * lo, j->ldo);
    }
}

/* Output channels [c0, c1) of the GEMM on one thread (c0 a multiple of 32, a panel
 * boundary): out points at channel c0 of row 0.  Each element as pybnn_fgemm computes it. */
static inline void pybnn_fgemm_cols(pybnn_fbgemm_fn fn, int fw, const float *a, size_t lda, size_t m,
                                    const uint8_t *wp, size_t k, size_t c0, size_t c1, float *out, size_t ldo) {
    fn(a, lda, m, wp + PYBNN_FBGEMM_HEADER + c0 / 32 * k * (fw ? 128 : 4), k, c1 - c0, out, ldo);
}

/* fw = 0: fbgemm, `wp` must have passed pybnn_fbgemm_check(wp, size, k, cout); fw = 1:
 * sgemm, pybnn_sgemm_check. */
static inline int pybnn_fgemm(int fw, int isa, int threads, const float *a, size_t lda, size_t m,
                              const uint8_t *wp, size_t k, size_t cout, float *out, size_t ldo) {
    int used;
    pybnn_fbgemm_job j = {pybnn_fbgemm_pick(isa, fw, &used), a, wp + PYBNN_FBGEMM_HEADER, lda, m, k, cout, ldo,
                          k * (fw ? 128 : 4), out, 1};
    if (!m)
        return used;
    const size_t panels = pybnn_fbgemm_panels(cout);
    /* Work (common.h units): one per 4 multiply-adds. */
    int nparts = pybnn_par_parts(threads, PYBNN_MAX(m, panels), (double)m * (double)cout * (double)k / 4.0);
    j.by_rows = m >= (size_t)nparts * 64 || panels < (size_t)nparts;
    nparts = (int)PYBNN_MIN((size_t)nparts, j.by_rows ? m : panels);
    pybnn_par_run(nparts, pybnn_fbgemm_part, &j);
    return used;
}

#endif
