/*
 * sequence_body.h -- sequence.h's kernel for one storage type, written once.  No
 * include guard, on purpose: sequence.c includes it per storage type between
 * storage_begin.h and storage_end.h (STORE_T, LOAD, STORE_WIDE, AUX_T), with SEQ(name)
 * naming this instantiation's functions.  The mask, when not bytes, is AUX_T: STORE_T
 * for float32 and float64, float32 beside half-precision values (the Python layer
 * converts it; a mask in half precision would round its weights).  The gradient is
 * mask * scale computed in double and rounded once to GRAD_T (STORE_WIDE): STORE_T, or
 * float32 on a half type's _grad32 tag (grad_dtype="float32").
 */

/* Token t's mask weight: a byte (a bool mask: any byte but 0 is True, as NumPy reads a
 * bool that a view of other bytes holds, e.g. 2) or an AUX_T. */
#define SEQ_WEIGHT(t) (bytes ? (double)(mask_bytes[t] != 0) : (double)AUX_LOAD(mask_values, t))

/*
 * Row b's masked sum (into *sum) and mask sum (into *count), in double, in a fixed
 * order: FASTLOSS_LANES lanes, then the tail.  x is loaded unconditionally and the
 * masked-out token's term selected away (a select, so that the loop vectorises; the
 * product of a 0 weight with a NaN or -inf x is never added).  `bytes` and `want_sum`
 * are literal constants at each call, so each loop is specialised.
 */
FASTLOSS_INLINE void SEQ(row_sums)(const STORE_T *FASTLOSS_RESTRICT x,
                                   const AUX_T *FASTLOSS_RESTRICT mask_values,
                                   const uint8_t *FASTLOSS_RESTRICT mask_bytes, int bytes,
                                   fastloss_index n_tokens, int want_sum, double *sum,
                                   double *count)
{
    double lane[FASTLOSS_LANES] = {0.0}, count_lane[FASTLOSS_LANES] = {0.0};
    double tail = 0.0, count_tail = 0.0;
    fastloss_index t = 0;
    for (; t + FASTLOSS_LANES <= n_tokens; t += FASTLOSS_LANES)
        for (int j = 0; j < FASTLOSS_LANES; ++j) {
            const double weight = SEQ_WEIGHT(t + j);
            count_lane[j] += weight;
            if (want_sum) {
                const double term = weight * (double)LOAD(x, t + j);
                lane[j] += weight != 0 ? term : 0.0;
            }
        }
    for (; t < n_tokens; ++t) {
        const double weight = SEQ_WEIGHT(t);
        count_tail += weight;
        if (want_sum) {
            const double term = weight * (double)LOAD(x, t);
            tail += weight != 0 ? term : 0.0;
        }
    }
    *sum = fastloss_lanes_total(lane) + tail;
    *count = fastloss_lanes_total(count_lane) + count_tail;
}

/* grad[t] = weight_t * scale for the row's tokens. */
FASTLOSS_INLINE void SEQ(row_grad)(const AUX_T *FASTLOSS_RESTRICT mask_values,
                                   const uint8_t *FASTLOSS_RESTRICT mask_bytes, int bytes,
                                   fastloss_index n_tokens, double scale,
                                   GRAD_T *FASTLOSS_RESTRICT grad)
{
    for (fastloss_index t = 0; t < n_tokens; ++t)
        STORE_WIDE(grad, t, SEQ_WEIGHT(t) * scale);
}

#undef SEQ_WEIGHT

static int SEQ(run)(const fastloss_sequence_options *options, const void *token_log_probs,
                    const void *mask, double *sums, const double *grad_output,
                    fastloss_index grad_output_stride, void *grad_out)
{
    const STORE_T *x_all = (const STORE_T *)token_log_probs;
    const int bytes = options->mask_is_bytes;
    const AUX_T *values_all = bytes ? NULL : (const AUX_T *)mask;
    const uint8_t *bytes_all = bytes ? (const uint8_t *)mask : NULL;
    GRAD_T *grad_all = (GRAD_T *)grad_out;
    const fastloss_index n_rows = options->n_rows, n_tokens = options->n_tokens;
    const fastloss_index stride = options->row_stride;
    const int average = options->average;
    int threads = fastloss_effective_threads(options->num_threads, n_rows * n_tokens);
    if (threads > n_rows)
        threads = n_rows > 1 ? (int)n_rows : 1;
    /* the rows claimed a few at a time by whichever thread is free (common.h) */
    const fastloss_index claim = fastloss_claim_items(n_rows, threads);
    (void)claim;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(dynamic, claim)
#endif
    for (fastloss_index b = 0; b < n_rows; ++b) {
        const STORE_T *x = x_all + b * stride;
        const AUX_T *mask_values = bytes ? NULL : values_all + b * stride;
        const uint8_t *mask_bytes = bytes ? bytes_all + b * stride : NULL;
        double sum = 0.0, count = 0.0;
        /* the mask's sum only where an average needs it; the sum only for the value */
        if (sums && bytes)
            SEQ(row_sums)(x, mask_values, mask_bytes, 1, n_tokens, 1, &sum, &count);
        else if (sums)
            SEQ(row_sums)(x, mask_values, mask_bytes, 0, n_tokens, 1, &sum, &count);
        else if (average && bytes)
            SEQ(row_sums)(x, mask_values, mask_bytes, 1, n_tokens, 0, &sum, &count);
        else if (average)
            SEQ(row_sums)(x, mask_values, mask_bytes, 0, n_tokens, 0, &sum, &count);
        if (sums)
            sums[b] = average ? sum / count : sum; /* 0 / 0: NaN, as TRL's */
        if (grad_all) {
            const double upstream = grad_output[b * grad_output_stride];
            const double scale = average ? upstream / count : upstream;
            GRAD_T *grad = grad_all + b * stride;
            if (bytes)
                SEQ(row_grad)(mask_values, mask_bytes, 1, n_tokens, scale, grad);
            else
                SEQ(row_grad)(mask_values, mask_bytes, 0, n_tokens, scale, grad);
        }
    }
    return FASTLOSS_OK;
}
