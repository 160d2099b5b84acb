# Elementwise (pointwise) loss wrappers, included by _kernels.pyx.

cdef extern from "elementwise.h" nogil:
    enum:
        FASTLOSS_LOSS_MSE
        FASTLOSS_LOSS_L1
        FASTLOSS_LOSS_HUBER
        FASTLOSS_LOSS_SMOOTH_L1
        FASTLOSS_LOSS_BCE_WITH_LOGITS
        FASTLOSS_LOSS_SIGMOID_FOCAL
        FASTLOSS_LOSS_MARGIN_RANKING
        FASTLOSS_LOSS_POISSON_NLL
        FASTLOSS_LOSS_GAUSSIAN_NLL
        FASTLOSS_LOSS_PINBALL
        FASTLOSS_LOSS_SOFT_MARGIN
        FASTLOSS_LOSS_BRADLEY_TERRY
        FASTLOSS_LOSS_KL_DIV
        FASTLOSS_LOSS_DPO
        FASTLOSS_DPO_SIGMOID
        FASTLOSS_DPO_HINGE
        FASTLOSS_DPO_IPO
        FASTLOSS_ELEMENTWISE_PARAMS
    ctypedef struct fastloss_elementwise_options:
        fastloss_index n
        int loss
        double param[3]
        fastloss_index weight_period
        fastloss_index factor_period
        fastloss_index weight_sum_repeats
        int reduction
        int num_threads
    int fastloss_elementwise_forward(
        int dtype, const fastloss_elementwise_options *options, const void *pred,
        const void *target, const void *aux, const void *aux2, const void *weight,
        const void *factor, void *loss_per_element, double *loss)
    int fastloss_elementwise_backward(
        int dtype, const fastloss_elementwise_options *options, const void *pred,
        const void *target, const void *aux, const void *aux2, const void *weight,
        const void *factor, const double *grad_output, fastloss_index grad_output_stride,
        void *grad, void *grad_target, void *grad_aux, void *grad_aux2)
    int fastloss_elementwise_value_and_grad(
        int dtype, const fastloss_elementwise_options *options, const void *pred,
        const void *target, const void *aux, const void *aux2, const void *weight,
        const void *factor, const double *grad_output, fastloss_index grad_output_stride,
        void *loss_per_element, double *loss, void *grad, void *grad_target,
        void *grad_aux, void *grad_aux2)

ELEMENTWISE_LOSSES = {"mse": FASTLOSS_LOSS_MSE, "l1": FASTLOSS_LOSS_L1,
                      "huber": FASTLOSS_LOSS_HUBER, "smooth_l1": FASTLOSS_LOSS_SMOOTH_L1,
                      "bce_with_logits": FASTLOSS_LOSS_BCE_WITH_LOGITS,
                      "sigmoid_focal": FASTLOSS_LOSS_SIGMOID_FOCAL,
                      "margin_ranking": FASTLOSS_LOSS_MARGIN_RANKING,
                      "poisson_nll": FASTLOSS_LOSS_POISSON_NLL,
                      "gaussian_nll": FASTLOSS_LOSS_GAUSSIAN_NLL,
                      "pinball": FASTLOSS_LOSS_PINBALL,
                      "soft_margin": FASTLOSS_LOSS_SOFT_MARGIN,
                      "bradley_terry": FASTLOSS_LOSS_BRADLEY_TERRY,
                      "kl_div": FASTLOSS_LOSS_KL_DIV,
                      "dpo": FASTLOSS_LOSS_DPO}

# dpo's loss types, the code its param[1] carries (elementwise.h)
DPO_LOSS_TYPES = {"sigmoid": FASTLOSS_DPO_SIGMOID, "hinge": FASTLOSS_DPO_HINGE,
                  "ipo": FASTLOSS_DPO_IPO}

# What each loss reads beyond pred and target (elementwise.h): the names of its params
# (in order; ew_run's `params`), its third input `aux` (None: it has none), the name
# of its periodic factor (None: it takes none) and whether the factor is required,
# and which gradients it has besides pred's.  dpo alone has a fourth input, aux2
# (EW_FOUR_INPUTS).
EW_LOSS_SIGNATURES = {
    "mse": ((), None, None, False, ("target",)),
    "l1": ((), None, None, False, ("target",)),
    "huber": (("delta",), None, None, False, ("target",)),
    "smooth_l1": (("beta",), None, None, False, ("target",)),
    "bce_with_logits": ((), None, "pos_weight", False, ("target",)),
    "sigmoid_focal": (("alpha", "gamma"), None, None, False, ()),
    "margin_ranking": (("margin",), "target", None, False, ("target",)),
    "poisson_nll": (("log_input", "full", "eps"), None, None, False, ("target",)),
    "gaussian_nll": (("full", "eps"), "var", None, False, ("target", "aux")),
    "pinball": ((), None, "quantile", True, ("target",)),
    "soft_margin": ((), None, None, False, ()),
    "bradley_terry": ((), None, "margin", True, ("target",)),
    "kl_div": (("log_target",), None, None, False, ("target",)),
    "dpo": (("beta", "loss_type", "label_smoothing"), "reference_chosen", None, False,
            ("target", "aux", "aux2")),
}
EW_FOUR_INPUTS = {"dpo": "reference_rejected"}


cdef inline bint _finite(double value):
    return value - value == 0.0


cdef int _check_params(str loss, double *param) except -1:
    """The checks of elementwise.h's preconditions on param[] that memory safety does not
    need but a wrong answer would follow from; each names the argument."""
    if loss == "huber" and not (0.0 < param[0] < float("inf")):
        raise ValueError(f"delta: expected a finite value > 0, got {param[0]}")
    if loss == "smooth_l1" and not (0.0 <= param[0] < float("inf")):
        raise ValueError(f"beta: expected a finite value >= 0, got {param[0]}")
    if loss == "sigmoid_focal":
        if not _finite(param[0]):
            raise ValueError(f"alpha: expected a finite value, got {param[0]}")
        if not (0.0 <= param[1] < float("inf")):
            raise ValueError(f"gamma: expected a finite value >= 0, got {param[1]}")
    if loss == "margin_ranking" and not _finite(param[0]):
        raise ValueError(f"margin: expected a finite value, got {param[0]}")
    if loss == "poisson_nll":
        for index, name in ((0, "log_input"), (1, "full")):
            if param[index] != 0.0 and param[index] != 1.0:
                raise ValueError(f"{name}: expected 0 or 1 (a bool), got {param[index]}")
        if not (0.0 < param[2] < float("inf")):
            raise ValueError(f"eps: expected a finite value > 0, got {param[2]}")
    if loss == "gaussian_nll":
        if param[0] != 0.0 and param[0] != 1.0:
            raise ValueError(f"full: expected 0 or 1 (a bool), got {param[0]}")
        if not (0.0 < param[1] < float("inf")):
            raise ValueError(f"eps: expected a finite value > 0, got {param[1]}")
    if loss == "kl_div" and param[0] != 0.0 and param[0] != 1.0:
        raise ValueError(f"log_target: expected 0 or 1 (a bool), got {param[0]}")
    if loss == "dpo":
        if not (0.0 < param[0] < float("inf")):
            raise ValueError(f"beta: expected a finite value > 0, got {param[0]}")
        if param[1] not in (FASTLOSS_DPO_SIGMOID, FASTLOSS_DPO_HINGE, FASTLOSS_DPO_IPO):
            raise ValueError(f"loss_type: unknown code {param[1]}")
        if not (0.0 <= param[2] <= 0.5):
            raise ValueError(f"label_smoothing: expected a value in [0, 0.5], got {param[2]}")
    return 0


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
           object weight, object factor, object grad_output, object loss_per_element,
           object grad, object params, str reduction, int num_threads, *,
           object grad_target=None, fastloss_index weight_sum_repeats=1, object aux=None,
           object grad_aux=None, object aux2=None, object grad_aux2=None):
    """Run one elementwise kernel.

    mode: "forward", "backward" or "value_and_grad"; loss: a key of ELEMENTWISE_LOSSES.
    pred, target: contiguous 1-d float32 or float64 arrays of n elements, same dtype.
    aux: the third input (margin_ranking's y, gaussian_nll's var, dpo's
    reference_chosen, already broadcast), like target; None for the losses of two
    inputs.  aux2: dpo's fourth input (reference_rejected), None for the others.  weight, factor: None, or one
    period of a periodic factor (element i reads factor[i % len(factor)]), contiguous
    1-d in pred's dtype; factor is bce_with_logits' pos_weight (optional) or pinball's
    quantile (required).  params: the loss's scalars in EW_LOSS_SIGNATURES' order, a
    float (the first; huber's delta, smooth_l1's beta) or a sequence of up to
    FASTLOSS_ELEMENTWISE_PARAMS floats (bools as 0 or 1), the rest 0.  grad_output:
    float64 of shape (n,) (reduction "none" only) or (1,).  loss_per_element
    (reduction "none"), grad, grad_target, grad_aux and grad_aux2: writeable 1-d
    arrays of n elements in pred's dtype, or None; grad may be pred, target, aux or
    aux2 itself, the others overlap nothing; a gradient mode needs at least one of them.
    weight_sum_repeats (>= 1): see elementwise.h (the weighted mean of mse and l1).
    Returns (the reduced loss, the same reduction of |term|), floats, meaningless
    for backward or "none".  The reduced loss meets the accuracy contract as it is:
    where float32 terms cancel, the C entry has already computed it again in double
    from the float32 inputs (csrc/elementwise.c's policy), in place too.
    """
    cdef int dtype = _dtype_code(pred, "pred")
    cdef int typenum = cnp.PyArray_TYPE(pred)
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

    param_names, aux_name, factor_name, factor_required, gradients = EW_LOSS_SIGNATURES[loss]

    cdef fastloss_elementwise_options options
    options.n = n
    options.loss = ELEMENTWISE_LOSSES[loss]
    values = tuple(params) if isinstance(params, (tuple, list)) else (params,)
    if len(values) > FASTLOSS_ELEMENTWISE_PARAMS:
        raise ValueError(f"params: expected at most {FASTLOSS_ELEMENTWISE_PARAMS} values, "
                         f"got {len(values)}")
    cdef int j
    for j in range(FASTLOSS_ELEMENTWISE_PARAMS):
        options.param[j] = float(values[j]) if j < len(values) else 0.0
    _check_params(loss, options.param)
    options.reduction = REDUCTIONS[reduction]
    options.num_threads = num_threads
    if factor is not None and factor_name is None:
        raise ValueError("factor: only bce_with_logits (pos_weight), pinball (quantile) and "
                         "bradley_terry (margin) take one")
    if factor is None and factor_required:
        raise ValueError(f"factor: {loss} needs its {factor_name}")
    if aux_name is None and aux is not None:
        raise ValueError(f"aux: {loss} has no third input")
    if aux_name is not None:
        if aux is None:
            raise ValueError(f"aux: {loss} needs its third input ({aux_name})")
        _check_vector(aux, typenum, n, "aux")
    aux2_name = EW_FOUR_INPUTS.get(loss)
    if aux2_name is None and aux2 is not None:
        raise ValueError(f"aux2: {loss} has no fourth input")
    if aux2_name is not None:
        if aux2 is None:
            raise ValueError(f"aux2: {loss} needs its fourth input ({aux2_name})")
        _check_vector(aux2, typenum, n, "aux2")
    if grad_aux2 is not None and "aux2" not in gradients:
        raise ValueError(f"grad_aux2: {loss} has no gradient w.r.t. aux2")
    if grad_target is not None and "target" not in gradients:
        raise ValueError(f"grad_target: {loss} has no gradient w.r.t. target")
    if grad_aux is not None and "aux" not in gradients:
        raise ValueError(f"grad_aux: {loss} has no gradient w.r.t. aux")
    if weight_sum_repeats < 1:
        raise ValueError(f"weight_sum_repeats: expected an integer >= 1, got {weight_sum_repeats}")
    options.weight_sum_repeats = weight_sum_repeats
    options.weight_period = _period(weight, typenum, "weight")
    options.factor_period = _period(factor, typenum, "factor")

    cdef fastloss_index grad_output_stride = 0
    if mode != "backward" and reduction == "none":
        if loss_per_element is None:
            raise ValueError("loss_per_element: needed for reduction 'none'")
        _check_vector(loss_per_element, typenum, n, "loss_per_element", True)
        for other in (pred, target, aux, aux2, weight, factor, grad_output, grad,
                      grad_target, grad_aux, grad_aux2):
            if other is not None and n and _may_overlap(loss_per_element, other):
                raise ValueError("loss_per_element: overlaps another argument")
    elif loss_per_element is not None:
        raise ValueError("loss_per_element: only for reduction 'none' with a loss")
    if mode == "forward" and (grad is not None or grad_target is not None
                              or grad_aux is not None or grad_aux2 is not None):
        raise ValueError("grad, grad_target, grad_aux, grad_aux2: not written by a forward")
    if mode != "forward":
        if (grad is None and grad_target is None and grad_aux is None
                and grad_aux2 is None) or grad_output is None:
            raise ValueError("grad (or grad_target, grad_aux or grad_aux2) and grad_output "
                             "are needed for a gradient")
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
        if grad_aux is not None:
            _check_vector(grad_aux, typenum, n, "grad_aux", True)
        if grad_aux2 is not None:
            _check_vector(grad_aux2, typenum, n, "grad_aux2", True)
        if n and grad is not None:
            # the kernels read a tile of every input before they write its
            # gradient: exact in place is safe, any other overlap is not
            for other in (pred, target, aux, aux2, weight, factor, grad_output):
                if other is None or not _may_overlap(grad, other):
                    continue
                if not ((other is pred or other is target or other is aux or other is aux2)
                        and cnp.PyArray_DATA(grad) == cnp.PyArray_DATA(<cnp.ndarray>other)):
                    raise ValueError("out: overlaps an input (only out=pred in place is "
                                     "supported)")
        for name, extra in (("grad_target", grad_target), ("grad_aux", grad_aux),
                            ("grad_aux2", grad_aux2)):
            if not n or extra is None:
                continue
            for other in (pred, target, aux, aux2, weight, factor, grad_output, grad,
                          grad_target, grad_aux, grad_aux2):
                if other is not None and other is not extra and _may_overlap(extra, other):
                    raise ValueError(f"{name}: overlaps another argument")

    cdef const void *pred_ptr = cnp.PyArray_DATA(pred)
    cdef const void *target_ptr = cnp.PyArray_DATA(target)
    cdef const void *aux_ptr = _data_or_null(aux)
    cdef const void *aux2_ptr = _data_or_null(aux2)
    cdef const void *weight_ptr = _data_or_null(weight)
    cdef const void *factor_ptr = _data_or_null(factor)
    cdef const double *grad_output_ptr = <const double *>_data_or_null(grad_output)
    cdef void *loss_per_element_ptr = _data_or_null(loss_per_element)
    cdef void *grad_ptr = _data_or_null(grad)
    cdef void *grad_target_ptr = _data_or_null(grad_target)
    cdef void *grad_aux_ptr = _data_or_null(grad_aux)
    cdef void *grad_aux2_ptr = _data_or_null(grad_aux2)
    cdef double total[2]
    total[0] = total[1] = 0.0
    cdef int status = 0
    cdef int which = 0 if mode == "forward" else (1 if mode == "backward" else 2)

    with nogil:
        if which == 0:
            status = fastloss_elementwise_forward(
                dtype, &options, pred_ptr, target_ptr, aux_ptr, aux2_ptr, weight_ptr,
                factor_ptr, loss_per_element_ptr, total)
        elif which == 1:
            status = fastloss_elementwise_backward(
                dtype, &options, pred_ptr, target_ptr, aux_ptr, aux2_ptr, weight_ptr,
                factor_ptr, grad_output_ptr, grad_output_stride, grad_ptr, grad_target_ptr,
                grad_aux_ptr, grad_aux2_ptr)
        else:
            status = fastloss_elementwise_value_and_grad(
                dtype, &options, pred_ptr, target_ptr, aux_ptr, aux2_ptr, weight_ptr,
                factor_ptr, grad_output_ptr, grad_output_stride, loss_per_element_ptr, total,
                grad_ptr, grad_target_ptr, grad_aux_ptr, grad_aux2_ptr)
    _check_status(status, loss)
    return total[0], total[1]
