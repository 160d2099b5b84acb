"""Shared fixtures. The loss table and the contract checks live in ``loss_specs.py``."""

import os
import sys
import zlib

import numpy as np
import pytest

# Make ``import loss_specs`` work whatever pytest's import mode is.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


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
