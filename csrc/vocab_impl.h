/*
 * vocab_impl.h -- instantiates vocab_body.h per storage type (storage.h: float32,
 * float64) under the name suffix FASTLOSS_ISA: baseline in vocab.c, avx2 and avx512 in
 * vocab_avx2.c / _avx512.c (between isa_*_begin.h and isa_end.h).  A new storage type
 * is one block below and one slot in each of vocab.c's tables.  No include guard, on
 * purpose.
 */
#include <math.h>
#include <stdlib.h>

#include "fastmath.h"
#include "vocab_internal.h"

#define FL_VOCAB_PASTE_(a, b, c) a##_##b##_##c
#define FL_VOCAB_PASTE(a, b, c) FL_VOCAB_PASTE_(a, b, c)

#define STORAGE float32
#include "storage_begin.h"
#define NAME(name) FL_VOCAB_PASTE(name, float32, FASTLOSS_ISA)
#define TLP_RUN FASTLOSS_VOCAB_NAME(tlp_run, float32, FASTLOSS_ISA)
#define DISTILL_RUN FASTLOSS_VOCAB_NAME(distill_run, float32, FASTLOSS_ISA)
#define REAL_EXP_NONPOSITIVE fastloss_expf_nonpositive
#define REAL_LOG1P_UNIT fastloss_log1pf_unit
#include "vocab_body.h"
#undef NAME
#undef TLP_RUN
#undef DISTILL_RUN
#undef REAL_EXP_NONPOSITIVE
#undef REAL_LOG1P_UNIT
#include "storage_end.h"

#define STORAGE float64
#include "storage_begin.h"
#define NAME(name) FL_VOCAB_PASTE(name, float64, FASTLOSS_ISA)
#define TLP_RUN FASTLOSS_VOCAB_NAME(tlp_run, float64, FASTLOSS_ISA)
#define DISTILL_RUN FASTLOSS_VOCAB_NAME(distill_run, float64, FASTLOSS_ISA)
#define REAL_EXP_NONPOSITIVE fastloss_exp_nonpositive
#define REAL_LOG1P_UNIT fastloss_log1p_unit
#include "vocab_body.h"
#undef NAME
#undef TLP_RUN
#undef DISTILL_RUN
#undef REAL_EXP_NONPOSITIVE
#undef REAL_LOG1P_UNIT
#include "storage_end.h"

#undef FL_VOCAB_PASTE
#undef FL_VOCAB_PASTE_
