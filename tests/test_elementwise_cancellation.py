"""The float32 sum whose terms cancel (csrc/elementwise.c's numerical policy, step 2 and 3).

Each float32 term of an elementwise loss is within about 5e-7 of itself, so the float32
sum is within 5e-7 of the terms' magnitude, sum |term|; where terms of both signs cancel
below half of it, the C entry computes the sum again with every term in double, from the
same float32 arrays (no float64 copy: test_memory.py measures that), and where the
gradient overwrites an input it takes the loss first. These cases cancel to about 1e-6
of the magnitude, so the float32 sum alone misses the contract by far (each case
checks that it does); the loss must still meet it, on every SIMD path, for every entry
point, in place over pred and over target, and for any number of threads.
"""
import math

import numpy as np
import pytest

import fastloss
import fastloss.reference as reference
from fastloss import _kernels, _registry
from loss_specs import assert_close_contract

#: three reduction blocks and a ragged one (csrc/elementwise_internal.h)
N = 3 * 16384 + 1000
F32 = np.float32
#: what each case leaves of the terms' magnitude: deep enough that the rounding of one
#: float32 term misses the contract by far, not so deep that double's own rounding of the
#: terms (1e-16 of the magnitude) comes near it
LEFT = 1e-6


def _rest(function, arrays, **options):
    """(sum, sum of |term|) of the reference over all elements but the last."""
    rest = [array[..., :-1] if array.ndim else array for array in arrays]
    terms = function(*rest, reduction="none", **options)
    return float(np.sum(terms)), float(np.sum(np.abs(terms)))


def _solve_last(total, lo, hi):
    """The x in [lo, hi] where the increasing or decreasing ``total(x)`` crosses 0, by
    bisection in float64, rounded to float32."""
    f_lo = total(lo)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if (total(mid) > 0) == (f_lo > 0):
            lo = mid
        else:
            hi = mid
    return F32(0.5 * (lo + hi))


def mse_weights(rng):
    # every weight positive but the last, which takes back the sum of all the others
    pred = rng.uniform(0.5, 2.0, N).astype(F32)
    target = np.zeros(N, F32)
    weight = rng.uniform(0.5, 1.5, N).astype(F32)
    rest = float(np.sum(pred[:-1].astype(np.float64) ** 2 * weight[:-1]))
    weight[-1] = F32(-rest * (1 - LEFT) / float(pred[-1]) ** 2)
    return "mse", (pred, target), {"weight": weight}


def bce_target_outside(rng):
    # a target above 1 makes a negative term with no weight: the last one, at x = 50 where
    # the loss is (1 - y) x, takes back the sum of all the others
    x = rng.standard_normal(N).astype(F32)
    y = rng.uniform(0, 1, N).astype(F32)
    x[-1] = 50.0
    rest, magnitude = _rest(reference.bce_with_logits, (x, y))
    y[-1] = F32(1 + (rest - LEFT * magnitude) / 50.0)
    return "bce_with_logits", (x, y), {}


def bce_signed_class_weight(rng):
    # per-class weights of both signs with a pos_weight: the last class's weight cancels
    x = rng.standard_normal((N // 8, 8)).astype(F32) * 2
    y = rng.uniform(0, 1, (N // 8, 8)).astype(F32)
    pos_weight = np.linspace(0.5, 2.0, 8).astype(F32)
    weight = np.ones(8, F32)
    per_class = reference.bce_with_logits(x, y, pos_weight=pos_weight,
                                          reduction="none").sum(axis=0)
    weight[-1] = F32(-per_class[:-1].sum() / per_class[-1] * (1 - LEFT))
    return "bce_with_logits", (x, y), {"weight": weight, "pos_weight": pos_weight}


def _focal_last(x, y, options, last_x, last_y, lo, hi):
    """Solve sigmoid_focal's last logit (last_x None) or label (last_y None) in [lo, hi]."""
    rest, magnitude = _rest(reference.sigmoid_focal, (x, y), **options)

    def total(value):
        logit, label = (value, last_y) if last_x is None else (last_x, value)
        return rest - LEFT * magnitude + reference.sigmoid_focal(
            np.array([logit]), np.array([label]), reduction="sum", **options)
    return _solve_last(total, lo, hi)


def focal_alpha_above_one(rng):
    # alpha 2: alpha_t = 3 y - 1 is -1 for the negatives, 2 for the positives; one
    # positive's logit is chosen so that they cancel
    x = rng.standard_normal(N).astype(F32)
    y = (rng.random(N) < 0.1).astype(F32)
    y[-1] = 1.0
    options = {"alpha": 2.0, "gamma": 2.0}
    x[-1] = _focal_last(x, y, options, None, 1.0, -1e6, 0.0)
    return "sigmoid_focal", (x, y), options


def focal_target_outside(rng):
    # a target above 1 at a large logit makes a negative term, about (1 - y)**3 x (no
    # class balance: alpha < 0)
    x = rng.standard_normal(N).astype(F32)
    y = rng.uniform(0, 1, N).astype(F32)
    x[-1] = 40.0
    options = {"alpha": -1.0, "gamma": 2.0}
    y[-1] = _focal_last(x, y, options, 40.0, None, 1.0, 1e3)
    return "sigmoid_focal", (x, y), options


def poisson_signed(rng):
    # exp(x) - y x has either sign; the last count takes back the sum of the others
    x = rng.standard_normal(N).astype(F32)
    y = rng.poisson(np.exp(x)).astype(F32)
    x[-1] = 2.0
    rest, magnitude = _rest(reference.poisson_nll, (x, y))
    y[-1] = F32((np.exp(2.0) + rest - LEFT * magnitude) / 2.0)
    return "poisson_nll", (x, y), {}


def gaussian_signed(rng):
    # small variances and residuals make 0.5 (log v + r**2 / v) negative; the last
    # residual, at v = 1, takes it back
    x = rng.standard_normal(N).astype(F32)
    var = rng.uniform(0.01, 0.1, N).astype(F32)
    t = (x + rng.standard_normal(N).astype(F32) * 0.05).astype(F32)
    var[-1] = 1.0
    rest, magnitude = _rest(reference.gaussian_nll, (x, t, var))
    t[-1] = F32(float(x[-1]) - np.sqrt(2.0 * (LEFT * magnitude - rest)))
    return "gaussian_nll", (x, t, var), {}


CASES = [mse_weights, bce_target_outside, bce_signed_class_weight, focal_alpha_above_one,
         focal_target_outside, poisson_signed, gaussian_signed]
case_param = pytest.mark.parametrize("make", CASES, ids=lambda make: make.__name__)


def functions(name):
    return (getattr(fastloss, name), getattr(fastloss, f"{name}_value_and_grad"),
            getattr(reference, name), getattr(reference, f"{name}_grad"))


def check_cancels(name, arrays, options):
    """The case cancels: the float32 terms (the kernel's own, reduction none) summed in
    float64 miss the contract, and the reference sum is below 1e-4 of the magnitude (about
    LEFT of it)."""
    value, _, ref_value, _ = functions(name)
    ref = ref_value(*arrays, reduction="sum", **options)
    terms = value(*arrays, reduction="none", **options).astype(np.float64)
    magnitude = np.abs(ref_value(*arrays, reduction="none", **options)).sum()
    assert abs(ref) < 1e-4 * magnitude, f"{name}: the case no longer cancels"
    with pytest.raises(AssertionError):
        assert_close_contract(terms.sum(), ref, F32, "loss")


def cancelling_case(make, rng, check, reduction, simd_path):
    """A case of ``make``, checked to cancel by ``check``: (name, arrays, options, the
    public value and fused functions, the reference's loss and gradient, copies of the
    arrays, a label)."""
    name, arrays, options = make(rng)
    check(name, arrays, options)
    value, fused, ref_value, ref_grad = functions(name)
    ref = ref_value(*arrays, reduction=reduction, **options)
    ref_g = ref_grad(*arrays, reduction=reduction, **options)
    copies = [array.copy() for array in arrays]
    return (name, arrays, options, value, fused, ref, ref_g, copies,
            f"{name} {reduction} {simd_path}")


def check_in_place(fused, arrays, reduction, options, grad, what, check_loss):
    """The fused call in place over pred, and over target: the loss (``check_loss``) is
    taken before they are overwritten, and the gradient is ``grad``."""
    for index in (0, 1):
        inputs = [array.copy() for array in arrays]
        loss, in_place = fused(*inputs, reduction=reduction, out=inputs[index], **options)
        assert in_place is inputs[index]
        where = f"{what}: in place over {('pred', 'target')[index]}"
        check_loss(loss, where)
        assert np.array_equal(in_place, grad), f"{where}: gradient"


@case_param
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_cancelling_float32_loss_meets_the_contract(simd_path, make, reduction, rng):
    name, arrays, options, value, fused, ref, ref_g, copies, what = cancelling_case(
        make, rng, check_cancels, reduction, simd_path)
    assert_close_contract(value(*arrays, reduction=reduction, **options), ref, F32, "loss",
                          f"{what}: forward")
    out = np.empty_like(arrays[0])
    loss, grad = fused(*arrays, reduction=reduction, out=out, **options)
    assert grad is out
    assert_close_contract(loss, ref, F32, "loss", f"{what}: fused")
    assert_close_contract(grad, ref_g, F32, "grad", f"{what}: fused gradient")
    for array, copy in zip(arrays, copies):  # the redo read the inputs, wrote nothing
        assert np.array_equal(array, copy)
    check_in_place(fused, arrays, reduction, options, grad, what,
                   lambda loss, where: assert_close_contract(loss, ref, F32, "loss", where))


@case_param
def test_the_kernel_redoes_the_sum_itself(make, rng):
    # ew_run returns the redone sum beside the terms' magnitude: the Python layer takes the
    # sum as it is, and the kernel's own answer meets the contract (in place too)
    name, arrays, options = make(rng)
    ref = functions(name)[2](*arrays, reduction="sum", **options)
    value, _, _, _ = functions(name)
    for threads in (1, 3):
        loss = value(*arrays, reduction="sum", num_threads=threads, **options)
        if threads == 1:
            first = loss
        assert loss == first, f"{name}: {threads} threads changed the redone sum"
    entry = _registry.LOSSES[name]
    checked = {option.name: option.checked(options.get(option.name, option.default))
               for option in entry.options}
    params = entry.params(checked) if entry.params else ()
    flat = [np.ascontiguousarray(array).reshape(-1) for array in arrays]
    weight = options.get("weight")
    factor = options.get(entry.factor) if entry.factor else None
    extra = {"aux": flat[2]} if len(flat) > 2 else {}
    total, magnitude = _kernels.ew_run("forward", entry.kernel, flat[0], flat[1], weight,
                                       factor, None, None, None, params, "sum", 1, **extra)
    assert abs(total) < 0.5 * magnitude  # below the policy's line: the redo ran
    assert_close_contract(total, ref, F32, "loss", f"{name}: ew_run")
    assert float(F32(total)) == first  # the public function's value, rounded to float32
    upstream = np.ones(1)
    grad = flat[0].copy()
    total_in_place, _ = _kernels.ew_run("value_and_grad", entry.kernel, grad, flat[1],
                                        weight, factor, upstream, None, grad, params, "sum",
                                        1, **extra)
    assert total_in_place == total, f"{name}: in place, the loss after the overwrite"


# ----------------------------------------------------------------------------------------
# float64: the compensated redo
# ----------------------------------------------------------------------------------------
#
# A double sum of n terms is within about n u sum |term| of their exact sum: no bound
# relative to a sum that cancelled. Where the float64 terms cancel below half their
# magnitude, the C entry sums them again compensated (within u |sum| + (n u)**2 sum |term|),
# and the reference sums them exactly (math.fsum). These cases cancel to 1e-10 of the
# magnitude, where a double sum misses the contract's 1e-12 by far; their terms take only
# exactly rounded operations (a difference, a product), which the kernels and the
# reference round alike, so that the two sums are of the same terms.

#: what each float64 case leaves of the terms' magnitude
LEFT64 = 1e-10
F64 = np.float64


def _take_back(terms, weight):
    """The last weight set so that the weighted terms leave LEFT64 of the others' sum."""
    rest = math.fsum(terms[:-1] * weight[:-1])
    weight[-1] = -rest * (1 - LEFT64) / terms[-1]
    return weight


def mse_weights_float64(rng):
    # every weight positive but the last: a weighted mean whose weights sum to no zero
    pred = rng.uniform(0.5, 2.0, N)
    weight = _take_back(pred**2, rng.uniform(0.5, 1.5, N))
    return "mse", (pred, np.zeros(N)), {"weight": weight}


def l1_signed_weights_float64(rng):
    # weights of both signs at random, as the fuzz run drew them
    pred, target = rng.standard_normal(N), rng.standard_normal(N)
    weight = _take_back(np.abs(pred - target), rng.uniform(-5.0, 5.0, N))
    return "l1", (pred, target), {"weight": weight}


def smooth_l1_beta_0_float64(rng):
    # the fuzz run's case (seed 2590642273): smooth_l1 with beta 0, a weight of both
    # signs over 40000 elements, whose mean 7.7e-5 of a magnitude of 8.1 missed by 1.6e-12
    # of itself; here cancelled deeper
    pred, target = rng.standard_normal(N), rng.standard_normal(N)
    weight = _take_back(np.abs(pred - target), rng.uniform(-5.0, 5.0, N))
    return "smooth_l1", (pred, target), {"weight": weight, "beta": 0.0}


CASES64 = [mse_weights_float64, l1_signed_weights_float64, smooth_l1_beta_0_float64]
case64_param = pytest.mark.parametrize("make", CASES64, ids=lambda make: make.__name__)


def check_cancels_float64(name, arrays, options):
    """The case cancels: the reference's sum is below 1e-8 of the magnitude, and the
    kernel's own terms (reduction none) summed in double miss the contract."""
    value, _, ref_value, _ = functions(name)
    ref = ref_value(*arrays, reduction="sum", **options)
    terms = value(*arrays, reduction="none", **options)
    magnitude = np.abs(terms).sum()
    assert abs(ref) < 1e-8 * magnitude, f"{name}: the case no longer cancels"
    with pytest.raises(AssertionError):
        assert_close_contract(np.sum(terms), ref, F64, "loss")
    with pytest.raises(AssertionError):
        assert_close_contract(sum(terms.tolist()), ref, F64, "loss")


@case64_param
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_cancelling_float64_loss_meets_the_contract(simd_path, make, reduction, rng):
    name, arrays, options, value, fused, ref, ref_g, copies, what = cancelling_case(
        make, rng, check_cancels_float64, reduction, simd_path)
    loss = value(*arrays, reduction=reduction, **options)
    assert_close_contract(loss, ref, F64, "loss", f"{what}: forward")
    for threads in (1, 3):
        assert value(*arrays, reduction=reduction, num_threads=threads, **options) == loss
    out = np.empty_like(arrays[0])
    fused_loss, grad = fused(*arrays, reduction=reduction, out=out, **options)
    assert grad is out and fused_loss == loss
    assert_close_contract(grad, ref_g, F64, "grad", f"{what}: fused gradient")
    for array, copy in zip(arrays, copies):  # the redo read the inputs, wrote nothing
        assert np.array_equal(array, copy)

    def same_loss(in_place_loss, where):
        assert in_place_loss == loss, where
    check_in_place(fused, arrays, reduction, options, grad, what, same_loss)


def test_a_cancelling_weight_sum_of_the_weighted_mean(rng):
    """mse's and l1's mean divides by the sum of the weight (torch's weighted mean), which
    a weight of both signs can cancel as the terms can: the kernel sums it compensated,
    the reference exactly, and the weight's gradient takes it (and the weighted sum)
    exactly where it cancels."""
    pred = rng.standard_normal(N)
    target = rng.standard_normal(N)
    weight = rng.uniform(-5.0, 5.0, N)
    weight[-1] = -math.fsum(weight[:-1]) * (1 - LEFT64)
    total = math.fsum(weight)
    assert abs(total) < 1e-8 * np.abs(weight).sum()
    with pytest.raises(AssertionError):  # a double sum of the weight misses
        assert_close_contract(sum(weight.tolist()), total, F64, "loss")
    for name in ("mse", "l1"):
        value, fused, ref_value, _ = functions(name)
        ref = ref_value(pred, target, weight=weight, reduction="mean")
        assert_close_contract(value(pred, target, weight=weight, reduction="mean"), ref, F64,
                              "loss", name)
        # the weight's gradient, grad_output (l W - S / R) / W**2, takes both sums too
        _, grad = fused(pred, target, weight=weight, reduction="mean", wrt="weight")
        _, ref_grad = getattr(reference, f"{name}_value_and_grad")(
            pred, target, weight=weight, reduction="mean", wrt="weight")
        assert_close_contract(grad, ref_grad, F64, "grad", f"{name}: the weight's gradient")
