/*
 * half_convert.h -- the half-precision conversions of storage.h over whole arrays,
 * on the SIMD path the kernels run (fastloss_simd_level): each ISA's build of the
 * same LOAD / STORE / STORE_WIDE loops the kernel bodies use, so that a test can
 * hold every path's vectorised conversion (and its scalar tail) to the exact
 * definition, bit for bit.  Plain C99.
 */
#ifndef FASTLOSS_HALF_CONVERT_H
#define FASTLOSS_HALF_CONVERT_H

#include <stdint.h>

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* out[i] = the float32 value of half bit pattern in[i], for dtype FASTLOSS_BFLOAT16 or
 * FASTLOSS_FLOAT16; 0, or FASTLOSS_ERROR_BAD_DTYPE for another code. */
int fastloss_half_load(int dtype, const uint16_t *in, float *out, fastloss_index n);

/* out[i] = in[i] rounded to the half type (nearest, ties to even; NaN kept, quiet). */
int fastloss_half_store(int dtype, const float *in, uint16_t *out, fastloss_index n);

/* out[i] = in[i] (a double) rounded once to the half type (STORE_WIDE). */
int fastloss_half_store_wide(int dtype, const double *in, uint16_t *out, fastloss_index n);

/* out[i] = exp(in[i]) by fastloss_expf5_nonpositive (nonpositive != 0) or fastloss_expf5
 * (csrc/fastmath.h), the exp of the half-precision cross-entropy rows, vectorised as
 * there: for tests of its error bound on every SIMD path.  Returns 0. */
int fastloss_half_exp(const float *in, float *out, fastloss_index n, int nonpositive);

/* out[i] = exp(in[i]) by the float32 rows' exps (csrc/fastmath.h):
 * fastloss_expf_nonpositive (nonpositive != 0) or fastloss_expf, and the float64 rows'
 * fastloss_exp_nonpositive or fastloss_exp, vectorised on the running SIMD path: for
 * tests of their range (gradual underflow) and error.  Return 0. */
int fastloss_fast_exp(const float *in, float *out, fastloss_index n, int nonpositive);
int fastloss_fast_exp_double(const double *in, double *out, fastloss_index n, int nonpositive);

/* acc[c] += the sum over rows r = 0 .. rows - 1, in that order, of x[r * row_stride + c],
 * for c < cols: x of dtype FASTLOSS_FLOAT32, FASTLOSS_FLOAT64, FASTLOSS_BFLOAT16 or
 * FASTLOSS_FLOAT16 (bit patterns), each value added exactly in double, one addition
 * at a time onto acc's value.  Threads take blocks of columns, so the sums are the
 * same bits for any num_threads.  The bias's gradient of a linear layer from its
 * logits' gradient, block by block.  Returns 0, or FASTLOSS_ERROR_BAD_DTYPE for
 * another code. */
int fastloss_column_sums(int dtype, const void *x, fastloss_index rows, fastloss_index cols,
                         fastloss_index row_stride, double *acc, int num_threads);

#ifdef __cplusplus
}
#endif

#endif /* FASTLOSS_HALF_CONVERT_H */
