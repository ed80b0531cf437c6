"""Training methods: one file each, one registry line each."""

from classrobust.registry import Registry
from classrobust.training.methods.base import TrainingMethod
from classrobust.training.methods.pgd_at import PGDAT
from classrobust.training.methods.standard import Standard

METHODS: Registry[TrainingMethod] = Registry("training method")
METHODS.register("pgd-at", summary="Madry PGD adversarial training (CE on PGD examples)")(PGDAT)
METHODS.register("standard", summary="standard training on clean images (baseline)")(Standard)

__all__ = ["METHODS", "TrainingMethod", "PGDAT", "Standard"]
