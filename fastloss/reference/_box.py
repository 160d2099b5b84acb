"""Bounding-box regression losses (torchvision's generalized, distance and complete IoU
losses), one loss per pair of boxes, in float64 (see fastloss.reference).

Boxes are ``(..., 4)`` arrays of ``(x1, y1, x2, y2)``; ``boxes1`` and ``boxes2`` broadcast
against each other over their leading axes, as torch broadcasts the coordinates that
torchvision's formulas unbind. For box 1 ``(x1, y1, x2, y2)`` and box 2 ``(u1, v1, u2,
v2)`` (torchvision.ops.giou_loss / diou_loss / ciou_loss and _loss_inter_union)::

    inter = (min(x2, u2) - max(x1, u1)) * (min(y2, v2) - max(y1, v1))
            where both factors are > 0, else 0
    union = (x2 - x1) (y2 - y1) + (u2 - u1) (v2 - v1) - inter
    iou   = inter / (union + eps)
    cw    = max(x2, u2) - min(x1, u1),   ch = max(y2, v2) - min(y1, v1)
    giou_loss = 1 - (iou - (cw ch - union) / (cw ch + eps))
    diou_loss = 1 - iou + ((cx1 - cx2)**2 + (cy1 - cy2)**2) / (cw**2 + ch**2 + eps)
                with (cx, cy) each box's centre
    ciou_loss = diou_loss + alpha v,
                v = 4 / pi**2 (atan((u2 - u1) / (v2 - v1)) - atan((x2 - x1) / (y2 - y1)))**2,
                alpha = v / (1 - iou + v + eps), a constant for the gradient (no_grad)

ciou's union and diagonal use eps = 1e-7 whatever ``eps`` is (torchvision's
complete_box_iou_loss does not pass its eps to _diou_iou_loss); its ``eps`` reaches alpha
only. Boxes with x2 < x1 or y2 < y1 are not refused (torchvision's losses do not refuse
them): the formulas run as written. "mean" divides by the number of pairs, and the mean
of no pairs is 0.0 (torchvision: ``0.0 * loss.sum()``).

The gradients are torch's autograd through those formulas, written out: maximum and
minimum pass the upstream gradient to the larger (smaller) argument, half to each at a
tie and all of it to both where one is NaN; pairs outside the intersection mask get no
gradient through the intersection. Each gradient is summed over the axes broadcasting
added or stretched, back to its argument's shape.
"""

import math
import numbers

import numpy as np

from fastloss.reference._common import _REDUCTIONS, _sum_to

_NAMES = ("boxes1", "boxes2")
_TORCHVISION_EPS = 1e-7


def _coordinates(boxes, name):
    boxes = np.asarray(boxes)
    if boxes.dtype.kind != "f":
        raise TypeError(f"{name}: expected a float array, got dtype {boxes.dtype}")
    if boxes.ndim < 1 or boxes.shape[-1] != 4:
        raise ValueError(f"{name}: expected shape (..., 4), got {boxes.shape}")
    return boxes.astype(np.float64)


def _max_backward(a, b, upstream):
    """torch.maximum's backward: (to a, to b)."""
    share = np.where(a == b, upstream / 2, upstream)
    return np.where(a < b, 0.0, share), np.where(a > b, 0.0, share)


def _min_backward(a, b, upstream):
    """torch.minimum's backward: (to a, to b)."""
    share = np.where(a == b, upstream / 2, upstream)
    return np.where(a > b, 0.0, share), np.where(a < b, 0.0, share)


def _atan_slopes(w, h):
    """The slopes of atan(w / h): h / (w**2 + h**2) and -w / (w**2 + h**2), both scaled by
    the larger of |w| and |h| so that no square overflows or underflows (autograd's chain
    through w / h gives NaN for boxes flatter than 1.3e154 to 1); NaN at h = 0, as
    autograd's (w / h is not defined there). An infinite side takes autograd's chain
    through q = w / h itself, where the scaling would divide inf by inf: slopes of 0 for an
    infinite h, NaN for an infinite w (0 times inf)."""
    scale = np.maximum(np.abs(w), np.abs(h))
    with np.errstate(all="ignore"):
        a, b = w / scale, h / scale
        norm = scale * (a * a + b * b)
        defined = np.where(h == 0, np.nan, 1.0)
        q = w / h
        chain = 1.0 + q * q
        infinite = np.isinf(scale)
        return (np.where(infinite, (1.0 / h) / chain, defined * b / norm),
                np.where(infinite, (-w / (h * h)) / chain, -defined * a / norm))


def _box_loss(kind, boxes1, boxes2, eps, reduction, grad_output=None, wrt=()):
    """(loss reduced, {name: gradient}) of loss ``kind`` ("giou", "diou", "ciou")."""
    b1 = _coordinates(boxes1, "boxes1")
    b2 = _coordinates(boxes2, "boxes2")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: expected one of {_REDUCTIONS}, got {reduction!r}")
    number = math.nan
    if (isinstance(eps, numbers.Real) and not isinstance(eps, (bool, np.bool_))) or (
            isinstance(eps, np.ndarray) and eps.ndim == 0 and eps.dtype.kind in "fiu"):
        try:
            number = float(eps)  # NumPy's scalars and 0-d arrays too
        except OverflowError:  # an integer no float64 holds
            number = math.inf
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"eps: expected a finite value > 0, got {eps!r:.40}")
    eps = number
    shape = np.broadcast_shapes(b1.shape[:-1], b2.shape[:-1])
    x1, y1, x2, y2 = (np.broadcast_to(b1[..., i], shape) for i in range(4))
    u1, v1, u2, v2 = (np.broadcast_to(b2[..., i], shape) for i in range(4))
    eps_iou = _TORCHVISION_EPS if kind == "ciou" else eps
    errors = np.errstate(divide="ignore", invalid="ignore", over="ignore")
    errors.__enter__()
    try:
        # intersection and union
        w1, h1, w2, h2 = x2 - x1, y2 - y1, u2 - u1, v2 - v1
        ix1, iy1 = np.maximum(x1, u1), np.maximum(y1, v1)
        ix2, iy2 = np.minimum(x2, u2), np.minimum(y2, v2)
        iw, ih = ix2 - ix1, iy2 - iy1
        mask = (iy2 > iy1) & (ix2 > ix1)
        inter = np.where(mask, iw * ih, 0.0)
        union = w1 * h1 + w2 * h2 - inter
        iou = inter / (union + eps_iou)
        # the smallest enclosing box
        cw = np.maximum(x2, u2) - np.minimum(x1, u1)
        ch = np.maximum(y2, v2) - np.minimum(y1, v1)
        if kind == "giou":
            area_c = cw * ch
            penalty = (area_c - union) / (area_c + eps)
            loss = 1 - (iou - penalty)
        else:
            diagonal = cw**2 + ch**2 + eps_iou
            dx = (x2 + x1) / 2 - (u1 + u2) / 2
            dy = (y2 + y1) / 2 - (v1 + v2) / 2
            ratio = (dx**2 + dy**2) / diagonal
            loss = 1 - iou + ratio
            if kind == "ciou":
                q1, q2 = w1 / h1, w2 / h2
                angle = np.arctan(q2) - np.arctan(q1)
                v = (4 / math.pi**2) * angle**2
                alpha = v / (1 - iou + v + eps)
                loss = loss + alpha * v
        loss = np.asarray(loss, dtype=np.float64)
        if reduction == "none":
            reduced = loss
        elif reduction == "sum":
            reduced = float(np.sum(loss))
        else:
            reduced = float(np.mean(loss)) if loss.size else 0.0
        if not wrt:
            return reduced, {}

        # the upstream gradient of every pair's loss
        upstream = np.asarray(grad_output, dtype=np.float64)
        if reduction == "none":
            upstream = np.broadcast_to(upstream, shape)
        else:
            if upstream.ndim:
                raise ValueError(f"grad_output: expected a scalar for reduction "
                                 f"{reduction!r}, got shape {upstream.shape}")
            scale = upstream / loss.size if reduction == "mean" and loss.size else upstream
            upstream = np.broadcast_to(scale, shape)
        zero = np.zeros(shape)
        g_dx = g_dy = g_w1 = g_h1 = g_w2 = g_h2 = g_union = zero
        g_iou = -upstream
        if kind == "giou":
            g_gap = upstream / (area_c + eps)
            g_area_c = g_gap - upstream * (penalty / (area_c + eps))
            g_union = -g_gap
            g_cw, g_ch = g_area_c * ch, g_area_c * cw
        else:
            g_diagonal = -upstream * (ratio / diagonal)
            g_cw, g_ch = g_diagonal * 2 * cw, g_diagonal * 2 * ch
            g_dx = upstream / diagonal * 2 * dx
            g_dy = upstream / diagonal * 2 * dy
            if kind == "ciou":
                g_angle = upstream * alpha * (4 / math.pi**2) * 2 * angle
                slope_w1, slope_h1 = _atan_slopes(w1, h1)
                slope_w2, slope_h2 = _atan_slopes(w2, h2)
                g_w1, g_h1 = -g_angle * slope_w1, -g_angle * slope_h1
                g_w2, g_h2 = g_angle * slope_w2, g_angle * slope_h2
        g_union = g_union - g_iou * iou / (union + eps_iou)
        g_inter = g_iou / (union + eps_iou) - g_union
        g_iw = np.where(mask, g_inter * ih, 0.0)
        g_ih = np.where(mask, g_inter * iw, 0.0)
        g_w1, g_h1 = g_w1 + g_union * h1, g_h1 + g_union * w1
        g_w2, g_h2 = g_w2 + g_union * h2, g_h2 + g_union * w2
        grad1 = [-g_w1 + g_dx / 2, -g_h1 + g_dy / 2, g_w1 + g_dx / 2, g_h1 + g_dy / 2]
        grad2 = [-g_w2 - g_dx / 2, -g_h2 - g_dy / 2, g_w2 - g_dx / 2, g_h2 - g_dy / 2]
        corners = ((0, x1, u1, _max_backward, -g_iw), (1, y1, v1, _max_backward, -g_ih),
                   (2, x2, u2, _min_backward, g_iw), (3, y2, v2, _min_backward, g_ih),
                   (0, x1, u1, _min_backward, -g_cw), (1, y1, v1, _min_backward, -g_ch),
                   (2, x2, u2, _max_backward, g_cw), (3, y2, v2, _max_backward, g_ch))
        for index, a, b, backward, up in corners:
            to_a, to_b = backward(a, b, up)
            grad1[index] = grad1[index] + to_a
            grad2[index] = grad2[index] + to_b
    finally:
        errors.__exit__(None, None, None)
    grads = {}
    for name, parts, own in (("boxes1", grad1, b1), ("boxes2", grad2, b2)):
        if name in wrt:
            full = np.stack([np.broadcast_to(part, shape) for part in parts], axis=-1)
            grads[name] = _sum_to(full, own.shape)
    return reduced, grads


def _wrt_names(wrt):
    names = (wrt,) if isinstance(wrt, str) else tuple(wrt)
    if not names or any(name not in _NAMES for name in names) or len(set(names)) != len(names):
        raise ValueError(f"wrt: expected a name or distinct names from {_NAMES}, got {wrt!r}")
    return names


def _make(kind, torchvision_name):
    def loss(boxes1, boxes2, *, eps=1e-7, reduction="mean"):
        return _box_loss(kind, boxes1, boxes2, eps, reduction)[0]

    def value_and_grad(boxes1, boxes2, grad_output=1.0, *, eps=1e-7, reduction="mean",
                       wrt="boxes1"):
        names = _wrt_names(wrt)
        value, grads = _box_loss(kind, boxes1, boxes2, eps, reduction, grad_output, names)
        result = tuple(grads[name] for name in names)
        return value, (result[0] if isinstance(wrt, str) else result)

    def grad(boxes1, boxes2, grad_output=1.0, *, eps=1e-7, reduction="mean", wrt="boxes1"):
        return value_and_grad(boxes1, boxes2, grad_output, eps=eps, reduction=reduction,
                              wrt=wrt)[1]

    loss.__name__ = loss.__qualname__ = f"{kind}_loss"
    grad.__name__ = grad.__qualname__ = f"{kind}_loss_grad"
    value_and_grad.__name__ = value_and_grad.__qualname__ = f"{kind}_loss_value_and_grad"
    loss.__doc__ = (f"torchvision.ops.{torchvision_name} in float64 (formula in the module "
                    f"docstring); a float for mean/sum, an array of the broadcast leading "
                    f"shape for none.")
    grad.__doc__ = (f"Gradient of ``grad_output * {kind}_loss(...)`` w.r.t. ``wrt`` "
                    f"(\"boxes1\", \"boxes2\" or a tuple of them: a tuple of gradients), "
                    f"each of its argument's shape; torch's autograd of the formula.")
    value_and_grad.__doc__ = f"``({kind}_loss(...), {kind}_loss_grad(...))``."
    for function in (loss, grad, value_and_grad):
        function.__module__ = __name__
    return loss, grad, value_and_grad


giou_loss, giou_loss_grad, giou_loss_value_and_grad = _make("giou", "generalized_box_iou_loss")
diou_loss, diou_loss_grad, diou_loss_value_and_grad = _make("diou", "distance_box_iou_loss")
ciou_loss, ciou_loss_grad, ciou_loss_value_and_grad = _make("ciou", "complete_box_iou_loss")

__all__ = ["giou_loss", "giou_loss_grad", "giou_loss_value_and_grad",
           "diou_loss", "diou_loss_grad", "diou_loss_value_and_grad",
           "ciou_loss", "ciou_loss_grad", "ciou_loss_value_and_grad"]
