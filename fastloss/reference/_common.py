"""What the reference's families share (no formulas)."""

import numpy as np

_REDUCTIONS = ("mean", "sum", "none")


def _sum_to(grad, shape):
    """``grad`` summed over the axes that broadcasting added or stretched, to ``shape``."""
    lead = grad.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + axis for axis, size in enumerate(shape)
                                      if size == 1 and grad.shape[lead + axis] != 1)
    return np.array(np.sum(grad, axis=axes)).reshape(shape)
