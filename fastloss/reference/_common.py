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
