/*
 * common.c -- the fixed-order sum, thread-count policy, build facts, and the
 * run-time choice of SIMD path shared by every kernel family.
 */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE /* MADV_HUGEPAGE */
#endif
#include <stdlib.h>
#include <string.h>

#include "common.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

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
    if (simd_choice < 0) {
        simd_choice = detect_simd_level();
        fastloss_select_kernels(simd_choice);
    }
    return simd_choice;
}

#if defined(__GNUC__) || defined(__clang__)
/* Detect and fill the dispatch tables when the library loads, before any call. */
__attribute__((constructor)) static void fastloss_choose_at_load(void)
{
    (void)fastloss_simd_level();
}
#endif

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
            fastloss_select_kernels(level);
            return 0;
        }
    }
    return -1;
}

/*
 * Large buffers.  mmap gives fresh zero pages whatever the size (no memory
 * from malloc's free lists to fault in again); the mapping is made 2 MiB
 * larger than needed and trimmed to a 2 MiB-aligned range, so that every huge
 * page of it can be backed by one.  MADV_HUGEPAGE matters where the system's
 * THP setting is "madvise" (the default of many distributions); with "always"
 * it changes nothing, with "never" it fails and the buffer keeps 4 KiB pages.
 */
#define FASTLOSS_HUGE_PAGE ((size_t)2 << 20)

static size_t large_length(size_t bytes)
{
    return ((bytes ? bytes : 1) + FASTLOSS_HUGE_PAGE - 1) & ~(FASTLOSS_HUGE_PAGE - 1);
}

void *fastloss_alloc_large(size_t bytes, int *mapped, int *huge_pages)
{
    *mapped = 0;
    if (huge_pages)
        *huge_pages = 0;
#if defined(__linux__) && defined(MAP_ANONYMOUS)
    if (bytes <= SIZE_MAX - 2 * FASTLOSS_HUGE_PAGE) {
        const size_t length = large_length(bytes);
        char *raw = mmap(NULL, length + FASTLOSS_HUGE_PAGE, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (raw != MAP_FAILED) {
            char *start = (char *)(((uintptr_t)raw + FASTLOSS_HUGE_PAGE - 1) &
                                   ~(uintptr_t)(FASTLOSS_HUGE_PAGE - 1));
            if (start > raw)
                munmap(raw, (size_t)(start - raw));
            char *end = raw + length + FASTLOSS_HUGE_PAGE;
            if (end > start + length)
                munmap(start + length, (size_t)(end - (start + length)));
#ifdef MADV_HUGEPAGE
            const int advised = madvise(start, length, MADV_HUGEPAGE) == 0;
            if (huge_pages)
                *huge_pages = advised;
#endif
            *mapped = 1;
            return start;
        }
    }
#endif
    return malloc(bytes ? bytes : 1);
}

void fastloss_free_large(void *pointer, size_t bytes, int mapped)
{
    if (!pointer)
        return;
#if defined(__linux__) && defined(MAP_ANONYMOUS)
    if (mapped) {
        munmap(pointer, large_length(bytes));
        return;
    }
#else
    (void)bytes;
    (void)mapped;
#endif
    free(pointer);
}
