"""Pairwise distance and contrastive benchmarks (pytest-benchmark), float32, all threads.

    python -m pytest benchmarks/bench_contrastive.py --benchmark-only

N = 1024 rows of D = 768 by default (N = 4096 with FASTLOSS_BENCH_FULL=1, the size of
the targets of BENCHMARKS.md: contrastive_pairwise value_and_grad within 3x of one
``x @ x.T`` and at least 4x faster than torch's cdist + loss + backward). The baseline is
``x @ x.T`` (conftest.py prints every median as a ratio to it). Also timed: the cosine
metric, whose margin keeps about half the negative pairs active (a dense coefficient
matrix), the forward, pairwise_distance, torch, and the pieces of the call (the float64
Gram product of the centred rows, by the row-strip height of GRAM_STRIP_ROWS, and the
backward product W @ x, by BLAS and, by the density of W, by the sparse product that
SPARSE_PRODUCT_DENSITY chooses).
"""
import os
import sys

import numpy as np
import pytest

import fastloss
import fastloss.contrastive  # noqa: F401 (the module; fastloss.contrastive is the loss)

CONTRASTIVE = sys.modules["fastloss.contrastive"]

FULL = os.environ.get("FASTLOSS_BENCH_FULL", "") not in ("", "0")
N_ROWS, DIM = (4096 if FULL else 1024), 768
GROUP = f"contrastive N={N_ROWS} D={DIM} float32"
ROUNDS = 10 if FULL else 5
THREADS = fastloss.get_num_threads()


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N_ROWS, DIM), dtype=np.float32)
    labels = rng.integers(0, max(1, N_ROWS // 41), N_ROWS)
    buffer = np.zeros_like(x)  # zeros: every page touched before timing
    return {"x": x, "labels": labels, "buffer": buffer}


def run(benchmark, function, setup=None):
    benchmark.group = GROUP
    return benchmark.pedantic(function, setup=setup, rounds=ROUNDS, warmup_rounds=1,
                              iterations=1)


def test_matmul(benchmark, data):
    benchmark.extra_info["baseline"] = "x @ x.T"
    x = data["x"]
    run(benchmark, lambda: x @ x.T)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_contrastive_pairwise_value_and_grad(benchmark, data, metric):
    x, labels, buffer = data["x"], data["labels"], data["buffer"]
    run(benchmark, lambda: fastloss.contrastive_pairwise_value_and_grad(
        x, labels, metric=metric, out=buffer))


def test_contrastive_pairwise_forward(benchmark, data):
    x, labels = data["x"], data["labels"]
    run(benchmark, lambda: fastloss.contrastive_pairwise(x, labels))


def test_pairwise_distance(benchmark, data):
    x = data["x"]
    run(benchmark, lambda: fastloss.pairwise_distance(x))


@pytest.mark.parametrize("strip_rows", [256, 512, 1024, 2048, 1 << 30],
                         ids=["256", "512", "1024", "2048", "one product"])
def test_gram_product_by_strip_height(benchmark, data, monkeypatch, strip_rows):
    # The sweep behind GRAM_STRIP_ROWS: the float64 Gram product of the centred rows,
    # formed strip by strip on and right of the diagonal.
    monkeypatch.setattr(CONTRASTIVE, "GRAM_STRIP_ROWS", strip_rows)
    pairs = CONTRASTIVE._AllPairs(data["x"], None, "euclidean", THREADS, False)
    run(benchmark, pairs.gram)


def _coefficients(density):
    """A random N x N coefficient matrix with this fraction of nonzeros, and its mask."""
    rng = np.random.default_rng(1)
    coefficients = rng.standard_normal((N_ROWS, N_ROWS), dtype=np.float32)
    coefficients[rng.random((N_ROWS, N_ROWS)) >= density] = 0
    bits = np.packbits(coefficients != 0, axis=1, bitorder="little")
    words = -(-N_ROWS // 64)
    bits = np.pad(bits, ((0, 0), (0, words * 8 - bits.shape[1])))
    return coefficients, np.ascontiguousarray(bits).view(np.uint64)


def test_backward_product(benchmark, data):
    x = data["x"]
    coefficients, _ = _coefficients(1.0)
    run(benchmark, lambda: coefficients @ x)


@pytest.mark.parametrize("density", [1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4],
                         ids=["1/64", "1/32", "1/16", "1/8", "1/4"])
def test_sparse_backward_product_by_density(benchmark, data, density):
    # The sweep behind SPARSE_PRODUCT_DENSITY: the sparse product's time against
    # test_backward_product (BLAS, whatever the density).
    from fastloss import _kernels

    coefficients, mask = _coefficients(density)
    rows = data["x"]
    product = np.zeros_like(rows)
    run(benchmark, lambda: _kernels.dist_sparse_product(mask, coefficients, rows, product,
                                                        THREADS))


def test_torch_cdist_loss_backward(benchmark, data):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(THREADS)
    x = torch.from_numpy(data["x"]).requires_grad_(True)
    labels = torch.from_numpy(data["labels"])
    n_pairs = N_ROWS * (N_ROWS - 1) / 2

    def clear():
        x.grad = None  # backward into a fresh gradient, as in a training step

    def call():
        distance = torch.cdist(x, x)
        same = labels[:, None] == labels[None, :]
        loss = torch.where(same, torch.relu(distance) ** 2, torch.relu(1.0 - distance) ** 2)
        (torch.triu(loss, diagonal=1).sum() / n_pairs).backward()

    run(benchmark, call, setup=clear)
