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
 *   soft_margin      log(1 + exp(-y x))                     soft_margin_loss
 * and the preference and distillation terms of issue 16 (their differences of inputs in
 * double; elementwise_body.h):
 *   bradley_terry    softplus(-z), z = chosen - rejected - margin (factor)
 *   kl_div           t (log t - x), or exp(t) (t - x) with log_target    kl_div
 *   dpo              of h = (pred - target) - (aux - aux2): sigmoid (cDPO), hinge
 *                    or ipo, as TRL's DPOTrainer.dpo_loss; aux2 is the fourth input
 * Each term is multiplied by its weight; "mean" divides the weighted sum by
 * n, the number of elements, except for mse and l1 with a weight, where torch
 * (2.13) takes a weighted mean: the sum of the weight as paired with pred (see
 * weight_sum_repeats in elementwise.h).  The gradient is slope * weight *
 * grad_output, divided as the mean is.
 *
 * The gradient w.r.t. target: the regression losses depend on r alone, so it
 * is minus the slope (so are margin_ranking's w.r.t. x2, pinball's, bradley_terry's
 * and dpo's); bce's is w (-x + (p - 1) softplus(-x)), torch's
 * binary_cross_entropy_with_logits_target_backward (see bce_target_slope);
 * poisson_nll's and kl_div's their own (poisson_target_slope, kl_div_target_slope).
 * The gradient w.r.t. aux is gaussian_nll's w.r.t. var, and dpo's minus the slope;
 * w.r.t. aux2 dpo's slope.
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
 * per-element loss) written once; the per-tile scratch stays in L1.  (The
 * policy below adds a pass where float32 terms cancel, or where an in-place
 * gradient would overwrite what a redo needs.)
 *
 * Storage and compute: the kernels are elementwise_body.h instantiated per
 * storage type (storage.h): every array is read through LOAD and written
 * through STORE, the terms are computed in REAL.  float32 is computed in float
 * (where float meets the contract, per element: elementwise_body.h) and
 * float64 in double; float32_wide is float32 storage computed in double.
 *
 * The numerical policy, one place for all of it (float32, and any storage type
 * computed in float; float64 at the end):
 *   1. Each term and slope is computed in float where float arithmetic meets the
 *      contract (2e-6 of itself) and in double where it cannot, decided per loss
 *      and, where a bound on a float result's error says so, per tile or element
 *      (elementwise_body.h: bce's and sigmoid_focal's slopes, gaussian_nll's
 *      terms, soft_margin's labels).  Each float32 term is then within about
 *      5e-7 of itself (exp, log1p, the product with the weight).
 *   2. Terms accumulate in double in a fixed order (blocks, lanes).  A sum of
 *      terms each within 5e-7 of itself is within 5e-7 of the terms' magnitude,
 *      sum |term|, which the pass returns beside the sum.  That meets the
 *      contract while |sum| >= 0.5 sum |term|, always when no term is negative.
 *      Terms of both signs (a negative weight or pos_weight, a bce_with_logits
 *      or sigmoid_focal target outside [0, 1], sigmoid_focal's alpha above 1,
 *      poisson_nll's and gaussian_nll's signed terms) can cancel further; then
 *      the sum or mean is computed again by a forward pass of the float32_wide
 *      instantiation over the same float32 arrays (every term in double, no
 *      copy of the inputs: float64's arithmetic on the exact inputs), its terms
 *      summed compensated (fastloss_ew_two_sum), and that is the loss returned.
 *      Only the reduced loss is redone: the per-element losses and the
 *      gradients are each held to the contract element by element, which step 1
 *      gives.
 *   3. In place (the gradient written over pred, target or aux), a redo after
 *      the fused pass would read the gradient instead of the inputs.  So where a
 *      term of the call may be negative (the sign test of elementwise_body.h:
 *      the loss, one period of the weight and factor, and the target of bce and
 *      sigmoid_focal), the loss is taken first by a forward pass (and redone if
 *      it cancelled), and the gradients then by a backward pass; otherwise the
 *      fused pass, whose sum cannot cancel.
 * float64 is computed in double throughout, as the float64 reference, under the
 * same steps 2 and 3: a double sum of n terms is within about n u sum |term| of
 * their exact sum, which the contract's 1e-12 |sum| no longer covers once terms of
 * both signs cancel by more than about 1e4 (found by the fuzz run: smooth_l1's mean
 * of 40000 terms with a weight of both signs, 7.7e-5 from a magnitude of 8.1, missed
 * by 1.6e-12 of itself).  Where they cancelled, the float64 runner sums the terms
 * again, compensated: within u |sum| + (n u)**2 sum |term| of their exact sum.
 */
#include "elementwise.h"

#define FASTLOSS_ISA baseline
#include "elementwise_impl.h"
#undef FASTLOSS_ISA

/* The kernels of one storage type: its runner, the runner that redoes a cancelled
 * sum (compensated, and for a storage type computed in float computed in double:
 * its _wide instantiation; float64's own runner), and its sign test. */
typedef struct ew_kernels_s {
    fastloss_ew_run run, redo;
    fastloss_ew_signs may_be_negative;
} ew_kernels_t;

/* The kernels this CPU runs best: fastloss_elementwise_select fills the table (see
 * fastloss_select_kernels); baseline until then. */
static ew_kernels_t ew_kernels[FASTLOSS_N_DTYPES] = {
    [FASTLOSS_FLOAT32] = {fastloss_ew_run_float32_baseline, fastloss_ew_run_float32_wide_baseline,
                          fastloss_ew_may_be_negative_float32_baseline},
    [FASTLOSS_FLOAT64] = {fastloss_ew_run_float64_baseline, fastloss_ew_run_float64_baseline,
                          fastloss_ew_may_be_negative_float64_baseline},
    [FASTLOSS_BFLOAT16] = {fastloss_ew_run_bfloat16_baseline,
                           fastloss_ew_run_bfloat16_wide_baseline,
                           fastloss_ew_may_be_negative_bfloat16_baseline},
    [FASTLOSS_FLOAT16] = {fastloss_ew_run_float16_baseline, fastloss_ew_run_float16_wide_baseline,
                          fastloss_ew_may_be_negative_float16_baseline},
};

void fastloss_elementwise_select(int level)
{
    ew_kernels[FASTLOSS_FLOAT32].run = FASTLOSS_PICK(fastloss_ew_run_float32, level);
    ew_kernels[FASTLOSS_FLOAT32].redo = FASTLOSS_PICK(fastloss_ew_run_float32_wide, level);
    ew_kernels[FASTLOSS_FLOAT32].may_be_negative =
        FASTLOSS_PICK(fastloss_ew_may_be_negative_float32, level);
    ew_kernels[FASTLOSS_FLOAT64].run = FASTLOSS_PICK(fastloss_ew_run_float64, level);
    ew_kernels[FASTLOSS_FLOAT64].redo = ew_kernels[FASTLOSS_FLOAT64].run;
    ew_kernels[FASTLOSS_FLOAT64].may_be_negative =
        FASTLOSS_PICK(fastloss_ew_may_be_negative_float64, level);
    ew_kernels[FASTLOSS_BFLOAT16].run = FASTLOSS_PICK(fastloss_ew_run_bfloat16, level);
    ew_kernels[FASTLOSS_BFLOAT16].redo = FASTLOSS_PICK(fastloss_ew_run_bfloat16_wide, level);
    ew_kernels[FASTLOSS_BFLOAT16].may_be_negative =
        FASTLOSS_PICK(fastloss_ew_may_be_negative_bfloat16, level);
    ew_kernels[FASTLOSS_FLOAT16].run = FASTLOSS_PICK(fastloss_ew_run_float16, level);
    ew_kernels[FASTLOSS_FLOAT16].redo = FASTLOSS_PICK(fastloss_ew_run_float16_wide, level);
    ew_kernels[FASTLOSS_FLOAT16].may_be_negative =
        FASTLOSS_PICK(fastloss_ew_may_be_negative_float16, level);
}

/* Whether a sum of terms `loss` (sum or mean, magnitude) may miss the contract
 * (policy, step 2); false for NaN. */
static int ew_cancelled(const double *loss)
{
    return fabs(loss[0]) < 0.5 * loss[1];
}

/* The reduced loss into loss[0..1] again, compensated (and in double): the redo of a sum
 * whose terms cancelled (policy, step 2). */
static int ew_redo(const ew_kernels_t *kernels, const fastloss_elementwise_options *options,
                   const fastloss_ew_inputs *in, double *loss)
{
    const fastloss_ew_outputs loss_only = {NULL, loss, NULL, NULL, NULL, NULL, 1};
    return kernels->redo(options, in, NULL, 0, &loss_only);
}

/* The reduced loss into loss[0..1] by a forward pass, redone where its terms
 * cancelled (policy, step 2). */
static int ew_reduced_loss(const ew_kernels_t *kernels, const fastloss_elementwise_options *options,
                           const fastloss_ew_inputs *in, double *loss)
{
    const fastloss_ew_outputs loss_only = {NULL, loss, NULL, NULL, NULL, NULL, 0};
    const int status = kernels->run(options, in, NULL, 0, &loss_only);
    if (status != FASTLOSS_OK || !ew_cancelled(loss))
        return status;
    return ew_redo(kernels, options, in, loss);
}

/* One call of any mode, under the numerical policy above. */
static int ew_call(int dtype, const fastloss_elementwise_options *options,
                   const fastloss_ew_inputs *in, const double *grad_output,
                   fastloss_index grad_output_stride, const fastloss_ew_outputs *out)
{
    if (!fastloss_dtype_known(dtype) || !ew_kernels[dtype].run)
        return FASTLOSS_ERROR_BAD_DTYPE;
    const ew_kernels_t *kernels = &ew_kernels[dtype];
    const int want_sum = out->loss != NULL && options->reduction != FASTLOSS_REDUCTION_NONE;
    if (!want_sum)
        return kernels->run(options, in, grad_output, grad_output_stride, out);
    const int grads = out->grad || out->grad_target || out->grad_aux || out->grad_aux2;
    const int in_place = out->grad && (out->grad == in->pred || out->grad == in->target ||
                                       out->grad == in->aux || out->grad == in->aux2);
    if (grads && in_place && kernels->may_be_negative(options, in)) {
        /* step 3: the loss while the inputs are whole, then the gradients */
        const int status = ew_reduced_loss(kernels, options, in, out->loss);
        if (status != FASTLOSS_OK)
            return status;
        const fastloss_ew_outputs grads_only = {NULL, NULL, out->grad, out->grad_target,
                                                out->grad_aux, out->grad_aux2, 0};
        return kernels->run(options, in, grad_output, grad_output_stride, &grads_only);
    }
    const int status = kernels->run(options, in, grad_output, grad_output_stride, out);
    if (status != FASTLOSS_OK || !ew_cancelled(out->loss))
        return status;
    return ew_redo(kernels, options, in, out->loss);
}

int fastloss_elementwise_forward(int dtype, const fastloss_elementwise_options *options,
                                 const void *pred, const void *target, const void *aux,
                                 const void *aux2, const void *weight, const void *factor,
                                 void *loss_per_element, double *loss)
{
    const fastloss_ew_inputs in = {pred, target, aux, aux2, weight, factor};
    const fastloss_ew_outputs out = {loss_per_element, loss, NULL, NULL, NULL, NULL, 0};
    return ew_call(dtype, options, &in, NULL, 0, &out);
}

int fastloss_elementwise_backward(int dtype, const fastloss_elementwise_options *options,
                                  const void *pred, const void *target, const void *aux,
                                  const void *aux2, const void *weight, const void *factor,
                                  const double *grad_output, fastloss_index grad_output_stride,
                                  void *grad, void *grad_target, void *grad_aux,
                                  void *grad_aux2)
{
    const fastloss_ew_inputs in = {pred, target, aux, aux2, weight, factor};
    const fastloss_ew_outputs out = {NULL, NULL, grad, grad_target, grad_aux, grad_aux2, 0};
    return ew_call(dtype, options, &in, grad_output, grad_output_stride, &out);
}

int fastloss_elementwise_value_and_grad(int dtype, const fastloss_elementwise_options *options,
                                        const void *pred, const void *target, const void *aux,
                                        const void *aux2, const void *weight,
                                        const void *factor, const double *grad_output,
                                        fastloss_index grad_output_stride,
                                        void *loss_per_element, double *loss, void *grad,
                                        void *grad_target, void *grad_aux, void *grad_aux2)
{
    const fastloss_ew_inputs in = {pred, target, aux, aux2, weight, factor};
    const fastloss_ew_outputs out = {loss_per_element, loss, grad, grad_target, grad_aux,
                                     grad_aux2, 0};
    return ew_call(dtype, options, &in, grad_output, grad_output_stride, &out);
}
