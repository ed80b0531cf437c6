"""Madry et al. PGD adversarial training (arXiv:1706.06083): minimise CE on PGD examples."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from classrobust.runtime import autocast
from classrobust.training.methods.base import TrainingMethod, weighted_mean


class PGDAT(TrainingMethod):
    name = "pgd-at"
    supports_levers = True

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, seed: int,
             terms: dict[str, torch.Tensor] | None = None):
        """``terms`` (class-wise levers): per-sample ``weights`` and ``eps_scale``, each (B,)."""
        if eps > 0:
            x = self.inner_attack(model, x, y, eps=eps, seed=seed, terms=terms)
        with autocast(x.device, self.precision):
            logits = model(x)
        ce = F.cross_entropy(logits.float(), y, reduction="none")
        return weighted_mean(ce, terms, "weights"), logits
