"""bradley_terry's margin as the reference takes it: the float64 value given, not that
value rounded to the scores' float32 (a per-pair loss softplus(-z), z = chosen - rejected
- margin, moves by up to |rounding of the margin| relative: 2.4e-5 for margin 990.1, and
from 0 to log 2 for chosen = float32(1e30) against the margin 1e30)."""

import numpy as np
import pytest

import fastloss
import fastloss.reference as reference
from loss_specs import assert_close_contract
from simd_paths import simd_paths


def _scores(center):
    rng = np.random.default_rng(21)
    chosen = (center + rng.standard_normal(40) * (1e-7 * center + 1.0)).astype(np.float32)
    rejected = rng.standard_normal(40).astype(np.float32)
    return chosen, rejected


# (where the scores sit, the margin): margins float32 cannot hold, scalar or per pair
CASES = (
    (1000.0, 990.1),
    (1e30, 1e30),
    (1e30, 1e30 * (1 + 2.0**-30)),
    (1000.0, "per-pair"),
)


@pytest.mark.parametrize("reduction", ("none", "sum", "mean"))
@pytest.mark.parametrize("center, margin", CASES, ids=repr)
def test_bradley_terry_float32_takes_the_margin_as_given(center, margin, reduction):
    chosen, rejected = _scores(center)
    if margin == "per-pair":  # a float64 margin per pair, near z = 0 .. 12
        margin = (chosen.astype(np.float64) - rejected - 6.0
                  + np.random.default_rng(22).uniform(-6, 6, chosen.shape) + 0.1)
    wide = (chosen.astype(np.float64), rejected.astype(np.float64))
    grad_output = (np.random.default_rng(23).standard_normal(chosen.shape)
                   if reduction == "none" else 1.0)
    ref_value = reference.bradley_terry(*wide, margin=margin, reduction=reduction)
    ref_grads = reference.bradley_terry_grad(*wide, grad_output, margin=margin,
                                             reduction=reduction, wrt=("chosen", "rejected"))
    with simd_paths() as paths:
        for path in paths:
            value, grads = fastloss.bradley_terry_value_and_grad(
                chosen, rejected, grad_output, margin=margin, reduction=reduction,
                wrt=("chosen", "rejected"))
            assert_close_contract(value, ref_value, np.float32, "loss", f"loss {path}")
            for name, grad, ref in zip(("chosen", "rejected"), grads, ref_grads):
                assert grad.dtype == np.float32
                assert_close_contract(grad, ref, np.float32, "grad", f"{name} {path}")


def test_bradley_terry_float32_margin_float32_holds_stays_float32_exactly():
    # a margin float32 holds (or one within 2**-22 of one) changes nothing: the same bits
    # as the same margin given as a float32 array
    chosen, rejected = _scores(3.0)
    for margin in (0.5, 2.0, 0.1):
        as_float32 = np.full(chosen.shape, margin, dtype=np.float32)
        assert np.array_equal(
            fastloss.bradley_terry(chosen, rejected, margin=margin, reduction="none"),
            fastloss.bradley_terry(chosen, rejected, margin=as_float32, reduction="none"))
