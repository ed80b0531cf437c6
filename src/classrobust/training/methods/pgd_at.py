"""Madry et al. PGD adversarial training (arXiv:1706.06083): minimise CE on PGD examples."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from classrobust.attacks.pgd import PGD
from classrobust.training.methods.base import TrainingMethod, autocast, unwrap


class PGDAT(TrainingMethod):
    name = "pgd-at"

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, seed: int):
        if eps > 0:
            attack = PGD(unwrap(model), eps=eps, alpha=self.alpha, steps=self.attack_steps,
                         random_start=True, seed=seed, precision=self.precision,
                         mode="last")  # train on the max-loss search, not its first success
            x = attack(x, y)
        with autocast(x.device, self.precision):
            logits = model(x)
        return F.cross_entropy(logits.float(), y), logits
