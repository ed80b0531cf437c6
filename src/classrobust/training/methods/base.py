"""The training-method contract: ``loss(model, x, y, eps=..., seed=..., terms=...) -> (loss, logits)``."""

from __future__ import annotations

import torch
from torch import nn

from classrobust.attacks.losses import LossFn
from classrobust.attacks.pgd import PGD


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper: inner attacks must run on it, since
    a forward through the wrapper would arm a gradient all-reduce that an input-only backward
    never completes."""
    return getattr(model, "module", model)  # torch.compile'd modules are attacked compiled


def per_sample_budget(eps: float, alpha: float | None, terms: dict[str, torch.Tensor] | None):
    """(eps, alpha) for the inner attack: scalars, or per-sample tensors (B,) scaled by ``eps_scale``."""
    if terms is None or "eps_scale" not in terms:  # the loop leaves out an all-ones scale
        return eps, alpha
    scale = terms["eps_scale"]
    # the budget stays a valid L-inf radius; the step scales with it (Madry's rule or the given alpha)
    eps_t = (eps * scale).clamp(max=1.0)
    return eps_t, (alpha * scale if alpha is not None else None)


def weighted_mean(per_sample: torch.Tensor, terms: dict[str, torch.Tensor] | None, key: str) -> torch.Tensor:
    """Mean of a per-sample loss (B,), each sample weighted by ``terms[key]`` when given."""
    if terms is None or key not in terms:
        return per_sample.mean()
    return (per_sample * terms[key]).mean()


class TrainingMethod:
    """One objective on the shared training loop.

    The loop owns optimisation, schedules, logging and checkpoints; a method
    only says what loss a batch gives. ``model`` is in train mode on entry and
    must be on exit; inner attacks switch to eval mode themselves.

    ``supports_levers``: whether the class-wise levers (:mod:`classrobust.defenses.levers`)
    can act on this objective, i.e. whether :meth:`loss` honours per-sample ``terms``.
    """

    name = "method"
    supports_levers = False

    def __init__(self, *, attack_steps: int, alpha: float | None, precision: str):
        self.attack_steps = attack_steps
        self.alpha = alpha
        self.precision = precision

    def inner_attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, seed: int,
                     terms: dict[str, torch.Tensor] | None = None, loss: str | LossFn = "ce",
                     alpha: float | None = None, steps: int | None = None) -> torch.Tensor:
        """The training-time PGD example of every method: random start, the search's last iterate
        (``mode="last"``: train on the max-loss search, not its first success), on the unwrapped
        network, with per-sample budgets when a lever scales them. x: (B, C, H, W) in [0, 1]."""
        eps_, alpha_ = per_sample_budget(eps, self.alpha if alpha is None else alpha, terms)
        attack = PGD(unwrap(model), eps=eps_, alpha=alpha_, steps=steps or self.attack_steps, random_start=True,
                     loss=loss, seed=seed, precision=self.precision, mode="last")
        return attack(x, y, validate=False)  # the loop checks the data once and the loss every few steps

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, seed: int,
             terms: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, C, H, W) in [0, 1], y: (B,) -> (scalar loss, logits (B, K) of the trained-on input).

        ``terms`` (only for methods that support levers): per-sample ``weights``, ``reg_weights``
        and ``eps_scale``, each (B,)."""
        raise NotImplementedError
