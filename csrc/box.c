/*
 * box.c -- the bounding-box regression losses of torchvision, one loss per pair
 * of boxes (x1, y1, x2, y2): forward, gradients w.r.t. both boxes, and the fused
 * value-and-grad.
 *
 * Per pair, box 1 = (x1, y1, x2, y2), box 2 = (u1, v1, u2, v2), as torchvision's
 * _loss_inter_union and the three losses (torchvision/ops/giou_loss.py,
 * diou_loss.py, ciou_loss.py; Rezatofighi et al. 2019, arXiv:1902.09630; Zheng et
 * al. 2020, arXiv:1911.08287):
 *   inter = (min(x2, u2) - max(x1, u1)) (min(y2, v2) - max(y1, v1)) where both
 *           differences are > 0, else 0 (torchvision's mask)
 *   union = (x2 - x1)(y2 - y1) + (u2 - u1)(v2 - v1) - inter
 *   iou   = inter / (union + eps)
 *   enclosing box: cw = max(x2, u2) - min(x1, u1), ch = max(y2, v2) - min(y1, v1)
 *   giou  = 1 - (iou - (cw ch - union) / (cw ch + eps))
 *   diou  = 1 - iou + |c1 - c2|**2 / (cw**2 + ch**2 + eps),  c the boxes' centres
 *   ciou  = diou + alpha v,  v = 4 / pi**2 (atan((u2 - u1) / (v2 - v1))
 *                                             - atan((x2 - x1) / (y2 - y1)))**2,
 *           alpha = v / (1 - iou + v + eps), held constant in the gradient
 *           (torchvision computes it under torch.no_grad).
 * ciou's union and diagonal take eps = 1e-7 whatever the caller's eps:
 * torchvision's complete_box_iou_loss calls _diou_iou_loss(boxes1, boxes2)
 * without passing its eps, which reaches alpha only.  We do the same.
 * torchvision does not refuse x2 < x1 or y2 < y1 in these losses (its box_iou
 * family does not either); the formulas then run as written, and so do ours.
 * "mean" divides by n, and the mean of no pairs is 0 (torchvision returns
 * 0.0 * loss.sum() for an empty input, not torch's nan).
 *
 * Gradients: the chain rule of torch's autograd through that formula, step by
 * step (box_body.h), including its choices where the formula is not
 * differentiable: maximum and minimum send the upstream to the larger (smaller)
 * argument and half to each at a tie (identical boxes, shared edges); pairs
 * outside the intersection mask get an exact zero through the intersection; at
 * a box of zero height ciou's w / h is inf or NaN and its gradient NaN, as
 * autograd's.  One step is not autograd's: the slopes of atan(w / h), taken so that
 * no square overflows (box_body.h, BOX(atan_slopes)), where autograd's gives NaN for
 * boxes flatter than 1.3e154 to 1 (float64).  NaN and inf propagate as IEEE
 * arithmetic (and those steps) say.
 *
 * Precision: every per-pair quantity is computed in double, for float32 boxes
 * too, except in box_body.h's float32 pass (on by default for ciou): there a
 * pair is computed in float from formulas that do not cancel, with an
 * a-priori bound on each result's error, and again in double where the bound
 * does not prove the accuracy contract.  The rest of this paragraph is why a
 * plain float32 evaluation would not do.  In float32 the formula cancels where
 * training ends up: 1 - iou and
 * cw ch - union are differences of nearly equal areas when the boxes nearly
 * coincide, and alpha divides by 1 - iou + v; a float32 evaluation misses the
 * contract's 2e-6 there by orders of magnitude (an iou of 0.999 keeps three
 * digits of 1 - iou).  Computing in double and rounding each result once keeps
 * float32 within half an ulp of the float64 value, and costs the float32 kernel
 * half its vector width.  Measured (fastloss bench, elementwise table, 2**23
 * float32 pairs, mean, 2 threads, AMD EPYC Zen 5 with 2 vCPUs, quiet: load
 * 0.85, 2026-11-26): the value-and-grad w.r.t. boxes1 takes 2.32x (giou),
 * 2.44x (diou) and 4.62x (ciou) np.copyto of one box array, against the 2x
 * goal; the forward alone 1.07x, 1.04x and 2.23x.  Compute-bound (ciou's two
 * atans); the float pass and the clean tiles below since: BENCHMARKS.md, "Box
 * losses: where the time goes".
 *
 * Vectorisation: a tile of pairs is read into one double array per coordinate,
 * and one loop over the tile computes every pair's loss and gradients with
 * selects only (fastmath.h's atan included), so it vectorises across pairs;
 * the gradients are written back interleaved (with streaming stores in calls
 * writing 16 MiB of them or more: box_internal.h).  A tile with no NaN
 * coordinate and no tie between corresponding coordinates takes a loop with
 * plain comparisons for maximum, minimum and their backward (BOX(clean) in
 * box_body.h: the same operations, without the NaN tests and the half shares).
 *
 * Determinism: pairs are cut into blocks of FASTLOSS_BOX_BLOCK, each summed in a
 * fixed order into a double, and the block sums are added in block order by one
 * thread; blocks run in parallel.  Every result is bit-identical for any number
 * of threads.  The kernels allocate nothing (box_internal.h).
 */
#include "box.h"

#define FASTLOSS_ISA baseline
#include "box_impl.h"
#undef FASTLOSS_ISA

/* The kernels this CPU runs best: fastloss_box_select fills the table (see
 * fastloss_select_kernels); baseline until then. */
static fastloss_box_run box_kernels[FASTLOSS_N_DTYPES] = {
    [FASTLOSS_FLOAT32] = fastloss_box_run_float32_baseline,
    [FASTLOSS_FLOAT64] = fastloss_box_run_float64_baseline,
    [FASTLOSS_BFLOAT16] = fastloss_box_run_bfloat16_baseline,
    [FASTLOSS_FLOAT16] = fastloss_box_run_float16_baseline,
};
static void (*box_atan)(const double *x, fastloss_index n, double *out) =
    fastloss_box_atan_float64_baseline;

void fastloss_box_select(int level)
{
    box_kernels[FASTLOSS_FLOAT32] = FASTLOSS_PICK(fastloss_box_run_float32, level);
    box_kernels[FASTLOSS_FLOAT64] = FASTLOSS_PICK(fastloss_box_run_float64, level);
    box_kernels[FASTLOSS_BFLOAT16] = FASTLOSS_PICK(fastloss_box_run_bfloat16, level);
    box_kernels[FASTLOSS_FLOAT16] = FASTLOSS_PICK(fastloss_box_run_float16, level);
    box_atan = FASTLOSS_PICK(fastloss_box_atan_float64, level);
}

static fastloss_box_run box_kernel(int dtype)
{
    return fastloss_dtype_known(dtype) ? box_kernels[dtype] : NULL;
}

int fastloss_box_forward(int dtype, const fastloss_box_options *options, const void *boxes1,
                         const void *boxes2, void *loss_per_box, double *loss)
{
    const fastloss_box_run run = box_kernel(dtype);
    if (!run)
        return FASTLOSS_ERROR_BAD_DTYPE;
    return run(options, boxes1, boxes2, NULL, 0, loss_per_box, loss, NULL, NULL);
}

int fastloss_box_backward(int dtype, const fastloss_box_options *options, const void *boxes1,
                          const void *boxes2, const double *grad_output,
                          fastloss_index grad_output_stride, void *grad1, void *grad2)
{
    const fastloss_box_run run = box_kernel(dtype);
    if (!run)
        return FASTLOSS_ERROR_BAD_DTYPE;
    return run(options, boxes1, boxes2, grad_output, grad_output_stride, NULL, NULL, grad1,
               grad2);
}

int fastloss_box_value_and_grad(int dtype, const fastloss_box_options *options,
                                const void *boxes1, const void *boxes2,
                                const double *grad_output, fastloss_index grad_output_stride,
                                void *loss_per_box, double *loss, void *grad1, void *grad2)
{
    const fastloss_box_run run = box_kernel(dtype);
    if (!run)
        return FASTLOSS_ERROR_BAD_DTYPE;
    return run(options, boxes1, boxes2, grad_output, grad_output_stride, loss_per_box, loss,
               grad1, grad2);
}

void fastloss_box_atan_float64(const double *x, fastloss_index n, double *out)
{
    box_atan(x, n, out);
}
