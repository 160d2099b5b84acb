/*
 * fastmath.h -- exp() for float and double written so that gcc and clang can
 * vectorise the loops that call it (libm's exp is an opaque call, and glibc's
 * vector variants are only used under -ffast-math, which we never build with).
 *
 * Method (the classic one, e.g. Muller, "Elementary Functions", ch. 11):
 *   exp(x) = 2**n * exp(r),   n = round(x / ln 2),   r = x - n ln 2,  |r| <= ln2 / 2
 *   - n is rounded by adding 1.5 * 2**(p-1) (p = mantissa bits): the sum lands in
 *     a binade where the unit in the last place is 1, so the FPU rounds x/ln2 to
 *     the nearest integer and n sits in the low mantissa bits of the sum.  No
 *     float-to-int conversion, so NaN and huge inputs are not undefined behaviour.
 *   - r is computed with ln 2 split in a high part with trailing zero bits
 *     (n * LN2_HI is exact for the n that occur) and a low part (Cody & Waite).
 *   - exp(r) is the Taylor polynomial, degree 6 for float (truncation error
 *     0.347**7 / 7! < 1.3e-7 relative, about one ulp) and degree 13 for double
 *     (0.347**14 / 14! < 5e-18), evaluated by Horner's rule.
 *   - 2**n is built in the exponent field, which holds 2**-126 to 2**127: the
 *     results below 2**-126 (x below about -87.34 / -708.4) are kept as subnormal
 *     numbers (gradual underflow), not flushed.  The variant for x <= 0 (n <= 0)
 *     evaluates the polynomial with every coefficient times 2**-24 (2**-53 for
 *     double) and builds 2**(n + 24): scaling by a power of two commutes with
 *     rounding, so a normal result has the bits of poly * 2**n, and a subnormal one
 *     rounds once, in the last product.  The general exp covers n from -150 to 128,
 *     more than one exponent field holds, so it builds 2**(n + 40) times 2**-40 for
 *     x < 0 and 2**(n - 1) times 2 for x >= 0 (x just below the overflow
 *     threshold, n = max exponent + 1); its first product is exact.
 * Range: results down to the smallest subnormal (x above about -103.97 / -744.4)
 * are kept, each within its relative error plus half a unit of the smallest
 * subnormal; x below -104 / -745.2 gives +0; x above the overflow threshold gives
 * +inf; -inf gives 0 and NaN gives NaN.  Elsewhere the error is about 1 ulp.
 * (Flushing the subnormal results would break the float32 contract where the
 * whole gradient is that small: a row whose other classes sit 88 below its target,
 * [0, -88], has the gradient [-6.05e-39, 6.05e-39], which float32 holds to 2e-7;
 * tests/test_half_exp.py holds every SIMD path to it.)
 */
#ifndef FASTLOSS_FASTMATH_H
#define FASTLOSS_FASTMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "common.h"

/* exp(x) for x <= 0 or NaN (the shifted logits x - max): only the underflow
 * side needs a range check.  A positive x gives a meaningless finite value. */
FASTLOSS_INLINE float fastloss_expf_poly(float x, float *shifted_out)
{
    const float round_magic = 12582912.0f; /* 1.5 * 2**23 */
    const float inv_ln2 = 1.44269504088896341f;
    const float ln2_hi = 0.693359375f;     /* 8 significant bits: n * ln2_hi is exact */
    const float ln2_lo = -2.12194440e-4f;  /* ln 2 - ln2_hi */
    float shifted = x * inv_ln2 + round_magic;
    float n = shifted - round_magic;
    float r = (x - n * ln2_hi) - n * ln2_lo;
    float poly = 1.0f / 720.0f;
    poly = poly * r + 1.0f / 120.0f;
    poly = poly * r + 1.0f / 24.0f;
    poly = poly * r + 1.0f / 6.0f;
    poly = poly * r + 0.5f;
    poly = poly * r + 1.0f;
    poly = poly * r + 1.0f;
    *shifted_out = shifted;
    return poly;
}

/* 2**(n + bias - 127) from `shifted`, whose low bits hold n. */
FASTLOSS_INLINE float fastloss_expf_scale(float shifted, uint32_t bias)
{
    uint32_t bits;
    memcpy(&bits, &shifted, sizeof bits);
    uint32_t scale_bits = (bits + bias) << 23;
    float scale;
    memcpy(&scale, &scale_bits, sizeof scale);
    return scale;
}

/* exp(x) for x <= 0 (and NaN), with gradual underflow: the reduction of
 * fastloss_expf_poly, its polynomial with every coefficient times 2**-24, and 2**(n + 24)
 * (n + 24 >= -126 for every n >= -150 kept; x must be below about 72) */
FASTLOSS_INLINE float fastloss_expf_nonpositive(float x)
{
    const float round_magic = 12582912.0f; /* 1.5 * 2**23 */
    const float inv_ln2 = 1.44269504088896341f;
    const float ln2_hi = 0.693359375f;
    const float ln2_lo = -2.12194440e-4f;
    const float shifted = x * inv_ln2 + round_magic;
    const float n = shifted - round_magic;
    const float r = (x - n * ln2_hi) - n * ln2_lo;
    float poly = 0x1p-24f / 720.0f; /* fastloss_expf_poly's Taylor coefficients, times 2**-24 */
    poly = poly * r + 0x1p-24f / 120.0f;
    poly = poly * r + 0x1p-24f / 24.0f;
    poly = poly * r + 0x1p-24f / 6.0f;
    poly = poly * r + 0x1p-25f;
    poly = poly * r + 0x1p-24f;
    poly = poly * r + 0x1p-24f;
    const float result = poly * fastloss_expf_scale(shifted, 127u + 24u);
    return x < -104.0f ? 0.0f : result;
}

/* exp(x) for every float x, with gradual underflow (see the top of this file) */
FASTLOSS_INLINE float fastloss_expf(float x)
{
    float shifted;
    const float poly = fastloss_expf_poly(x, &shifted);
    const int negative = x < 0.0f;
    const uint32_t bias = negative ? 127u + 40u : 126u;
    const float unscale = negative ? 0x1p-40f : 2.0f;
    float result = (poly * fastloss_expf_scale(shifted, bias)) * unscale;
    result = x < -104.0f ? 0.0f : result;
    return x > 88.72283f ? HUGE_VALF : result;
}

/*
 * exp(x) in float with two vector operations fewer than fastloss_expf: the
 * half-precision cross-entropy rows (bfloat16, float16) read half the bytes of
 * float32 ones for the same number of exps, so the exp is their bound
 * (BENCHMARKS.md).  The reduction is fastloss_expf_poly's (Cody & Waite, n * ln2_hi
 * exact); then
 *   - exp(r) = 1 + r + r**2 q(r) with q of degree 3 (5 multiply-adds by Horner, one
 *     fewer than the degree-6 Taylor polynomial), q fitted by iteratively reweighted
 *     least squares (Lawson) toward minimax relative error of the whole on
 *     |r| <= ln2/2 and rounded to float: its own error is 1.05e-7 relative;
 *   - the exponent bias is in the rounding constant (1.5 * 2**23 + 127), so that 2**n
 *     is the sum's bits shifted into the exponent field, with no integer add.
 * Measured in float arithmetic on every 61st float of [-87.3, 0] (18 million): at
 * most 1.75e-7 relative with one rounding per multiply-add (FMA), 1.93e-7 with two
 * (the baseline SSE2 path), against 2.27e-7 for fastloss_expf (FMA) from the Taylor
 * polynomial's truncation and the same roundings.  FASTLOSS_EXPF5_REL_ERROR is what
 * callers may assume; tests/test_half_exp.py holds every SIMD path to it.
 * Range: every result of at least 2**-126 (float's smallest normal number) is kept,
 * x below ln(2**-126) = -87.33654 gives +0 (fastloss_expf keeps subnormals too),
 * -inf gives 0 and NaN gives NaN; fastloss_expf5 gives +inf above 88.376 (results
 * above 2**127.5, 1.9e38: 2**n must have a normal exponent, n <= 127).
 */
#define FASTLOSS_EXPF5_REL_ERROR 2.5e-7
FASTLOSS_INLINE float fastloss_expf5_nonpositive(float x)
{
    const float round_magic = 12583039.0f; /* 1.5 * 2**23 + 127 */
    const float inv_ln2 = 1.44269504088896341f;
    const float ln2_hi = 0.693359375f;    /* 8 significant bits: n * ln2_hi is exact */
    const float ln2_lo = -2.12194440e-4f; /* ln 2 - ln2_hi */
    /* the low bits of `shifted` are n + 127, the biased exponent of 2**n: at least 1
     * wherever the result is kept (x >= -87.33654, n >= -126) */
    const float shifted = x * inv_ln2 + round_magic;
    const float n = shifted - round_magic;
    const float r = (x - n * ln2_hi) - n * ln2_lo;
    float poly = 0x1.10625p-7f;       /* 0.0083125010 */
    poly = poly * r + 0x1.572a64p-5f; /* 0.041890331 */
    poly = poly * r + 0x1.5557bp-3f;  /* 0.16667116 */
    poly = poly * r + 0x1.fffdfcp-2f; /* 0.49999231 */
    poly = poly * r + 1.0f;
    poly = poly * r + 1.0f;
    uint32_t bits;
    memcpy(&bits, &shifted, sizeof bits);
    const uint32_t scale_bits = bits << 23;
    float scale;
    memcpy(&scale, &scale_bits, sizeof scale);
    const float result = poly * scale;
    return x < -87.33654f ? 0.0f : result;
}

/* exp(x) for every float x, +inf above 88.376 (see above) */
FASTLOSS_INLINE float fastloss_expf5(float x)
{
    const float result = fastloss_expf5_nonpositive(x);
    return x > 88.376f ? HUGE_VALF : result;
}

FASTLOSS_INLINE double fastloss_exp_poly(double x, double *shifted_out)
{
    const double round_magic = 6755399441055744.0; /* 1.5 * 2**52 */
    const double inv_ln2 = 1.4426950408889634074;
    const double ln2_hi = 6.93147180369123816490e-01; /* 32 significant bits */
    const double ln2_lo = 1.90821492927058770002e-10; /* ln 2 - ln2_hi */
    double shifted = x * inv_ln2 + round_magic;
    double n = shifted - round_magic;
    double r = (x - n * ln2_hi) - n * ln2_lo;
    double poly = 1.0 / 6227020800.0; /* 1/13! */
    poly = poly * r + 1.0 / 479001600.0;
    poly = poly * r + 1.0 / 39916800.0;
    poly = poly * r + 1.0 / 3628800.0;
    poly = poly * r + 1.0 / 362880.0;
    poly = poly * r + 1.0 / 40320.0;
    poly = poly * r + 1.0 / 5040.0;
    poly = poly * r + 1.0 / 720.0;
    poly = poly * r + 1.0 / 120.0;
    poly = poly * r + 1.0 / 24.0;
    poly = poly * r + 1.0 / 6.0;
    poly = poly * r + 0.5;
    poly = poly * r + 1.0;
    poly = poly * r + 1.0;
    *shifted_out = shifted;
    return poly;
}

FASTLOSS_INLINE double fastloss_exp_scale(double shifted, uint64_t bias)
{
    uint64_t bits;
    memcpy(&bits, &shifted, sizeof bits);
    uint64_t scale_bits = (bits + bias) << 52;
    double scale;
    memcpy(&scale, &scale_bits, sizeof scale);
    return scale;
}

/* exp(x) for x <= 0 (and NaN), with gradual underflow as fastloss_expf_nonpositive:
 * fastloss_exp_poly's coefficients times 2**-53, and 2**(n + 53) */
FASTLOSS_INLINE double fastloss_exp_nonpositive(double x)
{
    const double round_magic = 6755399441055744.0; /* 1.5 * 2**52 */
    const double inv_ln2 = 1.4426950408889634074;
    const double ln2_hi = 6.93147180369123816490e-01;
    const double ln2_lo = 1.90821492927058770002e-10;
    const double shifted = x * inv_ln2 + round_magic;
    const double n = shifted - round_magic;
    const double r = (x - n * ln2_hi) - n * ln2_lo;
    const double down = 0x1p-53;
    double poly = down / 6227020800.0; /* 1/13!, and on as fastloss_exp_poly, times 2**-53 */
    poly = poly * r + down / 479001600.0;
    poly = poly * r + down / 39916800.0;
    poly = poly * r + down / 3628800.0;
    poly = poly * r + down / 362880.0;
    poly = poly * r + down / 40320.0;
    poly = poly * r + down / 5040.0;
    poly = poly * r + down / 720.0;
    poly = poly * r + down / 120.0;
    poly = poly * r + down / 24.0;
    poly = poly * r + down / 6.0;
    poly = poly * r + down / 2.0;
    poly = poly * r + down;
    poly = poly * r + down;
    const double result = poly * fastloss_exp_scale(shifted, 1023u + 53u);
    return x < -745.2 ? 0.0 : result;
}

FASTLOSS_INLINE double fastloss_exp(double x)
{
    double shifted;
    const double poly = fastloss_exp_poly(x, &shifted);
    const int negative = x < 0.0;
    const uint64_t bias = negative ? 1023u + 80u : 1022u;
    const double unscale = negative ? 0x1p-80 : 2.0;
    double result = (poly * fastloss_exp_scale(shifted, bias)) * unscale;
    result = x < -745.2 ? 0.0 : result;
    return x > 709.782712893384 ? HUGE_VAL : result;
}

/*
 * log(1 + u) for u in [0, 1] (and NaN), written to vectorise: BCE with logits
 * needs log1p(exp(-|x|)) once per element, and libm's log1p is an opaque call.
 *   log1p(u) = 2 atanh(t) = 2 t P(t**2),   t = u / (u + 2)
 * (log s = 2 atanh((s - 1) / (s + 1)) with s = 1 + u).  No 1 + u is ever
 * rounded, so tiny u keep their relative accuracy.  On [0, 1], t <= 1/3.
 *   float:  P(s) = 1 + s Q(s), Q of degree 3 fitted toward minimax relative
 *           error on s in [0, 1/9] with float32 coefficients
 *           (tests/tools/fit_log1pf.py): P within 5.5e-9, a tenth of an ulp.
 *   double: the series atanh(t) / t = 1 + t**2/3 + t**4/5 + ... cut after
 *           t**32/33 (next term < 9**-17 / 35 = 1.7e-18).
 * Error at most 2 ulp (float: checked for every normal float in (0, 1]),
 * from the division and the final products.  One formula on
 * the whole range, with no branch: a split at sqrt(2) - 1 (halving t) made gcc
 * if-convert by evaluating both branches, two divisions and two polynomials
 * per vector, which measured slower.
 */
FASTLOSS_INLINE float fastloss_log1pf_unit(float u)
{
    const float t = u / (u + 2.0f);
    const float s = t * t;
    float poly = 0x1.1ed7fep-3f;       /* 0.14006041 */
    poly = poly * s + 0x1.1ebcfep-3f;  /* 0.14000891 */
    poly = poly * s + 0x1.99d20ap-3f;  /* 0.20010765 */
    poly = poly * s + 0x1.555502p-2f;  /* 0.3333321 */
    poly = poly * s + 1.0f;
    return 2.0f * t * poly;
}

FASTLOSS_INLINE double fastloss_log1p_unit(double u)
{
    const double t = u / (u + 2.0);
    const double t2 = t * t;
    double poly = 1.0 / 33.0;
    for (int j = 15; j >= 0; --j) /* 1/31, 1/29, ..., 1/3, 1: unrolled by the compiler */
        poly = poly * t2 + 1.0 / (double)(2 * j + 1);
    return 2.0 * t * poly;
}

/*
 * log(x) for double x, written to vectorise: the small-vocabulary cross-entropy
 * takes one log per row for 16 rows at once, where libm's opaque call per row
 * cost as much as the row's arithmetic.  (A row on its own, in the per-row
 * path, keeps libm's log: one scalar call is cheaper there than this chain of
 * eleven dependent multiply-adds and a division.)
 *   x = 2**k z with z in [0.7071, 1.4142) (the exponent is read from the bits,
 *   offset so that z straddles 1), f = z - 1 (exact: Sterbenz), and
 *   log z = 2 atanh(t) = 2 t (1 + t**2/3 + t**4/5 + ...),  t = f / (2 + f),
 * |t| <= 0.1716, so the series cut after t**22/23 leaves under 0.0295**12 / 25
 * = 1.8e-20 relative; log 2 is split in a high part with trailing zeros (k
 * ln2_hi is exact for |k| < 2**11) and a low part.  Error about 1 ulp.
 * Subnormal x is scaled by 2**54 first; x = 0 gives -inf, x < 0 and NaN give
 * NaN, +inf gives +inf (with no branch: selects, so that loops vectorise).
 */
FASTLOSS_INLINE double fastloss_log(double x)
{
    const double ln2_hi = 6.93147180369123816490e-01; /* 32 significant bits */
    const double ln2_lo = 1.90821492927058770002e-10;
    /* x is classified by its bits: integer compares, which vectorise (gcc does not
     * if-convert floating-point compares that may raise an exception) */
    uint64_t raw;
    memcpy(&raw, &x, sizeof raw);
    const int64_t signed_raw = (int64_t)raw;
    const int positive = signed_raw > 0;
    const int subnormal = positive & (signed_raw < (int64_t)0x0010000000000000LL);
    const int ordinary = positive & (signed_raw < (int64_t)0x7ff0000000000000LL);
    /* both candidates computed, the bits selected: no conditional arithmetic */
    const double scaled = x * 0x1p54;
    uint64_t scaled_bits;
    memcpy(&scaled_bits, &scaled, sizeof scaled_bits);
    const uint64_t bits = subnormal ? scaled_bits : raw;
    /* k and z with z in [sqrt(1/2), sqrt(2)): subtract the bits of sqrt(1/2),
     * take the exponent of the difference, and put z's exponent back to 0 */
    const uint64_t offset = 0x3fe6a09e667f3bcdULL; /* sqrt(1/2) */
    const int64_t k = (int64_t)(bits - offset) >> 52; /* arithmetic shift */
    const uint64_t z_bits = bits - ((uint64_t)k << 52);
    double z;
    memcpy(&z, &z_bits, sizeof z);
    const double f = z - 1.0;
    const double t = f / (2.0 + f);
    const double t2 = t * t;
    double poly = 1.0 / 23.0; /* Horner's rule, written out so that loops calling it vectorise */
    poly = poly * t2 + 1.0 / 21.0;
    poly = poly * t2 + 1.0 / 19.0;
    poly = poly * t2 + 1.0 / 17.0;
    poly = poly * t2 + 1.0 / 15.0;
    poly = poly * t2 + 1.0 / 13.0;
    poly = poly * t2 + 1.0 / 11.0;
    poly = poly * t2 + 1.0 / 9.0;
    poly = poly * t2 + 1.0 / 7.0;
    poly = poly * t2 + 1.0 / 5.0;
    poly = poly * t2 + 1.0 / 3.0;
    poly = poly * t2 + 1.0;
    const double exponent = (double)k - (subnormal ? 54.0 : 0.0);
    const double result = exponent * ln2_hi + (2.0 * t * poly + exponent * ln2_lo);
    /* the special values: +-0 -> -inf, +inf -> +inf, negative or NaN -> NaN */
    const int zero = (raw << 1) == 0;
    const int plus_inf = raw == 0x7ff0000000000000ULL;
    const double special = zero ? -HUGE_VAL : (plus_inf ? HUGE_VAL : NAN);
    return ordinary ? result : special;
}

/*
 * log(x) for float x, for positive normal finite x only (the caller sends
 * the rest -- 0, subnormals, negatives, infinities, NaN -- to fastloss_log in
 * double; the result for them is meaningless but harmless).  The method of
 * fastloss_log in float arithmetic:
 *   x = 2**k z with z in [0.7071, 1.4142), f = z - 1 (exact: Sterbenz),
 *   log z = 2 atanh(t) = 2 t (1 + t**2/3 + t**4/5 + t**6/7 + t**8/9),
 *   t = f / (2 + f), |t| <= 0.1716, t**2 <= 0.02944,
 * so the series cut after t**8/9 leaves under 0.02944**5 / 11 = 2.0e-9
 * relative (0.03 ulp).  k ln2_hi is exact (ln2_hi has 9 significant bits,
 * |k| <= 128).  Summed as fdlibm's log1p, f - (f**2/2 - t (f**2/2 + R)), so
 * that t's two roundings touch only a correction of under a quarter of the
 * result; for k != 0 the last sum rounds once more, and |log x| >= 0.346
 * there dominates log z.  Measured against double
 * log over every positive normal float, with and without FMA contraction: at
 * most 0.92 ulp of the result and 8.45e-8 relative (worst near x = 0.3535);
 * the error bounds of the callers take FASTLOSS_LOGF_REL_ERROR, 1e-7, and
 * tests/test_pointwise_kernels.py checks a sweep of it through gaussian_nll.
 */
#define FASTLOSS_LOGF_REL_ERROR 1e-7
FASTLOSS_INLINE float fastloss_logf_normal(float x)
{
    const float ln2_hi = 0.693359375f;    /* 9 significant bits */
    const float ln2_lo = -2.12194440e-4f; /* ln 2 - ln2_hi */
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    const uint32_t offset = 0x3f3504f3u; /* sqrt(1/2) */
    const int32_t k = (int32_t)(bits - offset) >> 23; /* arithmetic shift */
    const uint32_t z_bits = bits - ((uint32_t)k << 23);
    float z;
    memcpy(&z, &z_bits, sizeof z);
    const float f = z - 1.0f;
    const float t = f / (2.0f + f);
    const float t2 = t * t;
    /* 2 atanh(t) - 2 t = t (2 t**2/3 + 2 t**4/5 + ...) = t R, and 2 t = f - t f, so
     * log z = f - (f**2/2 - t (f**2/2 + R)) (fdlibm's form): the exact f leads and the
     * roundings of t touch only the correction, under a quarter of the result */
    float poly = 2.0f / 9.0f;
    poly = poly * t2 + 2.0f / 7.0f;
    poly = poly * t2 + 2.0f / 5.0f;
    poly = poly * t2 + 2.0f / 3.0f;
    const float r = poly * t2;
    const float half_f2 = 0.5f * f * f;
    const float log_z = f - (half_f2 - t * (half_f2 + r));
    const float exponent = (float)k;
    return exponent * ln2_hi + (log_z + exponent * ln2_lo);
}

/*
 * log(x) as an unevaluated sum hi + lo, for positive normal finite float x, for
 * callers where fused multiply-adds are native (fmaf is a libm call elsewhere;
 * defined whatever the target, so that the include order never matters): the
 * reduction of fastloss_logf_normal, then the leading terms of
 *   log x = k ln2_hi + f - f**2/2 + t (f**2/2 + R) + k ln2_lo
 * added without rounding error (k ln2_hi + f and then - f**2/2 by Fast2Sum,
 * |k ln2_hi + f| >= f**2/2 always; f**2 split exactly by an FMA), so that only
 * the small terms round: t (f**2/2 + R) is under 0.05 |log x| and carries t's few
 * roundings.  Measured against double log over every positive normal float (gcc
 * -O2 -mfma): hi + lo within 1.43e-8 |log x| (0.24 ulp, worst near x = 1.41, where
 * that term is largest); callers take FASTLOSS_LOGF_HILO_REL_ERROR, 2e-8, and
 * |lo| <= 0.1 |hi + lo|.  About ten operations more than fastloss_logf_normal.
 */
#define FASTLOSS_LOGF_HILO_REL_ERROR 2e-8
FASTLOSS_INLINE float fastloss_logf_normal_hilo(float x, float *lo)
{
    const float ln2_hi = 0.693359375f;
    const float ln2_lo = -2.12194440e-4f;
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    const int32_t k = (int32_t)(bits - 0x3f3504f3u) >> 23;
    const uint32_t z_bits = bits - ((uint32_t)k << 23);
    float z;
    memcpy(&z, &z_bits, sizeof z);
    const float f = z - 1.0f;
    const float t = f / (2.0f + f);
    const float t2 = t * t;
    float poly = 2.0f / 9.0f;
    poly = poly * t2 + 2.0f / 7.0f;
    poly = poly * t2 + 2.0f / 5.0f;
    poly = poly * t2 + 2.0f / 3.0f;
    const float r = poly * t2;
    const float f2 = f * f;
    const float f2_lo = fmaf(f, f, -f2); /* f**2 = f2 + f2_lo exactly */
    const float half_f2 = 0.5f * f2;
    const float exponent = (float)k;
    const float a = exponent * ln2_hi;   /* exact */
    const float s1 = a + f;
    const float e1 = (a - s1) + f;       /* Fast2Sum: |a| >= |f| or a = 0 */
    const float s2 = s1 - half_f2;
    const float e2 = (s1 - s2) - half_f2; /* Fast2Sum: |s1| >= f**2/2 */
    *lo = (e1 + e2) + ((t * (half_f2 + r) - 0.5f * f2_lo) + exponent * ln2_lo);
    return s2;
}

/*
 * atan(x) for double x, written to vectorise (the complete-IoU box loss takes
 * two per box pair; libm's is an opaque call).
 *   Range reduction on a = |x| (Muller, "Elementary Functions", ch. 11), three
 *   pieces chosen by selects, one division:
 *     a <= tan(pi/8):             atan a = atan t,           t = a
 *     tan(pi/8) < a <= tan(3pi/8): atan a = pi/4 + atan t,    t = (a - 1) / (a + 1)
 *     a > tan(3pi/8):             atan a = pi/2 + atan t,    t = -1 / a
 *   so |t| <= tan(pi/8) = 0.4142, and atan t = t + t**3 P(t**2) with P of degree
 *   9 in s = t**2 in [0, 0.1716]: a least-squares fit at 76 Chebyshev nodes of
 *   (atan t - t) / t**3, computed with mpmath at 40 digits (tests/tools/fit_atan.py
 *   makes them again).  The polynomial's own error is below 2.3e-16 relative
 *   (at most 1 ulp of atan t, measured on 401 points of [0, 0.4142]).
 *   pi/4 and pi/2 are each a double plus its remainder, added last but one, so
 *   the sum rounds once.  (a - 1) and (a + 1) round at most half an ulp of t's
 *   numerator and denominator: under one more ulp of the result, which is at
 *   least pi/8 there.
 * Error about 2 ulp over the whole line: tests/test_box.py compares it with
 * numpy.arctan on points spanning 1e-300 to 1e300 (and the special values).
 * atan(+-inf) = +-pi/2, atan(NaN) = NaN, atan(-0) = -0: selects only.
 */
FASTLOSS_INLINE double fastloss_atan(double x)
{
    const double tan_pi_8 = 0.41421356237309503;    /* tan(pi/8), rounded */
    const double tan_3pi_8 = 2.4142135623730949;    /* tan(3 pi/8), rounded */
    const double pi_4_hi = 0.78539816339744828, pi_4_lo = 3.061616997868383e-17;
    const double pi_2_hi = 1.5707963267948966, pi_2_lo = 6.123233995736766e-17;
    const double a = fabs(x);
    const int far = a > tan_3pi_8;
    const int middle = a > tan_pi_8;
    const double numerator = far ? -1.0 : (middle ? a - 1.0 : a);
    const double denominator = far ? a : (middle ? a + 1.0 : 1.0);
    const double t = numerator / denominator;
    const double base_hi = far ? pi_2_hi : (middle ? pi_4_hi : 0.0);
    const double base_lo = far ? pi_2_lo : (middle ? pi_4_lo : 0.0);
    const double s = t * t;
    double poly = 0.022780530526983894; /* Horner's rule, written out to vectorise */
    poly = poly * s - 0.04485655846626989;
    poly = poly * s + 0.05737080629289906;
    poly = poly * s - 0.06649743882366685;
    poly = poly * s + 0.07691068361407245;
    poly = poly * s - 0.09090853344129342;
    poly = poly * s + 0.11111109662900268;
    poly = poly * s - 0.14285714266539506;
    poly = poly * s + 0.19999999999901275;
    poly = poly * s - 0.3333333333333325;
    const double result = base_hi + (t + (t * s * poly + base_lo));
    return copysign(result, x);
}

/*
 * atan(x) for float x, written to vectorise: the reduction of fastloss_atan in
 * float arithmetic (three pieces chosen by selects, one division, |t| <= 0.4142),
 * and atan t = t + t**3 P(t**2) with P of degree 5 fitted by weighted least
 * squares at 400 Chebyshev nodes of s = t**2 in [0, 0.1716] and rounded to float
 * (the fit's own error is below 0.035 ulp of atan t).  Measured against double
 * atan over every non-negative finite float (tests/test_box.py keeps a sweep):
 * FASTLOSS_ATANF_REL_ERROR bounds the relative error; the box losses' error
 * bounds take it.  atan(+-inf) = +-pi/2, NaN gives NaN: selects only.
 */
#define FASTLOSS_ATANF_REL_ERROR 2.5e-7
FASTLOSS_INLINE float fastloss_atanf(float x)
{
    const float tan_pi_8 = 0.414213562f, tan_3pi_8 = 2.41421356f;
    const float pi_4_hi = 0.785398185f, pi_4_lo = -2.18556941e-08f;
    const float pi_2_hi = 1.57079637f, pi_2_lo = -4.37113883e-08f;
    const float a = fabsf(x);
    const int far = a > tan_3pi_8;
    const int middle = a > tan_pi_8;
    const float numerator = far ? -1.0f : (middle ? a - 1.0f : a);
    const float denominator = far ? a : (middle ? a + 1.0f : 1.0f);
    const float t = numerator / denominator;
    const float base_hi = far ? pi_2_hi : (middle ? pi_4_hi : 0.0f);
    const float base_lo = far ? pi_2_lo : (middle ? pi_4_lo : 0.0f);
    const float s = t * t;
    float poly = 0.0473455116f;
    poly = poly * s - 0.0847133696f;
    poly = poly * s + 0.110437304f;
    poly = poly * s - 0.142819211f;
    poly = poly * s + 0.199999005f;
    poly = poly * s - 0.333333313f;
    const float result = base_hi + (t + (t * s * poly + base_lo));
    return copysignf(result, x);
}

#endif /* FASTLOSS_FASTMATH_H */
