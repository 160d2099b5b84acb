/*
 * contrastive_nce_body.h -- InfoNCE's softmax over float32 similarities, for one
 * instruction set (contrastive_impl.h includes it once per build, in its float32
 * block; REAL_NAME gives the name its suffix).  No include guard, on purpose.
 *
 * s is the N x M matrix of the unit rows' products q^_i . k^_j (a float32 BLAS
 * product, the caller's), M >= N.  With S = s / temperature, the loss of query i is
 * the cross-entropy of row i of S with target i, and with `symmetric` (M == N) also
 * that of column i of S.  The kernel writes the losses per row (and per column) and,
 * in place of s, the gradient with respect to s:
 *   G_ij = (a_i (P_ij - [i = j]) + b_j (Q_ij - [i = j])) / temperature,
 * P the softmax of the rows, Q of the columns, a = b the upstream gradient of each
 * query (scale[i * scale_stride]).  Two sweeps over s:
 *   1. per row, its max and its sum of exps; per column, a max and a sum kept per
 *      group of rows (online: a block of rows raises the group's maxima and rescales
 *      its sums); then the groups merged in a fixed order;
 *   2. G from the exps again, written over s.
 * The diagonal's p_t - 1 is minus the sum of the other terms (kept apart in both
 * sweeps), so it keeps its digits when the query has converged.  Exps are float32
 * (fastmath.h), sums float64.  Blocks and groups depend on N alone, so the results
 * are the same for any thread count.
 */

/* No contraction of s * (1 / temperature) - shift into a fused multiply-add: the max
 * is taken over the rounded products, and a contracted twin (the exact product minus
 * that max) leaves the max's own entry, and its ties, a rounding away from 0 (exp of it
 * about 1 +- 2e-6 at temperature 0.02, where two equal keys must share exactly half). */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#elif defined(__clang__)
#pragma clang fp contract(off)
#endif

#define NCE_BLOCK_ROWS FASTLOSS_CONTRASTIVE_TILE
#define NCE_MAX_GROUPS 64

/* The loss of one softmax from its shift (the max), the sum of its other terms'
 * exps (off) and its target's value: log(sum) + max - target, with log1p where the
 * target is the max (a converged row, whose loss is tiny). */
static inline double REAL_NAME(nce_loss)(double shift, double off, double target)
{
    if (target == shift)
        return log1p(off);
    return log(off + exp(target - shift)) + (shift - target);
}

/* Row i's largest value of s / temperature (and, with cand, each column's candidate max
 * raised to it). */
static inline float REAL_NAME(nce_row_max)(const float *row, fastloss_index m, float inv_t,
                                           float *cand)
{
    float top = -INFINITY;
    if (cand) {
#pragma omp simd reduction(max : top)
        for (fastloss_index j = 0; j < m; ++j) {
            const float x = row[j] * inv_t;
            top = x > top ? x : top;
            cand[j] = x > cand[j] ? x : cand[j];
        }
    } else {
#pragma omp simd reduction(max : top)
        for (fastloss_index j = 0; j < m; ++j) {
            const float x = row[j] * inv_t;
            top = x > top ? x : top;
        }
    }
    return top;
}

/* Row i's sum of exp(s_ij / temperature - top) over j != i (in float64), and with gmax
 * the columns' sums gsum_j += exp(s_ij / temperature - gmax_j), j != i.  The exps of a
 * chunk go through a small buffer first: loops of one exp each, which the compiler
 * vectorises (the sums' lanes, in a loop of their own, do not stop it). */
#define NCE_CHUNK 256
static inline double REAL_NAME(nce_row_sums)(const float *row, fastloss_index m,
                                             fastloss_index i, float inv_t, float top,
                                             const float *gmax, double *gsum)
{
    float e[NCE_CHUNK];
    double lane[FASTLOSS_LANES] = {0.0};
    for (int part = 0; part < 2; ++part) {
        const fastloss_index lo = part ? i + 1 : 0, hi = part ? m : i;
        for (fastloss_index j0 = lo; j0 < hi; j0 += NCE_CHUNK) {
            const fastloss_index len = hi - j0 < NCE_CHUNK ? hi - j0 : NCE_CHUNK;
            const float *chunk = row + j0;
            if (gmax) {
                const float *cmax = gmax + j0;
                double *csum = gsum + j0;
                for (fastloss_index c = 0; c < len; ++c)
                    e[c] = fastloss_expf_nonpositive(chunk[c] * inv_t - cmax[c]);
                for (fastloss_index c = 0; c < len; ++c)
                    csum[c] += (double)e[c];
            }
            for (fastloss_index c = 0; c < len; ++c)
                e[c] = fastloss_expf_nonpositive(chunk[c] * inv_t - top);
            fastloss_index c = 0;
            for (; c + FASTLOSS_LANES <= len; c += FASTLOSS_LANES)
                for (int k = 0; k < FASTLOSS_LANES; ++k)
                    lane[k] += (double)e[c + k];
            for (; c < len; ++c)
                lane[c % FASTLOSS_LANES] += (double)e[c];
        }
    }
    return fastloss_lanes_total(lane);
}
#undef NCE_CHUNK

int REAL_NAME(fastloss_contrastive_nce) FASTLOSS_CONTRASTIVE_NCE_SIGNATURE
{
    const fastloss_index n = options->n_rows, m = options->n_cols;
    const int symmetric = options->symmetric;
    const float inv_t = (float)(1.0 / options->temperature);
    const double grad_scale = 1.0 / options->temperature;
    const fastloss_index n_blocks = (n + NCE_BLOCK_ROWS - 1) / NCE_BLOCK_ROWS;
    const fastloss_index n_groups = symmetric ? (n_blocks < NCE_MAX_GROUPS ? n_blocks
                                                                            : NCE_MAX_GROUPS)
                                              : 0;
    const int threads = fastloss_effective_threads(options->num_threads, n * m);
    /* per row: max, sum of the other exps; per group and column: max, sum; per thread:
     * the candidate maxima of a block; per column: merged max and coefficient */
    float *row_max = malloc((size_t)n * sizeof(float) + 1);
    double *row_off = malloc((size_t)n * sizeof(double) + 1);
    float *group_max = NULL, *candidate = NULL, *col_max = NULL, *col_coef = NULL;
    double *group_sum = NULL, *col_off = NULL;
    int status = FASTLOSS_OK;
    if (symmetric) {
        group_max = malloc((size_t)(n_groups * m) * sizeof(float) + 1);
        group_sum = malloc((size_t)(n_groups * m) * sizeof(double) + 1);
        candidate = malloc((size_t)threads * (size_t)m * sizeof(float) + 1);
        col_max = malloc((size_t)m * sizeof(float) + 1);
        col_coef = malloc((size_t)m * sizeof(float) + 1);
        col_off = malloc((size_t)m * sizeof(double) + 1);
    }
    if (!row_max || !row_off || (symmetric && (!group_max || !group_sum || !candidate ||
                                               !col_max || !col_coef || !col_off))) {
        status = FASTLOSS_ERROR_NO_MEMORY;
        goto done;
    }

    /* Sweep 1: the rows' statistics, and the columns' per group. */
    if (!symmetric) {
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
#endif
        for (fastloss_index i = 0; i < n; ++i) {
            const float *row = s + i * s_row_stride;
            const float top = REAL_NAME(nce_row_max)(row, m, inv_t, NULL);
            row_max[i] = top;
            row_off[i] = REAL_NAME(nce_row_sums)(row, m, i, inv_t, top, NULL, NULL);
            row_loss[i] = REAL_NAME(nce_loss)(top, row_off[i], row[i] * inv_t);
        }
    } else {
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
#endif
        for (fastloss_index g = 0; g < n_groups; ++g) {
#ifdef _OPENMP
            float *cand = candidate + (size_t)omp_get_thread_num() * (size_t)m;
#else
            float *cand = candidate;
#endif
            float *gmax = group_max + g * m;
            double *gsum = group_sum + g * m;
            for (fastloss_index j = 0; j < m; ++j) {
                gmax[j] = -INFINITY;
                gsum[j] = 0.0;
            }
            const fastloss_index b0 = g * n_blocks / n_groups, b1 = (g + 1) * n_blocks / n_groups;
            for (fastloss_index b = b0; b < b1; ++b) {
                const fastloss_index i0 = b * NCE_BLOCK_ROWS;
                const fastloss_index i1 = i0 + NCE_BLOCK_ROWS < n ? i0 + NCE_BLOCK_ROWS : n;
                memcpy(cand, gmax, (size_t)m * sizeof(float));
                for (fastloss_index i = i0; i < i1; ++i)
                    row_max[i] = REAL_NAME(nce_row_max)(s + i * s_row_stride, m, inv_t, cand);
                /* the group's sums rescaled to the raised maxima */
                for (fastloss_index j = 0; j < m; ++j) {
                    if (cand[j] > gmax[j]) {
                        gsum[j] *= exp((double)gmax[j] - (double)cand[j]);
                        gmax[j] = cand[j];
                    }
                }
                for (fastloss_index i = i0; i < i1; ++i) {
                    const float *row = s + i * s_row_stride;
                    row_off[i] = REAL_NAME(nce_row_sums)(row, m, i, inv_t, row_max[i], gmax, gsum);
                    row_loss[i] = REAL_NAME(nce_loss)(row_max[i], row_off[i], row[i] * inv_t);
                }
            }
        }
        /* the groups merged, column by column, in group order */
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
#endif
        for (fastloss_index j = 0; j < m; ++j) {
            float top = -INFINITY;
            for (fastloss_index g = 0; g < n_groups; ++g)
                top = group_max[g * m + j] > top ? group_max[g * m + j] : top;
            double off = 0.0;
            for (fastloss_index g = 0; g < n_groups; ++g) {
                const double part = group_sum[g * m + j];
                const float gtop = group_max[g * m + j];
                off += gtop == top ? part : part * exp((double)gtop - (double)top);
            }
            const float target = s[j * s_row_stride + j] * inv_t;
            col_max[j] = top;
            col_off[j] = off;
            col_loss[j] = REAL_NAME(nce_loss)(top, off, target);
            const double total = off + exp((double)target - (double)top);
            col_coef[j] = (float)(scale[j * scale_stride] * grad_scale / total);
        }
    }
    if (!want_grad)
        goto done;

    /* Sweep 2: the gradient over s. */
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
#endif
    for (fastloss_index i = 0; i < n; ++i) {
        float *row = s + i * s_row_stride;
        const float top = row_max[i];
        const float target = row[i] * inv_t;
        const double total = row_off[i] + exp((double)target - (double)top);
        const double a = scale[i * scale_stride] * grad_scale;
        const float coef = (float)(a / total);
        double diagonal = -a * (row_off[i] / total);
        if (symmetric) {
            const double col_total = col_off[i] + exp((double)target - (double)col_max[i]);
            diagonal -= scale[i * scale_stride] * grad_scale * (col_off[i] / col_total);
            for (fastloss_index j = 0; j < m; ++j) {
                const float x = row[j] * inv_t;
                row[j] = coef * fastloss_expf_nonpositive(x - top) +
                         col_coef[j] * fastloss_expf_nonpositive(x - col_max[j]);
            }
        } else {
            for (fastloss_index j = 0; j < m; ++j)
                row[j] = coef * fastloss_expf_nonpositive(row[j] * inv_t - top);
        }
        row[i] = (float)diagonal;
    }

done:
    free(row_max);
    free(row_off);
    free(group_max);
    free(group_sum);
    free(candidate);
    free(col_max);
    free(col_coef);
    free(col_off);
    return status;
}

#undef NCE_BLOCK_ROWS
#undef NCE_MAX_GROUPS
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#elif defined(__clang__)
#pragma clang fp contract(on)
#endif
