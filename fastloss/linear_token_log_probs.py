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

float16 and bfloat16 inputs (_HalfProducts) take the same block loop on NumPy's float32
BLAS: NumPy has no fast half-precision product, and every half value is a float32, so the
classifier (and the bias) is copied to float32 once per call and each block's rows when it
is formed; the logits, their gradient and the products stay float32, and each gradient is
rounded once to the input's dtype at the end (the classifier's from its float32 sum over
every block). The kernel needs whole rows of logits (its softmax and entropy are per row),
so the classes cannot be tiled outside the rows as linear_cross_entropy's half path does:
the float32 classifier and its gradient's float32 sums (V x H each) are the price.
The products, the block loop and the kernel call are one schedule (_schedule) for the
three back-ends: NumPy's float32/float64 products (_NumpyBlocks), the half path's, and
the torch adapter's half-precision products (fastloss/torch/_linear_token_log_probs.py).
"""
import numpy as np

from fastloss import _kernels
from fastloss._config import resolve_num_threads
from fastloss._validation import as_array, grad_dtype_arg, real_grad_output, real_scalar
from fastloss.linear_cross_entropy import (_TILE_BYTES, _block_rows, _grad_outputs,
                                           _NumpyProducts, _Problem, _store_wide)

__all__ = ["linear_token_log_probs", "linear_token_log_probs_grad",
           "linear_token_log_probs_value_and_grad"]


def _per_row(value, name, batch_shape):
    """An upstream gradient as a float64 vector: one value (shape (1,)) or one per row."""
    array = real_grad_output(value, name)
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


def _problem(hidden, classifier, target, bias, temperature, ignore_index, checked_dtype=None):
    """The checked arguments: linear_cross_entropy's, with class indices only (float16 and
    bfloat16 inputs taken; ``checked_dtype``: the torch adapter checked hidden, classifier
    and bias itself, see _Problem)."""
    target = as_array(target, "target")
    if target.dtype.kind not in "iu":
        raise TypeError(f"target: expected integer class indices, got dtype {target.dtype}")
    problem = _Problem(hidden, classifier, target, bias, None, ignore_index, "none", 0.0, 0.0,
                       None, checked_dtype=checked_dtype, half=True)
    temperature = real_scalar(temperature, "temperature", low=0.0, low_open=True)
    return problem, temperature


class _NumpyBlocks:
    """The float32 / float64 back-end of _schedule: linear_cross_entropy's NumPy products,
    and the block of the logits' gradient (the kernel writes it beside the logits it
    reads, so it has a scratch of its own)."""

    bits = None

    def __init__(self, problem, rows_per_block, threads, grads):
        self.products = _NumpyProducts(problem, rows_per_block, threads, grads)
        self.grad_block = None
        if grads is not None:
            self.grad_block = np.empty_like(self.products.scratch)

    def logits(self, start, stop):
        return self.products.logits(start, stop)

    def gradient(self, n_rows):
        return self.grad_block[:n_rows]

    def backward(self, start, stop):
        self.products.backward(start, stop, self.grad_block[:stop - start])

    def finish(self, n_rows):
        self.products.finish(n_rows)


class _HalfProducts:
    """The float16 / bfloat16 back-end of _schedule, on NumPy's float32 BLAS: a float32
    copy of the classifier (and of the bias) made once, each block's rows copied to
    float32 (exact), the logits and their gradient in float32 blocks. The gradients are
    summed in float32 (the hidden's over the classes within its block, the classifier's
    over the blocks, in tiles of classes as _NumpyProducts adds them) and rounded once to
    their dtype by ``finish``; the bias's in float64, rounded once. With
    ``grad_dtype="float32"`` the classifier's sums are the result itself."""

    bits = None

    def __init__(self, problem, rows_per_block, threads, grads):
        n_rows, n_classes, n_features = problem.n_rows, problem.n_classes, problem.n_features
        self.hidden, self.threads = problem.hidden, threads
        self.classifier = np.empty((n_classes, n_features), np.float32)
        np.copyto(self.classifier, problem.classifier)
        self.bias = None
        if problem.bias is not None:
            self.bias = np.empty(n_classes, np.float32)
            np.copyto(self.bias, problem.bias)
        block = min(rows_per_block, max(n_rows, 1))
        self.rows = np.empty((block, n_features), np.float32)
        self.scratch = np.empty((block, n_classes), np.float32)
        self.grad_block = self.part_hidden = self.sums_classifier = self.bias_sums = None
        self.grads = grads
        if grads is None:
            return
        self.grad_block = np.empty((block, n_classes), np.float32)
        if grads["hidden"] is not None:
            self.part_hidden = np.empty((block, n_features), np.float32)
            self.grad_hidden = grads["hidden"].reshape(n_rows, n_features)
        classifier = grads["classifier"]
        if classifier is not None:
            self.sums_classifier = (classifier if classifier.dtype == np.float32
                                    else np.empty((n_classes, n_features), np.float32))
            tile_classes = max(1, _TILE_BYTES // max(1, 4 * n_features))
            self.tile = np.empty((min(tile_classes, n_classes), n_features), np.float32)
        if grads.get("bias") is not None:
            self.bias_sums = np.zeros(n_classes, np.float64)

    def logits(self, start, stop):
        rows = self.rows[:stop - start]
        np.copyto(rows, self.hidden[start:stop])
        logits = self.scratch[:stop - start]
        np.matmul(rows, self.classifier.T, out=logits)
        if self.bias is not None:
            np.add(logits, self.bias, out=logits)
        return logits

    def gradient(self, n_rows):
        return self.grad_block[:n_rows]

    def backward(self, start, stop):
        grad, rows = self.grad_block[:stop - start], self.rows[:stop - start]
        if self.part_hidden is not None:
            part = self.part_hidden[:stop - start]
            np.matmul(grad, self.classifier, out=part)
            # rounded once (to nearest even) to the result's dtype
            np.copyto(self.grad_hidden[start:stop], part,
                      casting="unsafe")
        if self.sums_classifier is not None:
            n_classes = grad.shape[1]
            for first in range(0, n_classes, self.tile.shape[0]):
                last = min(first + self.tile.shape[0], n_classes)
                sums = self.sums_classifier[first:last]
                if start == 0:
                    np.matmul(grad[:, first:last].T, rows, out=sums)
                    continue
                part = self.tile[:last - first]
                np.matmul(grad[:, first:last].T, rows, out=part)
                np.add(sums, part, out=sums)
        if self.bias_sums is not None:
            _kernels.column_sums(grad, self.bias_sums, self.threads)

    def finish(self, n_rows):
        if self.sums_classifier is not None:
            if n_rows == 0:
                self.sums_classifier[...] = 0
            if self.sums_classifier is not self.grads["classifier"]:
                np.copyto(self.grads["classifier"], self.sums_classifier, casting="unsafe")
        if self.bias_sums is not None:
            _store_wide(self.grads["bias"], self.bias_sums)


def _schedule(problem, temperature, products, threads, rows_per_block, return_entropy,
              want_value, upstream, upstream_entropy, want):
    """The block loop of every back-end (``products``: _NumpyBlocks, _HalfProducts or the
    torch adapter's): per block of rows, the logits from ``products``, their
    log-probabilities, entropies and (when ``want``) gradient from the token_log_probs
    kernel, and the gradient's products. Returns ``(log_prob, entropy)`` as flat arrays
    in the kernel's dtype for the logits (float32 for half ones), or None."""
    n_rows, ignore, bits = problem.n_rows, problem.ignore_index, products.bits
    log_prob = entropy = None
    for start in range(0, n_rows, rows_per_block):
        stop = min(start + rows_per_block, n_rows)
        logits = products.logits(start, stop)
        gradient = products.gradient(stop - start) if want else None
        block_log_prob, block_entropy, gradient = _kernels.tlp_call(
            want, logits, problem.target[start:stop], temperature, ignore, want_value,
            want_value and return_entropy,
            _block_of(upstream, start, stop) if want else None,
            _block_of(upstream_entropy, start, stop), gradient, threads, bits=bits)
        if want_value:
            if log_prob is None:
                log_prob = np.empty(n_rows, block_log_prob.dtype)
                entropy = (np.empty(n_rows, block_log_prob.dtype) if return_entropy
                           else None)
            log_prob[start:stop] = block_log_prob
            if return_entropy:
                entropy[start:stop] = block_entropy
        if want:
            products.backward(start, stop)
    if want:
        products.finish(n_rows)
    if want_value and log_prob is None:  # no rows
        dtype = np.float32 if problem.half else problem.dtype
        log_prob = np.empty(0, dtype)
        entropy = np.empty(0, dtype) if return_entropy else None
    return log_prob, entropy


def _upstreams(problem, want, grad_output, grad_entropy):
    """The upstream gradients as float64 vectors (None without ``want``)."""
    if not want:
        return None, None
    upstream = _per_row(grad_output, "grad_output", problem.batch_shape)
    upstream_entropy = (None if grad_entropy is None
                        else _per_row(grad_entropy, "grad_entropy", problem.batch_shape))
    return upstream, upstream_entropy


def _run(hidden, classifier, target, bias, temperature, ignore_index, return_entropy,
         num_threads, block_rows, want_value=True, grad_output=None, grad_entropy=None,
         want=(), out=None, grad_dtype=None):
    """``(log_prob, entropy, grads)``: the values (None unless ``want_value``; entropy
    None unless ``return_entropy``) and the gradients named in ``want`` (a dict name ->
    array or None; None when ``want`` is empty)."""
    problem, temperature = _problem(hidden, classifier, target, bias, temperature,
                                    ignore_index)
    grad_dtype = grad_dtype_arg(grad_dtype, problem.dtype)
    return_entropy = bool(return_entropy)
    threads = resolve_num_threads(num_threads)
    # float32 scratch for half inputs
    itemsize = 4 if problem.half else problem.dtype.itemsize
    rows_per_block = _block_rows(problem.n_rows, problem.n_classes, itemsize, block_rows)
    grads = None
    if want:
        grads = _grad_outputs(out, problem, want, grad_dtype,
                              (("grad_output", grad_output), ("grad_entropy", grad_entropy)))
    upstream, upstream_entropy = _upstreams(problem, bool(want), grad_output, grad_entropy)
    back_end = _HalfProducts if problem.half else _NumpyBlocks
    products = back_end(problem, rows_per_block, threads, grads)
    log_prob, entropy = _schedule(problem, temperature, products, threads, rows_per_block,
                                  return_entropy, want_value, upstream, upstream_entropy,
                                  bool(want))
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
    hidden : array_like, float32, float64, float16 or ml_dtypes.bfloat16, shape (..., H)
        The features (a language model's last hidden states), batch axes first.
    classifier : array_like, shape (V, H), the dtype of hidden
        The output layer's weight (``torch.nn.Linear(H, V).weight``).
    target : array_like of int, shape ``hidden.shape[:-1]``
        The token of each row (e.g. the sampled or the next token).
    bias : array_like, shape (V,), optional
        Added to the logits; the dtype of hidden.
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
    log_prob : ndarray, shape ``hidden.shape[:-1]``, hidden's dtype (float32 for half inputs)
    entropy : ndarray, shape ``hidden.shape[:-1]``, as log_prob
        Only with ``return_entropy=True``.

    Notes
    -----
    The products are computed in the inputs' precision by the BLAS, so float32 results
    carry the products' rounding (the accuracy contract for losses that multiply
    matrices, docs/accuracy.rst). Memory beyond the inputs and the results: the scratch
    (``block_rows x V``).

    float16 and bfloat16 inputs: NumPy has no fast half-precision product, so the
    products run on NumPy's float32 BLAS from a float32 copy of the classifier (made once
    per call; every half value is exactly a float32) and of each block's rows, and the
    log-probabilities and entropies are float32 (docs/accuracy.rst, "linear_cross_entropy
    in half precision": the same contract). Memory then: the float32 classifier (V x H)
    beside the float32 scratch, and with the gradient a second block of the scratch and
    the classifier's gradient summed in float32 (V x H) before its one rounding.
    """
    log_prob, entropy, _ = _run(hidden, classifier, target, bias, temperature, ignore_index,
                                return_entropy, num_threads, block_rows)
    return (log_prob, entropy) if return_entropy else log_prob


def linear_token_log_probs_grad(hidden, classifier, target, grad_output=1.0, *,
                                grad_entropy=None, bias=None, temperature=1.0,
                                ignore_index=-100, block_rows=None, out=None,
                                grad_dtype=None, num_threads=None):
    """Gradients of ``sum(grad_output * log_prob + grad_entropy * entropy)``.

    ``grad_output`` (the upstream gradient of the log-probabilities) and ``grad_entropy``
    (of the entropies; None: 0) are scalars or arrays of shape ``hidden.shape[:-1]``.
    Returns ``(grad_hidden, grad_classifier)``, and ``grad_bias`` third when ``bias`` is
    given, each of its input's shape and dtype: with G the gradient of the logits
    (:func:`fastloss.token_log_probs_grad`'s, one block of rows at a time),
    ``G @ classifier``, ``G.T @ hidden`` and the sum of G's rows (accumulated in
    float64). Ignored rows contribute nothing. ``out`` is a tuple of C-contiguous arrays,
    one per gradient, written and returned. ``grad_dtype``: the gradients' dtype; None
    (the default) gives the inputs' dtype, and for float16 / bfloat16 inputs
    ``"float32"`` (or ``np.float32``) gives float32 gradients from the same computation
    (``out`` is then float32): rounded to the half type they are the half gradients.
    Other arguments as in :func:`linear_token_log_probs`.
    """
    _, _, grads = _run(hidden, classifier, target, bias, temperature, ignore_index, False,
                       num_threads, block_rows, False, grad_output, grad_entropy,
                       ("hidden", "classifier", "bias"), out, grad_dtype)
    return tuple(grads.values())


def linear_token_log_probs_value_and_grad(hidden, classifier, target, grad_output=1.0, *,
                                          grad_entropy=None, bias=None, temperature=1.0,
                                          ignore_index=-100, return_entropy=False,
                                          block_rows=None, out=None, grad_dtype=None,
                                          num_threads=None):
    """``(linear_token_log_probs(...), linear_token_log_probs_grad(...))`` from one pass:
    each block's logits are formed once. The value is ``log_prob``, or
    ``(log_prob, entropy)`` with ``return_entropy=True``."""
    log_prob, entropy, grads = _run(hidden, classifier, target, bias, temperature,
                                    ignore_index, return_entropy, num_threads, block_rows,
                                    True, grad_output, grad_entropy,
                                    ("hidden", "classifier", "bias"), out, grad_dtype)
    value = (log_prob, entropy) if return_entropy else log_prob
    return value, tuple(grads.values())
