"""Box losses (giou_loss, diou_loss, ciou_loss): the kernels against the float64 reference
(every mode, reduction, dtype and SIMD path), the reference against torchvision's formulas
written out in torch (float64, autograd for the gradients) and against finite differences,
thread invariance, the edge cases torchvision's formulas meet (ties, touching and disjoint
boxes, zero areas, nesting, inverted boxes, huge coordinates, NaN, empty input), broadcasting,
layouts, in place, and bad input."""

import math

import numpy as np
import pytest

import fastloss
from fastloss import _kernels, reference
from loss_specs import (DTYPES, REDUCTIONS, assert_close, assert_close_contract,
                        assert_loss_type, bitwise_equal, call_unmodified, central_differences,
                        dtype_id)
from fastloss._contract import Tolerance
from counterparts import torch_box_loss

KINDS = ("giou", "diou", "ciou")
MODES = ("forward", "backward", "value_and_grad")
BOTH = ("boxes1", "boxes2")
TORCHVISION = {"giou": "generalized_box_iou_loss", "diou": "distance_box_iou_loss",
               "ciou": "complete_box_iou_loss"}

kinds = pytest.mark.parametrize("kind", KINDS)
dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
reductions = pytest.mark.parametrize("reduction", REDUCTIONS)


def public(kind):
    return tuple(getattr(fastloss, f"{kind}_loss{suffix}")
                 for suffix in ("", "_grad", "_value_and_grad"))


def oracle(kind):
    return tuple(getattr(reference, f"{kind}_loss{suffix}")
                 for suffix in ("", "_grad", "_value_and_grad"))


def random_boxes(rng, shape, scale=10.0):
    """Boxes (x1, y1, x2, y2) with corners in [-scale, scale] and sides in [0.1, scale]."""
    corner = rng.uniform(-scale, scale, shape + (2,))
    side = rng.uniform(0.1, scale, shape + (2,))
    return np.concatenate([corner, corner + side], axis=-1)


def related_boxes(rng, n, dtype=np.float64):
    """Pairs that meet every branch: random pairs, near matches, identical boxes, shared
    edges, touching and disjoint boxes, nested boxes, zero width or height."""
    boxes1 = random_boxes(rng, (n,))
    boxes2 = random_boxes(rng, (n,))
    near = slice(0, n // 4)
    boxes2[near] = boxes1[near] + rng.normal(0, 0.3, boxes1[near].shape)
    boxes2[n // 4:n // 4 + 8] = boxes1[n // 4:n // 4 + 8]                   # identical
    boxes2[n // 4 + 8:n // 4 + 16, :2] = boxes1[n // 4 + 8:n // 4 + 16, :2]  # shared corner
    edge = slice(n // 4 + 16, n // 4 + 24)                                   # touching
    boxes2[edge, 0] = boxes1[edge, 2]
    boxes2[edge, 2] = boxes2[edge, 0] + 1.0
    inner = slice(n // 4 + 24, n // 4 + 32)                                  # nested
    boxes2[inner] = boxes1[inner] + np.array([0.05, 0.05, -0.05, -0.05])
    flat = slice(n // 4 + 32, n // 4 + 36)                                   # zero width
    boxes1[flat, 2] = boxes1[flat, 0]
    flat = slice(n // 4 + 36, n // 4 + 40)                                   # zero height
    boxes2[flat, 3] = boxes2[flat, 1]
    return boxes1.astype(dtype), boxes2.astype(dtype)


def grad_output_for(rng, reduction, shape):
    return rng.standard_normal(shape) if reduction == "none" else 1.7


def check_against_reference(kind, boxes1, boxes2, dtype, reduction, mode, grad_output=1.0,
                            eps=1e-7):
    loss, grad, value_and_grad = public(kind)
    ref_loss, ref_grad, ref_value_and_grad = oracle(kind)
    ref_value, ref_grads = ref_value_and_grad(boxes1, boxes2, grad_output, eps=eps,
                                              reduction=reduction, wrt=BOTH)
    shape = np.broadcast_shapes(np.shape(boxes1)[:-1], np.shape(boxes2)[:-1])
    if mode == "forward":
        value = call_unmodified(loss, boxes1, boxes2, eps=eps, reduction=reduction)
        grads = None
    elif mode == "backward":
        value = None
        grads = call_unmodified(grad, boxes1, boxes2, grad_output, eps=eps,
                                reduction=reduction, wrt=BOTH)
    else:
        value, grads = call_unmodified(value_and_grad, boxes1, boxes2, grad_output, eps=eps,
                                       reduction=reduction, wrt=BOTH)
    if value is not None:
        assert_loss_type(value, dtype, reduction, shape)
        assert_close_contract(value, ref_value, dtype, "loss")
    if grads is not None:
        for name, got, want, own in zip(BOTH, grads, ref_grads, (boxes1, boxes2)):
            assert got.shape == np.shape(own) and got.dtype == np.asarray(own).dtype, name
            assert_close_contract(got, want, dtype, "grad", what=f"grad {name}")


# ----------------------------------------------------------------------------------------
# The kernels against the reference
# ----------------------------------------------------------------------------------------

@kinds
@dtypes
@reductions
@pytest.mark.parametrize("mode", MODES)
def test_matches_reference(kind, dtype, reduction, mode, rng):
    boxes1, boxes2 = related_boxes(rng, 3001, dtype)  # several tiles, a partial last one
    check_against_reference(kind, boxes1, boxes2, dtype, reduction, mode,
                            grad_output_for(rng, reduction, (3001,)))


@kinds
@dtypes
def test_single_wrt_and_default(kind, dtype, rng):
    boxes1, boxes2 = related_boxes(rng, 200, dtype)
    _, grad, value_and_grad = public(kind)
    _, ref_grad, _ = oracle(kind)
    for wrt in BOTH:
        assert_close_contract(grad(boxes1, boxes2, wrt=wrt), ref_grad(boxes1, boxes2, wrt=wrt),
                              dtype, "grad")
    assert_close_contract(grad(boxes1, boxes2), ref_grad(boxes1, boxes2), dtype, "grad")
    swapped = value_and_grad(boxes1, boxes2, wrt=("boxes2", "boxes1"))[1]
    straight = value_and_grad(boxes1, boxes2, wrt=BOTH)[1]
    assert bitwise_equal(swapped[0], straight[1]) and bitwise_equal(swapped[1], straight[0])


@kinds
@pytest.mark.parametrize("eps", [1e-7, 1e-3, 0.5])
def test_eps(kind, eps, rng):
    boxes1, boxes2 = related_boxes(rng, 300)
    check_against_reference(kind, boxes1, boxes2, np.float64, "none", "value_and_grad",
                            rng.standard_normal(300), eps=eps)


def test_float32_keeps_the_contract_where_float32_arithmetic_would_not(rng):
    """Near-identical boxes (iou 0.99999): 1 - iou cancels; the kernels compute in double."""
    boxes1 = random_boxes(rng, (1000,)).astype(np.float32)
    boxes2 = (boxes1 + rng.normal(0, 1e-4, boxes1.shape)).astype(np.float32)
    for kind in KINDS:
        check_against_reference(kind, boxes1, boxes2, np.float32, "none", "value_and_grad",
                                rng.standard_normal(1000))


# ----------------------------------------------------------------------------------------
# The reference against torchvision's formulas, written out in torch
# ----------------------------------------------------------------------------------------

TORCH_TOLERANCE = Tolerance(1e-12, 1e-14, "float64 against float64, the same formula")


def torch_value_and_grads(kind, boxes1, boxes2, grad_output, eps, reduction):
    torch = pytest.importorskip("torch")
    t1 = torch.tensor(boxes1, dtype=torch.float64, requires_grad=True)
    t2 = torch.tensor(boxes2, dtype=torch.float64, requires_grad=True)
    loss = torch_box_loss(torch, kind, t1, t2, eps, reduction)
    loss.backward(torch.as_tensor(grad_output, dtype=torch.float64).expand_as(loss)
                  if reduction == "none" else torch.tensor(grad_output, dtype=torch.float64))
    value = loss.detach().numpy() if reduction == "none" else float(loss.detach())
    return value, (t1.grad.numpy(), t2.grad.numpy())


@kinds
@reductions
@pytest.mark.parametrize("eps", [1e-7, 0.1])
def test_reference_matches_torchvision_formula(kind, reduction, eps, rng):
    boxes1, boxes2 = related_boxes(rng, 500)
    grad_output = grad_output_for(rng, reduction, (500,))
    want_value, want_grads = torch_value_and_grads(kind, boxes1, boxes2, grad_output, eps,
                                                   reduction)
    value, grads = oracle(kind)[2](boxes1, boxes2, grad_output, eps=eps, reduction=reduction,
                                   wrt=BOTH)
    assert_close(value, want_value, TORCH_TOLERANCE, "loss")
    for got, want in zip(grads, want_grads):
        assert_close(got, want, TORCH_TOLERANCE, "grad")


@kinds
def test_reference_matches_torch_at_edges_and_broadcast(kind):
    """Ties, NaN, inf, zero height (ciou's NaN gradient), inverted boxes, broadcast."""
    boxes1 = np.array([[0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 1, 1], [0, 0, 2, 0],
                       [2, 2, 0, 0], [0, 0, np.nan, 1], [0, 0, np.inf, 1], [0, 0, 0, 0]],
                      dtype=np.float64)
    boxes2 = np.array([[0, 0, 2, 2], [1, 0, 3, 2], [1, 0, 2, 1], [0, 0, 1, 1],
                       [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0]],
                      dtype=np.float64)
    for b1, b2 in ((boxes1, boxes2), (boxes1[:, None, :], boxes2[:3]), (boxes1[1], boxes2)):
        want_value, want_grads = torch_value_and_grads(kind, b1, b2, 1.0, 1e-7, "sum")
        if not np.isfinite(want_value):
            continue
        value, grads = oracle(kind)[2](b1, b2, reduction="sum", wrt=BOTH)
        assert_close(value, want_value, TORCH_TOLERANCE, "loss")
        for got, want in zip(grads, want_grads):
            assert_close(got, want, TORCH_TOLERANCE, "grad")
    torch = pytest.importorskip("torch")
    t1 = torch.tensor(boxes1, requires_grad=True)
    t2 = torch.tensor(boxes2, requires_grad=True)
    torch_box_loss(torch, kind, t1, t2).backward(torch.ones(8, dtype=torch.float64))
    value = oracle(kind)[0](boxes1, boxes2, reduction="none")
    grads = oracle(kind)[1](boxes1, boxes2, 1.0, reduction="none", wrt=BOTH)
    want = torch_box_loss(torch, kind, torch.tensor(boxes1), torch.tensor(boxes2)).numpy()
    assert_close(value, want, TORCH_TOLERANCE, "loss")
    for got, want in zip(grads, (t1.grad.numpy(), t2.grad.numpy())):
        assert_close(got, want, TORCH_TOLERANCE, "grad")


@kinds
def test_reference_gradient_by_finite_differences(kind, rng):
    boxes1 = random_boxes(rng, (6,))
    boxes2 = boxes1 + rng.normal(0, 1.0, boxes1.shape)  # overlapping, no ties
    weights = rng.standard_normal(6)
    loss = oracle(kind)[0]
    grads = oracle(kind)[1](boxes1, boxes2, weights, reduction="none", wrt=BOTH)
    numeric1 = central_differences(
        lambda b: float(np.dot(loss(b, boxes2, reduction="none"), weights)), boxes1, 1e-4)
    numeric2 = central_differences(
        lambda b: float(np.dot(loss(boxes1, b, reduction="none"), weights)), boxes2, 1e-4)
    # ciou's alpha is a constant for autograd, not for a difference quotient: compare the
    # others tightly, ciou only where alpha's own derivative is small
    tolerance = 1e-8 if kind != "ciou" else 2e-2
    np.testing.assert_allclose(grads[0], numeric1, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(grads[1], numeric2, rtol=tolerance, atol=tolerance)


# ----------------------------------------------------------------------------------------
# Threads and SIMD paths
# ----------------------------------------------------------------------------------------

@kinds
@dtypes
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_thread_invariance(kind, dtype, reduction, rng):
    n = 40_001  # ten blocks of 4096 pairs, a partial last one
    boxes1, boxes2 = related_boxes(rng, n, dtype)
    grad_output = grad_output_for(rng, reduction, (n,))
    _, _, value_and_grad = public(kind)
    results = [value_and_grad(boxes1, boxes2, grad_output, reduction=reduction, wrt=BOTH,
                              num_threads=threads) for threads in (1, 2, 3, 7)]
    for value, grads in results[1:]:
        assert bitwise_equal(value, results[0][0])
        assert all(bitwise_equal(a, b) for a, b in zip(grads, results[0][1]))


@pytest.mark.slow
def test_thread_invariance_across_regions(rng):
    """More pairs than one parallel region's 256 blocks (1,048,576 pairs)."""
    n = (1 << 20) + 4099
    boxes1, boxes2 = related_boxes(rng, n, np.float32)
    values = {fastloss.giou_loss(boxes1, boxes2, num_threads=t) for t in (1, 2, 3)}
    assert len(values) == 1
    assert_close_contract(values.pop(), reference.giou_loss(boxes1, boxes2), np.float32)


@kinds
@dtypes
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_every_simd_path(simd_path, kind, dtype, reduction, rng):
    boxes1, boxes2 = related_boxes(rng, 1000, dtype)
    check_against_reference(kind, boxes1, boxes2, dtype, reduction, "value_and_grad",
                            grad_output_for(rng, reduction, (1000,)))


def test_atan_on_every_path(simd_path):
    """fastmath.h's atan: within 2 ulp of numpy's over 1e-300 to 1e300, both signs, and
    exact at the special values."""
    magnitudes = np.logspace(-300, 300, 200_001)
    dense = np.linspace(0, 4, 100_001)  # the reduction's boundaries tan(pi/8), tan(3pi/8)
    edges = np.tan([np.pi / 8, 3 * np.pi / 8])
    x = np.concatenate([magnitudes, -magnitudes, dense, -dense, edges,
                        np.nextafter(edges, 0.0), np.nextafter(edges, 10.0)])
    got = _kernels.box_atan(x)
    want = np.arctan(x)
    ulps = np.abs(got - want) / np.spacing(np.abs(want))
    assert np.max(ulps[want != 0]) <= 2.0
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, 5e-324])
    got = _kernels.box_atan(special)
    assert bitwise_equal(got[:4], np.array([0.0, -0.0, np.pi / 2, -np.pi / 2]))
    assert np.isnan(got[4])
    assert abs(got[5] - np.pi / 4) <= np.spacing(np.pi / 4) and got[6] == -got[5]
    assert got[7] == 5e-324


# ----------------------------------------------------------------------------------------
# Edge cases
# ----------------------------------------------------------------------------------------

@kinds
@dtypes
def test_identical_boxes(kind, dtype):
    boxes = np.array([[0, 0, 2, 3], [1, 1, 1.5, 4], [-3, 2, 5, 2.25]], dtype=dtype)
    check_against_reference(kind, boxes, boxes.copy(), dtype, "none", "value_and_grad")
    loss = public(kind)[0](boxes, boxes, reduction="none")
    assert np.all(np.abs(loss) < 1e-6)  # eps / area


@kinds
@dtypes
@pytest.mark.parametrize("case", ["disjoint", "touching", "nested", "zero-area", "inverted"])
def test_geometric_cases(kind, dtype, case, rng):
    boxes1 = random_boxes(rng, (64,))
    if case == "disjoint":
        boxes2 = boxes1 + np.array([30.0, 30.0, 30.0, 30.0])
    elif case == "touching":
        boxes2 = boxes1.copy()
        boxes2[:, 0] = boxes1[:, 2]
        boxes2[:, 2] = boxes1[:, 2] + 2.0
    elif case == "nested":
        boxes2 = boxes1 + np.array([0.05, 0.05, -0.05, -0.05])
    elif case == "zero-area":
        boxes2 = boxes1.copy()
        boxes2[:, 2] = boxes2[:, 0]  # zero width (zero height is ciou's NaN: below)
    else:
        boxes2 = boxes1[:, [2, 3, 0, 1]]  # x2 < x1 and y2 < y1: not refused, as torchvision
    check_against_reference(kind, boxes1.astype(dtype), boxes2.astype(dtype), dtype, "none",
                            "value_and_grad", rng.standard_normal(64))


@dtypes
def test_ciou_zero_height_gives_nan_gradient_as_autograd(dtype):
    boxes1 = np.array([[0, 0, 2, 0], [0, 0, 2, 2]], dtype=dtype)
    boxes2 = np.array([[0, 0, 1, 1], [0, 0, 1, 1]], dtype=dtype)
    value, grads = fastloss.ciou_loss_value_and_grad(boxes1, boxes2, reduction="none",
                                                     wrt=BOTH)
    assert np.all(np.isfinite(value))
    assert np.isnan(grads[0][0, [0, 1, 2, 3]]).all() and np.isfinite(grads[0][1]).all()
    check_against_reference("ciou", boxes1, boxes2, dtype, "none", "value_and_grad")


def _flat_pairs(height):
    """Float64 pairs with one box `height` high and 1 wide, or 1 high and `height` wide
    (boxes1 in rows 0-3, boxes2 in rows 4-7), against boxes of other shapes and places."""
    flat = [[0, 0, 1, height], [0, 0, height, 1], [-1, 0, 3, height], [0, -1, height, 3]]
    other = [[0, 0, 1, 1], [0, 0, 2, 1], [0, 1, 3, 2], [1, 0, 2, 4]]
    return np.array(flat + other), np.array(other + flat)


def test_ciou_flat_boxes_get_the_limit_of_their_gradient(simd_path):
    """A box 1e160 or 1e300 times longer than high has a finite ciou gradient: to
    the contract, that of the same pairs with the box 1e60 times longer (they differ by
    terms of the order of the height), where autograd's chain through w / h still holds,
    and the reference's. Autograd's chain gives NaN beyond 1.3e154 (q**2 = inf, then
    0 * inf), and so did the kernels; the reference gave a wrong finite value."""
    limit_value, limit_grads = fastloss.ciou_loss_value_and_grad(
        *_flat_pairs(1e-60), reduction="none", wrt=BOTH)
    for height in (1e-160, 1e-300):
        boxes1, boxes2 = _flat_pairs(height)
        check_against_reference("ciou", boxes1, boxes2, np.float64, "none", "value_and_grad")
        value, grads = fastloss.ciou_loss_value_and_grad(boxes1, boxes2, reduction="none",
                                                         wrt=BOTH)
        assert_close_contract(value, limit_value, np.float64, "loss")
        for got, limit in zip(grads, limit_grads):
            assert np.all(np.isfinite(got))
            assert_close_contract(got, limit, np.float64, "grad")


def _mp_ciou(mpmath, boxes1, boxes2, alpha=None):
    """torchvision's complete_box_iou_loss of one pair in mpmath (eps 1e-7), and its
    alpha; with `alpha` given, alpha held at it (torchvision's torch.no_grad)."""
    eps = mpmath.mpf("1e-7")
    x1, y1, x2, y2 = boxes1
    u1, v1, u2, v2 = boxes2
    w1, h1, w2, h2 = x2 - x1, y2 - y1, u2 - u1, v2 - v1
    iw, ih = min(x2, u2) - max(x1, u1), min(y2, v2) - max(y1, v1)
    inter = iw * ih if iw > 0 and ih > 0 else mpmath.mpf(0)
    iou = inter / (w1 * h1 + w2 * h2 - inter + eps)
    cw, ch = max(x2, u2) - min(x1, u1), max(y2, v2) - min(y1, v1)
    centres = ((x1 + x2 - u1 - u2) / 2) ** 2 + ((y1 + y2 - v1 - v2) / 2) ** 2
    v = 4 / mpmath.pi ** 2 * (mpmath.atan(w2 / h2) - mpmath.atan(w1 / h1)) ** 2
    alpha = v / (1 - iou + v + eps) if alpha is None else alpha
    return 1 - iou + centres / (cw ** 2 + ch ** 2 + eps) + alpha * v, alpha


def test_ciou_gradient_of_flat_boxes_against_mpmath(rng):
    """Pairs with one box flattened by 1 to 1e300 (either side, either box), float64:
    the gradient w.r.t. boxes1 against 800-digit central differences of torchvision's
    formula (alpha held), to the accuracy contract. Autograd's chain through
    w / h (and the kernels before) gave NaN below 1 / 1.3e154."""
    import mpmath  # a test extra (pyproject.toml)
    for _ in range(24):
        boxes = rng.uniform(0.0, 3.0, (2, 4))
        boxes[:, 2:] = boxes[:, :2] + rng.uniform(0.5, 3.0, (2, 2))
        box, side = rng.integers(2), rng.integers(2)
        boxes[box, side], boxes[box, 2 + side] = 0.0, 10.0 ** -rng.uniform(0.0, 300.0)
        value, grad = fastloss.ciou_loss_value_and_grad(boxes[:1], boxes[1:], reduction="none")
        with mpmath.workdps(800):
            pair = [[mpmath.mpf(float(c)) for c in b] for b in boxes]
            want_value, alpha = _mp_ciou(mpmath, *pair)
            step = min(abs(b[2 + k] - b[k]) for b in pair for k in range(2)) * mpmath.mpf("1e-60")
            want = []
            for k in range(4):
                def loss_at(coordinate, k=k):
                    moved = list(pair[0])
                    moved[k] = coordinate
                    return _mp_ciou(mpmath, moved, pair[1], alpha)[0]
                want.append(float(mpmath.diff(loss_at, pair[0][k], h=step)))
        assert_close_contract(value, [float(want_value)], np.float64, "loss")
        assert np.all(np.isfinite(grad))
        assert_close_contract(grad[0], np.array(want), np.float64, "grad")


@kinds
@dtypes
def test_huge_coordinates(kind, dtype, rng):
    scale = 1e30 if dtype == np.float32 else 1e150
    boxes1, boxes2 = related_boxes(rng, 100)
    check_against_reference(kind, (boxes1 * scale).astype(dtype),
                            (boxes2 * scale).astype(dtype), dtype, "none", "value_and_grad",
                            rng.standard_normal(100))


@kinds
@dtypes
def test_nan_and_inf_propagate(kind, dtype, rng):
    boxes1, boxes2 = related_boxes(rng, 40, dtype)
    boxes1[3, 0] = np.nan
    boxes2[7, 3] = np.nan
    boxes1[11, 2] = np.inf
    boxes2[13, 0] = -np.inf
    check_against_reference(kind, boxes1, boxes2, dtype, "none", "value_and_grad")
    assert math.isnan(public(kind)[0](boxes1, boxes2))


@kinds
@dtypes
def test_empty_input(kind, dtype):
    loss, grad, value_and_grad = public(kind)
    empty = np.zeros((0, 4), dtype=dtype)
    assert loss(empty, empty) == 0.0  # torchvision: 0.0 * loss.sum(), not nan
    assert loss(empty, empty, reduction="sum") == 0.0
    assert loss(empty, empty, reduction="none").shape == (0,)
    value, grads = value_and_grad(empty, np.zeros(4, dtype=dtype), wrt=BOTH)
    assert value == 0.0 and grads[0].shape == (0, 4) and grads[1].shape == (4,)
    assert not grads[1].any()
    assert grad(empty, empty, np.zeros(0), reduction="none").shape == (0, 4)


@kinds
@dtypes
@pytest.mark.parametrize("shapes", [((4,), (50, 4)), ((50, 4), (4,)), ((6, 1, 4), (7, 4)),
                                    ((1, 4), (3, 5, 4)), ((4,), (4,))],
                         ids=lambda shapes: f"{shapes[0]}x{shapes[1]}")
def test_broadcast(kind, dtype, shapes, rng):
    boxes1 = random_boxes(rng, shapes[0][:-1]).astype(dtype)
    boxes2 = random_boxes(rng, shapes[1][:-1]).astype(dtype)
    shape = np.broadcast_shapes(shapes[0][:-1], shapes[1][:-1])
    for reduction in REDUCTIONS:
        check_against_reference(kind, boxes1, boxes2, dtype, reduction, "value_and_grad",
                                grad_output_for(rng, reduction, shape))


@kinds
def test_mixed_dtypes(kind, rng):
    boxes1, boxes2 = related_boxes(rng, 100)
    boxes1 = boxes1.astype(np.float32)
    value, grads = public(kind)[2](boxes1, boxes2, reduction="none", wrt=BOTH)
    assert value.dtype == np.float64
    assert grads[0].dtype == np.float32 and grads[1].dtype == np.float64
    ref_value, ref_grads = oracle(kind)[2](boxes1, boxes2, reduction="none", wrt=BOTH)
    assert_close_contract(value, ref_value, np.float64)
    assert_close_contract(grads[0], ref_grads[0], np.float32, "grad")
    assert_close_contract(grads[1], ref_grads[1], np.float64, "grad")


@kinds
@dtypes
@pytest.mark.parametrize("layout", ["fortran", "strided", "reversed", "transposed-batch"])
def test_layouts(kind, dtype, layout, rng):
    boxes1, boxes2 = related_boxes(rng, 300, dtype)
    if layout == "fortran":
        boxes1 = np.asfortranarray(boxes1)
    elif layout == "strided":
        boxes1 = np.repeat(boxes1, 2, axis=0)[::2]
        boxes2 = np.concatenate([boxes2, boxes2], axis=1)[:, 2:6]
    elif layout == "reversed":
        boxes1, boxes2 = boxes1[::-1], boxes2[::-1]
    else:
        boxes1 = boxes1.reshape(20, 15, 4).transpose(1, 0, 2)
        boxes2 = boxes2.reshape(15, 20, 4)
    check_against_reference(kind, boxes1, boxes2, dtype, "none", "value_and_grad",
                            rng.standard_normal(boxes1.shape[:-1]))


@kinds
@dtypes
def test_in_place_and_out(kind, dtype, rng):
    boxes1, boxes2 = related_boxes(rng, 500, dtype)
    _, grad, value_and_grad = public(kind)
    want_value, want = value_and_grad(boxes1, boxes2, wrt=BOTH)
    work1, work2 = boxes1.copy(), boxes2.copy()
    value, grads = value_and_grad(work1, work2, out=(work1, work2), wrt=BOTH)
    assert grads[0] is work1 and grads[1] is work2
    assert value == want_value
    assert bitwise_equal(work1, want[0]) and bitwise_equal(work2, want[1])
    work1 = boxes1.copy()
    assert grad(work1, boxes2, out=work1) is work1 and bitwise_equal(work1, want[0])
    out = np.empty((500, 4), dtype=np.float64 if dtype == np.float32 else np.float32)
    with pytest.raises(TypeError, match="^out"):
        grad(boxes1, boxes2, out=out)
    out = np.empty((1000, 4), dtype=dtype)[::2]  # a layout the kernel cannot write
    assert grad(boxes1, boxes2, out=out) is out and bitwise_equal(out, want[0])
    # out overlapping boxes1 shifted by a row: computed aside, then copied
    shifted = np.concatenate([boxes1, boxes1[:1]])
    want_shifted = grad(shifted[1:].copy(), boxes2)
    assert bitwise_equal(grad(shifted[1:], boxes2, out=shifted[:-1]), want_shifted)


# ----------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------

BAD = [
    ("int boxes1", dict(boxes1=np.zeros((3, 4), dtype=np.int64)), TypeError, "^boxes1"),
    # (float16 and bfloat16 boxes are taken: tests/test_half.py)
    ("int16 boxes2", dict(boxes2=np.zeros((3, 4), dtype=np.int16)), TypeError, "^boxes2"),
    ("string boxes1", dict(boxes1="boxes"), TypeError, "^boxes1"),
    ("last axis 3", dict(boxes2=np.zeros((3, 3))), ValueError, r"^boxes2: expected shape \(\.\.\., 4\)"),
    ("0-d boxes1", dict(boxes1=np.float64(1.0)), ValueError, "^boxes1"),
    ("no broadcast", dict(boxes2=np.zeros((5, 4))), ValueError, "^boxes2: shape"),
    ("eps 0", dict(eps=0.0), ValueError, "^eps"),
    ("eps negative", dict(eps=-1e-7), ValueError, "^eps"),
    ("eps nan", dict(eps=math.nan), ValueError, "^eps"),
    ("eps inf", dict(eps=math.inf), ValueError, "^eps"),
    ("eps string", dict(eps="1e-7"), TypeError, "^eps"),
    ("reduction", dict(reduction="avg"), ValueError, "^reduction"),
    ("num_threads", dict(num_threads=0), ValueError, "^num_threads"),
]

BAD_GRAD = [
    ("wrt unknown", dict(wrt="boxes3"), ValueError, "^wrt"),
    ("wrt repeated", dict(wrt=("boxes1", "boxes1")), ValueError, "^wrt"),
    ("wrt type", dict(wrt=1), TypeError, "^wrt"),
    ("out shape", dict(out=np.zeros((2, 4))), ValueError, "^out"),
    ("out dtype", dict(out=np.zeros((3, 4), dtype=np.float32)), TypeError, "^out"),
    ("out read-only", dict(out=np.zeros((3, 4))[...].view()), ValueError, "^out"),
    ("out not a tuple", dict(wrt=BOTH, out=np.zeros((3, 4))), TypeError, "^out"),
    ("grad_output array for mean", dict(grad_output=np.ones(3)), ValueError, "^grad_output"),
    ("grad_output string", dict(grad_output="1"), TypeError, "^grad_output"),
    ("grad_output shape", dict(grad_output=np.ones(4), reduction="none"), ValueError,
     "^grad_output"),
]
BAD_GRAD[5][1]["out"].flags.writeable = False


@kinds
@pytest.mark.parametrize("case", BAD + BAD_GRAD, ids=lambda case: case[0])
def test_bad_input(kind, case):
    _, changes, error, message = case
    arguments = dict(boxes1=np.zeros((3, 4)), boxes2=np.ones((3, 4)))
    arguments.update(changes)
    loss, grad, value_and_grad = public(kind)
    functions = (grad, value_and_grad) if case in BAD_GRAD else (loss, grad, value_and_grad)
    for function in functions:
        with pytest.raises(error, match=message):
            function(**arguments)


def test_exports():
    for kind in KINDS:
        for suffix in ("", "_grad", "_value_and_grad"):
            name = f"{kind}_loss{suffix}"
            assert name in fastloss.__all__ and name in reference.__all__
            assert callable(getattr(fastloss, name)) and callable(getattr(reference, name))


def test_runner_interface(rng):
    from fastloss.box import _BoxProblem

    boxes1, boxes2 = related_boxes(rng, 10)
    problem = _BoxProblem("diou", (boxes1, boxes2), {"eps": 1e-7}, "sum", None)
    value, grad = problem.run("value_and_grad", grad_output=2.0, wrt=BOTH)
    assert grad[0].shape == (10, 4) and problem.run("forward") == (value, None)
    assert problem.run("backward", 2.0, None, "boxes2")[0] is None


@kinds
def test_an_infinite_side_gives_autograd_s_gradient(kind):
    """Found by the registry fuzz (float32 ciou, boxes1 = (5.38, inf, -1e30, 5.62)): the
    reference's atan slopes, scaled by max(|w|, |h|), divided inf by inf at an infinite
    side and made NaN the y1 component that autograd (and the kernels) give as +inf; it
    now takes autograd's chain through w / h there. Each NaN and infinity as autograd's,
    the finite components within the contract: the reference against the torch formula
    (where torch is installed) and the kernels against the reference."""
    boxes1 = np.array([[5.3816433, np.inf, -1e30, 5.6179442],    # h = -inf
                       [0.0, 0.0, np.inf, 2.0],                  # w = inf
                       [-np.inf, 0.0, 1.0, 3.0],                 # w = inf, from x1
                       [0.0, -np.inf, 2.0, np.inf],              # h = inf - -inf
                       [1.0, 1.0, 3.0, np.inf]])                 # h = inf
    boxes2 = np.array([[3.482072, 3.2257612, 6.019554, 5.039427],
                       [0.5, 0.5, 2.0, 1.5], [0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 2.0, 2.0],
                       [0.0, 0.0, 2.0, 2.0]])
    ref_value, ref_grads = oracle(kind)[2](boxes1, boxes2, reduction="none", wrt=BOTH)
    for dtype in DTYPES:
        value, grads = public(kind)[2](boxes1.astype(dtype), boxes2.astype(dtype),
                                       reduction="none", wrt=BOTH)
        assert_close_contract(value, ref_value, dtype, "loss")
        for got, want in zip(grads, ref_grads):
            assert_close_contract(got, want, dtype, "grad")
    want_value, want_grads = torch_value_and_grads(kind, boxes1, boxes2, 1.0, 1e-7, "none")
    assert_close(ref_value, want_value, TORCH_TOLERANCE, "loss")
    for got, want in zip(ref_grads, want_grads):
        assert_close(got, want, TORCH_TOLERANCE, "grad")
