/*
 * distance_avx2.c -- the pass over the pairs compiled for AVX2 + FMA, picked
 * at run time by distance.c when the CPU has it.
 */
#include "common.h"

#ifdef FASTLOSS_HAVE_AVX2
#include "isa_avx2_begin.h"
#include "distance_impl.h"
#include "isa_end.h"
#endif

/* ISO C forbids an empty translation unit. */
typedef int fastloss_distance_avx2_unused;
