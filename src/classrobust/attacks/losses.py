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
    """Cross-entropy of softmax(logits / T) (Tian et al. 2021's Temperature-PGD loss), in a form
    that does not saturate in fp32.

    With u = logsumexp_{j != y}(z_j / T) - z_y / T, CE(z / T, y) = softplus(u): a strictly increasing
    function of u, so u ranks iterates exactly as the CE does, and its gradient is the CE's divided
    by the per-sample factor sigmoid(u) > 0. Sign steps (L-inf) and normalised steps (L2) along
    either are therefore the same, except where fp32 underflows: once the true class wins by more
    than about 17 * T in logits, the CE's gradient loses the true-class term, and above about 41 * T
    (104 * T for the whole softmax) it is exactly zero, so PGD on the plain CE stalls on the most
    confident points; u's gradient never vanishes (the softmax over the other classes sums to 1).
    """
    if not temperature > 0:
        raise UsageError(f"temperature must be > 0, got {temperature}")

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        scaled = logits / temperature
        true = scaled.gather(1, y[:, None]).squeeze(1)
        others = scaled.scatter(1, y[:, None], float("-inf")).logsumexp(dim=1)
        return others - true

    return loss


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini-Wagner margin (N,): the largest other logit minus the true logit (> 0: misclassified)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return other - true


def dlr(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of logits ratio (Croce & Hein 2020, arXiv:2003.01690), untargeted.

    ``-(z_y - max_{i != y} z_i) / (z_(1) - z_(3))`` with z_(k) the k-th largest logit:
    invariant to shifting and rescaling the logits. Needs K >= 3.
    """
    ordered, order = logits.sort(dim=1, descending=True)
    true = logits.gather(1, y[:, None]).squeeze(1)
    top_is_true = order[:, 0] == y
    other = torch.where(top_is_true, ordered[:, 1], ordered[:, 0])
    return -(true - other) / (ordered[:, 0] - ordered[:, 2] + 1e-12)


def targeted_dlr(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR: ``-(z_y - z_t) / (z_(1) - (z_(3) + z_(4)) / 2)``; needs K >= 4."""
    ordered = logits.sort(dim=1, descending=True).values
    true = logits.gather(1, y[:, None]).squeeze(1)
    tgt = logits.gather(1, target[:, None]).squeeze(1)
    return -(true - tgt) / (ordered[:, 0] - 0.5 * (ordered[:, 2] + ordered[:, 3]) + 1e-12)


LOSSES: dict[str, LossFn] = {"ce": ce, "margin": margin, "dlr": dlr}


def get_loss(name: str | LossFn) -> LossFn:
    if callable(name):
        return name
    if name not in LOSSES:
        raise UsageError(f"unknown attack loss {name!r}; choose one of: {', '.join(LOSSES)}")
    return LOSSES[name]
