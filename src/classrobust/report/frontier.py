"""The calibration frontier's files, from its record (torch-free): frontier.csv, frontier_seeds.csv
(with two or more checkpoints), frontier.png and frontier.md, each naming the settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from classrobust.analysis.frontier import frontier_rows, seed_frontier
from classrobust.io import atomic_write_bytes, atomic_write_text
from classrobust.report.figures import PALETTE


def settings_line(record: dict[str, Any]) -> str:
    s = record["settings"]
    fit = s["fit_attack"]
    return (f"{s['dataset']}, {s['test_images']} test images (subset seed {s['subset_seed']}); evaluated with "
            f"{s['attacks_described']}; offsets fitted on {s['val_size']} validation images per checkpoint "
            f"(targeted margins, {fit['steps']} steps x {fit['n_targets']} targets, eps {fit['eps']:g} {fit['norm']}); "
            f"allowances in points of average validation robust accuracy")


def frontier_figure(rows, seeds) -> Figure:
    fig = Figure(figsize=(6.5, 4.4), layout="constrained")
    ax = fig.add_subplot()
    for i, (ckpt, part) in enumerate(rows.groupby("checkpoint", sort=False)):
        part = part.sort_values("average", ascending=False)
        ax.plot(part["average"], part["worst"], "o-", color=PALETTE[i % len(PALETTE)], alpha=0.5 if seeds is not None else 1,
                lw=1, ms=3, label=Path(ckpt).parent.name or ckpt)
    if seeds is not None:
        s = seeds.sort_values("average", ascending=False)
        ax.errorbar(s["average"], s["worst"], xerr=[s["average"] - s["average_low"], s["average_high"] - s["average"]],
                    yerr=[s["worst"] - s["worst_low"], s["worst_high"] - s["worst"]], fmt="s-", color="black",
                    lw=1.5, capsize=2, label="mean over checkpoints (95% t)")
    ax.set_xlabel("average robust accuracy (%), test")
    ax.set_ylabel("worst-class robust accuracy (%), test")
    ax.set_title("calibration frontier: per-class threshold shifts", fontsize=10)
    ax.invert_xaxis()  # left to right: more average given up
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def _allowance(a) -> str:
    return "none (uncalibrated)" if np.isnan(a) else f"{a:g}"


def write_frontier_files(record: dict[str, Any], out: Path) -> list[Path]:
    """Write the frontier's tables, plot and page into ``out`` (each atomically); returns the paths."""
    rows = frontier_rows(record)
    seeds = seed_frontier(rows) if rows["checkpoint"].nunique() >= 2 else None
    written = [out / "frontier.csv"]
    atomic_write_text(written[0], rows.to_csv(index=False, float_format="%.4g"))
    if seeds is not None:
        written.append(out / "frontier_seeds.csv")
        atomic_write_text(written[-1], seeds.to_csv(index=False, float_format="%.4g"))
    import io

    buffer = io.BytesIO()
    frontier_figure(rows, seeds).savefig(buffer, format="png", dpi=110)
    written.append(out / "frontier.png")
    atomic_write_bytes(written[-1], buffer.getvalue())
    lines = ["# Calibration frontier", "", settings_line(record), "",
             "| checkpoint | allowance (points) | average % [95% Wilson] | worst class % [95% Wilson] | worst class | "
             "validation estimate: average / worst |", "|---|---|---|---|---|---|"]
    for r in rows.itertuples():
        lines.append(f"| {r.checkpoint} | {_allowance(r.allowance)} | {r.average:.1f} [{r.average_low:.1f}, "
                     f"{r.average_high:.1f}] | {r.worst:.1f} [{r.worst_low:.1f}, {r.worst_high:.1f}] | {r.worst_class} | "
                     f"{r.val_average:.1f} / {r.val_worst:.1f} |")
    if seeds is not None:
        lines += ["", f"Over the {rows['checkpoint'].nunique()} checkpoints (the training run is the unit; 95% "
                  "Student-t intervals):", "",
                  "| allowance (points) | average % | worst class % | average change | worst-class change |",
                  "|---|---|---|---|---|"]
        for s in seeds.itertuples():
            change = ("", "") if np.isnan(s.allowance) else tuple(
                f"{getattr(s, c + '_change'):+.1f} [{getattr(s, c + '_change_low'):+.1f}, "
                f"{getattr(s, c + '_change_high'):+.1f}]" for c in ("average", "worst"))
            lines.append(f"| {_allowance(s.allowance)} | {s.average:.1f} [{s.average_low:.1f}, {s.average_high:.1f}] | "
                         f"{s.worst:.1f} [{s.worst_low:.1f}, {s.worst_high:.1f}] | {change[0]} | {change[1]} |")
    lines += ["", "![frontier](frontier.png)", ""]
    written.append(out / "frontier.md")
    atomic_write_text(written[-1], "\n".join(lines))
    return written
