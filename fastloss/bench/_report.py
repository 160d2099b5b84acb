"""The printed tables under each family, with its targets."""

from fastloss.bench._cases import FAMILIES



# ----------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------

def _ms(value):
    """Milliseconds in 10 characters, with the decimals a small time needs."""
    if value < 0.1:
        return f"{value:10.4f}"
    return f"{value:10.3f}" if value < 10 else f"{value:10.1f}"


def _size_text(size):
    return ", ".join(f"{key}={value}" for key, value in zip(("N", "C", "D"), size))


def _format_targets(report):
    """The lines under a table: each target's ratio, and whether it is met where judged."""
    targets = report["targets"]
    if not targets:
        return []
    lines = ["", "Targets (medians; BENCHMARKS.md gives each one and its reason):"]
    not_judged = sorted({tuple(entry["judged_at"]) for entry in targets
                         if not entry["judged"] and entry["judged_at"]
                         and "not_judged" not in entry})
    for entry in targets:
        ratio = f"{entry['ratio']:7.2f}" if entry["ratio"] is not None else " " * 7
        if entry["ratio"] is None:
            verdict = f"not measured ({entry.get('not_measured', '')})"
        elif not entry["judged"]:
            verdict = f"not judged: {entry['not_judged']}" if "not_judged" in entry else \
                "not judged at this size"
        elif entry.get("exempt"):
            verdict = f"met (exempt: {entry['exempt']})"
        else:
            verdict = "met" if entry["met"] else "MISSED"
        if "cells" in entry and entry["ratio"] is not None:
            verdict += f" ({entry['cells_met']} of {entry['cells']} cells met; the worst shown)"
        lines.append(f"  {entry['target']:<44} {ratio}  {verdict}")
    for size in not_judged:
        sizes = ", ".join(f"{key}={value}" for key, value in zip(
            report["config"].get("size", {}), size))
        lines.append(f"  (set and judged at {sizes}, the size of `fastloss bench` without "
                     f"--quick: smaller inputs sit")
        lines.append("   in the caches and fixed costs weigh more, so their ratios differ)")
    return lines


def format_report(report):
    """The header and table as text."""
    if "grid" in report["config"]:
        return _format_grid_report(report)
    machine, cfg = report["machine"], report["config"]
    size = ", ".join(f"{key}={value}" for key, value in cfg["size"].items())
    lines = [
        f"fastloss bench: {cfg['title']}, {size}, {cfg['dtype']}",
        f"CPU: {machine['cpu']} ({machine['cpu_count']} cores, "
        f"{machine['available_cpus']} available), threads: {cfg['threads']}",
        f"numpy {machine['numpy']}, torch {machine['torch'] or 'not installed'}, "
        f"fastloss {machine['fastloss']} (simd: {cfg['fastloss'].get('simd_path')}, "
        f"openmp: {cfg['fastloss'].get('openmp')})",
        f"median (and min) of {cfg['repeat']} rounds (cases take turns, in an order of "
        f"their own each round) after {cfg['warmup']} warm-up call; "
        f"load average at start {machine['load_average_1min']}",
        "",
    ]
    width = max([len(row["name"]) for row in report["results"]]
                + [len(row["name"]) for row in report["skipped"]] + [4])
    lines.append(f"{'case':<{width}}  {'median ms':>10}  {'min ms':>10}  "
                 f"{'x copy':>7}  {'x max':>7}")
    lines.append("-" * (width + 44))
    for row in report["results"]:
        copy = f"{row['ratio_to_copy']:7.2f}" if row["ratio_to_copy"] is not None else " " * 7
        read = f"{row['ratio_to_max']:7.2f}" if row["ratio_to_max"] is not None else " " * 7
        lines.append(f"{row['name']:<{width}}  {_ms(row['median_ms'])}  "
                     f"{_ms(row['min_ms'])}  {copy}  {read}")
    for row in report["skipped"]:
        lines.append(f"{row['name']:<{width}}  skipped: {row['skipped']}")
    notes = [(row["name"], row["note"]) for row in report["results"] if row["note"]]
    if notes:
        lines.append("")
        lines.extend(f"  {name}: {note}" for name, note in notes)
    lines.extend(_format_targets(report))
    return "\n".join(lines)


def _format_grid_report(report):
    machine, cfg = report["machine"], report["config"]
    grid = "; ".join(f"{key} in {{{', '.join(str(value) for value in values)}}}"
                     for key, values in cfg["grid"].items())
    threads = ", ".join(str(count) for count in cfg["threads"])
    lines = [
        f"fastloss bench: {cfg['title']}",
        f"grid: {grid}; {', '.join(cfg['dtypes'])}; threads {threads}",
        f"CPU: {machine['cpu']} ({machine['cpu_count']} cores, "
        f"{machine['available_cpus']} available)",
        f"numpy {machine['numpy']}, torch {machine['torch'] or 'not installed'}, "
        f"fastloss {machine['fastloss']} (simd: {cfg['fastloss'].get('simd_path')}, "
        f"openmp: {cfg['fastloss'].get('openmp')})",
        f"median (and min) per cell of as many rounds as fit in {cfg['budget_s']} s per case "
        f"(at least {cfg['min_rounds']}, at most {cfg['max_rounds']}; the cases take turns) "
        f"after a warm-up call; load average at start {machine['load_average_1min']}",
        "",
    ]
    grid = FAMILIES[cfg["family"]]
    names = grid.ratio[::-1]  # the denominator's row, then the numerator's
    low, high = grid.labels
    size_names = list(cfg["grid"])
    header = "".join(f"{key:>7}" for key in size_names)
    lines.append(f"{header}  {'dtype':<8} {'threads':>7}  {low + ' ms':>10}  "
                 f"{high + ' ms':>10}  {high + '/' + low:>13}  rounds")
    lines.append("-" * (len(header) + 72))
    for row in report["results"]:
        sizes = "".join(f"{row[key]:>7}" for key in size_names)
        medians = [row["cases"][name]["median_ms"] if name in row["cases"] else None
                   for name in names]
        cells = "  ".join(_ms(value) if value is not None else " " * 10 for value in medians)
        ratio = f"{row['ratio']:13.2f}" if row["ratio"] is not None else " " * 13
        verdict = "" if row["met"] is None else ("" if row["met"] else "  MISSED")
        lines.append(f"{sizes}  {row['dtype']:<8} {row['threads']:>7}  {cells}  {ratio}  "
                     f"{row['rounds']:>6}{verdict}")
    lines.append("")
    lines.append(f"  {low}: {names[0]}; {high}: {names[1]}"
                 + (f" ({grid.note})" if grid.note else ""))
    if report["skipped"]:
        lines.append("")
        lines.extend(f"  skipped: {row['name']}: {row['skipped']}" for row in report["skipped"])
    lines.extend(_format_targets(report))
    return "\n".join(lines)
