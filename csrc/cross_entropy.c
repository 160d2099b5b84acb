/*
 * cross_entropy.c -- softmax cross-entropy over the last axis: forward,
 * backward from a known log-sum-exp, and the fused value-and-grad.
 *
 * Per row y (logits, or c tanh(logits / c) with softcap c; torch semantics
 * for everything torch has):
 *   lse   = log sum_c exp(y_c)                      (online, chunk by chunk)
 *   hard target t, class weights w, smoothing eps:
 *     ce  = (1 - eps) w_t (lse - y_t) + eps / C sum_c w_c (lse - y_c)
 *   soft target q, q' = (1 - eps) q + eps / C:
 *     ce  = sum_c w_c q'_c (lse - y_c)
 *   loss  = ce + z lse**2                           (PaLM's z-loss)
 * Gradient w.r.t. y, with p = softmax(y) = exp(y - lse) and the row's scale s
 * (grad_output, divided by the mean's denominator):
 *   hard: s [((1 - eps) w_t + eps W / C) p_c - eps / C w_c - (1 - eps) w_t [c = t]]
 *   soft: s [(sum_k w_k q'_k) p_c - w_c q'_c]
 *   z:    2 z lse p_c (scaled by its own denominator, the count of valid rows)
 *   softcap multiplies by dy/dx = 1 - (y / c)**2.
 * So off the target class the gradient is alpha p_c - gamma u_c with two
 * numbers per row (ce_coefficients), the z part added last; the target class
 * is written from the formula itself (ce_row_grad).  Label smoothing goes
 * through the closed form, never by building a target row.
 *
 * Stability: each chunk of FASTLOSS_CE_CHUNK classes subtracts its own max
 * before exp, and the chunks merge as (max, sum) pairs (Milakov & Gimelshein,
 * "Online normalizer calculation for softmax", arXiv:1805.02867).  All sums
 * accumulate in double in a fixed order, so results are identical for any
 * number of threads; rows are independent and run in parallel.
 *
 * Memory traffic of the fused call: each chunk of logits is read from memory
 * once (the max pass), the exp pass finds it in L1 and leaves exp(y - m_k) in
 * the gradient row, and the gradient pass rescales it there while it is still
 * in cache; so one read of the logits and one write of the gradient, with one
 * exp per element.
 */
#include "cross_entropy.h"
#include "dtype_table.h"

#define FASTLOSS_ISA baseline
#include "cross_entropy_impl.h"

/* The kernels this CPU runs best, by storage type: fastloss_cross_entropy_select
 * fills the table (see fastloss_select_kernels); baseline until then.  A new
 * storage type (storage.h) is one more line in dtype_table.h. */
static fastloss_ce_run ce_kernels[FASTLOSS_N_DTYPES] = FASTLOSS_DTYPE_TABLE(fastloss_ce_run);

void fastloss_cross_entropy_select(int level)
{
    FASTLOSS_DTYPE_TABLE_SELECT(ce_kernels, fastloss_ce_run, level);
}

/* The runner of a dtype code, or NULL for a code this build does not know. */
static fastloss_ce_run ce_kernel(int dtype)
{
    return fastloss_dtype_known(dtype) ? ce_kernels[dtype] : NULL;
}

int fastloss_cross_entropy_forward(int dtype, const fastloss_ce_options *options,
                                   const void *logits, fastloss_index logits_row_stride,
                                   const int64_t *target, const void *soft_target,
                                   fastloss_index soft_target_row_stride, const void *weight,
                                   double *loss_per_row, double *lse, double *loss)
{
    const fastloss_ce_run run = ce_kernel(dtype);
    if (!run)
        return FASTLOSS_ERROR_BAD_DTYPE;
    return run(CE_MODE_ROWS, NULL, NULL, options, logits, logits_row_stride, target, soft_target, soft_target_row_stride,
               weight, NULL, NULL, 0, loss_per_row, lse, loss, NULL, 0);
}

int fastloss_cross_entropy_backward(int dtype, const fastloss_ce_options *options,
                                    const void *logits, fastloss_index logits_row_stride,
                                    const int64_t *target, const void *soft_target,
                                    fastloss_index soft_target_row_stride, const void *weight,
                                    const double *lse, const double *grad_output,
                                    fastloss_index grad_output_stride, void *grad,
                                    fastloss_index grad_row_stride)
{
    const fastloss_ce_run run = ce_kernel(dtype);
    if (!run)
        return FASTLOSS_ERROR_BAD_DTYPE;
    return run(CE_MODE_ROWS, NULL, NULL, options, logits, logits_row_stride, target, soft_target, soft_target_row_stride,
               weight, lse, grad_output, grad_output_stride, NULL, NULL, NULL, grad,
               grad_row_stride);
}

int fastloss_cross_entropy_value_and_grad(int dtype, const fastloss_ce_options *options,
                                          const void *logits, fastloss_index logits_row_stride,
                                          const int64_t *target, const void *soft_target,
                                          fastloss_index soft_target_row_stride,
                                          const void *weight, const double *grad_output,
                                          fastloss_index grad_output_stride, double *loss_per_row,
                                          double *lse, double *loss, void *grad,
                                          fastloss_index grad_row_stride)
{
    const fastloss_ce_run run = ce_kernel(dtype);
    if (!run)
        return FASTLOSS_ERROR_BAD_DTYPE;
    return run(CE_MODE_ROWS, NULL, NULL, options, logits, logits_row_stride, target, soft_target, soft_target_row_stride,
               weight, NULL, grad_output, grad_output_stride, loss_per_row, lse, loss, grad,
               grad_row_stride);
}

int fastloss_cross_entropy_block_stats(int dtype, const fastloss_ce_options *options,
                                       const void *logits, fastloss_index logits_row_stride,
                                       const int64_t *target, const void *soft_target,
                                       fastloss_index soft_target_row_stride, const void *weight,
                                       double *stats)
{
    const fastloss_ce_run run = ce_kernel(dtype);
    if (!run)
        return FASTLOSS_ERROR_BAD_DTYPE;
    return run(CE_MODE_BLOCK_STATS, NULL, stats, options, logits, logits_row_stride, target,
               soft_target, soft_target_row_stride, weight, NULL, NULL, 0, NULL, NULL, NULL,
               NULL, 0);
}

int fastloss_cross_entropy_grad_from_stats(int dtype, const fastloss_ce_options *options,
                                           const void *logits, fastloss_index logits_row_stride,
                                           const int64_t *target, const void *soft_target,
                                           fastloss_index soft_target_row_stride,
                                           const void *weight, const double *stats,
                                           const double *grad_output,
                                           fastloss_index grad_output_stride, void *grad,
                                           fastloss_index grad_row_stride)
{
    const fastloss_ce_run run = ce_kernel(dtype);
    if (!run)
        return FASTLOSS_ERROR_BAD_DTYPE;
    return run(CE_MODE_BLOCK_GRAD, stats, NULL, options, logits, logits_row_stride, target,
               soft_target, soft_target_row_stride, weight, NULL, grad_output,
               grad_output_stride, NULL, NULL, NULL, grad, grad_row_stride);
}

/* One record of `stats` (row i of n_rows) rebased onto new_max, in place. */
static void ce_rebase_record(double *stats, fastloss_index n_rows, fastloss_index i,
                             double new_max)
{
    ce_rebase(stats[FASTLOSS_CE_STAT_MAX * n_rows + i], new_max, 1,
              stats[FASTLOSS_CE_STAT_MASS * n_rows + i], &stats[FASTLOSS_CE_STAT_SUM * n_rows + i],
              &stats[FASTLOSS_CE_STAT_SUM_OTHERS * n_rows + i],
              &stats[FASTLOSS_CE_STAT_DIST * n_rows + i]);
    stats[FASTLOSS_CE_STAT_MAX * n_rows + i] = new_max;
}

void fastloss_cross_entropy_rebase_stats(fastloss_index n_rows, double *stats,
                                         const double *new_max)
{
    for (fastloss_index i = 0; i < n_rows; ++i)
        ce_rebase_record(stats, n_rows, i, new_max[i]);
}

/* One block's records rebased onto the rows' maxima and added into `merged` (a
 * function of its own: gcc honours `restrict` on parameters, and the loop vectorises). */
#if defined(__GNUC__)
__attribute__((noinline))
#endif
static void ce_merge_block(fastloss_index n_rows, const double *FASTLOSS_RESTRICT block,
                           double *FASTLOSS_RESTRICT merged)
{
    const double *new_max = merged + FASTLOSS_CE_STAT_MAX * n_rows;
    for (fastloss_index i = 0; i < n_rows; ++i) {
        double sum = block[FASTLOSS_CE_STAT_SUM * n_rows + i];
        double others = block[FASTLOSS_CE_STAT_SUM_OTHERS * n_rows + i];
        double dist = block[FASTLOSS_CE_STAT_DIST * n_rows + i];
        ce_rebase(block[FASTLOSS_CE_STAT_MAX * n_rows + i], new_max[i], 1,
                  block[FASTLOSS_CE_STAT_MASS * n_rows + i], &sum, &others, &dist);
        merged[FASTLOSS_CE_STAT_SUM * n_rows + i] += sum;
        merged[FASTLOSS_CE_STAT_SUM_OTHERS * n_rows + i] += others;
        merged[FASTLOSS_CE_STAT_DIST * n_rows + i] += dist;
    }
    /* the fields that add as they are */
    for (int f = FASTLOSS_CE_STAT_MASS; f < FASTLOSS_CE_STATS_FIELDS; ++f)
        for (fastloss_index i = 0; i < n_rows; ++i)
            merged[f * n_rows + i] += block[f * n_rows + i];
}

/*
 * Block by block across the rows (loops that vectorise), each row's sums still taken
 * in the order of the blocks, from 0: the bits of a merge one row at a time.
 */
void fastloss_cross_entropy_merge_stats(fastloss_index n_rows, fastloss_index n_blocks,
                                        const double *const *blocks, double *merged)
{
    double *new_max = merged + FASTLOSS_CE_STAT_MAX * n_rows;
    for (fastloss_index i = 0; i < n_rows; ++i)
        new_max[i] = -INFINITY;
    for (fastloss_index k = 0; k < n_blocks; ++k) {
        const double *block_max = blocks[k] + FASTLOSS_CE_STAT_MAX * n_rows;
        for (fastloss_index i = 0; i < n_rows; ++i)
            new_max[i] = ce_max_merge(new_max[i], block_max[i]);
    }
    for (int f = 1; f < FASTLOSS_CE_STATS_FIELDS; ++f)
        for (fastloss_index i = 0; i < n_rows; ++i)
            merged[f * n_rows + i] = 0.0;
    for (fastloss_index k = 0; k < n_blocks; ++k)
        ce_merge_block(n_rows, blocks[k], merged);
}

int fastloss_cross_entropy_from_stats(const fastloss_ce_options *options, const double *stats,
                                      const int64_t *target, double *loss_per_row, double *lse,
                                      double *loss)
{
    const fastloss_index n_rows = options->n_rows;
    const int soft = target == NULL;
    const double one = 1.0;
    double *rows = malloc(2 * (size_t)(n_rows > 0 ? n_rows : 1) * sizeof(double));
    if (!rows)
        return FASTLOSS_ERROR_NO_MEMORY;
    double *row_ce = rows, *row_z = rows + n_rows;
    /* the mean's denominators in row order, as the runner counts them */
    double n_valid = (double)n_rows, weight_sum = (double)n_rows;
    if (!soft) {
        n_valid = 0.0;
        weight_sum = 0.0;
        for (fastloss_index i = 0; i < n_rows; ++i) {
            if (target[i] == options->ignore_index)
                continue;
            n_valid += 1.0;
            weight_sum += stats[FASTLOSS_CE_STAT_TARGET_WEIGHT * n_rows + i];
        }
    }
    ce_call call = {0};
    call.n_classes = options->total_classes;
    call.total_classes = options->total_classes;
    call.ignore_index = options->ignore_index;
    call.soft = soft;
    call.reduction = options->reduction;
    call.smoothing = options->label_smoothing;
    call.z_loss = options->z_loss;
    call.grad_output = &one;
    call.ce_factor = 1.0;
    call.z_factor = 1.0;
    for (fastloss_index i = 0; i < n_rows; ++i) {
        if (!soft && target[i] == options->ignore_index) {
            row_ce[i] = row_z[i] = 0.0;
            if (lse)
                lse[i] = 0.0;
            continue;
        }
        ce_row_stats row;
        ce_row_coef coef;
        row.max = stats[FASTLOSS_CE_STAT_MAX * n_rows + i];
        row.sum = stats[FASTLOSS_CE_STAT_SUM * n_rows + i];
        row.log_sum = log(row.sum);
        row.dist = stats[FASTLOSS_CE_STAT_DIST * n_rows + i];
        row.mass = stats[FASTLOSS_CE_STAT_MASS * n_rows + i];
        row.excl = stats[FASTLOSS_CE_STAT_SUM_OTHERS * n_rows + i];
        /* the coefficients of the float64 rows: the same formulas in double */
        ce_coefficients_f64_f64_baseline(&call, &row,
                                         stats[FASTLOSS_CE_STAT_TARGET_LOGIT * n_rows + i],
                                         stats[FASTLOSS_CE_STAT_TARGET_WEIGHT * n_rows + i], 0,
                                         &coef);
        row_ce[i] = coef.ce;
        row_z[i] = coef.z_term;
        if (lse)
            lse[i] = coef.lse;
    }
    if (loss_per_row)
        for (fastloss_index i = 0; i < n_rows; ++i)
            loss_per_row[i] = row_ce[i] + row_z[i];
    if (loss) {
        const double ce_total = fastloss_sum_float64(row_ce, n_rows);
        /* without a z-loss every row's term is 0.0 exactly (ce_coefficients) */
        const double z_total = options->z_loss > 0.0 ? fastloss_sum_float64(row_z, n_rows) : 0.0;
        if (options->reduction == FASTLOSS_REDUCTION_MEAN)
            *loss = ce_total / weight_sum + (options->z_loss > 0.0 ? z_total / n_valid : 0.0);
        else
            *loss = ce_total + z_total;
    }
    free(rows);
    return FASTLOSS_OK;
}
