"""The float32 pass of the box losses (csrc/box_body.h, BOX_NARROW): each pair computed in
float with an a-priori error bound, and in double where the bound cannot promise the
accuracy contract.  The public functions take it for ciou; the kernel's ``float_pass=1``
takes it for all three losses, and the tests run both.  Inputs chosen to take the float
path (overlapping boxes of moderate size), to leave it (tiny or huge boxes, zero sides,
ties, inverted boxes, eps outside its range) and to mix both in one tile, on every SIMD
path, against the float64 reference; that each path is really taken (the double kernel,
``float_pass=-1``, gives other bits on the float path and the same bits off it); thread
invariance; forward, backward and fused calls agreeing bit for bit."""

import numpy as np
import pytest

import fastloss
from fastloss import _kernels, reference
from contract_floors import assert_close_at_scale
from loss_specs import assert_close_contract, bitwise_equal

KINDS = ("giou", "diou", "ciou")
BOTH = ("boxes1", "boxes2")

kinds = pytest.mark.parametrize("kind", KINDS)


def overlapping_pairs(rng, n):
    """The bench's kind of pairs, in float64: corners in [0, 10], sides in [0.5, 5], the
    second box the first moved by about a side and resized a little."""
    corner = rng.uniform(0.0, 10.0, (n, 2))
    size = rng.uniform(0.5, 5.0, (n, 2))
    boxes1 = np.concatenate([corner, corner + size], axis=1)
    shift = rng.normal(0.0, 1.5, (n, 2))
    boxes2 = boxes1 + np.concatenate([shift, shift], axis=1)
    boxes2[:, 2:] += rng.uniform(-0.25, 0.25, (n, 2))
    return boxes1, boxes2


def overlapping(rng, n, scale=1.0):
    """overlapping_pairs times ``scale``, in float32."""
    boxes1, boxes2 = overlapping_pairs(rng, n)
    return (boxes1 * scale).astype(np.float32), (boxes2 * scale).astype(np.float32)


def scenario(name, rng, n, parts=("overlapping", "tiny", "huge", "near", "degenerate")):
    """Pairs of float32 boxes for one named case (``parts``: what "mixed" mixes)."""
    if name == "overlapping":
        return overlapping(rng, n)
    if name == "tiny":          # sides below 2**-12: the double path
        return overlapping(rng, n, 1e-5)
    if name == "huge":          # coordinates beyond 2**12: the double path
        return overlapping(rng, n, 1e5)
    if name == "near":          # nearly identical: a few ulps apart, ties among them
        boxes1, _ = overlapping(rng, n)
        steps = rng.integers(-3, 4, boxes1.shape)
        boxes2 = boxes1.copy()
        for _ in range(3):
            boxes2 = np.where(steps > 0, np.nextafter(boxes2, np.float32(np.inf)), boxes2)
            boxes2 = np.where(steps < 0, np.nextafter(boxes2, np.float32(-np.inf)), boxes2)
            steps = steps - np.sign(steps)
        return boxes1, boxes2.astype(np.float32)
    if name == "degenerate":    # a zero width or height in every pair
        boxes1, boxes2 = overlapping(rng, n)
        boxes1[::2, 2] = boxes1[::2, 0]
        boxes2[1::2, 3] = boxes2[1::2, 1]
        return boxes1, boxes2
    if name == "mixed":         # every case above in each tile, and inverted boxes
        parts = [scenario(other, rng, n) for other in parts]
        pick = rng.integers(0, len(parts), n)
        boxes1 = np.choose(pick[:, None], [part[0] for part in parts])
        boxes2 = np.choose(pick[:, None], [part[1] for part in parts])
        inverted = rng.random(n) < 0.05
        boxes1[inverted] = boxes1[inverted][:, [2, 3, 0, 1]]
        return boxes1.astype(np.float32), boxes2.astype(np.float32)
    raise ValueError(name)


SCENARIOS = ("overlapping", "tiny", "huge", "near", "degenerate", "mixed")
ALL_DOUBLE = ("tiny", "huge", "degenerate")  # no pair of these may take the float path


def kernel(kind, boxes1, boxes2, grad_output, eps, reduction, float_pass, threads=1,
           mode="value_and_grad", wrt=BOTH, out=None):
    """The kernel itself on (n, 4) float32 boxes: (loss, (grad1, grad2)), each None where
    ``mode`` and ``wrt`` do not ask for it.  ``float_pass``: -1 every pair in double (as
    for a gradient summed over a broadcast), 0 the public functions' choice, 1 the float
    pass for every loss.  ``out``: (grad1, grad2) buffers (in place when they are the
    boxes)."""
    n = len(boxes1)
    per_box = (np.empty(n, np.float32) if reduction == "none" and mode != "backward"
               else None)
    grad1 = grad2 = upstream = None
    if mode != "forward":
        grad1, grad2 = out if out is not None else (np.empty_like(boxes1),
                                                     np.empty_like(boxes2))
        grad1 = grad1 if "boxes1" in wrt else None
        grad2 = grad2 if "boxes2" in wrt else None
        upstream = np.ascontiguousarray(grad_output, dtype=np.float64).reshape(-1)
    total = _kernels.box_run(mode, kind, boxes1, boxes2, upstream, per_box, grad1, grad2,
                             eps, reduction, threads, float_pass)
    value = None if mode == "backward" else (per_box if reduction == "none" else total)
    return value, (grad1, grad2)


def forced_double(kind, boxes1, boxes2, grad_output, eps, reduction):
    value, (grad1, grad2) = kernel(kind, boxes1, boxes2, grad_output, eps, reduction, -1)
    return value, grad1, grad2


def fused(kind, boxes1, boxes2, grad_output, eps, reduction, threads=1, float_pass=1):
    return kernel(kind, boxes1, boxes2, grad_output, eps, reduction, float_pass, threads)


def check_contract(kind, boxes1, boxes2, grad_output, eps, reduction):
    """The float pass (every loss) and the public function against the reference."""
    ref_value, ref_grads = getattr(reference, f"{kind}_loss_value_and_grad")(
        boxes1.astype(np.float64), boxes2.astype(np.float64), grad_output, eps=eps,
        reduction=reduction, wrt=BOTH)
    public = getattr(fastloss, f"{kind}_loss_value_and_grad")
    for value, grads in (fused(kind, boxes1, boxes2, grad_output, eps, reduction),
                         public(boxes1, boxes2, grad_output, eps=eps, reduction=reduction,
                                wrt=BOTH)):
        assert_close_contract(value, ref_value, np.float32, "loss")
        for name, got, want in zip(BOTH, grads, ref_grads):
            assert_close_contract(got, want, np.float32, "grad", what=f"grad {name}")
    return fused(kind, boxes1, boxes2, grad_output, eps, reduction)


@kinds
@pytest.mark.parametrize("name", SCENARIOS)
@pytest.mark.parametrize("reduction", ("none", "mean"))
def test_every_case_on_every_path_meets_the_contract(simd_path, kind, name, reduction, rng):
    n = 1000  # 15 tiles and a partial one
    boxes1, boxes2 = scenario(name, rng, n)
    upstream = (rng.uniform(0.5, 2.0, n) * rng.choice([-1.0, 1.0], n)
                if reduction == "none" else 1.0)
    check_contract(kind, boxes1, boxes2, upstream, 1e-7, reduction)


@kinds
@pytest.mark.parametrize("eps", [2.0 ** -100, 2.0 ** -101, 1e-7, 0.5, 2.0 ** 20, 2.0 ** 21])
def test_the_eps_edges_meet_the_contract(simd_path, kind, eps, rng):
    # eps in [2**-100, 2**20] keeps the float pass; outside it every pair is in double;
    # eps = 0.5 is of the size of the areas themselves.  (No zero sides: with a tiny eps
    # their gradients exceed float32's range, in double as in float.)
    boxes1, boxes2 = scenario("mixed", rng, 700, ("overlapping", "tiny", "huge", "near"))
    check_contract(kind, boxes1, boxes2, rng.uniform(-2.0, 2.0, 700), eps, "none")
    check_contract(kind, boxes1, boxes2, 1.0, eps, "sum")


@kinds
def test_eps_outside_its_range_keeps_every_pair_in_double(kind, rng):
    boxes1, boxes2 = scenario("overlapping", rng, 500)
    upstream = rng.uniform(-2.0, 2.0, 500)
    for eps in (2.0 ** -101, 2.0 ** 21):
        value, grads = fused(kind, boxes1, boxes2, upstream, eps, "none")
        want = forced_double(kind, boxes1, boxes2, upstream, eps, "none")
        assert bitwise_equal(value, want[0])
        assert bitwise_equal(grads[0], want[1]) and bitwise_equal(grads[1], want[2])


@kinds
@pytest.mark.parametrize("name", SCENARIOS)
def test_each_path_is_taken(simd_path, kind, name, rng):
    # The float path rounds otherwise than the double one: most pairs of overlapping boxes
    # differ in some bit from the forced-double kernel; pairs outside the float pass's
    # ranges are the double kernel's bit for bit.
    n = 1000
    boxes1, boxes2 = scenario(name, rng, n)
    upstream = rng.uniform(0.5, 2.0, n)
    value, grads = fused(kind, boxes1, boxes2, upstream, 1e-7, "none")
    want = forced_double(kind, boxes1, boxes2, upstream, 1e-7, "none")
    def bits(array):  # NaN compares equal to the same NaN
        return np.ascontiguousarray(array, dtype=np.float32).view(np.int32)
    same = (bits(value) == bits(want[0])) & (bits(grads[0]) == bits(want[1])).all(axis=1) & \
        (bits(grads[1]) == bits(want[2])).all(axis=1)
    if name in ALL_DOUBLE:
        assert same.all()
    elif name == "overlapping":
        assert (~same).mean() > 0.5
    elif name == "mixed":
        assert 0 < same.sum() < n
    # the public functions: the float pass for ciou, double for giou and diou
    public_value, public_grads = getattr(fastloss, f"{kind}_loss_value_and_grad")(
        boxes1, boxes2, upstream, reduction="none", wrt=BOTH)
    chosen = (value, grads) if kind == "ciou" else (want[0], want[1:])
    assert bitwise_equal(public_value, chosen[0])
    assert bitwise_equal(public_grads[0], chosen[1][0])
    assert bitwise_equal(public_grads[1], chosen[1][1])


@kinds
@pytest.mark.parametrize("reduction", ("none", "mean", "sum"))
def test_thread_invariance(kind, reduction, rng):
    n = 3 * 4096 + 77  # several reduction blocks, a partial last tile
    boxes1, boxes2 = scenario("mixed", rng, n)
    upstream = rng.uniform(-2.0, 2.0, n) if reduction == "none" else 1.0
    want_value, want = fused(kind, boxes1, boxes2, upstream, 1e-7, reduction, threads=1)
    for threads in (2, 3, 4):
        value, grads = fused(kind, boxes1, boxes2, upstream, 1e-7, reduction, threads=threads)
        assert bitwise_equal(np.asarray(value), np.asarray(want_value)), threads
        assert bitwise_equal(grads[0], want[0]) and bitwise_equal(grads[1], want[1]), threads


@kinds
@pytest.mark.parametrize("name", ("overlapping", "mixed"))
def test_forward_backward_and_fused_agree(kind, name, rng):
    # Each result takes the path its own bound chose: the loss alone, one gradient alone
    # or both give the same bits.
    boxes1, boxes2 = scenario(name, rng, 900)
    for reduction in ("none", "mean"):
        upstream = rng.uniform(0.5, 2.0, 900) if reduction == "none" else 1.0
        run = lambda **how: kernel(kind, boxes1, boxes2, upstream, 1e-7, reduction, 1,  # noqa: E731
                                   **how)
        value, grads = run()
        assert bitwise_equal(np.asarray(run(mode="forward")[0]), np.asarray(value))
        both = run(mode="backward")[1]
        assert bitwise_equal(both[0], grads[0]) and bitwise_equal(both[1], grads[1])
        assert bitwise_equal(run(mode="backward", wrt=("boxes1",))[1][0], grads[0])
        assert bitwise_equal(run(mode="backward", wrt=("boxes2",))[1][1], grads[1])
        alone, (first, _) = run(wrt=("boxes1",))
        assert bitwise_equal(np.asarray(alone), np.asarray(value))
        assert bitwise_equal(first, grads[0])


@kinds
def test_inverted_boxes_cancelling_the_sum(kind, rng):
    # Inverted boxes have negative losses (double path); where they cancel the float-path
    # losses the total is summed again in double, in place too.
    boxes1, boxes2 = scenario("overlapping", rng, 600)
    inverted = np.arange(600) % 3 == 0
    boxes1[inverted] = boxes1[inverted][:, [2, 3, 0, 1]]
    boxes2[inverted] = boxes2[inverted] * np.float32(3.0)
    for reduction in ("sum", "mean"):
        value, grads = check_contract(kind, boxes1, boxes2, 1.0, 1e-7, reduction)
        work1, work2 = boxes1.copy(), boxes2.copy()
        again, _ = kernel(kind, work1, work2, 1.0, 1e-7, reduction, 1,
                          out=(work1, work2))
        assert again == value
        assert bitwise_equal(work1, grads[0]) and bitwise_equal(work2, grads[1])


@kinds
def test_broadcast_gradients_stay_in_double(kind, rng):
    # A box paired with every other, and a (k, 1, 4) x (1, m, 4) broadcast: the gradients
    # are sums over pairs, so every pair is computed in double (the sum would add the
    # float pass's errors up)
    boxes1, boxes2 = scenario("overlapping", rng, 400)
    one = boxes1[:1]
    function = getattr(fastloss, f"{kind}_loss_value_and_grad")
    value, grads = function(one, boxes2, eps=1e-7, reduction="sum", wrt=BOTH)
    ref_value, ref_grads = getattr(reference, f"{kind}_loss_value_and_grad")(
        one.astype(np.float64), boxes2.astype(np.float64), eps=1e-7, reduction="sum",
        wrt=BOTH)
    assert_close_contract(value, ref_value, np.float32, "loss")
    for got, want in zip(grads, ref_grads):
        assert_close_contract(got, want, np.float32, "grad")
    left, right = boxes1[:20, None], boxes2[None, :20]
    value, grads = function(left, right, eps=1e-7, reduction="mean", wrt=BOTH)
    ref_value, ref_grads = getattr(reference, f"{kind}_loss_value_and_grad")(
        left.astype(np.float64), right.astype(np.float64), eps=1e-7, reduction="mean",
        wrt=BOTH)
    for got, want in zip(grads, ref_grads):
        assert_close_contract(got, want, np.float32, "grad")


@kinds
def test_many_scales_and_offsets_meet_the_contract(kind, rng):
    # 2**16 pairs with sides from 2**-14 to 2**14 and offsets from a millionth of a side to
    # a few sides: the float pass's range limits and its bounds' edges, against the
    # reference elementwise (reduction "none", a random upstream of either sign)
    n = 1 << 16
    scale = 2.0 ** rng.uniform(-14, 14, (n, 1))
    corner = rng.uniform(-1.0, 1.0, (n, 2)) * scale * rng.uniform(0.0, 4.0, (n, 1))
    size = rng.uniform(0.2, 1.0, (n, 2)) * scale
    boxes1 = np.concatenate([corner, corner + size], axis=1)
    offset = rng.normal(0.0, 1.0, (n, 4)) * size[:, [0, 1, 0, 1]] * \
        10.0 ** rng.uniform(-6, 0.5, (n, 1))
    boxes2 = boxes1 + offset
    boxes1, boxes2 = boxes1.astype(np.float32), boxes2.astype(np.float32)
    upstream = rng.uniform(0.5, 2.0, n) * rng.choice([-1.0, 1.0], n)
    check_contract(kind, boxes1, boxes2, upstream, 1e-7, "none")
    check_contract(kind, boxes1, boxes2, 1.0, 1e-7, "mean")


@kinds
@pytest.mark.parametrize("reduction", ("none", "mean"))
def test_pairs_whose_float_arithmetic_overflows_go_to_double(simd_path, kind, reduction,
                                                             rng):
    """Found by the registry fuzz (float32 ciou, five pairs, one box (0.41, -1e30, 4.77,
    0.82)): outside the checked ranges the pair's slack starts at -inf, but a NaN
    component (1e30**2 overflows float) handed the running minimum over to the next
    component's finite slack, and the float pass kept wrong gradients (NaN, and 2.8e-32
    for 4.4e-31). Alone, the pair took the double path and was right. Now a NaN or -inf
    slack stays; each such pair gives the double path's bits, in tiles of normal pairs."""
    n = 300
    boxes1, boxes2 = overlapping(rng, n)
    picks = rng.choice(n, 40, replace=False)
    huge = np.array([-1e30, 1e30, 3e19, -3e19, 1e38, -1e38, 5e15], np.float32)
    for index, k in enumerate(picks):
        target = boxes1 if index % 2 else boxes2
        target[k, index % 4] = huge[index % huge.size]
    upstream = rng.uniform(0.5, 2.0, n) if reduction == "none" else 1.0
    # (losses beyond float32's range: the contract against the reference rounded to it)
    ref_value, ref_grads = getattr(reference, f"{kind}_loss_value_and_grad")(
        boxes1.astype(np.float64), boxes2.astype(np.float64), upstream, reduction=reduction,
        wrt=BOTH)
    public = getattr(fastloss, f"{kind}_loss_value_and_grad")
    for got_value, grads in (fused(kind, boxes1, boxes2, upstream, 1e-7, reduction),
                             public(boxes1, boxes2, upstream, reduction=reduction, wrt=BOTH)):
        with np.errstate(over="ignore"):  # the kernel's sum is a double, the public float32's
            got_value = np.asarray(got_value).astype(np.float32)
        assert_close_at_scale(got_value, ref_value, np.float32, "loss")
        for name, got, want, boxes in zip(BOTH, grads, ref_grads, (boxes1, boxes2)):
            assert_close_at_scale(got, want, np.float32, "grad", loss=ref_value, wrt=boxes,
                                  what=f"grad {name}")
    value, (grad1, grad2) = fused(kind, boxes1, boxes2, upstream, 1e-7, reduction)
    want_value, want1, want2 = forced_double(kind, boxes1, boxes2, upstream, 1e-7, reduction)
    assert bitwise_equal(grad1[picks], want1[picks]) and bitwise_equal(grad2[picks],
                                                                       want2[picks])
    if reduction == "none":
        assert bitwise_equal(value[picks], want_value[picks])
