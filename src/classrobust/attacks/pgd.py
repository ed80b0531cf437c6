"""Projected gradient descent (Madry et al. 2018, arXiv:1706.06083) and FGSM (Goodfellow et al. 2015)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from classrobust.attacks.base import Attack, shrink_interval
from classrobust.attacks.losses import LossFn, get_loss
from classrobust.errors import UsageError


def check_steps(steps: int, what: str = "steps") -> int:
    if int(steps) != steps or steps < 1:
        raise UsageError(f"{what} must be an integer >= 1, got {steps}")
    return int(steps)


class PGD(Attack):
    """Untargeted PGD: ``steps`` ascent steps of size ``alpha`` on ``loss``, projected each time.

    Args:
        alpha: step size; default ``2.5 * eps / steps`` (Madry et al.'s rule, so the
            iterates can cross the ball and back whatever ``steps`` is).
        steps: number of iterations, >= 1.
        random_start: start from a uniform point of the threat model (per-sample, seeded).
        loss: ``"ce"``, ``"margin"`` (Carlini-Wagner), ``"dlr"`` or a callable
            ``(logits, y) -> (N,)`` to maximise.
    Other arguments: see :class:`Attack`. With ``mode="best"`` a sample leaves the
    batch at the first iterate that fools the model; ``"last"`` returns the last iterate.
    """

    name = "pgd"

    def __init__(self, model: nn.Module, *, eps: float, alpha: float | None = None,
                 steps: int = 10, random_start: bool = True, norm: str = "linf",
                 loss: str | LossFn = "ce", seed: int = 0, precision: str = "fp32",
                 mode: str = "best"):
        super().__init__(model, eps=eps, norm=norm, seed=seed, precision=precision, mode=mode)
        self.steps = check_steps(steps)
        if isinstance(alpha, torch.Tensor):  # per-sample steps go with per-sample radii
            self.alpha = alpha.detach().float().view(-1, 1, 1, 1)
        elif alpha is None and self.eps_per_sample is not None:
            self.alpha = 2.5 * self.eps_per_sample.view(-1, 1, 1, 1) / self.steps
        else:
            self.alpha = float(alpha) if alpha is not None else 2.5 * self.eps / self.steps
        alpha_ok = bool((self.alpha >= 0).all()) if isinstance(self.alpha, torch.Tensor) else self.alpha >= 0
        if not alpha_ok:
            raise UsageError(f"alpha must be >= 0, got {alpha}")
        self.random_start = bool(random_start)
        self.loss_name = loss if isinstance(loss, str) else getattr(loss, "__name__", "custom")
        self.loss_fn = get_loss(loss)

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = x
        if self.random_start and self.eps > 0:
            x_adv = self.ball.project(x + self.ball.random_init(x, self.seed), x)
        if self.mode == "last":
            for _ in range(self.steps):
                grad, _ = self.loss_grad(x_adv, y, self.loss_fn)
                x_adv = self.ball.project(self.ball.step(x_adv, grad, self.alpha), x)
            return x_adv
        out = x_adv.clone()
        active = torch.arange(len(x), device=x.device)
        xa, x0, ya = x_adv, x, y
        # between shrinks (see SHRINK_EVERY) a fooled sample stays, frozen at its first fooling iterate
        found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        every = shrink_interval(x.device)
        for step in range(self.steps):
            grad, logits = self.loss_grad(xa, ya, self.loss_fn)
            found = found | self.fooled(xa, ya, logits)
            if (step + 1) % every == 0 or step == self.steps - 1:
                if found.any():
                    out[active[found]] = xa[found]
                    keep = ~found
                    active, xa, x0, ya, grad = active[keep], xa[keep], x0[keep], ya[keep], grad[keep]
                    found = found[keep]
                    if len(active) == 0:
                        return out
            stepped = self.ball.project(self.ball.step(xa, grad, self.alpha), x0)
            xa = torch.where(found.view(-1, *([1] * (xa.dim() - 1))), xa, stepped)
        # the last iterate still has to be judged (and a sample fooled there keeps it, as any other)
        out[active] = xa
        return out

    def config(self) -> dict[str, Any]:
        alpha = float(self.alpha.max()) if isinstance(self.alpha, torch.Tensor) else self.alpha
        return {**super().config(), "alpha": alpha, "steps": self.steps,
                "random_start": self.random_start, "loss": self.loss_name}


class FGSM(PGD):
    """Fast gradient sign method: one step of size ``eps`` from the clean point (L-inf)."""

    name = "fgsm"

    def __init__(self, model: nn.Module, *, eps: float, seed: int = 0, precision: str = "fp32"):
        super().__init__(model, eps=eps, alpha=eps, steps=1, random_start=False, norm="linf",
                         loss="ce", seed=seed, precision=precision, mode="last")


class CW(PGD):
    """PGD on the Carlini-Wagner margin loss (largest other logit minus true logit), L-inf.

    The "CW-inf" attack of adversarial-training papers (after Carlini & Wagner 2017,
    arXiv:1608.04644), not the original L2 optimisation attack.
    """

    name = "cw"

    def __init__(self, model: nn.Module, *, eps: float, alpha: float | None = None, steps: int = 20,
                 random_start: bool = True, norm: str = "linf", seed: int = 0,
                 precision: str = "fp32", mode: str = "best"):
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start,
                         norm=norm, loss="margin", seed=seed, precision=precision, mode=mode)
