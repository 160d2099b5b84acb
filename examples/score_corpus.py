"""Score a corpus of logits larger than memory in one pass, with fastloss.dask.

The logits (float32, rows x classes) and the target class indices live in a store on
disk: a .npy file read through a memory map, or a zarr array. Dask reads them a chunk of
rows at a time; each chunk is one call of fastloss's cross-entropy kernel, which releases
the GIL, so the threaded scheduler scores chunks in parallel while the rest of the store
stays on disk. One pass over the store gives the per-row losses (written to a .npy file
beside it), the corpus's mean loss and perplexity, and the largest log-sum-exp.

    python examples/score_corpus.py                  # a small corpus (a few seconds)
    python examples/score_corpus.py --store zarr     # the same from a zarr store
    python examples/score_corpus.py --large          # 1.5x this machine's memory (disk!)

The store is written first (chunk by chunk, from a seeded generator, never whole in
memory) into --dir (default: a temporary folder, removed at the end). With the small
default, the scores are checked against fastloss.cross_entropy on the whole corpus in
memory; with --large, against the in-memory call on the first chunk.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

import fastloss

IGNORE_INDEX = -100


def _chunk_of_logits(seed, start, stop, classes):
    """Rows [start, stop) of the corpus: the same whatever the chunking."""
    rng = np.random.default_rng([seed, start])
    logits = rng.standard_normal((stop - start, classes), dtype=np.float32)
    target = rng.integers(0, classes, stop - start)
    target[rng.random(stop - start) < 0.05] = IGNORE_INDEX   # padding rows
    return logits, target


def write_store(kind, directory, rows, classes, chunk_rows, seed):
    """The logits and the targets, written chunk by chunk; returns the logits' path."""
    target = np.lib.format.open_memmap(os.path.join(directory, "target.npy"), mode="w+",
                                       dtype=np.int64, shape=(rows,))
    if kind == "npy":
        path = os.path.join(directory, "logits.npy")
        logits = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                           shape=(rows, classes))
    else:
        import zarr

        path = os.path.join(directory, "logits.zarr")
        logits = zarr.open_array(path, mode="w", shape=(rows, classes),
                                 chunks=(chunk_rows, classes), dtype=np.float32)
    for start in range(0, rows, chunk_rows):
        stop = min(start + chunk_rows, rows)
        logits[start:stop], target[start:stop] = _chunk_of_logits(seed, start, stop, classes)
    if kind == "npy":
        logits.flush()
    target.flush()
    del logits, target
    return path


def open_store(kind, path, directory, chunk_rows):
    """The logits and the targets as dask arrays of chunks of rows (nothing read yet)."""
    import dask.array as da

    if kind == "npy":
        logits = da.from_array(np.load(path, mmap_mode="r"), chunks=(chunk_rows, -1))
    else:
        logits = da.from_zarr(path).rechunk((chunk_rows, -1))
    target = da.from_array(np.load(os.path.join(directory, "target.npy"), mmap_mode="r"),
                           chunks=(chunk_rows,))
    return logits, target


def score(logits, target, out_path, workers):
    """One pass: the per-row losses stored to ``out_path``, and the corpus's totals."""
    import dask
    import dask.array as da

    import fastloss.dask

    loss, lse = fastloss.dask.cross_entropy(logits, target, ignore_index=IGNORE_INDEX,
                                            return_lse=True, num_threads=1)
    out = np.lib.format.open_memmap(out_path, mode="w+", dtype=loss.dtype, shape=loss.shape)
    stored = da.store(loss, out, compute=False, lock=False)
    counted = (target != IGNORE_INDEX).sum()
    # the store and the totals share the loss's tasks: every chunk is read once
    _, total, count, lse_max = dask.compute(stored, loss.astype(np.float64).sum(), counted,
                                            lse.max(), scheduler="threads",
                                            num_workers=workers)
    out.flush()
    return float(total), int(count), float(lse_max)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--classes", type=int, default=1_000)
    parser.add_argument("--large", action="store_true",
                        help="as many rows as make the store 1.5x this machine's memory")
    parser.add_argument("--chunk-rows", type=int, default=2_048)
    parser.add_argument("--store", choices=["npy", "zarr"], nargs="+", default=["npy"])
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--dir", help="where to write the store (kept); default a temporary "
                        "folder, removed at the end")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rows = args.rows
    if args.large:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        rows = int(1.5 * memory / (4 * args.classes)) + 1
    directory = args.dir or tempfile.mkdtemp(prefix="fastloss-corpus-")
    os.makedirs(directory, exist_ok=True)
    try:
        for kind in args.store:
            gib = rows * args.classes * 4 / 2**30
            print(f"{kind}: {rows} rows x {args.classes} classes of float32 ({gib:.2f} GiB)")
            start = time.perf_counter()
            path = write_store(kind, directory, rows, args.classes, args.chunk_rows, args.seed)
            print(f"  written in {time.perf_counter() - start:.1f} s to {path}")

            logits, target = open_store(kind, path, directory, args.chunk_rows)
            out_path = os.path.join(directory, f"loss-{kind}.npy")
            start = time.perf_counter()
            total, count, lse_max = score(logits, target, out_path, args.workers)
            seconds = time.perf_counter() - start
            mean = total / count
            print(f"  scored in {seconds:.2f} s ({rows / seconds:,.0f} rows/s, "
                  f"{args.workers} threads): mean loss {mean:.6f} over {count} rows, "
                  f"perplexity {np.exp(mean):.3f}, largest lse {lse_max:.4f}")

            # the check: the in-memory call on the whole corpus (small) or its first chunk
            check_rows = rows if not args.large else min(rows, args.chunk_rows)
            check_logits, check_target = _chunk_of_logits(args.seed, 0, check_rows,
                                                          args.classes) if args.large else (
                np.asarray(logits[:check_rows]), np.asarray(target[:check_rows]))
            want = fastloss.cross_entropy(check_logits, check_target, reduction="none",
                                          ignore_index=IGNORE_INDEX)
            got = np.load(out_path, mmap_mode="r")[:check_rows]
            if not np.array_equal(got, want):
                print(f"  check FAILED: the stored losses differ from fastloss.cross_entropy "
                      f"by up to {np.max(np.abs(got - want))}")
                return 1
            if not args.large:
                whole = fastloss.cross_entropy(check_logits, check_target,
                                               ignore_index=IGNORE_INDEX)
                if not np.isclose(mean, whole, rtol=1e-5, atol=0):
                    print(f"  check FAILED: mean {mean} != in-memory mean {whole}")
                    return 1
            print(f"  check: the losses of {check_rows} rows equal fastloss.cross_entropy's "
                  f"(bit for bit)")
    finally:
        if args.dir is None:
            shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
