"""Temperature-PGD (Tian et al., KDD 2021, arXiv:2105.14240): PGD on the cross-entropy of softmax(logits / T)."""

from __future__ import annotations

from typing import Any

from torch import nn

from classrobust.attacks.losses import tempered_ce
from classrobust.attacks.pgd import PGD

#: The T with the lowest robust accuracy on validation images, averaged over the 15 runs of
#: experiments/quick/fashion-mnist.yaml (docs/findings.md, section 5; the grid's lowest value).
DEFAULT_TEMPERATURE = 0.25


class TemperaturePGD(PGD):
    """PGD whose loss is CE(softmax(logits / temperature), y); ``temperature=1`` is exactly PGD.

    A temperature above 1 softens the softmax, which keeps gradients alive on
    confidently classified (robust) samples; below 1 it sharpens it.
    """

    name = "temp-pgd"

    def __init__(self, model: nn.Module, *, eps: float, alpha: float | None = None,
                 steps: int = 10, temperature: float = DEFAULT_TEMPERATURE,
                 random_start: bool = True, norm: str = "linf", seed: int = 0,
                 precision: str = "fp32", mode: str = "best"):
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start,
                         norm=norm, loss=tempered_ce(temperature), seed=seed, precision=precision, mode=mode)
        self.temperature = float(temperature)
        self.loss_name = "tempered-ce"

    def config(self) -> dict[str, Any]:
        return {**super().config(), "temperature": self.temperature}
