"""Perturbation balls as objects: random start, steepest-ascent step, projection.

After the threat-model/attack-loop split of MadryLab's ``robustness``: the
attack loop is norm-agnostic; a threat model says what a step and a
projection mean. Every projection also clips to the image range [0, 1].
"""

from __future__ import annotations

import torch

from classrobust.attacks.noise import normal_like, uniform_like, uniform_per_sample
from classrobust.errors import UsageError


def _flat_norm(t: torch.Tensor, p: float) -> torch.Tensor:
    return t.flatten(1).norm(p=p, dim=1).view(-1, *([1] * (t.dim() - 1)))


class LinfBall:
    """``||x_adv - x||_inf <= eps``; steps follow the sign of the gradient."""

    name = "linf"

    def __init__(self, eps: float):
        self.eps = eps

    def random_init(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        return (2 * uniform_like(x, seed) - 1) * self.eps

    def step(self, x_adv: torch.Tensor, grad: torch.Tensor, alpha: float) -> torch.Tensor:
        return x_adv + alpha * grad.sign()

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.min(torch.max(x_adv, x - self.eps), x + self.eps).clamp_(0, 1)

    @staticmethod
    def distance(x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(N,) L-inf norm of ``x_adv - x``."""
        return (x_adv - x).flatten(1).abs().amax(dim=1)

    @staticmethod
    def dual_norm(g: torch.Tensor) -> torch.Tensor:
        """(N,) L1 norm: how fast a linear function can change per unit of L-inf distance."""
        return g.flatten(1).abs().sum(dim=1)



class L2Ball:
    """``||x_adv - x||_2 <= eps``; steps follow the L2-normalised gradient."""

    name = "l2"

    def __init__(self, eps: float):
        self.eps = eps

    def random_init(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        # Uniform in the ball: a Gaussian direction, radius eps * U^(1/d).
        direction = normal_like(x, seed)
        direction = direction / _flat_norm(direction, 2).clamp_min(1e-12)
        d = x[0].numel()
        radius = uniform_per_sample(x, seed, stream=7).pow(1.0 / d)
        return direction * radius.view(-1, *([1] * (x.dim() - 1))) * self.eps

    def step(self, x_adv: torch.Tensor, grad: torch.Tensor, alpha: float) -> torch.Tensor:
        return x_adv + alpha * grad / _flat_norm(grad, 2).clamp_min(1e-12)

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        delta = x_adv - x
        scale = (self.eps / _flat_norm(delta, 2).clamp_min(1e-12)).clamp(max=1.0)
        return (x + delta * scale).clamp_(0, 1)

    @staticmethod
    def distance(x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(N,) L2 norm of ``x_adv - x``."""
        return (x_adv - x).flatten(1).norm(dim=1)

    @staticmethod
    def dual_norm(g: torch.Tensor) -> torch.Tensor:
        """(N,) L2 norm (L2 is its own dual)."""
        return g.flatten(1).norm(dim=1)


BALLS = {"linf": LinfBall, "l2": L2Ball}


def make_ball(norm: str, eps: float | torch.Tensor) -> LinfBall | L2Ball:
    """The perturbation set of an attack (not to be confused with a dataset's
    :class:`~classrobust.data.base.ThreatModel`, which only holds the default eps and step)."""
    if norm not in BALLS:
        raise UsageError(f"unknown norm {norm!r}; choose one of: {', '.join(BALLS)}")
    return BALLS[norm](eps)
