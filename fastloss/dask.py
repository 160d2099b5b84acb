"""Cross-entropy over ``dask.array`` logits: per-row losses and log-sum-exps as lazy dask
arrays, for data pipelines that score more rows than fit in memory::

    import dask.array as da
    import fastloss.dask

    logits = da.from_array(np.load("logits.npy", mmap_mode="r"), chunks=(65536, -1))
    losses = fastloss.dask.cross_entropy(logits, target)     # lazy, shape (N,)
    perplexity = np.exp(losses.mean().compute())

Each chunk of rows is one call of fastloss's C kernel (``fastloss.cross_entropy`` with
``reduction="none"``), so the values are the in-memory call's, bit for bit, whatever the
chunks. The kernels release the GIL: dask's threaded scheduler runs chunks in parallel,
and a ``distributed`` cluster runs them in its worker processes.

Logits chunked along the class axis too (a vocabulary too wide for one chunk, or a store
written in column blocks) are reduced chunk by chunk: each chunk gives the block
statistics of its classes (:func:`fastloss.cross_entropy_block_stats`), the statistics of
a row's chunks are merged in the order of the class axis, and the loss comes from the
merged statistics (:func:`fastloss.cross_entropy_from_stats`) -- the in-memory loss to the
accuracy contract, without a row's whole width in memory at once.

dask is optional: ``import fastloss`` never imports it, and this module imports it only
when one of its functions is called (``pip install "fastloss[dask]"``).
"""
import string

import numpy as np

import fastloss
from fastloss._validation import positioned_error

__all__ = ["cross_entropy", "logsumexp"]

_INSTALL = ('fastloss.dask needs dask.array: pip install "fastloss[dask]" '
            '(or pip install "dask[array]")')


def _dask_array():
    try:
        import dask.array as da
    except ImportError as error:
        raise ImportError(_INSTALL) from error
    return da


def _as_dask(da, value, name, chunks):
    """A dask array as it is; anything else wrapped, in ``chunks(array)``."""
    if isinstance(value, da.Array):
        return value
    if value is None or isinstance(value, (str, bytes, dict)):
        raise TypeError(f"{name}: expected an array, got {type(value).__name__}")
    try:
        array = value if hasattr(value, "shape") and hasattr(value, "dtype") else np.asarray(value)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name}: expected an array ({error})") from None
    return da.from_array(array, chunks=chunks(array))


def _chunks_like(array, layouts):
    """The chunks of the first (shape, chunks) of ``layouts`` whose shape is the array's;
    one chunk if none is (the shape check that follows names the argument)."""
    for shape, chunks in layouts:
        if array.shape == shape:
            return chunks
    return array.shape


def _logits_arg(da, logits):
    # an array in memory or memory-mapped: chunks of rows of dask's default size
    # (one chunk when it is empty: dask cannot size chunks of nothing, and the probe
    # below names what is wrong with it)
    logits = _as_dask(da, logits, "logits", lambda a: (
        ("auto",) * (a.ndim - 1) + (-1,) if a.ndim and a.size else a.shape))
    if logits.ndim < 1:
        raise ValueError("logits: expected at least one axis (the classes, last), got a scalar")
    if logits.shape[-1] == 0:
        # (the probe below would name the shape of its zero rows, (0, 0))
        raise ValueError(f"logits: expected at least one class, got shape {logits.shape}")
    if logits.dtype not in (np.float32, np.float64):
        raise TypeError(f"logits: expected a float32 or float64 array, got dtype {logits.dtype}")
    if any(np.isnan(n) for n in logits.shape):
        raise ValueError("logits: the shape must be known (call compute_chunk_sizes() first)")
    widths = logits.chunks[-1]
    if 0 in widths and len(widths) > 1:
        # a chunk of no classes has no first class for its block's offset, and no
        # statistics: the rows' chunks are kept, those chunks dropped (no data moves)
        logits = logits.rechunk(logits.chunks[:-1] + (tuple(w for w in widths if w)
                                                      or (0,),))
    return logits


def _target_arg(da, target, logits):
    """The target as a dask array chunked with the logits' rows (and classes, soft)."""
    target = _as_dask(da, target, "target", lambda a: _chunks_like(
        a, [(logits.shape, logits.chunks), (logits.shape[:-1], logits.chunks[:-1])]))
    soft = np.issubdtype(target.dtype, np.floating)
    expected = logits.shape if soft else logits.shape[:-1]
    if target.shape != expected:
        what = "probabilities" if soft else "class indices"
        raise ValueError(f"target: expected {what} of shape {expected}, got {target.shape}")
    chunks = logits.chunks if soft else logits.chunks[:-1]
    if target.chunks != chunks:
        target = target.rechunk(chunks)
    return target, soft


def _weight_arg(da, weight, logits):
    if weight is None:
        return None
    weight = _as_dask(da, weight, "weight", lambda a: _chunks_like(
        a, [(logits.shape[-1:], logits.chunks[-1:])]))
    if weight.shape != logits.shape[-1:]:
        raise ValueError(f"weight: expected shape {logits.shape[-1:]}, got {weight.shape}")
    return weight.rechunk(logits.chunks[-1:])


def _probe(logits, target, weight, soft, options):
    """Check every option now (not at compute time) with the in-memory call on zero rows,
    the one place that checks them; returns the per-row loss's dtype."""
    classes = logits.shape[-1]
    probe_logits = np.zeros((0, classes), logits.dtype)
    probe_target = np.zeros((0, classes) if soft else (0,), target.dtype)
    probe_weight = None if weight is None else np.ones(weight.shape, weight.dtype)
    loss = fastloss.cross_entropy(probe_logits, probe_target, weight=probe_weight,
                                  reduction="none", **options)
    return loss.dtype


def _indices(ndim):
    letters = string.ascii_lowercase[:ndim]
    return letters, letters[:-1]


def cross_entropy(logits, target, *, weight=None, ignore_index=-100, label_smoothing=0.0,
                  z_loss=0.0, softcap=None, return_lse=False, num_threads=None):
    """Per-row softmax cross-entropy of a dask array of logits, as a lazy dask array.

    ``fastloss.cross_entropy(logits, target, reduction="none", ...)`` chunk by chunk: the
    result has the logits' row chunks and, chunk for chunk, the in-memory call's values.

    Parameters
    ----------
    logits : dask.array.Array (or array_like), float32 or float64, shape (..., C)
        Unnormalised scores, class axis last, chunked along the rows (the leading axes)
        and, optionally, along the classes.
    target : dask.array.Array (or array_like)
        Integer class indices of shape (...), or float probabilities of shape (..., C).
        Rechunked to the logits' chunks if its own differ.
    weight : array_like or dask.array.Array, shape (C,), optional
        Per-class weights.
    ignore_index : int
        Rows whose target equals it have loss 0 (and log-sum-exp 0).
    label_smoothing : float in [0, 1]
    z_loss : float >= 0
        Adds ``z_loss * lse**2`` to each non-ignored row's loss.
    softcap : float > 0, optional
        Logits become ``softcap * tanh(logits / softcap)`` first.
    return_lse : bool
        Also return the per-row log-sum-exp (float64, 0 for ignored rows). The two arrays
        come from the same tasks: ``dask.compute(loss, lse)`` reads each chunk once.
    num_threads : int, optional
        fastloss's threads inside each chunk's call (default: fastloss.get_num_threads()).
        With a threaded scheduler of several workers, 1 avoids oversubscribing the cores.

    Returns
    -------
    loss : dask.array.Array, shape (...)
        float64 if the logits or the probability targets are, else float32; chunked as
        the logits' rows.
    lse : dask.array.Array of float64, shape (...)
        Only with return_lse=True.

    Raises
    ------
    ImportError
        dask is not installed.
    TypeError, ValueError
        A bad argument, named, when the graph is built. A class index out of range is
        found only when its chunk is computed (the kernel's ValueError, raised by
        ``compute()``).

    Notes
    -----
    Rows chunked: each chunk is one call of the in-memory kernel, so the losses are
    the in-memory call's bit for bit. Classes chunked as well: each chunk gives the block
    statistics of its classes, merged in the class axis' order; the losses are the
    in-memory call's to the accuracy contract (docs/accuracy.rst).

    The reductions are a line of dask away; torch's "mean" of unweighted hard targets
    is ``loss.sum() / (target != ignore_index).sum()``.
    """
    da = _dask_array()
    logits = _logits_arg(da, logits)
    target, soft = _target_arg(da, target, logits)
    weight = _weight_arg(da, weight, logits)
    options = dict(ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss,
                   softcap=softcap, num_threads=num_threads)
    loss_dtype = _probe(logits, target, weight, soft, options)
    both = _loss_and_lse(da, logits, target, weight, soft, options)
    loss = both[..., 0].astype(loss_dtype)
    return (loss, both[..., 1]) if return_lse else loss


# ----------------------------------------------------------------------------------------
# The graphs: per row chunk, an array (..., 2) of each row's loss (in float64) and lse
# ----------------------------------------------------------------------------------------

_PAIR = "Z"      # the blockwise index of the (loss, lse) axis
_FIELDS = "Y"    # the blockwise index of the statistics' fields


def _row_starts(da, logits, rows):
    """Per row axis, its indices chunked as the logits' rows (blockwise arguments): each
    task learns where its chunk of rows starts from their first, to name an offending
    target by its position in the whole array, not in the chunk."""
    arguments = []
    for axis, letter in enumerate(rows):
        arguments += [da.arange(logits.shape[axis], chunks=logits.chunks[axis]), letter]
    return arguments


def _chunk_error(starts, call, *arguments, **options):
    """``call(*arguments, **options)``; a ValueError that names a position of the target
    (a target out of range, found by the kernel in its chunk: _validation.positioned_error)
    is raised again with the position moved by the chunk's first row, ``starts`` (one
    index array per row axis)."""
    try:
        return call(*arguments, **options)
    except ValueError as error:
        first = tuple(int(axis[0]) if axis.size else 0 for axis in starts)
        made = getattr(error, "fastloss_position", None)
        if made is None or not any(first):
            raise
        template, local, fields = made
        if len(local) != len(first):
            raise
        position = tuple(index + start for index, start in zip(local, first))
        raise positioned_error(template, position, **fields) from None


def _loss_and_lse(da, logits, target, weight, soft, options):
    index, rows = _indices(logits.ndim)
    arguments = _row_starts(da, logits, rows) + [logits, index, target,
                                                  index if soft else rows]
    if weight is not None:
        arguments += [weight, index[-1]]
    if logits.numblocks[-1] == 1:
        # concatenate=False: the class axis (in no output) arrives as a list of its one
        # chunk, unwrapped by _whole_rows; concatenating it would copy every chunk
        return da.blockwise(_whole_rows, rows + _PAIR, *arguments, new_axes={_PAIR: 2},
                            concatenate=False, dtype=np.float64, meta=np.empty((0,) * logits.ndim, np.float64),
                            row_axes=len(rows), **options)
    return _class_blocks(da, logits, target, soft, index, rows, arguments, options)


def _whole_rows(*arrays, row_axes, **options):
    """A chunk of rows with all their classes: one call of the in-memory kernel.  The
    arrays with a class axis come as a list of their one chunk along it; the first
    ``row_axes`` arrays are the rows' indices (_row_starts)."""
    starts, (logits, target, *weight) = arrays[:row_axes], arrays[row_axes:]
    (logits,) = logits
    if isinstance(target, list):   # probabilities
        (target,) = target
    weight = weight[0][0] if weight else None
    loss, lse = _chunk_error(starts, fastloss.cross_entropy, logits, target, weight=weight,
                             reduction="none", return_lse=True, **options)
    return np.stack([loss.astype(np.float64), lse], axis=-1)


def _class_blocks(da, logits, target, soft, index, rows, arguments, options):
    """Chunks along the classes: each chunk's block statistics (a task per chunk, 9 float64
    per row out), then per chunk of rows the merge in the class axis' order and the loss
    from the merged statistics."""
    block_options = dict(options)
    z_loss = block_options.pop("z_loss")
    # each class chunk learns its offset from the first class index of its chunk of these
    offsets = da.arange(logits.shape[-1], chunks=logits.chunks[-1:])
    stats = da.blockwise(
        _block_stats, _FIELDS + index, offsets, index[-1], *arguments,
        new_axes={_FIELDS: len(fastloss.CROSS_ENTROPY_STATS_FIELDS)},
        adjust_chunks={index[-1]: 1}, dtype=np.float64,
        meta=np.empty((0,) * (logits.ndim + 1), np.float64), num_classes=logits.shape[-1],
        row_axes=len(rows), **block_options)
    merge_arguments = (_row_starts(da, logits, rows) + [stats, _FIELDS + index]
                       + ([] if soft else [target, rows]))
    return da.blockwise(
        _merged_rows, rows + _PAIR, *merge_arguments, new_axes={_PAIR: 2}, concatenate=False,
        dtype=np.float64, meta=np.empty((0,) * logits.ndim, np.float64),
        ignore_index=options["ignore_index"], label_smoothing=options["label_smoothing"],
        z_loss=z_loss, row_axes=len(rows))


def _block_stats(offsets, *arrays, row_axes, **options):
    """The statistics (fields first, a trailing axis of 1: the chunk's place along the
    classes) of one chunk of rows and classes; the first ``row_axes`` arrays are the
    rows' indices (_row_starts)."""
    starts, (logits, target, *weight) = arrays[:row_axes], arrays[row_axes:]
    stats = _chunk_error(
        starts, fastloss.cross_entropy_block_stats, logits, target,
        class_offset=int(offsets[0]), weight=weight[0] if weight else None, **options)
    return stats[..., np.newaxis]


def _merged_rows(*arrays, row_axes, **options):
    """The blocks' statistics of a chunk of rows (a list over the fields' single chunk of
    lists over the class chunks, in order), merged; the loss and lse from them. The first
    ``row_axes`` arrays are the rows' indices (_row_starts), then the statistics and, for
    class indices, the target."""
    starts, (stats, *target) = arrays[:row_axes], arrays[row_axes:]
    (blocks,) = stats
    merged = fastloss.cross_entropy_merge_stats([block[..., 0] for block in blocks])
    loss, lse = _chunk_error(starts, fastloss.cross_entropy_from_stats, merged,
                             target[0] if target else None, reduction="none",
                             return_lse=True, **options)
    return np.stack([np.asarray(loss, np.float64), lse], axis=-1)


def logsumexp(logits, *, softcap=None, num_threads=None):
    """Per-row log-sum-exp over the last axis of a dask array of logits, lazily.

    ``log(sum_c exp(y_c))`` of each row, with y the logits (soft-capped first when
    ``softcap`` is given), computed in float64 by the kernel's one pass (its running
    max and rescaled sum); the normaliser of the row's softmax, and the ``lse`` that
    ``fastloss.cross_entropy_grad(..., lse=...)`` takes.

    Parameters
    ----------
    logits : dask.array.Array (or array_like), float32 or float64, shape (..., C)
        Chunked along the rows and, optionally, along the classes.
    softcap : float > 0, optional
    num_threads : int, optional
        fastloss's threads inside each chunk's call.

    Returns
    -------
    lse : dask.array.Array of float64, shape (...)
        Chunked as the logits' rows.
    """
    da = _dask_array()
    logits = _logits_arg(da, logits)
    target = da.zeros(logits.shape[:-1], dtype=np.int64, chunks=logits.chunks[:-1])
    options = dict(ignore_index=-100, label_smoothing=0.0, z_loss=0.0, softcap=softcap,
                   num_threads=num_threads)
    _probe(logits, target, None, False, options)
    return _loss_and_lse(da, logits, target, None, False, options)[..., 1]
