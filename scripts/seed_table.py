"""Seed-level comparison of methods from an experiment's committed ``per_class.csv``.

    python scripts/seed_table.py docs/results/quick-defenses/per_class.csv --baseline pgd-at --target Shirt

Prints a Markdown table: per method and attack, the per-seed difference against the baseline of the
same seed (on the target class and on the average), its mean with a 95% t-interval, the paired
t-test p and the exact sign-flip p (two-sided; with n seeds it cannot go below 2/2^n). The training
run is the unit; docs quote the table inside a block that tests/test_docs.py rebuilds.
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("per_class")
    parser.add_argument("--baseline", required=True)
    parser.add_argument("--target", required=True, help="the class the methods are judged on")
    args = parser.parse_args(argv)
    sys.stdout.write(to_markdown(seed_table(pd.read_csv(args.per_class), args.baseline, args.target)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
