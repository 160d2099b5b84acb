"""``fastloss.torch.linear_cross_entropy`` and ``LinearCrossEntropyLoss``: torch 2.13's
``F.linear_cross_entropy`` and ``nn.LinearCrossEntropyLoss`` by blocks of rows (the
logits never exist).

The block schedule is fastloss.linear_cross_entropy's (``_schedule``: the softmax
statistics and the logits' gradient from the cross-entropy engine's C kernels, on a
zero-copy NumPy view of the scratch); its products here are torch's own matmul on the
tensors (``_TorchProducts``), in the input's dtype, into a preallocated scratch and the
gradients: one BLAS and one thread pool (torch's), no NumPy BLAS beside it, and
bfloat16 / float16 inputs on torch's half-precision products.

Imported by fastloss.torch, which exports both names.
"""
import numpy as np
import torch

from fastloss import _kernels
from fastloss._config import resolve_num_threads
from fastloss._validation import reduction_arg
from fastloss.linear_cross_entropy import _budget_block_rows, _Problem, _schedule
from fastloss.torch import (_FLOAT_DTYPES, _HALF_DTYPES, _cpu_tensor, _empty, _loss_tensor,
                            _named_errors, _number, _numpy, _upstream)
from fastloss.torch._autograd import first_order

__all__ = ["linear_cross_entropy", "LinearCrossEntropyLoss"]

_FUNCTION = "fastloss.torch.linear_cross_entropy"
_GRADIENTS = ("hidden", "classifier", "bias")
_INPUT_DTYPES = _FLOAT_DTYPES + _HALF_DTYPES
# the NumPy dtype in which the kernels read class weights and probabilities
_AUX_DTYPES = {torch.float32: np.float32, torch.float64: np.float64,
               torch.bfloat16: np.float32, torch.float16: np.float32}


def _kernel_view(tensor):
    """The tensor's memory as the kernels read it: a NumPy array (float16, float32,
    float64), or for bfloat16 its 16-bit patterns (int16) with bits="bfloat16"."""
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy()
    return tensor.numpy()


class _TorchProducts:
    """The three products on torch's matmul, in the input's dtype (the back-end of
    fastloss.linear_cross_entropy._schedule; see _NumpyProducts there for what it asks):
    ``addmm`` into the scratch for the logits, ``mm`` into the rows of the hidden's
    gradient, ``addmm_`` (beta = 1) accumulating the classifier's gradient in place, and
    the bias's gradient as float64 column sums of the logits' gradient (the kernels'
    column_sums: torch's ``sum(0, dtype=torch.float64)`` would convert the whole block
    to float64 first)."""

    def __init__(self, hidden, classifier, bias, rows_per_block, threads, want=()):
        self.hidden, self.classifier, self.bias = hidden, classifier, bias
        self.threads = threads
        n_rows, n_features = hidden.shape
        n_classes = classifier.shape[0]
        dtype = hidden.dtype
        self.scratch_tensor = _empty((min(rows_per_block, max(n_rows, 1)), n_classes), dtype)
        self.scratch = _kernel_view(self.scratch_tensor)
        self.bits = "bfloat16" if dtype == torch.bfloat16 else None
        self.grad_hidden = _empty((n_rows, n_features), dtype) if "hidden" in want else None
        self.grad_classifier = (_empty((n_classes, n_features), dtype)
                                if "classifier" in want else None)
        self.bias_sums = (np.zeros(n_classes, np.float64)
                          if "bias" in want and bias is not None else None)
        self.grad_bias = None

    def logits(self, start, stop):
        block = self.scratch_tensor[:stop - start]
        rows = self.hidden[start:stop]
        if self.bias is not None:
            torch.addmm(self.bias, rows, self.classifier.T, out=block)
        else:
            torch.mm(rows, self.classifier.T, out=block)
        return self.scratch[:stop - start]

    def backward(self, start, stop):
        grad = self.scratch_tensor[:stop - start]
        if self.grad_hidden is not None:
            torch.mm(grad, self.classifier, out=self.grad_hidden[start:stop])
        if self.grad_classifier is not None:
            if start == 0:
                torch.mm(grad.T, self.hidden[start:stop], out=self.grad_classifier)
            else:
                self.grad_classifier.addmm_(grad.T, self.hidden[start:stop])
        if self.bias_sums is not None:
            _kernels.column_sums(self.scratch[:stop - start], self.bias_sums, self.threads,
                                 bits=self.bits)

    def finish(self, n_rows):
        if self.grad_classifier is not None and n_rows == 0:
            self.grad_classifier.zero_()
        if self.bias_sums is not None:
            self.grad_bias = torch.from_numpy(self.bias_sums).to(self.hidden.dtype)


def _block_height(n_rows, n_classes, itemsize, block_rows, bias):
    """The adapter's rows per block: from the NumPy API's budget (the classifier's
    gradient accumulates in place: no tile); with a bias, its float64 sums and their
    conversion."""
    return _budget_block_rows(n_rows, n_classes, itemsize, block_rows, 0, 2 if bias else 0)


class _Call:
    """The checked options of one call, and whether autograd records it."""

    __slots__ = ("options", "reduction", "recording", "block_rows", "num_threads")

    def __init__(self, options, reduction, block_rows, num_threads):
        self.options, self.reduction = options, reduction
        self.block_rows, self.num_threads = block_rows, num_threads
        # ctx.needs_input_grad says which inputs require grad under torch.no_grad() too
        self.recording = torch.is_grad_enabled()

    def run(self, tensors, grad_output=None, want=()):
        """The loss (a float, or a tensor of the batch shape for "none") and the
        gradients named in ``want`` (a dict of tensors), on detached ``tensors``."""
        input, linear_weight, linear_bias, target, weight = tensors
        dtype = input.dtype
        half = dtype in _HALF_DTYPES
        if half:
            # class weights and probabilities are read in float32 beside half logits
            weight = None if weight is None else weight.float()
            if target.dtype.is_floating_point:
                target = target.float()
            problem = _Problem(input, linear_weight, _numpy(target), linear_bias,
                               _numpy(weight), reduction=self.reduction,
                               checked_dtype=np.float32, **self.options)
        else:
            # float32 / float64: NumPy views (no copy) for _Problem's checks
            problem = _Problem(_numpy(input), _numpy(linear_weight), _numpy(target),
                               _numpy(linear_bias), _numpy(weight),
                               reduction=self.reduction, **self.options)
        hidden = input.reshape(problem.n_rows, problem.n_features)
        rows_per_block = _block_height(problem.n_rows, problem.n_classes, dtype.itemsize,
                                       self.block_rows, linear_bias is not None)
        products = _TorchProducts(hidden, linear_weight, linear_bias, rows_per_block,
                                  self.num_threads, want)
        loss = _schedule(problem, products, self.num_threads, rows_per_block, grad_output,
                         bool(want))
        if self.reduction == "none":
            loss = torch.from_numpy(np.asarray(loss)).to(dtype).reshape(problem.batch_shape)
        grads = {"hidden": products.grad_hidden, "classifier": products.grad_classifier,
                 "bias": products.grad_bias}
        if grads["hidden"] is not None:
            grads["hidden"] = grads["hidden"].reshape(input.shape)
        return loss, grads


class _LinearCrossEntropy(torch.autograd.Function):
    """The block schedule on tensors: torch's products, fastloss's softmax kernels.

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
        tensors = tuple(None if t is None else t.detach()
                        for t in (input, linear_weight, linear_bias, target, weight))
        ctx.call, ctx.grads = call, None
        if want and call.reduction != "none":
            loss, ctx.grads = call.run(tensors, 1.0, want)
        else:
            loss, _ = call.run(tensors)
        ctx.save_for_backward(input, linear_weight, linear_bias, target, weight)
        if isinstance(loss, torch.Tensor):
            return loss
        return _loss_tensor(loss, input.dtype)

    @staticmethod
    @first_order
    def backward(ctx, grad_output):
        needs = ctx.needs_input_grad[:3]
        want = tuple(name for name, need in zip(_GRADIENTS, needs) if need)
        tensors = ctx.saved_tensors  # torch's error if the graph was freed
        if ctx.grads is not None:
            # the first backward takes the forward's gradients (then owned by autograd)
            grads, ctx.grads = ctx.grads, None
            scale = float(grad_output)
            if scale != 1.0:
                for grad in grads.values():
                    if grad is not None:
                        grad.mul_(scale)
        else:
            upstream = _upstream(grad_output.double() if ctx.call.reduction == "none"
                                 else grad_output, ctx.call.reduction)
            _, grads = ctx.call.run(tuple(None if t is None else t.detach() for t in tensors),
                                    upstream, want)
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
    a batch axis, the classes last), float32, float64, bfloat16 or float16;
    ``linear_weight`` (V, H) of input's dtype (torch's K-dimensional weights are not
    supported); ``target`` class indices of shape (), (N) or (...) (any integer dtype),
    or probabilities of shape (..., V) in input's dtype (or float32 beside half
    inputs); ``linear_bias`` (V,) of input's dtype; ``weight`` (V,); ``reduction``;
    ``ignore_index`` (None means -100, as torch); ``label_smoothing``; ``options`` (a
    ``torch.nn.LinearCrossEntropyOptions``, accepted for torch's signature: fastloss
    always works by blocks of rows, whatever its fields say). Keyword-only extras:
    ``z_loss`` (adds ``z_loss * lse**2`` per row) and ``softcap`` (logits become
    ``softcap * tanh(logits / softcap)``), which torch's function lacks; ``block_rows``
    and ``num_threads`` (see :func:`fastloss.linear_cross_entropy`).

    The products are torch's matmul in the input's dtype (bfloat16 and float16 on
    torch's half-precision path: each block's logits are rounded to the half type, as
    ``F.linear`` rounds them, and read in place by the kernels, which compute in float32
    and accumulate in float64); the softmax, its statistics and the logits' gradient are
    fastloss's kernels (their OpenMP threads: ``num_threads``). The loss and the
    gradients are returned in the input's dtype.

    Gradients w.r.t. ``input``, ``linear_weight`` and ``linear_bias``, each computed only
    when it requires grad; for "mean" and "sum" in the forward (one pass, three
    products), kept until the backward: the size of the inputs that require grad, never
    N x V. For "none", the backward runs the pass (the per-row grad_output is needed in
    it). ``target`` and ``weight`` are not differentiated (NotImplementedError if they
    require grad). First order (a second derivative raises); a second backward
    (retain_graph=True) recomputes from the saved inputs.
    """
    _input_tensor(input, "input")
    _input_tensor(linear_weight, "linear_weight")
    if input.dim() == 0:
        raise ValueError(f"{_FUNCTION}: input: expected shape (H) or (N, H), got a 0-d "
                         f"tensor")
    if linear_weight.dim() != 2:
        raise ValueError(f"{_FUNCTION}: linear_weight: expected shape (V, H) (fastloss has "
                         f"no K-dimensional weights), got {tuple(linear_weight.shape)}")
    dtype = input.dtype
    if linear_weight.dtype != dtype:
        raise TypeError(f"{_FUNCTION}: linear_weight: expected the dtype of input "
                        f"({dtype}), got {linear_weight.dtype}")
    n_classes, n_features = linear_weight.shape
    if n_classes == 0:
        raise ValueError(f"{_FUNCTION}: linear_weight: expected at least one class (row), "
                         f"got shape {tuple(linear_weight.shape)}")
    if input.shape[-1] != n_features:
        raise ValueError(f"{_FUNCTION}: input: expected shape (..., {n_features}) (the H of "
                         f"linear_weight {tuple(linear_weight.shape)}), got "
                         f"{tuple(input.shape)}")
    if linear_bias is not None:
        _input_tensor(linear_bias, "linear_bias")
        if linear_bias.dtype != dtype:
            raise TypeError(f"{_FUNCTION}: linear_bias: expected the dtype of input "
                            f"({dtype}), got {linear_bias.dtype}")
        if tuple(linear_bias.shape) != (n_classes,):
            raise ValueError(f"{_FUNCTION}: linear_bias: expected shape ({n_classes},) (the "
                             f"V of linear_weight), got {tuple(linear_bias.shape)}")
    _cpu_tensor(target, "target", _FUNCTION)
    for name, tensor in (("target", target), ("weight", weight)):
        if tensor is not None and tensor.requires_grad and torch.is_grad_enabled():
            raise NotImplementedError(
                f"{_FUNCTION}: {name} requires grad, but fastloss computes gradients with "
                f"respect to input, linear_weight and linear_bias only; pass "
                f"{name}.detach()")
    half = dtype in _HALF_DTYPES
    if weight is not None:
        _input_tensor(weight, "weight")
        if not half and weight.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{_FUNCTION}: weight: expected a float32 or float64 tensor "
                            f"beside {dtype} inputs, got {weight.dtype}")
    probabilities = (dtype, torch.float32) if half else _FLOAT_DTYPES
    if target.dtype == torch.bool or target.dtype.is_complex or (
            target.dtype.is_floating_point and target.dtype not in probabilities):
        raise TypeError(f"{_FUNCTION}: target: expected class indices (an integer tensor) or "
                        f"{'/'.join(str(d).replace('torch.', '') for d in probabilities)} "
                        f"probabilities, got {target.dtype}")
    _check_options(options)
    # a 0-d tensor for a number is its number, as torch takes it
    call = _Call({"ignore_index": -100 if ignore_index is None else _number(ignore_index),
                  "label_smoothing": _number(label_smoothing), "z_loss": _number(z_loss),
                  "softcap": _number(softcap)},
                 reduction_arg(reduction), block_rows, resolve_num_threads(num_threads))
    return _LinearCrossEntropy.apply(input, linear_weight, linear_bias, target, weight, call)


# the NumPy layer's errors named as torch names the arguments (and the Module's too: its
# forward calls this name)
linear_cross_entropy = _named_errors(linear_cross_entropy, {"hidden": "input",
                                                            "classifier": "linear_weight",
                                                            "bias": "linear_bias"})


def _input_tensor(tensor, name):
    """A float32, float64, bfloat16 or float16 CPU tensor (TypeError naming it)."""
    _cpu_tensor(tensor, name, _FUNCTION)
    if tensor.dtype not in _INPUT_DTYPES:
        raise TypeError(f"{_FUNCTION}: {name}: expected a float32, float64, bfloat16 or "
                        f"float16 tensor, got {tensor.dtype}")


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
