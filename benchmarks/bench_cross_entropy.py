"""Cross-entropy benchmarks (pytest-benchmark), float32, all threads.

    python -m pytest benchmarks/ --benchmark-only

The cases are those of ``fastloss bench`` (fastloss/bench/_cases.py), one set for both:

- the large group, ``bench.CROSS_ENTROPY``: N=1024, C=50257 by default (N=4096 with
  FASTLOSS_BENCH_FULL=1, the size at which BENCHMARKS.md's targets are judged): the fused
  value_and_grad (into a preallocated buffer and in place), the forward, the gradient
  from a given lse, the NumPy reference (on a slice of the rows, scaled), the PyTorch
  adapter (by default and with inplace_backward=True), torch's F.cross_entropy eager and
  under torch.compile when torch is installed, and the two memory-bound baselines:
  np.copyto of the logits (one read, one write) and logits.max() (one read);
- few classes, ``bench.CROSS_ENTROPY_FEW_CLASSES``: N=65536, C=10;
- small shapes, ``bench.CROSS_ENTROPY_SMALL``: the adapter against torch per cell of the
  grid (the --quick cells by default, every cell with FASTLOSS_BENCH_FULL=1).

conftest.py prints every median as a ratio to its group's baselines (copy and max, or
torch's time in a grid cell).
"""
import itertools
import os

import numpy as np
import pytest

import fastloss
from fastloss import bench

FULL = os.environ.get("FASTLOSS_BENCH_FULL", "") not in ("", "0")
MODE = "full" if FULL else "quick"
ROUNDS = 10 if FULL else 5
THREADS = fastloss.get_num_threads()


@pytest.fixture(scope="module", autouse=True)
def torch_threads():
    """torch with fastloss's thread count, as in fastloss bench."""
    torch = bench._torch()
    if torch is None:
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(saved)


def _timed(case, inputs, threads):
    """The case's Timed, or skip (torch missing, or it cannot run here)."""
    try:
        timed = case.setup(inputs, threads)
    except bench.Unavailable as reason:
        pytest.skip(f"cannot run here: {reason}")
    if timed is None:
        pytest.skip(f"{case.requires} not importable")
    return timed


def _run(benchmark, timed, case, baseline_role=None, rounds=ROUNDS):
    if case.role and case.role == (baseline_role or case.role):
        benchmark.extra_info["baseline"] = case.role
    benchmark.extra_info["scale"] = timed.scale  # conftest scales the ratios by it
    benchmark.pedantic(timed.call, setup=timed.prepare, rounds=rounds, warmup_rounds=1,
                       iterations=1)


def _family_inputs(family):
    size = family.sizes[MODE]
    return size, family.make_inputs(size, np.dtype(family.dtype))


@pytest.fixture(scope="module")
def large():
    return _family_inputs(bench.CROSS_ENTROPY)


@pytest.fixture(scope="module")
def few_classes():
    return _family_inputs(bench.CROSS_ENTROPY_FEW_CLASSES)


def _ids(family):
    return [case.name for case in family.cases]


@pytest.mark.parametrize("case", bench.CROSS_ENTROPY.cases, ids=_ids(bench.CROSS_ENTROPY))
def test_cross_entropy(benchmark, large, case):
    (n_rows, n_classes), inputs = large
    benchmark.group = f"cross_entropy N={n_rows} C={n_classes} float32"
    _run(benchmark, _timed(case, inputs, THREADS), case)


@pytest.mark.parametrize("case", bench.CROSS_ENTROPY_FEW_CLASSES.cases,
                         ids=_ids(bench.CROSS_ENTROPY_FEW_CLASSES))
def test_cross_entropy_few_classes(benchmark, few_classes, case):
    (n_rows, n_classes), inputs = few_classes
    benchmark.group = f"cross_entropy few classes N={n_rows} C={n_classes} float32"
    _run(benchmark, _timed(case, inputs, THREADS), case, rounds=ROUNDS * 10)


def _grid_cells():
    grid = bench.CROSS_ENTROPY_SMALL
    for dtype in grid.dtypes[MODE]:
        for size in itertools.product(*grid.sizes[MODE]):
            if int(np.prod(size)) <= grid.max_elements[MODE]:
                yield pytest.param(size, dtype, id=f"N={size[0]},C={size[1]},{dtype}")


@pytest.mark.parametrize("size, dtype", list(_grid_cells()))
@pytest.mark.parametrize("case", bench.CROSS_ENTROPY_SMALL.cases,
                         ids=["adapter", "torch"])
def test_cross_entropy_small(benchmark, size, dtype, case):
    grid = bench.CROSS_ENTROPY_SMALL
    inputs = grid.make_inputs(size, np.dtype(dtype))
    benchmark.group = f"cross_entropy small N={size[0]} C={size[1]} {dtype}"
    timed = _timed(case, inputs, THREADS)
    if case.name.startswith("torch"):
        benchmark.extra_info["baseline"] = "torch"  # the adapter's time as a ratio to it
    benchmark.pedantic(timed.call, setup=timed.prepare, rounds=max(ROUNDS, 50),
                       warmup_rounds=2, iterations=1)
