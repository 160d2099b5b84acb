"""Every argument of every public function, given something NumPy cannot turn into numbers
(a string, None, an arbitrary object, a ragged nested list, a complex number, a dict, an
integer no float64 holds), raises TypeError or ValueError whose message starts with that argument's name: never
NumPy's own "could not convert string to float" or "inhomogeneous shape", which name none.

Arguments whose None is a documented default (weight, pos_weight, y, softcap, lse,
num_threads, stats, grad_dtype, grad_entropy, the distillation's target) are not given None;
return_lse and return_entropy take any truth value, as Python's ``if`` does; ``wrt`` (the
elementwise losses) is left to test_elementwise_errors.py.
"""

import inspect

import numpy as np
import pytest

import fastloss

X = np.linspace(-1.0, 1.0, 24).reshape(6, 4)

GOOD = {
    "cross_entropy": dict(logits=X, target=np.array([0, 1, 2, 3, 0, 1])),
    "mse": dict(pred=X, target=X * 0.5),
    "l1": dict(pred=X, target=X * 0.5),
    "huber": dict(pred=X, target=X * 0.5),
    "smooth_l1": dict(pred=X, target=X * 0.5),
    "bce_with_logits": dict(logits=X, target=np.abs(X)),
    "pairwise_distance": dict(x=X, y=X[:5]),
    "contrastive": dict(x1=X, x2=X[::-1], label=np.ones(6)),
    "contrastive_pairwise": dict(embeddings=X, labels=np.array([0, 1, 0, 2, 1, 0])),
    "info_nce": dict(query=X, key=X[::-1]),
    "triplet_margin": dict(anchor=X, positive=X[::-1], negative=X + 1.0),
    "token_log_probs": dict(logits=X, target=np.array([0, 1, 2, 3, 0, 1])),
    "distill_kl": dict(student_logits=X, teacher_logits=X[::-1]),
    "jsd": dict(student_logits=X, teacher_logits=X[::-1]),
}

BAD = {
    "str": "x",
    "None": None,
    "object": object(),
    "ragged": [[1.0, 2.0], [3.0]],
    "complex": 1j,
    "dict": {"a": 1},
    # an integer no float64 holds: float() raises OverflowError, which names nothing
    # (found by hunt14: delta, margin, temperature, label_smoothing, grad_output, ...)
    "int-beyond-float64": 10**400,
}
# a thread count above MAX_THREADS is capped, as documented, not refused
CAPPED = {"num_threads"}

NONE_IS_A_DEFAULT = {"weight", "pos_weight", "y", "softcap", "lse", "num_threads", "stats",
                     "grad_dtype", "grad_entropy"}
# the distillation's hard labels are optional (None: no row ignored); cross_entropy's are not
NONE_IS_A_DEFAULT_OF = {"distill_kl": {"target"}, "jsd": {"target"}}
NOT_HERE = {"return_lse", "return_entropy", "wrt", "out"}


def _cases():
    cases = []
    for name, arguments in GOOD.items():
        for suffix in ("", "_grad", "_value_and_grad"):
            function = getattr(fastloss, name + suffix)
            for parameter in inspect.signature(function).parameters:
                if parameter in NOT_HERE:
                    continue
                for bad_id, bad in BAD.items():
                    if bad_id == "int-beyond-float64" and parameter in CAPPED:
                        continue
                    if bad is None and (parameter in NONE_IS_A_DEFAULT or
                                        parameter in NONE_IS_A_DEFAULT_OF.get(name, ())):
                        continue
                    cases.append(pytest.param(name + suffix, arguments, parameter, bad,
                                              id=f"{name}{suffix}-{parameter}-{bad_id}"))
    return cases


@pytest.mark.parametrize("function, arguments, parameter, bad", _cases())
def test_unconvertible_argument_is_named(function, arguments, parameter, bad):
    call = dict(arguments, **{parameter: bad})
    with pytest.raises((TypeError, ValueError)) as raised:
        getattr(fastloss, function)(**call)
    message = str(raised.value)
    named = message.split(":", 1)[0].split(", ")  # "name: ..." or "a, b, c: ..."
    assert parameter in named or message.startswith(f"{parameter} "), message


def test_grad_output_none_is_refused_not_nan():
    # np.asarray(None, dtype=float64) is NaN: a gradient of NaNs without a word
    with pytest.raises(TypeError, match="^grad_output"):
        fastloss.cross_entropy_grad(X, np.arange(6) % 4, None)
    with pytest.raises(TypeError, match="^grad_output"):
        fastloss.mse_grad(X, X, None)


@pytest.mark.parametrize("name", sorted(GOOD))
def test_grad_output_integer_beyond_int64_is_its_float(name):
    """A Python integer NumPy holds only as an object (2**70) is a grad_output like any
    number: the gradient is the one of float(2**70), in every family (cross_entropy's
    took it, the others refused it as an object array)."""
    gradient = getattr(fastloss, name + "_grad")
    expected = gradient(**GOOD[name], grad_output=float(2**70))
    got = gradient(**GOOD[name], grad_output=2**70)
    for got_one, expected_one in zip(got if isinstance(got, tuple) else (got,),
                                     expected if isinstance(got, tuple) else (expected,)):
        np.testing.assert_array_equal(got_one, expected_one)
