"""How many training seeds and test images a seed-level comparison needs (torch-free).

A per-seed paired difference (lever minus baseline, same seed, same test points) varies for two
reasons: the training runs differ (``train_var``, which more test images do not shrink) and the
test sample is finite (``test_var``, which shrinks as 1/n). :func:`variance_components` estimates
both from per-point records of earlier runs; :func:`noninferiority_power` and :func:`power_table`
give the chance that a one-sided 95% lower bound over ``seeds`` clears ``-margin`` when the true
difference is ``true_diff``, with the noncentral t distribution (a t-interval over seeds is how
the protocol judges, :mod:`classrobust.analysis.protocol`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd


def variance_components(base_ok: Sequence[np.ndarray], other_ok: Sequence[np.ndarray],
                        mask: Sequence[np.ndarray] | None = None) -> dict[str, float]:
    """Per seed, two runs' per-point correctness on the same test points (bool arrays; ``mask``
    selects points, e.g. one class): the mean paired difference in points, its spread over seeds,
    the mean test-sample variance of a seed's difference (discordant pairs, per point), and the
    training-run variance they imply (total minus test, floored at 0). ``n`` is the mean number of
    points per seed, for rescaling the test part to another sample size."""
    diffs, test_vars, sizes = [], [], []
    for i, (a, b) in enumerate(zip(base_ok, other_ok)):
        keep = np.ones(len(a), bool) if mask is None else np.asarray(mask[i], bool)
        d = 100 * (np.asarray(b, float)[keep] - np.asarray(a, float)[keep])
        diffs.append(d.mean())
        test_vars.append(d.var(ddof=1) / len(d))
        sizes.append(len(d))
    diffs = np.asarray(diffs)
    total = float(diffs.var(ddof=1)) if len(diffs) > 1 else float("nan")
    test = float(np.mean(test_vars))
    return {"seeds": len(diffs), "mean": float(diffs.mean()), "sd": float(np.sqrt(total)), "total_var": total,
            "test_var": test, "train_var": max(0.0, total - test), "n": float(np.mean(sizes))}


def noninferiority_power(train_var: float, test_var: float, n0: float, n: float, seeds: int, *,
                         true_diff: float = 0.0, margin: float = 1.0, confidence: float = 0.95) -> float:
    """The chance that the one-sided ``confidence`` lower bound of the mean per-seed difference over
    ``seeds`` runs lies above ``-margin`` (points), when each seed's difference has variance
    ``train_var + test_var * n0 / n`` (its test part measured at ``n0`` points, here ``n``)."""
    from scipy import stats

    if seeds < 2:
        return float("nan")
    se = np.sqrt((train_var + test_var * n0 / n) / seeds)
    critical = stats.t.ppf(confidence, seeds - 1)
    return float(stats.nct.sf(critical, seeds - 1, (true_diff + margin) / se))


def power_table(components: dict[str, float], seeds: Sequence[int], images: Sequence[int], *,
                true_diffs: Sequence[float] = (0.0, -0.5), margin: float = 1.0, share: float = 1.0) -> pd.DataFrame:
    """One row per (seeds, test images per seed, true difference): the expected one-sided 95%
    half-width (points) and the non-inferiority power. ``share``: the fraction of the test images the
    compared quantity sees (0.1 for one class of ten), applied to ``images``."""
    from scipy import stats

    rows = []
    for s in seeds:
        for n in images:
            var = components["train_var"] + components["test_var"] * components["n"] / (share * n)
            half = float(stats.t.ppf(0.95, s - 1) * np.sqrt(var / s)) if s >= 2 else float("nan")
            for delta in true_diffs:
                rows.append({"seeds": s, "images": n, "true_diff": delta, "half_width": half,
                             "power": noninferiority_power(components["train_var"], components["test_var"],
                                                           components["n"], share * n, s, true_diff=delta,
                                                           margin=margin)})
    return pd.DataFrame(rows)


def export_components(export, baseline: str, other: str, attack: str, seeds: Sequence[int],
                      class_name: str | None = None, dataset: str = "fashion-mnist") -> dict[str, float]:
    """:func:`variance_components` of ``other`` against ``baseline`` under ``attack`` from an experiment
    folder or export (``runs/<dataset>/<method>/seed<s>/eval/samples.csv.gz``); ``class_name``: that
    class's points only (its index from the result's summary)."""
    import json
    from pathlib import Path

    base_ok, other_ok, masks = [], [], []
    for seed in seeds:
        frames = []
        for method in (baseline, other):
            folder = Path(export) / "runs" / dataset / method / f"seed{seed}" / "eval"
            frames.append(pd.read_csv(folder / "samples.csv.gz"))
        a, b = frames
        if not np.array_equal(a["index"], b["index"]):
            raise ValueError(f"seed {seed}: {baseline} and {other} were evaluated on different test points")
        base_ok.append((a[f"pred_{attack}"] == a["label"]).to_numpy())
        other_ok.append((b[f"pred_{attack}"] == b["label"]).to_numpy())
        if class_name is not None:
            classes = json.loads((folder / "summary.json").read_text())["classes"]
            masks.append((a["label"] == classes.index(class_name)).to_numpy())
    return variance_components(base_ok, other_ok, masks if class_name is not None else None)
