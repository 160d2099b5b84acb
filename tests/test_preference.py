"""What is particular to the preference functions: bradley_terry (the reward model's
loss), dpo (sigmoid with label smoothing, hinge, ipo) and sequence_log_probs, at the
public API and in the torch adapter. Parity with the reference for every registry case,
dtype and reduction, finite differences, refused option values, threads and the
adapter against torchrl's and TRL's formulas (tests/counterparts.py) run from the
registry (test_registry.py, test_elementwise.py, test_threads.py); here: the formulas
against torch written out as torchrl and TRL write them, on inputs of our choosing, the
kinks and saturations, the bad input, and sequence_log_probs (its own kernel), whole.
"""
import numpy as np
import pytest

import fastloss
from fastloss import reference
from loss_specs import DTYPES, assert_close_contract, bitwise_equal, central_differences

torch = pytest.importorskip("torch")
import fastloss.torch as FL  # noqa: E402
from counterparts import bradley_terry as torchrl_bradley_terry  # noqa: E402
from counterparts import dpo as trl_dpo  # noqa: E402

DPO_INPUTS = ("policy_chosen", "policy_rejected", "reference_chosen", "reference_rejected")


def _torch_grads(function, arrays, keywords, reduction, upstream=None):
    """Loss and gradients of every input of ``function`` (torch, in float64)."""
    leaves = [torch.from_numpy(np.asarray(a, dtype=np.float64)).requires_grad_() for a in arrays]
    loss = function(*leaves, **keywords, reduction=reduction)
    grad_output = torch.ones_like(loss) if upstream is None else torch.as_tensor(upstream)
    grads = torch.autograd.grad(loss, leaves, grad_output.to(loss.dtype))
    return loss.detach().numpy(), [g.numpy() for g in grads]


# --- bradley_terry ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("margin", ["none", "scalar", "per-pair"])
def test_bradley_terry_is_torchrls_reward_model_loss(margin, reduction, dtype, rng):
    chosen = (rng.standard_normal(257) * 3).astype(dtype)
    rejected = (rng.standard_normal(257) * 3).astype(dtype)
    options = {"none": {}, "scalar": {"margin": 0.75},
               "per-pair": {"margin": rng.uniform(0, 2, 257).astype(dtype)}}[margin]
    upstream = rng.uniform(-1, 2, 257) if reduction == "none" else 0.5
    loss, grads = fastloss.bradley_terry_value_and_grad(
        chosen, rejected, upstream, reduction=reduction, wrt=("chosen", "rejected"),
        **options)
    margin_value = options.get("margin", 0.0)
    keywords = {"margin": torch.from_numpy(np.asarray(margin_value, dtype=np.float64))}
    expected, expected_grads = _torch_grads(torchrl_bradley_terry, (chosen, rejected),
                                            keywords, reduction, upstream)
    assert_close_contract(np.asarray(loss, dtype=np.float64), expected, dtype, "loss")
    for grad, expected_grad in zip(grads, expected_grads):
        assert grad.dtype == dtype
        assert_close_contract(grad, expected_grad, dtype, "grad")


@pytest.mark.parametrize("dtype", DTYPES)
def test_bradley_terry_never_overflows_and_keeps_tiny_losses(dtype):
    """softplus(-z) per sign of z: rewards of +-1e4 give the limits (z large: a loss and
    slope of exp(-z), not 0 from 1 - sigmoid; z very negative: -z and -1), never inf
    or NaN."""
    chosen = np.array([1e4, -1e4, 30.0, -30.0, 0.0], dtype=dtype)
    rejected = np.zeros(5, dtype=dtype)
    loss = fastloss.bradley_terry(chosen, rejected, reduction="none")
    grad = fastloss.bradley_terry_grad(chosen, rejected, reduction="sum")
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))
    expected_loss = np.array([0.0, 1e4, np.exp(-30.0), 30.0, np.log(2.0)])
    expected_grad = np.array([0.0, -1.0, -np.exp(-30.0), -1.0, -0.5])
    assert_close_contract(loss, expected_loss, dtype, "loss")
    assert_close_contract(grad, expected_grad, dtype, "grad")
    assert loss[2] > 0 and grad[2] < 0  # tiny, and kept


def test_bradley_terry_margin_broadcasts_to_the_pairs_and_never_enlarges_them(rng):
    chosen = rng.standard_normal((4, 3))
    rejected = rng.standard_normal((4, 3))
    per_row = rng.uniform(0, 1, (4, 1))
    assert np.allclose(fastloss.bradley_terry(chosen, rejected, margin=per_row, reduction="none"),
                       reference.bradley_terry(chosen, rejected, margin=per_row,
                                               reduction="none"), rtol=1e-13)
    with pytest.raises(ValueError, match="margin"):
        fastloss.bradley_terry(chosen, rejected, margin=np.zeros((2, 4, 3)))
    with pytest.raises(ValueError, match="margin"):
        fastloss.bradley_terry(chosen, rejected, margin=np.array([0.0, np.nan, 1.0]))
    with pytest.raises(TypeError, match="margin"):
        fastloss.bradley_terry(chosen, rejected, margin="0.5")
    with pytest.raises(ValueError, match="rejected"):
        fastloss.bradley_terry(chosen, rejected[:3])


def test_bradley_terry_adapter_margin_is_not_differentiated():
    chosen = torch.randn(8, dtype=torch.float64, requires_grad=True)
    rejected = torch.randn(8, dtype=torch.float64, requires_grad=True)
    margin = torch.rand(8, dtype=torch.float64)
    loss = FL.BradleyTerryLoss(margin=0.5)(chosen, rejected)
    expected = -torch.nn.functional.logsigmoid(chosen - rejected - 0.5).mean()
    assert torch.allclose(loss, expected, rtol=1e-13, atol=0)
    FL.bradley_terry(chosen, rejected, margin=margin).backward()
    assert chosen.grad is not None and rejected.grad is not None
    with pytest.raises(RuntimeError, match="margin"):
        FL.bradley_terry(chosen, rejected, margin=margin.clone().requires_grad_())


# --- dpo ----------------------------------------------------------------------------------------

def _dpo_inputs(rng, n, dtype, spread=10.0):
    reference_chosen = -rng.uniform(10, 300, n)
    reference_rejected = -rng.uniform(10, 300, n)
    return tuple(a.astype(dtype) for a in (
        reference_chosen + rng.normal(0, spread, n), reference_rejected + rng.normal(0, spread, n),
        reference_chosen, reference_rejected))


DPO_SETTINGS = [
    {"loss_type": "sigmoid"},
    {"loss_type": "sigmoid", "label_smoothing": 0.1, "beta": 0.3},
    {"loss_type": "sigmoid", "label_smoothing": 0.5},
    {"loss_type": "hinge", "beta": 0.2},
    {"loss_type": "ipo", "beta": 0.05},
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("settings", DPO_SETTINGS, ids=lambda s: "-".join(
    f"{k}={v}" for k, v in s.items()))
def test_dpo_is_trls_dpo_loss(settings, reduction, dtype, rng):
    """TRL's DPOTrainer.dpo_loss, written out in torch (tests/counterparts.py), in float64:
    the loss and the gradients of all four inputs."""
    arrays = _dpo_inputs(rng, 301, dtype)
    upstream = rng.uniform(-1, 2, 301) if reduction == "none" else 1.5
    loss, grads = fastloss.dpo_value_and_grad(*arrays, upstream, reduction=reduction,
                                              wrt=DPO_INPUTS, **settings)
    expected, expected_grads = _torch_grads(trl_dpo, arrays, settings, reduction, upstream)
    assert_close_contract(np.asarray(loss, dtype=np.float64), expected, dtype, "loss")
    for name, grad, expected_grad in zip(DPO_INPUTS, grads, expected_grads):
        assert grad.dtype == dtype, name
        assert_close_contract(grad, expected_grad, dtype, "grad", what=f"d/d{name}")


def test_dpo_gradients_of_the_four_inputs_are_one_slope_with_signs(rng):
    arrays = _dpo_inputs(rng, 50, np.float64)
    pc, pr, rc, rr = fastloss.dpo_grad(*arrays, wrt=DPO_INPUTS)
    assert np.array_equal(pr, -pc) and np.array_equal(rc, -pc) and np.array_equal(rr, pc)


def test_dpo_gradient_by_finite_differences(rng):
    arrays = _dpo_inputs(rng, 7, np.float64, spread=3.0)
    for settings in DPO_SETTINGS:
        grads = fastloss.dpo_grad(*arrays, wrt=DPO_INPUTS, **settings)
        for index, grad in enumerate(grads):
            def loss_of(moved, index=index):
                inputs = list(arrays)
                inputs[index] = moved
                return reference.dpo(*inputs, **settings)
            numeric = central_differences(loss_of, arrays[index], 1e-3)
            np.testing.assert_allclose(grad, numeric, rtol=1e-7, atol=1e-10,
                                       err_msg=f"{settings} d/d{DPO_INPUTS[index]}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_dpo_hinge_kink_and_saturation_follow_torch(dtype):
    """At 1 - beta h == 0 relu's backward gives 0 (torch's threshold_backward), and the
    sigmoid loss at |beta h| of 1e4 is 0 or beta |h| with slopes 0 or -beta, finite."""
    zero = np.zeros(3, dtype=dtype)
    # h = (pc - pr) = 2, 3, 1 with beta = 0.5: 1 - beta h = 0, -0.5, 0.5
    pc = np.array([2.0, 3.0, 1.0], dtype=dtype)
    loss = fastloss.dpo(pc, zero, zero, zero, beta=0.5, loss_type="hinge", reduction="none")
    grad = fastloss.dpo_grad(pc, zero, zero, zero, beta=0.5, loss_type="hinge",
                             reduction="sum")
    assert loss.tolist() == [0.0, 0.0, 0.5]
    assert grad.tolist() == [0.0, 0.0, -0.5]
    h = np.array([1e5, -1e5, 0.0], dtype=dtype)
    loss = fastloss.dpo(h, zero, zero, zero, beta=0.1, reduction="none")
    grad = fastloss.dpo_grad(h, zero, zero, zero, beta=0.1, reduction="sum")
    assert_close_contract(loss, np.array([0.0, 1e4, np.log(2.0)]), dtype, "loss")
    assert_close_contract(grad, np.array([0.0, -0.1, -0.05]), dtype, "grad")


def test_dpo_refuses_bad_options_naming_them(rng):
    arrays = _dpo_inputs(rng, 4, np.float64)
    for beta in (0.0, -0.1, np.inf, np.nan):
        with pytest.raises(ValueError, match="beta"):
            fastloss.dpo(*arrays, beta=beta)
    with pytest.raises(ValueError, match="loss_type"):
        fastloss.dpo(*arrays, loss_type="kto")
    with pytest.raises(TypeError, match="loss_type"):
        fastloss.dpo(*arrays, loss_type=None)
    for smoothing in (-0.01, 0.51, 1.0):
        with pytest.raises(ValueError, match="label_smoothing"):
            fastloss.dpo(*arrays, label_smoothing=smoothing)
    for loss_type in ("hinge", "ipo"):
        # TRL ignores it with a warning; a setting that would do nothing is an error here
        with pytest.raises(ValueError, match="label_smoothing"):
            fastloss.dpo_grad(*arrays, loss_type=loss_type, label_smoothing=0.1)
        with pytest.raises(ValueError, match="label_smoothing"):
            FL.dpo(*(torch.from_numpy(a) for a in arrays), loss_type=loss_type,
                   label_smoothing=0.1)
    with pytest.raises(ValueError, match="reference_rejected"):
        fastloss.dpo(*arrays[:3], arrays[3][:3])
    with pytest.raises(TypeError, match="policy_chosen"):
        fastloss.dpo(arrays[0].astype(np.int64), *arrays[1:])


def test_dpo_module_and_reference_without_gradients():
    """DPOLoss as TRL uses it: policy log-probabilities that require grad, the
    reference's computed under no_grad; the policy gets TRL's gradients."""
    rng = np.random.default_rng(7)
    arrays = [torch.from_numpy(a) for a in _dpo_inputs(rng, 16, np.float32)]
    policy = [a.clone().requires_grad_() for a in arrays[:2]]
    module = FL.DPOLoss(beta=0.2, label_smoothing=0.05)
    assert "beta=0.2" in repr(module)
    loss = module(*policy, *arrays[2:])
    loss.backward()
    theirs = [a.clone().double().requires_grad_() for a in arrays[:2]]
    expected = trl_dpo(*theirs, *(a.double() for a in arrays[2:]), beta=0.2,
                       label_smoothing=0.05)
    expected.backward()
    assert loss.dtype == torch.float32
    assert_close_contract(loss.detach().double().numpy(), expected.detach().numpy(),
                          np.float32, "loss")
    for ours, reference_leaf in zip(policy, theirs):
        assert_close_contract(ours.grad.double().numpy(), reference_leaf.grad.numpy(),
                              np.float32, "grad")


# --- sequence_log_probs -------------------------------------------------------------------------

def _sequence_inputs(rng, shape, dtype):
    values = np.log(rng.uniform(1e-4, 1.0, shape)).astype(dtype)
    mask = rng.random(shape) < 0.7
    return values, mask


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("average", [False, True])
@pytest.mark.parametrize("shape", [(5, 300), (2, 3, 41), (17,), (3, 1), (4, 0)])
def test_sequence_log_probs_is_trls_masked_sum(shape, average, dtype, rng):
    """TRL's (per_token_logps * loss_mask).sum(-1), over loss_mask.sum(-1) for
    average_log_prob, and its gradient, against torch in float64."""
    values, mask = _sequence_inputs(rng, shape, dtype)
    upstream = rng.uniform(-1, 2, shape[:-1])
    value, grad = fastloss.sequence_log_probs_value_and_grad(values, mask, upstream,
                                                             average=average)
    leaf = torch.from_numpy(values.astype(np.float64)).requires_grad_()
    weights = torch.from_numpy(mask).double()
    expected = (leaf * weights).sum(-1)
    if average:
        expected = expected / weights.sum(-1)
    (expected_grad,) = torch.autograd.grad(expected, leaf, torch.from_numpy(upstream))
    assert value.shape == shape[:-1] and value.dtype == dtype
    assert grad.shape == shape and grad.dtype == dtype
    with np.errstate(invalid="ignore"):
        assert_close_contract(value, expected.detach().numpy(), dtype, "loss")
        assert_close_contract(grad, expected_grad.numpy(), dtype, "grad")
    assert np.array_equal(value, fastloss.sequence_log_probs(values, mask, average=average),
                          equal_nan=True)
    assert np.array_equal(grad, fastloss.sequence_log_probs_grad(values, mask, upstream,
                                                                 average=average),
                          equal_nan=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sequence_log_probs_skips_masked_tokens_and_weights_the_others(dtype):
    values = np.array([[-1.0, -np.inf, np.nan, -2.0], [-1.0, -2.0, -3.0, -4.0],
                       [-1.0, -1.0, -1.0, -1.0]], dtype=dtype)
    mask = np.array([[1, 0, 0, 1], [0.5, 2.0, 0, 0], [0, 0, 0, 0]], dtype=dtype)
    sums = fastloss.sequence_log_probs(values, mask)
    averages = fastloss.sequence_log_probs(values, mask, average=True)
    assert sums.tolist() == [-3.0, -4.5, 0.0]
    assert np.array_equal(averages[:2], np.array([-1.5, -4.5 / 2.5], dtype=dtype))
    assert np.isnan(averages[2])
    grad = fastloss.sequence_log_probs_grad(values, mask, np.array([1.0, 2.0, 3.0]))
    assert np.array_equal(grad, mask * np.array([[1.0], [2.0], [3.0]], dtype=dtype))
    # the reference says the same
    assert np.array_equal(reference.sequence_log_probs(values, mask), sums.astype(np.float64))


def test_sequence_log_probs_gradient_by_finite_differences(rng):
    values, mask = _sequence_inputs(rng, (3, 11), np.float64)
    mask = mask * rng.uniform(0.5, 2.0, mask.shape)
    upstream = rng.uniform(-1, 1, 3)
    for average in (False, True):
        grad = fastloss.sequence_log_probs_grad(values, mask, upstream, average=average)
        numeric = central_differences(lambda moved: float(upstream @ reference.sequence_log_probs(
            moved, mask, average=average)), values, 1e-3)
        np.testing.assert_allclose(grad, numeric, rtol=1e-9, atol=1e-12)


def test_sequence_log_probs_threads_out_and_in_place(rng):
    values, mask = _sequence_inputs(rng, (64, 2049), np.float32)
    one = fastloss.sequence_log_probs_value_and_grad(values, mask, 0.5, average=True,
                                                     num_threads=1)
    three = fastloss.sequence_log_probs_value_and_grad(values, mask, 0.5, average=True,
                                                       num_threads=3)
    assert np.array_equal(one[0], three[0]) and np.array_equal(one[1], three[1])
    out = np.empty_like(values)
    assert fastloss.sequence_log_probs_grad(values, mask, 0.5, average=True, out=out) is out
    assert np.array_equal(out, one[1])
    before = values.copy()
    value, grad = fastloss.sequence_log_probs_value_and_grad(values, mask, 0.5, average=True,
                                                             out=values)
    assert grad is values and np.array_equal(values, one[1])
    assert np.array_equal(value, fastloss.sequence_log_probs(before, mask, average=True))
    # a bool mask is read as bytes; the same bits as the mask in the values' dtype
    for average in (False, True):
        as_bool = fastloss.sequence_log_probs_value_and_grad(before, mask, 0.5, average=average)
        as_float = fastloss.sequence_log_probs_value_and_grad(before, mask.astype(np.float32),
                                                              0.5, average=average)
        as_int = fastloss.sequence_log_probs_value_and_grad(before, mask.astype(np.int8), 0.5,
                                                            average=average)
        for ours, other in zip(as_bool, as_float):
            assert np.array_equal(ours, other)
        for ours, other in zip(as_bool, as_int):
            assert np.array_equal(ours, other)
    strided = before[:, ::2]
    assert np.array_equal(fastloss.sequence_log_probs(strided, mask[:, ::2]),
                          fastloss.sequence_log_probs(strided.copy(), mask[:, ::2].copy()))


@pytest.mark.parametrize("dtype", DTYPES)
def test_sequence_log_probs_bool_mask_of_other_bytes_is_true_not_its_byte(dtype):
    # Found by hunt10: a bool mask viewed from bytes other than 0 and 1 (a uint8
    # attention mask .view(bool), np.frombuffer) is True where its byte is not 0, as NumPy
    # reads it (mask.astype(float) is 1.0); the kernel multiplied by the byte itself (2 -> 2x).
    values = np.array([[1.0, 2.0, 3.0, 4.0], [-1.0, -2.0, -3.0, -4.0]], dtype=dtype)
    raw = np.array([[2, 1, 0, 255], [0, 7, 0, 1]], np.uint8)
    mask = raw.view(np.bool_)
    canonical = raw != 0
    for average in (False, True):
        got = fastloss.sequence_log_probs_value_and_grad(values, mask, np.array([1.0, 2.0]),
                                                         average=average)
        expected = fastloss.sequence_log_probs_value_and_grad(values, canonical,
                                                              np.array([1.0, 2.0]),
                                                              average=average)
        assert bitwise_equal(got[0], expected[0]) and bitwise_equal(got[1], expected[1])
        assert np.allclose(got[0], reference.sequence_log_probs(values, mask, average=average))


def test_sequence_log_probs_refuses_bad_input_naming_it(rng):
    values, mask = _sequence_inputs(rng, (3, 5), np.float64)
    with pytest.raises(ValueError, match="mask"):
        fastloss.sequence_log_probs(values, mask[:, :4])
    with pytest.raises(TypeError, match="mask"):
        fastloss.sequence_log_probs(values, np.array([["a"] * 5] * 3))
    with pytest.raises(TypeError, match="token_log_probs"):
        fastloss.sequence_log_probs(values.astype(np.int32), mask)
    with pytest.raises(ValueError, match="token_log_probs"):
        fastloss.sequence_log_probs(np.float64(1.0), True)
    with pytest.raises(ValueError, match="grad_output"):
        fastloss.sequence_log_probs_grad(values, mask, np.ones(4))
    with pytest.raises(TypeError, match="average"):
        fastloss.sequence_log_probs(values, mask, average="yes")
    with pytest.raises(ValueError, match="out"):
        fastloss.sequence_log_probs_grad(values, mask, out=np.empty((3, 4)))
    # found by hunt10: grad_output=None was taken as "no gradient" and the kernel's wrapper
    # raised "sums or grad: nothing to compute" (ValueError from the fused call)
    for function in (fastloss.sequence_log_probs_grad,
                     fastloss.sequence_log_probs_value_and_grad):
        with pytest.raises(TypeError, match="^grad_output"):
            function(values, mask, None)
        # a bool array of upstream gradients is refused, as every other family refuses it
        # (it was read as 0 / 1 here alone); a complex one names grad_output too
        with pytest.raises(TypeError, match="^grad_output: expected real numbers, got dtype bool"):
            function(values, mask, np.ones(3, dtype=bool))
        with pytest.raises(TypeError, match="^grad_output"):
            function(values, mask, np.ones(3, dtype=complex))


def test_sequence_log_probs_adapter(rng):
    values, mask = _sequence_inputs(rng, (4, 33), np.float32)
    leaf = torch.from_numpy(values).requires_grad_()
    result = FL.sequence_log_probs(leaf, torch.from_numpy(mask), average=True)
    upstream = torch.linspace(-1, 1, 4)
    result.backward(upstream)
    expected = (torch.from_numpy(values) * torch.from_numpy(mask)).sum(-1) / \
        torch.from_numpy(mask).sum(-1)
    assert result.dtype == torch.float32
    assert torch.allclose(result, expected, rtol=2e-6)
    assert torch.allclose(leaf.grad, torch.from_numpy(mask) * (upstream / torch.from_numpy(
        mask).sum(-1))[:, None], rtol=2e-6)
    with pytest.raises(RuntimeError, match="mask"):
        FL.sequence_log_probs(leaf, torch.from_numpy(mask).float().requires_grad_())


def test_logits_to_dpo_through_fastloss_equals_trls_pipeline():
    """A preference batch from logits to the DPO loss: token log-probabilities (fastloss
    cross_entropy, reduction none), sequence_log_probs over the answer's tokens, dpo;
    against TRL's concatenated_forward + dpo_loss in torch, gradient w.r.t. the policy's
    logits included."""
    rng = np.random.default_rng(3)
    batch, length, vocab = 4, 12, 50
    logits = torch.from_numpy(rng.standard_normal((2 * batch, length, vocab))).requires_grad_()
    reference_logps = torch.from_numpy(-rng.uniform(5, 40, 2 * batch))
    labels = torch.from_numpy(rng.integers(0, vocab, (2 * batch, length)))
    mask = torch.from_numpy(np.arange(length)[None, :] >= rng.integers(2, 6, (2 * batch, 1)))

    def ours(logits):
        token = -FL.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
        sequence = FL.sequence_log_probs(token, mask)
        return FL.dpo(sequence[:batch], sequence[batch:], reference_logps[:batch],
                      reference_logps[batch:], beta=0.1)

    def trls(logits):
        per_token = torch.gather(logits.log_softmax(-1), 2, labels.unsqueeze(2)).squeeze(2)
        sequence = (per_token * mask).sum(-1)
        return trl_dpo(sequence[:batch], sequence[batch:], reference_logps[:batch],
                       reference_logps[batch:], beta=0.1)

    loss = ours(logits)
    (grad,) = torch.autograd.grad(loss, logits)
    expected = trls(logits)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    assert torch.allclose(loss, expected, rtol=1e-12, atol=0)
    assert torch.allclose(grad, expected_grad, rtol=1e-10, atol=1e-15)
