"""``fastloss bench``: the side-by-side benchmark table.

Everything is timed in one process on the same arrays and reported as ratios to two
memory-bound baselines measured in the same run: ``np.copyto`` of the input (one read
and one write, the limit for a fused loss and gradient) and a read-only reduction
(the limit for a forward pass). The performance targets printed under each table, and
the sizes at which they are judged, are described in BENCHMARKS.md.

The benchmarks are a table. A ``Family`` makes the shared inputs of one problem size
(``make_inputs``) and lists its ``Case`` rows; each case turns those inputs into a
``Timed`` (the call to time, an optional untimed ``prepare`` run before every call, and
a ``scale`` for cases timed on a slice). A ``Grid`` times a few cases over many small
problem sizes, one line per size (``grid_cells`` lists them). ``FAMILIES`` holds them
all; ``TARGETS`` the performance targets of each, with the size at which each is judged.
Each family has "full", "quick" and "tiny" sizes (tiny: for the tests and
``FASTLOSS_BENCH_TINY=1`` in ``benchmarks/``, a check that every case runs).

The package keeps those parts apart: ``_types`` (the table's types), ``_cases`` (every
family's inputs, cases and targets: one set, which ``benchmarks/`` runs under
pytest-benchmark too), ``_run`` (timing and the machine's facts), ``_report`` (the
printed tables), ``_plot`` (``--plot``) and ``_main`` (the command).
"""
from fastloss.bench._cases import (
    CE_FULL_SIZE,
    CONTRASTIVE,
    CROSS_ENTROPY,
    CROSS_ENTROPY_FEW_CLASSES,
    CONTRASTIVE_PIECES,
    CROSS_ENTROPY_SMALL,
    ELEMENTWISE,
    ELEMENTWISE_SMALL,
    FAMILIES,
    TARGETS,
    Grid,
    grid_cells,
    _torch,  # noqa: F401 (for benchmarks/ and the tests)
)
from fastloss.bench._main import main
from fastloss.bench._plot import have_matplotlib, plot_reports
from fastloss.bench._report import format_report
from fastloss.bench._run import _judge, cpu_model, machine_info, run  # noqa: F401 (_judge: tests)
from fastloss.bench._types import Case, Family, Target, Timed, Unavailable

__all__ = ["Case", "Family", "FAMILIES", "Grid", "Target", "TARGETS", "Timed", "Unavailable",
           "CE_FULL_SIZE", "CONTRASTIVE", "CROSS_ENTROPY", "CROSS_ENTROPY_FEW_CLASSES",
           "CROSS_ENTROPY_SMALL", "ELEMENTWISE", "ELEMENTWISE_SMALL", "CONTRASTIVE_PIECES",
           "format_report", "grid_cells", "have_matplotlib",
           "cpu_model", "machine_info", "main", "plot_reports", "run"]
