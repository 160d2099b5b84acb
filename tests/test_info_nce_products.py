"""info_nce with products in the inputs' precision: the accuracy contract for losses that
multiply matrices (docs/accuracy.rst), its bound (fastloss._contract.info_nce_products_bound)
on many shapes, temperatures and layouts, the comparison with torch's own float32
computation, and ``precision="float64"``, which keeps the plain contract."""
import numpy as np
import pytest

import fastloss
from fastloss import _contract, _kernels, reference

from contract_floors import assert_close_at_scale
from loss_specs import assert_close_contract, bitwise_equal

REDUCTIONS = ("mean", "sum", "none")


def nce_inputs(rng, n_rows, n_keys, dim, layout, dtype=np.float32):
    """Queries and keys near them (the positives matter, the softmax is neither flat nor
    one-hot), extra keys as negatives; ``layout`` adds duplicated or zero rows."""
    query = rng.standard_normal((n_rows, dim))
    key = np.concatenate([query + 0.7 * rng.standard_normal((n_rows, dim)),
                          rng.standard_normal((n_keys - n_rows, dim))])
    if layout == "duplicated" and n_rows > 2:
        key[1] = key[0]          # two keys alike: their terms of G cancel
        query[2] = query[1]
        key[2] = query[2]        # a query equal to its key: the gradient along the row
    elif layout == "zero" and n_rows > 1:
        query[0] = 0.0           # scaled by 1 / eps in the normalisation's backward
        key[-1] = 0.0
    elif layout == "tiny" and n_rows > 1:
        query[-1] *= 1e-14       # a row below eps: normalised as x / eps
    return query.astype(dtype), key.astype(dtype)


def upstream(rng, reduction, n_rows):
    if reduction == "none":
        return rng.uniform(0.5, 2.0, n_rows)
    return 1.7


def check_within_products_bound(query, key, grad_output, dtype=np.float32, **options):
    loss, grads = fastloss.info_nce_value_and_grad(query, key, grad_output, **options)
    plain = fastloss.info_nce(query, key, **options)
    wide = [np.asarray(a, np.float64) for a in (query, key)]
    ref_loss, ref_grads = reference.info_nce_value_and_grad(*wide, grad_output, **options)
    bounds = _contract.info_nce_products_bound(query, key, grad_output=grad_output,
                                               dtype=dtype, **options)
    for value, what in ((loss, "fused loss"), (plain, "loss")):
        assert_close_at_scale(value, ref_loss, dtype, "loss", extra=bounds[0], what=what)
    for index, (grad, ref, wrt, bound) in enumerate(zip(grads, ref_grads, (query, key),
                                                        bounds[1:])):
        assert grad.dtype == dtype and grad.shape == wrt.shape
        assert_close_at_scale(grad, ref, dtype, "grad", loss=ref_loss, wrt=wrt,
                              grad_output=grad_output, extra=bound, what=f"grad {index}")
    return loss, grads


@pytest.mark.parametrize("n_rows, extra_keys, dim", [(1, 0, 1), (2, 3, 5), (7, 0, 16),
                                                      (64, 9, 128), (130, 0, 768)])
@pytest.mark.parametrize("temperature", [0.02, 0.05, 1.0])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("layout", ["random", "duplicated", "zero", "tiny"])
def test_float32_within_the_products_bound(n_rows, extra_keys, dim, temperature, symmetric,
                                           layout):
    if symmetric:
        extra_keys = 0
    rng = np.random.default_rng([n_rows, dim, int(temperature * 100), symmetric,
                                 len(layout)])
    query, key = nce_inputs(rng, n_rows, n_rows + extra_keys, dim, layout)
    for reduction in REDUCTIONS:
        check_within_products_bound(query, key, upstream(rng, reduction, n_rows),
                                    temperature=temperature, symmetric=symmetric,
                                    reduction=reduction)


@pytest.mark.parametrize("symmetric", [False, True])
def test_float64_within_its_own_products_bound(symmetric):
    rng = np.random.default_rng(64)
    query, key = nce_inputs(rng, 50, 50 if symmetric else 61, 33, "duplicated", np.float64)
    check_within_products_bound(query, key, 1.0, np.float64, temperature=0.05,
                                symmetric=symmetric)


def test_the_bound_is_small_next_to_the_results():
    """The bound means something: at the benchmark's D and temperature a small fraction
    of the loss and of the largest gradient entry (gamma_D is 4.6e-5 at D = 768)."""
    rng = np.random.default_rng(768)
    query, key = nce_inputs(rng, 256, 256, 768, "random")
    options = dict(temperature=0.05, symmetric=True)
    loss, grads = reference.info_nce_value_and_grad(*(a.astype(np.float64)
                                                      for a in (query, key)), **options)
    bounds = _contract.info_nce_products_bound(query, key, **options)
    assert bounds[0] < 1e-2 * loss
    for bound, grad in zip(bounds[1:], grads):
        assert np.max(bound) < 0.05 * np.max(np.abs(grad))


# ----------------------------------------------------------------------------------------
# Against torch's own float32 computation
# ----------------------------------------------------------------------------------------

def torch_info_nce(torch, query, key, grad_output, *, temperature, symmetric, reduction):
    import torch.nn.functional as F

    q = torch.from_numpy(query).requires_grad_(True)
    k = torch.from_numpy(key).requires_grad_(True)
    logits = F.normalize(q) @ F.normalize(k).T / temperature
    target = torch.arange(query.shape[0])
    loss = F.cross_entropy(logits, target, reduction=reduction)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.T, target, reduction=reduction))
    loss.backward(torch.as_tensor(grad_output, dtype=loss.dtype).expand_as(loss))
    return loss.detach().numpy(), (q.grad.numpy(), k.grad.numpy())


def norm_error(actual, ref):
    """The 2-norm of the error over the whole result.  Not the largest entry's: both
    products are float32 BLAS products whose single entries may miss by a few units in
    the last place in either library (NumPy's OpenBLAS and torch's differ by that much
    on random matrices); the norm over every entry measures the computation."""
    return float(np.linalg.norm(np.ravel(np.asarray(actual, np.float64) - ref)))


@pytest.mark.parametrize("n_rows, extra_keys, dim", [(32, 0, 64), (200, 40, 128),
                                                      (512, 0, 768)])
@pytest.mark.parametrize("temperature", [0.02, 0.05, 0.5])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("layout", ["random", "duplicated", "zero"])
def test_never_worse_than_twice_torch_float32(n_rows, extra_keys, dim, temperature, symmetric,
                                              layout):
    torch = pytest.importorskip("torch")
    if symmetric:
        extra_keys = 0
    rng = np.random.default_rng([n_rows, dim, int(temperature * 100), symmetric, len(layout)])
    query, key = nce_inputs(rng, n_rows, n_rows + extra_keys, dim, layout)
    wide = [a.astype(np.float64) for a in (query, key)]
    for reduction in REDUCTIONS:
        grad_output = upstream(rng, reduction, n_rows)
        options = dict(temperature=temperature, symmetric=symmetric, reduction=reduction)
        loss, grads = fastloss.info_nce_value_and_grad(query, key, grad_output, **options)
        torch_loss, torch_grads = torch_info_nce(torch, query, key, grad_output, **options)
        ref_loss, ref_grads = reference.info_nce_value_and_grad(*wide, grad_output, **options)
        for what, ours, theirs, ref in (("loss", loss, torch_loss, ref_loss),
                                        ("grad query", grads[0], torch_grads[0], ref_grads[0]),
                                        ("grad key", grads[1], torch_grads[1], ref_grads[1])):
            error, torch_error = norm_error(ours, ref), norm_error(theirs, ref)
            # a float32 result is a rounding of its value: below one unit roundoff of the
            # result's norm neither error says more than which way each rounded (torch's
            # scalar loss may land on the nearest float32, ours a unit away)
            rounding = 2.0**-24 * float(np.linalg.norm(np.ravel(ref)))
            assert error <= 2 * max(torch_error, rounding), (
                f"{what}, {reduction}: fastloss's error {error:.3e} against the float64 "
                f"reference is more than twice torch's float32 error {torch_error:.3e}")


# ----------------------------------------------------------------------------------------
# precision="float64": the similarities and their softmax in float64, the plain contract
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("layout", ["random", "duplicated", "zero"])
def test_precision_float64_keeps_the_plain_contract(symmetric, layout):
    rng = np.random.default_rng([7, symmetric, len(layout)])
    query, key = nce_inputs(rng, 96, 96 if symmetric else 120, 256, layout)
    wide = [a.astype(np.float64) for a in (query, key)]
    for reduction in REDUCTIONS:
        grad_output = upstream(rng, reduction, 96)
        options = dict(temperature=0.05, symmetric=symmetric, reduction=reduction)
        loss, grads = fastloss.info_nce_value_and_grad(query, key, grad_output,
                                                       precision="float64", **options)
        ref_loss, ref_grads = reference.info_nce_value_and_grad(*wide, grad_output, **options)
        assert_close_contract(loss, ref_loss, np.float32, "loss")
        assert_close_contract(fastloss.info_nce(query, key, precision="float64", **options),
                              ref_loss, np.float32, "loss")
        for grad, ref in zip(grads, ref_grads):
            assert grad.dtype == np.float32
            assert_close_contract(grad, ref, np.float32, "grad")


def test_precision_float64_is_the_same_for_float64_inputs():
    rng = np.random.default_rng(3)
    query, key = nce_inputs(rng, 20, 20, 8, "random", np.float64)
    for symmetric in (False, True):
        default = fastloss.info_nce_value_and_grad(query, key, symmetric=symmetric)
        wide = fastloss.info_nce_value_and_grad(query, key, symmetric=symmetric,
                                                precision="float64")
        assert default[0] == wide[0]
        assert all(bitwise_equal(a, b) for a, b in zip(default[1], wide[1]))


@pytest.mark.parametrize("precision", ["float32", "double", None, 64])
def test_precision_refuses_other_values(precision):
    x = np.ones((3, 2), np.float32)
    for function in (fastloss.info_nce, fastloss.info_nce_grad, fastloss.info_nce_value_and_grad):
        with pytest.raises(ValueError, match="precision"):
            function(x, x, precision=precision)


def test_a_temperature_whose_inverse_overflows_float32_computes_in_float64():
    rng = np.random.default_rng(4)
    query, key = nce_inputs(rng, 6, 6, 3, "random")
    wide = [a.astype(np.float64) for a in (query, key)]
    options = dict(temperature=1e-39, symmetric=True)
    loss, grads = fastloss.info_nce_value_and_grad(query, key, **options)
    ref_loss, ref_grads = reference.info_nce_value_and_grad(*wide, **options)
    assert_close_contract(loss, ref_loss, np.float32, "loss")
    for grad, ref in zip(grads, ref_grads):
        assert_close_contract(grad, ref, np.float32, "grad")


# ----------------------------------------------------------------------------------------
# The float32 pass: thread counts, and the groups of rows its columns are summed in
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_rows", [63, 65, 200, 64 * 64 + 70])
@pytest.mark.parametrize("symmetric", [False, True])
def test_float32_pass_is_bit_identical_for_any_thread_count(n_rows, symmetric):
    # more than 64 blocks of 64 rows: the columns' sums are kept per group of blocks
    rng = np.random.default_rng(n_rows)
    query, key = nce_inputs(rng, n_rows, n_rows + (0 if symmetric else 3), 4, "random")
    results = [fastloss.info_nce_value_and_grad(query, key, symmetric=symmetric,
                                                reduction="none", num_threads=threads)
               for threads in (1, 2, 3)]
    for loss, grads in results[1:]:
        assert bitwise_equal(loss, results[0][0])
        assert all(bitwise_equal(a, b) for a, b in zip(grads, results[0][1]))
    if n_rows > 4096:  # the grouped column sums, against the reference too
        wide = [a.astype(np.float64) for a in (query, key)]
        ref_loss, ref_grads = reference.info_nce_value_and_grad(
            *wide, symmetric=symmetric, reduction="none")
        bounds = _contract.info_nce_products_bound(query, key, temperature=0.05,
                                                   symmetric=symmetric, reduction="none")
        assert_close_at_scale(results[0][0], ref_loss, np.float32, "loss", extra=bounds[0])
        for grad, ref, wrt, bound in zip(results[0][1], ref_grads, (query, key), bounds[1:]):
            assert_close_at_scale(grad, ref, np.float32, "grad", loss=ref_loss, wrt=wrt,
                                  extra=bound)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("temperature, refined", [(0.02, True), (1.0, False)])
@pytest.mark.parametrize("threads", [1, 3])
def test_float32_pass_recomputes_the_dominant_similarities_in_float64(symmetric, temperature,
                                                                        refined, threads):
    # csrc/contrastive.c: the entries within T log 1000 of their row's (or column's) max,
    # as float64 dot products rounded once, while there are at most 4 a row on average
    n_rows = 90
    rng = np.random.default_rng(21)
    query, key = nce_inputs(rng, n_rows, n_rows + (0 if symmetric else 5), 64, "duplicated")
    q_unit, _ = _kernels.nce_unit_rows(query, 1e-12, 1)
    k_unit, _ = _kernels.nce_unit_rows(key, 1e-12, 1)
    similarities = q_unit @ k_unit.T
    before = similarities.copy()
    _kernels.nce_softmax(similarities, temperature, symmetric, np.zeros(1), False, threads,
                         q_unit, k_unit)
    margin = temperature * np.log(1000.0)
    wide = before.astype(np.float64)
    selected = wide >= wide.max(axis=1, keepdims=True) - margin
    if symmetric:
        selected |= wide >= wide.max(axis=0, keepdims=True) - margin
    assert (selected.sum() <= 4 * n_rows) == refined
    exact = (q_unit.astype(np.float64) @ k_unit.astype(np.float64).T).astype(np.float32)
    expected = np.where(selected, exact, before) if refined else before
    assert bitwise_equal(similarities, expected)
    if refined:  # the test sees entries the product missed
        assert not bitwise_equal(before, expected)


def test_float32_pass_refuses_one_unit_side_or_a_wrong_shape():
    unit = np.eye(3, dtype=np.float32)
    for q_unit, k_unit, name in ((unit, None, "q_unit, k_unit"), (None, unit, "q_unit, k_unit"),
                                 (unit[:2], unit, "q_unit"), (unit, unit[:, :2], "k_unit")):
        with pytest.raises(ValueError, match=name):
            _kernels.nce_softmax(unit @ unit.T, 0.1, True, np.zeros(1), False, 1, q_unit,
                                 k_unit)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("side", ["query", "key"])
def test_float32_pass_puts_nan_where_the_reference_does(symmetric, bad, side):
    rng = np.random.default_rng(9)
    query, key = nce_inputs(rng, 70, 70 if symmetric else 75, 3, "random")
    (query if side == "query" else key)[2, 1] = bad
    loss, grads = fastloss.info_nce_value_and_grad(query, key, symmetric=symmetric,
                                                   reduction="none")
    with np.errstate(all="ignore"):
        ref_loss, ref_grads = reference.info_nce_value_and_grad(
            query.astype(np.float64), key.astype(np.float64), symmetric=symmetric,
            reduction="none")
    assert np.isnan(ref_loss).any()
    for ours, ref in ((loss, ref_loss),) + tuple(zip(grads, ref_grads)):
        assert np.array_equal(np.isnan(ours), np.isnan(ref))
        assert np.array_equal(np.isinf(ours), np.isinf(ref))


@pytest.mark.parametrize("precision", ["input", "float64"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_torch_adapter_passes_precision(precision, symmetric):
    """fastloss.torch.info_nce and InfoNCELoss give the NumPy API's loss and gradients for
    either precision, bit for bit."""
    torch = pytest.importorskip("torch")
    import fastloss.torch as ft

    rng = np.random.default_rng([11, symmetric, len(precision)])
    query, key = nce_inputs(rng, 40, 40 if symmetric else 56, 64, "random")
    options = dict(temperature=0.05, symmetric=symmetric, precision=precision)
    loss, grads = fastloss.info_nce_value_and_grad(query, key, 1.0, **options)
    for module in (False, True):
        q = torch.from_numpy(query.copy()).requires_grad_(True)
        k = torch.from_numpy(key.copy()).requires_grad_(True)
        if module:
            out = ft.InfoNCELoss(**options)(q, k)
        else:
            out = ft.info_nce(q, k, **options)
        out.backward()
        assert out.item() == loss
        assert bitwise_equal(q.grad.numpy(), grads[0])
        assert bitwise_equal(k.grad.numpy(), grads[1])
    with pytest.raises(ValueError, match="precision"):
        ft.info_nce(torch.from_numpy(query), torch.from_numpy(key), precision="double")
