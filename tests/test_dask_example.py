"""examples/score_corpus.py runs (small sizes) and checks its own scores: the per-row
losses it stores in one pass over a .npy memory map and over a zarr store equal
fastloss.cross_entropy on the whole corpus in memory, bit for bit."""
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("dask.array")

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "examples", "score_corpus.py")


def _run(tmp_path, *args):
    command = [sys.executable, EXAMPLE, "--rows", "3001", "--classes", "129",
               "--chunk-rows", "500", "--workers", "2", "--dir", str(tmp_path), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_scores_a_npy_memmap(tmp_path):
    out = _run(tmp_path, "--store", "npy")
    assert "check: the losses of 3001 rows equal fastloss.cross_entropy's" in out
    losses = np.load(tmp_path / "loss-npy.npy")
    assert losses.shape == (3001,) and losses.dtype == np.float32
    assert np.count_nonzero(losses == 0) > 0          # the padding rows


def test_scores_a_zarr_store(tmp_path):
    pytest.importorskip("zarr")
    out = _run(tmp_path, "--store", "npy", "zarr")
    assert out.count("check: the losses of 3001 rows") == 2
    assert np.array_equal(np.load(tmp_path / "loss-npy.npy"),
                          np.load(tmp_path / "loss-zarr.npy"))
