/*
 * distance_avx2.c -- the pass over the pairs compiled for AVX2 + FMA.
 * Picked at run time by distance.c when the CPU has it; elsewhere (or on
 * another architecture) this file compiles to nothing that is called.
 */
#include "common.h"

#ifdef FASTLOSS_HAVE_AVX2
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC target("avx2,fma")
#endif
#define FASTLOSS_ISA avx2
#include "distance_impl.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif

/* ISO C forbids an empty translation unit. */
typedef int fastloss_distance_avx2_unused;
