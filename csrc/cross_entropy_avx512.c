/*
 * cross_entropy_avx512.c -- the cross-entropy kernels compiled for AVX-512,
 * picked at run time by cross_entropy.c when the CPU and OS support it; the
 * exp pass, which bounds the fused kernel on few cores, runs about 1.6x faster
 * than with AVX2.
 */
#include "common.h"

#ifdef FASTLOSS_HAVE_AVX512
#include <immintrin.h> /* the small path's transposes (cross_entropy_small_body.h) */
#include "isa_avx512_begin.h"
#include "cross_entropy_impl.h"
#include "isa_end.h"
#endif

/* ISO C forbids an empty translation unit. */
typedef int fastloss_cross_entropy_avx512_unused;
