"""Text tables of class-wise results, as the CLI prints them."""

from __future__ import annotations

import numpy as np

from classrobust.results import CLEAN, ClasswiseResult, collapsed_classes


def _pct(value: float, width: int) -> str:
    """``value`` in [0, 1] as a percentage right-aligned in ``width``; a class without samples shows '-'."""
    return f"{'-':>{width}}" if np.isnan(value) else f"{100 * value:>{width - 1}.1f}%"


#: with more classes than this, tables and figures lead with the extremes (the full table in CSV
#: and, in report.html, collapsed)
MANY_CLASSES = 20
#: how many weakest and strongest classes lead then
EXTREME_CLASSES = 10


def strongest_attack(result: ClasswiseResult) -> str:
    """The attack with the lowest overall accuracy (``clean`` if none ran): the one that orders classes."""
    attacks = [n for n in result.attacks if n != CLEAN]
    return min(attacks, key=lambda n: result.attacks[n].accuracy) if attacks else CLEAN


def extreme_classes(result: ClasswiseResult, k: int = EXTREME_CLASSES) -> tuple[list[int], list[int]]:
    """Indices of the ``k`` weakest (weakest first) and ``k`` strongest (weakest of them first)
    classes with samples, by accuracy under :func:`strongest_attack`; ties keep class order."""
    acc = result.attacks[strongest_attack(result)].accuracy_per_class
    present = [int(i) for i in np.flatnonzero(~np.isnan(acc))]
    ordered = sorted(present, key=lambda i: acc[i])  # stable: ties in class order
    weakest = ordered[:k]
    strongest = [i for i in ordered[-k:] if i not in weakest] if len(ordered) > k else []
    return weakest, strongest


def format_classwise_table(result: ClasswiseResult) -> str:
    """Classes as rows, clean and each attack as columns (accuracy in %), then summary rows.

    Columns widen to the longest class and attack names (nothing is cut or run together); a
    class with no evaluated samples shows '-'. With more than :data:`MANY_CLASSES` classes only
    the :data:`EXTREME_CLASSES` weakest and strongest are listed (all in per_class.csv)."""
    table = result.wide_table()
    names = list(result.attacks)
    # a tie for the worst class is marked, not broken silently by class order
    worst = [result.classes[result.attacks[n].worst_class]
             + (f" +{len(result.attacks[n].worst_classes) - 1} tied" if len(result.attacks[n].worst_classes) > 1 else "")
             for n in names]
    first = max(14, max(len(str(c)) for c in result.classes) + 2)
    cols = [max(10, len(n) + 2, len(w) + 2) for n, w in zip(names, worst)]
    header = f"{'class':<{first}}{'n':>6}" + "".join(f"{n:>{w}}" for n, w in zip(names, cols))
    lines = [header, "-" * len(header)]

    def row_line(row) -> str:
        return f"{str(row['class']):<{first}}{int(row['n']):>6}" + "".join(_pct(row[n], w) for n, w in zip(names, cols))

    if result.num_classes > MANY_CLASSES:
        weakest, strongest = extreme_classes(result)
        lines.insert(0, f"{len(weakest)} weakest and {len(strongest)} strongest of {result.num_classes} classes "
                        f"under {strongest_attack(result)} (all classes in per_class.csv)")
        lines.extend(row_line(table.iloc[i]) for i in weakest)
        hidden = result.num_classes - len(weakest) - len(strongest)
        if hidden:
            lines.append(f"{'...':<{first}}  ({hidden} classes between)")
        lines.extend(row_line(table.iloc[i]) for i in strongest)
    else:
        lines.extend(row_line(row) for _, row in table.iterrows())
    lines.append("-" * len(header))
    lines.append(f"{'all':<{first}}{len(result.labels):>6}"
                 + "".join(_pct(result.attacks[n].accuracy, w) for n, w in zip(names, cols)))
    lines.append(f"{'worst class':<{first + 6}}" + "".join(f"{c:>{w}}" for c, w in zip(worst, cols)))
    gaps = [np.nanmax(result.attacks[n].accuracy_per_class) - np.nanmin(result.attacks[n].accuracy_per_class)
            for n in names]
    lines.append(f"{'best-worst gap':<{first + 6}}" + "".join(_pct(g, w) for g, w in zip(gaps, cols)))
    return "\n".join(lines)


#: at most this many collapsed classes get a warning line each; more are summarised in one line
MAX_CLASS_WARNINGS = 5


def format_warnings(result: ClasswiseResult) -> list[str]:
    """Human-readable warnings about the model that the table alone may hide; many collapsed classes
    (more than :data:`MAX_CLASS_WARNINGS`) make one line (the full list is in ``summary.json``)."""
    out = []
    collapsed = collapsed_classes(result)
    if len(collapsed) > MAX_CLASS_WARNINGS:
        names = ", ".join(c["class"] for c in collapsed[:MAX_CLASS_WARNINGS])
        out.append(f"warning: {len(collapsed)} of {result.num_classes} classes have collapsed (clean accuracy below "
                   f"twice chance, {2 / result.num_classes:.1%}): {names}, ... (all in summary.json, "
                   "collapsed_classes); their robust accuracy says nothing")
        collapsed = []
    for c in collapsed:
        out.append(f"warning: class {c['class']!r} has collapsed: clean accuracy {c['clean_accuracy']:.1%} "
                   f"(below twice chance, {2 / result.num_classes:.0%}); its robust accuracy says nothing")
    if CLEAN in result.attacks and result.attacks[CLEAN].accuracy < 2 / result.num_classes:
        out.append("warning: overall clean accuracy is near chance; the model has not learned")
    if result.meta.get("output_warning"):
        out.append(result.meta["output_warning"])
    if result.sanity:
        out.extend(result.sanity["warnings"])
    return out
