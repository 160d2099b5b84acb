"""The exp of the half-precision cross-entropy rows, and those rows read two classes at a
time (csrc/fastmath.h: fastloss_expf5; csrc/cross_entropy_row_body.h: CE_PAIRS).

The exp is held to its stated bound densely, on every SIMD path, through
``_kernels.half_exp``; the rows, over every bfloat16 (and many float16) values of a range,
with targets at every kind of position of the pair layout (even, odd, an odd chunk's last
class, chunk boundaries), to the half contract of docs/accuracy.rst: the loss within the
float32 contract, every gradient element the reference rounded to the half type or one
ulp from it, and the float32 gradient within the float32 contract.
"""

import numpy as np
import pytest

import fastloss
from fastloss import _kernels, reference
from loss_specs import assert_close_contract
from simd_paths import simd_paths
from test_half import (BFLOAT16, FLOAT16, HALF_DTYPES, assert_gradient_contract,
                       assert_loss_contract)

#: FASTLOSS_EXPF5_REL_ERROR in csrc/fastmath.h: the relative error callers may assume
EXPF5_REL_ERROR = 2.5e-7
#: fastloss_expf5 keeps every result from float32's smallest normal number up, and
#: flushes those below ln(2**-126) to +0
FLUSH_BELOW = 2.0 ** -126


def float32_range(low, high, stride):
    """Every `stride`-th float32 in [low, high] (low < 0 <= high), by bit pattern, and
    both ends."""
    negative = np.arange(0x80000000, int(np.float32(low).view(np.uint32)) + 1, stride,
                         dtype=np.uint64).astype(np.uint32).view(np.float32)
    positive = np.arange(0, int(np.float32(high).view(np.uint32)) + 1, stride,
                         dtype=np.uint64).astype(np.uint32).view(np.float32)
    return np.concatenate([negative, positive, np.float32([low, high])])


def check_exp(x, got):
    """got = exp(x) within EXPF5_REL_ERROR relative where exp(x) >= FLUSH_BELOW; below,
    +0, or a subnormal product within the relative bound of 2**-126 plus its rounding."""
    exact = np.exp(x.astype(np.float64))
    error = np.abs(got.astype(np.float64) - exact)
    kept = exact >= FLUSH_BELOW
    assert np.all(error[kept] <= EXPF5_REL_ERROR * exact[kept]), (
        f"worst {np.max(error[kept] / exact[kept]):.3g} relative at "
        f"x = {x[kept][np.argmax(error[kept] / exact[kept])]!r}")
    tiny = ~kept
    assert np.all((got[tiny] == 0) | (error[tiny] <= EXPF5_REL_ERROR * FLUSH_BELOW + 2.0 ** -150))


def test_expf5_error_bound_on_every_path():
    # 4.5 million points of [-87.3, 0] (every 251st float), every third float of
    # [-1, -0.25] (where the reduction's n is 0 or -1 and r spans its whole range), and
    # the range's ends
    dense = float32_range(-87.3, 0.0, 251)
    low = int(np.float32(-0.25).view(np.uint32))
    unit = np.arange(low, int(np.float32(-1.0).view(np.uint32)) + 1, 3,
                     dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = np.concatenate([dense, unit])
    positive = float32_range(-87.3, 88.375, 509)
    specials = np.float32([-np.inf, -1e30, -87.3366, -88.0, -103.0, -0.0, 0.0, np.nan])
    ran = 0
    with simd_paths() as paths:
        for _path in paths:
            ran += 1
            check_exp(x, _kernels.half_exp(x, True))
            check_exp(x, _kernels.half_exp(x, False))
            check_exp(positive, _kernels.half_exp(positive, False))
            for nonpositive in (True, False):
                got = _kernels.half_exp(specials, nonpositive)
                np.testing.assert_array_equal(got[:5], 0.0)
                np.testing.assert_array_equal(got[5:7], 1.0)
                assert np.isnan(got[7])
            big = np.float32([88.3761, 88.72284, 89.0, 1e30, np.inf])
            assert np.all(_kernels.half_exp(big, False) == np.inf)
            # an odd length and a misaligned start: the vector loops' scalar tails
            part = x[3:3 + 1001]
            np.testing.assert_array_equal(_kernels.half_exp(part, True),
                                          _kernels.half_exp(part.copy(), True))
    assert ran >= 1


def test_half_exp_argument_errors():
    with pytest.raises(TypeError, match="values"):
        _kernels.half_exp(np.zeros(3, np.float64))
    with pytest.raises(ValueError, match="values"):
        _kernels.half_exp(np.zeros((2, 2), np.float32))


def every_half_value(dtype, low, high):
    """Every finite value of the half type in [low, high], ascending."""
    patterns = np.arange(0, 0x10000, dtype=np.uint32).astype(np.uint16).view(dtype)
    with np.errstate(invalid="ignore"):  # the NaN patterns
        values = patterns.astype(np.float64)
    keep = np.isfinite(values) & (values >= low) & (values <= high)
    return np.unique(patterns[keep].astype(np.float64)).astype(dtype)


def dense_rows(dtype, n_classes, rng):
    """Rows of `n_classes` logits drawing on every value of the half type in a range:
    each row holds a shuffled run of the values below its own maximum (so that the exp
    sees every difference y - max of its row's grid), and some rows a -inf (a masked
    class) beside finite ones."""
    top = [0.0, 8.0, 0.75, -2.0, 30.0, 1.5]
    values = every_half_value(dtype, -96.0, 30.0)
    rows = []
    for i, high in enumerate(top):
        pool = values[values.astype(np.float64) <= high]
        start = (i * 7919) % max(pool.size - n_classes, 1)
        row = np.resize(pool[start:], n_classes) if pool.size > n_classes else np.resize(pool, n_classes)
        row = row.copy()
        rng.shuffle(row)
        row[rng.integers(0, n_classes)] = high  # the row's max itself
        if i % 2:
            row[rng.integers(0, n_classes, 3)] = -np.inf
        rows.append(row)
    return np.stack(rows)


def targets_for(n_rows, n_classes):
    """Targets at every kind of slot: even and odd classes, the first and the last (an
    odd chunk's tail for odd n_classes), either side of the 512- and 2048-class chunk
    boundaries."""
    kinds = [0, 1, n_classes - 1, n_classes - 2, 511, 512, 513, 2047, 2048, 2049,
             n_classes // 2, n_classes // 2 + 1]
    kinds = [k for k in kinds if k < n_classes]
    return np.array([kinds[i % len(kinds)] for i in range(n_rows)], np.int64)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("n_classes", [4099, 2048, 517, 33])
def test_cross_entropy_dense_half_values(dtype, n_classes, rng):
    base = dense_rows(dtype, n_classes, rng)
    logits = np.concatenate([base, base[::-1]])  # each row with two different targets
    target = targets_for(logits.shape[0], n_classes)
    # drop the targets that land on a -inf (their loss is inf, tested elsewhere)
    finite = np.isfinite(logits[np.arange(logits.shape[0]), target].astype(np.float64))
    logits, target = np.ascontiguousarray(logits[finite]), target[finite]
    x64 = logits.astype(np.float64)
    reference_loss = reference.cross_entropy(x64, target, reduction="none")
    reference_grad = reference.cross_entropy_grad(x64, target, 1.0, reduction="none")
    with simd_paths() as paths:
        for _path in paths:
            loss, lse = fastloss.cross_entropy(logits, target, reduction="none",
                                               return_lse=True)
            assert_loss_contract(loss, reference_loss)
            value, grad = fastloss.cross_entropy_value_and_grad(logits, target,
                                                                reduction="none")
            assert_loss_contract(value, reference_loss)
            assert_gradient_contract(grad, reference_grad, dtype)
            backward = fastloss.cross_entropy_grad(logits, target, reduction="none", lse=lse)
            assert_gradient_contract(backward, reference_grad, dtype)
            grad32 = fastloss.cross_entropy_grad(logits, target, reduction="none",
                                                 grad_dtype="float32")
            assert_close_contract(grad32, reference_grad, np.float32, "grad")
            # rows at every alignment: a view with an odd row stride starts every other
            # row at an odd class position in memory
            wide = np.zeros((logits.shape[0], n_classes + 1), dtype)
            wide[:, 1:] = logits
            view = wide[:, 1:]
            loss_view, grad_view = fastloss.cross_entropy_value_and_grad(
                view, target, reduction="none")
            np.testing.assert_array_equal(loss_view, value)
            np.testing.assert_array_equal(grad_view.view(np.uint16), grad.view(np.uint16))
            # in place, with the same bits
            in_place = logits.copy()
            fastloss.cross_entropy_value_and_grad(in_place, target, reduction="none",
                                                  out=in_place)
            np.testing.assert_array_equal(in_place.view(np.uint16), grad.view(np.uint16))


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_cross_entropy_dense_half_values_blocks_and_weights(dtype, rng):
    # class weights and ignored rows (gradient pass with the target weight), and the
    # block statistics (rows read in blocks of classes, each block's exps in pair order)
    n_classes = 3001
    logits = dense_rows(dtype, n_classes, rng)
    target = targets_for(logits.shape[0], n_classes)
    target[np.isinf(logits[np.arange(logits.shape[0]), target].astype(np.float64))] = -100
    target[1] = -100
    weight = rng.uniform(0.2, 2.0, n_classes).astype(np.float32)
    x64 = logits.astype(np.float64)
    reference_loss = reference.cross_entropy(x64, target, weight=weight.astype(np.float64))
    reference_grad = reference.cross_entropy_grad(x64, target, 1.0,
                                                  weight=weight.astype(np.float64))
    value, grad = fastloss.cross_entropy_value_and_grad(logits, target, weight=weight)
    assert_loss_contract(value, reference_loss)
    assert_gradient_contract(grad, reference_grad, dtype)
    blocks = [(0, 1001), (1001, 2002), (2002, n_classes)]
    stats = fastloss.cross_entropy_merge_stats([
        fastloss.cross_entropy_block_stats(logits[:, a:b], target, class_offset=a,
                                           num_classes=n_classes)
        for a, b in blocks])
    plain_grad = reference.cross_entropy_grad(x64, target, 1.0)
    for a, b in blocks:
        block_grad = fastloss.cross_entropy_grad(logits[:, a:b], target, class_offset=a,
                                                 stats=stats)
        assert_gradient_contract(block_grad, plain_grad[:, a:b], dtype)
    assert_loss_contract(fastloss.cross_entropy_from_stats(stats, target),
                         reference.cross_entropy(x64, target))
