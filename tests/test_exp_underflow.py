"""The float32 and float64 exps below the normal range (csrc/fastmath.h: fastloss_expf,
fastloss_expf_nonpositive, fastloss_exp, fastloss_exp_nonpositive), and the cross-entropy
gradients that are made of them.

A float32 row whose other classes sit 88 below its target, ``[0, -88]``, has the gradient
``[-6.05e-39, 6.05e-39]``: below float32's smallest normal number, 2**-126, yet float32
holds it to 2e-7, and where it is the whole gradient the contract's floor
(1e-6 * max|ref|) is no larger. The exps used to flush such results to zero (the general
form even [2**-126, 2**-125), so the backward from an lse lost rows the fused call kept),
which gave a zero gradient there. They now keep their subnormal results (gradual
underflow). The exps are held to their bound densely on every SIMD path through
``_kernels.fast_exp``; the rows, one tiny class beside the target at every gap of a dense
range, on every path of the cross-entropy kernels, per row.

Not covered: a row whose target gradient is the sum of many exps each far below 2**-126
(each rounded to a subnormal, so the sum carries their roundings): it is not held to
2e-6 relative there.
"""

import numpy as np
import pytest

import fastloss
from fastloss import _contract, _kernels, reference
from simd_paths import simd_paths

#: the exps' relative error where the result is normal: about 1 ulp (float, measured
#: 2.3e-7 with FMA and 2.55e-7 with two roundings per multiply-add; double 1.4e-16 and
#: 1.8e-16), with room
REL_ERROR = {np.dtype(np.float32): 3e-7, np.dtype(np.float64): 3e-16}
#: the smallest normal number and the smallest subnormal of each type
TINY = {np.dtype(np.float32): 2.0 ** -126, np.dtype(np.float64): 2.0 ** -1022}
SMALLEST = {np.dtype(np.float32): 2.0 ** -149, np.dtype(np.float64): 2.0 ** -1074}
#: below these the exps give +0 (the results round to 0 or to the smallest subnormal)
FLUSH_BELOW = {np.dtype(np.float32): -104.0, np.dtype(np.float64): -745.2}


def exact_exp(x):
    """exp of x in float64 for float32 x; for float64 x, in the platform's long double
    (x86's 64-bit significand: about 1e-19 relative), enough to judge 3e-16."""
    x = np.asarray(x)
    if x.dtype == np.float32:
        return np.exp(x.astype(np.float64))
    assert np.finfo(np.longdouble).nmant >= 63, "this test needs an 80-bit long double"
    with np.errstate(under="ignore"):
        return np.exp(x.astype(np.longdouble))


def check_exp(x, got):
    dtype = x.dtype
    exact = exact_exp(x)
    error = np.abs(got.astype(exact.dtype) - exact)
    normal = exact >= TINY[dtype]
    rel = REL_ERROR[dtype]
    assert np.all(error[normal] <= rel * exact[normal]), (
        f"worst {np.max(error[normal] / exact[normal]):.3g} relative at "
        f"x = {x[normal][np.argmax(error[normal] / exact[normal])]!r}")
    # subnormal results: the relative error of the unrounded value, then one rounding
    below = ~normal & (x >= FLUSH_BELOW[dtype])
    allowed = rel * TINY[dtype] + SMALLEST[dtype] / 2
    assert np.all(error[below] <= allowed), (
        f"worst {np.max(error[below]) / SMALLEST[dtype]:.3g} units of the smallest "
        f"subnormal at x = {x[below][np.argmax(error[below])]!r}")
    # every result from exp(x) >= 0.75 units of the smallest subnormal is nonzero
    kept = exact >= 0.75 * SMALLEST[dtype]
    assert np.all(got[kept] > 0)
    np.testing.assert_array_equal(got[x < FLUSH_BELOW[dtype]], 0.0)


def float32_grid(low, high, stride):
    """Every `stride`-th float32 in [low, high] (low < high <= 0) by bit pattern."""
    first = int(np.float32(high).view(np.uint32)) if high < 0 else 0x80000000
    last = int(np.float32(low).view(np.uint32))
    return np.arange(first, last + 1, stride, dtype=np.uint64).astype(np.uint32).view(np.float32)


def test_float_exps_keep_subnormal_results_on_every_path():
    # every float32 of [-88, -86.5] (either side of 2**-126 and of the old flushes,
    # -87.3 and 2**-125), every 3rd of [-104.5, -88], every 401st of [-86.5, 0]
    x = np.concatenate([float32_grid(-88.0, -86.5, 1), float32_grid(-104.5, -88.0, 3),
                        float32_grid(-86.5, 0.0, 401)])
    positive = np.arange(0, int(np.float32(88.72283).view(np.uint32)) + 1, 401,
                         dtype=np.uint32).view(np.float32)
    specials = np.float32([-np.inf, -1e30, -104.01, -0.0, 0.0, np.nan])
    ran = 0
    with simd_paths() as paths:
        for _path in paths:
            ran += 1
            for nonpositive in (True, False):
                check_exp(x, _kernels.fast_exp(x, nonpositive))
                got = _kernels.fast_exp(specials, nonpositive)
                np.testing.assert_array_equal(got[:3], 0.0)
                np.testing.assert_array_equal(got[3:5], 1.0)
                assert np.isnan(got[5])
            general = _kernels.fast_exp(positive, False)
            check_exp(positive, general)
            assert np.all(np.isfinite(general))
            big = np.float32([88.72284, 89.0, 1e30, np.inf])
            assert np.all(_kernels.fast_exp(big, False) == np.inf)
            # an odd length and a misaligned start: the scalar tails
            part = x[5:5 + 1003]
            for nonpositive in (True, False):
                np.testing.assert_array_equal(_kernels.fast_exp(part, nonpositive),
                                              _kernels.fast_exp(part.copy(), nonpositive))
    assert ran >= 1


def test_double_exps_keep_subnormal_results_on_every_path(rng):
    x = np.concatenate([rng.uniform(-746.0, -700.0, 400_000), rng.uniform(-700.0, 0.0, 100_000),
                        np.linspace(-708.5, -708.3, 20_001)])
    positive = rng.uniform(0.0, 709.78, 100_000)
    with simd_paths() as paths:
        for _path in paths:
            for nonpositive in (True, False):
                check_exp(x, _kernels.fast_exp(x, nonpositive))
                got = _kernels.fast_exp(np.array([-np.inf, -1e300, -745.3, 0.0, np.nan]),
                                        nonpositive)
                np.testing.assert_array_equal(got[:3], 0.0)
                assert got[3] == 1.0 and np.isnan(got[4])
            check_exp(positive, _kernels.fast_exp(positive, False))
            assert np.all(_kernels.fast_exp(np.array([709.79, 800.0, np.inf]), False) == np.inf)


def test_fast_exp_argument_errors():
    with pytest.raises(TypeError, match="values"):
        _kernels.fast_exp(np.zeros(3, np.float16))
    with pytest.raises(ValueError, match="values"):
        _kernels.fast_exp(np.zeros((2, 2), np.float32))


def attainable(ref, dtype):
    """The rows of `ref` (float64, 2-D) whose float rounding in `dtype` meets the contract
    row by row: those a kernel can be held to."""
    rounded = ref.astype(dtype).astype(np.float64)
    return np.all(np.abs(rounded - ref) <= row_bound(ref, dtype), axis=1)


def row_bound(ref, dtype):
    """The contract's gradient bound of each row of `ref` taken as a call of its own
    (max|ref| over the row): what a call with that row alone is held to."""
    rule = _contract.tolerance(dtype, "grad")
    scale = np.max(np.abs(ref), axis=1, keepdims=True)
    return rule.rtol * np.abs(ref) + rule.floor * scale


def assert_rows_within_contract(got, ref, dtype, what):
    """Every row within the contract as if it were its own call; the rows cannot be held
    to it in `dtype` (the reference itself, rounded, misses it) within one unit of the
    smallest subnormal, per element."""
    got = np.asarray(got, np.float64)
    error = np.abs(got - ref)
    rows = attainable(ref, dtype)
    bad = rows[:, None] & (error > row_bound(ref, dtype))
    assert not bad.any(), (
        f"{what}: {int(bad.any(axis=1).sum())} rows outside the contract; first at "
        f"{np.argwhere(bad)[0]}: got {got[tuple(np.argwhere(bad)[0])]!r}, reference "
        f"{ref[tuple(np.argwhere(bad)[0])]!r}")
    assert np.all(error[~rows] <= SMALLEST[np.dtype(dtype)]), what


GAPS = {np.dtype(np.float32): (-104.5, -80.0), np.dtype(np.float64): (-746.0, -700.0)}


def tiny_rows(dtype, n_classes, n_rows):
    """Rows of `n_classes` with the target (class 0) at 0, one class at a gap below it
    (dense over GAPS, across the normal range's end and the subnormals), the others
    -inf (masked: exactly 0 in the gradient). The gradient of a row is
    [-e, e, 0, ...] with e = exp(gap) / (1 + exp(gap))."""
    low, high = GAPS[np.dtype(dtype)]
    gaps = np.linspace(low, high, n_rows).astype(dtype)
    rows = np.full((n_rows, n_classes), -np.inf, dtype)
    rows[:, 0] = 0
    tiny_class = min(n_classes - 1, 2049)  # in the second chunk of 2048 when there is one
    rows[:, tiny_class] = gaps
    return rows, np.zeros(n_rows, np.int64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_classes", [2, 3001])
def test_cross_entropy_gradient_below_the_normal_range(dtype, n_classes):
    # 2 classes take the small-vocabulary path (16 rows at once); 3001 the row path,
    # whose fused call keeps the exps from the chunk maxima (fastloss_expf_nonpositive)
    # and whose backward from an lse and block gradient from merged statistics take
    # the general exp
    n_rows = 2000 if n_classes == 2 else 300
    logits, target = tiny_rows(dtype, n_classes, n_rows)
    ref = reference.cross_entropy_grad(logits.astype(np.float64), target, 1.0,
                                       reduction="none")
    assert attainable(ref, dtype).mean() > 0.4  # the test holds most rows to the contract
    blocks = [(0, 1500), (1500, n_classes)] if n_classes > 1500 else [(0, n_classes)]
    with simd_paths() as paths:
        for path in paths:
            _, grad = fastloss.cross_entropy_value_and_grad(logits, target, reduction="none")
            assert_rows_within_contract(grad, ref, dtype, f"{path} fused")
            in_place = logits.copy()
            fastloss.cross_entropy_value_and_grad(in_place, target, reduction="none",
                                                  out=in_place)
            np.testing.assert_array_equal(in_place, grad)
            _, lse = fastloss.cross_entropy(logits, target, reduction="none", return_lse=True)
            backward = fastloss.cross_entropy_grad(logits, target, reduction="none", lse=lse)
            assert_rows_within_contract(backward, ref, dtype, f"{path} from lse")
            fresh = fastloss.cross_entropy_grad(logits, target, reduction="none")
            assert_rows_within_contract(fresh, ref, dtype, f"{path} grad")
            stats = fastloss.cross_entropy_merge_stats([
                fastloss.cross_entropy_block_stats(logits[:, a:b], target, class_offset=a,
                                                   num_classes=n_classes)
                for a, b in blocks])
            for a, b in blocks:
                block = fastloss.cross_entropy_grad(logits[:, a:b], target, class_offset=a,
                                                    stats=stats, reduction="sum")
                # (each block holds one of the row's two nonzero entries, -e or e: its
                # own max|ref| is the whole row's)
                assert_rows_within_contract(block, ref[:, a:b], dtype, f"{path} block {a}:{b}")
