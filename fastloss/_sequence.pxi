# Per-sequence sums of token log-probabilities (csrc/sequence.h), included by _kernels.pyx.

cdef extern from "sequence.h" nogil:
    ctypedef struct fastloss_sequence_options:
        fastloss_index n_rows
        fastloss_index n_tokens
        fastloss_index row_stride
        int average
        int mask_is_bytes
        int num_threads
    int fastloss_sequence_log_probs(
        int dtype, const fastloss_sequence_options *options, const void *token_log_probs,
        const void *mask, double *sums, const double *grad_output,
        fastloss_index grad_output_stride, void *grad)


def sequence_run(cnp.ndarray token_log_probs not None, cnp.ndarray mask not None,
                 object sums, object grad_output, object grad, bint average,
                 int num_threads, bint grad_float32=False):
    """Run the sequence log-probability kernel.

    token_log_probs, mask: C-contiguous (n_rows, n_tokens) arrays: token_log_probs
    float32, float64, float16 or bfloat16, the mask of its dtype (float32 for half
    token_log_probs) or bool (read as bytes).  sums: None, or a writeable contiguous float64 array of n_rows (the rows'
    sums, or averages).  grad: None, or a writeable C-contiguous array like
    token_log_probs for the gradient w.r.t. the token log-probabilities; it may be
    token_log_probs itself and overlaps nothing else.  grad_output: float64,
    contiguous, (n_rows,) or (1,) (every row's), needed with grad.  grad_float32: the
    gradient is float32 beside half token_log_probs (grad_dtype="float32"; then grad
    overlaps nothing, token_log_probs included).
    """
    cdef int dtype = _dtype_code(token_log_probs, "token_log_probs")
    cdef int typenum = cnp.PyArray_TYPE(token_log_probs)
    cdef int grad_typenum = typenum
    if grad_float32:
        if not _is_half_code(dtype):
            raise ValueError("grad_float32: only for float16 / bfloat16 token_log_probs")
        grad_typenum = cnp.NPY_FLOAT32
    # the mask's dtype: token_log_probs', or float32 beside half values (storage.h's AUX)
    cdef int mask_typenum = cnp.NPY_FLOAT32 if _is_half_code(dtype) else typenum
    if num_threads < 1:
        raise ValueError("num_threads: expected an integer >= 1")
    if cnp.PyArray_NDIM(token_log_probs) != 2:
        raise ValueError(f"token_log_probs: expected 2 dimensions, got shape "
                         f"{(<object>token_log_probs).shape}")
    cdef fastloss_index n_rows = token_log_probs.shape[0]
    cdef fastloss_index n_tokens = token_log_probs.shape[1]
    cdef bint mask_is_bytes = cnp.PyArray_TYPE(mask) == cnp.NPY_BOOL
    for array, name in ((token_log_probs, "token_log_probs"), (mask, "mask"), (grad, "grad")):
        if array is None:
            continue
        if array is mask and mask_is_bytes:
            if not cnp.PyArray_ISALIGNED(mask):
                raise ValueError("mask: expected an aligned array")
        else:
            _check_float(array, mask_typenum if array is mask else
                         grad_typenum if array is grad else typenum, name)
        if array.shape != (<object>token_log_probs).shape:
            raise ValueError(f"{name}: expected shape {(<object>token_log_probs).shape}, "
                             f"got {array.shape}")
        if not cnp.PyArray_IS_C_CONTIGUOUS(array):
            raise ValueError(f"{name}: expected a C-contiguous array")
    cdef fastloss_index grad_output_stride = 0
    if sums is not None:
        _check_vector(sums, cnp.NPY_FLOAT64, n_rows, "sums", True)
        for other in (token_log_probs, mask, grad_output, grad):
            if other is not None and n_rows and _may_overlap(sums, other):
                raise ValueError("sums: overlaps another argument")
    if grad is not None:
        if not cnp.PyArray_ISWRITEABLE(grad):
            raise ValueError("grad: array is read-only")
        if grad_output is None:
            raise ValueError("grad_output: needed for a gradient")
        if grad_output.shape[0] == n_rows and n_rows != 1:
            _check_vector(grad_output, cnp.NPY_FLOAT64, n_rows, "grad_output")
            grad_output_stride = 1
        else:
            _check_vector(grad_output, cnp.NPY_FLOAT64, 1, "grad_output")
        if n_rows and n_tokens:
            for other in (mask, grad_output):
                if _may_overlap(grad, other):
                    raise ValueError("grad: overlaps an input (only token_log_probs itself, "
                                     "in place, is allowed)")
            if _may_overlap(grad, token_log_probs) and (grad_float32 or not (
                    cnp.PyArray_DATA(grad) == cnp.PyArray_DATA(token_log_probs))):
                raise ValueError("grad: overlaps token_log_probs other than exactly in place")
    elif sums is None:
        raise ValueError("sums or grad: nothing to compute")

    cdef int code = _grad_float32_code(dtype) if grad_float32 else dtype
    cdef fastloss_sequence_options options
    options.n_rows = n_rows
    options.n_tokens = n_tokens
    options.row_stride = n_tokens
    options.average = average
    options.mask_is_bytes = mask_is_bytes
    options.num_threads = num_threads
    cdef const void *x_ptr = cnp.PyArray_DATA(token_log_probs)
    cdef const void *mask_ptr = cnp.PyArray_DATA(mask)
    cdef double *sums_ptr = <double *>_data_or_null(sums)
    cdef const double *grad_output_ptr = <const double *>_data_or_null(grad_output)
    cdef void *grad_ptr = _data_or_null(grad)
    cdef int status
    with nogil:
        status = fastloss_sequence_log_probs(code, &options, x_ptr, mask_ptr, sums_ptr,
                                             grad_output_ptr, grad_output_stride, grad_ptr)
    _check_status(status, "sequence_log_probs")
