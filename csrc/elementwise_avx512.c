/*
 * elementwise_avx512.c -- the elementwise kernels compiled for AVX-512,
 * picked at run time by elementwise.c when the CPU and OS support it.
 */
#include "common.h"

#ifdef FASTLOSS_HAVE_AVX512
#include "isa_avx512_begin.h"
#include "elementwise_impl.h"
#include "isa_end.h"
#endif

/* ISO C forbids an empty translation unit. */
typedef int fastloss_elementwise_avx512_unused;
