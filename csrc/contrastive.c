/*
 * contrastive.c -- pairwise distances, contrastive losses and the triplet margin
 * loss, for every storage type of storage.h (float32, float64, bfloat16, float16).
 *
 * Metrics, for rows x and y:
 *   euclidean    d = |x - y|
 *   sqeuclidean  d = |x - y|**2
 *   cosine       d = 1 - x^ . y^,   x^ = x / max(|x|, eps)   (torch's F.normalize,
 *                eps = 1e-12: a zero row has x^ = 0, so d = 1 to everything and a
 *                finite gradient, 1 / eps times the other row's direction)
 * The functions of row pairs (contrastive, triplet) add torch's small eps to
 * the difference, d = |x - y + eps|_p (F.pairwise_distance), so the gradient
 * at zero distance is finite (a unit vector).  The all-pairs functions follow
 * torch.cdist instead: no eps, and no gradient through a zero distance.
 *
 * Losses:
 *   contrastive (Hadsell, Chopra & LeCun 2006), label y in [0, 1]:
 *     0.5 (y d**2 + (1 - y) relu(margin - d)**2)
 *   contrastive over all pairs i < j of a batch, y_ij = [label_i == label_j]:
 *     y_ij relu(d_ij - pos_margin)**2 + (1 - y_ij) relu(neg_margin - d_ij)**2
 *   triplet margin (Balntas et al. 2016; torch.nn.functional.triplet_margin_loss):
 *     max(margin + d(a, p) - d(a, n), 0),  d(a, n) -> min(d(a, n), d(p, n)) with swap,
 *     d(u, v) = |u - v + eps|_p for any p torch's vector_norm takes (contrastive_internal.h)
 *
 * All pairs from a Gram matrix.  With p_i the prepared rows (centred for the
 * euclidean metrics: distances do not change under a shift, and the shift
 * keeps |p|**2 small next to the distances; unit rows for cosine),
 *   q_ij = |p_i|**2 + |p_j|**2 - 2 p_i . p_j,   c_ij = p_i . p_j,
 * where the dot products come from one BLAS product in double (the caller's).
 * Cancellation makes q_ij inaccurate for close points, so every pair carries
 * an error bound and is recomputed from the rows (in double, from the
 * differences) when the bound could show in the result:
 *   |error(p_i . p_j)| <= gamma |p_i| |p_j|,   gamma = lambda sqrt(D) u,
 * u = 2**-53 and lambda = 7: Higham & Mary, "A new approach to probabilistic
 * rounding error analysis", SIAM J. Sci. Comput. 41(5), 2019, Thm 3.1 (any
 * summation order, and the bound on sum |a_k b_k| relaxed to |a| |b|), holds
 * with probability at least 1 - 2 D exp(-lambda**2 / 2), above 1 - 1e-7 for
 * D <= 10**4.  Then q_ij is off by at most E = 3 (gamma + 2u) (|p_i|**2 +
 * |p_j|**2) (the two norms and the product, with room for the prepared rows'
 * rounding), c_ij by E = 3 (gamma + 2u).  With E_d that bound
 * carried to d (E / sqrt(q) for euclidean) and h_ij the depth inside the
 * pair's hinge (d - pos_margin or neg_margin - d):
 *   h_ij < -E_d                        the pair is outside its hinge: loss 0
 *                                      and no gradient, exactly, whatever d is;
 * otherwise the pair is recomputed from the rows when
 *   q_ij <= E / tau  (cosine: 1 - c_ij <= E / tau)      (close points), or
 *   h_ij <= 2 E_d / tau                                   (next to a margin)
 * so that every kept distance, and every loss and coefficient derived from
 * it, has relative error below tau: half a float32 ulp for float32 data,
 * 2.5e-13 (a quarter of the float64 accuracy contract) for float64.  q is
 * clamped at zero.  Random embeddings with D up to a few thousand recompute
 * no pair at all; a batch of near-duplicates recomputes them all (the cost of
 * a double-precision distance matrix).
 *
 * Gradients.  Each pair gets one coefficient w_ij (the upstream gradient times
 * d value / d d, times 1 / d for euclidean, 2 for sqeuclidean), and
 *   euclidean metrics: grad_i = sum_j w_ij (p_i - p_j) = r_i p_i - (W P)_i,
 *   cosine: grad x^_i = -(W P)_i, through x^ = x / |x|:
 *     grad_i = ((r_i - t_i) p_i - (W P)_i) / |x_i|,
 * with r_i = sum_j w_ij and t_i = sum_j w_ij d_ij: the projection
 * (1 - x^ x^T) written with the known d_ij instead of a dot product that
 * cancels.  W P is the second BLAS product (the caller's); r and t are summed
 * here from the coefficients as stored, so the two agree.  The product gives
 * a pair's pull w (p_i - p_j) to about u |w| (|p_i| + |p_j|), u of the
 * storage dtype, which is not small next to the pull itself when the points
 * are close: pairs with |p_i - p_j| < k (|p_i| + |p_j|) (cosine: |x^_i - x^_j|
 * < 2k), k = u / tau_g, leave the product (w_ij = 0 there) and their pull is
 * summed from the rows in double when the gradient is finished.  tau_g is
 * 2**-20 for float32 (the pull to about 1e-6, the gradient contract), so
 * k = 1/16; for float64 it is tau, so k = 4.4e-4.  The test is written on q:
 * q < 2 k**2 (|p_i|**2 + |p_j|**2) (cosine: d < 2 k**2), DIRECT_GRADIENT_RATIO
 * = 2 k**2.  Pairs with no gradient (exact duplicates, losses outside their
 * hinge) never need it.
 *
 * Determinism.  The pass runs over square tiles of pairs; each tile sums its
 * losses, and its part of every row and column sum, in a fixed order into a
 * slot of its own, and the slots are then added in tile order.  The tiles
 * depend on N and M alone, so the results are identical for any thread count.
 */
#include "contrastive_internal.h"

#define FASTLOSS_ISA baseline
#include "contrastive_impl.h"

/* Every operation's kernels by storage type (enum fastloss_dtype).  The pass, the
 * sparse product and the row kernels are those this CPU runs best:
 * fastloss_contrastive_select fills their slots (see fastloss_select_kernels); baseline
 * until then.  A new storage type is one more line in each list. */
static struct {
    fastloss_contrastive_matrix_kernel matrix[FASTLOSS_N_DTYPES];
    fastloss_contrastive_sparse_product_kernel sparse_product[FASTLOSS_N_DTYPES];
    fastloss_contrastive_prepare_rows_kernel prepare_rows[FASTLOSS_N_DTYPES];
    fastloss_contrastive_finish_rows_kernel finish_rows[FASTLOSS_N_DTYPES];
    fastloss_contrastive_normalize_backward_kernel normalize_backward[FASTLOSS_N_DTYPES];
    fastloss_contrastive_contrastive_kernel contrastive[FASTLOSS_N_DTYPES];
    fastloss_contrastive_triplet_margin_kernel triplet_margin[FASTLOSS_N_DTYPES];
    fastloss_contrastive_nce_kernel nce_float32;
} distance_kernels = {
    /* the pass and the sparse product write no gradient: a half type's float32-gradient
     * code shares the half code's */
#define FL_BY_STORAGE_(prefix, suffix)                                                     \
    {[FASTLOSS_FLOAT32] = prefix##_float32##suffix,                                        \
     [FASTLOSS_FLOAT64] = prefix##_float64##suffix,                                        \
     [FASTLOSS_BFLOAT16] = prefix##_bfloat16##suffix,                                      \
     [FASTLOSS_FLOAT16] = prefix##_float16##suffix,                                        \
     [FASTLOSS_BFLOAT16_GRAD_FLOAT32] = prefix##_bfloat16##suffix,                         \
     [FASTLOSS_FLOAT16_GRAD_FLOAT32] = prefix##_float16##suffix}
    .matrix = FL_BY_STORAGE_(fastloss_contrastive_matrix, _baseline),
    .sparse_product = FL_BY_STORAGE_(fastloss_contrastive_sparse_product, _baseline),
#undef FL_BY_STORAGE_
    /* the row kernels: one per dtype code (those of a half type and of its
     * float32-gradient code differ in the gradient's type alone) */
#define FL_BY_DTYPE_(kernel)                                                               \
    {[FASTLOSS_FLOAT32] = fastloss_contrastive_##kernel##_float32_baseline,                \
     [FASTLOSS_FLOAT64] = fastloss_contrastive_##kernel##_float64_baseline,                \
     [FASTLOSS_BFLOAT16] = fastloss_contrastive_##kernel##_bfloat16_baseline,              \
     [FASTLOSS_FLOAT16] = fastloss_contrastive_##kernel##_float16_baseline,                \
     [FASTLOSS_BFLOAT16_GRAD_FLOAT32] = fastloss_contrastive_##kernel##_bfloat16_grad32_baseline, \
     [FASTLOSS_FLOAT16_GRAD_FLOAT32] = fastloss_contrastive_##kernel##_float16_grad32_baseline}
    .prepare_rows = FL_BY_DTYPE_(distance_prepare_rows),
    .finish_rows = FL_BY_DTYPE_(distance_finish_rows),
    .normalize_backward = FL_BY_DTYPE_(distance_normalize_backward),
    .contrastive = FL_BY_DTYPE_(distance_contrastive),
    .triplet_margin = FL_BY_DTYPE_(distance_triplet_margin),
#undef FL_BY_DTYPE_
    .nce_float32 = fastloss_contrastive_nce_float32_baseline,
};

void fastloss_contrastive_select(int level)
{
#define FL_SELECT_(kernel, code, tag)                                                       \
    distance_kernels.kernel[code] = FASTLOSS_PICK(fastloss_contrastive_##kernel##_##tag, level)
    FL_SELECT_(matrix, FASTLOSS_FLOAT32, float32);
    FL_SELECT_(matrix, FASTLOSS_FLOAT64, float64);
    FL_SELECT_(matrix, FASTLOSS_BFLOAT16, bfloat16);
    FL_SELECT_(matrix, FASTLOSS_FLOAT16, float16);
    FL_SELECT_(matrix, FASTLOSS_BFLOAT16_GRAD_FLOAT32, bfloat16);
    FL_SELECT_(matrix, FASTLOSS_FLOAT16_GRAD_FLOAT32, float16);
    FL_SELECT_(sparse_product, FASTLOSS_FLOAT32, float32);
    FL_SELECT_(sparse_product, FASTLOSS_FLOAT64, float64);
    FL_SELECT_(sparse_product, FASTLOSS_BFLOAT16, bfloat16);
    FL_SELECT_(sparse_product, FASTLOSS_FLOAT16, float16);
    FL_SELECT_(sparse_product, FASTLOSS_BFLOAT16_GRAD_FLOAT32, bfloat16);
    FL_SELECT_(sparse_product, FASTLOSS_FLOAT16_GRAD_FLOAT32, float16);
#undef FL_SELECT_
    /* the row kernels, per dtype code (contrastive_impl.h) */
#define FL_SELECT_ROWS_(kernel, code, tag)                                                  \
    distance_kernels.kernel[code] =                                                         \
        FASTLOSS_PICK(fastloss_contrastive_distance_##kernel##_##tag, level)
#define FL_SELECT_ROWS_ALL_(kernel)                                                         \
    FL_SELECT_ROWS_(kernel, FASTLOSS_FLOAT32, float32);                                     \
    FL_SELECT_ROWS_(kernel, FASTLOSS_FLOAT64, float64);                                     \
    FL_SELECT_ROWS_(kernel, FASTLOSS_BFLOAT16, bfloat16);                                   \
    FL_SELECT_ROWS_(kernel, FASTLOSS_FLOAT16, float16);                                     \
    FL_SELECT_ROWS_(kernel, FASTLOSS_BFLOAT16_GRAD_FLOAT32, bfloat16_grad32);               \
    FL_SELECT_ROWS_(kernel, FASTLOSS_FLOAT16_GRAD_FLOAT32, float16_grad32)
    FL_SELECT_ROWS_ALL_(prepare_rows);
    FL_SELECT_ROWS_ALL_(finish_rows);
    FL_SELECT_ROWS_ALL_(normalize_backward);
    FL_SELECT_ROWS_ALL_(contrastive);
    FL_SELECT_ROWS_ALL_(triplet_margin);
#undef FL_SELECT_ROWS_ALL_
#undef FL_SELECT_ROWS_
    distance_kernels.nce_float32 = FASTLOSS_PICK(fastloss_contrastive_nce_float32, level);
}

/* The entry points: the kernel of the dtype code, or FASTLOSS_ERROR_BAD_DTYPE. */

int fastloss_contrastive_prepare_rows(int dtype, const fastloss_contrastive_rows_options *options,
                                   const void *x, fastloss_index x_row_stride,
                                   const double *shift, double *prepared, void *prepared_real,
                                   double *norm)
{
    if (!fastloss_dtype_known(dtype) || !distance_kernels.prepare_rows[dtype])
        return FASTLOSS_ERROR_BAD_DTYPE;
    return distance_kernels.prepare_rows[dtype](options, x, x_row_stride, shift, prepared,
                                                prepared_real, norm);
}

int fastloss_contrastive_matrix(int dtype, const fastloss_contrastive_matrix_options *options,
                             const void *x, fastloss_index x_row_stride, const void *y,
                             fastloss_index y_row_stride, const double *x_norm,
                             const double *y_norm, const void *gram,
                             fastloss_index gram_row_stride, double *direct_coef,
                             fastloss_index direct_coef_row_stride, const int64_t *labels,
                             const double *grad_output, fastloss_index grad_output_row_stride,
                             fastloss_index grad_output_col_stride, void *value,
                             fastloss_index value_row_stride, void *coef,
                             fastloss_index coef_row_stride, double *x_sums, double *y_sums,
                             uint64_t *direct_mask, uint64_t *nonzero_mask, double *loss,
                             int64_t *n_recomputed, int64_t *n_direct, int64_t *n_nonzero)
{
    if (!fastloss_dtype_known(dtype) || !distance_kernels.matrix[dtype])
        return FASTLOSS_ERROR_BAD_DTYPE;
    return distance_kernels.matrix[dtype](options, x, x_row_stride, y, y_row_stride, x_norm, y_norm,
                                          gram, gram_row_stride, direct_coef,
                                          direct_coef_row_stride, labels, grad_output,
                                          grad_output_row_stride, grad_output_col_stride, value,
                                          value_row_stride, coef, coef_row_stride, x_sums, y_sums,
                                          direct_mask, nonzero_mask, loss, n_recomputed, n_direct,
                                          n_nonzero);
}

int fastloss_contrastive_sparse_product(int dtype, const fastloss_contrastive_rows_options *options,
                                     const uint64_t *nonzero_mask, fastloss_index mask_row_words,
                                     const void *coef, fastloss_index coef_row_stride,
                                     const void *rows, fastloss_index rows_row_stride,
                                     void *product, fastloss_index product_row_stride)
{
    if (!fastloss_dtype_known(dtype) || !distance_kernels.sparse_product[dtype])
        return FASTLOSS_ERROR_BAD_DTYPE;
    return distance_kernels.sparse_product[dtype](options, nonzero_mask, mask_row_words, coef,
                                                  coef_row_stride, rows, rows_row_stride, product,
                                                  product_row_stride);
}

int fastloss_contrastive_finish_rows(int dtype, const fastloss_contrastive_rows_options *options,
                                  const void *prepared, fastloss_index prepared_row_stride,
                                  const double *sums, const double *norm, const void *product,
                                  fastloss_index product_row_stride, void *grad,
                                  fastloss_index grad_row_stride,
                                  const fastloss_contrastive_direct *direct, const void *rows,
                                  fastloss_index rows_row_stride, const void *other,
                                  fastloss_index other_row_stride, const double *other_norm)
{
    if (!fastloss_dtype_known(dtype) || !distance_kernels.finish_rows[dtype])
        return FASTLOSS_ERROR_BAD_DTYPE;
    return distance_kernels.finish_rows[dtype](options, prepared, prepared_row_stride, sums, norm,
                                               product, product_row_stride, grad, grad_row_stride,
                                               direct, rows, rows_row_stride, other,
                                               other_row_stride, other_norm);
}

int fastloss_contrastive_normalize_backward(int dtype, const fastloss_contrastive_rows_options *options,
                                         const double *normalized, const double *norm,
                                         const double *grad_normalized, void *grad,
                                         fastloss_index grad_row_stride)
{
    if (!fastloss_dtype_known(dtype) || !distance_kernels.normalize_backward[dtype])
        return FASTLOSS_ERROR_BAD_DTYPE;
    return distance_kernels.normalize_backward[dtype](options, normalized, norm, grad_normalized,
                                                      grad, grad_row_stride);
}

int fastloss_contrastive_contrastive(int dtype, const fastloss_pair_loss_options *options,
                                  const void *x1, fastloss_index x1_row_stride, const void *x2,
                                  fastloss_index x2_row_stride, const double *label,
                                  const double *grad_output, fastloss_index grad_output_stride,
                                  double *loss_per_row, double *loss, void *grad1,
                                  fastloss_index grad1_row_stride, void *grad2,
                                  fastloss_index grad2_row_stride)
{
    if (!fastloss_dtype_known(dtype) || !distance_kernels.contrastive[dtype])
        return FASTLOSS_ERROR_BAD_DTYPE;
    return distance_kernels.contrastive[dtype](options, x1, x1_row_stride, x2, x2_row_stride, label,
                                               grad_output, grad_output_stride, loss_per_row, loss,
                                               grad1, grad1_row_stride, grad2, grad2_row_stride);
}

int fastloss_contrastive_triplet_margin(int dtype, const fastloss_pair_loss_options *options,
                                     const void *anchor, fastloss_index anchor_row_stride,
                                     const void *positive, fastloss_index positive_row_stride,
                                     const void *negative, fastloss_index negative_row_stride,
                                     const double *grad_output, fastloss_index grad_output_stride,
                                     double *loss_per_row, double *loss, void *grad_anchor,
                                     fastloss_index grad_anchor_row_stride, void *grad_positive,
                                     fastloss_index grad_positive_row_stride, void *grad_negative,
                                     fastloss_index grad_negative_row_stride)
{
    if (!fastloss_dtype_known(dtype) || !distance_kernels.triplet_margin[dtype])
        return FASTLOSS_ERROR_BAD_DTYPE;
    return distance_kernels.triplet_margin[dtype](options, anchor, anchor_row_stride, positive,
                                                  positive_row_stride, negative,
                                                  negative_row_stride, grad_output,
                                                  grad_output_stride, loss_per_row, loss,
                                                  grad_anchor, grad_anchor_row_stride,
                                                  grad_positive, grad_positive_row_stride,
                                                  grad_negative, grad_negative_row_stride);
}

void fastloss_contrastive_transpose_float64(fastloss_index n_rows, fastloss_index n_cols,
                                         const double *source, fastloss_index source_row_stride,
                                         double *target, fastloss_index target_row_stride,
                                         int accumulate, int num_threads)
{
    const fastloss_index block = FASTLOSS_CONTRASTIVE_TILE;
    const fastloss_index row_blocks = (n_rows + block - 1) / block;
    const fastloss_index col_blocks = (n_cols + block - 1) / block;
    const int threads = fastloss_effective_threads(num_threads, n_rows * n_cols);
    (void)threads;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
#endif
    for (fastloss_index b = 0; b < row_blocks * col_blocks; ++b) {
        const fastloss_index i0 = b / col_blocks * block, j0 = b % col_blocks * block;
        const fastloss_index i1 = i0 + block < n_rows ? i0 + block : n_rows;
        const fastloss_index j1 = j0 + block < n_cols ? j0 + block : n_cols;
        for (fastloss_index j = j0; j < j1; ++j) {
            double *out = target + j * target_row_stride;
            for (fastloss_index i = i0; i < i1; ++i) {
                const double value = source[i * source_row_stride + j];
                out[i] = accumulate ? out[i] + value : value;
            }
        }
    }
}

/* InfoNCE's refinement (contrastive.h).  A float32 BLAS product misses each entry by a
 * few units in the last place, and not alike for equal rows (OpenBLAS's AVX-512
 * kernels compute a tile's edge another way than its inside).  At a low temperature a
 * row's loss is the difference of its dominant entries over the temperature, so those
 * misses, times 1 / T, were most of the loss's error: with NumPy's OpenBLAS on its
 * AVX-512 (SkylakeX) kernels, 1.5x torch's float32 error in root mean square over draws
 * of near-duplicate rows at T = 0.02, and 4x on one draw's per-row losses; 0.2x with
 * this.  Entries of weight below NCE_REFINE_WEIGHT move the loss by less than that
 * fraction of their error; beyond NCE_REFINE_BUDGET entries a row on average (a high
 * temperature: the softmax is flat and the misses average out), none is redone. */
#define NCE_REFINE_WEIGHT 1e-3
#define NCE_REFINE_BUDGET 4

/* q . k in float64 over dim floats, in FASTLOSS_LANES lanes combined in a fixed order */
static double nce_dot(const float *q, const float *k, fastloss_index dim)
{
    double lane[FASTLOSS_LANES] = {0.0};
    fastloss_index d = 0;
    for (; d + FASTLOSS_LANES <= dim; d += FASTLOSS_LANES)
        for (int l = 0; l < FASTLOSS_LANES; ++l)
            lane[l] += (double)q[d + l] * (double)k[d + l];
    for (; d < dim; ++d)
        lane[d % FASTLOSS_LANES] += (double)q[d] * (double)k[d];
    return fastloss_lanes_total(lane);
}

/* The least float >= max - margin (so that x >= it, for a float x, is x >= max - margin
 * in exact arithmetic) */
static float nce_floor(float top, double margin)
{
    if (!(top > -INFINITY))
        return NAN; /* a row (column) of NaNs selects nothing */
    const double exact = (double)top - margin;
    float floor = (float)exact;
    if ((double)floor < exact)
        floor = nextafterf(floor, INFINITY);
    return floor;
}

/* How many of x[0..len) carry weight: within the margin of their row's max (x >= floor),
 * or of their column's (x[j] >= col_floor[j], col_floor NULL for none) */
static fastloss_index nce_count(const float *x, fastloss_index len, float floor,
                                const float *col_floor)
{
    fastloss_index count = 0;
    if (col_floor) {
        for (fastloss_index j = 0; j < len; ++j)
            count += (x[j] >= floor) | (x[j] >= col_floor[j]);
    } else {
        for (fastloss_index j = 0; j < len; ++j)
            count += x[j] >= floor;
    }
    return count;
}

/* The refinement, in two sweeps over s: the rows' (and columns') maxima; the count and
 * the list of the entries that carry weight, given up as soon as the count is over the
 * budget (a count that only grows, so the decision does not depend on the threads); then,
 * under the budget, the listed entries recomputed.  A row (column) of NaNs selects
 * nothing. */
static int nce_refine(const fastloss_contrastive_nce_options *options, float *s,
                      fastloss_index s_row_stride)
{
    const fastloss_index n = options->n_rows, m = options->n_cols, dim = options->dim;
    const int symmetric = options->symmetric;
    const double margin = options->temperature * log(1.0 / NCE_REFINE_WEIGHT);
    const fastloss_index budget = NCE_REFINE_BUDGET * n;
    const int threads = fastloss_effective_threads(options->num_threads, n * m);
    float *row_floor = malloc((size_t)n * sizeof(float) + 1);
    float *col_floor = symmetric ? malloc((size_t)m * sizeof(float) + 1) : NULL;
    float *partial = symmetric ? malloc((size_t)threads * (size_t)m * sizeof(float) + 1) : NULL;
    fastloss_index *picked = malloc((size_t)threads * (size_t)budget * sizeof(fastloss_index) + 1);
    int status = FASTLOSS_OK;
    if (!row_floor || !picked || (symmetric && (!col_floor || !partial))) {
        status = FASTLOSS_ERROR_NO_MEMORY;
        goto done;
    }
    fastloss_index count = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (threads > 1)
#endif
    {
#ifdef _OPENMP
        float *top = partial ? partial + (size_t)omp_get_thread_num() * (size_t)m : NULL;
#else
        float *top = partial;
#endif
        if (top)
            for (fastloss_index j = 0; j < m; ++j)
                top[j] = -INFINITY;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (fastloss_index i = 0; i < n; ++i) {
            const float *row = s + i * s_row_stride;
            float best = -INFINITY;
#pragma omp simd reduction(max : best)
            for (fastloss_index j = 0; j < m; ++j)
                best = row[j] > best ? row[j] : best;
            if (top)
                for (fastloss_index j = 0; j < m; ++j)
                    top[j] = row[j] > top[j] ? row[j] : top[j];
            row_floor[i] = nce_floor(best, margin);
        }
        if (symmetric) {
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
            for (fastloss_index j = 0; j < m; ++j) {
                float best = -INFINITY;
                for (int t = 0; t < threads; ++t)
                    best = partial[(size_t)t * (size_t)m + j] > best
                               ? partial[(size_t)t * (size_t)m + j] : best;
                col_floor[j] = nce_floor(best, margin);
            }
        }
        /* each thread lists its rows' entries (flat indices i * m + j) while the count
         * is within the budget: a thread with more than the budget has put the count
         * over it too */
#ifdef _OPENMP
        fastloss_index *mine = picked + (size_t)omp_get_thread_num() * (size_t)budget;
#else
        fastloss_index *mine = picked;
#endif
        fastloss_index used = 0;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (fastloss_index i = 0; i < n; ++i) {
            fastloss_index seen;
#ifdef _OPENMP
#pragma omp atomic read
#endif
            seen = count;
            if (seen > budget)
                continue;
            const float *row = s + i * s_row_stride, floor = row_floor[i];
            const fastloss_index here = nce_count(row, m, floor, col_floor);
#ifdef _OPENMP
#pragma omp atomic
#endif
            count += here;
            if (!here || used + here > budget)
                continue;
            /* the row again (from L1), by blocks of 64 entries, most of them with none */
            for (fastloss_index j0 = 0; j0 < m; j0 += 64) {
                const fastloss_index len = m - j0 < 64 ? m - j0 : 64;
                const float *cf = col_floor ? col_floor + j0 : NULL;
                if (nce_count(row + j0, len, floor, cf))
                    for (fastloss_index j = j0; j < j0 + len; ++j)
                        if (row[j] >= floor || (col_floor && row[j] >= col_floor[j]))
                            mine[used++] = i * m + j;
            }
        }
        /* (the implicit barrier of the loop above: count is final here) */
        if (count <= budget)
            for (fastloss_index e = 0; e < used; ++e) {
                const fastloss_index i = mine[e] / m, j = mine[e] % m;
                s[i * s_row_stride + j] = (float)nce_dot(options->q_unit + i * dim,
                                                         options->k_unit + j * dim, dim);
            }
    }
done:
    free(row_floor);
    free(col_floor);
    free(partial);
    free(picked);
    return status;
}
#undef NCE_REFINE_WEIGHT
#undef NCE_REFINE_BUDGET

int fastloss_contrastive_nce_float32(const fastloss_contrastive_nce_options *options, float *s,
                                     fastloss_index s_row_stride, const double *scale,
                                     fastloss_index scale_stride, double *row_loss,
                                     double *col_loss, int want_grad)
{
    if (options->q_unit && options->k_unit && options->n_rows > 0 && options->n_cols > 0) {
        const int status = nce_refine(options, s, s_row_stride);
        if (status != FASTLOSS_OK)
            return status;
    }
    return distance_kernels.nce_float32(options, s, s_row_stride, scale, scale_stride, row_loss,
                                        col_loss, want_grad);
}

/* x / max(|x|, eps) rounded once to float, and |x| in double, of rows of storage tag
 * `tag` (read with its LOAD) */
#define FL_UNIT_ROWS_DEFINE_(tag)                                                            \
    static void unit_rows_##tag(const fastloss_contrastive_rows_options *options,            \
                                const void *x_data, fastloss_index x_row_stride, float *unit, \
                                double *norm)                                                \
    {                                                                                        \
        const FASTLOSS_STORAGE_T(tag) *x = (const FASTLOSS_STORAGE_T(tag) *)x_data;          \
        const fastloss_index n_rows = options->n_rows, dim = options->dim;                   \
        const double eps = options->eps;                                                     \
        const int threads = fastloss_effective_threads(options->num_threads, n_rows * dim);  \
        (void)threads;                                                                       \
        FL_OMP_ROWS_                                                                         \
        for (fastloss_index i = 0; i < n_rows; ++i) {                                        \
            const FASTLOSS_STORAGE_T(tag) *row = x + i * x_row_stride;                       \
            double lane[FASTLOSS_LANES] = {0.0};                                             \
            for (fastloss_index k = 0; k < dim; ++k) {                                       \
                const double v = (double)FASTLOSS_LOAD(tag, row, k);                         \
                lane[k % FASTLOSS_LANES] += v * v;                                           \
            }                                                                                \
            const double length = sqrt(fastloss_lanes_total(lane));                          \
            /* x / max(|x|, eps), a division as in F.normalize */                            \
            const double denominator = length >= eps ? length : eps;                         \
            float *out = unit + i * dim;                                                     \
            for (fastloss_index k = 0; k < dim; ++k)                                         \
                out[k] = (float)((double)FASTLOSS_LOAD(tag, row, k) / denominator);          \
            norm[i] = length;                                                                \
        }                                                                                    \
    }
#ifdef _OPENMP
#define FL_OMP_ROWS_ _Pragma("omp parallel for schedule(static) num_threads(threads) if (threads > 1)")
#else
#define FL_OMP_ROWS_
#endif
FL_UNIT_ROWS_DEFINE_(float32)
FL_UNIT_ROWS_DEFINE_(bfloat16)
FL_UNIT_ROWS_DEFINE_(float16)
#undef FL_UNIT_ROWS_DEFINE_

int fastloss_contrastive_unit_rows(int dtype, const fastloss_contrastive_rows_options *options,
                                   const void *x, fastloss_index x_row_stride, float *unit,
                                   double *norm)
{
    if (dtype == FASTLOSS_FLOAT32)
        unit_rows_float32(options, x, x_row_stride, unit, norm);
    else if (dtype == FASTLOSS_BFLOAT16)
        unit_rows_bfloat16(options, x, x_row_stride, unit, norm);
    else if (dtype == FASTLOSS_FLOAT16)
        unit_rows_float16(options, x, x_row_stride, unit, norm);
    else
        return FASTLOSS_ERROR_BAD_DTYPE;
    return FASTLOSS_OK;
}

int fastloss_contrastive_unit_rows_float32(const fastloss_contrastive_rows_options *options,
                                           const float *x, fastloss_index x_row_stride,
                                           float *unit, double *norm)
{
    return fastloss_contrastive_unit_rows(FASTLOSS_FLOAT32, options, x, x_row_stride, unit,
                                          norm);
}

/* float32 unit rows' backward: the row kernel of contrastive_body.h on float rows, the
 * gradient stored by the storage tag's STORE_WIDE (float32, or rounded once to half) */
#define FL_STORE_WIDE_float32_(out, k, value) FASTLOSS_STORE_WIDE(float32, out, k, value)
#define FL_STORE_WIDE_bfloat16_(out, k, value) FASTLOSS_STORE_WIDE(bfloat16, out, k, value)
#define FL_STORE_WIDE_float16_(out, k, value) FASTLOSS_STORE_WIDE(float16, out, k, value)
FASTLOSS_UNIT_BACKWARD_ROW_DEFINE(unit_backward_row_float32, float, float, FL_STORE_WIDE_float32_)
FASTLOSS_UNIT_BACKWARD_ROW_DEFINE(unit_backward_row_bfloat16, float, uint16_t,
                                  FL_STORE_WIDE_bfloat16_)
FASTLOSS_UNIT_BACKWARD_ROW_DEFINE(unit_backward_row_float16, float, uint16_t,
                                  FL_STORE_WIDE_float16_)

#define FL_UNIT_BACKWARD_DEFINE_(tag)                                                         \
    static void unit_backward_##tag(const fastloss_contrastive_rows_options *options,         \
                                    const float *unit, const double *norm,                    \
                                    const float *grad_unit, void *grad_data,                  \
                                    fastloss_index grad_row_stride)                           \
    {                                                                                         \
        FASTLOSS_GRAD_T(tag) *grad = (FASTLOSS_GRAD_T(tag) *)grad_data;                       \
        const fastloss_index n_rows = options->n_rows, dim = options->dim;                    \
        const int threads = fastloss_effective_threads(options->num_threads, n_rows * dim);   \
        (void)threads;                                                                        \
        FL_OMP_ROWS_                                                                          \
        for (fastloss_index i = 0; i < n_rows; ++i)                                           \
            unit_backward_row_##tag(unit + i * dim, grad_unit + i * dim, norm[i],             \
                                    options->eps, dim, grad + i * grad_row_stride);           \
    }
FL_UNIT_BACKWARD_DEFINE_(float32)
FL_UNIT_BACKWARD_DEFINE_(bfloat16)
FL_UNIT_BACKWARD_DEFINE_(float16)
#undef FL_UNIT_BACKWARD_DEFINE_
#undef FL_OMP_ROWS_

int fastloss_contrastive_unit_backward(int grad_dtype,
                                       const fastloss_contrastive_rows_options *options,
                                       const float *unit, const double *norm,
                                       const float *grad_unit, void *grad,
                                       fastloss_index grad_row_stride)
{
    if (grad_dtype == FASTLOSS_FLOAT32)
        unit_backward_float32(options, unit, norm, grad_unit, grad, grad_row_stride);
    else if (grad_dtype == FASTLOSS_BFLOAT16)
        unit_backward_bfloat16(options, unit, norm, grad_unit, grad, grad_row_stride);
    else if (grad_dtype == FASTLOSS_FLOAT16)
        unit_backward_float16(options, unit, norm, grad_unit, grad, grad_row_stride);
    else
        return FASTLOSS_ERROR_BAD_DTYPE;
    return FASTLOSS_OK;
}

int fastloss_contrastive_unit_backward_float32(const fastloss_contrastive_rows_options *options,
                                               const float *unit, const double *norm,
                                               const float *grad_unit, float *grad,
                                               fastloss_index grad_row_stride)
{
    return fastloss_contrastive_unit_backward(FASTLOSS_FLOAT32, options, unit, norm, grad_unit,
                                              grad, grad_row_stride);
}
