"""Peak resident memory of one linear cross-entropy forward+backward, beside torch's.

Each variant runs in a fresh interpreter: it builds the inputs (hidden N x H, classifier
V x H, float32) and the arrays the gradients go to, runs the variant once on small
inputs (code, threads), resets the peak resident set (/proc/self/clear_refs, "5"), makes
the call, and reports VmHWM - VmRSS before it: every byte any layer touched. The returned
gradients (hidden's and classifier's, the inputs' size) are preallocated for fastloss
(out=) and counted apart for torch (they land in .grad), so both columns are the memory
beyond the inputs and the gradients.

    python benchmarks/linear_cross_entropy_memory.py [N H V]

Linux only (/proc). Prints one line per variant, in MiB and as a share of the N x V
logits.
"""
import json
import os
import subprocess
import sys

CHILD = r"""
import json, sys
import numpy as np

variant = sys.argv[1]
n_rows, n_features, n_classes = (int(a) for a in sys.argv[2:5])


def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024


def setup(scale):
    rng = np.random.default_rng(0)
    rows, classes = max(1, n_rows // scale), max(2, n_classes // scale)
    hidden = rng.standard_normal((rows, n_features), dtype=np.float32)
    classifier = rng.standard_normal((classes, n_features), dtype=np.float32) * np.float32(
        2 / np.sqrt(n_features))
    target = rng.integers(0, classes, rows)
    if variant.startswith("fastloss"):
        import fastloss
        out = (np.zeros_like(hidden), np.zeros_like(classifier))
        block_rows = 256 if variant == "fastloss block_rows=256" else None
        return (lambda: fastloss.linear_cross_entropy_value_and_grad(
            hidden, classifier, target, out=out, block_rows=block_rows)), 0
    import torch
    import torch.nn.functional as F
    h = torch.from_numpy(hidden).requires_grad_()
    w = torch.from_numpy(classifier).requires_grad_()
    t = torch.from_numpy(target)
    if variant == "torch F.linear + F.cross_entropy":
        call = lambda: F.cross_entropy(F.linear(h, w), t).backward()
    elif variant == "torch F.linear_cross_entropy":
        call = lambda: F.linear_cross_entropy(h, w, t).backward()
    else:
        options = torch.nn.LinearCrossEntropyOptions()
        call = lambda: F.linear_cross_entropy(h, w, t, options=options).backward()
    return call, hidden.nbytes + classifier.nbytes


warm, _ = setup(16)
warm()
call, returned = setup(1)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS")
call()
print(json.dumps({"extra": status("VmHWM") - before, "returned": returned}))
"""

VARIANTS = ("fastloss linear_cross_entropy_value_and_grad", "fastloss block_rows=256",
            "torch F.linear + F.cross_entropy", "torch F.linear_cross_entropy",
            "torch F.linear_cross_entropy(options=LinearCrossEntropyOptions())")


def measure(variant, size):
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([here] + ([env["PYTHONPATH"]]
                                                  if env.get("PYTHONPATH") else []))
    completed = subprocess.run([sys.executable, "-c", CHILD, variant, *map(str, size)],
                               env=env, cwd=os.path.expanduser("~"), capture_output=True,
                               text=True, timeout=1200)
    if completed.returncode != 0:
        return None, completed.stderr.strip().splitlines()[-1]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    return report["extra"] - report["returned"], ""


def main(argv):
    size = tuple(int(a) for a in argv[1:4]) if len(argv) >= 4 else (2048, 1024, 32000)
    logits = size[0] * size[2] * 4
    print(f"N={size[0]} H={size[1]} V={size[2]} float32: logits {logits / 2**20:.0f} MiB; "
          f"peak RSS growth beyond the inputs and the returned gradients")
    for variant in VARIANTS:
        extra, error = measure(variant, size)
        if extra is None:
            print(f"  {variant:70s} failed: {error}")
        else:
            print(f"  {variant:70s} {extra / 2**20:8.1f} MiB  {100 * extra / logits:5.1f}% "
                  f"of the logits")


if __name__ == "__main__":
    main(sys.argv)
