"""fastloss.dask: per-row cross-entropy and log-sum-exp of dask arrays.

Chunked by rows, each chunk is one call of the in-memory kernel, so the results must be the
in-memory call's bit for bit (and so within the accuracy contract of the float64
reference); chunked along the classes too, the chunks' block statistics are merged, and
the results must meet the contract against the reference.  Every option of cross_entropy,
hard and soft targets, ignored rows, class weights; targets given as NumPy arrays and as
dask arrays chunked with the rows or otherwise; the threaded scheduler (whose workers must
run the kernel concurrently: it releases the GIL) and a ``distributed.LocalCluster`` of two
worker processes, bounded in time.
"""
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

da = pytest.importorskip("dask.array")

import dask  # noqa: E402

import fastloss  # noqa: E402
import fastloss.dask as fd  # noqa: E402
from fastloss import reference  # noqa: E402
from loss_specs import (  # noqa: E402
    CE_HARD_CASES, CE_SOFT_CASES, DTYPES, LSE_TOLERANCE, assert_close, assert_close_contract,
    bitwise_equal, dtype_id, make_ce_hard_inputs, make_ce_soft_inputs)

# (shape, chunks) of the logits: rows chunked (unevenly), rows of a 3-D batch chunked
# along both leading axes, rows and classes chunked
ROW_LAYOUTS = {
    "rows": ((203, 37), (50, -1)),
    "rows-3d": ((5, 41, 23), (2, 16, -1)),
}
CLASS_LAYOUTS = {
    "rows+classes": ((203, 37), (50, 10)),
    "classes-uneven": ((64, 50), (64, (7, 20, 1, 22))),
    # chunks of no classes (dask allows them: slicing, rechunking) and of no rows
    "classes-empty-chunks": ((64, 50), ((30, 0, 34), (0, 7, 20, 0, 1, 22, 0))),
    "rows+classes-3d": ((4, 9, 23), (3, 4, 6)),
}
CASES = ([("hard", case) for case in CE_HARD_CASES]
         + [("soft", case) for case in CE_SOFT_CASES])


def _inputs(rng, kind, case, dtype, shape):
    make = make_ce_hard_inputs if kind == "hard" else make_ce_soft_inputs
    (logits, target), options = make(rng, dtype, case.params, shape)
    return logits, target, options


def _in_memory(logits, target, options):
    return fastloss.cross_entropy(logits, target, reduction="none", return_lse=True, **options)


def _dask_target(target, kind, chunks):
    return da.from_array(target, chunks=chunks if kind == "soft" else chunks[:-1])


@pytest.mark.parametrize("layout", sorted(ROW_LAYOUTS))
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("kind, case", CASES, ids=[f"{k}-{c.id}" for k, c in CASES])
def test_row_chunks_are_the_in_memory_call(rng, kind, case, dtype, layout):
    shape, chunks = ROW_LAYOUTS[layout]
    logits, target, options = _inputs(rng, kind, case, dtype, shape)
    want_loss, want_lse = _in_memory(logits, target, options)
    x = da.from_array(logits, chunks=chunks)
    loss, lse = fd.cross_entropy(x, _dask_target(target, kind, x.chunks), return_lse=True,
                                 **options)
    assert loss.chunks == x.chunks[:-1] and lse.chunks == x.chunks[:-1]
    assert loss.dtype == want_loss.dtype and lse.dtype == np.float64
    got_loss, got_lse = dask.compute(loss, lse, scheduler="threads")
    assert bitwise_equal(got_loss, want_loss)
    assert bitwise_equal(got_lse, want_lse)
    ref_loss = reference.cross_entropy(logits, target, reduction="none", **options)
    assert_close_contract(got_loss, ref_loss, dtype, "loss")


@pytest.mark.parametrize("layout", sorted(CLASS_LAYOUTS))
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("kind, case", CASES, ids=[f"{k}-{c.id}" for k, c in CASES])
def test_class_chunks_meet_the_contract(rng, kind, case, dtype, layout):
    shape, chunks = CLASS_LAYOUTS[layout]
    logits, target, options = _inputs(rng, kind, case, dtype, shape)
    x = da.from_array(logits, chunks=chunks)
    assert x.numblocks[-1] > 1
    loss, lse = fd.cross_entropy(x, _dask_target(target, kind, x.chunks), return_lse=True,
                                 **options)
    assert loss.chunks == x.chunks[:-1]
    got_loss, got_lse = dask.compute(loss, lse, scheduler="threads")
    ref_loss, ref_lse = reference.cross_entropy(logits, target, reduction="none",
                                                return_lse=True, **options)
    want_loss, _ = _in_memory(logits, target, options)
    assert got_loss.dtype == want_loss.dtype and got_loss.shape == want_loss.shape
    assert_close_contract(got_loss, ref_loss, dtype, "loss")
    assert_close(got_lse, ref_lse, LSE_TOLERANCE[np.dtype(dtype)], what="lse")


def test_class_chunks_are_never_put_together(rng, monkeypatch):
    """Chunked along the classes, the kernel sees each chunk as it is (its statistics),
    never a whole row: the in-memory call is not made, no rechunk is."""
    (logits, target), options = make_ce_hard_inputs(
        rng, np.float64, {"weight": True, "ignore_fraction": 0.2, "label_smoothing": 0.1,
                          "z_loss": 1e-3}, (90, 40))
    want = reference.cross_entropy(logits, target, reduction="none", **options)
    seen = []
    block_stats = fastloss.cross_entropy_block_stats

    def recorded(logits_block, target, *, class_offset, **kwargs):
        seen.append((logits_block.shape, class_offset))
        return block_stats(logits_block, target, class_offset=class_offset, **kwargs)

    x = da.from_array(logits, chunks=(30, (10, 25, 5)))
    loss = fd.cross_entropy(x, target, **options)
    assert not any("rechunk" in name for name in loss.__dask_graph__().layers)
    monkeypatch.setattr(fd.fastloss, "cross_entropy_block_stats", recorded)
    monkeypatch.setattr(fd.fastloss, "cross_entropy", None)
    got = loss.compute(scheduler="sync")
    monkeypatch.undo()
    assert sorted(seen) == sorted(((30, w), o) for w, o in [(10, 0), (25, 10), (5, 35)]
                                  for _ in range(3))
    assert_close_contract(got, want, np.float64, "loss")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("chunks", [(30, -1), (30, 8)], ids=["rows", "rows+classes"])
@pytest.mark.parametrize("softcap", [None, 3.0])
def test_logsumexp(rng, dtype, chunks, softcap):
    logits = (rng.standard_normal((97, 29)) * 4).astype(dtype)
    logits[5, :] = -np.inf
    logits[6, 3] = np.inf
    logits[7, 0] = np.nan
    got = fd.logsumexp(da.from_array(logits, chunks=chunks), softcap=softcap)
    assert got.dtype == np.float64 and got.chunks == ((30, 30, 30, 7),)
    got = got.compute(scheduler="threads")
    zeros = np.zeros(97, np.int64)
    _, ref = reference.cross_entropy(logits, zeros, reduction="none", return_lse=True,
                                     softcap=softcap)
    assert_close(got, ref, LSE_TOLERANCE[np.dtype(dtype)], what="lse")
    if chunks[-1] == -1:
        _, want = fastloss.cross_entropy(logits, zeros, reduction="none", return_lse=True,
                                         softcap=softcap)
        assert bitwise_equal(got, want)


def test_targets_and_weights_in_any_form(rng):
    """The target as NumPy, as dask chunked with the rows, as dask chunked otherwise (it is
    rechunked), and the weight as NumPy, list or dask: the same losses."""
    (logits, target), options = make_ce_hard_inputs(
        rng, np.float64, {"weight": True, "ignore_fraction": 0.3, "label_smoothing": 0.1},
        (120, 16))
    weight = options.pop("weight")
    want, _ = _in_memory(logits, target, dict(options, weight=weight))
    x = da.from_array(logits, chunks=(25, -1))
    targets = [target, da.from_array(target, chunks=25), da.from_array(target, chunks=7)]
    weights = [weight, list(weight), da.from_array(weight, chunks=5)]
    for t in targets:
        for w in weights:
            got = fd.cross_entropy(x, t, weight=w, **options)
            assert got.chunks == x.chunks[:-1]
            assert bitwise_equal(got.compute(scheduler="sync"), want)


def test_array_likes_and_memmaps(rng, tmp_path):
    """Logits in memory or memory-mapped (not dask arrays) are chunked by rows."""
    logits = rng.standard_normal((300, 11)).astype(np.float32)
    target = rng.integers(0, 11, 300)
    path = tmp_path / "logits.npy"
    np.save(path, logits)
    mapped = np.load(path, mmap_mode="r")
    want, _ = _in_memory(logits, target, {})
    for x in (logits, mapped):
        got = fd.cross_entropy(x, target)
        assert isinstance(got, da.Array)
        assert bitwise_equal(got.compute(scheduler="threads"), want)


@pytest.mark.parametrize("chunks", [-1, 2], ids=["whole", "classes"])
def test_one_row_and_no_rows(chunks):
    """1-D logits (one row, a 0-d loss) and zero rows, with whole rows and class chunks."""
    row = np.array([1.0, -2.0, 3.0, 0.5])
    got = fd.cross_entropy(da.from_array(row, chunks=chunks), 2).compute(scheduler="sync")
    want = fastloss.cross_entropy(row, np.int64(2), reduction="none")
    assert got.shape == () and np.isclose(got, want, rtol=1e-15, atol=0)
    empty = da.from_array(np.zeros((0, 4)), chunks=(5, chunks))
    for result in (fd.cross_entropy(empty, np.zeros(0, np.int64)), fd.logsumexp(empty)):
        computed = result.compute(scheduler="sync")
        assert computed.shape == (0,) and computed.dtype == np.float64


def test_lazy_and_one_read_per_chunk(rng):
    """Building the graph reads nothing; computing the loss and the lse together reads each
    chunk of logits once."""
    logits = rng.standard_normal((100, 13))
    target = rng.integers(0, 13, 100)
    reads = []

    def load(block, block_info=None):
        reads.append(block_info[None]["chunk-location"])
        return block

    x = da.from_array(logits, chunks=(20, -1)).map_blocks(load, dtype=logits.dtype)
    loss, lse = fd.cross_entropy(x, target, return_lse=True)
    lse_only = fd.logsumexp(x)
    assert reads == []
    dask.compute(loss, lse, scheduler="sync")
    assert sorted(reads) == [(i, 0) for i in range(5)]
    want_loss, want_lse = _in_memory(logits, target, {})
    assert bitwise_equal(loss.compute(), want_loss)
    assert bitwise_equal(lse.compute(), want_lse)
    _, want_lse_only = _in_memory(logits, np.zeros(100, np.int64), {})
    assert bitwise_equal(lse_only.compute(), want_lse_only)


def test_the_threaded_scheduler_runs_chunks_concurrently(rng, monkeypatch):
    """The kernel releases the GIL: two scheduler threads are inside it at the same time.
    (Were the GIL held, the calls' intervals, recorded around the kernel, could not
    overlap, however the operating system scheduled the threads.)  Soft-capping makes each
    call about 40 ms (a tanh per logit), long against the scheduler's own work between
    calls (a few ms), so that two calls overlap when they can."""
    logits = rng.standard_normal((8 * 4000, 1000)).astype(np.float32)
    target = rng.integers(0, 1000, 8 * 4000)
    intervals = []
    kernel = fastloss.cross_entropy

    def timed(*args, **kwargs):
        start = time.perf_counter()
        result = kernel(*args, **kwargs)
        intervals.append((start, time.perf_counter()))
        return result

    loss = fd.cross_entropy(da.from_array(logits, chunks=(4000, -1)), target, softcap=30.0,
                            num_threads=1)
    monkeypatch.setattr(fd.fastloss, "cross_entropy", timed)
    got = loss.compute(scheduler="threads", num_workers=2)
    monkeypatch.undo()
    assert len(intervals) == 8
    intervals.sort()
    overlaps = sum(b_start < a_end for (_, a_end), (b_start, _) in zip(intervals, intervals[1:]))
    assert overlaps > 0, f"no two chunks ran at once: {intervals}"
    want, _ = _in_memory(logits, target, {"softcap": 30.0})
    assert bitwise_equal(got, want)


@pytest.fixture(scope="module")
def cluster_client():
    """Two worker processes (one thread each), started and stopped within bounded time."""
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, timeout=60)
    client = distributed.Client(cluster, timeout=60)
    try:
        client.wait_for_workers(2, timeout=60)
        yield client
    finally:
        client.close(timeout=30)
        cluster.close(timeout=30)


@pytest.mark.parametrize("chunks", [(40, -1), (40, 9)], ids=["rows", "rows+classes"])
def test_distributed_local_cluster(rng, cluster_client, chunks):
    (logits, target), options = make_ce_hard_inputs(
        rng, np.float32, {"weight": True, "ignore_fraction": 0.2, "label_smoothing": 0.1,
                          "z_loss": 1e-3}, (230, 31))
    x = da.from_array(logits, chunks=chunks)
    loss, lse = fd.cross_entropy(x, da.from_array(target, chunks=40), return_lse=True,
                                 **options)
    futures = cluster_client.compute([loss, lse])
    got_loss, got_lse = [future.result(timeout=60) for future in futures]
    workers = cluster_client.run(os.getpid, workers=None)
    assert len(set(workers.values())) == 2 and os.getpid() not in workers.values()
    want_loss, want_lse = _in_memory(logits, target, options)
    if chunks[-1] == -1:
        assert bitwise_equal(got_loss, want_loss) and bitwise_equal(got_lse, want_lse)
    ref_loss = reference.cross_entropy(logits, target, reduction="none", **options)
    assert_close_contract(got_loss, ref_loss, np.float32, "loss")


# ----------------------------------------------------------------------------------------
# Bad input: named, when the graph is built (class indices: when their chunk is computed)
# ----------------------------------------------------------------------------------------

X = da.from_array(np.zeros((10, 4)), chunks=(5, -1))
T = np.zeros(10, np.int64)


@pytest.mark.parametrize("call, error, name", [
    (lambda: fd.cross_entropy(X.astype(np.int32), T), TypeError, "logits"),
    (lambda: fd.cross_entropy(np.float64(1.0), T), ValueError, "logits"),
    (lambda: fd.cross_entropy("x", T), TypeError, "logits"),
    (lambda: fd.cross_entropy(np.zeros((3, 0)), np.zeros(3, np.int64)), ValueError,
     "logits"),
    (lambda: fd.cross_entropy(X, np.array(list("abcdefghij"))), TypeError, "target"),
    (lambda: fd.cross_entropy(X, np.zeros(9, np.int64)), ValueError, "target"),
    (lambda: fd.cross_entropy(X, np.zeros((10, 4), np.int64)), ValueError, "target"),
    (lambda: fd.cross_entropy(X, np.zeros((10, 3))), ValueError, "target"),
    (lambda: fd.cross_entropy(X, None), TypeError, "target"),
    (lambda: fd.cross_entropy(X, T, weight=np.ones(3)), ValueError, "weight"),
    (lambda: fd.cross_entropy(X, T, label_smoothing=1.5), ValueError, "label_smoothing"),
    (lambda: fd.cross_entropy(X, T, z_loss=-1.0), ValueError, "z_loss"),
    (lambda: fd.cross_entropy(X, T, softcap=0.0), ValueError, "softcap"),
    (lambda: fd.cross_entropy(X, T, ignore_index="a"), TypeError, "ignore_index"),
    (lambda: fd.cross_entropy(X, T, num_threads=0), ValueError, "num_threads"),
    (lambda: fd.logsumexp(X, softcap=-1.0), ValueError, "softcap"),
    (lambda: fd.logsumexp(X[X[:, 0] > 0]), ValueError, "logits"),
])
def test_bad_arguments_are_named_when_the_graph_is_built(call, error, name):
    with pytest.raises(error, match=f"^{name}"):
        call()


@pytest.mark.parametrize("shape", [(3, 0), (2, 5, 0)])
def test_logits_of_no_class_are_named_with_their_shape(shape):
    """Found by hunt14: the error named the shape of the zero-row probe, (0, 0)."""
    for call in (lambda: fd.cross_entropy(np.zeros(shape), np.zeros(shape[:-1], np.int64)),
                 lambda: fd.logsumexp(np.zeros(shape))):
        with pytest.raises(ValueError, match=rf"^logits: .*{re.escape(str(shape))}"):
            call()


def test_a_class_index_out_of_range_raises_at_compute():
    loss = fd.cross_entropy(X, np.array([0, 1, 2, 3, 0, 1, 2, 4, 0, 0]))
    with pytest.raises(ValueError, match="^target"):
        loss.compute(scheduler="sync")


@pytest.mark.parametrize("chunks", [(2, 2, -1), (3, 3, 4), (1, 5, 2), (4, 5, -1)])
def test_a_class_index_out_of_range_is_named_by_its_position_in_the_whole_array(chunks):
    """The error names the value and its position as the in-memory call does, not its
    position in its chunk (found by hunt14: "at position (0,)" for the row 6 of the
    logits, the first of its chunk), with chunks of rows and of classes."""
    logits = np.zeros((4, 5, 6))
    target = np.zeros((4, 5), np.int64)
    target[3, 4] = -7
    with pytest.raises(ValueError) as in_memory:
        fastloss.cross_entropy(logits, target)
    loss = fd.cross_entropy(da.from_array(logits, chunks=chunks), target)
    with pytest.raises(ValueError) as chunked:
        loss.compute(scheduler="sync")
    assert str(chunked.value) == str(in_memory.value)
    assert "at position (3, 4)" in str(chunked.value)


def test_without_dask_the_import_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask", None)
    monkeypatch.setitem(sys.modules, "dask.array", None)
    with pytest.raises(ImportError, match=r"pip install \"fastloss\[dask\]\""):
        fd.cross_entropy(np.zeros((2, 3)), np.zeros(2, np.int64))
    with pytest.raises(ImportError, match=r"fastloss\[dask\]"):
        fd.logsumexp(np.zeros((2, 3)))


def test_importing_fastloss_and_fastloss_dask_imports_no_dask(tmp_path):
    code = ("import sys, fastloss, fastloss.dask; "
            "print(any(m == 'dask' or m.startswith('dask.') for m in sys.modules))")
    # from a directory without a fastloss source tree (python -c puts the current
    # directory first on sys.path: an unbuilt checkout would shadow the installed package)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True, cwd=tmp_path).stdout
    assert out.strip() == "False"
