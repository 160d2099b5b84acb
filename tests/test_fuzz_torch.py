"""Fuzzing the torch adapter (fastloss.torch), the path most users take: the random calls of
tests/test_fuzz.py (shapes with 0 and 1 included, both dtypes, layouts, options, extremes),
made on tensors through the adapter's functions with torch's names and layouts (the class
axis second for cross_entropy), differentiated by autograd with a random upstream gradient,
and held to fastloss.reference under the accuracy contract, as the NumPy API is.  The
properties take only valid calls: the adapter's refusals have tests of their own
(tests/test_torch_adapter.py and the entries' own tests).

The replay and the seeds are tests/test_fuzz.py's (FASTLOSS_FUZZ_SEED,
FASTLOSS_FUZZ_EXAMPLES; tests/fuzz/README.md).
"""
import warnings

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import fastloss.torch as FL  # noqa: E402
from fastloss import _registry, reference  # noqa: E402

from fastloss._contract import all_pairs_products_bound  # noqa: E402

from contract_floors import (assert_close_at_scale, cancelling_terms_bound,  # noqa: E402
                             distill_terms_bound, info_nce_products_bound, triplet_terms_bound)
from test_fuzz import (FUZZ, REGISTRY_LOSSES, _flatten, _sequence_grad_bound,  # noqa: E402
                       _sequence_sums_bound, contrastive_calls, cross_entropy_calls,
                       linear_calls, linear_tlp_calls, registry_calls, sequence_calls,
                       vocab_calls)


def _tensor(array):
    """`array` as a tensor over the same memory and strides (torch holds no negative
    strides: such an array is copied first).  A broadcast view (stride 0) stays one."""
    array = np.asarray(array)
    if any(stride < 0 for stride in array.strides):
        array = np.array(array, order="C")  # (ascontiguousarray keeps an empty one's)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a read-only (broadcast) view
        return torch.from_numpy(array)


def _upstream(draw, loss):
    """A random upstream gradient for `loss`: one number, or one per element."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = rng.uniform(-2.0, 2.0, size=tuple(loss.shape)) + 0.25
    return torch.from_numpy(np.asarray(values)).to(loss.dtype)


def _differentiate(draw, loss, leaves):
    """The gradients of <loss, upstream> w.r.t. each tensor of `leaves` (a dict), by
    autograd, and the upstream as float64 NumPy (what the reference takes)."""
    upstream = _upstream(draw, loss)
    grads = torch.autograd.grad(loss, list(leaves.values()), upstream) if leaves else ()
    return [g.detach().numpy() for g in grads], upstream.double().numpy()


def _wide(array):
    """A float array in float64 (the reference's), another as it is."""
    array = np.asarray(array)
    return array.astype(np.float64) if array.dtype.kind == "f" else array


def _unmodified(copies, tensors):
    """Each tensor equals the copy taken before the call (NaN equal to NaN)."""
    for before, tensor in zip(copies, tensors):
        assert torch.equal(before.isnan(), tensor.isnan()) and torch.equal(
            before.nan_to_num(), tensor.detach().nan_to_num()), "an input was modified"


# ----------------------------------------------------------------------------------------
# Every registry loss with a torch form (the pointwise losses and the box losses)
# ----------------------------------------------------------------------------------------

TORCH_REGISTRY_LOSSES = [name for name in REGISTRY_LOSSES
                         if _registry.LOSSES[name].torch is not None
                         and _registry.LOSSES[name].torch.function]


@pytest.mark.parametrize("name", TORCH_REGISTRY_LOSSES)
@FUZZ
@given(data=st.data())
def test_fuzz_torch_registry(name, data):
    """fastloss.torch.<torch's name>(...) on a random valid call of the registry's loss,
    with a random set of the tensors it differentiates requiring grad."""
    entry, arrays, options, _ = data.draw(registry_calls(name), label="call")
    form = entry.torch
    reduction = options.pop("reduction")
    num_threads = options.pop("num_threads")
    ours = dict(zip(entry.inputs, arrays), **options)
    if isinstance(ours.get("weight"), np.ndarray) and "weight" in form.arguments.values():
        # the adapter, as torch, takes a weight of the input's size only: a broadcast one
        # is a view with stride 0
        ours["weight"] = np.broadcast_to(ours["weight"], np.shape(arrays[0]))
    keywords, tensors, passed = {}, {}, {}
    for theirs_name, ours_name in form.arguments.items():
        if ours_name not in ours:
            continue
        value = ours[ours_name]
        passed[ours_name] = value
        if isinstance(value, np.ndarray):
            tensors[theirs_name] = _tensor(value)
        else:
            keywords[theirs_name] = value
    by_ours = {ours_name: theirs_name for theirs_name, ours_name in form.arguments.items()}
    can_grad = [ours_name for ours_name in entry.differentiable
                if ours_name in passed and isinstance(passed[ours_name], np.ndarray)
                and passed[ours_name].dtype.kind == "f"
                and ours_name not in form.not_differentiable
                and ours_name not in form.no_gradient]
    wanted = [n for n in can_grad if data.draw(st.booleans(), label=f"grad of {n}")]
    leaves = {}
    for ours_name in wanted:
        theirs_name = by_ours[ours_name]
        tensors[theirs_name] = leaves[ours_name] = tensors[theirs_name].requires_grad_()
    copies = [t.detach().clone() for t in tensors.values()]
    loss = getattr(FL, form.function)(**tensors, **keywords, reduction=reduction,
                                      num_threads=num_threads)
    _unmodified(copies, tensors.values())
    grads, upstream = _differentiate(data.draw, loss, leaves)
    event(f"{len(wanted)} gradient(s)")

    inputs = [_wide(passed[n]) for n in entry.inputs]
    options = {n: (_wide(v) if isinstance(v, np.ndarray) else v) for n, v in passed.items()
               if n not in entry.inputs}
    options["reduction"] = reduction
    with np.errstate(all="ignore"):
        if wanted:
            ref_loss, ref_grads = entry.reference[2](*inputs, upstream, wrt=tuple(wanted),
                                                     **options)
        else:
            ref_loss, ref_grads = entry.reference[0](*inputs, **options), ()
    computed = [np.asarray(passed[n]).dtype for n in entry.inputs
                if np.asarray(passed[n]).dtype.kind == "f"]
    loss_dtype = np.result_type(loss.detach().numpy().dtype, *computed)
    loss_extra, grad_extras = cancelling_terms_bound(
        name, [passed[n] for n in entry.inputs], dict(options, grad_output=upstream),
        wanted or entry.differentiable[:1])  # (the loss's bound needs one name)
    assert_close_at_scale(loss.detach().numpy(), ref_loss, loss_dtype, "loss",
                          extra=loss_extra)
    for ours_name, grad, ref_grad, extra in zip(wanted, grads, ref_grads, grad_extras):
        argument = np.asarray(passed[ours_name])
        assert grad.shape == argument.shape and grad.dtype == argument.dtype, ours_name
        assert_close_at_scale(grad, ref_grad, argument.dtype, "grad", loss=ref_loss,
                              wrt=argument, grad_output=upstream,
                              what=f"grad w.r.t. {ours_name}", extra=extra)


# ----------------------------------------------------------------------------------------
# cross_entropy: torch's layout, (N, C, d1, ...) with the classes second
# ----------------------------------------------------------------------------------------

@FUZZ
@given(data=st.data())
def test_fuzz_torch_cross_entropy(data):
    """fastloss.torch.cross_entropy on a random valid call of tests/test_fuzz.py's
    cross-entropy property: logits (..., C) given as torch's (C), (N, C) or (N, C, d1)
    (a view with the classes second), class indices as int64 (torch's) or soft targets,
    the fused or the recomputing backward, and the loss's gradient w.r.t. the logits."""
    logits, target, kwargs, invalid = data.draw(cross_entropy_calls(), label="call")
    if invalid:
        return  # the NumPy API's refusals are test_fuzz's; the adapter's, its own tests'
    num_threads = kwargs.pop("num_threads", None)
    ref_kwargs = dict(kwargs)
    soft = target.dtype.kind == "f"
    if not soft:
        target = target.astype(np.int64)  # torch's class indices are int64
    if kwargs.get("softcap") is None:
        kwargs.pop("softcap", None)
    weight = kwargs.pop("weight", None)
    input_ = _tensor(logits)
    if logits.ndim >= 3:
        input_ = input_.movedim(-1, 1)  # torch's (N, C, d1, ...), a view
    requires_grad = data.draw(st.booleans(), label="requires grad")
    if requires_grad:
        input_.requires_grad_()
    grad_in_forward = data.draw(st.booleans(), label="grad in forward")
    copies = [input_.detach().clone()]
    target_ = _tensor(target)
    if soft and logits.ndim >= 3:
        target_ = target_.movedim(-1, 1)  # soft targets in the input's layout
    loss = FL.cross_entropy(input_, target_, None if weight is None else _tensor(weight),
                            grad_in_forward=grad_in_forward, num_threads=num_threads, **kwargs)
    _unmodified(copies, [input_])
    with np.errstate(all="ignore"):
        if requires_grad:
            grads, upstream = _differentiate(data.draw, loss, {"input": input_})
            grad = grads[0]
            if logits.ndim >= 3:
                grad = np.moveaxis(grad, 1, -1)
            ref_loss, ref_grad = reference.cross_entropy_value_and_grad(
                _wide(logits), target, upstream, **ref_kwargs)
        else:
            ref_loss = reference.cross_entropy(_wide(logits), target, **ref_kwargs)
    assert loss.dtype == input_.dtype
    assert_close_at_scale(loss.detach().numpy(), ref_loss, logits.dtype, "loss")
    if requires_grad:
        assert grad.shape == logits.shape and grad.dtype == logits.dtype
        assert_close_at_scale(grad, ref_grad, logits.dtype, "grad", loss=ref_loss, wrt=logits,
                              grad_output=upstream)


# ----------------------------------------------------------------------------------------
# token_log_probs, distill_kl, jsd
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["token_log_probs", "distill_kl", "jsd"])
@FUZZ
@given(data=st.data())
def test_fuzz_torch_vocab(name, data):
    """fastloss.torch.<name> on a random valid call of tests/test_fuzz.py's vocabulary
    property, each float tensor requiring grad or not, the outputs (token_log_probs' with
    its entropy) differentiated with random upstream gradients."""
    args, kwargs, invalid = data.draw(vocab_calls(name), label="call")
    if invalid:
        return
    num_threads = kwargs.pop("num_threads", None)
    distill = name != "token_log_probs"
    names = ("student_logits", "teacher_logits") if distill else ("logits", "target")
    tensors = [_tensor(a) for a in args]
    if not distill:
        tensors[1] = tensors[1].long()
    if "target" in kwargs:
        kwargs["target"] = _tensor(np.asarray(kwargs["target"], np.int64))
    leaves = {}
    for index, tensor in enumerate(tensors[:2 if distill else 1]):
        if data.draw(st.booleans(), label=f"grad of {names[index]}"):
            tensors[index] = leaves[names[index]] = tensor.requires_grad_()
    copies = [t.detach().clone() for t in tensors]
    result = getattr(FL, name)(*tensors, num_threads=num_threads, **kwargs)
    _unmodified(copies, tensors)
    outputs = result if isinstance(result, tuple) else (result,)
    uppers = [_upstream(data.draw, out) for out in outputs]
    wanted = list(leaves)
    ref_kwargs = {k: (np.asarray(v.numpy()) if isinstance(v, torch.Tensor) else v)
                  for k, v in kwargs.items()}
    ref_args = [_wide(a) for a in args]
    with np.errstate(all="ignore"):
        if wanted:
            grads = torch.autograd.grad(outputs, list(leaves.values()), uppers)
            grads = [g.numpy() for g in grads]
            if distill:
                expected = reference.__dict__[f"{name}_value_and_grad"](
                    *ref_args, uppers[0].double().numpy(), wrt=tuple(wanted), **ref_kwargs)
                ref_values, ref_grads = (expected[0],), expected[1]
                # the distillation gradients that subtract a total: docs/accuracy.rst's
                # bound for them
                extras = distill_terms_bound(name, *args, uppers[0].double().numpy(),
                                             wrt=tuple(wanted), **ref_kwargs)
            else:
                extra = {"grad_entropy": uppers[1].double().numpy()} if len(uppers) > 1 else {}
                values, ref_grad = reference.token_log_probs_value_and_grad(
                    *ref_args, uppers[0].double().numpy(), **extra, **ref_kwargs)
                ref_values = values if isinstance(values, tuple) else (values,)
                ref_grads, extras = (ref_grad,), [0.0]
        else:
            values = getattr(reference, name)(*ref_args, **ref_kwargs)
            ref_values = values if isinstance(values, tuple) else (values,)
            grads, ref_grads, extras = (), (), ()
    dtype = args[0].dtype
    assert len(outputs) == len(ref_values)
    for out, ref in zip(outputs, ref_values):
        assert out.dtype == tensors[0].dtype
        assert_close_at_scale(out.detach().numpy(), ref, dtype, "loss")
    for input_name, grad, ref_grad, extra in zip(wanted, grads, ref_grads, extras):
        argument = args[names.index(input_name)]
        assert grad.shape == argument.shape and grad.dtype == argument.dtype
        assert_close_at_scale(grad, ref_grad, dtype, "grad", loss=ref_values[0],
                              wrt=argument, grad_output=uppers[0].double().numpy(),
                              extra=extra, what=f"grad w.r.t. {input_name}")


# ----------------------------------------------------------------------------------------
# Embedding losses: triplet_margin_loss, contrastive, contrastive_pairwise, info_nce
# ----------------------------------------------------------------------------------------

TORCH_EMBEDDING_LOSSES = {"triplet_margin": "triplet_margin_loss", "contrastive": "contrastive",
                          "contrastive_pairwise": "contrastive_pairwise", "info_nce": "info_nce"}


@pytest.mark.parametrize("name", sorted(TORCH_EMBEDDING_LOSSES))
@FUZZ
@given(data=st.data())
def test_fuzz_torch_embedding(name, data):
    """fastloss.torch's embedding losses on a random valid call of tests/test_fuzz.py's
    contrastive property (duplicated points and zero rows included), a random set of the
    embeddings requiring grad, and their own bounds (docs/accuracy.rst) with the random
    upstream gradient."""
    name, args, kwargs, invalid = data.draw(contrastive_calls(name), label="call")
    if invalid:
        return
    num_threads = kwargs.pop("num_threads")
    embedding = [a.dtype.kind == "f" and a.ndim == 2 for a in args]
    tensors = [_tensor(a) for a in args]
    leaves = {}
    for index, is_embedding in enumerate(embedding):
        if is_embedding and data.draw(st.booleans(), label=f"grad of input {index}"):
            tensors[index] = leaves[index] = tensors[index].requires_grad_()
    copies = [t.detach().clone() for t in tensors]
    loss = getattr(FL, TORCH_EMBEDDING_LOSSES[name])(*tensors, num_threads=num_threads,
                                                     **kwargs)
    _unmodified(copies, tensors)
    grads, upstream = _differentiate(data.draw, loss, leaves)
    rows = [a for a, is_embedding in zip(args, embedding) if is_embedding]
    value_dtype = np.result_type(*rows)
    ref_args = [_wide(a) for a in args]
    with np.errstate(all="ignore"):
        expected = _flatten(reference.__dict__[f"{name}_value_and_grad"](
            *ref_args, upstream, **kwargs))
    ref_loss, ref_grads = expected[0], expected[1:]
    assert len(ref_grads) == len(rows)
    # the bounds of docs/accuracy.rst's own, as tests/test_fuzz.py's contrastive property
    extras = [0.0] * (1 + len(rows))
    if name == "info_nce":
        extras = list(info_nce_products_bound(*args, value_dtype, grad_output=upstream,
                                              **kwargs))
    elif name == "contrastive_pairwise":
        options = {k: v for k, v in kwargs.items() if k != "metric"}
        extras = [0.0] + list(all_pairs_products_bound(
            args[0], None, upstream, metric=kwargs["metric"], labels=args[1],
            dtype=value_dtype, **options))
    elif name == "triplet_margin":
        extras = [0.0] + triplet_terms_bound(*args, grad_output=upstream, **kwargs)
    assert loss.dtype == torch.from_numpy(np.empty(0, value_dtype)).dtype
    assert_close_at_scale(loss.detach().numpy(), ref_loss, value_dtype, "loss",
                          extra=extras[0])
    indices = [i for i, is_embedding in enumerate(embedding) if is_embedding]
    for index, grad in zip(leaves, grads):
        k = indices.index(index)
        assert grad.shape == args[index].shape and grad.dtype == args[index].dtype
        assert_close_at_scale(grad, ref_grads[k], args[index].dtype, "grad", loss=ref_loss,
                              wrt=args[index], grad_output=upstream, extra=extras[1 + k],
                              what=f"grad w.r.t. input {index}")


# ----------------------------------------------------------------------------------------
# The classifier's product and cross-entropy, token log-probabilities; sequence sums
# ----------------------------------------------------------------------------------------

def _grad_subset(draw, tensors, names):
    """Each float tensor of `tensors` (a dict by name, None where absent) made to require
    grad or not, at random: the dict of those that do."""
    leaves = {}
    for name in names:
        if tensors.get(name) is not None and draw(st.booleans(), label=f"grad of {name}"):
            tensors[name] = leaves[name] = tensors[name].requires_grad_()
    return leaves


def _linear_reference_kwargs(kwargs, bias):
    """The reference's keywords of a linear call: its options but the kernels' own (block
    height, threads), and the bias in float64 where there is one."""
    ref_kwargs = {k: v for k, v in kwargs.items() if k not in ("num_threads", "block_rows")}
    if bias is not None:
        ref_kwargs["bias"] = _wide(bias)
    return ref_kwargs


def _assert_some_linear_grads(leaves, grads, ref_grads, bounds, arrays, dtype, ref_loss,
                              upstream):
    """The gradients autograd gave (of `leaves`, by name), each against the reference's
    of that name within the contract plus its products' bound."""
    names = ("hidden", "classifier", "bias")
    for name, grad in zip(leaves, grads):
        k = names.index(name)
        assert grad.dtype == dtype and grad.shape == np.shape(arrays[name]), name
        assert_close_at_scale(grad, ref_grads[k], dtype, "grad", loss=ref_loss,
                              wrt=arrays[name], grad_output=upstream, extra=bounds[k],
                              what=f"grad w.r.t. {name}")


@FUZZ
@given(data=st.data())
def test_fuzz_torch_linear(data):
    """fastloss.torch.linear_cross_entropy (torch's signature: linear_weight, linear_bias)
    on a random valid call of tests/test_fuzz.py's linear property, a random set of
    hidden, the classifier and the bias requiring grad."""
    import test_linear_cross_entropy as linear

    (hidden, classifier, target), kwargs, invalid = data.draw(linear_calls(), label="call")
    if invalid:
        return
    arrays = {"hidden": hidden, "classifier": classifier, "bias": kwargs.pop("bias", None)}
    tensors = {name: None if a is None else _tensor(a) for name, a in arrays.items()}
    leaves = _grad_subset(data.draw, tensors, ("hidden", "classifier", "bias"))
    target_tensor = _tensor(np.asarray(target, np.int64) if np.asarray(target).dtype.kind
                            != "f" else target)
    options = dict(kwargs)
    weight = options.pop("weight", None)
    copies = [t.detach().clone() for t in tensors.values() if t is not None]
    loss = FL.linear_cross_entropy(
        tensors["hidden"], tensors["classifier"], target_tensor, linear_bias=tensors["bias"],
        weight=None if weight is None else _tensor(weight), **options)
    _unmodified(copies, [t for t in tensors.values() if t is not None])
    grads, upstream = _differentiate(data.draw, loss, leaves)
    dtype = np.dtype(hidden.dtype)
    ref_kwargs = _linear_reference_kwargs(kwargs, arrays["bias"])
    if weight is not None:
        ref_kwargs["weight"] = _wide(weight)
    with np.errstate(all="ignore"):
        ref_loss, ref_grads = reference.linear_cross_entropy_value_and_grad(
            _wide(hidden), _wide(classifier), _wide(target), upstream, **ref_kwargs)
    options = {k: v for k, v in ref_kwargs.items() if k != "reduction"}
    options["bias"] = arrays["bias"]
    bounds = linear.products_bound(hidden, classifier, target, upstream, kwargs["reduction"],
                                   dtype, options)
    assert loss.dtype == tensors["hidden"].dtype
    assert_close_at_scale(loss.detach().numpy(), ref_loss, dtype, "loss", extra=bounds[0])
    _assert_some_linear_grads(leaves, grads, ref_grads, bounds[1:], arrays, dtype, ref_loss,
                              upstream)


@FUZZ
@given(data=st.data())
def test_fuzz_torch_linear_token_log_probs(data):
    """fastloss.torch.linear_token_log_probs on a random valid call of tests/test_fuzz.py's
    property, the entropy's output differentiated too where it is returned."""
    import test_linear_token_log_probs as linear

    (hidden, classifier, target), kwargs, invalid = data.draw(linear_tlp_calls(),
                                                               label="call")
    if invalid:
        return
    arrays = {"hidden": hidden, "classifier": classifier, "bias": kwargs.pop("bias", None)}
    tensors = {name: None if a is None else _tensor(a) for name, a in arrays.items()}
    leaves = _grad_subset(data.draw, tensors, ("hidden", "classifier", "bias"))
    copies = [t.detach().clone() for t in tensors.values() if t is not None]
    result = FL.linear_token_log_probs(tensors["hidden"], tensors["classifier"],
                                       _tensor(np.asarray(target, np.int64)),
                                       bias=tensors["bias"], **kwargs)
    _unmodified(copies, [t for t in tensors.values() if t is not None])
    outputs = result if isinstance(result, tuple) else (result,)
    uppers = [_upstream(data.draw, out) for out in outputs]
    grad_output = uppers[0].double().numpy()
    grad_entropy = uppers[1].double().numpy() if len(uppers) > 1 else None
    grads = [g.numpy() for g in torch.autograd.grad(outputs, list(leaves.values()), uppers)] \
        if leaves else []
    ref_kwargs = _linear_reference_kwargs(kwargs, arrays["bias"])
    if grad_entropy is not None:
        ref_kwargs["grad_entropy"] = grad_entropy
    with np.errstate(all="ignore"):
        ref_values, ref_grads = reference.linear_token_log_probs_value_and_grad(
            _wide(hidden), _wide(classifier), target, grad_output, **ref_kwargs)
    ref_values = ref_values if kwargs["return_entropy"] else (ref_values,)
    dtype = np.dtype(hidden.dtype)
    bounds = linear.products_bound(hidden, classifier, target, arrays["bias"], grad_output,
                                   grad_entropy, kwargs["temperature"],
                                   ignore_index=kwargs.get("ignore_index", -100), dtype=dtype)
    assert len(outputs) == len(ref_values)
    for got, want, bound, what in zip(outputs, ref_values, bounds[:2], ("log_prob", "entropy")):
        assert got.dtype == tensors["hidden"].dtype
        assert_close_at_scale(got.detach().numpy(), want, dtype, "loss", extra=bound,
                              what=what)
    _assert_some_linear_grads(leaves, grads, ref_grads, bounds[2:], arrays, dtype,
                              ref_values[0], grad_output)


@FUZZ
@given(data=st.data())
def test_fuzz_torch_sequence(data):
    """fastloss.torch.sequence_log_probs on a random valid call of tests/test_fuzz.py's
    property (masks of bools, integers and float weights of both signs)."""
    (values, mask), kwargs, invalid = data.draw(sequence_calls(), label="call")
    if invalid:
        return
    tensor = _tensor(values)
    requires_grad = data.draw(st.booleans(), label="requires grad")
    leaves = {"values": tensor.requires_grad_()} if requires_grad else {}
    mask_tensor = _tensor(mask)
    copies = [tensor.detach().clone(), mask_tensor.clone()]
    value = FL.sequence_log_probs(tensor, mask_tensor, kwargs["average"],
                                  num_threads=kwargs["num_threads"])
    _unmodified(copies, [tensor, mask_tensor])
    grads, upstream = _differentiate(data.draw, value, leaves)
    with np.errstate(all="ignore"):
        ref_value, ref_grad = reference.sequence_log_probs_value_and_grad(
            _wide(values), mask, upstream, average=kwargs["average"])
    dtype = values.dtype
    assert value.dtype == tensor.dtype and tuple(value.shape) == values.shape[:-1]
    assert_close_at_scale(value.detach().numpy(), ref_value, dtype, "loss",
                          extra=_sequence_sums_bound(values, mask, kwargs["average"]))
    if requires_grad:
        assert grads[0].shape == values.shape and grads[0].dtype == dtype
        assert_close_at_scale(grads[0], ref_grad, dtype, "grad", loss=ref_value, wrt=values,
                              grad_output=upstream,
                              extra=_sequence_grad_bound(mask, kwargs["average"], ref_grad))
