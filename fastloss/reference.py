"""The float64 NumPy reference for every fastloss loss, public as ``fastloss.reference``.

This module is the oracle the C kernels are tested against and the baseline the
benchmarks compare with. Each loss is plain, vectorised NumPy evaluated in float64,
written to be read next to its docstring formula rather than to be fast, and it shares
no code with the kernels or the public API. The functions have the public signatures
minus the performance options (``num_threads``, ``out=``, ``lse=``) and always return
float64: a Python float for ``reduction="mean"`` / ``"sum"``, an array for ``"none"``.

Validation is light: enough that a bad argument raises instead of giving a silently
wrong number. Complete, friendly error messages are the public API's job.
"""

import math

import numpy as np

__all__ = [
    "cross_entropy", "cross_entropy_grad", "cross_entropy_value_and_grad",
    "mse", "mse_grad", "mse_value_and_grad",
    "l1", "l1_grad", "l1_value_and_grad",
    "huber", "huber_grad", "huber_value_and_grad",
    "smooth_l1", "smooth_l1_grad", "smooth_l1_value_and_grad",
    "bce_with_logits", "bce_with_logits_grad", "bce_with_logits_value_and_grad",
]

_REDUCTIONS = ("mean", "sum", "none")


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
            grad_ce = ((1.0 - eps) * target_weight[..., None] * (probs - one_hot)
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


# ----------------------------------------------------------------------------------------
# Regression and binary losses (one term per element)
# ----------------------------------------------------------------------------------------
#
# Shared semantics (torch's): ``pred`` and ``target`` broadcast to one shape (for
# bce_with_logits they must have the same shape); ``weight`` (per element) broadcasts to
# that shape; "mean" is the weighted sum divided by the number of elements (not a weighted
# mean); the gradient is w.r.t. ``pred`` and, where broadcasting enlarged ``pred``, summed
# back over the broadcast axes, as autograd does. Everything is float64.

def _check_elementwise(pred, target, weight, reduction, *, pred_name="pred",
                       same_shape=False):
    """Return ``(pred, target, weight, pred_shape)``: float64 arrays broadcast to the loss's
    shape (weight all ones when None) and pred's own shape, or raise."""
    pred = np.asarray(pred)
    if pred.dtype.kind != "f":
        raise TypeError(f"{pred_name}: expected a float array, got dtype {pred.dtype}")
    target = np.asarray(target)
    if target.dtype.kind not in "biuf":
        raise TypeError(f"target: expected real numbers, got dtype {target.dtype}")
    if same_shape and target.shape != pred.shape:
        raise ValueError(f"target: expected the shape of {pred_name} {pred.shape}, "
                         f"got {target.shape}")
    shape = np.broadcast_shapes(pred.shape, target.shape)
    if weight is None:
        weight = np.ones(shape)
    else:
        weight = np.asarray(weight, dtype=np.float64)
        if np.broadcast_shapes(weight.shape, shape) != shape:
            raise ValueError(f"weight: shape {weight.shape} does not broadcast to {shape}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: expected one of {_REDUCTIONS}, got {reduction!r}")
    return (np.broadcast_to(pred.astype(np.float64), shape),
            np.broadcast_to(target.astype(np.float64), shape),
            np.broadcast_to(weight, shape), pred.shape)


def _reduce(loss, reduction):
    """The weighted per-element loss reduced: a float for mean/sum (the mean of nothing
    is nan), the float64 array for none."""
    if reduction == "none":
        return np.asarray(loss, dtype=np.float64)
    if reduction == "sum":
        return float(np.sum(loss))
    return float(np.sum(loss) / loss.size) if loss.size else math.nan


def _grad_from_slope(slope, weight, grad_output, reduction, pred_shape):
    """``slope * weight * grad_output`` (divided by the element count for the mean),
    summed back to ``pred_shape`` over the axes broadcasting added or stretched."""
    grad_output = np.asarray(grad_output, dtype=np.float64)
    if reduction != "none" and grad_output.ndim != 0:
        raise ValueError(f"grad_output: expected a scalar for reduction={reduction!r}, "
                         f"got shape {grad_output.shape}")
    if grad_output.ndim != 0 and grad_output.shape != slope.shape:
        raise ValueError(f"grad_output: expected a scalar or shape {slope.shape}, "
                         f"got {grad_output.shape}")
    with np.errstate(invalid="ignore", over="ignore"):
        grad = slope * weight * grad_output
        if reduction == "mean":
            grad = grad / slope.size
    lead = grad.ndim - len(pred_shape)
    axes = tuple(range(lead)) + tuple(lead + axis for axis, size in enumerate(pred_shape)
                                      if size == 1 and grad.shape[lead + axis] != 1)
    return np.asarray(np.sum(grad, axis=axes)).reshape(pred_shape) if axes else np.array(grad)


def mse(pred, target, *, weight=None, reduction="mean"):
    r"""Mean squared error, as ``torch.nn.functional.mse_loss`` (plus a per-element weight).

    Per element, ``r = pred - target``: ``loss = weight * r**2``.
    """
    pred, target, weight, _ = _check_elementwise(pred, target, weight, reduction)
    with np.errstate(invalid="ignore", over="ignore"):
        return _reduce(weight * (pred - target) ** 2, reduction)


def mse_grad(pred, target, grad_output=1.0, *, weight=None, reduction="mean"):
    """Gradient of ``grad_output * mse(...)`` w.r.t. pred: ``2 r * weight * grad_output``
    (/ N for the mean), with pred's shape."""
    pred, target, weight, pred_shape = _check_elementwise(pred, target, weight, reduction)
    with np.errstate(invalid="ignore", over="ignore"):
        slope = 2.0 * (pred - target)
    return _grad_from_slope(slope, weight, grad_output, reduction, pred_shape)


def mse_value_and_grad(pred, target, grad_output=1.0, *, weight=None, reduction="mean"):
    """``(mse(...), mse_grad(...))``."""
    return (mse(pred, target, weight=weight, reduction=reduction),
            mse_grad(pred, target, grad_output, weight=weight, reduction=reduction))


def l1(pred, target, *, weight=None, reduction="mean"):
    r"""Mean absolute error, as ``torch.nn.functional.l1_loss``: ``weight * |pred - target|``."""
    pred, target, weight, _ = _check_elementwise(pred, target, weight, reduction)
    with np.errstate(invalid="ignore", over="ignore"):
        return _reduce(weight * np.abs(pred - target), reduction)


def l1_grad(pred, target, grad_output=1.0, *, weight=None, reduction="mean"):
    """Gradient of ``grad_output * l1(...)`` w.r.t. pred: ``sign(r) * weight * grad_output``
    with sign(0) = 0 and, as torch's backward, 0 where r is NaN."""
    pred, target, weight, pred_shape = _check_elementwise(pred, target, weight, reduction)
    with np.errstate(invalid="ignore"):
        r = pred - target
        slope = np.where(r > 0, 1.0, np.where(r < 0, -1.0, 0.0))
    return _grad_from_slope(slope, weight, grad_output, reduction, pred_shape)


def l1_value_and_grad(pred, target, grad_output=1.0, *, weight=None, reduction="mean"):
    """``(l1(...), l1_grad(...))``."""
    return (l1(pred, target, weight=weight, reduction=reduction),
            l1_grad(pred, target, grad_output, weight=weight, reduction=reduction))


def _check_positive(value, name, allow_zero):
    value = float(value)
    if not (math.isfinite(value) and (value >= 0.0 if allow_zero else value > 0.0)):
        raise ValueError(f"{name}: expected a finite value {'>=' if allow_zero else '>'} 0, "
                         f"got {value}")
    return value


def huber(pred, target, *, delta=1.0, weight=None, reduction="mean"):
    r"""Huber loss, as ``torch.nn.functional.huber_loss``. Per element, ``r = pred - target``::

        loss = weight * (0.5 * r**2                  if |r| < delta
                         delta * (|r| - 0.5 * delta)  otherwise)

    ``delta > 0``. At ``|r| == delta`` both pieces are ``0.5 * delta**2``.
    """
    delta = _check_positive(delta, "delta", allow_zero=False)
    pred, target, weight, _ = _check_elementwise(pred, target, weight, reduction)
    with np.errstate(invalid="ignore", over="ignore"):
        r = pred - target
        a = np.abs(r)
        return _reduce(weight * np.where(a < delta, 0.5 * r**2, delta * (a - 0.5 * delta)),
                       reduction)


def huber_grad(pred, target, grad_output=1.0, *, delta=1.0, weight=None, reduction="mean"):
    """Gradient of ``grad_output * huber(...)`` w.r.t. pred: ``clip(r, -delta, delta) *
    weight * grad_output``, as torch's backward writes it (NaN stays NaN)."""
    delta = _check_positive(delta, "delta", allow_zero=False)
    pred, target, weight, pred_shape = _check_elementwise(pred, target, weight, reduction)
    with np.errstate(invalid="ignore"):
        r = pred - target
        slope = np.where(r < -delta, -delta, np.where(r > delta, delta, r))
    return _grad_from_slope(slope, weight, grad_output, reduction, pred_shape)


def huber_value_and_grad(pred, target, grad_output=1.0, *, delta=1.0, weight=None,
                         reduction="mean"):
    """``(huber(...), huber_grad(...))``."""
    options = dict(delta=delta, weight=weight, reduction=reduction)
    return huber(pred, target, **options), huber_grad(pred, target, grad_output, **options)


def smooth_l1(pred, target, *, beta=1.0, weight=None, reduction="mean"):
    r"""Smooth L1 loss, as ``torch.nn.functional.smooth_l1_loss``. Per element, ``r = pred - target``::

        loss = weight * (0.5 * r**2 / beta   if |r| < beta
                         |r| - 0.5 * beta    otherwise)

    ``beta >= 0``; ``beta == 0`` is :func:`l1` exactly (as torch).
    """
    beta = _check_positive(beta, "beta", allow_zero=True)
    if beta == 0.0:
        return l1(pred, target, weight=weight, reduction=reduction)
    pred, target, weight, _ = _check_elementwise(pred, target, weight, reduction)
    with np.errstate(invalid="ignore", over="ignore"):
        r = pred - target
        a = np.abs(r)
        return _reduce(weight * np.where(a < beta, 0.5 * r**2 / beta, a - 0.5 * beta),
                       reduction)


def smooth_l1_grad(pred, target, grad_output=1.0, *, beta=1.0, weight=None,
                   reduction="mean"):
    """Gradient of ``grad_output * smooth_l1(...)`` w.r.t. pred: ``clip(r / beta, -1, 1) *
    weight * grad_output`` (the l1 gradient for beta == 0)."""
    beta = _check_positive(beta, "beta", allow_zero=True)
    if beta == 0.0:
        return l1_grad(pred, target, grad_output, weight=weight, reduction=reduction)
    pred, target, weight, pred_shape = _check_elementwise(pred, target, weight, reduction)
    with np.errstate(invalid="ignore"):
        r = pred - target
        slope = np.where(r < -beta, -1.0, np.where(r > beta, 1.0, r / beta))
    return _grad_from_slope(slope, weight, grad_output, reduction, pred_shape)


def smooth_l1_value_and_grad(pred, target, grad_output=1.0, *, beta=1.0, weight=None,
                             reduction="mean"):
    """``(smooth_l1(...), smooth_l1_grad(...))``."""
    options = dict(beta=beta, weight=weight, reduction=reduction)
    return (smooth_l1(pred, target, **options),
            smooth_l1_grad(pred, target, grad_output, **options))


def _check_pos_weight(pos_weight, shape):
    if pos_weight is None:
        return np.ones(shape)
    pos_weight = np.asarray(pos_weight, dtype=np.float64)
    if np.broadcast_shapes(pos_weight.shape, shape) != shape:
        raise ValueError(f"pos_weight: shape {pos_weight.shape} does not broadcast to {shape}")
    return np.broadcast_to(pos_weight, shape)


def bce_with_logits(logits, target, *, weight=None, pos_weight=None, reduction="mean"):
    r"""Binary cross-entropy on logits, as ``torch.nn.functional.binary_cross_entropy_with_logits``.

    Per element, ``x = logits``, ``y = target``, ``p = pos_weight`` (per class of the last
    axis, broadcast), ``w = 1 + (p - 1) * y``::

        loss = weight * ((1 - y) * x + w * softplus(-x))          (torch's formula)
             = weight * (-p * y * log(sigmoid(x)) - (1 - y) * log(1 - sigmoid(x)))

    with ``softplus(-x) = max(-x, 0) + log1p(exp(-|x|))``. Evaluated per sign of x, where
    it is the same number without large terms that cancel::

        x >= 0:  (1 - y) * x  + w * log1p(exp(-x))
        x <  0:  -p * y * x   + w * log1p(exp(x))          ((1 - y) x - w x = -p y x)

    At ``x = -inf`` torch's form is ``-inf + inf``: NaN, kept here.
    """
    logits, target, weight, _ = _check_elementwise(logits, target, weight, reduction,
                                                   pred_name="logits", same_shape=True)
    p = _check_pos_weight(pos_weight, logits.shape)
    x, y = logits, target
    with np.errstate(invalid="ignore", over="ignore"):
        linear = np.where(x >= 0, (1.0 - y) * x, -p * y * x)
        loss = linear + (1.0 + (p - 1.0) * y) * np.log1p(np.exp(-np.abs(x)))
        loss = np.where(x == -np.inf, np.nan, loss)
        return _reduce(weight * loss, reduction)


def bce_with_logits_grad(logits, target, grad_output=1.0, *, weight=None, pos_weight=None,
                         reduction="mean"):
    """Gradient of ``grad_output * bce_with_logits(...)`` w.r.t. the logits (torch's backward)::

        slope = (1 + (p - 1) * y) * sigmoid(x) - p * y

    with ``sigmoid(x) = 1 / (1 + exp(-x))`` for x >= 0 and ``exp(x) / (1 + exp(x))`` for
    x < 0 (no overflow), times ``weight * grad_output`` (/ N for the mean).
    """
    logits, target, weight, pred_shape = _check_elementwise(
        logits, target, weight, reduction, pred_name="logits", same_shape=True)
    p = _check_pos_weight(pos_weight, logits.shape)
    x, y = logits, target
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.exp(-np.abs(x))
        sigmoid = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
        slope = (1.0 + (p - 1.0) * y) * sigmoid - p * y
    return _grad_from_slope(slope, weight, grad_output, reduction, pred_shape)


def bce_with_logits_value_and_grad(logits, target, grad_output=1.0, *, weight=None,
                                   pos_weight=None, reduction="mean"):
    """``(bce_with_logits(...), bce_with_logits_grad(...))``."""
    options = dict(weight=weight, pos_weight=pos_weight, reduction=reduction)
    return (bce_with_logits(logits, target, **options),
            bce_with_logits_grad(logits, target, grad_output, **options))
