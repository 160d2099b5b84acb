"""The accuracy contract (docs/accuracy.rst), in one place.

Every result is compared with the float64 reference (``fastloss.reference``) elementwise:

    |actual - ref| <= rtol * |ref| + floor * max|ref| + atol

with ``max|ref|`` taken over the finite entries of the whole reference array (a scalar's
own magnitude for a reduced loss). ``fastloss check`` and the test suite read the bounds
from ``CONTRACT``; nothing else defines them.
"""
import dataclasses

import numpy as np

__all__ = ["CONTRACT", "Tolerance", "bound", "tolerance"]


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """The bound ``rtol * |ref| + floor * max|ref| + atol``, and why it is what it is.

    The floor makes an exact zero of the reference demand an exact zero unless larger
    entries sit beside it. The contract itself has ``atol = 0``; a bound with an
    ``atol`` (the per-row log-sum-exp, which is not a loss) says so where it is defined.
    """

    rtol: float
    floor: float
    why: str
    atol: float = 0.0

    def __str__(self):
        text = f"rtol={self.rtol:g}, floor={self.floor:g}*max|ref|"
        return text + (f", atol={self.atol:g}" if self.atol else "")


_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)

CONTRACT = {
    (_F64, "loss"): Tolerance(
        1e-12, 1e-14,
        "float64 kernels accumulate in double; only reordered roundings separate them "
        "from the reference"),
    (_F64, "grad"): Tolerance(1e-12, 1e-14, "as the float64 loss, elementwise"),
    (_F32, "loss"): Tolerance(
        2e-6, 1e-14,
        "float32 storage and exponentials with double accumulators, rounded once to "
        "float32 (about 17 float32 ulps of room); the floor only admits exact zeros"),
    (_F32, "grad"): Tolerance(
        2e-6, 1e-6,
        "exp(y - lse) in float32 loses relative accuracy in proportion to |y - lse|, so "
        "tiny probabilities get an absolute floor of 1e-6 * max|ref|"),
}


def tolerance(dtype, kind):
    """The contract's Tolerance for a ``kind`` ("loss" or "grad") result computed from
    inputs of ``dtype``; a ValueError for anything the contract does not cover."""
    key = (np.dtype(dtype), kind)
    if key not in CONTRACT:
        raise ValueError(f"the accuracy contract has no bound for dtype {np.dtype(dtype)} "
                         f"and kind {kind!r}")
    return CONTRACT[key]


def bound(ref, rule):
    """The elementwise bound of ``rule`` (a Tolerance) around the float64 array ``ref``
    (finite entries only set ``max|ref|``; 0 when none is finite)."""
    ref = np.asarray(ref, dtype=np.float64)
    finite = np.isfinite(ref)
    scale = float(np.max(np.abs(ref[finite]))) if finite.any() else 0.0
    return rule.rtol * np.abs(ref) + rule.floor * scale + rule.atol
