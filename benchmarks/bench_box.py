"""The box losses' fused value_and_grad against np.copyto of one box array.

    python benchmarks/bench_box.py [--n 23] [--rounds 5] [--threads T]

2**n pairs of float32 boxes (4 * 2**n values per array), reduction "mean"; for each of
giou_loss, diou_loss and ciou_loss times, in one process and taking turns (copy, loss,
copy, ...), np.copyto of boxes1 into a preallocated array, the value_and_grad w.r.t.
boxes1 (one gradient written) and w.r.t. both box arrays (two written). Prints the median
of each round's best-of-3 and the ratios to the copy, with the CPU model, the threads and
the load average (the ratios mean little on a machine others are using).
"""
import argparse
import os
import statistics
import time

import numpy as np

import fastloss


def best_of(function, repeats=3):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=23)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        fastloss.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    pairs = 1 << args.n
    corner = rng.uniform(0, 100, (pairs, 2)).astype(np.float32)
    side = rng.uniform(1, 20, (pairs, 2)).astype(np.float32)
    boxes1 = np.concatenate([corner, corner + side], axis=1)
    boxes2 = boxes1 + rng.normal(0, 2, boxes1.shape).astype(np.float32)
    copy = np.empty_like(boxes1)
    print(f"{cpu_model()}; {fastloss.get_num_threads()} threads; SIMD "
          f"{fastloss._kernels.build_info()['simd_path']}; load average "
          f"{os.getloadavg()[0]:.2f}; 2**{args.n} float32 box pairs, reduction mean")
    for kind in ("giou", "diou", "ciou"):
        value_and_grad = getattr(fastloss, f"{kind}_loss_value_and_grad")
        rows = {"copy": [], "wrt boxes1": [], "wrt both": []}
        for _ in range(args.rounds):
            rows["copy"].append(best_of(lambda: np.copyto(copy, boxes1)))
            rows["wrt boxes1"].append(best_of(lambda: value_and_grad(boxes1, boxes2)))
            rows["copy"].append(best_of(lambda: np.copyto(copy, boxes1)))
            rows["wrt both"].append(best_of(
                lambda: value_and_grad(boxes1, boxes2, wrt=("boxes1", "boxes2"))))
        copy_time = statistics.median(rows["copy"])
        line = f"{kind}_loss: np.copyto {copy_time * 1e3:.1f} ms"
        for name in ("wrt boxes1", "wrt both"):
            median = statistics.median(rows[name])
            line += f"; {name} {median * 1e3:.1f} ms = {median / copy_time:.2f}x copy"
        print(line)


if __name__ == "__main__":
    main()
