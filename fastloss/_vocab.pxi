# Vocabulary objectives (csrc/vocab.c): token log-probabilities with the entropy, and
# distillation between a student's and a teacher's logits.  Included by _kernels.pyx;
# reuses the cross-entropy wrappers' helpers (_class_rows, _hard_target, _empty_like, ...).
#
# tlp_call and distill_call are the whole of a call below the public signatures: they
# check every argument (errors naming it), lay the arrays out as the kernels read them
# (rows with a contiguous last axis), allocate the outputs, run the kernel without the
# GIL and shape the results.

cdef extern from "vocab.h" nogil:
    ctypedef struct fastloss_vocab_options:
        fastloss_index n_rows
        fastloss_index n_classes
        fastloss_index ignore_index
        double temperature
        double beta
        int divergence
        int reduction
        int num_threads
        fastloss_index *bad_target
    enum:
        FASTLOSS_DIVERGENCE_FORWARD_KL
        FASTLOSS_DIVERGENCE_REVERSE_KL
        FASTLOSS_DIVERGENCE_JSD
        FASTLOSS_VOCAB_BATCHMEAN
    int fastloss_token_log_probs(
        int dtype, const fastloss_vocab_options *options, const void *logits,
        fastloss_index logits_row_stride, const int64_t *target, double *log_prob,
        double *entropy, const double *grad_log_prob, fastloss_index grad_log_prob_stride,
        const double *grad_entropy, fastloss_index grad_entropy_stride, void *grad,
        fastloss_index grad_row_stride)
    int fastloss_distill(
        int dtype, const fastloss_vocab_options *options, const void *student,
        fastloss_index student_row_stride, const void *teacher,
        fastloss_index teacher_row_stride, const int64_t *target, double *loss_per_row,
        double *loss, const double *grad_output, fastloss_index grad_output_stride,
        void *grad_student, fastloss_index grad_student_row_stride, void *grad_teacher,
        fastloss_index grad_teacher_row_stride)


DIVERGENCE_FORWARD_KL = FASTLOSS_DIVERGENCE_FORWARD_KL
DIVERGENCE_REVERSE_KL = FASTLOSS_DIVERGENCE_REVERSE_KL
DIVERGENCE_JSD = FASTLOSS_DIVERGENCE_JSD
DISTILL_REDUCTIONS = ("batchmean", "sum", "none")
DISTILL_INPUTS = ("student_logits", "teacher_logits")


cdef tuple _vocab_logits(object logits, str name, object bits=None):
    """``(array, dtype code, (rows, V) view or copy, batch shape)`` of a logits argument:
    float32, float64, float16 or ml_dtypes.bfloat16 (or, ``bits="bfloat16"``, a 16-bit
    integer array of bfloat16 bit patterns: the torch adapter's view of a tensor)."""
    cdef int code
    logits, code = _logits_input(logits, bits, name)
    cdef cnp.ndarray array = <cnp.ndarray>logits
    cdef int ndim = cnp.PyArray_NDIM(array)
    if ndim == 0:
        raise ValueError(f"{name}: expected at least 1 dimension (..., V), got a scalar")
    shape = (<object>array).shape
    if shape[ndim - 1] == 0:
        raise ValueError(f"{name}: expected at least one class, got shape {shape}")
    return array, code, _class_rows(array, shape[ndim - 1]), shape[:ndim - 1]


cdef object _vocab_values(object values, int code, object dtype):
    """Per-row float64 results (log-probabilities, entropies, divergences) in the dtype
    the public functions return: the logits', or float32 for half-precision logits (the
    rows are computed in float32; a half result would round them again)."""
    return values.astype(numpy.float32 if _is_half_code(code) else dtype, copy=False)


cdef tuple _vocab_grad_kind(object grad_dtype, int code, object logits_dtype):
    """``(kernel code, gradient dtype)`` of a gradient call: the logits' dtype, or
    float32 (``grad_dtype``) for half-precision logits."""
    cdef int kernel_code = _grad_code(grad_dtype, code, logits_dtype)
    if kernel_code == FASTLOSS_BFLOAT16_GRAD_FLOAT32 or kernel_code == FASTLOSS_FLOAT16_GRAD_FLOAT32:
        return kernel_code, numpy.dtype(numpy.float32)
    return kernel_code, logits_dtype


cdef double _temperature_arg(object temperature) except? -1.0:
    if type(temperature) is float and 0.0 < <double>temperature < INFINITY:
        return temperature
    return real_scalar(temperature, "temperature", low=0.0, low_open=True)


cdef object _row_values(object value, str name, tuple loss_shape):
    """A per-row upstream gradient as the float64 vector the kernel reads: one value
    (a scalar, broadcast by stride 0) or one per row."""
    upstream = real_grad_output(value, name)
    if upstream.ndim == 0:
        return upstream.reshape(1)
    if upstream.shape != loss_shape:
        raise ValueError(f"{name}: expected shape {loss_shape} (one value per row) or a "
                         f"scalar, got {upstream.shape}")
    return numpy.require(upstream.reshape(-1), requirements="CA")


cdef fastloss_index _stride_of(object vector, fastloss_index n_rows):
    return 1 if vector is not None and (<cnp.ndarray>vector).shape[0] == n_rows and n_rows != 1 else 0


cdef tuple _gradient_target(object out, cnp.ndarray matrix, tuple shape, object dtype,
                            fastloss_index n_classes, tuple inputs, str name):
    """``(result, rows the kernel writes, copy_back)`` for one gradient: a fresh array, or
    ``out`` itself when the kernel can write it as rows without overlapping an input,
    else a fresh buffer copied into ``out`` afterwards."""
    if out is None:
        result = empty(shape, dtype)
        return result, (<cnp.ndarray>result).reshape(-1, n_classes), False
    out_arg(out, shape, dtype, name)
    view = rows_view(out, n_classes, written=True)
    if view is not None:
        for other in inputs:
            if other is not None and _may_overlap(<cnp.ndarray>view, <cnp.ndarray>other):
                view = None
                break
    if view is None:
        return out, empty(((<cnp.ndarray>matrix).shape[0], n_classes), dtype), True
    return out, view, False


cdef fastloss_index _matrix_stride(object matrix):
    return cnp.PyArray_STRIDE(<cnp.ndarray>matrix, 0) // cnp.PyArray_ITEMSIZE(<cnp.ndarray>matrix)


def tlp_call(bint want_grad, object logits, object target, object temperature,
             object ignore_index, bint want_log_prob, bint want_entropy,
             object grad_output=None, object grad_entropy=None, object out=None,
             int num_threads=1, object grad_dtype=None, object bits=None):
    """One token_log_probs call: returns ``(log_prob, entropy, grad)``, each None where
    not asked; log_prob and entropy have the batch shape and the logits' dtype (float32
    for half logits).  ``grad_dtype``: the gradient's dtype (None: the logits'; float32
    for float16 / bfloat16 logits).  ``bits="bfloat16"``: the logits (and ``out``) are
    16-bit integer arrays of bfloat16 bit patterns, and so is the gradient."""
    cdef cnp.ndarray array, matrix
    cdef int code
    array, code, matrix, loss_shape = _vocab_logits(logits, "logits", bits)
    cdef int dtype = code
    grad_type = array.dtype
    if want_grad:
        dtype, grad_type = _vocab_grad_kind(grad_dtype, code, array.dtype)
    elif grad_dtype is not None:
        raise ValueError("grad_dtype: only the gradient functions take it")
    cdef fastloss_index n_classes = matrix.shape[1]
    cdef fastloss_index n_rows = matrix.shape[0]
    cdef fastloss_vocab_options options
    cdef fastloss_index bad_position = -1
    options.n_rows = n_rows
    options.n_classes = n_classes
    options.temperature = _temperature_arg(temperature)
    options.beta = 0.0
    options.divergence = 0
    options.reduction = FASTLOSS_REDUCTION_NONE
    if type(ignore_index) is not int:
        ignore_index = integer_scalar(ignore_index, "ignore_index")
    if ignore_index < -_INT64_MAX - 1 or ignore_index > _INT64_MAX:
        raise ValueError(f"ignore_index: expected a 64-bit integer, got {ignore_index}")
    options.ignore_index = ignore_index
    if num_threads < 1:
        raise ValueError(f"num_threads: expected an integer >= 1, got {num_threads}")
    options.num_threads = num_threads
    options.bad_target = &bad_position
    if not cnp.PyArray_CheckExact(target):
        target = as_array(target, "target")
    if (<cnp.ndarray>target).dtype.kind not in "iu":
        raise TypeError(f"target: expected integer class indices, got dtype "
                        f"{(<cnp.ndarray>target).dtype}")
    hard = _hard_target(<cnp.ndarray>target, loss_shape, n_classes, ignore_index)

    cdef object upstream = None, upstream_entropy = None
    cdef object grad = None, grad_rows = None
    cdef bint copy_back = False
    if want_grad:
        upstream = _row_values(grad_output, "grad_output", loss_shape)
        if grad_entropy is not None:
            upstream_entropy = _row_values(grad_entropy, "grad_entropy", loss_shape)
        grad, grad_rows, copy_back = _gradient_target(
            out, matrix, (<object>array).shape, grad_type, n_classes,
            (matrix, hard, upstream, upstream_entropy), "out")
    log_prob = cnp.PyArray_EMPTY(1, [n_rows], cnp.NPY_FLOAT64, 0) if want_log_prob else None
    entropy = cnp.PyArray_EMPTY(1, [n_rows], cnp.NPY_FLOAT64, 0) if want_entropy else None

    cdef const void *logits_ptr = cnp.PyArray_DATA(matrix)
    cdef fastloss_index logits_stride = _matrix_stride(matrix)
    cdef const int64_t *target_ptr = <const int64_t *>_data_or_null(hard)
    cdef double *log_prob_ptr = <double *>_data_or_null(log_prob)
    cdef double *entropy_ptr = <double *>_data_or_null(entropy)
    cdef const double *upstream_ptr = <const double *>_data_or_null(upstream)
    cdef const double *upstream_entropy_ptr = <const double *>_data_or_null(upstream_entropy)
    cdef fastloss_index upstream_stride = _stride_of(upstream, n_rows)
    cdef fastloss_index upstream_entropy_stride = _stride_of(upstream_entropy, n_rows)
    cdef void *grad_ptr = _data_or_null(grad_rows)
    cdef fastloss_index grad_stride = _matrix_stride(grad_rows) if grad_rows is not None else 0
    cdef int status
    with nogil:
        status = fastloss_token_log_probs(
            dtype, &options, logits_ptr, logits_stride, target_ptr, log_prob_ptr, entropy_ptr,
            upstream_ptr, upstream_stride, upstream_entropy_ptr, upstream_entropy_stride,
            grad_ptr, grad_stride)
    if status == FASTLOSS_ERROR_BAD_TARGET:
        raise target_out_of_range(hard[bad_position], bad_position,
                                  loss_shape, n_classes, ignore_index)
    _check_status(status, "token_log_probs")
    if copy_back:
        numpy.copyto(grad, (<cnp.ndarray>grad_rows).reshape((<object>array).shape))
    if log_prob is not None:
        log_prob = _vocab_values(log_prob.reshape(loss_shape), code, array.dtype)
    if entropy is not None:
        entropy = _vocab_values(entropy.reshape(loss_shape), code, array.dtype)
    return log_prob, entropy, grad


cdef tuple _wrt_names(object wrt):
    """``wrt`` as a tuple of input names (a single name, or a tuple/list of them)."""
    names = (wrt,) if isinstance(wrt, str) else wrt
    try:
        names = tuple(names)
    except TypeError:
        raise TypeError(f"wrt: expected 'student_logits', 'teacher_logits' or a tuple of "
                        f"them, got {wrt!r}") from None
    if not names:
        raise ValueError("wrt: expected at least one of 'student_logits', 'teacher_logits'")
    for name in names:
        if name not in DISTILL_INPUTS:
            raise ValueError(f"wrt: expected 'student_logits' and/or 'teacher_logits', "
                             f"got {name!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"wrt: each input at most once, got {wrt!r}")
    return names


def distill_call(bint want_grad, object student_logits, object teacher_logits,
                 int divergence, double beta, object temperature, object target,
                 object ignore_index, object reduction, object grad_output=None,
                 object wrt="student_logits", object out=None, int num_threads=1,
                 object grad_dtype=None, object bits=None):
    """One distillation call: returns ``(loss, grad)``; grad is None without want_grad,
    an array for a single name in ``wrt``, a tuple in wrt's order otherwise.  Half
    logits: the loss in float32, the gradients in their dtype or (``grad_dtype``)
    float32; ``bits`` as tlp_call's (both logits)."""
    cdef cnp.ndarray student_array, student, teacher_array, teacher
    cdef int code, teacher_code
    student_array, code, student, loss_shape = _vocab_logits(student_logits, "student_logits",
                                                             bits)
    teacher_array, teacher_code, teacher, _ = _vocab_logits(teacher_logits, "teacher_logits",
                                                            bits)
    shape = (<object>student_array).shape
    if (<object>teacher_array).shape != shape:
        raise ValueError(f"teacher_logits: expected the student's shape {shape}, got "
                         f"{(<object>teacher_array).shape}")
    if teacher_array.dtype != student_array.dtype:
        raise TypeError(f"teacher_logits: expected the student's dtype {student_array.dtype} "
                        f"(the two logits in one dtype: float32, float64, float16 or "
                        f"bfloat16), got {teacher_array.dtype}")
    cdef int dtype = code
    grad_type = student_array.dtype
    if want_grad:
        dtype, grad_type = _vocab_grad_kind(grad_dtype, code, student_array.dtype)
    elif grad_dtype is not None:
        raise ValueError("grad_dtype: only the gradient functions take it")
    cdef fastloss_index n_rows = student.shape[0], n_classes = student.shape[1]
    cdef fastloss_vocab_options options
    options.n_rows = n_rows
    options.n_classes = n_classes
    options.temperature = _temperature_arg(temperature)
    options.beta = beta
    options.divergence = divergence
    options.bad_target = NULL
    if type(reduction) is not str or reduction not in DISTILL_REDUCTIONS:
        raise ValueError(f"reduction: expected one of {DISTILL_REDUCTIONS}, got {reduction!r}"
                         + (" (the per-row divergences are averaged over the rows by "
                            "'batchmean'; torch's kl_div 'mean' would also divide by the "
                            "vocabulary size)" if reduction == "mean" else ""))
    options.reduction = (FASTLOSS_REDUCTION_NONE if reduction == "none" else
                         FASTLOSS_REDUCTION_SUM if reduction == "sum" else
                         FASTLOSS_VOCAB_BATCHMEAN)
    if type(ignore_index) is not int:
        ignore_index = integer_scalar(ignore_index, "ignore_index")
    if ignore_index < -_INT64_MAX - 1 or ignore_index > _INT64_MAX:
        raise ValueError(f"ignore_index: expected a 64-bit integer, got {ignore_index}")
    options.ignore_index = ignore_index
    if num_threads < 1:
        raise ValueError(f"num_threads: expected an integer >= 1, got {num_threads}")
    options.num_threads = num_threads
    hard = None
    if target is not None:
        if not cnp.PyArray_CheckExact(target):
            target = as_array(target, "target")
        if (<cnp.ndarray>target).dtype.kind not in "iu":
            raise TypeError(f"target: expected integer labels (only compared with "
                            f"ignore_index), got dtype {(<cnp.ndarray>target).dtype}")
        if (<object>target).shape != loss_shape:
            raise ValueError(f"target: expected labels of shape {loss_shape}, got "
                             f"{(<object>target).shape}")
        hard = _compared_labels(<cnp.ndarray>target, ignore_index)

    cdef object upstream = None, grads = None
    cdef list results = [None, None], rows = [None, None], copies = [False, False]
    cdef tuple names = ()
    if want_grad:
        names = _wrt_names(wrt)
        if reduction == "none":
            upstream = _row_values(grad_output, "grad_output", loss_shape)
        else:
            upstream = grad_output_arg(grad_output, reduction, loss_shape)
        outs = (out,) if len(names) == 1 and not isinstance(out, tuple) else out
        if outs is None:
            outs = (None,) * len(names)
        if not isinstance(outs, tuple) or len(outs) != len(names):
            raise ValueError(f"out: expected {len(names)} arrays (one per name in wrt), "
                             f"got {out!r:.80}")
        distinct_outs(outs, names)
        for name, given in zip(names, outs):
            slot = DISTILL_INPUTS.index(name)
            results[slot], rows[slot], copies[slot] = _gradient_target(
                given, student, shape, grad_type, n_classes,
                (student, teacher, hard, upstream,
                 *(rows[k] for k in range(2) if rows[k] is not None)), "out")
    per_row = (cnp.PyArray_EMPTY(1, [n_rows], cnp.NPY_FLOAT64, 0)
               if options.reduction == FASTLOSS_REDUCTION_NONE else None)

    cdef const void *student_ptr = cnp.PyArray_DATA(student)
    cdef const void *teacher_ptr = cnp.PyArray_DATA(teacher)
    cdef fastloss_index student_stride = _matrix_stride(student)
    cdef fastloss_index teacher_stride = _matrix_stride(teacher)
    cdef const int64_t *target_ptr = <const int64_t *>_data_or_null(hard)
    cdef double *per_row_ptr = <double *>_data_or_null(per_row)
    cdef const double *upstream_ptr = <const double *>_data_or_null(upstream)
    cdef fastloss_index upstream_stride = _stride_of(upstream, n_rows)
    cdef void *grad_student_ptr = _data_or_null(rows[0])
    cdef void *grad_teacher_ptr = _data_or_null(rows[1])
    cdef fastloss_index grad_student_stride = _matrix_stride(rows[0]) if rows[0] is not None else 0
    cdef fastloss_index grad_teacher_stride = _matrix_stride(rows[1]) if rows[1] is not None else 0
    cdef double total = 0.0
    cdef int status
    with nogil:
        status = fastloss_distill(
            dtype, &options, student_ptr, student_stride, teacher_ptr, teacher_stride,
            target_ptr, per_row_ptr, &total, upstream_ptr, upstream_stride, grad_student_ptr,
            grad_student_stride, grad_teacher_ptr, grad_teacher_stride)
    _check_status(status, "distillation")
    for slot in range(2):
        if copies[slot]:
            numpy.copyto(results[slot], (<cnp.ndarray>rows[slot]).reshape(shape))
    if per_row is not None:
        loss = _vocab_values(per_row.reshape(loss_shape), code, student_array.dtype)
    elif code != FASTLOSS_FLOAT64:
        loss = <double><float>total
    else:
        loss = total
    if want_grad:
        picked = tuple(results[DISTILL_INPUTS.index(name)] for name in names)
        grads = picked[0] if isinstance(wrt, str) else picked
    return loss, grads
