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


# ----------------------------------------------------------------------------------------
# Regression and binary losses (one term per element)
# ----------------------------------------------------------------------------------------
#
# Shared semantics (torch 2.13's): ``pred`` and ``target`` broadcast to one shape, the
# loss's (for bce_with_logits they must have the same shape); ``weight`` (per element)
# broadcasts to that shape; "mean" is the weighted sum divided by the number of elements,
# except for mse and l1 with a weight, where torch divides by the sum of the weight as
# paired with ``pred`` (the weight broadcast with pred's shape, before a larger target
# repeats it): a weighted mean. ``wrt`` names the gradients asked for (``pred`` by
# default; ``target``; ``weight`` for the regression losses), each summed back over the
# axes broadcasting added or stretched, as autograd does. Everything is float64.

class _Elementwise:
    """The checked arguments of one call: float64 arrays broadcast to the loss's shape
    (``weight`` all ones when None) and each argument's own shape."""

    def __init__(self, pred, target, weight, reduction, *, pred_name="pred",
                 same_shape=False):
        pred = np.asarray(pred)
        if pred.dtype.kind != "f":
            raise TypeError(f"{pred_name}: expected a float array, got dtype {pred.dtype}")
        target = np.asarray(target)
        if target.dtype.kind not in "biuf":
            raise TypeError(f"target: expected real numbers, got dtype {target.dtype}")
        if same_shape and target.shape != pred.shape:
            raise ValueError(f"target: expected the shape of {pred_name} {pred.shape}, "
                             f"got {target.shape}")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction: expected one of {_REDUCTIONS}, got {reduction!r}")
        shape = np.broadcast_shapes(pred.shape, target.shape)
        self.weight_given = weight is not None
        weight = np.ones(()) if weight is None else np.asarray(weight, dtype=np.float64)
        if np.broadcast_shapes(weight.shape, shape) != shape:
            raise ValueError(f"weight: shape {weight.shape} does not broadcast to {shape}")
        self.pred_name, self.reduction, self.shape = pred_name, reduction, shape
        self.pred_shape, self.target_shape, self.weight_shape = (
            pred.shape, target.shape, weight.shape)
        self.target_is_float = target.dtype.kind == "f"
        self.pred = np.broadcast_to(pred.astype(np.float64), shape)
        self.target = np.broadcast_to(target.astype(np.float64), shape)
        # the weight as paired with pred, and as paired with every element of the loss
        self.paired_weight = np.broadcast_to(
            weight, np.broadcast_shapes(weight.shape, pred.shape))
        self.weight = np.broadcast_to(weight, shape)

    def reduce(self, loss, weighted_mean=False):
        """``weight * loss`` reduced: a float for mean/sum (the mean of nothing is nan),
        the float64 array for none. The mean divides by the number of elements, or for
        ``weighted_mean`` by the sum of the weight as paired with pred."""
        loss = self.weight * loss
        if self.reduction == "none":
            return np.array(loss, dtype=np.float64)
        if self.reduction == "sum":
            return float(np.sum(loss))
        with np.errstate(invalid="ignore", divide="ignore"):
            return float(np.float64(np.sum(loss)) / np.float64(self.denominator(weighted_mean)))

    def denominator(self, weighted_mean):
        if weighted_mean and self.weight_given:
            return np.sum(self.paired_weight)
        return self.pred.size

    def grads(self, wrt, grad_output, *, slope, target_slope, loss=None, weighted_mean=False):
        """The gradients of ``grad_output * loss`` named by ``wrt`` from the per-element
        slopes w.r.t. pred and target and, for the weight, the unweighted loss.

        Per element i, with g the upstream gradient and D the mean's denominator (1 for
        sum and none): pred ``slope * weight * g / D``, target ``target_slope * weight *
        g / D``, weight ``loss * g / D``; for the weighted mean, L = S / W with S = sum of
        weight * loss and W = sum of the paired weight, whose element j appears once in
        the paired weight per R = n / (paired weight's size) elements of the loss:
        ``dL/dw_j = sum over its elements i of (loss_i W - S / R) / W**2``."""
        names, single = _wrt_names(wrt, self.pred_name, loss is not None)
        upstream = np.asarray(grad_output, dtype=np.float64)
        if self.reduction != "none" and upstream.ndim != 0:
            raise ValueError(f"grad_output: expected a scalar for reduction="
                             f"{self.reduction!r}, got shape {upstream.shape}")
        if upstream.ndim != 0 and upstream.shape != self.shape:
            raise ValueError(f"grad_output: expected a scalar or shape {self.shape}, "
                             f"got {upstream.shape}")
        denominator = self.denominator(weighted_mean) if self.reduction == "mean" else 1
        results = []
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            for name in names:
                if name == self.pred_name:
                    grad = slope * self.weight * upstream / np.float64(denominator)
                    shape = self.pred_shape
                elif name == "target":
                    if not self.target_is_float:
                        raise TypeError("target: an integer or bool target has no gradient")
                    grad = target_slope * self.weight * upstream / np.float64(denominator)
                    shape = self.target_shape
                else:  # weight
                    if not self.weight_given:
                        raise ValueError("weight: no weight was given to differentiate")
                    if weighted_mean and self.reduction == "mean":
                        total = np.sum(self.weight * loss)
                        repeats = self.pred.size // max(self.paired_weight.size, 1)
                        grad = upstream * (loss * denominator - total / repeats) / denominator**2
                    else:
                        grad = loss * upstream / np.float64(denominator)
                    shape = self.weight_shape
                results.append(_sum_to(np.broadcast_to(grad, self.shape), shape))
        return results[0] if single else tuple(results)


def _wrt_names(wrt, pred_name, weight_differentiable):
    """``(names, single)``: the arguments ``wrt`` names, in order, and whether it was one
    name (one array returned) rather than a tuple."""
    single = wrt is None or isinstance(wrt, str)
    names = (pred_name,) if wrt is None else ((wrt,) if single else tuple(wrt))
    allowed = (pred_name, "target") + (("weight",) if weight_differentiable else ())
    for name in names:
        if name not in allowed:
            raise ValueError(f"wrt: expected names from {allowed}, got {name!r}")
    if not names or len(set(names)) != len(names):
        raise ValueError(f"wrt: expected distinct names from {allowed}, got {wrt!r}")
    return names, single


def _sum_to(grad, shape):
    """``grad`` summed over the axes that broadcasting added or stretched, to ``shape``."""
    lead = grad.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + axis for axis, size in enumerate(shape)
                                      if size == 1 and grad.shape[lead + axis] != 1)
    return np.array(np.sum(grad, axis=axes)).reshape(shape)


def mse(pred, target, *, weight=None, reduction="mean"):
    r"""Mean squared error, as ``torch.nn.functional.mse_loss`` (with its ``weight``).

    Per element, ``r = pred - target``: ``loss = weight * r**2``; "mean" divides the sum
    by the number of elements, or with a weight by the sum of the weight as paired with
    pred (torch's ``sum(weight * loss) / sum(weight)``).
    """
    call = _Elementwise(pred, target, weight, reduction)
    with np.errstate(invalid="ignore", over="ignore"):
        return call.reduce((call.pred - call.target) ** 2, weighted_mean=True)


def mse_grad(pred, target, grad_output=1.0, *, weight=None, reduction="mean", wrt="pred"):
    """Gradient of ``grad_output * mse(...)``: w.r.t. pred ``2 r * weight * grad_output``
    (/ the mean's denominator), w.r.t. target its negative, w.r.t. weight ``r**2 *
    grad_output`` (through the weighted mean, see ``_Elementwise.grads``)."""
    call = _Elementwise(pred, target, weight, reduction)
    with np.errstate(invalid="ignore", over="ignore"):
        r = call.pred - call.target
        return call.grads(wrt, grad_output, slope=2.0 * r, target_slope=-2.0 * r,
                          loss=r**2, weighted_mean=True)


def mse_value_and_grad(pred, target, grad_output=1.0, *, weight=None, reduction="mean",
                       wrt="pred"):
    """``(mse(...), mse_grad(...))``."""
    return (mse(pred, target, weight=weight, reduction=reduction),
            mse_grad(pred, target, grad_output, weight=weight, reduction=reduction, wrt=wrt))


def l1(pred, target, *, weight=None, reduction="mean"):
    r"""Mean absolute error, as ``torch.nn.functional.l1_loss``: ``weight * |pred - target|``;
    "mean" divides by the number of elements, or with a weight by the sum of the weight as
    paired with pred."""
    call = _Elementwise(pred, target, weight, reduction)
    with np.errstate(invalid="ignore", over="ignore"):
        return call.reduce(np.abs(call.pred - call.target), weighted_mean=True)


def _l1_slope(r):
    """sign(r), 0 at r == 0 and, as torch's l1_loss backward, where r is NaN."""
    return np.where(r > 0, 1.0, np.where(r < 0, -1.0, 0.0))


def l1_grad(pred, target, grad_output=1.0, *, weight=None, reduction="mean", wrt="pred"):
    """Gradient of ``grad_output * l1(...)``: w.r.t. pred ``sign(r) * weight * grad_output``
    with sign(0) = 0 and, as torch's backward, 0 where r is NaN; w.r.t. target its
    negative; w.r.t. weight ``|r| * grad_output`` (through the weighted mean)."""
    call = _Elementwise(pred, target, weight, reduction)
    with np.errstate(invalid="ignore", over="ignore"):
        r = call.pred - call.target
        return call.grads(wrt, grad_output, slope=_l1_slope(r), target_slope=-_l1_slope(r),
                          loss=np.abs(r), weighted_mean=True)


def l1_value_and_grad(pred, target, grad_output=1.0, *, weight=None, reduction="mean",
                      wrt="pred"):
    """``(l1(...), l1_grad(...))``."""
    return (l1(pred, target, weight=weight, reduction=reduction),
            l1_grad(pred, target, grad_output, weight=weight, reduction=reduction, wrt=wrt))


def _check_positive(value, name, allow_zero):
    value = float(value)
    if not (math.isfinite(value) and (value >= 0.0 if allow_zero else value > 0.0)):
        raise ValueError(f"{name}: expected a finite value {'>=' if allow_zero else '>'} 0, "
                         f"got {value}")
    return value


def _huber_loss(r, delta):
    a = np.abs(r)
    return np.where(a < delta, 0.5 * r**2, delta * (a - 0.5 * delta))


def _huber_slope(r, delta):
    """clip(r, -delta, delta), as torch's backward writes it (NaN stays NaN)."""
    return np.where(r < -delta, -delta, np.where(r > delta, delta, r))


def huber(pred, target, *, delta=1.0, weight=None, reduction="mean"):
    r"""Huber loss, as ``torch.nn.functional.huber_loss``. Per element, ``r = pred - target``::

        loss = weight * (0.5 * r**2                  if |r| < delta
                         delta * (|r| - 0.5 * delta)  otherwise)

    ``delta > 0``. At ``|r| == delta`` both pieces are ``0.5 * delta**2``. The weighted
    mean divides by the number of elements, as torch's huber_loss.
    """
    delta = _check_positive(delta, "delta", allow_zero=False)
    call = _Elementwise(pred, target, weight, reduction)
    with np.errstate(invalid="ignore", over="ignore"):
        return call.reduce(_huber_loss(call.pred - call.target, delta))


def huber_grad(pred, target, grad_output=1.0, *, delta=1.0, weight=None, reduction="mean",
               wrt="pred"):
    """Gradient of ``grad_output * huber(...)``: w.r.t. pred ``clip(r, -delta, delta) *
    weight * grad_output``, as torch's backward writes it (NaN stays NaN); w.r.t. target
    its negative; w.r.t. weight the unweighted loss times grad_output."""
    delta = _check_positive(delta, "delta", allow_zero=False)
    call = _Elementwise(pred, target, weight, reduction)
    with np.errstate(invalid="ignore", over="ignore"):
        r = call.pred - call.target
        return call.grads(wrt, grad_output, slope=_huber_slope(r, delta),
                          target_slope=-_huber_slope(r, delta), loss=_huber_loss(r, delta))


def huber_value_and_grad(pred, target, grad_output=1.0, *, delta=1.0, weight=None,
                         reduction="mean", wrt="pred"):
    """``(huber(...), huber_grad(...))``."""
    options = dict(delta=delta, weight=weight, reduction=reduction)
    return (huber(pred, target, **options),
            huber_grad(pred, target, grad_output, wrt=wrt, **options))


def _smooth_l1_loss(r, beta):
    a = np.abs(r)
    return a if beta == 0.0 else np.where(a < beta, 0.5 * r**2 / beta, a - 0.5 * beta)


def _smooth_l1_slope(r, beta):
    """clip(r / beta, -1, 1); the l1 slope for beta == 0."""
    if beta == 0.0:
        return _l1_slope(r)
    return np.where(r < -beta, -1.0, np.where(r > beta, 1.0, r / beta))


def smooth_l1(pred, target, *, beta=1.0, weight=None, reduction="mean"):
    r"""Smooth L1 loss, as ``torch.nn.functional.smooth_l1_loss``. Per element, ``r = pred - target``::

        loss = weight * (0.5 * r**2 / beta   if |r| < beta
                         |r| - 0.5 * beta    otherwise)

    ``beta >= 0``; ``beta == 0`` is ``weight * |r|``, l1 exactly (as torch).  The weighted
    mean divides by the number of elements, as :func:`huber` (torch's smooth_l1_loss has
    no weight; its l1_loss divides a weighted mean by the sum of the weight).
    """
    beta = _check_positive(beta, "beta", allow_zero=True)
    call = _Elementwise(pred, target, weight, reduction)
    with np.errstate(invalid="ignore", over="ignore"):
        return call.reduce(_smooth_l1_loss(call.pred - call.target, beta))


def smooth_l1_grad(pred, target, grad_output=1.0, *, beta=1.0, weight=None,
                   reduction="mean", wrt="pred"):
    """Gradient of ``grad_output * smooth_l1(...)``: w.r.t. pred ``clip(r / beta, -1, 1) *
    weight * grad_output`` (the l1 gradient for beta == 0); w.r.t. target its negative;
    w.r.t. weight the unweighted loss times grad_output."""
    beta = _check_positive(beta, "beta", allow_zero=True)
    call = _Elementwise(pred, target, weight, reduction)
    with np.errstate(invalid="ignore", over="ignore"):
        r = call.pred - call.target
        return call.grads(wrt, grad_output, slope=_smooth_l1_slope(r, beta),
                          target_slope=-_smooth_l1_slope(r, beta),
                          loss=_smooth_l1_loss(r, beta))


def smooth_l1_value_and_grad(pred, target, grad_output=1.0, *, beta=1.0, weight=None,
                             reduction="mean", wrt="pred"):
    """``(smooth_l1(...), smooth_l1_grad(...))``."""
    options = dict(beta=beta, weight=weight, reduction=reduction)
    return (smooth_l1(pred, target, **options),
            smooth_l1_grad(pred, target, grad_output, wrt=wrt, **options))


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
    axis, broadcast; any shape that broadcasts to the logits', a 0-d one for 0-d logits),
    ``w = 1 + (p - 1) * y``::

        loss = weight * ((1 - y) * x + w * softplus(-x))          (torch's formula)
             = weight * (-p * y * log(sigmoid(x)) - (1 - y) * log(1 - sigmoid(x)))

    with ``softplus(-x) = max(-x, 0) + log1p(exp(-|x|))``. Evaluated per sign of x, where
    it is the same number without large terms that cancel::

        x >= 0:  (1 - y) * x  + w * log1p(exp(-x))
        x <  0:  -p * y * x   + w * log1p(exp(x))          ((1 - y) x - w x = -p y x)

    At ``x = -inf`` torch's form is ``-inf + inf``: NaN, kept here.
    """
    call = _Elementwise(logits, target, weight, reduction, pred_name="logits",
                        same_shape=True)
    p = _check_pos_weight(pos_weight, call.shape)
    x, y = call.pred, call.target
    with np.errstate(invalid="ignore", over="ignore"):
        linear = np.where(x >= 0, (1.0 - y) * x, -p * y * x)
        loss = linear + (1.0 + (p - 1.0) * y) * np.log1p(np.exp(-np.abs(x)))
        return call.reduce(np.where(x == -np.inf, np.nan, loss))


def bce_with_logits_grad(logits, target, grad_output=1.0, *, weight=None, pos_weight=None,
                         reduction="mean", wrt="logits"):
    """Gradient of ``grad_output * bce_with_logits(...)`` (torch's backward), times
    ``weight * grad_output`` (/ N for the mean). W.r.t. the logits::

        slope = w * sigmoid(x) - p * y,     w = 1 + (p - 1) * y

    evaluated per sign of x with ``q = exp(-|x|) / (1 + exp(-|x|)) = sigmoid(-|x|)`` (no
    overflow)::

        x >= 0:  (1 - y) - w * q          (w * (1 - q) - p * y = 1 - y - w * q)
        x <  0:  w * q - p * y

    so that a hard label keeps q's relative accuracy where the slope is tiny (x = 40,
    y = 1 gives -4.2e-18, where ``sigmoid(x) - y`` rounds to 0). W.r.t. the target
    (torch's ``log_sigmoid(-x) - p * log_sigmoid(x)``)::

        target slope = -x + (p - 1) * softplus(-x),    with L = log1p(exp(-|x|)):
        x >= 0:  -x     + (p - 1) * L
        x <  0:  -p * x + (p - 1) * L                  (softplus(-x) = -x + L there)

    so that no term overflows and none cancels but near a root of the slope itself.
    torch does not differentiate ``weight`` and ``pos_weight``, so neither can ``wrt``.
    """
    call = _Elementwise(logits, target, weight, reduction, pred_name="logits",
                        same_shape=True)
    p = _check_pos_weight(pos_weight, call.shape)
    x, y = call.pred, call.target
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.exp(-np.abs(x))
        q = e / (1.0 + e)
        w = 1.0 + (p - 1.0) * y
        slope = np.where(x >= 0, (1.0 - y) - w * q, w * q - p * y)
        log1p_e = np.log1p(e)
        target_slope = np.where(x >= 0, -x + (p - 1.0) * log1p_e,
                                -p * x + (p - 1.0) * log1p_e)
    return call.grads(wrt, grad_output, slope=slope, target_slope=target_slope)


def bce_with_logits_value_and_grad(logits, target, grad_output=1.0, *, weight=None,
                                   pos_weight=None, reduction="mean", wrt="logits"):
    """``(bce_with_logits(...), bce_with_logits_grad(...))``."""
    options = dict(weight=weight, pos_weight=pos_weight, reduction=reduction)
    return (bce_with_logits(logits, target, **options),
            bce_with_logits_grad(logits, target, grad_output, wrt=wrt, **options))

# ----------------------------------------------------------------------------------------
# Pairwise distances and contrastive losses (embeddings: rows of 2-d arrays)
# ----------------------------------------------------------------------------------------

__all__ += [
    "pairwise_distance", "pairwise_distance_grad", "pairwise_distance_value_and_grad",
    "contrastive", "contrastive_grad", "contrastive_value_and_grad",
    "contrastive_pairwise", "contrastive_pairwise_grad", "contrastive_pairwise_value_and_grad",
    "info_nce", "info_nce_grad", "info_nce_value_and_grad",
    "triplet_margin", "triplet_margin_grad", "triplet_margin_value_and_grad",
]

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
    """Rows ``x / max(|x|, 1e-12)`` (torch's F.normalize) and the norms ``|x|``."""
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
    (1e-12), keeping only float64 rounding; here the duplicate's term is exactly 0.
    """
    n_rows = grad_logits.shape[0]
    weights = grad_logits.copy()
    weights[np.arange(n_rows), np.arange(n_rows)] = 0.0
    differences = key_unit[None, :, :] - key_unit[:n_rows, None, :]  # (N, M, D)
    return np.einsum("im,imd->id", weights, differences) / temperature


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
    every p but 0 (exactly, as torch's norm of a 0-d tensor)."""
    a = np.abs(v)
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

    def total(terms, shape):
        padded = shape if shape else (1,)
        grad = np.zeros(padded)
        for sign, term in terms:
            if term is not None:
                grad = grad + sign * _sum_to(term, padded)
        return grad.reshape(shape)

    return (total([(1, u_ap), (-1, u_an)], shapes[0]),
            total([(-1, u_ap), (-1, u_pn)], shapes[1]),
            total([(1, u_an), (1, u_pn)], shapes[2]))


def triplet_margin_value_and_grad(anchor, positive, negative, grad_output=1.0, *, margin=1.0,
                                  p=2.0, eps=1e-6, swap=False, reduction="mean"):
    """``(triplet_margin(...), triplet_margin_grad(...))``."""
    options = dict(margin=margin, p=p, eps=eps, swap=swap, reduction=reduction)
    return (triplet_margin(anchor, positive, negative, **options),
            triplet_margin_grad(anchor, positive, negative, grad_output, **options))
