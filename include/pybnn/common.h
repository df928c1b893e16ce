/* Common definitions for every pybnn kernel header.
 *
 * Each kernel family lives in one header with one variant per instruction set, named
 * pybnn_<family>_<isa>, plus a selector pybnn_<family>(isa, ...) that walks from the
 * requested instruction set down to the portable scalar variant and returns the one it
 * ran.  Variants for wider instruction sets are compiled with per-function target
 * attributes, so the package is built without -march flags and runs on any CPU of its
 * architecture; the Python layer picks the instruction set at run time (pybnn.cpu).
 */
#ifndef PYBNN_COMMON_H
#define PYBNN_COMMON_H

#include <stdint.h>
#include <stddef.h>
#include <string.h>

/* Instruction-set paths, best last.  The numbers are part of the Python API (pybnn.cpu). */
enum {
    PYBNN_ISA_SCALAR = 0, /* portable C: the runtime fallback on every CPU */
    PYBNN_ISA_SSE4 = 1,   /* x86: SSE4.2 + POPCNT (every x86-64 CPU since ~2009) */
    PYBNN_ISA_AVX2 = 2,   /* x86: AVX2 + FMA + POPCNT (Haswell and later) */
    PYBNN_ISA_NEON = 3,   /* ARM: NEON / ASIMD (aarch64 always; armv7 built with -mfpu=neon) */
    PYBNN_ISA_AVX512 = 4, /* x86: AVX-512 F/BW/VL/DQ + VNNI + VPOPCNTDQ (Ice Lake, Sapphire Rapids, Zen 4
                           * and later); a kernel without such a variant runs its AVX2 one */
    PYBNN_ISA_NEON_DOTPROD = 5 /* aarch64: NEON + the ARMv8.2 dot product (SDOT: Cortex-A76 = Raspberry
                                * Pi 5, A55, ...); only the int8 GEMMs have such variants, the
                                * other kernels run their NEON one */
};

#if defined(__x86_64__) || defined(__i386__) || defined(_M_X64)
#define PYBNN_X86 1
#include <immintrin.h>
#define PYBNN_TARGET_SSE4 __attribute__((target("sse4.2,popcnt")))
#define PYBNN_TARGET_AVX2 __attribute__((target("avx2,fma,popcnt,sse4.2")))
#define PYBNN_TARGET_AVX512                                                                        \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512vpopcntdq,avx2,fma,"  \
                          "popcnt,sse4.2")))
#else
#define PYBNN_X86 0
#endif

#if defined(__aarch64__) || (defined(__ARM_NEON) && defined(__arm__))
#define PYBNN_NEON 1
#include <arm_neon.h>
#else
#define PYBNN_NEON 0
#endif

/* The dot-product variants are compiled for aarch64 Linux with GCC or clang whatever the
 * build's baseline (-march) is, and run only where the kernel reports the feature. */
#if defined(__aarch64__) && defined(__linux__) && defined(__GNUC__)
#define PYBNN_DOTPROD 1
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20) /* <asm/hwcap.h> */
#endif
#define PYBNN_TARGET_DOTPROD __attribute__((target("arch=armv8.2-a+dotprod")))
#else
#define PYBNN_DOTPROD 0
#endif

#define PYBNN_MIN(a, b) ((a) < (b) ? (a) : (b))
#define PYBNN_MAX(a, b) ((a) > (b) ? (a) : (b))

static inline int pybnn_popcount32(uint32_t x) { return __builtin_popcount(x); }

/* Sign (1 = -1, 0 = +1) of element (n, k) of a matrix of signs stored as a little-endian bit
 * stream (bit e is bit e % 8 of byte e / 8) with element strides sn, sk.  The weight packers
 * read their input this way: the plain `bits` tensors of model files are HWIO kernels, a
 * (K, cout) matrix (sn = 1, sk = cout), and rows of (cout, K) bits have sn = K, sk = 1. */
static inline unsigned pybnn_sbit(const uint8_t *bits, size_t sn, size_t sk, size_t n, size_t k) {
    const size_t e = n * sn + k * sk;
    return (unsigned)(bits[e >> 3] >> (e & 7)) & 1u;
}

/* The 64-byte header of the GEMMs' packed weights (fbgemm.h, igemm.h): little-endian uint32
 * magic, K, cout, then 52 zero bytes.  A packed buffer that starts on a multiple of 64 bytes
 * (as pybnn allocates them and model files place them) has its panels on cache lines. */
#define PYBNN_PACK_HEADER 64

static inline void pybnn_pack_header(uint8_t *dst, uint32_t magic, size_t k, size_t cout) {
    const uint32_t header[PYBNN_PACK_HEADER / 4] = {magic, (uint32_t)k, (uint32_t)cout};
    memcpy(dst, header, sizeof header);
}

/* 1 if `wp` (of `size` bytes) has `want` bytes and the header pybnn_pack_header writes for this
 * magic, K and cout (its reserved bytes zero). */
static inline int pybnn_pack_header_ok(const uint8_t *wp, size_t size, size_t want, uint32_t magic, size_t k,
                                       size_t cout) {
    uint32_t header[PYBNN_PACK_HEADER / 4];
    if (size != want || size < sizeof header)
        return 0;
    memcpy(header, wp, sizeof header); /* the buffer need not be aligned */
    int ok = header[0] == magic && header[1] == k && header[2] == cout;
    for (size_t i = 3; i < PYBNN_PACK_HEADER / 4; i++)
        ok = ok && header[i] == 0;
    return ok;
}

/* Is this instruction set usable on the running CPU (and compiled into this build)? */
static inline int pybnn_isa_supported(int isa) {
    switch (isa) {
    case PYBNN_ISA_SCALAR:
        return 1;
#if PYBNN_X86
    case PYBNN_ISA_SSE4:
        __builtin_cpu_init();
        return __builtin_cpu_supports("sse4.2") && __builtin_cpu_supports("popcnt");
    case PYBNN_ISA_AVX2:
        __builtin_cpu_init();
        /* GCC and clang also check that the OS saves the YMM registers (XGETBV). */
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               __builtin_cpu_supports("popcnt");
    case PYBNN_ISA_AVX512:
        __builtin_cpu_init();
        /* avx512f also checks that the OS saves the ZMM and mask registers. */
        return pybnn_isa_supported(PYBNN_ISA_AVX2) && __builtin_cpu_supports("avx512f") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vnni") &&
               __builtin_cpu_supports("avx512vpopcntdq");
#endif
#if PYBNN_NEON
    case PYBNN_ISA_NEON:
        return 1;
#endif
#if PYBNN_DOTPROD
    case PYBNN_ISA_NEON_DOTPROD:
        return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#endif
    default:
        return 0;
    }
}

#if PYBNN_NEON
/* ---------------------------------------------------------------- NEON helpers
 * NEON has no movemask: compare results (all-ones / zero lanes) become bits by narrowing
 * to bytes, keeping one weight bit per byte and adding the bytes pairwise (armv7 has no
 * across-vector add). */

/* 16 byte masks -> 16 bits. */
static inline uint32_t pybnn_neon_bytemask16(uint8x16_t b) {
    static const uint8_t weights[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint64x2_t s = vpaddlq_u32(vpaddlq_u16(vpaddlq_u8(vandq_u8(b, vld1q_u8(weights)))));
    return (uint32_t)vgetq_lane_u64(s, 0) | (uint32_t)vgetq_lane_u64(s, 1) << 8;
}

/* 16 lanes of 4 uint32 compare masks (channels 4i + lane of m[i]) -> 16 bits. */
static inline uint32_t pybnn_neon_mask16(uint32x4_t m0, uint32x4_t m1, uint32x4_t m2, uint32x4_t m3) {
    return pybnn_neon_bytemask16(vcombine_u8(vmovn_u16(vcombine_u16(vmovn_u32(m0), vmovn_u32(m1))),
                                             vmovn_u16(vcombine_u16(vmovn_u32(m2), vmovn_u32(m3)))));
}

/* One packed word from 32 int32 values x[0..7] (4 channels each) and thresholds t: bit
 * j = x < t where bit j of neg is 0, x > t where it is 1 (output_transform.h, bitpack.h). */
static inline uint32_t pybnn_neon_thr_word(const int32x4_t x[8], const int32x4_t t[8], uint32_t neg) {
    uint32_t below = pybnn_neon_mask16(vcltq_s32(x[0], t[0]), vcltq_s32(x[1], t[1]), vcltq_s32(x[2], t[2]),
                                       vcltq_s32(x[3], t[3])) |
                     pybnn_neon_mask16(vcltq_s32(x[4], t[4]), vcltq_s32(x[5], t[5]), vcltq_s32(x[6], t[6]),
                                       vcltq_s32(x[7], t[7])) << 16;
    uint32_t above = pybnn_neon_mask16(vcgtq_s32(x[0], t[0]), vcgtq_s32(x[1], t[1]), vcgtq_s32(x[2], t[2]),
                                       vcgtq_s32(x[3], t[3])) |
                     pybnn_neon_mask16(vcgtq_s32(x[4], t[4]), vcgtq_s32(x[5], t[5]), vcgtq_s32(x[6], t[6]),
                                       vcgtq_s32(x[7], t[7])) << 16;
    return (below & ~neg) | (above & neg);
}

/* Bit j set where dir[j] < 0, for the 32 directions at dir. */
static inline uint32_t pybnn_neon_dirneg(const int8_t *dir) {
    const int8x16_t zero = vdupq_n_s8(0);
    return pybnn_neon_bytemask16(vcltq_s8(vld1q_s8(dir), zero)) |
           pybnn_neon_bytemask16(vcltq_s8(vld1q_s8(dir + 16), zero)) << 16;
}
#endif

/* ---------------------------------------------------------------- threads
 *
 * Every driver (the selector-level function a Cython wrapper calls) takes `threads`, the
 * most threads it may use, splits its output into `nparts` contiguous ranges (of rows, of
 * pixels, or of output-channel blocks) and hands each range to pybnn_par_run, which runs
 * the parts on the process's worker threads (threads.h).
 * Every output element is computed by exactly one part, by the same code and in the same
 * order whatever the partition, so results are bit-identical for every thread count
 * (float kernels split channels only at boundaries of their channel groups).
 *
 * Work is estimated per kernel in units of about 0.1 ns of one AVX2 core (calibrated per
 * kernel: one 32-bit XNOR-popcount word per output channel in bconv2d, 2-6 multiply-adds
 * in the GEMMs, ~3 bytes copied by im2col, ...).  A part must get at least
 * PYBNN_PAR_GRAIN units (about 13 us), so a kernel goes parallel only above 2 grains
 * (about 25-40 us on one core): handing a part to a worker costs ~0.2 us while it still
 * spins after the previous kernel and tens of us once it sleeps, and on a busy machine a
 * part can wait a whole scheduler time slice for a core. */
#define PYBNN_PAR_GRAIN 131072.0
#define PYBNN_PAR_MAX_THREADS 256

/* Memory-bound kernels (per-channel float operations, bit-packing) mostly read what the
 * kernel before them just wrote, in a model on all its threads in contiguous row ranges:
 * run serially, they fetch half their input from the other core's cache, split the same way
 * each thread reads its own.  QuickNet's 14x14x256 Add after a 2-thread convolution: 8.5 us
 * in a 1-thread model, 13-17 us serial in a 2-thread one, 9 us split.  Such kernels count
 * their work this many times over (about 0.1 ns per value), so they split from about 22,000
 * values (a single small layer called alone pays ~1 us for it). */
#define PYBNN_PAR_STREAMING 12.0

/* Parts to split `work` units into: at most `threads`, at most `units` (the number of
 * indivisible pieces of output) and at most work / PYBNN_PAR_GRAIN. */
static inline int pybnn_par_parts(int threads, size_t units, double work) {
    if (threads <= 1 || units <= 1 || work < 2.0 * PYBNN_PAR_GRAIN)
        return 1;
    double by_work = work / PYBNN_PAR_GRAIN;
    size_t t = (size_t)PYBNN_MIN(threads, PYBNN_PAR_MAX_THREADS);
    if ((double)t > by_work)
        t = (size_t)by_work;
    if (t > units)
        t = units;
    return t < 1 ? 1 : (int)t;
}

/* Range [*lo, *hi) of part `part` when `units` are split into `nparts` near-equal ranges. */
static inline void pybnn_par_range(size_t units, int part, int nparts, size_t *lo, size_t *hi) {
    *lo = units / (size_t)nparts * (size_t)part + PYBNN_MIN(units % (size_t)nparts, (size_t)part);
    *hi = *lo + units / (size_t)nparts + ((size_t)part < units % (size_t)nparts);
}

typedef void (*pybnn_part_fn)(void *ctx, int part, int nparts);

/* Runs parts in parallel: the process's one thread pool (threads.h), set in every kernel
 * module at import (_checks.pxi); NULL runs parts one after the other. */
typedef void (*pybnn_par_runner_fn)(int nparts, pybnn_part_fn fn, void *ctx);
static pybnn_par_runner_fn pybnn_par_runner = NULL;
static inline void pybnn_par_set_runner(void *runner) { pybnn_par_runner = (pybnn_par_runner_fn)runner; }

/* Runs fn(ctx, p, nparts) for p = 0 .. nparts-1, in parallel when it can. */
static void pybnn_par_run(int nparts, pybnn_part_fn fn, void *ctx) {
    if (nparts > 1 && pybnn_par_runner) {
        pybnn_par_runner(nparts, fn, ctx);
        return;
    }
    for (int p = 0; p < nparts; p++)
        fn(ctx, p, nparts);
}

#endif
