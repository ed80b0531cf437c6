"""AutoAttack (Croce & Hein, ICML 2020, arXiv:2003.01690), L-inf and L2.

Attacks run in sequence, each only on the points every earlier attack failed on; a point is
robust only if it survives all of them (the per-point worst case, not an average over attacks).

Versions (members at the reference implementation's settings, fra31/auto-attack):
  * ``standard``: APGD-CE (100 steps, 1 restart), APGD-T (9 targets x 100 steps), FAB-T
    (9 targets x 100 steps), Square (5,000 queries, p schedule not rescaled); for L-inf and L2.
  * ``fast``: APGD-CE and APGD-T only (not a standard evaluation).
  * ``rand``: APGD-CE and APGD-DLR, each averaging gradients over 20 draws (for randomised
    defences), as the reference's ``rand`` version.

No global option (``--steps``, ``--mode``) reaches the members. A run whose settings differ from
the reference's standard version (another version, an explicit ``autoattack:key=value``, bf16
arithmetic) records ``standard: false`` with the reasons, and every table and report says so.
Deviations of the members themselves from the reference are listed in docs/attacks.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from classrobust.attacks.apgd import APGD, APGDT
from classrobust.attacks.base import Attack
from classrobust.attacks.fab import FAB
from classrobust.attacks.square import Square
from classrobust.errors import UsageError

VERSIONS = ("standard", "fast", "rand")
#: the reference's standard settings; any other value makes a run non-standard
STANDARD = {"version": "standard", "steps": 100, "n_targets": 9, "n_queries": 5000, "eot": 20,
            "rescale_schedule": False, "precision": "fp32"}


@dataclass
class CascadeRecord:
    """What one :meth:`AutoAttack.cascade` call did: ``x_adv`` (N, C, H, W); ``breaker`` (N,) int64,
    the index (in the attack's members, in order) of the member that broke each point, -1 where none
    did (the members' marginal contributions); per member its wall ``seconds`` and how many
    ``points`` it attacked (0 for a member never reached): where the cascade spends its time."""

    x_adv: torch.Tensor
    breaker: torch.Tensor
    seconds: dict[str, float]
    points: dict[str, int]


class AutoAttack(Attack):
    """Per-point worst case over a fixed cascade of attacks (see the module docstring)."""

    name = "autoattack"
    #: the members keep their own (the reference's) settings: the global --steps does not reach them
    reserved_options = ("steps",)
    steps_sanity_check = False

    def __init__(self, model: nn.Module, *, eps: float, version: str = "standard", steps: int = 100,
                 n_targets: int = 9, n_queries: int = 5000, eot: int = 20, rescale_schedule: bool = False,
                 norm: str = "linf", seed: int = 0, precision: str = "fp32"):
        super().__init__(model, eps=eps, norm=norm, seed=seed, precision=precision, mode="best")
        if version not in VERSIONS:
            raise UsageError(f"autoattack version must be one of {', '.join(VERSIONS)}, got {version!r}")
        self.version = version
        settings = {"version": version, "steps": steps, "n_targets": n_targets, "n_queries": n_queries,
                    "eot": eot, "rescale_schedule": rescale_schedule, "precision": precision}
        self.deviations = [f"{key} {value}" for key, value in settings.items() if value != STANDARD[key]
                           and (key != "eot" or version == "rand")]
        common = dict(eps=eps, norm=norm, seed=seed, precision=precision, mode="best")
        if version == "rand":
            self.attacks: dict[str, Attack] = {
                "apgd-ce": APGD(model, steps=steps, loss="ce", eot=eot, **common),
                "apgd-dlr": APGD(model, steps=steps, loss="dlr", eot=eot, **common),
            }
            return
        self.attacks = {
            "apgd-ce": APGD(model, steps=steps, loss="ce", **common),
            "apgd-t": APGDT(model, steps=steps, n_targets=n_targets, **common),
        }
        if version == "standard":
            self.attacks["fab-t"] = FAB(model, steps=steps, targeted=True, n_targets=n_targets, **common)
            self.attacks["square"] = Square(model, n_queries=n_queries, rescale_schedule=rescale_schedule, **common)

    @property
    def standard(self) -> bool:
        """Whether this is the reference's standard AutoAttack (fp32, reference settings)."""
        return not self.deviations

    def config(self) -> dict[str, Any]:
        return {**super().config(), "version": self.version, "standard": self.standard,
                "deviations": self.deviations,
                "attacks": {name: a.config() for name, a in self.attacks.items()}}

    @property
    def members(self) -> list[str]:
        """The members' names, in the order they run (``CascadeRecord.breaker`` indexes them)."""
        return list(self.attacks)

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.cascade(x, y).x_adv

    def cascade(self, x: torch.Tensor, y: torch.Tensor) -> CascadeRecord:
        """Run the members in order, each on the points every earlier one failed on (see
        :class:`CascadeRecord`). x: (N, C, H, W) in [0, 1], y: (N,)."""
        seconds = dict.fromkeys(self.attacks, 0.0)
        points = dict.fromkeys(self.attacks, 0)
        out = x.clone()
        breaker = torch.full((len(x),), -1, dtype=torch.long, device=x.device)
        todo = torch.arange(len(x), device=x.device)
        for i, (name, attack) in enumerate(self.attacks.items()):
            if len(todo) == 0:
                break
            start = time.perf_counter()
            x_adv = attack(x[todo], y[todo])
            fooled = self.fooled(x_adv, y[todo])
            out[todo[fooled]] = x_adv[fooled]
            breaker[todo[fooled]] = i
            points[name] = len(todo)
            todo = todo[~fooled]  # boolean indexing waits for the device: the time below is complete
            seconds[name] = time.perf_counter() - start
        return CascadeRecord(out, breaker, seconds, points)
