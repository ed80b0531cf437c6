"""TensorBoard logging of a training run (``--tensorboard DIR``): per epoch, each class's clean and
robust validation accuracy and the class-wise levers' per-class terms; at the end, the per-class
figure of the selected weights. Reads the training loop's log rows, so it records exactly what
``train_log.csv`` records.

Tags (step = epoch): ``val_clean/<class>``, ``val_pgd/<class>`` (``all`` for the whole validation
set), ``lever_<term>/<class>`` (``weights``, ``reg_weights``, ``eps_scale``), ``train/loss``,
``train/accuracy``, ``train/lr``, ``train/eps``; figure ``final/per_class``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from classrobust.errors import UsageError
from classrobust.io import check_writable

LEVER_TERMS = ("weights", "reg_weights", "eps_scale")


def _writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UsageError("--tensorboard needs the tensorboard package: pip install 'classrobust[integrations]'") \
            from None
    return SummaryWriter


def check_tensorboard(log_dir: str | Path) -> None:
    """Fail early, in one line, when ``log_dir`` cannot be written or tensorboard is missing
    (before any training)."""
    check_writable(log_dir)
    _writer_class()



def tag_name(class_name: str) -> str:
    """A class name as one TensorBoard tag component ("T-shirt/top" -> "T-shirt-top")."""
    return str(class_name).replace("/", "-")

class TensorBoardLog:
    """Writes one run's curves under ``log_dir`` (new event files only; nothing is replaced).
    ``first_epoch`` > 1 (a resumed run) drops events a killed run logged from that epoch on."""

    def __init__(self, log_dir: str | Path, *, first_epoch: int = 1):  # noqa: D107
        writer = _writer_class()
        self.writer = writer(log_dir=str(log_dir), purge_step=first_epoch if first_epoch > 1 else None)

    def epoch(self, rows: list[dict[str, Any]]) -> None:
        """One epoch's log rows (one per class, then the ``all`` row)."""
        for row in rows:
            # "/" groups TensorBoard tags: "T-shirt/top" would split into a group of its own
            step, name = int(row["epoch"]), tag_name(row["class_name"])
            if row["n"] == 0:
                continue
            self.writer.add_scalar(f"val_clean/{name}", row["val_clean_accuracy"], step)
            self.writer.add_scalar(f"val_pgd/{name}", row["val_pgd_accuracy"], step)
            for term in LEVER_TERMS:
                if term in row and row["class_index"] >= 0:
                    self.writer.add_scalar(f"lever_{term}/{name}", row[term], step)
        last = rows[-1]
        for key in ("loss", "accuracy"):
            if f"train_{key}" in last:
                self.writer.add_scalar(f"train/{key}", last[f"train_{key}"], int(last["epoch"]))
        for key in ("lr", "eps"):
            if key in last:
                self.writer.add_scalar(f"train/{key}", last[key], int(last["epoch"]))
        self.writer.flush()

    def final(self, rows: list[dict[str, Any]], title: str) -> None:
        """The selected weights' per-class validation accuracy as a figure (bars sorted by robust accuracy)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        per_class = sorted((r for r in rows if r["class_index"] >= 0 and r["n"] > 0),
                           key=lambda r: r["val_pgd_accuracy"])
        fig, ax = plt.subplots(figsize=(max(4.0, min(0.3 * len(per_class), 20.0)), 3.2))
        positions = range(len(per_class))
        ax.bar(positions, [100 * r["val_clean_accuracy"] for r in per_class], color="#c8d6e5", label="clean")
        ax.bar(positions, [100 * r["val_pgd_accuracy"] for r in per_class], color="#2e86de", label="PGD")
        if len(per_class) <= 40:  # readable labels only
            ax.set_xticks(list(positions), [r["class_name"] for r in per_class], rotation=60, ha="right", fontsize=7)
        else:
            ax.set_xticks([])
            ax.set_xlabel(f"{len(per_class)} classes, sorted by validation PGD accuracy")
        ax.set_ylabel("validation accuracy (%)")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        self.writer.add_figure("final/per_class", fig, global_step=int(per_class[0]["epoch"]) if per_class else 0)
        plt.close(fig)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
