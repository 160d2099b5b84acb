/*
 * half_convert_body.h -- one ISA's array conversions (half_convert.c includes it once
 * per FASTLOSS_ISA).  The loops are those a kernel body writes: an element at a time
 * through the storage tag's LOAD and STORE, which the compiler vectorises.  No include
 * guard, on purpose.
 */
#define HC_PASTE2_(a, b) a##_##b
#define HC_PASTE_(a, b) HC_PASTE2_(a, b)
#define HC_NAME(name) HC_PASTE_(name, FASTLOSS_ISA)

static int HC_NAME(hc_load)(int dtype, const uint16_t *in, float *out, fastloss_index n)
{
    if (dtype == FASTLOSS_BFLOAT16) {
        for (fastloss_index i = 0; i < n; ++i)
            out[i] = FASTLOSS_LOAD(bfloat16, in, i);
    } else {
        for (fastloss_index i = 0; i < n; ++i)
            out[i] = FASTLOSS_LOAD(float16, in, i);
    }
    return 0;
}

static int HC_NAME(hc_store)(int dtype, const float *in, uint16_t *out, fastloss_index n)
{
    if (dtype == FASTLOSS_BFLOAT16) {
        for (fastloss_index i = 0; i < n; ++i)
            FASTLOSS_STORE(bfloat16, out, i, in[i]);
    } else {
        for (fastloss_index i = 0; i < n; ++i)
            FASTLOSS_STORE(float16, out, i, in[i]);
    }
    return 0;
}

static int HC_NAME(hc_store_wide)(int dtype, const double *in, uint16_t *out, fastloss_index n)
{
    if (dtype == FASTLOSS_BFLOAT16) {
        for (fastloss_index i = 0; i < n; ++i)
            FASTLOSS_STORE_WIDE(bfloat16, out, i, in[i]);
    } else {
        for (fastloss_index i = 0; i < n; ++i)
            FASTLOSS_STORE_WIDE(float16, out, i, in[i]);
    }
    return 0;
}

static int HC_NAME(hc_exp)(const float *in, float *out, fastloss_index n, int nonpositive)
{
    if (nonpositive) {
        for (fastloss_index i = 0; i < n; ++i)
            out[i] = fastloss_expf5_nonpositive(in[i]);
    } else {
        for (fastloss_index i = 0; i < n; ++i)
            out[i] = fastloss_expf5(in[i]);
    }
    return 0;
}

static int HC_NAME(hc_fast_exp)(const float *in, float *out, fastloss_index n, int nonpositive)
{
    if (nonpositive) {
        for (fastloss_index i = 0; i < n; ++i)
            out[i] = fastloss_expf_nonpositive(in[i]);
    } else {
        for (fastloss_index i = 0; i < n; ++i)
            out[i] = fastloss_expf(in[i]);
    }
    return 0;
}

static int HC_NAME(hc_fast_exp_double)(const double *in, double *out, fastloss_index n,
                                      int nonpositive)
{
    if (nonpositive) {
        for (fastloss_index i = 0; i < n; ++i)
            out[i] = fastloss_exp_nonpositive(in[i]);
    } else {
        for (fastloss_index i = 0; i < n; ++i)
            out[i] = fastloss_exp(in[i]);
    }
    return 0;
}

/* acc[c] += x[r][c] for r = 0, 1, ... rows - 1 in that order, c in [first, last): each
 * value exact in double, one double addition per value (the column sums of
 * fastloss_column_sums). */
#define HC_COLUMN_SUMS_(tag)                                                              \
    for (fastloss_index r = 0; r < rows; ++r) {                                           \
        const FASTLOSS_STORAGE_T(tag) *restrict row =                                     \
            (const FASTLOSS_STORAGE_T(tag) *)x + r * row_stride;                          \
        for (fastloss_index c = first; c < last; ++c)                                     \
            acc[c] += (double)FASTLOSS_LOAD(tag, row, c);                                 \
    }

static int HC_NAME(hc_column_sums)(int dtype, const void *x, fastloss_index rows,
                                   fastloss_index first, fastloss_index last,
                                   fastloss_index row_stride, double *restrict acc)
{
    switch (dtype) {
    case FASTLOSS_FLOAT32:
        HC_COLUMN_SUMS_(float32)
        break;
    case FASTLOSS_FLOAT64:
        HC_COLUMN_SUMS_(float64)
        break;
    case FASTLOSS_BFLOAT16:
        HC_COLUMN_SUMS_(bfloat16)
        break;
    default:
        HC_COLUMN_SUMS_(float16)
        break;
    }
    return 0;
}

#undef HC_COLUMN_SUMS_

#undef HC_NAME
#undef HC_PASTE_
#undef HC_PASTE2_
