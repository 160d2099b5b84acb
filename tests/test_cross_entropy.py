"""Cross-entropy: parity with ``fastloss.reference`` for every option, the fused and
split entry points, finite differences, edge cases, layouts, and parity with torch.

Every fastloss call goes through ``call_unmodified``, so every test also checks that the
inputs come back bitwise unchanged. Tolerances are the accuracy contract (loss_specs.py).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastloss
from fastloss import reference
from loss_specs import (
    DTYPES,
    LSE_TOLERANCE,
    REDUCTIONS,
    assert_array_type,
    assert_close,
    assert_close_contract,
    assert_loss_type,
    bitwise_equal,
    call_unmodified,
    central_differences,
    dtype_id,
    grad_output_for,
    make_ce_hard_inputs,
    make_ce_soft_inputs,
    random_logits,
    random_weight,
    spec_case_params,
)

SPEC_CASES = spec_case_params()
dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
reductions = pytest.mark.parametrize("reduction", REDUCTIONS)


def check_against_reference(logits, target, *, reductions=REDUCTIONS, grad_output=None,
                            **options):
    """Every public entry point (loss, loss + lse, grad, grad from lse, value_and_grad)
    against the reference for each reduction, with types, shapes and the contract.

    ``grad_output``: None uses 1.0 for mean/sum and a fixed non-trivial array for none.
    """
    array = np.asarray(logits)
    dtype = array.dtype
    batch_shape = array.shape[:-1]
    for reduction in reductions:
        opts = dict(options, reduction=reduction)
        upstream = grad_output
        if upstream is None:
            upstream = (np.linspace(-1.5, 2.0, int(np.prod(batch_shape))).reshape(batch_shape)
                        if reduction == "none" else 1.0)
        label = f"reduction={reduction}"
        ref_loss, ref_lse = reference.cross_entropy(logits, target, return_lse=True, **opts)
        ref_grad = reference.cross_entropy_grad(logits, target, upstream, **opts)

        loss = call_unmodified(fastloss.cross_entropy, logits, target, **opts)
        assert_loss_type(loss, dtype, reduction, batch_shape)
        assert_close_contract(loss, ref_loss, dtype, "loss", what=f"loss, {label}")

        loss_again, lse = call_unmodified(fastloss.cross_entropy, logits, target,
                                          return_lse=True, **opts)
        assert_loss_type(loss_again, dtype, reduction, batch_shape)
        assert_close_contract(loss_again, ref_loss, dtype, "loss",
                              what=f"loss with return_lse, {label}")
        assert_array_type(lse, np.float64, batch_shape, "lse")
        assert_close(lse, ref_lse, LSE_TOLERANCE[dtype], what=f"lse, {label}")

        grad = call_unmodified(fastloss.cross_entropy_grad, logits, target, upstream, **opts)
        assert_array_type(grad, dtype, array.shape)
        assert_close_contract(grad, ref_grad, dtype, "grad", what=f"grad, {label}")

        grad_from_lse = call_unmodified(fastloss.cross_entropy_grad, logits, target, upstream,
                                        lse=lse, **opts)
        assert_array_type(grad_from_lse, dtype, array.shape)
        assert_close_contract(grad_from_lse, ref_grad, dtype, "grad",
                              what=f"grad from lse, {label}")

        fused_loss, fused_grad = call_unmodified(fastloss.cross_entropy_value_and_grad,
                                                 logits, target, upstream, **opts)
        assert_loss_type(fused_loss, dtype, reduction, batch_shape)
        assert_array_type(fused_grad, dtype, array.shape)
        assert_close_contract(fused_loss, ref_loss, dtype, "loss",
                              what=f"value_and_grad loss, {label}")
        assert_close_contract(fused_grad, ref_grad, dtype, "grad",
                              what=f"value_and_grad grad, {label}")


# ----------------------------------------------------------------------------------------
# The table: every spec x case x dtype x reduction
# ----------------------------------------------------------------------------------------

@reductions
@dtypes
@pytest.mark.parametrize("spec, case", SPEC_CASES)
def test_loss_matches_reference(spec, case, dtype, reduction, rng):
    shape = spec.default_shape
    args, options = spec.make_inputs(rng, dtype, case.params, shape)
    loss = call_unmodified(spec.public.value, *args, reduction=reduction, **options)
    expected = spec.reference.value(*args, reduction=reduction, **options)
    assert_loss_type(loss, dtype, reduction, spec.loss_shape(shape))
    assert_close(loss, expected, spec.tolerance(dtype, "loss"))


@reductions
@dtypes
@pytest.mark.parametrize("spec, case", SPEC_CASES)
def test_grad_matches_reference(spec, case, dtype, reduction, rng):
    shape = spec.default_shape
    args, options = spec.make_inputs(rng, dtype, case.params, shape)
    grad_output = grad_output_for(rng, spec, shape, dtype, reduction)
    grad = call_unmodified(spec.public.grad, *args, grad_output, reduction=reduction,
                           **options)
    expected = spec.reference.grad(*args, grad_output, reduction=reduction, **options)
    assert_array_type(grad, dtype, shape)
    assert_close(grad, expected, spec.tolerance(dtype, "grad"))


@reductions
@dtypes
@pytest.mark.parametrize("spec, case", SPEC_CASES)
def test_value_and_grad_matches_reference_and_separate_calls(spec, case, dtype, reduction,
                                                             rng):
    shape = spec.default_shape
    args, options = spec.make_inputs(rng, dtype, case.params, shape)
    grad_output = grad_output_for(rng, spec, shape, dtype, reduction)
    options["reduction"] = reduction
    loss, grad = call_unmodified(spec.public.value_and_grad, *args, grad_output, **options)
    ref_loss, ref_grad = spec.reference.value_and_grad(*args, grad_output, **options)
    assert_loss_type(loss, dtype, reduction, spec.loss_shape(shape))
    assert_array_type(grad, dtype, shape)
    assert_close(loss, ref_loss, spec.tolerance(dtype, "loss"), what="fused loss")
    assert_close(grad, ref_grad, spec.tolerance(dtype, "grad"), what="fused grad")
    # The fused pass and the separate calls agree with each other as closely as each
    # agrees with the reference.
    separate_loss = spec.public.value(*args, **options)
    separate_grad = spec.public.grad(*args, grad_output, **options)
    assert_close(loss, separate_loss, spec.tolerance(dtype, "loss"), what="fused vs value")
    assert_close(grad, separate_grad, spec.tolerance(dtype, "grad"), what="fused vs grad")


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
def test_reduced_float32_loss_is_a_float32_value(soft, reduction, rng):
    # DESIGN.md: "results have the input's dtype (scalars are Python floats)", so a float32
    # loss is a Python float holding a float32 value (as float(torch_tensor.item()) would).
    make = make_ce_soft_inputs if soft else make_ce_hard_inputs
    (logits, target), options = make(rng, np.float32, {"weight": True}, (N_ROWS, N_CLASSES))
    for loss in (fastloss.cross_entropy(logits, target, reduction=reduction, **options),
                 fastloss.cross_entropy(logits, target, reduction=reduction, return_lse=True,
                                        **options)[0],
                 fastloss.cross_entropy_value_and_grad(logits, target, reduction=reduction,
                                                       **options)[0]):
        assert type(loss) is float
        assert float(np.float32(loss)) == loss, f"{loss!r} is not a float32 value"


# ----------------------------------------------------------------------------------------
# Options, one at a time and crossed
# ----------------------------------------------------------------------------------------

N_ROWS, N_CLASSES = 41, 7


@dtypes
@pytest.mark.parametrize(
    "ignore_index", [-100, -1, 0, N_CLASSES - 1, N_CLASSES + 5, 10**6],
    ids=lambda value: f"ignore_index={value}")
def test_ignore_index_values(ignore_index, dtype, rng):
    logits = random_logits(rng, (N_ROWS, N_CLASSES), dtype)
    target = rng.integers(0, N_CLASSES, N_ROWS)
    target[::4] = ignore_index  # a value >= C is fine when it is the ignore_index
    weight = random_weight(rng, N_CLASSES, dtype)
    ignored = target == ignore_index
    assert ignored.any() and not ignored.all()

    check_against_reference(logits, target, weight=weight, ignore_index=ignore_index,
                            label_smoothing=0.1, z_loss=1e-3)
    per_row, lse = fastloss.cross_entropy(logits, target, weight=weight,
                                          ignore_index=ignore_index, reduction="none",
                                          return_lse=True)
    assert np.all(per_row[ignored] == 0) and np.all(per_row[~ignored] > 0)
    assert np.all(lse[ignored] == 0)
    grad = fastloss.cross_entropy_grad(logits, target, weight=weight,
                                       ignore_index=ignore_index)
    assert np.all(grad[ignored] == 0)
    # Ignoring rows is the same as leaving them out (weighted mean over the rest).
    kept = ~ignored
    for reduction in ("mean", "sum"):
        got = fastloss.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index,
                                     reduction=reduction)
        subset = reference.cross_entropy(logits[kept], target[kept], weight=weight,
                                         reduction=reduction)
        assert_close_contract(got, subset, dtype, "loss")


@dtypes
def test_ignored_class_weight_is_never_used(dtype, rng):
    # With ignore_index = a class, that class's weight must not reach the mean's denominator.
    logits = random_logits(rng, (N_ROWS, N_CLASSES), dtype)
    target = rng.integers(0, N_CLASSES, N_ROWS)
    target[:5] = 2
    weight = random_weight(rng, N_CLASSES, dtype)
    heavy = weight.copy()
    heavy[2] = 1000.0
    light = fastloss.cross_entropy(logits, target, weight=weight, ignore_index=2)
    changed = fastloss.cross_entropy(logits, target, weight=heavy, ignore_index=2)
    assert light == changed


@reductions
@dtypes
@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
def test_return_lse(soft, dtype, reduction, rng):
    make = make_ce_soft_inputs if soft else make_ce_hard_inputs
    params = {"weight": True, "z_loss": 1e-3, "softcap": 5.0}
    if not soft:
        params["ignore_fraction"] = 0.3
    (logits, target), options = make(rng, dtype, params, (N_ROWS, N_CLASSES))
    loss, lse = call_unmodified(fastloss.cross_entropy, logits, target, reduction=reduction,
                                return_lse=True, **options)
    ref_loss, ref_lse = reference.cross_entropy(logits, target, reduction=reduction,
                                                return_lse=True, **options)
    assert_loss_type(loss, dtype, reduction, (N_ROWS,))
    assert_close_contract(loss, ref_loss, dtype, "loss")
    assert_array_type(lse, np.float64, (N_ROWS,), "lse")
    assert_close(lse, ref_lse, LSE_TOLERANCE[np.dtype(dtype)], what="lse")
    if not soft:
        ignored = target == -100
        assert ignored.any() and np.all(lse[ignored] == 0.0)
    # Asking for the lse does not change the loss.
    plain = fastloss.cross_entropy(logits, target, reduction=reduction, **options)
    assert_close_contract(loss, plain, dtype, "loss")


@reductions
@dtypes
@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
def test_grad_from_lse(soft, dtype, reduction, rng):
    make = make_ce_soft_inputs if soft else make_ce_hard_inputs
    params = {"weight": True, "label_smoothing": 0.1, "z_loss": 1e-2, "softcap": 5.0}
    if not soft:
        params["ignore_fraction"] = 0.3
    (logits, target), options = make(rng, dtype, params, (N_ROWS, N_CLASSES))
    options["reduction"] = reduction
    grad_output = 0.8 if reduction != "none" else rng.uniform(-1, 1, N_ROWS).astype(dtype)
    _, lse = fastloss.cross_entropy(logits, target, return_lse=True, **options)
    grad = call_unmodified(fastloss.cross_entropy_grad, logits, target, grad_output, lse=lse,
                           **options)
    expected = reference.cross_entropy_grad(logits, target, grad_output, **options)
    assert_array_type(grad, dtype, logits.shape)
    assert_close_contract(grad, expected, dtype, "grad")


@dtypes
@pytest.mark.parametrize("shift", [np.log(2.0), -0.3, 1e-9, 50.0, -50.0, np.nan],
                         ids=["+log2", "-0.3", "+1e-9", "+50", "-50", "nan"])
@pytest.mark.parametrize("in_place", [False, True], ids=["out", "in-place"])
def test_grad_from_an_lse_that_is_off(in_place, shift, dtype, rng):
    # The lse is the shift of the exps, renormalised by their sum: an lse off by less
    # than log 2 gives the exact gradient, one off by more (another call's) is detected
    # and the row recomputed from its logits, in place too. Never a silently wrong answer.
    for n_classes in (N_CLASSES, 10):  # the per-row path and the small-vocabulary path
        logits = random_logits(rng, (N_ROWS, n_classes), dtype)
        target = rng.integers(0, n_classes, N_ROWS)
        target[::7] = -100
        options = dict(reduction="sum", z_loss=1e-3)
        _, lse = fastloss.cross_entropy(logits, target, return_lse=True, **options)
        expected = reference.cross_entropy_grad(logits, target, **options)
        wrong = lse + shift
        out = logits.copy() if in_place else None
        grad = fastloss.cross_entropy_grad(out if in_place else logits, target, lse=wrong,
                                           out=out, **options)
        assert_close_contract(grad, expected, dtype, "grad")


@dtypes
def test_grad_from_lse_is_exact_at_large_logits(dtype):
    # Issue 11: one rounded float64 lse is off by up to 1e-12 near 1e4, and at 1e16 the
    # log(2) of two equal logits is lost entirely; the gradient from it was [0, 1].
    cases = [(np.array([[1e16, 1e16]]), np.array([0]), np.array([[-0.5, 0.5]]))]
    if dtype == np.float64:
        cases.append((np.array([[10000.0, 9995.5]]), np.array([0]), None))
    for logits, target, expected in cases:
        logits = logits.astype(dtype)
        _, lse = fastloss.cross_entropy(logits, target, return_lse=True)
        grad = fastloss.cross_entropy_grad(logits, target, lse=lse)
        if expected is None:
            expected = reference.cross_entropy_grad(logits, target)
        assert_close_contract(grad, expected, dtype, "grad")


@dtypes
@pytest.mark.parametrize("n_classes", [2, 10, 100, 3000], ids=lambda c: f"C={c}")
@pytest.mark.parametrize("scale", [10.0, 1e3, 1e4], ids=lambda s: f"x{s:g}")
def test_every_entry_point_at_large_logits(scale, n_classes, dtype, rng):
    # Logits up to +-1e4 (the contract's range): rows where the target is far ahead
    # (p_t - 1 of -1e-30) and far behind, with ignored rows, every option that moves
    # the gradient; the fused pass, the lse pass and the forward all meet the contract.
    n_rows = 40
    logits = (rng.uniform(-1, 1, (n_rows, n_classes)) * scale).astype(dtype)
    target = rng.integers(0, n_classes, n_rows)
    target[:10] = np.argmax(logits[:10], axis=1)  # converged rows
    target[-3:] = -100
    for options in ({}, {"z_loss": 1e-4}, {"weight": random_weight(rng, n_classes, dtype)},
                    {"label_smoothing": 0.1, "reduction": "sum"}):
        check_against_reference(logits, target, **options)


@dtypes
def test_target_grad_of_converged_rows_keeps_its_digits(dtype):
    # p_t - 1 of a converged row is minus the other classes' share, not a rounded p_t
    # minus 1 (which keeps one ulp of 1): -9.36e-14 at [30, 0], for every path.
    for n_classes in (2, 10, 5000):
        logits = np.zeros((3, n_classes), dtype)
        logits[:, 0] = 30.0
        target = np.zeros(3, np.int64)
        exact = -(n_classes - 1) * np.exp(-30.0) / (1.0 + (n_classes - 1) * np.exp(-30.0)) / 3
        _, lse = fastloss.cross_entropy(logits, target, return_lse=True)
        for grad in (fastloss.cross_entropy_grad(logits, target),
                     fastloss.cross_entropy_grad(logits, target, lse=lse),
                     fastloss.cross_entropy_value_and_grad(logits, target)[1]):
            assert_close_contract(grad[:, 0], np.full(3, exact), dtype, "grad")
            assert_close_contract(grad, reference.cross_entropy_grad(logits, target), dtype,
                                  "grad")


@dtypes
@pytest.mark.parametrize("n_classes", [1, 2, 3, 7, 8, 9, 16, 17, 63, 64, 65],
                         ids=lambda c: f"C={c}")
@pytest.mark.parametrize("n_rows", [1, 15, 16, 17, 50], ids=lambda n: f"N={n}")
def test_small_vocabularies(n_rows, n_classes, dtype, rng):
    # Up to 64 classes the rows go 16 at a time, one per SIMD lane: every row count
    # around a block, every class count around the 8 summation lanes and the bound,
    # ignored rows, weights, smoothing (float64; float32 takes the double path) and the
    # z-loss, against the reference; strided rows too.
    logits = random_logits(rng, (n_rows, 2 * n_classes), dtype)[:, ::2]
    target = rng.integers(0, n_classes, n_rows)
    target[::5] = -100
    for options in ({}, {"weight": random_weight(rng, n_classes, dtype), "z_loss": 1e-3},
                    {"label_smoothing": 0.2}):
        check_against_reference(logits, target, **options)


@dtypes
def test_grad_output_forms(dtype, rng):
    (logits, target), options = make_ce_hard_inputs(
        rng, dtype, {"weight": True, "ignore_fraction": 0.2, "z_loss": 1e-3},
        (N_ROWS, N_CLASSES))
    for reduction in ("mean", "sum"):
        opts = dict(options, reduction=reduction)
        default = fastloss.cross_entropy_grad(logits, target, **opts)
        one = fastloss.cross_entropy_grad(logits, target, 1.0, **opts)
        assert bitwise_equal(default, one)
        keyword = fastloss.cross_entropy_grad(logits, target, grad_output=2.5, **opts)
        for form in (2.5, np.float32(2.5), np.float64(2.5), np.array(2.5),
                     np.array(2.5, np.float32)):
            assert bitwise_equal(fastloss.cross_entropy_grad(logits, target, form, **opts),
                                 keyword)
        assert_close_contract(keyword, reference.cross_entropy_grad(logits, target, 2.5, **opts),
                              dtype, "grad")
        zero = fastloss.cross_entropy_grad(logits, target, 0.0, **opts)
        assert np.all(zero == 0)
    opts = dict(options, reduction="none")
    scalar = fastloss.cross_entropy_grad(logits, target, -0.75, **opts)
    array = fastloss.cross_entropy_grad(logits, target, np.full(N_ROWS, -0.75, dtype), **opts)
    assert bitwise_equal(scalar, array)
    assert_close_contract(scalar, reference.cross_entropy_grad(logits, target, -0.75, **opts),
                          dtype, "grad")
    per_row = rng.uniform(-3, 3, N_ROWS)
    for upstream in (per_row, per_row.astype(np.float32), list(per_row)):
        got = fastloss.cross_entropy_grad(logits, target, upstream, **opts)
        expected = reference.cross_entropy_grad(logits, target, np.asarray(upstream), **opts)
        assert_close_contract(got, expected, dtype, "grad")


@reductions
@dtypes
@pytest.mark.parametrize("entry", ["grad", "value_and_grad"])
def test_out_preallocated(entry, dtype, reduction, rng):
    (logits, target), options = make_ce_hard_inputs(
        rng, dtype, {"weight": True, "ignore_fraction": 0.2, "label_smoothing": 0.1},
        (N_ROWS, N_CLASSES))
    options["reduction"] = reduction
    grad_output = 1.5 if reduction != "none" else rng.uniform(-1, 1, N_ROWS)
    func = getattr(fastloss, f"cross_entropy_{entry}")
    expected = func(logits, target, grad_output, **options)
    out = np.full_like(logits, np.nan)
    result = call_unmodified(func, logits, target, grad_output, out=out, **options)
    grad = result if entry == "grad" else result[1]
    assert grad is out
    expected_grad = expected if entry == "grad" else expected[1]
    assert bitwise_equal(out, expected_grad)
    if entry == "value_and_grad":
        assert bitwise_equal(np.asarray(result[0]), np.asarray(expected[0]))


@reductions
@dtypes
@pytest.mark.parametrize("entry", ["grad", "grad_from_lse", "value_and_grad"])
@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
def test_out_is_logits_in_place(soft, entry, dtype, reduction, rng):
    make = make_ce_soft_inputs if soft else make_ce_hard_inputs
    params = {"weight": True, "label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 6.0}
    if not soft:
        params["ignore_fraction"] = 0.2
    (logits, target), options = make(rng, dtype, params, (N_ROWS, N_CLASSES))
    options["reduction"] = reduction
    grad_output = 1.5 if reduction != "none" else rng.uniform(-1, 1, N_ROWS)
    expected_loss, expected_grad = fastloss.cross_entropy_value_and_grad(
        logits, target, grad_output, **options)
    buffer = logits.copy()
    if entry == "grad":
        result = call_unmodified(fastloss.cross_entropy_grad, buffer, target, grad_output,
                                 out=buffer, **options)
    elif entry == "grad_from_lse":
        _, lse = fastloss.cross_entropy(logits, target, return_lse=True, **options)
        result = call_unmodified(fastloss.cross_entropy_grad, buffer, target, grad_output,
                                 lse=lse, out=buffer, **options)
    else:
        loss, result = call_unmodified(fastloss.cross_entropy_value_and_grad, buffer, target,
                                       grad_output, out=buffer, **options)
        assert_close_contract(loss, expected_loss, dtype, "loss")
    assert result is buffer
    assert_close_contract(buffer, expected_grad, dtype, "grad")
    assert_close_contract(buffer, reference.cross_entropy_grad(logits, target, grad_output,
                                                               **options), dtype, "grad")


@dtypes
@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
def test_three_dimensional_inputs(soft, dtype, rng):
    shape = (4, 5, 11)
    make = make_ce_soft_inputs if soft else make_ce_hard_inputs
    params = {"weight": True, "label_smoothing": 0.1, "z_loss": 1e-3}
    if not soft:
        params["ignore_fraction"] = 0.2
    (logits, target), options = make(rng, dtype, params, shape)
    check_against_reference(logits, target, **options)
    # Same numbers as the flattened (B*T, C) problem.
    flat_target = target.reshape(-1) if not soft else target.reshape(-1, shape[-1])
    for reduction in REDUCTIONS:
        got = fastloss.cross_entropy(logits, target, reduction=reduction, **options)
        flat = fastloss.cross_entropy(logits.reshape(-1, shape[-1]), flat_target,
                                      reduction=reduction, **options)
        assert_close_contract(got, np.reshape(flat, np.shape(got)), dtype, "loss")


@dtypes
@pytest.mark.parametrize("target_form", ["int", "np.int64", "0-d array", "np.uint8"])
def test_one_dimensional_logits_with_scalar_target(target_form, dtype, rng):
    logits = random_logits(rng, (9,), dtype)
    target = {"int": 4, "np.int64": np.int64(4), "0-d array": np.array(4),
              "np.uint8": np.uint8(4)}[target_form]
    weight = random_weight(rng, 9, dtype)
    check_against_reference(logits, target, weight=weight, label_smoothing=0.1, z_loss=1e-3)
    loss = fastloss.cross_entropy(logits, target, reduction="none")
    assert isinstance(loss, np.ndarray) and loss.shape == () and loss.dtype == dtype
    expected = reference.cross_entropy(logits, target, reduction="none")
    assert_close_contract(loss, expected, dtype, "loss")


@dtypes
def test_one_dimensional_soft_target(dtype, rng):
    (logits, target), options = make_ce_soft_inputs(rng, dtype, {"label_smoothing": 0.2},
                                                    (9,))
    check_against_reference(logits, target, **options)


def test_python_lists():
    logits = [[0.5, -1.25, 2.0, 0.0], [3.0, 1.0, -2.0, 0.25], [0.0, 0.0, 0.0, 0.0]]
    target = [2, 0, 3]
    check_against_reference(logits, target, weight=[1.0, 0.5, 2.0, 1.5], label_smoothing=0.1)
    loss = fastloss.cross_entropy(logits, target, reduction="none")
    assert loss.dtype == np.float64
    soft = [[0.25, 0.25, 0.5, 0.0], [1.0, 0.0, 0.0, 0.0], [0.1, 0.2, 0.3, 0.4]]
    check_against_reference(logits, soft)
    assert_close_contract(fastloss.cross_entropy(logits[0], target[0]),
                          reference.cross_entropy(logits[0], target[0]), np.float64, "loss")


# ----------------------------------------------------------------------------------------
# Finite differences (float64)
# ----------------------------------------------------------------------------------------

FD_CASES = [
    pytest.param("hard", "mean", {}, id="hard-mean"),
    pytest.param("hard", "sum", {"weight": True, "ignore_fraction": 0.3,
                                 "label_smoothing": 0.2}, id="hard-sum-weight+ignore+smoothing"),
    pytest.param("hard", "mean", {"weight": True, "ignore_fraction": 0.3, "z_loss": 0.05,
                                  "softcap": 2.0}, id="hard-mean-weight+ignore+z_loss+softcap"),
    pytest.param("hard", "none", {"label_smoothing": 0.1, "z_loss": 0.02},
                 id="hard-none-smoothing+z_loss"),
    pytest.param("soft", "mean", {"weight": True, "label_smoothing": 0.2, "z_loss": 0.05,
                                  "softcap": 3.0}, id="soft-mean-all"),
    pytest.param("soft", "none", {"unnormalised": True}, id="soft-none-unnormalised"),
]


@pytest.mark.parametrize("kind, reduction, params", FD_CASES)
def test_grad_matches_finite_differences(kind, reduction, params, rng):
    make = make_ce_soft_inputs if kind == "soft" else make_ce_hard_inputs
    (logits, target), options = make(rng, np.float64, dict(params, scale=1.5), (4, 5))
    grad_output = rng.uniform(0.5, 2.0, 4) if reduction == "none" else 1.0

    def loss(x):
        value = fastloss.cross_entropy(x, target, reduction=reduction, **options)
        return float(np.sum(grad_output * value))

    numeric = central_differences(loss, logits, step=1e-3)
    grad = fastloss.cross_entropy_grad(logits, target, grad_output, reduction=reduction,
                                       **options)
    # Truncation error is O(h**4 f''''') ~ 1e-12 and rounding eps*|f|/h ~ 1e-12 at h = 1e-3;
    # 1e-9 leaves a wide margin and still catches any wrong term of the gradient.
    np.testing.assert_allclose(grad, numeric, rtol=1e-7, atol=1e-9)


# ----------------------------------------------------------------------------------------
# Edge cases
# ----------------------------------------------------------------------------------------

@dtypes
def test_single_class(dtype, rng):
    logits = random_logits(rng, (6, 1), dtype)
    target = np.zeros(6, dtype=np.int64)
    target[2] = -100
    check_against_reference(logits, target, label_smoothing=0.3, z_loss=1e-2)
    for options in ({}, {"label_smoothing": 0.5, "weight": np.array([2.0], dtype)}):
        per_row = fastloss.cross_entropy(logits, target, reduction="none", **options)
        assert np.all(per_row == 0)
        assert fastloss.cross_entropy(logits, target, **options) == 0.0
        grad = fastloss.cross_entropy_grad(logits, target, **options)
        assert np.all(grad == 0)
    soft = np.ones((6, 1), dtype)
    assert np.all(fastloss.cross_entropy(logits, soft, reduction="none") == 0)
    assert np.all(fastloss.cross_entropy_grad(logits, soft) == 0)


@dtypes
@pytest.mark.parametrize("shape", [(0, 7), (0, 3, 7), (2, 0, 7)], ids=str)
@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
def test_empty_batch(soft, shape, dtype):
    logits = np.zeros(shape, dtype)
    target = np.zeros(shape, dtype) if soft else np.zeros(shape[:-1], np.int64)
    options = {"weight": np.ones(7, dtype), "label_smoothing": 0.1, "z_loss": 1e-3}
    mean = call_unmodified(fastloss.cross_entropy, logits, target, **options)
    assert type(mean) is float and np.isnan(mean)
    total = fastloss.cross_entropy(logits, target, reduction="sum", **options)
    assert type(total) is float and total == 0.0
    per_row, lse = fastloss.cross_entropy(logits, target, reduction="none", return_lse=True,
                                          **options)
    assert_array_type(per_row, dtype, shape[:-1], "loss")
    assert_array_type(lse, np.float64, shape[:-1], "lse")
    for reduction in REDUCTIONS:
        upstream = np.zeros(shape[:-1]) if reduction == "none" else 1.0
        grad = fastloss.cross_entropy_grad(logits, target, upstream, reduction=reduction,
                                           **options)
        assert_array_type(grad, dtype, shape)
        grad = fastloss.cross_entropy_grad(logits, target, upstream, reduction=reduction,
                                           lse=lse, **options)
        assert_array_type(grad, dtype, shape)
        loss, grad = fastloss.cross_entropy_value_and_grad(logits, target, upstream,
                                                           reduction=reduction, **options)
        assert_array_type(grad, dtype, shape)
        assert_loss_type(loss, dtype, reduction, shape[:-1])


@dtypes
@pytest.mark.parametrize("options", [
    pytest.param({}, id="plain"),
    pytest.param({"weight": True, "label_smoothing": 0.2, "z_loss": 1e-2, "softcap": 3.0},
                 id="all"),
])
def test_all_rows_ignored(options, dtype, rng):
    logits = random_logits(rng, (9, 5), dtype)
    logits[3, 1] = np.nan  # never read: ignored rows are not computed
    target = np.full(9, -7)
    options = dict(options, ignore_index=-7)
    if options.pop("weight", False):
        options["weight"] = random_weight(rng, 5, dtype)
    mean = call_unmodified(fastloss.cross_entropy, logits, target, **options)
    assert type(mean) is float and np.isnan(mean)
    assert fastloss.cross_entropy(logits, target, reduction="sum", **options) == 0.0
    per_row, lse = fastloss.cross_entropy(logits, target, reduction="none", return_lse=True,
                                          **options)
    assert_array_type(per_row, dtype, (9,), "loss")
    assert np.all(per_row == 0) and np.all(lse == 0)
    for reduction in REDUCTIONS:
        grad = call_unmodified(fastloss.cross_entropy_grad, logits, target,
                               reduction=reduction, **options)
        assert_array_type(grad, dtype, logits.shape)
        assert np.all(grad == 0), f"reduction={reduction}: ignored rows need a zero gradient"
        grad = fastloss.cross_entropy_grad(logits, target, reduction=reduction, lse=lse,
                                           **options)
        assert np.all(grad == 0)
        loss, grad = fastloss.cross_entropy_value_and_grad(logits, target,
                                                           reduction=reduction, **options)
        assert np.all(grad == 0)


@dtypes
@pytest.mark.parametrize("options", [
    pytest.param({}, id="plain"),
    pytest.param({"weight": True, "label_smoothing": 0.1}, id="weight+smoothing"),
    pytest.param({"z_loss": 1e-4, "ignore_index": 3}, id="z_loss+ignore"),
    pytest.param({"softcap": 30.0}, id="softcap"),
])
def test_huge_logits(options, dtype, rng):
    options = dict(options)
    n_rows, n_classes = 24, 50
    logits = rng.uniform(-1e4, 1e4, (n_rows, n_classes))
    logits[0] = 1e4          # all equal at the top of the range
    logits[1] = -1e4         # ... and at the bottom
    logits[2, :] = -1e4
    logits[2, 7] = 1e4       # one class far ahead
    logits[3] = 1e4 - rng.uniform(0, 5, n_classes)  # close together, far from zero
    logits = logits.astype(dtype)
    target = rng.integers(0, n_classes, n_rows)
    target[2] = 7
    if options.pop("weight", False):
        options["weight"] = random_weight(rng, n_classes, dtype)
    check_against_reference(logits, target, **options)


@dtypes
@pytest.mark.parametrize("options", [
    pytest.param({}, id="plain"),
    pytest.param({"weight": True, "label_smoothing": 0.1, "ignore_row": True, "z_loss": 1e-4},
                 id="weight+smoothing+ignore+z_loss"),
])
def test_very_many_classes(options, dtype, rng):
    options = dict(options)
    n_classes = 262144
    logits = random_logits(rng, (3, n_classes), dtype, scale=4.0)
    logits[1, 12345] = 30.0  # one dominant class
    target = np.array([n_classes - 1, 12345, 0])
    if options.pop("ignore_row", False):
        target[2] = -100
    if options.pop("weight", False):
        options["weight"] = random_weight(rng, n_classes, dtype)
    check_against_reference(logits, target, **options)


@dtypes
@pytest.mark.parametrize("margin", [1e3, 1e4, 3e4])
def test_target_at_argmax_with_huge_margin(margin, dtype):
    # exp(-margin) underflows to exactly 0 in float64, so the loss and the gradient are
    # exactly zero, not merely small; and stay zero when the row is shifted by +-1e4.
    n_rows, n_classes = 8, 16
    target = np.arange(n_rows) % n_classes
    logits = np.zeros((n_rows, n_classes))
    logits[np.arange(n_rows), target] = margin
    logits[::2] -= min(margin, 1e4) / 2
    logits = logits.astype(dtype)
    for reduction in REDUCTIONS:
        loss, grad = fastloss.cross_entropy_value_and_grad(logits, target, reduction=reduction)
        assert np.all(np.asarray(loss) == 0), f"reduction={reduction}: {loss}"
        assert np.all(grad == 0)
        loss, lse = fastloss.cross_entropy(logits, target, reduction=reduction,
                                           return_lse=True)
        assert np.all(np.asarray(loss) == 0)
        assert bitwise_equal(lse, logits[np.arange(n_rows), target].astype(np.float64))
        assert np.all(fastloss.cross_entropy_grad(logits, target, reduction=reduction,
                                                  lse=lse) == 0)


def test_target_at_argmax_with_moderate_margin_float32():
    # The loss log(1 + sum_c exp(-margin_c)) is tiny but representable; float32 logits must
    # still give it to 2e-6 relative (so no lse - logit cancellation in float32). The values
    # are exact in float32, so the float64 reference sees the same numbers.
    n_rows, n_classes = 12, 10
    target = np.arange(n_rows) % n_classes
    logits = np.zeros((n_rows, n_classes), np.float32)
    margins = np.arange(n_rows, dtype=np.float32) + 8.0  # 8 .. 19
    logits[np.arange(n_rows), target] = margins
    logits += np.float32(3.0) * (np.arange(n_rows, dtype=np.float32) % 3)[:, None]
    per_row = fastloss.cross_entropy(logits, target, reduction="none")
    expected = reference.cross_entropy(logits, target, reduction="none")
    assert np.all(expected > 0) and expected.min() < 1e-7
    for row in range(n_rows):
        assert_close_contract(per_row[row], expected[row], np.float32, "loss",
                              what=f"row {row}")
    assert_close_contract(fastloss.cross_entropy(logits, target, reduction="sum"),
                          reference.cross_entropy(logits, target, reduction="sum"),
                          np.float32, "loss")


@dtypes
@pytest.mark.parametrize("u", [3.0, 8.0, 15.0], ids=lambda u: f"x/softcap={u:g}")
def test_softcap_gradient_where_tanh_saturates(u, dtype):
    # Two equal logits x = u * softcap: p = (1/2, 1/2), so the gradient of the sum is
    # (-1/2, 1/2) * dy/dx with dy/dx = sech(u)**2, which 1/cosh(u)**2 gives to a few ulps.
    # 1 - tanh(u)**2 from a rounded tanh loses all accuracy as tanh(u) -> 1.
    softcap = 30.0
    logits = np.full((1, 2), u * softcap, dtype)
    target = np.array([0])
    expected = np.array([[-0.5, 0.5]]) / np.cosh(u) ** 2
    grad = fastloss.cross_entropy_grad(logits, target, reduction="sum", softcap=softcap)
    assert_close_contract(grad, expected, dtype, "grad")


@dtypes
@pytest.mark.parametrize("n_classes", [1, 2, 50])
def test_soft_target_near_the_softmax(n_classes, dtype, rng):
    # The soft-target gradient U * p_c - w_c q'_c nearly cancels when q' is close to the
    # softmax p (distillation near convergence); the contract still holds elementwise.
    # The float64 reference computes U * p_c to about 1e-16 * p_c, so for float64 the
    # targets stay 5% away from p (|grad| >~ 1e-3 p); float32 goes to 0.1%. With one class
    # the cross-entropy gradient is exactly 0 and only the z-loss term remains.
    closeness = 1e-3 if dtype == np.float32 else 5e-2
    logits = random_logits(rng, (16, n_classes), dtype, scale=2.0)
    softmax = np.exp(logits - logits.max(axis=1, keepdims=True).astype(np.float64))
    softmax /= softmax.sum(axis=1, keepdims=True)
    target = (softmax * (1 + closeness * rng.uniform(0.5, 1.5, softmax.shape)
                         * rng.choice([-1, 1], softmax.shape))).astype(dtype)
    options = {"z_loss": 1e-3} if n_classes == 1 else {}
    check_against_reference(logits, target, **options)


@dtypes
@pytest.mark.parametrize("smoothing", [0.0, 0.1], ids=["plain", "smoothing"])
def test_minus_infinity_logits(smoothing, dtype, rng):
    logits = random_logits(rng, (6, 9), dtype)
    logits[1, [0, 4, 8]] = -np.inf
    logits[3, :8] = -np.inf  # only the target class is finite
    target = np.array([0, 2, 5, 8, 1, 3])
    check_against_reference(logits, target, label_smoothing=smoothing)
    per_row = fastloss.cross_entropy(logits, target, reduction="none",
                                     label_smoothing=smoothing)
    grad = fastloss.cross_entropy_grad(logits, target, label_smoothing=smoothing)
    if smoothing == 0:
        assert np.all(np.isfinite(per_row)) and per_row[3] == 0
        assert np.all(grad[1, [0, 4, 8]] == 0) and np.all(grad[3] == 0)
    else:
        # (eps / C) * w_c * (lse - y_c) is +inf for a -inf logit, as in torch.
        assert per_row[1] == np.inf and np.all(np.isfinite(np.delete(per_row, [1, 3])))
    assert np.all(np.isfinite(grad))


@dtypes
@reductions
def test_nan_logit_poisons_only_its_row(reduction, dtype, rng):
    logits = random_logits(rng, (7, 6), dtype)
    logits[2, 4] = np.nan
    logits[5, 0] = np.nan  # in an ignored row: never read
    target = np.array([1, 0, 3, 5, 2, -100, 4])
    weight = random_weight(rng, 6, dtype)
    options = {"weight": weight, "label_smoothing": 0.1, "z_loss": 1e-3}
    check_against_reference(logits, target, reductions=[reduction], **options)
    loss, grad = fastloss.cross_entropy_value_and_grad(logits, target, reduction=reduction,
                                                       **options)
    if reduction == "none":
        assert np.isnan(loss[2]) and loss[5] == 0
        assert np.all(np.isfinite(np.delete(loss, 2)))
    else:
        assert np.isnan(loss)
    assert np.all(np.isnan(grad[2]))
    assert np.all(grad[5] == 0)
    assert np.all(np.isfinite(np.delete(grad, 2, axis=0)))


@dtypes
@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
def test_fortran_ordered(soft, dtype, rng):
    make = make_ce_soft_inputs if soft else make_ce_hard_inputs
    params = {"weight": True, "label_smoothing": 0.1, "z_loss": 1e-3}
    if not soft:
        params["ignore_fraction"] = 0.2
    (logits, target), options = make(rng, dtype, params, (N_ROWS, N_CLASSES))
    logits = np.asfortranarray(logits)
    if soft:
        target = np.asfortranarray(target)
    assert not logits.flags.c_contiguous
    check_against_reference(logits, target, **options)
    (logits3, target3), options3 = make(rng, dtype, params, (3, 4, N_CLASSES))
    check_against_reference(np.asfortranarray(logits3),
                            np.asfortranarray(target3) if soft else target3, **options3)


STRIDED_VIEWS = {
    "every-2nd-row-3rd-class": (np.s_[::2, ::3], np.s_[::2]),
    "reversed-rows": (np.s_[::-1, :], np.s_[::-1]),
    "reversed-classes": (np.s_[:, ::-1], np.s_[:]),
    "reversed-both-strided": (np.s_[::-2, ::-3], np.s_[::-2]),
    "column-slice": (np.s_[1:-1, 2:-5], np.s_[1:-1]),
}


@dtypes
@pytest.mark.parametrize("view", list(STRIDED_VIEWS))
@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
def test_strided_views(soft, view, dtype, rng):
    logits_index, target_index = STRIDED_VIEWS[view]
    base_logits = random_logits(rng, (30, 33), dtype)
    logits = base_logits[logits_index]
    n_classes = logits.shape[-1]
    if soft:
        base_target = rng.random((30, 33)).astype(dtype)
        target = base_target[logits_index]
    else:
        base_target = rng.integers(0, n_classes, 30)
        base_target[::5] = -100
        target = base_target[target_index]
    weight = random_weight(rng, 2 * n_classes, dtype)[::2]
    check_against_reference(logits, target, weight=weight, label_smoothing=0.1, z_loss=1e-3)


@dtypes
def test_read_only_inputs(dtype, rng):
    (logits, target), options = make_ce_hard_inputs(
        rng, dtype, {"weight": True, "ignore_fraction": 0.2}, (N_ROWS, N_CLASSES))
    for array in (logits, target, options["weight"]):
        array.flags.writeable = False
    check_against_reference(logits, target, **options)


@dtypes
@pytest.mark.parametrize("target_dtype", [np.int8, np.int16, np.int32, np.int64, np.intp,
                                          np.uint8, np.uint16, np.uint32, np.uint64],
                         ids=dtype_id)
def test_integer_target_dtypes(target_dtype, dtype, rng):
    n_classes = 12
    logits = random_logits(rng, (N_ROWS, n_classes), dtype)
    target = rng.integers(0, n_classes, N_ROWS)
    signed = np.dtype(target_dtype).kind == "i"
    # The largest value of the type as the ignore_index, but one that int64 can also hold.
    ignore_index = -100 if signed else min(int(np.iinfo(target_dtype).max), 2**63 - 1)
    target[::6] = ignore_index
    options = {"ignore_index": ignore_index, "label_smoothing": 0.1,
               "weight": random_weight(rng, n_classes, dtype)}
    typed = target.astype(target_dtype)
    check_against_reference(logits, typed, **options)
    # The index type changes nothing: same bits as int64 targets.
    for reduction in REDUCTIONS:
        for func in (fastloss.cross_entropy, fastloss.cross_entropy_grad):
            assert bitwise_equal(np.asarray(func(logits, typed, reduction=reduction, **options)),
                                 np.asarray(func(logits, target, reduction=reduction,
                                                 **options)))


# ----------------------------------------------------------------------------------------
# Accuracy against a naive float32 implementation
# ----------------------------------------------------------------------------------------

def naive_float32_cross_entropy(logits, target):
    """Textbook log-softmax cross-entropy evaluated entirely in float32 (mean reduction)."""
    rows = np.arange(logits.shape[0])
    row_max = logits.max(axis=1, keepdims=True)
    lse = row_max[:, 0] + np.log(np.exp(logits - row_max).sum(axis=1))
    per_row = lse - logits[rows, target]
    grad = np.exp(logits - lse[:, None])
    grad[rows, target] -= np.float32(1)
    grad /= np.float32(logits.shape[0])
    return per_row, per_row.mean(), grad


def test_float32_at_least_as_accurate_as_naive_float32(rng):
    logits = random_logits(rng, (64, 4096), np.float32, scale=4.0)
    target = rng.integers(0, 4096, 64)
    naive_rows, naive_mean, naive_grad = naive_float32_cross_entropy(logits, target)
    ref_rows = reference.cross_entropy(logits, target, reduction="none")
    ref_mean = reference.cross_entropy(logits, target)
    ref_grad = reference.cross_entropy_grad(logits, target)
    rows = fastloss.cross_entropy(logits, target, reduction="none")
    mean, grad = fastloss.cross_entropy_value_and_grad(logits, target)
    # Slack: half a float32 ulp of the largest value. A result rounded once from double is
    # within that of the best float32 answer; the naive one rounds at every step.
    half_ulp = 2.0 ** -24

    def max_error(actual, expected):
        return float(np.max(np.abs(np.asarray(actual, np.float64) - expected)))

    assert max_error(rows, ref_rows) <= (max_error(naive_rows, ref_rows)
                                         + half_ulp * np.max(np.abs(ref_rows)))
    assert abs(mean - ref_mean) <= abs(float(naive_mean) - ref_mean) + half_ulp * abs(ref_mean)
    assert max_error(grad, ref_grad) <= (max_error(naive_grad, ref_grad)
                                         + half_ulp * np.max(np.abs(ref_grad)))


# ----------------------------------------------------------------------------------------
# Hypothesis: shapes and layouts
# ----------------------------------------------------------------------------------------

@st.composite
def cross_entropy_problems(draw):
    n_rows = draw(st.integers(0, 9))
    n_classes = draw(st.integers(1, 70))
    soft = draw(st.booleans())
    params = {
        "dtype": draw(st.sampled_from(DTYPES)),
        "layout": draw(st.sampled_from(["C", "F", "strided", "reversed", "3d"])),
        "reduction": draw(st.sampled_from(REDUCTIONS)),
        "weight": draw(st.booleans()),
        "label_smoothing": draw(st.sampled_from([0.0, 0.1, 1.0])),
        "z_loss": draw(st.sampled_from([0.0, 1e-3])),
        "softcap": draw(st.sampled_from([None, 3.0])),
        "ignore_fraction": 0.0 if soft else draw(st.sampled_from([0.0, 0.3, 1.0])),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }
    return n_rows, n_classes, soft, params


def layout_view(array, layout):
    """The same values as ``array`` (N, C) in the memory layout named by ``layout``."""
    if layout == "F":
        return np.asfortranarray(array)
    if layout == "strided":
        big = np.zeros((2 * array.shape[0], 3 * array.shape[1]), array.dtype)
        big[::2, ::3] = array
        return big[::2, ::3]
    if layout == "reversed":  # negative strides on both axes
        return array[::-1, ::-1].copy()[::-1, ::-1]
    return array


# derandomize: CI sees the same 60 examples on every run (no flaky failures); the
# deterministic tests above pin down every problem these examples have found.
@settings(max_examples=60, deadline=None, database=None, derandomize=True)
@given(cross_entropy_problems())
def test_random_shapes_and_layouts(problem):
    n_rows, n_classes, soft, params = problem
    rng = np.random.default_rng(params["seed"])
    dtype = params["dtype"]
    logits = random_logits(rng, (n_rows, n_classes), dtype)
    if soft:
        target = rng.random((n_rows, n_classes)).astype(dtype)
    else:
        target = rng.integers(0, n_classes, n_rows)
        target[rng.random(n_rows) < params["ignore_fraction"]] = -100
    options = {"label_smoothing": params["label_smoothing"], "z_loss": params["z_loss"],
               "softcap": params["softcap"]}
    if params["weight"]:
        options["weight"] = random_weight(rng, n_classes, dtype)
    layout = params["layout"]
    if layout == "3d":
        # (N, C) -> (N, 1, C) as a non-contiguous view with a class stride of 1.
        logits = np.ascontiguousarray(np.stack([logits, logits], axis=1))[:, :1, :]
        target = target[:, None] if not soft else target[:, None, :]
    else:
        logits = layout_view(logits, layout)
        target = layout_view(target, layout) if soft else target[::-1].copy()[::-1]
    check_against_reference(logits, target, reductions=[params["reduction"]], **options)


# ----------------------------------------------------------------------------------------
# Parity with torch.nn.functional.cross_entropy
# ----------------------------------------------------------------------------------------

def torch_cross_entropy(logits, target, grad_output=1.0, *, weight=None, ignore_index=-100,
                        reduction="mean", label_smoothing=0.0, z_loss=0.0, softcap=None):
    """torch's loss and gradient in float64 on the same values, class axis moved to dim 1.

    softcap and z_loss are not torch options; they are added around F.cross_entropy as
    their definitions say (tanh before, z * lse**2 over non-ignored rows after).
    """
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional
    x = torch.tensor(np.asarray(logits, np.float64), requires_grad=True)
    y = x if softcap is None else softcap * torch.tanh(x / softcap)
    target = np.asarray(target)
    soft = target.dtype.kind == "f"
    if soft:
        torch_target = torch.tensor(target.astype(np.float64))
        if y.ndim > 1:
            torch_target = torch_target.movedim(-1, 1)
    else:
        torch_target = torch.tensor(target.astype(np.int64))
    torch_weight = None if weight is None else torch.tensor(np.asarray(weight, np.float64))
    loss = functional.cross_entropy(y.movedim(-1, 1) if y.ndim > 1 else y, torch_target,
                                    weight=torch_weight, ignore_index=ignore_index,
                                    reduction=reduction, label_smoothing=label_smoothing)
    if z_loss:
        lse = torch.logsumexp(y, dim=-1)
        valid = (torch.ones_like(lse, dtype=torch.bool) if soft
                 else torch.tensor(target != ignore_index))
        z_term = torch.where(valid, z_loss * lse**2, torch.zeros_like(lse))
        if reduction == "none":
            loss = loss + z_term
        elif reduction == "sum":
            loss = loss + z_term.sum()
        else:
            loss = loss + z_term.sum() / valid.sum()
    loss.backward(torch.as_tensor(np.asarray(grad_output, np.float64)))
    value = loss.detach().numpy()
    return (float(value) if reduction != "none" else value), x.grad.numpy()


TORCH_CASES = [
    pytest.param("hard", {}, id="hard-plain"),
    pytest.param("hard", {"weight": True, "ignore_fraction": 0.3}, id="hard-weight+ignore"),
    pytest.param("hard", {"ignore_fraction": 0.3, "ignore_index": 0}, id="hard-ignore=0"),
    pytest.param("hard", {"weight": True, "ignore_fraction": 0.3, "label_smoothing": 0.2},
                 id="hard-weight+ignore+smoothing"),
    pytest.param("hard", {"weight": True, "ignore_fraction": 0.3, "label_smoothing": 0.1,
                          "z_loss": 1e-2, "softcap": 3.0}, id="hard-all"),
    pytest.param("soft", {}, id="soft-plain"),
    pytest.param("soft", {"weight": True, "label_smoothing": 0.2}, id="soft-weight+smoothing"),
    pytest.param("soft", {"weight": True, "label_smoothing": 0.1, "z_loss": 1e-2,
                          "softcap": 3.0, "unnormalised": True}, id="soft-all"),
]


@reductions
@dtypes
@pytest.mark.parametrize("shape", [(17, 9), (3, 4, 9), (9,)], ids=["2d", "3d", "1d"])
@pytest.mark.parametrize("kind, params", TORCH_CASES)
def test_matches_torch(kind, params, shape, dtype, reduction, rng):
    # torch runs in float64 on the same values (float32 inputs are exact in float64), so it
    # is an independent float64 oracle and the contract for `dtype` applies unchanged.
    make = make_ce_soft_inputs if kind == "soft" else make_ce_hard_inputs
    (logits, target), options = make(rng, dtype, params, shape)
    if len(shape) == 1 and kind == "hard":
        target = target.reshape(())
    options["reduction"] = reduction
    grad_output = (rng.uniform(-2, 2, shape[:-1]) if reduction == "none" else 0.75)
    torch_loss, torch_grad = torch_cross_entropy(logits, target, grad_output, **options)
    loss, grad = fastloss.cross_entropy_value_and_grad(logits, target, grad_output, **options)
    assert_close_contract(loss, torch_loss, dtype, "loss", what="loss vs torch")
    assert_close_contract(grad, torch_grad, dtype, "grad", what="grad vs torch")
    assert_close_contract(fastloss.cross_entropy(logits, target, **options), torch_loss,
                          dtype, "loss", what="cross_entropy vs torch")


def test_matches_torch_module_with_class_axis_one(rng):
    # torch.nn.CrossEntropyLoss on (B, C, T) logits equals fastloss on (B, T, C).
    torch = pytest.importorskip("torch")
    logits = random_logits(rng, (3, 8, 5), np.float64)  # (B, C, T)
    target = rng.integers(0, 8, (3, 5))
    target[0, 1] = -100
    module = torch.nn.CrossEntropyLoss(label_smoothing=0.05)
    expected = module(torch.tensor(logits), torch.tensor(target)).item()
    got = fastloss.cross_entropy(np.moveaxis(logits, 1, -1), target, label_smoothing=0.05)
    assert_close_contract(got, expected, np.float64, "loss")


def unaligned(array):
    """A copy of `array` whose data starts one byte past an element boundary."""
    raw = np.zeros(array.nbytes + 1, np.uint8)
    view = np.ndarray(array.shape, array.dtype, buffer=raw, offset=1)
    view[...] = array
    assert not view.flags.aligned
    return view


@dtypes
@pytest.mark.parametrize("n_classes", [10, 300], ids=lambda c: f"C={c}")
def test_unaligned_and_byte_swapped_inputs(n_classes, dtype, rng):
    # The kernels read aligned, native-order arrays: anything else is copied first, never
    # read as it is (a vector load of a misaligned float can fault).
    logits = random_logits(rng, (9, n_classes), dtype)
    target = rng.integers(0, n_classes, 9)
    soft = rng.dirichlet(np.ones(n_classes), 9).astype(dtype)
    weight = random_weight(rng, n_classes, dtype)
    for hard in (unaligned(target), target.astype(target.dtype.newbyteorder(">"))):
        check_against_reference(unaligned(logits), hard, weight=unaligned(weight))
    check_against_reference(unaligned(logits), unaligned(soft))
    swapped = logits.astype(logits.dtype.newbyteorder(">"))
    for target_form in (target, soft.astype(soft.dtype.newbyteorder(">"))):
        loss, grad = call_unmodified(fastloss.cross_entropy_value_and_grad, swapped,
                                     target_form, reduction="sum")
        assert grad.dtype == dtype
        assert_close_contract(loss, reference.cross_entropy(logits, target_form,
                                                            reduction="sum"), dtype, "loss")
        assert_close_contract(grad, reference.cross_entropy_grad(logits, target_form,
                                                                 reduction="sum"), dtype, "grad")
