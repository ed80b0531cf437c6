"""The calibration frontier: how much worst-class robust accuracy a plain per-class threshold shift
buys for each point of average robust accuracy given up. Every class-wise training lever's control.

Why per-target margins make the fit exact for offsets: with per-class logit offsets ``b`` the
model predicts ``argmax_j z_j(x) + b_j``. An attacker aiming at class ``j`` wants
``z_j - z_y + b_j - b_y > 0``; the offsets are constants, so the attack that maximises
``z_j - z_y`` on the plain model is also the strongest attack towards ``j`` on every adjusted model.
So one attack pass per target class on the validation split, keeping each point's largest margin
``m_ij = max over the attack's iterates of z_j - z_y`` (the clean point included), decides
robustness under any offsets: point i is robust iff ``m_ij < b_{y_i} - b_j`` for every j. The
frontier's fit is then a search on those numbers, with no re-attack, and it does not vanish under
a stronger attack the way a fit to one untargeted attack's logits does (that one's adversarial
points move to another class once the thresholds move). How well it holds is measured, not
assumed: every fitted model is evaluated end to end on the test split with the attacks given
(standard AutoAttack by default).

The test split is never read here: the caller passes the validation split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from classrobust.attacks.base import Attack
from classrobust.errors import UsageError

#: the default average-cost allowances, in points of average robust accuracy (validation)
ALLOWANCES = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)


class TargetedMargins(Attack):
    """Per point and target class j, the largest ``z_j - z_y`` found within eps (the clean point
    included): PGD on the targeted margin, ``steps`` steps from the clean point, the step size
    eps / 4 halved at half and three quarters of the run. Used through :meth:`margins`."""

    name = "targeted-margins"

    def __init__(self, model: nn.Module, *, eps: float, steps: int = 50, n_targets: int = 9, norm: str = "linf",
                 seed: int = 0, precision: str = "fp32"):
        super().__init__(model, eps=eps, norm=norm, seed=seed, precision=precision, mode="last")
        if int(steps) != steps or steps < 1 or int(n_targets) != n_targets or n_targets < 1:
            raise UsageError(f"steps and n_targets must be integers >= 1, got {steps}, {n_targets}")
        self.steps, self.n_targets = int(steps), int(n_targets)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "steps": self.steps, "n_targets": self.n_targets}

    def margins(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) in [0, 1], y: (N,) -> (N, K) float: each point's largest margin towards
        every class (``-inf`` at its own class, and at classes beyond the ``n_targets`` the clean
        model ranks highest after the top one, which are left unattacked: their clean margin)."""
        return self._guarded(self._margins, x, y, True)

    def _margins(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            clean = self.logits(x)
        k = clean.shape[1]
        best = clean - clean.gather(1, y[:, None])  # the clean point's margins
        best.scatter_(1, y[:, None], float("-inf"))
        order = clean.scatter(1, y[:, None], float("-inf")).argsort(dim=1, descending=True)
        alpha0 = self.eps / 4
        for t in range(min(self.n_targets, k - 1)):
            target = order[:, t]
            x_adv = x.clone()

            def loss(logits, yy, target=target):
                return logits.gather(1, target[:, None]).squeeze(1) - logits.gather(1, yy[:, None]).squeeze(1)

            for step in range(self.steps + 1):
                grad, logits = self.loss_grad(x_adv, y, loss)
                with torch.no_grad():
                    found = loss(logits, y)
                    current = best.gather(1, target[:, None]).squeeze(1)
                    best.scatter_(1, target[:, None], torch.maximum(current, found)[:, None])
                if step == self.steps:
                    break
                alpha = alpha0 / 2 ** (int(step >= self.steps // 2) + int(step >= 3 * self.steps // 4))
                x_adv = self.ball.project(self.ball.step(x_adv, grad, alpha), x)
        return best

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # not an attack at eps
        raise UsageError("TargetedMargins measures margins (use .margins); it is not an attack at eps")


def robust_under(margins: np.ndarray, y: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(N,) bool: robust under per-class ``offsets`` (K,), from per-target margins (N, K)."""
    threshold = offsets[y][:, None] - offsets[None, :]
    return (margins < threshold).all(axis=1)


def per_class_accuracy(ok: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    n = np.bincount(y, minlength=k)
    per = np.bincount(y, weights=ok, minlength=k) / np.maximum(n, 1)
    per[n == 0] = np.inf  # classes without points never count as the worst
    return per


def fit_offsets(margins: np.ndarray, y: np.ndarray, floor: float, *, step: float = 0.05,
                max_iter: int = 2000) -> np.ndarray:
    """Greedy ascent on the worst class: raise its offset by ``step`` while the estimated average
    robust accuracy stays >= ``floor`` (a fraction); returns the offsets (K,) with the highest
    worst-class accuracy (ties: the higher average) seen."""
    k = margins.shape[1]
    offsets = np.zeros(k)
    ok = robust_under(margins, y, offsets)
    per, avg = per_class_accuracy(ok, y, k), ok.mean()
    best = (per.min(), avg, offsets.copy())
    for _ in range(max_iter):
        w = int(per.argmin())
        candidate = offsets.copy()
        candidate[w] += step
        ok = robust_under(margins, y, candidate)
        if ok.mean() < floor:
            break
        offsets, per, avg = candidate, per_class_accuracy(ok, y, k), ok.mean()
        if (per.min(), avg) > best[:2]:
            best = (per.min(), avg, offsets.copy())
    return best[2] - best[2].mean()  # only differences matter; centred for readability


@dataclass
class FrontierFit:
    """Offsets per allowance, fitted on validation margins, with the validation estimates."""

    allowances: list[float]  # points
    offsets: list[list[float]]
    val_average: list[float]  # estimated robust accuracy (fraction) per allowance
    val_worst: list[float]
    base_average: float  # the uncalibrated model's estimate
    base_worst: float
    val_size: int
    settings: dict[str, Any]


def fit_frontier(model: nn.Module, val_set, *, eps: float, allowances=ALLOWANCES, steps: int = 50,
                 n_targets: int = 9, norm: str = "linf", seed: int = 0, precision: str = "fp32",
                 batch_size: int = 250, device=None, log: Callable[[str], None] = print) -> FrontierFit:
    """Per-target margins of ``val_set`` (a validation split, never test), then one fit per
    allowance (points of average validation robust accuracy given up), each from scratch."""
    from classrobust.data import make_loader

    allowances = [float(a) for a in allowances]
    if not allowances or any(not 0 <= a < 100 for a in allowances):
        raise UsageError(f"allowances must be points in [0, 100), got {allowances}")
    k = len(val_set.classes)
    attack = TargetedMargins(model, eps=eps, steps=steps, n_targets=n_targets, norm=norm, seed=seed,
                             precision=precision)
    chunks, labels = [], []
    for x, y in make_loader(val_set, batch_size):
        chunks.append(attack.margins(x.to(device), y.to(device)).cpu())
        labels.append(y)
    margins, y = torch.cat(chunks).numpy().astype(np.float64), torch.cat(labels).numpy()
    base_ok = robust_under(margins, y, np.zeros(k))
    base = base_ok.mean()
    offsets, averages, worsts = [], [], []
    for a in allowances:
        b = fit_offsets(margins, y, base - a / 100)
        ok = robust_under(margins, y, b)
        offsets.append([float(v) for v in b])
        averages.append(float(ok.mean()))
        worsts.append(float(per_class_accuracy(ok, y, k).min()))
        log(f"allowance {a:g} points: validation estimate average {ok.mean():.1%}, worst class {worsts[-1]:.1%}")
    return FrontierFit(allowances, offsets, averages, worsts, float(base),
                       float(per_class_accuracy(base_ok, y, k).min()), len(y),
                       {"fit_attack": attack.config(), "fitted_on": "validation"})
