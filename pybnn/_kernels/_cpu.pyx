# cython: language_level=3
"""Which instruction-set paths this build has and the running CPU supports, and the
process's one pool of worker threads (include/pybnn/threads.h), which every kernel module
fetches from `par_runner` at import (_checks.pxi)."""
from cpython.pycapsule cimport PyCapsule_New

cdef extern from "pybnn/threads.h":
    ctypedef void (*pybnn_part_fn)(void *ctx, int part, int nparts)
    void pybnn_pool_run(int nparts, pybnn_part_fn fn, void *ctx) nogil
    int pybnn_pool_workers() nogil

cdef extern from "pybnn/common.h":
    int pybnn_isa_supported(int isa) nogil
    int pybnn_par_parts(int threads, size_t units, double work) nogil
    double PYBNN_PAR_GRAIN
    int PYBNN_X86, PYBNN_NEON


def isa_supported(int isa):
    """True if kernels for `isa` (a pybnn.cpu ISA number) were built and can run here."""
    return bool(pybnn_isa_supported(isa))


def arch_family():
    """'x86', 'arm' or 'other': the family whose SIMD variants this build contains."""
    if PYBNN_X86:
        return "x86"
    if PYBNN_NEON:
        return "arm"
    return "other"


def pool_workers():
    """Worker threads the pool has started (0 until a kernel first runs on several threads)."""
    return pybnn_pool_workers()


def par_parts(int threads, size_t units, double work):
    """Parts a kernel splits `work` units over (at most `threads`, at most `units`, and 1
    below the work threshold of 2 * par_grain() units); exposed for tests."""
    return pybnn_par_parts(threads, units, work)


def par_grain():
    """Least work (in the kernels' work units) worth giving to one more thread."""
    return PYBNN_PAR_GRAIN


par_runner = PyCapsule_New(<void *>pybnn_pool_run, "pybnn.par_runner", NULL)
