"""Projected gradient descent (Madry et al. 2018, arXiv:1706.06083) and FGSM (Goodfellow et al. 2015)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from classrobust.attacks.base import Attack
from classrobust.attacks.losses import LossFn, get_loss
from classrobust.errors import UsageError


class PGD(Attack):
    """Untargeted PGD: ``steps`` ascent steps of size ``alpha`` on ``loss``, projected each time.

    Args:
        alpha: step size; default ``2.5 * eps / steps`` (Madry et al.'s rule, so the
            iterates can cross the ball and back whatever ``steps`` is).
        steps: number of iterations, >= 1.
        random_start: start from a uniform point of the threat model (per-sample, seeded).
        loss: ``"ce"``, ``"margin"`` or a callable ``(logits, y) -> (N,)`` to maximise.
    Other arguments: see :class:`Attack`. Returns the last iterate.
    """

    name = "pgd"

    def __init__(self, model: nn.Module, *, eps: float, alpha: float | None = None,
                 steps: int = 10, random_start: bool = True, norm: str = "linf",
                 loss: str | LossFn = "ce", seed: int = 0, precision: str = "fp32"):
        super().__init__(model, eps=eps, norm=norm, seed=seed, precision=precision)
        if int(steps) != steps or steps < 1:
            raise UsageError(f"steps must be an integer >= 1, got {steps}")
        self.steps = int(steps)
        self.alpha = float(alpha) if alpha is not None else 2.5 * self.eps / self.steps
        if not self.alpha >= 0:
            raise UsageError(f"alpha must be >= 0, got {alpha}")
        self.random_start = bool(random_start)
        self.loss_name = loss if isinstance(loss, str) else getattr(loss, "__name__", "custom")
        self.loss_fn = get_loss(loss)

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = x
        if self.random_start and self.eps > 0:
            x_adv = self.threat.project(x + self.threat.random_init(x, self.seed), x)
        for _ in range(self.steps):
            grad, _ = self.loss_grad(x_adv, y, self.loss_fn)
            x_adv = self.threat.project(self.threat.step(x_adv, grad, self.alpha), x)
        return x_adv

    def config(self) -> dict[str, Any]:
        return {**super().config(), "alpha": self.alpha, "steps": self.steps,
                "random_start": self.random_start, "loss": self.loss_name}


class FGSM(PGD):
    """Fast gradient sign method: one step of size ``eps`` from the clean point (L-inf)."""

    name = "fgsm"

    def __init__(self, model: nn.Module, *, eps: float, seed: int = 0, precision: str = "fp32"):
        super().__init__(model, eps=eps, alpha=eps, steps=1, random_start=False, norm="linf",
                         loss="ce", seed=seed, precision=precision)
