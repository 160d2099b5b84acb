"""What is particular to the losses added through the registry (sigmoid_focal,
margin_ranking, poisson_nll, gaussian_nll, pinball, and the box losses) at the public API
and in the torch adapter. Parity with the reference and with each counterpart, the
refused options and the gradients of every declared argument run from the registry
(test_registry.py); the kernels' own edge cases are in test_pointwise_kernels.py and
test_box.py.
"""
import numpy as np
import pytest

import fastloss
from fastloss import _registry, reference
from loss_specs import DTYPES, assert_close_contract


@pytest.fixture
def rng(request):
    import zlib

    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


# --- gaussian_nll: torch's shapes of var ----------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("var_shape", [(6, 5), (6,), (6, 1), (1, 5)])
def test_gaussian_nll_var_shapes_and_their_gradients(var_shape, dtype, rng):
    x = rng.standard_normal((6, 5)).astype(dtype)
    y = rng.standard_normal((6, 5)).astype(dtype)
    var = rng.uniform(0.2, 2.0, var_shape).astype(dtype)
    for reduction in ("mean", "sum", "none"):
        loss, grads = fastloss.gaussian_nll_value_and_grad(
            x, y, var, wrt=("input", "target", "var"), reduction=reduction,
            grad_output=0.5 if reduction != "none" else np.full((6, 5), 0.5))
        ref_loss, ref_grads = reference.gaussian_nll_value_and_grad(
            x, y, var, wrt=("input", "target", "var"), reduction=reduction,
            grad_output=0.5 if reduction != "none" else np.full((6, 5), 0.5))
        assert_close_contract(loss, ref_loss, dtype, "loss")
        for grad, ref, argument in zip(grads, ref_grads, (x, y, var)):
            assert grad.shape == argument.shape and grad.dtype == argument.dtype
            assert_close_contract(grad, ref, dtype, "grad")


def test_gaussian_nll_refuses_what_torch_refuses():
    x = np.zeros((6, 5))
    with pytest.raises(ValueError, match="^var: has negative entries"):
        fastloss.gaussian_nll(x, x, -np.ones((6, 5)))
    with pytest.raises(ValueError, match="^var: shape"):
        fastloss.gaussian_nll(x, x, np.ones((5,)))
    with pytest.raises(ValueError, match="^var: shape"):
        fastloss.gaussian_nll(x, x, np.ones((3, 5)))


def test_gaussian_nll_inputs_are_not_modified_and_var_below_eps_is_clamped():
    x = np.array([0.0, 1.0])
    var = np.array([0.0, 1e-9])
    before = var.copy()
    loss = fastloss.gaussian_nll(x, x * 0, var, eps=1e-3, reduction="none")
    assert np.array_equal(var, before)
    expected = 0.5 * (np.log(1e-3) + np.array([0.0, 1.0]) / 1e-3)
    np.testing.assert_allclose(loss, expected, rtol=1e-12)


# --- pinball: scikit-learn's mean_pinball_loss ----------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_pinball_per_column_quantiles_match_scikit_learn(dtype, rng):
    y = rng.standard_normal((200, 3)).astype(dtype)
    p = rng.standard_normal((200, 3)).astype(dtype)
    quantiles = np.array([0.1, 0.5, 0.9])
    per_element = fastloss.pinball(p, y, quantile=quantiles, reduction="none")
    try:
        from sklearn.metrics import mean_pinball_loss
    except ImportError:  # its formula: alpha * max(y - p, 0) + (1 - alpha) * max(p - y, 0)
        def mean_pinball_loss(y_true, y_pred, alpha):
            diff = y_true - y_pred
            return np.mean(alpha * np.maximum(diff, 0) + (1 - alpha) * np.maximum(-diff, 0))
    for column, q in enumerate(quantiles):
        expected = mean_pinball_loss(y[:, column].astype(np.float64),
                                     p[:, column].astype(np.float64), alpha=q)
        assert_close_contract(float(np.mean(per_element[:, column], dtype=np.float64)),
                              expected, dtype, "loss")
    assert_close_contract(fastloss.pinball(p, y, quantile=quantiles),
                          np.mean([mean_pinball_loss(y[:, c].astype(np.float64),
                                                     p[:, c].astype(np.float64), alpha=q)
                                   for c, q in enumerate(quantiles)]), dtype, "loss")


def test_pinball_gradient_at_a_tie_is_the_average_of_the_two_slopes():
    grad = fastloss.pinball_grad(np.array([1.0, 0.0, 2.0]), np.array([1.0, 1.0, 1.0]),
                                 quantile=0.8, reduction="sum")
    np.testing.assert_array_equal(grad, [0.5 - 0.8, -0.8, 1 - 0.8])


def test_pinball_quantile_must_fit_the_last_axis():
    with pytest.raises(ValueError, match="^quantile"):
        fastloss.pinball(np.zeros((4, 3)), np.zeros((4, 3)), quantile=np.full(4, 0.5))


@pytest.mark.parametrize("name, factor", [("pinball", {}), ("pinball", {"quantile": [0.2, 0.9]}),
                                          ("bradley_terry", {}),
                                          ("bradley_terry", {"margin": 0.5})], ids=str)
@pytest.mark.parametrize("shape", [(0,), (0, 2), (3, 0)], ids=str)
def test_a_loss_with_a_factor_takes_empty_inputs(name, factor, shape):
    # as every other elementwise loss (test_elementwise.py::test_empty_input): the mean
    # of nothing is NaN, the sum 0, and the gradients empty, never "needs its quantile"
    if "quantile" in factor and shape[-1] != 2:
        factor = {"quantile": np.full(shape[-1:], 0.3)}
    inputs = [np.zeros(shape) for _ in _registry.LOSSES[name].inputs]
    assert np.isnan(getattr(fastloss, name)(*inputs, **factor))
    for reduction in ("mean", "sum", "none"):
        expected = getattr(reference, name)(*inputs, reduction=reduction, **factor)
        loss = getattr(fastloss, name)(*inputs, reduction=reduction, **factor)
        np.testing.assert_array_equal(loss, expected)
        upstream = np.zeros(shape) if reduction == "none" else 1.0
        loss, grad = getattr(fastloss, f"{name}_value_and_grad")(*inputs, upstream,
                                                                 reduction=reduction, **factor)
        assert grad.shape == shape and grad.dtype == np.float64


# --- sigmoid_focal ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_focal_without_focusing_is_balanced_bce(dtype, rng):
    x = (3 * rng.standard_normal((50, 7))).astype(dtype)
    y = (rng.random((50, 7)) < 0.3).astype(dtype)
    alpha_t = 0.25 * y + 0.75 * (1 - y)
    expected = alpha_t.astype(np.float64) * reference.bce_with_logits(x, y, reduction="none")
    assert_close_contract(fastloss.sigmoid_focal(x, y, gamma=0.0, reduction="none"), expected,
                          dtype, "loss")
    # alpha < 0 drops the class balance
    assert_close_contract(fastloss.sigmoid_focal(x, y, alpha=-1.0, gamma=0.0),
                          reference.bce_with_logits(x, y), dtype, "loss")


def test_sigmoid_focal_keeps_tiny_losses_that_torchvision_rounds_to_zero():
    # x = 40, y = 1: 1 - p_t = sigmoid(-40) = 4.2e-18, the loss ~ 0.25 * 4.2e-18**3
    loss = fastloss.sigmoid_focal(np.array([40.0]), np.array([1.0]), gamma=2.0,
                                  reduction="sum")
    assert 0.0 < loss < 1e-50
    assert_close_contract(loss, reference.sigmoid_focal(np.array([40.0]), np.array([1.0]),
                                                        reduction="sum"), np.float64, "loss")


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0, 3.0])
@pytest.mark.parametrize("alpha", [0.25, -1.0])
@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_focal_gradient_at_infinite_logits(gamma, alpha, dtype):
    """At x = inf with y = 1 (and x = -inf with y = 0) the loss is NaN (ce = 0 * inf, as
    torch's); so is the gradient, in the kernels and in torch's autograd of torchvision's
    formula. Found by hunt14: the reference gave 0 there (its limit for 1 - p_t = 0
    assumed a finite ce)."""
    x = np.array([np.inf, -np.inf, np.inf, -np.inf, 800.0, -800.0, 3.0], dtype)
    y = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0], dtype)
    options = dict(alpha=alpha, gamma=gamma, reduction="none")
    expected = reference.sigmoid_focal_grad(x, y, **options)
    assert np.isnan(expected[:2]).all()
    assert_close_contract(fastloss.sigmoid_focal_grad(x, y, **options), expected, dtype,
                          "grad")
    torch = pytest.importorskip("torch")
    logits = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    target = torch.tensor(y, dtype=torch.float64)
    p = torch.sigmoid(logits)
    ce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target,
                                                              reduction="none")
    loss = ce * (1 - (p * target + (1 - p) * (1 - target))) ** gamma
    if alpha >= 0:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    (theirs,) = torch.autograd.grad(loss.sum(), logits)
    np.testing.assert_array_equal(np.isnan(expected[:4]), np.isnan(theirs.numpy()[:4]))


# --- the torch adapter: what fastloss does not differentiate is refused, never zero ------------

def test_adapter_refuses_a_target_gradient_it_does_not_compute():
    torch = pytest.importorskip("torch")
    import fastloss.torch as FL

    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y = torch.rand(4, 3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="targets: fastloss computes no gradient"):
        FL.sigmoid_focal_loss(x, y)
    with pytest.raises(RuntimeError, match="target: fastloss computes no gradient"):
        FL.margin_ranking_loss(x, x.detach(), y)
    # detached, as the message says: fine, and the same as without the flag
    assert torch.equal(FL.sigmoid_focal_loss(x, y.detach()),
                       FL.sigmoid_focal_loss(x, y.detach().clone()))


def test_adapter_refuses_a_quantile_that_requires_grad():
    # pinball's quantile tensor (its loss depends on it: d loss / d q = target - pred)
    # was taken and its gradient silently left out (q.grad None after backward)
    torch = pytest.importorskip("torch")
    import fastloss.torch as FL

    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 3, dtype=torch.float64)
    q = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    with pytest.raises(RuntimeError, match="quantile: fastloss computes no gradient"):
        FL.pinball_loss(x, t, quantile=q.clone().requires_grad_())
    with pytest.raises(RuntimeError, match="quantile: fastloss computes no gradient"):
        FL.PinballLoss(quantile=q.clone().requires_grad_())(x, t)
    with torch.no_grad():  # nothing differentiates it there
        FL.pinball_loss(x, t, quantile=q.clone().requires_grad_())
    FL.pinball_loss(x, t, quantile=q).backward()
    assert x.grad is not None


def test_adapter_poisson_full_target_gradient_is_finite_where_torch_is_nan():
    torch = pytest.importorskip("torch")
    import fastloss.torch as FL

    rate = torch.tensor([0.5, 1.0, -0.3], dtype=torch.float64, requires_grad=True)
    counts = torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64, requires_grad=True)
    ours = torch.autograd.grad(FL.poisson_nll_loss(rate, counts, full=True), counts)[0]
    theirs = torch.autograd.grad(torch.nn.functional.poisson_nll_loss(
        rate, counts, full=True), counts)[0]
    assert torch.isnan(theirs[0]) and torch.isfinite(ours).all()
    # where torch's is finite, the two agree; at target 0 ours is d/dtarget of the loss
    # without its Stirling term, -log_input / 3 for the mean
    np.testing.assert_allclose(ours[1:].numpy(), theirs[1:].numpy(), rtol=1e-12)
    np.testing.assert_allclose(ours[0].item(), -0.5 / 3, rtol=1e-12)


def test_adapter_gaussian_nll_takes_a_number_for_var():
    torch = pytest.importorskip("torch")
    import fastloss.torch as FL

    x = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, 2, dtype=torch.float64)
    ours = FL.gaussian_nll_loss(x, y, 0.7)
    theirs = torch.nn.functional.gaussian_nll_loss(x, y, 0.7)
    np.testing.assert_allclose(ours.item(), theirs.item(), rtol=1e-12)


def test_box_modules_average_and_functions_keep_torchvision_default():
    torch = pytest.importorskip("torch")
    import fastloss.torch as FL

    boxes1 = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 4.0, 3.0]], requires_grad=True)
    boxes2 = torch.tensor([[1.0, 1.0, 3.0, 3.0], [1.0, 1.0, 4.0, 3.0]])
    per_pair = FL.generalized_box_iou_loss(boxes1, boxes2)
    assert per_pair.shape == (2,)
    module = FL.GIoULoss()
    assert torch.equal(module(boxes1, boxes2), per_pair.mean())
    module(boxes1, boxes2).backward()
    assert boxes1.grad.shape == (2, 4) and torch.isfinite(boxes1.grad).all()


# --- soft_margin --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_soft_margin_never_overflows_and_keeps_tiny_losses(dtype):
    x = np.array([-200.0, -30.0, 0.0, 30.0, 200.0], dtype=dtype)
    y = np.ones(5, dtype=dtype)
    loss, grad = fastloss.soft_margin_value_and_grad(x, y, reduction="none",
                                                     grad_output=np.ones(5))
    ref_loss, ref_grad = reference.soft_margin_value_and_grad(x, y, reduction="none",
                                                              grad_output=np.ones(5))
    # exp(-30) kept (not 1 + tiny rounded away); 200 exactly where log(1 + exp(200)) is
    assert np.all(np.isfinite(loss)) and loss[3] > 0 and loss[0] == 200
    assert_close_contract(loss, ref_loss, dtype, "loss")
    assert_close_contract(grad, ref_grad, dtype, "grad")
    # labels other than +-1 take the double path for float32: still the contract
    y = np.full(5, 0.3, dtype=dtype)
    assert_close_contract(fastloss.soft_margin(x, y, reduction="none"),
                          reference.soft_margin(x, y, reduction="none"), dtype, "loss")


def test_soft_margin_target_is_not_differentiable_as_in_torch():
    with pytest.raises(ValueError, match="^wrt: target: .* not differentiable"):
        fastloss.soft_margin_grad(np.zeros(3), np.ones(3), wrt="target")
    torch = pytest.importorskip("torch")
    import fastloss.torch as FL

    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    y = torch.ones(3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="not differentiable"):
        FL.soft_margin_loss(x, y)
    with pytest.raises(RuntimeError, match="not differentiable"):
        torch.nn.functional.soft_margin_loss(x, y)
