"""Cross-entropy over blocks of classes: block statistics, their merge, the loss and the
gradient from merged statistics (docs/block_statistics.rst), against fastloss.reference
and against cross_entropy on the whole rows."""
import itertools

import numpy as np
import pytest

import fastloss
from fastloss import reference
from loss_specs import DTYPES, assert_close_contract, bitwise_equal, call_unmodified, dtype_id
from simd_paths import simd_paths

FIELDS = fastloss.CROSS_ENTROPY_STATS_FIELDS
N_ROWS, N_CLASSES = 11, 150
# block boundaries: one block, uneven ones, width-1 blocks, blocks of the kernel's chunk
SPLITS = {
    "one": [0, N_CLASSES],
    "two_uneven": [0, 7, N_CLASSES],
    "four": [0, 1, 40, 41, N_CLASSES],
    "many": [0, 3, 10, 30, 64, 65, 100, 149, N_CLASSES],
}
OPTIONS = [dict(weighted=w, label_smoothing=e, softcap=s)
           for w, e, s in itertools.product((False, True), (0.0, 0.2), (None, 4.0))]


def option_id(option):
    return "-".join(f"{k}={v}" for k, v in option.items())


def make(dtype, soft, weighted, rng, n_rows=N_ROWS, n_classes=N_CLASSES):
    logits = (rng.standard_normal((n_rows, n_classes)) * 3.0).astype(dtype)
    logits[0, 5] = 30.0  # a row whose softmax is nearly one class
    if soft:
        target = rng.random((n_rows, n_classes))
        target = (target / target.sum(-1, keepdims=True)).astype(dtype)
    else:
        target = rng.integers(0, n_classes, n_rows)
        target[[1, 6]] = -100  # ignored rows
        target[2], target[3] = 0, n_classes - 1
    weight = rng.uniform(0.25, 2.0, n_classes).astype(dtype) if weighted else None
    return logits, target, weight


def block_target(target, a, b):
    return target[..., a:b] if target.dtype.kind == "f" else target


def block_weight(weight, a, b):
    return None if weight is None else weight[a:b]


def all_stats(module, logits, target, weight, bounds, **options):
    return [module.cross_entropy_block_stats(
        logits[..., a:b], block_target(target, a, b), class_offset=a,
        num_classes=logits.shape[-1], weight=block_weight(weight, a, b), **options)
        for a, b in zip(bounds[:-1], bounds[1:])]


def block_grads(logits, target, weight, bounds, stats, grad_output, **options):
    return np.concatenate([fastloss.cross_entropy_grad(
        logits[..., a:b], block_target(target, a, b), grad_output, class_offset=a,
        stats=stats, weight=block_weight(weight, a, b), **options)
        for a, b in zip(bounds[:-1], bounds[1:])], axis=-1)


def upstream(reduction, n_rows=N_ROWS):
    return np.linspace(0.5, 1.5, n_rows) if reduction == "none" else 0.75


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
@pytest.mark.parametrize("option", OPTIONS, ids=option_id)
def test_block_stats_match_reference(dtype, soft, option, rng):
    logits, target, weight = make(dtype, soft, option["weighted"], rng)
    options = dict(label_smoothing=option["label_smoothing"], softcap=option["softcap"])
    bounds = SPLITS["four"]
    fast = all_stats(fastloss, logits, target, weight, bounds, **options)
    ref = all_stats(reference, logits, target, weight, bounds, **options)
    for k, (f, r) in enumerate(zip(fast, ref)):
        assert f.dtype == np.float64 and f.shape == (len(FIELDS), N_ROWS)
        for index, name in enumerate(FIELDS):
            assert_close_contract(f[index], r[index], dtype, "loss",
                                  what=f"block {k} field {name}")
        for name in ("target_count", "classes", "target_weight"):
            assert np.array_equal(f[FIELDS.index(name)], r[FIELDS.index(name)]), name


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
@pytest.mark.parametrize("option", OPTIONS, ids=option_id)
@pytest.mark.parametrize("split", sorted(SPLITS))
def test_loss_and_grad_from_merged_stats(dtype, soft, option, split, rng):
    """Every option, every reduction, k = 1..8 uneven blocks (some without the target):
    the loss and the gradient assembled from the blocks are the reference's on the whole
    rows within the contract."""
    logits, target, weight = make(dtype, soft, option["weighted"], rng)
    options = dict(label_smoothing=option["label_smoothing"], softcap=option["softcap"])
    merged = fastloss.cross_entropy_merge_stats(
        all_stats(fastloss, logits, target, weight, SPLITS[split], **options))
    hard = None if soft else target
    for reduction, z_loss in itertools.product(("mean", "sum", "none"), (0.0, 1e-3)):
        full = dict(options, reduction=reduction, z_loss=z_loss)
        loss, lse = fastloss.cross_entropy_from_stats(
            merged, hard, return_lse=True, label_smoothing=options["label_smoothing"],
            reduction=reduction, z_loss=z_loss)
        ref_loss, ref_lse = reference.cross_entropy(logits, target, weight=weight,
                                                    return_lse=True, **full)
        assert_close_contract(loss, ref_loss, dtype, "loss", what=f"loss {reduction}")
        assert_close_contract(lse, ref_lse, dtype, "loss", what="lse")
        go = upstream(reduction)
        grad = block_grads(logits, target, weight, SPLITS[split], merged, go, **full)
        assert grad.dtype == logits.dtype
        ref_grad = reference.cross_entropy_grad(logits, target, go, weight=weight, **full)
        assert_close_contract(grad, ref_grad, dtype, "grad", what=f"grad {reduction}")


@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
@pytest.mark.parametrize("option", OPTIONS, ids=option_id)
def test_reference_blocks_equal_reference_rows(soft, option, rng):
    """The reference's own block functions against its whole-row cross-entropy."""
    logits, target, weight = make(np.float64, soft, option["weighted"], rng)
    options = dict(label_smoothing=option["label_smoothing"], softcap=option["softcap"])
    merged = reference.cross_entropy_merge_stats(
        all_stats(reference, logits, target, weight, SPLITS["many"], **options))
    for reduction in ("mean", "sum", "none"):
        full = dict(options, reduction=reduction, z_loss=1e-3)
        loss = reference.cross_entropy_from_stats(
            merged, None if soft else target, label_smoothing=options["label_smoothing"],
            reduction=reduction, z_loss=1e-3)
        np.testing.assert_allclose(
            loss, reference.cross_entropy(logits, target, weight=weight, **full), rtol=1e-13)
        go = upstream(reduction)
        grads = [reference.cross_entropy_grad(
            logits[:, a:b], block_target(target, a, b), go, class_offset=a, stats=merged,
            weight=block_weight(weight, a, b), **full)
            for a, b in zip(SPLITS["many"][:-1], SPLITS["many"][1:])]
        np.testing.assert_allclose(
            np.concatenate(grads, -1),
            reference.cross_entropy_grad(logits, target, go, weight=weight, **full),
            rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_one_block_is_cross_entropy_itself(soft, label_smoothing, rng):
    """cross_entropy runs on the engine: one block's statistics give its loss and lse to
    the bit (float64, where neither rounds to the storage type; on the baseline SIMD path,
    whose coefficient code the loss from statistics shares: the others may contract
    products into FMAs)."""
    from fastloss import _kernels

    logits, target, weight = make(np.float64, soft, True, rng, n_classes=5000)
    saved = _kernels.build_info()["simd_path"]
    _kernels.set_simd_path("baseline")
    try:
        stats = fastloss.cross_entropy_block_stats(logits, target, weight=weight,
                                                   label_smoothing=label_smoothing)
        check_one_block(logits, target, weight, soft, label_smoothing, stats)
    finally:
        _kernels.set_simd_path(saved)


def check_one_block(logits, target, weight, soft, label_smoothing, stats):
    for reduction in ("mean", "sum", "none"):
        options = dict(reduction=reduction, label_smoothing=label_smoothing, z_loss=1e-3)
        loss, lse = fastloss.cross_entropy_from_stats(stats, None if soft else target,
                                                      return_lse=True, **options)
        direct, direct_lse = fastloss.cross_entropy(logits, target, weight=weight,
                                                    return_lse=True, **options)
        assert bitwise_equal(np.float64(loss), np.float64(direct)), reduction
        assert bitwise_equal(lse, direct_lse)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
def test_thread_count_does_not_change_a_bit(dtype, soft, rng):
    logits, target, weight = make(dtype, soft, True, rng, n_rows=64, n_classes=3000)
    bounds = [0, 1000, 2999, 3000]
    results = []
    for threads in (1, 2, 3):
        stats = all_stats(fastloss, logits, target, weight, bounds, label_smoothing=0.1,
                          num_threads=threads)
        merged = fastloss.cross_entropy_merge_stats(stats)
        grad = np.concatenate([fastloss.cross_entropy_grad(
            logits[:, a:b], block_target(target, a, b), class_offset=a, stats=merged,
            weight=weight[a:b], label_smoothing=0.1, num_threads=threads)
            for a, b in zip(bounds[:-1], bounds[1:])], axis=-1)
        results.append((stats, merged, grad))
    for stats, merged, grad in results[1:]:
        assert all(bitwise_equal(a, b) for a, b in zip(stats, results[0][0]))
        assert bitwise_equal(merged, results[0][1])
        assert bitwise_equal(grad, results[0][2])


def test_merge_order_and_grouping(rng):
    """The merge is associative and commutative up to rounding, and the distributed
    recipe (rebase onto the common max, then add) is the merge."""
    logits, target, weight = make(np.float64, False, True, rng)
    blocks = all_stats(fastloss, logits, target, weight, SPLITS["many"], label_smoothing=0.1)
    merged = fastloss.cross_entropy_merge_stats(blocks)
    regrouped = fastloss.cross_entropy_merge_stats(
        [fastloss.cross_entropy_merge_stats(blocks[:3]),
         fastloss.cross_entropy_merge_stats(blocks[3:])])
    reversed_ = fastloss.cross_entropy_merge_stats(blocks[::-1])
    new_max = np.max([b[0] for b in blocks], axis=0)
    summed = sum(fastloss.cross_entropy_rebase_stats(b, new_max) for b in blocks)
    summed[0] = new_max
    for other in (regrouped, reversed_, summed):
        np.testing.assert_allclose(other, merged, rtol=1e-14, atol=0)
    assert bitwise_equal(fastloss.cross_entropy_merge_stats(blocks), merged)
    ref = reference.cross_entropy_merge_stats(
        all_stats(reference, logits, target, weight, SPLITS["many"], label_smoothing=0.1))
    np.testing.assert_allclose(merged, ref, rtol=1e-13, atol=0)


def test_rebase_matches_reference(rng):
    logits, target, weight = make(np.float64, False, True, rng)
    stats = fastloss.cross_entropy_block_stats(logits[:, :20], target, num_classes=N_CLASSES,
                                               weight=weight[:20], label_smoothing=0.3)
    new_max = stats[0] + rng.uniform(0.0, 5.0, N_ROWS) * (stats[0] > -np.inf)
    np.testing.assert_allclose(fastloss.cross_entropy_rebase_stats(stats, new_max),
                               reference.cross_entropy_rebase_stats(stats, new_max),
                               rtol=1e-14, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_ignored_rows_and_blocks_without_the_target(dtype, rng):
    logits, target, _ = make(dtype, False, False, rng)
    target[:] = 100
    target[4] = -100
    stats = fastloss.cross_entropy_block_stats(logits[:, :50], target, num_classes=N_CLASSES)
    field = dict(zip(FIELDS, stats))
    assert np.all(field["target_count"] == 0) and np.all(field["target_logit"] == 0)
    assert np.all(field["target_weight"] == 0) and np.all(field["classes"] == 50)
    assert field["max"][4] == -np.inf and field["sum"][4] == 0.0
    grad = fastloss.cross_entropy_grad(
        logits[:, :50], target, class_offset=0,
        stats=fastloss.cross_entropy_merge_stats(
            all_stats(fastloss, logits, target, None, [0, 50, N_CLASSES])))
    assert np.all(grad[4] == 0)
    assert np.all(grad[np.arange(N_ROWS) != 4] > 0)  # no target here: only softmax terms


def test_masked_blocks_and_nan(rng):
    """A block of -inf logits (masked classes) and a NaN logit behave as in cross_entropy."""
    logits, target, _ = make(np.float64, False, False, rng)
    target[:] = 60
    logits[:, :50] = -np.inf
    logits[7, 100] = np.nan
    for eps in (0.0, 0.1):
        merged = fastloss.cross_entropy_merge_stats(
            all_stats(fastloss, logits, target, None, [0, 50, N_CLASSES], label_smoothing=eps))
        loss = fastloss.cross_entropy_from_stats(merged, target, reduction="none",
                                                 label_smoothing=eps)
        np.testing.assert_array_equal(
            np.isnan(loss), np.isnan(reference.cross_entropy(
                logits, target, reduction="none", label_smoothing=eps)))
        ref = reference.cross_entropy(logits, target, reduction="none", label_smoothing=eps)
        np.testing.assert_allclose(loss, ref, rtol=1e-12)


def test_grad_into_out_and_in_place(rng):
    logits, target, weight = make(np.float32, False, True, rng)
    bounds = [0, 60, N_CLASSES]
    merged = fastloss.cross_entropy_merge_stats(
        all_stats(fastloss, logits, target, weight, bounds, softcap=3.0))
    expected = block_grads(logits, target, weight, bounds, merged, 1.0, softcap=3.0)
    out = np.empty_like(logits)
    for a, b in zip(bounds[:-1], bounds[1:]):
        result = call_unmodified(fastloss.cross_entropy_grad, logits[:, a:b], target,
                                 class_offset=a, stats=merged, weight=weight[a:b],
                                 softcap=3.0, out=out[:, a:b])
        assert np.shares_memory(result, out)
    assert bitwise_equal(out, expected)
    in_place = logits.copy()
    for a, b in zip(bounds[:-1], bounds[1:]):
        block = np.ascontiguousarray(in_place[:, a:b])
        fastloss.cross_entropy_grad(block, target, class_offset=a, stats=merged,
                                    weight=weight[a:b], softcap=3.0, out=block)
        in_place[:, a:b] = block
    assert bitwise_equal(in_place, expected)


def test_batch_shape_and_empty_batch(rng):
    logits = rng.standard_normal((2, 3, 40))
    target = rng.integers(0, 40, (2, 3))
    merged = fastloss.cross_entropy_merge_stats(
        all_stats(fastloss, logits, target, None, [0, 13, 40]))
    assert merged.shape == (len(FIELDS), 2, 3)
    loss = fastloss.cross_entropy_from_stats(merged, target, reduction="none")
    assert loss.shape == (2, 3)
    np.testing.assert_allclose(loss, reference.cross_entropy(logits, target, reduction="none"),
                               rtol=1e-12)
    empty = fastloss.cross_entropy_block_stats(np.zeros((0, 5)), np.zeros(0, np.int64))
    assert empty.shape == (len(FIELDS), 0)
    assert np.isnan(fastloss.cross_entropy_from_stats(empty, np.zeros(0, np.int64)))


X = np.linspace(-2.0, 2.0, 40).reshape(4, 10)
T = np.array([0, 3, 9, -100])


def _merged(label_smoothing=0.0):
    return fastloss.cross_entropy_merge_stats(
        [fastloss.cross_entropy_block_stats(X[:, a:b], T, class_offset=a, num_classes=10,
                                            label_smoothing=label_smoothing)
         for a, b in ((0, 4), (4, 10))])


@pytest.mark.parametrize("call, error, message", [
    (lambda: fastloss.cross_entropy_block_stats(X, T, class_offset=-1), ValueError,
     "class_offset: expected an integer >= 0"),
    (lambda: fastloss.cross_entropy_block_stats(X, T, class_offset=1.5), TypeError,
     "class_offset: expected an integer"),
    (lambda: fastloss.cross_entropy_block_stats(X[:, :4], T, class_offset=8, num_classes=10),
     ValueError, "class_offset: the block [8, 12) ends past num_classes=10"),
    (lambda: fastloss.cross_entropy_block_stats(X, T, num_classes=0), ValueError,
     "num_classes: expected an integer >= 1"),
    (lambda: fastloss.cross_entropy_block_stats(X[:, :4], T, weight=np.ones(10)), ValueError,
     "weight: expected the block's shape (4,)"),
    (lambda: fastloss.cross_entropy_block_stats(X[:, :4], T, num_classes=9), ValueError,
     "target: value 9 at position (2,) is out of range for 9 classes"),
    (lambda: fastloss.cross_entropy_block_stats(X[:, :4], np.ones((4, 10)), num_classes=10),
     ValueError, "target: expected the block's probabilities of shape (4, 4)"),
    (lambda: fastloss.cross_entropy_block_stats(X.astype(np.int64), T), TypeError,
     "logits_block: expected a float32 or float64 array"),
    (lambda: fastloss.cross_entropy_merge_stats([]), ValueError,
     "stats_sequence: expected at least one"),
    (lambda: fastloss.cross_entropy_merge_stats(_merged()), TypeError,
     "stats_sequence: expected a sequence of statistics arrays, got one array"),
    (lambda: fastloss.cross_entropy_merge_stats([_merged(), _merged()[:, :2]]), ValueError,
     "stats_sequence[1]: shape (9, 2) differs"),
    (lambda: fastloss.cross_entropy_merge_stats([np.zeros((8, 4))]), ValueError,
     "stats_sequence[0]: expected shape (9, ...)"),
    (lambda: fastloss.cross_entropy_rebase_stats(_merged(), _merged()[0] - 1.0), ValueError,
     "new_max: "),
    (lambda: fastloss.cross_entropy_rebase_stats(_merged(), np.zeros(3)), ValueError,
     "new_max: expected a shape that broadcasts to (4,)"),
    (lambda: fastloss.cross_entropy_from_stats(_merged(), T[:3]), ValueError,
     "target: expected class indices of shape (4,)"),
    (lambda: fastloss.cross_entropy_from_stats(_merged(), None), ValueError,
     "target: the statistics are of class-index targets"),
    (lambda: fastloss.cross_entropy_from_stats(
        fastloss.cross_entropy_block_stats(X[:, :4], T, num_classes=10), T), ValueError,
     "stats: the target 9 of row (2,) lies in 0 of the merged blocks"),
    (lambda: fastloss.cross_entropy_from_stats(
        fastloss.cross_entropy_merge_stats([_merged(), _merged()]), T), ValueError,
     "stats: the target 0 of row (0,) lies in 2 of the merged blocks"),
    (lambda: fastloss.cross_entropy_from_stats(_merged(), T, reduction="avg"), ValueError,
     "reduction: "),
    (lambda: fastloss.cross_entropy_grad(X[:, 4:], T, class_offset=4), ValueError,
     "class_offset: a block's gradient needs stats="),
    (lambda: fastloss.cross_entropy_grad(X[:, 4:], T, class_offset=5, stats=_merged()),
     ValueError, "class_offset: the block [5, 11) ends past the 10 classes of stats"),
    (lambda: fastloss.cross_entropy_grad(X[:, 4:], T, class_offset=4, stats=_merged()[:, :3]),
     ValueError, "stats: expected shape (9, 4)"),
    (lambda: fastloss.cross_entropy_grad(X[:, 4:], T, class_offset=4, stats=_merged(),
                                         lse=np.zeros(4)), ValueError, "lse: does not combine"),
    (lambda: fastloss.cross_entropy_grad(X[:, 4:], T, class_offset=4, stats=_merged(),
                                         weight=np.ones(10)), ValueError,
     "weight: expected shape (6,) (the block of classes)"),
    (lambda: fastloss.cross_entropy_grad(X[:, 4:], np.ones((4, 6)), class_offset=4,
                                         stats=_merged()), ValueError,
     "target: the statistics are of class-index targets"),
    # statistics without the smoothing sums, asked for label smoothing (and the other way)
    (lambda: fastloss.cross_entropy_from_stats(_merged(), T, label_smoothing=0.1),
     ValueError, "label_smoothing: 0.1 here, but the statistics were computed without"),
    (lambda: fastloss.cross_entropy_from_stats(_merged(0.1), T), ValueError,
     "label_smoothing: 0 here, but the statistics were computed with label smoothing"),
    (lambda: fastloss.cross_entropy_grad(X[:, 4:], T, class_offset=4, stats=_merged(),
                                         label_smoothing=0.1), ValueError,
     "label_smoothing: 0.1 here, but the statistics were computed without"),
    (lambda: fastloss.cross_entropy_grad(X[:, 4:], T, class_offset=4, stats=_merged(0.1)),
     ValueError, "label_smoothing: 0 here, but the statistics were computed with"),
    # found by hunt10: the check was skipped for statistics that are not a float64 ndarray
    # (float32 after a float32 all-reduce, a list) and for a 0-d array label_smoothing,
    # which the kernels take all the same
    (lambda: fastloss.cross_entropy_from_stats(_merged().astype(np.float32), T,
                                               label_smoothing=0.1),
     ValueError, "label_smoothing: 0.1 here, but the statistics were computed without"),
    (lambda: fastloss.cross_entropy_from_stats(_merged().tolist(), T, label_smoothing=0.1),
     ValueError, "label_smoothing: 0.1 here, but the statistics were computed without"),
    (lambda: fastloss.cross_entropy_from_stats(_merged(), T,
                                               label_smoothing=np.array(0.1)),
     ValueError, "label_smoothing: 0.1 here, but the statistics were computed without"),
    (lambda: fastloss.cross_entropy_grad(X[:, 4:], T, class_offset=4,
                                         stats=_merged(0.1).astype(np.float32)),
     ValueError, "label_smoothing: 0 here, but the statistics were computed with"),
    # found by hunt10: a 'classes' field of inf or past int64 raised OverflowError
    (lambda: fastloss.cross_entropy_from_stats(_with_classes(np.inf), T), ValueError,
     "stats: the rows' 'classes' differ or are not counts"),
    (lambda: fastloss.cross_entropy_from_stats(_with_classes(1e30), T), ValueError,
     "stats: the rows' 'classes' differ or are not counts"),
    (lambda: fastloss.cross_entropy_grad(X[:, 4:], T, class_offset=4,
                                         stats=_with_classes(1e30)), ValueError,
     "stats: the rows' 'classes' differ or are not counts"),
])
def test_bad_input_names_the_argument(call, error, message):
    with pytest.raises(error) as raised:
        call()
    assert str(raised.value).startswith(message), str(raised.value)


def _with_classes(count):
    """Merged statistics whose 'classes' field is ``count`` in every row."""
    stats = _merged().copy()
    stats[fastloss.CROSS_ENTROPY_STATS_FIELDS.index("classes")] = count
    return stats


def test_uint64_targets_above_int64_are_not_ignore_index():
    # Found by hunt10: cross_entropy_from_stats cast a uint64 target of 2**64 - 100 to
    # int64 as -100, the default ignore_index, and left its row out of the loss (the
    # reference counts it: no int64 equals it). Only compared with ignore_index here.
    counted = np.array([0, 3, 9, 5])
    stats = fastloss.cross_entropy_block_stats(X, counted)
    target = counted.astype(np.uint64)
    target[1] = 2**64 - 100
    got = fastloss.cross_entropy_from_stats(stats, target, reduction="none")
    expected = reference.cross_entropy_from_stats(stats, target, reduction="none")
    assert_close_contract(got, expected, np.float64, "loss")
    assert got[1] == fastloss.cross_entropy_from_stats(stats, counted, reduction="none")[1] > 0
    assert target[1] == 2**64 - 100


def test_a_uint64_target_in_no_block_is_named_by_its_own_value():
    # Found by hunt13: a uint64 target above 2**63 - 1 of a row whose statistics count no
    # target was reported as "the target 0 of row (1,)" (the value it is compared as).
    stats = fastloss.cross_entropy_block_stats(X, np.array([0, -100, 9, 5]))
    target = np.array([0, 2**64 - 100, 9, 5], np.uint64)
    with pytest.raises(ValueError, match=r"^stats: the target 18446744073709551516 of "
                                         r"row \(1,\) lies in 0 of the merged blocks"):
        fastloss.cross_entropy_from_stats(stats, target)


def test_smoothing_check_passes_the_matching_statistics():
    """The same label_smoothing on both sides gives cross_entropy's loss and gradient, and
    rows whose target weight is 0 (all their classes weighted 0) do not trip the check."""
    for eps in (0.0, 0.1):
        loss = fastloss.cross_entropy_from_stats(_merged(eps), T, label_smoothing=eps)
        assert loss == pytest.approx(fastloss.cross_entropy(X, T, label_smoothing=eps),
                                     rel=1e-14)
        grad = fastloss.cross_entropy_grad(X[:, 4:], T, class_offset=4, stats=_merged(eps),
                                           label_smoothing=eps)
        whole = fastloss.cross_entropy_grad(X, T, label_smoothing=eps)
        np.testing.assert_allclose(grad, whole[:, 4:], rtol=1e-13, atol=1e-16)
    weight = np.zeros(10)
    stats = fastloss.cross_entropy_block_stats(X, T, weight=weight, label_smoothing=0.1)
    assert fastloss.cross_entropy_from_stats(stats, T, label_smoothing=0.1,
                                             reduction="sum") == 0.0
    np.testing.assert_array_equal(
        fastloss.cross_entropy_from_stats(stats, T, label_smoothing=0.1, reduction="none"),
        fastloss.cross_entropy(X, T, weight=weight, label_smoothing=0.1, reduction="none"))



# ----------------------------------------------------------------------------------------
# Prefetched rows.  The forward prefetches the rows ahead of those it reads when they are
# not contiguous in memory (a block's rows, views of wider logits) or short, in parts
# spread over each sub-chunk (CE_PREFETCH_*, csrc/cross_entropy_internal.h), and leaves
# long contiguous rows to the hardware: each row's results must be the same bits either
# way, whatever the rows beside it, up to the last row of each thread's range.
# ----------------------------------------------------------------------------------------

#: Rows of more than 64 KiB (CE_PREFETCH_DISTANCE): not prefetched when contiguous.
LONG_WIDTH = {np.float32: 16400, np.float64: 8200}
PREFETCH_OPTIONS = [dict(weighted=False, label_smoothing=0.0, soft=False),
                    dict(weighted=True, label_smoothing=0.0, soft=False),
                    dict(weighted=True, label_smoothing=0.2, soft=False),
                    dict(weighted=True, label_smoothing=0.0, soft=True)]


def strided_inputs(dtype, option, n_rows, width, rng, pad=5):
    """A block of `width` classes, columns [pad, pad + width) of wider logits (a strided
    view), with its target, weight and the options of cross_entropy_block_stats; every
    third row ignored (hard targets), and targets inside and outside the block."""
    n_classes = width + 2 * pad
    wide = (rng.standard_normal((n_rows, n_classes)) * 3.0).astype(dtype)
    wide[0, pad] = 30.0  # a row whose softmax is nearly one class
    block = wide[:, pad:pad + width]
    if option["soft"]:
        target = rng.random((n_rows, width))
        target = (target / target.sum(-1, keepdims=True)).astype(dtype)
    else:
        target = rng.integers(0, n_classes, n_rows)
        target[1::3] = -100
    weight = rng.uniform(0.25, 2.0, width).astype(dtype) if option["weighted"] else None
    options = dict(class_offset=pad, num_classes=n_classes, weight=weight,
                   label_smoothing=option["label_smoothing"])
    return block, target, options


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("option", PREFETCH_OPTIONS, ids=option_id)
def test_prefetched_rows_equal_rows_not_prefetched(dtype, option, rng):
    """A strided block of long rows (prefetched) against its contiguous copy (not
    prefetched): the same statistics, and cross_entropy the same per-row loss and lse,
    to the bit, on every SIMD path."""
    block, target, options = strided_inputs(dtype, option, 7, LONG_WIDTH[dtype], rng)
    assert not block.flags.c_contiguous
    copy = np.ascontiguousarray(block)
    # the whole rows' forward on the same rows: hard targets within the block
    hard = target if option["soft"] else np.where(target == -100, -100, target % block.shape[1])
    whole_options = dict(weight=options["weight"], label_smoothing=options["label_smoothing"],
                         reduction="none", return_lse=True)
    with simd_paths() as paths:
        for path in paths:
            strided = call_unmodified(fastloss.cross_entropy_block_stats, block, target,
                                      **options)
            alone = fastloss.cross_entropy_block_stats(copy, target, **options)
            assert bitwise_equal(strided, alone), path
            loss, lse = call_unmodified(fastloss.cross_entropy, block, hard, **whole_options)
            loss_alone, lse_alone = fastloss.cross_entropy(copy, hard, **whole_options)
            assert bitwise_equal(loss, loss_alone) and bitwise_equal(lse, lse_alone), path


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("option", PREFETCH_OPTIONS, ids=option_id)
@pytest.mark.parametrize("width", [1, 3, 64, 513, 3141])
def test_prefetched_rows_equal_each_row_alone(dtype, option, width, rng):
    """Blocks of 1 to 3141 classes of 1 to 9 rows (every third row ignored): each row's
    statistics are those of the row alone (no row ahead to prefetch), whatever the rows
    beside it and the threads, and within the contract of the reference."""
    with simd_paths() as paths:
        for path in paths:
            for n_rows in (1, 2, 3, 4, 5, 7, 9):
                block, target, options = strided_inputs(dtype, option, n_rows, width, rng)
                alone = np.stack([fastloss.cross_entropy_block_stats(
                    block[i:i + 1], target[i:i + 1], **options)[:, 0]
                    for i in range(n_rows)], axis=1)
                for threads in (1, 2, 3):
                    together = fastloss.cross_entropy_block_stats(block, target,
                                                                  num_threads=threads, **options)
                    assert bitwise_equal(together, alone), (path, n_rows, threads)
                ref = reference.cross_entropy_block_stats(block, target, **options)
                for index, name in enumerate(FIELDS):
                    assert_close_contract(alone[index], ref[index], dtype, "loss",
                                          what=f"{path} {n_rows} rows: {name}")
