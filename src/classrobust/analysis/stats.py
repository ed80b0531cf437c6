"""Per-class statistics with intervals: Wilson intervals per class, bootstrap intervals
for the disparity measures (worst, best, gap, std, coefficient of variation)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats


def wilson_interval(correct: np.ndarray | int, n: np.ndarray | int, confidence: float = 0.95
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for a binomial proportion (elementwise); n = 0 gives (nan, nan)."""
    correct = np.asarray(correct, dtype=float)
    n = np.asarray(n, dtype=float)
    z = stats.norm.ppf(0.5 + confidence / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = correct / n
        denom = 1 + z * z / n
        centre = (p + z * z / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return centre - half, centre + half


def fit_beta_binomial(correct: np.ndarray, n: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood (alpha, beta) of a beta-binomial model: each class's accuracy drawn
    from Beta(alpha, beta), its ``correct`` of ``n`` binomial given that accuracy. Classes with
    n = 0 are ignored. Starts from the method of moments; optimises log alpha, log beta."""
    from scipy import optimize, special

    correct, n = np.asarray(correct, dtype=float), np.asarray(n, dtype=float)
    keep = n > 0
    correct, n = correct[keep], n[keep]
    p = correct / n
    mean = float(np.clip(p.mean(), 1e-3, 1 - 1e-3))
    var = float(p.var())
    between = max(var - mean * (1 - mean) * np.mean(1 / n), 1e-4)  # what the binomial noise does not explain
    strength = max(mean * (1 - mean) / between - 1, 0.5)

    def nll(log_ab):
        a, b = np.exp(log_ab)
        return -float(np.sum(special.betaln(correct + a, n - correct + b) - special.betaln(a, b)))

    start = np.log([mean * strength, (1 - mean) * strength])
    fit = optimize.minimize(nll, start, method="L-BFGS-B", bounds=[(-7.0, 12.0), (-7.0, 12.0)])
    a, b = np.exp(fit.x)
    return float(a), float(b)


def empirical_bayes_intervals(correct: np.ndarray, n: np.ndarray, confidence: float = 0.95
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float]]:
    """Per-class accuracy shrunk towards the other classes: the posterior mean and equal-tailed
    ``confidence`` interval of Beta(alpha + correct, beta + n - correct), with (alpha, beta) fitted
    across all classes (:func:`fit_beta_binomial`). A class with few samples borrows strength from
    the rest; its interval is narrower than Wilson's and pulled towards the class average, which
    is honest only if the classes are exchangeable a priori (docs/findings.md says when not).
    Returns (estimate, low, high, (alpha, beta)); NaN where n = 0."""
    correct, n = np.asarray(correct, dtype=float), np.asarray(n, dtype=float)
    a, b = fit_beta_binomial(correct, n)
    post_a, post_b = a + correct, b + n - correct
    tail = (1 - confidence) / 2
    estimate = post_a / (post_a + post_b)
    low, high = stats.beta.ppf(tail, post_a, post_b), stats.beta.ppf(1 - tail, post_a, post_b)
    missing = n == 0
    return (np.where(missing, np.nan, estimate), np.where(missing, np.nan, low), np.where(missing, np.nan, high),
            (a, b))


def disparity(acc_per_class: np.ndarray) -> dict[str, float]:
    """Across-class spread of accuracies (K,): worst, best, gap, std, coefficient of variation."""
    acc = np.asarray(acc_per_class, dtype=float)
    mean = float(np.mean(acc))
    std = float(np.std(acc))
    return {"mean": mean, "worst": float(acc.min()), "best": float(acc.max()),
            "gap": float(acc.max() - acc.min()), "std": std, "cv": std / mean if mean > 0 else float("nan")}


def bootstrap_disparity(correct: np.ndarray, n: np.ndarray, reps: int = 2000, confidence: float = 0.95,
                        seed: int = 0, method: str = "jeffreys") -> dict[str, tuple[float, float]]:
    """Percentile intervals of :func:`disparity` from class-stratified resampling of the test points.

    ``method="binomial"``: the plain bootstrap; resampling a class's n outcomes with replacement gives
    a Binomial(n, correct / n) count, drawn directly. It collapses to a point for a class at 0% or
    100% (every resample is the same), which the data cannot support. ``method="jeffreys"``
    (default): each class's accuracy is drawn from its Jeffreys posterior Beta(correct + 1/2,
    n - correct + 1/2), a Bayesian bootstrap of the same binomials that stays honest at 0 and 100%
    and is close to the plain bootstrap elsewhere.
    """
    rng = np.random.default_rng(seed)
    n = np.asarray(n, dtype=int)
    c = np.asarray(correct, dtype=float)
    if method == "jeffreys":
        acc = rng.beta(c[None, :] + 0.5, (n - c)[None, :] + 0.5, size=(reps, len(n)))
    elif method == "binomial":
        p = c / np.maximum(n, 1)
        acc = rng.binomial(n[None, :], p[None, :], size=(reps, len(n))) / np.maximum(n, 1)[None, :]
    else:
        raise ValueError(f"method must be 'jeffreys' or 'binomial', got {method!r}")
    return _disparity_intervals(acc, confidence)


def _disparity_intervals(acc: np.ndarray, confidence: float) -> dict[str, tuple[float, float]]:
    """Percentile intervals of :func:`disparity` over bootstrap draws of the class accuracies
    ``acc`` (reps, K)."""
    mean = acc.mean(axis=1)
    std = acc.std(axis=1)
    draws = {"mean": mean, "worst": acc.min(axis=1), "best": acc.max(axis=1),
             "gap": acc.max(axis=1) - acc.min(axis=1), "std": std,
             "cv": np.divide(std, mean, out=np.full_like(std, np.nan), where=mean > 0)}
    lo, hi = 50 * (1 - confidence), 50 * (1 + confidence)

    def interval(v: np.ndarray) -> tuple[float, float]:
        if np.isnan(v).all():  # e.g. the CV when every class is at 0
            return float("nan"), float("nan")
        return float(np.nanpercentile(v, lo)), float(np.nanpercentile(v, hi))

    return {k: interval(v) for k, v in draws.items()}


def per_class_table(result, confidence: float = 0.95) -> pd.DataFrame:
    """The result's long per-class table (attack, class, n, correct, accuracy) with each row's
    Wilson interval (``ci_low``, ``ci_high``) and, per attack, the empirical-Bayes estimate across
    classes (``eb_accuracy``, ``eb_low``, ``eb_high``; :func:`empirical_bayes_intervals`)."""
    table = result.per_class_table()
    lo, hi = wilson_interval(table["correct"].to_numpy(), table["n"].to_numpy(), confidence)
    table = table.assign(ci_low=np.asarray(lo, dtype=float), ci_high=np.asarray(hi, dtype=float))
    parts = []
    for _, group in table.groupby("attack", sort=False):
        est, low, high, _ = empirical_bayes_intervals(group["correct"].to_numpy(), group["n"].to_numpy(), confidence)
        parts.append(group.assign(eb_accuracy=est, eb_low=low, eb_high=high))
    return pd.concat(parts)


def disparity_table(result, reps: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One row per attack: worst/best class, gap, std, CV, each with a bootstrap interval."""
    rows = []
    for name, res in result.attacks.items():
        point = disparity(res.accuracy_per_class)
        boot = bootstrap_disparity(res.correct_per_class, res.n_per_class, reps=reps, seed=seed)
        row = {"attack": name, "accuracy": res.accuracy, "worst_class": result.classes[res.worst_class],
               "best_class": result.classes[res.best_class]}
        for key in ("worst", "best", "gap", "std", "cv"):
            row[key] = point[key]
            lo, hi = boot[key]
            # the posterior never reaches exactly 0 or 1, the observed value can: the interval keeps it
            row[f"{key}_ci_low"], row[f"{key}_ci_high"] = min(lo, point[key]), max(hi, point[key])
        rows.append(row)
    return pd.DataFrame(rows)


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (family-wise error control over a family of tests), any
    shape; a missing (NaN) p-value is no test: it stays NaN and does not count in the family."""
    values = np.asarray(pvalues, dtype=float)
    present = ~np.isnan(values)
    p = values[present]
    order = np.argsort(p)
    adjusted_present = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, (len(p) - rank) * p[i])
        adjusted_present[i] = min(1.0, running)
    adjusted = np.full(values.shape, np.nan)
    adjusted[present] = adjusted_present
    return adjusted


#: the sign-flip test enumerates all 2^n sign patterns up to this many differences (65,536 patterns)
EXACT_SIGN_FLIPS_UP_TO = 16
#: random sign patterns beyond that
SIGN_FLIP_DRAWS = 100_000


def paired_seed_test(differences, confidence: float = 0.95, alternative: str = "two-sided") -> dict[str, float]:
    """Method minus baseline, one difference per seed (the training run is the unit).

    Returns the mean with a Student-t interval, the paired t-test's p-value, and the exact
    sign-flip permutation p-value over all 2^n sign patterns (no normality assumed; random patterns
    above :data:`EXACT_SIGN_FLIPS_UP_TO` differences, e.g. many runs pooled over methods). The
    permutation test cannot go below 2 / 2^n two-sided (1 / 2^n one-sided): ``perm_floor`` says
    which p-values the number of seeds allows. ``alternative``: ``"two-sided"``, or ``"greater"``
    / ``"less"`` for a direction declared before the run.
    """
    from itertools import product

    from scipy import stats

    d = np.asarray(differences, dtype=float)
    n = len(d)
    out = {"seeds": n, "mean": float(d.mean()) if n else float("nan"), "low": float("nan"), "high": float("nan"),
           "t_p": float("nan"), "perm_p": float("nan"), "perm_floor": float("nan"), "alternative": alternative}
    if n < 2:
        return out
    sd = d.std(ddof=1)
    if sd <= 1e-12 * max(1.0, float(np.abs(d).max())):
        sd = 0.0  # equal differences that differ by rounding (0.75 - 0.70 vs 0.80 - 0.75): no spread, not a t of 1e15
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / np.sqrt(n))
    out["low"], out["high"] = out["mean"] - half, out["mean"] + half
    if sd > 0:
        out["t_p"] = float(stats.ttest_1samp(d, 0.0, alternative=alternative).pvalue)
    elif d.mean() != 0:
        out["t_p"] = 0.0
    # every assignment of signs to |d| is equally likely under "no difference": all 2^n of them up to
    # EXACT_SIGN_FLIPS_UP_TO differences, else random ones with p = (1 + hits) / (1 + draws)
    exact = n <= EXACT_SIGN_FLIPS_UP_TO
    signs = (np.array(list(product([1.0, -1.0], repeat=n))) if exact else
             np.random.default_rng(0).choice([1.0, -1.0], size=(SIGN_FLIP_DRAWS, n)))
    means = (signs * np.abs(d)).mean(axis=1)
    observed = d.mean()
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))
    if alternative == "greater":
        hits = means >= observed - tol
    elif alternative == "less":
        hits = means <= observed + tol
    else:
        hits = np.abs(means) >= abs(observed) - tol
    out["perm_p"] = float(hits.mean()) if exact else float((1 + hits.sum()) / (1 + len(hits)))
    out["perm_floor"] = (2 if alternative == "two-sided" else 1) / 2 ** n
    return out


def seed_tests_by_class(differences: dict[str, np.ndarray], alternative: str = "two-sided",
                        overall: str | None = None) -> pd.DataFrame:
    """:func:`paired_seed_test` for each class: ``differences`` maps a class name to its per-seed
    differences (one per training run). One row per class with ``diff_mean``, ``diff_low``,
    ``diff_high``, ``diff_t_p``, ``diff_perm_p``, ``perm_floor``, ``alternative`` and
    ``perm_p_holm``, Holm over the classes; the row named ``overall`` (the whole test subset, when
    given) is reported but not part of the family."""
    rows = []
    for cls, values in differences.items():
        test = paired_seed_test(values, alternative=alternative)
        rows.append({"class_name": cls, "seeds": test["seeds"],
                     **{f"diff_{key}": test[key] for key in ("mean", "low", "high", "t_p", "perm_p")},
                     "perm_floor": test["perm_floor"], "alternative": test["alternative"]})
    table = pd.DataFrame(rows)
    family = (table["class_name"] != overall).to_numpy()
    table["perm_p_holm"] = np.nan
    table.loc[family, "perm_p_holm"] = holm(table.loc[family, "diff_perm_p"].to_numpy())
    return table


def bootstrap_disparity_seeds(correct: np.ndarray, n: np.ndarray, reps: int = 2000, confidence: float = 0.95,
                              seed: int = 0) -> dict[str, tuple[float, float]]:
    """Two-level percentile intervals of :func:`disparity` over training runs: each replicate draws
    the seeds with replacement (the variation between training runs), then every drawn seed's
    class accuracies from their Jeffreys posteriors (the test points within each class, as in
    :func:`bootstrap_disparity`), and takes the disparity of the per-class accuracies averaged over
    the drawn seeds.

    correct, n: (S, K) counts per seed and class. With one seed this is the one-level bootstrap.
    Intervals never collapse to a point: a class at 0% on every seed keeps its posterior's width.
    """
    rng = np.random.default_rng(seed)
    c = np.asarray(correct, dtype=float)
    n = np.asarray(n, dtype=float)
    if c.ndim != 2 or c.shape != n.shape:
        raise ValueError(f"correct and n must both be (seeds, classes), got {c.shape} and {n.shape}")
    s, k = c.shape
    drawn = rng.integers(0, s, size=(reps, s))  # (reps, S) seed indices
    acc = rng.beta(c[drawn] + 0.5, (n - c)[drawn] + 0.5)  # (reps, S, K)
    return _disparity_intervals(acc.mean(axis=1), confidence)


def disparity_seeds_table(correct: np.ndarray, n: np.ndarray, reps: int = 2000, seed: int = 0) -> dict[str, float]:
    """One row of across-seed disparity: :func:`disparity` of the per-class accuracy averaged over
    seeds, each with its two-level interval (:func:`bootstrap_disparity_seeds`); ``seeds``: S.
    The interval always holds the observed value (the posteriors never reach exactly 0 or 1)."""
    c, n = np.asarray(correct, dtype=float), np.asarray(n, dtype=float)
    point = disparity((c / np.maximum(n, 1)).mean(axis=0))
    boot = bootstrap_disparity_seeds(c, n, reps=reps, seed=seed)
    row: dict[str, float] = {"seeds": int(c.shape[0])}
    for key in ("mean", "worst", "best", "gap", "std"):
        lo, hi = boot[key]
        row.update({key: point[key], f"{key}_low": min(lo, point[key]), f"{key}_high": max(hi, point[key])})
    return row
