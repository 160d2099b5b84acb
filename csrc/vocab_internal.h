/*
 * vocab_internal.h -- types shared by the generic bodies of vocab.c; not part of the
 * public C interface.
 */
#ifndef FASTLOSS_VOCAB_INTERNAL_H
#define FASTLOSS_VOCAB_INTERNAL_H

#include <math.h>

#include "vocab.h"

/*
 * Classes per chunk of the statistics pass: the chunk's max is found in one sweep that
 * brings it from memory, and its exps in a second that finds it in L1 (2048 float32
 * are 8 KiB per input, two inputs and two tiles of exps 32 KiB).  The cross-entropy
 * kernel's chunk (FASTLOSS_CE_CHUNK), sized from the same L1.
 */
#ifndef FASTLOSS_VOCAB_CHUNK
#define FASTLOSS_VOCAB_CHUNK 2048
#endif

/* the classes of the chunk that starts at class `start` of a row of n_classes (0 past the
 * row's end) */
static inline fastloss_index fastloss_vocab_chunk_length(fastloss_index n_classes,
                                                         fastloss_index start)
{
    const fastloss_index left = n_classes - start;
    return left < FASTLOSS_VOCAB_CHUNK ? left : FASTLOSS_VOCAB_CHUNK;
}

/*
 * How far ahead of the element it works on a statistics loop that also reads the next
 * chunk asks for data (software prefetch, in classes): the chunk after the next one of
 * each input row and, with write intent, the next chunk of the row its exps are kept in
 * (the gradient row, met for the first time).  Without it the next chunk's loads, the
 * first touch of the row in memory, stalled the loop: the hardware prefetcher does not
 * run far enough ahead of a loop that spends most of its time on exps.  One thread,
 * N=64, V=50257, float32, AVX-512, loaded machine: distill_kl value_and_grad 0.80 ->
 * 0.58 ns per element (0.50 with the rows in cache), token_log_probs with entropy
 * 0.24 -> 0.215, token_log_probs_grad 0.39 -> 0.30.  A prefetch never faults, also
 * past the end of an array.
 */
#ifndef VOCAB_PREFETCH_AHEAD
#define VOCAB_PREFETCH_AHEAD FASTLOSS_VOCAB_CHUNK
#endif

/* A chunk's record: its max m_k and, relative to the shift (m_k, or 0 when m_k is
 * -inf), S_k = sum exp(a_c), W_k = sum exp(a_c) a_c and the S_k of the classes other
 * than the row's target, a_c = (x_c - shift) / temperature; and, for the distillation,
 * C_k = sum exp(a_c) d_c with d_c = (u_c - z_c) / temperature the difference of the
 * teacher's and the student's logits (no shift in it: the merge scales it by exp(delta)
 * alone). */
enum {
    VOCAB_CHUNK_MAX = 0,
    VOCAB_CHUNK_SUM = 1,
    VOCAB_CHUNK_WEIGHTED = 2,
    VOCAB_CHUNK_OTHERS = 3,
    VOCAB_CHUNK_CROSS = 4,
    VOCAB_CHUNK_FIELDS = 5
};

/*
 * The element loops sum in VOCAB_LANES partial sums of the compute type (lane j takes
 * the elements j, j + VOCAB_LANES, ... of a range), and every VOCAB_FOLD elements
 * (VOCAB_FOLD / VOCAB_LANES = 8 terms per lane) fold them into VOCAB_LANES double
 * lanes, combined pairwise at the end of the range: the same order on every ISA, and
 * no conversion to double in the element loop.  A float lane of 8 terms of one sign
 * is within 7 u (u = 2**-24: 4.2e-7) of their exact sum, relative, and the doubles add
 * nothing of that size; the float32 contract allows 2e-6 on a loss.  (The sums of a
 * row were float32 products summed in double before; each term still rounds once.)
 */
#define VOCAB_LANES 16
#define VOCAB_FOLD (8 * VOCAB_LANES)
#if VOCAB_LANES != 2 * FASTLOSS_LANES
#error "vocab_lanes_total combines VOCAB_LANES = 2 * FASTLOSS_LANES lanes"
#endif

/*
 * The element loop of a range of n elements in those lanes: STEP(i, j) takes element i in
 * lane j (i - j a multiple of VOCAB_LANES from the range's start), adding to the caller's
 * partial sums of the compute type; FOLD() moves them into its double lanes (and zeroes
 * them) after each whole fold of VOCAB_FOLD elements and after the last, partial one
 * (whole vectors, then one element at a time).  PREFETCH(v) runs before each vector of a
 * whole fold.  Every ISA adds the same terms in the same order.  (Its own names start
 * with vocab_ and end with _: a STEP's locals must not be called so.)
 */
#define VOCAB_FOLDED_LOOP(n, STEP, PREFETCH, FOLD)                                       \
    do {                                                                                \
        fastloss_index vocab_c_ = 0;                                                    \
        for (; vocab_c_ + VOCAB_FOLD <= (n); vocab_c_ += VOCAB_FOLD) {                  \
            for (fastloss_index vocab_v_ = vocab_c_; vocab_v_ < vocab_c_ + VOCAB_FOLD;   \
                 vocab_v_ += VOCAB_LANES) {                                             \
                PREFETCH(vocab_v_);                                                     \
                _Pragma("omp simd") for (int vocab_j_ = 0; vocab_j_ < VOCAB_LANES;      \
                                         ++vocab_j_)                                    \
                    STEP(vocab_v_ + vocab_j_, vocab_j_);                                \
            }                                                                           \
            FOLD();                                                                     \
        }                                                                               \
        if (vocab_c_ < (n)) {                                                           \
            for (; vocab_c_ + VOCAB_LANES <= (n); vocab_c_ += VOCAB_LANES) {            \
                _Pragma("omp simd") for (int vocab_j_ = 0; vocab_j_ < VOCAB_LANES;      \
                                         ++vocab_j_)                                    \
                    STEP(vocab_c_ + vocab_j_, vocab_j_);                                \
            }                                                                           \
            for (int vocab_j_ = 0; vocab_c_ + vocab_j_ < (n); ++vocab_j_)               \
                STEP(vocab_c_ + vocab_j_, vocab_j_);                                    \
            FOLD();                                                                     \
        }                                                                               \
    } while (0)
#define VOCAB_NO_PREFETCH(v) ((void)(v))

/* The products e a of the entropy's W = sum e a in vocab_body.h's vocab_range: none,
 * as they are, or with a floor under a (a masked class adds 0, not 0 * -inf). */
enum { VOCAB_W_NONE = 0, VOCAB_W_PLAIN = 1, VOCAB_W_FLOORED = 2 };

/* The total of VOCAB_LANES double lanes, in a fixed order. */
static inline double vocab_lanes_total(const double *lane)
{
    double half[FASTLOSS_LANES];
    for (int j = 0; j < FASTLOSS_LANES; ++j)
        half[j] = lane[j] + lane[j + FASTLOSS_LANES];
    return fastloss_lanes_total(half);
}

/* 1 / (k + 2)! for k = 0, 1, ...: g(y) / y**2 = sum_k y**k / (k + 2)! for
 * g(y) = exp(y) - 1 - y, the distillation's terms (vocab_body.h, "Distillation"). */
static const double vocab_g_series[14] = {
    1.0 / 2.0,         1.0 / 6.0,          1.0 / 24.0,           1.0 / 120.0,
    1.0 / 720.0,       1.0 / 5040.0,       1.0 / 40320.0,        1.0 / 362880.0,
    1.0 / 3628800.0,   1.0 / 39916800.0,   1.0 / 479001600.0,    1.0 / 6227020800.0,
    1.0 / 87178291200.0, 1.0 / 1307674368000.0};

/* The most terms of vocab_bernoulli_cgf's series (the JSD's takes one more than the
 * terms of its own series: vocab_body.h). */
#define VOCAB_CGF_TERMS 17

/*
 * coef[n - 1] = kappa_n / n!, n = 1 .. terms (at most VOCAB_CGF_TERMS): the Taylor series
 * at 0 of K(t) = log(1 - pi + pi e^t), the cumulant generating function of a Bernoulli(pi)
 * variable (the JSD's log m - log p, vocab_body.h).  K' = s(t) = the logistic of
 * t + log(pi / (1 - pi)), and s' = s (1 - s), so that the n-th derivative of s is a
 * polynomial P_n(s): P_0(s) = s, P_(n+1)(s) = P_n'(s) (s - s**2), and kappa_(n+1) =
 * P_n(pi).  K is analytic in the disc |t| < sqrt(log(pi / (1 - pi))**2 + pi**2) (>= pi,
 * the circle's pi), where the log's argument vanishes.  In double, once per call.
 *
 * mirrored: the series of Bernoulli(1 - pi) instead, from pi's polynomials: K_(1 - pi)(t)
 * = t + K_pi(-t), so kappa_1 = 1 - pi and kappa_n(1 - pi) = (-1)**n kappa_n(pi) for n >= 2.
 * Pass the smaller of the two probabilities as pi: P_n (n >= 1) has the factor s (1 - s)
 * and is O(pi) there, and evaluated at a probability near 1 its monomials cancel down to
 * O(1 - pi), an error of u / (1 - pi) relative (the JSD at beta = 1e-7 lost 1e-12 in
 * double, 1e-12 lost the fourth digit, when its 1 - beta was passed as pi).
 */
static inline void vocab_bernoulli_cgf(double pi, int mirrored, int terms, double *coef)
{
    double poly[VOCAB_CGF_TERMS + 2] = {0.0}, next[VOCAB_CGF_TERMS + 2];
    poly[1] = 1.0; /* P_0(s) = s: the coefficients of s**0, s**1, ... */
    double factorial = 1.0;
    for (int n = 0; n < terms; ++n) {
        double value = 0.0;
        for (int k = n + 1; k >= 0; --k) /* P_n has degree n + 1 */
            value = value * pi + poly[k];
        factorial *= (double)(n + 1);
        coef[n] = value / factorial;
        if (mirrored)
            coef[n] = n == 0 ? 1.0 - pi : (n % 2 ? coef[n] : -coef[n]); /* kappa_(n+1) */
        for (int k = 0; k < VOCAB_CGF_TERMS + 2; ++k)
            next[k] = 0.0;
        for (int k = 1; k <= n + 1 && k + 1 < VOCAB_CGF_TERMS + 2; ++k) {
            next[k] += (double)k * poly[k];     /* P_n' s */
            next[k + 1] -= (double)k * poly[k]; /* -P_n' s**2 */
        }
        for (int k = 0; k < VOCAB_CGF_TERMS + 2; ++k)
            poly[k] = next[k];
    }
}

/* A row's softmax statistics: with M the row's max and a_c = (x_c - M) / temperature,
 *   sum = S = sum_c exp(a_c),  weighted = W = sum_c exp(a_c) a_c,  others = S without
 * the target's term; so lse = M / temperature + log S and the entropy is log S - W / S. */
typedef struct vocab_row_stats {
    double max;
    double sum;
    double log_sum;
    double weighted;
    double others;
} vocab_row_stats;

/* The merge of chunk records into a row's statistics (in chunk order). */
static inline void vocab_merge_chunks(const double *chunk_data, fastloss_index n_chunks,
                                      double inv_temperature, vocab_row_stats *stats)
{
    double row_max = -INFINITY;
    for (fastloss_index k = 0; k < n_chunks; ++k) {
        const double m = chunk_data[k * VOCAB_CHUNK_FIELDS + VOCAB_CHUNK_MAX];
        row_max = m > row_max ? m : row_max; /* NaN skipped: it reaches the sums */
    }
    double sum = 0.0, weighted = 0.0, others = 0.0;
    for (fastloss_index k = 0; k < n_chunks; ++k) {
        const double *chunk = chunk_data + k * VOCAB_CHUNK_FIELDS;
        const double m = chunk[VOCAB_CHUNK_MAX];
        if (m == -INFINITY) /* every value -inf: no exp, no term */
            continue;
        /* a_c relative to M is a_c relative to m_k plus delta = (m_k - M) / T, so
         * S_k scales by exp(delta) and W_k becomes exp(delta) (W_k + delta S_k) */
        const double delta = m == row_max ? 0.0 : (m - row_max) * inv_temperature;
        const double rescale = m == row_max ? 1.0 : exp(delta);
        sum += chunk[VOCAB_CHUNK_SUM] * rescale;
        others += chunk[VOCAB_CHUNK_OTHERS] * rescale;
        /* a chunk whose exp(delta) is 0 adds 0 (or its NaN), also where delta S_k
         * would overflow (a max near the float64 limit: 0 * -inf); the same expression
         * otherwise, so that the FMA paths contract it as before */
        const double delta_w = rescale == 0.0 ? 0.0 : delta;
        weighted += rescale * (chunk[VOCAB_CHUNK_WEIGHTED] + delta_w * chunk[VOCAB_CHUNK_SUM]);
    }
    stats->max = row_max;
    stats->sum = sum;
    stats->log_sum = log(sum);
    stats->weighted = weighted;
    stats->others = others;
}

#define FASTLOSS_TLP_RUN_SIGNATURE                                                          \
    (const fastloss_vocab_options *options, const void *logits_data,                        \
     fastloss_index logits_row_stride, const int64_t *target, double *log_prob,             \
     double *entropy, const double *grad_log_prob, fastloss_index grad_log_prob_stride,     \
     const double *grad_entropy, fastloss_index grad_entropy_stride, void *grad_data,       \
     fastloss_index grad_row_stride)
typedef int(*fastloss_tlp_run) FASTLOSS_TLP_RUN_SIGNATURE;

#define FASTLOSS_DISTILL_RUN_SIGNATURE                                                      \
    (const fastloss_vocab_options *options, const void *student_data,                       \
     fastloss_index student_row_stride, const void *teacher_data,                           \
     fastloss_index teacher_row_stride, const int64_t *target, double *loss_per_row,        \
     double *loss, const double *grad_output, fastloss_index grad_output_stride,            \
     void *grad_student_data, fastloss_index grad_student_row_stride,                       \
     void *grad_teacher_data, fastloss_index grad_teacher_row_stride)
typedef int(*fastloss_distill_run) FASTLOSS_DISTILL_RUN_SIGNATURE;

#define FASTLOSS_VOCAB_NAME_(kind, storage, isa) fastloss_##kind##_##storage##_##isa
#define FASTLOSS_VOCAB_NAME(kind, storage, isa) FASTLOSS_VOCAB_NAME_(kind, storage, isa)

void fastloss_vocab_select(int level); /* dispatch.c calls it */
/* The runners of every storage tag and ISA (vocab_impl.h defines them). */
#define FASTLOSS_VOCAB_DECLARE_ISA_(storage, isa)                                          \
    int FASTLOSS_VOCAB_NAME(tlp_run, storage, isa) FASTLOSS_TLP_RUN_SIGNATURE;               \
    int FASTLOSS_VOCAB_NAME(distill_run, storage, isa) FASTLOSS_DISTILL_RUN_SIGNATURE;
#define FASTLOSS_VOCAB_DECLARE_(storage)                                                   \
    FASTLOSS_VOCAB_DECLARE_ISA_(storage, baseline)                                          \
    FASTLOSS_VOCAB_DECLARE_ISA_(storage, avx2)                                              \
    FASTLOSS_VOCAB_DECLARE_ISA_(storage, avx512)
FASTLOSS_VOCAB_DECLARE_(float32)
FASTLOSS_VOCAB_DECLARE_(float64)
FASTLOSS_VOCAB_DECLARE_(bfloat16)
FASTLOSS_VOCAB_DECLARE_(float16)
FASTLOSS_VOCAB_DECLARE_(bfloat16_grad32)
FASTLOSS_VOCAB_DECLARE_(float16_grad32)
#undef FASTLOSS_VOCAB_DECLARE_
#undef FASTLOSS_VOCAB_DECLARE_ISA_

#endif /* FASTLOSS_VOCAB_INTERNAL_H */
