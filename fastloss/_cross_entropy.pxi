# Cross-entropy wrappers, included by _kernels.pyx.
#
# ce_call is the whole of a cross-entropy call below the public signature: it checks
# every argument (clear errors naming it, in the Python API's words), lays the arrays
# out as the kernels read them, allocates the outputs, runs the kernel without the GIL
# and shapes the results.  Written here rather than in Python because at small shapes
# the checks are the call: a dozen Python-level steps took 4-6 us where the kernel
# needs under one.  The class indices are scanned once, by the kernel (which counts
# the rows of the mean in the same loop), not first by a separate check.

cdef extern from "cross_entropy.h" nogil:
    ctypedef struct fastloss_ce_options:
        fastloss_index n_rows
        fastloss_index n_classes
        fastloss_index ignore_index
        double label_smoothing
        double z_loss
        double softcap
        int reduction
        int num_threads
        fastloss_index *bad_target
        fastloss_index class_offset
        fastloss_index total_classes
    enum:
        FASTLOSS_CE_STAT_MAX
        FASTLOSS_CE_STAT_SUM
        FASTLOSS_CE_STAT_TARGET_COUNT
        FASTLOSS_CE_STAT_CLASSES
        FASTLOSS_CE_STATS_FIELDS
    int fastloss_cross_entropy_block_stats(
        int dtype, const fastloss_ce_options *options, const void *logits,
        fastloss_index logits_row_stride, const int64_t *target, const void *soft_target,
        fastloss_index soft_target_row_stride, const void *weight, double *stats)
    int fastloss_cross_entropy_grad_from_stats(
        int dtype, const fastloss_ce_options *options, const void *logits,
        fastloss_index logits_row_stride, const int64_t *target, const void *soft_target,
        fastloss_index soft_target_row_stride, const void *weight, const double *stats,
        const double *grad_output, fastloss_index grad_output_stride, void *grad,
        fastloss_index grad_row_stride)
    void fastloss_cross_entropy_rebase_stats(fastloss_index n_rows, double *stats,
                                             const double *new_max)
    void fastloss_cross_entropy_merge_stats(fastloss_index n_rows, fastloss_index n_blocks,
                                            const double *const *blocks, double *merged)
    int fastloss_cross_entropy_from_stats(const fastloss_ce_options *options,
                                          const double *stats, const int64_t *target,
                                          double *loss_per_row, double *lse, double *loss)
    int fastloss_cross_entropy_forward(
        int dtype, const fastloss_ce_options *options, const void *logits,
        fastloss_index logits_row_stride, const int64_t *target, const void *soft_target,
        fastloss_index soft_target_row_stride, const void *weight, double *loss_per_row,
        double *lse, double *loss)
    int fastloss_cross_entropy_backward(
        int dtype, const fastloss_ce_options *options, const void *logits,
        fastloss_index logits_row_stride, const int64_t *target, const void *soft_target,
        fastloss_index soft_target_row_stride, const void *weight, const double *lse,
        const double *grad_output, fastloss_index grad_output_stride, void *grad,
        fastloss_index grad_row_stride)
    int fastloss_cross_entropy_value_and_grad(
        int dtype, const fastloss_ce_options *options, const void *logits,
        fastloss_index logits_row_stride, const int64_t *target, const void *soft_target,
        fastloss_index soft_target_row_stride, const void *weight, const double *grad_output,
        fastloss_index grad_output_stride, double *loss_per_row, double *lse, double *loss,
        void *grad, fastloss_index grad_row_stride)


# ce_call's modes
CE_FORWARD = 0
CE_GRAD = 1            # the gradient (from lse= when given, else the fused pass)
CE_VALUE_AND_GRAD = 2

_INT64_MAX = 2**63 - 1
# the most classes a statistics record may count: every count below it is exact in float64
_MAX_CLASSES = 2**53


cdef inline void *_data_or_null(object array):
    return NULL if array is None else cnp.PyArray_DATA(<cnp.ndarray>array)


cdef inline bint _is_float_array(object value):
    """A plain float32/float64 (or float16/bfloat16) ndarray the kernels can read as it is
    (aligned, native order); a subclass (a masked array) goes through float_array."""
    if not cnp.PyArray_CheckExact(value):
        return False
    return (_storage_code(cnp.PyArray_TYPE(<cnp.ndarray>value)) >= 0
            and cnp.PyArray_ISALIGNED(<cnp.ndarray>value)
            and not cnp.PyArray_ISBYTESWAPPED(<cnp.ndarray>value))


cdef bint _float_kind(object dtype):
    """Whether `dtype` holds probabilities the kernels take: a float, or bfloat16."""
    return dtype.kind == "f" or _is_bfloat16(dtype)


cdef tuple _logits_input(object logits, object bits, str name):
    """The logits as the ndarray the kernels read, and their dtype code.  ``bits``
    "bfloat16": `logits` is a 16-bit integer array holding bfloat16 bit patterns (the
    torch adapter's zero-copy view of a torch.bfloat16 tensor; no ml_dtypes needed)."""
    if bits is not None:
        if bits != "bfloat16":
            raise ValueError(f"bits: expected None or 'bfloat16', got {bits!r}")
        if (not cnp.PyArray_Check(logits) or logits.dtype.kind not in "iu"
                or logits.dtype.itemsize != 2 or not logits.dtype.isnative
                or not logits.flags.aligned):
            raise TypeError(f"{name}: bits='bfloat16' takes an aligned array of 16-bit "
                            f"integers, got {getattr(logits, 'dtype', type(logits))}")
        return logits, FASTLOSS_BFLOAT16
    if not _is_float_array(logits):
        logits = float_array(logits, name, half=True)
    return logits, _dtype_code(<cnp.ndarray>logits, name)


cdef int _grad_code(object grad_dtype, int code, object logits_dtype) except -1:
    """The dtype code of the kernel for a gradient of ``grad_dtype``: None (the logits'
    dtype), the logits' dtype, or float32 for half-precision logits (grad_dtype_arg
    checks the argument; with bits="bfloat16" the logits' dtype is their 16-bit integers,
    so the half-ness comes from ``code``)."""
    wanted = grad_dtype_arg(grad_dtype, logits_dtype, "the logits'", "logits",
                            half=_is_half_code(code))
    return code if wanted == logits_dtype else _grad_float32_code(code)


cdef inline cnp.ndarray _class_rows(cnp.ndarray array, fastloss_index n_classes):
    """A 2-d (rows, C) view of `array` whose last axis is contiguous, or a copy."""
    if (cnp.PyArray_NDIM(array) == 2
            and (n_classes == 1 or cnp.PyArray_STRIDE(array, 1) == cnp.PyArray_ITEMSIZE(array))):
        return array  # already rows (the usual case: no reshape to pay for)
    cdef cnp.ndarray matrix = array.reshape(-1, n_classes)
    if n_classes > 1 and matrix.strides[1] != cnp.PyArray_ITEMSIZE(matrix):
        matrix = numpy.ascontiguousarray(matrix)
    return matrix


cdef inline double _unit_real(object value, str name) except? -1.0:
    """label_smoothing: a finite value in [0, 1]."""
    if type(value) is float and 0.0 <= <double>value <= 1.0:
        return value
    return real_scalar(value, name, low=0.0, high=1.0)


cdef inline double _nonnegative_real(object value, str name) except? -1.0:
    """z_loss: a finite value >= 0."""
    if type(value) is float and 0.0 <= <double>value < INFINITY:
        return value
    return real_scalar(value, name, low=0.0)


cdef inline int _reduction_code(object reduction) except -1:
    if type(reduction) is not str:  # (an array's == would be elementwise)
        reduction_arg(reduction)
    if reduction == "mean":
        return FASTLOSS_REDUCTION_MEAN
    if reduction == "sum":
        return FASTLOSS_REDUCTION_SUM
    if reduction == "none":
        return FASTLOSS_REDUCTION_NONE
    reduction_arg(reduction)  # raises the error naming the argument
    return -1


cdef object _hard_target(cnp.ndarray target, tuple loss_shape, fastloss_index n_classes,
                         object ignore_index):
    """Class indices as the contiguous int64 vector the kernel reads."""
    if (cnp.PyArray_NDIM(target) == 1 and len(loss_shape) == 1
            and cnp.PyArray_DIM(target, 0) == <cnp.npy_intp>loss_shape[0]
            and cnp.PyArray_TYPE(target) == cnp.NPY_INT64
            and cnp.PyArray_IS_C_CONTIGUOUS(target) and cnp.PyArray_ISALIGNED(target)
            and not cnp.PyArray_ISBYTESWAPPED(target)):
        return target  # the usual case, as it is
    if (<object>target).shape != loss_shape:
        raise ValueError(f"target: expected class indices of shape {loss_shape}, "
                         f"got {(<object>target).shape}")
    cdef cnp.ndarray flat = target.reshape(-1)
    if (cnp.PyArray_TYPE(flat) == cnp.NPY_INT64 and cnp.PyArray_IS_C_CONTIGUOUS(flat)
            and cnp.PyArray_ISALIGNED(flat) and not cnp.PyArray_ISBYTESWAPPED(flat)):
        return flat
    if target.dtype.kind == "u" and target.dtype.itemsize == 8 and flat.size:
        # values above 2**63 - 1 would wrap when cast to int64
        too_big = numpy.flatnonzero(flat > _INT64_MAX)
        if too_big.size:
            raise target_out_of_range(flat[too_big[0]], too_big[0],
                                      loss_shape, n_classes, ignore_index)
    # contiguous, aligned, native order (ascontiguousarray alone keeps a misaligned array)
    return numpy.require(flat, dtype=numpy.int64, requirements="CA")


cdef object _compared_labels(cnp.ndarray target, object ignore_index):
    """Integer labels that are only compared with ``ignore_index`` (an int64) as the
    contiguous int64 vector the kernels read.  A uint64 label above 2**63 - 1 equals no
    int64, yet the cast would wrap it to a negative number (ignore_index itself, for
    2**64 - 100): it becomes another value that is not ignore_index, as it compares."""
    cdef cnp.ndarray flat = target.reshape(-1)
    if flat.dtype.kind == "u" and flat.dtype.itemsize == 8 and flat.size:
        too_big = flat > _INT64_MAX
        if numpy.any(too_big):
            labels = flat.astype(numpy.int64)  # a copy: the caller's array stays as it is
            labels[too_big] = 1 if ignore_index == 0 else 0
            return labels
    return numpy.require(flat, dtype=numpy.int64, requirements="CA")


cdef object _grad_output_vector(object grad_output, int reduction, tuple loss_shape):
    """grad_output as the float64 vector the kernels read: one value per row for
    reduction "none" (a scalar is broadcast), else a single value."""
    cdef cnp.ndarray upstream
    if type(grad_output) is float or (type(grad_output) is int
                                      and -2**63 <= grad_output < 2**63):
        # (an int beyond int64's range is grad_output_arg's: 10**400 has no double)
        upstream = cnp.PyArray_EMPTY(1, [1], cnp.NPY_FLOAT64, 0)
        (<double *>cnp.PyArray_DATA(upstream))[0] = <double>grad_output
        return upstream
    return grad_output_arg(grad_output,
                           ("none", "sum", "mean")[reduction], loss_shape)


def ce_call(int mode, object logits, object target, object weight, object ignore_index,
            object reduction, object label_smoothing, object z_loss, object softcap,
            int num_threads, object grad_output=None, object lse=None, object out=None,
            bint want_lse=False, object class_offset=0, object stats=None,
            object grad_dtype=None, object bits=None):
    """One cross-entropy call, from the public API's arguments to its results.

    mode: CE_FORWARD, CE_GRAD (from ``lse`` when given, else the fused pass; the loss
    is not computed then) or CE_VALUE_AND_GRAD.  Returns ``(loss, lse, grad)``: the loss
    as the public functions return it (a Python float, or an array of the batch shape
    for "none"), the float64 per-row log-sum-exp when ``want_lse``, and the gradient
    (``out`` when given) for the gradient modes; None where not asked.  ``stats`` (the
    merged block statistics; CE_GRAD only) makes the logits the block of classes from
    ``class_offset`` and the result that block of the gradient.  ``grad_dtype``: the
    gradient's dtype (None: the logits'; float32 for float16 / bfloat16 logits).
    ``bits="bfloat16"``: the logits (and ``out``) are 16-bit integer arrays holding
    bfloat16 values, and so is the gradient returned.
    """
    if mode < CE_FORWARD or mode > CE_VALUE_AND_GRAD:
        raise ValueError(f"mode: unknown {mode!r}")
    # -- logits
    cdef int code
    logits, code = _logits_input(logits, bits, "logits")
    cdef cnp.ndarray logits_array = <cnp.ndarray>logits
    cdef int ndim = cnp.PyArray_NDIM(logits_array)
    if ndim == 0:
        raise ValueError("logits: expected at least 1 dimension (..., C), got a scalar")
    shape = (<object>logits_array).shape
    cdef fastloss_index n_classes = shape[ndim - 1]
    if n_classes == 0:
        raise ValueError(f"logits: expected at least one class, got shape {shape}")
    loss_shape = shape[:ndim - 1]
    logits_dtype = logits_array.dtype
    cdef bint half = _is_half_code(code)
    cdef int kernel_code = code
    if mode != CE_FORWARD:
        kernel_code = _grad_code(grad_dtype, code, logits_dtype)
    elif grad_dtype is not None:
        raise ValueError("grad_dtype: only the gradient functions take it")

    # -- options
    cdef fastloss_ce_options options
    cdef fastloss_index bad_position = -1
    options.reduction = _reduction_code(reduction)
    if type(ignore_index) is not int:
        ignore_index = integer_scalar(ignore_index, "ignore_index")
    options.label_smoothing = _unit_real(label_smoothing, "label_smoothing")
    options.z_loss = _nonnegative_real(z_loss, "z_loss")
    options.softcap = 0.0
    if softcap is not None:
        options.softcap = real_scalar(softcap, "softcap", low=0.0, low_open=True)
    if num_threads < 1:
        raise ValueError(f"num_threads: expected an integer >= 1, got {num_threads}")
    options.num_threads = num_threads
    options.n_classes = n_classes
    options.bad_target = &bad_position
    options.class_offset = 0
    options.total_classes = 0

    # -- a block of classes, with the merged statistics of the whole rows
    if type(class_offset) is not int:
        class_offset = integer_scalar(class_offset, "class_offset")
    if class_offset < 0:
        raise ValueError(f"class_offset: expected an integer >= 0, got {class_offset}")
    cdef object stats_in = None
    cdef fastloss_index total_classes = n_classes
    if stats is not None:
        if mode != CE_GRAD:
            raise ValueError("stats: only the gradient of a block takes the statistics")
        if lse is not None:
            raise ValueError("lse: does not combine with stats= (the statistics hold the lse)")
        stats_in = _stats_matrix(stats, "stats", loss_shape)
        total_classes = _stats_classes(stats_in, class_offset, n_classes)
        options.class_offset = class_offset
        options.total_classes = total_classes
    elif class_offset != 0:
        raise ValueError(f"class_offset: a block's gradient needs stats= (the merged "
                         f"statistics of the whole rows), got class_offset={class_offset} "
                         f"without them")

    # -- target: class indices, or probabilities (which may promote the computation)
    if not cnp.PyArray_CheckExact(target):
        target = as_array(target, "target")
    cdef cnp.ndarray target_array = <cnp.ndarray>target
    cdef object hard = None, soft = None
    kind = target_array.dtype.kind
    compute_dtype = logits_dtype
    # the class weights and probabilities of half-precision logits are read as float32
    aux_dtype = numpy.dtype(numpy.float32) if half else logits_dtype
    if kind == "i" or kind == "u":
        if ignore_index < -_INT64_MAX - 1 or ignore_index > _INT64_MAX:
            raise ValueError(f"ignore_index: expected a 64-bit integer, got {ignore_index}")
        hard = _hard_target(target_array, loss_shape, total_classes, ignore_index)
        options.ignore_index = ignore_index
    elif _float_kind(target_array.dtype):
        if (<object>target_array).shape != shape:
            if stats_in is not None:
                raise ValueError(f"target: expected the block's probabilities of shape "
                                 f"{shape} (like logits) or class indices of shape "
                                 f"{loss_shape}, got {(<object>target_array).shape}")
            raise ValueError(f"target: expected probabilities of shape {shape} (like logits) "
                             f"or class indices of shape {loss_shape}, "
                             f"got {(<object>target_array).shape}")
        if ignore_index >= 0:
            raise ValueError("ignore_index: not supported with probability targets "
                             f"(got {ignore_index})")
        options.ignore_index = -1
        if target_array.dtype.itemsize > max(logits_dtype.itemsize, aux_dtype.itemsize):
            # torch promotes: float64 probabilities with float32 logits are not rounded;
            # the logits are widened instead (exactly) and the loss is float64 (float32
            # or half probabilities with half logits are read as float32: no widening)
            if bits is not None:
                raise TypeError("target: float64 probabilities with bits='bfloat16' "
                                "logits (widen the logits first)")
            compute_dtype = aux_dtype = numpy.dtype(numpy.float64)
            kernel_code = FASTLOSS_FLOAT64
            half = False
        # aligned and in native order, as the kernels read it (np.require copies otherwise)
        soft = _class_rows(numpy.require(target_array, dtype=aux_dtype,
                                         requirements="A"), n_classes)
    else:
        raise TypeError(f"target: expected integer class indices or float probabilities, "
                        f"got dtype {target_array.dtype}")
    cdef bint widened = compute_dtype != logits_dtype
    cdef cnp.ndarray matrix = _class_rows(
        logits_array.astype(compute_dtype) if widened else logits_array, n_classes)
    cdef fastloss_index n_rows = matrix.shape[0]
    options.n_rows = n_rows

    # -- weight
    if weight is not None:
        weight = as_array(weight, "weight")
        if weight.dtype.kind not in "fiu" and not _is_bfloat16(weight.dtype):
            raise TypeError(f"weight: expected real numbers, got dtype {weight.dtype}")
        if weight.shape != (n_classes,):
            raise ValueError(f"weight: expected shape ({n_classes},)"
                             f"{' (the block of classes)' if stats_in is not None else ''}, "
                             f"got {weight.shape}")
        weight = numpy.require(weight, dtype=aux_dtype, requirements="CA")
    if stats_in is not None:
        _check_stats_targets(stats_in, hard, ignore_index, loss_shape)

    # -- gradient arguments
    cdef object upstream = None, lse_in = None
    cdef fastloss_index grad_output_stride = 0
    if mode != CE_FORWARD:
        upstream = _grad_output_vector(grad_output, options.reduction, loss_shape)
        if (<cnp.ndarray>upstream).shape[0] == n_rows and n_rows != 1:
            grad_output_stride = 1
    cdef bint backward = mode == CE_GRAD and lse is not None
    if backward:
        lse_in = as_array(lse, "lse")
        if lse_in.dtype.kind not in "fiu":
            raise TypeError(f"lse: expected real numbers (cross_entropy's return_lse), got "
                            f"{lse!r:.80}")
        lse_in = lse_in.astype(numpy.float64, copy=False)
        if lse_in.shape != loss_shape:
            raise ValueError(f"lse: expected shape {loss_shape}, got {lse_in.shape}")
        lse_in = numpy.require(lse_in.reshape(-1), requirements="CA")

    # -- outputs
    cdef object per_row = None, lse_out = None, grad = None, grad_matrix = None
    cdef bint copy_back = False
    if options.reduction == FASTLOSS_REDUCTION_NONE and mode != CE_GRAD:
        per_row = cnp.PyArray_EMPTY(1, [n_rows], cnp.NPY_FLOAT64, 0)
    if want_lse:
        lse_out = cnp.PyArray_EMPTY(1, [n_rows], cnp.NPY_FLOAT64, 0)
    # the gradient's dtype: the logits', or float32 (grad_dtype) for half logits
    cdef bint grad32 = (kernel_code == FASTLOSS_BFLOAT16_GRAD_FLOAT32
                        or kernel_code == FASTLOSS_FLOAT16_GRAD_FLOAT32)
    result_dtype = numpy.dtype(numpy.float32) if grad32 else logits_dtype
    if widened and grad_dtype is not None:
        result_dtype = numpy.dtype(grad_dtype)
    if mode != CE_FORWARD:
        if out is None:
            grad = (_empty_like(logits_array) if result_dtype == logits_dtype
                    else empty(shape, result_dtype))
            if not widened:
                grad_matrix = grad if ndim == 2 else (<cnp.ndarray>grad).reshape(-1, n_classes)
        else:
            out_arg(out, shape, result_dtype)
            grad = out
            grad_matrix = None if widened else _out_rows(
                out, matrix, n_classes, (hard, soft, weight, upstream, lse_in, stats_in))
        if grad_matrix is None:
            # out= has a layout the kernel cannot write, overlaps an input in a way other
            # than exactly in place, or the computation is wider than the logits:
            # compute into a fresh buffer, then copy (and round) into the result.
            grad_matrix = empty((n_rows, n_classes),
                                compute_dtype if widened else result_dtype)
            copy_back = True

    # -- run
    cdef fastloss_index logits_stride = cnp.PyArray_STRIDE(matrix, 0) // cnp.PyArray_ITEMSIZE(matrix)
    cdef fastloss_index soft_stride = 0
    if soft is not None:
        soft_stride = cnp.PyArray_STRIDE(<cnp.ndarray>soft, 0) // cnp.PyArray_ITEMSIZE(<cnp.ndarray>soft)
    cdef fastloss_index grad_stride = 0
    if grad_matrix is not None:
        grad_stride = (cnp.PyArray_STRIDE(<cnp.ndarray>grad_matrix, 0)
                       // cnp.PyArray_ITEMSIZE(<cnp.ndarray>grad_matrix))
    cdef const void *logits_ptr = cnp.PyArray_DATA(matrix)
    cdef const int64_t *target_ptr = <const int64_t *>_data_or_null(hard)
    cdef const void *soft_ptr = _data_or_null(soft)
    cdef const void *weight_ptr = _data_or_null(weight)
    cdef const double *lse_in_ptr = <const double *>_data_or_null(lse_in)
    cdef const double *stats_ptr = <const double *>_data_or_null(stats_in)
    cdef const double *grad_output_ptr = <const double *>_data_or_null(upstream)
    cdef double *loss_per_row_ptr = <double *>_data_or_null(per_row)
    cdef double *lse_out_ptr = <double *>_data_or_null(lse_out)
    cdef void *grad_ptr = _data_or_null(grad_matrix)
    cdef double total = 0.0
    cdef int status = 0
    cdef int dtype = kernel_code
    cdef bint forward = mode == CE_FORWARD
    with nogil:
        if forward:
            status = fastloss_cross_entropy_forward(
                dtype, &options, logits_ptr, logits_stride, target_ptr, soft_ptr, soft_stride,
                weight_ptr, loss_per_row_ptr, lse_out_ptr, &total)
        elif stats_ptr != NULL:
            status = fastloss_cross_entropy_grad_from_stats(
                dtype, &options, logits_ptr, logits_stride, target_ptr, soft_ptr, soft_stride,
                weight_ptr, stats_ptr, grad_output_ptr, grad_output_stride, grad_ptr,
                grad_stride)
        elif backward:
            status = fastloss_cross_entropy_backward(
                dtype, &options, logits_ptr, logits_stride, target_ptr, soft_ptr, soft_stride,
                weight_ptr, lse_in_ptr, grad_output_ptr, grad_output_stride, grad_ptr,
                grad_stride)
        else:
            status = fastloss_cross_entropy_value_and_grad(
                dtype, &options, logits_ptr, logits_stride, target_ptr, soft_ptr, soft_stride,
                weight_ptr, grad_output_ptr, grad_output_stride, loss_per_row_ptr, lse_out_ptr,
                &total, grad_ptr, grad_stride)
    if status == FASTLOSS_ERROR_BAD_TARGET:
        raise target_out_of_range(hard[bad_position], bad_position,
                                  loss_shape, total_classes, ignore_index)
    _check_status(status, "cross_entropy")

    # -- results
    if copy_back:
        numpy.copyto(grad, (<cnp.ndarray>grad_matrix).reshape(shape), casting="same_kind")
    loss = None
    if mode != CE_GRAD:
        if per_row is not None:
            loss = (<cnp.ndarray>per_row).reshape(loss_shape)
            if compute_dtype != numpy.float64:
                # float32 for half-precision logits too: the loss is computed in float32
                loss = loss.astype(numpy.float32 if half else compute_dtype)
        elif dtype != FASTLOSS_FLOAT64:
            loss = <double><float>total  # a Python float holding a float32 value
        else:
            loss = total
    if lse_out is not None:
        lse_out = (<cnp.ndarray>lse_out).reshape(loss_shape)
    return loss, lse_out, grad


cdef object _empty_like(cnp.ndarray array):
    """A C-ordered array of `array`'s shape and dtype: empty()'s, from np.empty's
    allocator directly when small."""
    cdef size_t size = <size_t>cnp.PyArray_NBYTES(array)
    if size >= LARGE_BUFFER_BYTES:
        return empty((<object>array).shape, array.dtype)
    return cnp.PyArray_EMPTY(cnp.PyArray_NDIM(array), cnp.PyArray_DIMS(array),
                             cnp.PyArray_TYPE(array), 0)


cdef object _out_rows(cnp.ndarray out, cnp.ndarray matrix, fastloss_index n_classes,
                      tuple others):
    """The (N, C) view of out= that the kernel may write, or None when it must compute
    aside: out= needs a copy to be seen as rows, or shares memory with an input other
    than being exactly the logits (in place).  The kernel reads every input while it
    writes the gradient row by row; class indices overwritten by a gradient would
    index outside the rows, so every input is checked."""
    view = rows_view(out, n_classes, written=True)
    if view is None:
        return None
    cdef cnp.ndarray rows = <cnp.ndarray>view
    cdef bint in_place = (cnp.PyArray_DATA(rows) == cnp.PyArray_DATA(matrix)
                          and (<object>rows).strides == (<object>matrix).strides)
    if not in_place and _may_overlap(rows, matrix):
        return None
    for other in others:
        if other is not None and _may_overlap(rows, <cnp.ndarray>other):
            return None
    return rows


# ----------------------------------------------------------------------------------------
# Block statistics (docs/block_statistics.rst; the layout in csrc/cross_entropy.h)
# ----------------------------------------------------------------------------------------

cdef object _stats_matrix(object stats, str name, object loss_shape):
    """``stats`` as the C-contiguous float64 (FIELDS, n_rows) matrix the kernels read (a
    copy only when it is not already one), checked against the batch shape when given."""
    stats = as_array(stats, name)
    if stats.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected real numbers (cross_entropy_block_stats), got "
                        f"dtype {stats.dtype}")
    if stats.ndim == 0 or stats.shape[0] != FASTLOSS_CE_STATS_FIELDS:
        raise ValueError(f"{name}: expected shape ({FASTLOSS_CE_STATS_FIELDS}, ...) "
                         f"(cross_entropy_block_stats), got {stats.shape}")
    if loss_shape is not None and stats.shape[1:] != loss_shape:
        raise ValueError(f"{name}: expected shape {(FASTLOSS_CE_STATS_FIELDS,) + loss_shape} "
                         f"(a statistic per row of the logits), got {stats.shape}")
    return numpy.require(stats.reshape(FASTLOSS_CE_STATS_FIELDS, -1), dtype=numpy.float64,
                         requirements="CA")


cdef fastloss_index _stats_classes(object matrix, fastloss_index class_offset,
                                   fastloss_index width) except -1:
    """C, the merged ``classes`` of the rows (the same in every row), checked against the
    block; ``class_offset + width`` where there are no rows."""
    classes = matrix[FASTLOSS_CE_STAT_CLASSES]
    if classes.size == 0:
        return class_offset + width
    first = classes[0]
    if (not (1 <= first <= _MAX_CLASSES and first == int(first))
            or numpy.any(classes != first)):
        raise ValueError(f"stats: the rows' 'classes' differ or are not counts "
                         f"({classes[:4]}...): not merged statistics of the same blocks")
    if class_offset + width > first:
        raise ValueError(f"class_offset: the block [{class_offset}, {class_offset + width}) "
                         f"ends past the {int(first)} classes of stats")
    return <fastloss_index>first


cdef _check_stats_targets(object matrix, object hard, object ignore_index, object loss_shape,
                          object labels=None):
    """Every non-ignored row's target in exactly one merged block (hard targets), or the
    statistics of probability targets (none counted). ``labels``: the caller's targets,
    for the message (``hard`` holds a uint64 label above 2**63 - 1 as another value)."""
    counts = matrix[FASTLOSS_CE_STAT_TARGET_COUNT]
    if hard is None:
        if numpy.any(counts != 0):
            raise ValueError("target: the statistics are of class-index targets; pass them "
                             "(not probabilities, nor None)")
        return
    wrong = numpy.flatnonzero((hard != ignore_index) & (counts != 1))
    if wrong.size:
        row = wrong[0]
        value = hard[row] if labels is None else numpy.asarray(labels).reshape(-1)[row]
        raise positioned_error("stats: the target {value} of row {position} lies in {blocks} "
                               "of the merged blocks, not 1 (a block is missing, overlaps "
                               "another, or the statistics had other targets)",
                               flat_position(row, loss_shape), value=int(value),
                               blocks=f"{counts[row]:g}")


def column_sums(object values, cnp.ndarray acc not None, int num_threads, object bits=None):
    """``acc += values.sum(axis=0)`` in float64, the rows added one at a time in order
    (csrc/half_convert.h, fastloss_column_sums): ``values`` a 2-d array (float32,
    float64, float16 or bfloat16; or 16-bit integers holding bfloat16 with
    ``bits="bfloat16"``) whose last axis is contiguous, ``acc`` a contiguous float64
    vector of its columns.  The linear cross-entropy's bias gradient, block by block."""
    cdef int code
    values, code = _logits_input(values, bits, "values")
    cdef cnp.ndarray array = <cnp.ndarray>values
    if cnp.PyArray_NDIM(array) != 2:
        raise ValueError(f"values: expected a 2-d array, got shape {(<object>array).shape}")
    cdef fastloss_index rows = array.shape[0], cols = array.shape[1]
    _check_vector(acc, cnp.NPY_FLOAT64, cols, "acc", writeable=True)
    if rows == 0 or cols == 0:
        return  # nothing to add (an empty array's strides say nothing)
    cdef fastloss_index stride = _row_stride(array, rows, cols, "values")
    if _may_overlap(array, acc):
        raise ValueError("acc: must not overlap values")
    cdef int status
    with nogil:
        status = fastloss_column_sums(code, cnp.PyArray_DATA(array), rows, cols, stride,
                                      <double *>cnp.PyArray_DATA(acc), num_threads)
    _check_status(status, "column_sums")


def ce_block_stats(object logits, object target, object class_offset, object num_classes,
                   object weight, object ignore_index, object label_smoothing,
                   object softcap, int num_threads, object bits=None):
    """cross_entropy_block_stats (fastloss/cross_entropy.py): the checked call.
    ``bits="bfloat16"``: the logits are 16-bit integers holding bfloat16 values (as in
    ce_call; the torch adapter's zero-copy view)."""
    cdef int code
    logits, code = _logits_input(logits, bits, "logits_block")
    cdef cnp.ndarray logits_array = <cnp.ndarray>logits
    cdef int ndim = cnp.PyArray_NDIM(logits_array)
    if ndim == 0:
        raise ValueError("logits_block: expected at least 1 dimension (..., width), got a "
                         "scalar")
    shape = (<object>logits_array).shape
    cdef fastloss_index width = shape[ndim - 1]
    if width == 0:
        raise ValueError(f"logits_block: expected at least one class, got shape {shape}")
    loss_shape = shape[:ndim - 1]
    if type(class_offset) is not int:
        class_offset = integer_scalar(class_offset, "class_offset")
    if class_offset < 0:
        raise ValueError(f"class_offset: expected an integer >= 0, got {class_offset}")
    if num_classes is None:
        num_classes = class_offset + width
    elif type(num_classes) is not int:
        num_classes = integer_scalar(num_classes, "num_classes")
    if num_classes < 1 or num_classes > _INT64_MAX:
        raise ValueError(f"num_classes: expected an integer >= 1, got {num_classes}")
    if class_offset + width > num_classes:
        raise ValueError(f"class_offset: the block [{class_offset}, {class_offset + width}) "
                         f"ends past num_classes={num_classes}")

    cdef fastloss_ce_options options
    cdef fastloss_index bad_position = -1
    options.reduction = FASTLOSS_REDUCTION_NONE
    options.z_loss = 0.0
    if type(ignore_index) is not int:
        ignore_index = integer_scalar(ignore_index, "ignore_index")
    options.label_smoothing = _unit_real(label_smoothing, "label_smoothing")
    options.softcap = 0.0
    if softcap is not None:
        options.softcap = real_scalar(softcap, "softcap", low=0.0, low_open=True)
    if num_threads < 1:
        raise ValueError(f"num_threads: expected an integer >= 1, got {num_threads}")
    options.num_threads = num_threads
    options.n_classes = width
    options.bad_target = &bad_position
    options.class_offset = class_offset
    options.total_classes = num_classes

    if not cnp.PyArray_CheckExact(target):
        target = as_array(target, "target")
    cdef cnp.ndarray target_array = <cnp.ndarray>target
    cdef object hard = None, soft = None
    kind = target_array.dtype.kind
    compute_dtype = logits_array.dtype
    aux_dtype = numpy.dtype(numpy.float32) if _is_half_code(code) else compute_dtype
    if kind == "i" or kind == "u":
        if ignore_index < -_INT64_MAX - 1 or ignore_index > _INT64_MAX:
            raise ValueError(f"ignore_index: expected a 64-bit integer, got {ignore_index}")
        hard = _hard_target(target_array, loss_shape, num_classes, ignore_index)
        options.ignore_index = ignore_index
    elif _float_kind(target_array.dtype):
        if (<object>target_array).shape != shape:
            raise ValueError(f"target: expected the block's probabilities of shape {shape} "
                             f"(like logits_block) or class indices of shape {loss_shape}, "
                             f"got {(<object>target_array).shape}")
        if ignore_index >= 0:
            raise ValueError("ignore_index: not supported with probability targets "
                             f"(got {ignore_index})")
        options.ignore_index = -1
        if target_array.dtype.itemsize > max(compute_dtype.itemsize, aux_dtype.itemsize):
            if bits is not None:
                raise TypeError("target: float64 probabilities with bits='bfloat16' "
                                "logits (widen the logits first)")
            compute_dtype = aux_dtype = numpy.dtype(numpy.float64)
        soft = _class_rows(numpy.require(target_array, dtype=aux_dtype,
                                         requirements="A"), width)
    else:
        raise TypeError(f"target: expected integer class indices or float probabilities, "
                        f"got dtype {target_array.dtype}")
    cdef cnp.ndarray matrix = _class_rows(
        logits_array.astype(compute_dtype) if compute_dtype != logits_array.dtype
        else logits_array, width)
    cdef fastloss_index n_rows = matrix.shape[0]
    options.n_rows = n_rows
    if weight is not None:
        weight = as_array(weight, "weight")
        if weight.dtype.kind not in "fiu" and not _is_bfloat16(weight.dtype):
            raise TypeError(f"weight: expected real numbers, got dtype {weight.dtype}")
        if weight.shape != (width,):
            raise ValueError(f"weight: expected the block's shape ({width},), got "
                             f"{weight.shape}")
        weight = numpy.require(weight, dtype=aux_dtype, requirements="CA")

    stats = cnp.PyArray_EMPTY(2, [FASTLOSS_CE_STATS_FIELDS, n_rows], cnp.NPY_FLOAT64, 0)
    cdef fastloss_index logits_stride = cnp.PyArray_STRIDE(matrix, 0) // cnp.PyArray_ITEMSIZE(matrix)
    cdef fastloss_index soft_stride = 0
    if soft is not None:
        soft_stride = cnp.PyArray_STRIDE(<cnp.ndarray>soft, 0) // cnp.PyArray_ITEMSIZE(<cnp.ndarray>soft)
    cdef const void *logits_ptr = cnp.PyArray_DATA(matrix)
    cdef const int64_t *target_ptr = <const int64_t *>_data_or_null(hard)
    cdef const void *soft_ptr = _data_or_null(soft)
    cdef const void *weight_ptr = _data_or_null(weight)
    cdef double *stats_ptr = <double *>cnp.PyArray_DATA(<cnp.ndarray>stats)
    cdef int dtype = code if bits is not None else _dtype_code(matrix, "logits_block")
    cdef int status
    with nogil:
        status = fastloss_cross_entropy_block_stats(
            dtype, &options, logits_ptr, logits_stride, target_ptr, soft_ptr, soft_stride,
            weight_ptr, stats_ptr)
    if status == FASTLOSS_ERROR_BAD_TARGET:
        raise target_out_of_range(hard[bad_position], bad_position,
                                  loss_shape, num_classes, ignore_index)
    _check_status(status, "cross_entropy_block_stats")
    return stats.reshape((FASTLOSS_CE_STATS_FIELDS,) + loss_shape)


def ce_rebase_stats(object stats, object new_max):
    """cross_entropy_rebase_stats: a new array."""
    matrix = _stats_matrix(stats, "stats", None)
    batch = as_array(stats, "stats").shape[1:]
    new_max = as_array(new_max, "new_max")
    if new_max.dtype.kind not in "fiu":
        raise TypeError(f"new_max: expected real numbers, got dtype {new_max.dtype}")
    try:
        new_max = numpy.broadcast_to(new_max, batch)
    except ValueError:
        raise ValueError(f"new_max: expected a shape that broadcasts to {batch}, got "
                         f"{new_max.shape}") from None
    new_max = numpy.require(new_max.reshape(-1), dtype=numpy.float64, requirements="CA")
    if numpy.any(new_max < matrix[FASTLOSS_CE_STAT_MAX]):
        row = int(numpy.flatnonzero(new_max < matrix[FASTLOSS_CE_STAT_MAX])[0])
        raise ValueError(f"new_max: {new_max[row]} is below the row's max "
                         f"{matrix[FASTLOSS_CE_STAT_MAX, row]} (row {row}): it must be at "
                         f"least the largest max over the blocks")
    result = numpy.array(matrix, dtype=numpy.float64, order="C", copy=True)
    cdef fastloss_index n_rows = result.shape[1]
    cdef double *stats_ptr = <double *>cnp.PyArray_DATA(<cnp.ndarray>result)
    cdef const double *max_ptr = <const double *>cnp.PyArray_DATA(<cnp.ndarray>new_max)
    with nogil:
        fastloss_cross_entropy_rebase_stats(n_rows, stats_ptr, max_ptr)
    return result.reshape((FASTLOSS_CE_STATS_FIELDS,) + batch)


def ce_merge_stats(object stats_sequence):
    """cross_entropy_merge_stats: the blocks' records merged in the sequence's order."""
    if isinstance(stats_sequence, numpy.ndarray) and stats_sequence.ndim >= 2 \
            and stats_sequence.shape[0] == FASTLOSS_CE_STATS_FIELDS:
        raise TypeError("stats_sequence: expected a sequence of statistics arrays, got one "
                        "array (wrap it in a list)")
    try:
        blocks = list(stats_sequence)
    except TypeError:
        raise TypeError(f"stats_sequence: expected a sequence of statistics arrays, got "
                        f"{type(stats_sequence).__name__}") from None
    if not blocks:
        raise ValueError("stats_sequence: expected at least one statistics array, got none")
    batch = as_array(blocks[0], "stats_sequence[0]").shape[1:]
    matrices = []
    for k, block in enumerate(blocks):
        matrix = _stats_matrix(block, f"stats_sequence[{k}]", None)
        if as_array(block, "stats_sequence").shape[1:] != batch:
            raise ValueError(f"stats_sequence[{k}]: shape "
                             f"{as_array(block, 'stats_sequence').shape} differs from "
                             f"stats_sequence[0]'s {(FASTLOSS_CE_STATS_FIELDS,) + batch}")
        matrices.append(matrix)
    cdef fastloss_index n_rows = matrices[0].shape[1]
    cdef fastloss_index n_blocks = len(matrices)
    merged = cnp.PyArray_EMPTY(2, [FASTLOSS_CE_STATS_FIELDS, n_rows], cnp.NPY_FLOAT64, 0)
    pointers = numpy.array([(<cnp.ndarray>m).__array_interface__["data"][0] for m in matrices],
                           dtype=numpy.uintp)
    cdef const double *const *blocks_ptr = <const double *const *>cnp.PyArray_DATA(
        <cnp.ndarray>pointers)
    cdef double *merged_ptr = <double *>cnp.PyArray_DATA(<cnp.ndarray>merged)
    with nogil:
        fastloss_cross_entropy_merge_stats(n_rows, n_blocks, blocks_ptr, merged_ptr)
    return merged.reshape((FASTLOSS_CE_STATS_FIELDS,) + batch)


def ce_from_stats(object stats, object target, object ignore_index, object reduction,
                  object label_smoothing, object z_loss, bint want_lse):
    """cross_entropy_from_stats: ``(loss, lse)``, lse None unless wanted."""
    matrix = _stats_matrix(stats, "stats", None)
    batch = as_array(stats, "stats").shape[1:]
    cdef fastloss_ce_options options
    options.reduction = _reduction_code(reduction)
    if type(ignore_index) is not int:
        ignore_index = integer_scalar(ignore_index, "ignore_index")
    if ignore_index < -_INT64_MAX - 1 or ignore_index > _INT64_MAX:
        raise ValueError(f"ignore_index: expected a 64-bit integer, got {ignore_index}")
    options.ignore_index = ignore_index
    options.label_smoothing = _unit_real(label_smoothing, "label_smoothing")
    options.z_loss = _nonnegative_real(z_loss, "z_loss")
    options.softcap = 0.0
    options.num_threads = 1
    options.bad_target = NULL
    options.class_offset = 0
    cdef fastloss_index n_rows = matrix.shape[1]
    options.n_rows = n_rows
    cdef object hard = None
    if target is not None:
        target = as_array(target, "target")
        kind = target.dtype.kind
        if kind == "i" or kind == "u":
            if target.shape != batch:
                raise ValueError(f"target: expected class indices of shape {batch}, got "
                                 f"{target.shape}")
            hard = _compared_labels(target, ignore_index)
        elif kind != "f":
            raise TypeError(f"target: expected integer class indices, or None for "
                            f"probability targets, got dtype {target.dtype}")
    cdef fastloss_index classes = _stats_classes(matrix, 0, 1) if n_rows else 1
    options.total_classes = classes
    options.n_classes = classes
    _check_stats_targets(matrix, hard, ignore_index, batch, target)
    per_row = None
    if options.reduction == FASTLOSS_REDUCTION_NONE:
        per_row = cnp.PyArray_EMPTY(1, [n_rows], cnp.NPY_FLOAT64, 0)
    lse = cnp.PyArray_EMPTY(1, [n_rows], cnp.NPY_FLOAT64, 0) if want_lse else None
    cdef const double *stats_ptr = <const double *>cnp.PyArray_DATA(<cnp.ndarray>matrix)
    cdef const int64_t *target_ptr = <const int64_t *>_data_or_null(hard)
    cdef double *per_row_ptr = <double *>_data_or_null(per_row)
    cdef double *lse_ptr = <double *>_data_or_null(lse)
    cdef double total = 0.0
    cdef int status
    with nogil:
        status = fastloss_cross_entropy_from_stats(&options, stats_ptr, target_ptr,
                                                   per_row_ptr, lse_ptr, &total)
    _check_status(status, "cross_entropy_from_stats")
    loss = total if per_row is None else per_row.reshape(batch)
    return loss, (None if lse is None else lse.reshape(batch))
