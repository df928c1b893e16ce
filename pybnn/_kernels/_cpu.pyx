# cython: language_level=3
"""Which instruction-set paths this build has and the running CPU supports."""

cdef extern from "pybnn/common.h":
    int pybnn_isa_supported(int isa) nogil
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
