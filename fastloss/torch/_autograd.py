"""First-order backward passes: what the adapter's autograd Functions use instead of
``torch.autograd.function.once_differentiable``.

torch's decorator marks the gradients it returns as not differentiable again only when
one of the backward's arguments (the upstream gradients) requires grad. Under
``create_graph=True`` the usual upstream is a constant (the 1 of ``loss.backward()`` or
of ``torch.autograd.grad(loss, x, create_graph=True)``), so the gradients came back as
plain constants, and a second derivative through them silently lost fastloss's term:
``torch.autograd.functional.hessian`` of a fastloss loss gave zeros, and the second
derivative of ``loss + (x ** 2).sum()`` gave 2 where torch's loss gives 2 + its own.

Here, whenever the backward runs in grad mode (autograd does that exactly under
``create_graph=True``), the gradients it returns come out of torch's DelayedError node,
whose inputs are those gradients and the tensors they depend on: the upstream gradients
and the forward's inputs that require grad (the Function's saved tensors; the
cross-entropy's logits, which its fused pass does not save, through ``ctx.input_ref``).
So a second derivative reaches that node and raises torch's "trying to differentiate
twice a function that was marked with @once_differentiable", while first-order use
(``backward()``, or ``create_graph=True`` for the first derivative alone) gets the same
gradients as before. Where none of those tensors is left (the fused cross-entropy's
logits freed), the backward raises at once rather than return a gradient that a second
derivative would take for a constant.
"""
import functools

import torch

_MESSAGE = ("trying to differentiate twice a function that was marked with "
            "@once_differentiable: fastloss.torch computes first-order gradients only (use "
            "torch.nn.functional's loss for second derivatives)")


def _anchors(ctx, grad_outputs):
    """The tensors requiring grad that the backward's gradients depend on."""
    anchors = [grad for grad in grad_outputs
               if isinstance(grad, torch.Tensor) and grad.requires_grad]
    anchors += [tensor for tensor in ctx.saved_tensors
                if tensor is not None and tensor.requires_grad]
    input_ref = getattr(ctx, "input_ref", None)
    held = input_ref() if input_ref is not None else None
    if held is not None and held.requires_grad:
        anchors.append(held)
    return anchors


def first_order(backward):
    """Decorate an autograd Function's ``backward`` (under ``@staticmethod``): it runs
    without recording, and under create_graph=True its gradients raise when
    differentiated again."""

    @functools.wraps(backward)
    def wrapper(ctx, *grad_outputs):
        if not torch.is_grad_enabled():  # the usual backward: nothing to record
            return backward(ctx, *grad_outputs)
        with torch.no_grad():
            grads = backward(ctx, *grad_outputs)
        single = not isinstance(grads, tuple)
        grads = (grads,) if single else grads
        tensors = [grad.detach() for grad in grads if isinstance(grad, torch.Tensor)]
        if not tensors:
            return grads[0] if single else grads
        anchors = _anchors(ctx, grad_outputs)
        if not anchors:
            raise RuntimeError(f"{_MESSAGE}; create_graph=True asked for a gradient that "
                               f"could be differentiated again")
        marked = torch._C._functions.DelayedError(_MESSAGE.encode(),
                                                  len(tensors) + len(anchors))(
            *tensors, *anchors)[:len(tensors)]
        marked = iter(marked)
        grads = tuple(next(marked) if isinstance(grad, torch.Tensor) else grad
                      for grad in grads)
        return grads[0] if single else grads

    return wrapper
