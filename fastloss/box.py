"""Bounding-box regression losses (the public NumPy API): torchvision's generalized,
distance and complete IoU losses, ``giou_loss``, ``diou_loss`` and ``ciou_loss``, each with
``_grad`` and ``_value_and_grad``.

The kernels are in csrc/box.c; ``fastloss.reference`` has the float64 oracle with the same
semantics. Boxes are ``(..., 4)`` arrays of ``(x1, y1, x2, y2)``; ``boxes1`` and ``boxes2``
broadcast against each other over their leading axes (as torch broadcasts the coordinates
torchvision's formulas unbind), giving one loss per pair. float32 and float64 combine to
float64; the loss has the combined dtype, and each gradient its argument's dtype and shape
(summed over the axes broadcasting added or stretched, as autograd does).

The per-call argument handling is one class, ``_BoxProblem``, with
``run(mode, grad_output=None, out=None, wrt=None) -> (loss, grad)``; the public functions
below are thin wrappers around it.
"""
import math

import numpy as np

from fastloss import _kernels, _registry
from fastloss._config import resolve_num_threads
from fastloss._validation import (_address, _sum_to_shape, float_array, grad_output_arg,
                                  is_half, out_arg, outs_per_name, promote_float, real_scalar,
                                  reduction_arg, rows_view)


_NAMES = ("boxes1", "boxes2")
_KERNELS = ("giou", "diou", "ciou")


class _BoxProblem:
    """Checked arguments of one call of box loss ``entry`` ("giou", "diou" or "ciou", or a
    registry entry whose ``kernel`` is one of them), in the layout the kernel reads.

    ``arrays`` is ``(boxes1, boxes2)``; ``options`` holds ``eps``. ``run(mode, grad_output,
    out, wrt)`` calls the kernel once and returns ``(loss, grad)``."""

    def __init__(self, entry, arrays, options, reduction, num_threads):
        kernel = entry if isinstance(entry, str) else entry.kernel
        if kernel not in _KERNELS:
            raise ValueError(f"box loss: unknown kernel {kernel!r}")
        self.kernel = kernel
        boxes1 = float_array(arrays[0], "boxes1", half=True)
        boxes2 = float_array(arrays[1], "boxes2", half=True)
        for name, boxes in zip(_NAMES, (boxes1, boxes2)):
            if boxes.ndim < 1 or boxes.shape[-1] != 4:
                raise ValueError(f"{name}: expected shape (..., 4) of boxes (x1, y1, x2, y2), "
                                 f"got {boxes.shape}")
        try:
            shape = np.broadcast_shapes(boxes1.shape[:-1], boxes2.shape[:-1])
        except ValueError:
            raise ValueError(f"boxes2: shape {boxes2.shape} does not broadcast with boxes1's "
                             f"shape {boxes1.shape} (over all but the last axis)") from None
        self.eps = real_scalar(options.get("eps", 1e-7), "eps", low=0.0, low_open=True)
        self.reduction = reduction_arg(reduction)
        self.num_threads = resolve_num_threads(num_threads)
        self.dtype = promote_float(boxes1.dtype, boxes2.dtype)
        self.shape = shape
        self.n = math.prod(shape)
        self.inputs = (boxes1, boxes2)
        self.rows = (self._rows(boxes1), self._rows(boxes2))

    def _rows(self, boxes):
        """``boxes`` as the kernel reads them: (n, 4) rows with a contiguous last axis (a
        view where one exists), or (1, 4) for one box paired with every other."""
        if boxes.dtype != self.dtype:
            boxes = boxes.astype(self.dtype)
        if boxes.size == 4 and self.n != 1:
            return np.require(boxes.reshape(1, 4), requirements="CA")
        if boxes.shape[:-1] != self.shape:
            boxes = np.broadcast_to(boxes, self.shape + (4,))
        rows = rows_view(boxes, 4) if boxes.strides[-1] == boxes.itemsize or \
            boxes.shape[-1] == 1 else None
        if rows is None or not rows.flags.aligned:
            rows = np.ascontiguousarray(boxes).reshape(-1, 4)
        return rows

    def _wrt(self, wrt, out):
        """The gradients asked for: (names, single, {name: out buffer or None})."""
        single = isinstance(wrt, str)
        if not single and not isinstance(wrt, (tuple, list)):
            raise TypeError(f"wrt: expected an argument's name or a tuple of names, got {wrt!r}")
        names = (wrt,) if single else tuple(wrt)
        for name in names:
            if not isinstance(name, str) or name not in _NAMES:
                raise ValueError(f"wrt: expected names from {_NAMES}, got {name!r}")
        if not names or len(set(names)) != len(names):
            raise ValueError(f"wrt: expected distinct names from {_NAMES}, got {wrt!r}")
        return names, single, outs_per_name(out, names, single)

    def _grad_buffer(self, index, out, upstream, name):
        """(the (n, 4) buffer the kernel writes, the gradient to return or None when the
        buffer still needs a broadcast sum, a cast or a copy into ``out``)."""
        own = self.inputs[index]
        direct = own.shape == self.shape + (4,) and own.dtype == self.dtype
        if out is not None:
            out_arg(out, own.shape, own.dtype, name)
        if out is None:
            if not direct:
                return np.empty((self.n, 4), dtype=self.dtype), None
            grad = _kernels.empty(self.shape + (4,), self.dtype)
            return grad.reshape(self.n, 4), grad
        if direct and out.flags.c_contiguous and out.flags.aligned:
            flat = out.reshape(self.n, 4)
            # the kernel reads a tile of both box arrays before it writes the tile's
            # gradient: the gradient may be either of them exactly, never overlap otherwise
            safe = not flat.size or all(
                (_address(flat) == _address(rows) and rows.shape[0] == self.n
                 and rows.strides[0] == 4 * rows.itemsize)
                or not np.may_share_memory(flat, rows) for rows in self.rows)
            safe = safe and not (upstream is not None and np.may_share_memory(flat, upstream))
            if safe:
                return flat, out
        return np.empty((self.n, 4), dtype=self.dtype), None

    def _finish(self, index, flat, out):
        own = self.inputs[index]
        grad = flat.reshape(self.shape + (4,))
        if grad.shape != own.shape:
            grad = _sum_to_shape(grad, own.shape)
        if out is None:
            return grad.astype(own.dtype, copy=False)
        np.copyto(out, grad, casting="unsafe")
        return out

    def run(self, mode, grad_output=None, out=None, wrt=None):
        """Call the kernel (mode "forward", "backward" or "value_and_grad"); returns (loss,
        grad): the loss a Python float for "mean"/"sum", an array of the broadcast leading
        shape for "none" (None for "backward"); grad the gradient w.r.t. ``wrt`` (default
        "boxes1"; a tuple of gradients when ``wrt`` is a tuple of names), None for
        "forward"."""
        if mode not in ("forward", "backward", "value_and_grad"):
            raise ValueError(f"mode: unknown {mode!r}")
        per_box = (np.empty(self.n, dtype=self.dtype)
                   if self.reduction == "none" and mode != "backward" else None)
        names, single, outs = self._wrt("boxes1" if wrt is None else wrt, out)
        upstream = None
        buffers = {}
        if mode != "forward":
            upstream = grad_output_arg(1.0 if grad_output is None else grad_output,
                                       self.reduction, self.shape)
            for index, name in enumerate(_NAMES):
                if name in names:
                    label = "out" if single else f"out ({name})"
                    buffers[name] = self._grad_buffer(index, outs[name], upstream, label)
        grad1 = buffers["boxes1"][0] if "boxes1" in buffers else None
        grad2 = buffers["boxes2"][0] if "boxes2" in buffers else None
        # a gradient summed over broadcast pairs afterwards adds up the pairs' errors:
        # the kernel then keeps every pair in double (csrc/box_body.h's float32 pass)
        summed = any(self.inputs[index].shape[:-1] != self.shape
                     for index, name in enumerate(_NAMES) if name in buffers)
        total = _kernels.box_run(mode, self.kernel, self.rows[0], self.rows[1], upstream,
                                 per_box, grad1, grad2, self.eps, self.reduction,
                                 self.num_threads, -1 if summed else 0)
        if mode == "backward":
            loss = None
        elif per_box is None:  # a Python float holding a value of the loss's dtype
            # (float32 for half-precision boxes: computed in double, summed in float64)
            loss = float(np.float32(total) if is_half(self.dtype) else self.dtype.type(total))
        else:
            loss = per_box.reshape(self.shape)
        if mode == "forward":
            return loss, None
        grads = []
        for index, name in enumerate(_NAMES):
            if name in names:
                flat, done = buffers[name]
                grads.append(done if done is not None else self._finish(index, flat, outs[name]))
        if names != tuple(name for name in _NAMES if name in names):
            grads.reverse()  # ("boxes2", "boxes1")
        return loss, (grads[0] if single else tuple(grads))


# ----------------------------------------------------------------------------------------
# The public functions
# ----------------------------------------------------------------------------------------

_FORMULAS = {
    "giou": ("generalized_box_iou_loss", "Generalized IoU loss (Rezatofighi et al. 2019, "
             "arXiv:1902.09630)",
             "``1 - (iou - (area_c - union) / (area_c + eps))``, ``area_c`` the area of the "
             "smallest box enclosing both"),
    "diou": ("distance_box_iou_loss", "Distance IoU loss (Zheng et al. 2020, arXiv:1911.08287)",
             "``1 - iou + d**2 / (c**2 + eps)``, ``d`` the distance between the boxes' centres "
             "and ``c`` the diagonal of the smallest box enclosing both"),
    "ciou": ("complete_box_iou_loss", "Complete IoU loss (Zheng et al. 2020, arXiv:1911.08287)",
             "the distance IoU loss plus ``alpha v``, ``v = 4 / pi**2 (atan(w2 / h2) - "
             "atan(w1 / h1))**2`` and ``alpha = v / (1 - iou + v + eps)``, alpha held constant "
             "in the gradient (torchvision computes it under no_grad). As torchvision, the "
             "union and the diagonal take eps = 1e-7 whatever ``eps`` is (its "
             "complete_box_iou_loss does not pass eps on), so ``eps`` reaches alpha only"),
}

_LOSS_DOC = """{title}, as torchvision.ops.{torchvision}: per pair of boxes,
    {formula}; ``iou = inter / (union + eps)``.

    Parameters
    ----------
    boxes1, boxes2 : array_like, float32 or float64, shape (..., 4)
        Boxes ``(x1, y1, x2, y2)``; the leading axes broadcast against each other (a single
        box of shape (4,) pairs with every box of the other). Boxes with x2 < x1 or y2 < y1
        are not refused (torchvision's loss does not refuse them): the formula runs as
        written. NaN and inf propagate as IEEE arithmetic says.
    eps : float
        torchvision's eps (> 0, finite; default 1e-7).
    reduction : {{"mean", "sum", "none"}}
        "mean" divides by the number of pairs; the mean of no pairs is 0.0, as torchvision
        (``0.0 * loss.sum()``). Note torchvision's own default is "none".
    num_threads : int, optional
        Threads for this call (default: fastloss.get_num_threads()).

    Returns
    -------
    float or ndarray
        A float for "mean"/"sum"; for "none" an array of the broadcast leading shape. Its
        dtype is float64 if either box array is, else float32. For float32 boxes each pair
        is computed in double and rounded once, or (ciou) in float32 where an error bound
        computed with it proves the result within the accuracy contract, and in double
        elsewhere (torch's float32 evaluation keeps neither).
    """

_GRAD_DOC = """Gradient of ``grad_output * {name}(boxes1, boxes2, ...)``: torch's autograd of
    torchvision's formula, computed in one pass.

    At ties it makes autograd's choices: ``max`` and ``min`` of equal coordinates
    (identical boxes, shared edges) send half the gradient to each box; pairs that do not
    overlap (touching edges included) get no gradient through the intersection.{extra}

    ``grad_output`` is a scalar for "mean"/"sum" and an array of the loss's shape (or a
    scalar) for "none". ``wrt`` is "boxes1" (default), "boxes2", or a tuple of them for a
    tuple of gradients in that order. Each gradient has its argument's shape (summed over
    the axes broadcasting added or stretched) and dtype; ``out`` (an array, or a tuple of
    them for a tuple ``wrt``) receives it, and may be the box array itself
    (``out=boxes1`` overwrites boxes1 in place). Other arguments as in :func:`{name}`.
    """

_CIOU_EXTRA = (" A box of zero height makes ``w / h`` infinite or NaN, and, as in "
               "autograd, its gradient NaN. A box of any other height has a finite gradient, "
               "however flat (autograd's is NaN beyond a ratio of 1.3e154).")

def _run(entry, mode, arrays, options, reduction, num_threads, grad_output=None, out=None,
         wrt=None):
    return _BoxProblem(entry, arrays, options, reduction, num_threads).run(
        mode, grad_output, out, wrt)


_FUNCTIONS = {}
for _entry in _registry.family("box"):
    _torchvision, _title, _formula = _FORMULAS[_entry.kernel]
    _FUNCTIONS.update(_registry.public_functions(
        _entry, _run, __name__,
        doc=_LOSS_DOC.format(title=_title, torchvision=_torchvision, formula=_formula),
        grad_doc=_GRAD_DOC.format(name=_entry.name,
                                  extra=_CIOU_EXTRA if _entry.kernel == "ciou" else "")))
globals().update(_FUNCTIONS)
__all__ = sorted(_FUNCTIONS)
del _entry, _torchvision, _title, _formula
