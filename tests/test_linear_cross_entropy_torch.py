"""fastloss.torch.linear_cross_entropy on torch's products.

The adapter runs fastloss.linear_cross_entropy's block schedule with torch's matmul for
the three products (in the input's dtype) and fastloss's kernels for the softmax part:
its values against the float64 reference (every option, every reduction, grad_output
!= 1, a second backward through a retained graph), against the NumPy API and torch's
own float32 computation, for any subset of inputs that require grad; no NumPy BLAS in
it; and bfloat16 / float16 inputs within the products' contract for half precision
(docs/accuracy.rst), beside torch's own half-precision F.linear + F.cross_entropy.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import fastloss  # noqa: E402
import fastloss.torch as FL  # noqa: E402
from contract_floors import assert_close_at_scale  # noqa: E402
from loss_specs import assert_close_contract  # noqa: E402
from peak_rss import (CHILD_HEAD, CHILD_TAIL, needs_plain_malloc, needs_proc,  # noqa: E402
                      run_child)
from test_linear_cross_entropy import (OPTIONS, REDUCTIONS, make_inputs,  # noqa: E402
                                       norm_error, products_bound, reference_of)

NAMES = ("hidden", "classifier", "bias")
# unit roundoff of the half types (half an ulp of 1)
HALF_UNIT = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def _tensors(hidden, classifier, target, options, dtype):
    """The case's tensors in `dtype` (probabilities too; class weights in float32 beside
    half inputs, which torch's own function cannot take) and the keywords."""
    tensors = [torch.from_numpy(np.asarray(a)).to(dtype)
               for a in (hidden, classifier, options["bias"])]
    target = torch.from_numpy(np.asarray(target))
    if target.dtype.is_floating_point:
        target = target.to(dtype)
    keywords = {name: options[name] for name in ("ignore_index", "label_smoothing",
                                                 "z_loss", "softcap") if name in options}
    if options.get("weight") is not None:
        keywords["weight"] = torch.from_numpy(np.asarray(options["weight"])).to(dtype)
    return tensors, target, keywords


def _rounded(hidden, classifier, target, options, dtype):
    """The case's inputs rounded to `dtype` and back to float64 (the reference's)."""
    def round_trip(a):
        return torch.from_numpy(np.asarray(a, np.float64)).to(dtype).double().numpy()
    options = dict(options, bias=round_trip(options["bias"]))
    if options.get("weight") is not None:
        options["weight"] = round_trip(options["weight"])
    if np.asarray(target).dtype.kind == "f":
        target = round_trip(target)
    return round_trip(hidden), round_trip(classifier), target, options


def _adapter(tensors, target, keywords, reduction, grad_output, block_rows, needs=(True,) * 3,
             twice=False):
    """The adapter's loss and the gradients of the leaves that require grad, from
    loss.backward(grad_output); with ``twice``, also those of a second backward through
    the retained graph (recomputed from the saved inputs: for "mean" and "sum" not bit
    for bit the first's, which the forward computed for a grad_output of 1 and the
    backward scaled), for the caller to check as the first."""
    leaves = [t.detach().clone().requires_grad_(need) for t, need in zip(tensors, needs)]
    loss = FL.linear_cross_entropy(leaves[0], leaves[1], target, linear_bias=leaves[2],
                                   reduction=reduction, block_rows=block_rows, **keywords)
    up = torch.as_tensor(grad_output, dtype=torch.float64).to(loss.dtype).expand_as(loss)
    loss.backward(up, retain_graph=twice)
    grads = [leaf.grad.clone() if need else None for leaf, need in zip(leaves, needs)]
    for leaf, need in zip(leaves, needs):
        assert need or leaf.grad is None
    if not twice:
        return loss.detach(), grads
    for leaf in leaves:
        leaf.grad = None
    loss.backward(up)
    again = [leaf.grad if need else None for leaf, need in zip(leaves, needs)]
    return loss.detach(), grads, again


def _grad_output(rng, reduction, batch):
    return rng.uniform(0.5, 2.0, batch) if reduction == "none" else 1.7


# ----------------------------------------------------------------------------------------
# float32 and float64: the reference, the NumPy API, torch
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", list(OPTIONS))
def test_float64_every_option_matches_the_reference(case, reduction):
    """grad_output != 1, blocks of 4 rows, a 2-d batch, and a second backward."""
    rng = np.random.default_rng([len(case), len(reduction), 64])
    batch = (3, 5)
    hidden, classifier, target, options = make_inputs(rng, batch, 6, 11, np.float64,
                                                      OPTIONS[case])
    grad_output = _grad_output(rng, reduction, batch)
    tensors, target_tensor, keywords = _tensors(hidden, classifier, target, options,
                                                torch.float64)
    loss, grads, again = _adapter(tensors, target_tensor, keywords, reduction, grad_output,
                                  4, twice=True)
    ref_loss, ref_grads = reference_of(hidden, classifier, target, grad_output,
                                       dict(options, reduction=reduction))
    assert loss.dtype == torch.float64 and loss.shape == np.shape(ref_loss)
    assert_close_contract(loss.numpy(), ref_loss, np.float64, "loss")
    for grad, second, ref, name in zip(grads, again, ref_grads, NAMES):
        for result in (grad, second):
            assert result.dtype == torch.float64
            assert_close_contract(result.numpy(), ref, np.float64, "grad", what=f"d/d{name}")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", list(OPTIONS))
def test_float32_every_option_within_the_products_bound(case, reduction):
    """torch's float32 products: within the float32 contract plus the products' bound
    (the NumPy API's test, test_float32_within_the_products_bound, on the adapter)."""
    rng = np.random.default_rng([len(case), len(reduction), 32])
    batch = (4, 9)
    hidden, classifier, target, options = make_inputs(rng, batch, 96, 300, np.float32,
                                                      OPTIONS[case])
    grad_output = _grad_output(rng, reduction, batch)
    tensors, target_tensor, keywords = _tensors(hidden, classifier, target, options,
                                                torch.float32)
    loss, grads, again = _adapter(tensors, target_tensor, keywords, reduction, grad_output,
                                  7, twice=True)
    ref_loss, ref_grads = reference_of(hidden, classifier, target, grad_output,
                                       dict(options, reduction=reduction))
    bounds = products_bound(hidden, classifier, target, grad_output, reduction, np.float32,
                            options)
    assert loss.dtype == torch.float32
    assert_close_at_scale(loss.numpy(), ref_loss, np.float32, "loss", extra=bounds[0])
    for grad, second, ref, bound, given, name in zip(
            grads, again, ref_grads, bounds[1:], (hidden, classifier, options["bias"]), NAMES):
        for result in (grad, second):
            assert result.dtype == torch.float32 and result.shape == given.shape
            assert_close_at_scale(result.numpy(), ref, np.float32, "grad", loss=ref_loss,
                                  wrt=given, grad_output=grad_output, extra=bound,
                                  what=f"d/d{name}")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", ["plain", "all", "soft-all"])
def test_same_values_as_the_numpy_api(case, reduction):
    """float64: the adapter (torch's products) and fastloss.linear_cross_entropy (NumPy's)
    compute the same thing by the same blocks; only the BLAS's order of summation differs."""
    rng = np.random.default_rng([len(case), len(reduction), 3])
    hidden, classifier, target, options = make_inputs(rng, (23,), 16, 40, np.float64,
                                                      OPTIONS[case])
    grad_output = _grad_output(rng, reduction, (23,))
    tensors, target_tensor, keywords = _tensors(hidden, classifier, target, options,
                                                torch.float64)
    loss, grads = _adapter(tensors, target_tensor, keywords, reduction, grad_output, 5)
    numpy_loss, numpy_grads = fastloss.linear_cross_entropy_value_and_grad(
        hidden, classifier, target, grad_output, reduction=reduction, block_rows=5,
        **options)
    np.testing.assert_allclose(loss.numpy(), numpy_loss, rtol=1e-13, atol=1e-15)
    for grad, numpy_grad in zip(grads, numpy_grads):
        np.testing.assert_allclose(grad.numpy(), numpy_grad, rtol=1e-12,
                                   atol=1e-13 * np.max(np.abs(numpy_grad)))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False),
                                   (False, False, True), (True, True, False),
                                   (False, True, True), (True, True, True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_any_subset_of_inputs_gives_the_same_gradients(needs, reduction, dtype):
    """Each gradient is the same whichever others are asked for (the products of one do
    not depend on the others), and the same from a second backward."""
    rng = np.random.default_rng([sum(needs), len(reduction)])
    hidden, classifier, target, options = make_inputs(rng, (19,), 16, 30, np.float32,
                                                      OPTIONS["weight-z_loss"])
    grad_output = _grad_output(rng, reduction, (19,))
    tensors, target_tensor, keywords = _tensors(hidden, classifier, target, options, dtype)
    _, every, every_again = _adapter(tensors, target_tensor, keywords, reduction,
                                     grad_output, 6, twice=True)
    _, some, some_again = _adapter(tensors, target_tensor, keywords, reduction, grad_output,
                                   6, needs=needs, twice=True)
    for grad, full, second, full_second, need in zip(some, every, some_again, every_again,
                                                     needs):
        assert (grad is None) == (not need) and (second is None) == (not need)
        if need:
            assert grad.dtype == dtype and torch.equal(grad, full)
            assert second.dtype == dtype and torch.equal(second, full_second)


def test_float32_error_at_most_twice_torch_own():
    """torch's float32 F.linear + F.cross_entropy on the same inputs: the adapter's error
    (2-norm over each result) is at most twice torch's, plus float32's own rounding."""
    rng = np.random.default_rng(11)
    hidden, classifier, target, options = make_inputs(rng, (96,), 256, 1000, np.float32,
                                                      OPTIONS["smoothing"])
    tensors, target_tensor, keywords = _tensors(hidden, classifier, target, options,
                                                torch.float32)
    ours = _adapter(tensors, target_tensor, keywords, "mean", 1.7, 40)
    leaves = [t.clone().requires_grad_() for t in tensors]
    theirs = F.cross_entropy(F.linear(*leaves), target_tensor, label_smoothing=0.15)
    (1.7 * theirs).backward()
    ref_loss, ref_grads = reference_of(hidden, classifier, target, 1.7, options)
    pairs = [(ours[0], theirs.detach(), ref_loss)] + [
        (grad, leaf.grad, ref) for grad, leaf, ref in zip(ours[1], leaves, ref_grads)]
    for mine, torchs, ref in pairs:
        mine_error, torch_error = norm_error(mine.numpy(), ref), norm_error(torchs.numpy(), ref)
        rounding = 2.0**-24 * float(np.linalg.norm(ref))
        assert mine_error <= 2 * torch_error + rounding, (mine_error, torch_error)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_no_numpy_blas_in_the_adapter(monkeypatch, dtype):
    """The adapter's products are torch's: NumPy's matmul and dot are never called (they
    would run OpenBLAS's thread pool beside torch's)."""
    rng = np.random.default_rng(4)
    hidden, classifier, target, options = make_inputs(rng, (10,), 8, 12, np.float32,
                                                      OPTIONS["all"])
    tensors, target_tensor, keywords = _tensors(hidden, classifier, target, options, dtype)
    expected = [_adapter(tensors, target_tensor, keywords, reduction, 0.5, 3, twice=True)
                for reduction in REDUCTIONS]

    def refuse(*args, **kwargs):
        raise AssertionError("NumPy's BLAS was called")

    for name in ("matmul", "dot", "einsum", "inner", "tensordot", "vdot"):
        monkeypatch.setattr(np, name, refuse)
    for reduction, (loss, grads, again) in zip(REDUCTIONS, expected):
        same_loss, same_grads, same_again = _adapter(tensors, target_tensor, keywords,
                                                     reduction, 0.5, 3, twice=True)
        assert torch.equal(loss, same_loss)
        for grad, same in zip(grads + again, same_grads + same_again):
            assert torch.equal(grad, same)


# ----------------------------------------------------------------------------------------
# bfloat16 and float16: torch's half-precision products, the kernels' float32 softmax
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", list(OPTIONS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_within_the_products_bound(dtype, case, reduction):
    """Against the float64 reference on the rounded inputs: the float32 contract plus
    the products' bound for half precision (products_bound's half_unit: the logits, the
    logits' gradient and the products' results rounded to the half type; the
    classifier's gradient once per block), plus the rounding of each result to the half
    type. The gradients come back in the input's dtype."""
    rng = np.random.default_rng([len(case), len(reduction), 16])
    batch, block_rows = (4, 9), 10
    hidden, classifier, target, options = make_inputs(rng, batch, 64, 200, np.float64,
                                                      OPTIONS[case])
    hidden, classifier, target, options = _rounded(hidden, classifier, target, options,
                                                   dtype)
    grad_output = _grad_output(rng, reduction, batch)
    tensors, target_tensor, keywords = _tensors(hidden, classifier, target, options, dtype)
    loss, grads, again = _adapter(tensors, target_tensor, keywords, reduction, grad_output,
                                  block_rows, twice=True)
    assert loss.dtype == dtype
    ref_loss, ref_grads = reference_of(hidden, classifier, target, grad_output,
                                       dict(options, reduction=reduction))
    unit = HALF_UNIT[dtype]
    blocks = -(-int(np.prod(batch)) // block_rows)
    bounds = products_bound(hidden, classifier, target, grad_output, reduction, np.float32,
                            options, half_unit=unit, blocks=blocks)
    assert_close_at_scale(loss.double().numpy(), ref_loss, np.float32, "loss",
                          extra=bounds[0] + unit * np.abs(ref_loss))
    for grad, second, ref, bound, given, name in zip(
            grads, again, ref_grads, bounds[1:], (hidden, classifier, options["bias"]), NAMES):
        for result in (grad, second):
            assert result.dtype == dtype and result.shape == given.shape
            # a second backward of "mean"/"sum" scales the first's rounded gradient by
            # grad_output: one rounding more
            assert_close_at_scale(result.double().numpy(), ref, np.float32, "grad",
                                  loss=ref_loss, wrt=given, grad_output=grad_output,
                                  extra=bound + 2 * unit * np.abs(ref), what=f"d/d{name}")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", ["plain", "smoothing", "weight", "ignore"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_error_beside_torch_own(dtype, case, reduction):
    """torch's own F.linear + F.cross_entropy in the half type on the same inputs, against
    the same float64 reference: the adapter's error (2-norm over each result) is at most
    twice torch's, plus one rounding of the result to the half type."""
    rng = np.random.default_rng([len(case), len(reduction), 8])
    hidden, classifier, target, options = make_inputs(rng, (128,), 128, 2000, np.float64,
                                                      OPTIONS[case])
    hidden, classifier, target, options = _rounded(hidden, classifier, target, options,
                                                   dtype)
    grad_output = _grad_output(rng, reduction, (128,))
    tensors, target_tensor, keywords = _tensors(hidden, classifier, target, options, dtype)
    ours = _adapter(tensors, target_tensor, keywords, reduction, grad_output, 32)
    leaves = [t.clone().requires_grad_() for t in tensors]
    theirs = F.cross_entropy(F.linear(*leaves), target_tensor, reduction=reduction,
                             **keywords)
    theirs.backward(torch.as_tensor(grad_output).to(dtype).expand_as(theirs))
    ref_loss, ref_grads = reference_of(hidden, classifier, target, grad_output,
                                       dict(options, reduction=reduction))
    pairs = [(ours[0], theirs.detach(), ref_loss)] + [
        (grad, leaf.grad, ref) for grad, leaf, ref in zip(ours[1], leaves, ref_grads)]
    for mine, torchs, ref in pairs:
        mine_error = norm_error(mine.double().numpy(), ref)
        torch_error = norm_error(torchs.double().numpy(), ref)
        rounding = HALF_UNIT[dtype] * float(np.linalg.norm(ref))
        assert mine_error <= 2 * torch_error + rounding, (mine_error, torch_error)


def test_half_bad_input():
    x = torch.ones(3, 4, dtype=torch.bfloat16)
    W = torch.ones(5, 4, dtype=torch.bfloat16)
    y = torch.tensor([0, 1, 4])
    with pytest.raises(TypeError, match="linear_weight"):
        FL.linear_cross_entropy(x, W.half(), y)
    with pytest.raises(TypeError, match="linear_bias"):
        FL.linear_cross_entropy(x, W, y, linear_bias=torch.ones(5))
    with pytest.raises(ValueError, match="linear_bias"):
        FL.linear_cross_entropy(x, W, y, linear_bias=torch.ones(4, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="input"):
        FL.linear_cross_entropy(x[:, :3], W, y)
    with pytest.raises(TypeError, match="target"):
        FL.linear_cross_entropy(x, W, torch.full((3, 5), 0.2, dtype=torch.float16))
    with pytest.raises(ValueError, match="target"):
        FL.linear_cross_entropy(x, W, torch.tensor([0, 1, 5]))
    with pytest.raises(TypeError, match="weight"):
        FL.linear_cross_entropy(x.float(), W.float(), y,
                                weight=torch.ones(5, dtype=torch.bfloat16))
    # probabilities in the half type or in float32 beside half inputs
    for probabilities in (torch.full((3, 5), 0.2, dtype=torch.bfloat16),
                          torch.full((3, 5), 0.2)):
        loss = FL.linear_cross_entropy(x, W, probabilities)
        assert loss.dtype == torch.bfloat16
        assert abs(float(loss) - np.log(5)) < 1e-2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bit_identical_for_any_openmp_thread_count(dtype):
    """num_threads sets the kernels' OpenMP threads only; the products are the same torch
    calls whatever it is, so the results are identical bit for bit."""
    rng = np.random.default_rng(9)
    hidden, classifier, target, options = make_inputs(rng, (40,), 32, 300, np.float32,
                                                      OPTIONS["all"])
    tensors, target_tensor, keywords = _tensors(hidden, classifier, target, options, dtype)
    results = [_adapter(tensors, target_tensor, dict(keywords, num_threads=threads), "mean",
                        1.3, 16) for threads in (1, 2, 3)]
    for loss, grads in results[1:]:
        assert torch.equal(loss, results[0][0])
        for grad, first in zip(grads, results[0][1]):
            assert torch.equal(grad, first)


# ----------------------------------------------------------------------------------------
# Peak resident memory of the adapter: its scratch does not grow with V
# ----------------------------------------------------------------------------------------

MiB = 1 << 20
THREADS = 2  # the child's OpenMP threads (the engine keeps rows of V per thread)

RSS_CHILD = CHILD_HEAD + r"""
import ctypes

import torch
import fastloss.torch as FL
from fastloss.torch._linear_cross_entropy import _block_height

torch.set_num_threads(2)
n_rows, n_features, n_classes = (int(a) for a in sys.argv[1:4])


def inputs(scale):
    rows, classes = n_rows // scale, n_classes // scale
    hidden = torch.from_numpy(touched((rows, n_features), 0.5)).requires_grad_()
    classifier = torch.from_numpy(touched((classes, n_features), -0.25)).requires_grad_()
    bias = torch.from_numpy(touched(classes, 0.1)).requires_grad_()
    target = torch.from_numpy((np.arange(rows) * 7) % classes)

    def call():
        hidden.grad = classifier.grad = bias.grad = None
        FL.linear_cross_entropy(hidden, classifier, target, linear_bias=bias,
                                label_smoothing=0.1).backward()
    return call, hidden, classifier, bias


warm, *_ = inputs(16)
call, hidden, classifier, bias = inputs(1)
# The BLAS's working memory: torch's MKL allocates per-thread packing buffers at the first
# product of a shape (about 4.7 MiB a thread for a 64 x 1024 block by a 32000 x 1024
# classifier, whatever V beyond a few thousand; BENCHMARKS.md) and keeps them for later
# products of that shape. Any product of the shape allocates them, so torch's products
# of one block (the adapter's height) allocate them here, before the measurement; then
# the heap's free memory goes back to the system (glibc), so that none is reused unseen.
with torch.no_grad():
    # the adapter's block height with a bias
    block = hidden[:_block_height(n_rows, n_classes, 4, None, True)]
    logits = torch.addmm(bias, block, classifier.T)
    torch.mm(logits, classifier)
    torch.mm(logits.T, block)
    del block, logits
trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
if trim is not None:
    trim(0)
returned = hidden.nbytes + classifier.nbytes + bias.nbytes  # the gradients, in .grad
""" + CHILD_TAIL.replace('print(json.dumps({"extra": status("VmHWM") - before}))',
                         'print(json.dumps({"extra": status("VmHWM") - before - returned}))')


def adapter_extra_resident_bytes(tmp_path, n_rows, n_features, n_classes):
    # MKL_DISABLE_FAST_MM: MKL keeps no buffers between products (the warm-up above
    # covers one shape; on an Intel Xeon with AVX-512, MKL's cache of the others' kept
    # 2.2 MiB more at V = 65536 than without it, session 41, none of it fastloss's)
    return run_child(RSS_CHILD, (n_rows, n_features, n_classes), cwd=tmp_path,
                     FASTLOSS_NUM_THREADS=str(THREADS), MKL_DISABLE_FAST_MM="1")["extra"]


@needs_proc
@needs_plain_malloc
def test_adapter_peak_memory_is_the_scratch_whatever_V(tmp_path):
    """Beyond the inputs, the gradients it returns (in .grad) and torch's BLAS working
    memory, a forward+backward touches the scratch (what the 12 MiB budget leaves after
    the rest, at any V), O(N) statistics and vectors of V values: the engine's rows in float64 (two per OpenMP
    thread with label smoothing), the bias's float64 sums and each block's float64
    column sums. From V = 16384 to V = 65536 (N x V logits of 64 and 256 MiB) only those
    vectors grow, and the whole stays under 5% of the larger logits; a block x V scratch
    at a fixed block height, a second block or a copy of the classifier's gradient would
    grow by several MiB."""
    n_rows, n_features, small_v, large_v = 1024, 64, 16384, 65536
    small = adapter_extra_resident_bytes(tmp_path, n_rows, n_features, small_v)
    large = adapter_extra_resident_bytes(tmp_path, n_rows, n_features, large_v)
    assert large <= 0.05 * n_rows * large_v * 4, large / MiB
    vectors = (2 * THREADS + 3) * 8 * (large_v - small_v)
    assert large <= small + vectors + MiB // 2, (small / MiB, large / MiB, vectors / MiB)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16,
                                   torch.float16])
def test_gradients_in_fastloss_memory_behave_as_torch_own(dtype):
    """The adapter's gradients and scratch are tensors over memory from fastloss's
    allocator of large outputs (huge pages and the kept block, as the NumPy API's
    gradients; torch's allocator advises no huge pages): of the input's dtype and shape,
    contiguous and writable; they accumulate over two backwards into .grad
    (the second adds to the first, as torch does) and a Module holding them moves to
    shared memory."""
    from fastloss.torch import _empty
    buffer = _empty((3, 5), dtype)
    assert (buffer.dtype, buffer.shape, buffer.is_contiguous()) == (dtype, (3, 5), True)
    buffer.fill_(2.0)
    assert buffer.float().sum().item() == 30.0

    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 11).to(dtype)
    hidden = torch.randn(6, 8, dtype=dtype, requires_grad=True)
    target = torch.randint(0, 11, (6,))

    def backward():
        FL.linear_cross_entropy(hidden, layer.weight, target, linear_bias=layer.bias,
                                block_rows=4).backward()

    backward()
    first = {name: p.grad.clone() for name, p in
             (("hidden", hidden), ("classifier", layer.weight), ("bias", layer.bias))}
    backward()
    for name, p in (("hidden", hidden), ("classifier", layer.weight), ("bias", layer.bias)):
        assert p.grad.dtype == dtype and p.grad.shape == p.shape, name
        # the same gradient twice: the sum is twice the first, rounded once
        assert torch.equal(p.grad, first[name] + first[name]), name
    layer.share_memory()
    assert layer.weight.grad.is_shared() and layer.bias.grad.is_shared()


@pytest.mark.parametrize("function, reduction",
                         [("linear_cross_entropy", reduction) for reduction in REDUCTIONS]
                         + [("linear_token_log_probs", None)])
def test_hidden_size_zero_matches_torch(function, reduction):
    # logits of the bias alone, as torch's F.linear and F.linear_cross_entropy give them
    torch.manual_seed(0)
    hidden = torch.randn(2, 3, 0, dtype=torch.float64, requires_grad=True)
    classifier = torch.randn(5, 0, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[0, 1, 2], [3, -100, 4]])
    if function == "linear_cross_entropy":
        loss = FL.linear_cross_entropy(hidden, classifier, target, linear_bias=bias,
                                       reduction=reduction)
        expected = F.cross_entropy(F.linear(hidden, classifier, bias).movedim(-1, 1), target,
                                   reduction=reduction)
    else:
        loss = FL.linear_token_log_probs(hidden, classifier, target, bias=bias)
        logits = F.linear(hidden, classifier, bias).log_softmax(-1)
        expected = logits.gather(-1, target.clamp(min=0)[..., None])[..., 0] * (target >= 0)
    grads = torch.autograd.grad(loss.sum(), (hidden, classifier, bias))
    expected_grads = torch.autograd.grad(expected.sum(), (hidden, classifier, bias))
    assert loss.shape == expected.shape
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    for grad, ref in zip(grads, expected_grads):
        assert grad.shape == ref.shape
        torch.testing.assert_close(grad, ref, rtol=1e-12, atol=1e-12)
