"""Extreme but valid inputs and options of the NumPy API, against the float64 reference
to the accuracy contract (docs/accuracy.rst), with 1 and 2 threads giving the same bits.

Each case here was found by a sweep of extreme magnitudes and option values through the
elementwise losses (hunt12); the sweep's other cases met the contract.
"""

import numpy as np
import pytest

import fastloss
import fastloss.reference as reference
from loss_specs import assert_close_contract, bitwise_equal

DTYPES = (np.float32, np.float64)


def _pinball_inputs(dtype):
    rng = np.random.default_rng(5)
    pred = rng.standard_normal((3, 45)).astype(dtype)
    target = rng.standard_normal((3, 45)).astype(dtype)
    target[0, :5] = pred[0, :5]  # ties: the slope 0.5 - q
    return pred, target


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("reduction", ("none", "mean", "sum"))
@pytest.mark.parametrize("quantile", (0.999, 0.999999, 1 - 1e-12, 0.99, 1e-50))
def test_pinball_quantile_near_0_or_1_keeps_q_and_1_minus_q(quantile, reduction, dtype):
    # Over-prediction costs 1 - q per unit. A float32 kernel that rounds q = 0.999 to
    # float32 (0.99900001287...) charges 9.9998713e-4 instead of 1e-3: 1.3e-5 off, and
    # 1.3% off at q = 0.999999 (the reference holds q as given, in float64).
    pred, target = _pinball_inputs(dtype)
    if quantile < 1e-40:
        # every r = target - pred positive and near 1e30: each loss q r is a float32
        # number (1e-20) that a quantile rounded to float32 (0) would lose
        pred, target = -np.abs(pred), (np.abs(target) + 1) * dtype(1e30)
    wide = [pred.astype(np.float64), target.astype(np.float64)]
    grad_output = (np.random.default_rng(6).standard_normal(pred.shape).astype(dtype)
                   if reduction == "none" else 1.0)
    ref = reference.pinball(*wide, quantile=quantile, reduction=reduction)
    results = []
    for threads in (1, 2):
        loss = fastloss.pinball(pred, target, quantile=quantile, reduction=reduction,
                                num_threads=threads)
        grads = fastloss.pinball_grad(pred, target, grad_output, quantile=quantile,
                                      reduction=reduction, wrt=("pred", "target"),
                                      num_threads=threads)
        value, both = fastloss.pinball_value_and_grad(
            pred, target, grad_output, quantile=quantile, reduction=reduction,
            wrt=("pred", "target"), num_threads=threads)
        assert bitwise_equal(np.asarray(value), np.asarray(loss))
        assert all(bitwise_equal(a, b) for a, b in zip(both, grads))
        results.append((loss, grads))
    loss, grads = results[0]
    assert bitwise_equal(np.asarray(results[1][0]), np.asarray(loss))
    assert all(bitwise_equal(a, b) for a, b in zip(results[1][1], grads))
    if reduction == "none":
        assert loss.dtype == np.dtype(dtype)
    assert_close_contract(loss, ref, dtype, "loss")
    if quantile < 1e-40:
        return  # its slopes (-q) are no float32 numbers: the reference's rounds to 0 too
    for name, grad in zip(("pred", "target"), grads):
        assert grad.dtype == np.dtype(dtype)
        ref_grad = reference.pinball_grad(*wide, grad_output, quantile=quantile,
                                          reduction=reduction, wrt=name)
        assert_close_contract(grad, ref_grad, dtype, "grad", what=f"grad {name}")
