"""The generic tables the registry (fastloss/_registry.py) drives: every entry's public
functions and their signatures, its options' refused values, its torch adapter and module,
and parity with its torch counterpart for every case it declares.

A loss added to the registry is in these tables without a line here; what is particular
to it (edge cases, its own semantics) goes in its family's test file.
"""
import inspect
import math
import zlib

import numpy as np
import pytest

import fastloss
from fastloss import _registry, reference
from counterparts import FORMULAS
from loss_specs import assert_close_contract

ENTRIES = list(_registry.LOSSES.values())
ELEMENTWISE = _registry.family("elementwise")
SUFFIXES = ("", "_grad", "_value_and_grad")


def _rng(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda entry: entry.name)
def test_every_entry_is_public_and_has_a_reference(entry):
    for suffix in SUFFIXES:
        name = entry.name + suffix
        assert name in fastloss.__all__, name
        assert callable(getattr(fastloss, name))
        assert callable(getattr(reference, name)), f"fastloss.reference.{name}"
    assert entry.family in ("cross_entropy", "linear_cross_entropy", "elementwise",
                            "contrastive", "box", "distill", "sequence")
    assert set(entry.differentiable) <= set(entry.inputs) | {o.name for o in entry.options}


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda entry: entry.name)
def test_signatures_follow_the_entry(entry):
    """The inputs are the leading positional parameters of all three functions (and of
    the reference's), the gradient functions take grad_output next and default wrt to
    the first differentiable argument."""
    for module in (fastloss, reference):
        for suffix in SUFFIXES:
            parameters = list(inspect.signature(getattr(module, entry.name + suffix))
                              .parameters.values())
            names = [p.name for p in parameters[:len(entry.inputs)]]
            assert tuple(names) == entry.inputs, (module.__name__, suffix, names)
            if suffix:
                assert parameters[len(entry.inputs)].name == "grad_output"
    for suffix in ("_grad", "_value_and_grad"):
        wrt = inspect.signature(getattr(fastloss, entry.name + suffix)).parameters.get("wrt")
        if wrt is not None:
            assert wrt.default == entry.differentiable[0]
    keywords = inspect.signature(getattr(fastloss, entry.name)).parameters
    for option in entry.options:
        assert keywords[option.name].default is option.default or \
            keywords[option.name].default == option.default
        assert keywords[option.name].kind is inspect.Parameter.KEYWORD_ONLY


def _refusals():
    for entry in ELEMENTWISE:
        for option in entry.options:
            for value, error in option.refused:
                yield pytest.param(entry, option.name, value, error,
                                   id=f"{entry.name}-{option.name}={value!r:.24}")


@pytest.mark.parametrize("entry, option, value, error", list(_refusals()))
@pytest.mark.parametrize("suffix", SUFFIXES)
def test_refused_option_values_name_the_option(entry, option, value, error, suffix):
    arrays, options = entry.make_inputs(_rng(entry.name), np.float64, {}, (4, 3))
    options[option] = value
    with pytest.raises(error, match=option):
        getattr(fastloss, entry.name + suffix)(*arrays, **options)
    with pytest.raises((TypeError, ValueError), match=option):
        getattr(reference, entry.name + suffix)(*arrays, **options)


def _cases(entries):
    for entry in entries:
        for case in entry.cases:
            yield pytest.param(entry, case, id=f"{entry.name}-{case.id}")


def test_every_entry_names_a_tolerance_class_of_the_contract():
    """"contract": fastloss._contract's bounds, elementwise, which the generic tables
    below hold an entry to; "products": those bounds plus a dot product's rounding
    (docs/accuracy.rst, losses that multiply matrices), held by the entry's own tests."""
    for entry in ENTRIES:
        assert entry.tolerance in ("contract", "products"), entry.name
    assert all(entry.tolerance == "contract"
               for entry in ELEMENTWISE + _registry.family("box"))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("entry, case", list(_cases(
    [entry for entry in ELEMENTWISE if entry.tolerance == "contract"])))
def test_every_gradient_the_entry_declares(entry, case, dtype):
    """wrt= every differentiable argument at once, against the reference, from both the
    gradient function and the fused one."""
    arrays, options = entry.make_inputs(_rng(entry.name, case.id), dtype, case.params, (6, 5))
    given = dict(zip(entry.inputs, arrays), **options)
    wrt = tuple(name for name in entry.differentiable
                if given.get(name) is not None and np.asarray(given[name]).dtype.kind == "f")
    shape = np.shape(getattr(reference, entry.name)(*arrays, reduction="none", **options))
    for reduction in ("mean", "sum", "none"):
        upstream = 0.75 if reduction != "none" else np.linspace(-1, 2, math.prod(shape)) \
            .reshape(shape)
        expected = _registry_reference(entry, "_grad")(*arrays, upstream, wrt=wrt,
                                                       reduction=reduction, **options)
        grads = getattr(fastloss, entry.name + "_grad")(*arrays, upstream, wrt=wrt,
                                                        reduction=reduction, **options)
        loss, fused = getattr(fastloss, entry.name + "_value_and_grad")(
            *arrays, upstream, wrt=wrt, reduction=reduction, **options)
        assert_close_contract(loss, getattr(reference, entry.name)(
            *arrays, reduction=reduction, **options), dtype, "loss")
        for name, grad, fused_grad, ref in zip(wrt, grads, fused, expected):
            argument = given[name]
            assert grad.shape == np.shape(argument) and grad.dtype == argument.dtype, name
            assert_close_contract(grad, ref, dtype, "grad", what=f"{reduction} d/d{name}")
            assert_close_contract(fused_grad, ref, dtype, "grad",
                                  what=f"{reduction} fused d/d{name}")


def _registry_reference(entry, suffix):
    return getattr(reference, entry.name + suffix)


# ----------------------------------------------------------------------------------------
# torch: the adapter and module of every entry, and parity with the counterpart
# ----------------------------------------------------------------------------------------

def _torch_counterpart(entry):
    """The counterpart's own function where it imports (torch's), else its formula
    written out in torch (tests/counterparts.py: torchvision's losses, pinball)."""
    import importlib

    path = entry.torch.counterpart
    if path and path.startswith("torch."):
        module, _, name = path.rpartition(".")
        return getattr(importlib.import_module(module), name)
    return FORMULAS[path or entry.torch.function]


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e.torch and e.torch.function],
                         ids=lambda entry: entry.name)
def test_every_torch_form_exists(entry):
    torch = pytest.importorskip("torch")
    import fastloss.torch as FL

    assert entry.torch.function in FL.__all__
    if entry.torch.module:
        module = getattr(FL, entry.torch.module)
        assert issubclass(module, torch.nn.Module)
        if entry.torch.module_base:
            assert issubclass(module, getattr(torch.nn, entry.torch.module_base))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("entry, case", list(_cases(
    [e for e in ELEMENTWISE + _registry.family("box") if e.torch is not None])))
def test_elementwise_adapter_matches_its_counterpart(entry, case, reduction, dtype):
    """fastloss.torch's function and module against torch's (or, where torch has none,
    against the entry's formula written in torch in the entry's own tests): the loss and
    the gradient of every tensor torch differentiates, for every case of the entry."""
    torch = pytest.importorskip("torch")
    import fastloss.torch as FL

    theirs = _torch_counterpart(entry)
    form = entry.torch
    arrays, options = entry.make_inputs(_rng(entry.name, case.id, dtype), getattr(np, dtype),
                                        case.params, (5, 4))
    if "weight" in options and "weight" in form.arguments.values():
        # torch's regression losses take a weight of the input's size only
        options["weight"] = np.broadcast_to(options["weight"], arrays[0].shape).copy()
    ours_by_name = dict(zip(entry.inputs, arrays), **options)
    keywords, tensors, grads_of = {}, {}, []
    for theirs_name, ours_name in form.arguments.items():
        value = ours_by_name.get(ours_name)
        if value is None:
            continue
        if isinstance(value, np.ndarray):
            tensor = torch.from_numpy(value)
            tensors[theirs_name] = tensor
            if (ours_name in entry.differentiable and ours_name not in form.not_differentiable
                    and tensor.dtype.is_floating_point):
                grads_of.append(theirs_name)
        else:
            keywords[theirs_name] = value

    def run(function, wide=False):
        leaves = {name: (tensor.double() if wide and tensor.dtype.is_floating_point
                         else tensor).detach().clone().requires_grad_(name in grads_of)
                  for name, tensor in tensors.items()}
        loss = function(**leaves, **keywords, reduction=reduction)
        upstream = torch.linspace(-1, 2, loss.numel(), dtype=torch.float32).to(loss.dtype) \
            .reshape(loss.shape)
        grads = torch.autograd.grad(loss, [leaves[name] for name in grads_of], upstream)
        return loss, grads

    # torch in the inputs' precision says what dtypes to give; torch on the inputs
    # upcast to float64 is the value to meet (torch's float32 result is a witness with
    # errors of its own, not the reference)
    loss, grads = run(getattr(FL, form.function))
    witness, witness_grads = run(theirs)
    expected, expected_grads = run(theirs, wide=True)
    assert loss.dtype == witness.dtype and loss.shape == witness.shape
    assert_close_contract(loss.detach().double().numpy(), expected.detach().numpy(),
                          np.dtype(dtype), "loss")
    for name, grad, witness_grad, expected_grad in zip(grads_of, grads, witness_grads,
                                                       expected_grads):
        assert grad.dtype == witness_grad.dtype, name
        if name in form.gradient_differs and not torch.isfinite(expected_grad).all():
            # documented in the registry (Torch.gradient_differs) and tested in the
            # loss's own tests: torch's autograd gives NaN where the loss has a
            # derivative; everywhere torch's gradient is finite the two agree
            finite = torch.isfinite(expected_grad)
            assert_close_contract(grad.double()[finite].numpy(),
                                  expected_grad[finite].numpy(), np.dtype(dtype), "grad",
                                  what=f"d/d{name} where torch's is finite")
            continue
        assert_close_contract(grad.double().numpy(), expected_grad.numpy(), np.dtype(dtype),
                              "grad", what=f"d/d{name}")

    if form.module:
        module = getattr(FL, form.module)(
            **{name: keywords[name] for name in keywords
               if name in form.module_signature}, reduction=reduction)
        leaves = {name: tensor for name, tensor in tensors.items()
                  if name in (theirs_name for theirs_name, ours_name in form.arguments.items()
                              if ours_name in entry.inputs)}
        if "weight" not in form.module_signature or "weight" not in tensors:
            by_module = module(*leaves.values())
            by_function = getattr(FL, form.function)(**leaves, **{
                name: value for name, value in keywords.items()
                if name in form.module_signature}, reduction=reduction)
            assert torch.equal(by_module, by_function)
