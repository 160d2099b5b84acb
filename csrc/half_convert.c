/*
 * half_convert.c -- the array conversions of half_convert.h, built for the baseline
 * ISA, AVX2 and AVX-512 like the kernels, and called on the path the kernels run.
 */
#include "half_convert.h"

#include "fastmath.h"
#include "storage.h"

#define FASTLOSS_ISA baseline
#include "half_convert_body.h"
#undef FASTLOSS_ISA

#ifdef FASTLOSS_HAVE_AVX2
#include "isa_avx2_begin.h"
#include "half_convert_body.h"
#include "isa_end.h"
#endif

#ifdef FASTLOSS_HAVE_AVX512
#include "isa_avx512_begin.h"
#include "half_convert_body.h"
#include "isa_end.h"
#endif

static int half_code(int dtype)
{
    return dtype == FASTLOSS_BFLOAT16 || dtype == FASTLOSS_FLOAT16;
}

#ifdef FASTLOSS_HAVE_AVX512
#define HC_AVX512(name, args) \
    if (level >= FASTLOSS_SIMD_AVX512) \
        return name##_avx512 args;
#else
#define HC_AVX512(name, args)
#endif
#ifdef FASTLOSS_HAVE_AVX2
#define HC_AVX2(name, args) \
    if (level >= FASTLOSS_SIMD_AVX2) \
        return name##_avx2 args;
#else
#define HC_AVX2(name, args)
#endif
#define HC_CALL(name, args)                 \
    do {                                    \
        const int level = fastloss_simd_level(); \
        (void)level;                        \
        HC_AVX512(name, args)               \
        HC_AVX2(name, args)                 \
        return name##_baseline args;        \
    } while (0)

int fastloss_half_load(int dtype, const uint16_t *in, float *out, fastloss_index n)
{
    if (!half_code(dtype))
        return FASTLOSS_ERROR_BAD_DTYPE;
    HC_CALL(hc_load, (dtype, in, out, n));
}

int fastloss_half_store(int dtype, const float *in, uint16_t *out, fastloss_index n)
{
    if (!half_code(dtype))
        return FASTLOSS_ERROR_BAD_DTYPE;
    HC_CALL(hc_store, (dtype, in, out, n));
}

int fastloss_half_store_wide(int dtype, const double *in, uint16_t *out, fastloss_index n)
{
    if (!half_code(dtype))
        return FASTLOSS_ERROR_BAD_DTYPE;
    HC_CALL(hc_store_wide, (dtype, in, out, n));
}

int fastloss_half_exp(const float *in, float *out, fastloss_index n, int nonpositive)
{
    HC_CALL(hc_exp, (in, out, n, nonpositive));
}

int fastloss_fast_exp(const float *in, float *out, fastloss_index n, int nonpositive)
{
    HC_CALL(hc_fast_exp, (in, out, n, nonpositive));
}

int fastloss_fast_exp_double(const double *in, double *out, fastloss_index n, int nonpositive)
{
    HC_CALL(hc_fast_exp_double, (in, out, n, nonpositive));
}
