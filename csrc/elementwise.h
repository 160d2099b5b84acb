/*
 * elementwise.h -- the losses that are a sum of one term per element: mse,
 * l1, huber, smooth_l1, bce_with_logits, sigmoid_focal, margin_ranking,
 * poisson_nll, gaussian_nll, pinball, soft_margin, and the preference and
 * distillation terms bradley_terry, kl_div and dpo, for the storage types of
 * storage.h (float32, float64).  See elementwise.c for the formulas and the
 * numerical policy.
 *
 * Layout: pred, target and (for the losses of three or four inputs) aux and
 * aux2 are n contiguous values (the Python layer broadcasts them to one shape and makes
 * them contiguous).  The optional weight and factor are periodic: element i
 * reads weight[i % weight_period] (a per-class weight of C values over (..., C)
 * data has period C; a weight of the data's full shape has period n), which
 * keeps broadcast factors in cache instead of materialising them.  The factor
 * is bce_with_logits' pos_weight, pinball's quantile or bradley_terry's margin.
 * Every index is 64-bit.
 *
 * Preconditions the caller checks (the Cython layer does): the periods are
 * >= 1 when their array is given; param[] as each loss's comment below says;
 * a factor only with bce_with_logits (optional), pinball and bradley_terry
 * (required); aux exactly with margin_ranking, gaussian_nll and dpo, aux2
 * exactly with dpo; grad_target not with sigmoid_focal; grad_aux only with
 * gaussian_nll and dpo, grad_aux2 only with dpo; weight_sum_repeats >= 1;
 * grad is either the pred, target, aux or aux2 buffer itself (in place) or
 * overlaps no input; grad_target, grad_aux, grad_aux2 and loss_per_element
 * overlap nothing.
 */
#ifndef FASTLOSS_ELEMENTWISE_H
#define FASTLOSS_ELEMENTWISE_H

#include "common.h"
#include "storage.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What each loss reads from pred, target, aux, factor and param[] (unused ones are
 * ignored); "slope" is d loss / d pred, the gradient w.r.t. target is minus it
 * unless said otherwise. */
enum fastloss_elementwise_loss {
    FASTLOSS_LOSS_MSE = 0,
    FASTLOSS_LOSS_L1 = 1,
    FASTLOSS_LOSS_HUBER = 2,            /* param[0] = delta (> 0) */
    FASTLOSS_LOSS_SMOOTH_L1 = 3,        /* param[0] = beta (>= 0); beta == 0 is exactly l1 */
    FASTLOSS_LOSS_BCE_WITH_LOGITS = 4,  /* pred holds logits; factor = pos_weight (optional) */
    /* pred = logits, target in [0, 1]; param[0] = alpha (< 0: no alpha factor),
     * param[1] = gamma (finite, >= 0); no gradient w.r.t. target */
    FASTLOSS_LOSS_SIGMOID_FOCAL = 5,
    /* pred = x1, target = x2, aux = y (the +-1 label); param[0] = margin;
     * no gradient w.r.t. aux */
    FASTLOSS_LOSS_MARGIN_RANKING = 6,
    /* pred = input, target; param[0] = log_input (0 or 1), param[1] = full (0 or 1),
     * param[2] = eps (> 0, used when log_input is 0) */
    FASTLOSS_LOSS_POISSON_NLL = 7,
    /* pred = input, target, aux = var; param[0] = full (0 or 1), param[1] = eps (> 0) */
    FASTLOSS_LOSS_GAUSSIAN_NLL = 8,
    /* pred, target; factor = quantile (required, each in (0, 1)) */
    FASTLOSS_LOSS_PINBALL = 9,
    /* pred = input, target = y (labels of +-1, or any reals); no gradient w.r.t. target */
    FASTLOSS_LOSS_SOFT_MARGIN = 10,
    /* pred = chosen, target = rejected (rewards); factor = margin (required, finite) */
    FASTLOSS_LOSS_BRADLEY_TERRY = 11,
    /* pred = input (log-probabilities), target (probabilities, or log-probabilities
     * when param[0] = log_target is 1; 0 or 1) */
    FASTLOSS_LOSS_KL_DIV = 12,
    /* pred = policy_chosen, target = policy_rejected, aux = reference_chosen,
     * aux2 = reference_rejected (sequence log-probabilities); param[0] = beta (> 0,
     * finite), param[1] = loss type (enum fastloss_dpo_loss_type), param[2] =
     * label_smoothing (in [0, 0.5], sigmoid only); d/d target and d/d aux are minus
     * the slope, d/d aux2 the slope */
    FASTLOSS_LOSS_DPO = 13
};

/* dpo's loss types (TRL's DPOTrainer loss_type): sigmoid (with label smoothing:
 * conservative DPO), hinge (SLiC), ipo. */
enum fastloss_dpo_loss_type {
    FASTLOSS_DPO_SIGMOID = 0,
    FASTLOSS_DPO_HINGE = 1,
    FASTLOSS_DPO_IPO = 2
};

#define FASTLOSS_ELEMENTWISE_PARAMS 3

typedef struct fastloss_elementwise_options {
    fastloss_index n;                   /* elements */
    int loss;                           /* enum fastloss_elementwise_loss */
    double param[FASTLOSS_ELEMENTWISE_PARAMS]; /* the loss's scalars (see the enum) */
    fastloss_index weight_period;       /* weight[i % weight_period] (unused without weight) */
    fastloss_index factor_period;       /* likewise for factor */
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
 *   dtype             the storage type of every array below but loss and
 *                     grad_output (enum fastloss_dtype, storage.h)
 *   pred, target      n values each
 *   aux               n values of the third input (margin_ranking's y, gaussian_nll's
 *                     var, dpo's reference_chosen), or NULL for the losses of two inputs
 *   aux2              n values of the fourth input (dpo's reference_rejected), or NULL
 *   weight            per-element factor (periodic, see above), or NULL for ones
 *   factor            the loss's periodic factor (bce_with_logits' pos_weight, or
 *                     NULL for ones; pinball's quantile; bradley_terry's margin),
 *                     NULL for the others
 *   loss_per_element  OUT, n values of the weighted loss (reduction none), or NULL
 *   loss              OUT, two float64 values (unused for none), or NULL:
 *                     loss[0] the sum or mean, loss[1] the same of |term|, the
 *                     terms' magnitude (for a storage type computed in float, its
 *                     negative terms summed in float lanes a tile at a time: within
 *                     5e-7 of it, +inf where such a partial overflows, and then
 *                     loss[0] is redone in double).  For float32, where terms of both signs
 *                     cancel, loss[0] is computed again in double (the policy in
 *                     elementwise.c): it meets the contract either way.
 *   grad_output       IN, the upstream gradient: n values with stride 1, or one
 *                     value for every element with stride 0
 *   grad              OUT, the gradient of grad_output * loss w.r.t. pred, or NULL;
 *                     may be pred, target, aux or aux2 itself (in place: the loss
 *                     is taken from the inputs before they are overwritten)
 *   grad_target       OUT, the same w.r.t. target, or NULL (see elementwise.c)
 *   grad_aux          OUT, the same w.r.t. aux (gaussian_nll's var, dpo's
 *                     reference_chosen), or NULL
 *   grad_aux2         OUT, the same w.r.t. aux2 (dpo's reference_rejected), or NULL
 * Return FASTLOSS_OK, FASTLOSS_ERROR_NO_MEMORY (nothing is written then) or
 * FASTLOSS_ERROR_BAD_DTYPE for an unknown code.
 */
int fastloss_elementwise_forward(int dtype, const fastloss_elementwise_options *options,
                                 const void *pred, const void *target, const void *aux,
                                 const void *aux2, const void *weight, const void *factor,
                                 void *loss_per_element, double *loss);

int fastloss_elementwise_backward(int dtype, const fastloss_elementwise_options *options,
                                  const void *pred, const void *target, const void *aux,
                                  const void *aux2, const void *weight, const void *factor,
                                  const double *grad_output, fastloss_index grad_output_stride,
                                  void *grad, void *grad_target, void *grad_aux,
                                  void *grad_aux2);

/* Loss and gradients in one pass over the inputs (two where the gradient overwrites
 * an input and the loss might need its redo: see elementwise.c). */
int fastloss_elementwise_value_and_grad(int dtype, const fastloss_elementwise_options *options,
                                        const void *pred, const void *target, const void *aux,
                                        const void *aux2, const void *weight,
                                        const void *factor, const double *grad_output,
                                        fastloss_index grad_output_stride,
                                        void *loss_per_element, double *loss, void *grad,
                                        void *grad_target, void *grad_aux, void *grad_aux2);

#ifdef __cplusplus
}
#endif

#endif /* FASTLOSS_ELEMENTWISE_H */
