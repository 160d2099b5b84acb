/*
 * common.c -- the fixed-order sum, thread-count policy, build facts, and the
 * run-time choice of SIMD path shared by every kernel family.
 */
#include <string.h>

#include "common.h"

double fastloss_sum_float64(const double *values, fastloss_index n)
{
    double total = 0.0;
    for (fastloss_index start = 0; start < n; start += FASTLOSS_REDUCTION_BLOCK) {
        const fastloss_index end = start + FASTLOSS_REDUCTION_BLOCK < n ? start + FASTLOSS_REDUCTION_BLOCK : n;
        double block = 0.0;
        for (fastloss_index i = start; i < end; ++i)
            block += values[i];
        total += block;
    }
    return total;
}

/*
 * Below this many elements a call runs on one thread: waking a team costs a
 * few microseconds, about what one thread needs for 2**15 elements of
 * cross-entropy (benchmarks/bench_cross_entropy.py, the small-shape rows).
 */
#define FASTLOSS_PARALLEL_MIN_WORK ((fastloss_index)1 << 15)

int fastloss_effective_threads(int requested, fastloss_index work)
{
#ifdef _OPENMP
    if (requested < 1 || work < FASTLOSS_PARALLEL_MIN_WORK)
        return 1;
    return requested;
#else
    (void)requested;
    (void)work;
    return 1;
#endif
}

int fastloss_openmp_enabled(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int fastloss_openmp_max_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

const char *fastloss_compiler(void)
{
#if defined(__clang__)
    return "clang " __clang_version__;
#elif defined(__GNUC__)
    return "gcc " __VERSION__;
#elif defined(_MSC_VER)
    return "msvc";
#else
    return "unknown C compiler";
#endif
}

/* -1: not decided yet; 0: baseline; 1: AVX2 + FMA. */
static int simd_choice = -1;

static int cpu_has_avx2_fma(void)
{
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(FASTLOSS_NO_AVX2)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

int fastloss_simd_use_avx2(void)
{
    /* Benign race: every thread that finds -1 computes the same answer. */
    if (simd_choice < 0)
        simd_choice = cpu_has_avx2_fma();
    return simd_choice;
}

const char *fastloss_simd_path(void)
{
    return fastloss_simd_use_avx2() ? "avx2+fma" : "baseline";
}

int fastloss_set_simd_path(const char *name)
{
    if (strcmp(name, "baseline") == 0) {
        simd_choice = 0;
        return 0;
    }
    if ((strcmp(name, "avx2") == 0 || strcmp(name, "avx2+fma") == 0) && cpu_has_avx2_fma()) {
        simd_choice = 1;
        return 0;
    }
    return -1;
}
