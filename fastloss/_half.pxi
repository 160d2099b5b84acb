# The half-precision conversions over arrays (csrc/half_convert.h), included by
# _kernels.pyx: what the kernels' LOAD and STORE do on the running SIMD path, for tests.

cdef extern from "half_convert.h" nogil:
    int fastloss_half_load(int dtype, const uint16_t *src, float *dst, fastloss_index n)
    int fastloss_half_store(int dtype, const float *src, uint16_t *dst, fastloss_index n)
    int fastloss_half_store_wide(int dtype, const double *src, uint16_t *dst,
                                 fastloss_index n)
    int fastloss_half_exp(const float *src, float *dst, fastloss_index n, int nonpositive)
    int fastloss_fast_exp(const float *src, float *dst, fastloss_index n, int nonpositive)
    int fastloss_fast_exp_double(const double *src, double *dst, fastloss_index n,
                                 int nonpositive)
    int fastloss_column_sums(int dtype, const void *x, fastloss_index rows,
                             fastloss_index cols, fastloss_index row_stride, double *acc,
                             int num_threads)


cdef int _half_kind_code(str kind) except -1:
    if kind == "bfloat16":
        return FASTLOSS_BFLOAT16
    if kind == "float16":
        return FASTLOSS_FLOAT16
    raise ValueError(f"kind: expected 'bfloat16' or 'float16', got {kind!r}")


def half_load(str kind, cnp.ndarray bits not None):
    """float32 values of the half bit patterns `bits` (uint16, contiguous, 1-D) of
    `kind` ("bfloat16" or "float16"), converted as the kernels load them."""
    cdef int code = _half_kind_code(kind)
    _check_float(bits, cnp.NPY_UINT16, "bits")
    if bits.ndim != 1 or not cnp.PyArray_IS_C_CONTIGUOUS(bits):
        raise ValueError("bits: expected a contiguous 1-D array")
    cdef cnp.ndarray out = numpy.empty(bits.shape[0], dtype=numpy.float32)
    cdef fastloss_index n = bits.shape[0]
    with nogil:
        fastloss_half_load(code, <const uint16_t *>cnp.PyArray_DATA(bits),
                           <float *>cnp.PyArray_DATA(out), n)
    return out


def half_store(str kind, cnp.ndarray values not None):
    """Half bit patterns (uint16) of `kind` of `values` (float32, or float64 rounded
    once as STORE_WIDE does; contiguous, 1-D), converted as the kernels store them."""
    cdef int code = _half_kind_code(kind)
    if values.ndim != 1 or not cnp.PyArray_IS_C_CONTIGUOUS(values):
        raise ValueError("values: expected a contiguous 1-D array")
    cdef cnp.ndarray out = numpy.empty(values.shape[0], dtype=numpy.uint16)
    cdef fastloss_index n = values.shape[0]
    cdef int wide = cnp.PyArray_TYPE(values) == cnp.NPY_FLOAT64
    if not wide:
        _check_float(values, cnp.NPY_FLOAT32, "values")
    else:
        _check_float(values, cnp.NPY_FLOAT64, "values")
    with nogil:
        if wide:
            fastloss_half_store_wide(code, <const double *>cnp.PyArray_DATA(values),
                                     <uint16_t *>cnp.PyArray_DATA(out), n)
        else:
            fastloss_half_store(code, <const float *>cnp.PyArray_DATA(values),
                                <uint16_t *>cnp.PyArray_DATA(out), n)
    return out


def half_exp(cnp.ndarray values not None, bint nonpositive=True):
    """exp of `values` (float32, contiguous, 1-D) by the half-precision cross-entropy
    rows' exp (csrc/fastmath.h: fastloss_expf5_nonpositive, or fastloss_expf5 for
    ``nonpositive=False``) on the running SIMD path, for tests of its error bound."""
    _check_float(values, cnp.NPY_FLOAT32, "values")
    if values.ndim != 1 or not cnp.PyArray_IS_C_CONTIGUOUS(values):
        raise ValueError("values: expected a contiguous 1-D array")
    cdef cnp.ndarray out = numpy.empty(values.shape[0], dtype=numpy.float32)
    cdef fastloss_index n = values.shape[0]
    cdef int flag = 1 if nonpositive else 0
    with nogil:
        fastloss_half_exp(<const float *>cnp.PyArray_DATA(values),
                          <float *>cnp.PyArray_DATA(out), n, flag)
    return out


def fast_exp(cnp.ndarray values not None, bint nonpositive=True):
    """exp of `values` (float32 or float64, contiguous, 1-D) by the float32 or float64
    rows' exp (csrc/fastmath.h: fastloss_expf_nonpositive / fastloss_expf, or
    fastloss_exp_nonpositive / fastloss_exp for ``nonpositive=False``) on the running
    SIMD path, for tests of their range and error bound."""
    cdef int code = cnp.PyArray_TYPE(values)
    if code != cnp.NPY_FLOAT32 and code != cnp.NPY_FLOAT64:
        raise TypeError(f"values: expected a float32 or float64 array, got {values.dtype}")
    if values.ndim != 1 or not cnp.PyArray_IS_C_CONTIGUOUS(values):
        raise ValueError("values: expected a contiguous 1-D array")
    cdef cnp.ndarray out = numpy.empty(values.shape[0], dtype=values.dtype)
    cdef fastloss_index n = values.shape[0]
    cdef int flag = 1 if nonpositive else 0
    with nogil:
        if code == cnp.NPY_FLOAT32:
            fastloss_fast_exp(<const float *>cnp.PyArray_DATA(values),
                              <float *>cnp.PyArray_DATA(out), n, flag)
        else:
            fastloss_fast_exp_double(<const double *>cnp.PyArray_DATA(values),
                                     <double *>cnp.PyArray_DATA(out), n, flag)
    return out
