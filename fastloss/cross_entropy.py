"""Softmax cross-entropy over the last axis (the public NumPy API).

The kernels are in csrc/cross_entropy.c; fastloss.reference.cross_entropy is
the float64 oracle with the same semantics.
"""
import numpy as np

from fastloss import _kernels
from fastloss._config import resolve_num_threads
from fastloss._validation import (
    float_array,
    grad_output_arg,
    integer_scalar,
    out_arg,
    real_scalar,
    reduction_arg,
    rows,
    rows_view,
)

__all__ = ["cross_entropy", "cross_entropy_grad", "cross_entropy_value_and_grad"]


class _Problem:
    """Checked arguments of one call, in the layout the kernels read."""

    def __init__(self, logits, target, weight, ignore_index, reduction, label_smoothing,
                 z_loss, softcap, num_threads):
        logits = float_array(logits, "logits")
        if logits.ndim == 0:
            raise ValueError("logits: expected at least 1 dimension (..., C), got a scalar")
        n_classes = logits.shape[-1]
        if n_classes == 0:
            raise ValueError(f"logits: expected at least one class, got shape {logits.shape}")
        self.shape = logits.shape
        self.loss_shape = logits.shape[:-1]
        self.dtype = logits.dtype
        self.n_classes = n_classes
        self.logits = logits
        self.matrix = rows(logits, n_classes)
        self.reduction = reduction_arg(reduction)
        self.ignore_index = integer_scalar(ignore_index, "ignore_index")
        self.label_smoothing = real_scalar(label_smoothing, "label_smoothing", low=0.0, high=1.0)
        self.z_loss = real_scalar(z_loss, "z_loss", low=0.0)
        cap = real_scalar(softcap, "softcap", low=0.0, low_open=True, allow_none=True)
        self.softcap = 0.0 if cap is None else cap
        self.num_threads = resolve_num_threads(num_threads)
        self._set_target(target)
        self.weight = None
        if weight is not None:
            weight = np.asarray(weight)
            if weight.dtype.kind not in "fiu":
                raise TypeError(f"weight: expected real numbers, got dtype {weight.dtype}")
            if weight.shape != (n_classes,):
                raise ValueError(f"weight: expected shape ({n_classes},), got {weight.shape}")
            self.weight = np.ascontiguousarray(weight, dtype=self.dtype)

    def _set_target(self, target):
        target = np.asarray(target)
        kind = target.dtype.kind
        self.hard_target = self.soft_target = None
        if kind in "iu":
            if target.shape != self.loss_shape:
                raise ValueError(f"target: expected class indices of shape {self.loss_shape}, "
                                 f"got {target.shape}")
            flat = target.reshape(-1)
            if kind == "u" and target.dtype.itemsize == 8 and flat.size:
                # values above 2**63 - 1 would wrap when cast to int64
                too_big = np.flatnonzero(flat > np.iinfo(np.int64).max)
                if too_big.size:
                    self._bad_target(flat[too_big[0]], too_big[0])
            self.hard_target = np.ascontiguousarray(flat, dtype=np.int64)
            position = _kernels.ce_find_bad_target(self.hard_target, self.n_classes,
                                                   self.ignore_index)
            if position >= 0:
                self._bad_target(self.hard_target[position], position)
        elif kind == "f":
            if target.shape != self.shape:
                raise ValueError(f"target: expected probabilities of shape {self.shape} (like "
                                 f"logits) or class indices of shape {self.loss_shape}, "
                                 f"got {target.shape}")
            if self.ignore_index >= 0:
                raise ValueError("ignore_index: not supported with probability targets "
                                 f"(got {self.ignore_index})")
            self.soft_target = rows(np.asarray(target, dtype=self.dtype), self.n_classes)
        else:
            raise TypeError(f"target: expected integer class indices or float probabilities, "
                            f"got dtype {target.dtype}")

    def _bad_target(self, value, flat_position):
        position = np.unravel_index(flat_position, self.loss_shape) if self.loss_shape else ()
        position = tuple(int(p) for p in position)
        raise ValueError(f"target: value {int(value)} at position {position} is out of range "
                         f"for {self.n_classes} classes (ignore_index={self.ignore_index})")

    def run(self, mode, *, grad_output=None, lse_in=None, out=None, want_lse=False):
        """Call the kernel; returns (loss, lse, grad) with loss shaped for the reduction."""
        n_rows = self.matrix.shape[0]
        per_row = np.empty(n_rows) if self.reduction == "none" and mode != "backward" else None
        lse = np.empty(n_rows) if want_lse else None
        grad = grad_matrix = upstream = None
        copy_back = False
        if mode != "forward":
            upstream = grad_output_arg(grad_output, self.reduction, self.loss_shape)
        if lse_in is not None:
            lse_in = np.asarray(lse_in, dtype=np.float64)
            if lse_in.shape != self.loss_shape:
                raise ValueError(f"lse: expected shape {self.loss_shape}, got {lse_in.shape}")
            lse_in = np.ascontiguousarray(lse_in.reshape(-1))
        if mode != "forward":
            grad, grad_matrix, copy_back = self._grad_buffer(out, upstream, lse_in)
        total = _kernels.ce_run(
            mode, self.matrix, self.hard_target, self.soft_target, self.weight, lse_in,
            upstream, per_row, lse, grad_matrix, self.ignore_index, self.label_smoothing,
            self.z_loss, self.softcap, self.reduction, self.num_threads)
        if copy_back:
            np.copyto(grad, grad_matrix.reshape(self.shape))
        if per_row is None:  # a Python float holding a value of the logits' dtype
            loss = float(self.dtype.type(total))
        else:
            loss = per_row.reshape(self.loss_shape).astype(self.dtype)
        if lse is not None:
            lse = lse.reshape(self.loss_shape)
        return loss, lse, grad

    def _grad_buffer(self, out, upstream, lse_in):
        """The array to return, the (N, C) matrix the kernel writes, and whether
        that matrix must then be copied into the array."""
        if out is None:
            grad = np.empty(self.shape, dtype=self.dtype)
            return grad, grad.reshape(-1, self.n_classes), False
        out_arg(out, self.shape, self.dtype)
        matrix = rows_view(out, self.n_classes)
        if matrix is not None:
            in_place = (matrix.__array_interface__["data"][0]
                        == self.matrix.__array_interface__["data"][0]
                        and matrix.strides == self.matrix.strides)
            # The kernel reads every input while it writes the gradient row by row:
            # the logits may be out= exactly (in place), nothing else may share its
            # memory, least of all the class indices, which index the rows.
            others = [a for a in (self.hard_target, self.soft_target, self.weight, upstream,
                                  lse_in) if a is not None]
            if ((in_place or not np.may_share_memory(matrix, self.matrix))
                    and not any(np.may_share_memory(matrix, a) for a in others)):
                return out, matrix, False
        # out= has a layout the kernel cannot write, or it overlaps an input in a
        # way other than exact in-place: compute into a fresh buffer, then copy.
        return out, np.empty((self.matrix.shape[0], self.n_classes), dtype=self.dtype), True


def cross_entropy(logits, target, *, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, z_loss=0.0, softcap=None, return_lse=False,
                  num_threads=None):
    """Softmax cross-entropy over the last axis, as torch.nn.functional.cross_entropy.

    Parameters
    ----------
    logits : array_like, float32 or float64, shape (..., C)
        Unnormalised scores, class axis last (torch puts it at dim 1).
    target : array_like
        Integer class indices of shape (...) (any integer dtype), or float
        probabilities of shape (..., C) (soft targets).
    weight : array_like, shape (C,), optional
        Per-class weights; "mean" divides by sum of w[target] over the
        non-ignored rows (torch's weighted mean).
    ignore_index : int
        Rows whose target equals it contribute no loss and no gradient.
    reduction : {"mean", "sum", "none"}
    label_smoothing : float in [0, 1]
        Mixes the target with the uniform distribution, as torch.
    z_loss : float >= 0
        Adds ``z_loss * lse**2`` per non-ignored row (PaLM's z-loss; Liger's
        ``lse_square_scale``); "mean" averages it over the non-ignored rows.
    softcap : float > 0, optional
        Logits become ``softcap * tanh(logits / softcap)`` first (Gemma 2).
    return_lse : bool
        Also return the per-row log-sum-exp (float64, 0 for ignored rows), for
        ``cross_entropy_grad(..., lse=lse)``.
    num_threads : int, optional
        Threads for this call (default: fastloss.get_num_threads()).

    Returns
    -------
    loss : float for "mean"/"sum"; array of shape (...) and the logits' dtype for "none".
    lse : float64 array of shape (...), only with return_lse=True.

    Per row, with y the (capped) logits, lse = log sum_c exp(y_c), w = weight
    and eps = label_smoothing::

        hard:  (1 - eps) w_t (lse - y_t) + eps / C sum_c w_c (lse - y_c) + z_loss lse**2
        soft:  sum_c w_c q'_c (lse - y_c) + z_loss lse**2,   q' = (1 - eps) q + eps / C

    A row with a NaN or +inf logit, or with every logit -inf, has a NaN loss
    (as in torch).  The mean over zero non-ignored rows is nan.
    """
    problem = _Problem(logits, target, weight, ignore_index, reduction, label_smoothing,
                       z_loss, softcap, num_threads)
    loss, lse, _ = problem.run("forward", want_lse=return_lse)
    return (loss, lse) if return_lse else loss


def cross_entropy_grad(logits, target, grad_output=1.0, *, weight=None, ignore_index=-100,
                       reduction="mean", label_smoothing=0.0, z_loss=0.0, softcap=None,
                       lse=None, out=None, num_threads=None):
    """Gradient of ``grad_output * cross_entropy(logits, target, ...)`` w.r.t. the logits.

    grad_output is a scalar for "mean"/"sum" and an array shaped like the
    per-row loss (or a scalar) for "none".  Given ``lse`` from
    ``cross_entropy(..., return_lse=True)`` (same logits and options), the
    gradient takes one read of the logits and one write: no log-sum-exp pass.
    ``out`` receives the gradient (shape and dtype of the logits); ``out=logits``
    overwrites the logits in place.  Returns the gradient (``out`` if given).
    Rows whose target is ignore_index get a zero gradient.
    """
    problem = _Problem(logits, target, weight, ignore_index, reduction, label_smoothing,
                       z_loss, softcap, num_threads)
    mode = "value_and_grad" if lse is None else "backward"
    _, _, grad = problem.run(mode, grad_output=grad_output, lse_in=lse, out=out)
    return grad


def cross_entropy_value_and_grad(logits, target, grad_output=1.0, *, weight=None,
                                 ignore_index=-100, reduction="mean", label_smoothing=0.0,
                                 z_loss=0.0, softcap=None, out=None, num_threads=None):
    """``(cross_entropy(...), cross_entropy_grad(...))`` from one pass over the logits.

    Reads each row of logits from memory once and writes the gradient once;
    with ``out=logits`` the gradient replaces the logits and the call needs
    only O(N) extra memory.  Arguments as in cross_entropy_grad.
    """
    problem = _Problem(logits, target, weight, ignore_index, reduction, label_smoothing,
                       z_loss, softcap, num_threads)
    loss, _, grad = problem.run("value_and_grad", grad_output=grad_output, out=out)
    return loss, grad
