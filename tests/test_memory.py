"""Extra memory of the in-place training step: O(N), not O(N x C); and the peak resident
memory of a call of every family, which sees the kernels' own mallocs (below).

DESIGN.md: cross-entropy value_and_grad with out=logits needs at most 2% of the
logits' size at N=2048, C=65536.  NumPy reports its allocations to tracemalloc,
so the peak traced here is every array the Python and Cython layers create; the
C kernel's own scratch (one chunk of exps and per-chunk statistics per thread,
plus three float64 values per row) is O(threads x chunk + N) by construction.
"""
import tracemalloc

import numpy as np
import pytest

import fastloss


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_in_place_value_and_grad_allocates_per_row_not_per_element(reduction):
    n_rows, n_classes = 2048, 65536
    logits = np.zeros((n_rows, n_classes), dtype=np.float32)
    logits[:, ::97] = 1.5  # a non-uniform softmax without paying for random numbers
    target = np.arange(n_rows) % n_classes
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        loss, grad = fastloss.cross_entropy_value_and_grad(logits, target, out=logits,
                                                           reduction=reduction)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert grad is logits
    assert peak <= 0.02 * logits.nbytes
    # the per-row data (loss, grad_output) is what remains: a few float64 per row
    assert peak <= 64 * n_rows + 65536
    # and the result is the gradient: rows sum to zero, the target column is negative
    assert np.allclose(grad.sum(axis=1, dtype=np.float64), 0.0, atol=1e-6)
    assert np.all(grad[np.arange(n_rows), target] < 0)


# ----------------------------------------------------------------------------------------
# Peak resident memory, which sees the C kernels' own mallocs
# ----------------------------------------------------------------------------------------
# tracemalloc above sees only what Python and NumPy allocate; the kernels' scratch comes
# from C's malloc.  Here a fresh interpreter builds one case's inputs and outputs (every
# page written), calls the function once on small inputs (code, OpenMP threads), resets its
# peak resident set (/proc/self/clear_refs, "5": VmHWM := VmRSS), makes the call, and
# reports VmHWM - VmRSS before the call: every byte any layer touched during it.  An N x C
# scratch of cross-entropy (256 MiB at N=2048, C=32768 float32), or an n-sized one of an
# elementwise or pairs loss, is far above the bounds; test_the_measurement_sees_a_c_malloc
# shows that a C malloc of that size during the call is caught.

import os

from peak_rss import needs_plain_malloc, needs_proc, run_child  # noqa: E402

MiB = 1 << 20
# what a call may touch besides its documented outputs: Python objects, the result
# arrays' headers, a few float64 per row, per-thread scratch of O(C), allocator slack
SLACK = 4 * MiB

RSS_CHILD = r"""
import ctypes, json, sys
import numpy as np
import fastloss

case, c_malloc = sys.argv[1], int(sys.argv[2])
N, C = 2048, 32768            # cross-entropy: 256 MiB of float32 logits
EW = 1 << 25                  # elementwise: 128 MiB of float32 per array
PAIRS, D = 1 << 18, 64        # pairs and triplets: 64 MiB of float32 per input
ROWS = 2048                   # all-pairs: N x N float64 matrices of 32 MiB


def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024


def touched(shape, dtype=np.float32, value=0.0):
    array = np.empty(shape, dtype)
    array.fill(value)  # every page resident before the measurement
    return array


def pattern(shape, dtype=np.float32):
    # values that vary, without the temporaries of a random generator
    array = touched(shape, dtype)
    flat = array.reshape(-1)
    flat[::97] = 1.5
    flat[::89] = -0.75
    return array


def case_call(n_scale):
    # the call of `case`, at full size (n_scale 1) or small (the warm-up), and the bytes
    # of the arrays it returns (0 when out= is given)
    n, c, ew, pairs, rows = (N // n_scale, C // n_scale, EW // n_scale ** 2,
                             PAIRS // n_scale ** 2, ROWS // n_scale)
    if case.startswith("cross_entropy"):
        logits = pattern((n, c))
        target = (np.arange(n) * 7) % c
        if case == "cross_entropy in place":
            return lambda: fastloss.cross_entropy_value_and_grad(logits, target, out=logits), 0
        if case == "cross_entropy out":
            out = touched((n, c))
            return lambda: fastloss.cross_entropy_value_and_grad(logits, target, out=out,
                                                                 label_smoothing=0.1), 0
        if case == "cross_entropy none":
            return (lambda: fastloss.cross_entropy_value_and_grad(
                logits, target, out=logits, reduction="none"), 0)
        if case == "cross_entropy allocating":
            return lambda: fastloss.cross_entropy_value_and_grad(logits, target), logits.nbytes
        if case == "cross_entropy forward":
            return lambda: fastloss.cross_entropy(logits, target, return_lse=True), 0
        if case == "cross_entropy grad from lse":
            _, lse = fastloss.cross_entropy(logits, target, return_lse=True)
            out = touched((n, c))
            return lambda: fastloss.cross_entropy_grad(logits, target, lse=lse, out=out), 0
    if case in ("mse", "huber", "bce_with_logits", "mse allocating"):
        pred = pattern((ew // 4096, 4096))
        target = pattern((ew // 4096, 4096)) * 0.25
        if case == "mse allocating":
            return lambda: fastloss.mse_value_and_grad(pred, target), pred.nbytes
        options = {"huber": {"weight": np.linspace(0.5, 2.0, 4096, dtype=np.float32)},
                   "bce_with_logits": {"pos_weight": np.linspace(0.5, 2, 4096,
                                                                 dtype=np.float32)},
                   "mse": {}}[case]
        if case == "bce_with_logits":
            target = np.abs(target)
        function = getattr(fastloss, case + "_value_and_grad")
        return lambda: function(pred, target, out=pred, **options), 0
    if case in ("mse cancelling in place", "mse cancelling out"):
        # weights of both signs whose float32 terms cancel (the loss is a few units, the
        # terms' magnitude n): the C entry redoes the sum in double from the float32
        # arrays, in place after a forward pass first (csrc/elementwise.c's policy)
        pred = touched((ew // 4096, 4096), value=1.0)
        pred.reshape(-1)[::89] = 1.5
        target = touched((ew // 4096, 4096))
        weight = np.tile(np.array([1.0, -1.0], np.float32), 2048)
        out = pred if case.endswith("in place") else touched((ew // 4096, 4096))
        return lambda: fastloss.mse_value_and_grad(pred, target, weight=weight, out=out,
                                                   reduction="sum"), 0
    if case == "contrastive":
        x1, x2 = pattern((pairs, D)), pattern((pairs, D)) * 0.5
        label = np.arange(pairs) % 2
        out = (touched((pairs, D)), touched((pairs, D)))
        return lambda: fastloss.contrastive_value_and_grad(x1, x2, label, out=out), 0
    if case == "triplet_margin":
        a, p, q = pattern((pairs, D)), pattern((pairs, D)) * 0.5, pattern((pairs, D)) * -1
        out = (touched((pairs, D)), touched((pairs, D)), touched((pairs, D)))
        return lambda: fastloss.triplet_margin_value_and_grad(a, p, q, out=out), 0
    if case == "contrastive_pairwise":
        x = np.random.default_rng(0).standard_normal((rows, D), dtype=np.float32)
        labels = np.arange(rows) % 7
        out = touched((rows, D))
        return lambda: fastloss.contrastive_pairwise_value_and_grad(x, labels, out=out), 0
    if case == "info_nce":
        rng = np.random.default_rng(0)
        q, k = (rng.standard_normal((rows, D), dtype=np.float32) for _ in range(2))
        out = (touched((rows, D)), touched((rows, D)))
        return lambda: fastloss.info_nce_value_and_grad(q, k, out=out), 0
    raise SystemExit(f"unknown case {case!r}")


warm, _ = case_call(16)
warm()
call, returned = case_call(1)
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS")
result = call()
if c_malloc:  # the deliberate breakage: a C scratch of this size, touched, then freed
    block = libc.malloc(ctypes.c_size_t(c_malloc))
    ctypes.memset(block, 1, c_malloc)
    libc.free(ctypes.c_void_p(block))
peak = status("VmHWM")
print(json.dumps({"extra": peak - before, "returned": returned}))
"""


def extra_resident_bytes(case, c_malloc=0):
    """(bytes the call touched beyond those resident before it, bytes of the arrays it
    returns) in a fresh interpreter."""
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(fastloss.__file__)))
    report = run_child(RSS_CHILD, (case, c_malloc), cwd=package_parent, timeout=600)
    return report["extra"], report["returned"]


#: (case, bound on the extra resident bytes besides the returned arrays, what it rules out)
RSS_CASES = [
    # N x C float32 logits = 256 MiB: the kernel's scratch is O(threads x C + N)
    ("cross_entropy in place", SLACK, "an N x C scratch"),
    ("cross_entropy out", SLACK, "an N x C scratch"),
    ("cross_entropy none", SLACK, "an N x C scratch"),
    ("cross_entropy allocating", SLACK, "an N x C scratch besides the gradient"),
    ("cross_entropy forward", SLACK, "an N x C scratch in the forward"),
    ("cross_entropy grad from lse", SLACK, "an N x C scratch in the backward"),
    # 2**25 float32 = 128 MiB per array: block partials only
    ("mse", SLACK, "an n-sized scratch"),
    ("huber", SLACK, "an n-sized scratch (or the broadcast weight materialised)"),
    ("bce_with_logits", SLACK, "an n-sized scratch (or pos_weight materialised)"),
    ("mse allocating", SLACK, "an n-sized scratch besides the gradient"),
    # a float32 sum that cancels is redone from the float32 arrays, not float64 copies
    ("mse cancelling in place", SLACK, "a float64 copy of the inputs for the redo"),
    ("mse cancelling out", SLACK, "a float64 copy of the inputs for the redo"),
    # 2**18 pairs of 64 float32 = 64 MiB per input: O(N) per-pair values
    ("contrastive", SLACK + 32 * (1 << 18), "an N x D scratch"),
    ("triplet_margin", SLACK + 48 * (1 << 18), "an N x D scratch"),
    # all pairs of 2048 rows: the N x N matrices docs/memory.rst names (distances or
    # similarities, gradient coefficients: 32 MiB each in float64), not more
    ("contrastive_pairwise", SLACK + 3 * 2048 * 2048 * 8, "more N x N matrices"),
    ("info_nce", SLACK + 3 * 2048 * 2048 * 8, "more N x N matrices"),
]


@needs_proc
@needs_plain_malloc
@pytest.mark.parametrize("case, bound, rules_out", RSS_CASES, ids=[c[0] for c in RSS_CASES])
def test_peak_resident_memory_of_a_call(case, bound, rules_out):
    extra, returned = extra_resident_bytes(case)
    assert extra - returned <= bound, (
        f"{case}: the call touched {extra / MiB:.1f} MiB, {returned / MiB:.1f} MiB of it "
        f"returned; {(extra - returned) / MiB:.1f} MiB of scratch is above the bound of "
        f"{bound / MiB:.1f} MiB ({rules_out}?)")


@needs_proc
@needs_plain_malloc
def test_the_measurement_sees_a_c_malloc():
    # the deliberate breakage: a C scratch of a tenth of the logits, malloc'ed and written
    # during the call (tracemalloc cannot see it), fails the bound of the in-place call
    logits_bytes = 2048 * 32768 * 4
    extra, returned = extra_resident_bytes("cross_entropy in place", c_malloc=logits_bytes // 10)
    assert extra - returned > SLACK, f"a 25.6 MiB C malloc was not seen: {extra / MiB:.1f} MiB"


@pytest.mark.parametrize("wrt", ["x1", ("x1", "x2")])
def test_a_freed_elementwise_gradient_serves_the_next_one(wrt):
    # As cross-entropy's (tests/test_torch_cross_entropy.py): the gradients of the
    # pointwise losses (8 MiB here, every input's) come from the allocator of large
    # outputs, so the block of the last one freed is reused by the next call of its size.
    fastloss.release_memory()
    rng = np.random.default_rng(0)
    x1, x2 = rng.standard_normal((2, 1 << 21)).astype(np.float32)
    target = np.sign(rng.standard_normal(1 << 21)).astype(np.float32)

    def grads():
        result = fastloss.margin_ranking_grad(x1, x2, target, wrt=wrt)
        return result if isinstance(result, tuple) else (result,)

    def owner(array):  # the object that owns a view's memory
        while isinstance(array, np.ndarray):
            array = array.base
        return array

    first = grads()
    assert not any(owner(grad).reused for grad in first)
    expected = [grad.copy() for grad in first]
    pointers = {grad.__array_interface__["data"][0] for grad in first}
    del first
    second = grads()
    # the block of the last one freed is kept, and the next call's first request of its
    # size (the first gradient it allocates) takes it
    assert second[0].__array_interface__["data"][0] in pointers and owner(second[0]).reused
    assert all(np.array_equal(grad, value) for grad, value in zip(second, expected))
    del second
    assert fastloss.release_memory() >= x1.nbytes
