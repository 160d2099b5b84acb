"""Regression and binary losses, one term per element, in float64 (see
fastloss.reference)."""

import math

import numpy as np

from fastloss.reference._common import _REDUCTIONS, _sum_to

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
    if isinstance(value, (str, bytes)) or not np.isrealobj(value) or np.ndim(value):
        raise TypeError(f"{name}: expected a real number, got {value!r}")
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
