"""Figures from saved results (matplotlib's object API: no global pyplot state, no display)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from classrobust.analysis import row_normalised, wilson_interval

PALETTE = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c",
           "#ccb974", "#64b5cd"]


def per_class_bars(result) -> Figure:
    """Grouped bars: per-class accuracy for clean and each attack, with 95% Wilson whiskers."""
    names = list(result.attacks)
    k = result.num_classes
    fig = Figure(figsize=(max(8, 0.9 * k + 2), 4.2), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(names)
    x = np.arange(k)
    for i, name in enumerate(names):
        res = result.attacks[name]
        acc = res.accuracy_per_class
        lo, hi = wilson_interval(res.correct_per_class, res.n_per_class)
        ax.bar(x + (i - (len(names) - 1) / 2) * width, acc, width, label=name, color=PALETTE[i % len(PALETTE)],
               yerr=np.clip(np.vstack([acc - lo, hi - acc]), 0, None), capsize=2, error_kw={"elinewidth": 0.8})
    ax.set_xticks(x, result.classes, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy (95% Wilson interval)")
    ax.legend(ncol=min(len(names), 5), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 1.15))
    ax.grid(axis="y", alpha=0.3)
    return fig


#: with more classes than this, the curves figure draws the weakest and strongest few only
MAX_CURVES = 12


def robustness_curves(curves: pd.DataFrame, attack: str) -> Figure:
    """One step curve per class (and the whole set, dashed): robust accuracy against the radius,
    from a minimal-norm attack's per-point distances; the threat model's eps marked. With more than
    ``MAX_CURVES`` classes, only the 5 weakest and 5 strongest at eps (all classes: curves.csv)."""
    rows = curves[(curves["attack"] == attack) & (curves["kind"] == "step")]
    eps, norm = rows["eps"].iloc[0], rows["norm"].iloc[0]
    title = f"{attack}: per-class robustness curves (smallest adversarial distance found)"
    if rows["class_index"].nunique() - 1 > MAX_CURVES:
        grid = curves[(curves["attack"] == attack) & (curves["kind"] == "grid") & (curves["class_index"] >= 0)]
        at_eps = grid[np.isclose(grid["distance"], eps)].sort_values("robust_accuracy")["class_index"].tolist()
        keep = set(at_eps[:5] + at_eps[-5:] + [-1])
        rows = rows[rows["class_index"].isin(keep)]
        title = f"{attack}: robustness curves of the 5 weakest and 5 strongest classes at eps (all: curves.csv)"
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    top = 3 * eps if eps else rows["distance"].max()
    for i, (k, part) in enumerate(rows.groupby("class_index", sort=True)):
        r = np.append(part["distance"].to_numpy(), top)
        a = np.append(part["robust_accuracy"].to_numpy(), part["robust_accuracy"].iloc[-1])
        keep = r <= top
        label = part["class_name"].iloc[0]
        style = {"color": "black", "linestyle": "--", "linewidth": 1.6} if k == -1 else {
            "color": PALETTE[i % len(PALETTE)], "linewidth": 1.1}
        ax.step(r[keep], a[keep], where="post", label=label, **style)
    if eps:
        ax.axvline(eps, color="grey", linewidth=0.8)
        ax.text(eps, 1.02, f" eps {eps:.4g}", fontsize=8, color="grey")
    ax.set_xlim(0, top)
    ax.set_ylim(0, 1.08)
    ax.set_xlabel(f"radius ({norm})")
    ax.set_ylabel("robust accuracy")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.grid(alpha=0.3)
    return fig


def accuracy_distribution(result) -> Figure:
    """Each attack's per-class accuracies sorted, against the share of classes (readable at any
    number of classes): how many classes sit below any accuracy."""
    fig = Figure(figsize=(7, 3.8), layout="constrained")
    ax = fig.add_subplot()
    for i, (name, res) in enumerate(result.attacks.items()):
        acc = np.sort(res.accuracy_per_class[~np.isnan(res.accuracy_per_class)])
        if len(acc):
            ax.step(np.arange(1, len(acc) + 1) / len(acc), acc, where="post", color=PALETTE[i % len(PALETTE)],
                    label=f"{name} (median {100 * np.median(acc):.1f}%)")
    ax.set_xlabel(f"share of classes ({result.num_classes}), weakest first")
    ax.set_ylabel("per-class accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("distribution of per-class accuracy", fontsize=10)
    return fig


def confusion_heatmap(result, attack: str, classes: list[int] | None = None) -> Figure:
    """Row-normalised confusion (true x predicted) with counts, under one attack; ``classes``
    (indices) restricts rows and columns to those classes (row shares stay those of the whole row)."""
    cm = result.attacks[attack].confusion
    norm = row_normalised(cm)
    names = list(result.classes)
    if classes is not None:
        cm, norm = cm[np.ix_(classes, classes)], norm[np.ix_(classes, classes)]
        names = [names[i] for i in classes]
    k = len(names)
    fig = Figure(figsize=(0.55 * k + 2.5, 0.5 * k + 1.8), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    what = "" if classes is None else f", the {k} classes of the strongest pairs"
    ax.set_title(f"{attack}: where each class lands (row share, counts{what})", fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


#: with more classes than this, the gain chart stacks the vulnerable classes and one "other" block
MAX_STACKED = 12


def gain_chart(gains: pd.DataFrame) -> Figure:
    """Stacked bars: each class's share of the accuracy drop from rung to rung of the ladder (with
    many classes: the most vulnerable ones, and all others as one block)."""
    steps = list(dict.fromkeys(zip(gains["from"], gains["to"])))
    classes = list(dict.fromkeys(gains["class_name"]))
    if len(classes) > MAX_STACKED:
        vulnerable = set(gains.loc[gains["vulnerable"], "class_name"])
        others = f"the other {len(classes) - len(vulnerable)} classes"
        gains = gains.assign(class_name=gains["class_name"].where(gains["class_name"].isin(vulnerable), others))
        gains = gains.groupby(["from", "to", "class_name"], sort=False, as_index=False)["drop"].sum()
        classes = [c for c in classes if c in vulnerable] + [others]
    fig = Figure(figsize=(max(6, 1.6 * len(steps) + 3), 4), layout="constrained")
    ax = fig.add_subplot()
    bottom = np.zeros(len(steps))
    for c, cls in enumerate(classes):
        drops = np.array([gains[(gains["from"] == a) & (gains["to"] == b) & (gains["class_name"] == cls)]["drop"]
                          .iloc[0] for a, b in steps], dtype=float)
        ax.bar(range(len(steps)), drops, bottom=bottom, label=cls, color=PALETTE[c % len(PALETTE)])
        bottom += drops
    ax.set_xticks(range(len(steps)), [f"{a} -> {b}" for a, b in steps], rotation=15)
    ax.set_ylabel("points newly misclassified")
    ax.set_title("which classes each stronger attack gains on", fontsize=10)
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    return fig


def weight_norm_scatter(result, norms: np.ndarray, attack: str) -> Figure:
    acc = result.attacks[attack].accuracy_per_class
    fig = Figure(figsize=(5.5, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(norms, acc, color=PALETTE[0])
    for cls, xv, yv in zip(result.classes, norms, acc):
        ax.annotate(cls, (xv, yv), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("L2 norm of the class's row in the final linear layer")
    ax.set_ylabel(f"{attack} accuracy")
    ax.grid(alpha=0.3)
    return fig


def matrix_heatmap(matrix: pd.DataFrame, title: str) -> Figure:
    n = len(matrix)
    fig = Figure(figsize=(0.7 * n + 3, 0.6 * n + 2), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(matrix.to_numpy(dtype=float), cmap="RdBu", vmin=-1, vmax=1)
    for i in range(n):
        for j in range(n):
            value = matrix.iloc[i, j]
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if abs(value) > 0.6 else "black")
    ax.set_xticks(range(n), matrix.columns, rotation=30, ha="right")
    ax.set_yticks(range(n), matrix.index)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def training_curves(log: pd.DataFrame, classes: list[int] | None = None) -> Figure:
    """Per-class validation clean and PGD accuracy per epoch, from ``train_log.csv``; ``classes``
    (indices) draws only those classes (and the overall curve)."""
    per_class = log[log["class_index"] >= 0]
    if classes is not None:
        per_class = per_class[per_class["class_index"].isin(classes)]
    overall = log[log["class_index"] < 0]
    fig = Figure(figsize=(11, 4), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, col, title in ((axes[0], "val_clean_accuracy", "validation clean"),
                           (axes[1], "val_pgd_accuracy", "validation PGD")):
        for c, (cls, group) in enumerate(per_class.groupby("class_index", sort=True)):
            ax.plot(group["epoch"], group[col], marker=".", color=PALETTE[c % len(PALETTE)],
                    label=group["class_name"].iloc[0])
        ax.plot(overall["epoch"], overall[col], color="black", lw=2.5, label="all")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[1].legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    return fig


def accuracy_heatmap(table: pd.DataFrame, title: str) -> Figure:
    """Rows x columns of accuracies in [0, 1] (e.g. classes x training methods), annotated in %."""
    rows, cols = table.shape
    fig = Figure(figsize=(1.1 * cols + 3, 0.42 * rows + 1.6), layout="constrained")
    ax = fig.add_subplot()
    values = table.to_numpy(dtype=float)
    im = ax.imshow(values, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for i in range(rows):
        for j in range(cols):
            if not np.isnan(values[i, j]):
                ax.text(j, i, f"{100 * values[i, j]:.1f}", ha="center", va="center", fontsize=8,
                        color="white" if values[i, j] < 0.6 else "black")
    ax.set_xticks(range(cols), table.columns, rotation=30, ha="right")
    ax.set_yticks(range(rows), table.index)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig
