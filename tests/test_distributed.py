"""fastloss.torch.distributed.vocab_parallel_cross_entropy on 1, 2 and 3 gloo ranks
(127.0.0.1, started by torch.multiprocessing with spawn): each rank's loss and slice of
the gradient against the float64 reference on the gathered logits, for every option;
bad input raising on every rank. Each world runs every case in one start (the 2-rank one
the bad inputs too; 35-50 s in all on 2 busy cores, most of it starting processes that
import torch), bounded: a world that does not finish in WORLD_TIMEOUT seconds fails."""
import os
import socket

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.distributed  # noqa: E402

if not torch.distributed.is_available():  # pragma: no cover
    pytest.skip("torch.distributed is not available", allow_module_level=True)

import _distributed_worker as worker  # noqa: E402
from fastloss import reference  # noqa: E402
from loss_specs import assert_close_contract  # noqa: E402

WORLD_TIMEOUT = 180.0


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(function, world, out_dir):
    """Run ``function(rank, world, port, out_dir)`` on ``world`` spawned ranks; fail (and
    end them) if they take more than WORLD_TIMEOUT seconds or any rank fails."""
    import time

    import torch.multiprocessing as mp

    context = mp.start_processes(function, args=(world, _free_port(), str(out_dir)),
                                 nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + WORLD_TIMEOUT
    finished = False
    try:
        # join(timeout) returns when one rank ends: False while others still run
        while not finished and time.monotonic() < deadline:
            finished = context.join(timeout=max(deadline - time.monotonic(), 0.01))
    except Exception as error:  # a rank raised: its traceback is in its .error file
        details = "".join(open(os.path.join(out_dir, name)).read()
                          for name in sorted(os.listdir(out_dir)) if name.endswith(".error"))
        pytest.fail(f"a rank of {world} failed: {error}\n{details}")
    if not finished:
        for process in context.processes:
            if process.is_alive():
                process.kill()
        pytest.fail(f"{world} ranks did not finish in {WORLD_TIMEOUT} s")


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    """Every case's results on 1, 2 and 3 ranks: {world: [results of each rank]}."""
    results = {"dir": {}}
    for world in (1, 2, 3):
        out_dir = tmp_path_factory.mktemp(f"world{world}")
        _start(worker.run_cases, world, out_dir)
        results[world] = [dict(np.load(out_dir / f"rank{rank}.npz"))
                          for rank in range(world)]
        results["dir"][world] = out_dir
    return results


def _reference(case):
    logits, target, probabilities, weight, upstream = worker.data(case["dtype"])
    tgt = probabilities if case["soft"] else target
    options = dict(weight=weight if case["weighted"] else None,
                   ignore_index=-1 if case["soft"] else -100, reduction=case["reduction"],
                   label_smoothing=case["label_smoothing"], z_loss=case["z_loss"],
                   softcap=case["softcap"])
    go = upstream if case["reduction"] == "none" else 1.0
    return (reference.cross_entropy(logits, tgt, **options),
            reference.cross_entropy_grad(logits, tgt, go, **options))


@pytest.mark.parametrize("case", list(worker.cases()), ids=worker.case_key)
def test_every_world_matches_the_gathered_reference(worlds, case):
    key = worker.case_key(case)
    ref_loss, ref_grad = _reference(case)
    for world in (1, 2, 3):
        ranks = worlds[world]
        grad = np.empty(ref_grad.shape, dtype=case["dtype"])
        for rank, results in enumerate(ranks):
            start, end = worker.SPLITS[world][rank]
            assert str(results["dtype:" + key]) == f"torch.{case['dtype']}"
            assert_close_contract(results["loss:" + key], ref_loss, case["dtype"], "loss",
                                  what=f"loss, rank {rank} of {world}")
            grad[:, start:end] = results["grad:" + key]
        assert_close_contract(grad, ref_grad, case["dtype"], "grad",
                              what=f"gradient gathered from {world} ranks")
        # every rank holds the same loss, to the bit
        for results in ranks[1:]:
            assert np.array_equal(results["loss:" + key], ranks[0]["loss:" + key])


def test_bad_input_raises_on_every_rank(worlds):
    """(The 2-rank world ran them after its cases.)"""
    tmp_path = worlds["dir"][2]
    expected = {
        "overlap": ("ValueError", "vocab_start: the ranks' slices overlap at class 20"),
        "gap": ("ValueError", "vocab_start: the ranks' slices leave a gap at class 10"),
        "negative_start": ("ValueError", "vocab_start: expected an integer >= 0, got -3"),
        "not_from_zero": ("ValueError", "vocab_start: the ranks' slices leave a gap at "
                                        "class 0"),
        "target_outside": ("ValueError", "target: value 37 at position (3,) is out of range "
                                         "for 37 classes"),
        "vocab_size": ("ValueError", "vocab_size: the ranks' slices cover 37 classes, "
                                     "not 36"),
        "targets_differ": ("ValueError", "target: the ranks' class indices differ: "
                                         "rank(s) [1] disagree with rank 0"),
        "target_outside_one_rank": ("ValueError", "target: the ranks' class indices differ: "
                                                  "rank(s) [1] disagree with rank 0"),
        "rows_differ": ("ValueError", "local_logits: the ranks' batch shapes "
                                      "(local_logits.shape[:-1]) differ: rank(s) [1]"),
        "smoothing_differs": ("ValueError", "options: the ranks' options (ignore_index, "
                                            "reduction, label_smoothing"),
        "reduction_differs": ("ValueError", "options: the ranks' options (ignore_index, "
                                            "reduction, label_smoothing"),
        "after": ("2", ""),
    }
    for rank in range(2):
        lines = (tmp_path / f"bad{rank}.txt").read_text().splitlines()
        seen = {name: (kind, message) for name, kind, message in
                (line.split("\t", 2) for line in lines)}
        for name, (kind, message) in expected.items():
            assert seen[name][0] == kind and seen[name][1].startswith(message), (rank, name,
                                                                                 seen[name])
        # the same smoothing as a Python float on one rank and a NumPy one on the other:
        # agreed, and the loss is the reference's on the gathered (zero) logits
        kind, message = seen["options_equal_as_numbers"]
        assert kind == "none", (rank, message)
        expected_loss = reference.cross_entropy(np.zeros((4, 37)), np.array([0, 1, 2, 3]),
                                                label_smoothing=0.25)
        assert abs(float(message) - expected_loss) <= 1e-12 * abs(expected_loss)
        for name, own in (("weight_length", "weight: expected this rank's slice of the class "
                                            "weights, shape (20,), got (19,)"),
                          ("start_beyond_int64", "vocab_start: expected classes within "
                                                 "int64, got 9223372036854775798 for 20")):
            kind, message = seen[name]
            assert kind == "ValueError", (rank, name, message)
            assert message.startswith(
                own if rank == 0 else "vocab_parallel_cross_entropy: bad input on rank(s) [0]"
            ), (rank, name, message)


def test_process_group_not_initialised():
    from fastloss.torch.distributed import vocab_parallel_cross_entropy

    assert not torch.distributed.is_initialized()
    with pytest.raises(RuntimeError, match="^group: torch.distributed is not initialised"):
        vocab_parallel_cross_entropy(torch.zeros(2, 3), torch.tensor([0, 1]), vocab_start=0)


def test_import_is_lazy(tmp_path):
    """import fastloss.torch does not import torch.distributed's wrapper until used (run
    from a directory without a fastloss source tree, which python -c would import first)."""
    import subprocess
    import sys

    code = ("import sys, fastloss.torch; "
            "assert 'fastloss.torch.distributed' not in sys.modules; "
            "import fastloss.torch as FL; FL.distributed.vocab_parallel_cross_entropy; "
            "print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.stdout.strip() == "ok", result.stderr


def test_module_forwards_its_options():
    from fastloss.torch.distributed import VocabParallelCrossEntropyLoss

    module = VocabParallelCrossEntropyLoss(5, label_smoothing=0.1, weight=torch.ones(3))
    assert module.vocab_start == 5 and module.label_smoothing == 0.1
    assert "weight" in dict(module.named_buffers())
    with pytest.raises(RuntimeError, match="^group: "):
        module(torch.zeros(2, 3), torch.tensor([5, 6]))
