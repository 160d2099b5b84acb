"""The one table of loss specifications the tests are parametrised over.

Each row (``LossSpec``) names a loss family's public functions, their float64 references in
``fastloss.reference``, an input generator, the option cases worth crossing with dtypes and
reductions, and the tolerances per dtype, each with a one-line justification. Adding a loss
(regression, binary, contrastive) means adding a row and an input generator here; the generic
parity tests in ``test_cross_entropy.py`` then pick it up.

The tolerances are the accuracy contract (fastloss._contract, docs/accuracy.rst), never wider. ``assert_close_contract``
checks a result against the reference exactly as the contract words it, and
``call_unmodified`` checks that a call leaves its array arguments bitwise unchanged.
"""

import dataclasses
from typing import Callable

import numpy as np

import fastloss
from fastloss import _registry, reference
from fastloss._contract import CONTRACT, Tolerance

DTYPES = (np.float32, np.float64)
REDUCTIONS = ("mean", "sum", "none")


# ----------------------------------------------------------------------------------------
# The accuracy contract
# ----------------------------------------------------------------------------------------

# One definition, shared with ``fastloss check``: fastloss._contract (docs/accuracy.rst).
# The per-row log-sum-exp is not a loss and the contract does not name it; it is held to
# the loss contract, except that float32 logits may also miss by an absolute 2.4e-7.
LSE_TOLERANCE = {
    np.dtype(np.float64): CONTRACT[(np.dtype(np.float64), "loss")],
    np.dtype(np.float32): Tolerance(
        2e-6, 1e-14,
        "lse = max + log(sum): float32 exponentials put about one float32 ulp (1.2e-7) of "
        "relative error into the sum whatever its size, so log(sum) carries that much absolute "
        "error, which is not small relative to an lse near 0 (two ulps allowed)",
        atol=2.4e-7),
}


def assert_close(actual, ref, tolerance, what="result"):
    """Assert ``actual`` is within ``tolerance`` of ``ref`` elementwise (NaN/inf must match).

    ``actual`` may be a Python float or an array of any float dtype; it is compared in
    float64, where every float32 value is exact.
    """
    actual = np.asarray(actual, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert actual.shape == ref.shape, f"{what}: shape {actual.shape} != reference {ref.shape}"
    nan_ref = np.isnan(ref)
    nan_actual = np.isnan(actual)
    if not np.array_equal(nan_ref, nan_actual):
        index = np.argwhere(nan_ref != nan_actual)[0]
        raise AssertionError(
            f"{what}: NaN positions differ from the reference; first at {tuple(index)}: "
            f"actual {actual[tuple(index)]!r}, reference {ref[tuple(index)]!r}")
    inf_ref = np.isinf(ref)
    if not np.array_equal(actual[inf_ref], ref[inf_ref]):
        raise AssertionError(f"{what}: infinities differ from the reference")
    finite = np.isfinite(ref)
    if not finite.any():
        return
    scale = float(np.max(np.abs(ref[finite])))
    bound = tolerance.rtol * np.abs(ref) + tolerance.floor * scale + tolerance.atol
    with np.errstate(invalid="ignore"):  # inf - inf where both are inf, checked above
        error = np.abs(actual - ref)
    bad = finite & ~(error <= bound)
    if bad.any():
        ratio = np.where(bad, error / np.where(bound > 0, bound, np.finfo(float).tiny), 0.0)
        worst = np.unravel_index(np.argmax(ratio), ratio.shape)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {ref.size} elements exceed the bound ({tolerance}); "
            f"worst at {tuple(int(i) for i in worst)}: actual {actual[worst]!r}, "
            f"reference {ref[worst]!r}, |error| {error[worst]:.3e} > bound {bound[worst]:.3e}")


def assert_close_contract(actual, ref, dtype, kind="loss", what=None):
    """Assert the accuracy contract for a ``kind`` ("loss" or "grad") result
    computed from inputs of ``dtype`` against the float64 reference ``ref``."""
    if kind not in ("loss", "grad"):
        raise ValueError(f"kind must be 'loss' or 'grad', got {kind!r}")
    tolerance = CONTRACT[(np.dtype(dtype), kind)]
    assert_close(actual, ref, tolerance, what=what or kind)


def assert_loss_type(loss, dtype, reduction, batch_shape):
    """A reduced loss is a Python float holding a value of ``dtype``; 'none' is an array of
    ``dtype`` and shape ``batch_shape``."""
    if reduction == "none":
        assert isinstance(loss, np.ndarray), f"reduction='none' returned {type(loss)}"
        assert loss.dtype == np.dtype(dtype), f"loss dtype {loss.dtype}, expected {dtype}"
        assert loss.shape == tuple(batch_shape), f"loss shape {loss.shape} != {batch_shape}"
    else:
        assert type(loss) is float, f"reduction={reduction!r} returned {type(loss)}, not float"


def assert_array_type(array, dtype, shape, what="grad"):
    assert isinstance(array, np.ndarray), f"{what} is {type(array)}, not ndarray"
    assert array.dtype == np.dtype(dtype), f"{what} dtype {array.dtype}, expected {dtype}"
    assert array.shape == tuple(shape), f"{what} shape {array.shape}, expected {shape}"


# ----------------------------------------------------------------------------------------
# Inputs left alone
# ----------------------------------------------------------------------------------------

def bitwise_equal(a, b):
    """Same dtype, shape and bytes (so NaN payloads and signed zeros count)."""
    a = np.asarray(a)
    b = np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def call_unmodified(func, *args, **kwargs):
    """Call ``func(*args, **kwargs)`` and assert it left every array argument bitwise
    unchanged, except ``out=`` and whatever shares memory with it."""
    out = kwargs.get("out")
    watched = []
    named = [(f"argument {i}", value) for i, value in enumerate(args)]
    named += [(name, value) for name, value in kwargs.items() if name != "out"]
    for name, value in named:
        if not isinstance(value, np.ndarray):
            continue
        if out is not None and np.may_share_memory(value, out):
            continue
        watched.append((name, value, value.copy(order="K")))
    result = func(*args, **kwargs)
    for name, value, before in watched:
        assert bitwise_equal(value, before), f"{func.__name__} modified its {name}"
        assert np.array_equal(value, before, equal_nan=True)
    return result


# ----------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Functions:
    """A loss family's three entry points: value, gradient, fused value and gradient."""

    value: Callable
    grad: Callable
    value_and_grad: Callable


@dataclasses.dataclass(frozen=True)
class Case:
    """One option combination with a readable id; ``params`` are read by the spec's input
    generator (which turns e.g. ``weight=True`` into a random weight array)."""

    id: str
    params: dict


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """One row of the table.

    ``make_inputs(rng, dtype, params, shape)`` returns ``(args, options)``: the positional
    data arrays (``shape`` is the first one's shape) and the keyword options. ``loss_shape``
    maps a data shape to the per-sample loss shape (what ``grad_output`` has for "none").
    ``default_shape`` is the data shape the generic tests use.
    """

    name: str
    public: Functions
    reference: Functions
    make_inputs: Callable[..., tuple]
    loss_shape: Callable[[tuple], tuple]
    default_shape: tuple
    cases: tuple
    tolerances: dict = dataclasses.field(default_factory=lambda: dict(CONTRACT))
    reductions: tuple = REDUCTIONS

    def tolerance(self, dtype, kind):
        return self.tolerances[(np.dtype(dtype), kind)]

    def __str__(self):
        return self.name


# --- cross-entropy -------------------------------------------------------------------------

def random_logits(rng, shape, dtype, scale=3.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def random_weight(rng, n_classes, dtype):
    # Class weights of either sign of magnitude are legal in torch; keep them positive and
    # away from zero so the weighted mean's denominator is well conditioned.
    return rng.uniform(0.25, 2.0, n_classes).astype(dtype)


def ce_options(rng, n_classes, dtype, params):
    """Keyword options for cross-entropy from a case's params."""
    options = {}
    if params.get("weight"):
        options["weight"] = random_weight(rng, n_classes, dtype)
    for name in ("ignore_index", "label_smoothing", "z_loss", "softcap"):
        if name in params:
            options[name] = params[name]
    return options


def make_ce_hard_inputs(rng, dtype, params, shape):
    """Logits of ``shape`` (..., C) and int64 class indices; ``ignore_fraction`` of the rows
    (at least one when positive and there are rows) get ``ignore_index``."""
    n_classes = shape[-1]
    logits = random_logits(rng, shape, dtype, params.get("scale", 3.0))
    target = rng.integers(0, n_classes, size=shape[:-1], dtype=np.int64)
    fraction = params.get("ignore_fraction", 0.0)
    if fraction > 0 and target.size:
        ignored = rng.random(target.shape) < fraction
        ignored.flat[0] = True
        target[ignored] = params.get("ignore_index", -100)
    return (logits, target), ce_options(rng, n_classes, dtype, params)


def make_ce_soft_inputs(rng, dtype, params, shape):
    """Logits and probability targets of ``shape``; rows sum to 1 unless ``unnormalised``."""
    logits = random_logits(rng, shape, dtype, params.get("scale", 3.0))
    target = rng.random(shape)
    if not params.get("unnormalised"):
        target /= target.sum(axis=-1, keepdims=True)
    return (logits, target.astype(dtype)), ce_options(rng, shape[-1], dtype, params)


CE_HARD_CASES = (
    Case("plain", {}),
    Case("weight", {"weight": True}),
    Case("ignore", {"ignore_fraction": 0.3}),
    Case("weight+ignore", {"weight": True, "ignore_fraction": 0.3}),
    Case("ignore=0", {"ignore_fraction": 0.3, "ignore_index": 0}),
    Case("smoothing", {"label_smoothing": 0.1}),
    Case("smoothing+weight+ignore",
         {"label_smoothing": 0.2, "weight": True, "ignore_fraction": 0.3}),
    Case("smoothing=1", {"label_smoothing": 1.0, "weight": True}),
    Case("z_loss", {"z_loss": 1e-3, "ignore_fraction": 0.2}),
    Case("softcap", {"softcap": 2.5}),
    Case("all", {"weight": True, "ignore_fraction": 0.25, "label_smoothing": 0.15,
                 "z_loss": 1e-2, "softcap": 4.0}),
)

CE_SOFT_CASES = (
    Case("plain", {}),
    Case("unnormalised", {"unnormalised": True}),
    Case("weight", {"weight": True}),
    Case("smoothing", {"label_smoothing": 0.1}),
    Case("smoothing+weight", {"label_smoothing": 0.3, "weight": True}),
    Case("z_loss", {"z_loss": 1e-3}),
    Case("softcap", {"softcap": 2.5}),
    Case("all", {"weight": True, "label_smoothing": 0.15, "z_loss": 1e-2, "softcap": 4.0,
                 "ignore_index": -1}),
)

CROSS_ENTROPY_PUBLIC = Functions(
    fastloss.cross_entropy, fastloss.cross_entropy_grad, fastloss.cross_entropy_value_and_grad)
CROSS_ENTROPY_REFERENCE = Functions(
    reference.cross_entropy, reference.cross_entropy_grad,
    reference.cross_entropy_value_and_grad)


def class_axis_last_loss_shape(shape):
    return tuple(shape[:-1])


def _functions(module, name):
    return Functions(getattr(module, name), getattr(module, f"{name}_grad"),
                     getattr(module, f"{name}_value_and_grad"))


# --- elementwise losses: from the registry ------------------------------------------------

# The input makers are the registry's (fastloss check draws the same kinds of inputs).
make_regression_inputs = _registry.regression_inputs
make_binary_inputs = _registry.binary_inputs


def elementwise_spec(entry):
    # (37, 23): 851 elements, several 128-element tiles, and a per-class factor of 23 that
    # the API repeats to a period of 1035, so tiles end at period boundaries too. The
    # registry's cases are crossed with the generic tests' shape, not check's.
    return LossSpec(
        name=entry.name,
        public=Functions(*entry.public),
        reference=Functions(*entry.reference),
        make_inputs=entry.make_inputs,
        loss_shape=entry.loss_shape,
        default_shape=(37, 23),
        cases=tuple(Case(case.id, case.params) for case in entry.cases),
    )


ELEMENTWISE_SPECS = tuple(elementwise_spec(entry) for entry in _registry.family("elementwise"))

# The options an input maker draws from a layout name ("full", "class", "row"): the
# weight, and the periodic factors the kernels read beside it (pos_weight, quantile).
LAYOUT_OPTIONS = frozenset({"weight"} | {entry.factor for entry in
                                         _registry.family("elementwise") if entry.factor})


def declared_params(name, params):
    """``params`` without the option layouts (``LAYOUT_OPTIONS``) that loss ``name`` does
    not declare: a generic test asks for ``{"weight": "class", "quantile": "class"}`` and
    each entry draws the factors it takes (the losses added with the registry have no
    weight; only pinball has a quantile)."""
    declared = {option.name for option in _registry.LOSSES[name].options}
    return {key: value for key, value in params.items()
            if key not in LAYOUT_OPTIONS or key in declared}


def reference_loss_shape(name, arrays, options):
    """The shape of loss ``name``'s "none" result for ``arrays``, as the reference
    computes it (the inputs' broadcast shape; gaussian_nll's var one axis short of the
    input is first given its axis back, as torch unsqueezes it)."""
    options = {key: value for key, value in options.items() if key != "reduction"}
    return np.shape(getattr(reference, name)(*arrays, reduction="none", **options))


# --- embeddings: pairwise distances and contrastive losses -------------------------------

# Per metric: the layout of random embeddings (class centres with this spread, rows with
# this noise around their centre, and a common offset the kernels must see through) and
# margins near the median distance within and between classes, so both margins cut
# through the pairs.
EMBEDDING_LAYOUTS = {
    "euclidean": {"spread": 0.6, "noise": 0.25, "offset": 3.0,
                  "pos_margin": 1.0, "neg_margin": 2.4},
    "sqeuclidean": {"spread": 0.6, "noise": 0.25, "offset": 3.0,
                    "pos_margin": 1.0, "neg_margin": 5.8},
    "cosine": {"spread": 1.0, "noise": 0.35, "offset": 0.0,
               "pos_margin": 0.1, "neg_margin": 0.9},
}


def random_embeddings(rng, shape, dtype, metric="euclidean", n_classes=4):
    """Rows of ``shape`` (N, D) in ``n_classes`` clusters (EMBEDDING_LAYOUTS[metric]) and
    their int64 class labels."""
    layout = EMBEDDING_LAYOUTS[metric]
    n_rows, dim = shape
    labels = rng.integers(0, n_classes, n_rows)
    centres = rng.standard_normal((n_classes, dim)) * layout["spread"]
    rows = centres[labels] + layout["noise"] * rng.standard_normal(shape) + layout["offset"]
    return rows.astype(dtype), labels


def make_contrastive_pairwise_inputs(rng, dtype, params, shape):
    """Clustered embeddings and labels; the margins of the metric's layout unless
    ``default_margins``."""
    metric = params.get("metric", "euclidean")
    embeddings, labels = random_embeddings(rng, shape, dtype, metric,
                                           params.get("n_classes", 4))
    options = {"metric": metric}
    if not params.get("default_margins"):
        layout = EMBEDDING_LAYOUTS[metric]
        options.update(pos_margin=layout["pos_margin"], neg_margin=layout["neg_margin"])
    return (embeddings, labels), options


CONTRASTIVE_PAIRWISE_CASES = (
    Case("euclidean", {"metric": "euclidean"}),
    Case("euclidean-default-margins", {"metric": "euclidean", "default_margins": True}),
    Case("sqeuclidean", {"metric": "sqeuclidean"}),
    Case("cosine", {"metric": "cosine"}),
    Case("cosine-default-margins", {"metric": "cosine", "default_margins": True}),
    Case("one-class", {"metric": "euclidean", "n_classes": 1}),
)


def pair_matrix_loss_shape(shape):
    return (shape[0], shape[0])


CONTRASTIVE_SPECS = (
    LossSpec(
        name="contrastive_pairwise",
        public=_functions(fastloss, "contrastive_pairwise"),
        reference=_functions(reference, "contrastive_pairwise"),
        make_inputs=make_contrastive_pairwise_inputs,
        loss_shape=pair_matrix_loss_shape,
        # 37 rows: one 64 x 64 tile of pairs, with ragged ends
        default_shape=(37, 8),
        cases=CONTRASTIVE_PAIRWISE_CASES,
    ),
)


SPECS = (
    LossSpec(
        name="cross_entropy-hard",
        public=CROSS_ENTROPY_PUBLIC,
        reference=CROSS_ENTROPY_REFERENCE,
        make_inputs=make_ce_hard_inputs,
        loss_shape=class_axis_last_loss_shape,
        default_shape=(37, 23),
        cases=CE_HARD_CASES,
    ),
    LossSpec(
        name="cross_entropy-soft",
        public=CROSS_ENTROPY_PUBLIC,
        reference=CROSS_ENTROPY_REFERENCE,
        make_inputs=make_ce_soft_inputs,
        loss_shape=class_axis_last_loss_shape,
        default_shape=(37, 23),
        cases=CE_SOFT_CASES,
    ),
) + ELEMENTWISE_SPECS + CONTRASTIVE_SPECS

SPECS_BY_NAME = {spec.name: spec for spec in SPECS}


def spec_case_params():
    """``pytest.param(spec, case)`` for every row and case, with ids like
    ``cross_entropy-hard-weight+ignore``."""
    import pytest

    return [pytest.param(spec, case, id=f"{spec.name}-{case.id}")
            for spec in SPECS for case in spec.cases]


def dtype_id(dtype):
    return np.dtype(dtype).name


def grad_output_for(rng, spec, shape, dtype, reduction):
    """A non-trivial upstream gradient: a scalar for mean/sum, per-sample array for none."""
    if reduction == "none":
        return rng.uniform(-2.0, 2.0, spec.loss_shape(shape)).astype(dtype)
    return 0.625


# ----------------------------------------------------------------------------------------
# Finite differences (float64): one stencil for every family's tests
# ----------------------------------------------------------------------------------------

def fourth_order_difference(at, step):
    """The derivative at 0 of the scalar function ``at``, by the fourth-order central
    difference (-f(2h) + 8 f(h) - 8 f(-h) + f(-2h)) / 12h = f'(0) + O(h**4)."""
    return (-at(2 * step) + 8 * at(step) - 8 * at(-step) + at(-2 * step)) / (12 * step)


def central_differences(func, x, step):
    """The gradient of the scalar ``func`` at ``x``, one element at a time."""
    grad = np.empty_like(x)
    for index in np.ndindex(x.shape):
        def at(delta):
            moved = x.copy()
            moved[index] += delta
            return func(moved)
        grad[index] = fourth_order_difference(at, step)
    return grad


def directional_derivative(function, arrays, directions, step=1e-4):
    """The derivative of ``function(*arrays)`` along ``directions`` (one per array)."""
    return fourth_order_difference(
        lambda t: function(*[a + t * d for a, d in zip(arrays, directions)]), step)
