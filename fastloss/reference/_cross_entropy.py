"""Softmax cross-entropy over the last axis, in float64 (see fastloss.reference)."""

import numpy as np

from fastloss.reference._common import _REDUCTIONS, _log_sum_shifted

# ----------------------------------------------------------------------------------------
# Cross-entropy (class axis last)
# ----------------------------------------------------------------------------------------

def _checked_target(target, logits_shape, n_classes, ignore_index):
    """(target, soft): class indices checked against n_classes, or probabilities of the
    logits' shape in float64."""
    target = np.asarray(target)
    if target.dtype.kind == "f":
        if target.shape != logits_shape:
            raise ValueError(f"target: expected probabilities of shape {logits_shape}, "
                             f"got {target.shape}")
        return target.astype(np.float64), True
    if target.dtype.kind not in "iu":
        raise TypeError("target: expected integer class indices or float probabilities, "
                        f"got dtype {target.dtype}")
    if target.shape != logits_shape[:-1]:
        raise ValueError(f"target: expected class indices of shape {logits_shape[:-1]}, "
                         f"got {target.shape}")
    out_of_range = (target != ignore_index) & ((target < 0) | (target >= n_classes))
    if np.any(out_of_range):
        position = tuple(int(i) for i in np.argwhere(out_of_range)[0])
        raise ValueError(f"target: value {target[position]} at position {position} is out "
                         f"of range for {n_classes} classes (ignore_index={ignore_index})")
    return target, False


def _check_cross_entropy(logits, target, weight, ignore_index, reduction,
                         label_smoothing, z_loss, softcap):
    """Return ``(logits, target, weight, soft)`` with float64 logits and weight, or raise."""
    logits = np.asarray(logits)
    if logits.dtype.kind not in "fiu":
        raise TypeError(f"logits: expected a real numeric array, got dtype {logits.dtype}")
    if logits.ndim == 0 or logits.shape[-1] == 0:
        raise ValueError(f"logits: expected shape (..., C) with C >= 1, got {logits.shape}")
    logits = logits.astype(np.float64)
    n_classes = logits.shape[-1]

    target, soft = _checked_target(target, logits.shape, n_classes, ignore_index)
    if soft and ignore_index >= 0:
        raise ValueError("ignore_index: must be negative with probability targets "
                         f"(as in torch), got {ignore_index}")

    if weight is None:
        weight = np.ones(n_classes)
    else:
        weight = np.asarray(weight, dtype=np.float64)
        if weight.shape != (n_classes,):
            raise ValueError(f"weight: expected shape ({n_classes},), got {weight.shape}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: expected one of {_REDUCTIONS}, got {reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing: expected a value in [0, 1], got {label_smoothing}")
    if not (np.isfinite(z_loss) and z_loss >= 0.0):
        raise ValueError(f"z_loss: expected a finite value >= 0, got {z_loss}")
    if softcap is not None and not softcap > 0.0:
        raise ValueError(f"softcap: expected None or a value > 0, got {softcap}")
    return logits, target, weight, soft


def _log_softmax(logits, softcap):
    """Return ``(y, logp, lse)`` along the last axis of float64 ``logits``.

    ``y = softcap * tanh(logits / softcap)`` (``y = logits`` when softcap is None),
    ``logp = (y - max(y)) - log(sum(exp(y - max(y))))``,
    ``lse = max(y) + log(sum(exp(y - max(y))))``.

    logp is evaluated in torch's order (shift, then subtract the log of the sum), not as
    ``y - lse``, which cancels when a probability is close to 1, and the log of the sum
    as ``log1p`` of the others' terms (the max's own is 1), so that a converged row's
    logp near 0 keeps its relative accuracy. A row that is all -inf, or holds +inf or
    nan, gives nan everywhere (``inf - inf``), as torch's log_softmax does.
    """
    y = logits if softcap is None else softcap * np.tanh(logits / softcap)
    row_max = np.max(y, axis=-1, keepdims=True)
    shifted = y - row_max
    log_sum = _log_sum_shifted(y, row_max, shifted)
    logp = shifted - log_sum
    lse = (row_max + log_sum)[..., 0]
    return y, logp, lse


def cross_entropy(logits, target, *, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, z_loss=0.0, softcap=None, return_lse=False):
    r"""Cross-entropy of softmax(logits) over the last axis, in float64.

    Matches ``torch.nn.functional.cross_entropy`` (class axis moved from dim 1 to last)
    for ``weight``, ``ignore_index``, ``reduction``, ``label_smoothing`` and probability
    targets; adds PaLM's z-loss (Chowdhery et al. 2022, Liger's ``lse_square_scale``)
    and Gemma 2's logit soft-capping.

    For each row i (C classes, w = weight or ones, eps = label_smoothing)::

        y      = softcap * tanh(x / softcap)                   (y = x if softcap is None)
        logp_c = (y_c - max(y)) - log(sum_k exp(y_k - max(y)))
        lse    = max(y) + log(sum_k exp(y_k - max(y)))

    hard targets t (integers, shape logits.shape[:-1]); rows with t == ignore_index are
    ignored (loss 0, lse 0, not counted)::

        ce_i = (1 - eps) * w[t_i] * (-logp_{t_i}) + (eps / C) * sum_c w_c * (-logp_c)
        (the second term only when eps > 0, as in torch, so a -inf logit gives inf, not nan)

    soft targets q (floats, shape logits.shape; not required to sum to 1; no ignored rows)::

        q'_c = (1 - eps) * q_c + eps / C
        ce_i = -sum_c w_c * q'_c * logp_c

    and then, with the z-loss not weighted::

        loss_i = ce_i + z_loss * lse_i**2                          ('none')
        sum    = sum_i loss_i                                     (ignored rows are 0)
        mean   = sum_i ce_i / D_ce + z_loss * sum_i lse_i**2 / D_z

    where hard targets have ``D_ce = sum_{valid i} w[t_i]`` (torch's weighted mean) and
    ``D_z = n_valid`` (Liger's mean over non-ignored rows), and soft targets have
    ``D_ce = D_z = N``, the number of rows (as torch). Zero valid rows give mean nan.

    Parameters
    ----------
    logits : array_like, shape (..., C)
        Raw scores; any real dtype, evaluated in float64.
    target : array_like
        Integer class indices of shape ``logits.shape[:-1]``, or float probabilities of
        shape ``logits.shape``.
    weight : array_like of shape (C,), optional
        Per-class rescaling weight.
    ignore_index : int
        Hard-target value whose rows are ignored; must be negative for soft targets.
    reduction : {"mean", "sum", "none"}
    label_smoothing : float in [0, 1]
    z_loss : float >= 0
    softcap : float > 0 or None
    return_lse : bool
        Also return the per-row log-sum-exp of y (float64, shape ``logits.shape[:-1]``,
        0.0 for ignored rows).

    Returns
    -------
    loss : float or ndarray
        A Python float for "mean" and "sum", a float64 array of shape
        ``logits.shape[:-1]`` for "none".
    lse : ndarray
        Only when ``return_lse`` is true.
    """
    logits, target, weight, soft = _check_cross_entropy(
        logits, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap)
    n_classes = logits.shape[-1]
    eps = float(label_smoothing)  # a NumPy scalar too: eps / C in float64
    # nan and inf inputs propagate as IEEE arithmetic says; 0/0 in an empty mean is nan.
    with np.errstate(invalid="ignore", divide="ignore"):
        _, logp, lse = _log_softmax(logits, softcap)
        if soft:
            smoothed = (1.0 - eps) * target + eps / n_classes
            ce = -np.sum(weight * smoothed * logp, axis=-1)
            ce_denominator = z_denominator = lse.size
        else:
            valid = target != ignore_index
            safe_target = np.where(valid, target, 0)
            target_weight = weight[safe_target]
            target_logp = np.take_along_axis(logp, safe_target[..., None], axis=-1)[..., 0]
            ce = (1.0 - eps) * target_weight * -target_logp
            if eps > 0.0:  # as torch: without smoothing a -inf logit gives inf, not 0*inf
                ce = ce + (eps / n_classes) * -np.sum(weight * logp, axis=-1)
            ce = np.where(valid, ce, 0.0)
            lse = np.where(valid, lse, 0.0)
            ce_denominator = np.sum(np.where(valid, target_weight, 0.0))
            z_denominator = np.count_nonzero(valid)
        loss_per_row = ce + z_loss * lse**2
        if reduction == "none":
            loss = np.asarray(loss_per_row, dtype=np.float64)
        elif reduction == "sum":
            loss = float(np.sum(loss_per_row))
        else:
            loss = float(np.sum(ce) / np.float64(ce_denominator)
                         + z_loss * np.sum(lse**2) / np.float64(z_denominator))
    if return_lse:
        return loss, np.asarray(lse, dtype=np.float64)
    return loss


def _grad_output_array(grad_output, reduction, loss_shape):
    grad_output = np.asarray(grad_output, dtype=np.float64)
    if reduction != "none" and grad_output.ndim != 0:
        raise ValueError(f"grad_output: expected a scalar for reduction={reduction!r}, "
                         f"got shape {grad_output.shape}")
    if grad_output.ndim != 0 and grad_output.shape != loss_shape:
        raise ValueError(f"grad_output: expected a scalar or shape {loss_shape}, "
                         f"got {grad_output.shape}")
    return grad_output


def cross_entropy_grad(logits, target, grad_output=1.0, *, weight=None, ignore_index=-100,
                       reduction="mean", label_smoothing=0.0, z_loss=0.0, softcap=None,
                       class_offset=0, stats=None):
    r"""Gradient of ``grad_output * cross_entropy(logits, target, ...)`` w.r.t. logits.

    Same options and notation as :func:`cross_entropy`; matches torch autograd through
    ``torch.nn.functional.cross_entropy`` (plus the z-loss and soft-capping terms). With
    ``p = exp(logp)`` (softmax of y) and ``W = sum_c w_c``, per row i and class c::

        hard: dce/dy_c = (1 - eps) * w[t] * (p_c - [c == t]) + (eps / C) * (W * p_c - w_c)
              (p_t - 1 evaluated as -sum_{c != t} p_c, which does not cancel)
        soft: dce/dy_c = (sum_k w_k * q'_k) * p_c - w_c * q'_c
        z:    d(z_loss * lse**2)/dy_c = 2 * z_loss * lse * p_c

        grad_c = s_ce * dce/dy_c + s_z * 2 * z_loss * lse * p_c
        grad_c *= 1 / cosh(x_c / softcap)**2      (only with softcap: d tanh = sech**2,
                                                   not 1 - tanh**2, which cancels)

    The scales are ``s_ce = s_z = grad_output[i]`` for "none" (grad_output an array of
    shape ``logits.shape[:-1]``, or a scalar broadcast), ``grad_output`` for "sum", and
    ``grad_output / D_ce`` and ``grad_output / D_z`` for "mean". Ignored rows get exactly 0.

    With ``stats`` (the statistics of the whole class axis merged, see
    :func:`cross_entropy_block_stats`), ``logits`` is the block of classes
    ``[class_offset, class_offset + width)``, ``weight`` its slice of the class weights,
    ``target`` the rows' class indices or the block's probabilities; the result is that
    block of the full gradient, with lse, C, W, the target's 1 - p_t
    (``sum_others / sum``) and the mean's denominators taken from ``stats``.

    Returns
    -------
    grad : ndarray
        float64, shape ``logits.shape``.
    """
    if stats is not None:
        return _block_grad(logits, target, grad_output, class_offset, stats, weight,
                           ignore_index, reduction, label_smoothing, z_loss, softcap)
    if class_offset != 0:
        raise ValueError(f"class_offset: a block's gradient needs stats= (the merged "
                         f"statistics), got class_offset={class_offset} without them")
    logits, target, weight, soft = _check_cross_entropy(
        logits, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap)
    n_classes = logits.shape[-1]
    eps = float(label_smoothing)  # a NumPy scalar too: eps / C in float64
    grad_output = _grad_output_array(grad_output, reduction, logits.shape[:-1])
    # nan and inf inputs propagate as IEEE arithmetic says; a mean over nothing divides by 0.
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        y, logp, lse = _log_softmax(logits, softcap)
        probs = np.exp(logp)
        if soft:
            weighted_target = weight * ((1.0 - eps) * target + eps / n_classes)
            grad_ce = np.sum(weighted_target, axis=-1, keepdims=True) * probs - weighted_target
            valid = np.ones(lse.shape, dtype=bool)
            ce_denominator = z_denominator = lse.size
        else:
            valid = target != ignore_index
            safe_target = np.where(valid, target, 0)
            target_weight = weight[safe_target]
            one_hot = np.arange(n_classes) == safe_target[..., None]
            # p - onehot, with p_t - 1 as minus the other classes' probabilities: a
            # rounded p_t minus 1 keeps one ulp of 1, nothing of a converged row's -1e-12
            others = np.sum(np.where(one_hot, 0.0, probs), axis=-1, keepdims=True)
            delta = np.where(one_hot, -others, probs)
            grad_ce = ((1.0 - eps) * target_weight[..., None] * delta
                       + (eps / n_classes) * (np.sum(weight) * probs - weight))
            ce_denominator = np.sum(np.where(valid, target_weight, 0.0))
            z_denominator = np.count_nonzero(valid)
        grad_z = 2.0 * z_loss * lse[..., None] * probs
        grad = _finish_grad(grad_ce, grad_z, grad_output, reduction, ce_denominator,
                            z_denominator, softcap, logits, valid)
    return grad


def cross_entropy_value_and_grad(logits, target, grad_output=1.0, *, weight=None,
                                 ignore_index=-100, reduction="mean", label_smoothing=0.0,
                                 z_loss=0.0, softcap=None):
    """Return ``(cross_entropy(...), cross_entropy_grad(...))`` for the same arguments.

    The reference simply makes the two calls; only the kernels fuse them.
    """
    options = dict(weight=weight, ignore_index=ignore_index, reduction=reduction,
                   label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap)
    loss = cross_entropy(logits, target, **options)
    grad = cross_entropy_grad(logits, target, grad_output, **options)
    return loss, grad



# ----------------------------------------------------------------------------------------
# Block statistics: cross-entropy over pieces of the class axis
# ----------------------------------------------------------------------------------------
# The layout of a statistics array: float64, shape (CE_STATS_FIELDS, *batch), one row of
# fields per statistic (fastloss.cross_entropy documents it; docs/block_statistics.rst).
_MAX, _SUM, _SUM_OTHERS, _DIST, _MASS, _TARGET_LOGIT, _TARGET_WEIGHT, _TARGET_COUNT, \
    _CLASSES = range(9)
_STATS_FIELDS = 9


def _block_arguments(logits_block, target, class_offset, num_classes, weight, ignore_index,
                     label_smoothing, softcap):
    """Checked float64 ``(y, x, target, weight, soft, num_classes)`` of one block: ``y``
    the (capped) logits, ``x`` the logits as given."""
    x = np.asarray(logits_block)
    if x.dtype.kind not in "fiu":
        raise TypeError(f"logits_block: expected a real numeric array, got dtype {x.dtype}")
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError(f"logits_block: expected shape (..., width) with width >= 1, "
                         f"got {x.shape}")
    x = x.astype(np.float64)
    width = x.shape[-1]
    if int(class_offset) != class_offset or class_offset < 0:
        raise ValueError(f"class_offset: expected an integer >= 0, got {class_offset}")
    class_offset = int(class_offset)
    if num_classes is None:
        num_classes = class_offset + width
    if class_offset + width > num_classes:
        raise ValueError(f"class_offset: the block [{class_offset}, {class_offset + width}) "
                         f"ends past num_classes={num_classes}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing: expected a value in [0, 1], got {label_smoothing}")
    if softcap is not None and not softcap > 0.0:
        raise ValueError(f"softcap: expected None or a value > 0, got {softcap}")
    target, soft = _checked_target(target, x.shape, num_classes, ignore_index)
    if weight is None:
        weight = np.ones(width)
    else:
        weight = np.asarray(weight, dtype=np.float64)
        if weight.shape != (width,):
            raise ValueError(f"weight: expected the block's shape ({width},), "
                             f"got {weight.shape}")
    y = x if softcap is None else softcap * np.tanh(x / softcap)
    return y, x, target, weight, soft, num_classes, class_offset


def cross_entropy_block_stats(logits_block, target, *, class_offset=0, num_classes=None,
                              weight=None, ignore_index=-100, label_smoothing=0.0,
                              softcap=None):
    r"""Statistics of the classes ``[class_offset, class_offset + width)`` of each row.

    ``logits_block`` (..., width) holds those classes of the logits; ``target`` is the
    rows' class indices (global, shape (...)) or the block's probability targets (...,
    width); ``weight`` is the block's slice of the class weights (width,); ``num_classes``
    is the global C (default ``class_offset + width``), used to check the block and the
    targets and, for probability targets, in ``q' = (1 - eps) q + eps / C``.

    Returns a float64 array of shape ``(9, ...)``, one statistic per row of fields, each
    relative to the shift ``s = m`` (``s = 0`` when ``m = -inf``), with y the capped
    logits of the block and u the smoothing weights (u_c = w_c with label smoothing and
    class indices, w_c q'_c with probabilities, none otherwise)::

        0 max            m = max_c y_c
        1 sum            sum_c exp(y_c - s)
        2 sum_others     the same sum without the target's term
        3 dist           sum_c u_c (s - y_c)
        4 mass           sum_c u_c
        5 target_logit   y_t when the target t is in the block, else 0
        6 target_weight  w_t when t is in the block, else 0
        7 target_count   1 when t is in the block, else 0
        8 classes        the block's width

    A row whose target is ignore_index gets the neutral record (max -inf, every sum 0)
    but its width.
    """
    y, _, target, weight, soft, num_classes, class_offset = _block_arguments(
        logits_block, target, class_offset, num_classes, weight, ignore_index,
        label_smoothing, softcap)
    eps = float(label_smoothing)  # a NumPy scalar too: eps / C in float64
    width = y.shape[-1]
    stats = np.zeros((_STATS_FIELDS,) + y.shape[:-1])
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        m = np.max(y, axis=-1)
        shift = np.where(m == -np.inf, 0.0, m)
        e = np.exp(y - shift[..., None])
        stats[_MAX] = m
        stats[_SUM] = np.sum(e, axis=-1)
        if soft:
            u = weight * ((1.0 - eps) * target + eps / num_classes)
            stats[_DIST] = np.sum(u * (shift[..., None] - y), axis=-1)
            stats[_MASS] = np.sum(u, axis=-1)
            stats[_SUM_OTHERS] = stats[_SUM]
        else:
            local = target - class_offset
            valid = target != ignore_index
            inside = valid & (local >= 0) & (local < width)
            safe = np.where(inside, local, 0)
            one_hot = (np.arange(width) == safe[..., None]) & inside[..., None]
            stats[_SUM_OTHERS] = np.sum(np.where(one_hot, 0.0, e), axis=-1)
            if eps > 0.0:
                stats[_DIST] = np.sum(weight * (shift[..., None] - y), axis=-1)
                stats[_MASS] = np.sum(weight)
            stats[_TARGET_LOGIT] = np.where(
                inside, np.take_along_axis(y, safe[..., None], axis=-1)[..., 0], 0.0)
            stats[_TARGET_WEIGHT] = np.where(inside, weight[safe], 0.0)
            stats[_TARGET_COUNT] = inside
            neutral = (-np.inf, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
            for field, value in enumerate(neutral):
                stats[field] = np.where(valid, stats[field], value)
    stats[_CLASSES] = width
    return stats


def _stats_array(stats, name="stats"):
    stats = np.asarray(stats, dtype=np.float64)
    if stats.ndim == 0 or stats.shape[0] != _STATS_FIELDS:
        raise ValueError(f"{name}: expected shape ({_STATS_FIELDS}, ...) (cross_entropy_"
                         f"block_stats), got {stats.shape}")
    return stats


def cross_entropy_rebase_stats(stats, new_max):
    r"""``stats`` with every sum taken relative to ``new_max`` (>= each row's max) instead
    of its own max: the step between the MAX and the SUM all-reduce of distributed use::

        f = exp(m - M):   sum *= f,  sum_others *= f,  dist += (M - m) * mass,  max = M

    (a record with m = -inf keeps its sums: they are relative to 0 and hold no exp).
    """
    stats = _stats_array(stats).copy()
    new_max = np.broadcast_to(np.asarray(new_max, dtype=np.float64), stats.shape[1:])
    m = stats[_MAX]
    with np.errstate(invalid="ignore", over="ignore"):
        finite = m != -np.inf
        scale = np.where(finite, np.exp(np.where(finite, m, 0.0) - new_max), 1.0)
        scale = np.where(m == new_max, 1.0, scale)
        stats[_SUM] = stats[_SUM] * scale
        stats[_SUM_OTHERS] = stats[_SUM_OTHERS] * scale
        stats[_DIST] = np.where(finite, stats[_DIST] + (new_max - m) * stats[_MASS],
                                stats[_DIST])
    stats[_MAX] = new_max
    return stats


def cross_entropy_merge_stats(stats_sequence):
    r"""The statistics of the union of the blocks, in the sequence's order.

    ``M = max_k m_k`` (NaN maxima skipped, as the kernels do; a NaN still reaches the
    sums), every record rebased onto M (:func:`cross_entropy_rebase_stats`), then each
    field except ``max`` summed in order.
    """
    records = [_stats_array(s, "stats_sequence") for s in stats_sequence]
    if not records:
        raise ValueError("stats_sequence: expected at least one statistics array")
    shape = records[0].shape
    for record in records:
        if record.shape != shape:
            raise ValueError(f"stats_sequence: shapes differ, {shape} and {record.shape}")
    new_max = np.full(shape[1:], -np.inf)
    for record in records:
        new_max = np.fmax(new_max, record[_MAX])
    merged = np.zeros(shape)
    for record in records:
        merged[1:] += cross_entropy_rebase_stats(record, new_max)[1:]
    merged[_MAX] = new_max
    return merged


def _stats_rows(stats, target, ignore_index):
    """``(valid, soft)`` of the rows of merged statistics."""
    soft = target is None or np.asarray(target).dtype.kind == "f"
    if soft:
        if np.any(stats[_TARGET_COUNT] != 0):
            raise ValueError("target: the statistics are of class-index targets; pass them")
        return np.ones(stats.shape[1:], dtype=bool), True
    target = np.asarray(target)
    if target.dtype.kind not in "iu":
        raise TypeError(f"target: expected integer class indices or None, got dtype "
                        f"{target.dtype}")
    if target.shape != stats.shape[1:]:
        raise ValueError(f"target: expected shape {stats.shape[1:]}, got {target.shape}")
    valid = target != ignore_index
    counted = stats[_TARGET_COUNT]
    if np.any(valid & (counted != 1)):
        position = tuple(int(i) for i in np.argwhere(valid & (counted != 1))[0])
        raise ValueError(f"stats: the target of row {position} is in {counted[position]:g} "
                         f"of the merged blocks, not 1 (blocks missing or overlapping)")
    return valid, False


def cross_entropy_from_stats(stats, target, *, ignore_index=-100, reduction="mean",
                             label_smoothing=0.0, z_loss=0.0):
    r"""The cross-entropy from statistics merged over the whole class axis.

    ``target``: the rows' class indices (batch shape), or None for probability targets.
    With ``lse = max + log(sum)``, ``C`` the merged ``classes`` and ``W`` the merged
    ``mass``::

        hard: (1 - eps) w_t (lse - y_t) + eps / C (dist + W log(sum)) + z_loss lse**2
        soft: dist + mass log(sum) + z_loss lse**2

    reduced as :func:`cross_entropy` does (the weighted mean divides by the sum of the
    merged ``target_weight`` over the non-ignored rows).
    """
    stats = _stats_array(stats)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: expected one of {_REDUCTIONS}, got {reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing: expected a value in [0, 1], got {label_smoothing}")
    if not (np.isfinite(z_loss) and z_loss >= 0.0):
        raise ValueError(f"z_loss: expected a finite value >= 0, got {z_loss}")
    valid, soft = _stats_rows(stats, target, ignore_index)
    eps = float(label_smoothing)  # a NumPy scalar too: eps / C in float64
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        log_sum = np.log(stats[_SUM])
        lse = stats[_MAX] + log_sum
        if soft:
            ce = stats[_DIST] + stats[_MASS] * log_sum
            ce_denominator = z_denominator = lse.size
        else:
            nll = (stats[_MAX] - stats[_TARGET_LOGIT]) + log_sum
            ce = (1.0 - eps) * stats[_TARGET_WEIGHT] * nll
            if eps > 0.0:
                ce = ce + eps / stats[_CLASSES] * (stats[_DIST] + stats[_MASS] * log_sum)
            ce_denominator = np.sum(np.where(valid, stats[_TARGET_WEIGHT], 0.0))
            z_denominator = np.count_nonzero(valid)
        ce = np.where(np.isfinite(lse), ce, np.nan)
        ce = np.where(valid, ce, 0.0)
        lse = np.where(valid, lse, 0.0)
        loss_per_row = ce + z_loss * lse**2
        if reduction == "none":
            return np.asarray(loss_per_row, dtype=np.float64)
        if reduction == "sum":
            return float(np.sum(loss_per_row))
        return float(np.sum(ce) / np.float64(ce_denominator)
                     + z_loss * np.sum(lse**2) / np.float64(z_denominator))


def _block_grad(logits_block, target, grad_output, class_offset, stats, weight, ignore_index,
                reduction, label_smoothing, z_loss, softcap):
    """cross_entropy_grad of one block from merged statistics (see cross_entropy_grad)."""
    stats = _stats_array(stats)
    width = np.shape(logits_block)[-1] if np.ndim(logits_block) else 0
    # C, the merged classes (the same in every row)
    num_classes = int(stats[_CLASSES].flat[0]) if stats[0].size else None
    y, x, target, weight, soft, _, class_offset = _block_arguments(
        logits_block, target, class_offset, num_classes, weight, ignore_index,
        label_smoothing, softcap)
    if stats.shape[1:] != y.shape[:-1]:
        raise ValueError(f"stats: expected shape ({_STATS_FIELDS},) + {y.shape[:-1]}, "
                         f"got {stats.shape}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: expected one of {_REDUCTIONS}, got {reduction!r}")
    valid, _ = _stats_rows(stats, None if soft else target, ignore_index)
    eps = float(label_smoothing)  # a NumPy scalar too: eps / C in float64
    width = y.shape[-1]
    grad_output = _grad_output_array(grad_output, reduction, y.shape[:-1])
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        lse = (stats[_MAX] + np.log(stats[_SUM]))[..., None]
        probs = np.exp(y - lse)
        n_classes = stats[_CLASSES][..., None]
        if soft:
            u = weight * ((1.0 - eps) * target + eps / n_classes)
            grad_ce = stats[_MASS][..., None] * probs - u
            ce_denominator = z_denominator = valid.size
        else:
            local = target - class_offset
            inside = valid & (local >= 0) & (local < width)
            one_hot = (np.arange(width) == np.where(inside, local, -1)[..., None])
            complement = (stats[_SUM_OTHERS] / stats[_SUM])[..., None]
            delta = np.where(one_hot, -complement, probs)
            target_weight = stats[_TARGET_WEIGHT][..., None]
            grad_ce = (1.0 - eps) * target_weight * delta
            if eps > 0.0:
                grad_ce = grad_ce + (eps / n_classes) * (stats[_MASS][..., None] * probs
                                                         - weight)
            ce_denominator = np.sum(np.where(valid, stats[_TARGET_WEIGHT], 0.0))
            z_denominator = np.count_nonzero(valid)
        grad_z = 2.0 * z_loss * lse * probs
        grad = _finish_grad(grad_ce, grad_z, grad_output, reduction, ce_denominator,
                            z_denominator, softcap, x, valid)
    return grad


def _finish_grad(grad_ce, grad_z, grad_output, reduction, ce_denominator, z_denominator,
                 softcap, logits, valid):
    """The gradient from its cross-entropy and z-loss parts: scaled by the reduction (the
    mean's denominators apart), through the softcap's tanh, zero on ignored rows."""
    if reduction == "none":
        ce_scale = z_scale = grad_output[..., None]
    elif reduction == "sum":
        ce_scale = z_scale = grad_output
    else:
        ce_scale = grad_output / np.float64(ce_denominator)
        z_scale = grad_output / np.float64(z_denominator)
    grad = ce_scale * grad_ce + z_scale * grad_z
    if softcap is not None:
        grad = grad / np.cosh(logits / softcap) ** 2
    return np.where(valid[..., None], grad, 0.0)


# every public function of this module is a loss's entry point (fastloss.reference
# exports them): a function added here is exported without another line
__all__ = [_name for _name, _value in list(globals().items())
           if callable(_value) and not _name.startswith("_")
           and getattr(_value, "__module__", None) == __name__]

