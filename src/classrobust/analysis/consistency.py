"""Consistency of the per-class ordering across attacks and across runs (rank correlations),
and attribution of a stronger attack's gain to classes."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from classrobust.results import CLEAN


def _constant(v: np.ndarray) -> bool:
    return bool(np.nanmax(v) == np.nanmin(v))


def rank_correlations(per_class: dict[str, np.ndarray]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Spearman and Kendall (tau-b) correlation matrices of per-class accuracies, name x name."""
    names = list(per_class)
    sp = pd.DataFrame(np.eye(len(names)), index=names, columns=names)
    kt = sp.copy()
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            x, y = per_class[names[a]], per_class[names[b]]
            if _constant(x) or _constant(y):  # a rank correlation is undefined for a constant vector
                s = t = float("nan")
            else:
                s = stats.spearmanr(x, y).statistic
                t = stats.kendalltau(x, y).statistic
            sp.iloc[a, b] = sp.iloc[b, a] = s
            kt.iloc[a, b] = kt.iloc[b, a] = t
    return sp, kt


def attack_consistency(result) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rank correlation of per-class robust accuracy between every pair of attacks (clean excluded)."""
    return rank_correlations({n: r.accuracy_per_class for n, r in result.attacks.items() if n != CLEAN})


def run_consistency(results: dict[str, object], attack: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rank correlation of one attack's per-class accuracy between runs (e.g. training methods)."""
    return rank_correlations({name: r.attacks[attack].accuracy_per_class for name, r in results.items()})


def gain_attribution(result, ladder: Sequence[str] | None = None, k_vulnerable: int = 3) -> pd.DataFrame:
    """Each class's share of the accuracy drop from one rung of an attack ladder to the next.

    ``ladder`` defaults to the attacks ordered from weakest to strongest (by overall accuracy).
    The k most vulnerable classes are those with the lowest accuracy under the first rung,
    so the ranking does not depend on the gains it is used to explain. Per-class drops can be
    negative (the per-point worst case is not monotone across different attacks).
    """
    names = [n for n in result.attacks if n != CLEAN]
    if ladder is None:
        ladder = sorted(names, key=lambda n: -result.attacks[n].accuracy)
    ladder = [CLEAN, *ladder] if ladder[0] != CLEAN else list(ladder)
    first = result.attacks[ladder[1] if len(ladder) > 1 else ladder[0]].accuracy_per_class
    vulnerable = set(np.argsort(first, kind="stable")[:k_vulnerable].tolist())
    rows = []
    for lower, upper in zip(ladder, ladder[1:]):
        drop = result.attacks[lower].correct_per_class - result.attacks[upper].correct_per_class
        total = drop.sum()
        for c, cls in enumerate(result.classes):
            rows.append({"from": lower, "to": upper, "class_name": cls, "drop": int(drop[c]),
                         "share": float(drop[c] / total) if total else float("nan"),
                         "vulnerable": c in vulnerable,
                         f"top{k_vulnerable}_vulnerable_share": float(sum(drop[v] for v in vulnerable) / total)
                         if total else float("nan")})
    return pd.DataFrame(rows)


def weight_norm_correlation(norms: np.ndarray, accuracy: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman correlation (with p-values) of per-class classifier weight norms and accuracy."""
    if _constant(np.asarray(norms)) or _constant(np.asarray(accuracy)):
        nan = float("nan")
        return {"pearson": nan, "pearson_p": nan, "spearman": nan, "spearman_p": nan}
    pr = stats.pearsonr(norms, accuracy)
    sr = stats.spearmanr(norms, accuracy)
    return {"pearson": float(pr.statistic), "pearson_p": float(pr.pvalue),
            "spearman": float(sr.statistic), "spearman_p": float(sr.pvalue)}


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b (A right, B wrong) and c."""
    if b + c == 0:
        return 1.0
    return float(min(1.0, 2 * stats.binom.cdf(min(b, c), b + c, 0.5)))


def discordant_pairs(ok_a: np.ndarray, ok_b: np.ndarray, mask: np.ndarray | None = None) -> tuple[int, int]:
    """McNemar's discordant counts over paired per-point outcomes (bool, (N,)), within ``mask``:
    (b = A right and B wrong, c = A wrong and B right)."""
    m = np.ones_like(ok_a, dtype=bool) if mask is None else mask
    return int((ok_a & ~ok_b & m).sum()), int((~ok_a & ok_b & m).sum())


def confused_class_ablation(base, retrained, attack: str, weak: str, dropped: str) -> dict[str, float]:
    """What retraining without class ``dropped`` did to class ``weak`` under ``attack``.

    ``base`` and ``retrained`` are results on the same test samples. "Formerly fooled" points are
    ``weak``'s points that ``base`` misclassifies under attack; the ablation asks how many of them
    the retrained model now classifies correctly under the same attack. Overall accuracies leave
    out the dropped class (the retrained model never saw it). The McNemar test pairs the two
    models on ``weak``'s points.
    """
    if not np.array_equal(base.indices, retrained.indices):
        raise ValueError("the two results are on different test samples")
    i, j = base.classes.index(weak), base.classes.index(dropped)
    labels = base.labels
    of_i = labels == i
    base_adv = base.attacks[attack].predictions
    base_ok = base_adv == labels
    new_ok = retrained.attacks[attack].predictions == labels
    fooled = of_i & ~base_ok
    into_j = fooled & (base_adv == j)
    kept = labels != j
    b, c = discordant_pairs(base_ok, new_ok, of_i)  # b: robust before, not after
    return {
        "attack": attack, "weakest_class": weak, "dropped_class": dropped, "n_weakest": int(of_i.sum()),
        "formerly_fooled": int(fooled.sum()), "formerly_fooled_into_dropped": int(into_j.sum()),
        "now_withstand": int((fooled & new_ok).sum()), "now_withstand_of_into_dropped": int((into_j & new_ok).sum()),
        "newly_fooled": b,
        "weakest_accuracy_before": float(base_ok[of_i].mean()), "weakest_accuracy_after": float(new_ok[of_i].mean()),
        "weakest_clean_before": float((base.attacks[CLEAN].predictions == labels)[of_i].mean()),
        "weakest_clean_after": float((retrained.attacks[CLEAN].predictions == labels)[of_i].mean()),
        "mcnemar_p": mcnemar_exact(b, c),
        "accuracy_without_dropped_before": float(base_ok[kept].mean()),
        "accuracy_without_dropped_after": float(new_ok[kept].mean()),
    }
