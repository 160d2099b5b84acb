/*
 * storage_begin.h -- the body-facing names of the storage type STORAGE (a tag
 * of storage.h: float32, float64), up to storage_end.h: STORE_T, REAL, LOAD,
 * STORE, STORE_NOT_NAN, STORE_WIDE, ROUND_WIDE, and STORAGE_IS_COMPUTE.  See storage.h for the
 * pattern.  No include guard, on purpose.
 */
#include "storage.h"

#define STORE_T FASTLOSS_STORAGE_T(STORAGE)
#define REAL FASTLOSS_COMPUTE_T(STORAGE)
#define LOAD(array, i) FASTLOSS_LOAD(STORAGE, array, i)
#define STORE(array, i, value) FASTLOSS_STORE(STORAGE, array, i, value)
#define STORE_WIDE(array, i, value) FASTLOSS_STORE_WIDE(STORAGE, array, i, value)
/* (the half tags only) STORE of a value known not to be NaN */
#define STORE_NOT_NAN(array, i, value) FASTLOSS_STORE_NOT_NAN(STORAGE, array, i, value)
#define ROUND_WIDE(value) FASTLOSS_ROUND_WIDE(STORAGE, value)
#define STORAGE_IS_COMPUTE FASTLOSS_STORAGE_IS_COMPUTE(STORAGE)
/* the gradient's type (STORE_T, or float32 for a half type's float32 gradient),
 * and that of the auxiliary arrays (class weights, soft targets: STORE_T, or
 * float32 for the half types), read with AUX_LOAD */
#define GRAD_T FASTLOSS_GRAD_T(STORAGE)
#define AUX_T FASTLOSS_AUX_T(STORAGE)
#define AUX_LOAD(array, i) FASTLOSS_AUX_LOAD(STORAGE, array, i)
