"""Seed-level comparison of methods from an experiment's committed ``per_class.csv``.

    python scripts/seed_table.py docs/results/quick-defenses/per_class.csv --baseline pgd-at --target Shirt
    python scripts/seed_table.py docs/results/quick-defenses/methods.csv --methods autoattack

Prints a Markdown table: per method and attack, the per-seed difference against the baseline of the
same seed (on the target class and on the average), its mean with a 95% t-interval, the paired
t-test p and the exact sign-flip p (two-sided; with n seeds it cannot go below 2/2^n). The training
run is the unit; docs quote the table inside a block that tests/test_docs.py rebuilds.

With ``--methods ATTACK`` it prints instead the methods table of one attack from an experiment's
``methods.csv``: average and target class with their 95% t-intervals across seeds, each run's own
worst class, the differences against the baseline, and the pooled McNemar counts and Holm p-values
(test-sample noise, see docs/seeds.md).
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from classrobust.analysis.stats import paired_seed_test
from classrobust.report.markdown import to_markdown


def seed_table(per_class: pd.DataFrame, baseline: str, target: str) -> pd.DataFrame:
    rows = []
    seeds = sorted(per_class["seed"].unique())
    for attack in [a for a in dict.fromkeys(per_class["attack"]) if a != "clean"]:
        sel = per_class[per_class.attack == attack]
        on_target = sel[sel.class_name == target].set_index(["method", "seed"])["accuracy"]
        totals = sel.groupby(["method", "seed"])[["correct", "n"]].sum()
        average = totals["correct"] / totals["n"]
        for method in [m for m in dict.fromkeys(sel["method"]) if m != baseline]:
            cells = {}
            for label, values in ((target, on_target), ("average", average)):
                diffs = [values[(method, s)] - values[(baseline, s)] for s in seeds]
                test = paired_seed_test(diffs)
                spread = ("" if test["low"] == test["high"] else
                          f" [{100 * test['low']:+.1f}, {100 * test['high']:+.1f}], t p {test['t_p']:.2g}")
                cells[label] = (", ".join(f"{round(100 * d, 1) + 0.0:+.1f}" for d in diffs),
                                f"{100 * test['mean']:+.1f}{spread}, sign-flip p {test['perm_p']:.2g}")
            rows.append({"attack": attack, "method": method, f"{target}: per seed": cells[target][0],
                         f"{target}: mean": cells[target][1], "average: per seed": cells["average"][0],
                         "average: mean": cells["average"][1]})
    return pd.DataFrame(rows)


def methods_table(methods: pd.DataFrame, attack: str) -> pd.DataFrame:
    """One attack's rows of ``methods.csv`` as the docs show them (accuracies in %)."""
    g = methods[methods.attack == attack]
    if not len(g):
        raise SystemExit(f"no rows for attack {attack!r} in methods.csv")

    def ci(v, lo, hi):  # a zero-width t-interval (the same value on every seed) is no interval
        return f"{100 * v:.1f} (every seed)" if lo == hi else f"{100 * v:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"

    return pd.DataFrame({
        "method": g["method"], "average": [ci(*v) for v in zip(g.avg, g.avg_low, g.avg_high)],
        g.worst_class.iloc[0]: [ci(*v) for v in zip(g.worst, g.worst_low, g.worst_high)],
        "own worst": [f"{100 * v:.1f}" for v in g.worst_any],
        "Δ average": [f"{100 * v:+.1f}" for v in g.avg_vs_baseline],
        f"Δ {g.worst_class.iloc[0]}": [f"{100 * v:+.1f}" for v in g.worst_vs_baseline],
        "McNemar b/c": [f"{b}/{c}" for b, c in zip(g.mcnemar_b, g.mcnemar_c)],
        "p (Holm)": ["" if pd.isna(v) else f"{v:.2g}" for v in g.mcnemar_p_holm]})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", help="per_class.csv (seed table) or methods.csv (with --methods)")
    parser.add_argument("--baseline")
    parser.add_argument("--target", help="the class the methods are judged on")
    parser.add_argument("--methods", metavar="ATTACK", help="print the methods table of ATTACK from methods.csv")
    args = parser.parse_args(argv)
    if args.methods:
        sys.stdout.write(to_markdown(methods_table(pd.read_csv(args.csv), args.methods)))
        return 0
    if not (args.baseline and args.target):
        parser.error("--baseline and --target are needed for the seed table")
    sys.stdout.write(to_markdown(seed_table(pd.read_csv(args.csv), args.baseline, args.target)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
