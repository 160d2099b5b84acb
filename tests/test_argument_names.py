"""Every argument of every public function, given something NumPy cannot turn into numbers
(a string, None, an arbitrary object, a ragged nested list, a complex number, a dict),
raises TypeError or ValueError whose message starts with that argument's name: never
NumPy's own "could not convert string to float" or "inhomogeneous shape", which name none.

Arguments whose None is a documented default (weight, pos_weight, y, softcap, lse,
num_threads, stats, grad_dtype) are not given None; return_lse takes any truth value, as Python's
``if`` does; ``wrt`` (the elementwise losses) is left to test_elementwise_errors.py.
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
}

BAD = {
    "str": "x",
    "None": None,
    "object": object(),
    "ragged": [[1.0, 2.0], [3.0]],
    "complex": 1j,
    "dict": {"a": 1},
}

NONE_IS_A_DEFAULT = {"weight", "pos_weight", "y", "softcap", "lse", "num_threads", "stats",
                     "grad_dtype"}
NOT_HERE = {"return_lse", "wrt", "out"}


def _cases():
    cases = []
    for name, arguments in GOOD.items():
        for suffix in ("", "_grad", "_value_and_grad"):
            function = getattr(fastloss, name + suffix)
            for parameter in inspect.signature(function).parameters:
                if parameter in NOT_HERE:
                    continue
                for bad_id, bad in BAD.items():
                    if bad is None and parameter in NONE_IS_A_DEFAULT:
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
