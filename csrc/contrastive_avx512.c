/*
 * contrastive_avx512.c -- the pass over the pairs compiled for AVX-512, picked at
 * run time by contrastive.c when the CPU and OS support it.
 */
#include "common.h"

#ifdef FASTLOSS_HAVE_AVX512
#include "isa_avx512_begin.h"
#include "contrastive_impl.h"
#include "isa_end.h"
#endif

/* ISO C forbids an empty translation unit. */
typedef int fastloss_contrastive_avx512_unused;
