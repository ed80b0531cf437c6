"""TRADES (Zhang et al., ICML 2019, arXiv:1901.08573): CE on clean inputs plus beta times the
KL divergence between the clean and the adversarial prediction, the adversary maximising that KL."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from classrobust.errors import UsageError
from classrobust.runtime import autocast, model_mode
from classrobust.training.methods.base import TrainingMethod, unwrap, weighted_mean


def kl_per_sample(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row from log-probabilities: (N, K) x (N, K) -> (N,)."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def trades_loss(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float,
                terms: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """mean CE(clean) + beta * mean KL(p_clean || p_adv); class-wise ``terms`` weight the CE
    (``weights``) and the KL (``reg_weights``, a per-class beta) per sample."""
    log_clean = F.log_softmax(logits_clean.float(), dim=1)
    log_adv = F.log_softmax(logits_adv.float(), dim=1)
    ce = F.nll_loss(log_clean, y, reduction="none")
    return (weighted_mean(ce, terms, "weights")
            + beta * weighted_mean(kl_per_sample(log_clean, log_adv), terms, "reg_weights"))


class TRADES(TrainingMethod):
    name = "trades"
    supports_levers = True

    def __init__(self, *, attack_steps: int, alpha: float | None, precision: str, beta: float = 6.0):
        super().__init__(attack_steps=attack_steps, alpha=alpha, precision=precision)
        if beta < 0:
            raise UsageError(f"{self.name}: beta must be >= 0, got {beta}")
        self.beta = beta

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, seed: int,
             terms: dict[str, torch.Tensor] | None = None):
        if eps > 0:
            with torch.no_grad(), model_mode(unwrap(model), False):
                log_clean = F.log_softmax(unwrap(model)(x).float(), dim=1)

            def kl_to_clean(logits, _y):  # the adversary's objective: move away from the clean prediction
                return kl_per_sample(log_clean, F.log_softmax(logits, dim=1))

            # a random start is needed: at x itself the KL and its gradient are zero
            x_adv = self.inner_attack(model, x, y, eps=eps, seed=seed, terms=terms, loss=kl_to_clean)
        else:
            x_adv = x
        with autocast(x.device, self.precision):  # two passes: BatchNorm must not mix clean and adversarial
            logits_clean, logits_adv = model(x), model(x_adv)
        return trades_loss(logits_clean, logits_adv, y, self.beta, terms), logits_adv
