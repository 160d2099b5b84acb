"""What each rank of tests/test_distributed.py runs (a module of its own so that the
spawned processes import it without the test module's fixtures)."""
import datetime
import itertools
import os
import traceback

import numpy as np

N_ROWS = 12
N_CLASSES = 37
# (rank -> [start, end)) per world size: uneven, and not in rank order for 3 ranks
SPLITS = {1: [(0, 37)], 2: [(0, 11), (11, 37)], 3: [(20, 37), (0, 5), (5, 20)]}


def data(dtype):
    """The whole batch, the same on every rank (and in the parent)."""
    rng = np.random.default_rng(7)
    logits = (rng.normal(size=(N_ROWS, N_CLASSES)) * 3.0).astype(dtype)
    logits[3, 30] = 40.0  # a row whose softmax is nearly one class (in the last slice)
    target = rng.integers(0, N_CLASSES, N_ROWS)
    target[[2, 7]] = -100  # ignored rows
    target[4], target[5] = 0, N_CLASSES - 1  # the vocabulary's two ends
    probabilities = rng.dirichlet(np.ones(N_CLASSES), N_ROWS).astype(dtype)
    weight = rng.uniform(0.2, 2.0, N_CLASSES).astype(dtype)
    upstream = rng.uniform(0.5, 1.5, N_ROWS)
    return logits, target, probabilities, weight, upstream


def cases():
    """dtype x target kind x reduction, each with 8 of the 16 combinations of the four
    on/off options (weight, label smoothing, z-loss, softcap): those with an even number
    on, in which every pair of options meets in all four of its combinations."""
    for dtype, soft, reduction in itertools.product(("float32", "float64"), (False, True),
                                                    ("mean", "sum", "none")):
        for weighted, smoothed, z, capped in itertools.product((False, True), repeat=4):
            if (weighted + smoothed + z + capped) % 2:
                continue
            yield dict(dtype=dtype, soft=soft, weighted=weighted,
                       label_smoothing=0.1 if smoothed else 0.0, z_loss=1e-3 if z else 0.0,
                       softcap=5.0 if capped else None, reduction=reduction)


def case_key(case):
    return "-".join(f"{k}={v}" for k, v in case.items())


def _init(rank, world, port):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))


def run_cases(rank, world, port, out_dir):
    """Every case on this rank: the loss and this rank's slice of the gradient."""
    try:
        import torch

        from fastloss.torch.distributed import vocab_parallel_cross_entropy

        _init(rank, world, port)
        start, end = SPLITS[world][rank]
        results = {}
        for case in cases():
            logits, target, probabilities, weight, upstream = data(case["dtype"])
            local = torch.tensor(logits[:, start:end], requires_grad=True)
            tgt = (torch.from_numpy(probabilities[:, start:end]) if case["soft"]
                   else torch.from_numpy(target))
            w = torch.from_numpy(weight[start:end]) if case["weighted"] else None
            loss = vocab_parallel_cross_entropy(
                local, tgt, vocab_start=start, weight=w,
                ignore_index=-1 if case["soft"] else -100, reduction=case["reduction"],
                label_smoothing=case["label_smoothing"], z_loss=case["z_loss"],
                softcap=case["softcap"], num_threads=1)
            if case["reduction"] == "none":
                loss.backward(torch.from_numpy(upstream.astype(case["dtype"])))
            else:
                loss.backward()
            key = case_key(case)
            results["loss:" + key] = loss.detach().numpy()
            results["grad:" + key] = local.grad.numpy()
            results["dtype:" + key] = np.array(str(loss.dtype))
        np.savez(os.path.join(out_dir, f"rank{rank}.npz"), **results)
        if world == 2:
            _bad_inputs(rank, out_dir)
        # every rank done with the group before any closes its connections
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    except BaseException:
        with open(os.path.join(out_dir, f"rank{rank}.error"), "w") as f:
            f.write(traceback.format_exc())
        raise
    # Results are on disk and the group is closed: leave without the interpreter's
    # teardown, where gloo's remaining threads can abort the process at exit
    # ("terminate called without an active exception", seen once in a CI run).
    os._exit(0)


# the bad inputs: name -> per rank (vocab_start, width, weight length, target override
# [, other arguments: "rows" of the batch, options])
BAD = {
    "overlap": [(0, 20, None, None), (15, 22, None, None)],
    "gap": [(0, 10, None, None), (12, 25, None, None)],
    "negative_start": [(-3, 20, None, None), (17, 20, None, None)],
    "not_from_zero": [(1, 18, None, None), (19, 18, None, None)],
    "target_outside": [(0, 20, None, 37), (20, 17, None, 37)],
    "weight_length": [(0, 20, 19, None), (20, 17, None, None)],
    # a start whose classes do not fit int64 (the slices are exchanged as int64)
    "start_beyond_int64": [(2**63 - 10, 20, None, None), (20, 17, None, None)],
    "vocab_size": [(0, 20, None, None), (20, 17, None, None)],
    # what the ranks must agree on (each would otherwise leave a rank waiting or give a
    # wrong loss): the class indices (one out of range on one rank only), the batch, options
    "targets_differ": [(0, 20, None, None), (20, 17, None, 4)],
    "target_outside_one_rank": [(0, 20, None, 37), (20, 17, None, None)],
    "rows_differ": [(0, 20, None, None), (20, 17, None, None, {"rows": 5})],
    "smoothing_differs": [(0, 20, None, None, {"label_smoothing": 0.1}),
                          (20, 17, None, None)],
    "reduction_differs": [(0, 20, None, None), (20, 17, None, None, {"reduction": "sum"})],
    "options_equal_as_numbers": [(0, 20, None, None, {"label_smoothing": 0.25}),
                                 (20, 17, None, None, {"label_smoothing": np.float64(0.25)})],
}


def _bad_inputs(rank, out_dir):
    """Each bad input on this rank (of 2): the exception's type and message (every rank
    must raise, or the next collective would wait forever)."""
    import torch

    from fastloss.torch.distributed import vocab_parallel_cross_entropy

    lines = []
    for name, per_rank in BAD.items():
        start, width, weight_length, target_value, *more = per_rank[rank]
        options = dict(more[0]) if more else {}
        rows = options.pop("rows", 4)
        local = torch.zeros(rows, width, dtype=torch.float64, requires_grad=True)
        target = torch.tensor([0, 1, 2, 3 if target_value is None else target_value,
                               4][:rows])
        weight = None if weight_length is None else torch.ones(weight_length,
                                                                dtype=torch.float64)
        try:
            loss = vocab_parallel_cross_entropy(
                local, target, vocab_start=start, weight=weight,
                vocab_size=36 if name == "vocab_size" else None, **options)
            lines.append(f"{name}\tnone\t{float(loss):.17g}")
        except (TypeError, ValueError, RuntimeError) as error:
            lines.append(f"{name}\t{type(error).__name__}\t{error}".replace("\n", " "))
    # the group still works after every one of them
    ok = torch.ones(1)
    torch.distributed.all_reduce(ok)
    lines.append(f"after\t{int(ok.item())}\t")
    with open(os.path.join(out_dir, f"bad{rank}.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
