/*
 * contrastive_body.h -- the row kernels (steps 1 and 5 of contrastive.h, the
 * normalisation's backward, contrastive and triplet margin over row pairs) for
 * one storage type, written once.  No include guard, on purpose: contrastive.c
 * includes it per storage type, between storage_begin.h and storage_end.h
 * (STORE_T, REAL, LOAD, STORE, STORE_WIDE: every array of the storage type is
 * read and written through them, see storage.h).  Three array types: the rows
 * (STORE_T, read with LOAD: the caller's arrays, half precision read in place),
 * the gradients (GRAD_T, written with STORE / STORE_WIDE: the storage type, or
 * float32 for the half types' _grad32 tags) and the intermediate arrays the
 * products read and write (AUX_T: the prepared rows rounded for the backward
 * product, the product itself; float32 for the half types, whose products are
 * float32 ones, else STORE_T), read and written directly.  It expects REAL_NAME(name)
 * and the row helpers of contrastive_row_helpers.h.  The arrays of the storage
 * type come in as `const void *` / `void *`, so that each kernel has one
 * signature for every storage type (contrastive_internal.h), the type of
 * contrastive.c's tables.  contrastive_impl.h builds them per instruction set
 * (baseline, AVX2, AVX-512), picked at run time like the pass: they stream their rows
 * once, but a half-precision row costs a conversion per element read (LOAD) and
 * written (STORE_WIDE: double to float rounded to odd, then to the half type).  Built
 * for the baseline only and converting inside the double arithmetic, where the
 * compiler vectorises neither, bfloat16 rows took 1.8-6.2x and float16 rows 3.4-16x the
 * float32 time (contrastive and triplet_margin, N=4096, D=768, one thread); the row
 * helpers and the gradient loops now convert a chunk of each row at a time (below,
 * and contrastive_row_helpers.h).  The builds compute the same operations in the same
 * order (no contraction into FMA: contrastive_impl.h), so every path gives the same
 * bits.
 */

/* The gradient loops of the row pairs go over chunks of the rows
 * (FASTLOSS_CONTRASTIVE_ROW_CHUNK elements, contrastive_row_helpers.h).  For half storage
 * a chunk of each row is converted to float first and the chunk's gradient values are
 * kept in double and stored after (STORE_WIDE), each its own loop, which the compiler
 * vectorises; computed in one loop with the arithmetic, neither conversion is.  Float32
 * and float64 rows are read and written in place.  The values are the same either way.
 *   ROW_CHUNK(row, start, m, len, buffer)  elements [start, start + m) of a row of len
 *                                          elements (those past len are not read; a half
 *                                          chunk holds 0 there), as ROW_CHUNK_T
 *   CHUNK_AT(chunk, k)                     its element k, as double
 *   GRAD_PUT(g, start, buffer, k, value)   gradient element start + k = value
 *   GRAD_FLUSH(g, start, buffer, m)        the chunk's gradient elements stored */
#if STORAGE_IS_COMPUTE
#define ROW_CHUNK_T STORE_T
#define ROW_CHUNK(row, start, m, len, buffer) ((void)(buffer), (void)(len), (row) + (start))
#define CHUNK_AT(chunk, k) ((double)LOAD(chunk, k))
#define GRAD_PUT(g, start, buffer, k, value) STORE_WIDE((g) + (start), k, value)
#define GRAD_FLUSH(g, start, buffer, m) ((void)(buffer))
#else
#define ROW_CHUNK_T float
#define ROW_CHUNK(row, start, m, len, buffer) \
    REAL_NAME(row_chunk)((row) + (start), m, (len) - (start), buffer)
#define CHUNK_AT(chunk, k) ((double)(chunk)[k])
#define GRAD_PUT(g, start, buffer, k, value) ((buffer)[k] = (value))
#define GRAD_FLUSH(g, start, buffer, m) REAL_NAME(store_chunk)((g) + (start), buffer, m)

/* m elements from a row that has `left` more (0 past them), as float */
static inline const float *REAL_NAME(row_chunk)(const STORE_T *row, fastloss_index m,
                                                fastloss_index left, float *buffer)
{
    const fastloss_index read = left < 0 ? 0 : left < m ? left : m;
    REAL_NAME(load_chunk)(row, read, buffer);
    for (fastloss_index k = read; k < m; ++k)
        buffer[k] = 0.0f;
    return buffer;
}

/* g[k] = values[k] rounded once to the gradient's type, k < m.  A half gradient: to float
 * rounding to odd first, then to the half type, as STORE_WIDE does, in two loops (one
 * loop of both, 64-bit lanes into 16-bit ones, is not vectorised); a float32 gradient
 * (the _grad32 tags): STORE_WIDE, rounded to nearest. */
static inline void REAL_NAME(store_chunk)(GRAD_T *g, const double *values, fastloss_index m)
{
    if (sizeof(GRAD_T) == sizeof(float)) {
        for (fastloss_index k = 0; k < m; ++k)
            STORE_WIDE(g, k, values[k]);
        return;
    }
    float odd[FASTLOSS_CONTRASTIVE_ROW_CHUNK];
    for (fastloss_index k = 0; k < m; ++k)
        odd[k] = fastloss_double_to_float_odd(values[k]);
    for (fastloss_index k = 0; k < m; ++k)
        STORE(g, k, odd[k]);
}
#endif
#define CHUNK_LENGTH(start, n)                                                                  \
    ((n) - (start) < FASTLOSS_CONTRASTIVE_ROW_CHUNK ? (n) - (start)                             \
                                                    : FASTLOSS_CONTRASTIVE_ROW_CHUNK)

/* ---------------------------------------------------------------------------
 * Step 1: prepared rows and norms.
 * ------------------------------------------------------------------------- */

int REAL_NAME(distance_prepare_rows) FASTLOSS_CONTRASTIVE_PREPARE_ROWS_SIGNATURE
{
    const STORE_T *x = (const STORE_T *)x_data;
    AUX_T *prepared_real = (AUX_T *)prepared_real_data;
    const fastloss_index n_rows = options->n_rows, dim = options->dim;
    const int cosine = options->metric == FASTLOSS_METRIC_COSINE;
    const double eps = options->eps;
    const int threads = fastloss_effective_threads(options->num_threads, n_rows * dim);
    (void)threads;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
#endif
    for (fastloss_index i = 0; i < n_rows; ++i) {
        const STORE_T *row = x + i * x_row_stride;
        double *out = prepared + i * dim;
        if (cosine) {
            const double length = sqrt(REAL_NAME(dot)(row, row, dim));
            /* x / max(|x|, eps), a division as in F.normalize */
            const double denominator = length >= eps ? length : eps;
            for (fastloss_index k = 0; k < dim; ++k)
                out[k] = (double)LOAD(row, k) / denominator;
            norm[i] = length;
        } else {
            double lane[FASTLOSS_LANES] = {0.0};
            for (fastloss_index k = 0; k < dim; ++k) {
                out[k] = (double)LOAD(row, k) - shift[k];
                lane[k % FASTLOSS_LANES] += out[k] * out[k];
            }
            norm[i] = fastloss_lanes_total(lane);
        }
        if (prepared_real) {
            AUX_T *out_real = prepared_real + i * dim;
            for (fastloss_index k = 0; k < dim; ++k)
                out_real[k] = (AUX_T)out[k];
        }
    }
    return FASTLOSS_OK;
}

/* ---------------------------------------------------------------------------
 * Step 5: the gradient from the product W @ P, and the direct pairs.
 * ------------------------------------------------------------------------- */

int REAL_NAME(distance_finish_rows) FASTLOSS_CONTRASTIVE_FINISH_ROWS_SIGNATURE
{
    const AUX_T *prepared = (const AUX_T *)prepared_data;
    const AUX_T *product = (const AUX_T *)product_data;
    GRAD_T *grad = (GRAD_T *)grad_data;
    const STORE_T *rows = (const STORE_T *)rows_data;
    const STORE_T *other = (const STORE_T *)other_data;
    const fastloss_index n_rows = options->n_rows, dim = options->dim;
    const int cosine = options->metric == FASTLOSS_METRIC_COSINE;
    const double eps = options->eps;
    const int threads = fastloss_effective_threads(options->num_threads, n_rows * dim);
    /* per thread: the row's pull from its direct pairs, in double */
    double *pulls = NULL;
    if (direct) {
        pulls = malloc((size_t)threads * (size_t)dim * sizeof(double) + 1);
        if (!pulls)
            return FASTLOSS_ERROR_NO_MEMORY;
    }
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (threads > 1)
#endif
    {
#ifdef _OPENMP
        double *pull = pulls ? pulls + (size_t)omp_get_thread_num() * (size_t)dim : NULL;
#pragma omp for schedule(static)
#else
        double *pull = pulls;
#endif
        for (fastloss_index i = 0; i < n_rows; ++i) {
            const AUX_T *p = prepared + i * prepared_row_stride;
            const AUX_T *wp = product + i * product_row_stride;
            GRAD_T *g = grad + i * grad_row_stride;
            const double r = sums[i], t = sums[n_rows + i];
            const int unit = norm[i] >= eps;
            /* sum over the direct pairs (i, o) of w (x_i - x_o), or for cosine of
             * w (x^_i - x^_o), and of w d_io; in the order of o */
            double pull_distance = 0.0;
            int pulled = 0;
            if (direct && (!cosine || unit)) {
                const STORE_T *a = rows + i * rows_row_stride;
                /* x^ = x / |x| as a division, as prepare_rows and F.normalize do: a
                 * product with 1 / |x| can miss x^ by an ulp, and leaves a residue in
                 * a gradient that is exactly 0 (two rows in one direction, D = 1) */
                const double a_length = cosine ? norm[i] : 1.0;
                for (fastloss_index k = 0; k < dim; ++k)
                    pull[k] = 0.0;
                for (fastloss_index o = 0; o < direct->n_other; ++o) {
                    const fastloss_index row = direct->transposed ? o : i;
                    const fastloss_index col = direct->transposed ? i : o;
                    if (!((direct->mask[row * direct->mask_row_words + col / 64] >> (col % 64)) & 1))
                        continue;
                    const double w = direct->coef[row * direct->coef_row_stride + col];
                    const STORE_T *b = other + o * other_row_stride;
                    const double b_length = cosine ? other_norm[o] : 1.0;
                    double squared = 0.0;
                    for (fastloss_index k = 0; k < dim; ++k) {
                        const double difference =
                            (double)LOAD(a, k) / a_length - (double)LOAD(b, k) / b_length;
                        pull[k] += w * difference;
                        squared += difference * difference;
                    }
                    pull_distance += w * 0.5 * squared;
                    pulled = 1;
                }
            }
            if (!cosine) {
                for (fastloss_index k = 0; k < dim; ++k)
                    STORE_WIDE(g, k, r * (double)p[k] - (double)wp[k] +
                                         (pulled ? pull[k] : 0.0));
            } else if (unit) {
                /* ((r - t) x^ - W P + pull - (sum w d) x^) / |x|, x^ of the pull from the row */
                const double length = norm[i];
                const STORE_T *a = pulled ? rows + i * rows_row_stride : NULL;
                for (fastloss_index k = 0; k < dim; ++k) {
                    double value = (r - t) * (double)p[k] - (double)wp[k];
                    if (pulled)
                        value += pull[k] - pull_distance * ((double)LOAD(a, k) / length);
                    STORE_WIDE(g, k, value / length);
                }
            } else {
                /* below eps the normalisation is x / eps, a linear map */
                for (fastloss_index k = 0; k < dim; ++k)
                    STORE_WIDE(g, k, -(double)wp[k] / eps);
            }
        }
    }
    free(pulls);
    return FASTLOSS_OK;
}

FASTLOSS_UNIT_BACKWARD_ROW_DEFINE(REAL_NAME(distance_unit_backward_row), double, GRAD_T,
                                  STORE_WIDE)

int REAL_NAME(distance_normalize_backward) FASTLOSS_CONTRASTIVE_NORMALIZE_BACKWARD_SIGNATURE
{
    GRAD_T *grad = (GRAD_T *)grad_data;
    const fastloss_index n_rows = options->n_rows, dim = options->dim;
    const int threads = fastloss_effective_threads(options->num_threads, n_rows * dim);
    (void)threads;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
#endif
    for (fastloss_index i = 0; i < n_rows; ++i)
        REAL_NAME(distance_unit_backward_row)(normalized + i * dim, grad_normalized + i * dim,
                                              norm[i], options->eps, dim,
                                              grad + i * grad_row_stride);
    return FASTLOSS_OK;
}

/* ---------------------------------------------------------------------------
 * Row pairs: contrastive and triplet margin.
 * ------------------------------------------------------------------------- */

int REAL_NAME(distance_contrastive) FASTLOSS_CONTRASTIVE_CONTRASTIVE_SIGNATURE
{
    const STORE_T *x1 = (const STORE_T *)x1_data;
    const STORE_T *x2 = (const STORE_T *)x2_data;
    GRAD_T *grad1 = (GRAD_T *)grad1_data;
    GRAD_T *grad2 = (GRAD_T *)grad2_data;
    const fastloss_index n_rows = options->n_rows, dim = options->dim;
    const int metric = options->metric;
    const double eps = options->eps, norm_eps = options->norm_eps, margin = options->margin;
    const double factor = options->reduction == FASTLOSS_REDUCTION_MEAN ? 1.0 / (double)n_rows : 1.0;
    double *row_loss = fastloss_row_pairs_losses(loss_per_row, n_rows);
    if (!row_loss)
        return FASTLOSS_ERROR_NO_MEMORY;
    const int threads = fastloss_effective_threads(options->num_threads, n_rows * dim);
    (void)threads;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
#endif
    for (fastloss_index i = 0; i < n_rows; ++i) {
        const STORE_T *a = x1 + i * x1_row_stride;
        const STORE_T *b = x2 + i * x2_row_stride;
        double a_norm = 0.0, b_norm = 0.0, distance;
        if (metric == FASTLOSS_METRIC_COSINE) {
            a_norm = sqrt(REAL_NAME(dot)(a, a, dim));
            b_norm = sqrt(REAL_NAME(dot)(b, b, dim));
            distance = REAL_NAME(cosine_distance)(a, a_norm, b, b_norm, norm_eps, dim);
        } else {
            const double q = REAL_NAME(squared_difference)(a, 1.0, b, 1.0, eps, dim);
            distance = metric == FASTLOSS_METRIC_EUCLIDEAN ? sqrt(q) : q;
        }
        const double y = label[i];
        const double hinge = relu_nan(margin - distance);
        row_loss[i] = 0.5 * (y * distance * distance + (1.0 - y) * hinge * hinge);
        if (!grad1)
            continue;
        GRAD_T *g1 = grad1 + i * grad1_row_stride;
        GRAD_T *g2 = grad2 + i * grad2_row_stride;
        float a_buffer[FASTLOSS_CONTRASTIVE_ROW_CHUNK], b_buffer[FASTLOSS_CONTRASTIVE_ROW_CHUNK];
        double g1_buffer[FASTLOSS_CONTRASTIVE_ROW_CHUNK], g2_buffer[FASTLOSS_CONTRASTIVE_ROW_CHUNK];
        /* d loss / d distance, times the upstream gradient */
        const double slope = grad_output[i * grad_output_stride] * factor *
                             (y * distance - (1.0 - y) * hinge);
        if (metric == FASTLOSS_METRIC_COSINE) {
            /* d distance / d a^ = -b^; through a^ = a / |a| the projection
             * -(b^ - a^ (a^ . b^)) / |a| = -((b^ - a^) + a^ distance) / |a| */
            /* divisions, not products with 1 / |a|: a^ = a / |a| exactly as
             * F.normalize, so that rows in one direction (or opposite ones) give
             * a gradient of exactly 0 where D = 1 leaves no tangent direction */
            const double a_length = a_norm >= norm_eps ? a_norm : norm_eps;
            const double b_length = b_norm >= norm_eps ? b_norm : norm_eps;
            const int a_unit = a_norm >= norm_eps, b_unit = b_norm >= norm_eps;
            for (fastloss_index start = 0; start < dim; start += FASTLOSS_CONTRASTIVE_ROW_CHUNK) {
                const fastloss_index m = CHUNK_LENGTH(start, dim);
                const ROW_CHUNK_T *ca = ROW_CHUNK(a, start, m, dim, a_buffer);
                const ROW_CHUNK_T *cb = ROW_CHUNK(b, start, m, dim, b_buffer);
                for (fastloss_index k = 0; k < m; ++k) {
                    const double a_hat = CHUNK_AT(ca, k) / a_length;
                    const double b_hat = CHUNK_AT(cb, k) / b_length;
                    const double to_b =
                        (a_unit ? (b_hat - a_hat) + a_hat * distance : b_hat) / a_length;
                    const double to_a =
                        (b_unit ? (a_hat - b_hat) + b_hat * distance : a_hat) / b_length;
                    GRAD_PUT(g1, start, g1_buffer, k, -slope * to_b);
                    GRAD_PUT(g2, start, g2_buffer, k, -slope * to_a);
                }
                GRAD_FLUSH(g1, start, g1_buffer, m);
                GRAD_FLUSH(g2, start, g2_buffer, m);
            }
        } else {
            /* d distance / d x1 = v / distance (euclidean; 0 at distance 0, as
             * torch's norm) or 2 v (sqeuclidean), v = x1 - x2 + eps */
            double per_v;
            if (metric == FASTLOSS_METRIC_SQEUCLIDEAN)
                per_v = 2.0 * slope;
            else
                per_v = grad_output[i * grad_output_stride] * factor *
                        (y - (distance != 0.0 ? (1.0 - y) * hinge / distance : 0.0));
            for (fastloss_index start = 0; start < dim; start += FASTLOSS_CONTRASTIVE_ROW_CHUNK) {
                const fastloss_index m = CHUNK_LENGTH(start, dim);
                const ROW_CHUNK_T *ca = ROW_CHUNK(a, start, m, dim, a_buffer);
                const ROW_CHUNK_T *cb = ROW_CHUNK(b, start, m, dim, b_buffer);
                for (fastloss_index k = 0; k < m; ++k) {
                    const double v = CHUNK_AT(ca, k) - CHUNK_AT(cb, k) + eps;
                    GRAD_PUT(g1, start, g1_buffer, k, per_v * v);
                    GRAD_PUT(g2, start, g2_buffer, k, -per_v * v);
                }
                GRAD_FLUSH(g1, start, g1_buffer, m);
                GRAD_FLUSH(g2, start, g2_buffer, m);
            }
        }
    }
    fastloss_row_pairs_finish(row_loss, loss_per_row, n_rows, options->reduction, loss);
    return FASTLOSS_OK;
}

/* |v|_p of v = a - b + eps over n elements, for any p (contrastive_internal.h) */
static inline double REAL_NAME(p_distance)(const STORE_T *a, const STORE_T *b, double eps, double p,
                                           fastloss_index n)
{
    if (n == 1 && p != 0.0) /* |v| for every p, exactly */
        return fabs((double)LOAD(a, 0) - (double)LOAD(b, 0) + eps);
    if (p == 2.0)
        return sqrt(REAL_NAME(squared_difference)(a, 1.0, b, 1.0, eps, n));
    if (isinf(p)) {
        /* max (min) |v_k|; NaN wins, as in torch's amax / amin */
        double extreme = p > 0 ? 0.0 : INFINITY;
        for (fastloss_index k = 0; k < n; ++k) {
            const double v = fabs((double)LOAD(a, k) - (double)LOAD(b, k) + eps);
            if (isnan(v))
                return v;
            extreme = p > 0 ? (v > extreme ? v : extreme) : (v < extreme ? v : extreme);
        }
        return extreme;
    }
    double lane[FASTLOSS_LANES] = {0.0};
    for (fastloss_index k = 0; k < n; ++k) {
        const double v = fabs((double)LOAD(a, k) - (double)LOAD(b, k) + eps);
        lane[k % FASTLOSS_LANES] += p == 1.0 ? v : p == 0.0 ? (double)(v != 0.0)
                                                                     : pow(v, p);
    }
    const double total = fastloss_lanes_total(lane);
    return p == 1.0 || p == 0.0 ? total : pow(total, 1.0 / p);
}

/* The per-pair factor of the gradient (p_distance_factor); for p = +-inf it counts the
 * elements that share the gradient: |v_k| equal to the distance, or NaN. */
static inline double REAL_NAME(p_distance_gradient_factor)(const STORE_T *a, const STORE_T *b,
                                                           double eps, double p,
                                                           double distance, fastloss_index n)
{
    double ties = 0.0;
    if (isinf(p))
        for (fastloss_index k = 0; k < n; ++k) {
            const double v = fabs((double)LOAD(a, k) - (double)LOAD(b, k) + eps);
            ties += v == distance || isnan(v);
        }
    return p_distance_factor(distance, p, ties);
}

int REAL_NAME(distance_triplet_margin) FASTLOSS_CONTRASTIVE_TRIPLET_MARGIN_SIGNATURE
{
    const STORE_T *anchor = (const STORE_T *)anchor_data;
    const STORE_T *positive = (const STORE_T *)positive_data;
    const STORE_T *negative = (const STORE_T *)negative_data;
    GRAD_T *grad_anchor = (GRAD_T *)grad_anchor_data;
    GRAD_T *grad_positive = (GRAD_T *)grad_positive_data;
    GRAD_T *grad_negative = (GRAD_T *)grad_negative_data;
    const fastloss_index n_rows = options->n_rows, dim = options->dim;
    const fastloss_index dim_ap = options->anchor_positive_dim;
    const fastloss_index dim_an = options->anchor_negative_dim;
    const fastloss_index dim_pn = options->positive_negative_dim;
    const double eps = options->eps, p = options->p, margin = options->margin;
    const double factor = options->reduction == FASTLOSS_REDUCTION_MEAN ? 1.0 / (double)n_rows : 1.0;
    double *row_loss = fastloss_row_pairs_losses(loss_per_row, n_rows);
    if (!row_loss)
        return FASTLOSS_ERROR_NO_MEMORY;
    const int threads = fastloss_effective_threads(options->num_threads, n_rows * dim);
    (void)threads;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
#endif
    for (fastloss_index i = 0; i < n_rows; ++i) {
        const STORE_T *a = anchor + i * anchor_row_stride;
        const STORE_T *pos = positive + i * positive_row_stride;
        const STORE_T *neg = negative + i * negative_row_stride;
        const double d_ap = REAL_NAME(p_distance)(a, pos, eps, p, dim_ap);
        const double d_an = REAL_NAME(p_distance)(a, neg, eps, p, dim_an);
        /* the negative distance, and its split between d(a, n) and d(p, n):
         * torch.minimum gives each half the gradient at a tie */
        double d_neg = d_an, weight_an = 1.0, weight_pn = 0.0, d_pn = 0.0;
        if (options->swap) {
            d_pn = REAL_NAME(p_distance)(pos, neg, eps, p, dim_pn);
            if (d_pn < d_an) {
                d_neg = d_pn;
                weight_an = 0.0;
                weight_pn = 1.0;
            } else if (d_pn == d_an) {
                weight_an = weight_pn = 0.5;
            } else if (isnan(d_pn)) {
                d_neg = d_pn;
                weight_pn = 1.0;
            }
        }
        const double excess = margin + d_ap - d_neg;
        /* clamp_min(excess, 0); its gradient passes at excess == 0, as torch's */
        const int active = !(excess < 0.0);
        row_loss[i] = active ? excess : 0.0;
        if (!grad_anchor)
            continue;
        GRAD_T *ga = grad_anchor + i * grad_anchor_row_stride;
        GRAD_T *gp = grad_positive + i * grad_positive_row_stride;
        GRAD_T *gn = grad_negative + i * grad_negative_row_stride;
        if (!active) {
            for (fastloss_index k = 0; k < dim; ++k) {
                STORE(ga, k, (REAL)0);
                STORE(gp, k, (REAL)0);
                STORE(gn, k, (REAL)0);
            }
            continue;
        }
        const double upstream = grad_output[i * grad_output_stride] * factor;
        const double f_ap = REAL_NAME(p_distance_gradient_factor)(a, pos, eps, p, d_ap, dim_ap);
        const double f_an = weight_an != 0.0
            ? REAL_NAME(p_distance_gradient_factor)(a, neg, eps, p, d_an, dim_an) : 0.0;
        const double f_pn = weight_pn != 0.0
            ? REAL_NAME(p_distance_gradient_factor)(pos, neg, eps, p, d_pn, dim_pn) : 0.0;
        /* a pair of length 1 (below dim) has its gradient in column 0 alone; each row is
         * read up to the longest pair it is in */
        const fastloss_index a_length = dim_ap > dim_an ? dim_ap : dim_an;
        const fastloss_index pos_length = dim_ap > dim_pn ? dim_ap : dim_pn;
        const fastloss_index neg_length = dim_an > dim_pn ? dim_an : dim_pn;
        float a_buffer[FASTLOSS_CONTRASTIVE_ROW_CHUNK], pos_buffer[FASTLOSS_CONTRASTIVE_ROW_CHUNK];
        float neg_buffer[FASTLOSS_CONTRASTIVE_ROW_CHUNK];
        double ga_buffer[FASTLOSS_CONTRASTIVE_ROW_CHUNK], gp_buffer[FASTLOSS_CONTRASTIVE_ROW_CHUNK];
        double gn_buffer[FASTLOSS_CONTRASTIVE_ROW_CHUNK];
        for (fastloss_index start = 0; start < dim; start += FASTLOSS_CONTRASTIVE_ROW_CHUNK) {
            const fastloss_index m = CHUNK_LENGTH(start, dim);
            const ROW_CHUNK_T *ca = ROW_CHUNK(a, start, m, a_length, a_buffer);
            const ROW_CHUNK_T *cp = ROW_CHUNK(pos, start, m, pos_length, pos_buffer);
            const ROW_CHUNK_T *cn = ROW_CHUNK(neg, start, m, neg_length, neg_buffer);
            for (fastloss_index k = 0; k < m; ++k) {
                const fastloss_index column = start + k;
                const double u_ap = column < dim_ap
                    ? p_distance_slope(CHUNK_AT(ca, k) - CHUNK_AT(cp, k) + eps, p, d_ap, f_ap)
                    : 0.0;
                const double u_an = weight_an != 0.0 && column < dim_an
                    ? weight_an * p_distance_slope(CHUNK_AT(ca, k) - CHUNK_AT(cn, k) + eps, p,
                                                   d_an, f_an)
                    : 0.0;
                const double u_pn = weight_pn != 0.0 && column < dim_pn
                    ? weight_pn * p_distance_slope(CHUNK_AT(cp, k) - CHUNK_AT(cn, k) + eps, p,
                                                   d_pn, f_pn)
                    : 0.0;
                GRAD_PUT(ga, start, ga_buffer, k, upstream * (u_ap - u_an));
                GRAD_PUT(gp, start, gp_buffer, k, upstream * (-u_ap - u_pn));
                GRAD_PUT(gn, start, gn_buffer, k, upstream * (u_an + u_pn));
            }
            GRAD_FLUSH(ga, start, ga_buffer, m);
            GRAD_FLUSH(gp, start, gp_buffer, m);
            GRAD_FLUSH(gn, start, gn_buffer, m);
        }
    }
    fastloss_row_pairs_finish(row_loss, loss_per_row, n_rows, options->reduction, loss);
    return FASTLOSS_OK;
}

#undef CHUNK_LENGTH
#undef GRAD_FLUSH
#undef GRAD_PUT
#undef CHUNK_AT
#undef ROW_CHUNK
#undef ROW_CHUNK_T
