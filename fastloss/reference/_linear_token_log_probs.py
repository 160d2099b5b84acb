"""Token log-probabilities and entropy of a linear layer's logits, in float64 (see
fastloss.reference).

The logits ``x = hidden @ classifier.T + bias`` are formed whole (the oracle has no
memory budget); the values and the gradient of the logits are
:func:`~fastloss.reference.token_log_probs` and its gradient, and the chain rule through
the product gives the three gradients.
"""

from fastloss.reference._linear_cross_entropy import _logits
from fastloss.reference._vocab import token_log_probs, token_log_probs_grad


def linear_token_log_probs(hidden, classifier, target, *, bias=None, temperature=1.0,
                           ignore_index=-100, return_entropy=False):
    """``token_log_probs(hidden @ classifier.T + bias, target, ...)`` in float64:
    ``hidden`` (..., H), ``classifier`` (V, H), ``bias`` (V,) or None, ``target`` of shape
    ``hidden.shape[:-1]``."""
    _, _, logits = _logits(hidden, classifier, bias)
    return token_log_probs(logits, target, temperature=temperature, ignore_index=ignore_index,
                           return_entropy=return_entropy)


def linear_token_log_probs_grad(hidden, classifier, target, grad_output=1.0, *,
                                grad_entropy=None, bias=None, temperature=1.0,
                                ignore_index=-100):
    """Gradients of ``sum(grad_output * log_prob + grad_entropy * entropy)``, that is
    ``(d hidden, d classifier)`` and ``d bias`` third when a bias is given.

    With ``G = token_log_probs_grad(logits, target, grad_output, grad_entropy, ...)`` of
    shape (N, V) (the batch axes of hidden flattened)::

        d hidden = G @ classifier,   d classifier = G.T @ hidden,   d bias = sum_i G_i
    """
    hidden, classifier, logits = _logits(hidden, classifier, bias)
    grad_logits = token_log_probs_grad(logits, target, grad_output, grad_entropy=grad_entropy,
                                       temperature=temperature, ignore_index=ignore_index)
    n_classes, n_features = classifier.shape
    grad_rows = grad_logits.reshape(-1, n_classes)
    hidden_rows = hidden.reshape(grad_rows.shape[0], n_features)  # (H may be 0)
    grads = ((grad_rows @ classifier).reshape(hidden.shape), grad_rows.T @ hidden_rows)
    if bias is not None:
        grads += (grad_rows.sum(axis=0),)
    return grads


def linear_token_log_probs_value_and_grad(hidden, classifier, target, grad_output=1.0, *,
                                          grad_entropy=None, bias=None, temperature=1.0,
                                          ignore_index=-100, return_entropy=False):
    """``(linear_token_log_probs(...), linear_token_log_probs_grad(...))``."""
    options = dict(bias=bias, temperature=temperature, ignore_index=ignore_index)
    return (linear_token_log_probs(hidden, classifier, target, return_entropy=return_entropy,
                                   **options),
            linear_token_log_probs_grad(hidden, classifier, target, grad_output,
                                        grad_entropy=grad_entropy, **options))


__all__ = ["linear_token_log_probs", "linear_token_log_probs_grad",
           "linear_token_log_probs_value_and_grad"]
