"""Peak resident memory of one call, measured in a fresh interpreter: the parent side
shared by the memory tests (test_memory.py, test_linear_cross_entropy.py,
test_linear_token_log_probs.py).

tracemalloc sees only what Python and NumPy allocate; the kernels' scratch comes from C's
malloc. Each test's child script builds its inputs (every page written), warms the call
up on small inputs, resets its peak resident set (/proc/self/clear_refs, "5": VmHWM :=
VmRSS), makes the call, and prints a JSON line with VmHWM - VmRSS before the call.
"""
import json
import os
import subprocess
import sys

import pytest

import fastloss


#: the start of a child script: its imports, ``status(key)`` (a /proc/self/status field in
#: bytes) and ``touched(shape, value)`` (a float32 array with every page written)
CHILD_HEAD = r"""
import json
import sys

import numpy as np
import fastloss


def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024


def touched(shape, value=0.0):
    array = np.empty(shape, np.float32)
    array.fill(value)  # every page resident before the measurement
    return array
"""
#: the end of a child script that has defined ``warm`` and ``call`` (the call on small
#: and on full-size inputs): the bytes the full call touches beyond those resident before
CHILD_TAIL = r"""
warm()                             # code, OpenMP and BLAS threads
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS")
call()
print(json.dumps({"extra": status("VmHWM") - before}))
"""


def _can_reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


#: the measurement needs Linux's /proc/self/status and clear_refs
needs_proc = pytest.mark.skipif(
    not (os.path.exists("/proc/self/status") and _can_reset_peak()),
    reason="needs Linux's /proc/self/status and clear_refs")
#: AddressSanitizer's allocator (redzones, quarantine) and shadow memory are resident
#: memory of their own: the bounds are for the real allocator
needs_plain_malloc = pytest.mark.skipif(
    "libasan" in os.environ.get("LD_PRELOAD", ""),
    reason="under AddressSanitizer resident memory is the sanitizer's")


def run_child(script, args, cwd, timeout=300, **env_vars):
    """The JSON report (the last line of stdout) of ``script`` run with ``args`` by a
    fresh interpreter that imports the fastloss under test (the installed package, or
    the built checkout this process imported), OpenBLAS on one thread."""
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(fastloss.__file__)))
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", **env_vars)
    env["PYTHONPATH"] = os.pathsep.join(
        [package_parent] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    completed = subprocess.run([sys.executable, "-c", script, *map(str, args)], env=env,
                               cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])
