/*
 * contrastive_impl.h -- instantiates the pass over the pairs and the sparse
 * product per storage type (storage.h: float32, float64, bfloat16, float16) under the name suffix
 * FASTLOSS_ISA (baseline, avx2, avx512).  Included once by contrastive.c and
 * once, under the instruction set's target, by contrastive_avx2.c and
 * contrastive_avx512.c.  A new storage type is one block below (and its slots in
 * contrastive.c's tables).  No include guard, on purpose.
 */
#include "contrastive_internal.h"
#include "fastmath.h"

#define FL_DISTANCE_NAME_(name, dtype, isa) name##_##dtype##_##isa
#define FL_DISTANCE_NAME(name, dtype, isa) FL_DISTANCE_NAME_(name, dtype, isa)

#define STORAGE float32
#include "storage_begin.h"
#define REAL_NAME(name) FL_DISTANCE_NAME(name, float32, FASTLOSS_ISA)
#define RECOMPUTE_TOLERANCE FASTLOSS_RECOMPUTE_TOLERANCE_FLOAT32
#define DIRECT_GRADIENT_RATIO FASTLOSS_DIRECT_GRADIENT_RATIO_FLOAT32
#include "contrastive_row_helpers.h"
#include "contrastive_pass_body.h"
#include "contrastive_nce_body.h"
#undef REAL_NAME
#undef RECOMPUTE_TOLERANCE
#undef DIRECT_GRADIENT_RATIO
#include "storage_end.h"

#define STORAGE float64
#include "storage_begin.h"
#define REAL_NAME(name) FL_DISTANCE_NAME(name, float64, FASTLOSS_ISA)
#define RECOMPUTE_TOLERANCE FASTLOSS_RECOMPUTE_TOLERANCE_FLOAT64
#define DIRECT_GRADIENT_RATIO FASTLOSS_DIRECT_GRADIENT_RATIO_FLOAT64
#include "contrastive_row_helpers.h"
#include "contrastive_pass_body.h"
#undef REAL_NAME
#undef RECOMPUTE_TOLERANCE
#undef DIRECT_GRADIENT_RATIO
#include "storage_end.h"

/* The half types: rows read in place as bfloat16 / float16, computed in float32 (and
 * double) as float32 rows are, with float32's tolerances; the values, coefficients and
 * the backward product's operands in float32 (AUX_T).  The _grad32 tags differ only in
 * the gradient's type, which the pass does not write: the float32-gradient codes share
 * the half codes' pass (contrastive.c). */
#define STORAGE bfloat16
#include "storage_begin.h"
#define REAL_NAME(name) FL_DISTANCE_NAME(name, bfloat16, FASTLOSS_ISA)
#define RECOMPUTE_TOLERANCE FASTLOSS_RECOMPUTE_TOLERANCE_FLOAT32
#define DIRECT_GRADIENT_RATIO FASTLOSS_DIRECT_GRADIENT_RATIO_FLOAT32
#include "contrastive_row_helpers.h"
#include "contrastive_pass_body.h"
#undef REAL_NAME
#undef RECOMPUTE_TOLERANCE
#undef DIRECT_GRADIENT_RATIO
#include "storage_end.h"

#define STORAGE float16
#include "storage_begin.h"
#define REAL_NAME(name) FL_DISTANCE_NAME(name, float16, FASTLOSS_ISA)
#define RECOMPUTE_TOLERANCE FASTLOSS_RECOMPUTE_TOLERANCE_FLOAT32
#define DIRECT_GRADIENT_RATIO FASTLOSS_DIRECT_GRADIENT_RATIO_FLOAT32
#include "contrastive_row_helpers.h"
#include "contrastive_pass_body.h"
#undef REAL_NAME
#undef RECOMPUTE_TOLERANCE
#undef DIRECT_GRADIENT_RATIO
#include "storage_end.h"

#undef FL_DISTANCE_NAME
#undef FL_DISTANCE_NAME_
