"""Hardening: arrays above 2**31 elements, and the GIL released inside the kernels."""
import threading

import numpy as np
import pytest

import fastloss
from fastloss import reference

from loss_specs import assert_close_contract


@pytest.mark.slow
def test_cross_entropy_over_more_than_two_to_the_31_elements():
    # 32769 x 65536 float32 logits: 2**31 + 2**16 elements (8.6 GB).  The last row starts
    # past element 2**31, so 32-bit index arithmetic anywhere would read or write the
    # wrong place.  The gradient goes in place, so the test needs no second copy.
    n_rows, n_classes = 32769, 65536
    assert n_rows * n_classes > 2**31
    rng = np.random.default_rng(2031)
    logits = np.zeros((n_rows, n_classes), dtype=np.float32)  # zero pages: cheap until written
    last_row = (rng.standard_normal(n_classes) * 4).astype(np.float32)
    logits[-1] = last_row
    target = np.arange(n_rows) % n_classes
    target[-1] = 65535

    loss, grad = fastloss.cross_entropy_value_and_grad(logits, target, reduction="none",
                                                       out=logits)
    assert grad is logits
    ref_loss, ref_grad = reference.cross_entropy_value_and_grad(
        last_row[None, :].astype(np.float64), target[-1:], reduction="none")
    assert_close_contract(loss[-1:].astype(np.float64), ref_loss, np.float32, "loss")
    assert_close_contract(grad[-1:].astype(np.float64), ref_grad, np.float32, "grad")
    # an all-zero row: loss log C, gradient 1/C except at the target
    assert loss[0] == pytest.approx(np.log(n_classes), rel=2e-6)
    assert grad[0, 1] == pytest.approx(1.0 / n_classes, rel=2e-6)
    assert grad[0, 0] == pytest.approx(1.0 / n_classes - 1.0, rel=2e-6)


def test_the_gil_is_released_inside_the_kernel():
    # One thread starts a long single-threaded kernel; another, started once the first
    # is on its way, makes a short call.  With the GIL released during the kernel the
    # short call finishes first; with the GIL held it could not even start until the
    # long call had returned (and its thread had recorded that).  No timing thresholds:
    # only the order of events, with a ~1000x gap between the two calls' lengths.
    rng = np.random.default_rng(0)
    big = rng.standard_normal((2048, 50000), dtype=np.float32)
    big_target = rng.integers(0, 50000, size=2048)
    small = rng.standard_normal((4, 100), dtype=np.float32)
    small_target = np.zeros(4, dtype=np.int64)
    order = []
    entering = threading.Event()

    def long_call():
        entering.set()
        fastloss.cross_entropy_value_and_grad(big, big_target, num_threads=1)
        order.append("long")

    def short_call():
        entering.wait()
        fastloss.cross_entropy(small, small_target, num_threads=1)
        order.append("short")

    threads = [threading.Thread(target=long_call), threading.Thread(target=short_call)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert order == ["short", "long"]


# ----------------------------------------------------------------------------------------
# Regression tests for what the fuzzer (tests/test_fuzz.py) found
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_pairwise_distance_gradient_with_no_pairs_is_zero(dtype):
    x = np.empty((0, 3), dtype=dtype)
    y = np.full((2, 3), 7.0, dtype=dtype)
    _, (grad_x, grad_y) = fastloss.pairwise_distance_value_and_grad(x, y)
    assert grad_x.shape == (0, 3) and grad_y.shape == (2, 3)
    assert np.all(grad_y == 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_cross_entropy_one_class_with_smoothing_has_zero_gradient(dtype):
    # alpha p - gamma u - beta cancelled to -2.8e-17 instead of 0 (grad from lse)
    logits = np.array([[0.37719065], [-2.5]], dtype=dtype)
    target = np.array([0, 0])
    _, lse = fastloss.cross_entropy(logits, target, label_smoothing=0.1, return_lse=True)
    for grad in (fastloss.cross_entropy_grad(logits, target, label_smoothing=0.1, lse=lse),
                 fastloss.cross_entropy_grad(logits, target, label_smoothing=0.1)):
        assert np.all(grad == 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_cross_entropy_gradient_from_lse_at_a_confident_target(dtype):
    # p_t = 1 - 1.27e-4: p_t - 1 from a rounded p_t lost 3 digits in float32
    logits = np.array([3.0806658, -5.889606], dtype=dtype)
    target = np.array(0)
    _, lse = fastloss.cross_entropy(logits, target, return_lse=True)
    grad = fastloss.cross_entropy_grad(logits, target, lse=lse)
    expected = reference.cross_entropy_grad(logits.astype(np.float64), target)
    assert_close_contract(grad.astype(np.float64), expected, dtype, "grad")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_cross_entropy_z_loss_gradient_of_a_single_class(dtype):
    # the cross-entropy part is exactly 0 and the z part small: they were summed into
    # one factor whose rounding swamped the z part
    logits = np.array([[0.54377873], [-0.43033987], [0.29605791]], dtype=dtype)
    target = np.ones((3, 1), dtype=dtype)
    _, grad = fastloss.cross_entropy_value_and_grad(logits, target, z_loss=1e-4)
    expected = reference.cross_entropy_grad(logits.astype(np.float64), target, z_loss=1e-4)
    assert_close_contract(grad.astype(np.float64), expected, dtype, "grad")
