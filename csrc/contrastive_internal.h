/*
 * contrastive_internal.h -- what the distance kernels share across dtypes and
 * instruction sets; not part of the public C interface.
 */
#ifndef FASTLOSS_CONTRASTIVE_INTERNAL_H
#define FASTLOSS_CONTRASTIVE_INTERNAL_H

#include <float.h>
#include <math.h>
#include <stdlib.h>

#include "contrastive.h"

/* Pairs per tile side: a 64 x 64 tile of the double Gram matrix (32 KiB) and
 * of the coefficients and their mirror stays in L2 while it is visited. */
#define FASTLOSS_CONTRASTIVE_TILE 64
/* the pass keeps one uint64 mask word per row of a tile (bit k: column k of the tile) */
_Static_assert(FASTLOSS_CONTRASTIVE_TILE == 64, "one 64-bit mask word per tile row");

/* Elements of a row converted to float at a time, where the row kernels read half rows
 * (contrastive_row_helpers.h, contrastive_body.h): whole groups of the FASTLOSS_LANES
 * accumulators, and a few KiB of stack per row. */
#define FASTLOSS_CONTRASTIVE_ROW_CHUNK 256
_Static_assert(FASTLOSS_CONTRASTIVE_ROW_CHUNK % FASTLOSS_LANES == 0,
               "row chunks are whole groups of lanes");

/* lambda of the probabilistic bound above. */
#define FASTLOSS_GRAM_LAMBDA 7.0

/* The row-pair kernels (contrastive, triplet margin) write their per-row losses to the
 * caller's loss_per_row, or to scratch (NULL when out of memory) that
 * fastloss_row_pairs_finish frees. */
static inline double *fastloss_row_pairs_losses(double *loss_per_row, fastloss_index n_rows)
{
    return loss_per_row ? loss_per_row : malloc((size_t)n_rows * sizeof(double) + 1);
}

/* The reduced loss (where loss is not NULL) from the per-row losses, summed in a fixed
 * order; then the scratch, if it was, is freed. */
static inline void fastloss_row_pairs_finish(double *row_loss, const double *loss_per_row,
                                             fastloss_index n_rows, int reduction,
                                             double *loss)
{
    if (loss) {
        const double total = fastloss_sum_float64(row_loss, n_rows);
        *loss = reduction == FASTLOSS_REDUCTION_MEAN ? total / (double)n_rows : total;
    }
    if (!loss_per_row)
        free(row_loss);
}

/* A ReLU that lets NaN through (as torch's relu and clamp_min do). */
static inline double relu_nan(double value)
{
    return value > 0.0 || isnan(value) ? value : 0.0;
}

/* Bound on the error of a Gram entry per unit of |p_i| |p_j|: 3 (gamma + 2u) of
 * contrastive.c, the 2u room for the rounding of the prepared rows; u is the unit
 * roundoff of the Gram's own arithmetic (double, or float for a float32 Gram
 * of the prepared rows rounded to float32). */
static inline double gram_error_bound(fastloss_index dim, double unit_roundoff)
{
    return 3.0 * (FASTLOSS_GRAM_LAMBDA * sqrt((double)(dim > 0 ? dim : 1)) + 2.0) *
           unit_roundoff;
}

/* What one pair contributes: the value written out (and summed into the
 * loss), its distance, and the gradient coefficient w. */
typedef struct pair_out {
    double distance;
    double value;
    double coefficient;
    int direct;          /* its gradient comes from the rows, not the product */
} pair_out;

/*
 * torch's p-norm of a pair's difference v = u - w + eps (torch.linalg.vector_norm,
 * which F.pairwise_distance calls) and its gradient (torch's norm backward), for
 * every p torch accepts:
 *   p = 2      sqrt(sum v_k**2)              v_k / |v|                   (0 at |v| = 0)
 *   p = 1      sum |v_k|                     sign(v_k)
 *   p = +-inf  max (min) |v_k|               sign(v_k) / T where |v_k| = |v| or v_k is
 *                                            NaN, T such elements (ties share), else 0
 *   p = 0      the count of v_k != 0         0
 *   p > 1      (sum |v_k|**p)**(1/p)         sign(v_k) |v_k|**(p-1) / |v|**(p-1)   (0 at |v| = 0)
 *   p < 1      (sum |v_k|**p)**(1/p)         the same, 0 at v_k = 0 (torch writes it
 *                                            as a product with |v|**(1-p))
 * p < 1 includes negative p, whose norm is 0 once any v_k is 0 (|0|**p = inf).
 * p_distance_factor gives the per-pair part of the gradient: |v| for p = 2,
 * |v|**(p-1), T for +-inf (counted by the caller).  Divisions by it rather than
 * products with a reciprocal or with |v|**(1-p): v * (1 / |v|) can miss v / |v| by
 * an ulp, and a gradient that is exactly 0 (D = 1, two unit slopes that cancel) by
 * 5e-17.  A one-element norm is |v| itself (p_distance), so that D = 1 gives the
 * exact sign(v) that torch's 0-d norm gives, not pow's roundings.
 */
static inline double p_distance_factor(double distance, double p, double ties)
{
    if (p == 2.0)
        return distance;
    if (isinf(p))
        return ties;
    if (p > 1.0)
        return distance == 0.0 ? 0.0 : pow(distance, p - 1.0);
    if (p < 1.0 && p != 0.0)
        return pow(distance, p - 1.0); /* inf at distance 0: the gradient is 0 there */
    return 0.0; /* p = 1 and p = 0 need none */
}

static inline double p_distance_slope(double v, double p, double distance, double factor)
{
    if (p == 2.0)
        return factor != 0.0 ? v / factor : 0.0;
    if (isnan(v))
        return v;
    const double sign = (v > 0.0) - (v < 0.0);
    if (p == 1.0)
        return sign;
    if (p == 0.0)
        return 0.0;
    if (isinf(p))
        return fabs(v) == distance ? sign / factor : 0.0;
    if (p > 1.0)
        return factor != 0.0 ? sign * pow(fabs(v), p - 1.0) / factor : 0.0;
    return v != 0.0 ? sign * pow(fabs(v), p - 1.0) / factor : 0.0;
}

/* tau of contrastive.c, and DIRECT_GRADIENT_RATIO = 2 (u / tau_g)**2 */
#define FASTLOSS_RECOMPUTE_TOLERANCE_FLOAT32 (FLT_EPSILON / 2.0)
#define FASTLOSS_RECOMPUTE_TOLERANCE_FLOAT64 2.5e-13
#define FASTLOSS_DIRECT_GRADIENT_RATIO_FLOAT32 (1.0 / 128.0)
#define FASTLOSS_DIRECT_GRADIENT_RATIO_FLOAT64 3.9e-7

/*
 * One row of the backward of x^ = x / max(|x|, eps) (F.normalize): given the unit row
 * u = x^ (type unit_t), the norm |x| and the gradient g w.r.t. x^ (unit_t), the
 * gradient w.r.t. x, (g - u (u . g)) / |x| (g / eps below eps), computed in double and
 * written with store(out, k, value).  Defines the static function `name`, once for
 * contrastive.c's float32 unit rows (float) and once per storage type in
 * contrastive_body.h (double unit rows, STORE_WIDE).
 */
#define FASTLOSS_UNIT_BACKWARD_ROW_DEFINE(name, unit_t, out_t, store)                           \
    static inline void name(const unit_t *u, const unit_t *g, double norm, double eps,          \
                            fastloss_index dim, out_t *out)                                     \
    {                                                                                           \
        if (norm >= eps) {                                                                      \
            double lane[FASTLOSS_LANES] = {0.0};                                                \
            for (fastloss_index k = 0; k < dim; ++k)                                            \
                lane[k % FASTLOSS_LANES] += (double)u[k] * (double)g[k];                        \
            const double along = fastloss_lanes_total(lane);                                    \
            for (fastloss_index k = 0; k < dim; ++k)                                            \
                store(out, k, ((double)g[k] - (double)u[k] * along) / norm);                    \
        } else {                                                                                \
            /* below eps the normalisation is x / eps, a linear map */                          \
            for (fastloss_index k = 0; k < dim; ++k)                                            \
                store(out, k, (double)g[k] / eps);                                              \
        }                                                                                       \
    }

/*
 * The kernels' signatures, one per operation for every storage type: the
 * arrays of the storage type (storage.h) are `void *` (suffix _data), so that
 * contrastive.c keeps each operation's instantiations in a table indexed by
 * [enum fastloss_dtype].  The pass over the pairs and the sparse product have
 * one instantiation per (storage type, instruction set), in
 * contrastive_pass_body.h, and the table holds the widest the CPU runs (the
 * pass's phase 1 vectorises, with AVX2 and AVX-512); the row kernels
 * (contrastive_body.h) one per storage type.
 */
#define FASTLOSS_CONTRASTIVE_MATRIX_SIGNATURE                                                       \
    (const fastloss_contrastive_matrix_options *options, const void *x_data,                        \
     fastloss_index x_row_stride, const void *y_data, fastloss_index y_row_stride,               \
     const double *x_norm, const double *y_norm, const void *gram,                             \
     fastloss_index gram_row_stride, double *direct_coef, fastloss_index direct_coef_row_stride, \
     const int64_t *labels, const double *grad_output, fastloss_index grad_output_row_stride,    \
     fastloss_index grad_output_col_stride, void *value_data, fastloss_index value_row_stride,   \
     void *coef_data, fastloss_index coef_row_stride, double *x_sums, double *y_sums,            \
     uint64_t *direct_mask, uint64_t *nonzero_mask, double *loss, int64_t *n_recomputed,         \
     int64_t *n_direct, int64_t *n_nonzero)
typedef int(*fastloss_contrastive_matrix_kernel) FASTLOSS_CONTRASTIVE_MATRIX_SIGNATURE;

#define FASTLOSS_CONTRASTIVE_SPARSE_PRODUCT_SIGNATURE                                               \
    (const fastloss_contrastive_rows_options *options, const uint64_t *nonzero_mask,               \
     fastloss_index mask_row_words, const void *coef_data, fastloss_index coef_row_stride,      \
     const void *rows_data, fastloss_index rows_row_stride, void *product_data,                 \
     fastloss_index product_row_stride)
typedef int(*fastloss_contrastive_sparse_product_kernel) FASTLOSS_CONTRASTIVE_SPARSE_PRODUCT_SIGNATURE;

#define FASTLOSS_CONTRASTIVE_PREPARE_ROWS_SIGNATURE                                                 \
    (const fastloss_contrastive_rows_options *options, const void *x_data,                         \
     fastloss_index x_row_stride, const double *shift, double *prepared,                        \
     void *prepared_real_data, double *norm)
typedef int(*fastloss_contrastive_prepare_rows_kernel) FASTLOSS_CONTRASTIVE_PREPARE_ROWS_SIGNATURE;

#define FASTLOSS_CONTRASTIVE_FINISH_ROWS_SIGNATURE                                                  \
    (const fastloss_contrastive_rows_options *options, const void *prepared_data,                  \
     fastloss_index prepared_row_stride, const double *sums, const double *norm,                \
     const void *product_data, fastloss_index product_row_stride, void *grad_data,              \
     fastloss_index grad_row_stride, const fastloss_contrastive_direct *direct,                    \
     const void *rows_data, fastloss_index rows_row_stride, const void *other_data,             \
     fastloss_index other_row_stride, const double *other_norm)
typedef int(*fastloss_contrastive_finish_rows_kernel) FASTLOSS_CONTRASTIVE_FINISH_ROWS_SIGNATURE;

#define FASTLOSS_CONTRASTIVE_NORMALIZE_BACKWARD_SIGNATURE                                           \
    (const fastloss_contrastive_rows_options *options, const double *normalized,                   \
     const double *norm, const double *grad_normalized, void *grad_data,                        \
     fastloss_index grad_row_stride)
typedef int(*fastloss_contrastive_normalize_backward_kernel)
    FASTLOSS_CONTRASTIVE_NORMALIZE_BACKWARD_SIGNATURE;

#define FASTLOSS_CONTRASTIVE_CONTRASTIVE_SIGNATURE                                                  \
    (const fastloss_pair_loss_options *options, const void *x1_data,                            \
     fastloss_index x1_row_stride, const void *x2_data, fastloss_index x2_row_stride,           \
     const double *label, const double *grad_output, fastloss_index grad_output_stride,         \
     double *loss_per_row, double *loss, void *grad1_data, fastloss_index grad1_row_stride,     \
     void *grad2_data, fastloss_index grad2_row_stride)
typedef int(*fastloss_contrastive_contrastive_kernel) FASTLOSS_CONTRASTIVE_CONTRASTIVE_SIGNATURE;

#define FASTLOSS_CONTRASTIVE_TRIPLET_MARGIN_SIGNATURE                                               \
    (const fastloss_pair_loss_options *options, const void *anchor_data,                        \
     fastloss_index anchor_row_stride, const void *positive_data,                               \
     fastloss_index positive_row_stride, const void *negative_data,                             \
     fastloss_index negative_row_stride, const double *grad_output,                             \
     fastloss_index grad_output_stride, double *loss_per_row, double *loss,                     \
     void *grad_anchor_data, fastloss_index grad_anchor_row_stride, void *grad_positive_data,   \
     fastloss_index grad_positive_row_stride, void *grad_negative_data,                         \
     fastloss_index grad_negative_row_stride)
typedef int(*fastloss_contrastive_triplet_margin_kernel) FASTLOSS_CONTRASTIVE_TRIPLET_MARGIN_SIGNATURE;

#define FASTLOSS_CONTRASTIVE_NCE_SIGNATURE                                                          \
    (const fastloss_contrastive_nce_options *options, float *s, fastloss_index s_row_stride,      \
     const double *scale, fastloss_index scale_stride, double *row_loss, double *col_loss,      \
     int want_grad)
typedef int(*fastloss_contrastive_nce_kernel) FASTLOSS_CONTRASTIVE_NCE_SIGNATURE;

void fastloss_contrastive_select(int level); /* dispatch.c calls it */
int fastloss_contrastive_nce_float32_baseline FASTLOSS_CONTRASTIVE_NCE_SIGNATURE;
int fastloss_contrastive_nce_float32_avx2 FASTLOSS_CONTRASTIVE_NCE_SIGNATURE;
int fastloss_contrastive_nce_float32_avx512 FASTLOSS_CONTRASTIVE_NCE_SIGNATURE;
int fastloss_contrastive_matrix_float32_baseline FASTLOSS_CONTRASTIVE_MATRIX_SIGNATURE;
int fastloss_contrastive_matrix_float64_baseline FASTLOSS_CONTRASTIVE_MATRIX_SIGNATURE;
int fastloss_contrastive_matrix_float32_avx2 FASTLOSS_CONTRASTIVE_MATRIX_SIGNATURE;
int fastloss_contrastive_matrix_float64_avx2 FASTLOSS_CONTRASTIVE_MATRIX_SIGNATURE;
int fastloss_contrastive_matrix_float32_avx512 FASTLOSS_CONTRASTIVE_MATRIX_SIGNATURE;
int fastloss_contrastive_matrix_float64_avx512 FASTLOSS_CONTRASTIVE_MATRIX_SIGNATURE;
int fastloss_contrastive_sparse_product_float32_baseline FASTLOSS_CONTRASTIVE_SPARSE_PRODUCT_SIGNATURE;
int fastloss_contrastive_sparse_product_float64_baseline FASTLOSS_CONTRASTIVE_SPARSE_PRODUCT_SIGNATURE;
int fastloss_contrastive_sparse_product_float32_avx2 FASTLOSS_CONTRASTIVE_SPARSE_PRODUCT_SIGNATURE;
int fastloss_contrastive_sparse_product_float64_avx2 FASTLOSS_CONTRASTIVE_SPARSE_PRODUCT_SIGNATURE;
int fastloss_contrastive_sparse_product_float32_avx512 FASTLOSS_CONTRASTIVE_SPARSE_PRODUCT_SIGNATURE;
int fastloss_contrastive_sparse_product_float64_avx512 FASTLOSS_CONTRASTIVE_SPARSE_PRODUCT_SIGNATURE;
#define FL_HALF_DECLARE_(tag)                                                              \
    int fastloss_contrastive_matrix_##tag##_baseline FASTLOSS_CONTRASTIVE_MATRIX_SIGNATURE;         \
    int fastloss_contrastive_matrix_##tag##_avx2 FASTLOSS_CONTRASTIVE_MATRIX_SIGNATURE;             \
    int fastloss_contrastive_matrix_##tag##_avx512 FASTLOSS_CONTRASTIVE_MATRIX_SIGNATURE;           \
    int fastloss_contrastive_sparse_product_##tag##_baseline                                      \
        FASTLOSS_CONTRASTIVE_SPARSE_PRODUCT_SIGNATURE;                                            \
    int fastloss_contrastive_sparse_product_##tag##_avx2 FASTLOSS_CONTRASTIVE_SPARSE_PRODUCT_SIGNATURE; \
    int fastloss_contrastive_sparse_product_##tag##_avx512                                        \
        FASTLOSS_CONTRASTIVE_SPARSE_PRODUCT_SIGNATURE;
FL_HALF_DECLARE_(bfloat16)
FL_HALF_DECLARE_(float16)
#undef FL_HALF_DECLARE_

/* The row kernels of contrastive_body.h, per storage tag and instruction set
 * (contrastive_impl.h). */
#define FL_ROWS_DECLARE_ISA_(tag, isa)                                                        \
    int fastloss_contrastive_distance_prepare_rows_##tag##_##isa                              \
        FASTLOSS_CONTRASTIVE_PREPARE_ROWS_SIGNATURE;                                          \
    int fastloss_contrastive_distance_finish_rows_##tag##_##isa                               \
        FASTLOSS_CONTRASTIVE_FINISH_ROWS_SIGNATURE;                                           \
    int fastloss_contrastive_distance_normalize_backward_##tag##_##isa                        \
        FASTLOSS_CONTRASTIVE_NORMALIZE_BACKWARD_SIGNATURE;                                    \
    int fastloss_contrastive_distance_contrastive_##tag##_##isa                               \
        FASTLOSS_CONTRASTIVE_CONTRASTIVE_SIGNATURE;                                           \
    int fastloss_contrastive_distance_triplet_margin_##tag##_##isa                            \
        FASTLOSS_CONTRASTIVE_TRIPLET_MARGIN_SIGNATURE;
#define FL_ROWS_DECLARE_(tag)                                                                 \
    FL_ROWS_DECLARE_ISA_(tag, baseline)                                                       \
    FL_ROWS_DECLARE_ISA_(tag, avx2)                                                           \
    FL_ROWS_DECLARE_ISA_(tag, avx512)
FL_ROWS_DECLARE_(float32)
FL_ROWS_DECLARE_(float64)
FL_ROWS_DECLARE_(bfloat16)
FL_ROWS_DECLARE_(float16)
FL_ROWS_DECLARE_(bfloat16_grad32)
FL_ROWS_DECLARE_(float16_grad32)
#undef FL_ROWS_DECLARE_
#undef FL_ROWS_DECLARE_ISA_

/* Bits of a 64-bit word: how many are set, and the index of the lowest set one. */
static inline int fastloss_popcount64(uint64_t bits)
{
#if defined(__GNUC__) || defined(__clang__)
    return __builtin_popcountll(bits);
#else
    int count = 0;
    for (; bits; bits &= bits - 1)
        ++count;
    return count;
#endif
}

static inline int fastloss_lowest_bit64(uint64_t bits)
{
#if defined(__GNUC__) || defined(__clang__)
    return __builtin_ctzll(bits);
#else
    int index = 0;
    while (!(bits & 1)) {
        bits >>= 1;
        ++index;
    }
    return index;
#endif
}

#endif /* FASTLOSS_CONTRASTIVE_INTERNAL_H */
