/*
 * box_impl.h -- instantiates box_body.h per storage type (float32, float64, and
 * bfloat16 and float16 computed in double) under the name
 * suffix FASTLOSS_ISA (baseline, avx2, avx512).  Included once by box.c and
 * once by each of box_avx2.c and box_avx512.c under their target pragmas.  No
 * include guard, on purpose.
 */
#include <math.h>

#include "box_internal.h"
#include "fastmath.h"

/* No contraction of a * b + c into a fused multiply-add here: the formula cancels
 * (1 - iou, area_c - union, union = area1 + area2 - inter), and there a contracted
 * product (exact) minus its rounded twin elsewhere gives another answer than
 * torchvision's own float64 evaluation, which rounds every product, by 1e-16 of the
 * areas: a relative 1e-8 of the loss of two identical boxes.  Unfused, the kernels
 * round as the reference does (its cost is not measured apart). */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#elif defined(__clang__)
#pragma clang fp contract(off)
#endif

#define FL_BOX_PASTE_(name, storage, isa) name##_##storage##_##isa
#define FL_BOX_PASTE(name, storage, isa) FL_BOX_PASTE_(name, storage, isa)

/* One instance a storage type (box_instance.h): STORAGE, BOX_NAME, and
 * BOX_NARROW for float32. */
#define STORAGE float32
#define BOX_NAME float32
#define BOX_NARROW 1
#include "box_instance.h"

#define STORAGE float64
#define BOX_NAME float64
#include "box_instance.h"

/* bfloat16: stored in half, computed in double as float64 (storage.h's bfloat16_wide) */
#define STORAGE bfloat16_wide
#define BOX_NAME bfloat16
#include "box_instance.h"

/* float16: stored in half, computed in double as float64 (storage.h's float16_wide) */
#define STORAGE float16_wide
#define BOX_NAME float16
#include "box_instance.h"

#undef FL_BOX_PASTE_
#undef FL_BOX_PASTE

/* fastmath.h's atan over an array, as this ISA's build compiles it (for the tests). */
void FL_BOX_ATAN_NAME(FASTLOSS_ISA)(const double *x, fastloss_index n, double *out)
{
    for (fastloss_index i = 0; i < n; ++i)
        out[i] = fastloss_atan(x[i]);
}
