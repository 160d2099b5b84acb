"""Half-precision cross-entropy gradients written by streaming stores.

A half row keeps its exps apart from its gradient, so a call whose gradient reaches
FASTLOSS_STREAM_BYTES (16 MiB, csrc/stream_store.h) writes each chunk of the gradient
into a buffer and copies it out with non-temporal stores (csrc/cross_entropy_row_body.h,
ce_row_grad). The bits must be those of the plain stores: the rows of one large call are
compared, bit for bit, with the same rows computed in small calls (which never stream;
rows are independent with ``reduction="none"``), on every SIMD path, fused and in place,
from an lse, with a float32 gradient, and with rows at every alignment (a view whose
rows start at odd class positions); a few rows against the reference for good measure.
"""

import numpy as np
import pytest

import fastloss
from fastloss import reference
from simd_paths import simd_paths
from test_half import BFLOAT16, HALF_DTYPES, assert_gradient_contract, assert_loss_contract

#: FASTLOSS_STREAM_BYTES in csrc/stream_store.h
STREAM_BYTES = 1 << 24


def in_small_calls(function, logits, target, rows=16, **options):
    """`function` over slices of `rows` rows (gradients far below STREAM_BYTES),
    stacked: (losses, gradients)."""
    losses, grads = [], []
    for start in range(0, logits.shape[0], rows):
        part = slice(start, start + rows)
        extra = {k: (v[part] if k == "lse" else v) for k, v in options.items()}
        loss, grad = function(logits[part], target[part], **extra)
        losses.append(np.atleast_1d(loss))
        grads.append(grad)
    return np.concatenate(losses), np.concatenate(grads)


def fused(logits, target, **options):
    return fastloss.cross_entropy_value_and_grad(logits, target, reduction="none", **options)


def from_lse(logits, target, **options):
    return None, fastloss.cross_entropy_grad(logits, target, reduction="none", **options)


def bits(array):
    return array.view(np.uint16) if array.dtype.itemsize == 2 else array.view(np.uint32)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_streamed_gradient_has_the_bits_of_plain_stores(dtype, rng):
    n_classes = 20011  # odd: rows start at every alignment of a 16-byte store
    n_rows = STREAM_BYTES // (2 * n_classes) + 37
    assert n_rows * n_classes * 2 >= STREAM_BYTES
    logits = (rng.standard_normal((n_rows, n_classes), np.float32) * 3).astype(dtype)
    target = rng.integers(0, n_classes, n_rows)
    target[5] = -100  # an ignored row
    target[6] = n_classes - 1
    with simd_paths() as paths:
        for path in paths:
            loss, grad = fused(logits, target)
            small_loss, small_grad = in_small_calls(fused, logits, target)
            np.testing.assert_array_equal(loss, small_loss)
            np.testing.assert_array_equal(bits(grad), bits(small_grad), err_msg=path)
            in_place = logits.copy()
            fastloss.cross_entropy_value_and_grad(in_place, target, reduction="none",
                                                  out=in_place)
            np.testing.assert_array_equal(bits(in_place), bits(grad), err_msg=path)
            _, lse = fastloss.cross_entropy(logits, target, reduction="none", return_lse=True)
            _, backward = from_lse(logits, target, lse=lse)
            _, small_backward = in_small_calls(from_lse, logits, target, lse=lse)
            np.testing.assert_array_equal(bits(backward), bits(small_backward), err_msg=path)
            # float32 gradients of half logits (twice the bytes: streamed as well)
            _, grad32 = fused(logits, target, grad_dtype="float32")
            _, small32 = in_small_calls(fused, logits, target, grad_dtype="float32")
            np.testing.assert_array_equal(bits(grad32), bits(small32), err_msg=path)
            # rows at odd class positions in memory: a view into a wider array
            wide = np.zeros((n_rows, n_classes + 1), dtype)
            wide[:, 1:] = logits
            _, grad_view = fused(wide[:, 1:], target)
            np.testing.assert_array_equal(bits(grad_view), bits(grad), err_msg=path)
    # a few rows against the reference (the half contract)
    some = np.array([0, 5, 6, n_rows - 1])
    x64 = logits[some].astype(np.float64)
    assert_loss_contract(loss[some], reference.cross_entropy(x64, target[some], reduction="none"))
    assert_gradient_contract(grad[some],
                             reference.cross_entropy_grad(x64, target[some], 1.0,
                                                          reduction="none"), dtype)


def test_streamed_gradient_threads_agree(rng):
    n_classes = 50257
    n_rows = STREAM_BYTES // (2 * n_classes) + 3
    logits = rng.standard_normal((n_rows, n_classes), np.float32).astype(BFLOAT16)
    target = rng.integers(0, n_classes, n_rows)
    one = fastloss.cross_entropy_value_and_grad(logits, target, num_threads=1)
    two = fastloss.cross_entropy_value_and_grad(logits, target, num_threads=2)
    assert one[0] == two[0]
    np.testing.assert_array_equal(one[1].view(np.uint16), two[1].view(np.uint16))
