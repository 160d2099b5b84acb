"""linear_token_log_probs: token_log_probs(hidden @ classifier.T + bias) by blocks of rows.

Parity with the float64 reference (float64 at the plain contract; float32 within the
contract plus the products' rounding, and never more than twice the error of torch's own
float32 computation), finite differences of both outputs, blocks of any height,
ignore_index, temperature, bias, threads, bad input, the torch adapter and module against
``F.linear`` + ``log_softmax``, and the peak resident memory, which must not grow with N.
"""
import numpy as np
import pytest

import fastloss
from fastloss import _contract, reference

from contract_floors import assert_close_at_scale
from loss_specs import assert_close_contract, bitwise_equal, call_unmodified
from peak_rss import CHILD_HEAD, CHILD_TAIL, needs_plain_malloc, needs_proc, run_child

NAMES = ("hidden", "classifier", "bias")
# upstream gradients of the log-probabilities and of the entropies
UPSTREAMS = ("log_prob", "entropy", "both", "scalars")


def make_inputs(rng, batch, n_features, n_classes, dtype, bias=True, ignore_index=-100,
                scale=2.0):
    """hidden (batch..., H), classifier (V, H), bias (V,), target with every third row
    ignored; the logits span a few units so that the softmax is neither flat nor one-hot."""
    hidden = rng.standard_normal(batch + (n_features,)).astype(dtype)
    classifier = (rng.standard_normal((n_classes, n_features))
                  * (scale / np.sqrt(max(n_features, 1)))).astype(dtype)
    target = rng.integers(0, n_classes, batch)
    target.reshape(-1)[1::3] = ignore_index
    b = rng.standard_normal(n_classes).astype(dtype) if bias else None
    return hidden, classifier, target, b


def upstreams(rng, kind, batch):
    """(grad_output, grad_entropy) of one kind."""
    return {"log_prob": (rng.uniform(-2, 2, batch), None),
            "entropy": (0.0, rng.uniform(-2, 2, batch)),
            "both": (rng.uniform(-2, 2, batch), rng.uniform(-2, 2, batch)),
            "scalars": (0.75, -0.3)}[kind]


def wide(array):
    return None if array is None else np.asarray(array, np.float64)


def reference_of(hidden, classifier, target, bias, grad_output, grad_entropy, **options):
    return reference.linear_token_log_probs_value_and_grad(
        wide(hidden), wide(classifier), target, grad_output, grad_entropy=grad_entropy,
        bias=wide(bias), return_entropy=True, **options)


# ----------------------------------------------------------------------------------------
# float64: the plain contract, every upstream, batch shape, block height, temperature
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", UPSTREAMS)
@pytest.mark.parametrize("temperature", [1.0, 0.6, 2.5])
@pytest.mark.parametrize("batch, block_rows", [((13,), None), ((13,), 4), ((3, 5), 2),
                                               ((), None), ((2, 1, 7), 1)],
                         ids=["rows", "blocks-of-4", "2d-batch", "one-row", "3d-batch"])
def test_float64_matches_the_reference(kind, temperature, batch, block_rows):
    rng = np.random.default_rng([len(kind), len(batch), block_rows or 0, int(temperature * 10)])
    hidden, classifier, target, bias = make_inputs(rng, batch, 6, 11, np.float64)
    g, h = upstreams(rng, kind, batch)
    options = dict(bias=bias, temperature=temperature, block_rows=block_rows)
    (ref_log_prob, ref_entropy), expected = reference_of(
        hidden, classifier, target, bias, g, h, temperature=temperature)
    log_prob = call_unmodified(fastloss.linear_token_log_probs, hidden, classifier, target,
                               **options)
    both = fastloss.linear_token_log_probs(hidden, classifier, target, return_entropy=True,
                                           **options)
    grads = call_unmodified(fastloss.linear_token_log_probs_grad, hidden, classifier, target,
                            g, grad_entropy=h, **options)
    (fused_log_prob, fused_entropy), fused = fastloss.linear_token_log_probs_value_and_grad(
        hidden, classifier, target, g, grad_entropy=h, return_entropy=True, **options)
    for value in (log_prob, both[0], both[1], fused_log_prob, fused_entropy):
        assert value.dtype == np.float64 and value.shape == batch
    for value in (log_prob, both[0], fused_log_prob):
        assert_close_contract(value, ref_log_prob, np.float64, "loss", "log_prob")
    for value in (both[1], fused_entropy):
        assert_close_contract(value, ref_entropy, np.float64, "loss", "entropy")
    assert bitwise_equal(log_prob, both[0]) and bitwise_equal(both[0], fused_log_prob)
    assert bitwise_equal(both[1], fused_entropy)
    assert len(grads) == len(fused) == 3
    for grad, fused_grad, ref, given, name in zip(grads, fused, expected,
                                                  (hidden, classifier, bias), NAMES):
        assert grad.shape == given.shape and grad.dtype == given.dtype, name
        assert_close_contract(grad, ref, np.float64, "grad", what=f"d/d{name}")
        assert bitwise_equal(grad, fused_grad), name


def test_the_values_are_token_log_probs_of_the_logits():
    """The same semantics as token_log_probs on the formed logits (the products are the
    only difference: float64 here, so the contract)."""
    rng = np.random.default_rng(1)
    hidden, classifier, target, bias = make_inputs(rng, (4, 6), 16, 300, np.float64)
    logits = hidden @ classifier.T + bias
    g, h = rng.standard_normal((4, 6)), rng.standard_normal((4, 6))
    for temperature in (1.0, 0.5):
        value, grads = fastloss.linear_token_log_probs_value_and_grad(
            hidden, classifier, target, g, grad_entropy=h, bias=bias,
            temperature=temperature, return_entropy=True, block_rows=5)
        expected_value, grad_logits = fastloss.token_log_probs_value_and_grad(
            logits, target, g, grad_entropy=h, temperature=temperature, return_entropy=True)
        for ours, theirs in zip(value, expected_value):
            assert_close_contract(ours, theirs, np.float64, "loss")
        rows = grad_logits.reshape(-1, 300)
        for ours, theirs in zip(grads, ((rows @ classifier).reshape(hidden.shape),
                                        rows.T @ hidden.reshape(-1, 16), rows.sum(axis=0))):
            assert_close_contract(ours, theirs, np.float64, "grad")


def test_without_bias_two_gradients():
    rng = np.random.default_rng(2)
    hidden, classifier, target, _ = make_inputs(rng, (9,), 5, 7, np.float64, bias=False)
    grads = fastloss.linear_token_log_probs_grad(hidden, classifier, target, 1.5,
                                                 grad_entropy=0.5)
    expected = reference.linear_token_log_probs_grad(hidden, classifier, target, 1.5,
                                                     grad_entropy=0.5)
    assert len(grads) == len(expected) == 2
    for grad, ref in zip(grads, expected):
        assert_close_contract(grad, ref, np.float64, "grad")


@pytest.mark.parametrize("block_rows", [1, 2, 5, 64])
def test_any_block_height_gives_the_same_results(block_rows):
    rng = np.random.default_rng(block_rows)
    hidden, classifier, target, bias = make_inputs(rng, (17,), 8, 9, np.float64)
    g, h = upstreams(rng, "both", (17,))
    options = dict(bias=bias, temperature=0.8, return_entropy=True, grad_entropy=h)
    whole = fastloss.linear_token_log_probs_value_and_grad(hidden, classifier, target, g,
                                                           block_rows=17, **options)
    blocks = fastloss.linear_token_log_probs_value_and_grad(hidden, classifier, target, g,
                                                            block_rows=block_rows, **options)
    for value, ref in zip(blocks[0], whole[0]):
        assert_close_contract(value, ref, np.float64, "loss")
    for grad, ref in zip(blocks[1], whole[1]):
        assert_close_contract(grad, ref, np.float64, "grad")


@pytest.mark.parametrize("wrt", NAMES)
@pytest.mark.parametrize("kind", ["log_prob", "entropy", "both"])
@pytest.mark.parametrize("temperature", [1.0, 1.7])
def test_finite_differences(wrt, kind, temperature):
    """Fourth-order central differences of ``sum(g * log_prob + h * entropy)`` in float64
    along a random direction of each differentiable input."""
    rng = np.random.default_rng([len(wrt), len(kind), int(temperature * 10)])
    hidden, classifier, target, bias = make_inputs(rng, (5,), 4, 6, np.float64)
    g, h = upstreams(rng, kind, (5,))
    arguments = {"hidden": hidden, "classifier": classifier, "bias": bias}
    direction = rng.standard_normal(arguments[wrt].shape)

    def objective(step):
        moved = dict(arguments)
        moved[wrt] = arguments[wrt] + step * direction
        log_prob, entropy = fastloss.linear_token_log_probs(
            moved["hidden"], moved["classifier"], target, bias=moved["bias"],
            temperature=temperature, return_entropy=True)
        return float(np.sum(log_prob * g) + (0.0 if h is None else np.sum(entropy * h)))

    step = 1e-3
    numeric = (8 * (objective(step) - objective(-step))
               - (objective(2 * step) - objective(-2 * step))) / (12 * step)
    grads = fastloss.linear_token_log_probs_grad(hidden, classifier, target, g,
                                                 grad_entropy=h, bias=bias,
                                                 temperature=temperature)
    analytic = float(np.sum(grads[NAMES.index(wrt)] * direction))
    assert abs(analytic - numeric) <= 1e-7 * max(1.0, abs(numeric)), (analytic, numeric)


# ----------------------------------------------------------------------------------------
# float32: the contract plus the products' rounding, and against torch's own float32
# ----------------------------------------------------------------------------------------

def products_bound(hidden, classifier, target, bias, grad_output, grad_entropy, temperature,
                   ignore_index=-100, dtype=np.float32, half_unit=0.0, blocks=1):
    """What float32 products may add to the contract: (log_prob, entropy, grad hidden,
    grad classifier, grad bias), first order in the products' errors (docs/accuracy.rst,
    "linear_token_log_probs").

    Each scaled logit a_ic = fl(h_i . W_c + b_c) / T misses by at most
    eps_ic = gamma_{H+1} A_ic / T, A_ic = |h_i| . |W_c| + |b_c| (Higham 3.1); let
    e_i = max_c eps_ic. Then log p_t = a_t - lse moves by at most 2 e_i; the entropy, whose
    derivative along a_j is -p_j (log p_j + H) with sum_j p_j |log p_j + H| <= 2 H <=
    2 log V at every point, by 2 log(V) e_i. In the gradient of the logits
    G_ic = (g ([c = t] - p_c) - h p_c (log p_c + H)) / T each p_c (and 1 - p_t, a sum of
    them) moves by a factor within rho = expm1(2 e_i) + 8 u, and log p_c + H by
    2 (1 + log V) e_i; the float32 pass rounds a_c and the entropy's coefficients (8 u of
    p_c |h| (|a_c - max| + |mean a|)). The products with G add gamma of their inner
    lengths: V + 2 for G @ W, N + 2 for G.T @ h; the bias's gradient is summed in float64.

    ``half_unit`` (the unit roundoff of bfloat16 or float16, with dtype float32): the
    torch adapter's half-precision products, which accumulate in float32 and round their
    results to the half type (test_linear_cross_entropy.products_bound's argument): each
    logit misses by half_unit |x_ic| / T more, each entry of the logits' gradient by
    half_unit of its size (its rounding to the half type), the hidden's gradient is
    rounded once (half_unit beside gamma_V), the classifier's once per block of rows
    (``blocks`` times half_unit beside gamma_N) and the bias's float64 sum once."""
    unit = _contract.UNIT_ROUNDOFF[np.dtype(dtype)]
    W = np.asarray(classifier, np.float64)
    n_classes, n_features = W.shape
    x = np.asarray(hidden, np.float64).reshape(-1, n_features)
    b = np.zeros(n_classes) if bias is None else np.asarray(bias, np.float64)
    logits = x @ W.T + b
    eps = (_contract.dot_gamma(n_features + 1, dtype) * (1 + half_unit)
           * (np.abs(x) @ np.abs(W).T + np.abs(b)) + half_unit * np.abs(logits)) / temperature
    e = eps.max(axis=1)
    a = logits / temperature
    shifted = a - a.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    entropy = -(p * log_p).sum(axis=1)
    target = np.asarray(target).reshape(-1)
    valid = target != ignore_index
    log_v = np.log(n_classes)
    batch = np.shape(hidden)[:-1]
    log_prob_bound = np.where(valid, 2 * e, 0.0).reshape(batch)
    entropy_bound = np.where(valid, 2 * log_v * e, 0.0).reshape(batch)
    g = np.abs(np.broadcast_to(np.asarray(grad_output, np.float64), batch)).reshape(-1, 1)
    h = np.abs(np.broadcast_to(np.asarray(0.0 if grad_entropy is None else grad_entropy,
                                          np.float64), batch)).reshape(-1, 1)
    onehot = np.zeros_like(p)
    rows = np.flatnonzero(valid)
    onehot[rows, target[rows]] = 1.0
    spread = np.abs(log_p + entropy[:, None])
    moving = g * (p + onehot * (1.0 - p)) + h * p * spread
    size = (g * (p + onehot) + h * p * spread) / temperature
    mean_a = (p * shifted).sum(axis=1, keepdims=True)
    rho = np.expm1(2 * e)[:, None] + _contract.ROUNDINGS_PER_SOFTMAX_ENTRY * unit
    grad_error = (rho * moving + (1 + rho) * h * p * 2 * (1 + log_v) * e[:, None]
                  + _contract.ROUNDINGS_PER_SOFTMAX_ENTRY * unit * h * p
                  * (np.abs(shifted) + np.abs(mean_a))) / temperature
    grad_error = grad_error + half_unit * (size + grad_error)
    grad_error = np.where(valid[:, None], grad_error, 0.0)
    size = np.where(valid[:, None], size, 0.0)
    gamma_v = _contract.dot_gamma(n_classes + 2, dtype) * (1 + half_unit) + half_unit
    gamma_n = (_contract.dot_gamma(x.shape[0] + 2, dtype) * (1 + half_unit) ** blocks
               + blocks * half_unit * (1 + half_unit) ** blocks)
    grad_hidden = ((grad_error + gamma_v * (size + grad_error)) @ np.abs(W)).reshape(
        np.shape(hidden))
    grad_classifier = (grad_error + gamma_n * (size + grad_error)).T @ np.abs(x)
    grad_bias = grad_error.sum(axis=0) + half_unit * (size + grad_error).sum(axis=0)
    return log_prob_bound, entropy_bound, grad_hidden, grad_classifier, grad_bias


@pytest.mark.parametrize("kind", UPSTREAMS)
@pytest.mark.parametrize("temperature", [1.0, 0.5])
@pytest.mark.parametrize("shape", [((40,), 32, 50), ((4, 9), 96, 300)], ids=["small", "wide"])
def test_float32_within_the_products_bound(kind, temperature, shape):
    batch, n_features, n_classes = shape
    rng = np.random.default_rng([len(kind), n_features, int(temperature * 10)])
    hidden, classifier, target, bias = make_inputs(rng, batch, n_features, n_classes,
                                                   np.float32)
    g, h = upstreams(rng, kind, batch)
    (log_prob, entropy), grads = fastloss.linear_token_log_probs_value_and_grad(
        hidden, classifier, target, g, grad_entropy=h, bias=bias, temperature=temperature,
        return_entropy=True, block_rows=7)
    (ref_log_prob, ref_entropy), ref_grads = reference_of(
        hidden, classifier, target, bias, g, h, temperature=temperature)
    bounds = products_bound(hidden, classifier, target, bias, g, h, temperature)
    assert log_prob.dtype == entropy.dtype == np.float32
    assert_close_at_scale(log_prob, ref_log_prob, np.float32, "loss", extra=bounds[0],
                          what="log_prob")
    assert_close_at_scale(entropy, ref_entropy, np.float32, "loss", extra=bounds[1],
                          what="entropy")
    scale = np.abs(ref_log_prob) + np.abs(ref_entropy)
    for grad, ref, bound, given, name in zip(grads, ref_grads, bounds[2:],
                                             (hidden, classifier, bias), NAMES):
        assert grad.dtype == np.float32 and grad.shape == given.shape
        assert_close_at_scale(grad, ref, np.float32, "grad", loss=scale, wrt=given,
                              grad_output=np.abs(g) + np.abs(0.0 if h is None else h),
                              extra=bound, what=f"d/d{name}")


def test_the_bound_is_small_next_to_the_results():
    """The bound means something at a language model's scale of logits."""
    rng = np.random.default_rng(5)
    hidden, classifier, target, bias = make_inputs(rng, (64,), 256, 500, np.float32)
    g, h = upstreams(rng, "both", (64,))
    (log_prob, entropy), ref_grads = reference_of(hidden, classifier, target, bias, g, h)
    bounds = products_bound(hidden, classifier, target, bias, g, h, 1.0)
    valid = target != -100
    assert np.max(bounds[0]) < 2e-2 * np.max(np.abs(log_prob[valid]))
    assert np.max(bounds[1]) < 2e-2 * np.max(entropy[valid])
    for bound, grad in zip(bounds[2:], ref_grads):
        assert np.max(bound) < 0.1 * np.max(np.abs(grad))


def norm_error(actual, ref):
    return float(np.linalg.norm(np.asarray(actual, np.float64) - ref))


@pytest.mark.parametrize("kind", ["log_prob", "both"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_float32_error_at_most_twice_torch_own(kind, temperature):
    """Against torch's float32 ``F.linear`` + ``log_softmax`` (gathered, and the entropy
    ``-(p * log p).sum(-1)``) on the same inputs: the 2-norm of the error over each result
    is at most twice torch's, plus float32's own rounding of the results."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    rng = np.random.default_rng([len(kind), 32, int(temperature * 10)])
    hidden, classifier, target, bias = make_inputs(rng, (96,), 256, 1000, np.float32)
    g, h = upstreams(rng, kind, (96,))
    (log_prob, entropy), grads = fastloss.linear_token_log_probs_value_and_grad(
        hidden, classifier, target, g, grad_entropy=h, bias=bias, temperature=temperature,
        return_entropy=True, block_rows=40)
    (ref_log_prob, ref_entropy), ref_grads = reference_of(
        hidden, classifier, target, bias, g, h, temperature=temperature)
    leaves = [torch.from_numpy(a).requires_grad_() for a in (hidden, classifier, bias)]
    labels = torch.from_numpy(target)
    valid = labels != -100
    log_p = F.log_softmax(F.linear(*leaves) / temperature, dim=-1)
    theirs = log_p.gather(-1, torch.where(valid, labels, 0)[:, None])[:, 0] * valid
    theirs_entropy = -(log_p.exp() * log_p).sum(-1) * valid
    objective = (theirs * torch.as_tensor(g, dtype=torch.float32)).sum()
    if h is not None:
        objective = objective + (theirs_entropy * torch.as_tensor(h, dtype=torch.float32)).sum()
    objective.backward()
    pairs = [(log_prob, theirs.detach().numpy(), ref_log_prob),
             (entropy, theirs_entropy.detach().numpy(), ref_entropy)] + [
        (grad, leaf.grad.numpy(), ref) for grad, leaf, ref in zip(grads, leaves, ref_grads)]
    for ours, torchs, ref in pairs:
        ours_error, torch_error = norm_error(ours, ref), norm_error(torchs, ref)
        rounding = 2.0**-24 * float(np.linalg.norm(ref))
        assert ours_error <= 2 * torch_error + rounding, (ours_error, torch_error)


# ----------------------------------------------------------------------------------------
# ignore_index, threads, layouts, edge cases
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("ignore_index", [-100, 3])
def test_ignored_rows_give_zero_and_contribute_nothing(ignore_index):
    """Ignored rows: log-probability 0, entropy 0, no gradient; the others' gradients are
    those of the batch without them."""
    rng = np.random.default_rng(7)
    hidden, classifier, target, bias = make_inputs(rng, (12,), 6, 8, np.float64,
                                                   ignore_index=ignore_index)
    ignored = target == ignore_index
    assert ignored.sum() >= 4
    g, h = upstreams(rng, "both", (12,))
    (log_prob, entropy), grads = fastloss.linear_token_log_probs_value_and_grad(
        hidden, classifier, target, g, grad_entropy=h, bias=bias, ignore_index=ignore_index,
        return_entropy=True, block_rows=5)
    assert np.all(log_prob[ignored] == 0) and np.all(entropy[ignored] == 0)
    assert np.all(log_prob[~ignored] < 0) and np.all(entropy[~ignored] > 0)
    assert np.all(grads[0][ignored] == 0)
    kept = ~ignored
    (kept_log_prob, kept_entropy), kept_grads = fastloss.linear_token_log_probs_value_and_grad(
        hidden[kept], classifier, target[kept], g[kept], grad_entropy=h[kept], bias=bias,
        ignore_index=ignore_index, return_entropy=True)
    assert_close_contract(log_prob[kept], kept_log_prob, np.float64, "loss")
    assert_close_contract(entropy[kept], kept_entropy, np.float64, "loss")
    assert_close_contract(grads[0][kept], kept_grads[0], np.float64, "grad")
    for grad, ref in zip(grads[1:], kept_grads[1:]):
        assert_close_contract(grad, ref, np.float64, "grad")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bit_identical_for_any_openmp_thread_count(dtype):
    """num_threads sets the OpenMP threads of the token_log_probs passes; the products are
    the same BLAS calls whatever it is, so every result is bit for bit the same."""
    rng = np.random.default_rng(8)
    hidden, classifier, target, bias = make_inputs(rng, (70,), 24, 3000, dtype)
    g, h = upstreams(rng, "both", (70,))
    results = [fastloss.linear_token_log_probs_value_and_grad(
        hidden, classifier, target, g, grad_entropy=h, bias=bias, temperature=0.9,
        return_entropy=True, num_threads=threads, block_rows=16) for threads in (1, 2, 3)]
    for values, grads in results[1:]:
        for value, first in zip(values, results[0][0]):
            assert bitwise_equal(value, first)
        for grad, first in zip(grads, results[0][1]):
            assert bitwise_equal(grad, first)


def test_layouts_and_inputs_left_alone():
    """A Fortran-ordered classifier, strided hidden rows and read-only inputs give the
    contiguous inputs' results, and nothing is written to them."""
    rng = np.random.default_rng(9)
    hidden, classifier, target, bias = make_inputs(rng, (12,), 10, 15, np.float64)
    options = dict(bias=bias, grad_entropy=0.5, return_entropy=True)
    expected = fastloss.linear_token_log_probs_value_and_grad(hidden, classifier, target, 1.0,
                                                              **options)
    strided = np.zeros((24, 10))
    strided[::2] = hidden
    fortran = np.asfortranarray(classifier)
    inputs = [strided[::2], fortran, target, bias]
    copies = [a.copy() for a in inputs]
    for array in inputs:
        array.flags.writeable = False
    values, grads = fastloss.linear_token_log_probs_value_and_grad(
        strided[::2], fortran, target, 1.0, **options)
    for value, ref in zip(values, expected[0]):
        assert_close_contract(value, ref, np.float64, "loss")
    for grad, ref in zip(grads, expected[1]):
        assert_close_contract(grad, ref, np.float64, "grad")
    for array, copy in zip(inputs, copies):
        assert bitwise_equal(array, copy)


def test_out_receives_the_gradients():
    rng = np.random.default_rng(10)
    hidden, classifier, target, bias = make_inputs(rng, (3, 4), 5, 6, np.float32)
    out = (np.full(hidden.shape, np.nan, np.float32),
           np.full(classifier.shape, np.nan, np.float32), np.full(6, np.nan, np.float32))
    _, grads = fastloss.linear_token_log_probs_value_and_grad(
        hidden, classifier, target, 2.0, grad_entropy=1.0, bias=bias, out=out, block_rows=5)
    assert all(grad is array for grad, array in zip(grads, out))
    expected = fastloss.linear_token_log_probs_grad(hidden, classifier, target, 2.0,
                                                    grad_entropy=1.0, bias=bias, block_rows=5)
    for grad, ref in zip(grads, expected):
        assert bitwise_equal(grad, ref)


def test_empty_batch_and_all_rows_ignored():
    rng = np.random.default_rng(11)
    for batch in ((0,), (6,)):
        hidden, classifier, target, bias = make_inputs(rng, batch, 4, 5, np.float64)
        target[:] = -100
        (log_prob, entropy), grads = fastloss.linear_token_log_probs_value_and_grad(
            hidden, classifier, target, 1.0, grad_entropy=1.0, bias=bias,
            return_entropy=True)
        (ref_log_prob, ref_entropy), expected = reference_of(hidden, classifier, target,
                                                             bias, 1.0, 1.0)
        np.testing.assert_array_equal(log_prob, ref_log_prob)
        np.testing.assert_array_equal(entropy, ref_entropy)
        assert log_prob.shape == entropy.shape == batch
        for grad, ref in zip(grads, expected):
            np.testing.assert_array_equal(grad, ref)
            assert not np.any(grad)


@pytest.mark.parametrize("batch", [(6,), (2, 3), (0,)], ids=str)
def test_hidden_size_zero(batch):
    # logits of the bias alone; the rows' reshape(-1, 0) raised
    rng = np.random.default_rng(12)
    hidden, classifier, target, bias = make_inputs(rng, batch, 0, 5, np.float64)
    (log_prob, entropy), grads = fastloss.linear_token_log_probs_value_and_grad(
        hidden, classifier, target, 1.0, grad_entropy=1.0, bias=bias, return_entropy=True)
    (ref_log_prob, ref_entropy), expected = reference_of(hidden, classifier, target, bias,
                                                         1.0, 1.0)
    assert_close_contract(log_prob, ref_log_prob, np.float64, "loss")
    assert_close_contract(entropy, ref_entropy, np.float64, "loss")
    for grad, ref in zip(grads, expected):
        assert grad.shape == ref.shape
        assert_close_contract(grad, ref, np.float64, "grad")


def test_extreme_logits_stay_finite():
    """Logits near +-1e4 (a product of large features): the kernel's shifted exps."""
    hidden = np.array([[100.0, 0.0], [0.0, -100.0], [50.0, 50.0]])
    classifier = np.array([[100.0, 0.0], [-100.0, 0.0], [0.0, 100.0]])
    target = np.array([0, 2, 1])
    for dtype in (np.float32, np.float64):
        (log_prob, entropy), grads = fastloss.linear_token_log_probs_value_and_grad(
            hidden.astype(dtype), classifier.astype(dtype), target, 1.0, grad_entropy=1.0,
            return_entropy=True)
        (ref_log_prob, ref_entropy), ref_grads = reference_of(hidden, classifier, target,
                                                              None, 1.0, 1.0)
        assert np.all(np.isfinite(log_prob)) and np.all(np.isfinite(entropy))
        assert_close_contract(log_prob, ref_log_prob, dtype, "loss")
        assert_close_contract(entropy, ref_entropy, dtype, "loss")
        for grad, ref in zip(grads, ref_grads):
            assert_close_contract(grad, ref, dtype, "grad")


def test_the_registry_declares_it():
    from fastloss import _registry

    entry = _registry.LOSSES["linear_token_log_probs"]
    assert entry.family == "linear_cross_entropy" and entry.tolerance == "products"
    assert entry.inputs == ("hidden", "classifier", "target")
    assert entry.differentiable == NAMES
    assert fastloss.linear_token_log_probs_grad.__module__ == "fastloss.linear_token_log_probs"


# ----------------------------------------------------------------------------------------
# Bad input: an exception naming the argument, from each of the three functions
# ----------------------------------------------------------------------------------------

HIDDEN = np.zeros((4, 3))
CLASSIFIER = np.zeros((5, 3))
TARGET = np.array([0, 1, 2, 4])


def bad(case_id, error, match, hidden=HIDDEN, classifier=CLASSIFIER, target=TARGET,
        **options):
    return pytest.param(hidden, classifier, target, options, error, match, id=case_id)


BAD_CASES = [
    bad("hidden-int", TypeError, "hidden", hidden=np.zeros((4, 3), np.int64)),
    bad("hidden-features", ValueError, "hidden", hidden=np.zeros((4, 2))),
    bad("hidden-scalar", ValueError, "hidden", hidden=np.float64(1.0)),
    bad("classifier-1d", ValueError, "classifier", classifier=np.zeros(3)),
    bad("classifier-no-classes", ValueError, "classifier", classifier=np.zeros((0, 3))),
    bad("classifier-dtype", TypeError, "classifier", classifier=np.zeros((5, 3), np.float32)),
    bad("bias-shape", ValueError, "bias", bias=np.zeros(4)),
    bad("bias-dtype", TypeError, "bias", bias=np.zeros(5, np.float32)),
    bad("target-float", TypeError, "target", target=np.zeros(4)),
    bad("target-shape", ValueError, "target", target=np.zeros(3, np.int64)),
    bad("target-range", ValueError, r"target: value 5 at position \(2,\)",
        target=np.array([0, 1, 5, 2])),
    bad("target-negative", ValueError, "target", target=np.array([0, -1, 2, 2])),
    bad("temperature-zero", ValueError, "temperature", temperature=0.0),
    bad("temperature-negative", ValueError, "temperature", temperature=-1.0),
    bad("temperature-nan", ValueError, "temperature", temperature=float("nan")),
    bad("temperature-str", TypeError, "temperature", temperature="1"),
    bad("ignore_index-float", TypeError, "ignore_index", ignore_index=1.5),
    bad("block_rows-zero", ValueError, "block_rows", block_rows=0),
    bad("num_threads-zero", ValueError, "num_threads", num_threads=0),
]


@pytest.mark.parametrize("hidden, classifier, target, options, error, match", BAD_CASES)
@pytest.mark.parametrize("suffix", ["", "_grad", "_value_and_grad"])
def test_bad_input_names_the_argument(hidden, classifier, target, options, error, match,
                                      suffix):
    with pytest.raises(error, match=match):
        getattr(fastloss, "linear_token_log_probs" + suffix)(hidden, classifier, target,
                                                             **options)


@pytest.mark.parametrize("grad_output, grad_entropy, error, match", [
    (np.zeros(3), None, ValueError, "grad_output"),
    (np.zeros((4, 1)), None, ValueError, "grad_output"),
    ("x", None, TypeError, "grad_output"),
    (np.array(["a"] * 4), None, TypeError, "grad_output"),
    (1.0, np.zeros(5), ValueError, "grad_entropy"),
    (1.0, "x", TypeError, "grad_entropy"),
])
@pytest.mark.parametrize("suffix", ["_grad", "_value_and_grad"])
def test_bad_upstream_gradients(grad_output, grad_entropy, error, match, suffix):
    with pytest.raises(error, match=match):
        getattr(fastloss, "linear_token_log_probs" + suffix)(
            HIDDEN, CLASSIFIER, TARGET, grad_output, grad_entropy=grad_entropy)


@pytest.mark.parametrize("out, error, match", [
    ((np.zeros((4, 3)),), TypeError, "out"),
    ([np.zeros((4, 3)), np.zeros((5, 3))], TypeError, "out"),
    ((np.zeros((4, 2)), np.zeros((5, 3))), ValueError, r"out \(hidden\)"),
    ((np.zeros((4, 3)), np.zeros((5, 3), np.float32)), TypeError, r"out \(classifier\)"),
    ((HIDDEN, np.zeros((5, 3))), ValueError, "overlaps the input hidden"),
])
def test_bad_out(out, error, match):
    with pytest.raises(error, match=match):
        fastloss.linear_token_log_probs_grad(HIDDEN, CLASSIFIER, TARGET, out=out)


@pytest.mark.parametrize("overlapped", ["grad_output", "grad_entropy"])
def test_out_overlapping_an_upstream_gradient_is_refused(overlapped):
    # Found by hunt13: an out= sharing memory with grad_output (or grad_entropy) was
    # written while later blocks of rows still read it: silently wrong gradients.
    # Refused, as an overlap with the inputs is.
    rng = np.random.default_rng(4)
    n, n_features, n_classes = 9, 4, 7
    hidden = rng.standard_normal((n, n_features))
    classifier = rng.standard_normal((n_classes, n_features))
    target = rng.integers(0, n_classes, n)
    upstreams = {"grad_output": rng.uniform(0.5, 1.5, n),
                 "grad_entropy": rng.uniform(-1.0, 1.0, n)}
    memory = np.zeros(n * n_features + 1)
    memory[:n] = upstreams[overlapped]
    upstreams[overlapped] = memory[:n]
    out = (memory[1:].reshape(n, n_features), np.empty((n_classes, n_features)))
    for function in (fastloss.linear_token_log_probs_grad,
                     fastloss.linear_token_log_probs_value_and_grad):
        with pytest.raises(ValueError, match=f"out \\(hidden\\): overlaps the input {overlapped}"):
            function(hidden, classifier, target, upstreams["grad_output"],
                     grad_entropy=upstreams["grad_entropy"], block_rows=2, out=out)


# ----------------------------------------------------------------------------------------
# torch: the adapter and the module against F.linear + log_softmax
# ----------------------------------------------------------------------------------------

def _torch_formula(torch, hidden, classifier, target, bias, temperature, ignore_index):
    import torch.nn.functional as F

    valid = target != ignore_index
    log_p = F.log_softmax(F.linear(hidden, classifier, bias) / temperature, dim=-1)
    log_prob = log_p.gather(-1, torch.where(valid, target, 0)[..., None])[..., 0]
    entropy = -(log_p.exp() * log_p).sum(-1)
    zero = torch.zeros((), dtype=log_p.dtype)
    return torch.where(valid, log_prob, zero), torch.where(valid, entropy, zero)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("needs", [(True, True, True), (True, False, False),
                                   (False, True, False), (False, False, True)],
                         ids=["all", "hidden", "classifier", "bias"])
@pytest.mark.parametrize("outputs", ["log_prob", "entropy", "both"])
def test_torch_matches_the_formula(dtype, needs, outputs):
    torch = pytest.importorskip("torch")
    import fastloss.torch as FL

    rng = np.random.default_rng([len(dtype), sum(needs), len(outputs)])
    arrays = make_inputs(rng, (3, 4), 8, 20, getattr(np, dtype))
    hidden, classifier, target, bias = (torch.from_numpy(a) for a in arrays)
    g = torch.from_numpy(rng.uniform(-2, 2, (3, 4))).to(hidden.dtype)
    h = torch.from_numpy(rng.uniform(-2, 2, (3, 4))).to(hidden.dtype)

    def run(function, wide):
        leaves = [(t.double() if wide else t).clone().requires_grad_(need)
                  for t, need in zip((hidden, classifier, bias), needs)]
        log_prob, entropy = function(leaves, target)
        objective = {"log_prob": (log_prob * g).sum(), "entropy": (entropy * h).sum(),
                     "both": (log_prob * g).sum() + (entropy * h).sum()}[outputs]
        objective.backward()
        return log_prob, entropy, [leaf.grad for leaf in leaves]

    def ours(leaves, target):
        return FL.linear_token_log_probs(leaves[0], leaves[1], target, bias=leaves[2],
                                         temperature=0.8, return_entropy=True, block_rows=5)

    def formula(leaves, target):
        return _torch_formula(torch, *leaves[:2], target, leaves[2], 0.8, -100)

    log_prob, entropy, grads = run(ours, False)
    ref_log_prob, ref_entropy, ref_grads = run(formula, True)
    assert log_prob.dtype == entropy.dtype == hidden.dtype and log_prob.shape == (3, 4)
    contract = getattr(np, dtype)
    bounds = products_bound(*arrays[:3], arrays[3], g.double().numpy(), h.double().numpy(),
                            0.8, dtype=contract)
    assert_close_at_scale(log_prob.detach().numpy(), ref_log_prob.detach().numpy(), contract,
                          "loss", extra=bounds[0])
    assert_close_at_scale(entropy.detach().numpy(), ref_entropy.detach().numpy(), contract,
                          "loss", extra=bounds[1])
    for grad, ref, need, bound, given in zip(grads, ref_grads, needs, bounds[2:], arrays[:2]
                                             + (arrays[3],)):
        if not need:
            assert grad is None
            continue
        assert grad.dtype == hidden.dtype
        assert_close_at_scale(grad.numpy(), ref.numpy(), contract, "grad",
                              loss=np.abs(ref_log_prob.detach().numpy()) + 1, wrt=given,
                              grad_output=2.0, extra=bound)


def test_torch_log_prob_alone_and_gradcheck():
    torch = pytest.importorskip("torch")
    import fastloss.torch as FL

    rng = np.random.default_rng(3)
    arrays = make_inputs(rng, (5,), 4, 7, np.float64)
    hidden, classifier, target, bias = (torch.from_numpy(a) for a in arrays)
    alone = FL.linear_token_log_probs(hidden, classifier, target, bias=bias)
    assert isinstance(alone, torch.Tensor) and alone.shape == (5,)
    leaves = [t.clone().requires_grad_() for t in (hidden, classifier, bias)]

    def function(hidden, classifier, bias):
        return FL.linear_token_log_probs(hidden, classifier, target, bias=bias,
                                         temperature=1.3, return_entropy=True)

    assert torch.autograd.gradcheck(function, tuple(leaves), eps=1e-6, atol=1e-7)


def test_torch_module():
    torch = pytest.importorskip("torch")
    import fastloss.torch as FL

    torch.manual_seed(0)
    module = FL.LinearTokenLogProbs(6, 11, bias=True, dtype=torch.float64, temperature=0.9,
                                    return_entropy=True)
    assert set(module.state_dict()) == {"linear.weight", "linear.bias"}
    assert "temperature=0.9" in repr(module)
    hidden = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 11, (2, 3))
    log_prob, entropy = module(hidden, target)
    ref_log_prob, ref_entropy = _torch_formula(torch, hidden, module.linear.weight, target,
                                               module.linear.bias, 0.9, -100)
    assert_close_contract(log_prob.detach().numpy(), ref_log_prob.detach().numpy(),
                          np.float64, "loss")
    assert_close_contract(entropy.detach().numpy(), ref_entropy.detach().numpy(),
                          np.float64, "loss")
    (log_prob.sum() - 0.1 * entropy.sum()).backward()
    ours = [p.grad.clone() for p in (hidden, module.linear.weight, module.linear.bias)]
    for p in (hidden, module.linear.weight, module.linear.bias):
        p.grad = None
    (ref_log_prob.sum() - 0.1 * ref_entropy.sum()).backward()
    for grad, p in zip(ours, (hidden, module.linear.weight, module.linear.bias)):
        assert_close_contract(grad.numpy(), p.grad.numpy(), np.float64, "grad")


@pytest.mark.parametrize("call, error, match", [
    (lambda torch, FL: FL.linear_token_log_probs(
        torch.zeros(4, 3, dtype=torch.int64), torch.zeros(5, 3), torch.zeros(4, dtype=torch.int64)),
     TypeError, "hidden"),
    (lambda torch, FL: FL.linear_token_log_probs(
        torch.zeros(4, 3), torch.zeros(5, 3), torch.zeros(4)), TypeError, "target"),
    (lambda torch, FL: FL.linear_token_log_probs(
        torch.zeros(4, 3), torch.zeros(5, 3), torch.zeros(4, dtype=torch.int64),
        bias=torch.zeros(5, dtype=torch.float64)), TypeError, "bias"),
    (lambda torch, FL: FL.linear_token_log_probs(
        torch.zeros(4, 3), torch.zeros(5, 2), torch.zeros(4, dtype=torch.int64)),
     ValueError, "hidden"),
    (lambda torch, FL: FL.linear_token_log_probs(
        torch.zeros(4, 3), torch.zeros(5, 3), torch.zeros(4, dtype=torch.int64),
        temperature=0.0), ValueError, "temperature"),
    (lambda torch, FL: FL.linear_token_log_probs(
        torch.zeros(4, 3), "w", torch.zeros(4, dtype=torch.int64)), TypeError, "classifier"),
])
def test_torch_bad_input(call, error, match):
    torch = pytest.importorskip("torch")
    import fastloss.torch as FL

    with pytest.raises(error, match=match):
        call(torch, FL)


# ----------------------------------------------------------------------------------------
# Memory: the scratch, whatever N
# ----------------------------------------------------------------------------------------

MiB = 1 << 20
THREADS = 2
RSS_CHILD = CHILD_HEAD + r"""
n_rows, n_features, n_classes = (int(a) for a in sys.argv[1:4])


def inputs(rows):
    hidden = touched((rows, n_features))
    hidden.reshape(-1)[::7] = 0.5
    classifier = touched((n_classes, n_features))
    classifier.reshape(-1)[::5] = -0.25
    bias = touched(n_classes, 0.1)
    target = (np.arange(rows) * 7) % n_classes
    grad_output = touched(rows, 1.0)
    out = (touched((rows, n_features)), touched((n_classes, n_features)), touched(n_classes))
    return lambda: fastloss.linear_token_log_probs_value_and_grad(
        hidden, classifier, target, grad_output, grad_entropy=grad_output, bias=bias,
        return_entropy=True, out=out)


warm = inputs(64)
call = inputs(n_rows)
""" + CHILD_TAIL


def extra_resident_bytes(tmp_path, n_rows, n_features, n_classes):
    return run_child(RSS_CHILD, (n_rows, n_features, n_classes), cwd=tmp_path,
                     FASTLOSS_NUM_THREADS=str(THREADS))["extra"]


@needs_proc
@needs_plain_malloc
def test_peak_memory_is_the_scratch_whatever_N(tmp_path):
    """With the gradients in out=, the call touches the two blocks of scratch (logits and
    their gradient, 8 MiB each), the tile of the classifier's gradient (1 MiB), the
    kernel's per-thread rows, the BLAS's buffers, the bias's float64 sums and O(N)
    vectors (the two results, the upstream gradients in float64). From N = 512 to
    N = 4096 (N x V logits of 32 and 256 MiB) only the O(N) vectors grow; an N x V array
    would add 224 MiB."""
    n_features, n_classes, small_n, large_n = 32, 16384, 512, 4096
    small = extra_resident_bytes(tmp_path, small_n, n_features, n_classes)
    large = extra_resident_bytes(tmp_path, large_n, n_features, n_classes)
    per_row = 2 * 4 + 2 * 8 + 2 * 8  # results, upstreams in float64, the kernel's float64
    assert large <= small + per_row * (large_n - small_n) + MiB // 2, (small / MiB,
                                                                       large / MiB)
    assert large <= 0.1 * large_n * n_classes * 4, large / MiB
