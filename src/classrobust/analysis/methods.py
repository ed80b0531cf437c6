"""Comparing training methods (or defenses) over seeds: average and worst-class accuracy with
across-seed intervals; seed-level paired tests (the training run is the unit: per-seed differences
against the baseline, t-interval, paired t-test, exact sign-flip permutation test); and McNemar
tests on the baseline's worst class, which measure test-sample noise within pairs of runs only."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
from scipy import stats

from classrobust.analysis.consistency import discordant_pairs, mcnemar_exact
from classrobust.analysis.stats import holm, paired_seed_test, seed_tests_by_class, wilson_interval


def seed_interval(values, confidence: float = 0.95, bounds: tuple[float, float] = (0.0, 1.0),
                  counts: tuple[int, int] | None = None) -> tuple[float, float, float]:
    """(mean, low, high): a Student-t interval over seeds, clipped to ``bounds`` (accuracies live in
    [0, 1]); NaN bounds for a single seed.

    When every seed scores the same (typically 0% or 100% of a class), the t-interval has zero
    width although each score is itself a measurement on a finite test sample; with ``counts``
    (correct, n pooled over the seeds) the interval is then the Wilson interval of those counts,
    never narrower than what the test points alone allow; without them the bounds are NaN."""
    v = np.asarray(values, dtype=float)
    mean = float(v.mean())
    if len(v) < 2:
        return mean, float("nan"), float("nan")
    if np.ptp(v) == 0:
        if counts is None:
            return mean, float("nan"), float("nan")
        lo, hi = wilson_interval(counts[0], counts[1], confidence)
        return mean, float(lo), float(hi)
    half = float(stats.t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return mean, max(bounds[0], mean - half), min(bounds[1], mean + half)


def compare_methods(results: Mapping[tuple[str, int], object], baseline: str, attacks: list[str],
                    target: int | None = None, alternatives: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One row per (method, attack): average and worst-class accuracy over seeds, and against ``baseline``.

    ``target``: the class every method is judged on, chosen before the test split was read (the
    baseline's worst class on the validation split); ``target_chosen_on`` records "validation".
    Without it the baseline's worst class on the test results is used, and ``target_chosen_on``
    says "test split": a target picked from the numbers it is then scored on (regression to the
    mean favours any defense).

    ``results`` maps (method, seed) to a ClasswiseResult; all results are on the same test points.
    The worst class is the baseline's (lowest accuracy pooled over its seeds, per attack), so every
    method is measured on the same class; ``worst_any`` is each seed's own worst class, averaged.
    Seed-level tests (``avg_diff_*``, ``worst_diff_*``): per-seed differences against the baseline of
    the same seed (:func:`~classrobust.analysis.stats.paired_seed_test`), two-sided; these are the
    evidence about a method. McNemar pairs each point with itself in the baseline run of the same
    seed, pooled over seeds: it sees only the noise of the test sample within those runs, not the
    variation between training runs; p-values are Holm-adjusted over the methods of one attack.
    ``alternatives``: the seed-level tests' direction for "avg" and "worst" (default two-sided;
    "greater" for a direction declared before the runs, e.g. a defense raising the worst class),
    recorded in ``avg_alternative`` / ``worst_alternative``.
    """
    alternatives = {"avg": "two-sided", "worst": "two-sided", **(alternatives or {})}
    methods = list(dict.fromkeys(m for m, _ in results))
    seeds = sorted({s for _, s in results})
    rows = []
    for attack in attacks:
        base_correct = sum(results[(baseline, s)].attacks[attack].correct_per_class for s in seeds
                           if (baseline, s) in results)
        worst = int(np.argmin(base_correct)) if target is None else int(target)
        chosen_on = "test split" if target is None else "validation"
        block = []
        for method in methods:
            runs = [(s, results[(method, s)]) for s in seeds if (method, s) in results]
            correct = sum(int(r.attacks[attack].correct_per_class[worst]) for _, r in runs)
            n = sum(int(r.attacks[attack].n_per_class[worst]) for _, r in runs)
            lo, hi = wilson_interval(correct, n)
            all_correct = sum(int(r.attacks[attack].correct_per_class.sum()) for _, r in runs)
            all_n = sum(len(r.labels) for _, r in runs)
            alo, ahi = wilson_interval(all_correct, all_n)
            avg = seed_interval([r.attacks[attack].accuracy for _, r in runs], counts=(all_correct, all_n))
            on_worst = seed_interval([r.attacks[attack].accuracy_per_class[worst] for _, r in runs],
                                     counts=(correct, n))
            # each run's own worst class: (its attack result, that class)
            own = [(r.attacks[attack], int(np.nanargmin(r.attacks[attack].accuracy_per_class))) for _, r in runs]
            own_worst = seed_interval([res.accuracy_per_class[k] for res, k in own],
                                      counts=(sum(int(res.correct_per_class[k]) for res, k in own),
                                              sum(int(res.n_per_class[k]) for res, k in own)))
            b = c = 0
            for s, r in runs:
                if (baseline, s) not in results:
                    continue
                base = results[(baseline, s)]
                if not np.array_equal(base.indices, r.indices):
                    raise ValueError(f"{method} seed {s} and {baseline} seed {s} are on different test points")
                pair = discordant_pairs(base.attacks[attack].predictions == base.labels,
                                        r.attacks[attack].predictions == r.labels, r.labels == worst)
                b, c = b + pair[0], c + pair[1]
            paired = [s for s, _ in runs if (baseline, s) in results]
            seed_tests = {}
            for key, value in (("avg", lambda r: r.attacks[attack].accuracy),
                               ("worst", lambda r: r.attacks[attack].accuracy_per_class[worst])):
                test = paired_seed_test([value(results[(method, s)]) - value(results[(baseline, s)]) for s in paired],
                                        alternative=alternatives[key])
                seed_tests.update({f"{key}_diff_{k}": test[k] for k in ("mean", "low", "high", "t_p", "perm_p")})
                seed_tests[f"{key}_alternative"] = alternatives[key]
            # the average's one-sided 95% lower bound (the two-sided 90% interval's lower end): a
            # non-inferiority margin is judged on it, not on the mean
            seed_tests["avg_diff_lower95"] = paired_seed_test(
                [results[(method, s)].attacks[attack].accuracy - results[(baseline, s)].attacks[attack].accuracy
                 for s in paired], confidence=0.90)["low"]
            block.append({**seed_tests, "attack": attack, "method": method, "seeds": len(runs),
                          "paired_seeds": len(paired), "avg": avg[0], "avg_low": avg[1],
                          "avg_high": avg[2], "avg_pooled_low": float(alo), "avg_pooled_high": float(ahi),
                          "worst_class": runs[0][1].classes[worst], "target_chosen_on": chosen_on,
                          "worst": on_worst[0],
                          "worst_low": on_worst[1], "worst_high": on_worst[2], "worst_pooled_low": float(lo),
                          "worst_pooled_high": float(hi), "worst_any": own_worst[0],
                          "worst_any_low": own_worst[1], "worst_any_high": own_worst[2],
                          "mcnemar_b": b, "mcnemar_c": c,
                          "mcnemar_p": float("nan") if method == baseline else mcnemar_exact(b, c)})
        table = pd.DataFrame(block)
        others = table["method"] != baseline
        table["mcnemar_p_holm"] = np.nan
        if others.any():
            table.loc[others, "mcnemar_p_holm"] = holm(table.loc[others, "mcnemar_p"].to_numpy())
        base_row = table[table.method == baseline].iloc[0]
        table["avg_vs_baseline"] = table["avg"] - base_row["avg"]
        table["worst_vs_baseline"] = table["worst"] - base_row["worst"]
        rows.append(table)
    return pd.concat(rows, ignore_index=True)


def per_class_differences(results: Mapping[tuple[str, int], object], baseline: str, attacks: list[str]) -> pd.DataFrame:
    """Every method against ``baseline``, class by class: one row per (method, attack, class) with
    the per-seed paired differences' mean, t-interval, paired t-test and exact sign-flip p-value
    (:func:`~classrobust.analysis.stats.paired_seed_test`, two-sided; the training run is the unit),
    and ``perm_p_holm`` adjusted over the classes of one (method, attack)."""
    methods = [m for m in dict.fromkeys(m for m, _ in results) if m != baseline]
    seeds = sorted({s for _, s in results})
    rows = []
    for attack in attacks:
        for method in methods:
            paired = [s for s in seeds if (method, s) in results and (baseline, s) in results]
            if not paired:
                continue
            acc = {m: np.array([results[(m, s)].attacks[attack].accuracy_per_class for s in paired])
                   for m in (method, baseline)}
            classes = results[(method, paired[0])].classes
            table = seed_tests_by_class({cls: acc[method][:, k] - acc[baseline][:, k] for k, cls in enumerate(classes)}
                                        ).drop(columns="alternative")  # always two-sided here
            table.insert(0, "class_index", range(len(classes)))
            table.insert(0, "attack", attack)
            table.insert(0, "method", method)
            table.insert(5, "baseline", acc[baseline].mean(axis=0))
            table.insert(6, "method_accuracy", acc[method].mean(axis=0))
            rows.append(table)
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


#: how :func:`judge_target` judges the average's cost: ``non-inferiority`` (its one-sided 95% lower bound
#: over seeds above ``-max_avg_drop``), or ``mean`` (the per-seed mean alone: how the 2026-11-28
#: confirmation declared it; a mean as noisy as the allowance decides nothing)
AVERAGE_RULES = ("non-inferiority", "mean")


def judge_target(methods: pd.DataFrame, worst_gain: float = 5.0, max_avg_drop: float = 1.0,
                 alpha: float = 0.05, average: str = "non-inferiority") -> pd.DataFrame:
    """Whether each method meets a declared target against its baseline, from :func:`compare_methods`' table.

    A method meets it when, over its seeds (the training run is the unit), the mean per-seed gain on
    the target class is at least ``worst_gain`` points, the per-seed change of the average is at least
    ``-max_avg_drop`` points (both in points, as every allowance in the library), and the gain on the target class is
    significant: paired t-test p < ``alpha`` *and* exact sign-flip p < ``alpha``, both in the
    direction the table's ``worst_alternative`` declares (the tests are against no change, not against
    ``worst_gain``); ``average`` (:data:`AVERAGE_RULES`) says how the average's cost is judged. A method
    with fewer paired seeds (its run and its baseline's both finished) than
    the comparison's most complete method has seeds misses: the target is about every declared seed,
    and a run that diverged counts against its method. One row per (dataset, baseline, attack, method)
    other than the baselines, with ``meets`` (bool) and ``short_of`` (the criteria missed, "" when met)."""
    if not 0 < alpha < 1 or worst_gain < 0 or max_avg_drop < 0:
        raise ValueError("judge_target needs 0 < alpha < 1, worst_gain >= 0 and max_avg_drop >= 0")
    if average not in AVERAGE_RULES:
        raise ValueError(f"judge_target: average must be one of {', '.join(AVERAGE_RULES)}, got {average!r}")
    table = methods.copy()
    if "baseline_method" not in table:
        table["baseline_method"] = table["method"].iloc[0] if len(table) else ""
    if "dataset" not in table:
        table["dataset"] = ""
    if "paired_seeds" not in table:  # a table from before the column: every seed paired
        table["paired_seeds"] = table["seeds"]
    # the seeds every run of a comparison should have: the most any of its methods has
    expected_seeds = table.groupby(["dataset", "baseline_method", "attack"])["seeds"].transform("max")
    table = table.assign(expected_seeds=expected_seeds)
    # a baseline is not judged, also where the table compares it with another one (trades against pgd-at)
    table = table[~table["method"].isin(set(table["baseline_method"]))]
    rows = []
    for row in table.itertuples(index=False):
        missed = []
        if row.paired_seeds < row.expected_seeds:
            missed.append(f"{row.expected_seeds - row.paired_seeds} of {row.expected_seeds} seeds without a "
                          "pair of results (a run diverged)")
        if not 100 * row.worst_diff_mean >= worst_gain:
            missed.append(f"worst-class gain {100 * row.worst_diff_mean:+.1f} < +{worst_gain:g}")
        lower = getattr(row, "avg_diff_lower95", float("nan"))
        if average == "mean" and not 100 * row.avg_diff_mean >= -max_avg_drop:
            missed.append(f"average {100 * row.avg_diff_mean:+.1f} < -{max_avg_drop:g}")
        if average == "non-inferiority" and not 100 * lower >= -max_avg_drop:  # NaN (one seed) fails too
            missed.append(f"average's one-sided 95% lower bound {100 * lower:+.1f} < -{max_avg_drop:g}")
        if not row.worst_diff_t_p < alpha:  # NaN (one seed) fails too
            missed.append(f"t-test p {row.worst_diff_t_p:.2g} >= {alpha:g}")
        if not row.worst_diff_perm_p < alpha:
            missed.append(f"sign-flip p {row.worst_diff_perm_p:.2g} >= {alpha:g}")
        rows.append({"dataset": row.dataset, "baseline_method": row.baseline_method, "attack": row.attack,
                     "method": row.method, "seeds": row.seeds, "target_class": row.worst_class,
                     "alternative": getattr(row, "worst_alternative", "two-sided"),
                     "worst_diff_mean": row.worst_diff_mean, "worst_diff_low": row.worst_diff_low,
                     "worst_diff_high": row.worst_diff_high, "worst_diff_t_p": row.worst_diff_t_p,
                     "worst_diff_perm_p": row.worst_diff_perm_p, "avg_diff_mean": row.avg_diff_mean,
                     "avg_diff_low": row.avg_diff_low, "avg_diff_high": row.avg_diff_high,
                     "avg_diff_lower95": lower, "average_rule": average,
                     # the average's seed-level tests (two-sided; not part of the target, which is on its mean)
                     "avg_diff_t_p": getattr(row, "avg_diff_t_p", float("nan")),
                     "avg_diff_perm_p": getattr(row, "avg_diff_perm_p", float("nan")),
                     "meets": not missed, "short_of": "; ".join(missed)})
    return pd.DataFrame(rows)
