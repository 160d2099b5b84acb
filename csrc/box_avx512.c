/*
 * box_avx512.c -- the box-loss kernels compiled for AVX-512,
 * picked at run time by box.c when the CPU has the instructions.
 */
#include "common.h"

#ifdef FASTLOSS_HAVE_AVX512
#include "isa_avx512_begin.h"
#include "box_impl.h"
#include "isa_end.h"
#endif

/* ISO C forbids an empty translation unit. */
typedef int fastloss_box_avx512_unused;
