"""Cross-entropy of a linear layer's logits, without the logits (the public NumPy API).

``linear_cross_entropy(hidden, classifier, target)`` is
``cross_entropy(hidden @ classifier.T + bias, target)``, computed one block of rows at a
time so that the N x V logits never exist. Per block of R rows (the scratch, R x V, is
reused by every block)::

    scratch  = hidden[rows] @ classifier.T (+ bias)       BLAS (NumPy's matmul, out=)
    stats    = cross_entropy_block_stats(scratch)        the softmax engine (C, OpenMP)
    scratch  = cross_entropy_grad(scratch, stats=stats)  in place: d loss / d logits
    d hidden[rows]  = scratch @ classifier               BLAS, into the result
    d classifier   += scratch.T @ hidden[rows]           BLAS, in class tiles
    d bias         += sum of the scratch's rows          float64

and the loss is cross_entropy_from_stats of the N rows' statistics (float64, O(N)), so
that "mean" divides by the whole batch's denominators, as cross_entropy does. The three
products are the ones any implementation needs; the softmax, its statistics and its
gradient are the block-statistics engine's (docs/block_statistics.rst), not a second copy.

Block size. Each block streams the classifier through the BLAS twice and the classifier's
gradient once more, so fewer, taller blocks run closer to the speed of the three products
done whole, and shorter blocks keep less scratch. The default block is the tallest whose
scratch fits the call's working-memory budget, ``_WORK_BYTES`` (12 MiB whatever V: 5% of
the logits at N=2048, V=32000 float32), after the statistics (72 bytes a row) and the
float64 vectors of V values (the engine's rows, the bias's sums): at that shape 10.9 MiB
of scratch, blocks of 86 rows (the previous default, a fixed 8 MiB, gave 64-row blocks).
At least _MIN_BLOCK_ROWS rows: past V = 131072 in float32 (fewer with a bias) the scratch
is 16 rows of V. ``block_rows=`` trades memory for speed per call. Where the time goes, measured at
N=2048, H=1024, V=32000 float32 on one core (BENCHMARKS.md, "Linear cross-entropy: the
block height from the memory budget"): OpenBLAS's products of a block of R rows run
slower than the whole products (it packs the classifier again for every call, and a
packed element serves only R rows): at R=96 the logits' product costs 1.22x its whole
counterpart, the hidden's gradient 1.10x, the classifier's gradient 1.17x (half of that
the additions of its partial products); the engine's softmax passes are about 1%.

NumPy's matmul cannot accumulate into its output (BLAS's beta = 1). Where NumPy's BLAS
is an OpenBLAS mapped into the process (its Linux wheels), the classifier's gradient is
accumulated by that library's gemm with beta = 1, one call per block (_BlasGemm). Else
the classifier's gradient takes each later block's product in tiles (classes x H, at most _TILE_BYTES)
and adds each tile while it is in cache; the first block writes its tiles straight into
the result. The tiles live in the rows of the hidden's gradient that the block has not
yet written (its own rows and the later blocks', written after), so they cost no memory;
only without the hidden's gradient (or for a last block of fewer than 16 rows) is there
a tile of its own. (One product on the whole transposed scratch would also have OpenBLAS
take a working copy of about the scratch's size: measured, 25 MiB for a 31 MiB scratch.)

float16 and bfloat16 inputs take another schedule (_HalfTiles): tiles of classes outer,
chunks of rows inner, on float32 copies of the tiles, so that each half gradient is
rounded once from its complete float32 sum.
"""
import ctypes
import math
import os
import platform
import sys

import numpy as np

from fastloss import _kernels
from fastloss._config import resolve_num_threads
from fastloss._validation import (as_array, float_array, grad_dtype_arg, grad_output_arg,
                                  is_bfloat16, is_half, out_arg, real_scalar, reduction_arg,
                                  target_out_of_range)
from fastloss.cross_entropy import CROSS_ENTROPY_STATS_FIELDS

__all__ = ["linear_cross_entropy", "linear_cross_entropy_grad",
           "linear_cross_entropy_value_and_grad"]

#: The working memory of one call beyond its inputs and its results, that the default
#: block height fills: 12 MiB whatever V (5% of the float32 logits at N=2048, V=32000 is
#: 12.5 MiB). The scratch (block_rows x V logits) takes what is left of it after the
#: statistics (_STATS_BYTES_PER_ROW per row), the float64 vectors of V values
#: (_ENGINE_VECTORS: the engine's rows, up to two per OpenMP thread for two threads; with
#: a bias, the back-end's float64 sums of its gradient) and, when one is needed, the tile
#: of the classifier's gradient.
_WORK_BYTES = 12 << 20
_STATS_BYTES_PER_ROW = 8 * 9
_ENGINE_VECTORS = 4
#: The fewest rows per block (the scratch grows as _MIN_BLOCK_ROWS rows of V beyond the
#: V at which the budget holds no more).
_MIN_BLOCK_ROWS = 16
#: The block height of callers that keep their own budget (linear_token_log_probs, whose
#: scratch is two blocks): the rows whose logits fill this many bytes.
_SCRATCH_BYTES = 8 << 20
#: Bytes of one tile of a block's product scratch.T @ hidden[rows] (classes x H), added
#: into the classifier's gradient while it is in cache.
_TILE_BYTES = 1 << 20
#: float16 / bfloat16 inputs: bytes of one float32 tile of the classifier (classes x H)
#: and of one chunk of the hidden's rows (rows x H), see _HalfTiles.
_HALF_TILE_BYTES = 1 << 20

_INT64_MAX = np.iinfo(np.int64).max


def _block_rows(n_rows, n_classes, itemsize, block_rows, scratch_bytes=_SCRATCH_BYTES):
    """Rows per block: ``block_rows`` if given, else those whose logits fill
    ``scratch_bytes`` (at least _MIN_BLOCK_ROWS); then evened out over the blocks, so
    that the last block is not a sliver."""
    if block_rows is None:
        block_rows = max(_MIN_BLOCK_ROWS, scratch_bytes // max(1, n_classes * itemsize))
    else:
        if isinstance(block_rows, (bool, np.bool_)) or not isinstance(
                block_rows, (int, np.integer)) or block_rows < 1:
            raise ValueError(f"block_rows: expected None or an integer >= 1, got "
                             f"{block_rows!r}")
        block_rows = int(block_rows)
    if n_rows == 0:
        return 1
    n_blocks = -(-n_rows // block_rows)
    return -(-n_rows // n_blocks)


def _budget_block_rows(n_rows, n_classes, itemsize, block_rows, reserved_bytes=0,
                       vectors=0):
    """_block_rows with the default height from the call's memory budget: the scratch
    is what _WORK_BYTES leaves after the statistics, _ENGINE_VECTORS + ``vectors``
    float64 vectors of V values (``vectors``: the back-end's bias sums) and
    ``reserved_bytes`` (a tile of the classifier's gradient, the bias's); at least
    _MIN_BLOCK_ROWS rows. The height depends on the shapes and on whether there is a
    bias, never on the number of threads. At N=2048, V=32000 float32 without a bias:
    10.9 MiB of scratch, blocks of 86 rows."""
    scratch_bytes = (_WORK_BYTES - reserved_bytes - _STATS_BYTES_PER_ROW * n_rows
                     - 8 * (_ENGINE_VECTORS + vectors) * n_classes)
    return _block_rows(n_rows, n_classes, itemsize, block_rows, max(0, scratch_bytes))


def _tile_classes(n_classes, n_features, itemsize):
    """Classes per tile of the classifier's gradient: _TILE_BYTES of classes x H."""
    return min(n_classes, max(1, _TILE_BYTES // max(1, n_features * itemsize)))


def _hard_target(target, batch_shape, n_classes, ignore_index):
    """Class indices as a flat int64 vector, every one in [0, V) or ignore_index."""
    if target.shape != batch_shape:
        raise ValueError(f"target: expected class indices of shape {batch_shape} (hidden's "
                         f"batch shape) or probabilities of shape {batch_shape + (n_classes,)},"
                         f" got {target.shape}")
    flat = target.reshape(-1)
    if flat.dtype.kind == "u" and flat.dtype.itemsize == 8 and flat.size:
        too_big = np.flatnonzero(flat > _INT64_MAX)
        if too_big.size:
            raise target_out_of_range(flat[too_big[0]], too_big[0], batch_shape, n_classes,
                                      ignore_index)
    flat = np.require(flat, dtype=np.int64, requirements="CA")
    bad = np.flatnonzero((flat != ignore_index) & ((flat < 0) | (flat >= n_classes)))
    if bad.size:
        raise target_out_of_range(flat[bad[0]], bad[0], batch_shape, n_classes, ignore_index)
    return flat


class _Problem:
    """The checked arguments of one call: hidden as (N, H) rows, the classifier (V, H),
    the flat target, bias and weight in the inputs' dtype.

    ``checked_dtype``: the caller (the torch adapter, whose half-precision tensors NumPy
    cannot hold) checked hidden, classifier and bias itself; they are kept as given (read
    here for their shapes only), and weight and probability targets are read in this
    NumPy dtype (float32 for half-precision inputs, as the kernels read them)."""

    def __init__(self, hidden, classifier, target, bias, weight, ignore_index, reduction,
                 label_smoothing, z_loss, softcap, *, checked_dtype=None, half=False):
        if checked_dtype is None:
            hidden, classifier, bias = self._matrices(hidden, classifier, bias, half)
            dtype = hidden.dtype
        else:
            dtype = np.dtype(checked_dtype)
        # float16 / bfloat16 inputs (NumPy API): class weights and probabilities are read
        # in float32, as the kernels read them beside half-precision logits
        self.half = is_half(dtype)
        aux_dtype = np.dtype(np.float32) if self.half else dtype
        n_classes, n_features = (int(n) for n in classifier.shape)
        if weight is not None:
            weight = as_array(weight, "weight")
            if weight.dtype.kind not in "fiu" and not is_bfloat16(weight.dtype):
                raise TypeError(f"weight: expected real numbers, got dtype {weight.dtype}")
            if weight.shape != (n_classes,):
                raise ValueError(f"weight: expected shape ({n_classes},) (the V of "
                                 f"classifier), got {weight.shape}")
            # as the kernels read it: in the logits' dtype (float32 for half inputs)
            weight = np.require(weight, dtype=aux_dtype, requirements="CA")
        self.reduction = reduction_arg(reduction)
        # checked here as well as by the engine: a batch of no rows never reaches it
        self.label_smoothing = real_scalar(label_smoothing, "label_smoothing", low=0.0,
                                           high=1.0)
        self.z_loss = real_scalar(z_loss, "z_loss", low=0.0)
        self.softcap = real_scalar(softcap, "softcap", low=0.0, low_open=True,
                                   allow_none=True)
        batch_shape = tuple(hidden.shape[:-1])
        if isinstance(ignore_index, (bool, np.bool_)) or not isinstance(
                ignore_index, (int, np.integer)):
            raise TypeError(f"ignore_index: expected an integer, got {ignore_index!r}")
        ignore_index = int(ignore_index)
        target = as_array(target, "target")
        if target.dtype.kind in "iu":
            self.soft = False
            target = _hard_target(target, batch_shape, n_classes, ignore_index)
        elif target.dtype.kind == "f" or is_half(target.dtype):
            if target.shape != batch_shape + (n_classes,):
                raise ValueError(f"target: expected probabilities of shape "
                                 f"{batch_shape + (n_classes,)} or class indices of shape "
                                 f"{batch_shape}, got {target.shape}")
            if target.dtype != dtype and target.dtype != aux_dtype:
                raise TypeError(f"target: expected probabilities of the dtype of hidden "
                                f"({dtype}{', or float32' if self.half else ''}), got "
                                f"{target.dtype}")
            if ignore_index >= 0:
                raise ValueError(f"ignore_index: not supported with probability targets "
                                 f"(got {ignore_index})")
            self.soft = True
            target = target.reshape(-1, n_classes)
        else:
            raise TypeError(f"target: expected integer class indices or float probabilities,"
                            f" got dtype {target.dtype}")
        self.hidden_shape = tuple(hidden.shape)
        self.batch_shape = batch_shape
        # (n_rows, not -1: a hidden size of 0 leaves -1 undetermined)
        self.hidden = hidden.reshape(math.prod(batch_shape), n_features)
        self.classifier, self.target, self.bias, self.weight = classifier, target, bias, weight
        self.dtype = dtype
        self.n_rows, self.n_classes, self.n_features = (math.prod(batch_shape), n_classes,
                                                       n_features)
        self.ignore_index = ignore_index

    @staticmethod
    def _matrices(hidden, classifier, bias, half):
        """hidden, classifier and bias (NumPy arrays) checked; float16 and
        ml_dtypes.bfloat16 taken with ``half``."""
        hidden = float_array(hidden, "hidden", half=half)
        classifier = float_array(classifier, "classifier", half=half)
        if classifier.ndim != 2:
            raise ValueError(f"classifier: expected a 2-d array (V, H), got shape "
                             f"{classifier.shape}")
        n_classes, n_features = classifier.shape
        if n_classes == 0:
            raise ValueError(f"classifier: expected at least one class (row), got shape "
                             f"{classifier.shape}")
        if classifier.dtype != hidden.dtype:
            raise TypeError(f"classifier: expected the dtype of hidden ({hidden.dtype}), "
                            f"got {classifier.dtype}")
        if hidden.ndim == 0 or hidden.shape[-1] != n_features:
            raise ValueError(f"hidden: expected shape (..., {n_features}) (the H of "
                             f"classifier {classifier.shape}), got {hidden.shape}")
        if not (classifier.flags.c_contiguous or classifier.flags.f_contiguous):
            # the BLAS reads either layout; any other strides would be copied per block
            classifier = np.ascontiguousarray(classifier)
        if bias is not None:
            bias = float_array(bias, "bias", half=half)
            if bias.dtype != hidden.dtype:
                raise TypeError(f"bias: expected the dtype of hidden ({hidden.dtype}), "
                                f"got {bias.dtype}")
            if bias.shape != (n_classes,):
                raise ValueError(f"bias: expected shape ({n_classes},) (the V of classifier),"
                                 f" got {bias.shape}")
        return hidden, classifier, bias

    def mean_denominators(self):
        """The mean's denominators over the whole batch (cross_entropy's): the sum of
        w[t] over the rows not ignored and their number; N and N for probabilities."""
        if self.soft:
            return float(self.n_rows), float(self.n_rows)
        valid = self.target[self.target != self.ignore_index]
        if self.weight is None:
            return float(valid.size), float(valid.size)
        return float(np.sum(self.weight[valid], dtype=np.float64)), float(valid.size)


def _grad_outputs(out, problem, want, dtype=None, upstreams=()):
    """The gradients' arrays (of ``dtype``, default the inputs'): ``out`` (a tuple, one
    per gradient) checked, or new ones. An out that shares memory with anything the
    computation reads is refused: the inputs, the class weight, and the upstream
    gradients ``upstreams`` ((name, value) pairs: grad_output, grad_entropy), which the
    blocks of rows read after earlier blocks wrote their gradients."""
    dtype = problem.dtype if dtype is None else dtype
    shapes = {"hidden": problem.hidden_shape,
              "classifier": (problem.n_classes, problem.n_features),
              "bias": (problem.n_classes,)}
    names = [name for name in ("hidden", "classifier", "bias")
             if name != "bias" or problem.bias is not None]
    if out is None:
        return {name: (_kernels.empty(shapes[name], dtype) if name in want else None)
                for name in names}
    if not isinstance(out, tuple) or len(out) != len(names):
        raise TypeError(f"out: expected a tuple of {len(names)} arrays (the gradients of "
                        f"{', '.join(names)}), got {type(out).__name__}"
                        f"{' of length ' + str(len(out)) if isinstance(out, tuple) else ''}")
    arrays = {}
    for name, array in zip(names, out):
        out_arg(array, shapes[name], dtype, name=f"out ({name})")
        if not array.flags.c_contiguous:
            raise ValueError(f"out ({name}): expected a C-contiguous array")
        for input_name, source in (("hidden", problem.hidden),
                                   ("classifier", problem.classifier),
                                   ("target", problem.target), ("bias", problem.bias),
                                   ("weight", getattr(problem, "weight", None)), *upstreams):
            if isinstance(source, np.ndarray) and np.may_share_memory(array, source):
                raise ValueError(f"out ({name}): overlaps the input {input_name}")
        arrays[name] = array
    return arrays


class _BlasGemm:
    """``c += a.T @ b`` (BLAS's gemm with beta = 1) in NumPy's own BLAS, or None.

    NumPy's matmul cannot accumulate into its output, and the classifier's gradient is a
    sum over the blocks of rows: through matmul, each block's product goes by tiles of
    classes (125 products of 256 classes at V = 32000) with an addition after each, on one
    thread. At 2 threads that is thousands of short BLAS calls a step, OpenBLAS's worker
    woken and put to sleep for each while NumPy's addition runs alone (measured: 13.7x the
    CPU time of the three products whole under load, 4.1x with one accumulating call per
    block). So where NumPy's BLAS is an OpenBLAS mapped into this process (NumPy's wheels
    on Linux: scipy-openblas, ILP64), its ``cblas_sgemm`` / ``cblas_dgemm`` are called
    through ctypes, once per block, with beta = 1: the same BLAS, its own threads (the
    ctypes call releases the GIL). The library is found once, and each routine is checked
    once against np.matmul on a small product before it is used; anything else (another
    BLAS, another system, a failed check) leaves the tiles of matmul (``None``).

    Integers are passed as 64-bit: right for an ILP64 library, and for an LP64 one on
    x86-64 and aarch64 Linux (the only systems with /proc/self/maps looked at) a 32-bit
    argument is the low half of its 64-bit register or stack slot."""

    _ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
    _found = {}

    def __init__(self, function, ctype, dtype):
        self.function, self.ctype, self.dtype = function, ctype, dtype

    @classmethod
    def get(cls, dtype):
        dtype = np.dtype(dtype)
        if dtype not in cls._found:
            cls._found[dtype] = cls._find(dtype)
        return cls._found[dtype]

    @classmethod
    def _find(cls, dtype):
        if os.environ.get("FASTLOSS_LCE_BLAS_ACCUMULATE", "1") == "0":
            return None
        if dtype == np.float32:
            letter, ctype = "s", ctypes.c_float
        elif dtype == np.float64:
            letter, ctype = "d", ctypes.c_double
        else:
            return None
        # the integer arguments below are 64-bit, which an LP64 library reads correctly
        # only where a 32-bit argument is the low half of its slot: x86-64 and aarch64
        if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64",
                                                                              "aarch64"):
            return None
        path = cls._numpy_openblas()
        if path is None:
            return None
        try:
            library = ctypes.CDLL(path)
        except OSError:
            return None
        # NumPy's wheels: scipy_cblas_sgemm64_ (ILP64); a system OpenBLAS: cblas_sgemm
        for name in (f"scipy_cblas_{letter}gemm64_", f"cblas_{letter}gemm64_",
                     f"cblas_{letter}gemm"):
            function = getattr(library, name, None)
            if function is not None:
                break
        else:
            return None
        integer, pointer = ctypes.c_int64, ctypes.c_void_p
        function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, integer, integer,
                             integer, ctype, pointer, integer, pointer, integer, ctype,
                             pointer, integer]
        function.restype = None
        gemm = cls(function, ctype, dtype)
        return gemm if gemm._agrees(dtype) else None

    @staticmethod
    def _numpy_openblas(mapped=None):
        """The path of the OpenBLAS mapped into this process that is NumPy's: the only one
        mapped, or, where another is mapped beside it (SciPy's wheels bring their own),
        the one in the folder of libraries of NumPy's wheel (site-packages/numpy.libs);
        None when there is none, or no way to tell. ``mapped``: the paths of the mapped
        files (default: those of /proc/self/maps)."""
        if mapped is None:
            try:
                with open("/proc/self/maps") as maps:
                    mapped = [line.split()[-1] for line in maps if "/" in line]
            except OSError:
                return None
        paths = sorted({path for path in mapped
                        if "openblas" in path.rsplit("/", 1)[-1].lower()})
        if len(paths) > 1:
            own = os.path.realpath(os.path.join(os.path.dirname(np.__file__), os.pardir,
                                                "numpy.libs"))
            paths = [path for path in paths
                     if os.path.dirname(os.path.realpath(path)) == own]
        return paths[0] if len(paths) == 1 else None

    def _agrees(self, dtype):
        """The routine's ``c += a.T @ b`` against np.matmul's on a small product."""
        rng = np.random.default_rng(0)
        a = rng.standard_normal((7, 13)).astype(dtype)
        b = rng.standard_normal((7, 5)).astype(dtype)
        c = rng.standard_normal((13, 5)).astype(dtype)
        expected = c + np.matmul(a.T, b)
        self.accumulate(a, b, c)
        scale = np.abs(a).T @ np.abs(b) + np.abs(expected)
        return bool(np.all(np.abs(c - expected) <= 16 * np.finfo(dtype).eps * scale))

    @staticmethod
    def _leading(array):
        """The BLAS's leading dimension of a matrix of unit-stride rows, or None."""
        rows, columns = array.shape
        item = array.itemsize
        if columns > 1 and array.strides[1] != item:
            return None
        if rows == 1:
            return max(1, columns)
        stride = array.strides[0]
        if stride % item or stride // item < max(1, columns):
            return None
        return stride // item

    def accumulate(self, a, b, c, beta=1.0):
        """``c = a.T @ b + beta * c`` for a (K, M), b (K, N), c (M, N) of the routine's
        dtype; False (nothing done) when a matrix is not rows of unit stride."""
        if not (a.dtype == b.dtype == c.dtype == self.dtype):
            return False
        k, m = a.shape
        n = b.shape[1]
        lda, ldb, ldc = self._leading(a), self._leading(b), self._leading(c)
        if lda is None or ldb is None or ldc is None:
            return False
        if m and n and k:
            self.function(self._ROW_MAJOR, self._TRANS, self._NO_TRANS, m, n, k,
                          self.ctype(1.0), a.ctypes.data, lda, b.ctypes.data, ldb,
                          self.ctype(beta), c.ctypes.data, ldc)
        elif m and n and beta == 0.0:
            c[...] = 0
        return True


class _NumpyProducts:
    """The products of the NumPy API: NumPy's matmul (the BLAS) on the arrays, into the
    scratch and into the results (the torch adapter has its own, on torch's matmul:
    fastloss/torch/_linear_cross_entropy.py). What _schedule asks of a back-end:

    - ``scratch``: the R x V scratch as the kernels read it (``bits``: None, or
      "bfloat16" when it holds bfloat16 values as 16-bit integers);
    - ``logits(start, stop)``: fill the scratch's first rows with the logits of rows
      [start, stop); return them (the kernels' view);
    - ``backward(start, stop)``: the scratch holds those rows' d loss / d logits: add
      their share to the gradients asked for (``grad=``: they are in that array instead,
      as linear_token_log_probs keeps them);
    - ``finish(n_rows)``: complete the gradients (the bias's, from its float64 sums)."""

    bits = None

    def __init__(self, problem, rows_per_block, threads, grads=None):
        self.hidden, self.classifier, self.bias = (problem.hidden, problem.classifier,
                                                   problem.bias)
        self.threads = threads
        n_classes, n_features = problem.n_classes, problem.n_features
        self.scratch = np.empty((min(rows_per_block, max(problem.n_rows, 1)), n_classes),
                                problem.dtype)
        self.grad_hidden = self.grad_classifier = self.grad_bias = self.bias_sums = None
        if grads is None:
            return
        self.grads = grads
        if grads["hidden"] is not None:
            self.grad_hidden = grads["hidden"].reshape(problem.n_rows, n_features)
        self.grad_classifier = grads["classifier"]
        self.tile = self.gemm = None
        if self.grad_classifier is not None:
            self.gemm = _BlasGemm.get(problem.dtype)
            self.tile_classes = _tile_classes(n_classes, n_features, problem.dtype.itemsize)
            if self.grad_hidden is None and self.gemm is None:
                self.tile = np.empty((self.tile_classes, n_features), problem.dtype)
        if grads.get("bias") is not None:
            self.bias_sums = np.zeros(n_classes, np.float64)

    def logits(self, start, stop):
        logits = self.scratch[:stop - start]
        np.matmul(self.hidden[start:stop], self.classifier.T, out=logits)
        if self.bias is not None:
            np.add(logits, self.bias, out=logits)
        return logits

    def backward(self, start, stop, grad=None):
        if grad is None:  # the engine wrote the logits' gradient over them
            grad = self.scratch[:stop - start]
        rows = self.hidden[start:stop]
        if self.grad_classifier is not None:
            self._classifier_grad(grad, rows, start)
        # after the classifier's gradient, whose partial products may have used these
        # rows of the result
        if self.grad_hidden is not None:
            np.matmul(grad, self.classifier, out=self.grad_hidden[start:stop])
        if self.bias_sums is not None:
            _kernels.column_sums(grad, self.bias_sums, self.threads)

    def _classifier_grad(self, grad, rows, start):
        """Adds the block's ``grad.T @ rows`` into the classifier's gradient: one call of
        the BLAS's gemm with beta = 1 (beta = 0 for the first block) where _BlasGemm has
        it and the rows' layout suits it; else by tiles of classes, each added while it
        is in cache; the first block writes its tiles
        straight into the result. (By tiles even then: one call on the whole transposed
        scratch has the BLAS take a working copy of the scratch's size.)

        NumPy's matmul cannot accumulate into its output, so the later blocks' tiles
        go through a buffer: the rows of the hidden's gradient from this block on, not
        yet written (the block's own rows are written after this), when that gradient
        is computed; else a tile of its own (_TILE_BYTES, counted in the block height's
        budget)."""
        if self.gemm is not None and self.gemm.accumulate(
                grad, rows, self.grad_classifier, 0.0 if start == 0 else 1.0):
            return
        n_classes = grad.shape[1]
        if start == 0:
            parts = None
        elif self.tile is not None:
            parts = self.tile
        elif self.grad_hidden is None:  # rows the BLAS could not take: a tile after all
            self.tile = np.empty((self.tile_classes, rows.shape[1]), rows.dtype)
            parts = self.tile
        else:
            parts = self.grad_hidden[start:start + self.tile_classes]
            if parts.shape[0] < _MIN_BLOCK_ROWS < self.tile_classes:
                # a last block of a few rows (block_rows= below the minimum): a tile
                # of its own rather than thousands of products of a few classes
                self.tile = np.empty((self.tile_classes, rows.shape[1]), rows.dtype)
                parts = self.tile
        step = self.tile_classes if parts is None else parts.shape[0]
        for first in range(0, n_classes, step):
            last = min(first + step, n_classes)
            result = self.grad_classifier[first:last]
            if parts is None:
                np.matmul(grad[:, first:last].T, rows, out=result)
                continue
            part = parts[:last - first]
            np.matmul(grad[:, first:last].T, rows, out=part)
            np.add(result, part, out=result)

    def finish(self, n_rows):
        if self.grad_classifier is not None and n_rows == 0:
            self.grad_classifier[...] = 0
        if self.bias_sums is not None:
            self.grads["bias"][...] = self.bias_sums


def _block_upstream(problem, grad_output):
    """``(upstream, reduction, z_loss)`` of the engine's gradient of one block of rows.

    Each block's gradient is the engine's for its rows alone: "none" and "sum" are that
    already; "mean" becomes "sum" with the whole batch's denominators, the z-loss term
    rescaled so that it keeps its own (cross_entropy's mean divides the cross-entropy by
    the sum of w[t] and the z-loss by the count of rows)."""
    z_loss = problem.z_loss
    upstream = grad_output_arg(grad_output, problem.reduction, problem.batch_shape)
    block_reduction, block_z_loss = problem.reduction, z_loss
    if problem.reduction == "mean":
        block_reduction = "sum"
        ce_denominator, z_denominator = problem.mean_denominators()
        with np.errstate(divide="ignore", invalid="ignore"):
            upstream = upstream / np.float64(ce_denominator)
            if z_loss and z_denominator:
                block_z_loss = float(np.float64(z_loss) * ce_denominator / z_denominator)
    return upstream, block_reduction, block_z_loss


def _schedule(problem, products, num_threads, rows_per_block, grad_output=None,
              want=False):
    """The block loop, one for every back-end of the products (NumPy's here, torch's in
    the adapter): per block of rows, the logits from ``products``, their softmax
    statistics from the engine, and when ``want`` the logits' gradient in place (the
    engine's) and its products (``products.backward``). Returns the loss as
    ce_from_stats gives it (a float, or a float64 array of the N rows for "none")."""
    label_smoothing, z_loss, softcap = problem.label_smoothing, problem.z_loss, problem.softcap
    threads = resolve_num_threads(num_threads)
    n_rows, n_classes = problem.n_rows, problem.n_classes
    ignore, bits = problem.ignore_index, products.bits
    if want:
        upstream, block_reduction, block_z_loss = _block_upstream(problem, grad_output)

    stats = np.empty((len(CROSS_ENTROPY_STATS_FIELDS), n_rows), np.float64)
    for start in range(0, n_rows, rows_per_block):
        stop = min(start + rows_per_block, n_rows)
        logits = products.logits(start, stop)
        block_target = problem.target[start:stop]
        block_stats = _kernels.ce_block_stats(logits, block_target, 0, n_classes,
                                              problem.weight, ignore, label_smoothing, softcap,
                                              threads, bits=bits)
        stats[:, start:stop] = block_stats
        if not want:
            continue
        block_upstream = (float(upstream[0]) if upstream.shape[0] == 1
                          else upstream[start:stop])
        _kernels.ce_call(_kernels.CE_GRAD, logits, block_target, problem.weight, ignore,
                         block_reduction, label_smoothing, block_z_loss, softcap, threads,
                         block_upstream, None, logits, stats=block_stats, bits=bits)
        products.backward(start, stop)
    if want:
        products.finish(n_rows)
    return _kernels.ce_from_stats(stats, None if problem.soft else problem.target, ignore,
                                  problem.reduction, label_smoothing, z_loss, False)[0]


class _HalfTiles:
    """float16 / bfloat16 inputs on NumPy's float32 BLAS (NumPy has no fast half-precision
    product): the logits are formed one tile of classes x one chunk of rows at a time,
    from float32 copies of the classifier's tile and of the hidden's rows (exact: every
    half value is a float32), in float32 scratch that the kernels read as float32 logits.

    Classes outer, rows inner, so that each tile of the classifier's gradient is complete
    (summed over every row, in float32) before it is rounded once to its dtype: the
    statistics of the whole rows come first (one pass, one product: each tile's
    statistics merged into the rows' running ones), then the gradient (a second pass
    that forms the same logits again, bit for bit, and takes each tile's gradient from
    the merged statistics: three products). The hidden's gradient sums over the tiles of
    classes in float32 (an N x H float32 array; the result itself when grad_dtype is
    float32) and is rounded once at the end; the bias's sums in float64.

    Memory beyond the inputs and the results: float32 tiles of _HALF_TILE_BYTES (the
    classifier's, the hidden's rows, the classifier's gradient and its partial product),
    the R x T scratch, the N x H float32 sums of the hidden's gradient (unless
    grad_dtype is float32) and the statistics (two records of N rows)."""

    def __init__(self, problem, num_threads):
        self.problem = problem
        self.threads = resolve_num_threads(num_threads)
        n_rows, n_classes, n_features = problem.n_rows, problem.n_classes, problem.n_features
        per_tile = max(_MIN_BLOCK_ROWS, _HALF_TILE_BYTES // max(1, 4 * n_features))
        self.tile_classes = min(per_tile, n_classes)
        self.chunk_rows = max(1, min(per_tile, n_rows))
        self.classifier32 = np.empty((self.tile_classes, n_features), np.float32)
        self.hidden32 = np.empty((self.chunk_rows, n_features), np.float32)
        self.scratch = np.empty((self.chunk_rows, self.tile_classes), np.float32)
        self.bias32 = (None if problem.bias is None
                       else np.empty(self.tile_classes, np.float32))
        self.soft32 = (np.empty((self.chunk_rows, self.tile_classes), np.float32)
                       if problem.soft and problem.target.dtype != np.float32 else None)

    def tiles(self):
        """(first, last) of each tile of classes."""
        n_classes = self.problem.n_classes
        return [(first, min(first + self.tile_classes, n_classes))
                for first in range(0, n_classes, self.tile_classes)]

    def chunks(self):
        n_rows = self.problem.n_rows
        return [(start, min(start + self.chunk_rows, n_rows))
                for start in range(0, n_rows, self.chunk_rows)]

    def load_tile(self, first, last):
        """The classifier's (and the bias's) tile in float32."""
        classifier = self.classifier32[:last - first]
        np.copyto(classifier, self.problem.classifier[first:last])
        if self.bias32 is not None:
            np.copyto(self.bias32[:last - first], self.problem.bias[first:last])
        return classifier

    def logits(self, classifier, first, last, start, stop):
        """The float32 logits of rows [start, stop) and classes [first, last), and those
        rows of the hidden in float32."""
        rows = self.hidden32[:stop - start]
        np.copyto(rows, self.problem.hidden[start:stop])
        logits = self.scratch[:stop - start, :last - first]
        np.matmul(rows, classifier.T, out=logits)
        if self.bias32 is not None:
            np.add(logits, self.bias32[:last - first], out=logits)
        return logits, rows

    def target(self, first, last, start, stop):
        """The rows' class indices, or their probabilities on the tile (float32)."""
        problem = self.problem
        if not problem.soft:
            return problem.target[start:stop]
        block = problem.target[start:stop, first:last]
        if self.soft32 is None:
            return block
        soft = self.soft32[:stop - start, :last - first]
        np.copyto(soft, block)
        return soft

    def weight(self, first, last):
        return None if self.problem.weight is None else self.problem.weight[first:last]

    def statistics(self):
        """The merged softmax statistics of every row (pass 1)."""
        problem = self.problem
        merged = None
        tile_stats = np.empty((len(CROSS_ENTROPY_STATS_FIELDS), problem.n_rows), np.float64)
        for first, last in self.tiles():
            classifier = self.load_tile(first, last)
            for start, stop in self.chunks():
                logits, _ = self.logits(classifier, first, last, start, stop)
                tile_stats[:, start:stop] = _kernels.ce_block_stats(
                    logits, self.target(first, last, start, stop), first, problem.n_classes,
                    self.weight(first, last), problem.ignore_index, problem.label_smoothing,
                    problem.softcap, self.threads)
            merged = (tile_stats.copy() if merged is None
                      else _kernels.ce_merge_stats([merged, tile_stats]))
        return merged

    def gradients(self, stats, grads, grad_output):
        """The gradients named in ``grads`` (pass 2), written into its arrays."""
        problem = self.problem
        n_rows, n_features = problem.n_rows, problem.n_features
        upstream, block_reduction, block_z_loss = _block_upstream(problem, grad_output)
        grad_hidden = grads.get("hidden")
        grad_classifier = grads.get("classifier")
        sums_hidden = part_hidden = sums_classifier = part_classifier = bias_sums = None
        if grad_hidden is not None:
            grad_hidden = grad_hidden.reshape(n_rows, n_features)
            sums_hidden = (grad_hidden if grad_hidden.dtype == np.float32
                           else np.empty((n_rows, n_features), np.float32))
            part_hidden = np.empty((self.chunk_rows, n_features), np.float32)
        if grad_classifier is not None:
            sums_classifier = np.empty((self.tile_classes, n_features), np.float32)
            part_classifier = np.empty((self.tile_classes, n_features), np.float32)
        if grads.get("bias") is not None:
            bias_sums = np.zeros(problem.n_classes, np.float64)
        for first, last in self.tiles():
            classifier = self.load_tile(first, last)
            for start, stop in self.chunks():
                logits, rows = self.logits(classifier, first, last, start, stop)
                block_upstream = (float(upstream[0]) if upstream.shape[0] == 1
                                  else upstream[start:stop])
                _kernels.ce_call(_kernels.CE_GRAD, logits, self.target(first, last, start, stop),
                                 self.weight(first, last), problem.ignore_index,
                                 block_reduction, problem.label_smoothing, block_z_loss,
                                 problem.softcap, self.threads, block_upstream, None, logits,
                                 class_offset=first, stats=stats[:, start:stop])
                if sums_hidden is not None:
                    if first == 0:
                        np.matmul(logits, classifier, out=sums_hidden[start:stop])
                    else:
                        part = part_hidden[:stop - start]
                        np.matmul(logits, classifier, out=part)
                        np.add(sums_hidden[start:stop], part, out=sums_hidden[start:stop])
                if sums_classifier is not None:
                    tile = sums_classifier[:last - first]
                    if start == 0:
                        np.matmul(logits.T, rows, out=tile)
                    else:
                        part = part_classifier[:last - first]
                        np.matmul(logits.T, rows, out=part)
                        np.add(tile, part, out=tile)
                if bias_sums is not None:
                    _kernels.column_sums(logits, bias_sums[first:last], self.threads)
            if grad_classifier is not None:
                if n_rows == 0:
                    grad_classifier[first:last] = 0
                else:  # rounded once (to nearest even) to the result's dtype
                    np.copyto(grad_classifier[first:last], sums_classifier[:last - first],
                              casting="unsafe")
        if grad_hidden is not None and sums_hidden is not grad_hidden:
            np.copyto(grad_hidden, sums_hidden, casting="unsafe")
        if bias_sums is not None:
            _store_wide(grads["bias"], bias_sums)


def _store_wide(out, values):
    """float64 ``values`` written into ``out`` rounded once (to nearest even): float32 by
    NumPy, float16 / bfloat16 by the kernels' conversion (a cast through float32 would
    round twice)."""
    if out.dtype == np.float32 or out.dtype == np.float64:
        np.copyto(out, values, casting="unsafe")
        return
    kind = "float16" if out.dtype == np.float16 else "bfloat16"
    out.view(np.uint16)[...] = _kernels.half_store(kind, np.ascontiguousarray(values))


def _run_half(problem, num_threads, grad_output, want, out, grad_dtype):
    """The half-precision path of _run (see _HalfTiles)."""
    tiles = _HalfTiles(problem, num_threads)
    grads = _grad_outputs(out, problem, want, grad_dtype,
                          (("grad_output", grad_output),)) if want else None
    stats = tiles.statistics() if problem.n_rows else np.empty(
        (len(CROSS_ENTROPY_STATS_FIELDS), 0), np.float64)
    if want:
        tiles.gradients(stats, grads, grad_output)
    loss = _kernels.ce_from_stats(stats, None if problem.soft else problem.target,
                                  problem.ignore_index, problem.reduction,
                                  problem.label_smoothing, problem.z_loss, False)[0]
    if problem.reduction == "none":
        loss = np.asarray(loss, dtype=np.float32).reshape(problem.batch_shape)
    return loss, grads


def _run(hidden, classifier, target, bias, weight, ignore_index, reduction, label_smoothing,
         z_loss, softcap, num_threads, block_rows, grad_output=None, want=(), out=None,
         grad_dtype=None):
    """The loss, and the gradients named in ``want`` (a dict name -> array or None)."""
    problem = _Problem(hidden, classifier, target, bias, weight, ignore_index, reduction,
                       label_smoothing, z_loss, softcap, half=True)
    grad_dtype = grad_dtype_arg(grad_dtype, problem.dtype)
    if problem.half:
        _block_rows(problem.n_rows, problem.n_classes, 4, block_rows)  # checked
        return _run_half(problem, num_threads, grad_output, want, out, grad_dtype)
    # a tile of the classifier's gradient of its own only without the hidden's gradient
    # (_NumpyProducts._classifier_grad)
    reserved = (_tile_classes(problem.n_classes, problem.n_features, problem.dtype.itemsize)
                * problem.n_features * problem.dtype.itemsize
                if "classifier" in want and "hidden" not in want
                and _BlasGemm.get(problem.dtype) is None else 0)
    # with a bias: its float64 sums
    rows_per_block = _budget_block_rows(problem.n_rows, problem.n_classes,
                                        problem.dtype.itemsize, block_rows, reserved,
                                        1 if problem.bias is not None else 0)
    grads = _grad_outputs(out, problem, want, upstreams=(("grad_output", grad_output),)) \
        if want else None
    products = _NumpyProducts(problem, rows_per_block, resolve_num_threads(num_threads),
                              grads)
    loss = _schedule(problem, products, num_threads, rows_per_block, grad_output,
                     bool(want))
    if problem.reduction == "none":
        loss = np.asarray(loss, dtype=problem.dtype).reshape(problem.batch_shape)
    return loss, grads


def linear_cross_entropy(hidden, classifier, target, *, bias=None, weight=None,
                         ignore_index=-100, reduction="mean", label_smoothing=0.0, z_loss=0.0,
                         softcap=None, block_rows=None, num_threads=None):
    """Cross-entropy of the logits ``hidden @ classifier.T + bias``, which are never formed.

    The same value as ``cross_entropy(hidden @ classifier.T + bias, target, ...)``
    (torch's ``F.linear_cross_entropy``), computed one block of rows at a time in a
    scratch of a few MiB: the logits of a block come from the BLAS (NumPy's matmul) and
    their softmax statistics from the cross-entropy engine (C, OpenMP).

    Parameters
    ----------
    hidden : array_like, float32, float64, float16 or ml_dtypes.bfloat16, shape (..., H)
        The features (a language model's last hidden states), batch axes first.
    classifier : array_like, shape (V, H), the dtype of hidden
        The output layer's weight (``torch.nn.Linear(H, V).weight``).
    target : array_like
        Integer class indices of shape ``hidden.shape[:-1]``, or probabilities of shape
        ``hidden.shape[:-1] + (V,)`` in hidden's dtype (or float32 beside half inputs).
    bias : array_like, shape (V,), optional
        Added to the logits; the dtype of hidden.
    weight, ignore_index, reduction, label_smoothing, z_loss, softcap
        As in :func:`fastloss.cross_entropy`.
    block_rows : int, optional
        Rows per block (default: the tallest block whose logits, with the statistics and
        the vectors of V values, fit a 12 MiB working-memory budget, whatever V; at
        least 16 rows). Taller blocks run closer to the speed of the whole products and
        keep more scratch (``block_rows * V`` values). Float16 and bfloat16 inputs run
        by tiles of their own (below) and only check it.
    num_threads : int, optional
        OpenMP threads of the softmax passes (the results do not depend on it); the
        products use NumPy's BLAS threads, whose number can change the last bits.

    Returns
    -------
    loss : float or ndarray
        A float for "mean"/"sum"; an array of shape ``hidden.shape[:-1]`` in hidden's
        dtype for "none" (float32 for half inputs).

    Notes
    -----
    The products are computed in the inputs' precision by the BLAS, as every framework
    computes them, so float32 results carry the products' rounding (the accuracy
    contract for losses that multiply matrices, docs/accuracy.rst). Memory beyond the
    inputs and the results: the scratch (``block_rows x V``), 72 bytes per row of
    statistics and a few float64 vectors of V values; about 12 MiB by default.

    float16 and bfloat16 inputs: NumPy has no fast half-precision product, so the
    products run on NumPy's float32 BLAS from float32 copies of bounded tiles of the
    inputs (classes x H and rows x H, 1 MiB each; the half values are exact in float32),
    the softmax on float32 logits, and each gradient is rounded once to the input's dtype
    (docs/accuracy.rst, "linear_cross_entropy in half precision"). The tiles of classes
    are the outer loop so that each tile of the classifier's gradient is summed over all
    rows before its rounding: the statistics take one pass (one product), the gradient a
    second (three products), and the hidden's gradient is summed over the tiles in an
    N x H float32 array (the result itself with ``grad_dtype="float32"``).
    """
    loss, _ = _run(hidden, classifier, target, bias, weight, ignore_index, reduction,
                   label_smoothing, z_loss, softcap, num_threads, block_rows)
    return loss


def linear_cross_entropy_grad(hidden, classifier, target, grad_output=1.0, *, bias=None,
                              weight=None, ignore_index=-100, reduction="mean",
                              label_smoothing=0.0, z_loss=0.0, softcap=None, block_rows=None,
                              out=None, grad_dtype=None, num_threads=None):
    """Gradients of ``grad_output * linear_cross_entropy(...)``.

    Returns ``(grad_hidden, grad_classifier)``, and ``grad_bias`` third when ``bias`` is
    given, each of its input's shape and dtype: with G the gradient of the logits (the
    engine's, one block of rows at a time), ``G @ classifier``, ``G.T @ hidden`` and the
    sum of G's rows (accumulated in float64). ``grad_output`` is a scalar for
    "mean"/"sum" and an array of shape ``hidden.shape[:-1]`` (or a scalar) for "none".
    ``out`` is a tuple of C-contiguous arrays, one per gradient, written and returned.
    ``grad_dtype``: the gradients' dtype; None (the default) gives the inputs' dtype, and
    for float16 / bfloat16 inputs ``"float32"`` (or ``np.float32``) gives float32
    gradients instead, from the same computation (``out`` is then float32).
    Other arguments as in :func:`linear_cross_entropy`.
    """
    _, grads = _run(hidden, classifier, target, bias, weight, ignore_index, reduction,
                    label_smoothing, z_loss, softcap, num_threads, block_rows, grad_output,
                    ("hidden", "classifier", "bias"), out, grad_dtype)
    return tuple(grads.values())


def linear_cross_entropy_value_and_grad(hidden, classifier, target, grad_output=1.0, *,
                                        bias=None, weight=None, ignore_index=-100,
                                        reduction="mean", label_smoothing=0.0, z_loss=0.0,
                                        softcap=None, block_rows=None, out=None,
                                        grad_dtype=None, num_threads=None):
    """``(linear_cross_entropy(...), linear_cross_entropy_grad(...))`` from one pass: each
    block's logits are formed once, and their gradient replaces them in the scratch."""
    loss, grads = _run(hidden, classifier, target, bias, weight, ignore_index, reduction,
                       label_smoothing, z_loss, softcap, num_threads, block_rows, grad_output,
                       ("hidden", "classifier", "bias"), out, grad_dtype)
    return loss, tuple(grads.values())
