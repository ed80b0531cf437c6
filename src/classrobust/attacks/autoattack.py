"""An AutoAttack-style ensemble (Croce & Hein, ICML 2020, arXiv:2003.01690).

Attacks run in sequence, each only on the points every earlier attack failed
on; a point is robust only if it survives all of them (the per-point worst
case, not an average over attacks).

Versions:
  * ``standard``: APGD-CE (100 steps), APGD-T (9 targets x 100 steps), Square
    (5,000 queries; L-inf only). FAB-T, the fourth attack of the original
    standard version, is not implemented here; see docs/attacks.md.
  * ``fast``: APGD-CE and APGD-T only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from classrobust.attacks.apgd import APGD, APGDT
from classrobust.attacks.base import Attack
from classrobust.attacks.square import Square
from classrobust.errors import UsageError

VERSIONS = ("standard", "fast")


class AutoAttack(Attack):
    """Per-point worst case over a fixed cascade of attacks."""

    name = "autoattack"
    #: the members keep their own (the reference's) settings: the global --steps does not reach them
    reserved_options = ("steps",)

    def __init__(self, model: nn.Module, *, eps: float, version: str = "standard", steps: int = 100,
                 n_targets: int = 9, n_queries: int = 5000, norm: str = "linf", seed: int = 0,
                 precision: str = "fp32"):
        super().__init__(model, eps=eps, norm=norm, seed=seed, precision=precision, mode="best")
        if version not in VERSIONS:
            raise UsageError(f"autoattack version must be one of {', '.join(VERSIONS)}, got {version!r}")
        self.version = version
        common = dict(eps=eps, norm=norm, seed=seed, precision=precision, mode="best")
        self.attacks: dict[str, Attack] = {
            "apgd-ce": APGD(model, steps=steps, loss="ce", **common),
            "apgd-t": APGDT(model, steps=steps, n_targets=n_targets, **common),
        }
        if version == "standard" and norm == "linf":
            self.attacks["square"] = Square(model, n_queries=n_queries, **common)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "version": self.version,
                "attacks": {name: a.config() for name, a in self.attacks.items()}}

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        todo = torch.arange(len(x), device=x.device)
        for name, attack in self.attacks.items():
            if len(todo) == 0:
                break
            x_adv = attack(x[todo], y[todo])
            fooled = self.fooled(x_adv, y[todo])
            out[todo[fooled]] = x_adv[fooled]
            todo = todo[~fooled]
        return out
