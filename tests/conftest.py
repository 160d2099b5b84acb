"""Shared fixtures. The loss table and the contract checks live in ``loss_specs.py``."""

import os
import random
import sys
import zlib

import numpy as np
import pytest

# Make ``import loss_specs`` work whatever pytest's import mode is.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _test_the_installed_package():
    """After a plain ``pip install .``, ``python -m pytest`` in the checkout puts the
    checkout first on sys.path, and its fastloss/ has no compiled extension: take the
    checkout off sys.path so that the tests import the installed package, as
    ``pytest tests`` does. (A checkout built in place, ``pip install -e .``, is left
    first: it is the package under test.)"""
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    package = os.path.join(checkout, "fastloss")
    built = any(name.startswith("_kernels.") and name.endswith((".so", ".pyd"))
                for name in os.listdir(package)) if os.path.isdir(package) else True
    if built or "fastloss" in sys.modules:
        return
    entries = [entry for entry in sys.path
               if os.path.abspath(entry or os.curdir) != checkout]
    saved, sys.path[:] = list(sys.path), entries
    import importlib.util

    if importlib.util.find_spec("fastloss") is None:
        sys.path[:] = saved  # nothing installed: let the import say what to run


_test_the_installed_package()


@pytest.fixture
def rng(request):
    """A generator seeded from the test's id: reproducible, and different for each test."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def restore_num_threads():
    """Put the process-wide thread count back after a test that changes it."""
    import fastloss

    saved = fastloss.get_num_threads()
    yield saved
    fastloss.set_num_threads(saved)


# ----------------------------------------------------------------------------------------
# The fuzz's seed (tests/test_fuzz.py): printed so that a random run can be replayed
# ----------------------------------------------------------------------------------------

def pytest_configure(config):
    """FASTLOSS_FUZZ_EXAMPLES without FASTLOSS_FUZZ_SEED: draw the seed here, once, so that
    test_fuzz.py reads the same one that the header and the failure reports print."""
    if os.environ.get("FASTLOSS_FUZZ_EXAMPLES") and not os.environ.get("FASTLOSS_FUZZ_SEED"):
        os.environ["FASTLOSS_FUZZ_SEED"] = str(random.SystemRandom().randrange(2**32))


def _fuzz_replay(path="tests/test_fuzz.py"):
    """How this run's fuzz examples were drawn, and the command that draws them again."""
    seed = os.environ.get("FASTLOSS_FUZZ_SEED", "").strip()
    examples = os.environ.get("FASTLOSS_FUZZ_EXAMPLES", "150").strip()
    if not seed:
        return "fuzz: the fixed examples (derandomized, 150 per property)"
    return (f"fuzz: {examples} random examples per property from seed {seed}; replay with "
            f"FASTLOSS_FUZZ_SEED={seed} FASTLOSS_FUZZ_EXAMPLES={examples} "
            f"python -m pytest {path}")


def pytest_report_header(config):
    return _fuzz_replay()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing fuzz test says how to replay it (the header is hidden under -q)."""
    outcome = yield
    report = outcome.get_result()
    name = item.module.__name__.rpartition(".")[2]
    if report.failed and name in ("test_fuzz", "test_fuzz_torch"):
        report.sections.append(("fuzz seed", _fuzz_replay(f"tests/{name}.py")))


# ----------------------------------------------------------------------------------------
# The torch tests really ran: with FASTLOSS_REQUIRE_TORCH=1 (set by .ci/run, where torch is
# installed) a run fails if a test was skipped because torch could not be imported, or if
# no test of the torch adapter passed.  A broken torch install, or one the sanitizers'
# preloaded runtimes keep from importing, would otherwise turn every torch test into a skip
# and the run green.
# ----------------------------------------------------------------------------------------

_torch_accounting = {"adapter_passed": 0, "import_skips": []}


def _skip_reason(report):
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def _is_torch_import_skip(report):
    """pytest.importorskip("torch") or a skip that says torch is missing."""
    reason = _skip_reason(report)
    return "'torch'" in reason or "No module named 'torch" in reason or (
        "torch" in reason and ("import" in reason or "not installed" in reason))


def _torch_required(config=None):
    """Whether this process judges the torch accounting: not a pytest-xdist worker (its
    reports reach the controller, which counts them all)."""
    if config is not None and hasattr(config, "workerinput"):
        return False
    return os.environ.get("FASTLOSS_REQUIRE_TORCH", "") not in ("", "0")


def pytest_collectreport(report):
    """A test module skipped at import (a module-level importorskip)."""
    if report.skipped and _is_torch_import_skip(report):
        _torch_accounting["import_skips"].append(f"{report.nodeid}: {_skip_reason(report)}")


def pytest_runtest_logreport(report):
    if report.skipped and _is_torch_import_skip(report):
        _torch_accounting["import_skips"].append(f"{report.nodeid}: {_skip_reason(report)}")
    elif (report.when == "call" and report.passed
          and os.path.basename(report.nodeid.split("::")[0]).startswith("test_torch")):
        _torch_accounting["adapter_passed"] += 1


def _torch_accounting_failures(config):
    if not _torch_required(config):
        return []
    failures = []
    skips = _torch_accounting["import_skips"]
    if skips:
        failures.append(f"FASTLOSS_REQUIRE_TORCH=1, but {len(skips)} test(s) or module(s) were "
                        f"skipped because torch could not be imported; first: {skips[0]}")
    if not _torch_accounting["adapter_passed"]:
        failures.append("FASTLOSS_REQUIRE_TORCH=1, but no test of the torch adapter "
                        "(tests/test_torch_*.py) passed")
    return failures


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _torch_required(config):
        terminalreporter.write_line(
            f"torch: {_torch_accounting['adapter_passed']} adapter tests passed, "
            f"{len(_torch_accounting['import_skips'])} skipped for want of torch")
    for failure in _torch_accounting_failures(config):
        terminalreporter.write_line(failure, red=True, bold=True)


def pytest_sessionfinish(session, exitstatus):
    if _torch_accounting_failures(session.config) and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(params=("baseline", "avx2", "avx512"))
def simd_path(request):
    """Run the test on one SIMD path of the kernels (skipped where this CPU or build
    cannot run it), and put the process's path back afterwards."""
    from fastloss import _kernels

    saved = _kernels.build_info()["simd_path"]
    try:
        _kernels.set_simd_path(request.param)
    except ValueError:
        pytest.skip(f"{request.param} is not available on this CPU or build")
    assert _kernels.build_info()["simd_path"] == request.param
    yield request.param
    _kernels.set_simd_path(saved)
