"""Preference and distillation losses in float64 (see fastloss.reference): the reward
model's Bradley-Terry loss, DPO and its variants, the KL divergence of
``torch.nn.functional.kl_div``, and per-sequence sums of token log-probabilities."""

import numpy as np

from fastloss.reference._elementwise import _check_bool, _finite_number, _Pointwise

__all__ = [
    "bradley_terry", "bradley_terry_grad", "bradley_terry_value_and_grad",
    "dpo", "dpo_grad", "dpo_value_and_grad",
    "kl_div", "kl_div_grad", "kl_div_value_and_grad",
    "sequence_log_probs", "sequence_log_probs_grad", "sequence_log_probs_value_and_grad",
]


def _softplus(z):
    """log(1 + exp(z)), exact for any z."""
    return np.logaddexp(0.0, z)


def _sigmoid(z):
    """1 / (1 + exp(-z)), exact for any z."""
    return np.exp(-np.logaddexp(0.0, -z))


# ----------------------------------------------------------------------------------------
# Bradley-Terry: the reward model's loss on preference pairs
# ----------------------------------------------------------------------------------------

def _bradley_terry_z(chosen, rejected, margin, reduction):
    call = _Pointwise({"chosen": chosen, "rejected": rejected}, reduction)
    margin = np.asarray(margin)
    if margin.dtype.kind not in "biuf":
        raise TypeError(f"margin: expected real numbers, got dtype {margin.dtype}")
    margin = margin.astype(np.float64)
    if not np.all(np.isfinite(margin)):
        raise ValueError("margin: expected finite values")
    if np.broadcast_shapes(margin.shape, call.shape) != call.shape:
        raise ValueError(f"margin: shape {margin.shape} does not broadcast to {call.shape}")
    return call, call.values["chosen"] - call.values["rejected"] - margin


def bradley_terry(chosen, rejected, *, margin=0.0, reduction="mean"):
    r"""Bradley-Terry loss of a reward model on preference pairs::

        loss = -log sigmoid(chosen - rejected - margin)

    torchrl's ``reward_model_loss`` and TRL's ``RewardTrainer`` (with its per-pair
    ``margin``); ``margin`` is a number or an array that broadcasts to the pairs' shape.
    chosen and rejected broadcast.
    """
    call, z = _bradley_terry_z(chosen, rejected, margin, reduction)
    with np.errstate(invalid="ignore"):
        return call.reduce(_softplus(-z))


def bradley_terry_grad(chosen, rejected, grad_output=1.0, *, margin=0.0, reduction="mean",
                       wrt="chosen"):
    r"""Gradient of ``grad_output * bradley_terry(...)`` w.r.t. ``chosen`` and/or
    ``rejected``::

        d/dchosen = -sigmoid(-z),   d/drejected = sigmoid(-z),   z = chosen - rejected - margin

    The margin is not differentiated.
    """
    call, z = _bradley_terry_z(chosen, rejected, margin, reduction)
    with np.errstate(invalid="ignore"):
        tail = _sigmoid(-z)
    return call.grads(wrt, grad_output, {"chosen": -tail, "rejected": tail})


def bradley_terry_value_and_grad(chosen, rejected, grad_output=1.0, *, margin=0.0,
                                 reduction="mean", wrt="chosen"):
    """``(bradley_terry(...), bradley_terry_grad(...))``."""
    options = dict(margin=margin, reduction=reduction)
    return (bradley_terry(chosen, rejected, **options),
            bradley_terry_grad(chosen, rejected, grad_output, wrt=wrt, **options))


# ----------------------------------------------------------------------------------------
# DPO (TRL's DPOTrainer.dpo_loss)
# ----------------------------------------------------------------------------------------

_DPO_INPUTS = ("policy_chosen", "policy_rejected", "reference_chosen", "reference_rejected")
_DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo")


def _dpo_call(inputs, beta, loss_type, label_smoothing, reduction):
    beta = _finite_number(beta, "beta")
    if not beta > 0:
        raise ValueError(f"beta: expected a value > 0, got {beta}")
    if loss_type not in _DPO_LOSS_TYPES:
        raise ValueError(f"loss_type: expected one of {_DPO_LOSS_TYPES}, got {loss_type!r}")
    label_smoothing = _finite_number(label_smoothing, "label_smoothing")
    if not 0 <= label_smoothing <= 0.5:
        raise ValueError(f"label_smoothing: expected a value in [0, 0.5], got "
                         f"{label_smoothing}")
    if label_smoothing and loss_type != "sigmoid":
        raise ValueError(f"label_smoothing: only loss_type 'sigmoid' takes it, got "
                         f"{loss_type!r}")
    call = _Pointwise(dict(zip(_DPO_INPUTS, inputs)), reduction)
    v = call.values
    logits = (v["policy_chosen"] - v["policy_rejected"]) - (
        v["reference_chosen"] - v["reference_rejected"])
    return call, logits, beta, label_smoothing


def dpo(policy_chosen, policy_rejected, reference_chosen, reference_rejected, *, beta=0.1,
        loss_type="sigmoid", label_smoothing=0.0, reduction="mean"):
    r"""Direct preference optimisation (Rafailov et al. 2023), as TRL's
    ``DPOTrainer.dpo_loss`` writes it. With the sequence log-probabilities of the chosen
    and rejected answers under the policy and the reference model::

        logits = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected)
        sigmoid: -logsigmoid(beta logits) (1 - label_smoothing)
                 - logsigmoid(-beta logits) label_smoothing      (cDPO)
        hinge:   relu(1 - beta logits)                           (SLiC)
        ipo:     (logits - 1 / (2 beta))**2                      (IPO)

    ``beta > 0``; ``label_smoothing`` in [0, 0.5], for the sigmoid loss only.
    """
    # label_smoothing as a float: a NumPy scalar's 1 - label_smoothing is in its dtype
    call, logits, beta, label_smoothing = _dpo_call(
        (policy_chosen, policy_rejected, reference_chosen, reference_rejected),
        beta, loss_type, label_smoothing, reduction)
    return call.reduce(_dpo_loss(logits, beta, loss_type, label_smoothing))


def _dpo_loss(logits, beta, loss_type, label_smoothing):
    """dpo's loss per pair, from the checked logits and options."""
    with np.errstate(invalid="ignore", over="ignore"):
        if loss_type == "sigmoid":
            z = beta * logits
            return _softplus(-z) * (1 - label_smoothing) + _softplus(z) * label_smoothing
        if loss_type == "hinge":
            return np.maximum(1 - beta * logits, 0.0)
        return (logits - 1 / (2 * beta)) ** 2


def dpo_grad(policy_chosen, policy_rejected, reference_chosen, reference_rejected,
             grad_output=1.0, *, beta=0.1, loss_type="sigmoid", label_smoothing=0.0,
             reduction="mean", wrt="policy_chosen"):
    r"""Gradient of ``grad_output * dpo(...)`` w.r.t. the inputs ``wrt`` names: with s
    the derivative of the loss w.r.t. ``logits``::

        sigmoid: s = beta (-(1 - label_smoothing) sigmoid(-beta logits)
                           + label_smoothing sigmoid(beta logits))
        hinge:   s = -beta where 1 - beta logits > 0, else 0 (relu's backward)
        ipo:     s = 2 (logits - 1 / (2 beta))

    d/dpolicy_chosen = s, d/dpolicy_rejected = -s, d/dreference_chosen = -s,
    d/dreference_rejected = s.
    """
    # label_smoothing as a float: a NumPy scalar's 1 - label_smoothing is in its dtype
    call, logits, beta, label_smoothing = _dpo_call(
        (policy_chosen, policy_rejected, reference_chosen, reference_rejected),
        beta, loss_type, label_smoothing, reduction)
    with np.errstate(invalid="ignore", over="ignore"):
        if loss_type == "sigmoid":
            z = beta * logits
            slope = beta * (-(1 - label_smoothing) * _sigmoid(-z)
                            + label_smoothing * _sigmoid(z))
        elif loss_type == "hinge":
            slope = np.where(1 - beta * logits > 0, -beta, 0.0)
            slope = np.where(np.isnan(logits), -beta, slope)  # relu's backward passes NaN
        else:
            slope = 2 * (logits - 1 / (2 * beta))
    slopes = dict(zip(_DPO_INPUTS, (slope, -slope, -slope, slope)))
    return call.grads(wrt, grad_output, slopes)


def dpo_value_and_grad(policy_chosen, policy_rejected, reference_chosen, reference_rejected,
                       grad_output=1.0, *, beta=0.1, loss_type="sigmoid",
                       label_smoothing=0.0, reduction="mean", wrt="policy_chosen"):
    """``(dpo(...), dpo_grad(...))``."""
    inputs = (policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    options = dict(beta=beta, loss_type=loss_type, label_smoothing=label_smoothing,
                   reduction=reduction)
    return dpo(*inputs, **options), dpo_grad(*inputs, grad_output, wrt=wrt, **options)


def _dpo_magnitudes(policy_chosen, policy_rejected, reference_chosen, reference_rejected,
                    grad_output=1.0, *, beta=0.1, loss_type="sigmoid", label_smoothing=0.0,
                    reduction="mean", wrt="policy_chosen"):
    """The size of the terms of dpo's loss and gradients: the sigmoid loss's slope with
    label smoothing, ``beta ((1 - label_smoothing) sigmoid(-z) + label_smoothing
    sigmoid(z))``, cancels at its root, ``z = log((1 - label_smoothing) /
    label_smoothing)``; its loss is a sum of terms >= 0, and hinge and ipo round as NumPy
    does (each result its own size). ``(loss, grads)`` reduced and differentiated as the
    results are (docs/accuracy.rst, "Results whose terms cancel")."""
    call, logits, beta, label_smoothing = _dpo_call(
        (policy_chosen, policy_rejected, reference_chosen, reference_rejected),
        beta, loss_type, label_smoothing, reduction)
    loss = _dpo_loss(logits, beta, loss_type, label_smoothing)  # its own size
    with np.errstate(invalid="ignore", over="ignore"):
        if loss_type == "sigmoid":
            z = beta * logits
            slope = beta * ((1 - label_smoothing) * _sigmoid(-z)
                            + label_smoothing * _sigmoid(z))
        elif loss_type == "hinge":
            slope = np.full(logits.shape, beta)
        else:
            slope = 2 * np.abs(logits - 1 / (2 * beta))
    return call.magnitudes(wrt, grad_output, loss, dict(zip(_DPO_INPUTS, (slope,) * 4)))


# ----------------------------------------------------------------------------------------
# KL divergence (torch.nn.functional.kl_div)
# ----------------------------------------------------------------------------------------

def _kl_div_call(input, target, reduction, log_target):
    """(the pointwise call, the divisor of the reduced loss): "batchmean" is the sum
    divided by input's first dimension (nothing for a 0-d input), as torch."""
    _check_bool(log_target, "log_target")
    divisor = 1.0
    if reduction == "batchmean":
        reduction = "sum"
        divisor = float(np.shape(input)[0]) if np.ndim(input) else 1.0
    call = _Pointwise({"input": input, "target": target}, reduction)
    return call, divisor


def kl_div(input, target, *, reduction="mean", log_target=False):
    r"""The pointwise KL divergence of ``torch.nn.functional.kl_div``: ``input`` holds
    log-probabilities, ``target`` probabilities (or log-probabilities with
    ``log_target``)::

        log_target False:  target (log target - input)   (torch's xlogy(target, target)
                                                          - target input; 0 where
                                                          target == 0, NaN for an
                                                          infinite input there)
        log_target True:   exp(target) (target - input)

    ``reduction`` "none", "sum", "mean" (over every element) or "batchmean" (the sum
    divided by ``input.shape[0]``, the KL divergence per sample).
    """
    call, divisor = _kl_div_call(input, target, reduction, log_target)
    x, t = call.values["input"], call.values["target"]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if log_target:
            loss = np.exp(t) * (t - x)
        else:
            loss = np.where(t == 0, 0 - t * x, t * (np.log(t) - x))
    result = call.reduce(loss)
    with np.errstate(invalid="ignore", divide="ignore"):
        return result if divisor == 1.0 else float(np.float64(result) / np.float64(divisor))


def kl_div_grad(input, target, grad_output=1.0, *, reduction="mean", log_target=False,
                wrt="input"):
    r"""Gradient of ``grad_output * kl_div(...)`` w.r.t. ``input`` and/or ``target``::

        log_target False:  d/dinput = -target,  d/dtarget = log target + 1 - input
                           (NaN where target == 0, as torch's autograd of xlogy)
        log_target True:   d/dinput = -exp(target),
                           d/dtarget = exp(target) (target - input + 1)

    For "batchmean" both are divided by ``input.shape[0]``.
    """
    call, divisor = _kl_div_call(input, target, reduction, log_target)
    x, t = call.values["input"], call.values["target"]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if log_target:
            slopes = {"input": -np.exp(t), "target": np.exp(t) * (t - x + 1)}
        else:
            slopes = {"input": -t, "target": np.where(t == 0, np.nan, np.log(t) + 1 - x)}
        upstream = np.asarray(grad_output, dtype=np.float64) / np.float64(divisor)
    return call.grads(wrt, upstream, slopes)


def kl_div_value_and_grad(input, target, grad_output=1.0, *, reduction="mean",
                          log_target=False, wrt="input"):
    """``(kl_div(...), kl_div_grad(...))``."""
    options = dict(reduction=reduction, log_target=log_target)
    return (kl_div(input, target, **options),
            kl_div_grad(input, target, grad_output, wrt=wrt, **options))


def _kl_div_magnitudes(input, target, grad_output=1.0, *, reduction="mean", log_target=False,
                       wrt="input"):
    """The size of the terms of kl_div's loss and gradients, which cancel where ``x``
    nears ``log t`` (the loss) or ``log t + 1`` (the target's gradient); ``w = exp(t)``::

        log_target False:  loss |t| (|log t| + |x|) (0 at t == 0),  d/dinput |t|,
                           d/dtarget |log t| + 1 + |x|
        log_target True:   loss w (|t| + |x|),  d/dinput w,  d/dtarget w (|t| + |x| + 1)

    ``(loss, grads)`` reduced and differentiated as the results are (docs/accuracy.rst,
    "Results whose terms cancel")."""
    call, divisor = _kl_div_call(input, target, reduction, log_target)
    x, t = call.values["input"], call.values["target"]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if log_target:
            w = np.exp(t)
            loss = w * (np.abs(t) + np.abs(x))
            slopes = {"input": w, "target": w * (np.abs(t) + np.abs(x) + 1.0)}
        else:
            log_t = np.abs(np.log(np.abs(t)))
            loss = np.where(t == 0, 0.0, np.abs(t) * (log_t + np.abs(x)))
            slopes = {"input": np.abs(t), "target": log_t + 1.0 + np.abs(x)}
        upstream = np.asarray(grad_output, dtype=np.float64) / np.float64(divisor)
    loss, grads = call.magnitudes(wrt, upstream, loss, slopes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (loss if divisor == 1.0 else float(np.float64(loss) / np.float64(divisor)),
                grads)


# ----------------------------------------------------------------------------------------
# Sequence log-probabilities: per-row sums of token log-probabilities under a mask
# ----------------------------------------------------------------------------------------

def _sequence_call(token_log_probs, mask):
    values = np.asarray(token_log_probs)
    if values.dtype.kind != "f" or values.ndim < 1:
        raise TypeError("token_log_probs: expected a float array of at least one dimension")
    mask = np.asarray(mask)
    if mask.shape != values.shape:
        raise ValueError(f"mask: expected the shape of token_log_probs {values.shape}, "
                         f"got {mask.shape}")
    return values.astype(np.float64), mask.astype(np.float64)


def sequence_log_probs(token_log_probs, mask, *, average=False):
    r"""The log-probability of each sequence: over the last axis (tokens),
    ``sum(mask * token_log_probs)`` over the tokens whose mask is not 0 (a NaN or -inf
    at a masked-out token is skipped), or with ``average`` that divided by ``sum(mask)``
    (TRL's ``average_log_prob``; IPO's length-normalised form; NaN for a row whose mask
    is all 0). (..., T) -> (...).
    """
    values, mask = _sequence_call(token_log_probs, mask)
    with np.errstate(invalid="ignore"):
        total = np.sum(np.where(mask != 0, mask * values, 0.0), axis=-1)
    if average:
        with np.errstate(invalid="ignore", divide="ignore"):
            total = total / np.sum(mask, axis=-1)
    return np.array(total, dtype=np.float64)


def sequence_log_probs_grad(token_log_probs, mask, grad_output=1.0, *, average=False):
    """Gradient of ``sum(grad_output * sequence_log_probs(...))`` w.r.t. the token
    log-probabilities: ``mask * grad_output[..., None]`` (divided by the row's mask sum
    with ``average``)."""
    values, mask = _sequence_call(token_log_probs, mask)
    upstream = np.broadcast_to(np.asarray(grad_output, dtype=np.float64), values.shape[:-1])
    scale = upstream
    if average:
        with np.errstate(invalid="ignore", divide="ignore"):
            scale = upstream / np.sum(mask, axis=-1)
    return mask * scale[..., np.newaxis]


def sequence_log_probs_value_and_grad(token_log_probs, mask, grad_output=1.0, *,
                                      average=False):
    """``(sequence_log_probs(...), sequence_log_probs_grad(...))``."""
    return (sequence_log_probs(token_log_probs, mask, average=average),
            sequence_log_probs_grad(token_log_probs, mask, grad_output, average=average))
