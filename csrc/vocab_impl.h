/*
 * vocab_impl.h -- instantiates vocab_body.h per storage type (storage.h: float32,
 * float64, bfloat16 and float16 with the gradient in the same type, and their _grad32
 * tags with a float32 gradient) under the name suffix FASTLOSS_ISA: baseline in
 * vocab.c, avx2 and avx512 in vocab_avx2.c / _avx512.c (between isa_*_begin.h and
 * isa_end.h).  A new storage type is one VOCAB_INSTANCE line below, its declarations
 * in vocab_internal.h and one slot in vocab.c's tables (dtype_table.h).  No include
 * guard, on purpose.
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>

#include "fastmath.h"
#include "vocab_internal.h"

#define FL_VOCAB_PASTE_(a, b, c) a##_##b##_##c
#define FL_VOCAB_PASTE(a, b, c) FL_VOCAB_PASTE_(a, b, c)

/* One instantiation: STORAGE_TAG, and fastmath.h's exp and log1p in its compute type
 * (VOCAB_EXP, VOCAB_LOG1P), then vocab_instance.h. */
#define STORAGE_TAG float32
#define VOCAB_EXP fastloss_expf_nonpositive
#define VOCAB_LOG1P fastloss_log1pf_unit
#define VOCAB_LOG fastloss_logf_normal
#include "vocab_instance.h"

#define STORAGE_TAG float64
#define VOCAB_EXP fastloss_exp_nonpositive
#define VOCAB_LOG1P fastloss_log1p_unit
#define VOCAB_LOG fastloss_log
#include "vocab_instance.h"

/* the half types: stored in 16 bits, computed in float */
#define STORAGE_TAG bfloat16
#define VOCAB_EXP fastloss_expf_nonpositive
#define VOCAB_LOG1P fastloss_log1pf_unit
#define VOCAB_LOG fastloss_logf_normal
#include "vocab_instance.h"

#define STORAGE_TAG float16
#define VOCAB_EXP fastloss_expf_nonpositive
#define VOCAB_LOG1P fastloss_log1pf_unit
#define VOCAB_LOG fastloss_logf_normal
#include "vocab_instance.h"

#define STORAGE_TAG bfloat16_grad32
#define VOCAB_EXP fastloss_expf_nonpositive
#define VOCAB_LOG1P fastloss_log1pf_unit
#define VOCAB_LOG fastloss_logf_normal
#include "vocab_instance.h"

#define STORAGE_TAG float16_grad32
#define VOCAB_EXP fastloss_expf_nonpositive
#define VOCAB_LOG1P fastloss_log1pf_unit
#define VOCAB_LOG fastloss_logf_normal
#include "vocab_instance.h"

#undef FL_VOCAB_PASTE
#undef FL_VOCAB_PASTE_
