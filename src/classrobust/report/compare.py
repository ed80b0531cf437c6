"""``classrobust compare``: per-class differences between two evaluations of the same test samples,
with exact McNemar tests on the paired per-sample outcomes."""

from __future__ import annotations

import html
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from classrobust.analysis import discordant_pairs, holm, mcnemar_exact, run_consistency
from classrobust.errors import UsageError
from classrobust.results import CLEAN, ClasswiseResult
from classrobust.io import check_own_directory, make_stage, publish_files
from classrobust.report.html import resolve_eval_dir
from classrobust.report.page import html_document
from classrobust.report.markdown import to_markdown


def differing_settings(a: ClasswiseResult, b: ClasswiseResult) -> dict[str, list[str]]:
    """Per attack evaluated in both: the recorded settings (eps, steps, mode, precision, seed, ...)
    whose values differ between A and B."""
    out = {}
    for name in (n for n in a.attacks if n in b.attacks and n != CLEAN):
        ca, cb = a.attacks[name].config, b.attacks[name].config
        keys = sorted(k for k in set(ca) | set(cb) if ca.get(k) != cb.get(k))
        if keys:
            out[name] = keys
    return out


def compare_results(a: ClasswiseResult, b: ClasswiseResult, alpha: float = 0.05, *,
                    allow_different_settings: bool = False) -> pd.DataFrame:
    """One row per (attack, class) and per attack overall (class ``all``): accuracies of A and B,
    B - A, discordant counts, exact McNemar p-value, Holm-adjusted over classes, significance.

    Attacks are paired by name; unless ``allow_different_settings``, an attack whose recorded
    settings differ between A and B (another eps, other steps, ...) is refused, naming them."""
    if list(a.classes) != list(b.classes):
        raise UsageError(f"the runs have different classes: {a.classes} vs {b.classes}")
    if len(a.indices) != len(b.indices) or not np.array_equal(a.indices, b.indices):
        raise UsageError("the runs were evaluated on different test samples (compare needs the same "
                         "--limit and --subset-seed, so each sample is paired with itself)")
    if not np.array_equal(a.labels, b.labels):
        raise UsageError("the runs disagree on the labels of the same test samples")
    differing = differing_settings(a, b)
    if differing and not allow_different_settings:
        what = "; ".join(f"{n}: {', '.join(keys)}" for n, keys in differing.items())
        raise UsageError(f"the runs evaluated attacks with different settings ({what}); their accuracies do not "
                         "compare (pass --allow-different-settings to compare them anyway)")
    common = [n for n in a.attacks if n in b.attacks]
    if not common:
        raise UsageError(f"no attack in common: {list(a.attacks)} vs {list(b.attacks)}")
    rows = []
    for name in common:
        ok_a = a.attacks[name].predictions == a.labels
        ok_b = b.attacks[name].predictions == b.labels
        group = []
        for k, cls in enumerate([*a.classes, "all"]):
            m = (a.labels == k) if k < len(a.classes) else np.ones_like(ok_a)
            n_b, n_c = discordant_pairs(ok_a, ok_b, m)  # (A right B wrong, A wrong B right)
            group.append({"attack": name, "class_name": cls, "n": int(m.sum()),
                          "accuracy_a": float(ok_a[m].mean()), "accuracy_b": float(ok_b[m].mean()),
                          "difference": float(ok_b[m].mean() - ok_a[m].mean()),
                          "a_only": n_b, "b_only": n_c, "p_value": mcnemar_exact(n_b, n_c)})
        adjusted = holm(np.array([r["p_value"] for r in group[:-1]]))
        for r, adj in zip(group, [*adjusted, group[-1]["p_value"]]):
            r["p_holm"] = float(adj)
            r["significant"] = bool(adj < alpha)
        rows.extend(group)
    return pd.DataFrame(rows)


def consistency_between(a: ClasswiseResult, b: ClasswiseResult) -> pd.DataFrame:
    """Per attack: Spearman and Kendall correlation of the per-class accuracies of A and B."""
    rows = []
    for name in (n for n in a.attacks if n in b.attacks):
        sp, kt = run_consistency({"a": a, "b": b}, name)
        rows.append({"attack": name, "spearman": float(sp.loc["a", "b"]), "kendall": float(kt.loc["a", "b"])})
    return pd.DataFrame(rows)


def default_compare_dir(path_b: str | Path) -> Path:
    """``compare/`` beside run B's evaluation folder (never inside a folder another command writes)."""
    return resolve_eval_dir(path_b).parent / "compare"


def write_comparison(path_a: str | Path, path_b: str | Path, out: str | Path | None = None, alpha: float = 0.05,
                     *, allow_different_settings: bool = False) -> tuple[pd.DataFrame, Path]:
    """Compare evaluations A and B class by class and write compare.{csv,md,html} and consistency.csv
    into ``out`` (default: :func:`default_compare_dir`); returns ``(table, out)``."""
    dir_a, dir_b = resolve_eval_dir(path_a), resolve_eval_dir(path_b)
    result_a, result_b = ClasswiseResult.load(dir_a), ClasswiseResult.load(dir_b)
    table = compare_results(result_a, result_b, alpha, allow_different_settings=allow_different_settings)
    consistency = consistency_between(result_a, result_b)
    out = check_own_directory(out if out is not None else default_compare_dir(path_b), "compare.csv")
    stage = make_stage(out)
    try:
        table.to_csv(stage / "compare.csv", index=False)
        consistency.to_csv(stage / "consistency.csv", index=False)
        (stage / "compare.md").write_text(f"A = {dir_a}, B = {dir_b}\n\n" + to_markdown(table)
                                          + "\nRank consistency of the per-class accuracies of A and B:\n\n"
                                          + to_markdown(consistency))
        shown = table.copy()
        for col in ("accuracy_a", "accuracy_b"):
            shown[col] = shown[col].map(lambda v: f"{100 * v:.1f}%")
        shown["difference"] = shown["difference"].map(lambda v: f"{100 * v:+.1f}")
        for col in ("p_value", "p_holm"):
            shown[col] = shown[col].map(lambda v: f"{v:.3g}")
        body = shown.to_html(index=False, border=0)
        section = (f'<section id="compare"><h2>Per-class comparison</h2><p>A = {html.escape(str(dir_a))}<br>'
                   f"B = {html.escape(str(dir_b))}</p><p>Difference = B - A in points. Exact McNemar test on the "
                   f"paired per-sample outcomes; p_holm adjusts over the classes of each attack; significant at "
                   f"{alpha}.</p>{body}<h3>Consistency of the per-class ordering between A and B</h3>"
                   f"{consistency.round(3).to_html(index=False, border=0)}</section>")
        (stage / "compare.html").write_text(html_document("classrobust compare", section))
        publish_files(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return table, Path(out)
