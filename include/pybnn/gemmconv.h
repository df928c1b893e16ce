/* Convolution by GEMM for the float and int8 kinds (Conv2D: sgemm, FloatBinaryConv2D:
 * fbgemm, Int8Conv2D: igemm, Int8BinaryConv2D: ibgemm), fused per block of output rows:
 *
 *     for each part (one per thread: a range of output pixels, or of output channels):
 *         for each block of B pixels:  im2col rows -> GEMM -> output transform
 *
 * The patch matrix never exists whole: a block of it lives in a buffer of its own part,
 * in L2, and its accumulators are transformed (float / int8 / packed bits, output_transform.h)
 * right after the GEMM made them.  On 3x3_64 the whole patch matrix is 7 MB of float32 written
 * to memory and read back; and im2col and the transform run on every thread with the GEMM.
 * The int8 kinds on AVX-512 go further (implicit GEMM, below): the GEMM gathers the patch
 * rows from the image itself and transforms each tile as it finishes it.
 *
 * B makes a block at least as large as the packed weights (the GEMM streams all the weights
 * once per block, so that costs no more than the patch-matrix round trip it saves) and at
 * least PYBNN_GC_BLOCK_BYTES: early layers (many pixels, small weights) get blocks of ~100
 * rows, deep ones a single block per part, as unfused.
 *
 * Threads split output pixels, unless that leaves fewer than PYBNN_GC_MIN_ROWS per part: a
 * deep layer's few pixels (7x7) against its megabytes of weights, or a 1x1 output (dense
 * layers).  Then they split output channels (whole GEMM panels): each part streams only its
 * share of the weights (3x3_512 int8: 1.2 of 2.4 MB, which then stays in its core's L2)
 * and the parts are equal (49 pixels split 25 + 24, with 6-row tiles, are not); each part
 * copies (gathers) every patch row for itself.  Timed per part on 3x3_512 and 3x3_256_s2:
 * the larger part 0-30% faster than with pixels split (float32 the most: 9 MB of weights),
 * never slower beyond noise.
 * Each output gets the same value as im2col + GEMM + transform on whole matrices: the GEMMs
 * compute every element the same way whatever the row or channel range (fbgemm.h, igemm.h). */
#ifndef PYBNN_GEMMCONV_H
#define PYBNN_GEMMCONV_H

#include <stdlib.h>

#include "pybnn/common.h"
#include "pybnn/fbgemm.h"
#include "pybnn/igemm.h"
#include "pybnn/im2col.h"
#include "pybnn/output_transform.h"

enum { PYBNN_GC_SGEMM, PYBNN_GC_FBGEMM, PYBNN_GC_IGEMM, PYBNN_GC_IBGEMM };
#define PYBNN_GC_BLOCK_BYTES (256u * 1024u)
#define PYBNN_GC_MIN_ROWS 64

typedef struct {
    int gemm;                 /* PYBNN_GC_* */
    int binary;               /* ibgemm: 1-bit weights (igemm.h's binary flag) */
    int ot_level;
    pybnn_fbgemm_fn ffn;      /* the GEMM variant (float kinds) */
    pybnn_igemm_fn ifn;       /* (int8 kinds) */
    const uint8_t *wp;        /* packed weights, as the GEMM's own check accepted them */
    size_t k, cout;
    int a_zp;                 /* int8 kinds: the input zero point (also the padding value) */
    pybnn_im2col_job im;      /* geometry; .out unused */
    const uint8_t *x;         /* the input, for direct (1x1 / stride 1 / unpadded) layers */
    int direct;
    int implicit;             /* int8 kinds on AVX-512: the GEMM gathers patch rows itself */
    const pybnn_ot *ot;
    void *out;
    size_t ldo, oesize, m, block, rowbytes;
    int by_rows;              /* parts split pixels, else output channels in units of cunit */
    size_t cunit;
    int failed;
} pybnn_gc_job;

#if PYBNN_X86
/* ---------------------------------------------------------------- implicit GEMM (AVX-512)
 *
 * The int8 AVX-512 GEMM copies every block of activation rows once anyway (as u = a ^ 0x80,
 * into L1); here that copy gathers the taps of each output pixel straight from the image,
 * so no patch matrix is written and read back (3x3_64: 0.07 ms of im2col, 15% of the
 * layer, gone), and each finished tile (<= 6 rows x 64 channels) goes through the output
 * transform while it is in L1.  Results are those of im2col + igemm + transform: the same
 * products summed in the same exact integer arithmetic, the same transform per element. */
typedef struct {
    const pybnn_gc_job *j;
    size_t r0, c0; /* first output pixel and channel of the call */
} pybnn_gc_rows;

/* dst[0, n) = src[0, n) ^ 0x80 (a tap inside the image), in 64-byte pieces. */
PYBNN_TARGET_AVX512 static inline void pybnn_gc_flip_copy(uint8_t *dst, const uint8_t *src, size_t n, __m512i flip) {
    size_t x = 0;
    for (; x + 64 <= n; x += 64)
        _mm512_storeu_si512((void *)(dst + x), _mm512_xor_si512(_mm512_loadu_si512((const void *)(src + x)), flip));
    if (x < n) {
        const __mmask64 km = ((__mmask64)1 << (n - x)) - 1; /* n - x < 64 */
        _mm512_mask_storeu_epi8(dst + x, km, _mm512_xor_si512(_mm512_maskz_loadu_epi8(km, src + x), flip));
    }
}

/* dst[0, n) = v (a tap in the padding, or the zeros past K). */
PYBNN_TARGET_AVX512 static inline void pybnn_gc_fill(uint8_t *dst, size_t n, __m512i v) {
    size_t x = 0;
    for (; x + 64 <= n; x += 64)
        _mm512_storeu_si512((void *)(dst + x), v);
    if (x < n)
        _mm512_mask_storeu_epi8(dst + x, ((__mmask64)1 << (n - x)) - 1, v);
}

/* pybnn_igemm_io.fetch: columns [k0, k0 + len) of patch rows r0 + i .. r0 + i + mc - 1
 * (the layout of pybnn_im2col_rows: tap-major, then channel). */
PYBNN_TARGET_AVX512 static void pybnn_gc_fetch_avx512(const void *ctx, size_t i, size_t mc, size_t k0, size_t len,
                                                      size_t nq, uint8_t *dst) {
    const pybnn_gc_rows *rows = (const pybnn_gc_rows *)ctx;
    if (rows->j->direct) { /* 1x1, stride 1, unpadded: the image is the matrix */
        const size_t k = rows->j->k;
        pybnn_igemm_flip_avx512((const int8_t *)rows->j->x + (rows->r0 + i) * k + k0, k, mc, len, nq, dst);
        return;
    }
    const pybnn_im2col_job *im = &rows->j->im;
    const size_t c = (size_t)im->c, r = rows->r0 + i;
    const ptrdiff_t h = im->h, w = im->w, kh = im->kh, kw = im->kw, dh = im->dh, dw = im->dw;
    const ptrdiff_t hout = im->hout, wout = im->wout;
    const __m512i flip = _mm512_set1_epi8((char)0x80), pad = _mm512_set1_epi8((char)(im->fill_byte ^ 0x80));
    /* With dw = 1 the kw taps of a kernel row are seg contiguous bytes of the image: a pixel
     * whose window lies inside the image copies kh runs (the border pixels go tap by tap). */
    const size_t seg = (size_t)kw * c, s0 = k0 / seg, soff0 = k0 % seg, t0 = k0 / c, off0 = k0 % c;
    const size_t rowstride = (size_t)(dh * w) * c;
    ptrdiff_t ow = (ptrdiff_t)(r % (size_t)wout), oh = (ptrdiff_t)((r / (size_t)wout) % (size_t)hout);
    size_t n = r / ((size_t)wout * (size_t)hout);
    for (size_t row = 0; row < mc; row++, dst += PYBNN_IGEMM_KC1_512) {
        const uint8_t *img = im->x + n * (size_t)(h * w) * c;
        const ptrdiff_t y0 = oh * im->sh - im->pad_top, x0 = ow * im->sw - im->pad_left;
        if (dw == 1 && y0 >= 0 && y0 + (kh - 1) * dh < h && x0 >= 0 && x0 + kw <= w) {
            const uint8_t *src = img + (size_t)(y0 * w + x0) * c + s0 * rowstride;
            for (size_t pos = 0, off = soff0; pos < len; off = 0, src += rowstride) {
                const size_t nb = PYBNN_MIN(seg - off, len - pos);
                pybnn_gc_flip_copy(dst + pos, src + off, nb, flip);
                pos += nb;
            }
        } else {
            ptrdiff_t ti = (ptrdiff_t)t0 / kw, tj = (ptrdiff_t)t0 % kw;
            for (size_t pos = 0, off = off0; pos < len; off = 0) {
                const size_t nb = PYBNN_MIN(c - off, len - pos);
                const ptrdiff_t y = y0 + ti * dh, x = x0 + tj * dw;
                if (y >= 0 && y < h && x >= 0 && x < w)
                    pybnn_gc_flip_copy(dst + pos, img + (size_t)(y * w + x) * c + off, nb, flip);
                else
                    pybnn_gc_fill(dst + pos, nb, pad);
                pos += nb;
                if (++tj == kw)
                    tj = 0, ti++;
            }
        }
        pybnn_gc_fill(dst + len, 4 * nq - len, _mm512_setzero_si512());
        if (++ow == wout) {
            ow = 0;
            if (++oh == hout)
                oh = 0, n++;
        }
    }
}

/* pybnn_igemm_io.done: the output transform of a finished tile, at 512 bits (the GEMM's
 * vpdpbusd already runs on the 512-bit units: PYBNN_OT_AVX512_ALL). */
static void pybnn_gc_done(const void *ctx, const int32_t *acc, size_t lda, size_t i, size_t mr, size_t c0,
                          size_t c1) {
    const pybnn_gc_rows *rows = (const pybnn_gc_rows *)ctx;
    const pybnn_gc_job *j = rows->j;
    pybnn_ot_apply(j->ot, PYBNN_OT_AVX512_ALL, acc, lda, mr, rows->c0 + c0, rows->c0 + c1,
                   (char *)j->out + (rows->r0 + i) * j->ldo * j->oesize, j->ldo);
}

/* Pixels [r0, r0 + b) x channels [c0, c1): acc is min(b, PYBNN_IGEMM_MC512) x (c1 - c0)
 * int32 of scratch.  One call per part: ibgemm expands its bits once (igemm.h). */
static void pybnn_gc_implicit(const pybnn_gc_job *j, size_t r0, size_t b, size_t c0, size_t c1, int32_t *acc) {
    const pybnn_gc_rows rows = {j, r0, c0};
    const pybnn_igemm_io io = {pybnn_gc_fetch_avx512, pybnn_gc_done, &rows};
    pybnn_igemm_io_avx512(&io, b, pybnn_igemm_panels(j->wp) + c0 / PYBNN_IGEMM_NP * pybnn_igemm_panel_bytes(j->k, j->binary),
                          pybnn_igemm_wsums(j->wp, j->k, j->cout, j->binary) + 4 * c0, j->k, c1 - c0, j->a_zp, acc,
                          c1 - c0, j->binary);
}
#endif

/* Pixels [r0, r0 + b) x channels [c0, c1) through GEMM and transform; buf holds b patch
 * rows, acc b x (c1 - c0) int32 (int8 kinds). */
static void pybnn_gc_block(const pybnn_gc_job *j, size_t r0, size_t b, size_t c0, size_t c1, uint8_t *buf,
                           int32_t *acc) {
#if PYBNN_X86
    if (j->implicit) {
        pybnn_gc_implicit(j, r0, b, c0, c1, acc);
        return;
    }
#endif
    char *out = (char *)j->out + r0 * j->ldo * j->oesize; /* output row r0 */
    const uint8_t *a = j->x + r0 * j->rowbytes;
    if (!j->direct) {
        pybnn_im2col_rows(&j->im, r0, r0 + b, buf);
        a = buf;
    }
    if (j->ifn) {
        pybnn_igemm_cols(j->ifn, j->binary, (const int8_t *)a, j->k, b, j->wp, j->k, j->cout, c0, c1, j->a_zp, acc,
                         c1 - c0);
        pybnn_ot_apply(j->ot, j->ot_level, acc, c1 - c0, b, c0, c1, out, j->ldo);
    } else { /* float accumulators go straight into the float output, transformed in place */
        float *o = (float *)out + c0;
        pybnn_fgemm_cols(j->ffn, j->gemm == PYBNN_GC_SGEMM, (const float *)a, j->k, b, j->wp, j->k, c0, c1, o, j->ldo);
        pybnn_ot_apply(j->ot, j->ot_level, o, j->ldo, b, c0, c1, out, j->ldo);
    }
}

static void pybnn_gc_part(void *ctx, int part, int nparts) {
    pybnn_gc_job *j = (pybnn_gc_job *)ctx;
    size_t lo = 0, hi = j->m, c0 = 0, c1 = j->cout;
    if (j->by_rows) {
        pybnn_par_range(j->m, part, nparts, &lo, &hi);
    } else {
        size_t u0, u1;
        pybnn_par_range((j->cout + j->cunit - 1) / j->cunit, part, nparts, &u0, &u1);
        c0 = u0 * j->cunit, c1 = PYBNN_MIN(u1 * j->cunit, j->cout);
    }
    if (lo >= hi || c0 >= c1)
        return;
    const size_t block = j->implicit ? hi - lo : PYBNN_MIN(j->block, hi - lo);
    const int need_buf = !j->direct && !j->implicit;
    uint8_t *buf = need_buf ? (uint8_t *)malloc(block * j->rowbytes) : NULL;
    size_t acc_rows = block;
#if PYBNN_X86
    if (j->implicit) /* the tiles of one super-block at a time */
        acc_rows = PYBNN_MIN(block, (size_t)PYBNN_IGEMM_MC512);
#endif
    int32_t *acc = j->ifn ? (int32_t *)malloc(acc_rows * (c1 - c0) * sizeof(int32_t)) : NULL;
    if ((need_buf && !buf) || (j->ifn && !acc)) {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
    } else {
        for (size_t r0 = lo; r0 < hi; r0 += block)
            pybnn_gc_block(j, r0, PYBNN_MIN(block, hi - r0), c0, c1, buf, acc);
    }
    free(buf);
    free(acc);
}

/* x: (n, h, w, c) NHWC, float32 (sgemm, fbgemm) or int8 (igemm, ibgemm); wp / wbytes: the
 * packed weights (already checked for this k = kh*kw*c and cout); out: the transform's
 * output for (n, hout, wout, cout).  Geometry as pybnn_im2col_f32 (validated by the caller).
 * Returns the ISA of the GEMM variant, or -1 if scratch memory could not be allocated. */
static int pybnn_gemm_conv(int gemm, int isa, int threads, const void *x, ptrdiff_t n, ptrdiff_t h,
                           ptrdiff_t w, ptrdiff_t c, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw,
                           ptrdiff_t dh, ptrdiff_t dw, ptrdiff_t pad_top, ptrdiff_t pad_left, ptrdiff_t hout,
                           ptrdiff_t wout, const uint8_t *wp, size_t wbytes, size_t cout, int a_zp,
                           const pybnn_ot *ot, void *out) {
    pybnn_gc_job j;
    memset(&j, 0, sizeof j);
    const int int8 = gemm >= PYBNN_GC_IGEMM;
    const size_t esize = int8 ? 1 : sizeof(float);
    int used;
    j.gemm = gemm, j.binary = gemm == PYBNN_GC_IBGEMM, j.ot_level = pybnn_ot_level(isa);
    if (int8)
        j.ifn = pybnn_igemm_pick_any(isa, j.binary, &used);
    else
        j.ffn = pybnn_fbgemm_pick(isa, gemm == PYBNN_GC_SGEMM, &used);
    j.wp = wp, j.k = (size_t)(kh * kw * c), j.cout = cout, j.a_zp = a_zp;
    pybnn_im2col_job im = {(const uint8_t *)x, h, w, c, kh, kw, sh, sw, dh, dw, pad_top, pad_left, hout, wout,
                           esize, 0, int8 ? (uint8_t)a_zp : 0, NULL};
    j.im = im;
    j.x = (const uint8_t *)x;
    j.direct = kh == 1 && kw == 1 && sh == 1 && sw == 1 && pad_top == 0 && pad_left == 0 && hout == h && wout == w;
    j.implicit = int8 && used == PYBNN_ISA_AVX512;
    j.ot = ot, j.out = out, j.ldo = pybnn_ot_ldo(ot, cout), j.oesize = pybnn_ot_esize(ot);
    j.m = (size_t)(n * hout * wout), j.rowbytes = j.k * esize;
    if (j.m == 0)
        return used;
    /* Work (common.h units): the GEMM's, im2col's and two per transformed element; and at
     * least the weights streamed once, ~0.15 per byte (a few rows, e.g. a dense layer at
     * batch 1, use each weight once: Bi-Real Net's 512 -> 1000 head, 2 MB of float32, took
     * 30 us against 13 us counted by its multiply-adds). */
    const double macs = (double)j.m * (double)cout * (double)j.k;
    double work = int8 ? macs / pybnn_igemm_macs_per_unit(used, j.binary) : macs / 4.0;
    work = PYBNN_MAX(work, 0.15 * (double)wbytes);
    work += (j.direct ? 0.0 : pybnn_im2col_work(j.m, j.rowbytes)) + 2.0 * (double)j.m * (double)cout;
    /* Channel units: whole panels (float 32, int8 16 channels), whole bit-output words (32),
     * and the AVX-512 int8 tile's 64 channels when there are enough of them. */
    j.cunit = int8 && cout >= 64 * (size_t)threads ? 64 : 32;
    const size_t units = (cout + j.cunit - 1) / j.cunit;
    int nparts = pybnn_par_parts(threads, PYBNN_MAX(j.m, units), work);
    j.by_rows = nparts == 1 || j.m >= (size_t)nparts * PYBNN_GC_MIN_ROWS || units < (size_t)nparts;
    nparts = (int)PYBNN_MIN((size_t)nparts, j.by_rows ? j.m : units);
    const size_t bytes = PYBNN_MAX(wbytes, (size_t)PYBNN_GC_BLOCK_BYTES);
    j.block = (bytes / j.rowbytes + 23) / 24 * 24; /* whole row tiles: 24 = 2 x 12 = 4 x 6 = 6 x 4 */
    pybnn_par_run(nparts, pybnn_gc_part, &j);
    return j.failed ? -1 : used;
}

#endif
