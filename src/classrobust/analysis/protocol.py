"""The defense protocol's judgements, from an experiment's report tables (torch-free).

* :func:`screen_choice`: the screen's selection rule, on validation results.
* :func:`frontier_gaps`: every lever run against the calibration frontier of its own baseline's run
  of the same seed, at the lever's average cost.
* :func:`protocol_verdict`: the declared target (:func:`~classrobust.analysis.methods.judge_target`,
  the average judged by non-inferiority) together with the frontier comparison per lever.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from classrobust.analysis.frontier import frontier_rows, worst_at_cost
from classrobust.analysis.methods import judge_target
from classrobust.analysis.stats import paired_seed_test


def lever_family(entry: dict[str, Any], alias: str) -> str:
    """What a method entry's setting is a setting *of*: its class-wise lever's name (``wat`` for
    ``classwise: "wat:eta=0.3"``), else its training method, else its alias."""
    classwise = str(entry.get("classwise") or "")
    if classwise:
        return classwise.split(":")[0]
    return str(entry.get("method", alias))


def screen_choice(methods: pd.DataFrame, attack: str, margin: float, families: dict[str, str],
                  keep: str = "best") -> pd.DataFrame:
    """The screen's selection rule on its ``methods.csv`` (validation results, one row per method and
    attack): per lever family, among the settings whose mean paired change of the average under
    ``attack`` is at least ``-margin`` points, the one with the highest mean worst-class accuracy (each
    run's own worst class, ``worst_any``); ties go to the higher average. ``keep="best"`` keeps the best
    family's pick alone. Returns one row per non-baseline method with ``eligible``, ``picked`` and
    ``kept`` (bool), accuracies in [0, 1]."""
    table = methods[methods["attack"] == attack].copy()
    baselines = set(table["baseline_method"])
    table = table[~table["method"].isin(baselines)]
    table["family"] = [families.get(m, m) for m in table["method"]]
    table["eligible"] = table["avg_diff_mean"] >= -margin / 100 - 1e-12
    table["picked"] = False
    order = ["worst_any", "avg"]
    for _, group in table[table["eligible"]].groupby(["baseline_method", "family"], sort=False):
        table.loc[group.sort_values(order, ascending=False).index[0], "picked"] = True
    table["kept"] = table["picked"]
    if keep == "best" and table["picked"].any():
        best = table[table["picked"]].sort_values(order, ascending=False).index[0]
        table["kept"] = table.index == best
    columns = ["dataset", "baseline_method", "family", "method", "seeds", "paired_seeds", "avg", "avg_diff_mean",
               "avg_diff_low", "avg_diff_high", "worst_any", "worst_any_low", "worst_any_high", "eligible",
               "picked", "kept"]
    return table[[c for c in columns if c in table]].reset_index(drop=True)


def frontier_gaps(overview: pd.DataFrame, runs: pd.DataFrame, records: dict[str, dict[str, Any]],
                  attack: str) -> pd.DataFrame:
    """Per lever run: its worst-class accuracy under ``attack`` minus the worst-class accuracy of its
    baseline's calibration frontier (same seed) at the lever's average, in points (``gap``; > 0: the
    lever buys more than a threshold shift at its cost).

    ``overview``: the experiment's overview.csv (per run and attack: accuracy, worst_accuracy);
    ``runs``: its index's runs (key, method, baseline, seed); ``records``: frontier records by run key.
    Where the lever's average is above everything the baseline's frontier reached (the lever costs
    nothing), the frontier's uncalibrated point is the reference; where it is below the frontier's
    cheapest measured point, ``gap`` is NaN (``note`` says so: declare larger allowances).
    Where a record exists for the lever run too, ``frontier_gap_at`` lists, per allowance of the lever's
    own frontier, its worst class minus the baseline frontier's at the same average."""
    view = overview[overview["attack"] == attack].set_index(["method", "seed"])
    rows = []
    for run in runs.itertuples(index=False):
        if run.method == run.baseline:
            continue
        base_key = next((r.key for r in runs.itertuples(index=False)
                         if r.method == run.baseline and r.seed == run.seed and r.dataset == run.dataset), None)
        if base_key is None or base_key not in records or (run.method, run.seed) not in view.index:
            continue
        base_rows = frontier_rows(records[base_key])
        avg = 100 * float(view.loc[(run.method, run.seed), "accuracy"])
        worst = 100 * float(view.loc[(run.method, run.seed), "worst_accuracy"])
        reference, note = worst_at_cost(base_rows, base_rows["checkpoint"].iloc[0], avg), ""
        if np.isnan(reference):
            if avg > base_rows["average"].max():
                reference = float(base_rows.loc[base_rows["allowance"].isna(), "worst"].iloc[0])
                note = "lever above the baseline's average: against the uncalibrated baseline"
            else:
                note = "lever below the frontier's cheapest point: declare larger allowances"
        gaps_at = []
        if run.key in records:
            own = frontier_rows(records[run.key])
            for r in own.sort_values("allowance", na_position="first").itertuples(index=False):
                at = worst_at_cost(base_rows, base_rows["checkpoint"].iloc[0], r.average)
                gaps_at.append(None if np.isnan(at) else round(r.worst - at, 4))
        rows.append({"dataset": run.dataset, "method": run.method, "baseline_method": run.baseline, "seed": run.seed,
                     "average": avg, "worst": worst, "frontier_worst": reference, "gap": worst - reference,
                     "note": note, "frontier_gap_at": gaps_at})
    return pd.DataFrame(rows)


def gap_tests(gaps: pd.DataFrame) -> pd.DataFrame:
    """Per method: the seed-level test of its frontier gap (points): mean, 95% Student-t interval, and
    the one-sided ("greater": the lever beats the threshold shift) t and exact sign-flip p-values; seeds
    whose gap is NaN are counted in ``undecided``."""
    rows = []
    for (dataset, method, baseline), group in gaps.groupby(["dataset", "method", "baseline_method"], sort=False):
        values = group["gap"].dropna().to_numpy()
        test = paired_seed_test(values, alternative="greater")
        rows.append({"dataset": dataset, "method": method, "baseline_method": baseline, "seeds": len(values),
                     "undecided": int(group["gap"].isna().sum()), "gap_mean": test["mean"], "gap_low": test["low"],
                     "gap_high": test["high"], "gap_t_p": test["t_p"], "gap_perm_p": test["perm_p"]})
    return pd.DataFrame(rows)


def protocol_verdict(methods: pd.DataFrame, target: dict[str, Any], gaps: pd.DataFrame | None = None) -> pd.DataFrame:
    """The confirmation against its declared ``target`` (points; the average judged by non-inferiority:
    its one-sided 95% lower bound over seeds above ``-max_avg_drop``), one row per lever, with the
    frontier comparison's seed-level test where ``gaps`` is given (``beats_frontier``: its t and
    sign-flip p-values both below ``alpha``, on every declared seed)."""
    table = judge_target(methods[methods["attack"] == target["attack"]], worst_gain=target["worst_gain"],
                         max_avg_drop=target["max_avg_drop"], alpha=target["alpha"])
    if gaps is None or gaps.empty or table.empty:
        return table
    tests = gap_tests(gaps)
    table = table.merge(tests.drop(columns="seeds"), on=["dataset", "method", "baseline_method"], how="left")
    alpha = target["alpha"]
    table["beats_frontier"] = ((table["gap_t_p"] < alpha) & (table["gap_perm_p"] < alpha)
                               & (table["undecided"].fillna(1) == 0) & ~table["short_of"].str.contains("diverged"))
    return table


def training_logs(export, methods, dataset: str = "fashion-mnist") -> dict[tuple[str, int], pd.DataFrame]:
    """The training logs (validation per epoch) of ``methods``' runs in an experiment folder or export,
    by (method, seed); runs that diverged (their logs stop early) are left out."""
    from pathlib import Path

    logs = {}
    for method in methods:
        for log_path in sorted((Path(export) / "runs" / dataset / method).glob("seed*/train_log.csv")):
            if (log_path.parent / "diverged.json").is_file():
                continue
            logs[(method, int(log_path.parent.name.removeprefix("seed")))] = pd.read_csv(log_path)
    return logs


def plateau(logs: dict[tuple[str, int], pd.DataFrame], epochs: int = 3) -> pd.DataFrame:
    """Whether training ran long enough: per (method, seed) log, the last epoch's worst validation-PGD
    class and its validation PGD accuracy over the last ``epochs`` epochs, with their range."""
    rows = []
    for (method, seed), log in logs.items():
        per_class = log[log.class_index >= 0]
        last = per_class[per_class.epoch == per_class.epoch.max()]
        worst = last.loc[last.val_pgd_accuracy.idxmin()]
        tail = per_class[(per_class.class_index == worst.class_index)
                         & (per_class.epoch > per_class.epoch.max() - epochs)].sort_values("epoch")
        rows.append({"method": method, "seed": seed, "worst_class": worst.class_name,
                     "last_epochs": [float(v) for v in tail.val_pgd_accuracy],
                     "range": float(tail.val_pgd_accuracy.max() - tail.val_pgd_accuracy.min())})
    return pd.DataFrame(rows)


def run_costs(export) -> pd.DataFrame:
    """What each run of an experiment folder or export cost, in seconds: its training epochs (the log's
    per-epoch time), its calibration fit and its evaluation; a diverged run counts its completed epochs
    (``diverged`` True)."""
    import json
    from pathlib import Path

    rows = []
    runs = Path(export) / "runs"
    for meta_path in sorted([*runs.glob("*/*/seed*/model.json"), *runs.glob("*/*/seed*/diverged.json")]):
        folder = meta_path.parent
        log, summary = folder / "train_log.csv", folder / "eval" / "summary.json"
        calibration = json.loads(meta_path.read_text()).get("calibration") or {}
        rows.append({"method": folder.parent.name, "seed": int(folder.name.removeprefix("seed")),
                     "diverged": meta_path.name == "diverged.json",
                     "train_s": (float(pd.read_csv(log).groupby("epoch").seconds.first().sum())
                                 if log.is_file() else float("nan")),
                     "calibrate_s": float(calibration.get("seconds", float("nan"))) if calibration else float("nan"),
                     "eval_s": (float(json.loads(summary.read_text())["meta"]["seconds"])
                                if summary.is_file() else float("nan"))})
    return pd.DataFrame(rows, columns=["method", "seed", "diverged", "train_s", "calibrate_s", "eval_s"])


def per_class_changes(per_class: pd.DataFrame, methods_per_class: pd.DataFrame, attack: str,
                      baselines) -> pd.DataFrame:
    """Every class under ``attack``, from an experiment's report tables: each baseline's accuracy over
    its seeds (mean, 95% Student-t) and each lever's per-seed paired change against it (mean, 95% t).
    One row per (class, method); accuracies in [0, 1]."""
    from classrobust.analysis.methods import seed_interval

    runs = per_class[per_class.attack == attack]
    diffs = methods_per_class[methods_per_class.attack == attack]
    rows = []
    for method in baselines:
        for (index, name), group in runs[runs.method == method].groupby(["class_index", "class_name"]):
            mean, low, high = seed_interval(group.accuracy, counts=(int(group.correct.sum()), int(group.n.sum())))
            rows.append({"class_index": index, "class_name": name, "method": method, "baseline_method": method,
                         "seeds": len(group), "value": mean, "low": low, "high": high, "kind": "accuracy"})
    levers = diffs[~diffs.method.isin(set(diffs.baseline_method))]  # a baseline against another is no lever
    for r in levers.itertuples(index=False):
        rows.append({"class_index": r.class_index, "class_name": r.class_name, "method": r.method,
                     "baseline_method": r.baseline_method, "seeds": r.seeds, "value": r.diff_mean,
                     "low": r.diff_low, "high": r.diff_high, "kind": "change"})
    return pd.DataFrame(rows)
