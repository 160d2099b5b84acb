"""The registry: every loss declared once.

A ``Loss`` entry names a loss's family, its array inputs and which of them are
differentiable, its keyword options (default, check, values the check refuses), its
float64 reference in ``fastloss.reference``, its torch counterpart and how the
arguments map, the cases ``fastloss check`` and the tests run, the sizes ``fastloss
bench`` times, and the tolerance class of its accuracy contract. What reads it:

- the public NumPy functions ``NAME``, ``NAME_grad``, ``NAME_value_and_grad`` of the
  elementwise (pointwise) and box families are generated from their entries
  (``public_functions``, called by ``fastloss/elementwise.py`` and ``fastloss/box.py``);
  the other families' are written by hand and looked up by name;
- ``fastloss.torch`` generates the elementwise and box losses' functions and
  ``nn.Module`` classes from ``Loss.torch``;
- ``fastloss check`` runs the elementwise entries' ``Loss.cases`` against the reference;
- ``fastloss bench`` times the elementwise and box losses marked ``bench``;
- the docs' table of losses (docs/_ext/registry_table.py) lists every entry;
- the test suite's generic tables (parity, finite differences, bad input, threads,
  torch parity) are parametrised over ``LOSSES``.

Adding a pointwise loss is its C value and slope (csrc/elementwise_body.h), its
reference formula (fastloss/reference/_elementwise.py), one entry below, and tests of
its own edge cases. The models are scikit-learn's ``sklearn/_loss`` (a loss is a
declared object that the generic machinery drives) and PyTorch's OpInfo database (one
record per operator, from which the generic tests are generated).
"""
import dataclasses
import math
from typing import Callable, Optional

import numpy as np

from fastloss._validation import as_array, is_bfloat16, real_scalar

__all__ = ["Case", "LOSSES", "Loss", "Option", "Torch", "family", "make_function",
           "public_functions"]


# ----------------------------------------------------------------------------------------
# The entry types
# ----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Option:
    """A keyword option: its default, the check that turns a caller's value into what
    the kernel reads (raising an exception that names the option), and values that
    check must refuse with the exception type each raises (the bad-input test table)."""

    name: str
    default: object = None
    check: Optional[Callable] = None
    refused: tuple = ()
    array: bool = False        # an array option (weight, pos_weight, quantile vectors)

    def checked(self, value):
        return self.check(value) if self.check is not None else value


@dataclasses.dataclass(frozen=True)
class Torch:
    """The torch counterpart and the adapter ``fastloss.torch`` generates for it.

    ``function``: the adapter's name (torch.nn.functional's, where torch has the loss);
    ``counterpart``: the dotted name of what it reproduces (None: no torch function,
    the tests write the formula out); ``signature``: the adapter's parameters in
    torch's order, as Python source (``num_threads`` is appended keyword-only);
    ``arguments``: the adapter's parameter -> the NumPy API's (inputs and options);
    ``module``: the ``nn.Module`` class name, ``module_base``: the torch.nn class it
    subclasses (None: a plain Module), ``module_signature``: its ``__init__``
    parameters as Python source; ``not_differentiable``: inputs that torch does not
    differentiate (one that requires grad raises torch's RuntimeError); ``loss_dtype``:
    the dtype of torch's loss ("promote": of all inputs and the weight, "input": the
    input's times the weight's, "target": the target's); ``size_warning``: torch warns
    when the target's size differs from the input's; ``doc``: what the adapter's
    docstring adds to "torch's counterpart computed by fastloss"."""

    function: str
    counterpart: Optional[str]
    signature: str
    arguments: dict
    module: str
    module_base: Optional[str] = None
    module_signature: str = ""
    not_differentiable: tuple = ()
    loss_dtype: str = "promote"    # "promote" | "input" (times weight) | "target"
    size_warning: bool = False     # torch warns when target's size differs from input's
    doc: str = ""
    note: str = ""                 # how the counterpart differs, for the docs' table
    no_gradient: tuple = ()        # inputs torch differentiates and fastloss does not
    gradient_differs: dict = dataclasses.field(default_factory=dict)  # input -> why


@dataclasses.dataclass(frozen=True)
class Case:
    """One option combination: ``params`` are read by the entry's input maker (a layout
    name such as "class" becomes a random array of that layout)."""

    id: str
    params: dict
    shape: Optional[tuple] = None


@dataclasses.dataclass(frozen=True)
class Loss:
    """One loss. ``inputs`` are the positional arrays in order; ``differentiable`` the
    names ``wrt=`` accepts (the first is the default); ``options`` the keyword options
    in the order of the signature (``reduction`` and ``num_threads`` follow them).

    ``make_inputs(rng, dtype, params, shape) -> (arrays, options)`` draws a case's
    inputs; ``loss_shape(shape)`` maps the first input's shape to the loss's shape for
    reduction "none"; ``tolerance`` names the contract's class ("contract": the bounds
    of fastloss._contract; "products": the contract plus a dot product's rounding).
    ``bench`` puts the loss in ``fastloss bench`` (and the pytest-benchmark suite), its
    inputs drawn from the bench's pool by the names in ``bench_inputs`` (see
    fastloss/bench/_cases.py: "pred", "target", "labels", "soft_labels", ...).

    Elementwise entries also carry what their kernel needs: ``kernel`` (the C loss),
    ``params(options) -> tuple`` (the C parameters), ``factor`` (the option the kernel
    reads as a periodic per-element factor beside ``weight``), ``weighted_mean``
    (torch's mean divides by the weight's sum: mse, l1), ``same_shape`` (inputs must
    have one shape rather than broadcast), ``prepare(arrays, options) -> arrays`` (the
    loss's own shape rules and checks on the input arrays before they broadcast), ``doc``
    and ``grad_doc`` (the docstrings of ``NAME`` and ``NAME_grad``). (Which terms can be
    negative, and so cancel in a float32 sum, the C kernel knows: csrc/elementwise.c.)"""

    name: str
    family: str
    inputs: tuple
    differentiable: tuple
    options: tuple = ()
    torch: Optional[Torch] = None
    make_inputs: Optional[Callable] = None
    loss_shape: Optional[Callable] = None
    cases: tuple = ()
    check_shape: tuple = (40, 1000)
    bench: bool = False
    bench_inputs: tuple = ("pred", "target")
    tolerance: str = "contract"
    # elementwise only
    kernel: Optional[str] = None
    params: Callable = lambda options: ()
    factor: Optional[str] = None
    weighted_mean: bool = False
    same_shape: bool = False
    prepare: Optional[Callable] = None
    doc: str = ""
    grad_doc: str = ""
    reductions: tuple = ()      # reductions beyond mean, sum, none (kl_div's "batchmean")

    @property
    def public(self):
        """The three public functions (value, gradient, fused)."""
        import fastloss

        return tuple(getattr(fastloss, self.name + suffix)
                     for suffix in ("", "_grad", "_value_and_grad"))

    @property
    def reference(self):
        """The float64 references of the three."""
        from fastloss import reference

        return tuple(getattr(reference, self.name + suffix)
                     for suffix in ("", "_grad", "_value_and_grad"))


def make_function(name, parameters, body, namespace, doc, module):
    """A function ``def name(parameters): body`` compiled from source, so that it has
    a real signature (introspection, Sphinx, a call costs what a written function's
    does) and the docstring ``doc``. ``namespace`` holds the names the body uses."""
    source = f"def {name}({parameters}):\n    {body}\n"
    scope = dict(namespace)
    exec(compile(source, f"<fastloss generated {name}>", "exec"), scope)  # noqa: S102
    function = scope[name]
    function.__doc__ = doc
    function.__module__ = module
    function.__qualname__ = name
    return function


_VALUE_AND_GRAD_DOC = """``({name}(...), {name}_grad(...))`` from one pass over the inputs.

    Arguments as in :func:`{name}_grad`; returns ``(loss, gradient)``, the gradient a
    tuple when ``wrt`` is a tuple of names.
    """


def public_functions(entry, run, module, doc=None, grad_doc=None):
    """``NAME``, ``NAME_grad`` and ``NAME_value_and_grad`` of ``entry``: real functions
    with the signatures the entry declares (its inputs, then grad_output, then its
    options, reduction, out, wrt and num_threads by keyword), each calling
    ``run(entry, mode, arrays, options, reduction, num_threads[, grad_output, out,
    wrt])``, the family's runner, which returns ``(loss, grad)``. The docstrings are
    the entry's unless given."""
    inputs = ", ".join(entry.inputs)
    keywords = "".join(f"{option.name}=_default_{option.name}, " for option in entry.options)
    options = "{" + ", ".join(f"{option.name!r}: {option.name}"
                              for option in entry.options) + "}"
    namespace = {"_run": run, "_entry": entry,
                 **{f"_default_{option.name}": option.default for option in entry.options}}

    def call(mode):
        return f"_run(_entry, {mode!r}, ({inputs},), {options}, reduction, num_threads"

    gradient_parameters = (f"{inputs}, grad_output=1.0, *, {keywords}reduction='mean', "
                           f"out=None, wrt={entry.differentiable[0]!r}, num_threads=None")
    name = entry.name
    return {
        name: make_function(
            name, f"{inputs}, *, {keywords}reduction='mean', num_threads=None",
            "return " + call("forward") + ")[0]", namespace, doc or entry.doc, module),
        f"{name}_grad": make_function(
            f"{name}_grad", gradient_parameters,
            "return " + call("backward") + ", grad_output, out, wrt)[1]",
            namespace, grad_doc or entry.grad_doc, module),
        f"{name}_value_and_grad": make_function(
            f"{name}_value_and_grad", gradient_parameters,
            "return " + call("value_and_grad") + ", grad_output, out, wrt)",
            namespace, _VALUE_AND_GRAD_DOC.format(name=name), module),
    }


# ----------------------------------------------------------------------------------------
# Option checks
# ----------------------------------------------------------------------------------------

def _positive(name):
    return lambda value: real_scalar(value, name, low=0.0, low_open=True)


def _nonnegative(name):
    return lambda value: real_scalar(value, name, low=0.0)


_WEIGHT = Option("weight", None, array=True)
_BAD_THRESHOLD = ((-1.0, ValueError), (math.inf, ValueError), (math.nan, ValueError),
                  ("1", TypeError), (10**400, ValueError))


# ----------------------------------------------------------------------------------------
# Input makers (shared by fastloss check and the tests)
# ----------------------------------------------------------------------------------------

def random_factor(rng, layout, shape, dtype, low, high):
    """A positive per-element factor of ``layout``: "full" (the data's shape), "class"
    (the last axis, broadcast over the rest) or "row" (one per row, trailing 1)."""
    layout = layout if isinstance(layout, str) else "full"
    factor_shape = {"full": shape, "class": shape[-1:], "row": shape[:-1] + (1,)}[layout]
    return rng.uniform(low, high, factor_shape).astype(dtype)


def _factor_options(rng, dtype, params, shape):
    """``weight`` and ``pos_weight`` from their layout names; the rest pass through."""
    options = {}
    if params.get("weight"):
        options["weight"] = random_factor(rng, params["weight"], shape, dtype, 0.25, 2.0)
    if params.get("pos_weight"):
        options["pos_weight"] = random_factor(rng, params["pos_weight"], shape, dtype,
                                              0.5, 3.0)
    for name, value in params.items():
        if name not in ("weight", "pos_weight", "scale", "soft"):
            options[name] = value
    return options


def regression_inputs(rng, dtype, params, shape):
    """pred (standard deviation ``scale``, default 2) and target (standard normal): the
    residuals straddle every threshold the cases use."""
    pred = (rng.standard_normal(shape) * params.get("scale", 2.0)).astype(dtype)
    target = rng.standard_normal(shape).astype(dtype)
    return (pred, target), _factor_options(rng, dtype, params, shape)


def binary_inputs(rng, dtype, params, shape):
    """Logits (standard deviation ``scale``, default 3) and targets in [0, 1]: hard 0/1
    labels, or with ``soft`` a mix of labels and probabilities."""
    logits = (rng.standard_normal(shape) * params.get("scale", 3.0)).astype(dtype)
    target = rng.integers(0, 2, shape).astype(np.float64)
    if params.get("soft"):
        target = np.where(rng.random(shape) < 0.5, target, rng.random(shape))
    return (logits, target.astype(dtype)), _factor_options(rng, dtype, params, shape)


def _same_shape(shape):
    return tuple(shape)


# ----------------------------------------------------------------------------------------
# The elementwise (pointwise) losses
# ----------------------------------------------------------------------------------------

_REGRESSION_CASES = (
    Case("plain", {}),
    Case("weight", {"weight": "full"}),
    Case("weight-per-class", {"weight": "class"}, (3, 13, 517)),
    Case("weight-per-row", {"weight": "row"}),
)

_LEGACY = "size_average=None, reduce=None, "


def _regression_torch(function, module, extra_signature="", extra_arguments=None,
                      legacy=True, weight=True, module_signature=None, **fields):
    """The torch form of a regression loss: ``function(input, target, [legacy,]
    reduction, [extras,] [weight])``."""
    signature = "input, target, " + (_LEGACY if legacy else "") + "reduction='mean'"
    signature += extra_signature + (", weight=None" if weight else "")
    arguments = {"input": "pred", "target": "target", **(extra_arguments or {})}
    if weight:
        arguments["weight"] = "weight"
    if module_signature is None:
        module_signature = (_LEGACY if legacy else "") + "reduction='mean'" + extra_signature
    return Torch(function, f"torch.nn.functional.{function}", signature, arguments, module,
                 module, module_signature, size_warning=True, **fields)


MSE = Loss(
    name="mse", family="elementwise", inputs=("pred", "target"),
    differentiable=("pred", "target", "weight"), options=(_WEIGHT,),
    torch=_regression_torch("mse_loss", "MSELoss", doc=(
        "With a ``weight`` (of the input's size), \"mean\" is ``sum(weight * loss) / "
        "sum(weight)`` as in torch, the weight summed over the input's size even where the "
        "target broadcasts the loss to a larger shape. ")),
    make_inputs=regression_inputs, loss_shape=_same_shape, cases=_REGRESSION_CASES,
    bench=True, kernel="mse", weighted_mean=True,
    doc="""Mean squared error, as torch.nn.functional.mse_loss: per element
    ``weight * (pred - target)**2``.

    Parameters
    ----------
    pred : array_like, float32 or float64
    target : array_like, float or integer; broadcasts with ``pred``
    weight : array_like, optional
        Per-element factor that broadcasts to the loss's shape.
    reduction : {"mean", "sum", "none"}
        "mean" divides the sum by the number of elements; with a weight, by the sum of
        the weight as paired with pred (broadcast with pred's shape, not repeated by a
        larger target): a weighted mean, as torch's mse_loss and l1_loss do.
    num_threads : int, optional
        Threads for this call (default: fastloss.get_num_threads()).

    Returns
    -------
    float or ndarray
        A float for "mean"/"sum" (nan for the mean of no elements); for "none" an array
        of the broadcast shape. Its dtype is float64 if pred or target is, else float32.
    """,
    grad_doc="""Gradient of ``grad_output * mse(pred, target, ...)`` w.r.t. pred:
    ``2 (pred - target) * weight * grad_output`` (/ the mean's denominator).

    grad_output is a scalar for "mean"/"sum" and an array of the loss's shape (or a
    scalar) for "none". The gradient has pred's shape and dtype; ``out`` receives it
    (``out=pred`` overwrites pred in place). Returns the gradient (``out`` if given).

    ``wrt`` names the argument to differentiate: "pred", "target" (minus pred's slope;
    a float target only) or "weight" (the unweighted loss, through the weighted mean for
    "mean", as torch's autograd), or a tuple of names for a tuple of gradients in that
    order (``out`` then a tuple too, or None). Each gradient has its argument's shape
    (summed over the axes broadcasting added or stretched) and dtype.
    """,
)

L1 = Loss(
    name="l1", family="elementwise", inputs=("pred", "target"),
    differentiable=("pred", "target", "weight"), options=(_WEIGHT,),
    torch=_regression_torch("l1_loss", "L1Loss", doc=(
        "With a ``weight``, \"mean\" is ``sum(weight * loss) / sum(weight)`` as in torch "
        "(see :func:`mse_loss`). ")),
    make_inputs=regression_inputs, loss_shape=_same_shape, cases=_REGRESSION_CASES[:2],
    bench=True, kernel="l1", weighted_mean=True,
    doc="""Mean absolute error, as torch.nn.functional.l1_loss: per element
    ``weight * |pred - target|``.

    Arguments and result as in :func:`mse`.
    """,
    grad_doc="""Gradient of ``grad_output * l1(pred, target, ...)`` w.r.t. pred:
    ``sign(pred - target) * weight * grad_output`` (/ the mean's denominator), with
    sign(0) = 0 (and 0 where the difference is NaN), as torch. Arguments (``wrt``
    included) as in :func:`mse_grad`.
    """,
)

HUBER = Loss(
    name="huber", family="elementwise", inputs=("pred", "target"),
    differentiable=("pred", "target", "weight"),
    options=(Option("delta", 1.0, _positive("delta"), _BAD_THRESHOLD + ((0.0, ValueError),)),
             _WEIGHT),
    torch=_regression_torch("huber_loss", "HuberLoss", ", delta=1.0", {"delta": "delta"},
                            legacy=False, loss_dtype="input", doc=(
                                "``delta > 0``; with a ``weight``, \"mean\" is "
                                "``mean(weight * loss)`` as in torch. ")),
    make_inputs=regression_inputs, loss_shape=_same_shape,
    cases=(Case("delta=1", {}),
           Case("delta=0.5+weight", {"delta": 0.5, "weight": "full"}),
           Case("delta=3+weight-per-class", {"delta": 3.0, "weight": "class"}, (3, 13, 517))),
    bench=True, kernel="huber", params=lambda options: (options["delta"],),
    doc="""Huber loss, as torch.nn.functional.huber_loss: per element, r = pred - target,
    ``weight * (0.5 r**2 if |r| < delta else delta (|r| - 0.5 delta))``.

    ``delta`` must be > 0 (as torch). At ``|r| == delta`` both pieces equal
    ``0.5 delta**2``. Other arguments and the result as in :func:`mse`.
    """,
    grad_doc="""Gradient of ``grad_output * huber(pred, target, ...)`` w.r.t. pred:
    ``clip(pred - target, -delta, delta) * weight * grad_output`` (/ N for the mean).
    Arguments (``wrt`` included) as in :func:`mse_grad`; the weighted mean divides by N,
    as torch's huber_loss.
    """,
)

SMOOTH_L1 = Loss(
    name="smooth_l1", family="elementwise", inputs=("pred", "target"),
    differentiable=("pred", "target", "weight"),
    options=(Option("beta", 1.0, _nonnegative("beta"), _BAD_THRESHOLD), _WEIGHT),
    torch=_regression_torch("smooth_l1_loss", "SmoothL1Loss", ", beta=1.0", {"beta": "beta"},
                            weight=False, doc="``beta >= 0``; 0 is L1. "),
    make_inputs=regression_inputs, loss_shape=_same_shape,
    cases=(Case("beta=1", {}),
           Case("beta=0.5+weight", {"beta": 0.5, "weight": "full"}),
           Case("beta=0", {"beta": 0.0}),
           Case("beta=2+weight-per-row", {"beta": 2.0, "weight": "row"})),
    bench=True, kernel="smooth_l1", params=lambda options: (options["beta"],),
    doc="""Smooth L1 loss, as torch.nn.functional.smooth_l1_loss: per element, r = pred - target,
    ``weight * (0.5 r**2 / beta if |r| < beta else |r| - 0.5 beta)``.

    ``beta`` must be >= 0; ``beta == 0`` is exactly :func:`l1` (as torch). Other
    arguments and the result as in :func:`mse`.
    """,
    grad_doc="""Gradient of ``grad_output * smooth_l1(pred, target, ...)`` w.r.t. pred:
    ``clip((pred - target) / beta, -1, 1) * weight * grad_output`` (/ N for the mean);
    for ``beta == 0`` the l1 gradient. Arguments (``wrt`` included) as in
    :func:`mse_grad`.
    """,
)

BCE_WITH_LOGITS = Loss(
    name="bce_with_logits", family="elementwise", inputs=("logits", "target"),
    differentiable=("logits", "target"),
    options=(_WEIGHT, Option("pos_weight", None, array=True)),
    torch=Torch("binary_cross_entropy_with_logits",
                "torch.nn.functional.binary_cross_entropy_with_logits",
                "input, target, weight=None, " + _LEGACY + "reduction='mean', pos_weight=None",
                {"input": "logits", "target": "target", "weight": "weight",
                 "pos_weight": "pos_weight"},
                "BCEWithLogitsLoss", "BCEWithLogitsLoss",
                "weight=None, " + _LEGACY + "reduction='mean', pos_weight=None",
                not_differentiable=("weight", "pos_weight"), loss_dtype="target",
                doc=("``weight`` broadcasts to the input, ``pos_weight`` to it too (one value "
                     "per class of the last axis; 0-d for 0-d logits); like torch, ``weight`` "
                     "and ``pos_weight`` are not differentiable, and one that requires grad "
                     "raises torch's RuntimeError. The loss has the target's dtype, as "
                     "torch's. ")),
    make_inputs=binary_inputs, loss_shape=_same_shape,
    cases=(Case("plain", {}),
           Case("soft", {"soft": True}),
           Case("weight", {"weight": "full", "soft": True}),
           Case("pos_weight", {"pos_weight": "class"}),
           Case("weight+pos_weight", {"weight": "class", "pos_weight": "class", "soft": True},
                (3, 13, 517)),
           Case("large", {"pos_weight": "full", "soft": True, "scale": 1e3})),
    bench=True, bench_inputs=("pred", "labels"), kernel="bce_with_logits",
    factor="pos_weight", same_shape=True,
    doc="""Binary cross-entropy on logits, as torch.nn.functional.binary_cross_entropy_with_logits:
    per element, x = logits, y = target, p = pos_weight::

        weight * ((1 - y) x + (1 + (p - 1) y) softplus(-x)),
        softplus(-x) = max(-x, 0) + log1p(exp(-|x|)),

    i.e. ``-weight * (p y log sigmoid(x) + (1 - y) log(1 - sigmoid(x)))``, evaluated so
    that it is exact for logits of any size (no overflow, no cancellation for y in
    [0, 1]). At an infinite logit the loss is inf or NaN as in torch.

    Parameters
    ----------
    logits : array_like, float32 or float64
    target : array_like of logits' shape, float or integer (labels in [0, 1])
    weight : array_like, optional
        Per-element factor that broadcasts to the logits' shape.
    pos_weight : array_like, optional
        Weight of the positive term per class of the last axis: shape (C,), or
        anything else that broadcasts to the logits' shape (0-d for 0-d logits).
    reduction, num_threads
        As in :func:`mse`.
    """,
    grad_doc="""Gradient of ``grad_output * bce_with_logits(logits, target, ...)`` w.r.t. the
    logits: ``((1 + (p - 1) y) sigmoid(x) - p y) * weight * grad_output`` (/ N for the
    mean); sigmoid is taken per sign of x, so it never overflows. Arguments as in
    :func:`mse_grad` (``out=logits`` overwrites the logits in place).

    ``wrt="target"`` (or ``("logits", "target")``): the gradient w.r.t. a float target,
    ``(-x + (p - 1) softplus(-x)) * weight * grad_output``, torch's
    ``log_sigmoid(-x) - p log_sigmoid(x)``, from the same pass. torch does not
    differentiate ``weight`` or ``pos_weight``; asking for them is a ValueError.
    """,
)


# --- the pointwise losses added the registry's way (issue 12) ---------------------------------

def _finite(name):
    return lambda value: real_scalar(value, name)


def _boolean(name):
    def check(value):
        if isinstance(value, (bool, np.bool_)) or (
                isinstance(value, (int, np.integer)) and value in (0, 1)
                and not isinstance(value, np.timedelta64)):  # (a NumPy signed integer)
            return bool(value)
        raise TypeError(f"{name}: expected a bool, got {value!r}")
    return check


def _quantile(value):
    quantile = as_array(value, "quantile")
    if quantile.dtype.kind not in "biuf" and not is_bfloat16(quantile.dtype):
        raise TypeError(f"quantile: expected a number or an array of numbers in (0, 1), "
                        f"got {value!r}")
    inside = (quantile > 0) & (quantile < 1)
    if not np.all(inside):
        raise ValueError(f"quantile: expected values in (0, 1), got "
                         f"{quantile if quantile.ndim == 0 else quantile[~inside][:3]}")
    return quantile


_BAD_FINITE = ((math.nan, ValueError), (math.inf, ValueError), ("1", TypeError),
               (10**400, ValueError))
_BAD_POSITIVE = ((0.0, ValueError), (-1.0, ValueError)) + _BAD_FINITE
_BAD_BOOL = (("yes", TypeError), (2, TypeError), (np.timedelta64(1), TypeError))


def margin_inputs(rng, dtype, params, shape):
    """x1, x2 (standard normals) and target labels of -1 and 1."""
    x1 = rng.standard_normal(shape).astype(dtype)
    x2 = rng.standard_normal(shape).astype(dtype)
    target = np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(dtype)
    return (x1, x2, target), _factor_options(rng, dtype, params, shape)


def poisson_inputs(rng, dtype, params, shape):
    """Log-rates (standard normal) or, without ``log_input``, rates in [0.1, 3], and
    counts drawn from Poisson(2) (some above 1, where ``full`` adds its term)."""
    if params.get("log_input", True):
        rate = rng.standard_normal(shape)
    else:
        rate = rng.uniform(0.1, 3.0, shape)
    target = rng.poisson(2.0, shape).astype(dtype)
    return (rate.astype(dtype), target), _factor_options(rng, dtype, params, shape)


def gaussian_inputs(rng, dtype, params, shape):
    """input and target (standard normals) and a variance in [0.1, 2] of the layout
    ``var`` names ("full", or "row": one per row, the last axis dropped, as torch's
    homoscedastic case); ``small_var`` puts a quarter of the variances below eps."""
    layout = params.get("var", "full")
    var_shape = shape if layout == "full" else shape[:-1]
    var = rng.uniform(0.1, 2.0, var_shape)
    if params.get("small_var"):
        var = np.where(rng.random(var_shape) < 0.25, 1e-9, var)
    options = {key: value for key, value in params.items() if key not in ("var", "small_var")}
    return (rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype),
            var.astype(dtype)), options


def pinball_inputs(rng, dtype, params, shape):
    """pred and target (standard normals); ``quantile`` a number or "class": one per
    class of the last axis in [0.05, 0.95]."""
    arrays, _ = regression_inputs(rng, dtype, {}, shape)
    quantile = params.get("quantile", 0.5)
    if quantile == "class":
        quantile = rng.uniform(0.05, 0.95, shape[-1:]).astype(dtype)
    return arrays, {"quantile": quantile}


def _gaussian_prepare(arrays, options):
    """torch's rules for var: non-negative; a number, or the input's shape, or the
    input's without its last axis (given a trailing axis), or the input's number of axes
    with one mismatched axis, of size 1."""
    input, target, var = arrays
    # the least entry first: a read-only pass (a NaN makes it NaN: then every entry is
    # compared); np.any(var < 0) would also write a bool array as large as var
    least = np.min(var) if var.size else 0
    if least < 0 or (least != least and np.any(var < 0)):
        raise ValueError("var: has negative entries (a variance is >= 0)")
    if var.shape != input.shape and var.ndim:  # a number is every element's variance
        if input.ndim and var.shape == input.shape[:-1]:
            var = var[..., np.newaxis]
        elif not (var.ndim == input.ndim and sum(
                v for i, v in zip(input.shape, var.shape) if i != v) == 1):
            raise ValueError(f"var: shape {var.shape} is not input's {input.shape}, input's "
                             f"without its last axis, or input's with one axis of size 1")
    return [input, target, var]


SIGMOID_FOCAL = Loss(
    name="sigmoid_focal", family="elementwise", inputs=("logits", "target"),
    differentiable=("logits",),
    options=(Option("alpha", 0.25, _finite("alpha"), _BAD_FINITE),
             Option("gamma", 2.0, _nonnegative("gamma"), _BAD_THRESHOLD)),
    torch=Torch("sigmoid_focal_loss", "torchvision.ops.sigmoid_focal_loss",
                "inputs, targets, alpha=0.25, gamma=2.0, reduction='none'",
                {"inputs": "logits", "targets": "target", "alpha": "alpha", "gamma": "gamma"},
                "SigmoidFocalLoss", None, "alpha=0.25, gamma=2.0, reduction='mean'",
                no_gradient=("target",),
                doc=("torchvision's default reduction, 'none', is this function's too (the "
                     "module's is 'mean'). "),
                note="the classification loss of one-stage detectors (RetinaNet)"),
    make_inputs=binary_inputs, loss_shape=_same_shape,
    cases=(Case("plain", {}),
           Case("soft", {"soft": True}),
           Case("alpha<0", {"alpha": -1.0, "soft": True}),
           Case("gamma=0", {"gamma": 0.0}),
           Case("gamma=0.5", {"gamma": 0.5, "alpha": 0.6}),
           Case("large", {"scale": 30.0, "gamma": 3.0})),
    bench=True, bench_inputs=("pred", "labels"), kernel="sigmoid_focal", same_shape=True,
    params=lambda options: (options["alpha"], options["gamma"]),
    doc="""Sigmoid focal loss on logits, as torchvision.ops.sigmoid_focal_loss (Lin et al.
    2017): per element, x = logits, y = target (in [0, 1]; soft labels allowed),
    p = sigmoid(x)::

        ce      = bce_with_logits(x, y)
        1 - p_t = p (1 - y) + (1 - p) y
        loss    = alpha_t * ce * (1 - p_t)**gamma,  alpha_t = alpha y + (1 - alpha) (1 - y)

    ``alpha < 0`` drops the class balance (alpha_t = 1), as torchvision; ``gamma >= 0``
    (0 is bce_with_logits times alpha_t). ``1 - p_t`` is computed from ``sigmoid(-|x|)``
    so that it keeps its relative accuracy where it is tiny (torchvision's rounds to 0).
    logits and target have one shape. reduction and num_threads as in :func:`mse`; the
    default reduction is "mean" (torchvision's is "none").
    """,
    grad_doc="""Gradient of ``grad_output * sigmoid_focal(logits, target, ...)`` w.r.t. the
    logits (torch's autograd of torchvision's formula; where ``1 - p_t`` is 0 and
    ``gamma < 1`` autograd's ``0 * inf`` is avoided: the factor is 0). ``out=logits``
    writes it in place; the target is not differentiated (``wrt`` accepts "logits").
    """,
)

MARGIN_RANKING = Loss(
    name="margin_ranking", family="elementwise", inputs=("x1", "x2", "target"),
    differentiable=("x1", "x2"),
    options=(Option("margin", 0.0, _finite("margin"), _BAD_FINITE),),
    torch=Torch("margin_ranking_loss", "torch.nn.functional.margin_ranking_loss",
                "input1, input2, target, margin=0.0, " + _LEGACY + "reduction='mean'",
                {"input1": "x1", "input2": "x2", "target": "target", "margin": "margin"},
                "MarginRankingLoss", "MarginRankingLoss",
                "margin=0.0, " + _LEGACY + "reduction='mean'", no_gradient=("target",)),
    make_inputs=margin_inputs, loss_shape=_same_shape,
    cases=(Case("margin=0", {}), Case("margin=0.5", {"margin": 0.5}),
           Case("margin=-0.3", {"margin": -0.3})),
    bench=True, bench_inputs=("pred", "target", "signs"), kernel="margin_ranking",
    params=lambda options: (options["margin"],),
    doc="""Margin ranking loss, as torch.nn.functional.margin_ranking_loss: per element
    ``max(0, -target * (x1 - x2) + margin)``, target 1 where x1 should rank higher and -1
    where x2 should. The three inputs broadcast to one shape. reduction and num_threads
    as in :func:`mse`.
    """,
    grad_doc="""Gradient of ``grad_output * margin_ranking(x1, x2, target, ...)`` w.r.t.
    ``x1`` (``-target`` where the hinge is active, torch's ``clamp_min`` subgradient at
    the kink) and, with ``wrt="x2"`` or ``("x1", "x2")``, ``x2`` (its negation); the
    target is not differentiated. Arguments as in :func:`mse_grad`.
    """,
)

POISSON_NLL = Loss(
    name="poisson_nll", family="elementwise", inputs=("input", "target"),
    differentiable=("input", "target"),
    options=(Option("log_input", True, _boolean("log_input"), _BAD_BOOL),
             Option("full", False, _boolean("full"), _BAD_BOOL),
             Option("eps", 1e-8, _positive("eps"), _BAD_POSITIVE)),
    torch=Torch("poisson_nll_loss", "torch.nn.functional.poisson_nll_loss",
                "input, target, log_input=True, full=False, size_average=None, eps=1e-8, "
                "reduce=None, reduction='mean'",
                {"input": "input", "target": "target", "log_input": "log_input",
                 "full": "full", "eps": "eps"},
                "PoissonNLLLoss", "PoissonNLLLoss",
                "log_input=True, full=False, size_average=None, eps=1e-8, reduce=None, "
                "reduction='mean'",
                gradient_differs={"target": (
                    "with full=True torch's autograd gives NaN for the target's gradient "
                    "where target == 0 (its Stirling term is masked with masked_fill after "
                    "0 * log(0) is formed, and the mask's backward multiplies 0 by -inf); "
                    "the term is 0 for target <= 1, and so is fastloss's gradient of it")}),
    make_inputs=poisson_inputs, loss_shape=_same_shape,
    cases=(Case("log_input", {}), Case("rate", {"log_input": False}),
           Case("full", {"full": True}), Case("rate+full", {"log_input": False, "full": True})),
    bench=True, bench_inputs=("pred", "counts"), kernel="poisson_nll",
    params=lambda options: (options["log_input"], options["full"], options["eps"]),
    doc="""Poisson negative log-likelihood, as torch.nn.functional.poisson_nll_loss: per
    element ``exp(input) - target * input`` (``log_input=True``: input is the log-rate) or
    ``input - target * log(input + eps)``; ``full`` adds Stirling's term
    ``target log(target) - target + 0.5 log(2 pi target)`` where target > 1. The inputs
    broadcast. reduction and num_threads as in :func:`mse`.
    """,
    grad_doc="""Gradient of ``grad_output * poisson_nll(input, target, ...)`` w.r.t. the
    input (``exp(input) - target``, or ``1 - target / (input + eps)``) and, with
    ``wrt``, the target. Arguments as in :func:`mse_grad`.
    """,
)

GAUSSIAN_NLL = Loss(
    name="gaussian_nll", family="elementwise", inputs=("input", "target", "var"),
    differentiable=("input", "target", "var"),
    options=(Option("full", False, _boolean("full"), _BAD_BOOL),
             Option("eps", 1e-6, _positive("eps"), _BAD_POSITIVE)),
    torch=Torch("gaussian_nll_loss", "torch.nn.functional.gaussian_nll_loss",
                "input, target, var, full=False, eps=1e-6, reduction='mean'",
                {"input": "input", "target": "target", "var": "var", "full": "full",
                 "eps": "eps"},
                "GaussianNLLLoss", "GaussianNLLLoss", "*, full=False, eps=1e-6, reduction='mean'"),
    make_inputs=gaussian_inputs, loss_shape=_same_shape,
    cases=(Case("plain", {}), Case("var-per-row", {"var": "row"}),
           Case("full", {"full": True}), Case("small-var", {"small_var": True, "eps": 1e-4})),
    bench=True, bench_inputs=("pred", "target", "positive"), kernel="gaussian_nll",
    prepare=_gaussian_prepare,
    params=lambda options: (options["full"], options["eps"]),
    doc="""Gaussian negative log-likelihood, as torch.nn.functional.gaussian_nll_loss: per
    element, with ``v = max(var, eps)``, ``0.5 (log v + (input - target)**2 / v)`` (plus
    ``0.5 log(2 pi)`` with ``full``). ``var`` has the input's shape, or the input's without
    its last axis (one variance per row), or the input's number of axes with one axis of
    size 1, as torch; negative entries are a ValueError. reduction and num_threads as in
    :func:`mse`.
    """,
    grad_doc="""Gradient of ``grad_output * gaussian_nll(input, target, var, ...)`` w.r.t.
    the input (``(input - target) / v``) and, with ``wrt``, the target and ``var``
    (``0.5 (1 / v - (input - target)**2 / v**2)``, passed through the clamp as torch's
    autograd does: torch clamps under no_grad), each summed to its argument's shape.
    Arguments as in :func:`mse_grad`.
    """,
)

PINBALL = Loss(
    name="pinball", family="elementwise", inputs=("pred", "target"),
    differentiable=("pred", "target"),
    options=(Option("quantile", 0.5, _quantile,
                    ((0.0, ValueError), (1.0, ValueError), (-0.5, ValueError),
                     (math.nan, ValueError), ("0.5", TypeError)), array=True),),
    torch=Torch("pinball_loss", None, "input, target, quantile=0.5, reduction='mean'",
                {"input": "pred", "target": "target", "quantile": "quantile"},
                "PinballLoss", None, "quantile=0.5, reduction='mean'", no_gradient=("quantile",),
                note="the quantile loss; scikit-learn's mean_pinball_loss for one quantile"),
    make_inputs=pinball_inputs, loss_shape=_same_shape,
    cases=(Case("q=0.5", {}), Case("q=0.1", {"quantile": 0.1}),
           Case("q-per-class", {"quantile": "class"}, (3, 13, 517))),
    bench=True, kernel="pinball", factor="quantile",
    doc="""Pinball (quantile) loss: per element, r = target - pred and q = quantile,
    ``max(q r, (q - 1) r)``: under-prediction costs q per unit, over-prediction 1 - q
    (scikit-learn's mean_pinball_loss for one quantile with reduction "mean").
    ``quantile`` is a number in (0, 1), or an array of them that broadcasts to the
    loss's shape (typically one per column of the last axis, for several quantiles at
    once). pred and target broadcast. reduction and num_threads as in :func:`mse`.
    """,
    grad_doc="""Gradient of ``grad_output * pinball(pred, target, ...)`` w.r.t. pred: ``-q``
    where r > 0, ``1 - q`` where r < 0 and ``0.5 - q`` at r == 0 (torch's autograd of
    ``torch.maximum`` splits a tie evenly); with ``wrt``, the target's (the negation).
    Arguments as in :func:`mse_grad`.
    """,
)


SOFT_MARGIN = Loss(
    name="soft_margin", family="elementwise", inputs=("input", "target"),
    differentiable=("input",),
    torch=Torch("soft_margin_loss", "torch.nn.functional.soft_margin_loss",
                "input, target, " + _LEGACY + "reduction='mean'",
                {"input": "input", "target": "target"}, "SoftMarginLoss", "SoftMarginLoss",
                _LEGACY + "reduction='mean'", not_differentiable=("target",),
                loss_dtype="input"),
    make_inputs=lambda rng, dtype, params, shape: (
        (rng.standard_normal(shape).astype(dtype) * params.get("scale", 2.0),
         (np.where(rng.random(shape) < 0.5, -1.0, 1.0) * params.get("label", 1.0))
         .astype(dtype)), {}),
    loss_shape=_same_shape,
    cases=(Case("labels", {}), Case("large", {"scale": 40.0}),
           Case("real-labels", {"label": 0.7})),
    bench=True, bench_inputs=("pred", "signs"), kernel="soft_margin",
    doc="""Soft margin loss, as torch.nn.functional.soft_margin_loss: per element
    ``log(1 + exp(-target * input))``, the two-class logistic loss on labels of +-1.
    input and target broadcast. reduction and num_threads as in :func:`mse`.
    """,
    grad_doc="""Gradient of ``grad_output * soft_margin(input, target, ...)`` w.r.t. the
    input: ``-target * sigmoid(-target * input)``; the target is not differentiated, as
    torch's. Arguments as in :func:`mse_grad`.
    """,
)


# --- preference and distillation (issue 16): bradley_terry, dpo, kl_div -------------------------

def _margin(value):
    """bradley_terry's margin: a finite number, or an array of them."""
    margin = as_array(value, "margin")
    if margin.dtype.kind not in "biuf" and not is_bfloat16(margin.dtype):
        raise TypeError(f"margin: expected a number or an array of numbers, got {value!r}")
    if not np.all(np.isfinite(margin.astype(np.float64))):
        raise ValueError("margin: expected finite values, got "
                         f"{margin if margin.ndim == 0 else margin[~np.isfinite(margin)][:3]}")
    return margin


DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo")


def _loss_type(value):
    if not isinstance(value, str):
        raise TypeError(f"loss_type: expected one of {DPO_LOSS_TYPES}, got {value!r}")
    if value not in DPO_LOSS_TYPES:
        raise ValueError(f"loss_type: expected one of {DPO_LOSS_TYPES}, got {value!r}")
    return value


def _label_smoothing(value):
    return real_scalar(value, "label_smoothing", low=0.0, high=0.5)


def _dpo_params(options):
    from fastloss._kernels import DPO_LOSS_TYPES as codes

    return (options["beta"], codes[options["loss_type"]], options["label_smoothing"])


def _dpo_prepare(arrays, options):
    """TRL ignores label_smoothing for the hinge and ipo losses, with a warning; here it
    is an error, so that a setting never silently does nothing."""
    if options["label_smoothing"] and options["loss_type"] != "sigmoid":
        raise ValueError(f"label_smoothing: only loss_type='sigmoid' takes it (conservative "
                         f"DPO), got {options['label_smoothing']} with "
                         f"loss_type={options['loss_type']!r}")
    return arrays


def bradley_terry_inputs(rng, dtype, params, shape):
    """Rewards of the chosen and rejected answers (standard deviation ``scale``, default
    2) and a margin: a number, or a layout name ("full", "row") for an array in [0, 1.5]."""
    scale = params.get("scale", 2.0)
    chosen = (rng.standard_normal(shape) * scale).astype(dtype)
    rejected = (rng.standard_normal(shape) * scale).astype(dtype)
    options = {}
    margin = params.get("margin")
    if isinstance(margin, str):
        options["margin"] = random_factor(rng, margin, shape, dtype, 0.0, 1.5)
    elif margin is not None:
        options["margin"] = margin
    return (chosen, rejected), options


def dpo_inputs(rng, dtype, params, shape):
    """Sequence log-probabilities: the reference model's in [-300, -10], the policy's
    those moved by normal steps of ``spread`` (default 10), so that ``beta * logits``
    crosses every kink and saturation the cases' betas have."""
    spread = params.get("spread", 10.0)
    reference_chosen = -rng.uniform(10.0, 300.0, shape)
    reference_rejected = -rng.uniform(10.0, 300.0, shape)
    policy_chosen = reference_chosen + rng.normal(0.0, spread, shape)
    policy_rejected = reference_rejected + rng.normal(0.0, spread, shape)
    options = {key: value for key, value in params.items() if key != "spread"}
    return tuple(array.astype(dtype) for array in (
        policy_chosen, policy_rejected, reference_chosen, reference_rejected)), options


def kl_div_inputs(rng, dtype, params, shape):
    """input: log-probabilities (log-softmax of normal logits over the last axis);
    target: probabilities of other logits, or their logs with ``log_target``."""
    def log_softmax(logits):
        shifted = logits - logits.max(axis=-1, keepdims=True, initial=-np.inf)  # (or empty)
        return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))

    scale = params.get("scale", 1.0)
    input = log_softmax(rng.standard_normal(shape) * scale)
    log_target = log_softmax(rng.standard_normal(shape) * scale)
    options = {key: value for key, value in params.items() if key != "scale"}
    target = log_target if params.get("log_target") else np.exp(log_target)
    return (input.astype(dtype), target.astype(dtype)), options


BRADLEY_TERRY = Loss(
    name="bradley_terry", family="elementwise", inputs=("chosen", "rejected"),
    differentiable=("chosen", "rejected"),
    options=(Option("margin", 0.0, _margin, ((math.nan, ValueError), (math.inf, ValueError),
                                             ("1", TypeError)), array=True),),
    torch=Torch("bradley_terry", None, "chosen, rejected, margin=0.0, reduction='mean'",
                {"chosen": "chosen", "rejected": "rejected", "margin": "margin"},
                "BradleyTerryLoss", None, "margin=0.0, reduction='mean'",
                no_gradient=("margin",),
                doc="``margin`` is a number or a tensor that broadcasts to the pairs. ",
                note="torchrl's reward_model_loss, ``-F.logsigmoid(chosen - rejected - "
                     "margin)`` (TRL's RewardTrainer)"),
    make_inputs=bradley_terry_inputs, loss_shape=_same_shape,
    cases=(Case("plain", {}), Case("margin=0.5", {"margin": 0.5}),
           Case("margin-per-pair", {"margin": "full"}),
           Case("margin-per-row", {"margin": "row"}),
           Case("large", {"scale": 40.0})),
    bench=True, kernel="bradley_terry", factor="margin",
    doc="""Bradley-Terry loss of a reward model on preference pairs: per pair
    ``-log sigmoid(chosen - rejected - margin)``, evaluated as
    ``softplus(-(chosen - rejected - margin))`` with no overflow for rewards of any size.

    torchrl's ``reward_model_loss`` and TRL's ``RewardTrainer`` (whose dataset may give
    each pair a ``margin``).

    Parameters
    ----------
    chosen, rejected : array_like, float32 or float64
        The rewards of the preferred and the other answer; they broadcast.
    margin : float or array_like
        Finite; a number, or an array (one margin per pair, say) that broadcasts to the
        pairs' shape. Not differentiated.
    reduction : {"mean", "sum", "none"}
    num_threads : int, optional
    """,
    grad_doc="""Gradient of ``grad_output * bradley_terry(chosen, rejected, ...)`` w.r.t.
    ``chosen`` (``-sigmoid(-z)``, z = chosen - rejected - margin) and, with
    ``wrt="rejected"`` or ``("chosen", "rejected")``, ``rejected`` (``sigmoid(-z)``).
    Arguments as in :func:`mse_grad`.
    """,
)

DPO = Loss(
    name="dpo", family="elementwise",
    inputs=("policy_chosen", "policy_rejected", "reference_chosen", "reference_rejected"),
    differentiable=("policy_chosen", "policy_rejected", "reference_chosen",
                    "reference_rejected"),
    options=(Option("beta", 0.1, _positive("beta"), _BAD_POSITIVE),
             Option("loss_type", "sigmoid", _loss_type,
                    (("square", ValueError), ("", ValueError), (1, TypeError))),
             Option("label_smoothing", 0.0, _label_smoothing,
                    ((-0.1, ValueError), (0.6, ValueError), (math.nan, ValueError),
                     ("0", TypeError)))),
    torch=Torch("dpo", None,
                "policy_chosen, policy_rejected, reference_chosen, reference_rejected, "
                "beta=0.1, loss_type='sigmoid', label_smoothing=0.0, reduction='mean'",
                {"policy_chosen": "policy_chosen", "policy_rejected": "policy_rejected",
                 "reference_chosen": "reference_chosen",
                 "reference_rejected": "reference_rejected", "beta": "beta",
                 "loss_type": "loss_type", "label_smoothing": "label_smoothing"},
                "DPOLoss", None,
                "beta=0.1, loss_type='sigmoid', label_smoothing=0.0, reduction='mean'",
                doc=("The reference log-probabilities are usually computed under "
                     "``torch.no_grad()`` (TRL's); where they require grad they get "
                     "theirs. "),
                note="TRL's DPOTrainer.dpo_loss (loss_type sigmoid, hinge, ipo)"),
    make_inputs=dpo_inputs, loss_shape=_same_shape,
    cases=(Case("sigmoid", {}), Case("sigmoid+smoothing", {"label_smoothing": 0.2}),
           Case("sigmoid-beta=2", {"beta": 2.0}),
           Case("hinge", {"loss_type": "hinge"}),
           Case("hinge-beta=0.5", {"loss_type": "hinge", "beta": 0.5}),
           Case("ipo", {"loss_type": "ipo"}),
           Case("ipo-beta=0.01", {"loss_type": "ipo", "beta": 0.01})),
    bench=True, bench_inputs=("pred", "target", "log_probs", "positive"), kernel="dpo",
    params=_dpo_params, prepare=_dpo_prepare,
    doc="""Direct preference optimisation (Rafailov et al. 2023) from sequence
    log-probabilities, as TRL's ``DPOTrainer.dpo_loss``: per pair, with
    ``logits = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected)``,

    - ``"sigmoid"``: ``-(1 - ls) log sigmoid(beta logits) - ls log sigmoid(-beta logits)``
      (ls = label_smoothing: conservative DPO; 0 is DPO),
    - ``"hinge"``: ``relu(1 - beta logits)`` (SLiC),
    - ``"ipo"``: ``(logits - 1 / (2 beta))**2`` (IPO; TRL feeds it length-averaged
      log-probabilities, :func:`sequence_log_probs` with ``average=True``).

    Parameters
    ----------
    policy_chosen, policy_rejected, reference_chosen, reference_rejected : array_like
        Sequence log-probabilities (float32 or float64), one per pair; they broadcast.
    beta : float
        > 0 (TRL's default 0.1).
    loss_type : {"sigmoid", "hinge", "ipo"}
    label_smoothing : float
        In [0, 0.5] (TRL's range), for ``"sigmoid"`` only: a non-zero value with the
        other loss types is a ValueError (TRL ignores it with a warning).
    reduction : {"mean", "sum", "none"}
    num_threads : int, optional
    """,
    grad_doc="""Gradient of ``grad_output * dpo(...)`` w.r.t. ``policy_chosen`` and, with
    ``wrt``, any of the four inputs. With s the derivative w.r.t. ``logits``
    (``beta (ls - sigmoid(-beta logits))``, ``-beta`` where the hinge is active and 0
    elsewhere, or ``2 (logits - 1 / (2 beta))``): ``s`` for policy_chosen and
    reference_rejected, ``-s`` for policy_rejected and reference_chosen. TRL treats the
    reference's log-probabilities as constants; their gradients are there for a caller
    who does not. Arguments as in :func:`mse_grad`.
    """,
)

KL_DIV = Loss(
    name="kl_div", family="elementwise", inputs=("input", "target"),
    differentiable=("input", "target"),
    options=(Option("log_target", False, _boolean("log_target"), _BAD_BOOL),),
    torch=Torch("kl_div", "torch.nn.functional.kl_div",
                "input, target, " + _LEGACY + "reduction='mean', log_target=False",
                {"input": "input", "target": "target", "log_target": "log_target"},
                "KLDivLoss", "KLDivLoss", _LEGACY + "reduction='mean', log_target=False",
                doc=("``reduction='batchmean'`` divides the sum by ``input.size(0)``. "
                     "Unlike torch, ``reduction='mean'`` does not warn. ")),
    make_inputs=kl_div_inputs, loss_shape=_same_shape,
    cases=(Case("probs", {}), Case("log_target", {"log_target": True}),
           Case("sharp", {"scale": 6.0}),
           Case("sharp+log_target", {"scale": 6.0, "log_target": True})),
    bench=True, bench_inputs=("log_probs", "probs"), kernel="kl_div",
    params=lambda options: (options["log_target"],), reductions=("batchmean",),
    doc="""Pointwise KL divergence, as torch.nn.functional.kl_div: ``input`` holds
    log-probabilities, ``target`` probabilities (``log_target=False``) or
    log-probabilities; per element::

        log_target False:  target * (log(target) - input)   (0 where target == 0)
        log_target True:   exp(target) * (target - input)

    torch's ``xlogy(target, target) - target * input``: 0 log 0 = 0, a negative target
    gives NaN, and a zero target against an infinite input NaN (0 * inf), as in torch.
    The factored form does not subtract the large products torch's does where ``log(target)``
    and ``input`` agree; the rounding of ``log(target)`` remains (docs/accuracy.rst,
    "Results whose terms cancel").

    Parameters
    ----------
    input : array_like, float32 or float64
    target : array_like; broadcasts with input
    reduction : {"mean", "batchmean", "sum", "none"}
        "mean" averages over every element (torch's, which warns that it is not the
        divergence); "batchmean" divides the sum by ``input.shape[0]``, the KL divergence
        per sample of a (batch, classes) input.
    log_target : bool
    num_threads : int, optional
    """,
    grad_doc="""Gradient of ``grad_output * kl_div(input, target, ...)`` w.r.t. the input
    (``-target``, or ``-exp(target)``) and, with ``wrt="target"`` or ``("input",
    "target")``, the target (``log(target) + 1 - input``, NaN where target == 0 as
    torch's autograd gives; or ``exp(target) (target - input + 1)``). Arguments as in
    :func:`mse_grad`; for "batchmean" grad_output is a scalar and the gradient is divided
    by ``input.shape[0]``.
    """,
)


# --- box regression (fastloss/box.py, csrc/box.c): pairs of (..., 4) boxes ---------------------

def box_inputs(rng, dtype, params, shape):
    """Pairs of boxes (x1, y1, x2, y2) of shape ``shape`` (..., 4): corners in [0, 10],
    sides in [0.5, 5], the second box the first moved and resized by about a side, so
    that pairs overlap, contain each other and miss each other."""
    lead = shape[:-1]
    corner = rng.uniform(0.0, 10.0, lead + (2,))
    size = rng.uniform(0.5, 5.0, lead + (2,))
    boxes1 = np.concatenate([corner, corner + size], axis=-1)
    shift = rng.normal(0.0, params.get("spread", 1.5), lead + (2,))
    scale = rng.uniform(0.5, 1.5, lead + (2,))
    corner2 = corner + shift
    boxes2 = np.concatenate([corner2, corner2 + size * scale], axis=-1)
    options = {key: value for key, value in params.items() if key != "spread"}
    return (boxes1.astype(dtype), boxes2.astype(dtype)), options


def _box_loss_shape(shape):
    return tuple(shape[:-1])


def _box(name, torch_name, kernel, module):
    return Loss(
        name=name, family="box", inputs=("boxes1", "boxes2"),
        differentiable=("boxes1", "boxes2"),
        options=(Option("eps", 1e-7, _positive("eps"), _BAD_POSITIVE),),
        torch=Torch(torch_name, f"torchvision.ops.{torch_name}",
                    "boxes1, boxes2, reduction='none', eps=1e-7",
                    {"boxes1": "boxes1", "boxes2": "boxes2", "eps": "eps"},
                    module, None, "reduction='mean', eps=1e-7",
                    doc=("torchvision's default reduction, 'none', is this function's too "
                         "(the module's is 'mean'). "),
                    note="the localization loss of detectors"),
        make_inputs=box_inputs, loss_shape=_box_loss_shape,
        cases=(Case("overlapping", {}), Case("far", {"spread": 6.0}),
               Case("eps=1e-3", {"eps": 1e-3})),
        check_shape=(400, 4), bench=True, bench_inputs=("boxes1", "boxes2"), kernel=kernel)


GIOU_LOSS = _box("giou_loss", "generalized_box_iou_loss", "giou", "GIoULoss")
DIOU_LOSS = _box("diou_loss", "distance_box_iou_loss", "diou", "DIoULoss")
CIOU_LOSS = _box("ciou_loss", "complete_box_iou_loss", "ciou", "CIoULoss")


# ----------------------------------------------------------------------------------------
# The other families: their functions are written by hand (fastloss/cross_entropy.py,
# fastloss/contrastive.py), each with options of its own semantics; the entries say what
# the generic consumers need (names, inputs, gradients, torch forms, tolerance class).
# ----------------------------------------------------------------------------------------

CROSS_ENTROPY = Loss(
    name="cross_entropy", family="cross_entropy", inputs=("logits", "target"),
    differentiable=("logits",),
    options=(_WEIGHT, Option("ignore_index", -100), Option("label_smoothing", 0.0),
             Option("z_loss", 0.0), Option("softcap", None)),
    torch=Torch("cross_entropy", "torch.nn.functional.cross_entropy", "", {},
                "CrossEntropyLoss", "CrossEntropyLoss",
                note="with the class axis moved from dim 1 to the last"),
)

LINEAR_CROSS_ENTROPY = Loss(
    name="linear_cross_entropy", family="linear_cross_entropy",
    inputs=("hidden", "classifier", "target"),
    differentiable=("hidden", "classifier", "bias"),
    options=(Option("bias", None, array=True), _WEIGHT, Option("ignore_index", -100),
             Option("label_smoothing", 0.0), Option("z_loss", 0.0), Option("softcap", None)),
    tolerance="products",
    torch=Torch("linear_cross_entropy", "torch.nn.functional.linear_cross_entropy", "", {},
                "LinearCrossEntropyLoss", "LinearCrossEntropyLoss",
                note="(``F.linear`` + ``F.cross_entropy`` for ``z_loss`` and ``softcap``); "
                     "the logits are never formed"),
)

LINEAR_TOKEN_LOG_PROBS = Loss(
    name="linear_token_log_probs", family="linear_cross_entropy",
    inputs=("hidden", "classifier", "target"),
    differentiable=("hidden", "classifier", "bias"),
    options=(Option("bias", None, array=True), Option("temperature", 1.0),
             Option("ignore_index", -100), Option("return_entropy", False)),
    tolerance="products",
    torch=Torch("linear_token_log_probs", None, "", {}, "LinearTokenLogProbs", note=(
        "``F.linear`` + ``log_softmax(logits / T).gather(-1, target)`` and the entropy; "
        "the logits are never formed")),
)

_METRIC = Option("metric", "euclidean")

PAIRWISE_DISTANCE = Loss(name="pairwise_distance", family="contrastive", inputs=("x", "y"),
                         differentiable=("x", "y"), options=(_METRIC,),
                         torch=Torch("", "torch.cdist", "", {}, "", note=(
                             "(euclidean), its square (sqeuclidean), ``1 - F.normalize(x) @ "
                             "F.normalize(y).T`` (cosine)")))
CONTRASTIVE = Loss(name="contrastive", family="contrastive", inputs=("x1", "x2", "label"),
                   differentiable=("x1", "x2"),
                   options=(Option("margin", 1.0), _METRIC),
                   torch=Torch("contrastive", None, "", {}, "ContrastiveLoss",
                               note="the formula over ``F.pairwise_distance``"))
CONTRASTIVE_PAIRWISE = Loss(name="contrastive_pairwise", family="contrastive",
                            inputs=("embeddings", "labels"), differentiable=("embeddings",),
                            options=(Option("pos_margin", 0.0), Option("neg_margin", 1.0),
                                     _METRIC),
                            tolerance="products",
                            torch=Torch("contrastive_pairwise", None, "", {},
                                        "ContrastivePairwiseLoss", note=(
                                            "``torch.cdist`` and the formula over the pairs "
                                            "``torch.triu_indices(N, N, 1)``")))
INFO_NCE = Loss(name="info_nce", family="contrastive", inputs=("query", "key"),
                differentiable=("query", "key"),
                options=(Option("temperature", 0.05), Option("symmetric", False),
                         Option("precision", "input")),
                tolerance="products",
                torch=Torch("info_nce", None, "", {}, "InfoNCELoss", note=(
                    "``F.cross_entropy`` of the similarities of rows normalised by "
                    "``F.normalize`` (sentence-transformers' MultipleNegativesRankingLoss; "
                    "CLIP)")))
TRIPLET_MARGIN = Loss(name="triplet_margin", family="contrastive",
                      inputs=("anchor", "positive", "negative"),
                      differentiable=("anchor", "positive", "negative"),
                      options=(Option("margin", 1.0), Option("p", 2.0), Option("eps", 1e-6),
                               Option("swap", False)),
                      torch=Torch("triplet_margin_loss",
                                  "torch.nn.functional.triplet_margin_loss", "", {},
                                  "TripletMarginLoss", "TripletMarginLoss"))


# --- objectives of language models over the vocabulary (fastloss/distill.py, csrc/vocab.c) ---

TOKEN_LOG_PROBS = Loss(
    name="token_log_probs", family="distill", inputs=("logits", "target"),
    differentiable=("logits",),
    options=(Option("temperature", 1.0), Option("ignore_index", -100),
             Option("return_entropy", False)),
    torch=Torch("token_log_probs", None, "", {}, "TokenLogProbs", note=(
        "``log_softmax(logits / T).gather(-1, target)`` and the entropy "
        "``-(softmax * log_softmax).sum(-1)`` (TRL's and torchrl's log-probs of sampled "
        "tokens)")))
DISTILL_KL = Loss(
    name="distill_kl", family="distill", inputs=("student_logits", "teacher_logits"),
    differentiable=("student_logits", "teacher_logits"),
    options=(Option("temperature", 1.0), Option("direction", "forward"), Option("target"),
             Option("ignore_index", -100)),
    torch=Torch("distill_kl", None, "", {}, "DistillKLLoss", note=(
        "``F.kl_div`` of ``log_softmax(logits / T)`` of both models with "
        "``log_target=True``, reduction \"batchmean\" over the rows not ignored")))
JSD = Loss(
    name="jsd", family="distill", inputs=("student_logits", "teacher_logits"),
    differentiable=("student_logits", "teacher_logits"),
    options=(Option("beta", 0.5), Option("temperature", 1.0), Option("target"),
             Option("ignore_index", -100)),
    torch=Torch("jsd", None, "", {}, "JSDLoss", note=(
        "Liger-Kernel's ``LigerJSD`` and TRL's ``generalized_jsd_loss`` over "
        "``log_softmax(logits / T)``")))

# sequence log-probabilities (fastloss/preference.py, csrc/sequence.c): rows of tokens
SEQUENCE_LOG_PROBS = Loss(
    name="sequence_log_probs", family="sequence", inputs=("token_log_probs", "mask"),
    differentiable=("token_log_probs",), options=(Option("average", False),),
    torch=Torch("sequence_log_probs", None, "", {}, "", note=(
        "TRL's ``(per_token_logps * loss_mask).sum(-1)``, and its ``average_log_prob`` "
        "divided by ``loss_mask.sum(-1)``")))


LOSSES = {loss.name: loss for loss in (
    CROSS_ENTROPY, LINEAR_CROSS_ENTROPY, LINEAR_TOKEN_LOG_PROBS,
    MSE, L1, HUBER, SMOOTH_L1, BCE_WITH_LOGITS,
    SIGMOID_FOCAL, MARGIN_RANKING, POISSON_NLL, GAUSSIAN_NLL, PINBALL, SOFT_MARGIN,
    BRADLEY_TERRY, DPO, KL_DIV,
    GIOU_LOSS, DIOU_LOSS, CIOU_LOSS,
    PAIRWISE_DISTANCE, CONTRASTIVE, CONTRASTIVE_PAIRWISE, INFO_NCE, TRIPLET_MARGIN,
    TOKEN_LOG_PROBS, DISTILL_KL, JSD,
    SEQUENCE_LOG_PROBS,
)}


def family(name):
    """The entries of family ``name`` ("cross_entropy", "linear_cross_entropy",
    "elementwise", "box", "contrastive", "distill", "sequence"), in the registry's order."""
    return tuple(loss for loss in LOSSES.values() if loss.family == name)
