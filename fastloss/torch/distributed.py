"""Cross-entropy over a vocabulary split across the ranks of a ``torch.distributed`` group
(tensor parallelism), exact and with O(N) communication::

    from fastloss.torch.distributed import vocab_parallel_cross_entropy
    # this rank holds the classes [vocab_start, vocab_start + local_logits.shape[-1])
    loss = vocab_parallel_cross_entropy(local_logits, target, vocab_start=start)
    loss.backward()          # local_logits.grad: this rank's slice of the gradient

Each rank computes the statistics of its block of classes
(:func:`fastloss.cross_entropy_block_stats`), the group merges them with two all-reduces
(the rows' maxima, MAX; the sums rebased onto them, SUM: 9 float64 values per row in all)
and every rank then has the whole rows' statistics: the loss
(:func:`fastloss.cross_entropy_from_stats`) and its own slice of the gradient
(:func:`fastloss.cross_entropy_grad` with ``stats=``) need nothing more from the others.
The logits are never gathered, and the backward communicates nothing. Label smoothing
and class weights use the global vocabulary size and the global weight total (the
merged statistics carry both), never a rank's own. docs/block_statistics.rst describes
the statistics and the merge.

Any backend with MAX and SUM all-reduces of float64 tensors works (gloo on CPU).
"""
import zlib

import numpy as np
import torch
import torch.distributed as dist

import fastloss
from fastloss._config import resolve_num_threads
from fastloss._validation import reduction_arg
from fastloss.torch._autograd import first_order

__all__ = ["VocabParallelCrossEntropyLoss", "vocab_parallel_cross_entropy"]

_FLOAT_DTYPES = (torch.float32, torch.float64)


def _group_ready(group):
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("group: torch.distributed is not initialised (call "
                           "torch.distributed.init_process_group first)")
    return dist.group.WORLD if group is None else group


def _local_checks(local_logits, target, vocab_start, weight, reduction, vocab_size):
    """The checks one rank can make alone; the first error, or None."""
    try:
        if not isinstance(local_logits, torch.Tensor):
            raise TypeError(f"local_logits: expected a torch.Tensor, got "
                            f"{type(local_logits).__name__}")
        if local_logits.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"local_logits: expected float32 or float64, got "
                            f"{local_logits.dtype}")
        if local_logits.device.type != "cpu":
            raise ValueError(f"local_logits: expected a CPU tensor, got device "
                             f"{local_logits.device}")
        if local_logits.dim() == 0 or local_logits.shape[-1] == 0:
            raise ValueError(f"local_logits: expected shape (..., local_width) with "
                             f"local_width >= 1, got {tuple(local_logits.shape)}")
        if not isinstance(target, torch.Tensor):
            raise TypeError(f"target: expected a torch.Tensor, got {type(target).__name__}")
        if target.is_floating_point():
            if target.shape != local_logits.shape:
                raise ValueError(f"target: expected this rank's probabilities of shape "
                                 f"{tuple(local_logits.shape)} or class indices of shape "
                                 f"{tuple(local_logits.shape[:-1])}, got {tuple(target.shape)}")
            if target.requires_grad and torch.is_grad_enabled():
                raise RuntimeError("target: the gradient w.r.t. probability targets is not "
                                   "computed by vocab_parallel_cross_entropy (detach it)")
        elif target.dtype in (torch.bool, torch.complex64, torch.complex128):
            raise TypeError(f"target: expected class indices or probabilities, got "
                            f"{target.dtype}")
        elif target.shape != local_logits.shape[:-1]:
            raise ValueError(f"target: expected class indices of shape "
                             f"{tuple(local_logits.shape[:-1])} (the whole batch, on every "
                             f"rank), got {tuple(target.shape)}")
        if isinstance(vocab_start, bool) or not isinstance(vocab_start, (int, np.integer)):
            raise TypeError(f"vocab_start: expected an integer, got {vocab_start!r}")
        width = local_logits.shape[-1]
        if not -2**63 <= int(vocab_start) <= 2**63 - 1 - width:
            # (the slices are exchanged as int64; a negative start is refused after the
            # exchange, on every rank alike)
            raise ValueError(f"vocab_start: expected classes within int64, got "
                             f"{int(vocab_start)} for {width} classes")
        if weight is not None:
            if not isinstance(weight, torch.Tensor):
                raise TypeError(f"weight: expected a torch.Tensor, got "
                                f"{type(weight).__name__}")
            if weight.shape != (local_logits.shape[-1],):
                raise ValueError(f"weight: expected this rank's slice of the class weights, "
                                 f"shape ({local_logits.shape[-1]},), got "
                                 f"{tuple(weight.shape)}")
            if weight.requires_grad and torch.is_grad_enabled():
                raise RuntimeError("weight: the gradient w.r.t. the class weights is not "
                                   "computed by vocab_parallel_cross_entropy (detach it)")
        reduction_arg(reduction)
        if vocab_size is not None and (isinstance(vocab_size, bool)
                                       or not isinstance(vocab_size, (int, np.integer))):
            raise TypeError(f"vocab_size: expected an integer or None, got {vocab_size!r}")
    except (TypeError, ValueError, RuntimeError) as error:
        return error
    return None


def _crc(data):
    """A 32-bit checksum of bytes (the same on every rank for the same data)."""
    return zlib.crc32(data) & 0xFFFFFFFF


def _fingerprints(local_logits, target, options):
    """What every rank must agree on, as checksums: the batch's shape, the class indices
    (probability targets are each rank's own slice: not compared) and the options."""
    batch = tuple(int(d) for d in local_logits.shape[:-1])
    if target.is_floating_point():
        indices = 0
    else:
        indices = _crc(target.detach().to(torch.int64).contiguous().numpy().tobytes())
    return [_crc(repr(batch).encode()), indices, _crc(repr(options).encode())]


def _plain(value):
    """An option as the same Python value on every rank (0.1 and np.float64(0.1) alike)."""
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return repr(value)


def _slices(group, local_logits, target, vocab_start, local_error, vocab_size, options):
    """The global vocabulary size, after every rank has seen every rank's slice: an
    all-gather of (vocab_start, width, error flag, checksums of the batch's shape, of the
    class indices and of the options) per rank, so that all ranks raise together on bad
    input (a slice, a batch or targets that differ between ranks) instead of leaving the
    others waiting in a collective."""
    if local_error is None:
        mine = [int(vocab_start), int(local_logits.shape[-1]), 0,
                *_fingerprints(local_logits, target, options)]
    else:
        mine = [0, 0, 1, 0, 0, 0]
    world = dist.get_world_size(group)
    gathered = [torch.empty(len(mine), dtype=torch.int64) for _ in range(world)]
    dist.all_gather(gathered, torch.tensor(mine, dtype=torch.int64), group=group)
    if local_error is not None:
        raise local_error
    rows = [tuple(int(v) for v in g) for g in gathered]
    failed = [rank for rank, row in enumerate(rows) if row[2]]
    if failed:
        raise ValueError(f"vocab_parallel_cross_entropy: bad input on rank(s) {failed} of the "
                         f"group (each raised its own error)")
    for field, argument, what in ((3, "local_logits", "batch shapes (local_logits.shape[:-1])"),
                                  (4, "target", "class indices"),
                                  (5, "options", "options (ignore_index, reduction, "
                                                 "label_smoothing, z_loss, softcap, weight "
                                                 "given or not)")):
        differ = [rank for rank, row in enumerate(rows) if row[field] != rows[0][field]]
        if differ:
            raise ValueError(f"{argument}: the ranks' {what} differ: rank(s) {differ} "
                             f"disagree with rank 0 (every rank must pass the whole batch's "
                             f"target and the same options)")
    for rank, row in enumerate(rows):
        if row[0] < 0:
            raise ValueError(f"vocab_start: expected an integer >= 0, got {row[0]} on "
                             f"rank {rank}")
    order = sorted(range(world), key=lambda rank: rows[rank][0])
    expected = 0
    for rank in order:
        rank_start, rank_width = rows[rank][:2]
        if rank_start != expected:
            kind = "overlap" if rank_start < expected else "leave a gap"
            raise ValueError(f"vocab_start: the ranks' slices {kind} at class {expected}: "
                             f"rank {rank} holds [{rank_start}, {rank_start + rank_width}) "
                             f"(slices by rank: "
                             f"{[(r[0], r[0] + r[1]) for r in rows]})")
        expected = rank_start + rank_width
    if vocab_size is not None and vocab_size != expected:
        raise ValueError(f"vocab_size: the ranks' slices cover {expected} classes, not "
                         f"{vocab_size}")
    return expected


def _merged_stats(group, stats, batch, local_error):
    """The whole rows' statistics from this rank's: MAX of the maxima, then SUM of the
    sums rebased onto them (the layout of fastloss.CROSS_ENTROPY_STATS_FIELDS). A rank
    whose own statistics failed (``local_error``) says so in one more element of the MAX
    all-reduce, so that every rank raises before the SUM instead of waiting in it."""
    rows = int(np.prod(batch, dtype=np.int64))
    buffer = torch.full((rows + 1,), -np.inf, dtype=torch.float64)
    if local_error is None:
        buffer[:rows] = torch.from_numpy(stats[0].reshape(-1))  # (a copy: stats keeps its own)
    buffer[rows] = 0.0 if local_error is None else 1.0
    dist.all_reduce(buffer, op=dist.ReduceOp.MAX, group=group)
    if local_error is not None:
        raise local_error
    if buffer[rows] > 0:
        raise ValueError("vocab_parallel_cross_entropy: bad input on another rank of the "
                         "group (it raised its own error)")
    merged = fastloss.cross_entropy_rebase_stats(stats, buffer[:rows].numpy().reshape(batch))
    sums = torch.from_numpy(merged[1:])  # contiguous: the fields come first
    dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=group)
    return merged


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local_logits, target, weight, options):
        (group, vocab_start, vocab_size, ignore_index, reduction, label_smoothing, z_loss,
         softcap, num_threads) = options
        logits = local_logits.detach().numpy()
        soft = target.is_floating_point()
        target_array = target.detach().numpy()
        weight_array = None if weight is None else weight.detach().numpy()
        stats, local_error = None, None
        try:
            stats = fastloss.cross_entropy_block_stats(
                logits, target_array, class_offset=vocab_start, num_classes=vocab_size,
                weight=weight_array, ignore_index=ignore_index,
                label_smoothing=label_smoothing, softcap=softcap, num_threads=num_threads)
        except (TypeError, ValueError) as error:
            local_error = error
        merged = _merged_stats(group, stats, logits.shape[:-1], local_error)
        loss = fastloss.cross_entropy_from_stats(
            merged, None if soft else target_array, ignore_index=ignore_index,
            reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss)
        ctx.options = options
        ctx.merged = merged  # O(N): all the backward needs from the other ranks
        ctx.save_for_backward(local_logits, target, weight)
        if reduction == "none":
            return torch.from_numpy(np.asarray(loss, dtype=logits.dtype))
        return torch.tensor(loss, dtype=local_logits.dtype)

    @staticmethod
    @first_order
    def backward(ctx, grad_output):
        (_, vocab_start, _, ignore_index, reduction, label_smoothing, z_loss, softcap,
         num_threads) = ctx.options
        local_logits, target, weight = ctx.saved_tensors
        upstream = (grad_output.detach().to(torch.float64).numpy() if reduction == "none"
                    else float(grad_output))
        grad = fastloss.cross_entropy_grad(
            local_logits.detach().numpy(), target.detach().numpy(), upstream,
            weight=None if weight is None else weight.detach().numpy(),
            ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
            z_loss=z_loss, softcap=softcap, class_offset=vocab_start, stats=ctx.merged,
            num_threads=num_threads)
        return torch.from_numpy(grad), None, None, None


def vocab_parallel_cross_entropy(local_logits, target, *, vocab_start, group=None,
                                 weight=None, ignore_index=-100, reduction="mean",
                                 label_smoothing=0.0, z_loss=0.0, softcap=None,
                                 vocab_size=None, num_threads=None):
    """Cross-entropy of rows whose classes are split across the ranks of ``group``.

    Parameters
    ----------
    local_logits : Tensor, float32 or float64, shape (..., local_width)
        This rank's classes ``[vocab_start, vocab_start + local_width)`` of each row
        (class axis last, as tensor-parallel output layers produce it). Slices may be
        uneven; together the ranks' slices must cover ``[0, C)`` without overlap.
    target : Tensor
        The class indices of the whole batch, shape (...), the same on every rank
        (global indices), or this rank's slice of probability targets (..., local_width).
    vocab_start : int
        The global index of this rank's first class.
    group : ProcessGroup, optional
        The ranks that share the vocabulary (default: the whole world).
    weight : Tensor, shape (local_width,), optional
        This rank's slice of the class weights.
    ignore_index, reduction, label_smoothing, z_loss, softcap
        As in :func:`fastloss.torch.cross_entropy`, over the global vocabulary: ``eps / C``
        with the global C, the weighted mean over the global ``w[t]``.
    vocab_size : int, optional
        The expected C: the ranks' slices must cover exactly that many classes.
    num_threads : int, optional
        fastloss threads for this rank's kernels.

    Returns
    -------
    Tensor
        The loss (the same on every rank): a scalar, or shape (...) for "none". Its
        backward gives ``local_logits`` this rank's slice of the gradient of the loss on
        the gathered logits, and communicates nothing.

    Communication per call: an all-gather of 6 int64 per rank (the slices, and checksums
    of the batch's shape, the class indices and the options, checked on every rank), and
    all-reduces of N + 1 float64 (MAX: the maxima and an error flag) and 8 N float64 (SUM).

    Raises
    ------
    RuntimeError
        torch.distributed is not initialised (``group``).
    ValueError, TypeError
        Slices that overlap or leave a gap, a negative ``vocab_start``, a class index
        outside the global vocabulary, a ``weight`` of the wrong length, batch shapes,
        class indices or options that differ between ranks, ... (every rank raises: the
        slices and the checksums are exchanged before any rank checks them).
    """
    group = _group_ready(group)
    local_error = _local_checks(local_logits, target, vocab_start, weight, reduction,
                                vocab_size)
    agreed = tuple(_plain(v) for v in (ignore_index, reduction, label_smoothing, z_loss,
                                        softcap, weight is None))
    num_classes = _slices(group, local_logits, target, vocab_start, local_error, vocab_size,
                          agreed)
    options = (group, int(vocab_start), num_classes, ignore_index, reduction,
               label_smoothing, z_loss, softcap, resolve_num_threads(num_threads))
    if not target.is_floating_point():
        target = target.to(torch.int64) if target.dtype != torch.int64 else target
    return _VocabParallelCrossEntropy.apply(local_logits, target, weight, options)


class VocabParallelCrossEntropyLoss(torch.nn.Module):
    """:func:`vocab_parallel_cross_entropy` as a module: ``weight`` (this rank's slice)
    is a buffer, the options attributes."""

    def __init__(self, vocab_start, *, group=None, weight=None, ignore_index=-100,
                 reduction="mean", label_smoothing=0.0, z_loss=0.0, softcap=None,
                 vocab_size=None, num_threads=None):
        super().__init__()
        self.vocab_start = vocab_start
        self.group = group
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.softcap = softcap
        self.vocab_size = vocab_size
        self.num_threads = num_threads

    def forward(self, local_logits, target):
        return vocab_parallel_cross_entropy(
            local_logits, target, vocab_start=self.vocab_start, group=self.group,
            weight=self.weight, ignore_index=self.ignore_index, reduction=self.reduction,
            label_smoothing=self.label_smoothing, z_loss=self.z_loss, softcap=self.softcap,
            vocab_size=self.vocab_size, num_threads=self.num_threads)

    def extra_repr(self):
        return (f"vocab_start={self.vocab_start}, reduction={self.reduction!r}, "
                f"label_smoothing={self.label_smoothing}, z_loss={self.z_loss}, "
                f"softcap={self.softcap}")
