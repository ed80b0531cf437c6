"""Consistency of the per-class ordering across attacks and across runs (rank correlations),
and attribution of a stronger attack's gain to classes."""

from __future__ import annotations

import functools
import math
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


def gain_attribution_seeds(runs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], num_classes: int,
                           vulnerable: Sequence[int], reps: int = 2000, confidence: float = 0.95,
                           seed: int = 0) -> dict[str, float]:
    """How much of the drop from a weaker attack to a stronger one falls on the ``vulnerable``
    classes, pooled over training runs, with two-level bootstrap intervals (seeds drawn with
    replacement, then each drawn seed's points within every class from the Dirichlet posterior of
    its four outcome counts, robust or not under each attack, so no interval collapses to a point).

    runs: one (labels, ok_lower, ok_upper) per seed, each (N,): labels int in [0, num_classes),
    ok_* bool, robust under the weaker and the stronger attack.

    The share alone depends on its denominator, so both are given: ``share_of_points`` is the
    vulnerable classes' share of all points (the share a drop spread evenly over points would
    give) and ``share_of_robust`` their share of the points still robust under the weaker attack
    (the share a drop spread evenly over the points it could take would give); ``excess_*`` is
    the observed share divided by each. An excess above 1 means the stronger attack gains more
    on the vulnerable classes than that baseline.
    """
    vulnerable = np.isin(np.arange(num_classes), list(vulnerable))
    counts = []
    for labels, ok_lower, ok_upper in runs:
        category = 2 * np.asarray(ok_lower, dtype=int) + np.asarray(ok_upper, dtype=int)  # 0 00, 1 01, 2 10, 3 11
        counts.append(np.bincount(np.asarray(labels) * 4 + category, minlength=4 * num_classes).reshape(-1, 4))
    counts = np.asarray(counts, dtype=float)  # (S, K, 4)

    def statistics(c: np.ndarray) -> dict[str, np.ndarray]:  # c: (..., K, 4), already pooled over seeds
        drop = c[..., 2] - c[..., 1]
        robust = c[..., 2] + c[..., 3]
        n = c.sum(axis=-1)
        total = drop.sum(axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(total != 0, drop[..., vulnerable].sum(axis=-1) / total, np.nan)
            of_points = n[..., vulnerable].sum(axis=-1) / n.sum(axis=-1)
            of_robust = robust[..., vulnerable].sum(axis=-1) / robust.sum(axis=-1)
            return {"drop": total, "share": share, "share_of_points": of_points, "share_of_robust": of_robust,
                    "excess_over_points": share / of_points, "excess_over_robust": share / of_robust}

    point = statistics(counts.sum(axis=0))
    rng = np.random.default_rng(seed)
    pooled = []
    block = max(1, 4_000_000 // counts.size)  # replicates per chunk: bounded memory at 1,000 classes
    for start in range(0, reps, block):
        n_reps = min(block, reps - start)
        drawn = counts[rng.integers(0, len(counts), size=(n_reps, len(counts)))]  # (reps, S, K, 4)
        gamma = rng.gamma(drawn + 0.5)
        pooled.append((gamma / gamma.sum(axis=-1, keepdims=True) * drawn.sum(axis=-1, keepdims=True)).sum(axis=1))
    boot = statistics(np.concatenate(pooled))
    lo, hi = 50 * (1 - confidence), 50 * (1 + confidence)
    out: dict[str, float] = {"seeds": len(counts), "n": int(counts.sum())}
    for key, value in point.items():
        out[key] = float(value)
        if key in ("drop", "share_of_points"):
            continue
        b = boot[key][~np.isnan(boot[key])]
        if not len(b):
            out[f"{key}_low"] = out[f"{key}_high"] = float("nan")
            continue
        # the posterior's pseudo-counts pull a share of exactly 0 up: the interval keeps the observed value
        low, high = float(np.percentile(b, lo)), float(np.percentile(b, hi))
        out[f"{key}_low"], out[f"{key}_high"] = ((min(low, out[key]), max(high, out[key])) if not np.isnan(out[key])
                                                 else (low, high))
    return out


#: up to this many classes the permutation p-value enumerates every permutation (10! = 3.6 million)
EXACT_PERMUTATIONS_UP_TO = 10


@functools.lru_cache(maxsize=2)
def _permutation_columns(n: int) -> np.ndarray:
    """(n, n!) int8: column i of every permutation of range(n), each contiguous; built once per n
    (36 MB at n = 10): a report computes dozens of exact p-values over the same permutations."""
    return np.ascontiguousarray(_all_permutations(n).T)


def _permuted_products(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(n!,) sum_i x_i y_perm(i) over every permutation, accumulated position by position: one
    gather of n! values per position (several times faster than gathering the (n!, n) matrix)."""
    values = np.zeros(math.factorial(len(x)))
    for i, column in enumerate(_permutation_columns(len(x))):
        values += x[i] * np.take(y, column)
    return values


@functools.lru_cache(maxsize=1)
def _untied_rank_null(n: int) -> np.ndarray:
    """Sorted |sum_i r_i r_perm(i)| over every permutation, r the centred ranks 0..n-1."""
    ranks = np.arange(n) - (n - 1) / 2
    return np.sort(np.abs(_permuted_products(ranks, ranks)))


def _all_permutations(n: int) -> np.ndarray:
    """(n!, n) int8 array of every permutation of range(n), built by insertion (no Python loop per row)."""
    perms = np.zeros((1, 1), dtype=np.int8)
    for m in range(1, n):
        # insert the new element m at every position of every permutation of range(m)
        out = np.empty((len(perms) * (m + 1), m + 1), dtype=np.int8)
        for pos in range(m + 1):
            block = out[pos * len(perms):(pos + 1) * len(perms)]
            block[:, :pos] = perms[:, :pos]
            block[:, pos] = m
            block[:, pos + 1:] = perms[:, pos:]
        perms = out
    return perms


def permutation_correlation_p(x: np.ndarray, y: np.ndarray, *, resamples: int = 20_000,
                              seed: int = 0) -> tuple[float, str]:
    """Two-sided permutation p-value of the correlation of ``x`` and ``y`` (pass ranks for
    Spearman, residuals for a partial correlation): the share of pairings whose |correlation| is
    at least the observed one. Exact (every permutation) up to :data:`EXACT_PERMUTATIONS_UP_TO`
    values, else ``resamples`` random permutations with p = (1 + hits) / (1 + resamples).
    Returns (p, "exact" | "monte carlo")."""
    x = np.asarray(x, dtype=float) - np.mean(x)
    y = np.asarray(y, dtype=float) - np.mean(y)
    observed = abs(float(x @ y))
    tolerance = 1e-12 * max(observed, 1.0)
    if len(x) <= EXACT_PERMUTATIONS_UP_TO:
        ranks = np.arange(len(x)) - (len(x) - 1) / 2
        if np.array_equal(np.sort(x), ranks) and np.array_equal(np.sort(y), ranks):
            # untied ranks (most Spearman tests): the null distribution is the same for every pair
            null = _untied_rank_null(len(x))
            return float((len(null) - np.searchsorted(null, observed - tolerance)) / len(null)), "exact"
        values = _permuted_products(x, y)
        return float(np.mean(np.abs(values) >= observed - tolerance)), "exact"
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, resamples, 20_000):
        size = min(20_000, resamples - start)
        shuffled = np.argsort(rng.random((size, len(y))), axis=1)
        hits += int(np.sum(np.abs(y[shuffled] @ x) >= observed - tolerance))
    return (1 + hits) / (1 + resamples), "monte carlo"


def _residuals(v: np.ndarray, control: np.ndarray) -> np.ndarray:
    """``v`` minus its least-squares line on ``control``."""
    design = np.column_stack([np.ones(len(control)), control])
    coef, *_ = np.linalg.lstsq(design, v, rcond=None)
    return v - design @ coef


def weight_norm_correlation(norms: np.ndarray, accuracy: np.ndarray,
                            clean_accuracy: np.ndarray | None = None) -> dict[str, float]:
    """Correlation of per-class classifier weight norms with per-class accuracy.

    ``pearson``/``pearson_p`` (asymptotic) and ``spearman`` with ``spearman_p``, an exact
    permutation p-value over the classes (Monte Carlo above 10 classes; ``spearman_p_method``).
    With ``clean_accuracy``: ``partial_spearman``, the Spearman correlation of norms and accuracy
    after removing from both ranks their linear dependence on the clean-accuracy ranks, with its
    permutation p-value (``partial_spearman_p``): whether the norms say anything about robustness
    beyond what clean accuracy says. NaN where a variable is constant. p-values are per test; a
    report of several corrects them for the family (Holm)."""
    norms, accuracy = np.asarray(norms, dtype=float), np.asarray(accuracy, dtype=float)
    nan = float("nan")
    out = {"pearson": nan, "pearson_p": nan, "spearman": nan, "spearman_p": nan, "spearman_p_method": ""}
    if clean_accuracy is not None:
        out.update(partial_spearman=nan, partial_spearman_p=nan)
    keep = ~(np.isnan(norms) | np.isnan(accuracy))
    if keep.sum() < 3 or _constant(norms[keep]) or _constant(accuracy[keep]):
        return out
    norms, accuracy = norms[keep], accuracy[keep]
    pr = stats.pearsonr(norms, accuracy)
    rank_n, rank_a = stats.rankdata(norms), stats.rankdata(accuracy)
    p, method = permutation_correlation_p(rank_n, rank_a)
    out.update(pearson=float(pr.statistic), pearson_p=float(pr.pvalue),
               spearman=float(stats.spearmanr(norms, accuracy).statistic), spearman_p=p, spearman_p_method=method)
    if clean_accuracy is not None:
        clean = np.asarray(clean_accuracy, dtype=float)[keep]
        if not _constant(clean):
            rank_c = stats.rankdata(clean)
            rn, ra = _residuals(rank_n, rank_c), _residuals(rank_a, rank_c)
            # residuals at rounding level: clean accuracy orders the classes exactly as the other does
            if min(rn.std() / rank_n.std(), ra.std() / rank_a.std()) > 1e-9:
                out["partial_spearman"] = float(np.corrcoef(rn, ra)[0, 1])
                out["partial_spearman_p"] = permutation_correlation_p(rn, ra)[0]
    return out


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


def confused_class_ablation(base, retrained, attack: str, weak: str, dropped: str,
                            exclude: Sequence[str] = ()) -> dict[str, float]:
    """What retraining without class ``dropped`` did to class ``weak`` under ``attack``.

    ``base`` and ``retrained`` are results on the same test samples. The *flipped* points are
    ``weak``'s points that ``base`` classifies correctly when clean and wrongly under attack (the
    attack's doing; ``formerly_fooled`` also counts the clean errors); the ablation asks how many of
    them the retrained model now withstands. ``others_*``: accuracy over exactly the classes other
    than ``weak``, ``dropped`` and ``exclude`` (pass the control run's class so that both runs of a
    seed are scored on the same classes); ``accuracy_without_dropped_*`` leaves out only the
    dropped class (the retrained model never saw it). McNemar pairs the two models on ``weak``'s
    points: test-sample noise within one pair of runs.
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
    flipped = fooled & (base.attacks[CLEAN].predictions == labels)
    into_j = flipped & (base_adv == j)
    kept = labels != j
    others = ~np.isin(labels, [i, j, *(base.classes.index(c) for c in exclude)])
    b, c = discordant_pairs(base_ok, new_ok, of_i)  # b: robust before, not after
    return {
        "attack": attack, "weakest_class": weak, "dropped_class": dropped, "n_weakest": int(of_i.sum()),
        "formerly_fooled": int(fooled.sum()), "flipped": int(flipped.sum()),
        "flipped_into_dropped": int(into_j.sum()), "now_withstand_of_flipped": int((flipped & new_ok).sum()),
        "now_withstand_of_into_dropped": int((into_j & new_ok).sum()), "newly_fooled": b,
        "weakest_accuracy_before": float(base_ok[of_i].mean()), "weakest_accuracy_after": float(new_ok[of_i].mean()),
        "weakest_clean_before": float((base.attacks[CLEAN].predictions == labels)[of_i].mean()),
        "weakest_clean_after": float((retrained.attacks[CLEAN].predictions == labels)[of_i].mean()),
        "mcnemar_p": mcnemar_exact(b, c),
        "other_classes": ", ".join(base.classes[k] for k in np.unique(labels[others])),
        "others_accuracy_before": float(base_ok[others].mean()) if others.any() else float("nan"),
        "others_accuracy_after": float(new_ok[others].mean()) if others.any() else float("nan"),
        "accuracy_without_dropped_before": float(base_ok[kept].mean()),
        "accuracy_without_dropped_after": float(new_ok[kept].mean()),
    }


def ablation_per_class(base, retrained, attack: str, dropped: str) -> pd.DataFrame:
    """Every class's accuracy under ``attack`` before and after retraining without ``dropped``
    (long: class_name, before, after, change; the dropped class's row has ``dropped`` True)."""
    before = base.attacks[attack].accuracy_per_class
    after = retrained.attacks[attack].accuracy_per_class
    return pd.DataFrame({"class_name": base.classes, "before": before, "after": after, "change": after - before,
                         "dropped": [c == dropped for c in base.classes]})


def paired_attack_difference(runs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], mask_class: int | None = None
                             ) -> dict[str, float]:
    """Two attacks on the same points of each run: per run (labels, predictions under A, predictions
    under B), the difference of A's accuracy minus B's in points (on ``mask_class``'s points only if
    given), its seed-level test over runs (two-sided), and how many runs A was lower / higher on."""
    from classrobust.analysis.stats import paired_seed_test

    diffs = []
    for labels, a, b in runs:
        keep = np.ones(len(labels), bool) if mask_class is None else labels == mask_class
        diffs.append(100 * ((a[keep] == labels[keep]).mean() - (b[keep] == labels[keep]).mean()))
    out = paired_seed_test(diffs)
    out.update(lower=int(sum(d < 0 for d in diffs)), higher=int(sum(d > 0 for d in diffs)))
    return out
