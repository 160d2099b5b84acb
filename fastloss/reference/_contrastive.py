"""Pairwise distances and contrastive losses over rows of embeddings, in float64
(see fastloss.reference)."""

import numpy as np

from fastloss.reference._common import _REDUCTIONS, _sum_to
from fastloss.reference._cross_entropy import cross_entropy, cross_entropy_grad

# ----------------------------------------------------------------------------------------
# Pairwise distances and contrastive losses (embeddings: rows of 2-d arrays)
# ----------------------------------------------------------------------------------------

_METRICS = ("euclidean", "sqeuclidean", "cosine")
_NORMALIZE_EPS = 1e-12  # torch.nn.functional.normalize's eps
_PAIRWISE_EPS = 1e-6    # torch.nn.functional.pairwise_distance's eps


def _check_embeddings(named, same_rows=True):
    """The named arrays as float64 (N, D) arrays with one D (and one N), or raise."""
    arrays = []
    for name, value in named:
        array = np.asarray(value)
        if array.dtype.kind not in "fiu":
            raise TypeError(f"{name}: expected a real numeric array, got dtype {array.dtype}")
        if array.ndim != 2:
            raise ValueError(f"{name}: expected a 2-d array (N, D), got shape {array.shape}")
        arrays.append(array.astype(np.float64))
    first = arrays[0]
    for (name, _), array in zip(named[1:], arrays[1:]):
        if array.shape[1] != first.shape[1] or (same_rows and array.shape[0] != first.shape[0]):
            raise ValueError(f"{name}: shape {array.shape} does not match {named[0][0]}'s "
                             f"{first.shape}")
    return arrays


def _check_metric_and_reduction(metric, reduction):
    if metric not in _METRICS:
        raise ValueError(f"metric: expected one of {_METRICS}, got {metric!r}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: expected one of {_REDUCTIONS}, got {reduction!r}")


def _normalize(x):
    """Rows ``x / max(|x|, 1e-12)`` (torch's F.normalize) and the norms ``|x|``. The
    norms are summed from a C-ordered copy: NumPy sums the rows of a Fortran-ordered
    array in another order, so equal rows of two layouts got norms an ulp apart, and
    a cosine distance of 5e-32 where the kernels' (and the truth) is 0."""
    x = np.ascontiguousarray(x)
    norm = np.sqrt(np.sum(x * x, axis=1))
    return x / np.maximum(norm, _NORMALIZE_EPS)[:, None], norm


def _normalize_grad(x, grad_unit):
    """Backward of F.normalize: ``(g - x^ (x^ . g)) / |x|`` where ``|x| >= eps``, and
    ``g / eps`` below (there the map is ``x / eps``), as torch's autograd."""
    unit, norm = _normalize(x)
    along = np.sum(unit * grad_unit, axis=1, keepdims=True)
    inside = (norm >= _NORMALIZE_EPS)[:, None]
    return np.where(inside, (grad_unit - unit * along) / np.maximum(norm, _NORMALIZE_EPS)[:, None],
                    grad_unit / _NORMALIZE_EPS)


def _cosine_distance(x, y):
    """``1 - x^ . y^`` for rows x (N, D) and y (N, D) or their broadcast; where both rows
    are unit vectors (norms >= eps) it is ``|x^ - y^|**2 / 2``, the same number without
    the cancellation of 1 - cos as the points meet."""
    x_unit, x_norm = _normalize(x.reshape(-1, x.shape[-1]))
    y_unit, y_norm = _normalize(y.reshape(-1, y.shape[-1]))
    x_unit, y_unit = x_unit.reshape(x.shape), y_unit.reshape(y.shape)
    both_unit = ((x_norm >= _NORMALIZE_EPS).reshape(x.shape[:-1])
                 & (y_norm >= _NORMALIZE_EPS).reshape(y.shape[:-1]))
    return np.where(both_unit, 0.5 * np.sum((x_unit - y_unit) ** 2, axis=-1),
                    1.0 - np.sum(x_unit * y_unit, axis=-1))


def _distance_matrix(x, y, metric):
    """All distances d_ij of rows x_i and y_j, from the differences (no Gram matrix)."""
    if metric == "cosine":
        return _cosine_distance(x[:, None, :], y[None, :, :])
    squared = np.sum((x[:, None, :] - y[None, :, :]) ** 2, axis=-1)
    return np.sqrt(squared) if metric == "euclidean" else squared


def _cosine_grad(x, y, upstream):
    """Gradient of ``sum_ij upstream_ij (1 - x^_i . y^_j)`` w.r.t. x.

    ``d / d x^_i = -sum_j upstream_ij y^_j``, through F.normalize's backward. For a unit
    row x^_i the projection ``-(y^_j - x^_i (x^_i . y^_j)) / |x_i|`` is written as
    ``-((y^_j - x^_i) + x^_i d_ij) / |x_i|`` (``x^_i . y^_j = 1 - d_ij``), the same vector
    without the cancellation of the projection when y^_j is close to x^_i.
    """
    x_unit, x_norm = _normalize(x)
    y_unit, _ = _normalize(y)
    distance = _cosine_distance(x[:, None, :], y[None, :, :])
    pull = (np.einsum("ij,ijk->ik", upstream, y_unit[None, :, :] - x_unit[:, None, :])
            + x_unit * np.sum(upstream * distance, axis=1, keepdims=True))
    unit = (x_norm >= _NORMALIZE_EPS)[:, None]
    return np.where(unit, -pull / np.maximum(x_norm, _NORMALIZE_EPS)[:, None],
                    -(upstream @ y_unit) / _NORMALIZE_EPS)


def _distance_matrix_grad(x, y, upstream, metric):
    """Gradients of ``sum_ij upstream_ij d_ij`` w.r.t. x and y (the rows as separate
    inputs). Euclidean: ``(x_i - y_j) / d_ij``, 0 where ``d_ij = 0`` (torch.cdist)."""
    if metric == "cosine":
        return _cosine_grad(x, y, upstream), _cosine_grad(y, x, upstream.T)
    difference = x[:, None, :] - y[None, :, :]
    if metric == "euclidean":
        distance = np.sqrt(np.sum(difference**2, axis=-1))
        coefficient = np.divide(upstream, distance, out=np.zeros_like(distance),
                                where=distance != 0)
    else:
        coefficient = 2.0 * upstream
    pull = coefficient[:, :, None] * difference
    return pull.sum(axis=1), -pull.sum(axis=0)


def pairwise_distance(x, y=None, *, metric="euclidean"):
    r"""Distances between the rows of x (N, D) and of y (M, D; default x), in float64.

    ``euclidean``: ``|x_i - y_j|`` (``torch.cdist``); ``sqeuclidean``: its square;
    ``cosine``: ``1 - x^_i . y^_j``, ``x^ = x / max(|x|, 1e-12)``
    (``1 - F.normalize(x) @ F.normalize(y).T``; for two unit rows evaluated as
    ``|x^_i - y^_j|**2 / 2``). Returns an (N, M) array.
    """
    x, = _check_embeddings([("x", x)])
    y = x if y is None else _check_embeddings([("x", x), ("y", y)], same_rows=False)[1]
    _check_metric_and_reduction(metric, "none")
    return _distance_matrix(x, y, metric)


def pairwise_distance_grad(x, y=None, grad_output=1.0, *, metric="euclidean"):
    r"""Gradient of ``sum_ij grad_output_ij * pairwise_distance(x, y)_ij``.

    grad_output: a scalar or an (N, M) array. Euclidean: ``sum_j g_ij (x_i - y_j) / d_ij``
    for x, with no contribution where ``d_ij = 0`` (torch.cdist); sqeuclidean:
    ``2 sum_j g_ij (x_i - y_j)``; cosine: ``-sum_j g_ij y^_j`` through F.normalize's
    backward. Returns the gradient w.r.t. x when y is None (x is both arguments, so both
    gradients add), else ``(grad_x, grad_y)``.
    """
    symmetric = y is None
    x, = _check_embeddings([("x", x)])
    y = x if symmetric else _check_embeddings([("x", x), ("y", y)], same_rows=False)[1]
    _check_metric_and_reduction(metric, "none")
    upstream = np.broadcast_to(np.asarray(grad_output, dtype=np.float64),
                               (x.shape[0], y.shape[0]))
    grad_x, grad_y = _distance_matrix_grad(x, y, upstream, metric)
    return grad_x + grad_y if symmetric else (grad_x, grad_y)


def pairwise_distance_value_and_grad(x, y=None, grad_output=1.0, *, metric="euclidean"):
    """``(pairwise_distance(...), pairwise_distance_grad(...))``."""
    return (pairwise_distance(x, y, metric=metric),
            pairwise_distance_grad(x, y, grad_output, metric=metric))


def _reduce_rows(loss, reduction):
    """mean / sum of a per-row loss as a Python float, or the array itself for none."""
    if reduction == "none":
        return loss
    with np.errstate(invalid="ignore"):  # the mean of nothing is 0 / 0 = nan, as torch
        return float(np.sum(loss) if reduction == "sum" else np.sum(loss) / np.float64(loss.size))


def _row_scale(grad_output, reduction, n_rows):
    """Per-row factor of a reduced loss's gradient: grad_output (a scalar, or an (N,)
    array for none), divided by N for mean."""
    grad_output = np.asarray(grad_output, dtype=np.float64)
    if reduction != "none" and grad_output.ndim != 0:
        raise ValueError(f"grad_output: expected a scalar for reduction={reduction!r}, "
                         f"got shape {grad_output.shape}")
    scale = np.broadcast_to(grad_output, (n_rows,))
    return scale / n_rows if reduction == "mean" else scale


# --- contrastive (row pairs) ---------------------------------------------------------------

def _pair_distance(x1, x2, metric):
    """d_i of rows x1_i and x2_i: ``|x1 - x2 + 1e-6|`` (F.pairwise_distance), its square,
    or ``1 - x1^ . x2^``; and the difference ``v = x1 - x2 + 1e-6``."""
    difference = x1 - x2 + _PAIRWISE_EPS
    if metric == "cosine":
        return _cosine_distance(x1, x2), difference
    squared = np.sum(difference**2, axis=1)
    return (np.sqrt(squared) if metric == "euclidean" else squared), difference


def _check_contrastive(x1, x2, label, margin, metric, reduction):
    x1, x2 = _check_embeddings([("x1", x1), ("x2", x2)])
    label = np.asarray(label, dtype=np.float64)
    if label.shape != (x1.shape[0],):
        raise ValueError(f"label: expected shape ({x1.shape[0]},), got {label.shape}")
    if not margin >= 0.0:
        raise ValueError(f"margin: expected a value >= 0, got {margin}")
    _check_metric_and_reduction(metric, reduction)
    return x1, x2, label


def contrastive(x1, x2, label, *, margin=1.0, metric="euclidean", reduction="mean"):
    r"""Contrastive loss of row pairs (Hadsell, Chopra & LeCun, CVPR 2006), in float64.

    Per pair i, with label y_i (1 similar, 0 dissimilar) and d_i as in ``_pair_distance``
    (euclidean is torch's ``F.pairwise_distance(x1, x2)``, eps 1e-6 added to the
    difference)::

        loss_i = 0.5 * (y_i * d_i**2 + (1 - y_i) * relu(margin - d_i)**2)

    "mean" averages over the N pairs.
    """
    x1, x2, label = _check_contrastive(x1, x2, label, margin, metric, reduction)
    distance, _ = _pair_distance(x1, x2, metric)
    hinge = np.maximum(margin - distance, 0.0)
    return _reduce_rows(0.5 * (label * distance**2 + (1.0 - label) * hinge**2), reduction)


def contrastive_grad(x1, x2, label, grad_output=1.0, *, margin=1.0, metric="euclidean",
                     reduction="mean"):
    r"""Gradients of ``grad_output * contrastive(...)`` w.r.t. x1 and x2 (a tuple).

    ``d loss_i / d d_i = y_i d_i - (1 - y_i) relu(margin - d_i)``, times
    ``d d_i / d x1_i``: ``v_i / d_i`` (0 at ``d_i = 0``, torch's norm backward),
    ``2 v_i`` (sqeuclidean), or ``-x2^_i`` through F.normalize (cosine, as in
    ``_cosine_grad``); x2 likewise.
    """
    x1, x2, label = _check_contrastive(x1, x2, label, margin, metric, reduction)
    distance, difference = _pair_distance(x1, x2, metric)
    hinge = np.maximum(margin - distance, 0.0)
    slope = _row_scale(grad_output, reduction, x1.shape[0]) * (
        label * distance - (1.0 - label) * hinge)
    if metric == "cosine":  # row i of each against row i of the other only
        pair = np.diag(slope)
        return _cosine_grad(x1, x2, pair), _cosine_grad(x2, x1, pair)
    if metric == "euclidean":
        per_difference = np.divide(slope, distance, out=np.zeros_like(distance),
                                   where=distance != 0)
    else:
        per_difference = 2.0 * slope
    grad = per_difference[:, None] * difference
    return grad, -grad


def contrastive_value_and_grad(x1, x2, label, grad_output=1.0, *, margin=1.0,
                               metric="euclidean", reduction="mean"):
    """``(contrastive(...), contrastive_grad(...))``."""
    options = dict(margin=margin, metric=metric, reduction=reduction)
    return (contrastive(x1, x2, label, **options),
            contrastive_grad(x1, x2, label, grad_output, **options))


# --- contrastive over all pairs of a batch ------------------------------------------------

def _check_contrastive_pairwise(embeddings, labels, pos_margin, neg_margin, metric, reduction):
    x, = _check_embeddings([("embeddings", embeddings)])
    labels = np.asarray(labels)
    if labels.dtype.kind not in "biu" or labels.shape != (x.shape[0],):
        raise ValueError(f"labels: expected integers of shape ({x.shape[0]},), got "
                         f"{labels.dtype} {labels.shape}")
    if not (pos_margin >= 0.0 and neg_margin >= 0.0):
        raise ValueError(f"margins: expected values >= 0, got {pos_margin}, {neg_margin}")
    _check_metric_and_reduction(metric, reduction)
    return x, labels[:, None] == labels[None, :]


def contrastive_pairwise(embeddings, labels, *, pos_margin=0.0, neg_margin=1.0,
                         metric="euclidean", reduction="mean"):
    r"""Contrastive loss over all pairs of a batch, in float64.

    With d_ij = pairwise_distance(embeddings, metric=metric)_ij and
    y_ij = [labels_i == labels_j]::

        L_ij = y_ij * relu(d_ij - pos_margin)**2 + (1 - y_ij) * relu(neg_margin - d_ij)**2

    for i != j, and L_ii = 0. "none" returns the N x N matrix L; "sum" adds L_ij over
    the pairs i < j; "mean" divides that by N (N - 1) / 2 (nan for N < 2).
    """
    x, same = _check_contrastive_pairwise(embeddings, labels, pos_margin, neg_margin,
                                          metric, reduction)
    distance = _distance_matrix(x, x, metric)
    loss = np.where(same, np.maximum(distance - pos_margin, 0.0) ** 2,
                    np.maximum(neg_margin - distance, 0.0) ** 2)
    np.fill_diagonal(loss, 0.0)
    if reduction == "none":
        return loss
    return _reduce_rows(loss[np.triu_indices(x.shape[0], 1)], reduction)


def contrastive_pairwise_grad(embeddings, labels, grad_output=1.0, *, pos_margin=0.0,
                              neg_margin=1.0, metric="euclidean", reduction="mean"):
    r"""Gradient of ``grad_output * contrastive_pairwise(...)`` w.r.t. the embeddings.

    ``d L_ij / d d_ij = 2 relu(d_ij - pos_margin)`` (same label) or
    ``-2 relu(neg_margin - d_ij)``; each entry's upstream ``G_ij`` is grad_output_ij for
    "none" (an (N, N) array or a scalar), and grad_output (divided by the number of
    pairs for "mean") for i < j, 0 elsewhere, for "sum" and "mean". The gradient is that
    of ``sum_ij G_ij dL_ij/dd_ij d_ij`` (pairwise_distance_grad, x as both arguments).
    """
    x, same = _check_contrastive_pairwise(embeddings, labels, pos_margin, neg_margin,
                                          metric, reduction)
    n = x.shape[0]
    grad_output = np.asarray(grad_output, dtype=np.float64)
    if reduction == "none":
        upstream = np.broadcast_to(grad_output, (n, n))
    else:
        if grad_output.ndim != 0:
            raise ValueError(f"grad_output: expected a scalar for reduction={reduction!r}")
        n_pairs = n * (n - 1) // 2
        scale = grad_output / n_pairs if reduction == "mean" and n_pairs else grad_output
        upstream = np.triu(np.full((n, n), float(scale)), 1)
    distance = _distance_matrix(x, x, metric)
    slope = np.where(same, 2.0 * np.maximum(distance - pos_margin, 0.0),
                     -2.0 * np.maximum(neg_margin - distance, 0.0))
    np.fill_diagonal(slope, 0.0)
    grad_x, grad_y = _distance_matrix_grad(x, x, upstream * slope, metric)
    return grad_x + grad_y


def contrastive_pairwise_value_and_grad(embeddings, labels, grad_output=1.0, *, pos_margin=0.0,
                                        neg_margin=1.0, metric="euclidean", reduction="mean"):
    """``(contrastive_pairwise(...), contrastive_pairwise_grad(...))``."""
    options = dict(pos_margin=pos_margin, neg_margin=neg_margin, metric=metric,
                   reduction=reduction)
    return (contrastive_pairwise(embeddings, labels, **options),
            contrastive_pairwise_grad(embeddings, labels, grad_output, **options))


# --- info_nce -------------------------------------------------------------------------------

def _info_nce_logits(query, key, temperature, symmetric, reduction):
    query, key = _check_embeddings([("query", query), ("key", key)], same_rows=False)
    if key.shape[0] < query.shape[0] or (symmetric and key.shape[0] != query.shape[0]):
        raise ValueError(f"key: {key.shape[0]} rows do not fit {query.shape[0]} queries "
                         f"(symmetric={symmetric})")
    if not temperature > 0.0:
        raise ValueError(f"temperature: expected a value > 0, got {temperature}")
    _check_metric_and_reduction("cosine", reduction)
    logits = _normalize(query)[0] @ _normalize(key)[0].T / temperature
    return query, key, logits, np.arange(query.shape[0])


def info_nce(query, key, *, temperature=0.05, symmetric=False, reduction="mean"):
    r"""InfoNCE with in-batch negatives, in float64.

    ``s_ij = q^_i . k^_j / temperature`` (rows L2-normalised as F.normalize), and the
    loss of query i is ``cross_entropy(s_i, target=i)`` (sentence-transformers'
    MultipleNegativesRankingLoss with scale 1 / temperature). ``symmetric=True`` makes it
    ``(cross_entropy(s_i, i) + cross_entropy(s^T_i, i)) / 2`` (CLIP). "mean" averages
    over the N queries; "none" returns the (N,) per-query losses.
    """
    _, _, logits, target = _info_nce_logits(query, key, temperature, symmetric, reduction)
    if target.size == 0:
        return _reduce_rows(np.zeros(0), reduction)
    loss = cross_entropy(logits, target, reduction="none")
    if symmetric:
        loss = 0.5 * (loss + cross_entropy(logits.T, target, reduction="none"))
    return _reduce_rows(loss, reduction)


def info_nce_grad(query, key, grad_output=1.0, *, temperature=0.05, symmetric=False,
                  reduction="mean"):
    r"""Gradients of ``grad_output * info_nce(...)`` w.r.t. query and key (a tuple).

    With ``G = d loss / d s`` from cross_entropy_grad (rows; plus the transpose of the
    column-wise one, each halved, when symmetric)::

        grad q^ = G k^ / temperature,   grad k^ = G^T q^ / temperature

    then through F.normalize's backward.
    """
    query, key, logits, target = _info_nce_logits(query, key, temperature, symmetric,
                                                  reduction)
    if target.size == 0:
        return np.zeros(query.shape), np.zeros(key.shape)
    scale = _row_scale(grad_output, reduction, target.size) * (0.5 if symmetric else 1.0)
    grad_logits = cross_entropy_grad(logits, target, scale, reduction="none")
    if symmetric:
        grad_logits = grad_logits + cross_entropy_grad(logits.T, target, scale,
                                                       reduction="none").T
    query_unit, key_unit = _normalize(query)[0], _normalize(key)[0]
    if symmetric:
        grad_query_unit = grad_logits @ key_unit / temperature
    else:
        grad_query_unit = _info_nce_query_rows(grad_logits, key_unit, temperature)
    return (_normalize_grad(query, grad_query_unit),
            _normalize_grad(key, grad_logits.T @ query_unit / temperature))


def _info_nce_query_rows(grad_logits, key_unit, temperature):
    r"""``grad_logits @ key_unit / temperature`` for a non-symmetric InfoNCE, written
    without cancellation::

        sum_j G_ij k^_j = sum_{j != i} G_ij (k^_j - k^_i)

    since each row of G = s_i (softmax_i - onehot_i) sums to zero. With duplicated keys
    the plain product cancels terms of about 0.5 to the probability of a far negative
    (1e-12), keeping only float64 rounding; here the duplicate's term is exactly 0.  A
    few rows at a time, so that their differences (rows x M x D, in one buffer) stay near
    8 MB rather than N x M x D (1.6 GB, 2 s at N = M = 512, D = 768).
    """
    n_rows = grad_logits.shape[0]
    weights = grad_logits.copy()
    weights[np.arange(n_rows), np.arange(n_rows)] = 0.0
    result = np.empty((n_rows, 1, key_unit.shape[1]))
    step = max(1, min(n_rows, 2**20 // max(1, key_unit.size)))
    differences = np.empty((step,) + key_unit.shape)
    for start in range(0, n_rows, step):
        stop = min(start + step, n_rows)
        block = differences[:stop - start]
        np.subtract(key_unit[None, :, :], key_unit[start:stop, None, :], out=block)
        np.matmul(weights[start:stop, None, :], block, out=result[start:stop])
    return result[:, 0, :] / temperature


def info_nce_value_and_grad(query, key, grad_output=1.0, *, temperature=0.05, symmetric=False,
                            reduction="mean"):
    """``(info_nce(...), info_nce_grad(...))``."""
    options = dict(temperature=temperature, symmetric=symmetric, reduction=reduction)
    return info_nce(query, key, **options), info_nce_grad(query, key, grad_output, **options)


# --- triplet_margin -------------------------------------------------------------------------

def _p_norm(v, p):
    """torch's ``linalg.vector_norm(v, p)`` over the last axis (pairwise_distance's): the
    max (min) of |v| for p = inf (-inf), the count of nonzero entries for p = 0, else
    ``sum(|v|**p)**(1/p)``, negative p included. One element's norm is |v| itself for
    every p but 0 (exactly, as torch's norm of a 0-d tensor). Summed from a C-ordered
    copy, as _normalize: equal rows in two layouts have equal norms (a tie of swap's
    minimum stays a tie)."""
    a = np.ascontiguousarray(np.abs(v))
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        if a.shape[-1] == 1 and p != 0:
            return a[..., 0]
        if p == np.inf:
            return np.max(a, axis=-1)
        if p == -np.inf:
            return np.min(a, axis=-1)
        if p == 0:
            return np.sum(a != 0, axis=-1).astype(np.float64)
        if p == 2:
            return np.sqrt(np.sum(a**2, axis=-1))
        return np.sum(a**p, axis=-1) ** (1.0 / p)


def _p_norm_grad(v, norm, p):
    """``d |v|_p / d v`` as torch's norm backward gives it: ``v / |v|`` for p = 2 (0 at
    |v| = 0); ``sign(v)`` for p = 1; for p = +-inf ``sign(v)`` shared equally by the
    entries where ``|v| == |v|_p`` or v is NaN; 0 for p = 0; ``sign(v) |v|**(p-1) /
    |v|_p**(p-1)`` for p > 1 (0 at |v|_p = 0) and for p < 1 (0 where v = 0; torch
    multiplies by ``|v|_p**(1-p)``, the same number)."""
    norm = norm[..., None]
    sign = np.sign(v)
    a = np.abs(v)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        if p == 2:
            return np.where(norm == 0, 0.0, v / norm)
        if p == 1:
            return sign
        if p == 0:
            return np.zeros_like(v)
        if np.isinf(p):
            shares = (a == norm) | np.isnan(v)
            return sign * shares / np.sum(shares, axis=-1, keepdims=True)
        if p > 1:
            return np.where(norm == 0, 0.0, sign * a ** (p - 1) / norm ** (p - 1))
        return np.where(v == 0, 0.0, sign * a ** (p - 1) / norm ** (p - 1))


def _check_triplet(anchor, positive, negative, margin, p, eps, reduction):
    """The three inputs as float64 arrays of their own shapes (0-d ones as one feature),
    or raise. Shapes follow torch: the same number of dimensions, broadcasting, the last
    axis the features."""
    named = [("anchor", anchor), ("positive", positive), ("negative", negative)]
    arrays = []
    for name, value in named:
        array = np.asarray(value)
        if array.dtype.kind not in "fiu":
            raise TypeError(f"{name}: expected a real numeric array, got dtype {array.dtype}")
        arrays.append(array.astype(np.float64))
    if len({array.ndim for array in arrays}) != 1:
        raise ValueError(f"anchor, positive, negative: expected the same number of "
                         f"dimensions, got shapes {[array.shape for array in arrays]}")
    np.broadcast_shapes(*(array.shape for array in arrays))  # raises if they do not
    if not margin > 0.0:
        raise ValueError(f"margin: expected a value > 0 (as torch), got {margin}")
    if np.isnan(p):
        raise ValueError(f"p: expected a number or +-inf, got {p}")
    if not np.isfinite(eps):
        raise ValueError(f"eps: expected a finite value, got {eps}")
    _check_metric_and_reduction("euclidean", reduction)
    return [array.reshape(1) if array.ndim == 0 else array for array in arrays]


def _triplet_parts(anchor, positive, negative, p, eps, swap):
    """The differences and distances of the three pairs (broadcast as torch), and the
    negative distance with its split between d(a, n) and d(p, n)."""
    p, eps = float(p), float(eps)  # NumPy scalars too: 1 / p in float64, not float16
    a, pos, neg = anchor, positive, negative
    v_ap, v_an, v_pn = a - pos + eps, a - neg + eps, pos - neg + eps
    d_ap, d_an = _p_norm(v_ap, p), _p_norm(v_an, p)
    if swap:
        d_pn = _p_norm(v_pn, p)
        # torch.minimum: a tie gives each half the gradient; NaN wins
        weight_an = np.where(d_an < d_pn, 1.0, np.where(d_an == d_pn, 0.5, 0.0))
        d_neg = np.where(weight_an > 0, d_an, d_pn)
    else:
        d_pn, weight_an, d_neg = None, np.ones_like(d_an), d_an
    return v_ap, v_an, v_pn, d_ap, d_an, d_pn, weight_an, d_neg


def triplet_margin(anchor, positive, negative, *, margin=1.0, p=2.0, eps=1e-6, swap=False,
                   reduction="mean"):
    r"""Triplet margin loss, as torch.nn.functional.triplet_margin_loss, in float64.

    ``loss = max(margin + d(a, p) - d_neg, 0)`` with ``d(u, v) = |u - v + eps|_p`` over
    the last axis (torch's pairwise_distance: any p, ``inf`` and ``p < 1`` included) and
    ``d_neg = d(a, n)``, or ``min(d(a, n), d(p, n))`` with swap (Balntas et al., BMVC
    2016). Inputs have one number of dimensions and broadcast; the loss has their
    broadcast shape without the last axis (0-d inputs: one feature each).
    """
    zero_d = np.ndim(anchor) == 0
    a, pos, neg = _check_triplet(anchor, positive, negative, margin, p, eps, reduction)
    _, _, _, d_ap, _, _, _, d_neg = _triplet_parts(a, pos, neg, p, eps, swap)
    loss = np.maximum(margin + d_ap - d_neg, 0.0)
    loss = loss.reshape(()) if zero_d else loss
    if reduction == "none":
        return np.array(loss, dtype=np.float64)
    with np.errstate(invalid="ignore"):  # the mean of nothing is 0 / 0 = nan, as torch
        return float(np.sum(loss) if reduction == "sum" else np.sum(loss) / np.float64(loss.size))


def _triplet_grad_terms(anchor, positive, negative, grad_output, *, margin, p, eps, swap,
                        reduction):
    """The terms of each input's gradient (triplet_margin_grad's formulas): per input, its
    shape and its (sign, term) pairs, each term over the broadcast shape."""
    shapes = [np.shape(anchor), np.shape(positive), np.shape(negative)]
    a, pos, neg = _check_triplet(anchor, positive, negative, margin, p, eps, reduction)
    v_ap, v_an, v_pn, d_ap, d_an, d_pn, weight_an, d_neg = _triplet_parts(
        a, pos, neg, p, eps, swap)
    excess = margin + d_ap - d_neg
    loss_shape = excess.shape
    upstream = np.asarray(grad_output, dtype=np.float64)
    if reduction != "none" and upstream.ndim != 0:
        raise ValueError(f"grad_output: expected a scalar for reduction={reduction!r}, "
                         f"got shape {upstream.shape}")
    if upstream.ndim != 0 and upstream.size != excess.size:
        raise ValueError(f"grad_output: expected a scalar or the loss's shape, "
                         f"got {upstream.shape}")
    upstream = upstream.reshape(loss_shape) if upstream.ndim else upstream
    scale = np.broadcast_to(upstream, loss_shape) * (excess >= 0.0)
    if reduction == "mean":
        scale = scale / np.float64(excess.size)
    scale = scale[..., None]
    with np.errstate(invalid="ignore"):
        u_ap = scale * _p_norm_grad(v_ap, d_ap, p)
        u_an = scale * weight_an[..., None] * _p_norm_grad(v_an, d_an, p)
        u_pn = (scale * (1.0 - weight_an)[..., None] * _p_norm_grad(v_pn, d_pn, p)
                if swap else None)
    return ((shapes[0], [(1, u_ap), (-1, u_an)]),
            (shapes[1], [(-1, u_ap), (-1, u_pn)]),
            (shapes[2], [(1, u_an), (1, u_pn)]))


def _triplet_sum_terms(shape, terms, magnitude=False):
    """An input's gradient from its terms: each summed over the axes broadcasting added
    or stretched, then added with its sign (with ``magnitude``, |term| added instead)."""
    padded = shape if shape else (1,)
    grad = np.zeros(padded)
    for sign, term in terms:
        if term is not None:
            grad = grad + (_sum_to(np.abs(term), padded) if magnitude
                           else sign * _sum_to(term, padded))
    return grad.reshape(shape)


def triplet_margin_grad(anchor, positive, negative, grad_output=1.0, *, margin=1.0, p=2.0,
                        eps=1e-6, swap=False, reduction="mean"):
    r"""Gradients of ``grad_output * triplet_margin(...)`` w.r.t. anchor, positive and
    negative (a tuple, each of its input's shape), as torch's autograd: elements with
    ``margin + d_ap - d_neg >= 0`` pass the gradient (clamp_min), ``u_xy = d |x - y +
    eps|_p / d x`` (:func:`_p_norm_grad`), and with swap a tie between ``d(a, n)`` and
    ``d(p, n)`` gives each half (torch.minimum)::

        grad a = u_ap - w_an u_an,  grad p = -u_ap - w_pn u_pn,  grad n = w_an u_an + w_pn u_pn

    each term summed over the axes broadcasting added or stretched, separately (a pair
    whose inputs both have one feature compares those alone).
    """
    parts = _triplet_grad_terms(anchor, positive, negative, grad_output, margin=margin, p=p,
                                eps=eps, swap=swap, reduction=reduction)
    return tuple(_triplet_sum_terms(shape, terms) for shape, terms in parts)


def _triplet_grad_magnitude(anchor, positive, negative, grad_output=1.0, *, margin=1.0,
                            p=2.0, eps=1e-6, swap=False, reduction="mean"):
    """Per input, the sum of the magnitudes of the terms each entry of its gradient adds
    (docs/accuracy.rst's bound for a gradient that sums terms)."""
    parts = _triplet_grad_terms(anchor, positive, negative, grad_output, margin=margin, p=p,
                                eps=eps, swap=swap, reduction=reduction)
    return tuple(_triplet_sum_terms(shape, terms, magnitude=True) for shape, terms in parts)


def triplet_margin_value_and_grad(anchor, positive, negative, grad_output=1.0, *, margin=1.0,
                                  p=2.0, eps=1e-6, swap=False, reduction="mean"):
    """``(triplet_margin(...), triplet_margin_grad(...))``."""
    options = dict(margin=margin, p=p, eps=eps, swap=swap, reduction=reduction)
    return (triplet_margin(anchor, positive, negative, **options),
            triplet_margin_grad(anchor, positive, negative, grad_output, **options))


# every public function of this module is a loss's entry point (fastloss.reference
# exports them): a function added here is exported without another line
__all__ = [_name for _name, _value in list(globals().items())
           if callable(_value) and not _name.startswith("_")
           and getattr(_value, "__module__", None) == __name__]
