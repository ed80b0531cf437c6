"""Text tables of class-wise results, as the CLI prints them."""

from __future__ import annotations

import numpy as np

from classrobust.results import CLEAN, ClasswiseResult, collapsed_classes


def format_classwise_table(result: ClasswiseResult) -> str:
    """Classes as rows, clean and each attack as columns (accuracy in %), then summary rows."""
    table = result.wide_table()
    names = list(result.attacks)
    header = f"{'class':<14}{'n':>6}" + "".join(f"{n:>10}" for n in names)
    lines = [header, "-" * len(header)]
    for _, row in table.iterrows():
        lines.append(f"{str(row['class'])[:13]:<14}{int(row['n']):>6}"
                     + "".join(f"{100 * row[n]:>9.1f}%" for n in names))
    lines.append("-" * len(header))
    lines.append(f"{'all':<14}{len(result.labels):>6}"
                 + "".join(f"{100 * result.attacks[n].accuracy:>9.1f}%" for n in names))
    worst = [result.attacks[n].worst_class for n in names]
    lines.append(f"{'worst class':<20}" + "".join(f"{result.classes[w][:9]:>10}" for w in worst))
    gaps = [np.nanmax(result.attacks[n].accuracy_per_class) - np.nanmin(result.attacks[n].accuracy_per_class)
            for n in names]
    lines.append(f"{'best-worst gap':<20}" + "".join(f"{100 * g:>9.1f}%" for g in gaps))
    return "\n".join(lines)


def format_warnings(result: ClasswiseResult) -> list[str]:
    """Human-readable warnings about the model that the table alone may hide."""
    out = []
    for c in collapsed_classes(result):
        out.append(f"warning: class {c['class']!r} has collapsed: clean accuracy {c['clean_accuracy']:.1%} "
                   f"(below twice chance, {2 / result.num_classes:.0%}); its robust accuracy says nothing")
    if CLEAN in result.attacks and result.attacks[CLEAN].accuracy < 2 / result.num_classes:
        out.append("warning: overall clean accuracy is near chance; the model has not learned")
    if result.sanity:
        out.extend(result.sanity["warnings"])
    return out
