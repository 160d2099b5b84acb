"""The fast float32 paths of the pointwise elementwise kernels, element by element.

sigmoid_focal computes a tile whose labels are all 0 or 1 by a form with no cancellation
(elementwise_body.h, focal_hard_element), with no doubt test; a tile with any other label
takes the general float32 pass with its doubt, or double.  The block's sums add each term
and the negative ones apart (EW(block)).  These
tests hold each element of each path to the contract (2e-6 of itself, not only of the
array's largest term), on every SIMD path this CPU runs, across tile boundaries (tiles
of 128 elements, vectors of 8 and 16) and scalar tails, for strided inputs through the
public API, and for bfloat16/float16 storage, which computes in float as float32 does.
"""

import numpy as np
import pytest

import fastloss
import fastloss.reference as reference
from loss_specs import assert_close_contract
from test_pointwise_kernels import kernel_none

TILE = 128


def assert_each_element(actual, ref, what):
    """Each element within 2e-6 of its own reference value (where that is a normal float32;
    below, float32's flush of exp leaves values under 1e-37)."""
    normal = np.abs(ref) > 1e-37
    error = np.abs(actual.astype(np.float64) - ref)
    worst = np.max(error[normal] / np.abs(ref[normal]), initial=0.0)
    assert worst <= 2e-6, f"{what}: relative error {worst:.3g}"
    assert np.all(np.abs(actual[~normal]) <= 1e-37), what


def focal_logits(rng, n):
    # every regime: z near 0, the tails where sigma or 1 - sigma is tiny, exp's flush
    x = np.concatenate([rng.normal(0.0, 3.0, n // 2), rng.uniform(-90.0, 90.0, n - n // 2)])
    rng.shuffle(x)
    return x.astype(np.float32)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0])
@pytest.mark.parametrize("alpha", [0.25, -1.0, 0.0, 1.0, 0.6])
def test_focal_hard_tiles_each_element(simd_path, gamma, alpha, rng):
    # n = 40 tiles and a tail of 37 (a vector body and a scalar remainder)
    n = 40 * TILE + 37
    x = focal_logits(rng, n)
    y = (rng.uniform(size=n) < 0.5).astype(np.float32)
    loss, grad, _, _ = kernel_none("sigmoid_focal", [x, y], (alpha, gamma), np.float32)
    options = dict(alpha=alpha, gamma=gamma, reduction="none")
    assert_each_element(loss, reference.sigmoid_focal(x, y, **options), "loss")
    assert_each_element(grad, reference.sigmoid_focal_grad(x, y, **options), "grad")


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0])
def test_focal_hard_and_soft_tiles_mixed(simd_path, gamma, rng):
    # tiles of hard labels beside tiles with one soft label (the general pass, whose doubt
    # may send the rest of the block to double), and a soft label in the last tail
    n = 24 * TILE + 5
    x = focal_logits(rng, n)
    y = (rng.uniform(size=n) < 0.5).astype(np.float32)
    for tile in (3, 7, 8, 20):
        y[tile * TILE + 17] = 0.3
    y[-2] = 0.75
    loss, grad, _, _ = kernel_none("sigmoid_focal", [x, y], (0.25, gamma), np.float32)
    options = dict(alpha=0.25, gamma=gamma, reduction="none")
    ref_loss = reference.sigmoid_focal(x, y, **options)
    ref_grad = reference.sigmoid_focal_grad(x, y, **options)
    hard = np.ones(n, bool)
    for tile in (3, 7, 8, 20):
        hard[tile * TILE:(tile + 1) * TILE] = False
    hard[(n // TILE) * TILE:] = False
    # the hard tiles element by element; the others (soft labels, which may cancel in
    # s - y) to the contract of the array
    assert_each_element(loss[hard], ref_loss[hard], "loss")
    assert_each_element(grad[hard], ref_grad[hard], "grad")
    assert_close_contract(loss, ref_loss, np.float32)
    assert_close_contract(grad, ref_grad, np.float32, "grad")


def test_focal_hard_tile_special_values(simd_path):
    # the hard form at the extremes: torch's formula's NaN at x = -inf (bce's -inf + inf),
    # exact limits at +-1e4, and NaN logits
    x = np.array([1e4, -1e4, 1e4, -1e4, 0.0, -0.0, np.nan, -np.inf, 88.0, -88.0],
                 np.float32)
    y = np.array([1, 0, 0, 1, 1, 0, 1, 0, 0, 1], np.float32)
    loss, grad, _, _ = kernel_none("sigmoid_focal", [x, y], (0.25, 2.0), np.float32)
    assert loss[0] == 0 and loss[1] == 0 and grad[0] == 0 and grad[1] == 0
    assert loss[2] == pytest.approx(0.75e4, rel=1e-7) and grad[2] == pytest.approx(0.75)
    assert loss[3] == pytest.approx(0.25e4, rel=1e-7) and grad[3] == pytest.approx(-0.25)
    assert np.isnan(loss[6]) and np.isnan(grad[6])
    assert np.isnan(loss[7]) and np.isnan(grad[7])
    keep = np.array([4, 5, 8, 9])
    options = dict(alpha=0.25, gamma=2.0, reduction="none")
    assert_each_element(loss[keep], reference.sigmoid_focal(x[keep], y[keep], **options),
                        "loss")
    assert_each_element(grad[keep], reference.sigmoid_focal_grad(x[keep], y[keep], **options),
                        "grad")


@pytest.mark.parametrize("mode", ["forward", "grad"])
def test_focal_hard_tiles_agree_across_modes(simd_path, mode, rng):
    # the value-only and slope-only loops of the hard form against the fused one (to an
    # ulp: gcc may contract a loop's scalar remainder differently, elementwise_body.h)
    n = 9 * TILE + 11
    x = focal_logits(rng, n)
    y = (rng.uniform(size=n) < 0.5).astype(np.float32)
    loss, grad = fastloss.sigmoid_focal_value_and_grad(x, y, reduction="none")
    if mode == "forward":
        alone, fused = fastloss.sigmoid_focal(x, y, reduction="none"), loss
    else:
        alone, fused = fastloss.sigmoid_focal_grad(x, y, reduction="none"), grad
    assert np.all(np.abs(alone.astype(np.float64) - fused) <= 2.4e-7 * np.abs(fused) + 1e-45)


def test_focal_hard_tiles_strided_and_reduced(rng):
    # strided views through the public API, sum and mean, one thread and two (the same bits)
    n = 5000
    base_x = focal_logits(rng, 2 * n)
    base_y = (rng.uniform(size=2 * n) < 0.5).astype(np.float32)
    x, y = base_x[::2], base_y[1::2]
    xd, yd = x.astype(np.float64), y.astype(np.float64)
    for reduction in ("sum", "mean"):
        loss, grad = fastloss.sigmoid_focal_value_and_grad(x, y, reduction=reduction,
                                                           num_threads=1)
        again = fastloss.sigmoid_focal_value_and_grad(x, y, reduction=reduction,
                                                      num_threads=2)
        assert loss == again[0] and np.array_equal(grad, again[1])
        ref = reference.sigmoid_focal(xd, yd, reduction=reduction)
        assert loss == pytest.approx(ref, rel=2e-6)
        assert_close_contract(grad, reference.sigmoid_focal_grad(xd, yd, reduction=reduction),
                              np.float32, "grad")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_focal_hard_tiles_half_storage(dtype, rng):
    # half storage computes in float as float32 does: the same hard path, rounded to the
    # half type once.  Against the float32 kernel on the same (exactly widened) values.
    ml_dtypes = pytest.importorskip("ml_dtypes") if dtype == "bfloat16" else None
    half = getattr(ml_dtypes, dtype) if ml_dtypes else np.float16
    n = 3 * TILE + 9
    x = np.clip(focal_logits(rng, n), -60, 60).astype(half)
    y = (rng.uniform(size=n) < 0.5).astype(half)
    loss, grad = fastloss.sigmoid_focal_value_and_grad(x, y, reduction="none")
    wide_loss, wide_grad = fastloss.sigmoid_focal_value_and_grad(
        x.astype(np.float32), y.astype(np.float32), reduction="none")
    assert loss.dtype == half and grad.dtype == half
    # each the float32 result rounded once to the half type
    assert np.array_equal(loss.astype(np.float32), wide_loss.astype(half).astype(np.float32))
    assert np.array_equal(grad.astype(np.float32), wide_grad.astype(half).astype(np.float32))


@pytest.mark.parametrize("loss_name", ["poisson_nll", "gaussian_nll"])
def test_sums_with_negative_terms_keep_their_magnitude(simd_path, loss_name, rng):
    # tiles with negative terms and tiles without, and a tail: the sum and mean to the
    # contract, and a sum that cancels (terms of both signs) redone to the contract too
    n = 11 * TILE + 29
    if loss_name == "poisson_nll":
        x = rng.normal(0.0, 1.0, n).astype(np.float32)
        t = rng.poisson(2.0, n).astype(np.float32)
        t[: 3 * TILE] = 0  # tiles of positive terms alone (exp(x) with y = 0)
        args = (x, t)
    else:
        x = rng.normal(0.0, 1.0, n).astype(np.float32)
        t = rng.normal(0.0, 1.0, n).astype(np.float32)
        v = rng.uniform(0.1, 3.0, n).astype(np.float32)
        v[: 3 * TILE] = rng.uniform(1.5, 3.0, 3 * TILE)  # log v > 0: positive terms
        args = (x, t, v)
    function = getattr(fastloss, f"{loss_name}_value_and_grad")
    ref_function = getattr(reference, loss_name)
    wide = [a.astype(np.float64) for a in args]
    for reduction in ("sum", "mean"):
        loss, _ = function(*args, reduction=reduction)
        ref = ref_function(*wide, reduction=reduction)
        terms = ref_function(*wide, reduction="none")
        # the contract on the sum: 2e-6 of its magnitude where it does not cancel, else
        # redone in double (float64's arithmetic): then to 2e-6 of itself as well
        assert abs(loss - ref) <= 2e-6 * abs(ref) + 1e-12 * np.abs(terms).sum(), reduction


def _kernel_sum(name, arrays, weight=None, dtype=np.float32):
    """The kernel's (sum, magnitude) of one forward call with reduction "sum", 1 thread."""
    from fastloss import _kernels, _registry

    entry = _registry.LOSSES[name]
    checked = {option.name: option.checked(option.default) for option in entry.options}
    params = entry.params(checked) if entry.params else ()
    flat = [np.ascontiguousarray(a, dtype=dtype).reshape(-1) for a in arrays]
    extra = {"aux": flat[2]} if len(flat) > 2 else {}
    return _kernels.ew_run("forward", entry.kernel, flat[0], flat[1], weight, None, None, None,
                           None, params, "sum", 1, **extra)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss_name", ["poisson_nll", "gaussian_nll"])
def test_magnitude_of_signed_terms(simd_path, loss_name, dtype, rng):
    # the magnitude the kernel returns beside the sum (sum |term|, its negative terms summed
    # in float lanes a tile at a time where the compute type is float: EW(block)) is within
    # 5e-7 of the reference's, and is what decides the double redo of elementwise.c
    n = 23 * TILE + 45
    x = rng.normal(0.0, 1.0, n)
    if loss_name == "poisson_nll":
        arrays = [x, rng.poisson(2.0, n).astype(np.float64)]
    else:
        arrays = [x, rng.normal(0.0, 1.0, n), rng.uniform(0.1, 3.0, n)]
    arrays = [a.astype(dtype).astype(np.float64) for a in arrays]
    terms = getattr(reference, loss_name)(*arrays, reduction="none")
    assert (terms < 0).mean() > 0.05 and (terms > 0).mean() > 0.05  # both signs in play
    total, magnitude = _kernel_sum(loss_name, arrays, dtype=dtype)
    ref_magnitude = np.abs(terms).sum()
    assert abs(magnitude - ref_magnitude) <= 5e-7 * ref_magnitude
    assert abs(total - terms.sum()) <= 2e-6 * abs(terms.sum())


def test_magnitude_overflowing_a_float_lane_redoes_the_sum(simd_path):
    # negative terms of -3e38 (near float32's largest), several to a lane of the float
    # negative sum: the lane overflows to -inf, the float pass's magnitude is +inf, so
    # elementwise.c takes the sum again in double, whose sum and magnitude (to 1e-12,
    # which only the double pass gives) are what this call returns
    n = 3 * TILE + 7
    pred = np.full(n, 1e19, np.float32)
    target = np.zeros(n, np.float32)
    weight = np.full(n, -3.0, np.float32)
    weight[::5] = 2.0  # terms of both signs
    total, magnitude = _kernel_sum("mse", [pred, target], weight=weight)
    wide = [a.astype(np.float64) for a in (pred, target, weight)]
    terms = wide[2] * (wide[0] - wide[1]) ** 2
    ref = terms.sum()
    assert np.isfinite(ref) and abs(total - ref) <= 1e-12 * abs(ref)
    assert abs(magnitude - np.abs(terms).sum()) <= 1e-12 * np.abs(terms).sum()


def poisson_hard_inputs(rng, n):
    """log-rates and counts over every regime of poisson_nll with log_input: x near
    log y (exp(x) - y and exp(x) - y x cancel to any depth), counts of 0 (no
    cancellation), |x| up to 100 (exp flushed, or beyond float's range), and
    non-integer counts."""
    y = rng.poisson(3.0, n).astype(np.float64)
    y[rng.random(n) < 0.1] = 0.0
    soft = rng.random(n) < 0.2
    y[soft] = rng.uniform(0.0, 50.0, soft.sum())
    x = rng.normal(0.0, 2.0, n)
    near = (rng.random(n) < 0.3) & (y > 0)
    # x within a few ulps to a few percent of log y: e - y cancels to any depth
    x[near] = np.log(y[near]) * (1.0 + rng.choice([0.0, 1e-7, 1e-5, 1e-3, 3e-2], near.sum()))
    wide = rng.random(n) < 0.05
    x[wide] = rng.uniform(-100.0, 100.0, wide.sum())
    return x.astype(np.float32), y.astype(np.float32)


def test_poisson_log_input_each_element(simd_path, rng):
    # float32 log_input without full, where exp(x) and y (or y x) cancel: every element
    # within 2e-6 of its own reference (not only of the array's largest), across tiles
    # and a scalar tail, on every SIMD path
    n = 30 * TILE + 45
    x, y = poisson_hard_inputs(rng, n)
    loss, grad, grad_target, _ = kernel_none("poisson_nll", [x, y], (1, 0, 1e-8), np.float32)
    xd, yd = x.astype(np.float64), y.astype(np.float64)
    finite = np.abs(xd) <= 88.0  # exp(x) within float's range
    ref_loss = reference.poisson_nll(xd, yd, reduction="none")
    ref_grad, ref_target = reference.poisson_nll_grad(xd, yd, reduction="none",
                                                      wrt=("input", "target"))
    assert_each_element(loss[finite], ref_loss[finite], "loss")
    assert_each_element(grad[finite], ref_grad[finite], "grad")
    assert np.array_equal(grad_target, -x)
    # past float's range: torch's float32 overflow to inf (x > 88.7)
    assert np.all(np.isposinf(loss[xd > 89.0])) and np.all(np.isposinf(grad[xd > 89.0]))
    assert_close_contract(loss[finite], ref_loss[finite], np.float32)


def test_poisson_log_input_edge_values(simd_path):
    # |x| around 80 and 88 (float's exp range), exp's flush, NaN and inf inputs, huge
    # counts (y x beyond float's range), a count equal to exp(x) rounded to float
    x = np.array([80.0, -80.0, 80.5, -80.5, 87.0, -87.0, -100.0, 88.5, np.nan, 1.0,
                  -np.inf, np.inf, 2.0, 1e-30, -1e-30, 0.0, 3.0, 50.0, 1.0, 0.5], np.float32)
    y = np.array([1.0, 1e30, 0.0, 2.0, 1.0, 0.0, 0.0, 3.0, 1.0, np.nan,
                  1.0, 0.0, 3e38, 0.0, 1.0, 1.0, np.float32(np.exp(3.0)), 1e20, np.inf,
                  np.float32(np.exp(0.5))], np.float32)
    loss, grad, _, _ = kernel_none("poisson_nll", [x, y], (1, 0, 1e-8), np.float32)
    with np.errstate(all="ignore"):
        xd, yd = x.astype(np.float64), y.astype(np.float64)
        ref_loss = np.exp(xd) - yd * xd
        ref_grad = np.exp(xd) - yd
    for actual, ref in ((loss, ref_loss), (grad, ref_grad)):
        with np.errstate(over="ignore"):
            rounded = ref.astype(np.float32)  # float32's own overflow and NaN, as torch's
        special = ~np.isfinite(rounded)
        assert np.array_equal(np.isnan(actual), np.isnan(rounded))
        assert np.array_equal(actual[special & ~np.isnan(rounded)],
                              rounded[special & ~np.isnan(rounded)])
        ok = ~special & (np.abs(ref) > 1e-37)
        assert_each_element(actual[ok], ref[ok], "edge")
        # exp(x) flushed below float's range: the value y (-x) or 0 to within float's
        # smallest normal, as the double path rounds it
        small = ~special & (np.abs(ref) <= 1e-37)
        assert np.all(np.abs(actual[small]) <= 1e-37)


@pytest.mark.parametrize("mode", ["forward", "grad"])
def test_poisson_log_input_agrees_across_modes(simd_path, mode, rng):
    # the value-only and slope-only loops against the fused one (to an ulp: gcc may
    # contract a loop's scalar remainder differently)
    n = 9 * TILE + 11
    x, y = poisson_hard_inputs(rng, n)
    loss, grad = fastloss.poisson_nll_value_and_grad(x, y, reduction="none")
    if mode == "forward":
        alone, fused = fastloss.poisson_nll(x, y, reduction="none"), loss
    else:
        alone, fused = fastloss.poisson_nll_grad(x, y, reduction="none"), grad
    ok = np.isfinite(fused)
    assert np.array_equal(np.isfinite(alone), ok)
    assert np.all(np.abs(alone[ok].astype(np.float64) - fused[ok])
                  <= 2.4e-7 * np.abs(fused[ok]) + 1e-45)


def test_poisson_log_input_threads_and_reductions(rng):
    # several blocks (FASTLOSS_EW_BLOCK = 16384 elements): one thread and two give the
    # same bits; the sum and mean to the contract
    n = 3 * 16384 + 77
    x, y = poisson_hard_inputs(rng, n)
    x = np.clip(x, -60, 60)
    xd, yd = x.astype(np.float64), y.astype(np.float64)
    for reduction in ("sum", "mean"):
        one = fastloss.poisson_nll_value_and_grad(x, y, reduction=reduction, num_threads=1)
        two = fastloss.poisson_nll_value_and_grad(x, y, reduction=reduction, num_threads=2)
        assert one[0] == two[0] and np.array_equal(one[1], two[1])
        assert_close_contract(np.float64(one[0]), reference.poisson_nll(xd, yd,
                                                                         reduction=reduction),
                              np.float32)
        assert_close_contract(one[1], reference.poisson_nll_grad(xd, yd, reduction=reduction),
                              np.float32, "grad")


@pytest.mark.parametrize("loss_name", ["poisson_nll", "gaussian_nll", "mse"])
def test_streamed_gradients_are_the_cached_ones(loss_name, rng):
    # gradients of at least 16 MiB are written with streaming stores through a buffer
    # (stream_store.h, FASTLOSS_STREAM_BYTES): the same bits as a call that
    # writes them through the cache, in place and not, aligned or not, every SIMD path
    n = (1 << 22) + 13  # 16 MiB of float32 and a tail
    big = rng.normal(0.0, 1.0, n + 1).astype(np.float32)
    second = rng.poisson(2.0, n + 1).astype(np.float32)
    third = rng.uniform(0.1, 3.0, n + 1).astype(np.float32)
    function = getattr(fastloss, f"{loss_name}_value_and_grad")
    for offset in (0, 1):  # a view one float in: the stores misaligned
        args = [a[offset:offset + n] for a in (big, second, third)][
            : 3 if loss_name == "gaussian_nll" else 2]
        loss, grad = function(*args, reduction="sum")
        # the head of the same arrays (under the threshold: cached stores) gives the same
        # bits element by element
        head = 5000
        assert np.array_equal(grad[:head], function(*[a[:head] for a in args],
                                                    reduction="sum")[1])
        # in place over the first input: the same gradient
        inputs = [a.copy() for a in args]
        loss_in_place, grad_in_place = function(*inputs, reduction="sum", out=inputs[0])
        assert grad_in_place is inputs[0]
        assert loss_in_place == loss and np.array_equal(grad_in_place, grad)
