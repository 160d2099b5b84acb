/*
 * elementwise_impl.h -- instantiates elementwise_body.h per storage type
 * under the name suffix FASTLOSS_ISA (baseline, avx2, avx512): float32 and
 * float64, each computed as itself, and float32 computed in double
 * (float32_wide, for elementwise.c's redo of a cancelled sum).  Included once
 * by elementwise.c and once by each of elementwise_avx2.c and
 * elementwise_avx512.c under their target pragmas.  No include guard, on
 * purpose.  bfloat16 and float16 (computed in float, EW_FLOAT_COMPUTE) have
 * an instance each, and one more computed in double for the redo (_wide).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "elementwise_internal.h"
#include "fastmath.h"
#include "storage.h"

#define FL_EW_PASTE_(name, storage, isa) name##_##storage##_##isa
#define FL_EW_PASTE(name, storage, isa) FL_EW_PASTE_(name, storage, isa)

/* One instance a storage type (elementwise_instance.h): STORAGE, and
 * EW_FLOAT_COMPUTE where the tag computes in float; float64 has the sign test
 * too (EW_SIGN_TEST), for its compensated redo. */
#define STORAGE float32
#define EW_FLOAT_COMPUTE
#include "elementwise_instance.h"

#define STORAGE float64
#define EW_SIGN_TEST
#include "elementwise_instance.h"

#define STORAGE float32_wide
#include "elementwise_instance.h"

/* bfloat16: stored in half, computed in float (and in double for the redo) */
#define STORAGE bfloat16
#define EW_FLOAT_COMPUTE
#include "elementwise_instance.h"

#define STORAGE bfloat16_wide
#include "elementwise_instance.h"

/* float16: stored in half, computed in float (and in double for the redo) */
#define STORAGE float16
#define EW_FLOAT_COMPUTE
#include "elementwise_instance.h"

#define STORAGE float16_wide
#include "elementwise_instance.h"

#undef FL_EW_PASTE_
#undef FL_EW_PASTE
