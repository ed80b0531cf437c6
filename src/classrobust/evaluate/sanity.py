"""Evaluation sanity checks, after Carlini et al. 2019 ("On Evaluating Adversarial
Robustness", arXiv:1902.06705) and AutoAttack's own checks.

Each check returns a record ``{"check", "passed", "detail", "per_class"}``;
every failed check also yields a one-line warning. Warnings name classes where
the check is per class. They are signs to investigate, not proofs: a model can
pass them all and still be evaluated too optimistically.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from classrobust.attacks import PGD, Square
from classrobust.attacks.base import Attack, frozen_eval
from classrobust.data import make_loader
from classrobust.evaluate.classwise import evaluate_classwise
from classrobust.errors import UsageError
from classrobust.runtime import fast_layout, model_mode
from classrobust.results import CLEAN, ClasswiseResult

def ran_gradient_free(config: dict[str, Any]) -> bool:
    """Whether an evaluated attack (its recorded config) included a gradient-free search: Square
    itself, or an ensemble with Square among its members (not ``autoattack:version=fast``)."""
    return config.get("attack") == "square" or "square" in config.get("attacks", {})
#: large-eps check: robust accuracy should fall to about 0
LARGE_EPS_LINF = 0.5
LARGE_EPS_MAX_ACCURACY = 0.02


def _per_class_counts(labels: np.ndarray, mask: np.ndarray, k: int) -> list[int]:
    return np.bincount(labels[mask], minlength=k).astype(int).tolist()


def check_steps(model, dataset, result: ClasswiseResult, attacks: dict[str, Attack],
                rebuild: Callable[[str, dict[str, Any]], Attack], batch_size: int) -> list[dict]:
    """Robust accuracy must not rise when an iterative attack gets twice the steps."""
    records = []
    k = result.num_classes
    for name, attack in attacks.items():
        cfg = attack.config()
        if "steps" not in cfg or not type(attack).steps_sanity_check:
            continue
        try:
            stronger = rebuild(name, {"steps": 2 * cfg["steps"]})
        except (UsageError, TypeError):  # a one-step attack (FGSM) takes no steps
            continue
        again = evaluate_classwise(model, make_loader(dataset, batch_size), {name: stronger},
                                   classes=result.classes, progress=False).attacks[name]
        before, after = result.attacks[name], again
        rise = after.correct_per_class - before.correct_per_class
        n = before.n_per_class
        # a class is flagged when 2x steps leaves >= 2 more of its points robust and > 1% of it
        flagged = [result.classes[c] for c in range(k) if rise[c] >= 2 and rise[c] > 0.01 * n[c]]
        records.append({
            "check": f"more steps: {name}",
            "passed": not flagged and after.accuracy <= before.accuracy + 0.005,
            "detail": f"{name} with {cfg['steps']} -> {2 * cfg['steps']} steps: robust accuracy "
                      f"{before.accuracy:.2%} -> {after.accuracy:.2%}",
            "per_class": {result.classes[c]: int(rise[c]) for c in range(k)},
            "flagged_classes": flagged,
        })
    return records


def check_large_eps(model, dataset, result: ClasswiseResult, eps: float, precision: str, seed: int,
                    batch_size: int) -> dict:
    """At eps = 0.5 (L-inf) every image can be pushed anywhere near mid-grey: accuracy must be ~0."""
    big = max(LARGE_EPS_LINF, eps)
    attack = PGD(model, eps=big, steps=50, seed=seed, precision=precision)
    res = evaluate_classwise(model, make_loader(dataset, batch_size), {"pgd": attack},
                             classes=result.classes, progress=False).attacks["pgd"]
    acc = res.accuracy_per_class
    flagged = [result.classes[c] for c in range(result.num_classes) if acc[c] > 5 * LARGE_EPS_MAX_ACCURACY]
    return {"check": "large eps", "passed": res.accuracy <= LARGE_EPS_MAX_ACCURACY and not flagged,
            "detail": f"PGD-50 at eps {big:g}: robust accuracy {res.accuracy:.2%} "
                      f"(expected <= {LARGE_EPS_MAX_ACCURACY:.0%})",
            "per_class": {result.classes[c]: float(acc[c]) for c in range(result.num_classes)},
            "flagged_classes": flagged}


def check_black_box(model, dataset, result: ClasswiseResult, eps: float, precision: str, seed: int,
                    n_queries: int, batch_size: int) -> dict:
    """Square (gradient-free) run on the points every white-box attack left robust."""
    white = [n for n in result.attacks if n != CLEAN and not ran_gradient_free(result.attacks[n].config)]
    k = result.num_classes
    if not white:
        return {"check": "black-box", "passed": True, "detail": "no white-box attack evaluated; skipped",
                "per_class": {}, "flagged_classes": []}
    survive = np.all([result.attacks[n].predictions == result.labels for n in white], axis=0)
    positions = np.nonzero(survive)[0]
    found = np.zeros(len(result.labels), dtype=bool)
    if len(positions):
        sub = dataset.subset(torch.as_tensor(positions))
        res = evaluate_classwise(model, make_loader(sub, batch_size),
                                 {"square": Square(model, eps=eps, n_queries=n_queries, seed=seed,
                                                   precision=precision)},
                                 classes=result.classes, progress=False).attacks["square"]
        found[positions] = res.predictions != res.labels
    counts = _per_class_counts(result.labels, found, k)
    flagged = [result.classes[c] for c in range(k) if counts[c] > 0]
    return {"check": "black-box", "passed": not found.any(),
            "detail": f"Square ({n_queries} queries) fooled {int(found.sum())} of {len(positions)} points "
                      f"that {', '.join(white)} left robust: possible gradient masking" if found.any()
                      else f"Square ({n_queries} queries) found no error that {', '.join(white)} missed",
            "per_class": {result.classes[c]: counts[c] for c in range(k)}, "flagged_classes": flagged}


@torch.no_grad()
def check_randomness(model: nn.Module, dataset, device, batch_size: int) -> dict:
    """Two identical forward passes in eval mode must give identical predictions."""
    x, _ = next(iter(make_loader(dataset, batch_size)))
    x = fast_layout(x.to(device))
    with model_mode(model, False):
        a, b = model(x), model(x)
    diff = float((a - b).abs().max())
    same_pred = bool((a.argmax(1) == b.argmax(1)).all())
    return {"check": "randomised model", "passed": diff <= 1e-4 and same_pred,
            "detail": f"two identical forward passes differ by up to {diff:.3g} in the logits"
                      + ("" if same_pred else " and change predictions")
                      + ("; randomised defences need EOT attacks" if diff > 1e-4 else ""),
            "per_class": {}, "flagged_classes": []}


def check_zero_gradients(model: nn.Module, dataset, result: ClasswiseResult, device, batch_size: int) -> dict:
    """Correctly classified points whose input gradient of the CE loss is exactly zero."""
    k = result.num_classes
    zero = np.zeros(len(result.labels), dtype=bool)
    with frozen_eval(model):
        start = 0
        for x, y in make_loader(dataset, batch_size):
            x = x.to(device).requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(model(fast_layout(x)).float(), y.to(device), reduction="sum")
            (g,) = torch.autograd.grad(loss, x)
            zero[start:start + len(y)] = (g.flatten(1).abs().amax(dim=1) == 0).cpu().numpy()
            start += len(y)
    correct = result.attacks[CLEAN].predictions == result.labels
    zero &= correct
    counts = _per_class_counts(result.labels, zero, k)
    return {"check": "zero gradients", "passed": not zero.any(),
            "detail": f"{int(zero.sum())} correctly classified points have an all-zero input gradient"
                      + (" (saturated softmax or masked gradients)" if zero.any() else ""),
            "per_class": {result.classes[c]: counts[c] for c in range(k)},
            "flagged_classes": [result.classes[c] for c in range(k) if counts[c] > 0]}


def run_sanity_checks(model: nn.Module, dataset, result: ClasswiseResult, attacks: dict[str, Attack],
                      rebuild: Callable[[str, dict[str, Any]], Attack], *, eps: float, precision: str = "fp32",
                      seed: int = 0, device=None, batch_size: int = 256, n_queries: int = 1000) -> dict:
    """All checks on the evaluated samples ``dataset`` (in the order of ``result``).

    ``rebuild(name, overrides)`` builds attack ``name`` again with changed parameters.
    Returns ``{"checks": [...], "warnings": [...]}`` for ``summary.json``.
    """
    device = device if device is not None else next(model.parameters()).device
    checks = [check_randomness(model, dataset, device, batch_size),
              check_zero_gradients(model, dataset, result, device, batch_size),
              *check_steps(model, dataset, result, attacks, rebuild, batch_size)]
    if attacks and next(iter(attacks.values())).norm == "linf":
        checks.append(check_large_eps(model, dataset, result, eps, precision, seed, batch_size))
        checks.append(check_black_box(model, dataset, result, eps, precision, seed, n_queries, batch_size))
    warnings = []
    for c in checks:
        if not c["passed"]:
            where = f" [classes: {', '.join(c['flagged_classes'])}]" if c["flagged_classes"] else ""
            warnings.append(f"sanity warning ({c['check']}): {c['detail']}{where}")
    return {"checks": checks, "warnings": warnings}
