"""``fastloss bench``: the side-by-side benchmark table.

Everything is timed in one process on the same arrays and reported as ratios to two
memory-bound baselines measured in the same run: ``np.copyto`` of the input (one read
and one write, the limit for a fused loss and gradient) and a read-only reduction
(the limit for a forward pass). The performance targets printed under each table, and
the sizes at which they are judged, are described in BENCHMARKS.md.

The benchmarks are a table. A ``Family`` makes the shared inputs of one problem size
(``make_inputs``) and lists its ``Case`` rows; each case turns those inputs into a
``Timed`` (the call to time, an optional untimed ``prepare`` run before every call, and
a ``scale`` for cases timed on a slice). A ``Grid`` times a few cases over many small
problem sizes, one line per size. ``FAMILIES`` holds them all; ``TARGETS`` the
performance targets of each, with the size at which each is judged.
"""
import dataclasses
import gc
import json
import os
import platform
import statistics
import sys
import textwrap
import time
from typing import Callable, Optional

import numpy as np

import fastloss
from fastloss import reference
from fastloss._config import config

__all__ = ["Case", "Family", "FAMILIES", "Grid", "Target", "TARGETS", "Timed", "Unavailable",
           "machine_info", "run", "main"]


# ----------------------------------------------------------------------------------------
# The table's types
# ----------------------------------------------------------------------------------------

@dataclasses.dataclass
class Timed:
    """A call to time. ``prepare`` runs, untimed, before every call (e.g. to restore
    logits that an in-place call overwrote). The reported times are the measured ones
    multiplied by ``scale`` (for a case timed on a slice of the rows)."""

    call: Callable[[], object]
    prepare: Optional[Callable[[], object]] = None
    scale: float = 1.0
    note: str = ""


class Unavailable(Exception):
    """Raised by a case's setup when the case cannot run on this machine (e.g.
    torch.compile fails); the message is the reason the report gives."""


@dataclasses.dataclass(frozen=True)
class Case:
    """One row of the table.

    ``setup(inputs, threads)`` returns a ``Timed``, or None when the case cannot run
    here (``requires`` names the missing module for the report), or raises
    ``Unavailable`` with the reason. ``role`` marks the family's baselines: ``"copy"``
    (read + write) and ``"read"`` (read only). ``read_only`` rows are also compared with
    the read baseline. ``compiles`` marks the torch.compile rows, which ``--no-compile``
    leaves out (compiling takes seconds to half a minute).
    """

    name: str
    setup: Callable[[dict, int], Optional[Timed]]
    role: str = ""
    read_only: bool = False
    requires: str = ""
    compiles: bool = False


@dataclasses.dataclass(frozen=True)
class Family:
    """A loss family's benchmark: its input maker, sizes and cases.

    ``make_inputs(size, dtype)`` returns a dict of arrays shared by all cases (cases may
    add their own entries, e.g. a precomputed lse). ``sizes`` maps "full" and "quick"
    to the default size tuple; ``size_names`` names its entries (e.g. ("N", "C")).
    ``repeats`` maps "full" and "quick" to the default number of timed rounds (10 and
    5 unless given: a family of short calls takes more).
    """

    name: str
    title: str
    make_inputs: Callable[[tuple, np.dtype], dict]
    sizes: dict
    size_names: tuple
    cases: tuple
    dtype: str = "float32"
    repeats: Optional[dict] = None


@dataclasses.dataclass(frozen=True)
class Target:
    """A performance target: ``numerator`` / ``denominator`` (the medians of two rows)
    at most (``sense="max"``) or at least (``"min"``) ``bound``. It is judged only at
    ``size``, the size it is set for; at other sizes (``--quick``) the ratio is shown
    for reference. ``size=None``: judged at every size (a grid's targets, set per cell).
    """

    text: str
    numerator: str
    denominator: str
    bound: float
    sense: str
    size: Optional[tuple] = None

    def met(self, ratio):
        return ratio <= self.bound if self.sense == "max" else ratio >= self.bound


# ----------------------------------------------------------------------------------------
# Cross-entropy
# ----------------------------------------------------------------------------------------

# The float64 reference is slow (several float64 temporaries of N x C); it is timed on
# this many rows and the time scaled by N / rows. Its cost is linear in the rows.
REFERENCE_ROWS = 256


def _ce_logits_and_target(size, dtype):
    """Logits (3 standard normals) and class indices, the same for every case of a size."""
    n_rows, n_classes = size
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((n_rows, n_classes), dtype=np.float32).astype(dtype,
                                                                               copy=False)
    logits *= 3
    return logits, rng.integers(0, n_classes, size=n_rows, dtype=np.int64)


def _ce_inputs(size, dtype):
    logits, target = _ce_logits_and_target(size, dtype)
    # Touch every page of the output buffers now, so no case pays for first-touch faults.
    buffer = np.empty_like(logits)
    buffer.fill(0)
    work = np.empty_like(logits)
    work.fill(0)
    return {"logits": logits, "target": target, "buffer": buffer, "work": work}


def _ce_fused_out(inputs, threads):
    logits, target, buffer = inputs["logits"], inputs["target"], inputs["buffer"]
    return Timed(lambda: fastloss.cross_entropy_value_and_grad(
        logits, target, out=buffer, num_threads=threads))


def _ce_fused_in_place(inputs, threads):
    logits, target, work = inputs["logits"], inputs["target"], inputs["work"]
    # Each call overwrites `work` with the gradient; restore the logits (untimed) so
    # every call sees the same input.
    return Timed(lambda: fastloss.cross_entropy_value_and_grad(
        work, target, out=work, num_threads=threads),
        prepare=lambda: np.copyto(work, logits),
        note="logits restored (untimed) before each call")


def _ce_forward(inputs, threads):
    logits, target = inputs["logits"], inputs["target"]
    return Timed(lambda: fastloss.cross_entropy(logits, target, num_threads=threads))


def _ce_grad_from_lse(inputs, threads):
    logits, target, buffer = inputs["logits"], inputs["target"], inputs["buffer"]
    _, lse = fastloss.cross_entropy(logits, target, return_lse=True, num_threads=threads)
    return Timed(lambda: fastloss.cross_entropy_grad(
        logits, target, lse=lse, out=buffer, num_threads=threads))


def _ce_reference(inputs, threads):
    logits, target = inputs["logits"], inputs["target"]
    n_rows = logits.shape[0]
    rows = min(n_rows, REFERENCE_ROWS)
    logits_slice, target_slice = logits[:rows], target[:rows]
    note = "float64, single-threaded NumPy"
    if rows < n_rows:
        note += f"; timed on {rows} of {n_rows} rows, scaled x{n_rows / rows:g}"
    return Timed(lambda: reference.cross_entropy_value_and_grad(logits_slice, target_slice),
                 scale=n_rows / rows, note=note)


def _copy(inputs, threads):
    logits, buffer = inputs["logits"], inputs["buffer"]
    return Timed(lambda: np.copyto(buffer, logits), note="memory-bandwidth limit")


def _read(inputs, threads):
    logits = inputs["logits"]
    return Timed(lambda: logits.max(), note="read-only limit")


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _ce_torch_forward_backward(inputs, threads):
    torch = _torch()
    if torch is None:
        return None
    import torch.nn.functional as F

    logits = torch.from_numpy(inputs["logits"]).requires_grad_(True)
    target = torch.from_numpy(inputs["target"])

    def clear():
        logits.grad = None  # so backward allocates a fresh gradient, as in training

    def call():
        F.cross_entropy(logits, target).backward()

    return Timed(call, prepare=clear, note="torch.from_numpy inputs; backward into a fresh .grad")


def _ce_adapter_forward_backward(inputs, threads):
    torch = _torch()
    if torch is None:
        return None
    import fastloss.torch as fastloss_torch

    logits = torch.from_numpy(inputs["logits"]).requires_grad_(True)
    target = torch.from_numpy(inputs["target"])

    def clear():
        logits.grad = None  # a fresh gradient, as torch's row

    return Timed(lambda: fastloss_torch.cross_entropy(logits, target,
                                                      num_threads=threads).backward(),
                 prepare=clear, note="autograd, backward into a fresh .grad (as torch's row)")


def _ce_adapter_in_place(inputs, threads):
    """The adapter with inplace_backward=True: the gradient overwrites the logits.

    Its input must not be a leaf: in training it is a layer's output. Here it is a view
    of a leaf made in the timed call (a few microseconds, no copy), and the call ends with
    torch.autograd.grad with respect to the leaf (through the view's backward, a view of
    the gradient: no copy), so that the backward stops at the logits as in the other
    rows. (Not w.r.t. the view itself: the forward bumps the logits' version, and a view
    whose version moved gets a new grad_fn, no longer the one the loss's graph holds.)
    The logits are restored, untimed, before each call."""
    torch = _torch()
    if torch is None:
        return None
    import fastloss.torch as fastloss_torch

    logits, work = inputs["logits"], inputs["work"]
    leaf = torch.from_numpy(work).requires_grad_(True)
    target = torch.from_numpy(inputs["target"])

    def call():
        layer_output = leaf.view_as(leaf)  # a non-leaf over the same memory
        loss = fastloss_torch.cross_entropy(layer_output, target, inplace_backward=True,
                                            num_threads=threads)
        return torch.autograd.grad(loss, leaf)

    return Timed(call, prepare=lambda: np.copyto(work, logits),
                 note="logits restored (untimed) before each call; input a view of a leaf "
                      "(non-leaf, as a layer's output); torch.autograd.grad w.r.t. the leaf")


def _ce_torch_compile_forward_backward(inputs, threads):
    """torch.compile(F.cross_entropy), static shapes, forward+backward into a fresh .grad.

    The compile (of forward and backward) runs here, untimed, on the timed inputs
    themselves; when it fails on this machine (no working C++ compiler, an unsupported
    platform) the row reports that it cannot run."""
    torch = _torch()
    if torch is None:
        return None
    import torch.nn.functional as F

    logits = torch.from_numpy(inputs["logits"]).requires_grad_(True)
    target = torch.from_numpy(inputs["target"])
    saved_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)  # the thread count its code is generated for
        torch.compiler.reset()  # a fresh cache: no earlier shape's recompile limit
        compiled = torch.compile(F.cross_entropy, dynamic=False)
        compiled(logits, target).backward()
    except Exception as error:  # any failure to compile means this row cannot run here
        first_line = (str(error).strip().splitlines() or [""])[0][:120]
        raise Unavailable(f"torch.compile failed: {type(error).__name__}: "
                          f"{first_line}") from None
    finally:
        torch.set_num_threads(saved_threads)
        logits.grad = None

    def clear():
        logits.grad = None

    return Timed(lambda: compiled(logits, target).backward(), prepare=clear,
                 note="torch.compile(F.cross_entropy, dynamic=False), compiled untimed; "
                      "backward into a fresh .grad")


def _ce_torch_forward(inputs, threads):
    torch = _torch()
    if torch is None:
        return None
    import torch.nn.functional as F

    logits = torch.from_numpy(inputs["logits"])
    target = torch.from_numpy(inputs["target"])

    def call():
        with torch.no_grad():
            return F.cross_entropy(logits, target)

    return Timed(call, note="under torch.no_grad()")


# The size of the cross-entropy targets: 4096 tokens over GPT-2's vocabulary.
CE_FULL_SIZE = (4096, 50257)

CROSS_ENTROPY = Family(
    name="cross_entropy",
    title="cross-entropy (mean, hard targets)",
    make_inputs=_ce_inputs,
    sizes={"full": CE_FULL_SIZE, "quick": (1024, 50257)},
    size_names=("N", "C"),
    cases=(
        Case("fastloss value_and_grad (out= preallocated)", _ce_fused_out),
        Case("fastloss value_and_grad (out=logits, in place)", _ce_fused_in_place),
        Case("fastloss forward", _ce_forward, read_only=True),
        Case("fastloss grad from lse", _ce_grad_from_lse),
        Case(f"numpy reference value_and_grad (float64, {REFERENCE_ROWS} rows scaled to N)",
             _ce_reference),
        Case("np.copyto (logits -> buffer)", _copy, role="copy"),
        Case("logits.max()", _read, role="read", read_only=True),
        Case("torch F.cross_entropy forward+backward", _ce_torch_forward_backward,
             requires="torch"),
        Case("fastloss.torch.cross_entropy forward+backward", _ce_adapter_forward_backward,
             requires="torch"),
        Case("fastloss.torch.cross_entropy forward+backward (inplace_backward=True)",
             _ce_adapter_in_place, requires="torch"),
        Case("torch.compile(F.cross_entropy) forward+backward",
             _ce_torch_compile_forward_backward, requires="torch", compiles=True),
        Case("torch forward", _ce_torch_forward, read_only=True, requires="torch"),
    ),
)

# Few classes: per-row work is short, so fixed costs per row and per call show.
FEW_CLASSES_SIZE = (65536, 10)

CROSS_ENTROPY_FEW_CLASSES = Family(
    name="cross_entropy_few_classes",
    title="cross-entropy with few classes (mean, hard targets)",
    make_inputs=_ce_inputs,
    # 2.6 MB of logits: the full size is quick enough for --quick too
    sizes={"full": FEW_CLASSES_SIZE, "quick": FEW_CLASSES_SIZE},
    size_names=("N", "C"),
    cases=(
        Case("fastloss value_and_grad (out= preallocated)", _ce_fused_out),
        Case("fastloss forward", _ce_forward, read_only=True),
        Case("np.copyto (logits -> buffer)", _copy, role="copy"),
        Case("logits.max()", _read, role="read", read_only=True),
        Case("torch F.cross_entropy forward+backward", _ce_torch_forward_backward,
             requires="torch"),
        Case("fastloss.torch.cross_entropy forward+backward", _ce_adapter_forward_backward,
             requires="torch"),
    ),
    # calls of 0.1-2 ms: more rounds for a steady median
    repeats={"full": 100, "quick": 40},
)

# ----------------------------------------------------------------------------------------
# Regression and binary (elementwise) losses
# ----------------------------------------------------------------------------------------

ELEMENTWISE_LOSSES = ("mse", "l1", "huber", "smooth_l1", "bce_with_logits")

# torch.nn.functional's name for each loss.
_TORCH_NAMES = {"mse": "mse_loss", "l1": "l1_loss", "huber": "huber_loss",
                "smooth_l1": "smooth_l1_loss",
                "bce_with_logits": "binary_cross_entropy_with_logits"}

# The float64 reference is timed on this many elements and scaled, as for cross-entropy.
REFERENCE_ELEMENTS = 1 << 20


def _ew_inputs(size, dtype):
    (n,) = size
    rng = np.random.default_rng(0)
    pred = rng.standard_normal(n, dtype=np.float32).astype(dtype, copy=False)
    pred *= 2
    target = rng.standard_normal(n, dtype=np.float32).astype(dtype, copy=False)
    labels = (rng.random(n, dtype=np.float32) < 0.5).astype(dtype)
    # soft targets: bce's float32 slopes that may cancel are redone in double (the
    # worst case: uniform targets leave nearly every tile in doubt)
    soft_labels = rng.random(n, dtype=np.float32).astype(dtype, copy=False)
    buffer = np.empty_like(pred)
    buffer.fill(0)  # every page touched before timing
    return {"pred": pred, "target": target, "labels": labels, "soft_labels": soft_labels,
            "buffer": buffer}


def _ew_target(inputs, name):
    return inputs["labels"] if name == "bce_with_logits" else inputs["target"]


def _ew_fused(name, target_key=None):
    function = getattr(fastloss, f"{name}_value_and_grad")

    def setup(inputs, threads):
        target = inputs[target_key] if target_key else _ew_target(inputs, name)
        pred, buffer = inputs["pred"], inputs["buffer"]
        return Timed(lambda: function(pred, target, out=buffer, num_threads=threads))

    return setup


def _ew_forward(name):
    function = getattr(fastloss, name)

    def setup(inputs, threads):
        pred, target = inputs["pred"], _ew_target(inputs, name)
        return Timed(lambda: function(pred, target, num_threads=threads))

    return setup


def _ew_reference(name):
    function = getattr(reference, f"{name}_value_and_grad")

    def setup(inputs, threads):
        pred, target = inputs["pred"], _ew_target(inputs, name)
        n = pred.size
        count = min(n, REFERENCE_ELEMENTS)
        note = "float64, single-threaded NumPy"
        if count < n:
            note += f"; timed on {count} of {n} elements, scaled x{n / count:g}"
        return Timed(lambda: function(pred[:count], target[:count]), scale=n / count,
                     note=note)

    return setup


def _ew_copy(inputs, threads):
    pred, buffer = inputs["pred"], inputs["buffer"]
    return Timed(lambda: np.copyto(buffer, pred), note="memory-bandwidth limit")


def _ew_read(inputs, threads):
    pred = inputs["pred"]
    return Timed(lambda: pred.max(), note="read-only limit (one stream)")


def _ew_torch_forward_backward(name):
    def setup(inputs, threads):
        torch = _torch()
        if torch is None:
            return None
        function = getattr(torch.nn.functional, _TORCH_NAMES[name])
        pred = torch.from_numpy(inputs["pred"]).requires_grad_(True)
        target = torch.from_numpy(_ew_target(inputs, name))

        def clear():
            pred.grad = None  # backward allocates a fresh gradient, as in training

        return Timed(lambda: function(pred, target).backward(), prepare=clear,
                     note="torch.from_numpy inputs; backward into a fresh .grad")

    return setup


def _ew_adapter_forward_backward(name):
    def setup(inputs, threads):
        torch = _torch()
        if torch is None:
            return None
        import fastloss.torch as fastloss_torch

        function = getattr(fastloss_torch, _TORCH_NAMES[name])
        pred = torch.from_numpy(inputs["pred"]).requires_grad_(True)
        target = torch.from_numpy(_ew_target(inputs, name))

        def clear():
            pred.grad = None

        return Timed(lambda: function(pred, target, num_threads=threads).backward(),
                     prepare=clear, note="autograd; backward into a fresh .grad")

    return setup


EW_FULL_SIZE = (1 << 25,)

ELEMENTWISE = Family(
    name="elementwise",
    title="regression and binary losses (mean)",
    make_inputs=_ew_inputs,
    sizes={"full": EW_FULL_SIZE, "quick": (1 << 22,)},
    size_names=("n",),
    cases=(
        *(Case(f"fastloss {name} value_and_grad (out= preallocated)", _ew_fused(name))
          for name in ELEMENTWISE_LOSSES),
        Case("fastloss bce_with_logits value_and_grad (soft targets)",
             _ew_fused("bce_with_logits", "soft_labels")),
        Case("fastloss huber forward", _ew_forward("huber"), read_only=True),
        Case("fastloss bce_with_logits forward", _ew_forward("bce_with_logits"),
             read_only=True),
        Case(f"numpy reference huber value_and_grad (float64, {REFERENCE_ELEMENTS} elements "
             f"scaled to n)", _ew_reference("huber")),
        Case("np.copyto (pred -> buffer)", _ew_copy, role="copy"),
        Case("pred.max()", _ew_read, role="read", read_only=True),
        *(Case(f"torch {_TORCH_NAMES[name]} forward+backward", _ew_torch_forward_backward(name),
               requires="torch") for name in ELEMENTWISE_LOSSES),
        *(Case(f"fastloss.torch.{_TORCH_NAMES[name]} forward+backward",
               _ew_adapter_forward_backward(name), requires="torch")
          for name in ELEMENTWISE_LOSSES),
    ),
)

# The performance targets (BENCHMARKS.md lists them with their reasons), each judged at
# the size it is set for. Printed under the table; never an error.
_ADAPTER = "fastloss.torch.cross_entropy forward+backward"
TARGETS = {
    "cross_entropy": (
        Target("fused (out=) / copy <= 1.3", "fastloss value_and_grad (out= preallocated)",
               "np.copyto (logits -> buffer)", 1.3, "max", CE_FULL_SIZE),
        Target("forward / max <= 1.5", "fastloss forward", "logits.max()", 1.5, "max",
               CE_FULL_SIZE),
        Target("grad from lse / fused <= 1.1", "fastloss grad from lse",
               "fastloss value_and_grad (out= preallocated)", 1.1, "max", CE_FULL_SIZE),
        Target("torch fwd+bwd / fused >= 15", "torch F.cross_entropy forward+backward",
               "fastloss value_and_grad (out= preallocated)", 15.0, "min", CE_FULL_SIZE),
        Target("adapter fwd+bwd / copy <= 1.6", _ADAPTER, "np.copyto (logits -> buffer)",
               1.6, "max", CE_FULL_SIZE),
        Target("adapter in place / copy <= 1.35", f"{_ADAPTER} (inplace_backward=True)",
               "np.copyto (logits -> buffer)", 1.35, "max", CE_FULL_SIZE),
        Target("torch eager / adapter >= 5", "torch F.cross_entropy forward+backward",
               _ADAPTER, 5.0, "min", CE_FULL_SIZE),
        Target("torch.compile / adapter >= 3", "torch.compile(F.cross_entropy) forward+backward",
               _ADAPTER, 3.0, "min", CE_FULL_SIZE),
    ),
    "cross_entropy_few_classes": (
        Target("fused (out=) / copy <= 3", "fastloss value_and_grad (out= preallocated)",
               "np.copyto (logits -> buffer)", 3.0, "max", FEW_CLASSES_SIZE),
    ),
    # Three streams (pred, target, gradient) against copy's two: 1.5x is the limit.
    "elementwise": tuple(
        target
        for name in ELEMENTWISE_LOSSES
        for target in (
            Target(f"{name} / copy <= 2", f"fastloss {name} value_and_grad (out= preallocated)",
                   "np.copyto (pred -> buffer)", 2.0, "max", EW_FULL_SIZE),
            Target(f"torch {name} / fastloss >= 5",
                   f"torch {_TORCH_NAMES[name]} forward+backward",
                   f"fastloss {name} value_and_grad (out= preallocated)", 5.0, "min",
                   EW_FULL_SIZE),
        )
    ),
}


# ----------------------------------------------------------------------------------------
# Contrastive: all pairs of a batch, and InfoNCE / triplet on the same embeddings
# ----------------------------------------------------------------------------------------

# The float64 reference holds N x N x D differences: it is timed on this many rows and
# the time scaled by (N / rows)**2, its cost being quadratic in the rows.
REFERENCE_PAIR_ROWS = 64

# Rows per class of the benchmark's labels (N = 4096 gives 100 classes of about 41).
ROWS_PER_CLASS = 41


def _cp_inputs(size, dtype):
    n_rows, dim = size
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n_rows, dim), dtype=np.float32).astype(dtype, copy=False)
    labels = rng.integers(0, max(1, n_rows // ROWS_PER_CLASS), n_rows)
    # keys near their queries, anchors' positives nearer than their negatives
    other = rng.standard_normal((n_rows, dim), dtype=np.float32).astype(dtype, copy=False)
    key = x + dtype.type(0.5) * other
    buffers = [np.empty_like(x) for _ in range(3)]
    for buffer in buffers:
        buffer.fill(0)  # every page touched before timing
    return {"x": x, "labels": labels, "key": key, "other": other, "buffers": buffers}


def _cp_fused(metric):
    def setup(inputs, threads):
        x, labels, buffer = inputs["x"], inputs["labels"], inputs["buffers"][0]
        return Timed(lambda: fastloss.contrastive_pairwise_value_and_grad(
            x, labels, metric=metric, out=buffer, num_threads=threads))

    return setup


def _cp_forward(inputs, threads):
    x, labels = inputs["x"], inputs["labels"]
    return Timed(lambda: fastloss.contrastive_pairwise(x, labels, num_threads=threads))


def _cp_distance(inputs, threads):
    x = inputs["x"]
    return Timed(lambda: fastloss.pairwise_distance(x, num_threads=threads))


def _cp_reference(inputs, threads):
    x, labels = inputs["x"], inputs["labels"]
    n_rows = x.shape[0]
    rows = min(n_rows, REFERENCE_PAIR_ROWS)
    note = "float64, single-threaded NumPy, differences of every pair"
    scale = (n_rows / rows) ** 2
    if rows < n_rows:
        note += f"; timed on {rows} of {n_rows} rows, scaled x{scale:g}"
    return Timed(lambda: reference.contrastive_pairwise_value_and_grad(x[:rows], labels[:rows]),
                 scale=scale, note=note)


def _cp_matmul(inputs, threads):
    x = inputs["x"]
    return Timed(lambda: x @ x.T, note="the family's limit: one BLAS product (NumPy's threads)")


def _cp_torch(inputs, threads):
    torch = _torch()
    if torch is None:
        return None
    x = torch.from_numpy(inputs["x"]).requires_grad_(True)
    labels = torch.from_numpy(inputs["labels"])
    n_pairs = x.shape[0] * (x.shape[0] - 1) / 2

    def clear():
        x.grad = None

    def call():
        distance = torch.cdist(x, x)
        same = labels[:, None] == labels[None, :]
        loss = torch.where(same, torch.relu(distance) ** 2, torch.relu(1.0 - distance) ** 2)
        (torch.triu(loss, diagonal=1).sum() / n_pairs).backward()

    return Timed(call, prepare=clear,
                 note="torch.cdist, the loss over triu(diagonal=1), backward into a fresh .grad")


def _nce_fused(inputs, threads):
    x, key, buffers = inputs["x"], inputs["key"], inputs["buffers"]
    return Timed(lambda: fastloss.info_nce_value_and_grad(
        x, key, symmetric=True, out=(buffers[0], buffers[1]), num_threads=threads))


def _nce_torch(inputs, threads):
    torch = _torch()
    if torch is None:
        return None
    import torch.nn.functional as F

    query = torch.from_numpy(inputs["x"]).requires_grad_(True)
    key = torch.from_numpy(inputs["key"]).requires_grad_(True)
    target = torch.arange(query.shape[0])

    def clear():
        query.grad = key.grad = None

    def call():
        logits = F.normalize(query) @ F.normalize(key).T / 0.05
        (0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))).backward()

    return Timed(call, prepare=clear, note="normalize, matmul, cross_entropy both ways, backward")


def _triplet_fused(inputs, threads):
    x, key, other, buffers = inputs["x"], inputs["key"], inputs["other"], inputs["buffers"]
    return Timed(lambda: fastloss.triplet_margin_value_and_grad(
        x, key, other, swap=True, out=tuple(buffers), num_threads=threads))


def _triplet_torch(inputs, threads):
    torch = _torch()
    if torch is None:
        return None
    import torch.nn.functional as F

    tensors = [torch.from_numpy(inputs[name]).requires_grad_(True)
               for name in ("x", "key", "other")]

    def clear():
        for tensor in tensors:
            tensor.grad = None

    def call():
        F.triplet_margin_loss(*tensors, swap=True).backward()

    return Timed(call, prepare=clear)


def _contrastive_adapter(name):
    """The PyTorch adapter's forward+backward of one contrastive-family loss, on the
    inputs of the fastloss row beside it."""
    def setup(inputs, threads):
        torch = _torch()
        if torch is None:
            return None
        import fastloss.torch as fastloss_torch

        def tensor(key):
            return torch.from_numpy(inputs[key]).requires_grad_(True)

        if name == "contrastive_pairwise":
            tensors = [tensor("x")]
            labels = torch.from_numpy(inputs["labels"])

            def loss():
                return fastloss_torch.contrastive_pairwise(tensors[0], labels,
                                                           num_threads=threads)
        elif name == "info_nce":
            tensors = [tensor("x"), tensor("key")]

            def loss():
                return fastloss_torch.info_nce(*tensors, symmetric=True, num_threads=threads)
        else:
            tensors = [tensor("x"), tensor("key"), tensor("other")]

            def loss():
                return fastloss_torch.triplet_margin_loss(*tensors, swap=True,
                                                          num_threads=threads)

        def clear():
            for each in tensors:
                each.grad = None

        return Timed(lambda: loss().backward(), prepare=clear,
                     note="autograd; backward into a fresh .grad")

    return setup


CP_FULL_SIZE = (4096, 768)

CONTRASTIVE = Family(
    name="contrastive",
    title="contrastive_pairwise (euclidean, mean; 41 rows per class), info_nce, triplet_margin",
    make_inputs=_cp_inputs,
    sizes={"full": CP_FULL_SIZE, "quick": (1024, 768)},
    size_names=("N", "D"),
    cases=(
        Case("fastloss contrastive_pairwise value_and_grad (out= preallocated)",
             _cp_fused("euclidean")),
        Case("fastloss contrastive_pairwise value_and_grad, cosine", _cp_fused("cosine")),
        Case("fastloss contrastive_pairwise forward", _cp_forward),
        Case("fastloss pairwise_distance (N x N euclidean)", _cp_distance),
        Case(f"numpy reference contrastive_pairwise value_and_grad (float64, "
             f"{REFERENCE_PAIR_ROWS} rows scaled to N)", _cp_reference),
        Case("x @ x.T (float32 matmul)", _cp_matmul, role="copy"),
        Case("torch cdist + contrastive + backward", _cp_torch, requires="torch"),
        Case("fastloss.torch.contrastive_pairwise forward+backward",
             _contrastive_adapter("contrastive_pairwise"), requires="torch"),
        Case("fastloss info_nce value_and_grad (symmetric)", _nce_fused),
        Case("torch info_nce (symmetric) forward+backward", _nce_torch, requires="torch"),
        Case("fastloss.torch.info_nce (symmetric) forward+backward",
             _contrastive_adapter("info_nce"), requires="torch"),
        Case("fastloss triplet_margin value_and_grad (swap)", _triplet_fused),
        Case("torch triplet_margin_loss (swap) forward+backward", _triplet_torch,
             requires="torch"),
        Case("fastloss.torch.triplet_margin_loss (swap) forward+backward",
             _contrastive_adapter("triplet_margin"), requires="torch"),
    ),
)

TARGETS[CONTRASTIVE.name] = (
    Target("contrastive_pairwise / x @ x.T <= 3",
           "fastloss contrastive_pairwise value_and_grad (out= preallocated)",
           "x @ x.T (float32 matmul)", 3.0, "max", CP_FULL_SIZE),
    Target("torch / contrastive_pairwise >= 4", "torch cdist + contrastive + backward",
           "fastloss contrastive_pairwise value_and_grad (out= preallocated)", 4.0, "min",
           CP_FULL_SIZE),
)


# ----------------------------------------------------------------------------------------
# Cross-entropy at small shapes: the adapter against torch, over a grid of shapes
# ----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Grid:
    """A few cases timed over a grid of problem sizes, one line per cell.

    A cell is (size, dtype, threads): its own inputs from ``make_inputs(size, dtype)``
    and the ``cases`` (``Case`` rows, set up with the cell's thread count) taking turns.
    ``sizes`` maps "full" and "quick" to one tuple of values per entry of ``size_names``,
    crossed (e.g. the Ns and the Cs); ``dtypes`` maps them to the dtypes. The threads are
    1 and this process's default (or the one count given). A cell larger than
    ``max_elements`` ("full"/"quick") is skipped, and the report says so. Calls are short,
    so a cell takes as many rounds as fit in ``budget_s`` per case, at least ``repeats``
    and at most ``max_rounds``. The targets (``TARGETS``, ``size=None``) hold per cell.
    """

    name: str
    title: str
    make_inputs: Callable[[tuple, np.dtype], dict]
    sizes: dict
    size_names: tuple
    cases: tuple
    dtypes: dict
    max_elements: dict
    repeats: dict
    budget_s: dict
    max_rounds: int = 1000


def _grid_ce_inputs(size, dtype):
    """Logits and targets only: the grid's largest cell holds 2**28 elements."""
    logits, target = _ce_logits_and_target(size, dtype)
    return {"logits": logits, "target": target}


# At most 2**28 elements per cell: in float64 that is 2 GiB of logits, and the cell holds
# about four such arrays at once (the logits, the adapter's gradient, torch's gradient and
# its saved log-softmax). N=65536, C=50257 (3.3e9 elements: 13 GB per float32 array) is
# left out.
GRID_MAX_ELEMENTS = 1 << 28

CROSS_ENTROPY_SMALL = Grid(
    name="cross_entropy_small",
    title="cross-entropy at small shapes: fastloss.torch.cross_entropy against torch, "
          "forward+backward (mean, hard targets)",
    make_inputs=_grid_ce_inputs,
    sizes={"full": ((1, 32, 256, 4096, 65536), (2, 10, 100, 1000, 50257)),
           "quick": ((1, 32, 256, 4096), (2, 10, 100, 1000, 50257))},
    size_names=("N", "C"),
    cases=(
        Case(_ADAPTER, _ce_adapter_forward_backward, requires="torch"),
        Case("torch F.cross_entropy forward+backward", _ce_torch_forward_backward,
             requires="torch"),
    ),
    dtypes={"full": ("float32", "float64"), "quick": ("float32",)},
    # --quick leaves out the cells above 2**24 elements (N=4096, C=50257: a second each)
    max_elements={"full": GRID_MAX_ELEMENTS, "quick": 1 << 24},
    repeats={"full": 5, "quick": 3},
    budget_s={"full": 0.25, "quick": 0.1},
)

TARGETS[CROSS_ENTROPY_SMALL.name] = (
    Target("torch / adapter >= 1 (never slower)", "torch F.cross_entropy forward+backward",
           _ADAPTER, 1.0, "min", None),
)

FAMILIES = {family.name: family for family in (
    CROSS_ENTROPY, CROSS_ENTROPY_FEW_CLASSES, CROSS_ENTROPY_SMALL, ELEMENTWISE, CONTRASTIVE)}


# ----------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------

class _Progress:
    """tqdm when it is installed, else a plain counter on stderr."""

    def __init__(self, total, enabled):
        self.bar = None
        self.total = total
        self.count = 0
        self.enabled = enabled
        self.text = ""
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self.bar = tqdm(total=total, unit="call", file=sys.stderr, leave=False,
                        dynamic_ncols=True)

    def describe(self, text):
        if self.bar is not None:
            self.bar.set_description_str(text[:48])
        elif self.enabled:
            self._counter(text)
        self.text = text

    def update(self):
        self.count += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.enabled:
            self._counter(self.text)

    def _counter(self, text):
        end = "\n" if self.count == self.total else ""
        sys.stderr.write(f"\r[{self.count:>3}/{self.total}] {text[:60]:<60}{end}")
        sys.stderr.flush()

    def close(self):
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.count != self.total:
            sys.stderr.write("\n")


def _time_all(timed_cases, repeat, warmup, progress):
    """Seconds per call (times each case's ``scale``): a list per case.

    Every case gets ``warmup`` untimed calls, then the cases take turns, one timed call
    each per round, for ``repeat`` rounds: a change in the machine's load during the run
    then shifts all cases alike instead of skewing the ratios of the cases timed while
    it lasted.
    """
    times = [[] for _ in timed_cases]
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()  # as timeit does: a collection inside a timed call is noise
    try:
        for name, timed in timed_cases:
            progress.describe(f"warm-up: {name}")
            for _ in range(warmup):
                if timed.prepare is not None:
                    timed.prepare()
                timed.call()
                progress.update()
        for round_index in range(repeat):
            for (name, timed), case_times in zip(timed_cases, times):
                progress.describe(f"round {round_index + 1}/{repeat}: {name}")
                if timed.prepare is not None:
                    timed.prepare()
                start = time.perf_counter()
                timed.call()
                case_times.append((time.perf_counter() - start) * timed.scale)
                progress.update()
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def cpu_model():
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _load_average():
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def machine_info():
    """The facts a reader needs to compare two benchmark runs."""
    torch = _torch()
    return {
        # Other processes on the machine skew the ratios: the kernels use every thread,
        # the baselines one. Recorded so a reader can discount a run on a busy machine.
        "load_average_1min": _load_average(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "available_cpus": config()["available_cpus"],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__ if torch is not None else None,
        "fastloss": fastloss.__version__,
    }


def _judge(family_name, size, by_name, skipped_names):
    """The targets of a family, for a run at ``size``: judged where set, else shown."""
    targets = []
    for target in TARGETS.get(family_name, ()):
        entry = {"target": target.text, "ratio": None, "met": None,
                 "judged": target.size is None or tuple(size) == tuple(target.size),
                 "judged_at": None if target.size is None else list(target.size)}
        if target.numerator in by_name and target.denominator in by_name:
            entry["ratio"] = (by_name[target.numerator]["median_ms"]
                              / by_name[target.denominator]["median_ms"])
            if entry["judged"]:
                entry["met"] = target.met(entry["ratio"])
        else:
            missing = [name for name in (target.numerator, target.denominator)
                       if name not in by_name]
            entry["not_measured"] = "; ".join(
                f"{name}: {skipped_names.get(name, 'not run')}" for name in missing)
        targets.append(entry)
    return targets


def _setup_cases(cases, inputs, threads, torch_compile):
    """[(case, Timed)] for the cases that can run, and the skipped ones with the reason."""
    runnable, skipped = [], []
    for case in cases:
        if case.compiles and not torch_compile:
            skipped.append({"name": case.name, "skipped": "left out (--no-compile)"})
            continue
        try:
            timed = case.setup(inputs, threads)
        except Unavailable as reason:
            skipped.append({"name": case.name, "skipped": f"cannot run here: {reason}"})
            continue
        if timed is None:
            skipped.append({"name": case.name, "skipped": f"{case.requires} not importable"})
        else:
            runnable.append((case, timed))
    return runnable, skipped


def _torch_threads(threads):
    """A context that gives torch ``threads`` threads (when torch is installed)."""
    import contextlib

    @contextlib.contextmanager
    def context():
        torch = _torch()
        saved = torch.get_num_threads() if torch is not None else None
        if torch is not None:
            torch.set_num_threads(threads)  # the same thread count for every library
        try:
            yield
        finally:
            if torch is not None:
                torch.set_num_threads(saved)

    return context()


def run(family_name="cross_entropy", *, quick=False, size=None, threads=None, repeat=None,
        warmup=1, progress=True, torch_compile=True):
    """Time every case of a family (or every cell of a grid); return the report (the
    --json document). ``torch_compile=False`` leaves out the torch.compile rows."""
    family = FAMILIES[family_name]
    if isinstance(family, Grid):
        return _run_grid(family, quick=quick, size=size, threads=threads, repeat=repeat,
                         progress=progress, torch_compile=torch_compile)
    machine = machine_info()  # before allocating: the load average at the start
    size = tuple(size) if size is not None else family.sizes["quick" if quick else "full"]
    if len(size) != len(family.size_names):
        raise ValueError(f"size: {family.name} takes {', '.join(family.size_names)}, "
                         f"got {size}")
    threads = fastloss.get_num_threads() if threads is None else threads
    repeats = family.repeats or {"full": 10, "quick": 5}
    repeat = repeat if repeat is not None else repeats["quick" if quick else "full"]
    dtype = np.dtype(family.dtype)
    inputs = family.make_inputs(size, dtype)
    runnable, skipped = _setup_cases(family.cases, inputs, threads, torch_compile)

    bar = _Progress(len(runnable) * (warmup + repeat), progress)
    try:
        with _torch_threads(threads):
            times = _time_all([(case.name, timed) for case, timed in runnable], repeat,
                              warmup, bar)
        measured = [(case, timed, case_times)
                    for (case, timed), case_times in zip(runnable, times)]
    finally:
        bar.close()

    medians = {case.role: statistics.median(times)
               for case, _, times in measured if case.role}
    results = []
    for case, timed, times in measured:
        median = statistics.median(times)
        row = {
            "name": case.name,
            "role": case.role,
            "median_ms": median * 1e3,
            "min_ms": min(times) * 1e3,
            "ratio_to_copy": median / medians["copy"] if "copy" in medians else None,
            "ratio_to_max": (median / medians["read"]
                             if case.read_only and "read" in medians else None),
            "times_ms": [t * 1e3 for t in times],
            "note": timed.note,
        }
        results.append(row)
    by_name = {row["name"]: row for row in results}
    targets = _judge(family.name, size, by_name,
                     {row["name"]: row["skipped"] for row in skipped})

    return {
        "machine": machine,
        "config": {
            "family": family.name,
            "title": family.title,
            "size": dict(zip(family.size_names, size)),
            "dtype": dtype.name,
            "threads": threads,
            "repeat": repeat,
            "warmup": warmup,
            "quick": quick,
            "fastloss": config(),
        },
        "results": results,
        "skipped": skipped,
        "targets": targets,
    }


def _run_grid(grid, *, quick, size, threads, repeat, progress, torch_compile):
    """Time a Grid cell by cell; the report has one result per cell."""
    import itertools

    machine = machine_info()
    mode = "quick" if quick else "full"
    if size is not None:
        if len(size) != len(grid.size_names):
            raise ValueError(f"size: {grid.name} takes {', '.join(grid.size_names)}, "
                             f"got {tuple(size)}")
        axes = tuple((value,) for value in size)
    else:
        axes = grid.sizes[mode]
    thread_counts = [threads] if threads is not None else sorted({1, fastloss.get_num_threads()})
    dtypes = grid.dtypes[mode]
    min_rounds = repeat if repeat is not None else grid.repeats[mode]
    budget = grid.budget_s[mode]
    max_elements = grid.max_elements[mode]
    numerator, denominator = TARGETS[grid.name][0].numerator, TARGETS[grid.name][0].denominator

    cells, too_large = [], []
    for dtype in dtypes:
        for count in thread_counts:
            for cell_size in itertools.product(*axes):
                elements = int(np.prod(cell_size))
                if elements > max_elements:
                    too_large.append((cell_size, dtype, count, elements))
                else:
                    cells.append((cell_size, dtype, count))

    results, skipped = [], []
    cap = f"2**{max_elements.bit_length() - 1}"
    reason = (f"over {cap} elements: left out of --quick for time (the full run has it)"
              if quick and max_elements < grid.max_elements["full"] else
              f"over {cap} elements: the logits and gradients would not fit in memory "
              f"comfortably")
    for cell_size, dtype, count, elements in too_large:
        skipped.append({"name": _cell_name(grid, cell_size, dtype, count),
                        "skipped": f"{elements:.3g} elements, {reason}"})
    bar = _Progress(len(cells), progress)
    try:
        for cell_size, dtype, count in cells:
            name = _cell_name(grid, cell_size, dtype, count)
            bar.describe(name)
            inputs = grid.make_inputs(cell_size, np.dtype(dtype))
            runnable, cell_skipped = _setup_cases(grid.cases, inputs, count, torch_compile)
            if cell_skipped:
                skipped.extend({"name": f"{name}: {row['name']}", "skipped": row["skipped"]}
                               for row in cell_skipped)
            if runnable:
                with _torch_threads(count):
                    results.append(_time_cell(grid, name, cell_size, dtype, count, runnable,
                                              min_rounds, budget, numerator, denominator))
            del inputs, runnable
            gc.collect()
            bar.update()
    finally:
        bar.close()

    judged = [row for row in results if row["ratio"] is not None]
    target = TARGETS[grid.name][0]
    targets = [{
        "target": f"{target.text}, every cell",
        "ratio": min(row["ratio"] for row in judged) if judged else None,
        "met": all(row["met"] for row in judged) if judged else None,
        "judged": bool(judged),
        "judged_at": None,
        "cells": len(judged),
        "cells_met": sum(row["met"] for row in judged),
    }]
    if not judged:
        targets[0]["not_measured"] = "no cell ran both cases"
    return {
        "machine": machine,
        "config": {
            "family": grid.name,
            "title": grid.title,
            "grid": dict(zip(grid.size_names, (list(axis) for axis in axes))),
            "dtypes": list(dtypes),
            "threads": thread_counts,
            "min_rounds": min_rounds,
            "max_rounds": grid.max_rounds,
            "budget_s": budget,
            "max_elements": max_elements,
            "quick": quick,
            "fastloss": config(),
        },
        "results": results,
        "skipped": skipped,
        "targets": targets,
    }


def _cell_name(grid, cell_size, dtype, threads):
    size = " ".join(f"{key}={value}" for key, value in zip(grid.size_names, cell_size))
    return f"{size} {dtype} threads={threads}"


def _time_cell(grid, name, cell_size, dtype, threads, runnable, min_rounds, budget,
               numerator, denominator):
    """One cell: a timed warm-up call per case sets the rounds, then the cases take turns."""
    quiet = _Progress(0, False)
    warm = _time_all([(case.name, timed) for case, timed in runnable], 1, 1, quiet)
    slowest = max(times[0] for times in warm)
    rounds = int(min(grid.max_rounds, max(min_rounds, budget / max(slowest, 1e-9))))
    times = _time_all([(case.name, timed) for case, timed in runnable], rounds, 0, quiet)
    row = dict(zip(grid.size_names, cell_size))
    row.update({"name": name, "dtype": dtype, "threads": threads, "rounds": rounds,
                "cases": {}})
    for (case, _), case_times in zip(runnable, times):
        row["cases"][case.name] = {"median_ms": statistics.median(case_times) * 1e3,
                                   "min_ms": min(case_times) * 1e3}
    cases = row["cases"]
    if numerator in cases and denominator in cases:
        row["ratio"] = cases[numerator]["median_ms"] / cases[denominator]["median_ms"]
        row["met"] = TARGETS[grid.name][0].met(row["ratio"])
    else:
        row["ratio"] = row["met"] = None
    return row


# ----------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------

def _ms(value):
    """Milliseconds in 10 characters, with the decimals a small time needs."""
    if value < 0.1:
        return f"{value:10.4f}"
    return f"{value:10.3f}" if value < 10 else f"{value:10.1f}"


def _size_text(size):
    return ", ".join(f"{key}={value}" for key, value in zip(("N", "C", "D"), size))


def _format_targets(report):
    """The lines under a table: each target's ratio, and whether it is met where judged."""
    targets = report["targets"]
    if not targets:
        return []
    lines = ["", "Targets (medians; BENCHMARKS.md gives each one and its reason):"]
    not_judged = sorted({tuple(entry["judged_at"]) for entry in targets
                         if not entry["judged"] and entry["judged_at"]})
    for entry in targets:
        ratio = f"{entry['ratio']:7.2f}" if entry["ratio"] is not None else " " * 7
        if entry["ratio"] is None:
            verdict = f"not measured ({entry.get('not_measured', '')})"
        elif not entry["judged"]:
            verdict = "not judged at this size"
        else:
            verdict = "met" if entry["met"] else "MISSED"
        if "cells" in entry and entry["ratio"] is not None:
            verdict += f" ({entry['cells_met']} of {entry['cells']} cells met; the worst shown)"
        lines.append(f"  {entry['target']:<44} {ratio}  {verdict}")
    for size in not_judged:
        sizes = ", ".join(f"{key}={value}" for key, value in zip(
            report["config"].get("size", {}), size))
        lines.append(f"  (set and judged at {sizes}, the size of `fastloss bench` without "
                     f"--quick: smaller inputs sit")
        lines.append("   in the caches and fixed costs weigh more, so their ratios differ)")
    return lines


def format_report(report):
    """The header and table as text."""
    if "grid" in report["config"]:
        return _format_grid_report(report)
    machine, cfg = report["machine"], report["config"]
    size = ", ".join(f"{key}={value}" for key, value in cfg["size"].items())
    lines = [
        f"fastloss bench: {cfg['title']}, {size}, {cfg['dtype']}",
        f"CPU: {machine['cpu']} ({machine['cpu_count']} cores, "
        f"{machine['available_cpus']} available), threads: {cfg['threads']}",
        f"numpy {machine['numpy']}, torch {machine['torch'] or 'not installed'}, "
        f"fastloss {machine['fastloss']} (simd: {cfg['fastloss'].get('simd_path')}, "
        f"openmp: {cfg['fastloss'].get('openmp')})",
        f"median (and min) of {cfg['repeat']} rounds (cases take turns) after "
        f"{cfg['warmup']} warm-up call; "
        f"load average at start {machine['load_average_1min']}",
        "",
    ]
    width = max([len(row["name"]) for row in report["results"]]
                + [len(row["name"]) for row in report["skipped"]] + [4])
    lines.append(f"{'case':<{width}}  {'median ms':>10}  {'min ms':>10}  "
                 f"{'x copy':>7}  {'x max':>7}")
    lines.append("-" * (width + 44))
    for row in report["results"]:
        copy = f"{row['ratio_to_copy']:7.2f}" if row["ratio_to_copy"] is not None else " " * 7
        read = f"{row['ratio_to_max']:7.2f}" if row["ratio_to_max"] is not None else " " * 7
        lines.append(f"{row['name']:<{width}}  {_ms(row['median_ms'])}  "
                     f"{_ms(row['min_ms'])}  {copy}  {read}")
    for row in report["skipped"]:
        lines.append(f"{row['name']:<{width}}  skipped: {row['skipped']}")
    notes = [(row["name"], row["note"]) for row in report["results"] if row["note"]]
    if notes:
        lines.append("")
        lines.extend(f"  {name}: {note}" for name, note in notes)
    lines.extend(_format_targets(report))
    return "\n".join(lines)


def _format_grid_report(report):
    machine, cfg = report["machine"], report["config"]
    grid = "; ".join(f"{key} in {{{', '.join(str(value) for value in values)}}}"
                     for key, values in cfg["grid"].items())
    threads = ", ".join(str(count) for count in cfg["threads"])
    lines = [
        f"fastloss bench: {cfg['title']}",
        f"grid: {grid}; {', '.join(cfg['dtypes'])}; threads {threads}",
        f"CPU: {machine['cpu']} ({machine['cpu_count']} cores, "
        f"{machine['available_cpus']} available)",
        f"numpy {machine['numpy']}, torch {machine['torch'] or 'not installed'}, "
        f"fastloss {machine['fastloss']} (simd: {cfg['fastloss'].get('simd_path')}, "
        f"openmp: {cfg['fastloss'].get('openmp')})",
        f"median (and min) per cell of as many rounds as fit in {cfg['budget_s']} s per case "
        f"(at least {cfg['min_rounds']}, at most {cfg['max_rounds']}; the cases take turns) "
        f"after a warm-up call; load average at start {machine['load_average_1min']}",
        "",
    ]
    target = TARGETS[cfg["family"]][0]
    names = (target.denominator, target.numerator)  # the adapter's row, then torch's
    size_names = list(cfg["grid"])
    header = "".join(f"{key:>7}" for key in size_names)
    lines.append(f"{header}  {'dtype':<8} {'threads':>7}  {'adapter ms':>10}  "
                 f"{'torch ms':>10}  {'torch/adapter':>13}  rounds")
    lines.append("-" * (len(header) + 72))
    for row in report["results"]:
        sizes = "".join(f"{row[key]:>7}" for key in size_names)
        medians = [row["cases"][name]["median_ms"] if name in row["cases"] else None
                   for name in names]
        cells = "  ".join(_ms(value) if value is not None else " " * 10 for value in medians)
        ratio = f"{row['ratio']:13.2f}" if row["ratio"] is not None else " " * 13
        verdict = "" if row["met"] is None else ("" if row["met"] else "  slower than torch")
        lines.append(f"{sizes}  {row['dtype']:<8} {row['threads']:>7}  {cells}  {ratio}  "
                     f"{row['rounds']:>6}{verdict}")
    lines.append("")
    lines.append(f"  adapter: {names[0]}; torch: {names[1]} (torch.from_numpy inputs; "
                 f"backward into a fresh .grad; torch.set_num_threads as the cell's threads)")
    if report["skipped"]:
        lines.append("")
        lines.extend(f"  skipped: {row['name']}: {row['skipped']}" for row in report["skipped"])
    lines.extend(_format_targets(report))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# The plot (--plot; matplotlib is an optional extra, "fastloss[plot]")
# ----------------------------------------------------------------------------------------

PLOT_REQUIREMENT = ("--plot needs matplotlib, which is not installed: "
                    "pip install 'fastloss[plot]' (or pip install matplotlib)")


def have_matplotlib():
    """Whether matplotlib can be imported (checked before a run that ends in a plot)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _bar_color(row):
    name = row["name"]
    if row.get("role"):
        return "0.6"  # the baselines: grey
    if name.startswith("fastloss"):
        return "tab:blue"
    if name.startswith("torch"):
        return "tab:red"
    return "tab:orange"  # the NumPy reference


def plot_reports(reports, path):
    """One horizontal bar chart per family: each case's median time as a multiple of the
    family's limit (its "copy" baseline), on a log scale; saved to ``path`` (PNG by its
    extension). Uses matplotlib's object API (no pyplot, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    heights = [max(len(report["results"]), 1) * (0.2 if "grid" in report["config"] else 0.32)
               + 1.2 for report in reports]
    figure = Figure(figsize=(10, sum(heights) + 0.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes_list = figure.subplots(len(reports), 1, squeeze=False,
                                gridspec_kw={"height_ratios": heights})[:, 0]
    machine = reports[0]["machine"]
    figure.suptitle(f"fastloss bench: {machine['cpu']}, threads {reports[0]['config']['threads']}"
                    f", numpy {machine['numpy']}, torch {machine['torch'] or 'not installed'}",
                    fontsize=10)
    for axes, report in zip(axes_list, reports):
        cfg = report["config"]
        if "grid" in cfg:
            _plot_grid(axes, report)
            continue
        rows = [row for row in report["results"] if row["ratio_to_copy"] is not None]
        limit = next((row["name"] for row in rows if row.get("role") == "copy"), "copy")
        names = [row["name"] for row in rows][::-1]
        ratios = [row["ratio_to_copy"] for row in rows][::-1]
        bars = axes.barh(names, ratios, color=[_bar_color(row) for row in rows][::-1])
        axes.bar_label(bars, labels=[f"{ratio:.2f}x" for ratio in ratios], padding=3,
                       fontsize=8)
        axes.set_xscale("log")
        axes.axvline(1.0, color="black", linewidth=0.8)
        axes.tick_params(axis="y", labelsize=8)
        size = ", ".join(f"{key}={value}" for key, value in cfg["size"].items())
        axes.set_title(textwrap.fill(f"{cfg['title']} ({size}, {cfg['dtype']})", 60),
                       fontsize=10, loc="left")
        axes.set_xlabel(f"median time / median of {limit} (log scale; lower is faster)",
                        fontsize=8)
        if ratios:
            axes.set_xlim(min(min(ratios), 1.0) / 1.5, max(max(ratios), 1.0) * 3)
    figure.savefig(path, dpi=120)


def _plot_grid(axes, report):
    """A grid's bars: torch's time over the adapter's, per cell (above 1: faster)."""
    rows = [row for row in report["results"] if row["ratio"] is not None]
    names = [row["name"] for row in rows][::-1]
    ratios = [row["ratio"] for row in rows][::-1]
    colors = ["tab:blue" if row["met"] else "tab:red" for row in rows][::-1]
    bars = axes.barh(names, ratios, color=colors)
    axes.bar_label(bars, labels=[f"{ratio:.2f}x" for ratio in ratios], padding=3, fontsize=7)
    axes.set_xscale("log")
    axes.axvline(1.0, color="black", linewidth=0.8)
    axes.tick_params(axis="y", labelsize=7)
    axes.set_title(textwrap.fill(report["config"]["title"], 60), fontsize=10, loc="left")
    axes.set_xlabel("torch median / fastloss.torch median (log scale; above 1: fastloss "
                    "faster)", fontsize=8)
    if ratios:
        axes.set_xlim(min(min(ratios), 1.0) / 1.5, max(max(ratios), 1.0) * 3)


def main(*, quick=False, json_file=None, threads=None, repeat=None, size=None,
         progress=True, stream=None, family="all", plot_file=None, torch_compile=True):
    """Run the benchmark of one family (or of every family, in turn), print the tables,
    write JSON and the plot; return 0 (1 when ``plot_file`` is given and matplotlib is
    missing: checked before anything runs).

    The JSON document is one family's report, or ``{"reports": [...]}`` for several.
    ``size`` (the hidden ``--size``) needs a single family.
    """
    if plot_file is not None and not have_matplotlib():
        print(f"fastloss: error: {PLOT_REQUIREMENT}", file=sys.stderr)
        return 1
    stream = sys.stdout if stream is None else stream
    names = list(FAMILIES) if family == "all" else [family]
    if size is not None and len(names) != 1:
        raise ValueError("size: give one family with it")
    reports = []
    for name in names:
        report = run(name, quick=quick, size=size, threads=threads, repeat=repeat,
                     progress=progress, torch_compile=torch_compile)
        if reports:
            print("", file=stream)
        print(format_report(report), file=stream, flush=True)
        reports.append(report)
    if json_file is not None:
        with open(json_file, "w") as handle:
            json.dump(reports[0] if len(reports) == 1 else {"reports": reports}, handle,
                      indent=2)
            handle.write("\n")
    if plot_file is not None:
        plot_reports(reports, plot_file)
    return 0
