/*
 * elementwise_internal.h -- constants and prototypes shared by the generic
 * bodies of elementwise.c; not part of the public C interface.
 */
#ifndef FASTLOSS_ELEMENTWISE_INTERNAL_H
#define FASTLOSS_ELEMENTWISE_INTERNAL_H

#include <math.h>

#include "elementwise.h"

/*
 * Elements per reduction block.  Each block is summed in order into one
 * double, and the block partials are then added in block order by one thread
 * (fastloss_sum_float64), so the number of blocks, and with it every bit of
 * the result, depends on n alone, never on the thread count.  A block is also
 * the unit of parallel work: 16384 elements (64 KiB of float32 pred) make
 * 2048 blocks at n = 2**25, plenty to balance 16 threads, and few enough
 * that the partials (16 KiB) cost nothing.
 */
#define FASTLOSS_EW_BLOCK (FASTLOSS_REDUCTION_BLOCK * 64)

/*
 * Elements per tile.  A tile's per-element loss and slope are computed by one
 * loss-specific loop into two private arrays, then a shared loop applies the
 * weights and the upstream gradient, adds the loss to the block sum and writes
 * the outputs.  Keeping the loss-specific loops free of optional arguments
 * lets each of them vectorise, and keeping the writes out of them makes
 * grad == pred (in place) safe.
 * 128: benchmarks/sweep_elementwise_tile.py on a 2-core EPYC (AVX-512), 2**25
 * float32, np.copyto 12.9 ms: mse value_and_grad 11.4 ms with 128 against
 * 15.3 ms with 512 or 2048 (short tiles interleave the reads of
 * pred and target with the writes of the gradient, which the memory system
 * serves better); bce_with_logits 18.5 ms with 128 or 512, slower with 64,
 * where the per-tile overhead shows.  A loop with no tile at all measured
 * within 5% of 128.
 */
#ifndef FASTLOSS_EW_TILE
#define FASTLOSS_EW_TILE 128
#endif

/*
 * The three versions of a tile's loop -- loss and slope, loss only, slope only --
 * so that each vectorises with no test inside.  Used inside the tile functions
 * of elementwise_body.h, whose locals it names: m, value, slope, and the index k.
 * ELEMENT declares what VALUE and SLOPE (expressions) share; statements in it
 * are separated by semicolons, never commas (the preprocessor splits on those).
 */
#define EW_TILE_LOOPS(ELEMENT, VALUE, SLOPE)                                                 \
    do {                                                                                     \
        if (value && slope) {                                                                \
            for (fastloss_index k = 0; k < m; ++k) {                                         \
                ELEMENT;                                                                     \
                value[k] = (VALUE);                                                          \
                slope[k] = (SLOPE);                                                          \
            }                                                                                \
        } else if (value) {                                                                  \
            for (fastloss_index k = 0; k < m; ++k) {                                         \
                ELEMENT;                                                                     \
                value[k] = (VALUE);                                                          \
            }                                                                                \
        } else {                                                                             \
            for (fastloss_index k = 0; k < m; ++k) {                                         \
                ELEMENT;                                                                     \
                slope[k] = (SLOPE);                                                          \
            }                                                                                \
        }                                                                                    \
    } while (0)

/* streaming stores for large gradients: stream_store.h */
#include "stream_store.h"

/* sigmoid_focal's power u**gamma (elementwise_body.h): 1, u, u u, or exp(gamma log u). */
enum { EW_FOCAL_GAMMA_0 = 0, EW_FOCAL_GAMMA_1 = 1, EW_FOCAL_GAMMA_2 = 2, EW_FOCAL_GAMMA_ANY = 3 };

/*
 * The arrays of one call, bundled so that the runner's signature stays short,
 * each of the call's storage type (void *, as the entry points take them).
 * Inputs: pred, target, aux and aux2 (NULL for the losses of fewer inputs) of n
 * values, weight and factor periodic or NULL.  Outputs, each NULL when not asked
 * for: loss_per_element (reduction none), loss (two doubles: see elementwise.h),
 * and the gradients w.r.t. pred, target, aux and aux2.
 */
typedef struct fastloss_ew_inputs {
    const void *pred, *target, *aux, *aux2, *weight, *factor;
} fastloss_ew_inputs;
typedef struct fastloss_ew_outputs {
    void *loss_per_element;
    double *loss;
    void *grad, *grad_target, *grad_aux, *grad_aux2;
    int compensated; /* loss[0] summed compensated (fastloss_ew_two_sum): the redo of
                      * elementwise.c's policy where terms of both signs cancelled */
} fastloss_ew_outputs;

/*
 * a + b rounded, and the rounding's error exactly: a + b = s + *error (Knuth's TwoSum;
 * no product, so nothing for the compiler to contract into an FMA, and -ffast-math is
 * never on).  A sum kept as s + an error sum ("Sum2" of Ogita, Rump and Oishi) is
 * within u |sum| + (n u)**2 sum |term| of the exact sum of its terms, where a plain
 * double sum is within n u sum |term|: accurate however far its terms cancel.  An
 * infinite or NaN operand leaves s infinite or NaN and the error NaN: the total is then
 * s alone (fastloss_ew_two_sum_total).
 */
static inline double fastloss_ew_two_sum(double a, double b, double *error)
{
    const double s = a + b;
    const double b_part = s - a;
    *error = (a - (s - b_part)) + (b - b_part);
    return s;
}

static inline double fastloss_ew_two_sum_total(double sum, double error)
{
    return isfinite(sum) ? sum + error : sum;
}

/* FASTLOSS_LANES compensated lanes (each a sum and its error sum) added in lane order
 * into one sum, returned, and its error sum, into *error. */
static inline double fastloss_ew_lanes_two_sum(const double *lane, const double *lane_error,
                                               double *error)
{
    double sum = 0.0, sum_error = 0.0;
    for (int j = 0; j < FASTLOSS_LANES; ++j) {
        double rounding;
        sum = fastloss_ew_two_sum(sum, lane[j], &rounding);
        sum_error += rounding + lane_error[j];
    }
    *error = sum_error;
    return sum;
}

/*
 * One generic runner per (storage type, compute type, ISA), in
 * elementwise_body.h: one pass over the inputs, forward when the gradients are
 * NULL, gradients only when loss and loss_per_element are both NULL, fused
 * otherwise.  And the sign test of elementwise_body.h: whether a term of the
 * call may be negative.  elementwise.c calls them from a table indexed by the
 * dtype code, under the numerical policy written there.
 */
#define FASTLOSS_EW_RUN_SIGNATURE                                                            \
    (const fastloss_elementwise_options *options, const fastloss_ew_inputs *in,             \
     const double *grad_output, fastloss_index grad_output_stride,                           \
     const fastloss_ew_outputs *out)
#define FASTLOSS_EW_SIGNS_SIGNATURE                                                          \
    (const fastloss_elementwise_options *options, const fastloss_ew_inputs *in)
typedef int(*fastloss_ew_run) FASTLOSS_EW_RUN_SIGNATURE;
typedef int(*fastloss_ew_signs) FASTLOSS_EW_SIGNS_SIGNATURE;

void fastloss_elementwise_select(int level); /* dispatch.c calls it */

/* The instantiations of elementwise_impl.h: float32 and float64 stored and
 * computed as themselves, and float32 stored, computed in double (float32_wide);
 * the sign test of float64 and of the storage types computed in float. */
#define FL_EW_DECLARE_ISA(isa)                                                               \
    int fastloss_ew_run_float32_##isa FASTLOSS_EW_RUN_SIGNATURE;                             \
    int fastloss_ew_run_float64_##isa FASTLOSS_EW_RUN_SIGNATURE;                             \
    int fastloss_ew_may_be_negative_float64_##isa FASTLOSS_EW_SIGNS_SIGNATURE;              \
    int fastloss_ew_run_float32_wide_##isa FASTLOSS_EW_RUN_SIGNATURE;                        \
    int fastloss_ew_may_be_negative_float32_##isa FASTLOSS_EW_SIGNS_SIGNATURE;              \
    int fastloss_ew_run_bfloat16_##isa FASTLOSS_EW_RUN_SIGNATURE;                            \
    int fastloss_ew_run_bfloat16_wide_##isa FASTLOSS_EW_RUN_SIGNATURE;                       \
    int fastloss_ew_may_be_negative_bfloat16_##isa FASTLOSS_EW_SIGNS_SIGNATURE;             \
    int fastloss_ew_run_float16_##isa FASTLOSS_EW_RUN_SIGNATURE;                             \
    int fastloss_ew_run_float16_wide_##isa FASTLOSS_EW_RUN_SIGNATURE;                        \
    int fastloss_ew_may_be_negative_float16_##isa FASTLOSS_EW_SIGNS_SIGNATURE;
FL_EW_DECLARE_ISA(baseline)
FL_EW_DECLARE_ISA(avx2)
FL_EW_DECLARE_ISA(avx512)
#undef FL_EW_DECLARE_ISA

#endif /* FASTLOSS_ELEMENTWISE_INTERNAL_H */
