"""Sequence log-probabilities for preference training (the public NumPy API).

A preference batch reaches :func:`fastloss.dpo` (or a reward model's
:func:`fastloss.bradley_terry`) through per-sequence log-probabilities: the sum, over
the tokens of each answer, of the log-probability the model gives each token.
:func:`sequence_log_probs` takes the token log-probabilities (B, T) and a mask of the
answer's tokens and returns (B,), in one pass in C (csrc/sequence.c); its gradient is
the mask times each row's upstream gradient. The bradley_terry, dpo and kl_div losses
themselves are pointwise: generated from the registry with the elementwise family
(fastloss/elementwise.py).
"""
import numpy as np

from fastloss import _kernels
from fastloss._config import resolve_num_threads
from fastloss._validation import (as_array, float_array, grad_dtype_arg, is_bfloat16, is_half,
                                  out_arg, real_grad_output)

__all__ = ["sequence_log_probs", "sequence_log_probs_grad",
           "sequence_log_probs_value_and_grad"]


# run()'s grad_output when no gradient is wanted
_NO_GRADIENT = object()


def _average_arg(average):
    if isinstance(average, (bool, np.bool_)) or (
            isinstance(average, (int, np.integer)) and average in (0, 1)):
        return bool(average)
    raise TypeError(f"average: expected a bool, got {average!r}")


class _Problem:
    """The checked arguments of one call: token_log_probs and the mask as C-contiguous
    (rows, tokens) arrays, the mask bool or converted to token_log_probs' dtype (both to
    float64 where that dtype cannot hold the mask's weights: ``wide``)."""

    def __init__(self, token_log_probs, mask, average, num_threads):
        values = float_array(token_log_probs, "token_log_probs", half=True)
        if values.ndim < 1:
            raise ValueError("token_log_probs: expected an array of at least one dimension "
                             "(..., tokens), got a 0-d array")
        mask = as_array(mask, "mask")
        if mask.dtype.kind not in "biuf" and not is_bfloat16(mask.dtype):
            raise TypeError(f"mask: expected a bool, integer or float array, got dtype "
                            f"{mask.dtype}")
        if mask.shape != values.shape:
            raise ValueError(f"mask: expected the shape of token_log_probs {values.shape}, "
                             f"got {mask.shape}")
        self.average = _average_arg(average)
        self.num_threads = resolve_num_threads(num_threads)
        self.shape, self.dtype = values.shape, values.dtype
        self.rows_shape = values.shape[:-1]
        n_tokens = values.shape[-1]
        n_rows = int(np.prod(self.rows_shape, dtype=np.int64))
        # a bool mask is read as bytes by the kernel (no conversion pass); any other
        # takes the values' dtype, or float32 beside half values (a half mask would
        # round its weights).  Where that dtype cannot hold the mask's weights (float64
        # weights such as 0.1, integers beyond 2**24, beside float32 values) the call
        # computes in float64, torch's promotion: rounded weights would move a sum whose
        # terms cancel by as much as the terms' rounding
        self.half = is_half(values.dtype)
        mask_dtype = (np.bool_ if mask.dtype == np.bool_ else
                      np.float32 if self.half else values.dtype)
        converted = np.require(mask, dtype=mask_dtype, requirements="CA")
        self.wide = converted.dtype != mask.dtype and not np.array_equal(converted, mask)
        if self.wide:
            values = values.astype(np.float64)
            converted = np.require(mask, dtype=np.float64, requirements="CA")
        self.values = np.require(values, requirements="CA").reshape(n_rows, n_tokens)
        self.mask = converted.reshape(n_rows, n_tokens)
        self.n_rows = n_rows

    def grad_dtype(self, grad_dtype):
        """The gradient's dtype: None (token_log_probs'), token_log_probs' dtype, or
        float32 for float16 / bfloat16 token_log_probs (grad_dtype="float32")."""
        return grad_dtype_arg(grad_dtype, self.dtype, "token_log_probs'", "token_log_probs")

    def run(self, want_value, grad_output=_NO_GRADIENT, out=None, grad_dtype=None):
        """``(values or None, gradient or None)``: the gradient unless ``grad_output`` is
        _NO_GRADIENT (a caller's None is a bad grad_output, refused naming it)."""
        grad_dtype = self.grad_dtype(grad_dtype)
        grad_float32 = grad_dtype != self.dtype
        sums = np.empty(self.n_rows, dtype=np.float64) if want_value else None
        grad = result = upstream = None
        if grad_output is not _NO_GRADIENT:
            upstream = real_grad_output(grad_output)
            if upstream.ndim and upstream.shape != self.rows_shape:
                raise ValueError(f"grad_output: expected a scalar or the shape of the "
                                 f"sequences {self.rows_shape}, got {upstream.shape}")
            upstream = np.require(upstream.reshape(-1), dtype=np.float64, requirements="CA")
            if out is not None:
                out_arg(out, self.shape, grad_dtype)
            # out= is written directly where the kernel can (C-contiguous, aligned, not the
            # mask; token_log_probs itself only in place, in its own dtype; not where the
            # call computes in float64 for the mask's sake)
            direct = (out is not None and not self.wide and out.flags.c_contiguous
                      and out.flags.aligned
                      and not np.may_share_memory(out, self.mask)
                      and not np.may_share_memory(out, upstream)
                      and (not np.may_share_memory(out, self.values)
                           or (not grad_float32 and out.__array_interface__["data"][0]
                               == self.values.__array_interface__["data"][0])))
            if direct:
                grad, result = out.reshape(self.values.shape), out
            else:
                grad = np.empty(self.values.shape,
                                dtype=np.float64 if self.wide else grad_dtype)
        _kernels.sequence_run(self.values, self.mask, sums, upstream, grad, self.average,
                              self.num_threads,
                              grad_float32 and grad is not None and not self.wide)
        # the values in float32 for half token_log_probs (summed in float64: a half
        # result would round them again)
        value_dtype = np.float32 if self.half else self.dtype
        value = None if sums is None else sums.astype(value_dtype).reshape(self.rows_shape)
        if grad is not None and result is None:
            if out is None:
                result = grad.astype(grad_dtype, copy=False).reshape(self.shape)
            else:
                np.copyto(out, grad.reshape(self.shape))
                result = out
        return value, result


def sequence_log_probs(token_log_probs, mask, *, average=False, num_threads=None):
    r"""The log-probability of each sequence from its tokens' log-probabilities.

    Over the last axis (the tokens), per sequence::

        sum over tokens with mask != 0 of mask * token_log_probs

    and with ``average=True`` that divided by ``sum(mask)`` (TRL's
    ``average_log_prob``: the length-normalised log-probability that its IPO loss
    uses). The sums accumulate in float64. A token whose mask is 0 is skipped, so a
    NaN or -inf log-probability at a padded position leaves its row finite (TRL's
    ``(logps * mask).sum(-1)`` would give NaN there); a row whose mask is all 0 sums
    to 0 (its average is NaN).

    Parameters
    ----------
    token_log_probs : array_like, float32, float64, float16 or bfloat16, shape (..., T)
        The log-probability of each token of each sequence (the target token's
        log-softmax, e.g. from :func:`fastloss.cross_entropy` with reduction "none",
        negated).
    mask : array_like, bool, integer or float, shape (..., T)
        1 (True) for the tokens of the answer, 0 for the prompt and padding; another
        value weights its token (read as float32 beside half token_log_probs).
    average : bool
    num_threads : int, optional

    Returns
    -------
    ndarray, shape (...)
        One value per sequence, in token_log_probs' dtype (float32 for half ones).
    """
    problem = _Problem(token_log_probs, mask, average, num_threads)
    return problem.run(True)[0]


def sequence_log_probs_grad(token_log_probs, mask, grad_output=1.0, *, average=False,
                            out=None, grad_dtype=None, num_threads=None):
    r"""Gradient of ``sum(grad_output * sequence_log_probs(token_log_probs, mask))``
    w.r.t. the token log-probabilities: ``mask * grad_output[..., None]`` (divided by
    the row's ``sum(mask)`` with ``average``).

    ``grad_output`` is a scalar (every sequence's) or has the sequences' shape (...).
    The gradient has token_log_probs' shape and dtype; ``out`` receives it
    (``out=token_log_probs`` overwrites the input in place). ``grad_dtype``: the
    gradient's dtype; None (the default) gives token_log_probs' dtype, and for float16 /
    bfloat16 token_log_probs ``"float32"`` (or ``np.float32``) gives a float32 gradient
    instead, rounded once from the same float64 computation (``out`` is then float32).
    """
    problem = _Problem(token_log_probs, mask, average, num_threads)
    return problem.run(False, grad_output, out, grad_dtype)[1]


def sequence_log_probs_value_and_grad(token_log_probs, mask, grad_output=1.0, *,
                                      average=False, out=None, grad_dtype=None,
                                      num_threads=None):
    """``(sequence_log_probs(...), sequence_log_probs_grad(...))`` from one pass over
    the inputs. Arguments as in :func:`sequence_log_probs_grad`."""
    problem = _Problem(token_log_probs, mask, average, num_threads)
    return problem.run(True, grad_output, out, grad_dtype)
