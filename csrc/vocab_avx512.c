/*
 * vocab_avx512.c -- the vocabulary kernels (vocab.c) compiled for AVX512, picked at run
 * time by vocab.c's tables when the CPU has it.
 */
#include "common.h"

#ifdef FASTLOSS_HAVE_AVX512
#include "isa_avx512_begin.h"
#include "vocab_impl.h"
#include "isa_end.h"
#endif

/* ISO C forbids an empty translation unit. */
typedef int fastloss_vocab_avx512_unused;
