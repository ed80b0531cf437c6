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


def target_markdown(table: pd.DataFrame) -> str:
    """:func:`~classrobust.analysis.methods.judge_target`'s table as markdown (points; 95% t-intervals
    over seeds)."""
    def points(mean, low, high):
        return f"{100 * mean:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"

    lines = [f"| method | against | seeds | class | Δ worst class [95% t] | t p ({table.alternative.iloc[0]}) "
             "| sign-flip p | Δ average [95% t] | its t p, sign-flip p (two-sided) | target met | short of |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples(index=False):
        lines.append(f"| {r.method} | {r.baseline_method} | {r.seeds} | {r.target_class} "
                     f"| {points(r.worst_diff_mean, r.worst_diff_low, r.worst_diff_high)} | {r.worst_diff_t_p:.2g} "
                     f"| {r.worst_diff_perm_p:.2g} | {points(r.avg_diff_mean, r.avg_diff_low, r.avg_diff_high)} "
                     f"| {r.avg_diff_t_p:.2g}, {r.avg_diff_perm_p:.2g} | {'yes' if r.meets else 'no'} | {r.short_of} |")
    return "\n".join(lines)


def per_class_markdown(table: pd.DataFrame, baselines) -> str:
    """:func:`~classrobust.analysis.protocol.per_class_changes` as one table: a row per class, a column per
    method (baselines in %, levers as the change in points against their baseline), 95% t-intervals over
    seeds in brackets."""
    def cell(r):
        sign = "+" if r.kind == "change" else ""
        interval = ("" if pd.isna(r.low) or r.low == r.high  # one seed, or every seed the same change
                    else f" [{100 * r.low:{sign}.1f}, {100 * r.high:{sign}.1f}]")
        return f"{100 * r.value:{sign}.1f}{interval}"

    levers = table[table.kind == "change"]
    order = [m for b in baselines for m in [b, *levers[levers.baseline_method == b].method.unique()]]
    seeds = table.groupby("method").seeds.max()
    header = [f"{'' if m in baselines else 'Δ '}{m} ({seeds[m]} seeds)" for m in order]
    lines = ["| class | " + " | ".join(header) + " |", "|---|" + "---|" * len(order)]
    for (index, name), group in table.groupby(["class_index", "class_name"]):
        by_method = {r.method: r for r in group.itertuples(index=False)}
        lines.append(f"| {name} | " + " | ".join(cell(by_method[m]) if m in by_method else "-" for m in order) + " |")
    return "\n".join(lines)


def plateau_markdown(table: pd.DataFrame, epochs: int = 3) -> str:
    lines = [f"| baseline | seed | worst class (last epoch) | its validation PGD-10, last {epochs} epochs | range |",
             "|---|---|---|---|---|"]
    for r in table.itertuples(index=False):
        lines.append(f"| {r.method} | {r.seed} | {r.worst_class} | {', '.join(f'{100 * v:.1f}' for v in r.last_epochs)} "
                     f"| {100 * r.range:.1f} |")
    return "\n".join(lines)


def cost_markdown(table: pd.DataFrame) -> str:
    """Minutes per method (mean and range over its finished runs) and the total, from
    :func:`~classrobust.analysis.protocol.run_costs`; a diverged run is counted apart, by its completed
    epochs' training time, and in the total."""
    def minutes(values):
        v = values.dropna() / 60
        if v.empty:
            return "-"
        return f"{v.mean():.1f}" if len(v) == 1 else f"{v.mean():.1f} ({v.min():.1f}-{v.max():.1f})"

    lines = ["| method | runs | training, min | calibration, min | evaluation, min |", "|---|---|---|---|---|"]
    for method, group in table.groupby("method", sort=False):
        lost = group[group.diverged.astype(bool)]
        group = group[~group.diverged.astype(bool)]  # the per-run figures are of finished runs
        runs = f"{len(group)}" + (f" + {len(lost)} diverged ({lost.train_s.sum() / 60:.1f} min of training)"
                                  if len(lost) else "")
        lines.append(f"| {method} | {runs} | {minutes(group.train_s)} | {minutes(group.calibrate_s)} "
                     f"| {minutes(group.eval_s)} |")
    total = table[["train_s", "calibrate_s", "eval_s"]].sum().sum() / 3600
    lines.append(f"| all | {len(table)} | | | {total:.1f} h in all (recorded parts) |")
    return "\n".join(lines)


def tradeoff_figure(points: list[dict], min_avg: float, min_worst: float, xlabel: str, ylabel: str, title: str):
    """Worst-class change against average change (points), one marker per entry of ``points`` (``x``,
    ``y``, optional ``x_low``/``x_high``/``y_low``/``y_high`` and per-seed ``xs``/``ys`` dots, ``label``),
    and the target region (average change >= ``min_avg``, worst-class change >= ``min_worst``)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 5), layout="constrained")
    ax = fig.add_subplot()
    ax.fill_between([min_avg, 100], min_worst, 100, color="tab:green", alpha=0.08,
                    label=f"target: worst +{min_worst:g} or more at average {min_avg:g} or better")
    ax.axhline(0, color="grey", lw=0.8)
    ax.axvline(0, color="grey", lw=0.8)
    xs, ys = [0.0, min_avg], [0.0, min_worst]
    for i, p in enumerate(points):
        color = f"C{i % 10}"
        if p.get("xs"):
            ax.scatter(p["xs"], p["ys"], s=12, color=color, alpha=0.5)
        err = {}
        if pd.notna(p.get("x_low", float("nan"))):
            err["xerr"] = [[p["x"] - p["x_low"]], [p["x_high"] - p["x"]]]
        if pd.notna(p.get("y_low", float("nan"))):
            err["yerr"] = [[p["y"] - p["y_low"]], [p["y_high"] - p["y"]]]
        ax.errorbar(p["x"], p["y"], fmt="o", capsize=3, color=color, label=p["label"], **err)
        xs += [p["x"], *p.get("xs", []), *[p[k] for k in ("x_low", "x_high") if pd.notna(p.get(k, float("nan")))]]
        ys += [p["y"], *p.get("ys", []), *[p[k] for k in ("y_low", "y_high") if pd.notna(p.get(k, float("nan")))]]
    ax.set_xlim(min(min(xs) - 3, -5), max(max(xs) + 3, 3))
    ax.set_ylim(min(ys) - 3, max(ys) + 3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    return fig
