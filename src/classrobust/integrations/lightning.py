"""``ClasswiseRobustness``: a PyTorch Lightning callback that evaluates class-wise robustness on a
held-out loader every N epochs and logs the per-class curves through the trainer's loggers.

    from classrobust.integrations.lightning import ClasswiseRobustness

    callback = ClasswiseRobustness(val_loader, attack="pgd:steps=10", eps=8 / 255, every_n_epochs=5,
                                   class_names=dataset.classes)
    trainer = lightning.Trainer(callbacks=[callback], ...)

The LightningModule's forward must map images in [0, 1] to logits (normalisation inside the
model, as for every classrobust attack). Logged per evaluation, at the epoch's step:
``classwise/<attack>/robust/<class>``, ``classwise/clean/<class>``, and the summaries
``classwise/<attack>/robust_all``, ``.../worst_robust``. ``callback.history`` keeps every
evaluation as rows (epoch, class, n, clean, robust), and :meth:`ClasswiseRobustness.history_frame`
returns them as a pandas DataFrame.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

try:
    from lightning.pytorch.callbacks import Callback
except ImportError as exc:
    raise ImportError("ClasswiseRobustness needs lightning: pip install 'classrobust[integrations]'") from exc

from classrobust.integrations.metric import ClasswiseRobustAccuracy
from classrobust.runtime import model_mode


class ClasswiseRobustness(Callback):
    """Class-wise robust accuracy of the module under ``attack`` on ``loader`` every ``every_n_epochs``.

    Args:
        loader: yields (x (B, C, H, W) in [0, 1], y (B,)); a held-out split, never the test split
            if the numbers steer training. Under DDP give each process its shard (a
            DistributedSampler): the counts are summed across processes.
        attack: an attack spec as on the command line (``"pgd:steps=10"``, ``"apgd-ce"``, ...).
        eps: the radius; other options in the spec.
        every_n_epochs: evaluate after epochs N, 2N, ... (and never inside the sanity check).
        class_names: names for the logged keys (default ``class_000``, ...).
        limit_batches: evaluate at most this many batches of ``loader`` (None: all).
    """

    def __init__(self, loader: Iterable, *, attack: str = "pgd:steps=10", eps: float, every_n_epochs: int = 1,
                 class_names: list[str] | None = None, limit_batches: int | None = None, prefix: str = "classwise"):
        from classrobust.attacks.specs import parse_attack_specs

        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be at least 1, got {every_n_epochs}")
        specs = parse_attack_specs(attack)
        if len(specs) != 1:
            raise ValueError(f"give one attack, got {attack!r}")
        self.loader, self.spec, self.eps = loader, specs, eps
        self.attack_name = specs[0][0]
        self.every_n_epochs, self.class_names, self.limit_batches = every_n_epochs, class_names, limit_batches
        self.prefix = prefix
        self.history: list[dict[str, Any]] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch + 1
        if epoch % self.every_n_epochs or trainer.sanity_checking:
            return
        out = self.evaluate(pl_module)
        names = self.class_names or [f"class_{k:03d}" for k in range(len(out["n"]))]
        values = {f"{self.prefix}/{self.attack_name}/robust_all": float(out["robust_all"]),
                  f"{self.prefix}/{self.attack_name}/worst_robust": float(out["worst_robust"]),
                  f"{self.prefix}/clean_all": float(out["clean_all"])}
        for k, name in enumerate(names):
            if int(out["n"][k]) == 0:
                continue
            values[f"{self.prefix}/{self.attack_name}/robust/{name}"] = float(out["robust"][k])
            values[f"{self.prefix}/clean/{name}"] = float(out["clean"][k])
            self.history.append({"epoch": epoch, "class_index": k, "class_name": name, "n": int(out["n"][k]),
                                 "clean": float(out["clean"][k]), "robust": float(out["robust"][k]),
                                 "attack": self.attack_name, "eps": self.eps})
        for logger in trainer.loggers:
            logger.log_metrics(values, step=trainer.global_step)

    def evaluate(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        """One class-wise evaluation of ``module`` now (its train/eval mode restored)."""
        from classrobust.attacks.specs import build_attacks

        attack = build_attacks(self.spec, module, eps=self.eps)[self.attack_name]
        num_classes = len(self.class_names) if self.class_names else None
        metric = None
        device = next(module.parameters()).device
        for i, (x, y) in enumerate(self.loader):
            if self.limit_batches is not None and i >= self.limit_batches:
                break
            x, y = x.to(device), y.to(device)
            if metric is None:
                if num_classes is None:  # the model's output width (eval mode: BatchNorm and one image)
                    with torch.no_grad(), model_mode(module, False):
                        num_classes = module(x[:1]).shape[1]
                metric = ClasswiseRobustAccuracy(attack, num_classes).to(device)
            metric.update(x, y)
        if metric is None:
            raise ValueError("the loader yielded no batches")
        return metric.compute()

    def history_frame(self):
        import pandas as pd

        return pd.DataFrame(self.history)
