"""Training configuration: one frozen dataclass, saved next to every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from classrobust.errors import UsageError
from classrobust.options import check_choice, coerce_fields, option
from classrobust.runtime import PRECISIONS
from classrobust.training.schedules import SCHEDULES

#: ``precision="auto"``: resolved by :func:`~classrobust.training.train` on the machine it runs on
AUTO = "auto"


#: which epoch's weights a run keeps: the last, the best average or the best worst-class
#: validation robust accuracy
SELECT = ("last", "avg", "worst-class")


#: settings that never change what a run computes: a run may resume (or be reused) with others
RESULT_NEUTRAL = ("workers",)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (with the code version and seed).

    ``eps``/``alpha`` default to the dataset's threat model when None; the inner
    attack's step is ``alpha`` if given, else ``2.5 * eps / attack_steps``.
    ``drop_classes`` names classes left out of training and validation (the model keeps
    all outputs; the remove-the-confused-class ablation uses it). ``device`` None means cuda
    if available, else cpu. ``classrobust train`` builds its options from these fields, so
    ``train(TrainConfig(...))`` and the command with the same options are the same run.
    """

    dataset: str = option("fashion-mnist", "dataset name, or folder:PATH")
    model: str = option("smallcnn", "model name, timm:ARCH (any timm architecture, untrained), or "
                                    "python:package.module:factory")
    model_kwargs: dict[str, Any] = option({}, "keyword arguments of the model builder", cli=False)
    method: str = option("pgd-at", "training method and its settings, e.g. 'trades:beta=1' (classrobust list)",
                         metavar="METHOD[:k=v,...]")
    classwise: str = option("", "class-wise levers, e.g. 'reweight:strength=2,fawa' (docs/defenses.md)",
                            metavar="LEVER[:k=v,...][,LEVER...]")
    eps: float | None = option(None, "perturbation budget of the inner attack (default: the dataset's)")
    alpha: float | None = option(None, "inner attack step size (default: 2.5 * eps / attack steps)")
    attack_steps: int = option(5, "inner PGD steps")
    eps_warmup_epochs: float = option(1.0, "ramp eps linearly from 0 over this many epochs")
    epochs: int = option(10, "training epochs")
    batch_size: int = option(128, "global batch size (split across torchrun processes)")
    lr: float = option(0.03, "peak learning rate (SGD, Nesterov momentum)")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(5e-4, "weight decay (not on biases and norm layers)")
    grad_clip: float | None = option(None, "clip the gradient's global L2 norm to this value before each step "
                                           "(default: no clipping); a remedy for loss spikes that diverge")
    schedule: str = option("piecewise", "learning-rate schedule (cyclic: the one-cycle schedule of fast AT)",
                           choices=SCHEDULES)
    lr_milestones: tuple[float, ...] = option((0.5, 0.75), "piecewise schedule: decay points, fractions of the run")
    lr_decay: float = option(0.1, "piecewise schedule: factor at each milestone")
    lr_warmup_epochs: float = option(0.25, "ramp the learning rate linearly from 0 over this many epochs")
    select: str = option("last", "keep the last epoch, or the best average or worst-class validation PGD epoch",
                         choices=SELECT)
    val_fraction: float = option(0.1, "fraction of the training split held out for validation")
    val_size: int = option(1000, "validation images evaluated per epoch (from the held-out split)")
    val_attack_steps: int = option(10, "PGD steps of the per-epoch validation attack")
    train_subset: int | None = option(None, "train on a class-stratified subset of N images")
    drop_classes: tuple[str, ...] = option((), "leave these classes out of training and validation "
                                               "(the model keeps all outputs)", metavar="NAME[,NAME]")
    seed: int = option(0, "seed of weight init, data order, splits and inner attacks")
    precision: str = option("auto", "autocast precision of training: bf16, fp32, or auto (bf16 where the hardware "
                                    "runs it natively, else fp32; the choice is printed and saved)",
                            choices=(AUTO, *PRECISIONS))
    compile: bool = option(False, "torch.compile the model (first steps are slow)")
    allow_tf32: bool = option(False, "allow TF32 in CUDA matmuls and convolutions of fp32 training "
                                     "(off: fp32 means fp32)")
    deterministic: bool = option(False, "deterministic kernels on GPUs (cuDNN deterministic, no cudnn.benchmark, "
                                        "cuBLAS workspace config; not with --compile): slower, resumable bitwise")
    device: str | None = option(None, "cpu, cuda, cuda:1, ... (default: cuda if available)")
    workers: int = option(0, "data-loading worker processes (decode folder datasets in parallel); the batches, "
                             "and so the weights, are the same for every value")

    def __post_init__(self):
        coerce_fields(self)
        checks = [
            (self.eps is None or self.eps >= 0, f"eps must be >= 0, got {self.eps}"),
            (self.alpha is None or self.alpha > 0, f"alpha must be > 0, got {self.alpha}"),
            (self.attack_steps >= 1, f"attack steps must be >= 1, got {self.attack_steps}"),
            (self.val_attack_steps >= 1, f"validation attack steps must be >= 1, got {self.val_attack_steps}"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.workers >= 0, f"workers must be >= 0, got {self.workers}"),
            (self.lr > 0, f"learning rate must be > 0, got {self.lr}"),
            (self.grad_clip is None or self.grad_clip > 0, f"grad clip must be > 0, got {self.grad_clip}"),
            (0 < self.val_fraction < 1, f"validation fraction must be in (0, 1), got {self.val_fraction}"),
            (self.val_size >= 1, f"validation size must be >= 1, got {self.val_size}"),
            (self.eps_warmup_epochs >= 0, "eps warm-up epochs must be >= 0"),
            (self.train_subset is None or self.train_subset >= 1,
             f"train subset must be >= 1, got {self.train_subset}"),
            (self.lr_warmup_epochs >= 0, "learning-rate warm-up epochs must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        if self.deterministic and self.compile:
            raise UsageError("--deterministic and --compile do not combine (compiled kernels are not "
                             "guaranteed deterministic)")
        for name in ("schedule", "select", "precision"):
            check_choice(TrainConfig, name, getattr(self, name))
        from classrobust.training.methods import METHODS, canonical_method

        # an unknown method or setting fails now, with the registry's suggestion, not at training; one
        # spelling per method, so ``trades:beta=6`` and ``trades`` are one run
        object.__setattr__(self, "method", canonical_method(self.method))
        if self.classwise:
            from classrobust.defenses.levers import check_levers

            check_levers(self.classwise, method=self.method_name, select=self.select, epochs=self.epochs,
                         supports_levers=METHODS.get(self.method_name).builder.supports_levers)

    @property
    def method_name(self) -> str:
        """The registered method of :attr:`method` (``trades`` of ``trades:beta=1``)."""
        return self.method.partition(":")[0]

    @property
    def method_kwargs(self) -> dict[str, Any]:
        """The settings :attr:`method` gives its method (``{"beta": 1.0}``)."""
        from classrobust.training.methods import parse_method

        return parse_method(self.method)[1]

    def differences(self, other: dict[str, Any]) -> list[str]:
        """Keys whose values differ from ``other`` (a saved config), for a refused resume. A key the
        saved config lacks (saved before the option existed) counts as its default."""
        mine = self.to_dict()
        other = upgrade_saved_config(other)
        defaults = TrainConfig().to_dict()  # in the saved (to_dict) form
        return sorted(k for k in set(mine) | set(other)
                      if k not in RESULT_NEUTRAL and mine.get(k) != other.get(k, defaults.get(k)))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        d["drop_classes"] = list(self.drop_classes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        d = upgrade_saved_config(d)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UsageError(f"unknown training config keys: {', '.join(unknown)}")
        for key in ("lr_milestones", "drop_classes"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


def upgrade_saved_config(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config in today's form. Configs saved before methods took their settings in the spec
    carry ``beta`` as a field: it moves into the method (``trades`` with beta 1 -> ``trades:beta=1``),
    is dropped for methods that have none, and a default value leaves the spec as it was."""
    d = dict(saved)
    if "beta" not in d:
        return d
    beta = d.pop("beta")
    from classrobust.training.methods import METHODS, canonical_method

    method = str(d.get("method", "pgd-at"))
    name = method.partition(":")[0]
    if name in METHODS and "beta" in METHODS.valid_kwargs(name) and "beta=" not in method:
        d["method"] = canonical_method(f"{method}{',' if ':' in method else ':'}beta={beta}")
    return d
