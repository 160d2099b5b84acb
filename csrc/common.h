/*
 * common.h -- what every fastloss kernel family shares: the index type, the
 * restrict qualifier, the reduction enum, the fixed-order sum, and the OpenMP
 * shims.  Plain C99; no Python, no NumPy.
 */
#ifndef FASTLOSS_COMMON_H
#define FASTLOSS_COMMON_H

#include <stddef.h>
#include <stdint.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(_MSC_VER)
#define FASTLOSS_RESTRICT __restrict
#else
#define FASTLOSS_RESTRICT restrict
#endif

/* Every FASTLOSS_INLINE function is inlined, so that a loop's mode arguments are constants
 * in its body.  The sanitizers' build (setup.py) defines FASTLOSS_NO_FORCED_INLINE: the same
 * code with the compiler's own choice of what to inline, which compiles vocab.c's
 * instantiations ten times faster there (16 s against 156 s at -O1). */
#if (defined(__GNUC__) || defined(__clang__)) && !defined(FASTLOSS_NO_FORCED_INLINE)
#define FASTLOSS_INLINE static inline __attribute__((always_inline))
#else
#define FASTLOSS_INLINE static inline
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Every size, stride and index is 64-bit: arrays above 2**31 elements work. */
typedef int64_t fastloss_index;

enum fastloss_reduction {
    FASTLOSS_REDUCTION_NONE = 0,
    FASTLOSS_REDUCTION_SUM = 1,
    FASTLOSS_REDUCTION_MEAN = 2
};

/* Status codes returned by kernels that can fail: allocation, a class index
 * found out of range by the kernel's own scan of the targets, and a dtype code
 * (storage.h) the entry point has no kernel for. */
enum fastloss_status {
    FASTLOSS_OK = 0,
    FASTLOSS_ERROR_NO_MEMORY = 1,
    FASTLOSS_ERROR_BAD_TARGET = 2,
    FASTLOSS_ERROR_BAD_DTYPE = 3
};

/*
 * Independent double accumulators of a sum: 8 lanes make one AVX2 vector of
 * float32 converted to double twice (one AVX-512 vector of double), and fix the
 * summation order for every ISA.  A sum adds element k to lane k % 8 and
 * combines the lanes pairwise, in this order, whatever the ISA.
 */
#define FASTLOSS_LANES 8

static inline double fastloss_lanes_total(const double *lane)
{
    return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

/*
 * Rows summed into one double before block partials are combined.  The
 * number of blocks depends on the number of rows alone, never on the thread
 * count, so every reduction gives the same bits for any num_threads.
 */
#define FASTLOSS_REDUCTION_BLOCK 256

/*
 * The work of a parallel loop is handed out in claims.  Where each item's result
 * (a row's, a block's) is stored apart and the results are combined in item order
 * after the loop, the items go `fastloss_claim_items(...)` at a time to whichever
 * thread asks next (schedule(dynamic, claim), or fastloss_claim_next), not in fixed shares: on a
 * machine shared with other work, a thread that another process slows then leaves
 * its items to the others.  Which thread computes an item changes no bit.  A claim
 * is 1 / FASTLOSS_CLAIMS_PER_THREAD of a thread's share: few claims, so that each
 * thread still reads long runs (and prefetches ahead within them), enough that the
 * threads finish together.  One thread takes every item in one claim.  Measured
 * (AMD EPYC Zen 4, 2 threads pinned with OMP_PROC_BIND=true, another process busy
 * on one of the two cores; medians): token_log_probs with entropy, 4096 x 50257
 * float32, 162 -> 70 ms; huber value_and_grad on 2**25 float32, 49 -> 32 ms.  The
 * quiet machine: the same times, and the same CPU time on one thread.
 */
#define FASTLOSS_CLAIMS_PER_THREAD 16

/* The next claim of `claim` items of n_items from the counter *next, which the
 * threads share: [*begin, *end), or 0 when every item is claimed.  An atomic add,
 * no OpenMP call (one thread takes its one claim without waking libgomp). */
static inline int fastloss_claim_next(fastloss_index *next, fastloss_index claim,
                                      fastloss_index n_items, fastloss_index *begin,
                                      fastloss_index *end)
{
    fastloss_index first;
#if defined(__GNUC__) || defined(__clang__)
    first = __atomic_fetch_add(next, claim, __ATOMIC_RELAXED);
#else
#pragma omp critical(fastloss_claim)
    {
        first = *next;
        *next += claim;
    }
#endif
    if (first >= n_items)
        return 0;
    *begin = first;
    *end = n_items - first < claim ? n_items : first + claim;
    return 1;
}

/* Items per claim, for n_items over `threads` threads: at least one. */
static inline fastloss_index fastloss_claim_items(fastloss_index n_items, int threads)
{
    if (threads <= 1)
        return n_items > 1 ? n_items : 1;
    const fastloss_index items = n_items / ((fastloss_index)FASTLOSS_CLAIMS_PER_THREAD * threads);
    return items > 1 ? items : 1;
}

/*
 * Far rows.  A softmax row read in float whose largest class leads every other by far,
 * so that the others' share of S = sum_c exp(a_c) is below this bound, (n - 1) 2**-36
 * for n classes, is computed again in double from its logits (cross_entropy_body.h:
 * CE_FAR_ROWS; cross_entropy_small_body.h; vocab_body.h: tlp_far_row).  In float each
 * term exp(a_c) carried the relative error |a_c| u of a_c = (x_c - M) / T rounded to
 * float (and beyond 87.3 nats float's exp gives 0); the row's loss, log-probability,
 * entropy and the target's gradient, all about that share, carry their mean weighted by
 * the terms: at most log((n - 1) S / others) u, which the bound keeps below 25 u
 * (1.5e-6), inside the contract's 2e-6 (70 nats: 3.1e-6 without it,
 * tests/test_fuzz_findings.py).
 */
static inline double fastloss_far_row_bound(fastloss_index n_classes)
{
    return (double)(n_classes > 1 ? n_classes - 1 : 0) * 0x1p-36;
}

/*
 * Sum of values[0..n) in a fixed order: each block of FASTLOSS_REDUCTION_BLOCK
 * values is summed left to right, then the block sums are added left to right.
 * Two levels keep the rounding error near O((B + n / B) eps) instead of O(n eps).
 */
double fastloss_sum_float64(const double *values, fastloss_index n);

/*
 * Large output buffers (gradients the Python API allocates): a fresh N x C
 * buffer costs a page fault per 4 KiB page at its first touch, about as much
 * as a copy of the logits.  fastloss_alloc_large maps `bytes` aligned to 2 MiB
 * and advises transparent huge pages (Linux, where the OS allows them; they
 * cut the faults 512-fold), so the kernel that writes the buffer first touches
 * it, from its own threads.  Elsewhere, or if mapping fails, it falls back to
 * malloc.  NULL when out of memory; *mapped says which it was, and
 * fastloss_free_large(pointer, bytes, mapped) gives it back; *huge_pages (may
 * be NULL) says whether the huge-page advice was taken.
 */
void *fastloss_alloc_large(size_t bytes, int *mapped, int *huge_pages);
void fastloss_free_large(void *pointer, size_t bytes, int mapped);

/* Threads: the parallel regions use this many (1 when built without OpenMP). */
int fastloss_effective_threads(int requested, fastloss_index work);

/* Build and run-time facts for show_config(). */
int fastloss_openmp_enabled(void);
int fastloss_openmp_max_threads(void);
const char *fastloss_compiler(void);

/*
 * SIMD path: the kernels are compiled three times, for the baseline ISA, for
 * AVX2 + FMA and for AVX-512, and the widest one the CPU (and OS) supports is
 * picked at run time.  fastloss_simd_level() returns it (never a level this
 * build lacks), fastloss_simd_path() its name; fastloss_set_simd_path()
 * forces one ("baseline", "avx2", "avx512") and returns 0, or -1 when the CPU
 * or the build cannot run it.  Call it only while no kernel runs.
 */
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#ifndef FASTLOSS_NO_AVX2
#define FASTLOSS_HAVE_AVX2 1
#endif
#ifndef FASTLOSS_NO_AVX512
#define FASTLOSS_HAVE_AVX512 1
#endif
#endif

enum fastloss_simd {
    FASTLOSS_SIMD_BASELINE = 0,
    FASTLOSS_SIMD_AVX2 = 1,
    FASTLOSS_SIMD_AVX512 = 2
};
int fastloss_simd_level(void);
const char *fastloss_simd_path(void);
int fastloss_set_simd_path(const char *name);

/*
 * Dispatch is a table, filled once: each family keeps its kernels as function
 * pointers (FASTLOSS_PICK below gives the widest of a kernel's builds that the
 * level allows), and fastloss_select_kernels(level) refills every family's
 * table.  It runs when the library loads (a constructor, where the compiler
 * has them), at the first fastloss_simd_level() otherwise, and again from
 * fastloss_set_simd_path; the entry points then call through their table, with
 * no level test.  (dispatch.c knows the families.)
 */
void fastloss_select_kernels(int level);

#ifdef FASTLOSS_HAVE_AVX512
#define FASTLOSS_PICK_AVX512(name, level) (level) >= FASTLOSS_SIMD_AVX512 ? name##_avx512 :
#else
#define FASTLOSS_PICK_AVX512(name, level)
#endif
#ifdef FASTLOSS_HAVE_AVX2
#define FASTLOSS_PICK_AVX2(name, level) (level) >= FASTLOSS_SIMD_AVX2 ? name##_avx2 :
#else
#define FASTLOSS_PICK_AVX2(name, level)
#endif
#define FASTLOSS_PICK(name, level) \
    (FASTLOSS_PICK_AVX512(name, level) FASTLOSS_PICK_AVX2(name, level) name##_baseline)

#ifdef __cplusplus
}
#endif

#endif /* FASTLOSS_COMMON_H */
