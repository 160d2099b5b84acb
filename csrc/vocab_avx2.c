/*
 * vocab_avx2.c -- the vocabulary kernels (vocab.c) compiled for AVX2, picked at run
 * time by vocab.c's tables when the CPU has it.
 */
#include "common.h"

#ifdef FASTLOSS_HAVE_AVX2
#include "isa_avx2_begin.h"
#include "vocab_impl.h"
#include "isa_end.h"
#endif

/* ISO C forbids an empty translation unit. */
typedef int fastloss_vocab_avx2_unused;
