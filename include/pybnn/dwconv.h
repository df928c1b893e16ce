/* Depthwise convolution (groups = input channels) of float32 and int8 NHWC tensors: the
 * accumulators, or their output transform (output_transform.h) applied per block of pixels
 * while the block is in cache (what layers run):
 *
 *   acc[n, oh, ow, c*M + j] = sum over the taps (i, k) whose input pixel lies in the image of
 *                             x'[n, oh*sh - pt + i*dh, ow*sw - pl + k*dw, c] * w[i, k, c*M + j]
 *
 * M is the depth multiplier (output channels per input channel); x' = x for float32 (summed
 * in float32 in tap order, the product and each sum rounded separately) or x - zero_point for
 * int8 (exact int32).  Taps outside the image add nothing: float convolutions pad with 0 and
 * int8 padding holds the zero point (real 0).  w: (KH*KW, C*M) row-major, i.e. the layer's
 * (KH, KW, 1, C*M) kernel, as float32 or int32.
 *
 * How: a pixel's channels are adjacent in NHWC, so per output pixel a block of channels is
 * summed over the taps in vector registers and stored once (pybnn_dw_taps); the code is
 * written once in plain C with GCC vector types and compiled per instruction set, each with
 * its register width.  A depth multiplier > 1 takes one row operation per tap instead.
 * A grouped convolution with more than one input channel per group runs the layer's GEMM
 * kernels once per group instead (pybnn/layers/conv.py).
 * Threads: contiguous ranges of output pixels.
 */
#ifndef PYBNN_DWCONV_H
#define PYBNN_DWCONV_H

#include "pybnn/common.h"
#include "pybnn/output_transform.h"

#define PYBNN_DW_INLINE static inline __attribute__((always_inline))

/* acc[c*m + j] (+)= x'[c] * w[c*m + j] for one tap; first: assign instead of add. */
PYBNN_DW_INLINE void pybnn_dw_row_f32(float *restrict acc, const void *xv, const void *wv, size_t c, size_t m,
                                      int32_t zp, int first) {
    const float *restrict x = (const float *)xv, *restrict w = (const float *)wv;
    (void)zp;
    if (m == 1) {
        if (first)
            for (size_t i = 0; i < c; i++)
                acc[i] = x[i] * w[i];
        else
            for (size_t i = 0; i < c; i++)
                acc[i] = acc[i] + x[i] * w[i];
        return;
    }
    for (size_t i = 0; i < c; i++)
        for (size_t j = 0; j < m; j++)
            acc[i * m + j] = (first ? 0.0f : acc[i * m + j]) + x[i] * w[i * m + j];
}

PYBNN_DW_INLINE void pybnn_dw_row_i8(int32_t *restrict acc, const void *xv, const void *wv, size_t c, size_t m,
                                     int32_t zp, int first) {
    const int8_t *restrict x = (const int8_t *)xv;
    const int32_t *restrict w = (const int32_t *)wv;
    if (m == 1) {
        if (first)
            for (size_t i = 0; i < c; i++)
                acc[i] = ((int32_t)x[i] - zp) * w[i];
        else
            for (size_t i = 0; i < c; i++)
                acc[i] += ((int32_t)x[i] - zp) * w[i];
        return;
    }
    for (size_t i = 0; i < c; i++)
        for (size_t j = 0; j < m; j++)
            acc[i * m + j] = (first ? 0 : acc[i * m + j]) + ((int32_t)x[i] - zp) * w[i * m + j];
}

typedef struct pybnn_dw_job pybnn_dw_job;
typedef void (*pybnn_dw_fn)(const pybnn_dw_job *j, size_t lo, size_t hi, uint8_t *acc);

struct pybnn_dw_job {
    pybnn_dw_fn run;
    const uint8_t *x, *w;
    int h, w_, c, m, kh, kw, sh, sw, dh, dw, pad_top, pad_left, hout, wout;
    int32_t zp;
    size_t total;        /* output pixels */
    const pybnn_ot *ot;  /* NULL: out receives the (total, c*m) float32 or int32 accumulators; */
    int level;           /* else this transform (at pybnn_ot_level of the call's ISA) of them */
    void *out;
    int failed;          /* a part could not allocate its block buffer */
};

/* Depth multiplier 1 (the common case): the in-image taps of one output pixel, at most
 * PYBNN_DW_TAPS at a time, are summed per block of channels in GCC vectors of the variant's
 * register width (`bytes`: 64 AVX-512, 32 AVX2, 16 SSE/NEON; wider vectors would be spilled
 * to the stack), so the accumulator row is stored once per pass instead of loaded and stored
 * once per tap.  Blocks of K = 4, then 2, then 1 vectors: K independent add chains per tap
 * hide the add latency (one chain runs at a quarter of the adder's throughput).  Sums stay in
 * tap order; first: start from the first tap instead of acc. */
#define PYBNN_DW_TAPS 64
#define PYBNN_DW_VEC(T, n, name) typedef T name __attribute__((vector_size(n), aligned(1), may_alias))
PYBNN_DW_VEC(float, 64, pybnn_dw_f64b);
PYBNN_DW_VEC(float, 32, pybnn_dw_f32b);
PYBNN_DW_VEC(float, 16, pybnn_dw_f16b);
PYBNN_DW_VEC(int32_t, 64, pybnn_dw_i64b);
PYBNN_DW_VEC(int32_t, 32, pybnn_dw_i32b);
PYBNN_DW_VEC(int32_t, 16, pybnn_dw_i16b);
PYBNN_DW_VEC(int8_t, 16, pybnn_dw_b16b);
PYBNN_DW_VEC(int8_t, 8, pybnn_dw_b8b);
PYBNN_DW_VEC(int8_t, 4, pybnn_dw_b4b);

/* Channels [i, c) in blocks of K vectors V (L = sizeof(V)/4 lanes each): x by LOADX(V, t, o),
 * weights and accumulators as V. */
#define PYBNN_DW_BLOCKS(K, V, LOADX)                                                               \
    for (const size_t L = sizeof(V) / 4; i + K * L <= c; i += K * L) {                             \
        V a[K];                                                                                    \
        int t = first;                                                                             \
        for (int k = 0; k < K; k++) {                                                              \
            if (first)                                                                             \
                a[k] = LOADX(V, 0, k * L) * *(const V *)(ws[0] + 4 * (i + k * L));                 \
            else                                                                                   \
                a[k] = *(const V *)(acc + i + k * L);                                              \
        }                                                                                          \
        for (; t < nt; t++)                                                                        \
            for (int k = 0; k < K; k++)                                                            \
                a[k] = a[k] + LOADX(V, t, k * L) * *(const V *)(ws[t] + 4 * (i + k * L));          \
        for (int k = 0; k < K; k++)                                                                \
            *(V *)(acc + i + k * L) = a[k];                                                        \
    }
#define PYBNN_DW_LADDER(V, LOADX)                                                                  \
    {                                                                                              \
        PYBNN_DW_BLOCKS(4, V, LOADX)                                                               \
        PYBNN_DW_BLOCKS(2, V, LOADX)                                                               \
        PYBNN_DW_BLOCKS(1, V, LOADX)                                                               \
    }
#define PYBNN_DW_XF(V, t, o) (*(const V *)(xb + xoff[t] + 4 * (i + (o))))
#define PYBNN_DW_XI(V, t, o, B) (__builtin_convertvector(*(const B *)(xb + xoff[t] + i + (o)), V) - zp)
#define PYBNN_DW_XI64(V, t, o) PYBNN_DW_XI(V, t, o, pybnn_dw_b16b)
#define PYBNN_DW_XI32(V, t, o) PYBNN_DW_XI(V, t, o, pybnn_dw_b8b)
#define PYBNN_DW_XI16(V, t, o) PYBNN_DW_XI(V, t, o, pybnn_dw_b4b)

/* The remaining channels (all of them on the portable path, bytes = 4) one value at a time. */
#define PYBNN_DW_TAIL(T, X)                                                                        \
    for (; i < c; i++) {                                                                           \
        int t = first;                                                                             \
        T a = first ? X(0) * ((const T *)ws[0])[i] : acc[i];                                       \
        for (; t < nt; t++)                                                                        \
            a = a + X(t) * ((const T *)ws[t])[i];                                                  \
        acc[i] = a;                                                                                \
    }
#define PYBNN_DW_XF1(t) (((const float *)(xb + xoff[t]))[i])
#define PYBNN_DW_XI1(t) ((int32_t)((const int8_t *)(xb + xoff[t]))[i] - zp)

PYBNN_DW_INLINE void pybnn_dw_taps(void *restrict accv, const uint8_t *xb, const ptrdiff_t *xoff,
                                   const uint8_t *const *ws,
                                   int nt, size_t c, int32_t zp, int first, const int is_int8,
                                   const int bytes) {
    size_t i = 0;
    if (is_int8) {
        int32_t *restrict acc = (int32_t *)accv;
        if (bytes == 64)
            PYBNN_DW_LADDER(pybnn_dw_i64b, PYBNN_DW_XI64)
        else if (bytes == 32)
            PYBNN_DW_LADDER(pybnn_dw_i32b, PYBNN_DW_XI32)
        if (bytes >= 16)
            PYBNN_DW_BLOCKS(1, pybnn_dw_i16b, PYBNN_DW_XI16)
        PYBNN_DW_TAIL(int32_t, PYBNN_DW_XI1)
    } else {
        float *restrict acc = (float *)accv;
        (void)zp;
        if (bytes == 64)
            PYBNN_DW_LADDER(pybnn_dw_f64b, PYBNN_DW_XF)
        else if (bytes == 32)
            PYBNN_DW_LADDER(pybnn_dw_f32b, PYBNN_DW_XF)
        else if (bytes == 16)
            PYBNN_DW_LADDER(pybnn_dw_f16b, PYBNN_DW_XF)
        PYBNN_DW_TAIL(float, PYBNN_DW_XF1)
    }
}

/* Output pixels [lo, hi) into the accumulator rows at acc0, taps in row-major order.  Inlined
 * into each instruction set's function below, so the loops vectorise for it and no call is
 * made per tap.  A pixel whose
 * window lies inside the image (most of them) reuses one tap list built per call; only
 * border pixels build their own. */
static inline __attribute__((always_inline)) void pybnn_dw_range(const pybnn_dw_job *j, size_t lo, size_t hi,
                                                                  uint8_t *acc0, const int is_int8,
                                                                  const int bytes) {
    const size_t c = (size_t)j->c, m = (size_t)j->m, cm = c * m, pix = c * (is_int8 ? 1 : 4);
    const int kh = j->kh, kw = j->kw, h = j->h, w = j->w_, wout = j->wout, hout = j->hout;
    const int32_t zp = j->zp;
    const uint8_t *const x = j->x, *const wt = j->w;
    const int ntaps = kh * kw, inner_ok = m == 1 && ntaps <= PYBNN_DW_TAPS;
    ptrdiff_t inner_off[PYBNN_DW_TAPS], xoff[PYBNN_DW_TAPS];
    const uint8_t *inner_w[PYBNN_DW_TAPS], *ws[PYBNN_DW_TAPS];
    if (inner_ok)
        for (int i = 0; i < kh; i++)
            for (int k = 0; k < kw; k++) {
                inner_off[i * kw + k] = ((ptrdiff_t)i * j->dh * w + (ptrdiff_t)k * j->dw) * (ptrdiff_t)pix;
                inner_w[i * kw + k] = wt + (size_t)(i * kw + k) * cm * 4;
            }
    int ow = (int)(lo % (size_t)wout), oh = (int)((lo / (size_t)wout) % (size_t)hout);
    size_t b = lo / ((size_t)wout * hout);
    for (size_t p = lo; p < hi; p++) {
        const uint8_t *xb = x + b * (size_t)h * w * pix;
        uint8_t *acc = acc0 + (p - lo) * cm * 4;
        const long ih0 = (long)oh * j->sh - j->pad_top, iw0 = (long)ow * j->sw - j->pad_left;
        if (inner_ok && ih0 >= 0 && ih0 + (long)(kh - 1) * j->dh < h && iw0 >= 0 &&
            iw0 + (long)(kw - 1) * j->dw < w) {
            pybnn_dw_taps(acc, xb + ((size_t)ih0 * w + iw0) * pix, inner_off, inner_w, ntaps, c, zp, 1, is_int8,
                          bytes);
        } else {
            int first = 1, nt = 0;
            for (int i = 0; i < kh; i++) {
                long ih = ih0 + (long)i * j->dh;
                if (ih < 0 || ih >= h)
                    continue;
                for (int k = 0; k < kw; k++) {
                    long iw = iw0 + (long)k * j->dw;
                    if (iw < 0 || iw >= w)
                        continue;
                    const uint8_t *wp = wt + ((size_t)i * kw + k) * cm * 4;
                    xoff[nt] = (ptrdiff_t)(((size_t)ih * w + iw) * pix);
                    if (m != 1) { /* depth multiplier > 1: one row operation per tap */
                        if (is_int8)
                            pybnn_dw_row_i8((int32_t *)acc, xb + xoff[nt], wp, c, m, zp, first);
                        else
                            pybnn_dw_row_f32((float *)acc, xb + xoff[nt], wp, c, m, zp, first);
                        first = 0;
                        continue;
                    }
                    ws[nt] = wp;
                    if (++nt == PYBNN_DW_TAPS) {
                        pybnn_dw_taps(acc, xb, xoff, ws, nt, c, zp, first, is_int8, bytes);
                        first = 0;
                        nt = 0;
                    }
                }
            }
            if (nt) {
                pybnn_dw_taps(acc, xb, xoff, ws, nt, c, zp, first, is_int8, bytes);
                first = 0;
            }
            if (first) /* no tap in the image (only possible with explicit padding) */
                memset(acc, 0, cm * 4);
        }
        if (++ow == wout) {
            ow = 0;
            if (++oh == hout) {
                oh = 0;
                b++;
            }
        }
    }
}

/* bytes: vector register width (4 = one value: the portable path stays scalar C). */
#define PYBNN_DW_VARIANT(suffix, ATTR, bytes)                                                      \
    ATTR static void pybnn_dw_f32_##suffix(const pybnn_dw_job *j, size_t lo, size_t hi, uint8_t *acc) {  \
        pybnn_dw_range(j, lo, hi, acc, 0, bytes);                                                  \
    }                                                                                              \
    ATTR static void pybnn_dw_i8_##suffix(const pybnn_dw_job *j, size_t lo, size_t hi, uint8_t *acc) {   \
        pybnn_dw_range(j, lo, hi, acc, 1, bytes);                                                  \
    }

PYBNN_DW_VARIANT(scalar, , 4)
#if PYBNN_X86
PYBNN_DW_VARIANT(sse4, PYBNN_TARGET_SSE4, 16)
PYBNN_DW_VARIANT(avx2, PYBNN_TARGET_AVX2, 32)
PYBNN_DW_VARIANT(avx512, PYBNN_TARGET_AVX512, 64)
#endif
#if PYBNN_NEON
PYBNN_DW_VARIANT(neon, , 16)
#endif

static pybnn_dw_fn pybnn_dw_pick(int isa, int is_int8, int *used) {
#if PYBNN_NEON
    if (isa >= PYBNN_ISA_NEON) { *used = PYBNN_ISA_NEON; return is_int8 ? pybnn_dw_i8_neon : pybnn_dw_f32_neon; }
#endif
#if PYBNN_X86
    if (isa >= PYBNN_ISA_AVX512 && pybnn_isa_supported(PYBNN_ISA_AVX512)) {
        *used = PYBNN_ISA_AVX512;
        return is_int8 ? pybnn_dw_i8_avx512 : pybnn_dw_f32_avx512;
    }
    if (isa >= PYBNN_ISA_AVX2 && pybnn_isa_supported(PYBNN_ISA_AVX2)) {
        *used = PYBNN_ISA_AVX2;
        return is_int8 ? pybnn_dw_i8_avx2 : pybnn_dw_f32_avx2;
    }
    if (isa >= PYBNN_ISA_SSE4 && pybnn_isa_supported(PYBNN_ISA_SSE4)) {
        *used = PYBNN_ISA_SSE4;
        return is_int8 ? pybnn_dw_i8_sse4 : pybnn_dw_f32_sse4;
    }
#endif
    (void)isa;
    *used = PYBNN_ISA_SCALAR;
    return is_int8 ? pybnn_dw_i8_scalar : pybnn_dw_f32_scalar;
}

/* Accumulator bytes per block of pixels of a fused call: the block stays in L1/L2 between
 * the taps and the transform. */
#define PYBNN_DW_BLOCK_BYTES 32768

static void pybnn_dw_part(void *ctx, int part, int nparts) {
    pybnn_dw_job *j = (pybnn_dw_job *)ctx;
    size_t lo, hi;
    pybnn_par_range(j->total, part, nparts, &lo, &hi);
    if (lo >= hi)
        return;
    if (!j->ot) {
        j->run(j, lo, hi, (uint8_t *)j->out + lo * (size_t)j->c * j->m * 4);
        return;
    }
    const size_t cm = (size_t)j->c * j->m, ldo = pybnn_ot_ldo(j->ot, cm);
    const size_t block = PYBNN_MIN(hi - lo, PYBNN_MAX((size_t)1, PYBNN_DW_BLOCK_BYTES / (cm * 4)));
    uint8_t *buf = (uint8_t *)malloc(block * cm * 4);
    if (!buf) {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    for (size_t p = lo; p < hi; p += block) {
        const size_t q = PYBNN_MIN(hi, p + block);
        j->run(j, p, q, buf);
        pybnn_ot_apply(j->ot, j->level, buf, cm, q - p, 0, cm,
                       (char *)j->out + p * ldo * pybnn_ot_esize(j->ot), ldo);
    }
    free(buf);
}

/* x: (n, h, w, c) float32 or int8 (is_int8; zp its zero point); w: (kh*kw, c*m) float32 or
 * int32.  ot NULL: out receives the accumulators, (n*hout*wout, c*m) float32 or int32; else
 * the output transform ot of them (output_transform.h: float32, int8 or packed bits, rows of
 * pybnn_ot_ldo elements), applied per block of pixels while it is in cache, bit-identical to
 * transforming the whole accumulator matrix.  Geometry is checked by the Cython layer.
 * Returns the ISA used, or -1 if scratch memory could not be allocated. */
static int pybnn_depthwise(int isa, int threads, int is_int8, const void *x, int n, int h, int w, int c,
                           int m, const void *wt, int kh, int kw, int sh, int sw, int dh, int dw,
                           int pad_top, int pad_left, int hout, int wout, int32_t zp, const pybnn_ot *ot,
                           void *out) {
    int used;
    pybnn_dw_job j = {pybnn_dw_pick(isa, is_int8, &used), (const uint8_t *)x, (const uint8_t *)wt,
                      h, w, c, m, kh, kw, sh, sw, dh, dw, pad_top, pad_left, hout, wout,
                      zp, (size_t)n * hout * wout, ot, pybnn_ot_level(isa), out, 0};
    /* Work (common.h units): ~1.5 ns per pixel and tap plus ~0.05 ns per multiply-add
     * (measured on AVX-512 and AVX2) and 2 per output element of the transform, counted 2x
     * for an input that the previous kernel's threads left half in the other core's cache. */
    double work = 2.0 * (double)j.total * ((double)kh * kw * (15.0 + 0.5 * (double)c * m) + 2.0 * (double)c * m);
    pybnn_par_run(pybnn_par_parts(threads, j.total, work), pybnn_dw_part, &j);
    return j.failed ? -1 : used;
}

#endif /* PYBNN_DWCONV_H */
