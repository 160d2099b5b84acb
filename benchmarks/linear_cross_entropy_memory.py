"""Peak resident memory and time of one linear cross-entropy forward+backward, beside
torch's.

Each variant runs in a fresh interpreter (so that its peak is its own, and no other
variant's thread pools are left spinning beside it): it builds the inputs (hidden N x H,
classifier V x H, float32 unless the variant says bfloat16) and, for the NumPy API, the
arrays the gradients go to; runs the variant once on small inputs (code, threads);
resets the peak resident set (/proc/self/clear_refs, "5"), makes the call, and reports
VmHWM - VmRSS before it: every byte any layer touched. The returned gradients (hidden's
and classifier's, the inputs' size) are preallocated for the NumPy API (out=) and
counted apart for torch's autograd (they land in .grad), so the memory column is the
memory beyond the inputs and the gradients. Then, with --repeats R, the call R times
more, timed (wall clock); the median is reported.

"three products" times the three products any implementation needs (``h @ W.T``,
``G @ W``, ``G.T @ h``, torch.matmul into preallocated results; G a random N x V
matrix), the floor of the others. "one block's logits product" is the BLAS alone: the
first product of one block of rows (fastloss's default height for the shape, 86 rows at
V=32000 float32), ``h[:rows] @ W.T``, into a result whose pages are already resident
(torch.mm: torch's BLAS, MKL on x86; np.matmul: NumPy's OpenBLAS), so that its growth is
the BLAS's own working memory for that shape (MKL keeps it for later calls of the shape).

``--warm-blas`` runs that block product with the variant's BLAS (torch's, or NumPy's
for the NumPy API; the variant's block height) after the warm-up and before the measured
call, so that the growth reported is the variant's own, beyond the BLAS's working memory
that any product of the shape has already allocated. Before the measurement the child
returns the C heap's free memory to the system (glibc's malloc_trim), so that memory
freed while setting up (the float32 inputs of a bfloat16 variant) is not reused
unseen by the measured call.

    python benchmarks/linear_cross_entropy_memory.py [N H V [VARIANT-SUBSTRING]]
        [--repeats R] [--skip SUBSTRING ...] [--warm-blas]

Linux only (/proc). Prints one line per variant: the median time, the peak resident
growth in MiB and as a share of the N x V float32 logits.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import ctypes, json, sys, time
import numpy as np
from fastloss.linear_cross_entropy import _budget_block_rows

variant = sys.argv[1]
n_rows, n_features, n_classes, repeats, warm_blas = (int(a) for a in sys.argv[2:7])


def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024


def block_height(rows, classes):
    # the rows of one block of the variant (fastloss's default unless it says 256)
    itemsize = 2 if "bfloat16" in variant else 4
    return _budget_block_rows(rows, classes, itemsize, 256 if "block_rows=256" in variant else None)


def setup(scale):
    rng = np.random.default_rng(0)
    rows, classes = max(1, n_rows // scale), max(2, n_classes // scale)
    hidden = rng.standard_normal((rows, n_features), dtype=np.float32)
    classifier = rng.standard_normal((classes, n_features), dtype=np.float32) * np.float32(
        2 / np.sqrt(n_features))
    target = rng.integers(0, classes, rows)
    block = block_height(rows, classes)
    if variant.startswith("one block's logits product (np.matmul"):
        logits = np.ones((block, classes), np.float32)  # resident before the call
        return (lambda: np.matmul(hidden[:block], classifier.T, out=logits)), 0
    if variant.startswith("fastloss linear_cross_entropy"):
        import fastloss
        out = (np.zeros_like(hidden), np.zeros_like(classifier))
        block_rows = 256 if "block_rows=256" in variant else None
        return (lambda: fastloss.linear_cross_entropy_value_and_grad(
            hidden, classifier, target, out=out, block_rows=block_rows)), 0
    import torch
    import torch.nn.functional as F
    dtype = torch.bfloat16 if "bfloat16" in variant else torch.float32
    h = torch.from_numpy(hidden).to(dtype).requires_grad_()
    w = torch.from_numpy(classifier).to(dtype).requires_grad_()
    t = torch.from_numpy(target)
    returned = h.nbytes + w.nbytes
    if variant.startswith("one block's logits product (torch.mm"):
        with torch.no_grad():
            logits = torch.ones((block, classes), dtype=dtype)  # resident before the call
        def call():
            with torch.no_grad():
                torch.mm(h[:block], w.T, out=logits)
        return call, 0
    if variant.startswith("three products"):
        with torch.no_grad():
            g = torch.randn(rows, classes).to(dtype)
            logits, grad_h, grad_w = torch.empty_like(g), torch.empty_like(h), torch.empty_like(w)
        def call():
            with torch.no_grad():
                torch.matmul(h, w.T, out=logits)
                torch.matmul(g, w, out=grad_h)
                torch.matmul(g.T, h, out=grad_w)
        return call, 0
    if variant.startswith("fastloss.torch"):
        import fastloss.torch as FL
        block_rows = 256 if "block_rows=256" in variant else None
        loss = lambda: FL.linear_cross_entropy(h, w, t, block_rows=block_rows)
    elif variant.startswith("torch F.linear + F.cross_entropy"):
        loss = lambda: F.cross_entropy(F.linear(h, w), t)
    elif "options" in variant:
        options = torch.nn.LinearCrossEntropyOptions()
        loss = lambda: F.linear_cross_entropy(h, w, t, options=options)
    else:
        loss = lambda: F.linear_cross_entropy(h, w, t)
    def call():
        h.grad = w.grad = None
        loss().backward()
    return call, returned


warm, _ = setup(16)
warm()
call, returned = setup(1)
if warm_blas:
    # the BLAS's working memory for a block's product, allocated before the measurement
    # by the variant's BLAS (NumPy's for the NumPy API, torch's otherwise)
    rng = np.random.default_rng(1)
    rows = rng.standard_normal((block_height(n_rows, n_classes), n_features),
                               dtype=np.float32)
    weights = rng.standard_normal((n_classes, n_features), dtype=np.float32)
    if "NumPy" in variant or "np.matmul" in variant:
        np.matmul(rows, weights.T)
    else:
        import torch
        dtype = torch.bfloat16 if "bfloat16" in variant else torch.float32
        with torch.no_grad():
            torch.mm(torch.from_numpy(rows).to(dtype), torch.from_numpy(weights).to(dtype).T)
    del rows, weights
trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc's
if trim is not None:
    trim(0)  # the heap's free memory back to the system
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS")
call()
extra = status("VmHWM") - before
times = []
for _ in range(repeats):
    started = time.perf_counter()
    call()
    times.append(time.perf_counter() - started)
print(json.dumps({"extra": extra, "returned": returned, "times": times}))
"""

VARIANTS = ("one block's logits product (torch.mm)",
            "one block's logits product (np.matmul)",
            "three products (torch.matmul)",
            "fastloss.torch.linear_cross_entropy",
            "fastloss.torch.linear_cross_entropy block_rows=256",
            "fastloss linear_cross_entropy_value_and_grad (NumPy API)",
            "fastloss linear_cross_entropy block_rows=256 (NumPy API)",
            "torch F.linear + F.cross_entropy",
            "torch F.linear_cross_entropy",
            "torch F.linear_cross_entropy(options=LinearCrossEntropyOptions())",
            "three products (torch.matmul) bfloat16",
            "fastloss.torch.linear_cross_entropy bfloat16",
            "torch F.linear + F.cross_entropy bfloat16")


def measure(variant, size, repeats=0, warm_blas=False):
    """(peak resident growth beyond the returned gradients, the timed seconds, error)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([here] + ([env["PYTHONPATH"]]
                                                  if env.get("PYTHONPATH") else []))
    completed = subprocess.run([sys.executable, "-c", CHILD, variant, *map(str, size),
                                str(repeats), str(int(warm_blas))],
                               env=env, cwd=os.path.expanduser("~"), capture_output=True,
                               text=True, timeout=3600)
    if completed.returncode != 0:
        lines = completed.stderr.strip().splitlines() or [f"exit {completed.returncode}"]
        return None, [], lines[-1]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    return report["extra"] - report["returned"], report["times"], ""


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("size", nargs="*", type=str,
                        help="N H V, and optionally a substring of the variants to run")
    parser.add_argument("--repeats", type=int, default=0,
                        help="timed calls after the measured one (default 0: memory only)")
    parser.add_argument("--warm-blas", action="store_true",
                        help="run one block's logits product with the variant's BLAS "
                             "before the measured call (its working memory not counted)")
    parser.add_argument("--skip", nargs="*", default=[],
                        help="leave out the variants containing any of these substrings")
    args = parser.parse_args(argv[1:])
    size = tuple(int(a) for a in args.size[:3]) if len(args.size) >= 3 else (2048, 1024, 32000)
    chosen = args.size[3] if len(args.size) >= 4 else ""
    logits = size[0] * size[2] * 4
    print(f"N={size[0]} H={size[1]} V={size[2]}: float32 logits {logits / 2**20:.0f} MiB; "
          f"peak RSS growth beyond the inputs and the returned gradients"
          f"{' and the BLAS working memory of a block product' if args.warm_blas else ''}"
          f"{'; median of %d timed calls' % args.repeats if args.repeats else ''}")
    for variant in VARIANTS:
        if chosen not in variant or any(skip in variant for skip in args.skip):
            continue
        extra, times, error = measure(variant, size, args.repeats, args.warm_blas)
        if extra is None:
            print(f"  {variant:66s} failed: {error}", flush=True)
            continue
        timing = f"{1000 * statistics.median(times):9.0f} ms" if times else ""
        print(f"  {variant:66s} {timing} {extra / 2**20:9.1f} MiB  "
              f"{100 * extra / logits:6.1f}% of the logits", flush=True)


if __name__ == "__main__":
    main(sys.argv)
