/*
 * cross_entropy.h -- softmax cross-entropy over the last (class) axis, for
 * every storage type of storage.h (float32 and float64 logits).  See
 * cross_entropy.c for the formulas.
 *
 * Layout: logits are n_rows rows of n_classes contiguous values, row i at
 * logits + i * logits_row_stride (elements).  Soft targets and the gradient
 * use the same convention with their own row strides.  Every index is 64-bit.
 *
 * Preconditions the caller checks (the Cython layer does): label_smoothing
 * in [0, 1], softcap is 0 (off) or > 0, z_loss >= 0, the gradient either is
 * the logits buffer itself with the same row stride (in place) or does not
 * overlap the inputs.  Hard targets are checked by the kernels themselves, in
 * the scan that counts the rows, before anything is written.
 */
#ifndef FASTLOSS_CROSS_ENTROPY_H
#define FASTLOSS_CROSS_ENTROPY_H

#include "common.h"
#include "storage.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct fastloss_ce_options {
    fastloss_index n_rows;
    fastloss_index n_classes;
    fastloss_index ignore_index;  /* rows whose hard target equals it contribute nothing */
    double label_smoothing;       /* epsilon in [0, 1] */
    double z_loss;                /* coefficient of lse**2 per non-ignored row */
    double softcap;               /* 0: off; > 0: logits -> softcap * tanh(logits / softcap) */
    int reduction;                /* enum fastloss_reduction */
    int num_threads;              /* upper bound on OpenMP threads (>= 1) */
    fastloss_index *bad_target;   /* OUT, or NULL: the first row whose hard target is
                                     outside [0, n_classes) and not ignore_index, when
                                     a call returns FASTLOSS_ERROR_BAD_TARGET */
} fastloss_ce_options;

/*
 * Arguments shared by the three entry points (IN unless marked OUT):
 *   dtype           the storage type of logits, soft_target, weight and grad
 *                   (enum fastloss_dtype of storage.h: FASTLOSS_FLOAT32 or
 *                   FASTLOSS_FLOAT64); each is an array of that type
 *   target          hard targets (n_rows), or NULL when soft_target is given
 *   soft_target     target probabilities, rows like the logits, or NULL
 *   weight          per-class weights (n_classes), or NULL for all ones
 *   lse             OUT (forward, value_and_grad) / IN (backward): per-row
 *                   log-sum-exp in float64; 0 for ignored rows.  May be NULL
 *                   where it is OUT.  The backward takes it as the shift of
 *                   the exps and renormalises them (exact whatever the lse's
 *                   rounding); a row whose lse is off by more than log 2
 *                   (another row's) is recomputed from its logits.
 *   loss_per_row    OUT, n_rows float64 values of the unreduced loss, or NULL
 *   loss            OUT, the sum or mean (unused for reduction none), or NULL
 *   grad_output     IN, the upstream gradient: one value per row read with
 *                   stride grad_output_stride (0: one scalar for all rows)
 *   grad            OUT, the gradient of grad_output * loss w.r.t. the logits
 * Return FASTLOSS_OK, or FASTLOSS_ERROR_NO_MEMORY or FASTLOSS_ERROR_BAD_TARGET
 * (options->bad_target says where) with nothing written, or
 * FASTLOSS_ERROR_BAD_DTYPE for a dtype code this build does not know.
 */
int fastloss_cross_entropy_forward(
    int dtype, const fastloss_ce_options *options,
    const void *logits, fastloss_index logits_row_stride,
    const int64_t *target, const void *soft_target, fastloss_index soft_target_row_stride,
    const void *weight, double *loss_per_row, double *lse, double *loss);

/* The gradient from a given lse: one read of the logits, one write of grad,
 * and no max pass. */
int fastloss_cross_entropy_backward(
    int dtype, const fastloss_ce_options *options,
    const void *logits, fastloss_index logits_row_stride,
    const int64_t *target, const void *soft_target, fastloss_index soft_target_row_stride,
    const void *weight, const double *lse,
    const double *grad_output, fastloss_index grad_output_stride,
    void *grad, fastloss_index grad_row_stride);

/* Loss and gradient in one visit to each row; grad may be the logits (in place). */
int fastloss_cross_entropy_value_and_grad(
    int dtype, const fastloss_ce_options *options,
    const void *logits, fastloss_index logits_row_stride,
    const int64_t *target, const void *soft_target, fastloss_index soft_target_row_stride,
    const void *weight, const double *grad_output, fastloss_index grad_output_stride,
    double *loss_per_row, double *lse, double *loss,
    void *grad, fastloss_index grad_row_stride);

#ifdef __cplusplus
}
#endif

#endif /* FASTLOSS_CROSS_ENTROPY_H */
