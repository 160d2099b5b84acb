"""What the reference's families share (no formulas)."""

import math

import numpy as np

_REDUCTIONS = ("mean", "sum", "none")


def _sum_to(grad, shape):
    """``grad`` summed over the axes that broadcasting added or stretched, to ``shape``."""
    lead = grad.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + axis for axis, size in enumerate(shape)
                                      if size == 1 and grad.shape[lead + axis] != 1)
    return np.array(np.sum(grad, axis=axes)).reshape(shape)


def _accurate_sum(values):
    """The sum of ``values`` (float64): ``np.sum``, or where terms of both signs cancel
    (the sum under half the sum of their magnitudes) their exactly rounded sum
    (``math.fsum``). A double sum is within about ``n u sum|v|`` of the exact one, which
    is no bound relative to a sum that cancelled; the kernels redo such a sum
    compensated (csrc/elementwise.c's numerical policy), and so the reference sums it
    exactly."""
    values = np.asarray(values, dtype=np.float64)
    total = np.sum(values)
    if np.isfinite(total) and values.size and abs(total) < 0.5 * np.sum(np.abs(values)):
        try:
            return np.float64(math.fsum(values.ravel()))
        except OverflowError:  # a partial beyond float64's range: the plain sum stands
            return total
    return total


def _log_sum_shifted(values, row_max, shifted):
    """log sum_c exp(shifted_c) over the last axis (keepdims), ``shifted`` being ``values``
    less their row's max (then scaled): the max's own term is 1, so this is log1p of the
    others' sum, which keeps a converged row's log-probabilities near 0 to their relative
    accuracy (the log of a sum near 1 would keep only their absolute accuracy).  An
    infinite max makes inf - inf (NaN) at its own position, which the others' sum leaves
    out: the whole row is NaN there (a +inf logit, or every logit -inf, one class too)."""
    with np.errstate(invalid="ignore"):
        others = np.exp(shifted)
        np.put_along_axis(others, np.argmax(values, axis=-1)[..., None], 0.0, axis=-1)
        log_sum = np.log1p(np.sum(others, axis=-1, keepdims=True))
    return np.where(np.isinf(row_max), np.nan, log_sum)
