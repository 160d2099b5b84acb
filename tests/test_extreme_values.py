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


def _divergence_mp(student, teacher, beta):
    """beta KL(P || M) + (1 - beta) KL(Q || M) of one row in 60-digit arithmetic, with
    P = softmax(teacher), Q = softmax(student), M = beta P + (1 - beta) Q: beta 0 is
    the forward KL(P || Q), 1 the reverse KL(Q || P)."""
    import mpmath  # in the test extra: a missing one fails, not skips
    with mpmath.workdps(60):
        def softmax(row):
            exps = [mpmath.exp(mpmath.mpf(float(value))) for value in row]
            total = mpmath.fsum(exps)
            return [e / total for e in exps]
        p, q = softmax(teacher), softmax(student)
        if beta == 0.0:
            return float(mpmath.fsum(a * mpmath.log(a / b) for a, b in zip(p, q)))
        if beta == 1.0:
            return float(mpmath.fsum(b * mpmath.log(b / a) for a, b in zip(p, q)))
        m = [beta * a + (1 - beta) * b for a, b in zip(p, q)]
        return float(beta * mpmath.fsum(a * mpmath.log(a / c) for a, c in zip(p, m))
                     + (1 - beta) * mpmath.fsum(b * mpmath.log(b / c) for b, c in zip(q, m)))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("beta", (0.0, 0.5, 1.0))
@pytest.mark.parametrize("swap", (False, True), ids=("student-sharp", "teacher-sharp"))
def test_divergence_where_one_model_puts_exp_minus_745_on_a_class(swap, beta, dtype):
    # One model's three classes 745 above the rest leave the others a probability of
    # about 1e-324 (subnormal): the reference's q g(-y) = q (e^-y - 1 + y) overflowed to
    # inf there (e^745) (and p g(y) likewise), where the true value, q e^-y = p, is finite
    # and the kernels were right. Checked against 60-digit arithmetic, then the kernels
    # against the reference.
    rng = np.random.default_rng(3)
    plain = rng.standard_normal((6, 37)) * 3
    sharp = plain.copy()
    sharp[:, :3] = 745.2 + rng.standard_normal((6, 3))  # not plain's + a constant, whose
    # gradients would be 0 less the rounding of terms of 745
    student, teacher = (plain, sharp) if swap else (sharp, plain)
    ref = reference.jsd(student, teacher, beta=beta, reduction="none")
    exact = [_divergence_mp(s, t, beta) for s, t in zip(student, teacher)]
    np.testing.assert_allclose(ref, exact, rtol=1e-13)
    grad_output = rng.standard_normal(6)
    wrt = ("student_logits", "teacher_logits")
    ref_grads = reference.jsd_grad(student, teacher, grad_output, beta=beta,
                                   reduction="none", wrt=wrt)
    assert all(np.isfinite(grad).all() for grad in ref_grads)
    s, t = student.astype(dtype), teacher.astype(dtype)
    ref = reference.jsd(s.astype(np.float64), t.astype(np.float64), beta=beta,
                        reduction="none")
    ref_grads = reference.jsd_grad(s.astype(np.float64), t.astype(np.float64),
                                   grad_output, beta=beta, reduction="none", wrt=wrt)
    runs = [(fastloss.jsd(s, t, beta=beta, reduction="none", num_threads=threads),
             fastloss.jsd_grad(s, t, grad_output, beta=beta, reduction="none", wrt=wrt,
                               num_threads=threads)) for threads in (1, 2)]
    loss, grads = runs[0]
    assert bitwise_equal(runs[1][0], loss)
    assert all(bitwise_equal(a, b) for a, b in zip(runs[1][1], grads))
    assert_close_contract(loss, ref, dtype, "loss")
    for name, grad, ref_grad in zip(wrt, grads, ref_grads):
        assert_close_contract(grad, ref_grad, dtype, "grad", what=f"grad {name}")


@pytest.mark.parametrize("var", (1e-160, 1e-200, 1e-300))
def test_gaussian_nll_var_gradient_at_a_variance_whose_square_underflows(var):
    # d/dvar = 0.5 (1 / v - r**2 / v**2): the reference's v**2 underflowed to 0 below
    # v = 1e-154 and gave 0 / 0 = NaN where the kernels gave the true value; with r = 0
    # it is 0.5 / v exactly, with r = v 0.5 (1 / v - 1), with r = 2 v 0.5 (1 / v - 4).
    v = np.full(6, var)
    target = np.zeros(6)
    pred = np.array([0.0, var, 2 * var, -var, 0.0, 3 * var])
    closed = 0.5 * (1 / v - (pred / v) ** 2)
    ref = reference.gaussian_nll_grad(pred, target, v, reduction="none", wrt="var", eps=1e-320)
    np.testing.assert_allclose(ref, closed, rtol=1e-15)
    grads = [fastloss.gaussian_nll_grad(pred, target, v, reduction="none", wrt="var",
                                        eps=1e-320, num_threads=threads) for threads in (1, 2)]
    assert bitwise_equal(grads[0], grads[1])
    assert_close_contract(grads[0], ref, np.float64, "grad")


@pytest.mark.parametrize("quantile", (0.999, np.resize([0.5, 0.99, 0.999999, 1 - 1e-12], 45),
                                      np.resize([0.1, 0.999, 0.5], 45)),
                         ids=("0.999", "per class >= 0.5", "per class both sides"))
def test_pinball_quantile_near_1_in_place_and_per_class(quantile):
    # A float32 call whose quantiles float32 cannot hold runs pinball(target, pred, 1 - q)
    # when every q >= 0.5 (one vector on both sides of 0.5 runs in float64): the gradients
    # written over pred or target themselves are the fresh call's bits, within contract.
    pred, target = _pinball_inputs(np.float32)
    wide = [pred.astype(np.float64), target.astype(np.float64)]
    fresh = fastloss.pinball_grad(pred, target, quantile=quantile, reduction="sum",
                                  wrt=("pred", "target"))
    for name, ref_grad in zip(("pred", "target"), fresh):
        expected = reference.pinball_grad(*wide, quantile=quantile, reduction="sum",
                                          wrt=name)
        assert_close_contract(ref_grad, expected, np.float32, "grad", what=f"grad {name}")
    for over in ("pred", "target"):
        work = {"pred": pred.copy(), "target": target.copy()}
        got = fastloss.pinball_grad(work["pred"], work["target"], quantile=quantile,
                                    reduction="sum", out=work[over])
        assert got is work[over]
        assert bitwise_equal(got, fresh[0])
    work = {"pred": pred.copy(), "target": target.copy()}
    both = fastloss.pinball_grad(work["pred"], work["target"], quantile=quantile,
                                 reduction="sum", wrt=("pred", "target"),
                                 out=(work["pred"], work["target"]))
    assert both[0] is work["pred"] and both[1] is work["target"]
    assert bitwise_equal(both[0], fresh[0]) and bitwise_equal(both[1], fresh[1])
