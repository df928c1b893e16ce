# Argument checks shared by every kernel module (textually included: `include "_checks.pxi"`).

from cpython.pycapsule cimport PyCapsule_GetPointer

from pybnn._kernels._cpu import par_runner as _par_runner

cdef extern from "pybnn/common.h":
    int pybnn_isa_supported(int isa)
    void pybnn_par_set_runner(void *runner)

# Parallel parts run on the process's one thread pool, which lives in _cpu.
pybnn_par_set_runner(PyCapsule_GetPointer(_par_runner, "pybnn.par_runner"))


cdef int _check_isa(int isa) except -1:
    if not pybnn_isa_supported(isa):
        raise ValueError(f"ISA {isa} is not available on this CPU/build "
                         f"(see pybnn.cpu.available())")
    return 0


cdef int _check_threads(int threads) except -1:
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return 0


cdef int _check_pool_geom(long long h, long long w, int kh, int kw, int sh, int sw, int pad_top,
                          int pad_left, int hout, int wout) except -1:
    """Pooling windows (kh x kw, strides sh x sw, leading pads) over an h x w input giving
    hout x wout outputs must each hold at least one input pixel."""
    if kh < 1 or kw < 1 or sh < 1 or sw < 1:
        raise ValueError(f"pool size and strides must be >= 1; got {kh}x{kw}, {sh}x{sw}")
    if hout < 1 or wout < 1 or h < 1 or w < 1:
        raise ValueError(f"input and output H, W must be >= 1; got {h}x{w} -> {hout}x{wout}")
    if pad_top < 0 or pad_left < 0:
        raise ValueError(f"pads must be >= 0; got {pad_top}, {pad_left}")
    # Windows move monotonically, so checking the first and the last one along each axis
    # proves every window overlaps the input.
    if pad_top >= kh or (<long long>hout - 1) * sh - pad_top >= h:
        raise ValueError(f"a pooling window along height lies entirely outside the input "
                         f"(H={h}, pool {kh}, stride {sh}, pad_top {pad_top}, hout {hout})")
    if pad_left >= kw or (<long long>wout - 1) * sw - pad_left >= w:
        raise ValueError(f"a pooling window along width lies entirely outside the input "
                         f"(W={w}, pool {kw}, stride {sw}, pad_left {pad_left}, wout {wout})")
    if h > 2**31 - 1 or w > 2**31 - 1:
        raise ValueError("tensor too large")
    return 0
