"""FMN, Fast Minimum-Norm attack (Pintor et al., NeurIPS 2021, arXiv:2102.12827), L-inf and L2.

A minimal-norm attack that alternates two updates: a normalised gradient step that lowers the
logit margin (true class minus the best other), and an adaptive norm budget the point is
projected into: while the point is adversarial the budget shrinks by a factor (1 - gamma), when it
is not the budget grows by (1 + gamma), and before the first adversarial point the budget is the
linear estimate of the distance to the boundary (current norm + margin / dual norm of the
gradient). The step size alpha and gamma follow cosine schedules down to 1/100 and gamma_final.
Written from the paper; no randomness (``seed`` is recorded only).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from classrobust.attacks.balls import make_ball
from classrobust.attacks.losses import margin
from classrobust.attacks.minimal import MinimalNormAttack
from classrobust.attacks.pgd import check_steps
from classrobust.errors import UsageError


def cosine(start: float, end: float, k: int, steps: int) -> float:
    """Cosine annealing from ``start`` (k = 0) to ``end`` (k = steps)."""
    return end + (start - end) * (1 + math.cos(math.pi * k / steps)) / 2


class FMN(MinimalNormAttack):
    """``x_min, dist = FMN(model, eps=8/255).minimal(x, y)``; ``FMN(...)(x, y)`` attacks at radius eps.

    Args:
        steps: iterations (every sample takes all of them).
        alpha_init: initial step, as an L2 length in pixel units (normalised-gradient steps for
            both norms); annealed to ``alpha_init / 100``.
        gamma_init, gamma_final: the budget's shrink/grow factor, annealed.
    """

    name = "fmn"

    def __init__(self, model: nn.Module, *, eps: float, steps: int = 100, alpha_init: float = 1.0,
                 gamma_init: float = 0.05, gamma_final: float = 0.001, norm: str = "linf", seed: int = 0,
                 precision: str = "fp32", mode: str = "best"):
        super().__init__(model, eps=eps, norm=norm, seed=seed, precision=precision, mode=mode)
        self.steps = check_steps(steps)
        if not alpha_init > 0:
            raise UsageError(f"alpha_init must be > 0, got {alpha_init}")
        if not 0 < gamma_final <= gamma_init < 1:
            raise UsageError(f"need 0 < gamma_final <= gamma_init < 1, got {gamma_final}, {gamma_init}")
        self.alpha_init, self.gamma_init, self.gamma_final = float(alpha_init), float(gamma_init), float(gamma_final)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "steps": self.steps, "alpha_init": self.alpha_init,
                "gamma_init": self.gamma_init, "gamma_final": self.gamma_final}

    def search(self, x: torch.Tensor, y: torch.Tensor, *, early_stop: bool
               ) -> tuple[torch.Tensor, torch.Tensor]:
        best = self.start_tracking(x, y)
        delta = torch.zeros_like(x)
        budget = torch.full((len(x),), float("inf"), device=x.device, dtype=x.dtype)
        found = best.distance < float("inf")
        for k in range(self.steps):
            alpha = cosine(self.alpha_init, self.alpha_init / 100, k, self.steps)
            gamma = cosine(self.gamma_init, self.gamma_final, k, self.steps)
            # the loss lowered is the margin z_y - max other (< 0: adversarial)
            g, logits = self.loss_grad(x + delta, y, lambda lg, yy: -margin(lg, yy))
            with torch.no_grad():
                adversarial = best.offer(x + delta, None, logits)
                found |= adversarial
                size = self.ball.distance(x + delta, x)
                boundary = size + (-margin(logits, y)).clamp_min(0) / self.ball.dual_norm(g).clamp_min(1e-12)
                budget = torch.where(adversarial, torch.minimum(budget * (1 - gamma), best.distance),
                                     torch.where(found, budget * (1 + gamma), boundary))
                step = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
                # into each sample's current budget ball, then the image box
                ball = make_ball(self.norm, budget.view(-1, *([1] * (x.dim() - 1))))
                delta = ball.project(x + delta - alpha * g / step, x) - x
        with torch.no_grad():
            best.offer(x + delta)
        return best.points, best.distance
