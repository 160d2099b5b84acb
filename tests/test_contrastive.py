"""Pairwise distances and contrastive losses: parity with ``fastloss.reference`` for every
function x metric x dtype x reduction, parity with torch, finite differences, duplicated
points (distance 0), zero vectors under cosine, N = 0, 1 and 2, the Gram form's recomputed
close pairs, layouts and ``out=``, and thread-count invariance.

(contrastive_pairwise also has rows in the spec table of loss_specs.py.) Every fastloss call
in the parity tests goes through ``call_unmodified``; tolerances are the accuracy contract.
"""

import dataclasses
import sys
from typing import Callable

import numpy as np
import pytest

import fastloss
from fastloss import reference
from fastloss._all_pairs import _AllPairs
from loss_specs import (
    DTYPES,
    EMBEDDING_LAYOUTS,
    REDUCTIONS,
    Tolerance,
    assert_array_type,
    assert_close,
    assert_close_contract,
    assert_loss_type,
    bitwise_equal,
    call_unmodified,
    directional_derivative,
    dtype_id,
    random_embeddings,
)

METRICS = ("euclidean", "sqeuclidean", "cosine")
dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
metrics = pytest.mark.parametrize("metric", METRICS)


# ----------------------------------------------------------------------------------------
# The families: inputs for a variant, and the shapes of their results
# ----------------------------------------------------------------------------------------

def _paired_rows(rng, n_rows, dim, dtype, metric):
    """Rows x1 and x2 whose pair distances straddle the metric's negative margin."""
    rows, _ = random_embeddings(rng, (2 * n_rows, dim), dtype, metric)
    return rows[:n_rows], rows[n_rows:]


def make_pairwise_distance(rng, dtype, variant, n_rows=29, dim=8):
    metric, layout = variant
    x, _ = random_embeddings(rng, (n_rows, dim), dtype, metric)
    if layout == "x,y":
        y, _ = random_embeddings(rng, (n_rows // 2 + 3, dim), dtype, metric)
        return (x, y), {"metric": metric}
    # y=None passed explicitly, so that grad_output can follow positionally
    return (x, None), {"metric": metric}


def make_contrastive(rng, dtype, variant, n_rows=29, dim=8):
    metric = variant
    x1, x2 = _paired_rows(rng, n_rows, dim, dtype, metric)
    label = rng.integers(0, 2, n_rows)
    return (x1, x2, label), {"metric": metric, "margin": EMBEDDING_LAYOUTS[metric]["neg_margin"]}


def make_contrastive_pairwise(rng, dtype, variant, n_rows=29, dim=8):
    metric = variant
    x, labels = random_embeddings(rng, (n_rows, dim), dtype, metric)
    layout = EMBEDDING_LAYOUTS[metric]
    return (x, labels), {"metric": metric, "pos_margin": layout["pos_margin"],
                         "neg_margin": layout["neg_margin"]}


def make_info_nce(rng, dtype, variant, n_rows=29, dim=8):
    symmetric = variant == "symmetric"
    query, _ = random_embeddings(rng, (n_rows, dim), dtype, "cosine")
    extra = 5 if variant == "extra negatives" else 0
    # keys near their queries, so the positives matter
    key = query + 0.3 * rng.standard_normal(query.shape).astype(dtype)
    key = np.concatenate([key, rng.standard_normal((extra, dim)).astype(dtype)])
    # a tiny batch gets a warmer softmax: one-hot softmax rows make p - 1 cancel in the
    # reference as much as in the kernel
    return (query, key), {"temperature": 0.1 if n_rows >= 8 else 1.0, "symmetric": symmetric}


def make_triplet(rng, dtype, variant, n_rows=29, dim=8):
    rows, _ = random_embeddings(rng, (3 * n_rows, dim), dtype, "euclidean")
    anchor, positive, negative = rows[:n_rows], rows[n_rows:2 * n_rows], rows[2 * n_rows:]
    # positives nearer their anchors, so the margin cuts through the triplets
    positive = (anchor + 0.6 * (positive - anchor)).astype(dtype)
    return (anchor, positive, negative), dict(variant)


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    make: Callable
    variants: tuple       # (id, variant) pairs
    n_grads: Callable     # args -> number of gradients
    none_shape: Callable  # args -> shape of the unreduced loss
    has_reduction: bool = True

    def public(self, suffix=""):
        return getattr(fastloss, self.name + suffix)

    def reference(self, suffix=""):
        return getattr(reference, self.name + suffix)


FAMILIES = (
    Family("pairwise_distance", make_pairwise_distance,
           tuple((f"{metric}-{layout}", (metric, layout))
                 for metric in METRICS for layout in ("x", "x,y")),
           n_grads=lambda args: 1 if args[1] is None else 2,
           none_shape=lambda args: (args[0].shape[0], (args[0] if args[1] is None
                                                        else args[1]).shape[0]),
           has_reduction=False),
    Family("contrastive", make_contrastive, tuple((metric, metric) for metric in METRICS),
           n_grads=lambda args: 2, none_shape=lambda args: (args[0].shape[0],)),
    Family("contrastive_pairwise", make_contrastive_pairwise,
           tuple((metric, metric) for metric in METRICS), n_grads=lambda args: 1,
           none_shape=lambda args: (args[0].shape[0],) * 2),
    Family("info_nce", make_info_nce,
           tuple((name, name) for name in ("plain", "symmetric", "extra negatives")),
           n_grads=lambda args: 2, none_shape=lambda args: (args[0].shape[0],)),
    Family("triplet_margin", make_triplet, (
        ("p=2", {}), ("p=2-swap", {"swap": True}), ("p=1", {"p": 1.0}),
        ("p=3-swap-margin", {"p": 3.0, "swap": True, "margin": 0.5}),
        ("eps=0", {"eps": 0.0, "margin": 2.0})),
        n_grads=lambda args: 3, none_shape=lambda args: (args[0].shape[0],)),
)

FAMILY_VARIANTS = [pytest.param(family, variant, id=f"{family.name}-{variant_id}")
                   for family in FAMILIES for variant_id, variant in family.variants]
FAMILIES_BY_NAME = {family.name: family for family in FAMILIES}


def reductions_of(family):
    return REDUCTIONS if family.has_reduction else ("none",)


# every family x variant x reduction it has
FAMILY_VARIANT_REDUCTIONS = [
    pytest.param(family, variant, reduction, id=f"{family.name}-{variant_id}-{reduction}")
    for family in FAMILIES for variant_id, variant in family.variants
    for reduction in reductions_of(family)]


def as_tuple(grads):
    return grads if isinstance(grads, tuple) else (grads,)


def upstream_for(family, args, reduction, dtype):
    """A non-trivial grad_output: a scalar, or an array of the unreduced loss's shape."""
    if reduction != "none":
        return 0.625
    shape = family.none_shape(args)
    return np.linspace(-1.5, 2.0, int(np.prod(shape))).reshape(shape).astype(dtype)


def options_for(family, options, reduction):
    return dict(options, reduction=reduction) if family.has_reduction else dict(options)


# ----------------------------------------------------------------------------------------
# Parity with the reference: every function x variant x dtype x reduction
# ----------------------------------------------------------------------------------------

def check_family_against_reference(family, args, options, dtype, *, reductions=None,
                                   **call_options):
    embeddings = [a for a in args if isinstance(a, np.ndarray) and a.ndim == 2]
    for reduction in reductions or reductions_of(family):
        opts = options_for(family, options, reduction)
        upstream = upstream_for(family, args, reduction, dtype)
        label = f"{family.name}, reduction={reduction}"
        ref_loss = family.reference()(*args, **opts)
        ref_grads = as_tuple(family.reference("_grad")(*args, upstream, **opts))

        loss = call_unmodified(family.public(), *args, **opts, **call_options)
        assert_loss_type(loss, dtype, reduction, family.none_shape(args))
        assert_close_contract(loss, ref_loss, dtype, "loss", what=f"loss, {label}")

        grads = as_tuple(call_unmodified(family.public("_grad"), *args, upstream, **opts,
                                         **call_options))
        fused_loss, fused_grads = call_unmodified(family.public("_value_and_grad"), *args,
                                                  upstream, **opts, **call_options)
        assert_loss_type(fused_loss, dtype, reduction, family.none_shape(args))
        assert_close_contract(fused_loss, ref_loss, dtype, "loss", what=f"fused loss, {label}")
        fused_grads = as_tuple(fused_grads)
        assert len(grads) == len(fused_grads) == len(ref_grads) == family.n_grads(args)
        for index, (grad, fused, ref, x) in enumerate(zip(grads, fused_grads, ref_grads,
                                                          embeddings)):
            assert_array_type(grad, dtype, x.shape, f"grad {index}")
            assert_array_type(fused, dtype, x.shape, f"fused grad {index}")
            assert_close_contract(grad, ref, dtype, "grad", what=f"grad {index}, {label}")
            assert_close_contract(fused, ref, dtype, "grad", what=f"fused grad {index}, {label}")


@dtypes
@pytest.mark.parametrize("family, variant", FAMILY_VARIANTS)
def test_matches_reference(family, variant, dtype, rng):
    args, options = family.make(rng, dtype, variant)
    check_family_against_reference(family, args, options, dtype)


@pytest.mark.parametrize("metric", METRICS)
def test_reference_margins_cut_through_the_pairs(metric, rng):
    # The parity tests mean something only if both margins are active for some pairs and
    # not for others.
    (x, labels), _ = make_contrastive_pairwise(rng, np.float64, metric)
    distance = reference.pairwise_distance(x, metric=metric)
    same = labels[:, None] == labels[None, :]
    upper = np.triu(np.ones_like(same), 1)
    layout = EMBEDDING_LAYOUTS[metric]
    positive, negative = distance[same & upper], distance[~same & upper]
    assert 0.1 < np.mean(positive > layout["pos_margin"]) < 0.9
    assert 0.1 < np.mean(negative < layout["neg_margin"]) < 0.9


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@dtypes
def test_reduced_losses_are_values_of_the_dtype(reduction, dtype, rng):
    for family in FAMILIES[1:]:
        args, options = family.make(rng, dtype, family.variants[0][1])
        loss = family.public()(*args, reduction=reduction, **options)
        assert type(loss) is float and float(dtype(loss)) == loss


# ----------------------------------------------------------------------------------------
# Parity with torch
# ----------------------------------------------------------------------------------------

def torch_pairwise(torch, x, y, metric):
    import torch.nn.functional as F

    if metric == "cosine":
        return 1 - F.normalize(x) @ F.normalize(y).T
    distance = torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")
    return distance if metric == "euclidean" else distance**2


def torch_loss(torch, family, tensors, options, reduction):
    """The torch formula for a family, on float64 tensors."""
    import torch.nn.functional as F

    def reduce(per_item):
        return per_item.mean() if reduction == "mean" else (
            per_item.sum() if reduction == "sum" else per_item)

    if family.name == "pairwise_distance":
        x = tensors[0]
        return torch_pairwise(torch, x, tensors[1] if len(tensors) > 1 else x,
                              options["metric"])
    if family.name == "contrastive":
        x1, x2, label = tensors
        metric = options["metric"]
        if metric == "cosine":
            distance = 1 - (F.normalize(x1) * F.normalize(x2)).sum(1)
        else:
            distance = F.pairwise_distance(x1, x2)
            distance = distance if metric == "euclidean" else distance**2
        hinge = torch.relu(options["margin"] - distance)
        return reduce(0.5 * (label * distance**2 + (1 - label) * hinge**2))
    if family.name == "contrastive_pairwise":
        x, labels = tensors
        distance = torch_pairwise(torch, x, x, options["metric"])
        same = (labels[:, None] == labels[None, :]).double()
        loss = (same * torch.relu(distance - options["pos_margin"]) ** 2
                + (1 - same) * torch.relu(options["neg_margin"] - distance) ** 2)
        loss = loss * (1 - torch.eye(x.shape[0], dtype=loss.dtype))
        if reduction == "none":
            return loss
        upper = torch.triu_indices(x.shape[0], x.shape[0], 1)
        return reduce(loss[upper[0], upper[1]])
    if family.name == "info_nce":
        query, key = tensors
        logits = F.normalize(query) @ F.normalize(key).T / options["temperature"]
        target = torch.arange(query.shape[0])
        loss = F.cross_entropy(logits, target, reduction=reduction)
        if options["symmetric"]:
            loss = 0.5 * (loss + F.cross_entropy(logits.T, target, reduction=reduction))
        return loss
    anchor, positive, negative = tensors
    return F.triplet_margin_loss(anchor, positive, negative, reduction=reduction, **options)


@dtypes
@pytest.mark.parametrize("family, variant, reduction", FAMILY_VARIANT_REDUCTIONS)
def test_matches_torch(family, variant, reduction, dtype, rng):
    torch = pytest.importorskip("torch")
    args, options = family.make(rng, dtype, variant)
    opts = options_for(family, options, reduction)
    upstream = upstream_for(family, args, reduction, dtype)
    tensors = []
    for arg in args:
        if arg is None:
            continue
        if isinstance(arg, np.ndarray) and arg.ndim == 2:
            tensors.append(torch.tensor(arg, dtype=torch.float64, requires_grad=True))
        else:
            tensors.append(torch.tensor(np.asarray(arg, dtype=np.float64)
                                        if family.name == "contrastive" else np.asarray(arg)))
    expected = torch_loss(torch, family, tensors, options, reduction)
    (expected * torch.tensor(np.asarray(upstream, dtype=np.float64))).sum().backward()
    expected_grads = [t.grad.numpy() for t in tensors if t.requires_grad]

    loss, grads = family.public("_value_and_grad")(*args, upstream, **opts)
    # float64 against torch in float64: different formulas, so a little more room than the
    # contract's 1e-12 (torch sums in other orders); float32 against torch's float64
    # result on the same float32 values: the contract itself.
    if dtype == np.float64:
        tolerance = Tolerance(1e-10, 1e-12, "two float64 implementations")
        assert_close(loss, expected.detach().numpy(), tolerance, "loss")
        for grad, want in zip(as_tuple(grads), expected_grads):
            assert_close(grad, want, tolerance, "grad")
    else:
        assert_close_contract(loss, expected.detach().numpy(), dtype, "loss")
        for grad, want in zip(as_tuple(grads), expected_grads):
            assert_close_contract(grad, want, dtype, "grad")


# ----------------------------------------------------------------------------------------
# Finite differences (float64): the reference and the kernels
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("source", ["reference", "fastloss"])
@pytest.mark.parametrize("family, variant, reduction", FAMILY_VARIANT_REDUCTIONS)
def test_grad_matches_finite_differences(family, variant, reduction, source, rng):
    args, options = family.make(rng, np.float64, variant, n_rows=7, dim=5)
    opts = options_for(family, options, reduction)
    upstream = upstream_for(family, args, reduction, np.float64)
    module = reference if source == "reference" else fastloss
    value = getattr(module, family.name)
    grad = getattr(module, family.name + "_grad")
    positions = [i for i, a in enumerate(args) if isinstance(a, np.ndarray) and a.ndim == 2]
    embeddings = [args[i] for i in positions]

    def objective(*rows):
        full = list(args)
        for i, row in zip(positions, rows):
            full[i] = row
        return float(np.sum(np.asarray(upstream) * np.asarray(value(*full, **opts))))

    directions = [rng.standard_normal(x.shape) for x in embeddings]
    numeric = directional_derivative(objective, embeddings, directions)
    analytic = sum(float(np.sum(g * d)) for g, d in
                   zip(as_tuple(grad(*args, upstream, **opts)), directions))
    assert abs(numeric - analytic) <= 1e-7 * max(1.0, abs(analytic)), (numeric, analytic)


# ----------------------------------------------------------------------------------------
# Edge cases: duplicated points, zero vectors, tiny batches
# ----------------------------------------------------------------------------------------

@dtypes
@metrics
def test_duplicated_points_have_distance_zero(metric, dtype, rng):
    x, labels = random_embeddings(rng, (20, 6), dtype, metric)
    x[[3, 9, 14]] = x[5]
    labels[[3, 9]] = labels[5]
    labels[14] = labels[5] + 1  # a duplicated negative: inside the margin, no direction
    distance = fastloss.pairwise_distance(x, metric=metric)
    assert np.all(distance[np.ix_([3, 5, 9, 14], [3, 5, 9, 14])] == 0)
    assert np.all(np.diag(distance) == 0)
    assert np.array_equal(distance, distance.T)
    (args, options) = (x, labels), {"metric": metric, "neg_margin": 0.5}
    check_family_against_reference(FAMILIES_BY_NAME["contrastive_pairwise"], args, options,
                                   dtype)
    check_family_against_reference(FAMILIES_BY_NAME["pairwise_distance"], (x, None),
                                   {"metric": metric}, dtype)
    y = x[::2].copy()
    check_family_against_reference(FAMILIES_BY_NAME["pairwise_distance"], (x, y),
                                   {"metric": metric}, dtype)
    # as torch.cdist: a zero euclidean distance passes no gradient, so the duplicated
    # negative pair (5, 14) pulls neither point
    if metric == "euclidean":
        upstream = np.zeros((20, 20))
        upstream[5, 14] = 1.0
        assert np.all(fastloss.pairwise_distance_grad(x, None, upstream) == 0)
    # contrastive and triplet on identical rows: torch's eps keeps the gradient finite
    for margin in (0.0, 1.0):
        _, grads = fastloss.contrastive_value_and_grad(x, x, labels % 2, margin=margin,
                                                       metric=metric)
        assert all(np.all(np.isfinite(g)) for g in grads)
    check_family_against_reference(FAMILIES_BY_NAME["contrastive"], (x, x, labels % 2),
                                   {"metric": metric}, dtype)
    check_family_against_reference(FAMILIES_BY_NAME["triplet_margin"], (x, x, x), {}, dtype)
    check_family_against_reference(FAMILIES_BY_NAME["triplet_margin"], (x, x, x),
                                   {"eps": 0.0, "swap": True}, dtype)


@dtypes
def test_zero_vectors_under_cosine_are_finite(dtype, rng):
    x, labels = random_embeddings(rng, (12, 5), dtype, "cosine")
    x[[2, 7]] = 0
    x[4] = 1e-14  # below eps: normalised as x / eps
    with np.errstate(all="raise"):
        distance = fastloss.pairwise_distance(x, metric="cosine")
        assert distance[2, 7] == 1 and distance[2, 2] == 1 and distance[0, 2] == 1
        results = [
            fastloss.pairwise_distance_value_and_grad(x, metric="cosine"),
            fastloss.pairwise_distance_value_and_grad(x, x[::-1].copy(), metric="cosine"),
            fastloss.contrastive_pairwise_value_and_grad(x, labels, metric="cosine"),
            fastloss.contrastive_value_and_grad(x, x[::-1].copy(), labels % 2,
                                                metric="cosine"),
            fastloss.info_nce_value_and_grad(x, x[::-1].copy()),
            fastloss.info_nce_value_and_grad(x, x[::-1].copy(), symmetric=True),
        ]
    for loss, grads in results:
        assert np.all(np.isfinite(loss))
        assert all(np.all(np.isfinite(g)) for g in as_tuple(grads))
    check_family_against_reference(FAMILIES_BY_NAME["contrastive_pairwise"], (x, labels),
                                   {"metric": "cosine"}, dtype)
    check_family_against_reference(FAMILIES_BY_NAME["pairwise_distance"], (x, None),
                                   {"metric": "cosine"}, dtype)
    check_family_against_reference(FAMILIES_BY_NAME["info_nce"], (x, x[::-1].copy()),
                                   {"symmetric": True}, dtype)
    check_family_against_reference(FAMILIES_BY_NAME["contrastive"],
                                   (x, x[::-1].copy(), labels % 2), {"metric": "cosine"}, dtype)


@dtypes
@pytest.mark.parametrize("n_rows", [1, 2])
@pytest.mark.parametrize("family, variant", FAMILY_VARIANTS)
def test_one_and_two_rows(family, variant, n_rows, dtype, rng):
    args, options = family.make(rng, dtype, variant, n_rows=n_rows, dim=4)
    check_family_against_reference(family, args, options, dtype)


@dtypes
@metrics
def test_contrastive_pairwise_of_one_row(metric, dtype, rng):
    x = rng.standard_normal((1, 4)).astype(dtype)
    assert np.isnan(fastloss.contrastive_pairwise(x, [0], metric=metric))
    assert fastloss.contrastive_pairwise(x, [0], metric=metric, reduction="sum") == 0
    assert np.array_equal(fastloss.contrastive_pairwise(x, [0], metric=metric,
                                                        reduction="none"), [[0]])
    loss, grad = fastloss.contrastive_pairwise_value_and_grad(x, [3], metric=metric)
    assert np.isnan(loss) and np.all(grad == 0)


@dtypes
@pytest.mark.parametrize("family", FAMILIES, ids=lambda family: family.name)
def test_empty_batch(family, dtype, rng):
    args, options = family.make(rng, dtype, family.variants[0][1], n_rows=3, dim=4)
    args = tuple(a[:0] if isinstance(a, np.ndarray) else a for a in args)
    if family.name == "contrastive":
        args = args[:2] + (np.zeros(0),)
    if family.name == "pairwise_distance":
        distance, grad = fastloss.pairwise_distance_value_and_grad(*args, **options)
        assert distance.shape == (0, 0) and grad.shape == (0, 4) and grad.dtype == dtype
        return
    for reduction in REDUCTIONS:
        loss, grads = family.public("_value_and_grad")(*args, reduction=reduction, **options)
        if reduction == "mean":
            assert np.isnan(loss)
        elif reduction == "sum":
            assert loss == 0
        else:
            assert loss.shape == family.none_shape(args) and loss.dtype == dtype
        for grad, x in zip(as_tuple(grads), [a for a in args if getattr(a, "ndim", 0) == 2]):
            assert grad.shape == x.shape and grad.dtype == dtype


# ----------------------------------------------------------------------------------------
# The Gram form: close pairs are recomputed, far ones are not
# ----------------------------------------------------------------------------------------

def recomputed_pairs(x, metric, y=None, **run_options):
    pairs = _AllPairs(x, y, metric, 1, False)
    return pairs.run(**run_options)[1]


def direct_pairs(x, metric, y=None, **run_options):
    pairs = _AllPairs(x, y, metric, 1, True)
    pairs.run(want_grad=True, **run_options)
    return pairs.n_direct


@dtypes
@metrics
def test_near_duplicates_far_from_the_origin(metric, dtype, rng):
    # Clusters of near-duplicates (1e-4 apart), for the euclidean metrics 1e3 from the
    # origin: the Gram form of their distances cancels completely, so they must come from
    # the rows, and so must their pulls in the gradient. (Not offset for cosine: rows all
    # within 1e-6 of one direction make a gradient that the rounding of the inputs alone
    # moves by more than the float64 contract.)
    base = rng.standard_normal((6, 16)) + (0.0 if metric == "cosine" else 1e3)
    x = (np.repeat(base, 4, axis=0) + 1e-4 * rng.standard_normal((24, 16))).astype(dtype)
    labels = np.repeat(np.arange(6), 4)
    assert recomputed_pairs(x, metric) >= 6 * 6
    assert direct_pairs(x, metric) >= 6 * 6
    check_family_against_reference(FAMILIES_BY_NAME["pairwise_distance"], (x, None),
                                   {"metric": metric}, dtype)
    check_family_against_reference(FAMILIES_BY_NAME["pairwise_distance"], (x, x[::3]),
                                   {"metric": metric}, dtype)
    scale = float(np.median(reference.pairwise_distance(x, metric=metric)))
    check_family_against_reference(FAMILIES_BY_NAME["contrastive_pairwise"], (x, labels),
                                   {"metric": metric, "pos_margin": 0.0,
                                    "neg_margin": scale}, dtype)


@metrics
def test_distances_next_to_a_margin_are_recomputed(metric, rng):
    x, labels = random_embeddings(rng, (40, 8), np.float64, metric)
    distance = reference.pairwise_distance(x, metric=metric)
    upper = np.triu(np.ones((40, 40), dtype=bool), 1)
    different = upper & (labels[:, None] != labels[None, :])
    margin = float(distance[different][0])  # exactly at one pair's distance
    assert recomputed_pairs(x, metric, loss="contrastive", labels=labels, neg_margin=margin) >= 1
    check_family_against_reference(FAMILIES_BY_NAME["contrastive_pairwise"], (x, labels),
                                   {"metric": metric, "neg_margin": margin}, np.float64)


@dtypes
@metrics
def test_random_embeddings_recompute_no_pair(metric, dtype, rng):
    # D = 768 (the benchmark's), margins away from the distances (cosine ones are 1 +- 0.1)
    x = rng.standard_normal((300, 768)).astype(dtype)
    labels = rng.integers(0, 50, 300)
    margin = 0.5 if metric == "cosine" else 1.0
    assert recomputed_pairs(x, metric) == 0
    assert recomputed_pairs(x, metric, loss="contrastive", labels=labels,
                            neg_margin=margin) == 0


@dtypes
def test_float32_parity_at_scale(dtype, rng):
    # 200 rows of D = 128: the backward product sums 200 terms per entry
    x, labels = random_embeddings(rng, (200, 128), dtype, "euclidean", n_classes=10)
    layout = EMBEDDING_LAYOUTS["euclidean"]
    scale = float(np.sqrt(128 / 8))  # distances grow with sqrt(D)
    for metric in METRICS:
        options = {"metric": metric}
        if metric == "euclidean":
            options.update(pos_margin=layout["pos_margin"] * scale,
                           neg_margin=layout["neg_margin"] * scale)
        check_family_against_reference(FAMILIES_BY_NAME["contrastive_pairwise"], (x, labels),
                                       options, dtype, reductions=("mean", "none"))


def float32_gram_batch(rng, metric, n_rows=600, dim=48):
    """float32 clusters whose negatives mostly lie outside the margin, with a margin set
    at the distance of one negative pair (a pair exactly at its hinge)."""
    x, labels = random_embeddings(rng, (n_rows, dim), np.float32, metric, n_classes=40)
    distance = reference.pairwise_distance(x, metric=metric)
    different = np.triu(labels[:, None] != labels[None, :], 1)
    # the negative distance at the 5% quantile: a pair exactly at the margin
    margin = float(np.sort(distance[different])[int(0.05 * different.sum())])
    return x, labels, {"metric": metric, "pos_margin": 0.0, "neg_margin": margin}


@metrics
def test_contrastive_pairwise_takes_a_float32_gram_when_it_pays(metric, rng):
    # float32 data with most pairs outside their hinge: the float32 Gram product decides
    # those, and the pairs at or inside the hinge (positives, 5% of the negatives, one
    # exactly at the margin) are recomputed from the rows.
    x, labels, options = float32_gram_batch(rng, metric)
    pairs = _AllPairs(x, None, metric, 1, True)
    assert pairs.narrow_gram_pays(labels, options["pos_margin"], options["neg_margin"])
    assert pairs.gram(narrow=True).dtype == np.float32
    check_family_against_reference(FAMILIES_BY_NAME["contrastive_pairwise"], (x, labels),
                                   options, np.float32)
    # not for float64 data, nor where most pairs are inside the hinge
    assert not _AllPairs(x.astype(np.float64), None, metric, 1, True).narrow_gram_pays(
        labels, options["pos_margin"], options["neg_margin"])
    assert not pairs.narrow_gram_pays(labels, 0.0, 1e6)


@pytest.mark.parametrize("narrow", [True, False], ids=["float32-gram", "float64-gram"])
@metrics
def test_contrastive_pairwise_float32_gram_at_any_density(metric, narrow, rng, monkeypatch):
    # Whichever Gram the heuristic picks, the results keep the contract: the float32 one
    # forced on batches where many or all pairs lie inside their hinge (everything
    # recomputed from the rows), and near-duplicates, whose Gram form cancels.
    monkeypatch.setattr(_AllPairs, "narrow_gram_pays", lambda self, *args: narrow)
    x, labels, options = float32_gram_batch(rng, metric, n_rows=120, dim=24)
    for neg_margin in (options["neg_margin"], 1e3):
        check_family_against_reference(
            FAMILIES_BY_NAME["contrastive_pairwise"], (x, labels),
            dict(options, neg_margin=neg_margin), np.float32, reductions=("sum", "none"))
    base = rng.standard_normal((6, 16)) + (0.0 if metric == "cosine" else 30.0)
    close = (np.repeat(base, 4, axis=0) + 1e-3 * rng.standard_normal((24, 16)))
    close_labels = np.repeat(np.arange(6), 4)
    scale = float(np.median(reference.pairwise_distance(close, metric=metric)))
    check_family_against_reference(FAMILIES_BY_NAME["contrastive_pairwise"],
                                   (close.astype(np.float32), close_labels),
                                   {"metric": metric, "neg_margin": scale}, np.float32)


# ----------------------------------------------------------------------------------------
# Layouts, dtypes, out=
# ----------------------------------------------------------------------------------------

@dtypes
@pytest.mark.parametrize("family, variant", FAMILY_VARIANTS[::2])
def test_strided_and_fortran_inputs(family, variant, dtype, rng):
    args, options = family.make(rng, dtype, variant)
    strided = []
    for arg in args:
        if isinstance(arg, np.ndarray) and arg.ndim == 2:
            wide = np.zeros((arg.shape[0] * 2, arg.shape[1] * 3), dtype=dtype)
            wide[::2, ::3] = arg
            strided.append(wide[::2, ::3])
        else:
            strided.append(arg)
    expected = family.public("_value_and_grad")(*args, **options)
    for layout in (strided, [np.asfortranarray(a) if getattr(a, "ndim", 0) == 2 else a
                             for a in args]):
        got = family.public("_value_and_grad")(*layout, **options)
        assert bitwise_equal(np.asarray(got[0]), np.asarray(expected[0]))
        for a, b in zip(as_tuple(got[1]), as_tuple(expected[1])):
            assert bitwise_equal(a, b)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda family: family.name)
def test_lists_and_mixed_dtypes(family, rng):
    args, options = family.make(rng, np.float64, family.variants[0][1], n_rows=5, dim=3)
    expected_loss, expected_grads = family.public("_value_and_grad")(*args, **options)
    as_lists = [a.tolist() if isinstance(a, np.ndarray) else a for a in args]
    loss, grads = family.public("_value_and_grad")(*as_lists, **options)
    assert np.array_equal(np.asarray(loss), np.asarray(expected_loss))
    # a float32 first input computes in float64; its gradient keeps float32
    mixed = [args[0].astype(np.float32)] + list(args[1:])
    loss, grads = family.public("_value_and_grad")(*mixed, **options)
    grads = as_tuple(grads)
    assert grads[0].dtype == np.float32
    assert all(g.dtype == np.float64 for g in grads[1:])


@dtypes
@pytest.mark.parametrize("family", FAMILIES, ids=lambda family: family.name)
def test_out_buffers(family, dtype, rng):
    args, options = family.make(rng, dtype, family.variants[-1][1])
    expected = as_tuple(family.public("_grad")(*args, **options))
    buffers = tuple(np.full_like(g, np.nan) for g in expected)
    out = buffers if len(buffers) > 1 else buffers[0]
    grads = family.public("_grad")(*args, out=out, **options)
    for got, buffer, want in zip(as_tuple(grads), buffers, expected):
        assert got is buffer
        assert bitwise_equal(got, want)
    # a strided buffer, written through the copy path, and value_and_grad
    strided = tuple(np.zeros((g.shape[0], 2 * g.shape[1]), dtype)[:, ::2] for g in expected)
    out = strided if len(strided) > 1 else strided[0]
    _, grads = family.public("_value_and_grad")(*args, out=out, **options)
    for got, buffer, want in zip(as_tuple(grads), strided, expected):
        assert got is buffer
        assert bitwise_equal(np.ascontiguousarray(got), want)


def test_out_may_not_alias_an_input(rng):
    x, labels = random_embeddings(rng, (9, 4), np.float64, "euclidean")
    keep = x.copy()
    expected = fastloss.contrastive_pairwise_grad(x, labels)
    # out=embeddings is allowed: computed aside, then written over the embeddings
    grad = fastloss.contrastive_pairwise_grad(x, labels, out=x)
    assert grad is x
    assert bitwise_equal(grad, expected)
    assert not bitwise_equal(x, keep)


# ----------------------------------------------------------------------------------------
# Threads
# ----------------------------------------------------------------------------------------

THREAD_COUNTS = (1, 2, 3, 7)


def every_result(family, args, options, num_threads):
    results = []
    for reduction in reductions_of(family):
        opts = options_for(family, options, reduction)
        upstream = upstream_for(family, args, reduction, args[0].dtype)
        loss, grads = family.public("_value_and_grad")(*args, upstream, num_threads=num_threads,
                                                       **opts)
        results.append(np.asarray(loss))
        results.extend(as_tuple(grads))
        results.append(np.asarray(family.public()(*args, num_threads=num_threads, **opts)))
    return results


@dtypes
@pytest.mark.parametrize("family, variant", FAMILY_VARIANTS[::3])
def test_bit_identical_for_any_thread_count(family, variant, dtype, rng):
    # 200 rows: 40,000 pairs over four tiles per side, above the one-thread threshold of
    # 2**15 for N x M work (info_nce: the cross-entropy of 200 x 200 similarities); the
    # row-pair functions get 2100 rows of 16.
    pair_rows = family.name in ("contrastive", "triplet_margin")
    n_rows, dim = (2100, 16) if pair_rows else (200, 16)
    args, options = family.make(rng, dtype, variant, n_rows=n_rows, dim=dim)
    single = every_result(family, args, options, 1)
    for num_threads in THREAD_COUNTS[1:]:
        results = every_result(family, args, options, num_threads)
        for index, (got, want) in enumerate(zip(results, single)):
            assert bitwise_equal(got, want), f"result {index} differs with {num_threads} threads"


@dtypes
@pytest.mark.parametrize("family", FAMILIES, ids=lambda family: family.name)
def test_scalar_grad_output_for_reduction_none(family, dtype, rng):
    # a scalar upstream gradient of an unreduced loss is broadcast to every entry
    args, options = family.make(rng, dtype, family.variants[0][1])
    opts = options_for(family, options, "none")
    full = np.full(family.none_shape(args), 0.75)
    for got, want in zip(as_tuple(family.public("_grad")(*args, 0.75, **opts)),
                         as_tuple(family.public("_grad")(*args, full, **opts))):
        assert_close_contract(got, want, dtype, "grad")


@dtypes
@metrics
@pytest.mark.parametrize("density", [0.0, 1.0], ids=["blas-product", "sparse-product"])
def test_backward_product_blas_or_sparse(density, metric, dtype, rng, monkeypatch):
    # The backward product W @ x skips the zeros of W when they are most of it; both ways
    # give the contract (SPARSE_PRODUCT_DENSITY 0: always BLAS, 1: always sparse).
    module = sys.modules["fastloss._all_pairs"]
    monkeypatch.setattr(module, "SPARSE_PRODUCT_DENSITY", density)
    x, labels = random_embeddings(rng, (90, 12), dtype, metric, n_classes=6)
    layout = EMBEDDING_LAYOUTS[metric]
    options = {"metric": metric, "pos_margin": layout["pos_margin"],
               "neg_margin": layout["neg_margin"]}
    check_family_against_reference(FAMILIES_BY_NAME["contrastive_pairwise"], (x, labels),
                                   options, dtype)
    pairs = _AllPairs(x, None, metric, 1, True)
    pairs.run(loss="contrastive", labels=labels, want_grad=True, **{
        key: options[key] for key in ("pos_margin", "neg_margin")})
    assert 0 < pairs.n_nonzero < 90 * 89


def test_sparse_product_is_chosen_for_sparse_coefficients(rng):
    # 30 classes and a margin far below the distances: only the positive pairs have a
    # coefficient, about 1 in 30.
    x = rng.standard_normal((300, 32))
    labels = rng.integers(0, 30, 300)
    pairs = _AllPairs(x, None, "euclidean", 1, True)
    pairs.run(loss="contrastive", labels=labels, want_grad=True, neg_margin=1.0)
    module = sys.modules["fastloss._all_pairs"]
    assert 0 < pairs.n_nonzero <= module.SPARSE_PRODUCT_DENSITY * 300 * 300
    same = labels[:, None] == labels[None, :]
    assert pairs.n_nonzero == same.sum() - 300  # every positive pair, both halves
    check_family_against_reference(FAMILIES_BY_NAME["contrastive_pairwise"], (x, labels),
                                   {}, np.float64)



@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cosine_distance_of_equal_rows_in_two_layouts_is_zero(dtype, rng):
    """Equal rows have cosine distance 0 in the reference and the kernels whatever the
    arrays' layouts. The reference summed a Fortran-ordered copy's norms in another
    order, an ulp from the C-ordered one's, and gave 5e-32 (a contrastive loss of 2.6e-65
    against the kernels' 0: the fuzz, seed 3108026464, margin 0)."""
    x = rng.standard_normal((65, 17)).astype(dtype)
    label = np.ones(65, np.int64)
    for x1, x2 in ((x, np.asfortranarray(x)), (np.asfortranarray(x), x)):
        want = reference.contrastive(x1.astype(np.float64), x2.astype(np.float64), label,
                                     margin=0.0, metric="cosine", reduction="none")
        got = fastloss.contrastive(x1, x2, label, margin=0.0, metric="cosine",
                                   reduction="none")
        assert np.all(want == 0.0) and np.all(got == 0.0)


def test_triplet_swap_tie_of_equal_rows_in_two_layouts(rng):
    """anchor = positive = negative, positive and negative Fortran-ordered: d(a, n) and
    d(p, n) tie, so swap's minimum gives each half the gradient (torch.minimum), in the
    reference as in the kernels and torch. The reference's norms of the two layouts were
    an ulp apart and broke the tie (anchor's gradient 0 against 0.5 / N: the fuzz, seed
    1215713709, p = 1)."""
    x = rng.standard_normal((65, 17)).astype(np.float32)
    args = (x, np.asfortranarray(x), np.asfortranarray(x))
    for p in (1.0, 2.0, 3.0):
        want = reference.triplet_margin_grad(*[a.astype(np.float64) for a in args], p=p,
                                             swap=True)
        got = fastloss.triplet_margin_grad(*args, p=p, swap=True)
        for g, w in zip(got, want):
            assert_close_contract(g, w, np.float32, "grad")
        assert np.all(want[0] > 0)  # the anchor keeps half of d(a, n)'s share
