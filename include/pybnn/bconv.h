/* Binary 2-D convolution on bit-packed NHWC tensors (also dense layers: H = W = 1).
 *
 *   out[n, oh, ow, co] = sum_{i<KH, j<KW, c<C} xval(n, oh*sh - pt + i*dh, ow*sw - pl + j*dw, c)
 *                                              * wval(co, i, j, c)
 * with xval = pad_value (-1, 0 or +1) outside the input.
 *
 * How: output pixels are processed in chunks of consecutive (n, oh, ow).  Each chunk's
 * receptive fields are copied bit-for-bit into a scratch matrix ("bit-im2col", one row of
 * kwords = KH*KW*words uint32 per pixel, tap-major: tap i*KW+j holds the tap's `words`
 * words) and multiplied against the packed weights by the XNOR-popcount GEMM (bgemm.h, pybnn_xgemm), whose
 * output rows are exactly the rows of `out`.  Out-of-bounds taps are written as all-zero
 * words, i.e. +1 inputs, so the GEMM alone is exact for pad_value = +1; for the other pad
 * values the difference (pad_value - 1) * sum_{padded taps} tapsum[tap, co] is added
 * afterwards from tables precomputed per border row and per border column (a pixel's
 * padded taps are the union of its row's out-of-range tap rows and its column's
 * out-of-range tap columns, so correction = R[oh] + C[ow] - corner(oh, ow)).
 * A 1x1 stride-1 unpadded convolution and a "kernel = whole image" valid convolution
 * (dense layers) need no copy: the input itself is the im2col matrix.
 * Threads: each part (common.h, pybnn_par_run) takes a contiguous range of output pixels
 * with its own scratch, or, when pixels are few (a dense layer at batch 1), a range of
 * output-channel blocks of every pixel; results are integers, identical for any split.
 *
 * The packed weights are the pybnn_xgemm layout of the (Cout, KH*KW*words) tap-major rows:
 * uint32 (ceil(Cout/4), ceil(KH*KW*words/2), 8); see bgemm.h.
 *
 * Callers (the Cython layer) validate every size; these functions trust the geometry.
 */
#ifndef PYBNN_BCONV_H
#define PYBNN_BCONV_H

#include <stdlib.h>

#include "pybnn/common.h"
#include "pybnn/bitpack.h"
#include "pybnn/bgemm.h"

typedef struct {
    int n, h, w, words, channels;       /* input (n, h, w, words) with `channels` real bits */
    int cout, kh, kw, sh, sw, dh, dw;   /* kernel, strides, dilations */
    int pad_top, pad_left, hout, wout;  /* output (n, hout, wout, cout) */
    int pad_value;                      /* -1, 0 or +1 */
} pybnn_conv_geom;

/* Float weights (cout, kh, kw, c) -> packed layout above; binarized like pack_float
 * (bit = w < 0).  rows is scratch of cout*kh*kw*words uint32. */
static void pybnn_bconv_pack_weights(const float *wf, size_t cout, size_t taps, size_t c,
                                     uint32_t *rows, uint32_t *wp) {
    /* (cout*taps, c) packed row by row is already (cout, taps*words) tap-major. */
    pybnn_pack_float_scalar(wf, cout * taps, c, NULL, NULL, rows);
    pybnn_xgemm_pack_weights(rows, cout, taps * pybnn_words(c), wp);
}

/* In-range tap indices along one axis: taps t with 0 <= base + t*dil < size form one
 * contiguous range [*lo, *hi) (possibly empty, then *lo == *hi). */
static inline void pybnn_tap_range(long base, int dil, int taps, long size, int *lo, int *hi) {
    int t = 0;
    while (t < taps && base + (long)t * dil < 0)
        t++;
    *lo = t;
    while (t < taps && base + (long)t * dil < size)
        t++;
    *hi = t;
}

/* Receptive field of output pixel (n, oh, ow) -> one im2col row of kh*kw*words words. */
static void pybnn_bconv_im2col_row(const pybnn_conv_geom *g, const uint32_t *x, int n,
                                   int oh, int ow, uint32_t *dst) {
    size_t words = (size_t)g->words, rowlen = (size_t)g->kw * words;
    long ih0 = (long)oh * g->sh - g->pad_top, iw0 = (long)ow * g->sw - g->pad_left;
    int jlo, jhi;
    pybnn_tap_range(iw0, g->dw, g->kw, g->w, &jlo, &jhi);
    for (int i = 0; i < g->kh; i++, dst += rowlen) {
        long ih = ih0 + (long)i * g->dh;
        if (ih < 0 || ih >= g->h || jlo == jhi) {
            memset(dst, 0, rowlen * sizeof(uint32_t));
            continue;
        }
        const uint32_t *src = x + (((size_t)n * g->h + (size_t)ih) * g->w) * words;
        memset(dst, 0, (size_t)jlo * words * sizeof(uint32_t));
        if (g->dw == 1) { /* the in-range taps are adjacent input pixels: one copy */
            memcpy(dst + jlo * words, src + (size_t)(iw0 + jlo) * words,
                   (size_t)(jhi - jlo) * words * sizeof(uint32_t));
        } else {
            for (int j = jlo; j < jhi; j++)
                memcpy(dst + j * words, src + (size_t)(iw0 + (long)j * g->dw) * words,
                       words * sizeof(uint32_t));
        }
        memset(dst + jhi * words, 0, (size_t)(g->kw - jhi) * words * sizeof(uint32_t));
    }
}

/* Padding-correction tables, all already scaled by (pad_value - 1).
 *   rlo/rhi[oh], clo/chi[ow]: in-range tap rows / columns of each output row / column
 *   rowc[oh*cout + co] = scale * sum over out-of-range tap rows i (all j) of tapsum
 *   colc[ow*cout + co] = scale * sum over out-of-range tap columns j (all i) of tapsum
 * A pixel whose tap rows and columns are both clipped also gets the overlap subtracted. */
typedef struct {
    int *rlo, *rhi, *clo, *chi;
    int32_t *rowc, *colc;
} pybnn_pad_tables;

static void pybnn_bconv_pad_tables(const pybnn_conv_geom *g, const int32_t *tapsum,
                                   pybnn_pad_tables *t) {
    size_t cout = (size_t)g->cout;
    int32_t scale = g->pad_value - 1;
    for (int oh = 0; oh < g->hout; oh++) {
        int32_t *rc = t->rowc + (size_t)oh * cout;
        pybnn_tap_range((long)oh * g->sh - g->pad_top, g->dh, g->kh, g->h, &t->rlo[oh], &t->rhi[oh]);
        memset(rc, 0, cout * sizeof(int32_t));
        for (int i = 0; i < g->kh; i++) {
            if (i >= t->rlo[oh] && i < t->rhi[oh])
                continue;
            for (int j = 0; j < g->kw; j++)
                for (size_t co = 0; co < cout; co++)
                    rc[co] += scale * tapsum[(size_t)(i * g->kw + j) * cout + co];
        }
    }
    for (int ow = 0; ow < g->wout; ow++) {
        int32_t *cc = t->colc + (size_t)ow * cout;
        pybnn_tap_range((long)ow * g->sw - g->pad_left, g->dw, g->kw, g->w, &t->clo[ow], &t->chi[ow]);
        memset(cc, 0, cout * sizeof(int32_t));
        for (int j = 0; j < g->kw; j++) {
            if (j >= t->clo[ow] && j < t->chi[ow])
                continue;
            for (int i = 0; i < g->kh; i++)
                for (size_t co = 0; co < cout; co++)
                    cc[co] += scale * tapsum[(size_t)(i * g->kw + j) * cout + co];
        }
    }
}

/* Adds the padding correction to the GEMM results of pixels p0 .. p0+mc-1, channels
 * c0 .. c1-1. */
static void pybnn_bconv_pad_fix(const pybnn_conv_geom *g, const int32_t *tapsum,
                                const pybnn_pad_tables *t, size_t p0, size_t mc, size_t c0,
                                size_t c1, int32_t *out) {
    size_t cout = (size_t)g->cout;
    int32_t scale = g->pad_value - 1;
    for (size_t p = p0; p < p0 + mc; p++) {
        int ow = (int)(p % (size_t)g->wout), oh = (int)((p / (size_t)g->wout) % (size_t)g->hout);
        int rowpad = t->rlo[oh] > 0 || t->rhi[oh] < g->kh;
        int colpad = t->clo[ow] > 0 || t->chi[ow] < g->kw;
        if (!rowpad && !colpad)
            continue;
        int32_t *o = out + p * cout;
        const int32_t *rc = t->rowc + (size_t)oh * cout, *cc = t->colc + (size_t)ow * cout;
        for (size_t co = c0; co < c1; co++)
            o[co] += rc[co] + cc[co];
        if (rowpad && colpad) { /* corner: taps clipped both ways were counted twice */
            for (int i = 0; i < g->kh; i++) {
                if (i >= t->rlo[oh] && i < t->rhi[oh])
                    continue;
                for (int j = 0; j < g->kw; j++) {
                    if (j >= t->clo[ow] && j < t->chi[ow])
                        continue;
                    const int32_t *ts = tapsum + (size_t)(i * g->kw + j) * cout;
                    for (size_t co = c0; co < c1; co++)
                        o[co] -= scale * ts[co];
                }
            }
        }
    }
}

/* Pixels per chunk: keep the chunk's im2col rows (the GEMM's A) around 16 KiB so they stay
 * in L1 while every weight block streams past them. */
static inline size_t pybnn_bconv_chunk(size_t kwords) {
    size_t mc = 16384 / (kwords * sizeof(uint32_t));
    return PYBNN_MAX((size_t)8, PYBNN_MIN((size_t)512, mc));
}

/* One call's shared state; each part of pybnn_par_run works on its own range. */
typedef struct {
    const pybnn_conv_geom *g;
    pybnn_xgemm_fn gemm;
    const uint32_t *x, *wp;
    const int32_t *tapsum;
    int32_t *out;
    uint32_t *scratch;             /* nparts blocks of scratch_words (NULL when direct) */
    size_t scratch_words, mc, kwords, total, cblocks;
    int32_t kbits;
    int direct, fix, by_pixels;
    const pybnn_pad_tables *t;
} pybnn_bconv_job;

/* Pixels [lo, hi) x all channels (by_pixels), or all pixels x channel blocks [lo, hi). */
static void pybnn_bconv_part(void *ctx, int part, int nparts) {
    const pybnn_bconv_job *j = (const pybnn_bconv_job *)ctx;
    const pybnn_conv_geom *g = j->g;
    size_t lo, hi, p_lo = 0, p_hi = j->total, c0 = 0, c1 = (size_t)g->cout;
    size_t cout = (size_t)g->cout, kwords = j->kwords;
    pybnn_par_range(j->by_pixels ? j->total : j->cblocks, part, nparts, &lo, &hi);
    if (j->by_pixels) {
        p_lo = lo;
        p_hi = hi;
    } else {
        c0 = lo * PYBNN_XGEMM_NR;
        c1 = PYBNN_MIN(hi * PYBNN_XGEMM_NR, cout);
    }
    if (p_lo >= p_hi || c0 >= c1)
        return;
    const uint32_t *wp = j->wp; /* first weight block of channel c0 */
    if (!j->by_pixels)
        wp += lo * pybnn_xgemm_k64(kwords) * 2 * PYBNN_XGEMM_NR;
    uint32_t *scratch = j->scratch ? j->scratch + (size_t)part * j->scratch_words : NULL;
    /* pixel p_lo as (n, oh, ow), then advanced incrementally */
    int ow = (int)(p_lo % (size_t)g->wout), oh = (int)((p_lo / (size_t)g->wout) % (size_t)g->hout);
    int n = (int)(p_lo / ((size_t)g->wout * (size_t)g->hout));
    for (size_t p0 = p_lo; p0 < p_hi; p0 += j->mc) {
        size_t m = PYBNN_MIN(j->mc, p_hi - p0);
        const uint32_t *a;
        if (j->direct) {
            a = j->x + p0 * kwords; /* kwords == words (1x1) or h*w*words (whole image) */
        } else {
            for (size_t r = 0; r < m; r++) {
                pybnn_bconv_im2col_row(g, j->x, n, oh, ow, scratch + r * kwords);
                if (++ow == g->wout) {
                    ow = 0;
                    if (++oh == g->hout) {
                        oh = 0;
                        n++;
                    }
                }
            }
            a = scratch;
        }
        j->gemm(a, kwords, m, kwords, wp, c1 - c0, j->kbits, j->out + p0 * cout + c0, cout);
        if (j->fix)
            pybnn_bconv_pad_fix(g, j->tapsum, j->t, p0, m, c0, c1, j->out);
    }
}

/* x: (n, h, w, words); wp: packed weights; tapsum: (kh*kw, cout); out: (n, hout, wout, cout).
 * Uses up to `threads` threads: output pixels are split into contiguous ranges, or, when
 * there are too few pixels (dense layers at small batch), the output channels in blocks
 * of 4.  Returns the ISA of the GEMM variant used, or -1 if scratch memory could not be
 * allocated. */
static int pybnn_bconv2d(int isa, int threads, const pybnn_conv_geom *g, const uint32_t *x,
                         const uint32_t *wp, const int32_t *tapsum, int32_t *out) {
    int used;
    pybnn_bconv_job j;
    j.g = g;
    j.gemm = pybnn_xgemm_pick(isa, &used);
    j.x = x, j.wp = wp, j.tapsum = tapsum, j.out = out;
    size_t words = (size_t)g->words, cout = (size_t)g->cout;
    j.kwords = (size_t)g->kh * g->kw * words;
    j.kbits = g->kh * g->kw * g->channels;
    j.total = (size_t)g->n * g->hout * g->wout;
    j.cblocks = pybnn_xgemm_cblocks(cout);
    int unpadded = g->pad_top == 0 && g->pad_left == 0;
    /* Cases where each pixel's receptive field already is one contiguous input row. */
    j.direct = unpadded && ((g->kh == 1 && g->kw == 1 && g->sh == 1 && g->sw == 1 &&
                             g->hout == g->h && g->wout == g->w) ||
                            (g->kh == g->h && g->kw == g->w && g->dh == 1 && g->dw == 1 &&
                             g->hout == 1 && g->wout == 1));
    /* Any tap ever out of range?  Only then can padding need a correction. */
    int padded = g->pad_top > 0 || g->pad_left > 0 ||
                 (long)(g->hout - 1) * g->sh - g->pad_top + (long)(g->kh - 1) * g->dh >= g->h ||
                 (long)(g->wout - 1) * g->sw - g->pad_left + (long)(g->kw - 1) * g->dw >= g->w;
    j.fix = padded && g->pad_value != 1;
    j.mc = pybnn_bconv_chunk(j.kwords);
    if (j.total == 0)
        return used;

    /* Work (common.h units): one per 32-bit word of the XNOR-popcount GEMM (+ the im2col copy). */
    double work = (double)j.total * (double)j.kwords * ((double)cout + (j.direct ? 0.0 : 1.0));
    int nparts = pybnn_par_parts(threads, PYBNN_MAX(j.total, j.cblocks), work);
    /* Split pixels while every part gets a few GEMM row blocks; else output channels. */
    j.by_pixels = j.total >= (size_t)nparts * 16 || j.cblocks < (size_t)nparts;
    nparts = (int)PYBNN_MIN((size_t)nparts, j.by_pixels ? j.total : j.cblocks);
    size_t rows = j.by_pixels ? PYBNN_MIN(j.mc, (j.total + nparts - 1) / nparts) : PYBNN_MIN(j.mc, j.total);
    j.scratch_words = rows * j.kwords;

    uint32_t *scratch = NULL;
    void *tables = NULL;
    pybnn_pad_tables t = {0};
    if (!j.direct && !(scratch = malloc((size_t)nparts * j.scratch_words * sizeof(uint32_t))))
        return -1;
    if (j.fix) {
        size_t hw = (size_t)g->hout + g->wout;
        tables = malloc(hw * 2 * sizeof(int) + hw * cout * sizeof(int32_t));
        if (!tables) {
            free(scratch);
            return -1;
        }
        t.rowc = (int32_t *)tables;
        t.colc = t.rowc + (size_t)g->hout * cout;
        t.rlo = (int *)(t.colc + (size_t)g->wout * cout);
        t.rhi = t.rlo + g->hout;
        t.clo = t.rhi + g->hout;
        t.chi = t.clo + g->wout;
        pybnn_bconv_pad_tables(g, tapsum, &t);
    }
    j.scratch = scratch;
    j.t = &t;
    pybnn_par_run(nparts, pybnn_bconv_part, &j);
    free(scratch);
    free(tables);
    return used;
}

#endif /* PYBNN_BCONV_H */
