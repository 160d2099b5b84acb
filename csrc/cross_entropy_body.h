/*
 * cross_entropy_body.h -- the runner for one storage type, written once.  No
 * include guard, on purpose: cross_entropy_impl.h includes it per storage type,
 * between storage_begin.h and storage_end.h (STORE_T, REAL, LOAD, STORE, and
 * GRAD_T / AUX_T for the gradient and the weights and soft targets; see
 * storage.h), with RUN (the runner's name), ROW_SAME(name) (the row routines
 * computing in REAL from the stored logits) and ROW_WIDE(name) (computing in
 * double from the row widened into scratch: soft-capped rows, and float32 rows
 * with soft targets or label smoothing).  Its arrays are `const void *` /
 * `void *` so that every storage type's runner has one signature, the type of
 * the table in cross_entropy.c.
 */

/* What the threads of one call share (set up by RUN, read by RUN_ROWS). */
typedef struct RUN_JOB {
    const ce_call *call;
    int block_mode;                 /* CE_MODE_* */
    fastloss_index class_offset;
    const double *stats_in;         /* CE_MODE_BLOCK_GRAD: the merged statistics */
    double *stats_out;              /* CE_MODE_BLOCK_STATS: the block's statistics */
    const STORE_T *logits;
    fastloss_index logits_row_stride;
    const int64_t *target;
    const AUX_T *soft_target;
    fastloss_index soft_target_row_stride;
    const AUX_T *weight;
    const double *lse_in;
    GRAD_T *grad;
    fastloss_index grad_row_stride;
    fastloss_index n_rows;
    fastloss_index n_units;
    fastloss_index claim;           /* units per claim (common.h) */
    fastloss_index *next_unit;      /* the first unit not yet claimed */
    int small, wide, softcap, backward, private_e;
    int prefetch_rows;              /* the forward prefetches this many rows ahead (0: none) */
    double softcap_value;
    char *thread_scratch;
    size_t per_thread;
    const size_t *scratch_bytes;
    double *row_ce, *row_z, *row_lse;
} RUN_JOB;

/*
 * Far rows (common.h: fastloss_far_row_bound).  A row read in float whose target leads
 * every other class by far, so that the others' share of S (excl / S, the loss log1p of
 * it) is below the bound, is computed again as a wide row, in double from its logits.
 * Never where the exps overwrote the logits (the fused pass in place in float32: the
 * Range section of docs/accuracy.rst); once per row, from a check of its statistics, so
 * that other rows pay one comparison; a block's gradient from merged statistics
 * (CE_MODE_BLOCK_GRAD) knows them first, and goes wide from the start (in place too:
 * linear_cross_entropy's blocks).  (The small blocks take their far rows again
 * themselves: cross_entropy_small_body.h.)
 */
#define CE_FAR_ROWS (sizeof(REAL) == sizeof(float)) /* (#undef at the end) */

/* A thread's far-row scratch (a row widened, then its exps), allocated at its first far
 * row: 0 where malloc fails (the row then keeps its float result). */
FASTLOSS_INLINE int RUN_FAR_SCRATCH(double **far_row, fastloss_index n_classes)
{
    if (!*far_row)
        *far_row = malloc(2 * (size_t)n_classes * sizeof(double));
    return *far_row != NULL;
}

/*
 * The rows of one thread: units (rows, or blocks of CE_SMALL_ROWS rows) claimed
 * job->claim at a time by whichever thread is free (common.h), each thread with
 * its own part of the scratch.  Every row's result is the same whichever thread
 * computes it.
 */
static void RUN_ROWS(const RUN_JOB *job, int thread)
{
    const ce_call *call_ptr = job->call;
    const fastloss_index n_classes = call_ptr->n_classes;
    const fastloss_index n_rows = job->n_rows;
    const fastloss_index n_units = job->n_units, claim = job->claim;
    fastloss_index begin, end; /* the thread's current claim */
    const STORE_T *logits = job->logits;
    const fastloss_index logits_row_stride = job->logits_row_stride;
    const int64_t *target = job->target;
    const AUX_T *soft_target = job->soft_target;
    const fastloss_index soft_target_row_stride = job->soft_target_row_stride;
    const AUX_T *weight = job->weight;
    const double *lse_in = job->lse_in;
    GRAD_T *grad = job->grad;
    const fastloss_index grad_row_stride = job->grad_row_stride;
    const int soft = soft_target != NULL, wide = job->wide, softcap = job->softcap;
    const int backward = job->backward, private_e = job->private_e;
    double *row_ce = job->row_ce, *row_z = job->row_z, *row_lse = job->row_lse;
    char *mine = job->thread_scratch + job->per_thread * (size_t)thread;
    const size_t *scratch_bytes = job->scratch_bytes;
    char *part_start[5];
    for (int part = 0; part < 5; ++part) {
        part_start[part] = scratch_bytes[part] ? mine : NULL;
        mine += (scratch_bytes[part] + 63) / 64 * 64;
    }
    double *chunk_data = (double *)part_start[0];
    double *tile = (double *)part_start[1];
    double *capped = (double *)part_start[2];
    double *slope = capped ? capped + n_classes : NULL;
    double *e_wide = (double *)part_start[3];
    REAL *e_private = (REAL *)part_start[4];
    double *far_row = NULL; /* RUN_FAR_SCRATCH */
    if (job->small) {
        /* the lanes after the tile, 64-byte aligned as the tile's size is a
         * multiple of CE_SMALL_ROWS values */
        double *lanes = (double *)((char *)tile + (size_t)n_classes * CE_SMALL_ROWS * sizeof(REAL));
        while (fastloss_claim_next(job->next_unit, claim, n_units, &begin, &end))
            for (fastloss_index block = begin; block < end; ++block)
                ROW_SAME(ce_small_block)(call_ptr, logits, logits_row_stride, target, weight,
                                         lse_in, grad, grad_row_stride, n_rows,
                                         block * CE_SMALL_ROWS, (REAL *)tile, lanes, row_ce,
                                         row_z, row_lse);
        return;
    }
    const int block_mode = job->block_mode;
    const int prefetch_rows = job->prefetch_rows;
    /* the rows ahead that the statistics prefetch: the forward's, and, for the rows
     * whose exps go to a private row apart from the gradient (the half rows' fused
     * pass), the next row, whose logits the hardware prefetcher alone brought in too
     * late there (perf, bfloat16 fused, one thread: 43% of the statistics pass at the
     * load of the logits; 8.75 -> 7.4-7.8 ms CPU for N=512, C=50257).  Not for float32
     * rows, whose exps are written into the gradient row (9.5 -> 10.4 ms), nor the
     * backward from an lse (7.5 -> 8.1 ms): measured slower.  (Zen 5.  On Zen 4 the
     * half rows gain from it only with the prefetches spread through the exp loop,
     * CE_PREFETCH_BLOCK: bfloat16 N=512 one thread, 12.7 -> 11.2 ms (out=) and
     * 11.7 -> 9.7 ms (in place) spread, 14.1-15.0 -> 14.7-15.7 ms (out=) all at once.) */
    const int ahead_rows = prefetch_rows ? prefetch_rows : (grad && private_e ? 1 : 0);
    const double *stats_in = job->stats_in;
    double *stats_out = job->stats_out;
    while (fastloss_claim_next(job->next_unit, claim, n_units, &begin, &end))
    for (fastloss_index i = begin; i < end; ++i) {
        const STORE_T *x = logits + i * logits_row_stride;
        const AUX_T *q = soft ? soft_target + i * soft_target_row_stride : NULL;
        GRAD_T *g = grad ? grad + i * grad_row_stride : NULL;
        fastloss_index t = -1; /* the hard target's position in the row read, or -1 */
        double target_weight = 1.0, target_logit = 0.0;
        if (!soft) {
            t = target[i];
            if (t == call_ptr->ignore_index) {
                row_ce[i] = 0.0;
                row_z[i] = 0.0;
                row_lse[i] = 0.0;
                if (g)
                    for (fastloss_index c = 0; c < n_classes; ++c)
                        STORE(g, c, (REAL)0);
                if (stats_out) /* the neutral record */
                    for (int f = 0; f < FASTLOSS_CE_STATS_FIELDS; ++f)
                        stats_out[f * n_rows + i] = f == FASTLOSS_CE_STAT_MAX ? -INFINITY
                                                    : f == FASTLOSS_CE_STAT_CLASSES ? (double)n_classes
                                                    : 0.0;
                continue;
            }
            t -= job->class_offset;
            if (t < 0 || t >= n_classes)
                t = -1; /* in another block */
            if (block_mode == CE_MODE_BLOCK_GRAD)
                target_weight = stats_in[FASTLOSS_CE_STAT_TARGET_WEIGHT * n_rows + i];
            else if (t >= 0)
                target_weight = weight ? (double)AUX_LOAD(weight, t) : 1.0;
            else
                target_weight = 0.0;
        }
        ce_row_stats stats = {0.0, 1.0, 0.0, 0.0, 0.0, 0.0};
        ce_row_coef coef = {0.0}; /* (unread for a block's statistics) */
        if (block_mode == CE_MODE_BLOCK_GRAD) {
            /* the whole row's statistics, merged over its blocks */
            stats.max = stats_in[FASTLOSS_CE_STAT_MAX * n_rows + i];
            stats.sum = stats_in[FASTLOSS_CE_STAT_SUM * n_rows + i];
            stats.log_sum = log(stats.sum);
            stats.dist = stats_in[FASTLOSS_CE_STAT_DIST * n_rows + i];
            stats.mass = stats_in[FASTLOSS_CE_STAT_MASS * n_rows + i];
            stats.excl = stats_in[FASTLOSS_CE_STAT_SUM_OTHERS * n_rows + i];
            target_logit = stats_in[FASTLOSS_CE_STAT_TARGET_LOGIT * n_rows + i];
        }
        if (backward && soft)
            stats.mass = ROW_SAME(ce_soft_mass)(q, n_classes, weight, call_ptr->q_scale, call_ptr->q_offset);
        /* a block's gradient from the merged statistics of a far row: the block wide
         * from the start (the logits read before the gradient overwrites them) */
        int wide_row = wide || (CE_FAR_ROWS && block_mode == CE_MODE_BLOCK_GRAD &&
                                __builtin_expect(stats.excl < stats.sum * call_ptr->far_bound, 0) &&
                                RUN_FAR_SCRATCH(&far_row, n_classes));
        if (!wide_row) {
            if (t >= 0 && block_mode != CE_MODE_BLOCK_GRAD)
                target_logit = (double)LOAD(x, t); /* before an in-place pass overwrites it */
            /* the exps: in the gradient row (STORE_T is REAL there: see
             * private_e), or the private row, or one chunk at a time for the
             * forward */
            REAL *e_row = private_e ? e_private : (REAL *)g;
            /* a gradient row apart from the exps (and from the logits) is brought into
             * cache during the exp pass (ce_touch_grad) */
            GRAD_T *touch = private_e && (const void *)g != (const void *)x ? g : NULL;
            const STORE_T *ahead = i + ahead_rows < end && ahead_rows
                                       ? x + ahead_rows * logits_row_stride : NULL;
            /* the row after this one, for the forward's rows prefetched ahead that are not
             * contiguous in memory (a block of classes): a contiguous next row streams in
             * on its own (CE_PREFETCH_NEXT_START) */
            const STORE_T *next = i + 1 < end && prefetch_rows && logits_row_stride != n_classes
                                      ? x + logits_row_stride : NULL;
            if (block_mode == CE_MODE_BLOCK_GRAD)
                ROW_SAME(ce_row_rebased)(call_ptr, x, stats.max, e_row, chunk_data, touch);
            else if (!backward || !ROW_SAME(ce_row_shifted)(call_ptr, x, t, lse_in[i], e_row, chunk_data, touch, &stats))
                ROW_SAME(ce_row_stats)(call_ptr, x, q, weight, t, e_row, (REAL *)tile, chunk_data,
                                       ahead, next, touch, &stats);
            /* a far row, again in double (the logits intact: read apart from the exps) */
            wide_row = CE_FAR_ROWS && block_mode != CE_MODE_BLOCK_GRAD &&
                       __builtin_expect(stats.excl < stats.sum * call_ptr->far_bound, 0) &&
                       (void *)e_row != (void *)x && RUN_FAR_SCRATCH(&far_row, n_classes);
            if (!wide_row) {
                if (block_mode != CE_MODE_BLOCK_STATS)
                    ROW_SAME(ce_coefficients)(call_ptr, &stats, target_logit, target_weight, i,
                                              &coef);
                /* A finite lse leaves every exp finite: in [0, 1] from the chunks' maxima
                 * (a NaN or +inf logit makes the lse NaN), at most S' <= 2 from a given
                 * lse (ce_row_shifted); not so for a block's exps from merged statistics. */
                const int exps_finite = block_mode != CE_MODE_BLOCK_GRAD && isfinite(coef.lse);
                if (g)
                    ROW_SAME(ce_row_grad)(call_ptr, q, weight, t, &coef, e_row, chunk_data,
                                          NULL, exps_finite, g);
            }
        }
        if (wide_row) {
            /* the row widened into scratch: the call's wide rows, or a far row's */
            double *row_y = wide ? capped : far_row;
            double *row_e = wide ? e_wide : g ? far_row + n_classes : NULL;
            if (!softcap) {
                for (fastloss_index c = 0; c < n_classes; ++c)
                    row_y[c] = (double)LOAD(x, c);
            } else {
                /* Gemma 2 soft-capping, y = c tanh(x / c) and dy/dx = sech**2(x / c).
                 * With u = x / c: tanh|u| = -m / (2 + m), m = expm1(-2|u|) (exact
                 * for small |u|), and sech**2 u = 4 e / (1 + e)**2, e = exp(-2|u|)
                 * (exact for large |u|, where 1 - tanh**2 would cancel). */
                for (fastloss_index c = 0; c < n_classes; ++c) {
                    const double u = (double)LOAD(x, c) / job->softcap_value;
                    const double m = expm1(-2.0 * fabs(u));
                    const double e = exp(-2.0 * fabs(u));
                    row_y[c] = copysign(job->softcap_value * (-m / (2.0 + m)), u);
                    slope[c] = 4.0 * e / ((1.0 + e) * (1.0 + e));
                }
            }
            if (t >= 0 && block_mode != CE_MODE_BLOCK_GRAD)
                target_logit = row_y[t];
            GRAD_T *touch = (const void *)g != (const void *)x ? g : NULL;
            if (block_mode == CE_MODE_BLOCK_GRAD)
                ROW_WIDE(ce_row_rebased)(call_ptr, row_y, stats.max, row_e, chunk_data, touch);
            else if (!backward || !ROW_WIDE(ce_row_shifted)(call_ptr, row_y, t, lse_in[i], row_e, chunk_data, touch, &stats))
                ROW_WIDE(ce_row_stats)(call_ptr, row_y, q, weight, t, row_e, tile, chunk_data, NULL, NULL,
                                       touch, &stats);
            if (block_mode != CE_MODE_BLOCK_STATS)
                ROW_WIDE(ce_coefficients)(call_ptr, &stats, target_logit, target_weight, i, &coef);
            if (g)
                ROW_WIDE(ce_row_grad)(call_ptr, q, weight, t, &coef, row_e, chunk_data,
                                      softcap ? slope : NULL, 0, g);
        }
        if (stats_out) {
            /* the block's record (the layout of cross_entropy.h) */
            stats_out[FASTLOSS_CE_STAT_MAX * n_rows + i] = stats.max;
            stats_out[FASTLOSS_CE_STAT_SUM * n_rows + i] = stats.sum;
            stats_out[FASTLOSS_CE_STAT_SUM_OTHERS * n_rows + i] = stats.excl;
            stats_out[FASTLOSS_CE_STAT_DIST * n_rows + i] = stats.dist;
            stats_out[FASTLOSS_CE_STAT_MASS * n_rows + i] = stats.mass;
            stats_out[FASTLOSS_CE_STAT_TARGET_LOGIT * n_rows + i] = target_logit;
            stats_out[FASTLOSS_CE_STAT_TARGET_WEIGHT * n_rows + i] = soft ? 0.0 : target_weight;
            stats_out[FASTLOSS_CE_STAT_TARGET_COUNT * n_rows + i] = t >= 0 ? 1.0 : 0.0;
            stats_out[FASTLOSS_CE_STAT_CLASSES * n_rows + i] = (double)n_classes;
            continue;
        }
        row_ce[i] = coef.ce;
        row_z[i] = coef.z_term;
        row_lse[i] = coef.lse;
    }
    free(far_row);
}

int RUN(int block_mode, const double *stats_in, double *stats_out,
        const fastloss_ce_options *options, const void *logits_data,
        fastloss_index logits_row_stride, const int64_t *target, const void *soft_target_data,
        fastloss_index soft_target_row_stride, const void *weight_data, const double *lse_in,
        const double *grad_output, fastloss_index grad_output_stride, double *loss_per_row,
        double *lse_out, double *loss, void *grad_data, fastloss_index grad_row_stride)
{
    const STORE_T *logits = (const STORE_T *)logits_data;
    const AUX_T *soft_target = (const AUX_T *)soft_target_data;
    const AUX_T *weight = (const AUX_T *)weight_data;
    GRAD_T *grad = (GRAD_T *)grad_data;
    const fastloss_index n_rows = options->n_rows;
    const fastloss_index n_classes = options->n_classes;
    const fastloss_index n_chunks = (n_classes + FASTLOSS_CE_CHUNK - 1) / FASTLOSS_CE_CHUNK;
    const int soft = soft_target != NULL;
    const int softcap = options->softcap > 0.0;
    /* Rows are read as double ("wide") when soft-capped, and for float32 soft
     * targets or label smoothing: there the gradient U p_c - u_c cancels as the
     * softmax approaches the target, and p_c needs more than float32 precision. */
    const int wide = softcap || (sizeof(REAL) == sizeof(float) &&
                                 (soft || options->label_smoothing > 0.0));
    const int backward = lse_in != NULL;
    const double one = 1.0;

    /* Denominators of the mean, in row order: torch's sum of w[t_i] over the
     * non-ignored rows for hard targets, the number of rows for soft ones.  The
     * same scan checks the class indices, before anything is written: it is
     * the only pass over the targets before the rows. */
    const fastloss_index total_classes = options->total_classes > 0 ? options->total_classes
                                                                      : n_classes;
    double n_valid = (double)n_rows, weight_sum = (double)n_rows;
    if (!soft) {
        /* The count and the check in one vector loop: a chain of double adds of 1.0
         * cost 4 cycles a row, 12% of a call at N=65536, C=10.  A count of ones is
         * the sum of ones exactly (below 2**53), so the bits are the same. */
        const int64_t ignore_index = options->ignore_index;
        const uint64_t n_targets = (uint64_t)total_classes;
        fastloss_index count = 0;
        int bad = 0;
#pragma omp simd reduction(+ : count) reduction(| : bad)
        for (fastloss_index i = 0; i < n_rows; ++i) {
            const int64_t t = target[i];
            const int kept = t != ignore_index;
            count += kept;
            bad |= kept & ((uint64_t)t >= n_targets);
        }
        if (bad) {
            for (fastloss_index i = 0; i < n_rows; ++i) {
                const int64_t t = target[i];
                if (t != ignore_index && (t < 0 || t >= total_classes)) {
                    if (options->bad_target)
                        *options->bad_target = i;
                    return FASTLOSS_ERROR_BAD_TARGET;
                }
            }
        }
        n_valid = (double)count;
        /* a block's gradient: w_t from the merged statistics (t may be in another
         * block); a block's statistics need no denominator; rows without class
         * weights: the count */
        weight_sum = block_mode == CE_MODE_ROWS && !weight ? n_valid : 0.0;
        if (block_mode == CE_MODE_BLOCK_GRAD || (block_mode == CE_MODE_ROWS && weight)) {
            for (fastloss_index i = 0; i < n_rows; ++i) {
                const int64_t t = target[i];
                if (t == ignore_index)
                    continue;
                weight_sum += block_mode == CE_MODE_BLOCK_GRAD
                                  ? stats_in[FASTLOSS_CE_STAT_TARGET_WEIGHT * n_rows + i]
                                  : (double)AUX_LOAD(weight, t);
            }
        }
    }

    ce_call call;
    call.n_classes = n_classes;
    call.total_classes = total_classes;
    call.n_chunks = n_chunks;
    call.ignore_index = options->ignore_index;
    call.soft = soft;
    call.reduction = options->reduction;
    call.smoothing = options->label_smoothing;
    call.z_loss = options->z_loss;
    call.softcap = options->softcap;
    /* (a block's gradient reads the whole row's statistics: its C classes) */
    const fastloss_index far_classes = block_mode == CE_MODE_BLOCK_GRAD ? total_classes : n_classes;
    call.far_bound = fastloss_far_row_bound(far_classes);
    call.q_scale = 1.0 - options->label_smoothing;
    call.q_offset = options->label_smoothing / (double)total_classes;
    call.ce_factor = options->reduction == FASTLOSS_REDUCTION_MEAN ? 1.0 / weight_sum : 1.0;
    call.z_factor = options->reduction == FASTLOSS_REDUCTION_MEAN ? 1.0 / n_valid : 1.0;
    call.grad_output = grad_output ? grad_output : &one;
    call.grad_output_stride = grad_output ? grad_output_stride : 0;

    /* Rows with few classes go CE_SMALL_ROWS at a time, one per SIMD lane
     * (cross_entropy_small_body.h): the same numbers, laid out for vectors. */
    const int small = !wide && !soft && n_classes <= CE_SMALL_MAX_CLASSES &&
                      block_mode == CE_MODE_ROWS;
    const fastloss_index n_units = small ? (n_rows + CE_SMALL_ROWS - 1) / CE_SMALL_ROWS : n_rows;

    /* Everything allocated once, before the parallel region. */
    int threads = fastloss_effective_threads(options->num_threads, n_rows * n_classes);
    if (threads > n_units) /* rows (or blocks) are the unit of work: more threads would idle */
        threads = n_units > 1 ? (int)n_units : 1;
    const fastloss_index claim = fastloss_claim_items(n_units, threads);
    /* The in-place backward keeps its exps in a private row (`e_private`): the
     * logits must survive until the row's lse is known to be the right one.  So
     * does every row read in REAL whose storage is not REAL (the gradient row
     * cannot hold the exps then). */
    const int in_place = grad && (const void *)grad == (const void *)logits;
    const int private_e = grad && !wide && ((backward && in_place) || !STORAGE_IS_COMPUTE);
    /* Per-thread scratch, in this order: chunk statistics, a chunk of exps (or
     * the small path's tile and lanes), the row read as double (and its softcap
     * slope), the row's exps in double, the in-place backward's exps.  Other rows
     * read as REAL leave their exps in the gradient row itself: the stats pass
     * then brings the gradient's lines into cache while it computes, and the
     * gradient pass rescales them there.  (Keeping the exps in a private row and
     * streaming the gradient out with non-temporal stores measured slower: it
     * splits the row into a read phase and a write phase.) */
    const size_t scratch_bytes[5] = {
        (size_t)n_chunks * CE_CHUNK_FIELDS * sizeof(double),
        small ? (size_t)n_classes * CE_SMALL_ROWS * sizeof(REAL) +
                    FASTLOSS_LANES * CE_SMALL_ROWS * sizeof(double)
              : FASTLOSS_CE_CHUNK * sizeof(double),
        wide ? (softcap ? 2 : 1) * (size_t)n_classes * sizeof(double) : 0,
        wide && grad ? (size_t)n_classes * sizeof(double) : 0,
        private_e ? (size_t)n_classes * sizeof(REAL) : 0,
    };
    size_t per_thread = 0;
    for (int part = 0; part < 5; ++part)
        per_thread += (scratch_bytes[part] + 63) / 64 * 64;
    const size_t row_bytes = (size_t)n_rows * sizeof(double);
    /* The forward's rows not contiguous in memory (a block of classes), or short, are
     * prefetched ahead (CE_PREFETCH_DISTANCE); decided per call, never per row. */
    const fastloss_index row_bytes_read = n_classes * (fastloss_index)sizeof(STORE_T);
    int prefetch_rows = 0;
    if (logits_row_stride != n_classes || row_bytes_read <= CE_PREFETCH_DISTANCE) {
        const fastloss_index ahead = CE_PREFETCH_DISTANCE / (row_bytes_read > 0 ? row_bytes_read : 1);
        prefetch_rows = ahead < 1 ? 1 : ahead > CE_PREFETCH_MAX_ROWS ? CE_PREFETCH_MAX_ROWS : (int)ahead;
    }
    const fastloss_index online_width = FASTLOSS_CE_ONLINE_CHUNK;
    const fastloss_index n_online = (n_classes + online_width - 1) / online_width;
    char *scratch = malloc(per_thread * (size_t)threads + 3 * row_bytes +
                           (size_t)(n_chunks + n_online) * sizeof(double) + 64);
    if (!scratch)
        return FASTLOSS_ERROR_NO_MEMORY;
    double *row_ce = (double *)scratch;
    double *row_z = row_ce + n_rows;
    double *row_lse = lse_out ? lse_out : row_z + n_rows;
    double *chunk_weight_sum = row_z + 2 * n_rows;
    /* 64-byte aligned, and each thread's part a multiple of 64 bytes: no false sharing */
    double *online_weight_sum = chunk_weight_sum + n_chunks;
    char *thread_scratch = (char *)(((uintptr_t)(online_weight_sum + n_online) + 63) & ~(uintptr_t)63);

    /* W and, for label smoothing, W_k per chunk (the class counts without weights). */
    double weight_total = 0.0;
    for (fastloss_index k = 0; k < n_chunks; ++k) {
        const fastloss_index start = k * FASTLOSS_CE_CHUNK;
        const fastloss_index end = start + FASTLOSS_CE_CHUNK < n_classes ? start + FASTLOSS_CE_CHUNK : n_classes;
        double chunk_sum = 0.0;
        for (fastloss_index c = start; c < end; ++c)
            chunk_sum += weight ? (double)AUX_LOAD(weight, c) : 1.0;
        chunk_weight_sum[k] = chunk_sum;
        weight_total += chunk_sum;
    }
    for (fastloss_index k = 0; k < n_online; ++k) {
        const fastloss_index start = k * online_width;
        const fastloss_index end = start + online_width < n_classes ? start + online_width : n_classes;
        double chunk_sum = (double)(end - start); /* (without weights: the count) */
        if (weight) {
            chunk_sum = 0.0;
            for (fastloss_index c = start; c < end; ++c)
                chunk_sum += (double)AUX_LOAD(weight, c);
        }
        online_weight_sum[k] = chunk_sum;
    }
    call.weight_total = weight_total;
    call.chunk_weight_sum = chunk_weight_sum;
    call.online_weight_sum = online_weight_sum;
    call.stats_only = block_mode == CE_MODE_BLOCK_STATS;
    call.ahead_to_l2 = row_bytes_read >= CE_PREFETCH_AHEAD_L2_BYTES;

    /* The rows, claimed by the threads a few at a time; one thread runs them with
     * no OpenMP call at all (a parallel region of one still costs a few hundred ns
     * and wakes libgomp's pool, a visible part of a call on a small batch). */
    fastloss_index next_unit = 0;
    RUN_JOB job = {&call, block_mode, options->class_offset, stats_in, stats_out, logits, logits_row_stride, target, soft_target,
                   soft_target_row_stride, weight, lse_in, grad, grad_row_stride, n_rows,
                   n_units, claim, &next_unit, small, wide, softcap, backward, private_e, prefetch_rows, options->softcap,
                   thread_scratch, per_thread, scratch_bytes, row_ce, row_z, row_lse};
    if (threads == 1) {
        RUN_ROWS(&job, 0);
    } else {
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
        RUN_ROWS(&job, omp_get_thread_num());
#endif
    }

    if (loss_per_row)
        for (fastloss_index i = 0; i < n_rows; ++i)
            loss_per_row[i] = row_ce[i] + row_z[i];
    if (loss && !backward) {
        const double ce_total = fastloss_sum_float64(row_ce, n_rows);
        /* without a z-loss every row's term is 0.0 exactly (ce_coefficients) */
        const double z_total = options->z_loss > 0.0 ? fastloss_sum_float64(row_z, n_rows) : 0.0;
        if (options->reduction == FASTLOSS_REDUCTION_MEAN)
            *loss = ce_total / weight_sum + (options->z_loss > 0.0 ? z_total / n_valid : 0.0);
        else
            *loss = ce_total + z_total;
    }
    free(scratch);
    return FASTLOSS_OK;
}

#undef CE_FAR_ROWS
