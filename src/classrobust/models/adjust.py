"""Per-class logit adjustment inside the model, so every attack sees (and attacks) it."""

from __future__ import annotations

import torch
from torch import nn


class ClassLogitAdjust(nn.Module):
    """``model(x) -> model(x) / temperatures + offsets``, per class.

    x: (N, C, H, W) in [0, 1] -> logits (N, K). ``offsets`` (K,) and ``temperatures`` (K,) are
    buffers: saved with the weights, moved with ``.to()``, never trained by the optimiser.
    Identity at ``offsets = 0, temperatures = 1``.
    """

    def __init__(self, model: nn.Module, num_classes: int):
        super().__init__()
        self.model = model
        self.register_buffer("offsets", torch.zeros(num_classes))
        self.register_buffer("temperatures", torch.ones(num_classes))

    def set(self, offsets, temperatures=None) -> "ClassLogitAdjust":
        self.offsets.copy_(torch.as_tensor(offsets, dtype=torch.float32))
        if temperatures is not None:
            t = torch.as_tensor(temperatures, dtype=torch.float32)
            if not bool((t > 0).all()):
                raise ValueError("temperatures must be > 0")
            self.temperatures.copy_(t)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        return logits / self.temperatures.to(logits.dtype) + self.offsets.to(logits.dtype)
