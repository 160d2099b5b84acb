"""``fastloss.torch.linear_token_log_probs`` and ``LinearTokenLogProbs``: token
log-probabilities (and entropies) of ``F.linear(hidden, classifier, bias)`` computed by
:func:`fastloss.linear_token_log_probs` (blocks of rows; the logits never exist).

float32 and float64 tensors run the NumPy function on zero-copy views. bfloat16 and
float16 tensors run its block schedule (``_schedule``) on torch's own half-precision
products, as fastloss.torch.linear_cross_entropy does (its ``_TorchProducts``): each
block's logits rounded to the half type, as ``F.linear`` rounds them, read in place by the
token_log_probs kernel (bfloat16 as its 16-bit patterns: no ml_dtypes needed), which
writes their gradient in the half type into a second block.

Imported by fastloss.torch, which exports both names.
"""
import numpy as np
import torch

from fastloss._config import resolve_num_threads
from fastloss.linear_cross_entropy import _block_rows
from fastloss.linear_token_log_probs import _problem, _run, _schedule, _upstreams
from fastloss.torch import (_FLOAT_DTYPES, _HALF_DTYPES, _cpu_tensor, _empty, _named_errors,
                            _numpy)
from fastloss.torch._linear_cross_entropy import _kernel_view, _TorchProducts
from fastloss.torch._autograd import first_order

__all__ = ["linear_token_log_probs", "LinearTokenLogProbs"]

_FUNCTION = "fastloss.torch.linear_token_log_probs"
_GRADIENTS = ("hidden", "classifier", "bias")
_INPUT_DTYPES = _FLOAT_DTYPES + _HALF_DTYPES


class _TorchHalfBlocks(_TorchProducts):
    """linear_cross_entropy's torch products (half-precision matmul into a half scratch,
    the gradients' products, the bias's float64 sums) with a second block for the
    logits' gradient, which the token_log_probs kernel writes beside the logits it reads:
    after the kernel the two blocks trade places, so that ``backward`` reads the gradient
    where linear_cross_entropy's reads it, and the next block's logits go into the other."""

    def __init__(self, hidden, classifier, bias, rows_per_block, threads, want=()):
        super().__init__(hidden, classifier, bias, rows_per_block, threads, want)
        self.other_tensor = (_empty(self.scratch_tensor.shape, self.scratch_tensor.dtype)
                             if want else None)
        self.other = None if self.other_tensor is None else _kernel_view(self.other_tensor)

    def gradient(self, n_rows):
        return self.other[:n_rows]

    def backward(self, start, stop):
        self.scratch_tensor, self.other_tensor = self.other_tensor, self.scratch_tensor
        self.scratch, self.other = self.other, self.scratch
        super().backward(start, stop)


def _run_half(hidden, classifier, bias, target, options, return_entropy, want_value=True,
              grad_output=None, grad_entropy=None, want=()):
    """The block schedule on bfloat16 / float16 tensors (checked by the caller): the
    values as float32 arrays of the batch shape, and the gradients named in ``want`` as
    tensors of their inputs' dtype."""
    problem, temperature = _problem(hidden, classifier, _numpy(target), bias,
                                    options["temperature"], options["ignore_index"],
                                    checked_dtype=np.float32)
    rows_per_block = _block_rows(problem.n_rows, problem.n_classes, hidden.dtype.itemsize,
                                 options["block_rows"])
    upstream, upstream_entropy = _upstreams(problem, bool(want), grad_output, grad_entropy)
    products = _TorchHalfBlocks(problem.hidden, classifier, bias, rows_per_block,
                                options["num_threads"], want)
    log_prob, entropy = _schedule(problem, temperature, products, options["num_threads"],
                                  rows_per_block, return_entropy, want_value, upstream,
                                  upstream_entropy, bool(want))
    if want_value:
        log_prob = log_prob.reshape(problem.batch_shape)
        if entropy is not None:
            entropy = entropy.reshape(problem.batch_shape)
    grads = {"hidden": products.grad_hidden, "classifier": products.grad_classifier,
             "bias": products.grad_bias}
    if grads["hidden"] is not None:
        grads["hidden"] = grads["hidden"].reshape(hidden.shape)
    return log_prob, entropy, grads


def _upstream_array(grad):
    """An upstream gradient tensor as NumPy values (half ones widened: NumPy has no
    bfloat16 of its own)."""
    if grad.dtype in _HALF_DTYPES:
        grad = grad.double()
    return grad.detach().numpy()


class _LinearTokenLogProbs(torch.autograd.Function):
    """fastloss.linear_token_log_probs on tensors (zero-copy NumPy views of their memory).

    The forward computes the values only: the gradient depends on both upstream
    gradients, known in the backward, which runs the pass over the blocks again (each
    block's logits formed once more) for the inputs that require grad, and only those."""

    @staticmethod
    def forward(ctx, hidden, classifier, bias, target, options, return_entropy):
        if hidden.dtype in _HALF_DTYPES:
            tensors = tuple(None if t is None else t.detach()
                            for t in (hidden, classifier, bias, target))
            log_prob, entropy, _ = _run_half(*tensors, options, return_entropy)
        else:
            arrays = tuple(_numpy(tensor) for tensor in (hidden, classifier, bias, target))
            log_prob, entropy, _ = _run(arrays[0], arrays[1], arrays[3], arrays[2],
                                        return_entropy=return_entropy, **options)
        ctx.save_for_backward(hidden, classifier, bias, target)
        ctx.options = options
        ctx.set_materialize_grads(False)
        # in hidden's dtype (half inputs: a rounding of the kernel's float32 values)
        log_prob = torch.from_numpy(log_prob).to(hidden.dtype)
        if return_entropy:
            return log_prob, torch.from_numpy(entropy).to(hidden.dtype)
        return log_prob

    @staticmethod
    @first_order
    def backward(ctx, grad_log_prob, grad_entropy=None):
        needs = ctx.needs_input_grad[:3]
        tensors = ctx.saved_tensors  # torch's error if the graph was freed
        want = tuple(name for name, need in zip(_GRADIENTS, needs) if need)
        if not want or (grad_log_prob is None and grad_entropy is None):
            return None, None, None, None, None, None
        upstream = 0.0 if grad_log_prob is None else _upstream_array(grad_log_prob)
        upstream_entropy = None if grad_entropy is None else _upstream_array(grad_entropy)
        if tensors[0].dtype in _HALF_DTYPES:
            _, _, grads = _run_half(*(None if t is None else t.detach() for t in tensors),
                                    ctx.options, False, want_value=False,
                                    grad_output=upstream, grad_entropy=upstream_entropy,
                                    want=want)
        else:
            hidden, classifier, bias, target = (_numpy(tensor) for tensor in tensors)
            _, _, grads = _run(hidden, classifier, target, bias, return_entropy=False,
                               want_value=False, grad_output=upstream,
                               grad_entropy=upstream_entropy, want=want, **ctx.options)
            grads = {name: None if grad is None else torch.from_numpy(grad)
                     for name, grad in grads.items()}
        grads = {name: grad for name, grad in grads.items() if grad is not None}
        return (*(grads.get(name) if need else None for name, need in zip(_GRADIENTS, needs)),
                None, None, None)


def linear_token_log_probs(hidden, classifier, target, *, bias=None, temperature=1.0,
                           ignore_index=-100, return_entropy=False, block_rows=None,
                           num_threads=None):
    """:func:`fastloss.linear_token_log_probs` on tensors: ``log_softmax(F.linear(hidden,
    classifier, bias) / T, -1)`` gathered at ``target``, and with ``return_entropy`` the
    entropy of each row's distribution, without forming the logits.

    ``hidden`` (..., H) float32, float64, bfloat16 or float16, ``classifier`` (V, H) and
    ``bias`` (V,) of its dtype, ``target`` an integer tensor of shape
    ``hidden.shape[:-1]``; the results have that shape and hidden's dtype, 0 where
    ``target`` is ``ignore_index``. bfloat16 and float16 run on torch's half-precision
    products (as :func:`fastloss.torch.linear_cross_entropy`): the logits and their
    gradient are rounded to the half type, the kernel computes in float32, and the values
    and gradients come back in the half type. Differentiable
    w.r.t. ``hidden``, ``classifier`` and ``bias`` (each computed only when it requires
    grad) for any weighted sum of both outputs: the backward forms each block's logits
    again (one more product per block) and never keeps N x V. ``target`` is not
    differentiable. First order (a second derivative raises).
    """
    _input_tensor(hidden, "hidden")
    _input_tensor(classifier, "classifier")
    if bias is not None:
        _input_tensor(bias, "bias")
    if hidden.dtype in _HALF_DTYPES:
        _half_matrices(hidden, classifier, bias)
    else:
        for tensor, name in ((classifier, "classifier"), (bias, "bias")):
            if tensor is not None and tensor.dtype in _HALF_DTYPES:
                raise TypeError(f"{_FUNCTION}: {name}: expected the dtype of hidden "
                                f"({hidden.dtype}), got {tensor.dtype}")
    _cpu_tensor(target, "target", _FUNCTION)
    if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
        raise TypeError(f"{_FUNCTION}: target: expected an integer tensor, got {target.dtype}")
    options = {"temperature": temperature, "ignore_index": ignore_index,
               "block_rows": block_rows, "num_threads": resolve_num_threads(num_threads)}
    return _LinearTokenLogProbs.apply(hidden, classifier, bias, target, options,
                                      bool(return_entropy))


# the NumPy layer's errors start with the function's name (and the Module's too: its
# forward calls this name)
linear_token_log_probs = _named_errors(linear_token_log_probs)


def _input_tensor(tensor, name):
    """A float32, float64, bfloat16 or float16 CPU tensor (TypeError naming it)."""
    _cpu_tensor(tensor, name, _FUNCTION)
    if tensor.dtype not in _INPUT_DTYPES:
        raise TypeError(f"{_FUNCTION}: {name}: expected a float32, float64, bfloat16 or "
                        f"float16 tensor, got {tensor.dtype}")


def _half_matrices(hidden, classifier, bias):
    """The checks of _Problem on half tensors, which NumPy cannot hold (the float path
    makes them on NumPy views): dtypes and shapes, each error naming its argument."""
    dtype = hidden.dtype
    if classifier.dtype != dtype:
        raise TypeError(f"{_FUNCTION}: classifier: expected the dtype of hidden ({dtype}), "
                        f"got {classifier.dtype}")
    if classifier.dim() != 2 or classifier.shape[0] == 0:
        raise ValueError(f"{_FUNCTION}: classifier: expected a 2-d tensor (V, H) of at "
                         f"least one class, got shape {tuple(classifier.shape)}")
    n_classes, n_features = classifier.shape
    if hidden.dim() == 0 or hidden.shape[-1] != n_features:
        raise ValueError(f"{_FUNCTION}: hidden: expected shape (..., {n_features}) (the H "
                         f"of classifier {tuple(classifier.shape)}), got "
                         f"{tuple(hidden.shape)}")
    if bias is not None:
        if bias.dtype != dtype:
            raise TypeError(f"{_FUNCTION}: bias: expected the dtype of hidden ({dtype}), "
                            f"got {bias.dtype}")
        if tuple(bias.shape) != (n_classes,):
            raise ValueError(f"{_FUNCTION}: bias: expected shape ({n_classes},) (the V of "
                             f"classifier), got {tuple(bias.shape)}")


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
