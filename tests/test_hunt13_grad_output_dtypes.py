"""grad_output (and grad_entropy) of every real dtype, ml_dtypes.bfloat16 included, in every
family: the gradients of the float64 upstream of the same values, bit for bit.

Found by hunt13: a bfloat16 grad_output was refused everywhere ("grad_output: expected real
numbers, got dtype bfloat16") while float16, integer and float32 ones were taken, and
bfloat16 inputs are taken in every family.
"""
import ml_dtypes  # in the test extra
import numpy as np
import pytest

import fastloss
from fastloss._registry import LOSSES
from loss_specs import bitwise_equal

UPSTREAM_DTYPES = [ml_dtypes.bfloat16, np.float16, np.float32]


def _cases():
    """(id, value_and_grad, positional arrays, options) with reduction "none" where the loss
    has one, so grad_output is an array."""
    rng = np.random.default_rng(13)
    cases = []
    for name, entry in LOSSES.items():
        if entry.make_inputs is None:
            continue
        shape = (30, 4) if entry.family == "box" else (6, 10)
        arrays, options = entry.make_inputs(rng, np.float32, entry.cases[0].params, shape)
        cases.append((name, entry.public[2], arrays, dict(options, reduction="none")))
    n, classes, features = 7, 11, 5
    logits = rng.standard_normal((n, classes)).astype(np.float32)
    teacher = rng.standard_normal((n, classes)).astype(np.float32)
    target = rng.integers(0, classes, n)
    hidden = rng.standard_normal((n, features)).astype(np.float32)
    other = rng.standard_normal((n, features)).astype(np.float32)
    classifier = rng.standard_normal((classes, features)).astype(np.float32)
    labels = rng.integers(0, 2, n)
    entropy = {"grad_entropy": rng.uniform(-1, 1, n)}
    cases += [
        ("cross_entropy", fastloss.cross_entropy_value_and_grad, (logits, target),
         {"reduction": "none"}),
        ("linear_cross_entropy", fastloss.linear_cross_entropy_value_and_grad,
         (hidden, classifier, target), {"reduction": "none", "block_rows": 2}),
        ("linear_token_log_probs", fastloss.linear_token_log_probs_value_and_grad,
         (hidden, classifier, target), dict(entropy, block_rows=2)),
        ("pairwise_distance", fastloss.pairwise_distance_value_and_grad, (hidden, other), {}),
        ("contrastive", fastloss.contrastive_value_and_grad, (hidden, other, labels),
         {"reduction": "none"}),
        ("contrastive_pairwise", fastloss.contrastive_pairwise_value_and_grad,
         (hidden, labels), {"reduction": "none"}),
        ("info_nce", fastloss.info_nce_value_and_grad, (hidden, other),
         {"reduction": "none", "temperature": 0.5}),
        ("triplet_margin", fastloss.triplet_margin_value_and_grad,
         (hidden, other, other[::-1].copy()), {"reduction": "none"}),
        ("token_log_probs", fastloss.token_log_probs_value_and_grad, (logits, target),
         entropy),
        ("distill_kl", fastloss.distill_kl_value_and_grad, (logits, teacher),
         {"reduction": "none"}),
        ("jsd", fastloss.jsd_value_and_grad, (logits, teacher), {"reduction": "none"}),
        ("sequence_log_probs", fastloss.sequence_log_probs_value_and_grad,
         (-np.abs(logits), teacher > 0), {}),
    ]
    return cases


CASES = _cases()


def _flat(result):
    if isinstance(result, tuple):
        return [leaf for item in result for leaf in _flat(item)]
    return [np.asarray(result)]


@pytest.mark.parametrize("upstream_dtype", UPSTREAM_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name, function, arrays, options", CASES, ids=[c[0] for c in CASES])
def test_grad_output_of_any_real_dtype(name, function, arrays, options, upstream_dtype):
    loss = function(*arrays, **options)[0]
    # values that every upstream dtype holds exactly
    values = np.linspace(0.5, 2.0, max(np.size(loss), 1)).reshape(np.shape(loss))
    values = values.astype(ml_dtypes.bfloat16).astype(np.float64)
    extra = {key: np.asarray(value).astype(ml_dtypes.bfloat16).astype(np.float64)
             for key, value in options.items() if key == "grad_entropy"}
    expected = function(*arrays, values, **{**options, **extra})
    narrow = {key: value.astype(upstream_dtype) for key, value in extra.items()}
    got = function(*arrays, values.astype(upstream_dtype), **{**options, **narrow})
    for a, b in zip(_flat(got), _flat(expected), strict=True):
        assert bitwise_equal(a, b), name
