"""The benchmark cases of every family: inputs, the calls timed, and their targets."""
import dataclasses
import functools
from typing import Callable

import numpy as np

import fastloss
from fastloss import _registry, reference
from fastloss.bench._types import Case, Family, Target, Timed, Unavailable

try:
    import ml_dtypes
except ImportError:  # an optional dependency: no bfloat16 families then
    ml_dtypes = None


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


def _one_thread(setup):
    """``setup``'s call on one thread, whatever the run's count: beside the row on the
    run's threads it makes the speed-up from threads a ratio of the table."""
    def one_thread(inputs, threads):
        timed = setup(inputs, 1)
        if timed is not None:
            timed.note = "num_threads=1 (the row above it: the run's threads)"
        return timed

    return one_thread


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


def _with_torch(build):
    """A case that needs torch: ``build(torch, inputs, threads)`` makes its Timed call.
    Without torch the case gives None (its row says torch is not importable)."""
    @functools.wraps(build)
    def setup(inputs, threads):
        torch = _torch()
        return None if torch is None else build(torch, inputs, threads)
    return setup


def _tensor(torch, array):
    """A tensor over the array's memory, no copy (an ml_dtypes bfloat16 array through
    its bits, as torch.bfloat16)."""
    if ml_dtypes is not None and array.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def _leaves(torch, inputs, *keys):
    """Leaf tensors over ``inputs[key]`` for each key (no copy) that require grad, and
    the untimed ``clear`` that drops their .grad before each call, so that each backward
    allocates a fresh gradient, as in training."""
    tensors = [_tensor(torch, inputs[key]).requires_grad_(True) for key in keys]

    def clear():
        for tensor in tensors:
            tensor.grad = None

    return (*tensors, clear)


@_with_torch
def _ce_torch_forward_backward(torch, inputs, threads):
    logits, clear = _leaves(torch, inputs, "logits")
    target = torch.from_numpy(inputs["target"])
    return Timed(lambda: torch.nn.functional.cross_entropy(logits, target).backward(),
                 prepare=clear, note=f"{logits.dtype} over the arrays' memory; backward into "
                                     "a fresh .grad")


@_with_torch
def _ce_adapter_forward_backward(torch, inputs, threads):
    import fastloss.torch as fastloss_torch

    logits, clear = _leaves(torch, inputs, "logits")
    target = torch.from_numpy(inputs["target"])
    return Timed(lambda: fastloss_torch.cross_entropy(logits, target,
                                                      num_threads=threads).backward(),
                 prepare=clear, note=f"{logits.dtype}, zero-copy; autograd, backward into a "
                                     "fresh .grad (as torch's row)")


@_with_torch
def _ce_adapter_in_place(torch, inputs, threads):
    """The adapter with inplace_backward=True: the gradient overwrites the logits.

    Its input must be a layer's output, not a leaf nor a view of one (whose memory the
    gradient would overwrite). Here the layer is an autograd Function whose forward
    returns the logits already computed, untimed, into memory of their own (``work``,
    restored before each call, as a layer writes its output) and whose backward passes
    the gradient on unchanged (a view: no copy); the call ends with torch.autograd.grad
    with respect to the layer's input, so that the backward stops at the logits as in the
    other rows."""
    import fastloss.torch as fastloss_torch

    logits, work = inputs["logits"], inputs["work"]
    layer_input = torch.from_numpy(logits).requires_grad_(True)
    target = torch.from_numpy(inputs["target"])

    class Layer(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return torch.from_numpy(work)  # the output's memory, not x's

        @staticmethod
        def backward(ctx, grad):
            return grad

    def call():
        loss = fastloss_torch.cross_entropy(Layer.apply(layer_input), target,
                                            inplace_backward=True, num_threads=threads)
        return torch.autograd.grad(loss, layer_input)

    return Timed(call, prepare=lambda: np.copyto(work, logits),
                 note="logits restored (untimed) before each call, as a layer's output "
                      "(an autograd Function's, over memory of its own); "
                      "torch.autograd.grad w.r.t. the layer's input")


@_with_torch
def _ce_torch_compile_forward_backward(torch, inputs, threads):
    """torch.compile(F.cross_entropy), static shapes, forward+backward into a fresh .grad.

    The compile (of forward and backward) runs here, untimed, on the timed inputs
    themselves; when it fails on this machine (no working C++ compiler, an unsupported
    platform) the row reports that it cannot run."""
    logits, clear = _leaves(torch, inputs, "logits")
    target = torch.from_numpy(inputs["target"])
    saved_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)  # the thread count its code is generated for
        torch.compiler.reset()  # a fresh cache: no earlier shape's recompile limit
        compiled = torch.compile(torch.nn.functional.cross_entropy, dynamic=False)
        compiled(logits, target).backward()
    except Exception as error:  # any failure to compile means this row cannot run here
        first_line = (str(error).strip().splitlines() or [""])[0][:120]
        raise Unavailable(f"torch.compile failed: {type(error).__name__}: "
                          f"{first_line}") from None
    finally:
        torch.set_num_threads(saved_threads)
        clear()
    return Timed(lambda: compiled(logits, target).backward(), prepare=clear,
                 note="torch.compile(F.cross_entropy, dynamic=False), compiled untimed; "
                      "backward into a fresh .grad")


@_with_torch
def _ce_torch_forward(torch, inputs, threads):
    logits = _tensor(torch, inputs["logits"])
    target = torch.from_numpy(inputs["target"])

    def call():
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(logits, target)

    return Timed(call, note=f"{logits.dtype}, under torch.no_grad()")


# The size of the cross-entropy targets: 4096 tokens over GPT-2's vocabulary.
CE_FULL_SIZE = (4096, 50257)
CE_FUSED = "fastloss value_and_grad (out= preallocated)"
CE_ONE_THREAD = "fastloss value_and_grad (out= preallocated, num_threads=1)"

CROSS_ENTROPY = Family(
    name="cross_entropy",
    title="cross-entropy (mean, hard targets)",
    make_inputs=_ce_inputs,
    sizes={"full": CE_FULL_SIZE, "quick": (1024, 50257), "tiny": (16, 300)},
    size_names=("N", "C"),
    cases=(
        Case("fastloss value_and_grad (out= preallocated)", _ce_fused_out),
        Case(CE_ONE_THREAD, _one_thread(_ce_fused_out)),
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

# bfloat16 logits (ml_dtypes' NumPy dtype; the family exists where ml_dtypes is
# installed): the same cases over half the bytes, torch's own bfloat16 cross-entropy beside.

def _bits_max(key):
    """The read-only limit of the half-precision array ``inputs[key]``: the max of its
    bits as uint16."""
    def setup(inputs, threads):
        bits = inputs[key].view(np.uint16)
        return Timed(lambda: bits.max(), note="read-only limit (the bits as uint16: "
                                               "ml_dtypes' own max is not vectorised)")
    return setup


CE_BF16_READ = "logits.view(uint16).max()"
CROSS_ENTROPY_BFLOAT16 = Family(
    name="cross_entropy_bfloat16",
    title="cross-entropy, bfloat16 logits (mean, hard targets)",
    make_inputs=_ce_inputs,
    sizes={"full": CE_FULL_SIZE, "quick": (1024, 50257), "tiny": (16, 300)},
    size_names=("N", "C"),
    dtype="bfloat16",
    cases=(
        Case(CE_FUSED, _ce_fused_out),
        Case("fastloss value_and_grad (out=logits, in place)", _ce_fused_in_place),
        Case("fastloss forward", _ce_forward, read_only=True),
        Case("fastloss grad from lse", _ce_grad_from_lse),
        Case("np.copyto (logits -> buffer)", _copy, role="copy"),
        Case(CE_BF16_READ, _bits_max("logits"), role="read", read_only=True),
        Case("torch F.cross_entropy forward+backward (bfloat16)",
             _ce_torch_forward_backward, requires="torch"),
        Case("fastloss.torch.cross_entropy forward+backward (bfloat16)",
             _ce_adapter_forward_backward, requires="torch"),
        Case("torch forward (bfloat16)", _ce_torch_forward, read_only=True,
             requires="torch"),
    ),
)


# Few classes: per-row work is short, so fixed costs per row and per call show.
FEW_CLASSES_SIZE = (65536, 10)

CROSS_ENTROPY_FEW_CLASSES = Family(
    name="cross_entropy_few_classes",
    title="cross-entropy with few classes (mean, hard targets)",
    make_inputs=_ce_inputs,
    # 2.6 MB of logits: the full size is quick enough for --quick too
    sizes={"full": FEW_CLASSES_SIZE, "quick": FEW_CLASSES_SIZE, "tiny": (64, 10)},
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
# Cross-entropy over blocks of classes (block statistics) and over ranks (vocab-parallel)
# ----------------------------------------------------------------------------------------

CE_BLOCK_COUNTS = (1, 4, 16)


def _ce_block_forward(k, own_arrays=False):
    """The forward by block statistics over ``k`` equal blocks of classes: each block's
    statistics, the merge, the loss.  The blocks are views of the logits (no copy), or
    with ``own_arrays`` each a contiguous array of its own (copied untimed), as a rank's
    slice of the vocabulary or a Dask chunk along the class axis is held."""
    def setup(inputs, threads):
        logits, target = inputs["logits"], inputs["target"]
        n_classes = logits.shape[1]
        bounds = [n_classes * j // k for j in range(k + 1)]
        if len(set(bounds)) < len(bounds):
            raise Unavailable(f"{n_classes} classes do not make {k} blocks")
        blocks = [(a, np.ascontiguousarray(logits[:, a:b]) if own_arrays else logits[:, a:b])
                  for a, b in zip(bounds[:-1], bounds[1:])]

        def call():
            stats = [fastloss.cross_entropy_block_stats(
                block, target, class_offset=a, num_classes=n_classes,
                num_threads=threads) for a, block in blocks]
            return fastloss.cross_entropy_from_stats(
                fastloss.cross_entropy_merge_stats(stats), target)

        layout = ("each a contiguous array of its own (a rank's or a Dask chunk's layout)"
                  if own_arrays else "views of the logits' columns")
        return Timed(call, note=f"{k} blocks of about {n_classes // k} classes, {layout}")
    return setup


def _ce_block_name(k, own_arrays=False):
    return (f"fastloss forward by block statistics, k={k}"
            + (", blocks in arrays of their own" if own_arrays else ""))


# The vocab-parallel row: two spawned ranks in a gloo group on 127.0.0.1, each holding
# half the classes, started once per size and driven through pipes (one step per call).
VOCAB_PARALLEL_RANKS = 2
_VOCAB_POOL = {}


def _vocab_parallel_rank(rank, world, port, size, dtype_name, connection):
    """One rank: forward+backward of vocab_parallel_cross_entropy on its slice per "step"
    received, answering (its own seconds, the bytes it sent to the collectives)."""
    import os
    import time

    import torch
    import torch.distributed as dist

    from fastloss.torch.distributed import vocab_parallel_cross_entropy

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    sent = [0]

    def counting(collective, payload):
        def call(*args, **kwargs):
            tensor = payload(*args)
            sent[0] += tensor.numel() * tensor.element_size()
            return collective(*args, **kwargs)
        return call

    dist.all_reduce = counting(dist.all_reduce, lambda tensor, *rest: tensor)
    dist.all_gather = counting(dist.all_gather, lambda tensors, tensor, *rest: tensor)
    n_rows, n_classes = size
    start, end = n_classes * rank // world, n_classes * (rank + 1) // world
    rng = np.random.default_rng(rank + 1)
    local = torch.from_numpy((rng.standard_normal((n_rows, end - start), dtype=np.float32)
                              * 3).astype(dtype_name)).requires_grad_(True)
    target = torch.from_numpy(np.random.default_rng(0).integers(0, n_classes, n_rows))
    connection.send("ready")
    while connection.recv() == "step":
        sent[0] = 0
        begin = time.perf_counter()
        vocab_parallel_cross_entropy(local, target, vocab_start=start,
                                     num_threads=1).backward()
        local.grad = None
        connection.send((time.perf_counter() - begin, sent[0]))
    dist.destroy_process_group()
    # skip the interpreter's teardown, where gloo's remaining threads can abort the process
    os._exit(0)


def _stop_vocab_pool():
    for connections, processes in _VOCAB_POOL.values():
        for connection in connections:
            try:
                connection.send("stop")
            except (BrokenPipeError, OSError):
                pass
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    _VOCAB_POOL.clear()


@_with_torch
def _vocab_parallel(torch, inputs, threads):
    """Each step: both ranks' forward+backward (one thread each), in parallel; the row is
    the step's wall time, the note the bytes each rank sent."""
    import atexit
    import socket

    import torch.multiprocessing as mp

    size = inputs["logits"].shape
    dtype_name = inputs["logits"].dtype.name
    key = (size, dtype_name)
    if key not in _VOCAB_POOL:
        _stop_vocab_pool()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        context = mp.get_context("spawn")
        connections, processes = [], []
        for rank in range(VOCAB_PARALLEL_RANKS):
            mine, theirs = context.Pipe()
            process = context.Process(target=_vocab_parallel_rank, daemon=True,
                                      args=(rank, VOCAB_PARALLEL_RANKS, port, size,
                                            dtype_name, theirs))
            process.start()
            connections.append(mine)
            processes.append(process)
        _VOCAB_POOL[key] = (connections, processes)
        atexit.register(_stop_vocab_pool)
        for connection in connections:
            if not connection.poll(300) or connection.recv() != "ready":
                _stop_vocab_pool()
                raise Unavailable("the vocab-parallel ranks did not start")
    connections, _ = _VOCAB_POOL[key]
    last = {}

    def step():
        for connection in connections:
            connection.send("step")
        last["ranks"] = [connection.recv() for connection in connections]

    step()  # one step untimed: the bytes for the note
    sent = [sent_bytes for _, sent_bytes in last["ranks"]]
    n_rows = size[0]
    return Timed(step, note=f"{VOCAB_PARALLEL_RANKS} gloo ranks on 127.0.0.1, one thread "
                            f"each, half the classes each; bytes sent per rank per step: "
                            f"{sent[0]} ({sent[0] / n_rows:.1f} per row)")


CE_BLOCKS_FORWARD = "fastloss forward"
CE_VOCAB_PARALLEL = (f"vocab_parallel_cross_entropy forward+backward, "
                     f"{VOCAB_PARALLEL_RANKS} gloo ranks")

CROSS_ENTROPY_BLOCKS = Family(
    name="cross_entropy_blocks",
    title="cross-entropy by block statistics and over ranks (mean, hard targets)",
    make_inputs=_ce_inputs,
    sizes={"full": CE_FULL_SIZE, "quick": (1024, 50257), "tiny": (16, 300)},
    size_names=("N", "C"),
    cases=(
        Case(CE_BLOCKS_FORWARD, _ce_forward, read_only=True),
        *(Case(_ce_block_name(k), _ce_block_forward(k), read_only=True)
          for k in CE_BLOCK_COUNTS),
        # shown, not judged: k=16 without the strided pattern (BENCHMARKS.md, "What 16
        # blocks cost is the short rows, not their layout": the same time as the views)
        Case(_ce_block_name(CE_BLOCK_COUNTS[-1], own_arrays=True),
             _ce_block_forward(CE_BLOCK_COUNTS[-1], own_arrays=True), read_only=True),
        Case("fastloss.torch.cross_entropy forward+backward", _ce_adapter_forward_backward,
             requires="torch"),
        Case(CE_VOCAB_PARALLEL, _vocab_parallel, requires="torch"),
        Case("np.copyto (logits -> buffer)", _copy, role="copy"),
        Case("logits.max()", _read, role="read", read_only=True),
    ),
)


# ----------------------------------------------------------------------------------------
# Regression and binary (elementwise) losses
# ----------------------------------------------------------------------------------------

# The losses the registry marks ``bench``, in its order: the elementwise family, and the
# box losses (2**25 values are 2**23 pairs of boxes), with the same pool and baselines.
ELEMENTWISE_ENTRIES = tuple(entry for entry in
                            _registry.family("elementwise") + _registry.family("box")
                            if entry.bench)
ELEMENTWISE_LOSSES = tuple(entry.name for entry in ELEMENTWISE_ENTRIES)

# The float64 reference is timed on this many elements and scaled, as for cross-entropy.
REFERENCE_ELEMENTS = 1 << 20


class _Pool(dict):
    """The family's inputs, each drawn the first time a case asks for it by name (an
    entry's ``bench_inputs``), so a size makes only the arrays its cases read."""

    def __init__(self, n, dtype):
        super().__init__()
        self.n, self.dtype = n, np.dtype(dtype)
        self.rng = np.random.default_rng(0)

    def __missing__(self, key):
        n, dtype, rng = self.n, self.dtype, self.rng
        if key == "pred":
            value = rng.standard_normal(n, dtype=np.float32).astype(dtype, copy=False)
            value *= 2
        elif key == "target":
            value = rng.standard_normal(n, dtype=np.float32).astype(dtype, copy=False)
        elif key == "labels":
            value = (rng.random(n, dtype=np.float32) < 0.5).astype(dtype)
        elif key == "soft_labels":
            # soft targets: bce's float32 slopes that may cancel are redone in double
            # (the worst case: uniform targets leave nearly every tile in doubt)
            value = rng.random(n, dtype=np.float32).astype(dtype, copy=False)
        elif key == "signs":
            value = np.where(rng.random(n, dtype=np.float32) < 0.5, -1, 1).astype(dtype)
        elif key == "positive":
            value = rng.uniform(0.1, 3.0, n).astype(dtype)
        elif key == "counts":
            value = rng.poisson(2.0, n).astype(dtype)
        elif key == "log_probs":
            # log-probabilities: kl_div's input, and a sequence log-probability for dpo
            value = np.log(rng.uniform(1e-4, 1.0, n)).astype(dtype)
        elif key == "probs":
            value = rng.uniform(0.0, 1.0, n).astype(dtype)
        elif key in ("boxes1", "boxes2"):
            # n / 4 pairs of boxes (x1, y1, x2, y2), the second near the first
            if key == "boxes2":
                base = self["boxes1"]
                shift = rng.normal(0.0, 1.5, (n // 4, 2)).astype(dtype)
                value = base + np.concatenate([shift, shift], axis=1)
                value[:, 2:] += rng.uniform(-0.25, 0.25, (n // 4, 2)).astype(dtype)
            else:
                corner = rng.uniform(0.0, 10.0, (n // 4, 2)).astype(dtype)
                size = rng.uniform(0.5, 5.0, (n // 4, 2)).astype(dtype)
                value = np.concatenate([corner, corner + size], axis=1)
        elif key == "buffer":
            value = np.empty(n, dtype=dtype)
            value.fill(0)  # every page touched before timing
        else:
            raise KeyError(key)
        self[key] = value
        return value


def _ew_inputs(size, dtype):
    (n,) = size
    pool = _Pool(n, dtype)
    pool["buffer"]  # noqa: B018 -- made now, before any case is timed
    return pool


def _ew_arrays(inputs, entry, target_key=None):
    """The entry's inputs from the pool (``target_key`` replaces its second)."""
    keys = list(entry.bench_inputs)
    if target_key:
        keys[1] = target_key
    return [inputs[key] for key in keys]


def _ew_fused(entry, target_key=None):
    def setup(inputs, threads):
        function = getattr(fastloss, f"{entry.name}_value_and_grad")
        arrays = _ew_arrays(inputs, entry, target_key)
        # the gradient buffer in the first input's shape ((n / 4, 4) for boxes)
        buffer = inputs["buffer"][:arrays[0].size].reshape(arrays[0].shape)
        return Timed(lambda: function(*arrays, out=buffer, num_threads=threads))

    return setup


def _ew_forward(entry):
    def setup(inputs, threads):
        function = getattr(fastloss, entry.name)
        arrays = _ew_arrays(inputs, entry)
        return Timed(lambda: function(*arrays, num_threads=threads))

    return setup


def _ew_reference(entry):
    def setup(inputs, threads):
        function = getattr(reference, f"{entry.name}_value_and_grad")
        arrays = _ew_arrays(inputs, entry)
        n = arrays[0].size
        count = min(n, REFERENCE_ELEMENTS)
        note = "float64, single-threaded NumPy"
        if count < n:
            note += f"; timed on {count} of {n} elements, scaled x{n / count:g}"
        head = [array[:count] for array in arrays]
        return Timed(lambda: function(*head), scale=n / count, note=note)

    return setup


def _ew_copy(inputs, threads):
    pred, buffer = inputs["pred"], inputs["buffer"]
    return Timed(lambda: np.copyto(buffer, pred), note="memory-bandwidth limit")


def _ew_read(inputs, threads):
    pred = inputs["pred"]
    return Timed(lambda: pred.max(), note="read-only limit (one stream)")


def _torch_bradley_terry(chosen, rejected, reduction="mean"):
    """torchrl's reward_model_loss in torch ops (torchrl is not a dependency)."""
    import torch

    return -torch.nn.functional.logsigmoid(chosen - rejected).mean()


def _torch_dpo(policy_chosen, policy_rejected, reference_chosen, reference_rejected,
               reduction="mean"):
    """TRL's DPOTrainer.dpo_loss, sigmoid, beta 0.1 (fastloss.dpo's defaults), in torch
    ops (TRL is not a dependency)."""
    import torch

    logits = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected)
    return -torch.nn.functional.logsigmoid(0.1 * logits).mean()


# The counterparts of the entries torch has no function for, as their libraries write
# them in torch ops: the torch row of each times its formula.
_TORCH_FORMULAS = {"bradley_terry": _torch_bradley_terry, "dpo": _torch_dpo}


def _has_torch_counterpart(entry):
    """Whether ``entry`` has a torch row: torch's function, or its formula in torch ops."""
    path = entry.torch.counterpart if entry.torch else None
    return (bool(path) and path.startswith("torch.")) or entry.name in _TORCH_FORMULAS


def _torch_function(entry):
    """torch's own function for ``entry`` (imports torch; call only when it runs)."""
    import importlib

    module, _, name = entry.torch.counterpart.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _ew_forward_backward(entry, adapter):
    """torch's forward+backward of ``entry`` (or fastloss.torch's with ``adapter``), the
    gradient w.r.t. the first input into a fresh .grad, as in training."""
    @_with_torch
    def setup(torch, inputs, threads):
        if adapter:
            import fastloss.torch as fastloss_torch

            function = getattr(fastloss_torch, entry.torch.function)
            keywords = {"num_threads": threads}
        elif entry.name in _TORCH_FORMULAS:
            function, keywords = _TORCH_FORMULAS[entry.name], {}
        else:
            function, keywords = _torch_function(entry), {}
        # torchvision's functions default to "none"; kl_div's divergence per sample is
        # "batchmean" (its "mean" warns that it is not the divergence)
        keywords["reduction"] = entry.reductions[0] if entry.reductions else "mean"
        tensors = [torch.from_numpy(array) for array in _ew_arrays(inputs, entry)]
        tensors[0].requires_grad_(True)

        def clear():
            tensors[0].grad = None

        return Timed(lambda: function(*tensors, **keywords).backward(), prepare=clear,
                     note=("autograd" if adapter else "torch.from_numpy inputs")
                     + "; backward into a fresh .grad")

    return setup


def _torch_rows(adapter):
    """torch's forward+backward of every entry with a torch counterpart, or (``adapter``)
    fastloss.torch's of every entry with a torch form."""
    for entry in ELEMENTWISE_ENTRIES:
        if not (_has_adapter(entry) if adapter else _has_torch_counterpart(entry)):
            continue
        yield Case(_ew_torch_name(entry, adapter), _ew_forward_backward(entry, adapter),
                   requires="torch")


EW_FULL_SIZE = (1 << 25,)
# The entry whose speed-up from threads and NumPy reference the table shows.
EW_THREADS_ENTRY = _registry.LOSSES["huber"]


def _ew_fused_name(entry):
    return f"fastloss {entry.name} value_and_grad (out= preallocated)"


def _ew_torch_name(entry, adapter):
    """The torch row's name (``adapter``: fastloss.torch's) of an entry with that row."""
    prefix = "fastloss.torch." if adapter else "torch "
    formula = " (formula)" if not adapter and entry.name in _TORCH_FORMULAS else ""
    return f"{prefix}{entry.torch.function}{formula} forward+backward"


EW_ONE_THREAD = (f"fastloss {EW_THREADS_ENTRY.name} value_and_grad (out= preallocated, "
                 f"num_threads=1)")


def _has_adapter(entry):
    return entry.torch is not None and bool(entry.torch.function)


ELEMENTWISE = Family(
    name="elementwise",
    title="elementwise and box losses (mean)",
    make_inputs=_ew_inputs,
    sizes={"full": EW_FULL_SIZE, "quick": (1 << 22,), "tiny": (3000,)},
    size_names=("n",),
    cases=(
        *(Case(_ew_fused_name(entry), _ew_fused(entry)) for entry in ELEMENTWISE_ENTRIES),
        Case(EW_ONE_THREAD, _one_thread(_ew_fused(EW_THREADS_ENTRY))),
        Case("fastloss bce_with_logits value_and_grad (soft targets)",
             _ew_fused(_registry.LOSSES["bce_with_logits"], "soft_labels")),
        *(Case(f"fastloss {entry.name} forward", _ew_forward(entry), read_only=True)
          for entry in ELEMENTWISE_ENTRIES),
        Case(f"numpy reference {EW_THREADS_ENTRY.name} value_and_grad (float64, "
             f"{REFERENCE_ELEMENTS} elements scaled to n)", _ew_reference(EW_THREADS_ENTRY)),
        Case("np.copyto (pred -> buffer)", _ew_copy, role="copy"),
        Case("pred.max()", _ew_read, role="read", read_only=True),
        *_torch_rows(adapter=False),
        *_torch_rows(adapter=True),
    ),
)


def _speed_up_from_threads(label, one_thread, all_threads, copy, copy_bound, size):
    """The speed-up from the run's threads (at least 2) over one, >= 1.6: unless one
    thread is already within the family's own bound on copy (the memory system, not the
    cores, is then the limit)."""
    return Target(f"{label}: 1 thread / all threads >= 1.6", one_thread, all_threads, 1.6,
                  "min", size, min_threads=2,
                  unless=Target(f"1 thread / copy <= {copy_bound:g}", one_thread, copy,
                                copy_bound, "max", size))


# The performance targets (BENCHMARKS.md lists them with their reasons), each judged at
# the size it is set for. Printed under the table; never an error.
_ADAPTER = "fastloss.torch.cross_entropy forward+backward"
TARGETS = {
    "cross_entropy": (
        Target("fused (out=) / copy <= 1.3", CE_FUSED, "np.copyto (logits -> buffer)", 1.3,
               "max", CE_FULL_SIZE),
        Target("forward / max <= 1.5", "fastloss forward", "logits.max()", 1.5, "max",
               CE_FULL_SIZE),
        Target("grad from lse / fused <= 1.1", "fastloss grad from lse", CE_FUSED, 1.1, "max",
               CE_FULL_SIZE),
        Target("torch fwd+bwd / fused >= 15", "torch F.cross_entropy forward+backward",
               CE_FUSED, 15.0, "min", CE_FULL_SIZE),
        Target("adapter fwd+bwd / copy <= 1.6", _ADAPTER, "np.copyto (logits -> buffer)",
               1.6, "max", CE_FULL_SIZE),
        Target("adapter in place / copy <= 1.35", f"{_ADAPTER} (inplace_backward=True)",
               "np.copyto (logits -> buffer)", 1.35, "max", CE_FULL_SIZE),
        Target("torch eager / adapter >= 5", "torch F.cross_entropy forward+backward",
               _ADAPTER, 5.0, "min", CE_FULL_SIZE),
        Target("torch.compile / adapter >= 3", "torch.compile(F.cross_entropy) forward+backward",
               _ADAPTER, 3.0, "min", CE_FULL_SIZE),
        _speed_up_from_threads("fused", CE_ONE_THREAD, CE_FUSED,
                               "np.copyto (logits -> buffer)", 1.3, CE_FULL_SIZE),
    ),
    "cross_entropy_blocks": tuple(
        Target(f"blocks k={k} / forward <= 1.1", _ce_block_name(k), CE_BLOCKS_FORWARD, 1.1,
               "max", CE_FULL_SIZE) for k in CE_BLOCK_COUNTS),
    "cross_entropy_few_classes": (
        Target("fused (out=) / copy <= 3", CE_FUSED, "np.copyto (logits -> buffer)", 3.0,
               "max", FEW_CLASSES_SIZE),
    ),
    # Three streams (pred, target, gradient) against copy's two: 1.5x is the limit.
    "elementwise": (
        *(target
          for entry in ELEMENTWISE_ENTRIES
          for target in (
              Target(f"{entry.name} / copy <= 2", _ew_fused_name(entry),
                     "np.copyto (pred -> buffer)", 2.0, "max", EW_FULL_SIZE),
              *((Target(f"torch {entry.name} / fastloss >= 5", _ew_torch_name(entry, False),
                        _ew_fused_name(entry), 5.0, "min", EW_FULL_SIZE),)
                if _has_torch_counterpart(entry) else ()),
              # the drop-in adapter, the path torch users take
              *((Target(f"torch {entry.name} / adapter >= 5", _ew_torch_name(entry, False),
                        _ew_torch_name(entry, True), 5.0, "min", EW_FULL_SIZE),)
                if _has_torch_counterpart(entry) and _has_adapter(entry) else ()),
          )),
        _speed_up_from_threads(EW_THREADS_ENTRY.name, EW_ONE_THREAD,
                               _ew_fused_name(EW_THREADS_ENTRY), "np.copyto (pred -> buffer)",
                               2.0, EW_FULL_SIZE),
    ),
}

EW_BF16_READ = "pred.view(uint16).max()"
# The same losses on bfloat16 inputs (where ml_dtypes is installed): half the bytes.
ELEMENTWISE_BFLOAT16 = Family(
    name="elementwise_bfloat16",
    title="elementwise and box losses, bfloat16 inputs (mean)",
    make_inputs=_ew_inputs,
    sizes={"full": EW_FULL_SIZE, "quick": (1 << 22,), "tiny": (3000,)},
    size_names=("n",),
    dtype="bfloat16",
    cases=(
        *(Case(_ew_fused_name(entry), _ew_fused(entry)) for entry in ELEMENTWISE_ENTRIES),
        Case("np.copyto (pred -> buffer)", _ew_copy, role="copy"),
        Case(EW_BF16_READ, _bits_max("pred"), role="read", read_only=True),
    ),
)
TARGETS[ELEMENTWISE_BFLOAT16.name] = tuple(
    Target(f"{entry.name} / copy <= 2", _ew_fused_name(entry), "np.copyto (pred -> buffer)",
           2.0, "max", EW_FULL_SIZE) for entry in ELEMENTWISE_ENTRIES)


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


@_with_torch
def _cp_torch(torch, inputs, threads):
    x, clear = _leaves(torch, inputs, "x")
    labels = torch.from_numpy(inputs["labels"])
    n_pairs = x.shape[0] * (x.shape[0] - 1) / 2

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


def _nce_fused_float64(inputs, threads):
    x, key, buffers = inputs["x"], inputs["key"], inputs["buffers"]
    return Timed(lambda: fastloss.info_nce_value_and_grad(
        x, key, symmetric=True, precision="float64", out=(buffers[0], buffers[1]),
        num_threads=threads), note="the similarities and their softmax in float64")


def _nce_matmul(inputs, threads):
    x, key = inputs["x"], inputs["key"]
    return Timed(lambda: x @ key.T,
                 note="info_nce's limit: three such products and one pass over their result")


@_with_torch
def _nce_torch(torch, inputs, threads):
    F = torch.nn.functional
    query, key, clear = _leaves(torch, inputs, "x", "key")
    target = torch.arange(query.shape[0])

    def call():
        logits = F.normalize(query) @ F.normalize(key).T / 0.05
        (0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))).backward()

    return Timed(call, prepare=clear, note="normalize, matmul, cross_entropy both ways, backward")


def _triplet_fused(inputs, threads):
    x, key, other, buffers = inputs["x"], inputs["key"], inputs["other"], inputs["buffers"]
    return Timed(lambda: fastloss.triplet_margin_value_and_grad(
        x, key, other, swap=True, out=tuple(buffers), num_threads=threads))


@_with_torch
def _triplet_torch(torch, inputs, threads):
    *tensors, clear = _leaves(torch, inputs, "x", "key", "other")
    return Timed(lambda: torch.nn.functional.triplet_margin_loss(*tensors, swap=True).backward(),
                 prepare=clear)


def _contrastive_adapter(name):
    """The PyTorch adapter's forward+backward of one contrastive-family loss, on the
    inputs of the fastloss row beside it."""
    @_with_torch
    def setup(torch, inputs, threads):
        import fastloss.torch as fastloss_torch

        keys = {"contrastive_pairwise": ("x",), "info_nce": ("x", "key")}.get(
            name, ("x", "key", "other"))
        *tensors, clear = _leaves(torch, inputs, *keys)
        if name == "contrastive_pairwise":
            labels = torch.from_numpy(inputs["labels"])

            def loss():
                return fastloss_torch.contrastive_pairwise(tensors[0], labels,
                                                           num_threads=threads)
        elif name == "info_nce":
            def loss():
                return fastloss_torch.info_nce(*tensors, symmetric=True, num_threads=threads)
        else:
            def loss():
                return fastloss_torch.triplet_margin_loss(*tensors, swap=True,
                                                          num_threads=threads)

        return Timed(lambda: loss().backward(), prepare=clear,
                     note="autograd; backward into a fresh .grad")

    return setup


CP_FULL_SIZE = (4096, 768)

CONTRASTIVE = Family(
    name="contrastive",
    title="contrastive_pairwise (euclidean, mean; 41 rows per class), info_nce, triplet_margin",
    make_inputs=_cp_inputs,
    sizes={"full": CP_FULL_SIZE, "quick": (1024, 768), "tiny": (64, 16)},
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
        Case("fastloss info_nce value_and_grad (symmetric, precision='float64')",
             _nce_fused_float64),
        Case("q @ k.T (float32 matmul)", _nce_matmul),
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
    Target("info_nce / q @ k.T <= 3.5", "fastloss info_nce value_and_grad (symmetric)",
           "q @ k.T (float32 matmul)", 3.5, "max", CP_FULL_SIZE),
    Target("torch / info_nce >= 1.7", "torch info_nce (symmetric) forward+backward",
           "fastloss info_nce value_and_grad (symmetric)", 1.7, "min", CP_FULL_SIZE),
)


# ----------------------------------------------------------------------------------------
# Linear cross-entropy: the classifier's products and the loss, the logits never formed
# ----------------------------------------------------------------------------------------

def _lce_inputs(size, dtype):
    n_rows, n_features, n_classes = size
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((n_rows, n_features), dtype=np.float32).astype(dtype,
                                                                                copy=False)
    # logits of a few units, as a language model's
    classifier = (rng.standard_normal((n_classes, n_features), dtype=np.float32)
                  * np.float32(2.0 / np.sqrt(n_features))).astype(dtype, copy=False)
    target = rng.integers(0, n_classes, n_rows)
    return {"hidden": hidden, "classifier": classifier, "target": target}


def _touched(shape, dtype):
    array = np.empty(shape, dtype)
    array.fill(0)  # every page touched before timing
    return array


def _lce_fused(block_rows=None):
    def setup(inputs, threads):
        hidden, classifier = inputs["hidden"], inputs["classifier"]
        out = (_touched(hidden.shape, hidden.dtype), _touched(classifier.shape, hidden.dtype))
        return Timed(lambda: fastloss.linear_cross_entropy_value_and_grad(
            hidden, classifier, inputs["target"], out=out, block_rows=block_rows,
            num_threads=threads),
            note=("" if block_rows is None else
                  f"scratch {block_rows} x V ({block_rows * classifier.shape[0] * hidden.itemsize / 2**20:.0f} MiB)"))
    return setup


def _lce_products(inputs, threads):
    """The three products alone, into preallocated results: the logits (N x V), the
    hidden's gradient and the classifier's."""
    hidden, classifier = inputs["hidden"], inputs["classifier"]
    logits = _touched((hidden.shape[0], classifier.shape[0]), hidden.dtype)
    grad_hidden = _touched(hidden.shape, hidden.dtype)
    grad_classifier = _touched(classifier.shape, hidden.dtype)

    def call():
        np.matmul(hidden, classifier.T, out=logits)
        np.matmul(logits, classifier, out=grad_hidden)
        np.matmul(logits.T, hidden, out=grad_classifier)

    return Timed(call, note="h @ W.T, G @ W, G.T @ h (NumPy's BLAS, out=): the limit")


def _lce_one_product(inputs, threads):
    hidden, classifier = inputs["hidden"], inputs["classifier"]
    logits = _touched((hidden.shape[0], classifier.shape[0]), hidden.dtype)
    return Timed(lambda: np.matmul(hidden, classifier.T, out=logits))


def _torch_linear_inputs(torch, inputs):
    """hidden and classifier as leaf tensors that require grad (zero-copy), the target,
    and the untimed ``clear`` that drops their .grad before each call."""
    hidden, classifier, clear = _leaves(torch, inputs, "hidden", "classifier")
    return hidden, classifier, torch.from_numpy(inputs["target"]), clear


def _lce_torch(kind):
    """torch's forward+backward: ``F.linear`` + ``F.cross_entropy`` ("linear"),
    ``F.linear_cross_entropy`` ("default"), or with ``LinearCrossEntropyOptions()``
    ("options"); gradients into fresh .grad."""
    @_with_torch
    def setup(torch, inputs, threads):
        F = torch.nn.functional
        if kind != "linear" and not hasattr(F, "linear_cross_entropy"):
            raise Unavailable(f"torch {torch.__version__} has no F.linear_cross_entropy")
        hidden, classifier, target, clear = _torch_linear_inputs(torch, inputs)
        options = torch.nn.LinearCrossEntropyOptions() if kind == "options" else None

        def call():
            if kind == "linear":
                loss = F.cross_entropy(F.linear(hidden, classifier), target)
            else:
                loss = F.linear_cross_entropy(hidden, classifier, target, options=options)
            loss.backward()

        return Timed(call, prepare=clear)
    return setup


@_with_torch
def _lce_adapter(torch, inputs, threads):
    import fastloss.torch as FL

    hidden, classifier, target, clear = _torch_linear_inputs(torch, inputs)

    def call():
        FL.linear_cross_entropy(hidden, classifier, target, num_threads=threads).backward()

    return Timed(call, prepare=clear)


LCE_FULL_SIZE = (2048, 1024, 32000)
LCE_FUSED = "fastloss linear_cross_entropy value_and_grad (out= preallocated)"
LCE_PRODUCTS = "three products alone (h @ W.T, G @ W, G.T @ h)"
LCE_TORCH_LINEAR = "torch F.linear + F.cross_entropy forward+backward"
LCE_TORCH_DEFAULT = "torch F.linear_cross_entropy forward+backward"
LCE_TORCH_OPTIONS = ("torch F.linear_cross_entropy(options=LinearCrossEntropyOptions()) "
                     "forward+backward")
#: taller blocks than the default's 8 MiB of logits: the trade of memory for speed
LCE_TALL_BLOCKS = 256

LINEAR_CROSS_ENTROPY = Family(
    name="linear_cross_entropy",
    title="linear cross-entropy forward+backward (mean, hard targets, no bias)",
    make_inputs=_lce_inputs,
    sizes={"full": LCE_FULL_SIZE, "quick": (256, 512, 32000), "tiny": (16, 8, 50)},
    size_names=("N", "H", "V"),
    cases=(
        Case(LCE_FUSED, _lce_fused()),
        Case(f"fastloss linear_cross_entropy value_and_grad (block_rows={LCE_TALL_BLOCKS})",
             _lce_fused(LCE_TALL_BLOCKS)),
        Case("fastloss.torch.linear_cross_entropy forward+backward", _lce_adapter,
             requires="torch"),
        Case(LCE_PRODUCTS, _lce_products, role="copy"),
        Case("h @ W.T (one product)", _lce_one_product),
        Case(LCE_TORCH_LINEAR, _lce_torch("linear"), requires="torch"),
        Case(LCE_TORCH_DEFAULT, _lce_torch("default"), requires="torch"),
        Case(LCE_TORCH_OPTIONS, _lce_torch("options"), requires="torch"),
    ),
    # calls of 0.1-2 s (torch's chunked variant about 1.6 s even at --quick's 256 rows):
    # --quick takes fewer rounds to stay quick
    repeats={"full": 10, "quick": 3},
)

TARGETS[LINEAR_CROSS_ENTROPY.name] = (
    Target("linear_cross_entropy / three products <= 1.1", LCE_FUSED, LCE_PRODUCTS, 1.1,
           "max", LCE_FULL_SIZE),
    Target("torch chunked / linear_cross_entropy >= 1.5", LCE_TORCH_OPTIONS, LCE_FUSED, 1.5,
           "min", LCE_FULL_SIZE),
    Target("torch F.linear + F.cross_entropy / linear_cross_entropy >= 1", LCE_TORCH_LINEAR,
           LCE_FUSED, 1.0, "min", LCE_FULL_SIZE),
)


# ----------------------------------------------------------------------------------------
# The pieces of contrastive_pairwise: the sweeps behind its two tuned constants
# ----------------------------------------------------------------------------------------

# The strip heights timed for the Gram product (GRAM_STRIP_ROWS), and the densities of
# the coefficient matrix for the backward product (SPARSE_PRODUCT_DENSITY).
GRAM_STRIPS = (256, 512, 1024, 2048, None)
SPARSE_DENSITIES = ((1, 64), (1, 32), (1, 16), (1, 8), (1, 4))


def _gram_by_strip_height(strip_rows):
    """The float64 Gram product of the centred rows, strip by strip on and right of the
    diagonal, with ``strip_rows`` rows per strip (None: one product)."""
    def setup(inputs, threads):
        from fastloss import _all_pairs

        pairs = _all_pairs._AllPairs(inputs["x"], None, "euclidean", threads, False)
        rows = strip_rows or max(1, inputs["x"].shape[0])

        def call():
            saved = _all_pairs.GRAM_STRIP_ROWS
            _all_pairs.GRAM_STRIP_ROWS = rows
            try:
                return pairs.gram()
            finally:
                _all_pairs.GRAM_STRIP_ROWS = saved

        default = strip_rows == _all_pairs.GRAM_STRIP_ROWS
        return Timed(call, note="GRAM_STRIP_ROWS, the default" if default else "")

    return setup


def _coefficients(inputs, density):
    """An N x N float32 coefficient matrix with this fraction of nonzeros, and its mask of
    nonzeros (bits, 64 to a word), made once per input set."""
    key = ("coefficients", density)
    if key not in inputs:
        n_rows = inputs["x"].shape[0]
        rng = np.random.default_rng(1)
        coefficients = rng.standard_normal((n_rows, n_rows), dtype=np.float32)
        coefficients[rng.random((n_rows, n_rows), dtype=np.float32) >= density] = 0
        bits = np.packbits(coefficients != 0, axis=1, bitorder="little")
        words = -(-n_rows // 64)
        bits = np.pad(bits, ((0, 0), (0, words * 8 - bits.shape[1])))
        inputs[key] = coefficients, np.ascontiguousarray(bits).view(np.uint64)
    return inputs[key]


def _dense_product(inputs, threads):
    coefficients, _ = _coefficients(inputs, 1.0)
    x = inputs["x"]
    return Timed(lambda: coefficients @ x, note="BLAS, whatever the density")


def _sparse_product(fraction):
    def setup(inputs, threads):
        from fastloss import _all_pairs, _kernels

        density = fraction[0] / fraction[1]
        coefficients, mask = _coefficients(inputs, density)
        rows = inputs["x"]
        product = np.zeros_like(rows)
        chosen = density <= _all_pairs.SPARSE_PRODUCT_DENSITY
        return Timed(lambda: _kernels.dist_sparse_product(mask, coefficients, rows, product,
                                                          threads),
                     note="what contrastive_pairwise takes at this density" if chosen else "")

    return setup


CONTRASTIVE_PIECES = Family(
    name="contrastive_pieces",
    title="the pieces of contrastive_pairwise: the Gram product by strip height "
          "(GRAM_STRIP_ROWS), the backward product W @ x by density (SPARSE_PRODUCT_DENSITY)",
    make_inputs=_cp_inputs,
    sizes={"full": CP_FULL_SIZE, "quick": (1024, 768), "tiny": (64, 16)},
    size_names=("N", "D"),
    cases=(
        *(Case(f"Gram product (float64), strips of {rows} rows" if rows else
               "Gram product (float64), one product", _gram_by_strip_height(rows))
          for rows in GRAM_STRIPS),
        Case("W @ x (BLAS, dense W)", _dense_product),
        *(Case(f"sparse W @ x, density {low}/{high}", _sparse_product((low, high)))
          for low, high in SPARSE_DENSITIES),
        Case("x @ x.T (float32 matmul)", _cp_matmul, role="copy"),
    ),
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
    and at most ``max_rounds``. ``ratio`` names the (numerator, denominator) rows whose
    ratio each line shows, and ``labels`` their short names (the denominator's first);
    the targets (``TARGETS``, ``size=None``: on that ratio) hold per cell. ``note`` is
    printed under the table.
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
    ratio: tuple
    labels: tuple
    max_rounds: int = 1000
    note: str = ""


def grid_cells(grid, mode, threads=None, size=None):
    """The cells of ``grid`` in ``mode`` ("full", "quick" or "tiny"): the runnable ones
    as (size, dtype, threads), and those over ``max_elements`` as (size, dtype, threads,
    elements). ``threads``: one count (default: 1 and this process's default);
    ``size``: one cell's size instead of the mode's axes."""
    import itertools

    axes = tuple((value,) for value in size) if size is not None else grid.sizes[mode]
    counts = [threads] if threads is not None else sorted({1, fastloss.get_num_threads()})
    cells, too_large = [], []
    for dtype in grid.dtypes[mode]:
        for count in counts:
            for cell_size in itertools.product(*axes):
                elements = int(np.prod(cell_size))
                if elements > grid.max_elements[mode]:
                    too_large.append((cell_size, dtype, count, elements))
                else:
                    cells.append((cell_size, dtype, count))
    return cells, too_large


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
           "quick": ((1, 32, 256, 4096), (2, 10, 100, 1000, 50257)),
           "tiny": ((1, 32), (2, 10))},
    size_names=("N", "C"),
    cases=(
        Case(_ADAPTER, _ce_adapter_forward_backward, requires="torch"),
        Case("torch F.cross_entropy forward+backward", _ce_torch_forward_backward,
             requires="torch"),
    ),
    dtypes={"full": ("float32", "float64"), "quick": ("float32",), "tiny": ("float32",)},
    # --quick leaves out the cells above 2**24 elements (N=4096, C=50257: a second each)
    max_elements={"full": GRID_MAX_ELEMENTS, "quick": 1 << 24, "tiny": 1 << 10},
    repeats={"full": 5, "quick": 3, "tiny": 1},
    budget_s={"full": 0.25, "quick": 0.1, "tiny": 0.0},
    ratio=("torch F.cross_entropy forward+backward", _ADAPTER),
    labels=("adapter", "torch"),
    note="torch.from_numpy inputs; backward into a fresh .grad; torch.set_num_threads as "
         "the cell's threads",
)

TARGETS[CROSS_ENTROPY_BFLOAT16.name] = (
    Target("fused (out=) / copy <= 1.3", CE_FUSED, "np.copyto (logits -> buffer)", 1.3,
           "max", CE_FULL_SIZE),
    Target("forward / read <= 1.5", "fastloss forward", CE_BF16_READ, 1.5, "max",
           CE_FULL_SIZE),
)

TARGETS[CROSS_ENTROPY_SMALL.name] = (
    Target("torch / adapter >= 1 (never slower)", "torch F.cross_entropy forward+backward",
           _ADAPTER, 1.0, "min", None),
)



# ----------------------------------------------------------------------------------------
# Elementwise losses at small sizes: the fixed costs of a call
# ----------------------------------------------------------------------------------------

ELEMENTWISE_SMALL = Grid(
    name="elementwise_small",
    title=f"{EW_THREADS_ENTRY.name} at small sizes: fixed costs of a call against np.copyto",
    make_inputs=_ew_inputs,
    sizes={"full": ((1000, 1 << 15),), "quick": ((1000, 1 << 15),), "tiny": ((1000,),)},
    size_names=("n",),
    cases=(
        Case(_ew_fused_name(EW_THREADS_ENTRY), _ew_fused(EW_THREADS_ENTRY)),
        Case("np.copyto (pred -> buffer)", _ew_copy, role="copy"),
    ),
    dtypes={"full": ("float32",), "quick": ("float32",), "tiny": ("float32",)},
    max_elements={"full": 1 << 15, "quick": 1 << 15, "tiny": 1 << 15},
    repeats={"full": 20, "quick": 10, "tiny": 1},
    budget_s={"full": 0.1, "quick": 0.05, "tiny": 0.0},
    ratio=(_ew_fused_name(EW_THREADS_ENTRY), "np.copyto (pred -> buffer)"),
    labels=("copy", EW_THREADS_ENTRY.name),
    note="no target: where fixed costs (argument checks, a parallel region) stand against "
         "the bytes moved",
)

# ----------------------------------------------------------------------------------------
# Objectives over the vocabulary: token log-probabilities, distillation (fastloss/distill.py)
# ----------------------------------------------------------------------------------------

def _distill_inputs(size, dtype):
    """Two models' logits (3 standard normals each, the teacher's correlated with the
    student's), the tokens, and two touched N x V buffers."""
    student, target = _ce_logits_and_target(size, dtype)
    rng = np.random.default_rng(1)
    teacher = rng.standard_normal(student.shape, dtype=np.float32).astype(dtype, copy=False)
    teacher *= 3
    teacher += 0.5 * student
    buffer = np.empty_like(student)
    buffer.fill(0)
    second = np.empty_like(student)
    second.fill(0)
    return {"logits": student, "teacher": teacher, "target": target, "buffer": buffer,
            "second": second}


def _tlp_forward(inputs, threads):
    logits, target = inputs["logits"], inputs["target"]
    return Timed(lambda: fastloss.token_log_probs(logits, target, return_entropy=True,
                                                  num_threads=threads))


def _tlp_grad(inputs, threads):
    logits, target, buffer = inputs["logits"], inputs["target"], inputs["buffer"]
    return Timed(lambda: fastloss.token_log_probs_grad(
        logits, target, 1.0, grad_entropy=0.01, out=buffer, num_threads=threads))


def _distill_fused(name, **options):
    def setup(inputs, threads):
        student, teacher, buffer = inputs["logits"], inputs["teacher"], inputs["buffer"]
        function = getattr(fastloss, name + "_value_and_grad")
        return Timed(lambda: function(student, teacher, out=buffer, num_threads=threads,
                                      **options))
    return setup


def _distill_forward(inputs, threads):
    student, teacher = inputs["logits"], inputs["teacher"]
    return Timed(lambda: fastloss.distill_kl(student, teacher, num_threads=threads))


def _three_streams(inputs, threads):
    student, teacher, buffer = inputs["logits"], inputs["teacher"], inputs["buffer"]
    return Timed(lambda: np.add(student, teacher, out=buffer),
                 note="reads both logits, writes one N x V array: the fused calls' traffic")


def _torch_vocab_case(formula, other, note):
    """torch's forward+backward of ``formula(torch, logits, inputs[other])`` (a loss), the
    backward into a fresh .grad of the logits (the student's)."""
    @_with_torch
    def setup(torch, inputs, threads):
        logits, clear = _leaves(torch, inputs, "logits")
        tensor = torch.from_numpy(inputs[other])
        return Timed(lambda: formula(torch, logits, tensor).backward(), prepare=clear,
                     note=note)
    return setup


def _tlp_torch_formula(torch, logits, target):
    log_p = torch.log_softmax(logits, dim=-1)
    log_prob = log_p.gather(-1, target[:, None]).squeeze(-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    return log_prob.sum() + 0.01 * entropy.sum()


def _kl_torch_formula(torch, student, teacher):
    F = torch.nn.functional
    return F.kl_div(F.log_softmax(student, -1), F.log_softmax(teacher, -1),
                    reduction="batchmean", log_target=True)


def _jsd_torch_formula(torch, student, teacher, beta=0.5):
    F = torch.nn.functional
    log_q, log_p = F.log_softmax(student, -1), F.log_softmax(teacher, -1)
    log_m = torch.logsumexp(torch.stack([log_q + np.log(1 - beta), log_p + np.log(beta)]),
                            dim=0)
    return (beta * F.kl_div(log_m, log_p, reduction="batchmean", log_target=True)
            + (1 - beta) * F.kl_div(log_m, log_q, reduction="batchmean", log_target=True))


_tlp_torch = _torch_vocab_case(_tlp_torch_formula, "target",
                               "log_softmax, gather, -(p log p).sum(-1), backward")
_kl_torch = _torch_vocab_case(_kl_torch_formula, "teacher",
                              "F.kl_div of the log_softmax of both, backward to the student")
_jsd_torch = _torch_vocab_case(_jsd_torch_formula, "teacher",
                               "TRL's generalized_jsd_loss written out, backward to the student")


DISTILL_TLP = "fastloss token_log_probs (with entropy)"
DISTILL_FORWARD_KL = "fastloss distill_kl value_and_grad (forward KL, out= preallocated)"
DISTILL_REVERSE_KL = "fastloss distill_kl value_and_grad (reverse KL, out= preallocated)"
DISTILL_JSD = "fastloss jsd value_and_grad (beta=0.5, out= preallocated)"
DISTILL_THREE_STREAMS = "np.add(student, teacher, out=buffer)"

DISTILL = Family(
    name="distill",
    title="token log-probs and distillation over the vocabulary (batchmean, T=1)",
    make_inputs=_distill_inputs,
    # --quick: 256 rows, so that torch's written-out JSD (about 3 s a call at 1024 rows)
    # does not dominate the quick run
    sizes={"full": CE_FULL_SIZE, "quick": (256, 50257), "tiny": (16, 300)},
    size_names=("N", "V"),
    cases=(
        Case(DISTILL_TLP, _tlp_forward, read_only=True),
        Case("fastloss token_log_probs_grad (out= preallocated)", _tlp_grad),
        Case(DISTILL_FORWARD_KL, _distill_fused("distill_kl")),
        Case(DISTILL_REVERSE_KL, _distill_fused("distill_kl", direction="reverse")),
        Case(DISTILL_JSD, _distill_fused("jsd")),
        Case("fastloss distill_kl forward", _distill_forward, read_only=True),
        Case(DISTILL_THREE_STREAMS, _three_streams),
        Case("np.copyto (logits -> buffer)", _copy, role="copy"),
        Case("logits.max()", _read, role="read", read_only=True),
        Case("torch log_softmax + gather + entropy forward+backward", _tlp_torch,
             requires="torch"),
        Case("torch F.kl_div(log_softmax) forward+backward", _kl_torch, requires="torch"),
        Case("torch JSD (beta=0.5, written out) forward+backward", _jsd_torch,
             requires="torch"),
    ),
)

TARGETS["distill"] = (
    Target("token_log_probs with entropy / max <= 1.3", DISTILL_TLP, "logits.max()", 1.3,
           "max", CE_FULL_SIZE),
    *(Target(f"{label} / three streams <= 1.5", row, DISTILL_THREE_STREAMS, 1.5, "max",
             CE_FULL_SIZE)
      for label, row in (("forward KL", DISTILL_FORWARD_KL), ("reverse KL", DISTILL_REVERSE_KL),
                         ("JSD", DISTILL_JSD))),
)

FAMILIES = {family.name: family for family in (
    CROSS_ENTROPY, CROSS_ENTROPY_FEW_CLASSES, CROSS_ENTROPY_BLOCKS, CROSS_ENTROPY_SMALL, ELEMENTWISE,
    ELEMENTWISE_SMALL, CONTRASTIVE, CONTRASTIVE_PIECES, DISTILL, LINEAR_CROSS_ENTROPY)}
if ml_dtypes is not None:
    FAMILIES[CROSS_ENTROPY_BFLOAT16.name] = CROSS_ENTROPY_BFLOAT16
    FAMILIES[ELEMENTWISE_BFLOAT16.name] = ELEMENTWISE_BFLOAT16


# ----------------------------------------------------------------------------------------
# Token log-probs and entropy of a linear layer's logits (linear_token_log_probs), beside
# the linear cross-entropy: the same inputs, products and sizes
# ----------------------------------------------------------------------------------------

def _ltlp_fused(inputs, threads):
    hidden, classifier = inputs["hidden"], inputs["classifier"]
    out = (_touched(hidden.shape, hidden.dtype), _touched(classifier.shape, hidden.dtype))
    return Timed(lambda: fastloss.linear_token_log_probs_value_and_grad(
        hidden, classifier, inputs["target"], 1.0, grad_entropy=0.01, return_entropy=True,
        out=out, num_threads=threads))


@_with_torch
def _ltlp_torch(torch, inputs, threads):
    F = torch.nn.functional
    hidden, classifier, target, clear = _torch_linear_inputs(torch, inputs)

    def call():
        log_p = torch.log_softmax(F.linear(hidden, classifier), dim=-1)
        log_prob = log_p.gather(-1, target[:, None]).squeeze(-1)
        entropy = -(log_p.exp() * log_p).sum(-1)
        (log_prob.sum() + 0.01 * entropy.sum()).backward()

    return Timed(call, prepare=clear, note="F.linear, log_softmax, gather, entropy, backward")


LTLP_FUSED = ("fastloss linear_token_log_probs value_and_grad (with entropy, out= "
              "preallocated)")

LINEAR_CROSS_ENTROPY = dataclasses.replace(LINEAR_CROSS_ENTROPY, cases=(
    *LINEAR_CROSS_ENTROPY.cases,
    Case(LTLP_FUSED, _ltlp_fused),
    Case("torch F.linear + log_softmax + gather + entropy forward+backward", _ltlp_torch,
         requires="torch"),
))
FAMILIES[LINEAR_CROSS_ENTROPY.name] = LINEAR_CROSS_ENTROPY


# ----------------------------------------------------------------------------------------
# The contrastive family on half-precision embeddings (where ml_dtypes is installed):
# each loss on bfloat16, float16 and float32 copies of the same values, so that the table
# gives each half type's time against float32's
# ----------------------------------------------------------------------------------------

CP_HALF_DTYPES = ("bfloat16", "float16", "float32")
# contrastive's margin: about the distance of a pair (x, key), so that both hinges work
CP_HALF_MARGIN = 14.0


def _cp_half_inputs(size, dtype):
    """_cp_inputs in bfloat16 (x, key, other, and buffers of their dtype), the same values
    in float16 and float32 under ``<name>_<dtype>``, and a label per row pair."""
    inputs = _cp_inputs(size, dtype)
    for name in CP_HALF_DTYPES:
        kind = np.dtype(name if name != "bfloat16" else dtype)
        for key in ("x", "key", "other"):
            inputs[f"{key}_{name}"] = inputs[key].astype(kind)
        buffers = [np.empty(inputs["x"].shape, kind) for _ in range(3)]
        for buffer in buffers:
            buffer.fill(0)  # every page touched before timing
        inputs[f"buffers_{name}"] = buffers
    inputs["pair_label"] = np.random.default_rng(2).random(size[0]) < 0.5
    return inputs


def _cp_half_case(loss, name):
    """fastloss's value_and_grad of ``loss`` on the ``name`` copies (out= preallocated)."""
    def setup(inputs, threads):
        x, key, other = (inputs[f"{field}_{name}"] for field in ("x", "key", "other"))
        buffers = inputs[f"buffers_{name}"]
        if loss == "contrastive":
            return Timed(lambda: fastloss.contrastive_value_and_grad(
                x, key, inputs["pair_label"], margin=CP_HALF_MARGIN, out=tuple(buffers[:2]),
                num_threads=threads))
        if loss == "triplet_margin":
            return Timed(lambda: fastloss.triplet_margin_value_and_grad(
                x, key, other, swap=True, out=tuple(buffers), num_threads=threads))
        if loss == "contrastive_pairwise":
            return Timed(lambda: fastloss.contrastive_pairwise_value_and_grad(
                x, inputs["labels"], out=buffers[0], num_threads=threads))
        return Timed(lambda: fastloss.info_nce_value_and_grad(
            x, key, symmetric=True, out=tuple(buffers[:2]), num_threads=threads))

    return setup


def _cp_half_name(loss, name):
    extra = {"contrastive": f"euclidean, margin {CP_HALF_MARGIN:g}", "triplet_margin": "swap",
             "info_nce": "symmetric"}.get(loss)
    return f"fastloss {loss} value_and_grad ({f'{extra}, ' if extra else ''}{name})"


def _cp_half_copy(inputs, threads):
    x, buffer = inputs["x"], inputs["buffers"][0]
    return Timed(lambda: np.copyto(buffer, x), note="memory-bandwidth limit")


def _cp_half_torch_triplet(adapter):
    """torch's own bfloat16 triplet_margin_loss, or fastloss.torch's, forward+backward on
    bfloat16 tensors over the same memory."""
    @_with_torch
    def setup(torch, inputs, threads):
        *tensors, clear = _leaves(torch, inputs, "x", "key", "other")
        if adapter:
            import fastloss.torch as fastloss_torch

            def loss():
                return fastloss_torch.triplet_margin_loss(*tensors, swap=True,
                                                          num_threads=threads)
        else:
            def loss():
                return torch.nn.functional.triplet_margin_loss(*tensors, swap=True)

        return Timed(lambda: loss().backward(), prepare=clear,
                     note="torch.bfloat16; backward into a fresh .grad")

    return setup


CP_HALF_LOSSES = ("contrastive", "triplet_margin", "contrastive_pairwise", "info_nce")

CONTRASTIVE_BFLOAT16 = Family(
    name="contrastive_bfloat16",
    title="contrastive family on bfloat16 embeddings, beside float16 and float32 copies "
          "(contrastive_pairwise euclidean, 41 rows per class)",
    make_inputs=_cp_half_inputs,
    sizes={"full": CP_FULL_SIZE, "quick": (1024, 768), "tiny": (64, 16)},
    size_names=("N", "D"),
    dtype="bfloat16",
    cases=(
        *(Case(_cp_half_name(loss, name), _cp_half_case(loss, name))
          for loss in CP_HALF_LOSSES for name in CP_HALF_DTYPES),
        Case("np.copyto (x -> buffer)", _cp_half_copy, role="copy"),
        Case("x.view(uint16).max()", _bits_max("x"), role="read", read_only=True),
        Case("torch triplet_margin_loss (swap) forward+backward (bfloat16)",
             _cp_half_torch_triplet(False), requires="torch"),
        Case("fastloss.torch.triplet_margin_loss (swap) forward+backward (bfloat16)",
             _cp_half_torch_triplet(True), requires="torch"),
    ),
)
if ml_dtypes is not None:
    FAMILIES[CONTRASTIVE_BFLOAT16.name] = CONTRASTIVE_BFLOAT16
