/*
 * contrastive_row_helpers.h -- double sums over the rows of one storage type,
 * written once.  No include guard, on purpose: included per storage type
 * (between storage_begin.h and storage_end.h: STORE_T and LOAD, see storage.h),
 * by the pass (once per instruction set) and by the row kernels.  It expects
 * REAL_NAME(name) for the instantiation's names.
 */

/* ---------------------------------------------------------------------------
 * Row helpers: double sums over FASTLOSS_LANES accumulators, combined
 * in a fixed order (the same bits on every run, and loops that vectorise).
 * ------------------------------------------------------------------------- */

#if STORAGE_IS_COMPUTE
/* sum_k (a_k a_scale - b_k b_scale + shift)**2 */
static inline double REAL_NAME(squared_difference)(const STORE_T *a, double a_scale,
                                                   const STORE_T *b, double b_scale,
                                                   double shift, fastloss_index n)
{
    double lane[FASTLOSS_LANES] = {0.0};
    fastloss_index k = 0;
    for (; k + FASTLOSS_LANES <= n; k += FASTLOSS_LANES)
        for (int l = 0; l < FASTLOSS_LANES; ++l) {
            const double v =
                (double)LOAD(a, k + l) * a_scale - (double)LOAD(b, k + l) * b_scale + shift;
            lane[l] += v * v;
        }
    for (int l = 0; k < n; ++k, ++l) {
        const double v = (double)LOAD(a, k) * a_scale - (double)LOAD(b, k) * b_scale + shift;
        lane[l] += v * v;
    }
    return fastloss_lanes_total(lane);
}

/* sum_k a_k b_k */
static inline double REAL_NAME(dot)(const STORE_T *a, const STORE_T *b, fastloss_index n)
{
    double lane[FASTLOSS_LANES] = {0.0};
    fastloss_index k = 0;
    for (; k + FASTLOSS_LANES <= n; k += FASTLOSS_LANES)
        for (int l = 0; l < FASTLOSS_LANES; ++l)
            lane[l] += (double)LOAD(a, k + l) * (double)LOAD(b, k + l);
    for (int l = 0; k < n; ++k, ++l)
        lane[l] += (double)LOAD(a, k) * (double)LOAD(b, k);
    return fastloss_lanes_total(lane);
}
#else
/* Half storage: a LOAD widened straight to double (16-bit lanes to 64-bit ones through
 * the conversion's integer arithmetic) is not vectorised, so the rows are converted to
 * float a chunk at a time (exactly, by the loop half_convert.c vectorises) and summed
 * from the chunks as float32 rows are (FASTLOSS_CONTRASTIVE_ROW_CHUNK elements,
 * contrastive_internal.h).  Element k still goes to lane k % FASTLOSS_LANES in the order
 * of k (the chunks are whole groups of lanes): the same sums, bit for bit. */
static inline void REAL_NAME(load_chunk)(const STORE_T *row, fastloss_index n, float *out)
{
    for (fastloss_index k = 0; k < n; ++k)
        out[k] = LOAD(row, k);
}

static inline double REAL_NAME(squared_difference)(const STORE_T *a, double a_scale,
                                                   const STORE_T *b, double b_scale,
                                                   double shift, fastloss_index n)
{
    double lane[FASTLOSS_LANES] = {0.0};
    float a_chunk[FASTLOSS_CONTRASTIVE_ROW_CHUNK], b_chunk[FASTLOSS_CONTRASTIVE_ROW_CHUNK];
    for (fastloss_index start = 0; start < n; start += FASTLOSS_CONTRASTIVE_ROW_CHUNK) {
        const fastloss_index m = n - start < FASTLOSS_CONTRASTIVE_ROW_CHUNK
                                     ? n - start : FASTLOSS_CONTRASTIVE_ROW_CHUNK;
        REAL_NAME(load_chunk)(a + start, m, a_chunk);
        REAL_NAME(load_chunk)(b + start, m, b_chunk);
        fastloss_index k = 0;
        for (; k + FASTLOSS_LANES <= m; k += FASTLOSS_LANES)
            for (int l = 0; l < FASTLOSS_LANES; ++l) {
                const double v = (double)a_chunk[k + l] * a_scale -
                                 (double)b_chunk[k + l] * b_scale + shift;
                lane[l] += v * v;
            }
        for (int l = 0; k < m; ++k, ++l) {
            const double v = (double)a_chunk[k] * a_scale - (double)b_chunk[k] * b_scale + shift;
            lane[l] += v * v;
        }
    }
    return fastloss_lanes_total(lane);
}

static inline double REAL_NAME(dot)(const STORE_T *a, const STORE_T *b, fastloss_index n)
{
    double lane[FASTLOSS_LANES] = {0.0};
    float a_chunk[FASTLOSS_CONTRASTIVE_ROW_CHUNK], b_chunk[FASTLOSS_CONTRASTIVE_ROW_CHUNK];
    for (fastloss_index start = 0; start < n; start += FASTLOSS_CONTRASTIVE_ROW_CHUNK) {
        const fastloss_index m = n - start < FASTLOSS_CONTRASTIVE_ROW_CHUNK
                                     ? n - start : FASTLOSS_CONTRASTIVE_ROW_CHUNK;
        REAL_NAME(load_chunk)(a + start, m, a_chunk);
        REAL_NAME(load_chunk)(b + start, m, b_chunk);
        fastloss_index k = 0;
        for (; k + FASTLOSS_LANES <= m; k += FASTLOSS_LANES)
            for (int l = 0; l < FASTLOSS_LANES; ++l)
                lane[l] += (double)a_chunk[k + l] * (double)b_chunk[k + l];
        for (int l = 0; k < m; ++k, ++l)
            lane[l] += (double)a_chunk[k] * (double)b_chunk[k];
    }
    return fastloss_lanes_total(lane);
}
#endif

/*
 * Cosine distance of rows a, b with norms a_norm, b_norm, accurately:
 * |a^ - b^|**2 / 2 when both are unit vectors (no cancellation as they meet),
 * 1 - a^ . b^ when a norm is clamped to eps.
 */
static inline double REAL_NAME(cosine_distance)(const STORE_T *a, double a_norm, const STORE_T *b,
                                                double b_norm, double eps, fastloss_index n)
{
    if (a_norm >= eps && b_norm >= eps) {
        /* divisions, as the unit rows are made: no product to fuse into an FMA, so
         * equal rows give exactly 0 in every build */
        double lane[FASTLOSS_LANES] = {0.0};
#if STORAGE_IS_COMPUTE
        fastloss_index k = 0;
        for (; k + FASTLOSS_LANES <= n; k += FASTLOSS_LANES)
            for (int l = 0; l < FASTLOSS_LANES; ++l) {
                const double v = (double)LOAD(a, k + l) / a_norm - (double)LOAD(b, k + l) / b_norm;
                lane[l] += v * v;
            }
        for (int l = 0; k < n; ++k, ++l) {
            const double v = (double)LOAD(a, k) / a_norm - (double)LOAD(b, k) / b_norm;
            lane[l] += v * v;
        }
#else
        /* half storage: by chunks converted to float, as squared_difference */
        float a_chunk[FASTLOSS_CONTRASTIVE_ROW_CHUNK], b_chunk[FASTLOSS_CONTRASTIVE_ROW_CHUNK];
        for (fastloss_index start = 0; start < n; start += FASTLOSS_CONTRASTIVE_ROW_CHUNK) {
            const fastloss_index m = n - start < FASTLOSS_CONTRASTIVE_ROW_CHUNK
                                         ? n - start : FASTLOSS_CONTRASTIVE_ROW_CHUNK;
            REAL_NAME(load_chunk)(a + start, m, a_chunk);
            REAL_NAME(load_chunk)(b + start, m, b_chunk);
            fastloss_index k = 0;
            for (; k + FASTLOSS_LANES <= m; k += FASTLOSS_LANES)
                for (int l = 0; l < FASTLOSS_LANES; ++l) {
                    const double v =
                        (double)a_chunk[k + l] / a_norm - (double)b_chunk[k + l] / b_norm;
                    lane[l] += v * v;
                }
            for (int l = 0; k < m; ++k, ++l) {
                const double v = (double)a_chunk[k] / a_norm - (double)b_chunk[k] / b_norm;
                lane[l] += v * v;
            }
        }
#endif
        return 0.5 * fastloss_lanes_total(lane);
    }
    const double a_scale = 1.0 / (a_norm >= eps ? a_norm : eps);
    const double b_scale = 1.0 / (b_norm >= eps ? b_norm : eps);
    return 1.0 - REAL_NAME(dot)(a, b, n) * a_scale * b_scale;
}
