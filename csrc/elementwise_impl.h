/*
 * elementwise_impl.h -- instantiates elementwise_body.h per storage type
 * under the name suffix FASTLOSS_ISA (baseline, avx2, avx512): float32 and
 * float64, each computed as itself, and float32 computed in double
 * (float32_wide, for elementwise.c's redo of a cancelled sum).  Included once
 * by elementwise.c and once by each of elementwise_avx2.c and
 * elementwise_avx512.c under their target pragmas.  No include guard, on
 * purpose.  bfloat16 and float16 (computed in float, EW_FLOAT_COMPUTE) have
 * a block each, and one more computed in double for the redo (_wide).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "elementwise_internal.h"
#include "fastmath.h"
#include "storage.h"

#define FL_EW_PASTE_(name, storage, isa) name##_##storage##_##isa
#define FL_EW_PASTE(name, storage, isa) FL_EW_PASTE_(name, storage, isa)

#define STORAGE float32
#include "storage_begin.h"
#define EW(name) FL_EW_PASTE(fastloss_ew_##name, float32, FASTLOSS_ISA)
#define RUN FL_EW_PASTE(fastloss_ew_run, float32, FASTLOSS_ISA)
#define MAY_BE_NEGATIVE FL_EW_PASTE(fastloss_ew_may_be_negative, float32, FASTLOSS_ISA)
#define EW_FLOAT_COMPUTE
#include "elementwise_body.h"
#undef EW_FLOAT_COMPUTE
#undef EW
#undef RUN
#undef MAY_BE_NEGATIVE
#include "storage_end.h"

#define STORAGE float64
#include "storage_begin.h"
#define EW(name) FL_EW_PASTE(fastloss_ew_##name, float64, FASTLOSS_ISA)
#define RUN FL_EW_PASTE(fastloss_ew_run, float64, FASTLOSS_ISA)
#include "elementwise_body.h"
#undef EW
#undef RUN
#include "storage_end.h"

#define STORAGE float32_wide
#include "storage_begin.h"
#define EW(name) FL_EW_PASTE(fastloss_ew_##name, float32_wide, FASTLOSS_ISA)
#define RUN FL_EW_PASTE(fastloss_ew_run, float32_wide, FASTLOSS_ISA)
#include "elementwise_body.h"
#undef EW
#undef RUN
#include "storage_end.h"

/* bfloat16: stored in half, computed in float (and in double for the redo) */
#define STORAGE bfloat16
#include "storage_begin.h"
#define EW(name) FL_EW_PASTE(fastloss_ew_##name, bfloat16, FASTLOSS_ISA)
#define RUN FL_EW_PASTE(fastloss_ew_run, bfloat16, FASTLOSS_ISA)
#define MAY_BE_NEGATIVE FL_EW_PASTE(fastloss_ew_may_be_negative, bfloat16, FASTLOSS_ISA)
#define EW_FLOAT_COMPUTE
#include "elementwise_body.h"
#undef EW_FLOAT_COMPUTE
#undef EW
#undef RUN
#undef MAY_BE_NEGATIVE
#include "storage_end.h"

#define STORAGE bfloat16_wide
#include "storage_begin.h"
#define EW(name) FL_EW_PASTE(fastloss_ew_##name, bfloat16_wide, FASTLOSS_ISA)
#define RUN FL_EW_PASTE(fastloss_ew_run, bfloat16_wide, FASTLOSS_ISA)
#include "elementwise_body.h"
#undef EW
#undef RUN
#include "storage_end.h"

/* float16: stored in half, computed in float (and in double for the redo) */
#define STORAGE float16
#include "storage_begin.h"
#define EW(name) FL_EW_PASTE(fastloss_ew_##name, float16, FASTLOSS_ISA)
#define RUN FL_EW_PASTE(fastloss_ew_run, float16, FASTLOSS_ISA)
#define MAY_BE_NEGATIVE FL_EW_PASTE(fastloss_ew_may_be_negative, float16, FASTLOSS_ISA)
#define EW_FLOAT_COMPUTE
#include "elementwise_body.h"
#undef EW_FLOAT_COMPUTE
#undef EW
#undef RUN
#undef MAY_BE_NEGATIVE
#include "storage_end.h"

#define STORAGE float16_wide
#include "storage_begin.h"
#define EW(name) FL_EW_PASTE(fastloss_ew_##name, float16_wide, FASTLOSS_ISA)
#define RUN FL_EW_PASTE(fastloss_ew_run, float16_wide, FASTLOSS_ISA)
#include "elementwise_body.h"
#undef EW
#undef RUN
#include "storage_end.h"

#undef FL_EW_PASTE_
#undef FL_EW_PASTE
