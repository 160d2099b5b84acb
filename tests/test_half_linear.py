"""float16 and ml_dtypes.bfloat16 inputs of the NumPy linear_cross_entropy (issue 15).

NumPy has no fast half-precision product, so the half path forms the logits from float32
copies of bounded tiles of the inputs (exact: every half value is a float32) on NumPy's
float32 BLAS, runs the kernels' float32 softmax on them, and rounds each gradient once to
the input's dtype (or returns it in float32 with grad_dtype="float32"). The contract
(docs/accuracy.rst, "Half precision" and "Losses that multiply matrices"): against the
float64 reference on the same rounded inputs, the loss within the float32 contract plus
the float32 products' bound, and each gradient within that bound plus its one rounding
to the half type.
"""
import sys

import numpy as np
import pytest

import fastloss
from contract_floors import assert_close_at_scale
from test_half import BFLOAT16, FLOAT16, HALF_DTYPES, ulps
from test_linear_cross_entropy import (OPTIONS, REDUCTIONS, make_inputs, products_bound,
                                       reference_of)

NAMES = ("hidden", "classifier", "bias")
#: unit roundoff of the half types (half an ulp of 1)
HALF_UNIT = {BFLOAT16: 2.0**-8, FLOAT16: 2.0**-11}


def rounded_case(rng, dtype, batch, n_features, n_classes, case):
    """The case's inputs in ``dtype`` (probabilities too) and the same values in float64
    (the reference's); class weights stay float32, as the kernels read them."""
    hidden, classifier, target, options = make_inputs(rng, batch, n_features, n_classes,
                                                      np.float64, OPTIONS[case])
    half = {"hidden": hidden.astype(np.float32).astype(dtype),
            "classifier": classifier.astype(np.float32).astype(dtype),
            "bias": options["bias"].astype(np.float32).astype(dtype)}
    wide = {name: value.astype(np.float64) for name, value in half.items()}
    options = dict(options)
    if options.get("weight") is not None:
        options["weight"] = options["weight"].astype(np.float32)
    if np.asarray(target).dtype.kind == "f":
        target_half = target.astype(np.float32).astype(dtype)
        target_wide = target_half.astype(np.float64)
    else:
        target_half = target_wide = target
    return half, target_half, wide, target_wide, options


def grad_output_of(rng, reduction, batch):
    return rng.uniform(0.5, 2.0, batch) if reduction == "none" else 1.7


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", list(OPTIONS))
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_every_option_within_the_products_bound(dtype, case, reduction):
    """Every option and reduction, against the float64 reference on the rounded inputs:
    the float32 contract plus the float32 products' bound, plus one rounding of each
    gradient to the half type; the loss, the gradients and the value_and_grad agree."""
    rng = np.random.default_rng([len(case), len(reduction), dtype.itemsize, 15])
    batch = (4, 9)
    half, target, wide, target_wide, options = rounded_case(rng, dtype, batch, 64, 200,
                                                            case)
    bias = options.pop("bias")
    assert bias.dtype == np.float64  # the half-rounded one is half["bias"]
    grad_output = grad_output_of(rng, reduction, batch)
    kwargs = dict(options, reduction=reduction)
    loss, grads = fastloss.linear_cross_entropy_value_and_grad(
        half["hidden"], half["classifier"], target, grad_output, bias=half["bias"], **kwargs)
    ref_loss, ref_grads = reference_of(wide["hidden"], wide["classifier"], target_wide,
                                       grad_output, dict(kwargs, bias=wide["bias"]))
    bounds = products_bound(wide["hidden"], wide["classifier"], target_wide, grad_output,
                            reduction, np.float32, dict(options, bias=wide["bias"]))
    if reduction == "none":
        assert loss.dtype == np.float32 and loss.shape == batch
    else:
        assert isinstance(loss, float)
    assert_close_at_scale(np.asarray(loss, np.float64), ref_loss, np.float32, "loss",
                          extra=bounds[0])
    unit = HALF_UNIT[dtype]
    for grad, ref, bound, name in zip(grads, ref_grads, bounds[1:], NAMES):
        assert grad.dtype == dtype and grad.shape == half[name].shape
        assert_close_at_scale(grad.astype(np.float64), ref, np.float32, "grad",
                              loss=ref_loss, wrt=wide[name], grad_output=grad_output,
                              extra=bound + unit * np.abs(ref), what=f"d/d{name}")
    # the three entry points run the same computation
    alone = fastloss.linear_cross_entropy(half["hidden"], half["classifier"], target,
                                          bias=half["bias"], **kwargs)
    np.testing.assert_array_equal(np.asarray(alone), np.asarray(loss))
    for grad, same in zip(grads, fastloss.linear_cross_entropy_grad(
            half["hidden"], half["classifier"], target, grad_output, bias=half["bias"],
            **kwargs)):
        np.testing.assert_array_equal(grad.view(np.uint16), same.view(np.uint16))


@pytest.mark.parametrize("case", ["plain", "all", "soft-all"])
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_float32_gradients_are_the_same_computation(dtype, case):
    """grad_dtype="float32": float32 gradients from the same computation; rounded to the
    half type (to nearest even) they are the half gradients exactly (those are rounded
    once), the bias's (a float64 sum rounded once either way) within one ulp; and they
    meet the float32 contract plus the products' bound."""
    rng = np.random.default_rng([len(case), dtype.itemsize, 3])
    half, target, wide, target_wide, options = rounded_case(rng, dtype, (50,), 40, 300,
                                                            case)
    options.pop("bias")
    args = (half["hidden"], half["classifier"], target, 0.8)
    loss, grads = fastloss.linear_cross_entropy_value_and_grad(*args, bias=half["bias"],
                                                               **options)
    loss32, grads32 = fastloss.linear_cross_entropy_value_and_grad(
        *args, bias=half["bias"], grad_dtype="float32", **options)
    assert loss32 == loss
    for grad, grad32, name in zip(grads, grads32, NAMES):
        assert grad32.dtype == np.float32
        if name == "bias":
            assert ulps(grad32.astype(dtype), grad).max() <= 1
        else:
            np.testing.assert_array_equal(grad32.astype(dtype).view(np.uint16),
                                          grad.view(np.uint16))
    ref_loss, ref_grads = reference_of(wide["hidden"], wide["classifier"], target_wide, 0.8,
                                       dict(options, bias=wide["bias"]))
    bounds = products_bound(wide["hidden"], wide["classifier"], target_wide, 0.8, "mean",
                            np.float32, dict(options, bias=wide["bias"]))
    for grad32, ref, bound, name in zip(grads32, ref_grads, bounds[1:], NAMES):
        assert_close_at_scale(grad32, ref, np.float32, "grad", loss=ref_loss, wrt=wide[name],
                              grad_output=0.8, extra=bound, what=f"d/d{name}")
    # np.float32 is the same option; out= takes float32 arrays then
    out = tuple(np.empty(g.shape, np.float32) for g in grads32)
    result = fastloss.linear_cross_entropy_grad(*args, bias=half["bias"], out=out,
                                                grad_dtype=np.float32, **options)
    for given, written, expected in zip(out, result, grads32):
        assert written is given
        np.testing.assert_array_equal(written, expected)


@pytest.mark.parametrize("case", ["all", "soft-all", "soft-float32"])
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_tiles_of_classes_and_rows(dtype, case, monkeypatch):
    """Many tiles of classes and chunks of rows (a small tile size), and a last partial
    tile of each: the same contract, and only the last bits differ from one tile;
    probabilities in the half type or in float32 (read in place, a strided tile)."""
    lce = sys.modules["fastloss.linear_cross_entropy"]  # the module (the package's
    # attribute of that name is the function)
    rng = np.random.default_rng([dtype.itemsize, len(case), 77])
    half, target, wide, target_wide, options = rounded_case(
        rng, dtype, (45,), 32, 130, "soft-all" if case == "soft-float32" else case)
    if case == "soft-float32":
        target = target_wide.astype(np.float32)  # the same values, in float32
    options.pop("bias")
    args = (half["hidden"], half["classifier"], target, 1.3)
    whole = fastloss.linear_cross_entropy_value_and_grad(*args, bias=half["bias"],
                                                         grad_dtype="float32", **options)
    monkeypatch.setattr(lce, "_HALF_TILE_BYTES", 32 * 4 * 16)  # tiles of 16 classes, rows
    tiled = fastloss.linear_cross_entropy_value_and_grad(*args, bias=half["bias"],
                                                         grad_dtype="float32", **options)
    np.testing.assert_allclose(tiled[0], whole[0], rtol=1e-6)
    for a, b in zip(tiled[1], whole[1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * np.abs(b).max())
    ref_loss, ref_grads = reference_of(wide["hidden"], wide["classifier"], target_wide, 1.3,
                                       dict(options, bias=wide["bias"]))
    bounds = products_bound(wide["hidden"], wide["classifier"], target_wide, 1.3, "mean",
                            np.float32, dict(options, bias=wide["bias"]))
    assert_close_at_scale(tiled[0], ref_loss, np.float32, "loss", extra=bounds[0])
    for grad, ref, bound, name in zip(tiled[1], ref_grads, bounds[1:], NAMES):
        assert_close_at_scale(grad, ref, np.float32, "grad", loss=ref_loss, wrt=wide[name],
                              grad_output=1.3, extra=bound, what=f"d/d{name}")


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_thread_invariance(dtype):
    """The kernels' OpenMP threads change nothing: the products are the same BLAS calls
    on the same tiles whatever num_threads is."""
    rng = np.random.default_rng([dtype.itemsize, 5])
    half, target, _, _, options = rounded_case(rng, dtype, (70,), 48, 257, "all")
    options.pop("bias")
    results = [fastloss.linear_cross_entropy_value_and_grad(
        half["hidden"], half["classifier"], target, 0.9, bias=half["bias"], num_threads=t,
        **options) for t in (1, 2, 3)]
    for loss, grads in results[1:]:
        assert loss == results[0][0]
        for grad, first in zip(grads, results[0][1]):
            np.testing.assert_array_equal(grad.view(np.uint16), first.view(np.uint16))


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_batch_shapes_and_empty_batch(dtype):
    rng = np.random.default_rng([dtype.itemsize, 6])
    half, target, wide, target_wide, options = rounded_case(rng, dtype, (2, 3, 4), 8, 21,
                                                            "plain")
    loss, grads = fastloss.linear_cross_entropy_value_and_grad(
        half["hidden"], half["classifier"], target, reduction="none")
    ref_loss, _ = reference_of(wide["hidden"], wide["classifier"], target_wide, 1.0,
                               {"reduction": "none"})
    assert loss.shape == (2, 3, 4) and grads[0].shape == (2, 3, 4, 8)
    bound = products_bound(wide["hidden"], wide["classifier"], target_wide, 1.0, "none",
                           np.float32, {"reduction": "none"})[0]
    assert_close_at_scale(loss, ref_loss, np.float32, "loss", extra=bound)
    # no rows: the sum is 0, the classifier's gradient zeros
    empty = half["hidden"][:0]
    loss, (grad_hidden, grad_classifier) = fastloss.linear_cross_entropy_value_and_grad(
        empty, half["classifier"], np.zeros((0, 3, 4), np.int64), reduction="sum")
    assert loss == 0.0 and grad_hidden.shape == (0, 3, 4, 8)
    assert grad_classifier.dtype == dtype and not np.any(grad_classifier.astype(np.float32))


def test_mixed_dtypes_are_refused_naming_the_argument():
    rng = np.random.default_rng(7)
    hidden = rng.standard_normal((5, 4)).astype(np.float16)
    classifier = rng.standard_normal((6, 4)).astype(np.float16)
    target = np.arange(5) % 6
    for other in (classifier.astype(BFLOAT16), classifier.astype(np.float32)):
        with pytest.raises(TypeError, match="classifier: expected the dtype of hidden"):
            fastloss.linear_cross_entropy(hidden, other, target)
    with pytest.raises(TypeError, match="bias: expected the dtype of hidden"):
        fastloss.linear_cross_entropy(hidden, classifier, target,
                                      bias=np.zeros(6, np.float32))
    with pytest.raises(TypeError, match="target: expected probabilities"):
        fastloss.linear_cross_entropy(hidden, classifier, np.full((5, 6), 1 / 6))
    with pytest.raises(TypeError, match="grad_dtype"):
        fastloss.linear_cross_entropy_grad(hidden, classifier, target, grad_dtype=object())
    with pytest.raises(ValueError, match="grad_dtype"):
        fastloss.linear_cross_entropy_grad(hidden, classifier, target, grad_dtype="float64")
    with pytest.raises(ValueError, match="grad_dtype"):
        fastloss.linear_cross_entropy_grad(hidden.astype(np.float32),
                                           classifier.astype(np.float32), target,
                                           grad_dtype="float16")
    with pytest.raises(TypeError, match=r"out \(hidden\)"):
        fastloss.linear_cross_entropy_grad(hidden, classifier, target,
                                           out=(np.empty((5, 4), np.float32),
                                                np.empty((6, 4), np.float16)))
    with pytest.raises(TypeError, match="hidden"):
        fastloss.linear_cross_entropy(hidden.astype(np.int16), classifier, target)
    # probabilities in the half type or in float32; float32 class weights
    for probabilities in (np.full((5, 6), 1 / 6, np.float16), np.full((5, 6), 1 / 6,
                                                                      np.float32)):
        loss = fastloss.linear_cross_entropy(np.zeros_like(hidden), classifier,
                                             probabilities, weight=np.ones(6))
        assert abs(loss - np.log(6)) < 1e-3


@pytest.mark.parametrize("dtype", [np.float32, np.float64, *HALF_DTYPES], ids=str)
def test_class_weight_of_any_real_dtype(dtype):
    # Found by hunt13: a bfloat16 class weight was refused ("weight: expected real
    # numbers, got dtype bfloat16") where cross_entropy takes it, as a float16 one is
    # here. Any real dtype holding the same values gives the same loss and gradients.
    rng = np.random.default_rng(11)
    hidden = rng.standard_normal((7, 4)).astype(dtype)
    classifier = rng.standard_normal((6, 4)).astype(dtype)
    target = rng.integers(0, 6, 7)
    weight = rng.uniform(0.5, 2.0, 6).astype(BFLOAT16)  # values every dtype here holds
    expected = fastloss.linear_cross_entropy_value_and_grad(
        hidden, classifier, target, weight=weight.astype(np.float32), reduction="none")
    for weight_dtype in (BFLOAT16, FLOAT16, np.float32, np.float64):
        loss, grads = fastloss.linear_cross_entropy_value_and_grad(
            hidden, classifier, target, weight=weight.astype(weight_dtype), reduction="none")
        assert np.array_equal(loss, expected[0]), weight_dtype
        for grad, want in zip(grads, expected[1]):
            assert np.array_equal(grad, want), weight_dtype


def test_float_path_grad_dtype_is_its_own_dtype():
    rng = np.random.default_rng(8)
    hidden, classifier, target, _ = make_inputs(rng, (7,), 5, 9, np.float32, {}, bias=False)
    plain = fastloss.linear_cross_entropy_grad(hidden, classifier, target)
    same = fastloss.linear_cross_entropy_grad(hidden, classifier, target,
                                              grad_dtype="float32")
    for a, b in zip(plain, same):
        np.testing.assert_array_equal(a, b)


def test_linear_token_log_probs_takes_half_inputs():
    """linear_token_log_probs takes float16 and bfloat16 too (its own tests:
    tests/test_half_linear_token_log_probs.py); other dtypes still get a TypeError naming
    hidden and the dtypes taken."""
    for dtype in (BFLOAT16, FLOAT16):
        log_prob = fastloss.linear_token_log_probs(np.zeros((3, 4), dtype),
                                                   np.zeros((5, 4), dtype), np.zeros(3, int))
        assert log_prob.dtype == np.float32
        np.testing.assert_allclose(log_prob, -np.log(5), rtol=1e-6)
    with pytest.raises(TypeError, match="hidden: expected a float32 or float64 array, or "
                                        "float16 / ml_dtypes.bfloat16, got dtype int16"):
        fastloss.linear_token_log_probs(np.zeros((3, 4), np.int16),
                                        np.zeros((5, 4), np.int16), np.zeros(3, int))


# ----------------------------------------------------------------------------------------
# sequence_log_probs: the float32 gradient of half token_log_probs (grad_dtype)
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("mask_kind", ["bool", "float"])
@pytest.mark.parametrize("average", [False, True])
def test_sequence_log_probs_float32_gradient(dtype, mask_kind, average):
    """grad_dtype="float32": the gradient ``mask * grad_output`` (over the mask's sum with
    ``average``), computed in float64, rounded once to float32: against the float64
    reference within the float32 contract, and rounded to the half type it is the half
    gradient bit for bit (a float64 value rounded to float32 and then to the half type is
    the direct rounding except at a double rounding's halfway case, which these inputs
    have not: checked by the ulp distance, at most one)."""
    from fastloss import reference
    from loss_specs import assert_close_contract

    rng = np.random.default_rng([dtype.itemsize, len(mask_kind), average])
    shape = (6, 130)
    values = (-rng.exponential(2.0, shape)).astype(dtype)
    mask = rng.random(shape) < 0.7
    if mask_kind == "float":
        mask = (mask * rng.uniform(0.5, 1.5, shape)).astype(np.float32)
    upstream = rng.uniform(-2.0, 2.0, shape[0])
    for grad_output in (1.0, upstream):
        grad32 = fastloss.sequence_log_probs_grad(values, mask, grad_output, average=average,
                                                  grad_dtype="float32")
        assert grad32.dtype == np.float32 and grad32.shape == shape
        ref = reference.sequence_log_probs_grad(values.astype(np.float64),
                                                np.asarray(mask, np.float64), grad_output,
                                                average=average)
        assert_close_contract(grad32, ref, np.float32, "grad")
        np.testing.assert_array_equal(grad32, ref.astype(np.float32))  # rounded once
        half = fastloss.sequence_log_probs_grad(values, mask, grad_output, average=average)
        assert ulps(grad32.astype(dtype), half).max() <= 1
        value, fused = fastloss.sequence_log_probs_value_and_grad(
            values, mask, grad_output, average=average, grad_dtype=np.float32)
        np.testing.assert_array_equal(fused, grad32)
        np.testing.assert_array_equal(value, fastloss.sequence_log_probs(values, mask,
                                                                         average=average))
    # out= takes a float32 array; thread invariance
    out = np.empty(shape, np.float32)
    assert fastloss.sequence_log_probs_grad(values, mask, upstream, average=average, out=out,
                                            grad_dtype="float32") is out
    np.testing.assert_array_equal(out, fastloss.sequence_log_probs_grad(
        values, mask, upstream, average=average, grad_dtype="float32", num_threads=3))


def test_sequence_log_probs_grad_dtype_errors():
    values = np.full((2, 5), -1.0, np.float16)
    mask = np.ones((2, 5), bool)
    with pytest.raises(TypeError, match="grad_dtype: expected None or a dtype"):
        fastloss.sequence_log_probs_grad(values, mask, grad_dtype=3)
    with pytest.raises(ValueError, match="grad_dtype: expected None"):
        fastloss.sequence_log_probs_grad(values, mask, grad_dtype="float64")
    with pytest.raises(ValueError, match="grad_dtype: expected None"):
        fastloss.sequence_log_probs_grad(values.astype(np.float32), mask, grad_dtype="float16")
    # float32 input: its own dtype is accepted
    np.testing.assert_array_equal(
        fastloss.sequence_log_probs_grad(values.astype(np.float32), mask,
                                         grad_dtype="float32"), np.ones((2, 5), np.float32))
    # a float32 out= of the wrong dtype, or the half input itself, is refused
    with pytest.raises(TypeError, match="out"):
        fastloss.sequence_log_probs_grad(values, mask, grad_dtype="float32",
                                         out=np.empty((2, 5), np.float16))
