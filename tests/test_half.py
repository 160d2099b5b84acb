"""bfloat16 and float16 inputs (docs/accuracy.rst, "Half precision").

The contract, checked element by element: against the float64 reference evaluated on the
same (already rounded) inputs, the loss within the float32 contract (relative 2e-6) and
every gradient element equal to the reference rounded to the storage type (to nearest,
ties to even, once), or one unit in the last place from it.  float16 needs NumPy only;
bfloat16 is ml_dtypes' (an optional dependency, in the ``test`` extra).
"""

import numpy as np
import pytest

import fastloss
from fastloss import _registry, reference
from loss_specs import assert_close_contract
from simd_paths import simd_paths

import ml_dtypes  # noqa: E402 (in the test extra)
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
FLOAT16 = np.dtype(np.float16)
HALF_DTYPES = [pytest.param(BFLOAT16, id="bfloat16"), pytest.param(FLOAT16, id="float16")]


# ----------------------------------------------------------------------------------------
# Rounding and ulps, from first principles
# ----------------------------------------------------------------------------------------

def round_to(values, dtype):
    """float64 `values` rounded once, to nearest even, to the half type `dtype`.

    (``astype`` from float64 does not do it: ml_dtypes goes through float32, rounding
    twice.)  Rounding to float32 toward zero with the last bit set when inexact ("round to
    odd") and then to the half type is the correct rounding (float32 keeps 13 or more bits
    beyond the half types)."""
    values = np.asarray(values, np.float64)
    nearest = values.astype(np.float32)
    back = nearest.astype(np.float64)
    with np.errstate(invalid="ignore"):
        bits = nearest.view(np.uint32).copy()
        bits -= (np.abs(back) > np.abs(values)).astype(np.uint32)
        bits |= (back != values).astype(np.uint32) & ~np.isnan(values)
    with np.errstate(over="ignore"):
        return bits.view(np.float32).astype(dtype)


def test_round_to_is_the_correct_rounding():
    # halfway cases and their neighbours, where rounding through float32 goes wrong
    for dtype, bits in ((BFLOAT16, 8), (FLOAT16, 11)):
        one, half_ulp = 1.0, 2.0 ** -bits
        cases = np.array([one + half_ulp, one + half_ulp + 2.0 ** -40,
                          one + half_ulp - 2.0 ** -40, one + 3 * half_ulp,
                          -(one + half_ulp + 2.0 ** -40)])
        expected = np.array([one, one + 2 * half_ulp, one, one + 4 * half_ulp,
                             -(one + 2 * half_ulp)])
        np.testing.assert_array_equal(round_to(cases, dtype).astype(np.float64), expected)


def ordinal(array):
    """The half values' positions on the number line (consecutive values differ by 1;
    -0 and +0 are one position)."""
    bits = np.asarray(array).view(np.uint16).astype(np.int64)
    return np.where(bits >= 0x8000, 0x8000 - bits, bits)


def half_numpy(tensor):
    """A torch tensor's values as a NumPy array of its dtype (bfloat16 as
    ml_dtypes.bfloat16, from its bits; float16 and the others as they are)."""
    import torch

    tensor = tensor.detach().contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(BFLOAT16)
    return tensor.numpy()


def ulps(result, expected):
    """|result - expected| in units in the last place of their half type."""
    return np.abs(ordinal(result) - ordinal(expected))


#: below float32's smallest normal number the kernels' float32 exp flushes to zero
#: (csrc/fastmath.h): bfloat16, with float32's exponent range, has subnormal values
#: there, which the contract does not promise (docs/accuracy.rst, "Half precision")
FLOAT32_TINY = 2.0 ** -126


def assert_gradient_contract(grad, reference_grad, dtype):
    """Every element the reference rounded to `dtype`, or one ulp from it; NaN exactly where
    the reference is NaN.  (bfloat16 results below 2**-126 in magnitude: within 2**-126.)"""
    assert grad.dtype == dtype
    reference_grad = np.asarray(reference_grad, np.float64)
    expected = round_to(reference_grad, dtype)
    nan = np.isnan(reference_grad)
    np.testing.assert_array_equal(np.isnan(grad.astype(np.float64)), nan)
    checked = ~nan
    if dtype == BFLOAT16:
        tiny = np.abs(reference_grad) < FLOAT32_TINY
        tiny_error = np.abs(grad.astype(np.float64)[tiny] - reference_grad[tiny])
        assert tiny_error.size == 0 or tiny_error.max() <= FLOAT32_TINY
        checked &= ~tiny
    distance = ulps(grad, expected)[checked]
    assert distance.size == 0 or distance.max() <= 1, (
        f"{np.count_nonzero(distance > 1)} elements more than one ulp away, worst "
        f"{distance.max()} ulps")


def assert_loss_contract(loss, reference_loss):
    assert_close_contract(np.asarray(loss, np.float64), np.asarray(reference_loss),
                          np.float32, "loss")


# ----------------------------------------------------------------------------------------
# Cross-entropy
# ----------------------------------------------------------------------------------------

def ce_inputs(dtype, shape, option, rng):
    """(logits in `dtype`, target, keyword arguments) for one option."""
    n_rows, n_classes = shape
    logits = (rng.standard_normal(shape) * 3.0).astype(dtype)
    target = rng.integers(0, n_classes, n_rows)
    kwargs = {}
    if option == "weight":
        kwargs["weight"] = rng.uniform(0.2, 2.0, n_classes).astype(np.float32)
    elif option == "half_weight":
        kwargs["weight"] = rng.uniform(0.2, 2.0, n_classes).astype(dtype)
    elif option == "ignore_index":
        target[rng.random(n_rows) < 0.3] = -100
    elif option == "label_smoothing":
        kwargs["label_smoothing"] = 0.1
        kwargs["weight"] = rng.uniform(0.2, 2.0, n_classes).astype(np.float32)
    elif option == "z_loss":
        kwargs["z_loss"] = 1e-3
    elif option == "softcap":
        kwargs["softcap"] = 3.0
    elif option in ("soft_float32", "soft_half"):
        probabilities = rng.dirichlet(np.ones(n_classes), n_rows)
        target = probabilities.astype(np.float32 if option == "soft_float32" else dtype)
    elif option == "sum":
        kwargs["reduction"] = "sum"
    elif option == "none":
        kwargs["reduction"] = "none"
    return logits, target, kwargs


def wide(kwargs):
    """The arguments as the float64 reference reads them (exactly)."""
    return {key: (value.astype(np.float64) if isinstance(value, np.ndarray) else value)
            for key, value in kwargs.items()}


CE_OPTIONS = ["plain", "weight", "half_weight", "ignore_index", "label_smoothing", "z_loss",
              "softcap", "soft_float32", "soft_half", "sum", "none"]
# 37 x 10: the small path (16 rows a vector) and a ragged block; 300: one chunk;
# 5000: several chunks of 2048 classes
CE_SHAPES = [(37, 10), (9, 300), (5, 5000)]


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("option", CE_OPTIONS)
@pytest.mark.parametrize("shape", CE_SHAPES, ids=lambda shape: f"{shape[0]}x{shape[1]}")
def test_cross_entropy_meets_the_half_contract(dtype, option, shape, rng):
    logits, target, kwargs = ce_inputs(dtype, shape, option, rng)
    target64 = target.astype(np.float64) if target.dtype.kind != "i" else target
    x64 = logits.astype(np.float64)
    upstream = rng.uniform(0.5, 2.0, shape[0]) if option == "none" else 1.7
    reference_loss = reference.cross_entropy(x64, target64, **wide(kwargs))
    reference_grad = reference.cross_entropy_grad(x64, target64, upstream, **wide(kwargs))

    loss, lse = fastloss.cross_entropy(logits, target, return_lse=True, **kwargs)
    assert_loss_contract(loss, reference_loss)
    if option == "none":
        assert loss.dtype == np.float32
    value, grad = fastloss.cross_entropy_value_and_grad(logits, target, upstream, **kwargs)
    assert_loss_contract(value, reference_loss)
    assert_gradient_contract(grad, reference_grad, dtype)
    # the fused gradient alone, and the backward from the forward's lse: the same bits
    np.testing.assert_array_equal(
        fastloss.cross_entropy_grad(logits, target, upstream, **kwargs).view(np.uint16),
        grad.view(np.uint16))
    backward = fastloss.cross_entropy_grad(logits, target, upstream, lse=lse, **kwargs)
    assert_gradient_contract(backward, reference_grad, dtype)
    # in place: the gradient replaces the logits, with the same bits
    in_place = logits.copy()
    fastloss.cross_entropy_value_and_grad(in_place, target, upstream, out=in_place, **kwargs)
    np.testing.assert_array_equal(in_place.view(np.uint16), grad.view(np.uint16))
    in_place = logits.copy()
    fastloss.cross_entropy_grad(in_place, target, upstream, lse=lse, out=in_place, **kwargs)
    np.testing.assert_array_equal(in_place.view(np.uint16), backward.view(np.uint16))
    # the float32 gradient: the float32 contract, and the half gradient is its rounding
    # (to within the one ulp the half contract allows)
    grad32 = fastloss.cross_entropy_grad(logits, target, upstream, grad_dtype="float32",
                                         **kwargs)
    assert grad32.dtype == np.float32
    assert_close_contract(grad32, reference_grad, np.float32, "grad")
    assert ulps(grad32.astype(dtype), grad).max() <= 1
    _, grad32_fused = fastloss.cross_entropy_value_and_grad(
        logits, target, upstream, grad_dtype=np.float32, **kwargs)
    np.testing.assert_array_equal(grad32_fused, grad32)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_cross_entropy_every_simd_path(dtype, rng):
    cases = [ce_inputs(dtype, shape, option, rng)
             for shape in CE_SHAPES for option in ("plain", "label_smoothing", "softcap")]
    ran = 0
    with simd_paths() as paths:
        for path in paths:
            ran += 1
            for logits, target, kwargs in cases:
                x64 = logits.astype(np.float64)
                loss, grad = fastloss.cross_entropy_value_and_grad(logits, target, **kwargs)
                assert_loss_contract(loss, reference.cross_entropy(x64, target, **wide(kwargs)))
                assert_gradient_contract(
                    grad, reference.cross_entropy_grad(x64, target, **wide(kwargs)), dtype)
    assert ran >= 1


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_cross_entropy_thread_invariance(dtype, rng):
    logits, target, kwargs = ce_inputs(dtype, (301, 700), "label_smoothing", rng)
    one = fastloss.cross_entropy_value_and_grad(logits, target, num_threads=1, **kwargs)
    many = fastloss.cross_entropy_value_and_grad(logits, target, num_threads=3, **kwargs)
    assert one[0] == many[0]
    np.testing.assert_array_equal(one[1].view(np.uint16), many[1].view(np.uint16))


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_cross_entropy_large_logits(dtype, rng):
    # logits near 1e4 (float16: near its largest finite values) with a confident target
    scale = 1e4 if dtype == BFLOAT16 else 6e4
    logits = (rng.uniform(-1.0, 1.0, (8, 500)) * scale).astype(dtype)
    target = np.argmax(logits.astype(np.float64), axis=1)
    target[::2] = rng.integers(0, 500, 4)
    x64 = logits.astype(np.float64)
    loss, grad = fastloss.cross_entropy_value_and_grad(logits, target, label_smoothing=0.05)
    assert_loss_contract(loss, reference.cross_entropy(x64, target, label_smoothing=0.05))
    assert_gradient_contract(
        grad, reference.cross_entropy_grad(x64, target, label_smoothing=0.05), dtype)


def test_cross_entropy_float16_overflow_is_ieee(rng):
    # 70000 overflows float16 to inf: that row's loss and gradient are NaN (as float32
    # +inf logits give), the others are untouched; a NaN logit likewise
    logits = rng.standard_normal((4, 6)).astype(np.float16)
    with np.errstate(over="ignore"):
        logits[1, 2] = np.float16(np.float32(7e4))
    logits[2, 0] = np.nan
    assert np.isinf(logits[1, 2])
    target = np.array([0, 1, 2, 3])
    x64 = logits.astype(np.float64)
    loss, grad = fastloss.cross_entropy_value_and_grad(logits, target, reduction="none")
    reference_loss = reference.cross_entropy(x64, target, reduction="none")
    np.testing.assert_array_equal(np.isnan(loss), [False, True, True, False])
    assert_loss_contract(loss[[0, 3]], reference_loss[[0, 3]])
    assert_gradient_contract(
        grad, reference.cross_entropy_grad(x64, target, reduction="none"), np.dtype(np.float16))
    # a gradient beyond float16's range rounds to inf, as IEEE says
    logits = rng.standard_normal((3, 5)).astype(np.float16)
    target = np.array([0, 1, 2])
    grad = fastloss.cross_entropy_grad(logits, target, 1e6, reduction="sum")
    reference_grad = reference.cross_entropy_grad(logits.astype(np.float64), target, 1e6,
                                                  reduction="sum")
    assert np.isinf(round_to(reference_grad, np.float16)).any()
    assert_gradient_contract(grad, reference_grad, np.dtype(np.float16))


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_cross_entropy_mixed_inputs(dtype, rng):
    logits, _, _ = ce_inputs(dtype, (6, 40), "plain", rng)
    x64 = logits.astype(np.float64)
    probabilities = rng.dirichlet(np.ones(40), 6)
    # float64 probabilities widen the computation (as torch promotes): float64 loss,
    # the gradient still in the logits' dtype
    loss = fastloss.cross_entropy(logits, probabilities, reduction="none")
    assert loss.dtype == np.float64
    value, grad = fastloss.cross_entropy_value_and_grad(logits, probabilities)
    assert_close_contract(np.float64(value), reference.cross_entropy(x64, probabilities),
                          np.float64, "loss")
    assert_gradient_contract(grad, reference.cross_entropy_grad(x64, probabilities), dtype)
    # float64 class weights are read as float32 with half logits
    weight = rng.uniform(0.5, 1.5, 40)
    target = rng.integers(0, 40, 6)
    value, grad = fastloss.cross_entropy_value_and_grad(logits, target, weight=weight)
    weight32 = weight.astype(np.float32).astype(np.float64)
    assert_loss_contract(value, reference.cross_entropy(x64, target, weight=weight32))
    assert_gradient_contract(grad, reference.cross_entropy_grad(x64, target, weight=weight32),
                             dtype)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_cross_entropy_block_statistics(dtype, rng):
    logits, target, _ = ce_inputs(dtype, (7, 900), "plain", rng)
    blocks = [(0, 400), (400, 900)]
    stats = fastloss.cross_entropy_merge_stats([
        fastloss.cross_entropy_block_stats(logits[:, a:b], target, class_offset=a,
                                           num_classes=900, label_smoothing=0.1)
        for a, b in blocks])
    x64 = logits.astype(np.float64)
    reference_grad = reference.cross_entropy_grad(x64, target, label_smoothing=0.1)
    for a, b in blocks:
        grad = fastloss.cross_entropy_grad(logits[:, a:b], target, class_offset=a,
                                           stats=stats, label_smoothing=0.1)
        assert_gradient_contract(grad, reference_grad[:, a:b], dtype)
    assert_loss_contract(fastloss.cross_entropy_from_stats(stats, target, label_smoothing=0.1),
                         reference.cross_entropy(x64, target, label_smoothing=0.1))


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_cross_entropy_half_argument_errors(dtype, rng):
    logits, target, _ = ce_inputs(dtype, (4, 5), "plain", rng)
    with pytest.raises(ValueError, match=r"^grad_dtype: expected None, the logits' dtype"):
        fastloss.cross_entropy_grad(logits, target, grad_dtype=np.float64)
    with pytest.raises(TypeError, match=r"^grad_dtype: expected None or a dtype"):
        fastloss.cross_entropy_grad(logits, target, grad_dtype=3)
    with pytest.raises(TypeError, match=r"^out: expected dtype float32"):
        fastloss.cross_entropy_grad(logits, target, grad_dtype="float32", out=logits.copy())
    with pytest.raises(TypeError, match=rf"^out: expected dtype {dtype}"):
        fastloss.cross_entropy_grad(logits, target, out=logits.astype(np.float32))
    with pytest.raises(ValueError, match=r"^grad_dtype: expected None, the logits' dtype "
                                         r"\(float32\), got float16"):
        fastloss.cross_entropy_grad(logits.astype(np.float32), target, grad_dtype=np.float16)


def test_unsupported_dtypes_name_the_argument_and_the_dtypes(rng):
    logits = rng.standard_normal((4, 5))
    target = np.array([0, 1, 2, 3])
    for bad in (np.int16, np.complex64, np.uint16):
        with pytest.raises(TypeError, match=r"^logits: expected a float32 or float64 array, "
                                            r"or float16 / ml_dtypes.bfloat16, got dtype"):
            fastloss.cross_entropy(logits.astype(bad), target)


# ----------------------------------------------------------------------------------------
# torch's own bfloat16 cross-entropy, against the same float64 reference
# ----------------------------------------------------------------------------------------

def test_cross_entropy_against_torch_bfloat16(rng):
    """fastloss's bfloat16 gradient is within one ulp of the correctly rounded reference
    everywhere; torch's (which keeps a bfloat16 log-softmax for its backward) is not.  The
    distances are recorded in docs/accuracy.rst."""
    torch = pytest.importorskip("torch")
    logits = (rng.standard_normal((64, 2000)) * 4.0).astype(BFLOAT16)
    target = rng.integers(0, 2000, 64)
    x64 = logits.astype(np.float64)
    reference_grad = reference.cross_entropy_grad(x64, target)
    expected = round_to(reference_grad, BFLOAT16)
    _, grad = fastloss.cross_entropy_value_and_grad(logits, target)
    ours = ulps(grad, expected)

    x = torch.from_numpy(logits.view(np.int16)).view(torch.bfloat16).requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(x, torch.from_numpy(target))
    loss.backward()
    torch_grad = x.grad.view(torch.int16).numpy().view(BFLOAT16)
    theirs = ulps(torch_grad, expected)
    assert ours.max() <= 1
    assert theirs.max() > ours.max()


# ----------------------------------------------------------------------------------------
# The torch adapter: torch.bfloat16 / torch.float16 tensors, zero-copy
# ----------------------------------------------------------------------------------------

TORCH_OPTIONS = [
    pytest.param({}, id="plain"),
    pytest.param({"label_smoothing": 0.1}, id="label_smoothing"),
    pytest.param({"reduction": "none"}, id="none"),
    pytest.param({"softcap": 3.0, "z_loss": 1e-3}, id="softcap-z_loss"),
]


@pytest.mark.parametrize("torch_dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("options", TORCH_OPTIONS)
@pytest.mark.parametrize("mode", ["fused", "lse", "inplace"])
def test_torch_cross_entropy_half(torch_dtype, options, mode, rng):
    torch = pytest.importorskip("torch")
    import fastloss.torch as FL
    dtype = getattr(torch, torch_dtype)
    numpy_dtype = BFLOAT16 if torch_dtype == "bfloat16" else FLOAT16
    logits = (rng.standard_normal((3, 70, 5)) * 3.0).astype(np.float32)  # (N, C, d1)
    target = torch.from_numpy(rng.integers(0, 70, (3, 5)))
    leaf = torch.from_numpy(logits).to(dtype).requires_grad_(True)
    data_pointer = leaf.data_ptr()
    input = leaf * 1 if mode == "inplace" else leaf
    loss = FL.cross_entropy(input, target, inplace_backward=mode == "inplace",
                            grad_in_forward=mode != "lse", **options)
    assert loss.dtype == dtype  # torch's dtype for the loss
    upstream = torch.ones_like(loss) if options.get("reduction") == "none" else None
    loss.backward(upstream)
    assert leaf.data_ptr() == data_pointer and leaf.grad.dtype == dtype

    # the reference on the same rounded inputs, class axis last
    x64 = leaf.detach().float().numpy().astype(np.float64).transpose(0, 2, 1)
    t = target.numpy()
    reference_loss = reference.cross_entropy(x64, t, **options)
    reference_grad = reference.cross_entropy_grad(x64, t, **options).transpose(0, 2, 1)
    grad_bits = leaf.grad.contiguous().view(torch.int16).numpy().view(numpy_dtype)
    assert_gradient_contract(grad_bits, reference_grad, numpy_dtype)
    # the loss: the float32 loss rounded once to the tensor's dtype
    got = loss.detach().float().numpy().astype(numpy_dtype)  # exact: a value of the dtype
    assert ulps(got, round_to(reference_loss, numpy_dtype)).max() <= 1


def test_torch_cross_entropy_half_mixed_inputs(rng):
    torch = pytest.importorskip("torch")
    import fastloss.torch as FL
    x = torch.from_numpy(rng.standard_normal((5, 20)).astype(np.float32)).bfloat16()
    x.requires_grad_(True)
    probabilities = torch.softmax(torch.from_numpy(rng.standard_normal((5, 20))), -1)
    x64 = x.detach().float().numpy().astype(np.float64)
    for target, loss_dtype in ((probabilities.float(), torch.float32),
                               (probabilities, torch.float64)):
        x.grad = None
        loss = FL.cross_entropy(x, target)
        assert loss.dtype == loss_dtype  # torch's promotion
        loss.backward()
        assert x.grad.dtype == torch.bfloat16
        q = target.numpy().astype(np.float64)
        assert_close_contract(loss.item(), reference.cross_entropy(x64, q), np.float32, "loss")
        assert_gradient_contract(x.grad.view(torch.int16).numpy().view(BFLOAT16),
                                 reference.cross_entropy_grad(x64, q), BFLOAT16)
    # class weights in float32 or bfloat16 beside bfloat16 logits
    target = torch.from_numpy(rng.integers(0, 20, 5))
    for weight in (torch.rand(20) + 0.5, (torch.rand(20) + 0.5).bfloat16()):
        x.grad = None
        FL.cross_entropy(x, target, weight=weight).backward()
        w = weight.float().numpy().astype(np.float64)
        assert_gradient_contract(x.grad.view(torch.int16).numpy().view(BFLOAT16),
                                 reference.cross_entropy_grad(x64, target.numpy(), weight=w),
                                 BFLOAT16)


# ----------------------------------------------------------------------------------------
# The pointwise families: elementwise and box losses, from the registry's own cases
# ----------------------------------------------------------------------------------------

def _to_half(value, dtype):
    """Float arrays in the half type (integers, scalars and None as they are)."""
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        with np.errstate(over="ignore"):
            return value.astype(dtype)
    return value


def _wide(value):
    if isinstance(value, np.ndarray) and (value.dtype.kind == "f" or value.dtype == BFLOAT16):
        return value.astype(np.float64)
    return value


def _pointwise_cases():
    cases = []
    for family, shape in (("elementwise", (37, 23)), ("box", (41,))):
        for entry in _registry.family(family):
            for case in entry.cases:
                cases.append(pytest.param(entry, case.params, shape,
                                          id=f"{entry.name}-{case.id}"))
    return cases


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("entry, params, shape", _pointwise_cases())
def test_pointwise_meets_the_half_contract(entry, params, shape, reduction, dtype, rng):
    args, options = entry.make_inputs(rng, np.float32, params, shape)
    args = [_to_half(arg, dtype) for arg in args]
    options = {key: _to_half(value, dtype) for key, value in options.items()}
    args64 = [_wide(arg) for arg in args]
    options64 = {key: _wide(value) for key, value in options.items()}
    value, grad_function, value_and_grad = entry.public
    ref_value, ref_grad, _ = entry.reference
    upstream = (rng.uniform(0.5, 2.0, entry.loss_shape(args[0].shape))
                if reduction == "none" else 0.625)

    reference_loss = ref_value(*args64, reduction=reduction, **options64)
    reference_grad = ref_grad(*args64, upstream, reduction=reduction, **options64)
    loss = value(*args, reduction=reduction, **options)
    if reduction == "none":
        assert_gradient_contract(loss, reference_loss, dtype)
    else:
        assert type(loss) is float
        assert_loss_contract(loss, reference_loss)
    fused_loss, grad = value_and_grad(*args, upstream, reduction=reduction, **options)
    np.testing.assert_array_equal(np.asarray(fused_loss, np.float64),
                                  np.asarray(loss, np.float64))
    assert_gradient_contract(grad, reference_grad, dtype)
    grad_alone = grad_function(*args, upstream, reduction=reduction, **options)
    np.testing.assert_array_equal(grad_alone.view(np.uint16), grad.view(np.uint16))


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_pointwise_mixed_inputs_and_widening(dtype, rng):
    pred = rng.standard_normal((30, 7)).astype(dtype)
    pred64 = pred.astype(np.float64)
    # a float32 target promotes (as torch): float32 loss, the gradient in pred's dtype
    target = rng.standard_normal((30, 7)).astype(np.float32)
    loss, grad = fastloss.mse_value_and_grad(pred, target, reduction="none")
    assert loss.dtype == np.float32 and grad.dtype == dtype
    assert_gradient_contract(grad, reference.mse_grad(pred64, target.astype(np.float64),
                                                      reduction="none"), dtype)
    # float16 with bfloat16 gives float32
    other = (FLOAT16 if dtype == BFLOAT16 else BFLOAT16)
    half_target = rng.standard_normal((30, 7)).astype(other)
    assert fastloss.mse(pred, half_target, reduction="none").dtype == np.float32
    # a weight the half type cannot hold widens the computation, results still half
    target = rng.standard_normal((30, 7)).astype(dtype)
    weight = rng.uniform(0.5, 1.5, 7)  # float64 values: promotes to float64
    assert fastloss.mse(pred, target, weight=weight, reduction="none").dtype == np.float64
    quantile = 0.1  # a scalar (weak): computed in float32, loss in the half type
    loss = fastloss.pinball(pred, target, quantile=quantile, reduction="none")
    assert loss.dtype == dtype
    assert_gradient_contract(loss, reference.pinball(pred64, target.astype(np.float64),
                                                     quantile=quantile, reduction="none"),
                             dtype)
    # a broadcast target's gradient: summed in float32, rounded once
    row_target = rng.standard_normal((1, 7)).astype(dtype)
    grad = fastloss.mse_grad(pred, row_target, wrt="target")
    assert grad.dtype == dtype and grad.shape == (1, 7)
    assert_gradient_contract(grad, reference.mse_grad(pred64, row_target.astype(np.float64),
                                                      wrt="target"), dtype)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_pointwise_every_simd_path_and_thread_count(dtype, rng):
    pred = (rng.standard_normal(50000) * 4).astype(dtype)
    target = rng.uniform(0.0, 1.0, 50000).astype(dtype)
    pred64, target64 = pred.astype(np.float64), target.astype(np.float64)
    results = []
    with simd_paths() as paths:
        for path in paths:
            for name in ("bce_with_logits", "huber", "sigmoid_focal"):
                value_and_grad = getattr(fastloss, f"{name}_value_and_grad")
                loss, grad = value_and_grad(pred, target, num_threads=1)
                loss2, grad2 = value_and_grad(pred, target, num_threads=2)
                assert loss == loss2
                np.testing.assert_array_equal(grad.view(np.uint16), grad2.view(np.uint16))
                assert_loss_contract(loss, getattr(reference, name)(pred64, target64))
                assert_gradient_contract(
                    grad, getattr(reference, f"{name}_grad")(pred64, target64), dtype)
                results.append(name)
    assert results


@pytest.mark.parametrize("torch_dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("name, torch_name", [("mse", "mse_loss"),
                                              ("bce_with_logits",
                                               "binary_cross_entropy_with_logits"),
                                              ("huber", "huber_loss")])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_torch_pointwise_half(torch_dtype, name, torch_name, reduction, rng):
    torch = pytest.importorskip("torch")
    import fastloss.torch as FL
    dtype = getattr(torch, torch_dtype)
    numpy_dtype = BFLOAT16 if torch_dtype == "bfloat16" else FLOAT16
    x = torch.from_numpy(rng.standard_normal((13, 9)).astype(np.float32)).to(dtype)
    t = torch.from_numpy(rng.uniform(0.0, 1.0, (13, 9)).astype(np.float32)).to(dtype)
    x.requires_grad_(True)
    loss = getattr(FL, torch_name)(x, t, reduction=reduction)
    assert loss.dtype == dtype
    loss.backward(torch.ones_like(loss) if reduction == "none" else None)
    assert x.grad.dtype == dtype
    x64 = x.detach().float().numpy().astype(np.float64)
    t64 = t.float().numpy().astype(np.float64)
    grad = x.grad.view(torch.int16).numpy().view(numpy_dtype)
    assert_gradient_contract(
        grad, getattr(reference, f"{name}_grad")(x64, t64, reduction=reduction), numpy_dtype)
    expected = getattr(reference, name)(x64, t64, reduction=reduction)
    got = loss.detach().view(torch.int16).numpy().view(numpy_dtype)
    assert_gradient_contract(got, np.asarray(expected), numpy_dtype)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_layouts_empty_and_nan(dtype, rng):
    # strided logits (a view with a step: copied to rows), 3-d batches, no rows at all
    wide_logits = (rng.standard_normal((6, 40)) * 2).astype(dtype)
    logits = wide_logits[:, ::2]
    target = rng.integers(0, 20, 6)
    x64 = logits.astype(np.float64)
    loss, grad = fastloss.cross_entropy_value_and_grad(logits, target)
    assert_loss_contract(loss, reference.cross_entropy(x64, target))
    assert_gradient_contract(grad, reference.cross_entropy_grad(x64, target), dtype)
    batch = logits.reshape(2, 3, 20)
    loss3, grad3 = fastloss.cross_entropy_value_and_grad(batch, target.reshape(2, 3))
    assert loss3 == loss
    np.testing.assert_array_equal(grad3.reshape(6, 20).view(np.uint16), grad.view(np.uint16))
    empty = np.zeros((0, 5), dtype)
    loss, grad = fastloss.cross_entropy_value_and_grad(empty, np.zeros(0, np.int64),
                                                       reduction="sum")
    assert loss == 0.0 and grad.shape == (0, 5) and grad.dtype == dtype
    # NaN inputs of the pointwise losses give NaN where the reference does, in place too
    pred = rng.standard_normal(300).astype(dtype)
    pred[[3, 100]] = np.nan
    target = rng.standard_normal(300).astype(dtype)
    reference_grad = reference.huber_grad(pred.astype(np.float64), target.astype(np.float64),
                                          reduction="sum")
    work = pred.copy()
    loss, grad = fastloss.huber_value_and_grad(work, target, reduction="sum", out=work)
    assert np.isnan(loss) and grad is work
    assert_gradient_contract(grad, reference_grad, dtype)
