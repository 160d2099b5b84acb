/*
 * dispatch.c -- fills every family's kernel table for a SIMD level (see
 * fastloss_select_kernels in common.h): the one place that knows the families.
 */
#include "box_internal.h"
#include "cross_entropy_internal.h"
#include "contrastive_internal.h"
#include "elementwise_internal.h"
#include "vocab_internal.h"

void fastloss_select_kernels(int level)
{
    fastloss_cross_entropy_select(level);
    fastloss_elementwise_select(level);
    fastloss_contrastive_select(level);
    fastloss_box_select(level);
    fastloss_vocab_select(level);
}
