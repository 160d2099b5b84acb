"""The two absolute terms docs/accuracy.rst adds to the accuracy contract of loss_specs.py.

``assert_close_contract`` bounds an error by ``rtol |r| + floor max|r|``.  Two cases need an
absolute term as well, and the docs state both:

- **A gradient whose reference is zero in every entry** (exactly, or up to its own
  float64 rounding).  ``max|r|`` then says nothing about the size of the numbers the result was
  computed from: a cosine gradient of rows of one feature is exactly 0, yet computed from
  terms of size ``1 / |x|`` that cancel; the gradient of ``|x - y1| + |x - y2|`` with
  ``y1 < x < y2`` is the cancellation of two unit slopes.  The result may then be a
  rounding of those terms away from zero: ``16 u S`` (``zero_floor``).
- **Losses that multiply matrices** (``info_nce``): the standard dot-product bound of its
  products, carried through the loss and the normalisation's backward
  (``info_nce_products_bound``).
- **Gradients that sum terms** (``triplet_margin``: the anchor's two distances, the
  swap's third, the elements of a broadcast axis): added in another order than torch's
  autograd (and the reference) adds them, each term rounded its own way; where the terms
  cancel, the two differ by a rounding of the terms' size (``triplet_terms_bound``).
- **Gradients that subtract a total** (the distillation losses' ``w_c (h_c - H)``, H the
  w-weighted mean of h): where a class's gap equals the mean, the entry is a rounding
  of the terms' size (``distill_terms_bound``).
- **Results whose terms cancel** (``bce_with_logits``, ``poisson_nll``, ``gaussian_nll``,
  ``kl_div``, ``dpo``'s smoothed sigmoid slope: an element that is a difference of an
  ``exp`` or ``log`` and another term, or a reduced loss whose weighted terms have both
  signs): the kernels' ``exp`` and ``log`` round otherwise than NumPy's, so where the
  terms cancel the two differ by a rounding of the terms' size (``cancelling_terms_bound``).

None widens a bound the contract already gives: the first applies only where that bound
is 0, the others are the contract of those losses as the docs write it.  And one rule
for results beyond a dtype's normal range (docs/accuracy.rst): the reference is
compared as the dtype rounds it, and a result below its smallest normal number may
also be 0, where the computation in that dtype underflows (``assert_close_at_scale``).
"""

import numpy as np

from fastloss import _contract, reference
from fastloss.reference._contrastive import _triplet_grad_magnitude
from fastloss.reference._elementwise import (_bce_with_logits_magnitudes,
                                             _gaussian_nll_magnitudes, _poisson_nll_magnitudes)
from fastloss.reference._preference import _dpo_magnitudes, _kl_div_magnitudes
from fastloss.reference._vocab import _direction_beta, _distill_grad_magnitude
from loss_specs import CONTRACT

#: unit roundoff u of each dtype (half an ulp of 1)
UNIT_ROUNDOFF = {np.dtype(np.float32): 2.0**-24, np.dtype(np.float64): 2.0**-53}

#: roundings of the scale S a zero result may carry (docs/accuracy.rst)
ZERO_FLOOR_ROUNDINGS = 16

#: F.normalize's eps: below it a row's normalisation is linear, x / eps
NORMALIZE_EPS = 1e-12


def _largest_finite(values, default=0.0):
    values = np.abs(np.asarray(values, np.float64))
    values = values[np.isfinite(values)]
    return float(values.max()) if values.size else default


def zero_floor(dtype, *, loss, wrt, grad_output=1.0):
    """``16 u S`` of docs/accuracy.rst, elementwise, for a gradient whose reference is zero
    in every entry (``u`` the unit roundoff of ``dtype``).

    ``S = |grad_output| |L| / max(|x_i|, 1e-12)``: ``L`` the loss (its largest finite
    entry), ``|x_i|`` the norm of the row of the differentiated input ``x`` (its last axis)
    that the gradient entry belongs to.  A loss L of inputs of size |x| has gradients of
    size L / |x|; a zero result is the cancellation of terms of that size (up to 1 / eps for
    a zero row, where the normalisation of the cosine and info_nce is x / eps).
    """
    scale = _largest_finite(grad_output, 1.0) * _largest_finite(loss)
    wrt = np.asarray(wrt, np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        norm = np.abs(wrt) if wrt.ndim == 0 else np.sqrt(np.sum(wrt * wrt, axis=-1,
                                                                keepdims=True))
    norm = np.where(np.isfinite(norm), norm, 1.0)
    return (ZERO_FLOOR_ROUNDINGS * UNIT_ROUNDOFF[np.dtype(dtype)] * scale
            / np.maximum(norm, NORMALIZE_EPS))


def info_nce_products_bound(query, key, dtype, *, temperature, symmetric=False,
                            reduction="mean", grad_output=1.0):
    """docs/accuracy.rst's bound for info_nce's products, computed in ``dtype``'s
    precision (fastloss._contract.info_nce_products_bound, which has the formulas):
    ``(loss, grad_query, grad_key)``, each to be added to the contract's bound."""
    return _contract.info_nce_products_bound(query, key, temperature=temperature,
                                             symmetric=symmetric, reduction=reduction,
                                             grad_output=grad_output, dtype=dtype)


def triplet_terms_bound(anchor, positive, negative, **options):
    """docs/accuracy.rst's bound for triplet_margin's gradients, each entry a sum of terms
    (the anchor's two distances, the swap's third, the elements of a broadcast axis):
    ``16 u sum|t|`` over the terms ``t`` the entry adds (their magnitudes from the
    reference's own terms, ``u`` the input's dtype's), one array per input. Where the terms cancel, two orders of
    adding them (fastloss's and autograd's) and two roundings of each term differ by
    that much; for an entry of one term it is 16 u of the entry itself, which the
    contract's rtol already covers."""
    inputs = (anchor, positive, negative)
    with np.errstate(all="ignore"):
        magnitudes = _triplet_grad_magnitude(*(np.asarray(a, np.float64) for a in inputs),
                                             **options)
    return [ZERO_FLOOR_ROUNDINGS * UNIT_ROUNDOFF[np.asarray(a).dtype]
            * np.where(np.isfinite(m), m, 0.0) for a, m in zip(inputs, magnitudes)]


def distill_terms_bound(name, student, teacher, grad_output=1.0, *, wrt="student_logits",
                        **options):
    """docs/accuracy.rst's bound for the distillation gradients that subtract a total
    (``s w_c (h_c - H)``): ``16 u`` times the size of the terms, ``|s| w_c (|h_c| +
    sum w |h| / sum w)`` (the reference's, ``u`` the logits' dtype's), one array per name
    in ``wrt``.  Where the difference is near the terms' size it is within the contract's
    rtol already; where the terms cancel (a class whose gap equals the mean) each entry
    may miss by that rounding of the terms."""
    options = dict(options)
    beta = _direction_beta(options.pop("direction", "forward")) if name == "distill_kl" \
        else options.pop("beta", 0.5)
    with np.errstate(all="ignore"):
        magnitudes = _distill_grad_magnitude(np.asarray(student, np.float64),
                                             np.asarray(teacher, np.float64), grad_output,
                                             beta=beta, wrt=wrt, **options)
    u = UNIT_ROUNDOFF[np.asarray(student).dtype]
    return [ZERO_FLOOR_ROUNDINGS * u * np.where(np.isfinite(m), m, 0.0) for m in magnitudes]


#: the losses whose elements (or weighted terms) may cancel terms that the kernels and
#: NumPy round differently, and the reference's sizes of those terms
CANCELLING_TERMS = {"bce_with_logits": _bce_with_logits_magnitudes,
                    "gaussian_nll": _gaussian_nll_magnitudes,
                    "poisson_nll": _poisson_nll_magnitudes, "kl_div": _kl_div_magnitudes,
                    "dpo": _dpo_magnitudes}


def cancelling_terms_bound(name, arrays, options, wrt):
    """docs/accuracy.rst's bound for results whose terms cancel: ``16 u_64`` times the size
    of the terms each result is formed from (the reference's, reduced and differentiated
    as the results are), ``u_64 = 2**-53`` whatever the inputs' dtype, because every
    dtype forms such terms in float64 where they may cancel (a float32 element whose own
    bound does not prove the contract is formed again in float64).  ``(loss, [one array
    per name in wrt])``, zeros for a loss whose terms the kernels round as NumPy does."""
    names = (wrt,) if isinstance(wrt, str) else tuple(wrt)
    sizes = CANCELLING_TERMS.get(name)
    if sizes is None:
        return 0.0, [0.0] * len(names)
    with np.errstate(all="ignore"):
        loss, grads = sizes(*(np.asarray(a, np.float64) if np.asarray(a).dtype.kind == "f"
                              else a for a in arrays), wrt=names, **options)
    scale = ZERO_FLOOR_ROUNDINGS * UNIT_ROUNDOFF[np.dtype(np.float64)]
    finite = lambda m: np.where(np.isfinite(m), m, 0.0)  # noqa: E731
    return scale * finite(np.asarray(loss, np.float64)), [scale * finite(g) for g in grads]


def rounded_outside_normal_range(ref, dtype):
    """The float64 reference, each entry beyond ``dtype``'s normal range rounded to
    ``dtype`` (docs/accuracy.rst): above its largest number that is the infinity IEEE
    rounding gives (a float32 loss of 1e57 is inf), below its smallest normal number the
    nearest of its subnormal numbers or zero (a float32 loss of 6e-55 is 0, one of
    3.75167e-41 the subnormal 3.75170e-41), whose spacing no relative bound can beat."""
    ref = np.asarray(ref, np.float64)
    info = np.finfo(dtype)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        outside = np.isfinite(ref) & ((np.abs(ref) > info.max) | (np.abs(ref) < info.tiny))
        if not outside.any():
            return ref
        return np.where(outside, ref.astype(dtype).astype(np.float64), ref)


def assert_close_at_scale(actual, ref, dtype, kind, *, loss=None, wrt=None, grad_output=1.0,
                          extra=0.0, what=None):
    """The contract of docs/accuracy.rst for a ``kind`` ("loss" or "grad") result from
    inputs of ``dtype``: ``rtol |r| + floor max|r|``, plus ``extra`` (the bound of a loss
    that multiplies matrices, or of a gradient that sums terms; or 0), plus ``zero_floor`` where the reference is zero
    in every finite entry of a gradient, exactly or up to its own rounding (within the
    float64 zero floor). NaN and infinities must match the reference exactly."""
    actual = np.asarray(actual, np.float64)
    # a result below the dtype's smallest normal number may also be 0, where the
    # computation in that dtype underflows (docs/accuracy.rst)
    with np.errstate(invalid="ignore"):
        underflow = (actual == 0) & (np.abs(np.asarray(ref, np.float64))
                                     < np.finfo(dtype).tiny)
    ref = rounded_outside_normal_range(ref, dtype)
    what = what or kind
    assert actual.shape == ref.shape, f"{what}: shape {actual.shape} != reference {ref.shape}"
    nan_ref, nan_actual = np.isnan(ref), np.isnan(actual)
    if not np.array_equal(nan_ref, nan_actual):
        index = tuple(np.argwhere(nan_ref != nan_actual)[0])
        raise AssertionError(f"{what}: NaN positions differ from the reference; first at "
                             f"{index}: actual {actual[index]!r}, reference {ref[index]!r}")
    infinite = np.isinf(ref)
    if not np.array_equal(actual[infinite], ref[infinite]):
        raise AssertionError(f"{what}: infinities differ from the reference")
    finite = np.isfinite(ref)
    if not finite.any():
        return
    tolerance = CONTRACT[(np.dtype(dtype), kind)]
    largest = float(np.max(np.abs(ref[finite])))
    absolute = np.asarray(extra, np.float64)
    zero_reference = False
    if kind == "grad":
        scale = dict(loss=loss, wrt=wrt, grad_output=grad_output)
        with np.errstate(invalid="ignore"):
            zero_reference = bool(np.all(~finite | (np.abs(ref) <= zero_floor(np.float64,
                                                                              **scale))))
        if zero_reference:
            absolute = absolute + zero_floor(dtype, **scale)
    bound = tolerance.rtol * np.abs(ref) + tolerance.floor * largest + absolute
    with np.errstate(invalid="ignore"):
        error = np.abs(actual - ref)
    bad = finite & ~(error <= bound) & ~underflow
    if bad.any():
        ratio = np.where(bad, error / np.where(bound > 0, bound, np.finfo(float).tiny), 0.0)
        worst = np.unravel_index(np.argmax(ratio), ratio.shape)
        extra = (" + the zero floor" if zero_reference else "") + (
            " + the loss's own bound" if np.any(extra) else "")
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {ref.size} elements exceed the bound ({tolerance}"
            f"{extra}); worst at {tuple(int(i) for i in worst)}: actual {actual[worst]!r}, "
            f"reference {ref[worst]!r}, |error| {error[worst]:.3e} > bound "
            f"{np.broadcast_to(bound, ref.shape)[worst]:.3e}")
