"""The box losses' SIMD paths (FASTLOSS_SIMD=baseline|avx2|avx512, chosen here through
``_kernels.set_simd_path``) at the places a wrong vectorised path would show: counts that
are not a multiple of the vector width or of the tile (the loop tails), rows read with a
stride (a strided view, one box broadcast against every other), and degenerate boxes
(zero sides, points, inverted, identical, NaN) placed at lane and tile boundaries.  Each
path against the float64 reference under the accuracy contract, and the paths against each
other: every path runs the same IEEE operations per pair (no contraction, box_impl.h) and
sums in the same fixed order, so each path must give the baseline's bits."""

import numpy as np
import pytest

from fastloss import _kernels, reference
from loss_specs import assert_close_contract
from simd_paths import available_paths
from simd_paths import on_path as forced_path
from test_box_float32 import overlapping_pairs

KINDS = ("giou", "diou", "ciou")
BOTH = ("boxes1", "boxes2")
# around the widths (4 doubles, 8 doubles or floats, 16 floats), the tile (64 pairs) and
# the reduction lanes
COUNTS = (1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 33, 63, 64, 65, 127, 129, 200)
# the kernel's float_pass: -1 every pair in double, 1 the float32 pass for every loss
FLOAT_PASSES = {np.float32: (-1, 1), np.float64: (0,)}

kinds = pytest.mark.parametrize("kind", KINDS)


def on_path(path, function, *args):
    with forced_path(path):
        return function(*args)


def pairs(rng, n, dtype):
    """Overlapping pairs of moderate size (the float pass's domain) with degenerate ones at
    the lane and tile boundaries that fall inside [0, n)."""
    boxes1, boxes2 = overlapping_pairs(rng, n)
    cases = {
        3: lambda b1, b2: b1.__setitem__(2, b1[0]),                    # zero width
        4: lambda b1, b2: b2.__setitem__(3, b2[1]),                    # zero height
        7: lambda b1, b2: b2.__setitem__(slice(None), b1),             # identical
        8: lambda b1, b2: b1.__setitem__(slice(2, 4), b1[:2]),         # a point
        15: lambda b1, b2: b1.__setitem__(slice(None), b1[[2, 3, 0, 1]]),  # inverted
        16: lambda b1, b2: b2.__setitem__(slice(None), b1 + [0.5, 0.5, -0.5, -0.5]),  # nested
        31: lambda b1, b2: b2.__setitem__(slice(None), b1 + [20, 20, 20, 20]),  # disjoint
        63: lambda b1, b2: b2.__setitem__(0, b1[2]),                   # touching edge
        64: lambda b1, b2: b1.__setitem__(slice(None), b1 * 1e-6),     # tiny
        65: lambda b1, b2: b2.__setitem__(slice(None), b1[[0, 1, 2, 3]]),  # identical again
        128: lambda b1, b2: b1.__setitem__(1, np.nan),                 # NaN
    }
    for index, make in cases.items():
        if index < n:
            make(boxes1[index], boxes2[index])
    return boxes1.astype(dtype), boxes2.astype(dtype)


def run(kind, boxes1, boxes2, grad_output, reduction, float_pass):
    """The kernel on (n, 4) rows (or (1, 4) for one box): (value, grad1, grad2)."""
    n = max(len(boxes1), len(boxes2))
    dtype = boxes1.dtype
    per_box = np.full(n, -7.0, dtype) if reduction == "none" else None
    # per pair, also for a broadcast box (the public function sums those)
    grad1 = np.full((n, 4), -7.0, dtype)
    grad2 = np.full((n, 4), -7.0, dtype)
    total = _kernels.box_run("value_and_grad", kind, boxes1, boxes2,
                             np.ascontiguousarray(grad_output, np.float64).reshape(-1),
                             per_box, grad1, grad2, 1e-7, reduction, 1, float_pass)
    return (per_box if reduction == "none" else np.float64(total)), grad1, grad2


def check(kind, boxes1, boxes2, grad_output, reduction, float_pass, paths):
    """Each path against the reference (per pair: a broadcast box is expanded for it), and
    every path's bits equal to the first's."""
    n = max(len(boxes1), len(boxes2))
    ref_value, ref_grads = reference.__dict__[f"{kind}_loss_value_and_grad"](
        np.broadcast_to(boxes1, (n, 4)).astype(np.float64),
        np.broadcast_to(boxes2, (n, 4)).astype(np.float64), grad_output.reshape(-1)
        if reduction == "none" else float(grad_output[0]), eps=1e-7, reduction=reduction,
        wrt=BOTH)
    dtype = boxes1.dtype.type
    results = []
    for path in paths:
        value, grad1, grad2 = on_path(path, run, kind, boxes1, boxes2, grad_output, reduction,
                                      float_pass)
        assert_close_contract(value, ref_value, dtype, "loss", what=f"{path} loss")
        assert_close_contract(grad1, ref_grads[0], dtype, "grad", what=f"{path} grad1")
        assert_close_contract(grad2, ref_grads[1], dtype, "grad", what=f"{path} grad2")
        results.append((path, value, grad1, grad2))
    first = results[0]
    for other in results[1:]:
        for what, a, b in zip(("loss", "grad1", "grad2"), first[1:], other[1:]):
            same_bits(a, b, f"{kind} {what}: {other[0]} differs from {first[0]}")


def same_bits(a, b, message):
    """The same bits, NaN at the same places (a NaN's sign and payload aside: IEEE leaves
    them to the instruction)."""
    a, b = np.atleast_1d(np.asarray(a)), np.atleast_1d(np.asarray(b))
    nan = np.isnan(a)
    np.testing.assert_array_equal(nan, np.isnan(b), err_msg=f"{message}: NaN positions")
    np.testing.assert_array_equal(a[~nan].view(np.uint8), b[~nan].view(np.uint8),
                                  err_msg=f"{message} in its bits")


@kinds
@pytest.mark.parametrize("dtype", (np.float32, np.float64), ids=("float32", "float64"))
@pytest.mark.parametrize("reduction", ("none", "mean"))
def test_tails_and_degenerate_boxes_on_every_path(kind, dtype, reduction, rng):
    paths = available_paths()
    for n in COUNTS:
        boxes1, boxes2 = pairs(rng, n, dtype)
        grad_output = (rng.standard_normal(n) if reduction == "none" else np.array([1.3]))
        for float_pass in FLOAT_PASSES[dtype]:
            check(kind, boxes1, boxes2, grad_output, reduction, float_pass, paths)


@kinds
@pytest.mark.parametrize("dtype", (np.float32, np.float64), ids=("float32", "float64"))
def test_strided_rows_on_every_path(kind, dtype, rng):
    """Rows two apart (a view of every other row) and rows of a wider array, at tail
    counts: the kernel's strided loads."""
    paths = available_paths()
    for n in (1, 7, 9, 17, 65, 129):
        boxes1, boxes2 = pairs(rng, n, dtype)
        wide1 = np.repeat(boxes1, 2, axis=0)[::2]          # row stride 8 values
        wide2 = np.concatenate([boxes2, boxes2], axis=1)[:, 4:]  # row stride 8 values
        assert wide1.strides[0] == 8 * wide1.itemsize and wide2.strides[0] == 8 * wide2.itemsize
        grad_output = rng.standard_normal(n)
        for float_pass in FLOAT_PASSES[dtype]:
            check(kind, wide1, wide2, grad_output, "none", float_pass, paths)
            # the same pairs contiguous give the same bits
            contiguous = on_path(paths[0], run, kind, boxes1, boxes2, grad_output, "none",
                                 float_pass)
            strided = on_path(paths[-1], run, kind, wide1, wide2, grad_output, "none",
                              float_pass)
            for what, a, b in zip(("loss", "grad1", "grad2"), contiguous, strided):
                same_bits(a, b, f"{kind} {what}: strided rows differ from contiguous ones")


@kinds
@pytest.mark.parametrize("dtype", (np.float32, np.float64), ids=("float32", "float64"))
def test_one_box_against_many_on_every_path(kind, dtype, rng):
    """One box (row stride 0) paired with every box of the other array, either side."""
    paths = available_paths()
    for n in (1, 9, 17, 65):
        boxes1, boxes2 = pairs(rng, n, dtype)
        one = boxes1[:1].copy()
        grad_output = rng.standard_normal(n)
        check(kind, one, boxes2, grad_output, "none", -1 if dtype == np.float32 else 0, paths)
        check(kind, boxes2, one, grad_output, "none", -1 if dtype == np.float32 else 0, paths)
