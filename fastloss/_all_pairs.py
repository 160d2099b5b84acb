"""The all-pairs engine under ``pairwise_distance`` and ``contrastive_pairwise``: the
rows prepared (centred, or normalised for the cosine), their Gram product in strips
(BLAS), the fused C pass over the pairs for distances, losses and gradient
coefficients, and the backward product (sparse where few coefficients are nonzero).
The losses, their arguments and their results are in ``fastloss.contrastive``."""
import numpy as np

from fastloss import _kernels
from fastloss._validation import is_half

# torch.nn.functional.normalize's eps: norms below it are taken as it.
NORMALIZE_EPS = 1e-12
# Rows per strip of the Gram product: only strips on and right of the diagonal are
# formed, (1 + 1 / strips) / 2 of the full product's flops; shorter strips run BLAS less
# efficiently (benchmarks/bench_contrastive.py has the sweep).
GRAM_STRIP_ROWS = 512
# At most this fraction of nonzero gradient coefficients, the backward product skips the
# zeros instead of calling BLAS (benchmarks/bench_contrastive.py times both by density).
SPARSE_PRODUCT_DENSITY = 1 / 16
# contrastive_pairwise on float32 data forms a float32 Gram product (half the double
# one's cost) when a sample of rows suggests that at most this fraction of the pairs lie
# inside or at their hinge: only the pairs outside it are decided from a float32 Gram
# entry, and every other pair is recomputed from its rows, about twice a Gram entry's
# cost (csrc/contrastive.h).  The results are the same either way; only the time differs.
NARROW_GRAM_MAX_INSIDE = 0.15
# Rows in that sample, and the fewest rows for which the float32 product is considered.
NARROW_GRAM_SAMPLE_ROWS = 64
NARROW_GRAM_MIN_ROWS = 512


class _AllPairs:
    """The prepared rows of x (and y) for the all-pairs functions."""

    def __init__(self, x, y, metric, num_threads, want_grad):
        self.metric = metric
        self.num_threads = num_threads
        self.x, self.y = x, y
        self.dtype = x.dtype
        shift = None
        if metric != "cosine":
            # a common shift for x and y: the batch mean (distances do not change)
            stacked_rows = x.shape[0] + (0 if y is None else y.shape[0])
            total = x.sum(axis=0, dtype=np.float64)
            if y is not None:
                total = total + y.sum(axis=0, dtype=np.float64)
            shift = np.ascontiguousarray(total / max(stacked_rows, 1))
        # the backward product runs in the input's dtype: float32 data need the
        # prepared rows rounded to float32 too; half data (read in place) compute it in
        # float32, the kernels' AUX type: prepared rows, coefficients and product float32
        self.aux_dtype = np.dtype(np.float32) if is_half(self.dtype) else self.dtype
        want_real = want_grad and self.aux_dtype == np.float32
        self.px, px_real, self.x_norm = _kernels.dist_prepare_rows(
            x, metric, shift, NORMALIZE_EPS, want_real, num_threads)
        self.px_real = px_real if want_real else self.px
        self.py = self.py_real = self.y_norm = None
        if y is not None:
            self.py, py_real, self.y_norm = _kernels.dist_prepare_rows(
                y, metric, shift, NORMALIZE_EPS, want_real, num_threads)
            self.py_real = py_real if want_real else self.py

    def gram(self, narrow=False):
        """float64 prepared x @ prepared y.T (narrow: float32, of the prepared rows rounded
        to float32); with y None, only the strips of rows on and right of the diagonal
        (the pass reads the upper triangle)."""
        if self.py is not None:
            return self.px @ self.py.T
        rows = self.px
        if narrow:
            rows = self.px_real if self.px_real.dtype == np.float32 else rows.astype(np.float32)
        n = rows.shape[0]
        gram = np.empty((n, n), dtype=rows.dtype)
        strips = max(1, -(-n // GRAM_STRIP_ROWS))
        size = max(1, -(-n // strips))
        for start in range(0, n, size):
            stop = min(start + size, n)
            np.matmul(rows[start:stop], rows[start:].T, out=gram[start:stop, start:])
        return gram

    def narrow_gram_pays(self, labels, pos_margin, neg_margin):
        """Whether contrastive_pairwise should take a float32 Gram product: float32 data,
        enough rows, and a sample of rows whose pairs lie mostly outside their hinge
        (NARROW_GRAM_MAX_INSIDE).  A heuristic for speed; results do not depend on it."""
        n = self.x.shape[0]
        if self.dtype != np.float32 or self.y is not None or n < NARROW_GRAM_MIN_ROWS:
            return False
        sample = np.linspace(0, n - 1, NARROW_GRAM_SAMPLE_ROWS).astype(np.intp)
        dots = self.px[sample] @ self.px.T
        if self.metric == "cosine":
            distance = 1.0 - dots
        else:
            squared = np.maximum(self.x_norm[sample, None] + self.x_norm[None, :] - 2 * dots, 0)
            distance = np.sqrt(squared) if self.metric == "euclidean" else squared
        same = labels[sample, None] == labels[None, :]
        inside = np.where(same, distance - pos_margin, neg_margin - distance)
        # at or inside the hinge, or next to it (a float32 Gram entry's error, generously)
        at_or_inside = inside > -1e-3 * (distance + np.where(same, pos_margin, neg_margin))
        at_or_inside[np.arange(sample.size), sample] = False  # the diagonal is no pair
        return at_or_inside.sum() <= NARROW_GRAM_MAX_INSIDE * sample.size * (n - 1)

    def run(self, *, loss="distance", labels=None, grad_output=None, scale=1.0, value=None,
            want_grad=False, pos_margin=0.0, neg_margin=0.0):
        """The fused pass; returns (loss sum, recomputed pairs) and keeps what the
        backward needs."""
        n = self.x.shape[0]
        m = n if self.y is None else self.y.shape[0]
        self.coef = self.x_sums = self.y_sums = self.direct_mask = self.nonzero_mask = None
        if want_grad:
            self.coef = np.empty((n, m), dtype=self.aux_dtype)
            self.x_sums = np.empty(2 * n)
            if self.y is not None:
                self.y_sums = np.empty(2 * m)
            self.direct_mask = np.empty((n, -(-m // 64)), dtype=np.uint64)
            if self.y is None:
                self.nonzero_mask = np.empty((n, -(-m // 64)), dtype=np.uint64)
        narrow = loss == "contrastive" and self.narrow_gram_pays(labels, pos_margin, neg_margin)
        gram = self.gram(narrow)
        # the direct pairs' coefficients go where their Gram entries were (a float32 Gram
        # cannot hold them: a float64 matrix of which only those entries are written)
        self.direct_coef = np.empty(gram.shape) if narrow and want_grad else gram
        total, recomputed, self.n_direct, self.n_nonzero = _kernels.dist_matrix(
            self.x, self.y, self.x_norm, self.y_norm, gram, self.direct_coef, labels,
            grad_output, value, self.coef, self.x_sums, self.y_sums, self.direct_mask,
            self.nonzero_mask, self.metric, loss, pos_margin, neg_margin, NORMALIZE_EPS, scale,
            self.num_threads)
        return total, recomputed

    def product(self):
        """W @ P for the symmetric case: BLAS, or the sparse product when most
        coefficients are zero."""
        n = self.x.shape[0]
        if self.n_nonzero <= SPARSE_PRODUCT_DENSITY * n * n:
            product = np.empty(self.px_real.shape, dtype=self.aux_dtype)
            _kernels.dist_sparse_product(self.nonzero_mask, self.coef, self.px_real, product,
                                         self.num_threads)
            return product
        return self.coef @ self.px_real

    def backward(self, targets):
        """Gradients into ``targets`` (one or two arrays): W @ P and the finishing pass
        (with the pulls of the direct pairs, from the rows)."""
        mask = self.direct_mask if self.n_direct else None
        coef = self.direct_coef if self.n_direct else None
        y = self.x if self.y is None else self.y
        y_norm = self.x_norm if self.y is None else self.y_norm
        product = self.product() if self.py is None else self.coef @ self.py_real
        _kernels.dist_finish_rows(self.px_real, self.x_sums, self.x_norm, product, targets[0],
                                  mask, coef, False, self.x, y, y_norm, self.metric,
                                  NORMALIZE_EPS, self.num_threads)
        if self.py is not None:
            product = self.coef.T @ self.px_real
            _kernels.dist_finish_rows(self.py_real, self.y_sums, self.y_norm, product,
                                      targets[1], mask, coef, True, self.y, self.x,
                                      self.x_norm, self.metric, NORMALIZE_EPS, self.num_threads)
