# Argument checks shared by every kernel module (textually included: `include "_checks.pxi"`).

cdef extern from "pybnn/common.h":
    int pybnn_isa_supported(int isa)


cdef int _check_isa(int isa) except -1:
    if not pybnn_isa_supported(isa):
        raise ValueError(f"ISA {isa} is not available on this CPU/build "
                         f"(see pybnn.cpu.available())")
    return 0


cdef int _check_threads(int threads) except -1:
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return 0
