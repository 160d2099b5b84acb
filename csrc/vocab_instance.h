/*
 * vocab_instance.h -- one instantiation of vocab_body.h (vocab_impl.h sets
 * STORAGE_TAG, a storage.h tag, and VOCAB_EXP / VOCAB_LOG1P, fastmath.h's exp for
 * x <= 0 and log(1 + u) on [0, 1] in the tag's compute type); undefines them after.
 * No include guard, on purpose.
 */
#define STORAGE STORAGE_TAG
#include "storage_begin.h"
#define NAME(name) FL_VOCAB_PASTE(name, STORAGE_TAG, FASTLOSS_ISA)
#define TLP_RUN FASTLOSS_VOCAB_NAME(tlp_run, STORAGE_TAG, FASTLOSS_ISA)
#define DISTILL_RUN FASTLOSS_VOCAB_NAME(distill_run, STORAGE_TAG, FASTLOSS_ISA)
#define REAL_EXP_NONPOSITIVE VOCAB_EXP
#define REAL_LOG1P_UNIT VOCAB_LOG1P
#define REAL_LOG VOCAB_LOG
#include "vocab_body.h"
#undef NAME
#undef TLP_RUN
#undef DISTILL_RUN
#undef REAL_EXP_NONPOSITIVE
#undef REAL_LOG1P_UNIT
#undef REAL_LOG
#include "storage_end.h"
#undef STORAGE_TAG
#undef VOCAB_EXP
#undef VOCAB_LOG1P
#undef VOCAB_LOG
