"""Objectives of language models over the vocabulary (the public NumPy API): token
log-probabilities with the entropy, and distillation from a teacher's logits (forward
KL, reverse KL, generalised Jensen-Shannon divergence).

The kernels are in csrc/vocab.c, every argument is checked by the Cython layer
(fastloss/_vocab.pxi); fastloss.reference has the float64 oracle of each function, and
docs/distillation.rst the formulas and conventions.
"""
from fastloss import _kernels
from fastloss._config import resolve_num_threads
from fastloss._validation import real_scalar

__all__ = ["distill_kl", "distill_kl_grad", "distill_kl_value_and_grad", "jsd", "jsd_grad",
           "jsd_value_and_grad", "token_log_probs", "token_log_probs_grad",
           "token_log_probs_value_and_grad"]


# ----------------------------------------------------------------------------------------
# Token log-probabilities and entropy
# ----------------------------------------------------------------------------------------

def token_log_probs(logits, target, *, temperature=1.0, ignore_index=-100,
                    return_entropy=False, num_threads=None):
    """Log-probability of each row's target token, ``log softmax(logits / T)[target]``.

    Parameters
    ----------
    logits : array_like, float32, float64, float16 or bfloat16, shape (..., V)
        Unnormalised scores over the vocabulary (last axis). Half precision is read in
        place and computed in float32 (docs/accuracy.rst, "Half precision").
    target : array_like of int, shape (...)
        The token of each row (e.g. the sampled or the next token).
    temperature : float > 0
        T: the distribution is ``softmax(logits / T)``.
    ignore_index : int
        Rows whose target equals it get log-probability 0 and entropy 0.
    return_entropy : bool
        Also return the entropy ``H = -sum_c p_c log p_c`` of each row's distribution.
    num_threads : int, optional
        Threads for this call (default: fastloss.get_num_threads()).

    Returns
    -------
    log_prob : ndarray, shape (...), the logits' dtype (float32 for half logits)
    entropy : ndarray, shape (...), the logits' dtype (float32 for half logits)
        Only with ``return_entropy=True``.

    Notes
    -----
    One read of the logits: an online log-sum-exp that also accumulates
    ``W = sum_c exp(a_c) a_c`` with ``a_c = (x_c - max) / T``, so that
    ``log p_t = a_t - log S`` and ``H = log S - W / S``. torch's unfused form is
    ``log_softmax(logits / T, -1).gather(-1, target[..., None])`` and
    ``-(softmax * log_softmax).sum(-1)``. A row with a +inf or NaN logit, or every logit
    -inf, gives NaN (as torch's log_softmax).
    """
    log_prob, entropy, _ = _kernels.tlp_call(
        False, logits, target, temperature, ignore_index, True, bool(return_entropy),
        num_threads=resolve_num_threads(num_threads))
    return (log_prob, entropy) if return_entropy else log_prob


def token_log_probs_grad(logits, target, grad_output=1.0, *, grad_entropy=None,
                         temperature=1.0, ignore_index=-100, out=None, num_threads=None,
                         grad_dtype=None):
    """Gradient of ``sum(grad_output * log_prob + grad_entropy * entropy)`` w.r.t. the logits.

    ``grad_output`` (the upstream gradient of the log-probabilities) and ``grad_entropy``
    (of the entropies; None: 0) are scalars or arrays of the rows' shape (...). Per row,
    with p = softmax(logits / T)::

        d log p_t / d x_j = ([j = t] - p_j) / T,   d H / d x_j = -p_j (log p_j + H) / T

    Ignored rows get a zero gradient. ``out`` (the logits' shape and dtype) receives it.
    ``grad_dtype``: the gradient's dtype, None (the logits') or, for float16 / bfloat16
    logits, float32.
    The row's statistics and the gradient take two sweeps of the row, the second from
    the cache: one read of the logits from memory and one write.
    """
    _, _, grad = _kernels.tlp_call(
        True, logits, target, temperature, ignore_index, False, False, grad_output,
        grad_entropy, out, resolve_num_threads(num_threads), grad_dtype)
    return grad


def token_log_probs_value_and_grad(logits, target, grad_output=1.0, *, grad_entropy=None,
                                   temperature=1.0, ignore_index=-100, return_entropy=False,
                                   out=None, num_threads=None,
                                   grad_dtype=None):
    """``(token_log_probs(...), token_log_probs_grad(...))`` from one visit to each row.

    The value is ``log_prob``, or ``(log_prob, entropy)`` with ``return_entropy=True``.
    """
    log_prob, entropy, grad = _kernels.tlp_call(
        True, logits, target, temperature, ignore_index, True, bool(return_entropy),
        grad_output, grad_entropy, out, resolve_num_threads(num_threads), grad_dtype)
    return ((log_prob, entropy) if return_entropy else log_prob), grad


# ----------------------------------------------------------------------------------------
# Distillation
# ----------------------------------------------------------------------------------------

_DIRECTIONS = {"forward": _kernels.DIVERGENCE_FORWARD_KL,
               "reverse": _kernels.DIVERGENCE_REVERSE_KL}


def _direction(direction):
    if type(direction) is not str or direction not in _DIRECTIONS:
        raise ValueError(f"direction: expected 'forward' (KL(teacher || student)) or "
                         f"'reverse' (KL(student || teacher)), got {direction!r:.80}")
    return _DIRECTIONS[direction]


def _jsd_divergence(beta):
    """The kernel's divergence for ``beta``: 0 and 1 are the forward and the reverse KL
    (Liger-Kernel's and TRL's convention), anything between the JSD."""
    beta = real_scalar(beta, "beta", low=0.0, high=1.0)
    if beta == 0.0:
        return _kernels.DIVERGENCE_FORWARD_KL, beta
    if beta == 1.0:
        return _kernels.DIVERGENCE_REVERSE_KL, beta
    return _kernels.DIVERGENCE_JSD, beta


def distill_kl(student_logits, teacher_logits, *, temperature=1.0, direction="forward",
               target=None, ignore_index=-100, reduction="batchmean", num_threads=None):
    """KL divergence between the teacher's and the student's softmax over the vocabulary.

    Parameters
    ----------
    student_logits, teacher_logits : array_like, float32/64, float16 or bfloat16, (..., V)
        The two models' logits for the same rows (one shape, one dtype; half precision
        is computed in float32 and the loss returned in float32).
    temperature : float > 0
        Both distributions are ``softmax(logits / T)``: Q the student's, P the teacher's.
    direction : {"forward", "reverse"}
        "forward": ``KL(P || Q) = sum_c p_c (log p_c - log q_c)`` (the usual distillation
        loss, ``F.kl_div(log_softmax(student / T), log_softmax(teacher / T),
        log_target=True)``); "reverse": ``KL(Q || P)`` (mode-seeking, as MiniLLM's).
    target : array_like of int, shape (...), optional
        Hard labels, compared with ``ignore_index`` only: rows where they are equal
        contribute no loss and no gradient, and are not counted by "batchmean".
    ignore_index : int
    reduction : {"batchmean", "sum", "none"}
        "batchmean": the sum over the vocabulary averaged over the rows not ignored
        (torch's kl_div "batchmean" with ignored rows left out; Liger's and TRL's
        reduction); "none": one value per row, shape (...), the logits' dtype.
    num_threads : int, optional

    Returns
    -------
    loss : float, or ndarray for "none"

    Notes
    -----
    No ``T**2`` factor is applied (as TRL's and Liger's losses). Each row of both inputs
    is read from memory once.
    """
    loss, _ = _kernels.distill_call(
        False, student_logits, teacher_logits, _direction(direction), 0.0, temperature,
        target, ignore_index, reduction, num_threads=resolve_num_threads(num_threads))
    return loss


def distill_kl_grad(student_logits, teacher_logits, grad_output=1.0, *, temperature=1.0,
                    direction="forward", target=None, ignore_index=-100,
                    reduction="batchmean", wrt="student_logits", out=None, num_threads=None,
                    grad_dtype=None):
    """Gradient of ``grad_output * distill_kl(...)`` w.r.t. ``wrt``.

    ``wrt`` is "student_logits" (the default: the teacher is usually frozen),
    "teacher_logits", or a tuple of both (the result is then a tuple in that order).
    ``grad_output`` is a scalar, or for "none" an array of the rows' shape. ``out`` is an
    array (or a tuple, one per name in ``wrt``) of the logits' shape and dtype
    (``grad_dtype``: None, the logits' dtype, or float32 for half logits). Per row,
    with scale ``s = grad_output / T`` (and / the valid rows for "batchmean")::

        forward KL:  d/d student = s (q - p),             d/d teacher = s p (log p - log q - KL)
        reverse KL:  d/d student = s q (log q - log p - KL), d/d teacher = s (p - q)

    One read of each input from memory and one write of each gradient.
    """
    return _kernels.distill_call(
        True, student_logits, teacher_logits, _direction(direction), 0.0, temperature,
        target, ignore_index, reduction, grad_output, wrt, out,
        resolve_num_threads(num_threads), grad_dtype)[1]


def distill_kl_value_and_grad(student_logits, teacher_logits, grad_output=1.0, *,
                              temperature=1.0, direction="forward", target=None,
                              ignore_index=-100, reduction="batchmean", wrt="student_logits",
                              out=None, num_threads=None,
                              grad_dtype=None):
    """``(distill_kl(...), distill_kl_grad(...))`` from one visit to each row."""
    return _kernels.distill_call(
        True, student_logits, teacher_logits, _direction(direction), 0.0, temperature,
        target, ignore_index, reduction, grad_output, wrt, out,
        resolve_num_threads(num_threads), grad_dtype)


def jsd(student_logits, teacher_logits, *, beta=0.5, temperature=1.0, target=None,
        ignore_index=-100, reduction="batchmean", num_threads=None):
    """Generalised Jensen-Shannon divergence between the teacher's P and the student's Q.

    ``JSD_beta = beta KL(P || M) + (1 - beta) KL(Q || M)`` with the mixture
    ``M = beta P + (1 - beta) Q`` and both distributions ``softmax(logits / T)``: beta
    weighs the teacher, as in Liger-Kernel's ``LigerJSD`` and TRL's GKD
    ``generalized_jsd_loss``, and like theirs ``beta = 0`` is taken as the forward
    ``KL(P || Q)`` and ``beta = 1`` as the reverse ``KL(Q || P)`` (the JSD itself tends to
    0 at both ends). ``beta = 0.5`` is the symmetric Jensen-Shannon divergence.
    ``beta`` must be in [0, 1]; the other arguments are :func:`distill_kl`'s.
    """
    divergence, beta = _jsd_divergence(beta)
    loss, _ = _kernels.distill_call(
        False, student_logits, teacher_logits, divergence, beta, temperature, target,
        ignore_index, reduction, num_threads=resolve_num_threads(num_threads))
    return loss


def jsd_grad(student_logits, teacher_logits, grad_output=1.0, *, beta=0.5, temperature=1.0,
             target=None, ignore_index=-100, reduction="batchmean", wrt="student_logits",
             out=None, num_threads=None,
             grad_dtype=None):
    """Gradient of ``grad_output * jsd(...)`` w.r.t. ``wrt`` (as in :func:`distill_kl_grad`).

    For 0 < beta < 1, with ``s = grad_output / T`` (and / the valid rows for
    "batchmean")::

        d/d student = s (1 - beta) q (log q - log m - KL(Q || M))
        d/d teacher = s beta p (log p - log m - KL(P || M))
    """
    divergence, beta = _jsd_divergence(beta)
    return _kernels.distill_call(
        True, student_logits, teacher_logits, divergence, beta, temperature, target,
        ignore_index, reduction, grad_output, wrt, out, resolve_num_threads(num_threads),
        grad_dtype)[1]


def jsd_value_and_grad(student_logits, teacher_logits, grad_output=1.0, *, beta=0.5,
                       temperature=1.0, target=None, ignore_index=-100, reduction="batchmean",
                       wrt="student_logits", out=None, num_threads=None,
                       grad_dtype=None):
    """``(jsd(...), jsd_grad(...))`` from one visit to each row."""
    divergence, beta = _jsd_divergence(beta)
    return _kernels.distill_call(
        True, student_logits, teacher_logits, divergence, beta, temperature, target,
        ignore_index, reduction, grad_output, wrt, out, resolve_num_threads(num_threads),
        grad_dtype)
