/*
 * sequence_body.h -- sequence.h's kernel for one storage type, written once.  No
 * include guard, on purpose: sequence.c includes it per storage type between
 * storage_begin.h and storage_end.h (STORE_T, LOAD, STORE_WIDE), with SEQ(name)
 * naming this instantiation's functions.
 */

/* Row b's masked sum (into *sum) and mask sum (into *count), in double, in a fixed
 * order: FASTLOSS_LANES lanes, then the tail. */
static void SEQ(row_sums)(const STORE_T *FASTLOSS_RESTRICT x, const STORE_T *FASTLOSS_RESTRICT m,
                          fastloss_index n_tokens, int want_sum, double *sum, double *count)
{
    double lane[FASTLOSS_LANES] = {0.0}, count_lane[FASTLOSS_LANES] = {0.0};
    double tail = 0.0, count_tail = 0.0;
    fastloss_index t = 0;
    for (; t + FASTLOSS_LANES <= n_tokens; t += FASTLOSS_LANES)
        for (int j = 0; j < FASTLOSS_LANES; ++j) {
            const double weight = (double)LOAD(m, t + j);
            count_lane[j] += weight;
            if (want_sum) /* the masked-out token is skipped: its x may be NaN or -inf */
                lane[j] += weight != 0 ? weight * (double)LOAD(x, t + j) : 0.0;
        }
    for (; t < n_tokens; ++t) {
        const double weight = (double)LOAD(m, t);
        count_tail += weight;
        if (want_sum)
            tail += weight != 0 ? weight * (double)LOAD(x, t) : 0.0;
    }
    *sum = fastloss_lanes_total(lane) + tail;
    *count = fastloss_lanes_total(count_lane) + count_tail;
}

static int SEQ(run)(const fastloss_sequence_options *options, const void *token_log_probs,
                    const void *mask, double *sums, const double *grad_output,
                    fastloss_index grad_output_stride, void *grad_out)
{
    const STORE_T *x_all = (const STORE_T *)token_log_probs;
    const STORE_T *m_all = (const STORE_T *)mask;
    STORE_T *grad_all = (STORE_T *)grad_out;
    const fastloss_index n_rows = options->n_rows, n_tokens = options->n_tokens;
    const fastloss_index stride = options->row_stride;
    const int average = options->average;
    int threads = fastloss_effective_threads(options->num_threads, n_rows * n_tokens);
    if (threads > n_rows)
        threads = n_rows > 1 ? (int)n_rows : 1;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
#endif
    for (fastloss_index b = 0; b < n_rows; ++b) {
        const STORE_T *x = x_all + b * stride;
        const STORE_T *m = m_all + b * stride;
        double sum = 0.0, count = 0.0;
        /* the mask's sum only where an average needs it; the sum only for the value */
        if (sums || average)
            SEQ(row_sums)(x, m, n_tokens, sums != NULL, &sum, &count);
        if (sums)
            sums[b] = average ? sum / count : sum; /* 0 / 0: NaN, as TRL's */
        if (grad_all) {
            const double upstream = grad_output[b * grad_output_stride];
            const double scale = average ? upstream / count : upstream;
            STORE_T *grad = grad_all + b * stride;
            for (fastloss_index t = 0; t < n_tokens; ++t)
                STORE_WIDE(grad, t, (double)LOAD(m, t) * scale);
        }
    }
    return FASTLOSS_OK;
}
