"""The calibration frontier's tables, from its record (torch-free): one row per checkpoint and
allowance with Wilson intervals, the seed-level frontier over checkpoints with Student-t intervals,
and the frontier's worst-class accuracy at any average cost (linear interpolation)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from classrobust.analysis.stats import paired_seed_test, wilson_interval


def frontier_rows(record: dict[str, Any]) -> pd.DataFrame:
    """One row per (checkpoint, allowance): test average and worst-class robust accuracy (points)
    with 95% Wilson intervals, the worst class, every class's accuracy, and the validation
    estimates the fit aimed at. ``allowance`` is NaN for the uncalibrated model."""
    classes = record["classes"]
    rows = []
    for r in record["rows"]:
        correct, n = np.asarray(r["robust_per_class"]), np.asarray(r["n_per_class"])
        per = 100 * correct / np.maximum(n, 1)
        worst = int(np.argmin(np.where(n > 0, per, np.inf)))
        avg_lo, avg_hi = wilson_interval(correct.sum(), n.sum())
        w_lo, w_hi = wilson_interval(correct[worst], n[worst])
        rows.append({"checkpoint": r["checkpoint"],
                     "allowance": np.nan if r["allowance"] is None else r["allowance"],
                     "average": 100 * correct.sum() / n.sum(), "average_low": 100 * avg_lo, "average_high": 100 * avg_hi,
                     "worst": per[worst], "worst_low": 100 * w_lo, "worst_high": 100 * w_hi,
                     "worst_class": classes[worst],
                     "val_average": 100 * r["val_average"], "val_worst": 100 * r["val_worst"],
                     **{f"class:{c}": p for c, p in zip(classes, per)}})
    return pd.DataFrame(rows)


def seed_frontier(rows: pd.DataFrame) -> pd.DataFrame:
    """Per allowance over the checkpoints (the training run is the unit): mean average and worst-class
    accuracy with 95% Student-t intervals, and the mean change of each from the uncalibrated model."""
    out = []
    base = rows[rows["allowance"].isna()].set_index("checkpoint")
    for allowance, group in rows.groupby(rows["allowance"].fillna(-1.0), sort=True):
        entry: dict[str, Any] = {"allowance": np.nan if allowance < 0 else allowance, "checkpoints": len(group)}
        for col in ("average", "worst"):
            s = paired_seed_test(group[col].to_numpy())
            entry.update({col: s["mean"], f"{col}_low": s["low"], f"{col}_high": s["high"]})
            if allowance >= 0 and len(base):
                d = paired_seed_test((group.set_index("checkpoint")[col] - base[col]).dropna().to_numpy())
                entry.update({f"{col}_change": d["mean"], f"{col}_change_low": d["low"], f"{col}_change_high": d["high"]})
        out.append(entry)
    return pd.DataFrame(out)


def worst_at_cost(rows: pd.DataFrame, checkpoint: str, average: float) -> float:
    """The frontier of ``checkpoint``: its worst-class accuracy at average accuracy ``average``
    (points), interpolated linearly between its measured points (sorted by average, the upper
    envelope: a calibration that costs more and buys less is never the frontier); NaN outside the
    measured range."""
    own = rows[rows["checkpoint"] == checkpoint].sort_values("average", ascending=False)
    env_avg, env_worst = [], []
    for a, w in zip(own["average"], own["worst"]):
        if not env_worst or w > env_worst[-1]:
            env_avg.append(a)
            env_worst.append(w)
    if not env_avg or not min(env_avg) <= average <= max(env_avg):
        return float("nan")
    return float(np.interp(average, env_avg[::-1], env_worst[::-1]))
