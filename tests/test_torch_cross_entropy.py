"""fastloss.torch.cross_entropy's autograd paths: the gradient computed in the forward
(and written over the logits with inplace_backward), scaled in the backward; the lse path
kept as grad_in_forward=False; second backwards; gradients w.r.t. probability targets and
class weights; mixed float dtypes; the page-fault-free buffers. Values are checked
against torch evaluated in float64 under the accuracy contract (test_torch_adapter.py's
helpers)."""
import gc

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

import fastloss  # noqa: E402
import fastloss.torch as FL  # noqa: E402
from test_torch_adapter import (  # noqa: E402
    GRAD_TOLERANCE,
    LOSS_TOLERANCE,
    assert_close,
    compare_with_torch,
    generator,  # noqa: F401 (fixture)
)

DTYPES = [torch.float32, torch.float64]


def logits_and_target(generator, shape=(12, 9), dtype=torch.float64):
    logits = (3 * torch.randn(shape, generator=generator, dtype=torch.float64)).to(dtype)
    target = torch.randint(0, shape[1], shape[:1] + shape[2:], generator=generator)
    return logits, target


def probabilities(generator, shape, dtype):
    values = torch.rand(shape, generator=generator, dtype=torch.float64)
    return (values / values.sum(dim=1 if len(shape) >= 2 else 0, keepdim=True)).to(dtype)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_the_forward_keeps_the_gradient_not_the_logits(reduction, generator):
    logits, target = logits_and_target(generator)
    hidden = logits.clone().requires_grad_(True)
    output = hidden * 1.0
    loss = FL.cross_entropy(output, target, reduction=reduction, label_smoothing=0.1)
    node = loss.grad_fn
    # the fused pass ran in the forward: the gradient waits there, and neither the
    # logits nor an lse are saved
    assert isinstance(node.grad, np.ndarray) and node.grad.shape == logits.shape
    assert node.saved_tensors[0] is None and not hasattr(node, "lse")
    expected_loss = F.cross_entropy(logits, target, reduction=reduction, label_smoothing=0.1)
    for upstream in ([1.0, 2.5] if reduction != "none"
                     else [torch.ones(12, dtype=torch.float64),
                           torch.linspace(-2, 3, 12, dtype=torch.float64)]):
        upstream = torch.as_tensor(upstream, dtype=torch.float64)
        hidden.grad = None
        loss = FL.cross_entropy(hidden * 1.0, target, reduction=reduction,
                                label_smoothing=0.1)
        loss.backward(upstream)
        reference = logits.clone().requires_grad_(True)
        F.cross_entropy(reference, target, reduction=reduction,
                        label_smoothing=0.1).backward(upstream)
        assert_close(loss, expected_loss, torch.float64, LOSS_TOLERANCE, "loss")
        assert_close(hidden.grad, reference.grad, torch.float64, GRAD_TOLERANCE, "grad")
        assert loss.grad_fn.grad is None  # handed to autograd by the backward


def test_the_gradient_is_handed_over_without_a_copy(generator):
    logits, target = logits_and_target(generator, dtype=torch.float32)
    logits.requires_grad_(True)
    loss = FL.cross_entropy(logits, target)
    pointer = loss.grad_fn.grad.__array_interface__["data"][0]
    (grad,) = torch.autograd.grad(loss, logits)
    assert grad.data_ptr() == pointer


@pytest.mark.parametrize("grad_in_forward", [True, False])
def test_a_second_backward_recomputes_from_the_logits(grad_in_forward, generator):
    logits, target = logits_and_target(generator)
    logits.requires_grad_(True)
    loss = FL.cross_entropy(logits, target, grad_in_forward=grad_in_forward)
    loss.backward(retain_graph=True)
    first = logits.grad.clone()
    loss.backward(torch.tensor(0.5, dtype=torch.float64))
    torch.testing.assert_close(logits.grad, 1.5 * first, rtol=1e-14, atol=0)


def test_a_second_backward_without_the_logits_says_why(generator):
    logits, target = logits_and_target(generator)
    hidden = logits.clone().requires_grad_(True)
    loss = FL.cross_entropy(hidden * 2.0, target)  # the logits live only in the graph
    gc.collect()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="grad_in_forward=False"):
        loss.backward()
    # changed logits are not used either
    logits.requires_grad_(True)
    kept = logits * 1.0
    loss = FL.cross_entropy(kept, target)
    loss.backward(retain_graph=True)
    with torch.no_grad():
        kept.add_(1.0)
    with pytest.raises(RuntimeError, match="gone or changed"):
        loss.backward()
    # and without retain_graph, torch's own error
    loss = FL.cross_entropy(logits * 1.0, target)
    loss.backward()
    with pytest.raises(RuntimeError, match="second time"):
        loss.backward()


@pytest.mark.parametrize("shape", [(12, 9), (3, 9, 4)], ids=["2d", "3d"])
def test_inplace_writes_the_gradient_in_the_forward(shape, generator):
    logits, target = logits_and_target(generator, shape)
    hidden = logits.clone().requires_grad_(True)
    output = hidden * 1.0
    loss = FL.cross_entropy(output, target, inplace_backward=True)
    reference = logits.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(F.cross_entropy(reference, target), [reference])
    if len(shape) == 2:
        # one read, one write: the logits hold the gradient as soon as the forward returns
        assert loss.grad_fn.grad.__array_interface__["data"][0] == output.data_ptr()
        torch.testing.assert_close(output.detach(), expected, rtol=1e-13, atol=1e-16)
    (grad,) = torch.autograd.grad(loss, hidden)
    torch.testing.assert_close(grad, expected, rtol=1e-13, atol=1e-16)


def test_inplace_second_backward_refuses(generator):
    logits, target = logits_and_target(generator)
    hidden = logits.clone().requires_grad_(True)
    loss = FL.cross_entropy(hidden * 1.0, target, inplace_backward=True)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="grad_in_forward=False"):
        loss.backward()


def test_no_gradient_no_fused_pass(generator):
    logits, target = logits_and_target(generator)
    with torch.no_grad():
        work = logits.clone().requires_grad_(True)
        loss = FL.cross_entropy(work, target, inplace_backward=False)
    torch.testing.assert_close(loss, F.cross_entropy(logits, target))
    # inplace_backward never touches logits that need no gradient, nor those that
    # require grad under torch.no_grad() (no graph: ctx.needs_input_grad still says True)
    plain = logits.clone()
    FL.cross_entropy(plain, target, inplace_backward=True)
    assert torch.equal(plain, logits)
    trained = logits.clone().requires_grad_(True)
    with torch.no_grad():
        loss = FL.cross_entropy(trained, target, inplace_backward=True)
    assert torch.equal(trained.detach(), logits) and loss.grad_fn is None


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("options", [{}, {"label_smoothing": 0.2}, {"weight": True},
                                     {"weight": True, "label_smoothing": 0.1}],
                         ids=["plain", "smoothing", "weight", "weight-smoothing"])
@pytest.mark.parametrize("shape", [(9,), (10, 9), (3, 9, 4)], ids=["1d", "2d", "3d"])
def test_gradients_for_probability_targets_and_weights(shape, options, reduction, dtype,
                                                       generator):
    # torch differentiates the loss w.r.t. probability targets and, with them, the class
    # weights; so does the adapter (it raised NotImplementedError before)
    logits = (3 * torch.randn(shape, generator=generator, dtype=torch.float64)).to(dtype)
    target = probabilities(generator, shape, dtype)
    weight = None
    if options.get("weight"):
        weight = (0.25 + torch.rand(shape[1] if len(shape) > 1 else shape[0],
                                    generator=generator, dtype=torch.float64)).to(dtype)
    smoothing = options.get("label_smoothing", 0.0)

    def ours(logits, target, weight):
        return FL.cross_entropy(logits, target, weight, reduction=reduction,
                                label_smoothing=smoothing)

    def theirs(logits, target, weight):
        return F.cross_entropy(logits, target, weight, reduction=reduction,
                               label_smoothing=smoothing)

    differentiable = [0, 1] + ([2] if weight is not None else [])
    compare_with_torch(ours, theirs, [logits, target, weight], differentiable, dtype,
                       generator)
    # and the target alone, the logits not requiring grad
    compare_with_torch(ours, theirs, [logits, target, weight], [1], dtype, generator)


def test_target_gradients_with_softcap_and_z_loss(generator):
    # the z-loss does not depend on the target; softcap changes the log-softmax
    logits = 4 * torch.randn(6, 8, generator=generator, dtype=torch.float64)
    target = probabilities(generator, (6, 8), torch.float64).requires_grad_(True)
    loss = FL.cross_entropy(logits, target, softcap=2.0, z_loss=1e-3)
    (grad,) = torch.autograd.grad(loss, target)
    capped = 2.0 * torch.tanh(logits / 2.0)
    expected = -torch.log_softmax(capped, 1) / 6
    torch.testing.assert_close(grad, expected, rtol=1e-13, atol=1e-16)


@pytest.mark.parametrize("logits_dtype, target_dtype",
                         [(torch.float32, torch.float64), (torch.float64, torch.float32)])
def test_mixed_float_dtypes_follow_torch(logits_dtype, target_dtype, generator):
    # float64 probabilities with float32 logits: a float64 loss from unrounded targets,
    # the gradients in each argument's dtype (torch promotes the same way)
    logits = (3 * torch.randn(10, 9, generator=generator, dtype=torch.float64))
    target = probabilities(generator, (10, 9), torch.float64)
    ours_logits = logits.to(logits_dtype).requires_grad_(True)
    ours_target = target.to(target_dtype).requires_grad_(True)
    loss = FL.cross_entropy(ours_logits, ours_target)
    expected = F.cross_entropy(ours_logits.detach().double(), ours_target.detach().double())
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, expected, rtol=1e-12 if logits_dtype == torch.float64
                               else 2e-6, atol=0)
    grad_logits, grad_target = torch.autograd.grad(loss, [ours_logits, ours_target])
    assert grad_logits.dtype == logits_dtype and grad_target.dtype == target_dtype
    # against float64 throughout (torch itself takes the log-softmax of float32 logits in
    # float32, so its target gradient carries float32 rounding)
    theirs_logits = ours_logits.detach().double().requires_grad_(True)
    theirs_target = ours_target.detach().double().requires_grad_(True)
    expected_grads = torch.autograd.grad(F.cross_entropy(theirs_logits, theirs_target),
                                         [theirs_logits, theirs_target])
    assert_close(grad_logits, expected_grads[0].to(logits_dtype), logits_dtype,
                 GRAD_TOLERANCE, "grad logits")
    assert_close(grad_target, expected_grads[1].to(target_dtype), target_dtype,
                 GRAD_TOLERANCE, "grad target")
    # the NumPy API promotes likewise
    loss_np = fastloss.cross_entropy(ours_logits.detach().numpy(), target.detach().numpy())
    if logits_dtype == torch.float32:
        assert loss_np == pytest.approx(F.cross_entropy(ours_logits.detach().double(),
                                                        target).item(), rel=1e-12)


def test_weight_with_class_indices_is_not_differentiable(generator):
    logits, target = logits_and_target(generator)
    weight = torch.ones(9, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="weight"):
        F.cross_entropy(logits.requires_grad_(True), target, weight=weight)
    with pytest.raises(RuntimeError, match="weight"):
        FL.cross_entropy(logits, target, weight=weight)


def test_large_gradients_come_from_the_huge_page_allocator():
    # 2 MiB-aligned, untouched until the kernel writes them (no page-fault tax of a fresh
    # np.empty's 4 KiB pages); small ones are np.empty's
    logits = torch.randn(512, 4096)
    target = torch.randint(0, 4096, (512,))
    grad = fastloss.cross_entropy_grad(logits.numpy(), target.numpy())
    assert grad.__array_interface__["data"][0] % (2 << 20) == 0
    assert type(grad.base).__name__ == "_LargeBuffer"
    small = fastloss.cross_entropy_grad(logits[:4, :16].numpy().copy(), target[:4].numpy() % 16)
    assert small.base is None
    expected = fastloss.reference.cross_entropy_grad(logits.numpy(), target.numpy())
    np.testing.assert_allclose(grad, expected, rtol=2e-6, atol=1e-6 * np.abs(expected).max())
    # the adapter's gradient is that buffer, viewed by torch without a copy
    trained = logits.clone().requires_grad_(True)
    loss = FL.cross_entropy(trained, target)
    buffer = loss.grad_fn.grad
    (grad,) = torch.autograd.grad(loss, trained)
    assert grad.data_ptr() == buffer.__array_interface__["data"][0]
    del buffer, grad, loss
    gc.collect()


def test_the_block_of_a_freed_gradient_serves_the_next_one():
    # A training step asks for a gradient of the same size every step: the block of the
    # last one freed is kept and reused (no fresh pages to fault and zero), until
    # release_memory() gives it back.
    fastloss.release_memory()
    logits = np.random.default_rng(0).standard_normal((256, 8192)).astype(np.float32)
    target = np.arange(256) % 8192
    first = fastloss.cross_entropy_grad(logits, target)
    pointer = first.__array_interface__["data"][0]
    assert not first.base.reused
    expected = first.copy()
    del first
    second = fastloss.cross_entropy_grad(logits, target)
    assert second.__array_interface__["data"][0] == pointer and second.base.reused
    assert np.array_equal(second, expected)
    del second
    assert fastloss.release_memory() >= logits.nbytes
    assert fastloss.release_memory() == 0
    third = fastloss.cross_entropy_grad(logits, target)
    assert not third.base.reused


@pytest.mark.parametrize("logits_dtype", DTYPES, ids=str)
@pytest.mark.parametrize("target_dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_half_probability_targets_beside_full_precision_logits(logits_dtype, target_dtype,
                                                               smoothing, generator):
    # torch takes float16 / bfloat16 probabilities beside float32 or float64 logits (the
    # loss in the promotion of the two dtypes); the adapter refused them (TypeError)
    from test_half import assert_gradient_contract, half_numpy

    logits = (3 * torch.randn(10, 9, generator=generator, dtype=torch.float64)).to(logits_dtype)
    target = probabilities(generator, (10, 9), torch.float64).to(target_dtype)
    ours_logits = logits.clone().requires_grad_(True)
    ours_target = target.clone().requires_grad_(True)
    loss = FL.cross_entropy(ours_logits, ours_target, label_smoothing=smoothing)
    assert loss.dtype == F.cross_entropy(logits, target, label_smoothing=smoothing).dtype
    # against float64 on the same (already rounded) inputs: torch's own float32 call
    # rounds the smoothed target to the target's half dtype (6.7e-4 of the loss with
    # bfloat16), which the contract does not allow
    theirs_logits = logits.to(torch.float64, copy=True).requires_grad_(True)
    theirs_target = target.double().requires_grad_(True)
    expected = F.cross_entropy(theirs_logits, theirs_target, label_smoothing=smoothing)
    assert_close(loss, expected.to(logits_dtype), logits_dtype, LOSS_TOLERANCE, "loss")
    upstream = torch.tensor(0.625, dtype=torch.float64)
    grad_logits, grad_target = torch.autograd.grad(loss, [ours_logits, ours_target],
                                                   upstream.to(loss.dtype))
    expected_logits, expected_target = torch.autograd.grad(
        expected, [theirs_logits, theirs_target], upstream)
    assert_close(grad_logits, expected_logits.to(logits_dtype), logits_dtype, GRAD_TOLERANCE,
                 "grad logits")
    assert grad_target.dtype == target_dtype
    assert_gradient_contract(half_numpy(grad_target), expected_target.numpy(),
                             half_numpy(target).dtype)
    # the logits alone, and the NumPy API on the same arrays
    (alone,) = torch.autograd.grad(FL.cross_entropy(ours_logits, target,
                                                    label_smoothing=smoothing),
                                   [ours_logits])
    torch.testing.assert_close(alone * 0.625, grad_logits)
    loss_np = fastloss.cross_entropy(logits.numpy(), half_numpy(target),
                                     label_smoothing=smoothing)
    assert loss_np == pytest.approx(loss.item(), rel=1e-15, abs=0)
