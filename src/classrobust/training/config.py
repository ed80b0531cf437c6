"""Training configuration: one frozen dataclass, saved next to every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from classrobust.errors import UsageError


#: which epoch's weights a run keeps: the last, the best average or the best worst-class
#: validation robust accuracy
SELECT = ("last", "avg", "worst-class")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (with the code version and seed).

    ``eps``/``alpha`` default to the dataset's threat model when None; the inner
    attack's step is ``alpha`` if given, else ``2.5 * eps / attack_steps``.
    ``drop_classes`` names classes left out of training and validation (the model keeps
    all outputs; the remove-the-confused-class ablation uses it).
    """

    dataset: str = "fashion-mnist"
    model: str = "smallcnn"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    method: str = "pgd-at"
    classwise: str = ""
    beta: float = 6.0
    eps: float | None = None
    alpha: float | None = None
    attack_steps: int = 5
    eps_warmup_epochs: float = 0.0
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.03
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "piecewise"
    lr_milestones: tuple[float, ...] = (0.5, 0.75)
    lr_decay: float = 0.1
    lr_warmup_epochs: float = 0.25
    select: str = "last"
    val_fraction: float = 0.1
    val_size: int = 1000
    val_attack_steps: int = 10
    train_subset: int | None = None
    drop_classes: tuple[str, ...] = ()
    seed: int = 0
    precision: str = "bf16"
    compile: bool = False
    device: str = "cpu"

    def __post_init__(self):
        checks = [
            (self.eps is None or self.eps >= 0, f"eps must be >= 0, got {self.eps}"),
            (self.alpha is None or self.alpha > 0, f"alpha must be > 0, got {self.alpha}"),
            (self.attack_steps >= 1, f"attack steps must be >= 1, got {self.attack_steps}"),
            (self.val_attack_steps >= 1, f"validation attack steps must be >= 1, got {self.val_attack_steps}"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"learning rate must be > 0, got {self.lr}"),
            (0 < self.val_fraction < 1, f"validation fraction must be in (0, 1), got {self.val_fraction}"),
            (self.val_size >= 1, f"validation size must be >= 1, got {self.val_size}"),
            (self.eps_warmup_epochs >= 0, "eps warm-up epochs must be >= 0"),
            (self.train_subset is None or self.train_subset >= 1,
             f"train subset must be >= 1, got {self.train_subset}"),
            (self.precision in ("fp32", "bf16"), f"precision must be fp32 or bf16, got {self.precision!r}"),
            (self.select in SELECT, f"select must be one of {', '.join(SELECT)}, got {self.select!r}"),
            (self.beta >= 0, f"beta must be >= 0, got {self.beta}"),
            (self.lr_warmup_epochs >= 0, "learning-rate warm-up epochs must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        if self.classwise:
            from classrobust.training.classwise import check_levers

            check_levers(self.classwise, self.method, self.select)

    def differences(self, other: dict[str, Any]) -> list[str]:
        """Keys whose values differ from ``other`` (a saved config), for a refused resume."""
        mine = self.to_dict()
        return sorted(k for k in set(mine) | set(other) if mine.get(k) != other.get(k))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        d["drop_classes"] = list(self.drop_classes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UsageError(f"unknown training config keys: {', '.join(unknown)}")
        d = dict(d)
        for key in ("lr_milestones", "drop_classes"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)
