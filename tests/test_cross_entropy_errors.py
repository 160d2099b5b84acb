"""Bad input to the cross-entropy entry points: the exact exception type, and a message
that names the argument (and, for a class index out of range, the value and its position)."""

import re

import numpy as np
import pytest

import fastloss

N_ROWS, N_CLASSES = 4, 5
LOGITS = np.linspace(-2.0, 2.0, N_ROWS * N_CLASSES).reshape(N_ROWS, N_CLASSES)
TARGET = np.array([0, 1, 2, 4])
SOFT_TARGET = np.full((N_ROWS, N_CLASSES), 1.0 / N_CLASSES)

ENTRIES = {
    "cross_entropy": fastloss.cross_entropy,
    "cross_entropy_grad": fastloss.cross_entropy_grad,
    "cross_entropy_value_and_grad": fastloss.cross_entropy_value_and_grad,
}
GRAD_ENTRIES = ("cross_entropy_grad", "cross_entropy_value_and_grad")


def case(case_id, error, match, logits=LOGITS, target=TARGET, entries=tuple(ENTRIES),
         **options):
    """One bad call, crossed with every entry point in ``entries``."""
    return [pytest.param(ENTRIES[entry], logits, target, options, error, match,
                         id=f"{case_id}-{entry}") for entry in entries]


def read_only(array):
    array = array.copy()
    array.flags.writeable = False
    return array


CASES = [
    # logits: dtype
    *case("logits-int64", TypeError, "logits", logits=np.arange(20).reshape(4, 5)),
    *case("logits-int-list", TypeError, "logits", logits=[[1, 2, 3, 4, 5]] * 4),
    *case("logits-bool", TypeError, "logits", logits=LOGITS > 0),
    *case("logits-object", TypeError, "logits", logits=LOGITS.astype(object)),
    *case("logits-complex", TypeError, "logits", logits=LOGITS.astype(np.complex128)),
    # (float16 and bfloat16 are taken: tests/test_half.py; the message lists them)
    *case("logits-int16", TypeError, "logits: expected a float32 or float64 array, or float16 / ml_dtypes.bfloat16", logits=LOGITS.astype(np.int16)),
    *case("logits-string", TypeError, "logits", logits=np.full((4, 5), "x")),
    # logits: shape
    *case("logits-0d", ValueError, "logits", logits=np.float64(1.5), target=np.int64(0)),
    *case("logits-no-classes", ValueError, "logits", logits=np.zeros((4, 0))),
    # target: shape
    *case("target-too-long", ValueError, "target", target=np.array([0, 1, 2, 3, 4])),
    *case("target-extra-axis", ValueError, "target", target=TARGET[:, None]),
    *case("target-int-with-logits-shape", ValueError, "target",
          target=np.zeros((4, 5), np.int64)),
    *case("target-float-with-batch-shape", ValueError, "target", target=TARGET.astype(float)),
    *case("soft-target-wrong-classes", ValueError, "target", target=np.full((4, 6), 1 / 6)),
    *case("soft-target-wrong-rows", ValueError, "target", target=SOFT_TARGET[:3]),
    *case("target-scalar-for-batch", ValueError, "target", target=np.int64(1)),
    # target: dtype
    *case("target-bool", TypeError, "target", target=TARGET > 1),
    *case("target-object", TypeError, "target", target=TARGET.astype(object)),
    *case("target-complex", TypeError, "target", target=TARGET.astype(np.complex64)),
    # options
    *case("reduction-avg", ValueError, "reduction", reduction="avg"),
    *case("reduction-MEAN", ValueError, "reduction", reduction="MEAN"),
    *case("reduction-None", ValueError, "reduction", reduction=None),
    *case("label_smoothing-negative", ValueError, "label_smoothing", label_smoothing=-0.1),
    *case("label_smoothing-above-1", ValueError, "label_smoothing", label_smoothing=1.5),
    *case("label_smoothing-nan", ValueError, "label_smoothing", label_smoothing=float("nan")),
    *case("softcap-zero", ValueError, "softcap", softcap=0.0),
    *case("softcap-negative", ValueError, "softcap", softcap=-2.0),
    *case("softcap-nan", ValueError, "softcap", softcap=float("nan")),
    *case("z_loss-negative", ValueError, "z_loss", z_loss=-1e-4),
    *case("z_loss-inf", ValueError, "z_loss", z_loss=float("inf")),
    *case("z_loss-nan", ValueError, "z_loss", z_loss=float("nan")),
    *case("weight-too-long", ValueError, "weight", weight=np.ones(N_CLASSES + 1)),
    *case("weight-batch-length", ValueError, "weight", weight=np.ones(N_ROWS)),
    *case("weight-row", ValueError, "weight", weight=np.ones((1, N_CLASSES))),
    *case("weight-column", ValueError, "weight", weight=np.ones((N_CLASSES, 1))),
    *case("weight-scalar", ValueError, "weight", weight=np.float64(2.0)),
    *case("num_threads-zero", ValueError, "num_threads", num_threads=0),
    *case("num_threads-negative", ValueError, "num_threads", num_threads=-3),
    *case("num_threads-string", ValueError, "num_threads", num_threads="2"),
    *case("soft-target-ignore_index-0", ValueError, "ignore_index", target=SOFT_TARGET,
          ignore_index=0),
    *case("soft-target-ignore_index-positive", ValueError, "ignore_index",
          target=SOFT_TARGET, ignore_index=7),
    # gradient-only arguments
    *case("grad_output-array-for-mean", ValueError, "grad_output", entries=GRAD_ENTRIES,
          grad_output=np.ones(N_ROWS)),
    *case("grad_output-array-for-sum", ValueError, "grad_output", entries=GRAD_ENTRIES,
          grad_output=np.ones(N_ROWS), reduction="sum"),
    *case("grad_output-too-long-for-none", ValueError, "grad_output", entries=GRAD_ENTRIES,
          grad_output=np.ones(N_ROWS + 1), reduction="none"),
    *case("grad_output-extra-axis-for-none", ValueError, "grad_output", entries=GRAD_ENTRIES,
          grad_output=np.ones((N_ROWS, 1)), reduction="none"),
    *case("lse-wrong-shape", ValueError, "lse", entries=("cross_entropy_grad",),
          lse=np.zeros(N_ROWS + 1)),
    *case("lse-extra-axis", ValueError, "lse", entries=("cross_entropy_grad",),
          lse=np.zeros((N_ROWS, 1))),
    *case("out-wrong-shape", ValueError, "out", entries=GRAD_ENTRIES,
          out=np.empty((N_ROWS, N_CLASSES + 1))),
    *case("out-transposed-shape", ValueError, "out", entries=GRAD_ENTRIES,
          out=np.empty((N_CLASSES, N_ROWS))),
    *case("out-float32-for-float64", TypeError, "out", entries=GRAD_ENTRIES,
          out=np.empty((N_ROWS, N_CLASSES), np.float32)),
    *case("out-float64-for-float32", TypeError, "out", entries=GRAD_ENTRIES,
          logits=LOGITS.astype(np.float32), out=np.empty((N_ROWS, N_CLASSES))),
    *case("out-read-only", ValueError, "out", entries=GRAD_ENTRIES,
          out=read_only(np.empty((N_ROWS, N_CLASSES)))),
    *case("out-read-only-logits-in-place", ValueError, "out", entries=GRAD_ENTRIES,
          logits=read_only(LOGITS), out="logits"),
]


@pytest.mark.parametrize("func, logits, target, options, error, match", CASES)
def test_bad_argument(func, logits, target, options, error, match):
    if isinstance(options.get("out"), str):  # out=logits: in place on read-only logits
        options = dict(options, out=logits)
    with pytest.raises(error, match=match):
        func(logits, target, **options)


OUT_OF_RANGE = [
    pytest.param(np.array([0, 1, 5, 2]), 5, "2", -100, id="value-C"),
    pytest.param(np.array([0, -1, 1, 2]), -1, "1", -100, id="value-minus-1"),
    pytest.param(np.array([0, 1, 2, 9]), 9, "3", -1, id="value-9-ignore_index-minus-1"),
    pytest.param(np.array([-100, 1, 2, 3], np.int8), -100, "0", -1,
                 id="int8-minus-100-ignore_index-minus-1"),
    pytest.param(np.array([0, 1, 2, 255], np.uint8), 255, "3", -1, id="uint8-255"),
    pytest.param(np.array([0, 2**64 - 1, 1, 2], np.uint64), 2**64 - 1, "1", -1,
                 id="uint64-max-is-not-minus-1"),
    pytest.param(np.array([0, 1, 2**63, 2], np.uint64), 2**63, "2", -100,
                 id="uint64-2**63"),
    pytest.param(np.array([0, 1, 2, 2**40], np.int64), 2**40, "3", -100, id="int64-2**40"),
]


@pytest.mark.parametrize("entry", list(ENTRIES))
@pytest.mark.parametrize("target, value, position, ignore_index", OUT_OF_RANGE)
def test_target_out_of_range_names_value_and_position(target, value, position, ignore_index,
                                                      entry):
    with pytest.raises(ValueError, match="target") as raised:
        ENTRIES[entry](LOGITS, target, ignore_index=ignore_index)
    message = str(raised.value)
    assert re.search(rf"(?<![\d.]){re.escape(str(value))}(?![\d.])", message), message
    assert re.search(rf"(?<![\d.]){position}(?![\d.])", message), message


@pytest.mark.parametrize("entry", list(ENTRIES))
def test_target_out_of_range_position_in_batch_of_rows(entry):
    logits = np.zeros((2, 3, N_CLASSES))
    target = np.zeros((2, 3), np.int64)
    target[1, 2] = 7
    with pytest.raises(ValueError, match="target") as raised:
        ENTRIES[entry](logits, target)
    message = str(raised.value)
    assert re.search(r"(?<!\d)7(?!\d)", message), message
    assert "(1, 2)" in message, message


@pytest.mark.parametrize("entry", list(ENTRIES))
def test_out_of_range_target_equal_to_positive_ignore_index_is_accepted(entry):
    # A value outside [0, C) is fine when it is the ignore_index.
    target = np.array([0, 1, 100, 2])
    result = ENTRIES[entry](LOGITS, target, ignore_index=100)
    assert result is not None


@pytest.mark.parametrize("entry", GRAD_ENTRIES)
def test_failed_call_leaves_inputs_intact(entry):
    logits = LOGITS.copy()
    with pytest.raises(ValueError, match="target"):
        ENTRIES[entry](logits, np.array([0, 1, 2, 5]), out=np.empty_like(logits))
    assert np.array_equal(logits, LOGITS)
