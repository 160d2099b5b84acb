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


def run_fastloss(*args, timeout=120):
    """``python -m fastloss ARGS`` with this fastloss importable; the CompletedProcess."""
    env = dict(os.environ)
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(fastloss.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(
        [package_parent] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    # cwd too: `-m` puts the working directory first on sys.path, where a source
    # checkout's unbuilt fastloss/ would shadow the installed one
    return subprocess.run([sys.executable, "-m", "fastloss", *args], env=env, cwd=package_parent,
                          capture_output=True, text=True, timeout=timeout)


def test_info_shows_the_build():
    completed = run_fastloss("info")
    assert completed.returncode == 0, completed.stderr
    assert "simd" in completed.stdout
    assert fastloss.__version__ in completed.stdout
    assert "openmp" in completed.stdout


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
                             str(path), "--size", "64,1000", "--repeat", "2", "--threads", "2")
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
    if importlib.util.find_spec("torch") is not None:
        assert "torch F.cross_entropy forward+backward" in names
        assert "fastloss.torch.cross_entropy forward+backward" in names
    else:
        assert any(row["name"].startswith("torch") for row in report["skipped"])
    # the table on stdout: the header names the machine, one line per case
    assert "CPU:" in completed.stdout and "threads: 2" in completed.stdout
    for name in names:
        assert name in completed.stdout


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
        assert len(report["targets"]) == 10
    for name in names:
        assert name in completed.stdout


def test_bench_runs_every_family_by_default(tmp_path, monkeypatch, capsys):
    import dataclasses

    from fastloss import bench

    tiny = {"cross_entropy": (16, 300), "elementwise": (3000,), "contrastive": (64, 16)}
    for name, size in tiny.items():
        monkeypatch.setitem(bench.FAMILIES, name, dataclasses.replace(
            bench.FAMILIES[name], sizes={"full": size, "quick": size}))
    path = tmp_path / "all.json"
    assert bench.main(json_file=str(path), repeat=1, threads=1, progress=False) == 0
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
        size = (8, 300) if len(family.size_names) == 2 else (3000,)
        monkeypatch.setitem(bench.FAMILIES, name, dataclasses.replace(
            family, sizes={"full": size, "quick": size}))
    path = tmp_path / "all.png"
    assert bench.main(plot_file=str(path), repeat=1, threads=1, progress=False,
                      stream=io.StringIO()) == 0
    assert path.read_bytes().startswith(b"\x89PNG")


def test_bench_plot_without_matplotlib_fails_before_running(tmp_path, monkeypatch, capsys):
    from fastloss import bench
    from fastloss.cli import main

    def must_not_run(*args, **kwargs):
        raise AssertionError("the benchmark ran although the plot cannot be drawn")

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setattr(bench, "run", must_not_run)
    path = tmp_path / "bench.png"
    assert main(["bench", "--quick", "--plot", str(path)]) == 1
    captured = capsys.readouterr()
    assert "matplotlib" in captured.err and "fastloss[plot]" in captured.err
    assert captured.out == "" and not path.exists()


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
    from fastloss import bench

    sizes = {"cross_entropy": (8, 300), "elementwise": (3000,), "contrastive": (64, 16)}
    for family, size in sizes.items():
        report = bench.run(family, size=size, repeat=1, threads=1, progress=False)
        adapter = [row for row in report["results"] if row["name"].startswith("fastloss.torch.")]
        torch_rows = [row for row in report["results"] if row["name"].startswith("torch")]
        assert adapter and len(adapter) == len(torch_rows) - (family == "cross_entropy"), family
        assert all(row["median_ms"] > 0 for row in adapter)
