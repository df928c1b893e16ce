/* Per-channel float32 operations on rows of C channels (NHWC tensors), one pass:
 *
 *   t = x;  t = t - sub[c];  t = t * mul[c];  t = t + add[c];  t = t + res;  t = t * (t >= 0)
 *
 * each step optional (a NULL vector or relu = 0 skips it) and each rounded to float32 on its
 * own: the kernels are compiled without FMA contraction, so they give exactly the float32
 * operations NumPy performs in this order.  BatchNormalization is (sub, mul, add) = (mean,
 * gamma / sqrt(var + eps), beta); ChannelAffine (-, scale, bias); Add is res; ReLU (no slope,
 * no cap) is relu; a BatchNormalization or ChannelAffine folded into the Add that reads it is
 * both, so the shortcut of a residual block costs one pass over memory instead of two.
 *
 * How: the loop is written once and instantiated for each combination of steps (constant
 * flags, so every instance vectorises without tests in the loop), per instruction set by
 * target attributes (as pool.h).  Threads: contiguous ranges of rows.
 */
#ifndef PYBNN_ELTWISE_H
#define PYBNN_ELTWISE_H

#include "pybnn/common.h"

enum { PYBNN_EW_SUB = 1, PYBNN_EW_MUL = 2, PYBNN_EW_ADD = 4, PYBNN_EW_RES = 8, PYBNN_EW_RELU = 16 };

typedef struct {
    const float *x, *sub, *mul, *add, *res;
    float *y;
    size_t rows, c;
} pybnn_ew_args;

static inline __attribute__((always_inline)) void pybnn_ew_body(const pybnn_ew_args *a, size_t r0, size_t r1,
                                                                 const int f) {
    /* Locals, not a->: a store through y could otherwise change a->sub etc. as far as the
     * compiler knows, and the loop would not vectorise.  y may be x or res (the same
     * element is read before it is written), never a partial overlap, nor a vector. */
    const size_t c = a->c;
    const float *sub = a->sub, *mul = a->mul, *add = a->add;
    for (size_t r = r0; r < r1; r++) {
        const float *x = a->x + r * c, *res = (f & PYBNN_EW_RES) ? a->res + r * c : x;
        float *y = a->y + r * c;
        for (size_t i = 0; i < c; i++) {
            float t = x[i];
            if (f & PYBNN_EW_SUB) t = t - sub[i];
            if (f & PYBNN_EW_MUL) t = t * mul[i];
            if (f & PYBNN_EW_ADD) t = t + add[i];
            if (f & PYBNN_EW_RES) t = t + res[i];
            if (f & PYBNN_EW_RELU) t = t * (float)(t >= 0.0f);
            y[i] = t;
        }
    }
}

typedef void (*pybnn_ew_fn)(const pybnn_ew_args *a, size_t r0, size_t r1, int flags);

/* One function per instruction set; its switch makes the 32 specialised loops. */
#define PYBNN_EW_CASE(n) case n: pybnn_ew_body(a, r0, r1, n); break;
#define PYBNN_EW_VARIANT(suffix, ATTR)                                                             \
    ATTR static void pybnn_ew_##suffix(const pybnn_ew_args *a, size_t r0, size_t r1, int flags) {  \
        switch (flags & 31) {                                                                      \
            PYBNN_EW_CASE(0) PYBNN_EW_CASE(1) PYBNN_EW_CASE(2) PYBNN_EW_CASE(3) PYBNN_EW_CASE(4)    \
            PYBNN_EW_CASE(5) PYBNN_EW_CASE(6) PYBNN_EW_CASE(7) PYBNN_EW_CASE(8) PYBNN_EW_CASE(9)    \
            PYBNN_EW_CASE(10) PYBNN_EW_CASE(11) PYBNN_EW_CASE(12) PYBNN_EW_CASE(13)                \
            PYBNN_EW_CASE(14) PYBNN_EW_CASE(15) PYBNN_EW_CASE(16) PYBNN_EW_CASE(17)                \
            PYBNN_EW_CASE(18) PYBNN_EW_CASE(19) PYBNN_EW_CASE(20) PYBNN_EW_CASE(21)                \
            PYBNN_EW_CASE(22) PYBNN_EW_CASE(23) PYBNN_EW_CASE(24) PYBNN_EW_CASE(25)                \
            PYBNN_EW_CASE(26) PYBNN_EW_CASE(27) PYBNN_EW_CASE(28) PYBNN_EW_CASE(29)                \
            PYBNN_EW_CASE(30) PYBNN_EW_CASE(31)                                                    \
        }                                                                                          \
    }

PYBNN_EW_VARIANT(scalar, )
#if PYBNN_X86
PYBNN_EW_VARIANT(avx2, PYBNN_TARGET_AVX2)
PYBNN_EW_VARIANT(avx512, PYBNN_TARGET_AVX512)
#endif
#if PYBNN_NEON
PYBNN_EW_VARIANT(neon, )
#endif

static pybnn_ew_fn pybnn_ew_pick(int isa, int *used) {
#if PYBNN_NEON
    /* Plain C: aarch64 vectorises it with NEON (IEEE); armv7 compilers keep float code on
     * VFP (its NEON flushes denormals), so it stays exact there too. */
    if (isa >= PYBNN_ISA_NEON) { *used = PYBNN_ISA_NEON; return pybnn_ew_neon; }
#endif
#if PYBNN_X86
    if (isa >= PYBNN_ISA_AVX512 && pybnn_isa_supported(PYBNN_ISA_AVX512)) { *used = PYBNN_ISA_AVX512; return pybnn_ew_avx512; }
    if (isa >= PYBNN_ISA_AVX2 && pybnn_isa_supported(PYBNN_ISA_AVX2)) { *used = PYBNN_ISA_AVX2; return pybnn_ew_avx2; }
#endif
    (void)isa;
    *used = PYBNN_ISA_SCALAR;
    return pybnn_ew_scalar;
}

typedef struct {
    pybnn_ew_fn fn;
    pybnn_ew_args args;
    int flags;
} pybnn_ew_job;

static void pybnn_ew_part(void *ctx, int part, int nparts) {
    const pybnn_ew_job *j = (const pybnn_ew_job *)ctx;
    size_t lo, hi;
    pybnn_par_range(j->args.rows, part, nparts, &lo, &hi);
    if (lo < hi)
        j->fn(&j->args, lo, hi, j->flags);
}

/* y (rows x c) = the steps above applied to x (rows x c); vectors of c floats, res rows x c;
 * y may be x or res.  Returns the ISA used. */
static int pybnn_channelwise(int isa, int threads, const float *x, size_t rows, size_t c, const float *sub,
                             const float *mul, const float *add, const float *res, int relu, float *y) {
    int used;
    pybnn_ew_job j = {pybnn_ew_pick(isa, &used), {x, sub, mul, add, res, y, rows, c},
                      (sub ? PYBNN_EW_SUB : 0) | (mul ? PYBNN_EW_MUL : 0) | (add ? PYBNN_EW_ADD : 0) |
                          (res ? PYBNN_EW_RES : 0) | (relu ? PYBNN_EW_RELU : 0)};
    /* Work (common.h units): memory bound, 8-12 bytes per value; see PYBNN_PAR_STREAMING. */
    pybnn_par_run(pybnn_par_parts(threads, rows, PYBNN_PAR_STREAMING * (double)rows * (double)c), pybnn_ew_part,
                  &j);
    return used;
}

#endif /* PYBNN_ELTWISE_H */
