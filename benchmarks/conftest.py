"""pytest-benchmark plumbing for ``bench_families.py``, the suite that times every case
of every family of ``fastloss bench``.

- Collects ``bench_*.py`` (pytest's default pattern is ``test_*.py``).
- Adds the CPU model, thread count, NumPy / torch versions and fastloss's build facts to
  the machine info that ``--benchmark-json`` writes.
- Prints, after pytest-benchmark's table, each benchmark's median as a ratio to its
  group's baselines (``benchmark.extra_info["baseline"] = "copy"``, ``"read"`` or
  a grid's denominator, e.g. ``"adapter"``), each scaled by ``extra_info["scale"]`` where
  a case sets one, under the case's name (``extra_info["case"]``): ratios, not absolute
  times, are what we compare across machines.
"""
import os

import numpy as np
import pytest

from fastloss.bench import cpu_model


def pytest_collect_file(file_path, parent):
    # Files named on the command line are collected by pytest itself whatever their name.
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_benchmark_update_machine_info(config, machine_info):
    import fastloss
    from fastloss._config import config as fastloss_config

    try:
        import torch
        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    machine_info["cpu_model"] = cpu_model()
    machine_info["cpu_count"] = os.cpu_count()
    machine_info["numpy"] = np.__version__
    machine_info["torch"] = torch_version
    machine_info["fastloss"] = fastloss_config()
    machine_info["fastloss_threads"] = fastloss.get_num_threads()


def pytest_report_header(config):
    import fastloss
    from fastloss._config import config as fastloss_config

    info = fastloss_config()
    return (f"fastloss {info['version']}: simd {info['simd_path']}, openmp {info['openmp']}, "
            f"threads {fastloss.get_num_threads()}; CPU {cpu_model()} "
            f"({os.cpu_count()} cores); numpy {np.__version__}")


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's own tables
def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)  # pytest-benchmark's (not public)
    benchmarks = [bench for bench in getattr(session, "benchmarks", []) or [] if bench]
    if not benchmarks:
        return
    groups = {}
    for bench in benchmarks:
        groups.setdefault(bench.group, []).append(bench)
    terminalreporter.section("ratios of medians to the group's baselines")
    for group, members in groups.items():
        baselines = {bench.extra_info.get("baseline"): _median(bench) for bench in members
                     if bench.extra_info.get("baseline")}
        if not baselines:
            continue
        terminalreporter.write_line(f"{group}:")
        width = max(len(_name(bench)) for bench in members)
        for bench in sorted(members, key=_median):
            ratios = "  ".join(f"{_median(bench) / median:7.2f}x {name}"
                               for name, median in baselines.items())
            terminalreporter.write_line(
                f"  {_name(bench):<{width}} {_median(bench) * 1e3:10.4g} ms  {ratios}")


def _name(bench):
    """The case's own name (the test's id repeats its family and cell)."""
    return bench.extra_info.get("case", bench.name)


def _median(bench):
    """The median, times the case's scale (a case timed on a slice of the rows)."""
    return bench.stats.median * bench.extra_info.get("scale", 1.0)
