"""linear_cross_entropy: cross_entropy(hidden @ classifier.T + bias) by blocks of rows.

Parity with the float64 reference for every option (float64 at the plain contract; float32
within the contract plus the products' rounding, and never more than twice the error of
torch's own float32 computation), finite differences, blocks of any height, threads, bad
input, the torch adapter against ``F.linear_cross_entropy`` (and ``F.linear`` +
``F.cross_entropy`` for the options torch's function lacks), and the scratch's peak
resident memory, which must not grow with V.
"""
import importlib

import os

import numpy as np
import pytest

import fastloss
from fastloss import _contract, reference

from contract_floors import assert_close_at_scale
from loss_specs import assert_close_contract, assert_loss_type, bitwise_equal
from peak_rss import CHILD_HEAD, CHILD_TAIL, needs_plain_malloc, needs_proc, run_child

REDUCTIONS = ("mean", "sum", "none")
# every option of cross_entropy, alone and together
OPTIONS = {
    "plain": {},
    "ignore": {"ignore_index": 2},
    "weight": {"weight": "weight"},
    "smoothing": {"label_smoothing": 0.15},
    "z_loss": {"z_loss": 1e-2},
    "softcap": {"softcap": 4.0},
    "weight-z_loss": {"weight": "weight", "z_loss": 3e-2},
    "all": {"weight": "weight", "ignore_index": 1, "label_smoothing": 0.2, "z_loss": 1e-3,
            "softcap": 5.0},
    "soft": {"soft": True},
    "soft-all": {"soft": True, "weight": "weight", "label_smoothing": 0.1, "z_loss": 1e-3,
                 "softcap": 5.0},
}


def make_inputs(rng, batch, n_features, n_classes, dtype, params, bias=True):
    """hidden (batch..., H), classifier (V, H), target, and the options of a case; the
    logits span a few units so that the softmax is neither flat nor one-hot."""
    params = dict(params)
    hidden = rng.standard_normal(batch + (n_features,))
    classifier = rng.standard_normal((n_classes, n_features)) * (2.0 / np.sqrt(max(n_features, 1)))
    options = {}
    if bias:
        options["bias"] = rng.standard_normal(n_classes).astype(dtype)
    if params.pop("soft", False):
        target = rng.dirichlet(np.full(n_classes, 0.5), size=batch).astype(dtype)
    else:
        target = rng.integers(0, n_classes, batch)
        if "ignore_index" in params:
            target.reshape(-1)[::3] = params["ignore_index"]
    if params.get("weight") == "weight":
        params["weight"] = rng.uniform(0.25, 2.0, n_classes).astype(dtype)
    options.update(params)
    return hidden.astype(dtype), classifier.astype(dtype), target, options


def upstream(rng, reduction, batch):
    return rng.uniform(0.5, 2.0, batch) if reduction == "none" else 1.7


def wide(*arrays):
    return [np.asarray(a, np.float64) if a is not None else None for a in arrays]


def reference_of(hidden, classifier, target, grad_output, options):
    options = dict(options)
    for key in ("bias", "weight"):
        if options.get(key) is not None:
            options[key] = np.asarray(options[key], np.float64)
    soft = np.asarray(target).dtype.kind == "f"
    target = np.asarray(target, np.float64) if soft else target
    return reference.linear_cross_entropy_value_and_grad(
        np.asarray(hidden, np.float64), np.asarray(classifier, np.float64), target,
        grad_output, **options)


# ----------------------------------------------------------------------------------------
# float64: the plain contract, every option, reduction, batch shape and block height
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", list(OPTIONS))
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("batch, block_rows", [((13,), None), ((13,), 4), ((3, 5), 2),
                                               ((), None), ((2, 1, 7), 1)],
                         ids=["rows", "blocks-of-4", "2d-batch", "one-row", "3d-batch"])
def test_float64_matches_the_reference(case, reduction, batch, block_rows):
    rng = np.random.default_rng([len(case), len(batch), block_rows or 0, len(reduction)])
    hidden, classifier, target, options = make_inputs(rng, batch, 6, 11, np.float64,
                                                      OPTIONS[case])
    grad_output = upstream(rng, reduction, batch)
    expected_loss, expected = reference_of(hidden, classifier, target, grad_output,
                                           dict(options, reduction=reduction))
    loss = fastloss.linear_cross_entropy(hidden, classifier, target, reduction=reduction,
                                         block_rows=block_rows, **options)
    grads = fastloss.linear_cross_entropy_grad(hidden, classifier, target, grad_output,
                                               reduction=reduction, block_rows=block_rows,
                                               **options)
    fused_loss, fused = fastloss.linear_cross_entropy_value_and_grad(
        hidden, classifier, target, grad_output, reduction=reduction, block_rows=block_rows,
        **options)
    assert_loss_type(loss, np.float64, reduction, batch)
    for value in (loss, fused_loss):
        assert_close_contract(value, expected_loss, np.float64, "loss")
    assert len(grads) == len(fused) == 3
    for grad, fused_grad, ref, given, name in zip(grads, fused, expected,
                                                  (hidden, classifier, options["bias"]),
                                                  ("hidden", "classifier", "bias")):
        assert grad.shape == given.shape and grad.dtype == given.dtype, name
        assert_close_contract(grad, ref, np.float64, "grad", what=f"d/d{name}")
        assert bitwise_equal(grad, fused_grad), name


def test_without_bias_two_gradients():
    rng = np.random.default_rng(2)
    hidden, classifier, target, options = make_inputs(rng, (9,), 5, 7, np.float64, {},
                                                      bias=False)
    grads = fastloss.linear_cross_entropy_grad(hidden, classifier, target)
    expected = reference.linear_cross_entropy_grad(hidden, classifier, target)
    assert len(grads) == len(expected) == 2
    for grad, ref in zip(grads, expected):
        assert_close_contract(grad, ref, np.float64, "grad")


@pytest.mark.parametrize("block_rows", [1, 2, 5, 64])
def test_any_block_height_gives_the_same_results(block_rows):
    """The mean's denominators are the whole batch's whatever the blocks (the z-loss and
    the weighted cross-entropy have different ones)."""
    rng = np.random.default_rng(block_rows)
    hidden, classifier, target, options = make_inputs(rng, (17,), 8, 9, np.float64,
                                                      OPTIONS["all"])
    whole = fastloss.linear_cross_entropy_value_and_grad(hidden, classifier, target,
                                                         block_rows=17, **options)
    blocks = fastloss.linear_cross_entropy_value_and_grad(hidden, classifier, target,
                                                          block_rows=block_rows, **options)
    assert_close_contract(blocks[0], whole[0], np.float64, "loss")
    for grad, ref in zip(blocks[1], whole[1]):
        assert_close_contract(grad, ref, np.float64, "grad")


LCE = importlib.import_module("fastloss.linear_cross_entropy")


@pytest.fixture(params=["blas", "tiles"])
def classifier_grad_path(request, monkeypatch):
    """The classifier's gradient accumulated by NumPy's BLAS through ctypes (where
    _BlasGemm finds it), or forced onto the tiles of np.matmul and their additions."""
    if request.param == "tiles":
        monkeypatch.setattr(LCE._BlasGemm, "_found",
                            {np.dtype(np.float32): None, np.dtype(np.float64): None})
    return request.param


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("block_rows", [16, 23, 70])
def test_classifier_grad_partials_in_the_hidden_grads_rows(dtype, block_rows,
                                                           classifier_grad_path):
    """The later blocks' partial products of the classifier's gradient go through the
    rows of the hidden's gradient not yet written (then overwritten by their own
    product): with out= arrays full of NaN, every result is the reference's, and the
    same as from one block (whose products go straight into the result). 70 rows, 300
    classes: blocks of 16 (the last 6 rows: a tile of its own), 18 and 70 rows; the
    tiles of classes are as tall as the rows left (54, 52, ... 16)."""
    rng = np.random.default_rng(block_rows)
    hidden, classifier, target, options = make_inputs(rng, (70,), 8, 300, dtype,
                                                      OPTIONS["all"])
    out = (np.full(hidden.shape, np.nan, dtype), np.full(classifier.shape, np.nan, dtype),
           np.full(300, np.nan, dtype))
    loss, grads = fastloss.linear_cross_entropy_value_and_grad(
        hidden, classifier, target, 0.7, block_rows=block_rows, out=out, **options)
    assert all(grad is array for grad, array in zip(grads, out))
    whole = fastloss.linear_cross_entropy_value_and_grad(hidden, classifier, target, 0.7,
                                                         block_rows=70, **options)
    ref_loss, ref_grads = reference_of(hidden, classifier, target, 0.7, options)
    for grad, one_block, ref in zip(grads, whole[1], ref_grads):
        assert np.isfinite(grad).all()
        assert_close_contract(grad, one_block, dtype, "grad")
        if dtype == np.float64:
            assert_close_contract(grad, ref, dtype, "grad")
    assert_close_contract(loss, whole[0], dtype, "loss")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("want", ["both", "classifier"])
def test_blas_accumulation_and_tiles_agree(dtype, want, monkeypatch):
    """The classifier's gradient summed over blocks by the BLAS (beta = 1, one call per
    block) and by np.matmul's tiles plus additions: the same values to the products'
    rounding, into out= arrays full of NaN, with and without the hidden's gradient (whose
    unwritten rows are the tiles' buffer), hidden rows of a stride of their own."""
    rng = np.random.default_rng(7)
    wide, classifier, target, options = make_inputs(rng, (53,), 24, 700, dtype,
                                                    OPTIONS["all"])
    hidden = wide[:, ::2]  # elements of stride 2: not the BLAS's, the tiles after all
    classifier = classifier[:, :12].copy()
    results = {}
    for path in ("blas", "tiles"):
        if path == "tiles":
            monkeypatch.setattr(LCE._BlasGemm, "_found",
                                {np.dtype(np.float32): None, np.dtype(np.float64): None})
        for rows in (hidden, np.ascontiguousarray(hidden)):
            out = (np.full(rows.shape, np.nan, dtype), np.full(classifier.shape, np.nan, dtype),
                   np.full(700, np.nan, dtype))
            if want == "both":
                loss, grads = LCE.linear_cross_entropy_value_and_grad(
                    rows, classifier, target, 0.3, block_rows=11, out=out, **options)
            else:
                loss, grads = LCE._run(
                    rows, classifier, target, options["bias"], options["weight"],
                    options.get("ignore_index", -100), "mean", options["label_smoothing"],
                    options["z_loss"], options["softcap"], None, 11, 0.3, ("classifier",))
            results[path, rows.flags.c_contiguous] = grads
    ref_loss, ref_grads = reference_of(hidden, classifier, target, 0.3, options)
    for grads in results.values():
        grad_classifier = grads["classifier"] if isinstance(grads, dict) else grads[1]
        assert np.isfinite(grad_classifier).all()
        assert_close_contract(grad_classifier, ref_grads[1], dtype, "grad")
    blas = results["blas", True]
    tiles = results["tiles", True]
    pick = (lambda g: g["classifier"]) if want == "classifier" else (lambda g: g[1])
    np.testing.assert_allclose(pick(blas), pick(tiles),
                               rtol=0, atol=64 * np.finfo(dtype).eps
                               * float(np.abs(pick(tiles)).max()))


def test_blas_gemm_picks_numpys_openblas():
    """Among the mapped files, NumPy's OpenBLAS: the only one, or the one in NumPy's
    wheel's folder of libraries where another (SciPy's) is mapped beside it; None where
    there is none or no way to tell."""
    numpy_libs = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    ours = os.path.join(numpy_libs, "libscipy_openblas64_-1.so")
    scipys = os.path.join(numpy_libs, os.pardir, "scipy.libs", "libscipy_openblas-2.so")
    pick = LCE._BlasGemm._numpy_openblas
    assert pick(["/usr/lib/libc.so.6", scipys]) == scipys
    assert pick([scipys, ours, "/usr/lib/libm.so.6", ours]) == ours
    assert pick(["/opt/a/libopenblas.so.0", "/opt/b/libopenblas.so.0"]) is None
    assert pick(["/usr/lib/libc.so.6"]) is None
    assert pick([]) is None


def test_blas_gemm_accumulates_like_matmul():
    """_BlasGemm (NumPy's OpenBLAS through ctypes, where found): c = a.T @ b + beta c for
    beta 0 and 1, strided rows, a NaN-filled c under beta = 0, and False (nothing done)
    for a matrix whose elements are not of unit stride or of another dtype."""
    for dtype in (np.float32, np.float64):
        gemm = LCE._BlasGemm.get(dtype)
        if gemm is None:
            pytest.skip("NumPy's BLAS is not an OpenBLAS that _BlasGemm finds here")
        rng = np.random.default_rng(3)
        a = rng.standard_normal((9, 40)).astype(dtype)[:, 3:31]  # row stride 40
        b = rng.standard_normal((9, 6)).astype(dtype)
        c0 = rng.standard_normal((28, 6)).astype(dtype)
        tol = 32 * np.finfo(dtype).eps * (np.abs(a).T @ np.abs(b) + np.abs(c0))
        c = c0.copy()
        assert gemm.accumulate(a, b, c, 1.0)
        assert np.all(np.abs(c - (c0 + a.T @ b)) <= tol)
        c = np.full_like(c0, np.nan)
        assert gemm.accumulate(a, b, c, 0.0)
        assert np.all(np.abs(c - a.T @ b) <= tol)
        c = c0.copy()
        assert not gemm.accumulate(a[:, ::2], b, c[:14])
        assert not gemm.accumulate(a.astype(np.float16), b, c)
        np.testing.assert_array_equal(c, c0)


def test_default_block_height_fills_the_memory_budget():
    """The default block is the tallest (evened out over the blocks) whose scratch, with
    the statistics and the float64 vectors of V values, fits the working-memory budget
    (12 MiB, 5% of the logits at N=2048, V=32000 float32), whatever V: one block fewer
    would not fit; past the V at which 16 rows no longer fit, 16 rows."""
    from fastloss.linear_cross_entropy import (_ENGINE_VECTORS, _MIN_BLOCK_ROWS,
                                               _STATS_BYTES_PER_ROW, _WORK_BYTES,
                                               _budget_block_rows)

    def memory(n_rows, rows, n_classes, itemsize, vectors):
        return (rows * n_classes * itemsize + _STATS_BYTES_PER_ROW * n_rows
                + 8 * (_ENGINE_VECTORS + vectors) * n_classes)

    for n_rows, n_classes, itemsize, vectors in [
            (2048, 32000, 4, 0), (2048, 32000, 4, 2), (2048, 32000, 8, 0),
            (1024, 16384, 4, 2), (1024, 65536, 4, 2), (4096, 50257, 4, 0),
            (8192, 128256, 4, 0), (100000, 1000, 4, 0)]:
        rows = _budget_block_rows(n_rows, n_classes, itemsize, None, vectors=vectors)
        n_blocks = -(-n_rows // rows)
        assert memory(n_rows, rows, n_classes, itemsize, vectors) <= _WORK_BYTES or \
            rows == _MIN_BLOCK_ROWS, (n_rows, n_classes, rows)
        if n_blocks > 1 and rows > _MIN_BLOCK_ROWS:
            taller = -(-n_rows // (n_blocks - 1))
            assert memory(n_rows, taller, n_classes, itemsize, vectors) > _WORK_BYTES
    # the shape: within 5% of the N x V float32 logits
    rows = _budget_block_rows(2048, 32000, 4, None)
    assert memory(2048, rows, 32000, 4, 0) <= 0.05 * 2048 * 32000 * 4
    # a tile of the classifier's gradient, when one is needed, comes out of the scratch
    assert _budget_block_rows(2048, 32000, 4, None, reserved_bytes=1 << 20) < rows


@pytest.mark.parametrize("wrt", ["hidden", "classifier", "bias"])
@pytest.mark.parametrize("case", ["plain", "all", "soft-all"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_finite_differences(wrt, case, reduction):
    """Fourth-order central differences of the float64 loss (with grad_output folded in)
    along a random direction of each differentiable input."""
    rng = np.random.default_rng([len(wrt), len(case), len(reduction)])
    hidden, classifier, target, options = make_inputs(rng, (5,), 4, 6, np.float64,
                                                      OPTIONS[case])
    grad_output = upstream(rng, reduction, (5,))
    arguments = {"hidden": hidden, "classifier": classifier, "bias": options.pop("bias")}
    direction = rng.standard_normal(arguments[wrt].shape)

    def loss_at(step):
        moved = dict(arguments)
        moved[wrt] = arguments[wrt] + step * direction
        loss = fastloss.linear_cross_entropy(moved["hidden"], moved["classifier"], target,
                                             bias=moved["bias"], reduction=reduction,
                                             **options)
        return float(np.sum(np.asarray(loss) * grad_output))

    h = 1e-3
    numeric = (8 * (loss_at(h) - loss_at(-h)) - (loss_at(2 * h) - loss_at(-2 * h))) / (12 * h)
    grads = fastloss.linear_cross_entropy_grad(arguments["hidden"], arguments["classifier"],
                                               target, grad_output, bias=arguments["bias"],
                                               reduction=reduction, **options)
    analytic = float(np.sum(grads[("hidden", "classifier", "bias").index(wrt)] * direction))
    assert abs(analytic - numeric) <= 1e-7 * max(1.0, abs(numeric)), (analytic, numeric)


# ----------------------------------------------------------------------------------------
# float32: the contract plus the products' rounding, and against torch's own float32
# ----------------------------------------------------------------------------------------

def _row_masses(target, options, n_classes):
    """Per row: the sum U of the weights of the terms (lse - y_c) of its cross-entropy
    (w_t; with smoothing (1 - eps) w_t + eps / V sum_c w_c; probabilities sum_c w_c q'_c),
    0 for ignored rows; and the row's scale s (1 for "none" and "sum" times grad_output,
    over the mean's denominators)."""
    weight = options.get("weight")
    weight = np.ones(n_classes) if weight is None else np.asarray(weight, np.float64)
    eps = options.get("label_smoothing", 0.0)
    target = np.asarray(target)
    if target.dtype.kind == "f":
        probabilities = target.reshape(-1, n_classes).astype(np.float64)
        mass = ((1 - eps) * probabilities + eps / n_classes) @ weight
        return mass, np.ones(mass.shape, bool)
    flat = target.reshape(-1)
    valid = flat != options.get("ignore_index", -100)
    safe = np.where(valid, flat, 0)
    mass = (1 - eps) * weight[safe] + eps * weight.sum() / n_classes
    return np.where(valid, mass, 0.0), valid


def products_bound(hidden, classifier, target, grad_output, reduction, dtype, options,
                   half_unit=0.0, blocks=1):
    """What float32 products may add to the contract: (loss, grad hidden, grad classifier,
    grad bias), first order in the products' errors (docs/accuracy.rst's argument, for
    linear_cross_entropy's three products).

    Each logit x_ic = fl(h_i . W_c + b_c) misses by at most eps_ic = gamma_{H+1} A_ic,
    A_ic = |h_i| . |W_c| + |b_c| (Higham 3.1), and so does its soft-capped value (the
    tanh's slope is at most 1). Row i's lse then by at most e_i = max_c eps_ic, each term
    (lse - y_c) by 2 e_i, the cross-entropy (nonnegative weights of total U_i) by
    2 U_i e_i and the z-loss z lse**2 by z (2 |lse| e_i + e_i**2). Each softmax entry, and
    the softcap's slope sech**2(x / cap), move by a factor within expm1(2 e_i) and
    expm1(2 eps_ic / cap) (plus the float32 pass's roundings); the gradient of the logits
    G_ic = s_i ((U_i + 2 z lse_i) p_ic - b_ic) slope_ic therefore by rho_ic P_ic with
    P_ic = s_i (U_i + 2 z |lse_i| + 2 z e_i) p_ic + s_i b_ic (the part that moves, and the
    slope's) and rho_ic = expm1(2 e_i + 2 eps_ic / cap) + 8 u. The products with it add
    gamma of their inner lengths: V for G @ W, N for G.T @ h; the bias's gradient is
    summed in float64.

    ``half_unit`` (the unit roundoff of bfloat16 or float16, with dtype float32): the
    products of the torch adapter's half-precision path, which accumulate in float32 and
    round their results to the half type: each logit then misses by half_unit |x_ic|
    more, the logits' gradient is rounded to the half type (half_unit more in rho), the
    gradient of hidden is rounded once (half_unit more beside gamma_V), the classifier's
    once per block of rows (``blocks`` times half_unit beside gamma_N) and the bias's
    float64 sum once."""
    unit = _contract.UNIT_ROUNDOFF[np.dtype(dtype)]
    h, W = (np.asarray(a, np.float64) for a in (hidden, classifier))
    n_features = W.shape[1]
    n_classes = W.shape[0]
    h = h.reshape(-1, n_features)
    bias = options.get("bias")
    b = np.zeros(n_classes) if bias is None else np.asarray(bias, np.float64)
    magnitude = np.abs(h) @ np.abs(W).T + np.abs(b)
    logits = h @ W.T + b
    eps_logit = (_contract.dot_gamma(n_features + 1, dtype) * (1 + half_unit) * magnitude
                 + half_unit * np.abs(logits))
    e_row = eps_logit.max(axis=1) if n_classes else np.zeros(h.shape[0])
    cap = options.get("softcap")
    y = logits if cap is None else cap * np.tanh(logits / cap)
    shifted = np.exp(y - y.max(axis=1, keepdims=True))
    p = shifted / shifted.sum(axis=1, keepdims=True)
    lse = np.log(shifted.sum(axis=1)) + y.max(axis=1)
    mass, valid = _row_masses(target, options, n_classes)
    z = options.get("z_loss", 0.0)
    per_row = np.where(valid, 2 * mass * e_row + z * (2 * np.abs(lse) * e_row + e_row ** 2),
                       0.0)
    upstream = np.broadcast_to(np.abs(np.asarray(grad_output, np.float64)).reshape(-1)
                               if reduction == "none" else abs(grad_output), mass.shape)
    scale = upstream.astype(np.float64)
    if reduction == "mean":
        weighted = options.get("weight") is not None
        if np.asarray(target).dtype.kind == "f":
            ce_denominator = z_denominator = mass.size
        else:
            flat = np.asarray(target).reshape(-1)
            weight = np.asarray(options["weight"], np.float64) if weighted else None
            ce_denominator = (np.sum(weight[flat[valid]]) if weighted else valid.sum())
            z_denominator = valid.sum()
        ce_part = 2 * mass * e_row / ce_denominator
        z_part = z * (2 * np.abs(lse) * e_row + e_row ** 2) / z_denominator
        loss_bound = float(np.sum(np.where(valid, ce_part + z_part, 0.0)) * scale[0]) \
            if mass.size else 0.0
        first = scale[0] if scale.size else 0.0  # (an empty batch: no rows to scale)
        row_scale = np.full(mass.shape, first / max(ce_denominator, 1e-300))
        z_scale = np.full(mass.shape, first / max(z_denominator, 1))
    else:
        loss_rows = per_row * scale
        loss_bound = loss_rows if reduction == "none" else float(loss_rows.sum())
        if reduction == "none":
            loss_bound = loss_bound.reshape(np.shape(hidden)[:-1])
        row_scale = z_scale = scale
    # target distribution b_ic (the part of G that does not move with the logits)
    if np.asarray(target).dtype.kind == "f":
        weight = np.ones(n_classes) if options.get("weight") is None else \
            np.asarray(options["weight"], np.float64)
        eps = options.get("label_smoothing", 0.0)
        q = np.asarray(target, np.float64).reshape(-1, n_classes)
        fixed = weight * ((1 - eps) * q + eps / n_classes)
    else:
        weight = np.ones(n_classes) if options.get("weight") is None else \
            np.asarray(options["weight"], np.float64)
        eps = options.get("label_smoothing", 0.0)
        flat = np.asarray(target).reshape(-1)
        fixed = np.tile(weight * eps / n_classes, (flat.size, 1))
        rows = np.flatnonzero(valid)
        fixed[rows, flat[rows]] += (1 - eps) * weight[flat[rows]]
    moving = (row_scale * mass + z_scale * 2 * z * (np.abs(lse) + e_row))[:, None] * p
    size = np.where(valid[:, None], moving + row_scale[:, None] * fixed, 0.0)
    spread = 2 * e_row[:, None] + (2 * eps_logit / cap if cap is not None else 0.0)
    rho = np.expm1(spread) + _contract.ROUNDINGS_PER_SOFTMAX_ENTRY * unit + half_unit
    grad_error = rho * size
    gamma_v = _contract.dot_gamma(n_classes + 2, dtype) * (1 + half_unit) + half_unit
    gamma_n = (_contract.dot_gamma(h.shape[0] + 2, dtype) * (1 + half_unit) ** blocks
               + blocks * half_unit * (1 + half_unit) ** blocks)
    grad_hidden = ((grad_error + gamma_v * (size + grad_error)) @ np.abs(W)).reshape(
        np.shape(hidden))
    grad_classifier = (grad_error + gamma_n * (size + grad_error)).T @ np.abs(h)
    grad_bias = grad_error.sum(axis=0) + half_unit * (size + grad_error).sum(axis=0)
    return loss_bound, grad_hidden, grad_classifier, grad_bias


@pytest.mark.parametrize("case", list(OPTIONS))
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [((40,), 32, 50), ((4, 9), 96, 300)], ids=["small", "wide"])
def test_float32_within_the_products_bound(case, reduction, shape):
    batch, n_features, n_classes = shape
    rng = np.random.default_rng([len(case), len(reduction), n_features])
    hidden, classifier, target, options = make_inputs(rng, batch, n_features, n_classes,
                                                      np.float32, OPTIONS[case])
    grad_output = upstream(rng, reduction, batch)
    loss, grads = fastloss.linear_cross_entropy_value_and_grad(
        hidden, classifier, target, grad_output, reduction=reduction, block_rows=7,
        **options)
    assert_loss_type(loss, np.float32, reduction, batch)
    ref_loss, ref_grads = reference_of(hidden, classifier, target, grad_output,
                                       dict(options, reduction=reduction))
    bounds = products_bound(hidden, classifier, target, grad_output, reduction, np.float32,
                            options)
    assert_close_at_scale(loss, ref_loss, np.float32, "loss", extra=bounds[0])
    for grad, ref, bound, given, name in zip(grads, ref_grads, bounds[1:],
                                             (hidden, classifier, options["bias"]),
                                             ("hidden", "classifier", "bias")):
        assert grad.dtype == np.float32 and grad.shape == given.shape
        assert_close_at_scale(grad, ref, np.float32, "grad", loss=ref_loss, wrt=given,
                              grad_output=grad_output, extra=bound, what=f"d/d{name}")


def test_the_bound_is_small_next_to_the_results():
    """The bound means something at a language model's scale of logits."""
    rng = np.random.default_rng(5)
    hidden, classifier, target, options = make_inputs(rng, (64,), 256, 500, np.float32, {})
    ref_loss, ref_grads = reference_of(hidden, classifier, target, 1.0, options)
    bounds = products_bound(hidden, classifier, target, 1.0, "mean", np.float32, options)
    assert bounds[0] < 2e-2 * ref_loss
    for bound, grad in zip(bounds[1:], ref_grads):
        assert np.max(bound) < 0.1 * np.max(np.abs(grad))


def norm_error(actual, ref):
    return float(np.linalg.norm(np.asarray(actual, np.float64) - ref))


@pytest.mark.parametrize("case", ["plain", "weight", "smoothing", "ignore", "soft"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_float32_error_at_most_twice_torch_own(case, reduction):
    """Against torch's float32 F.linear + F.cross_entropy on the same inputs: the 2-norm
    of the error over each result (single entries of two BLAS products may each miss by a
    few units in the last place) is at most twice torch's, plus float32's own rounding of
    the results."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    rng = np.random.default_rng([len(case), len(reduction), 32])
    hidden, classifier, target, options = make_inputs(rng, (96,), 256, 1000, np.float32,
                                                      OPTIONS[case])
    grad_output = upstream(rng, reduction, (96,))
    loss, grads = fastloss.linear_cross_entropy_value_and_grad(
        hidden, classifier, target, grad_output, reduction=reduction, block_rows=40,
        **options)
    ref_loss, ref_grads = reference_of(hidden, classifier, target, grad_output,
                                       dict(options, reduction=reduction))
    leaves = [torch.from_numpy(a).requires_grad_() for a in (hidden, classifier,
                                                             options["bias"])]
    weight = options.get("weight")
    theirs = F.cross_entropy(F.linear(*leaves), torch.from_numpy(target),
                             weight=None if weight is None else torch.from_numpy(weight),
                             ignore_index=options.get("ignore_index", -100),
                             label_smoothing=options.get("label_smoothing", 0.0),
                             reduction=reduction)
    theirs.backward(torch.as_tensor(grad_output, dtype=torch.float32).expand_as(theirs))
    pairs = [(loss, theirs.detach().numpy(), ref_loss)] + [
        (grad, leaf.grad.numpy(), ref) for grad, leaf, ref in zip(grads, leaves, ref_grads)]
    for ours, torchs, ref in pairs:
        ours_error, torch_error = norm_error(ours, ref), norm_error(torchs, ref)
        rounding = 2.0**-24 * float(np.linalg.norm(ref))
        assert ours_error <= 2 * torch_error + rounding, (ours_error, torch_error)


# ----------------------------------------------------------------------------------------
# Threads, layouts, edge cases, inputs left alone
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", ["plain", "all", "soft-all"])
def test_bit_identical_for_any_openmp_thread_count(dtype, case):
    """num_threads sets the OpenMP threads of the engine's passes; the products are the
    same BLAS calls whatever it is, so every result is bit for bit the same."""
    rng = np.random.default_rng(len(case))
    hidden, classifier, target, options = make_inputs(rng, (70,), 24, 3000, dtype,
                                                      OPTIONS[case])
    results = [fastloss.linear_cross_entropy_value_and_grad(hidden, classifier, target,
                                                            num_threads=threads,
                                                            block_rows=16, **options)
               for threads in (1, 2, 3)]
    for loss, grads in results[1:]:
        assert loss == results[0][0]
        for grad, first in zip(grads, results[0][1]):
            assert bitwise_equal(grad, first)


def test_layouts_and_inputs_left_alone():
    """A Fortran-ordered classifier (a transposed (H, V) array), strided hidden rows and
    read-only inputs give the contiguous inputs' results, and nothing is written to them."""
    rng = np.random.default_rng(9)
    hidden, classifier, target, options = make_inputs(rng, (12,), 10, 15, np.float64,
                                                      OPTIONS["all"])
    expected = fastloss.linear_cross_entropy_value_and_grad(hidden, classifier, target,
                                                            **options)
    strided = np.zeros((24, 10))
    strided[::2] = hidden
    fortran = np.asfortranarray(classifier)
    inputs = [strided[::2], fortran, target, options["bias"], options["weight"]]
    copies = [a.copy() for a in inputs]
    for array in inputs:
        array.flags.writeable = False
    loss, grads = fastloss.linear_cross_entropy_value_and_grad(
        strided[::2], fortran, target, **options)
    assert_close_contract(loss, expected[0], np.float64, "loss")
    for grad, ref in zip(grads, expected[1]):
        assert_close_contract(grad, ref, np.float64, "grad")
    for array, copy in zip(inputs, copies):
        assert bitwise_equal(array, copy)


def test_out_receives_the_gradients():
    rng = np.random.default_rng(10)
    hidden, classifier, target, options = make_inputs(rng, (3, 4), 5, 6, np.float32, {})
    out = (np.full(hidden.shape, np.nan, np.float32),
           np.full(classifier.shape, np.nan, np.float32), np.full(6, np.nan, np.float32))
    loss, grads = fastloss.linear_cross_entropy_value_and_grad(hidden, classifier, target,
                                                               out=out, block_rows=5,
                                                               **options)
    assert all(grad is array for grad, array in zip(grads, out))
    expected = fastloss.linear_cross_entropy_grad(hidden, classifier, target, block_rows=5,
                                                  **options)
    for grad, ref in zip(grads, expected):
        assert bitwise_equal(grad, ref)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_batch_and_all_rows_ignored(reduction):
    rng = np.random.default_rng(11)
    hidden, classifier, target, options = make_inputs(rng, (0,), 4, 5, np.float64, {})
    loss, grads = fastloss.linear_cross_entropy_value_and_grad(
        hidden, classifier, target, np.zeros(0) if reduction == "none" else 1.0,
        reduction=reduction, **options)
    expected_loss, expected = reference_of(hidden, classifier, target,
                                           np.zeros(0) if reduction == "none" else 1.0,
                                           dict(options, reduction=reduction))
    np.testing.assert_array_equal(loss, expected_loss)
    for grad, ref in zip(grads, expected):
        np.testing.assert_array_equal(grad, ref)
    hidden, classifier, target, options = make_inputs(rng, (6,), 4, 5, np.float64, {})
    target[:] = -100
    loss, grads = fastloss.linear_cross_entropy_value_and_grad(hidden, classifier, target,
                                                               reduction=reduction, **options)
    expected_loss, expected = reference_of(hidden, classifier, target, 1.0,
                                           dict(options, reduction=reduction))
    np.testing.assert_array_equal(loss, expected_loss)
    for grad, ref in zip(grads, expected):
        np.testing.assert_array_equal(grad, ref)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("batch", [(6,), (2, 3), (0,)], ids=str)
def test_hidden_size_zero(batch, reduction):
    # logits of the bias alone (torch's F.linear_cross_entropy takes such a hidden); the
    # rows' reshape(-1, 0) raised "cannot reshape array of size 0"
    rng = np.random.default_rng(12)
    hidden, classifier, target, options = make_inputs(rng, batch, 0, 5, np.float64, {})
    upstream = np.ones(batch) if reduction == "none" else 1.0
    loss, grads = fastloss.linear_cross_entropy_value_and_grad(
        hidden, classifier, target, upstream, reduction=reduction, **options)
    expected_loss, expected = reference_of(hidden, classifier, target, upstream,
                                           dict(options, reduction=reduction))
    assert_close_contract(loss, expected_loss, np.float64, "loss")
    for grad, ref in zip(grads, expected):
        assert grad.shape == ref.shape
        assert_close_contract(grad, ref, np.float64, "grad")


def test_extreme_logits_stay_finite():
    """Logits near +-1e4 (a product of large features): the engine's shifted exps."""
    hidden = np.array([[100.0, 0.0], [0.0, -100.0], [50.0, 50.0]])
    classifier = np.array([[100.0, 0.0], [-100.0, 0.0], [0.0, 100.0]])
    target = np.array([0, 2, 1])
    for dtype in (np.float32, np.float64):
        loss, grads = fastloss.linear_cross_entropy_value_and_grad(
            hidden.astype(dtype), classifier.astype(dtype), target, reduction="none")
        ref_loss, ref_grads = reference.linear_cross_entropy_value_and_grad(
            hidden, classifier, target, reduction="none")
        assert np.all(np.isfinite(loss))
        assert_close_contract(loss, ref_loss, dtype, "loss")
        for grad, ref in zip(grads, ref_grads):
            assert_close_contract(grad, ref, dtype, "grad")


def test_the_registry_declares_it():
    from fastloss import _registry

    entry = _registry.LOSSES["linear_cross_entropy"]
    assert entry.inputs == ("hidden", "classifier", "target")
    assert entry.differentiable == ("hidden", "classifier", "bias")
    assert entry.tolerance == "products"
    assert entry.public == (fastloss.linear_cross_entropy, fastloss.linear_cross_entropy_grad,
                            fastloss.linear_cross_entropy_value_and_grad)


# ----------------------------------------------------------------------------------------
# Bad input: an exception naming the argument
# ----------------------------------------------------------------------------------------

H, V = 4, 5
HIDDEN = np.linspace(-1, 1, 3 * H).reshape(3, H)
CLASSIFIER = np.linspace(-1, 1, V * H).reshape(V, H)
TARGET = np.array([0, 4, 2])


def bad(case_id, error, match, hidden=HIDDEN, classifier=CLASSIFIER, target=TARGET,
        **options):
    return pytest.param(hidden, classifier, target, options, error, match, id=case_id)


BAD_CASES = [
    bad("hidden-int", TypeError, "hidden", hidden=np.arange(12).reshape(3, 4)),
    bad("hidden-0d", ValueError, "hidden", hidden=np.float64(1.0)),
    bad("H-mismatch", ValueError, "hidden", hidden=np.ones((3, H + 1))),
    bad("classifier-1d", ValueError, "classifier", classifier=np.ones(H)),
    bad("classifier-3d", ValueError, "classifier", classifier=np.ones((V, 2, H))),
    bad("classifier-no-classes", ValueError, "classifier", classifier=np.ones((0, H))),
    bad("classifier-int", TypeError, "classifier", classifier=np.ones((V, H), np.int64)),
    bad("dtype-mismatch", TypeError, "classifier", classifier=CLASSIFIER.astype(np.float32)),
    bad("bias-length", ValueError, "bias", bias=np.zeros(V + 1)),
    bad("bias-2d", ValueError, "bias", bias=np.zeros((1, V))),
    bad("bias-dtype", TypeError, "bias", bias=np.zeros(V, np.float32)),
    bad("weight-length", ValueError, "weight", weight=np.ones(V - 1)),
    bad("target-too-big", ValueError, r"target: value 5 at position \(1,\)",
        target=np.array([0, 5, 1])),
    bad("target-negative", ValueError, r"target: value -1 at position \(2,\)",
        target=np.array([0, 1, -1])),
    bad("target-uint64-huge", ValueError, "target",
        target=np.array([0, 2**64 - 1, 1], np.uint64)),
    bad("target-shape", ValueError, "target", target=np.array([0, 1])),
    bad("target-float-shape", ValueError, "target", target=np.ones((3, V + 1)) / (V + 1)),
    bad("target-float-dtype", TypeError, "target", target=np.ones((3, V), np.float32) / V),
    bad("target-bool", TypeError, "target", target=np.array([True, False, True])),
    bad("soft-ignore-index", ValueError, "ignore_index", target=np.ones((3, V)) / V,
        ignore_index=1),
    bad("ignore-index-float", TypeError, "ignore_index", ignore_index=1.5),
    bad("reduction", ValueError, "reduction", reduction="average"),
    bad("label-smoothing", ValueError, "label_smoothing", label_smoothing=1.5),
    bad("z-loss", ValueError, "z_loss", z_loss=-1.0),
    bad("softcap", ValueError, "softcap", softcap=0.0),
    bad("block-rows", ValueError, "block_rows", block_rows=0),
    bad("block-rows-float", ValueError, "block_rows", block_rows=2.5),
]


@pytest.mark.parametrize("hidden, classifier, target, options, error, match", BAD_CASES)
@pytest.mark.parametrize("suffix", ["", "_grad", "_value_and_grad"])
def test_bad_input_names_the_argument(hidden, classifier, target, options, error, match,
                                      suffix):
    with pytest.raises(error, match=match):
        getattr(fastloss, "linear_cross_entropy" + suffix)(hidden, classifier, target,
                                                           **options)


@pytest.mark.parametrize("out, error, match", [
    ((np.zeros((3, H)),), TypeError, "out"),
    ((np.zeros((3, H)), np.zeros((V, H + 1))), ValueError, r"out \(classifier\)"),
    ((np.zeros((3, H), np.float32), np.zeros((V, H))), TypeError, r"out \(hidden\)"),
    ((np.zeros((H, 3)).T, np.zeros((V, H))), ValueError, r"out \(hidden\)"),
    ((HIDDEN, np.zeros((V, H))), ValueError, "overlaps"),
])
def test_bad_out(out, error, match):
    with pytest.raises(error, match=match):
        fastloss.linear_cross_entropy_grad(HIDDEN.copy() if out[0] is not HIDDEN else HIDDEN,
                                           CLASSIFIER, TARGET, out=out)


@pytest.mark.parametrize("overlapped, half", [("weight", False), ("grad_output", False),
                                              ("grad_output", True)])
def test_out_overlapping_the_weight_or_grad_output_is_refused(overlapped, half):
    # Found by hunt13: an out= sharing memory with the class weight or grad_output (a
    # shifted view of one buffer) was written while later blocks of rows still read
    # them: silently wrong gradients and loss. Refused, as an overlap with the inputs is.
    # (A half weight is read as a float32 copy, which no out can overlap.)
    rng = np.random.default_rng(3)
    n, n_features, n_classes = 9, 4, 7
    dtype = np.float16 if half else np.float64
    hidden = rng.standard_normal((n, n_features)).astype(dtype)
    classifier = rng.standard_normal((n_classes, n_features)).astype(dtype)
    target = rng.integers(0, n_classes, n)
    weight = rng.uniform(0.5, 2.0, n_classes).astype(dtype)
    upstream = rng.uniform(0.5, 1.5, n).astype(dtype)
    options = {"weight": weight, "reduction": "none", "block_rows": 2}
    grad_dtype = np.float32 if half else dtype
    source = weight if overlapped == "weight" else upstream
    # out (hidden) starts one element after the overlapped array in one buffer
    memory = np.zeros(n * n_features + 1, grad_dtype)
    view = memory[:source.size] if source.dtype == grad_dtype else None
    if view is None:  # half inputs: the overlapped array in the same bytes
        view = memory.view(source.dtype)[:source.size]
    view[...] = source
    options[overlapped] = view
    args = (hidden, classifier, target, options.pop("grad_output", upstream))
    out = (memory[1:].reshape(n, n_features), np.empty((n_classes, n_features), grad_dtype))
    for function in (fastloss.linear_cross_entropy_grad,
                     fastloss.linear_cross_entropy_value_and_grad):
        with pytest.raises(ValueError, match=rf"out \(hidden\): overlaps the input {overlapped}"):
            function(*args, out=out, grad_dtype=grad_dtype, **options)


def test_bad_grad_output():
    with pytest.raises(ValueError, match="grad_output"):
        fastloss.linear_cross_entropy_grad(HIDDEN, CLASSIFIER, TARGET, np.ones(3))
    with pytest.raises(ValueError, match="grad_output"):
        fastloss.linear_cross_entropy_grad(HIDDEN, CLASSIFIER, TARGET, np.ones(2),
                                           reduction="none")


# ----------------------------------------------------------------------------------------
# torch: F.linear_cross_entropy's signature and values, autograd
# ----------------------------------------------------------------------------------------

def _torch_case(torch, rng, dtype, case, batch=(12,), n_features=8, n_classes=20):
    hidden, classifier, target, options = make_inputs(rng, batch, n_features, n_classes,
                                                      np.float64, OPTIONS[case])
    tensors = {"input": torch.from_numpy(hidden).to(dtype),
               "linear_weight": torch.from_numpy(classifier).to(dtype),
               "linear_bias": torch.from_numpy(options.pop("bias")).to(dtype)}
    target = torch.from_numpy(target)
    if target.dtype.is_floating_point:
        target = target.to(dtype)
    keywords = {}
    if "weight" in options:
        keywords["weight"] = torch.from_numpy(options.pop("weight")).to(dtype)
    if "ignore_index" in options:
        keywords["ignore_index"] = options.pop("ignore_index")
    if "label_smoothing" in options:
        keywords["label_smoothing"] = options.pop("label_smoothing")
    return tensors, target, keywords, options  # options: z_loss, softcap (fastloss's)


def _torch_formula(torch, input, linear_weight, target, *, linear_bias=None, weight=None,
                   reduction="mean", ignore_index=-100, label_smoothing=0.0, z_loss=0.0,
                   softcap=None):
    """F.linear + F.cross_entropy with the z-loss and soft-capping written out."""
    import torch.nn.functional as F

    logits = F.linear(input, linear_weight, linear_bias)
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    loss = F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index,
                           label_smoothing=label_smoothing, reduction=reduction)
    if z_loss:
        lse = torch.logsumexp(logits, dim=-1)
        if target.dtype.is_floating_point:
            valid = torch.ones_like(lse, dtype=torch.bool)
        else:
            valid = target != ignore_index
        z = z_loss * torch.where(valid, lse, torch.zeros_like(lse)) ** 2
        if reduction == "none":
            loss = loss + z
        elif reduction == "sum":
            loss = loss + z.sum()
        else:
            loss = loss + z.sum() / valid.sum()
    return loss


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", list(OPTIONS))
def test_torch_matches_F_linear_cross_entropy(case, reduction, dtype):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    import fastloss.torch as FL

    dtype = getattr(torch, dtype)
    rng = np.random.default_rng([len(case), len(reduction)])
    tensors, target, keywords, extras = _torch_case(torch, rng, dtype, case)
    if extras:
        theirs = [lambda **a: _torch_formula(torch, **a, **extras)]
    else:
        theirs = [F.linear_cross_entropy]
        # torch's chunked path (options=) takes class indices without smoothing, and
        # falls back to the plain path with a warning otherwise
        if (hasattr(torch.nn, "LinearCrossEntropyOptions") and not case.startswith("soft")
                and "label_smoothing" not in keywords):
            theirs.append(lambda **a: F.linear_cross_entropy(
                **a, options=torch.nn.LinearCrossEntropyOptions()))

    def run(function, wide=False):
        leaves = {name: (t.double() if wide else t).detach().clone().requires_grad_()
                  for name, t in tensors.items()}
        given = dict(keywords)
        if wide and "weight" in given:
            given["weight"] = given["weight"].double()
        given_target = target.double() if wide and target.dtype.is_floating_point else target
        loss = function(**leaves, target=given_target, reduction=reduction, **given)
        up = torch.linspace(0.5, 2.0, loss.numel(), dtype=loss.dtype).reshape(loss.shape)
        return loss, torch.autograd.grad(loss, list(leaves.values()), up)

    loss, grads = run(lambda **a: FL.linear_cross_entropy(**a, block_rows=5, **extras))
    expected, expected_grads = run(theirs[0], wide=True)
    for function in theirs:
        witness, _ = run(function)
        assert loss.dtype == witness.dtype == dtype and loss.shape == witness.shape
    tolerance = {torch.float64: 1e-12, torch.float32: 2e-5}[dtype]
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=tolerance,
                               atol=tolerance)
    for grad, ref in zip(grads, expected_grads):
        assert grad.dtype == dtype
        torch.testing.assert_close(grad.double(), ref, rtol=tolerance,
                                   atol=tolerance * float(ref.abs().max()))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False),
                                   (False, False, True), (True, True, True),
                                   (False, True, True)])
def test_torch_gradients_of_any_subset(needs, reduction):
    """Only the inputs that require grad get (and cost) a gradient; grad_output != 1;
    retain_graph: a second backward gives the same gradients again."""
    torch = pytest.importorskip("torch")
    import fastloss.torch as FL

    rng = np.random.default_rng([sum(needs), len(reduction)])
    tensors, target, keywords, _ = _torch_case(torch, rng, torch.float64, "weight")
    leaves = [t.clone().requires_grad_(need) for t, need in zip(tensors.values(), needs)]
    loss = FL.linear_cross_entropy(*leaves[:2], target, linear_bias=leaves[2],
                                   reduction=reduction, **keywords)
    up = torch.linspace(0.5, 2.0, loss.numel(), dtype=loss.dtype).reshape(loss.shape)
    loss.backward(up * 0.75, retain_graph=True)
    first = [leaf.grad.clone() if need else None for leaf, need in zip(leaves, needs)]
    loss.backward(up * 0.75)
    numpy_grads = fastloss.linear_cross_entropy_grad(
        tensors["input"].numpy(), tensors["linear_weight"].numpy(), target.numpy(),
        (up * 0.75).numpy() if reduction == "none" else 0.75 * float(up.reshape(-1)[0]),
        bias=tensors["linear_bias"].numpy(), weight=keywords["weight"].numpy(),
        reduction=reduction)
    for leaf, need, grad, once in zip(leaves, needs, numpy_grads, first):
        if not need:
            assert leaf.grad is None
            continue
        torch.testing.assert_close(once, torch.from_numpy(grad), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(leaf.grad, 2 * torch.from_numpy(grad), rtol=1e-12,
                                   atol=1e-14)


def test_torch_no_grad_and_detached_need_no_gradients():
    torch = pytest.importorskip("torch")
    import fastloss.torch as FL

    rng = np.random.default_rng(1)
    tensors, target, keywords, _ = _torch_case(torch, rng, torch.float32, "plain")
    with torch.no_grad():
        loss = FL.linear_cross_entropy(tensors["input"].requires_grad_(),
                                       tensors["linear_weight"], target)
    assert not loss.requires_grad
    expected = fastloss.linear_cross_entropy(tensors["input"].detach().numpy(),
                                             tensors["linear_weight"].numpy(), target.numpy())
    assert float(loss) == np.float32(expected)


def test_torch_module_is_torchs_class():
    torch = pytest.importorskip("torch")
    import fastloss.torch as FL

    if not hasattr(torch.nn, "LinearCrossEntropyLoss"):
        pytest.skip("torch has no nn.LinearCrossEntropyLoss")
    torch.manual_seed(0)
    ours = FL.LinearCrossEntropyLoss(8, 30, bias=True, label_smoothing=0.1,
                                     dtype=torch.float64)
    theirs = torch.nn.LinearCrossEntropyLoss(8, 30, bias=True, label_smoothing=0.1,
                                             dtype=torch.float64)
    theirs.load_state_dict(ours.state_dict())
    assert isinstance(ours, torch.nn.LinearCrossEntropyLoss)
    assert list(ours.state_dict()) == ["linear.weight", "linear.bias"]
    x = torch.randn(16, 8, dtype=torch.float64)
    t = torch.randint(0, 30, (16,))
    a, b = ours(x, t), theirs(x, t)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    a.backward()
    b.backward()
    for p, q in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="out_features"):
        FL.LinearCrossEntropyLoss(8, 30, out_features=(2,))


@pytest.mark.parametrize("call, error, match", [
    (lambda FL, t, x, W, y: FL.linear_cross_entropy(x, W.float(), y), TypeError,
     "linear_weight"),
    (lambda FL, t, x, W, y: FL.linear_cross_entropy(x, W[None], y), ValueError,
     "linear_weight"),
    (lambda FL, t, x, W, y: FL.linear_cross_entropy(x, W, y.half()), TypeError, "target"),
    (lambda FL, t, x, W, y: FL.linear_cross_entropy(x, W, y.double()), ValueError, "target"),
    (lambda FL, t, x, W, y: FL.linear_cross_entropy(x, W, y, options=3), TypeError,
     "options"),
    (lambda FL, t, x, W, y: FL.linear_cross_entropy(x, W, y, linear_bias=t.ones(2, dtype=t.float64)),
     ValueError, "bias"),
    (lambda FL, t, x, W, y: FL.linear_cross_entropy(
        x, W, y, weight=t.ones(5, dtype=t.float64, requires_grad=True)),
     NotImplementedError, "weight"),
    (lambda FL, t, x, W, y: FL.linear_cross_entropy(x.int(), W, y), TypeError, "input"),
])
def test_torch_bad_input(call, error, match):
    torch = pytest.importorskip("torch")
    import fastloss.torch as FL

    x = torch.ones(3, 4, dtype=torch.float64)
    W = torch.ones(5, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 4])
    with pytest.raises(error, match=match):
        call(FL, torch, x, W, y)


# ----------------------------------------------------------------------------------------
# Peak resident memory: the scratch does not grow with V
# ----------------------------------------------------------------------------------------

MiB = 1 << 20
THREADS = 2  # the child's OpenMP threads (the engine keeps rows of V per thread)

RSS_CHILD = CHILD_HEAD + r"""
n_rows, n_features, n_classes = (int(a) for a in sys.argv[1:4])


def inputs(scale):
    rows, classes = n_rows // scale, n_classes // scale
    hidden = touched((rows, n_features))
    hidden.reshape(-1)[::7] = 0.5
    classifier = touched((classes, n_features))
    classifier.reshape(-1)[::5] = -0.25
    bias = touched(classes, 0.1)
    target = (np.arange(rows) * 7) % classes
    out = (touched((rows, n_features)), touched((classes, n_features)), touched(classes))
    return lambda: fastloss.linear_cross_entropy_value_and_grad(
        hidden, classifier, target, bias=bias, out=out, label_smoothing=0.1)


warm = inputs(16)
call = inputs(1)
""" + CHILD_TAIL


def extra_resident_bytes(tmp_path, n_rows, n_features, n_classes):
    return run_child(RSS_CHILD, (n_rows, n_features, n_classes), cwd=tmp_path,
                     FASTLOSS_NUM_THREADS=str(THREADS))["extra"]


@needs_proc
@needs_plain_malloc
def test_peak_memory_is_the_scratch_whatever_V(tmp_path):
    """With the gradients in out=, the call touches the scratch (what the 12 MiB budget
    leaves after the rest), O(N) statistics, the BLAS's buffers, and vectors of V
    values: the engine's rows in float64 (two per OpenMP thread for float32 with label
    smoothing) and the bias's float64 sums (two); the partial products of the
    classifier's gradient go through the hidden's gradient's rows (no tile). From
    V = 16384 to V = 65536 (N x V logits of 64 and 256 MiB) only those vectors grow (the
    scratch shrinks by what the budget reserves for them), and the whole stays under 5%
    of the larger logits. An N x V or a block x V scratch (at a fixed block height) would
    grow by tens of MiB."""
    n_rows, n_features, small_v, large_v = 1024, 64, 16384, 65536
    small = extra_resident_bytes(tmp_path, n_rows, n_features, small_v)
    large = extra_resident_bytes(tmp_path, n_rows, n_features, large_v)
    assert large <= 0.05 * n_rows * large_v * 4, large / MiB
    vectors = (2 * THREADS + 2) * 8 * (large_v - small_v)
    assert large <= small + vectors + MiB // 2, (small / MiB, large / MiB, vectors / MiB)
