"""The benchmark table's types: a Family of Cases (or a Grid), what a case Times, and
the performance Targets judged on them."""
import dataclasses
from typing import Callable, Optional

import numpy as np



# ----------------------------------------------------------------------------------------
# The table's types
# ----------------------------------------------------------------------------------------

@dataclasses.dataclass
class Timed:
    """A call to time. ``prepare`` runs, untimed, before every call (e.g. to restore
    logits that an in-place call overwrote). The reported times are the measured ones
    multiplied by ``scale`` (for a case timed on a slice of the rows)."""

    call: Callable[[], object]
    prepare: Optional[Callable[[], object]] = None
    scale: float = 1.0
    note: str = ""


class Unavailable(Exception):
    """Raised by a case's setup when the case cannot run on this machine (e.g.
    torch.compile fails); the message is the reason the report gives."""


@dataclasses.dataclass(frozen=True)
class Case:
    """One row of the table.

    ``setup(inputs, threads)`` returns a ``Timed``, or None when the case cannot run
    here (``requires`` names the missing module for the report), or raises
    ``Unavailable`` with the reason. ``role`` marks the family's baselines: ``"copy"``
    (read + write) and ``"read"`` (read only). ``read_only`` rows are also compared with
    the read baseline. ``compiles`` marks the torch.compile rows, which ``--no-compile``
    leaves out (compiling takes seconds to half a minute).
    """

    name: str
    setup: Callable[[dict, int], Optional[Timed]]
    role: str = ""
    read_only: bool = False
    requires: str = ""
    compiles: bool = False


@dataclasses.dataclass(frozen=True)
class Family:
    """A loss family's benchmark: its input maker, sizes and cases.

    ``make_inputs(size, dtype)`` returns a dict of arrays shared by all cases (cases may
    add their own entries, e.g. a precomputed lse). ``sizes`` maps "full" and "quick"
    to the default size tuple; ``size_names`` names its entries (e.g. ("N", "C")).
    ``repeats`` maps "full" and "quick" to the default number of timed rounds (10 and
    5 unless given: a family of short calls takes more).
    """

    name: str
    title: str
    make_inputs: Callable[[tuple, np.dtype], dict]
    sizes: dict
    size_names: tuple
    cases: tuple
    dtype: str = "float32"
    repeats: Optional[dict] = None


@dataclasses.dataclass(frozen=True)
class Target:
    """A performance target: ``numerator`` / ``denominator`` (the medians of two rows)
    at most (``sense="max"``) or at least (``"min"``) ``bound``. It is judged only at
    ``size``, the size it is set for; at other sizes (``--quick``) the ratio is shown
    for reference. ``size=None``: judged at every size (a grid's targets, set per cell).

    ``min_threads``: judged only in a run with at least that many threads (a speed-up
    from threads; the run's own thread count, so ``--threads 1`` shows it unjudged).
    ``unless``: another target of the same run that, when met, exempts this one (the
    speed-up from threads is not asked of a call that one thread already runs at the
    memory system's limit); the report says "met (exempt: ...)".
    """

    text: str
    numerator: str
    denominator: str
    bound: float
    sense: str
    size: Optional[tuple] = None
    min_threads: int = 1
    unless: Optional["Target"] = None

    def met(self, ratio):
        return ratio <= self.bound if self.sense == "max" else ratio >= self.bound
