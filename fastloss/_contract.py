"""The accuracy contract (docs/accuracy.rst), in one place.

Every result is compared with the float64 reference (``fastloss.reference``) elementwise:

    |actual - ref| <= rtol * |ref| + floor * max|ref| + atol

with ``max|ref|`` taken over the finite entries of the whole reference array (a scalar's
own magnitude for a reduced loss). ``fastloss check`` and the test suite read the bounds
from ``CONTRACT``; nothing else defines them.
"""
import dataclasses

import numpy as np

__all__ = ["CONTRACT", "UNIT_ROUNDOFF", "Tolerance", "all_pairs_products_bound", "bound",
           "dot_gamma", "info_nce_products_bound", "tolerance"]


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """The bound ``rtol * |ref| + floor * max|ref| + atol``, and why it is what it is.

    The floor makes an exact zero of the reference demand an exact zero unless larger
    entries sit beside it. The contract itself has ``atol = 0``; a bound with an
    ``atol`` (the per-row log-sum-exp, which is not a loss) says so where it is defined.
    """

    rtol: float
    floor: float
    why: str
    atol: float = 0.0

    def __str__(self):
        text = f"rtol={self.rtol:g}, floor={self.floor:g}*max|ref|"
        return text + (f", atol={self.atol:g}" if self.atol else "")


_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)

CONTRACT = {
    (_F64, "loss"): Tolerance(
        1e-12, 1e-14,
        "float64 kernels accumulate in double; only reordered roundings separate them "
        "from the reference"),
    (_F64, "grad"): Tolerance(1e-12, 1e-14, "as the float64 loss, elementwise"),
    (_F32, "loss"): Tolerance(
        2e-6, 1e-14,
        "float32 storage and exponentials with double accumulators, rounded once to "
        "float32 (about 17 float32 ulps of room); the floor only admits exact zeros"),
    (_F32, "grad"): Tolerance(
        2e-6, 1e-6,
        "exp(y - lse) in float32 loses relative accuracy in proportion to |y - lse|, so "
        "tiny probabilities get an absolute floor of 1e-6 * max|ref|"),
}


def tolerance(dtype, kind):
    """The contract's Tolerance for a ``kind`` ("loss" or "grad") result computed from
    inputs of ``dtype``; a ValueError for anything the contract does not cover."""
    key = (np.dtype(dtype), kind)
    if key not in CONTRACT:
        raise ValueError(f"the accuracy contract has no bound for dtype {np.dtype(dtype)} "
                         f"and kind {kind!r}")
    return CONTRACT[key]


def bound(ref, rule):
    """The elementwise bound of ``rule`` (a Tolerance) around the float64 array ``ref``
    (finite entries only set ``max|ref|``; 0 when none is finite)."""
    ref = np.asarray(ref, dtype=np.float64)
    finite = np.isfinite(ref)
    scale = float(np.max(np.abs(ref[finite]))) if finite.any() else 0.0
    return rule.rtol * np.abs(ref) + rule.floor * scale + rule.atol


# ----------------------------------------------------------------------------------------
# Losses that multiply matrices (docs/accuracy.rst, "Losses that multiply matrices")
# ----------------------------------------------------------------------------------------

#: unit roundoff u of each precision a product may be computed in (half an ulp of 1)
UNIT_ROUNDOFF = {_F32: 2.0**-24, _F64: 2.0**-53}

#: relative roundings of one softmax entry as the float32 pass computes it from its
#: perturbed logits (the exp, the division by the sum, the rounding to float32), with room
ROUNDINGS_PER_SOFTMAX_ENTRY = 8

# F.normalize's eps, below which a row is normalised as x / eps
_NORMALIZE_EPS = 1e-12


def dot_gamma(n, dtype):
    """``gamma_n = n u / (1 - n u)``: the standard bound of a dot product of length n in
    the precision of ``dtype`` (Higham, "Accuracy and Stability of Numerical
    Algorithms", 2nd ed., Sec. 3.1): ``|fl(a . b) - a . b| <= gamma_n sum_k |a_k| |b_k|``
    in any order of summation."""
    unit = UNIT_ROUNDOFF[np.dtype(dtype)]
    if n * unit >= 1:
        return np.inf
    return n * unit / (1 - n * unit)


def info_nce_products_bound(query, key, *, temperature, symmetric=False, reduction="mean",
                            grad_output=1.0, dtype=np.float32):
    """What info_nce's products may add to the accuracy contract, computed in ``dtype``'s
    precision: ``(loss, grad_query, grad_key)``, the loss's bound of the shape of the
    loss, each gradient's elementwise (docs/accuracy.rst has the derivation; the names
    below are its names).

    With q^, k^ the unit rows (float64), A = |q^| |k^|^T, u the unit roundoff, D the
    features, tau the temperature:

    - each logit S_ij = fl(q^_i . k^_j) / tau, and the shift the softmax subtracts from
      it, miss by at most ``eps_ij = (gamma_{D+4} A_ij + 2 u max A) / tau``;
    - the loss of row i, ``log(1 + sum_{j != i} exp(S_ij - S_ii))``, then by
      ``exp(4 e_i) sum_{j != i} P_ij (eps_ij + eps_ii)`` (e_i the row's largest eps_ij,
      P its softmax): small next to the loss itself where the row has converged; a
      column likewise with the columns' softmax Q; a query's loss is the mean of its
      two with ``symmetric``; plus gamma_{M+2} of float64 per query, the reference's own
      rounding of ``log(sum of exps)`` (a converged loss near 1e-15 is the log of a
      sum of M terms near 1);
    - every entry of G = d loss / d S by ``rho |G|``, ``rho = expm1(2 e_i) +
      8 u`` (row i's part; column j's with its own);
    - G @ k^ (inner length M) by ``E_id = sum_j (rho + gamma_{M+2} (1 + rho)) |G_ij|
      |k^_jd|``, and the normalisation's backward (g - q^ (q^ . g)) / max(|q|, eps)
      by ``(E_id + |q^_id| (|q^_i| . E_i) + 2 u |q^_id| (|q^_i| . T_i)) / max(|q_i|,
      eps)`` with T_id = sum_j |G_ij| |k^_jd| (the projection's own rounding); the
      key's gradient likewise with G^T, the query rows and inner length N.
    """
    from fastloss import reference

    unit = UNIT_ROUNDOFF[np.dtype(dtype)]
    query = np.asarray(query, np.float64)
    key = np.asarray(key, np.float64)
    n_rows, dim = query.shape
    n_keys = key.shape[0]
    q_unit, q_norm = reference._normalize(query)
    k_unit, k_norm = reference._normalize(key)
    q_abs, k_abs = np.abs(q_unit), np.abs(k_unit)
    magnitude = q_abs @ k_abs.T
    largest = float(magnitude.max()) if magnitude.size else 0.0
    logit_error = (dot_gamma(dim + 4, dtype) * magnitude + 2 * unit * largest) / temperature
    logits = q_unit @ k_unit.T / temperature
    eye = np.eye(n_rows, n_keys)

    def softmax(axis):
        shifted = np.exp(logits - logits.max(axis=axis, keepdims=True))
        return shifted / shifted.sum(axis=axis, keepdims=True)

    def minus_eye(weights, axis):
        """|weights - eye| with each target's entry 1 - P_ii taken as the sum of the
        other weights along ``axis``: computed as a difference it rounds to 0 in float64
        once the others are below 1e-16 (a converged row), where the gradient of that
        entry, and of the whole row, is the others' sum."""
        result = np.abs(weights - eye)
        others = np.sum(weights * (1.0 - eye), axis=axis, keepdims=True)
        return np.where(eye == 1.0, np.broadcast_to(others, result.shape), result)

    rows = softmax(1)
    row_worst = logit_error.max(axis=1)
    target_error = np.diagonal(logit_error)
    off_target = 1.0 - eye
    per_query = np.exp(4 * row_worst) * np.sum(
        rows * off_target * (logit_error + target_error[:, None]), axis=1)
    half = 0.5 if symmetric else 1.0
    upstream = np.abs(np.broadcast_to(np.asarray(grad_output, np.float64), (n_rows,)))
    if reduction == "mean":
        upstream = upstream / max(n_rows, 1)
    scale = half * upstream / temperature
    parts = [(minus_eye(rows, 1) * scale[:, None], np.expm1(2 * row_worst)[:, None])]
    if symmetric:
        columns = softmax(0)
        column_worst = logit_error.max(axis=0)
        per_query = 0.5 * (per_query + np.exp(4 * column_worst) * np.sum(
            columns * off_target * (logit_error + target_error[None, :]), axis=0))
        parts.append((minus_eye(columns, 0) * scale[None, :],
                      np.expm1(2 * column_worst)[None, :]))
    # and the float64 reference's own rounding of log(sum of exps): the sum of M terms
    # near 1 (a converged row: 1 + 1e-15) carries gamma_{M+2} of float64, which a loss
    # near 1e-15 does not have to spare
    per_query = per_query + dot_gamma(max(n_rows, n_keys) + 2, _F64)
    if reduction == "none":
        loss = per_query
    else:
        loss = float(per_query.sum() if reduction == "sum" else per_query.mean())

    grads = []
    for transpose, own_abs, other_abs, norm, inner in ((False, q_abs, k_abs, q_norm, n_keys),
                                                       (True, k_abs, q_abs, k_norm, n_rows)):
        gamma = dot_gamma(inner + 2, dtype)
        terms = 0.0
        weights = 0.0
        for size, spread in parts:
            rho = spread + ROUNDINGS_PER_SOFTMAX_ENTRY * unit
            terms = terms + size
            weights = weights + (rho + gamma * (1 + rho)) * size
        if transpose:
            terms, weights = terms.T, weights.T
        product_error = weights @ other_abs
        product_terms = terms @ other_abs
        along_error = np.sum(own_abs * product_error, axis=1, keepdims=True)
        along_terms = np.sum(own_abs * product_terms, axis=1, keepdims=True)
        grads.append((product_error + own_abs * along_error + 2 * unit * own_abs * along_terms)
                     / np.maximum(norm, _NORMALIZE_EPS)[:, None])
    return loss, grads[0], grads[1]


def all_pairs_products_bound(x, y=None, grad_output=1.0, *, metric, labels=None,
                             pos_margin=0.0, neg_margin=1.0, reduction=None, dtype):
    """What the backward product of the all-pairs functions may add to the accuracy
    contract of their gradients (docs/accuracy.rst): ``(grad_x,)`` or ``(grad_x,
    grad_y)``, elementwise.

    ``pairwise_distance`` (labels None) and ``contrastive_pairwise`` (labels given, y
    None) form the gradient of the prepared rows p (centred on the batch mean for the
    euclidean metrics, unit rows for the cosine) as ``r_i p_i - (W P)_i``, W the pairs'
    coefficients (``w_ij = dL/dd_ij`` times ``1 / d_ij``, 2, or 1 for the euclidean,
    squared and cosine distances) rounded to ``dtype`` and the product in ``dtype``'s
    precision: the standard bound of its inner length n (the other side's rows) gives
    ``gamma_{n+2} sum_j |w_ij| (|p_jd| + |p_id|)``, divided by ``max(|x_i|, eps)`` for the
    cosine (the normalisation's backward).
    """
    from fastloss import reference

    x = np.asarray(x, np.float64)
    symmetric = y is None
    y_rows = x if symmetric else np.asarray(y, np.float64)
    distance = reference.pairwise_distance(x, None if symmetric else y_rows, metric=metric)
    upstream = np.abs(np.broadcast_to(np.asarray(grad_output, np.float64), distance.shape))
    if labels is not None:  # contrastive_pairwise: d loss / d distance of each pair
        labels = np.asarray(labels)
        same = labels[:, None] == labels[None, :]
        slope = 2 * np.where(same, np.maximum(distance - pos_margin, 0),
                             np.maximum(neg_margin - distance, 0))
        np.fill_diagonal(slope, 0.0)
        n_rows = x.shape[0]
        if reduction != "none":
            # each pair i < j once; the coefficient of both of its rows
            per_pair = upstream / (n_rows * (n_rows - 1) // 2 if reduction == "mean"
                                   and n_rows > 1 else 1)
            weights = slope * per_pair
        else:
            weights = slope * (upstream + upstream.T)
    else:
        weights = upstream + upstream.T if symmetric else upstream
    with np.errstate(divide="ignore", invalid="ignore"):
        if metric == "euclidean":
            weights = np.where(distance > 0, weights / distance, 0.0)
        elif metric == "sqeuclidean":
            weights = 2 * weights
    if metric == "cosine":
        x_prepared, x_norm = reference._normalize(x)
        y_prepared, y_norm = reference._normalize(y_rows)
    else:
        stacked = x if symmetric else np.concatenate([x, y_rows])
        shift = stacked.mean(axis=0) if stacked.shape[0] else 0.0
        x_prepared, y_prepared = x - shift, y_rows - shift
        x_norm = y_norm = None
    sides = [(np.abs(weights), np.abs(x_prepared), np.abs(y_prepared), x_norm)]
    if not symmetric:
        sides.append((np.abs(weights).T, np.abs(y_prepared), np.abs(x_prepared), y_norm))
    bounds = []
    for side_weights, own, other, norm in sides:
        gamma = dot_gamma(other.shape[0] + 2, dtype)
        terms = side_weights @ other + side_weights.sum(axis=1, keepdims=True) * own
        bound = gamma * terms
        if norm is not None:
            bound = bound / np.maximum(norm, _NORMALIZE_EPS)[:, None]
        bounds.append(bound)
    return tuple(bounds)
