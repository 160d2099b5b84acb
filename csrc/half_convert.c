/*
 * half_convert.c -- the array conversions of half_convert.h (and the column sums in
 * float64 of an array of any storage type), built for the baseline ISA, AVX2 and
 * AVX-512 like the kernels, and called on the path the kernels run.
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

/* Columns per task of fastloss_column_sums: their float64 sums (8 KiB) stay in L1
 * while the rows stream past. */
#define HC_COLUMN_CHUNK 1024

static int column_sums_chunk(int level, int dtype, const void *x, fastloss_index rows,
                             fastloss_index first, fastloss_index last,
                             fastloss_index row_stride, double *acc)
{
    (void)level;
    HC_AVX512(hc_column_sums, (dtype, x, rows, first, last, row_stride, acc))
    HC_AVX2(hc_column_sums, (dtype, x, rows, first, last, row_stride, acc))
    return hc_column_sums_baseline(dtype, x, rows, first, last, row_stride, acc);
}

int fastloss_column_sums(int dtype, const void *x, fastloss_index rows, fastloss_index cols,
                         fastloss_index row_stride, double *acc, int num_threads)
{
    if (dtype != FASTLOSS_FLOAT32 && dtype != FASTLOSS_FLOAT64 && !half_code(dtype))
        return FASTLOSS_ERROR_BAD_DTYPE;
    const int level = fastloss_simd_level();
    const fastloss_index chunks = (cols + HC_COLUMN_CHUNK - 1) / HC_COLUMN_CHUNK;
    const int threads = fastloss_effective_threads(num_threads, rows * cols);
    (void)threads;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
#endif
    for (fastloss_index k = 0; k < chunks; ++k) {
        const fastloss_index first = k * HC_COLUMN_CHUNK;
        const fastloss_index last = first + HC_COLUMN_CHUNK < cols ? first + HC_COLUMN_CHUNK : cols;
        column_sums_chunk(level, dtype, x, rows, first, last, row_stride, acc);
    }
    return 0;
}
