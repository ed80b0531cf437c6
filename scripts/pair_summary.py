"""The summary of a two-run comparison (``classrobust compare A B`` saved as Markdown) that
docs/seeds.md shows: per attack, both runs' overall accuracy with the McNemar p of the paired
points, one class's accuracies with its Holm-adjusted p, and the Spearman correlation of the two
runs' per-class accuracies.

    python scripts/pair_summary.py docs/results/demo_seed0_vs_seed1.md --target Shirt

tests/test_docs.py rebuilds the table in docs/seeds.md from the committed comparison.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from classrobust.report.markdown import to_markdown


def markdown_tables(text: str) -> list[pd.DataFrame]:
    """Every pipe table in ``text``, in order, as string-valued frames."""
    tables, rows = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            tables.append(pd.DataFrame([r for r in rows[2:]], columns=rows[0]))  # rows[1]: the |---| line
            rows = []
    return tables


def pair_summary(comparison: pd.DataFrame, ranks: pd.DataFrame, target: str) -> pd.DataFrame:
    pct = lambda v: f"{100 * float(v):.1f}%"  # noqa: E731
    p = lambda v: f"{float(v):.2g}"  # noqa: E731
    rows = []
    for attack, g in comparison.groupby("attack", sort=False):
        overall = g[g.class_name == "all"].iloc[0]
        cls = g[g.class_name == target].iloc[0]
        rows.append({"attack": attack, "overall A": pct(overall.accuracy_a), "overall B": pct(overall.accuracy_b),
                     "McNemar p": p(overall.p_value), f"{target} A": pct(cls.accuracy_a),
                     f"{target} B": pct(cls.accuracy_b), f"{target} p (Holm)": p(cls.p_holm),
                     "Spearman A vs B": f"{float(ranks.set_index('attack').loc[attack, 'spearman']):.2f}"})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("comparison", help="the Markdown written from classrobust compare")
    parser.add_argument("--target", required=True, help="the class to show")
    args = parser.parse_args(argv)
    comparison, ranks = markdown_tables(Path(args.comparison).read_text())[:2]
    sys.stdout.write(to_markdown(pair_summary(comparison, ranks, args.target)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
