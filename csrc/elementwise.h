/*
 * elementwise.h -- the losses that are a sum of one term per element: mse,
 * l1, huber, smooth_l1 and bce_with_logits, for float32 and float64.  See
 * elementwise.c for the formulas.
 *
 * Layout: pred and target are n contiguous values (the Python layer
 * broadcasts them to one shape and makes them contiguous).  The optional
 * weight and pos_weight are periodic: element i reads weight[i % weight_period]
 * (a per-class weight of C values over (..., C) data has period C; a weight
 * of the data's full shape has period n), which keeps broadcast factors in
 * cache instead of materialising them.  Every index is 64-bit.
 *
 * Preconditions the caller checks (the Cython layer does): the periods are
 * >= 1 when their array is given; for huber the threshold (delta) is > 0,
 * for smooth_l1 it (beta) is >= 0; pos_weight only with bce_with_logits;
 * weight_sum_repeats >= 1; grad is either the pred or the target buffer itself
 * (in place: each tile is read before its gradient is written) or overlaps no
 * input; grad_target and loss_per_element overlap nothing.
 */
#ifndef FASTLOSS_ELEMENTWISE_H
#define FASTLOSS_ELEMENTWISE_H

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

enum fastloss_elementwise_loss {
    FASTLOSS_LOSS_MSE = 0,
    FASTLOSS_LOSS_L1 = 1,
    FASTLOSS_LOSS_HUBER = 2,            /* threshold = delta */
    FASTLOSS_LOSS_SMOOTH_L1 = 3,        /* threshold = beta; beta == 0 is exactly l1 */
    FASTLOSS_LOSS_BCE_WITH_LOGITS = 4   /* pred holds logits; pos_weight allowed */
};

typedef struct fastloss_elementwise_options {
    fastloss_index n;                   /* elements */
    int loss;                           /* enum fastloss_elementwise_loss */
    double threshold;                   /* huber's delta or smooth_l1's beta; else unused */
    fastloss_index weight_period;       /* weight[i % weight_period] (unused without weight) */
    fastloss_index pos_weight_period;   /* likewise for pos_weight */
    /* mse and l1 with a weight: "mean" divides by the weights' sum over the n
     * elements divided by this.  torch (2.13) sums the weight as paired with
     * pred, before a larger target's broadcast repeats each of its values this
     * many times; 1 when nothing repeats them. */
    fastloss_index weight_sum_repeats;
    int reduction;                      /* enum fastloss_reduction */
    int num_threads;                    /* upper bound on OpenMP threads (>= 1) */
} fastloss_elementwise_options;

/*
 * Arguments shared by the three entry points (IN unless marked OUT):
 *   pred, target      n values each
 *   weight            per-element factor (periodic, see above), or NULL for ones
 *   pos_weight        bce_with_logits' weight of the positive term (periodic),
 *                     or NULL for ones
 *   loss_per_element  OUT, n values of the weighted loss (reduction none), or NULL
 *   loss              OUT, two float64 values (unused for none), or NULL:
 *                     loss[0] the sum or mean, loss[1] the same of |term|, the
 *                     terms' magnitude.  Where terms of both signs (a negative
 *                     weight) cancel, the rounding of each float32 term is
 *                     relative to loss[1], not loss[0]: the caller compares them.
 *   grad_output       IN, the upstream gradient: n values with stride 1, or one
 *                     value for every element with stride 0
 *   grad              OUT, the gradient of grad_output * loss w.r.t. pred, or NULL
 *   grad_target       OUT, the same w.r.t. target, or NULL: minus the slope for the
 *                     regression losses, w (-x + (p - 1) softplus(-x)) for bce
 * Return FASTLOSS_OK or FASTLOSS_ERROR_NO_MEMORY (nothing is written then).
 */
int fastloss_elementwise_forward_float32(
    const fastloss_elementwise_options *options, const float *pred, const float *target,
    const float *weight, const float *pos_weight, float *loss_per_element, double *loss);
int fastloss_elementwise_forward_float64(
    const fastloss_elementwise_options *options, const double *pred, const double *target,
    const double *weight, const double *pos_weight, double *loss_per_element, double *loss);

int fastloss_elementwise_backward_float32(
    const fastloss_elementwise_options *options, const float *pred, const float *target,
    const float *weight, const float *pos_weight, const double *grad_output,
    fastloss_index grad_output_stride, float *grad, float *grad_target);
int fastloss_elementwise_backward_float64(
    const fastloss_elementwise_options *options, const double *pred, const double *target,
    const double *weight, const double *pos_weight, const double *grad_output,
    fastloss_index grad_output_stride, double *grad, double *grad_target);

/* Loss and gradients in one pass over pred and target. */
int fastloss_elementwise_value_and_grad_float32(
    const fastloss_elementwise_options *options, const float *pred, const float *target,
    const float *weight, const float *pos_weight, const double *grad_output,
    fastloss_index grad_output_stride, float *loss_per_element, double *loss, float *grad,
    float *grad_target);
int fastloss_elementwise_value_and_grad_float64(
    const fastloss_elementwise_options *options, const double *pred, const double *target,
    const double *weight, const double *pos_weight, const double *grad_output,
    fastloss_index grad_output_stride, double *loss_per_element, double *loss, double *grad,
    double *grad_target);

#ifdef __cplusplus
}
#endif

#endif /* FASTLOSS_ELEMENTWISE_H */
