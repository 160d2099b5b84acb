"""Masked arrays (numpy.ma): every array argument of every public function refuses one
with masked elements, with a ValueError naming the argument.  np.asarray drops the mask,
so the masked elements used to enter the loss with whatever data they held (where
NumPy's own reductions skip them): a silently different number.  A masked array with
nothing masked is its data: the same result, bit for bit."""

import inspect

import numpy as np
import pytest

import fastloss

RNG = np.random.default_rng(20261128)
X = RNG.standard_normal((6, 5))
Y = RNG.standard_normal((6, 5))
LABELS = np.array([0, 1, 2, 3, 4, 1])
BOXES = np.concatenate([RNG.uniform(0, 1, (6, 2)), RNG.uniform(2, 3, (6, 2))], axis=1)
BLOCK_STATS = fastloss.cross_entropy_block_stats(X, LABELS)

# one call of each public function, with every array argument given as an array
CALLS = {
    "cross_entropy": dict(logits=X, target=LABELS, weight=np.linspace(0.5, 1.5, 5)),
    "cross_entropy-soft": dict(logits=X, target=np.abs(Y)),
    "linear_cross_entropy": dict(hidden=X, classifier=Y[:4], target=LABELS % 4,
                                 bias=np.arange(4.0), weight=np.ones(4)),
    "linear_token_log_probs": dict(hidden=X, classifier=Y[:4], target=LABELS % 4,
                                   bias=np.arange(4.0)),
    "mse": dict(pred=X, target=Y),
    "l1": dict(pred=X, target=Y),
    "huber": dict(pred=X, target=Y),
    "smooth_l1": dict(pred=X, target=Y),
    "bce_with_logits": dict(logits=X, target=np.abs(Y) / 3, weight=np.abs(Y[0]),
                            pos_weight=np.abs(Y[1])),
    "sigmoid_focal": dict(logits=X, target=(Y > 0) * 1.0),
    "margin_ranking": dict(x1=X, x2=Y, target=np.sign(Y)),
    "poisson_nll": dict(input=X, target=np.abs(Y)),
    "gaussian_nll": dict(input=X, target=Y, var=np.abs(Y) + 0.5),
    "pinball": dict(pred=X, target=Y, quantile=np.linspace(0.1, 0.9, 5)),
    "soft_margin": dict(input=X, target=np.sign(Y)),
    "bradley_terry": dict(chosen=X[0], rejected=Y[0], margin=np.abs(Y[1])),
    "dpo": dict(policy_chosen=X[0], policy_rejected=X[1], reference_chosen=Y[0],
                reference_rejected=Y[1]),
    "kl_div": dict(input=-np.abs(X), target=np.abs(Y) / 5),
    "giou_loss": dict(boxes1=BOXES, boxes2=BOXES[::-1]),
    "diou_loss": dict(boxes1=BOXES, boxes2=BOXES[::-1]),
    "ciou_loss": dict(boxes1=BOXES, boxes2=BOXES[::-1]),
    "pairwise_distance": dict(x=X, y=Y[:4]),
    "contrastive": dict(x1=X, x2=Y, label=(LABELS % 2) * 1.0),
    "contrastive_pairwise": dict(embeddings=X, labels=LABELS % 3),
    "info_nce": dict(query=X, key=Y),
    "triplet_margin": dict(anchor=X, positive=Y, negative=X + Y),
    "token_log_probs": dict(logits=X, target=LABELS),
    "distill_kl": dict(student_logits=X, teacher_logits=Y, target=LABELS),
    "jsd": dict(student_logits=X, teacher_logits=Y, target=LABELS),
    "sequence_log_probs": dict(token_log_probs=-np.abs(X), mask=(Y > 0) * 1.0),
    "cross_entropy_block_stats": dict(logits_block=X[:, 2:], target=LABELS, class_offset=2,
                                      num_classes=5),
    "cross_entropy_from_stats": dict(stats=BLOCK_STATS, target=LABELS),
    "cross_entropy_rebase_stats": dict(stats=BLOCK_STATS, new_max=np.full(6, 4.0)),
}

GRADS = {"grad_output": np.linspace(0.5, 1.5, 6)}


def _functions(call):
    name = call.split("-")[0]
    names = [name]
    if hasattr(fastloss, name + "_grad"):
        names += [name + "_grad", name + "_value_and_grad"]
    return [getattr(fastloss, each) for each in names]


def _cases():
    cases = []
    for call, arguments in CALLS.items():
        for function in _functions(call):
            for argument, value in arguments.items():
                if isinstance(value, np.ndarray) and value.ndim:
                    cases.append(pytest.param(function, arguments, argument,
                                              id=f"{call}-{function.__name__}-{argument}"))
    return cases


def _masked(value, masked_elements):
    mask = np.zeros(value.shape, dtype=bool)
    mask.flat[:masked_elements] = True
    return np.ma.MaskedArray(value, mask=mask)


@pytest.mark.parametrize("function, arguments, argument", _cases())
def test_a_masked_element_is_refused_naming_the_argument(function, arguments, argument):
    call = dict(arguments, **{argument: _masked(arguments[argument], 1)})
    with pytest.raises(ValueError, match=f"^{argument}: a masked array with 1 masked "):
        function(**call)


def _leaves(result):
    """The arrays and numbers of a result: a loss, a gradient, or tuples of them."""
    if isinstance(result, tuple):
        return [leaf for part in result for leaf in _leaves(part)]
    return [result]


@pytest.mark.parametrize("function, arguments, argument", _cases())
def test_a_masked_array_with_nothing_masked_is_its_data(function, arguments, argument):
    plain = _leaves(function(**arguments))
    unmasked = _leaves(function(**dict(arguments, **{argument: _masked(arguments[argument], 0)})))
    assert len(unmasked) == len(plain)
    for got, expected in zip(unmasked, plain):
        assert type(got) is type(expected)
        got, expected = np.asarray(got), np.asarray(expected)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert got.tobytes() == expected.tobytes()


def test_a_masked_grad_output_is_refused():
    with pytest.raises(ValueError, match="^grad_output: a masked array with 1 masked "):
        fastloss.mse_grad(X, Y, _masked(np.ones_like(X), 1), reduction="none")
    with pytest.raises(ValueError, match="^grad_output: a masked array with 1 masked "):
        fastloss.cross_entropy_grad(X, LABELS, _masked(GRADS["grad_output"], 1),
                                    reduction="none")


@pytest.mark.parametrize("position", [0, 1])
def test_the_merge_refuses_a_masked_block_naming_it(position):
    blocks = [BLOCK_STATS, BLOCK_STATS]
    blocks[position] = _masked(BLOCK_STATS, 1)
    with pytest.raises(ValueError,
                       match=rf"^stats_sequence\[{position}\]: a masked array with 1 masked "):
        fastloss.cross_entropy_merge_stats(blocks)


def test_every_public_function_with_array_arguments_is_in_the_table():
    covered = {call.split("-")[0] for call in CALLS} | {"cross_entropy_merge_stats"}
    public = {name for name in fastloss.__all__
              if callable(getattr(fastloss, name)) and not name.endswith("_grad")
              and any(parameter.default is inspect.Parameter.empty
                      for parameter in inspect.signature(getattr(fastloss, name)).parameters.values())}
    assert public <= covered | {"set_num_threads"}, public - covered
