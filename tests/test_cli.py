"""The command line: ``python -m fastloss info | check | bench``, run as a user runs it
(a subprocess), plus the check table's ability to fail."""

import importlib.util
import io
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import fastloss
from fastloss import check


def run_fastloss(*args, timeout=120, environment=None, command=None):
    """``python -m fastloss ARGS`` (or ``python COMMAND ARGS``) with this fastloss
    importable and the variables in ``environment`` set; the CompletedProcess."""
    env = dict(os.environ)
    env.update(environment or {})
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(fastloss.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(
        [package_parent] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    # cwd too: `-m` puts the working directory first on sys.path, where a source
    # checkout's unbuilt fastloss/ would shadow the installed one
    return subprocess.run([sys.executable, *(command or ["-m", "fastloss"]), *args], env=env,
                          cwd=package_parent, capture_output=True, text=True, timeout=timeout)


def test_info_shows_the_build():
    completed = run_fastloss("info")
    assert completed.returncode == 0, completed.stderr
    assert "simd" in completed.stdout
    assert fastloss.__version__ in completed.stdout
    assert "openmp" in completed.stdout


# the console script pip writes for pyproject's [project.scripts] fastloss = "fastloss.cli:main"
CONSOLE_SCRIPT = """import sys
from fastloss.cli import main
if __name__ == "__main__":
    sys.exit(main())
"""


@pytest.mark.parametrize("form", ("python -m fastloss", "console script"))
@pytest.mark.parametrize("variable, value", [("FASTLOSS_SIMD", "bogus"),
                                             ("FASTLOSS_SIMD", "AVX2"),
                                             ("FASTLOSS_NUM_THREADS", "zero"),
                                             ("FASTLOSS_NUM_THREADS", "0")])
def test_a_bad_environment_variable_is_a_usage_error_not_a_traceback(variable, value, form,
                                                                     tmp_path):
    # FASTLOSS_SIMD=bogus fastloss info ended in a traceback of the package's import
    # (status 1): the command line says what is wrong in one line, as argparse does for
    # its own usage errors (status 2). `import fastloss` itself still raises ValueError
    # (test_threads.py).
    command = None
    if form == "console script":
        script = tmp_path / "fastloss"
        script.write_text(CONSOLE_SCRIPT)
        command = [str(script)]
    for args in (("info",), ("check", "--quiet", "mse")):
        completed = run_fastloss(*args, environment={variable: value}, command=command)
        assert completed.returncode == 2, completed.stderr
        assert "Traceback" not in completed.stderr, completed.stderr
        lines = completed.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"fastloss: error: {variable}: "), lines
        assert repr(value) in lines[0], lines
        assert completed.stdout == ""


def run_python_code(code, **environment):
    """``python -c CODE`` with this fastloss importable and no OpenMP settings of its own
    unless given; the CompletedProcess."""
    env = dict(os.environ)
    for name in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY"):
        env.pop(name, None)
    env.update(environment)
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(fastloss.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(
        [package_parent] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=package_parent,
                          capture_output=True, text=True, timeout=120)


INFO_AND_ENVIRONMENT = """
import os, sys
from fastloss.cli import main
main(["info"])
print("GOMP_SPINCOUNT in os.environ:", os.environ.get("GOMP_SPINCOUNT"))
"""


def _info_lines(stdout):
    return {line.split()[0]: line.split(None, 1)[1] for line in stdout.splitlines()
            if len(line.split(None, 1)) == 2}


def test_info_shows_the_openmp_runtime_and_how_it_waits():
    completed = run_python_code(INFO_AND_ENVIRONMENT)
    assert completed.returncode == 0, completed.stderr
    info = _info_lines(completed.stdout)
    if fastloss._config.config()["openmp"]:
        assert "libgomp" in info["openmp_runtimes"]
    assert info["openmp_wait"] == "GOMP_SPINCOUNT=10000 (fastloss's default)"
    assert "GOMP_SPINCOUNT in os.environ: 10000" in completed.stdout
    own = run_python_code(INFO_AND_ENVIRONMENT, OMP_WAIT_POLICY="passive")
    assert _info_lines(own.stdout)["openmp_wait"] == "OMP_WAIT_POLICY=passive (the process's own)"
    assert "GOMP_SPINCOUNT in os.environ: None" in own.stdout


def test_no_spincount_default_once_torch_has_loaded_libgomp():
    # torch's wheel ships libgomp.so.1; imported first, it is the process's one runtime
    # (fastloss's extension binds to it), already configured: fastloss's default could not
    # apply, so fastloss leaves the environment (and the child processes') alone and says so.
    pytest.importorskip("torch")
    completed = run_python_code("import torch\n" + INFO_AND_ENVIRONMENT)
    assert completed.returncode == 0, completed.stderr
    info = _info_lines(completed.stdout)
    assert "torch" in info["openmp_runtimes"] and "," not in info["openmp_runtimes"]
    assert info["openmp_wait"].startswith("libgomp's default")
    assert "loaded before fastloss" in info["openmp_wait"]
    assert "GOMP_SPINCOUNT in os.environ: None" in completed.stdout


def test_check_passes_every_line():
    completed = run_fastloss("check")
    assert completed.returncode == 0, completed.stdout + completed.stderr
    lines = completed.stdout.strip().splitlines()
    assert len(lines) == len(check.CHECKS) + 1  # one per check, then the summary
    failing = [line for line in lines if not line.rstrip().endswith("PASS")]
    assert not failing, "\n".join(failing)
    assert lines[-1].startswith(f"{len(check.CHECKS)} of {len(check.CHECKS)} checks passed")


def test_check_covers_the_api():
    names = " ".join(check.CHECKS)
    for part in ("float32", "float64", "hard-", "soft-", "weight", "ignore", "smoothing",
                 "z_loss", "softcap", " mean ", " sum ", " none ", " grad from lse",
                 "value_and_grad", "in place", "threads 1 vs 2"):
        assert part in names, f"no check mentions {part!r}"


def test_check_covers_the_elementwise_losses():
    names = " ".join(check.CHECKS)
    for loss in ("mse", "l1", "huber", "smooth_l1", "bce_with_logits"):
        for dtype in ("float32", "float64"):
            for what in ("mean loss", "none loss", "sum grad", "value_and_grad grad",
                         "in place grad"):
                assert f"{loss} " in names and f"{dtype} " in names
                assert any(name.startswith(f"{loss} ") and dtype in name and what in name
                           for name in check.CHECKS), (loss, dtype, what)
    for part in ("pos_weight", "delta=0.5", "beta=0 ", "bce_with_logits large",
                 "weight float32 threads 1 vs 2"):
        assert part in names, f"no check mentions {part!r}"


def test_check_reports_a_failure(monkeypatch, capsys):
    def wrong():
        return np.float32(1.0 + 1e-5).item(), 1.0, np.float32, "loss"

    def crash():
        raise RuntimeError("boom")

    monkeypatch.setitem(check.CHECKS, "zz wrong", wrong)
    monkeypatch.setitem(check.CHECKS, "zz crash", crash)
    assert check.main(pattern="zz ") == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("zz wrong") and "FAIL" in lines[0]
    assert lines[1].startswith("zz crash") and "FAIL" in lines[1] and "boom" in lines[1]
    assert "FAIL" in lines[-1]


@pytest.mark.parametrize("kind, actual, ref, passed", [
    ("grad", np.array([1.0, 1e-7], np.float32), np.array([1.0, 0.0]), True),  # 1e-6*max floor
    ("grad", np.array([1.0, 2e-6], np.float32), np.array([1.0, 0.0]), False),
    ("loss", 1.0 + 1e-6, 1.0, True),
    ("loss", 1.0 + 3e-6, 1.0, False),
    ("bitwise", np.array([1.0, -0.0]), np.array([1.0, 0.0]), False),  # signed zeros count
    ("bitwise", np.array([1.0, 0.0]), np.array([1.0, 0.0]), True),
])
def test_judge_applies_the_contract(kind, actual, ref, passed):
    dtype = np.float32 if kind != "bitwise" else np.float64
    if isinstance(actual, float):
        actual = float(np.float32(actual))
    assert check.judge("x", actual, ref, dtype, kind).passed is passed


def test_judge_rejects_a_result_of_the_wrong_dtype():
    result = check.judge("x", np.ones(3), np.ones(3), np.float32, "grad")
    assert not result.passed and "dtype" in result.message


def test_bench_quick_json(tmp_path):
    path = tmp_path / "bench.json"
    completed = run_fastloss("bench", "--family", "cross_entropy", "--quick", "--json",
                             str(path), "--size", "64,1000", "--repeat", "2", "--threads", "2",
                             "--no-compile")
    assert completed.returncode == 0, completed.stderr
    report = json.loads(path.read_text())
    assert set(report) >= {"machine", "config", "results"}
    assert {"cpu", "cpu_count", "numpy", "torch", "fastloss"} <= set(report["machine"])
    config = report["config"]
    assert config["size"] == {"N": 64, "C": 1000}
    assert config["threads"] == 2 and config["repeat"] == 2 and config["dtype"] == "float32"
    assert "simd_path" in config["fastloss"]
    names = [row["name"] for row in report["results"]]
    for expected in ("fastloss value_and_grad (out= preallocated)",
                     "fastloss value_and_grad (out=logits, in place)", "fastloss forward",
                     "fastloss grad from lse", "np.copyto (logits -> buffer)", "logits.max()"):
        assert expected in names
    assert any(name.startswith("numpy reference value_and_grad") for name in names)
    for row in report["results"]:
        for key in ("median_ms", "min_ms", "ratio_to_copy"):
            value = row[key]
            assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, \
                (row["name"], key, value)
        assert row["min_ms"] <= row["median_ms"]
        assert len(row["times_ms"]) == 2
    copy = next(row for row in report["results"] if row["name"].startswith("np.copyto"))
    assert copy["ratio_to_copy"] == 1.0
    forward = next(row for row in report["results"] if row["name"] == "fastloss forward")
    assert forward["ratio_to_max"] > 0
    skipped = {row["name"]: row["skipped"] for row in report["skipped"]}
    if importlib.util.find_spec("torch") is not None:
        assert "torch F.cross_entropy forward+backward" in names
        assert "fastloss.torch.cross_entropy forward+backward" in names
        assert "fastloss.torch.cross_entropy forward+backward (inplace_backward=True)" in names
        assert skipped["torch.compile(F.cross_entropy) forward+backward"] == \
            "left out (--no-compile)"
    else:
        assert any(row["name"].startswith("torch") for row in report["skipped"])
    # the table on stdout: the header names the machine, one line per case
    assert "CPU:" in completed.stdout and "threads: 2" in completed.stdout
    for name in names:
        assert name in completed.stdout
    # the targets are set for N=4096, C=50257: shown at this size, never judged
    assert report["targets"] and all(not target["judged"] and target["met"] is None
                                     for target in report["targets"])
    assert all(target["judged_at"] == [4096, 50257] for target in report["targets"])
    assert "MISSED" not in completed.stdout and " met" not in completed.stdout
    assert "not judged at this size" in completed.stdout
    assert "N=4096, C=50257" in completed.stdout and "BENCHMARKS.md" in completed.stdout
    assert "DESIGN" not in completed.stdout + completed.stderr


def test_bench_help_points_to_the_projects_documentation():
    completed = run_fastloss("bench", "--help")
    assert completed.returncode == 0
    assert "BENCHMARKS.md" in completed.stdout and "DESIGN" not in completed.stdout
    for name in ("--no-compile", "--quick", "cross_entropy_small", "cross_entropy_few_classes"):
        assert name in completed.stdout


def test_the_cli_lists_every_family():
    from fastloss import bench, cli

    assert cli.FAMILY_NAMES == tuple(bench.FAMILIES)


def _fake_rows(**medians):
    return {name: {"median_ms": value} for name, value in medians.items()}


def test_targets_are_judged_only_at_the_size_they_are_set_for():
    from fastloss import bench

    copy, fused = "np.copyto (logits -> buffer)", "fastloss value_and_grad (out= preallocated)"
    rows = _fake_rows(**{copy: 10.0, fused: 14.0})
    at_full = {entry["target"]: entry for entry in bench._judge(
        "cross_entropy", bench.CE_FULL_SIZE, rows, {})}
    assert at_full["fused (out=) / copy <= 1.3"]["judged"] is True
    assert at_full["fused (out=) / copy <= 1.3"]["met"] is False
    assert at_full["fused (out=) / copy <= 1.3"]["ratio"] == pytest.approx(1.4)
    at_quick = {entry["target"]: entry for entry in bench._judge(
        "cross_entropy", (1024, 50257), rows, {})}
    assert at_quick["fused (out=) / copy <= 1.3"]["judged"] is False
    assert at_quick["fused (out=) / copy <= 1.3"]["met"] is None
    assert at_quick["fused (out=) / copy <= 1.3"]["ratio"] == pytest.approx(1.4)
    # a target whose rows did not run says why
    compiled = at_full["torch.compile / adapter >= 3"]
    assert compiled["ratio"] is None and compiled["met"] is None
    assert "not run" in compiled["not_measured"]


def test_every_target_names_rows_of_its_family():
    from fastloss import bench

    for family_name, targets in bench.TARGETS.items():
        family = bench.FAMILIES[family_name]
        names = {case.name for case in family.cases}
        for target in targets:
            assert target.numerator in names and target.denominator in names, target.text
            if isinstance(family, bench.Grid):
                assert target.size is None  # a grid's targets hold in every cell
                assert (target.numerator, target.denominator) == family.ratio
            else:
                assert target.size == family.sizes["full"], target.text


def test_the_new_cross_entropy_targets_are_those_of_the_issue():
    from fastloss import bench

    targets = {target.text: target for target in bench.TARGETS["cross_entropy"]}
    for text, bound, sense in (("adapter fwd+bwd / copy <= 1.6", 1.6, "max"),
                               ("adapter in place / copy <= 1.35", 1.35, "max"),
                               ("torch eager / adapter >= 5", 5.0, "min"),
                               ("torch.compile / adapter >= 3", 3.0, "min")):
        assert (targets[text].bound, targets[text].sense) == (bound, sense)
        assert targets[text].size == (4096, 50257)
    (few,) = bench.TARGETS["cross_entropy_few_classes"]
    assert (few.bound, few.sense, few.size) == (3.0, "max", (65536, 10))
    assert few.denominator == "np.copyto (logits -> buffer)"


def test_bench_small_shape_grid_json(tmp_path):
    path = tmp_path / "grid.json"
    completed = run_fastloss("bench", "--family", "cross_entropy_small", "--size", "8,10",
                             "--threads", "1", "--repeat", "2", "--json", str(path),
                             "--no-progress")
    assert completed.returncode == 0, completed.stderr
    report = json.loads(path.read_text())
    config = report["config"]
    assert config["family"] == "cross_entropy_small"
    assert config["grid"] == {"N": [8], "C": [10]} and config["threads"] == [1]
    assert config["dtypes"] == ["float32", "float64"]
    assert "fastloss bench: cross-entropy at small shapes" in completed.stdout
    (target,) = report["targets"]
    if importlib.util.find_spec("torch") is None:
        assert report["results"] == [] and target["ratio"] is None
        assert "torch not importable" in completed.stdout
        return
    assert [(row["N"], row["C"], row["dtype"], row["threads"]) for row in report["results"]] \
        == [(8, 10, "float32", 1), (8, 10, "float64", 1)]
    for row in report["results"]:
        adapter = row["cases"]["fastloss.torch.cross_entropy forward+backward"]
        torch_row = row["cases"]["torch F.cross_entropy forward+backward"]
        assert 0 < adapter["min_ms"] <= adapter["median_ms"]
        assert 0 < torch_row["min_ms"] <= torch_row["median_ms"]
        assert row["ratio"] == pytest.approx(torch_row["median_ms"] / adapter["median_ms"])
        assert row["met"] == (row["ratio"] >= 1.0)
        assert row["rounds"] >= 2
        # one line per cell: N, C, dtype, threads, the two medians and the ratio
        line = next(line for line in completed.stdout.splitlines()
                    if line.split()[:4] == ["8", "10", row["dtype"], "1"])
        assert f"{row['ratio']:.2f}" in line
    # the grid's target holds in every cell, so it is judged at any size
    assert target["judged"] is True and target["cells"] == 2
    assert target["ratio"] == pytest.approx(min(row["ratio"] for row in report["results"]))
    assert target["met"] == all(row["met"] for row in report["results"])


def test_the_grid_skips_cells_too_large_and_says_why(monkeypatch):
    import dataclasses

    from fastloss import bench

    grid = dataclasses.replace(bench.CROSS_ENTROPY_SMALL, max_elements={"full": 100,
                                                                          "quick": 50})
    monkeypatch.setitem(bench.FAMILIES, grid.name, grid)
    report = bench.run(grid.name, size=(20, 10), threads=1, repeat=1, progress=False)
    assert report["results"] == []
    reasons = {row["name"]: row["skipped"] for row in report["skipped"]}
    assert reasons["N=20 C=10 float32 threads=1"].startswith("200 elements, over 2**6")
    assert "memory" in reasons["N=20 C=10 float32 threads=1"]
    quick = bench.run(grid.name, quick=True, size=(10, 8), threads=1, repeat=1,
                      progress=False)
    assert "left out of --quick" in quick["skipped"][0]["skipped"]
    assert "skipped: N=20 C=10 float32 threads=1" in bench.format_report(report)


def test_a_case_that_cannot_run_here_is_reported(monkeypatch):
    import dataclasses

    from fastloss import bench

    def unavailable(inputs, threads):
        raise bench.Unavailable("no compiler")

    family = bench.FAMILIES["cross_entropy_few_classes"]
    family = dataclasses.replace(family, cases=family.cases[:3] + (
        bench.Case("torch.compile(F.cross_entropy) forward+backward", unavailable,
                   compiles=True),))
    monkeypatch.setitem(bench.FAMILIES, family.name, family)
    report = bench.run(family.name, size=(64, 10), threads=1, repeat=1, progress=False)
    skipped = {row["name"]: row["skipped"] for row in report["skipped"]}
    assert skipped["torch.compile(F.cross_entropy) forward+backward"] == \
        "cannot run here: no compiler"
    text = bench.format_report(report)
    assert "skipped: cannot run here: no compiler" in text
    left_out = bench.run(family.name, size=(64, 10), threads=1, repeat=1, progress=False,
                         torch_compile=False)
    assert {row["skipped"] for row in left_out["skipped"]} == {"left out (--no-compile)"}


# torch.compile's own imports use torch.jit.script_method, deprecated in torch 2.13
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_bench_torch_compile_row_runs_or_says_why():
    pytest.importorskip("torch")
    from fastloss import bench

    name = "torch.compile(F.cross_entropy) forward+backward"
    report = bench.run("cross_entropy", size=(8, 300), repeat=1, threads=1, progress=False)
    rows = {row["name"]: row for row in report["results"]}
    skipped = {row["name"]: row["skipped"] for row in report["skipped"]}
    if name in rows:
        assert rows[name]["median_ms"] > 0
        entry = next(entry for entry in report["targets"]
                     if entry["target"] == "torch.compile / adapter >= 3")
        assert entry["ratio"] > 0 and not entry["judged"]
    else:
        assert skipped[name].startswith("cannot run here: torch.compile failed")


def test_bench_elementwise_json(tmp_path):
    path = tmp_path / "bench.json"
    completed = run_fastloss("bench", "--family", "elementwise", "--json", str(path),
                             "--size", "5000", "--repeat", "2", "--threads", "2",
                             "--no-progress")
    assert completed.returncode == 0, completed.stderr
    report = json.loads(path.read_text())
    config = report["config"]
    assert config["family"] == "elementwise" and config["size"] == {"n": 5000}
    assert config["threads"] == 2 and config["dtype"] == "float32"
    names = [row["name"] for row in report["results"]]
    for loss in ("mse", "l1", "huber", "smooth_l1", "bce_with_logits"):
        assert f"fastloss {loss} value_and_grad (out= preallocated)" in names
    assert "np.copyto (pred -> buffer)" in names and "pred.max()" in names
    assert any(name.startswith("numpy reference huber") for name in names)
    for row in report["results"]:
        assert row["median_ms"] > 0 and row["ratio_to_copy"] > 0, row["name"]
    if importlib.util.find_spec("torch") is not None:
        for torch_name in ("mse_loss", "l1_loss", "huber_loss", "smooth_l1_loss",
                           "binary_cross_entropy_with_logits"):
            assert f"torch {torch_name} forward+backward" in names
        # per loss: copy, and where torch has the loss, torch against fastloss and against
        # the adapter; and the speed-up from threads
        from fastloss.bench import _cases

        with_torch = [entry for entry in _cases.ELEMENTWISE_ENTRIES
                      if _cases._has_torch_counterpart(entry)]
        assert len(report["targets"]) == (len(_cases.ELEMENTWISE_ENTRIES)
                                          + 2 * len(with_torch) + 1)
    for name in names:
        assert name in completed.stdout


def test_bench_runs_every_family_by_default(tmp_path, monkeypatch, capsys):
    import dataclasses

    from fastloss import bench

    for name, family in bench.FAMILIES.items():
        size = family.sizes["tiny"]
        if isinstance(family, bench.Grid):
            size = tuple(axis[:1] for axis in size)
        monkeypatch.setitem(bench.FAMILIES, name, dataclasses.replace(
            family, sizes={"full": size, "quick": size}))
    path = tmp_path / "all.json"
    assert bench.main(json_file=str(path), repeat=1, threads=1, progress=False,
                      torch_compile=False) == 0
    reports = json.loads(path.read_text())["reports"]
    assert [report["config"]["family"] for report in reports] == list(bench.FAMILIES)
    text = capsys.readouterr().out
    assert text.count("fastloss bench:") == len(bench.FAMILIES)


@pytest.mark.parametrize("args", [
    ("--bogus",),
    ("bench", "--bogus"),
    ("bench", "--threads", "0"),
    ("bench", "--size", "5000"),
    ("bench", "--family", "elementwise", "--size", "64,1000"),
    ("bench", "--family", "regression"),
    ("bench", "--family", "cross_entropy_small", "--size", "5000"),
    ("nonsense",),
    (),
])
def test_bad_usage_exits_2_with_usage(args):
    completed = run_fastloss(*args)
    assert completed.returncode == 2
    assert "usage:" in completed.stderr
    assert completed.stdout == ""


def test_main_returns_exit_codes():
    from fastloss.cli import main

    assert main(["bench", "--no-such-flag"]) == 2
    assert main(["--version"]) == 0


def test_bench_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "bench.png"
    json_path = tmp_path / "bench.json"
    completed = run_fastloss("bench", "--family", "elementwise", "--size", "3000", "--repeat",
                             "1", "--threads", "1", "--no-progress", "--plot", str(path),
                             "--json", str(json_path))
    assert completed.returncode == 0, completed.stderr
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    # the rows carry their role, so a reader (and the plot) can find the family's limit
    report = json.loads(json_path.read_text())
    roles = {row["name"]: row["role"] for row in report["results"]}
    assert roles["np.copyto (pred -> buffer)"] == "copy"
    assert roles["pred.max()"] == "read"
    if importlib.util.find_spec("torch") is not None:  # the PyTorch adapter's rows
        for torch_name in ("mse_loss", "l1_loss", "huber_loss", "smooth_l1_loss",
                           "binary_cross_entropy_with_logits"):
            assert f"fastloss.torch.{torch_name} forward+backward" in roles


def test_bench_plot_of_every_family(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import dataclasses

    from fastloss import bench

    for name, family in list(bench.FAMILIES.items()):
        size = family.sizes["tiny"]
        monkeypatch.setitem(bench.FAMILIES, name, dataclasses.replace(
            family, sizes={"full": size, "quick": size}))
    path = tmp_path / "all.png"
    assert bench.main(plot_file=str(path), repeat=1, threads=1, progress=False,
                      stream=io.StringIO(), torch_compile=False) == 0
    assert path.read_bytes().startswith(b"\x89PNG")


def test_bench_plot_without_matplotlib_fails_before_running(tmp_path, monkeypatch, capsys):
    from fastloss import bench
    from fastloss.cli import main

    def must_not_run(*args, **kwargs):
        raise AssertionError("the benchmark ran although the plot cannot be drawn")

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    # bench.main runs the name `run` of fastloss.bench._main, not the package's
    monkeypatch.setattr(bench._main, "run", must_not_run)
    path = tmp_path / "bench.png"
    assert main(["bench", "--quick", "--plot", str(path)]) == 1
    captured = capsys.readouterr()
    assert "matplotlib" in captured.err and "fastloss[plot]" in captured.err
    assert captured.out == "" and not path.exists()


@pytest.mark.parametrize("option", ["--json", "--plot"])
@pytest.mark.parametrize("where", ["missing-directory", "a-directory"])
def test_an_output_file_that_cannot_be_written_exits_2_before_running(tmp_path, monkeypatch,
                                                                      capsys, option, where):
    # the file was opened after the whole benchmark: a traceback and exit status 1
    from fastloss import bench
    from fastloss.cli import main

    def must_not_run(*args, **kwargs):
        raise AssertionError("the benchmark ran although its output cannot be written")

    monkeypatch.setattr(bench, "main", must_not_run)
    path = tmp_path / "no-such-directory" / "out" if where == "missing-directory" else tmp_path
    assert main(["bench", "--quick", option, str(path)]) == 2
    captured = capsys.readouterr()
    assert f"fastloss: error: {option}: cannot write {path}" in captured.err
    assert "Traceback" not in captured.err and captured.out == ""


def test_bench_threads_are_capped_as_num_threads_is(monkeypatch, capsys):
    # --threads 100000 went to torch.set_num_threads as it was: a segmentation fault in
    # torch's binary_cross_entropy_with_logits (torch 2.13); fastloss uses at most
    # MAX_THREADS, and so does the benchmark now
    from fastloss import _config, bench
    from fastloss.cli import main

    asked = []
    monkeypatch.setattr(bench, "main", lambda **options: asked.append(options["threads"]) or 0)
    assert main(["bench", "--threads", "100000"]) == 0
    assert main(["bench", "--threads", "3"]) == 0
    assert asked == [min(100000, _config.MAX_THREADS), 3]


@pytest.mark.parametrize("args", [
    ("bench", "--plot"),
    ("bench", "--json"),
    ("bench", "--quick", "extra"),
    ("info", "--bogus"),
    ("check", "--bogus"),
])
def test_more_bad_usage_exits_2_with_usage(args):
    from fastloss.cli import main

    assert main(list(args)) == 2


def test_bench_has_the_adapter_rows_of_every_family():
    pytest.importorskip("torch")
    from fastloss import _registry, bench

    sizes = {"cross_entropy": (8, 300), "cross_entropy_few_classes": (64, 10),
             "elementwise": (3000,), "contrastive": (64, 16)}
    # elementwise: one row per loss the registry puts in the bench (the elementwise and
    # box families) with a fastloss.torch adapter, named after the adapter
    elementwise = [f"fastloss.torch.{entry.torch.function} forward+backward"
                   for entry in _registry.family("elementwise") + _registry.family("box")
                   if entry.bench and entry.torch is not None and entry.torch.function]
    assert len(elementwise) >= 14  # every elementwise and box loss has one today (11 + 3)
    expected = {"cross_entropy": 2, "cross_entropy_few_classes": 1,
                "elementwise": len(elementwise), "contrastive": 3}
    for family, size in sizes.items():
        report = bench.run(family, size=size, repeat=1, threads=1, progress=False,
                           torch_compile=False)
        adapter = [row for row in report["results"] if row["name"].startswith("fastloss.torch.")]
        # one per loss; cross-entropy's also with inplace_backward=True
        assert len(adapter) == expected[family], family
        assert all(row["median_ms"] > 0 for row in adapter)
        if family == "elementwise":
            assert [row["name"] for row in adapter] == elementwise


def test_check_shards_split_the_checks_exactly():
    everything = check.select_checks()
    for n in (1, 2, 3, 7):
        shards = [check.select_checks(shard=(k, n)) for k in range(n)]
        assert sorted(name for shard in shards for name in shard) == sorted(everything)
        assert sum(len(shard) for shard in shards) == len(everything)
    assert check.select_checks("mse", (1, 2)) == check.select_checks("mse")[1::2]
    for bad in ((2, 2), (-1, 2), (0, 0), (1.0, 2)):
        with pytest.raises(ValueError, match="shard"):
            check.select_checks(shard=bad)


def test_check_shard_option():
    result = run_fastloss("check", "-q", "-k", "pinball", "--shard", "1/3")
    assert result.returncode == 0, result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    expected = len(check.select_checks("pinball", (1, 3)))
    assert summary.startswith(f"{expected} of {expected} checks passed"), summary
    for bad in ("3/3", "x/2", "1", "-1/2"):
        result = run_fastloss("check", f"--shard={bad}")
        assert result.returncode == 2
        assert "--shard" in result.stderr and repr(bad) in result.stderr
