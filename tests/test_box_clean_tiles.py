"""Two shortcuts of the box kernels' double path (csrc/box_body.h) at their boundaries.

A tile (64 pairs) whose coordinates are all numbers and differ from their counterparts
(x1 != u1, y1 != v1, x2 != u2, y2 != v2) takes a loop with plain minima and maxima and
one-sided backward shares (BOX(clean)); one tie or one NaN anywhere in the tile sends the
whole tile through the general loop (torch's half shares at a tie, its NaN rules).  Both
loops run the same operations on the same values, so a pair gives the same results in a
clean tile as in a tile that a tie elsewhere makes general, on every SIMD path, float32 and
float64; the tied and NaN pairs themselves meet the contract against the float64
reference.

Calls whose gradients reach 16 MiB write them with streaming stores (stream_store.h): the
same bits as the same pairs cut into calls below the threshold, also into a gradient
buffer that is not 16-byte aligned and in place over the boxes."""

import numpy as np
import pytest

from fastloss import _kernels, reference
from loss_specs import assert_close_contract
from test_box_float32 import overlapping_pairs

KINDS = ("giou", "diou", "ciou")
BOTH = ("boxes1", "boxes2")
TILE = 64

kinds = pytest.mark.parametrize("kind", KINDS)
dtypes = pytest.mark.parametrize("dtype", (np.float32, np.float64), ids=("float32", "float64"))


def overlapping(rng, n, dtype):
    """The bench's kind of pairs: corners in [0, 10], sides in [0.5, 5], the second box the
    first moved by about a side and resized a little: no ties (almost surely)."""
    boxes1, boxes2 = overlapping_pairs(rng, n)
    # a few disjoint pairs (the intersection's mask) in every tile
    boxes2[5::17] += 20.0
    return boxes1.astype(dtype), boxes2.astype(dtype)


def run(kind, boxes1, boxes2, grad_output, float_pass, out=None, threads=1):
    """The kernel, reduction "none": (per-pair loss, grad1, grad2)."""
    n = len(boxes1)
    per_box = np.empty(n, boxes1.dtype)
    grad1, grad2 = out if out is not None else (np.full((n, 4), -7.0, boxes1.dtype),
                                                np.full((n, 4), -7.0, boxes1.dtype))
    _kernels.box_run("value_and_grad", kind, boxes1, boxes2,
                     np.ascontiguousarray(grad_output, np.float64), per_box, grad1, grad2,
                     1e-7, "none", threads, float_pass)
    return per_box, grad1, grad2


def float_passes(dtype):
    # float32: every pair in double (-1), the default (0: ciou's float pass first, its
    # rejected pairs in double); float64 has the double path only
    return (-1, 0) if dtype == np.float32 else (0,)


def spoil(boxes1, boxes2, index, coordinate, how):
    """Pair ``index`` gets a tie (box 2's coordinate equal to box 1's) or a NaN."""
    if how == "tie":
        boxes2[index, coordinate] = boxes1[index, coordinate]
    elif how == "nan1":
        boxes1[index, coordinate] = np.nan
    else:
        boxes2[index, coordinate] = np.nan


@kinds
@dtypes
@pytest.mark.parametrize("coordinate", range(4))
@pytest.mark.parametrize("how", ("tie", "nan1", "nan2"))
def test_a_pair_gives_the_same_results_in_a_clean_and_in_a_general_tile(
        simd_path, kind, dtype, coordinate, how, rng):
    n = 5 * TILE + 9  # a short last tile too
    boxes1, boxes2 = overlapping(rng, n, dtype)
    grad_output = rng.uniform(0.5, 2.0, n)
    # one spoiled pair in tiles 1 and 3 and in the short last tile, at different lanes
    spoiled = [TILE + 3, 3 * TILE + 40, 5 * TILE + 8]
    general1, general2 = boxes1.copy(), boxes2.copy()
    for index in spoiled:
        spoil(general1, general2, index, coordinate, how)
    kept = np.setdiff1d(np.arange(n), spoiled)
    for float_pass in float_passes(dtype):
        clean = run(kind, boxes1, boxes2, grad_output, float_pass)
        general = run(kind, general1, general2, grad_output, float_pass)
        for what, a, b in zip(("loss", "grad1", "grad2"), clean, general):
            # equal values (the loops may differ in the sign of a zero result only)
            np.testing.assert_array_equal(a[kept], b[kept], err_msg=f"{kind} {what}")
        # every pair, the spoiled ones included, against the reference
        ref_loss, ref_grads = reference.__dict__[f"{kind}_loss_value_and_grad"](
            general1.astype(np.float64), general2.astype(np.float64), grad_output,
            eps=1e-7, reduction="none", wrt=BOTH)
        assert_close_contract(general[0], ref_loss, dtype, "loss")
        for name, got, want in zip(BOTH, general[1:], ref_grads):
            assert_close_contract(got, want, dtype, "grad", what=f"{kind} grad {name}")


@kinds
@dtypes
def test_ties_on_every_coordinate_get_torch_shares(simd_path, kind, dtype, rng):
    """Tiles of pairs that tie on one, two or all four coordinates (shared edges, a box
    inside the other on one side, identical boxes) next to clean tiles."""
    n = 4 * TILE
    boxes1, boxes2 = overlapping(rng, n, dtype)
    pattern = rng.random((2 * TILE, 4)) < 0.4
    tied = boxes2[TILE:3 * TILE]
    tied[pattern] = boxes1[TILE:3 * TILE][pattern]
    grad_output = rng.uniform(0.5, 2.0, n)
    ref_loss, ref_grads = reference.__dict__[f"{kind}_loss_value_and_grad"](
        boxes1.astype(np.float64), boxes2.astype(np.float64), grad_output, eps=1e-7,
        reduction="none", wrt=BOTH)
    for float_pass in float_passes(dtype):
        loss, grad1, grad2 = run(kind, boxes1, boxes2, grad_output, float_pass)
        assert_close_contract(loss, ref_loss, dtype, "loss")
        assert_close_contract(grad1, ref_grads[0], dtype, "grad", what="grad boxes1")
        assert_close_contract(grad2, ref_grads[1], dtype, "grad", what="grad boxes2")


def chunked(kind, boxes1, boxes2, grad_output, float_pass, chunk):
    """The same pairs in calls of ``chunk`` pairs (a multiple of the tile: the same tiles),
    each below the streaming threshold."""
    parts = [run(kind, boxes1[i:i + chunk], boxes2[i:i + chunk], grad_output[i:i + chunk],
                 float_pass) for i in range(0, len(boxes1), chunk)]
    return tuple(np.concatenate(items) for items in zip(*parts))


@kinds
@pytest.mark.parametrize("dtype, layout", [
    pytest.param(dtype, layout, id=f"{np.dtype(dtype).name}-{layout}")
    for dtype in (np.float32, np.float64)
    for layout in ("aligned", "offset4", "offset8", "in_place")
    # a float64 array is never 4 bytes off its alignment
    if not (dtype == np.float64 and layout == "offset4")])
def test_streamed_gradients_equal_cached_ones(kind, dtype, layout, rng):
    # 2**19 pairs: 8 MiB (float32) or 16 MiB (float64) a gradient, both written: streamed
    n = 2 ** 19 + 37
    boxes1, boxes2 = overlapping(rng, n, dtype)
    boxes1[1000] = boxes2[1000]  # one general tile
    grad_output = rng.uniform(0.5, 2.0, n)
    itemsize = np.dtype(dtype).itemsize
    for float_pass in float_passes(dtype):
        want = chunked(kind, boxes1, boxes2, grad_output, float_pass, 2 ** 15)
        first = boxes1.copy()
        if layout == "in_place":
            out = (first, np.full((n, 4), -7.0, dtype))
        else:
            skip = {"aligned": 0, "offset4": 4, "offset8": 8}[layout]
            raw = np.empty(2 * n * 4 * itemsize + 128, np.uint8)
            start = (-raw.ctypes.data) % 64 + skip
            flat = raw[start:start + 2 * n * 4 * itemsize]
            flat = flat.view(dtype).reshape(2, n, 4)
            flat.fill(-7.0)
            out = (flat[0], flat[1])
        got = run(kind, first, boxes2, grad_output, float_pass, out=out, threads=2)
        for what, a, b in zip(("loss", "grad1", "grad2"), got, want):
            np.testing.assert_array_equal(a, b, err_msg=f"{kind} {what} ({layout})")
    # and the first pairs against the reference
    ref_loss, ref_grads = reference.__dict__[f"{kind}_loss_value_and_grad"](
        boxes1[:2000].astype(np.float64), boxes2[:2000].astype(np.float64),
        grad_output[:2000], eps=1e-7, reduction="none", wrt=BOTH)
    assert_close_contract(got[0][:2000], ref_loss, dtype, "loss")
    assert_close_contract(got[1][:2000], ref_grads[0], dtype, "grad", what="grad boxes1")
    assert_close_contract(got[2][:2000], ref_grads[1], dtype, "grad", what="grad boxes2")


@kinds
@pytest.mark.parametrize("dtype", ("float16", "bfloat16"))
@pytest.mark.parametrize("skip", (0, 2, 6))
def test_streamed_half_gradients_equal_cached_ones(kind, dtype, skip, rng):
    """Half boxes (computed in double): 2**20 pairs, 8 MiB a gradient, both streamed, into
    buffers 0, 2 and 6 bytes off 16-byte alignment."""
    if dtype == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        dtype = np.dtype(ml_dtypes.bfloat16)
    dtype = np.dtype(dtype)
    n = 2 ** 20 + 5
    boxes1, boxes2 = overlapping(rng, n, dtype)
    boxes1[77] = boxes2[77]  # one general tile
    grad_output = rng.uniform(0.5, 2.0, n)
    want = chunked(kind, boxes1, boxes2, grad_output, 0, 2 ** 16)
    raw = np.empty(2 * n * 4 * dtype.itemsize + 128, np.uint8)
    start = (-raw.ctypes.data) % 64 + skip
    flat = raw[start:start + 2 * n * 4 * dtype.itemsize].view(dtype).reshape(2, n, 4)
    flat.fill(-7.0)
    got = run(kind, boxes1, boxes2, grad_output, 0, out=(flat[0], flat[1]), threads=2)
    for what, a, b in zip(("loss", "grad1", "grad2"), got, want):
        np.testing.assert_array_equal(a.view(np.uint16), b.view(np.uint16),
                                      err_msg=f"{kind} {what}")
