"""``fastloss bench``: run the families, print, write JSON, plot."""
import json
import sys

from fastloss.bench._cases import FAMILIES
from fastloss.bench._plot import PLOT_REQUIREMENT, have_matplotlib, plot_reports
from fastloss.bench._report import format_report
from fastloss.bench._run import run


def main(*, quick=False, json_file=None, threads=None, repeat=None, size=None,
         progress=True, stream=None, family="all", plot_file=None, torch_compile=True):
    """Run the benchmark of one family (or of every family, in turn), print the tables,
    write JSON and the plot; return 0 (1 when ``plot_file`` is given and matplotlib is
    missing: checked before anything runs).

    The JSON document is one family's report, or ``{"reports": [...]}`` for several.
    ``size`` (the hidden ``--size``) needs a single family.
    """
    if plot_file is not None and not have_matplotlib():
        print(f"fastloss: error: {PLOT_REQUIREMENT}", file=sys.stderr)
        return 1
    stream = sys.stdout if stream is None else stream
    names = list(FAMILIES) if family == "all" else [family]
    if size is not None and len(names) != 1:
        raise ValueError("size: give one family with it")
    reports = []
    for name in names:
        report = run(name, quick=quick, size=size, threads=threads, repeat=repeat,
                     progress=progress, torch_compile=torch_compile)
        if reports:
            print("", file=stream)
        print(format_report(report), file=stream, flush=True)
        reports.append(report)
    if json_file is not None:
        with open(json_file, "w") as handle:
            json.dump(reports[0] if len(reports) == 1 else {"reports": reports}, handle,
                      indent=2)
            handle.write("\n")
    if plot_file is not None:
        plot_reports(reports, plot_file)
    return 0
