"""_kernels.column_sums (csrc/half_convert.h, fastloss_column_sums): ``acc += values`` summed
over the rows in float64, the rows added one at a time in order, for each storage type,
on every SIMD path and thread count. The linear cross-entropy's bias gradient is these
sums of each block's logits' gradient (tests/test_linear_cross_entropy*.py hold it to the
reference); here the sums themselves are held to the same additions written in NumPy,
bit for bit: each value is exact in float64, so the only rounding is each addition's."""

import numpy as np
import pytest

from fastloss import _kernels


def sequential_sums(acc, values64):
    """acc + values64[0] + values64[1] + ..., one float64 addition at a time."""
    acc = acc.copy()
    for row in values64:
        acc += row
    return acc


def bfloat16_bits(values32):
    """The bfloat16 patterns (int16) of float32 values truncated to bfloat16."""
    return (values32.view(np.uint32) >> 16).astype(np.uint16).view(np.int16)


def bfloat16_values(bits):
    """The float64 values of bfloat16 patterns."""
    wide = bits.view(np.uint16).astype(np.uint32) << 16
    return wide.view(np.float32).astype(np.float64)


def make(kind, rows, cols, rng, stride_extra=0):
    """(values as column_sums takes them, their bits argument, their float64 values);
    rows of length cols inside rows of length cols + stride_extra (a strided view)."""
    wide = rng.standard_normal((rows, cols + stride_extra)) * np.exp(
        rng.uniform(-8, 8, (rows, cols + stride_extra)))
    if kind == "bfloat16":
        # the top 16 bits of each float32: a bfloat16 (the value truncated)
        values = bfloat16_bits(wide.astype(np.float32))[:, :cols]
        return values, "bfloat16", bfloat16_values(values)
    dtype = {"float32": np.float32, "float64": np.float64, "float16": np.float16}[kind]
    values = wide.astype(dtype)[:, :cols]
    return values, None, values.astype(np.float64)


KINDS = ("float32", "float64", "float16", "bfloat16")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rows, cols, stride_extra", [
    (1, 1, 0), (5, 3, 0), (3, 1024, 0), (3, 1025, 0), (37, 2500, 7), (200, 3000, 0)])
def test_sums_are_the_rows_added_in_order(kind, rows, cols, stride_extra, simd_path):
    rng = np.random.default_rng(rows * 10007 + cols)
    values, bits, values64 = make(kind, rows, cols, rng, stride_extra)
    start = rng.standard_normal(cols) * 1e3
    expected = sequential_sums(start, values64)
    for threads in (1, 2, 3, 7):
        acc = start.copy()
        _kernels.column_sums(values, acc, threads, bits=bits)
        np.testing.assert_array_equal(acc, expected)


@pytest.mark.parametrize("kind", KINDS)
def test_inputs_are_not_modified_and_nan_and_inf_propagate(kind):
    rng = np.random.default_rng(3)
    values, bits, _ = make(kind, 4, 40, rng)
    values = values.copy()
    if bits is None:
        values[1, 3], values[2, 5], values[0, 6], values[3, 6] = np.nan, np.inf, np.inf, -np.inf
        values64 = values.astype(np.float64)
    else:  # bfloat16 patterns: NaN, +inf, +inf, -inf
        for (r, c), pattern in {(1, 3): 0x7FC0, (2, 5): 0x7F80, (0, 6): 0x7F80,
                                (3, 6): 0xFF80}.items():
            values[r, c] = np.uint16(pattern).view(np.int16)
        values64 = bfloat16_values(values)
    before = values.copy()
    acc = np.zeros(40)
    _kernels.column_sums(values, acc, 2, bits=bits)
    np.testing.assert_array_equal(values, before)
    assert np.isnan(acc[3]) and acc[5] == np.inf and np.isnan(acc[6])
    np.testing.assert_array_equal(acc, sequential_sums(np.zeros(40), values64))


def test_no_rows_or_no_columns_leave_acc_as_it_was():
    acc = np.arange(5.0)
    _kernels.column_sums(np.empty((0, 5), np.float32), acc, 2)
    np.testing.assert_array_equal(acc, np.arange(5.0))
    empty = np.empty(0)
    _kernels.column_sums(np.empty((3, 0), np.float64), empty, 2)
    assert empty.shape == (0,)


@pytest.mark.parametrize("values, acc, bits, error, message", [
    (np.ones(4, np.float32), np.zeros(4), None, ValueError,
     r"values: expected a 2-d array, got shape \(4,\)"),
    (np.ones((2, 4), np.float32), np.zeros(3), None, ValueError,
     r"acc: expected shape \(4,\), got \(3,\)"),
    (np.ones((2, 4), np.float32), np.zeros(4, np.float32), None, TypeError, r"acc:"),
    (np.ones((2, 4), np.int32), np.zeros(4), None, TypeError, r"values:"),
    (np.ones((2, 4), np.float32), np.zeros(4), "float16", ValueError,
     r"bits: expected None or 'bfloat16', got 'float16'"),
    (np.ones((2, 4), np.float32), np.zeros(4), "bfloat16", TypeError,
     r"values: bits='bfloat16' takes an aligned array of 16-bit integers"),
    (np.ones((4, 2), np.float32).T, np.zeros(4), None, ValueError,
     r"values: the last axis must be contiguous"),
])
def test_bad_arguments_are_named(values, acc, bits, error, message):
    with pytest.raises(error, match=message):
        _kernels.column_sums(values, acc, 1, bits=bits)


def test_acc_must_be_writeable_and_apart_from_values():
    acc = np.zeros(4)
    acc.flags.writeable = False
    with pytest.raises(ValueError, match=r"acc: array is read-only"):
        _kernels.column_sums(np.ones((2, 4)), acc, 1)
    both = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"acc: must not overlap values"):
        _kernels.column_sums(both[:2], both[1], 1)
