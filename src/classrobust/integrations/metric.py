"""``ClasswiseRobustAccuracy``: per-class clean and robust accuracy as a torchmetrics metric.

Accumulates per-class counts over ``update(x, y)`` calls and synchronises them across processes
like any torchmetrics metric (sum), so it drops into a user's validation loop, DDP or not::

    from classrobust.attacks import create_attack
    from classrobust.integrations.metric import ClasswiseRobustAccuracy

    metric = ClasswiseRobustAccuracy(create_attack("pgd", model, eps=8 / 255, steps=10), num_classes=10)
    for x, y in val_loader:
        metric.update(x.cuda(), y.cuda())
    out = metric.compute()      # out["robust"]: (K,) per-class robust accuracy, out["worst_robust"], ...
"""

from __future__ import annotations

import torch

try:
    from torchmetrics import Metric
except ImportError as exc:  # an optional extra: say how to get it, in one line
    raise ImportError("ClasswiseRobustAccuracy needs torchmetrics: pip install 'classrobust[integrations]'") from exc

from classrobust.attacks.base import Attack
from classrobust.evaluate.classwise import check_labels, predict, worst_case_predictions
from classrobust.runtime import model_mode


class ClasswiseRobustAccuracy(Metric):
    """Per-class clean and robust accuracy under one attack.

    Args:
        attack: a classrobust attack built on the model to evaluate (``attack.model``); it runs in
            eval mode on the correctly classified points only, and a clean error counts as not
            robust (the per-point worst case, as in ``classrobust eval``).
        num_classes: K.

    ``update(x, y)``: x (B, C, H, W) in [0, 1] on the model's device, y (B,) int64 in [0, K) (else a
    ValueError); the
    model's train/eval mode is restored afterwards. ``compute()`` returns a dict of tensors:
    ``n``, ``clean``, ``robust`` (each (K,); NaN for a class without samples), ``clean_all``,
    ``robust_all`` (over all samples), ``worst_robust`` and ``worst_class`` (over classes with
    samples). States: per-class counts, summed across processes.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, attack: Attack, num_classes: int, **kwargs):
        super().__init__(**kwargs)
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.attack = attack
        self.num_classes = num_classes
        for name in ("n", "clean_correct", "robust_correct"):
            self.add_state(name, default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        model = self.attack.model
        y = y.to(torch.long)
        k = self.num_classes
        check_labels(y, k)  # a UsageError, which is a ValueError
        with model_mode(model, False):
            clean = predict(model, x)
            robust_pred, _ = worst_case_predictions(model, self.attack, x, y, clean)
        self.n += torch.bincount(y, minlength=k)
        self.clean_correct += torch.bincount(y[clean == y], minlength=k)
        self.robust_correct += torch.bincount(y[robust_pred == y], minlength=k)

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.n.double()
        present = self.n > 0
        nan = torch.full_like(n, float("nan"))
        clean = torch.where(present, self.clean_correct / n.clamp(min=1), nan)
        robust = torch.where(present, self.robust_correct / n.clamp(min=1), nan)
        masked = torch.where(present, robust, torch.full_like(robust, float("inf")))
        worst_class = masked.argmin()
        total = n.sum().clamp(min=1)
        return {"n": self.n.clone(), "clean": clean, "robust": robust,
                "clean_all": self.clean_correct.sum() / total, "robust_all": self.robust_correct.sum() / total,
                "worst_robust": robust[worst_class], "worst_class": worst_class}
