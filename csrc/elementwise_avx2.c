/*
 * elementwise_avx2.c -- the elementwise kernels compiled for AVX2 + FMA,
 * picked at run time by elementwise.c when the CPU has both.
 */
#include "common.h"

#ifdef FASTLOSS_HAVE_AVX2
#include "isa_avx2_begin.h"
#include "elementwise_impl.h"
#include "isa_end.h"
#endif

/* ISO C forbids an empty translation unit. */
typedef int fastloss_elementwise_avx2_unused;
