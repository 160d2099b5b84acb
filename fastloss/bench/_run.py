"""Timing: the rounds of a family's cases, taken in turns, and the machine's facts."""
import gc
import os
import platform
import statistics
import sys
import time

import numpy as np

import fastloss
from fastloss._config import config
from fastloss.bench._cases import FAMILIES, Grid, TARGETS, _torch, grid_cells
from fastloss.bench._types import Unavailable


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
    it lasted.  Each round takes the cases in its own order (a permutation seeded by
    the round's number: the same on every run), so that no case always follows the
    same one: the call after a heavy torch row (gigabytes of fresh pages) is slower
    whatever it is (BENCHMARKS.md, "The call after a torch row"), and the medians should
    not charge that to the case that happens to come next.  (A rotation would not do:
    it keeps each case's predecessor within the round.)
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
            order = np.random.default_rng(round_index).permutation(len(timed_cases))
            for index in order:
                (name, timed), case_times = timed_cases[index], times[index]
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


def _ratio(target, by_name):
    """``target``'s ratio of medians, or None when a row of it did not run."""
    if target.numerator in by_name and target.denominator in by_name:
        return by_name[target.numerator]["median_ms"] / by_name[target.denominator]["median_ms"]
    return None


def _judge(family_name, size, by_name, skipped_names, threads=None):
    """The targets of a family, for a run at ``size`` on ``threads`` (default: this
    process's): judged where set, else shown, with the reason it is not judged."""
    threads = fastloss.get_num_threads() if threads is None else threads
    targets = []
    for target in TARGETS.get(family_name, ()):
        entry = {"target": target.text, "ratio": None, "met": None,
                 "judged": target.size is None or tuple(size) == tuple(target.size),
                 "judged_at": None if target.size is None else list(target.size)}
        if entry["judged"] and threads < target.min_threads:
            entry["judged"] = False
            entry["not_judged"] = (f"needs >= {target.min_threads} threads, ran with "
                                   f"{threads}")
        ratio = _ratio(target, by_name)
        if ratio is not None:
            entry["ratio"] = ratio
            if entry["judged"]:
                entry["met"] = target.met(ratio)
                exempting = _ratio(target.unless, by_name) if target.unless else None
                if not entry["met"] and exempting is not None and target.unless.met(exempting):
                    entry["met"] = True
                    entry["exempt"] = f"{target.unless.text}: {exempting:.2f}"
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
                     {row["name"]: row["skipped"] for row in skipped}, threads)

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
    cells, too_large = grid_cells(grid, mode, threads, size)

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
                                              min_rounds, budget))
            del inputs, runnable
            gc.collect()
            bar.update()
    finally:
        bar.close()

    judged = [row for row in results if row["ratio"] is not None]
    targets = []
    for target in TARGETS.get(grid.name, ()):
        worst = (min if target.sense == "min" else max)
        entry = {
            "target": f"{target.text}, every cell",
            "ratio": worst(row["ratio"] for row in judged) if judged else None,
            "met": all(target.met(row["ratio"]) for row in judged) if judged else None,
            "judged": bool(judged),
            "judged_at": None,
            "cells": len(judged),
            "cells_met": sum(target.met(row["ratio"]) for row in judged),
        }
        if not judged:
            entry["not_measured"] = "no cell ran both cases"
        targets.append(entry)
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


def _time_cell(grid, name, cell_size, dtype, threads, runnable, min_rounds, budget):
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
    numerator, denominator = grid.ratio
    targets = TARGETS.get(grid.name, ())
    if numerator in cases and denominator in cases:
        row["ratio"] = cases[numerator]["median_ms"] / cases[denominator]["median_ms"]
        row["met"] = all(target.met(row["ratio"]) for target in targets) if targets else None
    else:
        row["ratio"] = row["met"] = None
    return row
