"""Softmax cross-entropy over the last axis (the public NumPy API).

The kernels are in csrc/cross_entropy.c and every argument is checked by the Cython
layer (fastloss/_cross_entropy.pxi, ``ce_call``), so that a call costs about a
microsecond beyond its kernel; fastloss.reference.cross_entropy is the float64 oracle
with the same semantics.
"""
import numbers

import numpy as np

from fastloss import _kernels
from fastloss._config import resolve_num_threads
from fastloss._validation import real_scalar

__all__ = ["CROSS_ENTROPY_STATS_FIELDS", "cross_entropy", "cross_entropy_block_stats",
           "cross_entropy_from_stats", "cross_entropy_grad", "cross_entropy_merge_stats",
           "cross_entropy_rebase_stats", "cross_entropy_value_and_grad"]

#: The fields of a statistics array (cross_entropy_block_stats), in the order of its first
#: axis: ``stats[CROSS_ENTROPY_STATS_FIELDS.index("sum")]`` is the row's scaled sum.  The
#: first (``max``) merges by maximum, every other by a sum once rebased onto the common
#: maximum (cross_entropy_rebase_stats).
CROSS_ENTROPY_STATS_FIELDS = ("max", "sum", "sum_others", "dist", "mass", "target_logit",
                              "target_weight", "target_count", "classes")


def _check_stats_smoothing(stats, target, ignore_index, label_smoothing):
    """Statistics of hard targets hold the smoothing sums (``dist``, ``mass``) only when
    cross_entropy_block_stats had ``label_smoothing > 0``: the other way round the loss or
    gradient would be silently wrong, so a mismatch raises. (Malformed arguments are left
    to the kernel's checks, which name them.)"""
    try:  # any array of real numbers (float32 statistics, a list), as the kernels take
        stats = np.asarray(stats)
        target = np.asarray(target)
        label_smoothing = real_scalar(label_smoothing, "label_smoothing", low=0.0, high=1.0)
    except (TypeError, ValueError):
        return
    if (stats.dtype.kind not in "fiu" or stats.ndim < 1
            or stats.shape[0] != len(CROSS_ENTROPY_STATS_FIELDS)
            or isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral)):
        return
    if target.dtype.kind not in "iu" or target.shape != stats.shape[1:]:
        return
    field = CROSS_ENTROPY_STATS_FIELDS.index
    rows = (target != ignore_index) & (stats[field("target_count")] > 0)
    mass = stats[field("mass")][rows]
    if label_smoothing > 0 and np.any((mass == 0) & (stats[field("target_weight")][rows] != 0)):
        raise ValueError(f"label_smoothing: {label_smoothing} here, but the statistics were "
                         f"computed without label smoothing (their mass field is 0): pass "
                         f"the same label_smoothing to cross_entropy_block_stats")
    if label_smoothing == 0 and np.any(mass != 0):
        raise ValueError("label_smoothing: 0 here, but the statistics were computed with "
                         "label smoothing (their mass field is set): pass the same "
                         "label_smoothing to cross_entropy_block_stats")


def cross_entropy(logits, target, *, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, z_loss=0.0, softcap=None, return_lse=False,
                  num_threads=None):
    """Softmax cross-entropy over the last axis, as torch.nn.functional.cross_entropy.

    Parameters
    ----------
    logits : array_like, float32, float64, float16 or bfloat16, shape (..., C)
        Unnormalised scores, class axis last (torch puts it at dim 1).  float16 and
        ``ml_dtypes.bfloat16`` logits are read as they are stored, computed in float32
        and summed in float64 (docs/accuracy.rst, "Half precision"); their class
        weights and probability targets may be half, float32 (read as float32) or
        float64 (which widens the computation to float64).
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
        logits or the probability targets are, else float32 (half logits included).
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
                       lse=None, class_offset=0, stats=None, out=None, grad_dtype=None,
                       num_threads=None):
    """Gradient of ``grad_output * cross_entropy(logits, target, ...)`` w.r.t. the logits.

    grad_output is a scalar for "mean"/"sum" and an array shaped like the
    per-row loss (or a scalar) for "none".  Given ``lse`` from
    ``cross_entropy(..., return_lse=True)`` (same logits and options), the
    gradient takes one read of the logits and one write: no log-sum-exp pass.
    ``out`` receives the gradient (shape and dtype of the logits); ``out=logits``
    overwrites the logits in place.  Returns the gradient (``out`` if given).
    Rows whose target is ignore_index get a zero gradient.

    The gradient of one block of classes: given ``stats``, the statistics of the whole
    class axis (cross_entropy_block_stats of every block, merged), ``logits`` is the block
    of classes ``[class_offset, class_offset + width)`` of each row, ``weight`` the block's
    slice of the class weights, ``target`` the rows' class indices (global) or the
    block's probability targets; the result is that block of the gradient of the whole
    row's loss, with the log-sum-exp, C, the weight total and the mean's denominators
    read from ``stats`` (one read of the block, one write; nothing else is needed from
    the other blocks).  ``lse`` does not combine with ``stats``.

    ``grad_dtype``: the gradient's dtype; None (the default) gives the logits' dtype.
    For float16 and bfloat16 logits, ``"float32"`` (or ``np.float32``) gives a float32
    gradient instead, rounded once from the same computation (``out`` is then float32).
    """
    if stats is not None:
        _check_stats_smoothing(stats, target, ignore_index, label_smoothing)
    _, _, grad = _kernels.ce_call(
        _kernels.CE_GRAD, logits, target, weight, ignore_index, reduction, label_smoothing,
        z_loss, softcap, resolve_num_threads(num_threads), grad_output, lse, out,
        class_offset=class_offset, stats=stats, grad_dtype=grad_dtype)
    return grad


def cross_entropy_value_and_grad(logits, target, grad_output=1.0, *, weight=None,
                                 ignore_index=-100, reduction="mean", label_smoothing=0.0,
                                 z_loss=0.0, softcap=None, out=None, grad_dtype=None,
                                 num_threads=None):
    """``(cross_entropy(...), cross_entropy_grad(...))`` from one pass over the logits.

    Reads each row of logits from memory once and writes the gradient once;
    with ``out=logits`` the gradient replaces the logits and the call needs
    only O(N) extra memory.  Arguments as in cross_entropy_grad.
    """
    loss, _, grad = _kernels.ce_call(
        _kernels.CE_VALUE_AND_GRAD, logits, target, weight, ignore_index, reduction,
        label_smoothing, z_loss, softcap, resolve_num_threads(num_threads), grad_output,
        None, out, grad_dtype=grad_dtype)
    return loss, grad


def cross_entropy_block_stats(logits_block, target, *, class_offset=0, num_classes=None,
                              weight=None, ignore_index=-100, label_smoothing=0.0,
                              softcap=None, num_threads=None):
    """Statistics of the classes ``[class_offset, class_offset + width)`` of each row,
    which merge (cross_entropy_merge_stats) into those of the whole row.

    Parameters
    ----------
    logits_block : array_like, float32 or float64, shape (..., width)
        Those classes of the logits.
    target : array_like
        The rows' class indices (global, shape (...)), or the block's probability
        targets (shape (..., width)).
    class_offset : int >= 0
        The global index of the block's first class.
    num_classes : int, optional
        The global number of classes C (default ``class_offset + width``): the block must
        end within it, class indices must be below it, and probability targets are
        smoothed as ``(1 - eps) q + eps / C``.
    weight : array_like, shape (width,), optional
        The block's slice of the class weights.
    ignore_index, label_smoothing, softcap, num_threads
        As in cross_entropy; pass the same to the merge's other blocks and to
        cross_entropy_from_stats / cross_entropy_grad.

    Returns
    -------
    stats : ndarray of float64, shape (9, ...)
        One statistic per entry of the first axis, in the order of
        CROSS_ENTROPY_STATS_FIELDS (fastloss.reference.cross_entropy_block_stats gives the
        formulas): ``max``, ``sum``, ``sum_others``, ``dist``, ``mass``,
        ``target_logit``, ``target_weight``, ``target_count``, ``classes``.  Ignored rows
        get the neutral record (max -inf, sums 0).  Results are identical for any
        number of threads.
    """
    return _kernels.ce_block_stats(logits_block, target, class_offset, num_classes, weight,
                                   ignore_index, label_smoothing, softcap,
                                   resolve_num_threads(num_threads))


def cross_entropy_rebase_stats(stats, new_max):
    """``stats`` (a new array) with its sums taken relative to ``new_max`` (per row,
    at least the row's ``max``; broadcast) instead of its own ``max``.

    The step of a distributed merge between its two all-reduces: the maximum of the
    ``max`` field over the ranks (MAX), then this on each rank, then the sum of every
    other field (SUM).  ``new_max`` below a row's max raises ValueError.
    """
    return _kernels.ce_rebase_stats(stats, new_max)


def cross_entropy_merge_stats(stats_sequence):
    """The statistics of the union of the blocks of ``stats_sequence`` (arrays of one
    shape from cross_entropy_block_stats), merged in the sequence's order.

    The merge takes the maximum of ``max``, rebases each record onto it and adds the
    other fields in order: associative up to rounding, and the same bits for the same
    sequence whatever the threads.  Blocks must not overlap; they may come in any order.
    """
    return _kernels.ce_merge_stats(stats_sequence)


def cross_entropy_from_stats(stats, target, *, ignore_index=-100, reduction="mean",
                             label_smoothing=0.0, z_loss=0.0, return_lse=False):
    """The cross-entropy of rows from their merged statistics.

    ``stats`` covers every class of each row (cross_entropy_merge_stats of the blocks'
    statistics); ``target`` is the rows' class indices, or None when the blocks had
    probability targets.  The other arguments are cross_entropy's, and so is the result,
    but computed in float64 whatever the logits' dtype (the statistics are float64): a
    Python float, or a float64 array for "none"; ``return_lse=True`` adds the per-row
    log-sum-exp.  The loss equals cross_entropy on the whole logits within the accuracy
    contract.  A non-ignored row whose target lies in no block, or in two, raises
    ValueError, and so does a ``label_smoothing`` that the statistics were not computed
    with (with class indices: the smoothing sums are there only for ``label_smoothing >
    0``), here and in cross_entropy_grad with ``stats=``.
    """
    _check_stats_smoothing(stats, target, ignore_index, label_smoothing)
    loss, lse = _kernels.ce_from_stats(stats, target, ignore_index, reduction,
                                       label_smoothing, z_loss, return_lse)
    return (loss, lse) if return_lse else loss
