"""Regression and binary loss benchmarks (pytest-benchmark), float32, all threads.

    python -m pytest benchmarks/bench_elementwise.py --benchmark-only

The large group is 2**22 elements by default (2**25 with FASTLOSS_BENCH_FULL=1, the size of
the targets of BENCHMARKS.md: each value_and_grad within 2x of np.copyto of pred, and
at least 5x faster than torch's forward+backward). It times every loss's fused
value_and_grad into a preallocated buffer, two forward passes, torch when it is installed,
and the memory-bound baselines: np.copyto of pred (one read, one write) and pred.max()
(one read). conftest.py prints every median as a ratio to those baselines.

The tile size, a compile-time constant (FASTLOSS_EW_TILE in csrc/elementwise_internal.h),
has its own sweep: benchmarks/sweep_elementwise_tile.py.
"""
import os

import numpy as np
import pytest

import fastloss

FULL = os.environ.get("FASTLOSS_BENCH_FULL", "") not in ("", "0")
N_ELEMENTS = 1 << (25 if FULL else 22)
LARGE = f"elementwise n={N_ELEMENTS} float32"
ROUNDS = 10 if FULL else 5
THREADS = fastloss.get_num_threads()

LOSSES = ("mse", "l1", "huber", "smooth_l1", "bce_with_logits")
TORCH_NAMES = {"mse": "mse_loss", "l1": "l1_loss", "huber": "huber_loss",
               "smooth_l1": "smooth_l1_loss",
               "bce_with_logits": "binary_cross_entropy_with_logits"}


def _torch():
    """torch with the same thread count as fastloss, or skip (only when torch is absent)."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(THREADS)
    return torch


@pytest.fixture(scope="module")
def large():
    rng = np.random.default_rng(0)
    pred = rng.standard_normal(N_ELEMENTS, dtype=np.float32) * 2
    target = rng.standard_normal(N_ELEMENTS, dtype=np.float32)
    labels = (rng.random(N_ELEMENTS, dtype=np.float32) < 0.5).astype(np.float32)
    buffer = np.zeros_like(pred)  # zeros: every page touched before timing
    return {"pred": pred, "target": target, "labels": labels, "buffer": buffer}


def _target(data, name):
    return data["labels"] if name == "bce_with_logits" else data["target"]


def run(benchmark, function, setup=None):
    return benchmark.pedantic(function, setup=setup, rounds=ROUNDS, warmup_rounds=1,
                              iterations=1)


@pytest.mark.benchmark(group=LARGE)
@pytest.mark.parametrize("name", LOSSES)
def test_value_and_grad_out(benchmark, large, name):
    function = getattr(fastloss, f"{name}_value_and_grad")
    pred, target, buffer = large["pred"], _target(large, name), large["buffer"]
    run(benchmark, lambda: function(pred, target, out=buffer))


@pytest.mark.benchmark(group=LARGE)
@pytest.mark.parametrize("name", ["huber", "bce_with_logits"])
def test_forward(benchmark, large, name):
    function = getattr(fastloss, name)
    pred, target = large["pred"], _target(large, name)
    run(benchmark, lambda: function(pred, target))


@pytest.mark.benchmark(group=LARGE)
def test_copy(benchmark, large):
    benchmark.extra_info["baseline"] = "copy"
    pred, buffer = large["pred"], large["buffer"]
    run(benchmark, lambda: np.copyto(buffer, pred))


@pytest.mark.benchmark(group=LARGE)
def test_max(benchmark, large):
    benchmark.extra_info["baseline"] = "read"
    pred = large["pred"]
    run(benchmark, lambda: pred.max())


@pytest.mark.benchmark(group=LARGE)
@pytest.mark.parametrize("name", LOSSES)
def test_torch_forward_backward(benchmark, large, name):
    torch = _torch()
    function = getattr(torch.nn.functional, TORCH_NAMES[name])
    pred = torch.from_numpy(large["pred"]).requires_grad_(True)
    target = torch.from_numpy(_target(large, name))

    def clear():
        pred.grad = None  # backward into a fresh gradient, as in a training step

    run(benchmark, lambda: function(pred, target).backward(), setup=clear)


# --- small inputs: fixed costs ------------------------------------------------------------

@pytest.mark.parametrize("n", [1000, 1 << 15], ids=["n=1000", "n=32768"])
def test_small_huber_value_and_grad(benchmark, n):
    rng = np.random.default_rng(0)
    pred = rng.standard_normal(n, dtype=np.float32)
    target = rng.standard_normal(n, dtype=np.float32)
    buffer = np.empty_like(pred)
    benchmark.group = f"elementwise small n={n} float32"
    benchmark(fastloss.huber_value_and_grad, pred, target, out=buffer)


@pytest.mark.parametrize("n", [1000, 1 << 15], ids=["n=1000", "n=32768"])
def test_small_copy(benchmark, n):
    pred = np.ones(n, np.float32)
    buffer = np.empty_like(pred)
    benchmark.group = f"elementwise small n={n} float32"
    benchmark.extra_info["baseline"] = "copy"
    benchmark(np.copyto, buffer, pred)
