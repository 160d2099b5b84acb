"""Pairwise distances and contrastive losses over embeddings (the public NumPy API).

``pairwise_distance``, ``contrastive``, ``contrastive_pairwise``, ``info_nce`` and
``triplet_margin``, each with its ``_grad`` and ``_value_and_grad`` twins. Gradients are
w.r.t. every embedding input, as a tuple in argument order (one array when there is one
input). The kernels are in csrc/contrastive.c; ``fastloss.reference`` has the float64
oracle with the same semantics. info_nce's own path is in fastloss/_info_nce.py and the
argument handling the losses share in fastloss/_embeddings.py.

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
from fastloss._embeddings import (
    _as_dtype,
    _common_dtype,
    _copy_back,
    _embedding_set,
    _finish_targets,
    _grad_dtypes,
    _grad_targets,
    _kernel_grad_dtype,
    _kernel_outputs,
    _loss_value,
    _metric_arg,
    _round_into,
    _value_dtype,
)
from fastloss._info_nce import info_nce, info_nce_grad, info_nce_value_and_grad
from fastloss._validation import (
    as_array,
    float_array,
    grad_output_arg,
    is_half,
    out_arg,
    real_array,
    real_grad_output,
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

# torch.nn.functional.pairwise_distance's eps, added to row-pair differences.
PAIRWISE_EPS = 1e-6


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
        # aligned and native-order (a misaligned float64 view stays one through
        # real_grad_output's astype, and the kernel reads aligned elements only)
        upstream = np.require(real_grad_output(grad_output), requirements="A")
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
    try:
        number = float(p)
    except OverflowError:  # an integer beyond float64's range (10**400)
        number = math.nan
    if math.isnan(number):
        raise ValueError(f"p: expected a number or +-inf, got {p!r}")
    return number


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
                returned = _kernels.empty(shape, dtype)
                buffers.append((returned.reshape(self.n_rows, self.dim), returned))
                continue
            if direct:
                returned = out[index]
                view = rows_view(returned, self.dim, written=True) if returned.size else \
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

