"""The combined tables of an experiment (long format), computed from saved per-run results only:
overview, per-class accuracy, where adversarial examples land, attack and defense consistency,
gain attribution, weight norms, method comparison, the ablation."""

from __future__ import annotations

import numpy as np
import pandas as pd

from classrobust.analysis.confusion import pooled_destinations, top_destinations
from classrobust.analysis.consistency import (ablation_per_class, attack_consistency, confused_class_ablation,
                                              discordant_pairs, gain_attribution, mcnemar_exact,
                                              gain_attribution_seeds, rank_correlations, weight_norm_correlation)
from classrobust.analysis.methods import compare_methods, per_class_differences
from classrobust.analysis.stats import (disparity_seeds_table, holm, paired_seed_test, per_class_table,
                                        seed_tests_by_class, wilson_interval)
from classrobust.results import CLEAN, ClasswiseResult


def _holm_columns(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """``<column>_holm`` for each p-value column: Holm-adjusted over every non-missing p-value of
    all those columns together (the family of correlations the table reports)."""
    present = [c for c in columns if c in table]
    if table.empty or not present:
        return table
    adjusted = holm(table[present].to_numpy(dtype=float))
    return table.assign(**{f"{c}_holm": adjusted[:, i] for i, c in enumerate(present)})


def validation_worst(train_metrics: list[dict]) -> int | None:
    """The worst class on the *validation* split (per-class PGD accuracy of the published weights,
    averaged over runs) from the runs' training-sidecar metrics; None if any run lacks them."""
    per_run = [m.get("val_pgd_accuracy_per_class") for m in train_metrics]
    if not per_run or any(v is None for v in per_run):
        return None
    return int(np.nanargmin(np.nanmean(np.asarray(per_run, dtype=float), axis=0)))


def validation_target(baseline_runs: list[ClasswiseResult]) -> int | None:
    """The baseline's worst class on the validation split, averaged over its seeds, from the training
    sidecars the evaluations carry (``train_metrics``); None if any run lacks them."""
    return validation_worst([r.meta.get("train_metrics", {}) for r in baseline_runs])


def seed_level_tables(runs: pd.DataFrame, results: dict[str, ClasswiseResult],
                      k_vulnerable: int = 3) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Per (dataset, method): the across-class disparity under every attack with two-level
    (seeds, then test points) intervals; the stronger-attack gain attribution pooled over
    seeds with both denominators (:func:`gain_attribution_seeds`; the vulnerable classes are the
    ``k_vulnerable`` lowest under the weaker attack of each step, averaged over seeds); and where
    each class's flipped points land under every attack, pooled over seeds
    (:func:`~classrobust.analysis.confusion.pooled_destinations`)."""
    disparity, gains, into = [], [], []
    for (dataset, method), group in runs.groupby(["dataset", "method"], sort=False):
        seeds = [results[k] for k in group["key"]]
        ids = {"dataset": dataset, "method": method}
        first = seeds[0]
        for name in first.attacks:
            correct = np.array([r.attacks[name].correct_per_class for r in seeds])
            n = np.array([r.attacks[name].n_per_class for r in seeds])
            disparity.append({**ids, "attack": name, **disparity_seeds_table(correct, n)})
        attacks = [a for a in first.attacks if a != CLEAN]
        into += [pooled_destinations(seeds, name).assign(**ids, seeds=len(seeds)) for name in attacks]
        ladder = sorted(attacks, key=lambda a: -np.mean([r.attacks[a].accuracy for r in seeds]))
        steps = [(a, b, "rung") for a, b in zip(ladder, ladder[1:])]
        if len(ladder) >= 3:
            steps.append((ladder[0], ladder[-1], "weakest to strongest"))
        for lower, upper, kind in steps:
            gains.append({**ids, "step": kind, "from": lower, "to": upper,
                          **pooled_gain(seeds, lower, upper, k_vulnerable)})
    return (pd.DataFrame(disparity), pd.DataFrame(gains),
            pd.concat(into, ignore_index=True) if into else pd.DataFrame())


def weight_norms_over_seeds(norms: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, method, attack): the per-run correlations of the classifier's per-class weight
    norms with per-class accuracy, summarised with the training run as the unit: the mean, lowest
    and highest Spearman and partial Spearman (controlling for clean accuracy) over seeds, how many
    runs reach p < 0.05 on their own (uncorrected, and Holm over every run's tests), and the
    sign-flip and t tests of "the correlation is positive" across seeds, one-sided: the paper's
    direction (larger norms, more robust classes), fixed before the runs. ``*_perm_p_holm`` and
    ``*_t_p_holm``: Holm over the table's sign-flip tests, and over its t-tests."""
    if not len(norms):
        return pd.DataFrame()
    rows = []
    for (dataset, method, attack), g in norms.groupby(["dataset", "method", "attack"], sort=False):
        row = {"dataset": dataset, "method": method, "attack": attack, "seeds": len(g)}
        for column in ("spearman", "partial_spearman"):
            values = g[column].dropna().to_numpy(dtype=float)
            test = paired_seed_test(values, alternative="greater")
            row.update({f"{column}_mean": test["mean"], f"{column}_min": values.min() if len(values) else np.nan,
                        f"{column}_max": values.max() if len(values) else np.nan,
                        f"{column}_runs_p05": int((g[f"{column}_p"] < 0.05).sum()),
                        f"{column}_runs_p05_holm": int((g[f"{column}_p_holm"] < 0.05).sum()),
                        f"{column}_t_p": test["t_p"], f"{column}_perm_p": test["perm_p"]})
        rows.append(row)
    table = _holm_columns(pd.DataFrame(rows), ["spearman_perm_p", "partial_spearman_perm_p"])
    return _holm_columns(table, ["spearman_t_p", "partial_spearman_t_p"])  # a family of its own


def pooled_gain(runs: list[ClasswiseResult], lower: str, upper: str, k_vulnerable: int = 3) -> dict:
    """:func:`gain_attribution_seeds` from attack ``lower`` to ``upper`` over ``runs``, the vulnerable
    classes being the ``k_vulnerable`` lowest under ``lower`` averaged over the runs (named in
    ``vulnerable``)."""
    mean_lower = np.mean([r.attacks[lower].accuracy_per_class for r in runs], axis=0)
    vulnerable = np.argsort(mean_lower, kind="stable")[:k_vulnerable]
    row = gain_attribution_seeds([(r.labels, r.attacks[lower].predictions == r.labels,
                                   r.attacks[upper].predictions == r.labels) for r in runs],
                                 runs[0].num_classes, vulnerable)
    return {"vulnerable": ", ".join(runs[0].classes[v] for v in vulnerable), **row}


def ablation_tables(entries: list[dict], results: dict[str, ClasswiseResult]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ablation's rows (one per retrained run, :func:`confused_class_ablation`; the classes
    dropped by a seed's two runs are both left out of its "other classes") and every class's
    change (long)."""
    rows, classes = [], []
    for a in entries:
        variant = a.get("variant", "confused")  # indexes written before the control existed
        siblings = [b["dropped_class"] for b in entries
                    if (b["dataset"], b["seed"], b["base"]) == (a["dataset"], a["seed"], a["base"])
                    and b["dropped_class"] != a["dropped_class"]]
        ids = {"dataset": a["dataset"], "seed": a["seed"], "variant": variant,
               "weak_chosen_on": a.get("weak_chosen_on", "test split"),
               "confused_chosen_by": a.get("confused_chosen_by", "all wrong predictions")}
        base, retrained = results[a["base"]], results[a["retrained"]]
        rows.append({**ids, **confused_class_ablation(base, retrained, a["attack"], a["weakest_class"],
                                                      a["dropped_class"], exclude=siblings)})
        classes.append(ablation_per_class(base, retrained, a["attack"], a["dropped_class"])
                       .assign(**ids, dropped_class=a["dropped_class"], weakest_class=a["weakest_class"]))
    return pd.DataFrame(rows), (pd.concat(classes, ignore_index=True) if classes else pd.DataFrame())


def ablation_seed_tests(ablation: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, the training run as the unit: the weak class's change (after - before) when the
    confused class is dropped, when the control class is, and their per-seed difference, with the
    t-interval and the exact sign-flip test; the direction (dropping the confused class helps the
    weak class more than dropping another) is the paper's claim, fixed before the runs, so the
    difference is tested one-sided ("greater"). The same for the other classes (two-sided)."""
    if not len(ablation) or "variant" not in ablation or not (ablation["variant"] == "control").any():
        return pd.DataFrame()
    rows = []
    for dataset, g in ablation.groupby("dataset", sort=False):
        wide = g.pivot(index="seed", columns="variant")
        if "control" not in wide["weakest_accuracy_after"]:
            continue
        weak = {v: wide["weakest_accuracy_after"][v] - wide["weakest_accuracy_before"][v]
                for v in ("confused", "control")}
        others = {v: wide["others_accuracy_after"][v] - wide["others_accuracy_before"][v]
                  for v in ("confused", "control")}
        for what, change, alternative in (("weak class", weak, "greater"), ("other classes", others, "two-sided")):
            paired = (change["confused"] - change["control"]).dropna()
            for label, values, alt in (("dropping the confused class", change["confused"].dropna(), alternative),
                                       ("dropping the control class", change["control"].dropna(), "two-sided"),
                                       ("confused minus control", paired, alternative)):
                test = paired_seed_test(values.to_numpy(), alternative=alt)
                rows.append({"dataset": dataset, "classes": what, "change": label, "seeds": test["seeds"],
                             **{k: test[k] for k in ("mean", "low", "high", "t_p", "perm_p", "perm_floor",
                                                     "alternative")}})
    return pd.DataFrame(rows)


def temperature_tables(entry: dict, runs: pd.DataFrame, results: dict[str, ClasswiseResult],
                       k_vulnerable: int = 3) -> dict[str, pd.DataFrame]:
    """Temperature-PGD at the T chosen on validation against PGD with the same steps, on each run's
    test subset (``results`` keyed by run key, attacks ``pgd`` and ``temp-pgd``):

    - ``temperature_runs``: per run and class ("all" for the whole subset), both accuracies and the
      exact McNemar test of the paired outcomes (b: robust to PGD only, c: robust to
      Temperature-PGD only): test-sample noise within that run;
    - ``temperature_seeds``: the training run as the unit: per dataset (all methods pooled, and
      per method), overall and per class, the per-run difference (Temperature-PGD minus PGD) with
      its t-interval and sign-flip test, one-sided ("less": Temperature-PGD is the stronger attack,
      the direction the paper claims) and Holm over the classes;
    - ``temperature_gain``: where the extra successes fall (:func:`gain_attribution_seeds` from PGD
      to Temperature-PGD, vulnerable = the 3 classes weakest under PGD averaged over runs).
    """
    chosen = entry["chosen"]
    keyed = runs[runs["key"].isin(entry["runs"])]
    per_run, seeds_rows, gain_rows = [], [], []
    for _, run in keyed.iterrows():
        res = results[run["key"]]
        pgd_ok = res.attacks["pgd"].predictions == res.labels
        temp_ok = res.attacks["temp-pgd"].predictions == res.labels
        for k, cls in [(None, "all"), *enumerate(res.classes)]:
            mask = np.ones_like(pgd_ok) if k is None else res.labels == k
            b, c = discordant_pairs(pgd_ok, temp_ok, mask)
            per_run.append({"dataset": run["dataset"], "method": run["method"], "seed": run["seed"],
                            "temperature": chosen, "class_name": cls, "n": int(mask.sum()),
                            "pgd": float(pgd_ok[mask].mean()), "temp_pgd": float(temp_ok[mask].mean()),
                            "only_temp_pgd_breaks": b, "only_pgd_breaks": c, "mcnemar_p": mcnemar_exact(b, c)})
    per_run = pd.DataFrame(per_run)
    for dataset, g in per_run.groupby("dataset", sort=False):
        for method, h in [("all methods", g), *g.groupby("method", sort=False)]:
            groups = dict(list(h.groupby("class_name", sort=False)))
            table = seed_tests_by_class({cls: (g_["temp_pgd"] - g_["pgd"]).to_numpy() for cls, g_ in groups.items()},
                                        alternative="less", overall="all")
            table = table.rename(columns={"seeds": "runs"})
            table.insert(0, "methods", method)
            table.insert(0, "dataset", dataset)
            table.insert(4, "pgd", [float(g_["pgd"].mean()) for g_ in groups.values()])
            table.insert(5, "temp_pgd", [float(g_["temp_pgd"].mean()) for g_ in groups.values()])
            seeds_rows.append(table)
        chosen_runs = [results[k] for k in keyed["key"][keyed["dataset"] == dataset]]
        gain_rows.append({"dataset": dataset, "temperature": chosen,
                          **pooled_gain(chosen_runs, "pgd", "temp-pgd", k_vulnerable)})
    return {"temperature_runs": per_run, "temperature_seeds": pd.concat(seeds_rows, ignore_index=True),
            "temperature_gain": pd.DataFrame(gain_rows)}


def experiment_tables(index: dict, results: dict[str, ClasswiseResult],
                      temperature_results: dict[str, ClasswiseResult] | None = None) -> dict[str, pd.DataFrame]:
    """All the combined tables, long format, from saved results only; ``temperature_results``: the
    temperature step's test evaluations, by run key."""
    runs = pd.DataFrame(index["runs"])
    per_class, overview, att_cons, gains, norms, into = [], [], [], [], [], []
    for run in index["runs"]:
        res = results[run["key"]]
        ids = {"dataset": run["dataset"], "method": run["method"], "seed": run["seed"]}
        per_class.append(per_class_table(res).assign(**ids))
        for name, r in res.attacks.items():
            lo, hi = wilson_interval(int((r.predictions == r.labels).sum()), len(r.labels))
            worst = r.worst_class
            wlo, whi = wilson_interval(r.correct_per_class[worst], r.n_per_class[worst])
            overview.append({**ids, "attack": name, "accuracy": r.accuracy, "ci_low": float(lo), "ci_high": float(hi),
                             "worst_class": res.classes[worst], "worst_accuracy": r.accuracy_per_class[worst],
                             "worst_ci_low": float(wlo), "worst_ci_high": float(whi)})
        attacks = [n for n in res.attacks if n != CLEAN]
        if len(attacks) >= 2:
            sp, kt = attack_consistency(res)
            for a in range(len(attacks)):
                for b in range(a + 1, len(attacks)):
                    att_cons.append({**ids, "attack_a": attacks[a], "attack_b": attacks[b],
                                     "spearman": sp.iloc[a, b], "kendall": kt.iloc[a, b]})
        if attacks:
            ladder = sorted(attacks, key=lambda n: -res.attacks[n].accuracy)
            rungs = [(gain_attribution(res), "rung")]
            if len(ladder) >= 2:  # the whole climb from the weakest to the strongest attack
                rungs.append((gain_attribution(res, [ladder[0], ladder[-1]]).query("`from` != 'clean'"),
                              "weakest to strongest"))
            for g, kind in rungs:
                gains.append(g.groupby(["from", "to"], sort=False).agg(
                    drop=("drop", "sum"), top3_vulnerable_share=("top3_vulnerable_share", "first"))
                    .reset_index().assign(**ids, step=kind))
        w = res.meta.get("classifier_weight_norms")
        if w is not None and len(w) == res.num_classes:
            for name, r in res.attacks.items():
                clean = res.attacks[CLEAN].accuracy_per_class if name != CLEAN and CLEAN in res.attacks else None
                norms.append({**ids, "attack": name,
                              **weight_norm_correlation(np.asarray(w), r.accuracy_per_class, clean)})
        for name in attacks:
            into.append(top_destinations(res, name).assign(**ids))

    def_cons = []
    for dataset, group in runs.groupby("dataset", sort=False):
        for seed, g in group.groupby("seed"):
            if len(g) < 2:
                continue
            first = results[g["key"].iloc[0]]
            for name in first.attacks:
                sp, kt = rank_correlations({m: results[k].attacks[name].accuracy_per_class
                                            for m, k in zip(g["method"], g["key"])})
                methods = list(g["method"])
                for a in range(len(methods)):
                    for b in range(a + 1, len(methods)):
                        def_cons.append({"dataset": dataset, "seed": seed, "attack": name, "method_a": methods[a],
                                         "method_b": methods[b], "spearman": sp.iloc[a, b], "kendall": kt.iloc[a, b]})
    ablation, ablation_classes = ablation_tables(index["ablation"], results)
    comparisons, class_diffs = [], []
    for dataset, group in runs.groupby("dataset", sort=False):
        names = list(results[group["key"].iloc[0]].attacks)
        # each baseline against the methods that name it (the first method's, for files without any)
        baseline_of = group["baseline"] if "baseline" in group else pd.Series(group["method"].iloc[0], group.index)
        for baseline in dict.fromkeys(baseline_of):
            if not (group["method"] == baseline).any():  # every run of the baseline diverged: nothing to pair
                continue
            members = group[(group["method"] == baseline) | (baseline_of == baseline)]
            members = pd.concat([members[members["method"] == baseline], members[members["method"] != baseline]])
            if members["method"].nunique() < 2:
                continue
            keyed = {(m, s): results[k] for m, s, k in zip(members["method"], members["seed"], members["key"])}
            target = validation_target([results[k] for k in members["key"][members["method"] == baseline]])
            ids = {"dataset": dataset, "baseline_method": baseline}
            comparisons.append(compare_methods(keyed, baseline, names, target,
                                               alternatives=index.get("compare")).assign(**ids))
            class_diffs.append(per_class_differences(keyed, baseline, names).assign(**ids))
    disparity_seeds, gain_seeds, into_seeds = seed_level_tables(runs, results)
    norms = _holm_columns(pd.DataFrame(norms), ["pearson_p", "spearman_p", "partial_spearman_p"])
    cat = lambda frames: pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()  # noqa: E731
    return {"methods": cat(comparisons), "methods_per_class": cat(class_diffs), "disparity_seeds": disparity_seeds,
            "gain_seeds": gain_seeds, "per_class": cat(per_class), "overview": pd.DataFrame(overview), "attack_consistency": pd.DataFrame(att_cons),
            "defense_consistency": pd.DataFrame(def_cons), "gain_attribution": cat(gains),
            "weight_norms": norms, "weight_norms_seeds": weight_norms_over_seeds(norms),
            "attacked_into": cat(into), "attacked_into_seeds": into_seeds, "ablation": ablation,
            "ablation_per_class": ablation_classes, "ablation_seeds": ablation_seed_tests(ablation),
            **(temperature_tables(index["temperature"], runs, temperature_results or {})
               if index.get("temperature") else {})}


def export_attack_pairs(export, methods, seeds, pairs, classes=(None,), dataset: str = "fashion-mnist") -> pd.DataFrame:
    """Attack A against attack B on the same test points of every run of an experiment folder or export,
    the training run as the unit (:func:`~classrobust.analysis.consistency.paired_attack_difference`).
    ``pairs``: ((label, A's folder under the run, A's column, B's folder, B's column), ...), folders
    relative to the run (``eval``, ``temperature/test``); ``classes``: None for all points, or a class
    name. One row per pair and class, points."""
    import json
    from pathlib import Path

    from classrobust.analysis.consistency import paired_attack_difference

    rows = []
    for label, a_dir, a_col, b_dir, b_col in pairs:
        runs, names = [], None
        for method in methods:
            for seed in seeds:
                run = Path(export) / "runs" / dataset / method / f"seed{seed}"
                a, b = pd.read_csv(run / a_dir / "samples.csv.gz"), pd.read_csv(run / b_dir / "samples.csv.gz")
                if not np.array_equal(a["index"], b["index"]):
                    raise ValueError(f"{run}: {a_dir} and {b_dir} were evaluated on different points")
                names = names or json.loads((run / a_dir / "summary.json").read_text())["classes"]
                runs.append((a["label"].to_numpy(), a[f"pred_{a_col}"].to_numpy(), b[f"pred_{b_col}"].to_numpy()))
        for cls in classes:
            test = paired_attack_difference(runs, None if cls is None else names.index(cls))
            rows.append({"comparison": label, "class": cls or "all", "runs": len(runs), **test})
    return pd.DataFrame(rows)
