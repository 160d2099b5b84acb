"""Hardening: arrays above 2**31 elements, and the GIL released inside the kernels."""
import threading

import numpy as np
import pytest

import fastloss
from fastloss import reference

from loss_specs import CONTRACT, assert_close_contract, bitwise_equal


@pytest.mark.slow
def test_cross_entropy_over_more_than_two_to_the_31_elements():
    # 32769 x 65536 float32 logits: 2**31 + 2**16 elements (8.6 GB).  The last row starts
    # past element 2**31, so 32-bit index arithmetic anywhere would read or write the
    # wrong place.  The gradient goes in place, so the test needs no second copy.
    n_rows, n_classes = 32769, 65536
    assert n_rows * n_classes > 2**31
    rng = np.random.default_rng(2031)
    logits = np.zeros((n_rows, n_classes), dtype=np.float32)  # zero pages: cheap until written
    last_row = (rng.standard_normal(n_classes) * 4).astype(np.float32)
    logits[-1] = last_row
    target = np.arange(n_rows) % n_classes
    target[-1] = 65535

    loss, grad = fastloss.cross_entropy_value_and_grad(logits, target, reduction="none",
                                                       out=logits)
    assert grad is logits
    ref_loss, ref_grad = reference.cross_entropy_value_and_grad(
        last_row[None, :].astype(np.float64), target[-1:], reduction="none")
    assert_close_contract(loss[-1:].astype(np.float64), ref_loss, np.float32, "loss")
    assert_close_contract(grad[-1:].astype(np.float64), ref_grad, np.float32, "grad")
    # an all-zero row: loss log C, gradient 1/C except at the target
    assert loss[0] == pytest.approx(np.log(n_classes), rel=2e-6)
    assert grad[0, 1] == pytest.approx(1.0 / n_classes, rel=2e-6)
    assert grad[0, 0] == pytest.approx(1.0 / n_classes - 1.0, rel=2e-6)


def test_the_gil_is_released_inside_the_kernel():
    # One thread starts a long single-threaded kernel; another, started once the first
    # is on its way, makes a short call.  With the GIL released during the kernel the
    # short call finishes first; with the GIL held it could not even start until the
    # long call had returned (and its thread had recorded that).  No timing thresholds:
    # only the order of events, with a ~1000x gap between the two calls' lengths.
    rng = np.random.default_rng(0)
    big = rng.standard_normal((2048, 50000), dtype=np.float32)
    big_target = rng.integers(0, 50000, size=2048)
    small = rng.standard_normal((4, 100), dtype=np.float32)
    small_target = np.zeros(4, dtype=np.int64)
    order = []
    entering = threading.Event()

    def long_call():
        entering.set()
        fastloss.cross_entropy_value_and_grad(big, big_target, num_threads=1)
        order.append("long")

    def short_call():
        entering.wait()
        fastloss.cross_entropy(small, small_target, num_threads=1)
        order.append("short")

    threads = [threading.Thread(target=long_call), threading.Thread(target=short_call)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert order == ["short", "long"]


# ----------------------------------------------------------------------------------------
# Regression tests for what the fuzzer (tests/test_fuzz.py) found
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_pairwise_distance_gradient_with_no_pairs_is_zero(dtype):
    x = np.empty((0, 3), dtype=dtype)
    y = np.full((2, 3), 7.0, dtype=dtype)
    _, (grad_x, grad_y) = fastloss.pairwise_distance_value_and_grad(x, y)
    assert grad_x.shape == (0, 3) and grad_y.shape == (2, 3)
    assert np.all(grad_y == 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_cross_entropy_one_class_with_smoothing_has_zero_gradient(dtype):
    # alpha p - gamma u - beta cancelled to -2.8e-17 instead of 0 (grad from lse)
    logits = np.array([[0.37719065], [-2.5]], dtype=dtype)
    target = np.array([0, 0])
    _, lse = fastloss.cross_entropy(logits, target, label_smoothing=0.1, return_lse=True)
    for grad in (fastloss.cross_entropy_grad(logits, target, label_smoothing=0.1, lse=lse),
                 fastloss.cross_entropy_grad(logits, target, label_smoothing=0.1)):
        assert np.all(grad == 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_cross_entropy_gradient_from_lse_at_a_confident_target(dtype):
    # p_t = 1 - 1.27e-4: p_t - 1 from a rounded p_t lost 3 digits in float32
    logits = np.array([3.0806658, -5.889606], dtype=dtype)
    target = np.array(0)
    _, lse = fastloss.cross_entropy(logits, target, return_lse=True)
    grad = fastloss.cross_entropy_grad(logits, target, lse=lse)
    expected = reference.cross_entropy_grad(logits.astype(np.float64), target)
    assert_close_contract(grad.astype(np.float64), expected, dtype, "grad")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_cross_entropy_z_loss_gradient_of_a_single_class(dtype):
    # the cross-entropy part is exactly 0 and the z part small: they were summed into
    # one factor whose rounding swamped the z part
    logits = np.array([[0.54377873], [-0.43033987], [0.29605791]], dtype=dtype)
    target = np.ones((3, 1), dtype=dtype)
    _, grad = fastloss.cross_entropy_value_and_grad(logits, target, z_loss=1e-4)
    expected = reference.cross_entropy_grad(logits.astype(np.float64), target, z_loss=1e-4)
    assert_close_contract(grad.astype(np.float64), expected, dtype, "grad")


# ----------------------------------------------------------------------------------------
# Regression tests from the review of the Cython checks: out= sharing memory with an input
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_cross_entropy_out_over_the_class_indices(dtype):
    # The int64 class indices laid over the start of out=: the kernel wrote gradients
    # over indices that later rows then read (a segfault, reading logits[2**62]).  Now
    # the gradient goes to a buffer of its own and is copied into out.
    rng = np.random.default_rng(31)
    n_rows, n_classes = 64, 8
    logits = rng.standard_normal((n_rows, n_classes)).astype(dtype)
    out = np.zeros((n_rows, n_classes), dtype=dtype)
    target = out.reshape(-1).view(np.int64)[:n_rows]
    for num_threads in (1, 3):
        target[:] = rng.integers(0, n_classes, n_rows)
        expected = fastloss.cross_entropy_grad(logits, target.copy(), reduction="sum")
        grad = fastloss.cross_entropy_grad(logits, target, reduction="sum", out=out,
                                           num_threads=num_threads)
        assert grad is out
        assert bitwise_equal(grad, expected)


def _ce_out_sharing_memory(case, rng, dtype):
    """(args, options, out) of a cross-entropy gradient whose out= shares memory with an
    input other than the logits, and the same call's (args, options) with copies."""
    n_rows, n_classes = 40, 6
    logits = rng.standard_normal((n_rows, n_classes)).astype(dtype)
    target = rng.integers(0, n_classes, n_rows)
    if case == "soft target is the logits, in place":
        logits = rng.dirichlet(np.ones(n_classes), n_rows).astype(dtype)
        return (logits, logits), {}, logits, ((logits.copy(), logits.copy()), {})
    if case == "weight within the logits, in place":
        logits[0] = np.abs(logits[0]) + 0.5
        options = {"weight": logits[0], "label_smoothing": 0.1}
        return ((logits, target), options, logits,
                ((logits.copy(), target), {"weight": logits[0].copy(), "label_smoothing": 0.1}))
    out = np.zeros((n_rows, n_classes), dtype=np.float64)
    logits = logits.astype(np.float64)
    shared = out.reshape(-1)[:n_rows]  # float64, contiguous: passed through without a copy
    if case == "grad_output within out":
        shared[:] = np.linspace(-1.0, 2.0, n_rows)
        return ((logits, target, shared), {"reduction": "none"}, out,
                ((logits, target, shared.copy()), {"reduction": "none"}))
    # "lse within out": the gradient from a given log-sum-exp
    _, lse = fastloss.cross_entropy(logits, target, return_lse=True)
    shared[:] = lse
    return (logits, target), {"lse": shared}, out, ((logits, target), {"lse": lse})


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", ["soft target is the logits, in place",
                                  "weight within the logits, in place",
                                  "grad_output within out", "lse within out"])
def test_cross_entropy_out_sharing_memory_with_an_input(case, dtype):
    # Each was a silent wrong answer: the kernel overwrote an input that later rows read.
    rng = np.random.default_rng(32)
    args, options, out, (clean_args, clean_options) = _ce_out_sharing_memory(case, rng, dtype)
    expected = fastloss.cross_entropy_grad(*clean_args, **clean_options)
    grad = fastloss.cross_entropy_grad(*args, out=out, **options)
    assert grad is out
    assert bitwise_equal(grad, expected)


def test_the_cython_wrappers_refuse_none_and_compute_aside_of_overlapping_outputs():
    # The Cython entry point is the whole call below the public signature: it refuses
    # None rather than read a dtype from it, and an out= that overlaps an input other
    # than exactly in place (the class indices, grad_output, lse) is computed aside and
    # copied, never written while the kernel still reads it.
    from fastloss import _kernels

    logits = np.linspace(-1.0, 1.0, 8).reshape(4, 2)
    target = np.zeros(4, dtype=np.int64)
    with pytest.raises(TypeError, match="logits"):
        _kernels.ce_call(_kernels.CE_FORWARD, None, target, None, -100, "mean", 0.0, 0.0,
                         None, 1)
    with pytest.raises(TypeError, match="target"):
        _kernels.ce_call(_kernels.CE_FORWARD, logits, None, None, -100, "mean", 0.0, 0.0,
                         None, 1)
    with pytest.raises(TypeError, match="pred"):
        _kernels.ew_run("forward", "mse", None, np.zeros(8), None, None, None, None, None,
                        0.0, "mean", 1)
    _, lse, _ = _kernels.ce_call(_kernels.CE_FORWARD, logits, target, None, -100, "none",
                                 0.0, 0.0, None, 1, want_lse=True)
    upstream = np.linspace(0.5, 2.0, 4)
    expected = reference.cross_entropy_grad(logits, target, upstream, reduction="none")
    for mode, use_lse in ((_kernels.CE_VALUE_AND_GRAD, False), (_kernels.CE_GRAD, True)):
        for shared in ("target", "grad_output", "lse"):
            if shared == "lse" and not use_lse:
                continue
            out = np.zeros((4, 2))
            arguments = {"target": target.copy(), "grad_output": upstream.copy(),
                         "lse": lse.copy()}
            view = out.reshape(-1)[:4]
            view[...] = (arguments[shared] if shared != "target"
                         else arguments[shared].view(np.float64))
            arguments[shared] = view if shared != "target" else view.view(np.int64)
            _, _, grad = _kernels.ce_call(
                mode, logits, arguments["target"], None, -100, "none", 0.0, 0.0, None, 1,
                arguments["grad_output"], arguments["lse"] if use_lse else None, out)
            assert grad is out
            assert_close_contract(grad, expected, np.float64, "grad")
    # in place over the logits is allowed
    work = logits.copy()
    _kernels.ce_call(_kernels.CE_GRAD, work, target, None, -100, "none", 0.0, 0.0, None, 1,
                     upstream, lse, work)
    assert_close_contract(work, expected, np.float64, "grad")


def test_the_distance_wrappers_refuse_none_and_arrays_of_the_wrong_rank():
    # Found in review: dist_sparse_product and dist_finish_rows read shape[0] of a 0-d
    # array (a NULL shape) before checking its rank; typed arguments accepted None.
    from fastloss import _kernels

    rows = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="coef: expected a 2-d array"):
        _kernels.dist_sparse_product(np.zeros((2, 1), np.uint64), np.array(1.0, np.float32),
                                     rows, rows.copy(), 1)
    with pytest.raises(ValueError, match="other: expected a 2-d array"):
        _kernels.dist_finish_rows(rows, np.zeros(4), np.ones(2), rows, rows.copy(), None, None,
                                  False, rows, np.array(1.0, np.float32), np.ones(2),
                                  "euclidean", 0.0, 1)
    with pytest.raises(TypeError):
        _kernels.dist_sparse_product(np.zeros((2, 1), np.uint64), None, rows, rows.copy(), 1)
    with pytest.raises(TypeError):
        _kernels.dist_transpose(None, np.zeros((3, 2)), False, 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pair_loss_out_sharing_memory_with_label_or_grad_output(dtype, rng):
    # Found in review: out= that holds the label or grad_output of contrastive or
    # triplet_margin was written while later rows still read them.  Such a call is
    # computed aside and copied, and gives what the same call on copies gives.
    x1, x2 = rng.random((2, 6, 3)).astype(dtype)
    out = (np.zeros((6, 3), dtype), np.zeros((6, 3), dtype))
    label = out[0].reshape(-1)[:6]  # a float64 label is used as it is, not copied
    label[:] = [0, 1, 0, 1, 1, 0]
    want = fastloss.contrastive_grad(x1, x2, label.copy())
    got = fastloss.contrastive_grad(x1, x2, label, out=out)
    assert all(bitwise_equal(a, b) for a, b in zip(got, want))

    out = (np.zeros((6, 3), dtype), np.zeros((6, 3), dtype))
    upstream = out[1].reshape(-1)[6:12]
    upstream[:] = np.arange(1, 7)
    labels = np.array([0, 1, 0, 1, 1, 0.0])
    want = fastloss.contrastive_grad(x1, x2, labels, upstream.copy(), reduction="none")
    got = fastloss.contrastive_grad(x1, x2, labels, upstream, reduction="none", out=out)
    assert all(bitwise_equal(a, b) for a, b in zip(got, want))

    anchor, positive, negative = rng.random((3, 6, 3)).astype(dtype)
    out = tuple(np.zeros((6, 3), dtype) for _ in range(3))
    upstream = out[2].reshape(-1)[3:9]
    upstream[:] = np.arange(1, 7)
    want = fastloss.triplet_margin_grad(anchor, positive, negative, upstream.copy(),
                                        reduction="none")
    got = fastloss.triplet_margin_grad(anchor, positive, negative, upstream, reduction="none",
                                       out=out)
    assert all(bitwise_equal(a, b) for a, b in zip(got, want))
    assert_close_contract(got[0], reference.triplet_margin_grad(
        anchor, positive, negative, np.arange(1, 7.0), reduction="none")[0], dtype, "grad")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cosine_gradient_of_rows_in_one_direction_is_exactly_zero(dtype):
    # Found by the long fuzz run: two rows of D = 1 in the same direction have cosine
    # distance 0 and, with no tangent direction, a gradient of exactly 0.  The pull of a
    # direct pair (and the row-pair contrastive gradient) scaled the rows by 1 / |x| (a
    # product), which missed x / |x| by an ulp and left 2.7e-16 where the reference has 0.
    x = np.array([[0.34558418], [0.82161814]], dtype)
    _, grad = fastloss.pairwise_distance_value_and_grad(x, metric="cosine")
    assert np.all(grad == 0)
    _, grad = fastloss.contrastive_pairwise_value_and_grad(x, np.array([2, 1]), metric="cosine")
    assert np.all(grad == 0)
    assert np.all(reference.pairwise_distance_grad(x, metric="cosine") == 0)
    # the row-pair contrastive loss likewise (one pair in one direction, one opposite)
    x1 = np.array([[0.12573022], [-0.13210486]], dtype)
    x2 = np.array([[0.34558418], [0.82161814]], dtype)
    _, grads = fastloss.contrastive_value_and_grad(x1, x2, np.array([1, 1]), metric="cosine")
    assert all(np.all(grad == 0) for grad in grads)


# Found by the long fuzz run: info_nce gradients whose backward-product terms cancel.
# Duplicated keys make G's entries for them (about 0.5 each) cancel to the probability of
# a far negative (1e-12); a zero key row is scaled by 1 / eps = 1e12 in the
# normalisation's backward; a query equal to its key leaves a gradient along the query,
# which the normalisation's backward removes down to rounding (exactly 0 in exact
# arithmetic).  float32 products left 3e-7 and 0 where the reference has 6e-18, 4.7e-11
# and 1.06e-5; such rows are recomputed in float64, and where the rows of G sum to zero
# (the query side, not symmetric) without the cancelling terms.
INFO_NCE_CANCELLING = [
    ([[0.18905339, -0.5227485], [0.18905339, -0.5227485]],
     [[0.18905339, -0.5227485], [0.0, 0.0]]),
    ([[0.12573022, -0.13210486], [0.64042264, 0.10490011], [-0.5356694, 0.36159506]],
     [[0.12573022, -0.13210486], [0.12573022, -0.13210486], [-0.5356694, 0.36159506]]),
    ([[0.12573022], [-0.13210486], [0.64042264], [0.0]],
     [[0.12573022], [-0.13210486], [0.64042264], [0.0]]),
]


def info_nce_products_bound(query, key, dtype, temperature):
    """DESIGN.md's bound for losses that multiply matrices: the rounding of the products
    (the standard dot-product bound, gamma_n = n u, over the inner lengths M and D, with
    the unit roundoff of the products' precision) carried through the normalisation's
    backward (1 / max(|x|, eps)).  Where the terms cancel, no evaluation order in that
    precision does better, so this is what the contract allows beyond the float32 one."""
    q_unit, q_norm = reference._normalize(np.asarray(query, np.float64))
    k_unit, k_norm = reference._normalize(np.asarray(key, np.float64))
    logits = q_unit @ k_unit.T / temperature
    target = np.arange(q_unit.shape[0])
    grad_logits = np.abs(reference.cross_entropy_grad(logits, target, 1.0 / target.size,
                                                      reduction="none"))
    unit_roundoff = 2.0**-24 if dtype == np.float32 else 2.0**-53
    gamma = (logits.shape[1] + q_unit.shape[1] + 4) * unit_roundoff
    bounds = []
    for weights, other, norm in ((grad_logits, np.abs(k_unit), q_norm),
                                 (grad_logits.T, np.abs(q_unit), k_norm)):
        terms = weights @ other / temperature
        row_terms = np.max(terms, axis=1, keepdims=True)
        bounds.append(2.0 * gamma * row_terms / np.maximum(norm, 1e-12)[:, None])
    return bounds


@pytest.mark.parametrize("query, key", INFO_NCE_CANCELLING)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_info_nce_gradient_where_the_backward_product_cancels(query, key, dtype):
    query, key = np.array(query, dtype), np.array(key, dtype)
    loss, grads = fastloss.info_nce_value_and_grad(query, key, temperature=0.05)
    ref_loss, ref_grads = reference.info_nce_value_and_grad(query, key, temperature=0.05)
    assert_close_contract(loss, ref_loss, dtype, "loss")
    tolerance = CONTRACT[(np.dtype(dtype), "grad")]
    for grad, ref, products in zip(grads, ref_grads,
                                   info_nce_products_bound(query, key, dtype, 0.05)):
        error = np.abs(grad - ref)
        bound = (tolerance.rtol * np.abs(ref) + tolerance.floor * np.max(np.abs(ref))
                 + products)
        assert np.all(error <= bound), (grad, ref, error, bound)
        # and the rows whose terms do not cancel keep the contract itself
        clean = np.all(products <= tolerance.rtol * np.abs(ref), axis=1)
        assert_close_contract(grad[clean], ref[clean], dtype, "grad")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_triplet_gradient_of_cancelling_unit_slopes_is_exactly_zero(dtype):
    # Found by the long fuzz run: at D = 1 the anchor's slopes toward the positive and the
    # negative are both +1 and cancel exactly; v * (1 / |v|) missed v / |v| by an ulp
    # and left -5.6e-17 where the reference has 0.
    anchor = np.array([[0.34558418], [0.82161814]], dtype)
    positive = np.array([[0.12573022], [-0.13210486]], dtype)
    _, grads = fastloss.triplet_margin_value_and_grad(anchor, positive, anchor.copy())
    ref_grads = reference.triplet_margin_grad(anchor, positive, anchor.copy())
    assert np.all(ref_grads[0] == 0) and np.all(grads[0] == 0)
    for grad, ref in zip(grads, ref_grads):
        assert_close_contract(grad, ref, dtype, "grad")


def misaligned(array):
    """A copy of `array` whose data starts one byte past an element boundary."""
    array = np.asarray(array)
    raw = np.zeros(array.nbytes + 1, np.uint8)
    view = np.ndarray(array.shape, array.dtype, buffer=raw, offset=1)
    view[...] = array
    assert not view.flags.aligned or array.itemsize == 1
    return view


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_misaligned_inputs_are_copied_never_read_misaligned(dtype):
    # Found by UBSan: a misaligned int64 target went to the kernel as it was
    # (np.ascontiguousarray keeps a contiguous array's misalignment). Every argument the
    # kernels read, misaligned, gives the aligned call's result bit for bit.
    rng = np.random.default_rng(7)
    logits = rng.standard_normal((9, 10)).astype(dtype)
    target = rng.integers(0, 10, 9)
    weight = rng.uniform(0.5, 1.5, 10).astype(dtype)
    upstream = rng.uniform(0.5, 1.5, 9)
    _, lse = fastloss.cross_entropy(logits, target, return_lse=True)
    expected = fastloss.cross_entropy_grad(logits, target, upstream, weight=weight,
                                           reduction="none", lse=lse)
    got = fastloss.cross_entropy_grad(misaligned(logits), misaligned(target),
                                      misaligned(upstream), weight=misaligned(weight),
                                      reduction="none", lse=misaligned(lse))
    assert bitwise_equal(got, expected)
    pred, observed = rng.standard_normal((2, 64)).astype(dtype)
    element_weight = rng.uniform(0.5, 1.5, 64).astype(dtype)
    for name in ("mse", "huber", "bce_with_logits"):
        function = getattr(fastloss, f"{name}_value_and_grad")
        probability = 1 / (1 + np.exp(-observed)) if name == "bce_with_logits" else observed
        expected = function(pred, probability, weight=element_weight)
        got = function(misaligned(pred), misaligned(probability),
                       weight=misaligned(element_weight))
        assert bitwise_equal(got[0], expected[0]) and bitwise_equal(got[1], expected[1])
    x = rng.standard_normal((12, 5)).astype(dtype)
    labels = rng.integers(0, 3, 12)
    expected = fastloss.contrastive_pairwise_value_and_grad(x, labels)
    got = fastloss.contrastive_pairwise_value_and_grad(misaligned(x), misaligned(labels))
    assert bitwise_equal(got[0], expected[0]) and bitwise_equal(got[1], expected[1])
    # (found by hunt13: pairwise_distance_grad refused a misaligned float64
    # grad_output, "grad_output: expected an aligned array in native byte order")
    y = rng.standard_normal((7, 5)).astype(dtype)
    upstream = rng.uniform(0.5, 1.5, (12, 7))
    expected = fastloss.pairwise_distance_value_and_grad(x, y, upstream)
    got = fastloss.pairwise_distance_value_and_grad(x, y, misaligned(upstream))
    assert bitwise_equal(got[0], expected[0])
    assert bitwise_equal(got[1][0], expected[1][0]) and bitwise_equal(got[1][1], expected[1][1])
    got = fastloss.pairwise_distance_grad(x, y, misaligned(upstream))
    assert bitwise_equal(got[0], expected[1][0]) and bitwise_equal(got[1], expected[1][1])
    pair_label = rng.integers(0, 2, 6).astype(dtype)
    expected = fastloss.contrastive_value_and_grad(x[:6], x[6:], pair_label)
    got = fastloss.contrastive_value_and_grad(x[:6], x[6:], misaligned(pair_label))
    assert bitwise_equal(got[0], expected[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_misaligned_out_receives_the_plain_gradient(dtype):
    # Found by hunt10: a misaligned out= (a view at an odd byte offset) made the box and
    # sequence losses raise naming their internal buffers ("grad1: expected an aligned
    # array"), the elementwise ones raise, and cross-entropy and the vocabulary losses
    # hand it to the kernels as it was (misaligned stores). It is a valid buffer: the
    # gradient is computed aside and copied in, as for any layout the kernels cannot write.
    rng = np.random.default_rng(8)
    logits, teacher = rng.standard_normal((2, 6, 9)).astype(dtype)
    target = rng.integers(0, 9, 6)
    boxes1 = np.concatenate([rng.uniform(0, 4, (6, 2)), rng.uniform(5, 9, (6, 2))], 1)
    boxes2 = np.concatenate([rng.uniform(0, 4, (6, 2)), rng.uniform(5, 9, (6, 2))], 1)
    mask = rng.uniform(size=(6, 9)) < 0.6
    calls = [
        (fastloss.cross_entropy_grad, (logits, target), {}),
        (fastloss.cross_entropy_value_and_grad, (logits, target), {}),
        (fastloss.token_log_probs_grad, (logits, target), {}),
        (fastloss.distill_kl_grad, (logits, teacher), {}),
        (fastloss.jsd_value_and_grad, (logits, teacher), {"wrt": "teacher_logits"}),
        (fastloss.sequence_log_probs_grad, (logits, mask), {}),
        (fastloss.sequence_log_probs_value_and_grad, (logits, mask), {"average": True}),
        (fastloss.mse_grad, (logits, teacher), {}),
        (fastloss.bce_with_logits_value_and_grad, (logits, 1 / (1 + np.exp(-teacher))), {}),
        (fastloss.giou_loss_grad, (boxes1.astype(dtype), boxes2.astype(dtype)), {}),
        (fastloss.ciou_loss_value_and_grad, (boxes1.astype(dtype), boxes2.astype(dtype)),
         {"wrt": "boxes2"}),
    ]
    for function, args, kwargs in calls:
        expected = function(*args, **kwargs)
        shape_of = args[1] if kwargs.get("wrt") in ("teacher_logits", "boxes2") else args[0]
        out = misaligned(np.zeros_like(shape_of))
        got = function(*args, out=out, **kwargs)
        fused = isinstance(got, tuple)
        grad, expected_grad = (got[1], expected[1]) if fused else (got, expected)
        assert grad is out, function.__name__
        assert bitwise_equal(out, expected_grad), function.__name__
        if fused:
            assert bitwise_equal(got[0], expected[0]), function.__name__


@pytest.mark.parametrize("threads", [1, 2])
def test_out_with_overlapping_rows_gets_the_rows_one_after_another(threads):
    # Found by hunt10: a writeable out= whose rows overlap (as_strided with a zero row
    # stride) passed the checks, and the kernels' threads wrote the same memory at once.
    # Such a buffer is written as NumPy writes it (np.copyto of the gradient: the rows one
    # after another, the last one's values left), whatever the thread count.
    rng = np.random.default_rng(9)
    logits, teacher = rng.standard_normal((2, 64, 33))
    target = rng.integers(0, 33, 64)
    x1, x2 = rng.standard_normal((2, 64, 33))
    calls = [
        (fastloss.cross_entropy_grad, (logits, target), {}),
        (fastloss.cross_entropy_value_and_grad, (logits, target), {}),
        (fastloss.token_log_probs_grad, (logits, target), {}),
        (fastloss.distill_kl_grad, (logits, teacher), {}),
        (fastloss.jsd_value_and_grad, (logits, teacher), {}),
        (fastloss.contrastive_pairwise_grad, (x1, target % 4), {}),
    ]
    for function, args, kwargs in calls:
        expected = function(*args, num_threads=threads, **kwargs)
        expected_grad = expected[1] if isinstance(expected, tuple) else expected
        memory = np.zeros(args[0].shape[1])
        out = np.lib.stride_tricks.as_strided(memory, args[0].shape, (0, 8), writeable=True)
        got = function(*args, out=out, num_threads=threads, **kwargs)
        grad = got[1] if isinstance(got, tuple) else got
        assert grad is out, function.__name__
        assert bitwise_equal(memory, expected_grad[-1]), function.__name__
    # (the race above shows only now and then, so the rule itself is checked too: such a
    # buffer is never handed to the kernels as rows)
    from fastloss._validation import rows_view
    memory = np.zeros(33)
    out = np.lib.stride_tricks.as_strided(memory, (64, 33), (0, 8), writeable=True)
    assert rows_view(out, 33) is not None  # readable as rows (a broadcast input is)
    assert rows_view(out, 33, written=True) is None
    short = np.lib.stride_tricks.as_strided(np.zeros(96), (64, 33), (8, 8), writeable=True)
    assert rows_view(short, 33, written=True) is None
    assert rows_view(np.zeros((64, 33)), 33, written=True) is not None


def test_one_out_buffer_for_two_gradients_is_refused():
    # Found by hunt10: out=(buffer, buffer) with two names in wrt returned the second
    # gradient twice (elementwise losses), or raised naming an internal buffer (box
    # losses: "grad1: overlaps another argument"). Refused, naming out.
    rng = np.random.default_rng(9)
    pred, target = rng.standard_normal((2, 4, 5))
    boxes1 = np.concatenate([rng.uniform(0, 4, (4, 2)), rng.uniform(5, 9, (4, 2))], 1)
    boxes2 = np.concatenate([rng.uniform(0, 4, (4, 2)), rng.uniform(5, 9, (4, 2))], 1)
    for function, args, wrt in ((fastloss.mse_grad, (pred, target), ("pred", "target")),
                                (fastloss.giou_loss_grad, (boxes1, boxes2),
                                 ("boxes1", "boxes2"))):
        buffer = np.empty_like(args[0])
        with pytest.raises(ValueError, match="^out: .*share memory"):
            function(*args, wrt=wrt, out=(buffer, buffer))
        outs = (np.empty_like(args[0]), np.empty_like(args[1]))
        got = function(*args, wrt=wrt, out=outs)
        expected = function(*args, wrt=wrt)
        assert got[0] is outs[0] and got[1] is outs[1]
        assert bitwise_equal(got[0], expected[0]) and bitwise_equal(got[1], expected[1])
