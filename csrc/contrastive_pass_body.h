/*
 * contrastive_pass_body.h -- the pass over the pairs (step 3 of contrastive.h) and
 * the sparse product for one storage type, written once.  No include guard, on
 * purpose: contrastive_impl.h includes it per storage type (between
 * storage_begin.h and storage_end.h: STORE_T, REAL, LOAD, STORE, STORE_WIDE,
 * ROUND_WIDE, see storage.h), once per instruction set.  It expects
 * REAL_NAME(name) (appends the dtype and the instruction set),
 * RECOMPUTE_TOLERANCE and DIRECT_GRADIENT_RATIO (see contrastive.c), and the row
 * helpers of contrastive_row_helpers.h.  The rows are STORE_T (read with LOAD:
 * half precision in place); the values and the coefficients W, and the operands of
 * the sparse product, are AUX_T (the storage type, or float32 for the half types,
 * whose backward products are float32 ones), written directly.  The tiles of
 * coefficients and values hold REAL values already rounded to AUX_T (AUX_ROUND).
 */

/* ---------------------------------------------------------------------------
 * Step 3: the pass over the pairs.
 * ------------------------------------------------------------------------- */

/* a double rounded once to AUX_T (AUX_T is REAL for every tag), as it is stored */
#define AUX_ROUND(value) ((REAL)(AUX_T)(value))

/* What every pair of one call shares. */
typedef struct REAL_NAME(distance_call) {
    const fastloss_contrastive_matrix_options *options;
    const STORE_T *x;
    fastloss_index x_row_stride;
    const STORE_T *y;
    fastloss_index y_row_stride;
    const double *x_norm;
    const double *y_norm;
    const int64_t *labels;
    double gram_error;     /* E per unit of |p_i|**2 + |p_j|**2 (euclidean) or per pair (cosine) */
    double inv_tolerance;  /* 1 / tau */
} REAL_NAME(distance_call);

/* The distance of pair (i, j) recomputed from the rows, in double. */
static inline double REAL_NAME(exact_distance)(const REAL_NAME(distance_call) *call,
                                               fastloss_index i, fastloss_index j)
{
    const fastloss_contrastive_matrix_options *options = call->options;
    const STORE_T *a = call->x + i * call->x_row_stride;
    const STORE_T *b = call->y + j * call->y_row_stride;
    if (options->metric == FASTLOSS_METRIC_COSINE)
        return REAL_NAME(cosine_distance)(a, call->x_norm[i], b, call->y_norm[j], options->eps,
                                          options->dim);
    const double q = REAL_NAME(squared_difference)(a, 1.0, b, 1.0, 0.0, options->dim);
    return options->metric == FASTLOSS_METRIC_EUCLIDEAN ? sqrt(q) : q;
}

/*
 * The distance of pair (i, j) from its Gram entry, *bound a bound on that
 * distance's error (contrastive.c), and whether the Gram form falls short of tau
 * (close points; NaN too): then only the rows can give the distance.
 */
static inline double REAL_NAME(gram_distance)(const REAL_NAME(distance_call) *call,
                                              fastloss_index i, fastloss_index j, double gram,
                                              double *bound, int *close)
{
    const int metric = call->options->metric;
    if (metric == FASTLOSS_METRIC_COSINE) {
        const double distance = 1.0 - gram;
        *bound = call->gram_error;
        *close = !(distance > call->gram_error * call->inv_tolerance);
        return distance;
    }
    const double norms = call->x_norm[i] + call->y_norm[j];
    const double q = norms - 2.0 * gram;
    const double error = call->gram_error * norms;
    *close = !(q > error * call->inv_tolerance);
    const double squared = q > 0.0 ? q : 0.0;
    if (metric == FASTLOSS_METRIC_SQEUCLIDEAN) {
        *bound = error;
        return squared;
    }
    /* |sqrt(q') - sqrt(q)| = |q' - q| / (sqrt(q') + sqrt(q)) <= error / sqrt(q') */
    const double distance = sqrt(squared);
    *bound = error / distance;
    return distance;
}

static inline pair_out REAL_NAME(pair_evaluate)(const REAL_NAME(distance_call) *call,
                                                fastloss_index i, fastloss_index j, double gram,
                                                double upstream, int want_direct,
                                                int64_t *recomputed)
{
    const fastloss_contrastive_matrix_options *options = call->options;
    const int metric = options->metric;
    double bound;
    int recompute;
    double distance = REAL_NAME(gram_distance)(call, i, j, gram, &bound, &recompute);
    pair_out out;
    double slope; /* d value / d distance */
    int same = 0;
    double margin = 0.0;
    if (options->loss == FASTLOSS_PAIRS_CONTRASTIVE) {
        same = call->labels[i] == call->labels[j];
        margin = same ? options->pos_margin : options->neg_margin;
        const double inside = same ? distance - margin : margin - distance;
        /* outside the hinge by more than the bound: the loss is exactly 0, however
         * close the points; inside it by more than 2 bound / tau: accurate to tau;
         * in between only the rows can tell */
        if (-inside > bound)
            recompute = 0;
        else if (!(inside > 2.0 * bound * call->inv_tolerance))
            recompute = 1;
    }
    if (recompute) {
        distance = REAL_NAME(exact_distance)(call, i, j);
        ++*recomputed;
    }
    if (options->loss == FASTLOSS_PAIRS_DISTANCE) {
        out.value = distance;
        slope = 1.0;
    } else {
        const double excess = relu_nan(same ? distance - margin : margin - distance);
        out.value = excess * excess;
        slope = same ? 2.0 * excess : -2.0 * excess;
    }
    out.distance = distance;
    double coefficient = upstream * slope;
    if (metric == FASTLOSS_METRIC_EUCLIDEAN)
        /* torch.cdist: no gradient through a zero distance */
        coefficient = distance != 0.0 ? coefficient / distance : 0.0;
    else if (metric == FASTLOSS_METRIC_SQEUCLIDEAN)
        coefficient *= 2.0;
    out.coefficient = coefficient;
    /* The product W @ P gives a pair's pull w (p_i - p_j) with an error of about
     * u |w| (|p_i| + |p_j|): close pairs take it from the rows instead. */
    out.direct = 0;
    if (want_direct && coefficient != 0.0) {
        if (metric == FASTLOSS_METRIC_COSINE)
            out.direct = call->x_norm[i] >= options->eps && call->y_norm[j] >= options->eps &&
                         distance < DIRECT_GRADIENT_RATIO;
        else {
            const double q = metric == FASTLOSS_METRIC_EUCLIDEAN ? distance * distance : distance;
            out.direct = q < DIRECT_GRADIENT_RATIO * (call->x_norm[i] + call->y_norm[j]);
        }
    }
    return out;
}

/*
 * Phase 1 of a row of a tile: the pairs (i, j), j in [j_start, j_end), from their
 * Gram entries with no branch, so the loop vectorises.  A pair that needs more
 * (close points, a distance next to its margin, a pull taken from the rows) is
 * flagged, and phase 2 evaluates it again in full with pair_evaluate (the same
 * tests).  metric, contrastive and want_direct are constants where it is called.
 */
FASTLOSS_INLINE int64_t REAL_NAME(row_estimate)(
    const REAL_NAME(distance_call) *call, const int metric, const int contrastive,
    const int want_direct, const int narrow_gram, fastloss_index i, fastloss_index j_start,
    fastloss_index j_end, const double *FASTLOSS_RESTRICT gram,
    const float *FASTLOSS_RESTRICT gram_narrow, const double *FASTLOSS_RESTRICT upstream, double *FASTLOSS_RESTRICT distance_out,
    double *FASTLOSS_RESTRICT value_out, double *FASTLOSS_RESTRICT coefficient_out,
    int64_t *FASTLOSS_RESTRICT flag_out)
{
    const fastloss_contrastive_matrix_options *options = call->options;
    const double x_norm = call->x_norm[i];
    const double *FASTLOSS_RESTRICT y_norm = call->y_norm;
    const int64_t *FASTLOSS_RESTRICT labels = call->labels;
    const int64_t label = contrastive ? labels[i] : 0;
    const double error_unit = call->gram_error, inv_tolerance = call->inv_tolerance;
    const double pos_margin = options->pos_margin, neg_margin = options->neg_margin;
    const double eps = options->eps;
    const int64_t x_unit = x_norm >= eps;
    int64_t any_flag = 0;
    for (fastloss_index j = j_start; j < j_end; ++j) {
        const fastloss_index k = j - j_start;
        const double gram_ij = narrow_gram ? (double)gram_narrow[k] : gram[k];
        double distance, bound, squared = 0.0, norms = 0.0;
        int64_t close;
        if (metric == FASTLOSS_METRIC_COSINE) {
            distance = 1.0 - gram_ij;
            bound = error_unit;
            close = !(distance > bound * inv_tolerance);
        } else {
            norms = x_norm + y_norm[j];
            const double q = norms - 2.0 * gram_ij;
            const double error = error_unit * norms;
            close = !(q > error * inv_tolerance);
            squared = q > 0.0 ? q : 0.0;
            distance = metric == FASTLOSS_METRIC_EUCLIDEAN ? sqrt(squared) : squared;
            bound = metric == FASTLOSS_METRIC_EUCLIDEAN ? error / distance : error;
        }
        double value, slope;
        int64_t near = 0;
        if (contrastive) {
            const int64_t same = labels[j] == label;
            const double margin = same ? pos_margin : neg_margin;
            const double inside = same ? distance - margin : margin - distance;
            /* selects rather than logic on int, so the loop keeps one lane width */
            const int64_t outside = -inside > bound ? 1 : 0;
            const int64_t inner = inside > 2.0 * bound * inv_tolerance ? 1 : 0;
            near = (inner | outside) ? 0 : 1;
            close = outside ? 0 : close;
            const double excess = inside > 0.0 ? inside : 0.0;
            value = excess * excess;
            slope = same ? 2.0 * excess : -2.0 * excess;
        } else {
            value = distance;
            slope = 1.0;
        }
        double coefficient = upstream[k] * slope;
        if (metric == FASTLOSS_METRIC_EUCLIDEAN)
            coefficient = distance != 0.0 ? coefficient / distance : 0.0;
        else if (metric == FASTLOSS_METRIC_SQEUCLIDEAN)
            coefficient *= 2.0;
        int64_t direct = 0;
        if (want_direct) {
            if (metric == FASTLOSS_METRIC_COSINE)
                direct = (coefficient != 0.0) & x_unit & (y_norm[j] >= eps) &
                         (distance < DIRECT_GRADIENT_RATIO);
            else
                direct = (coefficient != 0.0) & (squared < DIRECT_GRADIENT_RATIO * norms);
        }
        distance_out[k] = distance;
        value_out[k] = value;
        coefficient_out[k] = coefficient;
        flag_out[k] = close | near | direct;
        any_flag |= flag_out[k];
    }
    return any_flag;
}

/* row_estimate with its constants, for each metric, loss and Gram precision; whether
 * it flagged a pair.  gram_narrow is the float32 Gram row, or NULL for the double one. */
static int64_t REAL_NAME(row_estimate_dispatch)(
    const REAL_NAME(distance_call) *call, int want_direct, fastloss_index i,
    fastloss_index j_start, fastloss_index j_end, const double *gram, const float *gram_narrow,
    const double *upstream, double *distance, double *value, double *coefficient, int64_t *flag)
{
    const int contrastive = call->options->loss == FASTLOSS_PAIRS_CONTRASTIVE;
#define FL_ESTIMATE(metric, contrastive_, direct_, narrow_)                                     \
    return REAL_NAME(row_estimate)(call, metric, contrastive_, direct_, narrow_, i, j_start,    \
                                   j_end, gram, gram_narrow, upstream, distance, value,         \
                                   coefficient, flag)
#define FL_ESTIMATE_NARROW(metric, contrastive_, direct_)                                       \
    if (gram_narrow) FL_ESTIMATE(metric, contrastive_, direct_, 1);                             \
    FL_ESTIMATE(metric, contrastive_, direct_, 0);
#define FL_ESTIMATE_METRIC(metric)                                                              \
    if (contrastive) {                                                                          \
        if (want_direct) {                                                                      \
            FL_ESTIMATE_NARROW(metric, 1, 1)                                                    \
        }                                                                                       \
        FL_ESTIMATE_NARROW(metric, 1, 0)                                                        \
    }                                                                                           \
    if (want_direct) {                                                                          \
        FL_ESTIMATE(metric, 0, 1, 0);                                                           \
    }                                                                                           \
    FL_ESTIMATE(metric, 0, 0, 0);
    switch (call->options->metric) {
    case FASTLOSS_METRIC_EUCLIDEAN:
        FL_ESTIMATE_METRIC(FASTLOSS_METRIC_EUCLIDEAN)
    case FASTLOSS_METRIC_SQEUCLIDEAN:
        FL_ESTIMATE_METRIC(FASTLOSS_METRIC_SQEUCLIDEAN)
    default:
        FL_ESTIMATE_METRIC(FASTLOSS_METRIC_COSINE)
    }
#undef FL_ESTIMATE_METRIC
#undef FL_ESTIMATE_NARROW
#undef FL_ESTIMATE
}

int REAL_NAME(fastloss_contrastive_matrix) FASTLOSS_CONTRASTIVE_MATRIX_SIGNATURE
{
    const STORE_T *x = (const STORE_T *)x_data;
    const STORE_T *y = (const STORE_T *)y_data;
    AUX_T *value = (AUX_T *)value_data;
    AUX_T *coef = (AUX_T *)coef_data;
    const int symmetric = options->symmetric;
    const fastloss_index n_rows = options->n_rows;
    const fastloss_index n_cols = symmetric ? n_rows : options->n_cols;
    const fastloss_index tile = FASTLOSS_CONTRASTIVE_TILE;
    const fastloss_index row_tiles = (n_rows + tile - 1) / tile;
    const fastloss_index col_tiles = (n_cols + tile - 1) / tile;
    /* symmetric: the tiles (I, J) with I <= J; else all of them */
    const fastloss_index n_tiles = symmetric ? row_tiles * (row_tiles + 1) / 2 : row_tiles * col_tiles;
    const int cosine = options->metric == FASTLOSS_METRIC_COSINE;
    const int want_direct = coef != NULL && direct_mask != NULL;

    REAL_NAME(distance_call) call;
    call.options = options;
    call.x = x;
    call.x_row_stride = x_row_stride;
    call.y = symmetric ? x : y;
    call.y_row_stride = symmetric ? x_row_stride : y_row_stride;
    call.x_norm = x_norm;
    call.y_norm = symmetric ? x_norm : y_norm;
    call.labels = labels;
    /* a float32 Gram only for float32 data and the contrastive loss: a distance is
     * decided from it where the pair lies outside its hinge (see contrastive.h) */
    const int narrow_gram = options->gram_float32 && sizeof(REAL) == sizeof(float) &&
                            options->loss == FASTLOSS_PAIRS_CONTRASTIVE;
    const double *gram_wide = narrow_gram ? NULL : (const double *)gram;
    const float *gram_narrow = narrow_gram ? (const float *)gram : NULL;
    call.gram_error = gram_error_bound(options->dim, narrow_gram ? FLT_EPSILON / 2.0
                                                                 : DBL_EPSILON / 2.0);
    call.inv_tolerance = 1.0 / RECOMPUTE_TOLERANCE;

    /* Slots: per tile its loss, recompute and direct counts and its (I, J); per
     * column tile and row its part of the row sums (r, t); per row tile and
     * column its part of the column sums (not symmetric). */
    const size_t row_slots = coef ? (size_t)col_tiles * (size_t)n_rows * 2 : 0;
    const size_t col_slots = coef && !symmetric ? (size_t)row_tiles * (size_t)n_cols * 2 : 0;
    char *scratch = malloc((size_t)n_tiles * (sizeof(double) + 5 * sizeof(int64_t)) +
                           (row_slots + col_slots) * sizeof(double) + 1);
    if (!scratch)
        return FASTLOSS_ERROR_NO_MEMORY;
    double *tile_loss = (double *)scratch;
    double *row_part = tile_loss + n_tiles;
    double *col_part = row_part + row_slots;
    int64_t *tile_recomputed = (int64_t *)(col_part + col_slots);
    int64_t *tile_direct = tile_recomputed + n_tiles;
    int64_t *tile_nonzero = tile_direct + n_tiles;
    int64_t *tile_row = tile_nonzero + n_tiles;
    int64_t *tile_col = tile_row + n_tiles;
    {
        fastloss_index t = 0;
        for (fastloss_index tile_i = 0; tile_i < row_tiles; ++tile_i)
            for (fastloss_index tile_j = symmetric ? tile_i : 0; tile_j < col_tiles; ++tile_j) {
                tile_row[t] = tile_i;
                tile_col[t] = tile_j;
                ++t;
            }
    }

    int threads = fastloss_effective_threads(options->num_threads, n_rows * n_cols);
    if (threads > n_tiles)
        threads = n_tiles > 1 ? (int)n_tiles : 1;
    (void)threads;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (threads > 1)
#endif
    {
        double row_w[FASTLOSS_CONTRASTIVE_TILE], row_t[FASTLOSS_CONTRASTIVE_TILE];
        double col_w[FASTLOSS_CONTRASTIVE_TILE], col_t[FASTLOSS_CONTRASTIVE_TILE];
        /* the tile's bits of the direct-pair mask: one 64-bit word per row of the
         * tile (and per row of its mirror), a word no other tile writes */
        uint64_t row_mask[FASTLOSS_CONTRASTIVE_TILE], col_mask[FASTLOSS_CONTRASTIVE_TILE];
        /* likewise for the nonzero coefficients (the sparse product's index) */
        uint64_t row_nonzero[FASTLOSS_CONTRASTIVE_TILE], col_nonzero[FASTLOSS_CONTRASTIVE_TILE];
        /* one row of a tile between the phases */
        double pair_upstream[FASTLOSS_CONTRASTIVE_TILE], pair_distance[FASTLOSS_CONTRASTIVE_TILE];
        double pair_value[FASTLOSS_CONTRASTIVE_TILE], pair_coefficient[FASTLOSS_CONTRASTIVE_TILE];
        int64_t pair_flag[FASTLOSS_CONTRASTIVE_TILE];
        double lane_w[FASTLOSS_CONTRASTIVE_TILE], lane_t[FASTLOSS_CONTRASTIVE_TILE];
        double lane_loss[FASTLOSS_CONTRASTIVE_TILE];
        /* the tile's coefficients and values, written out row by row and then, for the
         * mirror half, column by column */
        REAL tile_coef[FASTLOSS_CONTRASTIVE_TILE * FASTLOSS_CONTRASTIVE_TILE];
        REAL tile_value[FASTLOSS_CONTRASTIVE_TILE * FASTLOSS_CONTRASTIVE_TILE];
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (fastloss_index t = 0; t < n_tiles; ++t) {
            const fastloss_index row_tile = tile_row[t], col_tile = tile_col[t];
            const fastloss_index i0 = row_tile * tile, j0 = col_tile * tile;
            const fastloss_index i1 = i0 + tile < n_rows ? i0 + tile : n_rows;
            const fastloss_index j1 = j0 + tile < n_cols ? j0 + tile : n_cols;
            const int diagonal = symmetric && i0 == j0;
            double loss_sum = 0.0;
            int64_t recomputed = 0, direct = 0;
            for (fastloss_index k = 0; k < tile; ++k) {
                row_w[k] = row_t[k] = col_w[k] = col_t[k] = 0.0;
                row_mask[k] = col_mask[k] = 0;
                row_nonzero[k] = col_nonzero[k] = 0;
            }
            for (fastloss_index i = i0; i < i1; ++i) {
                const fastloss_index j_start = diagonal ? i + 1 : j0;
                if (j_start >= j1)
                    continue;
                const double *gram_segment =
                    gram_wide ? gram_wide + i * gram_row_stride + j_start : NULL;
                const float *gram_narrow_segment =
                    gram_narrow ? gram_narrow + i * gram_row_stride + j_start : NULL;
                /* the upstream gradient of each pair of the row */
                for (fastloss_index j = j_start; j < j1; ++j) {
                    double g = 1.0;
                    if (grad_output) {
                        g = grad_output[i * grad_output_row_stride + j * grad_output_col_stride];
                        if (symmetric)
                            g += grad_output[j * grad_output_row_stride + i * grad_output_col_stride];
                    }
                    pair_upstream[j - j0] = options->scale * g;
                }
                /* phase 1: the whole row from the Gram entries */
                const int64_t any_flag = REAL_NAME(row_estimate_dispatch)(
                                                 &call, want_direct, i, j_start, j1, gram_segment,
                                                 gram_narrow_segment,
                                                 pair_upstream + (j_start - j0),
                                                 pair_distance + (j_start - j0),
                                                 pair_value + (j_start - j0),
                                                 pair_coefficient + (j_start - j0),
                                                 pair_flag + (j_start - j0));
                /* phase 2: the flagged pairs in full; pair_flag becomes "direct" */
                for (fastloss_index j = any_flag ? j_start : j1; j < j1; ++j) {
                    const fastloss_index k = j - j0;
                    if (!pair_flag[k])
                        continue;
                    const double gram_ij = gram_narrow_segment
                                               ? (double)gram_narrow_segment[j - j_start]
                                               : gram_segment[j - j_start];
                    const pair_out pair = REAL_NAME(pair_evaluate)(&call, i, j, gram_ij,
                                                                   pair_upstream[k], want_direct,
                                                                   &recomputed);
                    pair_distance[k] = pair.distance;
                    pair_value[k] = pair.value;
                    pair_coefficient[k] = pair.coefficient;
                    pair_flag[k] = pair.direct;
                }
                /* phase 3: the row's outputs and sums.  Lanes of the whole tile width
                 * (0 outside [j_start, j1)) keep every sum in one fixed order and let the
                 * loops vectorise. */
                const fastloss_index k_start = j_start - j0, k_end = j1 - j0;
                REAL *tile_coef_row = tile_coef + (i - i0) * FASTLOSS_CONTRASTIVE_TILE;
                for (fastloss_index k = 0; k < FASTLOSS_CONTRASTIVE_TILE; ++k) {
                    const int inside = k >= k_start && k < k_end;
                    /* the product sees the coefficient rounded to AUX_T, and so must
                     * the sums; a direct pair leaves the product (0) */
                    const REAL stored = inside && !(any_flag && pair_flag[k])
                                            ? AUX_ROUND(pair_coefficient[k]) : (REAL)0;
                    tile_coef_row[k] = stored;
                    lane_w[k] = (double)stored;
                    lane_t[k] = inside ? (double)stored * pair_distance[k] : 0.0;
                    lane_loss[k] = inside ? pair_value[k] : 0.0;
                }
                double row_sum[FASTLOSS_LANES] = {0.0}, row_dsum[FASTLOSS_LANES] = {0.0};
                double row_loss[FASTLOSS_LANES] = {0.0};
                for (fastloss_index b = 0; b < FASTLOSS_CONTRASTIVE_TILE; b += FASTLOSS_LANES)
                    for (int l = 0; l < FASTLOSS_LANES; ++l) {
                        row_sum[l] += lane_w[b + l];
                        row_dsum[l] += lane_t[b + l];
                        row_loss[l] += lane_loss[b + l];
                    }
                loss_sum += fastloss_lanes_total(row_loss);
                if (value) {
                    AUX_T *value_row = value + i * value_row_stride;
                    REAL *tile_value_row = tile_value + (i - i0) * FASTLOSS_CONTRASTIVE_TILE;
                    for (fastloss_index j = j_start; j < j1; ++j) {
                        const REAL stored = AUX_ROUND(pair_value[j - j0]);
                        value_row[j] = (AUX_T)stored;
                        tile_value_row[j - j0] = stored;
                    }
                }
                if (!coef)
                    continue;
                row_w[i - i0] = fastloss_lanes_total(row_sum);
                row_t[i - i0] = fastloss_lanes_total(row_dsum);
                for (fastloss_index k = 0; k < FASTLOSS_CONTRASTIVE_TILE; ++k) {
                    col_w[k] += lane_w[k];
                    col_t[k] += lane_t[k];
                }
                AUX_T *coef_row = coef + i * coef_row_stride;
                for (fastloss_index j = j_start; j < j1; ++j)
                    coef_row[j] = (AUX_T)tile_coef_row[j - j0];
                if (nonzero_mask) {
                    uint64_t *mirror_nonzero = diagonal ? row_nonzero : col_nonzero;
                    uint64_t bits = 0;
                    for (fastloss_index k = 0; k < FASTLOSS_CONTRASTIVE_TILE; ++k) {
                        const uint64_t nonzero = tile_coef_row[k] != 0;
                        bits |= nonzero << k;
                        mirror_nonzero[k] |= nonzero << (i - i0);
                    }
                    row_nonzero[i - i0] |= bits;
                }
                /* the direct pairs: their exact coefficient into direct_coef */
                for (fastloss_index k = any_flag ? k_start : k_end; k < k_end; ++k) {
                    if (!pair_flag[k])
                        continue;
                    const fastloss_index j = j0 + k;
                    direct_coef[i * direct_coef_row_stride + j] = pair_coefficient[k];
                    if (symmetric)
                        direct_coef[j * direct_coef_row_stride + i] = pair_coefficient[k];
                    row_mask[i - i0] |= (uint64_t)1 << k;
                    if (diagonal)
                        row_mask[k] |= (uint64_t)1 << (i - i0);
                    else
                        col_mask[k] |= (uint64_t)1 << (i - i0);
                    ++direct;
                }
            }
            /* the mirror half (symmetric), from the tile's rows */
            if (symmetric) {
                for (fastloss_index j = j0; j < j1; ++j) {
                    const fastloss_index i_end = diagonal ? j : i1;
                    if (coef) {
                        AUX_T *coef_row = coef + j * coef_row_stride;
                        for (fastloss_index i = i0; i < i_end; ++i)
                            coef_row[i] =
                                (AUX_T)tile_coef[(i - i0) * FASTLOSS_CONTRASTIVE_TILE + (j - j0)];
                    }
                    if (value) {
                        AUX_T *value_row = value + j * value_row_stride;
                        for (fastloss_index i = i0; i < i_end; ++i)
                            value_row[i] =
                                (AUX_T)tile_value[(i - i0) * FASTLOSS_CONTRASTIVE_TILE + (j - j0)];
                    }
                }
            }
            tile_loss[t] = loss_sum;
            tile_recomputed[t] = recomputed;
            tile_direct[t] = direct;
            tile_nonzero[t] = 0;
            if (!coef)
                continue;
            for (fastloss_index i = i0; i < i1; ++i) {
                if (nonzero_mask) {
                    nonzero_mask[i * col_tiles + col_tile] = row_nonzero[i - i0];
                    tile_nonzero[t] += fastloss_popcount64(row_nonzero[i - i0]);
                }
                const double mirror_w = diagonal ? col_w[i - i0] : 0.0;
                const double mirror_t = diagonal ? col_t[i - i0] : 0.0;
                row_part[(col_tile * n_rows + i) * 2] = row_w[i - i0] + mirror_w;
                row_part[(col_tile * n_rows + i) * 2 + 1] = row_t[i - i0] + mirror_t;
                if (want_direct)
                    direct_mask[i * col_tiles + col_tile] = row_mask[i - i0];
            }
            if (!diagonal) {
                /* symmetric: the mirror half adds to rows j; else to columns j */
                double *part = symmetric ? row_part : col_part;
                const fastloss_index stride = symmetric ? n_rows : n_cols;
                for (fastloss_index j = j0; j < j1; ++j) {
                    part[(row_tile * stride + j) * 2] = col_w[j - j0];
                    part[(row_tile * stride + j) * 2 + 1] = col_t[j - j0];
                    if (want_direct && symmetric)
                        direct_mask[j * col_tiles + row_tile] = col_mask[j - j0];
                    if (nonzero_mask && symmetric) {
                        nonzero_mask[j * col_tiles + row_tile] = col_nonzero[j - j0];
                        tile_nonzero[t] += fastloss_popcount64(col_nonzero[j - j0]);
                    }
                }
            }
        }

        /* The diagonal (symmetric) and the sums, row by row. */
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (fastloss_index i = 0; i < (symmetric || coef ? n_rows : 0); ++i) {
            double diagonal_value = 0.0, diagonal_coef = 0.0;
            if (symmetric && cosine && options->loss == FASTLOSS_PAIRS_DISTANCE &&
                !(x_norm[i] >= options->eps)) {
                /* d_ii = 1 - |x^_i|**2, 0 for a unit row (and with no gradient); below
                 * eps 1 - (|x_i| / eps)**2, whose gradient w.r.t. x^_i, -2 x^_i, is
                 * the coefficient 2 g_ii */
                const double ratio = x_norm[i] / options->eps;
                diagonal_value = 1.0 - ratio * ratio;
                diagonal_coef = options->scale;
                if (grad_output)
                    diagonal_coef *= 2.0 * grad_output[i * (grad_output_row_stride + grad_output_col_stride)];
            }
            if (symmetric && value)
                value[i * value_row_stride + i] = (AUX_T)diagonal_value;
            if (!coef)
                continue;
            if (symmetric) {
                coef[i * coef_row_stride + i] = (AUX_T)diagonal_coef;
                if (nonzero_mask && AUX_ROUND(diagonal_coef) != 0)
                    nonzero_mask[i * col_tiles + i / 64] |= (uint64_t)1 << (i % 64);
            }
            double r = 0.0, s = 0.0;
            for (fastloss_index b = 0; b < col_tiles; ++b) {
                r += row_part[(b * n_rows + i) * 2];
                s += row_part[(b * n_rows + i) * 2 + 1];
            }
            const double stored = (double)AUX_ROUND(diagonal_coef);
            x_sums[i] = r + stored;
            x_sums[n_rows + i] = s + stored * diagonal_value;
        }
        if (coef && !symmetric) {
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
            for (fastloss_index j = 0; j < n_cols; ++j) {
                double c = 0.0, s = 0.0;
                for (fastloss_index b = 0; b < row_tiles; ++b) {
                    c += col_part[(b * n_cols + j) * 2];
                    s += col_part[(b * n_cols + j) * 2 + 1];
                }
                y_sums[j] = c;
                y_sums[n_cols + j] = s;
            }
        }
    }

    if (loss)
        *loss = fastloss_sum_float64(tile_loss, n_tiles);
    int64_t recomputed_count = 0, direct_count = 0, nonzero_count = 0;
    for (fastloss_index t = 0; t < n_tiles; ++t) {
        recomputed_count += tile_recomputed[t];
        direct_count += tile_direct[t];
        nonzero_count += tile_nonzero[t];
    }
    if (n_nonzero)
        *n_nonzero = nonzero_count; /* off the diagonal */
    if (n_recomputed)
        *n_recomputed = recomputed_count;
    if (n_direct)
        *n_direct = direct_count;
    free(scratch);
    return FASTLOSS_OK;
}

/*
 * W @ P when W is sparse: row i adds w_ij p_j over the bits of nonzero_mask
 * (the pass's), in the order of j, in double.  Cheaper than the BLAS product
 * below a density of about 1/16 (benchmarks/bench_contrastive.py): a hinge loss
 * whose pairs are mostly outside their margins has mostly zero coefficients.
 */
int REAL_NAME(fastloss_contrastive_sparse_product) FASTLOSS_CONTRASTIVE_SPARSE_PRODUCT_SIGNATURE
{
    const AUX_T *coef = (const AUX_T *)coef_data;
    const AUX_T *rows = (const AUX_T *)rows_data;
    AUX_T *product = (AUX_T *)product_data;
    const fastloss_index n_rows = options->n_rows, dim = options->dim;
    const int threads = fastloss_effective_threads(options->num_threads, n_rows * dim);
    double *sums = malloc((size_t)threads * (size_t)dim * sizeof(double) + 1);
    if (!sums)
        return FASTLOSS_ERROR_NO_MEMORY;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (threads > 1)
#endif
    {
#ifdef _OPENMP
        double *FASTLOSS_RESTRICT sum = sums + (size_t)omp_get_thread_num() * (size_t)dim;
#pragma omp for schedule(static)
#else
        double *FASTLOSS_RESTRICT sum = sums;
#endif
        for (fastloss_index i = 0; i < n_rows; ++i) {
            for (fastloss_index k = 0; k < dim; ++k)
                sum[k] = 0.0;
            const uint64_t *words = nonzero_mask + i * mask_row_words;
            for (fastloss_index word = 0; word < mask_row_words; ++word) {
                for (uint64_t bits = words[word]; bits; bits &= bits - 1) {
                    const fastloss_index j = word * 64 + fastloss_lowest_bit64(bits);
                    const double w = (double)coef[i * coef_row_stride + j];
                    const AUX_T *FASTLOSS_RESTRICT p = rows + j * rows_row_stride;
                    for (fastloss_index k = 0; k < dim; ++k)
                        sum[k] += w * (double)p[k];
                }
            }
            AUX_T *out = product + i * product_row_stride;
            for (fastloss_index k = 0; k < dim; ++k)
                out[k] = (AUX_T)sum[k];
        }
    }
    free(sums);
    return FASTLOSS_OK;
}

#undef AUX_ROUND
