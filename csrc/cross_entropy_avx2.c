/*
 * cross_entropy_avx2.c -- the cross-entropy kernels compiled for AVX2 + FMA,
 * picked at run time by cross_entropy.c when the CPU has both.
 */
#include "common.h"

#ifdef FASTLOSS_HAVE_AVX2
#include "isa_avx2_begin.h"
#include "cross_entropy_impl.h"
#include "isa_end.h"
#endif

/* ISO C forbids an empty translation unit. */
typedef int fastloss_cross_entropy_avx2_unused;
