"""fastloss.torch as a drop-in for torch 2.13 (issue 11, item 6, cross-entropy aside):
gradients w.r.t. the targets of mse_loss, l1_loss, huber_loss, smooth_l1_loss and
binary_cross_entropy_with_logits and w.r.t. the weights torch differentiates, torch's
error for those it does not, triplet_margin_loss with every p, broadcasting and N-d
inputs, bce with 0-d logits and pos_weight, and the weighted mean of mse/l1 where the
target broadcasts the input to a larger shape.

Every case is judged against torch evaluated in float64 on the same (upcast) inputs and
against ``fastloss.reference``, under the accuracy contract of DESIGN.md
(``loss_specs.CONTRACT``) for the precision fastloss computes in. torch's own OpInfo
samples are one source of cases; finite differences check the gradients, the
reference's included.
"""
import dataclasses
import functools
import math
import sys
import types
import unittest
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

import fastloss  # noqa: E402
import fastloss.torch as FL  # noqa: E402
from fastloss import reference  # noqa: E402
from loss_specs import CONTRACT, assert_close, assert_close_contract  # noqa: E402

INF = math.inf
REDUCTIONS = ("mean", "sum", "none")
F32, F64 = torch.float32, torch.float64

# torch's name -> (ours, torch's, fastloss.reference's name, the names of its tensors)
LOSSES = {
    "mse_loss": (FL.mse_loss, F.mse_loss, "mse"),
    "l1_loss": (FL.l1_loss, F.l1_loss, "l1"),
    "huber_loss": (FL.huber_loss, F.huber_loss, "huber"),
    "smooth_l1_loss": (FL.smooth_l1_loss, F.smooth_l1_loss, "smooth_l1"),
    "binary_cross_entropy_with_logits": (FL.binary_cross_entropy_with_logits,
                                         F.binary_cross_entropy_with_logits,
                                         "bce_with_logits"),
    "triplet_margin_loss": (FL.triplet_margin_loss, F.triplet_margin_loss, "triplet_margin"),
}
TRIPLET_NAMES = ("anchor", "positive", "negative")


# ----------------------------------------------------------------------------------------
# One case: named tensors and options, run by fastloss, by torch in float64 and by the
# reference, compared under the contract
# ----------------------------------------------------------------------------------------

def compute_dtype(name, tensors):
    """The precision fastloss computes in: float64 when a float input that sets it is
    float64 (pred/target for the elementwise losses, as the NumPy API promotes; any of
    the three triplet inputs), else float32."""
    keys = TRIPLET_NAMES if name == "triplet_margin_loss" else ("input", "target")
    dtypes = [tensors[key].dtype for key in keys if tensors[key].dtype.is_floating_point]
    return F64 if F64 in dtypes else F32


def contract_dtype(result_dtype, computed_in):
    """float32's contract for a result stored or computed in float32, else float64's."""
    return np.float32 if F32 in (result_dtype, computed_in) else np.float64


def upstream_for(loss, generator):
    """A non-trivial grad_output of the loss's dtype: a scalar, or one value per element."""
    if loss.dim() == 0:
        return torch.tensor(0.625, dtype=loss.dtype)
    return torch.randn(loss.shape, generator=generator, dtype=F64).to(loss.dtype)


def call(function, name, tensors, options):
    if name == "triplet_margin_loss":
        return function(*(tensors[key] for key in TRIPLET_NAMES), **options)
    keywords = dict(options)
    for key in ("weight", "pos_weight"):
        if tensors.get(key) is not None:
            keywords[key] = tensors[key]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using a target size")
        return function(tensors["input"], tensors["target"], **keywords)


def reference_result(name, tensors, options, upstream, wanted):
    """fastloss.reference's loss and its gradients w.r.t. the tensors named in ``wanted``
    (torch's argument names), in float64."""
    arrays = {key: tensor.detach().double().numpy() for key, tensor in tensors.items()
              if tensor is not None}
    function = getattr(reference, LOSSES[name][2] + "_value_and_grad")
    upstream = upstream.detach().double().numpy()
    if name == "triplet_margin_loss":
        loss, grads = function(*(arrays[key] for key in TRIPLET_NAMES), upstream, **options)
        return loss, [grads[TRIPLET_NAMES.index(key)] for key in wanted]
    pred_name = "logits" if name == "binary_cross_entropy_with_logits" else "pred"
    wrt = tuple({"input": pred_name}.get(key, key) for key in wanted) or (pred_name,)
    keywords = dict(options, weight=arrays.get("weight"))
    if "pos_weight" in arrays:
        keywords["pos_weight"] = arrays["pos_weight"]
    loss, grads = function(arrays["input"], arrays["target"], upstream, wrt=wrt, **keywords)
    return loss, list(grads[:len(wanted)])


def check_case(name, tensors, options, generator, what="", torch_rounding=0.0):
    """Run loss ``name`` on ``tensors`` (a dict by torch's argument names; their
    requires_grad says which gradients to take) with fastloss and torch; check the loss
    and every gradient against torch in float64 and against the reference.

    ``torch_rounding``: an absolute allowance for torch's own float64 roundings in the
    gradients, where the exact gradient is 0 by cancellation (fastloss and the reference
    give that 0, and are held to it) but torch's formula leaves a few ulps; 0 elsewhere."""
    ours_function, torch_function, _ = LOSSES[name]
    wanted = [key for key, tensor in tensors.items()
              if tensor is not None and tensor.requires_grad]
    ours_inputs = {key: None if tensor is None else tensor.detach().clone().requires_grad_(
        tensor.requires_grad) for key, tensor in tensors.items()}
    torch_inputs = {key: None if tensor is None else (
        tensor.detach().double() if tensor.dtype.is_floating_point else tensor.detach()
    ).requires_grad_(tensor.requires_grad) for key, tensor in tensors.items()}
    loss = call(ours_function, name, ours_inputs, options)
    expected = call(torch_function, name, torch_inputs, options)
    computed_in = compute_dtype(name, tensors)
    # the dtypes torch's own loss and gradients have
    native = call(torch_function, name, {key: None if t is None else t.detach().clone()
                                         .requires_grad_(t.requires_grad)
                                         for key, t in tensors.items()}, options)
    assert loss.dtype == native.dtype, f"{what}: loss dtype {loss.dtype}, torch's {native.dtype}"
    assert loss.shape == native.shape, f"{what}: loss shape {loss.shape}, torch's {native.shape}"
    upstream = upstream_for(loss, generator)
    ref_loss, ref_grads = reference_result(name, tensors, options, upstream, wanted)
    loss_contract = contract_dtype(loss.dtype, computed_in)
    actual = loss.detach().double().numpy()
    assert_close_contract(actual, expected.detach().numpy(), loss_contract, "loss",
                          what=f"{what}: loss vs torch")
    assert_close_contract(actual, ref_loss, loss_contract, "loss",
                          what=f"{what}: loss vs reference")
    if not wanted:
        return
    grads = torch.autograd.grad(loss, [ours_inputs[key] for key in wanted], upstream)
    expected_grads = torch.autograd.grad(
        expected, [torch_inputs[key] for key in wanted], upstream.double(), allow_unused=True)
    for key, grad, expected_grad, ref_grad in zip(wanted, grads, expected_grads, ref_grads):
        assert grad.dtype == tensors[key].dtype and grad.shape == tensors[key].shape, (
            f"{what}: grad {key}: {grad.dtype} {tuple(grad.shape)}, expected "
            f"{tensors[key].dtype} {tuple(tensors[key].shape)}")
        grad_contract = contract_dtype(grad.dtype, computed_in)
        if expected_grad is None:  # torch's graph has no path (triplet with p = 0): zeros
            expected_grad = torch.zeros_like(grad, dtype=F64)
        actual = grad.detach().double().numpy()
        contract = CONTRACT[(np.dtype(grad_contract), "grad")]
        assert_close(actual, expected_grad.numpy(),
                     dataclasses.replace(contract, atol=torch_rounding),
                     what=f"{what}: grad {key} vs torch")
        assert_close_contract(actual, ref_grad, grad_contract, "grad",
                              what=f"{what}: grad {key} vs reference")


@pytest.fixture
def generator(request):
    import zlib

    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


def randn(shape, dtype, generator, scale=1.0, requires_grad=False):
    tensor = (scale * torch.randn(shape, generator=generator, dtype=F64)).to(dtype)
    return tensor.requires_grad_(requires_grad)


def rand(shape, dtype, generator, low=0.0, high=1.0, requires_grad=False):
    tensor = (low + (high - low) * torch.rand(shape, generator=generator, dtype=F64)).to(dtype)
    return tensor.requires_grad_(requires_grad)


# ----------------------------------------------------------------------------------------
# torch's OpInfo samples
# ----------------------------------------------------------------------------------------

OPINFO_NAMES = {f"nn.functional.{name}": name for name in LOSSES}


@functools.lru_cache(maxsize=None)
def opinfos():
    """torch's OpInfo entries for our losses, by torch's function name.

    Their module imports expecttest, a test dependency of torch that provides only the
    base of torch's TestCase; where it is not installed a stand-in with unittest's
    TestCase lets the import through (nothing here uses it)."""
    try:
        import expecttest  # noqa: F401
    except ImportError:
        stand_in = types.ModuleType("expecttest")
        stand_in.TestCase = unittest.TestCase
        sys.modules["expecttest"] = stand_in
    from torch.testing._internal.common_methods_invocations import op_db

    return {OPINFO_NAMES[op.name]: op for op in op_db if op.name in OPINFO_NAMES}


def sample_case(name, sample):
    """An OpInfo SampleInput as (named tensors, options)."""
    kwargs = dict(sample.kwargs)
    if name == "triplet_margin_loss":
        tensors = dict(zip(TRIPLET_NAMES, (sample.input, *sample.args)))
    else:
        tensors = {"input": sample.input, "target": sample.args[0]}
        for key in ("weight", "pos_weight"):
            if key in kwargs:
                tensors[key] = kwargs.pop(key)
    return tensors, kwargs


def describe(tensors, options):
    shapes = ", ".join(f"{key} {tuple(t.shape)}{' (grad)' if t.requires_grad else ''}"
                       for key, t in tensors.items() if t is not None)
    return f"{shapes}, {options}"


@pytest.mark.parametrize("dtype", [F64, F32], ids=str)
@pytest.mark.parametrize("name", list(LOSSES))
def test_torch_opinfo_samples(name, dtype, generator):
    """Every sample of torch's OpInfo for the loss (sample_inputs with requires_grad=True:
    target and input both require grad, except bce's weights) gives torch's loss and
    gradients."""
    samples = list(opinfos()[name].sample_inputs(device="cpu", dtype=dtype,
                                                 requires_grad=True))
    cases = [sample_case(name, sample) for sample in samples]
    second = "positive" if name == "triplet_margin_loss" else "target"
    assert sum(tensors[second].requires_grad for tensors, _ in cases) >= 6
    failures = []
    for index, (tensors, options) in enumerate(cases):
        what = f"sample {index} ({describe(tensors, options)})"
        try:
            check_case(name, tensors, options, generator, what)
        except (AssertionError, RuntimeError, ValueError, TypeError) as error:
            failures.append(f"{type(error).__name__}: {error}")
    assert not failures, f"{len(failures)} of {len(cases)} samples:\n" + "\n".join(failures)


MODULES = ("MSELoss", "L1Loss", "HuberLoss", "SmoothL1Loss", "BCEWithLogitsLoss")


@pytest.mark.parametrize("dtype", [F64, F32], ids=str)
@pytest.mark.parametrize("module_name", MODULES)
def test_torch_module_samples(module_name, dtype, generator):
    """Every sample of torch's ModuleInfo for the loss module (constructor and forward
    arguments; input and target require grad): fastloss's module gives the loss and the
    gradients of torch's module in float64."""
    opinfos()  # the expecttest stand-in, where needed
    from torch.testing._internal.common_modules import module_db

    (info,) = [info for info in module_db if info.module_cls.__name__ == module_name]
    samples = [sample for sample in info.module_inputs_func(
        info, device="cpu", dtype=dtype, requires_grad=True, training=True)
        if sample.forward_input is not None]
    assert samples
    contract = np.float32 if dtype == F32 else np.float64

    def upcast(value, requires_grad=None):
        if not isinstance(value, torch.Tensor) or not value.dtype.is_floating_point:
            return value
        return value.detach().double().requires_grad_(
            value.requires_grad if requires_grad is None else requires_grad)

    for index, sample in enumerate(samples):
        constructor, forward = sample.constructor_input, sample.forward_input
        ours = getattr(FL, module_name)(*constructor.args, **constructor.kwargs)
        theirs = getattr(torch.nn, module_name)(
            *map(upcast, constructor.args),
            **{key: upcast(value) for key, value in constructor.kwargs.items()})
        inputs = [value.detach().clone().requires_grad_(value.requires_grad)
                  if isinstance(value, torch.Tensor) else value for value in forward.args]
        inputs64 = [upcast(value) for value in forward.args]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Using a target size")
            loss, expected = ours(*inputs), theirs(*inputs64)
        what = f"sample {index} ({constructor.kwargs}, {[tuple(t.shape) for t in inputs]})"
        assert loss.dtype == dtype, what
        assert_close_contract(loss.detach().double().numpy(), expected.detach().numpy(),
                              contract, "loss", what=what)
        wanted = [i for i, value in enumerate(inputs)
                  if isinstance(value, torch.Tensor) and value.requires_grad]
        upstream = upstream_for(loss, generator)
        grads = torch.autograd.grad(loss, [inputs[i] for i in wanted], upstream)
        expected_grads = torch.autograd.grad(expected, [inputs64[i] for i in wanted],
                                             upstream.double())
        for i, grad, expected_grad in zip(wanted, grads, expected_grads):
            assert_close_contract(grad.double().numpy(), expected_grad.numpy(), contract,
                                  "grad", what=f"{what}: grad {i}")


# ----------------------------------------------------------------------------------------
# Regression and binary losses: gradients w.r.t. target and weight
# ----------------------------------------------------------------------------------------

ELEMENTWISE_OPTIONS = {
    "mse_loss": {}, "l1_loss": {}, "huber_loss": {"delta": 0.6},
    "smooth_l1_loss": {"beta": 0.4}, "binary_cross_entropy_with_logits": {},
}
# input's shape, target's shape: torch broadcasts the regression losses' input and target
# (with a warning) either way; bce needs equal shapes
LAYOUTS = {
    "same": ((6, 5), (6, 5)),
    "0d": ((), ()),
    "target-enlarges-input": ((1, 5), (4, 6, 5)),
    "input-enlarges-target": ((3, 4, 5), (4, 1)),
}
DTYPE_PAIRS = {"f64": (F64, F64), "f32": (F32, F32), "f32-input-f64-target": (F32, F64),
               "f64-input-f32-target": (F64, F32)}


def elementwise_tensors(name, input_shape, target_shape, dtypes, generator, *,
                        weighted, grads=("input", "target", "weight")):
    binary = name == "binary_cross_entropy_with_logits"
    tensors = {
        "input": randn(input_shape, dtypes[0], generator, scale=2.0),
        "target": (rand(target_shape, dtypes[1], generator) if binary
                   else randn(target_shape, dtypes[1], generator)),
    }
    if weighted:
        # torch: the weight of the regression losses has the input's size; bce's
        # broadcasts to it
        tensors["weight"] = rand(input_shape, dtypes[0], generator, 0.25, 2.0)
    if binary and weighted:
        tensors["pos_weight"] = rand(input_shape[-1:], dtypes[0], generator, 0.25, 3.0)
    for key in grads:
        if key in tensors and not (binary and key == "weight"):
            tensors[key].requires_grad_(True)
    return tensors


def elementwise_cases():
    """(loss, weighted, layout) as torch allows them: bce needs a target of the input's
    size (test_errors_stay_clear has the error), smooth_l1_loss has no weight."""
    return [pytest.param(name, weighted, layout,
                         id=f"{name}-{'weighted' if weighted else 'plain'}-{layout}")
            for name in ELEMENTWISE_OPTIONS for weighted in (False, True) for layout in LAYOUTS
            if not (name == "binary_cross_entropy_with_logits"
                    and LAYOUTS[layout][0] != LAYOUTS[layout][1])
            and not (name == "smooth_l1_loss" and weighted)]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtypes", DTYPE_PAIRS)
@pytest.mark.parametrize("name, weighted, layout", elementwise_cases())
def test_elementwise_target_and_weight_gradients(name, weighted, layout, dtypes, reduction,
                                                 generator):
    """Input, target and (mse, l1, huber) weight all require grad; broadcasting either
    way and mixed dtypes, as torch allows them."""
    input_shape, target_shape = LAYOUTS[layout]
    grads = ("input", "target", "weight")
    if layout == "0d" and name in ("mse_loss", "l1_loss") and reduction == "mean":
        # one weight over everything: its exact gradient is 0, which fastloss and the
        # reference give and torch misses by its rounding (test_weight_gradient_of_a_
        # single_weight); the contract's floor, relative to a zero, has no room for that
        grads = ("input", "target")
    tensors = elementwise_tensors(name, input_shape, target_shape, DTYPE_PAIRS[dtypes],
                                  generator, weighted=weighted, grads=grads)
    options = dict(ELEMENTWISE_OPTIONS[name], reduction=reduction)
    check_case(name, tensors, options, generator, f"{name} {layout}")


@pytest.mark.parametrize("grads", [("target",), ("weight",), ("target", "weight")],
                         ids="+".join)
@pytest.mark.parametrize("name", ["mse_loss", "l1_loss", "huber_loss",
                                  "binary_cross_entropy_with_logits"])
def test_gradients_without_the_input(name, grads, generator):
    """A target or weight that requires grad while the input does not."""
    if name == "binary_cross_entropy_with_logits" and grads != ("target",):
        grads = ("target",)
    for reduction in REDUCTIONS:
        tensors = elementwise_tensors(name, (5, 4), (5, 4), (F64, F64), generator,
                                      weighted=True, grads=grads)
        check_case(name, tensors, {"reduction": reduction}, generator, reduction)


@pytest.mark.parametrize("dtype", [F64, F32], ids=str)
@pytest.mark.parametrize("name", ["mse_loss", "l1_loss"])
def test_weighted_mean_where_the_target_enlarges_the_input(name, dtype, generator):
    """torch's mean is sum(weight * loss) / sum(weight) with the weight of the input's
    size, not the weight broadcast with the target (that was off by the broadcast
    factor, 4 * 3 here)."""
    pred = randn((5,), dtype, generator, 2.0)
    target = randn((4, 3, 5), dtype, generator)
    weight = rand((5,), dtype, generator, 0.25, 2.0)
    residual = pred.double() - target.double()
    per_element = residual**2 if name == "mse_loss" else residual.abs()
    expected = (weight.double() * per_element).sum() / weight.double().sum()
    numpy_function = fastloss.mse if name == "mse_loss" else fastloss.l1
    contract = np.float32 if dtype == F32 else np.float64
    assert_close_contract(numpy_function(pred.numpy(), target.numpy(), weight=weight.numpy()),
                          expected.item(), contract, "loss")
    tensors = {"input": pred.requires_grad_(True), "target": target.requires_grad_(True),
               "weight": weight.requires_grad_(True)}
    check_case(name, tensors, {"reduction": "mean"}, generator)


@pytest.mark.parametrize("name", ["mse_loss", "l1_loss"])
def test_float32_weight_gradient_through_a_weighted_mean_that_barely_depends_on_it(
        name, generator):
    """Residuals within 1e-4 of each other: dL/dw_j = (l_j - L) / W is 1e-4 of the terms
    it is the difference of, so a float32 per-element loss (6e-8 relative) would miss
    the contract by a factor of 30; fastloss forms it from the loss in float64."""
    pred = (1.0 + 1e-4 * torch.rand(64, generator=generator, dtype=F64)).to(F32)
    tensors = {"input": pred.requires_grad_(True), "target": torch.zeros(64, dtype=F32),
               "weight": rand((64,), F32, generator, 0.5, 2.0, requires_grad=True)}
    check_case(name, tensors, {"reduction": "mean"}, generator)


@pytest.mark.parametrize("name", ["mse_loss", "l1_loss", "huber_loss"])
def test_weight_gradient_of_a_single_weight(name, generator):
    """One weight that covers every element: the weighted mean of mse and l1 does not
    depend on it, so its gradient is exactly 0 (fastloss and the reference form it
    without the cancellation of torch's sum / sum algebra); huber's mean is the loss."""
    pred = randn((), F64, generator, requires_grad=True)
    target = randn((), F64, generator)
    weight = torch.tensor(1.75, dtype=F64, requires_grad=True)
    loss = LOSSES[name][0](pred, target, weight=weight)
    (grad_weight,) = torch.autograd.grad(loss, weight)
    unweighted = LOSSES[name][1](pred.detach(), target)
    if name == "huber_loss":
        assert_close_contract(grad_weight.numpy(), unweighted.numpy(), np.float64, "grad")
    else:
        assert grad_weight.item() == 0.0
        # torch's l / w - (l w) / w**2 is 0 up to its roundings, a few ulps of l / w
        (torch_grad,) = torch.autograd.grad(
            LOSSES[name][1](pred, target, weight=weight), weight)
        assert abs(torch_grad.item()) <= 4 * np.finfo(np.float64).eps * unweighted.item() / 1.75
    assert reference.mse_grad(pred.detach().numpy(), target.numpy(), weight=1.75,
                              wrt="weight") == 0.0


# ----------------------------------------------------------------------------------------
# binary_cross_entropy_with_logits
# ----------------------------------------------------------------------------------------

EXTREME_LOGITS = [-1e4, -88.0, -40.0, -17.0, -1.5, -1e-3, 0.0, 1e-3, 1.5, 17.0, 40.0, 88.0,
                  1e4]


@pytest.mark.parametrize("dtype", [F64, F32], ids=str)
@pytest.mark.parametrize("pos_weight", [None, 0.25, 3.0])
def test_bce_target_gradient_over_the_range_of_logits(pos_weight, dtype, generator):
    """w (-x + (p - 1) softplus(-x)) without overflow or cancellation from -1e4 to 1e4,
    hard and soft targets."""
    logits = torch.tensor(EXTREME_LOGITS, dtype=F64).repeat(4).to(dtype)
    target = torch.cat([torch.zeros(13), torch.ones(13), torch.full((13,), 0.3),
                        torch.rand(13, generator=generator)]).to(dtype)
    tensors = {"input": logits.requires_grad_(True), "target": target.requires_grad_(True)}
    if pos_weight is not None:
        tensors["pos_weight"] = torch.tensor(pos_weight, dtype=dtype)
    for reduction in REDUCTIONS:
        check_case("binary_cross_entropy_with_logits", tensors, {"reduction": reduction},
                   generator, reduction)


def test_bce_target_gradient_at_infinite_logits():
    """At x = +-inf torch's target gradient log_sigmoid(-x) - p log_sigmoid(x) is -inf and
    p * inf (NaN for p = 0): the same IEEE values here."""
    logits = torch.tensor([-INF, INF, -INF, INF, -INF], dtype=F64)
    target = torch.full((5,), 0.5, dtype=F64, requires_grad=True)
    pos_weight = torch.tensor([2.0, 2.0, 0.5, 0.5, 0.0], dtype=F64)
    for weights in ({}, {"pos_weight": pos_weight}):
        ours = FL.binary_cross_entropy_with_logits(logits, target, reduction="sum", **weights)
        theirs = F.binary_cross_entropy_with_logits(logits, target, reduction="sum", **weights)
        (grad,) = torch.autograd.grad(ours, target)
        (expected,) = torch.autograd.grad(theirs, target)
        torch.testing.assert_close(grad, expected, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", [F64, F32], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_zero_d_logits_with_pos_weight(reduction, dtype, generator):
    for logit, label in ((0.7, 1.0), (-3.0, 0.25), (25.0, 0.0)):
        tensors = {"input": torch.tensor(logit, dtype=dtype, requires_grad=True),
                   "target": torch.tensor(label, dtype=dtype, requires_grad=True),
                   "weight": torch.tensor(1.5, dtype=dtype),
                   "pos_weight": torch.tensor(2.5, dtype=dtype)}
        check_case("binary_cross_entropy_with_logits", tensors, {"reduction": reduction},
                   generator, f"x={logit}")
    module = FL.BCEWithLogitsLoss(pos_weight=torch.tensor(2.5, dtype=dtype),
                                  reduction=reduction)
    logit = torch.tensor(0.7, dtype=dtype)
    expected = F.binary_cross_entropy_with_logits(
        logit.double(), torch.tensor(1.0, dtype=F64), pos_weight=torch.tensor(2.5, dtype=F64),
        reduction=reduction)
    assert_close_contract(module(logit, torch.tensor(1.0, dtype=dtype)).double().numpy(),
                          expected.numpy(), np.float32 if dtype == F32 else np.float64)
    # torch: a pos_weight that enlarges the 0-d loss is an error
    with pytest.raises(ValueError, match="pos_weight.*0-d"):
        FL.binary_cross_entropy_with_logits(logit, torch.tensor(1.0, dtype=dtype),
                                            pos_weight=torch.ones(1, dtype=dtype))


def test_bce_weight_and_pos_weight_are_not_differentiable_as_in_torch():
    logits = torch.randn(4, 3, requires_grad=True)
    target = torch.rand(4, 3)
    for key, value in (("weight", torch.rand(4, 3)), ("pos_weight", torch.rand(3))):
        keywords = {key: value.clone().requires_grad_(True)}
        with pytest.raises(RuntimeError, match="not differentiable") as ours:
            FL.binary_cross_entropy_with_logits(logits, target, **keywords)
        with pytest.raises(RuntimeError, match="not differentiable") as theirs:
            F.binary_cross_entropy_with_logits(logits, target, **keywords)
        assert f"argument '{key}'" in str(ours.value) and f"argument '{key}'" in str(theirs.value)
        with torch.no_grad():  # no graph, no error: as torch
            torch.testing.assert_close(
                FL.binary_cross_entropy_with_logits(logits, target, **keywords),
                F.binary_cross_entropy_with_logits(logits, target, **keywords))


def test_bce_loss_has_the_dtype_of_torchs_loss(generator):
    """torch's bce loss takes the target's dtype (it is computed in place in a tensor made
    from the target); the regression losses promote input, target and weight."""
    for input_dtype in (F32, F64):
        for target_dtype in (F32, F64):
            logits = randn((3, 4), input_dtype, generator)
            target = rand((3, 4), target_dtype, generator)
            assert FL.binary_cross_entropy_with_logits(logits, target).dtype == target_dtype
    weight = rand((3, 4), F64, generator)
    pred, target = randn((3, 4), F32, generator), randn((3, 4), F32, generator)
    for name in ("mse_loss", "l1_loss", "huber_loss"):
        loss = LOSSES[name][0](pred, target, weight=weight, reduction="none")
        assert loss.dtype == LOSSES[name][1](pred, target, weight=weight,
                                             reduction="none").dtype == F64


# the adapter's elementwise losses that torch.nn.functional has, and their second argument's
# values (labels of +-1 where the loss reads a sign, probabilities for bce's and kl_div's)
TORCH_ELEMENTWISE = sorted(
    entry.torch.function for entry in fastloss._registry.family("elementwise")
    if entry.torch is not None and entry.torch.counterpart
    and entry.torch.counterpart.startswith("torch.nn.functional."))


@pytest.mark.parametrize("name", TORCH_ELEMENTWISE)
def test_every_elementwise_loss_has_the_dtype_of_torchs_loss(name, generator):
    """Each input of float32, float64, float16 or bfloat16 beside the first input's
    dtype: the adapter's loss has torch's dtype (soft_margin_loss's is its input's: a
    float64 target beside float32 input gave float64, found by hunt14), and each
    gradient its input's."""
    import ml_dtypes  # noqa: F401 (the adapter reads bfloat16 through it; in the test extra)
    ours, theirs = getattr(FL, name), getattr(F, name)
    count = 3 if name in ("margin_ranking_loss", "gaussian_nll_loss") else 2
    dtypes = (F32, F64, torch.float16, torch.bfloat16)
    for first in dtypes:
        for other in dtypes:
            for reduction in ("mean", "none"):
                tensors = [rand((3, 4), first, generator, 0.5, 1.5)]
                tensors += [rand((3, 4), other, generator, 0.5, 1.0) for _ in range(count - 1)]
                if name in ("margin_ranking_loss", "soft_margin_loss"):
                    tensors[-1] = torch.where(tensors[-1] < 0.75, -1.0, 1.0).to(other)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # kl_div's "mean"
                    expected = theirs(*tensors, reduction=reduction)
                    tensors[0].requires_grad_(True)
                    loss = ours(*tensors, reduction=reduction)
                what = f"{name}({first}, {other}, reduction={reduction!r})"
                assert loss.dtype == expected.dtype, what
                (grad,) = torch.autograd.grad(loss.sum(), tensors[0])
                assert grad.dtype == first, what


# a number option of each torch-counterpart function, with its tensors
NUMBER_OPTIONS = [
    ("huber_loss", "delta", 0.5), ("smooth_l1_loss", "beta", 0.5),
    ("margin_ranking_loss", "margin", 0.2), ("poisson_nll_loss", "eps", 1e-3),
    ("gaussian_nll_loss", "eps", 1e-3), ("cross_entropy", "label_smoothing", 0.1),
    ("cross_entropy", "z_loss", 0.01), ("cross_entropy", "softcap", 2.0),
    ("triplet_margin_loss", "margin", 0.5), ("triplet_margin_loss", "p", 1.0),
    ("triplet_margin_loss", "eps", 1e-3), ("huber_loss", "delta", 2),
    ("linear_cross_entropy", "label_smoothing", 0.1), ("linear_cross_entropy", "z_loss", 0.01),
    ("linear_cross_entropy", "ignore_index", 1),
]


@pytest.mark.parametrize("name, option, value", NUMBER_OPTIONS)
def test_a_number_option_given_as_a_0d_tensor_is_its_number(name, option, value, generator):
    """torch's functions take a 0-d tensor (that requires no grad) for a float argument:
    so do the adapter's, as the number it holds (found by hunt14: "delta: expected a real
    number, got tensor(0.5000)"); one that requires grad is a TypeError, as torch's."""
    x = randn((3, 4), F64, generator, requires_grad=True)
    y = rand((3, 4), F64, generator)
    tensors = {"margin_ranking_loss": (x, y, torch.sign(y - 0.5)),
               "gaussian_nll_loss": (x, y, y + 0.1), "cross_entropy": (x, torch.tensor([0, 1, 3])),
               "triplet_margin_loss": (x, y, x.detach() + 1),
               "linear_cross_entropy": (x, rand((5, 4), F64, generator),
                                        torch.tensor([0, 1, 3]))}.get(name, (x, y))
    ours = getattr(FL, name)
    other = F32 if isinstance(value, float) or option == "delta" else torch.int32
    for tensor in (torch.tensor(value), torch.tensor(value, dtype=other)):
        expected = ours(*tensors, **{option: tensor.item()})  # float32's 0.1: 0.100000001
        (expected_grad,) = torch.autograd.grad(expected, x)
        got = ours(*tensors, **{option: tensor})
        (grad,) = torch.autograd.grad(got, x)
        assert torch.equal(got, expected) and torch.equal(grad, expected_grad)
        if option in ("label_smoothing", "ignore_index") or "cross_entropy" not in name:
            # (torch's own take it; z_loss and softcap are fastloss's)
            torch.testing.assert_close(getattr(F, name)(*tensors, **{option: tensor}),
                                       expected)
    if isinstance(value, float):
        with pytest.raises(TypeError, match=option):
            ours(*tensors, **{option: torch.tensor(value, requires_grad=True)})


def test_triplet_margin_that_is_no_number_is_named(generator):
    x = randn((3, 4), F64, generator)
    for margin in ("1", None):
        with pytest.raises(TypeError, match="^fastloss.torch.triplet_margin_loss: margin"):
            FL.triplet_margin_loss(x, x + 1, x - 1, margin=margin)


# ----------------------------------------------------------------------------------------
# triplet_margin_loss: every p, broadcasting, N-d inputs
# ----------------------------------------------------------------------------------------

# p and a margin that keeps most triplets active at that p's scale of distances
P_VALUES = {"inf": (INF, 2.0), "-inf": (-INF, 1.0), "0.5": (0.5, 30.0), "0.25": (0.25, 500.0),
            "-1": (-1.0, 1.0), "0": (0.0, 1.0), "1": (1.0, 4.0), "1.5": (1.5, 3.0),
            "2": (2.0, 2.0), "3": (3.0, 2.0)}
# anchor, positive, negative shapes: torch requires one number of dimensions
TRIPLET_SHAPES = {
    "2d": ((7, 5), (7, 5), (7, 5)),
    "rows-broadcast": ((1, 5), (7, 5), (7, 5)),
    "features-broadcast": ((7, 1), (7, 5), (1, 5)),
    "pair-of-one-feature": ((7, 1), (7, 1), (7, 5)),
    "3d": ((2, 3, 5), (2, 3, 5), (2, 3, 5)),
    "3d-broadcast": ((2, 1, 5), (1, 3, 5), (2, 3, 1)),
    "1d": ((5,), (5,), (5,)),
    "1d-broadcast": ((1,), (5,), (5,)),
    "0d": ((), (), ()),
}


@pytest.mark.parametrize("swap", [False, True], ids=["plain", "swap"])
@pytest.mark.parametrize("shapes", TRIPLET_SHAPES)
@pytest.mark.parametrize("p_id", P_VALUES)
def test_triplet_every_p_and_shape(p_id, shapes, swap, generator):
    p, margin = P_VALUES[p_id]
    # 0-d inputs are one feature: d(u, v) = |u - v + eps| and each gradient is a sum of
    # +-1 times the upstream gradient, exactly 0 where two signs agree; torch's pow-based
    # norm backward leaves a few float64 ulps of the upstream gradient (up to 2.2e-16) there
    rounding = 4 * np.finfo(np.float64).eps if shapes == "0d" else 0.0
    for reduction in REDUCTIONS:
        tensors = {key: randn(shape, F64, generator, requires_grad=True)
                   for key, shape in zip(TRIPLET_NAMES, TRIPLET_SHAPES[shapes])}
        options = {"p": p, "margin": margin, "swap": swap, "reduction": reduction}
        check_case("triplet_margin_loss", tensors, options, generator, reduction,
                   torch_rounding=rounding)


@pytest.mark.parametrize("shapes", ["2d", "features-broadcast", "3d-broadcast"])
@pytest.mark.parametrize("p_id", ["inf", "0.5", "-1", "3"])
def test_triplet_float32_and_mixed_dtypes(p_id, shapes, generator):
    p, margin = P_VALUES[p_id]
    for dtypes in ((F32, F32, F32), (F32, F64, F32)):
        tensors = {key: randn(shape, dtype, generator, requires_grad=True)
                   for key, shape, dtype in zip(TRIPLET_NAMES, TRIPLET_SHAPES[shapes], dtypes)}
        for reduction in REDUCTIONS:
            check_case("triplet_margin_loss", tensors,
                       {"p": p, "margin": margin, "swap": True, "reduction": reduction},
                       generator, f"{dtypes} {reduction}")


def test_triplet_inf_norm_ties_share_the_gradient(generator):
    """|v| reaches its max at two elements: torch's amax backward splits the gradient."""
    anchor = torch.tensor([[1.0, -1.0, 0.5], [2.0, 0.0, -2.0]], dtype=F64, requires_grad=True)
    positive = torch.zeros(2, 3, dtype=F64, requires_grad=True)
    negative = torch.tensor([[0.0, 0.0, 0.1], [0.5, 0.0, 0.0]], dtype=F64, requires_grad=True)
    for p in (INF, -INF):
        check_case("triplet_margin_loss",
                   {"anchor": anchor, "positive": positive, "negative": negative},
                   {"p": p, "eps": 0.0, "margin": 3.0, "reduction": "sum"}, generator)


def test_triplet_no_features(generator):
    """D = 0: every distance is 0 for p >= 0 (loss = margin); torch refuses the other
    norms of no elements, and so does fastloss."""
    tensors = {key: torch.zeros(3, 0, dtype=F64, requires_grad=True) for key in TRIPLET_NAMES}
    for p in (0.0, 0.5, 2.0):
        check_case("triplet_margin_loss", tensors, {"p": p, "reduction": "none"}, generator)
    for p in (-1.0, INF, -INF):
        with pytest.raises(ValueError, match="p: the .* norm of no elements"):
            FL.triplet_margin_loss(*tensors.values(), p=p)


def test_triplet_module_on_3d_inputs(generator):
    tensors = [randn((2, 4, 6), F64, generator, requires_grad=True) for _ in range(3)]
    for reduction in REDUCTIONS:
        ours = FL.TripletMarginLoss(p=INF, margin=2.0, swap=True, reduction=reduction)
        theirs = torch.nn.TripletMarginLoss(p=INF, margin=2.0, swap=True, reduction=reduction)
        assert isinstance(ours, torch.nn.TripletMarginLoss)
        loss, expected = ours(*tensors), theirs(*tensors)
        assert_close_contract(loss.detach().numpy(), expected.detach().numpy(), np.float64)
        upstream = upstream_for(loss, generator)
        for grad, expected_grad in zip(torch.autograd.grad(loss, tensors, upstream),
                                       torch.autograd.grad(expected, tensors, upstream)):
            assert_close_contract(grad.numpy(), expected_grad.numpy(), np.float64, "grad")


# ----------------------------------------------------------------------------------------
# The NumPy API and the reference behind the adapter
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p", [INF, 0.5])
def test_numpy_triplet_margin_with_new_norms(p, dtype, rng):
    """fastloss.triplet_margin: p = inf is the largest |a - b + eps|, checked by hand, and
    every entry point agrees with the reference on 2-d, 3-d and broadcast inputs, out=
    included."""
    anchor = np.array([[0.0, 0.0], [1.0, 2.0]], dtype)
    positive = np.array([[0.5, -1.0], [1.0, 1.0]], dtype)
    negative = np.array([[3.0, 0.0], [0.0, 0.0]], dtype)
    if p == INF:
        by_hand = [max(0.0, 1.0 + 1.0 - 3.0), max(0.0, 1.0 + 1.0 - 2.0)]
        loss = fastloss.triplet_margin(anchor, positive, negative, p=INF, eps=0.0,
                                       reduction="none")
        assert loss.dtype == dtype and loss.tolist() == by_hand
    for shapes in (((9, 4),) * 3, ((2, 9, 4),) * 3, ((1, 9, 4), (2, 9, 4), (2, 1, 1))):
        arrays = [rng.standard_normal(shape).astype(dtype) for shape in shapes]
        loss_shape = np.broadcast_shapes(*shapes)[:-1]
        for reduction in REDUCTIONS:
            upstream = rng.standard_normal(loss_shape) if reduction == "none" else 0.75
            options = dict(p=p, margin=3.0 if p == 0.5 else 1.0, swap=True, reduction=reduction)
            ref_loss, ref_grads = reference.triplet_margin_value_and_grad(*arrays, upstream,
                                                                          **options)
            out = tuple(np.empty(shape, dtype) for shape in shapes)
            loss, grads = fastloss.triplet_margin_value_and_grad(*arrays, upstream, out=out,
                                                                 **options)
            assert all(grad is buffer for grad, buffer in zip(grads, out))
            assert_close_contract(loss, ref_loss, dtype, "loss")
            separate = fastloss.triplet_margin_grad(*arrays, upstream, **options)
            for grad, again, ref_grad in zip(grads, separate, ref_grads):
                assert_close_contract(grad, ref_grad, dtype, "grad")
                assert np.array_equal(grad, again)


@pytest.mark.parametrize("name", ["mse", "l1", "huber", "smooth_l1", "bce_with_logits"])
def test_numpy_wrt_gives_each_arguments_gradient(name, rng):
    """wrt= names the gradients, in order; each has its argument's shape and dtype, and
    out= takes one buffer per name."""
    binary = name == "bce_with_logits"
    pred = rng.standard_normal((4, 1, 3)).astype(np.float32)
    target = (rng.random((4, 1, 3)) if binary else rng.standard_normal((5, 3)))
    weight = rng.uniform(0.5, 2.0, (4, 1, 3)).astype(np.float32)
    pred_name = "logits" if binary else "pred"
    names = (pred_name, "target") if binary else ("weight", pred_name, "target")
    value_and_grad = getattr(fastloss, f"{name}_value_and_grad")
    loss, grads = value_and_grad(pred, target, 0.5, weight=weight, wrt=names)
    ref_loss, ref_grads = getattr(reference, f"{name}_value_and_grad")(
        pred, target, 0.5, weight=weight, wrt=names)
    arguments = {pred_name: pred, "target": target, "weight": weight}
    for key, grad, ref_grad in zip(names, grads, ref_grads):
        assert grad.shape == arguments[key].shape and grad.dtype == arguments[key].dtype
        assert_close_contract(grad, ref_grad, np.float32, "grad", what=key)
    out = tuple(np.empty_like(arguments[key]) for key in names)
    again = getattr(fastloss, f"{name}_grad")(pred, target, 0.5, weight=weight, wrt=names,
                                              out=out)
    assert all(a is b and np.array_equal(a, g) for a, b, g in zip(again, out, grads))
    single = getattr(fastloss, f"{name}_grad")(pred, target, 0.5, weight=weight, wrt="target")
    assert np.array_equal(single, grads[names.index("target")])


def central_difference(function, array, step):
    """d function / d array by central differences of fourth order, in float64."""
    grad = np.zeros_like(array)
    for index in np.ndindex(array.shape):
        values = []
        for offset in (-2, -1, 1, 2):
            moved = array.copy()
            moved[index] += offset * step
            values.append(function(moved))
        grad[index] = (values[0] - 8 * values[1] + 8 * values[2] - values[3]) / (12 * step)
    return grad


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", ["mse", "l1", "huber", "smooth_l1", "bce_with_logits"])
def test_reference_target_and_weight_gradients_match_finite_differences(name, reduction, rng):
    """The oracle is checked too: its new gradients are those of its own loss."""
    binary = name == "bce_with_logits"
    pred = rng.standard_normal((3, 4)) * 2
    target = rng.random((3, 4)) if binary else rng.standard_normal((1, 4))
    weight = rng.uniform(0.5, 2.0, (3, 4))
    options = {"reduction": reduction, "weight": weight}
    if binary:
        options["pos_weight"] = rng.uniform(0.25, 3.0, 4)
    loss = getattr(reference, name)
    grad = getattr(reference, f"{name}_grad")
    names = ("target",) if binary else ("target", "weight")
    analytic = grad(pred, target, 1.0, wrt=names, **options)
    numeric_target = central_difference(lambda t: loss(pred, t, **options), target, 1e-4)
    assert_close(analytic[0], numeric_target, CONTRACT[(np.dtype(np.float32), "grad")],
                 what="target")
    if not binary:
        numeric_weight = central_difference(
            lambda w: loss(pred, target, **dict(options, weight=w)), weight, 1e-4)
        assert_close(analytic[1], numeric_weight, CONTRACT[(np.dtype(np.float32), "grad")],
                     what="weight")


@pytest.mark.parametrize("p", [INF, 0.5, -1.0, 3.0])
def test_reference_triplet_gradients_match_finite_differences(p, rng):
    arrays = [rng.standard_normal(shape) for shape in ((2, 1, 4), (1, 3, 4), (2, 3, 1))]
    options = {"p": p, "margin": 50.0, "swap": True, "reduction": "sum"}
    grads = reference.triplet_margin_grad(*arrays, **options)
    for index, grad in enumerate(grads):
        def loss_of(moved, index=index):
            return reference.triplet_margin(*(moved if i == index else a
                                              for i, a in enumerate(arrays)), **options)
        numeric = central_difference(loss_of, arrays[index], 1e-5)
        assert_close(grad, numeric, CONTRACT[(np.dtype(np.float32), "grad")],
                     what=f"input {index}")


# ----------------------------------------------------------------------------------------
# Finite differences through the adapter (torch.autograd.gradcheck, float64)
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", list(ELEMENTWISE_OPTIONS))
def test_gradcheck_elementwise_all_arguments(name, reduction, generator):
    binary = name == "binary_cross_entropy_with_logits"
    tensors = elementwise_tensors(name, (3, 4), (3, 4) if binary else (1, 4), (F64, F64),
                                  generator, weighted=name != "smooth_l1_loss")
    keys = [key for key, tensor in tensors.items() if tensor.requires_grad]
    fixed = {key: tensor for key, tensor in tensors.items() if not tensor.requires_grad}
    options = dict(ELEMENTWISE_OPTIONS[name], reduction=reduction)

    def function(*differentiable):
        return call(LOSSES[name][0], name, dict(fixed, **dict(zip(keys, differentiable))),
                    options)

    assert torch.autograd.gradcheck(function, [tensors[key] for key in keys])


@pytest.mark.parametrize("p", [INF, 0.5, -1.0, 1.5])
def test_gradcheck_triplet(p, generator):
    tensors = [randn(shape, F64, generator, requires_grad=True)
               for shape in ((2, 1, 4), (1, 3, 4), (2, 3, 1))]
    assert torch.autograd.gradcheck(
        lambda a, b, c: FL.triplet_margin_loss(a, b, c, p=p, margin=50.0, swap=True,
                                               reduction="none"), tensors)


# ----------------------------------------------------------------------------------------
# Errors stay clear
# ----------------------------------------------------------------------------------------

def test_errors_stay_clear():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="target.*size"):
        FL.binary_cross_entropy_with_logits(x, torch.rand(1, 3, requires_grad=True))
    with pytest.raises(ValueError, match="weight.*size"):
        FL.mse_loss(x, x, weight=torch.ones(3, requires_grad=True))
    with pytest.raises(ValueError, match="same number of dimensions"):
        FL.triplet_margin_loss(torch.randn(4, 3), torch.randn(3), torch.randn(4, 3))
    with pytest.raises(ValueError, match="do not broadcast"):
        FL.triplet_margin_loss(torch.randn(4, 3), torch.randn(5, 3), torch.randn(4, 3))
    with pytest.raises(ValueError, match="p: expected"):
        FL.triplet_margin_loss(x, x, x, p=math.nan)
    array = x.numpy()
    with pytest.raises(ValueError, match="wrt: weight.*not differentiable"):
        fastloss.bce_with_logits_grad(array, array, weight=array, wrt=("logits", "weight"))
    with pytest.raises(ValueError, match="wrt: pos_weight"):
        fastloss.bce_with_logits_grad(array, array, pos_weight=array[0], wrt="pos_weight")
    with pytest.raises(ValueError, match="wrt: expected names"):
        fastloss.mse_grad(array, array, wrt="input")
    with pytest.raises(ValueError, match="wrt: expected distinct"):
        fastloss.mse_grad(array, array, wrt=("pred", "pred"))
    with pytest.raises(ValueError, match="wrt: weight: no weight"):
        fastloss.l1_grad(array, array, wrt="weight")
    with pytest.raises(TypeError, match="wrt: target: a int64 target has no gradient"):
        fastloss.huber_grad(array, np.ones((4, 3), np.int64), wrt="target")
    with pytest.raises(TypeError, match="out: expected a tuple of 2"):
        fastloss.mse_grad(array, array, wrt=("pred", "target"), out=np.empty_like(array))
    with pytest.raises(ValueError, match="out \\(target\\)"):
        fastloss.mse_grad(array, array, wrt=("pred", "target"),
                          out=(np.empty_like(array), np.empty((4, 4), np.float32)))
