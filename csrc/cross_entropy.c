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

#define FASTLOSS_ISA baseline
#include "cross_entropy_impl.h"

/* The kernels this CPU runs best, by storage type: fastloss_cross_entropy_select
 * fills the table (see fastloss_select_kernels); baseline until then.  A new
 * storage type (storage.h) is one more line in each of the two lists. */
static fastloss_ce_run ce_kernels[FASTLOSS_N_DTYPES] = {
    [FASTLOSS_FLOAT32] = fastloss_ce_run_float32_baseline,
    [FASTLOSS_FLOAT64] = fastloss_ce_run_float64_baseline,
};

void fastloss_cross_entropy_select(int level)
{
    ce_kernels[FASTLOSS_FLOAT32] = FASTLOSS_PICK(fastloss_ce_run_float32, level);
    ce_kernels[FASTLOSS_FLOAT64] = FASTLOSS_PICK(fastloss_ce_run_float64, level);
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
    return run(options, logits, logits_row_stride, target, soft_target, soft_target_row_stride,
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
    return run(options, logits, logits_row_stride, target, soft_target, soft_target_row_stride,
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
    return run(options, logits, logits_row_stride, target, soft_target, soft_target_row_stride,
               weight, NULL, grad_output, grad_output_stride, loss_per_row, lse, loss, grad,
               grad_row_stride);
}
