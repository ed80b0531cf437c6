"""Attacks: one base class (:class:`Attack`), one registry (``ATTACKS``), CLI specs.

``create_attack("pgd", model, eps=0.1, steps=20)`` builds a registered attack;
``parse_attack_specs("fgsm,pgd:steps=50,alpha=0.005")`` turns a CLI string into
``[(name, overrides)]``. Adding an attack is one file plus one registry line.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from classrobust.attacks.apgd import APGD, APGDT
from classrobust.attacks.autoattack import AutoAttack
from classrobust.attacks.base import MODES, Attack
from classrobust.attacks.fab import FAB
from classrobust.attacks.fmn import FMN
from classrobust.attacks.mindist import MinDist
from classrobust.attacks.minimal import MinimalNormAttack
from classrobust.attacks.pgd import CW, FGSM, PGD
from classrobust.attacks.square import Square
from classrobust.attacks.temperature_pgd import DEFAULT_TEMPERATURE, TemperaturePGD
from classrobust.attacks.specs import attack_kwargs, build_attacks, parse_attack_specs
from classrobust.registry import Registry
from classrobust.runtime import PRECISIONS

ATTACKS: Registry[Attack] = Registry("attack", internal=("model",))

ATTACKS.register("fgsm", summary="FGSM, one signed-gradient step of size eps (L-inf)")(FGSM)
ATTACKS.register("pgd", summary="PGD-20 on cross-entropy, L-inf, random start",
                 defaults={"steps": 20})(PGD)
ATTACKS.register("pgd-l2", summary="PGD-20 on cross-entropy, L2, random start",
                 defaults={"steps": 20, "norm": "l2"})(PGD)
ATTACKS.register("cw", summary="CW-inf: PGD-20 on the Carlini-Wagner margin loss, L-inf")(CW)
ATTACKS.register("temp-pgd", summary="Temperature-PGD-20: PGD on CE of softmax(logits / T)",
                 defaults={"steps": 20})(TemperaturePGD)
ATTACKS.register("apgd-ce", summary="APGD-100 on cross-entropy (Croce & Hein 2020)",
                 defaults={"loss": "ce"})(APGD)
ATTACKS.register("apgd-dlr", summary="APGD-100 on the DLR loss", defaults={"loss": "dlr"})(APGD)
ATTACKS.register("apgd-t", summary="targeted APGD-100, targeted DLR over the top-9 other classes")(APGDT)
ATTACKS.register("square", summary="Square attack, 5000 queries, gradient-free (L-inf; norm=l2 for L2)")(Square)
ATTACKS.register("fab", summary="FAB, minimal-norm, untargeted, 100 steps; records each point's distance")(FAB)
ATTACKS.register("fab-t", summary="FAB-T, minimal-norm, targeted over the top-9 other classes, 100 steps",
                 defaults={"targeted": True})(FAB)
ATTACKS.register("fmn", summary="Fast Minimum-Norm, 100 steps; records each point's distance "
                 "(robustness curves)")(FMN)
ATTACKS.register("mindist", summary="the tightest curves: FAB-T on 5 targets, PGD at eps, then a PGD bisection below each "
                 "point's distance; records each point's distance")(MinDist)
ATTACKS.register("autoattack", summary="standard AutoAttack, per-point worst case: APGD-CE, APGD-T, FAB-T, "
                 "Square (version=fast: APGD only; version=rand: EOT)")(AutoAttack)


def create_attack(name: str, model: nn.Module, **kwargs: Any) -> Attack:
    """Build registered attack ``name`` on ``model``; unknown keyword arguments are an error."""
    attack = ATTACKS.build(name, model, **kwargs)
    attack.name = name
    return attack


__all__ = ["ATTACKS", "Attack", "FGSM", "PGD", "CW", "TemperaturePGD", "APGD", "APGDT", "Square",
           "AutoAttack", "FAB", "FMN", "MinDist", "MinimalNormAttack", "DEFAULT_TEMPERATURE", "PRECISIONS", "MODES", "create_attack",
           "parse_attack_specs", "build_attacks", "attack_kwargs"]
