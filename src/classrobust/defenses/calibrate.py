"""Inference-phase defense: per-class logit offsets (and optionally temperatures) fitted on the
validation split to raise the worst class's robust accuracy, stored inside the model.

The fit alternates two steps for a few rounds:
  1. attack the current calibrated model (PGD on the validation split, the adjustment inside the
     model, so the attack sees it) and keep the raw logits of the clean and adversarial inputs;
  2. on those fixed logits, raise the current worst class's offset (or lower its temperature) in
     small steps while the estimated average robust accuracy stays within the allowed loss.
Every round's candidate is then attacked end to end again; only a candidate whose *measured*
average robust accuracy is within the budget and whose measured worst class improves is kept.
The estimate is optimistic (a raised class becomes a new target for the attack), so a rejected
candidate is retried at 1/2, 1/4 and 1/8 of its change before the fit stops.
The numbers reported (and stored in the checkpoint) are those end-to-end measurements.

The test split is never read: the validation split is the held-out part of the training split
that the checkpoint's training run carved out (same fraction, same seed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from classrobust.attacks.pgd import PGD
from classrobust.models.adjust import ClassLogitAdjust
from classrobust.errors import UsageError
from classrobust.evaluate.sharded import evaluate_dataset
from classrobust.options import check_choice, coerce_fields, option
from classrobust.runtime import PRECISIONS

ATTACK = "pgd"
#: how the offsets are fitted: ``margins``, the calibration frontier's fit at one allowance (per-target
#: margins, no re-attack: :mod:`classrobust.defenses.frontier`); ``pgd-refit``, the earlier fit to one
#: untargeted PGD run's logits, attack and refit in rounds (needed for per-class temperatures)
FITS = ("margins", "pgd-refit")
#: PGD steps of the end-to-end validation measurement before and after a margins fit
MEASURE_STEPS = 10
#: fractions of a round's proposed change tried, largest first, until the re-attacked model is within budget
BACKOFF = (1.0, 0.5, 0.25, 0.125)


@dataclass(frozen=True)
class CalibrateConfig:
    """Settings of a calibration fit (``classrobust calibrate`` builds its options from these).

    What calibration is: a per-class shift (and optionally scale) of the logits, i.e. a change of
    the decision thresholds between classes, fitted so that the worst class's PGD accuracy on the
    validation split rises. It does not make the network itself more robust.
    """

    max_avg_drop: float = option(1.0, "largest allowed loss of average validation robust accuracy, in points")
    fit: str = option("margins", "margins: the frontier's fit at this one allowance (per-target margins, the "
                                 "strongest); pgd-refit: the earlier fit to PGD logits in rounds", choices=FITS)
    temperature: bool = option(False, "also fit a per-class temperature (pgd-refit only)")
    val_size: int = option(2000, "validation images used for the fit")
    steps: int | None = option(None, "steps of the fit's attack (default: 50 per target for margins, 10 for "
                                     "pgd-refit)")
    targets: int = option(9, "targets of the margins fit (the classes ranked highest after the top one)")
    rounds: int = option(3, "attack-and-refit rounds (pgd-refit only)")
    eps: float | None = option(None, "perturbation budget (default: the checkpoint's eps)")
    precision: str = option("fp32", "attack arithmetic during the fit", choices=PRECISIONS)
    seed: int = option(0, "attack seed")

    def __post_init__(self):
        coerce_fields(self)
        if not 0 <= self.max_avg_drop < 100:
            raise UsageError(f"max average drop must be in [0, 100) points, got {self.max_avg_drop}")
        check_choice(CalibrateConfig, "fit", self.fit)
        if self.temperature and self.fit != "pgd-refit":
            raise UsageError("per-class temperatures are fitted by --fit pgd-refit only")
        for name in ("val_size", "fit_steps", "rounds", "targets"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name.replace('_', ' ')} must be >= 1, got {getattr(self, name)}")
        if self.eps is not None and not self.eps >= 0:
            raise UsageError(f"eps must be >= 0, got {self.eps}")
        check_choice(CalibrateConfig, "precision", self.precision)

    @property
    def fit_steps(self) -> int:
        return self.steps if self.steps is not None else (50 if self.fit == "margins" else 10)

    def recorded(self) -> dict[str, Any]:
        """The settings a calibrated checkpoint records (and an experiment compares); a pgd-refit's are
        recorded as before the margins fit existed, so earlier checkpoints still match. The record keeps
        ``max_avg_drop`` as a fraction, as checkpoints have since the first (a file format, not an API)."""
        if self.fit == "pgd-refit":
            return {"max_avg_drop": self.max_avg_drop / 100, "temperature": self.temperature,
                    "val_size": self.val_size, "rounds": self.rounds,
                    "attack": {"name": ATTACK, "steps": self.fit_steps, "seed": self.seed, "precision": self.precision}}
        return {"fit": self.fit, "max_avg_drop": self.max_avg_drop / 100, "val_size": self.val_size,
                "attack": {"name": "targeted-margins", "steps": self.fit_steps, "n_targets": self.targets,
                           "seed": self.seed, "precision": self.precision},
                "measured_with": {"name": ATTACK, "steps": MEASURE_STEPS, "seed": self.seed}}


@dataclass
class Calibration:
    """The fitted adjustment and its end-to-end validation measurements."""

    offsets: list[float]
    temperatures: list[float]
    before: dict[str, Any]
    after: dict[str, Any]
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def to_meta(self, settings: dict[str, Any]) -> dict[str, Any]:
        return {"offsets": self.offsets, "temperatures": self.temperatures, "fitted_on": "validation",
                **settings, "before": self.before, "after": self.after, "history": self.rounds}


def _summary(result) -> dict[str, Any]:
    r = result.attacks[ATTACK]
    clean = result.attacks["clean"]
    return {"robust_accuracy": r.accuracy, "robust_per_class": r.accuracy_per_class.tolist(),
            "worst_class": result.classes[r.worst_class], "worst_robust_accuracy": float(np.nanmin(r.accuracy_per_class)),
            "clean_accuracy": clean.accuracy, "clean_per_class": clean.accuracy_per_class.tolist()}


def _accuracies(clean: np.ndarray, adv: np.ndarray, y: np.ndarray, offsets: np.ndarray, temps: np.ndarray,
                k: int) -> tuple[np.ndarray, float]:
    """Per-class and overall robust accuracy (clean and adversarial both right) under an adjustment."""
    ok = ((clean / temps + offsets).argmax(1) == y) & ((adv / temps + offsets).argmax(1) == y)
    n = np.bincount(y, minlength=k)
    per = np.bincount(y, weights=ok, minlength=k) / np.maximum(n, 1)
    per[n == 0] = np.inf  # classes without validation points never count as the worst
    return per, float(ok.mean())


def search_adjustment(clean: np.ndarray, adv: np.ndarray, y: np.ndarray, k: int, floor: float,
                      offsets: np.ndarray, temps: np.ndarray, *, fit_temperature: bool = False,
                      step: float = 0.05, temp_factor: float = 1.05, max_iter: int = 600
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Greedy coordinate ascent on the worst class: the adjustment with the highest worst-class
    accuracy whose overall accuracy stays >= ``floor``, on fixed logits (N, K) of clean and
    adversarial inputs. Returns (offsets, temperatures)."""
    offsets, temps = offsets.astype(float).copy(), temps.astype(float).copy()
    per, avg = _accuracies(clean, adv, y, offsets, temps, k)
    best = (per.min(), avg, offsets.copy(), temps.copy())
    for _ in range(max_iter):
        w = int(per.argmin())
        candidates = [(offsets + step * np.eye(k)[w], temps)]
        if fit_temperature:
            t = temps.copy()
            t[w] /= temp_factor
            candidates.append((offsets, t))
        scored = []
        for b, t in candidates:
            p, a = _accuracies(clean, adv, y, b, t, k)
            if a >= floor:
                scored.append((p[w], a, b, t, p))
        if not scored:
            break
        _, avg, offsets, temps, per = max(scored, key=lambda s: (s[0], s[1]))
        if (per.min(), avg) > best[:2]:
            best = (per.min(), avg, offsets.copy(), temps.copy())
    return best[2], best[3]


def _logits(model: ClassLogitAdjust, dataset, attack: PGD, batch_size: int, device) -> tuple[np.ndarray, ...]:
    """Raw (pre-adjustment) logits of clean and adversarial validation inputs, and labels."""
    from classrobust.data import make_loader

    clean, adv, labels = [], [], []
    for x, y in make_loader(dataset, batch_size):
        x, y = x.to(device), y.to(device)
        x_adv = attack(x, y)
        with torch.no_grad():
            clean.append(model.model(x).float().cpu())
            adv.append(model.model(x_adv).float().cpu())
        labels.append(y.cpu())
    return torch.cat(clean).numpy(), torch.cat(adv).numpy(), torch.cat(labels).numpy()


def calibrate(model: nn.Module, val_set, *, eps: float, steps: int = 10, seed: int = 0, precision: str = "fp32",
              max_avg_drop: float = 1.0, fit_temperature: bool = False, rounds: int = 3, batch_size: int = 500,
              fit: str = "pgd-refit", targets: int = 9, device=None, log: Callable[[str], None] = print
              ) -> tuple[ClassLogitAdjust, Calibration]:
    """Fit per-class offsets (and temperatures) on ``val_set`` (a validation split, never test).

    Args:
        model: the classifier, ``(N, C, H, W) in [0, 1] -> (N, K)``.
        val_set: validation images and labels.
        eps: the L-inf budget the fit defends against (``steps`` steps, seeded).
        max_avg_drop: the largest allowed loss of average robust accuracy, in points (as every
            allowance in the library: ``CalibrateConfig``, the frontier, the protocol's target).
        fit: ``margins`` (the calibration frontier's fit at this one allowance, ``targets`` targets;
            before and after measured end to end with PGD-:data:`MEASURE_STEPS`) or ``pgd-refit``.
    Returns ``(adjusted model, Calibration)``; the adjusted model wraps ``model``.
    """
    if not 0 <= max_avg_drop < 100:
        raise UsageError(f"max average drop must be in [0, 100) points, got {max_avg_drop}")
    if rounds < 1:
        raise UsageError(f"rounds must be >= 1, got {rounds}")
    k = len(val_set.classes)
    adjusted = ClassLogitAdjust(model, k).to(device).eval()

    def attack_for(m):
        return PGD(m, eps=eps, steps=steps if fit == "pgd-refit" else MEASURE_STEPS, seed=seed,
                   precision=precision, mode="best")

    def measure():
        return _summary(evaluate_dataset(adjusted, val_set, {ATTACK: attack_for(adjusted)}, batch_size=batch_size,
                                         device=device, progress=False))

    before = measure()
    if fit == "margins":  # the frontier's fit, one allowance: the same code as `classrobust frontier`
        from classrobust.defenses.frontier import fit_frontier

        fitted = fit_frontier(model, val_set, eps=eps, allowances=(max_avg_drop,), steps=steps,
                              n_targets=targets, seed=seed, precision=precision, batch_size=batch_size,
                              device=device, log=log)
        adjusted.set(fitted.offsets[0])
        after = measure()
        log(f"validation before: robust {before['robust_accuracy']:.1%}, worst class {before['worst_class']} "
            f"{before['worst_robust_accuracy']:.1%}; after (PGD-{MEASURE_STEPS}): robust {after['robust_accuracy']:.1%}, "
            f"worst class {after['worst_class']} {after['worst_robust_accuracy']:.1%}")
        return adjusted, Calibration(offsets=fitted.offsets[0], temperatures=[1.0] * k, before=before, after=after,
                                     rounds=[{"fit": "margins", "estimated_average": fitted.val_average[0],
                                              "estimated_worst": fitted.val_worst[0]}])
    drop = max_avg_drop / 100  # the search works on accuracies in [0, 1]
    floor = before["robust_accuracy"] - drop
    best = (before, np.zeros(k), np.ones(k))
    history = []
    log(f"validation before: robust {before['robust_accuracy']:.1%}, worst class {before['worst_class']} "
        f"{before['worst_robust_accuracy']:.1%}")
    for r in range(1, rounds + 1):
        clean, adv, y = _logits(adjusted, val_set, attack_for(adjusted), batch_size, device)
        # aim a quarter of the budget above the floor: the re-attack usually costs a little
        offsets, temps = search_adjustment(clean, adv, y, k, floor + drop / 4, best[1], best[2],
                                           fit_temperature=fit_temperature)
        # The fixed-logit estimate is optimistic: a raised class also becomes a new target for the
        # attack. So walk back towards the last accepted adjustment until the re-attacked model
        # meets the budget (and improves the worst class), or give up.
        accepted = False
        for fraction in BACKOFF:
            cand_off = best[1] + fraction * (offsets - best[1])
            cand_t = best[2] * (temps / best[2]) ** fraction
            adjusted.set(cand_off, cand_t)
            measured = measure()
            accepted = (measured["robust_accuracy"] >= floor
                        and measured["worst_robust_accuracy"] > best[0]["worst_robust_accuracy"])
            history.append({"round": r, "fraction": fraction, "robust_accuracy": measured["robust_accuracy"],
                            "worst_robust_accuracy": measured["worst_robust_accuracy"], "accepted": accepted})
            log(f"round {r}, step x{fraction:g}: robust {measured['robust_accuracy']:.1%}, worst class "
                f"{measured['worst_class']} {measured['worst_robust_accuracy']:.1%} "
                f"({'kept' if accepted else 'rejected'})")
            if accepted:
                best = (measured, cand_off, cand_t)
                break
        if not accepted:
            break
    adjusted.set(best[1], best[2])  # a rejected last candidate may still be set
    calibration = Calibration(offsets=[float(v) for v in best[1]], temperatures=[float(v) for v in best[2]],
                              before=before, after=best[0], rounds=history)
    return adjusted, calibration
