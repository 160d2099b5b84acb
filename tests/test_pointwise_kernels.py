"""The pointwise losses of the registry issue (sigmoid_focal, margin_ranking, poisson_nll,
gaussian_nll, pinball) at the kernel level: ``fastloss._kernels.ew_run`` against
``fastloss.reference`` to the accuracy contract, and the reference against torch and
finite differences.

The public functions are generated from the registry elsewhere; these tests reach the C
kernels through the Cython wrapper, so they hold whatever the Python layer becomes. Every
mode (forward, backward, fused), reduction, per-element ``grad_output``, the gradient
written over ``pred`` (in place), threads, SIMD paths (test_simd_paths.py imports
``check_case``) and the edge cases each formula has (kinks, huge logits, hard labels,
variances below eps, NaN).
"""

import dataclasses
import math

import numpy as np
import pytest

import fastloss.reference as reference
from fastloss import _kernels
from counterparts import torch_focal
from loss_specs import (DTYPES, REDUCTIONS, assert_close_contract, central_differences,
                        dtype_id)
from simd_paths import simd_paths

dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)

#: ew_run's gradient outputs, in the order of the inputs they belong to
SLOTS = ("grad", "grad_target", "grad_aux")


@dataclasses.dataclass(frozen=True)
class PointwiseCase:
    """One loss with one set of options.

    ``names``: the reference's data arguments, in ew_run's order (pred, target, aux).
    ``make(rng, shape)``: those arrays in float64. ``params``: ew_run's params.
    ``options``: the reference's keywords. ``quantile``: pinball's (a number, or one per
    class of the last axis), passed to ew_run as the periodic factor. ``grads``: the
    inputs with a gradient (a prefix of ``names`` in the slots' order)."""

    id: str
    loss: str
    names: tuple
    make: object
    params: tuple
    options: dict
    grads: tuple
    quantile: object = None

    def __str__(self):
        return self.id


def _logits(rng, shape):
    return rng.normal(0.0, 3.0, shape)


def _soft(rng, shape):
    return rng.uniform(0.0, 1.0, shape)


def _hard(rng, shape):
    return (rng.uniform(size=shape) < 0.4).astype(np.float64)


def _focal_soft(rng, shape):
    return [_logits(rng, shape), _soft(rng, shape)]


def _focal_hard(rng, shape):
    return [_logits(rng, shape), _hard(rng, shape)]


def _focal_mixed(rng, shape):
    target = _soft(rng, shape)
    target[::3] = np.round(target[::3])
    return [_logits(rng, shape), target]


def _margin(rng, shape):
    label = np.where(rng.uniform(size=shape) < 0.5, -1.0, 1.0)
    return [rng.normal(size=shape), rng.normal(size=shape), label]


def _poisson_log(rng, shape):
    return [rng.normal(0.5, 1.0, shape), rng.poisson(2.0, shape).astype(np.float64)]


def _poisson_rate(rng, shape):
    return [rng.uniform(0.05, 5.0, shape), rng.poisson(2.0, shape).astype(np.float64)]


def _gaussian(rng, shape):
    var = rng.uniform(0.01, 2.0, shape)
    var.flat[::17] = 1e-9  # below eps: clamped, gradient passed through
    return [rng.normal(size=shape), rng.normal(size=shape), var]


def _pinball(rng, shape):
    pred = rng.normal(size=shape)
    target = rng.normal(size=shape)
    target.flat[::11] = pred.flat[::11]  # r == 0: the kink
    return [pred, target]


FOCAL = ("logits", "target")
CASES = [
    PointwiseCase("focal-soft", "sigmoid_focal", FOCAL, _focal_soft, (0.25, 2.0),
                  dict(alpha=0.25, gamma=2.0), ("logits",)),
    PointwiseCase("focal-hard", "sigmoid_focal", FOCAL, _focal_hard, (0.25, 2.0),
                  dict(alpha=0.25, gamma=2.0), ("logits",)),
    PointwiseCase("focal-hard-gamma1.5", "sigmoid_focal", FOCAL, _focal_hard, (0.25, 1.5),
                  dict(alpha=0.25, gamma=1.5), ("logits",)),
    PointwiseCase("focal-mixed-gamma1-alpha0.8", "sigmoid_focal", FOCAL, _focal_mixed,
                  (0.8, 1.0), dict(alpha=0.8, gamma=1.0), ("logits",)),
    PointwiseCase("focal-soft-gamma0.5-noalpha", "sigmoid_focal", FOCAL, _focal_soft,
                  (-1.0, 0.5), dict(alpha=-1.0, gamma=0.5), ("logits",)),
    PointwiseCase("focal-mixed-gamma0", "sigmoid_focal", FOCAL, _focal_mixed, (0.25, 0.0),
                  dict(alpha=0.25, gamma=0.0), ("logits",)),
    PointwiseCase("margin_ranking", "margin_ranking", ("x1", "x2", "target"), _margin,
                  (0.3,), dict(margin=0.3), ("x1", "x2")),
    PointwiseCase("margin_ranking-0", "margin_ranking", ("x1", "x2", "target"), _margin,
                  (0.0,), dict(margin=0.0), ("x1", "x2")),
    PointwiseCase("poisson-log", "poisson_nll", ("input", "target"), _poisson_log,
                  (1, 0, 1e-8), dict(log_input=True, full=False), ("input", "target")),
    PointwiseCase("poisson-log-full", "poisson_nll", ("input", "target"), _poisson_log,
                  (1, 1, 1e-8), dict(log_input=True, full=True), ("input", "target")),
    PointwiseCase("poisson-rate", "poisson_nll", ("input", "target"), _poisson_rate,
                  (0, 0, 1e-8), dict(log_input=False, full=False), ("input", "target")),
    PointwiseCase("poisson-rate-full-eps0.1", "poisson_nll", ("input", "target"),
                  _poisson_rate, (0, 1, 0.1), dict(log_input=False, full=True, eps=0.1),
                  ("input", "target")),
    PointwiseCase("gaussian", "gaussian_nll", ("input", "target", "var"), _gaussian,
                  (0, 1e-6), dict(full=False), ("input", "target", "var")),
    PointwiseCase("gaussian-full-eps0.1", "gaussian_nll", ("input", "target", "var"),
                  _gaussian, (1, 0.1), dict(full=True, eps=0.1), ("input", "target", "var")),
    PointwiseCase("pinball-0.3", "pinball", ("pred", "target"), _pinball, (), {},
                  ("pred", "target"), quantile=0.3),
    PointwiseCase("pinball-per-class", "pinball", ("pred", "target"), _pinball, (), {},
                  ("pred", "target"), quantile=(0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.5)),
]
CASES_BY_ID = {case.id: case for case in CASES}
cases = pytest.mark.parametrize("case", CASES, ids=str)

SHAPE = (37, 8)  # 296 elements: two full tiles of 128 and a ragged one


def rounded(arrays, dtype):
    """The arrays as the kernel sees them (rounded to dtype), in float64."""
    return [np.asarray(a, dtype=dtype).astype(np.float64) for a in arrays]


def quantile_for(case, dtype, shape):
    """(the periodic factor for ew_run, the quantile for the reference), or (None, {})."""
    if case.quantile is None:
        return None, {}
    q = np.asarray(case.quantile, dtype=dtype)
    period = np.tile(q.reshape(-1), 64 // q.size)  # a short period repeated, as the API
    if q.ndim:
        assert q.size == shape[-1]
    return period, {"quantile": q.astype(np.float64)}


def run_kernel(case, arrays, dtype, mode, reduction, grad_output=None, *, num_threads=1,
               in_place=False, slots=None):
    """ew_run on the arrays (rounded to dtype): ``(loss, magnitude, per_element, grads)``,
    grads a dict from slot to array over the data's shape."""
    shape = np.shape(arrays[0])
    flat = [np.array(a, dtype=dtype).reshape(-1) for a in arrays]  # copies: out=pred writes
    n = flat[0].size
    factor, _ = quantile_for(case, dtype, shape)
    per_element = (np.empty(n, dtype) if reduction == "none" and mode != "backward"
                   else None)
    outs = {}
    upstream = None
    if mode != "forward":
        for slot in (slots or SLOTS[:len(case.grads)]):
            outs[slot] = np.empty(n, dtype)
        if in_place:
            outs["grad"] = flat[0]
        upstream = np.ascontiguousarray(np.broadcast_to(grad_output, shape) if
                                        reduction == "none" and np.ndim(grad_output)
                                        else np.reshape(grad_output, 1), np.float64).reshape(-1)
    total, magnitude = _kernels.ew_run(
        mode, case.loss, flat[0], flat[1], None, factor, upstream, per_element,
        outs.get("grad"), case.params, reduction, num_threads,
        grad_target=outs.get("grad_target"), aux=flat[2] if len(flat) > 2 else None,
        grad_aux=outs.get("grad_aux"))
    grads = {slot: array.reshape(shape) for slot, array in outs.items()}
    return total, magnitude, (None if per_element is None else per_element.reshape(shape)), grads


def reference_call(case, arrays, dtype, what, reduction, grad_output=1.0, wrt=None):
    """The reference on the rounded arrays: the loss, or the gradients (a dict)."""
    function = getattr(reference, case.loss)
    _, extra = quantile_for(case, dtype, np.shape(arrays[0]))
    options = dict(case.options, reduction=reduction, **extra)
    data = rounded(arrays, dtype)
    if what == "loss":
        return function(*data, **options)
    names = wrt or case.grads
    grads = getattr(reference, case.loss + "_grad")(*data, grad_output, wrt=tuple(names),
                                                    **options)
    return dict(zip(names, grads))


def check_case(case, dtype, rng, *, shape=SHAPE, reductions=REDUCTIONS,
               modes=("forward", "backward", "value_and_grad")):
    """Every mode and reduction of one case against the reference, to the contract."""
    arrays = case.make(rng, shape)
    for reduction in reductions:
        grad_output = (rng.uniform(-2.0, 2.0, shape) if reduction == "none" else 0.625)
        ref_loss = reference_call(case, arrays, dtype, "loss", reduction)
        ref_grads = reference_call(case, arrays, dtype, "grad", reduction, grad_output)
        for mode in modes:
            total, _, per_element, grads = run_kernel(case, arrays, dtype, mode, reduction,
                                                      grad_output)
            what = f"{case.id} {np.dtype(dtype).name} {reduction} {mode}"
            if mode != "backward":
                # the kernel's own sum: where float32 terms cancel, the C entry has
                # redone it in double (csrc/elementwise.c's policy)
                loss = per_element if reduction == "none" else total
                assert_close_contract(loss, ref_loss, dtype, "loss", f"{what}: loss")
            if mode != "forward":
                for slot, name in zip(SLOTS, case.grads):
                    assert_close_contract(grads[slot], ref_grads[name], dtype, "grad",
                                          f"{what}: gradient w.r.t. {name}")


# ----------------------------------------------------------------------------------------
# The kernels against the reference
# ----------------------------------------------------------------------------------------

@dtypes
@cases
def test_kernels_meet_the_contract(case, dtype, rng):
    check_case(case, dtype, rng)


@dtypes
@cases
def test_one_element_and_none(case, dtype, rng):
    # a single element: the contract's floor (relative to the largest entry) helps nothing
    per_class = case.quantile is not None and np.ndim(case.quantile)
    check_case(case, dtype, rng, shape=(1, 8) if per_class else (1,))
    arrays = case.make(rng, (0, 8) if per_class else (0,))
    total, _, _, _ = run_kernel(case, arrays, dtype, "forward", "mean")
    assert math.isnan(total)  # torch: the mean of nothing is nan
    total, _, _, _ = run_kernel(case, arrays, dtype, "value_and_grad", "sum", 1.0)
    assert total == 0.0


@dtypes
@cases
def test_gradient_in_place(case, dtype, rng):
    # out=pred: each tile of the inputs is read before its gradient is written
    arrays = case.make(rng, SHAPE)
    ref = reference_call(case, arrays, dtype, "grad", "mean", 0.625)
    total, _, _, grads = run_kernel(case, arrays, dtype, "value_and_grad", "mean", 0.625,
                                    in_place=True)
    assert_close_contract(grads["grad"], ref[case.grads[0]], dtype, "grad", "in place")
    for slot, name in zip(SLOTS[1:], case.grads[1:]):
        assert_close_contract(grads[slot], ref[name], dtype, "grad", f"in place, {name}")
    # the loss, taken from the inputs before the gradient overwrote them
    assert_close_contract(total, reference_call(case, arrays, dtype, "loss", "mean"), dtype)


@dtypes
@cases
def test_gradients_one_at_a_time(case, dtype, rng):
    # each gradient alone (the others NULL) is the same as in the call that asks for all
    arrays = case.make(rng, SHAPE)
    _, _, _, together = run_kernel(case, arrays, dtype, "backward", "sum", 1.5)
    for slot in SLOTS[:len(case.grads)]:
        _, _, _, alone = run_kernel(case, arrays, dtype, "backward", "sum", 1.5,
                                    slots=(slot,))
        assert np.array_equal(alone[slot], together[slot], equal_nan=True), slot


@dtypes
@cases
def test_threads_give_the_same_bits(case, dtype, rng):
    # 40000 elements: three reduction blocks of 16384, so two threads split them
    arrays = case.make(rng, (5000, 8))
    results = []
    for threads in (1, 2, 3):
        for mode, reduction in (("value_and_grad", "mean"), ("value_and_grad", "none"),
                                ("forward", "sum")):
            total, magnitude, per_element, grads = run_kernel(
                case, arrays, dtype, mode, reduction, 0.75, num_threads=threads)
            results.append((threads, mode, reduction, total, magnitude, per_element, grads))
    first = {(mode, reduction): rest for threads, mode, reduction, *rest in results
             if threads == 1}
    for threads, mode, reduction, total, magnitude, per_element, grads in results:
        base_total, base_magnitude, base_per_element, base_grads = first[(mode, reduction)]
        assert np.array_equal([total, magnitude], [base_total, base_magnitude],
                              equal_nan=True), (threads, mode, reduction)
        if per_element is not None:
            assert per_element.tobytes() == base_per_element.tobytes()
        for slot in grads:
            assert grads[slot].tobytes() == base_grads[slot].tobytes(), (threads, slot)


def test_the_weight_and_grad_output_scale_every_new_loss(rng):
    # the periodic weight stays available to all of them: weight * loss, weight * slope
    for case in CASES[::2]:
        arrays = case.make(rng, SHAPE)
        flat = [np.ascontiguousarray(a).reshape(-1) for a in arrays]
        n = flat[0].size
        weight = rng.uniform(0.5, 2.0, 8)
        factor, _ = quantile_for(case, np.float64, SHAPE)
        per_element = np.empty(n)
        grad = np.empty(n)
        _kernels.ew_run("value_and_grad", case.loss, flat[0], flat[1], weight, factor,
                        np.full(n, 0.5), per_element, grad, case.params, "none", 1,
                        aux=flat[2] if len(flat) > 2 else None)
        ref_loss = reference_call(case, arrays, np.float64, "loss", "none")
        ref_grad = reference_call(case, arrays, np.float64, "grad", "none")[case.grads[0]]
        assert_close_contract(per_element.reshape(SHAPE), ref_loss * weight, np.float64)
        assert_close_contract(grad.reshape(SHAPE), ref_grad * weight * 0.5, np.float64, "grad")


# ----------------------------------------------------------------------------------------
# Edge cases, per loss
# ----------------------------------------------------------------------------------------

def kernel_none(loss, arrays, params, dtype, *, factor=None, grad_output=1.0):
    """ew_run's fused call with reduction none: (loss, grad, grad_target, grad_aux) arrays
    (grad_target None for sigmoid_focal, grad_aux None but for gaussian_nll)."""
    flat = [np.ascontiguousarray(a, dtype=dtype).reshape(-1) for a in arrays]
    n = flat[0].size
    outs = [np.empty(n, dtype), np.empty(n, dtype),
            np.empty(n, dtype) if loss != "sigmoid_focal" else None,
            np.empty(n, dtype) if loss == "gaussian_nll" else None]
    _kernels.ew_run("value_and_grad", loss, flat[0], flat[1], None, factor,
                    np.full(n, grad_output), outs[0], outs[1], params, "none", 1,
                    grad_target=outs[2], aux=flat[2] if len(flat) > 2 else None,
                    grad_aux=outs[3])
    return outs


@dtypes
def test_focal_huge_logits_and_hard_labels(dtype):
    x = np.array([1e4, -1e4, 1e4, -1e4, 200.0, -200.0, 40.0, -40.0, 17.0, 0.0, 3.0])
    y = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0])
    for alpha, gamma in ((0.25, 2.0), (0.25, 1.5), (-1.0, 0.5), (0.25, 0.0), (0.6, 1.0)):
        loss, grad, _, _ = kernel_none("sigmoid_focal", [x, y], (alpha, gamma), dtype)
        options = dict(alpha=alpha, gamma=gamma, reduction="none")
        data = rounded([x, y], dtype)
        assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))
        assert_close_contract(loss, reference.sigmoid_focal(*data, **options), dtype)
        assert_close_contract(grad, reference.sigmoid_focal_grad(*data, **options), dtype,
                              "grad")
        # the right answer at the extremes: 0 where the label is met, x (1 - alpha) or
        # |x| alpha where it is missed by 1e4
        assert loss[0] == 0 and loss[1] == 0 and grad[0] == 0 and grad[1] == 0
        a_t0, a_t1 = (1 - alpha, alpha) if alpha >= 0 else (1.0, 1.0)
        assert loss[2] == pytest.approx(1e4 * a_t0, rel=1e-7)
        assert loss[3] == pytest.approx(1e4 * a_t1, rel=1e-7)
        assert grad[2] == pytest.approx(a_t0, rel=1e-7)
        assert grad[3] == pytest.approx(-a_t1, rel=1e-7)
        # a met label keeps the tiny loss's relative accuracy (torch's 1 - p_t rounds to 0;
        # at x = 40 the loss, about 1e-53 for gamma 2, is below float32's range)
        assert loss[8] > 0 and grad[8] < 0


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0])
def test_focal_float32_pass_keeps_every_element_to_the_contract(gamma, rng):
    # float32 arithmetic serves gamma 0, 1, 2 where nothing can cancel (hard labels): each
    # loss and slope within 2e-6 of itself, not only of the array's largest (the floor)
    x = np.concatenate([rng.uniform(-90.0, 90.0, 60000), rng.normal(0.0, 3.0, 60000),
                        [0.0, -0.0, 1e-30, 88.0, -88.0]]).astype(np.float32)
    y = (rng.uniform(size=x.size) < 0.5).astype(np.float32)
    for alpha in (0.25, -1.0, 1.0, 0.0):
        loss, grad, _, _ = kernel_none("sigmoid_focal", [x, y], (alpha, gamma), np.float32)
        options = dict(alpha=alpha, gamma=gamma, reduction="none")
        data = rounded([x, y], np.float32)
        for actual, ref in ((loss, reference.sigmoid_focal(*data, **options)),
                            (grad, reference.sigmoid_focal_grad(*data, **options))):
            normal = np.abs(ref) > 1e-37  # below, float32's flush of exp (fastmath.h)
            error = np.abs(actual.astype(np.float64) - ref)
            assert np.all(error[normal] <= 2e-6 * np.abs(ref[normal])), (alpha, gamma)
            assert np.all(np.abs(actual[~normal]) <= 1e-37)


@dtypes
def test_focal_gamma_0_is_bce(dtype, rng):
    x = np.concatenate([_logits(rng, 200), [1e4, -1e4, 50.0, -50.0]])
    y = np.concatenate([_soft(rng, 100), _hard(rng, 100), [0.0, 1.0, 1.0, 0.3]])
    focal = kernel_none("sigmoid_focal", [x, y], (-1.0, 0.0), dtype)
    bce = kernel_none("bce_with_logits", [x, y], 0.0, dtype)
    assert_close_contract(focal[0], bce[0].astype(np.float64), dtype)
    assert_close_contract(focal[1], bce[1].astype(np.float64), dtype, "grad")


def test_focal_where_1_minus_p_t_is_0():
    # |x| > 745 with a met label: 1 - p_t is 0 even in float64; the slope is its limit, 0
    # (torch's autograd of the formula gives NaN for 0 < gamma < 1: 0 * 0**(gamma - 1))
    x = np.array([800.0, -800.0])
    y = np.array([1.0, 0.0])
    for gamma in (0.5, 1.0, 2.0, 3.0):
        loss, grad, _, _ = kernel_none("sigmoid_focal", [x, y], (0.25, gamma), np.float64)
        assert np.array_equal(loss, [0.0, 0.0]) and np.array_equal(grad, [0.0, 0.0])
        assert np.array_equal(reference.sigmoid_focal_grad(x, y, gamma=gamma,
                                                           reduction="none"), [0.0, 0.0])


@dtypes
def test_focal_nan_propagates(dtype):
    x = np.array([np.nan, 1.0, np.nan])
    y = np.array([1.0, np.nan, 0.5])
    for gamma in (0.0, 2.0, 1.5):
        loss, grad, _, _ = kernel_none("sigmoid_focal", [x, y], (0.25, gamma), dtype)
        assert np.isnan(loss).all() and np.isnan(grad).all()


@dtypes
def test_margin_ranking_kink_and_nan(dtype):
    # z = -y (x1 - x2) + margin == 0 exactly: torch's clamp_min backward passes the slope
    x1 = np.array([1.0, 0.5, 2.0, np.nan, 1.0, 3.0])
    x2 = np.array([0.5, 1.0, 0.0, 0.0, 0.0, 0.0])
    y = np.array([1.0, -1.0, 1.0, 1.0, np.nan, 1.0])
    loss, grad1, grad2, _ = kernel_none("margin_ranking", [x1, x2, y], (0.5,), dtype)
    assert np.array_equal(loss, [0.0, 0.0, 0.0, np.nan, np.nan, 0.0], equal_nan=True)
    assert np.array_equal(grad1, [-1.0, 1.0, 0.0, -0.0, np.nan, 0.0], equal_nan=True)
    assert np.array_equal(grad2, [1.0, -1.0, 0.0, 0.0, np.nan, 0.0], equal_nan=True)
    ref1, ref2 = reference.margin_ranking_grad(x1, x2, y, margin=0.5, reduction="none",
                                               wrt=("x1", "x2"))
    assert np.array_equal(ref1, grad1, equal_nan=True)
    assert np.array_equal(ref2, grad2, equal_nan=True)


@dtypes
def test_margin_ranking_small_z_keeps_its_digits(dtype):
    # margin - y d with z tiny next to y d: computed in double, rounded once
    x1 = np.array([1.0000001, 3.0, -2.5])
    x2 = np.array([0.0, 1.0000002, -0.4999999])
    y = np.array([1.0, 1.0, -1.0])
    data = rounded([x1, x2, y], dtype)
    margin = float(np.asarray(data[0][0] - data[1][0]))
    loss, _, _, _ = kernel_none("margin_ranking", data, (margin + 1e-7,), dtype)
    ref = reference.margin_ranking(*data, margin=margin + 1e-7, reduction="none")
    assert_close_contract(loss, ref, dtype)


@dtypes
def test_poisson_rate_at_zero_and_full_masks(dtype):
    # log_input=False with x = 0: log(eps); full adds Stirling only where y > 1
    x = np.array([0.0, 0.0, 0.3, 0.3, 0.3, 2.0, -1e-8])
    y = np.array([2.0, 0.0, 0.0, 1.0, 1.5, 7.0, 1.0])
    for full in (False, True):
        loss, grad, grad_target, _ = kernel_none("poisson_nll", [x, y], (0, full, 1e-8), dtype)
        options = dict(log_input=False, full=full, reduction="none")
        data = rounded([x, y], dtype)
        assert_close_contract(loss, reference.poisson_nll(*data, **options), dtype)
        ref_input, ref_target = reference.poisson_nll_grad(*data, wrt=("input", "target"),
                                                           **options)
        assert_close_contract(grad, ref_input, dtype, "grad")
        assert_close_contract(grad_target, ref_target, dtype, "grad")
        assert np.isfinite(grad_target[:6]).all()  # torch: NaN at y = 0 when full
    # x + eps == 0: log(0) = -inf, as torch's formula
    loss, grad, _, _ = kernel_none("poisson_nll", [[-1e-8, -1e-8], [1.0, 0.0]],
                                   (0, 0, 1e-8), np.float64)
    assert loss[0] == np.inf and np.isnan(loss[1]) and grad[0] == -np.inf


@dtypes
def test_poisson_nan_propagates(dtype):
    x = np.array([np.nan, 0.5, np.nan])
    y = np.array([1.0, np.nan, 3.0])
    for log_input in (0, 1):
        for full in (0, 1):
            loss, grad, grad_target, _ = kernel_none(
                "poisson_nll", [x, y], (log_input, full, 1e-8), dtype)
            assert np.isnan(loss).all() and np.isnan(grad).all()


@dtypes
def test_gaussian_var_below_eps_and_nan(dtype):
    # torch clamps under no_grad: the var gradient is the derivative at eps, passed through
    x = np.array([0.3, 0.3, 0.3, 0.3, np.nan])
    t = np.array([1.0, 1.0, 1.0, 0.3, 1.0])
    var = np.array([1e-9, 0.0, 2.0, np.nan, 1.0])
    loss, grad, grad_target, grad_var = kernel_none("gaussian_nll", [x, t, var], (0, 1e-6),
                                                    dtype)
    data = rounded([x, t, var], dtype)
    options = dict(eps=1e-6, reduction="none")
    assert_close_contract(loss, reference.gaussian_nll(*data, **options), dtype)
    refs = reference.gaussian_nll_grad(*data, wrt=("input", "target", "var"), **options)
    for actual, ref in zip((grad, grad_target, grad_var), refs):
        assert_close_contract(actual, ref, dtype, "grad")
    r2 = float(np.float64(np.asarray(0.3, dtype)) - 1.0) ** 2
    assert grad_var[0] == pytest.approx(0.5 * (1 / 1e-6 - r2 / 1e-12), rel=1e-6)
    assert grad_var[1] == grad_var[0]
    assert np.isnan(loss[3:]).all() and np.isnan(grad_var[3:]).all()


def _gaussian_hard_region(rng):
    """float32 inputs where log v and r**2 / v cancel (the loss near 0, of either sign),
    around the clamp at eps, at the ends of float's range, and ordinary ones."""
    n = 40000
    v = np.exp(rng.uniform(np.log(1e-7), np.log(1e7), n))
    # r**2 / v = -log v (1 + delta), delta down to 1e-7: the float32 pass must give way
    delta = np.exp(rng.uniform(np.log(1e-7), np.log(1.0), n)) * rng.choice([-1.0, 1.0], n)
    target_q = np.maximum(-np.log(v) * (1 + delta), 0.0)
    r = np.sqrt(target_q * v) * rng.choice([-1.0, 1.0], n)
    x = rng.normal(0.0, 2.0, n)
    t = x - r
    # ordinary data, the tile ends, and extremes of v and r
    x2, t2 = rng.normal(size=n), rng.normal(size=n)
    v2 = rng.uniform(0.01, 2.0, n)
    # (x - t overflows float32 at 2e38 - -2e38 where the loss does not)
    extremes_v = np.array([1e-38, 1.2e-38, 1e-30, 1e-9, 1e-6, 9.9e-7, 1.0, 1.0, 3e38, 3e38,
                           3e38, 1e-20, 0.5, 0.5, 2.0, 1.0])
    extremes_x = np.array([1.0, 1e-20, 1e15, 0.3, 0.3, 0.3, 1.0, 0.0, 1e19, 2e38, -1.5e38,
                           1e-30, 1e19, 1e-25, -1.0, 1e-23])
    extremes_t = np.array([0.0, 0.0, -1e15, 0.3, 0.0, 0.3, 1.0, 0.0, -1e19, -2e38, 1.5e38,
                           0.0, 0.0, 0.0, 1.0, 0.0])
    return [np.concatenate(a).astype(np.float32) for a in
            ((x, x2, extremes_x), (t, t2, extremes_t), (v, v2, extremes_v))]


@pytest.mark.parametrize("full", [0, 1])
def test_gaussian_float32_pass_keeps_every_element_to_the_contract(full, rng):
    # float32 arithmetic serves gaussian_nll where its error bound clears the contract, and
    # double the rest: every loss within 2e-6 of itself and every gradient to the contract,
    # on every SIMD path, fused and alone
    data = _gaussian_hard_region(rng)
    for eps in (1e-6, 2.0 ** -20):  # eps not a float32 (clamped elements in doubt), and one
        options = dict(full=bool(full), eps=eps, reduction="none")
        ref_loss = reference.gaussian_nll(*rounded(data, np.float32), **options)
        ref_grad = reference.gaussian_nll_grad(*rounded(data, np.float32), wrt=("input",),
                                               **options)[0]
        with simd_paths() as paths:
            for path in paths:
                loss, grad, _, _ = kernel_none("gaussian_nll", data, (full, eps), np.float32)
                finite = (np.abs(ref_loss) <= 3.4e38) & (np.abs(ref_loss) > 1e-37)
                error = np.abs(loss.astype(np.float64) - ref_loss)
                relative = error / np.maximum(np.abs(ref_loss), 1e-300)
                worst = np.argmax(np.where(finite, relative, 0))
                assert np.all(error[finite] <= 2e-6 * np.abs(ref_loss[finite])), (
                    path, eps, [d[worst] for d in data], loss[worst], ref_loss[worst])
                assert np.array_equal(np.isnan(loss), np.isnan(ref_loss)), path
                assert_close_contract(loss, ref_loss, np.float32, "loss", path)
                assert_close_contract(grad, ref_grad, np.float32, "grad", path)
                normal = (np.abs(ref_grad) > 1e-37) & (np.abs(ref_grad) <= 3.4e38)
                gerror = np.abs(grad.astype(np.float64) - ref_grad)
                assert np.all(gerror[normal] <= 2e-6 * np.abs(ref_grad[normal])), path
                # the value alone and the slope alone take the same float32 pass
                flat = [np.ascontiguousarray(a) for a in data]
                alone = np.empty_like(flat[0])
                _kernels.ew_run("forward", "gaussian_nll", flat[0], flat[1], None, None, None,
                                alone, None, (full, eps), "none", 1, aux=flat[2])
                assert np.array_equal(alone, loss, equal_nan=True), path
                grad_alone = np.empty_like(flat[0])
                _kernels.ew_run("backward", "gaussian_nll", flat[0], flat[1], None, None,
                                np.ones(flat[0].size), None, grad_alone, (full, eps), "none", 1,
                                aux=flat[2])
                assert np.array_equal(grad_alone, grad, equal_nan=True), path
                total, _ = _kernels.ew_run("forward", "gaussian_nll", flat[0], flat[1], None,
                                           None, None, None, None, (full, eps), "sum", 1,
                                           aux=flat[2])
                assert np.isfinite(total) or not np.all(np.isfinite(ref_loss))


@dtypes
def test_pinball_kink_and_nan(dtype):
    # torch.maximum's backward: half to each at a tie, all to both for NaN
    q = np.full(64, 0.3, dtype)
    p = np.array([1.0, 0.0, 2.0, np.nan, 1.0])
    y = np.array([1.0, 1.0, 1.0, 1.0, np.nan])
    loss, grad, grad_target, _ = kernel_none("pinball", [p, y], (), dtype, factor=q)
    q = float(q[0])
    assert np.array_equal(loss[:3], np.asarray([0.0, q, 1.0 - q], dtype))
    assert np.isnan(loss[3:]).all()
    expected = np.asarray([0.5 - q, -q, 1.0 - q, 1.0 - 2.0 * q, 1.0 - 2.0 * q], dtype)
    assert np.allclose(grad, expected, rtol=1e-7, atol=0)
    assert np.array_equal(grad_target, -grad)
    ref = reference.pinball_grad(p, y, quantile=q, reduction="none")
    assert np.allclose(ref, expected, rtol=1e-7, atol=0)


# ----------------------------------------------------------------------------------------
# ew_run's argument checks for the new inputs
# ----------------------------------------------------------------------------------------

def test_ew_run_checks_the_new_arguments():
    flat = np.zeros(8)
    one = np.ones(1)
    grad = np.empty(8)

    def call(loss, params, **extra):
        mode = extra.pop("mode", "forward")
        factor = extra.pop("factor", None)
        upstream = one if mode != "forward" else None
        out = grad if mode != "forward" else None
        return _kernels.ew_run(mode, loss, flat, flat.copy(), None, factor, upstream, None,
                               out, params, "mean", 1, **extra)

    for loss, params, match in (("sigmoid_focal", (0.25, -1.0), "gamma"),
                                ("sigmoid_focal", (np.nan, 2.0), "alpha"),
                                ("sigmoid_focal", (0.25, np.inf), "gamma"),
                                ("poisson_nll", (1, 0, 0.0), "eps"),
                                ("poisson_nll", (2, 0, 1e-8), "log_input"),
                                ("poisson_nll", (1, 0.5, 1e-8), "full"),
                                ("gaussian_nll", (0, -1.0), "eps"),
                                ("margin_ranking", (np.inf,), "margin"),
                                ("mse", (1, 2, 3, 4), "params")):
        extra = {"aux": np.ones(8)} if loss in ("gaussian_nll", "margin_ranking") else {}
        with pytest.raises(ValueError, match=match):
            call(loss, params, **extra)
    with pytest.raises(ValueError, match="quantile"):
        call("pinball", ())
    with pytest.raises(ValueError, match="factor"):
        call("poisson_nll", (1, 0, 1e-8), factor=np.ones(4))
    with pytest.raises(ValueError, match="aux"):
        call("gaussian_nll", (0, 1e-6))
    with pytest.raises(ValueError, match="aux"):
        call("pinball", (), factor=np.ones(4), aux=np.ones(8))
    with pytest.raises(ValueError, match="aux"):
        call("gaussian_nll", (0, 1e-6), aux=np.ones(7))
    with pytest.raises(TypeError, match="aux"):
        call("gaussian_nll", (0, 1e-6), aux=np.ones(8, np.float32))
    with pytest.raises(ValueError, match="grad_target"):
        call("sigmoid_focal", (0.25, 2.0), mode="backward", grad_target=np.empty(8))
    with pytest.raises(ValueError, match="grad_aux"):
        call("margin_ranking", (0.0,), mode="backward", aux=np.ones(8),
             grad_aux=np.empty(8))
    with pytest.raises(ValueError, match="overlaps another argument"):
        data = np.zeros(9)
        call("gaussian_nll", (0, 1e-6), mode="backward", aux=np.ones(8), grad_aux=data[1:],
             grad_target=data[:8])
    with pytest.raises(ValueError, match="out: overlaps"):
        aux = np.ones(9)
        _kernels.ew_run("backward", "gaussian_nll", flat, flat.copy(), None, None, one, None,
                        aux[:8], (0, 1e-6), "mean", 1, aux=aux[1:])
    # the gradient over aux itself is in place, and allowed
    aux = np.ones(8)
    _kernels.ew_run("backward", "gaussian_nll", flat, flat.copy(), None, None, one, None, aux,
                    (0, 1e-6), "mean", 1, aux=aux)


# ----------------------------------------------------------------------------------------
# The reference: its argument checks, finite differences, and torch
# ----------------------------------------------------------------------------------------

def test_reference_errors_name_the_argument():
    x = np.zeros(4)
    y = np.zeros(4)
    checks = [
        (lambda: reference.sigmoid_focal(x, y, gamma=-0.5), ValueError, "gamma"),
        (lambda: reference.sigmoid_focal_grad(x, y, gamma=-0.5), ValueError, "gamma"),
        (lambda: reference.sigmoid_focal(x, y[:3]), ValueError, "target"),
        (lambda: reference.sigmoid_focal(x, y, reduction="avg"), ValueError, "reduction"),
        (lambda: reference.sigmoid_focal_grad(x, y, wrt="target"), ValueError, "wrt"),
        (lambda: reference.margin_ranking(x, y, y.reshape(2, 2)), ValueError, "target"),
        (lambda: reference.margin_ranking(x, y, y, margin=np.nan), ValueError, "margin"),
        (lambda: reference.margin_ranking_grad(x, y, y, wrt="target"), ValueError, "wrt"),
        (lambda: reference.poisson_nll(x, y, eps=0.0), ValueError, "eps"),
        (lambda: reference.poisson_nll(x, y, eps=-1.0), ValueError, "eps"),
        (lambda: reference.poisson_nll(x, y, log_input="yes"), TypeError, "log_input"),
        (lambda: reference.poisson_nll(x, y, reduction="max"), ValueError, "reduction"),
        (lambda: reference.gaussian_nll(x, y, -np.ones(4)), ValueError, "var"),
        (lambda: reference.gaussian_nll(x, y, -1.0), ValueError, "var"),
        (lambda: reference.gaussian_nll(x, y, np.ones(4), eps=0.0), ValueError, "eps"),
        (lambda: reference.gaussian_nll(x.reshape(2, 2), y.reshape(2, 2), np.ones(3)),
         ValueError, "var"),
        (lambda: reference.gaussian_nll_grad(x, y, 1.0, wrt="var"), ValueError, "wrt"),
        (lambda: reference.pinball(x, y, quantile=0.0), ValueError, "quantile"),
        (lambda: reference.pinball(x, y, quantile=1.0), ValueError, "quantile"),
        (lambda: reference.pinball(x, y, quantile=[0.5, 1.2, 0.1, 0.3]), ValueError,
         "quantile"),
        (lambda: reference.pinball(x, y, quantile=[0.5, 0.5, 0.5]), ValueError, "quantile"),
        (lambda: reference.pinball_grad(x, y, reduction="none", grad_output=np.ones(3)),
         ValueError, "grad_output"),
    ]
    for function, error, name in checks:
        with pytest.raises(error, match=name):
            function()


def _reference_inputs(case, rng, shape):
    """float64 inputs away from the kinks (finite differences need a smooth neighbourhood)."""
    arrays = case.make(rng, shape)
    if case.loss == "margin_ranking":
        arrays[0] = arrays[1] + np.where(rng.uniform(size=shape) < 0.5, -1.0, 1.0) * \
            rng.uniform(0.5, 1.5, shape)
    if case.loss == "pinball":
        arrays[1] = arrays[0] + np.where(rng.uniform(size=shape) < 0.5, -1.0, 1.0) * \
            rng.uniform(0.1, 1.0, shape)
    if case.loss == "gaussian_nll":
        arrays[2] = rng.uniform(0.2, 2.0, shape)
    if case.loss == "poisson_nll":
        arrays[1] = arrays[1] + 0.25  # away from the mask y <= 1 of full
    return arrays


@cases
def test_reference_gradients_are_the_finite_differences(case, rng):
    shape = (3, 8) if case.quantile is not None and np.ndim(case.quantile) else (2, 3)
    arrays = _reference_inputs(case, rng, shape)
    _, extra = quantile_for(case, np.float64, shape)
    options = dict(case.options, **extra)
    function = getattr(reference, case.loss)
    grad = getattr(reference, case.loss + "_grad")
    upstream = rng.uniform(-2.0, 2.0, shape)
    for index, name in enumerate(case.grads):
        def loss_of(moved, index=index):
            data = list(arrays)
            data[index] = moved
            return float(np.sum(function(*data, reduction="none", **options) * upstream))
        numeric = central_differences(loss_of, arrays[index], 1e-4)
        analytic = grad(*arrays, upstream, wrt=name, reduction="none", **options)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-7, atol=1e-9, err_msg=name)
        # the mean and sum are the same gradient scaled
        total = grad(*arrays, 0.5, wrt=name, reduction="sum", **options)
        mean = grad(*arrays, 0.5, wrt=name, reduction="mean", **options)
        np.testing.assert_allclose(mean * np.prod(shape), total, rtol=1e-14)


def test_reference_value_and_grad_and_broadcast_gradients(rng):
    # value_and_grad is the pair; gradients of broadcast inputs are summed to their shape
    x1, x2 = rng.normal(size=(4, 3)), rng.normal(size=(1, 3))
    label = np.where(rng.uniform(size=(4, 1)) < 0.5, -1.0, 1.0)
    loss, (g1, g2) = reference.margin_ranking_value_and_grad(x1, x2, label, margin=0.2,
                                                             wrt=("x1", "x2"))
    assert loss == reference.margin_ranking(x1, x2, label, margin=0.2)
    assert g1.shape == (4, 3) and g2.shape == (1, 3)
    full = reference.margin_ranking_grad(x1, np.broadcast_to(x2, (4, 3)).copy(), label,
                                         margin=0.2, wrt="x2")
    np.testing.assert_allclose(g2, full.sum(axis=0, keepdims=True), rtol=1e-15)
    # gaussian_nll's var of the input's shape without its last axis
    inp, target, var = rng.normal(size=(5, 3)), rng.normal(size=(5, 3)), rng.uniform(
        0.5, 1.0, 5)
    loss, grads = reference.gaussian_nll_value_and_grad(inp, target, var, wrt=("var",))
    assert grads[0].shape == (5,)
    np.testing.assert_allclose(
        grads[0], reference.gaussian_nll_grad(inp, target, var[:, None], wrt="var")[:, 0],
        rtol=1e-15)


# --- torch ------------------------------------------------------------------------------

def _torch():
    return pytest.importorskip("torch")


def _torch_loss(torch, case, tensors, options, reduction):
    functional = torch.nn.functional
    if case.loss == "sigmoid_focal":
        loss = torch_focal(torch, *tensors, options["alpha"], options["gamma"])
        return {"none": loss, "sum": loss.sum(), "mean": loss.mean()}[reduction]
    if case.loss == "margin_ranking":
        return functional.margin_ranking_loss(*tensors, reduction=reduction, **options)
    if case.loss == "poisson_nll":
        return functional.poisson_nll_loss(*tensors, reduction=reduction, **options)
    if case.loss == "gaussian_nll":
        return functional.gaussian_nll_loss(*tensors, reduction=reduction, **options)
    pred, target = tensors
    q = torch.as_tensor(options["quantile"], dtype=torch.float64)
    r = target - pred
    loss = torch.maximum(q * r, (q - 1) * r)
    return {"none": loss, "sum": loss.sum(), "mean": loss.mean()}[reduction]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@cases
def test_reference_matches_torch(case, reduction, rng):
    torch = _torch()
    shape = SHAPE
    arrays = case.make(rng, shape)
    if case.loss == "sigmoid_focal":
        # torch's 1 - p_t = 1 - sigmoid(x) loses digits as sigmoid(x) nears 1 (1e-4 of them
        # at |x| = 9); the reference keeps them. Compare where torch has them all.
        arrays[0] = np.clip(arrays[0] / 2.0, -4.0, 4.0)
    _, extra = quantile_for(case, np.float64, shape)
    options = dict(case.options, **extra)
    tensors = [torch.tensor(a, dtype=torch.float64, requires_grad=name in case.grads)
               for a, name in zip(arrays, case.names)]
    torch_options = {k: v for k, v in options.items() if k != "quantile"} \
        if case.loss != "pinball" else options
    loss = _torch_loss(torch, case, tensors, torch_options, reduction)
    upstream = rng.uniform(-2.0, 2.0, shape) if reduction == "none" else 0.625
    loss.backward(torch.as_tensor(upstream, dtype=torch.float64) if reduction == "none"
                  else torch.tensor(upstream, dtype=torch.float64))
    ref_loss = getattr(reference, case.loss)(*arrays, reduction=reduction, **options)
    assert_close_contract(ref_loss, loss.detach().numpy(), np.float64, "loss", "loss")
    grads = getattr(reference, case.loss + "_grad")(*arrays, upstream, wrt=case.grads,
                                                    reduction=reduction, **options)
    for name, grad, tensor in zip(case.grads, grads, tensors):
        expected = tensor.grad.numpy()
        if case.loss == "poisson_nll" and name == "target" and options["full"]:
            # torch's autograd of the masked Stirling term: NaN where y <= 0 (0 * log 0);
            # the reference gives the masked term's derivative, 0
            zero = arrays[1] <= 0
            assert np.isnan(expected[zero]).all()
            expected = np.where(zero, grad, expected)
        assert_close_contract(grad, expected, np.float64, "grad", f"gradient w.r.t. {name}")


def test_reference_focal_against_torch_at_the_extremes():
    torch = _torch()
    # where torch's 1 - p_t is exact (hard labels at x = 0 or sign-opposite logits) and
    # where it rounds: the reference is the exact value torch approximates
    x = np.array([0.0, -30.0, 30.0, 800.0, -5.0])
    y = np.array([1.0, 1.0, 0.0, 0.0, 0.0])
    tensor = torch.tensor(x, requires_grad=True)
    loss = torch_focal(torch, tensor, torch.tensor(y), 0.25, 2.0)
    loss.sum().backward()
    assert_close_contract(reference.sigmoid_focal(x, y, reduction="none"),
                          loss.detach().numpy(), np.float64)
    assert_close_contract(reference.sigmoid_focal_grad(x, y, reduction="sum"),
                          tensor.grad.numpy(), np.float64, "grad")
    # gamma < 1 where 1 - p_t is 0: torch's NaN, the reference's limit 0 (documented)
    tensor = torch.tensor([800.0], requires_grad=True)
    torch_focal(torch, tensor, torch.tensor([1.0]), 0.25, 0.5).sum().backward()
    assert torch.isnan(tensor.grad).all()
    assert reference.sigmoid_focal_grad([800.0], [1.0], gamma=0.5, reduction="sum")[0] == 0.0


def test_reference_gaussian_var_shapes_match_torch(rng):
    torch = _torch()
    inp, target = rng.normal(size=(4, 2, 3)), rng.normal(size=(4, 2, 3))
    for var in (rng.uniform(0, 1, (4, 2, 3)), rng.uniform(0, 1, (4, 2)),
                rng.uniform(0, 1, (4, 2, 1)), rng.uniform(0, 1, (4, 1, 3)), 0.7):
        tensors = [torch.tensor(a, requires_grad=True) for a in (inp, target)]
        var_tensor = (torch.tensor(var, requires_grad=True) if isinstance(var, np.ndarray)
                      else var)
        loss = torch.nn.functional.gaussian_nll_loss(*tensors, var_tensor, eps=1e-3)
        loss.backward()
        wrt = ("input", "target") + (("var",) if isinstance(var, np.ndarray) else ())
        value, grads = reference.gaussian_nll_value_and_grad(inp, target, var, eps=1e-3,
                                                             wrt=wrt)
        assert_close_contract(value, loss.item(), np.float64)
        expected = [t.grad.numpy() for t in tensors] + (
            [var_tensor.grad.numpy()] if isinstance(var, np.ndarray) else [])
        for grad, want in zip(grads, expected):
            assert grad.shape == want.shape
            assert_close_contract(grad, want, np.float64, "grad")
    with pytest.raises(ValueError, match="var"):
        reference.gaussian_nll(inp, target, np.ones((4, 3)))
