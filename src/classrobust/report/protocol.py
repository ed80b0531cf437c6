"""The defense protocol's tables as markdown (torch-free): the screen's selection and the verdict."""

from __future__ import annotations

from typing import Any

import pandas as pd


def _points(mean: float, low: float, high: float) -> str:
    interval = "" if pd.isna(low) else f" [{100 * low:+.1f}, {100 * high:+.1f}]"
    return f"{100 * mean:+.1f}{interval}"


def screen_markdown(table: pd.DataFrame, attack: str, margin: float, keep: str) -> str:
    """The screen's table: per setting its validation average and mean paired change, its worst class,
    and what the rule did."""
    kept = "the best pick" if keep == "best" else "every lever's pick"
    lines = [f"Screen on validation images under {attack}: per lever, the setting with the highest mean worst-class "
             f"accuracy among those within {margin:g} points of their baseline's average (mean paired change); "
             f"kept: {kept}.", "",
             "| method | lever | against | seeds | average | Δ average [95% t] | worst class (own) | eligible | pick |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples(index=False):
        pick = "kept" if r.kept else "picked" if r.picked else ""
        lines.append(f"| {r.method} | {r.family} | {r.baseline_method} | {r.seeds} | {100 * r.avg:.1f} "
                     f"| {_points(r.avg_diff_mean, r.avg_diff_low, r.avg_diff_high)} | {100 * r.worst_any:.1f} "
                     f"| {'yes' if r.eligible else 'no'} | {pick} |")
    return "\n".join(lines) + "\n"


def verdict_markdown(table: pd.DataFrame, target: dict[str, Any], order: dict[str, Any],
                     gaps: pd.DataFrame | None = None) -> str:
    """The verdict table, the declared target it judges, the recorded order, and the frontier gaps."""
    lines = [f"Target under {target['attack']} (test split, seed-level): the worst class (the baseline's "
             f"validation-worst) gains at least +{target['worst_gain']:g} points, with paired t and exact sign-flip "
             f"p < {target['alpha']:g}; the average is non-inferior: its one-sided 95% lower bound over seeds is "
             f"above -{target['max_avg_drop']:g} points. A diverged run is a miss.",
             f"Order: screen read {order['screen_read_at']}, frozen {order['frozen_at']}, confirmation started "
             f"{order['started_at']}, first result seen {order.get('first_result_seen_at', '-')}.", "",
             "| method | against | seeds | class | Δ worst class [95% t] | t p | sign-flip p | Δ average [95% t] "
             "| one-sided 95% bound | target met | short of |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples(index=False):
        lines.append(f"| {r.method} | {r.baseline_method} | {r.seeds} | {r.target_class} "
                     f"| {_points(r.worst_diff_mean, r.worst_diff_low, r.worst_diff_high)} | {r.worst_diff_t_p:.2g} "
                     f"| {r.worst_diff_perm_p:.2g} | {_points(r.avg_diff_mean, r.avg_diff_low, r.avg_diff_high)} "
                     f"| {100 * r.avg_diff_lower95:+.1f} | {'yes' if r.meets else 'no'} | {r.short_of} |")
    if gaps is not None and not gaps.empty and "gap_mean" in table:
        lines += ["", "Against the calibration frontier of the same seed's baseline (worst class, own, at the lever's "
                  "average; points; > 0: the lever buys more than a per-class threshold shift at its cost):", "",
                  "| method | against | seeds | gap [95% t] | t p (greater) | sign-flip p | per seed | beats the frontier |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in table.itertuples(index=False):
            own = gaps[gaps["method"] == r.method]
            per_seed = ", ".join(f"{s}: {g:+.1f}" if pd.notna(g) else f"{s}: - ({n})"
                                 for s, g, n in zip(own["seed"], own["gap"], own["note"]))
            interval = "" if pd.isna(r.gap_low) else f" [{r.gap_low:+.1f}, {r.gap_high:+.1f}]"
            lines.append(f"| {r.method} | {r.baseline_method} | {len(own)} | {r.gap_mean:+.1f}{interval} "
                         f"| {r.gap_t_p:.2g} | {r.gap_perm_p:.2g} | {per_seed} | {'yes' if r.beats_frontier else 'no'} |")
    return "\n".join(lines) + "\n"


def power_markdown(average: pd.DataFrame, worst: pd.DataFrame) -> str:
    """The design's power table: per (seeds, test images per seed) the average's one-sided 95%
    half-width and non-inferiority power at true differences 0 and -0.5 points (margin 1), and the
    worst class's half-width (points), from :func:`classrobust.analysis.power.power_table`."""
    lines = ["| seeds | test images per seed | average: half-width | power, true 0 | power, true -0.5 "
             "| worst class: half-width |", "|---|---|---|---|---|---|"]
    for (seeds, images), group in average.groupby(["seeds", "images"], sort=True):
        by_diff = group.set_index("true_diff")
        w = worst[(worst["seeds"] == seeds) & (worst["images"] == images)]["half_width"].iloc[0]
        lines.append(f"| {seeds} | {images:,} | {by_diff.loc[0.0, 'half_width']:.2f} | {by_diff.loc[0.0, 'power']:.2f} "
                     f"| {by_diff.loc[-0.5, 'power']:.2f} | {w:.1f} |")
    return "\n".join(lines)
