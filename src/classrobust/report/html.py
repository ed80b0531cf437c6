"""``report.html``: one self-contained page (images embedded) built from saved results only."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from classrobust import __version__
from classrobust.analysis import (attack_consistency, default_superclasses, disparity_table, gain_attribution,
                                  holm, per_class_table, read_superclasses, strongest_pairs, superclass_table,
                                  top_destinations, weight_norm_correlation, wilson_interval)
from classrobust.errors import UsageError
from classrobust.results import CLEAN, ClasswiseResult, describe_attack, format_eps
from classrobust.io import atomic_directory, atomic_write_text
from classrobust.report import figures
from classrobust.report.markdown import to_markdown
from classrobust.report.page import Page as _Page
from classrobust.report.page import Sections, html_document, interval_cell, render
from classrobust.report.page import pct as _pct
from classrobust.report.tables import MANY_CLASSES, extreme_classes, format_warnings, strongest_attack

ASSETS = "report_files"

def resolve_eval_dir(path: str | Path) -> Path:
    """An evaluation directory (with ``summary.json``) or a run directory holding ``eval/``."""
    path = Path(path)
    for candidate in (path, path / "eval"):
        if (candidate / "summary.json").is_file() and (candidate / "samples.csv.gz").is_file():
            return candidate
    raise UsageError(f"{path} holds no evaluation results (summary.json and samples.csv.gz); "
                     "run `classrobust eval` first")


@dataclass
class EvalContext:
    """What every section of the evaluation report reads: the result, its assets folder, the training
    log (or None), the superclass grouping (or None), and the choices made once for all sections."""

    result: ClasswiseResult
    stage: Path
    log: pd.DataFrame | None
    groups: dict[str, list[str]] | None
    bootstrap_reps: int
    attacks: list[str]  # every attack but clean
    strongest: str  # the attack with the lowest overall accuracy
    many: bool  # more classes than MANY_CLASSES: long tables collapse, the extremes lead
    weakest: list[int]
    strongest_classes: list[int]
    long: pd.DataFrame | None = None  # per_class_table(result), set by the per-class section

    @property
    def extremes(self) -> list[int]:
        return [*self.weakest, *self.strongest_classes]


def build_report(path: str | Path, *, train_log: str | Path | None = None, bootstrap_reps: int = 2000,
                 superclasses: str | Path | None = None) -> Path:
    """Write ``report.html`` (and ``report_files/`` with PNG/SVG figures, CSV/Markdown tables)
    into the evaluation directory ``path``; returns the path of ``report.html``. The page is
    :data:`EVAL_SECTIONS` in order (adding a section is one function there).

    ``superclasses``: a CSV (``class,superclass``) grouping the classes; default: the grouping the
    evaluation recorded (``eval --superclasses``), else a built-in one that fits (CIFAR-100's)."""
    eval_dir = resolve_eval_dir(path)
    result = ClasswiseResult.load(eval_dir)
    if superclasses is not None:
        groups = read_superclasses(superclasses, result.classes)
    else:
        groups = result.meta.get("superclasses") or default_superclasses(result.classes)
    log_path = Path(train_log) if train_log else eval_dir.parent / "train_log.csv"
    many = result.num_classes > MANY_CLASSES
    weakest, strongest_classes = extreme_classes(result) if many else ([], [])
    meta = result.meta
    title = f"Class-wise robustness: {meta.get('model', 'model')} on {meta.get('dataset', 'data')}"
    with atomic_directory(eval_dir / ASSETS) as stage:
        context = EvalContext(result, stage, pd.read_csv(log_path) if log_path.is_file() else None, groups,
                              bootstrap_reps, [n for n in result.attacks if n != CLEAN], strongest_attack(result),
                              many, weakest, strongest_classes)
        out = Sections(_Page(stage))
        out.page.parts.append(f"<h1>{html.escape(title)}</h1>")
        render(EVAL_SECTIONS, out, context)
        doc = html_document(title, "\n".join(out.page.parts))
    out_path = eval_dir / "report.html"
    atomic_write_text(out_path, doc)
    return out_path


def _header_section(out: Sections, ctx: EvalContext) -> None:
    """The settings behind every number: images, eps, attacks, mode, precision, seed, checkpoint."""
    result, meta, page = ctx.result, ctx.result.meta, out.page
    own = sorted({format_eps(result.attacks[n].config.get("eps")) for n in ctx.attacks} - {format_eps(meta.get("eps"))})
    # an attack given its own eps (fgsm:eps=8/255) is not at the global one: the header says both
    eps_text = format_eps(meta.get("eps")) + (f" (and {', '.join(own)} for attacks with their own)" if own else "")
    split = "validation" if meta.get("split") == "val" else "test"
    page.text(f"{len(result.labels)} {split} images, eps {eps_text}, attacks: "
              f"{', '.join(ctx.attacks) or 'none'}; mode {meta.get('mode', '?')}, precision "
              f"{meta.get('precision', '?')}, seed {meta.get('seed', '?')}; checkpoint "
              f"{meta.get('checkpoint', '?')}; classrobust {__version__}", "meta")
    for name in ctx.attacks:  # each attack's resolved settings, as recorded
        page.text(describe_attack(result.attacks[name].config), "meta")


def _warnings_section(out: Sections, ctx: EvalContext) -> None:
    warnings = format_warnings(ctx.result)
    out.page.h2("Warnings", "warnings")
    if warnings:
        out.page.parts.extend(f'<div class="warn">{html.escape(w)}</div>' for w in warnings)
    else:
        out.page.text("No collapsed class" + (" and no failed sanity check." if ctx.result.sanity else
                                               "; sanity checks were not run (classrobust eval --sanity)."))


def _per_class_section(out: Sections, ctx: EvalContext) -> None:
    """Every class's accuracy per attack with its Wilson interval; with many classes the extremes lead."""
    result, page, stage = ctx.result, out.page, ctx.stage
    page.h2("Class-wise accuracy", "table")
    long = ctx.long = per_class_table(result)
    wide = long.pivot(index="class_name", columns="attack", values="accuracy").reindex(
        index=result.classes, columns=list(result.attacks))
    cells = long.assign(cell=[interval_cell(*v) for v in zip(long["accuracy"], long["ci_low"], long["ci_high"])])
    shown = cells.pivot(index="class_name", columns="attack", values="cell").reindex(
        index=result.classes, columns=list(result.attacks))
    shown.index.name = None
    shown.columns.name = None
    shown.insert(0, "n", result.attacks[CLEAN].n_per_class if CLEAN in result.attacks else "")
    overall = {"n": len(result.labels)}  # the whole evaluated set, with its own Wilson interval
    for name, res in result.attacks.items():
        correct = int(res.correct_per_class.sum())
        lo, hi = wilson_interval(correct, len(result.labels))
        overall[name] = interval_cell(res.accuracy, float(lo), float(hi))
    shown.loc["all"] = pd.Series(overall)
    long.to_csv(stage / "tables" / "per_class_intervals.csv", index=False)
    wide.to_csv(stage / "tables" / "per_class_wide.csv")
    page.text("Accuracy in % with its 95% Wilson interval; attacks count a point robust only if it is "
              "classified correctly both clean and attacked.")
    if ctx.many:
        page.text(f"{result.num_classes} classes: the {len(ctx.weakest)} weakest and {len(ctx.strongest_classes)} "
                  f"strongest under {ctx.strongest} lead; every class is in the collapsed table below and in "
                  "per_class_intervals.csv.")
        page.table(shown.iloc[[*ctx.extremes, len(shown) - 1]], "per_class_extremes", index=True)
        page.figure(figures.accuracy_distribution(result), "per_class_distribution",
                    "distribution of per-class accuracy")
        _empirical_bayes_section(page, long, result, ctx.strongest, ctx.extremes)
        page.open_details(f"all {result.num_classes} classes")
        page.table(shown, "per_class", index=True)
        page.close_details()
    else:
        page.table(shown, "per_class", index=True)
        page.figure(figures.per_class_bars(result), "per_class_bars", "per-class accuracy bars")


def _disparity_section(out: Sections, ctx: EvalContext) -> None:
    page, stage, reps = out.page, ctx.stage, ctx.bootstrap_reps
    page.h2("Disparity across classes", "disparity")
    disp = disparity_table(ctx.result, reps=reps)
    page.text("Worst and best class, max-min gap, standard deviation and coefficient of variation across "
              f"classes, each with a 95% class-stratified bootstrap interval ({reps} resamples; each "
              "class's accuracy drawn from its Jeffreys posterior, so a class at 0% or 100% keeps a real interval).")
    disp.to_csv(stage / "tables" / "disparity.csv", index=False)
    (stage / "tables" / "disparity.md").write_text(to_markdown(disp))
    shown = disp[["attack", "accuracy", "worst_class", "best_class"]].copy()
    shown["accuracy"] = shown["accuracy"].map(_pct)
    for key, scale in (("worst", 100), ("best", 100), ("gap", 100), ("std", 100), ("cv", 1)):
        digits = 1 if scale == 100 else 3
        shown[key] = [f"{scale * v:.{digits}f} [{scale * lo:.{digits}f}, {scale * hi:.{digits}f}]"
                      for v, lo, hi in zip(disp[key], disp[f"{key}_ci_low"], disp[f"{key}_ci_high"])]
    page.parts.append(shown.to_html(index=False, border=0))
    page.text("worst, best, gap and std in percentage points; cv = std / mean.", "meta")


def _superclasses_section(out: Sections, ctx: EvalContext) -> None:
    if ctx.groups:
        _superclass_section(out.page, ctx.result, ctx.groups, ctx.strongest)


def _curves_section(out: Sections, ctx: EvalContext) -> None:
    """Minimal-norm attacks' per-class robustness curves and median distances."""
    result, page = ctx.result, out.page
    curves = result.curve_table()
    if curves.empty:
        return
    page.h2("Robustness curves", "curves")
    page.text("Minimal-norm attacks find each point's smallest adversarial perturbation; a class's "
              "curve is the share of its points not broken within each radius (an upper bound on "
              "robust accuracy at every radius at once). Clean errors count as broken at radius 0; "
              "a point never broken within the attack's budget stays robust at every radius.")
    medians = result.distance_table()
    medians.to_csv(ctx.stage / "tables" / "distances.csv", index=False)
    for name in dict.fromkeys(curves["attack"]):
        page.figure(figures.robustness_curves(curves, name), f"curves_{name}", f"robustness curves {name}")
        shown = medians[medians["attack"] == name][["class_name", "n", "median", "ci_low", "ci_high",
                                                    "broken_within_eps", "never_broken"]]
        if len(shown) > 21:  # many classes: the whole set and the 10 smallest medians (all: distances.csv)
            shown = pd.concat([shown.iloc[:1], shown.iloc[1:].nsmallest(10, "median")])
        page.text(f"{name}: median smallest adversarial distance per class with its distribution-free "
                  "95% interval (order statistics), share broken within eps, share never broken")
        page.table(shown, f"distances_{name}", {"median": "{:.4f}".format, "ci_low": "{:.4f}".format,
                                                 "ci_high": "{:.4f}".format, "broken_within_eps": _pct,
                                                 "never_broken": _pct})


def _confusion_section(out: Sections, ctx: EvalContext) -> None:
    """Where each class's adversarial examples land: heatmaps, top destinations, strongest pairs."""
    result, page, many = ctx.result, out.page, ctx.many
    page.h2("Where adversarial examples land", "confusion")
    page.text("Rows: true class; columns: predicted class (worst case per point); colour is the row share."
              + (f" With {result.num_classes} classes each heatmap shows only the classes of that attack's "
                 "strongest pairs (every cell of the matrix: confusion_<attack>.csv)." if many else ""))
    page.parts.append('<div class="grid">')
    for name in result.attacks:
        shown_classes = None
        if many:
            pairs = strongest_pairs(result, name)
            shown_classes = [result.classes.index(c) for c in dict.fromkeys([*pairs["from"], *pairs["to"]])]
            if len(shown_classes) < 2:  # nothing flipped: nothing worth drawing
                continue
        page.figure(figures.confusion_heatmap(result, name, shown_classes), f"confusion_{name}",
                    f"confusion {name}")
    page.parts.append("</div>")
    for name in ctx.attacks:
        destinations = top_destinations(result, name)
        fmt = {c: _pct for c in ("share_1", "share_2", "share_3", "top3_share")}
        if many:
            page.text(f"{name}: top classes the {len(ctx.weakest)} weakest classes' fooled points land in "
                      "(share of that class's flips; every class in the collapsed table)")
            page.table(destinations[destinations["class_name"].isin([result.classes[i] for i in ctx.weakest])],
                       f"attacked_into_{name}_weakest", fmt)
            page.open_details(f"{name}: all {result.num_classes} classes")
            page.table(destinations, f"attacked_into_{name}", fmt)
            page.close_details()
        else:
            page.text(f"{name}: top classes each class's fooled points land in (share of that class's flips)")
            page.table(destinations, f"attacked_into_{name}", fmt)
        page.text(f"{name}: strongest class pairs of the whole matrix")
        page.table(strongest_pairs(result, name), f"strongest_pairs_{name}", {"share_of_flips": _pct})


def _gain_section(out: Sections, ctx: EvalContext) -> None:
    if not ctx.attacks:
        return
    page = out.page
    page.h2("Stronger-attack gain attribution", "gain")
    gains = gain_attribution(ctx.result)
    named = list(dict.fromkeys(gains.loc[gains["vulnerable"], "class_name"])) if len(gains) else []
    page.text("Ladder from weakest to strongest attack (by overall accuracy): how many points each class "
              "newly loses at each rung; the 3 most vulnerable classes are those weakest under the first "
              f"rung{': ' + ', '.join(named) if named else ''}.")
    page.figure(figures.gain_chart(gains), "gain_attribution", "gain attribution")
    summary = gains.groupby(["from", "to"], sort=False).agg(
        drop=("drop", "sum"), top3_vulnerable_share=("top3_vulnerable_share", "first")).reset_index()
    page.table(summary, "gain_summary", {"top3_vulnerable_share": _pct})
    gains.to_csv(ctx.stage / "tables" / "gain_attribution.csv", index=False)


def _weight_norms_section(out: Sections, ctx: EvalContext) -> None:
    result, page, strongest, many = ctx.result, out.page, ctx.strongest, ctx.many
    norms = result.meta.get("classifier_weight_norms")
    if norms is None or len(norms) != result.num_classes:
        return
    page.h2("Classifier weight norms", "weights")
    clean_acc = result.attacks[CLEAN].accuracy_per_class if CLEAN in result.attacks else None
    corr = weight_norm_correlation(np.asarray(norms), result.attacks[strongest].accuracy_per_class,
                                   clean_acc if strongest != CLEAN else None)
    tests = [k for k in ("pearson_p", "spearman_p", "partial_spearman_p") if k in corr]
    corr.update({f"{k}_holm": float(a) for k, a in zip(tests, holm([corr[k] for k in tests]))})
    partial = (f"; controlling for clean accuracy, partial Spearman {corr['partial_spearman']:.2f} "
               f"(permutation p = {corr['partial_spearman_p']:.3g}, Holm {corr['partial_spearman_p_holm']:.3g})"
               if "partial_spearman" in corr else "")
    page.text(f"Per-class L2 norm of the final linear layer against {strongest} accuracy: Pearson "
              f"{corr['pearson']:.2f} (p = {corr['pearson_p']:.3g}, Holm {corr['pearson_p_holm']:.3g}), "
              f"Spearman {corr['spearman']:.2f} ({corr['spearman_p_method']} permutation p = "
              f"{corr['spearman_p']:.3g}, Holm {corr['spearman_p_holm']:.3g}){partial}. Holm over these "
              f"{len(tests)} tests.")
    page.figure(figures.weight_norm_scatter(result, np.asarray(norms), strongest), "weight_norms",
                "weight norm scatter")
    if many:
        page.open_details(f"weight norms of all {result.num_classes} classes")
    page.table(pd.DataFrame({"class_name": result.classes, "weight_norm": norms,
                             f"{strongest}_accuracy": result.attacks[strongest].accuracy_per_class}),
               "weight_norms", {f"{strongest}_accuracy": _pct})
    if many:
        page.close_details()
    (ctx.stage / "tables" / "weight_norm_correlation.json").write_text(json.dumps(corr, indent=2))


def _consistency_section(out: Sections, ctx: EvalContext) -> None:
    if len(ctx.attacks) < 2:
        return
    page = out.page
    page.h2("Consistency of the per-class ordering across attacks", "consistency")
    sp, kt = attack_consistency(ctx.result)
    page.figure(figures.matrix_heatmap(sp, "Spearman rank correlation of per-class accuracy"),
                "consistency_spearman", "Spearman consistency")
    page.text("Spearman rank correlation:")
    page.table(sp.round(3), "consistency_spearman", index=True)
    page.text("Kendall tau-b:")
    page.table(kt.round(3), "consistency_kendall", index=True)


def _training_section(out: Sections, ctx: EvalContext) -> None:
    if ctx.log is None:
        return
    page = out.page
    page.h2("Training curves per class", "training")
    if ctx.many:
        page.text(f"The {len(ctx.weakest)} weakest and {len(ctx.strongest_classes)} strongest classes (by "
                  f"{ctx.strongest} on the test split) and the whole validation set.")
    page.figure(figures.training_curves(ctx.log, ctx.extremes if ctx.many else None), "training_curves",
                "per-class training curves")


def _sanity_section(out: Sections, ctx: EvalContext) -> None:
    if not ctx.result.sanity:
        return
    out.page.h2("Sanity checks", "sanity")
    out.page.table(pd.DataFrame([{"check": c["check"], "passed": c["passed"], "detail": c["detail"],
                                  "classes": ", ".join(c["flagged_classes"])} for c in ctx.result.sanity["checks"]]),
                   "sanity")


def _members_page_section(out: Sections, ctx: EvalContext) -> None:
    _members_section(out.page, ctx.result, ctx.stage)


#: the evaluation report, in reading order: each a function ``(Sections, EvalContext) -> None`` that
#: adds nothing where it has nothing to show
EVAL_SECTIONS = (_header_section, _warnings_section, _per_class_section, _members_page_section, _disparity_section,
                 _superclasses_section, _curves_section, _confusion_section, _gain_section, _weight_norms_section,
                 _consistency_section, _training_section, _sanity_section)


def _superclass_section(page: _Page, result: ClasswiseResult, groups: dict[str, list[str]], attack: str) -> None:
    """Each superclass's pooled accuracy (Wilson interval) and weakest member, weakest first."""
    table = superclass_table(result, groups)
    page.h2("Superclasses", "superclasses")
    page.text(f"{len(groups)} superclasses: each one's pooled accuracy over its classes' test images with a 95% "
              f"Wilson interval, and its weakest member class; ordered by {attack} accuracy, weakest first.")
    table.to_csv(page.assets / "tables" / "superclasses_long.csv", index=False)
    order = table[table["attack"] == attack].sort_values("accuracy")["superclass"].tolist()
    shown = pd.DataFrame({"superclass": order})
    for name in result.attacks:
        rows = table[table["attack"] == name].set_index("superclass").loc[order]
        shown[name] = [interval_cell(*v) for v in zip(rows["accuracy"], rows["ci_low"], rows["ci_high"])]
    rows = table[table["attack"] == attack].set_index("superclass").loc[order]
    shown.insert(1, "classes", rows["classes"].to_numpy())
    shown[f"weakest class ({attack})"] = [f"{c} {100 * a:.1f}" for c, a in
                                          zip(rows["weakest_class"], rows["weakest_class_accuracy"])]
    page.table(shown, "superclasses")


def _empirical_bayes_section(page: _Page, long: pd.DataFrame, result: ClasswiseResult, attack: str,
                             classes: list[int]) -> None:
    """The leading classes' accuracy under ``attack``: raw with Wilson's interval beside the
    empirical-Bayes estimate that borrows strength across classes."""
    rows = long[long["attack"] == attack].set_index("class_index").loc[classes]
    table = pd.DataFrame({
        "class": rows["class_name"], "n": rows["n"],
        "raw [Wilson 95%]": [interval_cell(*v) for v in zip(rows["accuracy"], rows["ci_low"], rows["ci_high"])],
        "empirical Bayes [95%]": [interval_cell(*v) for v in zip(rows["eb_accuracy"], rows["eb_low"],
                                                                  rows["eb_high"])]})
    page.text(f"{attack}: with few test images per class each raw interval is wide. The empirical-Bayes "
              "estimate fits one beta distribution to all classes' accuracies and shrinks each class towards it "
              "(posterior mean and 95% interval; docs/findings.md: when to use which). Extremes are pulled "
              "inwards: the raw value is the measurement, the estimate a better guess of the class's accuracy.")
    page.table(table, f"empirical_bayes_{attack}")


def _members_section(page, result: ClasswiseResult, stage: Path) -> None:
    """Per AutoAttack evaluation: which member broke each class's points (its marginal contribution, in
    cascade order), and each member's seconds and points attacked: where the time went, and whether the
    costly members add anything on this model (``members_<attack>.csv``)."""
    for name, res in result.attacks.items():
        if res.member_stats is None or res.breakers is None:
            continue
        broke = res.member_breaks_per_class()
        table = pd.DataFrame({"class": result.classes, **{m: broke[m] for m in res.members}})
        table.loc[len(table)] = ["all", *[int(broke[m].sum()) for m in res.members]]
        table.to_csv(stage / "tables" / f"members_{name}.csv", index=False)
        page.h2(f"{name}: what each member broke", f"members-{name}")
        page.text("Points each member broke first (the cascade runs a member only on the points every earlier one "
                  "failed on), per class; then each member's wall time and the points it attacked: "
                  + "; ".join(f"{m} {v['seconds']:.1f} s on {v['points']} points" for m, v in res.member_stats.items())
                  + ".")
        page.table(table, f"members_{name}")
