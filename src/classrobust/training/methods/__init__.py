"""Training methods: one file each, one registry line each."""

from classrobust.registry import Registry
from classrobust.training.methods.base import TrainingMethod
from classrobust.training.methods.fgsm_rs import FGSMRS
from classrobust.training.methods.mart import MART
from classrobust.training.methods.pgd_at import PGDAT
from classrobust.training.methods.standard import Standard
from classrobust.training.methods.trades import TRADES

METHODS: Registry[TrainingMethod] = Registry("training method")
METHODS.register("standard", summary="standard training on clean images (baseline)")(Standard)
METHODS.register("pgd-at", summary="Madry PGD adversarial training (CE on PGD examples)")(PGDAT)
METHODS.register("trades", summary="TRADES: CE(clean) + beta * KL(clean || adversarial)")(TRADES)
METHODS.register("mart", summary="MART: boosted CE + misclassification-weighted KL")(MART)
METHODS.register("fgsm-rs", summary="fast AT: FGSM from a random start, step 1.25 eps (use --schedule cyclic)")(FGSMRS)

__all__ = ["METHODS", "TrainingMethod", "PGDAT", "Standard", "TRADES", "MART", "FGSMRS"]
