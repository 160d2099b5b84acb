"""info_nce (InfoNCE, CLIP's symmetric loss) over embeddings: the public functions, the
float32 path (unit rows, one BLAS product, the C softmax pass, two backward products)
and the float64 one; fastloss.contrastive exports them with the other embedding losses."""
import math

import numpy as np

from fastloss import _kernels
from fastloss._all_pairs import NORMALIZE_EPS
from fastloss._config import resolve_num_threads
from fastloss._embeddings import (
    _copy_back,
    _embedding_set,
    _finish_targets,
    _grad_dtypes,
    _grad_targets,
    _loss_value,
    _round_into,
    _value_dtype,
)
from fastloss._validation import (
    grad_output_arg,
    is_half,
    real_scalar,
    reduction_arg,
)

__all__ = ["info_nce", "info_nce_grad", "info_nce_value_and_grad"]


# A row of a float32 backward product G @ p^ carries rounding of about a float32 ulp of its
# terms' size, sum_j |G_ij| |p^_j|.  Where the row is much smaller than its terms (they
# cancel: duplicated keys), or the normalisation's backward keeps a small part of it (a
# gradient along the row itself; a row below eps, scaled by 1 / eps), that rounding is no
# longer small next to the result: such rows are recomputed in float64 (all of them when
# they are many).  The fuzz harness found both kinds.
_CANCELLED = 0.1


def _redo_cancelled_rows(weights, weight_sums, other_unit, norm, grad_unit, result,
                         temperature, single, zero_sum_rows):
    """Recompute the rows of ``grad_unit`` (= weights @ other_unit / temperature) whose
    terms cancelled (_CANCELLED); whether any was.  weight_sums: the rows' sum_j
    |weights_ij|.  From a float32 product (``single``) the rows are recomputed in float64.
    Where the rows of ``weights`` sum to zero (``zero_sum_rows``: the query side of a
    non-symmetric loss, G = s (softmax - onehot)), the cancelling rows are written as
    sum_{j != i} G_ij (k^_j - k^_i), in which a duplicated key's term is exactly 0
    instead of a float64 rounding of two terms of 0.5 (the reference does the same)."""
    size = np.sqrt(np.einsum("ij,ij->i", grad_unit, grad_unit))
    terms = weight_sums / temperature  # the unit rows have |p^_j| <= 1
    cancelled = size < _CANCELLED * terms
    if single:
        values = result.astype(np.float32) if is_half(result.dtype) else result
        kept = np.sqrt(np.einsum("ij,ij->i", values, values, dtype=np.float64))
        cancelled |= ((norm < NORMALIZE_EPS)
                      | (kept * np.maximum(norm, NORMALIZE_EPS) < _CANCELLED * size))
    rows = np.flatnonzero(cancelled)
    if not rows.size:
        return False
    if single and rows.size > weights.shape[0] // 4:
        np.matmul(weights, other_unit, out=grad_unit)
        grad_unit /= temperature
    elif single:
        grad_unit[rows] = (weights[rows] @ other_unit) / temperature
    if zero_sum_rows:
        # rows of (rows, M, D) differences a block at a time: a few MiB each
        block = max(1, (1 << 19) // max(1, other_unit.size))
        for start in range(0, rows.size, block):
            chunk = rows[start:start + block]
            chunk_weights = np.array(weights[chunk], dtype=np.float64)
            chunk_weights[np.arange(chunk.size), chunk] = 0.0
            differences = other_unit[None, :, :] - other_unit[chunk][:, None, :]
            grad_unit[chunk] = np.einsum("rm,rmd->rd", chunk_weights,
                                         differences) / temperature
    return True


PRECISIONS = ("input", "float64")

# The float32 path reads s / temperature in float32: 1 / temperature must be finite there.
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _precision_arg(precision):
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    return precision


def _info_nce_float32(q, k, upstream, per_row, temperature, symmetric, reduction, targets,
                      threads, want_grad):
    """info_nce of float32 (or half, read in place) rows with float32 products: the unit
    rows (float32, norms in double), s = q^ k^T (BLAS), one C kernel for the softmax of
    the rows (and columns) that writes d loss / d s over s, then G @ k^ and G^T @ q^
    (BLAS, the transpose read in place) and the normalisation's backward (each gradient
    element rounded once to its target's dtype: float32 or half)."""
    n = q.shape[0]
    q_unit, q_norm = _kernels.nce_unit_rows(q, NORMALIZE_EPS, threads)
    k_unit, k_norm = _kernels.nce_unit_rows(k, NORMALIZE_EPS, threads)
    similarities = q_unit @ k_unit.T
    half = 0.5 if symmetric else 1.0
    if not want_grad:
        scale = np.zeros(1)
    elif per_row:
        scale = np.ascontiguousarray(upstream * half, dtype=np.float64)
    else:
        scale = np.array([float(upstream[0]) * half / (n if reduction == "mean" else 1)])
    # (the kernel first recomputes in float64 the similarities that carry weight)
    row_loss, column_loss = _kernels.nce_softmax(similarities, temperature, bool(symmetric),
                                                 scale, want_grad, threads, q_unit, k_unit)
    per_query = 0.5 * (row_loss + column_loss) if symmetric else row_loss
    if reduction == "none":
        loss = per_query.astype(np.float32)
    else:
        loss = _loss_value(per_query.sum() / (n if reduction == "mean" else 1), np.float32)
    if not want_grad:
        return loss, None
    grad_logits = similarities  # the kernel wrote the gradient over the similarities
    for (_, target, _), weights, other_unit, unit, norm in (
            (targets[0], grad_logits, k_unit, q_unit, q_norm),
            (targets[1], grad_logits.T, q_unit, k_unit, k_norm)):
        grad_unit = weights @ other_unit
        _kernels.nce_unit_backward(unit, norm, grad_unit, target, NORMALIZE_EPS, threads)
    return loss, tuple(_finish_targets(targets))


def _info_nce(query, key, grad_output, temperature, symmetric, reduction, out, num_threads,
              want_grad, precision="input", grad_dtype=None):
    from fastloss.cross_entropy import cross_entropy, cross_entropy_value_and_grad

    arrays, dtypes, dtype = _embedding_set([("query", query), ("key", key)], same_rows=False)
    dtypes = _grad_dtypes(grad_dtype, dtypes)
    q, k = arrays
    n, m = q.shape[0], k.shape[0]
    if m < n:
        raise ValueError(f"key: expected at least {n} rows (the N of query: row i is query "
                         f"i's positive), got shape {k.shape}")
    if not isinstance(symmetric, (bool, np.bool_)):
        raise TypeError(f"symmetric: expected a bool, got {symmetric!r}")
    if symmetric and m != n:
        raise ValueError(f"key: symmetric=True needs as many rows as query ({n}), "
                         f"got shape {k.shape}")
    temperature = real_scalar(temperature, "temperature", low=0.0, low_open=True)
    reduction = reduction_arg(reduction)
    precision = _precision_arg(precision)
    threads = resolve_num_threads(num_threads)
    upstream = grad_output_arg(grad_output, reduction, (n,)) if want_grad else None
    targets = []
    if want_grad:
        targets = _grad_targets(out, [q.shape, k.shape], dtypes, arrays + [query, key])
    if n == 0:
        loss = (np.empty(0, _value_dtype(dtype)) if reduction == "none"
                else _loss_value(0.0 if reduction == "sum" else math.nan, dtype))
        for _, target, _ in targets:
            target[...] = 0
        return loss, (tuple(_finish_targets(targets)) if want_grad else None)
    per_row = want_grad and reduction == "none" and np.ndim(grad_output) != 0
    narrow = dtype == np.float32 or is_half(dtype)  # float32 products
    if narrow and precision == "input" and 1.0 / temperature < _FLOAT32_MAX:
        if want_grad and any(t[1].dtype not in (np.float32, dtype) for t in targets):
            # a gradient the kernel does not write (a half one of a call promoted to
            # float32: a mixed call): float32 into a scratch array, rounded after
            scratch = [(r, t if t.dtype in (np.float32, dtype) else np.empty(t.shape,
                                                                             np.float32), c)
                       for r, t, c in targets]
            loss, _ = _info_nce_float32(q, k, upstream, per_row, temperature, symmetric,
                                        reduction, scratch, threads, want_grad)
            _copy_back(targets, [t for _, t, _ in scratch])
            return loss, tuple(_finish_targets(targets))
        return _info_nce_float32(q, k, upstream, per_row, temperature, symmetric, reduction,
                                 targets, threads, want_grad)

    # float64 inputs, or precision="float64": unit rows and similarities in float64
    # whatever the dtype, so that the 1 / temperature scale (20 by default) does not
    # magnify float32 rounding past the accuracy contract; the cross-entropy kernel on
    # them (and on their transpose). The backward products run in the dtype, as
    # contrastive_pairwise's, with the rows whose terms cancel redone in float64.
    single = narrow and want_grad
    q_unit, q_unit_real, q_norm = _kernels.dist_prepare_rows(q, "cosine", None, NORMALIZE_EPS,
                                                             single, threads)
    k_unit, k_unit_real, k_norm = _kernels.dist_prepare_rows(k, "cosine", None, NORMALIZE_EPS,
                                                             single, threads)
    logits = q_unit @ k_unit.T
    logits /= temperature
    target = np.arange(n)
    options = dict(reduction=reduction, num_threads=threads)
    columns = None
    if symmetric:  # s transposed, for the column-wise cross-entropy
        columns = np.empty((m, n))
        _kernels.dist_transpose(logits, columns, False, threads)
    if not want_grad:
        loss = cross_entropy(logits, target, **options)
        if symmetric:
            loss = 0.5 * (loss + cross_entropy(columns, target, **options))
        return (loss.astype(_value_dtype(dtype)) if reduction == "none"
                else _loss_value(loss, dtype)), None
    half = 0.5 if symmetric else 1.0
    row_upstream = upstream * half if per_row else float(upstream[0]) * half
    # the cross-entropy kernel writes d loss / d logits over the logits
    loss, grad_logits = cross_entropy_value_and_grad(logits, target, row_upstream,
                                                     out=logits, **options)
    if symmetric:
        column_loss, grad_columns = cross_entropy_value_and_grad(
            columns, target, row_upstream, out=columns, **options)
        loss = 0.5 * (loss + column_loss)
        _kernels.dist_transpose(grad_columns, grad_logits, True, threads)
    if single:
        grad_single = grad_logits.astype(np.float32)
        grad_q_unit = np.asarray(grad_single @ k_unit_real, dtype=np.float64)
        grad_k_unit = np.asarray(grad_single.T @ q_unit_real, dtype=np.float64)
        del grad_single
    else:
        grad_q_unit = grad_logits @ k_unit
        grad_k_unit = grad_logits.T @ q_unit
    grad_q_unit /= temperature
    grad_k_unit /= temperature
    # |G| once, for the rows of both products (float32), or of the query's (float64: its
    # cancelling rows have a cancellation-free form, see _redo_cancelled_rows)
    magnitude = np.abs(grad_logits) if single or not symmetric else None
    row_sums = magnitude.sum(axis=1) if magnitude is not None else None
    column_sums = magnitude.sum(axis=0) if single else None
    del magnitude
    sides = ((grad_logits, row_sums, k_unit, q_unit, q_norm, grad_q_unit, not symmetric),
             (grad_logits.T, column_sums, q_unit, k_unit, k_norm, grad_k_unit, False))
    for (_, target_array, _), (weights, weight_sums, other_unit, unit, norm, grad_unit,
                               zero_sum_rows) in zip(targets, sides):
        # the kernel writes float32, float64 and the half types (rounded once)
        result = target_array if target_array.dtype == dtype or (
            narrow and target_array.dtype == np.float32) else np.empty(target_array.shape, dtype)
        _kernels.dist_normalize_backward(unit, norm, grad_unit, result, NORMALIZE_EPS, threads)
        if ((single or zero_sum_rows)
                and _redo_cancelled_rows(weights, weight_sums, other_unit, norm, grad_unit,
                                         result, temperature, single, zero_sum_rows)):
            _kernels.dist_normalize_backward(unit, norm, grad_unit, result, NORMALIZE_EPS,
                                             threads)
        if result is not target_array:
            _round_into(target_array, result)
    loss = loss.astype(_value_dtype(dtype)) if reduction == "none" else _loss_value(loss, dtype)
    return loss, tuple(_finish_targets(targets))


def info_nce(query, key, *, temperature=0.05, symmetric=False, reduction="mean",
             precision="input", num_threads=None):
    """InfoNCE with in-batch negatives (van den Oord et al. 2018; CLIP with symmetric).

    Rows of ``query`` and ``key`` are L2-normalised (``F.normalize``, eps 1e-12),
    ``s_ij = q^_i . k^_j / temperature``, and the loss of query i is the cross-entropy
    of row i of s with target i: sentence-transformers' MultipleNegativesRankingLoss with
    ``scale = 1 / temperature`` (key may have more rows than query: extra negatives).
    ``symmetric=True`` (square s only) averages it with the cross-entropy of column i
    (CLIP's loss). "none" returns the per-query loss (N,); "mean" averages over N.

    The products (the similarities ``q^ k^T``, and in the backward ``G k^`` and
    ``G^T q^``) are matrix products (NumPy's BLAS) in the inputs' precision, as every
    framework computes them; one C pass over the similarities gives the losses and
    their gradient (the softmax of the rows and, with ``symmetric``, of the columns,
    without a transposed copy). For float32 inputs the error is therefore the
    accuracy contract plus the products' rounding carried through the loss
    (docs/accuracy.rst, "Losses that multiply matrices"). ``precision="float64"``
    computes the similarities and their cross-entropy in float64 instead (and
    recomputes in float64 the backward rows whose terms cancel), which meets the
    float32 contract itself, at about twice the time.

    Parameters
    ----------
    query : array_like, float32, float64, float16 or bfloat16, shape (N, D)
    key : array_like, shape (M, D), M >= N (M == N with symmetric)
    temperature : float > 0
    symmetric : bool
    reduction : {"mean", "sum", "none"}
    precision : {"input", "float64"}
        The precision of the products: the inputs' (float32 for float32 inputs), or
        float64 (the same for float64 inputs). Float32 inputs whose ``1 / temperature``
        overflows float32 compute in float64.
    num_threads : int, optional
        OpenMP threads of the C pass; the products use NumPy's BLAS threads.
    """
    loss, _ = _info_nce(query, key, None, temperature, symmetric, reduction, None, num_threads,
                        False, precision)
    return loss


def info_nce_grad(query, key, grad_output=1.0, *, temperature=0.05, symmetric=False,
                  reduction="mean", precision="input", out=None, num_threads=None,
                  grad_dtype=None):
    """Gradient of ``grad_output * info_nce(...)`` w.r.t. ``(query, key)``; ``out`` a
    tuple of two arrays; ``grad_dtype`` None (each input's dtype) or float32 for float16 /
    bfloat16 inputs."""
    _, grads = _info_nce(query, key, grad_output, temperature, symmetric, reduction, out,
                         num_threads, True, precision, grad_dtype)
    return grads


def info_nce_value_and_grad(query, key, grad_output=1.0, *, temperature=0.05, symmetric=False,
                            reduction="mean", precision="input", out=None, num_threads=None,
                            grad_dtype=None):
    """``(info_nce(...), info_nce_grad(...))`` from one forward and backward."""
    return _info_nce(query, key, grad_output, temperature, symmetric, reduction, out,
                     num_threads, True, precision, grad_dtype)
