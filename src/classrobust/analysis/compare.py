"""Two evaluations of the same test points compared class by class: paired exact McNemar tests
(Holm-adjusted over classes), rank consistency of the per-class accuracies, and the check that
their attacks were run with the same settings."""

from __future__ import annotations

import numpy as np
import pandas as pd

from classrobust.analysis.consistency import discordant_pairs, mcnemar_exact, run_consistency
from classrobust.analysis.stats import holm
from classrobust.errors import UsageError
from classrobust.results import CLEAN, ClasswiseResult


def differing_settings(a: ClasswiseResult, b: ClasswiseResult) -> dict[str, list[str]]:
    """Per attack evaluated in both: the recorded settings (eps, steps, mode, precision, seed, ...)
    whose values differ between A and B."""
    out = {}
    for name in (n for n in a.attacks if n in b.attacks and n != CLEAN):
        ca, cb = a.attacks[name].config, b.attacks[name].config
        keys = sorted(k for k in set(ca) | set(cb) if ca.get(k) != cb.get(k))
        if keys:
            out[name] = keys
    return out


def compare_results(a: ClasswiseResult, b: ClasswiseResult, alpha: float = 0.05, *,
                    allow_different_settings: bool = False) -> pd.DataFrame:
    """One row per (attack, class) and per attack overall (class ``all``): accuracies of A and B,
    B - A, discordant counts, exact McNemar p-value, Holm-adjusted over classes, significance.

    Attacks are paired by name; unless ``allow_different_settings``, an attack whose recorded
    settings differ between A and B (another eps, other steps, ...) is refused, naming them."""
    if list(a.classes) != list(b.classes):
        raise UsageError(f"the runs have different classes: {a.classes} vs {b.classes}")
    if len(a.indices) != len(b.indices) or not np.array_equal(a.indices, b.indices):
        raise UsageError("the runs were evaluated on different test samples (compare needs the same "
                         "--limit and --subset-seed, so each sample is paired with itself)")
    if not np.array_equal(a.labels, b.labels):
        raise UsageError("the runs disagree on the labels of the same test samples")
    differing = differing_settings(a, b)
    if differing and not allow_different_settings:
        what = "; ".join(f"{n}: {', '.join(keys)}" for n, keys in differing.items())
        raise UsageError(f"the runs evaluated attacks with different settings ({what}); their accuracies do not "
                         "compare (pass --allow-different-settings to compare them anyway)")
    common = [n for n in a.attacks if n in b.attacks]
    if not common:
        raise UsageError(f"no attack in common: {list(a.attacks)} vs {list(b.attacks)}")
    rows = []
    for name in common:
        ok_a = a.attacks[name].predictions == a.labels
        ok_b = b.attacks[name].predictions == b.labels
        group = []
        for k, cls in enumerate([*a.classes, "all"]):
            m = (a.labels == k) if k < len(a.classes) else np.ones_like(ok_a)
            n_b, n_c = discordant_pairs(ok_a, ok_b, m)  # (A right B wrong, A wrong B right)
            group.append({"attack": name, "class_name": cls, "n": int(m.sum()),
                          "accuracy_a": float(ok_a[m].mean()), "accuracy_b": float(ok_b[m].mean()),
                          "difference": float(ok_b[m].mean() - ok_a[m].mean()),
                          "a_only": n_b, "b_only": n_c, "p_value": mcnemar_exact(n_b, n_c)})
        adjusted = holm(np.array([r["p_value"] for r in group[:-1]]))
        for r, adj in zip(group, [*adjusted, group[-1]["p_value"]]):
            r["p_holm"] = float(adj)
            r["significant"] = bool(adj < alpha)
        rows.extend(group)
    return pd.DataFrame(rows)


def consistency_between(a: ClasswiseResult, b: ClasswiseResult) -> pd.DataFrame:
    """Per attack: Spearman and Kendall correlation of the per-class accuracies of A and B."""
    rows = []
    for name in (n for n in a.attacks if n in b.attacks):
        sp, kt = run_consistency({"a": a, "b": b}, name)
        rows.append({"attack": name, "spearman": float(sp.loc["a", "b"]), "kendall": float(kt.loc["a", "b"])})
    return pd.DataFrame(rows)
