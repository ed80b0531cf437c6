"""``classrobust compare``: per-class differences between two evaluations of the same test samples,
with exact McNemar tests on the paired per-sample outcomes."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from classrobust.analysis.compare import compare_results, consistency_between
from classrobust.results import ClasswiseResult
from classrobust.io import check_own_directory, staged_files
from classrobust.report.html import resolve_eval_dir
from classrobust.report.page import html_document
from classrobust.report.markdown import to_markdown


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
    with staged_files(out) as stage:
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
    return table, Path(out)
