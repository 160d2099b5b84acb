/*
 * contrastive.h -- pairwise distances and the losses built on them (contrastive
 * over pairs, contrastive over all pairs of a batch, triplet margin), for
 * every storage type of storage.h (float32, float64, bfloat16 and float16, and the
 * half types with a float32 gradient).  For a half type the rows are read in place
 * (LOAD), every array the backward product reads or writes (prepared_real, coef,
 * value, product: "AUX") is float32, and the gradients are the half type (rounded
 * once from double) or, with the _GRAD_FLOAT32 codes, float32.  Every entry point
 * takes the dtype code (enum fastloss_dtype) of its embedding-typed arrays
 * (rows, prepared rows in the storage type, values, coefficients, gradients:
 * the `void *` ones) and returns FASTLOSS_ERROR_BAD_DTYPE, writing nothing,
 * for a code this build has no kernel for.  See contrastive.c for the formulas, the error model of
 * the Gram-matrix form and the references.
 *
 * Layout: embeddings are n_rows rows of dim contiguous values, row i at
 * x + i * x_row_stride (elements); every N x M matrix has contiguous rows and
 * its own row stride.  Every size, stride and index is 64-bit.
 *
 * The all-pairs functions are the pieces between two BLAS products that the
 * caller (the Python layer, with NumPy's matmul) makes:
 *   1. fastloss_contrastive_prepare_rows: centred rows (euclidean metrics) or
 *      unit rows (cosine), in double, and their norms;
 *   2. the caller forms the Gram matrix of the prepared rows, in double;
 *   3. fastloss_contrastive_matrix: one pass over the pairs (the upper triangle
 *      when y is x) for distances, losses and gradient coefficients W;
 *   4. the caller forms W @ prepared rows (in the storage dtype);
 *   5. fastloss_contrastive_finish_rows: the gradient from that product.
 *
 * Preconditions the caller checks (the Cython layer does): labels, margins,
 * eps and p as documented per function; outputs do not overlap inputs.
 */
#ifndef FASTLOSS_CONTRASTIVE_H
#define FASTLOSS_CONTRASTIVE_H

#include "common.h"
#include "storage.h"

#ifdef __cplusplus
extern "C" {
#endif

enum fastloss_metric {
    FASTLOSS_METRIC_EUCLIDEAN = 0,    /* d = |x - y| */
    FASTLOSS_METRIC_SQEUCLIDEAN = 1,  /* d = |x - y|**2 */
    FASTLOSS_METRIC_COSINE = 2        /* d = 1 - x^ . y^,  x^ = x / max(|x|, eps) */
};

enum fastloss_pairs_loss {
    FASTLOSS_PAIRS_DISTANCE = 0,      /* the value of a pair is its distance */
    FASTLOSS_PAIRS_CONTRASTIVE = 1    /* y relu(d - pos_margin)**2 + (1 - y) relu(neg_margin - d)**2 */
};

typedef struct fastloss_contrastive_rows_options {
    fastloss_index n_rows;
    fastloss_index dim;
    int metric;          /* enum fastloss_metric */
    double eps;          /* cosine: norms below eps count as eps (F.normalize) */
    int num_threads;     /* upper bound on OpenMP threads (>= 1) */
} fastloss_contrastive_rows_options;

/*
 * Step 1.  Euclidean metrics: prepared_i = x_i - shift (shift: dim values,
 * the batch mean; distances do not change under a shift, and centring keeps
 * |x_i|**2 + |y_j|**2 - 2 x_i.y_j from cancelling) and norm_i = |prepared_i|**2.
 * Cosine: norm_i = |x_i| and prepared_i = x_i / max(norm_i, eps); shift unused.
 * prepared is n_rows x dim doubles (contiguous); prepared_real, when not NULL,
 * receives the same rows rounded to the storage type (the operand of the backward
 * product).
 */
int fastloss_contrastive_prepare_rows(
    int dtype, const fastloss_contrastive_rows_options *options, const void *x,
    fastloss_index x_row_stride, const double *shift, double *prepared, void *prepared_real,
    double *norm);

typedef struct fastloss_contrastive_matrix_options {
    fastloss_index n_rows;   /* N: rows of x */
    fastloss_index n_cols;   /* M: rows of y (N when symmetric) */
    fastloss_index dim;
    int metric;              /* enum fastloss_metric */
    int symmetric;           /* y is x: pairs i < j, every output mirrored */
    int loss;                /* enum fastloss_pairs_loss (contrastive needs symmetric) */
    double pos_margin;       /* contrastive, >= 0 */
    double neg_margin;       /* contrastive, >= 0 */
    double eps;              /* cosine norm clamp, as in prepare_rows */
    double scale;            /* every pair's upstream gradient is multiplied by it */
    int num_threads;
    int gram_float32;        /* gram holds floats (float32 data only), else doubles */
} fastloss_contrastive_matrix_options;

/*
 * Step 3.  Arguments (IN unless marked OUT):
 *   x, y            the original rows (for the pairs recomputed directly); y is
 *                   NULL when symmetric
 *   x_norm, y_norm  norm from prepare_rows (y_norm NULL when symmetric)
 *   gram            N x M doubles, prepared x . prepared y; only the upper
 *                   triangle (j > i) is read when symmetric.  With gram_float32
 *                   (float32 data), N x M floats: the float32 product of the
 *                   prepared rows rounded to float32, half the cost of the double
 *                   one.  Its error bound is 2**29 times wider, so a pair is
 *                   decided from it only where it lies outside its hinge by more
 *                   than the bound (a loss of exactly 0); every other pair is
 *                   recomputed from its rows.
 *   direct_coef     OUT with coef, N x M doubles (may be a double gram itself): the
 *                   coefficient w_ij of every direct pair (below), at (i, j) and,
 *                   symmetric, at (j, i); nothing else is written
 *   labels          contrastive: N class labels (y_ij = labels_i == labels_j)
 *   grad_output     per-pair upstream gradient, N x M doubles read at
 *                   i * row_stride + j * col_stride, or NULL for all ones.
 *                   Symmetric: pair (i, j) gets g_ij + g_ji, the diagonal 2 g_ii.
 *   value           OUT, N x M: distances (loss DISTANCE) or per-pair losses
 *                   (CONTRASTIVE, zero diagonal), or NULL
 *   coef            OUT, N x M gradient coefficients W (symmetric: both halves
 *                   and the diagonal), 0 for the direct pairs; NULL for no gradient
 *   x_sums          OUT with coef: 2 N doubles, sum_j w_ij then sum_j w_ij d_ij
 *                   over the pairs in W
 *   y_sums          OUT with coef, not symmetric: 2 M doubles, the column sums
 *   direct_mask     OUT with coef: N x ceil(M / 64) words; bit j % 64 of word
 *                   (i, j / 64) marks a direct pair (i, j) (symmetric: both
 *                   (i, j) and (j, i)): close points whose pull the product
 *                   cannot give accurately (see contrastive.c)
 *   nonzero_mask    OUT with coef, or NULL: like direct_mask, the nonzero entries of
 *                   W (for fastloss_contrastive_sparse_product)
 *   loss            OUT, the sum of the per-pair values over the pairs, or NULL
 *   n_recomputed    OUT, how many pairs were recomputed from the rows, or NULL
 *   n_direct        OUT, how many pairs are direct, or NULL
 *   n_nonzero       OUT, how many entries of W off its diagonal are nonzero, or NULL
 * The gradient of sum_pairs scale * upstream * value w.r.t. the rows is then
 *   euclidean metrics: r_i p_i - (W P_y)_i + sum_direct w_ij (x_i - y_j)
 *                      (p the prepared rows, r = x_sums)
 *   cosine:            ((r_i - t_i) p_i - (W P_y)_i + direct pulls) / |x_i|  (|x_i| >= eps)
 *                      -(W P_y)_i / eps                                  (|x_i| < eps)
 * (fastloss_contrastive_finish_rows), and likewise for y with W^T and y_sums.
 * Return FASTLOSS_OK or FASTLOSS_ERROR_NO_MEMORY (nothing is written then).
 */
int fastloss_contrastive_matrix(
    int dtype, const fastloss_contrastive_matrix_options *options,
    const void *x, fastloss_index x_row_stride, const void *y, fastloss_index y_row_stride,
    const double *x_norm, const double *y_norm, const void *gram, fastloss_index gram_row_stride,
    double *direct_coef, fastloss_index direct_coef_row_stride, const int64_t *labels,
    const double *grad_output, fastloss_index grad_output_row_stride,
    fastloss_index grad_output_col_stride, void *value, fastloss_index value_row_stride,
    void *coef, fastloss_index coef_row_stride, double *x_sums, double *y_sums,
    uint64_t *direct_mask, uint64_t *nonzero_mask, double *loss, int64_t *n_recomputed,
    int64_t *n_direct, int64_t *n_nonzero);

/*
 * Step 4 without BLAS when W is sparse: product = W @ rows (n_rows x dim, rows
 * having as many rows as W has columns), over the set bits of the pass's
 * nonzero_mask, summed in double.  Return FASTLOSS_OK or FASTLOSS_ERROR_NO_MEMORY.
 */
int fastloss_contrastive_sparse_product(
    int dtype, const fastloss_contrastive_rows_options *options, const uint64_t *nonzero_mask,
    fastloss_index mask_row_words, const void *coef, fastloss_index coef_row_stride,
    const void *rows, fastloss_index rows_row_stride, void *product,
    fastloss_index product_row_stride);

/* The direct pairs of a pass, for the side being finished. */
typedef struct fastloss_contrastive_direct {
    const uint64_t *mask;             /* the pass's direct_mask */
    fastloss_index mask_row_words;    /* ceil(M / 64) */
    const double *coef;               /* the pass's gram: w_ij of the direct pairs */
    fastloss_index coef_row_stride;
    fastloss_index n_other;           /* rows of the other side */
    int transposed;                   /* this side's rows are the columns j of (i, j) */
} fastloss_contrastive_direct;

/*
 * Step 5.  grad_i from the prepared rows (storage type, the product's operand),
 * sums (2 n_rows: r then t), norm (prepare_rows' norm) and product = W @ P,
 * plus the pulls of the direct pairs (direct NULL when the pass marked none)
 * from the original rows of this side and of the other, and the other's norms
 * (cosine).  grad may be product itself (same stride).
 * Return FASTLOSS_OK or FASTLOSS_ERROR_NO_MEMORY.
 */
int fastloss_contrastive_finish_rows(
    int dtype, const fastloss_contrastive_rows_options *options, const void *prepared,
    fastloss_index prepared_row_stride, const double *sums, const double *norm,
    const void *product, fastloss_index product_row_stride, void *grad,
    fastloss_index grad_row_stride, const fastloss_contrastive_direct *direct, const void *rows,
    fastloss_index rows_row_stride, const void *other, fastloss_index other_row_stride,
    const double *other_norm);

/*
 * The backward of x^ = x / max(|x|, eps) (F.normalize): given unit rows
 * (prepare_rows, cosine), their norms and the gradient w.r.t. x^ (all double,
 * contiguous), grad = (g - x^ (x^ . g)) / |x| where |x| > eps, g / eps elsewhere.
 */
int fastloss_contrastive_normalize_backward(
    int dtype, const fastloss_contrastive_rows_options *options, const double *normalized,
    const double *norm, const double *grad_normalized, void *grad,
    fastloss_index grad_row_stride);

/*
 * target (n_cols x n_rows) = source (n_rows x n_cols) transposed, or target +=
 * that with accumulate: in 64 x 64 blocks, so both sides are read and written a
 * cache line at a time (InfoNCE's column-wise cross-entropy and its gradient).
 * source and target do not overlap.
 */
void fastloss_contrastive_transpose_float64(fastloss_index n_rows, fastloss_index n_cols,
                                         const double *source, fastloss_index source_row_stride,
                                         double *target, fastloss_index target_row_stride,
                                         int accumulate, int num_threads);

/*
 * InfoNCE over float32 products (contrastive_nce_body.h has the method).  s is the
 * N x M matrix q^_i . k^_j of the unit rows (M >= N; M == N with symmetric), read
 * as s / temperature; row_loss (N doubles) receives each query's cross-entropy of
 * its row with target i, col_loss (N doubles, symmetric only, else NULL) that of
 * its column; with want_grad, s is overwritten by the gradient of
 * sum_i scale_i (row_loss_i [+ col_loss_i]) with respect to s (scale: N doubles,
 * or one with scale_stride 0).
 *
 * With the unit rows given, the similarities within temperature * log(1000) of their
 * row's max (symmetric: or their column's) are first recomputed as float64 dot
 * products, rounded once, while there are at most 4 of them a row on average
 * (contrastive.c, nce_refine, says why).  FASTLOSS_ERROR_NO_MEMORY if a work array
 * cannot be allocated.
 */
typedef struct fastloss_contrastive_nce_options {
    fastloss_index n_rows;
    fastloss_index n_cols;
    double temperature;  /* > 0, 1 / temperature finite in float32 */
    int symmetric;
    int num_threads;
    /* The unit rows whose products s holds (q_unit N x dim, k_unit M x dim, contiguous
     * float32), or NULL: then s is taken as it is.  Given, the entries of s that carry
     * their row's (symmetric: or column's) softmax weight are first recomputed, in
     * place, as float64 dot products rounded once (above). */
    const float *q_unit;
    const float *k_unit;
    fastloss_index dim;
} fastloss_contrastive_nce_options;

int fastloss_contrastive_nce_float32(const fastloss_contrastive_nce_options *options, float *s,
                                     fastloss_index s_row_stride, const double *scale,
                                     fastloss_index scale_stride, double *row_loss,
                                     double *col_loss, int want_grad);

/* unit (n_rows x dim floats, contiguous) = x / max(|x|, eps) and norm = |x| (the
 * norm in double, each element rounded once), for float32 rows. */
int fastloss_contrastive_unit_rows_float32(const fastloss_contrastive_rows_options *options,
                                           const float *x, fastloss_index x_row_stride,
                                           float *unit, double *norm);

/* The same for rows of any storage code: float32, bfloat16 or float16 rows x (read in
 * place) to float32 unit rows; FASTLOSS_ERROR_BAD_DTYPE for another code. */
int fastloss_contrastive_unit_rows(int dtype, const fastloss_contrastive_rows_options *options,
                                   const void *x, fastloss_index x_row_stride, float *unit,
                                   double *norm);

/* The backward below with the gradient written as grad_dtype: FASTLOSS_FLOAT32, or
 * FASTLOSS_BFLOAT16 / FASTLOSS_FLOAT16 (each element computed in double and rounded once
 * to the half type); FASTLOSS_ERROR_BAD_DTYPE for another code. */
int fastloss_contrastive_unit_backward(int grad_dtype,
                                       const fastloss_contrastive_rows_options *options,
                                       const float *unit, const double *norm,
                                       const float *grad_unit, void *grad,
                                       fastloss_index grad_row_stride);

/* grad = (g - unit (unit . g)) / norm, or g / eps where norm < eps: the backward of
 * x / max(|x|, eps) for float32 unit rows and their gradient g (both contiguous),
 * computed in double and rounded once. */
int fastloss_contrastive_unit_backward_float32(const fastloss_contrastive_rows_options *options,
                                               const float *unit, const double *norm,
                                               const float *grad_unit, float *grad,
                                               fastloss_index grad_row_stride);

typedef struct fastloss_pair_loss_options {
    fastloss_index n_rows;
    fastloss_index dim;
    int metric;          /* contrastive: enum fastloss_metric */
    double margin;       /* contrastive >= 0, triplet > 0 */
    double p;            /* triplet: the p of the p-norm, any real or +-inf, not NaN */
    double eps;          /* added to every difference (torch's pairwise_distance);
                          * contrastive >= 0, triplet any finite value */
    double norm_eps;     /* cosine norm clamp */
    int swap;            /* triplet: the distance swap of Balntas et al. */
    int reduction;       /* enum fastloss_reduction */
    int num_threads;
    /* triplet: the length of each pair's difference, dim or 1.  torch's
     * pairwise_distance reduces over the broadcast of the pair's own last axes, so
     * a pair of rows that both have one feature broadcast to dim compares their
     * first elements alone; its gradient lands in column 0. */
    fastloss_index anchor_positive_dim, anchor_negative_dim, positive_negative_dim;
} fastloss_pair_loss_options;

/*
 * Contrastive loss of row pairs (x1_i, x2_i) with label_i (1 similar, 0 not):
 * 0.5 (y d**2 + (1 - y) relu(margin - d)**2).  grad_output as in
 * cross_entropy.h (stride 0: one scalar); grad1, grad2 NULL for the forward.
 * loss_per_row (n_rows doubles) and loss are OUT or NULL.
 */
int fastloss_contrastive_contrastive(
    int dtype, const fastloss_pair_loss_options *options, const void *x1,
    fastloss_index x1_row_stride, const void *x2, fastloss_index x2_row_stride,
    const double *label, const double *grad_output, fastloss_index grad_output_stride,
    double *loss_per_row, double *loss, void *grad1, fastloss_index grad1_row_stride,
    void *grad2, fastloss_index grad2_row_stride);

/* Triplet margin loss (torch.nn.functional.triplet_margin_loss) over rows of dim
 * elements, the pairs' lengths in options; otherwise as above. */
int fastloss_contrastive_triplet_margin(
    int dtype, const fastloss_pair_loss_options *options, const void *anchor,
    fastloss_index anchor_row_stride, const void *positive, fastloss_index positive_row_stride,
    const void *negative, fastloss_index negative_row_stride, const double *grad_output,
    fastloss_index grad_output_stride, double *loss_per_row, double *loss, void *grad_anchor,
    fastloss_index grad_anchor_row_stride, void *grad_positive,
    fastloss_index grad_positive_row_stride, void *grad_negative,
    fastloss_index grad_negative_row_stride);

#ifdef __cplusplus
}
#endif

#endif /* FASTLOSS_CONTRASTIVE_H */
