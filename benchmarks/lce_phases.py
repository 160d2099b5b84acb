"""Where one linear_cross_entropy step's time goes, phase by phase, at a thread count.

    python benchmarks/lce_phases.py [--threads T] [--block-rows R] [--rounds K]
                                    [--size N H V] [--json FILE]

Runs the NumPy API's block schedule (fastloss/linear_cross_entropy.py, ``_schedule`` with
``_NumpyProducts``) with a clock around each phase of each block: the logits' product,
the engine's statistics, the engine's gradient, the classifier's gradient (its products
and its additions timed apart) and the hidden's gradient; beside the three products alone
(``h @ W.T``, ``G @ W``, ``G.T @ h`` on the whole arrays) and the real call
(``linear_cross_entropy_value_and_grad``, and the same with the classifier's gradient by
matmul's tiles instead of the BLAS's accumulation), all in this process, taken in turn, medians
of ``--rounds``; ``--clock cpu`` reads process_time instead (the CPU time of
every thread, spinning included). The thread count is set before NumPy loads (OPENBLAS_NUM_THREADS,
OMP_NUM_THREADS), so run one process per count. Wall time (perf_counter), not CPU time:
at 2 threads the question is how the two cores are shared.
"""
import argparse
import importlib
import json
import os
import sys
import time


def _parse():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--block-rows", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, nargs=3, default=(2048, 1024, 32000))
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="perf_counter, or process_time (the CPU time of every thread, "
                             "spinning included)")
    parser.add_argument("--json", default=None)
    return parser.parse_args()


def main():
    args = _parse()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(args.threads))
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import fastloss  # noqa: F401  (before NumPy: its OpenMP / OpenBLAS defaults)
    import numpy as np

    from fastloss import _kernels
    lce = importlib.import_module("fastloss.linear_cross_entropy")

    n_rows, n_features, n_classes = args.size
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((n_rows, n_features), dtype=np.float32)
    classifier = (rng.standard_normal((n_classes, n_features), dtype=np.float32)
                  * np.float32(2.0 / np.sqrt(n_features)))
    target = rng.integers(0, n_classes, n_rows)
    out = (np.zeros_like(hidden), np.zeros_like(classifier))
    logits_full = np.zeros((n_rows, n_classes), np.float32)
    threads = args.threads

    def three_products():
        np.matmul(hidden, classifier.T, out=logits_full)
        np.matmul(logits_full, classifier, out=out[0])
        np.matmul(logits_full.T, hidden, out=out[1])

    def call():
        lce.linear_cross_entropy_value_and_grad(hidden, classifier, target, out=out,
                                                block_rows=args.block_rows,
                                                num_threads=threads)

    found = {dtype: lce._BlasGemm.get(dtype) for dtype in (np.dtype(np.float32),)}

    def call_tiles():
        """The call with the classifier's gradient by matmul's tiles (no BLAS
        accumulation), for the A/B in turn with ``call``."""
        lce._BlasGemm._found = dict.fromkeys(found)
        try:
            call()
        finally:
            lce._BlasGemm._found = dict(found)

    clock = time.perf_counter if args.clock == "wall" else time.process_time

    class Timed(lce._NumpyProducts):
        """_NumpyProducts with a clock around its products."""

        def __init__(self, *a, phases, **k):
            super().__init__(*a, **k)
            self.phases = phases

        def logits(self, start, stop):
            t = clock()
            result = super().logits(start, stop)
            self.phases["logits product"] += clock() - t
            return result

        def backward(self, start, stop, grad=None):
            grad = self.scratch[:stop - start]
            rows = self.hidden[start:stop]
            t = clock()
            self._classifier_grad(grad, rows, start)
            self.phases["dW products+adds"] += clock() - t
            t = clock()
            np.matmul(grad, self.classifier, out=self.grad_hidden[start:stop])
            self.phases["dh product"] += clock() - t

    def phased():
        phases = dict.fromkeys(("logits product", "stats kernel", "grad kernel",
                                "dW products+adds", "dh product", "loss from stats"), 0.0)
        t0 = clock()
        problem = lce._Problem(hidden, classifier, target, None, None, -100, "mean", 0.0,
                               0.0, None, half=True)
        rows = lce._budget_block_rows(n_rows, n_classes, 4, args.block_rows)
        grads = lce._grad_outputs(out, problem, ("hidden", "classifier", "bias"))
        products = Timed(problem, rows, args.threads, grads, phases=phases)
        upstream, block_reduction, block_z_loss = lce._block_upstream(problem, 1.0)
        stats = np.empty((len(lce.CROSS_ENTROPY_STATS_FIELDS), n_rows), np.float64)
        for start in range(0, n_rows, rows):
            stop = min(start + rows, n_rows)
            logits = products.logits(start, stop)
            t = clock()
            block_stats = _kernels.ce_block_stats(logits, problem.target[start:stop], 0,
                                                  n_classes, None, -100, 0.0, None, threads)
            stats[:, start:stop] = block_stats
            phases["stats kernel"] += clock() - t
            t = clock()
            _kernels.ce_call(_kernels.CE_GRAD, logits, problem.target[start:stop], None,
                             -100, block_reduction, 0.0, block_z_loss, None, threads,
                             float(upstream[0]), None, logits, stats=block_stats)
            phases["grad kernel"] += clock() - t
            products.backward(start, stop)
        t = clock()
        _kernels.ce_from_stats(stats, problem.target, -100, "mean", 0.0, 0.0, False)
        phases["loss from stats"] += clock() - t
        total = clock() - t0
        phases["rest"] = total - sum(phases.values())
        phases["total"] = total
        return phases

    def timed(fn):
        t = clock()
        fn()
        return clock() - t

    call()
    three_products()
    phased()
    call_tiles()
    rows = {"three products": [], "value_and_grad": [], "value_and_grad, tiles": []}
    phase_rows = {}
    for _ in range(args.rounds):
        rows["three products"].append(timed(three_products))
        rows["value_and_grad"].append(timed(call))
        rows["value_and_grad, tiles"].append(timed(call_tiles))
        for name, value in phased().items():
            phase_rows.setdefault(name, []).append(value)
    med = {name: float(np.median(v)) for name, v in {**rows, **phase_rows}.items()}
    products_ms = med["three products"] * 1e3
    block = lce._budget_block_rows(n_rows, n_classes, 4, args.block_rows)
    print(f"clock={args.clock} threads={threads} N,H,V={tuple(args.size)} block_rows={block} "
          f"BLAS accumulation={'yes' if found[np.dtype(np.float32)] else 'no'} "
          f"load={os.getloadavg()[0]:.2f}")
    for name, seconds in med.items():
        ms = seconds * 1e3
        print(f"  {name:20s} {ms:9.1f} ms  {ms / products_ms:6.3f} x three products")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"threads": threads, "block_rows": block, "size": list(args.size),
                       "median_s": med}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
