/*
 * elementwise_internal.h -- constants and prototypes shared by the generic
 * bodies of elementwise.c; not part of the public C interface.
 */
#ifndef FASTLOSS_ELEMENTWISE_INTERNAL_H
#define FASTLOSS_ELEMENTWISE_INTERNAL_H

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

/*
 * One generic runner per (dtype, ISA), in elementwise_body.h: forward when
 * grad and grad_target are NULL, gradients only when loss and loss_per_element
 * are both NULL, fused otherwise.  elementwise.c dispatches to it.
 */
#define FASTLOSS_EW_RUN_SIGNATURE(REAL_T)                                                    \
    (const fastloss_elementwise_options *options, const REAL_T *pred, const REAL_T *target,   \
     const REAL_T *weight, const REAL_T *pos_weight, const double *grad_output,              \
     fastloss_index grad_output_stride, REAL_T *loss_per_element, double *loss, REAL_T *grad,  \
     REAL_T *grad_target)

void fastloss_elementwise_select(int level); /* dispatch.c calls it */
int fastloss_ew_run_float32_baseline FASTLOSS_EW_RUN_SIGNATURE(float);
int fastloss_ew_run_float64_baseline FASTLOSS_EW_RUN_SIGNATURE(double);
int fastloss_ew_run_float32_avx2 FASTLOSS_EW_RUN_SIGNATURE(float);
int fastloss_ew_run_float64_avx2 FASTLOSS_EW_RUN_SIGNATURE(double);
int fastloss_ew_run_float32_avx512 FASTLOSS_EW_RUN_SIGNATURE(float);
int fastloss_ew_run_float64_avx512 FASTLOSS_EW_RUN_SIGNATURE(double);

#endif /* FASTLOSS_ELEMENTWISE_INTERNAL_H */
