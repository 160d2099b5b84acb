/*
 * contrastive_avx2.c -- the pass over the pairs compiled for AVX2 + FMA, picked
 * at run time by contrastive.c when the CPU has it.
 */
#include "common.h"

#ifdef FASTLOSS_HAVE_AVX2
#include "isa_avx2_begin.h"
#include "contrastive_impl.h"
#include "isa_end.h"
#endif

/* ISO C forbids an empty translation unit. */
typedef int fastloss_contrastive_avx2_unused;
