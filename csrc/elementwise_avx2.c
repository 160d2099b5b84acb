/*
 * elementwise_avx2.c -- the elementwise kernels compiled for AVX2 + FMA.
 * Picked at run time by elementwise.c when the CPU has both; elsewhere (or on
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
#include "elementwise_impl.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif

/* ISO C forbids an empty translation unit. */
typedef int fastloss_elementwise_avx2_unused;
