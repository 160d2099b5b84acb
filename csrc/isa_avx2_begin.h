/*
 * isa_avx2_begin.h -- compile what follows, up to isa_end.h, for AVX2 + FMA
 * and name it with the suffix avx2.  Each family's *_avx2.c wraps its impl
 * header in the pair; the family's dispatcher calls the result only when
 * fastloss_simd_level() says the CPU has the instructions.  No include guard,
 * on purpose.
 */
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
#define FASTLOSS_ISA avx2
