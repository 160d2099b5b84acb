"""The kernels' SIMD paths, for tests that run every path in one test (the ``simd_path``
fixture in conftest.py runs a test once per path)."""

import contextlib

from fastloss import _kernels

PATHS = ("baseline", "avx2", "avx512")


@contextlib.contextmanager
def simd_paths():
    """``with simd_paths() as paths: for path in paths: ...`` runs the loop's body with
    each path this CPU and build can run forced in turn; the process's path is put back
    when the block ends, however it ends."""
    saved = _kernels.build_info()["simd_path"]

    def each():
        for path in PATHS:
            try:
                _kernels.set_simd_path(path)
            except ValueError:
                continue
            yield path

    try:
        yield each()
    finally:
        _kernels.set_simd_path(saved)


def available_paths():
    """The paths this CPU and build can run."""
    with simd_paths() as paths:
        return list(paths)


@contextlib.contextmanager
def on_path(path):
    """Force one path inside the block."""
    saved = _kernels.build_info()["simd_path"]
    _kernels.set_simd_path(path)
    try:
        yield path
    finally:
        _kernels.set_simd_path(saved)
