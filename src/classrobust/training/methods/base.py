"""The training-method contract: ``loss(model, x, y, eps=..., seed=...) -> (loss, logits)``."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper: inner attacks must run on it, since
    a forward through the wrapper would arm a gradient all-reduce that an input-only backward
    never completes."""
    return getattr(model, "module", model)  # torch.compile'd modules are attacked compiled


def per_sample_budget(eps: float, alpha: float | None, terms: dict[str, torch.Tensor] | None):
    """(eps, alpha) for the inner attack: scalars, or per-sample tensors (B,) scaled by ``eps_scale``."""
    if terms is None or "eps_scale" not in terms or bool((terms["eps_scale"] == 1).all()):
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
    """

    name = "method"
    adversarial = True

    def __init__(self, *, attack_steps: int, alpha: float | None, precision: str):
        self.attack_steps = attack_steps
        self.alpha = alpha
        self.precision = precision

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, seed: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, C, H, W) in [0, 1], y: (B,) -> (scalar loss, logits (B, K) of the trained-on input)."""
        raise NotImplementedError
