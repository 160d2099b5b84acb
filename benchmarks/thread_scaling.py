"""OpenMP scaling: fastloss's main kernels timed at 1, 2, 4, ... threads, beside torch.

    python benchmarks/thread_scaling.py [--threads 1 2 4 8 16] [--repeat R] [--json FILE]

Each row is one call at one thread count: the median of R calls (after one warm-up),
the speed-up over one thread, and the bytes it must move per second (inputs read once,
outputs written once), so the row can be read against the machine's memory bandwidth.
The cases are the headline sizes of `fastloss bench`: cross-entropy N=4096, C=50257
float32 (forward, and value_and_grad into a preallocated gradient), mse value_and_grad on
2**25 float32 elements, and torch's F.cross_entropy forward+backward at the same thread
count when torch is installed. np.copyto of the logits is the one-thread reference for
the bandwidth column (NumPy's copy runs on one thread).
"""
import argparse
import json
import os

import numpy as np

import fastloss
from fastloss._config import config
from fastloss.bench._run import cpu_model

from _timing import median_ms


def _cases(rng):
    n, c = 4096, 50257
    logits = rng.standard_normal((n, c), dtype=np.float32)
    target = rng.integers(0, c, n)
    grad = np.empty_like(logits)
    size = 2 ** 25
    pred = rng.standard_normal(size, dtype=np.float32)
    truth = rng.standard_normal(size, dtype=np.float32)
    grad_pred = np.empty_like(pred)
    ce_bytes = logits.nbytes
    cases = [
        ("cross_entropy forward", ce_bytes,
         lambda t: fastloss.cross_entropy(logits, target, num_threads=t)),
        ("cross_entropy value_and_grad (out=)", 2 * ce_bytes,
         lambda t: fastloss.cross_entropy_value_and_grad(logits, target, out=grad, num_threads=t)),
        ("mse value_and_grad (out=), 2**25", 3 * pred.nbytes,
         lambda t: fastloss.mse_value_and_grad(pred, truth, out=grad_pred, num_threads=t)),
    ]
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return cases, logits, grad
    logits_t = torch.from_numpy(logits)
    target_t = torch.from_numpy(target)

    def torch_ce(t):
        torch.set_num_threads(t)
        x = logits_t.detach().requires_grad_()
        F.cross_entropy(x, target_t).backward()

    cases.append(("torch F.cross_entropy forward+backward", 2 * ce_bytes, torch_ce))
    return cases, logits, grad


def main(argv=None):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    default_threads = [t for t in (1, 2, 4, 8, 16, 32, 64) if t <= cores]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=default_threads)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    cases, logits, grad = _cases(rng)
    copy_ms = median_ms(lambda: np.copyto(grad, logits), args.repeat)
    info = config()
    print(f"CPU: {cpu_model()} ({cores} cores usable); fastloss {info['version']}, "
          f"simd {info.get('simd_path', '?')}, openmp {info.get('openmp', '?')}")
    print(f"np.copyto of the logits (one thread): {copy_ms:.2f} ms, "
          f"{2 * logits.nbytes / copy_ms / 1e6:.1f} GB/s")
    print(f"{'case':44s} {'threads':>7s} {'median ms':>10s} {'speed-up':>9s} {'GB/s':>7s}")
    rows = []
    for name, nbytes, call in cases:
        base = None
        for t in args.threads:
            ms = median_ms(lambda: call(t), args.repeat)
            base = base or ms
            rows.append({"case": name, "threads": t, "median_ms": ms, "speedup": base / ms,
                         "gb_per_s": nbytes / ms / 1e6})
            print(f"{name:44s} {t:7d} {ms:10.2f} {base / ms:9.2f} {nbytes / ms / 1e6:7.1f}",
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_model(), "cores": cores, "copy_ms": copy_ms, "rows": rows},
                      f, indent=1)


if __name__ == "__main__":
    main()
