/* Binary 2-D convolution on bit-packed NHWC tensors (also dense layers: H = W = 1).
 *
 *   out[n, oh, ow, co] = sum_{i<KH, j<KW, c<C} xval(n, oh*sh - pt + i*dh, ow*sw - pl + j*dw, c)
 *                                              * wval(co, i, j, c)
 * with xval = pad_value (-1, 0 or +1) outside the input.
 *
 * How: output pixels are processed in chunks of consecutive (n, oh, ow).  Each chunk's
 * receptive fields are copied bit-for-bit into a scratch matrix ("bit-im2col", one row of
 * kwords = KH*KW*words uint32 per pixel, tap-major: tap i*KW+j holds the tap's `words`
 * words; interior pixels copy KH runs of KW*words words) and multiplied against the packed
 * weights by the XNOR-popcount GEMM (bgemm.h, pybnn_xgemm).  Out-of-bounds taps are
 * written as all-zero words, i.e. +1 inputs, so the GEMM alone is exact for pad_value =
 * +1; for the other pad values (pad_value - 1) * sum_{padded taps} tapsum[tap, co] is
 * added to the chunk's accumulators.  That correction depends only on which taps are
 * clipped, a rectangle per pixel, and border rows/columns come in few classes, so it is
 * one table row per class pair (pybnn_pad_tables), computable once per layer
 * (pybnn_bconv_corrections).  Then the chunk's accumulators either are the output (int32)
 * or go through the output transform (output_transform.h, pybnn_ot) while still in L1:
 * float, int8 or packed bits, bit-identical to transforming the whole int32 result.
 * A 1x1 stride-1 unpadded convolution and a "kernel = whole image" valid convolution
 * (dense layers) need no copy: the input itself is the im2col matrix.
 * Threads: each part (common.h, pybnn_par_run) takes a contiguous range of output pixels
 * with its own scratch, or, when pixels are few (a dense layer at batch 1), a range of
 * output channels (units of 32) of every pixel; every output is computed by the same code
 * whatever the split, so results are identical for any thread count.
 *
 * The packed weights are the pybnn_xgemm layout of the (Cout, KH*KW*words) tap-major rows:
 * uint32 (ceil(Cout/8), ceil(KH*KW*words/2), 16); see bgemm.h.
 *
 * Callers (the Cython layer) validate every size; these functions trust the geometry.
 */
#ifndef PYBNN_BCONV_H
#define PYBNN_BCONV_H

#include <stdlib.h>

#include "pybnn/common.h"
#include "pybnn/bitpack.h"
#include "pybnn/bgemm.h"
#include "pybnn/output_transform.h"

typedef struct {
    int n, h, w, words, channels;       /* input (n, h, w, words) with `channels` real bits */
    int cout, kh, kw, sh, sw, dh, dw;   /* kernel, strides, dilations */
    int pad_top, pad_left, hout, wout;  /* output (n, hout, wout, cout) */
    int pad_value;                      /* -1, 0 or +1 */
} pybnn_conv_geom;

/* tapsum (taps, cout) int32 of packed weights wp (pybnn_xgemm_pack_bits, c input channels per
 * tap): c - 2 * (number of -1 among the tap's c real bits).  Padding bits are masked out, so
 * whatever wp holds every sum lies in [-c, c]. */
static void pybnn_bconv_tap_sums(const uint32_t *wp, size_t cout, size_t taps, size_t c, int32_t *tapsum) {
    const size_t words = pybnn_words(c), k64 = pybnn_xgemm_k64(taps * words);
    const uint32_t last = c % 32 ? (1u << (c % 32)) - 1u : 0xFFFFFFFFu;
    for (size_t j = 0; j < cout; j++)
        for (size_t t = 0; t < taps; t++) {
            int64_t neg = 0;
            for (size_t q = 0; q < words; q++) {
                const uint32_t word = wp[pybnn_xgemm_at(k64, j, t * words + q)];
                neg += pybnn_popcount32(q + 1 < words ? word : word & last);
            }
            tapsum[t * cout + j] = (int32_t)((int64_t)c - 2 * neg);
        }
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

/* Copies n uint32: 16-byte moves, the last one overlapping, beat a memcpy call on the short
 * runs of a receptive field (24 bytes for a 3-tap row of 64 channels). */
static inline void pybnn_copy_words(uint32_t *dst, const uint32_t *src, size_t n) {
    char *d = (char *)dst;
    const char *s = (const char *)src;
    size_t bytes = n * sizeof(uint32_t);
    if (bytes >= 16) {
        for (size_t q = 0; q + 16 < bytes; q += 16)
            memcpy(d + q, s + q, 16);
        memcpy(d + bytes - 16, s + bytes - 16, 16);
    } else if (bytes >= 8) {
        memcpy(d, s, 8);
        memcpy(d + bytes - 8, s + bytes - 8, 8);
    } else if (bytes) {
        memcpy(d, s, 4);
        memcpy(d + bytes - 4, s + bytes - 4, 4);
    }
}

/* Geometry tables of one call.  Per output row oh: in-range tap rows [rlo[oh], rhi[oh]);
 * per output column ow: in-range tap columns [clo[ow], chi[ow]).  The in-range taps of
 * pixel (oh, ow) are the rectangle of both; rows (columns) with the same clipped range
 * share a class: rcls[oh] (ccls[ow]) is 0 when no tap is clipped, else 1 + the index of
 * its range among the distinct clipped ones, of which there are few (the border rows).
 * With a padding correction (pad_value != +1), corr[(rc * ncc + cc) * cout + co] is
 *     (pad_value - 1) * sum over the taps outside the rectangle of class pair (rc, cc)
 *                       of tapsum[tap, co]
 * so a border pixel needs one vector add, whichever way it is clipped; corr is NULL when
 * there is nothing to correct. */
typedef struct {
    int *rlo, *rhi, *clo, *chi, *rcls, *ccls;
    int *class_rlo, *class_rhi, *class_clo, *class_chi; /* ranges of the classes */
    int nrc, ncc;                                       /* classes, 0 included */
    int ow_in_lo, ow_in_hi; /* output columns [lo, hi) whose taps are all in range along width */
    const int32_t *corr;
} pybnn_pad_tables;

/* Number of ints the tables need (their int arrays are carved from one block). */
static inline size_t pybnn_pad_tables_ints(const pybnn_conv_geom *g) {
    return 5 * ((size_t)g->hout + 1) + 5 * ((size_t)g->wout + 1);
}

/* Classes of one axis (see above); returns their number, class 0 included. */
static int pybnn_bconv_classes(const int *lo, const int *hi, int n, int taps, int *cls,
                               int *class_lo, int *class_hi) {
    int count = 1;
    class_lo[0] = 0, class_hi[0] = taps;
    for (int o = 0; o < n; o++) {
        int c = 0;
        while (c < count && (class_lo[c] != lo[o] || class_hi[c] != hi[o]))
            c++;
        if (c == count) {
            class_lo[c] = lo[o], class_hi[c] = hi[o];
            count++;
        }
        cls[o] = c;
    }
    return count;
}

/* Fills every array of t but corr from the geometry; `ints` holds pybnn_pad_tables_ints. */
static void pybnn_bconv_pad_tables(const pybnn_conv_geom *g, int *ints, pybnn_pad_tables *t) {
    size_t hr = (size_t)g->hout + 1, wc = (size_t)g->wout + 1;
    t->rlo = ints, t->rhi = t->rlo + hr, t->rcls = t->rhi + hr, t->class_rlo = t->rcls + hr;
    t->class_rhi = t->class_rlo + hr, t->clo = t->class_rhi + hr, t->chi = t->clo + wc;
    t->ccls = t->chi + wc, t->class_clo = t->ccls + wc, t->class_chi = t->class_clo + wc;
    t->corr = NULL;
    for (int oh = 0; oh < g->hout; oh++)
        pybnn_tap_range((long)oh * g->sh - g->pad_top, g->dh, g->kh, g->h, &t->rlo[oh], &t->rhi[oh]);
    t->ow_in_lo = t->ow_in_hi = 0;
    for (int ow = 0; ow < g->wout; ow++) {
        pybnn_tap_range((long)ow * g->sw - g->pad_left, g->dw, g->kw, g->w, &t->clo[ow], &t->chi[ow]);
        if (t->clo[ow] == 0 && t->chi[ow] == g->kw) { /* a contiguous range: taps move monotonically */
            if (t->ow_in_hi == t->ow_in_lo)
                t->ow_in_lo = ow;
            t->ow_in_hi = ow + 1;
        }
    }
    t->nrc = pybnn_bconv_classes(t->rlo, t->rhi, g->hout, g->kh, t->rcls, t->class_rlo, t->class_rhi);
    t->ncc = pybnn_bconv_classes(t->clo, t->chi, g->wout, g->kw, t->ccls, t->class_clo, t->class_chi);
}

/* Number of int32 pybnn_bconv_pad_corr needs: corr, then 2-D prefix sums of tapsum. */
static inline size_t pybnn_pad_corr_ints(const pybnn_conv_geom *g, const pybnn_pad_tables *t) {
    return ((size_t)t->nrc * t->ncc + ((size_t)g->kh + 1) * ((size_t)g->kw + 1)) * (size_t)g->cout;
}

/* Fills corr (the first nrc*ncc*cout of pybnn_pad_corr_ints int32 at mem; the prefix sums
 * follow it).  The sum over the taps outside a rectangle is the total minus the
 * rectangle's sum, read from prefix sums P[i][j] = sum of tapsum over taps (< i, < j).
 * uint32 arithmetic: exact modulo 2^32, and the corrected accumulator fits int32. */
static void pybnn_bconv_pad_corr(const pybnn_conv_geom *g, const int32_t *tapsum,
                                 const pybnn_pad_tables *t, int32_t *mem) {
    size_t cout = (size_t)g->cout, kw1 = (size_t)g->kw + 1;
    uint32_t scale = (uint32_t)(g->pad_value - 1);
    uint32_t *corr = (uint32_t *)mem, *pre = corr + (size_t)t->nrc * t->ncc * cout;
#define PYBNN_PRE(i, j) (pre + ((size_t)(i) * kw1 + (size_t)(j)) * cout)
    for (int i = 0; i <= g->kh; i++)
        for (int j = 0; j <= g->kw; j++) {
            uint32_t *p = PYBNN_PRE(i, j);
            if (i == 0 || j == 0) {
                memset(p, 0, cout * sizeof(uint32_t));
                continue;
            }
            const int32_t *ts = tapsum + (size_t)((i - 1) * g->kw + (j - 1)) * cout;
            const uint32_t *up = PYBNN_PRE(i - 1, j), *left = PYBNN_PRE(i, j - 1), *diag = PYBNN_PRE(i - 1, j - 1);
            for (size_t co = 0; co < cout; co++)
                p[co] = (uint32_t)ts[co] + up[co] + left[co] - diag[co];
        }
    for (int rc = 0; rc < t->nrc; rc++)
        for (int cc = 0; cc < t->ncc; cc++) {
            uint32_t *c = corr + ((size_t)rc * t->ncc + (size_t)cc) * cout;
            int r0 = t->class_rlo[rc], r1 = t->class_rhi[rc], c0 = t->class_clo[cc], c1 = t->class_chi[cc];
            const uint32_t *all = PYBNN_PRE(g->kh, g->kw), *a = PYBNN_PRE(r1, c1), *b = PYBNN_PRE(r0, c1);
            const uint32_t *d = PYBNN_PRE(r1, c0), *e = PYBNN_PRE(r0, c0);
            for (size_t co = 0; co < cout; co++)
                c[co] = scale * (all[co] - (a[co] - b[co] - d[co] + e[co]));
        }
#undef PYBNN_PRE
}

/* Does the geometry need a padding correction (some tap out of range, pad_value != +1)? */
static int pybnn_bconv_needs_fix(const pybnn_conv_geom *g) {
    int padded = g->pad_top > 0 || g->pad_left > 0 ||
                 (long)(g->hout - 1) * g->sh - g->pad_top + (long)(g->kh - 1) * g->dh >= g->h ||
                 (long)(g->wout - 1) * g->sw - g->pad_left + (long)(g->kw - 1) * g->dw >= g->w;
    return padded && g->pad_value != 1;
}

/* The padding corrections depend on the geometry and the weights only, so a caller may
 * compute them once (a layer does, when its weights are set) and pass them to every
 * pybnn_bconv2d call.  pybnn_bconv_corrections_size: their number of int32, (class pairs)
 * x cout, 0 when the geometry needs none; -1 if memory runs out.  pybnn_bconv_corrections
 * fills corr with that many; returns 0, or -1 if memory runs out. */
static long pybnn_bconv_corrections_size(const pybnn_conv_geom *g) {
    if (!pybnn_bconv_needs_fix(g))
        return 0;
    int *ints = malloc(pybnn_pad_tables_ints(g) * sizeof(int));
    if (!ints)
        return -1;
    pybnn_pad_tables t;
    pybnn_bconv_pad_tables(g, ints, &t);
    long size = (long)t.nrc * t.ncc * g->cout;
    free(ints);
    return size;
}

static int pybnn_bconv_corrections(const pybnn_conv_geom *g, const int32_t *tapsum, int32_t *corr) {
    if (!pybnn_bconv_needs_fix(g))
        return 0;
    int *ints = malloc(pybnn_pad_tables_ints(g) * sizeof(int));
    int32_t *mem = NULL;
    pybnn_pad_tables t;
    if (ints) {
        pybnn_bconv_pad_tables(g, ints, &t);
        mem = malloc(pybnn_pad_corr_ints(g, &t) * sizeof(int32_t));
    }
    if (mem) {
        pybnn_bconv_pad_corr(g, tapsum, &t, mem);
        memcpy(corr, mem, (size_t)t.nrc * t.ncc * g->cout * sizeof(int32_t));
    }
    free(mem);
    free(ints);
    return mem ? 0 : -1;
}

/* Receptive field of output pixel (n, oh, ow) -> one im2col row of kh*kw*words words. */
static void pybnn_bconv_im2col_row(const pybnn_conv_geom *g, const pybnn_pad_tables *t,
                                   const uint32_t *x, int n, int oh, int ow, uint32_t *dst) {
    size_t words = (size_t)g->words, rowlen = (size_t)g->kw * words;
    long ih0 = (long)oh * g->sh - g->pad_top, iw0 = (long)ow * g->sw - g->pad_left;
    int jlo = t->clo[ow], jhi = t->chi[ow];
    const uint32_t *img = x + (size_t)n * g->h * g->w * words;
    for (int i = 0; i < g->kh; i++, dst += rowlen) {
        if (i < t->rlo[oh] || i >= t->rhi[oh] || jlo == jhi) {
            memset(dst, 0, rowlen * sizeof(uint32_t));
            continue;
        }
        /* first in-range tap of this row */
        const uint32_t *src = img + ((size_t)(ih0 + (long)i * g->dh) * g->w + (size_t)(iw0 + (long)jlo * g->dw)) * words;
        if (jlo > 0)
            memset(dst, 0, (size_t)jlo * words * sizeof(uint32_t));
        if (g->dw == 1) { /* the in-range taps are adjacent input pixels: one run */
            pybnn_copy_words(dst + jlo * words, src, (size_t)(jhi - jlo) * words);
        } else {
            for (int j = jlo; j < jhi; j++)
                pybnn_copy_words(dst + j * words, src + (size_t)(j - jlo) * g->dw * words, words);
        }
        if (jhi < g->kw)
            memset(dst + jhi * words, 0, (size_t)(g->kw - jhi) * words * sizeof(uint32_t));
    }
}

/* im2col rows of m consecutive output pixels starting at (n, oh, ow), one after the other
 * at dst.  Pixels whose taps are all in range (the interior, most of them) take a short
 * path: kh runs of kw*words words (kw*kh single taps when dilated along width) at fixed
 * strides from one input pointer. */
static void pybnn_bconv_im2col(const pybnn_conv_geom *g, const pybnn_pad_tables *t,
                               const uint32_t *x, int n, int oh, int ow, size_t m, uint32_t *dst) {
    size_t words = (size_t)g->words, rowlen = (size_t)g->kw * words, kwords = (size_t)g->kh * rowlen;
    size_t tap_row = (size_t)g->dh * g->w * words, tap_col = (size_t)g->dw * words;
    while (m > 0) {
        int end = (int)PYBNN_MIN((size_t)g->wout, (size_t)ow + m);
        int in_lo = end, in_hi = end; /* interior columns of this row within [ow, end) */
        if (t->rlo[oh] == 0 && t->rhi[oh] == g->kh && t->ow_in_lo < t->ow_in_hi) {
            in_lo = PYBNN_MIN(PYBNN_MAX(ow, t->ow_in_lo), end);
            in_hi = PYBNN_MAX(PYBNN_MIN(end, t->ow_in_hi), in_lo);
        }
        m -= (size_t)(end - ow);
        for (; ow < in_lo; ow++, dst += kwords)
            pybnn_bconv_im2col_row(g, t, x, n, oh, ow, dst);
        if (ow < in_hi) {
            const uint32_t *src = x + (((size_t)n * g->h + (size_t)((long)oh * g->sh - g->pad_top)) * g->w +
                                       (size_t)((long)ow * g->sw - g->pad_left)) * words;
            for (; ow < in_hi; ow++, dst += kwords, src += (size_t)g->sw * words) {
                const uint32_t *s = src;
                uint32_t *d = dst;
                for (int i = 0; i < g->kh; i++, s += tap_row, d += rowlen) {
                    if (g->dw == 1) {
                        pybnn_copy_words(d, s, rowlen);
                    } else {
                        for (int jj = 0; jj < g->kw; jj++)
                            pybnn_copy_words(d + jj * words, s + jj * tap_col, words);
                    }
                }
            }
        }
        for (; ow < end; ow++, dst += kwords)
            pybnn_bconv_im2col_row(g, t, x, n, oh, ow, dst);
        if (ow == g->wout) {
            ow = 0;
            if (++oh == g->hout) {
                oh = 0;
                n++;
            }
        }
    }
}

/* Adds the padding correction to the accumulators of m consecutive pixels starting at
 * output position (oh, ow): row r at acc + r*ldc holds channels c0 .. c1-1. */
static void pybnn_bconv_pad_fix(const pybnn_conv_geom *g, const pybnn_pad_tables *t, int oh, int ow,
                                size_t m, size_t c0, size_t c1, int32_t *acc, size_t ldc) {
    size_t cout = (size_t)g->cout, nc = c1 - c0;
    for (size_t r = 0; r < m; r++, acc += ldc) {
        int cls = t->rcls[oh] * t->ncc + t->ccls[ow];
        if (cls) {
            const int32_t *corr = t->corr + (size_t)cls * cout + c0;
            for (size_t co = 0; co < nc; co++)
                acc[co] = (int32_t)((uint32_t)acc[co] + (uint32_t)corr[co]);
        }
        if (++ow == g->wout) {
            ow = 0;
            if (++oh == g->hout)
                oh = 0;
        }
    }
}

/* Output channels are split between threads in units of 32: four weight blocks (one
 * AVX-512 tile column) and one word of a bit-packed output. */
#define PYBNN_BCONV_CUNIT 32

/* Pixels per chunk: keep the chunk's im2col rows (the GEMM's A) and, when a transform
 * follows, its int32 accumulators within about 24 KiB, so they stay in L1 while every
 * weight block streams past them and are still there for the transform.  Whole GEMM
 * tiles. */
static inline size_t pybnn_bconv_chunk(size_t kwords, size_t acc_channels) {
    size_t mc = 24576 / ((kwords + acc_channels) * sizeof(uint32_t));
    return PYBNN_MAX((size_t)12, PYBNN_MIN((size_t)504, mc / PYBNN_XGEMM_TILE_ROWS * PYBNN_XGEMM_TILE_ROWS));
}

/* One call's shared state; each part of pybnn_par_run works on its own range. */
typedef struct {
    const pybnn_conv_geom *g;
    pybnn_xgemm_fn gemm;
    const uint32_t *x, *wp;
    const pybnn_ot *ot; /* NULL: out receives the int32 accumulators */
    int ot_level;
    void *out;
    size_t ldo, esize;  /* output row stride (elements) and element size (bytes) */
    unsigned char *scratch; /* nparts blocks of scratch_bytes */
    size_t scratch_bytes, mc, kwords, total, cunits;
    size_t unit, tail;  /* by_pixels: pixels [0, tail) are whole units of `unit` rows */
    int32_t kbits;
    int direct, fix, by_pixels;
    const pybnn_pad_tables *t;
} pybnn_bconv_job;

/* Pixels [p_lo, p_hi) x channels [c0, c1) (c0 a multiple of 32), in chunks of j->mc pixels,
 * with the scratch of `part`. */
static void pybnn_bconv_block(const pybnn_bconv_job *j, int part, size_t p_lo, size_t p_hi, size_t c0,
                              size_t c1) {
    const pybnn_conv_geom *g = j->g;
    size_t cout = (size_t)g->cout, kwords = j->kwords;
    if (p_lo >= p_hi || c0 >= c1)
        return;
    /* first weight block of channel c0 */
    const uint32_t *wp = j->wp + c0 / PYBNN_XGEMM_NR * pybnn_xgemm_k64(kwords) * 2 * PYBNN_XGEMM_NR;
    uint32_t *cols = (uint32_t *)(j->scratch + (size_t)part * j->scratch_bytes);
    int32_t *accbuf = (int32_t *)(cols + (j->direct ? 0 : j->mc * kwords));
    for (size_t p0 = p_lo; p0 < p_hi; p0 += j->mc) {
        size_t m = PYBNN_MIN(j->mc, p_hi - p0);
        /* pixel p0 as (n, oh, ow) */
        int ow = (int)(p0 % (size_t)g->wout), oh = (int)((p0 / (size_t)g->wout) % (size_t)g->hout);
        int n = (int)(p0 / ((size_t)g->wout * (size_t)g->hout));
        const uint32_t *a;
        if (j->direct) {
            a = j->x + p0 * kwords; /* kwords == words (1x1) or h*w*words (whole image) */
        } else {
            pybnn_bconv_im2col(g, j->t, j->x, n, oh, ow, m, cols);
            a = cols;
        }
        int32_t *acc = j->ot ? accbuf : (int32_t *)j->out + p0 * cout + c0;
        size_t ldc = j->ot ? c1 - c0 : cout;
        j->gemm(a, kwords, m, kwords, wp, c1 - c0, j->kbits, acc, ldc);
        if (j->fix)
            pybnn_bconv_pad_fix(g, j->t, oh, ow, m, c0, c1, acc, ldc);
        if (j->ot)
            pybnn_ot_apply(j->ot, j->ot_level, acc, ldc, m, c0, c1,
                           (char *)j->out + p0 * j->ldo * j->esize, j->ldo);
    }
}

/* by_pixels: part p gets a contiguous range of whole GEMM tiles (and the last part the rows
 * after them, when the tiles cannot be shared out evenly anyway), then its share of the
 * channels of the rows after the tiles, when they can: 49 pixels on two threads are 4 tiles
 * of 6 rows each plus half the channels of pixel 48, where 25 + 24 pixels would leave one
 * part a 1-row tile more.  Otherwise all pixels x a range of channel units. */
static void pybnn_bconv_part(void *ctx, int part, int nparts) {
    const pybnn_bconv_job *j = (const pybnn_bconv_job *)ctx;
    size_t lo, hi, cout = (size_t)j->g->cout, tiles = j->total / j->unit;
    if (!j->by_pixels) {
        pybnn_par_range(j->cunits, part, nparts, &lo, &hi);
        pybnn_bconv_block(j, part, 0, j->total, lo * PYBNN_BCONV_CUNIT, PYBNN_MIN(hi * PYBNN_BCONV_CUNIT, cout));
        return;
    }
    pybnn_par_range(tiles, part, nparts, &lo, &hi);
    pybnn_bconv_block(j, part, lo * j->unit, part == nparts - 1 ? j->tail : hi * j->unit, 0, cout);
    if (j->tail < j->total) {
        pybnn_par_range(j->cunits, part, nparts, &lo, &hi);
        pybnn_bconv_block(j, part, j->tail, j->total, lo * PYBNN_BCONV_CUNIT,
                          PYBNN_MIN(hi * PYBNN_BCONV_CUNIT, cout));
    }
}

/* x: (n, h, w, words); wp: packed weights; tapsum: (kh*kw, cout); corr: the padding
 * corrections from pybnn_bconv_corrections, or NULL to compute them here.
 * ot == NULL: out is int32 (n, hout, wout, cout), the accumulators.  Otherwise the
 * transform *ot is applied to each chunk of accumulators (padding correction included)
 * while it is in cache, and out is its result: float32 or int8 (n, hout, wout, cout), or
 * uint32 (n, hout, wout, ceil(cout/32)) packed bits.  Bit-identical to computing the
 * accumulators and running the pybnn_to_* transform on them.
 * Uses up to `threads` threads: output pixels are split into contiguous ranges, or, when
 * there are too few pixels (dense layers at small batch), the output channels in units of
 * 32.  Returns the ISA of the GEMM variant used, or -1 if scratch memory could not be
 * allocated. */
static int pybnn_bconv2d(int isa, int threads, const pybnn_conv_geom *g, const uint32_t *x,
                         const uint32_t *wp, const int32_t *tapsum, const int32_t *corr,
                         const pybnn_ot *ot, void *out) {
    int used;
    pybnn_bconv_job j;
    j.g = g;
    j.gemm = pybnn_xgemm_pick(isa, &used);
    j.x = x, j.wp = wp, j.out = out, j.ot = ot;
    j.ot_level = pybnn_ot_level(isa);
    size_t words = (size_t)g->words, cout = (size_t)g->cout;
    j.ldo = ot ? pybnn_ot_ldo(ot, cout) : cout;
    j.esize = ot && ot->kind == PYBNN_OT_INT8 ? 1 : 4;
    j.kwords = (size_t)g->kh * g->kw * words;
    j.kbits = g->kh * g->kw * g->channels;
    j.total = (size_t)g->n * g->hout * g->wout;
    j.cunits = (cout + PYBNN_BCONV_CUNIT - 1) / PYBNN_BCONV_CUNIT;
    int unpadded = g->pad_top == 0 && g->pad_left == 0;
    /* Cases where each pixel's receptive field already is one contiguous input row. */
    j.direct = unpadded && ((g->kh == 1 && g->kw == 1 && g->sh == 1 && g->sw == 1 &&
                             g->hout == g->h && g->wout == g->w) ||
                            (g->kh == g->h && g->kw == g->w && g->dh == 1 && g->dw == 1 &&
                             g->hout == 1 && g->wout == 1));
    j.fix = pybnn_bconv_needs_fix(g);
    if (j.total == 0)
        return used;

    /* Work (common.h units): one per 32-bit word of the XNOR-popcount GEMM (+ the im2col copy). */
    double work = (double)j.total * (double)j.kwords * ((double)cout + (j.direct ? 0.0 : 1.0));
    int nparts = pybnn_par_parts(threads, PYBNN_MAX(j.total, j.cunits), work);
    /* Split pixels while every part gets a few GEMM tiles (16 rows make at least 2); else
     * output channels.  (Splitting channels already below 32 pixels per part measured no
     * better: each part then copies every receptive field and corrects every border pixel.) */
    j.by_pixels = j.total >= (size_t)nparts * 16 || j.cunits < (size_t)nparts;
    nparts = (int)PYBNN_MIN((size_t)nparts, j.by_pixels ? j.total : j.cunits);
    /* units of whole tiles (see pybnn_bconv_part), or of rows when there are fewer tiles
     * than parts (a few pixels of a few channels) */
    j.unit = j.total / PYBNN_XGEMM_TILE_ROWS >= (size_t)nparts ? PYBNN_XGEMM_TILE_ROWS : 1;
    const size_t tiles = j.total / j.unit;
    j.tail = j.total;
    if (j.by_pixels && nparts > 1 && tiles % (size_t)nparts == 0 && j.cunits >= (size_t)nparts)
        j.tail = tiles * j.unit;
    size_t part_channels = j.by_pixels ? cout : PYBNN_MIN(cout, (j.cunits + nparts - 1) / nparts * PYBNN_BCONV_CUNIT);
    j.mc = pybnn_bconv_chunk(j.kwords, ot ? part_channels : 0);
    /* no block of a part has more rows than this: size the scratch for them */
    size_t most = (tiles + nparts - 1) / nparts * j.unit + (j.total - tiles * j.unit);
    j.mc = PYBNN_MIN(j.mc, j.by_pixels ? most : j.total);
    size_t rows = j.mc;
    /* per part: im2col rows, then accumulators; 64-byte multiples keep parts' lines apart */
    j.scratch_bytes = ((j.direct ? 0 : rows * j.kwords) + (ot ? rows * part_channels : 0)) * sizeof(uint32_t);
    j.scratch_bytes = (j.scratch_bytes + 63) / 64 * 64;

    pybnn_pad_tables t;
    unsigned char *mem = malloc((size_t)nparts * j.scratch_bytes + pybnn_pad_tables_ints(g) * sizeof(int) + 64);
    int32_t *own = NULL; /* corrections computed here */
    if (!mem)
        return -1;
    j.scratch = (unsigned char *)(((uintptr_t)mem + 63) / 64 * 64);
    pybnn_bconv_pad_tables(g, (int *)(j.scratch + (size_t)nparts * j.scratch_bytes), &t);
    if (j.fix && !corr) {
        if (!(own = malloc(pybnn_pad_corr_ints(g, &t) * sizeof(int32_t)))) {
            free(mem);
            return -1;
        }
        pybnn_bconv_pad_corr(g, tapsum, &t, own);
        corr = own;
    }
    t.corr = j.fix ? corr : NULL;
    j.t = &t;
    pybnn_par_run(nparts, pybnn_bconv_part, &j);
    free(own);
    free(mem);
    return used;
}

#endif /* PYBNN_BCONV_H */
