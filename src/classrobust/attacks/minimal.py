"""Minimal-norm attacks: each sample's smallest adversarial example found, and its distance.

A fixed-radius attack answers "is this point robust at eps?"; a minimal-norm attack answers "how
far is this point from being misclassified?", which gives every class a whole robustness curve
(robust accuracy as a function of the radius) from one run. Subclasses implement
:meth:`MinimalNormAttack.search`; the base class gives the two views:

* ``attack.minimal(x, y) -> (x_min, distance)``: distance (N,) in the attack's norm, ``inf``
  where no adversarial example was found (x_min is then x), 0 where x itself is misclassified;
* ``attack(x, y)``: an attack at radius ``eps`` like every other, returning x_min where its
  distance is at most eps and x elsewhere (how AutoAttack uses FAB-T).

A point is *recorded* as adversarial only if it passes the verdict (a wrong class beats the true
one by the fooling margin, in fp32: :meth:`Attack.fooled`). What steers a search is the search's own
business: FAB, like the reference, steps back as soon as the prediction changes (margin > 0), since
its iterates land on the decision boundary by construction and the verdict's margin would stall it.

``minimal`` always runs the whole search (every target, restart and step): a curve needs each
point's smallest distance over all of them. Only the attack at radius eps (``attack(x, y)``, as
AutoAttack calls it) stops a point early in ``mode="best"`` once it is broken within eps.
"""

from __future__ import annotations

import torch

from classrobust.attacks.base import Attack


class MinimalNormAttack(Attack):
    """Base class of attacks that minimise the perturbation's norm (see the module docstring)."""

    def minimal(self, x: torch.Tensor, y: torch.Tensor, *, validate: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (N, C, H, W) in [0, 1], y: (N,) -> (x_min like x, distance (N,) float, inf if none found)."""
        if x.shape[0] == 0:
            if validate:
                self._check_inputs(x, y)
            return x.detach().clone(), torch.zeros(0, device=x.device)
        x_min, dist = self._guarded(lambda xx, yy: self.search(xx, yy, early_stop=False), x, y, validate)
        return x_min.detach().to(x.dtype), dist

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.at_radius(x, *self.search(x, y, early_stop=self.mode == "best"))

    def at_radius(self, x: torch.Tensor, x_min: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
        """The attack at radius eps from a search's result: x_min where its distance is at most eps, else x."""
        return torch.where((distance <= self.eps).view(-1, *([1] * (x.dim() - 1))), x_min, x)

    def search(self, x: torch.Tensor, y: torch.Tensor, *, early_stop: bool
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_min, distance): called with the model frozen in eval mode, on private copies.
        ``early_stop``: a point broken within eps may skip the rest of the search (its distance is
        then an upper bound of its smallest one)."""
        raise NotImplementedError

    def start_tracking(self, x: torch.Tensor, y: torch.Tensor) -> "BestAdversarial":
        """The record of the smallest adversarial point per sample, starting from the clean points
        (distance 0 where x is already misclassified)."""
        return BestAdversarial(self, x, y)


class BestAdversarial:
    """Per sample, the smallest adversarial point offered so far (distance inf: none yet)."""

    def __init__(self, attack: Attack, x: torch.Tensor, y: torch.Tensor):
        self.attack, self.x0, self.y = attack, x, y
        self.points = x.clone()
        misclassified = attack.fooled(x, y)
        self.distance = torch.where(misclassified, 0.0, float("inf")).to(device=x.device, dtype=x.dtype)

    def offer(self, candidates: torch.Tensor, idx: torch.Tensor | None = None,
              logits: torch.Tensor | None = None) -> torch.Tensor:
        """Keep each candidate (M, ...) of samples ``idx`` (all when None) that fools the model and
        is closer than the sample's record; ``logits`` are the candidates' own, when computed.
        Returns (M,) bool: which candidates fool the model."""
        idx = torch.arange(len(self.x0), device=self.x0.device) if idx is None else idx
        fooled = self.attack.fooled(candidates, self.y[idx], logits)
        dist = self.attack.ball.distance(candidates, self.x0[idx])
        better = fooled & (dist < self.distance[idx])
        shape = (-1,) + (1,) * (candidates.dim() - 1)
        self.points[idx] = torch.where(better.view(shape), candidates, self.points[idx])
        self.distance[idx] = torch.where(better, dist, self.distance[idx])
        return fooled
