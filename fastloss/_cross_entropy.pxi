# Cross-entropy wrappers, included by _kernels.pyx.

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
    fastloss_index fastloss_cross_entropy_find_bad_target(
        const int64_t *target, fastloss_index n_rows, fastloss_index n_classes,
        fastloss_index ignore_index)
    int fastloss_cross_entropy_forward_float32(
        const fastloss_ce_options *options, const float *logits, fastloss_index logits_row_stride,
        const int64_t *target, const float *soft_target, fastloss_index soft_target_row_stride,
        const float *weight, double *loss_per_row, double *lse, double *loss)
    int fastloss_cross_entropy_forward_float64(
        const fastloss_ce_options *options, const double *logits, fastloss_index logits_row_stride,
        const int64_t *target, const double *soft_target, fastloss_index soft_target_row_stride,
        const double *weight, double *loss_per_row, double *lse, double *loss)
    int fastloss_cross_entropy_backward_float32(
        const fastloss_ce_options *options, const float *logits, fastloss_index logits_row_stride,
        const int64_t *target, const float *soft_target, fastloss_index soft_target_row_stride,
        const float *weight, const double *lse, const double *grad_output,
        fastloss_index grad_output_stride, float *grad, fastloss_index grad_row_stride)
    int fastloss_cross_entropy_backward_float64(
        const fastloss_ce_options *options, const double *logits, fastloss_index logits_row_stride,
        const int64_t *target, const double *soft_target, fastloss_index soft_target_row_stride,
        const double *weight, const double *lse, const double *grad_output,
        fastloss_index grad_output_stride, double *grad, fastloss_index grad_row_stride)
    int fastloss_cross_entropy_value_and_grad_float32(
        const fastloss_ce_options *options, const float *logits, fastloss_index logits_row_stride,
        const int64_t *target, const float *soft_target, fastloss_index soft_target_row_stride,
        const float *weight, const double *grad_output, fastloss_index grad_output_stride,
        double *loss_per_row, double *lse, double *loss, float *grad,
        fastloss_index grad_row_stride)
    int fastloss_cross_entropy_value_and_grad_float64(
        const fastloss_ce_options *options, const double *logits, fastloss_index logits_row_stride,
        const int64_t *target, const double *soft_target, fastloss_index soft_target_row_stride,
        const double *weight, const double *grad_output, fastloss_index grad_output_stride,
        double *loss_per_row, double *lse, double *loss, double *grad,
        fastloss_index grad_row_stride)


def ce_find_bad_target(cnp.ndarray target not None, fastloss_index n_classes,
                       fastloss_index ignore_index):
    """Flat position of the first target outside [0, C) that is not ignore_index, or -1."""
    _check_vector(target, cnp.NPY_INT64, target.shape[0] if target.ndim == 1 else -1, "target")
    cdef const int64_t *data = <const int64_t *>cnp.PyArray_DATA(target)
    cdef fastloss_index n = target.shape[0]
    cdef fastloss_index position
    with nogil:
        position = fastloss_cross_entropy_find_bad_target(data, n, n_classes, ignore_index)
    return position


cdef inline void *_data_or_null(object array):
    return NULL if array is None else cnp.PyArray_DATA(<cnp.ndarray>array)


def ce_run(str mode, cnp.ndarray logits not None, object target, object soft_target, object weight,
           object lse_in, object grad_output, object loss_per_row, object lse_out, object grad,
           fastloss_index ignore_index, double label_smoothing, double z_loss, double softcap,
           str reduction, int num_threads):
    """Run one cross-entropy kernel.

    mode: "forward", "backward" (needs lse_in) or "value_and_grad".
    logits (N, C) with a contiguous last axis; target int64 (N,) or None;
    soft_target (N, C) like logits or None; weight (C,) or None; lse_in,
    loss_per_row, lse_out float64 (N,) or None; grad_output float64 of shape
    (N,) or (1,) (one value for every row); grad (N, C) like logits or None.
    Returns the reduced loss (a float; meaningless for backward or "none").
    """
    cdef int typenum = cnp.PyArray_TYPE(logits)
    if typenum != cnp.NPY_FLOAT32 and typenum != cnp.NPY_FLOAT64:
        raise TypeError(f"logits: expected float32 or float64, got {logits.dtype}")
    _check_float(logits, typenum, "logits")
    if cnp.PyArray_NDIM(logits) != 2:
        raise ValueError("logits: expected a 2-d array")
    cdef fastloss_ce_options options
    options.n_rows = logits.shape[0]
    options.n_classes = logits.shape[1]
    options.ignore_index = ignore_index
    options.label_smoothing = label_smoothing
    options.z_loss = z_loss
    options.softcap = softcap
    options.reduction = REDUCTIONS[reduction]
    options.num_threads = num_threads
    cdef fastloss_index n_rows = options.n_rows, n_classes = options.n_classes
    if n_classes < 1:
        raise ValueError("logits: need at least one class")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError("label_smoothing: expected a value in [0, 1]")
    if not (z_loss >= 0.0 and softcap >= 0.0):
        raise ValueError("z_loss and softcap must be >= 0")
    if num_threads < 1:
        raise ValueError("num_threads: expected an integer >= 1")
    if mode not in ("forward", "backward", "value_and_grad"):
        raise ValueError(f"mode: unknown {mode!r}")

    cdef fastloss_index logits_stride = _row_stride(logits, n_rows, n_classes, "logits")
    cdef fastloss_index soft_stride = 0
    if (target is None) == (soft_target is None):
        raise ValueError("target: give exactly one of class indices and probabilities")
    if target is not None:
        _check_vector(target, cnp.NPY_INT64, n_rows, "target")
        position = ce_find_bad_target(target, n_classes, ignore_index)
        if position >= 0:
            raise ValueError(f"target: value {target[position]} at position {position} is out "
                             f"of range for {n_classes} classes")
    else:
        _check_float(soft_target, typenum, "target")
        soft_stride = _row_stride(soft_target, n_rows, n_classes, "target")
        if ignore_index >= 0:
            raise ValueError("ignore_index: not supported with probability targets")
    if weight is not None:
        _check_vector(weight, typenum, n_classes, "weight")
    if loss_per_row is not None:
        _check_vector(loss_per_row, cnp.NPY_FLOAT64, n_rows, "loss_per_row", True)
    if lse_out is not None:
        _check_vector(lse_out, cnp.NPY_FLOAT64, n_rows, "lse", True)

    if mode == "backward":
        if lse_in is None:
            raise ValueError("lse: needed by the backward kernel")
        _check_vector(lse_in, cnp.NPY_FLOAT64, n_rows, "lse")

    cdef fastloss_index grad_output_stride = 0
    cdef fastloss_index grad_stride = 0
    if mode != "forward":
        if grad is None or grad_output is None:
            raise ValueError("grad and grad_output are needed for a gradient")
        if grad_output.shape[0] == n_rows and n_rows != 1:
            _check_vector(grad_output, cnp.NPY_FLOAT64, n_rows, "grad_output")
            grad_output_stride = 1
        else:
            _check_vector(grad_output, cnp.NPY_FLOAT64, 1, "grad_output")
        if reduction != "none" and grad_output_stride != 0:
            raise ValueError("grad_output: expected a scalar for reduction 'mean' or 'sum'")
        _check_float(grad, typenum, "out")
        grad_stride = _row_stride(grad, n_rows, n_classes, "out", True)
        same_buffer = (cnp.PyArray_DATA(grad) == cnp.PyArray_DATA(logits)
                       and grad_stride == logits_stride)
        if n_rows and cnp.PyArray_SIZE(grad):
            # The kernels read every input while they write grad, row after row: only
            # out=logits exactly in place is allowed.  Class indices overwritten by a
            # gradient would index outside the rows, so the target is checked too, and
            # the per-row inputs and outputs as well (even in place).
            for other in (logits, target, soft_target, weight,
                          lse_in if mode == "backward" else None, grad_output,
                          loss_per_row, lse_out):
                if other is None or (other is logits and same_buffer):
                    continue
                if _may_overlap(grad, other):
                    raise ValueError("out: overlaps an input (only out=logits is supported)")

    cdef const int64_t *target_ptr = <const int64_t *>_data_or_null(target)
    cdef const void *logits_ptr = cnp.PyArray_DATA(logits)
    cdef const void *soft_ptr = _data_or_null(soft_target)
    cdef const void *weight_ptr = _data_or_null(weight)
    cdef const double *lse_in_ptr = <const double *>_data_or_null(lse_in)
    cdef const double *grad_output_ptr = <const double *>_data_or_null(grad_output)
    cdef double *loss_per_row_ptr = <double *>_data_or_null(loss_per_row)
    cdef double *lse_out_ptr = <double *>_data_or_null(lse_out)
    cdef void *grad_ptr = _data_or_null(grad)
    cdef double loss = 0.0
    cdef int status = 0
    cdef bint is_float32 = typenum == cnp.NPY_FLOAT32
    cdef int which = 0 if mode == "forward" else (1 if mode == "backward" else 2)

    with nogil:
        if is_float32:
            if which == 0:
                status = fastloss_cross_entropy_forward_float32(
                    &options, <const float *>logits_ptr, logits_stride, target_ptr,
                    <const float *>soft_ptr, soft_stride, <const float *>weight_ptr,
                    loss_per_row_ptr, lse_out_ptr, &loss)
            elif which == 1:
                status = fastloss_cross_entropy_backward_float32(
                    &options, <const float *>logits_ptr, logits_stride, target_ptr,
                    <const float *>soft_ptr, soft_stride, <const float *>weight_ptr, lse_in_ptr,
                    grad_output_ptr, grad_output_stride, <float *>grad_ptr, grad_stride)
            else:
                status = fastloss_cross_entropy_value_and_grad_float32(
                    &options, <const float *>logits_ptr, logits_stride, target_ptr,
                    <const float *>soft_ptr, soft_stride, <const float *>weight_ptr,
                    grad_output_ptr, grad_output_stride, loss_per_row_ptr, lse_out_ptr, &loss,
                    <float *>grad_ptr, grad_stride)
        else:
            if which == 0:
                status = fastloss_cross_entropy_forward_float64(
                    &options, <const double *>logits_ptr, logits_stride, target_ptr,
                    <const double *>soft_ptr, soft_stride, <const double *>weight_ptr,
                    loss_per_row_ptr, lse_out_ptr, &loss)
            elif which == 1:
                status = fastloss_cross_entropy_backward_float64(
                    &options, <const double *>logits_ptr, logits_stride, target_ptr,
                    <const double *>soft_ptr, soft_stride, <const double *>weight_ptr, lse_in_ptr,
                    grad_output_ptr, grad_output_stride, <double *>grad_ptr, grad_stride)
            else:
                status = fastloss_cross_entropy_value_and_grad_float64(
                    &options, <const double *>logits_ptr, logits_stride, target_ptr,
                    <const double *>soft_ptr, soft_stride, <const double *>weight_ptr,
                    grad_output_ptr, grad_output_stride, loss_per_row_ptr, lse_out_ptr, &loss,
                    <double *>grad_ptr, grad_stride)
    if status == FASTLOSS_ERROR_NO_MEMORY:
        raise MemoryError("cross_entropy: could not allocate scratch space")
    return loss
