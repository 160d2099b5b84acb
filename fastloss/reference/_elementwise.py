"""Regression and binary losses, one term per element, in float64 (see
fastloss.reference)."""

import copy
import math

import numpy as np

from fastloss.reference._common import _REDUCTIONS, _accurate_sum, _sum_to

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
            return float(_accurate_sum(loss))
        with np.errstate(invalid="ignore", divide="ignore"):
            return float(_accurate_sum(loss) / np.float64(self.denominator(weighted_mean)))

    def denominator(self, weighted_mean):
        if weighted_mean and self.weight_given:
            return _accurate_sum(self.paired_weight)
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
                        total = _accurate_sum(self.weight * loss)
                        repeats = self.pred.size // max(self.paired_weight.size, 1)
                        grad = upstream * (loss * denominator - total / repeats) / denominator**2
                    else:
                        grad = loss * upstream / np.float64(denominator)
                    shape = self.weight_shape
                results.append(_sum_to(np.broadcast_to(grad, self.shape), shape))
        return results[0] if single else tuple(results)

    def magnitudes(self, wrt, grad_output, *, loss, slope, target_slope):
        """The size of the terms each result is formed from (docs/accuracy.rst, "Results
        whose terms cancel"), from each element's: ``loss``, ``slope`` and
        ``target_slope`` sized (every term and factor taken positive), reduced and
        differentiated as the results are, with the weight and ``grad_output`` taken
        positive too. ``(loss, grads)``; no weighted mean (its divisor may cancel)."""
        sized = copy.copy(self)
        sized.weight, sized.paired_weight = np.abs(self.weight), np.abs(self.paired_weight)
        return (sized.reduce(np.abs(loss)),
                sized.grads(wrt, np.abs(np.asarray(grad_output, dtype=np.float64)),
                            slope=np.abs(slope), target_slope=np.abs(target_slope)))


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
    try:
        value = float(value)
    except OverflowError:  # an integer no float64 holds
        value = math.inf
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
    # r (r / beta) / 2: r / beta is below 1 where it is used, so neither r**2 (a beta
    # above 1e154) nor 1 / beta (a subnormal beta) overflows on the way
    return a if beta == 0.0 else np.where(a < beta, r * (0.5 * (r / beta)), a - 0.5 * beta)


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


def _bce_with_logits_magnitudes(logits, target, grad_output=1.0, *, weight=None,
                                pos_weight=None, reduction="mean", wrt="logits"):
    """The size of the terms of bce_with_logits's loss and gradients, per sign of x as
    they are formed above, every term and factor taken positive: with
    ``L = log1p(exp(-|x|))``, ``q = sigmoid(-|x|)`` and ``|w| <= 1 + (|p| + 1) |y|``::

        loss:          (1 + |y|) |x|  (x >= 0)  or  |p y x|  (x < 0),  + |w| L
        slope:         1 + |y| + |w| q            or  |w| q + |p y|
        target slope:  |x|                        or  |p x|,          + (|p| + 1) L

    For targets in [0, 1] and positive weights nothing cancels; beyond them (a target
    above 1, a negative pos_weight or weight) the terms may, and ``(loss, grads)`` is
    reduced and differentiated as the results are (docs/accuracy.rst)."""
    call = _Elementwise(logits, target, weight, reduction, pred_name="logits",
                        same_shape=True)
    p = np.abs(_check_pos_weight(pos_weight, call.shape))
    x, y = call.pred, np.abs(call.target)
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.exp(-np.abs(x))
        q, log1p_e = e / (1.0 + e), np.log1p(e)
        w = 1.0 + (p + 1.0) * y
        nonnegative = x >= 0
        loss = np.where(nonnegative, (1.0 + y) * np.abs(x), p * y * np.abs(x)) + w * log1p_e
        slope = np.where(nonnegative, 1.0 + y + w * q, w * q + p * y)
        target_slope = np.where(nonnegative, 1.0, p) * np.abs(x) + (p + 1.0) * log1p_e
    return call.magnitudes(wrt, grad_output, loss=loss, slope=slope,
                           target_slope=target_slope)


# ----------------------------------------------------------------------------------------
# Pointwise losses of several inputs: sigmoid_focal, margin_ranking, poisson_nll,
# gaussian_nll, pinball
# ----------------------------------------------------------------------------------------
#
# The inputs broadcast to one shape, the loss's; no ``weight``. Each gradient is summed
# back over the axes broadcasting added or stretched, as autograd does; ``wrt`` names the
# differentiable inputs asked for (the first input by default), one name for one array or
# a tuple of names for a tuple of arrays. Everything is float64.

class _Pointwise:
    """The checked inputs of one call: float64 arrays broadcast to the loss's shape, each
    input's own shape, and the reduction."""

    def __init__(self, inputs, reduction, *, same_shape=False, same_ndim=False):
        if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
            raise ValueError(f"reduction: expected one of {_REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction
        arrays = {}
        for name, value in inputs.items():
            array = np.asarray(value)
            if array.dtype.kind not in "biuf":
                raise TypeError(f"{name}: expected real numbers, got dtype {array.dtype}")
            arrays[name] = array
        names = list(arrays)
        first = arrays[names[0]]
        for name in names[1:]:
            if same_shape and arrays[name].shape != first.shape:
                raise ValueError(f"{name}: expected the shape of {names[0]} {first.shape}, "
                                 f"got {arrays[name].shape}")
            if same_ndim and arrays[name].ndim != first.ndim:
                raise ValueError(f"{name}: expected {first.ndim} dimensions as {names[0]}, "
                                 f"got shape {arrays[name].shape}")
        try:
            self.shape = np.broadcast_shapes(*(array.shape for array in arrays.values()))
        except ValueError:
            raise ValueError("the shapes " + ", ".join(
                f"{name} {array.shape}" for name, array in arrays.items())
                + " do not broadcast") from None
        self.shapes = {name: array.shape for name, array in arrays.items()}
        self.values = {name: np.broadcast_to(array.astype(np.float64), self.shape)
                       for name, array in arrays.items()}

    def reduce(self, loss):
        """A float for mean/sum (the mean of nothing is nan), the float64 array for none."""
        loss = np.broadcast_to(loss, self.shape)
        if self.reduction == "none":
            return np.array(loss, dtype=np.float64)
        if self.reduction == "sum":
            return float(_accurate_sum(loss))
        with np.errstate(invalid="ignore", divide="ignore"):
            return float(_accurate_sum(loss) / np.float64(loss.size))

    def grads(self, wrt, grad_output, slopes):
        """The gradients of ``grad_output * loss`` w.r.t. the inputs ``wrt`` names, from
        each input's per-element slope in ``slopes`` (their keys are the differentiable
        inputs): ``slope * grad_output / D``, D the element count for the mean (else 1)."""
        allowed = tuple(slopes)
        single = isinstance(wrt, str)
        names = (wrt,) if single else tuple(wrt) if isinstance(wrt, (tuple, list)) else None
        if names is None or not names or len(set(names)) != len(names) or any(
                name not in allowed for name in names):
            raise ValueError(f"wrt: expected a name or distinct names from {allowed}, "
                             f"got {wrt!r}")
        upstream = np.asarray(grad_output, dtype=np.float64)
        if self.reduction != "none" and upstream.ndim != 0:
            raise ValueError(f"grad_output: expected a scalar for reduction="
                             f"{self.reduction!r}, got shape {upstream.shape}")
        if upstream.ndim != 0 and upstream.shape != self.shape:
            raise ValueError(f"grad_output: expected a scalar or shape {self.shape}, "
                             f"got {upstream.shape}")
        denominator = np.float64(math.prod(self.shape) if self.reduction == "mean" else 1)
        results = []
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            for name in names:
                grad = np.broadcast_to(slopes[name] * upstream / denominator, self.shape)
                results.append(_sum_to(grad, self.shapes[name]))
        return results[0] if single else tuple(results)

    def magnitudes(self, wrt, grad_output, loss, slopes):
        """The size of the terms each result is formed from (docs/accuracy.rst, "Results
        whose terms cancel"), from each element's sizes of the loss and of the slopes,
        reduced and differentiated as the results are: ``(loss, grads)``."""
        return (self.reduce(np.abs(loss)),
                self.grads(wrt, np.abs(np.asarray(grad_output, dtype=np.float64)),
                           {name: np.abs(slope) for name, slope in slopes.items()}))


def _finite_number(value, name):
    """``value`` as a float, or a ValueError naming the argument."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name}: expected a real number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a real number, got {value!r}") from None
    except OverflowError:  # an integer no float64 holds
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"{name}: expected a finite number, got {value!r:.40}")
    return number


def sigmoid_focal(logits, target, *, alpha=0.25, gamma=2.0, reduction="mean"):
    r"""Focal loss on logits, as ``torchvision.ops.sigmoid_focal_loss`` (Lin et al. 2017,
    arXiv:1708.02002).

    Per element, ``x = logits``, ``y = target`` (in [0, 1]; soft labels allowed),
    ``s = sigmoid(x)``::

        ce    = bce_with_logits(x, y)                      (no weight)
        1-p_t = s * (1 - y) + (1 - s) * y
        loss  = alpha_t * ce * (1 - p_t)**gamma,
        alpha_t = alpha * y + (1 - alpha) * (1 - y)        (1 when alpha < 0)

    ``s`` and ``1 - s`` are ``sigmoid(-|x|)`` and one minus it per the sign of ``x``,
    so ``1 - p_t`` keeps its relative accuracy where torchvision's rounds to 0 (there
    torchvision's loss is 0 and this one is the tiny exact value).
    """
    call, _, _, gamma, (_, _, ce, u, alpha_t) = _focal_call(logits, target, alpha, gamma,
                                                           reduction)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        return call.reduce(alpha_t * ce * u**gamma)


def _focal_call(logits, target, alpha, gamma, reduction):
    """The checked call, x, y, gamma and ``(s, 1 - s, ce, u = 1 - p_t, alpha_t)``."""
    call = _Pointwise({"logits": logits, "target": target}, reduction, same_shape=True)
    alpha = _finite_number(alpha, "alpha")
    gamma = _finite_number(gamma, "gamma")
    if gamma < 0:
        raise ValueError(f"gamma: expected a value >= 0, got {gamma}")
    x, y = call.values["logits"], call.values["target"]
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        s, c, ce = _focal_parts(x, y)
        u = s * (1.0 - y) + c * y
        alpha_t = alpha * y + (1.0 - alpha) * (1.0 - y) if alpha >= 0 else 1.0
    return call, x, y, gamma, (s, c, ce, u, alpha_t)


def _focal_parts(x, y):
    """``(sigmoid(x), 1 - sigmoid(x), bce_with_logits(x, y))``, each accurate however small
    (bce per sign of x: ``(1 - y) x + log1p(exp(-x))`` or ``-y x + log1p(exp(x))``; NaN at
    x = -inf as torch's form)."""
    e = np.exp(-np.abs(x))
    q = e / (1.0 + e)
    s = np.where(x >= 0, 1.0 - q, q)
    c = np.where(x >= 0, q, 1.0 - q)
    ce = np.where(x >= 0, (1.0 - y) * x, -y * x) + np.log1p(e)
    return s, c, np.where(x == -np.inf, np.nan, ce)


def sigmoid_focal_grad(logits, target, grad_output=1.0, *, alpha=0.25, gamma=2.0,
                       reduction="mean", wrt="logits"):
    r"""Gradient of ``grad_output * sigmoid_focal(...)`` w.r.t. the logits (the target has
    none here, as torchvision's is not differentiated in practice). With ``u = 1 - p_t``::

        d ce / dx = s - y,     d u / dx = s (1 - s) (1 - 2 y)
        slope = alpha_t * ((s - y) * u**gamma
                           + gamma * ce * u**(gamma - 1) * s (1 - s) (1 - 2 y))

    ``s - y`` per the sign of x as bce's (``(1 - y) - sigmoid(-x)`` or
    ``sigmoid(x) - y``). The second term is 0 where ``gamma == 0`` (torch's pow backward
    with exponent 0), and where ``u == 0`` (then ``s (1 - s) / u`` is bounded and
    ``u**gamma = 0``: the limit; torch's autograd gives NaN there for 0 < gamma < 1)
    unless the loss is NaN there (x = +-inf on its label's side: ce is 0 * inf).
    """
    call, x, y, gamma, (s, c, ce, u, alpha_t) = _focal_call(logits, target, alpha, gamma,
                                                           reduction)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        ce_slope = np.where(x >= 0, (1.0 - y) - c, s - y)
        first = ce_slope * u**gamma
        if gamma == 0:
            second = np.zeros_like(x)
        else:
            # 0 * ce: NaN where the loss is (an infinite logit on its own label's side,
            # x = inf with y = 1: ce is 0 * inf), as torch's autograd and the kernels
            second = np.where(u == 0, 0.0 * ce,
                              gamma * ce * u**(gamma - 1.0) * s * c * (1.0 - 2.0 * y))
        slope = alpha_t * (first + second)
    return call.grads(wrt, grad_output, {"logits": slope})


def sigmoid_focal_value_and_grad(logits, target, grad_output=1.0, *, alpha=0.25, gamma=2.0,
                                 reduction="mean", wrt="logits"):
    """``(sigmoid_focal(...), sigmoid_focal_grad(...))``."""
    options = dict(alpha=alpha, gamma=gamma, reduction=reduction)
    return (sigmoid_focal(logits, target, **options),
            sigmoid_focal_grad(logits, target, grad_output, wrt=wrt, **options))


def margin_ranking(x1, x2, target, *, margin=0.0, reduction="mean"):
    r"""Margin ranking loss, as ``torch.nn.functional.margin_ranking_loss``.

    Per element, with ``y = target`` (1 where x1 should rank higher, -1 for x2)::

        loss = max(0, -y * (x1 - x2) + margin)

    The three inputs have the same number of dimensions (torch's rule) and broadcast.
    NaN propagates through the max, as torch's ``clamp_min``.
    """
    call = _Pointwise({"x1": x1, "x2": x2, "target": target}, reduction, same_ndim=True)
    margin = _finite_number(margin, "margin")
    with np.errstate(invalid="ignore", over="ignore"):
        z = _margin_ranking_z(call, margin)
        return call.reduce(np.where(z < 0, 0.0, z))


def _margin_ranking_z(call, margin):
    x1, x2, y = call.values["x1"], call.values["x2"], call.values["target"]
    return -y * (x1 - x2) + margin


def margin_ranking_grad(x1, x2, target, grad_output=1.0, *, margin=0.0, reduction="mean",
                        wrt="x1"):
    r"""Gradient of ``grad_output * margin_ranking(...)`` w.r.t. ``x1`` and/or ``x2``::

        d/dx1 = -y * [z >= 0],    d/dx2 = y * [z >= 0],    z = -y (x1 - x2) + margin

    torch's ``clamp_min`` backward passes the gradient where ``z >= 0``: the kink
    ``z == 0`` takes it; a NaN ``z`` gives ``-y * 0`` (0, or NaN for a NaN ``y``).
    """
    call = _Pointwise({"x1": x1, "x2": x2, "target": target}, reduction, same_ndim=True)
    margin = _finite_number(margin, "margin")
    y = call.values["target"]
    with np.errstate(invalid="ignore", over="ignore"):
        active = (_margin_ranking_z(call, margin) >= 0).astype(np.float64)
        slopes = {"x1": -y * active, "x2": y * active}
    return call.grads(wrt, grad_output, slopes)


def margin_ranking_value_and_grad(x1, x2, target, grad_output=1.0, *, margin=0.0,
                                  reduction="mean", wrt="x1"):
    """``(margin_ranking(...), margin_ranking_grad(...))``."""
    options = dict(margin=margin, reduction=reduction)
    return (margin_ranking(x1, x2, target, **options),
            margin_ranking_grad(x1, x2, target, grad_output, wrt=wrt, **options))


def _check_bool(value, name):
    """A bool, or an integer 0 or 1 (a NumPy one too, not a np.timedelta64, which NumPy
    makes a signed integer), as fastloss takes them."""
    if not (isinstance(value, (bool, np.bool_)) or (
            isinstance(value, (int, np.integer)) and not isinstance(value, np.timedelta64)
            and value in (0, 1))):
        raise TypeError(f"{name}: expected a bool, got {value!r}")


def _poisson_options(log_input, full, eps):
    _check_bool(log_input, "log_input")
    _check_bool(full, "full")
    eps = _finite_number(eps, "eps")
    if eps <= 0:
        raise ValueError(f"eps: expected a value > 0, got {eps}")
    return eps


def poisson_nll(input, target, *, log_input=True, full=False, eps=1e-8, reduction="mean"):
    r"""Poisson negative log-likelihood, as ``torch.nn.functional.poisson_nll_loss``.

    Per element, ``x = input``, ``y = target`` (counts)::

        log_input=True:   loss = exp(x) - y * x
        log_input=False:  loss = x - y * log(x + eps)

    ``full=True`` adds Stirling's approximation of ``log(y!)`` where ``y > 1`` (torch
    masks ``y <= 1`` to 0)::

        y * log(y) - y + 0.5 * log(2 * pi * y)
    """
    call = _Pointwise({"input": input, "target": target}, reduction)
    eps = _poisson_options(log_input, full, eps)
    x, y = call.values["input"], call.values["target"]
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        loss = np.exp(x) - y * x if log_input else x - y * np.log(x + eps)
        if full:
            stirling = y * np.log(y) - y + 0.5 * np.log(2.0 * math.pi * y)
            loss = loss + np.where(y <= 1, 0.0, stirling)
        return call.reduce(loss)


def poisson_nll_grad(input, target, grad_output=1.0, *, log_input=True, full=False,
                     eps=1e-8, reduction="mean", wrt="input"):
    r"""Gradient of ``grad_output * poisson_nll(...)`` w.r.t. ``input`` and/or ``target``::

        log_input=True:   d/dx = exp(x) - y,          d/dy = -x
        log_input=False:  d/dx = 1 - y / (x + eps),   d/dy = -log(x + eps)
        full, y > 1:      d/dy += log(y) + 1 / (2 y)

    Where ``y <= 1`` the masked Stirling term contributes 0 to ``d/dy``; torch's autograd
    gives NaN there for ``y <= 0`` (``0 * log(0)`` in the masked branch's backward).
    """
    call = _Pointwise({"input": input, "target": target}, reduction)
    eps = _poisson_options(log_input, full, eps)
    x, y = call.values["input"], call.values["target"]
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        if log_input:
            input_slope, target_slope = np.exp(x) - y, -x
        else:
            input_slope, target_slope = 1.0 - y / (x + eps), -np.log(x + eps)
        if full:
            target_slope = target_slope + np.where(y <= 1, 0.0, np.log(y) + 0.5 / y)
    return call.grads(wrt, grad_output, {"input": input_slope, "target": target_slope})


def poisson_nll_value_and_grad(input, target, grad_output=1.0, *, log_input=True, full=False,
                               eps=1e-8, reduction="mean", wrt="input"):
    """``(poisson_nll(...), poisson_nll_grad(...))``."""
    options = dict(log_input=log_input, full=full, eps=eps, reduction=reduction)
    return (poisson_nll(input, target, **options),
            poisson_nll_grad(input, target, grad_output, wrt=wrt, **options))


def _poisson_nll_magnitudes(input, target, grad_output=1.0, *, log_input=True, full=False,
                            eps=1e-8, reduction="mean", wrt="input"):
    """The size of the terms of poisson_nll's loss and gradients (every term positive),
    which cancel where ``exp(x)`` nears ``y x`` or ``y`` (``x`` nears ``y log(x + eps)``,
    ``y / (x + eps)`` nears 1)::

        log_input=True:   loss exp(x) + |y x|,              d/dx exp(x) + |y|,   d/dy |x|
        log_input=False:  loss |x| + |y log(x + eps)|,      d/dx 1 + |y / (x + eps)|,
                          d/dy |log(x + eps)|
        full, y > 1:      loss + |y log y| + y + 0.5 |log(2 pi y)|,  d/dy + |log y| + 0.5 / y

    ``(loss, grads)`` reduced and differentiated as the results are (docs/accuracy.rst,
    "Results whose terms cancel")."""
    call = _Pointwise({"input": input, "target": target}, reduction)
    eps = _poisson_options(log_input, full, eps)
    x, y = call.values["input"], call.values["target"]
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        if log_input:
            exp_x = np.exp(x)
            loss, input_slope, target_slope = exp_x + np.abs(y * x), exp_x + np.abs(y), np.abs(x)
        else:
            log_x = np.abs(np.log(x + eps))
            loss, input_slope, target_slope = (np.abs(x) + np.abs(y) * log_x,
                                               1.0 + np.abs(y / (x + eps)), log_x)
        if full:
            large = y > 1
            log_y = np.abs(np.log(y))
            loss = loss + np.where(large, np.abs(y) * log_y + np.abs(y)
                                   + 0.5 * np.abs(np.log(2.0 * math.pi * y)), 0.0)
            target_slope = target_slope + np.where(large, log_y + 0.5 / np.abs(y), 0.0)
    return call.magnitudes(wrt, grad_output, loss,
                           {"input": input_slope, "target": target_slope})


def _gaussian_call(input, target, var, full, eps, reduction):
    """The checked call and the clamped variance, with torch's rules for var's shape: the
    input's shape; the input's without its last axis (a trailing axis is added); or the
    input's number of axes with exactly one mismatched axis, of size 1. A Python number
    is one variance for every element (and has no gradient)."""
    _check_bool(full, "full")
    eps = _finite_number(eps, "eps")
    if eps <= 0:
        raise ValueError(f"eps: expected a value > 0, got {eps}")
    input_shape = np.shape(input)
    var_is_number = isinstance(var, (int, float)) and not isinstance(var, bool)
    var = np.asarray(var)
    if var.dtype.kind not in "biuf":
        raise TypeError(f"var: expected real numbers, got dtype {var.dtype}")
    if np.any(var < 0):
        raise ValueError("var: has negative entries (a variance is >= 0)")
    inputs = {"input": input, "target": target}
    if var_is_number:
        inputs["var"] = np.full(input_shape, float(var))
    else:
        var_shape = var.shape
        if var_shape != input_shape:
            if input_shape[:-1] == var_shape and len(input_shape) > 0:
                var = var[..., np.newaxis]
            elif not (len(var_shape) == len(input_shape) and sum(
                    v for i, v in zip(input_shape, var_shape) if i != v) == 1):
                raise ValueError(f"var: shape {var_shape} is not input's {input_shape}, "
                                 f"input's without its last axis, or input's with one axis "
                                 f"of size 1")
        inputs["var"] = var
    call = _Pointwise(inputs, reduction)
    call.var_shape_given = None if var_is_number else var_shape  # None: no var gradient
    with np.errstate(invalid="ignore"):
        clamped = np.maximum(call.values["var"], eps)  # NaN stays NaN, as torch's clamp
    return call, clamped


def gaussian_nll(input, target, var, *, full=False, eps=1e-6, reduction="mean"):
    r"""Gaussian negative log-likelihood, as ``torch.nn.functional.gaussian_nll_loss``.

    Per element, ``v = max(var, eps)``::

        loss = 0.5 * (log(v) + (input - target)**2 / v)   (+ 0.5 * log(2 pi) if full)

    ``var`` has the input's shape, the input's without its last axis, or the input's with
    one axis of size 1 (torch's rules), or is a Python number; a negative entry is an
    error, as in torch.
    """
    call, v = _gaussian_call(input, target, var, full, eps, reduction)
    r = call.values["input"] - call.values["target"]
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        loss = 0.5 * (np.log(v) + r**2 / v)
        if full:
            loss = loss + 0.5 * math.log(2.0 * math.pi)
        return call.reduce(loss)


def gaussian_nll_grad(input, target, var, grad_output=1.0, *, full=False, eps=1e-6,
                      reduction="mean", wrt="input"):
    r"""Gradient of ``grad_output * gaussian_nll(...)`` w.r.t. ``input``, ``target`` and/or
    ``var``, with ``r = input - target`` and ``v = max(var, eps)``::

        d/dinput = r / v,   d/dtarget = -r / v,   d/dvar = 0.5 * (1 / v - r**2 / v**2)

    torch clamps a clone of var under ``no_grad``, so the var gradient is the formula's
    derivative at the clamped ``v``, passed through unchanged also where ``var < eps``.
    It is summed back to var's own shape (before torch's added trailing axis).
    """
    call, v = _gaussian_call(input, target, var, full, eps, reduction)
    r = call.values["input"] - call.values["target"]
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        slopes = {"input": r / v, "target": -r / v}
        if call.var_shape_given is not None:
            # (r / v)**2, not r**2 / v**2: v**2 underflows to 0 below v = 1e-154
            slopes["var"] = 0.5 * (1.0 / v - (r / v)**2)
    return _gaussian_var_shaped(call, wrt, call.grads(wrt, grad_output, slopes))


def _gaussian_var_shaped(call, wrt, grads):
    """The gradients with var's in its own shape: where var had the input's shape without
    its last axis, the axis torch added is dropped."""
    if call.var_shape_given is None or call.shapes["var"] == call.var_shape_given:
        return grads
    names = (wrt,) if isinstance(wrt, str) else tuple(wrt)
    fixed = [grad.reshape(call.var_shape_given) if name == "var" else grad
             for name, grad in zip(names, (grads,) if isinstance(wrt, str) else grads)]
    return fixed[0] if isinstance(wrt, str) else tuple(fixed)


def gaussian_nll_value_and_grad(input, target, var, grad_output=1.0, *, full=False, eps=1e-6,
                                reduction="mean", wrt="input"):
    """``(gaussian_nll(...), gaussian_nll_grad(...))``."""
    options = dict(full=full, eps=eps, reduction=reduction)
    return (gaussian_nll(input, target, var, **options),
            gaussian_nll_grad(input, target, var, grad_output, wrt=wrt, **options))


def _gaussian_nll_magnitudes(input, target, var, grad_output=1.0, *, full=False, eps=1e-6,
                             reduction="mean", wrt="input"):
    """The size of the terms of gaussian_nll's loss and gradients, which cancel where
    ``r**2 / v`` nears ``-log(v)`` (the loss, ``v < 1``) or ``1`` (the var gradient)::

        loss   0.5 (|log v| + r**2 / v)  (+ 0.5 log(2 pi) with full)
        d/dinput, d/dtarget  |r / v|,    d/dvar  0.5 (1 / v + (r / v)**2)

    ``(loss, grads)`` reduced and differentiated as the results are (docs/accuracy.rst,
    "Results whose terms cancel")."""
    call, v = _gaussian_call(input, target, var, full, eps, reduction)
    r = call.values["input"] - call.values["target"]
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        loss = 0.5 * (np.abs(np.log(v)) + r**2 / v)
        if full:
            loss = loss + 0.5 * math.log(2.0 * math.pi)
        slopes = {"input": np.abs(r / v), "target": np.abs(r / v)}
        if call.var_shape_given is not None:
            slopes["var"] = 0.5 * (1.0 / v + (r / v)**2)
    loss, grads = call.magnitudes(wrt, grad_output, loss, slopes)
    return loss, _gaussian_var_shaped(call, wrt, grads)


def _pinball_quantile(quantile, shape):
    """The quantile broadcast to the loss's shape: a number, or an array (typically one
    value per class of the last axis) that broadcasts to it; each in (0, 1)."""
    q = np.asarray(quantile)
    if q.dtype.kind not in "biuf":
        raise TypeError(f"quantile: expected real numbers, got dtype {q.dtype}")
    q = q.astype(np.float64)
    if not np.all((q > 0) & (q < 1)):
        raise ValueError("quantile: expected values in (0, 1), got "
                         f"{q if q.ndim == 0 else q[~((q > 0) & (q < 1))][:3]}")
    try:
        fits = np.broadcast_shapes(q.shape, shape) == shape
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"quantile: shape {q.shape} does not broadcast to {shape}")
    return np.broadcast_to(q, shape)


def pinball(pred, target, *, quantile=0.5, reduction="mean"):
    r"""Pinball (quantile) loss of Koenker & Bassett (1978).

    Per element, ``r = target - pred`` and ``q = quantile`` (a number in (0, 1), or one per
    class of the last axis)::

        loss = max(q * r, (q - 1) * r)
    """
    call = _Pointwise({"pred": pred, "target": target}, reduction)
    q = _pinball_quantile(quantile, call.shape)
    r = call.values["target"] - call.values["pred"]
    with np.errstate(invalid="ignore", over="ignore"):
        return call.reduce(np.maximum(q * r, (q - 1.0) * r))


def pinball_grad(pred, target, grad_output=1.0, *, quantile=0.5, reduction="mean",
                 wrt="pred"):
    r"""Gradient of ``grad_output * pinball(...)`` w.r.t. ``pred`` and/or ``target``.

    As torch's autograd of ``torch.maximum(q * r, (q - 1) * r)``, which splits the
    gradient evenly between equal arguments and passes it whole to both where they
    compare neither way (NaN)::

        d/dpred = -q (r > 0),  1 - q (r < 0),  0.5 - q (r == 0),  1 - 2 q (r NaN)
        d/dtarget = -d/dpred
    """
    call = _Pointwise({"pred": pred, "target": target}, reduction)
    q = _pinball_quantile(quantile, call.shape)
    r = call.values["target"] - call.values["pred"]
    with np.errstate(invalid="ignore"):
        slope_r = np.select([r > 0, r < 0, r == 0], [q, q - 1.0, q - 0.5], 2.0 * q - 1.0)
    return call.grads(wrt, grad_output, {"pred": -slope_r, "target": slope_r})


def pinball_value_and_grad(pred, target, grad_output=1.0, *, quantile=0.5, reduction="mean",
                           wrt="pred"):
    """``(pinball(...), pinball_grad(...))``."""
    options = dict(quantile=quantile, reduction=reduction)
    return (pinball(pred, target, **options),
            pinball_grad(pred, target, grad_output, wrt=wrt, **options))


def soft_margin(input, target, *, reduction="mean"):
    r"""Soft margin loss, as ``torch.nn.functional.soft_margin_loss``: per element, with
    ``z = target * input`` (labels of +-1)::

        loss = log(1 + exp(-z))

    evaluated as ``max(-z, 0) + log1p(exp(-|z|))``, so that no term overflows.
    """
    call = _Pointwise({"input": input, "target": target}, reduction)
    with np.errstate(invalid="ignore", over="ignore"):
        z = call.values["target"] * call.values["input"]
        return call.reduce(np.maximum(-z, 0.0) + np.log1p(np.exp(-np.abs(z))))


def soft_margin_grad(input, target, grad_output=1.0, *, reduction="mean", wrt="input"):
    r"""Gradient of ``grad_output * soft_margin(...)`` w.r.t. the input::

        d/dinput = -target * sigmoid(-target * input)

    (the target is not differentiated, as torch's).
    """
    call = _Pointwise({"input": input, "target": target}, reduction)
    y = call.values["target"]
    with np.errstate(invalid="ignore", over="ignore"):
        z = y * call.values["input"]
        e = np.exp(-np.abs(z))
        tail = np.where(z >= 0, e / (1.0 + e), 1.0 / (1.0 + e))
    return call.grads(wrt, grad_output, {"input": -y * tail})


def soft_margin_value_and_grad(input, target, grad_output=1.0, *, reduction="mean",
                               wrt="input"):
    """``(soft_margin(...), soft_margin_grad(...))``."""
    return (soft_margin(input, target, reduction=reduction),
            soft_margin_grad(input, target, grad_output, reduction=reduction, wrt=wrt))

# every public function of this module is a loss's entry point (fastloss.reference
# exports them): a function added here is exported without another line
__all__ = [_name for _name, _value in list(globals().items())
           if callable(_value) and not _name.startswith("_")
           and getattr(_value, "__module__", None) == __name__]
