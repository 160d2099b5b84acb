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

/* The best level this CPU and build can run (detected once). */
static int detect_simd_level(void)
{
#if defined(FASTLOSS_HAVE_AVX2) || defined(FASTLOSS_HAVE_AVX512)
    __builtin_cpu_init();
#endif
#ifdef FASTLOSS_HAVE_AVX512
    /* __builtin_cpu_supports also checks that the OS saves the zmm state */
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return FASTLOSS_SIMD_AVX512;
#endif
#ifdef FASTLOSS_HAVE_AVX2
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return FASTLOSS_SIMD_AVX2;
#endif
    return FASTLOSS_SIMD_BASELINE;
}

/* -1: not decided yet.  Set at import by the Cython layer (set_simd_path or
 * the first call), before any kernel runs in parallel. */
static int simd_choice = -1;

int fastloss_simd_level(void)
{
    if (simd_choice < 0)
        simd_choice = detect_simd_level();
    return simd_choice;
}

static const char *const simd_names[] = {"baseline", "avx2", "avx512"};

const char *fastloss_simd_path(void)
{
    return simd_names[fastloss_simd_level()];
}

int fastloss_set_simd_path(const char *name)
{
    const int best = detect_simd_level();
    for (int level = FASTLOSS_SIMD_BASELINE; level <= FASTLOSS_SIMD_AVX512; ++level) {
        if (strcmp(name, simd_names[level]) == 0 && level <= best) {
            simd_choice = level;
            return 0;
        }
    }
    return -1;
}
