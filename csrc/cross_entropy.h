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
                                     outside [0, total_classes) and not ignore_index,
                                     when a call returns FASTLOSS_ERROR_BAD_TARGET */
    /* Blocks of classes (block statistics, and the gradient from merged statistics):
     * the logits are the classes [class_offset, class_offset + n_classes) of rows of
     * total_classes classes; hard targets are global indices, soft targets and weight
     * the block's own.  A whole row is class_offset 0, total_classes n_classes (or 0,
     * which means the same). */
    fastloss_index class_offset;
    fastloss_index total_classes;
} fastloss_ce_options;

/*
 * Block statistics: FASTLOSS_CE_STATS_FIELDS float64 arrays of n_rows values, field f
 * of row i at stats[f * n_rows + i] (the layout of the NumPy array (fields, rows)).
 * Sums are relative to the shift s = max (0 when max is -inf); u are the smoothing
 * weights (w_c with label smoothing and hard targets, w_c q'_c with soft targets).
 * docs/block_statistics.rst describes them; fastloss.reference computes them.
 */
enum fastloss_ce_stat {
    FASTLOSS_CE_STAT_MAX = 0,           /* max_c y_c (merged by maximum) */
    FASTLOSS_CE_STAT_SUM = 1,           /* sum_c exp(y_c - s) */
    FASTLOSS_CE_STAT_SUM_OTHERS = 2,    /* the same without the hard target's term */
    FASTLOSS_CE_STAT_DIST = 3,          /* sum_c u_c (s - y_c) */
    FASTLOSS_CE_STAT_MASS = 4,          /* sum_c u_c */
    FASTLOSS_CE_STAT_TARGET_LOGIT = 5,  /* y_t when t is in the block, else 0 */
    FASTLOSS_CE_STAT_TARGET_WEIGHT = 6, /* w_t when t is in the block, else 0 */
    FASTLOSS_CE_STAT_TARGET_COUNT = 7,  /* 1 when t is in the block, else 0 */
    FASTLOSS_CE_STAT_CLASSES = 8,       /* the block's width */
    FASTLOSS_CE_STATS_FIELDS = 9
};

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

/* The statistics of the block of classes options->class_offset + [0, n_classes) of
 * every row into `stats` (OUT, FASTLOSS_CE_STATS_FIELDS x n_rows).  Ignored rows get
 * the neutral record (max -inf, sums 0, their width).  Errors as the forward's. */
int fastloss_cross_entropy_block_stats(
    int dtype, const fastloss_ce_options *options,
    const void *logits, fastloss_index logits_row_stride,
    const int64_t *target, const void *soft_target, fastloss_index soft_target_row_stride,
    const void *weight, double *stats);

/* The gradient of a block (options->class_offset, n_classes wide) from the statistics
 * of the whole rows (merged): one read of the block, one write.  options->total_classes
 * is the merged `classes`; every non-ignored hard row's merged target_count must be 1
 * (the caller checks).  Arguments as fastloss_cross_entropy_backward's. */
int fastloss_cross_entropy_grad_from_stats(
    int dtype, const fastloss_ce_options *options,
    const void *logits, fastloss_index logits_row_stride,
    const int64_t *target, const void *soft_target, fastloss_index soft_target_row_stride,
    const void *weight, const double *stats,
    const double *grad_output, fastloss_index grad_output_stride,
    void *grad, fastloss_index grad_row_stride);

/* stats (IN/OUT, n_rows records) rebased onto new_max (n_rows values, each >= the
 * record's max): the sums become relative to it. */
void fastloss_cross_entropy_rebase_stats(fastloss_index n_rows, double *stats,
                                         const double *new_max);

/* The merge of n_blocks records of n_rows rows (blocks[k], each FIELDS x n_rows) into
 * merged (OUT, which may be none of the blocks), in block order. */
void fastloss_cross_entropy_merge_stats(fastloss_index n_rows, fastloss_index n_blocks,
                                        const double *const *blocks, double *merged);

/* The loss from merged statistics: soft (no hard targets; target NULL) or hard
 * (target: the rows' class indices, ignore_index per options).  options->total_classes
 * is the merged `classes`; n_classes, softcap and num_threads are not read.  Outputs as
 * the forward's (loss_per_row, lse and loss may each be NULL). */
int fastloss_cross_entropy_from_stats(const fastloss_ce_options *options, const double *stats,
                                      const int64_t *target, double *loss_per_row, double *lse,
                                      double *loss);

#ifdef __cplusplus
}
#endif

#endif /* FASTLOSS_CROSS_ENTROPY_H */
