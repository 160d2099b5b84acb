"""The pytest-benchmark suite: every case of every family of ``fastloss bench``.

    python -m pytest benchmarks/ --benchmark-only

One set of cases: this file lists none of its own. It walks ``fastloss.bench.FAMILIES``
(fastloss/bench/_cases.py, whose elementwise rows come from the registry's entries
marked ``bench``) and times each case of each family, and each case of each cell of a
grid, under pytest-benchmark; a loss added to the registry appears here and in
``fastloss bench`` alike. Test ids are ``family/case`` (``family/cell/case`` for a grid),
so ``-k elementwise`` picks a family.

Sizes: the ``--quick`` sizes of ``fastloss bench`` by default; FASTLOSS_BENCH_FULL=1 for
the full ones (those at which BENCHMARKS.md's targets are judged); FASTLOSS_BENCH_TINY=1
for tiny ones and one round each, a check that every case runs (seconds).
FASTLOSS_BENCH_NO_COMPILE=1 leaves out the torch.compile rows, as ``--no-compile``.
Torch rows are skipped when torch is not importable, as rows that cannot run here are.

Each benchmark's group is its family and size (a grid's: its cell); the family's
baselines (``role`` "copy" and "read"; a grid's ratio's denominator) carry
``extra_info["baseline"]``, and a case timed on a slice its ``extra_info["scale"]``, so
that conftest.py prints each median as a ratio to them, as the table of ``fastloss
bench`` does. Every case runs with fastloss's default thread count (torch set to it too),
except the rows that name ``num_threads=1``.
"""
import gc
import os
import time

import numpy as np
import pytest

import fastloss
from fastloss import bench

TINY = os.environ.get("FASTLOSS_BENCH_TINY", "") not in ("", "0")
FULL = os.environ.get("FASTLOSS_BENCH_FULL", "") not in ("", "0")
NO_COMPILE = os.environ.get("FASTLOSS_BENCH_NO_COMPILE", "") not in ("", "0")
MODE = "tiny" if TINY else "full" if FULL else "quick"
THREADS = fastloss.get_num_threads()


def _rounds(family):
    """Timed rounds of a family's case, as ``fastloss bench`` takes them."""
    if MODE == "tiny":
        return 1
    repeats = family.repeats or {"full": 10, "quick": 5}
    return repeats[MODE]


def _params():
    """One pytest parameter per case of each family and per case of each grid cell."""
    for family in bench.FAMILIES.values():
        if isinstance(family, bench.Grid):
            cells, _ = bench.grid_cells(family, MODE)
            for size, dtype, threads in cells:
                cell = " ".join(f"{key}={value}" for key, value in
                                zip(family.size_names, size)) + f" {dtype} threads={threads}"
                for case in family.cases:
                    yield pytest.param(family, (size, dtype, threads), case,
                                       id=f"{family.name}/{cell}/{case.name}")
        else:
            for case in family.cases:
                yield pytest.param(family, None, case, id=f"{family.name}/{case.name}")


class _Inputs:
    """The inputs of the last family (or grid cell) asked for: the tests run family by
    family, so one set is alive at a time (the full cross-entropy size holds 2.4 GB)."""

    key = value = None

    @classmethod
    def get(cls, family, size, dtype):
        key = (family.name, tuple(size), dtype)
        if cls.key != key:
            cls.key = cls.value = None
            gc.collect()
            cls.value = family.make_inputs(tuple(size), np.dtype(dtype))
            cls.key = key
        return cls.value


@pytest.fixture(scope="module", autouse=True)
def _restore():
    """After the module: torch's own thread count back, the last inputs released."""
    torch = bench._torch()
    saved = torch.get_num_threads() if torch is not None else None
    yield
    if torch is not None:
        torch.set_num_threads(saved)
    _Inputs.key = _Inputs.value = None


def _torch_threads(threads):
    """torch with the case's thread count, as in ``fastloss bench`` (when installed)."""
    torch = bench._torch()
    if torch is not None:
        torch.set_num_threads(threads)


def _timed(case, inputs, threads):
    """The case's Timed, or skip (torch missing, or it cannot run here)."""
    if case.compiles and NO_COMPILE:
        pytest.skip("left out (FASTLOSS_BENCH_NO_COMPILE)")
    try:
        timed = case.setup(inputs, threads)
    except bench.Unavailable as reason:
        pytest.skip(f"cannot run here: {reason}")
    if timed is None:
        pytest.skip(f"{case.requires} not importable")
    return timed


def _grid_rounds(grid, timed):
    """As many rounds as fit in the grid's budget per case, within its bounds."""
    if MODE == "tiny":
        return 1
    if timed.prepare is not None:
        timed.prepare()
    start = time.perf_counter()
    timed.call()
    seconds = time.perf_counter() - start
    return int(min(grid.max_rounds, max(grid.repeats[MODE],
                                        grid.budget_s[MODE] / max(seconds, 1e-9))))


@pytest.mark.parametrize("family, cell, case", list(_params()))
def test_case(benchmark, family, cell, case):
    if isinstance(family, bench.Grid):
        size, dtype, threads = cell
        inputs = _Inputs.get(family, size, dtype)
        benchmark.group = f"{family.name} " + " ".join(
            f"{key}={value}" for key, value in zip(family.size_names, size)) + \
            f" {dtype} threads={threads}"
        baseline = family.labels[0] if case.name == family.ratio[1] else None
    else:
        size, threads = family.sizes[MODE], THREADS
        inputs = _Inputs.get(family, size, family.dtype)
        benchmark.group = f"{family.name} " + " ".join(
            f"{key}={value}" for key, value in zip(family.size_names, size)) + \
            f" {family.dtype}"
        baseline = case.role or None
    _torch_threads(threads)
    timed = _timed(case, inputs, threads)
    if baseline:
        benchmark.extra_info["baseline"] = baseline
    benchmark.extra_info["scale"] = timed.scale  # conftest scales the ratios by it
    benchmark.extra_info["case"] = case.name
    rounds = _grid_rounds(family, timed) if isinstance(family, bench.Grid) else _rounds(family)
    benchmark.pedantic(timed.call, setup=timed.prepare, rounds=rounds,
                       warmup_rounds=0 if MODE == "tiny" else 1, iterations=1)
