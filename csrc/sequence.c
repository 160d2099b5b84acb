/*
 * sequence.c -- per-sequence sums of token log-probabilities under a mask
 * (formulas and determinism: sequence.h).  One pass over the rows: the value
 * reads x and the mask, the gradient the mask (and x, in the fused call, for
 * the value); the arithmetic is one multiply-add per token, so the kernel runs
 * at memory speed without SIMD dispatch.
 */
#include "sequence.h"

#define SEQ_PASTE_(name, storage) fastloss_sequence_##name##_##storage
#define SEQ_PASTE(name, storage) SEQ_PASTE_(name, storage)

#define STORAGE float32
#include "storage_begin.h"
#define SEQ(name) SEQ_PASTE(name, float32)
#include "sequence_body.h"
#undef SEQ
#include "storage_end.h"

#define STORAGE float64
#include "storage_begin.h"
#define SEQ(name) SEQ_PASTE(name, float64)
#include "sequence_body.h"
#undef SEQ
#include "storage_end.h"

int fastloss_sequence_log_probs(int dtype, const fastloss_sequence_options *options,
                                const void *token_log_probs, const void *mask, double *sums,
                                const double *grad_output, fastloss_index grad_output_stride,
                                void *grad)
{
    switch (dtype) {
    case FASTLOSS_FLOAT32:
        return fastloss_sequence_run_float32(options, token_log_probs, mask, sums, grad_output,
                                             grad_output_stride, grad);
    case FASTLOSS_FLOAT64:
        return fastloss_sequence_run_float64(options, token_log_probs, mask, sums, grad_output,
                                             grad_output_stride, grad);
    default:
        return FASTLOSS_ERROR_BAD_DTYPE;
    }
}
