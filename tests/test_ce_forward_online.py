"""The forward's single read of a row (ce_row_stats_online in
csrc/cross_entropy_row_body.h): cross_entropy without a gradient, and the block
statistics, take a row in sub-chunks of 512 classes under a running maximum, rebasing
the sums when it grows, and prefetch strided or short rows ahead.  These rows span many
sub-chunks, with the maximum growing in every one of them, far ahead, in the last one,
behind -inf sub-chunks, or NaN, and are checked against fastloss.reference (the
accuracy contract), across thread counts (bit for bit) and between strided views and
contiguous copies (the prefetch must not change a bit)."""
import numpy as np
import pytest

import fastloss
from fastloss import reference
from loss_specs import DTYPES, assert_close_contract, bitwise_equal, dtype_id

SUB_CHUNK = 512  # FASTLOSS_CE_ONLINE_CHUNK
WIDTHS = [SUB_CHUNK - 1, SUB_CHUNK, SUB_CHUNK + 1, 3 * SUB_CHUNK + 69, 5000]


def ordered_rows(rng, n_classes, dtype):
    """Rows whose maximum grows in every sub-chunk (ascending), never (descending), in
    the last sub-chunk only, by huge steps, and rows of random logits."""
    ramp = np.linspace(-20.0, 20.0, n_classes)
    rows = [ramp, ramp[::-1], rng.standard_normal(n_classes) * 3.0,
            np.where(np.arange(n_classes) == n_classes - 1, 40.0, ramp * 0.1),
            np.linspace(-1e4, 1e4, n_classes),            # rebase factors underflow to 0
            1e4 - rng.uniform(0, 5, n_classes),            # close together, far from zero
            rng.standard_normal(n_classes) * 30.0]
    return np.array(rows, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("n_classes", WIDTHS)
@pytest.mark.parametrize("options", [
    pytest.param({}, id="plain"),
    pytest.param({"weight": True}, id="weight"),
    pytest.param({"weight": True, "label_smoothing": 0.1, "z_loss": 1e-4},
                 id="weight+smoothing+z_loss"),
    pytest.param({"softcap": 15.0}, id="softcap"),
])
def test_forward_of_rows_over_many_sub_chunks(dtype, n_classes, options, rng):
    options = dict(options)
    logits = ordered_rows(rng, n_classes, dtype)
    n_rows = logits.shape[0]
    target = rng.integers(0, n_classes, n_rows)
    target[0] = n_classes - 1   # the target in the last sub-chunk, at the max
    target[1] = 0               # ... in the first, at the max
    target[3] = n_classes // 2
    if options.pop("weight", False):
        options["weight"] = rng.uniform(0.25, 2.0, n_classes).astype(dtype)
    per_row, lse = fastloss.cross_entropy(logits, target, reduction="none", return_lse=True,
                                          **options)
    ref_row, ref_lse = reference.cross_entropy(logits, target, reduction="none",
                                               return_lse=True, **options)
    assert_close_contract(per_row, ref_row, dtype, "loss", what="per-row loss")
    assert_close_contract(lse, ref_lse, dtype, "loss", what="lse")
    # the fused call keeps its chunked pass: the same loss within the contract
    fused, _ = fastloss.cross_entropy_value_and_grad(logits, target, reduction="none",
                                                     **options)
    assert_close_contract(per_row, fused, dtype, "loss", what="forward against fused")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
def test_soft_targets_over_many_sub_chunks(dtype, soft, rng):
    n_classes = 3 * SUB_CHUNK + 69
    logits = ordered_rows(rng, n_classes, dtype)
    if soft:
        target = rng.random(logits.shape)
        target = (target / target.sum(-1, keepdims=True)).astype(dtype)
    else:
        target = rng.integers(0, n_classes, logits.shape[0])
    for eps in (0.0, 0.2):
        got = fastloss.cross_entropy(logits, target, reduction="none", label_smoothing=eps)
        ref = reference.cross_entropy(logits, target, reduction="none", label_smoothing=eps)
        assert_close_contract(got, ref, dtype, "loss", what=f"label_smoothing={eps}")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_masked_sub_chunks_and_nan(dtype, rng):
    """-inf sub-chunks before, between and after finite ones; a row all -inf; NaN in a
    late sub-chunk: as the reference (and NaN stays in its own row)."""
    n_classes = 4 * SUB_CHUNK + 7
    logits = (rng.standard_normal((6, n_classes)) * 3.0).astype(dtype)
    logits[0, :2 * SUB_CHUNK] = -np.inf           # the first two sub-chunks masked
    logits[1, SUB_CHUNK:3 * SUB_CHUNK] = -np.inf  # masked in the middle
    logits[2, 3 * SUB_CHUNK:] = -np.inf           # masked at the end
    logits[3] = -np.inf                           # nothing left: NaN, as torch
    logits[4, 3 * SUB_CHUNK + 3] = np.nan
    target = np.array([2 * SUB_CHUNK + 1, 5, 7, 0, 9, 11])
    for eps in (0.0, 0.1):
        got = fastloss.cross_entropy(logits, target, reduction="none", label_smoothing=eps)
        ref = reference.cross_entropy(logits, target, reduction="none", label_smoothing=eps)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        np.testing.assert_array_equal(np.isinf(got), np.isinf(ref))
        finite = np.isfinite(ref)
        assert np.isnan(got[3]) and np.isnan(got[4])
        # masked classes make the smoothing term infinite, as in the reference
        assert finite[[0, 1, 2, 5]].all() if eps == 0.0 else np.isinf(got[[0, 1, 2]]).all()
        assert_close_contract(got[finite], ref[finite], dtype, "loss", what=f"eps={eps}")
        stats = fastloss.cross_entropy_block_stats(logits, target, label_smoothing=eps)
        ref_stats = reference.cross_entropy_block_stats(logits, target, label_smoothing=eps)
        # (the max skips NaN, the reference's does not: the sum carries it)
        np.testing.assert_array_equal(np.isnan(stats[1:]), np.isnan(ref_stats[1:]))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_thread_count_does_not_change_a_bit(dtype, rng):
    n_rows, n_classes = 37, 3 * SUB_CHUNK + 69
    logits = np.concatenate([ordered_rows(rng, n_classes, dtype)] * 5 +
                            [(rng.standard_normal((2, n_classes)) * 4).astype(dtype)])
    target = rng.integers(0, n_classes, n_rows)
    weight = rng.uniform(0.25, 2.0, n_classes).astype(dtype)
    results = []
    for threads in (1, 2, 3, 5):
        loss, lse = fastloss.cross_entropy(logits, target, reduction="none", return_lse=True,
                                           weight=weight, num_threads=threads)
        blocks = [fastloss.cross_entropy_block_stats(
            logits[:, a:b], target, class_offset=a, num_classes=n_classes,
            weight=weight[a:b], num_threads=threads)
            for a, b in ((0, 700), (700, 1601), (1601, n_classes))]
        results.append((loss, lse, blocks))
    for loss, lse, blocks in results[1:]:
        assert bitwise_equal(loss, results[0][0]) and bitwise_equal(lse, results[0][1])
        assert all(bitwise_equal(a, b) for a, b in zip(blocks, results[0][2]))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("width", [SUB_CHUNK + 69, 20000])
def test_strided_blocks_equal_contiguous_copies(dtype, width, rng):
    """A block read as a view of wider rows is prefetched a row ahead; the same block
    copied into contiguous rows is not (when wider than 64 KiB) or is: the statistics
    are the same bits either way, and the one block of whole rows is cross_entropy's
    own forward."""
    n_rows = 9
    logits = (rng.standard_normal((n_rows, width + 300)) * 3.0).astype(dtype)
    logits[2, 100:] = np.linspace(-5, 50, width + 200)  # a growing max in the block
    target = rng.integers(0, width + 300, n_rows)
    view = logits[:, 100:100 + width]
    for threads in (1, 2):
        strided = fastloss.cross_entropy_block_stats(
            view, target, class_offset=100, num_classes=width + 300, num_threads=threads)
        copied = fastloss.cross_entropy_block_stats(
            np.ascontiguousarray(view), target, class_offset=100, num_classes=width + 300,
            num_threads=threads)
        assert bitwise_equal(strided, copied)
    local_target = rng.integers(0, width, n_rows)
    stats = fastloss.cross_entropy_block_stats(view, local_target)
    loss, lse = fastloss.cross_entropy(np.ascontiguousarray(view), local_target,
                                       reduction="none", return_lse=True)
    from_stats, lse_from_stats = fastloss.cross_entropy_from_stats(
        stats, local_target, reduction="none", return_lse=True)
    assert bitwise_equal(lse_from_stats, lse)
    assert_close_contract(from_stats, loss, dtype, "loss", what="loss from the stats")


def test_merge_is_blockwise_and_in_order(rng):
    """The vectorised merge (block by block across rows) gives the bits of merging one
    row at a time in the blocks' order, here recomputed in NumPy with the same
    operations; and a permutation of the blocks gives the same values to rounding."""
    n_classes = 4 * SUB_CHUNK
    logits = ordered_rows(rng, n_classes, np.float64)
    target = rng.integers(0, n_classes, logits.shape[0])
    bounds = [0, 300, 301, 1500, n_classes]
    blocks = [fastloss.cross_entropy_block_stats(
        logits[:, a:b], target, class_offset=a, num_classes=n_classes, label_smoothing=0.1)
        for a, b in zip(bounds[:-1], bounds[1:])]
    merged = fastloss.cross_entropy_merge_stats(blocks)
    ref = reference.cross_entropy_merge_stats(blocks)
    np.testing.assert_allclose(merged, ref, rtol=1e-14, atol=0)
    for order in ([3, 2, 1, 0], [1, 3, 0, 2]):
        np.testing.assert_allclose(
            fastloss.cross_entropy_merge_stats([blocks[k] for k in order]), merged,
            rtol=1e-14, atol=0)
    # the fields merged by a plain sum are that sum, in the blocks' order, bit for bit
    for field in range(4, len(fastloss.CROSS_ENTROPY_STATS_FIELDS)):
        total = np.zeros(logits.shape[0])
        for block in blocks:
            total = total + block[field]
        assert bitwise_equal(merged[field], total)
    loss = fastloss.cross_entropy_from_stats(merged, target, label_smoothing=0.1)
    assert_close_contract(loss, reference.cross_entropy(logits, target, label_smoothing=0.1),
                          np.float64, "loss")
