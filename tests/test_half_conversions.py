"""The half-precision conversions of csrc/storage.h (LOAD, STORE, STORE_WIDE of the
bfloat16 and float16 storage tags), bit for bit, on every SIMD path this CPU runs.

The kernels convert an element at a time through those macros, in loops the compiler
vectorises differently per ISA (with scalar tails); _kernels.half_load/half_store run
the same loops over whole arrays on the path in force.  They are held here to a
definition written independently of the C bit tricks: the exact value of each half,
and rounding to nearest, ties to even, by comparing the distances to the two
neighbouring halves in float64 (exact at these precisions).  Load: every one of the
65536 patterns.  Store: a wide sweep of float32 (and, for STORE_WIDE, float64) values:
a stride through every bit pattern, each half's neighbourhood, the exact ties between
neighbouring halves and the values one unit either side of them, subnormals,
overflow thresholds, infinities and NaNs with payloads.
"""

import functools

import numpy as np
import pytest

from fastloss import _kernels

KINDS = {
    # kind: (significant bits, smallest exponent of a normal, largest finite value)
    "bfloat16": (8, -126, float.fromhex("0x1.fep127")),
    "float16": (11, -14, 65504.0),
}


def decode(kind, bits):
    """The exact float64 value of each half pattern (NaN for NaNs)."""
    bits = np.asarray(bits, dtype=np.int64)
    if kind == "bfloat16":
        exp_bits, frac_bits, bias = 8, 7, 127
    else:
        exp_bits, frac_bits, bias = 5, 10, 15
    sign = np.where(bits >> 15 & 1, -1.0, 1.0)
    exponent = bits >> frac_bits & ((1 << exp_bits) - 1)
    fraction = (bits & ((1 << frac_bits) - 1)).astype(np.float64)
    top = (1 << exp_bits) - 1
    normal = np.ldexp(1.0 + fraction / (1 << frac_bits), (exponent - bias).astype(np.int32))
    subnormal = np.ldexp(fraction, 1 - bias - frac_bits)
    value = np.where(exponent == 0, subnormal, normal)
    value = np.where(exponent == top, np.where(fraction == 0, np.inf, np.nan), value)
    return sign * value


def encode_exact(kind, value):
    """The pattern of each value, which must be a half (or +-inf, +-0)."""
    value = np.asarray(value, dtype=np.float64)
    if kind == "bfloat16":
        return (value.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    return value.astype(np.float16).view(np.uint16)   # exact: value is a float16


def round_reference(kind, value):
    """value (float64; finite, inf or NaN) rounded to the half, ties to even, as bits.

    NaN: the sign and the leading payload bits kept, made quiet (the storage.h rule)."""
    precision, min_exp, largest = KINDS[kind]
    value = np.asarray(value, dtype=np.float64)
    magnitude = np.abs(value)
    finite = np.isfinite(value)
    safe = np.where(finite & (magnitude > 0), magnitude, 1.0)
    _, exponent = np.frexp(safe)                       # safe = m 2**exponent, m in [0.5, 1)
    exponent = np.maximum(exponent - 1, min_exp)       # of the leading bit; subnormals clamp
    ulp = np.ldexp(1.0, exponent - (precision - 1))
    low = np.floor(safe / ulp) * ulp                   # exact: ulp is a power of two
    with np.errstate(over="ignore"):                   # past float64: inf, above largest
        high = low + ulp
    below, above = safe - low, high - safe             # exact in float64
    low_even = np.fmod(low / ulp, 2.0) == 0
    pick_high = (above < below) | ((above == below) & ~low_even)
    rounded = np.where(pick_high, high, low)
    # past the largest finite half by half an ulp or more: infinity
    rounded = np.where(rounded > largest, np.inf, rounded)
    rounded = np.where(finite & (magnitude > 0), rounded, magnitude)
    rounded = np.where(np.signbit(value), -rounded, rounded)
    out = encode_exact(kind, np.where(np.isnan(value), 0.0, rounded))
    nan = np.isnan(value)
    if nan.any():
        wide_bits = value.view(np.uint64)
        sign = (wide_bits >> 63).astype(np.uint16) << 15
        if kind == "bfloat16":
            payload = (wide_bits >> 45 & 0x3F).astype(np.uint16)       # leading 6 of 52
            nan_bits = sign | 0x7FC0 | payload
        else:
            payload = (wide_bits >> 42 & 0x1FF).astype(np.uint16)      # leading 9 of 52
            nan_bits = sign | 0x7E00 | payload
        out = np.where(nan, nan_bits, out).astype(np.uint16)
    return out


@functools.lru_cache(maxsize=None)
def float32_sweep():
    """float32 values for the store test (a few million)."""
    rng = np.random.default_rng(20261127)
    parts = [np.arange(0, 1 << 32, 8191, dtype=np.uint64).astype(np.uint32)]   # stride
    top = np.arange(1 << 16, dtype=np.uint32) << 16
    for low in (0, 1, 0x0FFF, 0x1000, 0x1001, 0x2000, 0x3000, 0x7FFF, 0x8000, 0x8001,
                0xFFFF, 0x17FFF & 0xFFFF):
        parts.append(top | np.uint32(low))
    parts.append(top | rng.integers(0, 1 << 16, top.size, dtype=np.uint32))
    parts.append(np.arange(0, 1 << 24, 7, dtype=np.uint32))   # subnormals and the smallest
    parts.append(np.arange(0, 1 << 24, 7, dtype=np.uint32) | np.uint32(0x80000000))
    # NaNs with payloads, both signs, and the infinities
    payload = rng.integers(1, 1 << 23, 4096, dtype=np.uint32)
    parts += [np.uint32(0x7F800000) | payload, np.uint32(0xFF800000) | payload,
              np.array([0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001,
                        0x7FBFFFFF, 0x7FFFFFFF, 0xFFFFFFFF], dtype=np.uint32)]
    bits = np.concatenate(parts)
    values = [bits.view(np.float32)]
    # the exact ties between neighbouring halves, and one float32 unit either side
    for kind in KINDS:
        halves = np.arange(0, 0x7FFF, dtype=np.int64)
        a, b = decode(kind, halves), decode(kind, halves + 1)
        finite = np.isfinite(a) & np.isfinite(b)
        mid = ((a[finite] + b[finite]) / 2).astype(np.float32)   # exact: one more bit
        for v in (mid, -mid):
            values += [v, np.nextafter(v, np.float32(np.inf)), np.nextafter(v, np.float32(-np.inf))]
        # overflow: around the largest finite half plus half an ulp
        largest = KINDS[kind][2]
        edge = np.float32(largest + (largest - decode(kind, [0x7F7E if kind == "bfloat16"
                                                             else 0x7BFE])[0]) / 2)
        near = edge.reshape(1).view(np.uint32) + np.arange(-64, 65, dtype=np.int64).astype(np.uint32)
        values += [near.view(np.float32), -near.view(np.float32)]
    values = np.concatenate(values)
    values.flags.writeable = False
    return values


@functools.lru_cache(maxsize=None)
def float32_expected(kind):
    with np.errstate(invalid="ignore"):   # signalling NaNs widened (made quiet)
        expected = round_reference(kind, float32_sweep().astype(np.float64))
    expected.flags.writeable = False
    return expected


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_load_every_pattern(simd_path, kind):
    bits = np.arange(1 << 16, dtype=np.uint16)
    got = _kernels.half_load(kind, bits)
    expected = decode(kind, bits).astype(np.float32)
    nan = np.isnan(expected)
    assert np.array_equal(got.view(np.uint32)[~nan], expected.view(np.uint32)[~nan])
    # NaN: the sign and the whole payload moved into place, not quieted
    frac_bits = 7 if kind == "bfloat16" else 10
    wide = bits[nan].astype(np.uint32)
    want = (wide >> 15 << 31) | np.uint32(0x7F800000) | ((wide & ((1 << frac_bits) - 1))
                                                         << (23 - frac_bits))
    assert np.array_equal(got.view(np.uint32)[nan], want)
    # and in the tails: every length and offset the vector loops leave over
    for start in range(0, 40):
        for length in (1, 3, 7, 15, 17, 31, 33, 63, 65):
            part = np.ascontiguousarray(bits[0x3F00 + start: 0x3F00 + start + length])
            assert np.array_equal(_kernels.half_load(kind, part).view(np.uint32),
                                  got.view(np.uint32)[0x3F00 + start: 0x3F00 + start + length])


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_store_float32_sweep(simd_path, kind):
    values = float32_sweep()
    got = _kernels.half_store(kind, values)
    expected = float32_expected(kind)
    wrong = np.flatnonzero(got != expected)
    assert wrong.size == 0, (
        f"{wrong.size} wrong, first {values[wrong[0]]!r} "
        f"(bits {values.view(np.uint32)[wrong[0]]:#010x}): "
        f"{got[wrong[0]]:#06x} != {expected[wrong[0]]:#06x}")
    for start in range(0, 40):
        for length in (1, 5, 9, 17, 33, 47, 65):
            part = np.ascontiguousarray(values[1000 + start: 1000 + start + length])
            assert np.array_equal(_kernels.half_store(kind, part),
                                  got[1000 + start: 1000 + start + length])


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_store_wide_sweep(simd_path, kind):
    """float64 values rounded once: the ties between halves and their float64
    neighbours (where rounding to float32 first would round twice), random values
    over the whole range, specials."""
    rng = np.random.default_rng(7)
    halves = np.arange(0, 0x7FFF, dtype=np.int64)
    a, b = decode(kind, halves), decode(kind, halves + 1)
    finite = np.isfinite(a) & np.isfinite(b)
    mid = (a[finite] + b[finite]) / 2
    parts = []
    for v in (mid, -mid):
        up1, down1 = np.nextafter(v, np.inf), np.nextafter(v, -np.inf)
        up2, down2 = np.nextafter(up1, np.inf), np.nextafter(down1, -np.inf)
        # about 2**-32 relative: inside the float32 gap around the tie
        parts += [v, up1, down1, up2, down2, v * (1 + 2.0 ** -32), v * (1 - 2.0 ** -32)]
    random_bits = rng.integers(0, 1 << 63, 1 << 20, dtype=np.int64).view(np.uint64)
    random_bits |= rng.integers(0, 2, random_bits.size).astype(np.uint64) << np.uint64(63)
    parts.append(random_bits.view(np.float64))
    parts.append(rng.standard_normal(1 << 18) * np.exp2(rng.integers(-150, 130, 1 << 18)))
    parts.append(np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e300, -1e300,
                           5e-324, -5e-324, 65519.99999, 65520.0, 65520.00001,
                           float.fromhex("0x1.ff0p127"), float.fromhex("0x1.fefffffp127")]))
    values = np.concatenate(parts)
    got = _kernels.half_store(kind, values)
    expected = round_reference(kind, values)
    wrong = np.flatnonzero(got != expected)
    assert wrong.size == 0, (
        f"{wrong.size} wrong, first {values[wrong[0]]!r}: "
        f"{got[wrong[0]]:#06x} != {expected[wrong[0]]:#06x}")


def test_reference_agrees_with_numpy():
    """The test's own rounding against NumPy's float16 and ml_dtypes' bfloat16 casts,
    where those are single roundings (float32 input, no NaN)."""
    values = float32_sweep()
    values = values[~np.isnan(values)]
    with np.errstate(over="ignore"):   # to inf, as rounding says
        numpy_float16 = values.astype(np.float16).view(np.uint16)
    assert np.array_equal(round_reference("float16", values.astype(np.float64)), numpy_float16)
    ml_dtypes = pytest.importorskip("ml_dtypes")
    assert np.array_equal(round_reference("bfloat16", values.astype(np.float64)),
                          values.astype(ml_dtypes.bfloat16).view(np.uint16))


def test_bad_kind():
    with pytest.raises(ValueError, match="kind"):
        _kernels.half_load("float8", np.zeros(3, np.uint16))
    with pytest.raises(TypeError, match="bits"):
        _kernels.half_load("float16", np.zeros(3, np.float32))
