"""Bad input to the pairwise distances and contrastive losses: the exact exception type, and
a message that names the argument."""

import numpy as np
import pytest

import fastloss

X = np.linspace(-1.0, 1.0, 24).reshape(6, 4)
Y = np.linspace(0.5, -0.5, 20).reshape(5, 4)
LABELS = np.array([0, 1, 0, 2, 1, 0])
PAIR_LABEL = np.array([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])

SUFFIXES = ("", "_grad", "_value_and_grad")

# Good arguments of each function, by name; a case replaces some of them.
GOOD = {
    "pairwise_distance": dict(x=X, y=Y),
    "contrastive": dict(x1=X, x2=X[::-1], label=PAIR_LABEL),
    "contrastive_pairwise": dict(embeddings=X, labels=LABELS),
    "info_nce": dict(query=X, key=X[::-1]),
    "triplet_margin": dict(anchor=X, positive=X[::-1], negative=X + 1.0),
}
EMBEDDINGS = {
    "pairwise_distance": ("x", "y"),
    "contrastive": ("x1", "x2"),
    "contrastive_pairwise": ("embeddings",),
    "info_nce": ("query", "key"),
    "triplet_margin": ("anchor", "positive", "negative"),
}


def case(case_id, error, match, names=tuple(GOOD), suffixes=SUFFIXES, **changes):
    return [pytest.param(name + suffix, changes, error, match, id=f"{case_id}-{name}{suffix}")
            for name in names for suffix in suffixes]


def embedding_cases(case_id, error, value, match=None):
    """Replace each embedding argument in turn by ``value``."""
    return [pytest.param(name + suffix, {argument: value}, error, match or argument,
                         id=f"{case_id}-{argument}-{name}{suffix}")
            for name, arguments in EMBEDDINGS.items() for argument in arguments
            for suffix in SUFFIXES]


CASES = [
    # rank other than 2, empty feature axis, dtypes
    *embedding_cases("rank-1", ValueError, X[0]),
    *embedding_cases("rank-3", ValueError, X[None]),
    *embedding_cases("rank-0", ValueError, np.float64(1.0)),
    *embedding_cases("no-features", ValueError, np.zeros((6, 0))),
    *embedding_cases("int64", TypeError, np.ones((6, 4), np.int64)),
    *embedding_cases("complex", TypeError, X.astype(np.complex128)),
    *embedding_cases("uint16", TypeError, X.astype(np.uint16)),  # float16: test_half_contrastive
    *embedding_cases("object", TypeError, X.astype(object)),
    # mismatched D, mismatched N
    *case("D-mismatch", ValueError, "y", names=("pairwise_distance",), y=np.zeros((5, 3))),
    *case("D-mismatch", ValueError, "x2", names=("contrastive",), x2=np.zeros((6, 3))),
    *case("D-mismatch", ValueError, "key", names=("info_nce",), key=np.zeros((6, 5))),
    *case("D-mismatch", ValueError, "negative", names=("triplet_margin",),
          negative=np.zeros((6, 5))),
    *case("N-mismatch", ValueError, "x2", names=("contrastive",), x2=np.zeros((5, 4))),
    *case("N-mismatch", ValueError, "positive", names=("triplet_margin",),
          positive=np.zeros((7, 4))),
    *case("key-too-short", ValueError, "key", names=("info_nce",), key=np.zeros((5, 4))),
    *case("key-not-square-symmetric", ValueError, "key", names=("info_nce",),
          key=np.zeros((7, 4)), symmetric=True),
    # labels
    *case("labels-short", ValueError, "labels", names=("contrastive_pairwise",),
          labels=LABELS[:5]),
    *case("labels-2d", ValueError, "labels", names=("contrastive_pairwise",),
          labels=LABELS[:, None]),
    *case("labels-float", TypeError, "labels", names=("contrastive_pairwise",),
          labels=LABELS.astype(float)),
    *case("labels-string", TypeError, "labels", names=("contrastive_pairwise",),
          labels=np.array(list("abcdef"))),
    *case("label-short", ValueError, "label", names=("contrastive",), label=PAIR_LABEL[:4]),
    *case("label-2d", ValueError, "label", names=("contrastive",),
          label=PAIR_LABEL[:, None]),
    *case("label-complex", TypeError, "label", names=("contrastive",),
          label=PAIR_LABEL.astype(complex)),
    # metric
    *case("metric-unknown", ValueError, "metric",
          names=("pairwise_distance", "contrastive", "contrastive_pairwise"),
          metric="manhattan"),
    *case("metric-None", ValueError, "metric",
          names=("pairwise_distance", "contrastive", "contrastive_pairwise"), metric=None),
    # margins, temperature, p, eps, swap
    *case("margin-negative", ValueError, "margin", names=("contrastive",), margin=-0.5),
    *case("margin-nan", ValueError, "margin", names=("contrastive",), margin=float("nan")),
    *case("margin-zero", ValueError, "margin", names=("triplet_margin",), margin=0.0),
    *case("margin-negative", ValueError, "margin", names=("triplet_margin",), margin=-1.0),
    *case("margin-string", TypeError, "margin", names=("triplet_margin",), margin="1"),
    *case("pos_margin-negative", ValueError, "pos_margin", names=("contrastive_pairwise",),
          pos_margin=-0.1),
    *case("neg_margin-negative", ValueError, "neg_margin", names=("contrastive_pairwise",),
          neg_margin=-1.0),
    *case("neg_margin-inf", ValueError, "neg_margin", names=("contrastive_pairwise",),
          neg_margin=float("inf")),
    *case("temperature-zero", ValueError, "temperature", names=("info_nce",),
          temperature=0.0),
    *case("temperature-negative", ValueError, "temperature", names=("info_nce",),
          temperature=-0.05),
    *case("temperature-nan", ValueError, "temperature", names=("info_nce",),
          temperature=float("nan")),
    *case("symmetric-string", TypeError, "symmetric", names=("info_nce",), symmetric="yes"),
    # torch's vector_norm takes any p (inf and p < 1 included) and any eps: only NaN, a
    # non-number or an infinite eps is refused
    *case("p-nan", ValueError, "p", names=("triplet_margin",), p=float("nan")),
    *case("p-string", TypeError, "p", names=("triplet_margin",), p="2"),
    *case("eps-inf", ValueError, "eps", names=("triplet_margin",), eps=float("inf")),
    *case("swap-string", TypeError, "swap", names=("triplet_margin",), swap="no"),
    # reduction
    *case("reduction-unknown", ValueError, "reduction",
          names=("contrastive", "contrastive_pairwise", "info_nce", "triplet_margin"),
          reduction="avg"),
    # threads
    *case("num_threads-zero", ValueError, "num_threads", num_threads=0),
    *case("num_threads-string", ValueError, "num_threads", num_threads="2"),
]


@pytest.mark.parametrize("function, changes, error, match", CASES)
def test_bad_argument(function, changes, error, match):
    name = function.split("_grad")[0].replace("_value_and", "")
    arguments = dict(GOOD[name], **changes)
    with pytest.raises(error, match=match):
        getattr(fastloss, function)(**arguments)


GRAD_CASES = [
    pytest.param("pairwise_distance", dict(grad_output=np.ones((6, 4))), ValueError,
                 "grad_output", id="pairwise_distance-grad_output-shape"),
    pytest.param("contrastive", dict(grad_output=np.ones(6)), ValueError, "grad_output",
                 id="contrastive-grad_output-array-for-mean"),
    pytest.param("contrastive", dict(grad_output=np.ones(5), reduction="none"), ValueError,
                 "grad_output", id="contrastive-grad_output-shape"),
    pytest.param("contrastive_pairwise", dict(grad_output=np.ones(6), reduction="none"),
                 ValueError, "grad_output", id="contrastive_pairwise-grad_output-shape"),
    pytest.param("info_nce", dict(grad_output=np.ones(2), reduction="none"), ValueError,
                 "grad_output", id="info_nce-grad_output-shape"),
    pytest.param("triplet_margin", dict(grad_output="x"), TypeError, "^grad_output",
                 id="triplet_margin-grad_output-string"),
    pytest.param("info_nce", dict(grad_output=None), TypeError, "^grad_output",
                 id="info_nce-grad_output-None"),
    pytest.param("pairwise_distance", dict(grad_output=[[1.0], [2.0, 3.0]]), ValueError,
                 "^grad_output", id="pairwise_distance-grad_output-ragged"),
    pytest.param("contrastive_pairwise", dict(out=np.zeros((6, 3))), ValueError, "out",
                 id="contrastive_pairwise-out-shape"),
    pytest.param("contrastive_pairwise", dict(out=np.zeros((6, 4), np.float32)), TypeError,
                 "out", id="contrastive_pairwise-out-dtype"),
    pytest.param("contrastive", dict(out=np.zeros((6, 4))), TypeError, "out",
                 id="contrastive-out-not-a-tuple"),
    pytest.param("triplet_margin", dict(out=(np.zeros((6, 4)), np.zeros((6, 4)))), TypeError,
                 "out", id="triplet_margin-out-too-short"),
    pytest.param("info_nce", dict(out=(np.zeros((6, 4)), [[0.0] * 4] * 6)), TypeError, "out",
                 id="info_nce-out-list"),
    pytest.param("pairwise_distance", dict(out=(np.zeros((6, 4)), np.zeros((6, 4)))),
                 ValueError, r"out\[1\]", id="pairwise_distance-out-y-shape"),
]


@pytest.mark.parametrize("suffix", ["_grad", "_value_and_grad"])
@pytest.mark.parametrize("name, changes, error, match", GRAD_CASES)
def test_bad_gradient_argument(name, changes, error, match, suffix):
    with pytest.raises(error, match=match):
        getattr(fastloss, name + suffix)(**dict(GOOD[name], **changes))


def test_read_only_out_and_shared_out_buffers():
    buffer = np.zeros((6, 4))
    buffer.flags.writeable = False
    with pytest.raises(ValueError, match="out"):
        fastloss.contrastive_pairwise_grad(X, LABELS, out=buffer)
    shared = np.zeros((6, 4))
    with pytest.raises(ValueError, match="out"):
        fastloss.contrastive_grad(X, X[::-1], PAIR_LABEL, out=(shared, shared))


@pytest.mark.parametrize("name", list(GOOD))
def test_failed_call_leaves_inputs_intact(name):
    arguments = {key: (value.copy() if isinstance(value, np.ndarray) else value)
                 for key, value in GOOD[name].items()}
    before = {key: value.copy() for key, value in arguments.items()
              if isinstance(value, np.ndarray)}
    with pytest.raises(ValueError):
        getattr(fastloss, name + "_value_and_grad")(**arguments, grad_output=np.ones((9, 9, 9)))
    for key, value in before.items():
        assert np.array_equal(arguments[key], value)


def test_nan_inputs_propagate_without_crashing():
    x = X.copy()
    x[2, 1] = np.nan
    distance = fastloss.pairwise_distance(x)
    assert np.isnan(distance[2, [0, 1, 3]]).all() and not np.isnan(distance[0, 1])
    loss, grad = fastloss.contrastive_pairwise_value_and_grad(x, LABELS, reduction="none")
    assert np.isnan(loss[2, 0]) and not np.isnan(loss[0, 1])
    for function, arguments in (
            (fastloss.contrastive_value_and_grad, (x, X, PAIR_LABEL)),
            (fastloss.triplet_margin_value_and_grad, (x, X[::-1], X + 1.0)),
            (fastloss.info_nce_value_and_grad, (x, X[::-1]))):
        loss, grads = function(*arguments, reduction="none")
        assert np.isnan(loss[2]) and np.isfinite(np.delete(loss, 2)).all()
        assert np.isnan(grads[0][2]).all()
