"""The plot of ``--plot`` (matplotlib is the optional extra "fastloss[plot]")."""
import textwrap




# ----------------------------------------------------------------------------------------
# The plot (--plot; matplotlib is an optional extra, "fastloss[plot]")
# ----------------------------------------------------------------------------------------

PLOT_REQUIREMENT = ("--plot needs matplotlib, which is not installed: "
                    "pip install 'fastloss[plot]' (or pip install matplotlib)")


def have_matplotlib():
    """Whether matplotlib can be imported (checked before a run that ends in a plot)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _bar_color(row):
    name = row["name"]
    if row.get("role"):
        return "0.6"  # the baselines: grey
    if name.startswith("fastloss"):
        return "tab:blue"
    if name.startswith("torch"):
        return "tab:red"
    return "tab:orange"  # the NumPy reference


def plot_reports(reports, path):
    """One horizontal bar chart per family: each case's median time as a multiple of the
    family's limit (its "copy" baseline), on a log scale; saved to ``path`` (PNG by its
    extension). Uses matplotlib's object API (no pyplot, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    heights = [max(len(report["results"]), 1) * (0.2 if "grid" in report["config"] else 0.32)
               + 1.2 for report in reports]
    figure = Figure(figsize=(10, sum(heights) + 0.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes_list = figure.subplots(len(reports), 1, squeeze=False,
                                gridspec_kw={"height_ratios": heights})[:, 0]
    machine = reports[0]["machine"]
    figure.suptitle(f"fastloss bench: {machine['cpu']}, threads {reports[0]['config']['threads']}"
                    f", numpy {machine['numpy']}, torch {machine['torch'] or 'not installed'}",
                    fontsize=10)
    for axes, report in zip(axes_list, reports):
        cfg = report["config"]
        if "grid" in cfg:
            _plot_grid(axes, report)
            continue
        rows = [row for row in report["results"] if row["ratio_to_copy"] is not None]
        limit = next((row["name"] for row in rows if row.get("role") == "copy"), "copy")
        names = [row["name"] for row in rows][::-1]
        ratios = [row["ratio_to_copy"] for row in rows][::-1]
        bars = axes.barh(names, ratios, color=[_bar_color(row) for row in rows][::-1])
        axes.bar_label(bars, labels=[f"{ratio:.2f}x" for ratio in ratios], padding=3,
                       fontsize=8)
        axes.set_xscale("log")
        axes.axvline(1.0, color="black", linewidth=0.8)
        axes.tick_params(axis="y", labelsize=8)
        size = ", ".join(f"{key}={value}" for key, value in cfg["size"].items())
        axes.set_title(textwrap.fill(f"{cfg['title']} ({size}, {cfg['dtype']})", 60),
                       fontsize=10, loc="left")
        axes.set_xlabel(f"median time / median of {limit} (log scale; lower is faster)",
                        fontsize=8)
        if ratios:
            axes.set_xlim(min(min(ratios), 1.0) / 1.5, max(max(ratios), 1.0) * 3)
    figure.savefig(path, dpi=120)


def _plot_grid(axes, report):
    """A grid's bars: its ratio per cell (e.g. torch's time over the adapter's)."""
    from fastloss.bench._cases import FAMILIES

    low, high = FAMILIES[report["config"]["family"]].labels
    rows = [row for row in report["results"] if row["ratio"] is not None]
    names = [row["name"] for row in rows][::-1]
    ratios = [row["ratio"] for row in rows][::-1]
    colors = ["tab:red" if row["met"] is False else "tab:blue" for row in rows][::-1]
    bars = axes.barh(names, ratios, color=colors)
    axes.bar_label(bars, labels=[f"{ratio:.2f}x" for ratio in ratios], padding=3, fontsize=7)
    axes.set_xscale("log")
    axes.axvline(1.0, color="black", linewidth=0.8)
    axes.tick_params(axis="y", labelsize=7)
    axes.set_title(textwrap.fill(report["config"]["title"], 60), fontsize=10, loc="left")
    axes.set_xlabel(f"{high} median / {low} median (log scale)", fontsize=8)
    if ratios:
        axes.set_xlim(min(min(ratios), 1.0) / 1.5, max(max(ratios), 1.0) * 3)
