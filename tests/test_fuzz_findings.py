"""What the random fuzz (tests/test_fuzz.py with FASTLOSS_FUZZ_SEED) found, each as a
deterministic test, with the seed that found it (replayed with
``FASTLOSS_FUZZ_SEED=<seed> FASTLOSS_FUZZ_EXAMPLES=1500 python -m pytest tests/test_fuzz.py``).
"""
import numpy as np
import pytest

import fastloss
from fastloss import reference

from contract_floors import assert_close_at_scale


@pytest.mark.parametrize("n_classes, share", [(5000, 0.97), (50000, 0.999)])
def test_target_gradient_with_full_label_smoothing_and_a_small_target_probability(
        n_classes, share):
    """Seed 3150351140 (17 x 2049, softcap 5): the target's gradient with
    label_smoothing=1 is eps / C (W p_t - w_t), which cancels to (share - 1) / C; the
    kernel took p_t as 1 - (the others' share), which loses the digits of a small p_t
    (float64 relative error 5.6e-9 against the contract's 1e-12). It now takes
    exp(y_t - lse) there (csrc/cross_entropy_row_body.h, ce_target_grad)."""
    # every class equally likely but the target, at `share` of the others' probability
    logits = np.zeros((1, n_classes))
    logits[0, 3] = np.log(share)
    target = np.array([3])
    loss, grad = fastloss.cross_entropy_value_and_grad(logits, target, label_smoothing=1.0)
    ref_loss, ref_grad = reference.cross_entropy_value_and_grad(logits, target,
                                                                label_smoothing=1.0)
    assert_close_at_scale(loss, ref_loss, np.float64, "loss")
    assert_close_at_scale(grad[:, 3], ref_grad[:, 3], np.float64, "grad", loss=ref_loss,
                          wrt=logits)
    # The other classes' gradient p_c - 1 / C cancels too, and there no float64
    # evaluation keeps the contract's relative 1e-12: p_c is 1 / C within
    # (1 - share) / C, so its own rounding (u / C) is a relative 1e-8 of the result in the
    # second case. The reference misses as much (it computes p_c the same way); both are
    # held to the rounding of the terms they subtract, against the value in extended
    # precision: |error| <= 16 u / C.
    exact = _others_gradient_extended(n_classes, share)
    bound = 16 * np.finfo(np.float64).eps / n_classes
    others = np.delete(grad[0], 3)
    assert np.all(np.abs(others - float(exact)) <= bound)
    assert np.all(np.abs(np.delete(ref_grad[0], 3) - float(exact)) <= bound)
    if n_classes == 5000:  # mild enough for the contract itself
        assert_close_at_scale(grad, ref_grad, np.float64, "grad", loss=ref_loss, wrt=logits)


def _others_gradient_extended(n_classes, share):
    """p_c - 1 / C of a non-target class, in long double: p_c = 1 / (C - 1 + share')
    with share' = exp(float64 log(share)), the logit the test stores."""
    stored = np.longdouble(np.log(share))
    total = np.longdouble(n_classes - 1) + np.exp(stored)
    return np.longdouble(1) / total - np.longdouble(1) / np.longdouble(n_classes)
