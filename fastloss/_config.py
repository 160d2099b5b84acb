"""Process-wide settings: the default thread count and the build facts."""
import operator
import os

from fastloss import _kernels

__all__ = ["get_num_threads", "set_num_threads", "show_config", "config", "resolve_num_threads",
           "EnvironmentVariableError"]


class EnvironmentVariableError(ValueError):
    """A FASTLOSS_* environment variable fastloss cannot use, found when it is imported:
    the message starts with the variable's name."""


def _parse_threads(value, name, environment=False):
    """An integer >= 1 from `value` (an int; a string only from the environment), at most
    MAX_THREADS."""
    message = f"{name}: expected an integer >= 1, got {value!r}"
    if isinstance(value, bool):
        raise ValueError(message)
    if isinstance(value, str) and not environment:
        # a count, not its text (as a float count: both are refused, not converted)
        raise ValueError(message)
    try:
        count = int(value, 10) if isinstance(value, str) else operator.index(value)
    except (TypeError, ValueError):
        raise ValueError(message) from None
    if count < 1:
        raise ValueError(message)
    # a thread count is an upper bound (the results are the same for any): one past what
    # OpenMP can create would end the process (libgomp: "Thread creation failed")
    return min(count, MAX_THREADS)


def _available_cpus():
    """The CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _default_threads():
    env = os.environ.get("FASTLOSS_NUM_THREADS", "").strip()
    if env:
        return _parse_threads(env, "FASTLOSS_NUM_THREADS", environment=True)
    return _available_cpus()


#: The most threads a call uses, whatever num_threads asks for: four per CPU this process
#: may use, at least 256 (more only oversubscribe the cores).
MAX_THREADS = max(256, 4 * _available_cpus())

try:
    _num_threads = _default_threads()
except ValueError as _error:
    raise EnvironmentVariableError(str(_error)) from None


def set_num_threads(n):
    """Set the default number of threads used by every kernel (n >= 1; at most
    fastloss._config.MAX_THREADS are used)."""
    global _num_threads
    _num_threads = _parse_threads(n, "n")


def get_num_threads():
    """The default number of threads: set_num_threads(), else FASTLOSS_NUM_THREADS,
    else the number of CPUs this process may use."""
    return _num_threads


def resolve_num_threads(num_threads):
    """`num_threads` of a call, or the process default when it is None."""
    if num_threads is None:
        return _num_threads
    return _parse_threads(num_threads, "num_threads")


def config():
    """The facts show_config() prints, as a dict."""
    from fastloss import __version__

    info = {"version": __version__}
    info.update(_kernels.build_info())
    info["default_threads"] = get_num_threads()
    info["available_cpus"] = _available_cpus()
    info["openmp_runtimes"] = ", ".join(openmp_runtimes()) or "none found"
    info["openmp_wait"] = _openmp_wait()
    return info


def openmp_runtimes():
    """The OpenMP runtimes mapped into this process: libgomp, LLVM's libomp, Intel's
    libiomp (paths, from /proc/self/maps: Linux; an empty list elsewhere). Two of them
    means two thread pools, each spinning on its own (benchmarks/omp_runtimes.py)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "omp" in line}
    except OSError:
        return []
    return sorted(path for path in paths
                  if os.path.basename(path).startswith(("libgomp", "libomp", "libiomp")))


def _openmp_wait():
    """How the OpenMP threads wait after a parallel region, and who chose it."""
    import fastloss

    state = fastloss._openmp_at_import
    own = {name: value for name, value in state["environment"].items() if value is not None}
    if own:
        return " ".join(f"{name}={value}" for name, value in own.items()) + \
            " (the process's own)"
    if state["spincount_default_set"]:
        return "GOMP_SPINCOUNT=10000 (fastloss's default)"
    return ("libgomp's default, GOMP_SPINCOUNT=300000: libgomp was loaded before fastloss "
            "(by torch, when it is imported first), so fastloss's default does not apply")


def show_config():
    """Print version, compiler, OpenMP, SIMD path and default threads."""
    info = config()
    width = max(len(key) for key in info)
    for key, value in info.items():
        print(f"{key:<{width}}  {value}")


_simd = os.environ.get("FASTLOSS_SIMD", "").strip()
if _simd:
    try:
        _kernels.set_simd_path(_simd)
    except ValueError as error:
        raise EnvironmentVariableError(
            f"FASTLOSS_SIMD: {error} (expected 'baseline', 'avx2' or 'avx512', "
            f"got {_simd!r})") from None
