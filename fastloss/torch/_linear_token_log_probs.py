"""``fastloss.torch.linear_token_log_probs`` and ``LinearTokenLogProbs``: token
log-probabilities (and entropies) of ``F.linear(hidden, classifier, bias)`` computed by
:func:`fastloss.linear_token_log_probs` (blocks of rows; the logits never exist).

Imported by fastloss.torch, which exports both names.
"""
import torch
from torch.autograd.function import once_differentiable

from fastloss._config import resolve_num_threads
from fastloss.linear_token_log_probs import _run
from fastloss.torch import _check_float_tensor, _cpu_tensor, _numpy

__all__ = ["linear_token_log_probs", "LinearTokenLogProbs"]

_FUNCTION = "fastloss.torch.linear_token_log_probs"
_GRADIENTS = ("hidden", "classifier", "bias")


class _LinearTokenLogProbs(torch.autograd.Function):
    """fastloss.linear_token_log_probs on tensors (zero-copy NumPy views of their memory).

    The forward computes the values only: the gradient depends on both upstream
    gradients, known in the backward, which runs the pass over the blocks again (each
    block's logits formed once more) for the inputs that require grad, and only those."""

    @staticmethod
    def forward(ctx, hidden, classifier, bias, target, options, return_entropy):
        arrays = tuple(_numpy(tensor) for tensor in (hidden, classifier, bias, target))
        log_prob, entropy, _ = _run(arrays[0], arrays[1], arrays[3], arrays[2],
                                    return_entropy=return_entropy, **options)
        ctx.save_for_backward(hidden, classifier, bias, target)
        ctx.options = options
        ctx.set_materialize_grads(False)
        if return_entropy:
            return torch.from_numpy(log_prob), torch.from_numpy(entropy)
        return torch.from_numpy(log_prob)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_log_prob, grad_entropy=None):
        needs = ctx.needs_input_grad[:3]
        tensors = ctx.saved_tensors  # torch's error if the graph was freed
        want = tuple(name for name, need in zip(_GRADIENTS, needs) if need)
        if not want or (grad_log_prob is None and grad_entropy is None):
            return None, None, None, None, None, None
        hidden, classifier, bias, target = (_numpy(tensor) for tensor in tensors)
        upstream = 0.0 if grad_log_prob is None else grad_log_prob.detach().numpy()
        upstream_entropy = None if grad_entropy is None else grad_entropy.detach().numpy()
        _, _, grads = _run(hidden, classifier, target, bias, return_entropy=False,
                           want_value=False, grad_output=upstream,
                           grad_entropy=upstream_entropy, want=want, **ctx.options)
        grads = {name: torch.from_numpy(grad) for name, grad in grads.items()
                 if grad is not None}
        return (*(grads.get(name) if need else None for name, need in zip(_GRADIENTS, needs)),
                None, None, None)


def linear_token_log_probs(hidden, classifier, target, *, bias=None, temperature=1.0,
                           ignore_index=-100, return_entropy=False, block_rows=None,
                           num_threads=None):
    """:func:`fastloss.linear_token_log_probs` on tensors: ``log_softmax(F.linear(hidden,
    classifier, bias) / T, -1)`` gathered at ``target``, and with ``return_entropy`` the
    entropy of each row's distribution, without forming the logits.

    ``hidden`` (..., H) float32 or float64, ``classifier`` (V, H) and ``bias`` (V,) of its
    dtype, ``target`` an integer tensor of shape ``hidden.shape[:-1]``; the results have
    that shape and hidden's dtype, 0 where ``target`` is ``ignore_index``. Differentiable
    w.r.t. ``hidden``, ``classifier`` and ``bias`` (each computed only when it requires
    grad) for any weighted sum of both outputs: the backward forms each block's logits
    again (one more product per block) and never keeps N x V. ``target`` is not
    differentiable. First order (``once_differentiable``).
    """
    _check_float_tensor(hidden, "hidden", _FUNCTION)
    _check_float_tensor(classifier, "classifier", _FUNCTION)
    if bias is not None:
        _check_float_tensor(bias, "bias", _FUNCTION)
    _cpu_tensor(target, "target", _FUNCTION)
    if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
        raise TypeError(f"{_FUNCTION}: target: expected an integer tensor, got {target.dtype}")
    options = {"temperature": temperature, "ignore_index": ignore_index,
               "block_rows": block_rows, "num_threads": resolve_num_threads(num_threads)}
    return _LinearTokenLogProbs.apply(hidden, classifier, bias, target, options,
                                      bool(return_entropy))


class LinearTokenLogProbs(torch.nn.Module):
    """A linear layer ``self.linear`` (``torch.nn.Linear(in_features, num_classes)``, its
    ``state_dict`` torch's) whose forward gives :func:`linear_token_log_probs` of its
    logits: ``forward(hidden, target)``."""

    def __init__(self, in_features, num_classes, *, bias=False, device=None, dtype=None,
                 temperature=1.0, ignore_index=-100, return_entropy=False, block_rows=None,
                 num_threads=None):
        super().__init__()
        self.linear = torch.nn.Linear(in_features, num_classes, bias=bias, device=device,
                                      dtype=dtype)
        self.temperature, self.ignore_index = temperature, ignore_index
        self.return_entropy = return_entropy
        self.block_rows, self.num_threads = block_rows, num_threads

    def forward(self, hidden, target):
        return linear_token_log_probs(hidden, self.linear.weight, target,
                                      bias=self.linear.bias, temperature=self.temperature,
                                      ignore_index=self.ignore_index,
                                      return_entropy=self.return_entropy,
                                      block_rows=self.block_rows,
                                      num_threads=self.num_threads)

    def extra_repr(self):
        return (f"temperature={self.temperature}, ignore_index={self.ignore_index}, "
                f"return_entropy={self.return_entropy}")
