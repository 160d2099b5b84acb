# Elementwise (regression and binary) loss wrappers, included by _kernels.pyx.

cdef extern from "elementwise.h" nogil:
    enum:
        FASTLOSS_LOSS_MSE
        FASTLOSS_LOSS_L1
        FASTLOSS_LOSS_HUBER
        FASTLOSS_LOSS_SMOOTH_L1
        FASTLOSS_LOSS_BCE_WITH_LOGITS
    ctypedef struct fastloss_elementwise_options:
        fastloss_index n
        int loss
        double threshold
        fastloss_index weight_period
        fastloss_index pos_weight_period
        fastloss_index weight_sum_repeats
        int reduction
        int num_threads
    int fastloss_elementwise_forward_float32(
        const fastloss_elementwise_options *options, const float *pred, const float *target,
        const float *weight, const float *pos_weight, float *loss_per_element, double *loss)
    int fastloss_elementwise_forward_float64(
        const fastloss_elementwise_options *options, const double *pred, const double *target,
        const double *weight, const double *pos_weight, double *loss_per_element, double *loss)
    int fastloss_elementwise_backward_float32(
        const fastloss_elementwise_options *options, const float *pred, const float *target,
        const float *weight, const float *pos_weight, const double *grad_output,
        fastloss_index grad_output_stride, float *grad, float *grad_target)
    int fastloss_elementwise_backward_float64(
        const fastloss_elementwise_options *options, const double *pred, const double *target,
        const double *weight, const double *pos_weight, const double *grad_output,
        fastloss_index grad_output_stride, double *grad, double *grad_target)
    int fastloss_elementwise_value_and_grad_float32(
        const fastloss_elementwise_options *options, const float *pred, const float *target,
        const float *weight, const float *pos_weight, const double *grad_output,
        fastloss_index grad_output_stride, float *loss_per_element, double *loss, float *grad,
        float *grad_target)
    int fastloss_elementwise_value_and_grad_float64(
        const fastloss_elementwise_options *options, const double *pred, const double *target,
        const double *weight, const double *pos_weight, const double *grad_output,
        fastloss_index grad_output_stride, double *loss_per_element, double *loss, double *grad,
        double *grad_target)


ELEMENTWISE_LOSSES = {"mse": FASTLOSS_LOSS_MSE, "l1": FASTLOSS_LOSS_L1,
                      "huber": FASTLOSS_LOSS_HUBER, "smooth_l1": FASTLOSS_LOSS_SMOOTH_L1,
                      "bce_with_logits": FASTLOSS_LOSS_BCE_WITH_LOGITS}


cdef fastloss_index _period(object factor, int typenum, str name) except -1:
    """The period of a periodic per-element factor (its length), or 0 when None."""
    if factor is None:
        return 0
    _check_float(factor, typenum, name)
    if cnp.PyArray_NDIM(<cnp.ndarray>factor) != 1 or factor.shape[0] < 1:
        raise ValueError(f"{name}: expected a non-empty 1-d array (one period), "
                         f"got shape {factor.shape}")
    _check_vector(factor, typenum, factor.shape[0], name)
    return factor.shape[0]


def ew_run(str mode, str loss, cnp.ndarray pred not None, cnp.ndarray target not None,
           object weight, object pos_weight, object grad_output, object loss_per_element,
           object grad, double threshold, str reduction, int num_threads, *,
           object grad_target=None, fastloss_index weight_sum_repeats=1):
    """Run one elementwise kernel.

    mode: "forward", "backward" or "value_and_grad"; loss: a key of ELEMENTWISE_LOSSES.
    pred, target: contiguous 1-d float32 or float64 arrays of n elements, same dtype.
    weight, pos_weight: None, or one period of a periodic factor (element i reads
    factor[i % len(factor)]), contiguous 1-d in pred's dtype.  grad_output:
    float64 of shape (n,) (reduction "none" only) or (1,).  loss_per_element
    (reduction "none"), grad and grad_target: writeable 1-d arrays of n elements in
    pred's dtype, or None; grad may be pred or target itself, grad_target overlaps
    nothing; a gradient mode needs at least one of them.  weight_sum_repeats (>= 1):
    see elementwise.h (the weighted mean of mse and l1).
    Returns (the reduced loss, the same reduction of |term|), floats, meaningless
    for backward or "none".
    """
    cdef int typenum = cnp.PyArray_TYPE(pred)
    if typenum != cnp.NPY_FLOAT32 and typenum != cnp.NPY_FLOAT64:
        raise TypeError(f"pred: expected float32 or float64, got {pred.dtype}")
    if mode not in ("forward", "backward", "value_and_grad"):
        raise ValueError(f"mode: unknown {mode!r}")
    if loss not in ELEMENTWISE_LOSSES:
        raise ValueError(f"loss: unknown {loss!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: unknown {reduction!r}")
    if num_threads < 1:
        raise ValueError("num_threads: expected an integer >= 1")
    cdef fastloss_index n = cnp.PyArray_SIZE(pred)
    _check_vector(pred, typenum, n, "pred")
    _check_vector(target, typenum, n, "target")

    cdef fastloss_elementwise_options options
    options.n = n
    options.loss = ELEMENTWISE_LOSSES[loss]
    options.threshold = threshold
    options.reduction = REDUCTIONS[reduction]
    options.num_threads = num_threads
    if loss == "huber" and not (0.0 < threshold < float("inf")):
        raise ValueError(f"delta: expected a finite value > 0, got {threshold}")
    if loss == "smooth_l1" and not (0.0 <= threshold < float("inf")):
        raise ValueError(f"beta: expected a finite value >= 0, got {threshold}")
    if pos_weight is not None and loss != "bce_with_logits":
        raise ValueError("pos_weight: only bce_with_logits has it")
    if weight_sum_repeats < 1:
        raise ValueError(f"weight_sum_repeats: expected an integer >= 1, got {weight_sum_repeats}")
    options.weight_sum_repeats = weight_sum_repeats
    options.weight_period = _period(weight, typenum, "weight")
    options.pos_weight_period = _period(pos_weight, typenum, "pos_weight")

    cdef fastloss_index grad_output_stride = 0
    if mode != "backward" and reduction == "none":
        if loss_per_element is None:
            raise ValueError("loss_per_element: needed for reduction 'none'")
        _check_vector(loss_per_element, typenum, n, "loss_per_element", True)
        for other in (pred, target, weight, pos_weight, grad_output, grad, grad_target):
            if other is not None and n and _may_overlap(loss_per_element, other):
                raise ValueError("loss_per_element: overlaps another argument")
    elif loss_per_element is not None:
        raise ValueError("loss_per_element: only for reduction 'none' with a loss")
    if mode == "forward" and (grad is not None or grad_target is not None):
        raise ValueError("grad, grad_target: not written by a forward")
    if mode != "forward":
        if (grad is None and grad_target is None) or grad_output is None:
            raise ValueError("grad (or grad_target) and grad_output are needed for a gradient")
        if grad_output.shape[0] == n and n != 1:
            _check_vector(grad_output, cnp.NPY_FLOAT64, n, "grad_output")
            grad_output_stride = 1
        else:
            _check_vector(grad_output, cnp.NPY_FLOAT64, 1, "grad_output")
        if reduction != "none" and grad_output_stride != 0:
            raise ValueError("grad_output: expected a scalar for reduction 'mean' or 'sum'")
        if grad is not None:
            _check_vector(grad, typenum, n, "out", True)
        if grad_target is not None:
            _check_vector(grad_target, typenum, n, "grad_target", True)
        if n and grad is not None:
            # the kernels read a tile of pred and target before they write its
            # gradient: exact in place is safe, any other overlap is not
            for other in (pred, target, weight, pos_weight, grad_output):
                if other is None or not _may_overlap(grad, other):
                    continue
                if not ((other is pred or other is target)
                        and cnp.PyArray_DATA(grad) == cnp.PyArray_DATA(<cnp.ndarray>other)):
                    raise ValueError("out: overlaps an input (only out=pred in place is "
                                     "supported)")
        if n and grad_target is not None:
            for other in (pred, target, weight, pos_weight, grad_output, grad):
                if other is not None and _may_overlap(grad_target, other):
                    raise ValueError("grad_target: overlaps another argument")

    cdef const void *pred_ptr = cnp.PyArray_DATA(pred)
    cdef const void *target_ptr = cnp.PyArray_DATA(target)
    cdef const void *weight_ptr = _data_or_null(weight)
    cdef const void *pos_weight_ptr = _data_or_null(pos_weight)
    cdef const double *grad_output_ptr = <const double *>_data_or_null(grad_output)
    cdef void *loss_per_element_ptr = _data_or_null(loss_per_element)
    cdef void *grad_ptr = _data_or_null(grad)
    cdef void *grad_target_ptr = _data_or_null(grad_target)
    cdef double total[2]
    total[0] = total[1] = 0.0
    cdef int status = 0
    cdef bint is_float32 = typenum == cnp.NPY_FLOAT32
    cdef int which = 0 if mode == "forward" else (1 if mode == "backward" else 2)

    with nogil:
        if is_float32:
            if which == 0:
                status = fastloss_elementwise_forward_float32(
                    &options, <const float *>pred_ptr, <const float *>target_ptr,
                    <const float *>weight_ptr, <const float *>pos_weight_ptr,
                    <float *>loss_per_element_ptr, total)
            elif which == 1:
                status = fastloss_elementwise_backward_float32(
                    &options, <const float *>pred_ptr, <const float *>target_ptr,
                    <const float *>weight_ptr, <const float *>pos_weight_ptr,
                    grad_output_ptr, grad_output_stride, <float *>grad_ptr,
                    <float *>grad_target_ptr)
            else:
                status = fastloss_elementwise_value_and_grad_float32(
                    &options, <const float *>pred_ptr, <const float *>target_ptr,
                    <const float *>weight_ptr, <const float *>pos_weight_ptr,
                    grad_output_ptr, grad_output_stride, <float *>loss_per_element_ptr, total,
                    <float *>grad_ptr, <float *>grad_target_ptr)
        else:
            if which == 0:
                status = fastloss_elementwise_forward_float64(
                    &options, <const double *>pred_ptr, <const double *>target_ptr,
                    <const double *>weight_ptr, <const double *>pos_weight_ptr,
                    <double *>loss_per_element_ptr, total)
            elif which == 1:
                status = fastloss_elementwise_backward_float64(
                    &options, <const double *>pred_ptr, <const double *>target_ptr,
                    <const double *>weight_ptr, <const double *>pos_weight_ptr,
                    grad_output_ptr, grad_output_stride, <double *>grad_ptr,
                    <double *>grad_target_ptr)
            else:
                status = fastloss_elementwise_value_and_grad_float64(
                    &options, <const double *>pred_ptr, <const double *>target_ptr,
                    <const double *>weight_ptr, <const double *>pos_weight_ptr,
                    grad_output_ptr, grad_output_stride, <double *>loss_per_element_ptr, total,
                    <double *>grad_ptr, <double *>grad_target_ptr)
    if status == FASTLOSS_ERROR_NO_MEMORY:
        raise MemoryError(f"{loss}: could not allocate scratch space")
    return total[0], total[1]
