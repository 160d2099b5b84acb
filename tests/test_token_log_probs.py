"""token_log_probs (csrc/vocab.c): log softmax(logits / T)[target] and the entropy, and
the gradient of any weighted sum of both, against the float64 reference, finite
differences, torch's unfused formulas, and the edge cases of the family."""
import numpy as np
import pytest

import fastloss
from fastloss import reference
from loss_specs import assert_close_contract, call_unmodified, central_differences

DTYPES = [np.float32, np.float64]
IDS = ["float32", "float64"]


def _inputs(rng, shape, dtype, scale=3.0, ignored=True):
    logits = (rng.standard_normal(shape) * scale).astype(dtype)
    target = rng.integers(0, shape[-1], shape[:-1])
    if ignored and target.size > 2:
        target.reshape(-1)[1] = -100
    return logits, target


def _value_and_grad_checked(rng, logits, target, dtype, temperature, rows=slice(None)):
    """token_log_probs_value_and_grad with the entropy and random upstreams for both, its
    values and gradient held to the reference on `rows`; returns ((log_prob, entropy),
    grad)."""
    upstream = rng.standard_normal(len(target))
    upstream_entropy = rng.standard_normal(len(target))
    (log_prob, entropy), grad = fastloss.token_log_probs_value_and_grad(
        logits, target, upstream, grad_entropy=upstream_entropy, temperature=temperature,
        return_entropy=True)
    ref_log_prob, ref_entropy = reference.token_log_probs(
        logits[rows], target[rows], temperature=temperature, return_entropy=True)
    assert_close_contract(log_prob[rows], ref_log_prob, dtype, "loss", "log_prob")
    assert_close_contract(entropy[rows], ref_entropy, dtype, "loss", "entropy")
    assert_close_contract(grad[rows], reference.token_log_probs_grad(
        logits[rows], target[rows], upstream[rows], grad_entropy=upstream_entropy[rows],
        temperature=temperature), dtype, "grad")
    return (log_prob, entropy), grad


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.5])
@pytest.mark.parametrize("shape", [(9, 1000), (2, 3, 4100), (5, 1)], ids=str)
def test_values_match_the_reference(rng, dtype, temperature, shape):
    logits, target = _inputs(rng, shape, dtype)
    log_prob, entropy = call_unmodified(fastloss.token_log_probs, logits, target,
                                        temperature=temperature, return_entropy=True)
    ref_log_prob, ref_entropy = reference.token_log_probs(
        logits, target, temperature=temperature, return_entropy=True)
    for value in (log_prob, entropy):
        assert value.dtype == dtype and value.shape == shape[:-1]
    assert_close_contract(log_prob, ref_log_prob, dtype, "loss", "log_prob")
    assert_close_contract(entropy, ref_entropy, dtype, "loss", "entropy")
    alone = fastloss.token_log_probs(logits, target, temperature=temperature)
    assert np.array_equal(alone, log_prob)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("upstream", ["log_prob", "entropy", "both", "scalars"])
def test_gradient_matches_the_reference(rng, dtype, temperature, upstream):
    shape = (2, 5, 3000)
    logits, target = _inputs(rng, shape, dtype)
    g = {"log_prob": rng.standard_normal(shape[:-1]), "entropy": 0.0,
         "both": rng.standard_normal(shape[:-1]), "scalars": 0.75}[upstream]
    h = {"log_prob": None, "entropy": rng.standard_normal(shape[:-1]),
         "both": rng.standard_normal(shape[:-1]), "scalars": -0.3}[upstream]
    grad = call_unmodified(fastloss.token_log_probs_grad, logits, target, g, grad_entropy=h,
                           temperature=temperature)
    expected = reference.token_log_probs_grad(logits, target, g, grad_entropy=h,
                                              temperature=temperature)
    assert grad.dtype == dtype and grad.shape == shape
    assert_close_contract(grad, expected, dtype, "grad")
    assert np.all(grad[0, 1] == 0)  # the ignored row
    value, fused = fastloss.token_log_probs_value_and_grad(
        logits, target, g, grad_entropy=h, temperature=temperature, return_entropy=True)
    assert np.array_equal(fused, grad)
    assert np.array_equal(value[0], fastloss.token_log_probs(logits, target,
                                                             temperature=temperature))


@pytest.mark.parametrize("temperature", [1.0, 1.7])
def test_gradient_passes_finite_differences(rng, temperature):
    logits, target = _inputs(rng, (3, 7), np.float64, scale=1.5)
    g, h = rng.standard_normal(3), rng.standard_normal(3)

    def objective(x):
        log_prob, entropy = reference.token_log_probs(x, target, temperature=temperature,
                                                      return_entropy=True)
        return float(np.sum(g * log_prob + h * entropy))

    numeric = central_differences(objective, logits, 1e-3)
    grad = fastloss.token_log_probs_grad(logits, target, g, grad_entropy=h,
                                         temperature=temperature)
    np.testing.assert_allclose(grad, numeric, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_huge_logits(rng, dtype):
    logits = (rng.choice([-1e4, 1e4], (6, 3000)) + rng.standard_normal((6, 3000))).astype(dtype)
    target = rng.integers(0, 3000, 6)
    target[0] = np.argmax(logits[0])
    for temperature in (1.0, 3.0):
        value = fastloss.token_log_probs(logits, target, temperature=temperature,
                                         return_entropy=True)
        expected = reference.token_log_probs(logits, target, temperature=temperature,
                                             return_entropy=True)
        assert np.all(np.isfinite(value[0])) and np.all(np.isfinite(value[1]))
        assert_close_contract(value[0], expected[0], dtype, "loss", "log_prob")
        assert_close_contract(value[1], expected[1], dtype, "loss", "entropy")
        grad = fastloss.token_log_probs_grad(logits, target, 1.0, grad_entropy=0.5,
                                             temperature=temperature)
        assert_close_contract(grad, reference.token_log_probs_grad(
            logits, target, 1.0, grad_entropy=0.5, temperature=temperature), dtype, "grad")


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_a_converged_row_keeps_its_digits(dtype):
    """The target far above the rest: log p_t is tiny, 1 - p_t too, and both keep their
    relative accuracy (1 - p_t from the sum without the target)."""
    logits = np.zeros((2, 500), dtype)
    logits[:, 7] = 20.0
    target = np.array([7, 7])
    log_prob, entropy = fastloss.token_log_probs(logits, target, return_entropy=True)
    ref_log_prob, ref_entropy = reference.token_log_probs(logits, target, return_entropy=True)
    assert_close_contract(log_prob, ref_log_prob, dtype, "loss")
    assert_close_contract(entropy, ref_entropy, dtype, "loss")
    grad = fastloss.token_log_probs_grad(logits, target)
    assert_close_contract(grad, reference.token_log_probs_grad(logits, target), dtype, "grad")


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_masked_classes_and_one_class(dtype):
    logits = np.array([[0.5, -np.inf, 2.0, -np.inf], [1.0, 2.0, 3.0, 4.0]], dtype)
    target = np.array([2, 3])
    value = fastloss.token_log_probs(logits, target, return_entropy=True)
    expected = reference.token_log_probs(logits, target, return_entropy=True)
    assert_close_contract(value[0], expected[0], dtype, "loss")
    assert_close_contract(value[1], expected[1], dtype, "loss")
    grad = fastloss.token_log_probs_grad(logits, target, 1.0, grad_entropy=1.0)
    assert np.all(grad[0, [1, 3]] == 0)
    assert_close_contract(grad, reference.token_log_probs_grad(logits, target, 1.0,
                                                               grad_entropy=1.0), dtype, "grad")
    one = np.array([[3.0], [-2.0]], dtype)
    log_prob, entropy = fastloss.token_log_probs(one, np.array([0, 0]), return_entropy=True)
    assert np.all(log_prob == 0) and np.all(entropy == 0)
    assert np.all(fastloss.token_log_probs_grad(one, np.array([0, 0]), 1.0,
                                                grad_entropy=1.0) == 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("temperature", [1.0, 0.8])
def test_masked_classes_in_every_range_on_every_simd_path(simd_path, rng, dtype, temperature):
    """-inf logits (e = 0, e a = 0 log 0 = 0 in the entropy's W = sum e a) in every range
    the statistics pass splits a row into: before and after the target in its chunk, the
    part read beside the next chunk, the last chunk; and a finite logit whose shifted
    value a = x - max overflows to -inf.  Such ranges take W again with a floor under a
    (vocab_body.h, VOCAB_W_FLOORED); values and gradients against the reference, the
    same bits from the forward, value_and_grad and any thread count."""
    n_classes = 3 * 2048 + 100
    logits, _ = _inputs(rng, (5, n_classes), dtype, ignored=False)
    target = np.array([1000, 2048 + 5, 4096 + 500, 30, 100])
    logits[0, [3, 999, 1001, 2047]] = -np.inf            # around the target, chunk 0
    logits[1, [2048, 2052, 3000, 4096, 6000]] = -np.inf   # target chunk, next, rest
    logits[2, [4100, 6100]] = -np.inf                     # beside the short next chunk
    logits[2, 6144:6144 + 50] = -np.inf                   # the short last chunk
    logits[2, -3:] = -np.inf
    logits[3, ::97] = -np.inf                             # every chunk, every range
    logits[3, 30] = 1.0
    big = np.finfo(dtype).max / 2 * 1.5
    logits[4, 100] = big                                  # the max, and a finite logit
    logits[4, [200, 2100, 5000]] = -big                   # whose x - max is -inf
    (log_prob, entropy), grad = _value_and_grad_checked(rng, logits, target, dtype,
                                                        temperature, rows=slice(4))
    assert np.all(np.isfinite(entropy[:4])) and np.all(np.isfinite(log_prob[:4]))
    assert np.all(grad[1, [2048, 2052, 3000, 4096, 6000]] == 0)
    # row 4: the max holds all the mass (every other e underflows): log p = H = 0 (in
    # float64 the chunks' merge once made H NaN: exp(delta) (W_k + delta S_k) was
    # 0 * -inf where delta S_k overflows)
    assert log_prob[4] == 0 and entropy[4] == 0
    for threads in (1, 2, 3):
        alone = fastloss.token_log_probs(logits, target, temperature=temperature,
                                         return_entropy=True, num_threads=threads)
        assert np.array_equal(alone[0], log_prob) and np.array_equal(alone[1], entropy)


def test_rows_without_a_softmax_are_nan():
    logits = np.array([[0.0, np.nan, 1.0], [np.inf, 0.0, 1.0], [-np.inf] * 3, [0.0, 1.0, 2.0]])
    target = np.array([0, 0, 0, 1])
    log_prob, entropy = fastloss.token_log_probs(logits, target, return_entropy=True)
    assert np.all(np.isnan(log_prob[:3])) and np.all(np.isnan(entropy[:3]))
    assert np.isfinite(log_prob[3]) and np.isfinite(entropy[3])
    grad = fastloss.token_log_probs_grad(logits, target, 1.0, grad_entropy=1.0)
    assert np.all(np.isnan(grad[:3])) and np.all(np.isfinite(grad[3]))


def test_ignored_rows():
    logits = np.random.default_rng(1).standard_normal((4, 6))
    target = np.array([-100, 2, -100, 5])
    log_prob, entropy = fastloss.token_log_probs(logits, target, return_entropy=True)
    assert log_prob[0] == 0 and entropy[2] == 0 and log_prob[1] < 0 and entropy[1] > 0
    grad = fastloss.token_log_probs_grad(logits, target, 1.0, grad_entropy=1.0)
    assert np.all(grad[[0, 2]] == 0)
    every = np.full(4, 7)
    assert np.all(fastloss.token_log_probs(logits, every, ignore_index=7) == 0)
    assert np.all(fastloss.token_log_probs_grad(logits, every, ignore_index=7) == 0)


def test_thread_count_does_not_change_a_bit(rng):
    logits, target = _inputs(rng, (37, 5000), np.float32)
    g, h = rng.standard_normal(37), rng.standard_normal(37)
    results = []
    for threads in (1, 2, 3, 7):
        value, grad = fastloss.token_log_probs_value_and_grad(
            logits, target, g, grad_entropy=h, return_entropy=True, temperature=0.8,
            num_threads=threads)
        results.append((value[0].tobytes(), value[1].tobytes(), grad.tobytes()))
    assert all(result == results[0] for result in results)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_strided_and_fortran_inputs(rng, dtype):
    base, _ = _inputs(rng, (8, 2 * 700), dtype, ignored=False)
    target = rng.integers(0, 700, 8)
    cases = [base[:, ::2], np.asfortranarray(base[:, :700]), base[::2, :700],
             base[:, :700].T.copy().T]
    for logits in cases:
        rows = logits.shape[0]
        expected = reference.token_log_probs(logits, target[:rows], return_entropy=True)
        value = fastloss.token_log_probs(logits, target[:rows], return_entropy=True)
        assert_close_contract(value[0], expected[0], dtype, "loss")
        assert_close_contract(value[1], expected[1], dtype, "loss")
        grad = fastloss.token_log_probs_grad(logits, target[:rows], 1.0, grad_entropy=0.5)
        assert grad.flags.c_contiguous
        assert_close_contract(grad, reference.token_log_probs_grad(
            logits, target[:rows], 1.0, grad_entropy=0.5), dtype, "grad")


def test_out_receives_the_gradient(rng):
    logits, target = _inputs(rng, (4, 300), np.float32)
    out = np.empty_like(logits)
    result = fastloss.token_log_probs_grad(logits, target, 1.0, out=out)
    assert result is out
    assert np.array_equal(out, fastloss.token_log_probs_grad(logits, target))
    strided = np.zeros((4, 600), np.float32)[:, ::2]
    assert fastloss.token_log_probs_grad(logits, target, out=strided) is strided
    assert np.array_equal(strided, out)
    in_place = logits.copy()
    fastloss.token_log_probs_grad(in_place, target, out=in_place)
    assert np.array_equal(in_place, out)


@pytest.mark.parametrize("call, message", [
    (lambda x, t: fastloss.token_log_probs(x, t, temperature=0.0), "^temperature"),
    (lambda x, t: fastloss.token_log_probs(x, t, temperature=-1.0), "^temperature"),
    (lambda x, t: fastloss.token_log_probs(x, t, temperature=np.inf), "^temperature"),
    (lambda x, t: fastloss.token_log_probs_grad(x, t, temperature=np.nan), "^temperature"),
    (lambda x, t: fastloss.token_log_probs(x, t[:3]), "^target"),
    (lambda x, t: fastloss.token_log_probs(x, t + 100), "^target: value"),
    (lambda x, t: fastloss.token_log_probs(x, t * 1.0), "^target"),
    (lambda x, t: fastloss.token_log_probs(x.astype(np.int64), t), "^logits"),
    (lambda x, t: fastloss.token_log_probs(x.astype(np.uint16), t), "^logits"),
    (lambda x, t: fastloss.token_log_probs(x[:, :0], t), "^logits"),
    (lambda x, t: fastloss.token_log_probs_grad(x, t, np.ones(3)), "^grad_output"),
    (lambda x, t: fastloss.token_log_probs_grad(x, t, grad_entropy=np.ones(3)),
     "^grad_entropy"),
    (lambda x, t: fastloss.token_log_probs_grad(x, t, out=np.empty((4, 9))), "^out"),
    (lambda x, t: fastloss.token_log_probs_grad(x, t, out=np.empty((4, 10), np.float32)),
     "^out"),
    (lambda x, t: fastloss.token_log_probs(x, t, ignore_index="a"), "^ignore_index"),
])
def test_bad_input_names_the_argument(call, message):
    logits = np.random.default_rng(2).standard_normal((4, 10))
    target = np.array([1, 2, 3, 4])
    with pytest.raises((TypeError, ValueError), match=message):
        call(logits, target)


def test_torch_unfused_formulas():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    logits, target = _inputs(rng, (6, 2000), np.float32)
    target[1] = 3
    temperature = 0.8
    g, h = rng.standard_normal(6), rng.standard_normal(6)
    leaf = torch.from_numpy(logits.astype(np.float64)).requires_grad_(True)
    log_p = torch.log_softmax(leaf / temperature, dim=-1)
    log_prob = log_p.gather(-1, torch.from_numpy(target)[:, None]).squeeze(-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    (torch.from_numpy(g) * log_prob + torch.from_numpy(h) * entropy).sum().backward()
    value = fastloss.token_log_probs(logits, target, temperature=temperature,
                                     return_entropy=True)
    assert_close_contract(value[0], log_prob.detach().numpy(), np.float32, "loss")
    assert_close_contract(value[1], entropy.detach().numpy(), np.float32, "loss")
    grad = fastloss.token_log_probs_grad(logits, target, g, grad_entropy=h,
                                         temperature=temperature)
    assert_close_contract(grad, leaf.grad.numpy(), np.float32, "grad")


@pytest.mark.parametrize("return_entropy", [False, True])
def test_torch_adapter_and_module(return_entropy):
    torch = pytest.importorskip("torch")
    import fastloss.torch as FL

    rng = np.random.default_rng(17)
    logits, target = _inputs(rng, (3, 4, 900), np.float64)
    leaf = torch.from_numpy(logits.copy()).requires_grad_(True)
    value = FL.token_log_probs(leaf, torch.from_numpy(target), temperature=0.9,
                               return_entropy=return_entropy)
    g = rng.standard_normal((3, 4))
    h = rng.standard_normal((3, 4)) if return_entropy else None
    if return_entropy:
        (value[0] * torch.from_numpy(g) + value[1] * torch.from_numpy(h)).sum().backward()
        log_prob = value[0]
    else:
        (value * torch.from_numpy(g)).sum().backward()
        log_prob = value
    assert_close_contract(log_prob.detach().numpy(), reference.token_log_probs(
        logits, target, temperature=0.9), np.float64, "loss")
    assert_close_contract(leaf.grad.numpy(), reference.token_log_probs_grad(
        logits, target, g, grad_entropy=h, temperature=0.9), np.float64, "grad")
    module = FL.TokenLogProbs(temperature=0.9, return_entropy=return_entropy)
    again = module(leaf, torch.from_numpy(target))
    assert torch.equal(again[0] if return_entropy else again, log_prob)
    if return_entropy:  # only the entropy used: grad_output of the log-probs is 0
        leaf.grad = None
        again[1].sum().backward()
        assert_close_contract(leaf.grad.numpy(), reference.token_log_probs_grad(
            logits, target, 0.0, grad_entropy=1.0, temperature=0.9), np.float64, "grad")


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_every_simd_path(simd_path, rng, dtype):
    """Each SIMD path of the kernels against the reference: rows of several chunks with a
    short last one, the target first, last, in the middle of a chunk and on a chunk's
    edge, a dominant target (p_t near 1), masked classes, and a temperature."""
    shape = (6, 2 * 2048 + 100)
    logits, _ = _inputs(rng, shape, dtype, ignored=False)
    target = np.array([0, shape[1] - 1, 3000, 2047, 2048, 100])
    logits[5, 100] = 60.0  # the target holds nearly all the mass
    logits[2, 10:20] = -np.inf
    (log_prob, entropy), grad = _value_and_grad_checked(rng, logits, target, dtype, 0.9)
    assert np.all(grad[2, 10:20] == 0)
    alone = fastloss.token_log_probs(logits, target, temperature=0.9, return_entropy=True)
    assert np.array_equal(alone[0], log_prob) and np.array_equal(alone[1], entropy)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("temperature", [1.0, 0.9])
def test_exps_over_their_whole_range_on_every_simd_path(simd_path, rng, dtype, temperature):
    """The statistics pass's exp over every a = (x - max) / T it meets, on each SIMD path:
    rows whose shifted logits spread evenly from 0 past float's flush to 0 (below
    -87.3), so that terms of every size reach S = sum e and W = sum e a; a row of equal
    logits (entropy log V, p = 1/V exactly); and a row whose other classes all sit
    just above and below the flush, beside a target holding nearly all the mass."""
    n_classes = 2 * 2048 + 100
    spread = np.linspace(0.0, -100.0 * temperature, n_classes)
    logits = np.stack([
        rng.permutation(spread) + 5.0,
        rng.permutation(spread) * 0.5 - 3.0,
        np.full(n_classes, 2.5),
        rng.uniform(-87.5, -87.1, n_classes) * temperature,
    ]).astype(dtype)
    target = np.array([1000, 2048, 7, 4000])
    logits[3, 4000] = 0.0
    (log_prob, entropy), grad = _value_and_grad_checked(rng, logits, target, dtype,
                                                        temperature)
    # equal logits: every a is 0 and exp(0) = 1, so S = V, W = 0 exactly
    assert entropy[2] == dtype(np.log(n_classes)) and log_prob[2] == dtype(-np.log(n_classes))
    alone = fastloss.token_log_probs(logits, target, temperature=temperature,
                                     return_entropy=True)
    assert np.array_equal(alone[0], log_prob) and np.array_equal(alone[1], entropy)
