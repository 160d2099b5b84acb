/*
 * cross_entropy_avx512.c -- the cross-entropy kernels compiled for AVX-512
 * (F, VL, DQ, BW) with 512-bit vectors preferred.  Picked at run time by
 * cross_entropy.c when the CPU and OS support it; the exp pass, which bounds
 * the fused kernel on few cores, runs about 1.6x faster than with AVX2.
 */
#include "common.h"

#ifdef FASTLOSS_HAVE_AVX512
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma"))), \
                             apply_to = function)
#elif defined(__GNUC__)
#pragma GCC target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,prefer-vector-width=512")
#endif
#define FASTLOSS_ISA avx512
#include "cross_entropy_impl.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif

/* ISO C forbids an empty translation unit. */
typedef int fastloss_cross_entropy_avx512_unused;
