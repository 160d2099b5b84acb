"""Index arithmetic above 2**31 elements, without 8 GB of memory.

The logits (and the gradient) are views whose second row starts 2**31 elements
after the first, laid over a sparse memory-mapped file: only the pages of the
two rows are ever touched.  A kernel that computed `row * stride` in 32 bits
would read and write the wrong place (or crash).
"""
import numpy as np
import pytest

import fastloss
from fastloss import reference

from loss_specs import assert_close_contract

ROW_STRIDE = 2**31 + 64  # elements between the starts of consecutive rows


def _far_apart_rows(path, n_classes, dtype):
    """A writeable (2, n_classes) view with rows ROW_STRIDE elements apart."""
    n_elements = ROW_STRIDE + n_classes
    storage = np.memmap(path, dtype=dtype, mode="w+", shape=(n_elements,))
    return np.lib.stride_tricks.as_strided(
        storage, shape=(2, n_classes), strides=(ROW_STRIDE * storage.itemsize, storage.itemsize))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_rows_beyond_two_to_the_31_elements(tmp_path, dtype):
    n_classes = 1000
    rng = np.random.default_rng(7)
    logits = _far_apart_rows(tmp_path / "logits.bin", n_classes, dtype)
    logits[...] = rng.standard_normal((2, n_classes)) * 3
    target = np.array([5, 999])
    compact = np.array(logits, dtype=np.float64)

    loss = fastloss.cross_entropy(logits, target, reduction="none")
    assert_close_contract(loss, reference.cross_entropy(compact, target, reduction="none"),
                          dtype, "loss")

    grad_out = _far_apart_rows(tmp_path / "grad.bin", n_classes, dtype)
    value, grad = fastloss.cross_entropy_value_and_grad(logits, target, out=grad_out)
    ref_value, ref_grad = reference.cross_entropy_value_and_grad(compact, target)
    assert grad is grad_out
    assert_close_contract(np.float64(value), ref_value, dtype, "loss")
    assert_close_contract(np.array(grad), ref_grad, dtype, "grad")
    # the last row's gradient, 2**31 elements in, is really where it belongs
    assert grad_out[1, 999] < 0 and np.all(np.array(grad_out[1, :999]) > 0)
