"""fastloss.torch.sequence_log_probs: the per-sequence log-probabilities of
fastloss.sequence_log_probs under autograd (bradley_terry, dpo and kl_div, pointwise,
are generated from the registry in fastloss/torch/__init__.py)."""
import numpy as np
import torch

import fastloss
from fastloss.torch._autograd import first_order

__all__ = ["sequence_log_probs"]


class _SequenceLogProbs(torch.autograd.Function):
    """Forward: the kernel's sums (or averages) per row. Backward: the mask times each
    row's grad_output (over its mask sum with ``average``), which reads the mask only;
    the mask is not differentiated."""

    @staticmethod
    def forward(ctx, token_log_probs, mask, average, num_threads):
        from fastloss.torch import _numpy_any

        values = fastloss.sequence_log_probs(_numpy_any(token_log_probs), _numpy_any(mask),
                                             average=average, num_threads=num_threads)
        ctx.save_for_backward(token_log_probs, mask)
        ctx.average, ctx.num_threads = average, num_threads
        # half token_log_probs: the float32 values rounded to their dtype, as torch returns
        return torch.from_numpy(np.asarray(values)).to(token_log_probs.dtype)

    @staticmethod
    @first_order
    def backward(ctx, grad_output):
        token_log_probs, mask = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        from fastloss.torch import _numpy_any, _tensor_any

        grad = fastloss.sequence_log_probs_grad(
            _numpy_any(token_log_probs), _numpy_any(mask),
            grad_output.detach().to(torch.float64).numpy(), average=ctx.average,
            num_threads=ctx.num_threads)
        return _tensor_any(grad), None, None, None


def sequence_log_probs(token_log_probs, mask, average=False, *, num_threads=None):
    """Per-sequence log-probabilities (fastloss.sequence_log_probs under autograd): over
    the last axis, ``(token_log_probs * mask).sum(-1)`` as TRL writes it, and with
    ``average`` that divided by ``mask.sum(-1)``; tokens whose mask is 0 are skipped
    (a NaN or -inf there does not reach the sum). Gradients w.r.t. token_log_probs;
    the mask (bool, integer or float) is not differentiated: one that requires grad
    raises a RuntimeError. bfloat16 and float16 token_log_probs are computed in float64
    and their gradient rounded once to their dtype (bfloat16 needs ml_dtypes here)."""
    from fastloss.torch import _cpu_tensor, _half_float_tensor

    function = "fastloss.torch.sequence_log_probs"
    _half_float_tensor(token_log_probs, "token_log_probs", function)
    _cpu_tensor(mask, "mask", function)
    if mask.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(f"{function}: mask: fastloss computes no gradient with respect "
                           f"to the mask; pass mask.detach()")
    if mask.dtype.is_complex:
        raise TypeError(f"{function}: mask: expected a bool, integer or float tensor, got "
                        f"{mask.dtype}")
    return _SequenceLogProbs.apply(token_log_probs, mask, average, num_threads)
