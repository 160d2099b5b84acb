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


def _fuzz_replay():
    """How this run's fuzz examples were drawn, and the command that draws them again."""
    seed = os.environ.get("FASTLOSS_FUZZ_SEED", "").strip()
    examples = os.environ.get("FASTLOSS_FUZZ_EXAMPLES", "150").strip()
    if not seed:
        return "fuzz: the fixed examples (derandomized, 150 per property)"
    return (f"fuzz: {examples} random examples per property from seed {seed}; replay with "
            f"FASTLOSS_FUZZ_SEED={seed} FASTLOSS_FUZZ_EXAMPLES={examples} "
            f"python -m pytest tests/test_fuzz.py")


def pytest_report_header(config):
    return _fuzz_replay()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing fuzz test says how to replay it (the header is hidden under -q)."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and item.module.__name__.endswith("test_fuzz"):
        report.sections.append(("fuzz seed", _fuzz_replay()))
