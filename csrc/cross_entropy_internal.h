/*
 * cross_entropy_internal.h -- types shared by the generic bodies of
 * cross_entropy.c; not part of the public C interface.
 */
#ifndef FASTLOSS_CROSS_ENTROPY_INTERNAL_H
#define FASTLOSS_CROSS_ENTROPY_INTERNAL_H

#include <math.h>

#include "cross_entropy.h"
#include "fastmath.h"
#include "storage.h"

/*
 * Classes per chunk.  A row is processed one chunk at a time: a max pass, then
 * an exp pass that finds the chunk still in L1 (2048 float32 = 8 KiB, float64 =
 * 16 KiB, against 32 KiB of L1d on the machines we target).  Chunks also make
 * the per-row log-sum-exp a merge of per-chunk (max, sum) pairs, the form that
 * a vocabulary split across blocks or ranks needs.  (Sized from the L1 capacity;
 * no chunk-size sweep has been recorded yet.)
 */
#ifndef FASTLOSS_CE_CHUNK
#define FASTLOSS_CE_CHUNK 2048
#endif

/*
 * Classes per sub-chunk of the forward's single read of a row (ce_row_stats_online):
 * the first sub-chunk of a row is read by a max pass alone, so it is short; shorter
 * still adds per-sub-chunk overhead (a max merge, a sum of lanes).  At most
 * FASTLOSS_CE_CHUNK (its exps go in the chunk's tile), and a multiple of 64.
 * Measured (N=4096, C=50257 float32, one thread, a loaded machine, least of 9): 512
 * against 256, 1024 and 2048 (the last two also for prefetched blocks only), the
 * whole rows within 5% of each other, 16 blocks 1.11-1.20x the whole rows with 512,
 * 1.31-1.46x with 1024 or 2048.
 */
#ifndef FASTLOSS_CE_ONLINE_CHUNK
#define FASTLOSS_CE_ONLINE_CHUNK 512
#endif
/*
 * The forward prefetches the classes CE_PREFETCH_DISTANCE bytes ahead of those it
 * reads, at most a row (then the next row's same classes), for rows that are not
 * contiguous in memory (a block of classes: each of its rows would start a new
 * stream for the hardware prefetcher to find, which costs more than a sixth of a
 * block of 3141 float32) or are at most that long; a long contiguous row streams in
 * on its own.  Measured (N=4096, C=50257 float32, 16 blocks, one thread): a row
 * ahead beat 4 and 16 KiB ahead; 8 KiB ahead was within the noise of a row ahead
 * (better for 16 blocks, worse for 4).
 */
/* __builtin_prefetch's locality: 3, into L1 (1, into L2 only, made 16 blocks 1.8x the
 * whole rows instead of 1.36x: one thread, the same run) */
#ifndef CE_PREFETCH_LOCALITY
#define CE_PREFETCH_LOCALITY 3
#endif
/*
 * The locality of the forward's prefetches ahead (ce_row_stats_online: the rows of a
 * block of classes, and short rows): 2 (prefetcht1 on x86).  On a Zen 4 the
 * prefetcht0 of a block's next rows stalled the loop (perf: 15% of 16 blocks' time at
 * the prefetches' bursts, 6% at the loads they were to serve); with
 * prefetcht1 the rows wait in L2 and the L1's own prefetcher brings them on.  Measured
 * (N=4096, C=50257 float32, one thread, CPU time, AVX-512, load 4-9, least of 5, four
 * runs each): 16 blocks 1.43-1.51x the whole rows with 3, 1.20-1.24x with 2, 1.22 with
 * 1, 1.40 with 0; 4 blocks 1.14-1.19x with 3, 1.03-1.06x with 2.  Prefetching only
 * every 2nd, 4th or 16th line (the hardware prefetcher to fill in) was slower than
 * every line (16 blocks 1.59-1.73x), and so were the prefetches spread through the
 * exp loop in blocks of 32-128 classes (1.25-1.57x).
 */
#ifndef CE_PREFETCH_AHEAD_LOCALITY
#define CE_PREFETCH_AHEAD_LOCALITY 2
#endif
/* ... for rows of at least this many bytes; shorter rows keep CE_PREFETCH_LOCALITY: 2
 * blocks of 50 classes (200 bytes a row, N=262144) took 35.0 -> 39.9 ms with 2 (one
 * thread, Zen 4), where blocks of 500 classes (2000 bytes) took 44.8 -> 39.9 ms.  (The
 * bound between them is not measured.) */
#ifndef CE_PREFETCH_AHEAD_L2_BYTES
#define CE_PREFETCH_AHEAD_L2_BYTES 1024
#endif

/* __builtin_prefetch of `p` for reading with a locality that may be a variable (the
 * builtin takes only a constant): folded to one instruction where it is inlined. */
FASTLOSS_INLINE void ce_prefetch_line(const void *p, int locality)
{
    if (locality >= 3)
        __builtin_prefetch(p, 0, 3);
    else if (locality == 2)
        __builtin_prefetch(p, 0, 2);
    else if (locality == 1)
        __builtin_prefetch(p, 0, 1);
    else
        __builtin_prefetch(p, 0, 0);
}
/* The rows ahead that the forward prefetches: CE_PREFETCH_DISTANCE bytes of rows, at
 * least one and at most CE_PREFETCH_MAX_ROWS.  Measured (N=4096, C=50257 float32, one
 * thread, CPU time, load 8-14, two runs each): 16 blocks 1.40-1.42x the whole rows two
 * rows ahead against 1.50-1.57x one row ahead and 1.48-1.54x four rows ahead. */
#ifndef CE_PREFETCH_MAX_ROWS
#define CE_PREFETCH_MAX_ROWS 2
#endif
#ifndef CE_PREFETCH_DISTANCE
#define CE_PREFETCH_DISTANCE 65536
#endif
/*
 * A sub-chunk's prefetches go in two parts: CE_PREFETCH_BEFORE quarters of them before
 * its exps, the rest before the sum of the exps.  A sub-chunk's 32 lines (float32) asked
 * for at once, before its exps, left the block's rows waiting on memory: measured
 * (N=4096, C=50257 float32, one thread, CPU time, load 10-20, least of 4, two runs
 * each), 16 blocks 1.14-1.16x the whole rows in halves, 1.21-1.24x with two thirds
 * before the exps, 1.46-1.51x all before them; 4 blocks 1.01-1.02x in halves against
 * 1.12-1.14x.
 */
#ifndef CE_PREFETCH_BEFORE
#define CE_PREFETCH_BEFORE 2
#endif
/*
 * 1: the forward's rows prefetched ahead into L2 (CE_PREFETCH_AHEAD_L2_BYTES) that are not
 * contiguous in memory (a block of classes) also bring the next row's first sub-chunk
 * into L1 (prefetcht0) at the start of the current row, so that the max pass that reads
 * it alone (ce_row_stats_online) does not wait on L2 at every row's start; 0: not.
 * Measured (N=4096, C=50257 float32, 16 blocks, one thread, CPU time, AVX-512, Zen 4):
 * issued before the row's last exps, with a C driver (load 3-9, least of 7, five runs
 * alternated), 83.1-86.8 ms without, 76.0-79.9 ms with (the forward about 67-70 ms), and
 * one sub-chunk earlier 76.4-78.6 ms; but inside the sub-chunk loop it seemed to slow the
 * C=1000 forward (Python, 54.5 -> 56.6-59.0 ms, not confirmed later), so it is issued
 * before the loop: through Python (load 3, least of 5, two runs), 16 blocks 89.5-91.2 ->
 * 82.0-82.8 ms (1.31-1.32x -> 1.19-1.21x the forward), 4 blocks 73.1-74.0 -> 75.2-75.8
 * ms (within the noise?), 2 blocks of 500 classes (N=131072) 85.1-89.1 -> 75.0-76.1 ms,
 * the C=1000 and C=8192 forwards unchanged.  Prefetching (into L2) only the first 0, 8 or
 * 32 lines of the rows ahead instead of all of them: 16 blocks 119-183 ms (C driver).
 */
#ifndef CE_PREFETCH_NEXT_START
#define CE_PREFETCH_NEXT_START 1
#endif
/*
 * The fused statistics pass of the half rows (their exps in a private row) issues a
 * chunk's prefetches (the next row's logits, the gradient row's lines) between blocks
 * of CE_PREFETCH_BLOCK pairs of classes of its exp loop (ce_exp_next_max), not all
 * before it: a chunk's 64 lines of each, asked for at once, stalled the loop behind
 * them (perf: 16% of the statistics pass at the touch of the gradient row, 12% at the
 * prefetch ahead).  Measured (bfloat16, N=512, C=50257, one thread, AVX-512, CPU time,
 * Zen 4, load 7-9, least of 5): value_and_grad (out=) 15.4-15.8 ms all at once, 14.6 ms
 * in blocks of 16 pairs, 12.9 of 32, 12.1-12.4 of 64, 12.3-12.7 of 128, 13.9 of 256,
 * 15.0-15.3 with neither prefetch; in place 12.9 -> 10.8 ms (blocks of 64).
 */
#ifndef CE_PREFETCH_BLOCK
#define CE_PREFETCH_BLOCK 64
#endif
#if FASTLOSS_CE_ONLINE_CHUNK > FASTLOSS_CE_CHUNK || FASTLOSS_CE_ONLINE_CHUNK % 64 != 0
#error "FASTLOSS_CE_ONLINE_CHUNK must be a multiple of 64, at most FASTLOSS_CE_CHUNK"
#endif

/*
 * Rows with at most CE_SMALL_MAX_CLASSES classes are computed CE_SMALL_ROWS at
 * a time, one row per SIMD lane (cross_entropy_small_body.h): 16 lanes are one
 * AVX-512 vector of float32.  The bound is where the per-row path, which
 * vectorises along the classes, catches up (benchmarks/sweep_ce_small.py).
 */
#define CE_SMALL_ROWS 16
#ifndef CE_SMALL_MAX_CLASSES
#define CE_SMALL_MAX_CLASSES 64
#endif

/* Per-chunk statistics kept while a row is processed (CE_CHUNK_FIELDS doubles each). */
enum {
    CE_CHUNK_SHIFT = 0,  /* value subtracted before exp: the chunk max, or 0 if that is -inf */
    CE_CHUNK_MAX = 1,    /* the chunk max (NaN is skipped; -inf if the chunk has no finite value) */
    CE_CHUNK_SUM = 2,    /* sum_c exp(y_c - shift) */
    CE_CHUNK_DIST = 3,   /* sum_c u_c (shift - y_c), u the smoothing / soft-target weights */
    CE_CHUNK_MASS = 4,   /* sum_c u_c */
    CE_CHUNK_FIELDS = 5
};

/* What every row of one call shares; set up once before the parallel loop. */
typedef struct ce_call {
    fastloss_index n_classes;          /* of the rows (or blocks) read */
    fastloss_index total_classes;      /* C of the loss (the whole rows) */
    fastloss_index n_chunks;
    fastloss_index ignore_index;
    int soft;                          /* soft (probability) targets */
    int reduction;
    double smoothing;                  /* epsilon */
    double z_loss;
    double softcap;                    /* 0: off */
    double weight_total;               /* W = sum_c w_c (n_classes without weights) of the
                                          rows read (the loss takes the row's W from its
                                          statistics' mass) */
    const double *chunk_weight_sum;    /* W_k per chunk, hard targets with smoothing */
    const double *online_weight_sum;   /* the same per sub-chunk of the forward's single
                                          read (FASTLOSS_CE_ONLINE_CHUNK classes) */
    int stats_only;                    /* a block's statistics: no log S needed */
    int ahead_to_l2;                   /* the forward's prefetches ahead with
                                          CE_PREFETCH_AHEAD_LOCALITY (rows of at least
                                          CE_PREFETCH_AHEAD_L2_BYTES), else
                                          CE_PREFETCH_LOCALITY */
    double far_bound;                  /* a row whose others' share of S is below this
                                          (common.h: fastloss_far_row_bound) is far
                                          beyond them: computed again in double where
                                          it was read in float (CE_FAR_ROWS) */
    double q_scale, q_offset;          /* soft: q' = q_scale * q + q_offset */
    double ce_factor, z_factor;        /* 1 / denominator for mean, 1 otherwise */
    const double *grad_output;
    fastloss_index grad_output_stride;
} ce_call;

/* Per-row results of the statistics pass. */
typedef struct ce_row_stats {
    double max;      /* M, the largest chunk max */
    double sum;      /* S = sum_c exp(y_c - M) */
    double log_sum;  /* log S */
    double dist;     /* A = sum_c u_c (M - y_c) */
    double mass;     /* U = sum_c u_c */
    double excl;     /* S without the hard target's term, so that 1 - p_t = excl / S
                        (p_t - 1 from a rounded p_t keeps one ulp of 1: nothing of a
                        converged row's -1e-12) */
} ce_row_stats;

/* Per-row coefficients of the loss and its gradient (see cross_entropy.c). */
typedef struct ce_row_coef {
    double ce;     /* the row's cross-entropy (weighted, smoothed) */
    double z_term; /* z_loss * lse**2 */
    double lse;
    double max;      /* M and 1 / S of the row (fused path) */
    double inv_sum;
    double complement; /* 1 - p_t of the hard target, = excl / S */
    double p_target;   /* p_t itself, exp(y_t - lse): exact where p_t is small */
    double alpha;  /* multiplies softmax_c: the cross-entropy part */
    double alpha_z; /* multiplies softmax_c: the z-loss part, added last (see ce_row_grad) */
    double gamma;  /* multiplies u_c */
    double ce_scale; /* grad_output times the mean's factor, for the target class */
    double weight_total; /* W of the row (hard targets with smoothing) */
} ce_row_coef;

/*
 * The merge of statistics, written once: a record (max m, sum, sum without the
 * target, dist, mass; sums relative to the shift m, or 0 when m is -inf) rebased onto
 * M >= m.  ce_row_stats merges a row's chunks with it, the block merge its blocks.  A
 * record with no finite value keeps its sums (relative to 0, they hold no exp), and
 * the record of the max itself is multiplied by exactly 1.  dist is rebased only when
 * need_dist (otherwise 0, and (M - m) * 0 would be NaN for M = +inf).  Branch-free,
 * with the vectorisable exp of fastmath.h, so that the block merge runs it across
 * rows as vectors (libm's exp, one opaque call per block and row, was most of the
 * merge's time).
 */
static inline void ce_rebase(double m, double new_max, int need_dist, double mass,
                             double *sum, double *sum_others, double *dist)
{
    const int empty = m == -INFINITY;
    const double factor = fastloss_exp_nonpositive(m - new_max); /* (unused when kept) */
    const double rescale = (empty | (m == new_max)) ? 1.0 : factor;
    *sum *= rescale;
    *sum_others *= rescale;
    if (need_dist)
        *dist += empty ? 0.0 : (new_max - m) * mass;
}

/* The largest of the maxima, NaN skipped (as ce_max skips it: a NaN reaches the sums). */
static inline double ce_max_merge(double acc, double m)
{
    return m > acc ? m : acc;
}

/*
 * One generic runner per (storage type, ISA), in cross_entropy_impl.h: forward
 * when grad is NULL, backward from a known lse when lse_in is given, fused
 * otherwise.  The arrays of the storage type (logits, soft_target, weight,
 * grad) are `void *`, so that every runner has this one signature and
 * cross_entropy.c keeps them in a table indexed by [enum fastloss_dtype].
 */
#define FASTLOSS_CE_RUN_SIGNATURE                                                            \
    (int block_mode, const double *stats_in, double *stats_out,                              \
     const fastloss_ce_options *options, const void *logits_data,                            \
     fastloss_index logits_row_stride, const int64_t *target, const void *soft_target_data,  \
     fastloss_index soft_target_row_stride, const void *weight_data, const double *lse_in,   \
     const double *grad_output, fastloss_index grad_output_stride, double *loss_per_row,     \
     double *lse_out, double *loss, void *grad_data, fastloss_index grad_row_stride)
typedef int(*fastloss_ce_run) FASTLOSS_CE_RUN_SIGNATURE;

/* The runners' modes: rows whole, or a block (its statistics, or its gradient from
 * merged statistics). */
enum { CE_MODE_ROWS = 0, CE_MODE_BLOCK_STATS = 1, CE_MODE_BLOCK_GRAD = 2 };

#define FASTLOSS_CE_RUN_NAME_(storage, isa) fastloss_ce_run_##storage##_##isa
#define FASTLOSS_CE_RUN_NAME(storage, isa) FASTLOSS_CE_RUN_NAME_(storage, isa)

void fastloss_cross_entropy_select(int level); /* dispatch.c calls it */
int fastloss_ce_run_float32_baseline FASTLOSS_CE_RUN_SIGNATURE;
int fastloss_ce_run_float64_baseline FASTLOSS_CE_RUN_SIGNATURE;
int fastloss_ce_run_float32_avx2 FASTLOSS_CE_RUN_SIGNATURE;
int fastloss_ce_run_float64_avx2 FASTLOSS_CE_RUN_SIGNATURE;
int fastloss_ce_run_float32_avx512 FASTLOSS_CE_RUN_SIGNATURE;
int fastloss_ce_run_float64_avx512 FASTLOSS_CE_RUN_SIGNATURE;
int fastloss_ce_run_bfloat16_baseline FASTLOSS_CE_RUN_SIGNATURE;
int fastloss_ce_run_float16_baseline FASTLOSS_CE_RUN_SIGNATURE;
int fastloss_ce_run_bfloat16_grad32_baseline FASTLOSS_CE_RUN_SIGNATURE;
int fastloss_ce_run_float16_grad32_baseline FASTLOSS_CE_RUN_SIGNATURE;
int fastloss_ce_run_bfloat16_avx2 FASTLOSS_CE_RUN_SIGNATURE;
int fastloss_ce_run_float16_avx2 FASTLOSS_CE_RUN_SIGNATURE;
int fastloss_ce_run_bfloat16_grad32_avx2 FASTLOSS_CE_RUN_SIGNATURE;
int fastloss_ce_run_float16_grad32_avx2 FASTLOSS_CE_RUN_SIGNATURE;
int fastloss_ce_run_bfloat16_avx512 FASTLOSS_CE_RUN_SIGNATURE;
int fastloss_ce_run_float16_avx512 FASTLOSS_CE_RUN_SIGNATURE;
int fastloss_ce_run_bfloat16_grad32_avx512 FASTLOSS_CE_RUN_SIGNATURE;
int fastloss_ce_run_float16_grad32_avx512 FASTLOSS_CE_RUN_SIGNATURE;

#endif /* FASTLOSS_CROSS_ENTROPY_INTERNAL_H */
