/*
 * vocab_body.h -- the rows and runners of vocab.c, written once per storage type.  No
 * include guard, on purpose: vocab_impl.h includes it between storage_begin.h and
 * storage_end.h (STORE_T, REAL, LOAD, STORE, STORE_WIDE, GRAD_T; see storage.h) with
 *   NAME(name)     the instantiation's name of a routine (name_<storage>_<isa>)
 *   TLP_RUN        the token log-probabilities runner's name
 *   DISTILL_RUN    the distillation runner's name
 *   REAL_EXP_NONPOSITIVE, REAL_LOG1P_UNIT   fastmath.h's vectorisable exp for x <= 0 and
 *                  log(1 + u) on [0, 1], in REAL
 * Every array is read through LOAD and written through STORE; the per-element work is
 * in REAL, every sum in double (FASTLOSS_LANES accumulators in a fixed order).  The
 * inputs are STORE_T and the gradients GRAD_T (the same, or float32 for a half type's
 * _grad32 tag); a half-precision gradient element is rounded once, from the REAL (or,
 * STORE_WIDE, the double) it is computed in.
 */

/* Largest value of a chunk (an OpenMP simd reduction: a max's order never changes its
 * value).  A NaN may win or be skipped: it reaches the row's sums either way. */
FASTLOSS_INLINE REAL NAME(vocab_max)(const STORE_T *values, fastloss_index n)
{
    REAL result = -(REAL)INFINITY;
#pragma omp simd reduction(max : result)
    for (fastloss_index c = 0; c < n; ++c) {
        const REAL value = LOAD(values, c);
        result = value > result ? value : result;
    }
    return result;
}

/* Sum of a tile in double: element c into lane c % FASTLOSS_LANES, lanes combined
 * pairwise, then the tail; the same order on every ISA. */
FASTLOSS_INLINE double NAME(vocab_sum)(const REAL *FASTLOSS_RESTRICT values, fastloss_index n)
{
    double lane[FASTLOSS_LANES] = {0.0};
    double tail = 0.0;
    fastloss_index c = 0;
    for (; c + FASTLOSS_LANES <= n; c += FASTLOSS_LANES)
        for (int k = 0; k < FASTLOSS_LANES; ++k)
            lane[k] += (double)values[c + k];
    for (; c < n; ++c)
        tail += (double)values[c];
    return fastloss_lanes_total(lane) + tail;
}

/* A floor under a in the products e a: a masked class (a = -inf, e = 0) adds 0 rather
 * than 0 * -inf; every a below it has e = 0 (the exp flushes a < -87.3, float, or
 * -708.3, double, to 0), and a NaN stays NaN. */
#define VOCAB_A_FLOOR ((REAL)-1e30)

/*
 * One element of vocab_range, lane j of the REAL partial sums: e = exp(a),
 * a = (x_i - shift) / T, kept (store) and summed, with e a (with_w; 0 where e is 0, so
 * that a masked class, a = -inf, adds 0 log 0 = 0: VOCAB_A_FLOOR), and the max of the
 * next chunk's element i (with_next).
 */
#define VOCAB_RANGE_STEP(i, j)                                                     \
    do {                                                                           \
        const REAL a_ = ((REAL)LOAD(x, i) - shift) * inv_t;                        \
        const REAL e_ = REAL_EXP_NONPOSITIVE(a_);                                  \
        if (store)                                                                 \
            exps[i] = e_;                                                          \
        if (sums)                                                                  \
            part_s[j] += e_;                                                       \
        if (with_w)                                                                \
            part_w[j] += e_ * (a_ < VOCAB_A_FLOOR ? VOCAB_A_FLOOR : a_);           \
        if (with_next) {                                                           \
            const REAL v_ = LOAD(next, i);                                         \
            next_lane[j] = next_lane[j] < v_ ? v_ : next_lane[j];                  \
        }                                                                          \
    } while (0)

/*
 * The exps of a range of a chunk, e_c = exp((x_c - shift) / T) for c in [0, n): into
 * `exps` (store), with *sum = sum e_c and (with_w) *weighted = sum e_c a_c, in the
 * lanes of VOCAB_LANES / VOCAB_FOLD (vocab_internal.h); with_next, the same loop takes
 * the max of next[0, n) (the next chunk streams in from memory while this one's exps are
 * computed, rather than in a sweep of its own that would leave the arithmetic idle;
 * cross_entropy_row_body.h does the same) and returns it, else -inf.  One loop: the
 * exp, a store, an add and a multiply-add per element, no conversion to double (no
 * sums where `sums` is 0: the caller sums the kept exps itself).  The
 * mode arguments are constants at every call (the function is inlined).
 */
FASTLOSS_INLINE REAL NAME(vocab_range)(const int store, const int sums, const int with_w,
                                       const int with_next,
                                       const STORE_T *FASTLOSS_RESTRICT x, fastloss_index n,
                                       REAL shift, REAL inv_t, REAL *FASTLOSS_RESTRICT exps,
                                       const STORE_T *FASTLOSS_RESTRICT next, double *sum,
                                       double *weighted)
{
    double lane_s[VOCAB_LANES] = {0.0}, lane_w[VOCAB_LANES] = {0.0};
    REAL next_lane[VOCAB_LANES];
    for (int j = 0; j < VOCAB_LANES; ++j)
        next_lane[j] = -(REAL)INFINITY;
    fastloss_index c = 0;
    for (; c + VOCAB_FOLD <= n; c += VOCAB_FOLD) {
        REAL part_s[VOCAB_LANES] = {0}, part_w[VOCAB_LANES] = {0};
        for (fastloss_index v = c; v < c + VOCAB_FOLD; v += VOCAB_LANES) {
#pragma omp simd
            for (int j = 0; j < VOCAB_LANES; ++j)
                VOCAB_RANGE_STEP(v + j, j);
        }
#pragma omp simd
        for (int j = 0; j < VOCAB_LANES; ++j) {
            lane_s[j] += (double)part_s[j];
            lane_w[j] += (double)part_w[j];
        }
    }
    if (c < n) { /* the last, partial fold: whole vectors, then one element at a time */
        REAL part_s[VOCAB_LANES] = {0}, part_w[VOCAB_LANES] = {0};
        for (; c + VOCAB_LANES <= n; c += VOCAB_LANES) {
#pragma omp simd
            for (int j = 0; j < VOCAB_LANES; ++j)
                VOCAB_RANGE_STEP(c + j, j);
        }
        for (int j = 0; c + j < n; ++j)
            VOCAB_RANGE_STEP(c + j, j);
        for (int j = 0; j < VOCAB_LANES; ++j) {
            lane_s[j] += (double)part_s[j];
            lane_w[j] += (double)part_w[j];
        }
    }
    *sum = sums ? vocab_lanes_total(lane_s) : 0.0;
    if (with_w)
        *weighted = vocab_lanes_total(lane_w);
    REAL next_max = -(REAL)INFINITY;
    for (int j = 0; j < VOCAB_LANES; ++j)
        next_max = next_lane[j] > next_max ? next_lane[j] : next_max;
    return next_max;
}
#undef VOCAB_RANGE_STEP
#undef VOCAB_A_FLOOR

/*
 * The softmax statistics of one row (vocab_internal.h: vocab_row_stats), chunk by
 * chunk, each chunk's exps relative to its own max (found by the previous chunk's loop,
 * vocab_range) and its sums (vocab_range's lanes), then the chunks' records merge.  The
 * target's term (target: its position, or -1) is left out of the lanes and added last,
 * so that `others` holds the sum without it (1 - p_t = others / S keeps its digits
 * where p_t is nearly 1): its chunk goes in two ranges around it, and the next chunk's
 * max in a sweep of its own.  The exps stay in `exps_row` (exp((x_c - shift_k) / T),
 * each chunk relative to its own shift; 0 at the target) when it is given.
 */
FASTLOSS_INLINE void NAME(vocab_row_stats_mode)(const int store, const int with_w,
                                               const int exact,
                                               const STORE_T *x, fastloss_index n_classes,
                                               fastloss_index n_chunks, double inv_temperature,
                                               fastloss_index target, REAL *exps_row,
                                               double *chunk_data, vocab_row_stats *stats)
{
    const REAL inv_t = (REAL)inv_temperature;
    REAL m = NAME(vocab_max)(x, n_classes < FASTLOSS_VOCAB_CHUNK ? n_classes
                                                                 : FASTLOSS_VOCAB_CHUNK);
    for (fastloss_index k = 0; k < n_chunks; ++k) {
        const fastloss_index start = k * FASTLOSS_VOCAB_CHUNK;
        const fastloss_index n = n_classes - start < FASTLOSS_VOCAB_CHUNK ? n_classes - start
                                                                          : FASTLOSS_VOCAB_CHUNK;
        const fastloss_index next_start = start + n;
        const fastloss_index n_next = n_classes - next_start < FASTLOSS_VOCAB_CHUNK
                                          ? n_classes - next_start
                                          : FASTLOSS_VOCAB_CHUNK;
        double *chunk = chunk_data + k * VOCAB_CHUNK_FIELDS;
        chunk[VOCAB_CHUNK_MAX] = (double)m;
        /* a chunk of -inf gets shift 0, so that exp sees -inf rather than NaN */
        const REAL shift = m == -(REAL)INFINITY ? (REAL)0 : m;
        const STORE_T *xk = x + start, *next = x + next_start;
        REAL *exps = store ? exps_row + start : NULL;
        const fastloss_index t = target - start;
        double sum = 0.0, weighted = 0.0, others;
        if (t >= 0 && t < n) {
            double sum_after = 0.0, weighted_after = 0.0;
            NAME(vocab_range)(store, !exact, with_w, 0, xk, t, shift, inv_t, exps, NULL, &sum,
                              &weighted);
            NAME(vocab_range)(store, !exact, with_w, 0, xk + t + 1, n - t - 1, shift, inv_t,
                              store ? exps + t + 1 : NULL, NULL, &sum_after, &weighted_after);
            const REAL a_t = ((REAL)LOAD(xk, t) - shift) * inv_t;
            const REAL e_t = REAL_EXP_NONPOSITIVE(a_t);
            if (store)
                exps[t] = 0; /* the gradient writes the target from double */
            others = sum + sum_after;
            sum = others + (double)e_t;
            weighted = (weighted + weighted_after) +
                       (e_t == (REAL)0 ? 0.0 : (double)e_t * (double)a_t);
            m = NAME(vocab_max)(next, n_next);
        } else {
            /* the part with a next element beside each element (all of it but in the
             * row's last chunk, and in the chunk before a short last one) */
            const fastloss_index both = n < n_next ? n : n_next;
            m = NAME(vocab_range)(store, !exact, with_w, 1, xk, both, shift, inv_t, exps, next,
                                  &sum, &weighted);
            if (both < n) { /* the row's last chunk (no next) or a short next chunk */
                double sum_rest = 0.0, weighted_rest = 0.0;
                NAME(vocab_range)(store, !exact, with_w, 0, xk + both, n - both, shift, inv_t,
                                  store ? exps + both : NULL, NULL, &sum_rest, &weighted_rest);
                sum += sum_rest;
                weighted += weighted_rest;
            }
            if (both < n_next) {
                const REAL rest = NAME(vocab_max)(next + both, n_next - both);
                m = rest > m ? rest : m;
            }
            /* exact: the kept exps summed in double instead (see vocab_row_stats) */
            if (exact)
                sum = NAME(vocab_sum)(exps, n);
            others = sum;
        }
        chunk[VOCAB_CHUNK_OTHERS] = others;
        chunk[VOCAB_CHUNK_SUM] = sum;
        chunk[VOCAB_CHUNK_WEIGHTED] = with_w ? weighted : 0.0;
        chunk[VOCAB_CHUNK_CROSS] = 0.0;
    }
    vocab_merge_chunks(chunk_data, n_chunks, inv_temperature, stats);
}

/*
 * vocab_row_stats_mode with its modes picked once per row (each a loop of its own).
 * `exact` (the distillation, target -1, exps_row given): each chunk's sum of the kept
 * exps in double, every exp rounded once and nothing else: the KL's
 * log S_t - log S_s would carry the float lanes' roundings (about 1e-8 of S, where
 * the KL of two close distributions is 1e-3 or less), while the token log-prob and
 * the entropy take them relative to their own size.
 */
static void NAME(vocab_row_stats)(const STORE_T *x, fastloss_index n_classes,
                                  fastloss_index n_chunks, double inv_temperature,
                                  fastloss_index target, int need_weighted, int exact,
                                  REAL *exps_row, double *chunk_data, vocab_row_stats *stats)
{
    if (exact)
        NAME(vocab_row_stats_mode)(1, 0, 1, x, n_classes, n_chunks, inv_temperature, -1,
                                   exps_row, chunk_data, stats);
    else if (exps_row && need_weighted)
        NAME(vocab_row_stats_mode)(1, 1, 0, x, n_classes, n_chunks, inv_temperature, target,
                                   exps_row, chunk_data, stats);
    else if (exps_row)
        NAME(vocab_row_stats_mode)(1, 0, 0, x, n_classes, n_chunks, inv_temperature, target,
                                   exps_row, chunk_data, stats);
    else if (need_weighted)
        NAME(vocab_row_stats_mode)(0, 1, 0, x, n_classes, n_chunks, inv_temperature, target,
                                   NULL, chunk_data, stats);
    else
        NAME(vocab_row_stats_mode)(0, 0, 0, x, n_classes, n_chunks, inv_temperature, target,
                                   NULL, chunk_data, stats);
}

/* Per-thread scratch: chunk records and, where the gradient row cannot hold the exps
 * (a half-precision or float32 gradient of half logits), a row of REAL for them. */
static size_t NAME(vocab_scratch_bytes)(fastloss_index n_chunks, fastloss_index n_classes)
{
    const size_t records = ((size_t)n_chunks * VOCAB_CHUNK_FIELDS * sizeof(double) + 63) / 64 * 64;
    const size_t bytes = records + (STORAGE_IS_COMPUTE ? 0 : (size_t)n_classes * sizeof(REAL));
    return (bytes + 63) / 64 * 64; /* each thread's part on its own cache lines */
}

/* The rows [begin, end) of a parallel loop of n_rows rows: thread's share, fixed. */
#define VOCAB_ROW_RANGE(n_rows, thread, n_threads, begin, end) \
    const fastloss_index begin = (n_rows) * (thread) / (n_threads);   \
    const fastloss_index end = (n_rows) * ((thread) + 1) / (n_threads)

/* ===================================================================================
 * Token log-probabilities and entropy
 * =================================================================================== */

typedef struct NAME(tlp_job) {
    const fastloss_vocab_options *options;
    const STORE_T *logits;
    fastloss_index logits_row_stride;
    const int64_t *target;
    double *log_prob, *entropy;
    const double *grad_log_prob, *grad_entropy;
    fastloss_index grad_log_prob_stride, grad_entropy_stride;
    GRAD_T *grad;
    fastloss_index grad_row_stride;
    fastloss_index n_chunks;
    char *scratch;
    size_t per_thread;
} NAME(tlp_job);

/*
 * The gradient of g log p_t + h H w.r.t. the logits x of one row (temperature T):
 *   off the target:  -(1/T) p_c (g + h (a_c - W / S))  = e_c (A + B a_c)
 *   the target:       (1/T) (g (1 - p_t) - h p_t (a_t - W / S))
 * with a_c = (x_c - M) / T, e_c = exp(a_c), p_c = e_c / S, A = -(g - h W / S) / (T S),
 * B = -h / (T S): log p_c + H = a_c - W / S.  1 - p_t is others / S (no cancellation
 * where p_t is nearly 1), and the target is written from double.  When the statistics
 * pass left its exps in a row (`e_row`: exp((x_c - m_k) / T) per chunk k, relative to
 * the chunk's shift), they are rescaled there by the chunk's exp((m_k - M) / T) rather
 * than computed again: in the gradient row itself where it is of the compute type, else
 * in scratch, then stored (rounded once) to the gradient row.
 */
static void NAME(tlp_row_grad)(const STORE_T *x, fastloss_index n_classes,
                               fastloss_index n_chunks, fastloss_index target,
                               double inv_temperature, const vocab_row_stats *stats,
                               const double *chunk_data, REAL *e_row,
                               double upstream_log_prob, double upstream_entropy, GRAD_T *g)
{
    const double mean_a = stats->weighted / stats->sum;
    const double scale = inv_temperature / stats->sum;
    const double coef_a = -(upstream_log_prob - upstream_entropy * mean_a) * scale;
    const double coef_b = -upstream_entropy * scale;
    const REAL max = (REAL)stats->max;
    const REAL inv_t = (REAL)inv_temperature;
    if (!e_row) {
        const REAL a0 = (REAL)coef_a, b0 = (REAL)coef_b;
        for (fastloss_index c = 0; c < n_classes; ++c) {
            const REAL a = ((REAL)LOAD(x, c) - max) * inv_t;
            const REAL e = REAL_EXP_NONPOSITIVE(a);
            STORE(g, c, e == (REAL)0 ? (REAL)0 : e * (a0 + b0 * a));
        }
    } else {
        for (fastloss_index k = 0; k < n_chunks; ++k) {
            const fastloss_index start = k * FASTLOSS_VOCAB_CHUNK;
            const fastloss_index n = n_classes - start < FASTLOSS_VOCAB_CHUNK
                                         ? n_classes - start
                                         : FASTLOSS_VOCAB_CHUNK;
            const double m = chunk_data[k * VOCAB_CHUNK_FIELDS + VOCAB_CHUNK_MAX];
            /* a chunk of -inf has every e 0 (and its factor is unused) */
            const double rescale = m == -INFINITY ? 0.0 : exp((m - stats->max) * inv_temperature);
            const REAL a0 = (REAL)(coef_a * rescale), b0 = (REAL)(coef_b * rescale);
            const STORE_T *xk = x + start;
            REAL *ek = e_row + start;
            for (fastloss_index c = 0; c < n; ++c) {
                const REAL a = ((REAL)LOAD(xk, c) - max) * inv_t;
                const REAL e = ek[c];
                ek[c] = e == (REAL)0 ? (REAL)0 : e * (a0 + b0 * a);
            }
        }
        if ((void *)e_row != (void *)g) /* the exps were in scratch: round once */
            for (fastloss_index c = 0; c < n_classes; ++c)
                STORE(g, c, e_row[c]);
    }
    const double a_t = ((double)LOAD(x, target) - stats->max) * inv_temperature;
    const double p_t = exp(a_t) / stats->sum;
    const double complement = stats->others / stats->sum;
    STORE_WIDE(g, target, inv_temperature * (upstream_log_prob * complement -
                                             upstream_entropy * p_t * (a_t - mean_a)));
}

static void NAME(tlp_rows)(const NAME(tlp_job) *job, int thread, int n_threads)
{
    const fastloss_vocab_options *options = job->options;
    const fastloss_index n_classes = options->n_classes;
    const double inv_temperature = 1.0 / options->temperature;
    char *mine = job->scratch + job->per_thread * (size_t)thread;
    double *chunk_data = (double *)mine;
    REAL *row_exps = STORAGE_IS_COMPUTE
                         ? NULL
                         : (REAL *)(mine + ((size_t)job->n_chunks * VOCAB_CHUNK_FIELDS *
                                                sizeof(double) + 63) / 64 * 64);
    const int need_weighted = job->entropy != NULL || job->grad_entropy != NULL;
    VOCAB_ROW_RANGE(options->n_rows, thread, n_threads, begin, end);
    for (fastloss_index i = begin; i < end; ++i) {
        const STORE_T *x = job->logits + i * job->logits_row_stride;
        GRAD_T *g = job->grad ? job->grad + i * job->grad_row_stride : NULL;
        const fastloss_index t = job->target[i];
        if (t == options->ignore_index) {
            if (job->log_prob)
                job->log_prob[i] = 0.0;
            if (job->entropy)
                job->entropy[i] = 0.0;
            if (g)
                for (fastloss_index c = 0; c < n_classes; ++c)
                    STORE(g, c, (REAL)0);
            continue;
        }
        /* with a gradient, the statistics pass leaves its exps in a row and the gradient
         * pass rescales them there: the gradient row itself where it is of the compute
         * type (never the logits: the Cython layer gives the kernel a gradient that
         * overlaps no input), else the thread's scratch row */
        REAL *e_row = g == NULL ? NULL : STORAGE_IS_COMPUTE ? (REAL *)g : row_exps;
        vocab_row_stats stats;
        NAME(vocab_row_stats)(x, n_classes, job->n_chunks, inv_temperature, t, need_weighted, 0,
                              e_row, chunk_data, &stats);
        /* A row with no finite log-sum-exp (a +inf or NaN logit, or every logit -inf)
         * has no softmax: NaN, as torch's log_softmax gives. */
        const int finite = isfinite(stats.max) && isfinite(stats.log_sum);
        /* log p_t = a_t - log S; where the target holds at least half the mass, as
         * -log1p(others / e_t) instead, and log S as a_t + log1p(others / e_t): a
         * converged row's log p_t and entropy are tiny, and log S of an S near 1 would
         * keep only their absolute accuracy */
        const double a_t = ((double)LOAD(x, t) - stats.max) * inv_temperature;
        const double e_t = finite ? exp(a_t) : 0.0;
        const int dominant = finite && e_t >= stats.others;
        const double share = dominant ? log1p(stats.others / e_t) : 0.0;
        const double log_prob = dominant ? -share : a_t - stats.log_sum;
        const double log_sum = dominant ? a_t + share : stats.log_sum;
        if (job->log_prob)
            job->log_prob[i] = finite ? log_prob : NAN;
        if (job->entropy)
            job->entropy[i] = finite ? log_sum - stats.weighted / stats.sum : NAN;
        if (g) {
            const double upstream_log_prob =
                job->grad_log_prob ? job->grad_log_prob[i * job->grad_log_prob_stride] : 0.0;
            const double upstream_entropy =
                job->grad_entropy ? job->grad_entropy[i * job->grad_entropy_stride] : 0.0;
            if (finite) {
                NAME(tlp_row_grad)(x, n_classes, job->n_chunks, t, inv_temperature, &stats,
                                   chunk_data, e_row, upstream_log_prob,
                                   upstream_entropy, g);
            } else {
                for (fastloss_index c = 0; c < n_classes; ++c)
                    STORE(g, c, (REAL)NAN);
            }
        }
    }
}

int TLP_RUN(const fastloss_vocab_options *options, const void *logits_data,
            fastloss_index logits_row_stride, const int64_t *target, double *log_prob,
            double *entropy, const double *grad_log_prob, fastloss_index grad_log_prob_stride,
            const double *grad_entropy, fastloss_index grad_entropy_stride, void *grad_data,
            fastloss_index grad_row_stride)
{
    const fastloss_index n_rows = options->n_rows, n_classes = options->n_classes;
    /* the targets, checked before anything is written */
    for (fastloss_index i = 0; i < n_rows; ++i) {
        const int64_t t = target[i];
        if (t != options->ignore_index && (t < 0 || t >= n_classes)) {
            if (options->bad_target)
                *options->bad_target = i;
            return FASTLOSS_ERROR_BAD_TARGET;
        }
    }
    const fastloss_index n_chunks = (n_classes + FASTLOSS_VOCAB_CHUNK - 1) / FASTLOSS_VOCAB_CHUNK;
    int threads = fastloss_effective_threads(options->num_threads, n_rows * n_classes);
    if (threads > n_rows)
        threads = n_rows > 1 ? (int)n_rows : 1;
    const size_t per_thread = NAME(vocab_scratch_bytes)(n_chunks, n_classes);
    char *allocation = malloc(per_thread * (size_t)threads + 64);
    if (!allocation)
        return FASTLOSS_ERROR_NO_MEMORY;
    char *scratch = (char *)(((uintptr_t)allocation + 63) & ~(uintptr_t)63);
    NAME(tlp_job) job = {options, (const STORE_T *)logits_data, logits_row_stride, target,
                         log_prob, entropy, grad_log_prob, grad_entropy,
                         grad_log_prob_stride, grad_entropy_stride, (GRAD_T *)grad_data,
                         grad_row_stride, n_chunks, scratch, per_thread};
    if (threads == 1) {
        NAME(tlp_rows)(&job, 0, 1);
    } else {
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
        NAME(tlp_rows)(&job, omp_get_thread_num(), omp_get_num_threads());
#endif
    }
    free(allocation);
    return FASTLOSS_OK;
}

/* ===================================================================================
 * Distillation: forward KL, reverse KL, generalised JSD
 * =================================================================================== */

/* The per-row numbers of the element passes, in REAL (see vocab.c for the formulas). */
typedef struct NAME(distill_row) {
    REAL log_beta, log_beta_c; /* log beta, log(1 - beta) (JSD) */
    REAL log_odds;             /* log beta - log(1 - beta) */
    REAL kl_s, kl_t;           /* the row totals the gradients subtract (pass B) */
} NAME(distill_row);

/* What a chunk's elements need: with e_c = exp((x_c - shift) / T) as pass A left it,
 * q_c = e_c scale and log q_c = (x_c - shift) / T + log_scale, per model; log_ratio is
 * log_scale_t - log_scale_s, so that log p - log q = (a_t - a_s) + log_ratio. */
typedef struct NAME(distill_chunk) {
    REAL shift_s, shift_t, scale_s, scale_t, log_ratio;
} NAME(distill_chunk);

FASTLOSS_INLINE void NAME(distill_chunk_of)(const double *student_chunk,
                                            const double *teacher_chunk,
                                            const vocab_row_stats *student,
                                            const vocab_row_stats *teacher,
                                            double inv_temperature,
                                            NAME(distill_chunk) *chunk)
{
    const double m_s = student_chunk[VOCAB_CHUNK_MAX], m_t = teacher_chunk[VOCAB_CHUNK_MAX];
    /* a chunk with no finite value: shift 0 and every e 0 (its scale is then unused) */
    const double shift_s = m_s == -INFINITY ? 0.0 : m_s;
    const double shift_t = m_t == -INFINITY ? 0.0 : m_t;
    const double log_scale_s = (shift_s - student->max) * inv_temperature - student->log_sum;
    const double log_scale_t = (shift_t - teacher->max) * inv_temperature - teacher->log_sum;
    chunk->shift_s = (REAL)shift_s;
    chunk->shift_t = (REAL)shift_t;
    chunk->scale_s = (REAL)exp(log_scale_s);
    chunk->scale_t = (REAL)exp(log_scale_t);
    chunk->log_ratio = (REAL)(log_scale_t - log_scale_s);
}

typedef struct NAME(distill_job) {
    const fastloss_vocab_options *options;
    const STORE_T *student, *teacher;
    fastloss_index student_row_stride, teacher_row_stride;
    const int64_t *target;
    double *row_loss;
    const double *grad_output;
    fastloss_index grad_output_stride;
    double factor; /* 1 / the valid rows for the batch mean, else 1 */
    GRAD_T *grad_student, *grad_teacher;
    fastloss_index grad_student_row_stride, grad_teacher_row_stride;
    fastloss_index n_chunks;
    char *scratch;
    size_t per_thread;
} NAME(distill_job);

/* Per-thread scratch of the distillation: two chunk records per chunk and two rows of
 * exps (the two models'), 64-byte aligned parts. */
static size_t NAME(distill_scratch_bytes)(fastloss_index n_chunks, fastloss_index n_classes)
{
    const size_t records = ((size_t)n_chunks * 2 * VOCAB_CHUNK_FIELDS * sizeof(double) + 63) / 64 * 64;
    const size_t tiles = (2 * FASTLOSS_VOCAB_CHUNK * sizeof(REAL) + 63) / 64 * 64;
    const size_t row = ((size_t)n_classes * sizeof(REAL) + 63) / 64 * 64;
    return records + tiles + 2 * row;
}

/*
 * One chunk of pass B (the divergence's two sums) or C (the gradients), with the exps
 * of pass A: e_s, e_t.  The sums, formed in REAL into the tiles and summed in double:
 *   K_t = sum_c p_c (log p_c - log r_c),  K_s = sum_c q_c (log q_c - log r_c)
 * with r = q for the forward KL (K_t only), r = p for the reverse KL (K_s only), and
 * r = m = beta p + (1 - beta) q for the JSD.  A class whose probability is 0 adds 0
 * (0 log 0 = 0, also where its log-probability is -inf); NaN propagates.  For the JSD,
 * delta = log(beta p) - log((1 - beta) q) and L = log1p(exp(-|delta|)) give
 *   log p - log m = min(delta, 0) - log beta - L,
 *   log q - log m = -max(delta, 0) - log(1 - beta) - L
 * with no log of a probability (exact where either underflows).  The gradients, scale
 * = grad_output * factor / T (times beta or 1 - beta for the JSD's):
 *   student  forward  scale (q - p)
 *            reverse  scale q (log q - log p - K_s)
 *            JSD      scale (1 - beta) q (log q - log m - K_s)
 *   teacher  forward  scale p (log p - log q - K_t)
 *            reverse  scale (p - q)
 *            JSD      scale beta p (log p - log m - K_t)
 * (the softmax's Jacobian applied to d loss / d log q and d loss / d log p).  The mode
 * arguments are constants at every call (the function is inlined into one loop per
 * divergence and set of outputs), so that each loop vectorises with no test inside.
 * With `sums`, the loss terms go to the tiles (pass B, or a pass C that needs no K:
 * the forward KL's student gradient, the reverse KL's teacher gradient).
 */
FASTLOSS_INLINE void NAME(distill_range)(const int divergence, const int want_s,
                                         const int want_t, const int sums,
                                         const STORE_T *FASTLOSS_RESTRICT xs,
                                         const STORE_T *FASTLOSS_RESTRICT xt,
                                         const REAL *FASTLOSS_RESTRICT es,
                                         const REAL *FASTLOSS_RESTRICT et, fastloss_index n,
                                         REAL inv_t, const NAME(distill_chunk) *chunk,
                                         const NAME(distill_row) *row, REAL scale_s,
                                         REAL scale_t, REAL *FASTLOSS_RESTRICT tile_s,
                                         REAL *FASTLOSS_RESTRICT tile_t, GRAD_T *gs,
                                         GRAD_T *gt)
{
    const REAL shift_s = chunk->shift_s, shift_t = chunk->shift_t;
    const REAL unit_s = chunk->scale_s, unit_t = chunk->scale_t;
    const REAL log_ratio = chunk->log_ratio, log_odds = row->log_odds;
    const REAL log_beta = row->log_beta, log_beta_c = row->log_beta_c;
    const REAL kl_s = row->kl_s, kl_t = row->kl_t;
    for (fastloss_index c = 0; c < n; ++c) {
        const REAL a_s = ((REAL)LOAD(xs, c) - shift_s) * inv_t;
        const REAL a_t = ((REAL)LOAD(xt, c) - shift_t) * inv_t;
        const REAL e_s = es[c], e_t = et[c];
        const REAL q = e_s * unit_s, p = e_t * unit_t;
        const REAL log_pq = (a_t - a_s) + log_ratio; /* log p - log q */
        REAL term_s = 0, term_t = 0, g_s = 0, g_t = 0;
        if (divergence == FASTLOSS_DIVERGENCE_FORWARD_KL) {
            term_t = e_t == (REAL)0 ? (REAL)0 : p * log_pq;
            g_s = q - p;
            g_t = e_t == (REAL)0 ? (REAL)0 : p * (log_pq - kl_t);
        } else if (divergence == FASTLOSS_DIVERGENCE_REVERSE_KL) {
            term_s = e_s == (REAL)0 ? (REAL)0 : q * -log_pq;
            g_s = e_s == (REAL)0 ? (REAL)0 : q * (-log_pq - kl_s);
            g_t = p - q;
        } else {
            const REAL delta = log_pq + log_odds;
            const REAL abs_delta = delta < (REAL)0 ? -delta : delta;
            const REAL mix = REAL_LOG1P_UNIT(REAL_EXP_NONPOSITIVE(-abs_delta));
            const REAL gap_t = ((delta < (REAL)0 ? delta : (REAL)0) - log_beta) - mix;
            const REAL gap_s = ((delta > (REAL)0 ? -delta : (REAL)0) - log_beta_c) - mix;
            term_t = e_t == (REAL)0 ? (REAL)0 : p * gap_t;
            term_s = e_s == (REAL)0 ? (REAL)0 : q * gap_s;
            g_s = e_s == (REAL)0 ? (REAL)0 : q * (gap_s - kl_s);
            g_t = e_t == (REAL)0 ? (REAL)0 : p * (gap_t - kl_t);
        }
        if (sums && divergence != FASTLOSS_DIVERGENCE_REVERSE_KL)
            tile_t[c] = term_t;
        if (sums && divergence != FASTLOSS_DIVERGENCE_FORWARD_KL)
            tile_s[c] = term_s;
        if (want_s)
            STORE(gs, c, scale_s * g_s);
        if (want_t)
            STORE(gt, c, scale_t * g_t);
    }
}

/* Passes B and C over one row, chunk by chunk (the chunks of pass A, whose records are
 * student_chunks and teacher_chunks); see distill_range.  kl_s and kl_t are summed
 * when `sums` (OUT), read from `row` otherwise. */
static void NAME(distill_pass)(int divergence, int sums, const STORE_T *xs, const STORE_T *xt,
                               const REAL *es_row, const REAL *et_row, fastloss_index n_classes,
                               fastloss_index n_chunks, double inv_temperature,
                               const double *student_chunks, const double *teacher_chunks,
                               const vocab_row_stats *student, const vocab_row_stats *teacher,
                               const NAME(distill_row) *row, REAL scale_s, REAL scale_t,
                               REAL *tile_s, REAL *tile_t, GRAD_T *gs, GRAD_T *gt,
                               double *kl_s, double *kl_t)
{
    const REAL inv_t = (REAL)inv_temperature;
    double sum_s = 0.0, sum_t = 0.0;
    for (fastloss_index k = 0; k < n_chunks; ++k) {
        const fastloss_index start = k * FASTLOSS_VOCAB_CHUNK;
        const fastloss_index n = n_classes - start < FASTLOSS_VOCAB_CHUNK ? n_classes - start
                                                                          : FASTLOSS_VOCAB_CHUNK;
        NAME(distill_chunk) chunk;
        NAME(distill_chunk_of)(student_chunks + k * VOCAB_CHUNK_FIELDS,
                               teacher_chunks + k * VOCAB_CHUNK_FIELDS, student, teacher,
                               inv_temperature, &chunk);
        const STORE_T *s = xs + start, *t = xt + start;
        const REAL *es = es_row + start, *et = et_row + start;
        GRAD_T *gsk = gs ? gs + start : NULL, *gtk = gt ? gt + start : NULL;
#define VOCAB_RANGE(div, ws, wt, with_sums)                                                  \
    NAME(distill_range)(div, ws, wt, with_sums, s, t, es, et, n, inv_t, &chunk, row, scale_s, \
                        scale_t, tile_s, tile_t, gsk, gtk)
#define VOCAB_OUTPUTS(div, with_sums)                                                        \
    do {                                                                                     \
        if (gsk && gtk)                                                                      \
            VOCAB_RANGE(div, 1, 1, with_sums);                                               \
        else if (gsk)                                                                        \
            VOCAB_RANGE(div, 1, 0, with_sums);                                               \
        else if (gtk)                                                                        \
            VOCAB_RANGE(div, 0, 1, with_sums);                                               \
        else                                                                                 \
            VOCAB_RANGE(div, 0, 0, with_sums);                                               \
    } while (0)
        if (divergence == FASTLOSS_DIVERGENCE_FORWARD_KL) {
            if (sums)
                VOCAB_OUTPUTS(FASTLOSS_DIVERGENCE_FORWARD_KL, 1);
            else
                VOCAB_OUTPUTS(FASTLOSS_DIVERGENCE_FORWARD_KL, 0);
        } else if (divergence == FASTLOSS_DIVERGENCE_REVERSE_KL) {
            if (sums)
                VOCAB_OUTPUTS(FASTLOSS_DIVERGENCE_REVERSE_KL, 1);
            else
                VOCAB_OUTPUTS(FASTLOSS_DIVERGENCE_REVERSE_KL, 0);
        } else {
            if (sums)
                VOCAB_OUTPUTS(FASTLOSS_DIVERGENCE_JSD, 1);
            else
                VOCAB_OUTPUTS(FASTLOSS_DIVERGENCE_JSD, 0);
        }
#undef VOCAB_OUTPUTS
#undef VOCAB_RANGE
        if (sums && divergence != FASTLOSS_DIVERGENCE_REVERSE_KL)
            sum_t += NAME(vocab_sum)(tile_t, n);
        if (sums && divergence != FASTLOSS_DIVERGENCE_FORWARD_KL)
            sum_s += NAME(vocab_sum)(tile_s, n);
    }
    if (sums) {
        *kl_s = sum_s;
        *kl_t = sum_t;
    }
}

static void NAME(distill_rows)(const NAME(distill_job) *job, int thread, int n_threads)
{
    const fastloss_vocab_options *options = job->options;
    const fastloss_index n_classes = options->n_classes, n_chunks = job->n_chunks;
    const int divergence = options->divergence;
    const double inv_temperature = 1.0 / options->temperature;
    const double beta = options->beta;
    char *mine = job->scratch + job->per_thread * (size_t)thread;
    double *student_chunks = (double *)mine;
    double *teacher_chunks = student_chunks + n_chunks * VOCAB_CHUNK_FIELDS;
    mine += ((size_t)n_chunks * 2 * VOCAB_CHUNK_FIELDS * sizeof(double) + 63) / 64 * 64;
    REAL *tile_s = (REAL *)mine;
    REAL *tile_t = tile_s + FASTLOSS_VOCAB_CHUNK;
    mine += (2 * FASTLOSS_VOCAB_CHUNK * sizeof(REAL) + 63) / 64 * 64;
    REAL *es_row = (REAL *)mine;
    REAL *et_row = (REAL *)(mine + ((size_t)n_classes * sizeof(REAL) + 63) / 64 * 64);
    NAME(distill_row) row;
    row.log_beta = (REAL)log(beta);
    row.log_beta_c = (REAL)log1p(-beta);
    row.log_odds = (REAL)(log(beta) - log1p(-beta));
    VOCAB_ROW_RANGE(options->n_rows, thread, n_threads, begin, end);
    for (fastloss_index i = begin; i < end; ++i) {
        const STORE_T *xs = job->student + i * job->student_row_stride;
        const STORE_T *xt = job->teacher + i * job->teacher_row_stride;
        GRAD_T *gs = job->grad_student ? job->grad_student + i * job->grad_student_row_stride
                                        : NULL;
        GRAD_T *gt = job->grad_teacher ? job->grad_teacher + i * job->grad_teacher_row_stride
                                        : NULL;
        if (job->target && job->target[i] == options->ignore_index) {
            job->row_loss[i] = 0.0;
            for (fastloss_index c = 0; c < n_classes; ++c) {
                if (gs)
                    STORE(gs, c, (REAL)0);
                if (gt)
                    STORE(gt, c, (REAL)0);
            }
            continue;
        }
        /* pass A: each row's max and sum of exps, read from memory once; the exps stay
         * in the rows es_row, et_row */
        vocab_row_stats student, teacher;
        NAME(vocab_row_stats)(xs, n_classes, n_chunks, inv_temperature, -1, 0, 1,
                              es_row, student_chunks, &student);
        NAME(vocab_row_stats)(xt, n_classes, n_chunks, inv_temperature, -1, 0, 1,
                              et_row, teacher_chunks, &teacher);
        /* A row with no finite log-sum-exp (a +inf or NaN logit, or every logit -inf)
         * has no distribution: its loss and gradients are NaN. */
        const int finite = isfinite(student.max) && isfinite(student.log_sum) &&
                           isfinite(teacher.max) && isfinite(teacher.log_sum);
        const double upstream = job->grad_output[i * job->grad_output_stride];
        const double scale = finite ? upstream * job->factor * inv_temperature : NAN;
        const double weight_s = divergence == FASTLOSS_DIVERGENCE_JSD ? 1.0 - beta : 1.0;
        const double weight_t = divergence == FASTLOSS_DIVERGENCE_JSD ? beta : 1.0;
        const REAL scale_s = (REAL)(scale * weight_s), scale_t = (REAL)(scale * weight_t);
        /* the gradients that subtract no row total can be written in the pass that sums
         * the divergence; the others need pass B's totals first */
        const int needs_totals = (gs && divergence != FASTLOSS_DIVERGENCE_FORWARD_KL) ||
                                 (gt && divergence != FASTLOSS_DIVERGENCE_REVERSE_KL);
        double kl_s = 0.0, kl_t = 0.0;
        row.kl_s = row.kl_t = 0;
        /* pass B: the divergence (with the gradients when they need no totals) */
        NAME(distill_pass)(divergence, 1, xs, xt, es_row, et_row, n_classes, n_chunks,
                           inv_temperature, student_chunks, teacher_chunks, &student, &teacher,
                           &row, scale_s, scale_t, tile_s, tile_t, needs_totals ? NULL : gs,
                           needs_totals ? NULL : gt, &kl_s, &kl_t);
        /* pass C: the gradients that subtract the totals, the rows again from the cache */
        if (needs_totals) {
            row.kl_s = (REAL)kl_s;
            row.kl_t = (REAL)kl_t;
            NAME(distill_pass)(divergence, 0, xs, xt, es_row, et_row, n_classes, n_chunks,
                               inv_temperature, student_chunks, teacher_chunks, &student,
                               &teacher, &row, scale_s, scale_t, tile_s, tile_t, gs, gt, NULL,
                               NULL);
        }
        const double loss = divergence == FASTLOSS_DIVERGENCE_FORWARD_KL   ? kl_t
                            : divergence == FASTLOSS_DIVERGENCE_REVERSE_KL ? kl_s
                                                                           : beta * kl_t + (1.0 - beta) * kl_s;
        job->row_loss[i] = finite ? loss : NAN;
    }
}

int DISTILL_RUN(const fastloss_vocab_options *options, const void *student_data,
                fastloss_index student_row_stride, const void *teacher_data,
                fastloss_index teacher_row_stride, const int64_t *target, double *loss_per_row,
                double *loss, const double *grad_output, fastloss_index grad_output_stride,
                void *grad_student_data, fastloss_index grad_student_row_stride,
                void *grad_teacher_data, fastloss_index grad_teacher_row_stride)
{
    const fastloss_index n_rows = options->n_rows, n_classes = options->n_classes;
    /* the batch mean's denominator: the rows not ignored */
    double n_valid = (double)n_rows;
    if (target) {
        n_valid = 0.0;
        for (fastloss_index i = 0; i < n_rows; ++i)
            n_valid += target[i] != options->ignore_index ? 1.0 : 0.0;
    }
    const double factor = options->reduction == FASTLOSS_VOCAB_BATCHMEAN ? 1.0 / n_valid : 1.0;
    const double one = 1.0;
    const fastloss_index n_chunks = (n_classes + FASTLOSS_VOCAB_CHUNK - 1) / FASTLOSS_VOCAB_CHUNK;
    int threads = fastloss_effective_threads(options->num_threads, n_rows * n_classes);
    if (threads > n_rows)
        threads = n_rows > 1 ? (int)n_rows : 1;
    const size_t per_thread = NAME(distill_scratch_bytes)(n_chunks, n_classes);
    char *allocation = malloc(per_thread * (size_t)threads + 64 +
                              (size_t)(n_rows > 0 ? n_rows : 1) * sizeof(double));
    if (!allocation)
        return FASTLOSS_ERROR_NO_MEMORY;
    char *scratch = (char *)(((uintptr_t)allocation + 63) & ~(uintptr_t)63);
    double *row_loss = (double *)(scratch + per_thread * (size_t)threads);
    NAME(distill_job) job = {options, (const STORE_T *)student_data,
                             (const STORE_T *)teacher_data, student_row_stride,
                             teacher_row_stride, target, row_loss,
                             grad_output ? grad_output : &one,
                             grad_output ? grad_output_stride : 0, factor,
                             (GRAD_T *)grad_student_data, (GRAD_T *)grad_teacher_data,
                             grad_student_row_stride, grad_teacher_row_stride, n_chunks,
                             scratch, per_thread};
    if (threads == 1) {
        NAME(distill_rows)(&job, 0, 1);
    } else {
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
        NAME(distill_rows)(&job, omp_get_thread_num(), omp_get_num_threads());
#endif
    }
    if (loss_per_row)
        for (fastloss_index i = 0; i < n_rows; ++i)
            loss_per_row[i] = row_loss[i];
    if (loss) {
        const double total = fastloss_sum_float64(row_loss, n_rows);
        *loss = options->reduction == FASTLOSS_VOCAB_BATCHMEAN ? total / n_valid : total;
    }
    free(allocation);
    return FASTLOSS_OK;
}

#undef VOCAB_ROW_RANGE
