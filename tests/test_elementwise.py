"""The elementwise losses (mse, l1, huber, smooth_l1, bce_with_logits and, through the
registry's generic tests, every other elementwise entry): the points
known by hand (kinks, boundaries, extreme logits), NaN and inf, empty and 0-d inputs,
broadcasting and dtype promotion, layouts and ``out=``, finite differences, the float64
reference itself, and parity with torch.

The generic parity tests (every function x case x dtype x reduction against the
reference) run from the spec table (loss_specs.ELEMENTWISE_SPECS) in test_cross_entropy.py.
Every fastloss call that takes arrays the test keeps goes through ``call_unmodified``.
"""

import warnings

import numpy as np
import pytest

import fastloss
from fastloss import reference
from loss_specs import (
    DTYPES,
    CONTRACT,
    ELEMENTWISE_SPECS,
    REDUCTIONS,
    Tolerance,
    assert_array_type,
    assert_close,
    assert_close_contract,
    assert_loss_type,
    bitwise_equal,
    call_unmodified,
    central_differences,
    declared_params,
    dtype_id,
    make_binary_inputs,
    make_regression_inputs,
    reference_loss_shape,
)

dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
reductions = pytest.mark.parametrize("reduction", REDUCTIONS)
specs = pytest.mark.parametrize("spec", ELEMENTWISE_SPECS, ids=str)

NAMES = ("mse", "l1", "huber", "smooth_l1", "bce_with_logits")
REGRESSION_NAMES = NAMES[:4]


def functions(name, module=fastloss):
    return (getattr(module, name), getattr(module, f"{name}_grad"),
            getattr(module, f"{name}_value_and_grad"))


# Every option layout the makers draw: each entry keeps those it declares
# (loss_specs.declared_params): weight, bce's pos_weight and pinball's quantile per class.
FACTORS = {"weight": "class", "pos_weight": "class", "quantile": "class"}


def check_against_reference(name, pred, *others, reductions=REDUCTIONS, dtype=None,
                            **options):
    """Every entry point of ``name`` against the reference for each reduction: values,
    types, shapes and the contract for ``dtype`` (default: pred's). ``others`` are the
    loss's other inputs (target, and a third where the loss has one)."""
    value, grad_fn, fused = functions(name)
    ref_value, ref_grad, _ = functions(name, reference)
    pred_array = np.asarray(pred)
    dtype = np.dtype(dtype or pred_array.dtype)
    # a gradient computed in float64 for a float32 pred is rounded to float32
    grad_dtype = np.float32 if np.float32 in (dtype, pred_array.dtype) else np.float64
    arrays = (pred, *others)
    shape = reference_loss_shape(name, arrays, options)
    for reduction in reductions:
        opts = dict(options, reduction=reduction)
        upstream = (np.linspace(-1.5, 2.0, int(np.prod(shape))).reshape(shape)
                    if reduction == "none" else 0.75)
        expected_loss = ref_value(*arrays, **opts)
        expected_grad = ref_grad(*arrays, upstream, **opts)
        loss = call_unmodified(value, *arrays, **opts)
        assert_loss_type(loss, dtype, reduction, shape)
        assert_close_contract(loss, expected_loss, dtype, "loss", what=f"{name} {reduction}")
        grad = call_unmodified(grad_fn, *arrays, upstream, **opts)
        assert_array_type(grad, pred_array.dtype, pred_array.shape)
        assert_close_contract(grad, expected_grad, grad_dtype, "grad",
                              what=f"{name}_grad {reduction}")
        fused_loss, fused_grad = call_unmodified(fused, *arrays, upstream, **opts)
        assert_loss_type(fused_loss, dtype, reduction, shape)
        assert_array_type(fused_grad, pred_array.dtype, pred_array.shape)
        # The fused loop and the separate ones may round an element of a loop's scalar
        # remainder differently (gcc's FMA contraction): they agree to the contract.
        assert_close_contract(fused_loss, expected_loss, dtype, "loss",
                              what=f"{name}_value_and_grad loss {reduction}")
        assert_close_contract(fused_grad, expected_grad, grad_dtype, "grad",
                              what=f"{name}_value_and_grad grad {reduction}")
        assert_close_contract(fused_loss, loss, dtype, "loss", what="fused vs value")
        assert_close_contract(fused_grad, grad, grad_dtype, "grad", what="fused vs grad")


# ----------------------------------------------------------------------------------------
# Points known by hand: kinks and boundaries, exactly
# ----------------------------------------------------------------------------------------

@dtypes
@pytest.mark.parametrize("delta", [1.0, 0.5, 2.0])
def test_huber_at_the_boundary(delta, dtype):
    # |r| == delta sits on the linear piece (torch: |r| < delta is quadratic); both pieces
    # are 0.5 delta**2 there, and the slope is +-delta from either side.
    target = np.zeros(6, dtype)
    pred = np.array([delta, -delta, 0.0, delta / 2, 3 * delta, -3 * delta], dtype)
    loss = call_unmodified(fastloss.huber, pred, target, delta=delta, reduction="none")
    expected = [0.5 * delta**2, 0.5 * delta**2, 0.0, delta**2 / 8, 2.5 * delta**2,
                2.5 * delta**2]
    np.testing.assert_array_equal(loss, np.array(expected, dtype))
    grad = fastloss.huber_grad(pred, target, delta=delta, reduction="sum")
    np.testing.assert_array_equal(grad, np.array([delta, -delta, 0, delta / 2, delta, -delta],
                                                 dtype))


@dtypes
@pytest.mark.parametrize("beta", [1.0, 0.5, 4.0])
def test_smooth_l1_at_the_boundary(beta, dtype):
    target = np.zeros(5, dtype)
    pred = np.array([beta, -beta, 0.0, beta / 2, -2 * beta], dtype)
    loss, grad = call_unmodified(fastloss.smooth_l1_value_and_grad, pred, target, beta=beta,
                                 reduction="none")
    np.testing.assert_array_equal(loss, np.array([beta / 2, beta / 2, 0, beta / 8, 1.5 * beta],
                                                 dtype))
    np.testing.assert_array_equal(grad, np.array([1, -1, 0, 0.5, -1], dtype))


@dtypes
@reductions
def test_smooth_l1_with_beta_zero_is_l1_bit_for_bit(reduction, dtype, rng):
    (pred, target), _ = make_regression_inputs(rng, dtype, {}, (41, 13))
    pred[0, :5] = target[0, :5]  # r == 0
    # torch's l1_loss divides a weighted mean by sum(w); smooth_l1_loss has no weight and
    # ours, like huber_loss, divides by the count: so the weighted means differ on purpose
    weight = None if reduction == "mean" else rng.uniform(0.5, 2.0, 13).astype(dtype)
    upstream = rng.standard_normal((41, 13)) if reduction == "none" else 0.5
    for name in ("", "_grad", "_value_and_grad"):
        args = (pred, target) if not name else (pred, target, upstream)
        l1 = getattr(fastloss, "l1" + name)(*args, weight=weight, reduction=reduction)
        smooth = getattr(fastloss, "smooth_l1" + name)(*args, beta=0.0, weight=weight,
                                                        reduction=reduction)
        for a, b in zip(l1 if name == "_value_and_grad" else [l1],
                        smooth if name == "_value_and_grad" else [smooth]):
            assert bitwise_equal(np.asarray(a), np.asarray(b)), name


def test_smooth_l1_with_a_beta_below_float32_is_l1():
    # 1e-46 rounds to 0 in float32: the float32 kernel is then l1 (the limit beta -> 0),
    # not r / 0, which is NaN at r = 0.
    pred = np.array([0.0, 1.0, -2.0, 0.5], np.float32)
    target = np.array([0.0, 0.5, 0.0, 0.5], np.float32)
    loss, grad = fastloss.smooth_l1_value_and_grad(pred, target, beta=1e-46, reduction="none")
    np.testing.assert_array_equal(loss, np.abs(pred - target))
    np.testing.assert_array_equal(grad, np.array([0, 1, -1, 0], np.float32))


@dtypes
def test_l1_gradient_at_zero_is_zero(dtype):
    pred = np.array([0.0, -0.0, 1.5, -2.5, 3.0], dtype)
    target = np.array([0.0, 0.0, 1.5, -2.5, 1.0], dtype)
    grad = fastloss.l1_grad(pred, target, reduction="sum")
    np.testing.assert_array_equal(grad, np.array([0, 0, 0, 0, 1], dtype))
    assert fastloss.l1(pred, target, reduction="sum") == 2.0


@dtypes
def test_mse_by_hand(dtype):
    pred = np.array([[1.0, 2.0], [3.0, 5.0]], dtype)
    target = np.array([[1.0, 0.0], [4.0, 1.0]], dtype)
    assert fastloss.mse(pred, target) == (0 + 4 + 1 + 16) / 4
    assert fastloss.mse(pred, target, reduction="sum") == 21.0
    np.testing.assert_array_equal(fastloss.mse_grad(pred, target, 2.0, reduction="sum"),
                                  np.array([[0, 8], [-4, 16]], dtype))
    np.testing.assert_array_equal(fastloss.mse_grad(pred, target),
                                  np.array([[0, 1], [-0.5, 2]], dtype))


@dtypes
def test_bce_by_hand(dtype):
    # x = 0: loss log 2 whatever y; slope 1/2 - y.
    logits = np.zeros(3, dtype)
    target = np.array([0.0, 1.0, 0.25], dtype)
    loss, grad = fastloss.bce_with_logits_value_and_grad(logits, target, reduction="none")
    assert_close_contract(loss, np.full(3, np.log(2.0)), dtype, "loss")
    np.testing.assert_array_equal(grad, np.array([0.5, -0.5, 0.25], dtype))
    # pos_weight p scales the positive term: y = 1 gives p * log(1 + e^-x).
    loss = fastloss.bce_with_logits(np.array([[1.0, -2.0]], dtype), np.array([[1.0, 1.0]], dtype),
                                    pos_weight=np.array([3.0, 0.5], dtype), reduction="none")
    assert_close_contract(loss, [[3 * np.log1p(np.exp(-1.0)), 0.5 * np.log1p(np.exp(2.0))]],
                          dtype, "loss")


# ----------------------------------------------------------------------------------------
# Extreme logits, NaN and inf
# ----------------------------------------------------------------------------------------

@dtypes
@pytest.mark.parametrize("with_pos_weight", [False, True], ids=["plain", "pos_weight"])
def test_bce_extreme_logits_are_exact(with_pos_weight, dtype):
    x = np.array([[1000.0, -1000.0, 1000.0, -1000.0, 1000.0, -1000.0, 100.0, -100.0]], dtype)
    y = np.array([[0.0, 0.0, 1.0, 1.0, 0.3, 0.3, 0.0, 1.0]], dtype)
    p = np.full(8, 2.0 if with_pos_weight else 1.0, dtype)
    options = {"pos_weight": p} if with_pos_weight else {}
    loss, grad = call_unmodified(fastloss.bce_with_logits_value_and_grad, x, y,
                                 reduction="none", **options)
    yd, pd = y.astype(np.float64), p.astype(np.float64)
    # loss: (1 - y) x for x > 0, -p y x for x < 0 (the softplus term underflows to 0 at
    # |x| = 1000 in both dtypes; at 100 it is e^-100, below float32's and 1e-14 * max).
    expected = np.where(x > 0, (1 - yd) * x, -pd * yd * x)
    assert np.all(np.isfinite(loss))
    assert_close_contract(loss, expected, dtype, "loss")
    # slope: (1 + (p - 1) y) sigmoid(x) - p y with sigmoid = 1 or 0
    sigmoid = (x > 0).astype(np.float64)
    assert_close_contract(grad, (1 + (pd - 1) * yd) * sigmoid - pd * yd, dtype, "grad")
    assert_close_contract(loss, reference.bce_with_logits(x, y, reduction="none", **options),
                          dtype, "loss")


@dtypes
@pytest.mark.parametrize("scale", [10.0, 30.0, 80.0])
def test_bce_tiny_losses_keep_their_relative_accuracy(scale, dtype, rng):
    # Correctly classified logits: the loss is log1p(e^-|x|) alone, far below |x|; no
    # large terms may cancel (torch's own form loses these in float32).
    x = (rng.uniform(0.5, 1.0, 64) * scale).astype(dtype) * np.where(np.arange(64) % 2, 1, -1)
    y = (x > 0).astype(dtype)
    loss = fastloss.bce_with_logits(x, y, reduction="none")
    assert_close_contract(loss, reference.bce_with_logits(x, y, reduction="none"), dtype, "loss")
    assert np.all(loss > 0)


def per_element_contract(dtype):
    """The gradient contract with no floor: what a call on each element alone demands,
    for an array whose slopes are all small (no large entry lends them its floor)."""
    rtol = CONTRACT[(np.dtype(dtype), "grad")].rtol
    return Tolerance(rtol, 0.0, "each element as if it were the whole array")


@dtypes
def test_bce_hard_label_slopes_keep_their_relative_accuracy(dtype):
    # sigmoid(x) - 1 for x >> 0 is -e^-x / (1 + e^-x): computed as (1 - y) - q it keeps
    # q's relative accuracy; sigmoid(x) - y would round to 0 (float32 at x = 17,
    # float64 at x = 40), as torch's own form does.
    x = np.array([5.0, 10.0, 17.0, 40.0, 80.0, -5.0, -17.0, -40.0], dtype)
    y = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0], dtype)
    xd = x.astype(np.float64)
    expected = np.where(xd > 0, -np.exp(-xd) / (1 + np.exp(-xd)),
                        np.exp(xd) / (1 + np.exp(xd)))
    assert_close(reference.bce_with_logits_grad(x, y, reduction="sum"), expected,
                 per_element_contract(np.float64))
    for with_pos_weight in (False, True):
        options = {"pos_weight": np.ones(8, dtype)} if with_pos_weight else {}
        grad = call_unmodified(fastloss.bce_with_logits_grad, x, y, reduction="sum",
                               **options)
        assert_close(grad, expected, per_element_contract(dtype))
        _, fused = fastloss.bce_with_logits_value_and_grad(x, y, reduction="sum", **options)
        assert bitwise_equal(fused, grad)


@dtypes
@pytest.mark.parametrize("with_pos_weight", [False, True], ids=["plain", "pos_weight"])
def test_bce_soft_label_slopes_near_convergence(with_pos_weight, dtype, rng):
    # Soft targets close to the prediction: sigmoid(x) and y agree in their leading
    # bits and the slope is what is left.  Found by the long fuzz run: x = 0.5671601,
    # y = 0.6369617 (float32) gave 0.0011459589 against 0.0011459334 (2.2e-5 relative).
    # The closest case is the target rounded from the prediction itself (distillation
    # of a float32 sigmoid): the slope is that rounding's residual, about 1e-8.
    # float64 against its float64 reference: both round sigmoid(x) to double before the
    # subtraction, so they can only agree to 1e-12 where the slope keeps 1e-3 of it.
    n = 4096
    closest = -7 if dtype == np.float32 else -3
    x = rng.uniform(-8, 8, n)
    pos = rng.uniform(0.5, 3.0, n) if with_pos_weight else np.ones(n)
    # the target at which the slope vanishes: w sigmoid = p y  <=>  y = s / (p - (p - 1) s)
    s = 1 / (1 + np.exp(-x))
    fixed_point = s / (pos - (pos - 1) * s)
    gap = np.concatenate([[0.0], rng.choice([-1, 1], n - 1) * 10.0 ** rng.uniform(closest, -2, n - 1)])
    x = x.astype(dtype)
    x[0], y0 = 0.5671601, 0.6369617
    y = (fixed_point * (1 + gap)).astype(dtype)
    y[0] = y0
    options = {"pos_weight": pos.astype(dtype)} if with_pos_weight else {}
    if with_pos_weight:
        options["pos_weight"][0] = 1.0
    ref = reference.bce_with_logits_grad(x, y, reduction="sum", **options)
    grad = call_unmodified(fastloss.bce_with_logits_grad, x, y, reduction="sum", **options)
    assert_close(grad, ref, per_element_contract(dtype))
    loss, fused = fastloss.bce_with_logits_value_and_grad(x, y, reduction="sum", **options)
    assert bitwise_equal(fused, grad)
    assert_close_contract(loss, reference.bce_with_logits(x, y, reduction="sum", **options),
                          dtype, "loss")
    if dtype != np.float32:
        return
    # the same targets rounded from float32 sigmoids: residuals of ~1e-8
    y_rounded = (s / (pos - (pos - 1) * s)).astype(dtype)
    grad = fastloss.bce_with_logits_grad(x, y_rounded, reduction="sum", **options)
    ref = reference.bce_with_logits_grad(x, y_rounded, reduction="sum", **options)
    assert_close(grad, ref, per_element_contract(dtype))


def test_bce_float32_slope_paths_mix_within_a_block(rng):
    # Hard labels stay on the float32 path; a soft label near convergence sends its tile
    # (and the rest of its block) to double.  Soft labels scattered through hard ones,
    # over several blocks and threads: the same bits for every thread count, each slope
    # to the per-element contract.
    n = 3 * 16384 + 1000
    x = rng.standard_normal(n).astype(np.float32) * 4
    y = (rng.random(n) < 0.5).astype(np.float32)
    soft = rng.choice(n, 40, replace=False)
    y[soft] = (1 / (1 + np.exp(-x[soft].astype(np.float64))) + 1e-5).astype(np.float32)
    ref = reference.bce_with_logits_grad(x, y, reduction="sum")
    results = [fastloss.bce_with_logits_value_and_grad(x, y, reduction="sum", num_threads=t)
               for t in (1, 2, 3, 7)]
    for loss, grad in results:
        assert loss == results[0][0]
        assert bitwise_equal(grad, results[0][1])
    assert_close(results[0][1], ref, per_element_contract(np.float32))


# Found by the long fuzz run: weights of both signs whose terms cancel to 1/200 of their
# magnitude; float32 terms (each within an ulp or so) summed to 5e-6 of the result.
CANCELLING_BCE = dict(
    x=[[-2.0456996, -1.3781755, -0.099301577, -2.7342658, -3.8789608],
       [-1.328635, -0.0037662792, 0.16239041, 6.2587395, -1.0219408],
       [-1.6377746, 4.1710677, -1.1899261, 4.9750957, -2.6285081]],
    y=[[0.79291624, 0.35680333, 0.10372206, 0.37908348, 0.52633166],
       [0.9729414, 0.3489468, 0.16082743, 0.15492728, 0.46794528],
       [0.3607777, 0.76917034, 0.59027654, 0.22278786, 0.47798485]],
    weight=[6.8828535, 1.979021, 1.915293, -1.1826836, -1.3324734],
    pos_weight=[0.5, 0.875, 1.25, 1.625, 2.0])


def cancelling_cases(rng):
    """(name, pred, target, options): float32 terms of both signs that cancel."""
    case = {k: np.array(v, np.float32) for k, v in CANCELLING_BCE.items()}
    yield "bce_with_logits", case["x"], case["y"], {"weight": case["weight"],
                                                      "pos_weight": case["pos_weight"]}
    # a bce target outside [0, 1] makes a term negative with no weight at all: the last
    # one, at x = 50 where the loss is (1 - y) x, cancels the sum of all the others
    x = rng.standard_normal(1000).astype(np.float32)
    y = rng.uniform(0, 1, 1000).astype(np.float32)
    x[-1] = 50.0
    rest = reference.bce_with_logits(x[:-1], y[:-1], reduction="sum")
    y[-1] = np.float32(1 + rest / 50.0)
    yield "bce_with_logits", x, y, {}
    # mse under weights 2 and -1 where the second residual is sqrt(2) times the first
    pred = rng.uniform(1, 2, 4096).astype(np.float32)
    target = np.zeros(4096, np.float32)
    pred[1::2] = pred[::2] * np.float32(np.sqrt(2) * (1 + 1e-5))
    weight = np.tile(np.array([2.0, -1.0], np.float32), 2048)
    yield "mse", pred, target, {"weight": weight}


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_float32_terms_that_cancel_keep_the_contract(reduction, rng):
    for name, pred, target, options in cancelling_cases(rng):
        value, _, fused = functions(name)
        ref = functions(name, reference)[0](pred, target, reduction=reduction, **options)
        magnitude = np.abs(functions(name, reference)[0](
            pred, target, reduction="none", **options)).sum()
        assert abs(ref) * 50 < magnitude, f"{name}: the case no longer cancels"
        loss = call_unmodified(value, pred, target, reduction=reduction, **options)
        assert_close_contract(loss, ref, np.float32, "loss", what=f"{name} loss")
        loss, grad = call_unmodified(fused, pred, target, reduction=reduction, **options)
        assert_close_contract(loss, ref, np.float32, "loss", what=f"{name} fused loss")
        # in place: the loss is taken before the gradient overwrites the input
        buffer = pred.copy()
        loss, in_place = fused(buffer, target, reduction=reduction, out=buffer, **options)
        assert in_place is buffer
        assert_close_contract(loss, ref, np.float32, "loss", what=f"{name} in-place loss")
        assert bitwise_equal(in_place, grad)


# (name, options, pred, target, torch's loss, torch's gradient): values printed by torch
# 2.13 (float64, reduction none, grad_output 1).
NAN = np.nan
INF = np.inf
NONFINITE_CASES = [
    ("mse", {}, [0.0, NAN, INF, -INF, 1.0], [0.0] * 5,
     [0, NAN, INF, INF, 1], [0, NAN, INF, -INF, 2]),
    ("l1", {}, [0.0, NAN, INF, -INF, 1.0], [0.0] * 5,
     [0, NAN, INF, INF, 1], [0, 0, 1, -1, 1]),
    ("huber", {"delta": 1.0}, [0.0, NAN, INF, -INF, 1.0], [0.0] * 5,
     [0, NAN, INF, INF, 0.5], [0, NAN, 1, -1, 1]),
    ("smooth_l1", {"beta": 1.0}, [0.0, NAN, INF, -INF, 1.0], [0.0] * 5,
     [0, NAN, INF, INF, 0.5], [0, NAN, 1, -1, 1]),
    ("smooth_l1", {"beta": 0.0}, [0.0, NAN, INF, -INF, 1.0], [0.0] * 5,
     [0, NAN, INF, INF, 1], [0, 0, 1, -1, 1]),
    ("mse", {}, [INF, 1.0], [INF, NAN], [NAN, NAN], [NAN, NAN]),
    ("bce_with_logits", {}, [INF, -INF, NAN, INF, -INF, INF, -INF],
     [0.0, 0.0, 0.0, 1.0, 1.0, 0.3, 0.3],
     [INF, NAN, NAN, NAN, NAN, INF, NAN], [1, 0, NAN, 0, -1, 0.7, -0.3]),
]


@dtypes
@pytest.mark.parametrize("name, options, pred, target, torch_loss, torch_grad",
                         NONFINITE_CASES, ids=lambda v: v if isinstance(v, str) else None)
def test_nan_and_inf_propagate_as_in_torch(name, options, pred, target, torch_loss, torch_grad,
                                           dtype):
    pred, target = np.array(pred, dtype), np.array(target, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no floating-point RuntimeWarnings from numpy either
        loss, grad = functions(name)[2](pred, target, reduction="none", **options)
    assert_close_contract(loss, torch_loss, dtype, "loss")
    assert_close_contract(grad, torch_grad, dtype, "grad")
    assert_close_contract(loss, functions(name, reference)[0](pred, target, reduction="none",
                                                              **options), dtype, "loss")
    assert_close_contract(grad, functions(name, reference)[1](pred, target, reduction="none",
                                                              **options), dtype, "grad")
    # the reduced loss is poisoned, and only the NaN elements' gradients are
    total = functions(name)[0](pred, target, reduction="sum", **options)
    assert np.isnan(total) or np.isinf(total)


@dtypes
def test_nan_poisons_only_its_own_gradient(dtype, rng):
    (pred, target), _ = make_regression_inputs(rng, dtype, {}, (5000,))
    pred[1234] = np.nan
    for name in ("mse", "huber", "smooth_l1"):
        grad = functions(name)[1](pred, target)
        assert np.isnan(grad[1234]) and np.isfinite(np.delete(grad, 1234)).all(), name
        assert np.isnan(functions(name)[0](pred, target)), name


# ----------------------------------------------------------------------------------------
# Empty, 0-d, broadcasting, dtypes
# ----------------------------------------------------------------------------------------

@dtypes
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(0,), (0, 5), (3, 0, 2)], ids=str)
def test_empty_input(shape, name, dtype):
    value, grad_fn, fused = functions(name)
    pred = np.zeros(shape, dtype)
    target = np.zeros(shape, dtype)
    weight = np.ones(shape[-1:], dtype)
    options = {"pos_weight": weight} if name == "bce_with_logits" else {}
    assert np.isnan(value(pred, target, weight=weight, **options))  # torch: mean of nothing
    assert value(pred, target, reduction="sum", **options) == 0.0
    loss = value(pred, target, reduction="none", **options)
    assert loss.shape == shape and loss.dtype == dtype
    for reduction in REDUCTIONS:
        upstream = np.zeros(shape) if reduction == "none" else 1.0
        grad = grad_fn(pred, target, upstream, reduction=reduction, **options)
        assert grad.shape == shape and grad.dtype == dtype
        loss, grad = fused(pred, target, upstream, reduction=reduction, out=np.empty_like(pred),
                           **options)
        assert grad.shape == shape


@dtypes
@pytest.mark.parametrize("name", NAMES)
def test_zero_dimensional_inputs(name, dtype):
    pred = np.array(0.75, dtype)
    target = np.array(1.0 if name == "bce_with_logits" else -0.5, dtype)
    check_against_reference(name, pred, target)
    loss = functions(name)[0](pred, target, reduction="none")
    assert loss.shape == () and loss.dtype == dtype
    # Python scalars for the target, and the weight (torch's mse and l1 divide a weighted
    # mean by the weight: a single element's mean is then its unweighted loss)
    scaled = 1.0 if name in ("mse", "l1") else 2.0
    assert functions(name)[0](pred, 1.0, weight=2.0) == scaled * functions(name)[0](pred, 1.0)
    assert functions(name)[0](pred, 1.0, weight=2.0, reduction="sum") == \
        2.0 * functions(name)[0](pred, 1.0, reduction="sum")


@dtypes
@pytest.mark.parametrize("name", REGRESSION_NAMES)
@pytest.mark.parametrize("pred_shape, target_shape", [
    ((3, 1), (4,)),        # both stretched: the gradient sums over the 4
    ((2, 3, 4), (4,)),     # target per column
    ((4,), (2, 3, 4)),     # pred added axes
    ((2, 1, 4), (1, 3, 1)),
    ((), (3, 2)),          # a 0-d pred
], ids=str)
def test_pred_and_target_broadcast_as_in_torch(pred_shape, target_shape, name, dtype, rng):
    pred = (rng.standard_normal(pred_shape) * 2).astype(dtype)
    target = rng.standard_normal(target_shape).astype(dtype)
    check_against_reference(name, pred, target, weight=np.full(target_shape[-1:], 1.5, dtype))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("pred_dtype, target_dtype", [
    (np.float32, np.float64), (np.float64, np.float32), (np.float32, np.int64),
    (np.float64, np.uint8), (np.float32, np.bool_), (np.float32, np.float16),
])
def test_dtype_promotion(pred_dtype, target_dtype, name, rng):
    # float32 with float64 computes in float64 (torch's promotion); an integer, bool or
    # float16 target takes pred's dtype. The loss has the computing dtype, the gradient
    # pred's dtype.
    pred = (rng.standard_normal((9, 4)) * 2).astype(pred_dtype)
    target = rng.integers(0, 2, (9, 4)).astype(target_dtype)
    compute = np.promote_types(pred_dtype, target_dtype) if np.dtype(target_dtype).kind == "f" \
        else np.dtype(pred_dtype)
    compute = np.dtype(np.float32) if compute == np.float16 else compute
    check_against_reference(name, pred, target, dtype=compute)
    loss = functions(name)[0](pred, target, reduction="none")
    assert loss.dtype == compute


# ----------------------------------------------------------------------------------------
# Layouts and out=
# ----------------------------------------------------------------------------------------

STRIDED_VIEWS = {
    "every-other-row": lambda a: a[::2],
    "reversed": lambda a: a[::-1, ::-1],
    "column-slice": lambda a: a[:, 3:17],
    "transposed": lambda a: a.T,
    "fortran": np.asfortranarray,
}


@dtypes
@specs
@pytest.mark.parametrize("view", STRIDED_VIEWS)
def test_strided_inputs(view, spec, dtype, rng):
    arrays, options = spec.make_inputs(rng, dtype, {}, (40, 22))
    make_view = STRIDED_VIEWS[view]
    check_against_reference(spec.name, *(make_view(array) for array in arrays), **options)


@dtypes
@specs
def test_read_only_and_memmapped_inputs(spec, dtype, rng, tmp_path):
    arrays, options = spec.make_inputs(rng, dtype, declared_params(spec.name, FACTORS),
                                       (30, 7))
    # every input memory-mapped read-only from a file
    mapped = []
    for index, array in enumerate(arrays):
        path = tmp_path / f"input{index}.npy"
        np.save(path, array)
        mapped.append(np.load(path, mmap_mode="r"))
        assert isinstance(mapped[-1], np.memmap) and not mapped[-1].flags.writeable
    check_against_reference(spec.name, *mapped, **options)
    # every input (and array option) an in-memory array marked read-only
    for array in (*arrays, *options.values()):
        if isinstance(array, np.ndarray):
            array.setflags(write=False)
    check_against_reference(spec.name, *arrays, **options)


@dtypes
@specs
@reductions
def test_out_preallocated_and_in_place(reduction, spec, dtype, rng):
    (pred, *others), options = spec.make_inputs(rng, dtype, declared_params(spec.name, FACTORS),
                                                (33, 9))
    shape = reference_loss_shape(spec.name, (pred, *others), options)
    options["reduction"] = reduction
    upstream = rng.standard_normal(shape) if reduction == "none" else 0.5
    _, grad_fn, fused = functions(spec.name)
    # out= changes where the gradient goes, never its bits: each entry point is
    # compared with itself
    expected_loss, expected_grad = fused(pred, *others, upstream, **options)
    expected_grad_only = grad_fn(pred, *others, upstream, **options)
    out = np.full_like(pred, np.nan)
    assert call_unmodified(grad_fn, pred, *others, upstream, out=out, **options) is out
    assert bitwise_equal(out, expected_grad_only)
    out = np.full_like(pred, np.nan)
    loss, grad = call_unmodified(fused, pred, *others, upstream, out=out, **options)
    assert grad is out and bitwise_equal(out, expected_grad)
    assert bitwise_equal(np.asarray(loss), np.asarray(expected_loss))
    # out=pred: the gradient replaces the input, with the same bits
    work = pred.copy()
    loss, grad = fused(work, *others, upstream, out=work, **options)
    assert grad is work and bitwise_equal(work, expected_grad)
    assert bitwise_equal(np.asarray(loss), np.asarray(expected_loss))
    # a non-contiguous out
    wide = np.full((33, 18), np.nan, dtype)
    assert grad_fn(pred, *others, upstream, out=wide[:, ::2], **options).base is wide
    assert bitwise_equal(wide[:, ::2], expected_grad_only)
    # out= exactly another input of pred's shape and dtype (the target of the two-input
    # losses; x2 and target of margin_ranking, target and var of gaussian_nll): that
    # input is read before its gradient overwrites it, or computed, then copied
    arrays = (pred, *others)
    overlapped = [index for index, array in enumerate(arrays)
                  if array.shape == pred.shape and array.dtype == pred.dtype]
    assert overlapped[1:], f"{spec.name}: no input but pred that an out= can overlap"
    for index in overlapped[1:]:
        moved = list(arrays)
        moved[index] = work = arrays[index].copy()
        assert grad_fn(*moved, upstream, out=work, **options) is work
        assert bitwise_equal(work, expected_grad_only), f"out= input {index}"
        moved[index] = work = arrays[index].copy()
        loss, grad = fused(*moved, upstream, out=work, **options)
        assert grad is work and bitwise_equal(work, expected_grad), f"out= input {index}"
        assert bitwise_equal(np.asarray(loss), np.asarray(expected_loss))
    # an out that overlaps an input (pred, or each other input) without being it:
    # computed, then copied. The input and out are 5 elements apart within one buffer,
    # the input ahead of out and behind it (where a tile's gradient would overwrite the
    # next tile's input before it is read), and the result is the input's copy's.
    for index in overlapped:
        array = arrays[index]
        for ahead in (True, False):
            def overlapping():
                shared = np.concatenate([array.ravel(), array.ravel()])
                first, second = (shared[5:5 + array.size].reshape(array.shape),
                                 shared[:array.size].reshape(array.shape))
                return (first, second) if ahead else (second, first)

            what = f"out overlapping input {index} ({'ahead' if ahead else 'behind'})"
            moved = list(arrays)
            shifted, out = overlapping()
            moved[index] = shifted.copy()
            expected_shifted = grad_fn(*moved, upstream, **options)
            expected_shifted_loss, expected_shifted_grad = fused(*moved, upstream, **options)
            moved[index] = shifted
            assert grad_fn(*moved, upstream, out=out, **options) is out
            assert bitwise_equal(out, expected_shifted), what
            moved[index], out = overlapping()
            loss, grad = fused(*moved, upstream, out=out, **options)
            assert grad is out and bitwise_equal(out, expected_shifted_grad), "fused " + what
            assert bitwise_equal(np.asarray(loss), np.asarray(expected_shifted_loss)), what


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@specs
def test_out_of_an_ndarray_subclass(spec, rng):
    # Found by hunt13: an np.matrix out of pred's shape was refused ("out: expected shape
    # (60,), got (1, 60)": its flat view is a (1, n) matrix), where every other family
    # writes it. It is written and returned, as any C-contiguous out.
    (pred, *others), options = spec.make_inputs(rng, np.float64, {}, (6, 10))
    _, grad_fn, fused = functions(spec.name)
    expected_loss, expected = fused(pred, *others, **options)
    out = np.asmatrix(np.full(pred.shape, np.nan))
    assert grad_fn(pred, *others, out=out, **options) is out
    assert bitwise_equal(np.asarray(out), expected)
    out = np.asmatrix(np.full(pred.shape, np.nan))
    loss, grad = fused(pred, *others, out=out, **options)
    assert grad is out and bitwise_equal(np.asarray(out), expected)
    assert loss == expected_loss


@pytest.mark.parametrize("name", REGRESSION_NAMES)
def test_out_with_broadcast_or_promoted_pred(name, rng):
    pred = rng.standard_normal((3, 1)).astype(np.float32)
    target = rng.standard_normal((3, 5))
    expected = functions(name)[1](pred, target)
    out = np.empty((3, 1), np.float32)
    assert functions(name)[1](pred, target, out=out) is out
    assert bitwise_equal(out, expected) and expected.dtype == np.float32


@dtypes
def test_grad_output_forms(dtype, rng):
    (pred, target), _ = make_regression_inputs(rng, dtype, {}, (6, 4))
    upstream = rng.standard_normal((6, 4))
    expected = reference.huber_grad(pred, target, upstream, reduction="none")
    for form in (upstream, upstream.astype(np.float32), upstream.tolist(),
                 np.asfortranarray(upstream), upstream[::-1].copy()[::-1]):
        grad = fastloss.huber_grad(pred, target, form, reduction="none")
        assert_close_contract(grad, reference.huber_grad(pred, target, np.asarray(form),
                                                         reduction="none"), dtype, "grad")
    assert_close_contract(fastloss.huber_grad(pred, target, 2.5, reduction="none"),
                          2.5 * reference.huber_grad(pred, target, reduction="none"), dtype,
                          "grad")
    assert_close_contract(fastloss.huber_grad(pred, target, np.float32(2.0)),
                          2.0 * reference.huber_grad(pred, target), dtype, "grad")
    assert expected.shape == pred.shape


def test_python_lists_and_scalars():
    assert fastloss.mse([1.0, 2.0], [0, 0]) == 2.5
    loss, grad = fastloss.bce_with_logits_value_and_grad([[0.0, 0.0]], [[1, 0]],
                                                        pos_weight=[2.0, 3.0])
    assert_close_contract(loss, reference.bce_with_logits([[0.0, 0.0]], [[1, 0]],
                                                          pos_weight=[2.0, 3.0]),
                          np.float64, "loss")
    assert grad.dtype == np.float64 and grad.shape == (1, 2)


# ----------------------------------------------------------------------------------------
# Weights and periodic factors
# ----------------------------------------------------------------------------------------

@dtypes
@pytest.mark.parametrize("weight_shape", [(), (1,), (7,), (5, 1), (3, 5, 7), (1, 1, 7),
                                          (5, 7), (3, 1, 1)], ids=str)
def test_weight_broadcasts_in_every_layout(weight_shape, dtype, rng):
    (pred, target), _ = make_regression_inputs(rng, dtype, {}, (3, 5, 7))
    weight = rng.uniform(0.5, 2.0, weight_shape).astype(dtype)
    check_against_reference("smooth_l1", pred, target, weight=weight, beta=0.5)
    (logits, labels), _ = make_binary_inputs(rng, dtype, {"soft": True}, (3, 5, 7))
    check_against_reference("bce_with_logits", logits, labels, weight=weight, pos_weight=weight)


@dtypes
@pytest.mark.parametrize("n_classes", [1, 3, 1000, 1031, 5000])
def test_pos_weight_periods(n_classes, dtype, rng):
    # A per-class factor is read periodically; short periods are repeated up to 1024,
    # long ones end tiles where they wrap around.
    (logits, target), options = make_binary_inputs(
        rng, dtype, {"soft": True, "pos_weight": "class", "weight": "class"}, (9, n_classes))
    check_against_reference("bce_with_logits", logits, target, **options)


# ----------------------------------------------------------------------------------------
# Finite differences (float64), away from the kinks
# ----------------------------------------------------------------------------------------

FD_CASES = [
    ("mse", {"weight": "full"}),
    ("l1", {"weight": "class"}),
    ("huber", {"delta": 0.8, "weight": "row"}),
    ("smooth_l1", {"beta": 0.7}),
    ("smooth_l1", {"beta": 0.0, "weight": "full"}),
    ("bce_with_logits", {"soft": True, "weight": "full", "pos_weight": "class"}),
]


@reductions
@pytest.mark.parametrize("name, params", FD_CASES, ids=lambda v: v if isinstance(v, str) else None)
def test_grad_matches_finite_differences(name, params, reduction, rng):
    make = make_binary_inputs if name == "bce_with_logits" else make_regression_inputs
    (pred, target), options = make(rng, np.float64, params, (4, 5))
    step = 1e-3
    # the stencil reaches 2 steps either side: keep every residual 4 steps from a kink
    threshold = options.get("delta", options.get("beta", 1.0))
    kinks = {"l1": [0.0], "huber": [threshold, -threshold],
             "smooth_l1": [0.0, threshold, -threshold]}.get(name, [])
    for kink in kinks:
        close = np.abs(pred - target - kink) < 4 * step
        pred[close] += 10 * step
    upstream = rng.uniform(0.5, 2.0, pred.shape) if reduction == "none" else 1.3
    value, grad_fn, _ = functions(name)

    def objective(x):
        return float(np.sum(upstream * value(x, target, reduction=reduction, **options)))

    numeric = central_differences(objective, pred, step)
    grad = grad_fn(pred, target, upstream, reduction=reduction, **options)
    np.testing.assert_allclose(grad, numeric, rtol=1e-7, atol=1e-9)
    ref = functions(name, reference)[1](pred, target, upstream, reduction=reduction, **options)
    np.testing.assert_allclose(ref, numeric, rtol=1e-7, atol=1e-9)


# ----------------------------------------------------------------------------------------
# Accuracy against a naive float32 implementation, and big inputs
# ----------------------------------------------------------------------------------------

def test_float32_bce_at_least_as_accurate_as_naive_float32(rng):
    (logits, target), _ = make_binary_inputs(rng, np.float32, {"soft": True, "scale": 8.0},
                                             (20000,))
    exact = reference.bce_with_logits(logits, target, reduction="none")
    ours = fastloss.bce_with_logits(logits, target, reduction="none").astype(np.float64)
    x, y = logits, target
    with np.errstate(over="ignore"):
        naive = ((1 - y) * x + np.maximum(-x, 0)
                 + np.log1p(np.exp(-np.abs(x)))).astype(np.float64)  # torch's form in float32
    ours_error = np.abs(ours - exact) / exact
    naive_error = np.abs(naive - exact) / exact
    assert ours_error.max() <= 2e-6
    assert ours_error.max() <= naive_error.max()


@dtypes
@specs
def test_many_blocks_against_the_reference(spec, dtype, rng):
    # 2**16 + 1001 elements: several reduction blocks of 16384, threads, a ragged tail
    arrays, options = spec.make_inputs(rng, dtype, declared_params(spec.name, FACTORS),
                                       (67, 1993))
    for reduction in REDUCTIONS:
        loss, grad = spec.public.value_and_grad(*arrays, 0.5, reduction=reduction,
                                                **options)
        ref_loss, ref_grad = spec.reference.value_and_grad(*arrays, 0.5,
                                                           reduction=reduction, **options)
        assert_close_contract(loss, ref_loss, dtype, "loss")
        assert_close_contract(grad, ref_grad, dtype, "grad")


@specs
def test_every_simd_path_meets_the_contract(spec, simd_path, rng):
    # the factors each entry takes, then each case the registry declares for it (every
    # option's branch of the kernel: gaussian_nll's var per row, poisson's full, ...)
    params = [declared_params(spec.name, {"weight": "full", "pos_weight": "class",
                                          "quantile": "class"})]
    params += [case.params for case in spec.cases]
    for dtype in DTYPES:
        for case in params:
            arrays, options = spec.make_inputs(rng, dtype, case, (21, 101))
            check_against_reference(spec.name, *arrays, **options)


# ----------------------------------------------------------------------------------------
# The reference itself, against torch, and torch parity of the kernels
# ----------------------------------------------------------------------------------------

def torch_value_and_grad(name, pred, target, grad_output, *, reduction, weight=None,
                         pos_weight=None, delta=None, beta=None):
    """torch's loss and gradient w.r.t. pred in float64 (the same values: float32 inputs
    are exact in float64). torch 2.13's mse_loss, l1_loss and huber_loss take a weight
    (mse and l1 then divide the mean by sum(w), huber by the count); smooth_l1_loss has
    none, so its weighted loss is computed with reduction none, multiplied, then reduced
    as huber's is (the sum, or the sum over the element count)."""
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional
    x = torch.tensor(np.asarray(pred, np.float64), requires_grad=True)
    y = torch.tensor(np.asarray(target, np.float64))
    kwargs = {}
    if delta is not None:
        kwargs["delta"] = delta
    if beta is not None:
        kwargs["beta"] = beta
    function = {"mse": functional.mse_loss, "l1": functional.l1_loss,
                "huber": functional.huber_loss, "smooth_l1": functional.smooth_l1_loss,
                "bce_with_logits": functional.binary_cross_entropy_with_logits}[name]
    w = None if weight is None else torch.tensor(np.asarray(weight, np.float64))
    if name == "bce_with_logits":
        if pos_weight is not None:
            kwargs["pos_weight"] = torch.tensor(np.asarray(pos_weight, np.float64))
        loss = function(x, y, weight=w, reduction=reduction, **kwargs)
    elif w is not None and name != "smooth_l1":
        shape = torch.broadcast_shapes(x.shape, y.shape)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns when pred and target broadcast
            loss = function(x, y, reduction=reduction, weight=w.expand(shape), **kwargs)
        w = None  # applied
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns when pred and target broadcast
            loss = function(x, y, reduction="none" if w is not None else reduction, **kwargs)
        if w is not None:
            loss = loss * w
            if reduction == "sum":
                loss = loss.sum()
            elif reduction == "mean":
                loss = loss.mean()
    loss.backward(torch.as_tensor(np.asarray(grad_output, np.float64)))
    value = loss.detach().numpy()
    return (float(value) if reduction != "none" else value), x.grad.numpy()


TORCH_CASES = [
    ("mse", {}), ("mse", {"weight": "full"}), ("mse", {"weight": "class"}),
    ("l1", {}), ("l1", {"weight": "row"}),
    ("huber", {}), ("huber", {"delta": 0.4, "weight": "full"}),
    ("huber", {"delta": 2.5, "weight": "class"}),
    ("smooth_l1", {}), ("smooth_l1", {"beta": 0.3, "weight": "full"}),
    ("smooth_l1", {"beta": 0.0}), ("smooth_l1", {"beta": 3.0, "weight": "row"}),
    ("bce_with_logits", {}), ("bce_with_logits", {"soft": True, "weight": "full"}),
    ("bce_with_logits", {"pos_weight": "class"}),
    ("bce_with_logits", {"soft": True, "weight": "class", "pos_weight": "class"}),
    ("bce_with_logits", {"soft": True, "pos_weight": "full", "scale": 20.0}),
]


@reductions
@dtypes
@pytest.mark.parametrize("shape", [(17, 9), (3, 4, 9), (9,)], ids=["2d", "3d", "1d"])
@pytest.mark.parametrize("name, params", TORCH_CASES,
                         ids=lambda v: v if isinstance(v, str) else "-".join(
                             f"{k}={w}" for k, w in v.items()) or "plain")
def test_matches_torch(name, params, shape, dtype, reduction, rng):
    make = make_binary_inputs if name == "bce_with_logits" else make_regression_inputs
    (pred, target), options = make(rng, dtype, params, shape)
    upstream = rng.uniform(-2, 2, shape) if reduction == "none" else 0.75
    torch_loss, torch_grad = torch_value_and_grad(name, pred, target, upstream,
                                                  reduction=reduction, **options)
    loss, grad = functions(name)[2](pred, target, upstream, reduction=reduction, **options)
    assert_close_contract(loss, torch_loss, dtype, "loss", what=f"{name} loss vs torch")
    assert_close_contract(grad, torch_grad, dtype, "grad", what=f"{name} grad vs torch")
    if dtype == np.float64:
        # the oracle itself agrees with torch
        ref_loss, ref_grad = functions(name, reference)[2](pred, target, upstream,
                                                           reduction=reduction, **options)
        assert_close_contract(ref_loss, torch_loss, dtype, "loss", what="reference vs torch")
        assert_close_contract(ref_grad, torch_grad, dtype, "grad", what="reference vs torch")


@pytest.mark.parametrize("name", REGRESSION_NAMES)
def test_matches_torch_with_broadcast_pred(name, rng):
    pred = rng.standard_normal((3, 1, 5))
    target = rng.standard_normal((4, 1))
    for reduction in ("mean", "sum"):
        torch_loss, torch_grad = torch_value_and_grad(name, pred, target, 0.5,
                                                      reduction=reduction)
        loss, grad = functions(name)[2](pred, target, 0.5, reduction=reduction)
        assert_close_contract(loss, torch_loss, np.float64, "loss")
        assert grad.shape == pred.shape
        assert_close_contract(grad, torch_grad, np.float64, "grad")


@pytest.mark.parametrize("name", NAMES)
def test_matches_torch_at_kinks_and_extremes(name):
    residuals = np.array([0.0, 1.0, -1.0, 0.5, -0.5, 2.0, 1e-30, -3.0])
    if name == "bce_with_logits":
        pred = np.array([1000.0, -1000.0, 0.0, 30.0, -30.0, 700.0, -700.0, 1e-30])
        target = np.array([1.0, 0.0, 0.5, 1.0, 0.0, 0.25, 0.75, 1.0])
        options = {"pos_weight": np.array([2.0] * 8)}
    else:
        pred, target = residuals + 0.25, np.full(8, 0.25)
        options = {"delta": 1.0} if name == "huber" else {"beta": 0.5} \
            if name == "smooth_l1" else {}
    torch_loss, torch_grad = torch_value_and_grad(name, pred, target, np.ones(8),
                                                  reduction="none", **options)
    loss, grad = functions(name)[2](pred, target, reduction="none", **options)
    assert_close_contract(loss, torch_loss, np.float64, "loss")
    assert_close_contract(grad, torch_grad, np.float64, "grad")
