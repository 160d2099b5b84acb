/*
 * cross_entropy_impl.h -- instantiates the generic bodies per storage type
 * (storage.h: float32, float64, and the half types bfloat16 and float16 with
 * their gradient in the same type or, _grad32, in float32) under the name suffix FASTLOSS_ISA: baseline
 * in cross_entropy.c, avx2 and avx512 in cross_entropy_avx2.c / _avx512.c
 * (between isa_*_begin.h and isa_end.h).  Each storage type is one instance of
 * cross_entropy_instance.h (its row routines and its runner); a new storage type
 * is one block below (and its slot in cross_entropy.c's table).
 * No include guard, on purpose.
 */
#include <math.h>
#include <stdlib.h>

#include "cross_entropy_internal.h"
#include "fastmath.h"

#define FL_PASTE3_(a, b, c, d) a##_##b##_##c##_##d
#define FL_PASTE3(a, b, c, d) FL_PASTE3_(a, b, c, d)

/* One instance a storage type: STORAGE, the tag's part of the row routines'
 * names, and whether the tag computes in double (else in float: the half types
 * from their stored halves; every tag but float64 also gets rows in double). */
#define STORAGE float32
#define CE_NAME f32
#define CE_OWN_DOUBLE 0
#include "cross_entropy_instance.h"

#define STORAGE float64
#define CE_NAME f64
#define CE_OWN_DOUBLE 1
#include "cross_entropy_instance.h"

#define STORAGE bfloat16
#define CE_NAME bfloat16
#define CE_OWN_DOUBLE 0
#include "cross_entropy_instance.h"

#define STORAGE float16
#define CE_NAME float16
#define CE_OWN_DOUBLE 0
#include "cross_entropy_instance.h"

#define STORAGE bfloat16_grad32
#define CE_NAME bfloat16_grad32
#define CE_OWN_DOUBLE 0
#include "cross_entropy_instance.h"

#define STORAGE float16_grad32
#define CE_NAME float16_grad32
#define CE_OWN_DOUBLE 0
#include "cross_entropy_instance.h"

#undef FL_PASTE3
#undef FL_PASTE3_
