/*
 * box_internal.h -- constants and prototypes shared by the generic bodies of
 * box.c; not part of the public C interface.
 */
#ifndef FASTLOSS_BOX_INTERNAL_H
#define FASTLOSS_BOX_INTERNAL_H

#include "box.h"

/*
 * Pairs per reduction block: each block is summed in a fixed order into one
 * double, and the block partials are added in block order (see RUN in
 * box_body.h), so every bit of the result depends on n alone, never on the
 * thread count.  A block is also the unit of parallel work: 4096 pairs (16384
 * values of each box array, as the elementwise family's block) make 2048 blocks
 * at 2**23 pairs.
 */
#define FASTLOSS_BOX_BLOCK 4096

/*
 * Blocks per parallel region: their partial sums sit in an array of this many
 * doubles on the stack, added in order before the next region starts, so the
 * kernels allocate nothing however large n is.  256 is FASTLOSS_REDUCTION_BLOCK,
 * which makes the total exactly fastloss_sum_float64 of all the block partials.
 */
#define FASTLOSS_BOX_REGION_BLOCKS FASTLOSS_REDUCTION_BLOCK

/*
 * Pairs per tile: a tile's boxes are read into double arrays, one per
 * coordinate (structure of arrays), the loss and the gradients of the tile are
 * computed by one loop over those arrays that vectorises across pairs, and the
 * results are written back interleaved.  The tile's arrays (17 x 64 doubles,
 * 8.5 KiB) stay in L1.
 */
#ifndef FASTLOSS_BOX_TILE
#define FASTLOSS_BOX_TILE 64
#endif

/* streaming stores for large gradients: stream_store.h */
#include "stream_store.h"

/* One runner per (storage type, ISA), in box_body.h, over `void *` arrays of the
 * storage type: forward when grad1 and grad2 are NULL, gradients only when loss
 * and loss_per_box are NULL, fused otherwise.  box.c calls it from a table
 * indexed by the dtype code. */
#define FASTLOSS_BOX_RUN_SIGNATURE                                                           \
    (const fastloss_box_options *options, const void *boxes1_data,                           \
     const void *boxes2_data, const double *grad_output, fastloss_index grad_output_stride,  \
     void *loss_per_box_data, double *loss, void *grad1_data, void *grad2_data)
typedef int(*fastloss_box_run) FASTLOSS_BOX_RUN_SIGNATURE;

void fastloss_box_select(int level); /* dispatch.c calls it */

#define FL_BOX_ATAN_NAME_(isa) fastloss_box_atan_float64_##isa
#define FL_BOX_ATAN_NAME(isa) FL_BOX_ATAN_NAME_(isa)
void fastloss_box_atan_float64_baseline(const double *x, fastloss_index n, double *out);
void fastloss_box_atan_float64_avx2(const double *x, fastloss_index n, double *out);
void fastloss_box_atan_float64_avx512(const double *x, fastloss_index n, double *out);
int fastloss_box_run_float32_baseline FASTLOSS_BOX_RUN_SIGNATURE;
int fastloss_box_run_float64_baseline FASTLOSS_BOX_RUN_SIGNATURE;
int fastloss_box_run_float32_avx2 FASTLOSS_BOX_RUN_SIGNATURE;
int fastloss_box_run_float64_avx2 FASTLOSS_BOX_RUN_SIGNATURE;
int fastloss_box_run_float32_avx512 FASTLOSS_BOX_RUN_SIGNATURE;
int fastloss_box_run_float64_avx512 FASTLOSS_BOX_RUN_SIGNATURE;
int fastloss_box_run_bfloat16_baseline FASTLOSS_BOX_RUN_SIGNATURE;
int fastloss_box_run_float16_baseline FASTLOSS_BOX_RUN_SIGNATURE;
int fastloss_box_run_bfloat16_avx2 FASTLOSS_BOX_RUN_SIGNATURE;
int fastloss_box_run_float16_avx2 FASTLOSS_BOX_RUN_SIGNATURE;
int fastloss_box_run_bfloat16_avx512 FASTLOSS_BOX_RUN_SIGNATURE;
int fastloss_box_run_float16_avx512 FASTLOSS_BOX_RUN_SIGNATURE;

#endif /* FASTLOSS_BOX_INTERNAL_H */
