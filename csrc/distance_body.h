/*
 * distance_body.h -- the row kernels (steps 1 and 5 of distance.h, the
 * normalisation's backward, contrastive and triplet margin over row pairs) for
 * one storage type REAL, written once.  No include guard, on purpose:
 * distance.c includes it for float and double.  It expects REAL,
 * REAL_NAME(name) and the row helpers of distance_row_helpers.h.  These kernels
 * stream their rows once and are bound by memory, not arithmetic: one build
 * serves every CPU.
 */

/* ---------------------------------------------------------------------------
 * Step 1: prepared rows and norms.
 * ------------------------------------------------------------------------- */

void REAL_NAME(fastloss_distance_prepare_rows)(const fastloss_distance_rows_options *options,
                                               const REAL *x, fastloss_index x_row_stride,
                                               const double *shift, double *prepared,
                                               REAL *prepared_real, double *norm)
{
    const fastloss_index n_rows = options->n_rows, dim = options->dim;
    const int cosine = options->metric == FASTLOSS_METRIC_COSINE;
    const double eps = options->eps;
    const int threads = fastloss_effective_threads(options->num_threads, n_rows * dim);
    (void)threads;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
#endif
    for (fastloss_index i = 0; i < n_rows; ++i) {
        const REAL *row = x + i * x_row_stride;
        double *out = prepared + i * dim;
        if (cosine) {
            const double length = sqrt(REAL_NAME(dot)(row, row, dim));
            /* x / max(|x|, eps), a division as in F.normalize */
            const double denominator = length >= eps ? length : eps;
            for (fastloss_index k = 0; k < dim; ++k)
                out[k] = (double)row[k] / denominator;
            norm[i] = length;
        } else {
            double lane[FASTLOSS_LANES] = {0.0};
            for (fastloss_index k = 0; k < dim; ++k) {
                out[k] = (double)row[k] - shift[k];
                lane[k % FASTLOSS_LANES] += out[k] * out[k];
            }
            norm[i] = fastloss_lanes_total(lane);
        }
        if (prepared_real) {
            REAL *out_real = prepared_real + i * dim;
            for (fastloss_index k = 0; k < dim; ++k)
                out_real[k] = (REAL)out[k];
        }
    }
}

/* ---------------------------------------------------------------------------
 * Step 5: the gradient from the product W @ P, and the direct pairs.
 * ------------------------------------------------------------------------- */

int REAL_NAME(fastloss_distance_finish_rows)(
    const fastloss_distance_rows_options *options, const REAL *prepared,
    fastloss_index prepared_row_stride, const double *sums, const double *norm,
    const REAL *product, fastloss_index product_row_stride, REAL *grad,
    fastloss_index grad_row_stride, const fastloss_distance_direct *direct, const REAL *rows,
    fastloss_index rows_row_stride, const REAL *other, fastloss_index other_row_stride,
    const double *other_norm)
{
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
            const REAL *p = prepared + i * prepared_row_stride;
            const REAL *wp = product + i * product_row_stride;
            REAL *g = grad + i * grad_row_stride;
            const double r = sums[i], t = sums[n_rows + i];
            const int unit = norm[i] >= eps;
            /* sum over the direct pairs (i, o) of w (x_i - x_o), or for cosine of
             * w (x^_i - x^_o), and of w d_io; in the order of o */
            double pull_distance = 0.0;
            int pulled = 0;
            if (direct && (!cosine || unit)) {
                const REAL *a = rows + i * rows_row_stride;
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
                    const REAL *b = other + o * other_row_stride;
                    const double b_length = cosine ? other_norm[o] : 1.0;
                    double squared = 0.0;
                    for (fastloss_index k = 0; k < dim; ++k) {
                        const double difference = (double)a[k] / a_length - (double)b[k] / b_length;
                        pull[k] += w * difference;
                        squared += difference * difference;
                    }
                    pull_distance += w * 0.5 * squared;
                    pulled = 1;
                }
            }
            if (!cosine) {
                for (fastloss_index k = 0; k < dim; ++k)
                    g[k] = (REAL)(r * (double)p[k] - (double)wp[k] + (pulled ? pull[k] : 0.0));
            } else if (unit) {
                /* ((r - t) x^ - W P + pull - (sum w d) x^) / |x|, x^ of the pull from the row */
                const double length = norm[i];
                const REAL *a = pulled ? rows + i * rows_row_stride : NULL;
                for (fastloss_index k = 0; k < dim; ++k) {
                    double value = (r - t) * (double)p[k] - (double)wp[k];
                    if (pulled)
                        value += pull[k] - pull_distance * ((double)a[k] / length);
                    g[k] = (REAL)(value / length);
                }
            } else {
                /* below eps the normalisation is x / eps, a linear map */
                for (fastloss_index k = 0; k < dim; ++k)
                    g[k] = (REAL)(-(double)wp[k] / eps);
            }
        }
    }
    free(pulls);
    return FASTLOSS_OK;
}

void REAL_NAME(fastloss_distance_normalize_backward)(const fastloss_distance_rows_options *options,
                                                     const double *normalized, const double *norm,
                                                     const double *grad_normalized, REAL *grad,
                                                     fastloss_index grad_row_stride)
{
    const fastloss_index n_rows = options->n_rows, dim = options->dim;
    const double eps = options->eps;
    const int threads = fastloss_effective_threads(options->num_threads, n_rows * dim);
    (void)threads;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
#endif
    for (fastloss_index i = 0; i < n_rows; ++i) {
        const double *unit = normalized + i * dim;
        const double *g = grad_normalized + i * dim;
        REAL *out = grad + i * grad_row_stride;
        if (norm[i] >= eps) {
            double lane[FASTLOSS_LANES] = {0.0};
            for (fastloss_index k = 0; k < dim; ++k)
                lane[k % FASTLOSS_LANES] += unit[k] * g[k];
            const double along = fastloss_lanes_total(lane);
            for (fastloss_index k = 0; k < dim; ++k)
                out[k] = (REAL)((g[k] - unit[k] * along) / norm[i]);
        } else {
            for (fastloss_index k = 0; k < dim; ++k)
                out[k] = (REAL)(g[k] / eps);
        }
    }
}

/* ---------------------------------------------------------------------------
 * Row pairs: contrastive and triplet margin.
 * ------------------------------------------------------------------------- */

/* Reduced loss from per-row values, in a fixed order. */
static double REAL_NAME(reduce_rows)(const double *row_loss, fastloss_index n_rows, int reduction)
{
    const double total = fastloss_sum_float64(row_loss, n_rows);
    return reduction == FASTLOSS_REDUCTION_MEAN ? total / (double)n_rows : total;
}

int REAL_NAME(fastloss_distance_contrastive)(
    const fastloss_pair_loss_options *options, const REAL *x1, fastloss_index x1_row_stride,
    const REAL *x2, fastloss_index x2_row_stride, const double *label, const double *grad_output,
    fastloss_index grad_output_stride, double *loss_per_row, double *loss, REAL *grad1,
    fastloss_index grad1_row_stride, REAL *grad2, fastloss_index grad2_row_stride)
{
    const fastloss_index n_rows = options->n_rows, dim = options->dim;
    const int metric = options->metric;
    const double eps = options->eps, norm_eps = options->norm_eps, margin = options->margin;
    const double factor = options->reduction == FASTLOSS_REDUCTION_MEAN ? 1.0 / (double)n_rows : 1.0;
    double *row_loss = loss_per_row;
    if (!row_loss) {
        row_loss = malloc((size_t)n_rows * sizeof(double) + 1);
        if (!row_loss)
            return FASTLOSS_ERROR_NO_MEMORY;
    }
    const int threads = fastloss_effective_threads(options->num_threads, n_rows * dim);
    (void)threads;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
#endif
    for (fastloss_index i = 0; i < n_rows; ++i) {
        const REAL *a = x1 + i * x1_row_stride;
        const REAL *b = x2 + i * x2_row_stride;
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
        REAL *g1 = grad1 + i * grad1_row_stride;
        REAL *g2 = grad2 + i * grad2_row_stride;
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
            for (fastloss_index k = 0; k < dim; ++k) {
                const double a_hat = (double)a[k] / a_length, b_hat = (double)b[k] / b_length;
                const double to_b = (a_unit ? (b_hat - a_hat) + a_hat * distance : b_hat) / a_length;
                const double to_a = (b_unit ? (a_hat - b_hat) + b_hat * distance : a_hat) / b_length;
                g1[k] = (REAL)(-slope * to_b);
                g2[k] = (REAL)(-slope * to_a);
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
            for (fastloss_index k = 0; k < dim; ++k) {
                const double v = (double)a[k] - (double)b[k] + eps;
                g1[k] = (REAL)(per_v * v);
                g2[k] = (REAL)(-per_v * v);
            }
        }
    }
    if (loss)
        *loss = REAL_NAME(reduce_rows)(row_loss, n_rows, options->reduction);
    if (!loss_per_row)
        free(row_loss);
    return FASTLOSS_OK;
}

/* |v|_p of v = a - b + eps over n elements, for any p (distance_internal.h) */
static inline double REAL_NAME(p_distance)(const REAL *a, const REAL *b, double eps, double p,
                                           fastloss_index n)
{
    if (n == 1 && p != 0.0) /* |v| for every p, exactly */
        return fabs((double)a[0] - (double)b[0] + eps);
    if (p == 2.0)
        return sqrt(REAL_NAME(squared_difference)(a, 1.0, b, 1.0, eps, n));
    if (isinf(p)) {
        /* max (min) |v_k|; NaN wins, as in torch's amax / amin */
        double extreme = p > 0 ? 0.0 : INFINITY;
        for (fastloss_index k = 0; k < n; ++k) {
            const double v = fabs((double)a[k] - (double)b[k] + eps);
            if (isnan(v))
                return v;
            extreme = p > 0 ? (v > extreme ? v : extreme) : (v < extreme ? v : extreme);
        }
        return extreme;
    }
    double lane[FASTLOSS_LANES] = {0.0};
    for (fastloss_index k = 0; k < n; ++k) {
        const double v = fabs((double)a[k] - (double)b[k] + eps);
        lane[k % FASTLOSS_LANES] += p == 1.0 ? v : p == 0.0 ? (double)(v != 0.0)
                                                                     : pow(v, p);
    }
    const double total = fastloss_lanes_total(lane);
    return p == 1.0 || p == 0.0 ? total : pow(total, 1.0 / p);
}

/* The per-pair factor of the gradient (p_distance_factor); for p = +-inf it counts the
 * elements that share the gradient: |v_k| equal to the distance, or NaN. */
static inline double REAL_NAME(p_distance_gradient_factor)(const REAL *a, const REAL *b,
                                                           double eps, double p,
                                                           double distance, fastloss_index n)
{
    double ties = 0.0;
    if (isinf(p))
        for (fastloss_index k = 0; k < n; ++k) {
            const double v = fabs((double)a[k] - (double)b[k] + eps);
            ties += v == distance || isnan(v);
        }
    return p_distance_factor(distance, p, ties);
}

int REAL_NAME(fastloss_distance_triplet_margin)(
    const fastloss_pair_loss_options *options, const REAL *anchor, fastloss_index anchor_row_stride,
    const REAL *positive, fastloss_index positive_row_stride, const REAL *negative,
    fastloss_index negative_row_stride, const double *grad_output,
    fastloss_index grad_output_stride, double *loss_per_row, double *loss, REAL *grad_anchor,
    fastloss_index grad_anchor_row_stride, REAL *grad_positive,
    fastloss_index grad_positive_row_stride, REAL *grad_negative,
    fastloss_index grad_negative_row_stride)
{
    const fastloss_index n_rows = options->n_rows, dim = options->dim;
    const fastloss_index dim_ap = options->anchor_positive_dim;
    const fastloss_index dim_an = options->anchor_negative_dim;
    const fastloss_index dim_pn = options->positive_negative_dim;
    const double eps = options->eps, p = options->p, margin = options->margin;
    const double factor = options->reduction == FASTLOSS_REDUCTION_MEAN ? 1.0 / (double)n_rows : 1.0;
    double *row_loss = loss_per_row;
    if (!row_loss) {
        row_loss = malloc((size_t)n_rows * sizeof(double) + 1);
        if (!row_loss)
            return FASTLOSS_ERROR_NO_MEMORY;
    }
    const int threads = fastloss_effective_threads(options->num_threads, n_rows * dim);
    (void)threads;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
#endif
    for (fastloss_index i = 0; i < n_rows; ++i) {
        const REAL *a = anchor + i * anchor_row_stride;
        const REAL *pos = positive + i * positive_row_stride;
        const REAL *neg = negative + i * negative_row_stride;
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
        REAL *ga = grad_anchor + i * grad_anchor_row_stride;
        REAL *gp = grad_positive + i * grad_positive_row_stride;
        REAL *gn = grad_negative + i * grad_negative_row_stride;
        if (!active) {
            for (fastloss_index k = 0; k < dim; ++k)
                ga[k] = gp[k] = gn[k] = 0;
            continue;
        }
        const double upstream = grad_output[i * grad_output_stride] * factor;
        const double f_ap = REAL_NAME(p_distance_gradient_factor)(a, pos, eps, p, d_ap, dim_ap);
        const double f_an = weight_an != 0.0
            ? REAL_NAME(p_distance_gradient_factor)(a, neg, eps, p, d_an, dim_an) : 0.0;
        const double f_pn = weight_pn != 0.0
            ? REAL_NAME(p_distance_gradient_factor)(pos, neg, eps, p, d_pn, dim_pn) : 0.0;
        /* a pair of length 1 (below dim) has its gradient in column 0 alone */
        for (fastloss_index k = 0; k < dim; ++k) {
            const double u_ap = k < dim_ap
                ? p_distance_slope((double)a[k] - (double)pos[k] + eps, p, d_ap, f_ap) : 0.0;
            const double u_an = weight_an != 0.0 && k < dim_an
                ? weight_an * p_distance_slope((double)a[k] - (double)neg[k] + eps, p, d_an, f_an)
                : 0.0;
            const double u_pn = weight_pn != 0.0 && k < dim_pn
                ? weight_pn * p_distance_slope((double)pos[k] - (double)neg[k] + eps, p, d_pn, f_pn)
                : 0.0;
            ga[k] = (REAL)(upstream * (u_ap - u_an));
            gp[k] = (REAL)(upstream * (-u_ap - u_pn));
            gn[k] = (REAL)(upstream * (u_an + u_pn));
        }
    }
    if (loss)
        *loss = REAL_NAME(reduce_rows)(row_loss, n_rows, options->reduction);
    if (!loss_per_row)
        free(row_loss);
    return FASTLOSS_OK;
}
