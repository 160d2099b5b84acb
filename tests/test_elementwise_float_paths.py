"""The float32 passes of bradley_terry, dpo (sigmoid) and kl_div (csrc/elementwise_body.h:
logistic_narrow_element, kl_div_narrow_element), on every SIMD path: each loss and
gradient element within 2e-6 of itself against the float64 reference (stricter than the
contract's floor), across the doubt boundaries where an element goes back to double
(|z| near 87, sigmoid(-z) near the label smoothing, log(target) near input, subnormal,
zero, negative and non-finite targets), NaN where the double form gives NaN, and the
fused, value-only and gradient-only calls bit for bit the same, for 1 and 2 threads.
"""
import numpy as np
import pytest

import fastloss
import fastloss.reference as reference

F32 = np.float32


def _each_within(actual, ref, what):
    """Every element within 2e-6 of itself where the reference is a normal float32
    (below, exp's flush to 0 in fastmath.h: within 1e-37), NaN where it is NaN, and
    infinite where it is (or is beyond float32's range)."""
    actual = np.asarray(actual, np.float64)
    ref = np.asarray(ref, np.float64)
    assert np.array_equal(np.isnan(actual), np.isnan(ref)), what
    # beyond float32's range: its infinity (the reference is float64)
    ref = np.where(np.abs(ref) > np.finfo(F32).max, np.sign(ref) * np.inf, ref)
    finite = np.isfinite(ref)
    assert np.array_equal(actual[~finite & ~np.isnan(ref)], ref[~finite & ~np.isnan(ref)]), what
    normal = finite & (np.abs(ref) > 1.2e-38)
    error = np.abs(actual - ref)
    worst = np.max(error[normal] / np.abs(ref[normal]), initial=0.0)
    assert worst <= 2e-6, (what, worst)
    tiny = finite & ~normal
    assert np.all(error[tiny] <= 1e-37), what


def _bt_inputs(rng):
    z = np.concatenate([rng.normal(0.0, 3.0, 20000), rng.uniform(-120.0, 120.0, 20000),
                        rng.uniform(80.0, 95.0, 4000), rng.uniform(-95.0, -80.0, 4000),
                        [0.0, -0.0, 1e-30, 87.0, -87.0, 103.0, 1e30, -1e30]])
    rejected = rng.normal(0.0, 50.0, z.size)
    chosen = (rejected + z).astype(F32)
    return chosen, rejected.astype(F32)


def _check_bradley_terry(chosen, rejected, margin, ref_margin):
    """The loss and both gradients within the contract of the float64 reference, and the
    forward and the gradient alone the same bits at 1 and 2 threads."""
    options = dict(margin=margin, reduction="none")
    wrt = ("chosen", "rejected")
    loss, grads = fastloss.bradley_terry_value_and_grad(chosen, rejected, wrt=wrt, **options)
    ref_loss, ref_grads = reference.bradley_terry_value_and_grad(
        chosen.astype(np.float64), rejected.astype(np.float64), wrt=wrt, margin=ref_margin,
        reduction="none")
    _each_within(loss, ref_loss, "loss")
    _each_within(grads[0], ref_grads[0], "grad chosen")
    _each_within(grads[1], ref_grads[1], "grad rejected")
    for threads in (1, 2):
        assert np.array_equal(fastloss.bradley_terry(chosen, rejected, num_threads=threads,
                                                     **options), loss, equal_nan=True)
        assert np.array_equal(fastloss.bradley_terry_grad(chosen, rejected,
                                                          num_threads=threads, **options),
                              grads[0], equal_nan=True)


@pytest.mark.parametrize("margin", [0.0, 0.3, -2.5])
def test_bradley_terry_float_pass(simd_path, margin, rng):
    chosen, rejected = _bt_inputs(rng)
    chosen[:4] = [np.nan, np.inf, -np.inf, 1.0]
    rejected[4:6] = [np.inf, np.nan]
    _check_bradley_terry(chosen, rejected, margin, np.float64(F32(margin)))


def test_bradley_terry_margin_cancels(simd_path, rng):
    """A margin per element that cancels a large chosen - rejected: the float split's
    error term (half an ulp of chosen - rejected, up to 0.03 here) is then far beyond its
    bound next to a small z (the loss would miss by about its square), so those elements
    go back to double; zero margins in the same array take the one-TwoSum split."""
    n = 30000
    z = np.concatenate([rng.normal(0.0, 3.0, n // 2), rng.uniform(-95.0, 95.0, n // 2)])
    rejected = rng.normal(0.0, 1.0, n).astype(F32)
    chosen = (10.0 ** rng.uniform(2.0, 6.5, n) * rng.choice([-1, 1], n)).astype(F32)
    # margin: chosen - rejected - z rounded to float32, zero in one element of 7
    margin = (chosen.astype(np.float64) - rejected - z).astype(F32)
    margin[::7] = 0
    _check_bradley_terry(chosen, rejected, margin, margin.astype(np.float64))


_DPO_NAMES = ("policy_chosen", "policy_rejected", "reference_chosen", "reference_rejected")


def _check_dpo(arrays, options):
    """The loss and the four gradients within the contract of the float64 reference, and
    the forward and the gradient alone the same bits at 1 and 2 threads."""
    loss, grads = fastloss.dpo_value_and_grad(*arrays, wrt=_DPO_NAMES, **options)
    ref_loss, ref_grads = reference.dpo_value_and_grad(
        *(a.astype(np.float64) for a in arrays), wrt=_DPO_NAMES, **options)
    _each_within(loss, ref_loss, "loss")
    for grad, ref, name in zip(grads, ref_grads, _DPO_NAMES):
        _each_within(grad, ref, name)
    for threads in (1, 2):
        assert np.array_equal(fastloss.dpo(*arrays, num_threads=threads, **options), loss,
                              equal_nan=True)
        assert np.array_equal(fastloss.dpo_grad(*arrays, num_threads=threads, **options),
                              grads[0], equal_nan=True)


@pytest.mark.parametrize("beta,smoothing", [(0.1, 0.0), (0.1, 0.2), (2.0, 0.0), (2.0, 0.1),
                                            (0.5, 0.5)])
def test_dpo_sigmoid_float_pass(simd_path, beta, smoothing, rng):
    n = 40000
    reference_chosen = -rng.uniform(10.0, 300.0, n)
    reference_rejected = -rng.uniform(10.0, 300.0, n)
    # beta * logits over every scale, and where sigmoid(-beta logits) is near smoothing
    logits = np.concatenate([rng.normal(0.0, 5.0 / beta, n // 2),
                             rng.uniform(-100.0, 100.0, n // 4) / beta,
                             (np.log(1 / max(smoothing, 1e-3) - 1)
                              + rng.normal(0.0, 1e-4, n - n // 2 - n // 4)) / beta])
    policy_rejected = reference_rejected + rng.normal(0.0, 10.0, n)
    policy_chosen = policy_rejected + reference_chosen - reference_rejected + logits
    arrays = [a.astype(F32) for a in (policy_chosen, policy_rejected, reference_chosen,
                                      reference_rejected)]
    arrays[0][:2] = [np.nan, np.inf]
    _check_dpo(arrays, dict(beta=beta, label_smoothing=smoothing, reduction="none"))


def _floats_between(low, high):
    """Every float32 in [low, high] (0 < low < high)."""
    bits = np.arange(F32(low).view(np.uint32), F32(high).view(np.uint32) + 1, dtype=np.uint32)
    return bits.view(F32)


@pytest.mark.parametrize("smoothing", [0.1, 0.2])
def test_dpo_smoothed_slope_near_its_root(simd_path, smoothing, rng):
    """Every float z where dpo's smoothed slope ls - sigmoid(-z) is under a tenth of
    sigmoid(-z) (beta 1 and the other inputs 0, so z is policy_chosen exactly), and
    some further out: each within 2e-6 of the reference.  The slope cancels there, so
    logistic_narrow_element's doubt test must send back to double every element whose
    float slope would miss.  bradley_terry's float pass computes the same float
    sigmoid(-z) (z = chosen, rejected 0: lo = 0 in both), so the float slope
    fl(ls - sigmoid(-z)) is known here; it is the kernel's wherever the doubt test
    clears an element (checked where |ls - sigmoid(-z)| > 0.5 sigmoid(-z)), and the
    band holds elements that a doubt test of 0.03 sigmoid(-z) + 0.04 ls (a tenth of the
    derived 0.34, or none at all) would clear while their float slope misses 2e-6 of
    itself: with such a test the check fails."""
    def root(sigmoid_minus):  # z where sigmoid(-z) is sigmoid_minus
        return np.log(1 / sigmoid_minus - 1)

    near = _floats_between(root(smoothing * 1.1), root(smoothing * 0.9))
    far = np.concatenate([rng.uniform(root(smoothing * 3), root(smoothing * 2.5), 5000),
                          rng.uniform(root(smoothing * 0.5), root(smoothing * 0.25), 5000)])
    z = np.concatenate([near, far.astype(F32)])
    zeros = np.zeros_like(z)
    options = dict(beta=1.0, label_smoothing=smoothing, reduction="none")
    _check_dpo([z, zeros, zeros, zeros], options)

    sigmoid_float = -fastloss.bradley_terry_grad(z, zeros, reduction="none")
    slope_float = (F32(smoothing) - sigmoid_float).astype(np.float64)
    sigmoid_exact = np.exp(-np.logaddexp(0.0, z.astype(np.float64)))
    slope_exact = smoothing - sigmoid_exact
    clear = np.abs(slope_float) > 0.5 * sigmoid_float
    assert clear.sum() >= 9000
    assert np.array_equal(fastloss.dpo_grad(z, zeros, zeros, zeros, **options)[clear],
                          slope_float[clear].astype(F32))
    misses = np.abs(slope_float - slope_exact) > 2e-6 * np.abs(slope_exact)
    loose_clears = np.abs(slope_float) >= 0.03 * sigmoid_float + 0.04 * F32(smoothing)
    assert np.any(misses & loose_clears)


@pytest.mark.parametrize("beta", [0.1, 3.0])
def test_dpo_large_differences(simd_path, beta, rng):
    """Log-probability differences from 1e3 to 1e12 whose policy and reference parts
    cancel to a moderate z: the float split's error terms (half an ulp of each
    difference) go beyond their bounds there, and those elements back to double."""
    n = 20000
    big = 10.0 ** rng.uniform(3.0, 12.0, n)
    logits = rng.normal(0.0, 5.0 / beta, n)
    policy_rejected = -rng.uniform(10.0, 300.0, n)
    reference_rejected = -rng.uniform(10.0, 300.0, n)
    policy_chosen = policy_rejected - big
    reference_chosen = reference_rejected - big - logits
    arrays = [a.astype(F32) for a in (policy_chosen, policy_rejected, reference_chosen,
                                      reference_rejected)]
    _check_dpo(arrays, dict(beta=beta, reduction="none"))


@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div_float_pass(simd_path, log_target, rng):
    n = 30000
    log_t = np.concatenate([np.log(rng.dirichlet(np.full(50, 0.2), n // 50).reshape(-1)),
                            rng.uniform(-100.0, 0.0, n), rng.uniform(80.0, 95.0, 100)])
    log_t = np.maximum(log_t, -700.0)
    # input: unrelated, or log(target) moved by relative amounts from 1e-9 to 1e-1
    near = log_t * (1 + rng.choice([-1, 1], log_t.size) * 10.0 ** rng.uniform(-8, -1, log_t.size))
    x = np.where(rng.uniform(size=log_t.size) < 0.5, near, rng.uniform(-20.0, 0.0, log_t.size))
    if log_target:
        target = log_t.astype(F32)
    else:
        target = np.exp(log_t).astype(F32)  # subnormal and zero targets included
        target[:3] = [-0.5, np.nan, np.inf]
    x = x.astype(F32)
    x[3:5] = [np.inf, -np.inf]
    options = dict(log_target=log_target, reduction="none")
    loss, grads = fastloss.kl_div_value_and_grad(x, target, wrt=("input", "target"), **options)
    ref_loss, ref_grads = reference.kl_div_value_and_grad(
        x.astype(np.float64), target.astype(np.float64), wrt=("input", "target"), **options)
    if not log_target:
        # where log(target) and input agree to 1e-8 the double form's log, about 1 ulp
        # (fastmath.h), is no longer within 2e-6 of their difference: the limit of the
        # double path every element in doubt goes to, not of the float32 pass
        with np.errstate(all="ignore"):
            log_target_64 = np.log(target.astype(np.float64))
            agree = np.abs(log_target_64 - x) < 1e-8 * np.abs(log_target_64)
        assert agree.mean() < 0.01
        keep = ~agree
        _each_within(loss[keep], ref_loss[keep], "loss")
    else:
        _each_within(loss, ref_loss, "loss")
    _each_within(grads[0], ref_grads[0], "grad input")
    _each_within(grads[1], ref_grads[1], "grad target")
    for threads in (1, 2):
        assert np.array_equal(fastloss.kl_div(x, target, num_threads=threads, **options), loss,
                              equal_nan=True)
        assert np.array_equal(fastloss.kl_div_grad(x, target, num_threads=threads, **options),
                              grads[0], equal_nan=True)
