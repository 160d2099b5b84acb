/* isa_end.h -- closes isa_avx2_begin.h or isa_avx512_begin.h.  No include guard. */
#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif
#undef FASTLOSS_ISA
#undef FASTLOSS_ISA_AVX512
