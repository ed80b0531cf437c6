"""Madry et al. PGD adversarial training (arXiv:1706.06083): minimise CE on PGD examples."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from classrobust.attacks.pgd import PGD
from classrobust.training.methods.base import TrainingMethod, autocast, per_sample_budget, unwrap, weighted_mean


class PGDAT(TrainingMethod):
    name = "pgd-at"

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, seed: int,
             terms: dict[str, torch.Tensor] | None = None):
        """``terms`` (class-wise levers): per-sample ``weights`` and ``eps_scale``, each (B,)."""
        if eps > 0:
            eps_, alpha = per_sample_budget(eps, self.alpha, terms)
            attack = PGD(unwrap(model), eps=eps_, alpha=alpha, steps=self.attack_steps,
                         random_start=True, seed=seed, precision=self.precision,
                         mode="last")  # train on the max-loss search, not its first success
            x = attack(x, y)
        with autocast(x.device, self.precision):
            logits = model(x)
        ce = F.cross_entropy(logits.float(), y, reduction="none")
        return weighted_mean(ce, terms, "weights"), logits
