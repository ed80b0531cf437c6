"""Differential tests against the reference AutoAttack implementation (fra31/auto-attack, as
packaged on PyPI by ``pyautoattack``), point by point on the same trained model and points."""

from __future__ import annotations

import pytest
import torch

from classrobust.attacks import FAB
from classrobust.runtime import fast_weights

try:
    from pyautoattack.fab_pt import FABAttack_PT
except ImportError as exc:  # `make test` installs it; a missing cross-check must not pass silently
    raise ImportError("pyautoattack is needed for the reference cross-checks: `make test` installs it "
                      "(pip install --no-deps pyautoattack)") from exc

EPS = {"linf": 0.1, "l2": 1.0}
N_TARGETS = 3


@pytest.fixture(scope="module")
def points(at_fmnist_model, fmnist_test_subset):
    """30 correctly classified test points, 3 per class."""
    x, y = fmnist_test_subset[torch.arange(len(fmnist_test_subset))]
    with torch.no_grad():
        correct = at_fmnist_model(x).argmax(1) == y
    keep = torch.cat([(correct & (y == k)).nonzero().flatten()[:3] for k in range(10)])
    return x[keep], y[keep]


def distance(a, b, norm):
    d = (a - b).flatten(1)
    return d.abs().amax(dim=1) if norm == "linf" else d.norm(dim=1)


def reference_fab_t(model, x, y, norm, steps):
    """The reference FAB-T's smallest adversarial distance per point over its first N_TARGETS
    targets, each run from the clean point (no restarts: deterministic), inf where none fooled."""
    ref = FABAttack_PT(model, norm={"linf": "Linf", "l2": "L2"}[norm], n_restarts=1, n_iter=steps,
                       eps=EPS[norm], targeted=True, n_target_classes=N_TARGETS, device=x.device)
    best = torch.full((len(x),), float("inf"))
    for target in range(2, N_TARGETS + 2):  # the reference's numbering: 2 = the top other class
        ref.target_class = target
        adv = ref.attack_single_run(x, y, use_rand_start=False, is_targeted=True)
        with torch.no_grad():
            fooled = model(adv).argmax(1) != y
        best = torch.where(fooled, torch.minimum(best, distance(adv, x, norm)), best)
    return best


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_t_matches_the_reference_point_by_point(at_fmnist_model, points, norm):
    x, y = points if norm == "linf" else (points[0][::2], points[1][::2])
    model = at_fmnist_model
    steps = 100  # the standard setting: a stalled search shows only over many steps
    ours = FAB(model, eps=EPS[norm], norm=norm, steps=steps, targeted=True, n_targets=N_TARGETS).minimal(x, y)[1]
    with fast_weights(model):  # the same convolution numerics as ours (see test_crosscheck.py)
        theirs = reference_fab_t(model, x, y, norm, steps)
    eps = EPS[norm]
    # the same verdicts at eps, point by point
    assert torch.equal(ours <= eps, theirs <= eps), (ours, theirs)
    # the same points found adversarial at all, and at the same distance within 1%
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    found = torch.isfinite(ours)
    ratio = ours[found] / theirs[found]
    # never more than 1% farther than the reference (the margin bug: up to 1.2x here, 9.6x on
    # another model); the projection solvers differ in rounding, which can end a search a little
    # closer (measured on the demo model, 100 points x 9 targets: 99 within 1%, one 1.8% closer)
    assert (ratio <= 1.01).all(), ratio
    assert ((ratio - 1).abs() <= 0.01).float().mean() >= 0.95, ratio
