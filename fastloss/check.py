"""``fastloss check``: a quick self-test of every kernel against ``fastloss.reference``.

The checks are one table, ``CHECKS``: a name mapped to a callable that takes no
arguments and returns ``(actual, reference, dtype, kind)``:

- ``actual``: what fastloss computed (a Python float or an array);
- ``reference``: what it is compared with (the float64 reference, or, for
  ``kind="bitwise"``, the same computation under other settings);
- ``dtype``: the dtype of the inputs ``actual`` was computed from;
- ``kind``: ``"loss"`` or ``"grad"`` (the accuracy contract for that dtype, in
  docs/accuracy.rst), or ``"bitwise"`` (same dtype, shape and bytes).

A loss family adds its checks by adding rows (see ``_add_cross_entropy_checks``
and ``_add_elementwise_checks``).
Inputs are small, so the whole table runs in a few seconds; the exhaustive
versions of these checks are the test suite's job.
"""
import copy
import dataclasses
import functools
import math
import sys
import time
import zlib

import numpy as np

import fastloss
from fastloss import _registry, reference
from fastloss._contract import CONTRACT, bound as contract_bound

__all__ = ["CHECKS", "CheckResult", "TOLERANCES", "judge", "main", "run_checks"]


# The accuracy contract (docs/accuracy.rst) is fastloss._contract.CONTRACT, the bounds the
# test suite holds every result to as well.
TOLERANCES = CONTRACT


@dataclasses.dataclass
class CheckResult:
    name: str
    passed: bool
    max_error: float      # max |actual - reference| (nan when the check raised)
    bound_fraction: float  # max over elements of |error| / bound (<= 1 passes)
    message: str = ""


def judge(name, actual, ref, dtype, kind):
    """Compare ``actual`` with ``ref`` as ``kind`` says; return a CheckResult."""
    dtype = np.dtype(dtype)
    actual_array = np.asarray(actual)
    ref_array = np.asarray(ref)
    if actual_array.shape != ref_array.shape:
        return CheckResult(name, False, math.nan, math.nan,
                           f"shape {actual_array.shape} != reference {ref_array.shape}")
    if kind == "bitwise":
        same = (actual_array.dtype == ref_array.dtype
                and actual_array.tobytes() == ref_array.tobytes())
        error = _max_abs_difference(actual_array, ref_array)
        return CheckResult(name, same, error, 0.0 if same else math.inf,
                           "bit-identical" if same else "results differ in their bits")
    if (dtype, kind) not in TOLERANCES:
        raise ValueError(f"{name}: no tolerance for dtype {dtype} and kind {kind!r}")
    # Results have the input's dtype: arrays of it, or Python floats holding a value of it.
    if isinstance(actual, np.ndarray):
        if actual.dtype != dtype:
            return CheckResult(name, False, math.nan, math.nan,
                               f"result dtype {actual.dtype}, expected {dtype}")
    elif not isinstance(actual, float):
        return CheckResult(name, False, math.nan, math.nan,
                           f"result is {type(actual).__name__}, expected float or ndarray")
    rule = TOLERANCES[(dtype, kind)]
    actual64 = actual_array.astype(np.float64)
    ref64 = ref_array.astype(np.float64)
    if not (np.isfinite(actual64).all() and np.isfinite(ref64).all()):
        # The self-test uses finite inputs with finite results; anything else is a bug.
        return CheckResult(name, False, math.nan, math.nan, "non-finite values")
    if ref64.size == 0:
        return CheckResult(name, True, 0.0, 0.0)
    error = np.abs(actual64 - ref64)
    bound = contract_bound(ref64, rule)
    exceeds = error > bound
    with np.errstate(divide="ignore", invalid="ignore"):
        fraction = np.where(bound > 0, error / bound, np.where(error > 0, np.inf, 0.0))
    return CheckResult(name, not exceeds.any(), float(error.max()), float(fraction.max()),
                       f"{int(exceeds.sum())} of {error.size} values exceed the bound"
                       if exceeds.any() else "")


def _max_abs_difference(a, b):
    try:
        with np.errstate(invalid="ignore", over="ignore"):
            difference = np.abs(a.astype(np.float64) - b.astype(np.float64))
        return float(np.nanmax(difference)) if difference.size else 0.0
    except (TypeError, ValueError):
        return math.nan


# ----------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------

CHECKS = {}


def add_check(name, function):
    """Add a row: ``function()`` returns ``(actual, reference, dtype, kind)``."""
    if name in CHECKS:
        raise ValueError(f"duplicate check name {name!r}")
    CHECKS[name] = function


def _rng(*key):
    """A generator seeded from ``key``: the same inputs on every run and machine."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


_KEPT = 8  # the results a _kept function keeps


def _kept(function):
    """``function`` (an input maker, or a reference result) keeping what it returned for
    its last few arguments and handing out deep copies of it: a configuration's checks
    (its reductions and entry points) run one after another on the same inputs and
    references, which are then computed once rather than for each check (drawing the
    inputs was a third of the table's time, and of CI's memcheck over it), and no check
    sees what another wrote (the in-place ones overwrite their logits)."""
    kept = {}

    @functools.wraps(function)
    def result(*args):
        key = repr(tuple(arg.name if isinstance(arg, _registry.Loss) else arg
                         for arg in args))
        if key not in kept:
            if len(kept) >= _KEPT:
                del kept[next(iter(kept))]  # the oldest
            kept[key] = function(*args)
        return copy.deepcopy(kept[key])

    return result


# --- cross-entropy -------------------------------------------------------------------------

# (id, soft targets?, options, shape). ``weight=True`` becomes a random weight array and
# ``ignore_fraction`` sets that share of the targets to ``ignore_index``.
_CE_CASES = (
    ("hard-plain", False, {}, (40, 1000)),
    ("hard-weight", False, {"weight": True}, (40, 1000)),
    ("hard-ignore", False, {"ignore_fraction": 0.3}, (40, 1000)),
    ("hard-ignore=0", False, {"ignore_fraction": 0.3, "ignore_index": 0}, (40, 1000)),
    ("hard-smoothing", False, {"label_smoothing": 0.1}, (40, 1000)),
    ("hard-z_loss", False, {"z_loss": 1e-3}, (40, 1000)),
    ("hard-softcap", False, {"softcap": 2.5}, (40, 1000)),
    ("hard-all", False, {"weight": True, "ignore_fraction": 0.25, "label_smoothing": 0.15,
                         "z_loss": 1e-2, "softcap": 4.0}, (3, 13, 517)),
    # The contract's extremes (C = 262,144, logits up to +-1e4): a few rows, since the
    # float64 reference is slow at this size.
    ("hard-large", False, {"scale": 1e4}, (2, 262144)),
    # Few classes: rows go 16 at a time, one per SIMD lane (a partial last block here).
    ("hard-few-classes", False, {"weight": True, "ignore_fraction": 0.25, "z_loss": 1e-2},
     (37, 10)),
    ("hard-few-classes-large", False, {"scale": 1e4, "label_smoothing": 0.1}, (21, 3)),
    ("soft-plain", True, {}, (40, 1000)),
    ("soft-all", True, {"weight": True, "label_smoothing": 0.15, "z_loss": 1e-2,
                        "softcap": 4.0}, (3, 13, 517)),
)


@_kept
def _ce_inputs(case_id, soft, params, shape, dtype):
    """Fresh ``(logits, target, options)`` for a case: the same on every call."""
    rng = _rng("cross_entropy", case_id, np.dtype(dtype).name)
    n_classes = shape[-1]
    logits = (rng.standard_normal(shape) * params.get("scale", 3.0)).astype(dtype)
    if soft:
        target = rng.random(shape)
        target = (target / target.sum(axis=-1, keepdims=True)).astype(dtype)
    else:
        target = rng.integers(0, n_classes, size=shape[:-1], dtype=np.int64)
        fraction = params.get("ignore_fraction", 0.0)
        if fraction:
            ignored = rng.random(target.shape) < fraction
            ignored.flat[0] = True
            target[ignored] = params.get("ignore_index", -100)
    options = {name: params[name] for name in
               ("ignore_index", "label_smoothing", "z_loss", "softcap") if name in params}
    if params.get("weight"):
        options["weight"] = rng.uniform(0.25, 2.0, n_classes).astype(dtype)
    return logits, target, options


def _ce_grad_output(shape, reduction):
    """A non-trivial upstream gradient: a scalar, or one value per row for 'none'."""
    if reduction != "none":
        return 0.625
    return np.linspace(-1.5, 2.0, math.prod(shape[:-1])).reshape(shape[:-1])


@_kept
def _ce_reference(case, dtype, reduction, quantity):
    """The reference's loss, log-sum-exp or (``quantity`` "grad") gradient for a case."""
    case_id, soft, params, shape = case
    logits, target, options = _ce_inputs(case_id, soft, params, shape, dtype)
    options["reduction"] = reduction
    if quantity == "loss":
        return reference.cross_entropy(logits, target, **options)
    if quantity == "lse":
        return reference.cross_entropy(logits, target, return_lse=True, **options)[1]
    return reference.cross_entropy_grad(logits, target, _ce_grad_output(shape, reduction),
                                        **options)


def _ce_row(case, dtype, reduction, what):
    """The callable for one row: ``what`` names the entry point and the quantity."""
    case_id, soft, params, shape = case

    def run():
        logits, target, options = _ce_inputs(case_id, soft, params, shape, dtype)
        options["reduction"] = reduction
        upstream = _ce_grad_output(shape, reduction)
        if what == "loss":
            return (fastloss.cross_entropy(logits, target, **options),
                    _ce_reference(case, dtype, reduction, "loss"), dtype, "loss")
        if what == "lse":
            _, lse = fastloss.cross_entropy(logits, target, return_lse=True, **options)
            # lse is float64 whatever the logits; held to the loss contract of the logits'
            # dtype, on the reference's log-sum-exp.
            return lse.astype(dtype), _ce_reference(case, dtype, reduction, "lse"), dtype, "loss"
        ref_grad = _ce_reference(case, dtype, reduction, "grad")
        if what == "grad":
            grad = fastloss.cross_entropy_grad(logits, target, upstream, **options)
            return grad, ref_grad, dtype, "grad"
        if what == "grad from lse":
            _, lse = fastloss.cross_entropy(logits, target, return_lse=True, **options)
            grad = fastloss.cross_entropy_grad(logits, target, upstream, lse=lse, **options)
            return grad, ref_grad, dtype, "grad"
        ref_loss = _ce_reference(case, dtype, reduction, "loss")
        if what in ("value_and_grad loss", "value_and_grad grad"):
            out = np.empty_like(logits)
            loss, grad = fastloss.cross_entropy_value_and_grad(logits, target, upstream,
                                                               out=out, **options)
            if grad is not out:
                raise AssertionError("value_and_grad(out=buffer) did not return the buffer")
            if what.endswith("loss"):
                return loss, ref_loss, dtype, "loss"
            return grad, ref_grad, dtype, "grad"
        if what in ("in place loss", "in place grad"):
            loss, grad = fastloss.cross_entropy_value_and_grad(logits, target, upstream,
                                                               out=logits, **options)
            if grad is not logits:
                raise AssertionError("value_and_grad(out=logits) did not return the logits")
            if what.endswith("loss"):
                return loss, ref_loss, dtype, "loss"
            return grad, ref_grad, dtype, "grad"
        raise ValueError(f"unknown cross-entropy check {what!r}")

    return run


def _ce_threads_row(case, dtype, what):
    """Bitwise comparison of num_threads=2 with num_threads=1."""
    case_id, soft, params, shape = case

    def compute(num_threads):
        logits, target, options = _ce_inputs(case_id, soft, params, shape, dtype)
        if what == "mean loss":
            return np.float64(fastloss.cross_entropy(logits, target, num_threads=num_threads,
                                                     **options))
        if what == "none loss+lse":
            loss, lse = fastloss.cross_entropy(logits, target, reduction="none",
                                               return_lse=True, num_threads=num_threads,
                                               **options)
            return np.concatenate([loss.astype(np.float64).ravel(), lse.ravel()])
        if what == "value_and_grad":
            loss, grad = fastloss.cross_entropy_value_and_grad(
                logits, target, 0.625, reduction="sum", out=logits, num_threads=num_threads,
                **options)
            return np.concatenate([[loss], grad.astype(np.float64).ravel()])
        raise ValueError(f"unknown thread check {what!r}")

    def run():
        return compute(2), compute(1), dtype, "bitwise"

    return run


def _add_cross_entropy_checks():
    # Reductions crossed with every entry point, for every case and dtype: the losses at
    # all three reductions, the gradient at all three, the gradient from a given lse, the
    # fused call into a preallocated buffer, and the fused call in place (out=logits).
    rows = (
        ("mean", "loss"), ("sum", "loss"), ("none", "loss"), ("none", "lse"),
        ("mean", "grad"), ("sum", "grad"), ("none", "grad"),
        ("mean", "grad from lse"), ("none", "grad from lse"),
        ("mean", "value_and_grad loss"), ("mean", "value_and_grad grad"),
        ("none", "in place loss"), ("none", "in place grad"),
        ("sum", "in place loss"), ("sum", "in place grad"),
    )
    large_rows = (("mean", "loss"), ("none", "loss"), ("none", "grad"), ("sum", "in place grad"))
    for dtype in (np.float32, np.float64):
        for case in _CE_CASES:
            for reduction, what in (large_rows if case[0] == "hard-large" else rows):
                name = f"cross_entropy {case[0]} {np.dtype(dtype).name} {reduction} {what}"
                add_check(name, _ce_row(case, dtype, reduction, what))
    # Shapes big enough to be split across threads.
    thread_cases = (
        ("hard-all", False, {"weight": True, "ignore_fraction": 0.2, "label_smoothing": 0.1,
                             "z_loss": 1e-3, "softcap": 8.0}, (257, 3001)),
        ("soft-all", True, {"weight": True, "label_smoothing": 0.1, "z_loss": 1e-3},
         (4099, 7)),
    )
    for dtype in (np.float32, np.float64):
        for case in thread_cases:
            for what in ("mean loss", "none loss+lse", "value_and_grad"):
                name = (f"cross_entropy {case[0]} {np.dtype(dtype).name} threads 1 vs 2 "
                        f"{what}")
                add_check(name, _ce_threads_row(case, dtype, what))


_add_cross_entropy_checks()


# --- elementwise losses: every registry entry's cases -----------------------------------------

# Each entry's ``cases`` (fastloss/_registry.py): params the entry's input maker reads
# (``weight`` and ``pos_weight`` name a layout: "full", "class", "row"; ``soft`` mixes
# probabilities into 0/1 labels; ``scale`` is the first input's standard deviation), at
# the case's shape or the entry's ``check_shape`` ((40, 1000): three reduction blocks).

@_kept
def _ew_inputs(entry, case, dtype):
    """Fresh ``(arrays, options)`` for a case: the same on every call."""
    rng = _rng(entry.name, case.id, np.dtype(dtype).name)
    return entry.make_inputs(rng, dtype, case.params, case.shape or entry.check_shape)


@_kept
def _ew_upstream(entry, case, dtype, reduction):
    """A non-trivial upstream gradient: a scalar, or one value per loss for 'none'."""
    if reduction != "none":
        return 0.625
    shape = np.shape(_ew_reference(entry, case, dtype, "none", "loss"))
    return np.linspace(-1.5, 2.0, math.prod(shape)).reshape(shape)


@_kept
def _ew_reference(entry, case, dtype, reduction, quantity):
    """The reference's loss or (``quantity`` "grad") gradient for a case."""
    ref_value, ref_grad, _ = entry.reference
    arrays, options = _ew_inputs(entry, case, dtype)
    options["reduction"] = reduction
    if quantity == "loss":
        return ref_value(*arrays, **options)
    return ref_grad(*arrays, _ew_upstream(entry, case, dtype, reduction), **options)


def _ew_row(entry, case, dtype, reduction, what):
    """The callable for one row: ``what`` names the entry point and the quantity."""
    value, grad_fn, fused = entry.public

    def run():
        arrays, options = _ew_inputs(entry, case, dtype)
        options["reduction"] = reduction
        upstream = _ew_upstream(entry, case, dtype, reduction)
        if what == "loss":
            return (value(*arrays, **options),
                    _ew_reference(entry, case, dtype, reduction, "loss"), dtype, "loss")
        expected = _ew_reference(entry, case, dtype, reduction, "grad")
        if what == "grad":
            return grad_fn(*arrays, upstream, **options), expected, dtype, "grad"
        if what in ("value_and_grad loss", "value_and_grad grad"):
            out = np.empty_like(arrays[0])
            loss, grad = fused(*arrays, upstream, out=out, **options)
            if grad is not out:
                raise AssertionError("value_and_grad(out=buffer) did not return the buffer")
            if what.endswith("loss"):
                return (loss, _ew_reference(entry, case, dtype, reduction, "loss"), dtype,
                        "loss")
            return grad, expected, dtype, "grad"
        if what == "in place grad":
            _, grad = fused(*arrays, upstream, out=arrays[0], **options)
            if grad is not arrays[0]:
                raise AssertionError(f"value_and_grad(out={entry.inputs[0]}) did not "
                                     f"return {entry.inputs[0]}")
            return grad, expected, dtype, "grad"
        raise ValueError(f"unknown elementwise check {what!r}")

    return run


def _ew_threads_row(entry, case, dtype):
    """Bitwise comparison of num_threads=2 with num_threads=1: sum, per element, gradient."""
    value, _, fused = entry.public

    def compute(num_threads):
        arrays, options = _ew_inputs(entry, case, dtype)
        per_element = value(*arrays, reduction="none", num_threads=num_threads, **options)
        loss, grad = fused(*arrays, 0.625, reduction="sum", out=arrays[0],
                           num_threads=num_threads, **options)
        return np.concatenate([[loss], per_element.astype(np.float64).ravel(),
                               grad.astype(np.float64).ravel()])

    def run():
        return compute(2), compute(1), dtype, "bitwise"

    return run


def _add_elementwise_checks():
    rows = (
        ("mean", "loss"), ("sum", "loss"), ("none", "loss"),
        ("mean", "grad"), ("sum", "grad"), ("none", "grad"),
        ("mean", "value_and_grad loss"), ("mean", "value_and_grad grad"),
        ("none", "in place grad"),
    )
    for dtype in (np.float32, np.float64):
        for entry in _registry.family("elementwise"):
            # the entry's own reductions too (kl_div's batchmean)
            own = tuple((reduction, what) for reduction in entry.reductions
                        for what in ("loss", "grad"))
            for case in entry.cases:
                for reduction, what in rows + own:
                    name = f"{entry.name} {case.id} {np.dtype(dtype).name} {reduction} {what}"
                    add_check(name, _ew_row(entry, case, dtype, reduction, what))
            # threads: the cases with a periodic factor, and those of large inputs
            for case in entry.cases:
                if any(option.array and case.params.get(option.name)
                       for option in entry.options) or "scale" in case.params:
                    name = f"{entry.name} {case.id} {np.dtype(dtype).name} threads 1 vs 2"
                    add_check(name, _ew_threads_row(entry, case, dtype))


_add_elementwise_checks()


# --- sequence log-probabilities (fastloss/preference.py, csrc/sequence.c) ------------------------

@_kept
def _sequence_inputs(dtype):
    """Token log-probabilities (37 sequences of 300 tokens), a 0/1 mask of answers that
    start at random positions, and one upstream gradient per sequence."""
    rng = _rng("sequence_log_probs", np.dtype(dtype).name)
    values = np.log(rng.uniform(1e-4, 1.0, (37, 300))).astype(dtype)
    mask = np.arange(300)[None, :] >= rng.integers(0, 200, (37, 1))
    return values, mask, rng.uniform(-1.0, 2.0, 37)


def _sequence_row(dtype, average, what):
    def run():
        values, mask, upstream = _sequence_inputs(dtype)
        if what == "value":
            return (fastloss.sequence_log_probs(values, mask, average=average),
                    reference.sequence_log_probs(values, mask, average=average), dtype, "loss")
        if what == "grad":
            _, grad = fastloss.sequence_log_probs_value_and_grad(values, mask, upstream,
                                                                 average=average)
            return (grad, reference.sequence_log_probs_grad(values, mask, upstream,
                                                            average=average), dtype, "grad")

        def compute(num_threads):
            value, grad = fastloss.sequence_log_probs_value_and_grad(
                values, mask, upstream, average=average, num_threads=num_threads)
            return np.concatenate([value.astype(np.float64), grad.astype(np.float64).ravel()])

        return compute(2), compute(1), dtype, "bitwise"

    return run


def _add_sequence_checks():
    for dtype in (np.float32, np.float64):
        for average in (False, True):
            for what in ("value", "grad", "threads 1 vs 2"):
                name = (f"sequence_log_probs {'average' if average else 'sum'} "
                        f"{np.dtype(dtype).name} {what}")
                add_check(name, _sequence_row(dtype, average, what))


_add_sequence_checks()


# --- pairwise distances and contrastive losses --------------------------------------------

# (function, id, options, rows). Embeddings of D = 8 in four clusters (a common offset for
# the euclidean metrics), with margins near the median distances within and between
# classes, as in tests/loss_specs.py. 150 rows make three tiles of pairs a side.
_EMBEDDING_LAYOUTS = {
    "euclidean": (0.6, 0.25, 3.0, {"pos_margin": 1.0, "neg_margin": 2.4}),
    "sqeuclidean": (0.6, 0.25, 3.0, {"pos_margin": 1.0, "neg_margin": 5.8}),
    "cosine": (1.0, 0.35, 0.0, {"pos_margin": 0.1, "neg_margin": 0.9}),
}
_DIST_CASES = (
    ("pairwise_distance", "euclidean-x,y", {"metric": "euclidean"}, 150),
    ("pairwise_distance", "cosine-x", {"metric": "cosine"}, 150),
    ("contrastive_pairwise", "euclidean", {"metric": "euclidean"}, 150),
    ("contrastive_pairwise", "sqeuclidean", {"metric": "sqeuclidean"}, 150),
    ("contrastive_pairwise", "cosine", {"metric": "cosine"}, 150),
    ("contrastive", "euclidean", {"metric": "euclidean"}, 150),
    ("contrastive", "cosine", {"metric": "cosine"}, 150),
    ("info_nce", "plain", {"temperature": 0.1}, 150),
    ("info_nce", "symmetric", {"temperature": 0.1, "symmetric": True}, 150),
    ("triplet_margin", "p=2-swap", {"swap": True}, 150),
    ("triplet_margin", "p=1", {"p": 1.0}, 150),
)


def _dist_rows(rng, n_rows, metric, dtype):
    spread, noise, offset, _ = _EMBEDDING_LAYOUTS[metric]
    labels = rng.integers(0, 4, n_rows)
    centres = rng.standard_normal((4, 8)) * spread
    rows = centres[labels] + noise * rng.standard_normal((n_rows, 8)) + offset
    return rows.astype(dtype), labels


@_kept
def _dist_inputs(case, dtype):
    """Fresh ``(args, options)`` for a case: the same on every call."""
    function, case_id, params, n_rows = case
    rng = _rng(function, case_id, np.dtype(dtype).name)
    options = dict(params)
    metric = params.get("metric", "euclidean" if function != "info_nce" else "cosine")
    margins = _EMBEDDING_LAYOUTS[metric][3]
    x, labels = _dist_rows(rng, n_rows, metric, dtype)
    if function == "pairwise_distance":
        y = _dist_rows(rng, n_rows // 2, metric, dtype)[0] if case_id.endswith("x,y") else None
        return (x, y), options
    if function == "contrastive_pairwise":
        options.update(margins)
        return (x, labels), options
    other, _ = _dist_rows(rng, n_rows, metric, dtype)
    if function == "contrastive":
        options["margin"] = margins["neg_margin"]
        return (x, other, labels % 2), options
    if function == "info_nce":
        return (x, (x + 0.3 * rng.standard_normal(x.shape)).astype(dtype)), options
    return (x, (x + 0.6 * (other - x)).astype(dtype), other[::-1].copy()), options


def _dist_upstream(function, args, reduction):
    if reduction != "none":
        return 0.625
    n = args[0].shape[0]
    shape = {"pairwise_distance": (n, (args[1] if args[1] is not None else args[0]).shape[0]),
             "contrastive_pairwise": (n, n)}.get(function, (n,))
    return np.linspace(-1.5, 2.0, math.prod(shape)).reshape(shape)


def _dist_row(case, dtype, reduction, what):
    """``what``: "loss", "grad i", "value_and_grad loss" or "value_and_grad grad i"."""
    function = case[0]

    def run():
        args, options = _dist_inputs(case, dtype)
        if function != "pairwise_distance":
            options["reduction"] = reduction
        upstream = _dist_upstream(function, args, reduction)
        value = getattr(fastloss, function)
        ref_value = getattr(reference, function)
        if what == "loss":
            return value(*args, **options), ref_value(*args, **options), dtype, "loss"
        index = int(what.rsplit(" ", 1)[1]) if what[-1].isdigit() else None
        expected = getattr(reference, f"{function}_grad")(*args, upstream, **options)
        expected = expected if isinstance(expected, tuple) else (expected,)
        if what.startswith("grad"):
            grads = getattr(fastloss, f"{function}_grad")(*args, upstream, **options)
            grads = grads if isinstance(grads, tuple) else (grads,)
            return grads[index], expected[index], dtype, "grad"
        loss, grads = getattr(fastloss, f"{function}_value_and_grad")(*args, upstream,
                                                                      **options)
        if what == "value_and_grad loss":
            return loss, ref_value(*args, **options), dtype, "loss"
        grads = grads if isinstance(grads, tuple) else (grads,)
        return grads[index], expected[index], dtype, "grad"

    return run


def _dist_threads_row(case, dtype):
    """Bitwise comparison of num_threads=2 with num_threads=1: loss and every gradient."""
    function = case[0]

    def compute(num_threads):
        args, options = _dist_inputs(case, dtype)
        if function != "pairwise_distance":
            options["reduction"] = "sum"
        loss, grads = getattr(fastloss, f"{function}_value_and_grad")(
            *args, 0.625, num_threads=num_threads, **options)
        grads = grads if isinstance(grads, tuple) else (grads,)
        return np.concatenate([np.asarray(loss, dtype=np.float64).ravel()]
                              + [g.astype(np.float64).ravel() for g in grads])

    def run():
        return compute(2), compute(1), dtype, "bitwise"

    return run


def _add_distance_checks():
    for dtype in (np.float32, np.float64):
        for case in _DIST_CASES:
            function = case[0]
            args, _ = _dist_inputs(case, dtype)
            n_grads = sum(1 for a in args if isinstance(a, np.ndarray) and a.ndim == 2)
            reductions = ("none",) if function == "pairwise_distance" else ("mean", "sum", "none")
            for reduction in reductions:
                whats = ["loss"] + [f"grad {i}" for i in range(n_grads)]
                if reduction == reductions[0]:
                    whats += ["value_and_grad loss", "value_and_grad grad 0"]
                for what in whats:
                    name = f"{function} {case[1]} {np.dtype(dtype).name} {reduction} {what}"
                    add_check(name, _dist_row(case, dtype, reduction, what))
        # 200 rows: above the one-thread threshold of the pass (2**15 pairs)
        for function, case_id, params, _ in (_DIST_CASES[0], _DIST_CASES[2], _DIST_CASES[4]):
            case = (function, case_id, params, 200)
            name = f"{function} {case_id} {np.dtype(dtype).name} threads 1 vs 2"
            add_check(name, _dist_threads_row(case, dtype))


_add_distance_checks()


# --- objectives over the vocabulary: token log-probs, distillation ------------------------

_VOCAB_SHAPE = (24, 3000)  # two chunks of the kernels' 2048 classes per row


@_kept
def _vocab_inputs(case_id, dtype):
    """``(logits, teacher, labels)``: 3 standard normals each (the teacher correlated with
    the first), every fifth label ignored."""
    rng = _rng("vocab", case_id, np.dtype(dtype).name)
    logits = (rng.standard_normal(_VOCAB_SHAPE) * 3).astype(dtype)
    teacher = (rng.standard_normal(_VOCAB_SHAPE) * 3 + 0.5 * logits).astype(dtype)
    labels = rng.integers(0, _VOCAB_SHAPE[1], _VOCAB_SHAPE[0])
    labels[::5] = -100
    return logits, teacher, labels


def _tlp_row(dtype, temperature, what):
    """``what``: "log_prob", "entropy" or "grad" (of g log_prob + h entropy)."""
    def run():
        logits, _, labels = _vocab_inputs("token_log_probs", dtype)
        options = {"temperature": temperature}
        if what != "grad":
            index = ("log_prob", "entropy").index(what)
            return (fastloss.token_log_probs(logits, labels, return_entropy=True, **options)[index],
                    reference.token_log_probs(logits, labels, return_entropy=True,
                                              **options)[index], dtype, "loss")
        g = np.linspace(-1.0, 1.0, _VOCAB_SHAPE[0])
        h = np.linspace(0.5, -0.25, _VOCAB_SHAPE[0])
        return (fastloss.token_log_probs_grad(logits, labels, g, grad_entropy=h, **options),
                reference.token_log_probs_grad(logits, labels, g, grad_entropy=h, **options),
                dtype, "grad")
    return run


_DISTILL_CASES = (
    ("distill_kl", "forward", {"direction": "forward"}),
    ("distill_kl", "reverse", {"direction": "reverse"}),
    ("jsd", "beta=0.5", {"beta": 0.5}),
    ("jsd", "beta=0.2", {"beta": 0.2}),
)


def _distill_upstream(reduction):
    return np.linspace(-1.0, 1.0, _VOCAB_SHAPE[0]) if reduction == "none" else 0.75


@_kept
def _distill_reference(case, dtype, reduction):
    """The reference's ``(loss, {wrt: gradient})`` for a case, from one pass of it."""
    function, case_id, params = case
    student, teacher, labels = _vocab_inputs(function + case_id, dtype)
    wrt = ("student_logits", "teacher_logits")
    loss, grads = getattr(reference, f"{function}_value_and_grad")(
        student, teacher, _distill_upstream(reduction), wrt=wrt, **params, temperature=1.5,
        target=labels, reduction=reduction)
    return loss, dict(zip(wrt, grads))


def _distill_row(case, dtype, reduction, what):
    """``what``: "loss", "grad student_logits" or "grad teacher_logits"."""
    function, case_id, params = case

    def run():
        student, teacher, labels = _vocab_inputs(function + case_id, dtype)
        options = dict(params, temperature=1.5, target=labels, reduction=reduction)
        ref_loss, ref_grads = _distill_reference(case, dtype, reduction)
        if what == "loss":
            return (getattr(fastloss, function)(student, teacher, **options), ref_loss, dtype,
                    "loss")
        wrt = what.split(" ", 1)[1]
        return (getattr(fastloss, f"{function}_grad")(student, teacher,
                                                      _distill_upstream(reduction), wrt=wrt,
                                                      **options),
                ref_grads[wrt], dtype, "grad")
    return run


def _vocab_threads_row(case, dtype):
    """Bitwise comparison of num_threads=2 with num_threads=1: loss and both gradients."""
    function, case_id, params = case

    def compute(num_threads):
        student, teacher, labels = _vocab_inputs(function + case_id, dtype)
        loss, grads = getattr(fastloss, f"{function}_value_and_grad")(
            student, teacher, target=labels, wrt=("student_logits", "teacher_logits"),
            num_threads=num_threads, **params)
        return np.concatenate([[loss]] + [g.astype(np.float64).ravel() for g in grads])

    def run():
        return compute(2), compute(1), dtype, "bitwise"

    return run


def _add_vocab_checks():
    for dtype in (np.float32, np.float64):
        name = np.dtype(dtype).name
        for temperature in (1.0, 0.7):
            for what in ("log_prob", "entropy", "grad"):
                add_check(f"token_log_probs T={temperature:g} {name} {what}",
                          _tlp_row(dtype, temperature, what))
        for case in _DISTILL_CASES:
            for reduction in ("batchmean", "sum", "none"):
                for what in ("loss", "grad student_logits", "grad teacher_logits"):
                    add_check(f"{case[0]} {case[1]} {name} {reduction} {what}",
                              _distill_row(case, dtype, reduction, what))
            add_check(f"{case[0]} {case[1]} {name} threads 1 vs 2",
                      _vocab_threads_row(case, dtype))


_add_vocab_checks()


# ----------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------

def select_checks(pattern=None, shard=None):
    """The names of the checks that contain ``pattern`` (all when None); with ``shard``
    ``(k, n)``, every n-th of them from the k-th on, so that n processes with k = 0 .. n-1
    run each check exactly once between them."""
    names = [name for name in CHECKS if pattern is None or pattern in name]
    if shard is not None:
        k, n = shard
        if not (isinstance(k, int) and isinstance(n, int) and 0 <= k < n):
            raise ValueError(f"shard must be (k, n) with integers 0 <= k < n, got {shard!r}")
        names = names[k::n]
    return names


def run_checks(pattern=None, stream=None, verbose=True, shard=None):
    """Run every check whose name contains ``pattern`` (all when None; one shard of them
    with ``shard``, see select_checks), print one line per check to ``stream`` (only
    failures unless ``verbose``), and return the results."""
    stream = sys.stdout if stream is None else stream
    names = select_checks(pattern, shard)
    width = max((len(name) for name in names), default=0)
    results = []
    for name in names:
        try:
            actual, ref, dtype, kind = CHECKS[name]()
            result = judge(name, actual, ref, dtype, kind)
        except Exception as error:  # a crash in a check is a failed check, not a traceback
            result = CheckResult(name, False, math.nan, math.nan,
                                 f"raised {type(error).__name__}: {error}")
        results.append(result)
        if verbose or not result.passed:
            print(_format(result, width), file=stream, flush=True)
    return results


def _format(result, width):
    status = "PASS" if result.passed else "FAIL"
    line = f"{result.name:<{width}}  max error {result.max_error:9.3e}"
    if math.isfinite(result.bound_fraction):
        line += f"  ({result.bound_fraction:5.3f} of bound)"
    else:
        line += "  " + " " * 17
    line += f"  {status}"
    if result.message and not result.passed:
        line += f"  {result.message}"
    return line


def main(pattern=None, verbose=True, stream=None, shard=None):
    """Run the checks, print a summary line; return 0 if all pass, 1 otherwise."""
    stream = sys.stdout if stream is None else stream
    start = time.perf_counter()
    results = run_checks(pattern, stream, verbose, shard)
    failed = [result for result in results if not result.passed]
    seconds = time.perf_counter() - start
    if not results:
        print(f"no check matches {pattern!r}", file=stream)
        return 1
    print(f"{len(results) - len(failed)} of {len(results)} checks passed in {seconds:.1f} s"
          f"  {'FAIL' if failed else 'PASS'}", file=stream)
    return 1 if failed else 0
