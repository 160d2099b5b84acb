/*
 * cross_entropy_row_body.h -- the per-row algorithm, written once.  No include
 * guard, on purpose: cross_entropy_impl.h includes it once per triple of
 *   VAL      the type the row is computed in: REAL, or double ("wide" rows)
 *   STORAGE  the storage tag of the call (storage.h, from storage_begin.h): the
 *            gradient is GRAD_T (STORE, STORE_WIDE), weights and soft targets AUX_T
 *            (AUX_LOAD); both are STORE_T but for the half types (float32 AUX_T,
 *            and GRAD_T with grad_dtype="float32")
 *   ROW_IN   the storage of the row's values y: STORAGE itself (the logits), or
 *            float64 for wide rows (the row widened, or soft-capped, into scratch)
 * with ROW(name) giving each instantiation its own names, STORE_VAL the store of
 * a VAL (STORE, or STORE_WIDE when VAL is double), and VAL_EXP and
 * VAL_EXP_NONPOSITIVE the vectorisable exps of fastmath.h for VAL.  (VAL,
 * STORAGE, ROW_IN) is (float, float32, float32), (double, float64, float64),
 * (double, float32, float64) for soft-capped float32 logits, whose capped values
 * are kept in double so their rounding stays out of the softmax, and for each
 * half tag (float, tag, tag) and (double, tag, float64).  The exps
 * (e_row, tile) are VAL scratch, or the gradient row itself when the runner
 * knows STORE_T is VAL; y and e_row may be the same memory (in place).
 */

#define ROW_IN_T FASTLOSS_STORAGE_T(ROW_IN)
#define ROW_LOAD(array, i) FASTLOSS_LOAD(ROW_IN, array, i)

/*
 * Half-precision rows (ROW_IN a half tag, VAL float: CE_PAIRS) are read two classes
 * at a time, as one 32-bit word: class 2p in its low half, 2p + 1 in its high half
 * (little-endian).  A bfloat16 word gives both floats with one instruction each (a
 * shift left, an and), where a class at a time costs a widening, and for a vector of
 * 32 classes a load and an extract more.  Their exps are kept in "pair order" in each
 * chunk (e_row, or the forward's tile): for a chunk of n classes and h = n / 2, class
 * 2p's at p, class 2p + 1's at h + p, and an odd n's last class at n - 1 (ce_slot).
 * Every reader of a chunk's exps takes them in that order: its sums (which add every
 * exp in any order), the target's slot (ce_chunk_sum), and the gradient pass, which
 * writes the pair again as one word (ce_grad_pairs).  The gradient, the loss and the
 * statistics are those of the class-by-class order, up to the order of the sums.
 */
#if !FASTLOSS_STORAGE_IS_COMPUTE(ROW_IN) && defined(__BYTE_ORDER__) && \
    __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define CE_PAIRS 1
#else
#define CE_PAIRS 0
#endif

/* The slot of class c's exp in a chunk of n classes (see CE_PAIRS). */
FASTLOSS_INLINE fastloss_index ROW(ce_slot)(fastloss_index c, fastloss_index n)
{
#if CE_PAIRS
    const fastloss_index half = n / 2;
    return c >= 2 * half ? c : (c & 1) ? half + c / 2 : c / 2;
#else
    (void)n;
    return c;
#endif
}

#if CE_PAIRS
/* classes 2p and 2p + 1 of `values` as one word (any alignment) */
FASTLOSS_INLINE uint32_t ROW(ce_pair)(const ROW_IN_T *values, fastloss_index p)
{
    uint32_t word;
    memcpy(&word, values + 2 * p, sizeof word);
    return word;
}

/* class 2p (the low half) and class 2p + 1 (the high half) of a word, as VAL */
FASTLOSS_INLINE VAL ROW(ce_pair_lo)(uint32_t word)
{
    const ROW_IN_T half = (ROW_IN_T)(word & 0xffffu);
    return ROW_LOAD(&half, 0);
}

FASTLOSS_INLINE VAL ROW(ce_pair_hi)(uint32_t word)
{
    const ROW_IN_T half = (ROW_IN_T)(word >> 16);
    return ROW_LOAD(&half, 0);
}
#endif

/* Largest value.  The order of a max does not change its value, so an
 * OpenMP simd reduction (gcc does not vectorise this loop without one, as
 * NaN makes `>` non-associative) costs nothing in determinism.  Whether a NaN
 * wins or is skipped here does not matter: it reaches the row's sum through
 * the exp pass either way.  The simd loops run over whole vectors of 64 bytes
 * and a plain loop takes the tail: gcc ends a simd reduction's loop with a
 * scalar epilogue that stores each tail value into one lane of the reduction's
 * vector in memory and then loads the whole vector, a store-forwarding stall
 * that every row with a tail paid (every block of a row, in the block
 * statistics: 41% of the time of a block one class wide). */
FASTLOSS_INLINE VAL ROW(ce_max)(const ROW_IN_T *values, fastloss_index n)
{
    const fastloss_index vector = 64 / (fastloss_index)sizeof(VAL);
    VAL result = -(VAL)INFINITY;
    fastloss_index c = 0;
#if CE_PAIRS
    /* pairs: a vector's words are 2 * vector classes */
    const fastloss_index pairs = n / 2 / vector * vector;
#pragma omp simd reduction(max : result)
    for (fastloss_index p = 0; p < pairs; ++p) {
        const uint32_t word = ROW(ce_pair)(values, p);
        const VAL lo = ROW(ce_pair_lo)(word), hi = ROW(ce_pair_hi)(word);
        const VAL value = lo > hi ? lo : hi;
        result = value > result ? value : result;
    }
    c = 2 * pairs;
#endif
    const fastloss_index body = c + (n - c) / vector * vector;
#pragma omp simd reduction(max : result)
    for (fastloss_index k = c; k < body; ++k) {
        const VAL value = ROW_LOAD(values, k);
        result = value > result ? value : result;
    }
    for (fastloss_index k = body; k < n; ++k) {
        const VAL value = ROW_LOAD(values, k);
        result = value > result ? value : result;
    }
    return result;
}

/* Prefetch the lines of values[from, to) (none when to <= from), four a step, with
 * the given locality (a constant where inlined: ce_prefetch_line). */
FASTLOSS_INLINE void ROW(ce_prefetch)(const ROW_IN_T *values, fastloss_index from,
                                      fastloss_index to, int locality)
{
    const fastloss_index line = 64 / (fastloss_index)sizeof(ROW_IN_T);
    fastloss_index c = from;
    for (; c + 3 * line < to; c += 4 * line) {
        ce_prefetch_line(values + c, locality);
        ce_prefetch_line(values + c + line, locality);
        ce_prefetch_line(values + c + 2 * line, locality);
        ce_prefetch_line(values + c + 3 * line, locality);
    }
    for (; c < to; c += line)
        ce_prefetch_line(values + c, locality);
}

/* Prefetch the classes [from, to) of the stream that runs on from row y (n_classes
 * long) into the row `ahead`: those below n_classes are y's, the others ahead's (less
 * n_classes). */
FASTLOSS_INLINE void ROW(ce_prefetch_ahead)(const ROW_IN_T *y, const ROW_IN_T *ahead,
                                            fastloss_index n_classes, fastloss_index from,
                                            fastloss_index to, int locality)
{
    ROW(ce_prefetch)(y, from, to < n_classes ? to : n_classes, locality);
    ROW(ce_prefetch)(ahead, (from > n_classes ? from : n_classes) - n_classes, to - n_classes,
                     locality);
}

/* ce_prefetch_ahead with CE_PREFETCH_AHEAD_LOCALITY (to_l2) or CE_PREFETCH_LOCALITY:
 * one constant locality in each branch. */
FASTLOSS_INLINE void ROW(ce_prefetch_ahead_to)(const ROW_IN_T *y, const ROW_IN_T *ahead,
                                               fastloss_index n_classes, fastloss_index from,
                                               fastloss_index to, int to_l2)
{
    if (to_l2)
        ROW(ce_prefetch_ahead)(y, ahead, n_classes, from, to, CE_PREFETCH_AHEAD_LOCALITY);
    else
        ROW(ce_prefetch_ahead)(y, ahead, n_classes, from, to, CE_PREFETCH_LOCALITY);
}

/*
 * Prefetch for writing the lines of the gradient g[from, to) (g NULL: nothing): rows
 * whose exps are kept apart from the gradient (half storage, wide rows, the in-place
 * backward) would otherwise first touch the gradient row in the gradient pass, each
 * store a miss that waits for its line (perf: 58% of that pass at the store).  Issued
 * chunk by chunk during the exp pass (for the half rows a block of classes at a time
 * between blocks of exps: CE_PREFETCH_BLOCK), the lines arrive while the exps are
 * computed, as float32's gradient row does by holding the exps.
 */
FASTLOSS_INLINE void ROW(ce_touch_grad)(GRAD_T *g, fastloss_index from, fastloss_index to)
{
    if (!g)
        return;
    const char *begin = (const char *)(g + from), *end = (const char *)(g + to);
    for (const char *p = begin; p < end; p += 64)
        __builtin_prefetch(p, 1, CE_PREFETCH_LOCALITY);
}

/*
 * The prefetches that go with one chunk's exps in the fused statistics pass
 * (ce_row_stats) and the exps from a given shift (ce_row_exps): the gradient row's lines
 * for writing (`touch`, the chunk's first class; NULL: none) and the logits
 * CE_PREFETCH_DISTANCE ahead, of this row and then of the next (`ahead`; NULL: none),
 * class c of the chunk going with class `ahead_from` + c of that stream.
 * ce_exp_next_max and ce_exp issue them a block of classes at a time, between their
 * blocks of exps (CE_PREFETCH_BLOCK).
 */
typedef struct ROW(ce_chunk_prefetch) {
    GRAD_T *touch;
    const ROW_IN_T *y, *ahead;
    fastloss_index n_classes, ahead_from;
} ROW(ce_chunk_prefetch);

/* The prefetches of the chunk's classes [from, to) (plan NULL: none). */
FASTLOSS_INLINE void ROW(ce_chunk_prefetch_part)(const ROW(ce_chunk_prefetch) *plan,
                                                 fastloss_index from, fastloss_index to)
{
    if (!plan)
        return;
    ROW(ce_touch_grad)(plan->touch, from, to);
    if (plan->ahead)
        ROW(ce_prefetch_ahead)(plan->y, plan->ahead, plan->n_classes, plan->ahead_from + from,
                               plan->ahead_from + to, CE_PREFETCH_LOCALITY);
}

/*
 * out[c] = exp((values[c] - shift_hi) - shift_lo).  Splitting the shift lets
 * float32 rows subtract a float64 log-sum-exp without converting every element:
 * values[c] - shift_hi is exact when the two are within a factor of two
 * (Sterbenz), and elsewhere exp() of the difference is negligible.  `out` may
 * be `values` itself (in-place gradient), so no restrict here.  `prefetch` (NULL:
 * none) as in ce_exp_next_max.
 */
FASTLOSS_INLINE void ROW(ce_exp)(const ROW_IN_T *values, fastloss_index n, VAL shift_hi,
                                 VAL shift_lo, VAL *out, const ROW(ce_chunk_prefetch) *prefetch)
{
    fastloss_index c = 0;
#if CE_PAIRS
    /* in pair order (out is a float row, never the half values) */
    const fastloss_index half = n / 2;
    const fastloss_index block = prefetch ? CE_PREFETCH_BLOCK : half + 1;
    for (fastloss_index p0 = 0; p0 < half; p0 += block) {
        const fastloss_index p1 = p0 + block < half ? p0 + block : half;
        ROW(ce_chunk_prefetch_part)(prefetch, 2 * p0, 2 * p1);
#pragma omp simd
        for (fastloss_index p = p0; p < p1; ++p) {
            const uint32_t word = ROW(ce_pair)(values, p);
            out[p] = VAL_EXP((ROW(ce_pair_lo)(word) - shift_hi) - shift_lo);
            out[half + p] = VAL_EXP((ROW(ce_pair_hi)(word) - shift_hi) - shift_lo);
        }
    }
    c = 2 * half;
#endif
    ROW(ce_chunk_prefetch_part)(prefetch, c, n);
    for (; c < n; ++c)
        out[c] = VAL_EXP(((VAL)ROW_LOAD(values, c) - shift_hi) - shift_lo);
}

/*
 * out[c] = exp(values[c] - shift) for this chunk, and the max of the next
 * chunk in the same loop: the next chunk streams in from memory while this
 * one's exps are computed, instead of in a separate pass that would leave the
 * arithmetic units idle.  `out` may be `values` (in place); it never overlaps
 * `next`, which is what the simd pragma asserts.  `prefetch` (NULL: none) is issued
 * a block of CE_PREFETCH_BLOCK pairs at a time between the blocks of half rows' exps,
 * and all at once before the exps of other rows.
 */
FASTLOSS_INLINE VAL ROW(ce_exp_next_max)(const ROW_IN_T *values, fastloss_index n, VAL shift,
                                         VAL *out, const ROW_IN_T *next, fastloss_index n_next,
                                         const ROW(ce_chunk_prefetch) *prefetch)
{
    /* the fused part in whole vectors of 64 bytes, so that neither loop below ends in
     * a scalar tail but at the chunk's end (a short next chunk, the last of a row or a
     * block, would otherwise leave one in each) */
    const fastloss_index vector = 64 / (fastloss_index)sizeof(VAL);
#if CE_PAIRS
    {
        /* pairs: a vector's words are 2 * vector classes */
        const fastloss_index half = n / 2;
        const fastloss_index both = (half < n_next / 2 ? half : n_next / 2) / vector * vector;
        /* (without prefetches, one block: the forward's loop as it was) */
        const fastloss_index block = prefetch ? CE_PREFETCH_BLOCK : half + 1;
        VAL next_max = -(VAL)INFINITY;
        for (fastloss_index p0 = 0; p0 < both; p0 += block) {
            const fastloss_index p1 = p0 + block < both ? p0 + block : both;
            ROW(ce_chunk_prefetch_part)(prefetch, 2 * p0, 2 * p1);
#pragma omp simd reduction(max : next_max)
            for (fastloss_index p = p0; p < p1; ++p) {
                const uint32_t word = ROW(ce_pair)(values, p);
                out[p] = VAL_EXP_NONPOSITIVE(ROW(ce_pair_lo)(word) - shift);
                out[half + p] = VAL_EXP_NONPOSITIVE(ROW(ce_pair_hi)(word) - shift);
                const uint32_t next_word = ROW(ce_pair)(next, p);
                const VAL lo = ROW(ce_pair_lo)(next_word), hi = ROW(ce_pair_hi)(next_word);
                const VAL next_value = lo > hi ? lo : hi;
                next_max = next_value > next_max ? next_value : next_max;
            }
        }
        for (fastloss_index p0 = both; p0 < half; p0 += block) {
            const fastloss_index p1 = p0 + block < half ? p0 + block : half;
            ROW(ce_chunk_prefetch_part)(prefetch, 2 * p0, 2 * p1);
#pragma omp simd
            for (fastloss_index p = p0; p < p1; ++p) {
                const uint32_t word = ROW(ce_pair)(values, p);
                out[p] = VAL_EXP_NONPOSITIVE(ROW(ce_pair_lo)(word) - shift);
                out[half + p] = VAL_EXP_NONPOSITIVE(ROW(ce_pair_hi)(word) - shift);
            }
        }
        ROW(ce_chunk_prefetch_part)(prefetch, 2 * half, n);
        if (n & 1)
            out[n - 1] = VAL_EXP_NONPOSITIVE((VAL)ROW_LOAD(values, n - 1) - shift);
        const VAL rest = ROW(ce_max)(next + 2 * both, n_next - 2 * both);
        return rest > next_max ? rest : next_max;
    }
#endif
    ROW(ce_chunk_prefetch_part)(prefetch, 0, n);
    const fastloss_index both = (n < n_next ? n : n_next) / vector * vector;
    VAL next_max = -(VAL)INFINITY;
#pragma omp simd reduction(max : next_max)
    for (fastloss_index c = 0; c < both; ++c) {
        out[c] = VAL_EXP_NONPOSITIVE((VAL)ROW_LOAD(values, c) - shift);
        const VAL next_value = ROW_LOAD(next, c);
        next_max = next_value > next_max ? next_value : next_max;
    }
    for (fastloss_index c = both; c < n; ++c)
        out[c] = VAL_EXP_NONPOSITIVE((VAL)ROW_LOAD(values, c) - shift);
    const VAL rest = ROW(ce_max)(next + both, n_next - both);
    return rest > next_max ? rest : next_max;
}

/* Sum in float64 with FASTLOSS_LANES accumulators combined pairwise, then the tail. */
FASTLOSS_INLINE double ROW(ce_lane_total)(const double *lane, double tail)
{
    return fastloss_lanes_total(lane) + tail;
}

FASTLOSS_INLINE double ROW(ce_sum)(const VAL *FASTLOSS_RESTRICT values, fastloss_index n)
{
    double lane[FASTLOSS_LANES] = {0.0};
    double tail = 0.0;
    fastloss_index c = 0;
#if CE_PAIRS
    /* the half rows' exps (each within 2.5e-7 of itself, none negative) are added in
     * twos in float before the double lanes: one more rounding, 2**-24 of the pair, so
     * at most 6e-8 of the sum (relative), for half the conversions to double */
    for (; c + 2 * FASTLOSS_LANES <= n; c += 2 * FASTLOSS_LANES)
        for (int k = 0; k < FASTLOSS_LANES; ++k)
            lane[k] += (double)(values[c + k] + values[c + FASTLOSS_LANES + k]);
#endif
    for (; c + FASTLOSS_LANES <= n; c += FASTLOSS_LANES)
        for (int k = 0; k < FASTLOSS_LANES; ++k)
            lane[k] += (double)values[c + k];
    for (; c < n; ++c)
        tail += (double)values[c];
    return ROW(ce_lane_total)(lane, tail);
}

/* sum_c u_c (shift - values[c]) with u = weight (or 1 when weight is NULL). */
FASTLOSS_INLINE double ROW(ce_dist)(const ROW_IN_T *FASTLOSS_RESTRICT values, fastloss_index n,
                                    VAL shift, const AUX_T *FASTLOSS_RESTRICT weight)
{
    double lane[FASTLOSS_LANES] = {0.0};
    double tail = 0.0;
    fastloss_index c = 0;
    if (weight) {
        for (; c + FASTLOSS_LANES <= n; c += FASTLOSS_LANES)
            for (int k = 0; k < FASTLOSS_LANES; ++k)
                lane[k] += (double)AUX_LOAD(weight, c + k) *
                           (double)(shift - (VAL)ROW_LOAD(values, c + k));
        for (; c < n; ++c)
            tail += (double)AUX_LOAD(weight, c) * (double)(shift - (VAL)ROW_LOAD(values, c));
    } else {
        for (; c + FASTLOSS_LANES <= n; c += FASTLOSS_LANES)
            for (int k = 0; k < FASTLOSS_LANES; ++k)
                lane[k] += (double)(shift - (VAL)ROW_LOAD(values, c + k));
        for (; c < n; ++c)
            tail += (double)(shift - (VAL)ROW_LOAD(values, c));
    }
    return ROW(ce_lane_total)(lane, tail);
}

/* Soft targets: u_c = w_c q'_c with q' = q_scale q + q_offset; returns
 * sum_c u_c (shift - values[c]) and stores sum_c u_c in *mass. */
FASTLOSS_INLINE double ROW(ce_soft_dist)(const ROW_IN_T *FASTLOSS_RESTRICT values, fastloss_index n,
                                         VAL shift, const AUX_T *FASTLOSS_RESTRICT q,
                                         const AUX_T *FASTLOSS_RESTRICT weight, double q_scale,
                                         double q_offset, double *mass)
{
    double dist_lane[FASTLOSS_LANES] = {0.0}, mass_lane[FASTLOSS_LANES] = {0.0};
    double dist_tail = 0.0, mass_tail = 0.0;
    fastloss_index c = 0;
    for (; c + FASTLOSS_LANES <= n; c += FASTLOSS_LANES)
        for (int k = 0; k < FASTLOSS_LANES; ++k) {
            double u = q_scale * (double)AUX_LOAD(q, c + k) + q_offset;
            if (weight)
                u *= (double)AUX_LOAD(weight, c + k);
            mass_lane[k] += u;
            dist_lane[k] += u * (double)(shift - (VAL)ROW_LOAD(values, c + k));
        }
    for (; c < n; ++c) {
        double u = q_scale * (double)AUX_LOAD(q, c) + q_offset;
        if (weight)
            u *= (double)AUX_LOAD(weight, c);
        mass_tail += u;
        dist_tail += u * (double)(shift - (VAL)ROW_LOAD(values, c));
    }
    *mass = ROW(ce_lane_total)(mass_lane, mass_tail);
    return ROW(ce_lane_total)(dist_lane, dist_tail);
}

/*
 * A chunk's sum of exps.  When the chunk holds the row's hard target t (a
 * position in the chunk, else outside [0, n)), its term is left out of the
 * lanes and added last: *excl gets the sum without it (for 1 - p_t) and
 * *target_chunk the chunk's number.  e[t] (in its slot, ce_slot) is then 0: the
 * gradient pass writes the target class from 1 - p_t, never from e[t].
 */
FASTLOSS_INLINE double ROW(ce_chunk_sum)(VAL *e, fastloss_index n, fastloss_index t,
                                         fastloss_index *target_chunk, fastloss_index k,
                                         double *excl)
{
    if (t < 0 || t >= n)
        return ROW(ce_sum)(e, n);
    const fastloss_index slot = ROW(ce_slot)(t, n);
    const VAL e_t = e[slot];
    e[slot] = 0;
    *excl = ROW(ce_sum)(e, n);
    *target_chunk = k;
    return *excl + (double)e_t;
}

/*
 * The statistics of a row read once, for the forward alone (no exps kept for a
 * gradient): the row goes in sub-chunks of FASTLOSS_CE_ONLINE_CHUNK classes under a
 * running maximum M (the online log-sum-exp).  Each sub-chunk's max is taken while
 * the previous one's exps are computed (ce_exp_next_max), so only the first
 * sub-chunk is read by a pass with no arithmetic beside it; when a sub-chunk's max
 * exceeds M, the sums so far are rebased onto it (ce_rebase, as chunks and blocks
 * merge: a few times a row for logits in no particular order), and the sub-chunk's
 * exps are taken relative to the new M, so no per-sub-chunk record is kept and no
 * merge follows.  Narrow rows (a block of a row's classes) gain most: with 2048
 * classes per chunk, a block of 3141 read half its bytes by a max pass alone.
 * Results depend on the row alone (never on threads); they are the chunked pass's
 * within rounding, not bit for bit.  `ahead` (NULL: none) is the row whose classes are
 * prefetched `lead` ahead; `next` (NULL: none), the row read after this one, whose first
 * sub-chunk goes into L1 while this row is read (CE_PREFETCH_NEXT_START).
 */
static void ROW(ce_row_stats_online)(const ce_call *call, const ROW_IN_T *y, const AUX_T *q,
                                     const AUX_T *weight, fastloss_index target, VAL *tile,
                                     const ROW_IN_T *ahead, const ROW_IN_T *next,
                                     ce_row_stats *stats)
{
    const fastloss_index n_classes = call->n_classes;
    const fastloss_index width = FASTLOSS_CE_ONLINE_CHUNK;
    const int need_dist = call->soft || call->smoothing > 0.0;
    fastloss_index target_chunk = -1;
    double excl = 0.0;
    double row_max = -INFINITY, sum = 0.0, sum_excl = 0.0, dist = 0.0, mass = 0.0;
    /* the prefetch distance: CE_PREFETCH_DISTANCE bytes, at most a row */
    fastloss_index lead = CE_PREFETCH_DISTANCE / (fastloss_index)sizeof(ROW_IN_T);
    lead = lead < n_classes ? lead : n_classes;
    VAL m = ROW(ce_max)(y, n_classes < width ? n_classes : width);
    /* the next row's first sub-chunk, which its max pass reads alone, from L2 into L1
     * while this row is read (before the loop below, whose code stays as without it) */
    if (CE_PREFETCH_NEXT_START && next && call->ahead_to_l2)
        ROW(ce_prefetch)(next, 0, n_classes < width ? n_classes : width, CE_PREFETCH_LOCALITY);
    for (fastloss_index k = 0, start = 0; start < n_classes; ++k, start += width) {
        const fastloss_index n = n_classes - start < width ? n_classes - start : width;
        const fastloss_index next_start = start + n;
        const fastloss_index n_next = n_classes - next_start < width ? n_classes - next_start
                                                                    : width;
        /* the running max, NaN skipped (a NaN reaches the sums through its exp) */
        const double new_max = ce_max_merge(row_max, (double)m);
        if (new_max != row_max) {
            ce_rebase(row_max, new_max, need_dist, mass, &sum, &sum_excl, &dist);
            row_max = new_max;
        }
        /* every class so far -inf (masked): shift 0, so that exp sees -inf, not NaN */
        const VAL shift = row_max == -INFINITY ? (VAL)0 : (VAL)row_max;
        if (call->soft) {
            double chunk_mass;
            dist += ROW(ce_soft_dist)(y + start, n, shift, q + start, weight ? weight + start : NULL,
                                      call->q_scale, call->q_offset, &chunk_mass);
            mass += chunk_mass;
        } else if (need_dist) {
            dist += ROW(ce_dist)(y + start, n, shift, weight ? weight + start : NULL);
            mass += call->online_weight_sum[k];
        }
        /* the classes `lead` ahead (of this row, then of the next), in two parts: one
         * before the exps, one before their sum (CE_PREFETCH_BEFORE), into L2
         * (CE_PREFETCH_AHEAD_LOCALITY) */
        const fastloss_index from = start + lead, to = next_start + lead;
        const fastloss_index mid = from + (to - from) * CE_PREFETCH_BEFORE / 4;
        if (ahead)
            ROW(ce_prefetch_ahead_to)(y, ahead, n_classes, from, mid, call->ahead_to_l2);
        m = ROW(ce_exp_next_max)(y + start, n, shift, tile, y + next_start, n_next, NULL);
        if (ahead)
            ROW(ce_prefetch_ahead_to)(y, ahead, n_classes, mid, to, call->ahead_to_l2);
        const double chunk_sum = ROW(ce_chunk_sum)(tile, n, target - start, &target_chunk, k, &excl);
        sum += chunk_sum;
        sum_excl += k == target_chunk ? excl : chunk_sum;
    }
    stats->max = row_max;
    stats->sum = sum;
    stats->log_sum = call->stats_only ? 0.0 : log(sum); /* a block's record keeps no log */
    stats->dist = dist;
    stats->mass = mass;
    stats->excl = sum_excl;
}

/*
 * Statistics of one row: for each chunk its max, sum of exp, and (when the
 * loss needs them) the smoothing / soft-target sums; then the merge into
 *   M = max_k m_k,   S = sum_k s_k exp(m_k - M),   A = sum_k [D_k + (M - m_k) U_k]
 * in chunk order.  When `e_row` is given, exp(y_c - shift_k) is left there for
 * the gradient pass (e_row may be `y` itself); otherwise `tile` (one chunk)
 * receives it.  Every term of A is >= 0 for non-negative weights, so the
 * smoothing sum has no cancellation even for logits near 1e4.
 */
static void ROW(ce_row_stats)(const ce_call *call, const ROW_IN_T *y, const AUX_T *q,
                              const AUX_T *weight, fastloss_index target, VAL *e_row, VAL *tile,
                              double *chunk_data, const ROW_IN_T *ahead, const ROW_IN_T *next,
                              GRAD_T *touch, ce_row_stats *stats)
{
    if (!e_row) { /* the forward: no exps to keep, one read of the row */
        ROW(ce_row_stats_online)(call, y, q, weight, target, tile, ahead, next, stats);
        return;
    }
    const fastloss_index n_classes = call->n_classes;
    const int need_dist = call->soft || call->smoothing > 0.0;
    fastloss_index target_chunk = -1;
    double excl = 0.0;
    fastloss_index lead = CE_PREFETCH_DISTANCE / (fastloss_index)sizeof(ROW_IN_T);
    lead = lead < n_classes ? lead : n_classes;
    VAL m = ROW(ce_max)(y, n_classes < FASTLOSS_CE_CHUNK ? n_classes : FASTLOSS_CE_CHUNK);
    for (fastloss_index k = 0; k < call->n_chunks; ++k) {
        const fastloss_index start = k * FASTLOSS_CE_CHUNK;
        const fastloss_index n = n_classes - start < FASTLOSS_CE_CHUNK ? n_classes - start
                                                                       : FASTLOSS_CE_CHUNK;
        const fastloss_index next_start = start + n;
        const fastloss_index n_next = n_classes - next_start < FASTLOSS_CE_CHUNK
                                          ? n_classes - next_start
                                          : FASTLOSS_CE_CHUNK;
        double *chunk = chunk_data + k * CE_CHUNK_FIELDS;
        /* A chunk of -inf (masked classes) gets shift 0 so that exp sees -inf,
         * not -inf - -inf = NaN; NaN values still give NaN. */
        const VAL shift = m == -(VAL)INFINITY ? (VAL)0 : m;
        chunk[CE_CHUNK_SHIFT] = (double)shift;
        chunk[CE_CHUNK_MAX] = (double)m;
        chunk[CE_CHUNK_DIST] = 0.0;
        chunk[CE_CHUNK_MASS] = 0.0;
        /* the distances read y before the exp pass may overwrite it in place */
        if (call->soft) {
            chunk[CE_CHUNK_DIST] = ROW(ce_soft_dist)(y + start, n, shift, q + start,
                                                     weight ? weight + start : NULL,
                                                     call->q_scale, call->q_offset,
                                                     &chunk[CE_CHUNK_MASS]);
        } else if (need_dist) {
            chunk[CE_CHUNK_DIST] = ROW(ce_dist)(y + start, n, shift, weight ? weight + start : NULL);
            chunk[CE_CHUNK_MASS] = call->chunk_weight_sum[k];
        }
        VAL *e = e_row ? e_row + start : tile;
        /* the chunk's gradient lines, and the classes `lead` ahead, of this row and then
         * of the next */
        const ROW(ce_chunk_prefetch) prefetch = {touch ? touch + start : NULL, y, ahead, n_classes,
                                                 start + lead};
        m = ROW(ce_exp_next_max)(y + start, n, shift, e, y + next_start, n_next, &prefetch);
        chunk[CE_CHUNK_SUM] = ROW(ce_chunk_sum)(e, n, target - start, &target_chunk, k, &excl);
    }

    /* the merge of the chunks' records (ce_rebase, as blocks merge), in chunk order */
    double row_max = -INFINITY;
    for (fastloss_index k = 0; k < call->n_chunks; ++k)
        row_max = ce_max_merge(row_max, chunk_data[k * CE_CHUNK_FIELDS + CE_CHUNK_MAX]);
    double sum = 0.0, sum_excl = 0.0, dist = 0.0, mass = 0.0;
    for (fastloss_index k = 0; k < call->n_chunks; ++k) {
        const double *chunk = chunk_data + k * CE_CHUNK_FIELDS;
        double chunk_sum = chunk[CE_CHUNK_SUM];
        double chunk_excl = k == target_chunk ? excl : chunk_sum;
        double chunk_dist = chunk[CE_CHUNK_DIST];
        ce_rebase(chunk[CE_CHUNK_MAX], row_max, need_dist, chunk[CE_CHUNK_MASS], &chunk_sum,
                  &chunk_excl, &chunk_dist);
        sum += chunk_sum;
        sum_excl += chunk_excl;
        dist += chunk_dist;
        mass += chunk[CE_CHUNK_MASS];
    }
    stats->max = row_max;
    stats->sum = sum;
    stats->log_sum = log(sum);
    stats->dist = dist;
    stats->mass = mass;
    stats->excl = sum_excl;
}

/*
 * The exps of a row from a given shift (ce_row_shifted's lse, ce_row_rebased's
 * max): e_c = exp(y_c - shift) in `e_row`, chunk by chunk, every chunk's shift and
 * max set to `shift`, and, where `sum` is not NULL, each chunk's sum
 * (ce_chunk_sum) with *sum the row's and *sum_excl that without the target's term.
 * Inlined into both, where the NULL is a constant.
 */
FASTLOSS_INLINE void ROW(ce_row_exps)(const ce_call *call, const ROW_IN_T *y, double shift,
                                      fastloss_index target, VAL *e_row, double *chunk_data,
                                      GRAD_T *touch, double *sum, double *sum_excl)
{
    const VAL shift_hi = (VAL)shift;
    const VAL shift_lo = (VAL)(shift - (double)shift_hi);
    fastloss_index target_chunk = -1;
    double total = 0.0, total_excl = 0.0, excl = 0.0;
    for (fastloss_index k = 0; k < call->n_chunks; ++k) {
        const fastloss_index start = k * FASTLOSS_CE_CHUNK;
        const fastloss_index n = call->n_classes - start < FASTLOSS_CE_CHUNK
                                     ? call->n_classes - start
                                     : FASTLOSS_CE_CHUNK;
        double *chunk = chunk_data + k * CE_CHUNK_FIELDS;
        const ROW(ce_chunk_prefetch) prefetch = {touch ? touch + start : NULL, y, NULL,
                                                 call->n_classes, 0};
        ROW(ce_exp)(y + start, n, shift_hi, shift_lo, e_row + start, &prefetch);
        chunk[CE_CHUNK_SHIFT] = shift;
        chunk[CE_CHUNK_MAX] = shift;
        if (sum) {
            chunk[CE_CHUNK_SUM] = ROW(ce_chunk_sum)(e_row + start, n, target - start,
                                                   &target_chunk, k, &excl);
            total += chunk[CE_CHUNK_SUM];
            total_excl += k == target_chunk ? excl : chunk[CE_CHUNK_SUM];
        }
    }
    if (sum) {
        *sum = total;
        *sum_excl = total_excl;
    }
}

/*
 * The backward's statistics from a given lse: e_c = exp(y_c - lse) left in
 * `e_row`, and S' = sum_c e_c, so that the gradient pass takes the softmax as
 * e_c / S' (every chunk has shift lse).  One rounded float64 lse is not the
 * row's exact log-sum-exp: near 1e4 it is off by up to 1e-12, and at 1e16 the
 * whole log(2) of [[1e16, 1e16]] is lost, so exp(y_c - lse) alone would give a
 * softmax off by that much (the gradient [0, 1] instead of [-0.5, 0.5]).
 * Dividing by S' = exp(true lse - lse) removes whatever the lse lacks: the
 * lse serves only as the shift, and the result is the fused pass's.
 * Returns 0 when S' is outside [1/2, 2] (or NaN): then the lse is not this
 * row's (off by more than log 2: another call's, or the row changed), and the
 * caller recomputes the row from its logits rather than trust it.
 */
static int ROW(ce_row_shifted)(const ce_call *call, const ROW_IN_T *y, fastloss_index target,
                               double lse, VAL *e_row, double *chunk_data, GRAD_T *touch,
                               ce_row_stats *stats)
{
    double sum, sum_excl;
    ROW(ce_row_exps)(call, y, lse, target, e_row, chunk_data, touch, &sum, &sum_excl);
    stats->max = lse;
    stats->sum = sum;
    stats->log_sum = log(sum);
    stats->excl = sum_excl;
    if (!call->soft)
        stats->mass = call->weight_total; /* W, for the smoothing terms */
    return sum >= 0.5 && sum <= 2.0;
}

/*
 * The exps of a block for its gradient from merged statistics: e_c = exp(y_c - M)
 * with M the whole row's max, so that softmax_c = e_c / S (every chunk has shift M,
 * which ce_row_grad then scales by 1 / S).  `e_row` may be `y` (in place): the target's
 * logit comes from the statistics.
 */
static void ROW(ce_row_rebased)(const ce_call *call, const ROW_IN_T *y, double row_max,
                                VAL *e_row, double *chunk_data, GRAD_T *touch)
{
    ROW(ce_row_exps)(call, y, row_max, -1, e_row, chunk_data, touch, NULL, NULL);
}

/* Soft targets, backward from a known lse: U = sum_c w_c q'_c. */
FASTLOSS_INLINE double ROW(ce_soft_mass)(const AUX_T *FASTLOSS_RESTRICT q, fastloss_index n,
                                         const AUX_T *FASTLOSS_RESTRICT weight, double q_scale,
                                         double q_offset)
{
    double lane[FASTLOSS_LANES] = {0.0};
    double tail = 0.0;
    fastloss_index c = 0;
    for (; c + FASTLOSS_LANES <= n; c += FASTLOSS_LANES)
        for (int k = 0; k < FASTLOSS_LANES; ++k)
            lane[k] += (q_scale * (double)AUX_LOAD(q, c + k) + q_offset) *
                       (weight ? (double)AUX_LOAD(weight, c + k) : 1.0);
    for (; c < n; ++c)
        tail += (q_scale * (double)AUX_LOAD(q, c) + q_offset) *
                (weight ? (double)AUX_LOAD(weight, c) : 1.0);
    return ROW(ce_lane_total)(lane, tail);
}

/*
 * Gradient of a range of classes from e = exp(y - shift):
 *   g_c = [(factor * e_c - gamma * u_c) + factor_z * e_c] slope_c
 * where u_c is w_c (hard targets with smoothing), w_c q'_c (soft targets,
 * gamma = the row's CE scale) or absent (gamma = 0), factor_z is the z-loss
 * part, and slope_c = dy/dx with softcap (slope NULL otherwise; only wide rows
 * have one).  With a u term the first two products can nearly cancel (targets
 * close to the softmax), so that difference is taken in double before the
 * z part is added, and the whole rounded to GRAD_T once.  `e` may be `g` (in
 * place).
 */
#define CE_SLOPED(value, c) (slope ? (value) * slope[c] : (value))
FASTLOSS_INLINE void ROW(ce_grad_range)(const VAL *e, fastloss_index n, double factor,
                                        double factor_z, double gamma,
                                        const AUX_T *FASTLOSS_RESTRICT weight,
                                        const AUX_T *FASTLOSS_RESTRICT q, double q_scale,
                                        double q_offset, const double *FASTLOSS_RESTRICT slope,
                                        GRAD_T *g)
{
    if (q) {
        for (fastloss_index c = 0; c < n; ++c) {
            double u = q_scale * (double)AUX_LOAD(q, c) + q_offset;
            if (weight)
                u *= (double)AUX_LOAD(weight, c);
            STORE_WIDE(g, c, CE_SLOPED((factor * (double)e[c] - gamma * u) + factor_z * (double)e[c], c));
        }
    } else if (gamma != 0.0 && weight) {
        for (fastloss_index c = 0; c < n; ++c)
            STORE_WIDE(g, c, CE_SLOPED((factor * (double)e[c] - gamma * (double)AUX_LOAD(weight, c)) +
                                           factor_z * (double)e[c], c));
    } else if (gamma != 0.0) {
        for (fastloss_index c = 0; c < n; ++c)
            STORE_WIDE(g, c, CE_SLOPED((factor * (double)e[c] - gamma) + factor_z * (double)e[c], c));
    } else if (slope) {
        const double factor_w = factor + factor_z;
        for (fastloss_index c = 0; c < n; ++c)
            STORE_WIDE(g, c, factor_w * (double)e[c] * slope[c]);
    } else {
        /* nothing cancels here (the target class is written apart) */
        const VAL factor_v = (VAL)(factor + factor_z);
        for (fastloss_index c = 0; c < n; ++c)
            STORE_VAL(g, c, factor_v * e[c]);
    }
}
#undef CE_SLOPED

#if CE_PAIRS
/* The 16-bit gradient of `half` pairs, one word each: STORE, or, where `not_nan` (a
 * constant once inlined), STORE_NOT_NAN. */
FASTLOSS_INLINE void ROW(ce_grad_words)(const VAL *e, fastloss_index half, VAL factor_v,
                                        GRAD_T *g, const int not_nan)
{
#pragma omp simd
    for (fastloss_index p = 0; p < half; ++p) {
        GRAD_T lo, hi;
        if (not_nan) {
            STORE_NOT_NAN(&lo, 0, factor_v * e[p]);
            STORE_NOT_NAN(&hi, 0, factor_v * e[half + p]);
        } else {
            STORE_VAL(&lo, 0, factor_v * e[p]);
            STORE_VAL(&hi, 0, factor_v * e[half + p]);
        }
        const uint32_t word = (uint32_t)lo | (uint32_t)hi << 16;
        memcpy(g + 2 * p, &word, sizeof word);
    }
}

/*
 * ce_grad_range for a whole chunk whose exps are in pair order (CE_PAIRS): every class
 * is written, the target's too (the caller then writes it again from its definition).
 * The half rows computed here have no u term and no slope (soft targets, label
 * smoothing and softcap make the rows wide), so each pair is two products rounded
 * once to GRAD_T, as ce_grad_range's last case, and a 16-bit gradient is stored as one
 * word.  Other options take ce_grad_range a class at a time.  `exps_finite`: the
 * caller knows every e is finite; with a finite factor no product is then NaN, and
 * the rounding skips its NaN case (STORE_NOT_NAN: measured 11.7-11.8 -> 10.7-11.0 ms,
 * bfloat16 value_and_grad, N=512, C=50257, one thread, AVX-512, Zen 4).
 */
FASTLOSS_INLINE void ROW(ce_grad_pairs)(const VAL *e, fastloss_index n, double factor,
                                        double factor_z, double gamma,
                                        const AUX_T *FASTLOSS_RESTRICT weight,
                                        const AUX_T *FASTLOSS_RESTRICT q, double q_scale,
                                        double q_offset, const double *FASTLOSS_RESTRICT slope,
                                        int exps_finite, GRAD_T *g)
{
    if (q || gamma != 0.0 || slope) {
        for (fastloss_index c = 0; c < n; ++c)
            ROW(ce_grad_range)(e + ROW(ce_slot)(c, n), 1, factor, factor_z, gamma,
                               weight ? weight + c : NULL, q ? q + c : NULL, q_scale, q_offset,
                               slope ? slope + c : NULL, g + c);
        return;
    }
    const VAL factor_v = (VAL)(factor + factor_z);
    const fastloss_index half = n / 2;
    if (sizeof(GRAD_T) == sizeof(uint16_t)) {
        if (exps_finite && isfinite(factor_v))
            ROW(ce_grad_words)(e, half, factor_v, g, 1);
        else
            ROW(ce_grad_words)(e, half, factor_v, g, 0);
    } else {
#pragma omp simd
        for (fastloss_index p = 0; p < half; ++p) {
            STORE_VAL(g, 2 * p, factor_v * e[p]);
            STORE_VAL(g, 2 * p + 1, factor_v * e[half + p]);
        }
    }
    if (n & 1)
        STORE_VAL(g, n - 1, factor_v * e[n - 1]);
}
#endif

/*
 * The row's loss and the coefficients of its gradient (see cross_entropy.c).
 * Inline and branch-free: every option's terms are computed and the call's
 * options select among them, so that the small-vocabulary path computes it for
 * 16 rows at once as vectors (a compiler keeps floating-point arithmetic under
 * an `if` scalar, as it might raise an exception it must not invent).
 */
FASTLOSS_INLINE void ROW(ce_coefficients)(const ce_call *call, const ce_row_stats *stats,
                                          double target_logit, double target_weight,
                                          fastloss_index row, ce_row_coef *coef)
{
    const double eps = call->smoothing;
    const int smoothing = eps > 0.0, soft = call->soft;
    const double inv_classes = 1.0 / (double)call->total_classes;
    const double lse = stats->max + stats->log_sum;
    const double upstream = call->grad_output[row * call->grad_output_stride];
    const double ce_scale = upstream * call->ce_factor;
    const double z_scale = upstream * call->z_factor;
    /* soft: ce = sum_c u_c (lse - y_c) = A + U log S */
    const double soft_ce = stats->dist + stats->mass * stats->log_sum;
    const double soft_alpha = ce_scale * stats->mass;
    /* hard: nll = lse - y_t, written so that nothing cancels when y_t is the max;
     * with smoothing, torch's (1 - eps) w_t nll + eps / C sum_c w_c (lse - y_c).  Where
     * the target is the max (its term is 1) and S <= 2, nll = log S = log(1 + excl),
     * and S, summed with that 1 in it, keeps only its absolute accuracy: log S plus
     * (excl - (S - 1)) / S, the part of the others' sum S's roundings dropped (S - 1
     * exact there, the rest second order), keeps the relative (a converged row's loss
     * of 8.2e-7 was 1.1e-10 off relative in float64, one of 9.2e-14 6.7e-4).  Added
     * times the condition, not selected: with a select gcc kept the small-vocabulary
     * block's loop scalar (10 classes, float32, one thread: 4.0 -> 6.2 ms; 4.4 so) */
    const double inv_sum = 1.0 / stats->sum;
    const double dropped = (stats->excl - (stats->sum - 1.0)) * inv_sum;
    const int converged = target_logit == stats->max && stats->sum <= 2.0;
    const double nll =
        (stats->max - target_logit) + stats->log_sum + dropped * (double)converged;
    /* W: the row's mass, the sum of the weights of all its classes (of every block) */
    const double weight_total = stats->mass;
    const double smooth = stats->dist + weight_total * stats->log_sum;
    const double smooth_ce = (1.0 - eps) * target_weight * nll + eps * inv_classes * smooth;
    const double smooth_alpha =
        ce_scale * ((1.0 - eps) * target_weight + eps * inv_classes * weight_total);
    const double plain_ce = target_weight * nll, plain_alpha = ce_scale * target_weight;
    const double smooth_gamma = ce_scale * eps * inv_classes;
    const double hard_ce = smoothing ? smooth_ce : plain_ce;
    const double hard_alpha = smoothing ? smooth_alpha : plain_alpha;
    const double ce = soft ? soft_ce : hard_ce;
    coef->alpha = soft ? soft_alpha : hard_alpha;
    coef->gamma = soft ? ce_scale : (smoothing ? smooth_gamma : 0.0);
    const int z = call->z_loss > 0.0;
    const double z_term = call->z_loss * lse * lse, alpha_z = z_scale * 2.0 * call->z_loss * lse;
    coef->z_term = z ? z_term : 0.0;
    coef->alpha_z = z ? alpha_z : 0.0;
    coef->ce = ce;
    coef->lse = lse;
    coef->max = stats->max;
    coef->inv_sum = inv_sum;
    coef->complement = stats->excl / stats->sum;
    /* y_t - lse <= 0 (a rounding above 0 is clamped; NaN stays NaN: fmin prefers the
     * number, so a NaN row is caught by `finite` below) */
    const double target_gap = target_logit - lse;
    coef->p_target = fastloss_exp_nonpositive(target_gap < 0.0 ? target_gap : 0.0);
    coef->ce_scale = ce_scale;
    coef->weight_total = weight_total;
    /* A row whose log-sum-exp is not finite (+inf or NaN logit, or every logit
     * -inf) has no softmax: its loss and gradient are NaN, as in torch. */
    const int finite = isfinite(lse);
    coef->ce = finite ? coef->ce : NAN;
    coef->lse = finite ? coef->lse : NAN;
    coef->alpha = finite ? coef->alpha : NAN;
    coef->alpha_z = finite ? coef->alpha_z : NAN;
    coef->ce_scale = finite ? coef->ce_scale : NAN;
    coef->complement = finite ? coef->complement : NAN;
}

/*
 * The gradient of the hard target's class, from its definition rather than
 * alpha p - gamma u (whose terms can cancel exactly, e.g. one class with
 * smoothing):
 *   ce_scale [(1 - eps) w_t (p_t - 1) + eps / C (W p_t - w_t)] + z part,
 * with p_t - 1 = -(the others' share of S): exact when p_t is nearly 1.  p_t
 * itself is 1 - that share where p_t >= 1/2 (an absolute error of an ulp of 1
 * is then a relative one), and exp(y_t - lse) below: 1 - share would lose the
 * digits of a small p_t, which eps / C (W p_t - w_t) then cancels (full label
 * smoothing, a target class about as likely as the others).
 */
FASTLOSS_INLINE double ROW(ce_target_grad)(const ce_call *call, const ce_row_coef *coef,
                                           double target_weight)
{
    const double p_minus_1 = -coef->complement;
    const double p_t = coef->p_target < 0.5 ? coef->p_target : p_minus_1 + 1.0;
    const double eps = call->smoothing;
    const double plain = (1.0 - eps) * target_weight * p_minus_1;
    const double smoothed =
        plain + eps / (double)call->total_classes * (coef->weight_total * p_t - target_weight);
    const double ce_t = eps > 0.0 ? smoothed : plain;
    return coef->ce_scale * ce_t + coef->alpha_z * p_t;
}

/*
 * The gradient pass of a row, from e = exp(y_c - shift_k) left in `e_row` by
 * ce_row_stats (fused) or ce_row_shifted (backward from a given lse); `slope`
 * is dy/dx per class with softcap, else NULL.  The target class is written
 * between two ranges so that no element is written twice.  `exps_finite`: the
 * caller knows every exp of e_row is finite (ce_grad_pairs).
 */
static void ROW(ce_row_grad)(const ce_call *call, const AUX_T *q, const AUX_T *weight,
                             fastloss_index target, const ce_row_coef *coef, const VAL *e_row,
                             const double *chunk_data, const double *slope, int exps_finite,
                             GRAD_T *g)
{
    const fastloss_index n_classes = call->n_classes;
    for (fastloss_index k = 0; k < call->n_chunks; ++k) {
        const fastloss_index start = k * FASTLOSS_CE_CHUNK;
        const fastloss_index n = n_classes - start < FASTLOSS_CE_CHUNK ? n_classes - start
                                                                       : FASTLOSS_CE_CHUNK;
        const double *chunk = chunk_data + k * CE_CHUNK_FIELDS;
        const VAL *e = e_row + start;
        /* softmax_c = e_c exp(shift_k - lse); a chunk with no finite value
         * has e = 0 (or NaN, and then lse is NaN too). */
        double rel;
        if (chunk[CE_CHUNK_MAX] == -INFINITY)
            rel = 0.0;
        else if (chunk[CE_CHUNK_SHIFT] == coef->max)
            rel = coef->inv_sum; /* exp(M - lse) = 1 / S */
        else
            rel = exp(chunk[CE_CHUNK_SHIFT] - coef->lse);
        const double factor = coef->alpha * rel;
        const AUX_T *w = weight ? weight + start : NULL;
        const AUX_T *qk = q ? q + start : NULL;
        const double *sk = slope ? slope + start : NULL;
        GRAD_T *gk = g + start;
        const fastloss_index t = target - start;
        /* The z-loss part (factor_z) is added after the cross-entropy part, which
         * can cancel to nearly zero in a converged row: folded into one factor,
         * the z part would inherit the rounding error of the two large terms. */
        const double factor_z = coef->alpha_z * rel;
#if CE_PAIRS
        ROW(ce_grad_pairs)(e, n, factor, factor_z, coef->gamma, w, qk, call->q_scale,
                           call->q_offset, sk, exps_finite, gk);
        if (t >= 0 && t < n) {
            const double g_t = ROW(ce_target_grad)(call, coef, w ? (double)AUX_LOAD(w, t) : 1.0);
            STORE_WIDE(gk, t, sk ? g_t * sk[t] : g_t);
        }
        continue;
#endif
        if (t >= 0 && t < n) {
            ROW(ce_grad_range)(e, t, factor, factor_z, coef->gamma, w, qk, call->q_scale,
                               call->q_offset, sk, gk);
            const double g_t = ROW(ce_target_grad)(call, coef, w ? (double)AUX_LOAD(w, t) : 1.0);
            STORE_WIDE(gk, t, sk ? g_t * sk[t] : g_t);
            ROW(ce_grad_range)(e + t + 1, n - t - 1, factor, factor_z, coef->gamma,
                               w ? w + t + 1 : NULL, qk ? qk + t + 1 : NULL, call->q_scale,
                               call->q_offset, sk ? sk + t + 1 : NULL, gk + t + 1);
        } else {
            ROW(ce_grad_range)(e, n, factor, factor_z, coef->gamma, w, qk, call->q_scale,
                               call->q_offset, sk, gk);
        }
    }
}

#undef CE_PAIRS
#undef ROW_IN_T
#undef ROW_LOAD
