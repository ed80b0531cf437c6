"""The combined report of an experiment: every run's saved results read back, compared, written once.

Writes ``<out>/report/``: ``report.html`` (self-contained), ``report.md`` and CSV tables
(``per_class.csv``, ``overview.csv``, ``attack_consistency.csv``, ``defense_consistency.csv``,
``gain_attribution.csv``, ``weight_norms.csv``, ``attacked_into.csv``, ``ablation.csv``).
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from classrobust import __version__
from classrobust.analysis import seed_interval, wilson_interval
from classrobust.analysis.experiment import experiment_tables
from classrobust.errors import UsageError
from classrobust.results import CLEAN, ClasswiseResult, format_eps
from classrobust.io import atomic_directory
from classrobust.report import figures
from classrobust.report.page import Page as _Page
from classrobust.report.page import Sections, html_document, interval_cell, render
from classrobust.report.page import pct as _pct

INDEX = "experiment.json"


def _cell(acc: float, lo: float, hi: float) -> str:
    return "" if pd.isna(acc) else interval_cell(acc, lo, hi)


def _ratio(value: float, lo: float, hi: float) -> str:
    return "" if pd.isna(value) else f"{value:.2f} [{lo:.2f}, {hi:.2f}]"


def _cells(frame: pd.DataFrame, key: str, fmt=_cell) -> list[str]:
    """``fmt`` of each row's ``key`` with its ``key_low`` and ``key_high``."""
    return [fmt(*v) for v in zip(frame[key], frame[f"{key}_low"], frame[f"{key}_high"])]


def load_runs(out_dir: Path) -> tuple[dict, dict[str, ClasswiseResult], dict[str, ClasswiseResult]]:
    """The experiment index, every finished run's result and the temperature step's test
    evaluations (empty without the step), both keyed by run key."""
    index_path = out_dir / INDEX
    if not index_path.is_file():
        raise UsageError(f"{out_dir} holds no experiment ({INDEX}); run `classrobust experiment FILE` first")
    index = json.loads(index_path.read_text())
    results = {}
    for run in [*index["runs"], *({"key": a["retrained"], "dir": a["dir"]} for a in index["ablation"])]:
        result = ClasswiseResult.load(out_dir / run["dir"] / "eval")
        sidecar = out_dir / run["dir"] / "model.json"
        if sidecar.is_file():  # the training's validation numbers: where a defense's target class comes from
            result.meta["train_metrics"] = json.loads(sidecar.read_text()).get("metrics", {})
        results[run["key"]] = result
    temperature = index.get("temperature")
    dirs = {r["key"]: r["dir"] for r in index["runs"]}
    temperature_results = {key: ClasswiseResult.load(out_dir / dirs[key] / temperature["dir"])  # the chosen T
                           for key in (temperature or {}).get("runs", [])}
    return index, results, temperature_results


def _mean_matrix(long: pd.DataFrame, a: str, b: str, value: str) -> pd.DataFrame:
    names = list(dict.fromkeys([*long[a], *long[b]]))
    m = pd.DataFrame(np.eye(len(names)), index=names, columns=names)
    for (x, y), v in long.groupby([a, b], sort=False)[value].mean().items():
        m.loc[x, y] = m.loc[y, x] = v
    return m


@dataclass
class ExperimentContext:
    """What every section of the experiment report reads: the index, the combined tables, and each
    dataset's strongest attack (the lowest pooled robust accuracy)."""

    index: dict
    tables: dict[str, pd.DataFrame]
    strongest: dict[str, str]


def strongest_attacks(per_class: pd.DataFrame) -> dict[str, str]:
    """Each dataset's attack with the fewest correct points pooled over methods and seeds."""
    strongest = {}
    for dataset, g in per_class.groupby("dataset", sort=False):
        attacks = [a for a in dict.fromkeys(g["attack"]) if a != CLEAN]
        strongest[dataset] = min(attacks, key=lambda a: g[g.attack == a]["correct"].sum()) if attacks else CLEAN
    return strongest


def build_experiment_report(out_dir: str | Path) -> Path:
    """Write ``<out_dir>/report/`` from the experiment's saved results; returns ``report.html``'s path."""
    out_dir = Path(out_dir)
    index, results, temperature_results = load_runs(out_dir)
    tables = experiment_tables(index, results, temperature_results)
    with atomic_directory(out_dir / "report") as stage:
        out = Sections(_Page(stage))
        title = f"Experiment {index['name']}"
        out.md += [f"# {title}", ""]
        out.page.parts.append(f"<h1>{html.escape(title)}</h1>")
        if index.get("description"):
            out.page.text(index["description"])
        first = next(iter(results.values()))
        eps = sorted({format_eps(r.meta.get("eps")) for r in results.values()})
        meta_line = (f"{len(index['runs'])} runs from {index['source']}; attacks {index['eval']['attacks']}; "
                     f"eps {', '.join(eps)}; {len(first.labels)} test images per run; classrobust {__version__}")
        out.page.text(meta_line, "meta")
        out.md += [meta_line, ""]
        for name, df in tables.items():
            df.to_csv(stage / f"{name}.csv", index=False)
        render(EXPERIMENT_SECTIONS, out, ExperimentContext(index, tables, strongest_attacks(tables["per_class"])))
        (stage / "report.html").write_text(html_document(title, "\n".join(out.page.parts)))
        (stage / "report.md").write_text("\n".join(out.md))
    return out_dir / "report" / "report.html"


def _diverged_section(out: Sections, ctx: ExperimentContext) -> None:
    """The runs whose training diverged: left out of every table below, listed here so that a method's
    seed count is read with them in mind."""
    index = ctx.index
    diverged = index.get("diverged") or []
    if not diverged:
        return
    def what(d):
        if d.get("declared_failed"):
            return f"declared failed: {d['declared_failed']}"
        return (f"epoch {d['epoch']}, by step {d['step']}" if d["diverged_run"] == d["key"]
                else f"its base {d['diverged_run']} (epoch {d['epoch']})")

    table = pd.DataFrame([{"run": d["key"], "method": d["method"], "seed": d["seed"], "diverged": what(d)}
                          for d in diverged])
    out.section("Runs that diverged or were declared failed", "diverged",
                f"{len(diverged)} run(s) hit a non-finite training loss, or kept failing and were declared failed "
                "(`--declare-failed`), and have no test results; every table below leaves them out, so their "
                "methods are compared with their baselines on the seeds that finished (the seeds column says how "
                "many). Such a run is a failure of its method's recipe on that seed, not missing data.",
                table, "diverged")


def _seed_cell(mean, low, high, t_p, perm_p, unit: str = "seed") -> str:
    if pd.isna(mean):
        return ""
    if pd.isna(low):
        return f"{100 * mean:+.1f} (one {unit}: no test)"
    if low == high:  # the same difference for every unit: a t-interval of zero width says nothing
        return f"{100 * mean:+.1f} on every {unit}, perm p {perm_p:.2g}"
    return f"{100 * mean:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}], t p {t_p:.2g}, perm p {perm_p:.2g}"


def _methods_sections(out: Sections, ctx: ExperimentContext):
    tables = ctx.tables
    mc = tables["methods"]
    explained = set()  # the long explanation once per comparison, not once per attack
    for (dataset, baseline, attack), g in (mc.groupby(["dataset", "baseline_method", "attack"], sort=False)
                                          if len(mc) else []):
        several = mc[mc.dataset == dataset]["baseline_method"].nunique() > 1

        def ci(v, lo, hi):
            return f"{100 * v:.1f}" + ("" if pd.isna(lo) else f" [{100 * lo:.1f}, {100 * hi:.1f}]")

        one_seed = bool((g["seeds"] == 1).all())  # no spread across seeds: Wilson on the test points
        avg_lo, avg_hi = (g.avg_pooled_low, g.avg_pooled_high) if one_seed else (g.avg_low, g.avg_high)
        w_lo, w_hi = (g.worst_pooled_low, g.worst_pooled_high) if one_seed else (g.worst_low, g.worst_high)
        shown = pd.DataFrame({
            "method": g["method"], "seeds": g["seeds"],
            "average": [ci(*v) for v in zip(g.avg, avg_lo, avg_hi)],
            f"{g.worst_class.iloc[0]}": [ci(*v) for v in zip(g.worst, w_lo, w_hi)],
            "own worst class": [ci(*v) for v in zip(g.worst_any, g.worst_any_low, g.worst_any_high)],
            "Δ average": [f"{100 * v:+.1f}" for v in g.avg_vs_baseline],
            "Δ worst": [f"{100 * v:+.1f}" for v in g.worst_vs_baseline],
            "Δ worst, seeds": ["" if method == baseline else _seed_cell(m, lo, hi, tp, pp)
                               for method, m, lo, hi, tp, pp in zip(g["method"], g.worst_diff_mean, g.worst_diff_low,
                                                                    g.worst_diff_high, g.worst_diff_t_p,
                                                                    g.worst_diff_perm_p)],
            "McNemar b/c": [f"{b}/{c}" for b, c in zip(g.mcnemar_b, g.mcnemar_c)],
            "p (Holm)": ["" if pd.isna(p) else f"{p:.3g}" for p in g.mcnemar_p_holm]})
        against = f" against {baseline}" if several else ""
        if (dataset, baseline) in explained:
            out.section(f"{dataset}: methods{against} under {attack}",
                        f"methods-{dataset}{against.replace(' ', '-')}-{attack}",
                        f"The columns of the first table of this comparison, under {attack}.", shown,
                        f"methods_{dataset}{against.replace(' ', '_')}_{attack}")
            continue
        explained.add((dataset, baseline))
        out.section(f"{dataset}: methods{against} under {attack}", f"methods-{dataset}{against.replace(' ', '-')}-{attack}",
                    ("Accuracy (%) of one seed with a 95% Wilson interval over the test points (one seed: no "
                     "interval across seeds); " if one_seed else
                     "Accuracy (%) averaged over seeds with a 95% Student-t interval across seeds; ")
                    + (f"'{g.worst_class.iloc[0]}' is {baseline}'s worst class on the validation split (chosen "
                       "before the test split was read; averaged over its seeds), "
                       if g.target_chosen_on.iloc[0] == "validation" else
                       f"'{g.worst_class.iloc[0]}' is {baseline}'s worst class under {attack} on the test split "
                       "(pooled over seeds; CHOSEN ON THE TEST RESULTS it is scored on: no validation numbers were "
                       "found), ")
                    + f"'own worst class' each run's own worst class. Δ against {baseline}. McNemar: the worst "
                    f"class's points, paired with {baseline} of the same seed and pooled over seeds "
                    f"(b: right under {baseline} only, c: right under the method only), Holm-adjusted over "
                    "methods: test-sample noise within these runs only, not evidence about the method. "
                    "'Δ worst, seeds' is the evidence: the per-seed paired difference on that class, its 95% "
                    "t-interval, the paired t-test p and the exact sign-flip permutation p over seeds ("
                    + _alternative_note(g["worst_alternative"].iloc[0] if "worst_alternative" in g else "two-sided")
                    + ").", shown, f"methods_{dataset}{against.replace(' ', '_')}_{attack}")



def _per_class_differences_section(out: Sections, ctx: ExperimentContext):
    tables = ctx.tables
    diffs = tables["methods_per_class"]
    if not len(diffs) or (diffs["seeds"] < 2).all():
        return
    for (dataset, baseline), g in diffs.groupby(["dataset", "baseline_method"], sort=False):
        several = diffs[diffs.dataset == dataset]["baseline_method"].nunique() > 1
        against = f" {baseline}" if several else " the baseline"
        strongest = g.groupby("attack", sort=False)["baseline"].mean().idxmin()
        g = g[g.attack == strongest]
        shown = pd.DataFrame({
            "method": g["method"], "class": g["class_name"], "seeds": g["seeds"],
            "baseline": [f"{100 * v:.1f}" for v in g["baseline"]],
            "method accuracy": [f"{100 * v:.1f}" for v in g["method_accuracy"]],
            "Δ, seeds": [_seed_cell(*v) for v in zip(g.diff_mean, g.diff_low, g.diff_high, g.diff_t_p,
                                                     g.diff_perm_p)],
            "perm p (Holm over classes)": [f"{p:.2g}" for p in g["perm_p_holm"]]})
        out.section(f"{dataset}: every class against{against} under {strongest}",
                    f"pcd-{dataset}{against.replace(' ', '-') if several else ''}",
                    "Per class: the accuracy (%) averaged over seeds, and the per-seed paired difference against "
                    "the baseline of the same seed with its 95% t-interval, paired t-test p and exact sign-flip p "
                    "(two-sided), Holm-adjusted over the classes of one method. Every attack in "
                    "methods_per_class.csv.", shown,
                    f"methods_per_class_{dataset}{against.replace(' ', '_') if several else ''}")


def _alternative_note(alternative: str) -> str:
    if alternative == "two-sided":
        return "two-sided; with n seeds it cannot go below 2/2^n"
    return (f"one-sided, '{alternative}': the direction declared in the experiment file before the runs; with n "
            "seeds it cannot go below 1/2^n")


def _overview_section(out: Sections, ctx: ExperimentContext):
    tables = ctx.tables
    ov = tables["overview"]
    shown = ov.assign(accuracy=[_cell(*v) for v in zip(ov.accuracy, ov.ci_low, ov.ci_high)],
                      worst=[f"{c}: {_cell(*v)}" for c, *v in zip(ov.worst_class, ov.worst_accuracy,
                                                                 ov.worst_ci_low, ov.worst_ci_high)])
    out.section("Overview", "overview", "Average and worst-class accuracy (%) per run and attack, with 95% Wilson "
                "intervals.", shown[["dataset", "method", "seed", "attack", "accuracy", "worst"]], "overview_table")



def _per_class_sections(out: Sections, ctx: ExperimentContext):
    pc, strongest = ctx.tables["per_class"], ctx.strongest
    for dataset, g in pc.groupby("dataset", sort=False):
        keys = ["method", "attack", "class_index", "class_name"]
        pooled = g.groupby(keys, sort=False)[["correct", "n"]].sum().reset_index()
        seeds = int(g["seed"].nunique())
        if seeds > 1:  # the training run is the unit: mean over seeds with a t-interval across them
            cells = [seed_interval(h["accuracy"].to_numpy(), counts=(int(h["correct"].sum()), int(h["n"].sum())))
                     for _, h in g.groupby(keys, sort=False)]
            pooled = pooled.assign(accuracy=[c[0] for c in cells], ci_low=[c[1] for c in cells],
                                   ci_high=[c[2] for c in cells])
        else:
            lo, hi = wilson_interval(pooled["correct"], pooled["n"])
            pooled = pooled.assign(accuracy=pooled["correct"] / pooled["n"], ci_low=lo, ci_high=hi)
        for attack in [CLEAN, strongest[dataset]]:
            sel = pooled[pooled.attack == attack]
            wide = sel.assign(cell=[_cell(*v) for v in zip(sel.accuracy, sel.ci_low, sel.ci_high)]).pivot(
                index="class_name", columns="method", values="cell")
            wide = wide.reindex(index=list(dict.fromkeys(sel["class_name"])),
                                columns=list(dict.fromkeys(sel["method"])))
            wide.index.name, wide.columns.name = "class", None
            out.section(f"{dataset}: per-class accuracy under {attack}", f"pc-{dataset}-{attack}",
                        (f"Per-class accuracy (%) averaged over {seeds} seeds with a 95% Student-t interval across "
                         "seeds (the Wilson interval of the pooled points where every seed scores the same)"
                         if seeds > 1 else "Per-class accuracy (%) with 95% Wilson intervals")
                        + "; every attack's table, per run, is in per_class.csv.", wide,
                        f"per_class_{dataset}_{attack}", index_=True)
            heat = sel.pivot(index="class_name", columns="method", values="accuracy").reindex(
                index=list(dict.fromkeys(sel["class_name"])))
            if attack != CLEAN and len(heat) <= 20:
                out.page.figure(figures.accuracy_heatmap(heat, f"{dataset}: per-class {attack} accuracy"),
                                f"per_class_{dataset}_{attack}", f"per-class {attack} accuracy on {dataset}")


def _attacked_into_section(out: Sections, ctx: ExperimentContext):
    tables, strongest = ctx.tables, ctx.strongest
    into = tables.get("attacked_into_seeds", pd.DataFrame())
    if len(into):
        shown = pd.concat([g[g.attack == strongest[dataset]] for dataset, g in into.groupby("dataset", sort=False)])
        shown = shown.assign(same_top=[f"{a} of {b}" for a, b in zip(shown.runs_same_top, shown.runs)])
        shown = shown[["dataset", "method", "seeds", "attack", "class_name", "fooled", "into_1", "share_1", "into_2",
                       "share_2", "top3_share", "same_top"]].rename(columns={"same_top": "runs with the same top class"})
        out.section("Where each class's adversarial examples land", "into",
                    "Per method under the strongest attack, pooled over seeds: each class's flipped points (correct "
                    "clean, wrong under attack), the two classes receiving most of them and the share the top three "
                    "receive; 'runs with the same top class': in how many of the runs with a flipped point of that "
                    "class the largest share went to the pooled top class (ties: the lower class index). Every attack "
                    "in attacked_into_seeds.csv; every run in attacked_into.csv.",
                    shown, "attacked_into_pooled", {c: _pct for c in ("share_1", "share_2", "top3_share")})


def _consistency_sections(out: Sections, ctx: ExperimentContext):
    tables, strongest = ctx.tables, ctx.strongest
    ac = tables["attack_consistency"]
    if len(ac):
        for dataset, g in ac.groupby("dataset", sort=False):
            m = _mean_matrix(g, "attack_a", "attack_b", "spearman")
            m.index.name = "attack"
            out.section(f"{dataset}: attack consistency", f"ac-{dataset}",
                        "Spearman rank correlation of per-class accuracy between attacks, averaged over runs "
                        "(methods and seeds); per-run values and Kendall tau in attack_consistency.csv.",
                        m.round(3), f"attack_consistency_{dataset}", index_=True)
            out.page.figure(figures.matrix_heatmap(m, f"{dataset}: attack consistency (Spearman)"),
                            f"attack_consistency_{dataset}", "attack consistency")
    dc = tables["defense_consistency"]
    if len(dc):
        for dataset, g in dc.groupby("dataset", sort=False):
            g = g[g.attack == strongest[dataset]]
            m = _mean_matrix(g, "method_a", "method_b", "spearman")
            m.index.name = "method"
            out.section(f"{dataset}: defense consistency under {strongest[dataset]}", f"dc-{dataset}",
                        "Spearman rank correlation of per-class accuracy between training methods, averaged over "
                        "seeds (every attack in defense_consistency.csv).", m.round(3),
                        f"defense_consistency_{dataset}", index_=True)


def _gain_section(out: Sections, ctx: ExperimentContext):
    tables = ctx.tables
    gains = tables["gain_attribution"]
    if len(gains):
        out.section("Stronger-attack gain attribution", "gain",
                    "Per run, the points lost at each rung of the attack ladder (weakest to strongest by overall "
                    "accuracy) and the share taken by the 3 classes weakest under the first rung; the last row of "
                    "a run is the whole climb from the weakest attack to the strongest (the 3 classes weakest "
                    "under the weakest attack). Shares of rungs that lose only a few points are noise, and can "
                    "be negative or above 100%: the per-point worst case of two different attacks is not nested.",
                    gains[["dataset", "method", "seed", "step", "from", "to", "drop", "top3_vulnerable_share"]],
                    "gain_summary", {"top3_vulnerable_share": _pct})
    pooled = tables["gain_seeds"]
    if len(pooled):
        shown = pd.DataFrame({
            "dataset": pooled["dataset"], "method": pooled["method"], "seeds": pooled["seeds"],
            "step": pooled["step"], "from": pooled["from"], "to": pooled["to"], "vulnerable": pooled["vulnerable"],
            "points lost": pooled["drop"].astype(int),
            "vulnerable share of the loss": _cells(pooled, "share"),
            "their share of all points": [_pct(v) for v in pooled.share_of_points],
            "their share of the points robust under 'from'": _cells(pooled, "share_of_robust"),
            "excess over all points": _cells(pooled, "excess_over_points", _ratio),
            "excess over robust points": _cells(pooled, "excess_over_robust", _ratio)})
        out.section("Gain attribution over seeds, with both denominators", "gain-seeds",
                    "Pooled over seeds: the share of the points lost between two attacks that falls on the 3 "
                    "classes weakest under the weaker one (averaged over seeds), against two baselines: their "
                    "share of all points, and their share of the points still robust under the weaker attack "
                    "(what the stronger attack could take). The excess is the observed share divided by each; "
                    "above 1 means the stronger attack gains more on the vulnerable classes than that baseline "
                    "predicts. 95% two-level bootstrap intervals (seeds, then points within class).",
                    shown, "gain_seeds_table")


def _disparity_seeds_section(out: Sections, ctx: ExperimentContext):
    tables = ctx.tables
    ds = tables["disparity_seeds"]
    if not len(ds):
        return
    shown = pd.DataFrame({"dataset": ds["dataset"], "method": ds["method"], "attack": ds["attack"],
                          "seeds": ds["seeds"], "average": _cells(ds, "mean"), "worst class": _cells(ds, "worst"),
                          "gap (best - worst)": _cells(ds, "gap"), "spread (std over classes)": _cells(ds, "std")})
    out.section("Class disparity over seeds", "disparity-seeds",
                "Per method and attack, from the per-class accuracy averaged over seeds (%): the worst class, the "
                "gap to the best and the standard deviation across classes, each with a 95% two-level bootstrap "
                "interval (seeds drawn with replacement, then every class's accuracy from its Jeffreys posterior "
                "given its test points): it holds both the variation between training runs and the test-sample "
                "noise, and never collapses to a point at 0% or 100%.", shown, "disparity_seeds_table")


def _weight_norm_section(out: Sections, ctx: ExperimentContext):
    tables = ctx.tables
    summary = tables.get("weight_norms_seeds", pd.DataFrame())
    if len(summary):
        def tested(t_p, t_holm, perm_p, perm_holm):
            if pd.isna(perm_p):
                return ""
            t = "" if pd.isna(t_p) else f"t p {t_p:.2g} (Holm {t_holm:.2g}), "
            return f"{t}sign-flip p {perm_p:.2g} (Holm {perm_holm:.2g})"

        shown = pd.DataFrame({
            "dataset": summary.dataset, "method": summary.method, "attack": summary.attack, "seeds": summary.seeds,
            "Spearman: mean [lowest, highest]": [_ratio(*v) for v in zip(summary.spearman_mean, summary.spearman_min,
                                                                          summary.spearman_max)],
            "runs p < 0.05 (Holm)": [f"{a} ({b})" for a, b in zip(summary.spearman_runs_p05,
                                                                 summary.spearman_runs_p05_holm)],
            "> 0 over seeds": [tested(*v) for v in zip(summary.spearman_t_p, summary.spearman_t_p_holm,
                                                       summary.spearman_perm_p, summary.spearman_perm_p_holm)],
            "partial (clean held fixed): mean [lowest, highest]": [
                _ratio(*v) for v in zip(summary.partial_spearman_mean, summary.partial_spearman_min,
                                        summary.partial_spearman_max)],
            "partial > 0 over seeds": [tested(*v) for v in zip(
                summary.partial_spearman_t_p, summary.partial_spearman_t_p_holm, summary.partial_spearman_perm_p,
                summary.partial_spearman_perm_p_holm)]})
        out.section("Classifier weight norms against per-class accuracy", "norms",
                    "Per method and attack, over seeds: the Spearman correlation of the final layer's per-class weight "
                    "norm with per-class accuracy (mean, lowest and highest run); how many runs reach p < 0.05 on "
                    "their own (exact permutation p over the classes; in brackets after Holm over every run's "
                    "tests); the t-test and the exact sign-flip test across seeds that the correlation is positive "
                    "(one-sided, the paper's direction, fixed before the runs; Holm over this table's t-tests and, "
                    "separately, its sign-flip tests; with n seeds the sign-flip p cannot go below 1/2^n); and the same for the partial Spearman correlation with clean accuracy held fixed: "
                    "whether the norms say anything about robustness beyond clean accuracy. Per run, with Pearson: "
                    "weight_norms.csv.", shown, "weight_norms_seeds_table")


def _ablation_section(out: Sections, ctx: ExperimentContext):
    tables = ctx.tables
    ab = tables["ablation"]
    if not len(ab):
        return
    shown = ab.copy().astype(object)
    for c in [c for c in ab.columns if "accuracy" in c or "clean" in c]:
        shown[c] = ab[c].map(_pct)
    shown["mcnemar_p"] = ab["mcnemar_p"].map(lambda p: f"{p:.3g}")
    shown.index = [f"{d} seed {s} {v}" for d, s, v in zip(ab["dataset"], ab["seed"], ab["variant"])]
    shown = shown.drop(columns=["dataset", "seed"]).T
    shown.index.name = "quantity"
    chosen = set(ab["weak_chosen_on"])
    out.section("Remove-the-confused-class ablation", "ablation",
                "Per seed: the weak class (the base run's worst class on "
                + (" / ".join(sorted(chosen)) if chosen != {"validation"} else "the validation split")
                + (", CHOSEN ON THE TEST RESULTS it is scored on" if "test split" in chosen else "")
                + "), the class that receives most of its flipped points (correct when clean, wrong under the "
                "attack) on the test split, dropped from training ('confused'), and a control retraining without "
                "a class drawn at random from the others ('control'). 'others' are exactly the classes other "
                "than the weak class and the two dropped ones. McNemar on the weak class's points (base vs "
                "retrained): test-sample noise within one pair of runs.", shown, "ablation_table", index_=True)
    per_class = tables["ablation_per_class"]
    if len(per_class):
        mean = per_class.groupby(["dataset", "variant", "class_name"], sort=False).agg(
            seeds=("seed", "nunique"), before=("before", "mean"), after=("after", "mean"),
            change=("change", "mean"), dropped_in=("dropped", "sum")).reset_index()
        mean["dropped_in"] = mean["dropped_in"].map(lambda k: f"{k} seed(s)" if k else "")
        out.section("Every class under the ablation", "ablation-classes",
                    "Accuracy (%) under the ablation's attack before and after retraining, averaged over seeds, "
                    "for each retraining (confused or control); 'dropped_in': seeds whose retraining left that "
                    "class out (it is never predicted then). Per seed in ablation_per_class.csv.",
                    mean, "ablation_classes_table",
                    {"before": _pct, "after": _pct, "change": lambda v: f"{100 * v:+.1f}"})
    tests = tables["ablation_seeds"]
    if len(tests):
        shown = tests.assign(cell=[_seed_cell(*v) for v in zip(tests["mean"], tests.low, tests.high, tests.t_p,
                                                                tests.perm_p)])
        out.section("The ablation, seed by seed", "ablation-seeds",
                    "Change in accuracy (points) of the weak class and of the other classes, per retraining and "
                    "as the per-seed difference between dropping the confused class and dropping the control "
                    "class (the training run is the unit): mean, 95% t-interval, t-test and exact sign-flip p. "
                    "The paper's claim (dropping the confused class helps the weak class more) was fixed before "
                    "the runs and is tested one-sided ('greater'); the rest two-sided; with n seeds the sign-flip "
                    "p cannot go below 1/2^n one-sided (perm_floor).",
                    shown[["dataset", "classes", "change", "seeds", "cell", "alternative", "perm_floor"]],
                    "ablation_seeds_table", {"perm_floor": lambda v: f"{v:.3g}"})


def _temperature_section(out: Sections, ctx: ExperimentContext):
    tables, entry = ctx.tables, ctx.index.get("temperature")
    if not entry or "temperature_seeds" not in tables:
        return
    sweep = pd.DataFrame({"T": list(entry["validation_accuracy"]),
                          "Temperature-PGD, validation": [_pct(v) for v in entry["validation_accuracy"].values()]})
    out.section("Temperature-PGD: the temperature, chosen on validation", "temperature-sweep",
                f"Robust accuracy (%) on {entry['val_limit']} validation images (held out of each run's training "
                f"split) under Temperature-PGD-{entry['steps']} at each candidate T, averaged over the "
                f"{len(entry['runs'])} runs of {', '.join(entry['methods'])}; PGD-{entry['steps']} on the same "
                f"images: {_pct(entry['validation_pgd_accuracy'])}. Chosen: T = {entry['chosen']:g} (lowest "
                "average). " + entry["order"] + ".", sweep, "temperature_sweep_table")
    seeds = tables["temperature_seeds"]
    shown = pd.DataFrame({
        "dataset": seeds["dataset"], "methods": seeds["methods"], "class": seeds["class_name"],
        "runs": seeds["runs"], "PGD": [_pct(v) for v in seeds["pgd"]],
        "Temperature-PGD": [_pct(v) for v in seeds["temp_pgd"]],
        "Δ, runs": [_seed_cell(*v, unit="run") for v in zip(seeds.diff_mean, seeds.diff_low, seeds.diff_high,
                                                            seeds.diff_t_p, seeds.diff_perm_p)],
        "perm p (Holm over classes)": ["" if pd.isna(p) else f"{p:.2g}" for p in seeds["perm_p_holm"]]})
    out.section(f"Temperature-PGD at T = {entry['chosen']:g} against PGD on the test split", "temperature",
                f"Accuracy (%) under PGD-{entry['steps']} and Temperature-PGD-{entry['steps']} (same eps, steps and "
                "seed) averaged over runs; Δ: the per-run difference (Temperature-PGD minus PGD), the training run "
                "as the unit, 95% t-interval, t-test and exact sign-flip p, one-sided ('less': Temperature-PGD "
                "is the stronger attack, the paper's claim, fixed before the runs). Per run, McNemar on the "
                "paired points (test-sample noise within that run) in temperature_runs.csv.",
                shown, "temperature_table")
    gain = tables["temperature_gain"]
    if len(gain):
        shown = pd.DataFrame({
            "dataset": gain["dataset"], "runs": gain["seeds"], "vulnerable (weakest under PGD)": gain["vulnerable"],
            "points Temperature-PGD adds": gain["drop"].astype(int),
            "share on the vulnerable classes": _cells(gain, "share"),
            "excess over all points": _cells(gain, "excess_over_points", _ratio),
            "excess over points robust to PGD": _cells(gain, "excess_over_robust", _ratio)})
        out.section("Where Temperature-PGD's extra successes fall", "temperature-gain",
                    "Net points Temperature-PGD breaks beyond PGD, pooled over runs, and the share on the 3 classes "
                    "weakest under PGD, against their share of all points and of the points robust to PGD "
                    "(excess above 1: concentrated on them); 95% two-level bootstrap intervals (runs, then points).",
                    shown, "temperature_gain_table")


#: the experiment report, in reading order: each a function ``(Sections, ExperimentContext) -> None``
EXPERIMENT_SECTIONS = (_diverged_section, _methods_sections, _per_class_differences_section, _overview_section,
                       _per_class_sections, _attacked_into_section, _consistency_sections, _disparity_seeds_section,
                       _gain_section, _weight_norm_section, _ablation_section, _temperature_section)


def attack_pairs_markdown(table: pd.DataFrame) -> str:
    """:func:`~classrobust.analysis.experiment.export_attack_pairs` as markdown: per comparison and class,
    the mean per-run difference (points, A minus B) with its 95% t-interval, the two-sided t and
    sign-flip p-values, and on how many runs A was lower and higher."""
    lines = ["| A minus B | points | runs | difference [95% t] | t p | sign-flip p | A lower / higher |",
             "|---|---|---|---|---|---|---|"]
    for r in table.itertuples(index=False):
        lines.append(f"| {r.comparison} | {r[1]} | {r.runs} | {r.mean:+.2f} [{r.low:+.2f}, {r.high:+.2f}] | {r.t_p:.2g} "
                     f"| {r.perm_p:.2g} | {r.lower} / {r.higher} |")
    return "\n".join(lines)
