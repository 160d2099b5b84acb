/*
 * distance_impl.h -- instantiates the pass over the pairs for float32 and
 * float64 under the name suffix FASTLOSS_ISA (baseline, avx2, avx512).
 * Included once by distance.c and once, under the instruction set's target,
 * by distance_avx2.c and distance_avx512.c.  No include guard, on purpose.
 */
#include "distance_internal.h"

#define FL_DISTANCE_NAME_(name, dtype, isa) name##_##dtype##_##isa
#define FL_DISTANCE_NAME(name, dtype, isa) FL_DISTANCE_NAME_(name, dtype, isa)

#define REAL float
#define REAL_NAME(name) FL_DISTANCE_NAME(name, float32, FASTLOSS_ISA)
#define RECOMPUTE_TOLERANCE FASTLOSS_RECOMPUTE_TOLERANCE_FLOAT32
#define DIRECT_GRADIENT_RATIO FASTLOSS_DIRECT_GRADIENT_RATIO_FLOAT32
#include "distance_row_helpers.h"
#include "distance_pass_body.h"
#undef REAL
#undef REAL_NAME
#undef RECOMPUTE_TOLERANCE
#undef DIRECT_GRADIENT_RATIO

#define REAL double
#define REAL_NAME(name) FL_DISTANCE_NAME(name, float64, FASTLOSS_ISA)
#define RECOMPUTE_TOLERANCE FASTLOSS_RECOMPUTE_TOLERANCE_FLOAT64
#define DIRECT_GRADIENT_RATIO FASTLOSS_DIRECT_GRADIENT_RATIO_FLOAT64
#include "distance_row_helpers.h"
#include "distance_pass_body.h"
#undef REAL
#undef REAL_NAME
#undef RECOMPUTE_TOLERANCE
#undef DIRECT_GRADIENT_RATIO

#undef FL_DISTANCE_NAME
#undef FL_DISTANCE_NAME_
