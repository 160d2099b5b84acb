/*
 * isa_avx512_begin.h -- compile what follows, up to isa_end.h, for AVX-512
 * (F, VL, DQ, BW) with 512-bit vectors preferred, and name it with the suffix
 * avx512.  See isa_avx2_begin.h.  No include guard, on purpose.
 */
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma"))), \
                             apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,prefer-vector-width=512")
#endif
#define FASTLOSS_ISA avx512
/* for the few bodies with AVX-512 intrinsics (their translation unit includes
 * <immintrin.h> before this header) */
#define FASTLOSS_ISA_AVX512 1
