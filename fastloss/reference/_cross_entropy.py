"""Softmax cross-entropy over the last axis, in float64 (see fastloss.reference)."""

import numpy as np

from fastloss.reference._common import _REDUCTIONS

# ----------------------------------------------------------------------------------------
# Cross-entropy (class axis last)
# ----------------------------------------------------------------------------------------

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

    target = np.asarray(target)
    soft = target.dtype.kind == "f"
    if soft:
        if target.shape != logits.shape:
            raise ValueError(f"target: expected probabilities of shape {logits.shape}, "
                             f"got {target.shape}")
        if ignore_index >= 0:
            raise ValueError("ignore_index: must be negative with probability targets "
                             f"(as in torch), got {ignore_index}")
        target = target.astype(np.float64)
    elif target.dtype.kind in "iu":
        if target.shape != logits.shape[:-1]:
            raise ValueError(f"target: expected class indices of shape {logits.shape[:-1]}, "
                             f"got {target.shape}")
        out_of_range = (target != ignore_index) & ((target < 0) | (target >= n_classes))
        if np.any(out_of_range):
            position = tuple(int(i) for i in np.argwhere(out_of_range)[0])
            raise ValueError(f"target: value {target[position]} at position {position} is out "
                             f"of range for {n_classes} classes (ignore_index={ignore_index})")
    else:
        raise TypeError("target: expected integer class indices or float probabilities, "
                        f"got dtype {target.dtype}")

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
    ``y - lse``, which cancels when a probability is close to 1. A row that is all -inf,
    or holds +inf or nan, gives nan everywhere (``inf - inf``), as torch's log_softmax does.
    """
    y = logits if softcap is None else softcap * np.tanh(logits / softcap)
    row_max = np.max(y, axis=-1, keepdims=True)
    shifted = y - row_max
    log_sum = np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))
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
    eps = label_smoothing
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


def cross_entropy_grad(logits, target, grad_output=1.0, *, weight=None, ignore_index=-100,
                       reduction="mean", label_smoothing=0.0, z_loss=0.0, softcap=None):
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

    Returns
    -------
    grad : ndarray
        float64, shape ``logits.shape``.
    """
    logits, target, weight, soft = _check_cross_entropy(
        logits, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap)
    n_classes = logits.shape[-1]
    eps = label_smoothing
    grad_output = np.asarray(grad_output, dtype=np.float64)
    if reduction != "none" and grad_output.ndim != 0:
        raise ValueError(f"grad_output: expected a scalar for reduction={reduction!r}, "
                         f"got shape {grad_output.shape}")
    if grad_output.ndim != 0 and grad_output.shape != logits.shape[:-1]:
        raise ValueError(f"grad_output: expected a scalar or shape {logits.shape[:-1]}, "
                         f"got {grad_output.shape}")
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
        grad = np.where(valid[..., None], grad, 0.0)
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


# every public function of this module is a loss's entry point (fastloss.reference
# exports them): a function added here is exported without another line
__all__ = [_name for _name, _value in list(globals().items())
           if callable(_value) and not _name.startswith("_")
           and getattr(_value, "__module__", None) == __name__]
