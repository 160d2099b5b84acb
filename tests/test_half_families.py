"""bfloat16 and float16 inputs of the families beyond cross-entropy, the pointwise and the
box losses: the vocabulary objectives (token_log_probs, distill_kl, jsd).

The contract of docs/accuracy.rst, "Half precision", checked element by element with
tests/test_half.py's helpers: against the float64 reference on the same (already rounded)
inputs, the values within the float32 contract, every gradient element the reference
rounded to the half type or one ulp from it.
"""

import numpy as np
import pytest

import fastloss
from fastloss import reference
from loss_specs import assert_close_contract
from simd_paths import simd_paths

from test_half import (BFLOAT16, FLOAT16, HALF_DTYPES, assert_gradient_contract, half_numpy,
                       assert_loss_contract)

WIDE = np.float64


def wide(array):
    return np.asarray(array).astype(WIDE)


def logits_of(dtype, shape, rng, scale=3.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


# ----------------------------------------------------------------------------------------
# token_log_probs
# ----------------------------------------------------------------------------------------

TLP_OPTIONS = ("plain", "temperature", "ignore_index", "entropy", "upstream_rows")


def tlp_case(dtype, option, rng, shape=(6, 2500)):
    logits = logits_of(dtype, shape, rng)
    target = rng.integers(0, shape[-1], shape[:-1])
    kwargs, upstream, upstream_entropy = {}, 1.0, None
    if option == "temperature":
        kwargs["temperature"] = 1.7
    elif option == "ignore_index":
        target[::3] = -100
    elif option == "entropy":
        upstream_entropy = 0.3
    elif option == "upstream_rows":
        upstream = rng.uniform(-2.0, 2.0, shape[:-1])
        upstream_entropy = rng.uniform(-1.0, 1.0, shape[:-1])
    return logits, target, kwargs, upstream, upstream_entropy


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("option", TLP_OPTIONS)
def test_token_log_probs_contract(dtype, option):
    rng = np.random.default_rng(1)
    logits, target, kwargs, upstream, upstream_entropy = tlp_case(dtype, option, rng)
    log_prob, entropy = fastloss.token_log_probs(logits, target, return_entropy=True,
                                                 **kwargs)
    ref_log_prob, ref_entropy = reference.token_log_probs(wide(logits), target,
                                                          return_entropy=True, **kwargs)
    assert log_prob.dtype == np.float32 and entropy.dtype == np.float32
    assert_loss_contract(log_prob, ref_log_prob)
    assert_loss_contract(entropy, ref_entropy)
    grad = fastloss.token_log_probs_grad(logits, target, upstream,
                                         grad_entropy=upstream_entropy, **kwargs)
    ref_grad = reference.token_log_probs_grad(wide(logits), target, upstream,
                                              grad_entropy=upstream_entropy, **kwargs)
    assert_gradient_contract(grad, ref_grad, dtype)
    # fused: the same values and the same gradient bits
    (fused_lp, fused_h), fused_grad = fastloss.token_log_probs_value_and_grad(
        logits, target, upstream, grad_entropy=upstream_entropy, return_entropy=True,
        **kwargs)
    np.testing.assert_array_equal(fused_lp, log_prob)
    np.testing.assert_array_equal(fused_h, entropy)
    np.testing.assert_array_equal(fused_grad.view(np.uint16), grad.view(np.uint16))
    # grad_dtype="float32": the same computation, unrounded (the float32 contract)
    grad32 = fastloss.token_log_probs_grad(logits, target, upstream,
                                           grad_entropy=upstream_entropy, grad_dtype="float32",
                                           **kwargs)
    assert grad32.dtype == np.float32
    assert_close_contract(grad32, ref_grad, np.float32, "grad")
    assert_gradient_contract(grad32.astype(dtype), ref_grad, dtype)


# ----------------------------------------------------------------------------------------
# distill_kl and jsd
# ----------------------------------------------------------------------------------------

DISTILL_CASES = [
    ("distill_kl", {"direction": "forward"}),
    ("distill_kl", {"direction": "reverse"}),
    ("distill_kl", {"direction": "forward", "temperature": 2.0}),
    ("jsd", {"beta": 0.5}),
    ("jsd", {"beta": 0.1, "temperature": 0.7}),
    ("jsd", {"beta": 0.0}),
    ("jsd", {"beta": 1.0}),
]
DISTILL_IDS = ["forward", "reverse", "forward_t2", "jsd", "jsd_beta_t", "jsd_beta0",
               "jsd_beta1"]
BOTH = ("student_logits", "teacher_logits")


def distill_inputs(dtype, rng, shape=(5, 2100)):
    student = logits_of(dtype, shape, rng, 2.0)
    # a teacher near the student, as in distillation (the divergences are small)
    teacher = (wide(student) + rng.standard_normal(shape)).astype(dtype)
    return student, teacher


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("name,options", DISTILL_CASES, ids=DISTILL_IDS)
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
def test_distill_contract(dtype, name, options, reduction):
    rng = np.random.default_rng(2)
    student, teacher = distill_inputs(dtype, rng)
    target = rng.integers(0, 10, student.shape[0])
    target[1] = -100
    kwargs = dict(options, reduction=reduction, target=target)
    upstream = rng.uniform(0.5, 2.0, student.shape[0]) if reduction == "none" else 1.5
    loss = getattr(fastloss, name)(student, teacher, **kwargs)
    ref_loss = getattr(reference, name)(wide(student), wide(teacher), **kwargs)
    if reduction == "none":
        assert loss.dtype == np.float32
    assert_loss_contract(loss, ref_loss)
    grads = getattr(fastloss, f"{name}_grad")(student, teacher, upstream, wrt=BOTH, **kwargs)
    ref_grads = getattr(reference, f"{name}_grad")(wide(student), wide(teacher), upstream,
                                                   wrt=BOTH, **kwargs)
    for grad, ref_grad in zip(grads, ref_grads):
        assert_gradient_contract(grad, ref_grad, dtype)
    fused_loss, fused = getattr(fastloss, f"{name}_value_and_grad")(
        student, teacher, upstream, wrt=BOTH, **kwargs)
    np.testing.assert_array_equal(np.asarray(fused_loss), np.asarray(loss))
    for grad, fused_grad in zip(grads, fused):
        np.testing.assert_array_equal(fused_grad.view(np.uint16), grad.view(np.uint16))
    # the student's gradient alone is the same as with the teacher's
    alone = getattr(fastloss, f"{name}_grad")(student, teacher, upstream, **kwargs)
    np.testing.assert_array_equal(alone.view(np.uint16), grads[0].view(np.uint16))
    grad32 = getattr(fastloss, f"{name}_grad")(student, teacher, upstream, wrt=BOTH,
                                               grad_dtype=np.float32, **kwargs)
    for grad, ref_grad in zip(grad32, ref_grads):
        assert grad.dtype == np.float32
        assert_gradient_contract(grad.astype(dtype), ref_grad, dtype)


def vocab_calls(dtype, rng, shape):
    """(name, callable, reference callable) of every vocabulary function's fused call."""
    logits = logits_of(dtype, shape, rng)
    student, teacher = distill_inputs(dtype, rng, shape)
    target = rng.integers(0, shape[-1], shape[:-1])
    calls = [("token_log_probs",
              lambda module: module.token_log_probs_value_and_grad(
                  *((logits, target) if module is fastloss else (wide(logits), target)),
                  0.7, grad_entropy=0.2, return_entropy=True))]
    for name, options in DISTILL_CASES[:4]:
        calls.append((name, lambda module, name=name, options=options: getattr(
            module, f"{name}_value_and_grad")(
                *((student, teacher) if module is fastloss else (wide(student), wide(teacher))),
                wrt=BOTH, **options)))
    return calls


def check_vocab_call(result, expected, dtype):
    values, grads = result
    ref_values, ref_grads = expected
    for value, ref_value in zip(values if isinstance(values, tuple) else (values,),
                                ref_values if isinstance(ref_values, tuple) else (ref_values,)):
        assert_loss_contract(value, ref_value)
    for grad, ref_grad in zip(grads if isinstance(grads, tuple) else (grads,),
                              ref_grads if isinstance(ref_grads, tuple) else (ref_grads,)):
        assert_gradient_contract(grad, ref_grad, dtype)


def same_bits(first, second):
    """Two results of a vocabulary call, equal bit for bit."""
    first = first if isinstance(first, tuple) else (first,)
    second = second if isinstance(second, tuple) else (second,)
    assert len(first) == len(second)
    for a, b in zip(first, second):
        if isinstance(a, tuple):
            same_bits(a, b)
        else:
            a, b = np.atleast_1d(a), np.atleast_1d(b)
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_vocab_every_simd_path(dtype):
    # several chunks of 2048 classes, and a tail
    rng = np.random.default_rng(3)
    calls = vocab_calls(dtype, rng, (3, 4500))
    ran = 0
    with simd_paths() as paths:
        for path in paths:
            ran += 1
            for name, call in calls:
                check_vocab_call(call(fastloss), call(reference), dtype)
    assert ran >= 1


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_vocab_thread_invariance(dtype):
    rng = np.random.default_rng(4)
    logits = logits_of(dtype, (37, 3000), rng)
    target = rng.integers(0, 3000, 37)
    student, teacher = distill_inputs(dtype, rng, (37, 3000))
    for threads in (2, 3):
        same_bits(fastloss.token_log_probs_value_and_grad(logits, target, return_entropy=True,
                                                          grad_entropy=0.5, num_threads=1),
                  fastloss.token_log_probs_value_and_grad(logits, target, return_entropy=True,
                                                          grad_entropy=0.5,
                                                          num_threads=threads))
        for name, options in DISTILL_CASES[:4]:
            function = getattr(fastloss, f"{name}_value_and_grad")
            same_bits(function(student, teacher, wrt=BOTH, num_threads=1, **options),
                      function(student, teacher, wrt=BOTH, num_threads=threads, **options))


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_vocab_strided_batched_and_empty(dtype):
    rng = np.random.default_rng(5)
    # a batch of (2, 3) rows, and rows that are every other row of a larger array with a
    # strided last axis (copied for the kernel)
    logits = logits_of(dtype, (2, 3, 300), rng)
    target = rng.integers(0, 300, (2, 3))
    strided = logits_of(dtype, (8, 600), rng)[::2, ::2]
    for x, t in ((logits, target), (strided, rng.integers(0, 300, 4))):
        value, grad = fastloss.token_log_probs_value_and_grad(x, t)
        ref_value, ref_grad = reference.token_log_probs_value_and_grad(wide(x), t)
        assert value.shape == t.shape and grad.shape == x.shape
        assert_loss_contract(value, ref_value)
        assert_gradient_contract(grad, ref_grad, dtype)
        loss, grads = fastloss.jsd_value_and_grad(x, x[..., ::-1], wrt=BOTH, reduction="none")
        ref_loss, ref_grads = reference.jsd_value_and_grad(wide(x), wide(x[..., ::-1]),
                                                           wrt=BOTH, reduction="none")
        assert_loss_contract(loss, ref_loss)
        for grad, ref_grad in zip(grads, ref_grads):
            assert_gradient_contract(grad, ref_grad, dtype)
    # out= of the half dtype, written in place
    out = np.full(logits.shape, np.nan, dtype)
    result = fastloss.token_log_probs_grad(logits, target, out=out)
    assert result is out
    same_bits(out, fastloss.token_log_probs_grad(logits, target))
    out32 = np.empty(logits.shape, np.float32)
    assert fastloss.distill_kl_grad(logits, logits[..., ::-1], out=out32,
                                    grad_dtype="float32") is out32
    # no rows
    empty = np.empty((0, 7), dtype)
    value, grad = fastloss.token_log_probs_value_and_grad(empty, np.empty(0, np.int64))
    assert value.shape == (0,) and value.dtype == np.float32
    assert grad.shape == (0, 7) and grad.dtype == dtype
    loss, grad = fastloss.distill_kl_value_and_grad(empty, empty, reduction="sum")
    assert loss == 0.0 and grad.shape == (0, 7) and grad.dtype == dtype


def test_vocab_float16_overflow_is_ieee():
    # 70000 overflows float16 to inf: that row's values and gradient are NaN (as +inf
    # logits in float32), the others are untouched
    rng = np.random.default_rng(6)
    logits = rng.standard_normal((3, 40)).astype(np.float16)
    with np.errstate(over="ignore"):
        logits[1, 5] = np.float16(np.float32(7e4))
    assert np.isinf(logits[1, 5])
    target = np.array([0, 1, 2])
    value, grad = fastloss.token_log_probs_value_and_grad(logits, target)
    np.testing.assert_array_equal(np.isnan(value), [False, True, False])
    assert np.isnan(grad[1]).all() and not np.isnan(grad[[0, 2]]).any()
    ref_value, ref_grad = reference.token_log_probs_value_and_grad(wide(logits), target)
    assert_loss_contract(value[[0, 2]], ref_value[[0, 2]])
    assert_gradient_contract(grad[[0, 2]], ref_grad[[0, 2]], FLOAT16)
    loss, grad = fastloss.distill_kl_value_and_grad(logits, logits[:, ::-1], reduction="none")
    np.testing.assert_array_equal(np.isnan(loss), [False, True, False])
    assert np.isnan(grad[1]).all() and not np.isnan(grad[[0, 2]]).any()
    # a gradient beyond float16's range is inf
    grad = fastloss.token_log_probs_grad(logits[[0]], target[:1], 1e6)
    ref_grad = reference.token_log_probs_grad(wide(logits[[0]]), target[:1], 1e6)
    assert np.isinf(grad).any()
    assert_gradient_contract(grad, ref_grad, FLOAT16)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_vocab_half_argument_errors(dtype):
    rng = np.random.default_rng(7)
    logits = logits_of(dtype, (4, 10), rng)
    target = np.array([1, 2, 3, 4])
    with pytest.raises(ValueError, match=r"^grad_dtype: expected None, the logits' dtype"):
        fastloss.token_log_probs_grad(logits, target, grad_dtype=np.float64)
    with pytest.raises(TypeError, match=r"^grad_dtype: expected None or a dtype"):
        fastloss.distill_kl_grad(logits, logits, grad_dtype=3)
    with pytest.raises(ValueError, match=r"^grad_dtype: only the gradient functions"):
        fastloss._kernels.tlp_call(
            False, logits, target, 1.0, -100, True, False, grad_dtype="float32")
    with pytest.raises(TypeError, match=r"^out: expected dtype float32"):
        fastloss.jsd_grad(logits, logits, grad_dtype="float32", out=logits.copy())
    with pytest.raises(TypeError, match=rf"^out: expected dtype {dtype}"):
        fastloss.token_log_probs_grad(logits, target, out=logits.astype(np.float32))
    # the two logits in one dtype
    other = FLOAT16 if dtype == BFLOAT16 else BFLOAT16
    for teacher in (logits.astype(np.float32), logits.astype(other)):
        with pytest.raises(TypeError, match=r"^teacher_logits: expected the student's dtype "
                                            r".*float32, float64, float16 or bfloat16"):
            fastloss.distill_kl(logits, teacher)


def test_vocab_unsupported_dtypes_name_the_argument_and_the_dtypes():
    logits = np.random.default_rng(8).standard_normal((4, 5))
    target = np.array([0, 1, 2, 3])
    for bad in (np.int16, np.complex64, np.uint16):
        with pytest.raises(TypeError, match=r"^logits: expected a float32 or float64 array, "
                                            r"or float16 / ml_dtypes.bfloat16, got dtype"):
            fastloss.token_log_probs(logits.astype(bad), target)
        with pytest.raises(TypeError, match=r"^student_logits: expected a float32 or float64 "
                                            r"array, or float16 / ml_dtypes.bfloat16"):
            fastloss.jsd(logits.astype(bad), logits.astype(bad))


# ----------------------------------------------------------------------------------------
# The torch adapter: torch.bfloat16 / torch.float16 logits
# ----------------------------------------------------------------------------------------

def torch_half(torch_dtype):
    """(torch, fastloss.torch, the torch dtype, the NumPy dtype) of a half type's name."""
    torch = pytest.importorskip("torch")
    import fastloss.torch as FL
    return (torch, FL, getattr(torch, torch_dtype),
            BFLOAT16 if torch_dtype == "bfloat16" else FLOAT16)


@pytest.mark.parametrize("torch_dtype", ["bfloat16", "float16"])
def test_torch_vocab_half(torch_dtype):
    torch, FL, dtype, numpy_dtype = torch_half(torch_dtype)
    rng = np.random.default_rng(9)
    logits = torch.from_numpy(rng.standard_normal((2, 3, 400)) * 3).to(dtype)
    target = torch.from_numpy(rng.integers(0, 400, (2, 3)))
    x = logits.clone().requires_grad_(True)
    log_prob, entropy = FL.token_log_probs(x, target, return_entropy=True, temperature=1.3)
    assert log_prob.dtype == dtype and entropy.dtype == dtype  # torch's dtype
    (log_prob.sum() * 0.5 + entropy.sum() * 0.25).backward()
    assert x.grad.dtype == dtype
    values = half_numpy(logits)
    ref_lp, ref_h = reference.token_log_probs(wide(values), target.numpy(), return_entropy=True,
                                              temperature=1.3)
    ref_grad = reference.token_log_probs_grad(wide(values), target.numpy(), 0.5,
                                              grad_entropy=0.25, temperature=1.3)
    expected = torch.from_numpy(np.stack([ref_lp, ref_h])).to(dtype).double()
    # the float32 values rounded once more to the half type: within one ulp of the
    # rounded reference
    got = torch.stack([log_prob, entropy]).detach().double()
    assert torch.allclose(got, expected, rtol=2.0 ** -7, atol=0)
    assert_gradient_contract(half_numpy(x.grad), ref_grad, numpy_dtype)
    # distillation: fused (reduced, gradient in the forward) and per-row
    student = logits.clone().requires_grad_(True)
    teacher = (logits.double() + torch.from_numpy(rng.standard_normal((2, 3, 400)))).to(
        dtype).requires_grad_(True)
    ref_s, ref_t = half_numpy(logits), half_numpy(teacher)
    for name, options in (("distill_kl", {"direction": "reverse"}), ("jsd", {"beta": 0.3})):
        for reduction in ("batchmean", "none"):
            student.grad = teacher.grad = None
            loss = getattr(FL, name)(student, teacher, reduction=reduction, **options)
            assert loss.dtype == dtype
            (loss if reduction == "batchmean" else loss.sum()).backward()
            ref_grads = getattr(reference, f"{name}_grad")(
                wide(ref_s), wide(ref_t), 1.0 if reduction == "batchmean" else np.ones((2, 3)),
                wrt=BOTH, reduction=reduction, **options)
            for tensor, ref_grad in zip((student, teacher), ref_grads):
                assert tensor.grad.dtype == dtype
                assert_gradient_contract(half_numpy(tensor.grad), ref_grad,
                                         numpy_dtype)
    # the inputs are read in place, never modified
    assert torch.equal(student.detach(), logits)


def test_torch_vocab_half_errors():
    torch = pytest.importorskip("torch")
    import fastloss.torch as FL
    x = torch.randn(3, 7)
    target = torch.tensor([0, 1, 2])
    with pytest.raises(TypeError, match=r"student's dtype.*float32, float64, bfloat16 or "
                                        r"float16\), got torch.float32"):
        FL.distill_kl(x.bfloat16(), x)
    with pytest.raises(TypeError, match=r"logits: expected a float32, float64, bfloat16 or "
                                        r"float16 tensor, got torch.int32"):
        FL.token_log_probs(x.int(), target)
    with pytest.raises(TypeError, match=r"student_logits: expected a float32, float64, "
                                        r"bfloat16 or float16 tensor, got torch.complex64"):
        FL.jsd(x.to(torch.complex64), x.to(torch.complex64))


# ----------------------------------------------------------------------------------------
# sequence_log_probs
# ----------------------------------------------------------------------------------------

def sequence_inputs(dtype, mask_kind, rng, shape=(7, 300)):
    values = (-rng.exponential(2.0, shape)).astype(dtype)
    mask = rng.random(shape) < 0.7
    if mask_kind == "int":
        mask = mask.astype(np.int64)
    elif mask_kind == "float":
        mask = mask * rng.uniform(0.5, 1.5, shape)  # weights, read as float32
        mask = mask.astype(np.float32)
    elif mask_kind == "half":
        mask = mask.astype(dtype)
    mask[2] = 0  # a row with no answer token: sum 0, average NaN
    return values, mask


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("mask_kind", ["bool", "int", "float", "half"])
@pytest.mark.parametrize("average", [False, True])
def test_sequence_log_probs_contract(dtype, mask_kind, average):
    rng = np.random.default_rng(10)
    values, mask = sequence_inputs(dtype, mask_kind, rng)
    mask64 = wide(mask)
    upstream = rng.uniform(-2.0, 2.0, values.shape[0])
    value = fastloss.sequence_log_probs(values, mask, average=average)
    ref_value = reference.sequence_log_probs(wide(values), mask64, average=average)
    assert value.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(value), np.isnan(ref_value))
    finite = ~np.isnan(ref_value)
    assert_loss_contract(value[finite], ref_value[finite])
    for grad_output in (1.0, upstream):
        grad = fastloss.sequence_log_probs_grad(values, mask, grad_output, average=average)
        with np.errstate(invalid="ignore"):  # the row without tokens: NaN, as it should
            ref_grad = reference.sequence_log_probs_grad(wide(values), mask64, grad_output,
                                                         average=average)
        assert_gradient_contract(grad, ref_grad, dtype)
        fused_value, fused_grad = fastloss.sequence_log_probs_value_and_grad(
            values, mask, grad_output, average=average)
        same_bits(fused_value, value)
        same_bits(fused_grad, grad)
    # thread invariance, and out= in place over the values
    same_bits(fastloss.sequence_log_probs_value_and_grad(values, mask, upstream,
                                                         average=average, num_threads=1),
              fastloss.sequence_log_probs_value_and_grad(values, mask, upstream,
                                                         average=average, num_threads=3))
    copy = values.copy()
    assert fastloss.sequence_log_probs_grad(copy, mask, upstream, average=average,
                                            out=copy) is copy
    same_bits(copy, fastloss.sequence_log_probs_grad(values, mask, upstream, average=average))


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_sequence_log_probs_half_layouts(dtype):
    rng = np.random.default_rng(11)
    values, mask = sequence_inputs(dtype, "bool", rng, (4, 2, 50))
    strided = values[:, :, ::2]
    for x, m in ((values, mask), (strided, mask[:, :, ::2]), (values[:0], mask[:0])):
        value, grad = fastloss.sequence_log_probs_value_and_grad(x, m)
        assert value.shape == x.shape[:-1] and grad.shape == x.shape and grad.dtype == dtype
        if x.size:
            assert_loss_contract(value, reference.sequence_log_probs(wide(x), wide(m)))
            assert_gradient_contract(grad, reference.sequence_log_probs_grad(wide(x), wide(m)),
                                     dtype)
    # a NaN or -inf at a masked-out token does not reach its row
    x = values.copy()
    x[0, 0, ~mask[0, 0]] = np.nan
    x[0, 1, ~mask[0, 1]] = -np.inf
    same_bits(fastloss.sequence_log_probs(x, mask), fastloss.sequence_log_probs(values, mask))


def test_sequence_log_probs_half_errors():
    values = np.zeros((2, 3), np.float16)
    for bad in (np.int16, np.complex64):
        with pytest.raises(TypeError, match=r"^token_log_probs: expected a float32 or float64 "
                                            r"array, or float16 / ml_dtypes.bfloat16"):
            fastloss.sequence_log_probs(values.astype(bad), np.ones((2, 3), bool))
    with pytest.raises(TypeError, match=r"^out: expected dtype float16"):
        fastloss.sequence_log_probs_grad(values, np.ones((2, 3), bool),
                                         out=np.empty((2, 3), np.float32))


@pytest.mark.parametrize("torch_dtype", ["bfloat16", "float16"])
def test_torch_sequence_log_probs_half(torch_dtype):
    torch, FL, dtype, numpy_dtype = torch_half(torch_dtype)
    rng = np.random.default_rng(12)
    values, mask = sequence_inputs(numpy_dtype, "bool", rng, (3, 40))
    mask[2, 0] = True
    x = torch.from_numpy(values.view(np.int16)).view(dtype) if numpy_dtype == BFLOAT16 \
        else torch.from_numpy(values)
    x = x.clone().requires_grad_(True)
    upstream = torch.tensor([0.5, -1.0, 2.0], dtype=dtype)
    out = FL.sequence_log_probs(x, torch.from_numpy(mask), average=True)
    assert out.dtype == dtype
    out.backward(upstream)
    assert x.grad.dtype == dtype
    ref_grad = reference.sequence_log_probs_grad(wide(values), wide(mask),
                                                 upstream.double().numpy(), average=True)
    assert_gradient_contract(half_numpy(x.grad), ref_grad, numpy_dtype)
    ref_value = reference.sequence_log_probs(wide(values), wide(mask), average=True)
    assert torch.equal(out, torch.from_numpy(ref_value.astype(np.float32)).to(dtype))
