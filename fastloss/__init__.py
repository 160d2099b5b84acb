"""fastloss: loss functions whose forward and backward passes run in C kernels
with OpenMP, behind a NumPy API.  See README.md and BENCHMARKS.md."""

__version__ = "0.1.0"

import os as _os


def _libgomp_loaded():
    """Whether a libgomp.so.1 (the name the extension links) is already loaded: asked of
    the dynamic loader (RTLD_NOLOAD; 20 us), which matches SONAMEs, as when it binds the
    extension. False where that cannot be asked (Windows)."""
    try:
        import ctypes

        ctypes.CDLL("libgomp.so.1", mode=_os.RTLD_NOLOAD)
    except (OSError, AttributeError, ImportError):
        return False
    return True


# libgomp's threads spin for about a millisecond (GOMP_SPINCOUNT 300000) after each of
# the kernels' parallel regions before they sleep, and a BLAS product that follows
# (contrastive_pairwise's, info_nce's) shares the cores with them meanwhile.  A short
# spin costs the kernels nothing measurable and takes a quarter off contrastive_pairwise
# at N = 1024.  Only a default, and never over the process's own OMP_WAIT_POLICY or
# GOMP_SPINCOUNT.  libgomp reads it once, when it loads: when a libgomp.so.1 is already
# loaded (torch imported first: torch's own copy, to which the extension then binds) it
# can no longer take effect, and setting it would only change the child processes this
# one starts.  show_config() says which applies; BENCHMARKS.md ("Two OpenMP runtimes in
# one process") has the measurements.
_openmp_at_import = {
    "libgomp_before": _libgomp_loaded(),
    "environment": {name: _os.environ.get(name)
                    for name in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")},
    "spincount_default_set": False,
}
if ("GOMP_SPINCOUNT" not in _os.environ and "OMP_WAIT_POLICY" not in _os.environ
        and not _openmp_at_import["libgomp_before"]):
    _os.environ["GOMP_SPINCOUNT"] = "10000"
    _openmp_at_import["spincount_default_set"] = True

# The other way round: OpenBLAS's threads (NumPy's BLAS) spin for 2**28 cycles (about
# 0.1 s) after each product before they sleep, and the kernels' OpenMP threads that follow
# a product (info_nce's pass over its similarities, between its three products) share the
# cores with them meanwhile: measured at twice the pass's time on 2 cores.  2**15 cycles
# (about 10 us, as GOMP_SPINCOUNT above) ends that.  Only a default, never over the
# process's own OPENBLAS_THREAD_TIMEOUT, and set only before NumPy (and its OpenBLAS,
# which reads it once when it loads) is imported.
_blas_at_import = {"thread_timeout_default_set": False}
if "OPENBLAS_THREAD_TIMEOUT" not in _os.environ and "numpy" not in __import__("sys").modules:
    _os.environ["OPENBLAS_THREAD_TIMEOUT"] = "15"
    _blas_at_import["thread_timeout_default_set"] = True


def _unbuilt_checkout_error():
    """The ImportError for a copy of fastloss whose C extension was never built.

    A source checkout holds fastloss/ without the compiled ``_kernels`` module until
    ``pip install -e .`` (or ``python setup.py build_ext --inplace``) builds it there. When
    the current directory comes first on ``sys.path`` (``python -m pytest``, ``python -c``,
    ``python -m fastloss`` in the checkout), that copy hides an installed fastloss, and
    the first ``from fastloss import _kernels`` would fail as a circular import. Say
    instead what happened and what to run; name the installed copy it hides, if any.
    """
    import importlib.machinery
    import sys

    package_dir = _os.path.dirname(_os.path.abspath(__file__))
    checkout = _os.path.dirname(package_dir)
    lines = [
        f"fastloss: the copy in {package_dir} has no compiled extension (fastloss._kernels): "
        f"it is a source checkout that was never built. Python imported it because its "
        f"directory comes first on sys.path (the current directory does, for python -m "
        f"and python -c).",
        f"  - to work on this checkout, build it in place: pip install -e . "
        f"(in {checkout})",
    ]
    installed = None
    try:  # the copy that sys.path would give without the checkout
        others = [entry for entry in sys.path
                  if _os.path.realpath(entry or _os.curdir) != _os.path.realpath(checkout)]
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec("fastloss", others) if find_spec else None
            if spec is not None and spec.origin and _os.path.realpath(
                    _os.path.dirname(spec.origin)) != _os.path.realpath(package_dir):
                installed = _os.path.dirname(spec.origin)
                break
    except Exception:  # the search only adds a hint; never hide the message itself
        installed = None
    if installed is not None:
        lines.append(f"  - to use the installed fastloss ({installed}), run from another "
                     f"directory (the test suite, pytest tests, finds it from here)")
    else:
        lines.append("  - or install it (pip install .) and run from another directory")
    return ImportError("\n".join(lines), name="fastloss._kernels")


# First, so that a checkout that was never built says so. The extension must sit in this
# package's own directory: an editable install of another checkout adds an import hook
# that would otherwise hand this copy's Python files that checkout's compiled kernels.
import importlib.machinery as _machinery

if _machinery.PathFinder.find_spec("fastloss._kernels", __path__) is None:
    raise _unbuilt_checkout_error() from None
del _machinery

from fastloss import reference
try:  # reads FASTLOSS_NUM_THREADS and FASTLOSS_SIMD
    from fastloss._config import get_num_threads, set_num_threads, show_config
except ValueError as _error:
    # the command line (`python -m fastloss`, the console script) says what is wrong in
    # one line, status 2, as argparse's usage errors; an import raises
    from fastloss import cli as _cli

    if _cli.invoked_as_command_line():
        _cli.exit_for_environment_error(_error)
    raise
from fastloss._kernels import release_memory
from fastloss import box as _box
from fastloss import contrastive as _contrastive
from fastloss import cross_entropy as _cross_entropy
from fastloss import distill as _distill
from fastloss import elementwise as _elementwise
from fastloss import linear_cross_entropy as _linear_cross_entropy
from fastloss import linear_token_log_probs as _linear_token_log_probs
from fastloss import preference as _preference
from fastloss._registry import LOSSES as _LOSSES

# Every loss's three public functions, by the registry's names: the elementwise ones are
# generated from their entries, the others written by hand in their family's module.
_FAMILY_MODULES = {"cross_entropy": _cross_entropy, "elementwise": _elementwise,
                   "box": _box, "contrastive": _contrastive, "distill": _distill,
                   "linear_cross_entropy": _linear_cross_entropy, "sequence": _preference}
# losses of a family whose functions live in a module of their own
_LOSS_MODULES = {"linear_token_log_probs": _linear_token_log_probs}
_PUBLIC = [loss.name + suffix for loss in _LOSSES.values()
           for suffix in ("", "_grad", "_value_and_grad")]
for _loss in _LOSSES.values():
    for _suffix in ("", "_grad", "_value_and_grad"):
        globals()[_loss.name + _suffix] = getattr(
            _LOSS_MODULES.get(_loss.name, _FAMILY_MODULES[_loss.family]), _loss.name + _suffix)
del _loss, _suffix

# cross-entropy over blocks of classes (docs/block_statistics.rst)
from fastloss.cross_entropy import (CROSS_ENTROPY_STATS_FIELDS, cross_entropy_block_stats,
                                    cross_entropy_from_stats, cross_entropy_merge_stats,
                                    cross_entropy_rebase_stats)

_BLOCK_STATISTICS = ["CROSS_ENTROPY_STATS_FIELDS", "cross_entropy_block_stats",
                     "cross_entropy_from_stats", "cross_entropy_merge_stats",
                     "cross_entropy_rebase_stats"]

__all__ = ["__version__", "get_num_threads", "reference", "release_memory",
           "set_num_threads", "show_config", *_PUBLIC, *_BLOCK_STATISTICS]
