"""Cross-entropy benchmarks (pytest-benchmark), float32, all threads.

    python -m pytest benchmarks/ --benchmark-only

The large group is N=1024, C=50257 by default (N=4096 with FASTLOSS_BENCH_FULL=1, the
size of DESIGN.md's performance contract). It times the fused value_and_grad (into a
preallocated buffer and in place), the forward, the gradient from a given lse, torch's
F.cross_entropy when torch is installed, and the two memory-bound baselines the contract
is stated against: np.copyto of the logits (one read, one write) and logits.max() (one
read). conftest.py prints every median as a ratio to those baselines.

The small groups (N=64, C=512: per-call overhead; N=16384, C=16: many short rows) show
the fixed costs the large group hides.
"""
import os

import numpy as np
import pytest

import fastloss

FULL = os.environ.get("FASTLOSS_BENCH_FULL", "") not in ("", "0")
N_ROWS, N_CLASSES = (4096 if FULL else 1024), 50257
LARGE = f"cross_entropy N={N_ROWS} C={N_CLASSES} float32"
ROUNDS = 10 if FULL else 5
THREADS = fastloss.get_num_threads()

SMALL_SHAPES = [pytest.param((64, 512), id="N=64,C=512"),
                pytest.param((16384, 16), id="N=16384,C=16")]


def _torch():
    """torch with the same thread count as fastloss, or skip (only when torch is absent)."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(THREADS)
    return torch


def make_inputs(n_rows, n_classes):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((n_rows, n_classes), dtype=np.float32)
    logits *= 3
    target = rng.integers(0, n_classes, size=n_rows, dtype=np.int64)
    buffer = np.zeros_like(logits)  # zeros: every page touched before timing
    return logits, target, buffer


@pytest.fixture(scope="module")
def large():
    return make_inputs(N_ROWS, N_CLASSES)


def run(benchmark, function, setup=None):
    return benchmark.pedantic(function, setup=setup, rounds=ROUNDS, warmup_rounds=1,
                              iterations=1)


# --- the large group -----------------------------------------------------------------

@pytest.mark.benchmark(group=LARGE)
def test_value_and_grad_out(benchmark, large):
    logits, target, buffer = large
    run(benchmark, lambda: fastloss.cross_entropy_value_and_grad(logits, target, out=buffer))


@pytest.mark.benchmark(group=LARGE)
def test_value_and_grad_in_place(benchmark, large):
    logits, target, _ = large
    work = logits.copy()
    # Each call overwrites `work` with the gradient: restore the logits, untimed.
    run(benchmark, lambda: fastloss.cross_entropy_value_and_grad(work, target, out=work),
        setup=lambda: np.copyto(work, logits))


@pytest.mark.benchmark(group=LARGE)
def test_forward(benchmark, large):
    logits, target, _ = large
    run(benchmark, lambda: fastloss.cross_entropy(logits, target))


@pytest.mark.benchmark(group=LARGE)
def test_grad_from_lse(benchmark, large):
    logits, target, buffer = large
    _, lse = fastloss.cross_entropy(logits, target, return_lse=True)
    run(benchmark, lambda: fastloss.cross_entropy_grad(logits, target, lse=lse, out=buffer))


@pytest.mark.benchmark(group=LARGE)
def test_copy(benchmark, large):
    logits, _, buffer = large
    benchmark.extra_info["baseline"] = "copy"
    run(benchmark, lambda: np.copyto(buffer, logits))


@pytest.mark.benchmark(group=LARGE)
def test_max(benchmark, large):
    logits, _, _ = large
    benchmark.extra_info["baseline"] = "read"
    run(benchmark, lambda: logits.max())


@pytest.mark.benchmark(group=LARGE)
def test_torch_forward_backward(benchmark, large):
    torch = _torch()
    import torch.nn.functional as F

    logits = torch.from_numpy(large[0]).requires_grad_(True)
    target = torch.from_numpy(large[1])

    def clear():
        logits.grad = None  # backward into a fresh gradient, as in a training step

    run(benchmark, lambda: F.cross_entropy(logits, target).backward(), setup=clear)


@pytest.mark.benchmark(group=LARGE)
def test_torch_forward(benchmark, large):
    torch = _torch()
    import torch.nn.functional as F

    logits, target = torch.from_numpy(large[0]), torch.from_numpy(large[1])

    def forward():
        with torch.no_grad():
            return F.cross_entropy(logits, target)

    run(benchmark, forward)


# --- small shapes: fixed costs ----------------------------------------------------------

def _small_group(shape):
    return f"cross_entropy small N={shape[0]} C={shape[1]} float32"


@pytest.mark.parametrize("shape", SMALL_SHAPES)
def test_small_value_and_grad_out(benchmark, shape):
    logits, target, buffer = make_inputs(*shape)
    benchmark.group = _small_group(shape)
    benchmark(fastloss.cross_entropy_value_and_grad, logits, target, out=buffer)


@pytest.mark.parametrize("shape", SMALL_SHAPES)
def test_small_forward(benchmark, shape):
    logits, target, _ = make_inputs(*shape)
    benchmark.group = _small_group(shape)
    benchmark(fastloss.cross_entropy, logits, target)


@pytest.mark.parametrize("shape", SMALL_SHAPES)
def test_small_copy(benchmark, shape):
    logits, _, buffer = make_inputs(*shape)
    benchmark.group = _small_group(shape)
    benchmark.extra_info["baseline"] = "copy"
    benchmark(np.copyto, buffer, logits)


@pytest.mark.parametrize("shape", SMALL_SHAPES)
def test_small_torch_forward_backward(benchmark, shape):
    torch = _torch()
    import torch.nn.functional as F

    logits_np, target_np, _ = make_inputs(*shape)
    logits = torch.from_numpy(logits_np).requires_grad_(True)
    target = torch.from_numpy(target_np)
    benchmark.group = _small_group(shape)

    def step():
        logits.grad = None
        F.cross_entropy(logits, target).backward()

    benchmark(step)
