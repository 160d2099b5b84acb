/*
 * vocab_body.h -- the rows and runners of vocab.c, written once per storage type.  No
 * include guard, on purpose: vocab_impl.h includes it between storage_begin.h and
 * storage_end.h (STORE_T, REAL, LOAD, STORE, STORE_WIDE; see storage.h) with
 *   NAME(name)     the instantiation's name of a routine (name_<storage>_<isa>)
 *   TLP_RUN        the token log-probabilities runner's name
 *   DISTILL_RUN    the distillation runner's name
 *   REAL_EXP_NONPOSITIVE, REAL_LOG1P_UNIT   fastmath.h's vectorisable exp for x <= 0 and
 *                  log(1 + u) on [0, 1], in REAL
 * Every array is read through LOAD and written through STORE; the per-element work is
 * in REAL, every sum in double (FASTLOSS_LANES accumulators in a fixed order).
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

/* e_c = exp(a_c) and (when weighted is not NULL) e_c a_c, a_c = (x_c - shift) / T, for
 * one chunk.  e a is 0 where e is (a = -inf: a masked class, whose 0 log 0 is 0). */
FASTLOSS_INLINE void NAME(vocab_exps)(const STORE_T *FASTLOSS_RESTRICT x, fastloss_index n,
                                     REAL shift, REAL inv_temperature,
                                     REAL *FASTLOSS_RESTRICT exps,
                                     REAL *FASTLOSS_RESTRICT weighted)
{
    if (weighted) {
        for (fastloss_index c = 0; c < n; ++c) {
            const REAL a = ((REAL)LOAD(x, c) - shift) * inv_temperature;
            const REAL e = REAL_EXP_NONPOSITIVE(a);
            exps[c] = e;
            weighted[c] = e == (REAL)0 ? (REAL)0 : e * a;
        }
    } else {
        for (fastloss_index c = 0; c < n; ++c)
            exps[c] = REAL_EXP_NONPOSITIVE(((REAL)LOAD(x, c) - shift) * inv_temperature);
    }
}

/*
 * The softmax statistics of one row (vocab_internal.h: vocab_row_stats), chunk by
 * chunk: a sweep for the chunk's max (which brings it from memory), one for its exps
 * (from L1), the sums of the tiles in double; then the chunks' records merge.  The
 * target's term (target: its position, or -1) is left out of the lanes and added last,
 * so that `others` holds the sum without it (1 - p_t = others / S keeps its digits
 * where p_t is nearly 1).
 */
static void NAME(vocab_row_stats)(const STORE_T *x, fastloss_index n_classes,
                                  fastloss_index n_chunks, double inv_temperature,
                                  fastloss_index target, int need_weighted, REAL *tile_exps,
                                  REAL *tile_weighted, double *chunk_data,
                                  vocab_row_stats *stats)
{
    const REAL inv_t = (REAL)inv_temperature;
    for (fastloss_index k = 0; k < n_chunks; ++k) {
        const fastloss_index start = k * FASTLOSS_VOCAB_CHUNK;
        const fastloss_index n = n_classes - start < FASTLOSS_VOCAB_CHUNK ? n_classes - start
                                                                          : FASTLOSS_VOCAB_CHUNK;
        double *chunk = chunk_data + k * VOCAB_CHUNK_FIELDS;
        const REAL m = NAME(vocab_max)(x + start, n);
        /* a chunk of -inf gets shift 0, so that exp sees -inf rather than NaN */
        const REAL shift = m == -(REAL)INFINITY ? (REAL)0 : m;
        NAME(vocab_exps)(x + start, n, shift, inv_t, tile_exps,
                         need_weighted ? tile_weighted : NULL);
        const fastloss_index t = target - start;
        REAL e_t = 0;
        if (t >= 0 && t < n) {
            e_t = tile_exps[t];
            tile_exps[t] = 0;
        }
        const double others = NAME(vocab_sum)(tile_exps, n);
        chunk[VOCAB_CHUNK_MAX] = (double)m;
        chunk[VOCAB_CHUNK_OTHERS] = others;
        chunk[VOCAB_CHUNK_SUM] = others + (double)e_t;
        chunk[VOCAB_CHUNK_WEIGHTED] = need_weighted ? NAME(vocab_sum)(tile_weighted, n) : 0.0;
    }
    vocab_merge_chunks(chunk_data, n_chunks, inv_temperature, stats);
}

/* Per-thread scratch: chunk records and two tiles of a chunk. */
static size_t NAME(vocab_scratch_bytes)(fastloss_index n_chunks)
{
    const size_t bytes = (size_t)n_chunks * VOCAB_CHUNK_FIELDS * sizeof(double) +
                         2 * FASTLOSS_VOCAB_CHUNK * sizeof(REAL);
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
    STORE_T *grad;
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
 * where p_t is nearly 1), and the target is written from double.
 */
static void NAME(tlp_row_grad)(const STORE_T *x, fastloss_index n_classes,
                               fastloss_index target, double inv_temperature,
                               const vocab_row_stats *stats, double upstream_log_prob,
                               double upstream_entropy, STORE_T *g)
{
    const double mean_a = stats->weighted / stats->sum;
    const double scale = inv_temperature / stats->sum;
    const REAL coef_a = (REAL)(-(upstream_log_prob - upstream_entropy * mean_a) * scale);
    const REAL coef_b = (REAL)(-upstream_entropy * scale);
    const REAL max = (REAL)stats->max;
    const REAL inv_t = (REAL)inv_temperature;
    for (fastloss_index c = 0; c < n_classes; ++c) {
        const REAL a = ((REAL)LOAD(x, c) - max) * inv_t;
        const REAL e = REAL_EXP_NONPOSITIVE(a);
        STORE(g, c, e == (REAL)0 ? (REAL)0 : e * (coef_a + coef_b * a));
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
    REAL *tile_exps = (REAL *)(chunk_data + job->n_chunks * VOCAB_CHUNK_FIELDS);
    REAL *tile_weighted = tile_exps + FASTLOSS_VOCAB_CHUNK;
    const int need_weighted = job->entropy != NULL || job->grad_entropy != NULL;
    VOCAB_ROW_RANGE(options->n_rows, thread, n_threads, begin, end);
    for (fastloss_index i = begin; i < end; ++i) {
        const STORE_T *x = job->logits + i * job->logits_row_stride;
        STORE_T *g = job->grad ? job->grad + i * job->grad_row_stride : NULL;
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
        vocab_row_stats stats;
        NAME(vocab_row_stats)(x, n_classes, job->n_chunks, inv_temperature, t, need_weighted,
                              tile_exps, tile_weighted, chunk_data, &stats);
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
                NAME(tlp_row_grad)(x, n_classes, t, inv_temperature, &stats,
                                   upstream_log_prob, upstream_entropy, g);
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
    const size_t per_thread = NAME(vocab_scratch_bytes)(n_chunks);
    char *allocation = malloc(per_thread * (size_t)threads + 64);
    if (!allocation)
        return FASTLOSS_ERROR_NO_MEMORY;
    char *scratch = (char *)(((uintptr_t)allocation + 63) & ~(uintptr_t)63);
    NAME(tlp_job) job = {options, (const STORE_T *)logits_data, logits_row_stride, target,
                         log_prob, entropy, grad_log_prob, grad_entropy,
                         grad_log_prob_stride, grad_entropy_stride, (STORE_T *)grad_data,
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
    REAL max_s, max_t;       /* the rows' maxima M_s, M_t */
    REAL inv_sum_s, inv_sum_t; /* 1 / S_s, 1 / S_t */
    REAL log_ratio;          /* log S_t - log S_s: log p - log q = (a_t - a_s) - log_ratio */
    REAL log_beta, log_beta_c; /* log beta, log(1 - beta) (JSD) */
    REAL log_odds;           /* log beta - log(1 - beta) */
    REAL kl_s, kl_t;         /* the row totals the gradients subtract (pass B) */
} NAME(distill_row);

typedef struct NAME(distill_job) {
    const fastloss_vocab_options *options;
    const STORE_T *student, *teacher;
    fastloss_index student_row_stride, teacher_row_stride;
    const int64_t *target;
    double *row_loss;
    const double *grad_output;
    fastloss_index grad_output_stride;
    double factor; /* 1 / the valid rows for the batch mean, else 1 */
    STORE_T *grad_student, *grad_teacher;
    fastloss_index grad_student_row_stride, grad_teacher_row_stride;
    fastloss_index n_chunks;
    char *scratch;
    size_t per_thread;
} NAME(distill_job);

/*
 * Pass B over one row (both inputs from the cache): the divergence's two sums,
 *   K_t = sum_c p_c (log p_c - log r_c),  K_s = sum_c q_c (log q_c - log r_c)
 * with r = q for the forward KL (only K_t), r = p for the reverse KL (only K_s), and
 * r = m = beta p + (1 - beta) q for the JSD.  Terms are formed in REAL a tile at a
 * time, summed in double.  A class whose probability is 0 adds 0 (0 log 0 = 0, also
 * where its log-probability is -inf); NaN propagates.
 */
static void NAME(distill_row_sums)(int divergence, const STORE_T *xs, const STORE_T *xt,
                                   fastloss_index n_classes, REAL inv_t,
                                   const NAME(distill_row) *row, REAL *tile_s, REAL *tile_t,
                                   double *kl_s, double *kl_t)
{
    double sum_s = 0.0, sum_t = 0.0;
    for (fastloss_index start = 0; start < n_classes; start += FASTLOSS_VOCAB_CHUNK) {
        const fastloss_index n = n_classes - start < FASTLOSS_VOCAB_CHUNK ? n_classes - start
                                                                          : FASTLOSS_VOCAB_CHUNK;
        const STORE_T *s = xs + start, *t = xt + start;
        if (divergence == FASTLOSS_DIVERGENCE_FORWARD_KL) {
            for (fastloss_index c = 0; c < n; ++c) {
                const REAL a_s = ((REAL)LOAD(s, c) - row->max_s) * inv_t;
                const REAL a_t = ((REAL)LOAD(t, c) - row->max_t) * inv_t;
                const REAL e_t = REAL_EXP_NONPOSITIVE(a_t);
                const REAL p = e_t * row->inv_sum_t;
                tile_t[c] = e_t == (REAL)0 ? (REAL)0 : p * ((a_t - a_s) - row->log_ratio);
            }
            sum_t += NAME(vocab_sum)(tile_t, n);
        } else if (divergence == FASTLOSS_DIVERGENCE_REVERSE_KL) {
            for (fastloss_index c = 0; c < n; ++c) {
                const REAL a_s = ((REAL)LOAD(s, c) - row->max_s) * inv_t;
                const REAL a_t = ((REAL)LOAD(t, c) - row->max_t) * inv_t;
                const REAL e_s = REAL_EXP_NONPOSITIVE(a_s);
                const REAL q = e_s * row->inv_sum_s;
                tile_s[c] = e_s == (REAL)0 ? (REAL)0 : q * ((a_s - a_t) + row->log_ratio);
            }
            sum_s += NAME(vocab_sum)(tile_s, n);
        } else {
            /* delta = log(beta p) - log((1 - beta) q); log m is the larger of the two
             * plus L = log1p(exp(-|delta|)), so that
             *   log p - log m = min(delta, 0) - log beta - L
             *   log q - log m = -max(delta, 0) - log(1 - beta) - L
             * with no log of a probability (exact where either underflows) */
            for (fastloss_index c = 0; c < n; ++c) {
                const REAL a_s = ((REAL)LOAD(s, c) - row->max_s) * inv_t;
                const REAL a_t = ((REAL)LOAD(t, c) - row->max_t) * inv_t;
                const REAL e_s = REAL_EXP_NONPOSITIVE(a_s);
                const REAL e_t = REAL_EXP_NONPOSITIVE(a_t);
                const REAL delta = ((a_t - a_s) - row->log_ratio) + row->log_odds;
                const REAL abs_delta = delta < (REAL)0 ? -delta : delta;
                const REAL mix = REAL_LOG1P_UNIT(REAL_EXP_NONPOSITIVE(-abs_delta));
                const REAL gap_t = ((delta < (REAL)0 ? delta : (REAL)0) - row->log_beta) - mix;
                const REAL gap_s = ((delta > (REAL)0 ? -delta : (REAL)0) - row->log_beta_c) - mix;
                tile_t[c] = e_t == (REAL)0 ? (REAL)0 : (e_t * row->inv_sum_t) * gap_t;
                tile_s[c] = e_s == (REAL)0 ? (REAL)0 : (e_s * row->inv_sum_s) * gap_s;
            }
            sum_t += NAME(vocab_sum)(tile_t, n);
            sum_s += NAME(vocab_sum)(tile_s, n);
        }
    }
    *kl_s = sum_s;
    *kl_t = sum_t;
}

/*
 * Pass C: the gradients of one row, scale = grad_output * factor / T:
 *   student  forward  scale (q - p)
 *            reverse  scale q (log q - log p - K_s)
 *            JSD      scale (1 - beta) q (log q - log m - K_s)
 *   teacher  forward  scale p (log p - log q - K_t)
 *            reverse  scale (p - q)
 *            JSD      scale beta p (log p - log m - K_t)
 * (the softmax's Jacobian applied to d loss / d log q and d loss / d log p).
 */
static void NAME(distill_row_grad)(int divergence, const STORE_T *xs, const STORE_T *xt,
                                   fastloss_index n_classes, REAL inv_t,
                                   const NAME(distill_row) *row, REAL scale_s, REAL scale_t,
                                   STORE_T *gs, STORE_T *gt)
{
    for (fastloss_index c = 0; c < n_classes; ++c) {
        const REAL a_s = ((REAL)LOAD(xs, c) - row->max_s) * inv_t;
        const REAL a_t = ((REAL)LOAD(xt, c) - row->max_t) * inv_t;
        const REAL e_s = REAL_EXP_NONPOSITIVE(a_s);
        const REAL e_t = REAL_EXP_NONPOSITIVE(a_t);
        const REAL q = e_s * row->inv_sum_s, p = e_t * row->inv_sum_t;
        const REAL log_pq = (a_t - a_s) - row->log_ratio; /* log p - log q */
        REAL g_s, g_t;
        if (divergence == FASTLOSS_DIVERGENCE_FORWARD_KL) {
            g_s = q - p;
            g_t = e_t == (REAL)0 ? (REAL)0 : p * (log_pq - row->kl_t);
        } else if (divergence == FASTLOSS_DIVERGENCE_REVERSE_KL) {
            g_s = e_s == (REAL)0 ? (REAL)0 : q * (-log_pq - row->kl_s);
            g_t = p - q;
        } else {
            const REAL delta = log_pq + row->log_odds;
            const REAL abs_delta = delta < (REAL)0 ? -delta : delta;
            const REAL mix = REAL_LOG1P_UNIT(REAL_EXP_NONPOSITIVE(-abs_delta));
            const REAL gap_t = ((delta < (REAL)0 ? delta : (REAL)0) - row->log_beta) - mix;
            const REAL gap_s = ((delta > (REAL)0 ? -delta : (REAL)0) - row->log_beta_c) - mix;
            g_s = e_s == (REAL)0 ? (REAL)0 : q * (gap_s - row->kl_s);
            g_t = e_t == (REAL)0 ? (REAL)0 : p * (gap_t - row->kl_t);
        }
        if (gs)
            STORE(gs, c, scale_s * g_s);
        if (gt)
            STORE(gt, c, scale_t * g_t);
    }
}

static void NAME(distill_rows)(const NAME(distill_job) *job, int thread, int n_threads)
{
    const fastloss_vocab_options *options = job->options;
    const fastloss_index n_classes = options->n_classes;
    const int divergence = options->divergence;
    const double inv_temperature = 1.0 / options->temperature;
    const REAL inv_t = (REAL)inv_temperature;
    const double beta = options->beta;
    char *mine = job->scratch + job->per_thread * (size_t)thread;
    double *chunk_data = (double *)mine;
    REAL *tile_s = (REAL *)(chunk_data + job->n_chunks * VOCAB_CHUNK_FIELDS);
    REAL *tile_t = tile_s + FASTLOSS_VOCAB_CHUNK;
    const int want_grad = job->grad_student != NULL || job->grad_teacher != NULL;
    VOCAB_ROW_RANGE(options->n_rows, thread, n_threads, begin, end);
    for (fastloss_index i = begin; i < end; ++i) {
        const STORE_T *xs = job->student + i * job->student_row_stride;
        const STORE_T *xt = job->teacher + i * job->teacher_row_stride;
        STORE_T *gs = job->grad_student ? job->grad_student + i * job->grad_student_row_stride
                                        : NULL;
        STORE_T *gt = job->grad_teacher ? job->grad_teacher + i * job->grad_teacher_row_stride
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
        /* pass A: each row's max and sum of exps, read from memory once */
        vocab_row_stats student, teacher;
        NAME(vocab_row_stats)(xs, n_classes, job->n_chunks, inv_temperature, -1, 0, tile_s,
                              tile_t, chunk_data, &student);
        NAME(vocab_row_stats)(xt, n_classes, job->n_chunks, inv_temperature, -1, 0, tile_s,
                              tile_t, chunk_data, &teacher);
        NAME(distill_row) row;
        row.max_s = (REAL)student.max;
        row.max_t = (REAL)teacher.max;
        row.inv_sum_s = (REAL)(1.0 / student.sum);
        row.inv_sum_t = (REAL)(1.0 / teacher.sum);
        row.log_ratio = (REAL)(teacher.log_sum - student.log_sum);
        row.log_beta = (REAL)log(beta);
        row.log_beta_c = (REAL)log1p(-beta);
        row.log_odds = (REAL)(log(beta) - log1p(-beta));
        /* pass B: the divergence (and the totals its gradients subtract) */
        double kl_s = 0.0, kl_t = 0.0;
        NAME(distill_row_sums)(divergence, xs, xt, n_classes, inv_t, &row, tile_s, tile_t,
                               &kl_s, &kl_t);
        const double loss = divergence == FASTLOSS_DIVERGENCE_FORWARD_KL   ? kl_t
                            : divergence == FASTLOSS_DIVERGENCE_REVERSE_KL ? kl_s
                                                                           : beta * kl_t + (1.0 - beta) * kl_s;
        /* A row with no finite log-sum-exp (a +inf or NaN logit, or every logit -inf)
         * has no distribution: its loss and gradients are NaN. */
        const int finite = isfinite(student.max) && isfinite(student.log_sum) &&
                           isfinite(teacher.max) && isfinite(teacher.log_sum);
        job->row_loss[i] = finite ? loss : NAN;
        if (!want_grad)
            continue;
        row.kl_s = (REAL)kl_s;
        row.kl_t = (REAL)kl_t;
        const double upstream = job->grad_output[i * job->grad_output_stride];
        const double scale = finite ? upstream * job->factor * inv_temperature : NAN;
        const double weight_s = divergence == FASTLOSS_DIVERGENCE_JSD ? 1.0 - beta : 1.0;
        const double weight_t = divergence == FASTLOSS_DIVERGENCE_JSD ? beta : 1.0;
        /* pass C: the gradients, the rows again from the cache */
        NAME(distill_row_grad)(divergence, xs, xt, n_classes, inv_t, &row,
                               (REAL)(scale * weight_s), (REAL)(scale * weight_t), gs, gt);
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
    const size_t per_thread = NAME(vocab_scratch_bytes)(n_chunks);
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
                             (STORE_T *)grad_student_data, (STORE_T *)grad_teacher_data,
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
