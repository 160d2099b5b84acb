"""The PyTorch adapter: ``torch.nn.functional``-style losses and ``nn.Module`` classes whose
forward and backward passes run in fastloss's C kernels::

    import fastloss.torch as FL
    loss = FL.cross_entropy(logits, target)        # instead of F.cross_entropy
    criterion = FL.CrossEntropyLoss(label_smoothing=0.1)

Functions with a torch counterpart (``cross_entropy``, ``mse_loss``, ``l1_loss``,
``huber_loss``, ``smooth_l1_loss``, ``binary_cross_entropy_with_logits``,
``triplet_margin_loss``) take torch's arguments in torch's order and layout (the class axis
of ``cross_entropy`` at dim 1, the deprecated ``size_average``/``reduce`` included) and give
torch's values and gradients; fastloss's extra options (``z_loss``, ``softcap``,
``inplace_backward``, ``grad_in_forward``, ``num_threads``) are keyword-only. Their module classes subclass
torch's own (``isinstance(FL.CrossEntropyLoss(), torch.nn.CrossEntropyLoss)`` holds), so
their attributes, buffers and ``state_dict`` are torch's. The losses torch lacks
(``contrastive``, ``contrastive_pairwise``, ``info_nce``) keep fastloss's signatures, with
the modules ``ContrastiveLoss``, ``ContrastivePairwiseLoss`` and ``InfoNCELoss``.

Each loss is a ``torch.autograd.Function``. CPU tensors and NumPy arrays share memory both
ways (``Tensor.numpy()`` and ``torch.from_numpy``); a copy happens only where the kernels
need a contiguous class axis that the tensor lacks (``cross_entropy`` on (N, C, d1, ...)
inputs, or a transposed (N, C)). When autograd will ask for a gradient, the forward is the
fused pass: it computes the loss and the gradients together, reading the inputs once, and
keeps the gradients (the inputs' size) until the backward, which hands them over, scaled
by grad_output only when that is not 1. ``cross_entropy(..., inplace_backward=True)``
writes its gradient over the logits themselves; ``grad_in_forward=False`` keeps only the
per-row log-sum-exp (N float64 values) and reads the logits again in the backward. The
embedding losses keep gradients of the embeddings' size, never N x N, so the Gram product
is formed once. A second backward (``retain_graph=True``) computes the gradients again.
Gradients are first order: differentiating one again raises (fastloss/torch/_autograd.py),
also when create_graph=True was given a constant upstream gradient.

Inputs must be float32 or float64 CPU tensors; other dtypes raise TypeError, tensors on
another device ValueError. Gradients come for every argument torch differentiates: the
input; probability targets of ``cross_entropy`` and, with them, its ``weight``; the target
of ``binary_cross_entropy_with_logits``, ``mse_loss``, ``l1_loss``, ``huber_loss`` and
``smooth_l1_loss``, and the ``weight`` of the three regression losses that take one. Where
torch gives none (``cross_entropy``'s ``weight`` with class indices, the ``weight`` and
``pos_weight`` of ``binary_cross_entropy_with_logits``, the ``label`` of ``contrastive``), a
tensor that requires grad raises a RuntimeError (NotImplementedError is one), as torch's.

Threads: fastloss's own setting (``fastloss.set_num_threads``, ``FASTLOSS_NUM_THREADS``),
not ``torch.set_num_threads``; ``num_threads=`` overrides it per call or per module.

This module is imported only by ``import fastloss.torch``: ``import fastloss`` never
imports torch, and torch is not a build or run-time dependency of fastloss.
"""
import functools
import numbers
import re
import warnings
import weakref

import numpy as np
import torch

import fastloss
from fastloss import _kernels, _registry
from fastloss._config import resolve_num_threads
from fastloss._validation import is_bfloat16, reduction_arg
from fastloss.torch._autograd import first_order

# the hand-written losses; the elementwise ones' functions and modules join at the end,
# generated from the registry
__all__ = [
    "contrastive",
    "contrastive_pairwise",
    "cross_entropy",
    "info_nce",
    "triplet_margin_loss",
    "ContrastiveLoss",
    "ContrastivePairwiseLoss",
    "CrossEntropyLoss",
    "InfoNCELoss",
    "TripletMarginLoss",
]

_FLOAT_DTYPES = (torch.float32, torch.float64)
_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}
# cross-entropy takes half precision too: float16 tensors are NumPy float16 arrays, and
# bfloat16 tensors go to the kernels as their 16-bit patterns (an int16 view, no copy;
# no ml_dtypes needed)
_HALF_DTYPES = (torch.bfloat16, torch.float16)
_CE_INPUT_DTYPES = _FLOAT_DTYPES + _HALF_DTYPES


# ----------------------------------------------------------------------------------------
# Tensors in, arrays out, and the errors on the way
# ----------------------------------------------------------------------------------------

def _renamed(name, possessive):
    """``name`` in place of another, with that one's possessive apostrophe, if any."""
    if not possessive:
        return name
    return name + ("'" if name.endswith("s") else "'s")


def _named_errors(function, torch_names=None):
    """``function`` whose ValueError and TypeError from the NumPy layer start with its
    name, as docs/errors.rst promises (``fastloss.torch.NAME: ARGUMENT: ...``), with the
    arguments named as torch names them (``torch_names``: ours -> torch's). The
    adapter's own messages start so already and pass unchanged, as does every other
    exception (a subclass of either included)."""
    prefix = f"fastloss.torch.{function.__name__}"
    renames = {ours: theirs for ours, theirs in (torch_names or {}).items() if ours != theirs}
    # (a plural's possessive, "logits'", becomes "input's")
    names = (re.compile(r"\b(" + "|".join(map(re.escape, renames)) + r")\b('(?!s))?")
             if renames else None)

    @functools.wraps(function)
    def named(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except (ValueError, TypeError) as error:
            message = str(error)
            if type(error) not in (ValueError, TypeError) or message.startswith("fastloss.torch"):
                raise
            if names is not None:
                message = names.sub(lambda match: _renamed(renames[match.group(1)],
                                                           match.group(2)), message)
            raise type(error)(f"{prefix}: {message}").with_traceback(
                error.__traceback__) from None

    return named


def _cpu_tensor(tensor, name, function):
    """Check that `tensor` is a strided CPU tensor (TypeError / ValueError naming it)."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{function}: {name}: expected a torch.Tensor, "
                        f"got {type(tensor).__name__}")
    if tensor.device.type != "cpu":
        raise ValueError(f"{function}: {name}: fastloss runs on the CPU, got a tensor on "
                         f"{tensor.device} (move it with .cpu(), or use torch's own loss "
                         f"on that device)")
    if tensor.layout != torch.strided:
        raise TypeError(f"{function}: {name}: expected a dense (strided) tensor, "
                        f"got layout {tensor.layout}")
    return tensor


def _float_tensor(tensor, name, function):
    _cpu_tensor(tensor, name, function)
    if tensor.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{function}: {name}: expected a float32 or float64 tensor, "
                        f"got {tensor.dtype}")
    return tensor


def _real_tensor(tensor, name, function):
    """A float32/float64 (or half), integer or bool CPU tensor (regression targets)."""
    _cpu_tensor(tensor, name, function)
    if tensor.dtype.is_complex or (tensor.dtype.is_floating_point
                                   and tensor.dtype not in _CE_INPUT_DTYPES):
        raise TypeError(f"{function}: {name}: expected a float32, float64, bfloat16, "
                        f"float16, integer or bool tensor, got {tensor.dtype}")
    return tensor


def _half_float_tensor(tensor, name, function):
    """A float32, float64, bfloat16 or float16 CPU tensor (the pointwise losses' first
    input)."""
    _cpu_tensor(tensor, name, function)
    if tensor.dtype not in _CE_INPUT_DTYPES:
        raise TypeError(f"{function}: {name}: expected a float32, float64, bfloat16 or "
                        f"float16 tensor, got {tensor.dtype}")
    return tensor


def _numpy_any(tensor):
    """_numpy, and a bfloat16 tensor as an ml_dtypes.bfloat16 array over its memory (the
    pointwise losses compute on NumPy arrays of the dtype; ml_dtypes is needed there)."""
    if tensor is None or tensor.dtype != torch.bfloat16:
        return _numpy(tensor)
    try:
        import ml_dtypes
    except ImportError:
        raise TypeError("fastloss.torch: a bfloat16 tensor for this loss needs ml_dtypes "
                        "(pip install ml_dtypes; cross_entropy needs nothing)") from None
    return tensor.detach().view(torch.int16).numpy().view(ml_dtypes.bfloat16)


def _tensor_any(array):
    """torch.from_numpy, and an ml_dtypes.bfloat16 array as a torch.bfloat16 tensor over
    its memory."""
    array = np.asarray(array)
    if is_bfloat16(array.dtype):
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def _no_grad_needed(tensor, name, function):
    """NotImplementedError when autograd would ask fastloss for a gradient w.r.t. `tensor`."""
    if tensor is not None and tensor.requires_grad and torch.is_grad_enabled():
        raise NotImplementedError(
            f"{function}: {name} requires grad, but fastloss computes no gradient with respect "
            f"to {name}; pass {name}.detach(), or use torch.nn.functional for this call")


def _number(value):
    """A 0-d real tensor that requires no grad, given for a number option (``delta``,
    ``label_smoothing``, ``margin``, ...), as the Python number it holds: torch's
    functions take one there. Anything else as it is (the NumPy API's check names what
    is wrong with it; a bool tensor stays a tensor, as torch refuses it)."""
    if (isinstance(value, torch.Tensor) and value.dim() == 0 and not value.requires_grad
            and value.dtype != torch.bool and not value.dtype.is_complex):
        return value.item()
    return value


def _numpy(tensor):
    """The tensor's memory as a NumPy array (no copy), or None for None."""
    if tensor is None:
        return None
    return tensor.detach().numpy()


def _class_last(tensor):
    """An array view of `tensor` with dim 1 (torch's class axis) moved last, made
    contiguous along it when it is not (the kernels read each row as one run); a
    bfloat16 tensor's view holds its bit patterns as int16."""
    moved = tensor.detach()
    dim = moved.dim()
    if dim > 2:
        moved = moved.movedim(1, -1)
    if dim and moved.stride(-1) != 1 and moved.size(-1) > 1:
        moved = moved.contiguous()
    if moved.dtype == torch.bfloat16:
        return moved.view(torch.int16).numpy()
    return moved.numpy()


def _memory(tensor):
    """The tensor's memory as a NumPy array (bfloat16: as int16), for overlap tests."""
    tensor = tensor.detach()
    return (tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor).numpy()


def _float32_numpy(tensor):
    """A bfloat16 tensor (weights, probabilities beside half logits) as float32 numbers
    (the kernels read them so); any other tensor as it is."""
    if tensor is not None and tensor.dtype == torch.bfloat16:
        return tensor.detach().float()
    return tensor


def _weight_numpy(weight):
    """A class weight as the kernels read it: a float16 or bfloat16 weight as float32
    (exact: torch takes one beside any probability target), any other as it is."""
    if weight is not None and weight.dtype in _HALF_DTYPES:
        return _numpy(weight.detach().float())
    return _numpy(weight)


# the NumPy dtype that holds each tensor dtype's memory (bfloat16: its bits as int16)
_STORAGE_DTYPES = {**_NUMPY_DTYPES, torch.float16: np.float16, torch.bfloat16: np.int16}


def _empty(shape, dtype):
    """``torch.empty(shape, dtype=dtype)`` over memory from fastloss's allocator of large
    outputs (``_kernels.empty``: huge pages advised, and the kept block of the last large
    buffer freed; docs/memory.rst), as the NumPy API's gradients are.

    torch's CPU allocator advises no huge pages, and the first touch of each 4 KiB page
    of a fresh allocation is a page fault. On a virtual machine that costs more than
    writing the memory: a fresh 128 MiB tensor filled by one thread took 65 ms of CPU
    time from torch.empty, 13 ms from huge pages (2-core Zen 4 VM, 2026-11-28). The
    adapter's own large buffers (the linear cross-entropy's gradients and scratch) come
    from here."""
    return _gradient_tensor(_kernels.empty(shape, _STORAGE_DTYPES[dtype]), dtype)


def _gradient_tensor(grad, dtype):
    """The kernels' gradient array as a tensor of `dtype` (bfloat16: from its bits)."""
    tensor = torch.from_numpy(grad)
    if dtype == torch.bfloat16 and tensor.dtype == torch.int16:
        return tensor.view(torch.bfloat16)
    return tensor


def _reduction(size_average, reduce, reduction, extra=()):
    """torch's reduction string, with the deprecated size_average / reduce as torch reads
    them (and its deprecation warning); ``extra``: the loss's own reductions beside
    torch's three (kl_div's "batchmean")."""
    if size_average is not None or reduce is not None:
        if size_average is None:
            size_average = True
        if reduce is None:
            reduce = True
        reduction = "mean" if size_average and reduce else ("sum" if reduce else "none")
        warnings.warn("size_average and reduce args will be deprecated, please use "
                      f"reduction='{reduction}' instead.", stacklevel=3)
    return reduction_arg(reduction, extra)


def _loss_tensor(loss, dtype):
    """The loss as a tensor: a 0-d tensor of `dtype` for a Python float, else the array's
    memory."""
    if isinstance(loss, np.ndarray):
        return torch.from_numpy(loss)
    return torch.tensor(loss, dtype=dtype)


def _upstream(grad_output, reduction):
    """autograd's grad_output as fastloss's grad_output: a float for "mean"/"sum" (a 0-d
    tensor), the array of per-sample values for "none"."""
    if reduction == "none":
        return grad_output.detach().numpy()
    return float(grad_output)


# ----------------------------------------------------------------------------------------
# Cross-entropy
# ----------------------------------------------------------------------------------------

class _CrossEntropyCall:
    """The checked options of one fastloss.torch.cross_entropy call."""

    __slots__ = ("soft", "dtype", "ignore_index", "reduction", "label_smoothing", "z_loss",
                 "softcap", "num_threads", "inplace", "grad_in_forward", "recording",
                 "loss_dtype", "input_dtype", "bits")

    def __init__(self, soft, dtype, ignore_index, reduction, label_smoothing, z_loss, softcap,
                 num_threads, inplace, grad_in_forward, loss_dtype=None, input_dtype=None):
        # whether autograd records this call: ctx.needs_input_grad says only which inputs
        # require grad, under torch.no_grad() too (and the forward always runs in no_grad)
        self.recording = torch.is_grad_enabled()
        self.soft, self.dtype = soft, dtype
        self.ignore_index, self.reduction = ignore_index, reduction
        self.label_smoothing, self.z_loss, self.softcap = label_smoothing, z_loss, softcap
        self.num_threads = num_threads
        self.inplace, self.grad_in_forward = inplace, grad_in_forward
        # half precision: the loss's torch dtype (the kernels' float32 loss is rounded to
        # it, as torch returns it), the input's, and how its memory reaches the kernels
        self.loss_dtype, self.input_dtype = loss_dtype, input_dtype
        self.bits = "bfloat16" if input_dtype == torch.bfloat16 else None

    def run(self, mode, logits, target, weight, grad_output=None, lse=None, out=None,
            want_lse=False):
        return _kernels.ce_call(mode, logits, target, weight, self.ignore_index,
                                self.reduction, self.label_smoothing, self.z_loss, self.softcap,
                                self.num_threads, grad_output, lse, out, want_lse,
                                bits=self.bits)

    def loss_tensor(self, loss):
        """The kernels' loss (a float, or an array for "none") as torch returns it."""
        if self.loss_dtype is None:
            if type(loss) is float:
                return torch.from_numpy(np.array(loss, self.dtype))
            return torch.from_numpy(loss)
        if type(loss) is float:
            return torch.tensor(loss, dtype=torch.float64).to(self.loss_dtype)
        return torch.from_numpy(loss).to(self.loss_dtype)


class _CrossEntropy(torch.autograd.Function):
    """fastloss.cross_entropy with the class axis at dim 1.

    When the input requires grad the forward is the fused pass (loss and gradient in one
    read of the logits; with ``inplace`` the gradient replaces them) and keeps the
    gradient; the backward hands it over, scaled by grad_output when that is not 1.
    With ``grad_in_forward=False`` the forward keeps the per-row log-sum-exp instead and
    the backward is fastloss.cross_entropy_grad(..., lse=lse). Gradients w.r.t.
    probability targets and their class weights (torch gives both) come from the
    log-softmax, computed in float64 in the backward."""

    @staticmethod
    def forward(ctx, input, target, weight, call):
        need_input, need_target, need_weight, _ = (ctx.needs_input_grad if call.recording
                                                   else (False,) * 4)
        logits = _class_last(input)
        target_array = _class_last(_float32_numpy(target)) if call.soft else target.numpy()
        weight_array = None if weight is None else _weight_numpy(weight)
        ctx.call = call
        ctx.grad = None
        if need_input and call.grad_in_forward and not (need_target or need_weight):
            loss, _, grad = call.run(_kernels.CE_VALUE_AND_GRAD, logits, target_array,
                                     weight_array, 1.0, out=logits if call.inplace else None)
            if call.inplace and np.shares_memory(grad, _memory(input)):
                # Other graph nodes that saved the logits now fail loudly instead of
                # reading the gradient (as after any in-place operation).
                torch.autograd.graph.increment_version(input)
            ctx.grad = grad
            # A second backward (retain_graph) recomputes from the logits if they are
            # still there and unchanged; nothing of N x C is kept for it.
            ctx.input_ref = weakref.ref(input)
            ctx.input_version = input._version
            ctx.save_for_backward(None, target, weight)
        elif need_input or need_target or need_weight:
            loss, lse, _ = call.run(_kernels.CE_FORWARD, logits, target_array, weight_array,
                                    want_lse=True)
            ctx.lse = lse
            ctx.save_for_backward(input, target, weight)
        else:
            loss, _, _ = call.run(_kernels.CE_FORWARD, logits, target_array, weight_array)
        return call.loss_tensor(loss)

    @staticmethod
    @first_order
    def backward(ctx, grad_output):
        call = ctx.call
        need_input, need_target, need_weight, _ = ctx.needs_input_grad
        grad_input = grad_target = grad_weight = None
        if need_input:
            grad, ctx.grad = ctx.grad, None  # the first backward takes it (autograd owns it)
            if grad is not None:
                grad_input = _scaled(_gradient_tensor(grad, call.input_dtype), grad_output,
                                     call.reduction)
            else:
                grad_input = _gradient_tensor(_CrossEntropy._recompute(ctx, grad_output),
                                              call.input_dtype)
            if grad_input.dim() > 2:  # (2-d: dim 1 is the last already)
                grad_input = grad_input.movedim(-1, 1)  # torch's layout: a view, no copy
        if need_target or need_weight:
            input, target, weight = ctx.saved_tensors
            grad_target, grad_weight = _soft_target_grads(input, target, weight, call,
                                                          grad_output, need_target,
                                                          need_weight)
        return grad_input, grad_target, grad_weight, None

    @staticmethod
    def _recompute(ctx, grad_output):
        """The gradient w.r.t. the input from the saved logits: the lse path, or a second
        backward after the gradient computed in the forward was handed over."""
        call = ctx.call
        input, target, weight = ctx.saved_tensors  # torch's error if the graph was freed
        lse = getattr(ctx, "lse", None)
        if input is None:
            input = ctx.input_ref()
            if call.inplace or input is None or input._version != ctx.input_version:
                raise RuntimeError(
                    "fastloss.torch.cross_entropy: a second backward through this graph needs "
                    "the logits, which are gone or changed (the forward computed the gradient "
                    "and the first backward took it): pass grad_in_forward=False to keep them "
                    "for retain_graph=True")
        logits = _class_last(input)
        target_array = _class_last(_float32_numpy(target)) if call.soft else _numpy(target)
        upstream = (grad_output.detach().double().numpy() if call.reduction == "none"
                    else float(grad_output))
        # inplace: the gradient overwrites the logits (or the contiguous copy _class_last
        # made of them), as fastloss's out=logits: no N x C allocation.
        _, _, grad = call.run(_kernels.CE_GRAD, logits, target_array,
                              _weight_numpy(weight), upstream, lse=lse,
                              out=logits if call.inplace else None)
        if call.inplace and np.shares_memory(grad, _memory(input)):
            torch.autograd.graph.increment_version(input)
        return grad


def _scaled(grad, grad_output, reduction):
    """``grad`` (computed for a grad_output of 1, class axis last) times grad_output, in
    place; nothing to do when grad_output is 1."""
    if reduction != "none":
        scale = grad_output.item()
        if scale != 1.0:
            grad.mul_(scale)
    elif grad_output.numel() and not bool((grad_output == 1).all()):
        grad.mul_(grad_output.unsqueeze(-1).to(grad.dtype))
    return grad


def _soft_target_grads(input, target, weight, call, grad_output, need_target, need_weight):
    """Gradients of the loss w.r.t. probability targets q and class weights w (torch
    differentiates both): with logp the log-softmax of the (capped) logits, q' = (1 - eps)
    q + eps / C and s the row's scale (grad_output; divided by the N rows for "mean"),
    d loss / d q_c = -s (1 - eps) w_c logp_c and d loss / d w_c = -sum_rows s q'_c logp_c.
    float64 throughout, rounded once to each argument's dtype."""
    logits = input.detach().movedim(1, -1) if input.dim() >= 2 else input.detach()
    logits = logits.double()
    if call.softcap is not None:
        logits = call.softcap * torch.tanh(logits / call.softcap)
    log_probs = torch.log_softmax(logits, dim=-1)
    if call.reduction == "none":
        scale = grad_output.detach().double().unsqueeze(-1)
    else:
        scale = grad_output.detach().double()
        if call.reduction == "mean":
            scale = scale / max(1, log_probs.numel() // max(1, log_probs.shape[-1]))
    n_classes = log_probs.shape[-1]
    eps = call.label_smoothing
    class_weight = (torch.ones(n_classes, dtype=torch.float64) if weight is None
                    else weight.detach().double())
    grad_target = grad_weight = None
    if need_target:
        grad_target = -(1.0 - eps) * scale * class_weight * log_probs
        grad_target = grad_target.movedim(-1, 1) if grad_target.dim() >= 2 else grad_target
        grad_target = grad_target.to(target.dtype)
    if need_weight:
        probabilities = target.detach().movedim(1, -1) if target.dim() >= 2 else target.detach()
        smoothed = (1.0 - eps) * probabilities.double() + eps / n_classes
        grad_weight = -(scale * smoothed * log_probs).reshape(-1, n_classes).sum(0)
        grad_weight = grad_weight.to(weight.dtype)
    return grad_target, grad_weight


def _check_float_tensor(tensor, name, function):
    """_float_tensor's checks, after a fast test of the usual case."""
    if not (isinstance(tensor, torch.Tensor) and tensor.dtype in _FLOAT_DTYPES
            and tensor.is_cpu and tensor.layout is torch.strided):
        _float_tensor(tensor, name, function)


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100,
                  reduce=None, reduction="mean", label_smoothing=0.0, *, z_loss=0.0,
                  softcap=None, inplace_backward=False, grad_in_forward=True,
                  num_threads=None):
    """``torch.nn.functional.cross_entropy`` computed by fastloss's kernels.

    Parameters as torch's: ``input`` of shape (C), (N, C) or (N, C, d1, ..., dK), float32,
    float64, bfloat16 or float16 (half precision is read in place, computed in float32,
    and its gradient written in the input's dtype, rounded once: docs/accuracy.rst; the
    loss is returned in torch's dtype, a rounding of the float32 loss); ``target`` of
    class indices (any integer dtype) of shape (), (N) or
    (N, d1, ..., dK), or of probabilities shaped like ``input`` (float32, float64,
    bfloat16 or float16, beside any input: the loss in the promotion of the two dtypes,
    as torch's; a float64 target with a float32 input is not rounded: the loss is float64;
    half probabilities are read as float32, exactly, and label smoothing is applied to
    them in the computation's precision, not rounded to the half type as torch rounds it);
    ``weight`` (C,) (with probabilities, any float dtype, and the loss in the promotion
    of the input's, the target's and the weight's dtypes, as torch's); ``ignore_index``; ``reduction``; ``label_smoothing``. Keyword-only
    extras: ``z_loss`` (adds ``z_loss * lse**2`` per row), ``softcap`` (logits become
    ``softcap * tanh(logits / softcap)``), ``num_threads`` (see
    :func:`fastloss.cross_entropy`), ``grad_in_forward`` and ``inplace_backward``.

    When ``input`` requires grad, the forward computes the loss and its gradient in one
    fused pass (one read of the logits, one write of the gradient) and keeps the
    gradient; the backward returns it, multiplied by grad_output only when that is not 1.
    The gradient (N x C, like the input) lives from the forward to the backward: the
    memory torch's own cross-entropy keeps for its log-softmax. ``grad_in_forward=False``
    keeps only the per-row log-sum-exp (N float64 values) and the input instead, and the
    backward reads the logits again (fastloss.cross_entropy_grad(..., lse=lse)): less
    memory between the passes when the logits are kept alive anyway, one more read.

    ``inplace_backward=True`` makes that fused pass write the gradient over the memory of
    ``input`` (fastloss's ``out=logits``): one read, one write, no N x C allocation. The
    logits hold the gradient from the forward on, so use it only when nothing reads them
    afterwards (compute accuracy or argmax before the loss); ``input`` must not be a leaf
    tensor nor a view of one (the gradient would overwrite the leaf), and other autograd
    nodes that saved it raise torch's in-place modification error rather than read the
    gradient (its version counter moves in the forward, as after any in-place operation:
    so ``torch.autograd.grad`` with respect to a *view* passed as ``input`` finds a new
    grad_fn there; take it with respect to what the view came from, or call
    ``backward()``). A second backward through the graph (retain_graph=True) recomputes
    the gradient from the logits if they are still alive and unchanged, else raises.

    Gradients: w.r.t. ``input``, and w.r.t. probability targets and ``weight`` with them
    (as torch); with class indices torch gives no gradient for ``weight``, and neither
    does this (RuntimeError if it requires grad). First order (a second derivative raises).
    """
    function = "fastloss.torch.cross_entropy"
    if type(label_smoothing) is not float or type(z_loss) is not float or softcap is not None:
        label_smoothing, z_loss = _number(label_smoothing), _number(z_loss)
        softcap = _number(softcap)
    if not (isinstance(input, torch.Tensor) and input.dtype in _CE_INPUT_DTYPES
            and input.is_cpu and input.layout is torch.strided):
        _cpu_tensor(input, "input", function)
        raise TypeError(f"{function}: input: expected a float32, float64, bfloat16 or "
                        f"float16 tensor, got {input.dtype}")
    if input.dim() == 0:
        raise ValueError(f"{function}: input: expected shape (C), (N, C) or "
                         f"(N, C, d1, ...), got a 0-d tensor")
    if not (isinstance(target, torch.Tensor) and target.is_cpu
            and target.layout is torch.strided):
        _cpu_tensor(target, "target", function)
    soft = target.dtype.is_floating_point
    dtype = input.dtype
    half = dtype in _HALF_DTYPES
    if soft:
        if target.dtype not in _CE_INPUT_DTYPES:
            raise TypeError(f"{function}: target: expected class indices (an integer tensor) "
                            f"or float32/float64/bfloat16/float16 probabilities, got "
                            f"{target.dtype}")
        dtype = torch.promote_types(dtype, target.dtype)
        if half and dtype == torch.float64:
            # float64 probabilities widen the computation (as torch promotes): the
            # logits are converted, and autograd brings the gradient back to their dtype
            return cross_entropy(input.double(), target, weight, None, ignore_index, None,
                                 reduction, label_smoothing, z_loss=z_loss, softcap=softcap,
                                 grad_in_forward=grad_in_forward, num_threads=num_threads)
    elif target.dtype == torch.bool or target.dtype.is_complex:
        raise TypeError(f"{function}: target: expected class indices (an integer tensor) "
                        f"or float32/float64 probabilities, got {target.dtype}")
    loss_dtype = None
    if weight is not None:
        if not ((half or soft) and isinstance(weight, torch.Tensor)
                and weight.dtype in _HALF_DTYPES):
            _check_float_tensor(weight, "weight", function)
        if soft and weight.dtype != dtype:
            # torch's -(log_softmax(input) * target * weight): the loss in the promotion
            # of the three dtypes (a float64 weight makes a float32 call's loss float64);
            # the computation stays in the input's and target's (the weight is read
            # exactly, or rounded to float32: a relative 6e-8 of the loss)
            loss_dtype = torch.promote_types(dtype, weight.dtype)
        if not soft and weight.requires_grad and torch.is_grad_enabled():
            raise NotImplementedError(
                f"{function}: weight requires grad, but cross-entropy with class indices is "
                f"not differentiable with respect to weight (as torch's nll_loss); pass "
                f"weight.detach()")
    if inplace_backward and input.requires_grad and torch.is_grad_enabled():
        # the memory written is the view's base's: a leaf there is a parameter (torch
        # refuses an in-place operation on a view of a leaf that requires grad, too)
        base = input if input._base is None else input._base
        if base.is_leaf and base.requires_grad:
            what = "this leaf tensor" if base is input else "the leaf tensor it is a view of"
            raise ValueError(f"{function}: inplace_backward=True needs a non-leaf input "
                             f"(the output of a layer): the gradient would overwrite {what}")
    if size_average is not None or reduce is not None:
        reduction = _reduction(size_average, reduce, reduction)
    if half:
        call = _CrossEntropyCall(soft, np.float32, ignore_index, reduction, label_smoothing,
                                 z_loss, softcap, resolve_num_threads(num_threads),
                                 bool(inplace_backward), bool(grad_in_forward),
                                 loss_dtype=loss_dtype or dtype, input_dtype=input.dtype)
        return _cross_entropy_apply(input, target, weight, call)
    call = _CrossEntropyCall(soft, _NUMPY_DTYPES[dtype], ignore_index, reduction,
                             label_smoothing, z_loss, softcap, resolve_num_threads(num_threads),
                             bool(inplace_backward), bool(grad_in_forward),
                             loss_dtype=None if loss_dtype == dtype else loss_dtype)
    return _cross_entropy_apply(input, target, weight, call)


def _direct_apply(function):
    """``function.apply`` without Function.apply's Python wrapper, which (when no functorch
    transform is active) only unwraps functorch's dead wrappers: about 1.5 us of a small
    call, a tenth of torch's whole cross-entropy step at N = 1."""
    functorch_active = getattr(torch._C, "_are_functorch_transforms_active", None)
    if functorch_active is None:
        return function.apply
    direct = super(torch.autograd.Function, function).apply

    def apply(*arguments):
        if functorch_active():
            return function.apply(*arguments)
        return direct(*arguments)

    return apply


_cross_entropy_apply = _direct_apply(_CrossEntropy)


# ----------------------------------------------------------------------------------------
# Regression and binary losses
# ----------------------------------------------------------------------------------------

def _elementwise_loss_dtype(entry, tensors):
    """The dtype of torch's loss: for binary_cross_entropy_with_logits the target's (its
    loss is computed in place in a tensor made from the target); for huber_loss the
    input's (its kernel writes into a tensor like the input), times the weight; else the
    promotion of the inputs and the weight (``entry.torch.loss_dtype``)."""
    rule = entry.torch.loss_dtype
    first, target = tensors[entry.inputs[0]], tensors.get("target")
    if rule == "target":
        return target.dtype if target.dtype.is_floating_point else first.dtype
    names = ("weight",) if rule == "input" else entry.inputs[1:] + ("weight",)
    dtype = first.dtype
    for name in names:
        tensor = tensors.get(name)
        if tensor is not None and tensor.dtype.is_floating_point:
            dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def _array_names(entry):
    """The tensors an elementwise loss's Function takes: its inputs, then its array
    options (weight, the periodic factor), in the registry's order."""
    return entry.inputs + tuple(option.name for option in entry.options if option.array)


class _Elementwise(torch.autograd.Function):
    """An elementwise loss (a registry entry). ``options`` holds the NumPy API's scalar
    keywords; ``tensors`` are the entry's inputs and array options (None where absent).

    For "mean" and "sum", when a gradient is wanted, the forward is the fused pass
    (NAME_value_and_grad with ``wrt=`` the gradients autograd needs), so the inputs are
    read once, not once for the loss and again for the gradient. The backward hands
    those gradients over, scaled by grad_output when it is not 1. For "none" (whose
    backward multiplies by a grad_output per element anyway) and for a second backward,
    the backward computes them with NAME_grad."""

    @staticmethod
    def forward(ctx, entry, options, *tensors):
        names = _array_names(entry)
        options = dict(options)
        # ctx.needs_input_grad holds under torch.no_grad() too: only a recorded call
        # computes gradients in its forward
        recording = options.pop("recording")
        wanted = _elementwise_wanted(entry, ctx.needs_input_grad) if recording else ()
        arrays = [_numpy_any(tensor) for tensor in tensors]
        inputs = arrays[:len(entry.inputs)]
        keywords = dict(options, **dict(zip(names[len(entry.inputs):],
                                            arrays[len(entry.inputs):])))
        ctx.grads = None
        name = entry.name
        if wanted and options["reduction"] != "none":
            loss, grads = getattr(fastloss, f"{name}_value_and_grad")(
                *inputs, 1.0, wrt=wanted, **keywords)
            ctx.grads = dict(zip(wanted, grads))
        else:
            loss = getattr(fastloss, name)(*inputs, **keywords)
        ctx.save_for_backward(*tensors)
        ctx.entry, ctx.options = entry, options
        dtype = _elementwise_loss_dtype(entry, dict(zip(names, tensors)))
        if isinstance(loss, np.ndarray):
            return _tensor_any(loss).to(dtype)
        return _loss_tensor(loss, dtype).to(dtype)

    @staticmethod
    @first_order
    def backward(ctx, grad_output):
        entry = ctx.entry
        names = _array_names(entry)
        wanted = _elementwise_wanted(entry, ctx.needs_input_grad)
        if not wanted:
            return (None,) * (2 + len(names))
        if ctx.grads is not None:
            # the first backward takes the forward's gradients (then owned by autograd)
            by_name, ctx.grads = ctx.grads, None
            scale = grad_output.item()
            by_name = {key: _tensor_any(grad) for key, grad in by_name.items()}
            if scale != 1.0:
                by_name = {key: grad.mul_(scale) for key, grad in by_name.items()}
        else:
            arrays = [_numpy_any(tensor) for tensor in ctx.saved_tensors]
            inputs = arrays[:len(entry.inputs)]
            keywords = dict(ctx.options, **dict(zip(names[len(entry.inputs):],
                                                    arrays[len(entry.inputs):])))
            upstream = (grad_output.detach().double().numpy()
                        if ctx.options["reduction"] == "none" else float(grad_output))
            grads = getattr(fastloss, f"{entry.name}_grad")(
                *inputs, upstream, wrt=wanted, **keywords)
            by_name = dict(zip(wanted, (_tensor_any(grad) for grad in grads)))
        return (None, None, *(by_name.get(name) for name in names))


def _elementwise_wanted(entry, needs_input_grad):
    """The gradients autograd asks of elementwise loss ``entry``, as its NumPy API's wrt=."""
    return tuple(name for name, needed in zip(_array_names(entry), needs_input_grad[2:])
                 if needed and name in entry.differentiable)


def _not_differentiable(tensor, name, function, torch_name):
    """torch's RuntimeError for an argument its autograd formula does not differentiate
    (binary_cross_entropy_with_logits' weight and pos_weight), under the same condition:
    the tensor requires grad while grad mode is on."""
    if tensor is not None and tensor.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(
            f"{function}: the function '{torch_name}' is not differentiable with respect "
            f"to argument '{name}'. This input cannot have requires_grad True (as in "
            f"torch); pass {name}.detach()")


def _no_gradient(tensor, name, function, form):
    """A RuntimeError for an input that torch's formula differentiates and fastloss does
    not (sigmoid_focal_loss's targets, margin_ranking_loss's target): said plainly, never
    a silent zero."""
    if tensor is not None and tensor.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(
            f"{function}: {name}: fastloss computes no gradient with respect to {name} "
            f"({f'{form.counterpart} has one' if form.counterpart else 'the loss depends on it'}"
            f"); this input cannot have requires_grad True; pass {name}.detach()")


def _elementwise(entry, tensors, options, reduction, num_threads):
    """Check the tensors (by the NumPy API's names) and run elementwise loss ``entry``."""
    form = entry.torch
    function = f"fastloss.torch.{form.function}"
    torch_name = form.function
    by_torch_name = {ours: theirs for theirs, ours in form.arguments.items()}
    first = tensors[entry.inputs[0]]
    _half_float_tensor(first, by_torch_name[entry.inputs[0]], function)
    for name in entry.inputs[1:]:
        tensor = tensors[name]
        if isinstance(tensor, (int, float)) and not isinstance(tensor, bool):
            # a Python number (torch's gaussian_nll_loss takes one for var)
            tensor = tensors[name] = torch.tensor(float(tensor), dtype=first.dtype)
        _real_tensor(tensor, by_torch_name[name], function)
        if name in form.not_differentiable:
            _not_differentiable(tensor, by_torch_name[name], function, torch_name)
        if name in form.no_gradient:
            _no_gradient(tensor, by_torch_name[name], function, form)
        if entry.same_shape and tensor.shape != first.shape:
            raise ValueError(f"{function}: {by_torch_name[name]}: expected the input's size "
                             f"{first.shape}, got {tensor.shape}")
        if form.size_warning and tensor.shape != first.shape:
            warnings.warn(f"Using a target size ({tensor.shape}) that is different to the "
                          f"input size ({first.shape}). This will likely lead to incorrect "
                          f"results due to broadcasting. Please ensure they have the same "
                          f"size.", stacklevel=4)
    for option in entry.options:
        tensor = tensors.get(option.name)
        if not option.array or tensor is None:
            continue
        if not isinstance(tensor, torch.Tensor):
            # a number or a list for an array option (pinball's quantile): the NumPy
            # API's own check says what is wrong with it
            tensors[option.name] = torch.as_tensor(np.asarray(option.checked(tensor)))
            continue
        argument = by_torch_name.get(option.name, option.name)
        _real_tensor(tensor, argument, function)
        if option.name in form.not_differentiable:
            _not_differentiable(tensor, argument, function, torch_name)
        elif option.name in form.no_gradient:  # bradley_terry's margin
            _no_gradient(tensor, argument, function, form)
        elif option.name == "weight" and tensor.shape != first.shape:
            raise ValueError(f"{function}: {argument}: expected the input's size "
                             f"{first.shape}, got {tensor.shape}")
    options = {name: _number(value) for name, value in options.items()}
    options = dict(options, reduction=reduction, num_threads=num_threads,
                   recording=torch.is_grad_enabled())
    return _Elementwise.apply(entry, options,
                              *(tensors.get(name) for name in _array_names(entry)))


def _generate_elementwise(entry):
    """The adapter function and the nn.Module class of elementwise loss ``entry``, with
    torch's signatures (``entry.torch``)."""
    form = entry.torch
    by_torch_name = {ours: theirs for theirs, ours in form.arguments.items()}
    arrays = set(_array_names(entry))
    tensors = "{" + ", ".join(f"{ours!r}: {theirs}" for theirs, ours in form.arguments.items()
                              if ours in arrays) + "}"
    scalars = "{" + ", ".join(f"{ours!r}: {theirs}" for theirs, ours in form.arguments.items()
                              if ours not in arrays) + "}"
    legacy = "size_average" in form.signature
    reduction = ("_reduction(size_average, reduce, reduction, _entry.reductions)" if legacy
                 else "reduction_arg(reduction, _entry.reductions)")
    namespace = {"_elementwise": _elementwise, "_entry": entry, "_reduction": _reduction,
                 "reduction_arg": reduction_arg}
    differentiable = ", ".join(by_torch_name.get(name, name)
                               for name in entry.differentiable)
    doc = (f"``{form.counterpart or entry.name}`` computed by fastloss "
           f"(:func:`fastloss.{entry.name}`). {form.doc}Gradients w.r.t. {differentiable}.")
    function = _registry.make_function(
        form.function,
        f"{form.signature}, {'' if '*' in form.signature else '*, '}num_threads=None",
        f"return _elementwise(_entry, {tensors}, {scalars}, {reduction}, num_threads)",
        namespace, doc, __name__)
    function = _named_errors(function, by_torch_name)

    # the module: torch's class (when torch has one) with a fastloss forward
    base = getattr(torch.nn, form.module_base) if form.module_base else torch.nn.Module
    parameters = [part.split("=")[0].strip() for part in form.module_signature.split(",")
                  if part.strip() and part.strip() != "*"]
    forwarded = [name for name in parameters if name not in ("size_average", "reduce")]
    positional = ", ".join(theirs for theirs, ours in form.arguments.items()
                           if ours in entry.inputs)
    if form.module_base:
        init_body = ("super(_cls, self).__init__("
                     + ", ".join(f"{name}={name}" for name in parameters) + ")")
    else:
        init_body = "super(_cls, self).__init__()" + "".join(
            f"; self.{name} = {name}" for name in parameters)
    star = "" if "*" in form.module_signature else "*, "
    init = _registry.make_function(
        "__init__", f"self, {form.module_signature}, {star}num_threads=None",
        init_body + "; self.num_threads = num_threads", namespace, None, __name__)
    forward = _registry.make_function(
        "forward", f"self, {positional}",
        f"return _function({positional}, "
        + "".join(f"{name}=self.{name}, " for name in forwarded)
        + "num_threads=self.num_threads)", dict(namespace, _function=function), None,
        __name__)
    members = {"__init__": init, "forward": forward, "__module__": __name__}
    if not form.module_base:
        members["extra_repr"] = _registry.make_function(
            "extra_repr", "self",
            "return ', '.join(f'{name}={getattr(self, name)!r}' for name in _names)",
            {"_names": parameters}, None, __name__)
    module = type(form.module, (base,), {
        **members,
        "__doc__": f"``torch.nn.{form.module_base}`` whose forward is :func:`{form.function}`."
        if form.module_base else f":func:`{form.function}` as a module."})
    init.__globals__["_cls"] = module
    return function, module


# ----------------------------------------------------------------------------------------
# Embedding losses: triplet margin, contrastive (pairs and all pairs), InfoNCE
# ----------------------------------------------------------------------------------------

class _Embedding(torch.autograd.Function):
    """fastloss.NAME over embedding tensors: the first ``n_embeddings`` of ``tensors`` are
    differentiable, the rest (labels) are not.

    For "mean" and "sum" the forward runs NAME_value_and_grad when a gradient is wanted
    (one pass: for the all-pairs losses the Gram product is not formed twice) and keeps
    the gradients, one array per embedding input (N x D, the inputs' size); the backward
    scales them by grad_output. For "none", or a second backward (retain_graph), the
    backward calls NAME_grad with the per-sample grad_output.

    bfloat16 and float16 embeddings are read in place (bfloat16 as an ml_dtypes.bfloat16
    view of its memory); the loss comes back in the embeddings' torch dtype (a rounding
    of fastloss's float32 value) and each gradient in its input's dtype."""

    @staticmethod
    def forward(ctx, name, options, n_embeddings, *tensors):
        arrays = [_numpy_any(tensor) for tensor in tensors]
        # ctx.needs_input_grad holds under torch.no_grad() too: only a recorded call
        # computes gradients in its forward
        options = dict(options)
        recording = options.pop("recording")
        want_grad = recording and any(ctx.needs_input_grad[3:3 + n_embeddings])
        ctx.grads = None
        if want_grad and options["reduction"] != "none":
            loss, grads = getattr(fastloss, f"{name}_value_and_grad")(*arrays, **options)
            ctx.grads = grads if isinstance(grads, tuple) else (grads,)
        else:
            loss = getattr(fastloss, name)(*arrays, **options)
        ctx.save_for_backward(*tensors)
        ctx.name, ctx.options, ctx.n_embeddings = name, options, n_embeddings
        dtype = tensors[0].dtype
        for tensor in tensors[1:n_embeddings]:
            dtype = torch.promote_types(dtype, tensor.dtype)
        result = _loss_tensor(loss, dtype)
        return result if result.dtype == dtype else result.to(dtype)

    @staticmethod
    @first_order
    def backward(ctx, grad_output):
        tensors = ctx.saved_tensors
        n_embeddings = ctx.n_embeddings
        reduction = ctx.options["reduction"]
        if ctx.grads is not None:
            # the first backward takes the forward's gradients (then owned by autograd)
            grads, ctx.grads = ctx.grads, None
            scale = float(grad_output)
            grads = [_tensor_any(grad) for grad in grads]
            if scale != 1.0:
                grads = [grad.mul_(scale) for grad in grads]
        else:
            arrays = [_numpy_any(tensor) for tensor in tensors]
            upstream = (grad_output.float() if grad_output.dtype in _HALF_DTYPES
                        else grad_output)
            grads = getattr(fastloss, f"{ctx.name}_grad")(
                *arrays, _upstream(upstream, reduction), **ctx.options)
            grads = [_tensor_any(grad)
                     for grad in (grads if isinstance(grads, tuple) else (grads,))]
        grads = [grad if needed else None
                 for grad, needed in zip(grads, ctx.needs_input_grad[3:3 + n_embeddings])]
        return (None, None, None, *grads, *([None] * (len(tensors) - n_embeddings)))


def _embedding_loss(name, function, embeddings, others, options):
    """Check the tensors and run fastloss.NAME: ``embeddings`` are (argument name, float
    tensor) pairs, ``others`` (name, tensor, kind) with kind "labels" (integers) or
    "label" (reals, not differentiated).  Embeddings may be float32, float64, bfloat16
    or float16 (bfloat16 needs ml_dtypes, as the pointwise losses)."""
    for argument, tensor in embeddings:
        _half_float_tensor(tensor, argument, function)
    tensors = [tensor for _, tensor in embeddings]
    for argument, tensor, kind in others:
        if kind == "labels":
            _cpu_tensor(tensor, argument, function)
            if tensor.dtype.is_floating_point or tensor.dtype.is_complex:
                raise TypeError(f"{function}: {argument}: expected an integer tensor, "
                                f"got {tensor.dtype}")
        else:
            _real_tensor(tensor, argument, function)
            _no_grad_needed(tensor, argument, function)
        tensors.append(tensor)
    options = dict(options, recording=torch.is_grad_enabled())
    return _Embedding.apply(name, options, len(embeddings), *tensors)


def triplet_margin_loss(anchor, positive, negative, margin=1.0, p=2, eps=1e-6, swap=False,
                        size_average=None, reduce=None, reduction="mean", *, num_threads=None):
    """``torch.nn.functional.triplet_margin_loss`` computed by fastloss: per triplet
    ``max(margin + d(a, p) - d(a, n), 0)`` with ``d(u, v) = |u - v + eps|_p``
    (``F.pairwise_distance``: any p, ``inf`` and ``p < 1`` included), ``swap`` as torch.
    Shapes as torch: the three inputs have one number of dimensions and broadcast, the
    features on the last axis ((N, D), (D) for one triplet, (B, N, D), ...); "none" gives
    their broadcast shape without it. Gradients w.r.t. all three (for ``p=0``, where
    torch's graph has none, zeros)."""
    function = "fastloss.torch.triplet_margin_loss"
    reduction = _reduction(size_average, reduce, reduction)
    margin, p, eps = _number(margin), _number(p), _number(eps)
    named = [("anchor", anchor), ("positive", positive), ("negative", negative)]
    for argument, tensor in named:
        _half_float_tensor(tensor, argument, function)
    if len({tensor.dim() for _, tensor in named}) != 1:
        raise ValueError(f"{function}: anchor, positive and negative must have the same "
                         f"number of dimensions, got {anchor.dim()}, {positive.dim()} and "
                         f"{negative.dim()}")
    if isinstance(margin, numbers.Real) and not isinstance(margin, bool) and margin <= 0:
        # (anything but a number: the NumPy API's check names margin)
        raise ValueError(f"{function}: margin must be greater than 0, got {margin}")
    options = {"margin": margin, "p": p, "eps": eps, "swap": swap, "reduction": reduction,
               "num_threads": num_threads}
    return _embedding_loss("triplet_margin", function, named, [], options)


def contrastive(x1, x2, label, *, margin=1.0, metric="euclidean", reduction="mean",
                num_threads=None):
    """:func:`fastloss.contrastive` (pairs of rows, Hadsell, Chopra & LeCun 2006) on
    tensors: per pair ``0.5 * (y d**2 + (1 - y) relu(margin - d)**2)``; gradients w.r.t.
    ``x1`` and ``x2`` (N, D); ``label`` (N,) is not differentiated."""
    options = {"margin": margin, "metric": metric, "reduction": reduction_arg(reduction),
               "num_threads": num_threads}
    return _embedding_loss("contrastive", "fastloss.torch.contrastive",
                           [("x1", x1), ("x2", x2)], [("label", label, "label")], options)


def contrastive_pairwise(embeddings, labels, *, pos_margin=0.0, neg_margin=1.0,
                         metric="euclidean", reduction="mean", num_threads=None):
    """:func:`fastloss.contrastive_pairwise` on tensors: over all pairs i < j of the batch,
    ``y_ij relu(d_ij - pos_margin)**2 + (1 - y_ij) relu(neg_margin - d_ij)**2`` with
    ``y_ij = labels_i == labels_j`` and d as ``torch.cdist`` (or sqeuclidean, cosine);
    "none" gives the N x N matrix. Gradient w.r.t. ``embeddings`` (N, D)."""
    options = {"pos_margin": pos_margin, "neg_margin": neg_margin, "metric": metric,
               "reduction": reduction_arg(reduction), "num_threads": num_threads}
    return _embedding_loss("contrastive_pairwise", "fastloss.torch.contrastive_pairwise",
                           [("embeddings", embeddings)], [("labels", labels, "labels")],
                           options)


def info_nce(query, key, *, temperature=0.05, symmetric=False, reduction="mean",
             precision="input", num_threads=None):
    """:func:`fastloss.info_nce` on tensors: rows L2-normalised, ``s = q k^T / temperature``,
    cross-entropy of row i with target i (in-batch negatives; sentence-transformers'
    MultipleNegativesRankingLoss with ``scale = 1 / temperature``); ``symmetric=True``
    averages it with the column-wise loss (CLIP). Gradients w.r.t. ``query`` (N, D) and
    ``key`` (M, D). ``precision``: the products' precision, the inputs' ("input", as
    torch computes them) or "float64" (see docs/accuracy.rst)."""
    options = {"temperature": temperature, "symmetric": symmetric,
               "reduction": reduction_arg(reduction), "precision": precision,
               "num_threads": num_threads}
    return _embedding_loss("info_nce", "fastloss.torch.info_nce",
                           [("query", query), ("key", key)], [], options)


# ----------------------------------------------------------------------------------------
# nn.Module classes: torch's classes with a fastloss forward
# ----------------------------------------------------------------------------------------

class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    """``torch.nn.CrossEntropyLoss`` whose forward is :func:`cross_entropy`; keyword-only
    extras ``z_loss``, ``softcap``, ``inplace_backward``, ``grad_in_forward`` and
    ``num_threads``."""

    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None,
                 reduction="mean", label_smoothing=0.0, *, z_loss=0.0, softcap=None,
                 inplace_backward=False, grad_in_forward=True, num_threads=None):
        super().__init__(weight, size_average, ignore_index, reduce, reduction,
                         label_smoothing)
        self.z_loss = z_loss
        self.softcap = softcap
        self.inplace_backward = inplace_backward
        self.grad_in_forward = grad_in_forward
        self.num_threads = num_threads

    def forward(self, input, target):
        return cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                             reduction=self.reduction, label_smoothing=self.label_smoothing,
                             z_loss=self.z_loss, softcap=self.softcap,
                             inplace_backward=self.inplace_backward,
                             grad_in_forward=self.grad_in_forward,
                             num_threads=self.num_threads)


class TripletMarginLoss(torch.nn.TripletMarginLoss):
    """``torch.nn.TripletMarginLoss`` whose forward is :func:`triplet_margin_loss`."""

    def __init__(self, margin=1.0, p=2.0, eps=1e-6, swap=False, size_average=None,
                 reduce=None, reduction="mean", *, num_threads=None):
        super().__init__(margin, p, eps, swap, size_average, reduce, reduction)
        self.num_threads = num_threads

    def forward(self, anchor, positive, negative):
        return triplet_margin_loss(anchor, positive, negative, margin=self.margin, p=self.p,
                                   eps=self.eps, swap=self.swap, reduction=self.reduction,
                                   num_threads=self.num_threads)


class ContrastiveLoss(torch.nn.Module):
    """:func:`contrastive` as a module: ``loss(x1, x2, label)``."""

    def __init__(self, margin=1.0, metric="euclidean", reduction="mean", *, num_threads=None):
        super().__init__()
        self.margin, self.metric, self.reduction = margin, metric, reduction
        self.num_threads = num_threads

    def forward(self, x1, x2, label):
        return contrastive(x1, x2, label, margin=self.margin, metric=self.metric,
                           reduction=self.reduction, num_threads=self.num_threads)

    def extra_repr(self):
        return f"margin={self.margin}, metric={self.metric!r}, reduction={self.reduction!r}"


class ContrastivePairwiseLoss(torch.nn.Module):
    """:func:`contrastive_pairwise` as a module: ``loss(embeddings, labels)``."""

    def __init__(self, pos_margin=0.0, neg_margin=1.0, metric="euclidean", reduction="mean",
                 *, num_threads=None):
        super().__init__()
        self.pos_margin, self.neg_margin = pos_margin, neg_margin
        self.metric, self.reduction = metric, reduction
        self.num_threads = num_threads

    def forward(self, embeddings, labels):
        return contrastive_pairwise(embeddings, labels, pos_margin=self.pos_margin,
                                    neg_margin=self.neg_margin, metric=self.metric,
                                    reduction=self.reduction, num_threads=self.num_threads)

    def extra_repr(self):
        return (f"pos_margin={self.pos_margin}, neg_margin={self.neg_margin}, "
                f"metric={self.metric!r}, reduction={self.reduction!r}")


class InfoNCELoss(torch.nn.Module):
    """:func:`info_nce` as a module: ``loss(query, key)``."""

    def __init__(self, temperature=0.05, symmetric=False, reduction="mean", *,
                 precision="input", num_threads=None):
        super().__init__()
        self.temperature, self.symmetric, self.reduction = temperature, symmetric, reduction
        self.precision = precision
        self.num_threads = num_threads

    def forward(self, query, key):
        return info_nce(query, key, temperature=self.temperature, symmetric=self.symmetric,
                        reduction=self.reduction, precision=self.precision,
                        num_threads=self.num_threads)

    def extra_repr(self):
        return (f"temperature={self.temperature}, symmetric={self.symmetric}, "
                f"reduction={self.reduction!r}, precision={self.precision!r}")


# ----------------------------------------------------------------------------------------
# Objectives over the vocabulary: token log-probabilities, distillation (fastloss/distill.py)
# ----------------------------------------------------------------------------------------

def _logits_tensor(tensor, name, function):
    """A float32, float64, bfloat16 or float16 CPU tensor as the array the kernels read:
    its own memory (bfloat16: its bit patterns as int16), or a copy when its last axis
    is not contiguous."""
    _half_float_tensor(tensor, name, function)
    detached = tensor.detach()
    if detached.dim() and detached.size(-1) > 1 and detached.stride(-1) != 1:
        detached = detached.contiguous()
    return _memory(detached)


def _vocab_bits(tensor):
    """The kernels' ``bits`` for logits of `tensor`'s dtype (bfloat16 arrives as int16)."""
    return "bfloat16" if tensor.dtype == torch.bfloat16 else None


def _upstream_numpy(grad):
    """A per-row upstream gradient as a NumPy array (half ones as float32: the kernels
    read float64 upstream values, and NumPy has no bfloat16)."""
    grad = grad.detach()
    return (grad.float() if grad.dtype in _HALF_DTYPES else grad).numpy()


def _distill_run(name, want_grad, arrays, options, bits, grad_output=None, wrt=()):
    """One fastloss.distill_kl / jsd call on the kernels' arrays (``bits``: bfloat16
    logits as int16 arrays): ``(loss, grads)`` as _kernels.distill_call returns them."""
    from fastloss import distill as numpy_api

    options = dict(options)
    if name == "distill_kl":
        divergence, beta = numpy_api._direction(options.pop("direction")), 0.0
    else:
        divergence, beta = numpy_api._jsd_divergence(options.pop("beta"))
    return _kernels.distill_call(
        want_grad, *arrays, divergence, beta, options["temperature"], options.get("target"),
        options["ignore_index"], options["reduction"], grad_output, wrt or "student_logits",
        None, resolve_num_threads(options["num_threads"]), None, bits)


def _vocab_value(array, dtype):
    """A per-row result of the kernels (float32 for half logits) as a tensor of the
    logits' dtype, as torch returns it (half: a rounding of the float32 value)."""
    tensor = torch.from_numpy(array)
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def _label_tensor(tensor, name, function):
    _cpu_tensor(tensor, name, function)
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise TypeError(f"{function}: {name}: expected an integer tensor, got {tensor.dtype}")
    return tensor.numpy()


class _TokenLogProbs(torch.autograd.Function):
    """fastloss.token_log_probs: the forward computes the values only (the gradient
    depends on both upstream gradients, known in the backward); the backward is
    token_log_probs_grad, one read of the logits and one write."""

    @staticmethod
    def forward(ctx, logits, target, options, return_entropy):
        array = _logits_tensor(logits, "logits", "fastloss.torch.token_log_probs")
        labels = _label_tensor(target, "target", "fastloss.torch.token_log_probs")
        log_prob, entropy, _ = _kernels.tlp_call(
            False, array, labels, options["temperature"], options["ignore_index"], True,
            return_entropy, num_threads=resolve_num_threads(options["num_threads"]),
            bits=_vocab_bits(logits))
        ctx.save_for_backward(logits)
        ctx.labels, ctx.options = labels, options
        ctx.set_materialize_grads(False)
        if return_entropy:
            return _vocab_value(log_prob, logits.dtype), _vocab_value(entropy, logits.dtype)
        return _vocab_value(log_prob, logits.dtype)

    @staticmethod
    @first_order
    def backward(ctx, grad_log_prob, grad_entropy=None):
        (logits,) = ctx.saved_tensors
        if grad_log_prob is None and grad_entropy is None:
            return None, None, None, None
        upstream = 0.0 if grad_log_prob is None else _upstream_numpy(grad_log_prob)
        upstream_entropy = None if grad_entropy is None else _upstream_numpy(grad_entropy)
        _, _, grad = _kernels.tlp_call(
            True, _logits_tensor(logits, "logits", "fastloss.torch.token_log_probs"),
            ctx.labels, ctx.options["temperature"], ctx.options["ignore_index"], False, False,
            upstream, upstream_entropy,
            num_threads=resolve_num_threads(ctx.options["num_threads"]),
            bits=_vocab_bits(logits))
        return _gradient_tensor(grad, logits.dtype), None, None, None


def token_log_probs(logits, target, *, temperature=1.0, ignore_index=-100,
                    return_entropy=False, num_threads=None):
    """:func:`fastloss.token_log_probs` on tensors: ``log_softmax(logits / T, -1)`` gathered
    at ``target`` (shape (...) for logits (..., V)), and with ``return_entropy`` the
    entropy ``-(softmax * log_softmax).sum(-1)``; 0 for rows whose target is
    ``ignore_index``. Differentiable w.r.t. the logits (the gradient of any weighted sum of
    both outputs, in one read of the logits and one write)."""
    _half_float_tensor(logits, "logits", "fastloss.torch.token_log_probs")
    options = {"temperature": temperature, "ignore_index": ignore_index,
               "num_threads": num_threads}
    return _TokenLogProbs.apply(logits, target, options, bool(return_entropy))


_DISTILL_INPUTS = ("student_logits", "teacher_logits")


class _Distill(torch.autograd.Function):
    """fastloss.distill_kl / jsd: when autograd will ask for a gradient of a reduced loss,
    the forward is the fused pass (each input read once, the wanted gradients written
    once) and keeps the gradients until the backward, which scales them by grad_output
    when that is not 1; for "none", or a second backward, the backward calls NAME_grad."""

    @staticmethod
    def forward(ctx, name, options, student, teacher):
        function = f"fastloss.torch.{name}"
        arrays = (_logits_tensor(student, "student_logits", function),
                  _logits_tensor(teacher, "teacher_logits", function))
        options = dict(options)
        recording = options.pop("recording")
        wrt = tuple(argument for argument, needed in zip(_DISTILL_INPUTS,
                                                         ctx.needs_input_grad[2:4]) if needed)
        bits = _vocab_bits(student) if student.dtype == teacher.dtype else None
        ctx.grads = None
        if recording and wrt and options["reduction"] != "none":
            loss, grads = _distill_run(name, True, arrays, options, bits, 1.0, wrt)
            ctx.grads = dict(zip(wrt, grads if isinstance(grads, tuple) else (grads,)))
        else:
            loss, _ = _distill_run(name, False, arrays, options, bits)
        ctx.save_for_backward(student, teacher)
        ctx.name, ctx.options, ctx.wrt, ctx.bits = name, options, wrt, bits
        if isinstance(loss, np.ndarray):
            return _vocab_value(loss, student.dtype)
        return torch.tensor(loss, dtype=torch.float64).to(student.dtype)

    @staticmethod
    @first_order
    def backward(ctx, grad_output):
        student, teacher = ctx.saved_tensors
        if ctx.grads is not None:
            grads, ctx.grads = ctx.grads, None
            scale = float(grad_output)
            grads = {argument: _gradient_tensor(grad, student.dtype)
                     for argument, grad in grads.items()}
            if scale != 1.0:
                grads = {argument: grad.mul_(scale) for argument, grad in grads.items()}
        else:
            function = f"fastloss.torch.{ctx.name}"
            arrays = (_logits_tensor(student, "student_logits", function),
                      _logits_tensor(teacher, "teacher_logits", function))
            upstream = (_upstream_numpy(grad_output) if ctx.options["reduction"] == "none"
                        else float(grad_output))
            _, computed = _distill_run(ctx.name, True, arrays, ctx.options, ctx.bits,
                                       upstream, ctx.wrt)
            computed = computed if isinstance(computed, tuple) else (computed,)
            grads = {argument: _gradient_tensor(grad, student.dtype)
                     for argument, grad in zip(ctx.wrt, computed)}
        return (None, None, grads.get("student_logits"), grads.get("teacher_logits"))


def _distill(name, student_logits, teacher_logits, target, options):
    function = f"fastloss.torch.{name}"
    _half_float_tensor(student_logits, "student_logits", function)
    _half_float_tensor(teacher_logits, "teacher_logits", function)
    if teacher_logits.dtype != student_logits.dtype:
        raise TypeError(f"{function}: teacher_logits: expected the student's dtype "
                        f"{student_logits.dtype} (the two logits in one dtype: float32, "
                        f"float64, bfloat16 or float16), got {teacher_logits.dtype}")
    options = dict(options, recording=torch.is_grad_enabled())
    if target is not None:
        options["target"] = _label_tensor(target, "target", function)
    return _Distill.apply(name, options, student_logits, teacher_logits)


def distill_kl(student_logits, teacher_logits, target=None, *, temperature=1.0,
               direction="forward", ignore_index=-100, reduction="batchmean",
               num_threads=None):
    """:func:`fastloss.distill_kl` on tensors: ``direction="forward"`` is
    ``F.kl_div(log_softmax(student / T), log_softmax(teacher / T), log_target=True)``
    summed over the vocabulary (KL(teacher || student)), "reverse" KL(student || teacher);
    "batchmean" averages over the rows whose ``target`` is not ``ignore_index``.
    Gradients w.r.t. whichever of the two logits require grad (the teacher's usually do
    not), from one fused pass."""
    options = {"temperature": temperature, "direction": direction,
               "ignore_index": ignore_index, "reduction": reduction,
               "num_threads": num_threads}
    return _distill("distill_kl", student_logits, teacher_logits, target, options)


def jsd(student_logits, teacher_logits, target=None, *, beta=0.5, temperature=1.0,
        ignore_index=-100, reduction="batchmean", num_threads=None):
    """:func:`fastloss.jsd` on tensors: the generalised Jensen-Shannon divergence
    ``beta KL(P || M) + (1 - beta) KL(Q || M)``, ``M = beta P + (1 - beta) Q`` (P the
    teacher's, Q the student's softmax at temperature T), as Liger-Kernel's ``LigerJSD``
    and TRL's ``generalized_jsd_loss`` (beta = 0 and 1: the forward and reverse KL)."""
    options = {"beta": beta, "temperature": temperature, "ignore_index": ignore_index,
               "reduction": reduction, "num_threads": num_threads}
    return _distill("jsd", student_logits, teacher_logits, target, options)


class TokenLogProbs(torch.nn.Module):
    """:func:`token_log_probs` as a module: ``forward(logits, target)``."""

    def __init__(self, temperature=1.0, ignore_index=-100, return_entropy=False, *,
                 num_threads=None):
        super().__init__()
        self.temperature, self.ignore_index = temperature, ignore_index
        self.return_entropy, self.num_threads = return_entropy, num_threads

    def forward(self, logits, target):
        return token_log_probs(logits, target, temperature=self.temperature,
                               ignore_index=self.ignore_index,
                               return_entropy=self.return_entropy,
                               num_threads=self.num_threads)

    def extra_repr(self):
        return (f"temperature={self.temperature}, ignore_index={self.ignore_index}, "
                f"return_entropy={self.return_entropy}")


class DistillKLLoss(torch.nn.Module):
    """:func:`distill_kl` as a module: ``forward(student_logits, teacher_logits,
    target=None)``."""

    def __init__(self, temperature=1.0, direction="forward", ignore_index=-100,
                 reduction="batchmean", *, num_threads=None):
        super().__init__()
        self.temperature, self.direction = temperature, direction
        self.ignore_index, self.reduction, self.num_threads = ignore_index, reduction, num_threads

    def forward(self, student_logits, teacher_logits, target=None):
        return distill_kl(student_logits, teacher_logits, target,
                          temperature=self.temperature, direction=self.direction,
                          ignore_index=self.ignore_index, reduction=self.reduction,
                          num_threads=self.num_threads)

    def extra_repr(self):
        return (f"temperature={self.temperature}, direction={self.direction!r}, "
                f"reduction={self.reduction!r}")


class JSDLoss(torch.nn.Module):
    """:func:`jsd` as a module: ``forward(student_logits, teacher_logits, target=None)``."""

    def __init__(self, beta=0.5, temperature=1.0, ignore_index=-100, reduction="batchmean",
                 *, num_threads=None):
        super().__init__()
        self.beta, self.temperature = beta, temperature
        self.ignore_index, self.reduction, self.num_threads = ignore_index, reduction, num_threads

    def forward(self, student_logits, teacher_logits, target=None):
        return jsd(student_logits, teacher_logits, target, beta=self.beta,
                   temperature=self.temperature, ignore_index=self.ignore_index,
                   reduction=self.reduction, num_threads=self.num_threads)

    def extra_repr(self):
        return (f"beta={self.beta}, temperature={self.temperature}, "
                f"reduction={self.reduction!r}")


__all__ += ["distill_kl", "jsd", "token_log_probs", "DistillKLLoss", "JSDLoss",
            "TokenLogProbs"]


# ----------------------------------------------------------------------------------------
# The elementwise losses' functions and modules, generated from the registry
# ----------------------------------------------------------------------------------------

for _entry in _registry.family("elementwise") + _registry.family("box"):
    if _entry.torch is not None:
        _function, _module = _generate_elementwise(_entry)
        globals()[_function.__name__] = _function
        globals()[_module.__name__] = _module
        __all__ += [_function.__name__, _module.__name__]
del _entry, _function, _module


from fastloss.torch._linear_cross_entropy import (  # noqa: E402 (uses the helpers above)
    LinearCrossEntropyLoss, linear_cross_entropy)

__all__ += ["linear_cross_entropy", "LinearCrossEntropyLoss"]

from fastloss.torch._linear_token_log_probs import (  # noqa: E402 (uses the helpers above)
    LinearTokenLogProbs, linear_token_log_probs)

__all__ += ["linear_token_log_probs", "LinearTokenLogProbs"]

# per-sequence log-probabilities for preference training (fastloss/torch/_preference.py)
from fastloss.torch._preference import sequence_log_probs  # noqa: E402

__all__ += ["sequence_log_probs"]


# the hand-written functions' errors named as the generated ones' (_named_errors); the
# modules call them by these names (the linear forms are wrapped where they are defined,
# with their own renames, so that their modules call the wrapped ones)
for _name in __all__:
    if _name[0].islower() and not hasattr(globals()[_name], "__wrapped__"):
        globals()[_name] = _named_errors(globals()[_name],
                                         {"logits": "input"} if _name == "cross_entropy"
                                         else None)
del _name


def __getattr__(name):
    """``fastloss.torch.distributed`` on first use: ``import fastloss.torch`` does not
    import torch.distributed."""
    if name == "distributed":
        import importlib

        return importlib.import_module("fastloss.torch.distributed")
    raise AttributeError(f"module 'fastloss.torch' has no attribute {name!r}")
