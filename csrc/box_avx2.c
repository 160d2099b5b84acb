/*
 * box_avx2.c -- the box-loss kernels compiled for AVX2 + FMA,
 * picked at run time by box.c when the CPU has the instructions.
 */
#include "common.h"

#ifdef FASTLOSS_HAVE_AVX2
#include "isa_avx2_begin.h"
#include "box_impl.h"
#include "isa_end.h"
#endif

/* ISO C forbids an empty translation unit. */
typedef int fastloss_box_avx2_unused;
