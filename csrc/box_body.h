/*
 * box_body.h -- the box-loss kernels for one storage type, written once.
 * No include guard, on purpose: box_impl.h includes it once per storage type
 * (storage.h's pattern: STORE_T, LOAD, STORE_WIDE from storage_begin.h), with
 * BOX(name) (this instantiation's names) and RUN (the runner's name).
 *
 * Every per-pair quantity is computed in double whatever the storage type is
 * (box.c says why); the arrays are read through LOAD when a tile is filled and
 * written through STORE_WIDE (one rounding) when the loss and gradients are.
 */

/* A tile of pairs as structure of arrays: the coordinates read from both box
 * arrays, the upstream gradient of each pair, and what the compute loop writes. */
typedef struct BOX(tile_s) {
    double in1[4][FASTLOSS_BOX_TILE];     /* x1, y1, x2, y2 of boxes1 */
    double in2[4][FASTLOSS_BOX_TILE];     /* of boxes2 */
    double upstream[FASTLOSS_BOX_TILE];   /* grad_output (/ n for the mean) per pair */
    double loss[FASTLOSS_BOX_TILE];
    double out1[4][FASTLOSS_BOX_TILE];    /* d loss / d boxes1, times upstream */
    double out2[4][FASTLOSS_BOX_TILE];
} BOX(tile);

/* torch.maximum and torch.minimum: NaN when either argument is NaN. */
FASTLOSS_INLINE double BOX(maximum)(double a, double b)
{
    return (a > b || a != a) ? a : b;
}

FASTLOSS_INLINE double BOX(minimum)(double a, double b)
{
    return (a < b || a != a) ? a : b;
}

/* ... for a tile BOX(clean) passed: no NaN, so a plain comparison. */
FASTLOSS_INLINE double BOX(maximum_of)(double a, double b, const int clean)
{
    return clean ? (a > b ? a : b) : BOX(maximum)(a, b);
}

FASTLOSS_INLINE double BOX(minimum_of)(double a, double b, const int clean)
{
    return clean ? (a < b ? a : b) : BOX(minimum)(a, b);
}

/* torch's backward of maximum(a, b) (tools/autograd/derivatives.yaml): the upstream
 * goes to the larger argument, half to each at a tie, and all of it to both when
 * either is NaN (no comparison holds).  Adds the shares to *grad_a and *grad_b.
 * A masked share is an exact 0 (masked_fill), even for an infinite upstream. */
FASTLOSS_INLINE void BOX(maximum_backward)(double a, double b, double upstream,
                                           double *grad_a, double *grad_b)
{
    const double share = a == b ? upstream / 2 : upstream;
    *grad_a += a < b ? 0.0 : share;
    *grad_b += a > b ? 0.0 : share;
}

/* ... and of minimum(a, b): the upstream goes to the smaller argument. */
FASTLOSS_INLINE void BOX(minimum_backward)(double a, double b, double upstream,
                                           double *grad_a, double *grad_b)
{
    const double share = a == b ? upstream / 2 : upstream;
    *grad_a += a > b ? 0.0 : share;
    *grad_b += a < b ? 0.0 : share;
}

/* g times the slopes of atan(w / h) (q = w / h), h / (w**2 + h**2) and -w / (w**2 + h**2),
 * into *grad_w and *grad_h, from the smaller in magnitude of q and t = h / w, so that no
 * square overflows: with |q| <= 1, 1 / (h (1 + q**2)) and -q / (h (1 + q**2)); else
 * t / (w (1 + t**2)) and -1 / (w (1 + t**2)).  Autograd's chain through q (g / (1 + q**2),
 * then / h and * q / h) gives NaN for a box flatter than |q| = 1.3e154 (q**2 = inf, then
 * 0 * inf), where the slopes are finite; those boxes get their value here (a float64
 * input only: a float32 box's q is within 1e84).  A box of zero height gets NaN, as
 * autograd's: w / h is not defined there.  NaN in, NaN out. */
FASTLOSS_INLINE void BOX(atan_slopes)(double w, double h, double q, double g, double *grad_w,
                                      double *grad_h)
{
    const int tall = fabs(q) <= 1.0; /* false for NaN: t is NaN then too */
    const double t = tall ? q : h / w;
    const double common = g / ((tall ? h : w) * (1.0 + t * t));
    const double slope_w = tall ? common : common * t;
    const double slope_h = tall ? -(common * t) : -common;
    /* at h = 0 the NaN that 0 / 0 gives on x86 (sign bit set), as autograd's chain made
     * there and these kernels did before: a NaN's sign is not kept by the rewrites the
     * compiler may make of the sums that follow (-a + b as b - a), so it is set here,
     * after every negation, and those sums are as before (forward, backward and fused
     * calls give the same bits: tests/test_box_float32.py) */
    *grad_w = h == 0.0 ? -(double)NAN : slope_w;
    *grad_h = h == 0.0 ? -(double)NAN : slope_h;
}

/*
 * Pair k of the tile: its loss, and with `want1` (`want2`) the gradient of
 * upstream * loss w.r.t. boxes1 (boxes2), the chain rule written out in the order torch's
 * autograd takes it through torchvision's formula (box.c lists the steps), so
 * that every select, every masked zero and every inf or NaN is autograd's.
 * `kind`, `want1`, `want2` and `clean` are constants where it is inlined, so each loop is
 * one loss's straight-line code.  `clean`: the tile passed BOX(clean), no
 * coordinate is NaN and no two corresponding ones are equal (x1 != u1, ...), so
 * maximum and minimum are plain comparisons and their backward sends each
 * upstream whole to one side: of x1 and u1 the larger bounds the intersection
 * and the smaller the enclosing box.  The same operations on the same values
 * as the general code, which adds an exact 0 where clean adds nothing (the two
 * differ at most in the sign of a zero).
 *   eps_iou: the eps of the union (and diou's diagonal); eps: the eps of giou's
 *   enclosing area and of ciou's alpha (box.c: ciou's union and diagonal take
 *   torchvision's default 1e-7 whatever the caller's eps).
 */
FASTLOSS_INLINE void BOX(pair)(BOX(tile) *FASTLOSS_RESTRICT tile, fastloss_index k,
                               const int kind, const int want1, const int want2,
                               const int clean, const double eps_iou, const double eps)
{
    const int grads = want1 || want2;
    const double x1 = tile->in1[0][k], y1 = tile->in1[1][k];
    const double x2 = tile->in1[2][k], y2 = tile->in1[3][k];
    const double u1 = tile->in2[0][k], v1 = tile->in2[1][k];
    const double u2 = tile->in2[2][k], v2 = tile->in2[3][k];

    /* 1. intersection and union (torchvision's _loss_inter_union) */
    const double w1 = x2 - x1, h1 = y2 - y1, w2 = u2 - u1, h2 = v2 - v1;
    const double area1 = w1 * h1, area2 = w2 * h2;
    const double ix1 = BOX(maximum_of)(x1, u1, clean), iy1 = BOX(maximum_of)(y1, v1, clean);
    const double ix2 = BOX(minimum_of)(x2, u2, clean), iy2 = BOX(minimum_of)(y2, v2, clean);
    const double iw = ix2 - ix1, ih = iy2 - iy1;
    const int overlap = (iy2 > iy1) & (ix2 > ix1);
    const double inter = overlap ? iw * ih : 0.0;
    const double union_area = area1 + area2 - inter;
    const double shifted_union = union_area + eps_iou;
    const double iou = inter / shifted_union;

    /* 2. the smallest enclosing box */
    const double cx1 = BOX(minimum_of)(x1, u1, clean), cy1 = BOX(minimum_of)(y1, v1, clean);
    const double cx2 = BOX(maximum_of)(x2, u2, clean), cy2 = BOX(maximum_of)(y2, v2, clean);
    const double cw = cx2 - cx1, ch = cy2 - cy1;

    /* 3. the loss, and the gradient of upstream * loss back to iou, the union, the
     *    enclosing box's sides, the centres' offset and (ciou) the sides of each box */
    const double upstream = grads ? tile->upstream[k] : 0.0;
    double loss, grad_iou, grad_union = 0.0, grad_cw, grad_ch;
    double grad_dx = 0.0, grad_dy = 0.0;
    double grad_w1 = 0.0, grad_h1 = 0.0, grad_w2 = 0.0, grad_h2 = 0.0;
    if (kind == FASTLOSS_BOX_GIOU) {
        /* loss = 1 - (iou - (area_c - union) / (area_c + eps)) */
        const double area_c = cw * ch, shifted_c = area_c + eps;
        const double penalty = (area_c - union_area) / shifted_c;
        loss = 1.0 - (iou - penalty);
        grad_iou = -upstream;
        const double grad_gap = upstream / shifted_c;
        const double grad_area_c = grad_gap - upstream * (penalty / shifted_c);
        grad_union = -grad_gap;
        grad_cw = grad_area_c * ch;
        grad_ch = grad_area_c * cw;
    } else {
        /* diou: loss = 1 - iou + |centre1 - centre2|**2 / (cw**2 + ch**2 + eps_iou) */
        const double diagonal = cw * cw + ch * ch + eps_iou;
        const double dx = (x2 + x1) / 2 - (u1 + u2) / 2;
        const double dy = (y2 + y1) / 2 - (v1 + v2) / 2;
        const double centres = dx * dx + dy * dy;
        const double ratio = centres / diagonal;
        loss = 1.0 - iou + ratio;
        grad_iou = -upstream;
        const double grad_centres = upstream / diagonal;
        const double grad_diagonal = -upstream * (ratio / diagonal);
        grad_cw = grad_diagonal * (2.0 * cw);
        grad_ch = grad_diagonal * (2.0 * ch);
        grad_dx = grad_centres * (2.0 * dx);
        grad_dy = grad_centres * (2.0 * dy);
        if (kind == FASTLOSS_BOX_CIOU) {
            /* + alpha v, v = 4 / pi**2 (atan(w2 / h2) - atan(w1 / h1))**2, and alpha =
             * v / (1 - iou + v + eps) a constant (torch.no_grad) */
            const double four_over_pi2 = 4.0 / (3.14159265358979323846 * 3.14159265358979323846);
            const double q1 = w1 / h1, q2 = w2 / h2;
            const double angle = fastloss_atan(q2) - fastloss_atan(q1);
            const double v = four_over_pi2 * (angle * angle);
            const double alpha = v / (1.0 - iou + v + eps);
            loss = loss + alpha * v;
            const double grad_angle = upstream * alpha * four_over_pi2 * (2.0 * angle);
            BOX(atan_slopes)(w1, h1, q1, -grad_angle, &grad_w1, &grad_h1);
            BOX(atan_slopes)(w2, h2, q2, grad_angle, &grad_w2, &grad_h2);
        }
    }
    tile->loss[k] = loss;
    if (!grads)
        return;

    /* 4. iou = inter / (union + eps_iou), union = area1 + area2 - inter */
    grad_union += -grad_iou * (iou / shifted_union);
    const double grad_inter = grad_iou / shifted_union - grad_union;
    /* the intersection's gradient only where torchvision's mask set it (masked
     * pairs get exact zeros, whatever the upstream) */
    const double grad_iw = overlap ? grad_inter * ih : 0.0;
    const double grad_ih = overlap ? grad_inter * iw : 0.0;
    grad_w1 += grad_union * h1;
    grad_h1 += grad_union * w1;
    grad_w2 += grad_union * h2;
    grad_h2 += grad_union * w2;

    /* 5. back to the coordinates: the sides, the intersection's and the enclosing
     *    box's corners (through maximum and minimum), and the centres */
    double gx1 = -grad_w1 + grad_dx / 2, gx2 = grad_w1 + grad_dx / 2;
    double gy1 = -grad_h1 + grad_dy / 2, gy2 = grad_h1 + grad_dy / 2;
    double gu1 = -grad_w2 - grad_dx / 2, gu2 = grad_w2 - grad_dx / 2;
    double gv1 = -grad_h2 - grad_dy / 2, gv2 = grad_h2 - grad_dy / 2;
    if (clean) {
        /* x1 > u1: x1 is the intersection's left side, u1 the enclosing box's */
        const int lx = x1 > u1, ly = y1 > v1, rx = x2 < u2, ry = y2 < v2;
        gx1 += lx ? -grad_iw : -grad_cw;
        gu1 += lx ? -grad_cw : -grad_iw;
        gy1 += ly ? -grad_ih : -grad_ch;
        gv1 += ly ? -grad_ch : -grad_ih;
        gx2 += rx ? grad_iw : grad_cw;
        gu2 += rx ? grad_cw : grad_iw;
        gy2 += ry ? grad_ih : grad_ch;
        gv2 += ry ? grad_ch : grad_ih;
    } else {
        BOX(maximum_backward)(x1, u1, -grad_iw, &gx1, &gu1);
        BOX(maximum_backward)(y1, v1, -grad_ih, &gy1, &gv1);
        BOX(minimum_backward)(x2, u2, grad_iw, &gx2, &gu2);
        BOX(minimum_backward)(y2, v2, grad_ih, &gy2, &gv2);
        BOX(minimum_backward)(x1, u1, -grad_cw, &gx1, &gu1);
        BOX(minimum_backward)(y1, v1, -grad_ch, &gy1, &gv1);
        BOX(maximum_backward)(x2, u2, grad_cw, &gx2, &gu2);
        BOX(maximum_backward)(y2, v2, grad_ch, &gy2, &gv2);
    }
    if (want1) {
        tile->out1[0][k] = gx1;
        tile->out1[1][k] = gy1;
        tile->out1[2][k] = gx2;
        tile->out1[3][k] = gy2;
    }
    if (want2) {
        tile->out2[0][k] = gu1;
        tile->out2[1][k] = gv1;
        tile->out2[2][k] = gu2;
        tile->out2[3][k] = gv2;
    }
}

/* Whether the tile's m pairs are all clean (BOX(pair)): every coordinate compares
 * unequal to its counterpart, which a NaN never does. */
static int BOX(clean)(const BOX(tile) *FASTLOSS_RESTRICT tile, fastloss_index m)
{
    int clean = 1;
    for (fastloss_index k = 0; k < m; ++k)
        for (int c = 0; c < 4; ++c) {
            const double a = tile->in1[c][k], b = tile->in2[c][k];
            clean &= (a < b) | (a > b);
        }
    return clean;
}

/* The m pairs of a tile, for one loss and the gradients asked for (`kind`, `want1`,
 * `want2`, `clean`: constants where inlined). */
FASTLOSS_INLINE void BOX(compute_loop)(BOX(tile) *FASTLOSS_RESTRICT tile, fastloss_index m,
                                       const int kind, const int want1, const int want2,
                                       const int clean, double eps_iou, double eps)
{
    for (fastloss_index k = 0; k < m; ++k)
        BOX(pair)(tile, k, kind, want1, want2, clean, eps_iou, eps);
}

/* ... a clean tile (BOX(clean)) by the loop without NaN checks and tie shares. */
FASTLOSS_INLINE void BOX(compute_tile)(BOX(tile) *FASTLOSS_RESTRICT tile, fastloss_index m,
                                       const int kind, const int want1, const int want2,
                                       double eps_iou, double eps)
{
    if (BOX(clean)(tile, m))
        BOX(compute_loop)(tile, m, kind, want1, want2, 1, eps_iou, eps);
    else
        BOX(compute_loop)(tile, m, kind, want1, want2, 0, eps_iou, eps);
}

/* The switch of BOX(compute) and BOX(ncompute): CALL(kind, want1, want2) with each
 * a constant, so that every loss and every set of gradients asked for has its own
 * straight-line loop (a gradient not asked for is not computed). */
#define BOX_CASES_(CALL, kind, want1, want2)                                                \
    switch ((kind) * 4 + ((want1) != 0) + 2 * ((want2) != 0)) {                             \
        BOX_CASES_KIND_(CALL, FASTLOSS_BOX_GIOU)                                            \
        BOX_CASES_KIND_(CALL, FASTLOSS_BOX_DIOU)                                            \
        BOX_CASES_KIND_(CALL, FASTLOSS_BOX_CIOU)                                            \
    default:                                                                                \
        break;                                                                              \
    }
#define BOX_CASES_KIND_(CALL, KIND)                                                         \
    case KIND * 4:                                                                          \
        CALL(KIND, 0, 0);                                                                   \
        break;                                                                              \
    case KIND * 4 + 1:                                                                      \
        CALL(KIND, 1, 0);                                                                   \
        break;                                                                              \
    case KIND * 4 + 2:                                                                      \
        CALL(KIND, 0, 1);                                                                   \
        break;                                                                              \
    case KIND * 4 + 3:                                                                      \
        CALL(KIND, 1, 1);                                                                   \
        break;

/* The tile's m pairs in double: the loss, and the gradients w.r.t. boxes1 (`want1`)
 * and boxes2 (`want2`) into out1 and out2. */
static void BOX(compute)(BOX(tile) *FASTLOSS_RESTRICT tile, fastloss_index m, int kind,
                         int want1, int want2, double eps_iou, double eps)
{
#define BOX_CALL_(KIND, W1, W2) BOX(compute_tile)(tile, m, KIND, W1, W2, eps_iou, eps)
    BOX_CASES_(BOX_CALL_, kind, want1, want2)
#undef BOX_CALL_
}

/* m boxes from `boxes` (stride 4: contiguous, 0: one box for all, else a strided
 * view) into the tile's coordinate arrays of type T (double; float in the float pass).
 * The contiguous loop reads the interleaved coordinates with vector loads and lets the
 * compiler deinterleave them. */
#define BOX_LOAD_BODY_(T)                                                                   \
    if (stride == 4) {                                                                      \
        for (fastloss_index k = 0; k < m; ++k) {                                            \
            coordinate[0][k] = (T)LOAD(boxes, 4 * k);                                       \
            coordinate[1][k] = (T)LOAD(boxes, 4 * k + 1);                                   \
            coordinate[2][k] = (T)LOAD(boxes, 4 * k + 2);                                   \
            coordinate[3][k] = (T)LOAD(boxes, 4 * k + 3);                                   \
        }                                                                                   \
    } else {                                                                                \
        for (fastloss_index k = 0; k < m; ++k)                                              \
            for (int c = 0; c < 4; ++c)                                                     \
                coordinate[c][k] = (T)LOAD(boxes, stride * k + c);                          \
    }
static void BOX(load)(const STORE_T *FASTLOSS_RESTRICT boxes, fastloss_index stride,
                      fastloss_index m, double (*FASTLOSS_RESTRICT coordinate)[FASTLOSS_BOX_TILE])
{
    BOX_LOAD_BODY_(double)
}

/* The tile's gradient of m pairs (`wide`, or the float pass's `narrow` where that is not
 * NULL) rounded once to the storage type and interleaved into (m, 4). */
#define BOX_INTERLEAVE_(STORE_OP, coordinate)                                               \
    for (fastloss_index k = 0; k < m; ++k)                                                  \
        for (int c = 0; c < 4; ++c)                                                         \
            STORE_OP(out, 4 * k + c, coordinate[c][k])
static void BOX(store)(const double (*FASTLOSS_RESTRICT wide)[FASTLOSS_BOX_TILE],
                       const float (*FASTLOSS_RESTRICT narrow)[FASTLOSS_BOX_TILE],
                       fastloss_index m, STORE_T *FASTLOSS_RESTRICT out)
{
    if (narrow)
        BOX_INTERLEAVE_(STORE, narrow);
    else
        BOX_INTERLEAVE_(STORE_WIDE, wide);
}
#undef BOX_INTERLEAVE_

/* BOX(store), with streaming stores where `stream` (box_internal.h): the tile is
 * rounded into a buffer in L1 first, then copied out. */
static void BOX(store_out)(const double (*FASTLOSS_RESTRICT wide)[FASTLOSS_BOX_TILE],
                           const float (*FASTLOSS_RESTRICT narrow)[FASTLOSS_BOX_TILE],
                           fastloss_index m, STORE_T *FASTLOSS_RESTRICT out, int stream)
{
#ifdef FASTLOSS_STREAMING
    if (stream) {
        STORE_T buffer[4 * FASTLOSS_BOX_TILE];
        BOX(store)(wide, narrow, m, buffer);
        fastloss_stream_copy(out, buffer, (size_t)m * 4 * sizeof(STORE_T));
        return;
    }
#endif
    (void)stream;
    BOX(store)(wide, narrow, m, out);
}

#ifdef BOX_NARROW
/*
 * The float32 pass (float32 storage only; box_impl.h defines BOX_NARROW there).
 *
 * Each pair of a tile is computed in float (16 lanes on AVX-512, selects only),
 * together with an a-priori bound on the error of its loss and of each of its
 * eight gradient components against the exact value for the same float32
 * inputs.  Where a bound does not guarantee the accuracy contract
 * (fastloss/_contract.py: loss 2e-6 |ref|; gradient 2e-6 |ref| + 1e-6 max|ref|
 * over the array), that pair is computed again in double by BOX(compute), as
 * every pair was before (the loss, the gradient w.r.t. boxes1 and w.r.t. boxes2
 * each only where its own bound failed, so forward, backward and fused calls,
 * and a gradient asked for alone or with the other, agree bit for bit).  Which
 * path a pair takes depends on its inputs and its tile (fixed by n) alone,
 * never on the thread count.
 *
 * Formulas.  Box 1 = (x1, y1, x2, y2), box 2 = (u1, v1, u2, v2), w, h the
 * sides, iw, ih the intersection's signed sides, cw, ch the enclosing box's.
 * p = w1 - iw = (x2 - u2)+ + (u1 - x1)+, q = w2 - iw = (u2 - x2)+ + (x1 - u1)+,
 * r = h1 - ih, s = h2 - ih likewise: sums of non-negative differences of inputs.
 * Then (expand cw = iw + p + q, ch = ih + r + s)
 *   A1 - I = p ih + w1 r,  A2 - I = q ih + w2 s              (overlap; else A1, A2)
 *   U = A1 + (A2 - I),  Su = U + eps_iou,  1 - iou = (A1 - I + A2 - I + eps_iou) / Su
 *   C - U = p s + q r (overlap),  p s + q r - iw ih (disjoint)
 * so 1 - iou and giou's enclosing gap, differences of nearly equal areas for
 * nearly equal boxes, are sums of non-negative terms.  The loss's gradient
 * w.r.t. U is a (giou: iou / Su - 1 / Sc = (iou (C - U) / Su - (1 - iou)) / Sc,
 * Sc = C + eps; diou, ciou: iou / Su), w.r.t. I (through iou and U) -1 / Su - a,
 * w.r.t. the enclosing sides kx, ky (giou: c ch, c cw with c = (1 - penalty) / Sc;
 * diou: -cD cw, -cD ch with cD = 2 ratio / D), and w.r.t. the centres' offset
 * dx = ((x1 - u1) + (x2 - u2)) / 2: hx = 2 dx / D (half of it to each corner).
 * A coordinate that bounds the intersection (x1 > u1: the intersection's left
 * side is x1) gets -a h1 - (-1 / Su - a) ih = ih / Su - a r (no cancellation of
 * a h1 against a ih); one that bounds the enclosing box gets -(a h1 + kx).  ciou:
 * the angle atan(w2 / h2) - atan(w1 / h1) is one atan, atan((w2 h1 - w1 h2) /
 * (h1 h2 + w1 w2)) (both ratios positive), with the derivatives -h1 / (w1**2 +
 * h1**2) and so on; alpha is a constant in the gradient, as torchvision's.
 *
 * Error bounds (u = 2**-24; every operation rounded to nearest, no contraction
 * (box_impl.h), so each result is x (1 + d), |d| <= u; first order, the second
 * order (< 1e-11 relative here) inside the 5% margins below).  Counting the
 * roundings: differences of inputs 1 u, p q r s 2 u, A1 3 u, A1 - I 5 u, U 6 u,
 * Su 7 u (eps rounded to float 1 u), 1 / Su 8 u, 1 - iou 16 u, iou 12 u; Sc 4 u,
 * 1 / Sc 5 u, C - U 7 u of p s + q r + |iw ih|, the penalty 13 u of that over Sc;
 * D 5 u, 1 / D 6 u, the offset dx within 2 u (|dx1| + |dx2|) / 2, |dx|**2 + |dy|**2
 * within 6 u (|dx| mx + |dy| my); ciou: w2 h1 - w1 h2 within 3 u (w2 h1 + w1 h2),
 * the quotient 5 u more, atan 1-Lipschitz plus its own FASTLOSS_ATANF_REL_ERROR
 * (4.2 u: fastmath.h, an exhaustive sweep measured 2.39 u), then v, alpha, alpha v
 * by the product and quotient rules.  Signed results carry absolute bounds:
 * x y within ex |y| + ey |x| + u |x y|, x +- y within ex + ey + u |x +- y|.  The
 * code below writes each bound next to its value (E_ names); the gradient's last
 * step, times the upstream rounded to float, adds 2 u, and a result that
 * underflows 2**-149 (BOX_NARROW_TINY covers every underflow inside: the checked
 * ranges keep every factor after a product within 2**26, at most four of them).
 *
 * The pair takes the float path only where that arithmetic holds: every
 * coordinate finite with |x| <= 2**12, every side in [2**-12, 2**13], no tie
 * between corresponding coordinates (x1 != u1, ...: the double pass makes
 * autograd's half shares there), every nonzero difference of corresponding
 * coordinates >= 2**-24, upstream in [2**-100, 2**60] in magnitude, eps in
 * [2**-100, 2**20] (per call).  The loss stays when its bound E <= 1.9e-6 L and
 * L >= 2**-20 (below it the reference's own float64 rounding of 1 - iou, 1e-16,
 * is no longer negligible).  A gradient component g of boxes1 stays when
 * E <= 1.9e-6 (|g| - E) + 0.95e-6 top, top the largest |g'| - E' over the
 * tile's components of boxes1 on the float path: a lower bound of max|ref| over
 * the whole array (boxes2 likewise).  A pair stays only with all four.  The sum
 * of the reduced loss: every float-path loss is >= 0 and within 1.9e-6 of its
 * own, so their sum too, unless double-path losses of the other sign cancel it:
 * RUN then sums every loss again in double (BOX(block) with narrow off).
 *
 * How many pairs the bounds send to double: on the bench's 2**23 pairs (corners in
 * [0, 10], sides in [0.5, 5], boxes2 near boxes1; ciou value_and_grad w.r.t.
 * boxes1, mean), 2669 pairs (0.03%): 2669 for the gradient, 4 of them for the loss
 * too (counted 2026-11-27 by a counter in BOX(nblock), AVX-512).  So the bounds are
 * not what keeps the float pass near the double path's time (5.2 against 6.1 ns a
 * pair in cache, 1 thread, Zen 5): its own arithmetic is, the bounds about half of it.
 */
#define BOX_NU 0x1p-24f
#define BOX_NARROW_TINY 0x1p-80f

typedef struct BOX(ntile_s) {
    float in1[4][FASTLOSS_BOX_TILE];
    float in2[4][FASTLOSS_BOX_TILE];
    float upstream[FASTLOSS_BOX_TILE];
    float loss[FASTLOSS_BOX_TILE];
    int loss_pass[FASTLOSS_BOX_TILE];   /* the loss's bound holds */
    float g1[4][FASTLOSS_BOX_TILE];     /* the gradients (times the upstream) */
    float g2[4][FASTLOSS_BOX_TILE];
    /* per box, over its four components: the least 1.9e-6 (|g| - E) - E (-inf
     * outside the checked ranges: the pair fails whatever the floor), and the
     * largest |g| - E (0 outside them) */
    float slack1[FASTLOSS_BOX_TILE], slack2[FASTLOSS_BOX_TILE];
    int32_t top1[FASTLOSS_BOX_TILE], top2[FASTLOSS_BOX_TILE]; /* its bits: >= 0, not NaN */
} BOX(ntile);

FASTLOSS_INLINE float BOX(fmax0)(float a, float b) { return a > b ? a : b; }
FASTLOSS_INLINE float BOX(fmin0)(float a, float b) { return a < b ? a : b; }
/* The least of a running slack and a component's: NaN stays (a NaN component, or a
 * NaN slack, fails the pair), and so does -inf (a pair outside the checked ranges):
 * `a < b ? a : b` would hand a NaN slack over to the next component's finite one. */
FASTLOSS_INLINE float BOX(slack_min)(float slack, float b)
{
    return (b < slack) | (b != b) ? b : slack;
}

/* A float's bits (a float >= 0 orders as its bits do as integers). */
FASTLOSS_INLINE int32_t BOX(bits)(float x)
{
    int32_t bits;
    memcpy(&bits, &x, sizeof bits);
    return bits;
}

/* The gradient part of a coordinate that bounds the intersection (overlap:
 * side_i / Su - a rest; disjoint: -a side), with its error bound. */
#define BOX_INNER(val, err, side_i, rest, side)                                             \
    do {                                                                                    \
        const float t1_ = (side_i) * r_su, t2_ = a * (rest);                                \
        const float in_ = t1_ - t2_, out_ = -(a * (side));                                  \
        val = overlap ? in_ : out_;                                                         \
        err = overlap ? 10.0f * BOX_NU * t1_ + E_a * (rest) + 3.0f * BOX_NU * fabsf(t2_) +  \
                            BOX_NU * fabsf(in_)                                             \
                      : E_a * (side) + 2.0f * BOX_NU * fabsf(out_);                         \
    } while (0)

/* ... and of one that bounds the enclosing box: a side + k. */
#define BOX_OUTER(val, err, side, k, E_k)                                                   \
    do {                                                                                    \
        const float t_ = a * (side);                                                        \
        val = t_ + (k);                                                                     \
        err = E_a * (side) + 2.0f * BOX_NU * fabsf(t_) + (E_k) + BOX_NU * fabsf(val);       \
    } while (0)

/* One gradient component: the intersection's or the enclosing box's part (by
 * `bounds`), plus ciou's angle part and the centre's, times the upstream. */
#define BOX_COMPONENT(out, slack, top, bounds, sign, vin, Ein, vout, Eout, extra, E_extra, \
                      centre, E_centre)                                                     \
    do {                                                                                    \
        const float base_ = (bounds) ? (sign) * (vin) : -(sign) * (vout);                   \
        const float t_ = base_ + (extra);                                                   \
        const float v_ = t_ + (centre);                                                     \
        const float e_ = ((bounds) ? (Ein) : (Eout)) + (E_extra) + (E_centre) +             \
                         BOX_NU * fabsf(t_) + BOX_NU * fabsf(v_) + BOX_NARROW_TINY;         \
        const float o_ = v_ * g;                                                            \
        const float oe_ = e_ * fabsf(g) * (1.0f + 4.0f * BOX_NU) +                          \
                          2.0f * BOX_NU * fabsf(o_) + 0x1p-149f;                            \
        const float low_ = BOX(fmax0)(fabsf(o_) - oe_, 0.0f);                               \
        out = o_;                                                                           \
        slack = BOX(slack_min)(slack, 1.9e-6f * low_ - oe_);                                \
        top = BOX(fmax0)(top, low_);                                                        \
    } while (0)

FASTLOSS_INLINE void BOX(npair)(BOX(ntile) *FASTLOSS_RESTRICT t, fastloss_index k,
                                const int kind, const int want1, const int want2,
                                const float eps_iou, const float eps)
{
    const int grads = want1 || want2;
    const float x1 = t->in1[0][k], y1 = t->in1[1][k], x2 = t->in1[2][k], y2 = t->in1[3][k];
    const float u1 = t->in2[0][k], v1 = t->in2[1][k], u2 = t->in2[2][k], v2 = t->in2[3][k];
    const float w1 = x2 - x1, h1 = y2 - y1, w2 = u2 - u1, h2 = v2 - v1;
    const float dx1 = x1 - u1, dx2 = x2 - u2, dy1 = y1 - v1, dy2 = y2 - v2;
    const float big = 0x1p12f, side_lo = 0x1p-12f, gap_lo = 0x1p-24f;
    /* NaN fails every comparison */
    const int ok = (fabsf(x1) <= big) & (fabsf(y1) <= big) & (fabsf(x2) <= big) &
                   (fabsf(y2) <= big) & (fabsf(u1) <= big) & (fabsf(v1) <= big) &
                   (fabsf(u2) <= big) & (fabsf(v2) <= big) & (w1 >= side_lo) &
                   (h1 >= side_lo) & (w2 >= side_lo) & (h2 >= side_lo) &
                   (fabsf(dx1) >= gap_lo) & (fabsf(dx2) >= gap_lo) & (fabsf(dy1) >= gap_lo) &
                   (fabsf(dy2) >= gap_lo);
    const float iw = BOX(fmin0)(x2, u2) - BOX(fmax0)(x1, u1);
    const float ih = BOX(fmin0)(y2, v2) - BOX(fmax0)(y1, v1);
    const float cw = BOX(fmax0)(x2, u2) - BOX(fmin0)(x1, u1);
    const float ch = BOX(fmax0)(y2, v2) - BOX(fmin0)(y1, v1);
    const int overlap = (ih > 0.0f) & (iw > 0.0f);
    const float p = BOX(fmax0)(dx2, 0.0f) + BOX(fmax0)(-dx1, 0.0f);
    const float q = BOX(fmax0)(-dx2, 0.0f) + BOX(fmax0)(dx1, 0.0f);
    const float r = BOX(fmax0)(dy2, 0.0f) + BOX(fmax0)(-dy1, 0.0f);
    const float s = BOX(fmax0)(-dy2, 0.0f) + BOX(fmax0)(dy1, 0.0f);
    const float area1 = w1 * h1;
    const float a1_minus_i = overlap ? p * ih + w1 * r : area1;
    const float a2_minus_i = overlap ? q * ih + w2 * s : w2 * h2;
    const float inter = overlap ? iw * ih : 0.0f;
    const float shifted_union = area1 + a2_minus_i + eps_iou;
    const float r_su = 1.0f / shifted_union;
    /* disjoint: iou = 0 and 1 - iou = 1 exactly, as the reference's */
    const float omi = overlap ? (a1_minus_i + a2_minus_i + eps_iou) * r_su : 1.0f;
    const float E_omi = overlap ? 16.0f * BOX_NU * omi : 0.0f;
    const float iou = inter * r_su;

    float loss, E_loss, a, E_a;
    float out_x1, E_out_x1, out_y1, E_out_y1, out_u1, E_out_u1, out_v1, E_out_v1;
    float hx = 0.0f, hy = 0.0f, E_hx = 0.0f, E_hy = 0.0f;
    float aw1 = 0.0f, ah1 = 0.0f, aw2 = 0.0f, ah2 = 0.0f;
    float E_aw1 = 0.0f, E_ah1 = 0.0f, E_aw2 = 0.0f, E_ah2 = 0.0f;
    if (kind == FASTLOSS_BOX_GIOU) {
        const float shifted_c = cw * ch + eps;
        const float r_sc = 1.0f / shifted_c;
        const float ps_qr = p * s + q * r;
        const float corner = iw * ih;
        const float gap_c = overlap ? ps_qr : ps_qr - corner;
        const float gap_c_mag = overlap ? ps_qr : ps_qr + fabsf(corner);
        const float penalty = gap_c * r_sc;
        const float E_pen = 13.0f * BOX_NU * gap_c_mag * r_sc;
        loss = omi + penalty;
        E_loss = E_omi + E_pen + BOX_NU * loss;
        const float t1 = iou * (gap_c * r_su);
        const float E_t1 = (overlap ? 28.0f : 29.0f) * BOX_NU * fabsf(t1);
        const float diff = t1 - omi;
        a = diff * r_sc;
        E_a = (E_t1 + E_omi + 7.0f * BOX_NU * fabsf(diff)) * r_sc;
        /* A coordinate that bounds the enclosing box: a h1 + c ch with c = Su / Sc**2
         * cancels (giou's own gradient is small there), so it is written as
         *   iou h1 / Su + (Su ch - Sc h1) / Sc**2,
         *   Su ch - Sc h1 = ch (U - cw h1) + eps (ch - h1) = ch (w2 s - q r) + eps s
         * (cw = w1 + q, ch = h1 + s, U - cw h1 = A2 - I - q h1; disjoint: w2 h2 - q h1),
         * a first term of one sign and a second of products of the small sides.
         * Bounds: iou / Su 21 u, times the side 23 u; each product of two sides 5 u,
         * the bracket 9 u of its magnitude ch (w2 s + q r) + eps s, 1 / Sc**2 11 u,
         * the second term 21 u of that magnitude over Sc**2. */
        const float t_iou = iou * r_su;
        const float r_sc2 = r_sc * r_sc;
#define BOX_GIOU_OUTER(val, err, side, enc, P1, P2, z)                                      \
    do {                                                                                    \
        const float t1_ = t_iou * (side);                                                   \
        const float p1_ = (P1), p2_ = (P2);                                                 \
        const float br_ = (enc) * (p1_ - p2_) + eps * (z);                                  \
        const float m_ = (enc) * (p1_ + p2_) + eps * (z);                                   \
        val = t1_ + br_ * r_sc2;                                                            \
        err = 23.0f * BOX_NU * t1_ + 21.0f * BOX_NU * m_ * r_sc2 + BOX_NU * fabsf(val);     \
    } while (0)
        BOX_GIOU_OUTER(out_x1, E_out_x1, h1, ch, overlap ? w2 * s : w2 * h2,
                       overlap ? q * r : q * h1, s);
        BOX_GIOU_OUTER(out_y1, E_out_y1, w1, cw, overlap ? q * h2 : w2 * h2,
                       overlap ? s * p : s * w1, q);
        BOX_GIOU_OUTER(out_u1, E_out_u1, h2, ch, overlap ? w1 * r : area1,
                       overlap ? p * s : p * h2, r);
        BOX_GIOU_OUTER(out_v1, E_out_v1, w2, cw, overlap ? p * h1 : area1,
                       overlap ? r * q : r * w2, p);
#undef BOX_GIOU_OUTER
    } else {
        const float diagonal = cw * cw + ch * ch + eps_iou;
        const float r_d = 1.0f / diagonal;
        const float dx = (dx1 + dx2) * 0.5f, dy = (dy1 + dy2) * 0.5f;
        const float mx = (fabsf(dx1) + fabsf(dx2)) * 0.5f, my = (fabsf(dy1) + fabsf(dy2)) * 0.5f;
        const float rho = dx * dx + dy * dy;
        const float m_rho = fabsf(dx) * mx + fabsf(dy) * my;
        const float ratio = rho * r_d;
        const float E_ratio = BOX_NU * (6.0f * m_rho + 7.0f * rho) * r_d;
        loss = omi + ratio;
        E_loss = E_omi + E_ratio;
        a = iou * r_su;
        E_a = 21.0f * BOX_NU * a;
        const float c_d = 2.0f * ratio * r_d;
        const float E_cd = 2.0f * E_ratio * r_d + 8.0f * BOX_NU * c_d;
        const float kx = -c_d * cw, ky = -c_d * ch;
        const float E_kx = E_cd * cw + 2.0f * BOX_NU * fabsf(kx);
        const float E_ky = E_cd * ch + 2.0f * BOX_NU * fabsf(ky);
        BOX_OUTER(out_x1, E_out_x1, h1, kx, E_kx);
        BOX_OUTER(out_y1, E_out_y1, w1, ky, E_ky);
        BOX_OUTER(out_u1, E_out_u1, h2, kx, E_kx);
        BOX_OUTER(out_v1, E_out_v1, w2, ky, E_ky);
        hx = dx * r_d;
        hy = dy * r_d;
        E_hx = 2.0f * BOX_NU * mx * r_d + 8.0f * BOX_NU * fabsf(hx);
        E_hy = 2.0f * BOX_NU * my * r_d + 8.0f * BOX_NU * fabsf(hy);
        if (kind == FASTLOSS_BOX_CIOU) {
            const float four_over_pi2 = 0.405284735f;
            const float cross1 = w2 * h1, cross2 = w1 * h2;
            const float numerator = cross1 - cross2;
            const float denominator = h1 * h2 + w1 * w2;
            const float z = numerator / denominator;
            const float E_z = (3.0f * BOX_NU * (cross1 + cross2) + BOX_NU * fabsf(numerator)) /
                                  denominator + 5.0f * BOX_NU * fabsf(z);
            const float angle = fastloss_atanf(z);
            const float E_angle = E_z + 4.2f * BOX_NU * fabsf(angle);
            const float v = four_over_pi2 * (angle * angle);
            const float E_v = four_over_pi2 * 2.0f * fabsf(angle) * E_angle + 3.0f * BOX_NU * v;
            const float shifted_a = omi + v + eps;
            const float E_sa = E_omi + E_v + 3.0f * BOX_NU * shifted_a;
            const float alpha = v / shifted_a;
            const float E_alpha = (E_v + alpha * E_sa) / shifted_a + BOX_NU * alpha;
            const float alpha_v = alpha * v;
            loss = loss + alpha_v;
            E_loss += E_alpha * v + alpha * E_v + BOX_NU * alpha_v;
            const float grad_angle = alpha * four_over_pi2 * (2.0f * angle);
            const float E_ga = four_over_pi2 * 2.0f * (E_alpha * fabsf(angle) + alpha * E_angle) +
                               3.0f * BOX_NU * fabsf(grad_angle);
            const float n1 = w1 * w1 + h1 * h1, n2 = w2 * w2 + h2 * h2;
            const float r_n1 = grad_angle / n1, r_n2 = grad_angle / n2;
            const float E_rn1 = E_ga / n1 + 5.0f * BOX_NU * fabsf(r_n1);
            const float E_rn2 = E_ga / n2 + 5.0f * BOX_NU * fabsf(r_n2);
            aw1 = -r_n1 * h1;
            ah1 = r_n1 * w1;
            aw2 = r_n2 * h2;
            ah2 = -r_n2 * w2;
            E_aw1 = E_rn1 * h1 + BOX_NU * fabsf(aw1);
            E_ah1 = E_rn1 * w1 + BOX_NU * fabsf(ah1);
            E_aw2 = E_rn2 * h2 + BOX_NU * fabsf(aw2);
            E_ah2 = E_rn2 * w2 + BOX_NU * fabsf(ah2);
        }
        E_loss += 2.0f * BOX_NU * loss;
    }
    t->loss[k] = loss;
    t->loss_pass[k] = ok & (E_loss + BOX_NARROW_TINY <= 1.9e-6f * loss) & (loss >= 0x1p-20f);
    if (!grads)
        return;

    const float g = t->upstream[k];
    float in_x1, E_in_x1, in_y1, E_in_y1, in_u1, E_in_u1, in_v1, E_in_v1;
    BOX_INNER(in_x1, E_in_x1, ih, r, h1);
    BOX_INNER(in_y1, E_in_y1, iw, p, w1);
    BOX_INNER(in_u1, E_in_u1, ih, s, h2);
    BOX_INNER(in_v1, E_in_v1, iw, q, w2);
    if (want1) {
        float slack = ok ? INFINITY : -INFINITY, top = 0.0f;
        BOX_COMPONENT(t->g1[0][k], slack, top, x1 > u1, 1.0f, in_x1, E_in_x1, out_x1, E_out_x1,
                      -aw1, E_aw1, hx, E_hx);
        BOX_COMPONENT(t->g1[2][k], slack, top, x2 < u2, -1.0f, in_x1, E_in_x1, out_x1,
                      E_out_x1, aw1, E_aw1, hx, E_hx);
        BOX_COMPONENT(t->g1[1][k], slack, top, y1 > v1, 1.0f, in_y1, E_in_y1, out_y1, E_out_y1,
                      -ah1, E_ah1, hy, E_hy);
        BOX_COMPONENT(t->g1[3][k], slack, top, y2 < v2, -1.0f, in_y1, E_in_y1, out_y1,
                      E_out_y1, ah1, E_ah1, hy, E_hy);
        /* NaN (an upstream out of range) fails: the comparison in BOX(nblock) */
        t->slack1[k] = slack;
        t->top1[k] = BOX(bits)(ok ? top : 0.0f);
    }
    if (want2) {
        float slack = ok ? INFINITY : -INFINITY, top = 0.0f;
        BOX_COMPONENT(t->g2[0][k], slack, top, u1 > x1, 1.0f, in_u1, E_in_u1, out_u1, E_out_u1,
                      -aw2, E_aw2, -hx, E_hx);
        BOX_COMPONENT(t->g2[2][k], slack, top, u2 < x2, -1.0f, in_u1, E_in_u1, out_u1,
                      E_out_u1, aw2, E_aw2, -hx, E_hx);
        BOX_COMPONENT(t->g2[1][k], slack, top, v1 > y1, 1.0f, in_v1, E_in_v1, out_v1, E_out_v1,
                      -ah2, E_ah2, -hy, E_hy);
        BOX_COMPONENT(t->g2[3][k], slack, top, v2 < y2, -1.0f, in_v1, E_in_v1, out_v1,
                      E_out_v1, ah2, E_ah2, -hy, E_hy);
        t->slack2[k] = slack;
        t->top2[k] = BOX(bits)(ok ? top : 0.0f);
    }
}
#undef BOX_INNER
#undef BOX_OUTER
#undef BOX_COMPONENT

FASTLOSS_INLINE void BOX(ncompute_loop)(BOX(ntile) *FASTLOSS_RESTRICT t, fastloss_index m,
                                        const int kind, const int want1, const int want2,
                                        float eps_iou, float eps)
{
    for (fastloss_index k = 0; k < m; ++k)
        BOX(npair)(t, k, kind, want1, want2, eps_iou, eps);
}

/* The tile's m pairs in float, for one loss and the gradients asked for (each
 * combination its own straight-line loop). */
static void BOX(ncompute)(BOX(ntile) *FASTLOSS_RESTRICT t, fastloss_index m, int kind,
                          int want1, int want2, float eps_iou, float eps)
{
#define BOX_CALL_(KIND, W1, W2) BOX(ncompute_loop)(t, m, KIND, W1, W2, eps_iou, eps)
    BOX_CASES_(BOX_CALL_, kind, want1, want2)
#undef BOX_CALL_
}

/* m boxes of `boxes` (float storage) into the float tile's coordinate arrays. */
static void BOX(nload)(const STORE_T *FASTLOSS_RESTRICT boxes, fastloss_index stride,
                       fastloss_index m, float (*FASTLOSS_RESTRICT coordinate)[FASTLOSS_BOX_TILE])
{
    BOX_LOAD_BODY_(float)
}

/* Per pair of the tile, whether its box's four components clear the contract:
 * slack + 0.95e-6 top >= 0, top the largest |g| - E over the tile's float-path
 * components (a lower bound of the array's max|ref|); returns whether one failed. */
static int BOX(ngrad_pass)(fastloss_index m, const float *FASTLOSS_RESTRICT slack,
                           const int32_t *FASTLOSS_RESTRICT top_bits,
                           int *FASTLOSS_RESTRICT pass)
{
    /* top >= 0 and never NaN (BOX_COMPONENT's maxima): its bits order as integers
     * do, and an integer maximum vectorises */
    int32_t largest_bits = 0;
    for (fastloss_index k = 0; k < m; ++k)
        largest_bits = top_bits[k] > largest_bits ? top_bits[k] : largest_bits;
    float largest;
    memcpy(&largest, &largest_bits, sizeof largest);
    const float floor = 0.95e-6f * largest;
    int failed = 0;
    for (fastloss_index k = 0; k < m; ++k) {
        pass[k] = slack[k] + floor >= 0.0f;
        failed |= !pass[k];
    }
    return failed;
}

#undef BOX_NU
#endif /* BOX_NARROW */

/* What every block of one call shares; set up once before the parallel loops. */
typedef struct BOX(call_s) {
    int kind;
    double eps_iou, eps;
    const STORE_T *boxes1, *boxes2;
    fastloss_index stride1, stride2;
    const double *grad_output;     /* per pair (reduction none), or NULL: use scale */
    double scale;                  /* grad_output, / n for the mean */
    int want_sum, grads;
    STORE_T *loss_per_box, *grad1, *grad2;
    int narrow;                    /* float32: the float pass first (BOX_NARROW) */
    int stream;                    /* the gradients with streaming stores (box_internal.h) */
} BOX(call);

/*
 * One reduction block [start, end), tile by tile: read, compute, write.  Returns
 * the block's sum of the per-pair losses in a fixed order (FASTLOSS_LANES lanes
 * over each tile, then the tile's remainder) that depends on n alone.
 */
static double BOX(block)(const BOX(call) *call, fastloss_index start, fastloss_index end)
{
    BOX(tile) tile;
    double lane[FASTLOSS_LANES] = {0.0};
    double tail = 0.0;
    fastloss_index m;
    for (fastloss_index i = start; i < end; i += m) {
        m = end - i < FASTLOSS_BOX_TILE ? end - i : FASTLOSS_BOX_TILE;
        BOX(load)(call->boxes1 + i * call->stride1, call->stride1, m, tile.in1);
        BOX(load)(call->boxes2 + i * call->stride2, call->stride2, m, tile.in2);
        if (call->grads) {
            if (call->grad_output)
                for (fastloss_index k = 0; k < m; ++k)
                    tile.upstream[k] = call->grad_output[i + k];
            else
                for (fastloss_index k = 0; k < m; ++k)
                    tile.upstream[k] = call->scale;
        }
        BOX(compute)(&tile, m, call->kind, call->grad1 != NULL, call->grad2 != NULL,
                     call->eps_iou, call->eps);
        if (call->loss_per_box) {
            STORE_T *FASTLOSS_RESTRICT out = call->loss_per_box + i;
            for (fastloss_index k = 0; k < m; ++k)
                STORE_WIDE(out, k, tile.loss[k]);
        }
        if (call->want_sum) {
            fastloss_index k = 0;
            for (; k + FASTLOSS_LANES <= m; k += FASTLOSS_LANES)
                for (int j = 0; j < FASTLOSS_LANES; ++j)
                    lane[j] += tile.loss[k + j];
            for (; k < m; ++k)
                tail += tile.loss[k];
        }
        /* written after the tile's boxes were read: grad1 may be boxes1 (in place) */
        if (call->grad1)
            BOX(store_out)((const double (*)[FASTLOSS_BOX_TILE])tile.out1, NULL, m,
                           call->grad1 + 4 * i, call->stream);
        if (call->grad2)
            BOX(store_out)((const double (*)[FASTLOSS_BOX_TILE])tile.out2, NULL, m,
                           call->grad2 + 4 * i, call->stream);
    }
#ifdef FASTLOSS_STREAMING
    if (call->stream)
        fastloss_stream_fence();
#endif
    return fastloss_lanes_total(lane) + tail;
}

#ifdef BOX_NARROW
/* BOX(block) with the float pass (see BOX(npair)): each tile in float, then in
 * double the pairs whose bound failed, each result only where its own did.
 * *negative is set where a double-path loss is < 0 (for RUN's check of the total). */
static double BOX(nblock)(const BOX(call) *call, fastloss_index start, fastloss_index end,
                          int *negative)
{
    BOX(ntile) nt;
    BOX(tile) wide;
    double sum_loss[FASTLOSS_BOX_TILE];  /* what the sum adds: double where redone */
    int loss_pass[FASTLOSS_BOX_TILE], pass1[FASTLOSS_BOX_TILE], pass2[FASTLOSS_BOX_TILE];
    fastloss_index at[FASTLOSS_BOX_TILE];
    double lane[FASTLOSS_LANES] = {0.0};
    double tail = 0.0;
    int below = 0;
    const int want_loss = call->want_sum || call->loss_per_box != NULL;
    const float eps_iou = (float)call->eps_iou, eps = (float)call->eps;
    fastloss_index m;
    for (fastloss_index i = start; i < end; i += m) {
        m = end - i < FASTLOSS_BOX_TILE ? end - i : FASTLOSS_BOX_TILE;
        const STORE_T *b1 = call->boxes1 + i * call->stride1;
        const STORE_T *b2 = call->boxes2 + i * call->stride2;
        BOX(nload)(b1, call->stride1, m, nt.in1);
        BOX(nload)(b2, call->stride2, m, nt.in2);
        if (call->grads) {
            /* the upstream's magnitude checked here: rounded to float, it must stay
             * normal, and the products finite */
            if (call->grad_output)
                for (fastloss_index k = 0; k < m; ++k) {
                    const double up = call->grad_output[i + k];
                    const double mag = fabs(up);
                    nt.upstream[k] = mag >= 0x1p-100 && mag <= 0x1p60 ? (float)up : NAN;
                }
            else {
                const double mag = fabs(call->scale);
                const float up = mag >= 0x1p-100 && mag <= 0x1p60 ? (float)call->scale : NAN;
                for (fastloss_index k = 0; k < m; ++k)
                    nt.upstream[k] = up;
            }
        }
        BOX(ncompute)(&nt, m, call->kind, call->grad1 != NULL, call->grad2 != NULL, eps_iou,
                      eps);
        int redo_loss = 0, redo1 = 0, redo2 = 0;
        if (want_loss)
            for (fastloss_index k = 0; k < m; ++k) {
                loss_pass[k] = nt.loss_pass[k];
                redo_loss |= !loss_pass[k];
                sum_loss[k] = (double)nt.loss[k];
            }
        /* a NaN upstream (out of range) fails every bound */
        if (call->grad1)
            redo1 = BOX(ngrad_pass)(m, nt.slack1, nt.top1, pass1);
        if (call->grad2)
            redo2 = BOX(ngrad_pass)(m, nt.slack2, nt.top2, pass2);
        if (redo_loss || redo1 || redo2) {
            /* the pairs in doubt, read again from the arrays in double, computed and
             * scattered back (rounded once to float) */
            const int redo_grads = redo1 || redo2;
            fastloss_index count = 0;
            for (fastloss_index k = 0; k < m; ++k)
                if ((redo_loss && !loss_pass[k]) || (redo1 && !pass1[k]) || (redo2 && !pass2[k]))
                    at[count++] = k;
            for (fastloss_index c = 0; c < count; ++c) {
                const fastloss_index k = at[c];
                for (int j = 0; j < 4; ++j) {
                    wide.in1[j][c] = (double)LOAD(b1, call->stride1 * k + j);
                    wide.in2[j][c] = (double)LOAD(b2, call->stride2 * k + j);
                }
                if (redo_grads)
                    wide.upstream[c] = call->grad_output ? call->grad_output[i + k] : call->scale;
            }
            BOX(compute)(&wide, count, call->kind, redo1, redo2, call->eps_iou, call->eps);
            for (fastloss_index c = 0; c < count; ++c) {
                const fastloss_index k = at[c];
                if (redo_loss && !loss_pass[k]) {
                    nt.loss[k] = (float)wide.loss[c];
                    sum_loss[k] = wide.loss[c];
                    below |= wide.loss[c] < 0.0;
                }
                if (redo1 && !pass1[k])
                    for (int j = 0; j < 4; ++j)
                        nt.g1[j][k] = (float)wide.out1[j][c];
                if (redo2 && !pass2[k])
                    for (int j = 0; j < 4; ++j)
                        nt.g2[j][k] = (float)wide.out2[j][c];
            }
        }
        if (call->loss_per_box) {
            STORE_T *FASTLOSS_RESTRICT out = call->loss_per_box + i;
            for (fastloss_index k = 0; k < m; ++k)
                STORE(out, k, nt.loss[k]);
        }
        if (call->want_sum) {
            /* the float-path losses, and the double path's unrounded, as BOX(block) */
            fastloss_index k = 0;
            for (; k + FASTLOSS_LANES <= m; k += FASTLOSS_LANES)
                for (int j = 0; j < FASTLOSS_LANES; ++j)
                    lane[j] += sum_loss[k + j];
            for (; k < m; ++k)
                tail += sum_loss[k];
        }
        /* written after the tile's boxes were read: grad1 may be boxes1 (in place) */
        if (call->grad1)
            BOX(store_out)(NULL, (const float (*)[FASTLOSS_BOX_TILE])nt.g1, m, call->grad1 + 4 * i,
                            call->stream);
        if (call->grad2)
            BOX(store_out)(NULL, (const float (*)[FASTLOSS_BOX_TILE])nt.g2, m, call->grad2 + 4 * i,
                            call->stream);
    }
#ifdef FASTLOSS_STREAMING
    if (call->stream)
        fastloss_stream_fence();
#endif
    *negative = below;
    return fastloss_lanes_total(lane) + tail;
}
#endif /* BOX_NARROW */

#ifdef BOX_NARROW
/* Whether a box of the n (stride apart) has x2 < x1 or y2 < y1, or a NaN side. */
static int BOX(any_negative_side)(const STORE_T *boxes, fastloss_index stride, fastloss_index n)
{
    int found = 0;
    for (fastloss_index k = 0; k < n; ++k) {
        const float w = (float)LOAD(boxes, stride * k + 2) - (float)LOAD(boxes, stride * k);
        const float h = (float)LOAD(boxes, stride * k + 3) - (float)LOAD(boxes, stride * k + 1);
        found |= !(w >= 0.0f) | !(h >= 0.0f);
    }
    return found;
}
#endif

/* Every block of the call, in parallel; returns the sum of the per-pair losses (in
 * block order: the same for any thread count), and sets *negative where a double-path
 * loss of the float pass is < 0. */
static double BOX(pass)(const BOX(call) *call, fastloss_index n, fastloss_index n_blocks,
                        int threads, int *negative)
{
    double total = 0.0;
    int below = 0;
    /* Regions of at most FASTLOSS_BOX_REGION_BLOCKS blocks, one after the other: their
     * partials live on the stack, and each region's are added in block order. */
    for (fastloss_index first = 0; first < n_blocks; first += FASTLOSS_BOX_REGION_BLOCKS) {
        const fastloss_index count = n_blocks - first < FASTLOSS_BOX_REGION_BLOCKS
                                         ? n_blocks - first
                                         : FASTLOSS_BOX_REGION_BLOCKS;
        double partials[FASTLOSS_BOX_REGION_BLOCKS];
        int negatives[FASTLOSS_BOX_REGION_BLOCKS];
        /* never more threads than blocks: a thread without a block would only cost
         * its wake-up */
        const int region_threads = threads > count ? (int)count : threads;
        /* the blocks claimed a few at a time by whichever thread is free (common.h) */
        const fastloss_index claim = fastloss_claim_items(count, region_threads);
        (void)region_threads;
        (void)claim;
#ifdef _OPENMP
#pragma omp parallel for num_threads(region_threads) if (region_threads > 1) \
    schedule(dynamic, claim)
#endif
        for (fastloss_index b = 0; b < count; ++b) {
            const fastloss_index start = (first + b) * FASTLOSS_BOX_BLOCK;
            const fastloss_index end = n - start < FASTLOSS_BOX_BLOCK ? n : start + FASTLOSS_BOX_BLOCK;
            negatives[b] = 0;
#ifdef BOX_NARROW
            if (call->narrow)
                partials[b] = BOX(nblock)(call, start, end, &negatives[b]);
            else
#endif
                partials[b] = BOX(block)(call, start, end);
        }
        double region = 0.0;
        for (fastloss_index b = 0; b < count; ++b) {
            region += partials[b];
            below |= negatives[b];
        }
        total += region;
    }
    *negative = below;
    return total;
}

int RUN FASTLOSS_BOX_RUN_SIGNATURE
{
    const STORE_T *boxes1 = (const STORE_T *)boxes1_data;
    const STORE_T *boxes2 = (const STORE_T *)boxes2_data;
    STORE_T *loss_per_box = (STORE_T *)loss_per_box_data;
    STORE_T *grad1 = (STORE_T *)grad1_data, *grad2 = (STORE_T *)grad2_data;
    const fastloss_index n = options->n;
    const fastloss_index n_blocks = (n + FASTLOSS_BOX_BLOCK - 1) / FASTLOSS_BOX_BLOCK;
    const int mean = options->reduction == FASTLOSS_REDUCTION_MEAN;

    BOX(call) call;
    call.kind = options->loss;
    /* torchvision's complete_box_iou_loss calls _diou_iou_loss(boxes1, boxes2) without
     * its eps: the union and the diagonal take that function's default, 1e-7 */
    call.eps_iou = options->loss == FASTLOSS_BOX_CIOU ? 1e-7 : options->eps;
    call.eps = options->eps;
    call.boxes1 = boxes1;
    call.boxes2 = boxes2;
    call.stride1 = options->boxes1_stride;
    call.stride2 = options->boxes2_stride;
    call.want_sum = loss != NULL && options->reduction != FASTLOSS_REDUCTION_NONE;
    call.loss_per_box = options->reduction == FASTLOSS_REDUCTION_NONE ? loss_per_box : NULL;
    call.grad1 = grad1;
    call.grad2 = grad2;
    call.grads = grad1 != NULL || grad2 != NULL;
    call.grad_output = call.grads && grad_output && grad_output_stride != 0 ? grad_output : NULL;
    call.scale = grad_output && grad_output_stride == 0 ? grad_output[0] : 1.0;
    if (mean && n > 0)
        call.scale /= (double)n; /* torch's mean backward: grad / n */
    call.narrow = 0;
    /* the gradients this call writes, in bytes: streamed past the caches when large */
    call.stream = ((grad1 != NULL) + (grad2 != NULL)) * (double)n * 4 * sizeof(STORE_T) >=
                  (double)FASTLOSS_STREAM_BYTES;
#ifdef BOX_NARROW
    /* The float pass's per-call conditions (BOX(npair)): eps in range, and no
     * gradient the caller sums over pairs afterwards (a broadcast box: the sum would
     * add the pairs' errors up).  By default ciou only: measured (AMD EPYC Zen 5, 1
     * thread, CPU time, 2**23 bench pairs, 2026-11-26) the float pass takes 6.0 ns a
     * pair against 7.2 in double for ciou, but 4.7 against 3.9 (giou) and 4.5
     * against 4.0 (diou): in cache the three are as fast as double or faster
     * (3.8, 3.8, 5.5 against 3.8, 4.0, 7.3), out of it the float pass waited longer on
     * memory.  Part of that was its software prefetch (the boxes 128 pairs ahead, and
     * the gradient's lines there, which the streaming stores then had to evict),
     * removed 2026-11-27: AMD EPYC Zen 4, 1 thread, CPU time, 2**21 bench pairs, ciou
     * 2.23-2.31 ns an element without it against 2.44-2.54 with it (load 9).  Since
     * the clean loop (BOX(clean)) the double path is faster still in cache
     * (2026-11-27, Zen 5, 2**16 pairs: 2.3 and 2.4 ns against the float pass's 3.5
     * and 3.4 for giou and diou; ciou 5.6 against 4.9); on the Zen 4 without the
     * prefetch, out of cache, the float pass still loses for diou (1.64 against 1.22
     * ns an element).  FASTLOSS_BOX_FLOAT_PASS_ALWAYS turns it on for giou and
     * diou (the tests run it). */
    call.narrow = options->float_pass != FASTLOSS_BOX_FLOAT_PASS_NEVER &&
                  (options->float_pass == FASTLOSS_BOX_FLOAT_PASS_ALWAYS ||
                   call.kind == FASTLOSS_BOX_CIOU) &&
                  call.stride1 != 0 && call.stride2 != 0 && call.eps >= 0x1p-100 &&
                  call.eps <= 0x1p20;
#endif
    if (!call.want_sum && !call.loss_per_box && !call.grads)
        return FASTLOSS_OK; /* nothing asked for */

    int threads = fastloss_effective_threads(options->num_threads, 4 * n);
    int negative = 0;
    double total;
#ifdef BOX_NARROW
    /* Every float-path loss is >= 0 and within 1.9e-6 of its own: so is their sum,
     * and the total keeps the contract unless double-path losses < 0 cancel it.
     * Only a pair with a negative side has a negative loss (with every side >= 0,
     * iou <= 1 and C >= U).  Where one is < 0 every loss is summed again in double:
     * after the pass, or before it where a gradient is written over its boxes (in
     * place) and some box has a negative (or NaN) side, so that the result is the
     * same. */
    BOX(call) again = call;
    again.narrow = 0;
    again.grads = 0;
    again.grad1 = again.grad2 = NULL;
    again.loss_per_box = NULL;
    double again_total = 0.0;
    int unused;
    const int in_place = (const void *)grad1 == boxes1_data ||
                         (const void *)grad1 == boxes2_data ||
                         (const void *)grad2 == boxes1_data || (const void *)grad2 == boxes2_data;
    const int early = call.narrow && call.want_sum && in_place &&
                      (BOX(any_negative_side)(boxes1, call.stride1, call.stride1 ? n : 1) ||
                       BOX(any_negative_side)(boxes2, call.stride2, call.stride2 ? n : 1));
    if (early)
        again_total = BOX(pass)(&again, n, n_blocks, threads, &unused);
    total = BOX(pass)(&call, n, n_blocks, threads, &negative);
    if (call.narrow && call.want_sum && negative)
        total = early ? again_total : BOX(pass)(&again, n, n_blocks, threads, &unused);
#else
    total = BOX(pass)(&call, n, n_blocks, threads, &negative);
#endif
    if (call.want_sum)
        /* torchvision: the mean of no pairs is 0.0 * loss.sum() = 0, their sum 0 */
        loss[0] = mean ? (n > 0 ? total / (double)n : 0.0) : total;
    return FASTLOSS_OK;
}

#undef BOX_LOAD_BODY_
#undef BOX_CASES_
#undef BOX_CASES_KIND_
