"""fastloss.torch losses under ``torch.nn.parallel.DistributedDataParallel``.

Two processes (gloo on 127.0.0.1, started by ``torch.multiprocessing``) each train a copy
of a small model on their half of a batch for a few SGD steps; one process trains the same
model on the whole batch.  DDP all-reduces the gradients and divides by the number of
ranks, so with ``reduction="mean"`` over equal shards its gradient is

    (mean of shard 0 + mean of shard 1) / 2 = mean of the whole batch,

the single process's gradient: the parameters must agree after every step to within
float64 rounding.  The sums are grouped differently (each rank sums its own rows, then the
all-reduce adds the two partial results), so they are not bit-identical: each gradient
entry is a sum of at most 2B products of O(1) numbers, whose grouping changes it by a few
units of 2**-52 (about 1e-15); SGD with lr 0.1 and momentum 0.9 over K = 4 steps carries
each step's difference into the parameters scaled by at most lr * (1 + 0.9 + 0.9**2 +
0.9**3) < 0.35 per step, on a model whose Lipschitz constants are O(1).  The bound
asserted, 1e-13 absolute on O(1) parameters, is about 100x that estimate (about 1000x the
1e-16 measured) and 1e12 times smaller than the parameters' movement, which is asserted
too, so that a model that does not train cannot pass.

Rows that a mean leaves out (``ignore_index``, or class weights) make the per-rank means
differ from the whole batch's: the recipe of docs/distributed.rst (a sum over the rank's
rows, divided by the global count all-reduced first, times the number of ranks to undo
DDP's average) is tested to give the whole-batch mean with ignored rows unevenly spread.

Every process is bounded in time: the process group's collectives time out, and the parent
terminates the workers and fails if they have not finished by its own deadline.
"""
import datetime
import os
import socket
import time
import traceback

import pytest

torch = pytest.importorskip("torch")

import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

import fastloss.torch as FL  # noqa: E402

if not (dist.is_available() and dist.is_gloo_available()):
    pytest.skip("this torch has no torch.distributed with gloo", allow_module_level=True)

WORLD = 2
ROWS_PER_RANK = 12
FEATURES = 7
CLASSES = 5
STEPS = 4
LR = 0.1
ATOL = 1e-13              # float64 rounding of regrouped sums (module docstring)
MIN_MOVEMENT = 1e-3       # every case's parameters move at least this far from the start
DEADLINE_S = 120          # the workers must have finished by then (torch's import included)
COLLECTIVE_TIMEOUT_S = 60


# ----------------------------------------------------------------------------------------
# The cases: a model, a loss, and the data (the same on every process: seeded)
# ----------------------------------------------------------------------------------------

def _data(case):
    g = torch.Generator().manual_seed(1234 + CASES.index(case))
    n = WORLD * ROWS_PER_RANK
    x = torch.randn(n, FEATURES, generator=g, dtype=torch.float64)
    if case in ("cross_entropy", "cross_entropy_ignored"):
        y = torch.randint(0, CLASSES, (n,), generator=g)
        if case == "cross_entropy_ignored":
            # ignored rows unevenly spread: 1 on rank 0, 5 on rank 1
            y[[3, 13, 15, 18, 20, 23]] = -100
        return x, y
    return x, torch.randn(n, 3, generator=g, dtype=torch.float64)


def _model(case):
    torch.manual_seed(99)
    out = CLASSES if case.startswith("cross_entropy") else 3
    return torch.nn.Sequential(torch.nn.Linear(FEATURES, 6), torch.nn.Tanh(),
                               torch.nn.Linear(6, out)).double()


def _mean_loss(case, output, y):
    """The whole batch's loss, also each rank's loss under DDP where the means agree."""
    if case == "cross_entropy":
        return FL.cross_entropy(output, y, label_smoothing=0.1, z_loss=1e-3)
    if case == "mse":
        return FL.mse_loss(output, y)
    if case == "huber":
        return FL.huber_loss(output, y, delta=0.5)
    if case == "cross_entropy_ignored":
        return FL.cross_entropy(output, y, label_smoothing=0.1)
    raise ValueError(case)


def _ddp_loss(case, output, y):
    """A rank's loss under DDP: the mean's loss, except with ignored rows (the recipe)."""
    if case != "cross_entropy_ignored":
        return _mean_loss(case, output, y)
    counted = torch.tensor(float((y != -100).sum()), dtype=torch.float64)
    dist.all_reduce(counted)
    total = FL.cross_entropy(output, y, label_smoothing=0.1, reduction="sum")
    return total * dist.get_world_size() / counted


CASES = ["cross_entropy", "mse", "huber", "cross_entropy_ignored"]


def _train(case, model, x, y, loss_fn):
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss_fn(case, model(x), y).backward()
        optimizer.step()


def _parameters(model):
    return [p.detach().clone() for p in model.parameters()]


# ----------------------------------------------------------------------------------------
# The workers (module level, so that the spawn start method can import them)
# ----------------------------------------------------------------------------------------

def _worker(rank, port, out_dir):
    try:
        torch.set_num_threads(1)
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
            timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
        results = {}
        for case in CASES:
            x, y = _data(case)
            rows = slice(rank * ROWS_PER_RANK, (rank + 1) * ROWS_PER_RANK)
            model = torch.nn.parallel.DistributedDataParallel(_model(case))
            _train(case, model, x[rows], y[rows], _ddp_loss)
            results[case] = _parameters(model.module)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.destroy_process_group()
    except BaseException:
        with open(os.path.join(out_dir, f"rank{rank}.error"), "w") as f:
            f.write(traceback.format_exc())
        raise
    # the results are saved and the group closed: skip the interpreter's teardown, where
    # gloo's remaining threads can abort the process at exit (seen in tests/test_distributed)
    os._exit(0)


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_workers(out_dir):
    context = mp.start_processes(_worker, args=(_free_port(), str(out_dir)), nprocs=WORLD,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"the DDP workers did not finish within {DEADLINE_S} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
                process.join(5)


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp")
    _run_workers(out_dir)
    return [torch.load(out_dir / f"rank{rank}.pt") for rank in range(WORLD)]


@pytest.mark.parametrize("case", CASES)
def test_ddp_matches_one_process_on_the_whole_batch(ddp_results, case):
    x, y = _data(case)
    start = _parameters(_model(case))
    single = _model(case)
    _train(case, single, x, y, _mean_loss)
    expected = _parameters(single)

    # DDP keeps the replicas identical: the same all-reduced gradient on every rank
    for a, b in zip(ddp_results[0][case], ddp_results[1][case]):
        assert torch.equal(a, b), f"{case}: the ranks' parameters differ"

    movement = max(float((e - s).abs().max()) for e, s in zip(expected, start))
    assert movement > MIN_MOVEMENT, f"{case}: the model hardly trained ({movement})"
    for i, (got, want) in enumerate(zip(ddp_results[0][case], expected)):
        error = float((got - want).abs().max())
        assert error <= ATOL, f"{case}: parameter {i} differs by {error} (movement {movement})"


def test_per_rank_means_differ_with_uneven_ignored_rows():
    """The reason for the recipe: with ignored rows spread unevenly, the average of the two
    shards' means is not the whole batch's mean (so the test above can tell them apart)."""
    case = "cross_entropy_ignored"
    x, y = _data(case)
    model = _model(case)
    with torch.no_grad():
        output = model(x)
        whole = _mean_loss(case, output, y)
        halves = [_mean_loss(case, output[r * ROWS_PER_RANK:(r + 1) * ROWS_PER_RANK],
                             y[r * ROWS_PER_RANK:(r + 1) * ROWS_PER_RANK]) for r in range(WORLD)]
    assert abs(float(sum(halves) / WORLD - whole)) > 1e-3
