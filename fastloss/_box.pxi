# Bounding-box loss wrappers (giou, diou, ciou), included by _kernels.pyx.

cdef extern from "box.h" nogil:
    enum:
        FASTLOSS_BOX_GIOU
        FASTLOSS_BOX_DIOU
        FASTLOSS_BOX_CIOU
    ctypedef struct fastloss_box_options:
        fastloss_index n
        int loss
        double eps
        fastloss_index boxes1_stride
        fastloss_index boxes2_stride
        int reduction
        int num_threads
        int float_pass
    int fastloss_box_forward(int dtype, const fastloss_box_options *options,
                             const void *boxes1, const void *boxes2, void *loss_per_box,
                             double *loss)
    int fastloss_box_backward(int dtype, const fastloss_box_options *options,
                              const void *boxes1, const void *boxes2,
                              const double *grad_output, fastloss_index grad_output_stride,
                              void *grad1, void *grad2)
    int fastloss_box_value_and_grad(int dtype, const fastloss_box_options *options,
                                    const void *boxes1, const void *boxes2,
                                    const double *grad_output,
                                    fastloss_index grad_output_stride, void *loss_per_box,
                                    double *loss, void *grad1, void *grad2)
    void fastloss_box_atan_float64(const double *x, fastloss_index n, double *out)


BOX_LOSSES = {"giou": FASTLOSS_BOX_GIOU, "diou": FASTLOSS_BOX_DIOU, "ciou": FASTLOSS_BOX_CIOU}


cdef fastloss_index _box_stride(cnp.ndarray boxes, int typenum, fastloss_index n,
                                str name) except? -1:
    """The stride in elements from one box to the next of an (n, 4) or (1, 4) array whose
    last axis is contiguous; 0 for one box paired with all n."""
    _check_float(boxes, typenum, name)
    if (cnp.PyArray_NDIM(boxes) != 2 or boxes.shape[1] != 4
            or (boxes.shape[0] != n and boxes.shape[0] != 1)):
        raise ValueError(f"{name}: expected shape ({n}, 4) or (1, 4), "
                         f"got {(<object>boxes).shape}")
    cdef Py_ssize_t itemsize = cnp.PyArray_ITEMSIZE(boxes)
    if boxes.strides[1] != itemsize:
        raise ValueError(f"{name}: the last axis must be contiguous")
    if boxes.strides[0] % itemsize != 0:
        raise ValueError(f"{name}: row stride is not a multiple of the item size")
    if boxes.shape[0] != n:
        return 0
    return boxes.strides[0] // itemsize


cdef int _check_box_grad(object grad, cnp.ndarray boxes1, fastloss_index stride1,
                         cnp.ndarray boxes2, fastloss_index stride2, object others,
                         int typenum, fastloss_index n, str name) except -1:
    """A gradient buffer: C-contiguous (n, 4), writeable, overlapping no input except
    exactly boxes1 or boxes2 (in place: each tile is read before it is written)."""
    if grad is None:
        return 0
    _check_float(grad, typenum, name)
    if cnp.PyArray_NDIM(<cnp.ndarray>grad) != 2 or grad.shape[0] != n or grad.shape[1] != 4:
        raise ValueError(f"{name}: expected shape ({n}, 4), got {grad.shape}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>grad):
        raise ValueError(f"{name}: expected a contiguous array")
    if not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>grad):
        raise ValueError(f"{name}: array is read-only")
    if n == 0:
        return 0
    for boxes, stride in ((boxes1, stride1), (boxes2, stride2)):
        if _may_overlap(grad, boxes) and not (
                stride == 4 and cnp.PyArray_DATA(<cnp.ndarray>grad) == cnp.PyArray_DATA(boxes)):
            raise ValueError(f"{name}: overlaps an input (only exactly boxes1 or boxes2, "
                             f"in place, is supported)")
    for other in others:
        if other is not None and _may_overlap(grad, other):
            raise ValueError(f"{name}: overlaps another argument")
    return 0


def box_run(str mode, str loss, cnp.ndarray boxes1 not None, cnp.ndarray boxes2 not None,
            object grad_output, object loss_per_box, object grad1, object grad2, double eps,
            str reduction, int num_threads, int float_pass=0):
    """Run one box-loss kernel.

    mode: "forward", "backward" or "value_and_grad"; loss: a key of BOX_LOSSES.
    boxes1, boxes2: float32 or float64 (same dtype) of shape (n, 4), or (1, 4) for one
    box paired with every box of the other, the last axis contiguous (rows may have any
    stride).  n is the larger of the two first extents (0 if either is 0).
    grad_output: float64 of shape (n,) (reduction "none" only) or (1,).  loss_per_box
    (reduction "none"): a writeable contiguous (n,) array in the boxes' dtype.  grad1,
    grad2: writeable C-contiguous (n, 4) arrays in the boxes' dtype, or None; either
    may be exactly boxes1 or boxes2 (in place), nothing else may overlap; a gradient mode
    needs at least one.  eps: > 0 and finite.
    float_pass: where the float32 kernels compute pairs in float (csrc/box_body.h): -1
    never (a gradient the caller sums over pairs afterwards: a broadcast box), 0 where
    it pays (ciou), 1 for every loss (the tests).
    Returns the reduced loss as a float (meaningless for backward or "none").
    """
    cdef int dtype = _dtype_code(boxes1, "boxes1")
    cdef int typenum = cnp.PyArray_TYPE(boxes1)
    if mode not in ("forward", "backward", "value_and_grad"):
        raise ValueError(f"mode: unknown {mode!r}")
    if loss not in BOX_LOSSES:
        raise ValueError(f"loss: unknown {loss!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: unknown {reduction!r}")
    if num_threads < 1:
        raise ValueError("num_threads: expected an integer >= 1")
    if not (0.0 < eps < INFINITY):
        raise ValueError(f"eps: expected a finite value > 0, got {eps}")
    if cnp.PyArray_NDIM(boxes1) != 2 or cnp.PyArray_NDIM(boxes2) != 2:
        raise ValueError(f"boxes1, boxes2: expected 2-d arrays, got shapes "
                         f"{(<object>boxes1).shape} and {(<object>boxes2).shape}")
    cdef fastloss_index n = boxes1.shape[0] if boxes1.shape[0] != 1 else boxes2.shape[0]
    cdef fastloss_box_options options
    options.n = n
    options.loss = BOX_LOSSES[loss]
    options.eps = eps
    options.boxes1_stride = _box_stride(boxes1, typenum, n, "boxes1")
    options.boxes2_stride = _box_stride(boxes2, typenum, n, "boxes2")
    options.reduction = REDUCTIONS[reduction]
    options.num_threads = num_threads
    if float_pass not in (-1, 0, 1):
        raise ValueError(f"float_pass: expected -1, 0 or 1, got {float_pass}")
    options.float_pass = float_pass

    cdef fastloss_index grad_output_stride = 0
    if mode != "backward" and reduction == "none":
        if loss_per_box is None:
            raise ValueError("loss_per_box: needed for reduction 'none'")
        _check_vector(loss_per_box, typenum, n, "loss_per_box", True)
        for other in (boxes1, boxes2, grad_output, grad1, grad2):
            if other is not None and n and _may_overlap(loss_per_box, other):
                raise ValueError("loss_per_box: overlaps another argument")
    elif loss_per_box is not None:
        raise ValueError("loss_per_box: only for reduction 'none' with a loss")
    if mode == "forward" and (grad1 is not None or grad2 is not None):
        raise ValueError("grad1, grad2: not written by a forward")
    if mode != "forward":
        if (grad1 is None and grad2 is None) or grad_output is None:
            raise ValueError("grad1 (or grad2) and grad_output are needed for a gradient")
        if grad_output.shape[0] == n and n != 1:
            _check_vector(grad_output, cnp.NPY_FLOAT64, n, "grad_output")
            grad_output_stride = 1
        else:
            _check_vector(grad_output, cnp.NPY_FLOAT64, 1, "grad_output")
        if reduction != "none" and grad_output_stride != 0:
            raise ValueError("grad_output: expected a scalar for reduction 'mean' or 'sum'")
        _check_box_grad(grad1, boxes1, options.boxes1_stride, boxes2, options.boxes2_stride,
                        (grad_output, grad2), typenum, n, "grad1")
        _check_box_grad(grad2, boxes1, options.boxes1_stride, boxes2, options.boxes2_stride,
                        (grad_output, grad1), typenum, n, "grad2")

    cdef const void *boxes1_ptr = cnp.PyArray_DATA(boxes1)
    cdef const void *boxes2_ptr = cnp.PyArray_DATA(boxes2)
    cdef const double *grad_output_ptr = <const double *>_data_or_null(grad_output)
    cdef void *loss_per_box_ptr = _data_or_null(loss_per_box)
    cdef void *grad1_ptr = _data_or_null(grad1)
    cdef void *grad2_ptr = _data_or_null(grad2)
    cdef double total = 0.0
    cdef int which = 0 if mode == "forward" else (1 if mode == "backward" else 2)
    cdef int status

    with nogil:
        if which == 0:
            status = fastloss_box_forward(dtype, &options, boxes1_ptr, boxes2_ptr,
                                          loss_per_box_ptr, &total)
        elif which == 1:
            status = fastloss_box_backward(dtype, &options, boxes1_ptr, boxes2_ptr,
                                           grad_output_ptr, grad_output_stride, grad1_ptr,
                                           grad2_ptr)
        else:
            status = fastloss_box_value_and_grad(dtype, &options, boxes1_ptr, boxes2_ptr,
                                                 grad_output_ptr, grad_output_stride,
                                                 loss_per_box_ptr, &total, grad1_ptr,
                                                 grad2_ptr)
    _check_status(status, loss)
    return total


def box_atan(cnp.ndarray x not None):
    """fastmath.h's atan (as the current SIMD path compiles it) of a contiguous 1-d
    float64 array, for the tests of its accuracy."""
    _check_vector(x, cnp.NPY_FLOAT64, x.shape[0] if cnp.PyArray_NDIM(x) == 1 else -1, "x")
    cdef cnp.ndarray out = numpy.empty(x.shape[0], dtype=numpy.float64)
    cdef fastloss_index n = x.shape[0]
    with nogil:
        fastloss_box_atan_float64(<const double *>cnp.PyArray_DATA(x), n,
                                  <double *>cnp.PyArray_DATA(out))
    return out
