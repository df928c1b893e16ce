# cython: language_level=3
"""Which instruction-set paths this build has and the running CPU supports."""

cdef extern from "pybnn/common.h":
    int pybnn_isa_supported(int isa) nogil
    int pybnn_openmp() nogil
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


def openmp():
    """True if this build runs kernels on several threads (compiled with OpenMP)."""
    return bool(pybnn_openmp())


def par_parts(int threads, size_t units, double work):
    """Parts a kernel splits `work` units over (at most `threads`, at most `units`, and 1
    below the work threshold of 2 * par_grain() units); exposed for tests."""
    return pybnn_par_parts(threads, units, work)


def par_grain():
    """Least work (in the kernels' work units) worth giving to one more thread."""
    return PYBNN_PAR_GRAIN
