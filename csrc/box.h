/*
 * box.h -- the bounding-box regression losses of torchvision: generalized IoU
 * (generalized_box_iou_loss), distance IoU (distance_box_iou_loss) and complete
 * IoU (complete_box_iou_loss), one loss per pair of boxes, for float32 and
 * float64.  See box.c for the formulas and the gradients.
 *
 * Layout: a box is 4 contiguous values (x1, y1, x2, y2).  Pair i reads box i of
 * boxes1 at boxes1 + i * boxes1_stride and box i of boxes2 at boxes2 + i *
 * boxes2_stride: a stride of 4 is an (n, 4) C-contiguous array, 0 one box paired
 * with every box of the other (broadcast), any other stride a view of rows.  The
 * gradients are written as (n, 4) C-contiguous arrays whatever the strides (the
 * caller sums a broadcast box's n rows).  Every index is 64-bit.
 *
 * Preconditions the caller checks (the Cython layer does): n >= 0; eps > 0 and
 * finite; grad1 and grad2 each overlap no input except that
 * either may be exactly boxes1 or boxes2 when that input has stride 4 (in place:
 * a tile of boxes is read before its gradient is written); grad1 and grad2 do not
 * overlap each other; loss_per_box overlaps nothing.
 */
#ifndef FASTLOSS_BOX_H
#define FASTLOSS_BOX_H

#include "common.h"
#include "storage.h"

#ifdef __cplusplus
extern "C" {
#endif

enum fastloss_box_loss {
    FASTLOSS_BOX_GIOU = 0, /* torchvision.ops.generalized_box_iou_loss */
    FASTLOSS_BOX_DIOU = 1, /* torchvision.ops.distance_box_iou_loss */
    FASTLOSS_BOX_CIOU = 2  /* torchvision.ops.complete_box_iou_loss */
};

/* Where the float32 kernels compute pairs in float (box_body.h, BOX_NARROW). */
enum fastloss_box_float_pass {
    FASTLOSS_BOX_FLOAT_PASS_NEVER = -1,  /* every pair in double (a gradient the caller
                                            sums over pairs: their errors would add up) */
    FASTLOSS_BOX_FLOAT_PASS_DEFAULT = 0, /* where it pays: ciou (box_body.h says why) */
    FASTLOSS_BOX_FLOAT_PASS_ALWAYS = 1   /* every loss (tests) */
};

typedef struct fastloss_box_options {
    fastloss_index n;              /* pairs of boxes */
    int loss;                      /* enum fastloss_box_loss */
    double eps;                    /* torchvision's eps (see box.c for where ciou uses it) */
    fastloss_index boxes1_stride;  /* elements from one box of boxes1 to the next (any) */
    fastloss_index boxes2_stride;  /* likewise for boxes2 */
    int reduction;                 /* enum fastloss_reduction */
    int num_threads;               /* upper bound on OpenMP threads (>= 1) */
    int float_pass;                /* float32 storage: the float pass of box_body.h,
                                      enum fastloss_box_float_pass */
} fastloss_box_options;

/*
 * Arguments shared by the three entry points (IN unless marked OUT):
 *   boxes1, boxes2   n boxes each, laid out as the strides say
 *   loss_per_box     OUT, n values (reduction none), or NULL
 *   loss             OUT, one float64 value: the sum or mean (unused for none), or
 *                    NULL.  The mean of no pairs is 0, as torchvision's
 *                    0.0 * loss.sum() (not nan as torch's mean).
 *   grad_output      IN, the upstream gradient: n values with stride 1
 *                    (reduction none), or one value for every pair with stride 0
 *   grad1, grad2     OUT, n x 4 values: the gradient of grad_output * loss w.r.t.
 *                    boxes1 and boxes2 (per pair, before any broadcast sum), or NULL
 * The arrays are of the storage type `dtype` names (enum fastloss_dtype,
 * storage.h).  Every per-pair quantity is computed in double, whatever the
 * storage type, and rounded once when stored.  Return FASTLOSS_OK (the kernels
 * allocate nothing) or FASTLOSS_ERROR_BAD_DTYPE for an unknown code.
 */
int fastloss_box_forward(int dtype, const fastloss_box_options *options, const void *boxes1,
                         const void *boxes2, void *loss_per_box, double *loss);

int fastloss_box_backward(int dtype, const fastloss_box_options *options, const void *boxes1,
                          const void *boxes2, const double *grad_output,
                          fastloss_index grad_output_stride, void *grad1, void *grad2);

/* Loss and both gradients in one pass over the boxes. */
int fastloss_box_value_and_grad(int dtype, const fastloss_box_options *options,
                                const void *boxes1, const void *boxes2,
                                const double *grad_output, fastloss_index grad_output_stride,
                                void *loss_per_box, double *loss, void *grad1, void *grad2);

/* fastmath.h's atan on n contiguous doubles (for the tests of its accuracy). */
void fastloss_box_atan_float64(const double *x, fastloss_index n, double *out);

#ifdef __cplusplus
}
#endif

#endif /* FASTLOSS_BOX_H */
