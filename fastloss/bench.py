"""``fastloss bench``: the side-by-side benchmark table.

Everything is timed in one process on the same arrays and reported as ratios to two
memory-bound baselines measured in the same run: ``np.copyto`` of the input (one read
and one write, the limit for a fused loss and gradient) and a read-only reduction
(the limit for a forward pass). See "Performance contract" in DESIGN.md.

The benchmarks are a table. A ``Family`` makes the shared inputs of one problem size
(``make_inputs``) and lists its ``Case`` rows; each case turns those inputs into a
``Timed`` (the call to time, an optional untimed ``prepare`` run before every call, and
a ``scale`` for cases timed on a slice). ``FAMILIES`` holds cross-entropy and the
elementwise (regression and binary) losses; later families (contrastive) add theirs.
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

__all__ = ["Case", "Family", "FAMILIES", "Timed", "machine_info", "run", "main"]


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


@dataclasses.dataclass(frozen=True)
class Case:
    """One row of the table.

    ``setup(inputs, threads)`` returns a ``Timed``, or None when the case cannot run
    here (``requires`` names the missing module for the report). ``role`` marks the
    family's baselines: ``"copy"`` (read + write) and ``"read"`` (read only).
    ``read_only`` rows are also compared with the read baseline.
    """

    name: str
    setup: Callable[[dict, int], Optional[Timed]]
    role: str = ""
    read_only: bool = False
    requires: str = ""


@dataclasses.dataclass(frozen=True)
class Family:
    """A loss family's benchmark: its input maker, sizes and cases.

    ``make_inputs(size, dtype)`` returns a dict of arrays shared by all cases (cases may
    add their own entries, e.g. a precomputed lse). ``sizes`` maps "full" and "quick"
    to the default size tuple; ``size_names`` names its entries (e.g. ("N", "C")).
    """

    name: str
    title: str
    make_inputs: Callable[[tuple, np.dtype], dict]
    sizes: dict
    size_names: tuple
    cases: tuple
    dtype: str = "float32"


# ----------------------------------------------------------------------------------------
# Cross-entropy
# ----------------------------------------------------------------------------------------

# The float64 reference is slow (several float64 temporaries of N x C); it is timed on
# this many rows and the time scaled by N / rows. Its cost is linear in the rows.
REFERENCE_ROWS = 256


def _ce_inputs(size, dtype):
    n_rows, n_classes = size
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((n_rows, n_classes), dtype=np.float32).astype(dtype,
                                                                               copy=False)
    logits *= 3
    target = rng.integers(0, n_classes, size=n_rows, dtype=np.int64)
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
                 prepare=clear, note="autograd: the forward keeps the lse, the backward is "
                                     "grad from lse into a fresh .grad")


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


CROSS_ENTROPY = Family(
    name="cross_entropy",
    title="cross-entropy (mean, hard targets)",
    make_inputs=_ce_inputs,
    sizes={"full": (4096, 50257), "quick": (1024, 50257)},
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
        Case("torch forward", _ce_torch_forward, read_only=True, requires="torch"),
    ),
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


ELEMENTWISE = Family(
    name="elementwise",
    title="regression and binary losses (mean)",
    make_inputs=_ew_inputs,
    sizes={"full": (1 << 25,), "quick": (1 << 22,)},
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

FAMILIES = {family.name: family for family in (CROSS_ENTROPY, ELEMENTWISE)}

# Targets of DESIGN.md's performance contract: (description, numerator case, denominator
# case, bound, "max" or "min"). Printed under the table; never an error.
TARGETS = {
    "cross_entropy": (
        ("fused (out=) / copy <= 1.3", "fastloss value_and_grad (out= preallocated)",
         "np.copyto (logits -> buffer)", 1.3, "max"),
        ("forward / max <= 1.5", "fastloss forward", "logits.max()", 1.5, "max"),
        ("grad from lse / fused <= 1.1", "fastloss grad from lse",
         "fastloss value_and_grad (out= preallocated)", 1.1, "max"),
        ("torch fwd+bwd / fused >= 15", "torch F.cross_entropy forward+backward",
         "fastloss value_and_grad (out= preallocated)", 15.0, "min"),
    ),
    # Three streams (pred, target, gradient) against copy's two: 1.5x is the limit.
    "elementwise": tuple(
        target
        for name in ELEMENTWISE_LOSSES
        for target in (
            (f"{name} / copy <= 2", f"fastloss {name} value_and_grad (out= preallocated)",
             "np.copyto (pred -> buffer)", 2.0, "max"),
            (f"torch {name} / fastloss >= 5", f"torch {_TORCH_NAMES[name]} forward+backward",
             f"fastloss {name} value_and_grad (out= preallocated)", 5.0, "min"),
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


CONTRASTIVE = Family(
    name="contrastive",
    title="contrastive_pairwise (euclidean, mean; 41 rows per class), info_nce, triplet_margin",
    make_inputs=_cp_inputs,
    sizes={"full": (4096, 768), "quick": (1024, 768)},
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

FAMILIES[CONTRASTIVE.name] = CONTRASTIVE
TARGETS[CONTRASTIVE.name] = (
    ("contrastive_pairwise / x @ x.T <= 3",
     "fastloss contrastive_pairwise value_and_grad (out= preallocated)",
     "x @ x.T (float32 matmul)", 3.0, "max"),
    ("torch / contrastive_pairwise >= 4", "torch cdist + contrastive + backward",
     "fastloss contrastive_pairwise value_and_grad (out= preallocated)", 4.0, "min"),
)


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


def run(family_name="cross_entropy", *, quick=False, size=None, threads=None, repeat=None,
        warmup=1, progress=True):
    """Time every case of a family; return the report (the --json document)."""
    family = FAMILIES[family_name]
    machine = machine_info()  # before allocating: the load average at the start
    size = tuple(size) if size is not None else family.sizes["quick" if quick else "full"]
    if len(size) != len(family.size_names):
        raise ValueError(f"size: {family.name} takes {', '.join(family.size_names)}, "
                         f"got {size}")
    threads = fastloss.get_num_threads() if threads is None else threads
    repeat = repeat if repeat is not None else (5 if quick else 10)
    dtype = np.dtype(family.dtype)
    inputs = family.make_inputs(size, dtype)

    runnable = []
    skipped = []
    for case in family.cases:
        timed = case.setup(inputs, threads)
        if timed is None:
            skipped.append({"name": case.name, "skipped": f"{case.requires} not importable"})
        else:
            runnable.append((case, timed))

    bar = _Progress(len(runnable) * (warmup + repeat), progress)
    torch = _torch()
    saved_torch_threads = torch.get_num_threads() if torch is not None else None
    try:
        if torch is not None:
            torch.set_num_threads(threads)  # the same thread count for every library
        times = _time_all([(case.name, timed) for case, timed in runnable], repeat, warmup,
                          bar)
        measured = [(case, timed, case_times)
                    for (case, timed), case_times in zip(runnable, times)]
    finally:
        bar.close()
        if torch is not None:
            torch.set_num_threads(saved_torch_threads)

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
    targets = []
    for text, numerator, denominator, bound, sense in TARGETS.get(family.name, ()):
        if numerator in by_name and denominator in by_name:
            ratio = by_name[numerator]["median_ms"] / by_name[denominator]["median_ms"]
            met = ratio <= bound if sense == "max" else ratio >= bound
            targets.append({"target": text, "ratio": ratio, "met": met})

    fl_config = config()
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
            "fastloss": fl_config,
        },
        "results": results,
        "skipped": skipped,
        "targets": targets,
    }


# ----------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------

def _ms(value):
    """Milliseconds in 10 characters, with the decimals a small time needs."""
    return f"{value:10.3f}" if value < 10 else f"{value:10.1f}"


def format_report(report):
    """The header and table as text."""
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
    width = max([len(row["name"]) for row in report["results"]] + [4])
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
    if report["targets"]:
        lines.append("")
        lines.append("DESIGN.md targets (medians):" if not report["config"]["quick"] else
                     "DESIGN.md targets (medians; set for the full sizes, where they are "
                     "judged: at --quick sizes caches and fixed costs weigh more):")
        for target in report["targets"]:
            lines.append(f"  {target['target']:<32} {target['ratio']:7.2f}  "
                         f"{'met' if target['met'] else 'MISSED'}")
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

    heights = [max(len(report["results"]), 1) * 0.32 + 1.2 for report in reports]
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


def main(*, quick=False, json_file=None, threads=None, repeat=None, size=None,
         progress=True, stream=None, family="all", plot_file=None):
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
                     progress=progress)
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
