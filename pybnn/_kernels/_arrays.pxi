# NumPy array checks and output-transform parameters shared by the convolution modules
# (textually included after `cimport numpy as cnp`: `include "_arrays.pxi"`).

cdef extern from "pybnn/output_transform.h" nogil:
    ctypedef struct pybnn_ot:
        int kind
        const float *mult
        const float *bias
        const int32_t *ibias
        float lo, hi
        int zp, qmin, qmax
        const int32_t *thr
        const int8_t *dir
    enum:
        PYBNN_OT_FLOAT_I32
        PYBNN_OT_FLOAT_F32
        PYBNN_OT_INT8
        PYBNN_OT_BITS


def empty_aligned(shape, dtype=np.uint8):
    """Uninitialised array (np.empty(shape, dtype)) whose data starts on a multiple of 64
    bytes, where a model file places every tensor: packed weights then have their panels
    (after a 64-byte header, or none) on cache lines, as the AVX-512 kernels' 64-byte loads
    want; activation arenas and layer outputs use it too (pybnn.layouts.empty_aligned).
    NumPy starts arrays of more than ~100 KB 16-48 bytes past a cache line: those become a
    view into a slightly larger array (of the dtype's type number: native byte order, as
    every pybnn tensor has)."""
    cdef cnp.ndarray a = np.empty(shape, dtype)
    if <size_t>cnp.PyArray_DATA(a) % 64 == 0:
        return a
    cdef cnp.ndarray raw = np.empty(cnp.PyArray_NBYTES(a) + 63, np.uint8)
    cdef char *data = <char *>cnp.PyArray_DATA(raw)
    cdef cnp.ndarray view = cnp.PyArray_SimpleNewFromData(cnp.PyArray_NDIM(a), cnp.PyArray_DIMS(a),
                                                          cnp.PyArray_TYPE(a), data + (64 - <size_t>data % 64) % 64)
    cnp.set_array_base(view, raw)  # (C-API calls: slicing, .view and .reshape took ~0.5 us)
    return view


def _check_bits(const uint8_t[::1] bits, Py_ssize_t n, Py_ssize_t k, Py_ssize_t sn, Py_ssize_t sk, str who):
    """`bits` must hold element (n - 1, k - 1) of a bit matrix with strides sn, sk >= 0."""
    if sn < 0 or sk < 0:
        raise ValueError(f"{who}: bit strides must be >= 0, got {sn}, {sk}")
    # Python ints (casting each operand first: Cython would otherwise compute in C, where a
    # hostile stride wraps the sum negative and past this check)
    cdef object last = (<object>n - 1) * <object>sn + (<object>k - 1) * <object>sk
    if n < 1 or k < 1 or last >= 8 * bits.shape[0] or last > <size_t>-1:  # (C indexes bits in size_t)
        raise ValueError(f"{who}: {bits.shape[0]} bytes of bits do not hold a {n} x {k} matrix "
                         f"with strides {sn}, {sk}")
    return 0


_TYPE_NAMES = {cnp.NPY_INT32: "int32", cnp.NPY_UINT32: "uint32", cnp.NPY_FLOAT32: "float32",
               cnp.NPY_INT8: "int8", cnp.NPY_UINT8: "uint8"}


cdef void *_data(object a, int typenum, int ndim, const cnp.npy_intp *dims, str name,
                 bint writeable=False) except NULL:
    """Data pointer of `a` if it is a C-contiguous NumPy array of that type and shape (dims[i]
    < 0: any size), else ValueError naming it.  Plain C checks: these run on every layer call."""
    if not isinstance(a, cnp.ndarray):
        raise ValueError(f"{name} must be a NumPy array, got {type(a).__name__}")
    cdef cnp.ndarray arr = <cnp.ndarray>a
    # Equivalent type numbers: on 32-bit ARM uint32 is both NPY_UINT and NPY_ULONG, and an
    # array may carry either (arithmetic on uint32 arrays gives one or the other).
    cdef bint ok = (cnp.PyArray_EquivTypenums(cnp.PyArray_TYPE(arr), typenum) and cnp.PyArray_NDIM(arr) == ndim and
                    cnp.PyArray_IS_C_CONTIGUOUS(arr) and (cnp.PyArray_ISWRITEABLE(arr) or not writeable))
    cdef int i
    if ok:
        for i in range(ndim):
            ok = ok and (dims[i] < 0 or cnp.PyArray_DIMS(arr)[i] == dims[i])
    if not ok:
        want = []
        for i in range(ndim):
            want.append(int(dims[i]) if dims[i] >= 0 else "any")
        raise ValueError(f"{name} must be a C-contiguous{' writeable' if writeable else ''} "
                         f"{_TYPE_NAMES.get(typenum, typenum)} array of shape {tuple(want)}; "
                         f"got {a.dtype} {a.shape}")
    return cnp.PyArray_DATA(arr)


cdef const void *_nhwc_input(object x, int typenum, Py_ssize_t h, Py_ssize_t w, Py_ssize_t c, str who,
                             cnp.npy_intp *n) except NULL:
    """Data of x if it is a C-contiguous float32 / int8 (typenum) array (N, h, w, c) or
    (N, h*w*c), the input of a prepared convolution call; *n = N.  Else ValueError."""
    if not isinstance(x, cnp.ndarray):
        raise ValueError(f"{who}: x must be a NumPy array, got {type(x).__name__}")
    cdef cnp.ndarray xa = <cnp.ndarray>x
    cdef int nd = cnp.PyArray_NDIM(xa)
    cdef cnp.npy_intp *xd = cnp.PyArray_DIMS(xa)
    if not (cnp.PyArray_TYPE(xa) == typenum and cnp.PyArray_IS_C_CONTIGUOUS(xa) and
            ((nd == 4 and xd[1] == h and xd[2] == w and xd[3] == c) or (nd == 2 and xd[1] == h * w * c))):
        raise ValueError(f"{who}: x must be a C-contiguous {_TYPE_NAMES.get(typenum, typenum)} array of shape "
                         f"(N, {h}, {w}, {c}) or (N, {h * w * c}); got {x.dtype} {x.shape}")
    n[0] = xd[0]
    return cnp.PyArray_DATA(xa)


cdef bint _output_transform(pybnn_ot *ot, str who, int typenum, int cout, bint int_acc, mult, bias,
                            float lo, float hi, ibias, int zp, int qmin, int qmax, thr, dir) except -1:
    """Fill *ot for an output of dtype `typenum` with `cout` channels from the per-channel
    arrays (mult, bias float32; ibias, thr int32; dir int8: cout entries each).  int_acc:
    the accumulators are int32 (else float32: float output only).  Returns False for an
    int32 output, which is the accumulators themselves (int_acc only)."""
    cdef cnp.npy_intp dims[1]
    dims[0] = cout
    ot.mult, ot.bias, ot.ibias, ot.thr, ot.dir = NULL, NULL, NULL, NULL, NULL
    ot.lo, ot.hi, ot.zp, ot.qmin, ot.qmax = lo, hi, zp, qmin, qmax
    if typenum == cnp.NPY_INT32 and int_acc:
        if mult is not None or bias is not None or ibias is not None or thr is not None or dir is not None:
            raise ValueError(f"{who}: an int32 output (the accumulators) takes no transform arguments")
        return False
    if typenum == cnp.NPY_FLOAT32:
        if thr is not None or dir is not None:
            raise ValueError(f"{who}: thr and dir do not apply to a float32 output")
        ot.kind = PYBNN_OT_FLOAT_I32 if int_acc else PYBNN_OT_FLOAT_F32
        ot.mult = <const float *>_data(mult, cnp.NPY_FLOAT32, 1, dims, f"{who}: mult")
        ot.bias = <const float *>_data(bias, cnp.NPY_FLOAT32, 1, dims, f"{who}: bias")
        if ibias is not None:
            if not int_acc:
                raise ValueError(f"{who}: ibias applies to int32 accumulators only")
            ot.ibias = <const int32_t *>_data(ibias, cnp.NPY_INT32, 1, dims, f"{who}: ibias")
    elif typenum == cnp.NPY_INT8 and int_acc:
        if bias is not None or thr is not None or dir is not None:
            raise ValueError(f"{who}: an int8 output takes mult, ibias, zp, qmin, qmax only")
        ot.kind = PYBNN_OT_INT8
        ot.mult = <const float *>_data(mult, cnp.NPY_FLOAT32, 1, dims, f"{who}: mult")
        ot.ibias = <const int32_t *>_data(ibias, cnp.NPY_INT32, 1, dims, f"{who}: ibias")
        if not -128 <= zp <= 127:
            raise ValueError(f"{who}: zero point {zp} is outside [-128, 127]")
        if not -128 <= qmin <= qmax <= 127:
            raise ValueError(f"{who}: need -128 <= qmin <= qmax <= 127, got qmin={qmin}, qmax={qmax}")
    elif typenum == cnp.NPY_UINT32 and int_acc:
        if mult is not None or bias is not None or ibias is not None:
            raise ValueError(f"{who}: a bits (uint32) output takes thr and dir only")
        ot.kind = PYBNN_OT_BITS
        ot.thr = <const int32_t *>_data(thr, cnp.NPY_INT32, 1, dims, f"{who}: thr")
        ot.dir = <const int8_t *>_data(dir, cnp.NPY_INT8, 1, dims, f"{who}: dir")
    else:
        allowed = "int32, float32, int8 or uint32 (bits)" if int_acc else "float32"
        raise ValueError(f"{who}: out must be {allowed}; got {_TYPE_NAMES.get(typenum, typenum)}")
    return True
