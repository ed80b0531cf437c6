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
    into = attacked_into(result, attack)
    rows = []
    for i, cls in enumerate(result.classes):
        fooled = int(into[i].sum())
        order = np.argsort(-into[i], kind="stable")[:top]
        row = {"attack": attack, "class_name": cls, "fooled": fooled}
        for r, j in enumerate(order, 1):
            share = into[i, j] / fooled if fooled else 0.0
            row[f"into_{r}"] = result.classes[j] if into[i, j] else ""
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
