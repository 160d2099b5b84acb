/*
 * storage.h -- the storage types of the kernels' arrays, apart from the types
 * they are computed in (PyTorch's opmath_type): a dtype code for the C entry
 * points, and per storage type its C type, its compute type and one load and
 * one store.  Plain C99; no Python, no NumPy.
 *
 * The pattern.  A kernel body (cross_entropy_*body.h, distance_*body.h, ...)
 * is written once against
 *   STORE_T             what the array pointers point to (the storage type)
 *   REAL                the type it computes in: float for float32 storage,
 *                       double for float64, float for bfloat16 and float16
 *   LOAD(p, i)          element i of a STORE_T array, as REAL
 *   STORE(p, i, v)      element i of a STORE_T array = v (a REAL), rounded
 *   STORE_WIDE(p, i, v) the same from a double (rounded once, to STORE_T)
 *   ROUND_WIDE(v)       a double rounded to STORE_T, as a REAL: the value that
 *                       STORE_WIDE would store (for sums that must agree with
 *                       what was stored)
 * and never touches an input or output array but through LOAD and STORE.
 * (Scratch space the body allocates itself is REAL or double, and read and
 * written directly.)  Sums accumulate in double whatever the storage type
 * (STYLE.md), so a load is usually widened at once: (double)LOAD(p, i).
 *
 * An impl header instantiates a body per storage type (and per instruction
 * set, FASTLOSS_ISA):
 *     #define STORAGE float32
 *     #include "storage_begin.h"      (STORE_T, REAL, LOAD, STORE, ... from the tag)
 *     #include "cross_entropy_body.h"
 *     #include "storage_end.h"
 * and the family's C entry points take a dtype code (enum fastloss_dtype) and
 * `const void *` / `void *` arrays, and call the instantiation from a table
 * indexed by [dtype], filled once per SIMD level (FASTLOSS_PICK, dispatch.c).
 * The Cython layer maps a NumPy dtype to the code in one place
 * (_kernels.pyx: _dtype_code) and calls one C function per operation.
 *
 * Adding a storage type (bfloat16, float16 stored, float32 computed) is:
 *   1. here: its code in enum fastloss_dtype, its typedefs, its
 *      FASTLOSS_STORAGE_IS_COMPUTE_<tag> (0), and its fastloss_load_<tag>,
 *      fastloss_store_<tag>, fastloss_store_wide_<tag> and fastloss_round_<tag>
 *      (round to nearest even; NaN stays NaN);
 *   2. in each family's impl header: one instantiation block with
 *      STORAGE <tag>, and one slot in the family's table (the entries for the
 *      other ISAs come from FASTLOSS_PICK);
 *   3. in _kernels.pyx: one line of _storage_code.
 * The bodies do not change: where a body keeps intermediate values in an
 * array it would otherwise share with the output (cross-entropy's exps in the
 * gradient row), it tests STORAGE_IS_COMPUTE and uses scratch of REAL instead.
 *
 * Done: cross-entropy (cross_entropy_*body.h), contrastive (contrastive_*body.h,
 * contrastive_row_helpers.h), box (box_body.h) and elementwise
 * (elementwise_body.h; its float32_wide instantiation, float32 storage computed
 * in double, redoes a float32 sum whose terms cancelled: elementwise.c).
 * Where a body keeps a value it also stores (a rounded coefficient that later
 * sums must agree with), it keeps ROUND_WIDE(v) in REAL, not a STORE_T copy.
 */
#ifndef FASTLOSS_STORAGE_H
#define FASTLOSS_STORAGE_H

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The storage type of a call's floating-point arrays: the index of the
 * families' kernel tables.  (Codes 2 and 3 are kept for bfloat16 and float16.) */
enum fastloss_dtype {
    FASTLOSS_FLOAT32 = 0,
    FASTLOSS_FLOAT64 = 1,
    FASTLOSS_N_DTYPES = 2
};

/* Whether `dtype` is a code of this build: the entry points check it before
 * they index their tables. */
static inline int fastloss_dtype_known(int dtype)
{
    return dtype >= 0 && dtype < FASTLOSS_N_DTYPES;
}

/* float32: stored and computed in float. */
typedef float fastloss_storage_float32;
typedef float fastloss_compute_float32;
#define FASTLOSS_STORAGE_IS_COMPUTE_float32 1

FASTLOSS_INLINE float fastloss_load_float32(const float *array, fastloss_index i)
{
    return array[i];
}

FASTLOSS_INLINE void fastloss_store_float32(float *array, fastloss_index i, float value)
{
    array[i] = value;
}

FASTLOSS_INLINE void fastloss_store_wide_float32(float *array, fastloss_index i, double value)
{
    array[i] = (float)value;
}

FASTLOSS_INLINE float fastloss_round_float32(double value)
{
    return (float)value;
}

/* float64: stored and computed in double. */
typedef double fastloss_storage_float64;
typedef double fastloss_compute_float64;
#define FASTLOSS_STORAGE_IS_COMPUTE_float64 1

FASTLOSS_INLINE double fastloss_load_float64(const double *array, fastloss_index i)
{
    return array[i];
}

FASTLOSS_INLINE void fastloss_store_float64(double *array, fastloss_index i, double value)
{
    array[i] = value;
}

FASTLOSS_INLINE void fastloss_store_wide_float64(double *array, fastloss_index i, double value)
{
    array[i] = value;
}

FASTLOSS_INLINE double fastloss_round_float64(double value)
{
    return value;
}

/* float32 stored, computed in double: not a dtype code of its own (its arrays are
 * float32's), but a tag for a second instantiation of a body over float32 arrays
 * that computes every term in double, reading the float32 values exactly, with
 * no float64 copy of the arrays (the elementwise family redoes a sum whose float32
 * terms cancelled with it: elementwise.c).  A storage type computed in float
 * (bfloat16, float16) can have its own _wide tag the same way. */
typedef float fastloss_storage_float32_wide;
typedef double fastloss_compute_float32_wide;
#define FASTLOSS_STORAGE_IS_COMPUTE_float32_wide 0

FASTLOSS_INLINE double fastloss_load_float32_wide(const float *array, fastloss_index i)
{
    return (double)array[i];
}

FASTLOSS_INLINE void fastloss_store_float32_wide(float *array, fastloss_index i, double value)
{
    array[i] = (float)value;
}

FASTLOSS_INLINE void fastloss_store_wide_float32_wide(float *array, fastloss_index i,
                                                      double value)
{
    array[i] = (float)value;
}

FASTLOSS_INLINE double fastloss_round_float32_wide(double value)
{
    return (double)(float)value;
}

/* Names of a storage tag's pieces (the tag is a macro argument, expanded first). */
#define FASTLOSS_STORAGE_T(tag) FASTLOSS_STORAGE_PASTE_(fastloss_storage_, tag)
#define FASTLOSS_COMPUTE_T(tag) FASTLOSS_STORAGE_PASTE_(fastloss_compute_, tag)
#define FASTLOSS_LOAD(tag, array, i) FASTLOSS_STORAGE_PASTE_(fastloss_load_, tag)((array), (i))
#define FASTLOSS_STORE(tag, array, i, value) \
    FASTLOSS_STORAGE_PASTE_(fastloss_store_, tag)((array), (i), (value))
#define FASTLOSS_STORE_WIDE(tag, array, i, value) \
    FASTLOSS_STORAGE_PASTE_(fastloss_store_wide_, tag)((array), (i), (value))
#define FASTLOSS_ROUND_WIDE(tag, value) FASTLOSS_STORAGE_PASTE_(fastloss_round_, tag)((value))
#define FASTLOSS_STORAGE_IS_COMPUTE(tag) FASTLOSS_STORAGE_PASTE_(FASTLOSS_STORAGE_IS_COMPUTE_, tag)
#define FASTLOSS_STORAGE_PASTE_(a, b) FASTLOSS_STORAGE_PASTE2_(a, b)
#define FASTLOSS_STORAGE_PASTE2_(a, b) a##b

#ifdef __cplusplus
}
#endif

#endif /* FASTLOSS_STORAGE_H */
