/*
 * elementwise_body.h -- the elementwise kernels for one storage type, written
 * once.  No include guard, on purpose: elementwise_impl.h includes it once per
 * storage type (storage.h's pattern: STORE_T, REAL, LOAD, STORE, STORE_WIDE and
 * STORAGE_IS_COMPUTE from storage_begin.h), with EW(name) (this
 * instantiation's names), RUN (the runner's name), where REAL is float
 * EW_FLOAT_COMPUTE, and where elementwise.c may redo a sum MAY_BE_NEGATIVE
 * (the name of the sign test at the end).
 *
 * pred, target, aux, weight, factor, the per-element loss and the gradients
 * are read through LOAD and written through STORE or STORE_WIDE only; the
 * per-element value and slope functions, and the tiles' scratch, are in REAL.
 * Where REAL is float (EW_FLOAT_COMPUTE), every per-element term of the
 * regression losses and pinball is computed in float, except bce_with_logits
 * slopes that float cannot give to the contract (see there); sigmoid_focal,
 * margin_ranking and poisson_nll compute in EW_WIDE (double) and round once,
 * except sigmoid_focal's float pass for hard labels; gaussian_nll, kl_div,
 * bradley_terry, dpo's sigmoid loss and (where FMA is native) poisson_nll with
 * log_input and without full compute in float with a bound on each element's
 * error and redo in double the elements the bound cannot clear (see each;
 * EW_NARROW_TILE).  Where REAL is double (float64
 * storage, and float32 storage computed in double: elementwise.c's redo of a
 * cancelled sum) every term is computed in double.  Sums accumulate in double.
 */

/* The compute type's abs, exp(x <= 0) and log1p(u in [0, 1]) (fastmath.h), and
 * EW_WIDE, double, with its own. */
#ifdef EW_FLOAT_COMPUTE
#define EW_ABS fabsf
#define EW_EXP_NONPOSITIVE fastloss_expf_nonpositive
#define EW_LOG1P_UNIT fastloss_log1pf_unit
#else
#define EW_ABS fabs
#define EW_EXP_NONPOSITIVE fastloss_exp_nonpositive
#define EW_LOG1P_UNIT fastloss_log1p_unit
#endif
#define EW_WIDE double
#define EW_WIDE_ABS fabs
#define EW_WIDE_EXP_NONPOSITIVE fastloss_exp_nonpositive
#define EW_WIDE_LOG1P_UNIT fastloss_log1p_unit

/* ---------------------------------------------------------------------------
 * Per-element loss ("value") and its derivative w.r.t. pred ("slope"), r = pred - target.
 * Each follows torch's formula and comparison, so the branch taken at a kink
 * or boundary is torch's.
 * ------------------------------------------------------------------------- */

/* sign(r) with sign(0) = 0, as torch's l1_loss backward (and 0 for NaN, as torch). */
FASTLOSS_INLINE REAL EW(sign)(REAL r)
{
    return (REAL)(r > 0) - (REAL)(r < 0);
}

/* huber: |r| < delta ? r**2 / 2 : delta (|r| - delta / 2).  At |r| == delta both
 * pieces give delta**2 / 2 exactly (0.5 delta is exact).  The slope is r clamped
 * to [-delta, delta], written as torch writes it so that NaN stays NaN. */
FASTLOSS_INLINE REAL EW(huber_value)(REAL r, REAL delta)
{
    const REAL a = EW_ABS(r);
    return a < delta ? (REAL)0.5 * r * r : delta * (a - (REAL)0.5 * delta);
}

FASTLOSS_INLINE REAL EW(huber_slope)(REAL r, REAL delta)
{
    return r < -delta ? -delta : (r > delta ? delta : r);
}

/* smooth_l1 (beta > 0): |r| < beta ? r**2 / (2 beta) : |r| - beta / 2; the slope
 * is r / beta clamped to [-1, 1].  half_inv_beta = 0.5 / beta, inv_beta = 1 / beta.
 * r half_inv_beta is below 1/2 where it is used (|r| < beta), so the product with r
 * cannot overflow (r r could, for a beta above the square root of REAL's largest). */
FASTLOSS_INLINE REAL EW(smooth_l1_value)(REAL r, REAL beta, REAL half_inv_beta)
{
    const REAL a = EW_ABS(r);
    return a < beta ? r * half_inv_beta * r : a - (REAL)0.5 * beta;
}

/* The same where 1 / beta overflows REAL (a subnormal beta): q = r / beta divided, in
 * [-1, 1] where used; the value r (q / 2), as the reference computes it. */
FASTLOSS_INLINE REAL EW(smooth_l1_value_divided)(REAL r, REAL beta)
{
    const REAL a = EW_ABS(r);
    return a < beta ? r * ((REAL)0.5 * (r / beta)) : a - (REAL)0.5 * beta;
}

FASTLOSS_INLINE REAL EW(smooth_l1_slope_divided)(REAL r, REAL beta)
{
    return r < -beta ? (REAL)-1 : (r > beta ? (REAL)1 : r / beta);
}

FASTLOSS_INLINE REAL EW(smooth_l1_slope)(REAL r, REAL beta, REAL inv_beta)
{
    return r < -beta ? (REAL)-1 : (r > beta ? (REAL)1 : r * inv_beta);
}

/*
 * bce_with_logits, x = logit, y = target, p = pos_weight, e = exp(-|x|):
 *   loss = (1 - y) x + w softplus(-x),   w = 1 + (p - 1) y,
 *   softplus(-x) = max(-x, 0) + log1p(e)              (torch's formula)
 * Written per sign of x so that no large terms cancel:
 *   x >= 0:  (1 - y) x + w log1p(e)
 *   x <  0:  -p y x    + w log1p(e)     since (1 - y) x - w x = -p y x
 * For y in [0, 1] and p >= 0 every term is >= 0, so float32 keeps its
 * relative accuracy even where the loss is tiny (x = -20, y = 0).  (x - x)
 * adds 0 for finite x and NaN for x = -inf, where torch's (1 - y) x +
 * max(-x, 0) is -inf + inf: NaN propagates as in torch.
 *   slope = w sigmoid(x) - p y.  With q = e / (1 + e) = sigmoid(-|x|) <= 1/2:
 *   x >= 0:  (1 - y) - w q           since w (1 - q) - p y = 1 - y - w q
 *   x <  0:  w q - p y
 * so exp never sees a positive argument and never overflows, and a hard
 * label (y = 0 or 1) never subtracts two close numbers: the slope keeps q's
 * relative accuracy where it is tiny (x = 17, y = 1 gives -4.1e-8, where
 * torch's float32 sigmoid(x) - y gives 0).
 * Without pos_weight (p = 1, w = 1) the _plain forms skip the arithmetic on p.
 *
 * A soft label can still cancel: near convergence q and y agree in their
 * leading bits and the slope keeps only what q carries beyond them.  In
 * float64 that is as exact as the float64 reference.  In float32 it is not
 * (q = 0.36, slope 1e-3: q's ulp alone is a 2e-5 relative error), so the
 * float32 kernels bound the error of each slope they compute in float32 and
 * redo a tile's slopes in double when any might miss the contract
 * (bce_slope_in_doubt).  Hard labels never do, so they stay on the float32
 * path; random soft labels mostly go through double, about twice the work.
 */

/* The selects pick coefficients, never products, so that there is one way to
 * contract each sum into FMAs.  (gcc contracts by default, and may still round
 * a loop's scalar remainder differently from its vector body, so the value-only,
 * slope-only and fused loops agree to an ulp, not always to the bit.  Each one
 * alone is deterministic: which elements fall in a remainder depends on n and
 * the periods only, so threads never change a bit.) */
/* bce's loss with pos_weight, in the type T of its arguments (REAL, or EW_WIDE for
 * bce_value_wide): written once for both */
#define EW_BCE_VALUE(T, x, y, pos_weight, log1p_e)                                         \
    do {                                                                                     \
        const T log_weight = 1 + ((pos_weight) - 1) * (y);                                   \
        const T slope_of_x = (x) >= 0 ? 1 - (y) : -(pos_weight) * (y);                       \
        const T nan_at_minus_inf = (x) >= 0 ? 0 : (x) - (x);                                 \
        return ((x) * slope_of_x + nan_at_minus_inf) + log_weight * (log1p_e);               \
    } while (0)

FASTLOSS_INLINE REAL EW(bce_value)(REAL x, REAL y, REAL pos_weight, REAL log1p_e)
{
    EW_BCE_VALUE(REAL, x, y, pos_weight, log1p_e);
}

FASTLOSS_INLINE REAL EW(bce_value_plain)(REAL x, REAL y, REAL log1p_e)
{
    const REAL slope_of_x = x >= 0 ? 1 - y : -y;
    const REAL nan_at_minus_inf = x >= 0 ? 0 : x - x;
    return (x * slope_of_x + nan_at_minus_inf) + log1p_e;
}

#ifdef EW_FLOAT_COMPUTE
/*
 * float32 only: the loss in double, rounded to float once, for a tile where a term may
 * be negative (a target outside [0, 1], a pos_weight below 0, or NaN), so that
 * (1 - y) x (or -p y x) and w log1p(e) can cancel: in float32 each carries an error
 * of its own size, which the loss, small beside them, would keep (x = 0.9, y = 1.45
 * gives a loss of 4e-8 from terms of 0.4: float32's was 6e-8 off).  The same
 * expression as bce_value in double.
 */
FASTLOSS_INLINE EW_WIDE EW(bce_value_in_wide)(EW_WIDE x, EW_WIDE y, EW_WIDE pos_weight,
                                              EW_WIDE log1p_e)
{
    EW_BCE_VALUE(EW_WIDE, x, y, pos_weight, log1p_e);
}

FASTLOSS_INLINE REAL EW(bce_value_wide)(REAL x, REAL y, REAL pos_weight)
{
    const EW_WIDE wide_x = x;
    const EW_WIDE log1p_e = EW_WIDE_LOG1P_UNIT(EW_WIDE_EXP_NONPOSITIVE(-EW_WIDE_ABS(wide_x)));
    return (REAL)EW(bce_value_in_wide)(wide_x, y, pos_weight, log1p_e);
}
#endif
#undef EW_BCE_VALUE

/* The slope from e = exp(-|x|) in WIDE (double, or REAL itself), rounded to REAL once. */
FASTLOSS_INLINE REAL EW(bce_slope)(REAL x, REAL y, REAL pos_weight, EW_WIDE e)
{
    const EW_WIDE p = pos_weight, t = y;
    const EW_WIDE q = e / (1 + e);
    const EW_WIDE log_weight = 1 + (p - 1) * t;
    return (REAL)(x >= 0 ? (1 - t) - log_weight * q : log_weight * q - p * t);
}

FASTLOSS_INLINE REAL EW(bce_slope_plain)(REAL x, REAL y, EW_WIDE e)
{
    const EW_WIDE t = y;
    const EW_WIDE q = e / (1 + e);
    return (REAL)(x >= 0 ? (1 - t) - q : q - t);
}

/*
 * The slope w.r.t. the target y (torch's binary_cross_entropy_with_logits_target_backward,
 * log_sigmoid(-x) - p log_sigmoid(x)):
 *   d loss / d y = -x + (p - 1) softplus(-x),  with L = log1p(exp(-|x|)):
 *   x >= 0:  -x     + (p - 1) L
 *   x <  0:  -p x   + (p - 1) L         since softplus(-x) = -x + L there
 * Without pos_weight (p = 1) it is -x exactly.  With it, the two terms have the
 * same sign except near a root of the slope itself, so nothing cancels that the
 * exact value does not; computed in WIDE from the exact x and p, so float32 keeps
 * one rounding.  x = -inf gives p * inf (NaN for p = 0) and x = +inf gives -inf,
 * as torch's form.
 */
FASTLOSS_INLINE REAL EW(bce_target_slope)(REAL x, REAL pos_weight)
{
    const EW_WIDE p = pos_weight, wide_x = x;
    const EW_WIDE log1p_e = EW_WIDE_LOG1P_UNIT(EW_WIDE_EXP_NONPOSITIVE(-EW_WIDE_ABS(wide_x)));
    const EW_WIDE slope_of_x = x >= 0 ? -1 : -p;
    return (REAL)(slope_of_x * wide_x + (p - 1) * log1p_e);
}

#ifdef EW_FLOAT_COMPUTE
/*
 * float32 only: whether slope = t - q or q - t (t = 1 - y or y, as
 * bce_slope_plain), computed in float32, might be further than 2e-6 |slope|
 * from the exact value.  Its error is at most 3.4e-7 q (e = exp(-|x|) is
 * within 2.6e-7 relative, measured over every float in [-87, 0], and the
 * division rounds once more) plus half an ulp of t = 1 - y, 6e-8 |t|, plus
 * the subtraction's own half ulp.  In doubt where 4e-7 q + 6e-8 |t| exceeds
 * 1.5e-6 |slope|: the rest of the 2e-6 budget is for the last roundings and
 * the products with the weight and the scale.
 */
FASTLOSS_INLINE int EW(bce_slope_in_doubt)(REAL t, REAL q, REAL slope)
{
    return q * (REAL)0.27 + EW_ABS(t) * (REAL)0.04 > EW_ABS(slope);
}
#endif

/* ---------------------------------------------------------------------------
 * Tile loops: value[k] and slope[k] for k < m (EW_TILE_LOOPS, elementwise_internal.h).
 * value or slope is NULL when not wanted.  pred and target may be the
 * caller's gradient buffer (in place): these loops only read them.
 * ------------------------------------------------------------------------- */

static void EW(mse_tile)(const STORE_T *FASTLOSS_RESTRICT pred,
                         const STORE_T *FASTLOSS_RESTRICT target,
                         fastloss_index m, REAL *FASTLOSS_RESTRICT value,
                         REAL *FASTLOSS_RESTRICT slope)
{
    EW_TILE_LOOPS(const REAL r = LOAD(pred, k) - LOAD(target, k), r * r, 2 * r);
}

static void EW(l1_tile)(const STORE_T *FASTLOSS_RESTRICT pred,
                        const STORE_T *FASTLOSS_RESTRICT target,
                        fastloss_index m, REAL *FASTLOSS_RESTRICT value,
                        REAL *FASTLOSS_RESTRICT slope)
{
    EW_TILE_LOOPS(const REAL r = LOAD(pred, k) - LOAD(target, k), EW_ABS(r), EW(sign)(r));
}

static void EW(huber_tile)(const STORE_T *FASTLOSS_RESTRICT pred,
                           const STORE_T *FASTLOSS_RESTRICT target,
                           fastloss_index m, REAL delta, REAL *FASTLOSS_RESTRICT value,
                           REAL *FASTLOSS_RESTRICT slope)
{
    EW_TILE_LOOPS(const REAL r = LOAD(pred, k) - LOAD(target, k), EW(huber_value)(r, delta),
                  EW(huber_slope)(r, delta));
}

static void EW(smooth_l1_tile)(const STORE_T *FASTLOSS_RESTRICT pred,
                               const STORE_T *FASTLOSS_RESTRICT target, fastloss_index m,
                               REAL beta, REAL half_inv_beta, REAL inv_beta,
                               REAL *FASTLOSS_RESTRICT value, REAL *FASTLOSS_RESTRICT slope)
{
    EW_TILE_LOOPS(const REAL r = LOAD(pred, k) - LOAD(target, k),
                  EW(smooth_l1_value)(r, beta, half_inv_beta),
                  EW(smooth_l1_slope)(r, beta, inv_beta));
}

/* smooth_l1 where 1 / beta overflows REAL (EW(set_params)): divided by beta.  Kept out
 * of line (cold): inlined beside smooth_l1_tile it cost the usual beta 10 instructions a
 * tile, 1.5% of float32's (callgrind, AVX2). */
__attribute__((noinline, cold)) static void EW(smooth_l1_divided_tile)(const STORE_T *FASTLOSS_RESTRICT pred,
                                       const STORE_T *FASTLOSS_RESTRICT target,
                                       fastloss_index m, REAL beta,
                                       REAL *FASTLOSS_RESTRICT value,
                                       REAL *FASTLOSS_RESTRICT slope)
{
    EW_TILE_LOOPS(const REAL r = LOAD(pred, k) - LOAD(target, k),
                  EW(smooth_l1_value_divided)(r, beta), EW(smooth_l1_slope_divided)(r, beta));
}

/* What the bce loss and slope share: e = exp(-|x|), in REAL for the loss and in
 * WIDE for the slope (for float64 the same expression, computed once).
 * (Sharing one division between log1p's t = e / (e + 2) and q = e / (1 + e)
 * measured slower on AVX2: it lengthens the chain each element waits on.) */
#define EW_BCE_ELEMENT                                                                      \
    const REAL x = LOAD(logits, k);                                                         \
    const REAL y = LOAD(target, k);                                                         \
    const REAL e = EW_EXP_NONPOSITIVE(-EW_ABS(x));                                          \
    const EW_WIDE e_wide = EW_WIDE_EXP_NONPOSITIVE(-EW_WIDE_ABS((EW_WIDE)x));               \
    (void)e;                                                                                \
    (void)e_wide /* each loop uses one or both; the compiler drops the other */

/* The loss from e in REAL and the slope from e in WIDE, as asked (value or slope
 * NULL: that loop alone). */
static void EW(bce_tile_wide)(const STORE_T *FASTLOSS_RESTRICT logits,
                              const STORE_T *FASTLOSS_RESTRICT target,
                              const STORE_T *FASTLOSS_RESTRICT pos_weight, fastloss_index m,
                              REAL *FASTLOSS_RESTRICT value, REAL *FASTLOSS_RESTRICT slope)
{
    if (pos_weight)
        EW_TILE_LOOPS(EW_BCE_ELEMENT,
                      EW(bce_value)(x, y, LOAD(pos_weight, k), EW_LOG1P_UNIT(e)),
                      EW(bce_slope)(x, y, LOAD(pos_weight, k), e_wide));
    else
        EW_TILE_LOOPS(EW_BCE_ELEMENT, EW(bce_value_plain)(x, y, EW_LOG1P_UNIT(e)),
                      EW(bce_slope_plain)(x, y, e_wide));
}

#ifdef EW_FLOAT_COMPUTE
/*
 * float32 only.  The loss in float32 keeps its relative accuracy where every term is
 * >= 0: targets in [0, 1] and pos_weight >= 0.  The loops that compute it in float32
 * also take the largest bits of the target (and pos_weight), an unsigned maximum
 * that vectorises: a float in [+0, 1] has bits <= those of 1, and -0, a negative,
 * one above 1 and NaN more (for -0 and NaN double is merely exact); pos_weight >= 0
 * has bits <= those of +inf.  A tile with any other takes its losses again in
 * double (bce_value_wide_tile).
 */
#ifndef EW_BITS_OF_ONE
#define EW_BITS_OF_ONE 0x3f800000u
#define EW_BITS_OF_INF 0x7f800000u
#endif

FASTLOSS_INLINE uint32_t EW(bits_max)(uint32_t most, REAL v)
{
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    return bits > most ? bits : most;
}

/* The losses of m elements in float32; nonzero where a term may be negative. */
static int EW(bce_value_narrow_tile)(const STORE_T *FASTLOSS_RESTRICT logits,
                                     const STORE_T *FASTLOSS_RESTRICT target,
                                     const STORE_T *FASTLOSS_RESTRICT pos_weight,
                                     fastloss_index m, REAL *FASTLOSS_RESTRICT value)
{
    uint32_t target_bits = 0, weight_bits = 0;
    if (pos_weight) {
        for (fastloss_index k = 0; k < m; ++k) {
            const REAL x = LOAD(logits, k), y = LOAD(target, k), p = LOAD(pos_weight, k);
            const REAL e = EW_EXP_NONPOSITIVE(-EW_ABS(x));
            value[k] = EW(bce_value)(x, y, p, EW_LOG1P_UNIT(e));
            target_bits = EW(bits_max)(target_bits, y);
            weight_bits = EW(bits_max)(weight_bits, p);
        }
    } else {
        for (fastloss_index k = 0; k < m; ++k) {
            const REAL x = LOAD(logits, k), y = LOAD(target, k);
            const REAL e = EW_EXP_NONPOSITIVE(-EW_ABS(x));
            value[k] = EW(bce_value_plain)(x, y, EW_LOG1P_UNIT(e));
            target_bits = EW(bits_max)(target_bits, y);
        }
    }
    return target_bits > EW_BITS_OF_ONE || weight_bits > EW_BITS_OF_INF;
}

/* The losses of m elements in double, each rounded to float once. */
static void EW(bce_value_wide_tile)(const STORE_T *FASTLOSS_RESTRICT logits,
                                    const STORE_T *FASTLOSS_RESTRICT target,
                                    const STORE_T *FASTLOSS_RESTRICT pos_weight,
                                    fastloss_index m, REAL *FASTLOSS_RESTRICT value)
{
    for (fastloss_index k = 0; k < m; ++k)
        value[k] = EW(bce_value_wide)(LOAD(logits, k), LOAD(target, k),
                                      pos_weight ? LOAD(pos_weight, k) : (REAL)1);
}
#endif

/* wide_mode: set once a tile of the block needed double slopes (float32 only). */
static void EW(bce_tile)(const STORE_T *FASTLOSS_RESTRICT logits,
                         const STORE_T *FASTLOSS_RESTRICT target,
                         const STORE_T *FASTLOSS_RESTRICT pos_weight, fastloss_index m,
                         REAL *FASTLOSS_RESTRICT value, REAL *FASTLOSS_RESTRICT slope,
                         int *wide_mode)
{
#ifdef EW_FLOAT_COMPUTE
    /* float32 first: without pos_weight the slopes in float32 with their doubt, and
     * the tile's slopes again in double if any is in doubt.  Soft labels put nearly
     * every tile in doubt, so after the first such tile the rest of the block goes
     * straight to double: which path a slope takes depends on the block's data
     * alone, never on the thread count, and both meet the contract.  With
     * pos_weight (rarer; its weight has roundings of its own) the slopes are in
     * double always. */
    if (slope && !pos_weight && !*wide_mode) {
        int in_doubt = 0;
        uint32_t target_bits = 0;
#define EW_BCE_NARROW_SLOPE                                                                 \
    const REAL q = e / (1 + e);                                                             \
    const REAL t = x >= 0 ? 1 - y : y;                                                      \
    const REAL narrow = x >= 0 ? t - q : q - t;                                             \
    slope[k] = narrow;                                                                      \
    in_doubt += EW(bce_slope_in_doubt)(t, q, narrow)
        if (value) {
            for (fastloss_index k = 0; k < m; ++k) {
                const REAL x = LOAD(logits, k), y = LOAD(target, k);
                const REAL e = EW_EXP_NONPOSITIVE(-EW_ABS(x));
                value[k] = EW(bce_value_plain)(x, y, EW_LOG1P_UNIT(e));
                target_bits = EW(bits_max)(target_bits, y);
                EW_BCE_NARROW_SLOPE;
            }
            if (target_bits > EW_BITS_OF_ONE)
                EW(bce_value_wide_tile)(logits, target, NULL, m, value);
        } else {
            for (fastloss_index k = 0; k < m; ++k) {
                const REAL x = LOAD(logits, k), y = LOAD(target, k);
                const REAL e = EW_EXP_NONPOSITIVE(-EW_ABS(x));
                EW_BCE_NARROW_SLOPE;
            }
        }
#undef EW_BCE_NARROW_SLOPE
        if (!in_doubt)
            return;
        *wide_mode = 1;
        value = NULL; /* written; only the slopes are redone below */
    }
    if (value) {
        /* the loss in a loop of its own, so that the float32 exp serves it and the
         * double exp only the slopes; in double where a term may be negative */
        if (EW(bce_value_narrow_tile)(logits, target, pos_weight, m, value))
            EW(bce_value_wide_tile)(logits, target, pos_weight, m, value);
        value = NULL;
        if (!slope)
            return;
    }
#else
    (void)wide_mode;
#endif
    EW(bce_tile_wide)(logits, target, pos_weight, m, value, slope);
}

#undef EW_BCE_ELEMENT

/* bce's slopes w.r.t. the target of m elements (pos_weight NULL: p = 1). */
static void EW(bce_target_tile)(const STORE_T *FASTLOSS_RESTRICT logits,
                                const STORE_T *FASTLOSS_RESTRICT pos_weight, fastloss_index m,
                                REAL *FASTLOSS_RESTRICT target_slope)
{
    if (pos_weight)
        for (fastloss_index k = 0; k < m; ++k)
            target_slope[k] = EW(bce_target_slope)(LOAD(logits, k), LOAD(pos_weight, k));
    else
        for (fastloss_index k = 0; k < m; ++k)
            target_slope[k] = -LOAD(logits, k);
}

/* ---------------------------------------------------------------------------
 * The pointwise losses of families issue 2: sigmoid_focal, margin_ranking,
 * poisson_nll, gaussian_nll, pinball.  Each element is computed by one inline
 * function returning its value and slope (the compiler drops what a loop does
 * not use), in WIDE (double) whenever float32 arithmetic could not meet the
 * contract, and rounded to REAL once.  The options that change the formula
 * (gamma's kind, log_input, full) are literal constants at each call, so each
 * loop is specialised and has no test inside but the formula's own selects.
 * ------------------------------------------------------------------------- */

typedef struct EW(pair_s) {
    EW_WIDE value, slope;
} EW(pair);

/*
 * sigmoid_focal (torchvision.ops.sigmoid_focal_loss), x = logit, y = target in [0, 1]:
 *   s = sigmoid(x), c = 1 - s, ce = bce_with_logits(x, y),
 *   u = 1 - p_t = s (1 - y) + c y,       loss = a_t ce u**gamma,
 *   a_t = alpha y + (1 - alpha)(1 - y)    (1 when alpha < 0).
 * With e = exp(-|x|) and q = e / (1 + e) = sigmoid(-|x|), s and c are q and 1 - q
 * per the sign of x, so both keep their relative accuracy however small (torch's
 * 1 - p_t rounds to 0 once sigmoid(x) rounds to 1: x > 17 in float32, 37 in
 * float64), and u is a sum of two terms >= 0.  The slope (d/dx):
 *   d ce / dx = s - y,   d u / dx = s c (1 - 2 y),
 *   slope = a_t [ (s - y) u**gamma + gamma ce u**(gamma - 1) s c (1 - 2 y) ]
 *         = a_t u**gamma [ (s - y) + gamma ce (1 - 2 y) s c / u ]
 * where s c / u lies in [0, 2] for y in [0, 1] (u >= s / 2 or u >= c / 2), so
 * nothing overflows, and s - y is bce's form ((1 - y) - q or q - y), exact in
 * its leading term for hard labels.  Where u is exactly 0 (a hard label and
 * |x| beyond about 745) u**gamma is 0 and the bracket's second term is finite
 * (its division is by 1 there): the slope is the limit, 0.  torch's autograd of
 * the formula gives NaN there for 0 < gamma < 1 (0 * 0**(gamma - 1) = 0 * inf),
 * a deliberate difference.  gamma == 0 drops the second term altogether
 * (torch's pow backward with exponent 0 is 0), so the slope is a_t bce's slope
 * even at infinite logits.  gamma 1 and 2 (the common one) multiply the bracket
 * by u instead, a_t u**(gamma - 1) [(s - y) u + gamma ce (1 - 2 y) s c], which
 * needs neither a power nor a division; any other gamma takes u**gamma as
 * exp(gamma log u) in double and divides s c by u (by 1 where u is 0; the ratio
 * form, because u**(gamma - 1) overflows for tiny u and gamma < 1).
 * Accuracy: everything in double for float32 too: the power's error grows with
 * gamma |log u| (69 gamma float32 ulps at u = 1e-30), and soft labels cancel in
 * s - y as in bce.
 */
FASTLOSS_INLINE EW(pair) EW(focal_element)(REAL logit, REAL label, EW_WIDE alpha_pos,
                                           EW_WIDE alpha_neg, EW_WIDE gamma, int gamma_kind)
{
    const EW_WIDE x = logit, y = label;
    const EW_WIDE e = EW_WIDE_EXP_NONPOSITIVE(-EW_WIDE_ABS(x));
    const EW_WIDE q = e / (1 + e);                    /* sigmoid(-|x|) <= 1/2 */
    const EW_WIDE s = x >= 0 ? 1 - q : q;             /* sigmoid(x) */
    const EW_WIDE c = x >= 0 ? q : 1 - q;             /* 1 - sigmoid(x) */
    const EW_WIDE u = s * (1 - y) + c * y;            /* 1 - p_t */
    /* bce's value per sign of x (bce_value_plain), NaN at x = -inf as torch */
    const EW_WIDE ce = (x * (x >= 0 ? 1 - y : -y) + (x >= 0 ? 0 : x - x)) +
                       EW_WIDE_LOG1P_UNIT(e);
    const EW_WIDE alpha_t = alpha_pos * y + alpha_neg * (1 - y);
    const EW_WIDE ce_slope = x >= 0 ? (1 - y) - q : q - y; /* s - y */
    EW(pair) result;
    if (gamma_kind == EW_FOCAL_GAMMA_0) {
        result.value = alpha_t * ce;
        result.slope = alpha_t * ce_slope;
    } else if (gamma_kind == EW_FOCAL_GAMMA_1) {
        /* a_t [(s - y) u + ce (1 - 2 y) s c]: no power, no division */
        result.value = alpha_t * ce * u;
        result.slope = alpha_t * (ce_slope * u + ce * (1 - 2 * y) * (s * c));
    } else if (gamma_kind == EW_FOCAL_GAMMA_2) {
        /* a_t u [(s - y) u + 2 ce (1 - 2 y) s c] */
        result.value = alpha_t * ce * (u * u);
        result.slope = alpha_t * u * (ce_slope * u + 2 * ce * (1 - 2 * y) * (s * c));
    } else {
        const EW_WIDE power = fastloss_exp(gamma * fastloss_log(u)); /* log 0 = -inf: 0 */
        const EW_WIDE ratio = s * c / (u > 0 ? u : 1);              /* in [0, 2] */
        result.value = alpha_t * ce * power;
        result.slope = alpha_t * power * (ce_slope + gamma * ce * (1 - 2 * y) * ratio);
    }
    return result;
}

#define EW_FOCAL_LOOPS(KIND)                                                                \
    EW_TILE_LOOPS(const EW(pair) f = EW(focal_element)(LOAD(logits, k), LOAD(target, k),    \
                                                       alpha_pos, alpha_neg, gamma, KIND),  \
                  (REAL)f.value, (REAL)f.slope)

static void EW(focal_tile_wide)(const STORE_T *FASTLOSS_RESTRICT logits,
                                const STORE_T *FASTLOSS_RESTRICT target, fastloss_index m,
                                EW_WIDE alpha_pos, EW_WIDE alpha_neg, EW_WIDE gamma,
                                int gamma_kind, REAL *FASTLOSS_RESTRICT value,
                                REAL *FASTLOSS_RESTRICT slope)
{
    switch (gamma_kind) {
    case EW_FOCAL_GAMMA_0:
        EW_FOCAL_LOOPS(EW_FOCAL_GAMMA_0);
        break;
    case EW_FOCAL_GAMMA_1:
        EW_FOCAL_LOOPS(EW_FOCAL_GAMMA_1);
        break;
    case EW_FOCAL_GAMMA_2:
        EW_FOCAL_LOOPS(EW_FOCAL_GAMMA_2);
        break;
    default:
        EW_FOCAL_LOOPS(EW_FOCAL_GAMMA_ANY);
        break;
    }
}

#ifdef EW_FLOAT_COMPUTE
/*
 * float32 only: sigmoid_focal for gamma 0, 1 and 2 in float32 arithmetic, with
 * the doubt of each slope, as bce's (double arithmetic on 8 lanes, with exp and
 * log1p as double polynomials, cost 9 cycles an element on AVX-512; this pass
 * costs about what bce does).  Each factor of the loss, a_t, ce, u = q or 1 - q,
 * is a sum of terms >= 0 for y in [0, 1] and a_t >= 0 (alpha in [0, 1], or none),
 * so each keeps float32's relative accuracy: e within 2.6e-7 (fastmath.h, as
 * measured for bce), q within 3.8e-7, u within 5e-7, ce within 5.6e-7 (log1p's
 * 2 ulp and e's error, which log1p(e) carries at most relatively), u u within
 * 1.1e-6; the loss, their product, within 1.9e-6 at the worst alignment of every
 * rounding, and tests/test_pointwise_kernels.py measures under 1e-6 over logits
 * on [-90, 90].  The slope's bracket (s - y) u + gamma ce (1 - 2 y) s c has two
 * terms of one sign for hard labels; a soft label can cancel in s - y (bce's
 * doubt) or between the terms (in doubt unless the bracket keeps 0.9 of their
 * magnitudes), and a target outside [0, 1] can cancel anywhere.  A tile with an
 * element in doubt is computed again in double (focal_tile_wide), and so is the
 * rest of its block, as bce's: the path depends on the block's data alone.
 */
typedef struct EW(pair_narrow_s) {
    REAL value, slope;
} EW(pair_narrow);

typedef struct EW(focal_narrow_s) {
    REAL value, slope;
    int value_doubt, slope_doubt;
} EW(focal_narrow);

FASTLOSS_INLINE EW(focal_narrow) EW(focal_narrow_element)(REAL x, REAL y, REAL alpha_pos,
                                                         REAL alpha_neg, int gamma_kind)
{
    const REAL e = EW_EXP_NONPOSITIVE(-EW_ABS(x));
    const REAL q = e / (1 + e);
    const REAL s = x >= 0 ? 1 - q : q;
    const REAL c = x >= 0 ? q : 1 - q;
    const REAL u = s * (1 - y) + c * y;
    const REAL ce = EW(bce_value_plain)(x, y, EW_LOG1P_UNIT(e));
    const REAL alpha_t = alpha_pos * y + alpha_neg * (1 - y);
    const REAL t = x >= 0 ? 1 - y : y;
    const REAL ce_slope = x >= 0 ? t - q : q - t; /* s - y */
    EW(focal_narrow) result;
    result.value_doubt = (y < 0) | (y > 1);
    result.slope_doubt = result.value_doubt | EW(bce_slope_in_doubt)(t, q, ce_slope);
    if (gamma_kind == EW_FOCAL_GAMMA_0) {
        result.value = alpha_t * ce;
        result.slope = alpha_t * ce_slope;
    } else {
        const REAL first = ce_slope * u;
        const REAL second = (gamma_kind == EW_FOCAL_GAMMA_2 ? 2 : 1) * ce * (1 - 2 * y) * (s * c);
        const REAL bracket = first + second;
        result.slope_doubt |= (EW_ABS(first) + EW_ABS(second)) * (REAL)0.9 > EW_ABS(bracket);
        result.value = gamma_kind == EW_FOCAL_GAMMA_2 ? alpha_t * ce * (u * u) : alpha_t * ce * u;
        result.slope = gamma_kind == EW_FOCAL_GAMMA_2 ? alpha_t * u * bracket : alpha_t * bracket;
    }
    return result;
}

/* The narrow pass of one gamma kind over the tile; counts the elements in doubt. */
#define EW_FOCAL_NARROW_LOOPS(KIND)                                                        \
    do {                                                                                   \
        if (value && slope) {                                                              \
            for (fastloss_index k = 0; k < m; ++k) {                                       \
                const EW(focal_narrow) f = EW(focal_narrow_element)(                       \
                    LOAD(logits, k), LOAD(target, k), alpha_p, alpha_n, KIND);             \
                value[k] = f.value;                                                        \
                slope[k] = f.slope;                                                        \
                in_doubt += f.slope_doubt;                                                 \
            }                                                                              \
        } else if (value) {                                                                \
            for (fastloss_index k = 0; k < m; ++k) {                                       \
                const EW(focal_narrow) f = EW(focal_narrow_element)(                       \
                    LOAD(logits, k), LOAD(target, k), alpha_p, alpha_n, KIND);             \
                value[k] = f.value;                                                        \
                in_doubt += f.value_doubt;                                                 \
            }                                                                              \
        } else {                                                                           \
            for (fastloss_index k = 0; k < m; ++k) {                                       \
                const EW(focal_narrow) f = EW(focal_narrow_element)(                       \
                    LOAD(logits, k), LOAD(target, k), alpha_p, alpha_n, KIND);             \
                slope[k] = f.slope;                                                        \
                in_doubt += f.slope_doubt;                                                 \
            }                                                                              \
        }                                                                                  \
    } while (0)
#endif

#ifdef EW_FLOAT_COMPUTE
/*
 * float32 only: a tile of hard labels (every y 0 or 1; gamma 0, 1 or 2, alpha_t >= 0)
 * has a form with no cancellation at all, so it needs no doubt.  With z = x for
 * y = 0 and -x for y = 1, sigma = sigmoid(z) is u = 1 - p_t, ce = softplus(z), and
 *   d/dz [ce sigma**gamma] = sigma**gamma [sigma + gamma ce (1 - sigma)],
 *   slope (d/dx) = (1 - 2 y) a_t sigma**gamma [sigma + gamma ce (1 - sigma)],
 * every term >= 0 (focal_element's slope with u = sigma, s - y = (1 - 2 y) sigma
 * and s c = sigma (1 - sigma), which hold for a hard label).  With
 * q = sigmoid(-|z|), sigma and 1 - sigma are q and 1 - q per the sign of z.  Errors
 * (as focal_narrow_element's): q within 3.8e-7, 1 - q within 4.4e-7 (q <= 1/2),
 * ce within 5.6e-7; q's error enters the bracket's two terms with opposite signs, so
 * the bracket is within 10.6e-7 and sigma**2 within 9.4e-7: the slope within 2.1e-6
 * at the worst alignment of every rounding (the general form's bound is no tighter),
 * the value as focal_narrow_element's.  ce is bce_value_plain, so x = -inf gives NaN
 * as torch's formula.  About 45 operations a vector against 70 for the general form
 * with its two doubt tests.
 */
FASTLOSS_INLINE EW(pair_narrow) EW(focal_hard_element)(REAL x, REAL y, REAL alpha_pos,
                                                      REAL alpha_neg, int gamma_kind)
{
    const REAL z = y != 0 ? -x : x;
    const REAL e = EW_EXP_NONPOSITIVE(-EW_ABS(x));
    const REAL q = e / (1 + e);
    const REAL sigma = z >= 0 ? 1 - q : q;      /* 1 - p_t */
    const REAL sigma_c = z >= 0 ? q : 1 - q;    /* p_t */
    const REAL ce = EW(bce_value_plain)(x, y, EW_LOG1P_UNIT(e));
    const REAL alpha_t = y != 0 ? alpha_pos : alpha_neg;
    const REAL signed_alpha = y != 0 ? -alpha_pos : alpha_neg; /* (1 - 2 y) a_t */
    EW(pair_narrow) result;
    if (gamma_kind == EW_FOCAL_GAMMA_0) {
        result.value = alpha_t * ce;
        result.slope = signed_alpha * sigma;
    } else if (gamma_kind == EW_FOCAL_GAMMA_1) {
        result.value = alpha_t * ce * sigma;
        result.slope = signed_alpha * sigma * (sigma + ce * sigma_c);
    } else {
        const REAL sigma2 = sigma * sigma;
        result.value = alpha_t * ce * sigma2;
        result.slope = signed_alpha * sigma2 * (sigma + 2 * ce * sigma_c);
    }
    return result;
}

#define EW_FOCAL_HARD_LOOPS(KIND)                                                           \
    EW_TILE_LOOPS(const EW(pair_narrow) f = EW(focal_hard_element)(                         \
                      LOAD(logits, k), LOAD(target, k), alpha_p, alpha_n, KIND),            \
                  f.value, f.slope)
#endif

/* wide_mode: set once a tile of the block needed double (float32 only); narrow_ok:
 * the call's alpha_t has no negative term (alpha in [0, 1], or no alpha). */
static void EW(focal_tile)(const STORE_T *FASTLOSS_RESTRICT logits,
                           const STORE_T *FASTLOSS_RESTRICT target, fastloss_index m,
                           EW_WIDE alpha_pos, EW_WIDE alpha_neg, EW_WIDE gamma, int gamma_kind,
                           int narrow_ok, REAL *FASTLOSS_RESTRICT value,
                           REAL *FASTLOSS_RESTRICT slope, int *wide_mode)
{
#ifdef EW_FLOAT_COMPUTE
    if (narrow_ok && gamma_kind != EW_FOCAL_GAMMA_ANY) {
        const REAL alpha_p = (REAL)alpha_pos, alpha_n = (REAL)alpha_neg;
        int soft = 0;
        for (fastloss_index k = 0; k < m; ++k)
            soft += (LOAD(target, k) != 0) & (LOAD(target, k) != 1);
        if (!soft) {
            if (gamma_kind == EW_FOCAL_GAMMA_0)
                EW_FOCAL_HARD_LOOPS(EW_FOCAL_GAMMA_0);
            else if (gamma_kind == EW_FOCAL_GAMMA_1)
                EW_FOCAL_HARD_LOOPS(EW_FOCAL_GAMMA_1);
            else
                EW_FOCAL_HARD_LOOPS(EW_FOCAL_GAMMA_2);
            return;
        }
    }
    if (narrow_ok && gamma_kind != EW_FOCAL_GAMMA_ANY && !*wide_mode) {
        const REAL alpha_p = (REAL)alpha_pos, alpha_n = (REAL)alpha_neg;
        int in_doubt = 0;
        if (gamma_kind == EW_FOCAL_GAMMA_0)
            EW_FOCAL_NARROW_LOOPS(EW_FOCAL_GAMMA_0);
        else if (gamma_kind == EW_FOCAL_GAMMA_1)
            EW_FOCAL_NARROW_LOOPS(EW_FOCAL_GAMMA_1);
        else
            EW_FOCAL_NARROW_LOOPS(EW_FOCAL_GAMMA_2);
        if (!in_doubt)
            return;
        *wide_mode = 1;
    }
#else
    (void)narrow_ok;
    (void)wide_mode;
#endif
    EW(focal_tile_wide)(logits, target, m, alpha_pos, alpha_neg, gamma, gamma_kind, value, slope);
}

#ifdef EW_FLOAT_COMPUTE
#undef EW_FOCAL_NARROW_LOOPS
#undef EW_FOCAL_HARD_LOOPS
#endif
#undef EW_FOCAL_LOOPS

/*
 * margin_ranking (torch.nn.functional.margin_ranking_loss), x1 = pred, x2 = target,
 * y = aux:  z = -y (x1 - x2) + margin,  loss = max(z, 0),
 *   d/dx1 = -y [z >= 0],  d/dx2 = y [z >= 0]  (minus the slope).
 * torch's clamp_min backward passes the gradient where z >= min, so the kink
 * z == 0 takes the slope -y; NaN z gives -y * 0 = -0 (torch's too), and a NaN
 * y a NaN slope.  z is computed in double for float32: x1 - x2 and y (x1 - x2)
 * are exact there, and margin - y d rounds once, where float32 would lose the
 * contract wherever z is small next to y d.  NaN propagates through the value
 * (z < 0 ? 0 : z).
 */
static void EW(margin_ranking_tile)(const STORE_T *FASTLOSS_RESTRICT x1,
                                    const STORE_T *FASTLOSS_RESTRICT x2,
                                    const STORE_T *FASTLOSS_RESTRICT label, fastloss_index m,
                                    EW_WIDE margin, REAL *FASTLOSS_RESTRICT value,
                                    REAL *FASTLOSS_RESTRICT slope)
{
    EW_TILE_LOOPS(const REAL y = LOAD(label, k);
                  const EW_WIDE z =
                      margin - (EW_WIDE)y * ((EW_WIDE)LOAD(x1, k) - (EW_WIDE)LOAD(x2, k)),
                  (REAL)(z < 0 ? 0 : z), -y * (REAL)(z >= 0));
}

#ifdef EW_FLOAT_COMPUTE
/* A float32 pass's result for one element: its value and slope, each with its doubt
 * (nonzero: the bound cannot clear it, and the double form redoes it). */
typedef struct EW(narrow_s) {
    REAL value, slope;
    int value_doubt, slope_doubt;
} EW(narrow);

/*
 * float32 only: the elements of a tile that a float32 pass could not give to the
 * contract (doubt[k] nonzero), listed by index in increasing order; returns their
 * count.  The flags are packed 32 to a word first (a loop that vectorises), so
 * that only the words with a flag are looked into, one set bit at a time: a
 * plain scan with a branch or a branch-free compaction cost 1 to 1.5 cycles an
 * element at a few percent of flags.
 */
FASTLOSS_INLINE int EW(doubt_list)(const int *FASTLOSS_RESTRICT doubt, fastloss_index m,
                                   int *FASTLOSS_RESTRICT list)
{
    int count = 0;
    for (fastloss_index base = 0; base < m; base += 32) {
        const int width = m - base < 32 ? (int)(m - base) : 32;
        uint32_t bits = 0;
        for (int j = 0; j < width; ++j)
            bits |= (uint32_t)(doubt[base + j] != 0) << j;
        while (bits) {
            list[count++] = (int)base + __builtin_ctz(bits);
            bits &= bits - 1;
        }
    }
    return count;
}

/*
 * float32 only: the loops of a tile computed by a float32 pass with a doubt on each
 * result, then the elements in doubt computed again in double.  NARROW declares f,
 * an EW(narrow), for element k; WIDE declares g, an EW(pair) in double, for element
 * k.  The value and the slope are each redone only where their own bound failed
 * (doubt bit 1 and 2), so that the fused, value-only and slope-only calls agree bit
 * for bit; which elements those are depends on their own inputs alone, so threads
 * never change a bit.  value and slope are the tile's outputs (NULL when not
 * wanted); the inputs are only read, and the redo reads them again (an output never
 * overlaps an input: elementwise.h).  Used inside the tile functions, whose m,
 * value and slope it names.
 */
#define EW_NARROW_TILE(NARROW, WIDE)                                                        \
    do {                                                                                    \
        int doubt_[FASTLOSS_EW_TILE];                                                       \
        int in_doubt_ = 0;                                                                  \
        if (value && slope) {                                                               \
            for (fastloss_index k = 0; k < m; ++k) {                                        \
                NARROW;                                                                     \
                value[k] = f.value;                                                         \
                slope[k] = f.slope;                                                         \
                doubt_[k] = f.value_doubt | f.slope_doubt << 1;                             \
                in_doubt_ += doubt_[k];                                                     \
            }                                                                               \
        } else if (value) {                                                                 \
            for (fastloss_index k = 0; k < m; ++k) {                                        \
                NARROW;                                                                     \
                value[k] = f.value;                                                         \
                doubt_[k] = f.value_doubt;                                                  \
                in_doubt_ += doubt_[k];                                                     \
            }                                                                               \
        } else {                                                                            \
            for (fastloss_index k = 0; k < m; ++k) {                                        \
                NARROW;                                                                     \
                slope[k] = f.slope;                                                         \
                doubt_[k] = f.slope_doubt << 1;                                             \
                in_doubt_ += doubt_[k];                                                     \
            }                                                                               \
        }                                                                                   \
        if (in_doubt_) {                                                                    \
            int list_[FASTLOSS_EW_TILE];                                                    \
            const int count_ = EW(doubt_list)(doubt_, m, list_);                            \
            for (int j_ = 0; j_ < count_; ++j_) {                                           \
                const fastloss_index k = list_[j_];                                         \
                WIDE;                                                                       \
                if (doubt_[k] & 1)                                                          \
                    value[k] = (REAL)g.value;                                               \
                if (doubt_[k] & 2)                                                          \
                    slope[k] = (REAL)g.slope;                                               \
            }                                                                               \
        }                                                                                   \
    } while (0)
#endif

/*
 * poisson_nll (torch.nn.functional.poisson_nll_loss), x = input, y = target:
 *   log_input:   loss = exp(x) - y x,               slope = exp(x) - y,
 *                target slope = -x
 *   otherwise:   loss = x - y log(x + eps),         slope = 1 - y / (x + eps),
 *                target slope = -log(x + eps)
 *   full adds Stirling's term where y > 1 (torch masks y <= 1 to 0):
 *                y log y - y + 0.5 log(2 pi y),     target slope + log y + 1 / (2 y)
 * All in double for float32 (exp(x) and y x cancel near the optimum exp(x) = y,
 * and x + eps would round eps away), except log_input without full where FMA is
 * native: a float32 pass with a bound, poisson_narrow_element below.  torch's autograd of its masked Stirling
 * term gives NaN w.r.t. the target where y <= 0 (0 * log 0 in the masked
 * branch's backward); this kernel gives the masked term's derivative, 0 (a
 * deliberate difference).  Infinities and NaN propagate as in torch's formula
 * (log of x + eps <= 0 is -inf or NaN; y = 0 there gives 0 * -inf = NaN).
 */
#ifndef EW_TWO_PI
#define EW_TWO_PI 6.283185307179586476925286766559
#define EW_LOG_TWO_PI 1.8378770664093454835606594728112
#endif

FASTLOSS_INLINE EW(pair) EW(poisson_element)(REAL input, REAL count, EW_WIDE eps,
                                             int log_input, int full)
{
    const EW_WIDE x = input, y = count;
    EW(pair) result;
    if (log_input) {
        const EW_WIDE exp_x = fastloss_exp(x);
        result.value = exp_x - y * x;
        result.slope = exp_x - y;
    } else {
        const EW_WIDE shifted = x + eps;
        result.value = x - y * fastloss_log(shifted);
        result.slope = 1 - y / shifted;
    }
    if (full) {
        const EW_WIDE log_y = fastloss_log(y);
        /* 0.5 log(2 pi y) as 0.5 (log(2 pi) + log y): one log fewer */
        const EW_WIDE stirling = y * log_y - y + 0.5 * (EW_LOG_TWO_PI + log_y);
        result.value += y <= 1 ? 0 : stirling; /* NaN y is not masked, as torch */
    }
    return result;
}

FASTLOSS_INLINE EW_WIDE EW(poisson_target_slope)(REAL input, REAL count, EW_WIDE eps,
                                                 int log_input, int full)
{
    const EW_WIDE x = input, y = count;
    EW_WIDE slope = log_input ? -x : -fastloss_log(x + eps);
    if (full)
        slope += y <= 1 ? 0 : fastloss_log(y) + 0.5 / y;
    return slope;
}

#if defined(EW_FLOAT_COMPUTE) && defined(__FMA__)
/*
 * float32 only, where FMA is native (the AVX2 and AVX-512 paths): poisson_nll with
 * log_input and without full in float32 arithmetic, with a bound on each element's
 * error; the elements it cannot clear are computed again in double (poisson_element).
 * u = 2**-24.  exp(x) = 2**n (1 + p) with n = round(x / ln 2), r = x - n ln 2 and
 * p = exp(r) - 1, and the terms that cancel are formed around 2**n, exactly or
 * with one rounding, before the small part 2**n p is added:
 *   slope = (2**n - y) + 2**n p,     value = (2**n - y x) + 2**n p
 * (2**n - y rounds once, u |d|, and is exact wherever the slope cancels: there
 * y is within a factor 2 of 2**n (Sterbenz); 2**n - y x is one FMA, u |A|).
 *   r: n ln2_hi and x - n ln2_hi are exact (fastloss_expf_poly's reduction), the
 *      FMA with ln2_lo rounds once (u |r|), and ln2_hi + ln2_lo is within 1.3e-11
 *      of ln 2: r within u |r| + 1.7e-9 of x - n ln 2 (|n| <= 128).
 *   p = r + r (r h(r)), h the Taylor polynomial of (exp(r) - 1 - r) / r**2 to
 *      r**6 / 8! (|r| <= ln2 / 2: truncation under 8.3e-10 |r|), by Horner with
 *      FMAs (h in [0.44, 0.57], within 0.7u), r h rounded once, and the last FMA
 *      once: p within u |p| + 0.44u |r| + 8.3e-10 |r| of exp(r) - 1, and r's own
 *      error moves exp(r) by at most 1.415 (u |r| + 1.7e-9).
 * So 2**n p is within 2**n u (|p| + 1.87 |r| + 0.04) <= 2**n u (3.07 |r| + 0.04)
 * of exp(x) - 2**n (|p| <= 1.2 |r| for |r| <= ln2 / 2; 2**n p is exact: x in
 * [-80, 88] keeps 2**n normal, and an underflow of 2**n p, under 2**-150, is
 * inside the last term).  The slope before its last rounding is within u |d| +
 * that, the value within u |A| + that; the budget is 1.68e-6 of each (as
 * gaussian_nll's, the rest of 2e-6 for the last rounding, the weight's and the
 * scale's products): in doubt unless
 *   |slope| - 0.0355 |d| > 2**n (0.109 |r| + 0.00142)
 * (the value likewise with |A|); the test takes 0.036, 0.112 and 0.0015 (computed
 * in float: the margins cover its own roundings), and is false for NaN and
 * infinite results (y or y x infinite or NaN).  In doubt also: x outside
 * [-80, 88] or NaN.  An element is in doubt where exp(x) is within about 3% of y
 * (the slope) or of y x (the value): 1.1% of the bench's (x normal with sigma 2,
 * y Poisson of mean 2).
 */
FASTLOSS_INLINE EW(narrow) EW(poisson_narrow_element)(REAL x, REAL y)
{
    const float round_magic = 12582912.0f; /* 1.5 * 2**23 */
    const float inv_ln2 = 1.44269504088896341f;
    const float ln2_hi = 0.693359375f;     /* 9 significant bits: n ln2_hi is exact */
    const float ln2_lo = -2.12194440e-4f;  /* ln 2 - ln2_hi */
    const float shifted = fmaf(x, inv_ln2, round_magic);
    const float n = shifted - round_magic;
    const float r = fmaf(-n, ln2_lo, fmaf(-n, ln2_hi, x));
    float h = 1.0f / 40320.0f;
    h = fmaf(h, r, 1.0f / 5040.0f);
    h = fmaf(h, r, 1.0f / 720.0f);
    h = fmaf(h, r, 1.0f / 120.0f);
    h = fmaf(h, r, 1.0f / 24.0f);
    h = fmaf(h, r, 1.0f / 6.0f);
    h = fmaf(h, r, 0.5f);
    const float p = fmaf(r * h, r, r);
    const float scale = fastloss_expf_scale(shifted, 127u); /* 2**n */
    const float d = scale - y;
    const float a = fmaf(-y, x, scale);
    const float small = scale * fmaf(0.112f, EW_ABS(r), 0.0015f);
    EW(narrow) result;
    result.slope = fmaf(scale, p, d);
    result.value = fmaf(scale, p, a);
    const int range_doubt = !((x >= -80.0f) & (x <= 88.0f));
    result.slope_doubt = range_doubt | !(fmaf(-0.036f, EW_ABS(d), EW_ABS(result.slope)) > small);
    result.value_doubt = range_doubt | !(fmaf(-0.036f, EW_ABS(a), EW_ABS(result.value)) > small);
    return result;
}
#endif

#define EW_POISSON_LOOPS(LOG_INPUT, FULL)                                                   \
    EW_TILE_LOOPS(const EW(pair) f = EW(poisson_element)(LOAD(pred, k), LOAD(target, k), eps, \
                                                         LOG_INPUT, FULL),                  \
                  (REAL)f.value, (REAL)f.slope)

static void EW(poisson_tile)(const STORE_T *FASTLOSS_RESTRICT pred,
                             const STORE_T *FASTLOSS_RESTRICT target, fastloss_index m,
                             EW_WIDE eps, int log_input, int full,
                             REAL *FASTLOSS_RESTRICT value, REAL *FASTLOSS_RESTRICT slope)
{
#if defined(EW_FLOAT_COMPUTE) && defined(__FMA__)
    if (log_input && !full) {
        EW_NARROW_TILE(const EW(narrow) f = EW(poisson_narrow_element)(LOAD(pred, k),
                                                                      LOAD(target, k)),
                       const EW(pair) g = EW(poisson_element)(LOAD(pred, k), LOAD(target, k),
                                                              eps, 1, 0));
        return;
    }
#endif
    if (log_input) {
        if (full)
            EW_POISSON_LOOPS(1, 1);
        else
            EW_POISSON_LOOPS(1, 0);
    } else {
        if (full)
            EW_POISSON_LOOPS(0, 1);
        else
            EW_POISSON_LOOPS(0, 0);
    }
}

#undef EW_POISSON_LOOPS

static void EW(poisson_target_tile)(const STORE_T *FASTLOSS_RESTRICT pred,
                                    const STORE_T *FASTLOSS_RESTRICT target, fastloss_index m,
                                    EW_WIDE eps, int log_input, int full,
                                    REAL *FASTLOSS_RESTRICT target_slope)
{
#define EW_POISSON_TARGET_LOOP(LOG_INPUT, FULL)                                             \
    for (fastloss_index k = 0; k < m; ++k)                                                  \
        target_slope[k] = (REAL)EW(poisson_target_slope)(LOAD(pred, k), LOAD(target, k), eps,  \
                                                         LOG_INPUT, FULL)
    if (log_input) {
        if (full)
            EW_POISSON_TARGET_LOOP(1, 1);
        else
            EW_POISSON_TARGET_LOOP(1, 0);
    } else {
        if (full)
            EW_POISSON_TARGET_LOOP(0, 1);
        else
            EW_POISSON_TARGET_LOOP(0, 0);
    }
#undef EW_POISSON_TARGET_LOOP
}

/*
 * gaussian_nll (torch.nn.functional.gaussian_nll_loss), x = input, t = target,
 * var = aux (already broadcast to the loss's shape):
 *   v = max(var, eps),  r = x - t,
 *   loss = 0.5 (log v + r**2 / v)  (+ 0.5 log(2 pi) when full)
 *   slope = r / v,  target slope = -r / v,  var slope = 0.5 (1 - r**2 / v) / v.
 * torch clamps a clone of var under no_grad, so its var gradient is the
 * formula's derivative at the clamped v passed straight through, also where
 * var < eps; so is this one.  NaN var stays NaN (var < eps is false), as
 * torch's clamp.  This double form serves float64, float32's var slope (1 -
 * r**2 / v cancels near the best variance) and the float32 elements in doubt:
 * log v and r**2 / v cancel where the loss is near 0 (gaussian_tile below).
 */
FASTLOSS_INLINE EW(pair) EW(gaussian_element)(REAL input, REAL target, REAL variance,
                                              EW_WIDE eps, EW_WIDE constant)
{
    const EW_WIDE v = (EW_WIDE)variance < eps ? eps : (EW_WIDE)variance;
    const EW_WIDE r = (EW_WIDE)input - (EW_WIDE)target;
    const EW_WIDE inverse = 1 / v; /* one division for both (a rounding more than torch's) */
    EW(pair) result;
    result.value = 0.5 * (fastloss_log(v) + r * r * inverse) + constant;
    result.slope = r * inverse;
    return result;
}

#ifdef EW_FLOAT_COMPUTE
/*
 * float32 only: gaussian_nll in float32 arithmetic (16 lanes on AVX-512, against
 * 8 for double with its 11-term log and two double divisions), with a bound on
 * each element's error; the elements the bound cannot clear are computed again,
 * one by one, by gaussian_element in double.  Which elements those are depends on
 * their own inputs alone, so threads never change a bit.  u = 2**-24.
 *   v = max(var, eps): var < eps iff var < eps_up, the least float >= eps, so the
 *       float comparison is torch's; v = eps_up is exact unless eps is not a float
 *       (then a clamped element is in doubt).  v must be a positive normal finite
 *       float (else in doubt: 0, subnormal, negative, infinite, NaN).
 *   r = x - t rounds once: r (1 + d1), |d1| <= u.
 *   slope = r / v: r/v (1 + d1)(1 + d2), within 2u + u**2 = 1.2e-7 of itself (a
 *       subnormal slope within half a subnormal ulp more: what rounding the exact
 *       slope to float gives too).  In doubt only where not finite (r infinite or
 *       NaN, or r / v beyond float's range).
 *   q = slope r = r**2/v (1 + d1)**2 (1 + d2)(1 + d3): within 4.01u q.
 *   L = log v (fastloss_logf_normal): within 1e-7 |L| = 1.68u |L|.
 *   S = L + q rounds once more (u |S|); value = 0.5 S + C with C = 0.5 log(2 pi)
 *       or 0 rounded to float (u C), and the sum rounds (u |value|); since
 *       |S| <= 2 (|value| + C) (1 + 2u),
 * |value - exact| <= 0.5 (1.68u |L| + 4.01u q) + 0.5u |S| + u C + u |value|
 *                 <= 5.0e-8 |L| + 1.2e-7 q + 1.2e-7 C + 1.2e-7 |value|.
 * The budget is 1.8e-6 |value| (the rest of 2e-6 for the weight's product and the
 * margin between |value| and the exact value): in doubt unless
 *   5.0e-8 |L| + 1.2e-7 q + 1.2e-7 C < 1.68e-6 |value|,
 * i.e. 0.030 |L| + 0.072 (q + C) < |value|; the test takes 0.032 and 0.075
 * (computed in float: the margin covers its own roundings), and is false for a
 * NaN or infinite value, which are in doubt too (x or t infinite or NaN, q
 * beyond float's range).  q or L subnormal: absolute errors of a subnormal ulp,
 * which the exact value's own rounding has too.  In doubt is where log v and
 * r**2 / v cancel to under about a tenth of their size: about 3% of elements
 * for standard normal x and t with var uniform in [0.1, 2].
 *
 * Where FMA is native (the AVX2 and AVX-512 paths built by gcc, which defines
 * __FMA__ under their target pragmas) the cancelling sum is compensated instead,
 * so that an element is in doubt only where the terms cancel to under about 1%
 * of log v (about 0.3% of the elements above), at some ten operations more:
 *   x - t = r + r_err exactly (TwoSum); r - slope v = rho exactly (FMA), and
 *   r = slope v + rho, so (r + r_err)**2 / v = p + p_err + slope (rho + 2 r_err)
 *   + (rho**2 + 2 r_err rho + r_err**2) / v with p + p_err = slope r exactly
 *   (FMA).  The last term is under 4u**2 q; q_lo = p_err + slope (rho + 2 r_err)
 *   rounds three times on terms under 4u q: q = p + q_lo within 14u**2 q.
 *   L = hi + lo (fastloss_logf_normal_hilo) within 2e-8 |L|, |lo| <= 0.1 |L|.
 *   hi + p = s3 + s3_err exactly (TwoSum); the tail (s3_err + lo) + q_lo rounds
 *   twice on terms under u |s3| + 0.1 |L| + u q: within 0.2u |L| + 2u**2 (|s3| + q),
 *   1.2e-8 |L| + 1.2e-14 (|L| + q); and S = s3 + tail rounds once (u |S|).
 * So |S - exact| <= 3.2e-8 |L| + 6e-14 q + u |S| (the 6e-14 q also covers
 * 1.2e-14 |L|), and as above
 *   |value - exact| <= 1.6e-8 |L| + 3e-14 q + 1.2e-7 C + 1.2e-7 |value|:
 * in doubt unless 1.6e-8 |L| + 3e-14 q + 1.2e-7 C < 1.68e-6 |value|, i.e.
 * 0.0096 |L| + 1.8e-8 q + 0.072 C < |value|; the test takes 0.01, 1e-7 (of p,
 * within u of q) and 0.075.
 */
FASTLOSS_INLINE EW(narrow) EW(gaussian_narrow_element)(REAL input, REAL target, REAL variance,
                                                       REAL eps_up, int eps_inexact,
                                                       REAL constant)
{
    const int clamped = variance < eps_up;
    const REAL v = clamped ? eps_up : variance;
    const REAL r = input - target;
    const REAL slope = r / v;
#if defined(__FMA__)
    /* the compensated form (see above): L and q as unevaluated sums, added exactly */
    const REAL r_back = r - input;
    const REAL r_err = (input - (r - r_back)) + (-target - r_back); /* TwoSum: x - t = r + r_err */
    const REAL rho = fmaf(-slope, v, r);                           /* r - slope v, exact */
    const REAL p = slope * r;
    const REAL p_err = fmaf(slope, r, -p);                         /* slope r - p, exact */
    const REAL q_lo = p_err + slope * (rho + 2 * r_err);
    REAL log_lo;
    const REAL log_v = fastloss_logf_normal_hilo(v, &log_lo);
    const REAL s3 = log_v + p;
    const REAL s3_back = s3 - log_v;
    const REAL s3_err = (log_v - (s3 - s3_back)) + (p - s3_back);  /* TwoSum */
    const REAL sum = s3 + ((s3_err + log_lo) + q_lo);
    const REAL value = (REAL)0.5 * sum + constant;
    const REAL doubt_size = EW_ABS(log_v) * (REAL)0.01 + p * (REAL)1e-7 + constant * (REAL)0.075;
#else
    const REAL q = slope * r;
    const REAL log_v = fastloss_logf_normal(v);
    const REAL value = (REAL)0.5 * (log_v + q) + constant;
    const REAL doubt_size = EW_ABS(log_v) * (REAL)0.032 + (q + constant) * (REAL)0.075;
#endif
    uint32_t v_bits;
    memcpy(&v_bits, &v, sizeof v_bits);
    /* v in [2**-126, 2**128): one unsigned compare on the bits */
    const int input_doubt = (clamped & eps_inexact) | ((v_bits - 0x00800000u) >= 0x7f000000u);
    EW(narrow) result;
    result.value = value;
    result.slope = slope;
    result.slope_doubt = input_doubt | !(EW_ABS(slope) <= 0x1.fffffep127f);
    result.value_doubt = input_doubt | !(doubt_size < EW_ABS(value));
    return result;
}
#endif

static void EW(gaussian_tile)(const STORE_T *FASTLOSS_RESTRICT pred,
                              const STORE_T *FASTLOSS_RESTRICT target,
                              const STORE_T *FASTLOSS_RESTRICT variance, fastloss_index m,
                              EW_WIDE eps, EW_WIDE constant, REAL eps_up, int eps_inexact,
                              REAL *FASTLOSS_RESTRICT value, REAL *FASTLOSS_RESTRICT slope)
{
#ifdef EW_FLOAT_COMPUTE
    /* the float32 pass, its doubt redone in double (EW_NARROW_TILE) */
    const REAL narrow_constant = (REAL)constant;
    EW_NARROW_TILE(const EW(narrow) f = EW(gaussian_narrow_element)(
                       LOAD(pred, k), LOAD(target, k), LOAD(variance, k), eps_up, eps_inexact,
                       narrow_constant),
                   const EW(pair) g = EW(gaussian_element)(LOAD(pred, k), LOAD(target, k),
                                                           LOAD(variance, k), eps, constant));
#else
    (void)eps_up;
    (void)eps_inexact;
    EW_TILE_LOOPS(const EW(pair) f = EW(gaussian_element)(LOAD(pred, k), LOAD(target, k),
                                                          LOAD(variance, k), eps, constant),
                  (REAL)f.value, (REAL)f.slope);
#endif
}

static void EW(gaussian_var_tile)(const STORE_T *FASTLOSS_RESTRICT pred,
                                  const STORE_T *FASTLOSS_RESTRICT target,
                                  const STORE_T *FASTLOSS_RESTRICT variance, fastloss_index m,
                                  EW_WIDE eps, REAL *FASTLOSS_RESTRICT var_slope)
{
    for (fastloss_index k = 0; k < m; ++k) {
        const EW_WIDE v = (EW_WIDE)LOAD(variance, k) < eps ? eps : (EW_WIDE)LOAD(variance, k);
        const EW_WIDE r = (EW_WIDE)LOAD(pred, k) - (EW_WIDE)LOAD(target, k);
        var_slope[k] = (REAL)(0.5 * (1 - r * r / v) / v);
    }
}

/*
 * pinball (quantile loss), p = pred, y = target, q = factor (the quantile):
 *   r = y - p,  loss = max(q r, (q - 1) r) = r >= 0 ? q r : (q - 1) r,
 *   slope (d/dp) = -q for r > 0, 1 - q for r < 0, and 0.5 - q at r == 0,
 * torch's autograd of torch.maximum(q * r, (q - 1) * r), which halves the
 * gradient between equal arguments; for NaN r that backward passes the whole
 * gradient to both arguments, so the slope is -(q + q - 1) = 1 - 2 q (NaN loss,
 * finite slope, as torch).  The target slope is minus the slope.  In REAL: r
 * and each product round once.
 */
static void EW(pinball_tile)(const STORE_T *FASTLOSS_RESTRICT pred,
                             const STORE_T *FASTLOSS_RESTRICT target,
                             const STORE_T *FASTLOSS_RESTRICT quantile, fastloss_index m,
                             REAL *FASTLOSS_RESTRICT value, REAL *FASTLOSS_RESTRICT slope)
{
    EW_TILE_LOOPS(const REAL q = LOAD(quantile, k); const REAL r = LOAD(target, k) - LOAD(pred, k),
                  r >= 0 ? q * r : (q - 1) * r,
                  r > 0 ? -q : (r < 0 ? 1 - q : (r == 0 ? (REAL)0.5 - q : 1 - 2 * q)));
}

/*
 * soft_margin (torch.nn.functional.soft_margin_loss), x = input, y = target:
 *   z = y x,  loss = log(1 + exp(-z)) = max(-z, 0) + log1p(e),  e = exp(-|z|),
 *   slope (d/dx) = -y sigmoid(-z) = -y (z >= 0 ? e / (1 + e) : 1 / (1 + e)).
 * Every term is >= 0 and exp never sees a positive argument, so nothing cancels
 * or overflows.  z = y x is exact for labels of +-1 (torch's use); for other
 * labels its rounding would cost float32 a relative u |z| where the loss is
 * about exp(-z), so a tile with any |y| != 1 is computed in WIDE.  At an
 * infinite z the slope is its limit (-y or 0; torch's formula gives NaN for
 * z = -inf).
 */
#define EW_SOFT_MARGIN_ELEMENT(T, EXP)                                                      \
    const T z = (T)LOAD(target, k) * (T)LOAD(pred, k);                                      \
    const T e = EXP(z < 0 ? z : -z);                                                        \
    const T tail = z >= 0 ? e / (1 + e) : 1 / (1 + e);                                      \
    (void)tail /* the value-only loop does not use it; the compiler drops it there */

static void EW(soft_margin_tile)(const STORE_T *FASTLOSS_RESTRICT pred,
                                 const STORE_T *FASTLOSS_RESTRICT target, fastloss_index m,
                                 REAL *FASTLOSS_RESTRICT value, REAL *FASTLOSS_RESTRICT slope)
{
    int labels = 1;
    for (fastloss_index k = 0; k < m; ++k)
        labels &= (LOAD(target, k) == 1) | (LOAD(target, k) == -1);
    if (labels)
        EW_TILE_LOOPS(EW_SOFT_MARGIN_ELEMENT(REAL, EW_EXP_NONPOSITIVE),
                      (z < 0 ? -z : 0) + EW_LOG1P_UNIT(e), -LOAD(target, k) * tail);
    else
        EW_TILE_LOOPS(EW_SOFT_MARGIN_ELEMENT(EW_WIDE, EW_WIDE_EXP_NONPOSITIVE),
                      (REAL)((z < 0 ? -z : 0) + EW_WIDE_LOG1P_UNIT(e)),
                      (REAL)(-(EW_WIDE)LOAD(target, k) * tail));
}

#undef EW_SOFT_MARGIN_ELEMENT

/* ---------------------------------------------------------------------------
 * The preference and distillation terms of issue 16: bradley_terry, kl_div and
 * dpo.  Their arguments are differences of inputs (chosen - rejected, log t - x,
 * four log-probabilities), which float32 arithmetic would round before the loss
 * could keep them: the double forms below compute everything in WIDE from the
 * exact inputs and round once (float64, and the elements in doubt); float32
 * forms the differences in double and computes the rest in float
 * (logistic_narrow_element, kl_div_narrow_element; dpo's hinge and ipo, a few
 * operations, stay in double).
 * ------------------------------------------------------------------------- */

/*
 * softplus(-z) = -log sigmoid(z) = max(-z, 0) + log1p(exp(-|z|)) and
 * sigmoid(-z) = (z >= 0 ? e / (1 + e) : 1 / (1 + e)), e = exp(-|z|): exp never
 * sees a positive argument, and each form is a sum of terms >= 0.  NaN z gives a
 * NaN value and slope; z = +-inf the limits (0 and 0, inf and 1).
 */
FASTLOSS_INLINE EW_WIDE EW(softplus_minus)(EW_WIDE z, EW_WIDE e)
{
    return (z < 0 ? -z : 0) + EW_WIDE_LOG1P_UNIT(e);
}

FASTLOSS_INLINE EW_WIDE EW(sigmoid_minus)(EW_WIDE z, EW_WIDE e)
{
    return z >= 0 ? e / (1 + e) : 1 / (1 + e);
}

/*
 * bradley_terry (the reward model's loss; torchrl's reward_model_loss, TRL's
 * RewardTrainer), c = chosen = pred, r = rejected = target, m = margin = factor:
 *   z = c - r - m,  loss = -log sigmoid(z) = softplus(-z),
 *   d/dc = -sigmoid(-z),  d/dr = sigmoid(-z)  (minus the slope).
 * c - r is exact in double for float32 inputs, so z rounds once.  This double
 * form serves float64, and the float32 elements the float pass below cannot
 * clear.
 */
FASTLOSS_INLINE EW_WIDE EW(bradley_terry_z)(REAL chosen, REAL rejected, REAL margin)
{
    return ((EW_WIDE)chosen - (EW_WIDE)rejected) - (EW_WIDE)margin;
}

FASTLOSS_INLINE EW(pair) EW(bradley_terry_element)(REAL chosen, REAL rejected, REAL margin)
{
    const EW_WIDE z = EW(bradley_terry_z)(chosen, rejected, margin);
    const EW_WIDE e = EW_WIDE_EXP_NONPOSITIVE(-EW_WIDE_ABS(z));
    EW(pair) result;
    result.value = EW(softplus_minus)(z, e);
    result.slope = -EW(sigmoid_minus)(z, e);
    return result;
}

#ifdef EW_FLOAT_COMPUTE
/* float32 only: a + b = sum + *error exactly where a, b and sum are finite (Knuth's
 * TwoSum: no branch, no product for gcc to contract); an infinite or NaN operand or
 * sum makes *error NaN or infinite. */
FASTLOSS_INLINE REAL EW(two_sum)(REAL a, REAL b, REAL *error)
{
    const REAL sum = a + b;
    const REAL b_part = sum - a;
    *error = (a - (sum - b_part)) + (b - b_part);
    return sum;
}

/* float32 only: z in double split as hi = z rounded to float, *lo = z - hi (exact in
 * double, |lo| <= 2**-24 |hi|, rounded to float: within 2**-48 |hi|). */
FASTLOSS_INLINE REAL EW(split_wide)(EW_WIDE z, REAL *lo)
{
    const REAL hi = (REAL)z;
    *lo = (REAL)(z - (EW_WIDE)hi);
    return hi;
}

/* float32 only: whether a split's lo is beyond logistic_narrow_element's bound L =
 * 2**-17 + 2**-22 |hi|, or NaN. */
FASTLOSS_INLINE int EW(split_beyond_bound)(REAL hi, REAL lo)
{
    return !(EW_ABS(lo) <= 0x1p-17f + 0x1p-22f * EW_ABS(hi));
}

/*
 * float32 only: bradley_terry's z = c - r - m split in float, without double: TwoSum
 * gives c - r = d + d_error exactly and, with a margin, d - m = hi + m_error exactly,
 * so z = hi + d_error + m_error, and lo = d_error + m_error rounds once (within u |lo|:
 * 2**-40 |hi| where |lo| <= L, the bound of logistic_narrow_element).  Without a margin
 * (with_margin 0: the tile's margins all zero, z = c - r) hi and lo are those of the
 * double split (hi = c - r rounded, lo its exact error).  *doubt is set where |lo| > L
 * (a margin that cancels c - r: |lo| can then reach half an ulp of c - r while hi is
 * small) or lo is NaN (an overflow or an infinite input): logistic_narrow_element's
 * bound needs |lo| <= L, and those elements are computed again in double.
 */
FASTLOSS_INLINE REAL EW(bradley_terry_split)(REAL chosen, REAL rejected, REAL margin,
                                             int with_margin, REAL *lo, int *doubt)
{
    REAL d_error, m_error = 0;
    REAL hi = EW(two_sum)(chosen, -rejected, &d_error);
    if (with_margin)
        hi = EW(two_sum)(hi, -margin, &m_error);
    *lo = d_error + m_error;
    *doubt = EW(split_beyond_bound)(hi, *lo);
    return hi;
}

/*
 * float32 only: the logistic terms of bradley_terry and of dpo's sigmoid loss in
 * float32 arithmetic (16 lanes on AVX-512; in double, exp, log1p and the sigmoid's
 * division on 8 lanes cost three times bce_with_logits), from their argument z
 * split as z = hi + lo, both floats (z is a difference of inputs that float32 would
 * round where the loss needs it exactly: the loss is about exp(-z), so z's error is
 * the loss's relative error).  The callers' splits (EW(split_wide),
 * EW(bradley_terry_split)) give z within 2**-40 |hi| of hi + lo and, unless they
 * flag split_doubt, |lo| <= L = 2**-17 + 2**-22 |hi| (a rounded split has |lo| <=
 * 2**-24 |hi|); the functions of z are those of hi corrected to first order in lo:
 *   softplus(-z) = softplus(-hi) - s lo,     s = sigmoid(-hi), c = sigmoid(hi) = 1 - s,
 *   softplus(z)  = softplus(hi) + c lo,
 *   sigmoid(-z)  = s - s c lo,
 * the neglected terms under c lo**2 of each (relative: the second derivatives are s c
 * times at most 1, and softplus(-hi) >= s), 8.1e-10 for |hi| <= 87 (L <= 2.84e-5),
 * and under exp(hi) (2**-17 + 2**-22 |hi|)**2 below -87.  With
 * e = exp(-|hi|) and i = 1 / (1 + e), s and c are e i and i per the sign of hi
 * (exp never sees a positive argument), and softplus(-hi) = max(-hi, 0) + log1p(e),
 * a sum of terms >= 0 (bce_value_plain's form).  Errors, as bce's and
 * focal_narrow_element's (u = 2**-24): e within 2.6e-7, i within 2u, e i within
 * 4.4e-7; log1p(e) within 5.6e-7; the correction's roundings are under u of a term
 * under L <= 2.84e-5 of the result (hi >= 0: s <= softplus(-hi); hi < 0:
 * softplus(-hi) >= max(ln 2, -hi)); the sums round once each.  So the value is
 * within 7e-7 of itself, and sigmoid(-z) within 5e-7: the loss and the slope of
 * bradley_terry (and of dpo without label smoothing: beta's and the scale's products
 * add a rounding each) meet the 2e-6 budget with room, with no doubt.  With label
 * smoothing ls, dpo's value (1 - ls) softplus(-z) + ls softplus(z) is a sum of terms
 * >= 0 (its coefficients rounded to float: u of each term), and its slope
 * beta (ls - sigmoid(-z)) cancels where sigmoid(-z) is near ls: in doubt where
 * 5e-7 sigmoid(-z) + 6e-8 ls (ls's rounding) exceeds 1.5e-6 |ls - sigmoid(-z)|
 * (bce_slope_in_doubt's test with 0.34 for its 0.27).  In doubt also: hi above 87
 * (exp's flush to 0 would lose a loss of about exp(-z), and the slope), hi infinite
 * or NaN, with label smoothing, hi below -87 (softplus(z) is then about exp(z)), and
 * split_doubt; those elements are computed again in double.
 */
FASTLOSS_INLINE EW(narrow) EW(logistic_narrow_element)(REAL hi, REAL lo, int split_doubt,
                                                       int smoothed, REAL keep, REAL smoothing,
                                                       REAL slope_scale)
{
    const REAL e = EW_EXP_NONPOSITIVE(-EW_ABS(hi));
    const REAL inverse = 1 / (1 + e); /* sigmoid(|hi|) */
    const REAL q = e * inverse;       /* sigmoid(-|hi|) */
    const REAL s = hi >= 0 ? q : inverse;
    const REAL c = hi >= 0 ? inverse : q;
    const REAL log1p_e = EW_LOG1P_UNIT(e);
    const REAL minus = ((hi < 0 ? -hi : 0) + log1p_e) - s * lo; /* softplus(-z) */
    const REAL sigmoid_minus = s - (s * c) * lo;                 /* sigmoid(-z) */
    EW(narrow) result;
    if (smoothed) {
        const REAL plus = ((hi > 0 ? hi : 0) + log1p_e) + c * lo; /* softplus(z) */
        const REAL bracket = smoothing - sigmoid_minus;
        result.value = keep * minus + smoothing * plus;
        result.slope = slope_scale * bracket;
        result.value_doubt = split_doubt | !(EW_ABS(hi) <= (REAL)87);
        result.slope_doubt = result.value_doubt |
                             (sigmoid_minus * (REAL)0.34 + smoothing * (REAL)0.04 >
                              EW_ABS(bracket));
    } else {
        result.value = minus;
        result.slope = -slope_scale * sigmoid_minus;
        result.value_doubt = result.slope_doubt =
            split_doubt | !((hi <= (REAL)87) & (hi >= -0x1p127f));
    }
    return result;
}
#endif

static void EW(bradley_terry_tile)(const STORE_T *FASTLOSS_RESTRICT chosen,
                                   const STORE_T *FASTLOSS_RESTRICT rejected,
                                   const STORE_T *FASTLOSS_RESTRICT margin, fastloss_index m,
                                   REAL *FASTLOSS_RESTRICT value, REAL *FASTLOSS_RESTRICT slope)
{
#ifdef EW_FLOAT_COMPUTE
    /* a tile whose margins are all zero (the default margin) skips the second TwoSum */
    int margin_zero = 1;
    for (fastloss_index k = 0; k < m; ++k)
        margin_zero &= LOAD(margin, k) == 0;
#define EW_BRADLEY_TERRY_NARROW(WITH_MARGIN)                                                \
    EW_NARROW_TILE(REAL lo; int split_doubt;                                                \
                   const REAL hi = EW(bradley_terry_split)(LOAD(chosen, k), LOAD(rejected, k), \
                                                           LOAD(margin, k), WITH_MARGIN,    \
                                                           &lo, &split_doubt);              \
                   const EW(narrow) f =                                                     \
                       EW(logistic_narrow_element)(hi, lo, split_doubt, 0, 1, 0, 1),        \
                   const EW(pair) g = EW(bradley_terry_element)(LOAD(chosen, k),            \
                                                                LOAD(rejected, k),          \
                                                                LOAD(margin, k)))
    if (margin_zero)
        EW_BRADLEY_TERRY_NARROW(0);
    else
        EW_BRADLEY_TERRY_NARROW(1);
#undef EW_BRADLEY_TERRY_NARROW
#else
    EW_TILE_LOOPS(const EW(pair) f = EW(bradley_terry_element)(LOAD(chosen, k),
                                                               LOAD(rejected, k),
                                                               LOAD(margin, k)),
                  (REAL)f.value, (REAL)f.slope);
#endif
}

/*
 * kl_div (torch.nn.functional.kl_div), x = input (log-probabilities), t = target:
 *   log_target 0:  torch's xlogy(t, t) - t x, computed as t (log t - x), and
 *                  0 - t x where t == 0 (0 log 0 = 0; NaN for an infinite x, as
 *                  torch's 0 * inf); t < 0 gives NaN (log t), as torch's xlogy.
 *                  d/dx = -t;  d/dt = log t + 1 - x, and NaN at t == 0, where
 *                  torch's autograd of xlogy(t, t) forms t / t.
 *   log_target 1:  w = exp(t),  loss = w (t - x),  d/dx = -w,
 *                  d/dt = w (t - x + 1)  (NaN at t = -inf, 0 * inf, as torch).
 * The factored form t (log t - x) subtracts no large products where log t and x
 * agree (near convergence), where torch's difference of products cancels; in
 * double, and rounded once, for float32.  The rounding of log t itself remains,
 * an error of u |t log t| that neither this nor NumPy's log avoids
 * (docs/accuracy.rst, "Results whose terms cancel").  Terms are of either sign
 * (the sum, a divergence, is not): the sign test says so, and a float32 sum
 * that cancels is redone in double (elementwise.c).
 */
FASTLOSS_INLINE EW(pair) EW(kl_div_element)(REAL input, REAL target, int log_target)
{
    const EW_WIDE x = input, t = target;
    EW(pair) result;
    if (log_target) {
        const EW_WIDE w = fastloss_exp(t), d = t - x;
        result.value = w * d;
        result.slope = -w;
    } else {
        result.value = t == 0 ? 0 - t * x : t * (fastloss_log(t) - x);
        result.slope = -t;
    }
    return result;
}

FASTLOSS_INLINE EW_WIDE EW(kl_div_target_slope)(REAL input, REAL target, int log_target)
{
    const EW_WIDE x = input, t = target;
    if (log_target)
        return fastloss_exp(t) * ((t - x) + 1);
    return t == 0 ? NAN : (fastloss_log(t) + 1) - x;
}

#ifdef EW_FLOAT_COMPUTE
/*
 * float32 only: kl_div in float32 arithmetic (in double, its log on 8 lanes cost
 * twice the rest of the call), with a bound on each element's error; the elements
 * it cannot clear are computed again in double (kl_div_element).  u = 2**-24.
 *   log_target 0:  d = log t - x, value = t d, slope = -t (exact).  t must be a
 *       positive normal finite float (else in doubt: 0, subnormal, negative,
 *       infinite, NaN keep the double path's semantics).  Where FMA is native,
 *       log t = hi + lo within 2e-8 |log t| (fastloss_logf_normal_hilo), and
 *       d = (hi - x) + lo rounds twice: |d - exact| <= 2e-8 |log t| + 1.2e-7 |d|;
 *       elsewhere log t within 1e-7 |log t| (fastloss_logf_normal), and
 *       |d - exact| <= 1e-7 |log t| + 6e-8 |d|.  The product with t rounds once
 *       more.  Budget 1.8e-6 |value|: in doubt unless 2e-8 |log t| < 1.6e-6 |d|, i.e.
 *       0.0125 |log t| < |d| (the test takes 0.012), or without FMA
 *       0.0625 |log t| < |d| (0.06): where log t and x agree to about 1% (6%).  The
 *       strict compare is false for NaN d; an infinite x gives an infinite d and
 *       value, as the double form.
 *   log_target 1:  w = exp(t) within 2 ulp (fastloss_expf), d = t - x and w d round
 *       once each: the value within 3.6e-7 and the slope -w within 2.4e-7, no
 *       cancellation.  In doubt where t is outside [-86, 88] or NaN: below, w is
 *       subnormal or 0 (fastloss_expf keeps gradual underflow) and loses relative
 *       accuracy, while w d may still be a normal float; above, w overflows.
 */
FASTLOSS_INLINE EW(narrow) EW(kl_div_narrow_element)(REAL x, REAL t, int log_target)
{
    EW(narrow) result;
    if (log_target) {
        const REAL w = fastloss_expf(t);
        result.value = w * (t - x);
        result.slope = -w;
        result.value_doubt = result.slope_doubt = !((t >= (REAL)-86) & (t <= (REAL)88));
        return result;
    }
#if defined(__FMA__)
    REAL log_lo;
    const REAL log_t = fastloss_logf_normal_hilo(t, &log_lo);
    const REAL d = (log_t - x) + log_lo;
    const REAL doubt_size = EW_ABS(log_t) * (REAL)0.012;
#else
    const REAL log_t = fastloss_logf_normal(t);
    const REAL d = log_t - x;
    const REAL doubt_size = EW_ABS(log_t) * (REAL)0.06;
#endif
    uint32_t t_bits;
    memcpy(&t_bits, &t, sizeof t_bits);
    /* t in [2**-126, 2**128): one unsigned compare on the bits */
    const int input_doubt = (t_bits - 0x00800000u) >= 0x7f000000u;
    result.value = t * d;
    result.slope = -t;
    result.value_doubt = input_doubt | !(doubt_size < EW_ABS(d));
    result.slope_doubt = 0;
    return result;
}
#endif

static void EW(kl_div_tile)(const STORE_T *FASTLOSS_RESTRICT input,
                            const STORE_T *FASTLOSS_RESTRICT target, fastloss_index m,
                            int log_target, REAL *FASTLOSS_RESTRICT value,
                            REAL *FASTLOSS_RESTRICT slope)
{
#ifdef EW_FLOAT_COMPUTE
#define EW_KL_NARROW(LOG_TARGET)                                                            \
    EW_NARROW_TILE(const EW(narrow) f = EW(kl_div_narrow_element)(LOAD(input, k),           \
                                                                  LOAD(target, k), LOG_TARGET), \
                   const EW(pair) g = EW(kl_div_element)(LOAD(input, k), LOAD(target, k),  \
                                                         LOG_TARGET))
    if (log_target)
        EW_KL_NARROW(1);
    else
        EW_KL_NARROW(0);
#undef EW_KL_NARROW
    return;
#endif
    if (log_target)
        EW_TILE_LOOPS(const EW(pair) f = EW(kl_div_element)(LOAD(input, k), LOAD(target, k), 1),
                      (REAL)f.value, (REAL)f.slope);
    else
        EW_TILE_LOOPS(const EW(pair) f = EW(kl_div_element)(LOAD(input, k), LOAD(target, k), 0),
                      (REAL)f.value, (REAL)f.slope);
}

static void EW(kl_div_target_tile)(const STORE_T *FASTLOSS_RESTRICT input,
                                   const STORE_T *FASTLOSS_RESTRICT target, fastloss_index m,
                                   int log_target, REAL *FASTLOSS_RESTRICT target_slope)
{
    if (log_target)
        for (fastloss_index k = 0; k < m; ++k)
            target_slope[k] = (REAL)EW(kl_div_target_slope)(LOAD(input, k), LOAD(target, k), 1);
    else
        for (fastloss_index k = 0; k < m; ++k)
            target_slope[k] = (REAL)EW(kl_div_target_slope)(LOAD(input, k), LOAD(target, k), 0);
}

/*
 * dpo (Rafailov et al. 2023; TRL's DPOTrainer.dpo_loss), pc, pr = the policy's
 * sequence log-probabilities of the chosen and rejected answers (pred, target),
 * rc, rr = the reference model's (aux, aux2), beta > 0, ls = label_smoothing:
 *   h = (pc - pr) - (rc - rr),  z = beta h,
 *   sigmoid:  loss = (1 - ls) softplus(-z) + ls softplus(z)
 *                  = -(1 - ls) log sigmoid(z) - ls log sigmoid(-z)  (cDPO),
 *             d/dh = beta (ls - sigmoid(-z))
 *   hinge:    loss = relu(1 - z),  d/dh = -beta where 1 - z > 0, else 0
 *             (torch's relu backward: 0 at the kink, -beta for NaN)
 *   ipo:      loss = (h - 1 / (2 beta))**2,  d/dh = 2 (h - 1 / (2 beta))
 * d/dpc = d/dh, d/dpr = d/drc = -d/dh, d/drr = d/dh.  softplus(z) =
 * softplus(-z) + z, written from e = exp(-|z|) as max(z, 0) + log1p(e).  The
 * terms are >= 0.  h is computed in double (each difference of float32 values
 * exact), so float32 rounds its terms once.
 */
FASTLOSS_INLINE EW_WIDE EW(dpo_h)(REAL policy_chosen, REAL policy_rejected,
                                  REAL reference_chosen, REAL reference_rejected)
{
    return ((EW_WIDE)policy_chosen - (EW_WIDE)policy_rejected) -
           ((EW_WIDE)reference_chosen - (EW_WIDE)reference_rejected);
}

FASTLOSS_INLINE EW(pair) EW(dpo_element)(REAL policy_chosen, REAL policy_rejected,
                                         REAL reference_chosen, REAL reference_rejected,
                                         EW_WIDE beta, int loss_type, EW_WIDE smoothing,
                                         EW_WIDE ipo_target)
{
    const EW_WIDE h = EW(dpo_h)(policy_chosen, policy_rejected, reference_chosen,
                                reference_rejected);
    EW(pair) result;
    if (loss_type == FASTLOSS_DPO_SIGMOID) {
        const EW_WIDE z = beta * h;
        const EW_WIDE e = EW_WIDE_EXP_NONPOSITIVE(-EW_WIDE_ABS(z));
        const EW_WIDE log1p_e = EW_WIDE_LOG1P_UNIT(e);
        const EW_WIDE minus = (z < 0 ? -z : 0) + log1p_e; /* softplus(-z) */
        const EW_WIDE plus = (z > 0 ? z : 0) + log1p_e;   /* softplus(z) */
        result.value = (1 - smoothing) * minus + smoothing * plus;
        result.slope = beta * (smoothing - EW(sigmoid_minus)(z, e));
    } else if (loss_type == FASTLOSS_DPO_HINGE) {
        const EW_WIDE u = 1 - beta * h;
        result.value = u < 0 ? 0 : u;
        result.slope = u <= 0 ? 0 : -beta;
    } else {
        const EW_WIDE d = h - ipo_target;
        result.value = d * d;
        result.slope = 2 * d;
    }
    return result;
}

#if defined(EW_FLOAT_COMPUTE) && defined(__FMA__)
/*
 * float32 only, where FMA is native: dpo's z = beta h split in float, without double.
 * TwoSum gives pc - pr = a + a_error, rc - rr = b + b_error and a - b = h_hi + h_error
 * exactly; t = a_error - b_error and h_lo = h_error + t round once each, so h_hi + h_lo
 * is h within u (|t| + |h_lo|).  beta = beta_hi + beta_low within 2**-48 beta (beta_hi
 * normal: the caller's 2**-60 <= beta <= 2**60); then hi = beta_hi h_hi, its exact error
 * by FMA, and lo = beta_hi h_lo + beta_low h_hi + that error (two FMAs, u |lo| each;
 * beta_low h_lo, under 2**-24 beta |h_lo|, left out).  With |h_lo| <= u |h_hi| + 1.0001
 * |t|, z's error is under 3 beta u |t| + 2**-46 |z| (+ u L, L = logistic_narrow_element's
 * bound on lo): *doubt is set where beta_hi |t| > 2**-10 (error_limit = 2**-10 /
 * beta_hi: then the error is under 1.8e-10, a relative error of the loss and the slope
 * under 1.8e-10), where |lo| > L, and where anything is NaN (an infinite input, an
 * overflow).  |t| is half an ulp of pc - pr and rc - rr at most, so only differences
 * of log-probabilities beyond about 2**14 / beta go back to double.
 */
FASTLOSS_INLINE REAL EW(dpo_split)(REAL policy_chosen, REAL policy_rejected,
                                   REAL reference_chosen, REAL reference_rejected,
                                   REAL beta_hi, REAL beta_low, REAL error_limit, REAL *lo,
                                   int *doubt)
{
    REAL a_error, b_error, h_error;
    const REAL a = EW(two_sum)(policy_chosen, -policy_rejected, &a_error);
    const REAL b = EW(two_sum)(reference_chosen, -reference_rejected, &b_error);
    const REAL h_hi = EW(two_sum)(a, -b, &h_error);
    const REAL t = a_error - b_error;
    const REAL h_lo = h_error + t;
    const REAL hi = beta_hi * h_hi;
    *lo = fmaf(beta_hi, h_lo, fmaf(beta_low, h_hi, fmaf(beta_hi, h_hi, -hi)));
    *doubt = EW(split_beyond_bound)(hi, *lo) | !(EW_ABS(t) <= error_limit);
    return hi;
}
#endif

#define EW_DPO_LOOPS(TYPE)                                                                  \
    EW_TILE_LOOPS(const EW(pair) f = EW(dpo_element)(LOAD(policy_chosen, k),                \
                                                     LOAD(policy_rejected, k),              \
                                                     LOAD(reference_chosen, k),             \
                                                     LOAD(reference_rejected, k), beta,     \
                                                     TYPE, smoothing, ipo_target),          \
                  (REAL)f.value, (REAL)f.slope)

static void EW(dpo_tile)(const STORE_T *FASTLOSS_RESTRICT policy_chosen,
                         const STORE_T *FASTLOSS_RESTRICT policy_rejected,
                         const STORE_T *FASTLOSS_RESTRICT reference_chosen,
                         const STORE_T *FASTLOSS_RESTRICT reference_rejected, fastloss_index m,
                         EW_WIDE beta, int loss_type, EW_WIDE smoothing, EW_WIDE ipo_target,
                         REAL *FASTLOSS_RESTRICT value, REAL *FASTLOSS_RESTRICT slope)
{
#ifdef EW_FLOAT_COMPUTE
    /* the sigmoid loss in float32 (logistic_narrow_element), its doubt redone in double */
    if (loss_type == FASTLOSS_DPO_SIGMOID) {
        const REAL keep = (REAL)(1 - smoothing), narrow_smoothing = (REAL)smoothing;
        const REAL narrow_beta = (REAL)beta;
#ifdef __FMA__
        /* the split in float (dpo_split) where beta's is exact enough (beta_hi normal) */
        const REAL beta_low = (REAL)(beta - (EW_WIDE)narrow_beta);
        const REAL error_limit = 0x1p-10f / narrow_beta;
        const int float_split = beta >= 0x1p-60 && beta <= 0x1p60;
#define EW_DPO_FLOAT_SPLIT(SMOOTHED)                                                        \
    EW_DPO_NARROW(REAL lo; int split_doubt;                                                 \
                  const REAL hi = EW(dpo_split)(LOAD(policy_chosen, k),                     \
                                                LOAD(policy_rejected, k),                   \
                                                LOAD(reference_chosen, k),                  \
                                                LOAD(reference_rejected, k), narrow_beta,   \
                                                beta_low, error_limit, &lo, &split_doubt),  \
                  split_doubt, SMOOTHED)
#else
        const int float_split = 0;
#define EW_DPO_FLOAT_SPLIT(SMOOTHED) EW_DPO_WIDE_SPLIT(SMOOTHED)
#endif
#define EW_DPO_WIDE_SPLIT(SMOOTHED)                                                         \
    EW_DPO_NARROW(REAL lo;                                                                  \
                  const REAL hi = EW(split_wide)(                                           \
                      beta * EW(dpo_h)(LOAD(policy_chosen, k), LOAD(policy_rejected, k),    \
                                       LOAD(reference_chosen, k),                           \
                                       LOAD(reference_rejected, k)),                        \
                      &lo),                                                                 \
                  0, SMOOTHED)
#define EW_DPO_NARROW(SPLIT, SPLIT_DOUBT, SMOOTHED)                                         \
    EW_NARROW_TILE(SPLIT;                                                                   \
                   const EW(narrow) f = EW(logistic_narrow_element)(                        \
                       hi, lo, SPLIT_DOUBT, SMOOTHED, keep, narrow_smoothing, narrow_beta), \
                   const EW(pair) g = EW(dpo_element)(                                      \
                       LOAD(policy_chosen, k), LOAD(policy_rejected, k),                    \
                       LOAD(reference_chosen, k), LOAD(reference_rejected, k), beta,        \
                       FASTLOSS_DPO_SIGMOID, smoothing, ipo_target))
        if (float_split && smoothing != 0)
            EW_DPO_FLOAT_SPLIT(1);
        else if (float_split)
            EW_DPO_FLOAT_SPLIT(0);
        else if (smoothing != 0)
            EW_DPO_WIDE_SPLIT(1);
        else
            EW_DPO_WIDE_SPLIT(0);
#undef EW_DPO_FLOAT_SPLIT
#undef EW_DPO_WIDE_SPLIT
#undef EW_DPO_NARROW
        return;
    }
#endif
    switch (loss_type) {
    case FASTLOSS_DPO_SIGMOID:
        EW_DPO_LOOPS(FASTLOSS_DPO_SIGMOID);
        break;
    case FASTLOSS_DPO_HINGE:
        EW_DPO_LOOPS(FASTLOSS_DPO_HINGE);
        break;
    default:
        EW_DPO_LOOPS(FASTLOSS_DPO_IPO);
        break;
    }
}

#undef EW_DPO_LOOPS

/* ---------------------------------------------------------------------------
 * The runner
 * ------------------------------------------------------------------------- */

/* The lanes of the negative terms' sum in EW(block): one 64-byte vector of REAL. */
#define EW_NEGATIVE_LANES ((int)(64 / sizeof(REAL)))

/* What every block of one call shares; set up once before the parallel loop. */
typedef struct EW(call_s) {
    int loss;                      /* enum fastloss_elementwise_loss (smooth_l1, beta 0: l1) */
    REAL threshold, half_inv_threshold, inv_threshold; /* huber, smooth_l1 */
    int threshold_divide;          /* smooth_l1: 1 / beta overflows REAL: divide by beta */
    EW_WIDE alpha_pos, alpha_neg, gamma; /* sigmoid_focal: a_t = alpha_pos y + alpha_neg (1 - y) */
    int gamma_kind;                /* sigmoid_focal: EW_FOCAL_GAMMA_* */
    EW_WIDE margin;                /* margin_ranking */
    int log_input, full;           /* poisson_nll (full also gaussian_nll) */
    EW_WIDE eps;                   /* poisson_nll, gaussian_nll */
    EW_WIDE constant;              /* gaussian_nll: 0.5 log(2 pi) when full, else 0 */
    REAL eps_up;                   /* gaussian_nll: the least REAL >= eps (float32 pass) */
    int eps_inexact;               /* gaussian_nll: eps_up != eps */
    int log_target;                /* kl_div */
    EW_WIDE beta, smoothing, ipo_target; /* dpo: beta, label_smoothing, 1 / (2 beta) */
    int dpo_type;                  /* dpo: enum fastloss_dpo_loss_type */
    const STORE_T *pred, *target, *aux, *aux2;
    const STORE_T *weight, *factor;
    fastloss_index weight_period, factor_period;
    const double *grad_output;     /* per element (reduction none), or NULL: use scale */
    REAL scale;                    /* grad_output, divided by n for the mean */
    int want_sum;
    int compensated;               /* the sum compensated (fastloss_ew_outputs) */
    int stream;                    /* the gradients by streaming stores (elementwise_internal.h) */
    STORE_T *loss_per_element, *grad, *grad_target, *grad_aux, *grad_aux2;
} EW(call);

/* Whether the loss's gradient w.r.t. target is something else than minus its slope. */
static int EW(own_target_slope)(int loss)
{
    return loss == FASTLOSS_LOSS_BCE_WITH_LOGITS || loss == FASTLOSS_LOSS_POISSON_NLL ||
           loss == FASTLOSS_LOSS_KL_DIV;
}

/* The value and slope of m elements from `start`, per the call's loss (factor:
 * the periodic factor's values for these elements, or NULL). */
static void EW(compute_tile)(const EW(call) *call, fastloss_index start, fastloss_index m,
                             const STORE_T *factor, REAL *value, REAL *slope, int *wide_mode)
{
    const STORE_T *pred = call->pred + start, *target = call->target + start;
    switch (call->loss) {
    case FASTLOSS_LOSS_MSE:
        EW(mse_tile)(pred, target, m, value, slope);
        break;
    case FASTLOSS_LOSS_L1:
        EW(l1_tile)(pred, target, m, value, slope);
        break;
    case FASTLOSS_LOSS_HUBER:
        EW(huber_tile)(pred, target, m, call->threshold, value, slope);
        break;
    case FASTLOSS_LOSS_SMOOTH_L1:
        if (call->threshold_divide)
            EW(smooth_l1_divided_tile)(pred, target, m, call->threshold, value, slope);
        else
            EW(smooth_l1_tile)(pred, target, m, call->threshold, call->half_inv_threshold,
                               call->inv_threshold, value, slope);
        break;
    case FASTLOSS_LOSS_BCE_WITH_LOGITS:
        EW(bce_tile)(pred, target, factor, m, value, slope, wide_mode);
        break;
    case FASTLOSS_LOSS_SIGMOID_FOCAL:
        EW(focal_tile)(pred, target, m, call->alpha_pos, call->alpha_neg, call->gamma,
                       call->gamma_kind, call->alpha_pos >= 0 && call->alpha_neg >= 0, value,
                       slope, wide_mode);
        break;
    case FASTLOSS_LOSS_MARGIN_RANKING:
        EW(margin_ranking_tile)(pred, target, call->aux + start, m, call->margin, value, slope);
        break;
    case FASTLOSS_LOSS_POISSON_NLL:
        EW(poisson_tile)(pred, target, m, call->eps, call->log_input, call->full, value, slope);
        break;
    case FASTLOSS_LOSS_GAUSSIAN_NLL:
        EW(gaussian_tile)(pred, target, call->aux + start, m, call->eps, call->constant,
                          call->eps_up, call->eps_inexact, value, slope);
        break;
    case FASTLOSS_LOSS_SOFT_MARGIN:
        EW(soft_margin_tile)(pred, target, m, value, slope);
        break;
    case FASTLOSS_LOSS_BRADLEY_TERRY:
        EW(bradley_terry_tile)(pred, target, factor, m, value, slope);
        break;
    case FASTLOSS_LOSS_KL_DIV:
        EW(kl_div_tile)(pred, target, m, call->log_target, value, slope);
        break;
    case FASTLOSS_LOSS_DPO:
        EW(dpo_tile)(pred, target, call->aux + start, call->aux2 + start, m, call->beta,
                     call->dpo_type, call->smoothing, call->ipo_target, value, slope);
        break;
    default: /* FASTLOSS_LOSS_PINBALL */
        EW(pinball_tile)(pred, target, factor, m, value, slope);
        break;
    }
}

/* The slopes w.r.t. target of the losses whose own_target_slope is true. */
static void EW(compute_target_tile)(const EW(call) *call, fastloss_index start, fastloss_index m,
                                    const STORE_T *factor, REAL *target_slope)
{
    if (call->loss == FASTLOSS_LOSS_BCE_WITH_LOGITS)
        EW(bce_target_tile)(call->pred + start, factor, m, target_slope);
    else if (call->loss == FASTLOSS_LOSS_KL_DIV)
        EW(kl_div_target_tile)(call->pred + start, call->target + start, m, call->log_target,
                               target_slope);
    else /* FASTLOSS_LOSS_POISSON_NLL */
        EW(poisson_target_tile)(call->pred + start, call->target + start, m, call->eps,
                                call->log_input, call->full, target_slope);
}

/* out[k] = slope[k] * weight[k] (when given) * the upstream gradient for the m
 * elements from i: per element (reduction none, in double) or the call's scale. */
static void EW(store_grad)(const EW(call) *call, fastloss_index i, fastloss_index m,
                           const STORE_T *FASTLOSS_RESTRICT weight,
                           const REAL *FASTLOSS_RESTRICT slope, STORE_T *FASTLOSS_RESTRICT out)
{
    if (call->grad_output) {
        const double *FASTLOSS_RESTRICT upstream = call->grad_output + i;
        if (weight)
            for (fastloss_index k = 0; k < m; ++k)
                STORE_WIDE(out, k, (double)(slope[k] * LOAD(weight, k)) * upstream[k]);
        else
            for (fastloss_index k = 0; k < m; ++k)
                STORE_WIDE(out, k, (double)slope[k] * upstream[k]);
    } else {
        const REAL scale = call->scale;
        if (weight)
            for (fastloss_index k = 0; k < m; ++k)
                STORE(out, k, slope[k] * LOAD(weight, k) * scale);
        else
            for (fastloss_index k = 0; k < m; ++k)
                STORE(out, k, slope[k] * scale);
    }
}

/* EW(store_grad), through a buffer in L1 and streaming stores where the call
 * streams (elementwise_internal.h): the same bits. */
static void EW(write_grad)(const EW(call) *call, fastloss_index i, fastloss_index m,
                           const STORE_T *FASTLOSS_RESTRICT weight,
                           const REAL *FASTLOSS_RESTRICT slope, STORE_T *FASTLOSS_RESTRICT out)
{
#ifdef FASTLOSS_STREAMING
    if (call->stream) {
        STORE_T buffer[FASTLOSS_EW_TILE];
        EW(store_grad)(call, i, m, weight, slope, buffer);
        fastloss_stream_copy(out, buffer, (size_t)m * sizeof(STORE_T));
        return;
    }
#endif
    EW(store_grad)(call, i, m, weight, slope, out);
}

/*
 * One reduction block [start, end): tile by tile, the loss-specific values and
 * slopes, then the shared steps (weight, outputs, the block's sum).  A tile
 * also ends where a periodic weight or factor wraps around, so that each tile
 * reads them contiguously.  Every slope of a tile is computed before any of its
 * outputs is written, so a gradient may be written over pred, target or aux
 * (in place).  Returns the block's sum of the weighted loss, accumulated in a
 * fixed order (FASTLOSS_LANES lanes, then the tail of each tile) that depends
 * on n and the periods alone.
 */
static double EW(block)(const EW(call) *call, fastloss_index start, fastloss_index end,
                        double *magnitude, double *sum_error)
{
    REAL value_tile[FASTLOSS_EW_TILE];
    REAL slope_tile[FASTLOSS_EW_TILE];
    REAL target_slope_tile[FASTLOSS_EW_TILE];
    REAL aux_slope_tile[FASTLOSS_EW_TILE];
    const int own_target_slope = EW(own_target_slope)(call->loss);
    const int dpo = call->loss == FASTLOSS_LOSS_DPO;
    /* the pred slopes: for pred's gradient, and negated for target's unless the
     * loss has its own (and dpo's aux and aux2 slopes are -slope and slope) */
    const int want_slope = call->grad || (call->grad_target && !own_target_slope) ||
                           (dpo && (call->grad_aux || call->grad_aux2));
    double lane[FASTLOSS_LANES] = {0.0}, negative_lane[EW_NEGATIVE_LANES] = {0.0};
    double lane_error[FASTLOSS_LANES] = {0.0}; /* compensated: each lane's error sum */
    double tail = 0.0, negative_tail = 0.0;
    int wide_mode = 0;
    fastloss_index m;
    for (fastloss_index i = start; i < end; i += m) {
        m = end - i < FASTLOSS_EW_TILE ? end - i : FASTLOSS_EW_TILE;
        const STORE_T *weight = NULL, *factor = NULL;
        if (call->weight) {
            const fastloss_index phase = i % call->weight_period;
            m = call->weight_period - phase < m ? call->weight_period - phase : m;
            weight = call->weight + phase;
        }
        if (call->factor) {
            const fastloss_index phase = i % call->factor_period;
            m = call->factor_period - phase < m ? call->factor_period - phase : m;
            factor = call->factor + phase;
        }
        /* reduction none writes the loss straight into the output where it is stored
         * in the compute type, else into the tile, stored below */
#if STORAGE_IS_COMPUTE
        REAL *FASTLOSS_RESTRICT value = call->loss_per_element ? call->loss_per_element + i
                                        : call->want_sum        ? value_tile
                                                                : NULL;
#else
        REAL *FASTLOSS_RESTRICT value =
            call->loss_per_element || call->want_sum ? value_tile : NULL;
#endif
        REAL *FASTLOSS_RESTRICT slope = want_slope ? slope_tile : NULL;
        if (value || slope)
            EW(compute_tile)(call, i, m, factor, value, slope, &wide_mode);
        /* target's and aux's slopes, before any output is written (grad may be an input) */
        if (call->grad_target) {
            if (own_target_slope)
                EW(compute_target_tile)(call, i, m, factor, target_slope_tile);
            else
                for (fastloss_index k = 0; k < m; ++k)
                    target_slope_tile[k] = -slope[k];
        }
        if (call->grad_aux && dpo) /* reference_chosen's: minus the slope */
            for (fastloss_index k = 0; k < m; ++k)
                aux_slope_tile[k] = -slope[k];
        else if (call->grad_aux) /* gaussian_nll's var */
            EW(gaussian_var_tile)(call->pred + i, call->target + i, call->aux + i, m, call->eps,
                                  aux_slope_tile);

        if (value) {
            if (weight)
                for (fastloss_index k = 0; k < m; ++k)
                    value[k] *= LOAD(weight, k);
#if !STORAGE_IS_COMPUTE
            if (call->loss_per_element)
                for (fastloss_index k = 0; k < m; ++k)
                    STORE(call->loss_per_element + i, k, value[k]);
#endif
            if (call->want_sum) {
                fastloss_index k = 0;
                if (call->compensated) {
                    /* element k to lane k % 8, each lane a sum and its error */
                    for (; k + FASTLOSS_LANES <= m; k += FASTLOSS_LANES)
                        for (int j = 0; j < FASTLOSS_LANES; ++j) {
                            double error;
                            lane[j] = fastloss_ew_two_sum(lane[j], (double)value[k + j], &error);
                            lane_error[j] += error;
                        }
                    for (int j = 0; k < m; ++k, ++j) {
                        double error;
                        lane[j] = fastloss_ew_two_sum(lane[j], (double)value[k], &error);
                        lane_error[j] += error;
                    }
                } else {
                    for (; k + FASTLOSS_LANES <= m; k += FASTLOSS_LANES)
                        for (int j = 0; j < FASTLOSS_LANES; ++j)
                            lane[j] += (double)value[k + j];
                    for (; k < m; ++k)
                        tail += (double)value[k];
                }
                /* the magnitude sum |term| = sum term - 2 sum of the negative terms,
                 * which a negative weight or factor, a bce target outside [0, 1], or
                 * the losses that can be negative (poisson_nll, gaussian_nll) make.
                 * The negative terms are summed in REAL, in EW_NEGATIVE_LANES lanes
                 * (one 64-byte vector) over the tile, at most FASTLOSS_EW_TILE / 16 =
                 * 8 terms a lane for float (within 8 u = 4.8e-7 of their magnitude),
                 * then added to double lanes.  The magnitude only decides whether
                 * elementwise.c sums again in double (|sum| < 0.5 magnitude), which
                 * needs no more.  (A count of the negative terms, then a double sum of
                 * them where there were any, cost 11% of poisson_nll's and
                 * gaussian_nll's fused call, where nearly every tile has some: 0.96
                 * against 0.85 ns an element, 1 thread, Zen 5, AVX-512.)  A REAL
                 * partial that overflows makes the magnitude infinite: the sum is then
                 * taken again in double, which is what that is for. */
                REAL negative_part[EW_NEGATIVE_LANES] = {0};
                for (k = 0; k + EW_NEGATIVE_LANES <= m; k += EW_NEGATIVE_LANES)
                    for (int j = 0; j < EW_NEGATIVE_LANES; ++j)
                        negative_part[j] += value[k + j] < 0 ? value[k + j] : (REAL)0;
                for (; k < m; ++k)
                    negative_tail += value[k] < 0 ? (double)value[k] : 0.0;
                for (int j = 0; j < EW_NEGATIVE_LANES; ++j)
                    negative_lane[j] += (double)negative_part[j];
            }
        }
        if (call->grad)
            EW(write_grad)(call, i, m, weight, slope, call->grad + i);
        if (call->grad_target)
            EW(write_grad)(call, i, m, weight, target_slope_tile, call->grad_target + i);
        if (call->grad_aux)
            EW(write_grad)(call, i, m, weight, aux_slope_tile, call->grad_aux + i);
        if (call->grad_aux2) /* dpo's reference_rejected: the slope itself */
            EW(write_grad)(call, i, m, weight, slope, call->grad_aux2 + i);
    }
#ifdef FASTLOSS_STREAMING
    if (call->stream)
        fastloss_stream_fence();
#endif
    double negative = negative_tail;
    for (int j = 0; j < EW_NEGATIVE_LANES; ++j)
        negative += negative_lane[j];
    if (call->compensated) { /* the block's sum and its error */
        const double sum = fastloss_ew_lanes_two_sum(lane, lane_error, sum_error);
        *magnitude = sum - 2.0 * negative;
        return sum;
    }
    const double sum = fastloss_lanes_total(lane) + tail;
    *magnitude = sum - 2.0 * negative;
    return sum;
}

/* The sum of the first `count` values of a weight, compensated: a weight of both signs
 * may cancel in its sum as the terms may (in 8 lanes, each a sum and its error). */
static double EW(weight_sum)(const STORE_T *weight, fastloss_index count)
{
    double lane[FASTLOSS_LANES] = {0.0}, lane_error[FASTLOSS_LANES] = {0.0};
    fastloss_index k = 0;
    for (; k + FASTLOSS_LANES <= count; k += FASTLOSS_LANES)
        for (int j = 0; j < FASTLOSS_LANES; ++j) {
            double error;
            lane[j] = fastloss_ew_two_sum(lane[j], (double)LOAD(weight, k + j), &error);
            lane_error[j] += error;
        }
    for (int j = 0; k < count; ++k, ++j) {
        double error;
        lane[j] = fastloss_ew_two_sum(lane[j], (double)LOAD(weight, k), &error);
        lane_error[j] += error;
    }
    double error;
    const double sum = fastloss_ew_lanes_two_sum(lane, lane_error, &error);
    return fastloss_ew_two_sum_total(sum, error);
}

/* The loss's scalars from options->param (see the enum in elementwise.h). */
static void EW(set_params)(EW(call) *call, const fastloss_elementwise_options *options)
{
    const double *param = options->param;
    call->threshold = call->half_inv_threshold = call->inv_threshold = 0;
    call->threshold_divide = 0;
    call->alpha_pos = call->alpha_neg = 1;
    call->gamma = 0;
    call->gamma_kind = EW_FOCAL_GAMMA_0;
    call->margin = 0;
    call->log_input = call->full = 0;
    call->eps = 0;
    call->constant = 0;
    call->eps_up = 0;
    call->eps_inexact = 1;
    call->log_target = 0;
    call->beta = call->smoothing = call->ipo_target = 0;
    call->dpo_type = FASTLOSS_DPO_SIGMOID;
    switch (call->loss) {
    case FASTLOSS_LOSS_HUBER:
    case FASTLOSS_LOSS_SMOOTH_L1:
        call->threshold = (REAL)param[0];
        /* torch: beta == 0 is exactly l1_loss.  So is a beta that rounds to 0 in REAL
         * (the limit as beta -> 0), where r / beta would make 0 * inf a NaN at r = 0. */
        if (call->loss == FASTLOSS_LOSS_SMOOTH_L1 && call->threshold == 0)
            call->loss = FASTLOSS_LOSS_L1;
        call->half_inv_threshold = call->threshold > 0 ? (REAL)(0.5 / param[0]) : 0;
        call->inv_threshold = call->threshold > 0 ? (REAL)(1.0 / param[0]) : 0;
        /* a subnormal beta: 0.5 / beta or 1 / beta is inf in REAL, and r inv_beta would
         * be inf or NaN (0 inf) below beta: those tiles divide by beta instead */
        call->threshold_divide = call->loss == FASTLOSS_LOSS_SMOOTH_L1 &&
                                 (isinf(call->half_inv_threshold) ||
                                  isinf(call->inv_threshold));
        break;
    case FASTLOSS_LOSS_SIGMOID_FOCAL:
        /* torchvision: alpha_t = alpha y + (1 - alpha)(1 - y) when alpha >= 0, else 1 */
        if (param[0] >= 0) {
            call->alpha_pos = param[0];
            call->alpha_neg = 1 - param[0];
        }
        call->gamma = param[1];
        call->gamma_kind = param[1] == 0   ? EW_FOCAL_GAMMA_0
                           : param[1] == 1 ? EW_FOCAL_GAMMA_1
                           : param[1] == 2 ? EW_FOCAL_GAMMA_2
                                           : EW_FOCAL_GAMMA_ANY;
        break;
    case FASTLOSS_LOSS_MARGIN_RANKING:
        call->margin = param[0];
        break;
    case FASTLOSS_LOSS_POISSON_NLL:
        call->log_input = param[0] != 0;
        call->full = param[1] != 0;
        call->eps = param[2];
        break;
    case FASTLOSS_LOSS_GAUSSIAN_NLL:
        call->full = param[0] != 0;
        call->eps = param[1];
        call->constant = call->full ? 0.5 * log(EW_TWO_PI) : 0;
        call->eps_up = (REAL)call->eps;
#ifdef EW_FLOAT_COMPUTE
        if ((EW_WIDE)call->eps_up < call->eps)
            call->eps_up = nextafterf(call->eps_up, HUGE_VALF);
#endif
        call->eps_inexact = !((EW_WIDE)call->eps_up == call->eps);
        break;
    case FASTLOSS_LOSS_KL_DIV:
        call->log_target = param[0] != 0;
        break;
    case FASTLOSS_LOSS_DPO:
        call->beta = param[0];
        call->dpo_type = param[1] == 1 ? FASTLOSS_DPO_HINGE
                         : param[1] == 2 ? FASTLOSS_DPO_IPO
                                         : FASTLOSS_DPO_SIGMOID;
        call->smoothing = call->dpo_type == FASTLOSS_DPO_SIGMOID ? param[2] : 0;
        call->ipo_target = 1 / (2 * param[0]); /* TRL's 1 / (2 * beta) */
        break;
    default:
        break;
    }
}

int RUN FASTLOSS_EW_RUN_SIGNATURE
{
    const fastloss_index n = options->n;
    const fastloss_index n_blocks = (n + FASTLOSS_EW_BLOCK - 1) / FASTLOSS_EW_BLOCK;
    const int mean = options->reduction == FASTLOSS_REDUCTION_MEAN;
    const STORE_T *weight = (const STORE_T *)in->weight;
    double *loss = out->loss;

    EW(call) call;
    call.loss = options->loss;
    EW(set_params)(&call, options);
    call.pred = (const STORE_T *)in->pred;
    call.target = (const STORE_T *)in->target;
    call.aux = (const STORE_T *)in->aux;
    call.aux2 = call.loss == FASTLOSS_LOSS_DPO ? (const STORE_T *)in->aux2 : NULL;
    call.weight = weight;
    call.factor = call.loss == FASTLOSS_LOSS_BCE_WITH_LOGITS ||
                          call.loss == FASTLOSS_LOSS_PINBALL ||
                          call.loss == FASTLOSS_LOSS_BRADLEY_TERRY
                      ? (const STORE_T *)in->factor
                      : NULL;
    call.weight_period = options->weight_period;
    call.factor_period = options->factor_period;
    call.want_sum = loss != NULL && options->reduction != FASTLOSS_REDUCTION_NONE;
    call.loss_per_element = options->reduction == FASTLOSS_REDUCTION_NONE
                                ? (STORE_T *)out->loss_per_element
                                : NULL;
    call.grad = (STORE_T *)out->grad;
    call.grad_target =
        call.loss == FASTLOSS_LOSS_SIGMOID_FOCAL ? NULL : (STORE_T *)out->grad_target;
    call.grad_aux = call.loss == FASTLOSS_LOSS_GAUSSIAN_NLL || call.loss == FASTLOSS_LOSS_DPO
                        ? (STORE_T *)out->grad_aux
                        : NULL;
    call.grad_aux2 = call.loss == FASTLOSS_LOSS_DPO ? (STORE_T *)out->grad_aux2 : NULL;
    const int want_grad = call.grad != NULL || call.grad_target != NULL ||
                          call.grad_aux != NULL || call.grad_aux2 != NULL;
    /* the gradients this call writes, in bytes: streamed past the caches when large */
    call.stream = ((call.grad != NULL) + (call.grad_target != NULL) + (call.grad_aux != NULL) +
                   (call.grad_aux2 != NULL)) * (double)n * sizeof(STORE_T) >=
                  (double)FASTLOSS_STREAM_BYTES;
    call.grad_output = want_grad && grad_output && grad_output_stride != 0 ? grad_output : NULL;
    /* The mean's denominator: the element count, except for mse and l1 with a weight,
     * where torch (2.13) takes sum(w * l) / sum(w) with the weight as paired with pred:
     * its sum over the n elements divided by weight_sum_repeats.  Element i's weight
     * is weight[i % period]: whole periods, then the start of one more. */
    double denominator = (double)n;
    if (mean && weight && n > 0 &&
        (options->loss == FASTLOSS_LOSS_MSE || options->loss == FASTLOSS_LOSS_L1)) {
        const fastloss_index period = options->weight_period;
        denominator = (EW(weight_sum)(weight, period) * (double)(n / period) +
                       EW(weight_sum)(weight, n % period)) /
                      (double)options->weight_sum_repeats;
    }
    {
        double scale = grad_output && grad_output_stride == 0 ? grad_output[0] : 1.0;
        if (mean && n > 0)
            scale /= denominator;
        call.scale = (REAL)scale;
    }
    if (!call.want_sum && !call.loss_per_element && !want_grad)
        return FASTLOSS_OK; /* nothing asked for */

    /* The only allocation: one partial sum and magnitude per block (and, compensated,
     * the sum's error), before the parallel region. */
    double *partials = NULL;
    const fastloss_index n_partials = n_blocks > 0 ? n_blocks : 1;
    call.compensated = call.want_sum && out->compensated;
    if (call.want_sum) {
        partials = malloc((size_t)n_partials * (call.compensated ? 3 : 2) * sizeof(double));
        if (!partials)
            return FASTLOSS_ERROR_NO_MEMORY;
    }

    /* never more threads than blocks: a thread without a block would only cost its wake-up */
    int threads = fastloss_effective_threads(options->num_threads, n);
    if (threads > n_blocks)
        threads = n_blocks > 1 ? (int)n_blocks : 1;
    /* the blocks claimed a few at a time by whichever thread is free (common.h) */
    const fastloss_index claim = fastloss_claim_items(n_blocks, threads);
    (void)claim;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(dynamic, claim)
#endif
    for (fastloss_index b = 0; b < n_blocks; ++b) {
        const fastloss_index start = b * FASTLOSS_EW_BLOCK;
        const fastloss_index end = n - start < FASTLOSS_EW_BLOCK ? n : start + FASTLOSS_EW_BLOCK;
        double block_magnitude, block_error = 0.0;
        const double block_sum = EW(block)(&call, start, end, &block_magnitude, &block_error);
        if (partials) {
            partials[b] = block_sum;
            partials[n_partials + b] = block_magnitude;
            if (call.compensated)
                partials[2 * n_partials + b] = block_error;
        }
    }

    if (call.want_sum) {
        double total;
        if (call.compensated) { /* the blocks' sums and errors, compensated in block order */
            double error = 0.0;
            total = 0.0;
            for (fastloss_index b = 0; b < n_blocks; ++b) {
                double rounding;
                total = fastloss_ew_two_sum(total, partials[b], &rounding);
                error += rounding + partials[2 * n_partials + b];
            }
            total = fastloss_ew_two_sum_total(total, error);
        } else {
            total = fastloss_sum_float64(partials, n_blocks);
        }
        const double magnitude = fastloss_sum_float64(partials + n_partials, n_blocks);
        /* torch: the mean of no elements is nan, their sum 0 */
        loss[0] = mean ? (n > 0 ? total / denominator : NAN) : total;
        loss[1] = mean ? (n > 0 ? magnitude / fabs(denominator) : NAN) : magnitude;
        free(partials);
    }
    return FASTLOSS_OK;
}

#ifdef MAY_BE_NEGATIVE
/*
 * Whether a term of this call may be negative, so that terms of both signs may
 * cancel in the sum (elementwise.c's policy): the losses with terms of either
 * sign (poisson_nll, gaussian_nll, kl_div), a negative weight, a negative pos_weight, a
 * quantile outside [0, 1], sigmoid_focal's alpha above 1 (1 - alpha < 0), and a
 * target outside [0, 1] for bce_with_logits and sigmoid_focal.  Every other
 * term is >= 0 or NaN.  Reads one period of the weight and the factor, and the
 * target of bce_with_logits and sigmoid_focal (in parallel: a yes or no, the
 * same for any number of threads).
 */
static int EW(any_outside)(const STORE_T *array, fastloss_index count, REAL low, REAL high,
                           int num_threads)
{
    const fastloss_index n_blocks = (count + FASTLOSS_EW_BLOCK - 1) / FASTLOSS_EW_BLOCK;
    int threads = fastloss_effective_threads(num_threads, count);
    if (threads > n_blocks)
        threads = n_blocks > 1 ? (int)n_blocks : 1;
    int outside = 0;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static) \
    reduction(| : outside)
#endif
    for (fastloss_index b = 0; b < n_blocks; ++b) {
        const fastloss_index start = b * FASTLOSS_EW_BLOCK;
        const fastloss_index end =
            count - start < FASTLOSS_EW_BLOCK ? count : start + FASTLOSS_EW_BLOCK;
        int found = 0;
        for (fastloss_index k = start; k < end; ++k)
            found |= (LOAD(array, k) < low) | (LOAD(array, k) > high);
        outside |= found;
    }
    return outside;
}

int MAY_BE_NEGATIVE FASTLOSS_EW_SIGNS_SIGNATURE
{
    const int loss = options->loss, threads = options->num_threads;
    const int bce = loss == FASTLOSS_LOSS_BCE_WITH_LOGITS;
    const int focal = loss == FASTLOSS_LOSS_SIGMOID_FOCAL;
    if (loss == FASTLOSS_LOSS_POISSON_NLL || loss == FASTLOSS_LOSS_GAUSSIAN_NLL ||
        loss == FASTLOSS_LOSS_KL_DIV)
        return 1;
    if (focal && options->param[0] > 1)
        return 1;
    if (in->weight &&
        EW(any_outside)((const STORE_T *)in->weight, options->weight_period, 0, INFINITY, threads))
        return 1;
    if (in->factor && (bce || loss == FASTLOSS_LOSS_PINBALL) &&
        EW(any_outside)((const STORE_T *)in->factor, options->factor_period, 0,
                        bce ? INFINITY : 1, threads))
        return 1;
    return (bce || focal) &&
           EW(any_outside)((const STORE_T *)in->target, options->n, 0, 1, threads);
}
#endif

#undef EW_NEGATIVE_LANES
#undef EW_ABS
#undef EW_EXP_NONPOSITIVE
#undef EW_LOG1P_UNIT
#undef EW_WIDE
#undef EW_WIDE_ABS
#undef EW_WIDE_EXP_NONPOSITIVE
#undef EW_WIDE_LOG1P_UNIT
