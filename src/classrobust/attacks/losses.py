"""Per-sample attack losses: ``loss(logits: (N, K) float, y: (N,)) -> (N,)``, to be maximised."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from classrobust.errors import UsageError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of softmax(logits)."""
    return F.cross_entropy(logits, y, reduction="none")


def tempered_ce(temperature: float) -> LossFn:
    """Cross-entropy of softmax(logits / T) (Tian et al. 2021's Temperature-PGD loss)."""
    if not temperature > 0:
        raise UsageError(f"temperature must be > 0, got {temperature}")

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits / temperature, y, reduction="none")

    return loss


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini-Wagner margin: the largest other logit minus the true logit."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return other - true


LOSSES: dict[str, LossFn] = {"ce": ce, "margin": margin}


def get_loss(name: str | LossFn) -> LossFn:
    if callable(name):
        return name
    if name not in LOSSES:
        raise UsageError(f"unknown attack loss {name!r}; choose one of: {', '.join(LOSSES)}")
    return LOSSES[name]
