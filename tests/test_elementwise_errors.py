"""Bad input to the regression and binary losses: the exact exception type, and a message
that names the argument."""

import numpy as np
import pytest

import fastloss

PRED = np.linspace(-2.0, 2.0, 20).reshape(4, 5)
TARGET = np.linspace(0.0, 1.0, 20).reshape(4, 5)

NAMES = ("mse", "l1", "huber", "smooth_l1", "bce_with_logits")
SUFFIXES = ("", "_grad", "_value_and_grad")
GRAD_SUFFIXES = ("_grad", "_value_and_grad")


def case(case_id, error, match, *, names=NAMES, suffixes=SUFFIXES, pred=PRED, target=TARGET,
         **options):
    """One bad call, crossed with the entry points of every loss in ``names``. A match of
    "pred" becomes "logits" for bce_with_logits, whose first argument is called that."""
    return [pytest.param(getattr(fastloss, name + suffix), pred, target, options, error,
                         "logits" if match == "pred" and name == "bce_with_logits" else match,
                         id=f"{case_id}-{name}{suffix}")
            for name in names for suffix in suffixes]


def read_only(array):
    array = array.copy()
    array.flags.writeable = False
    return array


REGRESSION = NAMES[:4]

CASES = [
    # pred: dtype
    *case("pred-int64", TypeError, "pred", pred=np.arange(20).reshape(4, 5)),
    *case("pred-int-list", TypeError, "pred", pred=[[1, 2, 3, 4, 5]] * 4),
    *case("pred-bool", TypeError, "pred", pred=PRED > 0),
    *case("pred-object", TypeError, "pred", pred=PRED.astype(object)),
    *case("pred-complex", TypeError, "pred", pred=PRED.astype(np.complex128)),
    # (float16 and bfloat16 are taken: tests/test_half.py; the message lists them)
    *case("pred-int16", TypeError, "(pred|logits): expected a float32 or float64 array, or float16",
          pred=PRED.astype(np.int16)),
    # target: dtype and shape
    *case("target-complex", TypeError, "target", target=TARGET.astype(np.complex64)),
    *case("target-object", TypeError, "target", target=TARGET.astype(object)),
    *case("target-string", TypeError, "target", target=np.full((4, 5), "x")),
    *(case("target-longdouble", TypeError, "target", target=TARGET.astype(np.longdouble))
      if np.dtype(np.longdouble).itemsize > 8 else []),
    *case("target-wrong-columns", ValueError, "target", target=np.zeros((4, 6))),
    *case("target-wrong-rows", ValueError, "target", target=np.zeros((3, 5))),
    *case("target-broadcast-for-bce", ValueError, "target", names=("bce_with_logits",),
          target=np.zeros(5)),
    *case("target-scalar-for-bce", ValueError, "target", names=("bce_with_logits",),
          target=1.0),
    # options
    *case("reduction-avg", ValueError, "reduction", reduction="avg"),
    *case("reduction-MEAN", ValueError, "reduction", reduction="MEAN"),
    *case("reduction-None", ValueError, "reduction", reduction=None),
    *case("delta-negative", ValueError, "delta", names=("huber",), delta=-1.0),
    *case("delta-zero", ValueError, "delta", names=("huber",), delta=0.0),
    *case("delta-nan", ValueError, "delta", names=("huber",), delta=float("nan")),
    *case("delta-inf", ValueError, "delta", names=("huber",), delta=float("inf")),
    *case("delta-string", TypeError, "delta", names=("huber",), delta="1"),
    *case("delta-array", TypeError, "delta", names=("huber",), delta=np.ones(2)),
    *case("beta-negative", ValueError, "beta", names=("smooth_l1",), beta=-0.5),
    *case("beta-nan", ValueError, "beta", names=("smooth_l1",), beta=float("nan")),
    *case("beta-inf", ValueError, "beta", names=("smooth_l1",), beta=float("inf")),
    *case("beta-none", TypeError, "beta", names=("smooth_l1",), beta=None),
    *case("weight-wrong-length", ValueError, "weight", weight=np.ones(6)),
    *case("weight-rows-as-columns", ValueError, "weight", weight=np.ones(4)),
    *case("weight-enlarges-the-loss", ValueError, "weight", weight=np.ones((3, 4, 5))),
    *case("weight-complex", TypeError, "weight", weight=np.ones(5, np.complex128)),
    *case("weight-string", TypeError, "weight", weight="1"),
    *case("pos_weight-wrong-length", ValueError, "pos_weight", names=("bce_with_logits",),
          pos_weight=np.ones(4)),
    *case("pos_weight-too-long", ValueError, "pos_weight", names=("bce_with_logits",),
          pos_weight=np.ones(6)),
    *case("pos_weight-enlarges-the-loss", ValueError, "pos_weight",
          names=("bce_with_logits",), pos_weight=np.ones((2, 4, 5))),
    *case("pos_weight-complex", TypeError, "pos_weight", names=("bce_with_logits",),
          pos_weight=np.ones(5, np.complex64)),
    *case("pos_weight-0d-logits", ValueError, "pos_weight", names=("bce_with_logits",),
          pred=np.float64(0.5), target=np.float64(1.0), pos_weight=np.ones(1)),
    *case("pos_weight-for-regression", TypeError, "pos_weight", names=REGRESSION,
          pos_weight=np.ones(5)),
    *case("delta-for-mse", TypeError, "delta", names=("mse",), delta=1.0),
    *case("num_threads-zero", ValueError, "num_threads", num_threads=0),
    *case("num_threads-negative", ValueError, "num_threads", num_threads=-3),
    *case("num_threads-float", ValueError, "num_threads", num_threads=2.5),
    *case("num_threads-string", ValueError, "num_threads", num_threads="2"),
    # gradient-only arguments
    *case("grad_output-array-for-mean", ValueError, "grad_output", suffixes=GRAD_SUFFIXES,
          grad_output=np.ones((4, 5))),
    *case("grad_output-array-for-sum", ValueError, "grad_output", suffixes=GRAD_SUFFIXES,
          grad_output=np.ones(5), reduction="sum"),
    *case("grad_output-wrong-shape-for-none", ValueError, "grad_output",
          suffixes=GRAD_SUFFIXES, grad_output=np.ones((4, 6)), reduction="none"),
    *case("grad_output-broadcastable-for-none", ValueError, "grad_output",
          suffixes=GRAD_SUFFIXES, grad_output=np.ones(5), reduction="none"),
    *case("grad_output-complex", TypeError, "grad_output", suffixes=GRAD_SUFFIXES,
          grad_output=np.ones((4, 5), np.complex128), reduction="none"),
    *case("out-wrong-shape", ValueError, "out", suffixes=GRAD_SUFFIXES,
          out=np.empty((4, 6))),
    *case("out-transposed", ValueError, "out", suffixes=GRAD_SUFFIXES, out=np.empty((5, 4))),
    *case("out-flat", ValueError, "out", suffixes=GRAD_SUFFIXES, out=np.empty(20)),
    *case("out-float32-for-float64", TypeError, "out", suffixes=GRAD_SUFFIXES,
          out=np.empty((4, 5), np.float32)),
    *case("out-float64-for-float32", TypeError, "out", suffixes=GRAD_SUFFIXES,
          pred=PRED.astype(np.float32), out=np.empty((4, 5))),
    # the gradient has pred's dtype even when the loss is computed in float64
    *case("out-float64-for-float32-pred-float64-target", TypeError, "out",
          suffixes=GRAD_SUFFIXES, pred=PRED.astype(np.float32), target=TARGET,
          out=np.empty((4, 5))),
    *case("out-broadcast-shape-for-smaller-pred", ValueError, "out", names=REGRESSION,
          suffixes=GRAD_SUFFIXES, pred=PRED[:1], out=np.empty((4, 5))),
    *case("out-list", TypeError, "out", suffixes=GRAD_SUFFIXES, out=[[0.0] * 5] * 4),
    *case("out-read-only", ValueError, "out", suffixes=GRAD_SUFFIXES,
          out=read_only(np.empty((4, 5)))),
    *case("out-read-only-pred-in-place", ValueError, "out", suffixes=GRAD_SUFFIXES,
          pred=read_only(PRED), out="pred"),
]


@pytest.mark.parametrize("func, pred, target, options, error, match", CASES)
def test_bad_argument(func, pred, target, options, error, match):
    if isinstance(options.get("out"), str):  # out=pred: in place on a read-only pred
        options = dict(options, out=pred)
    with pytest.raises(error, match=match):
        func(pred, target, **options)


@pytest.mark.parametrize("name", NAMES)
def test_messages_say_what_was_expected(name):
    value = getattr(fastloss, name)
    with pytest.raises(TypeError, match=r"(pred|logits): expected a float32 or float64 array, "
                                        r"or float16 / ml_dtypes.bfloat16, got dtype int64"):
        value(np.arange(3), np.arange(3))
    with pytest.raises(ValueError, match=r"reduction: expected one of \('mean', 'sum', "
                                         r"'none'\), got 'avg'"):
        value(PRED, TARGET, reduction="avg")
    with pytest.raises(ValueError, match=r"weight: shape \(6,\) does not broadcast to .* "
                                         r"\(4, 5\)"):
        value(PRED, TARGET, weight=np.ones(6))


def test_shape_mismatch_messages_name_both_shapes():
    with pytest.raises(ValueError, match=r"target: shape \(4, 6\) does not broadcast with "
                                         r"pred's shape \(4, 5\)"):
        fastloss.mse(PRED, np.zeros((4, 6)))
    with pytest.raises(ValueError, match=r"target: expected the shape of logits \(4, 5\), "
                                         r"got \(5,\)"):
        fastloss.bce_with_logits(PRED, np.zeros(5))
    with pytest.raises(ValueError, match=r"pos_weight: shape \(4,\) does not broadcast to the "
                                         r"logits' shape \(4, 5\).*shape \(5,\)"):
        fastloss.bce_with_logits(PRED, TARGET, pos_weight=np.ones(4))
    # a singular name takes 's (the message said "the pred' shape")
    with pytest.raises(ValueError, match=r"quantile: shape \(4,\) does not broadcast to the "
                                         r"pred's shape \(4, 5\).*shape \(5,\)"):
        fastloss.pinball(PRED, TARGET, quantile=np.full(4, 0.5))
    with pytest.raises(ValueError, match=r"delta: expected a finite value in \(0\.0, inf\), "
                                         r"got -1"):
        fastloss.huber(PRED, TARGET, delta=-1)
    with pytest.raises(ValueError, match=r"beta: expected a finite value in \[0\.0, inf\), "
                                         r"got -0\.5"):
        fastloss.smooth_l1(PRED, TARGET, beta=-0.5)


@pytest.mark.parametrize("name", NAMES)
def test_failed_call_leaves_inputs_intact(name):
    pred, target, out = PRED.copy(), TARGET.copy(), np.zeros_like(PRED)
    with pytest.raises(ValueError, match="grad_output"):
        getattr(fastloss, name + "_value_and_grad")(pred, target, np.ones(3), out=out)
    assert np.array_equal(pred, PRED) and np.array_equal(target, TARGET)
    assert not out.any()


def test_the_cython_layer_checks_what_memory_safety_depends_on():
    # The public API never makes these calls; the wrapper still refuses them.
    from fastloss import _kernels

    flat = np.zeros(8)
    grad_output = np.ones(1)
    with pytest.raises(TypeError, match="target"):
        _kernels.ew_run("forward", "mse", flat, np.zeros(8, np.float32), None, None, None,
                        None, None, 0.0, "mean", 1)
    with pytest.raises(ValueError, match="target"):
        _kernels.ew_run("forward", "mse", flat, np.zeros(7), None, None, None, None, None,
                        0.0, "mean", 1)
    with pytest.raises(ValueError, match="weight"):
        _kernels.ew_run("forward", "mse", flat, flat, np.zeros(0), None, None, None, None,
                        0.0, "mean", 1)
    with pytest.raises(ValueError, match="pos_weight"):
        _kernels.ew_run("forward", "mse", flat, flat, None, np.ones(2), None, None, None,
                        0.0, "mean", 1)
    with pytest.raises(ValueError, match="delta"):
        _kernels.ew_run("forward", "huber", flat, flat, None, None, None, None, None,
                        0.0, "mean", 1)
    with pytest.raises(ValueError, match="beta"):
        _kernels.ew_run("forward", "smooth_l1", flat, flat, None, None, None, None, None,
                        -1.0, "mean", 1)
    with pytest.raises(ValueError, match="out"):
        _kernels.ew_run("backward", "mse", flat, flat, None, None, grad_output, None,
                        np.zeros(7), 0.0, "mean", 1)
    with pytest.raises(ValueError, match="out: overlaps"):
        data = np.zeros(9)
        _kernels.ew_run("backward", "mse", data[:8], flat, None, None, grad_output, None,
                        data[1:], 0.0, "mean", 1)
    with pytest.raises(ValueError, match="loss_per_element"):
        _kernels.ew_run("forward", "mse", flat, flat, None, None, None, None, None, 0.0,
                        "none", 1)
    with pytest.raises(ValueError, match="loss"):
        _kernels.ew_run("forward", "cosine", flat, flat, None, None, None, None, None, 0.0,
                        "mean", 1)
