"""Training methods: one file each, one registry line each. A method is named by a spec, as attacks
and levers are: ``pgd-at``, ``trades:beta=1``."""

from __future__ import annotations

from typing import Any

from classrobust.errors import UsageError
from classrobust.registry import Registry, parse_specs
from classrobust.training.methods.base import TrainingMethod
from classrobust.training.methods.fgsm_rs import FGSMRS
from classrobust.training.methods.mart import MART
from classrobust.training.methods.pgd_at import PGDAT
from classrobust.training.methods.standard import Standard
from classrobust.training.methods.trades import TRADES

#: the loop passes the inner attack's settings itself; a spec sets the rest (``beta``)
METHODS: Registry[TrainingMethod] = Registry("training method", internal=("attack_steps", "alpha", "precision"))
METHODS.register("standard", summary="standard training on clean images (baseline)")(Standard)
METHODS.register("pgd-at", summary="Madry PGD adversarial training (CE on PGD examples)")(PGDAT)
METHODS.register("trades", summary="TRADES: CE(clean) + beta * KL(clean || adversarial)")(TRADES)
METHODS.register("mart", summary="MART: boosted CE + misclassification-weighted KL")(MART)
METHODS.register("fgsm-rs", summary="fast AT: FGSM from a random start, step 1.25 eps (use --schedule cyclic)")(FGSMRS)



def parse_method(spec: str) -> tuple[str, dict[str, Any]]:
    """``"trades:beta=1"`` -> ``("trades", {"beta": 1.0})``: one registered method and its settings,
    each checked against the method's parameters and converted to its type."""
    specs = parse_specs(str(spec), METHODS)
    if len(specs) != 1:
        raise UsageError(f"a training method spec names one method, got {spec!r}")
    name, kwargs = specs[0]
    METHODS.check_kwargs(name, kwargs)
    return name, kwargs


def canonical_method(spec: str) -> str:
    """The one spelling of a method spec: its name, then the settings that differ from the
    method's defaults in parameter order (``trades:beta=6.0`` -> ``trades``), so two spellings of one
    method are one run."""
    name, kwargs = parse_method(spec)
    defaults = {key: default for key, _, default in METHODS.parameters(name)}
    changed = [f"{key}={kwargs[key]:g}" if isinstance(kwargs[key], float) else f"{key}={kwargs[key]}"
               for key in defaults if key in kwargs and kwargs[key] != defaults[key]]
    return f"{name}:{','.join(changed)}" if changed else name


__all__ = ["METHODS", "parse_method", "canonical_method", "TrainingMethod", "PGDAT", "Standard", "TRADES", "MART", "FGSMRS"]
