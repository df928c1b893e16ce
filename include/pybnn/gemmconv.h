/* Convolution by GEMM for the float and int8 kinds (Conv2D: sgemm, FloatBinaryConv2D:
 * fbgemm, Int8Conv2D: igemm, Int8BinaryConv2D: ibgemm), fused per block of output rows:
 *
 *     for each part (a contiguous range of output pixels, one per thread):
 *         for each block of B pixels:  im2col rows -> GEMM -> output transform
 *
 * The patch matrix never exists whole: a block of it lives in a buffer of its own part,
 * in L2, and its accumulators are transformed (float / int8 / packed bits, output_transform.h)
 * right after the GEMM made them.  On 3x3_64 the whole patch matrix is 7 MB of float32 written
 * to memory and read back; and im2col and the transform run on every thread with the GEMM.
 *
 * B makes a block at least as large as the packed weights (the GEMM streams all the weights
 * once per block, so that costs no more than the patch-matrix round trip it saves) and at
 * least PYBNN_GC_BLOCK_BYTES: early layers (many pixels, small weights) get blocks of ~100
 * rows, deep ones a single block per part, as unfused.
 *
 * With fewer than PYBNN_GC_MIN_ROWS pixels per part (1x1 outputs at small batch) a single
 * block holds every pixel and the GEMM itself splits output channels over the threads.
 * Each output gets the same value as im2col + GEMM + transform on whole matrices: the GEMMs
 * compute every element the same way whatever the row range (fbgemm.h, igemm.h). */
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
#define PYBNN_GC_MIN_ROWS 16

typedef struct {
    int gemm;                 /* PYBNN_GC_* */
    int isa, ot_level;
    const uint8_t *wp;        /* packed weights, as the GEMM's own check accepted them */
    size_t k, cout;
    int a_zp;                 /* int8 kinds: the input zero point (also the padding value) */
    pybnn_im2col_job im;      /* geometry; .out unused */
    const uint8_t *x;         /* the input, for direct (1x1 / stride 1 / unpadded) layers */
    int direct;
    const pybnn_ot *ot;
    void *out;
    size_t ldo, oesize, m, block, rowbytes;
    int gemm_threads, failed;
} pybnn_gc_job;

/* Pixels [r0, r0 + b) through GEMM and transform; buf holds b patch rows, acc b x cout int32. */
static void pybnn_gc_block(pybnn_gc_job *j, size_t r0, size_t b, uint8_t *buf, int32_t *acc) {
    const uint8_t *a = j->x + r0 * j->rowbytes;
    if (!j->direct) {
        pybnn_im2col_rows(&j->im, r0, r0 + b, buf);
        a = buf;
    }
    char *out = (char *)j->out + r0 * j->ldo * j->oesize;
    const int t = j->gemm_threads;
    switch (j->gemm) {
    case PYBNN_GC_SGEMM:
    case PYBNN_GC_FBGEMM: /* float accumulators go straight into the float output */
        pybnn_fgemm(j->gemm == PYBNN_GC_SGEMM, j->isa, t, (const float *)a, j->k, b, j->wp, j->k, j->cout,
                    (float *)out, j->cout);
        pybnn_ot_apply(j->ot, j->ot_level, out, j->cout, b, 0, j->cout, out, j->ldo);
        break;
    default:
        pybnn_igemm_run(j->isa, t, (const int8_t *)a, j->k, b, j->wp, j->k, j->cout, j->a_zp, acc, j->cout,
                        j->gemm == PYBNN_GC_IBGEMM);
        pybnn_ot_apply(j->ot, j->ot_level, acc, j->cout, b, 0, j->cout, out, j->ldo);
    }
}

static void pybnn_gc_part(void *ctx, int part, int nparts) {
    pybnn_gc_job *j = (pybnn_gc_job *)ctx;
    size_t lo, hi;
    pybnn_par_range(j->m, part, nparts, &lo, &hi);
    if (lo >= hi)
        return;
    const size_t block = PYBNN_MIN(j->block, hi - lo);
    const int int_acc = j->gemm >= PYBNN_GC_IGEMM;
    uint8_t *buf = j->direct ? NULL : (uint8_t *)malloc(block * j->rowbytes);
    int32_t *acc = int_acc ? (int32_t *)malloc(block * j->cout * sizeof(int32_t)) : NULL;
    if ((!j->direct && !buf) || (int_acc && !acc)) {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
    } else {
        for (size_t r0 = lo; r0 < hi; r0 += block)
            pybnn_gc_block(j, r0, PYBNN_MIN(block, hi - r0), buf, acc);
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
    if (int8)
        pybnn_igemm_pick_any(isa, gemm == PYBNN_GC_IBGEMM, &used);
    else
        pybnn_fbgemm_pick(isa, gemm == PYBNN_GC_SGEMM, &used);
    j.gemm = gemm, j.isa = isa, j.ot_level = pybnn_ot_level(isa);
    j.wp = wp, j.k = (size_t)(kh * kw * c), j.cout = cout, j.a_zp = a_zp;
    pybnn_im2col_job im = {(const uint8_t *)x, h, w, c, kh, kw, sh, sw, dh, dw, pad_top, pad_left, hout, wout,
                           esize, 0, int8 ? (uint8_t)a_zp : 0, NULL};
    j.im = im;
    j.x = (const uint8_t *)x;
    j.direct = kh == 1 && kw == 1 && sh == 1 && sw == 1 && pad_top == 0 && pad_left == 0 && hout == h && wout == w;
    j.ot = ot, j.out = out, j.ldo = pybnn_ot_ldo(ot, cout), j.oesize = pybnn_ot_esize(ot);
    j.m = (size_t)(n * hout * wout), j.rowbytes = j.k * esize;
    if (j.m == 0)
        return used;
    /* Work (common.h units): the GEMM's, im2col's and two per transformed element. */
    const double macs = (double)j.m * (double)cout * (double)j.k;
    double work = int8 ? macs / pybnn_igemm_macs_per_unit(used, gemm == PYBNN_GC_IBGEMM) : macs / 4.0;
    work += (j.direct ? 0.0 : pybnn_im2col_work(j.m, j.rowbytes)) + 2.0 * (double)j.m * (double)cout;
    int nparts = pybnn_par_parts(threads, j.m, work);
    if (nparts > 1 && j.m < (size_t)nparts * PYBNN_GC_MIN_ROWS) {
        nparts = 1; /* one block; the GEMM splits channels */
        j.gemm_threads = threads;
        j.block = j.m;
    } else {
        j.gemm_threads = 1;
        size_t bytes = PYBNN_MAX(wbytes, (size_t)PYBNN_GC_BLOCK_BYTES);
        j.block = (bytes / j.rowbytes + 23) / 24 * 24; /* whole row tiles: 24 = 2 x 12 = 4 x 6 = 6 x 4 */
    }
    pybnn_par_run(nparts, pybnn_gc_part, &j);
    return j.failed ? -1 : used;
}

#endif
