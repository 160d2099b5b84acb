/*
 * sequence.h -- per-sequence sums of token log-probabilities under a mask (the
 * sequence log-probabilities that DPO and the reward models of preference
 * training compare), for the storage types of storage.h (float32, float64,
 * bfloat16 and float16).
 *
 * Per row b of an (n_rows, n_tokens) array x of token log-probabilities and a
 * mask m of the same shape, of x's storage type (float32 beside half-precision x:
 * storage.h's AUX type) or of bytes (a bool mask, read
 * as it is stored: no conversion pass), 1 for a token of the answer, 0 for the
 * prompt and padding (any other value weights its token):
 *   sum:      s_b = sum over t with m_bt != 0 of m_bt x_bt
 *   average:  s_b / c_b,  c_b = sum_t m_bt  (TRL's average_log_prob; NaN for c_b = 0)
 *   gradient: d(sum_b g_b s_b) / d x_bt = m_bt g_b  (divided by c_b for the average)
 * A token whose mask is 0 is skipped, not multiplied by 0, so that a NaN or -inf
 * log-probability at a padded position does not make its row NaN (TRL's
 * (x * m).sum(-1) would).  Sums accumulate in double, each row in a fixed order
 * (FASTLOSS_LANES lanes, then the tail), one thread per row: the result is the
 * same for any number of threads.
 *
 * Layout: x, m and the gradient are row-major with n_tokens contiguous values per
 * row and `row_stride` elements between rows (>= n_tokens); per-row arrays are
 * contiguous.  Every index is 64-bit.
 */
#ifndef FASTLOSS_SEQUENCE_H
#define FASTLOSS_SEQUENCE_H

#include "common.h"
#include "storage.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct fastloss_sequence_options {
    fastloss_index n_rows, n_tokens;
    fastloss_index row_stride;   /* elements between rows of x, m and the gradient */
    int average;                 /* 0: sums, 1: divided by the mask's row sums */
    int mask_is_bytes;           /* 1: the mask is bool bytes (any byte but 0 is 1); 0: STORE_T */
    int num_threads;             /* upper bound on OpenMP threads (>= 1) */
} fastloss_sequence_options;

/*
 * Arguments (IN unless marked OUT):
 *   dtype             the storage type of token_log_probs, mask and grad (enum fastloss_dtype)
 *   token_log_probs   n_rows rows of n_tokens values (not read by the backward)
 *   mask              likewise, of bytes where mask_is_bytes
 *   sums              OUT, n_rows doubles: the rows' sums or averages, or NULL
 *   grad_output       n_rows doubles (stride 1) or one for every row (stride 0)
 *   grad              OUT, the gradient w.r.t. token_log_probs (same layout), or NULL;
 *                     may be token_log_probs itself (each row is summed before it is
 *                     written); overlaps nothing else
 * Return FASTLOSS_OK or FASTLOSS_ERROR_BAD_DTYPE.
 */
int fastloss_sequence_log_probs(int dtype, const fastloss_sequence_options *options,
                                const void *token_log_probs, const void *mask, double *sums,
                                const double *grad_output, fastloss_index grad_output_stride,
                                void *grad);

#ifdef __cplusplus
}
#endif

#endif /* FASTLOSS_SEQUENCE_H */
