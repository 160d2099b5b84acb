"""Cross-entropy of a linear layer's logits, in float64 (see fastloss.reference).

The logits ``x = hidden @ classifier.T + bias`` are formed whole here (the oracle has no
memory budget), and the loss and the gradient of the logits are
:func:`~fastloss.reference.cross_entropy` and its gradient; the chain rule through the
product then gives the three gradients.
"""

import numpy as np

from fastloss.reference._cross_entropy import cross_entropy, cross_entropy_grad


def _logits(hidden, classifier, bias):
    """``(hidden as (N, H) float64, classifier as float64, logits (..., V))``, or raise."""
    hidden = np.asarray(hidden)
    classifier = np.asarray(classifier)
    for name, array in (("hidden", hidden), ("classifier", classifier)):
        if array.dtype.kind not in "fiu":
            raise TypeError(f"{name}: expected a real numeric array, got dtype {array.dtype}")
    if classifier.ndim != 2:
        raise ValueError(f"classifier: expected shape (V, H), got {classifier.shape}")
    if hidden.ndim == 0 or hidden.shape[-1] != classifier.shape[1]:
        raise ValueError(f"hidden: expected shape (..., {classifier.shape[1]}) (H of "
                         f"classifier), got {hidden.shape}")
    hidden = hidden.astype(np.float64)
    classifier = classifier.astype(np.float64)
    logits = hidden @ classifier.T
    if bias is not None:
        bias = np.asarray(bias, dtype=np.float64)
        if bias.shape != (classifier.shape[0],):
            raise ValueError(f"bias: expected shape ({classifier.shape[0]},), got {bias.shape}")
        logits = logits + bias
    return hidden, classifier, logits


def linear_cross_entropy(hidden, classifier, target, *, bias=None, weight=None,
                         ignore_index=-100, reduction="mean", label_smoothing=0.0, z_loss=0.0,
                         softcap=None):
    r"""``cross_entropy(hidden @ classifier.T + bias, target, ...)`` in float64.

    ``hidden`` (..., H), ``classifier`` (V, H), ``bias`` (V,) or None; the other arguments
    and the result are :func:`cross_entropy`'s with the V classes on the last axis
    (torch's ``F.linear_cross_entropy`` for 2-d hidden).
    """
    _, _, logits = _logits(hidden, classifier, bias)
    return cross_entropy(logits, target, weight=weight, ignore_index=ignore_index,
                         reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss,
                         softcap=softcap)


def linear_cross_entropy_grad(hidden, classifier, target, grad_output=1.0, *, bias=None,
                              weight=None, ignore_index=-100, reduction="mean",
                              label_smoothing=0.0, z_loss=0.0, softcap=None):
    r"""Gradients of ``grad_output * linear_cross_entropy(...)``: ``(d hidden, d classifier)``,
    and ``d bias`` third when a bias is given.

    With ``G = cross_entropy_grad(logits, target, grad_output, ...)`` of shape (N, V)
    (the batch axes of hidden flattened)::

        d hidden = G @ classifier,   d classifier = G.T @ hidden,   d bias = sum_i G_i
    """
    hidden, classifier, logits = _logits(hidden, classifier, bias)
    grad_logits = cross_entropy_grad(logits, target, grad_output, weight=weight,
                                     ignore_index=ignore_index, reduction=reduction,
                                     label_smoothing=label_smoothing, z_loss=z_loss,
                                     softcap=softcap)
    n_classes = classifier.shape[0]
    grad_rows = grad_logits.reshape(-1, n_classes)
    hidden_rows = hidden.reshape(grad_rows.shape[0], classifier.shape[1])  # (H may be 0)
    grads = ((grad_rows @ classifier).reshape(hidden.shape), grad_rows.T @ hidden_rows)
    if bias is not None:
        grads += (grad_rows.sum(axis=0),)
    return grads


def linear_cross_entropy_value_and_grad(hidden, classifier, target, grad_output=1.0, *,
                                        bias=None, weight=None, ignore_index=-100,
                                        reduction="mean", label_smoothing=0.0, z_loss=0.0,
                                        softcap=None):
    """``(linear_cross_entropy(...), linear_cross_entropy_grad(...))``."""
    options = dict(bias=bias, weight=weight, ignore_index=ignore_index, reduction=reduction,
                   label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap)
    return (linear_cross_entropy(hidden, classifier, target, **options),
            linear_cross_entropy_grad(hidden, classifier, target, grad_output, **options))


__all__ = ["linear_cross_entropy", "linear_cross_entropy_grad",
           "linear_cross_entropy_value_and_grad"]
