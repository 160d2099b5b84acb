"""Checks of the float64 oracle itself, ``fastloss.reference``.

The reference is what every kernel is compared with, so it is checked three independent
ways: against torch's own float64 implementation (and autograd for the gradients),
against fourth-order central finite differences of its own loss, and at points where
the answer is known by hand.
"""

import math

import numpy as np
import pytest

import fastloss
from fastloss import reference
from loss_specs import assert_close_contract, central_differences

SHAPES = {"1d": (5,), "2d": (7, 5), "3d": (3, 4, 6)}

# (reduction, grad_output kind): a scalar for mean/sum; per-row or broadcast scalar for none.
REDUCTION_GRADS = [("mean", "scalar"), ("sum", "scalar"), ("none", "per-row"), ("none", "scalar")]

# Options beyond the data. "weight", "ignore" and "soft" are flags turned into arrays by
# make_inputs; "scale" is the standard deviation of the logits.
CASES = {
    "hard": {},
    "hard-weight": dict(weight=True),
    "hard-ignore": dict(ignore=True),
    "hard-weight-ignore": dict(weight=True, ignore=True),
    "hard-ignore-index-is-a-class": dict(ignore=True, ignore_index=1),
    "hard-smooth": dict(label_smoothing=0.1),
    "hard-smooth-weight": dict(label_smoothing=0.2, weight=True),
    "hard-smooth-weight-ignore": dict(label_smoothing=0.3, weight=True, ignore=True),
    "hard-smooth-one": dict(label_smoothing=1.0, weight=True, ignore=True),
    "hard-large-logits": dict(scale=1e4, weight=True, ignore=True),
    "hard-z-loss": dict(z_loss=0.05),
    "hard-softcap": dict(softcap=2.0),
    "hard-everything": dict(weight=True, ignore=True, label_smoothing=0.2, z_loss=0.05,
                            softcap=3.0),
    "soft": dict(soft=True),
    "soft-weight": dict(soft=True, weight=True),
    "soft-weight-smooth": dict(soft=True, weight=True, label_smoothing=0.25),
    "soft-everything": dict(soft=True, weight=True, label_smoothing=0.25, z_loss=0.05,
                            softcap=3.0),
}


def make_inputs(shape, case, seed=0):
    """Return ``(logits, target, options)`` for a CASES entry, deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    flags = dict(case)
    scale = flags.pop("scale", 3.0)
    use_weight, ignore, soft = (flags.pop(name, False) for name in ("weight", "ignore", "soft"))
    options = flags
    *batch, n_classes = shape
    logits = rng.normal(scale=scale, size=shape)
    if soft:
        target = rng.uniform(size=shape)
        target /= target.sum(axis=-1, keepdims=True)
    else:
        target = rng.integers(0, n_classes, size=batch)
        if ignore:
            # every third row ignored: a mix of ignored and valid rows for any batch size
            target.reshape(-1)[1::3] = options.get("ignore_index", -100)
    if use_weight:
        options["weight"] = rng.uniform(0.5, 2.0, size=n_classes)
    return logits, target, options


def grad_output_for(reduction, kind, batch_shape, seed=1):
    rng = np.random.default_rng(seed)
    if kind == "scalar":
        return float(rng.uniform(0.5, 2.0))
    return rng.normal(size=batch_shape)


def assert_close(actual, expected, rtol):
    """assert_allclose with the accuracy contract's absolute floor of 1e-14 * max|expected|."""
    expected = np.asarray(expected, dtype=np.float64)
    finite = np.abs(expected[np.isfinite(expected)])
    floor = 1e-14 * finite.max() if finite.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=floor)


# ----------------------------------------------------------------------------------------
# Against torch
# ----------------------------------------------------------------------------------------

def torch_loss_grad_lse(logits, target, grad_output, *, reduction, weight=None,
                        ignore_index=-100, label_smoothing=0.0, z_loss=0.0, softcap=None):
    """Loss, gradient and lse from torch autograd: F.cross_entropy in float64, with the
    z-loss (PaLM) and soft-capping (Gemma 2) written out by hand around it."""
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional
    soft = target.dtype.kind == "f"
    logits_t = torch.tensor(logits, requires_grad=True)
    target_t = torch.tensor(target)
    capped = logits_t if softcap is None else softcap * torch.tanh(logits_t / softcap)

    def class_axis_to_dim_1(tensor):
        return torch.movedim(tensor, -1, 1) if tensor.ndim >= 3 else tensor

    loss = functional.cross_entropy(
        class_axis_to_dim_1(capped), class_axis_to_dim_1(target_t) if soft else target_t,
        weight=None if weight is None else torch.tensor(weight), ignore_index=ignore_index,
        reduction=reduction, label_smoothing=label_smoothing)
    valid = torch.ones(capped.shape[:-1], dtype=torch.bool) if soft else target_t != ignore_index
    lse = torch.where(valid, torch.logsumexp(capped, dim=-1), 0.0)
    if z_loss:
        z_per_row = z_loss * lse**2
        if reduction == "none":
            loss = loss + z_per_row
        elif reduction == "sum":
            loss = loss + z_per_row.sum()
        else:
            loss = loss + z_per_row.sum() / valid.sum()
    loss.backward(torch.as_tensor(grad_output, dtype=torch.float64).expand_as(loss))
    return loss.detach().numpy(), logits_t.grad.numpy(), lse.detach().numpy()


@pytest.mark.parametrize("reduction, grad_kind", REDUCTION_GRADS,
                         ids=[f"{r}-grad-{k}" for r, k in REDUCTION_GRADS])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_matches_torch(shape, case, reduction, grad_kind):
    logits, target, options = make_inputs(shape, CASES[case])
    grad_output = grad_output_for(reduction, grad_kind, shape[:-1])
    expected_loss, expected_grad, expected_lse = torch_loss_grad_lse(
        logits, target, grad_output, reduction=reduction, **options)

    loss, lse = reference.cross_entropy(logits, target, reduction=reduction,
                                        return_lse=True, **options)
    grad = reference.cross_entropy_grad(logits, target, grad_output, reduction=reduction,
                                        **options)

    # 1e-12: both are float64 evaluations of the same formula, a few ulps apart per term
    assert_close(loss, expected_loss, rtol=1e-12)
    assert_close(grad, expected_grad, rtol=1e-12)
    assert_close(lse, expected_lse, rtol=1e-12)


# ----------------------------------------------------------------------------------------
# Against finite differences of the reference's own loss
# ----------------------------------------------------------------------------------------

FD_CASES = ["hard", "hard-weight-ignore", "hard-smooth-weight-ignore", "hard-z-loss",
            "hard-softcap", "hard-everything", "soft-weight-smooth", "soft-everything"]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", FD_CASES)
def test_grad_matches_finite_differences(case, reduction):
    logits, target, options = make_inputs((3, 4, 5), CASES[case], seed=2)
    grad_output = grad_output_for(reduction, "per-row" if reduction == "none" else "scalar",
                                  (3, 4), seed=3)

    def objective(moved_logits):
        loss = reference.cross_entropy(moved_logits, target, reduction=reduction, **options)
        return float(np.sum(grad_output * loss))

    expected = central_differences(objective, logits, step=1e-3)
    grad = reference.cross_entropy_grad(logits, target, grad_output, reduction=reduction,
                                        **options)
    # The difference quotient's error is absolute: truncation ~ step**4 * |f'''''| / 30 plus
    # rounding ~ 1e-16 * |f| / step, both ~1e-12 here (measured <= 7e-12); hence atol 1e-10,
    # and rtol 1e-7 for the entries large enough that the relative error is the binding one.
    np.testing.assert_allclose(grad, expected, rtol=1e-7, atol=1e-10)


# ----------------------------------------------------------------------------------------
# Hand-computed values
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_classes", [1, 2, 7, 1000])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.4])
def test_uniform_logits_give_log_n_classes(n_classes, label_smoothing):
    logits = np.full((4, n_classes), 3.25)
    target = np.array([0, n_classes - 1, 0, n_classes // 2])
    weight = np.linspace(1.0, 2.0, n_classes)
    options = dict(weight=weight, label_smoothing=label_smoothing)
    loss, lse = reference.cross_entropy(logits, target, return_lse=True, **options)
    # every -logp_c is log C; torch's weighted smoothing term weighs it by mean(w), not w[t]:
    # mean = log C * ((1 - eps) * sum w[t] + eps * N * mean(w)) / sum w[t]
    eps, target_weight = label_smoothing, weight[target]
    expected = math.log(n_classes) * (
        (1 - eps) * target_weight.sum() + eps * len(target) * weight.mean()) / target_weight.sum()
    assert loss == pytest.approx(expected, rel=1e-14, abs=1e-15)
    unweighted = reference.cross_entropy(logits, target, label_smoothing=label_smoothing)
    assert unweighted == pytest.approx(math.log(n_classes), rel=1e-15, abs=1e-15)
    np.testing.assert_allclose(lse, 3.25 + math.log(n_classes), rtol=1e-15)
    # without smoothing the weighted mean gradient is w[t] * (1/C - onehot) / sum(w[t])
    if label_smoothing == 0.0:
        grad = reference.cross_entropy_grad(logits, target, **options)
        expected = weight[target][:, None] * (1.0 / n_classes - np.eye(n_classes)[target])
        np.testing.assert_allclose(grad, expected / weight[target].sum(), rtol=1e-14, atol=1e-17)


def test_two_classes_by_hand():
    # softmax([0, log 3]) = [1/4, 3/4]
    logits = np.array([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    target = np.array([1, 0])
    losses = reference.cross_entropy(logits, target, reduction="none")
    np.testing.assert_allclose(losses, [math.log(4 / 3), math.log(4.0)], rtol=1e-15)
    grad = reference.cross_entropy_grad(logits, target, reduction="sum")
    np.testing.assert_allclose(grad, [[0.25, -0.25], [-0.75, 0.75]], rtol=1e-15)
    # smoothing spreads eps over both classes: (1 - eps) * l_t + eps/2 * (l_0 + l_1)
    smoothed = reference.cross_entropy(logits[:1], target[:1], label_smoothing=0.2)
    expected = 0.8 * math.log(4 / 3) + 0.1 * (math.log(4.0) + math.log(4 / 3))
    assert smoothed == pytest.approx(expected, rel=1e-15)
    # weighted mean: (w_1 * l_0 + w_0 * l_1) / (w_1 + w_0)
    weighted = reference.cross_entropy(logits, target, weight=np.array([3.0, 0.5]))
    assert weighted == pytest.approx((0.5 * math.log(4 / 3) + 3.0 * math.log(4.0)) / 3.5,
                                     rel=1e-15)


def test_z_loss_by_hand():
    # zero logits: lse = log C; mean of z * lse**2 is over the two valid rows only
    logits = np.zeros((3, 4))
    target = np.array([2, -100, 1])
    loss = reference.cross_entropy(logits, target, z_loss=0.5)
    assert loss == pytest.approx(math.log(4) + 0.5 * math.log(4) ** 2, rel=1e-15)
    grad = reference.cross_entropy_grad(logits, target, z_loss=0.5)
    expected_row = (0.25 - np.eye(4)[2] + 2 * 0.5 * math.log(4) * 0.25) / 2
    np.testing.assert_allclose(grad[0], expected_row, rtol=1e-15)
    assert np.all(grad[1] == 0.0)


def test_softcap_saturates():
    # softcap 1: y = tanh([0, 1e4]) = [0, 1]; the capped logit has zero derivative
    logits = np.array([0.0, 1e4])
    target = np.array(0)
    assert reference.cross_entropy(logits, target, softcap=1.0) == pytest.approx(
        math.log(1 + math.e), rel=1e-15)
    grad = reference.cross_entropy_grad(logits, target, softcap=1.0)
    np.testing.assert_allclose(grad, [1 / (1 + math.e) - 1, 0.0], rtol=1e-15)


def test_extreme_logits():
    logits = np.array([[1e4, -1e4], [1e4, -1e4]])
    target = np.array([0, 1])
    np.testing.assert_array_equal(reference.cross_entropy(logits, target, reduction="none"),
                                  [0.0, 2e4])
    np.testing.assert_array_equal(reference.cross_entropy_grad(logits, target, reduction="sum"),
                                  [[0.0, 0.0], [1.0, -1.0]])


# ----------------------------------------------------------------------------------------
# Edge cases: empty, all ignored, nan and inf, shapes and types
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
@pytest.mark.parametrize("shape", [(0, 4), (2, 0, 4)], ids=["0x4", "2x0x4"])
def test_empty_batch(shape, soft):
    logits = np.zeros(shape)
    target = np.zeros(shape if soft else shape[:-1], dtype=np.float64 if soft else np.int64)
    assert math.isnan(reference.cross_entropy(logits, target, z_loss=0.1))
    assert reference.cross_entropy(logits, target, reduction="sum") == 0.0
    none = reference.cross_entropy(logits, target, reduction="none")
    assert none.shape == shape[:-1] and none.dtype == np.float64
    assert reference.cross_entropy_grad(logits, target).shape == shape


def test_all_rows_ignored():
    logits = np.random.default_rng(4).normal(size=(3, 5))
    target = np.full(3, -100)
    assert math.isnan(reference.cross_entropy(logits, target, z_loss=0.1))
    assert reference.cross_entropy(logits, target, reduction="sum") == 0.0
    loss, lse = reference.cross_entropy(logits, target, reduction="none", return_lse=True)
    assert np.all(loss == 0.0) and np.all(lse == 0.0)
    grad = reference.cross_entropy_grad(logits, target, label_smoothing=0.1, z_loss=0.1)
    assert np.all(grad == 0.0)


def test_nan_and_inf_stay_in_their_row():
    logits = np.array([[0.0, 1.0, 2.0],
                       [np.nan, 1.0, 2.0],
                       [-np.inf, -np.inf, -np.inf],
                       [np.inf, 1.0, 2.0],
                       [-np.inf, 1.0, 2.0],
                       [np.nan, 1.0, 2.0]])
    target = np.array([0, 1, 1, 1, 0, -100])
    loss, lse = reference.cross_entropy(logits, target, reduction="none", return_lse=True)
    grad = reference.cross_entropy_grad(logits, target, reduction="none")
    assert np.isfinite(loss[0]) and np.all(np.isfinite(grad[0]))
    assert np.all(np.isnan(loss[1:4])) and np.all(np.isnan(lse[1:4]))
    assert np.all(np.isnan(grad[1:4]))
    # a -inf logit at the target: infinite loss, finite gradient (its probability is 0)
    assert loss[4] == np.inf and np.all(np.isfinite(grad[4]))
    # an ignored row is 0 whatever it holds
    assert loss[5] == 0.0 and lse[5] == 0.0 and np.all(grad[5] == 0.0)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_result_types_and_value_and_grad(reduction):
    logits, target, options = make_inputs((3, 4, 6), CASES["hard-everything"])
    grad_output = grad_output_for(reduction, "per-row" if reduction == "none" else "scalar",
                                  (3, 4))
    loss = reference.cross_entropy(logits, target, reduction=reduction, **options)
    grad = reference.cross_entropy_grad(logits, target, grad_output, reduction=reduction,
                                        **options)
    if reduction == "none":
        assert isinstance(loss, np.ndarray) and loss.dtype == np.float64 and loss.shape == (3, 4)
    else:
        assert type(loss) is float
    assert grad.dtype == np.float64 and grad.shape == logits.shape
    fused_loss, fused_grad = reference.cross_entropy_value_and_grad(
        logits, target, grad_output, reduction=reduction, **options)
    np.testing.assert_array_equal(fused_loss, loss)
    np.testing.assert_array_equal(fused_grad, grad)


def test_unbatched_logits_give_0d_results():
    logits = np.array([0.5, -1.0, 2.0])
    loss = reference.cross_entropy(logits, np.array(2), reduction="none")
    assert isinstance(loss, np.ndarray) and loss.shape == ()
    assert reference.cross_entropy_grad(logits, 2).shape == (3,)


def test_inputs_are_not_modified_and_lists_and_dtypes_work():
    logits, target, options = make_inputs((4, 5), CASES["hard-everything"])
    logits_before, target_before = logits.copy(), target.copy()
    expected = reference.cross_entropy_value_and_grad(logits, target, 0.5, **options)
    np.testing.assert_array_equal(logits, logits_before)
    np.testing.assert_array_equal(target, target_before)
    from_lists = reference.cross_entropy_value_and_grad(logits.tolist(), target.tolist(), 0.5,
                                                        **options)
    as_int16 = reference.cross_entropy_value_and_grad(logits, target.astype(np.int16), 0.5,
                                                      **options)
    for loss, grad in (from_lists, as_int16):
        assert loss == expected[0]
        np.testing.assert_array_equal(grad, expected[1])


# ----------------------------------------------------------------------------------------
# Bad input raises instead of giving a wrong number
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad_target, message", [
    (np.array([[0, 7, 1], [2, 3, 4]]), r"value 7 at position \(0, 1\)"),
    (np.array([[0, 1, 1], [2, -1, 4]]), r"value -1 at position \(1, 1\)"),
    (np.array([[0, 1, 1], [2, 5, 4]], dtype=np.uint8), r"value 5 at position \(1, 1\)"),
], ids=["too-large", "negative-not-ignored", "unsigned-too-large"])
def test_out_of_range_target_raises(bad_target, message):
    with pytest.raises(ValueError, match=message):
        reference.cross_entropy(np.zeros((2, 3, 5)), bad_target)
    with pytest.raises(ValueError, match=message):
        reference.cross_entropy_grad(np.zeros((2, 3, 5)), bad_target)


@pytest.mark.parametrize("arguments, error", [
    (dict(target=np.zeros((4, 1), dtype=np.int64)), ValueError),
    (dict(target=np.zeros(4)), ValueError),
    (dict(target=np.zeros(4, dtype=bool)), TypeError),
    (dict(logits=np.zeros((4, 5), dtype=complex)), TypeError),
    (dict(logits=np.zeros((4, 0)), target=np.zeros(4, dtype=np.int64)), ValueError),
    (dict(target=np.full((4, 5), 0.2), ignore_index=0), ValueError),
    (dict(weight=np.ones(4)), ValueError),
    (dict(reduction="average"), ValueError),
    (dict(label_smoothing=1.5), ValueError),
    (dict(z_loss=-1.0), ValueError),
    (dict(softcap=0.0), ValueError),
    (dict(grad_output=np.ones(4)), ValueError),
    (dict(grad_output=np.ones(3), reduction="none"), ValueError),
], ids=["target-shape", "float-target-shape", "bool-target", "complex-logits", "no-classes",
        "soft-ignore-index", "weight-shape", "reduction", "label-smoothing", "z-loss",
        "softcap", "grad-output-not-scalar", "grad-output-shape"])
def test_bad_arguments_raise(arguments, error):
    arguments = dict(dict(logits=np.zeros((4, 5)), target=np.zeros(4, dtype=np.int64)),
                     **arguments)
    with pytest.raises(error):
        reference.cross_entropy_grad(**arguments)


def _numpy_scalar_option_calls():
    rng = np.random.default_rng(14)
    x, y = rng.standard_normal((2, 4, 6))
    labels = rng.integers(0, 6, 4)
    hidden, classifier = rng.standard_normal((4, 3)), rng.standard_normal((6, 3))
    embeddings = rng.standard_normal((3, 5, 3))
    boxes1 = np.array([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 4.0]])
    boxes2 = np.array([[0.5, 0.0, 2.0, 3.0], [1.0, 2.0, 3.0, 3.0]])
    half, single = np.float16(0.3), np.float32(0.3)
    return [
        ("cross_entropy", (x, labels), "label_smoothing", half),
        ("cross_entropy", (x, labels), "label_smoothing", single),
        ("cross_entropy", (x, labels), "z_loss", half),
        ("cross_entropy", (x, labels), "softcap", np.float16(1.7)),
        ("linear_cross_entropy", (hidden, classifier, labels), "label_smoothing", half),
        ("dpo", (x, y, 0.5 * x, 0.5 * y), "label_smoothing", half),
        ("dpo", (x, y, 0.5 * x, 0.5 * y), "beta", half),
        ("triplet_margin", tuple(embeddings), "p", np.float16(1.7)),
        ("triplet_margin", tuple(embeddings), "eps", half),
        ("triplet_margin", tuple(embeddings), "margin", half),
        ("huber", (x, y), "delta", half),
        ("pinball", (x, y), "quantile", half),
        ("sigmoid_focal", (x, np.abs(np.tanh(y))), "gamma", np.float16(1.7)),
        ("jsd", (x, y), "beta", half),
        ("token_log_probs", (x, labels), "temperature", np.float16(0.7)),
        ("giou_loss", (boxes1, boxes2), "eps", np.array(0.25, np.float32)),
        ("ciou_loss", (boxes1, boxes2), "eps", np.float32(0.25)),
    ]


@pytest.mark.parametrize("name, arrays, option, value", [
    pytest.param(*call, id=f"{call[0]}-{call[2]}={call[3]!r}")
    for call in _numpy_scalar_option_calls()])
def test_numpy_scalar_options_are_their_float64_value(name, arrays, option, value):
    """An option given as a NumPy scalar or 0-d array (np.float16(0.3), what a config
    read with NumPy holds) means its value, float(value): the reference computes with it
    in float64, as the kernels do. Found by hunt14: the reference's cross_entropy,
    linear_cross_entropy and dpo took label_smoothing's ``1 - eps`` and ``eps / C`` in
    float16 (the loss 2.01962 for the kernels' 2.01901), triplet_margin its p's 1 / p;
    giou_loss/diou_loss/ciou_loss refused a NumPy or 0-d eps that fastloss takes."""
    function = getattr(reference, name)
    expected = function(*arrays, **{option: float(value)})
    got = function(*arrays, **{option: value})
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
    if hasattr(reference, name + "_grad"):
        gradient = getattr(reference, name + "_grad")
        got = gradient(*arrays, **{option: value})
        expected_grad = gradient(*arrays, **{option: float(value)})
        for got_one, expected_one in zip(got if isinstance(got, tuple) else (got,),
                                         expected_grad if isinstance(got, tuple)
                                         else (expected_grad,)):
            np.testing.assert_array_equal(got_one, expected_one)
    # and the kernels read the same number
    assert_close_contract(getattr(fastloss, name)(*arrays, **{option: value}), expected,
                          np.float64, "loss")
