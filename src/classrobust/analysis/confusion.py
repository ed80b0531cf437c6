"""Where adversarial examples land: attacked-into matrices, top destinations, strongest pairs."""

from __future__ import annotations

import numpy as np
import pandas as pd

from classrobust.results import CLEAN


def attacked_into(result, attack: str) -> np.ndarray:
    """(K, K) counts of points correct when clean and moved by ``attack`` from class i (row) to j."""
    clean = result.attacks[CLEAN].predictions
    adv = result.attacks[attack].predictions
    labels = result.labels
    flipped = (clean == labels) & (adv != labels)
    k = result.num_classes
    return np.bincount(labels[flipped] * k + adv[flipped], minlength=k * k).reshape(k, k)


def row_normalised(matrix: np.ndarray) -> np.ndarray:
    sums = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, sums, out=np.zeros_like(matrix, dtype=float), where=sums > 0)


def top_destinations(result, attack: str, top: int = 3) -> pd.DataFrame:
    """For each class: its fooled count and the ``top`` classes its adversarial examples land in,
    with the share of the class's fooled examples each takes."""
    return _destinations(attacked_into(result, attack), result.classes, attack, top)


def pooled_destinations(results: list, attack: str, top: int = 3) -> pd.DataFrame:
    """:func:`top_destinations` over several runs (e.g. the seeds of one method): the attacked-into
    counts summed over the runs, plus ``runs`` (how many had a fooled point of the class) and
    ``runs_same_top`` (how many of those sent most of the class's points to the pooled top class):
    whether the destination is a property of the recipe or of one training run."""
    matrices = [attacked_into(r, attack) for r in results]
    table = _destinations(np.sum(matrices, axis=0), results[0].classes, attack, top)
    pooled_top = [results[0].classes.index(c) if c else -1 for c in table["into_1"]]
    table["runs"] = [sum(int(m[i].sum() > 0) for m in matrices) for i in range(len(table))]
    table["runs_same_top"] = [sum(int(m[i].sum() > 0 and np.argmax(m[i]) == j) for m in matrices)
                              for i, j in enumerate(pooled_top)]
    return table


def _destinations(into: np.ndarray, classes, attack: str, top: int) -> pd.DataFrame:
    rows = []
    for i, cls in enumerate(classes):
        fooled = int(into[i].sum())
        order = np.argsort(-into[i], kind="stable")[:top]
        row = {"attack": attack, "class_name": cls, "fooled": fooled}
        for r, j in enumerate(order, 1):
            share = into[i, j] / fooled if fooled else 0.0
            row[f"into_{r}"] = classes[j] if into[i, j] else ""
            row[f"share_{r}"] = float(share)
        row[f"top{top}_share"] = float(into[i, order].sum() / fooled) if fooled else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def strongest_pairs(result, attack: str, top: int = 10) -> pd.DataFrame:
    """The largest off-diagonal entries of the attacked-into matrix: (from, to, count, share of all flips)."""
    into = attacked_into(result, attack).copy()
    np.fill_diagonal(into, 0)
    total = into.sum()
    rows, cols = np.nonzero(into)  # row-major: ties stay in (from, to) order under the stable sort
    order = np.argsort(-into[rows, cols], kind="stable")[:top]
    return pd.DataFrame([{"attack": attack, "from": result.classes[i], "to": result.classes[j],
                          "count": int(into[i, j]), "share_of_flips": float(into[i, j] / total)}
                         for i, j in zip(rows[order], cols[order])],
                        columns=["attack", "from", "to", "count", "share_of_flips"])
