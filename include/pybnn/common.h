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
    PYBNN_ISA_NEON = 3    /* ARM: NEON / ASIMD (aarch64 always; armv7 built with -mfpu=neon) */
};

#if defined(__x86_64__) || defined(__i386__) || defined(_M_X64)
#define PYBNN_X86 1
#include <immintrin.h>
#define PYBNN_TARGET_SSE4 __attribute__((target("sse4.2,popcnt")))
#define PYBNN_TARGET_AVX2 __attribute__((target("avx2,fma,popcnt,sse4.2")))
#else
#define PYBNN_X86 0
#endif

#if defined(__aarch64__) || (defined(__ARM_NEON) && defined(__arm__))
#define PYBNN_NEON 1
#include <arm_neon.h>
#else
#define PYBNN_NEON 0
#endif

#define PYBNN_MIN(a, b) ((a) < (b) ? (a) : (b))
#define PYBNN_MAX(a, b) ((a) > (b) ? (a) : (b))

static inline int pybnn_popcount32(uint32_t x) { return __builtin_popcount(x); }
static inline int pybnn_popcount64(uint64_t x) { return __builtin_popcountll(x); }

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
#endif
#if PYBNN_NEON
    case PYBNN_ISA_NEON:
        return 1;
#endif
    default:
        return 0;
    }
}

#endif
