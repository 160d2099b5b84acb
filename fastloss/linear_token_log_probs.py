"""Token log-probabilities and entropy of a linear layer's logits, without the logits.

``linear_token_log_probs(hidden, classifier, target)`` is
``token_log_probs(hidden @ classifier.T + bias, target)``, computed one block of rows at
a time so that the N x V logits never exist: the row blocks, the checks of the three
arrays and the scratch's size are :mod:`fastloss.linear_cross_entropy`'s, and the softmax
work on each block is the token_log_probs kernel's (csrc/vocab.c). Per block of R rows::

    logits   = hidden[rows] @ classifier.T (+ bias)          BLAS (NumPy's matmul, out=)
    log_prob[rows], entropy[rows], G = token_log_probs on the block   (C, OpenMP)
    d hidden[rows]  = G @ classifier                          BLAS, into the result
    d classifier   += G.T @ hidden[rows]                      BLAS, in class tiles
    d bias         += sum of G's rows                          float64

G, the gradient of ``sum(grad_output * log_prob + grad_entropy * entropy)`` with respect
to the block's logits, has a scratch of its own: the kernel writes it while it reads the
logits (the statistics pass leaves its exponentials in the gradient's row), so it cannot
overwrite them. With a gradient the scratch is therefore two blocks of R x V.

There is no reduction: both outputs have one value per row, and the upstream gradients
(one per row, or a scalar) are known only to the backward, so a framework's backward
recomputes each block's logits (one more product) rather than keeping N x V.
"""
import numpy as np

from fastloss import _kernels
from fastloss._config import resolve_num_threads
from fastloss._validation import as_array, real_scalar
from fastloss.linear_cross_entropy import (_block_rows, _grad_outputs, _NumpyProducts,
                                           _Problem)

__all__ = ["linear_token_log_probs", "linear_token_log_probs_grad",
           "linear_token_log_probs_value_and_grad"]


def _per_row(value, name, batch_shape):
    """An upstream gradient as a float64 vector: one value (shape (1,)) or one per row."""
    if isinstance(value, np.ndarray) and value.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected real numbers, got dtype {value.dtype}")
    array = as_array(value, name)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected a real number or an array of them, got "
                        f"{value!r:.80}")
    array = array.astype(np.float64, copy=False)
    if array.ndim == 0:
        return array.reshape(1)
    if array.shape != tuple(batch_shape):
        raise ValueError(f"{name}: expected shape {tuple(batch_shape)} (one value per row) "
                         f"or a scalar, got {array.shape}")
    return np.require(array.reshape(-1), requirements="CA")


def _block_of(upstream, start, stop):
    """A block's slice of a per-row upstream gradient (a scalar stays a scalar)."""
    if upstream is None:
        return None
    return float(upstream[0]) if upstream.shape[0] == 1 else upstream[start:stop]


def _problem(hidden, classifier, target, bias, temperature, ignore_index):
    """The checked arguments: linear_cross_entropy's, with class indices only."""
    target = as_array(target, "target")
    if target.dtype.kind not in "iu":
        raise TypeError(f"target: expected integer class indices, got dtype {target.dtype}")
    problem = _Problem(hidden, classifier, target, bias, None, ignore_index, "none", 0.0, 0.0,
                       None)
    temperature = real_scalar(temperature, "temperature", low=0.0, low_open=True)
    return problem, temperature


def _run(hidden, classifier, target, bias, temperature, ignore_index, return_entropy,
         num_threads, block_rows, want_value=True, grad_output=None, grad_entropy=None,
         want=(), out=None):
    """``(log_prob, entropy, grads)``: the values (None unless ``want_value``; entropy
    None unless ``return_entropy``) and the gradients named in ``want`` (a dict name ->
    array or None; None when ``want`` is empty)."""
    problem, temperature = _problem(hidden, classifier, target, bias, temperature,
                                    ignore_index)
    return_entropy = bool(return_entropy)
    threads = resolve_num_threads(num_threads)
    n_rows, n_classes, dtype = problem.n_rows, problem.n_classes, problem.dtype
    rows_per_block = _block_rows(n_rows, n_classes, dtype.itemsize, block_rows)
    ignore = problem.ignore_index

    grads = grad_block = upstream = upstream_entropy = None
    if want:
        grads = _grad_outputs(out, problem, want)
        upstream = _per_row(grad_output, "grad_output", problem.batch_shape)
        if grad_entropy is not None:
            upstream_entropy = _per_row(grad_entropy, "grad_entropy", problem.batch_shape)
        grad_block = np.empty((min(rows_per_block, max(n_rows, 1)), n_classes), dtype)
    # the products (the logits into its scratch, the gradients' from grad_block) are
    # linear_cross_entropy's
    products = _NumpyProducts(problem, rows_per_block, grads)

    log_prob = np.empty(n_rows, dtype) if want_value else None
    entropy = np.empty(n_rows, dtype) if want_value and return_entropy else None
    for start in range(0, n_rows, rows_per_block):
        stop = min(start + rows_per_block, n_rows)
        logits = products.logits(start, stop)
        gradient = None if grad_block is None else grad_block[:stop - start]
        block_log_prob, block_entropy, gradient = _kernels.tlp_call(
            gradient is not None, logits, problem.target[start:stop], temperature, ignore,
            want_value, want_value and return_entropy,
            _block_of(upstream, start, stop) if gradient is not None else None,
            _block_of(upstream_entropy, start, stop), gradient, threads)
        if want_value:
            log_prob[start:stop] = block_log_prob
            if return_entropy:
                entropy[start:stop] = block_entropy
        if gradient is not None:
            products.backward(start, stop, gradient)
    if want:
        products.finish(n_rows)

    if want_value:
        log_prob = log_prob.reshape(problem.batch_shape)
        if entropy is not None:
            entropy = entropy.reshape(problem.batch_shape)
    return log_prob, entropy, grads


def linear_token_log_probs(hidden, classifier, target, *, bias=None, temperature=1.0,
                           ignore_index=-100, return_entropy=False, block_rows=None,
                           num_threads=None):
    """Log-probability of each row's target token under the logits
    ``hidden @ classifier.T + bias``, which are never formed.

    The same values as ``token_log_probs(hidden @ classifier.T + bias, target, ...)``,
    computed one block of rows at a time in a scratch of a few MiB: the logits of a block
    come from the BLAS (NumPy's matmul), and their log-probabilities and entropies from
    the token_log_probs kernel (C, OpenMP).

    Parameters
    ----------
    hidden : array_like, float32 or float64, shape (..., H)
        The features (a language model's last hidden states), batch axes first.
    classifier : array_like, shape (V, H), the dtype of hidden
        The output layer's weight (``torch.nn.Linear(H, V).weight``).
    target : array_like of int, shape ``hidden.shape[:-1]``
        The token of each row (e.g. the sampled or the next token).
    bias : array_like, shape (V,), optional
        Added to the logits.
    temperature, ignore_index, return_entropy
        As in :func:`fastloss.token_log_probs`: the distribution is
        ``softmax(logits / temperature)``; rows whose target is ``ignore_index`` get 0.
    block_rows : int, optional
        Rows per block (default: as many as fill 8 MiB of logits, at least 16), as in
        :func:`fastloss.linear_cross_entropy`.
    num_threads : int, optional
        OpenMP threads of the softmax passes (the results do not depend on it); the
        products use NumPy's BLAS threads, whose number can change the last bits.

    Returns
    -------
    log_prob : ndarray, shape ``hidden.shape[:-1]``, hidden's dtype
    entropy : ndarray, shape ``hidden.shape[:-1]``, hidden's dtype
        Only with ``return_entropy=True``.

    Notes
    -----
    The products are computed in the inputs' precision by the BLAS, so float32 results
    carry the products' rounding (the accuracy contract for losses that multiply
    matrices, docs/accuracy.rst). Memory beyond the inputs and the results: the scratch
    (``block_rows x V``).
    """
    log_prob, entropy, _ = _run(hidden, classifier, target, bias, temperature, ignore_index,
                                return_entropy, num_threads, block_rows)
    return (log_prob, entropy) if return_entropy else log_prob


def linear_token_log_probs_grad(hidden, classifier, target, grad_output=1.0, *,
                                grad_entropy=None, bias=None, temperature=1.0,
                                ignore_index=-100, block_rows=None, out=None,
                                num_threads=None):
    """Gradients of ``sum(grad_output * log_prob + grad_entropy * entropy)``.

    ``grad_output`` (the upstream gradient of the log-probabilities) and ``grad_entropy``
    (of the entropies; None: 0) are scalars or arrays of shape ``hidden.shape[:-1]``.
    Returns ``(grad_hidden, grad_classifier)``, and ``grad_bias`` third when ``bias`` is
    given, each of its input's shape and dtype: with G the gradient of the logits
    (:func:`fastloss.token_log_probs_grad`'s, one block of rows at a time),
    ``G @ classifier``, ``G.T @ hidden`` and the sum of G's rows (accumulated in
    float64). Ignored rows contribute nothing. ``out`` is a tuple of C-contiguous arrays,
    one per gradient, written and returned. Other arguments as in
    :func:`linear_token_log_probs`.
    """
    _, _, grads = _run(hidden, classifier, target, bias, temperature, ignore_index, False,
                       num_threads, block_rows, False, grad_output, grad_entropy,
                       ("hidden", "classifier", "bias"), out)
    return tuple(grads.values())


def linear_token_log_probs_value_and_grad(hidden, classifier, target, grad_output=1.0, *,
                                          grad_entropy=None, bias=None, temperature=1.0,
                                          ignore_index=-100, return_entropy=False,
                                          block_rows=None, out=None, num_threads=None):
    """``(linear_token_log_probs(...), linear_token_log_probs_grad(...))`` from one pass:
    each block's logits are formed once. The value is ``log_prob``, or
    ``(log_prob, entropy)`` with ``return_entropy=True``."""
    log_prob, entropy, grads = _run(hidden, classifier, target, bias, temperature,
                                    ignore_index, return_entropy, num_threads, block_rows,
                                    True, grad_output, grad_entropy,
                                    ("hidden", "classifier", "bias"), out)
    value = (log_prob, entropy) if return_entropy else log_prob
    return value, tuple(grads.values())
