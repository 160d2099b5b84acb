# Pairwise distance and contrastive wrappers, included by _kernels.pyx.

from libc.stdint cimport uint64_t

cdef extern from "contrastive.h" nogil:
    enum:
        FASTLOSS_METRIC_EUCLIDEAN
        FASTLOSS_METRIC_SQEUCLIDEAN
        FASTLOSS_METRIC_COSINE
        FASTLOSS_PAIRS_DISTANCE
        FASTLOSS_PAIRS_CONTRASTIVE
    ctypedef struct fastloss_contrastive_rows_options:
        fastloss_index n_rows
        fastloss_index dim
        int metric
        double eps
        int num_threads
    ctypedef struct fastloss_contrastive_matrix_options:
        fastloss_index n_rows
        fastloss_index n_cols
        fastloss_index dim
        int metric
        int symmetric
        int loss
        double pos_margin
        double neg_margin
        double eps
        double scale
        int num_threads
        int gram_float32
    ctypedef struct fastloss_contrastive_direct:
        const uint64_t *mask
        fastloss_index mask_row_words
        const double *coef
        fastloss_index coef_row_stride
        fastloss_index n_other
        int transposed
    ctypedef struct fastloss_contrastive_nce_options:
        fastloss_index n_rows
        fastloss_index n_cols
        double temperature
        int symmetric
        int num_threads
        const float *q_unit
        const float *k_unit
        fastloss_index dim
    int fastloss_contrastive_nce_float32(
        const fastloss_contrastive_nce_options *options, float *s, fastloss_index s_row_stride,
        const double *scale, fastloss_index scale_stride, double *row_loss, double *col_loss,
        int want_grad)
    int fastloss_contrastive_unit_rows(
        int dtype, const fastloss_contrastive_rows_options *options, const void *x,
        fastloss_index x_row_stride, float *unit, double *norm)
    int fastloss_contrastive_unit_backward(
        int grad_dtype, const fastloss_contrastive_rows_options *options, const float *unit,
        const double *norm, const float *grad_unit, void *grad,
        fastloss_index grad_row_stride)
    void fastloss_contrastive_transpose_float64(
        fastloss_index n_rows, fastloss_index n_cols, const double *source,
        fastloss_index source_row_stride, double *target, fastloss_index target_row_stride,
        int accumulate, int num_threads)
    ctypedef struct fastloss_pair_loss_options:
        fastloss_index n_rows
        fastloss_index dim
        int metric
        double margin
        double p
        double eps
        double norm_eps
        int swap
        int reduction
        int num_threads
        fastloss_index anchor_positive_dim
        fastloss_index anchor_negative_dim
        fastloss_index positive_negative_dim
    int fastloss_contrastive_prepare_rows(
        int dtype, const fastloss_contrastive_rows_options *options, const void *x,
        fastloss_index x_row_stride, const double *shift, double *prepared,
        void *prepared_real, double *norm)
    int fastloss_contrastive_matrix(
        int dtype, const fastloss_contrastive_matrix_options *options, const void *x,
        fastloss_index x_row_stride, const void *y, fastloss_index y_row_stride,
        const double *x_norm, const double *y_norm, const void *gram,
        fastloss_index gram_row_stride, double *direct_coef,
        fastloss_index direct_coef_row_stride, const int64_t *labels,
        const double *grad_output, fastloss_index grad_output_row_stride,
        fastloss_index grad_output_col_stride, void *value, fastloss_index value_row_stride,
        void *coef, fastloss_index coef_row_stride, double *x_sums, double *y_sums,
        uint64_t *direct_mask, uint64_t *nonzero_mask, double *loss, int64_t *n_recomputed,
        int64_t *n_direct, int64_t *n_nonzero)
    int fastloss_contrastive_sparse_product(
        int dtype, const fastloss_contrastive_rows_options *options, const uint64_t *nonzero_mask,
        fastloss_index mask_row_words, const void *coef, fastloss_index coef_row_stride,
        const void *rows, fastloss_index rows_row_stride, void *product,
        fastloss_index product_row_stride)
    int fastloss_contrastive_finish_rows(
        int dtype, const fastloss_contrastive_rows_options *options, const void *prepared,
        fastloss_index prepared_row_stride, const double *sums, const double *norm,
        const void *product, fastloss_index product_row_stride, void *grad,
        fastloss_index grad_row_stride, const fastloss_contrastive_direct *direct,
        const void *rows, fastloss_index rows_row_stride, const void *other,
        fastloss_index other_row_stride, const double *other_norm)
    int fastloss_contrastive_normalize_backward(
        int dtype, const fastloss_contrastive_rows_options *options, const double *normalized,
        const double *norm, const double *grad_normalized, void *grad,
        fastloss_index grad_row_stride)
    int fastloss_contrastive_contrastive(
        int dtype, const fastloss_pair_loss_options *options, const void *x1,
        fastloss_index x1_row_stride, const void *x2, fastloss_index x2_row_stride,
        const double *label, const double *grad_output, fastloss_index grad_output_stride,
        double *loss_per_row, double *loss, void *grad1, fastloss_index grad1_row_stride,
        void *grad2, fastloss_index grad2_row_stride)
    int fastloss_contrastive_triplet_margin(
        int dtype, const fastloss_pair_loss_options *options, const void *anchor,
        fastloss_index anchor_row_stride, const void *positive,
        fastloss_index positive_row_stride, const void *negative,
        fastloss_index negative_row_stride, const double *grad_output,
        fastloss_index grad_output_stride, double *loss_per_row, double *loss,
        void *grad_anchor, fastloss_index grad_anchor_row_stride, void *grad_positive,
        fastloss_index grad_positive_row_stride, void *grad_negative,
        fastloss_index grad_negative_row_stride)


METRICS = {"euclidean": FASTLOSS_METRIC_EUCLIDEAN, "sqeuclidean": FASTLOSS_METRIC_SQEUCLIDEAN,
           "cosine": FASTLOSS_METRIC_COSINE}


cdef int _embedding_typenum(cnp.ndarray x, str name) except -1:
    """A storage type of the kernels (_dtype_code: float32, float64, bfloat16, float16),
    2-d, aligned, native byte order; returns the NumPy type number (the kernels' dtype
    code is _storage_code of it)."""
    if x is None:
        raise TypeError(f"{name}: expected an array, got None")
    _dtype_code(x, name)
    cdef int typenum = cnp.PyArray_TYPE(x)
    _check_float(x, typenum, name)
    if cnp.PyArray_NDIM(x) != 2:
        raise ValueError(f"{name}: expected a 2-d array, got {x.ndim} dimensions")
    return typenum


cdef inline int _aux_typenum(int typenum) noexcept:
    """The type of the arrays the backward products read and write (prepared rows,
    coefficients, values, products: contrastive.h's AUX): the rows' type, float32 for
    half rows."""
    return cnp.NPY_FLOAT32 if _is_half_code(_storage_code(typenum)) else typenum


cdef int _grad_kernel_code(int typenum, cnp.ndarray grad, str name) except -1:
    """The kernels' dtype code for rows of NumPy type `typenum` and a gradient array
    `grad`: of the rows' type, or float32 beside half rows (the _GRAD_FLOAT32 code)."""
    cdef int code = _storage_code(typenum)
    if _is_half_code(code) and grad is not None and cnp.PyArray_TYPE(grad) == cnp.NPY_FLOAT32:
        _check_float(grad, cnp.NPY_FLOAT32, name)
        return _grad_float32_code(code)
    _check_float(grad, typenum, name)
    return code


cdef int _check_metric_and_threads(str metric, int num_threads) except -1:
    if metric not in METRICS:
        raise ValueError(f"metric: unknown {metric!r}")
    if num_threads < 1:
        raise ValueError("num_threads: expected an integer >= 1")
    return 0


cdef inline int _check_matrix(object array, int typenum, fastloss_index n_rows,
                              fastloss_index n_cols, str name, bint writeable) except -1:
    _check_float(array, typenum, name)
    _row_stride(array, n_rows, n_cols, name, writeable)
    return 0


def dist_prepare_rows(cnp.ndarray x not None, str metric, object shift, double eps,
                      bint want_real, int num_threads):
    """Prepared rows of x (N, D): centred on `shift` (float64 (D,)) for the euclidean
    metrics, unit rows for cosine; returns (prepared float64 (N, D), the same rounded to
    x's dtype (float32 for half x) or None, norms float64 (N,): squared norms of the
    prepared rows, or the norms of x for cosine)."""
    cdef int typenum = _embedding_typenum(x, "x")
    _check_metric_and_threads(metric, num_threads)
    cdef fastloss_contrastive_rows_options options
    options.n_rows = x.shape[0]
    options.dim = x.shape[1]
    options.metric = METRICS[metric]
    options.eps = eps
    options.num_threads = num_threads
    cdef fastloss_index x_stride = _row_stride(x, options.n_rows, options.dim, "x")
    if options.metric != FASTLOSS_METRIC_COSINE:
        _check_vector(shift, cnp.NPY_FLOAT64, options.dim, "shift")
    cdef cnp.ndarray prepared = numpy.empty((options.n_rows, options.dim), dtype=numpy.float64)
    cdef cnp.ndarray norm = numpy.empty(options.n_rows, dtype=numpy.float64)
    cdef object prepared_real = None
    if want_real:
        prepared_real = numpy.empty((options.n_rows, options.dim),
                                    dtype=cnp.PyArray_DescrFromType(_aux_typenum(typenum)))
    cdef const void *x_ptr = cnp.PyArray_DATA(x)
    cdef const double *shift_ptr = <const double *>_data_or_null(shift)
    cdef double *prepared_ptr = <double *>cnp.PyArray_DATA(prepared)
    cdef void *real_ptr = _data_or_null(prepared_real)
    cdef double *norm_ptr = <double *>cnp.PyArray_DATA(norm)
    cdef int dtype = _storage_code(typenum), status = 0
    with nogil:
        status = fastloss_contrastive_prepare_rows(dtype, &options, x_ptr, x_stride, shift_ptr,
                                                prepared_ptr, real_ptr, norm_ptr)
    _check_status(status, "pairwise distances")
    return prepared, prepared_real, norm


def dist_matrix(cnp.ndarray x not None, object y, cnp.ndarray x_norm not None, object y_norm,
                cnp.ndarray gram not None,
                object direct_coef, object labels, object grad_output, object value,
                object coef, object x_sums, object y_sums, object direct_mask,
                object nonzero_mask, str metric, str loss, double pos_margin,
                double neg_margin, double eps, double scale, int num_threads):
    """The pass over the pairs (csrc/contrastive.h, step 3).

    x (N, D) and y (M, D) or None (y is x: symmetric); norms float64 from
    dist_prepare_rows; gram float64 (N, M), the upper triangle read when symmetric
    (float32 for float32 data and loss "contrastive": see contrastive.h);
    direct_coef float64 (N, M), writeable, with coef (the direct pairs' coefficients;
    may be gram itself); labels int64 (N,) for loss "contrastive"; grad_output float64
    (N, M) or None (all ones); value and coef (N, M) in x's dtype (float32 for half x) or None; with coef: x_sums float64 (2N,), y_sums (2M,)
    when not symmetric, direct_mask uint64 (N, ceil(M / 64)), nonzero_mask like it or
    None.  Returns (loss sum over the pairs, pairs recomputed from the rows, direct
    pairs, nonzero entries of W off its diagonal).
    """
    cdef int typenum = _embedding_typenum(x, "x")
    _check_metric_and_threads(metric, num_threads)
    if loss not in ("distance", "contrastive"):
        raise ValueError(f"loss: unknown {loss!r}")
    cdef fastloss_contrastive_matrix_options options
    cdef bint symmetric = y is None
    options.n_rows = x.shape[0]
    options.n_cols = x.shape[0] if symmetric else y.shape[0]
    options.dim = x.shape[1]
    options.metric = METRICS[metric]
    options.symmetric = symmetric
    options.loss = FASTLOSS_PAIRS_DISTANCE if loss == "distance" else FASTLOSS_PAIRS_CONTRASTIVE
    options.pos_margin = pos_margin
    options.neg_margin = neg_margin
    options.eps = eps
    options.scale = scale
    options.num_threads = num_threads
    options.gram_float32 = cnp.PyArray_TYPE(gram) == cnp.NPY_FLOAT32
    cdef fastloss_index n = options.n_rows, m = options.n_cols
    if not (pos_margin >= 0.0 and neg_margin >= 0.0 and eps > 0.0):
        raise ValueError("margins must be >= 0 and eps > 0")
    if options.loss == FASTLOSS_PAIRS_CONTRASTIVE:
        if not symmetric:
            raise ValueError("loss 'contrastive' needs the symmetric (y is None) pass")
        _check_vector(labels, cnp.NPY_INT64, n, "labels")
    cdef fastloss_index x_stride = _row_stride(x, n, options.dim, "x")
    cdef fastloss_index y_stride = 0
    if not symmetric:
        _check_float(y, typenum, "y")
        y_stride = _row_stride(y, m, options.dim, "y")
        _check_vector(y_norm, cnp.NPY_FLOAT64, m, "y_norm")
    _check_vector(x_norm, cnp.NPY_FLOAT64, n, "x_norm")
    if options.gram_float32:
        # a float32 Gram: float32 data and the contrastive loss only (contrastive.h)
        if typenum != cnp.NPY_FLOAT32 or options.loss != FASTLOSS_PAIRS_CONTRASTIVE:
            raise TypeError("gram: float32 only for float32 data and the contrastive loss")
        if coef is not None and direct_coef is gram:
            raise ValueError("direct_coef: a float32 gram cannot hold the coefficients")
    _check_float(gram, cnp.NPY_FLOAT32 if options.gram_float32 else cnp.NPY_FLOAT64, "gram")
    cdef fastloss_index gram_stride = _row_stride(gram, n, m, "gram")
    cdef fastloss_index direct_stride = 0
    cdef bint direct_is_gram = False
    if coef is not None:
        _check_float(direct_coef, cnp.NPY_FLOAT64, "direct_coef")
        direct_stride = _row_stride(direct_coef, n, m, "direct_coef", True)
        direct_is_gram = (cnp.PyArray_DATA(direct_coef) == cnp.PyArray_DATA(gram)
                          and direct_stride == gram_stride)
    cdef fastloss_index go_row = 0, go_col = 0
    if grad_output is not None:
        _check_float(grad_output, cnp.NPY_FLOAT64, "grad_output")
        if grad_output.ndim != 2 or grad_output.shape[0] != n or grad_output.shape[1] != m:
            raise ValueError(f"grad_output: expected shape ({n}, {m}), got {grad_output.shape}")
        if grad_output.strides[0] % 8 or grad_output.strides[1] % 8:
            raise ValueError("grad_output: strides are not a multiple of the item size")
        go_row = grad_output.strides[0] // 8
        go_col = grad_output.strides[1] // 8
    cdef fastloss_index value_stride = 0, coef_stride = 0
    cdef int aux_typenum = _aux_typenum(typenum)
    if value is not None:
        _check_float(value, aux_typenum, "value")
        value_stride = _row_stride(value, n, m, "value", True)
    if coef is not None:
        _check_float(coef, aux_typenum, "coef")
        coef_stride = _row_stride(coef, n, m, "coef", True)
        _check_vector(x_sums, cnp.NPY_FLOAT64, 2 * n, "x_sums", True)
        if not symmetric:
            _check_vector(y_sums, cnp.NPY_FLOAT64, 2 * m, "y_sums", True)
        for name, mask in (("direct_mask", direct_mask), ("nonzero_mask", nonzero_mask)):
            if mask is None and name == "nonzero_mask":
                continue
            _check_float(mask, cnp.NPY_UINT64, name)
            if _row_stride(mask, n, (m + 63) // 64, name, True) != (m + 63) // 64:
                raise ValueError(f"{name}: expected a contiguous array")
    for name, out in (("value", value), ("coef", coef),
                      ("direct_coef", direct_coef if coef is not None else None),
                      ("direct_mask", direct_mask if coef is not None else None),
                      ("nonzero_mask", nonzero_mask if coef is not None else None)):
        if out is not None and cnp.PyArray_SIZE(out):
            for other in (x, y, x_norm, y_norm, labels, grad_output,
                          None if (name == "direct_coef" and direct_is_gram) else gram):
                if other is not None and _may_overlap(out, other):
                    raise ValueError(f"{name}: overlaps an input")
    outputs = [a for a in (value, coef, direct_coef if coef is not None else None,
                           direct_mask if coef is not None else None,
                           nonzero_mask if coef is not None else None)
               if a is not None and cnp.PyArray_SIZE(a)]
    for index in range(len(outputs)):
        for other in outputs[index + 1:]:
            if _may_overlap(outputs[index], other):
                raise ValueError("outputs overlap each other")

    cdef const void *x_ptr = cnp.PyArray_DATA(x)
    cdef const void *y_ptr = _data_or_null(y)
    cdef const double *x_norm_ptr = <const double *>cnp.PyArray_DATA(x_norm)
    cdef const double *y_norm_ptr = <const double *>_data_or_null(y_norm)
    cdef const void *gram_ptr = cnp.PyArray_DATA(gram)
    cdef double *direct_ptr = <double *>_data_or_null(direct_coef) if coef is not None else NULL
    cdef const int64_t *labels_ptr = <const int64_t *>_data_or_null(labels)
    cdef const double *go_ptr = <const double *>_data_or_null(grad_output)
    cdef void *value_ptr = _data_or_null(value)
    cdef void *coef_ptr = _data_or_null(coef)
    cdef double *x_sums_ptr = <double *>_data_or_null(x_sums) if coef is not None else NULL
    cdef double *y_sums_ptr = (<double *>_data_or_null(y_sums)
                               if coef is not None and not symmetric else NULL)
    cdef uint64_t *mask_ptr = <uint64_t *>_data_or_null(direct_mask) if coef is not None else NULL
    cdef uint64_t *nonzero_ptr = (<uint64_t *>_data_or_null(nonzero_mask)
                                  if coef is not None else NULL)
    cdef double total = 0.0
    cdef int64_t recomputed = 0, direct = 0, nonzero = 0
    cdef int dtype = _storage_code(typenum), status = 0
    with nogil:
        status = fastloss_contrastive_matrix(
            dtype, &options, x_ptr, x_stride, y_ptr, y_stride, x_norm_ptr, y_norm_ptr,
            gram_ptr, gram_stride, direct_ptr, direct_stride, labels_ptr, go_ptr, go_row,
            go_col, value_ptr, value_stride, coef_ptr, coef_stride, x_sums_ptr, y_sums_ptr,
            mask_ptr, nonzero_ptr, &total, &recomputed, &direct, &nonzero)
    _check_status(status, "pairwise distances")
    return total, recomputed, direct, nonzero


def dist_sparse_product(cnp.ndarray nonzero_mask not None, cnp.ndarray coef not None,
                        cnp.ndarray rows not None, cnp.ndarray product not None,
                        int num_threads):
    """product (N, D) = coef (N, M) @ rows (M, D) over the bits of nonzero_mask (uint64
    (N, ceil(M / 64)), the pass's); coef, rows and product in one float dtype."""
    cdef int typenum = _embedding_typenum(rows, "rows")
    if num_threads < 1:
        raise ValueError("num_threads: expected an integer >= 1")
    if cnp.PyArray_NDIM(coef) != 2:
        raise ValueError(f"coef: expected a 2-d array, got {cnp.PyArray_NDIM(coef)}-d")
    cdef fastloss_contrastive_rows_options options
    options.n_rows = coef.shape[0]
    options.dim = rows.shape[1]
    options.metric = FASTLOSS_METRIC_EUCLIDEAN
    options.eps = 0.0
    options.num_threads = num_threads
    cdef fastloss_index n = options.n_rows, d = options.dim, m = rows.shape[0]
    cdef fastloss_index words = (m + 63) // 64
    _check_float(coef, typenum, "coef")
    cdef fastloss_index coef_stride = _row_stride(coef, n, m, "coef")
    cdef fastloss_index rows_stride = _row_stride(rows, m, d, "rows")
    _check_float(product, typenum, "product")
    cdef fastloss_index product_stride = _row_stride(product, n, d, "product", True)
    _check_float(nonzero_mask, cnp.NPY_UINT64, "nonzero_mask")
    if _row_stride(nonzero_mask, n, words, "nonzero_mask") != words:
        raise ValueError("nonzero_mask: expected a contiguous array")
    if cnp.PyArray_SIZE(product):
        for other in (nonzero_mask, coef, rows):
            if _may_overlap(product, other):
                raise ValueError("product: overlaps an input")
    cdef const uint64_t *mask_ptr = <const uint64_t *>cnp.PyArray_DATA(nonzero_mask)
    cdef const void *coef_ptr = cnp.PyArray_DATA(coef)
    cdef const void *rows_ptr = cnp.PyArray_DATA(rows)
    cdef void *product_ptr = cnp.PyArray_DATA(product)
    cdef int dtype = _storage_code(typenum), status = 0
    with nogil:
        status = fastloss_contrastive_sparse_product(
            dtype, &options, mask_ptr, words, coef_ptr, coef_stride, rows_ptr, rows_stride,
            product_ptr, product_stride)
    _check_status(status, "pairwise distances")


def dist_finish_rows(cnp.ndarray prepared not None, cnp.ndarray sums not None,
                     cnp.ndarray norm not None, cnp.ndarray product not None,
                     cnp.ndarray grad not None, object direct_mask, object direct_coef,
                     bint transposed, cnp.ndarray rows not None, cnp.ndarray other not None,
                     cnp.ndarray other_norm not None, str metric, double eps, int num_threads):
    """Gradient rows from the product W @ P (csrc/contrastive.h, step 5): prepared, product
    and grad (N, D) in the rows' float dtype (grad may be product); for half rows prepared
    and product float32, grad half or float32; sums float64 (2N,), norm
    float64 (N,).  direct_mask (uint64, the pass's) and direct_coef (float64, the pass's
    gram), or None when the pass marked no direct pair; transposed: this side is y of
    the pass.  rows (N, D) and other (M, D): the original rows of this side and of the
    other, other_norm float64 (M,)."""
    cdef int typenum = _embedding_typenum(rows, "rows")
    cdef int aux_typenum = _aux_typenum(typenum)
    _check_float(prepared, aux_typenum, "prepared")
    if cnp.PyArray_NDIM(prepared) != 2:
        raise ValueError("prepared: expected a 2-d array")
    _check_metric_and_threads(metric, num_threads)
    cdef fastloss_contrastive_rows_options options
    options.n_rows = prepared.shape[0]
    options.dim = prepared.shape[1]
    options.metric = METRICS[metric]
    options.eps = eps
    options.num_threads = num_threads
    cdef fastloss_index n = options.n_rows, d = options.dim
    if cnp.PyArray_NDIM(other) != 2:
        raise ValueError(f"other: expected a 2-d array, got {cnp.PyArray_NDIM(other)}-d")
    cdef fastloss_index m = other.shape[0]
    cdef fastloss_index prepared_stride = _row_stride(prepared, n, d, "prepared")
    _check_float(product, aux_typenum, "product")
    cdef fastloss_index product_stride = _row_stride(product, n, d, "product")
    cdef int dtype = _grad_kernel_code(typenum, grad, "out")
    cdef fastloss_index grad_stride = _row_stride(grad, n, d, "out", True)
    _check_vector(sums, cnp.NPY_FLOAT64, 2 * n, "sums")
    _check_vector(norm, cnp.NPY_FLOAT64, n, "norm")
    _check_float(rows, typenum, "rows")
    cdef fastloss_index rows_stride = _row_stride(rows, n, d, "rows")
    _check_float(other, typenum, "other")
    cdef fastloss_index other_stride = _row_stride(other, m, d, "other")
    _check_vector(other_norm, cnp.NPY_FLOAT64, m, "other_norm")
    cdef fastloss_contrastive_direct direct
    cdef fastloss_contrastive_direct *direct_ptr = NULL
    if direct_mask is not None:
        pairs_rows, pairs_cols = (m, n) if transposed else (n, m)
        _check_float(direct_mask, cnp.NPY_UINT64, "direct_mask")
        direct.mask_row_words = (pairs_cols + 63) // 64
        if _row_stride(direct_mask, pairs_rows, direct.mask_row_words,
                       "direct_mask") != direct.mask_row_words:
            raise ValueError("direct_mask: expected a contiguous array")
        _check_float(direct_coef, cnp.NPY_FLOAT64, "direct_coef")
        direct.coef_row_stride = _row_stride(direct_coef, pairs_rows, pairs_cols, "direct_coef")
        direct.mask = <const uint64_t *>cnp.PyArray_DATA(direct_mask)
        direct.coef = <const double *>cnp.PyArray_DATA(direct_coef)
        direct.n_other = m
        direct.transposed = transposed
        direct_ptr = &direct
    cdef bint same = (cnp.PyArray_DATA(grad) == cnp.PyArray_DATA(product)
                      and grad_stride == product_stride)
    if cnp.PyArray_SIZE(grad):
        for other_input in (prepared, product, sums, norm, rows, other, other_norm,
                            direct_mask, direct_coef):
            if other_input is None or (same and other_input is product):
                continue
            if _may_overlap(grad, other_input):
                raise ValueError("out: overlaps an input")
    cdef const void *prepared_ptr = cnp.PyArray_DATA(prepared)
    cdef const double *sums_ptr = <const double *>cnp.PyArray_DATA(sums)
    cdef const double *norm_ptr = <const double *>cnp.PyArray_DATA(norm)
    cdef const void *product_ptr = cnp.PyArray_DATA(product)
    cdef void *grad_ptr = cnp.PyArray_DATA(grad)
    cdef const void *rows_ptr = cnp.PyArray_DATA(rows)
    cdef const void *other_ptr = cnp.PyArray_DATA(other)
    cdef const double *other_norm_ptr = <const double *>cnp.PyArray_DATA(other_norm)
    cdef int status = 0
    with nogil:
        status = fastloss_contrastive_finish_rows(
            dtype, &options, prepared_ptr, prepared_stride, sums_ptr, norm_ptr, product_ptr,
            product_stride, grad_ptr, grad_stride, direct_ptr, rows_ptr, rows_stride,
            other_ptr, other_stride, other_norm_ptr)
    _check_status(status, "pairwise distances")


def dist_normalize_backward(cnp.ndarray normalized not None, cnp.ndarray norm not None,
                            cnp.ndarray grad_normalized not None, cnp.ndarray grad not None,
                            double eps, int num_threads):
    """grad (N, D) float32/float64/bfloat16/float16 (rounded once) from the gradient
    w.r.t. x / max(|x|, eps): normalized
    and grad_normalized contiguous float64 (N, D), norm float64 (N,)."""
    cdef int typenum = _embedding_typenum(grad, "out")
    if num_threads < 1:
        raise ValueError("num_threads: expected an integer >= 1")
    cdef fastloss_contrastive_rows_options options
    options.n_rows = grad.shape[0]
    options.dim = grad.shape[1]
    options.metric = FASTLOSS_METRIC_COSINE
    options.eps = eps
    options.num_threads = num_threads
    cdef fastloss_index n = options.n_rows, d = options.dim
    cdef fastloss_index grad_stride = _row_stride(grad, n, d, "out", True)
    for name, array in (("normalized", normalized), ("grad_normalized", grad_normalized)):
        _check_float(array, cnp.NPY_FLOAT64, name)
        if _row_stride(array, n, d, name) != d:
            raise ValueError(f"{name}: expected a contiguous array")
        if cnp.PyArray_SIZE(grad) and _may_overlap(grad, array):
            raise ValueError("out: overlaps an input")
    _check_vector(norm, cnp.NPY_FLOAT64, n, "norm")
    cdef const double *normalized_ptr = <const double *>cnp.PyArray_DATA(normalized)
    cdef const double *norm_ptr = <const double *>cnp.PyArray_DATA(norm)
    cdef const double *g_ptr = <const double *>cnp.PyArray_DATA(grad_normalized)
    cdef void *grad_ptr = cnp.PyArray_DATA(grad)
    cdef int dtype = _storage_code(typenum), status = 0
    with nogil:
        status = fastloss_contrastive_normalize_backward(dtype, &options, normalized_ptr, norm_ptr,
                                                      g_ptr, grad_ptr, grad_stride)
    _check_status(status, "pairwise distances")


def dist_transpose(cnp.ndarray source not None, cnp.ndarray target not None, bint accumulate,
                   int num_threads):
    """target (M, N) = source (N, M) transposed (float64, contiguous rows), or target +=
    that with accumulate."""
    if num_threads < 1:
        raise ValueError("num_threads: expected an integer >= 1")
    _check_float(source, cnp.NPY_FLOAT64, "source")
    _check_float(target, cnp.NPY_FLOAT64, "target")
    if cnp.PyArray_NDIM(source) != 2:
        raise ValueError("source: expected a 2-d array")
    cdef fastloss_index n = source.shape[0], m = source.shape[1]
    cdef fastloss_index source_stride = _row_stride(source, n, m, "source")
    cdef fastloss_index target_stride = _row_stride(target, m, n, "target", True)
    if cnp.PyArray_SIZE(target) and _may_overlap(source, target):
        raise ValueError("target: overlaps source")
    cdef const double *source_ptr = <const double *>cnp.PyArray_DATA(source)
    cdef double *target_ptr = <double *>cnp.PyArray_DATA(target)
    with nogil:
        fastloss_contrastive_transpose_float64(n, m, source_ptr, source_stride, target_ptr,
                                            target_stride, accumulate, num_threads)


cdef fastloss_index _grad_output_stride(object grad_output, fastloss_index n,
                                        str reduction) except -1:
    """Stride of the per-row upstream gradient: 1 for n values, 0 for one."""
    if grad_output.shape[0] == n and n != 1:
        _check_vector(grad_output, cnp.NPY_FLOAT64, n, "grad_output")
        if reduction != "none":
            raise ValueError("grad_output: expected a scalar for reduction 'mean' or 'sum'")
        return 1
    _check_vector(grad_output, cnp.NPY_FLOAT64, 1, "grad_output")
    return 0


def dist_pair_loss_run(str loss, tuple rows, object label, object grad_output,
                       object loss_per_row, tuple grads, str metric, double margin, double p,
                       double eps, double norm_eps, bint swap, str reduction, int num_threads,
                       tuple pair_dims=None):
    """Contrastive (loss "contrastive", rows (x1, x2), label float64 (N,)) or triplet
    margin (loss "triplet", rows (anchor, positive, negative)) over row pairs.

    rows: (N, D) arrays of one float dtype with contiguous rows (half: read in place);
    grad_output float64 (N,) or (1,), needed with grads; loss_per_row float64 (N,) or
    None; grads: a tuple of (N, D) writeable arrays of the rows' dtype (or all float32
    beside half rows), or () for the forward.  pair_dims
    (triplet): the lengths of the differences (anchor, positive), (anchor, negative),
    (positive, negative), each D or 1 (contrastive.h); None: all D.  Returns the reduced
    loss (meaningless for "none").
    """
    if loss not in ("contrastive", "triplet"):
        raise ValueError(f"loss: unknown {loss!r}")
    cdef int n_inputs = 2 if loss == "contrastive" else 3
    if len(rows) != n_inputs or len(grads) not in (0, n_inputs):
        raise ValueError(f"{loss}: expected {n_inputs} row arrays and as many gradients")
    _check_metric_and_threads(metric, num_threads)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: unknown {reduction!r}")
    if not (margin >= 0.0 and norm_eps > 0.0):
        raise ValueError("margin must be >= 0")
    if loss == "contrastive" and not eps >= 0.0:
        raise ValueError("eps must be >= 0")
    if loss == "triplet" and (p != p or not (-float("inf") < eps < float("inf"))):
        raise ValueError("p: expected a number or +-inf, not NaN, and a finite eps")
    cdef int typenum = _embedding_typenum(rows[0], "x1" if loss == "contrastive" else "anchor")
    cdef fastloss_pair_loss_options options
    options.n_rows = rows[0].shape[0]
    options.dim = rows[0].shape[1]
    options.metric = METRICS[metric]
    options.margin = margin
    options.p = p
    options.eps = eps
    options.norm_eps = norm_eps
    options.swap = swap
    options.reduction = REDUCTIONS[reduction]
    options.num_threads = num_threads
    cdef fastloss_index n = options.n_rows, d = options.dim
    if pair_dims is None:
        pair_dims = (d, d, d)
    if len(pair_dims) != 3 or any(length != d and length != 1 for length in pair_dims):
        raise ValueError(f"pair_dims: expected three lengths, each {d} or 1, got {pair_dims}")
    if loss == "triplet" and d == 0 and not (0.0 <= p < float("inf")):
        raise ValueError(f"p: the {p} norm of no elements is not defined (as torch)")
    options.anchor_positive_dim = pair_dims[0]
    options.anchor_negative_dim = pair_dims[1]
    options.positive_negative_dim = pair_dims[2]
    cdef fastloss_index row_strides[3]
    cdef fastloss_index grad_strides[3]
    cdef const void *row_ptrs[3]
    cdef void *grad_ptrs[3]
    cdef int index
    for index in range(n_inputs):
        _check_float(rows[index], typenum, f"input {index}")
        row_strides[index] = _row_stride(rows[index], n, d, f"input {index}")
        row_ptrs[index] = cnp.PyArray_DATA(rows[index])
        grad_ptrs[index] = NULL
        grad_strides[index] = 0
    if loss == "contrastive":
        _check_vector(label, cnp.NPY_FLOAT64, n, "label")
    if loss_per_row is not None:
        _check_vector(loss_per_row, cnp.NPY_FLOAT64, n, "loss_per_row", True)
    cdef fastloss_index go_stride = 0
    cdef int dtype = _storage_code(typenum), status = 0
    if grads:
        if grad_output is None:
            raise ValueError("grad_output: needed for a gradient")
        go_stride = _grad_output_stride(grad_output, n, reduction)
        dtype = _grad_kernel_code(typenum, grads[0], "out")
        for index in range(n_inputs):
            _check_float(grads[index], cnp.PyArray_TYPE(grads[0]), "out")
            grad_strides[index] = _row_stride(grads[index], n, d, "out", True)
            grad_ptrs[index] = cnp.PyArray_DATA(grads[index])
            if cnp.PyArray_SIZE(grads[index]):
                for other in rows + grads[:index] + tuple(
                        a for a in (label, grad_output, loss_per_row) if a is not None):
                    if _may_overlap(grads[index], other):
                        raise ValueError("out: overlaps an input or another gradient")
    cdef const double *label_ptr = <const double *>_data_or_null(label)
    cdef const double *go_ptr = <const double *>_data_or_null(grad_output) if grads else NULL
    cdef double *per_row_ptr = <double *>_data_or_null(loss_per_row)
    cdef double total = 0.0
    cdef bint contrastive = loss == "contrastive"
    with nogil:
        if contrastive:
            status = fastloss_contrastive_contrastive(
                dtype, &options, row_ptrs[0], row_strides[0], row_ptrs[1], row_strides[1],
                label_ptr, go_ptr, go_stride, per_row_ptr, &total, grad_ptrs[0],
                grad_strides[0], grad_ptrs[1], grad_strides[1])
        else:
            status = fastloss_contrastive_triplet_margin(
                dtype, &options, row_ptrs[0], row_strides[0], row_ptrs[1], row_strides[1],
                row_ptrs[2], row_strides[2], go_ptr, go_stride, per_row_ptr, &total,
                grad_ptrs[0], grad_strides[0], grad_ptrs[1], grad_strides[1], grad_ptrs[2],
                grad_strides[2])
    _check_status(status, loss)
    return total


# ---------------------------------------------------------------------------------------
# InfoNCE over float32 products
# ---------------------------------------------------------------------------------------

def nce_unit_rows(cnp.ndarray x not None, double eps, int num_threads):
    """(unit rows float32 (N, D) contiguous, norms float64 (N,)) of float32, bfloat16 or
    float16 rows x (read in place): x / max(|x|, eps), the norm in double."""
    cdef int code = _dtype_code(x, "x")
    if code == FASTLOSS_FLOAT64:
        raise TypeError("x: expected float32, bfloat16 or float16 rows, got float64")
    _check_float(x, cnp.PyArray_TYPE(x), "x")
    if cnp.PyArray_NDIM(x) != 2:
        raise ValueError("x: expected a 2-d array")
    if num_threads < 1:
        raise ValueError("num_threads: expected an integer >= 1")
    cdef fastloss_contrastive_rows_options options
    options.n_rows = x.shape[0]
    options.dim = x.shape[1]
    options.metric = FASTLOSS_METRIC_COSINE
    options.eps = eps
    options.num_threads = num_threads
    cdef fastloss_index x_stride = _row_stride(x, options.n_rows, options.dim, "x")
    cdef cnp.ndarray unit = numpy.empty((options.n_rows, options.dim), dtype=numpy.float32)
    cdef cnp.ndarray norm = numpy.empty(options.n_rows, dtype=numpy.float64)
    cdef const void *x_ptr = cnp.PyArray_DATA(x)
    cdef float *unit_ptr = <float *>cnp.PyArray_DATA(unit)
    cdef double *norm_ptr = <double *>cnp.PyArray_DATA(norm)
    cdef int status = 0
    with nogil:
        status = fastloss_contrastive_unit_rows(code, &options, x_ptr, x_stride, unit_ptr,
                                                norm_ptr)
    _check_status(status, "info_nce")
    return unit, norm


def nce_unit_backward(cnp.ndarray unit not None, cnp.ndarray norm not None,
                      cnp.ndarray grad_unit not None, cnp.ndarray grad not None, double eps,
                      int num_threads):
    """grad (N, D) float32, bfloat16 or float16 (each element rounded once from double) =
    the backward of x / max(|x|, eps) applied to grad_unit: unit and grad_unit contiguous
    float32 (N, D), norm float64 (N,)."""
    cdef int code = _dtype_code(grad, "out")
    if code == FASTLOSS_FLOAT64:
        raise TypeError("out: expected float32, bfloat16 or float16, got float64")
    _check_float(grad, cnp.PyArray_TYPE(grad), "out")
    if cnp.PyArray_NDIM(grad) != 2:
        raise ValueError("out: expected a 2-d array")
    if num_threads < 1:
        raise ValueError("num_threads: expected an integer >= 1")
    cdef fastloss_contrastive_rows_options options
    options.n_rows = grad.shape[0]
    options.dim = grad.shape[1]
    options.metric = FASTLOSS_METRIC_COSINE
    options.eps = eps
    options.num_threads = num_threads
    cdef fastloss_index n = options.n_rows, d = options.dim
    cdef fastloss_index grad_stride = _row_stride(grad, n, d, "out", True)
    for name, array in (("unit", unit), ("grad_unit", grad_unit)):
        _check_float(array, cnp.NPY_FLOAT32, name)
        if cnp.PyArray_NDIM(array) != 2 or _row_stride(array, n, d, name) != d:
            raise ValueError(f"{name}: expected a contiguous array of shape {(n, d)}")
        if cnp.PyArray_SIZE(grad) and _may_overlap(grad, array):
            raise ValueError("out: overlaps an input")
    _check_vector(norm, cnp.NPY_FLOAT64, n, "norm")
    cdef const float *unit_ptr = <const float *>cnp.PyArray_DATA(unit)
    cdef const double *norm_ptr = <const double *>cnp.PyArray_DATA(norm)
    cdef const float *g_ptr = <const float *>cnp.PyArray_DATA(grad_unit)
    cdef void *grad_ptr = cnp.PyArray_DATA(grad)
    cdef int status = 0
    with nogil:
        status = fastloss_contrastive_unit_backward(code, &options, unit_ptr, norm_ptr, g_ptr,
                                                    grad_ptr, grad_stride)
    _check_status(status, "info_nce")


def nce_softmax(cnp.ndarray s not None, double temperature, bint symmetric, object scale,
                bint want_grad, int num_threads, object q_unit=None, object k_unit=None):
    """InfoNCE's softmax over s (N, M) float32, the unit rows' products (contiguous
    rows, M >= N): returns (row losses, column losses or None), float64 (N,), and with
    want_grad writes over s the gradient of sum_i scale_i (row_i [+ column_i]) with
    respect to s (scale float64: N values, or one).  Given the unit rows q_unit (N, D)
    and k_unit (M, D) (contiguous float32) whose products s holds, the entries that
    carry their row's (or column's) softmax weight are first recomputed in float64
    (csrc/contrastive.h)."""
    _check_float(s, cnp.NPY_FLOAT32, "s")
    if cnp.PyArray_NDIM(s) != 2:
        raise ValueError("s: expected a 2-d array")
    if num_threads < 1:
        raise ValueError("num_threads: expected an integer >= 1")
    cdef fastloss_contrastive_nce_options options
    options.n_rows = s.shape[0]
    options.n_cols = s.shape[1]
    options.temperature = temperature
    options.symmetric = symmetric
    options.num_threads = num_threads
    cdef fastloss_index n = options.n_rows
    if options.n_cols < n or (symmetric and options.n_cols != n):
        raise ValueError("s: expected at least as many columns as rows (as many, symmetric)")
    if not (temperature > 0) or not (1.0 / temperature < 3.4e38):
        raise ValueError("temperature: expected 1 / temperature finite in float32")
    cdef fastloss_index s_stride = _row_stride(s, n, options.n_cols, "s", True)
    options.q_unit = NULL
    options.k_unit = NULL
    options.dim = 0
    if (q_unit is None) != (k_unit is None):
        raise ValueError("q_unit, k_unit: expected both or neither")
    if q_unit is not None:
        for name, array, rows in (("q_unit", q_unit, n), ("k_unit", k_unit, options.n_cols)):
            _check_float(array, cnp.NPY_FLOAT32, name)
            if (cnp.PyArray_NDIM(array) != 2 or array.shape[0] != rows
                    or array.shape[1] != q_unit.shape[1]
                    or _row_stride(array, rows, array.shape[1], name) != array.shape[1]):
                raise ValueError(f"{name}: expected a contiguous array of shape "
                                 f"{(rows, q_unit.shape[1])}")
            if cnp.PyArray_SIZE(array) and _may_overlap(s, array):
                raise ValueError("s: overlaps an input")
        options.q_unit = <const float *>cnp.PyArray_DATA(q_unit)
        options.k_unit = <const float *>cnp.PyArray_DATA(k_unit)
        options.dim = q_unit.shape[1]
    cdef fastloss_index scale_stride = 1
    if scale.shape[0] == 1 and n != 1:
        scale_stride = 0
        _check_vector(scale, cnp.NPY_FLOAT64, 1, "scale")
    else:
        _check_vector(scale, cnp.NPY_FLOAT64, n, "scale")
    cdef cnp.ndarray row_loss = numpy.empty(n, dtype=numpy.float64)
    cdef object col_loss = numpy.empty(n, dtype=numpy.float64) if symmetric else None
    cdef float *s_ptr = <float *>cnp.PyArray_DATA(s)
    cdef const double *scale_ptr = <const double *>cnp.PyArray_DATA(scale)
    cdef double *row_ptr = <double *>cnp.PyArray_DATA(row_loss)
    cdef double *col_ptr = <double *>_data_or_null(col_loss)
    cdef int status = 0
    with nogil:
        status = fastloss_contrastive_nce_float32(&options, s_ptr, s_stride, scale_ptr,
                                                  scale_stride, row_ptr, col_ptr, want_grad)
    _check_status(status, "info_nce")
    return row_loss, col_loss
