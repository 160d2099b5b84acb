"""``fastloss.torch.linear_cross_entropy`` and ``LinearCrossEntropyLoss``: torch 2.13's
``F.linear_cross_entropy`` and ``nn.LinearCrossEntropyLoss`` computed by
:func:`fastloss.linear_cross_entropy` (blocks of rows; the logits never exist).

Imported by fastloss.torch, which exports both names.
"""
import torch
from torch.autograd.function import once_differentiable

from fastloss._config import resolve_num_threads
from fastloss._validation import reduction_arg
from fastloss.linear_cross_entropy import _run
from fastloss.torch import (_FLOAT_DTYPES, _check_float_tensor, _cpu_tensor, _loss_tensor,
                            _numpy, _upstream)

__all__ = ["linear_cross_entropy", "LinearCrossEntropyLoss"]

_FUNCTION = "fastloss.torch.linear_cross_entropy"
_GRADIENTS = ("hidden", "classifier", "bias")


class _Call:
    """The checked options of one call, and whether autograd records it."""

    __slots__ = ("options", "reduction", "recording")

    def __init__(self, options, reduction):
        self.options, self.reduction = options, reduction
        # ctx.needs_input_grad says which inputs require grad under torch.no_grad() too
        self.recording = torch.is_grad_enabled()

    def run(self, arrays, grad_output=None, want=()):
        hidden, classifier, bias, target, weight = arrays
        return _run(hidden, classifier, target, bias, weight, reduction=self.reduction,
                    grad_output=grad_output, want=want, **self.options)


class _LinearCrossEntropy(torch.autograd.Function):
    """fastloss.linear_cross_entropy on tensors (zero-copy NumPy views of their memory).

    For "mean" and "sum", when autograd will ask for gradients, the forward computes the
    loss and the gradients of the inputs that require grad (and only those) in one pass
    over the blocks (three products) and keeps them; the backward hands them over,
    scaled by grad_output when that is not 1. For "none" (the per-row grad_output is
    known only in the backward) and for a second backward (retain_graph=True), the
    backward runs the pass again from the saved inputs."""

    @staticmethod
    def forward(ctx, input, linear_weight, linear_bias, target, weight, call):
        needs = ctx.needs_input_grad[:3] if call.recording else (False,) * 3
        want = tuple(name for name, need in zip(_GRADIENTS, needs) if need)
        arrays = tuple(_numpy(tensor) for tensor in (input, linear_weight, linear_bias,
                                                     target, weight))
        ctx.call, ctx.grads = call, None
        if want and call.reduction != "none":
            loss, grads = call.run(arrays, 1.0, want)
            ctx.grads = grads
        else:
            loss, _ = call.run(arrays)
        ctx.save_for_backward(input, linear_weight, linear_bias, target, weight)
        return _loss_tensor(loss, input.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        needs = ctx.needs_input_grad[:3]
        want = tuple(name for name, need in zip(_GRADIENTS, needs) if need)
        tensors = ctx.saved_tensors  # torch's error if the graph was freed
        if ctx.grads is not None:
            # the first backward takes the forward's gradients (then owned by autograd)
            grads, ctx.grads = ctx.grads, None
            scale = float(grad_output)
            grads = {name: torch.from_numpy(grad) for name, grad in grads.items()
                     if grad is not None}
            if scale != 1.0:
                for grad in grads.values():
                    grad.mul_(scale)
        else:
            arrays = tuple(_numpy(tensor) for tensor in tensors)
            _, grads = ctx.call.run(arrays, _upstream(grad_output, ctx.call.reduction), want)
            grads = {name: torch.from_numpy(grad) for name, grad in grads.items()
                     if grad is not None}
        return (*(grads.get(name) if need else None for name, need in zip(_GRADIENTS, needs)),
                None, None, None)


def _check_options(options):
    if options is None:
        return
    options_type = getattr(torch.nn, "LinearCrossEntropyOptions", None)
    if options_type is None or not isinstance(options, options_type):
        raise TypeError(f"{_FUNCTION}: options: expected None or a "
                        f"torch.nn.LinearCrossEntropyOptions, got {type(options).__name__}")


def linear_cross_entropy(input, linear_weight, target, *, linear_bias=None, weight=None,
                         reduction="mean", ignore_index=None, label_smoothing=0.0,
                         options=None, z_loss=0.0, softcap=None, block_rows=None,
                         num_threads=None):
    """``torch.nn.functional.linear_cross_entropy`` computed by fastloss, whose logits
    ``input @ linear_weight.T + linear_bias`` never exist.

    Parameters as torch's: ``input`` (H) or (N, H) (and (..., H): every leading axis is
    a batch axis, the classes last), float32 or float64; ``linear_weight`` (V, H) of
    input's dtype (torch's K-dimensional weights are not supported); ``target`` class
    indices of shape (), (N) or (...) (any integer dtype), or probabilities of shape
    (..., V) in input's dtype; ``linear_bias`` (V,); ``weight`` (V,); ``reduction``;
    ``ignore_index`` (None means -100, as torch); ``label_smoothing``; ``options`` (a
    ``torch.nn.LinearCrossEntropyOptions``, accepted for torch's signature: fastloss
    always works by blocks of rows, whatever its fields say). Keyword-only extras:
    ``z_loss`` (adds ``z_loss * lse**2`` per row) and ``softcap`` (logits become
    ``softcap * tanh(logits / softcap)``), which torch's function lacks; ``block_rows``
    and ``num_threads`` (see :func:`fastloss.linear_cross_entropy`).

    Gradients w.r.t. ``input``, ``linear_weight`` and ``linear_bias``, each computed only
    when it requires grad; for "mean" and "sum" in the forward (one pass, three
    products), kept until the backward: the size of the inputs that require grad, never
    N x V. For "none", the backward runs the pass (the per-row grad_output is needed in
    it). ``target`` and ``weight`` are not differentiated (NotImplementedError if they
    require grad). First order (``once_differentiable``); a second backward
    (retain_graph=True) recomputes from the saved inputs.
    """
    _check_float_tensor(input, "input", _FUNCTION)
    _check_float_tensor(linear_weight, "linear_weight", _FUNCTION)
    if input.dim() == 0:
        raise ValueError(f"{_FUNCTION}: input: expected shape (H) or (N, H), got a 0-d "
                         f"tensor")
    if linear_weight.dim() != 2:
        raise ValueError(f"{_FUNCTION}: linear_weight: expected shape (V, H) (fastloss has "
                         f"no K-dimensional weights), got {tuple(linear_weight.shape)}")
    if linear_weight.dtype != input.dtype:
        raise TypeError(f"{_FUNCTION}: linear_weight: expected the dtype of input "
                        f"({input.dtype}), got {linear_weight.dtype}")
    if linear_bias is not None:
        _check_float_tensor(linear_bias, "linear_bias", _FUNCTION)
    _cpu_tensor(target, "target", _FUNCTION)
    for name, tensor in (("target", target), ("weight", weight)):
        if tensor is not None and tensor.requires_grad and torch.is_grad_enabled():
            raise NotImplementedError(
                f"{_FUNCTION}: {name} requires grad, but fastloss computes gradients with "
                f"respect to input, linear_weight and linear_bias only; pass "
                f"{name}.detach()")
    if weight is not None:
        _check_float_tensor(weight, "weight", _FUNCTION)
    if target.dtype.is_floating_point and target.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{_FUNCTION}: target: expected class indices (an integer tensor) or "
                        f"float32/float64 probabilities, got {target.dtype}")
    if target.dtype == torch.bool or target.dtype.is_complex:
        raise TypeError(f"{_FUNCTION}: target: expected class indices (an integer tensor) or "
                        f"float32/float64 probabilities, got {target.dtype}")
    _check_options(options)
    call = _Call({"ignore_index": -100 if ignore_index is None else ignore_index,
                  "label_smoothing": label_smoothing, "z_loss": z_loss, "softcap": softcap,
                  "num_threads": resolve_num_threads(num_threads), "block_rows": block_rows},
                 reduction_arg(reduction))
    return _LinearCrossEntropy.apply(input, linear_weight, linear_bias, target, weight, call)


_MODULE_BASE = getattr(torch.nn, "LinearCrossEntropyLoss", None)


class LinearCrossEntropyLoss(_MODULE_BASE or torch.nn.Module):
    """``torch.nn.LinearCrossEntropyLoss`` (the classifier ``self.linear`` and the loss)
    whose forward is :func:`linear_cross_entropy`; keyword-only extras ``z_loss``,
    ``softcap``, ``block_rows`` and ``num_threads``. A subclass of torch's class where
    torch has it (2.13 on): its attributes and ``state_dict`` (``linear.weight``,
    ``linear.bias``) are torch's. ``out_features`` (K-dimensional loss) must be ()."""

    def __init__(self, in_features, num_classes, *, out_features=(), bias=False, device=None,
                 dtype=None, reduction="mean", weight=None, ignore_index=None,
                 label_smoothing=0.0, options=None, z_loss=0.0, softcap=None, block_rows=None,
                 num_threads=None):
        if tuple(out_features) != ():
            raise ValueError(f"fastloss.torch.LinearCrossEntropyLoss: out_features: "
                             f"K-dimensional losses are not supported, got {out_features!r}")
        if _MODULE_BASE is not None:
            super().__init__(in_features, num_classes, bias=bias, device=device, dtype=dtype,
                             reduction=reduction, weight=weight, ignore_index=ignore_index,
                             label_smoothing=label_smoothing, options=options)
        else:
            super().__init__()
            self.linear = torch.nn.Linear(in_features, num_classes, bias=bias, device=device,
                                          dtype=dtype)
            self.register_buffer("weight", weight)
            self.num_classes, self.out_features = num_classes, ()
            self.reduction, self.ignore_index = reduction, ignore_index
            self.label_smoothing, self.options = label_smoothing, options
        self.z_loss, self.softcap = z_loss, softcap
        self.block_rows, self.num_threads = block_rows, num_threads

    def forward(self, input, target):
        return linear_cross_entropy(input, self.linear.weight, target,
                                    linear_bias=self.linear.bias, weight=self.weight,
                                    reduction=self.reduction, ignore_index=self.ignore_index,
                                    label_smoothing=self.label_smoothing, options=self.options,
                                    z_loss=self.z_loss, softcap=self.softcap,
                                    block_rows=self.block_rows, num_threads=self.num_threads)
