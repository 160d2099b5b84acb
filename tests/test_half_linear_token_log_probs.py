"""float16 and bfloat16 inputs of linear_token_log_probs (issue 15), NumPy and torch.

NumPy: the half path forms each block's logits on NumPy's float32 BLAS from a float32 copy
of the classifier and of the block's rows (exact), runs the token_log_probs kernel on the
float32 logits, and rounds each gradient once to the input's dtype (or keeps it in float32
with grad_dtype="float32"). The contract (docs/accuracy.rst, "linear_cross_entropy in half
precision", and "linear_token_log_probs"): against the float64 reference on the same
rounded inputs, the log-probabilities and entropies (float32) within the float32 contract
plus the float32 products' bound, and each gradient within that bound plus its one
rounding to the half type.

torch: bfloat16 and float16 tensors run on torch's half-precision products (as
fastloss.torch.linear_cross_entropy), whose logits, their gradient and the products'
results are rounded to the half type: the products' bound with the half unit
(test_linear_token_log_probs.products_bound's ``half_unit``), and the error beside torch's
own half-precision ``F.linear`` + ``log_softmax`` at most twice torch's.
"""
import numpy as np
import pytest

import fastloss
from contract_floors import assert_close_at_scale
from loss_specs import assert_close_contract, call_unmodified
from test_half import BFLOAT16, FLOAT16, HALF_DTYPES, ulps
from test_linear_token_log_probs import (NAMES, UPSTREAMS, make_inputs, products_bound,
                                         reference_of, upstreams)

#: unit roundoff of the half types (half an ulp of 1)
HALF_UNIT = {BFLOAT16: 2.0**-8, FLOAT16: 2.0**-11}


def rounded_case(rng, dtype, batch, n_features, n_classes, bias=True):
    """The inputs in ``dtype`` and the same values in float64 (the reference's)."""
    hidden, classifier, target, b = make_inputs(rng, batch, n_features, n_classes, np.float32,
                                                bias=bias)
    half = {"hidden": hidden.astype(dtype), "classifier": classifier.astype(dtype),
            "bias": None if b is None else b.astype(dtype)}
    wide = {name: None if value is None else value.astype(np.float64)
            for name, value in half.items()}
    return half, wide, target


def check_half_call(half, wide, target, g, h, temperature, dtype, **options):
    """value_and_grad on half inputs against the reference and the bound; returns the
    values and gradients."""
    (log_prob, entropy), grads = fastloss.linear_token_log_probs_value_and_grad(
        half["hidden"], half["classifier"], target, g, grad_entropy=h, bias=half["bias"],
        temperature=temperature, return_entropy=True, **options)
    (ref_log_prob, ref_entropy), ref_grads = reference_of(
        wide["hidden"], wide["classifier"], target, wide["bias"], g, h,
        temperature=temperature)
    bounds = products_bound(wide["hidden"], wide["classifier"], target, wide["bias"], g, h,
                            temperature)
    batch = half["hidden"].shape[:-1]
    assert log_prob.dtype == entropy.dtype == np.float32
    assert log_prob.shape == entropy.shape == batch
    assert_close_at_scale(log_prob, ref_log_prob, np.float32, "loss", extra=bounds[0],
                          what="log_prob")
    assert_close_at_scale(entropy, ref_entropy, np.float32, "loss", extra=bounds[1],
                          what="entropy")
    scale = np.abs(ref_log_prob) + np.abs(ref_entropy)
    unit = HALF_UNIT[dtype]
    grad_dtype = np.dtype(options.get("grad_dtype") or dtype)
    for grad, ref, bound, name in zip(grads, ref_grads, bounds[2:], NAMES):
        assert grad.dtype == grad_dtype and grad.shape == half[name].shape, name
        rounding = 0.0 if grad_dtype == np.float32 else unit * np.abs(ref)
        assert_close_at_scale(grad.astype(np.float64), ref, np.float32, "grad", loss=scale,
                              wrt=wide[name], grad_output=np.abs(g) + np.abs(
                                  0.0 if h is None else h),
                              extra=bound + rounding, what=f"d/d{name}")
    return (log_prob, entropy), grads


# ----------------------------------------------------------------------------------------
# NumPy: float16 and ml_dtypes.bfloat16
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", UPSTREAMS)
@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("shape, block_rows", [(((40,), 32, 50), 7), (((4, 9), 96, 300), None)],
                         ids=["small-blocks", "wide"])
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_within_the_products_bound(dtype, shape, block_rows, temperature, kind):
    """Every upstream, temperature, batch shape and block height: the float32 contract
    plus the float32 products' bound, plus one rounding of each gradient; the three entry
    points run the same computation."""
    batch, n_features, n_classes = shape
    rng = np.random.default_rng([dtype.itemsize, len(kind), n_features, int(temperature * 10)])
    half, wide, target = rounded_case(rng, dtype, batch, n_features, n_classes)
    g, h = upstreams(rng, kind, batch)
    (log_prob, entropy), grads = check_half_call(half, wide, target, g, h, temperature, dtype,
                                                 block_rows=block_rows)
    args = (half["hidden"], half["classifier"], target)
    options = dict(bias=half["bias"], temperature=temperature, block_rows=block_rows)
    alone = call_unmodified(fastloss.linear_token_log_probs, *args, return_entropy=True,
                            **options)
    np.testing.assert_array_equal(alone[0], log_prob)
    np.testing.assert_array_equal(alone[1], entropy)
    np.testing.assert_array_equal(fastloss.linear_token_log_probs(*args, **options), log_prob)
    again = call_unmodified(fastloss.linear_token_log_probs_grad, *args, g, grad_entropy=h,
                            **options)
    for grad, same in zip(grads, again):
        np.testing.assert_array_equal(grad.view(np.uint16), same.view(np.uint16))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_float32_gradients_are_the_same_computation(dtype, bias):
    """grad_dtype="float32": float32 gradients from the same computation, within the
    float32 contract plus the products' bound; rounded to the half type (to nearest even)
    they are the half gradients exactly (both rounded once from the same float32 sums),
    the bias's (a float64 sum rounded once either way) within one ulp. out= takes float32
    arrays then."""
    rng = np.random.default_rng([dtype.itemsize, bias, 3])
    half, wide, target = rounded_case(rng, dtype, (50,), 40, 300, bias=bias)
    g, h = upstreams(rng, "both", (50,))
    values, grads = check_half_call(half, wide, target, g, h, 0.8, dtype, block_rows=16)
    values32, grads32 = check_half_call(half, wide, target, g, h, 0.8, dtype, block_rows=16,
                                        grad_dtype="float32")
    for value, value32 in zip(values, values32):
        np.testing.assert_array_equal(value, value32)
    for grad, grad32, name in zip(grads, grads32, NAMES):
        if name == "bias":
            assert ulps(grad32.astype(dtype), grad).max() <= 1
        else:
            np.testing.assert_array_equal(grad32.astype(dtype).view(np.uint16),
                                          grad.view(np.uint16))
    out = tuple(np.empty(grad.shape, np.float32) for grad in grads32)
    result = fastloss.linear_token_log_probs_grad(
        half["hidden"], half["classifier"], target, g, grad_entropy=h, bias=half["bias"],
        temperature=0.8, block_rows=16, out=out, grad_dtype=np.float32)
    for given, written, expected in zip(out, result, grads32):
        assert written is given
        np.testing.assert_array_equal(written, expected)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_block_heights_agree(dtype):
    """Blocks of 1, 5 and all the rows: the same contract, and the values within 1e-6 of
    each other (not bit for bit: the BLAS may sum a product of 1 row and one of 23 rows in
    different orders)."""
    rng = np.random.default_rng([dtype.itemsize, 4])
    half, wide, target = rounded_case(rng, dtype, (23,), 16, 40)
    g, h = upstreams(rng, "both", (23,))
    results = [check_half_call(half, wide, target, g, h, 1.3, dtype, block_rows=rows)
               for rows in (1, 5, 23)]
    for values, _ in results[1:]:
        for value, first in zip(values, results[0][0]):
            np.testing.assert_allclose(value, first, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_thread_invariance(dtype):
    """The kernel's OpenMP threads change nothing: the products are the same BLAS calls
    on the same blocks whatever num_threads is."""
    rng = np.random.default_rng([dtype.itemsize, 5])
    half, _, target = rounded_case(rng, dtype, (70,), 48, 257)
    g, h = upstreams(rng, "both", (70,))
    results = [fastloss.linear_token_log_probs_value_and_grad(
        half["hidden"], half["classifier"], target, g, grad_entropy=h, bias=half["bias"],
        return_entropy=True, block_rows=32, num_threads=threads) for threads in (1, 2, 3)]
    for values, grads in results[1:]:
        for value, first in zip(values, results[0][0]):
            np.testing.assert_array_equal(value, first)
        for grad, first in zip(grads, results[0][1]):
            np.testing.assert_array_equal(grad.view(np.uint16), first.view(np.uint16))


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_ignored_rows_batch_shapes_and_empty_batch(dtype):
    """Ignored rows give 0 and no gradient of their hidden rows; batch axes keep their
    shape; no rows give empty values and zero classifier and bias gradients."""
    rng = np.random.default_rng([dtype.itemsize, 6])
    half, wide, target = rounded_case(rng, dtype, (2, 3, 4), 8, 21)
    target[...] = -100
    target[0, 0, 0] = 4
    g, h = upstreams(rng, "both", (2, 3, 4))
    (log_prob, entropy), grads = check_half_call(half, wide, target, g, h, 1.0, dtype)
    ignored = target != 4
    assert not np.any(log_prob[ignored]) and not np.any(entropy[ignored])
    assert not np.any(grads[0][ignored].astype(np.float32))
    empty = half["hidden"][:0]
    (log_prob, entropy), (grad_hidden, grad_classifier, grad_bias) = \
        fastloss.linear_token_log_probs_value_and_grad(
            empty, half["classifier"], np.zeros((0, 3, 4), np.int64), bias=half["bias"],
            return_entropy=True)
    assert log_prob.shape == entropy.shape == (0, 3, 4) and log_prob.dtype == np.float32
    assert grad_hidden.shape == (0, 3, 4, 8) and grad_hidden.dtype == dtype
    assert grad_classifier.dtype == dtype and not np.any(grad_classifier.astype(np.float32))
    assert grad_bias.dtype == dtype and not np.any(grad_bias.astype(np.float32))


def test_half_bad_input_names_the_argument():
    rng = np.random.default_rng(7)
    hidden = rng.standard_normal((5, 4)).astype(np.float16)
    classifier = rng.standard_normal((6, 4)).astype(np.float16)
    target = np.arange(5) % 6
    for other in (classifier.astype(BFLOAT16), classifier.astype(np.float32)):
        with pytest.raises(TypeError, match="classifier: expected the dtype of hidden"):
            fastloss.linear_token_log_probs(hidden, other, target)
    with pytest.raises(TypeError, match="bias: expected the dtype of hidden"):
        fastloss.linear_token_log_probs(hidden, classifier, target,
                                        bias=np.zeros(6, np.float32))
    with pytest.raises(TypeError, match="hidden: expected a float32 or float64 array, or "
                                        "float16 / ml_dtypes.bfloat16"):
        fastloss.linear_token_log_probs(hidden.view(np.int16), classifier, target)
    with pytest.raises(TypeError, match="grad_dtype"):
        fastloss.linear_token_log_probs_grad(hidden, classifier, target, grad_dtype=object())
    with pytest.raises(ValueError, match="grad_dtype"):
        fastloss.linear_token_log_probs_grad(hidden, classifier, target,
                                             grad_dtype="float64")
    with pytest.raises(ValueError, match="grad_dtype"):
        fastloss.linear_token_log_probs_value_and_grad(
            hidden.astype(np.float32), classifier.astype(np.float32), target,
            grad_dtype="float16")
    with pytest.raises(TypeError, match=r"out \(hidden\)"):
        fastloss.linear_token_log_probs_grad(hidden, classifier, target,
                                             out=(np.empty((5, 4), np.float32),
                                                  np.empty((6, 4), np.float16)))
    with pytest.raises(TypeError, match=r"out \(classifier\)"):
        fastloss.linear_token_log_probs_grad(hidden, classifier, target, grad_dtype="float32",
                                             out=(np.empty((5, 4), np.float32),
                                                  np.empty((6, 4), np.float16)))


def test_float16_overflow_is_ieee():
    """float16 products beyond 65504 are no issue (they are float32); an infinite input
    makes its rows' values NaN or infinite as IEEE arithmetic says, never a crash."""
    hidden = np.full((3, 4), 60000.0, np.float16)
    classifier = np.ones((5, 4), np.float16)
    classifier[1] = -1
    log_prob, entropy = fastloss.linear_token_log_probs(hidden, classifier, np.array([0, 1, 2]),
                                                        return_entropy=True)
    # logits 240000 and -240000: the targets at the maximum have log p = -log(4)
    np.testing.assert_allclose(log_prob[[0, 2]], -np.log(4), rtol=1e-6)
    np.testing.assert_allclose(log_prob[1], -480000 - np.log(4), rtol=1e-7)
    np.testing.assert_allclose(entropy, np.log(4), rtol=1e-6)
    hidden[1, 0] = np.inf
    log_prob, grads = fastloss.linear_token_log_probs_value_and_grad(
        hidden, classifier, np.array([0, 1, 2]))
    assert np.isfinite(log_prob[[0, 2]]).all() and np.isnan(log_prob[1])
    assert np.isnan(grads[0][1].astype(np.float32)).all()
    assert np.isfinite(grads[0][[0, 2]].astype(np.float32)).all()


# ----------------------------------------------------------------------------------------
# torch: bfloat16 and float16 tensors on torch's half-precision products
# ----------------------------------------------------------------------------------------

def _torch_half(torch, dtype):
    return {BFLOAT16: torch.bfloat16, FLOAT16: torch.float16}[dtype]


@pytest.mark.parametrize("needs", [(True, True, True), (True, False, False),
                                   (False, True, False), (False, False, True)],
                         ids=["all", "hidden", "classifier", "bias"])
@pytest.mark.parametrize("kind", ["log_prob", "entropy", "both"])
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_torch_half_within_the_products_bound(dtype, kind, needs):
    """Against the float64 reference on the rounded inputs: the float32 contract plus the
    products' bound for half precision (the logits, their gradient and the products'
    results rounded to the half type, the classifier's gradient once per block), plus
    the rounding of each result to the half type; everything in the tensors' dtype."""
    torch = pytest.importorskip("torch")
    import fastloss.torch as FL

    torch_dtype = _torch_half(torch, dtype)
    rng = np.random.default_rng([dtype.itemsize, len(kind), sum(needs)])
    batch, block_rows = (4, 9), 10
    half, wide, target = rounded_case(rng, dtype, batch, 64, 200)
    g = rng.uniform(-2, 2, batch) if kind != "entropy" else np.zeros(batch)
    h = rng.uniform(-2, 2, batch) if kind != "log_prob" else np.zeros(batch)
    # the upstream gradients in the half type, as autograd passes them
    g, h = (torch.from_numpy(a).to(torch_dtype).double().numpy() for a in (g, h))
    leaves = [torch.from_numpy(wide[name]).to(torch_dtype).requires_grad_(need)
              for name, need in zip(NAMES, needs)]
    log_prob, entropy = FL.linear_token_log_probs(
        leaves[0], leaves[1], torch.from_numpy(target), bias=leaves[2], temperature=0.8,
        return_entropy=True, block_rows=block_rows)
    assert log_prob.dtype == entropy.dtype == torch_dtype and log_prob.shape == batch
    ((log_prob * torch.from_numpy(g).to(torch_dtype)).sum()
     + (entropy * torch.from_numpy(h).to(torch_dtype)).sum()).backward()
    (ref_log_prob, ref_entropy), ref_grads = reference_of(
        wide["hidden"], wide["classifier"], target, wide["bias"], g, h, temperature=0.8)
    unit = HALF_UNIT[dtype]
    blocks = -(-int(np.prod(batch)) // block_rows)
    bounds = products_bound(wide["hidden"], wide["classifier"], target, wide["bias"], g, h,
                            0.8, half_unit=unit, blocks=blocks)
    assert_close_at_scale(log_prob.detach().double().numpy(), ref_log_prob, np.float32, "loss",
                          extra=bounds[0] + unit * np.abs(ref_log_prob), what="log_prob")
    assert_close_at_scale(entropy.detach().double().numpy(), ref_entropy, np.float32, "loss",
                          extra=bounds[1] + unit * np.abs(ref_entropy), what="entropy")
    scale = np.abs(ref_log_prob) + np.abs(ref_entropy)
    for leaf, need, ref, bound, name in zip(leaves, needs, ref_grads, bounds[2:], NAMES):
        if not need:
            assert leaf.grad is None
            continue
        assert leaf.grad.dtype == torch_dtype and leaf.grad.shape == leaf.shape
        assert_close_at_scale(leaf.grad.double().numpy(), ref, np.float32, "grad",
                              loss=scale, wrt=wide[name], grad_output=np.abs(g) + np.abs(h),
                              extra=bound + unit * np.abs(ref), what=f"d/d{name}")


@pytest.mark.parametrize("kind", ["log_prob", "both"])
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_torch_half_error_beside_torch_own(dtype, kind):
    """torch's own F.linear + log_softmax (gathered, and the entropy) in the half type on
    the same inputs, against the same float64 reference: the adapter's error (2-norm
    over each result) is at most twice torch's, plus one rounding of the result."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    import fastloss.torch as FL

    torch_dtype = _torch_half(torch, dtype)
    rng = np.random.default_rng([dtype.itemsize, len(kind), 8])
    half, wide, target = rounded_case(rng, dtype, (128,), 128, 2000)
    g = rng.uniform(-2, 2, 128)
    h = rng.uniform(-2, 2, 128) if kind == "both" else np.zeros(128)
    g, h = (torch.from_numpy(a).to(torch_dtype) for a in (g, h))
    labels = torch.from_numpy(target)

    def run(function):
        leaves = [torch.from_numpy(wide[name]).to(torch_dtype).requires_grad_()
                  for name in NAMES]
        log_prob, entropy = function(leaves)
        ((log_prob * g).sum() + (entropy * h).sum()).backward()
        return [log_prob.detach(), entropy.detach()] + [leaf.grad for leaf in leaves]

    def ours(leaves):
        return FL.linear_token_log_probs(leaves[0], leaves[1], labels, bias=leaves[2],
                                         return_entropy=True, block_rows=32)

    def theirs(leaves):
        valid = labels != -100
        log_p = F.log_softmax(F.linear(*leaves), dim=-1)
        log_prob = log_p.gather(-1, torch.where(valid, labels, 0)[:, None])[:, 0] * valid
        return log_prob, -(log_p.exp() * log_p).sum(-1) * valid

    (ref_log_prob, ref_entropy), ref_grads = reference_of(
        wide["hidden"], wide["classifier"], target, wide["bias"], g.double().numpy(),
        h.double().numpy())
    for mine, torchs, ref in zip(run(ours), run(theirs), [ref_log_prob, ref_entropy,
                                                          *ref_grads]):
        mine_error = float(np.linalg.norm(mine.double().numpy() - ref))
        torch_error = float(np.linalg.norm(torchs.double().numpy() - ref))
        rounding = HALF_UNIT[dtype] * float(np.linalg.norm(ref))
        assert mine_error <= 2 * torch_error + rounding, (mine_error, torch_error)


def test_torch_half_module_and_bad_input():
    torch = pytest.importorskip("torch")
    import fastloss.torch as FL

    module = FL.LinearTokenLogProbs(6, 11, bias=True, dtype=torch.bfloat16, return_entropy=True)
    hidden = torch.randn(2, 3, 6, dtype=torch.bfloat16, requires_grad=True)
    log_prob, entropy = module(hidden, torch.randint(0, 11, (2, 3)))
    assert log_prob.dtype == entropy.dtype == torch.bfloat16 and log_prob.shape == (2, 3)
    (log_prob.sum() + entropy.sum()).backward()
    assert hidden.grad.dtype == torch.bfloat16 and module.linear.weight.grad.shape == (11, 6)
    assert module.linear.bias.grad.dtype == torch.bfloat16

    x = torch.ones(3, 4, dtype=torch.bfloat16)
    W = torch.ones(5, 4, dtype=torch.bfloat16)
    y = torch.zeros(3, dtype=torch.int64)
    with pytest.raises(TypeError, match="classifier: expected the dtype of hidden"):
        FL.linear_token_log_probs(x, W.half(), y)
    with pytest.raises(TypeError, match="classifier: expected the dtype of hidden"):
        FL.linear_token_log_probs(x.float(), W, y)
    with pytest.raises(TypeError, match="bias: expected the dtype of hidden"):
        FL.linear_token_log_probs(x, W, y, bias=torch.ones(5))
    with pytest.raises(ValueError, match="bias: expected shape"):
        FL.linear_token_log_probs(x, W, y, bias=torch.ones(4, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="hidden: expected shape"):
        FL.linear_token_log_probs(x[:, :3], W, y)
    with pytest.raises(ValueError, match="classifier: expected a 2-d tensor"):
        FL.linear_token_log_probs(x, W[:0], y)
    with pytest.raises(TypeError, match="hidden: expected a float32, float64, bfloat16"):
        FL.linear_token_log_probs(x.to(torch.int16), W, y)
    with pytest.raises(ValueError, match="target"):
        FL.linear_token_log_probs(x, W, torch.full((3,), 7))
    with pytest.raises(ValueError, match="temperature"):
        FL.linear_token_log_probs(x, W, y, temperature=0.0)
