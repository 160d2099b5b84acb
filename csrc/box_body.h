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

/*
 * Pair k of the tile: its loss, and with `grads` the gradients of upstream *
 * loss w.r.t. both boxes, the chain rule written out in the order torch's
 * autograd takes it through torchvision's formula (box.c lists the steps), so
 * that every select, every masked zero and every inf or NaN is autograd's.
 * `kind` and `grads` are constants where it is inlined, so each loop is one
 * loss's straight-line code.
 *   eps_iou: the eps of the union (and diou's diagonal); eps: the eps of giou's
 *   enclosing area and of ciou's alpha (box.c: ciou's union and diagonal take
 *   torchvision's default 1e-7 whatever the caller's eps).
 */
FASTLOSS_INLINE void BOX(pair)(BOX(tile) *FASTLOSS_RESTRICT tile, fastloss_index k,
                               const int kind, const int grads, const double eps_iou,
                               const double eps)
{
    const double x1 = tile->in1[0][k], y1 = tile->in1[1][k];
    const double x2 = tile->in1[2][k], y2 = tile->in1[3][k];
    const double u1 = tile->in2[0][k], v1 = tile->in2[1][k];
    const double u2 = tile->in2[2][k], v2 = tile->in2[3][k];

    /* 1. intersection and union (torchvision's _loss_inter_union) */
    const double w1 = x2 - x1, h1 = y2 - y1, w2 = u2 - u1, h2 = v2 - v1;
    const double area1 = w1 * h1, area2 = w2 * h2;
    const double ix1 = BOX(maximum)(x1, u1), iy1 = BOX(maximum)(y1, v1);
    const double ix2 = BOX(minimum)(x2, u2), iy2 = BOX(minimum)(y2, v2);
    const double iw = ix2 - ix1, ih = iy2 - iy1;
    const int overlap = (iy2 > iy1) & (ix2 > ix1);
    const double inter = overlap ? iw * ih : 0.0;
    const double union_area = area1 + area2 - inter;
    const double shifted_union = union_area + eps_iou;
    const double iou = inter / shifted_union;

    /* 2. the smallest enclosing box */
    const double cx1 = BOX(minimum)(x1, u1), cy1 = BOX(minimum)(y1, v1);
    const double cx2 = BOX(maximum)(x2, u2), cy2 = BOX(maximum)(y2, v2);
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
            const double grad_q2 = grad_angle / (q2 * q2 + 1.0);
            const double grad_q1 = -grad_angle / (q1 * q1 + 1.0);
            grad_w1 = grad_q1 / h1;
            grad_h1 = -grad_q1 * (q1 / h1);
            grad_w2 = grad_q2 / h2;
            grad_h2 = -grad_q2 * (q2 / h2);
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
    BOX(maximum_backward)(x1, u1, -grad_iw, &gx1, &gu1);
    BOX(maximum_backward)(y1, v1, -grad_ih, &gy1, &gv1);
    BOX(minimum_backward)(x2, u2, grad_iw, &gx2, &gu2);
    BOX(minimum_backward)(y2, v2, grad_ih, &gy2, &gv2);
    BOX(minimum_backward)(x1, u1, -grad_cw, &gx1, &gu1);
    BOX(minimum_backward)(y1, v1, -grad_ch, &gy1, &gv1);
    BOX(maximum_backward)(x2, u2, grad_cw, &gx2, &gu2);
    BOX(maximum_backward)(y2, v2, grad_ch, &gy2, &gv2);
    tile->out1[0][k] = gx1;
    tile->out1[1][k] = gy1;
    tile->out1[2][k] = gx2;
    tile->out1[3][k] = gy2;
    tile->out2[0][k] = gu1;
    tile->out2[1][k] = gv1;
    tile->out2[2][k] = gu2;
    tile->out2[3][k] = gv2;
}

/* The m pairs of a tile, for one loss (`kind`, `grads`: constants where inlined). */
FASTLOSS_INLINE void BOX(compute_loop)(BOX(tile) *FASTLOSS_RESTRICT tile, fastloss_index m,
                                       const int kind, const int grads, double eps_iou,
                                       double eps)
{
    for (fastloss_index k = 0; k < m; ++k)
        BOX(pair)(tile, k, kind, grads, eps_iou, eps);
}

static void BOX(compute)(BOX(tile) *FASTLOSS_RESTRICT tile, fastloss_index m, int kind,
                         int grads, double eps_iou, double eps)
{
    switch (kind * 2 + (grads != 0)) {
    case FASTLOSS_BOX_GIOU * 2:
        BOX(compute_loop)(tile, m, FASTLOSS_BOX_GIOU, 0, eps_iou, eps);
        break;
    case FASTLOSS_BOX_GIOU * 2 + 1:
        BOX(compute_loop)(tile, m, FASTLOSS_BOX_GIOU, 1, eps_iou, eps);
        break;
    case FASTLOSS_BOX_DIOU * 2:
        BOX(compute_loop)(tile, m, FASTLOSS_BOX_DIOU, 0, eps_iou, eps);
        break;
    case FASTLOSS_BOX_DIOU * 2 + 1:
        BOX(compute_loop)(tile, m, FASTLOSS_BOX_DIOU, 1, eps_iou, eps);
        break;
    case FASTLOSS_BOX_CIOU * 2:
        BOX(compute_loop)(tile, m, FASTLOSS_BOX_CIOU, 0, eps_iou, eps);
        break;
    default:
        BOX(compute_loop)(tile, m, FASTLOSS_BOX_CIOU, 1, eps_iou, eps);
        break;
    }
}

/* m boxes from `boxes` (stride 4: contiguous, 0: one box for all, else a strided
 * view) into the tile's coordinate arrays, in double.  The contiguous loop reads
 * the interleaved coordinates with vector loads and lets the compiler
 * deinterleave them. */
static void BOX(load)(const STORE_T *FASTLOSS_RESTRICT boxes, fastloss_index stride,
                      fastloss_index m, double (*FASTLOSS_RESTRICT coordinate)[FASTLOSS_BOX_TILE])
{
    if (stride == 4) {
        for (fastloss_index k = 0; k < m; ++k) {
            coordinate[0][k] = (double)LOAD(boxes, 4 * k);
            coordinate[1][k] = (double)LOAD(boxes, 4 * k + 1);
            coordinate[2][k] = (double)LOAD(boxes, 4 * k + 2);
            coordinate[3][k] = (double)LOAD(boxes, 4 * k + 3);
        }
    } else {
        for (fastloss_index k = 0; k < m; ++k)
            for (int c = 0; c < 4; ++c)
                coordinate[c][k] = (double)LOAD(boxes, stride * k + c);
    }
}

/* The tile's gradient of m pairs, rounded once to the storage type and interleaved
 * into (m, 4). */
static void BOX(store)(const double (*FASTLOSS_RESTRICT coordinate)[FASTLOSS_BOX_TILE],
                       fastloss_index m, STORE_T *FASTLOSS_RESTRICT out)
{
    for (fastloss_index k = 0; k < m; ++k) {
        STORE_WIDE(out, 4 * k, coordinate[0][k]);
        STORE_WIDE(out, 4 * k + 1, coordinate[1][k]);
        STORE_WIDE(out, 4 * k + 2, coordinate[2][k]);
        STORE_WIDE(out, 4 * k + 3, coordinate[3][k]);
    }
}

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
        BOX(compute)(&tile, m, call->kind, call->grads, call->eps_iou, call->eps);
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
            BOX(store)((const double (*)[FASTLOSS_BOX_TILE])tile.out1, m, call->grad1 + 4 * i);
        if (call->grad2)
            BOX(store)((const double (*)[FASTLOSS_BOX_TILE])tile.out2, m, call->grad2 + 4 * i);
    }
    return fastloss_lanes_total(lane) + tail;
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
    if (!call.want_sum && !call.loss_per_box && !call.grads)
        return FASTLOSS_OK; /* nothing asked for */

    int threads = fastloss_effective_threads(options->num_threads, 4 * n);
    double total = 0.0;
    /* Regions of at most FASTLOSS_BOX_REGION_BLOCKS blocks, one after the other: their
     * partials live on the stack, and each region's are added in block order. */
    for (fastloss_index first = 0; first < n_blocks; first += FASTLOSS_BOX_REGION_BLOCKS) {
        const fastloss_index count = n_blocks - first < FASTLOSS_BOX_REGION_BLOCKS
                                         ? n_blocks - first
                                         : FASTLOSS_BOX_REGION_BLOCKS;
        double partials[FASTLOSS_BOX_REGION_BLOCKS];
        /* never more threads than blocks: a thread without a block would only cost
         * its wake-up */
        const int region_threads = threads > count ? (int)count : threads;
        (void)region_threads;
#ifdef _OPENMP
#pragma omp parallel for num_threads(region_threads) if (region_threads > 1) schedule(static)
#endif
        for (fastloss_index b = 0; b < count; ++b) {
            const fastloss_index start = (first + b) * FASTLOSS_BOX_BLOCK;
            const fastloss_index end = n - start < FASTLOSS_BOX_BLOCK ? n : start + FASTLOSS_BOX_BLOCK;
            partials[b] = BOX(block)(&call, start, end);
        }
        double region = 0.0;
        for (fastloss_index b = 0; b < count; ++b)
            region += partials[b];
        total += region;
    }
    if (call.want_sum)
        /* torchvision: the mean of no pairs is 0.0 * loss.sum() = 0, their sum 0 */
        loss[0] = mean ? (n > 0 ? total / (double)n : 0.0) : total;
    return FASTLOSS_OK;
}
