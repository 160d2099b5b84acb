"""The timer of the standalone benchmark scripts (thread_scaling.py, bf16_step.py)."""
import statistics
import time


def median_ms(call, repeat, warmup=1):
    """The median wall time of ``repeat`` calls of ``call()`` in milliseconds, after
    ``warmup`` untimed calls (first touch of outputs, thread pools, allocators)."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)
