"""OpenMP is really on: the build has it, and a call with num_threads=n runs its kernel on n
threads of the operating system.

tests/test_threads.py proves that results do not depend on the thread count; a serial build
(or a kernel that never opens a parallel region) passes every one of those tests.  These
tests see the threads themselves: a fresh interpreter runs one family's kernel many times
with ``num_threads=n`` and reads each of its threads' CPU time from /proc; exactly n
threads must have worked.

A serial build (no OpenMP compiler flag, or FASTLOSS_NO_OPENMP=1) skips them and says why,
unless FASTLOSS_REQUIRE_OPENMP=1 (set by .ci/run), which makes a serial build fail.
"""
import json
import os
import subprocess
import sys

import pytest

import fastloss
from fastloss import _kernels

OPENMP = _kernels.build_info()["openmp"]
REQUIRED = os.environ.get("FASTLOSS_REQUIRE_OPENMP", "") not in ("", "0")


def require_openmp():
    """Fail (FASTLOSS_REQUIRE_OPENMP=1) or skip where the build is serial."""
    if OPENMP:
        return
    if REQUIRED:
        pytest.fail("FASTLOSS_REQUIRE_OPENMP=1 but this build of fastloss is serial "
                    "(fastloss info: openmp False)")
    pytest.skip("a serial build (no OpenMP): set FASTLOSS_REQUIRE_OPENMP=1 to fail instead")


def test_build_has_openmp():
    require_openmp()
    info = _kernels.build_info()
    assert info["openmp"] is True and info["openmp_max_threads"] >= 1


def test_fastloss_info_says_openmp_is_on():
    require_openmp()
    completed = subprocess.run([sys.executable, "-m", "fastloss", "info"],
                               capture_output=True, text=True, timeout=120, env=_child_env(),
                               cwd=_package_parent())
    assert completed.returncode == 0, completed.stderr
    lines = dict(line.split(None, 1) for line in completed.stdout.splitlines() if line.strip())
    assert lines.get("openmp", "").strip() == "True", completed.stdout


# The child: inputs of one family big enough to split (2**15 elements or more), the call
# repeated until the n-th busiest thread has MIN_TICKS of CPU time (or the busiest 20 times
# that, or 30 s), then
# every thread's CPU time in clock ticks.  BLAS runs on the calling thread
# (OPENBLAS_NUM_THREADS=1 and friends), so every other thread that works is the kernel's.
MIN_TICKS = 5
CHILD = r"""
import json, os, sys, time
import numpy as np
import fastloss

family, num_threads, min_ticks = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
if family == "cross_entropy":
    logits = rng.standard_normal((256, 16384), dtype=np.float32)
    target = rng.integers(0, 16384, 256)
    out = np.empty_like(logits)
    call = lambda: fastloss.cross_entropy_value_and_grad(logits, target, out=out,
                                                         num_threads=num_threads)
elif family == "mse":
    pred = rng.standard_normal(1 << 22, dtype=np.float32)
    target = rng.standard_normal(1 << 22, dtype=np.float32)
    out = np.empty_like(pred)
    call = lambda: fastloss.mse_value_and_grad(pred, target, out=out, num_threads=num_threads)
elif family == "contrastive":
    x1 = rng.standard_normal((1 << 15, 64), dtype=np.float32)
    x2 = rng.standard_normal((1 << 15, 64), dtype=np.float32)
    label = rng.integers(0, 2, 1 << 15)
    call = lambda: fastloss.contrastive_value_and_grad(x1, x2, label, num_threads=num_threads)
elif family == "contrastive_pairwise":
    x = rng.standard_normal((768, 8), dtype=np.float64)
    labels = rng.integers(0, 4, 768)
    call = lambda: fastloss.contrastive_pairwise_value_and_grad(x, labels,
                                                                num_threads=num_threads)
else:
    raise SystemExit(f"unknown family {family}")


def ticks():
    result = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # a thread that ended
            continue
        result[tid] = int(fields[11]) + int(fields[12])  # utime + stime
    return result


before = ticks()
start, calls = time.monotonic(), 0
while True:
    call()
    calls += 1
    gained = sorted((ticks().get(tid, 0) - before.get(tid, 0) for tid in ticks()),
                    reverse=True)
    if (len(gained) >= num_threads and gained[num_threads - 1] >= min_ticks
            and calls >= 4):
        break
    # enough: the n threads would have shared this much work by now (1 s of CPU time)
    if gained[0] >= 20 * min_ticks or time.monotonic() - start > 30:
        break
print(json.dumps({"calls": calls, "threads": len(gained), "gained": gained}))
"""


def _package_parent():
    return os.path.dirname(os.path.dirname(os.path.abspath(fastloss.__file__)))


def _child_env():
    env = dict(os.environ)
    for name in ("FASTLOSS_NUM_THREADS", "OMP_NUM_THREADS"):
        env.pop(name, None)
    # BLAS on the calling thread: any other thread that works is an OpenMP worker
    env.update(OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", BLIS_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [_package_parent()] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def threads_that_worked(family, num_threads):
    """(threads that gained CPU time, each thread's gain in clock ticks, calls made)."""
    completed = subprocess.run(
        [sys.executable, "-c", CHILD, family, str(num_threads), str(MIN_TICKS)],
        env=_child_env(), cwd=_package_parent(), capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    gained = report["gained"]
    return sum(1 for ticks in gained if ticks > 0), gained, report["calls"]


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="no /proc to read threads")
@pytest.mark.parametrize("family, num_threads", [
    ("cross_entropy", 1), ("cross_entropy", 2), ("cross_entropy", 3),
    ("mse", 2), ("contrastive", 2), ("contrastive_pairwise", 2),
])
def test_num_threads_is_the_threads_that_work(family, num_threads):
    require_openmp()
    working, gained, calls = threads_that_worked(family, num_threads)
    # n threads each did a share of the work (MIN_TICKS of CPU time, 50 ms at 100 Hz)...
    assert len(gained) >= num_threads and gained[num_threads - 1] >= MIN_TICKS, (
        f"{family} with num_threads={num_threads}: CPU ticks per thread {gained} after "
        f"{calls} calls; fewer than {num_threads} threads worked")
    # ... and no more: at most a tick of start-up noise on any other thread
    assert all(ticks <= 1 for ticks in gained[num_threads:]), (
        f"{family} with num_threads={num_threads}: CPU ticks per thread {gained}; more "
        f"threads than asked for worked")
