"""Regression and binary losses, one term per element (the public NumPy API).

``mse``, ``l1``, ``huber``, ``smooth_l1`` and ``bce_with_logits``, each with its
``_grad`` and ``_value_and_grad`` twins. The kernels are in csrc/elementwise.c;
``fastloss.reference`` has the float64 oracle with the same semantics.

Shapes and dtypes follow torch: ``pred`` and ``target`` broadcast to one shape (torch
broadcasts them too, with a warning; ``bce_with_logits`` needs equal shapes, as torch),
"mean" divides by the number of elements of that shape (mse and l1 with a weight: by
the weight's sum, see :func:`mse`), and when broadcasting enlarged ``pred`` its gradient
is summed back to ``pred``'s shape, as autograd does. float32 and float64 combine to
float64; an integer or bool target takes ``pred``'s dtype. The loss has the combined
dtype and the gradient ``pred``'s dtype. ``weight`` (and ``pos_weight``) broadcast to
the loss's shape. ``wrt=`` asks the gradient functions for the gradients w.r.t.
``target`` (and ``weight``) too, with the shapes and dtypes of those arguments.
"""
import math

import numpy as np

from fastloss import _kernels
from fastloss._config import resolve_num_threads
from fastloss._validation import (
    broadcast_to_shape,
    float_array,
    grad_output_arg,
    out_arg,
    periodic_factor,
    real_array,
    real_scalar,
    reduction_arg,
)

__all__ = [
    "bce_with_logits", "bce_with_logits_grad", "bce_with_logits_value_and_grad",
    "huber", "huber_grad", "huber_value_and_grad",
    "l1", "l1_grad", "l1_value_and_grad",
    "mse", "mse_grad", "mse_value_and_grad",
    "smooth_l1", "smooth_l1_grad", "smooth_l1_value_and_grad",
]


def _flat(array, shape, dtype):
    """`array` broadcast to `shape` as a contiguous 1-d array of `dtype` (a view when it
    already is one)."""
    if array.shape != shape:
        array = np.broadcast_to(array, shape)
    # contiguous, aligned and native (ascontiguousarray alone keeps a misaligned array)
    return np.require(array, dtype=dtype, requirements="CA").reshape(-1)


def _address(array):
    return array.__array_interface__["data"][0]


def _sum_to_shape(grad, shape):
    """Sum `grad` over the axes that broadcasting added or stretched, down to `shape`
    (the gradient of a broadcast, as autograd computes it), in float64."""
    lead = grad.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + axis for axis, size in enumerate(shape) if size == 1 and grad.shape[lead + axis] != 1)
    return np.asarray(grad.sum(axis=axes, dtype=np.float64)).reshape(shape)


# Each float32 term comes out of the kernel within about 5e-7 of itself (bce's exp and
# log1p, the products with the weight), so their sum keeps the accuracy contract (2e-6)
# while terms of both signs cancel to no less than half their magnitude.  Terms are >= 0
# except under a negative weight or pos_weight, or a bce target outside [0, 1]; where such
# terms cancel further, the loss is computed again from the inputs in float64.
_CANCELLATION = 0.5


class _Problem:
    """Checked arguments of one call, in the layout the kernels read."""

    def __init__(self, loss, pred, target, weight, reduction, num_threads, *, threshold=0.0,
                 pos_weight=None):
        binary = loss == "bce_with_logits"
        self.pred_name = "logits" if binary else "pred"
        pred = float_array(pred, self.pred_name)
        target = real_array(target, "target")
        dtype = pred.dtype
        if target.dtype.kind == "f":
            dtype = np.promote_types(dtype, target.dtype)
            if dtype not in (np.float32, np.float64):
                raise TypeError(f"target: expected a float32, float64 or integer array, "
                                f"got dtype {target.dtype}")
        if binary:
            if target.shape != pred.shape:
                raise ValueError(f"target: expected the shape of logits {pred.shape}, "
                                 f"got {target.shape}")
            shape = pred.shape
        else:
            try:
                shape = np.broadcast_shapes(pred.shape, target.shape)
            except ValueError:
                raise ValueError(f"target: shape {target.shape} does not broadcast with "
                                 f"pred's shape {pred.shape}") from None
        self.loss = loss
        self.reduction = reduction_arg(reduction)
        self.threshold = threshold
        self.num_threads = resolve_num_threads(num_threads)
        self.pred_shape = pred.shape
        self.pred_dtype = pred.dtype
        self.target_shape = target.shape
        self.target_dtype = target.dtype
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.pred = _flat(pred, shape, dtype)
        self.target = _flat(target, shape, dtype)
        self.weight = self.pos_weight = self.weight_array = None
        # mse and l1 with a weight take torch's weighted mean, sum(w * l) / sum(w), with
        # the weight as paired with pred: a target that enlarges the loss's shape
        # repeats each of those weights n / (their count) times (elementwise.h)
        self.weight_sum_repeats = 1
        if weight is not None:
            weight = broadcast_to_shape(real_array(weight, "weight"), shape, "weight",
                                        "the loss's shape")
            self.weight_array = weight
            self.weight = periodic_factor(weight, shape, dtype)
            paired = math.prod(np.broadcast_shapes(weight.shape, pred.shape))
            if loss in ("mse", "l1") and paired:
                self.weight_sum_repeats = math.prod(shape) // paired
        if pos_weight is not None:
            pos_weight = real_array(pos_weight, "pos_weight")
            try:
                broadcast_to_shape(pos_weight, shape, "pos_weight", "the logits' shape")
            except ValueError as error:
                expected = (f"one value per class of the last axis, shape ({shape[-1]},)"
                            if shape else "a 0-d pos_weight for 0-d logits, as torch")
                raise ValueError(f"{error} (expected {expected})") from None
            self.pos_weight = periodic_factor(pos_weight, shape, dtype)

    def _wrt(self, wrt, out):
        """The gradients asked for: (names, single, the out= buffer of each or None)."""
        single = isinstance(wrt, str)
        if not single and not isinstance(wrt, (tuple, list)):
            raise TypeError(f"wrt: expected an argument's name or a tuple of names, "
                            f"got {wrt!r}")
        names = (wrt,) if single else tuple(wrt)
        allowed = (self.pred_name, "target") + (
            () if self.loss == "bce_with_logits" else ("weight",))
        for name in names:
            if name in ("weight", "pos_weight") and self.loss == "bce_with_logits":
                raise ValueError(f"wrt: {name}: torch's binary_cross_entropy_with_logits is "
                                 f"not differentiable with respect to {name}, nor is this")
            if not isinstance(name, str) or name not in allowed:
                raise ValueError(f"wrt: expected names from {allowed}, got {name!r}")
        if not names or len(set(names)) != len(names):
            raise ValueError(f"wrt: expected distinct names from {allowed}, got {wrt!r}")
        if "target" in names and self.target_dtype.kind != "f":
            raise TypeError(f"wrt: target: a {self.target_dtype} target has no gradient "
                            f"(a float target has)")
        if "weight" in names:
            if self.weight_array is None:
                raise ValueError("wrt: weight: no weight was given")
            if self.weight_array.dtype.kind != "f":
                raise TypeError(f"wrt: weight: a {self.weight_array.dtype} weight has no "
                                f"gradient (a float weight has)")
        if single:
            outs = (out,)
        elif out is None:
            outs = (None,) * len(names)
        elif isinstance(out, tuple) and len(out) == len(names):
            outs = out
        else:
            raise TypeError(f"out: expected a tuple of {len(names)} arrays (one per name in "
                            f"wrt), or None, got {type(out).__name__}")
        return names, single, dict(zip(names, outs))

    def run(self, mode, *, grad_output=None, out=None, wrt=None):
        """Call the kernel; returns (loss, grad) with the loss shaped for the reduction
        and grad the gradient w.r.t. the argument named by ``wrt`` (default: pred), or a
        tuple of them when ``wrt`` is a tuple of names."""
        per_element = (np.empty(self.pred.size, dtype=self.dtype)
                       if self.reduction == "none" and mode != "backward" else None)
        if mode == "forward" or wrt is None or wrt == self.pred_name:  # the common call
            names, single, outs = (self.pred_name,), True, {self.pred_name: out}
        else:
            names, single, outs = self._wrt(wrt, out)
        grad = grad_flat = target_flat = upstream = None
        if mode != "forward":
            upstream = grad_output_arg(grad_output, self.reduction, self.shape)
            if self.pred_name in names:
                grad_flat, grad = self._grad_buffer(outs[self.pred_name], upstream)
            if "target" in names:
                target_out = outs["target"]
                if target_out is not None:
                    out_arg(target_out, self.target_shape, self.target_dtype, "out (target)")
                target_flat = np.empty(self.pred.size, dtype=self.dtype)
            if "weight" in names and outs["weight"] is not None:
                out_arg(outs["weight"], self.weight_array.shape, self.weight_array.dtype,
                        "out (weight)")
        # the weight's gradient reads pred and target: before a gradient overwrites them
        weight_full = self._weight_grad(upstream) if upstream is not None and \
            "weight" in names else None
        kernel_mode = mode
        if mode != "forward" and grad_flat is None and target_flat is None:
            kernel_mode = "forward" if mode == "value_and_grad" else None  # the weight's alone
        reduced = mode != "backward" and per_element is None
        total = 0.0
        if kernel_mode is None:
            pass
        elif (reduced and grad_flat is not None and self.dtype == np.float32
                and any(_address(grad_flat) == _address(data) and grad_flat.size
                        for data in (self.pred, self.target))
                and self._terms_may_be_negative()):
            # in place, the inputs are gone once the gradient is written: the loss first
            total = self._reduced_loss(*self._kernel("forward", None, None, None))
            self._kernel("backward", upstream, None, grad_flat, target_flat)
        else:
            total, magnitude = self._kernel(kernel_mode, upstream, per_element, grad_flat,
                                            target_flat)
            if reduced:
                total = self._reduced_loss(total, magnitude)
        if per_element is None:  # a Python float holding a value of the loss's dtype
            loss = float(self.dtype.type(total))
        else:
            loss = per_element.reshape(self.shape)
        if mode == "forward":
            return loss, None
        grads = []
        for name in names:
            if name == self.pred_name:
                grads.append(grad if grad is not None
                             else self._finish_grad(grad_flat, outs[self.pred_name]))
            elif name == "target":
                grads.append(self._finish(target_flat.reshape(self.shape), self.target_shape,
                                          self.target_dtype, outs["target"]))
            else:
                grads.append(self._finish(weight_full, self.weight_array.shape,
                                          self.weight_array.dtype, outs["weight"]))
        return loss, (grads[0] if single else tuple(grads))

    def _kernel(self, mode, upstream, per_element, grad_flat, grad_target=None, inputs=None,
                reduction=None):
        pred, target, weight, pos_weight = inputs or (self.pred, self.target, self.weight,
                                                      self.pos_weight)
        extra = {}  # keywords only when needed: they cost the common call a dict
        if grad_target is not None:
            extra["grad_target"] = grad_target
        if self.weight_sum_repeats != 1:
            extra["weight_sum_repeats"] = self.weight_sum_repeats
        return _kernels.ew_run(mode, self.loss, pred, target, weight, pos_weight, upstream,
                               per_element, grad_flat, self.threshold,
                               reduction or self.reduction, self.num_threads, **extra)

    def _weight_grad(self, upstream):
        """The gradient w.r.t. the weight over the loss's shape (float64), from the
        unweighted loss per element l: ``l * grad_output`` (/ n for the mean), or through
        torch's weighted mean L = S / W of mse and l1 (S = sum w l, W = the sum of the
        weight as paired with pred, each of whose values stands for R = weight_sum_repeats
        elements), per element ``grad_output * (l W - S / R) / W**2``: summed over a
        weight's elements that is dL/dw = (sum of its l) / W - (its count in W) S / W**2,
        and exactly 0 where one weight covers everything (the loss does not depend on it).
        The unweighted loss is computed in float64 whatever the inputs' dtype: through the
        weighted mean its terms cancel in proportion to how little the loss depends on
        the weights, which a float32 l would not survive."""
        unweighted = np.empty(self.pred.size, dtype=np.float64)
        wide = [array.astype(np.float64, copy=False) for array in (self.pred, self.target)]
        _kernels.ew_run("forward", self.loss, wide[0], wide[1], None, None, None, unweighted,
                        None, self.threshold, "none", self.num_threads)
        loss = unweighted.reshape(self.shape)
        if self.reduction == "none":
            # grad_output_arg gives one value per element, or one for all of them
            return loss * (upstream.reshape(self.shape) if upstream.size == loss.size
                           else upstream[0])
        scale = float(upstream[0])
        if self.reduction == "sum":
            return loss * scale
        if self.loss in ("mse", "l1"):
            weight = self.weight_array.astype(np.float64)
            paired = np.broadcast_to(weight, np.broadcast_shapes(weight.shape, self.pred_shape))
            weight_sum = np.sum(paired)
            weighted_sum = np.sum(loss * weight)
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                return scale * (loss * weight_sum - weighted_sum / self.weight_sum_repeats) \
                    / weight_sum**2
        with np.errstate(invalid="ignore", divide="ignore"):
            return loss * (scale / np.float64(loss.size))

    @staticmethod
    def _finish(full, shape, dtype, out):
        """A gradient over the loss's shape summed to an argument's ``shape`` and cast to
        its ``dtype``, or written into ``out``."""
        full = np.asarray(full)  # 0-d arithmetic gives NumPy scalars
        grad = _sum_to_shape(full, shape) if full.shape != shape else full
        if out is None:
            return grad.astype(dtype, copy=False)
        np.copyto(out, grad, casting="unsafe")
        return out

    def _terms_may_be_negative(self):
        factors = [f for f in (self.weight, self.pos_weight) if f is not None]
        if any(np.any(f < 0) for f in factors):
            return True
        return self.loss == "bce_with_logits" and bool(
            self.target.size and (self.target.min() < 0 or self.target.max() > 1))

    def _reduced_loss(self, total, magnitude):
        """The kernel's sum or mean, or, where float32 terms cancelled (_CANCELLATION),
        the same from the inputs in float64."""
        if self.dtype == np.float32 and abs(total) < _CANCELLATION * magnitude:
            wide = tuple(None if a is None else a.astype(np.float64)
                         for a in (self.pred, self.target, self.weight, self.pos_weight))
            total, _ = self._kernel("forward", None, None, None, inputs=wide)
        return total

    def _grad_buffer(self, out, upstream):
        """(1-d buffer the kernel writes, the gradient to return), or (buffer, None) when
        the buffer still needs summing over broadcast axes, casting or copying."""
        direct = self.shape == self.pred_shape and self.dtype == self.pred_dtype
        if out is None:
            if not direct:
                return np.empty(self.pred.size, dtype=self.dtype), None
            grad = np.empty(self.shape, dtype=self.dtype)
            return grad.reshape(-1), grad
        out_arg(out, self.pred_shape, self.pred_dtype)
        if direct and out.flags.c_contiguous:
            flat = out.reshape(-1)
            # The kernel reads a tile of pred and target before it writes that tile's
            # gradient: the gradient may be one of them exactly, never overlap otherwise.
            safe = not flat.size or all(
                _address(flat) == _address(data) or not np.may_share_memory(flat, data)
                for data in (self.pred, self.target))
            safe = safe and not any(np.may_share_memory(flat, data) for data in
                                    (self.weight, self.pos_weight, upstream)
                                    if data is not None)
            if safe:
                return flat, out
        # out= has a layout the kernel cannot write, or the gradient needs a sum over
        # broadcast axes or a cast, or out overlaps an input other than exactly in place:
        # compute into a fresh buffer, then finish into out.
        return np.empty(self.pred.size, dtype=self.dtype), None

    def _finish_grad(self, grad_flat, out):
        grad = grad_flat.reshape(self.shape)
        if self.shape != self.pred_shape:
            grad = _sum_to_shape(grad, self.pred_shape)
        if out is None:
            return grad.astype(self.pred_dtype, copy=False)
        np.copyto(out, grad, casting="unsafe")
        return out


def _threshold(value, name, *, positive):
    """huber's delta (> 0, as torch requires) or smooth_l1's beta (>= 0)."""
    return real_scalar(value, name, low=0.0, low_open=positive)


# ----------------------------------------------------------------------------------------
# mse
# ----------------------------------------------------------------------------------------

def mse(pred, target, *, weight=None, reduction="mean", num_threads=None):
    """Mean squared error, as torch.nn.functional.mse_loss: per element
    ``weight * (pred - target)**2``.

    Parameters
    ----------
    pred : array_like, float32 or float64
    target : array_like, float or integer; broadcasts with ``pred``
    weight : array_like, optional
        Per-element factor that broadcasts to the loss's shape.
    reduction : {"mean", "sum", "none"}
        "mean" divides the sum by the number of elements; with a weight, by the sum of
        the weight as paired with pred (broadcast with pred's shape, not repeated by a
        larger target): a weighted mean, as torch's mse_loss and l1_loss do.
    num_threads : int, optional
        Threads for this call (default: fastloss.get_num_threads()).

    Returns
    -------
    float or ndarray
        A float for "mean"/"sum" (nan for the mean of no elements); for "none" an array
        of the broadcast shape. Its dtype is float64 if pred or target is, else float32.
    """
    problem = _Problem("mse", pred, target, weight, reduction, num_threads)
    return problem.run("forward")[0]


def mse_grad(pred, target, grad_output=1.0, *, weight=None, reduction="mean", out=None,
             wrt="pred", num_threads=None):
    """Gradient of ``grad_output * mse(pred, target, ...)`` w.r.t. pred:
    ``2 (pred - target) * weight * grad_output`` (/ the mean's denominator).

    grad_output is a scalar for "mean"/"sum" and an array of the loss's shape (or a
    scalar) for "none". The gradient has pred's shape and dtype; ``out`` receives it
    (``out=pred`` overwrites pred in place). Returns the gradient (``out`` if given).

    ``wrt`` names the argument to differentiate: "pred", "target" (minus pred's slope;
    a float target only) or "weight" (the unweighted loss, through the weighted mean for
    "mean", as torch's autograd), or a tuple of names for a tuple of gradients in that
    order (``out`` then a tuple too, or None). Each gradient has its argument's shape
    (summed over the axes broadcasting added or stretched) and dtype.
    """
    problem = _Problem("mse", pred, target, weight, reduction, num_threads)
    return problem.run("backward", grad_output=grad_output, out=out, wrt=wrt)[1]


def mse_value_and_grad(pred, target, grad_output=1.0, *, weight=None, reduction="mean",
                       out=None, wrt="pred", num_threads=None):
    """``(mse(...), mse_grad(...))`` from one pass over pred and target."""
    problem = _Problem("mse", pred, target, weight, reduction, num_threads)
    return problem.run("value_and_grad", grad_output=grad_output, out=out, wrt=wrt)


# ----------------------------------------------------------------------------------------
# l1
# ----------------------------------------------------------------------------------------

def l1(pred, target, *, weight=None, reduction="mean", num_threads=None):
    """Mean absolute error, as torch.nn.functional.l1_loss: per element
    ``weight * |pred - target|``.

    Arguments and result as in :func:`mse`.
    """
    problem = _Problem("l1", pred, target, weight, reduction, num_threads)
    return problem.run("forward")[0]


def l1_grad(pred, target, grad_output=1.0, *, weight=None, reduction="mean", out=None,
            wrt="pred", num_threads=None):
    """Gradient of ``grad_output * l1(pred, target, ...)`` w.r.t. pred:
    ``sign(pred - target) * weight * grad_output`` (/ the mean's denominator), with
    sign(0) = 0 (and 0 where the difference is NaN), as torch. Arguments (``wrt``
    included) as in :func:`mse_grad`.
    """
    problem = _Problem("l1", pred, target, weight, reduction, num_threads)
    return problem.run("backward", grad_output=grad_output, out=out, wrt=wrt)[1]


def l1_value_and_grad(pred, target, grad_output=1.0, *, weight=None, reduction="mean",
                      out=None, wrt="pred", num_threads=None):
    """``(l1(...), l1_grad(...))`` from one pass over pred and target."""
    problem = _Problem("l1", pred, target, weight, reduction, num_threads)
    return problem.run("value_and_grad", grad_output=grad_output, out=out, wrt=wrt)


# ----------------------------------------------------------------------------------------
# huber
# ----------------------------------------------------------------------------------------

def huber(pred, target, *, delta=1.0, weight=None, reduction="mean", num_threads=None):
    """Huber loss, as torch.nn.functional.huber_loss: per element, r = pred - target,
    ``weight * (0.5 r**2 if |r| < delta else delta (|r| - 0.5 delta))``.

    ``delta`` must be > 0 (as torch). At ``|r| == delta`` both pieces equal
    ``0.5 delta**2``. Other arguments and the result as in :func:`mse`.
    """
    delta = _threshold(delta, "delta", positive=True)
    problem = _Problem("huber", pred, target, weight, reduction, num_threads, threshold=delta)
    return problem.run("forward")[0]


def huber_grad(pred, target, grad_output=1.0, *, delta=1.0, weight=None, reduction="mean",
               out=None, wrt="pred", num_threads=None):
    """Gradient of ``grad_output * huber(pred, target, ...)`` w.r.t. pred:
    ``clip(pred - target, -delta, delta) * weight * grad_output`` (/ N for the mean).
    Arguments (``wrt`` included) as in :func:`mse_grad`; the weighted mean divides by N,
    as torch's huber_loss.
    """
    delta = _threshold(delta, "delta", positive=True)
    problem = _Problem("huber", pred, target, weight, reduction, num_threads, threshold=delta)
    return problem.run("backward", grad_output=grad_output, out=out, wrt=wrt)[1]


def huber_value_and_grad(pred, target, grad_output=1.0, *, delta=1.0, weight=None,
                         reduction="mean", out=None, wrt="pred", num_threads=None):
    """``(huber(...), huber_grad(...))`` from one pass over pred and target."""
    delta = _threshold(delta, "delta", positive=True)
    problem = _Problem("huber", pred, target, weight, reduction, num_threads, threshold=delta)
    return problem.run("value_and_grad", grad_output=grad_output, out=out, wrt=wrt)


# ----------------------------------------------------------------------------------------
# smooth_l1
# ----------------------------------------------------------------------------------------

def smooth_l1(pred, target, *, beta=1.0, weight=None, reduction="mean", num_threads=None):
    """Smooth L1 loss, as torch.nn.functional.smooth_l1_loss: per element, r = pred - target,
    ``weight * (0.5 r**2 / beta if |r| < beta else |r| - 0.5 beta)``.

    ``beta`` must be >= 0; ``beta == 0`` is exactly :func:`l1` (as torch). Other
    arguments and the result as in :func:`mse`.
    """
    beta = _threshold(beta, "beta", positive=False)
    problem = _Problem("smooth_l1", pred, target, weight, reduction, num_threads,
                       threshold=beta)
    return problem.run("forward")[0]


def smooth_l1_grad(pred, target, grad_output=1.0, *, beta=1.0, weight=None, reduction="mean",
                   out=None, wrt="pred", num_threads=None):
    """Gradient of ``grad_output * smooth_l1(pred, target, ...)`` w.r.t. pred:
    ``clip((pred - target) / beta, -1, 1) * weight * grad_output`` (/ N for the mean);
    for ``beta == 0`` the l1 gradient. Arguments (``wrt`` included) as in
    :func:`mse_grad`.
    """
    beta = _threshold(beta, "beta", positive=False)
    problem = _Problem("smooth_l1", pred, target, weight, reduction, num_threads,
                       threshold=beta)
    return problem.run("backward", grad_output=grad_output, out=out, wrt=wrt)[1]


def smooth_l1_value_and_grad(pred, target, grad_output=1.0, *, beta=1.0, weight=None,
                             reduction="mean", out=None, wrt="pred", num_threads=None):
    """``(smooth_l1(...), smooth_l1_grad(...))`` from one pass over pred and target."""
    beta = _threshold(beta, "beta", positive=False)
    problem = _Problem("smooth_l1", pred, target, weight, reduction, num_threads,
                       threshold=beta)
    return problem.run("value_and_grad", grad_output=grad_output, out=out, wrt=wrt)


# ----------------------------------------------------------------------------------------
# bce_with_logits
# ----------------------------------------------------------------------------------------

def bce_with_logits(logits, target, *, weight=None, pos_weight=None, reduction="mean",
                    num_threads=None):
    """Binary cross-entropy on logits, as torch.nn.functional.binary_cross_entropy_with_logits:
    per element, x = logits, y = target, p = pos_weight::

        weight * ((1 - y) x + (1 + (p - 1) y) softplus(-x)),
        softplus(-x) = max(-x, 0) + log1p(exp(-|x|)),

    i.e. ``-weight * (p y log sigmoid(x) + (1 - y) log(1 - sigmoid(x)))``, evaluated so
    that it is exact for logits of any size (no overflow, no cancellation for y in
    [0, 1]). At an infinite logit the loss is inf or NaN as in torch.

    Parameters
    ----------
    logits : array_like, float32 or float64
    target : array_like of logits' shape, float or integer (labels in [0, 1])
    weight : array_like, optional
        Per-element factor that broadcasts to the logits' shape.
    pos_weight : array_like, optional
        Weight of the positive term per class of the last axis: shape (C,), or
        anything else that broadcasts to the logits' shape (0-d for 0-d logits).
    reduction, num_threads
        As in :func:`mse`.
    """
    problem = _Problem("bce_with_logits", logits, target, weight, reduction, num_threads,
                       pos_weight=pos_weight)
    return problem.run("forward")[0]


def bce_with_logits_grad(logits, target, grad_output=1.0, *, weight=None, pos_weight=None,
                         reduction="mean", out=None, wrt="logits", num_threads=None):
    """Gradient of ``grad_output * bce_with_logits(logits, target, ...)`` w.r.t. the
    logits: ``((1 + (p - 1) y) sigmoid(x) - p y) * weight * grad_output`` (/ N for the
    mean); sigmoid is taken per sign of x, so it never overflows. Arguments as in
    :func:`mse_grad` (``out=logits`` overwrites the logits in place).

    ``wrt="target"`` (or ``("logits", "target")``): the gradient w.r.t. a float target,
    ``(-x + (p - 1) softplus(-x)) * weight * grad_output``, torch's
    ``log_sigmoid(-x) - p log_sigmoid(x)``, from the same pass. torch does not
    differentiate ``weight`` or ``pos_weight``; asking for them is a ValueError.
    """
    problem = _Problem("bce_with_logits", logits, target, weight, reduction, num_threads,
                       pos_weight=pos_weight)
    return problem.run("backward", grad_output=grad_output, out=out, wrt=wrt)[1]


def bce_with_logits_value_and_grad(logits, target, grad_output=1.0, *, weight=None,
                                   pos_weight=None, reduction="mean", out=None, wrt="logits",
                                   num_threads=None):
    """``(bce_with_logits(...), bce_with_logits_grad(...))`` from one pass over the
    logits and target."""
    problem = _Problem("bce_with_logits", logits, target, weight, reduction, num_threads,
                       pos_weight=pos_weight)
    return problem.run("value_and_grad", grad_output=grad_output, out=out, wrt=wrt)
