"""kl_div: torch.nn.functional.kl_div's semantics (log-probability input, probability or
log-probability target, reductions none / mean / sum / batchmean, 0 log 0 = 0), at the
NumPy API and in the adapter (fastloss.torch.kl_div, KLDivLoss). The registry's generic
tables run the reference parity, finite differences and threads for its cases; here:
F.kl_div itself for every reduction and log_target, its limits and NaNs, batchmean's
divisor and the accuracy near convergence, where torch's difference of products cancels.
"""
import warnings

import numpy as np
import pytest

import fastloss
from fastloss import reference
from loss_specs import DTYPES, assert_close_contract, central_differences

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import fastloss.torch as FL  # noqa: E402

REDUCTIONS = ["none", "mean", "sum", "batchmean"]


def _log_softmax(rng, shape, scale=1.0):
    logits = rng.standard_normal(shape) * scale
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _inputs(rng, shape, dtype, log_target, scale=1.0):
    input = _log_softmax(rng, shape, scale)
    log_target_values = _log_softmax(rng, shape, scale)
    target = log_target_values if log_target else np.exp(log_target_values)
    return input.astype(dtype), target.astype(dtype)


def _torch_kl_div(input, target, reduction, log_target, upstream):
    """F.kl_div on the inputs upcast to float64, and autograd's gradients of both."""
    leaves = [torch.from_numpy(a.astype(np.float64)).requires_grad_() for a in (input, target)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's warning on reduction="mean"
        loss = F.kl_div(*leaves, reduction=reduction, log_target=log_target)
    grads = torch.autograd.grad(loss, leaves, torch.as_tensor(upstream, dtype=torch.float64))
    return loss.detach().numpy(), [grad.numpy() for grad in grads]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_kl_div_is_torchs(reduction, log_target, dtype, rng):
    input, target = _inputs(rng, (13, 37), dtype, log_target, scale=2.0)
    upstream = rng.uniform(-1, 2, input.shape) if reduction == "none" else 0.75
    loss, grads = fastloss.kl_div_value_and_grad(input, target, upstream, reduction=reduction,
                                                 log_target=log_target,
                                                 wrt=("input", "target"))
    expected, expected_grads = _torch_kl_div(input, target, reduction, log_target, upstream)
    assert_close_contract(np.asarray(loss, dtype=np.float64), expected, dtype, "loss")
    for name, grad, expected_grad in zip(("input", "target"), grads, expected_grads):
        assert grad.dtype == dtype
        assert_close_contract(grad, expected_grad, dtype, "grad", what=f"d/d{name}")
    alone = fastloss.kl_div(input, target, reduction=reduction, log_target=log_target)
    assert np.array_equal(alone, loss)  # the forward alone gives the fused pass's loss


@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_kl_div_adapter_and_module_are_torchs(reduction, log_target):
    rng = np.random.default_rng(11)
    input, target = _inputs(rng, (6, 5, 9), np.float32, log_target)
    ours = [torch.from_numpy(a).requires_grad_() for a in (input, target)]
    theirs = [torch.from_numpy(a).double().requires_grad_() for a in (input, target)]
    loss = FL.KLDivLoss(reduction=reduction, log_target=log_target)(*ours)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = F.kl_div(*theirs, reduction=reduction, log_target=log_target)
    upstream = torch.linspace(-1, 1, loss.numel()).reshape(loss.shape)
    loss.backward(upstream)
    expected.backward(upstream.double())
    assert loss.dtype == torch.float32 and loss.shape == expected.shape
    assert isinstance(FL.KLDivLoss(), torch.nn.KLDivLoss)
    assert_close_contract(loss.detach().double().numpy(), expected.detach().numpy(),
                          np.float32, "loss")
    for leaf, expected_leaf in zip(ours, theirs):
        assert_close_contract(leaf.grad.double().numpy(), expected_leaf.grad.numpy(),
                              np.float32, "grad")


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_targets_give_torchs_limits_and_nans(dtype):
    """0 log 0 = 0 (torch's xlogy); a zero target against an infinite input is NaN (0 *
    inf, as torch); a negative target is NaN (log of it); the target's gradient at 0 is
    NaN, as torch's autograd of xlogy gives, and the input's -0."""
    input = np.array([-1.0, -np.inf, -0.5, -2.0, -np.inf], dtype=dtype)
    target = np.array([0.0, 0.0, -0.25, 0.5, 0.5], dtype=dtype)
    loss, (grad_input, grad_target) = fastloss.kl_div_value_and_grad(
        input, target, np.ones(5), reduction="none", wrt=("input", "target"))
    leaves = [torch.from_numpy(a.astype(np.float64)).requires_grad_() for a in (input, target)]
    expected = F.kl_div(*leaves, reduction="none")
    expected_grads = torch.autograd.grad(expected, leaves, torch.ones(5, dtype=torch.float64))
    assert loss[0] == 0 and np.isnan(loss[1]) and np.isnan(loss[2]) and loss[4] == np.inf
    np.testing.assert_array_equal(np.isnan(loss), np.isnan(expected.detach().numpy()))
    assert_close_contract(loss[3:4], expected.detach().numpy()[3:4], dtype, "loss")
    np.testing.assert_array_equal(grad_input, expected_grads[0].numpy().astype(dtype))
    np.testing.assert_array_equal(np.isnan(grad_target), np.isnan(expected_grads[1].numpy()))
    assert np.isnan(grad_target[0]) and np.isnan(grad_target[2])
    # log_target: a target of -inf is exp(-inf) (-inf - x) = 0 * -inf, NaN as torch
    loss = fastloss.kl_div(input[:1], np.array([-np.inf], dtype=dtype), reduction="none",
                           log_target=True)
    assert np.isnan(loss[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_terms_keep_their_accuracy_near_convergence(dtype, rng):
    """Where the input's log-probabilities are the target's (up to a tiny step), each
    term t (log t - x) is tiny next to t log t and t x; fastloss factors it, so each
    term meets the contract against the float64 reference, where torch's float32
    xlogy(t, t) - t x loses every digit."""
    target = np.exp(_log_softmax(rng, (8, 64)))
    input = np.log(target) + rng.uniform(-1e-5, 1e-5, target.shape)
    input, target = input.astype(dtype), target.astype(dtype)
    terms = fastloss.kl_div(input, target, reduction="none")
    expected = reference.kl_div(input, target, reduction="none")
    assert_close_contract(terms, expected, dtype, "loss")
    if dtype == np.float32:  # the witness: torch's own float32 terms
        theirs = F.kl_div(torch.from_numpy(input), torch.from_numpy(target), reduction="none")
        assert np.max(np.abs(theirs.numpy() - expected) / np.abs(expected)) > 1e-2
    assert_close_contract(np.float64(fastloss.kl_div(input, target, reduction="batchmean")),
                          reference.kl_div(input, target, reduction="batchmean"), dtype, "loss")


def test_batchmean_divides_by_the_inputs_first_dimension():
    rng = np.random.default_rng(5)
    input, target = _inputs(rng, (4, 3, 5), np.float64, False)
    total = fastloss.kl_div(input, target, reduction="sum")
    assert fastloss.kl_div(input, target, reduction="batchmean") == pytest.approx(total / 4,
                                                                                  rel=1e-15)
    grad = fastloss.kl_div_grad(input, target, 2.0, reduction="batchmean")
    assert np.allclose(grad, fastloss.kl_div_grad(input, target, 0.5, reduction="sum"),
                       rtol=1e-15, atol=0)
    # a target that broadcasts the input: still the input's first dimension, as torch
    wide = fastloss.kl_div(input[0], target, reduction="batchmean")
    expected = F.kl_div(torch.from_numpy(input[0]), torch.from_numpy(target),
                        reduction="batchmean")
    assert wide == pytest.approx(expected.item(), rel=1e-13)
    # a 0-d input is not divided; an empty batch is NaN (0 / 0), as torch
    scalar = fastloss.kl_div(np.float64(-1.0), np.float64(0.5), reduction="batchmean")
    assert scalar == pytest.approx(F.kl_div(torch.tensor(-1.0, dtype=torch.float64),
                                            torch.tensor(0.5, dtype=torch.float64),
                                            reduction="batchmean").item(), rel=1e-15)
    assert np.isnan(fastloss.kl_div(np.zeros((0, 5)), np.zeros((0, 5)), reduction="batchmean"))
    assert fastloss.kl_div_grad(np.zeros((0, 5)), np.zeros((0, 5)),
                                reduction="batchmean").shape == (0, 5)


def test_gradients_by_finite_differences(rng):
    for log_target in (False, True):
        input, target = _inputs(rng, (3, 6), np.float64, log_target)
        for reduction in ("batchmean", "mean"):
            for index, name in enumerate(("input", "target")):
                grad = fastloss.kl_div_grad(input, target, reduction=reduction,
                                            log_target=log_target, wrt=name)
                arrays = [input, target]

                def loss_of(moved, index=index):
                    moved_arrays = list(arrays)
                    moved_arrays[index] = moved
                    return reference.kl_div(*moved_arrays, reduction=reduction,
                                            log_target=log_target)
                numeric = central_differences(loss_of, arrays[index], 1e-4)
                np.testing.assert_allclose(grad, numeric, rtol=1e-7, atol=1e-10,
                                           err_msg=f"{name} {reduction} {log_target}")


def test_bad_input_names_the_argument(rng):
    input, target = _inputs(rng, (3, 4), np.float64, False)
    with pytest.raises(ValueError, match="reduction"):
        fastloss.kl_div(input, target, reduction="batch")
    with pytest.raises(ValueError, match="reduction"):
        FL.kl_div(torch.from_numpy(input), torch.from_numpy(target), reduction="average")
    with pytest.raises(ValueError, match="target"):
        fastloss.kl_div(input, target[:, :3])
    with pytest.raises(TypeError, match="log_target"):
        fastloss.kl_div(input, target, log_target="no")
    with pytest.raises(TypeError, match="input"):
        fastloss.kl_div(input.astype(np.int64), target)
    with pytest.raises(ValueError, match="grad_output"):
        fastloss.kl_div_grad(input, target, np.ones(3), reduction="batchmean")
    # torch's legacy arguments map as torch maps them
    with pytest.warns(UserWarning, match="size_average"):
        legacy = FL.kl_div(torch.from_numpy(input), torch.from_numpy(target),
                           size_average=False)
    assert legacy.item() == pytest.approx(fastloss.kl_div(input, target, reduction="sum"),
                                          rel=1e-15)
