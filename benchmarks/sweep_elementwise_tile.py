"""The sweep behind FASTLOSS_EW_TILE (csrc/elementwise_internal.h).

    python benchmarks/sweep_elementwise_tile.py [--tiles 64,128,256,512,2048] [--n 25]

Builds the extension once per tile size (a compile-time constant) into temporary
copies of the source tree, then times, in one process and taking turns, the fused
value_and_grad of mse, bce_with_logits and huber with a per-class weight, and mse with
reduction "none", on 2**n float32 elements with every thread. Prints the median of each,
and its ratio to np.copyto of pred. Run it on an otherwise idle machine.
"""
import argparse
import importlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(tile, directory):
    """A copy of the source tree built in place with FASTLOSS_EW_TILE=tile."""
    for name in ("setup.py", "pyproject.toml", "csrc", "fastloss"):
        source = os.path.join(ROOT, name)
        target = os.path.join(directory, name)
        if os.path.isdir(source):
            shutil.copytree(source, target, ignore=shutil.ignore_patterns(
                "*.so", "*.c", "__pycache__") if name == "fastloss" else None)
        else:
            shutil.copy(source, target)
    environment = dict(os.environ, CFLAGS=f"-DFASTLOSS_EW_TILE={tile}")
    subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=directory,
                   env=environment, check=True, capture_output=True)


def load(directory):
    """Import the fastloss built in `directory` (a fresh module each time)."""
    for name in [name for name in sys.modules if name.split(".")[0] == "fastloss"]:
        del sys.modules[name]
    sys.path.insert(0, directory)
    try:
        return importlib.import_module("fastloss")
    finally:
        sys.path.pop(0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", default="64,128,256,512,2048")
    parser.add_argument("--n", type=int, default=25, help="log2 of the element count")
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    tiles = [int(text) for text in args.tiles.split(",")]

    workdir = tempfile.mkdtemp(prefix="fastloss-tile-")
    try:
        modules = {}
        for tile in tiles:
            directory = os.path.join(workdir, str(tile))
            os.mkdir(directory)
            build(tile, directory)
            modules[tile] = load(directory)

        n = 1 << args.n
        rng = np.random.default_rng(0)
        pred = rng.standard_normal(n, dtype=np.float32)
        target = rng.standard_normal(n, dtype=np.float32)
        labels = (rng.random(n, dtype=np.float32) < 0.5).astype(np.float32)
        weight = rng.uniform(0.5, 2.0, 1024).astype(np.float32)
        buffer = np.zeros_like(pred)
        rows = (-1, 1024)

        def cases(fastloss):
            return {
                "mse": lambda: fastloss.mse_value_and_grad(pred, target, out=buffer),
                "bce_with_logits": lambda: fastloss.bce_with_logits_value_and_grad(
                    pred, labels, out=buffer),
                "huber, weight (C=1024)": lambda: fastloss.huber_value_and_grad(
                    pred.reshape(rows), target.reshape(rows), weight=weight,
                    out=buffer.reshape(rows)),
                "mse, reduction none": lambda: fastloss.mse(pred, target, reduction="none"),
            }

        calls = {tile: cases(module) for tile, module in modules.items()}
        calls["copy"] = {"np.copyto": lambda: np.copyto(buffer, pred)}
        times = {(key, case): [] for key, group in calls.items() for case in group}
        for round_index in range(args.repeat + 1):
            for key, group in calls.items():
                for case, call in group.items():
                    start = time.perf_counter()
                    call()
                    if round_index:  # the first round warms up
                        times[(key, case)].append(time.perf_counter() - start)
        copy = statistics.median(times[("copy", "np.copyto")])
        print(f"2**{args.n} float32 elements; np.copyto {copy * 1e3:.2f} ms; "
              f"median ms (x copy)")
        print(f"{'case':<24}" + "".join(f"{'tile ' + str(tile):>18}" for tile in tiles))
        for case in calls[tiles[0]]:
            cells = []
            for tile in tiles:
                median = statistics.median(times[(tile, case)])
                cells.append(f"{median * 1e3:9.2f} ({median / copy:4.2f})")
            print(f"{case:<24}" + "".join(f"{cell:>18}" for cell in cells))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
