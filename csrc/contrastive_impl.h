/*
 * contrastive_impl.h -- instantiates the pass over the pairs and the sparse
 * product per storage type (storage.h: float32, float64, bfloat16, float16), and the
 * row kernels per storage tag, under the name suffix
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

/* The row kernels (contrastive_body.h: prepare and finish rows, the normalisation's
 * backward, contrastive and triplet margin over row pairs) per storage tag, the half
 * types' float32-gradient tags included, named fastloss_contrastive_<kernel>_<tag>_<isa>.
 * Their helpers come again under these names, so that no multiply-add is contracted into
 * an FMA anywhere in them: the AVX2 and AVX-512 builds then compute what the baseline
 * build does, operation for operation, and every path gives the same bits (the tests
 * hold them to it).  The half types gain the most from the wider builds: their LOAD and
 * STORE_WIDE are integer and float lane arithmetic that the compiler vectorises on
 * 256- and 512-bit registers. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#elif defined(__clang__)
#pragma clang fp contract(off)
#endif

#define FL_ROWS_NAME_(name, tag, isa) fastloss_contrastive_##name##_##tag##_##isa
#define FL_ROWS_NAME(name, tag, isa) FL_ROWS_NAME_(name, tag, isa)

#define STORAGE float32
#include "storage_begin.h"
#define REAL_NAME(name) FL_ROWS_NAME(name, float32, FASTLOSS_ISA)
#include "contrastive_row_helpers.h"
#include "contrastive_body.h"
#undef REAL_NAME
#include "storage_end.h"

#define STORAGE float64
#include "storage_begin.h"
#define REAL_NAME(name) FL_ROWS_NAME(name, float64, FASTLOSS_ISA)
#include "contrastive_row_helpers.h"
#include "contrastive_body.h"
#undef REAL_NAME
#include "storage_end.h"

/* the half types: rows read in place, gradients rounded once from double to the half
 * type, or (the _grad32 tags) to float32; the prepared rows and products in float32 */
#define STORAGE bfloat16
#include "storage_begin.h"
#define REAL_NAME(name) FL_ROWS_NAME(name, bfloat16, FASTLOSS_ISA)
#include "contrastive_row_helpers.h"
#include "contrastive_body.h"
#undef REAL_NAME
#include "storage_end.h"

#define STORAGE float16
#include "storage_begin.h"
#define REAL_NAME(name) FL_ROWS_NAME(name, float16, FASTLOSS_ISA)
#include "contrastive_row_helpers.h"
#include "contrastive_body.h"
#undef REAL_NAME
#include "storage_end.h"

#define STORAGE bfloat16_grad32
#include "storage_begin.h"
#define REAL_NAME(name) FL_ROWS_NAME(name, bfloat16_grad32, FASTLOSS_ISA)
#include "contrastive_row_helpers.h"
#include "contrastive_body.h"
#undef REAL_NAME
#include "storage_end.h"

#define STORAGE float16_grad32
#include "storage_begin.h"
#define REAL_NAME(name) FL_ROWS_NAME(name, float16_grad32, FASTLOSS_ISA)
#include "contrastive_row_helpers.h"
#include "contrastive_body.h"
#undef REAL_NAME
#include "storage_end.h"

#undef FL_ROWS_NAME
#undef FL_ROWS_NAME_
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

#undef FL_DISTANCE_NAME
#undef FL_DISTANCE_NAME_
