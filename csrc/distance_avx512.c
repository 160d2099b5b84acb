/*
 * distance_avx512.c -- the pass over the pairs compiled for AVX-512 (F, VL, DQ, BW) with 512-bit vectors preferred.
 * Picked at run time by distance.c when the CPU has it; elsewhere (or on
 * another architecture) this file compiles to nothing that is called.
 */
#include "common.h"

#ifdef FASTLOSS_HAVE_AVX512
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,prefer-vector-width=512")
#endif
#define FASTLOSS_ISA avx512
#include "distance_impl.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif

/* ISO C forbids an empty translation unit. */
typedef int fastloss_distance_avx512_unused;
