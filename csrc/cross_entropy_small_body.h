/*
 * cross_entropy_small_body.h -- rows with few classes, CE_SMALL_ROWS rows at a
 * time with one row per SIMD lane.  No include guard, on purpose:
 * cross_entropy_impl.h includes it for (VAL, STORAGE) = (REAL, float32) and
 * (REAL, float64), after cross_entropy_row_body.h of the same ROW names.  The
 * logits, weights and gradient are read and written through LOAD, AUX_LOAD and
 * STORE (storage.h); the tile is VAL scratch.
 *
 * Why: the per-row algorithm (cross_entropy_row_body.h) vectorises along the
 * classes.  With C = 10 a row is shorter than one AVX-512 vector, so every exp
 * runs in the scalar remainder of its loop and the chunk bookkeeping costs more
 * than the arithmetic: 65536 x 10 float32 took 70 ns a row, 100x np.copyto.
 * Here a block of rows is transposed into a class-major tile, tile[c][r], so
 * that each class is one vector across CE_SMALL_ROWS rows; max, exp and the
 * sums then run at full vector width whatever C is.
 *
 * Every per-row quantity is computed as the per-row algorithm computes it (the
 * same max, the same exp, sums over the same eight lanes combined in the same
 * order, the same coefficient and gradient formulas), except log S, which
 * comes from the vectorised fastloss_log here and from libm's log there (both
 * within about an ulp): only the layout of the work differs.  A call takes one
 * path for all its rows, forward, fused and backward alike.  Hard targets
 * only, and rows read in their own type (no soft-capping, and no float32 rows
 * that need double: soft targets or label smoothing), as the runner checks.
 */

/* Transpose rows[r][0..C) into tile[c * R + r]: a block of rows, class-major. */
FASTLOSS_INLINE void ROW(ce_small_load_scalar)(const STORE_T *logits, fastloss_index row_stride,
                                               const fastloss_index *row, fastloss_index n_classes,
                                               VAL *FASTLOSS_RESTRICT tile)
{
    for (int r = 0; r < CE_SMALL_ROWS; ++r) {
        const STORE_T *x = logits + row[r] * row_stride;
        for (fastloss_index c = 0; c < n_classes; ++c)
            tile[c * CE_SMALL_ROWS + r] = LOAD(x, c);
    }
}

/* The gradient rows row[r], r < stored, from the class-major tile, the target's
 * class then from target_grad (zeros where the row is not valid). */
FASTLOSS_INLINE void ROW(ce_small_store_scalar)(const VAL *FASTLOSS_RESTRICT tile,
                                                fastloss_index n_classes, const fastloss_index *row,
                                                const int *valid, const fastloss_index *t,
                                                const double *target_grad, fastloss_index stored,
                                                GRAD_T *FASTLOSS_RESTRICT grad,
                                                fastloss_index grad_row_stride)
{
    for (fastloss_index r = 0; r < stored; ++r) {
        GRAD_T *g = grad + row[r] * grad_row_stride;
        if (!valid[r]) {
            for (fastloss_index c = 0; c < n_classes; ++c)
                STORE(g, c, (REAL)0);
            continue;
        }
        for (fastloss_index c = 0; c < n_classes; ++c)
            STORE(g, c, tile[c * CE_SMALL_ROWS + r]);
        STORE_WIDE(g, t[r], target_grad[r]);
    }
}

#ifdef CE_SMALL_FLOAT_AVX512
/*
 * float rows under AVX-512: the block is transposed 16 classes at a time in
 * registers, 16 rows x 16 classes, each row one masked load (or store) of its
 * classes.  The scalar transposes cost a quarter of the block (perf, Zen 4,
 * N=65536, C=10: a load and a store per element); gathers did not pay there.
 * Measured, one thread, 65536 rows, value_and_grad, main -> this (min CPU time,
 * load average 3-4): C=10 1.50 -> 1.29 ms, C=32 3.2 -> 2.6 ms; but C=64 5.9 -> 6.5 ms
 * even with the next block
 * prefetched (with its rows in cache 0.17 -> 0.10 ms: the groups read and write
 * the block across its rows, not along memory), so past CE_SMALL_VECTOR_CLASSES
 * the scalar transposes stay.
 */
#define CE_SMALL_VECTOR_CLASSES 32

/* v[i][j] <-> v[j][i]: pairs of rows interleaved, then pairs of pairs, then the
 * 128-bit lanes exchanged twice (64 shuffles). */
FASTLOSS_INLINE void ROW(ce_small_transpose)(__m512 v[CE_SMALL_ROWS])
{
    __m512 pair[16], quad[16];
    for (int i = 0; i < 16; i += 2) {
        pair[i] = _mm512_unpacklo_ps(v[i], v[i + 1]);
        pair[i + 1] = _mm512_unpackhi_ps(v[i], v[i + 1]);
    }
    /* quad[4g + j], lane L: rows 4g .. 4g+3 of column 4L + j */
    for (int i = 0; i < 16; i += 4) {
        quad[i] = _mm512_shuffle_ps(pair[i], pair[i + 2], 0x44);
        quad[i + 1] = _mm512_shuffle_ps(pair[i], pair[i + 2], 0xEE);
        quad[i + 2] = _mm512_shuffle_ps(pair[i + 1], pair[i + 3], 0x44);
        quad[i + 3] = _mm512_shuffle_ps(pair[i + 1], pair[i + 3], 0xEE);
    }
    for (int j = 0; j < 4; ++j) {
        const __m512 even_low = _mm512_shuffle_f32x4(quad[j], quad[4 + j], 0x88);
        const __m512 odd_low = _mm512_shuffle_f32x4(quad[j], quad[4 + j], 0xDD);
        const __m512 even_high = _mm512_shuffle_f32x4(quad[8 + j], quad[12 + j], 0x88);
        const __m512 odd_high = _mm512_shuffle_f32x4(quad[8 + j], quad[12 + j], 0xDD);
        v[j] = _mm512_shuffle_f32x4(even_low, even_high, 0x88);
        v[4 + j] = _mm512_shuffle_f32x4(odd_low, odd_high, 0x88);
        v[8 + j] = _mm512_shuffle_f32x4(even_low, even_high, 0xDD);
        v[12 + j] = _mm512_shuffle_f32x4(odd_low, odd_high, 0xDD);
    }
}

/* The rows of the next block (rows first .. first + next_rows - 1 exist), prefetched
 * when there are more than 16 classes and the groups read the block across its rows:
 * the hardware prefetcher follows that too late (65536 x 64 forward, one thread,
 * load average 3.5: 4.8-5.2 ms without, 3.7-4.1 ms with).  `write`: for the gradient. */
FASTLOSS_INLINE void ROW(ce_small_prefetch)(const float *base, fastloss_index row_stride,
                                            fastloss_index first, fastloss_index next_rows,
                                            fastloss_index n_classes, int write)
{
    if (n_classes <= 16)
        return;
    const fastloss_index ahead = next_rows < CE_SMALL_ROWS ? next_rows : CE_SMALL_ROWS;
    for (fastloss_index r = 0; r < ahead; ++r) {
        const float *x = base + (first + r) * row_stride;
        for (fastloss_index c = 0; c < n_classes; c += 16) {
            if (write)
                __builtin_prefetch(x + c, 1, 3);
            else
                __builtin_prefetch(x + c, 0, 3);
        }
        if (write)
            __builtin_prefetch(x + n_classes - 1, 1, 3);
        else
            __builtin_prefetch(x + n_classes - 1, 0, 3);
    }
}

/* The group of up to 16 classes from `first`: how many (*count) and their mask. */
FASTLOSS_INLINE __mmask16 ROW(ce_small_group)(fastloss_index n_classes, fastloss_index first,
                                              fastloss_index *count)
{
    *count = n_classes - first < 16 ? n_classes - first : 16;
    return (__mmask16)((1u << *count) - 1u);
}

/* ce_small_load_scalar, 16 classes at a time in registers (up to
 * CE_SMALL_VECTOR_CLASSES classes). */
FASTLOSS_INLINE void ROW(ce_small_load)(const STORE_T *logits, fastloss_index row_stride,
                                        const fastloss_index *row, fastloss_index n_classes,
                                        fastloss_index next_rows, VAL *FASTLOSS_RESTRICT tile)
{
    if (n_classes > CE_SMALL_VECTOR_CLASSES) {
        ROW(ce_small_load_scalar)(logits, row_stride, row, n_classes, tile);
        return;
    }
    ROW(ce_small_prefetch)(logits, row_stride, row[0] + CE_SMALL_ROWS, next_rows, n_classes, 0);
    for (fastloss_index first = 0; first < n_classes; first += 16) {
        fastloss_index count;
        const __mmask16 mask = ROW(ce_small_group)(n_classes, first, &count);
        __m512 v[CE_SMALL_ROWS];
        for (int r = 0; r < CE_SMALL_ROWS; ++r)
            v[r] = _mm512_maskz_loadu_ps(mask, logits + row[r] * row_stride + first);
        ROW(ce_small_transpose)(v);
#pragma GCC unroll 16
        for (int c = 0; c < 16; ++c)
            if (c < count)
                _mm512_storeu_ps(tile + (first + c) * CE_SMALL_ROWS, v[c]);
    }
}

/* ce_small_store_scalar, 16 classes at a time in registers (up to
 * CE_SMALL_VECTOR_CLASSES classes). */
FASTLOSS_INLINE void ROW(ce_small_store)(const VAL *FASTLOSS_RESTRICT tile, fastloss_index n_classes,
                                         const fastloss_index *row, const int *valid,
                                         const fastloss_index *t, const double *target_grad,
                                         fastloss_index stored, GRAD_T *FASTLOSS_RESTRICT grad,
                                         fastloss_index grad_row_stride, fastloss_index next_rows)
{
    if (n_classes > CE_SMALL_VECTOR_CLASSES) {
        ROW(ce_small_store_scalar)(tile, n_classes, row, valid, t, target_grad, stored, grad,
                                   grad_row_stride);
        return;
    }
    ROW(ce_small_prefetch)(grad, grad_row_stride, row[0] + CE_SMALL_ROWS, next_rows, n_classes, 1);
    for (fastloss_index first = 0; first < n_classes; first += 16) {
        fastloss_index count;
        const __mmask16 mask = ROW(ce_small_group)(n_classes, first, &count);
        __m512 v[CE_SMALL_ROWS];
#pragma GCC unroll 16
        for (int c = 0; c < 16; ++c)
            v[c] = c < count ? _mm512_loadu_ps(tile + (first + c) * CE_SMALL_ROWS)
                             : _mm512_setzero_ps();
        ROW(ce_small_transpose)(v);
#pragma GCC unroll 16
        for (int r = 0; r < CE_SMALL_ROWS; ++r)
            if (r < stored)
                _mm512_mask_storeu_ps(grad + row[r] * grad_row_stride + first, mask,
                                      valid[r] ? v[r] : _mm512_setzero_ps());
    }
    for (fastloss_index r = 0; r < stored; ++r)
        if (valid[r])
            STORE_WIDE(grad + row[r] * grad_row_stride, t[r], target_grad[r]);
}
#undef CE_SMALL_VECTOR_CLASSES
#else
/* The scalar transposes (they read and write row by row, along memory: the next
 * block needs no prefetch). */
FASTLOSS_INLINE void ROW(ce_small_load)(const STORE_T *logits, fastloss_index row_stride,
                                        const fastloss_index *row, fastloss_index n_classes,
                                        fastloss_index next_rows, VAL *FASTLOSS_RESTRICT tile)
{
    (void)next_rows;
    ROW(ce_small_load_scalar)(logits, row_stride, row, n_classes, tile);
}

FASTLOSS_INLINE void ROW(ce_small_store)(const VAL *FASTLOSS_RESTRICT tile, fastloss_index n_classes,
                                         const fastloss_index *row, const int *valid,
                                         const fastloss_index *t, const double *target_grad,
                                         fastloss_index stored, GRAD_T *FASTLOSS_RESTRICT grad,
                                         fastloss_index grad_row_stride, fastloss_index next_rows)
{
    (void)next_rows;
    ROW(ce_small_store_scalar)(tile, n_classes, row, valid, t, target_grad, stored, grad,
                               grad_row_stride);
}
#endif

/* The FASTLOSS_LANES accumulators of every lane, and the tails, set to 0. */
FASTLOSS_INLINE void ROW(ce_small_lanes_clear)(double *FASTLOSS_RESTRICT lanes,
                                               double *FASTLOSS_RESTRICT total)
{
    for (int k = 0; k < FASTLOSS_LANES * CE_SMALL_ROWS; ++k)
        lanes[k] = 0.0;
    for (int r = 0; r < CE_SMALL_ROWS; ++r)
        total[r] = 0.0;
}

/* total[r] = the lanes' accumulators combined as fastloss_lanes_total (the same
 * order, written across the rows), then the tail. */
FASTLOSS_INLINE void ROW(ce_small_lanes_total)(const double *FASTLOSS_RESTRICT lanes,
                                               double *FASTLOSS_RESTRICT total)
{
    const double *l = lanes;
    enum { R = CE_SMALL_ROWS };
    for (int r = 0; r < CE_SMALL_ROWS; ++r)
        total[r] = (((l[0 * R + r] + l[1 * R + r]) + (l[2 * R + r] + l[3 * R + r])) +
                    ((l[4 * R + r] + l[5 * R + r]) + (l[6 * R + r] + l[7 * R + r]))) + total[r];
}

/* sum_c values[c][r] per lane r, as ce_sum adds a row: classes c and c + 8k
 * share an accumulator, the rest go to a tail, combined as ce_lane_total. */
FASTLOSS_INLINE void ROW(ce_small_sum)(const VAL *FASTLOSS_RESTRICT tile, fastloss_index n_classes,
                                       double *FASTLOSS_RESTRICT lanes, double *FASTLOSS_RESTRICT total)
{
    const fastloss_index full = n_classes - n_classes % FASTLOSS_LANES;
    ROW(ce_small_lanes_clear)(lanes, total);
    for (fastloss_index c = 0; c < full; ++c) {
        double *lane = lanes + (c % FASTLOSS_LANES) * CE_SMALL_ROWS;
#pragma omp simd
        for (int r = 0; r < CE_SMALL_ROWS; ++r)
            lane[r] += (double)tile[c * CE_SMALL_ROWS + r];
    }
    for (fastloss_index c = full; c < n_classes; ++c)
#pragma omp simd
        for (int r = 0; r < CE_SMALL_ROWS; ++r)
            total[r] += (double)tile[c * CE_SMALL_ROWS + r];
    ROW(ce_small_lanes_total)(lanes, total);
}

/* sum_c w_c (shift[r] - values[c][r]) per lane, as ce_dist. */
FASTLOSS_INLINE void ROW(ce_small_dist)(const VAL *FASTLOSS_RESTRICT tile, fastloss_index n_classes,
                                        const VAL *FASTLOSS_RESTRICT shift,
                                        const AUX_T *FASTLOSS_RESTRICT weight,
                                        double *FASTLOSS_RESTRICT lanes, double *FASTLOSS_RESTRICT total)
{
    const fastloss_index full = n_classes - n_classes % FASTLOSS_LANES;
    ROW(ce_small_lanes_clear)(lanes, total);
    for (fastloss_index c = 0; c < n_classes; ++c) {
        double *sum = c < full ? lanes + (c % FASTLOSS_LANES) * CE_SMALL_ROWS : total;
        if (weight) {
            const double w = (double)AUX_LOAD(weight, c);
#pragma omp simd
            for (int r = 0; r < CE_SMALL_ROWS; ++r)
                sum[r] += w * (double)(shift[r] - tile[c * CE_SMALL_ROWS + r]);
        } else {
#pragma omp simd
            for (int r = 0; r < CE_SMALL_ROWS; ++r)
                sum[r] += (double)(shift[r] - tile[c * CE_SMALL_ROWS + r]);
        }
    }
    ROW(ce_small_lanes_total)(lanes, total);
}

/*
 * The far rows of a small block (cross_entropy_body.h, CE_FAR_ROWS; far[r] != 0): their
 * exps taken again in double from their logits, relative to lse[r] (the row's max, or
 * the backward's given lse), each rounded once into the row's column of the tile (the
 * target's left 0), and their sums with and without the target's term in double: the
 * relative accuracy that a = y - M rounded to float lacked.  The block's rows at once,
 * as lanes (a row that is not far keeps its tile and sums).
 */
static void ROW(ce_small_far_rows)(const STORE_T *logits, fastloss_index logits_row_stride,
                                   const fastloss_index *row, fastloss_index n_classes,
                                   const fastloss_index *t, const int *far, const double *lse,
                                   VAL *tile, double *sum, double *excl)
{
    enum { R = CE_SMALL_ROWS };
    double others[R], e_t[R];
    for (int r = 0; r < R; ++r)
        others[r] = e_t[r] = 0.0;
    for (fastloss_index c = 0; c < n_classes; ++c) {
        double y[R]; /* class c of each row, gathered apart: the exps' loop vectorises */
        for (int r = 0; r < R; ++r)
            y[r] = (double)LOAD(logits + row[r] * logits_row_stride, c) - lse[r];
#pragma omp simd
        for (int r = 0; r < R; ++r) {
            const double value = fastloss_exp(y[r]);
            const int target = c == t[r];
            e_t[r] = target ? value : e_t[r];
            others[r] += target ? 0.0 : value;
            tile[c * R + r] = !far[r] ? tile[c * R + r] : target ? (VAL)0 : (VAL)value;
        }
    }
    for (int r = 0; r < R; ++r) {
        excl[r] = far[r] ? others[r] : excl[r];
        sum[r] = far[r] ? others[r] + e_t[r] : sum[r];
    }
}

/*
 * Rows first_row .. first_row + CE_SMALL_ROWS - 1 (those past the last row
 * repeat it and are not stored).  `tile` holds C * CE_SMALL_ROWS values,
 * `lanes` FASTLOSS_LANES * CE_SMALL_ROWS doubles.  lse_in non-NULL: backward
 * (the exps shifted by the given lse, then renormalised, as ce_row_shifted);
 * grad NULL: forward only.  Writes row_ce, row_z and row_lse like the runner.
 */
static void ROW(ce_small_block)(const ce_call *call, const STORE_T *logits,
                                fastloss_index logits_row_stride, const int64_t *target,
                                const AUX_T *weight, const double *lse_in, GRAD_T *grad,
                                fastloss_index grad_row_stride, fastloss_index n_rows,
                                fastloss_index first_row, VAL *tile, double *lanes,
                                double *row_ce, double *row_z, double *row_lse)
{
    enum { R = CE_SMALL_ROWS };
    const fastloss_index n_classes = call->n_classes;
    const int need_dist = call->smoothing > 0.0 && !lse_in;
    fastloss_index row[R], t[R];
    VAL shift[R], shift_lo[R], max[R];
    double lse[R], target_logit[R], sum[R], dist[R]; /* lse: the given lse, or the max */
    int valid[R];
    for (int r = 0; r < R; ++r) {
        row[r] = first_row + r < n_rows ? first_row + r : n_rows - 1;
        t[r] = target[row[r]];
        valid[r] = t[r] != call->ignore_index;
    }
    const fastloss_index next_rows = n_rows - first_row - R > 0 ? n_rows - first_row - R : 0;
    ROW(ce_small_load)(logits, logits_row_stride, row, n_classes, next_rows, tile);
    for (int r = 0; r < R; ++r)
        target_logit[r] = valid[r] ? (double)tile[t[r] * R + r] : 0.0;

    if (lse_in) {
        /* the lse split as in ce_row_shifted */
        for (int r = 0; r < R; ++r) {
            lse[r] = valid[r] ? lse_in[row[r]] : 0.0;
            max[r] = 0;
            dist[r] = 0.0; /* the loss's smoothing sum: the backward writes no loss */
            shift[r] = (VAL)lse[r];
            shift_lo[r] = (VAL)(lse[r] - (double)shift[r]);
        }
        for (fastloss_index c = 0; c < n_classes; ++c)
#pragma omp simd
            for (int r = 0; r < R; ++r)
                tile[c * R + r] = VAL_EXP((tile[c * R + r] - shift[r]) - shift_lo[r]);
    } else {
        /* the max as ce_max (NaN skipped), the shift as ce_row_stats */
        for (int r = 0; r < R; ++r)
            max[r] = -(VAL)INFINITY;
        for (fastloss_index c = 0; c < n_classes; ++c)
#pragma omp simd
            for (int r = 0; r < R; ++r)
                max[r] = tile[c * R + r] > max[r] ? tile[c * R + r] : max[r];
        for (int r = 0; r < R; ++r)
            shift[r] = max[r] == -(VAL)INFINITY ? (VAL)0 : max[r];
        if (need_dist)
            ROW(ce_small_dist)(tile, n_classes, shift, weight, lanes, dist);
        else
            for (int r = 0; r < R; ++r)
                dist[r] = 0.0;
        for (fastloss_index c = 0; c < n_classes; ++c)
#pragma omp simd
            for (int r = 0; r < R; ++r)
                tile[c * R + r] = VAL_EXP_NONPOSITIVE(tile[c * R + r] - shift[r]);
        for (int r = 0; r < R; ++r)
            lse[r] = (double)max[r]; /* the row's M, which ce_row_stats reports as max */
    }
    /* the target's term is left out of the lanes and added last, as ce_chunk_sum */
    VAL target_e[R];
    for (int r = 0; r < R; ++r) {
        target_e[r] = 0;
        if (valid[r]) {
            target_e[r] = tile[t[r] * R + r];
            tile[t[r] * R + r] = 0;
        }
    }
    double excl[R];
    ROW(ce_small_sum)(tile, n_classes, lanes, excl);
    for (int r = 0; r < R; ++r)
        sum[r] = valid[r] ? excl[r] + (double)target_e[r] : excl[r];
    if (lse_in) {
        /* an lse that does not describe its row (see ce_row_shifted): this block
         * again from its logits, as the fused pass computes it (the logits are
         * intact: the block writes its gradient last) */
        int foreign = 0;
        for (int r = 0; r < R; ++r)
            foreign |= valid[r] && !(sum[r] >= 0.5 && sum[r] <= 2.0);
        if (foreign) {
            ROW(ce_small_block)(call, logits, logits_row_stride, target, weight, NULL, grad,
                                grad_row_stride, n_rows, first_row, tile, lanes, row_ce, row_z,
                                row_lse);
            return;
        }
    }
    /* far rows (cross_entropy_body.h, CE_FAR_ROWS): their exps and sums again in double,
     * from the logits (intact: the block writes its gradient last) */
    if (sizeof(VAL) == sizeof(float)) {
        const double far_bound = call->far_bound;
        int far[R], any_far = 0;
#pragma omp simd reduction(| : any_far)
        for (int r = 0; r < R; ++r) {
            far[r] = valid[r] & (excl[r] < sum[r] * far_bound);
            any_far |= far[r];
        }
        if (any_far)
            ROW(ce_small_far_rows)(logits, logits_row_stride, row, n_classes, t, far, lse,
                                   tile, sum, excl);
    }

    /* Per row: the statistics merged as ce_row_stats merges one chunk, then the
     * coefficients, 16 rows at once (ce_coefficients and fastloss_log are inline and
     * branch-free for that); the gradient factors go to lanes (the sums are done). */
    double *factor = lanes, *factor_z = lanes + R, *gamma = lanes + 2 * R;
    double target_grad[R], ce[R], z_term[R], row_lse_value[R];
    double target_weight[R];
    for (int r = 0; r < R; ++r)
        target_weight[r] = weight && valid[r] ? (double)AUX_LOAD(weight, t[r]) : 1.0;
    /* (every value computed, then selected: arithmetic under a condition would
     * keep the loop scalar) */
    double log_sum[R];
#pragma omp simd
    for (int r = 0; r < R; ++r)
        log_sum[r] = fastloss_log(sum[r]);
#pragma omp simd
    for (int r = 0; r < R; ++r) {
        ce_row_stats stats;
        ce_row_coef coef;
        stats.max = lse[r];
        stats.sum = sum[r]; /* 0.0 + sum, as ce_row_stats merges one chunk: the same */
        stats.log_sum = log_sum[r];
        stats.dist = dist[r];
        stats.mass = call->weight_total; /* read here: hoisted before the loop, gcc 12
                                            stopped vectorising it */
        stats.excl = excl[r];
        ROW(ce_coefficients)(call, &stats, target_logit[r], target_weight[r], row[r], &coef);
        /* softmax_c = e_c / S, as ce_row_grad for a row of one chunk (whose rel is 0
         * where no logit is finite: there alpha is NaN, and NaN either way) */
        const double alpha_rel = coef.alpha * coef.inv_sum;
        const double alpha_z_rel = coef.alpha_z * coef.inv_sum;
        const double target_value = ROW(ce_target_grad)(call, &coef, target_weight[r]);
        ce[r] = valid[r] ? coef.ce : 0.0;
        z_term[r] = valid[r] ? coef.z_term : 0.0;
        row_lse_value[r] = valid[r] ? coef.lse : 0.0;
        factor[r] = valid[r] ? alpha_rel : 0.0;
        factor_z[r] = valid[r] ? alpha_z_rel : 0.0;
        gamma[r] = valid[r] ? coef.gamma : 0.0;
        target_grad[r] = valid[r] ? target_value : 0.0;
    }
    /* the block's rows are consecutive: their results too */
    const fastloss_index stored = n_rows - first_row < R ? n_rows - first_row : R;
    for (fastloss_index r = 0; r < stored; ++r) {
        row_ce[first_row + r] = ce[r];
        row_z[first_row + r] = z_term[r];
        row_lse[first_row + r] = row_lse_value[r];
    }
    if (!grad)
        return;

    /* The gradient, class by class across the rows, in ce_grad_range's forms: with
     * a smoothing term (gamma != 0) its difference is taken in double first. */
    int any_gamma = 0;
    for (int r = 0; r < R; ++r)
        any_gamma |= gamma[r] != 0.0;
    if (!any_gamma) {
        VAL factor_v[R];
        for (int r = 0; r < R; ++r)
            factor_v[r] = (VAL)(factor[r] + factor_z[r]);
        for (fastloss_index c = 0; c < n_classes; ++c)
#pragma omp simd
            for (int r = 0; r < R; ++r)
                tile[c * R + r] = factor_v[r] * tile[c * R + r];
    } else {
        for (fastloss_index c = 0; c < n_classes; ++c) {
            const double w = weight ? (double)AUX_LOAD(weight, c) : 1.0;
#pragma omp simd
            for (int r = 0; r < R; ++r) {
                const double e = (double)tile[c * R + r];
                const double with_gamma = weight ? (factor[r] * e - gamma[r] * w) + factor_z[r] * e
                                                 : (factor[r] * e - gamma[r]) + factor_z[r] * e;
                const VAL without = (VAL)(factor[r] + factor_z[r]) * tile[c * R + r];
                tile[c * R + r] = gamma[r] != 0.0 ? (VAL)with_gamma : without;
            }
        }
    }
    ROW(ce_small_store)(tile, n_classes, row, valid, t, target_grad, stored, grad, grad_row_stride,
                        next_rows);
}
