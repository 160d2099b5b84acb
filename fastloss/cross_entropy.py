"""Softmax cross-entropy over the last axis (the public NumPy API).

The kernels are in csrc/cross_entropy.c and every argument is checked by the Cython
layer (fastloss/_cross_entropy.pxi, ``ce_call``), so that a call costs about a
microsecond beyond its kernel; fastloss.reference.cross_entropy is the float64 oracle
with the same semantics.
"""
from fastloss import _kernels
from fastloss._config import resolve_num_threads

__all__ = ["cross_entropy", "cross_entropy_grad", "cross_entropy_value_and_grad"]


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
    loss : float or ndarray
        A float for "mean"/"sum"; for "none" an array of shape (...), float64 if the
        logits or the probability targets are, else float32.
    lse : ndarray of float64, shape (...)
        Only with return_lse=True.

    Notes
    -----
    Per row, with y the (capped) logits, lse = log sum_c exp(y_c), w = weight
    and eps = label_smoothing::

        hard:  (1 - eps) w_t (lse - y_t) + eps / C sum_c w_c (lse - y_c) + z_loss lse**2
        soft:  sum_c w_c q'_c (lse - y_c) + z_loss lse**2,   q' = (1 - eps) q + eps / C

    A row with a NaN or +inf logit, or with every logit -inf, has a NaN loss
    (as in torch).  The mean over zero non-ignored rows is nan.
    """
    loss, lse, _ = _kernels.ce_call(
        _kernels.CE_FORWARD, logits, target, weight, ignore_index, reduction, label_smoothing,
        z_loss, softcap, resolve_num_threads(num_threads), want_lse=return_lse)
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
    _, _, grad = _kernels.ce_call(
        _kernels.CE_GRAD, logits, target, weight, ignore_index, reduction, label_smoothing,
        z_loss, softcap, resolve_num_threads(num_threads), grad_output, lse, out)
    return grad


def cross_entropy_value_and_grad(logits, target, grad_output=1.0, *, weight=None,
                                 ignore_index=-100, reduction="mean", label_smoothing=0.0,
                                 z_loss=0.0, softcap=None, out=None, num_threads=None):
    """``(cross_entropy(...), cross_entropy_grad(...))`` from one pass over the logits.

    Reads each row of logits from memory once and writes the gradient once;
    with ``out=logits`` the gradient replaces the logits and the call needs
    only O(N) extra memory.  Arguments as in cross_entropy_grad.
    """
    loss, _, grad = _kernels.ce_call(
        _kernels.CE_VALUE_AND_GRAD, logits, target, weight, ignore_index, reduction,
        label_smoothing, z_loss, softcap, resolve_num_threads(num_threads), grad_output,
        None, out)
    return loss, grad
