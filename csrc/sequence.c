/*
 * sequence.c -- per-sequence sums of token log-probabilities under a mask
 * (formulas and determinism: sequence.h).  One pass over the rows: the value
 * reads x and the mask, the gradient the mask (and x, in the fused call, for
 * the value); the arithmetic is one multiply-add per token, so the kernel runs
 * at memory speed without SIMD dispatch (in half precision too: a load is a shift or
 * a few integer operations).
 */
#include "sequence.h"

#define SEQ_PASTE_(name, storage) fastloss_sequence_##name##_##storage
#define SEQ_PASTE(name, storage) SEQ_PASTE_(name, storage)

/* One instantiation per storage type (storage.h): float32, float64, and the half types
 * bfloat16 and float16 (their gradient in the same type, and in float32: the _grad32
 * tags). */
#define STORAGE float32
#define SEQ_TAG float32
#include "sequence_instance.h"

#define STORAGE float64
#define SEQ_TAG float64
#include "sequence_instance.h"

#define STORAGE bfloat16
#define SEQ_TAG bfloat16
#include "sequence_instance.h"

#define STORAGE float16
#define SEQ_TAG float16
#include "sequence_instance.h"

#define STORAGE bfloat16_grad32
#define SEQ_TAG bfloat16_grad32
#include "sequence_instance.h"

#define STORAGE float16_grad32
#define SEQ_TAG float16_grad32
#include "sequence_instance.h"

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
    case FASTLOSS_BFLOAT16:
        return fastloss_sequence_run_bfloat16(options, token_log_probs, mask, sums,
                                              grad_output, grad_output_stride, grad);
    case FASTLOSS_FLOAT16:
        return fastloss_sequence_run_float16(options, token_log_probs, mask, sums, grad_output,
                                             grad_output_stride, grad);
    case FASTLOSS_BFLOAT16_GRAD_FLOAT32:
        return fastloss_sequence_run_bfloat16_grad32(options, token_log_probs, mask, sums,
                                                     grad_output, grad_output_stride, grad);
    case FASTLOSS_FLOAT16_GRAD_FLOAT32:
        return fastloss_sequence_run_float16_grad32(options, token_log_probs, mask, sums,
                                                    grad_output, grad_output_stride, grad);
    default:
        return FASTLOSS_ERROR_BAD_DTYPE;
    }
}
