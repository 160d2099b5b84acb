/*
 * vocab.c -- objectives of language models over the vocabulary, on the softmax engine
 * of cross_entropy.c (chunked online log-sum-exp, float64 sums in a fixed order).
 *
 * Every distribution is a softmax of logits x over the last axis at temperature T:
 *   a_c = (x_c - M) / T (M the row's max),  S = sum_c exp(a_c),
 *   log p_c = a_c - log S,  lse = M / T + log S.
 *
 * 1. Token log-probabilities and entropy (RLHF's log-probs of sampled tokens and the
 *    entropy bonus).  With W = sum_c exp(a_c) a_c, accumulated beside S:
 *      log p_t = a_t - log S,   H = -sum_c p_c log p_c = log S - W / S.
 *    Online merge (the chunks of a row): a chunk k with max m_k holds S_k, W_k relative
 *    to its own shift; relative to M its a_c grow by delta = (m_k - M) / T <= 0, so
 *      S_k -> exp(delta) S_k,   W_k -> exp(delta) (W_k + delta S_k).
 *    Every term e a is <= 0 and log S >= 0: H = log S - W / S adds two non-negative
 *    numbers, with no cancellation.  Gradients (d a_c / d x_j = [c = j] / T):
 *      d log p_t / d x_j = ([j = t] - p_j) / T,
 *      d H / d x_j       = -p_j (log p_j + H) / T,   log p_j + H = a_j - W / S.
 *
 * 2. Distillation, P the teacher's softmax and Q the student's (logits u and z):
 *      forward KL  KL(P || Q) = sum_c p_c (log p_c - log q_c)
 *      reverse KL  KL(Q || P)
 *      JSD(beta)   beta KL(P || M) + (1 - beta) KL(Q || M),  M = beta P + (1 - beta) Q,
 *    Liger-Kernel's and TRL's generalised Jensen-Shannon divergence (GKD, Agarwal et
 *    al. 2024, arXiv:2306.13649), whose beta = 0 and beta = 1 are, by their convention,
 *    the forward and the reverse KL (the Python API maps them; the kernel's JSD has
 *    0 < beta < 1).  Each is a sum of terms >= 0 (a close pair's divergence, of the
 *    order of the squared difference, is then no remainder of larger terms that
 *    cancel): with y_c = log q_c - log p_c and g(y) = exp(y) - 1 - y >= 0, sum p = sum q
 *    = 1 gives
 *      KL(P || Q) = sum_c p (-y) = sum_c p (e^y - 1 - y) = sum_c p g(y),
 *      KL(Q || P) = sum_c q g(-y),
 *      KL(P || M) = sum_c p g(u),  KL(Q || M) = sum_c q g(v),
 *    u = log m - log p = log1p((1 - beta) expm1(y)), v = log m - log q = u - y
 *    (a class with p = 0 adds q, or m, the same formula's q - p - p y with 0 y = 0).
 *    y_c is the logits' own difference (x_s,c - x_t,c) / T, rounded once (vocab_body.h,
 *    DISTILL_STATS_STEP), plus one constant of the row, kappa = log(Z_t / Z_s), which
 *    pass A gets to the relative accuracy of the models' difference (distill_kappa);
 *    never from rounded log-probabilities.  q - p = p expm1(y), p - q = q expm1(-y).
 *    With d loss / d log q_c = g_c the gradient w.r.t. z is (g_j - q_j sum_c g_c) / T:
 *      forward KL  d/dz = (q - p) / T,               d/du = p (log p - log q - KL) / T
 *      reverse KL  d/dz = q (log q - log p - KL) / T, d/du = (p - q) / T
 *      JSD         d/dz = (1 - beta) q (log q - log m - KL(Q || M)) / T,
 *                  d/du = beta p (log p - log m - KL(P || M)) / T.
 *    (No T**2 factor: as TRL's and Liger's, the caller scales the loss if it wants
 *    Hinton's.)
 *
 * Passes per row: A, both rows' maxima and sums of exps in one loop per chunk (the
 * chunk's max found by the previous chunk's loop, the chunk after the next prefetched),
 * keeping each model's exps and the differences a_s - a_t in rows of their own, and
 * the sums that give kappa; B, the
 * divergence and the totals its gradient subtracts; C, the gradients.  B and C read the
 * kept rows from the cache, never the logits, so each input is read from memory once
 * and each gradient written once.  Rows are independent and run in
 * parallel in fixed ranges; the reduction sums the rows' losses in a fixed order
 * (fastloss_sum_float64): the same bits for any number of threads.
 */
#include "dtype_table.h"
#include "vocab_internal.h"

#define FASTLOSS_ISA baseline
#include "vocab_impl.h"

/* The kernels this CPU runs best, by storage type (every code of storage.h, the half
 * types with their gradient in the same type or in float32): fastloss_vocab_select
 * fills the tables (see fastloss_select_kernels); baseline until then. */
static fastloss_tlp_run tlp_kernels[FASTLOSS_N_DTYPES] = FASTLOSS_DTYPE_TABLE(fastloss_tlp_run);
static fastloss_distill_run distill_kernels[FASTLOSS_N_DTYPES] =
    FASTLOSS_DTYPE_TABLE(fastloss_distill_run);

void fastloss_vocab_select(int level)
{
    FASTLOSS_DTYPE_TABLE_SELECT(tlp_kernels, fastloss_tlp_run, level);
    FASTLOSS_DTYPE_TABLE_SELECT(distill_kernels, fastloss_distill_run, level);
}

int fastloss_token_log_probs(int dtype, const fastloss_vocab_options *options,
                             const void *logits, fastloss_index logits_row_stride,
                             const int64_t *target, double *log_prob, double *entropy,
                             const double *grad_log_prob, fastloss_index grad_log_prob_stride,
                             const double *grad_entropy, fastloss_index grad_entropy_stride,
                             void *grad, fastloss_index grad_row_stride)
{
    if (!fastloss_dtype_known(dtype) || !tlp_kernels[dtype])
        return FASTLOSS_ERROR_BAD_DTYPE;
    return tlp_kernels[dtype](options, logits, logits_row_stride, target, log_prob, entropy,
                              grad_log_prob, grad_log_prob_stride, grad_entropy,
                              grad_entropy_stride, grad, grad_row_stride);
}

int fastloss_distill(int dtype, const fastloss_vocab_options *options, const void *student,
                     fastloss_index student_row_stride, const void *teacher,
                     fastloss_index teacher_row_stride, const int64_t *target,
                     double *loss_per_row, double *loss, const double *grad_output,
                     fastloss_index grad_output_stride, void *grad_student,
                     fastloss_index grad_student_row_stride, void *grad_teacher,
                     fastloss_index grad_teacher_row_stride)
{
    if (!fastloss_dtype_known(dtype) || !distill_kernels[dtype])
        return FASTLOSS_ERROR_BAD_DTYPE;
    return distill_kernels[dtype](options, student, student_row_stride, teacher,
                                  teacher_row_stride, target, loss_per_row, loss, grad_output,
                                  grad_output_stride, grad_student, grad_student_row_stride,
                                  grad_teacher, grad_teacher_row_stride);
}
