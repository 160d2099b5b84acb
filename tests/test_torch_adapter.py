"""The PyTorch adapter ``fastloss.torch``: parity with ``torch.nn.functional`` and
``torch.nn`` (losses and gradients), gradcheck in float64, the errors, and a training loop
that gives the same losses with either.

Parity is judged against torch evaluated in float64 on the same inputs (a float32 input is
upcast first), under the accuracy contract of DESIGN.md: float32 results must be as close
to that as fastloss's float32 kernels are to the float64 reference.
"""
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

import fastloss  # noqa: E402
import fastloss.torch as FL  # noqa: E402

DTYPES = [torch.float32, torch.float64]
REDUCTIONS = ["mean", "sum", "none"]

# DESIGN.md's accuracy contract: |ours - ref| <= rtol |ref| + floor max|ref|.
LOSS_TOLERANCE = {torch.float32: (2e-6, 1e-14), torch.float64: (1e-12, 1e-14)}
GRAD_TOLERANCE = {torch.float32: (2e-6, 1e-6), torch.float64: (1e-12, 1e-14)}


def assert_close(actual, expected, dtype, tolerances, what):
    rtol, floor = tolerances[dtype]
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype}, expected {dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    actual = actual.detach().double()
    expected = expected.detach().double()
    if expected.numel() == 0:
        return
    bound = rtol * expected.abs() + floor * expected.abs().max()
    error = (actual - expected).abs()
    assert bool((error <= bound).all()), (
        f"{what}: max error {error.max().item():.3g}, "
        f"max error / bound {(error / bound.clamp_min(1e-300)).max().item():.3g}")


def upstream_like(loss, generator):
    """A non-trivial grad_output: a scalar, or one value per sample for "none"."""
    if loss.dim() == 0:
        return torch.tensor(0.625, dtype=loss.dtype)
    return torch.randn(loss.shape, generator=generator, dtype=torch.float64).to(loss.dtype)


def compare_with_torch(ours, theirs, tensors, differentiable, dtype, generator):
    """Run ``ours(*tensors)`` and ``theirs(*tensors64)`` (float tensors upcast); compare
    the loss and the gradients w.r.t. the tensors at the ``differentiable`` positions."""
    inputs = [t.detach().clone().requires_grad_(i in differentiable) if t is not None
              else None for i, t in enumerate(tensors)]
    inputs64 = [t.detach().double().requires_grad_(i in differentiable)
                if t is not None and t.dtype.is_floating_point
                else t for i, t in enumerate(tensors)]
    loss = ours(*inputs)
    expected = theirs(*inputs64)
    assert_close(loss, expected, dtype, LOSS_TOLERANCE, "loss")
    upstream = upstream_like(loss, generator)
    grads = torch.autograd.grad(loss, [inputs[i] for i in differentiable], upstream)
    expected_grads = torch.autograd.grad(expected, [inputs64[i] for i in differentiable],
                                         upstream.double())
    for i, grad, expected_grad in zip(differentiable, grads, expected_grads):
        assert_close(grad, expected_grad, tensors[i].dtype, GRAD_TOLERANCE, f"grad {i}")


@pytest.fixture
def generator(request):
    import zlib

    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


# ----------------------------------------------------------------------------------------
# cross_entropy
# ----------------------------------------------------------------------------------------

N_CLASSES = 7
CE_SHAPES = {"1d": (N_CLASSES,), "2d": (16, N_CLASSES), "3d": (4, N_CLASSES, 3),
             "4d": (2, N_CLASSES, 3, 2)}
CE_OPTIONS = {
    "plain": {},
    "weight": {"weight": True},
    "ignore": {"ignore": -100},
    "ignore=2": {"ignore": 2},
    "smoothing": {"label_smoothing": 0.15},
    "all": {"weight": True, "ignore": 3, "label_smoothing": 0.2},
    "soft": {"soft": True},
    "soft-all": {"soft": True, "weight": True, "label_smoothing": 0.1},
}


def ce_inputs(shape, params, dtype, generator):
    logits = (3 * torch.randn(shape, generator=generator, dtype=torch.float64)).to(dtype)
    target_shape = shape[:1] + shape[2:] if len(shape) >= 2 else ()
    if params.get("soft"):
        target = torch.rand(shape, generator=generator, dtype=torch.float64)
        target = (target / target.sum(dim=1 if len(shape) >= 2 else 0, keepdim=True)).to(dtype)
    else:
        target = torch.randint(0, N_CLASSES, target_shape, generator=generator)
        if "ignore" in params and target.dim():
            ignored = torch.rand(target_shape, generator=generator) < 0.3
            ignored.view(-1)[0] = True
            target[ignored] = params["ignore"]
    options = {"label_smoothing": params.get("label_smoothing", 0.0)}
    if "ignore" in params:
        options["ignore_index"] = params["ignore"]
    weight = None
    if params.get("weight"):
        weight = (0.25 + 1.75 * torch.rand(N_CLASSES, generator=generator,
                                           dtype=torch.float64)).to(dtype)
    return logits, target, weight, options


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("option_id", CE_OPTIONS)
@pytest.mark.parametrize("shape_id", CE_SHAPES)
def test_cross_entropy_matches_torch(shape_id, option_id, reduction, dtype, generator):
    logits, target, weight, options = ce_inputs(CE_SHAPES[shape_id], CE_OPTIONS[option_id],
                                                dtype, generator)
    options["reduction"] = reduction

    def ours(logits, target, weight):
        return FL.cross_entropy(logits, target, weight, **options)

    def theirs(logits, target, weight):
        return F.cross_entropy(logits, target, weight, **options)

    compare_with_torch(ours, theirs, [logits, target, weight], [0], dtype, generator)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("option_id", ["plain", "all", "soft-all"])
def test_cross_entropy_module_matches_torch(option_id, dtype, generator):
    logits, target, weight, options = ce_inputs(CE_SHAPES["3d"], CE_OPTIONS[option_id], dtype,
                                                generator)
    ours = FL.CrossEntropyLoss(weight=weight, **options)
    theirs = torch.nn.CrossEntropyLoss(
        weight=None if weight is None else weight.double(), **options)
    assert isinstance(ours, torch.nn.CrossEntropyLoss)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    compare_with_torch(ours, theirs, [logits, target], [0], dtype, generator)


def test_cross_entropy_strided_layouts(generator):
    """A transposed (N, C) input, a non-contiguous 3-d input and a channels-last 4-d one."""
    base = torch.randn(N_CLASSES, 12, generator=generator, dtype=torch.float64)
    target = torch.randint(0, N_CLASSES, (12,), generator=generator)
    compare_with_torch(FL.cross_entropy, F.cross_entropy, [base.t(), target], [0],
                       torch.float64, generator)
    wide = torch.randn(4, N_CLASSES, 6, generator=generator, dtype=torch.float64)[:, :, ::2]
    target = torch.randint(0, N_CLASSES, (4, 3), generator=generator)
    compare_with_torch(FL.cross_entropy, F.cross_entropy, [wide, target], [0], torch.float64,
                       generator)
    channels_last = torch.randn(2, N_CLASSES, 3, 5, generator=generator).to(
        memory_format=torch.channels_last)
    target = torch.randint(0, N_CLASSES, (2, 3, 5), generator=generator)
    compare_with_torch(FL.cross_entropy, F.cross_entropy, [channels_last, target], [0],
                       torch.float32, generator)


def test_cross_entropy_extras_match_fastloss(generator):
    """z_loss and softcap (not in torch) give the NumPy API's loss and gradient."""
    logits = torch.randn(6, 9, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 9, (6, 4), generator=generator)
    options = {"z_loss": 1e-2, "softcap": 3.0, "label_smoothing": 0.1}
    loss = FL.cross_entropy(logits, target, **options)
    loss.backward()
    logits_last = logits.detach().movedim(1, -1).numpy()
    expected, grad = fastloss.cross_entropy_value_and_grad(logits_last, target.numpy(),
                                                           **options)
    assert loss.item() == pytest.approx(expected, rel=1e-14)
    np.testing.assert_allclose(logits.grad.movedim(1, -1).numpy(), grad, rtol=1e-13,
                               atol=1e-16)
    module = FL.CrossEntropyLoss(**options, num_threads=1)
    assert module(logits, target).item() == pytest.approx(expected, rel=1e-14)


def test_cross_entropy_saves_only_lse(generator):
    """With grad_in_forward=False the forward keeps the input itself (no copy) and N
    float64 lse values: no N x C buffer lives until the backward."""
    logits = torch.randn(32, 50, generator=generator, requires_grad=True)
    target = torch.randint(0, 50, (32,), generator=generator)
    loss = FL.cross_entropy(logits, target, grad_in_forward=False)
    saved = [t for t in loss.grad_fn.saved_tensors if t is not None]
    assert [t.data_ptr() for t in saved] == [logits.data_ptr(), target.data_ptr()]
    assert loss.grad_fn.lse.shape == (32,) and loss.grad_fn.lse.dtype == np.float64
    loss.backward()
    torch.testing.assert_close(logits.grad, torch.func.grad(F.cross_entropy)(logits, target))


def test_cross_entropy_retain_graph_and_accumulation(generator):
    logits = torch.randn(8, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 5, (8,), generator=generator)
    loss = FL.cross_entropy(logits, target)
    loss.backward(retain_graph=True)
    first = logits.grad.clone()
    loss.backward()
    torch.testing.assert_close(logits.grad, 2 * first)


def test_cross_entropy_without_grad(generator):
    logits = torch.randn(8, 5, generator=generator)
    target = torch.randint(0, 5, (8,), generator=generator)
    loss = FL.cross_entropy(logits, target)
    assert loss.grad_fn is None and not loss.requires_grad
    with torch.no_grad():
        trained = logits.clone().requires_grad_(True)
        assert FL.cross_entropy(trained, target).grad_fn is None
    # a soft target that requires grad is fine when no graph is recorded
    soft = torch.softmax(torch.randn(8, 5, generator=generator), 1).requires_grad_(True)
    with torch.no_grad():
        torch.testing.assert_close(FL.cross_entropy(logits, soft), F.cross_entropy(logits, soft))


@pytest.mark.parametrize("shape", [(12, 9), (3, 9, 4)], ids=["2d", "3d"])
def test_cross_entropy_inplace_backward(shape, generator):
    """The gradient overwrites the logits (2-d), or the contiguous copy the adapter made of
    them (3-d: the logits stay); values as without it."""
    hidden = torch.randn(shape, generator=generator, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 9, shape[:1] + shape[2:], generator=generator)
    expected_loss = F.cross_entropy(hidden * 2, target, label_smoothing=0.1)
    (expected,) = torch.autograd.grad(expected_loss, hidden)
    logits = hidden * 2  # a non-leaf, as a layer's output
    loss = FL.cross_entropy(logits, target, label_smoothing=0.1, inplace_backward=True)
    (grad,) = torch.autograd.grad(loss, hidden)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-13, atol=0)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-15)
    if len(shape) == 2:
        torch.testing.assert_close(logits.detach(), expected / 2)  # the logits hold the grad
    else:
        torch.testing.assert_close(logits.detach(), hidden.detach() * 2)


def test_cross_entropy_inplace_backward_guards(generator):
    leaf = torch.randn(6, 5, generator=generator, requires_grad=True)
    target = torch.randint(0, 5, (6,), generator=generator)
    with pytest.raises(ValueError, match="inplace_backward.*leaf"):
        FL.cross_entropy(leaf, target, inplace_backward=True)
    # another node that saved the logits, and whose backward runs after ours, notices
    # that they were overwritten
    logits = leaf * 1.5
    penalty = (logits ** 2).sum()
    total = penalty + FL.cross_entropy(logits, target, inplace_backward=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        total.backward()
    module = FL.CrossEntropyLoss(inplace_backward=True)
    module(leaf * 1.0, target).backward()
    assert leaf.grad is not None


@pytest.mark.parametrize("view", [lambda t: t[:], lambda t: t.view(6, 5),
                                  lambda t: t.view_as(t)[2:], lambda t: t.t().t(),
                                  lambda t: t.view(30).view(6, 5)])
def test_cross_entropy_inplace_backward_refuses_a_view_of_a_leaf(generator, view):
    # the gradient would be written over the leaf's values (a parameter, in training),
    # silently: torch refuses an in-place operation there too
    leaf = torch.randn(6, 5, generator=generator, requires_grad=True)
    before = leaf.detach().clone()
    target = torch.randint(0, 5, (6,), generator=generator)
    logits = view(leaf)
    with pytest.raises(ValueError, match="inplace_backward.*the leaf tensor it is a view of"):
        FL.cross_entropy(logits, target[:logits.shape[0]], inplace_backward=True)
    assert torch.equal(leaf.detach(), before)
    # a view of a layer's output is fine: its memory is not the leaf's
    output = leaf * 1.0
    loss = FL.cross_entropy(view(output), target[:logits.shape[0]], inplace_backward=True)
    loss.backward()
    assert torch.equal(leaf.detach(), before)
    check = leaf.detach().clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(view(check * 1.0), target[:logits.shape[0]]).backward()
    torch.testing.assert_close(leaf.grad, check.grad, rtol=1e-6, atol=1e-7)


def test_cross_entropy_legacy_reduction_arguments(generator):
    logits = torch.randn(8, 5, generator=generator, dtype=torch.float64)
    target = torch.randint(0, 5, (8,), generator=generator)
    for size_average, reduce in [(False, None), (None, False), (True, True)]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = F.cross_entropy(logits, target, size_average=size_average,
                                       reduce=reduce)
        with pytest.warns(UserWarning, match="reduction="):
            loss = FL.cross_entropy(logits, target, size_average=size_average, reduce=reduce)
        torch.testing.assert_close(loss, expected)


def test_cross_entropy_empty_batch():
    logits = torch.zeros(0, 5, requires_grad=True)
    target = torch.zeros(0, dtype=torch.int64)
    loss = FL.cross_entropy(logits, target)
    assert torch.isnan(loss) and torch.isnan(F.cross_entropy(logits, target))
    loss.backward()
    assert logits.grad.shape == (0, 5)


# ----------------------------------------------------------------------------------------
# Regression and binary losses
# ----------------------------------------------------------------------------------------

# id -> (ours, torch's, keyword options, uses weight, target is a probability)
ELEMENTWISE = {
    "mse": (FL.mse_loss, F.mse_loss, {}, True, False),
    "l1": (FL.l1_loss, F.l1_loss, {}, True, False),
    "huber": (FL.huber_loss, F.huber_loss, {}, True, False),
    "huber-delta=0.4": (FL.huber_loss, F.huber_loss, {"delta": 0.4}, True, False),
    "smooth_l1": (FL.smooth_l1_loss, F.smooth_l1_loss, {}, False, False),
    "smooth_l1-beta=0.3": (FL.smooth_l1_loss, F.smooth_l1_loss, {"beta": 0.3}, False, False),
    "smooth_l1-beta=0": (FL.smooth_l1_loss, F.smooth_l1_loss, {"beta": 0.0}, False, False),
    "bce_with_logits": (FL.binary_cross_entropy_with_logits,
                        F.binary_cross_entropy_with_logits, {}, True, True),
}
EW_SHAPES = {"0d": (), "1d": (37,), "2d": (12, 9), "3d": (3, 5, 7)}


def ew_inputs(shape, probability_target, dtype, generator):
    pred = (2 * torch.randn(shape, generator=generator, dtype=torch.float64)).to(dtype)
    if probability_target:
        target = torch.rand(shape, generator=generator, dtype=torch.float64).to(dtype)
    else:
        target = torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)
    weight = torch.rand(shape, generator=generator, dtype=torch.float64).to(dtype) + 0.5
    return pred, target, weight


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape_id", EW_SHAPES)
@pytest.mark.parametrize("loss_id, weighted", [
    pytest.param(loss_id, weighted, id=f"{loss_id}-{'weighted' if weighted else 'plain'}")
    for loss_id, (*_, takes_weight, _) in ELEMENTWISE.items()
    for weighted in ((False, True) if takes_weight else (False,))])
def test_elementwise_matches_torch(loss_id, weighted, shape_id, reduction, dtype, generator):
    ours, theirs, options, takes_weight, probability = ELEMENTWISE[loss_id]
    pred, target, weight = ew_inputs(EW_SHAPES[shape_id], probability, dtype, generator)
    options = dict(options, reduction=reduction)
    # the targets of the regression losses are differentiable, as in torch
    differentiable = [0] if probability else [0, 1]
    tensors = [pred, target] + ([weight] if weighted else [])
    keyword = "weight"

    def call(function):
        def run(pred, target, weight=None):
            extra = {keyword: weight} if weight is not None else {}
            return function(pred, target, **options, **extra)
        return run

    compare_with_torch(call(ours), call(theirs), tensors, differentiable, dtype, generator)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_with_logits_pos_weight_matches_torch(reduction, dtype, generator):
    logits, target, weight = ew_inputs((6, 4, 5), True, dtype, generator)
    pos_weight = (0.5 + 2 * torch.rand(5, generator=generator, dtype=torch.float64)).to(dtype)
    row_weight = weight[:, :1, :1].contiguous()  # broadcasts, as torch allows

    def ours(logits, target, weight, pos_weight):
        return FL.binary_cross_entropy_with_logits(logits, target, weight, reduction=reduction,
                                                   pos_weight=pos_weight)

    def theirs(logits, target, weight, pos_weight):
        return F.binary_cross_entropy_with_logits(logits, target, weight, reduction=reduction,
                                                  pos_weight=pos_weight)

    compare_with_torch(ours, theirs, [logits, target, row_weight, pos_weight], [0], dtype,
                       generator)
    module = FL.BCEWithLogitsLoss(weight=row_weight, pos_weight=pos_weight, reduction=reduction)
    expected = torch.nn.BCEWithLogitsLoss(weight=row_weight.double(),
                                          pos_weight=pos_weight.double(), reduction=reduction)
    assert isinstance(module, torch.nn.BCEWithLogitsLoss)
    assert module.state_dict().keys() == expected.state_dict().keys()
    compare_with_torch(module, expected, [logits, target], [0], dtype, generator)


@pytest.mark.parametrize("loss_id", ["mse", "l1", "huber-delta=0.4", "smooth_l1-beta=0.3"])
def test_regression_broadcast_target_gradients(loss_id, generator):
    """Target and input of different shapes broadcast (with torch's warning), and both
    gradients sum back to each shape; mixed float32/float64 promote as torch."""
    ours, theirs, options, _, _ = ELEMENTWISE[loss_id]
    pred = torch.randn(4, 1, 3, generator=generator, dtype=torch.float64)
    target = torch.randn(5, 1, generator=generator, dtype=torch.float64)
    with pytest.warns(UserWarning, match="target size"):
        compare_with_torch(lambda p, t: ours(p, t, **options), lambda p, t: theirs(p, t,
                           **options), [pred, target], [0, 1], torch.float64, generator)
    pred32 = torch.randn(6, 3, generator=generator)
    target64 = torch.randn(6, 3, generator=generator, dtype=torch.float64,
                           requires_grad=True)
    pred32.requires_grad_(True)
    loss = ours(pred32, target64, **options)
    # torch promotes, but for huber_loss, whose loss keeps the input's dtype
    assert loss.dtype == theirs(pred32.detach(), target64.detach(), **options).dtype
    loss.backward()
    assert pred32.grad.dtype == torch.float32 and target64.grad.dtype == torch.float64


@pytest.mark.parametrize("module_id", ["MSELoss", "L1Loss", "HuberLoss", "SmoothL1Loss"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_regression_modules_match_torch(module_id, reduction, generator):
    extra = {"HuberLoss": {"delta": 0.7}, "SmoothL1Loss": {"beta": 0.4}}.get(module_id, {})
    ours = getattr(FL, module_id)(reduction=reduction, **extra)
    theirs = getattr(torch.nn, module_id)(reduction=reduction, **extra)
    assert isinstance(ours, type(theirs)) and repr(ours) == repr(theirs)
    pred, target, _ = ew_inputs((5, 6), False, torch.float32, generator)
    compare_with_torch(ours, theirs, [pred, target], [0, 1], torch.float32, generator)


# ----------------------------------------------------------------------------------------
# Embedding losses: triplet margin, contrastive, contrastive_pairwise, info_nce
# ----------------------------------------------------------------------------------------

def torch_contrastive(x1, x2, label, *, margin=1.0, metric="euclidean", reduction="mean"):
    """DESIGN.md's contrastive loss of row pairs in torch ops (F.pairwise_distance)."""
    if metric == "cosine":
        d = 1 - (F.normalize(x1) * F.normalize(x2)).sum(dim=1)
    else:
        d = F.pairwise_distance(x1, x2)
        d = d ** 2 if metric == "sqeuclidean" else d
    loss = 0.5 * (label * d ** 2 + (1 - label) * torch.relu(margin - d) ** 2)
    return {"mean": loss.mean, "sum": loss.sum, "none": lambda: loss}[reduction]()


def torch_contrastive_pairwise(x, labels, *, pos_margin=0.0, neg_margin=1.0,
                               metric="euclidean", reduction="mean"):
    """DESIGN.md's all-pairs contrastive loss in torch ops: cdist (no matmul shortcut, so
    float64 is exact enough to judge float64) over the pairs i < j."""
    n = x.shape[0]
    if metric == "cosine":
        unit = F.normalize(x)
        distance = 1 - unit @ unit.T
    else:
        distance = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
        distance = distance ** 2 if metric == "sqeuclidean" else distance
    i, j = torch.triu_indices(n, n, 1)
    d = distance[i, j]
    same = (labels[i] == labels[j]).to(x.dtype)
    loss = same * torch.relu(d - pos_margin) ** 2 + (1 - same) * torch.relu(neg_margin - d) ** 2
    if reduction == "none":
        matrix = torch.zeros(n, n, dtype=x.dtype)
        matrix = matrix.index_put((i, j), loss).index_put((j, i), loss)
        return matrix
    return loss.mean() if reduction == "mean" else loss.sum()


def torch_info_nce(query, key, *, temperature=0.05, symmetric=False, reduction="mean"):
    """DESIGN.md's InfoNCE in torch ops: normalised rows, cross-entropy with target i."""
    logits = F.normalize(query) @ F.normalize(key).T / temperature
    target = torch.arange(query.shape[0])
    loss = F.cross_entropy(logits, target, reduction=reduction)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.T, target, reduction=reduction))
    return loss


def embeddings(shape, dtype, generator):
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("options", [{}, {"swap": True}, {"p": 1.5, "margin": 0.5},
                                     {"p": 3.0, "eps": 0.0, "swap": True}],
                         ids=["plain", "swap", "p=1.5", "p=3-eps=0-swap"])
def test_triplet_margin_matches_torch(options, reduction, dtype, generator):
    tensors = [embeddings((24, 10), dtype, generator) for _ in range(3)]
    compare_with_torch(
        lambda a, p, n: FL.triplet_margin_loss(a, p, n, reduction=reduction, **options),
        lambda a, p, n: F.triplet_margin_loss(a, p, n, reduction=reduction, **options),
        tensors, [0, 1, 2], dtype, generator)
    module = FL.TripletMarginLoss(reduction=reduction, **options)
    assert isinstance(module, torch.nn.TripletMarginLoss)
    compare_with_torch(module, torch.nn.TripletMarginLoss(reduction=reduction, **options),
                       tensors, [0, 1, 2], dtype, generator)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_triplet_margin_single_triplet(reduction, generator):
    tensors = [embeddings((6,), torch.float64, generator) for _ in range(3)]
    compare_with_torch(
        lambda a, p, n: FL.triplet_margin_loss(a, p, n, margin=3.0, reduction=reduction),
        lambda a, p, n: F.triplet_margin_loss(a, p, n, margin=3.0, reduction=reduction),
        tensors, [0, 1, 2], torch.float64, generator)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
def test_contrastive_matches_torch(metric, reduction, dtype, generator):
    x1, x2 = embeddings((20, 6), dtype, generator), embeddings((20, 6), dtype, generator)
    label = (torch.rand(20, generator=generator) < 0.5).to(dtype)
    options = {"margin": 2.0 if metric != "cosine" else 0.8, "metric": metric,
               "reduction": reduction}
    compare_with_torch(lambda a, b, y: FL.contrastive(a, b, y, **options),
                       lambda a, b, y: torch_contrastive(a, b, y, **options),
                       [x1, x2, label], [0, 1], dtype, generator)
    module = FL.ContrastiveLoss(**options)
    compare_with_torch(module, lambda a, b, y: torch_contrastive(a, b, y, **options),
                       [x1, x2, label], [0, 1], dtype, generator)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
def test_contrastive_pairwise_matches_torch(metric, reduction, dtype, generator):
    x = embeddings((30, 8), dtype, generator)
    labels = torch.randint(0, 4, (30,), generator=generator)
    margins = {"euclidean": (0.5, 4.0), "sqeuclidean": (4.0, 16.0), "cosine": (0.1, 0.9)}
    pos_margin, neg_margin = margins[metric]
    options = {"pos_margin": pos_margin, "neg_margin": neg_margin, "metric": metric,
               "reduction": reduction}
    compare_with_torch(lambda e, y: FL.contrastive_pairwise(e, y, **options),
                       lambda e, y: torch_contrastive_pairwise(e, y, **options),
                       [x, labels], [0], dtype, generator)
    module = FL.ContrastivePairwiseLoss(**options)
    compare_with_torch(module, lambda e, y: torch_contrastive_pairwise(e, y, **options),
                       [x, labels], [0], dtype, generator)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("symmetric, key_rows", [(False, 16), (False, 40), (True, 16)],
                         ids=["plain", "extra-negatives", "symmetric"])
def test_info_nce_matches_torch(symmetric, key_rows, reduction, dtype, generator):
    query, key = embeddings((16, 12), dtype, generator), embeddings((key_rows, 12), dtype,
                                                                     generator)
    options = {"temperature": 0.07, "symmetric": symmetric, "reduction": reduction}
    compare_with_torch(lambda q, k: FL.info_nce(q, k, **options),
                       lambda q, k: torch_info_nce(q, k, **options),
                       [query, key], [0, 1], dtype, generator)
    compare_with_torch(FL.InfoNCELoss(**options), lambda q, k: torch_info_nce(q, k, **options),
                       [query, key], [0, 1], dtype, generator)


def test_embedding_losses_mixed_dtypes_and_one_input_differentiable(generator):
    query = embeddings((8, 5), torch.float32, generator).requires_grad_(True)
    key = embeddings((8, 5), torch.float64, generator)
    loss = FL.info_nce(query, key)
    assert loss.dtype == torch.float64
    loss.backward()
    assert query.grad.dtype == torch.float32 and key.grad is None
    expected = torch_info_nce(query.detach().double().requires_grad_(True), key)
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_embedding_losses_retain_graph(reduction, generator):
    """The forward's fused gradients serve the first backward; a second one recomputes."""
    x = embeddings((12, 4), torch.float64, generator).requires_grad_(True)
    labels = torch.randint(0, 3, (12,), generator=generator)
    loss = FL.contrastive_pairwise(x, labels, neg_margin=3.0, reduction=reduction)
    total = loss if reduction == "mean" else loss.sum()
    total.backward(retain_graph=True)
    first = x.grad.clone()
    total.backward()
    torch.testing.assert_close(x.grad, 2 * first, rtol=1e-14, atol=0)


# ----------------------------------------------------------------------------------------
# gradcheck (float64, central differences)
# ----------------------------------------------------------------------------------------

def gradcheck(function, *inputs):
    assert torch.autograd.gradcheck(function, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("option_id", ["plain", "all", "soft-all"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_cross_entropy(option_id, reduction, generator):
    logits, target, weight, options = ce_inputs((3, N_CLASSES, 2), CE_OPTIONS[option_id],
                                                torch.float64, generator)
    gradcheck(lambda x: FL.cross_entropy(x, target, weight, reduction=reduction,
                                         z_loss=1e-2, softcap=4.0, **options),
              logits.requires_grad_(True))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss_id", ELEMENTWISE)
def test_gradcheck_elementwise(loss_id, reduction, generator):
    ours, _, options, takes_weight, probability = ELEMENTWISE[loss_id]
    pred, target, weight = ew_inputs((4, 5), probability, torch.float64, generator)
    extra = {"weight": weight} if takes_weight else {}
    if probability:
        pos_weight = torch.rand(5, generator=generator, dtype=torch.float64) + 0.5
        gradcheck(lambda x: ours(x, target, reduction=reduction, pos_weight=pos_weight,
                                 **extra), pred.requires_grad_(True))
    else:
        # input and target both differentiable, target broadcast along the first axis
        gradcheck(lambda x, t: ours(x, t.expand(4, 5), reduction=reduction, **options,
                                    **extra),
                  pred.requires_grad_(True), target[:1].clone().requires_grad_(True))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_embedding_losses(reduction, generator):
    a, p, n = (embeddings((5, 4), torch.float64, generator).requires_grad_(True)
               for _ in range(3))
    gradcheck(lambda a, p, n: FL.triplet_margin_loss(a, p, n, margin=2.0, p=1.5, swap=True,
                                                     reduction=reduction), a, p, n)
    label = (torch.rand(5, generator=generator) < 0.5).double()
    gradcheck(lambda a, b: FL.contrastive(a, b, label, margin=3.0, reduction=reduction), a, p)
    labels = torch.tensor([0, 1, 0, 2, 1])
    for metric in ("euclidean", "sqeuclidean", "cosine"):
        gradcheck(lambda e: FL.contrastive_pairwise(e, labels, pos_margin=0.1, neg_margin=2.5,
                                                    metric=metric, reduction=reduction), a)
    key = embeddings((7, 4), torch.float64, generator).requires_grad_(True)
    gradcheck(lambda q, k: FL.info_nce(q, k, temperature=0.2, reduction=reduction), a, key)
    gradcheck(lambda q, k: FL.info_nce(q, k, temperature=0.2, symmetric=True,
                                       reduction=reduction), a, p)


# ----------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------

def test_errors_name_the_argument():
    logits = torch.randn(4, 5)
    target = torch.tensor([0, 1, 2, 3])
    # (cross_entropy takes bfloat16 and float16: tests/test_half.py)
    with pytest.raises(TypeError, match="input.*float32, float64, bfloat16 or float16.*int32"):
        FL.cross_entropy(logits.int(), target)
    with pytest.raises(TypeError, match="input.*bfloat16 or float16.*complex64"):
        FL.mse_loss(logits.to(torch.complex64), logits)
    with pytest.raises(TypeError, match="input.*int64"):
        FL.l1_loss(target, target)
    with pytest.raises(TypeError, match="input: expected a torch.Tensor, got ndarray"):
        FL.cross_entropy(logits.numpy(), target)
    with pytest.raises(TypeError, match="target.*class indices.*bool"):
        FL.cross_entropy(logits, target > 1)
    with pytest.raises(TypeError, match="weight.*float32 or float64"):
        FL.cross_entropy(logits, target, weight=torch.ones(5, dtype=torch.int64))
    with pytest.raises(ValueError, match="input.*CPU.*meta"):
        FL.cross_entropy(logits.to("meta"), target)
    with pytest.raises(ValueError, match="target.*CPU.*meta"):
        FL.huber_loss(logits, logits.to("meta"))
    with pytest.raises(ValueError, match="target: value 9 at position"):
        FL.cross_entropy(logits, torch.tensor([0, 1, 2, 9]))
    with pytest.raises(ValueError, match="reduction"):
        FL.cross_entropy(logits, target, reduction="avg")
    with pytest.raises(ValueError, match="delta"):
        FL.huber_loss(logits, logits, delta=0.0)
    with pytest.raises(ValueError, match="beta"):
        FL.smooth_l1_loss(logits, logits, beta=-1.0)
    with pytest.raises(ValueError, match="target.*size"):
        FL.binary_cross_entropy_with_logits(logits, torch.rand(4, 1))
    with pytest.raises(ValueError, match="weight.*size"):
        FL.mse_loss(logits, logits, weight=torch.ones(5))
    with pytest.raises(ValueError, match="ignore_index"):
        FL.cross_entropy(logits, torch.softmax(logits, 1), ignore_index=1)


_X = torch.zeros(4, 5)
_CLASSES = torch.tensor([0, 1, 2, 3])
_OUT_OF_RANGE = torch.tensor([0, 1, 2, 9])
NUMPY_LAYER_ERRORS = [
    # (the NumPy layer's checks, under the adapter: function, call, type, message start)
    ("cross_entropy", lambda: FL.cross_entropy(_X, _OUT_OF_RANGE), ValueError,
     "target: value 9 at position"),
    ("cross_entropy", lambda: FL.cross_entropy(_X, _CLASSES, ignore_index=1.5), TypeError,
     "ignore_index: expected an integer"),
    ("cross_entropy", lambda: FL.cross_entropy(_X, _CLASSES, label_smoothing=2.0),
     ValueError, "label_smoothing:"),
    ("mse_loss", lambda: FL.mse_loss(_X, torch.zeros(3, 5)), ValueError,
     "target: shape (3, 5) does not broadcast with input's shape (4, 5)"),
    ("huber_loss", lambda: FL.huber_loss(_X, _X, delta=-1.0), ValueError, "delta:"),
    ("binary_cross_entropy_with_logits",
     lambda: FL.binary_cross_entropy_with_logits(_X, _X, pos_weight=torch.ones(3)),
     ValueError, "pos_weight: shape (3,) does not broadcast to the input's shape"),
    ("margin_ranking_loss",
     lambda: FL.margin_ranking_loss(torch.zeros(4), torch.zeros(3), torch.ones(4)),
     ValueError, "input2: shape (3,) does not broadcast with input1's shape (4,)"),
    ("kl_div", lambda: FL.kl_div(_X, _X, reduction="avg"), ValueError, "reduction:"),
    ("gaussian_nll_loss", lambda: FL.gaussian_nll_loss(_X, _X, -torch.ones(4, 5)),
     ValueError, "var: has negative entries"),
    ("generalized_box_iou_loss",
     lambda: FL.generalized_box_iou_loss(torch.zeros(4, 3), torch.zeros(4, 3)), ValueError,
     "boxes1: expected shape (..., 4)"),
    ("jsd", lambda: FL.jsd(_X, _X, beta=2.0), ValueError, "beta:"),
    ("distill_kl", lambda: FL.distill_kl(_X, _X, temperature=0.0), ValueError,
     "temperature:"),
    ("token_log_probs", lambda: FL.token_log_probs(_X, _OUT_OF_RANGE), ValueError,
     "target: value 9 at position"),
    ("dpo", lambda: FL.dpo(*[torch.zeros(4)] * 4, loss_type="bogus"), ValueError,
     "loss_type:"),
    ("bradley_terry", lambda: FL.bradley_terry(torch.zeros(4), torch.zeros(4),
                                               reduction="avg"), ValueError, "reduction:"),
    ("info_nce", lambda: FL.info_nce(_X, _X, temperature=0.0), ValueError, "temperature:"),
    ("contrastive", lambda: FL.contrastive(_X, _X, torch.ones(4), margin=-1.0), ValueError,
     "margin:"),
    ("linear_cross_entropy",
     lambda: FL.linear_cross_entropy(_X, torch.zeros(7, 5), _OUT_OF_RANGE), ValueError,
     "target: value 9 at position"),
    ("linear_token_log_probs",
     lambda: FL.linear_token_log_probs(_X, torch.zeros(7, 5), _OUT_OF_RANGE), ValueError,
     "target: value 9 at position"),
    ("sequence_log_probs", lambda: FL.sequence_log_probs(torch.zeros(4, 3), torch.ones(4, 2)),
     ValueError, "mask: expected the shape of token_log_probs"),
    ("MSELoss", lambda: FL.MSELoss()(_X, torch.zeros(3, 5)), ValueError,
     "target: shape (3, 5)"),
    ("CrossEntropyLoss", lambda: FL.CrossEntropyLoss(reduction="avg")(_X, _CLASSES),
     ValueError, "reduction:"),
    ("LinearCrossEntropyLoss", lambda: FL.LinearCrossEntropyLoss(5, 7)(_X, _OUT_OF_RANGE),
     ValueError, "target: value 9 at position"),
    ("LinearTokenLogProbs", lambda: FL.LinearTokenLogProbs(5, 7)(_X, _OUT_OF_RANGE),
     ValueError, "target: value 9 at position"),
    # the NumPy layer's names for the linear form's arguments, as torch's
    ("linear_cross_entropy", lambda: FL.linear_cross_entropy(_X, torch.zeros(7, 5), _CLASSES[:3]),
     ValueError, "target: expected class indices of shape (4,) (input's batch shape)"),
    ("linear_cross_entropy",
     lambda: FL.linear_cross_entropy(_X, torch.zeros(7, 5), _CLASSES, weight=torch.ones(3)),
     ValueError, "weight: expected shape (7,) (the V of linear_weight)"),
]


@pytest.mark.parametrize("name, call, error, start", NUMPY_LAYER_ERRORS,
                         ids=[f"{case[0]}-{case[3].split(':')[0]}"
                              for case in NUMPY_LAYER_ERRORS])
def test_numpy_layer_errors_carry_the_function_name(name, call, error, start):
    """docs/errors.rst: the adapter's messages start with the function's name, then the
    argument's, as torch names it. The NumPy layer's own checks (options, shapes, class
    indices) reached the user without either (session 34's hunt; `pred`, `x1`, `logits'`
    for torch's `input`, `input1`, `input's`)."""
    function = {"MSELoss": "mse_loss", "CrossEntropyLoss": "cross_entropy",
                "LinearCrossEntropyLoss": "linear_cross_entropy",
                "LinearTokenLogProbs": "linear_token_log_probs"}.get(name, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (torch's broadcasting warning for mse_loss)
        with pytest.raises(error) as raised:
            call()
    assert type(raised.value) is error
    assert str(raised.value).startswith(f"fastloss.torch.{function}: {start}"), \
        str(raised.value)


def test_embedding_loss_errors(generator):
    x = torch.randn(6, 4)
    with pytest.raises(TypeError, match="labels: expected an integer tensor"):
        FL.contrastive_pairwise(x, torch.zeros(6))
    with pytest.raises(NotImplementedError, match="label"):
        FL.contrastive(x.requires_grad_(True), x, torch.ones(6, requires_grad=True))
    with pytest.raises(ValueError, match="same number of dimensions"):
        FL.triplet_margin_loss(torch.randn(3, 4), torch.randn(3, 4), torch.randn(4))
    with pytest.raises(ValueError, match="margin"):
        FL.triplet_margin_loss(x, x, x, margin=0.0)
    with pytest.raises(TypeError, match="query.*float16.*int32"):  # half: test_half_contrastive
        FL.info_nce(x.int(), x)
    with pytest.raises(ValueError, match="key.*rows"):
        FL.info_nce(x, x[:3])
    with pytest.raises(ValueError, match="metric"):
        FL.contrastive_pairwise(x, torch.zeros(6, dtype=torch.int64), metric="manhattan")


def test_gradients_fastloss_does_not_compute_raise():
    logits = torch.randn(4, 5, requires_grad=True)
    soft = torch.softmax(torch.randn(4, 5), 1)
    with pytest.raises(NotImplementedError, match="weight"):
        FL.cross_entropy(logits, torch.tensor([0, 1, 2, 3]),
                         weight=torch.ones(5, requires_grad=True))
    # bce's weight and pos_weight: torch's own RuntimeError (tests/test_torch_dropin.py)
    with pytest.raises(RuntimeError, match="not differentiable.*'pos_weight'"):
        FL.binary_cross_entropy_with_logits(logits, torch.rand(4, 5),
                                            pos_weight=torch.ones(5, requires_grad=True))
    # NotImplementedError is a RuntimeError, as torch's "not differentiable" errors are
    assert issubclass(NotImplementedError, RuntimeError)
    FL.cross_entropy(logits, soft.detach()).backward()


def test_double_backward_is_refused():
    logits = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    loss = FL.cross_entropy(logits, torch.tensor([0, 1, 2, 3]))
    upstream = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(loss, logits, upstream, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()


def _first_order_cases():
    """(name, function of x giving a loss) for each of the adapter's autograd Functions."""
    torch.manual_seed(0)
    classes = torch.tensor([0, 1, 2, 3])
    other = torch.randn(4, 5, dtype=torch.float64)
    weight = torch.randn(5, 3, dtype=torch.float64)
    return [
        ("cross_entropy", lambda x: FL.cross_entropy(x, classes)),
        ("cross_entropy lse", lambda x: FL.cross_entropy(x, classes, grad_in_forward=False)),
        ("cross_entropy none", lambda x: FL.cross_entropy(x, classes, reduction="none").sum()),
        ("cross_entropy soft", lambda x: FL.cross_entropy(x, other.softmax(1))),
        ("mse_loss", lambda x: FL.mse_loss(x, other)),
        ("mse_loss none", lambda x: FL.mse_loss(x, other, reduction="none").sum()),
        ("triplet_margin_loss", lambda x: FL.triplet_margin_loss(x, other, other.flip(0))),
        ("token_log_probs", lambda x: FL.token_log_probs(x, classes).sum()),
        ("distill_kl", lambda x: FL.distill_kl(x, other)),
        ("linear_cross_entropy", lambda x: FL.linear_cross_entropy(x[:, :3], weight, classes)),
        ("linear_token_log_probs",
         lambda x: FL.linear_token_log_probs(x[:, :3], weight, classes).sum()),
        ("sequence_log_probs",
         lambda x: FL.sequence_log_probs(x, torch.ones(4, 5, dtype=torch.bool)).sum()),
    ]


@pytest.mark.parametrize("name, loss_of", _first_order_cases(), ids=lambda v: v
                         if isinstance(v, str) else "")
def test_second_derivatives_raise_also_when_the_upstream_needs_no_grad(name, loss_of):
    # create_graph=True with the usual upstream (a constant 1): torch's once_differentiable
    # attaches its error only when grad_output requires grad, so the gradient came back
    # as a constant and a second derivative through it silently lost fastloss's term
    # (torch.autograd.functional.hessian gave zeros; loss + x**2 gave 2, torch 2 + 1/n)
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(loss_of(x), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        torch.autograd.grad(grad.sum(), x)
    (grad,) = torch.autograd.grad(loss_of(x) + (x ** 2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        torch.autograd.grad(grad.sum(), x)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        torch.autograd.functional.hessian(loss_of, x.detach())
    # first order under create_graph=True stays as it was
    (first,) = torch.autograd.grad(loss_of(x), x, create_graph=True)
    assert torch.equal(first.detach(), torch.autograd.grad(loss_of(x), x)[0])


def test_a_differentiable_gradient_without_its_logits_is_refused_at_once():
    # the fused cross-entropy keeps no reference to its logits; when they are gone nothing
    # ties the gradient to the graph, so create_graph=True cannot mark it: it raises
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    loss = FL.cross_entropy(x * 2.0, torch.tensor([0, 1, 2, 3]))  # logits freed here
    with pytest.raises(RuntimeError, match="first-order gradients only"):
        torch.autograd.grad(loss, x, create_graph=True)
    loss = FL.cross_entropy(x * 2.0, torch.tensor([0, 1, 2, 3]))
    torch.autograd.grad(loss, x)  # first order: as before


# ----------------------------------------------------------------------------------------
# Zero copy, threads and import hygiene
# ----------------------------------------------------------------------------------------

def test_tensors_and_arrays_share_memory(generator):
    logits = torch.randn(16, 10, generator=generator, requires_grad=True)
    array = FL._class_last(logits)
    assert array.__array_interface__["data"][0] == logits.data_ptr()
    moved = torch.randn(2, 10, 3, generator=generator)
    assert FL._class_last(moved).shape == (2, 3, 10)  # a copy here: the class axis is strided
    pred = torch.randn(100, generator=generator, requires_grad=True)
    assert FL._numpy(pred).__array_interface__["data"][0] == pred.data_ptr()


def test_num_threads_gives_the_same_bits(generator):
    logits = torch.randn(300, 129, generator=generator, requires_grad=True)
    target = torch.randint(0, 129, (300,), generator=generator)
    results = []
    for threads in (1, 2, 3):
        logits.grad = None
        loss = FL.cross_entropy(logits, target, num_threads=threads)
        loss.backward()
        results.append((loss.item(), logits.grad.clone()))
    for loss, grad in results[1:]:
        assert loss == results[0][0] and torch.equal(grad, results[0][1])


def test_import_fastloss_does_not_import_torch():
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(fastloss.__file__)))
    code = ("import sys, fastloss; fastloss.cross_entropy([[0.0, 1.0]], [1]); "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'fastloss.torch' not in sys.modules; "
            "import fastloss.torch; assert 'torch' in sys.modules; "
            "assert fastloss.torch.cross_entropy.__module__ == 'fastloss.torch'")
    env = dict(os.environ, PYTHONPATH=package_parent)
    completed = subprocess.run([sys.executable, "-c", code], env=env, cwd=package_parent,
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr


# ----------------------------------------------------------------------------------------
# The swap: a CPU training loop with torch's loss and with fastloss's
# ----------------------------------------------------------------------------------------

def train(criterion, *, steps=40, seed=0):
    """A small MLP classifier over a sequence (class axis at dim 1, as torch's 3-d
    cross-entropy) trained with SGD + momentum; returns the loss of every step."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(),
                                torch.nn.Linear(64, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    data = torch.Generator().manual_seed(seed + 1)
    features = torch.randn(512, 6, 16, generator=data)
    teacher = torch.randn(16, 10, generator=data)
    labels = (features @ teacher).argmax(dim=-1)  # learnable: a linear teacher
    labels[torch.rand(labels.shape, generator=data) < 0.05] = -100  # some padding
    losses = []
    for step in range(steps):
        batch = slice((step * 64) % 512, (step * 64) % 512 + 64)
        optimizer.zero_grad()
        logits = model(features[batch]).movedim(-1, 1)  # (B, 10, 6)
        loss = criterion(logits, labels[batch])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_training_loop_swap_changes_nothing_but_speed():
    reference_losses = train(torch.nn.CrossEntropyLoss(label_smoothing=0.05))
    fastloss_losses = train(FL.CrossEntropyLoss(label_smoothing=0.05))
    functional_losses = train(lambda x, y: FL.cross_entropy(x, y, label_smoothing=0.05))
    assert fastloss_losses == functional_losses  # module and function: the same bits
    np.testing.assert_allclose(fastloss_losses, reference_losses, rtol=1e-4)
    assert reference_losses[-1] < 0.5 * reference_losses[0]  # it did learn
    assert fastloss_losses[-1] < 0.5 * fastloss_losses[0]


def test_training_loop_regression_swap():
    def run(criterion):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(),
                                    torch.nn.Linear(32, 3))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        data = torch.Generator().manual_seed(1)
        features = torch.randn(256, 8, generator=data)
        targets = torch.sin(features[:, :3]) + 0.1 * torch.randn(256, 3, generator=data)
        losses = []
        for step in range(30):
            optimizer.zero_grad()
            loss = criterion(model(features), targets)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return losses

    for ours, theirs in [(FL.MSELoss(), torch.nn.MSELoss()),
                         (FL.HuberLoss(delta=0.5), torch.nn.HuberLoss(delta=0.5)),
                         (FL.SmoothL1Loss(beta=0.5), torch.nn.SmoothL1Loss(beta=0.5))]:
        np.testing.assert_allclose(run(ours), run(theirs), rtol=1e-4)
