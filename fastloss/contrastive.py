"""Pairwise distances and contrastive losses over embeddings (the public NumPy API).

``pairwise_distance``, ``contrastive``, ``contrastive_pairwise``, ``info_nce`` and
``triplet_margin``, each with its ``_grad`` and ``_value_and_grad`` twins. Gradients are
w.r.t. every embedding input, as a tuple in argument order (one array when there is one
input). The kernels are in csrc/contrastive.c; ``fastloss.reference`` has the float64
oracle with the same semantics.

Metrics (``metric=``), for rows x and y:

- ``"euclidean"``: ``|x - y|``; ``"sqeuclidean"``: ``|x - y|**2``;
- ``"cosine"``: ``1 - x^ . y^`` with ``x^ = x / max(|x|, 1e-12)``, torch's
  ``F.normalize``: a zero vector has cosine distance 1 to everything and a finite
  gradient (``1e12`` times the other unit vector, as torch gives); never a NaN.

Zero distances follow the torch function of the same shape: the all-pairs functions
(``pairwise_distance``, ``contrastive_pairwise``) are ``torch.cdist``, which has no eps
and gives a euclidean distance of 0 no gradient (duplicated points do not push each
other apart); the functions of row pairs (``contrastive``, ``triplet_margin``) are
``F.pairwise_distance``, which adds ``eps`` (1e-6) to the difference, so a zero
difference has the finite gradient of ``|eps * ones|``.

Embeddings are 2-d, (N, D), float32 or float64, or float16 / ml_dtypes.bfloat16 (read in
place, computed in float32 and float64 as float32 rows; the losses and distances float32,
each gradient rounded once to the half type, or float32 with ``grad_dtype="float32"``;
docs/accuracy.rst, "Half precision"); mixed inputs compute in their promotion (float64,
or float32 for a half type beside float32 or another half type; each gradient has its
input's dtype); any strides. ``triplet_margin`` takes torch's shapes
instead: any number of dimensions (the same for its three inputs), broadcasting, the
features on the last axis. The all-pairs functions form the Gram
matrix of the (centred or normalised) rows with one BLAS product in float64, make one
fused C pass over the pairs for distances, losses and gradient coefficients W, and form
the gradient with one more product ``W @ rows`` in the input's dtype (see csrc/contrastive.c
for the error model that decides which close pairs are recomputed from the rows). BLAS
products use NumPy's BLAS threads, which ``num_threads`` does not set.
"""
import math
import numbers

import numpy as np

from fastloss import _kernels
from fastloss._all_pairs import NORMALIZE_EPS, _AllPairs
from fastloss._config import resolve_num_threads
from fastloss._validation import (
    as_array,
    float_array,
    grad_dtype_arg,
    grad_output_arg,
    is_bfloat16,
    is_half,
    out_arg,
    promote_float,
    real_array,
    real_scalar,
    reduction_arg,
    rows_view,
)
from fastloss.elementwise import _sum_to_shape

__all__ = [
    "contrastive", "contrastive_grad", "contrastive_value_and_grad",
    "contrastive_pairwise", "contrastive_pairwise_grad", "contrastive_pairwise_value_and_grad",
    "info_nce", "info_nce_grad", "info_nce_value_and_grad",
    "pairwise_distance", "pairwise_distance_grad", "pairwise_distance_value_and_grad",
    "triplet_margin", "triplet_margin_grad", "triplet_margin_value_and_grad",
]

METRICS = ("euclidean", "sqeuclidean", "cosine")

# torch.nn.functional.pairwise_distance's eps, added to row-pair differences.
PAIRWISE_EPS = 1e-6


# ----------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------

def _embeddings(value, name):
    array = float_array(value, name, half=True)
    if array.ndim != 2:
        raise ValueError(f"{name}: expected a 2-d array (N, D), got shape {array.shape}")
    if array.shape[1] == 0:
        raise ValueError(f"{name}: expected at least one feature, got shape {array.shape}")
    if array.shape[1] > 1 and array.strides[1] != array.itemsize:
        array = np.ascontiguousarray(array)
    if array.strides[0] % array.itemsize:
        array = np.ascontiguousarray(array)
    return array


def _embedding_set(named, *, same_rows=True):
    """Check and convert named embedding inputs; returns (arrays in the common dtype,
    the inputs' own dtypes, the common dtype)."""
    arrays = [_embeddings(value, name) for name, value in named]
    first_name, first = named[0][0], arrays[0]
    for (name, _), array in zip(named[1:], arrays[1:]):
        if array.shape[1] != first.shape[1]:
            raise ValueError(f"{name}: expected {first.shape[1]} features (the D of "
                             f"{first_name}), got shape {array.shape}")
        if same_rows and array.shape[0] != first.shape[0]:
            raise ValueError(f"{name}: expected {first.shape[0]} rows (the N of {first_name}), "
                             f"got shape {array.shape}")
    dtypes = [array.dtype for array in arrays]
    dtype = _common_dtype(dtypes)
    arrays = [array if array.dtype == dtype else array.astype(dtype) for array in arrays]
    return arrays, dtypes, dtype


def _common_dtype(dtypes):
    """The dtype a call computes in: the inputs' one dtype, else their promotion
    (float16 with bfloat16, and a half type with float32, give float32)."""
    dtype = dtypes[0]
    for other in dtypes[1:]:
        if other != dtype:
            dtype = promote_float(dtype, other)
    return np.dtype(dtype)


def _value_dtype(dtype):
    """The dtype of the values (losses, distances) of a call computed in `dtype`: float32
    for the half types (the losses meet the float32 contract), else `dtype`."""
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if is_half(dtype) else dtype


def _grad_dtypes(grad_dtype, dtypes):
    """The gradients' dtypes: each input's (``grad_dtype`` None, or that dtype), or
    float32 (``grad_dtype="float32"``) for float16 / bfloat16 inputs."""
    return [grad_dtype_arg(grad_dtype, dtype) for dtype in dtypes]


def _kernel_grad_dtype(dtype, grad_dtypes):
    """The dtype the kernels write the gradients of a call computed in `dtype` in: that
    dtype, or float32 for half inputs whose gradients are all wanted in float32."""
    if is_half(dtype) and all(grad == np.float32 for grad in grad_dtypes):
        return np.dtype(np.float32)
    return dtype


def _half_kind(dtype):
    return "bfloat16" if is_bfloat16(dtype) else "float16"


def _round_into(target, source):
    """target[...] = source: into a half target rounded once (to nearest even) from the
    float32 or float64 values of source, else NumPy's same-kind copy."""
    if is_half(target.dtype) and source.dtype != target.dtype:
        values = np.ascontiguousarray(source, dtype=np.float64 if source.dtype == np.float64
                                      else np.float32).reshape(-1)
        bits = _kernels.half_store(_half_kind(target.dtype), values)
        target.view(np.uint16)[...] = bits.reshape(target.shape)
    else:
        np.copyto(target, source, casting="same_kind")


def _as_dtype(array, dtype):
    """`array` in `dtype` (a half dtype rounded once, as _round_into)."""
    if array.dtype == dtype:
        return array
    if is_half(dtype):
        result = np.empty(array.shape, dtype)
        _round_into(result, array)
        return result
    return array.astype(dtype)


def _metric_arg(metric):
    if not isinstance(metric, str) or metric not in METRICS:
        raise ValueError(f"metric: expected one of {METRICS}, got {metric!r}")
    return metric


def _loss_value(total, dtype):
    """A reduced loss: a Python float holding a value of `dtype` (float32 for the half
    types)."""
    return float(_value_dtype(dtype).type(total))


def _grad_targets(out, shapes, dtypes, inputs, name="out"):
    """For each gradient: (the array to return, the array the kernel writes, copy back?).

    ``out`` is None, an ndarray (one gradient) or a tuple of them. The kernel writes into
    a caller's buffer when its rows are laid out for it and it shares no memory with an
    input; otherwise into a fresh array that is then copied.
    """
    count = len(shapes)
    if out is None:
        arrays = [np.empty(shape, dtype=dtype) for shape, dtype in zip(shapes, dtypes)]
        return [(array, array, False) for array in arrays]
    if count == 1 and isinstance(out, np.ndarray):
        out = (out,)
    if not isinstance(out, tuple) or len(out) != count:
        expected = "an ndarray" if count == 1 else f"a tuple of {count} ndarrays"
        raise TypeError(f"{name}: expected {expected}, got {type(out).__name__}")
    for index, buffer in enumerate(out):
        label = name if count == 1 else f"{name}[{index}]"
        out_arg(buffer, shapes[index], dtypes[index], label)
        for other in out[:index]:
            if np.may_share_memory(buffer, other):
                raise ValueError(f"{label}: shares memory with another out= buffer")
    targets = []
    for buffer, shape, dtype in zip(out, shapes, dtypes):
        view = rows_view(buffer, shape[1]) if buffer.size else buffer
        usable = view is not None and not any(
            np.may_share_memory(buffer, a) for a in inputs if isinstance(a, np.ndarray))
        if usable:
            targets.append((buffer, view, False))
        else:
            targets.append((buffer, np.empty(shape, dtype=dtype), True))
    return targets


def _finish_targets(targets):
    """Copy gradients computed aside into their out= buffers; return what to hand back."""
    results = []
    for returned, written, copy in targets:
        if copy:
            _round_into(returned, written)
        results.append(returned)
    return results


def _kernel_outputs(targets, dtype):
    """The arrays the kernels write the gradients of `targets` (_grad_targets) in: each
    target's own array where it has the kernels' dtype `dtype`, else a fresh one."""
    return [t[1] if t[1].dtype == dtype else np.empty(t[1].shape, dtype) for t in targets]


def _copy_back(targets, written):
    """Gradients the kernels wrote aside into their targets (rounded once to a half
    target's dtype)."""
    for (_, target, _), result in zip(targets, written):
        if result is not target:
            _round_into(target, result)


# ----------------------------------------------------------------------------------------
# pairwise_distance
# ----------------------------------------------------------------------------------------

def _pairwise_distance(x, y, grad_output, metric, out, num_threads, want_value, want_grad,
                       grad_dtype=None):
    named = [("x", x)] if y is None else [("x", x), ("y", y)]
    arrays, dtypes, dtype = _embedding_set(named, same_rows=False)
    dtypes = _grad_dtypes(grad_dtype, dtypes)
    metric = _metric_arg(metric)
    threads = resolve_num_threads(num_threads)
    x_rows = arrays[0]
    y_rows = None if y is None else arrays[1]
    n = x_rows.shape[0]
    m = n if y_rows is None else y_rows.shape[0]
    value = np.empty((n, m), dtype=_value_dtype(dtype)) if want_value else None
    if n == 0 or m == 0:  # no pairs: a zero gradient
        grads = None
        if want_grad:
            targets = _grad_targets(out, [a.shape for a in arrays], dtypes, [])
            for _, written, _ in targets:
                written[...] = 0
            grads = _finish_targets(targets)
            grads = grads[0] if y is None else tuple(grads)
        return value, grads
    pairs = _AllPairs(x_rows, y_rows, metric, threads, want_grad)
    upstream, scale = None, 1.0
    if want_grad:
        if isinstance(grad_output, np.ndarray) and grad_output.dtype.kind not in "fiu":
            raise TypeError(f"grad_output: expected real numbers, got dtype {grad_output.dtype}")
        upstream = as_array(grad_output, "grad_output")
        if upstream.dtype.kind not in "biuf":  # a string, None, a complex number, any object
            raise TypeError(f"grad_output: expected a real number or an array of them, got "
                            f"{grad_output!r:.80}")
        upstream = upstream.astype(np.float64, copy=False)
        if upstream.ndim == 0:
            # every entry of the matrix gets this gradient; symmetric: a pair twice
            scale = float(upstream) * (2.0 if y_rows is None else 1.0)
            upstream = None
        elif upstream.shape != (n, m):
            raise ValueError(f"grad_output: expected a scalar or shape {(n, m)} (the distance "
                             f"matrix), got {upstream.shape}")
    pairs.run(grad_output=upstream, scale=scale, value=value, want_grad=want_grad)
    grads = None
    if want_grad:
        shapes = [array.shape for array in arrays]
        targets = _grad_targets(out, shapes, dtypes, arrays + [x, y])
        written = _kernel_outputs(targets, _kernel_grad_dtype(dtype, dtypes))
        pairs.backward(written)
        _copy_back(targets, written)
        grads = _finish_targets(targets)
        grads = grads[0] if y is None else tuple(grads)
    return value, grads


def pairwise_distance(x, y=None, *, metric="euclidean", num_threads=None):
    """Distances between the rows of x and the rows of y, as ``torch.cdist``.

    Parameters
    ----------
    x : array_like, float32, float64, float16 or bfloat16, shape (N, D)
    y : array_like, shape (M, D), optional
        Default: x itself (the matrix is then exactly symmetric with a zero diagonal,
        except the cosine distance of a row below eps to itself, ``1 - (|x| / eps)**2``).
    metric : {"euclidean", "sqeuclidean", "cosine"}
        ``|x_i - y_j|``, its square, or ``1 - x^_i . y^_j`` with ``x^ = x / max(|x|, 1e-12)``
        (torch: ``cdist``, ``cdist**2``, ``1 - normalize(x) @ normalize(y).T``).
    num_threads : int, optional

    Returns
    -------
    ndarray
        Shape (N, M), the inputs' dtype.

    Notes
    -----
    The matrix comes from a float64 Gram product of the centred (or normalised) rows;
    pairs whose distance that form cannot give to the dtype's accuracy (close points)
    are recomputed from the differences, so every entry is accurate to the accuracy
    contract, and a distance is never negative (csrc/contrastive.c has the error model).
    """
    value, _ = _pairwise_distance(x, y, None, metric, None, num_threads, True, False)
    return value


def pairwise_distance_grad(x, y=None, grad_output=1.0, *, metric="euclidean", out=None,
                           num_threads=None, grad_dtype=None):
    """Gradient of ``sum(grad_output * pairwise_distance(x, y))`` w.r.t. x (and y).

    grad_output is a scalar or an (N, M) array. Returns the gradient w.r.t. x when y is
    None (both arguments are x), else ``(grad_x, grad_y)``. At zero euclidean distance
    the pair contributes no gradient (torch.cdist's convention). ``out``: an array, or a
    tuple of two when y is given. ``grad_dtype``: the gradients' dtype, None (each
    input's) or float32 for float16 / bfloat16 inputs.
    """
    _, grads = _pairwise_distance(x, y, grad_output, metric, out, num_threads, False, True,
                                  grad_dtype)
    return grads


def pairwise_distance_value_and_grad(x, y=None, grad_output=1.0, *, metric="euclidean",
                                     out=None, num_threads=None, grad_dtype=None):
    """``(pairwise_distance(...), pairwise_distance_grad(...))`` from one pass."""
    return _pairwise_distance(x, y, grad_output, metric, out, num_threads, True, True,
                              grad_dtype)


# ----------------------------------------------------------------------------------------
# contrastive_pairwise
# ----------------------------------------------------------------------------------------

def _labels_arg(labels, n_rows):
    labels = as_array(labels, "labels")
    if labels.dtype.kind not in "biu":
        raise TypeError(f"labels: expected integer class labels, got dtype {labels.dtype}")
    if labels.shape != (n_rows,):
        raise ValueError(f"labels: expected shape ({n_rows},) (one per row of embeddings), "
                         f"got {labels.shape}")
    if labels.dtype.kind == "u" and labels.dtype.itemsize == 8 and labels.size \
            and labels.max() > np.iinfo(np.int64).max:
        # order-preserving into int64, so equality is kept
        labels = (labels - np.uint64(2**63)).view(np.int64)
    return np.require(labels, dtype=np.int64, requirements="CA")


def _contrastive_pairwise(embeddings, labels, grad_output, pos_margin, neg_margin, metric,
                          reduction, out, num_threads, want_grad, grad_dtype=None):
    arrays, dtypes, dtype = _embedding_set([("embeddings", embeddings)])
    dtypes = _grad_dtypes(grad_dtype, dtypes)
    x = arrays[0]
    n = x.shape[0]
    labels = _labels_arg(labels, n)
    pos_margin = real_scalar(pos_margin, "pos_margin", low=0.0)
    neg_margin = real_scalar(neg_margin, "neg_margin", low=0.0)
    metric = _metric_arg(metric)
    reduction = reduction_arg(reduction)
    threads = resolve_num_threads(num_threads)
    n_pairs = n * (n - 1) // 2
    upstream, scale = None, 1.0
    if want_grad:
        if reduction == "none":
            upstream = grad_output_arg(grad_output, reduction, (n, n))
            if upstream.size == 1 and np.ndim(grad_output) == 0:
                scale, upstream = 2.0 * float(upstream[0]), None  # both halves of the matrix
            else:
                upstream = upstream.reshape(n, n)
        else:
            scale = float(grad_output_arg(grad_output, reduction, ())[0])
            if reduction == "mean":
                scale = scale / n_pairs if n_pairs else 0.0
    value = np.empty((n, n), dtype=_value_dtype(dtype)) if reduction == "none" else None
    if n == 0:
        loss = value if reduction == "none" else _loss_value(
            0.0 if reduction == "sum" else math.nan, dtype)
        grad = _finish_targets(_grad_targets(out, [x.shape], dtypes, []))[0] \
            if want_grad else None
        return loss, grad
    pairs = _AllPairs(x, None, metric, threads, want_grad)
    total, _ = pairs.run(
        loss="contrastive", labels=labels, grad_output=upstream, scale=scale, value=value,
        want_grad=want_grad, pos_margin=pos_margin, neg_margin=neg_margin)
    if reduction == "none":
        loss = value
    elif reduction == "sum":
        loss = _loss_value(total, dtype)
    else:
        loss = _loss_value(total / n_pairs if n_pairs else math.nan, dtype)
    grad = None
    if want_grad:
        targets = _grad_targets(out, [x.shape], dtypes, [x, embeddings])
        written = _kernel_outputs(targets, _kernel_grad_dtype(dtype, dtypes))
        pairs.backward(written)
        _copy_back(targets, written)
        grad = _finish_targets(targets)[0]
    return loss, grad


def contrastive_pairwise(embeddings, labels, *, pos_margin=0.0, neg_margin=1.0,
                         metric="euclidean", reduction="mean", num_threads=None):
    """Contrastive loss over all pairs of a batch.

    With ``d_ij`` the distance of rows i and j (``metric``, as pairwise_distance) and
    ``y_ij = labels_i == labels_j``, each pair i < j has the loss::

        y_ij * relu(d_ij - pos_margin)**2 + (1 - y_ij) * relu(neg_margin - d_ij)**2

    "mean" divides the sum over the N (N - 1) / 2 pairs by their number (nan for N < 2),
    "sum" adds them, "none" returns the symmetric N x N matrix with a zero diagonal.
    torch: ``cdist`` and this formula over ``triu_indices(N, N, 1)``.

    Parameters
    ----------
    embeddings : array_like, float32, float64, float16 or bfloat16, shape (N, D)
    labels : array_like of integers, shape (N,)
    pos_margin, neg_margin : float >= 0
    metric : {"euclidean", "sqeuclidean", "cosine"}
    reduction : {"mean", "sum", "none"}
    num_threads : int, optional

    Notes
    -----
    The distances come from one float64 Gram product of the centred rows (normalised
    for cosine), clamped at zero, and one fused C pass over the upper triangle; a pair
    is recomputed from its rows when the Gram form's error bound could show in the
    result: close points (the Gram form cancels) and distances next to a margin. So
    every loss keeps the accuracy contract. For float32 data where most pairs lie
    outside their hinge (a sample of rows decides), the Gram product is float32, half
    the cost: its wider bound still decides every pair outside the hinge (a loss of
    exactly 0), and every other pair is recomputed from its rows. Duplicated points
    have distance exactly 0 and, for euclidean, no gradient (torch.cdist's convention).
    """
    loss, _ = _contrastive_pairwise(embeddings, labels, None, pos_margin, neg_margin, metric,
                                    reduction, None, num_threads, False)
    return loss


def contrastive_pairwise_grad(embeddings, labels, grad_output=1.0, *, pos_margin=0.0,
                              neg_margin=1.0, metric="euclidean", reduction="mean", out=None,
                              num_threads=None, grad_dtype=None):
    """Gradient of ``grad_output * contrastive_pairwise(...)`` w.r.t. the embeddings.

    grad_output is a scalar for "mean"/"sum" and an (N, N) array (or a scalar) for
    "none". The gradient is ``r_i x_i - (W @ x)_i`` with W the N x N gradient
    coefficients of the fused pass: one more product, in the embeddings' dtype (float32
    rounding of that product is within the gradient contract's floor; float32 for
    float16 / bfloat16 embeddings). ``grad_dtype``: None (the embeddings' dtype) or
    float32 for half embeddings.
    """
    _, grad = _contrastive_pairwise(embeddings, labels, grad_output, pos_margin, neg_margin,
                                    metric, reduction, out, num_threads, True, grad_dtype)
    return grad


def contrastive_pairwise_value_and_grad(embeddings, labels, grad_output=1.0, *, pos_margin=0.0,
                                        neg_margin=1.0, metric="euclidean", reduction="mean",
                                        out=None, num_threads=None, grad_dtype=None):
    """``(contrastive_pairwise(...), contrastive_pairwise_grad(...))`` from one pass."""
    return _contrastive_pairwise(embeddings, labels, grad_output, pos_margin, neg_margin,
                                 metric, reduction, out, num_threads, True, grad_dtype)


# ----------------------------------------------------------------------------------------
# Row pairs: contrastive and triplet_margin
# ----------------------------------------------------------------------------------------

def _pair_loss(loss_name, named, label, grad_output, metric, margin, p, eps, swap, reduction,
               out, num_threads, want_grad, grad_dtype=None):
    arrays, dtypes, dtype = _embedding_set(named)
    dtypes = _grad_dtypes(grad_dtype, dtypes)
    n = arrays[0].shape[0]
    reduction = reduction_arg(reduction)
    threads = resolve_num_threads(num_threads)
    label_array = None
    if loss_name == "contrastive":
        label_array = real_array(label, "label")
        if label_array.shape != (n,):
            raise ValueError(f"label: expected shape ({n},) (one per pair of rows), "
                             f"got {label_array.shape}")
        label_array = np.require(label_array, dtype=np.float64, requirements="CA")
    per_row = np.empty(n) if reduction == "none" else None
    upstream = None
    targets = []
    if want_grad:
        upstream = grad_output_arg(grad_output, reduction, (n,))
        inputs = arrays + [value for _, value in named] + [
            a for a in (label_array, label, upstream, grad_output) if isinstance(a, np.ndarray)]
        targets = _grad_targets(out, [a.shape for a in arrays], dtypes, inputs)
    if n == 0:
        loss = per_row.astype(_value_dtype(dtype)) if reduction == "none" else _loss_value(
            0.0 if reduction == "sum" else math.nan, dtype)
        return loss, (tuple(_finish_targets(targets)) if want_grad else None)
    written = _kernel_outputs(targets, _kernel_grad_dtype(dtype, dtypes))
    total = _kernels.dist_pair_loss_run(
        loss_name, tuple(arrays), label_array, upstream, per_row, tuple(written), metric,
        margin, p, eps, NORMALIZE_EPS, swap, reduction, threads)
    loss = per_row.astype(_value_dtype(dtype)) if reduction == "none" else _loss_value(total,
                                                                                        dtype)
    grads = None
    if want_grad:
        _copy_back(targets, written)
        grads = tuple(_finish_targets(targets))
    return loss, grads


def _contrastive(x1, x2, label, grad_output, margin, metric, reduction, out, num_threads,
                 want_grad, grad_dtype=None):
    margin = real_scalar(margin, "margin", low=0.0)
    metric = _metric_arg(metric)
    return _pair_loss("contrastive", [("x1", x1), ("x2", x2)], label, grad_output, metric,
                      margin, 2.0, PAIRWISE_EPS, False, reduction, out, num_threads, want_grad,
                      grad_dtype)


def contrastive(x1, x2, label, *, margin=1.0, metric="euclidean", reduction="mean",
                num_threads=None):
    """Contrastive loss of row pairs (Hadsell, Chopra & LeCun, CVPR 2006).

    Per pair i, with ``label`` y (1 for similar pairs, 0 for dissimilar ones; values in
    between interpolate) and d the distance of ``x1[i]`` and ``x2[i]``::

        0.5 * (y * d**2 + (1 - y) * relu(margin - d)**2)

    Euclidean distances are torch's ``F.pairwise_distance(x1, x2)``, ``|x1 - x2 + 1e-6|``
    (the eps keeps the gradient at zero distance finite); sqeuclidean is its square,
    cosine ``1 - x1^ . x2^`` (F.normalize, eps 1e-12). "mean" averages over the N pairs.

    Parameters
    ----------
    x1, x2 : array_like, float32, float64, float16 or bfloat16, shape (N, D)
    label : array_like of reals (bool, integer or float), shape (N,)
    margin : float >= 0
    metric : {"euclidean", "sqeuclidean", "cosine"}
    reduction : {"mean", "sum", "none"}
    num_threads : int, optional
    """
    loss, _ = _contrastive(x1, x2, label, None, margin, metric, reduction, None, num_threads,
                           False)
    return loss


def contrastive_grad(x1, x2, label, grad_output=1.0, *, margin=1.0, metric="euclidean",
                     reduction="mean", out=None, num_threads=None, grad_dtype=None):
    """Gradient of ``grad_output * contrastive(...)`` w.r.t. ``(x1, x2)``; ``out`` a
    tuple of two arrays; ``grad_dtype`` None (each input's dtype) or float32 for float16 /
    bfloat16 inputs."""
    _, grads = _contrastive(x1, x2, label, grad_output, margin, metric, reduction, out,
                            num_threads, True, grad_dtype)
    return grads


def contrastive_value_and_grad(x1, x2, label, grad_output=1.0, *, margin=1.0,
                               metric="euclidean", reduction="mean", out=None,
                               num_threads=None, grad_dtype=None):
    """``(contrastive(...), contrastive_grad(...))`` from one pass over the rows."""
    return _contrastive(x1, x2, label, grad_output, margin, metric, reduction, out,
                        num_threads, True, grad_dtype)


def _norm_order(p):
    """The p of a p-norm: any real number or +-inf (torch's vector_norm), not NaN."""
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, (numbers.Real, np.ndarray)):
        raise TypeError(f"p: expected a real number, got {p!r}")
    if isinstance(p, np.ndarray) and (p.ndim != 0 or p.dtype.kind not in "fiu"):
        raise TypeError(f"p: expected a real number, got {p!r}")
    p = float(p)
    if math.isnan(p):
        raise ValueError(f"p: expected a number or +-inf, got {p}")
    return p


class _Triplet:
    """The checked inputs of a triplet_margin call, as torch shapes them: one number of
    dimensions, broadcasting, the features on the last axis (a 0-d input is one
    feature); laid out for the kernel as (M, D) rows of the broadcast shape, with the
    length of each pair's difference (contrastive.h)."""

    def __init__(self, anchor, positive, negative, grad_dtype=None):
        named = [("anchor", anchor), ("positive", positive), ("negative", negative)]
        arrays = [float_array(value, name, half=True) for name, value in named]
        if len({array.ndim for array in arrays}) != 1:
            raise ValueError("anchor, positive, negative: expected the same number of "
                             "dimensions (as torch), got shapes "
                             + ", ".join(str(array.shape) for array in arrays))
        try:
            shape = arrays[0].shape if arrays[0].shape == arrays[1].shape == arrays[2].shape \
                else np.broadcast_shapes(*(array.shape for array in arrays))
        except ValueError:
            raise ValueError("anchor, positive, negative: shapes "
                             + ", ".join(str(array.shape) for array in arrays)
                             + " do not broadcast together") from None
        self.shapes = [array.shape for array in arrays]
        self.dtype = _common_dtype([array.dtype for array in arrays])
        self.dtypes = _grad_dtypes(grad_dtype, [array.dtype for array in arrays])
        self.loss_shape = shape[:-1]
        self.dim = shape[-1] if shape else 1
        self.n_rows = math.prod(self.loss_shape)
        last = [array.shape[-1] if array.ndim else 1 for array in arrays]
        # the broadcast of two last axes: equal, or one of them is 1
        self.pair_dims = tuple(last[i] if last[j] == 1 else last[j]
                               for i, j in ((0, 1), (0, 2), (1, 2)))
        full = shape if shape else (1,)
        self.rows = []
        for array in arrays:
            # a view where the layout allows (an input broadcast over rows has row stride
            # 0); a copy where the kernel needs contiguous features
            matrix = array.astype(self.dtype, copy=False)
            if matrix.shape != full:
                matrix = np.broadcast_to(matrix, full)
            matrix = matrix.reshape(self.n_rows, self.dim)
            if (self.dim > 1 and matrix.strides[1] != matrix.itemsize) or \
                    matrix.strides[0] % matrix.itemsize:
                matrix = np.ascontiguousarray(matrix)
            self.rows.append(matrix)
        self.inputs = arrays

    def grad_buffers(self, out, upstream):
        """For each gradient: (the array the kernel writes, (M, D) of the common dtype, and
        what to return: the same array, or None when the written gradient still needs a
        sum over broadcast axes, a cast or a copy into ``out``).  The kernel writes into
        ``out`` only where it shares no memory with what the kernel reads."""
        if out is not None:
            if not isinstance(out, tuple) or len(out) != 3:
                raise TypeError(f"out: expected a tuple of 3 ndarrays, got "
                                f"{type(out).__name__}")
            for index, buffer in enumerate(out):
                out_arg(buffer, self.shapes[index], self.dtypes[index], f"out[{index}]")
                for other in out[:index]:
                    if np.may_share_memory(buffer, other):
                        raise ValueError(f"out[{index}]: shares memory with another out= "
                                         f"buffer")
        full = self.loss_shape + (self.dim,)
        # the kernels write every gradient in one dtype: the rows', or float32 beside half
        # rows where a gradient is wanted in float32 or needs a sum over broadcast axes
        # (rounded once to the half type after it)
        kernel_dtype = _kernel_grad_dtype(self.dtype, self.dtypes)
        if is_half(self.dtype) and any(shape != full for shape in self.shapes):
            kernel_dtype = np.dtype(np.float32)
        buffers = []
        for index, (shape, dtype) in enumerate(zip(self.shapes, self.dtypes)):
            direct = shape == full and dtype == kernel_dtype
            if direct and out is None:  # a fresh gradient, laid out as the rows
                returned = np.empty(shape, dtype)
                buffers.append((returned.reshape(self.n_rows, self.dim), returned))
                continue
            if direct:
                returned = out[index]
                view = rows_view(returned, self.dim) if returned.size else \
                    returned.reshape(self.n_rows, self.dim)
                if view is not None and not any(np.may_share_memory(returned, array)
                                                for array in self.inputs + self.rows
                                                + [upstream]):
                    buffers.append((view, returned))
                    continue
            buffers.append((np.empty((self.n_rows, self.dim), kernel_dtype), None))
        return buffers

    def finish(self, buffers, out):
        grads = []
        for index, (written, returned) in enumerate(buffers):
            if returned is None:
                full = written.reshape(self.loss_shape + (self.dim,))
                shape = self.shapes[index]
                grad = _sum_to_shape(full, shape if shape else (1,)).reshape(shape) \
                    if full.shape != shape else full
                if out is None:
                    returned = _as_dtype(np.asarray(grad), self.dtypes[index])
                elif is_half(out[index].dtype):
                    returned = out[index]
                    _round_into(returned, np.asarray(grad))
                else:
                    returned = out[index]
                    np.copyto(returned, grad, casting="unsafe")
            grads.append(returned)
        return tuple(grads)


def _triplet(anchor, positive, negative, grad_output, margin, p, eps, swap, reduction, out,
             num_threads, want_grad, grad_dtype=None):
    margin = real_scalar(margin, "margin", low=0.0, low_open=True)
    p = _norm_order(p)
    eps = real_scalar(eps, "eps")
    if not isinstance(swap, (bool, np.bool_)):
        raise TypeError(f"swap: expected a bool, got {swap!r}")
    reduction = reduction_arg(reduction)
    threads = resolve_num_threads(num_threads)
    call = _Triplet(anchor, positive, negative, grad_dtype)
    if call.dim == 0 and not 0.0 <= p < math.inf:
        raise ValueError(f"p: the {p} norm of no elements is not defined (as torch); the "
                         f"inputs have no features")
    per_row = np.empty(call.n_rows) if reduction == "none" else None
    upstream = buffers = None
    if want_grad:
        upstream = grad_output_arg(grad_output, reduction, call.loss_shape)
        buffers = call.grad_buffers(out, upstream)
    if call.n_rows == 0:
        total = 0.0 if reduction == "sum" else math.nan
        if want_grad:
            for written, _ in buffers:
                written.fill(0)
    else:
        total = _kernels.dist_pair_loss_run(
            "triplet", tuple(call.rows), None, upstream, per_row,
            tuple(written for written, _ in buffers) if want_grad else (), "euclidean",
            margin, p, eps, NORMALIZE_EPS, bool(swap), reduction, threads,
            pair_dims=call.pair_dims)
    if reduction == "none":
        loss = per_row.astype(_value_dtype(call.dtype)).reshape(call.loss_shape)
    else:
        loss = _loss_value(total, call.dtype)
    return loss, (call.finish(buffers, out) if want_grad else None)


def triplet_margin(anchor, positive, negative, *, margin=1.0, p=2.0, eps=1e-6, swap=False,
                   reduction="mean", num_threads=None):
    """Triplet margin loss, as ``torch.nn.functional.triplet_margin_loss``.

    Per triplet, with ``d(u, v) = |u - v + eps|_p`` over the last axis (torch's
    pairwise_distance)::

        max(margin + d(a, p) - d(a, n), 0)

    and with ``swap=True`` (Balntas et al., BMVC 2016) ``d(a, n)`` replaced by
    ``min(d(a, n), d(p, n))`` (a tie splits the gradient in halves, as
    torch.minimum). The gradient flows at exactly 0 (torch's clamp_min) and is 0 through
    a zero distance (only with eps = 0). The p-norm is torch's vector_norm for any p:
    ``p=inf`` the largest ``|v_k|`` (ties share its gradient), ``-inf`` the smallest,
    ``0`` the count of nonzero entries (no gradient), and ``p < 1`` (negative too)
    ``sum(|v_k|**p)**(1/p)``.

    Parameters
    ----------
    anchor, positive, negative : array_like, float32, float64, float16 or bfloat16
        Shapes as torch takes them: the same number of dimensions, broadcasting together,
        the features on the last axis: (N, D), (D) for one triplet, (B, N, D), ...;
        0-d inputs are one feature. A pair of inputs that both have one feature on the
        last axis compares that one, as torch's pairwise_distance does.
    margin : float > 0 (torch rejects margin <= 0)
    p : float or +-inf, not NaN
    eps : float, finite
    swap : bool
    reduction : {"mean", "sum", "none"}
        "none" gives the broadcast shape without the last axis; "mean" averages over it.
    num_threads : int, optional
    """
    loss, _ = _triplet(anchor, positive, negative, None, margin, p, eps, swap, reduction,
                       None, num_threads, False)
    return loss


def triplet_margin_grad(anchor, positive, negative, grad_output=1.0, *, margin=1.0, p=2.0,
                        eps=1e-6, swap=False, reduction="mean", out=None, num_threads=None,
                        grad_dtype=None):
    """Gradient of ``grad_output * triplet_margin(...)`` w.r.t. ``(anchor, positive,
    negative)``, each of its input's shape (summed over the axes broadcasting added or
    stretched) and dtype (``grad_dtype="float32"``: float32 for float16 / bfloat16
    inputs); ``out`` a tuple of three arrays."""
    _, grads = _triplet(anchor, positive, negative, grad_output, margin, p, eps, swap,
                        reduction, out, num_threads, True, grad_dtype)
    return grads


def triplet_margin_value_and_grad(anchor, positive, negative, grad_output=1.0, *, margin=1.0,
                                  p=2.0, eps=1e-6, swap=False, reduction="mean", out=None,
                                  num_threads=None, grad_dtype=None):
    """``(triplet_margin(...), triplet_margin_grad(...))`` from one pass over the rows."""
    return _triplet(anchor, positive, negative, grad_output, margin, p, eps, swap, reduction,
                    out, num_threads, True, grad_dtype)


# ----------------------------------------------------------------------------------------
# info_nce
# ----------------------------------------------------------------------------------------

# A row of a float32 backward product G @ p^ carries rounding of about a float32 ulp of its
# terms' size, sum_j |G_ij| |p^_j|.  Where the row is much smaller than its terms (they
# cancel: duplicated keys), or the normalisation's backward keeps a small part of it (a
# gradient along the row itself; a row below eps, scaled by 1 / eps), that rounding is no
# longer small next to the result: such rows are recomputed in float64 (all of them when
# they are many).  The fuzz harness found both kinds.
_CANCELLED = 0.1


def _redo_cancelled_rows(weights, weight_sums, other_unit, norm, grad_unit, result,
                         temperature, single, zero_sum_rows):
    """Recompute the rows of ``grad_unit`` (= weights @ other_unit / temperature) whose
    terms cancelled (_CANCELLED); whether any was.  weight_sums: the rows' sum_j
    |weights_ij|.  From a float32 product (``single``) the rows are recomputed in float64.
    Where the rows of ``weights`` sum to zero (``zero_sum_rows``: the query side of a
    non-symmetric loss, G = s (softmax - onehot)), the cancelling rows are written as
    sum_{j != i} G_ij (k^_j - k^_i), in which a duplicated key's term is exactly 0
    instead of a float64 rounding of two terms of 0.5 (the reference does the same)."""
    size = np.sqrt(np.einsum("ij,ij->i", grad_unit, grad_unit))
    terms = weight_sums / temperature  # the unit rows have |p^_j| <= 1
    cancelled = size < _CANCELLED * terms
    if single:
        values = result.astype(np.float32) if is_half(result.dtype) else result
        kept = np.sqrt(np.einsum("ij,ij->i", values, values, dtype=np.float64))
        cancelled |= ((norm < NORMALIZE_EPS)
                      | (kept * np.maximum(norm, NORMALIZE_EPS) < _CANCELLED * size))
    rows = np.flatnonzero(cancelled)
    if not rows.size:
        return False
    if single and rows.size > weights.shape[0] // 4:
        np.matmul(weights, other_unit, out=grad_unit)
        grad_unit /= temperature
    elif single:
        grad_unit[rows] = (weights[rows] @ other_unit) / temperature
    if zero_sum_rows:
        # rows of (rows, M, D) differences a block at a time: a few MiB each
        block = max(1, (1 << 19) // max(1, other_unit.size))
        for start in range(0, rows.size, block):
            chunk = rows[start:start + block]
            chunk_weights = np.array(weights[chunk], dtype=np.float64)
            chunk_weights[np.arange(chunk.size), chunk] = 0.0
            differences = other_unit[None, :, :] - other_unit[chunk][:, None, :]
            grad_unit[chunk] = np.einsum("rm,rmd->rd", chunk_weights,
                                         differences) / temperature
    return True


PRECISIONS = ("input", "float64")

# The float32 path reads s / temperature in float32: 1 / temperature must be finite there.
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _precision_arg(precision):
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    return precision


# Entries of the similarities whose softmax weight is at least this fraction of their
# row's largest (or column's, symmetric) are recomputed in float64 (_refine_dominant),
# while there are at most _REFINE_BUDGET of them per row on average.
_REFINE_WEIGHT = 1e-3
_REFINE_BUDGET = 4
_REFINE_CHUNK = 1024


def _refine_dominant(similarities, q_unit, k_unit, temperature, symmetric):
    """Recompute, in place, the similarities that carry their row's (and, symmetric, their
    column's) softmax weight: each the float64 dot product of the float32 unit rows,
    rounded once to float32.

    A float32 BLAS product misses each entry by a few units in the last place, and not
    alike for equal rows (OpenBLAS's AVX-512 kernels compute a tile's edge another way
    than its inside). At a low temperature a row's loss is the difference of its dominant
    entries divided by the temperature, so those misses, times 1 / T, were most of the
    loss's error: with NumPy's OpenBLAS on its AVX-512 (SkylakeX) kernels, 1.5x torch's
    float32 error in root mean square over draws of near-duplicate rows at T = 0.02, and
    4x on one draw's per-row losses; 0.2x with this. Entries of weight below
    _REFINE_WEIGHT move the loss by less than that fraction of their error; where more
    than _REFINE_BUDGET entries a row carry weight (a high temperature: the softmax is
    flat and the misses average out), none is redone."""
    n_rows = similarities.shape[0]
    if n_rows == 0 or similarities.shape[1] == 0:
        return
    margin = temperature * np.log(1.0 / _REFINE_WEIGHT)
    dominant = similarities >= (similarities.max(axis=1) - margin)[:, None]
    if symmetric:
        dominant |= similarities >= (similarities.max(axis=0) - margin)[None, :]
    flat = np.flatnonzero(dominant)  # (np.nonzero of the matrix takes 15x as long)
    if len(flat) > _REFINE_BUDGET * n_rows:
        return
    rows, columns = np.divmod(flat, similarities.shape[1])
    for start in range(0, len(rows), _REFINE_CHUNK):
        i, j = rows[start:start + _REFINE_CHUNK], columns[start:start + _REFINE_CHUNK]
        dots = np.einsum("kd,kd->k", q_unit[i].astype(np.float64),
                         k_unit[j].astype(np.float64))
        similarities[i, j] = dots  # rounded once to float32, to nearest


def _info_nce_float32(q, k, upstream, per_row, temperature, symmetric, reduction, targets,
                      threads, want_grad):
    """info_nce of float32 (or half, read in place) rows with float32 products: the unit
    rows (float32, norms in double), s = q^ k^T (BLAS), one C kernel for the softmax of
    the rows (and columns) that writes d loss / d s over s, then G @ k^ and G^T @ q^
    (BLAS, the transpose read in place) and the normalisation's backward (each gradient
    element rounded once to its target's dtype: float32 or half)."""
    n = q.shape[0]
    q_unit, q_norm = _kernels.nce_unit_rows(q, NORMALIZE_EPS, threads)
    k_unit, k_norm = _kernels.nce_unit_rows(k, NORMALIZE_EPS, threads)
    similarities = q_unit @ k_unit.T
    _refine_dominant(similarities, q_unit, k_unit, temperature, symmetric)
    half = 0.5 if symmetric else 1.0
    if not want_grad:
        scale = np.zeros(1)
    elif per_row:
        scale = np.ascontiguousarray(upstream * half, dtype=np.float64)
    else:
        scale = np.array([float(upstream[0]) * half / (n if reduction == "mean" else 1)])
    row_loss, column_loss = _kernels.nce_softmax(similarities, temperature, bool(symmetric),
                                                 scale, want_grad, threads)
    per_query = 0.5 * (row_loss + column_loss) if symmetric else row_loss
    if reduction == "none":
        loss = per_query.astype(np.float32)
    else:
        loss = _loss_value(per_query.sum() / (n if reduction == "mean" else 1), np.float32)
    if not want_grad:
        return loss, None
    grad_logits = similarities  # the kernel wrote the gradient over the similarities
    for (_, target, _), weights, other_unit, unit, norm in (
            (targets[0], grad_logits, k_unit, q_unit, q_norm),
            (targets[1], grad_logits.T, q_unit, k_unit, k_norm)):
        grad_unit = weights @ other_unit
        _kernels.nce_unit_backward(unit, norm, grad_unit, target, NORMALIZE_EPS, threads)
    return loss, tuple(_finish_targets(targets))


def _info_nce(query, key, grad_output, temperature, symmetric, reduction, out, num_threads,
              want_grad, precision="input", grad_dtype=None):
    from fastloss.cross_entropy import cross_entropy, cross_entropy_value_and_grad

    arrays, dtypes, dtype = _embedding_set([("query", query), ("key", key)], same_rows=False)
    dtypes = _grad_dtypes(grad_dtype, dtypes)
    q, k = arrays
    n, m = q.shape[0], k.shape[0]
    if m < n:
        raise ValueError(f"key: expected at least {n} rows (the N of query: row i is query "
                         f"i's positive), got shape {k.shape}")
    if not isinstance(symmetric, (bool, np.bool_)):
        raise TypeError(f"symmetric: expected a bool, got {symmetric!r}")
    if symmetric and m != n:
        raise ValueError(f"key: symmetric=True needs as many rows as query ({n}), "
                         f"got shape {k.shape}")
    temperature = real_scalar(temperature, "temperature", low=0.0, low_open=True)
    reduction = reduction_arg(reduction)
    precision = _precision_arg(precision)
    threads = resolve_num_threads(num_threads)
    upstream = grad_output_arg(grad_output, reduction, (n,)) if want_grad else None
    targets = []
    if want_grad:
        targets = _grad_targets(out, [q.shape, k.shape], dtypes, arrays + [query, key])
    if n == 0:
        loss = (np.empty(0, _value_dtype(dtype)) if reduction == "none"
                else _loss_value(0.0 if reduction == "sum" else math.nan, dtype))
        for _, target, _ in targets:
            target[...] = 0
        return loss, (tuple(_finish_targets(targets)) if want_grad else None)
    per_row = want_grad and reduction == "none" and np.ndim(grad_output) != 0
    narrow = dtype == np.float32 or is_half(dtype)  # float32 products
    if narrow and precision == "input" and 1.0 / temperature < _FLOAT32_MAX:
        if want_grad and any(t[1].dtype not in (np.float32, dtype) for t in targets):
            # a gradient the kernel does not write (a half one of a call promoted to
            # float32: a mixed call): float32 into a scratch array, rounded after
            scratch = [(r, t if t.dtype in (np.float32, dtype) else np.empty(t.shape,
                                                                             np.float32), c)
                       for r, t, c in targets]
            loss, _ = _info_nce_float32(q, k, upstream, per_row, temperature, symmetric,
                                        reduction, scratch, threads, want_grad)
            _copy_back(targets, [t for _, t, _ in scratch])
            return loss, tuple(_finish_targets(targets))
        return _info_nce_float32(q, k, upstream, per_row, temperature, symmetric, reduction,
                                 targets, threads, want_grad)

    # float64 inputs, or precision="float64": unit rows and similarities in float64
    # whatever the dtype, so that the 1 / temperature scale (20 by default) does not
    # magnify float32 rounding past the accuracy contract; the cross-entropy kernel on
    # them (and on their transpose). The backward products run in the dtype, as
    # contrastive_pairwise's, with the rows whose terms cancel redone in float64.
    single = narrow and want_grad
    q_unit, q_unit_real, q_norm = _kernels.dist_prepare_rows(q, "cosine", None, NORMALIZE_EPS,
                                                             single, threads)
    k_unit, k_unit_real, k_norm = _kernels.dist_prepare_rows(k, "cosine", None, NORMALIZE_EPS,
                                                             single, threads)
    logits = q_unit @ k_unit.T
    logits /= temperature
    target = np.arange(n)
    options = dict(reduction=reduction, num_threads=threads)
    columns = None
    if symmetric:  # s transposed, for the column-wise cross-entropy
        columns = np.empty((m, n))
        _kernels.dist_transpose(logits, columns, False, threads)
    if not want_grad:
        loss = cross_entropy(logits, target, **options)
        if symmetric:
            loss = 0.5 * (loss + cross_entropy(columns, target, **options))
        return (loss.astype(_value_dtype(dtype)) if reduction == "none"
                else _loss_value(loss, dtype)), None
    half = 0.5 if symmetric else 1.0
    row_upstream = upstream * half if per_row else float(upstream[0]) * half
    # the cross-entropy kernel writes d loss / d logits over the logits
    loss, grad_logits = cross_entropy_value_and_grad(logits, target, row_upstream,
                                                     out=logits, **options)
    if symmetric:
        column_loss, grad_columns = cross_entropy_value_and_grad(
            columns, target, row_upstream, out=columns, **options)
        loss = 0.5 * (loss + column_loss)
        _kernels.dist_transpose(grad_columns, grad_logits, True, threads)
    if single:
        grad_single = grad_logits.astype(np.float32)
        grad_q_unit = np.asarray(grad_single @ k_unit_real, dtype=np.float64)
        grad_k_unit = np.asarray(grad_single.T @ q_unit_real, dtype=np.float64)
        del grad_single
    else:
        grad_q_unit = grad_logits @ k_unit
        grad_k_unit = grad_logits.T @ q_unit
    grad_q_unit /= temperature
    grad_k_unit /= temperature
    # |G| once, for the rows of both products (float32), or of the query's (float64: its
    # cancelling rows have a cancellation-free form, see _redo_cancelled_rows)
    magnitude = np.abs(grad_logits) if single or not symmetric else None
    row_sums = magnitude.sum(axis=1) if magnitude is not None else None
    column_sums = magnitude.sum(axis=0) if single else None
    del magnitude
    sides = ((grad_logits, row_sums, k_unit, q_unit, q_norm, grad_q_unit, not symmetric),
             (grad_logits.T, column_sums, q_unit, k_unit, k_norm, grad_k_unit, False))
    for (_, target_array, _), (weights, weight_sums, other_unit, unit, norm, grad_unit,
                               zero_sum_rows) in zip(targets, sides):
        # the kernel writes float32, float64 and the half types (rounded once)
        result = target_array if target_array.dtype == dtype or (
            narrow and target_array.dtype == np.float32) else np.empty(target_array.shape, dtype)
        _kernels.dist_normalize_backward(unit, norm, grad_unit, result, NORMALIZE_EPS, threads)
        if ((single or zero_sum_rows)
                and _redo_cancelled_rows(weights, weight_sums, other_unit, norm, grad_unit,
                                         result, temperature, single, zero_sum_rows)):
            _kernels.dist_normalize_backward(unit, norm, grad_unit, result, NORMALIZE_EPS,
                                             threads)
        if result is not target_array:
            _round_into(target_array, result)
    loss = loss.astype(_value_dtype(dtype)) if reduction == "none" else _loss_value(loss, dtype)
    return loss, tuple(_finish_targets(targets))


def info_nce(query, key, *, temperature=0.05, symmetric=False, reduction="mean",
             precision="input", num_threads=None):
    """InfoNCE with in-batch negatives (van den Oord et al. 2018; CLIP with symmetric).

    Rows of ``query`` and ``key`` are L2-normalised (``F.normalize``, eps 1e-12),
    ``s_ij = q^_i . k^_j / temperature``, and the loss of query i is the cross-entropy
    of row i of s with target i: sentence-transformers' MultipleNegativesRankingLoss with
    ``scale = 1 / temperature`` (key may have more rows than query: extra negatives).
    ``symmetric=True`` (square s only) averages it with the cross-entropy of column i
    (CLIP's loss). "none" returns the per-query loss (N,); "mean" averages over N.

    The products (the similarities ``q^ k^T``, and in the backward ``G k^`` and
    ``G^T q^``) are matrix products (NumPy's BLAS) in the inputs' precision, as every
    framework computes them; one C pass over the similarities gives the losses and
    their gradient (the softmax of the rows and, with ``symmetric``, of the columns,
    without a transposed copy). For float32 inputs the error is therefore the
    accuracy contract plus the products' rounding carried through the loss
    (docs/accuracy.rst, "Losses that multiply matrices"). ``precision="float64"``
    computes the similarities and their cross-entropy in float64 instead (and
    recomputes in float64 the backward rows whose terms cancel), which meets the
    float32 contract itself, at about twice the time.

    Parameters
    ----------
    query : array_like, float32, float64, float16 or bfloat16, shape (N, D)
    key : array_like, shape (M, D), M >= N (M == N with symmetric)
    temperature : float > 0
    symmetric : bool
    reduction : {"mean", "sum", "none"}
    precision : {"input", "float64"}
        The precision of the products: the inputs' (float32 for float32 inputs), or
        float64 (the same for float64 inputs). Float32 inputs whose ``1 / temperature``
        overflows float32 compute in float64.
    num_threads : int, optional
        OpenMP threads of the C pass; the products use NumPy's BLAS threads.
    """
    loss, _ = _info_nce(query, key, None, temperature, symmetric, reduction, None, num_threads,
                        False, precision)
    return loss


def info_nce_grad(query, key, grad_output=1.0, *, temperature=0.05, symmetric=False,
                  reduction="mean", precision="input", out=None, num_threads=None,
                  grad_dtype=None):
    """Gradient of ``grad_output * info_nce(...)`` w.r.t. ``(query, key)``; ``out`` a
    tuple of two arrays; ``grad_dtype`` None (each input's dtype) or float32 for float16 /
    bfloat16 inputs."""
    _, grads = _info_nce(query, key, grad_output, temperature, symmetric, reduction, out,
                         num_threads, True, precision, grad_dtype)
    return grads


def info_nce_value_and_grad(query, key, grad_output=1.0, *, temperature=0.05, symmetric=False,
                            reduction="mean", precision="input", out=None, num_threads=None,
                            grad_dtype=None):
    """``(info_nce(...), info_nce_grad(...))`` from one forward and backward."""
    return _info_nce(query, key, grad_output, temperature, symmetric, reduction, out,
                     num_threads, True, precision, grad_dtype)
