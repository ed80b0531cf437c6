"""MART (Wang et al., ICLR 2020): boosted CE on adversarial examples plus a KL term weighted by
how misclassified each clean example is, ``beta * KL(p_clean || p_adv) * (1 - p_clean[y])``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from classrobust.errors import UsageError
from classrobust.runtime import autocast
from classrobust.training.methods.base import TrainingMethod
from classrobust.training.methods.trades import kl_per_sample


def mart_loss(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """mean[ -log p_adv[y] - log(1 - max_{k != y} p_adv[k]) ]
    + beta * mean[ KL(p_clean || p_adv) * (1 - p_clean[y]) ]."""
    log_adv = F.log_softmax(logits_adv.float(), dim=1)
    p_adv = log_adv.exp()
    other = p_adv.scatter(1, y[:, None], -1.0).amax(dim=1)
    bce = -log_adv.gather(1, y[:, None]).squeeze(1) - torch.log1p(-other.clamp(max=1 - 1e-12))
    log_clean = F.log_softmax(logits_clean.float(), dim=1)
    true_clean = log_clean.exp().gather(1, y[:, None]).squeeze(1)
    return bce.mean() + beta * (kl_per_sample(log_clean, log_adv) * (1 - true_clean)).mean()


class MART(TrainingMethod):
    name = "mart"

    def __init__(self, *, attack_steps: int, alpha: float | None, precision: str, beta: float = 6.0):
        super().__init__(attack_steps=attack_steps, alpha=alpha, precision=precision)
        if beta < 0:
            raise UsageError(f"{self.name}: beta must be >= 0, got {beta}")
        self.beta = beta

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, seed: int, terms=None):
        x_adv = x
        if eps > 0:
            x_adv = self.inner_attack(model, x, y, eps=eps, seed=seed)
        with autocast(x.device, self.precision):  # two passes: BatchNorm must not mix clean and adversarial
            logits_clean, logits_adv = model(x), model(x_adv)
        return mart_loss(logits_clean, logits_adv, y, self.beta), logits_adv
