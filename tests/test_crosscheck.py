"""Differential tests against an independent implementation (torchattacks 3.5.1) on the same model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from classrobust.attacks import FGSM, PGD
from classrobust.runtime import fast_weights

try:
    import torchattacks
except ImportError as exc:  # `make test` installs it; a missing cross-check must not pass silently
    raise ImportError("torchattacks is needed for the cross-checks: `make test` installs it "
                      "(pip install --no-deps torchattacks)") from exc


@pytest.fixture(scope="module")
def batch(fmnist_test_subset):
    return fmnist_test_subset[torch.arange(300)]


def test_fgsm_matches_torchattacks(trained_fmnist_model, batch):
    x, y = batch
    ours = FGSM(trained_fmnist_model, eps=0.1)(x, y)
    # the same numerics on both sides: our attacks run convolutions in channels-last on the CPU,
    # which moves gradients by rounding, and sign() turns a rounding-sized change at a ReLU kink
    # into a full step (measured: 2 pixels of 235,200 when torchattacks ran the default layout)
    with fast_weights(trained_fmnist_model):
        theirs = torchattacks.FGSM(trained_fmnist_model, eps=0.1)(x, y)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("steps, alpha", [(10, 0.01), (20, 0.0125)])
def test_pgd_without_random_start_matches_torchattacks(trained_fmnist_model, batch, steps, alpha):
    x, y = batch
    ours = PGD(trained_fmnist_model, eps=0.1, alpha=alpha, steps=steps, random_start=False,
               mode="last")(x, y)
    with fast_weights(trained_fmnist_model):  # same numerics, see the FGSM test
        theirs = torchattacks.PGD(trained_fmnist_model, eps=0.1, alpha=alpha, steps=steps,
                                  random_start=False)(x, y)
    # torchattacks averages the loss over the batch and projects via x + clamp(delta); we sum
    # and clamp directly. The sign steps are the same, except where a gradient component is
    # within rounding of zero: then that one sample's trajectory departs (measured: 2 of 300
    # samples at 20 steps) but ends at nearly the same loss. Tolerance: >= 98% of samples equal
    # to 1e-5, every sample's adversarial loss within 2% (relative), predictions >= 99% equal.
    model = trained_fmnist_model
    same = (ours - theirs).abs().flatten(1).amax(dim=1) <= 1e-5
    assert same.float().mean() >= 0.98
    with torch.no_grad():
        loss_ours = F.cross_entropy(model(ours), y, reduction="none")
        loss_theirs = F.cross_entropy(model(theirs), y, reduction="none")
        torch.testing.assert_close(loss_ours, loss_theirs, rtol=0.02, atol=1e-4)
        agree = (model(ours).argmax(1) == model(theirs).argmax(1)).float().mean()
    assert agree >= 0.99


def test_pgd_with_random_start_is_not_weaker(trained_fmnist_model, batch):
    # different random starts, same attack: our robust accuracy must not exceed theirs by more
    # than 2 points on 300 images (measured: ours 29.3%, theirs 31.3%)
    x, y = batch
    model = trained_fmnist_model
    ours = PGD(model, eps=0.1, alpha=0.01, steps=20, seed=0)(x, y)
    torch.manual_seed(0)
    theirs = torchattacks.PGD(model, eps=0.1, alpha=0.01, steps=20, random_start=True)(x, y)
    with torch.no_grad():
        acc_ours = (model(ours).argmax(1) == y).float().mean().item()
        acc_theirs = (model(theirs).argmax(1) == y).float().mean().item()
    assert acc_ours <= acc_theirs + 0.02, (acc_ours, acc_theirs)


def _robust_accuracy(model, x_adv, y):
    with torch.no_grad():
        return (model(x_adv).argmax(1) == y).float().mean().item()


@pytest.fixture(scope="module")
def at_points(at_fmnist_model, fmnist_test_subset):
    x, y = fmnist_test_subset[torch.arange(len(fmnist_test_subset))]
    with torch.no_grad():
        keep = at_fmnist_model(x).argmax(1) == y
    return x[keep], y[keep]


def test_apgd_ce_agrees_with_torchattacks(at_fmnist_model, at_points):
    from classrobust.attacks import APGD

    x, y = at_points
    ours = _robust_accuracy(at_fmnist_model, APGD(at_fmnist_model, eps=0.1, steps=50, loss="ce")(x, y), y)
    theirs = _robust_accuracy(at_fmnist_model, torchattacks.APGD(
        at_fmnist_model, eps=0.1, steps=50, n_restarts=1, loss="ce", seed=0)(x, y), y)
    assert abs(ours - theirs) <= 0.01, (ours, theirs)


def test_square_agrees_with_torchattacks(at_fmnist_model, at_points):
    from classrobust.attacks import Square

    x, y = at_points
    # torchattacks stretches p's schedule over the budget: so does ours here (rescale_schedule)
    ours = _robust_accuracy(at_fmnist_model, Square(at_fmnist_model, eps=0.1, n_queries=300,
                                                    rescale_schedule=True)(x, y), y)
    theirs = _robust_accuracy(at_fmnist_model, torchattacks.Square(
        at_fmnist_model, eps=0.1, n_queries=300, n_restarts=1, seed=0)(x, y), y)
    # Square is random and far from converged at 300 queries, and the two use different
    # random streams: measured ours 84.2% vs theirs 85.3% on 450 points of an earlier fixture (ours
    # stronger), and
    # 70.8% vs 71.2% on the demo model at 1,000 queries. An evaluation must not be weaker:
    # ours may exceed theirs by at most 1 point.
    assert ours <= theirs + 0.01, (ours, theirs)
