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
 * value).  A NaN may win or be skipped: it reaches the row's sums either way.  The simd
 * loop runs over whole vectors of 64 bytes and a plain loop takes the tail, as
 * cross-entropy's ce_max (cross_entropy_row_body.h) does: gcc's scalar epilogue of a
 * simd reduction stalls on a store-forwarding miss. */
FASTLOSS_INLINE REAL NAME(vocab_max)(const STORE_T *values, fastloss_index n)
{
    const fastloss_index body = n / (64 / (fastloss_index)sizeof(REAL)) *
                                (64 / (fastloss_index)sizeof(REAL));
    REAL result = -(REAL)INFINITY;
#pragma omp simd reduction(max : result)
    for (fastloss_index c = 0; c < body; ++c) {
        const REAL value = LOAD(values, c);
        result = value > result ? value : result;
    }
    for (fastloss_index c = body; c < n; ++c) {
        const REAL value = LOAD(values, c);
        result = value > result ? value : result;
    }
    return result;
}

/*
 * exp(a) for a <= 0 in the token log-probabilities' statistics (vocab_range and the
 * target's term) and in the distillation (both models' exps, the JSD's log-add-exp): in
 * float, fastmath.h's fastloss_expf5_nonpositive, two vector operations shorter than
 * fastloss_expf_nonpositive and as accurate (within FASTLOSS_EXPF5_REL_ERROR; e = 0
 * below -87.34 rather than -87.3, both far below the contract); REAL's own otherwise.
 * The gradient pass rescales these kept exps, so both passes see the same e.  One
 * thread, N=8 (in cache), V=50257, float32, AVX-512, CPU time, loaded machine:
 * token_log_probs with entropy 0.187 -> 0.169 ns per element.
 */
FASTLOSS_INLINE REAL NAME(vocab_exp)(REAL a)
{
    if (sizeof(REAL) == sizeof(float))
        return (REAL)fastloss_expf5_nonpositive((float)a);
    return REAL_EXP_NONPOSITIVE(a);
}

/* |v| in REAL (one vector operation: a comparison and a negation would be three) */
FASTLOSS_INLINE REAL NAME(vocab_abs)(REAL v)
{
    if (sizeof(REAL) == sizeof(float))
        return (REAL)fabsf((float)v);
    return (REAL)fabs((double)v);
}

/* Adds the REAL partial sums to the double lanes and zeroes them (VOCAB_FOLDED_LOOP). */
FASTLOSS_INLINE void NAME(vocab_fold)(double *FASTLOSS_RESTRICT lane,
                                      REAL *FASTLOSS_RESTRICT part)
{
#pragma omp simd
    for (int j = 0; j < VOCAB_LANES; ++j) {
        lane[j] += (double)part[j];
        part[j] = 0;
    }
}

/*
 * The products e a of W = sum e a (vocab_range's with_w): VOCAB_W_PLAIN adds e a as it
 * is, VOCAB_W_FLOORED with a floor under a, so that a masked class (a = -inf, e = 0)
 * adds 0 rather than 0 * -inf (every a below the floor has e = 0: the exp gives 0 below
 * about -104, float, or -745.2, double; a NaN stays NaN).  The floor, a compare and a
 * blend per vector (gcc makes no vector max of it), is two of the loop's eighteen
 * vector operations, so the loop takes the plain products and a range whose W comes
 * out NaN while its S does not (only a 0 * -inf does that: a NaN or +inf logit makes S
 * NaN too) takes its W again, floored (vocab_weighted_floored): the same bits as the
 * floored loop for every row, at the price of a second exp pass over the ranges that
 * hold a -inf (masked classes): once per row, see vocab_range_stats.  One thread,
 * V=50257, float32, AVX-512, CPU time, load 5-6, least of 300 calls, three runs
 * alternated with main's build: token_log_probs with the entropy 0.277-0.278 -> 0.261-
 * 0.262 ns per element at N=4 (in cache), its gradient 0.42-0.46 -> 0.37-0.38;
 * callgrind (AVX2 under valgrind, N=16): 9.52 -> 8.88 million instructions.
 */
#define VOCAB_A_FLOOR ((REAL)-1e30)

/*
 * One element of vocab_range, lane j of the REAL partial sums: e = exp(a),
 * a = (x_i - shift) / T, kept (store) and summed, with e a (with_w: VOCAB_W_PLAIN, or
 * VOCAB_W_FLOORED, where a masked class, a = -inf, adds 0 log 0 = 0), and the max of
 * the next chunk's element i (with_next).
 */
#define VOCAB_RANGE_STEP(i, j)                                                     \
    do {                                                                           \
        const REAL a_ = ((REAL)LOAD(x, i) - shift) * inv_t;                        \
        const REAL e_ = NAME(vocab_exp)(a_);                                  \
        if (store)                                                                 \
            exps[i] = e_;                                                          \
        if (sums)                                                                  \
            part_s[j] += e_;                                                       \
        if (with_w)                                                                \
            part_w[j] += e_ * (with_w == VOCAB_W_FLOORED && a_ < VOCAB_A_FLOOR     \
                                   ? VOCAB_A_FLOOR                                 \
                                   : a_);                                          \
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
    REAL part_s[VOCAB_LANES] = {0}, part_w[VOCAB_LANES] = {0};
    REAL next_lane[VOCAB_LANES];
    for (int j = 0; j < VOCAB_LANES; ++j)
        next_lane[j] = -(REAL)INFINITY;
#define VOCAB_RANGE_PREFETCH(v)                                          \
    do {                                                                 \
        if (with_next) { /* see VOCAB_PREFETCH_AHEAD */                  \
            __builtin_prefetch(next + (v) + VOCAB_PREFETCH_AHEAD, 0, 3); \
            if (store)                                                   \
                __builtin_prefetch(exps + (v) + VOCAB_PREFETCH_AHEAD, 1, 3); \
        }                                                                \
    } while (0)
#define VOCAB_RANGE_FOLD()                                               \
    do {                                                                 \
        NAME(vocab_fold)(lane_s, part_s);                                \
        NAME(vocab_fold)(lane_w, part_w);                                \
    } while (0)
    VOCAB_FOLDED_LOOP(n, VOCAB_RANGE_STEP, VOCAB_RANGE_PREFETCH, VOCAB_RANGE_FOLD);
#undef VOCAB_RANGE_FOLD
#undef VOCAB_RANGE_PREFETCH
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

/* W = sum e_c a_c of a range with the floor under a (VOCAB_W_FLOORED), into *weighted:
 * vocab_range_stats' second pass over a range with a masked class (a function of its
 * own: only rows with masked classes call it). */
static void NAME(vocab_weighted_floored)(const STORE_T *x, fastloss_index n, REAL shift,
                                         REAL inv_t, double *weighted)
{
    double no_sum;
    NAME(vocab_range)(0, 0, VOCAB_W_FLOORED, 0, x, n, shift, inv_t, NULL, NULL, &no_sum,
                      weighted);
}

/* vocab_range with its sums (with_w: 0 or 1), W with the plain products e a, taken again
 * with the floor where it came out NaN from a 0 * -inf (VOCAB_W_FLOORED: where S is
 * not NaN); from then on (*floored set) the row's other ranges take the floored loop
 * at once, so that a row with masked classes in many ranges pays one range twice, not
 * each of them (the same bits either way). */
FASTLOSS_INLINE REAL NAME(vocab_range_stats)(const int store, const int with_w,
                                             const int with_next,
                                             const STORE_T *FASTLOSS_RESTRICT x,
                                             fastloss_index n, REAL shift, REAL inv_t,
                                             REAL *FASTLOSS_RESTRICT exps,
                                             const STORE_T *FASTLOSS_RESTRICT next,
                                             double *sum, double *weighted, int *floored)
{
    if (with_w && *floored)
        return NAME(vocab_range)(store, 1, VOCAB_W_FLOORED, with_next, x, n, shift, inv_t,
                                 exps, next, sum, weighted);
    const REAL next_max = NAME(vocab_range)(store, 1, with_w ? VOCAB_W_PLAIN : VOCAB_W_NONE,
                                            with_next, x, n, shift, inv_t, exps, next, sum,
                                            weighted);
    if (with_w && isnan(*weighted) && !isnan(*sum)) {
        NAME(vocab_weighted_floored)(x, n, shift, inv_t, weighted);
        *floored = 1;
    }
    return next_max;
}

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
                                               const STORE_T *x, fastloss_index n_classes,
                                               fastloss_index n_chunks, double inv_temperature,
                                               fastloss_index target, REAL *exps_row,
                                               double *chunk_data, vocab_row_stats *stats)
{
    const REAL inv_t = (REAL)inv_temperature;
    REAL m = NAME(vocab_max)(x, fastloss_vocab_chunk_length(n_classes, 0));
    int floored = 0; /* a range of this row has had a masked class (vocab_range_stats) */
    for (fastloss_index k = 0; k < n_chunks; ++k) {
        const fastloss_index start = k * FASTLOSS_VOCAB_CHUNK;
        const fastloss_index n = fastloss_vocab_chunk_length(n_classes, start);
        const fastloss_index next_start = start + n;
        const fastloss_index n_next = fastloss_vocab_chunk_length(n_classes, next_start);
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
            NAME(vocab_range_stats)(store, with_w, 0, xk, t, shift, inv_t, exps, NULL, &sum,
                                    &weighted, &floored);
            NAME(vocab_range_stats)(store, with_w, 0, xk + t + 1, n - t - 1, shift, inv_t,
                                    store ? exps + t + 1 : NULL, NULL, &sum_after,
                                    &weighted_after, &floored);
            const REAL a_t = ((REAL)LOAD(xk, t) - shift) * inv_t;
            const REAL e_t = NAME(vocab_exp)(a_t);
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
            m = NAME(vocab_range_stats)(store, with_w, 1, xk, both, shift, inv_t, exps, next,
                                        &sum, &weighted, &floored);
            if (both < n) { /* the row's last chunk (no next) or a short next chunk */
                double sum_rest = 0.0, weighted_rest = 0.0;
                NAME(vocab_range_stats)(store, with_w, 0, xk + both, n - both, shift, inv_t,
                                        store ? exps + both : NULL, NULL, &sum_rest,
                                        &weighted_rest, &floored);
                sum += sum_rest;
                weighted += weighted_rest;
            }
            if (both < n_next) {
                const REAL rest = NAME(vocab_max)(next + both, n_next - both);
                m = rest > m ? rest : m;
            }
            others = sum;
        }
        chunk[VOCAB_CHUNK_OTHERS] = others;
        chunk[VOCAB_CHUNK_SUM] = sum;
        chunk[VOCAB_CHUNK_WEIGHTED] = with_w ? weighted : 0.0;
        chunk[VOCAB_CHUNK_CROSS] = 0.0;
    }
    vocab_merge_chunks(chunk_data, n_chunks, inv_temperature, stats);
}

/* vocab_row_stats_mode with its modes picked once per row (each a loop of its own). */
FASTLOSS_INLINE void NAME(vocab_row_stats_modes)(const STORE_T *x, fastloss_index n_classes,
                                                fastloss_index n_chunks,
                                                double inv_temperature, fastloss_index target,
                                                int need_weighted, REAL *exps_row,
                                                double *chunk_data, vocab_row_stats *stats)
{
    if (exps_row && need_weighted)
        NAME(vocab_row_stats_mode)(1, 1, x, n_classes, n_chunks, inv_temperature, target,
                                   exps_row, chunk_data, stats);
    else if (exps_row)
        NAME(vocab_row_stats_mode)(1, 0, x, n_classes, n_chunks, inv_temperature, target,
                                   exps_row, chunk_data, stats);
    else if (need_weighted)
        NAME(vocab_row_stats_mode)(0, 1, x, n_classes, n_chunks, inv_temperature, target,
                                   NULL, chunk_data, stats);
    else
        NAME(vocab_row_stats_mode)(0, 0, x, n_classes, n_chunks, inv_temperature, target,
                                   NULL, chunk_data, stats);
}

/*
 * The statistics of a row (vocab_row_stats_mode), with T = 1, the usual case, as a
 * constant: the element loops then drop their multiply by 1 / T (x * 1 is x: the same
 * bits), one of the eleven multiplies and multiply-adds per vector of the loop with
 * the entropy.  One thread, V=50257, float32, AVX-512, CPU time, loaded machine:
 * token_log_probs with entropy 0.170 -> 0.150 ns per element at N=8 (in cache),
 * 0.208 -> 0.185 at N=512 (the logits read from memory once).
 */
static void NAME(vocab_row_stats)(const STORE_T *x, fastloss_index n_classes,
                                  fastloss_index n_chunks, double inv_temperature,
                                  fastloss_index target, int need_weighted, REAL *exps_row,
                                  double *chunk_data, vocab_row_stats *stats)
{
    if (inv_temperature == 1.0)
        NAME(vocab_row_stats_modes)(x, n_classes, n_chunks, 1.0, target, need_weighted,
                                    exps_row, chunk_data, stats);
    else
        NAME(vocab_row_stats_modes)(x, n_classes, n_chunks, inv_temperature, target,
                                    need_weighted, exps_row, chunk_data, stats);
}

/* Per-thread scratch: chunk records and, where the gradient row cannot hold the exps
 * (a half-precision or float32 gradient of half logits), a row of REAL for them. */
static size_t NAME(vocab_scratch_bytes)(fastloss_index n_chunks, fastloss_index n_classes)
{
    const size_t records = ((size_t)n_chunks * VOCAB_CHUNK_FIELDS * sizeof(double) + 63) / 64 * 64;
    const size_t bytes = records + (STORAGE_IS_COMPUTE ? 0 : (size_t)n_classes * sizeof(REAL));
    return (bytes + 63) / 64 * 64; /* each thread's part on its own cache lines */
}

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
    fastloss_index *next_row; /* the first row not yet claimed (common.h) */
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
 * in scratch, then stored (rounded once) to the gradient row.  A far row (`far`,
 * tlp_far_row) takes its exps again in double from the logits instead.
 */
static void NAME(tlp_row_grad)(const STORE_T *x, fastloss_index n_classes,
                               fastloss_index n_chunks, fastloss_index target,
                               double inv_temperature, const vocab_row_stats *stats,
                               const double *chunk_data, REAL *e_row, int far,
                               double upstream_log_prob, double upstream_entropy, GRAD_T *g)
{
    const double mean_a = stats->weighted / stats->sum;
    const double scale = inv_temperature / stats->sum;
    const double coef_a = -(upstream_log_prob - upstream_entropy * mean_a) * scale;
    const double coef_b = -upstream_entropy * scale;
    const REAL max = (REAL)stats->max;
    const REAL inv_t = (REAL)inv_temperature;
    if (far) { /* a far row (tlp_far_row): its exps in double, each entry rounded once */
#pragma omp simd
        for (fastloss_index c = 0; c < n_classes; ++c) {
            const double a = ((double)LOAD(x, c) - stats->max) * inv_temperature;
            const double e = fastloss_exp_nonpositive(a);
            STORE_WIDE(g, c, e == 0.0 ? 0.0 : e * (coef_a + coef_b * a));
        }
    } else if (!e_row) {
        const REAL a0 = (REAL)coef_a, b0 = (REAL)coef_b;
        for (fastloss_index c = 0; c < n_classes; ++c) {
            const REAL a = ((REAL)LOAD(x, c) - max) * inv_t;
            const REAL e = NAME(vocab_exp)(a);
            STORE(g, c, e == (REAL)0 ? (REAL)0 : e * (a0 + b0 * a));
        }
    } else {
        for (fastloss_index k = 0; k < n_chunks; ++k) {
            const fastloss_index start = k * FASTLOSS_VOCAB_CHUNK;
            const fastloss_index n = fastloss_vocab_chunk_length(n_classes, start);
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
    /* (a target the row rules out, a_t = -inf, has p_t = 0 and no entropy term: 0 log 0) */
    const double entropy_term = p_t == 0.0 ? 0.0 : upstream_entropy * p_t * (a_t - mean_a);
    STORE_WIDE(g, target, inv_temperature * (upstream_log_prob * complement - entropy_term));
}

/* The sum of a kept row of exps (REAL) over [0, n), in double. */
FASTLOSS_INLINE double NAME(tlp_kept_sum)(const REAL *e, fastloss_index n)
{
    double total = 0.0;
#pragma omp simd reduction(+ : total)
    for (fastloss_index c = 0; c < n; ++c)
        total += (double)e[c];
    return total;
}

/* sum_c exp((x_c - max) / T) over a row's classes but its (first) largest, for the
 * entropy of a row that class holds most of: there S = 1 + that sum, and the statistics'
 * lanes add the largest class's 1 to the others' terms, which leaves their sum only S's
 * absolute accuracy (u, or about 1e-7 in float's partial sums) where the entropy, about
 * that sum, needs its relative accuracy.  A second sweep of the row (from the cache at
 * the usual sizes), for such rows alone: those whose target is not that class (a target
 * holding most of the mass has its `others` from the first sweep).  Each chunk's exps
 * relative to its own max, as the statistics took them: kept there (`e_row`, with a
 * gradient; 0 at the target) or taken again into `buffer` (the same bits: the same
 * loop), the target's left out; each chunk's sum in double, rescaled, with the target's
 * e_t added: the same sum either way, so that the entropy of token_log_probs is that of
 * its value_and_grad.  One thread, V=50257, N=64, float32, AVX-512, every row that
 * confident (p = 1 - 1e-8) with another target: token_log_probs with the entropy 0.39 ->
 * 0.85 ms (0.39 where the target is the likely class), its value_and_grad 0.60 -> 0.75. */
static double NAME(tlp_others_of_max)(const STORE_T *x, fastloss_index n_classes,
                                      fastloss_index n_chunks, const vocab_row_stats *stats,
                                      double inv_temperature, const double *chunk_data,
                                      const REAL *e_row, REAL *buffer, fastloss_index target,
                                      double e_t)
{
    const REAL inv_t = (REAL)inv_temperature;
    fastloss_index top = 0;
    while (top < n_classes - 1 && (REAL)LOAD(x, top) != (REAL)stats->max)
        ++top;
    double total = target == top ? 0.0 : e_t;
    for (fastloss_index k = 0; k < n_chunks; ++k) {
        const fastloss_index start = k * FASTLOSS_VOCAB_CHUNK;
        const fastloss_index n = fastloss_vocab_chunk_length(n_classes, start);
        const double chunk_max = chunk_data[k * VOCAB_CHUNK_FIELDS + VOCAB_CHUNK_MAX];
        if (chunk_max == -INFINITY) /* every e 0 */
            continue;
        const REAL *e = e_row ? e_row + start : buffer;
        if (!e_row) {
            double unused_sum = 0.0, unused_weighted = 0.0;
            NAME(vocab_range)(1, 0, VOCAB_W_NONE, 0, x + start, n, (REAL)chunk_max, inv_t,
                              buffer, NULL, &unused_sum, &unused_weighted);
            if (target >= start && target < start + n)
                buffer[target - start] = 0;
        }
        const fastloss_index t = top - start;
        const double kept = t >= 0 && t < n ? NAME(tlp_kept_sum)(e, t) +
                                                  NAME(tlp_kept_sum)(e + t + 1, n - t - 1)
                                            : NAME(tlp_kept_sum)(e, n);
        total += exp((chunk_max - stats->max) * inv_temperature) * kept;
    }
    return total;
}

/*
 * A far row (common.h: fastloss_far_row_bound): its largest class leads every other so
 * far that their sum, relative to S, is below the bound.  Its statistics again in double
 * from the logits: S, W, the sum without the target, and (returned) the sum without the
 * (first) largest class.
 */
static double NAME(tlp_far_row)(const STORE_T *x, fastloss_index n_classes,
                                double inv_temperature, fastloss_index target,
                                vocab_row_stats *stats)
{
    const double max = stats->max;
    /* the largest class: the target, most often (no scan of the row then) */
    fastloss_index top = (double)LOAD(x, target) == max ? target : 0;
    while (top < n_classes - 1 && (double)LOAD(x, top) != max)
        ++top;
    double not_target = 0.0, not_top = 0.0, weighted = 0.0;
#pragma omp simd reduction(+ : not_target, not_top, weighted)
    for (fastloss_index c = 0; c < n_classes; ++c) {
        const double a = ((double)LOAD(x, c) - max) * inv_temperature;
        const double e = fastloss_exp_nonpositive(a);
        weighted += e == 0.0 ? 0.0 : e * a;
        not_target += c == target ? 0.0 : e;
        not_top += c == top ? 0.0 : e;
    }
    const double e_t = fastloss_exp_nonpositive(((double)LOAD(x, target) - max) * inv_temperature);
    stats->sum = not_target + e_t;
    stats->log_sum = log(stats->sum);
    stats->weighted = weighted;
    stats->others = not_target;
    return not_top;
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
    const double far_bound = fastloss_far_row_bound(n_classes);
    REAL chunk_exps[FASTLOSS_VOCAB_CHUNK]; /* tlp_others_of_max's, without a kept row */
    /* the rows claimed a few at a time by whichever thread is free (common.h) */
    const fastloss_index claim = fastloss_claim_items(options->n_rows, n_threads);
    fastloss_index begin, end;
    while (fastloss_claim_next(job->next_row, claim, options->n_rows, &begin, &end))
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
        NAME(vocab_row_stats)(x, n_classes, job->n_chunks, inv_temperature, t, need_weighted,
                              e_row, chunk_data, &stats);
        /* A row with no finite log-sum-exp (a +inf or NaN logit, or every logit -inf)
         * has no softmax: NaN, as torch's log_softmax gives. */
        const int finite = isfinite(stats.max) && isfinite(stats.log_sum);
        const double a_t = ((double)LOAD(x, t) - stats.max) * inv_temperature;
        const double e_t = finite ? exp(a_t) : 0.0;
        const int dominant = finite && e_t >= stats.others;
        /* another class holds most of the mass (S < 2): log S as log1p of the others'
         * sum without it (tlp_others_of_max), for the entropy */
        const int other_top = job->entropy && finite && !dominant && stats.sum < 2.0;
        double others_of_max =
            other_top ? NAME(tlp_others_of_max)(x, n_classes, job->n_chunks, &stats,
                                                inv_temperature, chunk_data, e_row,
                                                chunk_exps, t, e_t)
                      : 0.0;
        /* a far row (tlp_far_row): where its result is about the sum without its largest
         * class, that sum's statistics again in double */
        const int far = sizeof(REAL) == sizeof(float) &&
                        ((dominant && stats.others < stats.sum * far_bound) ||
                         (other_top && others_of_max < stats.sum * far_bound));
        if (far)
            others_of_max = NAME(tlp_far_row)(x, n_classes, inv_temperature, t, &stats);
        /* log p_t = a_t - log S; where the target holds at least half the mass, as
         * -log1p(others / e_t) instead, and log S as a_t + log1p(others / e_t): a
         * converged row's log p_t and entropy are tiny, and log S of an S near 1 would
         * keep only their absolute accuracy */
        const double share = dominant ? log1p(stats.others / e_t) : 0.0;
        const double log_prob = dominant ? -share : a_t - stats.log_sum;
        const double log_sum = dominant ? a_t + share
                               : other_top ? log1p(others_of_max) : stats.log_sum;
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
                                   chunk_data, e_row, far, upstream_log_prob,
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
    fastloss_index next_row = 0;
    NAME(tlp_job) job = {options, (const STORE_T *)logits_data, logits_row_stride, target,
                         log_prob, entropy, grad_log_prob, grad_entropy,
                         grad_log_prob_stride, grad_entropy_stride, (GRAD_T *)grad_data,
                         grad_row_stride, n_chunks, scratch, per_thread, &next_row};
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

/*
 * The divergences are sums of terms that are all >= 0, from y_c = log q_c - log p_c and
 * g(y) = exp(y) - 1 - y >= 0 (vocab.c): KL(P || Q) = sum_c p g(y), so that a close pair's
 * divergence, of the order of y**2, is not what is left of terms of the order of y that
 * cancel.  g is its series y**2 sum_k y**k / (k + 2)! (vocab_g_series) where |y| is below
 * DISTILL_SERIES_BELOW (the tail cut off is below 4e-9 of g in float, 1.4e-18 in double,
 * a tenth of a rounding) and the term's own q - p - p y beyond it (a cancellation
 * of a factor of at most 6.5 in float at |y| = 1, 75 in double at |y| = 1/4).  The JSD's
 * series branch is narrower in float (|y| < log 2), so that log1p((1 - beta) expm1(y))
 * and log1p(beta expm1(-y)) have arguments in [-1/2, 1], REAL_LOG1P_UNIT's range.
 */
#define DISTILL_IN_DOUBLE (sizeof(REAL) == sizeof(double))
#define DISTILL_TINY ((REAL)(DISTILL_IN_DOUBLE ? DBL_MIN : FLT_MIN))
#define DISTILL_SERIES_BELOW ((REAL)(DISTILL_IN_DOUBLE ? 0.25 : 1.0))
#define DISTILL_JSD_SERIES_BELOW ((REAL)(DISTILL_IN_DOUBLE ? 0.25 : 0.69314718055994531))
#define DISTILL_SERIES_TERMS (DISTILL_IN_DOUBLE ? 12 : 10)
/* Pass A's expm1 (for the sums D, distill_offsets) needs less: in float, |w| < 1/2 and 7
 * terms (the tail is below 4.3e-8 of g there); the rest is the exps' e_t - e_s. */
#define DISTILL_A_BELOW ((REAL)(DISTILL_IN_DOUBLE ? 0.25 : 0.5))
#define DISTILL_A_TERMS (DISTILL_IN_DOUBLE ? 12 : 7)

/* g(y) / y**2 = sum_k y**k / (k + 2)! for |y| < DISTILL_SERIES_BELOW, by Horner's rule
 * written out (no loop: gcc would not unroll three of them in the JSD's element step, and
 * a loop left inside keeps the element loop from vectorising); the steps past
 * DISTILL_SERIES_TERMS are constant-false and fold away. */
#define DISTILL_HORNER(k)                                                          \
    if ((k) <= terms - 2)                                                          \
    poly = poly * y + (REAL)vocab_g_series[k]
FASTLOSS_INLINE REAL NAME(distill_series_of)(REAL y, const int terms)
{
    REAL poly = (REAL)vocab_g_series[terms - 1];
    DISTILL_HORNER(12);
    DISTILL_HORNER(11);
    DISTILL_HORNER(10);
    DISTILL_HORNER(9);
    DISTILL_HORNER(8);
    DISTILL_HORNER(7);
    DISTILL_HORNER(6);
    DISTILL_HORNER(5);
    DISTILL_HORNER(4);
    DISTILL_HORNER(3);
    DISTILL_HORNER(2);
    DISTILL_HORNER(1);
    DISTILL_HORNER(0);
    return poly;
}
#undef DISTILL_HORNER
/* The JSD's u = log m - log p = K_(1 - beta)(y) and v = log m - log q = K_beta(-y) near 0,
 * K_pi the cumulant generating function of a Bernoulli(pi) variable
 * (vocab_bernoulli_cgf, analytic for |y| < pi): DISTILL_JSD_TERMS terms of its series,
 * for |y| < DISTILL_JSD_SERIES_BELOW, leave less than 6e-10 of it out in float (|y| <
 * log 2, 12 terms), 3e-16 in double (|y| < 1/4, 16 terms); the series of the JSD's term
 * m f(y) (DISTILL_STEP), DISTILL_JSD_F_TERMS terms, less than 3.1e-9 of f (13 terms) and
 * 4e-18 (16 terms), for beta in [0.01, 0.99] (mpmath, 200 points of each range); nearer 0
 * or 1 the coefficients come from the smaller of beta and 1 - beta (vocab_bernoulli_cgf)
 * and tests/test_distill.py holds beta = 1e-16 .. 1 - 1e-12 to the contract.
 * Polynomials rather than log1p((1 - beta) expm1(y)): no division (three per element,
 * which set the JSD's speed). */
#define DISTILL_JSD_TERMS (DISTILL_IN_DOUBLE ? 16 : 12)
#define DISTILL_JSD_F_TERMS (DISTILL_IN_DOUBLE ? 16 : 13)
#define DISTILL_CGF_HORNER(k)                                                      \
    if ((k) <= terms - 2)                                                          \
    poly = poly * t + coef[k]
/* sum_k coef[k] t**k, k < terms (at most 16), by Horner's rule written out */
FASTLOSS_INLINE REAL NAME(distill_cgf)(const REAL *coef, REAL t, const int terms)
{
    REAL poly = coef[terms - 1];
    DISTILL_CGF_HORNER(14);
    DISTILL_CGF_HORNER(13);
    DISTILL_CGF_HORNER(12);
    DISTILL_CGF_HORNER(11);
    DISTILL_CGF_HORNER(10);
    DISTILL_CGF_HORNER(9);
    DISTILL_CGF_HORNER(8);
    DISTILL_CGF_HORNER(7);
    DISTILL_CGF_HORNER(6);
    DISTILL_CGF_HORNER(5);
    DISTILL_CGF_HORNER(4);
    DISTILL_CGF_HORNER(3);
    DISTILL_CGF_HORNER(2);
    DISTILL_CGF_HORNER(1);
    DISTILL_CGF_HORNER(0);
    return poly;
}
#undef DISTILL_CGF_HORNER

/* g(y) / y**2 for |y| < DISTILL_SERIES_BELOW */
#define DISTILL_G(y) NAME(distill_series_of)(y, DISTILL_SERIES_TERMS)


/* The per-row numbers of the element passes, in REAL (see vocab.c for the formulas). */
typedef struct NAME(distill_row) {
    REAL beta, beta_c;         /* beta, 1 - beta (JSD) */
    REAL cgf[VOCAB_CGF_TERMS]; /* near 0, the smaller of u and v is y times this series (JSD) */
    REAL jsd_f[VOCAB_CGF_TERMS]; /* near 0, the JSD's term is m y**2 times this series */
    REAL u_of_y, v_of_y;       /* u = that + u_of_y y and v = that + v_of_y y: 0 or +-1 (JSD) */
    REAL log_beta, log_beta_c; /* log beta, log(1 - beta) (JSD) */
    REAL log_odds;             /* log beta - log(1 - beta) */
    /* pass C's constants (distill_heaviest): per model, the reference class (the
     * heaviest, or -1); the JSD's: what pass B kept there (ref), whether it is saturated,
     * and the constants added to kept - ref, for a saturated class and another; the
     * KLs': D */
    fastloss_index heavy_s, heavy_t;
    int sat_ref_s, sat_ref_t;
    REAL ref_s, ref_t;
    REAL sat1_s, sat0_s, sat1_t, sat0_t;
    REAL mean;
    REAL inv_t; /* 1 / T */
    /* per model, x_s - x_t at its reference as hi + lo (DISTILL_FROM: the KLs', the
     * reverse KL's reference the student's, the forward KL's the teacher's; the JSD's
     * exact differences), and for those (DISTILL_GAP_DIFF) E there (E = r p / q for the
     * student, q / (r p) for the teacher, r = beta / (1 - beta)); odds = r */
    int exact_s, exact_t;
    REAL hi_ref_s, lo_ref_s, hi_ref_t, lo_ref_t, e_ref_s, e_ref_t, odds;
} NAME(distill_row);

/* What a chunk's elements need: with e_c = exp((x_c - shift) / T) as pass A left it,
 * q_c = e_c scale, per model, and y_c = log q_c - log p_c = d_c + offset (d_c = a_s - a_t
 * from pass A, offset = close[3 k]: distill_offsets). */
typedef struct NAME(distill_chunk) {
    REAL scale_s, scale_t, offset;
    fastloss_index heavy_s, heavy_t; /* the row's reference classes, in the chunk's indices */
} NAME(distill_chunk);

/* log of chunk k's scale for one model (its chunk record, its row statistics): a
 * chunk with no finite value has shift 0 and every e 0 (its scale is then unused) */
FASTLOSS_INLINE double NAME(distill_log_scale)(const double *chunk, const vocab_row_stats *model,
                                               double inv_temperature)
{
    const double m = chunk[VOCAB_CHUNK_MAX];
    const double shift = m == -INFINITY ? 0.0 : m;
    return (shift - model->max) * inv_temperature - model->log_sum;
}

/* Chunk k's (from both models' chunk statistics and `close`, three values a chunk);
 * returns the chunk's length. */
FASTLOSS_INLINE fastloss_index NAME(distill_chunk_of)(fastloss_index k, fastloss_index n_classes,
                                                      const double *student_chunks,
                                                      const double *teacher_chunks,
                                                      const double *close,
                                                      const vocab_row_stats *student,
                                                      const vocab_row_stats *teacher,
                                                      double inv_temperature,
                                                      NAME(distill_chunk) *chunk)
{
    chunk->offset = (REAL)close[3 * k];
    chunk->scale_s = (REAL)exp(NAME(distill_log_scale)(student_chunks + k * VOCAB_CHUNK_FIELDS,
                                                       student, inv_temperature));
    chunk->scale_t = (REAL)exp(NAME(distill_log_scale)(teacher_chunks + k * VOCAB_CHUNK_FIELDS,
                                                       teacher, inv_temperature));
    return fastloss_vocab_chunk_length(n_classes, k * FASTLOSS_VOCAB_CHUNK);
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
    fastloss_index *next_row; /* the first row not yet claimed (common.h) */
} NAME(distill_job);

/* Per-thread scratch of the distillation: two chunk records and three doubles (c_k as
 * two parts, D_k: distill_stats) per chunk and four rows of REAL (pass A's exps of each model where
 * its gradient row cannot hold them, the differences d_c, the JSD's teacher gaps),
 * 64-byte aligned parts. */
#define DISTILL_CHUNK_DOUBLES (2 * VOCAB_CHUNK_FIELDS + 3)
static size_t NAME(distill_scratch_bytes)(fastloss_index n_chunks, fastloss_index n_classes)
{
    const size_t records =
        ((size_t)n_chunks * DISTILL_CHUNK_DOUBLES * sizeof(double) + 63) / 64 * 64;
    const size_t row = ((size_t)n_classes * sizeof(REAL) + 63) / 64 * 64;
    return records + 4 * row;
}

/*
 * One element of distill_stats_range, lane j: both models' exps e = exp(a),
 * a = (x_c - shift) / T (each model's chunk shift), kept in es and et, the difference
 * d_c = a_s - a_t = ((x_s - x_t) - (shift_s - shift_t)) / T kept in d (log q_c - log p_c
 * is d_c plus a constant of the chunk), rounded once: x_s - x_t is split into its rounded
 * value and rounding error (Knuth's two-sum), and so is shift_s - shift_t (shift_hi,
 * shift_lo), so that a close pair's d_c keeps its relative accuracy even where the two
 * models' logits differ by a constant (a_t - a_s, each a rounded shifted logit, would
 * not); the error is NaN where a logit is -inf and then left out.  The exps are summed in
 * the lanes of VOCAB_LANES / VOCAB_FOLD (vocab_internal.h: 8 float terms of one sign, then
 * double; the divergence takes no difference of the two sums, distill_offsets), and,
 * with_next, each model's max
 * of the next chunk's element c.  Beside them, with_d (the JSD), for kappa, D = sum_c e_s,c expm1(-d_c)
 * (e_t = e_s exp(-d) in exact arithmetic), by g's series where |d_c| is small and as
 * e_t - e_s beyond (distill_offsets), in the same lanes: its terms have both signs, and 8
 * of them in float are within 7 u of the sum of their sizes, where each term already
 * carries roundings of that order; kappa's error enters the divergence only at second
 * order (sum_c (q - p) = 0) and the gradients as that of every y_c, of the order of the
 * difference's own rounding (measured against the float64 kernel, close pairs at 1e-1,
 * 1e-3, 1e-5: no error grew past 7% of the contract, as with D summed in double).  One
 * thread, V=50257, N=16, float32, AVX-512, CPU time, loaded machine: forward KL
 * value_and_grad 1.30 -> 1.24 ns per element.  The KLs take no D (about 13 of the
 * loop's 54 vector operations): their kappa is corrected after pass B from sums that
 * pass B forms anyway (distill_rows).
 *
 * The prefetches of the chunk after next (and of the gradient row, with write intent)
 * go to L2 (locality 2: prefetcht1), as cross-entropy's far-ahead ones do
 * (CE_PREFETCH_AHEAD_LOCALITY): into L1 they stalled the loop once it had no D to
 * compute.  One thread, N=512 (from memory), V=50257, float32, AVX-512, CPU time, load
 * 4-6, the loop without D: forward KL value_and_grad 1.37 (locality 3) -> 1.16 (reads 2)
 * -> 1.14 (reads and writes 2) ns per element; main's (with D, locality 3) 1.29.
 */
#ifndef DISTILL_PREFETCH_AHEAD
#define DISTILL_PREFETCH_AHEAD VOCAB_PREFETCH_AHEAD
#endif
#ifndef DISTILL_PREFETCH_LOCALITY
#define DISTILL_PREFETCH_LOCALITY 2
#endif
#ifndef DISTILL_WRITE_LOCALITY
#define DISTILL_WRITE_LOCALITY 2
#endif
#define DISTILL_STATS_STEP(i, j)                                                   \
    do {                                                                           \
        const REAL x_s_ = (REAL)LOAD(xs, i), x_t_ = (REAL)LOAD(xt, i);             \
        const REAL a_s_ = (x_s_ - shift_s) * inv_t;                                \
        const REAL a_t_ = (x_t_ - shift_t) * inv_t;                                \
        const REAL e_s_ = NAME(vocab_exp)(a_s_);                                   \
        const REAL e_t_ = NAME(vocab_exp)(a_t_);                                   \
        const REAL hi_ = x_s_ - x_t_;                                              \
        const REAL back_ = hi_ - x_s_;                                             \
        const REAL lo_ = ((x_s_ - (hi_ - back_)) - (x_t_ + back_)) - shift_lo;     \
        const REAL d_ = ((hi_ - shift_hi) + (lo_ == lo_ ? lo_ : (REAL)0)) * inv_t; \
        es[i] = e_s_;                                                              \
        et[i] = e_t_;                                                              \
        d[i] = d_;                                                                 \
        part_s[j] += e_s_;                                                         \
        part_t[j] += e_t_;                                                         \
        if (with_d) {                                                              \
            const REAL w_ = -d_;                                                   \
            const REAL em_ = w_ + w_ * w_ * NAME(distill_series_of)(w_, DISTILL_A_TERMS); \
            part_d[j] += NAME(vocab_abs)(d_) < DISTILL_A_BELOW ? e_s_ * em_ : e_t_ - e_s_; \
        }                                                                          \
        if (with_next) {                                                           \
            const REAL v_s_ = LOAD(next_s, i), v_t_ = LOAD(next_t, i);             \
            next_lane_s[j] = next_lane_s[j] < v_s_ ? v_s_ : next_lane_s[j];        \
            next_lane_t[j] = next_lane_t[j] < v_t_ ? v_t_ : next_lane_t[j];        \
        }                                                                          \
    } while (0)

/* Pass A over a range of a chunk of both rows, n elements (DISTILL_STATS_STEP): the
 * sums of the two models' exps (*sum_s, *sum_t), D (*sum_d) and, with_next, the maxima of
 * next_s[0, n) and next_t[0, n) (the next chunk streams in from memory while this one's
 * exps are computed), else -inf.  Element c goes to lane c % VOCAB_LANES, the lanes
 * combined pairwise: the same order on every ISA. */
FASTLOSS_INLINE void NAME(distill_stats_range)(const int with_d, const int with_next,
                                               const STORE_T *FASTLOSS_RESTRICT xs,
                                               const STORE_T *FASTLOSS_RESTRICT xt,
                                               fastloss_index n, REAL shift_s, REAL shift_t,
                                               REAL shift_hi, REAL shift_lo, REAL inv_t,
                                               REAL *FASTLOSS_RESTRICT es,
                                               REAL *FASTLOSS_RESTRICT et,
                                               REAL *FASTLOSS_RESTRICT d,
                                               const STORE_T *FASTLOSS_RESTRICT next_s,
                                               const STORE_T *FASTLOSS_RESTRICT next_t,
                                               double *sum_s, double *sum_t, double *sum_d,
                                               REAL *max_s, REAL *max_t)
{
    double lane_s[VOCAB_LANES] = {0.0}, lane_t[VOCAB_LANES] = {0.0};
    double lane_d[VOCAB_LANES] = {0.0};
    REAL part_s[VOCAB_LANES] = {0}, part_t[VOCAB_LANES] = {0}, part_d[VOCAB_LANES] = {0};
    REAL next_lane_s[VOCAB_LANES], next_lane_t[VOCAB_LANES];
    for (int j = 0; j < VOCAB_LANES; ++j)
        next_lane_s[j] = next_lane_t[j] = -(REAL)INFINITY;
#define DISTILL_STATS_PREFETCH(v)                                           \
    do {                                                                    \
        if (with_next) { /* see VOCAB_PREFETCH_AHEAD */                     \
            __builtin_prefetch(next_s + (v) + DISTILL_PREFETCH_AHEAD, 0, DISTILL_PREFETCH_LOCALITY); \
            __builtin_prefetch(next_t + (v) + DISTILL_PREFETCH_AHEAD, 0, DISTILL_PREFETCH_LOCALITY); \
            __builtin_prefetch(es + (v) + VOCAB_PREFETCH_AHEAD, 1, DISTILL_WRITE_LOCALITY); \
        }                                                                   \
    } while (0)
#define DISTILL_STATS_FOLD()                                                \
    do {                                                                    \
        NAME(vocab_fold)(lane_s, part_s);                                   \
        NAME(vocab_fold)(lane_t, part_t);                                   \
        if (with_d)                                                         \
            NAME(vocab_fold)(lane_d, part_d);                               \
    } while (0)
    VOCAB_FOLDED_LOOP(n, DISTILL_STATS_STEP, DISTILL_STATS_PREFETCH, DISTILL_STATS_FOLD);
#undef DISTILL_STATS_FOLD
#undef DISTILL_STATS_PREFETCH
    *sum_s = vocab_lanes_total(lane_s);
    *sum_t = vocab_lanes_total(lane_t);
    *sum_d = with_d ? vocab_lanes_total(lane_d) : 0.0;
    REAL m_s = -(REAL)INFINITY, m_t = -(REAL)INFINITY;
    for (int j = 0; j < VOCAB_LANES; ++j) {
        m_s = next_lane_s[j] > m_s ? next_lane_s[j] : m_s;
        m_t = next_lane_t[j] > m_t ? next_lane_t[j] : m_t;
    }
    *max_s = m_s;
    *max_t = m_t;
}
#undef DISTILL_STATS_STEP

/* A chunk's record of pass A: its max m and the sum of its exps relative to the shift
 * (no target: `others` is the sum). */
FASTLOSS_INLINE void NAME(distill_record)(double *chunk, REAL max, double sum)
{
    chunk[VOCAB_CHUNK_MAX] = (double)max;
    chunk[VOCAB_CHUNK_SUM] = sum;
    chunk[VOCAB_CHUNK_OTHERS] = sum;
    chunk[VOCAB_CHUNK_WEIGHTED] = 0.0;
    chunk[VOCAB_CHUNK_CROSS] = 0.0;
}

/*
 * Pass A of the distillation: both rows' softmax statistics (vocab_row_stats: max, sum,
 * log_sum) in one loop per chunk over the two models, each chunk's exps relative to its
 * own max (found by the previous chunk's loop), then the chunks' records merge.  The
 * exps stay in es_row and et_row (exp((x_c - shift_k) / T), chunk k relative to its own
 * shift), and d_row holds a_s - a_t: the later passes read these three rows (from the
 * cache) and not the logits.  close[3 k], close[3 k + 1] and close[3 k + 2] receive chunk
 * k's shift_s - shift_t (as shift_hi and shift_lo) and D (DISTILL_STATS_STEP) for
 * distill_offsets.
 */
FASTLOSS_INLINE void NAME(distill_stats_at)(const int with_d, const STORE_T *xs,
                                            const STORE_T *xt,
                                            fastloss_index n_classes, fastloss_index n_chunks,
                                            double inv_temperature, REAL *es_row,
                                            REAL *et_row, REAL *d_row, double *student_chunks,
                                            double *teacher_chunks, double *close,
                                            vocab_row_stats *student, vocab_row_stats *teacher)
{
    const REAL inv_t = (REAL)inv_temperature;
    const fastloss_index first = fastloss_vocab_chunk_length(n_classes, 0);
    REAL m_s = NAME(vocab_max)(xs, first), m_t = NAME(vocab_max)(xt, first);
    for (fastloss_index k = 0; k < n_chunks; ++k) {
        const fastloss_index start = k * FASTLOSS_VOCAB_CHUNK;
        const fastloss_index n = fastloss_vocab_chunk_length(n_classes, start);
        const fastloss_index next_start = start + n;
        const fastloss_index n_next = fastloss_vocab_chunk_length(n_classes, next_start);
        /* a chunk of -inf gets shift 0, so that exp sees -inf rather than NaN */
        const REAL shift_s = m_s == -(REAL)INFINITY ? (REAL)0 : m_s;
        const REAL shift_t = m_t == -(REAL)INFINITY ? (REAL)0 : m_t;
        /* shift_s - shift_t = shift_hi + shift_lo exactly (two-sum) */
        const REAL shift_hi = shift_s - shift_t, shift_back = shift_hi - shift_s;
        const REAL shift_lo = (shift_s - (shift_hi - shift_back)) - (shift_t + shift_back);
        /* the part with a next element beside each element (all of it but in the row's
         * last chunk, and in the chunk before a short last one) */
        const fastloss_index both = n < n_next ? n : n_next;
        double sum_s, sum_t, sum_d;
        REAL next_max_s, next_max_t;
        NAME(distill_stats_range)(with_d, 1, xs + start, xt + start, both, shift_s, shift_t,
                                  shift_hi, shift_lo, inv_t, es_row + start, et_row + start,
                                  d_row + start,
                                  xs + next_start, xt + next_start, &sum_s, &sum_t, &sum_d,
                                  &next_max_s, &next_max_t);
        if (both < n) { /* the row's last chunk (no next) or a short next chunk */
            double rest_s, rest_t, rest_d;
            REAL unused_s, unused_t;
            NAME(distill_stats_range)(with_d, 0, xs + start + both, xt + start + both,
                                      n - both,
                                      shift_s, shift_t, shift_hi, shift_lo, inv_t,
                                      es_row + start + both,
                                      et_row + start + both, d_row + start + both, NULL,
                                      NULL, &rest_s, &rest_t, &rest_d, &unused_s, &unused_t);
            sum_s += rest_s;
            sum_t += rest_t;
            sum_d += rest_d;
        }
        if (both < n_next) {
            const REAL rest_s = NAME(vocab_max)(xs + next_start + both, n_next - both);
            const REAL rest_t = NAME(vocab_max)(xt + next_start + both, n_next - both);
            next_max_s = rest_s > next_max_s ? rest_s : next_max_s;
            next_max_t = rest_t > next_max_t ? rest_t : next_max_t;
        }
        NAME(distill_record)(student_chunks + k * VOCAB_CHUNK_FIELDS, m_s, sum_s);
        NAME(distill_record)(teacher_chunks + k * VOCAB_CHUNK_FIELDS, m_t, sum_t);
        close[3 * k] = (double)shift_hi;
        close[3 * k + 1] = (double)shift_lo;
        close[3 * k + 2] = sum_d;
        m_s = next_max_s;
        m_t = next_max_t;
    }
    vocab_merge_chunks(student_chunks, n_chunks, inv_temperature, student);
    vocab_merge_chunks(teacher_chunks, n_chunks, inv_temperature, teacher);
}

/* Pass A (distill_stats_at), with T = 1, the usual case, as a constant: the element loop
 * then drops its three multiplies by 1 / T (x * 1 is x: the same bits), as
 * vocab_row_stats does. */
static void NAME(distill_stats)(int with_d, const STORE_T *xs, const STORE_T *xt,
                                fastloss_index n_classes, fastloss_index n_chunks,
                                double inv_temperature, REAL *es_row, REAL *et_row,
                                REAL *d_row, double *student_chunks, double *teacher_chunks,
                                double *close, vocab_row_stats *student,
                                vocab_row_stats *teacher)
{
#define DISTILL_STATS_AT(w, inv_t)                                                           \
    NAME(distill_stats_at)(w, xs, xt, n_classes, n_chunks, inv_t, es_row, et_row, d_row,   \
                           student_chunks, teacher_chunks, close, student, teacher)
    if (with_d && inv_temperature == 1.0)
        DISTILL_STATS_AT(1, 1.0);
    else if (with_d)
        DISTILL_STATS_AT(1, inv_temperature);
    else if (inv_temperature == 1.0)
        DISTILL_STATS_AT(0, 1.0);
    else
        DISTILL_STATS_AT(0, inv_temperature);
#undef DISTILL_STATS_AT
}

/*
 * The constants of the chunks in y_c = log q_c - log p_c = d_c + offset_k (chunk k, d_c
 * = a_s - a_t from pass A).  With Z the sums of exp(x / T), y_c = (x_s,c - x_t,c) / T +
 * log(Z_t / Z_s) and d_c = ((x_s,c - x_t,c) - c_k) / T, c_k = shift_s - shift_t of chunk
 * k (pass A's shift_hi + shift_lo, close[3 k], close[3 k + 1]).  Relative to chunk r, the
 * one that holds the student's max, with delta_k = (c_k - c_r) / T,
 *   offset_k = kappa + delta_k,  kappa = log(Z_t / Z_s) + c_r / T
 *            = log sum_c q_c exp(-(d_c + delta_k)),
 * and in the records of pass A chunk k (shift s_k of the student, sum S_k of its exps
 * e_s, f_k = exp((s_k - M_s) / T), D_k = close[3 k + 2]) adds f_k exp(-delta_k)
 * sum_c e_s,c exp(-d_c) = f_k exp(-delta_k) (S_k + D_k) to S_s exp(kappa), so that
 *   exp(kappa) - 1 = sum_k f_k (expm1(-delta_k) S_k + exp(-delta_k) D_k) / S_s,
 * whose terms are each of the order of the two models' difference (a constant between
 * their logits is in c_r, exactly): kappa comes out with the relative accuracy of that
 * difference (a float32 pair at distance 1e-5 gets it to about 1e-12, where log S_t -
 * log S_s would carry the exps' roundings, about 1e-8, into every y_c and so into the
 * gradient q - p = p expm1(y)).  Where that sum is not finite or below -1/2 (log1p would
 * lose accuracy; the models are then far apart) kappa is taken from the row statistics,
 * (M_t - M_s + c_r) / T + log S_t - log S_s.  close[3 k] receives offset_k.  Without
 * D (with_d = 0: the KLs) kappa is that last form, and distill_rows corrects it after
 * pass B.
 */
static void NAME(distill_offsets)(int with_d, const double *student_chunks, double *close,
                                  fastloss_index n_chunks, double inv_temperature,
                                  const vocab_row_stats *student,
                                  const vocab_row_stats *teacher)
{
    fastloss_index r = 0;
    for (fastloss_index k = 0; k < n_chunks; ++k)
        if (student_chunks[k * VOCAB_CHUNK_FIELDS + VOCAB_CHUNK_MAX] == student->max) {
            r = k;
            break;
        }
    const double c_hi = close[3 * r], c_lo = close[3 * r + 1];
    double excess = 0.0;
    for (fastloss_index k = 0; k < n_chunks; ++k) {
        const double m = student_chunks[k * VOCAB_CHUNK_FIELDS + VOCAB_CHUNK_MAX];
        const double sum = student_chunks[k * VOCAB_CHUNK_FIELDS + VOCAB_CHUNK_SUM];
        const double delta = ((close[3 * k] - c_hi) + (close[3 * k + 1] - c_lo)) * inv_temperature;
        const double extra = close[3 * k + 2];
        const double log_f = ((m == -INFINITY ? 0.0 : m) - student->max) * inv_temperature;
        if (sum != 0.0) /* a chunk the student rules out has no term (and may have f = inf) */
            excess += exp(log_f) * expm1(-delta) * sum;
        if (extra != 0.0)
            excess += exp(log_f - delta) * extra;
        close[3 * k + 2] = delta; /* D_k is used: keep delta_k for the second loop */
    }
    const double ratio = excess / student->sum;
    const double kappa = with_d && isfinite(ratio) && ratio >= -0.5
                             ? log1p(ratio)
                             : ((teacher->max - student->max) + (c_hi + c_lo)) * inv_temperature +
                                   teacher->log_sum - student->log_sum;
    for (fastloss_index k = 0; k < n_chunks; ++k)
        close[3 * k] = kappa + close[3 * k + 2];
}

/*
 * One element of distill_range, lane j.  With y = d_c + offset = log q - log p (d from
 * pass A, offset: distill_chunk), the sums, each term formed in REAL and summed in
 * lanes (distill_range):
 *   forward KL  K_t = sum_c p g(y)                                       (y = log q - log p)
 *   reverse KL  K_s = sum_c q g(z)                                       (z = -y)
 *   JSD         beta K_t + (1 - beta) K_s = sum_c beta p g(u) + (1 - beta) q g(v)
 * with u = log m - log p = log1p((1 - beta) expm1(y)), v = log m - log q = u - y,
 * m = beta p + (1 - beta) q: every term >= 0 (vocab.c).  Where |y| is small, g is the
 * series (DISTILL_G), expm1(y) = y + g(y); beyond, each term is p g(y) = q - p - p y,
 * which is also the term of a class whose probability p is 0 (adding q; 0 y is taken as
 * 0, y being +inf where the logit is -inf) and gives +inf where q is 0 and p is not, as
 * the definition does.  The JSD's term is m f(y), f(y) = y u'(y) - u(y) (u'' = w (1 - w),
 * w = beta p / m, and d/dy of the term over m is y u''), by its series near 0 (distill_rows),
 * and -(beta p u + (1 - beta) q v) beyond (its terms beta (m - p) and (1 - beta) (m - q)
 * cancel; 0 u = 0 where p is 0), with the log-add-exp form of u and v there:
 * delta = log(beta p) - log((1 - beta) q) and L = log1p(exp(-|delta|)) give
 *   -u = log p - log m = min(delta, 0) - log beta - L,
 *   -v = log q - log m = -max(delta, 0) - log(1 - beta) - L,
 * and near 0 the series of the smaller of u and v (distill_rows).  The JSD's gradients
 * subtract K_s = sum_c q (-v) and K_t = sum_c p (-u) (sum_c m - q = 0), both taken
 * relative to the heaviest class (distill_heaviest).  A class that both models rule out
 * adds 0.  Pass B keeps the JSD's -v and -u (in d, which pass C no longer needs, and
 * `gap` when both gradients are wanted; a saturated class's less its limit) so that
 * pass C takes no exp or log, and the KLs' y - y_a in d.  The gradients, scale = grad_output * factor / T (times beta or 1 - beta for the
 * JSD's):
 *   student  forward  scale (q - p) = scale p expm1(y)                (pass B)
 *            reverse  scale q (y - K_s)                              (pass C)
 *            JSD      scale (1 - beta) q (-v - K_s)                  (pass C)
 *   teacher  forward  scale p (-y - K_t)                             (pass C)
 *            reverse  scale (p - q) = scale q expm1(z)                (pass B)
 *            JSD      scale beta p (-u - K_t)                        (pass C)
 * (the softmax's Jacobian applied to d loss / d log q and d loss / d log p).  A
 * gradient row may be the row of that model's exps (es == gs, et == gt): each element
 * is read before it is written, in the same step.
 */
/* A divergence's term, rounded on its own before its float lane adds it: x + 0 is no x to the
 * compiler (it gives +0 for -0), so the product in the select above it cannot be fused
 * into the lane's addition.  gcc did fuse it, as a masked multiply-add, in some loops
 * and not in others, and a half row's divergence then had other bits with a gradient
 * than without (distill4); an FMA path rounds p g alone either way (the addition of 0
 * may itself become a multiply-add with 0: the same bits). */
#define DISTILL_ALONE(term) ((term) + (REAL)0)
/* The KLs' y_c - y_a (a the reference, distill_heaviest) from the logits themselves:
 * ((x_s - x_t)_c - (x_s - x_t)_a) / T, each difference as its rounded value and rounding
 * error (two-sum, as DISTILL_STATS_STEP; the error NaN where a logit is infinite, and
 * then left out), rounded once more where the two are not close. */
#define DISTILL_TWO_SUM(name, x_s, x_t) /* x_s - x_t = name##_hi + name##_lo exactly */      \
    const REAL name##_x_s = (x_s), name##_x_t = (x_t);                                      \
    const REAL name##_hi = name##_x_s - name##_x_t, name##_back = name##_hi - name##_x_s;   \
    const REAL name##_lo = (name##_x_s - (name##_hi - name##_back)) - (name##_x_t + name##_back)
#define DISTILL_FROM(name, i, hi_at, lo_at) /* ((x_s - x_t)_i - (hi_at + lo_at)) / T */ \
    DISTILL_TWO_SUM(name##_d, LOAD(xs, i), LOAD(xt, i));                                    \
    const REAL name##_lo = name##_d_lo - (lo_at);                                           \
    const REAL name =                                                                       \
        ((name##_d_hi - (hi_at)) + (name##_lo == name##_lo ? name##_lo : (REAL)0)) * inv_t
#define DISTILL_FROM_REF(name, i) DISTILL_FROM(name, i, hi_ref, lo_ref)
/* The JSD's gap of class c less that of the reference a, h(y_c) - h(y_a), exactly in
 * terms of delta = y_c - y_a (student; the teacher's: y_a - y_c) from the logits:
 * h = -log1p(E) + const (the student's E = r p / q, the teacher's q / (r p), r = beta /
 * (1 - beta)), E_c = E_a e^-delta, so that with w_c = E_c / (1 + E_c) and wbar_c = 1 /
 * (1 + E_c), both in [0, 1] (from p and q, no overflow where one is tiny),
 *   h_c - h_a = log((1 + E_a) wbar_c) = log1p(t),
 *   t = -E_a expm1(-delta) wbar_c (delta >= 0), expm1(delta) w_c (below):
 * expm1 of a non-positive argument, by g's series near 0; log1p on [-1/2, 1], the log
 * of the ratio beyond, where the difference is at least log 2 in size (its argument
 * raised by the smallest normal number: a class whose wbar_c is below 1e-30 or so has
 * a weight that small, and the log's domain is then the normal numbers).
 *   Every value is finite (t >= -1, so log1p's division is by at least 1) and the
 * choices between two of them are blends, DISTILL_BLEND: gcc sinks a division whose
 * result only one arm of a choice uses into that arm, and then vectorises no loop
 * around it (a division may trap); with the blends it vectorises. */
/* Where that is needed: a model's reference class saturated (the other model gives it
 * under half its probability) and either at least DISTILL_FAR times more likely under
 * it than under the other (|y_a| >= log 3 = 1.1) or in a row whose chunks' offsets
 * reach DISTILL_FAR_OFFSET (y = d + offset, each rounded: y's error is u (|d| +
 * |offset|), and a far pair's heavy classes can have a small y from a large d and
 * offset).  The kept gaps of pass B carry y's rounding, about u |y|, into the saturated
 * classes' gaps, and where the heavy classes' y agree to 0.13 the row's gradient is a
 * difference of two of them a sixteenth of y: 1.26x the contract's bound at |y_a| =
 * 2.1 (float32, a far pair), about 0.66x at log 3 by that proportion.  Nearer rows keep
 * pass B's speed (the exact differences cost about two thirds of pass B's time). */
#define DISTILL_FAR ((REAL)3)
#define DISTILL_FAR_OFFSET 4.0
#define DISTILL_BLEND(choose_a, a, b) /* choose_a ? a : b, both finite: exactly */           \
    ((REAL)(choose_a) * (a) + ((REAL)1 - (REAL)(choose_a)) * (b))
#define DISTILL_GAP_DIFF(name, delta, w_c, wbar_c, e_a)                                     \
    /* (NaN where both models rule the class out: its weight is then 0, and so is t) */   \
    const REAL name##_delta = (delta) == (delta) ? (delta) : (REAL)0;                       \
    const REAL name##_x = -NAME(vocab_abs)(name##_delta);                                   \
    const REAL name##_m = name##_x > -DISTILL_SERIES_BELOW                                  \
                              ? name##_x + name##_x * name##_x * DISTILL_G(name##_x)        \
                              : NAME(vocab_exp)(name##_x) - (REAL)1;                        \
    const REAL name##_t =                                                                   \
        name##_m * DISTILL_BLEND(name##_delta >= (REAL)0, -(e_a) * (wbar_c), w_c);          \
    const REAL name##_near = REAL_LOG1P_UNIT(name##_t);                                     \
    const REAL name##_far = REAL_LOG(((REAL)1 + (e_a)) * (wbar_c) + DISTILL_TINY);          \
    const REAL name = DISTILL_BLEND((name##_t >= (REAL)-0.5) & (name##_t <= (REAL)1),       \
                                    name##_near, name##_far)
#define DISTILL_STEP(i, j)                                                                  \
    do {                                                                                    \
        const REAL e_s = es[i], e_t = et[i];                                                \
        const REAL q = e_s * unit_s, p = e_t * unit_t;                                      \
        const REAL y = d[i] + offset; /* log q - log p */                                   \
        const REAL abs_y = NAME(vocab_abs)(y);                                              \
        if (divergence == FASTLOSS_DIVERGENCE_FORWARD_KL) {                                 \
            if (!pass_c) {                                                                  \
                const REAL g = y * y * DISTILL_G(y);                                        \
                /* (p = 0, its logit -inf or its chunk's scale underflowed: q, or +inf   \
                 * where q's logit alone is -inf, y = -inf) */                              \
                const REAL far = p == (REAL)0 ? (y == -(REAL)INFINITY ? (REAL)INFINITY : q)   \
                                              : (q - p) - p * y;                            \
                part_t[j] += DISTILL_ALONE(abs_y < DISTILL_SERIES_BELOW ? p * g : far);     \
                const REAL t = abs_y < DISTILL_SERIES_BELOW ? p * (y + g) : q - p;          \
                if (want_s)                                                                 \
                    es[i] = t;                                                              \
                part_r[j] += DISTILL_ALONE(t);                                              \
                if (want_t) { /* for the teacher's pass C (distill_heaviest), kept in d */  \
                    DISTILL_FROM_REF(v_, i);                                                \
                    part_m[j] += DISTILL_ALONE(e_t == (REAL)0 ? (REAL)0 : p * v_);          \
                    d[i] = v_;                                                              \
                }                                                                           \
            } else {                                                                        \
                STORE(gt, i, scale_t * (e_t == (REAL)0 ? (REAL)0 : p * (mean - d[i])));     \
            }                                                                               \
        } else if (divergence == FASTLOSS_DIVERGENCE_REVERSE_KL) {                          \
            if (!pass_c) {                                                                  \
                const REAL z = -y; /* log p - log q */                                      \
                const REAL g = z * z * DISTILL_G(z);                                        \
                /* (q = 0, its logit -inf or its chunk's scale underflowed: p, or +inf   \
                 * where p's logit alone is -inf, z = -inf) */                              \
                const REAL far = q == (REAL)0 ? (z == -(REAL)INFINITY ? (REAL)INFINITY : p)   \
                                              : (p - q) - q * z;                            \
                part_s[j] += DISTILL_ALONE(abs_y < DISTILL_SERIES_BELOW ? q * g : far);     \
                const REAL t = abs_y < DISTILL_SERIES_BELOW ? q * (z + g) : p - q;          \
                if (want_t)                                                                 \
                    et[i] = t;                                                              \
                part_r[j] += DISTILL_ALONE(t);                                              \
                if (want_s) { /* for the student's pass C (distill_heaviest), kept in d */  \
                    DISTILL_FROM_REF(v_, i);                                                \
                    part_m[j] += DISTILL_ALONE(e_s == (REAL)0 ? (REAL)0 : q * v_);          \
                    d[i] = v_;                                                              \
                }                                                                           \
            } else {                                                                        \
                STORE(gs, i, scale_s * (e_s == (REAL)0 ? (REAL)0 : q * (d[i] - mean)));     \
            }                                                                               \
        } else if (!pass_c) {                                                               \
            const int near = abs_y < DISTILL_JSD_SERIES_BELOW;                              \
            /* near 0: the term m f(y) by f's series, the gaps -u and -v by the series of   \
             * the smaller (distill_rows) */                                                \
            const REAL m = beta * p + beta_c * q;                                           \
            const REAL f = y * y * NAME(distill_cgf)(jsd_f, y, DISTILL_JSD_F_TERMS);        \
            const REAL near_term = m * f;                                                   \
            /* rounded alone: with one of -u and -v unused the other could fuse it */      \
            const REAL small = DISTILL_ALONE(y * NAME(distill_cgf)(cgf, y, DISTILL_JSD_TERMS)); \
            /* beyond: the gaps -u = log p - log m and -v = log q - log m by log-add-exp,   \
             * and the term -(beta p u + (1 - beta) q v) (0 u = 0 where p is 0) */          \
            const REAL delta = log_odds - y;                                                \
            const REAL mix = REAL_LOG1P_UNIT(NAME(vocab_exp)(-NAME(vocab_abs)(delta)));     \
            const REAL sat_t = (delta < (REAL)0 ? delta : (REAL)0) - mix; /* -u + log beta */ \
            const REAL sat_s = (delta > (REAL)0 ? -delta : (REAL)0) - mix; /* -v + log(1 - beta) */ \
            const REAL gap_t = sat_t - log_beta;                                            \
            const REAL gap_s = sat_s - log_beta_c;                                          \
            const REAL far_term = (e_t == (REAL)0 ? (REAL)0 : beta * p * gap_t) +           \
                                  (e_s == (REAL)0 ? (REAL)0 : beta_c * q * gap_s);          \
            part_l[j] += DISTILL_ALONE(near ? near_term : far_term);                        \
            /* the gaps the gradients need, -v (student) and -u (teacher), kept less their  \
             * saturation where one model has at least twice the other's probability: sat_s \
             * (q >= 2 p) or sat_t (p >= 2 q); with the sums, over the classes but the       \
             * model's reference (distill_heaviest), of w, w kept and w (saturated - that of \
             * the reference) */                                                            \
            const REAL neg_v = near ? -(small + v_of_y * y) : gap_s;                        \
            const REAL neg_u = near ? -(small + u_of_y * y) : gap_t;                        \
            const int saturated_s = q * (REAL)0.5 >= p, saturated_t = p * (REAL)0.5 >= q;   \
            if (want_s) {                                                                   \
                const REAL kept = saturated_s ? sat_s : neg_v;                              \
                const REAL w = e_s == (REAL)0 || (i) == heavy_s ? (REAL)0 : q;              \
                d[i] = kept;                                                                \
                lane_s[j] += (double)(w == (REAL)0 ? (REAL)0 : w * kept);                   \
                part_ws[j] += w;                                                            \
                part_xs[j] += saturated_s == sat_ref_s ? (REAL)0 : saturated_s ? w : -w;    \
            }                                                                               \
            if (want_t) {                                                                   \
                const REAL kept = saturated_t ? sat_t : neg_u;                              \
                const REAL w = e_t == (REAL)0 || (i) == heavy_t ? (REAL)0 : p;              \
                gap_t_row[i] = kept;                                                        \
                lane_t[j] += (double)(w == (REAL)0 ? (REAL)0 : w * kept);                   \
                part_wt[j] += w;                                                            \
                part_xt[j] += saturated_t == sat_ref_t ? (REAL)0 : saturated_t ? w : -w;    \
            }                                                                               \
        } else {                                                                            \
            if (want_s) {                                                                   \
                const REAL add = q * (REAL)0.5 >= p ? sat1_s : sat0_s;                      \
                STORE(gs, i,                                                                \
                      scale_s * (e_s == (REAL)0 ? (REAL)0 : q * ((d[i] - ref_s) + add)));   \
            }                                                                               \
            if (want_t) {                                                                   \
                const REAL add = p * (REAL)0.5 >= q ? sat1_t : sat0_t;                      \
                STORE(gt, i,                                                                \
                      scale_t * (e_t == (REAL)0 ? (REAL)0 : p * ((gap_t_row[i] - ref_t) + add))); \
            }                                                                               \
        }                                                                                   \
    } while (0)

/*
 * One chunk of pass B (!pass_c: the divergence's sums, *sum_s and *sum_t, and the
 * gradients that subtract no total) or C (the other gradients), from the rows pass A
 * left: es, et, d (DISTILL_STEP).  gap_t_row is where the JSD's pass B keeps gap_t
 * (d itself when only the teacher's gradient is wanted).  The mode arguments are
 * constants at every call (the function is inlined into one loop per divergence, pass
 * and set of outputs), so that each loop vectorises with no test inside.  Each term is
 * formed in REAL (element c to lane c % VOCAB_LANES, the same order on every ISA): the
 * divergences' terms, all >= 0, are summed in the float lanes of VOCAB_FOLDED_LOOP (8
 * terms, then double), each rounded alone (DISTILL_ALONE); the JSD's sums of w times its
 * kept gaps are added to double lanes (their terms have both signs).  One thread, N=32, V=50257,
 * float32, AVX-512, CPU time, loaded machine: forward KL value_and_grad 1.49 -> 1.29 ns
 * per element, reverse 1.51 -> 1.44, JSD 2.71 -> 2.57 (no conversion to double per
 * vector for the divergence).
 */
FASTLOSS_INLINE void NAME(distill_range)(const int divergence, const int pass_c,
                                         const int want_s, const int want_t, REAL *es,
                                         REAL *et, REAL *d, REAL *gap_t_row,
                                         const STORE_T *FASTLOSS_RESTRICT xs,
                                         const STORE_T *FASTLOSS_RESTRICT xt,
                                         fastloss_index n, const NAME(distill_chunk) *chunk,
                                         const NAME(distill_row) *row, REAL scale_s,
                                         REAL scale_t, GRAD_T *gs, GRAD_T *gt, double *sum_s,
                                         double *sum_t, double *sum_l, double *sum_r,
                                         double *more)
{
    const REAL unit_s = chunk->scale_s, unit_t = chunk->scale_t;
    const REAL offset = chunk->offset, log_odds = row->log_odds;
    const REAL beta = row->beta, beta_c = row->beta_c;
    /* the series' coefficients, local (no aliasing with d, and each one a constant of
     * the loop: in the row, a load that gcc moved into the |y| < DISTILL_JSD_SERIES_BELOW
     * branch kept the loop from vectorising); VOCAB_CGF_TERMS = 17 of them, no vector
     * register's worth (16 went to one, and each coefficient out of it took a
     * permutation per element vector) */
    REAL cgf[VOCAB_CGF_TERMS], jsd_f[VOCAB_CGF_TERMS];
    for (int k = 0; k < VOCAB_CGF_TERMS; ++k) {
        cgf[k] = row->cgf[k];
        jsd_f[k] = row->jsd_f[k];
    }
    const REAL u_of_y = row->u_of_y, v_of_y = row->v_of_y;
    const REAL log_beta = row->log_beta, log_beta_c = row->log_beta_c;
    /* pass C's constants (distill_heaviest) */
    const fastloss_index heavy_s = chunk->heavy_s, heavy_t = chunk->heavy_t;
    const int sat_ref_s = row->sat_ref_s, sat_ref_t = row->sat_ref_t;
    const REAL ref_s = row->ref_s, ref_t = row->ref_t;
    const REAL sat1_s = row->sat1_s, sat0_s = row->sat0_s;
    const REAL sat1_t = row->sat1_t, sat0_t = row->sat0_t;
    const int reverse = divergence == FASTLOSS_DIVERGENCE_REVERSE_KL;
    const REAL hi_ref = reverse ? row->hi_ref_s : row->hi_ref_t;
    const REAL lo_ref = reverse ? row->lo_ref_s : row->lo_ref_t, mean = row->mean;
    const REAL inv_t = row->inv_t;
    double lane_s[VOCAB_LANES] = {0.0}, lane_t[VOCAB_LANES] = {0.0};
    double lane_l[VOCAB_LANES] = {0.0}, lane_r[VOCAB_LANES] = {0.0};
    double lane_m[VOCAB_LANES] = {0.0};
    double lane_ws[VOCAB_LANES] = {0.0}, lane_wt[VOCAB_LANES] = {0.0};
    double lane_xs[VOCAB_LANES] = {0.0}, lane_xt[VOCAB_LANES] = {0.0};
    REAL part_s[VOCAB_LANES] = {0}, part_t[VOCAB_LANES] = {0}, part_l[VOCAB_LANES] = {0};
    REAL part_r[VOCAB_LANES] = {0}, part_m[VOCAB_LANES] = {0};
    REAL part_ws[VOCAB_LANES] = {0}, part_wt[VOCAB_LANES] = {0};
    REAL part_xs[VOCAB_LANES] = {0}, part_xt[VOCAB_LANES] = {0};
    const int jsd = divergence == FASTLOSS_DIVERGENCE_JSD;
    const int sums_m = (divergence == FASTLOSS_DIVERGENCE_FORWARD_KL && want_t) ||
                       (divergence == FASTLOSS_DIVERGENCE_REVERSE_KL && want_s);
    /* the divergences' terms (>= 0) in the float lanes of VOCAB_FOLDED_LOOP; the JSD's
     * totals in double (their terms have both signs) */
#define DISTILL_FOLD()                                                       \
    do {                                                                     \
        if (!pass_c && divergence == FASTLOSS_DIVERGENCE_FORWARD_KL)         \
            NAME(vocab_fold)(lane_t, part_t);                                \
        if (!pass_c && divergence == FASTLOSS_DIVERGENCE_REVERSE_KL)         \
            NAME(vocab_fold)(lane_s, part_s);                                \
        if (!pass_c && jsd)                                                  \
            NAME(vocab_fold)(lane_l, part_l);                                \
        if (!pass_c && !jsd)                                                 \
            NAME(vocab_fold)(lane_r, part_r);                                \
        if (!pass_c && sums_m)                                               \
            NAME(vocab_fold)(lane_m, part_m);                                \
        if (!pass_c && jsd && want_s) {                                      \
            NAME(vocab_fold)(lane_ws, part_ws);                              \
            NAME(vocab_fold)(lane_xs, part_xs);                              \
        }                                                                    \
        if (!pass_c && jsd && want_t) {                                      \
            NAME(vocab_fold)(lane_wt, part_wt);                              \
            NAME(vocab_fold)(lane_xt, part_xt);                              \
        }                                                                    \
    } while (0)
    VOCAB_FOLDED_LOOP(n, DISTILL_STEP, VOCAB_NO_PREFETCH, DISTILL_FOLD);
#undef DISTILL_FOLD
    if (!pass_c) {
        *sum_s = divergence == FASTLOSS_DIVERGENCE_FORWARD_KL ? 0.0 : vocab_lanes_total(lane_s);
        *sum_t = divergence == FASTLOSS_DIVERGENCE_REVERSE_KL ? 0.0 : vocab_lanes_total(lane_t);
        *sum_l = jsd ? vocab_lanes_total(lane_l)
                     : divergence == FASTLOSS_DIVERGENCE_FORWARD_KL ? *sum_t : *sum_s;
        *sum_r = jsd ? 0.0 : vocab_lanes_total(lane_r);
        /* the sums pass C's constants come from (distill_heaviest): the KLs' sum_c w (y_c
         * - y_a) (w = q for the reverse KL's student, p for the forward KL's teacher), the
         * JSD's per model */
        if (sums_m)
            more[0] += vocab_lanes_total(lane_m);
        if (jsd && want_s) {
            more[0] += *sum_s;
            more[1] += vocab_lanes_total(lane_ws);
            more[2] += vocab_lanes_total(lane_xs);
        }
        if (jsd && want_t) {
            more[3] += *sum_t;
            more[4] += vocab_lanes_total(lane_wt);
            more[5] += vocab_lanes_total(lane_xt);
        }
    }
}
#undef DISTILL_STEP
#undef DISTILL_ALONE

/*
 * The JSD's exact kept gaps for one chunk of a row (pass B, after distill_range) where a
 * model's reference class is far into saturation (distill_rows, DISTILL_FAR): for that
 * model (want_s: the student, want_t: the teacher) each class's gap less the
 * reference's, h_c - h_a, from the logits' own difference (DISTILL_FROM,
 * DISTILL_GAP_DIFF), over what distill_range kept there (d, gap_t_row), and the sum
 * over the classes but the reference of w (h_c - h_a) into more[6] (student) and
 * more[7] (teacher), as distill_range's sums (w = q, p; their sum is more[1], more[4]).
 * A loop of its own: in distill_range's, gcc vectorised none of it.
 */
FASTLOSS_INLINE void NAME(distill_exact_range)(const int want_s, const int want_t,
                                               const REAL *es, const REAL *et, REAL *d,
                                               REAL *gap_t_row,
                                               const STORE_T *FASTLOSS_RESTRICT xs,
                                               const STORE_T *FASTLOSS_RESTRICT xt,
                                               fastloss_index n,
                                               const NAME(distill_chunk) *chunk,
                                               const NAME(distill_row) *row, double *more)
{
    const REAL unit_s = chunk->scale_s, unit_t = chunk->scale_t;
    const fastloss_index heavy_s = chunk->heavy_s, heavy_t = chunk->heavy_t;
    const REAL inv_t = row->inv_t, odds = row->odds;
    const REAL hi_ref_s = row->hi_ref_s, lo_ref_s = row->lo_ref_s;
    const REAL hi_ref_t = row->hi_ref_t, lo_ref_t = row->lo_ref_t;
    const REAL e_ref_s = row->e_ref_s, e_ref_t = row->e_ref_t;
    double lane_s[VOCAB_LANES] = {0.0}, lane_t[VOCAB_LANES] = {0.0};
#define DISTILL_EXACT_STEP(i, j)                                                            \
    do {                                                                                    \
        const REAL e_s = es[i], e_t = et[i];                                                \
        const REAL q = e_s * unit_s, p = e_t * unit_t;                                      \
        /* the shares of m = beta p + (1 - beta) q: beta p / m and (1 - beta) q / m (0     \
         * and 0 where both are 0) */                                                      \
        const REAL mix_sum = odds * p + q;                                                  \
        const REAL mix_div = mix_sum + (REAL)(mix_sum == (REAL)0);                          \
        const REAL mix_p = odds * p / mix_div, mix_q = q / mix_div;                         \
        if (want_s) {                                                                       \
            DISTILL_FROM(dy_s, i, hi_ref_s, lo_ref_s);                                      \
            DISTILL_GAP_DIFF(diff_s, dy_s, mix_p, mix_q, e_ref_s);                          \
            const REAL w = e_s == (REAL)0 || (i) == heavy_s ? (REAL)0 : q;                  \
            d[i] = diff_s;                                                                  \
            lane_s[j] += (double)(w * diff_s);                                              \
        }                                                                                   \
        if (want_t) {                                                                       \
            DISTILL_FROM(dy_t, i, hi_ref_t, lo_ref_t);                                      \
            DISTILL_GAP_DIFF(diff_t, -dy_t, mix_q, mix_p, e_ref_t);                         \
            const REAL w = e_t == (REAL)0 || (i) == heavy_t ? (REAL)0 : p;                  \
            gap_t_row[i] = diff_t;                                                          \
            lane_t[j] += (double)(w * diff_t);                                              \
        }                                                                                   \
    } while (0)
#define DISTILL_EXACT_FOLD() ((void)0)
    VOCAB_FOLDED_LOOP(n, DISTILL_EXACT_STEP, VOCAB_NO_PREFETCH, DISTILL_EXACT_FOLD);
#undef DISTILL_EXACT_FOLD
#undef DISTILL_EXACT_STEP
    if (want_s)
        more[6] += vocab_lanes_total(lane_s);
    if (want_t)
        more[7] += vocab_lanes_total(lane_t);
}

/* distill_exact_range for the models wanted (one loop each), out of line: inlined in
 * distill_pass, the three loops slowed its ordinary JSD rows by 7% (one thread, float32,
 * V=50257). */
#if defined(__GNUC__)
__attribute__((noinline))
#endif
static void NAME(distill_exact_chunk)(const int want_s, const int want_t, const REAL *es,
                                      const REAL *et, REAL *d, REAL *gap_t_row,
                                      const STORE_T *xs, const STORE_T *xt, fastloss_index n,
                                      const NAME(distill_chunk) *chunk,
                                      const NAME(distill_row) *row, double *more)
{
#define VOCAB_EXACT(ws, wt)                                                                 \
    NAME(distill_exact_range)(ws, wt, es, et, d, gap_t_row, xs, xt, n, chunk, row, more)
    if (want_s && want_t)
        VOCAB_EXACT(1, 1);
    else if (want_s)
        VOCAB_EXACT(1, 0);
    else if (want_t)
        VOCAB_EXACT(0, 1);
#undef VOCAB_EXACT
}

/* Pass B (!pass_c: the loss, the KLs' excess R and the sums of `more`, OUT) or C (the
 * constants read from `row`) over one row,
 * chunk by chunk (the chunks of pass A, whose records are student_chunks and
 * teacher_chunks); see distill_range.  gs, gt: the gradient rows wanted, or NULL. */
FASTLOSS_INLINE void NAME(distill_pass)(int divergence, int pass_c, REAL *es_row,
                                        REAL *et_row, REAL *d_row, REAL *gap_row,
                                        const STORE_T *xs_row, const STORE_T *xt_row,
                                        fastloss_index n_classes, fastloss_index n_chunks,
                                        double inv_temperature, const double *student_chunks,
                                        const double *teacher_chunks, const double *close,
                                        const vocab_row_stats *student,
                                        const vocab_row_stats *teacher,
                                        const NAME(distill_row) *row,
                                        REAL scale_s, REAL scale_t, GRAD_T *gs, GRAD_T *gt,
                                        double *loss, double *excess, double *more)
{
    double total_l = 0.0, total_r = 0.0;
    /* the JSD's teacher gaps: in d when the student's gradient does not keep its own there */
    REAL *gap_t_rows = gs ? gap_row : d_row;
    for (fastloss_index k = 0; k < n_chunks; ++k) {
        const fastloss_index start = k * FASTLOSS_VOCAB_CHUNK;
        NAME(distill_chunk) chunk;
        const fastloss_index n = NAME(distill_chunk_of)(k, n_classes, student_chunks,
                                                        teacher_chunks, close, student, teacher,
                                                        inv_temperature, &chunk);
        REAL *es = es_row + start, *et = et_row + start;
        REAL *d = d_row + start, *gap_t = gap_t_rows + start;
        GRAD_T *gsk = gs ? gs + start : NULL, *gtk = gt ? gt + start : NULL;
        chunk.heavy_s = row->heavy_s - start; /* out of [0, n) where not in this chunk */
        chunk.heavy_t = row->heavy_t - start;
        double sum_s = 0.0, sum_t = 0.0, sum_l = 0.0, sum_r = 0.0;
#define VOCAB_RANGE(div, c, ws, wt)                                                         \
    NAME(distill_range)(div, c, ws, wt, es, et, d, gap_t, xs_row + start, xt_row + start, n,  \
                        &chunk, row, scale_s, scale_t,                                      \
                        gsk, gtk, &sum_s, &sum_t, &sum_l, &sum_r, more)
        if (!pass_c) {
            /* the KLs' pass B writes the gradient of the model whose flag it is given and
             * sums, for the other model's pass C, sum_c w (y_c - y_a) (distill_heaviest) */
            if (divergence == FASTLOSS_DIVERGENCE_FORWARD_KL) {
                if (gsk && gtk)
                    VOCAB_RANGE(FASTLOSS_DIVERGENCE_FORWARD_KL, 0, 1, 1);
                else if (gsk)
                    VOCAB_RANGE(FASTLOSS_DIVERGENCE_FORWARD_KL, 0, 1, 0);
                else if (gtk)
                    VOCAB_RANGE(FASTLOSS_DIVERGENCE_FORWARD_KL, 0, 0, 1);
                else
                    VOCAB_RANGE(FASTLOSS_DIVERGENCE_FORWARD_KL, 0, 0, 0);
            } else if (divergence == FASTLOSS_DIVERGENCE_REVERSE_KL) {
                if (gsk && gtk)
                    VOCAB_RANGE(FASTLOSS_DIVERGENCE_REVERSE_KL, 0, 1, 1);
                else if (gtk)
                    VOCAB_RANGE(FASTLOSS_DIVERGENCE_REVERSE_KL, 0, 0, 1);
                else if (gsk)
                    VOCAB_RANGE(FASTLOSS_DIVERGENCE_REVERSE_KL, 0, 1, 0);
                else
                    VOCAB_RANGE(FASTLOSS_DIVERGENCE_REVERSE_KL, 0, 0, 0);
            } else {
                if (gsk && gtk)
                    VOCAB_RANGE(FASTLOSS_DIVERGENCE_JSD, 0, 1, 1);
                else if (gsk)
                    VOCAB_RANGE(FASTLOSS_DIVERGENCE_JSD, 0, 1, 0);
                else if (gtk)
                    VOCAB_RANGE(FASTLOSS_DIVERGENCE_JSD, 0, 0, 1);
                else
                    VOCAB_RANGE(FASTLOSS_DIVERGENCE_JSD, 0, 0, 0);
                /* a model whose reference is far into saturation: its kept gaps again,
                 * exactly (distill_exact_range) */
                if (row->exact_s || row->exact_t)
                    NAME(distill_exact_chunk)(row->exact_s, row->exact_t, es, et, d, gap_t,
                                              xs_row + start, xt_row + start, n, &chunk, row,
                                              more);
            }
        } else {
            if (divergence == FASTLOSS_DIVERGENCE_FORWARD_KL)
                VOCAB_RANGE(FASTLOSS_DIVERGENCE_FORWARD_KL, 1, 0, 1);
            else if (divergence == FASTLOSS_DIVERGENCE_REVERSE_KL)
                VOCAB_RANGE(FASTLOSS_DIVERGENCE_REVERSE_KL, 1, 1, 0);
            else if (gsk && gtk)
                VOCAB_RANGE(FASTLOSS_DIVERGENCE_JSD, 1, 1, 1);
            else if (gsk)
                VOCAB_RANGE(FASTLOSS_DIVERGENCE_JSD, 1, 1, 0);
            else
                VOCAB_RANGE(FASTLOSS_DIVERGENCE_JSD, 1, 0, 1);
        }
#undef VOCAB_RANGE
        total_l += sum_l;
        total_r += sum_r;
    }
    if (!pass_c) {
        *loss = total_l;
        *excess = total_r;
    }
}

/*
 * The KLs' correction of the gradient that pass B wrote (the forward KL's student's,
 * the reverse KL's teacher's), from pass B's excess R (distill_rows): pass B kept
 * t_c = p expm1(y0) (forward; reverse: q expm1(z0)) in t_row, and the gradient is
 * scale (t_c - R p_c) / (1 + R), p_c = e_c unit_k (e_row: the other model's exps, unit_k
 * its chunk's scale), stored (rounded once) to g.
 */
/*
 * The totals pass C subtracts.  Each gradient that subtracts one is w_c (h_c - H),
 * H = sum_c w h / sum_c w: the reverse KL's student's (w = q, h = y), the forward KL's
 * teacher's (w = p, h = -y, as -(y - sum p y)) and the JSD's (w = q, h = -v; w = p,
 * h = -u).  Where the models are far apart h_c and H are both large (a class the other
 * model rules out by 20 nats puts about 20 into both), and where one class a holds
 * nearly all of w, h_a and H agree to 1 - w_a: taken as the difference of the two, each
 * rounded, the gradient kept their roundings (1e-6 and more of it in float).  So both
 * are taken relative to the heaviest class a (distill_heaviest), the reference,
 *   h_c - H = (h_c - h_a) - D,   D = sum_(c != a) w_c (h_c - h_a) / sum_c w_c,
 * where a's own term is 0, not the remainder of two that cancel.
 * The KLs: h_c - h_a = y_c - y_a = ((x_s - x_t)_c - (x_s - x_t)_a) / T from the logits
 * themselves (DISTILL_FROM_REF; kappa, and its error, cancel): d, rounded relative to its
 * chunk's shifts, would carry its rounding (u times the other model's log-gap at a
 * heavy class, 5-10 nats in float) into every difference.  Pass B keeps the difference
 * in d and sums w times it; D divides that by sum_k W_k, W_k = exp(log scale_k) S_k the
 * weight of chunk k (distill_mass); pass C stores w (d_c - D).  Reading the two logit
 * rows again costs the reverse KL's value_and_grad about 17% (one thread, float32,
 * V=50257: 1.16 -> 1.36-1.40 ns an element, BENCHMARKS.md).
 * The JSD: pass B keeps each class's gap less its saturation where it is saturated
 * (kept_c = h_c - L [saturated_c], L = -log(1 - beta) for -v, -log beta for -u:
 * DISTILL_STEP), so that a class near saturation keeps the small part of its gap; then
 * h_c - h_a = (kept_c - kept_a) + L ([saturated_c] - [saturated_a]), and pass B sums,
 * over c != a, w, w kept and w ([saturated_c] - [saturated_a]) (more[0..5]).  The kept
 * gaps come from y = d + offset as rounded: where two saturated classes share the
 * weight, their difference, a small part of either, carries y's rounding amplified (up
 * to 7.7x the float32 contract from 20 nats apart and 2.3x float64's at 1e4).  So where
 * a model's reference is saturated and far (DISTILL_FAR), distill_exact_range replaces
 * that model's kept gaps by h_c - h_a itself, from the logits' own differences
 * (DISTILL_GAP_DIFF), and sums w (h_c - h_a) (more[6], more[7]); D is then that sum over
 * sum w.  (The JSD's value_and_grad: 2.57 -> 2.84 ns an element for the heaviest
 * class, as above; about 4.4 in the rows of exact differences.)
 * Dividing by sum w, 1 up to the exps' roundings, keeps those roundings out of D.
 */
static fastloss_index NAME(distill_heaviest)(const REAL *e_row, const double *chunks,
                                             fastloss_index n_chunks,
                                             fastloss_index n_classes, double max)
{
    for (fastloss_index k = 0; k < n_chunks; ++k) {
        if (chunks[k * VOCAB_CHUNK_FIELDS + VOCAB_CHUNK_MAX] != max)
            continue;
        /* the chunk that holds the row's max: its largest exp (1, at the max) */
        const fastloss_index start = k * FASTLOSS_VOCAB_CHUNK;
        const fastloss_index n = fastloss_vocab_chunk_length(n_classes, start);
        fastloss_index best = -1;
        REAL top = 0;
        for (fastloss_index c = 0; c < n; ++c)
            if (e_row[start + c] > top) {
                top = e_row[start + c];
                best = start + c;
            }
        return best;
    }
    return -1;
}

/* sum_c w_c of a model, as sum_k W_k, W_k = exp(log scale_k) S_k (the KLs' D divides by
 * it: distill_heaviest). */
static double NAME(distill_mass)(const double *chunks, fastloss_index n_chunks,
                                 double inv_temperature, const vocab_row_stats *model)
{
    double mass = 0.0;
    for (fastloss_index k = 0; k < n_chunks; ++k) {
        const double *chunk = chunks + k * VOCAB_CHUNK_FIELDS;
        if (chunk[VOCAB_CHUNK_SUM] != 0.0) /* (a chunk the model rules out adds nothing) */
            mass += exp(NAME(distill_log_scale)(chunk, model, inv_temperature)) *
                    chunk[VOCAB_CHUNK_SUM];
    }
    return mass;
}

static void NAME(distill_correct)(int divergence, const REAL *t_row, const REAL *e_row,
                                  fastloss_index n_classes, fastloss_index n_chunks,
                                  double inv_temperature, const double *student_chunks,
                                  const double *teacher_chunks, const double *close,
                                  const vocab_row_stats *student,
                                  const vocab_row_stats *teacher, double scale,
                                  double excess, GRAD_T *g)
{
    const REAL a = (REAL)(scale / (1.0 + excess));
    const double b_unit = -scale * excess / (1.0 + excess);
    for (fastloss_index k = 0; k < n_chunks; ++k) {
        const fastloss_index start = k * FASTLOSS_VOCAB_CHUNK;
        NAME(distill_chunk) chunk;
        const fastloss_index n = NAME(distill_chunk_of)(k, n_classes, student_chunks,
                                                        teacher_chunks, close, student, teacher,
                                                        inv_temperature, &chunk);
        const REAL b = (REAL)(b_unit * (divergence == FASTLOSS_DIVERGENCE_FORWARD_KL
                                            ? (double)chunk.scale_t
                                            : (double)chunk.scale_s));
        const REAL *tk = t_row + start, *ek = e_row + start;
        GRAD_T *gk = g + start;
#pragma omp simd
        for (fastloss_index c = 0; c < n; ++c)
            STORE(gk, c, a * tk[c] + b * ek[c]);
    }
}

/* The gradient that subtracts a KL (the reverse KL's student's q (y - K_s), the forward
 * KL's teacher's p (-y - K_t)) in a row whose KL is +inf: a class the other model rules
 * out (its logit -inf) has mass under this one (its logit finite), however little, a
 * probability that underflows included (DISTILL_STEP).  w (h - K) is then 0 where this
 * model rules the class out (own logit -inf), inf - inf (NaN) at a class the other
 * rules out, and -inf at every other class, times the scale: what pass C gives where
 * no probability underflows, and the reference everywhere. */
static void NAME(distill_infinite)(const STORE_T *own, const STORE_T *other,
                                   fastloss_index n_classes, REAL scale, GRAD_T *g)
{
    for (fastloss_index c = 0; c < n_classes; ++c) {
        const REAL x_own = LOAD(own, c), x_other = LOAD(other, c);
        const REAL v = x_own == -(REAL)INFINITY    ? (REAL)0
                       : x_other == -(REAL)INFINITY ? (REAL)NAN
                                                    : -(REAL)INFINITY;
        STORE(g, c, scale * v);
    }
}

static void NAME(distill_rows)(const NAME(distill_job) *job, int thread, int n_threads)
{
    const fastloss_vocab_options *options = job->options;
    const fastloss_index n_classes = options->n_classes, n_chunks = job->n_chunks;
    const int divergence = options->divergence;
    const double inv_temperature = 1.0 / options->temperature;
    const double beta = options->beta;
    const int jsd = divergence == FASTLOSS_DIVERGENCE_JSD;
    char *mine = job->scratch + job->per_thread * (size_t)thread;
    double *student_chunks = (double *)mine;
    double *teacher_chunks = student_chunks + n_chunks * VOCAB_CHUNK_FIELDS;
    double *close = teacher_chunks + n_chunks * VOCAB_CHUNK_FIELDS;
    mine += ((size_t)n_chunks * DISTILL_CHUNK_DOUBLES * sizeof(double) + 63) / 64 * 64;
    const size_t row_bytes = ((size_t)n_classes * sizeof(REAL) + 63) / 64 * 64;
    REAL *scratch_es = (REAL *)mine, *scratch_et = (REAL *)(mine + row_bytes);
    REAL *d_row = (REAL *)(mine + 2 * row_bytes), *gap_row = (REAL *)(mine + 3 * row_bytes);
    NAME(distill_row) row;
    row.beta = (REAL)beta;
    row.inv_t = (REAL)inv_temperature;
    row.odds = (REAL)(beta / (1.0 - beta));
    {
        /* near 0, u = K_(1 - beta)(y) ~ (1 - beta) y and v = K_beta(-y) ~ -beta y
         * (distill_cgf): the smaller of the two by its series, y times
         * sum_k c_k y**k, the other from it as v = u - y (or u = v + y), which loses
         * nothing (that error, relative, is the series' times beta / (1 - beta) <= 1, or
         * its mirror, and y's own error enters u and v alike) */
        double cgf[VOCAB_CGF_TERMS] = {0.0}, jsd_f[VOCAB_CGF_TERMS] = {0.0};
        const int u_smaller = beta >= 0.5;
        if (divergence == FASTLOSS_DIVERGENCE_JSD) {
            /* u's series, c_k = kappa_(k+1) / (k + 1)! of Bernoulli(1 - beta), one term
             * more for f's; each from the smaller of beta and 1 - beta (exact where beta
             * >= 1/2), the one the series are accurate at (vocab_bernoulli_cgf) */
            double u_series[VOCAB_CGF_TERMS] = {0.0};
            const double smaller = beta < 0.5 ? beta : 1.0 - beta;
            vocab_bernoulli_cgf(smaller, beta < 0.5, DISTILL_JSD_F_TERMS + 1, u_series);
            vocab_bernoulli_cgf(smaller, 0, DISTILL_JSD_TERMS, cgf); /* u_smaller ? 1 - beta : beta */
            if (!u_smaller) /* v = sum_k c_k (-y)**(k + 1) = y sum_k (-1)**(k + 1) c_k y**k */
                for (int k = 0; k < VOCAB_CGF_TERMS; k += 2)
                    cgf[k] = -cgf[k];
            /* f(y) = y u'(y) - u(y) = y**2 sum_j (j + 1) c_(j+1) y**j (DISTILL_STEP) */
            for (int k = 0; k < DISTILL_JSD_F_TERMS; ++k)
                jsd_f[k] = (double)(k + 1) * u_series[k + 1];
        }
        for (int k = 0; k < VOCAB_CGF_TERMS; ++k) {
            row.cgf[k] = (REAL)cgf[k];
            row.jsd_f[k] = (REAL)jsd_f[k];
        }
        row.u_of_y = u_smaller ? (REAL)0 : (REAL)1;
        row.v_of_y = u_smaller ? (REAL)-1 : (REAL)0;
    }
    row.beta_c = (REAL)(1.0 - beta);
    row.log_beta = (REAL)log(beta);
    row.log_beta_c = (REAL)log1p(-beta);
    row.log_odds = (REAL)(log(beta) - log1p(-beta));
    /* the rows claimed a few at a time by whichever thread is free (common.h) */
    const fastloss_index claim = fastloss_claim_items(options->n_rows, n_threads);
    fastloss_index begin, end;
    while (fastloss_claim_next(job->next_row, claim, options->n_rows, &begin, &end))
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
        /* pass A: both rows' max and sum of exps, each row read from memory once; the
         * exps stay in a model's gradient row where it is of the compute type (never an
         * input: the Cython layer gives the kernel gradients that overlap no input and
         * not each other), else in scratch, and so do the differences a_t - a_s, so
         * that the later passes read three rows rather than the two logits' and two
         * of exps */
        REAL *es_row = gs && STORAGE_IS_COMPUTE ? (REAL *)gs : scratch_es;
        REAL *et_row = gt && STORAGE_IS_COMPUTE ? (REAL *)gt : scratch_et;
        vocab_row_stats student, teacher;
        NAME(distill_stats)(jsd, xs, xt, n_classes, n_chunks, inv_temperature, es_row,
                            et_row, d_row, student_chunks, teacher_chunks, close, &student,
                            &teacher);
        NAME(distill_offsets)(jsd, student_chunks, close, n_chunks, inv_temperature, &student,
                              &teacher);
        /* A row with no finite log-sum-exp (a +inf or NaN logit, or every logit -inf)
         * has no distribution: its loss and gradients are NaN. */
        const int finite = isfinite(student.max) && isfinite(student.log_sum) &&
                           isfinite(teacher.max) && isfinite(teacher.log_sum);
        const double upstream = job->grad_output[i * job->grad_output_stride];
        const double scale = finite ? upstream * job->factor * inv_temperature : NAN;
        const double weight_s = divergence == FASTLOSS_DIVERGENCE_JSD ? 1.0 - beta : 1.0;
        const double weight_t = divergence == FASTLOSS_DIVERGENCE_JSD ? beta : 1.0;
        const REAL scale_s = (REAL)(scale * weight_s), scale_t = (REAL)(scale * weight_t);
        double loss = 0.0, excess = 0.0;
        double more[8] = {0.0};
        /* the references of the gradients that subtract a total (distill_heaviest) */
        const int total_s = gs && divergence != FASTLOSS_DIVERGENCE_FORWARD_KL;
        const int total_t = gt && divergence != FASTLOSS_DIVERGENCE_REVERSE_KL;
        row.heavy_s = total_s ? NAME(distill_heaviest)(es_row, student_chunks, n_chunks,
                                                       n_classes, student.max)
                              : -1;
        row.heavy_t = total_t ? NAME(distill_heaviest)(et_row, teacher_chunks, n_chunks,
                                                       n_classes, teacher.max)
                              : -1;
        row.ref_s = row.ref_t = 0;
        row.sat1_s = row.sat0_s = row.sat1_t = row.sat0_t = 0;
        row.mean = 0;
        row.e_ref_s = row.e_ref_t = 0;
        /* q and p at the references (as DISTILL_STEP forms them), whether each is
         * saturated as DISTILL_STEP decides, and x_s - x_t there as hi + lo
         * (DISTILL_FROM) */
        REAL q_at[2] = {0, 0}, p_at[2] = {0, 0}, hi_at[2] = {0, 0}, lo_at[2] = {0, 0};
        for (int side = 0; side < 2; ++side) {
            const fastloss_index a = side == 0 ? row.heavy_s : row.heavy_t;
            if (a < 0)
                continue;
            NAME(distill_chunk) chunk;
            (void)NAME(distill_chunk_of)(a / FASTLOSS_VOCAB_CHUNK, n_classes, student_chunks,
                                         teacher_chunks, close, &student, &teacher,
                                         inv_temperature, &chunk);
            q_at[side] = es_row[a] * chunk.scale_s;
            p_at[side] = et_row[a] * chunk.scale_t;
            DISTILL_TWO_SUM(ref, LOAD(xs, a), LOAD(xt, a));
            hi_at[side] = ref_hi;
            lo_at[side] = ref_lo == ref_lo ? ref_lo : (REAL)0;
        }
        row.sat_ref_s = row.heavy_s >= 0 && q_at[0] * (REAL)0.5 >= p_at[0];
        row.sat_ref_t = row.heavy_t >= 0 && p_at[1] * (REAL)0.5 >= q_at[1];
        const REAL heavy_q = q_at[0], heavy_p = p_at[1]; /* w at the references */
        /* the JSD's exact differences where a reference is far into saturation
         * (DISTILL_GAP_DIFF) */
        double far_offset = 0.0; /* the largest finite |offset_k| (DISTILL_FAR_OFFSET) */
        if (jsd && (row.sat_ref_s || row.sat_ref_t))
            for (fastloss_index k = 0; k < n_chunks; ++k) {
                const double offset = fabs(close[3 * k]);
                far_offset = offset > far_offset && offset <= DBL_MAX ? offset : far_offset;
            }
        const REAL far_ratio = far_offset >= DISTILL_FAR_OFFSET ? (REAL)2 : DISTILL_FAR;
        row.exact_s = jsd && row.sat_ref_s && q_at[0] > 0 && q_at[0] >= far_ratio * p_at[0];
        row.exact_t = jsd && row.sat_ref_t && p_at[1] > 0 && p_at[1] >= far_ratio * q_at[1];
        if (row.exact_s) /* as DISTILL_STEP's shares */
            row.e_ref_s = row.odds * p_at[0] / q_at[0];
        if (row.exact_t)
            row.e_ref_t = (REAL)((1.0 - beta) / beta) * q_at[1] / p_at[1];
        row.hi_ref_s = hi_at[0];
        row.lo_ref_s = lo_at[0];
        row.hi_ref_t = hi_at[1];
        row.lo_ref_t = lo_at[1];
        /* pass B: the divergence, with the gradients that subtract no row total (the
         * forward KL's student's, the reverse KL's teacher's) */
        NAME(distill_pass)(divergence, 0, es_row, et_row, d_row, gap_row, xs, xt, n_classes,
                           n_chunks,
                           inv_temperature, student_chunks, teacher_chunks, close, &student,
                           &teacher, &row, scale_s, scale_t, gs, gt, &loss, &excess, more);
        if (!jsd) {
            /* The KLs' kappa (distill_offsets, without D) carries the roundings of the
             * sums of exps (about 1e-8), so pass B's y0 = d + offset is y - eps with a
             * constant eps; a close pair's q - p and y are as small as the models'
             * distance, so eps must go.  Pass B summed, beside L0 = sum_c p g(y0), R =
             * sum_c p expm1(y0) (forward; the reverse KL the same with q and z0 = -y0),
             * each term as accurate as the gradient's (it is that term: near 0 by g's
             * series, p (y0 + g(y0)), beyond as q - p).  sum_c q = sum_c p e^y = 1
             * gives e^eps = 1 / (1 + R) (reverse: e^-eps), so that, exactly,
             *   KL = sum_c p g(y0 + eps) = L0 - R + log1p(R),
             *   q - p = (t_c - R p) / (1 + R)  (t_c = p expm1(y0), distill_correct).
             * (The gradients that subtract a total do not use y0: distill_heaviest.)
             * The JSD keeps D in pass A. */
            loss = (loss - excess) + log1p(excess);
            GRAD_T *g = divergence == FASTLOSS_DIVERGENCE_FORWARD_KL ? gs : gt;
            if (g)
                NAME(distill_correct)(divergence,
                                      divergence == FASTLOSS_DIVERGENCE_FORWARD_KL ? es_row
                                                                                  : et_row,
                                      divergence == FASTLOSS_DIVERGENCE_FORWARD_KL ? et_row
                                                                                  : es_row,
                                      n_classes, n_chunks, inv_temperature, student_chunks,
                                      teacher_chunks, close, &student, &teacher, scale,
                                      excess, g);
        }
        /* pass C: the gradients that subtract the totals, from the kept rows (a KL's
         * own where it is +inf: distill_infinite) */
        if (!jsd && loss == INFINITY && (total_s || total_t)) {
            if (divergence == FASTLOSS_DIVERGENCE_REVERSE_KL)
                NAME(distill_infinite)(xs, xt, n_classes, scale_s, gs);
            else
                NAME(distill_infinite)(xt, xs, n_classes, scale_t, gt);
        } else if (total_s || total_t) {
            /* pass C's constants (distill_heaviest) */
            if (divergence == FASTLOSS_DIVERGENCE_REVERSE_KL)
                row.mean = (REAL)(more[0] / NAME(distill_mass)(student_chunks, n_chunks,
                                                               inv_temperature, &student));
            if (divergence == FASTLOSS_DIVERGENCE_FORWARD_KL)
                row.mean = (REAL)(more[0] / NAME(distill_mass)(teacher_chunks, n_chunks,
                                                               inv_temperature, &teacher));
            if (jsd && total_s && row.exact_s) { /* every kept value is h_c - h_a */
                const double mean = more[6] / (more[1] + (double)heavy_q);
                row.ref_s = 0;
                row.sat1_s = row.sat0_s = (REAL)-mean;
            }
            if (jsd && total_t && row.exact_t) {
                const double mean = more[7] / (more[4] + (double)heavy_p);
                row.ref_t = 0;
                row.sat1_t = row.sat0_t = (REAL)-mean;
            }
            if (jsd && total_s && !row.exact_s) {
                const double kept = row.heavy_s >= 0 ? (double)d_row[row.heavy_s] : 0.0;
                const double l = -log1p(-beta), sat_ref = row.sat_ref_s;
                const double mean =
                    (more[0] - kept * more[1] + l * more[2]) / (more[1] + (double)heavy_q);
                row.ref_s = (REAL)kept;
                row.sat1_s = (REAL)((1.0 - sat_ref) * l - mean);
                row.sat0_s = (REAL)(-sat_ref * l - mean);
            }
            if (jsd && total_t && !row.exact_t) {
                const REAL *kept_row = gs ? gap_row : d_row; /* (distill_pass) */
                const double kept = row.heavy_t >= 0 ? (double)kept_row[row.heavy_t] : 0.0;
                const double l = -log(beta), sat_ref = row.sat_ref_t;
                const double mean =
                    (more[3] - kept * more[4] + l * more[5]) / (more[4] + (double)heavy_p);
                row.ref_t = (REAL)kept;
                row.sat1_t = (REAL)((1.0 - sat_ref) * l - mean);
                row.sat0_t = (REAL)(-sat_ref * l - mean);
            }
            NAME(distill_pass)(divergence, 1, es_row, et_row, d_row, gap_row, xs, xt, n_classes,
                               n_chunks, inv_temperature, student_chunks, teacher_chunks,
                               close, &student, &teacher, &row, scale_s, scale_t,
                               divergence == FASTLOSS_DIVERGENCE_FORWARD_KL ? NULL : gs,
                               divergence == FASTLOSS_DIVERGENCE_REVERSE_KL ? NULL : gt,
                               NULL, NULL, NULL);
        }
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
    fastloss_index next_row = 0;
    NAME(distill_job) job = {options, (const STORE_T *)student_data,
                             (const STORE_T *)teacher_data, student_row_stride,
                             teacher_row_stride, target, row_loss,
                             grad_output ? grad_output : &one,
                             grad_output ? grad_output_stride : 0, factor,
                             (GRAD_T *)grad_student_data, (GRAD_T *)grad_teacher_data,
                             grad_student_row_stride, grad_teacher_row_stride, n_chunks,
                             scratch, per_thread, &next_row};
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

#undef DISTILL_CHUNK_DOUBLES
#undef DISTILL_SERIES_TERMS
#undef DISTILL_JSD_SERIES_BELOW
#undef DISTILL_SERIES_BELOW
#undef DISTILL_IN_DOUBLE
#undef DISTILL_A_BELOW
#undef DISTILL_A_TERMS
#undef DISTILL_G
#undef DISTILL_JSD_TERMS
#undef DISTILL_JSD_F_TERMS
#undef DISTILL_FROM_REF
#undef DISTILL_FROM
#undef DISTILL_GAP_DIFF
#undef DISTILL_BLEND
#undef DISTILL_TINY
#undef DISTILL_FAR
#undef DISTILL_FAR_OFFSET
#undef DISTILL_TWO_SUM
