"""huber's ``delta`` and smooth_l1's ``beta`` at the ends of their range (subnormal, tiny,
huge), against the float64 reference to the accuracy contract on every SIMD path.

smooth_l1's kernel multiplies by 1 / beta and 0.5 / beta, which overflow for a subnormal
beta (float64 below 2**-1024; float32 below 2**-128), and a float32 kernel rounds beta
or delta to float32, which holds a subnormal one to a few digits only; beta -> 0 is l1.
"""

import numpy as np
import pytest

import fastloss
import fastloss.reference as reference
from loss_specs import assert_close_contract
from simd_paths import simd_paths

DTYPES = (np.float32, np.float64)


def _inputs(dtype, threshold):
    """pred and target whose residuals r = pred - target cross the threshold: exact
    zeros, normal residuals, and (where dtype holds them) r at 0.25, 0.5, 2 and 3 times
    the threshold, so both pieces of the loss and the kink are reached."""
    rng = np.random.default_rng(11)
    r = list(rng.standard_normal(24))
    r += [0.0, -0.0, {np.float32: 1e25, np.float64: 1e150}.get(dtype, 1e4)]
    r += [s * threshold for s in (0.25, -0.5, 2.0, -3.0)]
    r = np.array(r, dtype=dtype)
    target = np.zeros_like(r)
    target[:12] = dtype(0.5)
    pred = (r.astype(np.float64) + target).astype(dtype)
    return pred, target


# beta / delta: float32 subnormals, float64 subnormals whose inverse overflows, the
# smallest double, and values too large for float32's inverse (or float32 itself)
THRESHOLDS = (1e-40, 1e-45, 2.0**-127, 1e-310, 5e-324, 1e30, 2.0**127, 1e200)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("threshold", THRESHOLDS, ids=repr)
@pytest.mark.parametrize("loss, option", (("smooth_l1", "beta"), ("huber", "delta")))
def test_threshold_extremes_meet_the_contract(loss, option, threshold, dtype):
    pred, target = _inputs(dtype, threshold)
    kw = {option: threshold}
    wide = (pred.astype(np.float64), target.astype(np.float64))
    grad_output = np.random.default_rng(12).standard_normal(pred.shape).astype(dtype)
    ref_value = getattr(reference, loss)(*wide, reduction="none", **kw)
    ref_grad = getattr(reference, loss + "_grad")(*wide, grad_output.astype(np.float64),
                                                  reduction="none", **kw)
    ref_sum = getattr(reference, loss)(*wide, reduction="sum", **kw)
    ref_mean_grad = getattr(reference, loss + "_grad")(*wide, reduction="mean", **kw)
    # a float32 result (a reduced one too) holds the reference rounded to float32 at best
    ref_value, ref_grad, ref_sum, ref_mean_grad = (
        np.asarray(ref, np.float64).astype(dtype).astype(np.float64)
        for ref in (ref_value, ref_grad, ref_sum, ref_mean_grad))
    with simd_paths() as paths:
        for path in paths:
            what = f"{loss} {option}={threshold!r} {np.dtype(dtype).name} {path}"
            value, grad = getattr(fastloss, loss + "_value_and_grad")(
                pred, target, grad_output, reduction="none", **kw)
            assert value.dtype == dtype and grad.dtype == dtype
            assert_close_contract(value, ref_value, dtype, "loss", what + " value")
            assert_close_contract(grad, ref_grad, dtype, "grad", what + " grad")
            assert_close_contract(getattr(fastloss, loss)(pred, target, reduction="sum", **kw),
                                  ref_sum, dtype, "loss", what + " sum")
            assert_close_contract(getattr(fastloss, loss + "_grad")(pred, target,
                                                                     reduction="mean", **kw),
                                  ref_mean_grad, dtype, "grad", what + " mean grad")


@pytest.mark.parametrize("dtype", DTYPES + (np.float16,), ids=lambda d: np.dtype(d).name)
def test_smooth_l1_tends_to_l1_as_beta_goes_to_0(dtype):
    # float16 computes in float, as float32 (a beta float cannot hold: in float64)
    pred, target = _inputs(dtype, 1.0)
    l1 = fastloss.l1(pred, target, reduction="none")
    for beta in (1e-40, 1e-310, 5e-324):
        value = fastloss.smooth_l1(pred, target, beta=beta, reduction="none")
        assert np.all(np.isfinite(value))
        assert value.dtype == dtype
        assert_close_contract(value, l1.astype(np.float64),
                              np.float32 if dtype == np.float16 else dtype, "loss",
                              f"beta={beta!r}")
