/*
 * vocab.h -- language-model objectives over the vocabulary (the last axis) built on
 * the softmax engine: token log-probabilities with the entropy, and distillation
 * between a student's and a teacher's logits (forward KL, reverse KL, generalised
 * Jensen-Shannon).  For every storage type of storage.h (float32 and float64).  See
 * vocab.c for the formulas.
 *
 * Layout: each logits array is n_rows rows of n_classes contiguous values, row i at
 * data + i * row_stride (elements); gradients the same with their own row strides.
 * Every index is 64-bit.
 *
 * Preconditions the caller checks (the Cython layer does): temperature > 0 and
 * finite, beta in [0, 1], outputs that do not overlap the inputs or each other.  Hard targets of
 * token log-probabilities are checked by the kernel itself, before anything is
 * written.
 */
#ifndef FASTLOSS_VOCAB_H
#define FASTLOSS_VOCAB_H

#include "common.h"
#include "storage.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Which divergence fastloss_distill computes, with P the teacher's distribution and Q
 * the student's, both softmax(logits / temperature). */
enum fastloss_divergence {
    FASTLOSS_DIVERGENCE_FORWARD_KL = 0, /* KL(P || Q) = sum P (log P - log Q) */
    FASTLOSS_DIVERGENCE_REVERSE_KL = 1, /* KL(Q || P) */
    FASTLOSS_DIVERGENCE_JSD = 2         /* beta KL(P || M) + (1 - beta) KL(Q || M),
                                           M = beta P + (1 - beta) Q, 0 < beta < 1 */
};

/* Reductions of fastloss_distill: FASTLOSS_REDUCTION_NONE, _SUM, or this one (the mean
 * over the rows that are not ignored, torch's "batchmean"). */
#define FASTLOSS_VOCAB_BATCHMEAN FASTLOSS_REDUCTION_MEAN

typedef struct fastloss_vocab_options {
    fastloss_index n_rows;
    fastloss_index n_classes;
    fastloss_index ignore_index; /* rows whose target equals it contribute nothing */
    double temperature;          /* > 0: the distributions are softmax(logits / temperature) */
    double beta;                 /* JSD's weight of the teacher in the mixture */
    int divergence;              /* enum fastloss_divergence (fastloss_distill) */
    int reduction;               /* fastloss_distill: NONE, SUM or FASTLOSS_VOCAB_BATCHMEAN */
    int num_threads;             /* upper bound on OpenMP threads (>= 1) */
    fastloss_index *bad_target;  /* OUT, or NULL: the first row whose target is outside
                                    [0, n_classes) and not ignore_index, when a call
                                    returns FASTLOSS_ERROR_BAD_TARGET */
} fastloss_vocab_options;

/*
 * Token log-probabilities: per row i with target t_i, z = logits / temperature,
 *   log_prob[i] = z_t - logsumexp(z),   entropy[i] = -sum_c p_c log p_c,  p = softmax(z)
 * (0 for rows whose target is ignore_index), and, when grad is given, the gradient of
 *   sum_i grad_log_prob[i] log_prob[i] + grad_entropy[i] entropy[i]
 * w.r.t. the logits (zero rows where ignored).  Arguments (IN unless marked OUT):
 *   dtype          storage type of logits and grad (enum fastloss_dtype)
 *   target         n_rows class indices
 *   log_prob       OUT, n_rows float64 values, or NULL
 *   entropy        OUT, n_rows float64 values, or NULL
 *   grad_log_prob  one value per row read with stride grad_log_prob_stride (0: one
 *                  scalar for all rows), or NULL for 0; the same for grad_entropy
 *   grad           OUT, n_rows x n_classes of dtype, or NULL (no gradient)
 * The forward reads each row once; with grad the row is read twice, the second time
 * from the cache (a row of 50257 float32 is 200 KiB).  Returns FASTLOSS_OK,
 * FASTLOSS_ERROR_NO_MEMORY, FASTLOSS_ERROR_BAD_TARGET (nothing written) or
 * FASTLOSS_ERROR_BAD_DTYPE.
 */
int fastloss_token_log_probs(int dtype, const fastloss_vocab_options *options,
                             const void *logits, fastloss_index logits_row_stride,
                             const int64_t *target, double *log_prob, double *entropy,
                             const double *grad_log_prob, fastloss_index grad_log_prob_stride,
                             const double *grad_entropy, fastloss_index grad_entropy_stride,
                             void *grad, fastloss_index grad_row_stride);

/*
 * Distillation: the divergence options->divergence between the teacher's and the
 * student's distributions per row, reduced; rows whose target equals ignore_index
 * (target may be NULL: no row is ignored) have loss 0 and zero gradients.
 *   loss_per_row   OUT, n_rows float64 values, or NULL
 *   loss           OUT, the reduced loss (unused for reduction NONE), or NULL
 *   grad_output    the upstream gradient, one value per row with stride
 *                  grad_output_stride (0: one scalar), read only when a gradient is
 *   grad_student   OUT, the gradient of grad_output * loss w.r.t. the student's
 *                  logits, or NULL; grad_teacher the same for the teacher's
 * Each row of both inputs is read from memory once and each gradient row written
 * once (the later passes over a row find it in the cache).  Returns FASTLOSS_OK,
 * FASTLOSS_ERROR_NO_MEMORY or FASTLOSS_ERROR_BAD_DTYPE.
 */
int fastloss_distill(int dtype, const fastloss_vocab_options *options,
                     const void *student, fastloss_index student_row_stride,
                     const void *teacher, fastloss_index teacher_row_stride,
                     const int64_t *target, double *loss_per_row, double *loss,
                     const double *grad_output, fastloss_index grad_output_stride,
                     void *grad_student, fastloss_index grad_student_row_stride,
                     void *grad_teacher, fastloss_index grad_teacher_row_stride);

#ifdef __cplusplus
}
#endif

#endif /* FASTLOSS_VOCAB_H */
