"""Screening of the class-wise levers on the *validation* split (issue #15, steps 1, 3 and 4).

Declared before any run (this file's first commit): the recipe, the grid, the seeds and the
selection rule below. No run here reads the test split: every number comes from the training
logs' per-epoch validation (held-out part of the training split, PGD-10 at eps 0.1).

  python experiments/quick/screen_levers.py run [--only NAME ...] [--seeds 100 101]
  python experiments/quick/screen_levers.py summary               # prints the table, writes nothing
  python experiments/quick/screen_levers.py summary --write-docs   # -> docs/results/lever-screen/ + docs/defenses.md
  python experiments/quick/screen_levers.py freeze     # the confirmation file, experiments/quick/defenses.yaml
  python experiments/quick/screen_levers.py verdict [--write-docs]   # the finished confirmation against the target,
                                           # and its baselines' validation plateau and curves

``run`` is resumable: finished runs are skipped, an interrupted one continues from its last epoch.
TRADES (declared 2026-11-27, before any TRADES lever run): the screen runs on PGD-AT only, and the
lever and settings it picks are carried over to TRADES in the confirmation; screening every lever
on TRADES too would double the screen's cost (about 14 minutes a run on 2 cores, 16 runs).

Selection rule: per lever, the setting with the highest mean (over seeds) last-epoch worst-class
validation PGD accuracy among those whose mean average validation PGD accuracy is at most
1 point below the baseline's; ties go to the higher average.

Across levers (declared 2026-11-28, after 4 of the 16 runs had finished, all on seed 100: pgd-at,
dafa-l1, dafa-l1-nomargin, wat-e1; the file said "one lever" without saying how): the confirmation
takes the per-lever pick with the highest mean worst-class validation PGD accuracy, ties to the
higher average ("confirm" in the table). A run counts once it has finished all its epochs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
RUNS = ROOT / "runs" / "screen"
RESULTS = ROOT / "docs" / "results" / "lever-screen"
#: screening seeds: disjoint from the confirmation seeds (0-4) that will be read on the test split
SEEDS = (100, 101)
#: the demo recipe (workflows/demo.py) on the full training split, run longer (see the baseline curve)
RECIPE = dict(dataset="fashion-mnist", model="smallcnn", model_kwargs={"dropout": 0.0}, method="pgd-at", eps=0.1,
              attack_steps=3, eps_warmup_epochs=1.0, epochs=15, batch_size=128, lr=0.03, lr_warmup_epochs=0.25,
              val_size=2000, val_attack_steps=10, precision="bf16", device="cpu")
#: name -> --classwise spec; the baseline first
GRID = {
    "pgd-at": "",
    "reweight-s2": "reweight:strength=2",
    "reweight-s4": "reweight:strength=4",
    "dafa-l1": "dafa:lam=1",
    "dafa-l2": "dafa:lam=2",
    # added after dafa-l1 on seed 100 collapsed Shirt right after its warm-up (validation clean 3%):
    # class-wise budgets let the perturbation's size give the label away (docs/defenses.md)
    "dafa-l1-nomargin": "dafa:lam=1,margin=false",
    "wat-e1": "wat:eta=1",
    "wat-e03": "wat:eta=0.3",
}
MAX_AVG_DROP = 0.01
#: the finished confirmation's export (experiments/quick/defenses.yaml, --export there)
CONFIRMED = ROOT / "docs" / "results" / "defenses-confirmation"
#: issue #15's target, written here on 2026-11-28 before any confirmation number was read: under standard
#: AutoAttack, the worst class (the baseline's validation-worst) gains at least 5 points over the same
#: method's baseline (mean over the 5 seeds' paired differences), the average loses at most 1 point, and
#: the gain is significant across seeds: one-sided paired t-test p < 0.05 and exact sign-flip p < 0.05.
TARGET = dict(attack="autoattack", worst_gain=0.05, max_avg_drop=0.01, alpha=0.05)


def run(names: list[str], seeds: list[int]) -> None:
    from classrobust.training import TrainConfig, train

    for seed in seeds:
        for name in names:
            out = RUNS / f"{name}-s{seed}"
            if (out / "model.safetensors").is_file():
                print(f"{out.name}: done")
                continue
            print(f"{out.name}: training", flush=True)
            config = TrainConfig(**RECIPE, classwise=GRID[name], seed=seed)
            train(config, out, progress=False, resume=True, log=lambda m: print(f"  {m}", flush=True))


def summary() -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """One row per finished run (last epoch), and each finished run's training log by run name: from
    ``runs/screen`` or, for a run finished in an earlier session (runs/ does not outlive a checkout), from
    its log committed under docs/results/lever-screen/logs."""
    rows, logs = [], {}
    for name, spec in GRID.items():
        for seed in SEEDS:
            log_path = RUNS / f"{name}-s{seed}" / "train_log.csv"
            if not log_path.is_file():  # trained in an earlier session whose runs/ is gone: its committed log
                log_path = RESULTS / "logs" / f"{name}-s{seed}.csv"
            if not log_path.is_file():
                continue
            log = pd.read_csv(log_path)
            if int(log.epoch.max()) < RECIPE["epochs"]:  # unfinished: its last epoch is not the recipe's
                continue
            logs[f"{name}-s{seed}"] = log
            last = log[log.epoch == log.epoch.max()]
            per_class = last[last.class_index >= 0]
            worst = per_class.loc[per_class.val_pgd_accuracy.idxmin()]
            rows.append({"setting": name, "classwise": spec or "(none)", "seed": seed, "epochs": int(log.epoch.max()),
                         "val_clean": float(last[last.class_index == -1].val_clean_accuracy.iloc[0]),
                         "val_pgd": float(last[last.class_index == -1].val_pgd_accuracy.iloc[0]),
                         "val_worst_pgd": float(worst.val_pgd_accuracy), "worst_class": worst.class_name,
                         "val_worst_clean": float(per_class.val_clean_accuracy.min())})
    return pd.DataFrame(rows), logs


def choose(table: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds per setting, and the selection rule's pick per lever."""
    means = table.groupby(["setting", "classwise"], sort=False)[["val_clean", "val_pgd", "val_worst_pgd"]].mean()
    means["seeds"] = table.groupby(["setting", "classwise"], sort=False).size()
    means = means.reset_index()
    base = means[means.setting == "pgd-at"]
    if base.empty:
        means["chosen"] = means["confirm"] = False
        return means
    allowed = means.val_pgd >= float(base.val_pgd.iloc[0]) - MAX_AVG_DROP
    means["lever"] = means.setting.str.split("-").str[0]
    means["chosen"] = False
    for lever, group in means[allowed & (means.setting != "pgd-at")].groupby("lever"):
        best = group.sort_values(["val_worst_pgd", "val_pgd"], ascending=False).index[0]
        means.loc[best, "chosen"] = True
    picks = means[means.chosen].sort_values(["val_worst_pgd", "val_pgd"], ascending=False)
    means["confirm"] = means.index == (picks.index[0] if len(picks) else -1)
    return means.drop(columns="lever")


def render(runs: pd.DataFrame) -> str:
    """The markdown table docs/defenses.md shows between ``<!-- lever-screen -->`` markers, from
    ``runs.csv`` alone (a test rebuilds it from the committed file)."""
    chosen = choose(runs).set_index("setting")
    lines = ["| setting | `--classwise` | seeds | val clean | val PGD-10 | worst class PGD-10 | per seed (worst) | pick |",
             "|---|---|---|---|---|---|---|---|"]
    for setting, group in runs.groupby("setting", sort=False):
        row = chosen.loc[setting]
        seeds = ", ".join(f"{s}: {100 * w:.1f} ({c})" for s, w, c in
                          zip(group["seed"], group["val_worst_pgd"], group["worst_class"]))
        lines.append(f"| {setting} | `{row['classwise']}` | {int(row['seeds'])} | {100 * row['val_clean']:.1f} | "
                     f"{100 * row['val_pgd']:.1f} | {100 * row['val_worst_pgd']:.1f} | {seeds} | "
                     f"{'chosen, confirm' if row['confirm'] else 'chosen' if row['chosen'] else ''} |")
    return "\n".join(lines)


def paired_differences(runs: pd.DataFrame, baseline: str = "pgd-at") -> pd.DataFrame:
    """Each setting minus the baseline of the same seed (the training run is the unit), in points, with
    the mean, its 95% Student-t interval over the seeds both have finished, and the per-seed values:
    average validation PGD-10 accuracy, and the worst class's (each run's own worst class)."""
    from classrobust.analysis.stats import paired_seed_test

    base = runs[runs.setting == baseline].set_index("seed")
    rows = []
    for setting, group in runs[runs.setting != baseline].groupby("setting", sort=False):
        group = group.set_index("seed")
        seeds = [seed for seed in group.index if seed in base.index]
        if not seeds:
            continue
        row = {"setting": setting, "seeds": len(seeds)}
        for column, key in (("val_pgd", "avg"), ("val_worst_pgd", "worst")):
            d = [100 * (group.loc[seed, column] - base.loc[seed, column]) for seed in seeds]
            test = paired_seed_test(d)
            row |= {f"{key}_per_seed": d, f"{key}_mean": test["mean"], f"{key}_low": test["low"],
                    f"{key}_high": test["high"]}
        rows.append(row)
    return pd.DataFrame(rows)


def render_tradeoff(runs: pd.DataFrame) -> str:
    """The markdown table docs/defenses.md shows between ``<!-- lever-tradeoff -->`` markers (from ``runs.csv``)."""
    diffs = paired_differences(runs)
    cell = lambda r, key: (f"{r[f'{key}_mean']:+.1f}" + ("" if r["seeds"] < 2 else  # noqa: E731
                           f" [{r[f'{key}_low']:+.1f}, {r[f'{key}_high']:+.1f}]")
                           + " (" + ", ".join(f"{v:+.1f}" for v in r[f"{key}_per_seed"]) + ")")
    lines = ["| setting | seeds | worst class: mean [95% t] (per seed) | average: mean [95% t] (per seed) |",
             "|---|---|---|---|"]
    for _, r in diffs.iterrows():
        lines.append(f"| {r['setting']} | {r['seeds']} | {cell(r, 'worst')} | {cell(r, 'avg')} |")
    return "\n".join(lines)


def tradeoff_plot(runs: pd.DataFrame, path: Path) -> None:
    """Worst-class against average validation PGD-10 accuracy, each setting minus the baseline of the same
    seed, one point per setting with its seed-level 95% t-interval (bars only where two or more seeds
    finished), the per-seed differences as small dots, and the issue's target region (PNG)."""
    diffs = paired_differences(runs)
    fig, ax = _tradeoff_axes(-MAX_AVG_DROP * 100, 5)
    for i, r in diffs.iterrows():
        color = f"C{i % 10}"
        ax.scatter(r["avg_per_seed"], r["worst_per_seed"], s=12, color=color, alpha=0.5)
        if r["seeds"] >= 2:
            ax.errorbar(r["avg_mean"], r["worst_mean"], color=color, capsize=3, fmt="o",
                        xerr=[[r["avg_mean"] - r["avg_low"]], [r["avg_high"] - r["avg_mean"]]],
                        yerr=[[r["worst_mean"] - r["worst_low"]], [r["worst_high"] - r["worst_mean"]]])
        else:
            ax.plot(r["avg_mean"], r["worst_mean"], "o", color=color)
        ax.annotate(f"{r['setting']} ({r['seeds']} seed{'s' if r['seeds'] > 1 else ''})",
                    (r["avg_mean"], r["worst_mean"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    values = [v for col in ("avg_per_seed", "worst_per_seed") for vs in diffs[col] for v in vs] + [0, 5]
    _save_tradeoff(fig, ax, values, values, path, "average validation PGD-10 accuracy, minus pgd-at's (points)",
                   "worst class's validation PGD-10 accuracy, minus pgd-at's (points)",
                   "lever screen (validation split only): seed-paired differences,\n"
                   "bars 95% Student-t over seeds, dots single seeds")


def _pyplot():
    """matplotlib's pyplot on the file-only backend (no display on these machines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _tradeoff_axes(min_avg: float, min_worst: float):
    """A trade-off figure's frame: the target region (average change >= ``min_avg``, worst-class change
    >= ``min_worst``, in points) and the zero lines."""
    fig, ax = _pyplot().subplots(figsize=(7, 5))
    ax.fill_between([min_avg, 100], min_worst, 100, color="tab:green", alpha=0.08,
                    label=f"target: worst +{min_worst:g} or more at average {min_avg:g} or better")
    ax.axhline(0, color="grey", lw=0.8)
    ax.axvline(0, color="grey", lw=0.8)
    return fig, ax


def _save_tradeoff(fig, ax, x_values: list[float], y_values: list[float], path: Path, xlabel: str, ylabel: str,
                   title: str) -> None:
    """Limits that show every plotted value (points) and the target, labels, and the PNG at ``path``."""
    ax.set_xlim(min(min(x_values) - 3, -5), max(max(x_values) + 3, 3))
    ax.set_ylim(min(y_values) - 3, max(y_values) + 3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)


def baseline_curve(name: str = "pgd-at") -> None:
    """Per-class validation curves of the screen baseline's first seed still in runs/screen (PNG)."""
    for seed in SEEDS:
        log_path = RUNS / f"{name}-s{seed}" / "train_log.csv"
        if log_path.is_file():
            curve_plot(pd.read_csv(log_path), f"{name} seed {seed}", RESULTS / "baseline_curve.png")
            return


def curve_plot(log: pd.DataFrame, label: str, path: Path) -> None:
    """Per-class validation clean and PGD accuracy per epoch of one training log (PNG at ``path``)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, column, title in ((axes[0], "val_clean_accuracy", "validation clean"),
                              (axes[1], "val_pgd_accuracy", "validation PGD-10")):
        for _, group in log[log.class_index >= 0].groupby("class_index"):
            ax.plot(group.epoch, 100 * group[column], marker=".", label=group.class_name.iloc[0])
        overall = log[log.class_index == -1]
        ax.plot(overall.epoch, 100 * overall[column], color="black", lw=2.5, label="all")
        ax.set_title(f"{title}, {label}", fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    axes[1].legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


#: the confirmation's baselines, whose validation curves show whether training ran long enough
CONFIRMED_BASELINES = ("pgd-at", "trades")
#: how many last epochs "the worst class has stopped moving" looks at
PLATEAU_EPOCHS = 3


def plateau(logs: dict[tuple[str, int], pd.DataFrame]) -> pd.DataFrame:
    """Per (method, seed) training log: the last epoch's worst validation-PGD class and its validation PGD
    accuracy over the last :data:`PLATEAU_EPOCHS` epochs (validation only), with their range."""
    rows = []
    for (method, seed), log in logs.items():
        per_class = log[log.class_index >= 0]
        last = per_class[per_class.epoch == per_class.epoch.max()]
        worst = last.loc[last.val_pgd_accuracy.idxmin()]
        tail = per_class[(per_class.class_index == worst.class_index)
                         & (per_class.epoch > per_class.epoch.max() - PLATEAU_EPOCHS)].sort_values("epoch")
        rows.append({"method": method, "seed": seed, "worst_class": worst.class_name,
                     "last_epochs": [float(v) for v in tail.val_pgd_accuracy],
                     "range": float(tail.val_pgd_accuracy.max() - tail.val_pgd_accuracy.min())})
    return pd.DataFrame(rows)


def render_plateau(table: pd.DataFrame) -> str:
    lines = [f"| baseline | seed | worst class (last epoch) | its validation PGD-10, last {PLATEAU_EPOCHS} epochs | range |",
             "|---|---|---|---|---|"]
    for r in table.itertuples(index=False):
        lines.append(f"| {r.method} | {r.seed} | {r.worst_class} | {', '.join(f'{100 * v:.1f}' for v in r.last_epochs)} "
                     f"| {100 * r.range:.1f} |")
    return "\n".join(lines)


def confirmation_logs(export: Path = CONFIRMED) -> dict[tuple[str, int], pd.DataFrame]:
    """The confirmation baselines' training logs (validation per epoch) from its export, by (method, seed)."""
    logs = {}
    for method in CONFIRMED_BASELINES:
        for log_path in sorted((export / "runs" / "fashion-mnist" / method).glob("seed*/train_log.csv")):
            if (log_path.parent / "diverged.json").is_file():  # its log stops early: no plateau to read
                continue
            logs[(method, int(log_path.parent.name.removeprefix("seed")))] = pd.read_csv(log_path)
    return logs


def write_docs(tables: dict[str, str]) -> None:
    """Replace each ``<!-- NAME -->`` ... ``<!-- /NAME -->`` block of docs/defenses.md with its table."""
    import re

    doc = ROOT / "docs" / "defenses.md"
    text = doc.read_text()
    for name, table in tables.items():
        block = re.compile(rf"<!-- {name} -->\n.*?<!-- /{name} -->", re.S)
        if not block.search(text):
            raise SystemExit(f"{doc} has no {name} block")
        text = block.sub(lambda _: f"<!-- {name} -->\n{table}\n<!-- /{name} -->", text)
    doc.write_text(text)


#: the confirmation (issue #15, step 4), declared 2026-11-28 before the screen finished; ``freeze`` fills in
#: the lever the screen picks and writes experiments/quick/defenses.yaml, which then never changes.
CONFIRMATION = """\
# Confirmation of the lever screen (issue #15), frozen before any test-split evaluation.
# Written on {date} by `python experiments/quick/screen_levers.py freeze` after the screen picked
# {setting} (`--classwise {spec}`) on the validation split of seeds {seeds}
# (docs/results/lever-screen/runs.csv, sha256 {runs_sha}); nothing below is changed after a
# confirmation run starts. Baselines: PGD-AT and TRADES with the screen's recipe (full training
# split, 15 epochs); each with the chosen lever (carried over from PGD-AT to TRADES, as declared in
# screen_levers.py) and with inference-phase calibration on top of it. Seeds 0-4 (disjoint from the
# screen's), standard AutoAttack and PGD-20 on 1,000 class-stratified test images per seed (each seed
# its own subset). The worst class is the baseline's validation-worst class; the direction (the lever
# raises it) is declared here, before the runs.
# Budget (2-core CPU, measured in the screen and the AutoAttack benchmark): training PGD-AT ~14 min,
# TRADES ~16 min, calibration ~3 min, evaluation ~18 min per checkpoint: about 2.7 hours per seed,
# 13-14 hours in all. It runs over several sessions: at each session's end its finished runs are
# exported (`--export docs/results/defenses-confirmation`, weights only where later work needs them)
# and committed, and the next session continues from a copy of that folder (`--out` there).
name: quick-defenses
description: >-
  PGD-AT and TRADES (smallcnn, eps 0.1, full training split, 15 epochs) against the same method with
  {setting} ({spec}), chosen on validation by the lever screen, and with calibration on top; standard
  AutoAttack and PGD-20 on 1,000 test images per seed, 5 seeds; worst class = the baseline's
  validation-worst class.
out: runs/experiments/quick-defenses
seeds: [0, 1, 2, 3, 4]
train:
  epochs: {epochs}
  batch_size: {batch_size}
  attack_steps: {attack_steps}
  eps_warmup_epochs: {eps_warmup_epochs}
  lr: {lr}
  lr_warmup_epochs: {lr_warmup_epochs}
  val_size: {val_size}
  val_attack_steps: {val_attack_steps}
  precision: {precision}
datasets:
  fashion-mnist: {{model: smallcnn, model_kwargs: {{dropout: 0.0}}, eps: {eps}}}
methods:
  pgd-at: {{}}
  pgd-at+{setting}: {{method: pgd-at, classwise: "{spec}"}}
  pgd-at+{setting}+cal: {{base: pgd-at+{setting}, calibrate: {{max_avg_drop: 1.0}}}}
  trades: {{beta: 6.0}}
  trades+{setting}: {{method: trades, beta: 6.0, classwise: "{spec}", baseline: trades}}
  trades+{setting}+cal: {{base: trades+{setting}, calibrate: {{max_avg_drop: 1.0}}, baseline: trades}}
eval:
  attacks: "pgd:steps=20,autoattack"
  limit: 1000
  subset_seed: per-seed
  seed: 0
  precision: fp32
compare: {{worst: greater}}
"""


def freeze(runs: pd.DataFrame, out: Path, date: str, runs_sha: str) -> str:
    """Write the confirmation file for the screen's pick; refuses an unfinished screen or an existing file.
    Returns the chosen setting's name."""
    missing = [f"{name}-s{seed}" for name in GRID for seed in SEEDS
               if not ((runs.setting == name) & (runs.seed == seed)).any()]
    if missing:
        raise SystemExit(f"screen_levers: the screen is not finished ({', '.join(missing)} missing); nothing frozen")
    if out.exists():
        raise SystemExit(f"screen_levers: {out} exists; the confirmation is frozen once (move it away first)")
    picked = choose(runs)
    picked = picked[picked.confirm]
    if picked.empty:
        raise SystemExit("screen_levers: no lever kept the average within the allowed loss; nothing to confirm")
    setting, spec = picked.setting.iloc[0], picked.classwise.iloc[0]
    text = CONFIRMATION.format(date=date, setting=setting, spec=spec, seeds=", ".join(map(str, SEEDS)),
                               runs_sha=runs_sha, **{k: v for k, v in RECIPE.items() if k not in {"model_kwargs"}})
    out.write_text(text)
    return setting


def verdict(export: Path = CONFIRMED) -> pd.DataFrame:
    """The confirmation's methods against :data:`TARGET`; refuses an unfinished or missing export."""
    from classrobust.analysis import judge_target

    if (export / "experiment-progress.json").exists():
        raise SystemExit(f"screen_levers: {export} holds an unfinished confirmation; no verdict before all its runs")
    methods_csv = export / "report" / "methods.csv"  # a finished export's report tables
    if not methods_csv.is_file():
        raise SystemExit(f"screen_levers: no {methods_csv}; export the finished confirmation there first")
    methods = pd.read_csv(methods_csv)
    table = judge_target(methods[methods.attack == TARGET["attack"]], worst_gain=TARGET["worst_gain"],
                         max_avg_drop=TARGET["max_avg_drop"], alpha=TARGET["alpha"], average="mean")  # as declared
    if table.empty:
        raise SystemExit(f"screen_levers: {methods_csv} has no method to judge under {TARGET['attack']}")
    return table


def render_verdict(table: pd.DataFrame) -> str:
    """The verdict as a markdown table (points; 95% t-intervals over seeds)."""
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


def per_class(export: Path = CONFIRMED) -> pd.DataFrame:
    """Every class under :data:`TARGET`'s attack, from a finished export's report tables: each baseline's
    accuracy over its seeds (mean, 95% Student-t over seeds) and each lever's per-seed paired change
    against it (mean, 95% t). One row per (class, method); accuracies in [0, 1]."""
    from classrobust.analysis import seed_interval

    report = export / "report"
    runs = pd.read_csv(report / "per_class.csv")
    runs = runs[runs.attack == TARGET["attack"]]
    diffs = pd.read_csv(report / "methods_per_class.csv")
    diffs = diffs[diffs.attack == TARGET["attack"]]
    rows = []
    for method in CONFIRMED_BASELINES:
        for (index, name), group in runs[runs.method == method].groupby(["class_index", "class_name"]):
            mean, low, high = seed_interval(group.accuracy, counts=(int(group.correct.sum()), int(group.n.sum())))
            rows.append({"class_index": index, "class_name": name, "method": method, "baseline_method": method,
                         "seeds": len(group), "value": mean, "low": low, "high": high, "kind": "accuracy"})
    levers = diffs[~diffs.method.isin(set(diffs.baseline_method))]  # trades against pgd-at is no lever
    for r in levers.itertuples(index=False):
        rows.append({"class_index": r.class_index, "class_name": r.class_name, "method": r.method,
                     "baseline_method": r.baseline_method, "seeds": r.seeds, "value": r.diff_mean,
                     "low": r.diff_low, "high": r.diff_high, "kind": "change"})
    return pd.DataFrame(rows)


def render_per_class(table: pd.DataFrame) -> str:
    """:func:`per_class` as one markdown table: a row per class, a column per method (baselines in %, levers
    as the change in points against their baseline), 95% t-intervals over seeds in brackets."""
    def cell(r):
        sign = "+" if r.kind == "change" else ""
        interval = ("" if pd.isna(r.low) or r.low == r.high  # one seed, or every seed the same change
                    else f" [{100 * r.low:{sign}.1f}, {100 * r.high:{sign}.1f}]")
        return f"{100 * r.value:{sign}.1f}{interval}"

    levers = table[table.kind == "change"]
    order = [m for b in CONFIRMED_BASELINES for m in [b, *levers[levers.baseline_method == b].method.unique()]]
    seeds = table.groupby("method").seeds.max()
    header = [f"{'' if m in CONFIRMED_BASELINES else 'Δ '}{m} ({seeds[m]} seeds)" for m in order]
    lines = ["| class | " + " | ".join(header) + " |", "|---|" + "---|" * len(order)]
    for (index, name), group in table.groupby(["class_index", "class_name"]):
        by_method = {r.method: r for r in group.itertuples(index=False)}
        lines.append(f"| {name} | " + " | ".join(cell(by_method[m]) if m in by_method else "-" for m in order) + " |")
    return "\n".join(lines)


def verdict_plot(table: pd.DataFrame, path: Path) -> None:
    """The confirmation's trade-off (issue #15, item 5): per lever row of :func:`verdict`, the mean
    per-seed change of the target class's accuracy against that of the average, each against the same
    method's baseline, with 95% Student-t intervals over seeds, and the target region (PNG)."""
    fig, ax = _tradeoff_axes(-100 * TARGET["max_avg_drop"], 100 * TARGET["worst_gain"])
    xs, ys = [0.0], [0.0, 100 * TARGET["worst_gain"]]
    for i, r in enumerate(table.itertuples(index=False)):
        x, y = 100 * r.avg_diff_mean, 100 * r.worst_diff_mean
        xerr = [[x - 100 * r.avg_diff_low], [100 * r.avg_diff_high - x]] if pd.notna(r.avg_diff_low) else None
        yerr = [[y - 100 * r.worst_diff_low], [100 * r.worst_diff_high - y]] if pd.notna(r.worst_diff_low) else None
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", capsize=3, color=f"C{i % 10}",
                    label=f"{r.method} vs {r.baseline_method}, {r.target_class} ({r.seeds} seeds)")
        xs += [x] + [100 * v for v in (r.avg_diff_low, r.avg_diff_high) if pd.notna(v)]
        ys += [y] + [100 * v for v in (r.worst_diff_low, r.worst_diff_high) if pd.notna(v)]
    _save_tradeoff(fig, ax, xs, ys, path, f"average {TARGET['attack']} accuracy, minus the baseline's (points)",
                   f"target class's {TARGET['attack']} accuracy, minus the baseline's (points)",
                   "confirmation (test split): seed-paired differences, bars 95% Student-t over seeds;\n"
                   "the class is the baseline's validation-worst")


def confirmation_cost(export: Path = CONFIRMED) -> pd.DataFrame:
    """What each exported confirmation run cost, in seconds: its training epochs (the log's per-epoch
    training time, validation excluded), its calibration fit (recorded since 2026-11-28; NaN before) and its
    evaluation (PGD-20 + AutoAttack on the test subset). A run that diverged (``diverged.json``) counts
    its completed epochs (``diverged`` True)."""
    import json

    rows = []
    records = [*(export / "runs").glob("*/*/seed*/model.json"), *(export / "runs").glob("*/*/seed*/diverged.json")]
    for meta_path in sorted(records):
        folder = meta_path.parent
        log = folder / "train_log.csv"
        summary = folder / "eval" / "summary.json"
        calibration = json.loads(meta_path.read_text()).get("calibration") or {}
        rows.append({"method": folder.parent.name, "seed": int(folder.name.removeprefix("seed")),
                     "diverged": meta_path.name == "diverged.json",
                     "train_s": (float(pd.read_csv(log).groupby("epoch").seconds.first().sum())
                                 if log.is_file() else float("nan")),
                     "calibrate_s": float(calibration.get("seconds", float("nan"))) if calibration else float("nan"),
                     "eval_s": (float(json.loads(summary.read_text())["meta"]["seconds"])
                                if summary.is_file() else float("nan"))})
    return pd.DataFrame(rows, columns=["method", "seed", "diverged", "train_s", "calibrate_s", "eval_s"])


def render_cost(table: pd.DataFrame) -> str:
    """Minutes per method (mean and range over its finished runs) and the total, from
    :func:`confirmation_cost`; a diverged run is counted apart, by its completed epochs' training time,
    and in the total."""
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--only", nargs="*", choices=list(GRID), default=list(GRID))
    r.add_argument("--seeds", nargs="*", type=int, default=list(SEEDS))
    s = sub.add_parser("summary")
    f = sub.add_parser("freeze", help="write the confirmation file for the screen's pick (once)")
    f.add_argument("--out", type=Path, default=ROOT / "experiments" / "quick" / "defenses.yaml")
    v = sub.add_parser("verdict", help="the finished confirmation against issue #15's target")
    v.add_argument("--write-docs", action="store_true", help="replace the verdict table in docs/defenses.md")
    s.add_argument("--write-docs", action="store_true",
                   help="write docs/results/lever-screen/ (logs, runs.csv, settings.csv, baseline curve) and "
                        "replace the table in docs/defenses.md (tracked files: without it, nothing is written)")
    args = parser.parse_args()
    if args.command == "run":
        run(args.only, args.seeds)
        return 0
    if args.command == "freeze":  # from the committed table, so that the file names what it was chosen from
        import datetime
        import hashlib

        runs_csv = RESULTS / "runs.csv"
        setting = freeze(pd.read_csv(runs_csv), args.out, datetime.date.today().isoformat(),
                         hashlib.sha256(runs_csv.read_bytes()).hexdigest())
        print(f"froze {setting} into {args.out}")
        return 0
    if args.command == "verdict":
        table = verdict()
        text = render_verdict(table)
        print(f"target under {TARGET['attack']}: worst class +{100 * TARGET['worst_gain']:g} points or more, "
              f"average -{100 * TARGET['max_avg_drop']:g} or less, t and sign-flip p < {TARGET['alpha']:g}")
        print(text)
        logs = confirmation_logs()
        steady = render_plateau(plateau(logs))
        print(steady)
        if args.write_docs:
            for method in CONFIRMED_BASELINES:
                seed = min(s for m, s in logs if m == method)
                curve_plot(logs[(method, seed)], f"{method} seed {seed}", CONFIRMED / f"{method}_curve.png")
            verdict_plot(table, CONFIRMED / "tradeoff.png")
            write_docs({"defenses-verdict": text, "defenses-per-class": render_per_class(per_class()),
                        "defenses-plateau": steady,
                        "defenses-cost": render_cost(confirmation_cost())})
            print(f"wrote the defenses-verdict, -per-class, -plateau and -cost tables in docs/defenses.md and the curves and "
                  f"the trade-off plot in {CONFIRMED}")
        return 0
    table, logs = summary()
    if table.empty:
        print("no finished screening runs", file=sys.stderr)
        return 1
    chosen = choose(table)
    print(chosen.to_string(index=False, float_format=lambda v: f"{100 * v:.1f}"))
    if args.write_docs:
        (RESULTS / "logs").mkdir(parents=True, exist_ok=True)
        for run_name, log in logs.items():  # committed: every number in the docs rebuilds from them
            log.to_csv(RESULTS / "logs" / f"{run_name}.csv", index=False)
        table.to_csv(RESULTS / "runs.csv", index=False)
        chosen.to_csv(RESULTS / "settings.csv", index=False)
        baseline_curve()
        tradeoff_plot(table, RESULTS / "tradeoff.png")
        write_docs({"lever-screen": render(table), "lever-tradeoff": render_tradeoff(table)})
        print(f"wrote {RESULTS} and the lever-screen table in docs/defenses.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
