"""bfloat16 and float16 inputs of the contrastive family: pairwise_distance, contrastive,
contrastive_pairwise, info_nce and triplet_margin (docs/accuracy.rst, "Half precision").

The contract, element by element, against the float64 reference evaluated on the same
(already rounded) inputs: every loss and distance within the float32 contract (they are
float32 for half inputs), every gradient element the reference rounded to the half type
or one ulp from it.  The losses that multiply matrices (the all-pairs functions' backward
product, info_nce's similarities and backward products) form their products in float32
for half inputs, so their results may also carry the products' rounding
(``fastloss._contract``'s products bounds in float32), as float32 inputs' do; each such
element is held to one ulp of the reference plus that bound.
"""

import sys

import numpy as np
import pytest

import fastloss
from fastloss import _kernels, reference
from fastloss._contract import all_pairs_products_bound, info_nce_products_bound
from loss_specs import assert_close_contract
from simd_paths import simd_paths

from test_half import (BFLOAT16, FLOAT16, HALF_DTYPES, assert_gradient_contract, half_numpy,
                       assert_loss_contract, round_to, ulps)

METRICS = ("euclidean", "sqeuclidean", "cosine")


def wide(array):
    return np.asarray(array).astype(np.float64)


def rows_of(dtype, shape, rng, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def half_spacing(values, dtype):
    """One unit in the last place of the half type at |values| (its subnormal spacing
    below the smallest normal number)."""
    bits = 8 if dtype == BFLOAT16 else 11
    tiny = 2.0 ** -126 if dtype == BFLOAT16 else 2.0 ** -14
    magnitude = np.maximum(np.abs(np.asarray(values, np.float64)), tiny)
    return 2.0 ** (np.floor(np.log2(magnitude)) - (bits - 1))


def assert_products_contract(grad, reference_grad, dtype, products_bound):
    """The half contract for a gradient formed with float32 products: each element the
    reference rounded to `dtype` or one ulp from it, or else within one ulp of the
    reference plus what the float32 products may add (`products_bound`, elementwise) and
    the float32 contract's bound.  NaN exactly where the reference is NaN."""
    assert grad.dtype == dtype
    reference_grad = np.asarray(reference_grad, np.float64)
    np.testing.assert_array_equal(np.isnan(grad.astype(np.float64)), np.isnan(reference_grad))
    close = ulps(grad, round_to(reference_grad, dtype)) <= 1
    finite = np.isfinite(reference_grad)
    largest = np.abs(reference_grad[finite]).max() if finite.any() else 0.0
    allowed = (products_bound + 2e-6 * np.abs(reference_grad) + 1e-6 * largest
               + half_spacing(reference_grad, dtype))
    error = np.abs(grad.astype(np.float64) - reference_grad)
    within = close | (error <= allowed) | np.isnan(reference_grad)
    assert within.all(), (f"{np.count_nonzero(~within)} elements beyond the contract, worst "
                          f"excess {(error - allowed)[~within].max()}")


def same_bits(first, second):
    first = first if isinstance(first, tuple) else (first,)
    second = second if isinstance(second, tuple) else (second,)
    assert len(first) == len(second)
    for a, b in zip(first, second):
        if isinstance(a, tuple):
            same_bits(a, b)
        elif isinstance(a, float):
            assert a == b or (np.isnan(a) and np.isnan(b))
        else:
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


def check_value(value, ref_value, reduction):
    if reduction == "none":
        assert value.dtype == np.float32
    else:
        assert type(value) is float
    assert_loss_contract(value, ref_value)


# ----------------------------------------------------------------------------------------
# contrastive (row pairs)
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_contrastive_contract(dtype, metric, reduction):
    rng = np.random.default_rng(1)
    x1, x2 = rows_of(dtype, (40, 24), rng), rows_of(dtype, (40, 24), rng)
    x2[:5] = x1[:5]  # duplicated rows: the eps of F.pairwise_distance carries the gradient
    x1[7] = 0  # a zero row (the cosine's eps clamp)
    label = rng.random(40) < 0.5
    margin = 6.0 if metric == "sqeuclidean" else (0.5 if metric == "cosine" else 3.0)
    options = dict(margin=margin, metric=metric, reduction=reduction)
    upstream = rng.uniform(-2.0, 2.0, 40) if reduction == "none" else 0.75
    loss = fastloss.contrastive(x1, x2, label, **options)
    check_value(loss, reference.contrastive(wide(x1), wide(x2), label, **options), reduction)
    grads = fastloss.contrastive_grad(x1, x2, label, upstream, **options)
    ref_grads = reference.contrastive_grad(wide(x1), wide(x2), label, upstream, **options)
    for grad, ref_grad in zip(grads, ref_grads):
        assert_gradient_contract(grad, ref_grad, dtype)
    fused_loss, fused = fastloss.contrastive_value_and_grad(x1, x2, label, upstream, **options)
    same_bits(fused_loss if reduction == "none" else float(fused_loss), loss)
    same_bits(fused, grads)
    grad32 = fastloss.contrastive_grad(x1, x2, label, upstream, grad_dtype="float32",
                                       **options)
    for grad, ref_grad in zip(grad32, ref_grads):
        assert grad.dtype == np.float32
        assert_close_contract(grad, ref_grad, np.float32, "grad")
        assert_gradient_contract(round_to(grad, dtype), ref_grad, dtype)


# ----------------------------------------------------------------------------------------
# triplet_margin
# ----------------------------------------------------------------------------------------

TRIPLET_OPTIONS = [
    {}, {"swap": True}, {"p": 1.0}, {"p": np.inf}, {"p": 3.0}, {"p": 0.5}, {"eps": 0.0},
    {"margin": 0.3, "swap": True, "p": 1.5},
]


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("options", TRIPLET_OPTIONS, ids=lambda o: "-".join(
    f"{k}={v}" for k, v in o.items()) or "plain")
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_triplet_margin_contract(dtype, options, reduction):
    rng = np.random.default_rng(2)
    anchor, positive, negative = (rows_of(dtype, (30, 16), rng) for _ in range(3))
    options = dict(options, reduction=reduction)
    upstream = rng.uniform(-2.0, 2.0, 30) if reduction == "none" else 1.25
    args64 = [wide(anchor), wide(positive), wide(negative)]
    loss = fastloss.triplet_margin(anchor, positive, negative, **options)
    check_value(loss, reference.triplet_margin(*args64, **options), reduction)
    grads = fastloss.triplet_margin_grad(anchor, positive, negative, upstream, **options)
    ref_grads = reference.triplet_margin_grad(*args64, upstream, **options)
    for grad, ref_grad in zip(grads, ref_grads):
        assert_gradient_contract(grad, ref_grad, dtype)
    fused_loss, fused = fastloss.triplet_margin_value_and_grad(anchor, positive, negative,
                                                               upstream, **options)
    same_bits(fused_loss, loss)
    same_bits(fused, grads)
    grad32 = fastloss.triplet_margin_grad(anchor, positive, negative, upstream,
                                          grad_dtype=np.float32, **options)
    for grad, ref_grad in zip(grad32, ref_grads):
        assert grad.dtype == np.float32
        assert_gradient_contract(round_to(grad, dtype), ref_grad, dtype)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_triplet_margin_broadcast_and_batched(dtype):
    # a (1, D) positive broadcast over the rows and a 3-d batch: the broadcast input's
    # gradient is summed (in float64, from float32 terms) and rounded once
    rng = np.random.default_rng(3)
    anchor = rows_of(dtype, (2, 9, 12), rng)
    positive = rows_of(dtype, (1, 1, 12), rng)
    negative = rows_of(dtype, (2, 9, 12), rng)
    args64 = [wide(anchor), wide(positive), wide(negative)]
    loss, grads = fastloss.triplet_margin_value_and_grad(anchor, positive, negative, 0.5,
                                                         margin=2.0, swap=True)
    ref_loss, ref_grads = reference.triplet_margin_value_and_grad(*args64, 0.5, margin=2.0,
                                                                  swap=True)
    assert_loss_contract(loss, ref_loss)
    assert [g.shape for g in grads] == [anchor.shape, positive.shape, negative.shape]
    for grad, ref_grad in zip(grads, ref_grads):
        assert_gradient_contract(grad, ref_grad, dtype)
    # out= buffers of the half type, written in place
    out = tuple(np.full(a.shape, np.nan, dtype) for a in (anchor, positive, negative))
    result = fastloss.triplet_margin_grad(anchor, positive, negative, 0.5, margin=2.0,
                                          swap=True, out=out)
    assert all(r is o for r, o in zip(result, out))
    same_bits(result, grads)


# ----------------------------------------------------------------------------------------
# pairwise_distance and contrastive_pairwise (the all-pairs functions)
# ----------------------------------------------------------------------------------------

def pairwise_inputs(dtype, rng, n=50, m=37, d=20):
    x = rows_of(dtype, (n, d), rng)
    y = rows_of(dtype, (m, d), rng)
    x[3] = x[10]  # duplicated points: zero distance, recomputed and direct pairs
    y[4] = x[5]
    x[12] = 0  # a zero row (cosine: below eps)
    return x, y


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("with_y", [False, True], ids=["x", "x,y"])
@pytest.mark.parametrize("upstream_kind", ["scalar", "matrix"])
def test_pairwise_distance_contract(dtype, metric, with_y, upstream_kind):
    rng = np.random.default_rng(4)
    x, y = pairwise_inputs(dtype, rng)
    y = y if with_y else None
    m = y.shape[0] if with_y else x.shape[0]
    upstream = 0.5 if upstream_kind == "scalar" else rng.uniform(-1.0, 1.0, (x.shape[0], m))
    y64 = None if y is None else wide(y)
    value = fastloss.pairwise_distance(x, y, metric=metric)
    ref_value = reference.pairwise_distance(wide(x), y64, metric=metric)
    assert value.dtype == np.float32 and value.shape == ref_value.shape
    assert_loss_contract(value, ref_value)
    grads = fastloss.pairwise_distance_grad(x, y, upstream, metric=metric)
    ref_grads = reference.pairwise_distance_grad(wide(x), y64, upstream, metric=metric)
    bounds = all_pairs_products_bound(wide(x), y64, upstream, metric=metric,
                                      dtype=np.float32)
    grads = grads if with_y else (grads,)
    ref_grads = ref_grads if with_y else (ref_grads,)
    for grad, ref_grad, bound in zip(grads, ref_grads, bounds):
        assert_products_contract(grad, ref_grad, dtype, bound)
    fused_value, fused = fastloss.pairwise_distance_value_and_grad(x, y, upstream,
                                                                   metric=metric)
    same_bits(fused_value, value)
    same_bits(fused if with_y else (fused,), grads)
    grad32 = fastloss.pairwise_distance_grad(x, y, upstream, metric=metric,
                                             grad_dtype="float32")
    for grad, ref_grad, bound in zip(grad32 if with_y else (grad32,), ref_grads, bounds):
        assert grad.dtype == np.float32
        assert_products_contract(round_to(grad, dtype), ref_grad, dtype, bound)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_contrastive_pairwise_contract(dtype, metric, reduction):
    rng = np.random.default_rng(5)
    x, _ = pairwise_inputs(dtype, rng, n=70)
    labels = rng.integers(0, 4, 70)
    margins = {"euclidean": (0.5, 6.0), "sqeuclidean": (1.0, 40.0), "cosine": (0.1, 0.9)}
    pos_margin, neg_margin = margins[metric]
    options = dict(pos_margin=pos_margin, neg_margin=neg_margin, metric=metric,
                   reduction=reduction)
    upstream = rng.uniform(-1.0, 1.0, (70, 70)) if reduction == "none" else 2.0
    loss = fastloss.contrastive_pairwise(x, labels, **options)
    check_value(loss, reference.contrastive_pairwise(wide(x), labels, **options), reduction)
    grad = fastloss.contrastive_pairwise_grad(x, labels, upstream, **options)
    ref_grad = reference.contrastive_pairwise_grad(wide(x), labels, upstream, **options)
    (bound,) = all_pairs_products_bound(wide(x), None, upstream, metric=metric, labels=labels,
                                        pos_margin=pos_margin, neg_margin=neg_margin,
                                        reduction=reduction, dtype=np.float32)
    assert_products_contract(grad, ref_grad, dtype, bound)
    fused_loss, fused = fastloss.contrastive_pairwise_value_and_grad(x, labels, upstream,
                                                                     **options)
    same_bits(fused_loss, loss)
    same_bits(fused, grad)
    grad32 = fastloss.contrastive_pairwise_grad(x, labels, upstream, grad_dtype="float32",
                                                **options)
    assert grad32.dtype == np.float32
    assert_products_contract(round_to(grad32, dtype), ref_grad, dtype, bound)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_all_pairs_sparse_product_and_memory(dtype):
    # mostly zero coefficients (pairs outside their hinge): the sparse backward product,
    # over the float32 coefficients; the prepared rows and the coefficients are float32,
    # never a float32 copy of the embeddings themselves
    rng = np.random.default_rng(6)
    x = rows_of(dtype, (200, 8), rng)
    labels = rng.integers(0, 50, 200)
    options = dict(pos_margin=0.0, neg_margin=0.5, metric="euclidean", reduction="sum")
    pairs = fastloss._all_pairs._AllPairs(x, None, "euclidean", 1, True)
    assert pairs.px_real.dtype == np.float32 and pairs.x is x
    pairs.run(loss="contrastive", labels=labels, want_grad=True, pos_margin=0.0,
              neg_margin=0.5)
    assert pairs.coef.dtype == np.float32
    assert pairs.n_nonzero <= fastloss._all_pairs.SPARSE_PRODUCT_DENSITY * 200 * 200
    loss, grad = fastloss.contrastive_pairwise_value_and_grad(x, labels, **options)
    ref_loss, ref_grad = reference.contrastive_pairwise_value_and_grad(wide(x), labels,
                                                                       **options)
    assert_loss_contract(loss, ref_loss)
    (bound,) = all_pairs_products_bound(wide(x), None, 1.0, metric="euclidean", labels=labels,
                                        pos_margin=0.0, neg_margin=0.5, reduction="sum",
                                        dtype=np.float32)
    assert_products_contract(grad, ref_grad, dtype, bound)


# ----------------------------------------------------------------------------------------
# info_nce
# ----------------------------------------------------------------------------------------

def nce_inputs(dtype, rng, n=24, m=24, d=32):
    query = rows_of(dtype, (n, d), rng)
    key = (wide(query[:m] if m <= n else np.concatenate([query, query[:m - n]]))
           + 0.7 * rng.standard_normal((m, d))).astype(dtype)
    return query, key


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("precision", ["input", "float64"])
def test_info_nce_contract(dtype, symmetric, reduction, precision):
    rng = np.random.default_rng(7)
    query, key = nce_inputs(dtype, rng, m=24 if symmetric else 31)
    options = dict(temperature=0.1, symmetric=symmetric, reduction=reduction)
    upstream = rng.uniform(-1.0, 1.0, 24) if reduction == "none" else 1.5
    q64, k64 = wide(query), wide(key)
    loss_bound, *grad_bounds = info_nce_products_bound(q64, k64, grad_output=upstream,
                                                       dtype=np.float32, **options)
    if precision == "float64":  # the similarities in float64: no products bound
        loss_bound = 0.0
    loss = fastloss.info_nce(query, key, precision=precision, **options)
    ref_loss = reference.info_nce(q64, k64, **options)
    if reduction == "none":
        assert loss.dtype == np.float32
    error = np.abs(np.asarray(loss, np.float64) - ref_loss)
    allowed = 2e-6 * np.abs(ref_loss) + 1e-14 * np.abs(ref_loss).max() + loss_bound
    assert (error <= allowed).all()
    grads = fastloss.info_nce_grad(query, key, upstream, precision=precision, **options)
    ref_grads = reference.info_nce_grad(q64, k64, upstream, **options)
    for grad, ref_grad, bound in zip(grads, ref_grads, grad_bounds):
        assert_products_contract(grad, ref_grad, dtype, bound)
    fused_loss, fused = fastloss.info_nce_value_and_grad(query, key, upstream,
                                                         precision=precision, **options)
    same_bits(fused_loss, loss)
    same_bits(fused, grads)
    grad32 = fastloss.info_nce_grad(query, key, upstream, precision=precision,
                                    grad_dtype="float32", **options)
    for grad, ref_grad, bound in zip(grad32, ref_grads, grad_bounds):
        assert grad.dtype == np.float32
        assert_products_contract(round_to(grad, dtype), ref_grad, dtype, bound)


# ----------------------------------------------------------------------------------------
# Every function: threads, SIMD paths, zero-copy reads, mixed inputs, errors, overflow
# ----------------------------------------------------------------------------------------

def family_calls(dtype, rng):
    """(name, callable(num_threads)) of every function's fused call on half inputs."""
    x1, x2 = rows_of(dtype, (90, 24), rng), rows_of(dtype, (90, 24), rng)
    label = rng.random(90) < 0.5
    labels = rng.integers(0, 5, 90)
    return [
        ("contrastive", lambda t: fastloss.contrastive_value_and_grad(
            x1, x2, label, metric="cosine", margin=0.5, num_threads=t)),
        ("triplet_margin", lambda t: fastloss.triplet_margin_value_and_grad(
            x1, x2, x1[::-1], swap=True, num_threads=t)),
        ("pairwise_distance", lambda t: fastloss.pairwise_distance_value_and_grad(
            x1, x2[:70], 0.5, num_threads=t)),
        ("contrastive_pairwise", lambda t: fastloss.contrastive_pairwise_value_and_grad(
            x1, labels, pos_margin=1.0, neg_margin=6.0, num_threads=t)),
        ("info_nce", lambda t: fastloss.info_nce_value_and_grad(
            x1, x2, symmetric=True, num_threads=t)),
        ("info_nce_float64", lambda t: fastloss.info_nce_value_and_grad(
            x1, x2, precision="float64", num_threads=t)),
    ]


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_thread_invariance_and_every_simd_path(dtype):
    rng = np.random.default_rng(8)
    calls = family_calls(dtype, rng)
    ran, results = 0, {}
    with simd_paths() as paths:
        for path in paths:
            ran += 1
            for name, call in calls:
                one = call(1)
                same_bits(one, call(2))
                if name in results:  # the pass's SIMD builds give the same bits
                    same_bits(one, results[name])
                results[name] = one
    assert ran >= 1


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_row_pairs_by_chunks_on_every_simd_path(dtype):
    """contrastive and triplet_margin on rows longer than the kernels' chunk of conversion
    (256 elements): two whole chunks and a short third one (D = 600, not a multiple of
    the 8 lanes), a row broadcast over one column, on every SIMD path: the half contract
    for the values and each gradient, the float32 gradients within the float32 contract,
    and the same bits on every path and thread count."""
    rng = np.random.default_rng([dtype.itemsize, 12])
    dim = 600
    x1, x2, x3 = (rows_of(dtype, (33, dim), rng) for _ in range(3))
    x2[:3] = x1[:3]  # duplicated rows
    x1[5] = 0  # a zero row
    label = rng.random(33) < 0.5
    narrow = rows_of(dtype, (33, 1), rng)  # torch broadcasts a one-column row
    upstream = rng.uniform(-2.0, 2.0, 33)
    margins = {"euclidean": 36.0, "sqeuclidean": 1200.0, "cosine": 0.9}
    calls = [(f"contrastive-{metric}", fastloss.contrastive_value_and_grad,
              reference.contrastive_value_and_grad, (x1, x2, label),
              dict(metric=metric, margin=margins[metric], reduction="none"))
             for metric in METRICS]
    calls += [("triplet-swap", fastloss.triplet_margin_value_and_grad,
               reference.triplet_margin_value_and_grad, (x1, x2, x3),
               dict(swap=True, margin=8.0, reduction="none")),
              ("triplet-narrow", fastloss.triplet_margin_value_and_grad,
               reference.triplet_margin_value_and_grad, (x1, narrow, x3),
               dict(swap=True, margin=8.0, reduction="none"))]
    results = {}
    with simd_paths() as paths:
        for path in paths:
            for name, function, ref_function, args, options in calls:
                wide_args = [wide(a) if a.dtype == dtype else a for a in args]
                ref_value, ref_grads = ref_function(*wide_args, upstream, **options)
                value, grads = function(*args, upstream, num_threads=1, **options)
                assert value.dtype == np.float32
                assert_loss_contract(value, ref_value)
                for grad, ref_grad in zip(grads, ref_grads):
                    assert_gradient_contract(grad, ref_grad, dtype)
                _, grads32 = function(*args, upstream, grad_dtype="float32", num_threads=1,
                                      **options)
                for grad, ref_grad in zip(grads32, ref_grads):
                    assert_close_contract(grad, ref_grad, np.float32, "grad")
                    assert_gradient_contract(round_to(grad, dtype), ref_grad, dtype)
                same_bits((value, grads), function(*args, upstream, num_threads=3, **options))
                if name in results:
                    same_bits((value, grads, grads32), results[name])
                results[name] = (value, grads, grads32)
    assert len(results) == len(calls)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_inputs_read_in_place_and_never_modified(dtype):
    # the kernels read half rows where they are: no copy of the embeddings is made
    rng = np.random.default_rng(9)
    x = rows_of(dtype, (30, 10), rng)
    keep = x.copy()
    labels = rng.integers(0, 3, 30)
    calls = [lambda: fastloss.contrastive_pairwise_value_and_grad(x, labels),
             lambda: fastloss.pairwise_distance_value_and_grad(x, metric="cosine"),
             lambda: fastloss.contrastive_value_and_grad(x, x[::-1].copy(), labels > 0),
             lambda: fastloss.triplet_margin_value_and_grad(x, x[::-1].copy(),
                                                            x[::2].repeat(2, 0)),
             lambda: fastloss.info_nce_value_and_grad(x, x[::-1].copy())]
    for call in calls:
        call()
    same_bits(x, keep)
    pairs = fastloss._all_pairs._AllPairs(x, None, "euclidean", 1, True)
    assert pairs.x is x
    module = sys.modules["fastloss.contrastive"]  # (fastloss.contrastive is the function)
    call = module._Triplet(x, x[::-1], x[:1])  # views, broadcast included
    assert all(np.shares_memory(rows, x) for rows in call.rows)
    unit, _ = _kernels.nce_unit_rows(x, 1e-12, 1)
    assert unit.dtype == np.float32
    np.testing.assert_array_equal(
        unit, (wide(x) / np.maximum(np.linalg.norm(wide(x), axis=1), 1e-12)[:, None]
               ).astype(np.float32))


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_mixed_inputs(dtype):
    # a half input beside a float32 one (and float32 / float64 labels): computed in
    # float32, the loss float32, each gradient in its input's dtype
    rng = np.random.default_rng(10)
    x1 = rows_of(dtype, (20, 12), rng)
    x2 = rows_of(np.float32, (20, 12), rng)
    label = rng.random(20).astype(np.float32)
    args64 = (wide(x1), wide(x2))
    loss, (g1, g2) = fastloss.contrastive_value_and_grad(x1, x2, label, reduction="none")
    ref_loss, (r1, r2) = reference.contrastive_value_and_grad(*args64, wide(label),
                                                              reduction="none")
    assert loss.dtype == np.float32 and g1.dtype == dtype and g2.dtype == np.float32
    assert_loss_contract(loss, ref_loss)
    assert_gradient_contract(g1, r1, dtype)
    assert_close_contract(g2, r2, np.float32, "grad")
    loss, grads = fastloss.triplet_margin_value_and_grad(x1, x2, x1[::-1], p=1.0)
    ref_loss, ref_grads = reference.triplet_margin_value_and_grad(*args64, wide(x1[::-1]),
                                                                  p=1.0)
    assert [g.dtype for g in grads] == [dtype, np.float32, dtype]
    assert_loss_contract(loss, ref_loss)
    assert_gradient_contract(grads[0], ref_grads[0], dtype)
    assert_gradient_contract(grads[2], ref_grads[2], dtype)
    value, (gx, gy) = fastloss.pairwise_distance_value_and_grad(x1, x2, metric="sqeuclidean")
    ref_value, (rx, ry) = reference.pairwise_distance_value_and_grad(*args64,
                                                                     metric="sqeuclidean")
    assert value.dtype == np.float32 and gx.dtype == dtype and gy.dtype == np.float32
    assert_loss_contract(value, ref_value)
    (bx, by) = all_pairs_products_bound(*args64, 1.0, metric="sqeuclidean", dtype=np.float32)
    assert_products_contract(gx, rx, dtype, bx)
    loss, (gq, gk) = fastloss.info_nce_value_and_grad(x1, x2, temperature=0.2)
    ref_loss, (rq, rk) = reference.info_nce_value_and_grad(*args64, temperature=0.2)
    _, bq, bk = info_nce_products_bound(*args64, temperature=0.2, dtype=np.float32)
    assert gq.dtype == dtype and gk.dtype == np.float32
    assert_products_contract(gq, rq, dtype, bq)
    # float16 with bfloat16: float32 computation, each gradient in its own half type
    other = FLOAT16 if dtype == BFLOAT16 else BFLOAT16
    x3 = rows_of(other, (20, 12), rng)
    loss, (g1, g3) = fastloss.contrastive_value_and_grad(x1, x3, label, metric="cosine")
    ref_loss, (r1, r3) = reference.contrastive_value_and_grad(wide(x1), wide(x3), label,
                                                              metric="cosine")
    assert g1.dtype == dtype and g3.dtype == other
    assert_loss_contract(loss, ref_loss)
    assert_gradient_contract(g1, r1, dtype)
    assert_gradient_contract(g3, r3, other)
    # half labels (contrastive's are reals) are read exactly
    half_label = label.astype(dtype)
    loss = fastloss.contrastive(x1, x1[::-1], half_label)
    assert_loss_contract(loss, reference.contrastive(wide(x1), wide(x1[::-1]),
                                                     wide(half_label)))


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_out_buffers_empty_and_strided(dtype):
    rng = np.random.default_rng(11)
    x = rows_of(dtype, (16, 24), rng)[:, ::2]  # a strided view: copied to rows
    labels = rng.integers(0, 3, 16)
    loss, grad = fastloss.contrastive_pairwise_value_and_grad(x, labels, neg_margin=5.0)
    ref_loss, ref_grad = reference.contrastive_pairwise_value_and_grad(wide(x), labels,
                                                                       neg_margin=5.0)
    assert_loss_contract(loss, ref_loss)
    (bound,) = all_pairs_products_bound(wide(x), None, 1.0, metric="euclidean", labels=labels,
                                        neg_margin=5.0, reduction="mean", dtype=np.float32)
    assert_products_contract(grad, ref_grad, dtype, bound)
    out = np.full(x.shape, np.nan, dtype)
    assert fastloss.contrastive_pairwise_grad(x, labels, neg_margin=5.0, out=out) is out
    same_bits(out, grad)
    out32 = np.empty(x.shape, np.float32)
    assert fastloss.contrastive_pairwise_grad(x, labels, neg_margin=5.0, out=out32,
                                              grad_dtype="float32") is out32
    outs = (np.empty(x.shape, dtype), np.empty(x.shape, dtype))
    result = fastloss.info_nce_grad(x, x[::-1], out=outs)
    assert result[0] is outs[0] and result[1] is outs[1]
    same_bits(result, fastloss.info_nce_grad(x, x[::-1]))
    # no rows
    empty = np.empty((0, 5), dtype)
    loss, grad = fastloss.contrastive_pairwise_value_and_grad(empty, np.empty(0, np.int64),
                                                              reduction="sum")
    assert loss == 0.0 and grad.shape == (0, 5) and grad.dtype == dtype
    loss, grads = fastloss.contrastive_value_and_grad(empty, empty, np.empty(0),
                                                      reduction="none")
    assert loss.dtype == np.float32 and loss.shape == (0,)
    assert all(g.dtype == dtype and g.shape == (0, 5) for g in grads)
    value, grads = fastloss.pairwise_distance_value_and_grad(empty, x[:, :5].copy())
    assert value.dtype == np.float32 and value.shape == (0, 16)
    assert grads[0].dtype == dtype and not grads[1].any()


def test_float16_overflow_is_ieee():
    # a float16 row that overflowed to inf: its loss and gradient are what the same
    # computation gives on float32 rows holding the same values (inf and NaN propagate as
    # IEEE arithmetic says; the kernels' simplified derivative, not the reference's
    # inf / inf), the other rows untouched; a gradient beyond float16's range is inf
    rng = np.random.default_rng(12)
    x1 = rows_of(FLOAT16, (6, 8), rng)
    x2 = rows_of(FLOAT16, (6, 8), rng)
    with np.errstate(over="ignore"):
        x1[2, 3] = np.float16(np.float32(7e4))
    assert np.isinf(x1[2, 3])
    label = np.array([1, 0, 1, 0, 1, 0])
    loss, (g1, g2) = fastloss.contrastive_value_and_grad(x1, x2, label, reduction="none")
    loss32, grads32 = fastloss.contrastive_value_and_grad(
        x1.astype(np.float32), x2.astype(np.float32), label, reduction="none")
    same_bits(loss, loss32)
    assert np.isinf(loss[2]) and np.isfinite(loss[[0, 1, 3, 4, 5]]).all()
    for grad, grad32 in zip((g1, g2), grads32):
        np.testing.assert_array_equal(np.isnan(grad), np.isnan(grad32))
        np.testing.assert_array_equal(np.isinf(grad), np.isinf(grad32))
        finite = np.isfinite(grad32)
        assert (ulps(grad[finite], grad32[finite].astype(FLOAT16)) <= 1).all()
    rows = [0, 1, 3, 4, 5]
    ref_loss, (r1, r2) = reference.contrastive_value_and_grad(wide(x1[rows]), wide(x2[rows]),
                                                              label[rows], reduction="none")
    assert_loss_contract(loss[rows], ref_loss)
    assert_gradient_contract(g1[rows], r1, FLOAT16)
    assert_gradient_contract(g2[rows], r2, FLOAT16)
    value = fastloss.pairwise_distance(x1, x2)
    ref_value = reference.pairwise_distance(wide(x1), wide(x2))
    np.testing.assert_array_equal(np.isinf(value), np.isinf(ref_value))
    np.testing.assert_array_equal(np.isnan(value), np.isnan(ref_value))
    assert np.isinf(value[2]).all()
    assert_loss_contract(value[rows], ref_value[rows])
    # a gradient beyond 65504 is inf, as the reference rounded to float16
    grads = fastloss.contrastive_grad(x1[rows], x2[rows], label[rows], 1e9)
    ref_grads = reference.contrastive_grad(wide(x1[rows]), wide(x2[rows]), label[rows], 1e9)
    assert np.isinf(grads[0]).any()
    for grad, ref_grad in zip(grads, ref_grads):
        assert_gradient_contract(grad, ref_grad, FLOAT16)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_argument_errors(dtype):
    rng = np.random.default_rng(13)
    x = rows_of(dtype, (4, 3), rng)
    labels = np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"^grad_dtype: expected None, the inputs' dtype"):
        fastloss.contrastive_pairwise_grad(x, labels, grad_dtype=np.float64)
    with pytest.raises(TypeError, match=r"^grad_dtype: expected None or a dtype"):
        fastloss.info_nce_grad(x, x, grad_dtype=3)
    with pytest.raises(ValueError, match=r"^grad_dtype: expected None, the inputs' dtype "
                                         r"\(float32\)"):
        fastloss.contrastive_grad(x.astype(np.float32), x.astype(np.float32), labels,
                                  grad_dtype=dtype)
    with pytest.raises(TypeError, match=rf"^out: expected dtype {dtype}"):
        fastloss.pairwise_distance_grad(x, out=x.astype(np.float32))
    with pytest.raises(TypeError, match=r"^out\[0\]: expected dtype float32"):
        fastloss.triplet_margin_grad(x, x, x, grad_dtype="float32",
                                     out=(x.copy(), x.copy(), x.copy()))


def test_unsupported_dtypes_name_the_argument():
    x = np.random.default_rng(14).standard_normal((4, 3))
    labels = np.array([0, 1, 0, 1])
    expected = r"expected a float32 or float64 array, or float16 / ml_dtypes.bfloat16, got"
    for bad in (np.int16, np.uint16, np.complex64, np.bool_):
        with pytest.raises(TypeError, match=rf"^x: {expected}"):
            fastloss.pairwise_distance(x.astype(bad))
        with pytest.raises(TypeError, match=rf"^y: {expected}"):
            fastloss.pairwise_distance(x, x.astype(bad))
        with pytest.raises(TypeError, match=rf"^embeddings: {expected}"):
            fastloss.contrastive_pairwise(x.astype(bad), labels)
        with pytest.raises(TypeError, match=rf"^x2: {expected}"):
            fastloss.contrastive(x, x.astype(bad), labels)
        with pytest.raises(TypeError, match=rf"^key: {expected}"):
            fastloss.info_nce(x, x.astype(bad))
        with pytest.raises(TypeError, match=rf"^negative: {expected}"):
            fastloss.triplet_margin(x, x, x.astype(bad))


# ----------------------------------------------------------------------------------------
# The torch adapter
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("torch_dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_torch_family_half(torch_dtype, reduction):
    torch = pytest.importorskip("torch")
    import fastloss.torch as FL
    dtype = getattr(torch, torch_dtype)
    numpy_dtype = BFLOAT16 if torch_dtype == "bfloat16" else FLOAT16
    rng = np.random.default_rng(15)
    base = [torch.from_numpy(rng.standard_normal((12, 8)).astype(np.float32)).to(dtype)
            for _ in range(3)]
    label = torch.from_numpy((rng.random(12) < 0.5).astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, 3, 12))
    cases = [
        ("contrastive", 2, lambda a, b, c: FL.contrastive(a, b, label, reduction=reduction),
         lambda a, b, c, g: reference.contrastive_grad(a, b, label.numpy(), g,
                                                       reduction=reduction), None),
        ("triplet", 3, lambda a, b, c: FL.triplet_margin_loss(a, b, c, reduction=reduction),
         lambda a, b, c, g: reference.triplet_margin_grad(a, b, c, g, reduction=reduction),
         None),
        ("contrastive_pairwise", 1, lambda a, b, c: FL.contrastive_pairwise(
            a, labels, neg_margin=4.0, reduction=reduction),
         lambda a, b, c, g: (reference.contrastive_pairwise_grad(
             a, labels.numpy(), g, neg_margin=4.0, reduction=reduction),),
         lambda a, b, c, g: all_pairs_products_bound(
             a, None, g, metric="euclidean", labels=labels.numpy(), neg_margin=4.0,
             reduction=reduction, dtype=np.float32)),
        ("info_nce", 2, lambda a, b, c: FL.info_nce(a, b, reduction=reduction),
         lambda a, b, c, g: reference.info_nce_grad(a, b, g, reduction=reduction),
         lambda a, b, c, g: info_nce_products_bound(a, b, temperature=0.05,
                                                    reduction=reduction, grad_output=g,
                                                    dtype=np.float32)[1:]),
    ]
    for name, count, call, ref_grad_call, bound_call in cases:
        tensors = [t.clone().requires_grad_(i < count) for i, t in enumerate(base)]
        loss = call(*tensors)
        assert loss.dtype == dtype, name
        upstream = (torch.from_numpy(rng.uniform(0.5, 1.5, tuple(loss.shape)).astype(
            np.float32)).to(dtype) if reduction == "none" else None)
        loss.backward(upstream)
        arrays = [wide(half_numpy(t)) for t in base]
        g = 1.0 if upstream is None else wide(half_numpy(upstream))
        ref_grads = ref_grad_call(*arrays, g)
        bounds = bound_call(*arrays, g) if bound_call else None
        for index in range(count):
            grad = tensors[index].grad
            assert grad.dtype == dtype, name
            got = half_numpy(grad)
            if bounds is None:
                assert_gradient_contract(got, ref_grads[index], numpy_dtype)
            else:
                assert_products_contract(got, ref_grads[index], numpy_dtype, bounds[index])
        for tensor, original in zip(tensors, base):  # read in place, never modified
            assert torch.equal(tensor.detach(), original)


def test_torch_family_half_errors():
    torch = pytest.importorskip("torch")
    import fastloss.torch as FL
    x = torch.randn(4, 3)
    with pytest.raises(TypeError, match=r"query: expected a float32, float64, bfloat16 or "
                                        r"float16 tensor, got torch.int32"):
        FL.info_nce(x.int(), x)
    with pytest.raises(TypeError, match=r"anchor: expected a float32, float64, bfloat16 or "
                                        r"float16 tensor, got torch.complex64"):
        FL.triplet_margin_loss(x.to(torch.complex64), x, x)
