/*
 * elementwise.c -- the losses of one term per element: forward, gradient, and
 * the fused value-and-grad.
 *
 * Per element, r = pred - target, with torch's definitions and boundaries
 * (torch.nn.functional.mse_loss, l1_loss, huber_loss, smooth_l1_loss,
 * binary_cross_entropy_with_logits):
 *   mse          r**2                                      slope 2 r
 *   l1           |r|                                       sign(r), 0 at r = 0
 *   huber        |r| < d ? r**2 / 2 : d (|r| - d / 2)      clamp(r, -d, d)
 *   smooth_l1    |r| < b ? r**2 / (2 b) : |r| - b / 2      clamp(r / b, -1, 1); b = 0 is l1
 *   bce          (1 - y) x + w softplus(-x),               w sigmoid(x) - p y
 *                x = pred (logits), y = target, p = pos_weight, w = 1 + (p - 1) y
 * and the pointwise losses of the registry issue (their formulas, torch's
 * semantics at kinks and limits, and the deliberate differences, beside their
 * code in elementwise_body.h):
 *   sigmoid_focal    a_t ce u**gamma, u = 1 - p_t          torchvision.ops.sigmoid_focal_loss
 *   margin_ranking   max(0, -y (x1 - x2) + margin), aux = y     margin_ranking_loss
 *   poisson_nll      exp(x) - y x or x - y log(x + eps) (+ Stirling)  poisson_nll_loss
 *   gaussian_nll     0.5 (log v + (x - t)**2 / v), v = max(var, eps), aux = var
 *   pinball          max(q r, (q - 1) r), r = target - pred, q = factor (quantile)
 * Each term is multiplied by its weight; "mean" divides the weighted sum by
 * n, the number of elements, except for mse and l1 with a weight, where torch
 * (2.13) takes a weighted mean: the sum of the weight as paired with pred (see
 * weight_sum_repeats in elementwise.h).  The gradient is slope * weight *
 * grad_output, divided as the mean is.
 *
 * The gradient w.r.t. target: the regression losses depend on r alone, so it
 * is minus the slope (so are margin_ranking's w.r.t. x2 and pinball's); bce's is
 * w (-x + (p - 1) softplus(-x)), torch's binary_cross_entropy_with_logits_target_backward
 * (see bce_target_slope); poisson_nll's its own (poisson_target_slope).  The
 * gradient w.r.t. aux is gaussian_nll's w.r.t. var only.
 *
 * Stability (bce): softplus(-x) = max(-x, 0) + log1p(exp(-|x|)), and the
 * loss is evaluated per sign of x so that no large terms cancel; the sigmoid
 * takes its branch on the sign of x, so exp never overflows.  Logits of
 * +-1000 (float32 and float64) give exact limits, not inf or NaN.  exp and
 * log1p are fastmath.h's, so the loops vectorise.
 *
 * Determinism: the elements are cut into blocks of FASTLOSS_EW_BLOCK; each
 * block is summed in a fixed order into a double, and the block sums are
 * added in block order by one thread.  The blocks depend on n alone, so every
 * result is bit-identical for any number of threads; blocks run in parallel.
 *
 * Memory traffic: pred and target are read once and the gradient (or the
 * per-element loss) written once; the per-tile scratch stays in L1.
 */
#include "elementwise.h"

#define FASTLOSS_ISA baseline
#include "elementwise_impl.h"

/* The kernels this CPU runs best: fastloss_elementwise_select fills the table
 * (see fastloss_select_kernels); baseline until then. */
static struct {
    int (*run_float32) FASTLOSS_EW_RUN_SIGNATURE(float32);
    int (*run_float64) FASTLOSS_EW_RUN_SIGNATURE(float64);
} ew_kernels = {fastloss_ew_run_float32_baseline, fastloss_ew_run_float64_baseline};

void fastloss_elementwise_select(int level)
{
    ew_kernels.run_float32 = FASTLOSS_PICK(fastloss_ew_run_float32, level);
    ew_kernels.run_float64 = FASTLOSS_PICK(fastloss_ew_run_float64, level);
}

int fastloss_elementwise_forward_float32(const fastloss_elementwise_options *options,
                                         const float *pred, const float *target, const float *aux,
                                         const float *weight, const float *factor,
                                         float *loss_per_element, double *loss)
{
    const fastloss_ew_inputs_float32 in = {pred, target, aux, weight, factor};
    const fastloss_ew_outputs_float32 out = {loss_per_element, loss, NULL, NULL, NULL};
    return ew_kernels.run_float32(options, &in, NULL, 0, &out);
}

int fastloss_elementwise_forward_float64(const fastloss_elementwise_options *options,
                                         const double *pred, const double *target, const double *aux,
                                         const double *weight, const double *factor,
                                         double *loss_per_element, double *loss)
{
    const fastloss_ew_inputs_float64 in = {pred, target, aux, weight, factor};
    const fastloss_ew_outputs_float64 out = {loss_per_element, loss, NULL, NULL, NULL};
    return ew_kernels.run_float64(options, &in, NULL, 0, &out);
}

int fastloss_elementwise_backward_float32(const fastloss_elementwise_options *options,
                                          const float *pred, const float *target, const float *aux,
                                          const float *weight, const float *factor,
                                          const double *grad_output,
                                          fastloss_index grad_output_stride, float *grad,
                                          float *grad_target, float *grad_aux)
{
    const fastloss_ew_inputs_float32 in = {pred, target, aux, weight, factor};
    const fastloss_ew_outputs_float32 out = {NULL, NULL, grad, grad_target, grad_aux};
    return ew_kernels.run_float32(options, &in, grad_output, grad_output_stride, &out);
}

int fastloss_elementwise_backward_float64(const fastloss_elementwise_options *options,
                                          const double *pred, const double *target, const double *aux,
                                          const double *weight, const double *factor,
                                          const double *grad_output,
                                          fastloss_index grad_output_stride, double *grad,
                                          double *grad_target, double *grad_aux)
{
    const fastloss_ew_inputs_float64 in = {pred, target, aux, weight, factor};
    const fastloss_ew_outputs_float64 out = {NULL, NULL, grad, grad_target, grad_aux};
    return ew_kernels.run_float64(options, &in, grad_output, grad_output_stride, &out);
}

int fastloss_elementwise_value_and_grad_float32(
    const fastloss_elementwise_options *options, const float *pred, const float *target,
    const float *aux, const float *weight, const float *factor, const double *grad_output,
    fastloss_index grad_output_stride, float *loss_per_element, double *loss, float *grad,
    float *grad_target, float *grad_aux)
{
    const fastloss_ew_inputs_float32 in = {pred, target, aux, weight, factor};
    const fastloss_ew_outputs_float32 out = {loss_per_element, loss, grad, grad_target, grad_aux};
    return ew_kernels.run_float32(options, &in, grad_output, grad_output_stride, &out);
}

int fastloss_elementwise_value_and_grad_float64(
    const fastloss_elementwise_options *options, const double *pred, const double *target,
    const double *aux, const double *weight, const double *factor, const double *grad_output,
    fastloss_index grad_output_stride, double *loss_per_element, double *loss, double *grad,
    double *grad_target, double *grad_aux)
{
    const fastloss_ew_inputs_float64 in = {pred, target, aux, weight, factor};
    const fastloss_ew_outputs_float64 out = {loss_per_element, loss, grad, grad_target, grad_aux};
    return ew_kernels.run_float64(options, &in, grad_output, grad_output_stride, &out);
}
