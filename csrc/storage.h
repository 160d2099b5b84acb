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
 * Beside STORE_T, a tag names GRAD_T, the type of the gradient STORE writes (STORE_T,
 * or float for the half types' _grad32 tags), and AUX_T with AUX_LOAD, the type of the
 * auxiliary arrays cross-entropy reads (class weights, soft targets: float for the half
 * types).  Families whose bodies use STORE_T for every array see GRAD_T == AUX_T ==
 * STORE_T on their tags.
 *
 * Half types, done: bfloat16 and float16 (and _grad32) for cross-entropy; bfloat16 and
 * float16 computed in float plus their _wide tags (computed in double) for the
 * elementwise family; the _wide tags for the box family.  Not done: contrastive.
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

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The storage type of a call's floating-point arrays: the index of the
 * families' kernel tables.  The half types come twice: with the gradient in
 * the input's type, and (_GRAD_FLOAT32) with a float32 gradient.  A family
 * that has no kernel for a code leaves its slot NULL, and its entry points
 * answer FASTLOSS_ERROR_BAD_DTYPE. */
enum fastloss_dtype {
    FASTLOSS_FLOAT32 = 0,
    FASTLOSS_FLOAT64 = 1,
    FASTLOSS_BFLOAT16 = 2,
    FASTLOSS_FLOAT16 = 3,
    FASTLOSS_BFLOAT16_GRAD_FLOAT32 = 4,
    FASTLOSS_FLOAT16_GRAD_FLOAT32 = 5,
    FASTLOSS_N_DTYPES = 6
};

/* Whether `dtype` is a code of this build: the entry points check it before
 * they index their tables (and then that the slot is not NULL). */
static inline int fastloss_dtype_known(int dtype)
{
    return dtype >= 0 && dtype < FASTLOSS_N_DTYPES;
}

/* float32: stored and computed in float. */
typedef float fastloss_storage_float32;
typedef float fastloss_compute_float32;
#define FASTLOSS_STORAGE_IS_COMPUTE_float32 1
typedef float fastloss_grad_float32;
typedef float fastloss_aux_float32;

FASTLOSS_INLINE float fastloss_aux_load_float32(const float *array, fastloss_index i)
{
    return array[i];
}

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
typedef double fastloss_grad_float64;
typedef double fastloss_aux_float64;

FASTLOSS_INLINE double fastloss_aux_load_float64(const double *array, fastloss_index i)
{
    return array[i];
}

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
typedef float fastloss_grad_float32_wide;
typedef float fastloss_aux_float32_wide;

FASTLOSS_INLINE double fastloss_aux_load_float32_wide(const float *array, fastloss_index i)
{
    return (double)array[i];
}

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

/*
 * Half precision: bfloat16 and float16 stored, computed in float (and summed
 * in double, as everywhere).  The arrays are uint16_t bit patterns, converted
 * by the integer and float arithmetic below, written branch-free so that the
 * compiler vectorises every loop that loads or stores them, on every ISA
 * (baseline SSE2, AVX2, AVX-512): a load is two vector instructions per
 * vector (vpmovzxwd, vpslld), a store about eight (checked in the objdump of
 * the cross-entropy kernels; tests/test_half_conversions.py holds every path
 * to the definition, bit for bit, through half_convert.c).
 *
 * The conversion instructions were measured against these functions over
 * every float32 pattern with its low 12 bits zero plus every subnormal and
 * NaN (Zen 5, 2026-11): AVX512_BF16's vcvtneps2bf16 differs on exactly the
 * subnormal inputs whose result is not zero (it treats them as zero,
 * whatever MXCSR says; NaNs agree); F16C's vcvtps2ph (imm RNE) agrees on all
 * of them (incl. subnormal results and overflow); vcvtph2ps agrees but on the
 * 1022 signalling-NaN halves, which it quiets.  They are not used: a
 * vcvtneps2bf16 would need the integer path beside it for subnormals, and
 * with the conversions vectorised as they are the kernels' time goes
 * elsewhere (BENCHMARKS.md, "bfloat16 conversions").
 *
 * The gradient of a half-precision call is half too (_GRAD_FLOAT32: float32),
 * and the class weights and soft targets (AUX) are float32 for every half tag:
 * the Python layer converts them exactly from half, and rounds float64 ones to
 * float32, the precision the row is computed in.
 *
 * Rounding is to nearest, ties to even, once: a float to half directly; a
 * double (STORE_WIDE) first to float rounding to odd (truncate, then set the
 * last bit when inexact), which float's 13 or more extra bits make exact for
 * the second rounding (Boldo & Melquiond, "When double rounding is odd",
 * 2005).  NaN stays NaN (made quiet), infinities stay, overflow gives inf.
 */
FASTLOSS_INLINE uint32_t fastloss_float_bits(float value)
{
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    return bits;
}

FASTLOSS_INLINE float fastloss_bits_float(uint32_t bits)
{
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

/* bfloat16: the upper half of a float32. */
FASTLOSS_INLINE float fastloss_bfloat16_to_float(uint16_t half)
{
    return fastloss_bits_float((uint32_t)half << 16);
}

/* a value that is not NaN (the caller knows it: the cross-entropy's gradient of a
 * finite row), rounded without the NaN case: three vector operations fewer a vector */
FASTLOSS_INLINE uint16_t fastloss_float_to_bfloat16_not_nan(float value)
{
    const uint32_t bits = fastloss_float_bits(value);
    /* adding 0x7fff plus the lowest kept bit rounds to nearest, ties to even
     * (a carry into the exponent is the right answer, up to inf) */
    return (uint16_t)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

FASTLOSS_INLINE uint16_t fastloss_float_to_bfloat16(float value)
{
    const uint32_t bits = fastloss_float_bits(value);
    const uint32_t quiet_nan = (bits >> 16) | 0x40u;
    return (bits & 0x7fffffffu) > 0x7f800000u ? (uint16_t)quiet_nan
                                               : fastloss_float_to_bfloat16_not_nan(value);
}

/* float16: 1 sign, 5 exponent (bias 15), 10 fraction bits. */
FASTLOSS_INLINE float fastloss_float16_to_float(uint16_t half)
{
    const uint32_t sign = ((uint32_t)half & 0x8000u) << 16;
    const uint32_t magnitude = (uint32_t)half & 0x7fffu;
    /* exponent and fraction moved into place, then scaled by 2**(127 - 15):
     * exact for normal and subnormal halves alike */
    const float scaled = fastloss_bits_float(magnitude << 13) * 0x1p112f;
    const uint32_t special = (magnitude << 13) | 0x7f800000u; /* inf, NaN (payload kept) */
    const uint32_t bits = magnitude >= 0x7c00u ? special : fastloss_float_bits(scaled);
    return fastloss_bits_float(bits | sign);
}

/* a value that is not NaN (see fastloss_float_to_bfloat16_not_nan) */
FASTLOSS_INLINE uint16_t fastloss_float_to_float16_not_nan(float value)
{
    const uint32_t all = fastloss_float_bits(value);
    const uint32_t sign = (all >> 16) & 0x8000u;
    const uint32_t bits = all & 0x7fffffffu;
    /* normal results: rebias the exponent and round the 13 dropped bits to
     * nearest even with the integer trick of bfloat16 (a carry out of the
     * largest finite half gives inf, 0x7c00) */
    const uint32_t normal =
        (bits + ((uint32_t)(15 - 127) << 23) + 0xfffu + ((bits >> 13) & 1u)) >> 13;
    /* results below 2**-14: adding 0.5 puts the half's subnormal grid on
     * float's last bit, so the float addition rounds to nearest even */
    const uint32_t subnormal = fastloss_float_bits(fastloss_bits_float(bits) + 0.5f) - 0x3f000000u;
    uint32_t result = bits < 0x38800000u ? subnormal : normal;
    result = bits >= 0x47800000u ? 0x7c00u : result;     /* >= 65536: inf */
    return (uint16_t)(result | sign);
}

FASTLOSS_INLINE uint16_t fastloss_float_to_float16(float value)
{
    const uint32_t all = fastloss_float_bits(value);
    const uint32_t bits = all & 0x7fffffffu;
    /* NaN: quiet, the leading payload bits kept (only the fraction's: the
     * exponent's bits shifted down would reach the sign) */
    const uint32_t nan = ((all >> 16) & 0x8000u) | 0x7e00u | ((bits >> 13) & 0x3ffu);
    return bits > 0x7f800000u ? (uint16_t)nan : fastloss_float_to_float16_not_nan(value);
}

/* A double rounded to float toward zero with the last bit set when inexact
 * ("round to odd"): rounding that to half is the double's correct rounding. */
FASTLOSS_INLINE float fastloss_double_to_float_odd(double value)
{
    const float nearest = (float)value;
    const double back = (double)nearest;
    uint32_t bits = fastloss_float_bits(nearest);
    bits -= fabs(back) > fabs(value) ? 1u : 0u; /* rounded away from zero: step back */
    bits |= back != value ? 1u : 0u;             /* (NaN: stays NaN) */
    return fastloss_bits_float(bits);
}

#define FASTLOSS_HALF_TAG_(tag, to_float, grad_t, store_body, not_nan_body)                  \
    typedef uint16_t fastloss_storage_##tag;                                                  \
    typedef float fastloss_compute_##tag;                                                     \
    typedef grad_t fastloss_grad_##tag;                                                       \
    typedef float fastloss_aux_##tag;                                                         \
    FASTLOSS_INLINE float fastloss_load_##tag(const uint16_t *array, fastloss_index i)       \
    {                                                                                         \
        return to_float(array[i]);                                                            \
    }                                                                                         \
    FASTLOSS_INLINE float fastloss_aux_load_##tag(const float *array, fastloss_index i)      \
    {                                                                                         \
        return array[i];                                                                      \
    }                                                                                         \
    FASTLOSS_INLINE void fastloss_store_##tag(grad_t *array, fastloss_index i, float value)  \
    {                                                                                         \
        array[i] = store_body(value);                                                         \
    }                                                                                         \
    FASTLOSS_INLINE void fastloss_store_wide_##tag(grad_t *array, fastloss_index i,          \
                                                   double value)                              \
    {                                                                                         \
        array[i] = store_body(fastloss_double_to_float_odd(value));                           \
    }                                                                                         \
    FASTLOSS_INLINE void fastloss_store_not_nan_##tag(grad_t *array, fastloss_index i,       \
                                                      float value)                            \
    {                                                                                         \
        array[i] = not_nan_body(value);                                                       \
    }

/* bfloat16 and float16 storage, gradient in the same type. */
FASTLOSS_HALF_TAG_(bfloat16, fastloss_bfloat16_to_float, uint16_t, fastloss_float_to_bfloat16,
                   fastloss_float_to_bfloat16_not_nan)
FASTLOSS_HALF_TAG_(float16, fastloss_float16_to_float, uint16_t, fastloss_float_to_float16,
                   fastloss_float_to_float16_not_nan)
#define FASTLOSS_STORAGE_IS_COMPUTE_bfloat16 0
#define FASTLOSS_STORAGE_IS_COMPUTE_float16 0

FASTLOSS_INLINE float fastloss_round_bfloat16(double value)
{
    const float odd = fastloss_double_to_float_odd(value);
    return fastloss_bfloat16_to_float(fastloss_float_to_bfloat16(odd));
}

FASTLOSS_INLINE float fastloss_round_float16(double value)
{
    const float odd = fastloss_double_to_float_odd(value);
    return fastloss_float16_to_float(fastloss_float_to_float16(odd));
}

/* The same storage, gradient in float32 (the half type's option grad_dtype="float32"). */
#define FASTLOSS_HALF_TAG32_(tag, to_float)                                                    \
    typedef uint16_t fastloss_storage_##tag;                                                  \
    typedef float fastloss_compute_##tag;                                                     \
    typedef float fastloss_grad_##tag;                                                        \
    typedef float fastloss_aux_##tag;                                                         \
    FASTLOSS_INLINE float fastloss_load_##tag(const uint16_t *array, fastloss_index i)       \
    {                                                                                         \
        return to_float(array[i]);                                                            \
    }                                                                                         \
    FASTLOSS_INLINE float fastloss_aux_load_##tag(const float *array, fastloss_index i)      \
    {                                                                                         \
        return array[i];                                                                      \
    }                                                                                         \
    FASTLOSS_INLINE void fastloss_store_##tag(float *array, fastloss_index i, float value)   \
    {                                                                                         \
        array[i] = value;                                                                     \
    }                                                                                         \
    FASTLOSS_INLINE void fastloss_store_not_nan_##tag(float *array, fastloss_index i,        \
                                                      float value)                            \
    {                                                                                         \
        array[i] = value;                                                                     \
    }                                                                                         \
    FASTLOSS_INLINE void fastloss_store_wide_##tag(float *array, fastloss_index i,           \
                                                   double value)                              \
    {                                                                                         \
        array[i] = (float)value;                                                              \
    }                                                                                         \
    FASTLOSS_INLINE float fastloss_round_##tag(double value)                                  \
    {                                                                                         \
        return (float)value;                                                                  \
    }
FASTLOSS_HALF_TAG32_(bfloat16_grad32, fastloss_bfloat16_to_float)
FASTLOSS_HALF_TAG32_(float16_grad32, fastloss_float16_to_float)
#define FASTLOSS_STORAGE_IS_COMPUTE_bfloat16_grad32 0
#define FASTLOSS_STORAGE_IS_COMPUTE_float16_grad32 0

/* bfloat16 and float16 stored, computed in double: the elementwise family's redo of
 * a cancelled sum (as float32_wide), and the box family, which computes in double
 * whatever the storage.  Not dtype codes of their own. */
#define FASTLOSS_HALF_WIDE_TAG_(tag, to_float, from_float)                                   \
    typedef uint16_t fastloss_storage_##tag;                                                  \
    typedef double fastloss_compute_##tag;                                                    \
    typedef uint16_t fastloss_grad_##tag;                                                     \
    typedef uint16_t fastloss_aux_##tag;                                                      \
    FASTLOSS_INLINE double fastloss_load_##tag(const uint16_t *array, fastloss_index i)      \
    {                                                                                         \
        return (double)to_float(array[i]);                                                    \
    }                                                                                         \
    FASTLOSS_INLINE double fastloss_aux_load_##tag(const uint16_t *array, fastloss_index i)  \
    {                                                                                         \
        return (double)to_float(array[i]);                                                    \
    }                                                                                         \
    FASTLOSS_INLINE void fastloss_store_##tag(uint16_t *array, fastloss_index i, double value) \
    {                                                                                         \
        array[i] = from_float(fastloss_double_to_float_odd(value));                           \
    }                                                                                         \
    FASTLOSS_INLINE void fastloss_store_wide_##tag(uint16_t *array, fastloss_index i,        \
                                                   double value)                              \
    {                                                                                         \
        array[i] = from_float(fastloss_double_to_float_odd(value));                           \
    }                                                                                         \
    FASTLOSS_INLINE double fastloss_round_##tag(double value)                                 \
    {                                                                                         \
        return (double)to_float(from_float(fastloss_double_to_float_odd(value)));             \
    }
FASTLOSS_HALF_WIDE_TAG_(bfloat16_wide, fastloss_bfloat16_to_float, fastloss_float_to_bfloat16)
FASTLOSS_HALF_WIDE_TAG_(float16_wide, fastloss_float16_to_float, fastloss_float_to_float16)
#define FASTLOSS_STORAGE_IS_COMPUTE_bfloat16_wide 0
#define FASTLOSS_STORAGE_IS_COMPUTE_float16_wide 0

/* Names of a storage tag's pieces (the tag is a macro argument, expanded first). */
#define FASTLOSS_STORAGE_T(tag) FASTLOSS_STORAGE_PASTE_(fastloss_storage_, tag)
#define FASTLOSS_COMPUTE_T(tag) FASTLOSS_STORAGE_PASTE_(fastloss_compute_, tag)
#define FASTLOSS_GRAD_T(tag) FASTLOSS_STORAGE_PASTE_(fastloss_grad_, tag)
#define FASTLOSS_AUX_T(tag) FASTLOSS_STORAGE_PASTE_(fastloss_aux_, tag)
#define FASTLOSS_AUX_LOAD(tag, array, i) \
    FASTLOSS_STORAGE_PASTE_(fastloss_aux_load_, tag)((array), (i))
#define FASTLOSS_LOAD(tag, array, i) FASTLOSS_STORAGE_PASTE_(fastloss_load_, tag)((array), (i))
#define FASTLOSS_STORE(tag, array, i, value) \
    FASTLOSS_STORAGE_PASTE_(fastloss_store_, tag)((array), (i), (value))
/* the half tags only: STORE of a value the caller knows is not NaN */
#define FASTLOSS_STORE_NOT_NAN(tag, array, i, value) \
    FASTLOSS_STORAGE_PASTE_(fastloss_store_not_nan_, tag)((array), (i), (value))
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
