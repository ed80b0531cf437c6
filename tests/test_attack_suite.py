"""APGD, APGD-T, Square, CW, AutoAttack and the best-iterate evaluation mode."""

from __future__ import annotations


import pytest
import torch
from torch import nn

from classrobust.attacks import APGD, APGDT, CW, PGD, AutoAttack, Square
from classrobust.attacks.apgd import apgd_checkpoints
from classrobust.attacks.losses import dlr, margin, targeted_dlr
from classrobust.attacks.square import square_fraction
from classrobust.errors import UsageError


def robust(model, x_adv, y):
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


@pytest.fixture(scope="module")
def at_batch(at_fmnist_model, fmnist_test_subset):
    x, y = fmnist_test_subset[torch.arange(len(fmnist_test_subset))]
    keep = robust(at_fmnist_model, x, y)  # attacks are evaluated on correctly classified points
    return x[keep][:300], y[keep][:300]


def test_apgd_checkpoints_follow_the_paper():
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert all(0 < c < 10 for c in apgd_checkpoints(10))


def test_losses_on_fixed_logits():
    z = torch.tensor([[3.0, 1.0, 0.5, -1.0], [0.0, 2.0, 1.0, 0.5]])
    y = torch.tensor([0, 0])
    torch.testing.assert_close(margin(z, y), torch.tensor([1.0 - 3.0, 2.0 - 0.0]))
    # dlr = -(z_y - max_other) / (z_1 - z_3)
    torch.testing.assert_close(dlr(z, y), torch.tensor([-(3.0 - 1.0) / (3.0 - 0.5), -(0.0 - 2.0) / (2.0 - 0.5)]))
    # invariant to shifting and positive scaling of the logits
    torch.testing.assert_close(dlr(3 * z + 7, y), dlr(z, y))
    t = torch.tensor([2, 3])
    expected = torch.tensor([-(3.0 - 0.5) / (3.0 - (0.5 - 1.0) / 2), -(0.0 - 0.5) / (2.0 - (0.5 + 0.0) / 2)])
    torch.testing.assert_close(targeted_dlr(z, y, t), expected)


def test_square_schedule():
    assert square_fraction(0.8, 0, 10000) == 0.8
    assert square_fraction(0.8, 11, 10000) == 0.4
    assert square_fraction(0.8, 9000, 10000) == pytest.approx(0.8 / 2 ** 9)
    assert square_fraction(0.8, 50, 1000) == 0.8 / 2  # the reference's schedule: by query number (10 < 50 <= 50)


def test_best_mode_fools_a_superset_of_last_mode(at_fmnist_model, at_batch):
    x, y = at_batch
    for cls, kw in ((PGD, {"steps": 10}), (APGD, {"steps": 10})):
        best = robust(at_fmnist_model, cls(at_fmnist_model, eps=0.1, mode="best", **kw)(x, y), y)
        last = robust(at_fmnist_model, cls(at_fmnist_model, eps=0.1, mode="last", **kw)(x, y), y)
        assert not (best & ~last).any(), f"{cls.__name__}: a point robust in best mode was fooled in last mode"
        assert best.sum() <= last.sum()


def test_apgd_at_least_as_strong_as_pgd(at_fmnist_model, at_batch):
    x, y = at_batch
    pgd = robust(at_fmnist_model, PGD(at_fmnist_model, eps=0.1, steps=20)(x, y), y).float().mean()
    apgd = robust(at_fmnist_model, APGD(at_fmnist_model, eps=0.1, steps=50)(x, y), y).float().mean()
    assert apgd <= pgd + 0.01, (float(apgd), float(pgd))
    assert apgd < 1.0


def test_cw_uses_margin_loss(at_fmnist_model, at_batch):
    x, y = at_batch
    a = CW(at_fmnist_model, eps=0.1, steps=5, seed=1)
    b = PGD(at_fmnist_model, eps=0.1, steps=5, seed=1, loss="margin")
    assert a.config()["loss"] == "margin"
    assert torch.equal(a(x, y), b(x, y))


def test_autoattack_versions(tiny_model):
    assert list(AutoAttack(tiny_model, eps=0.1).attacks) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert list(AutoAttack(tiny_model, eps=0.1, version="fast").attacks) == ["apgd-ce", "apgd-t"]
    with pytest.raises(UsageError, match="version must be one of"):
        AutoAttack(tiny_model, eps=0.1, version="plus")


def test_square_finds_errors(trained_fmnist_model, fmnist_test_subset):
    x, y = fmnist_test_subset[torch.arange(100)]
    clean = robust(trained_fmnist_model, x, y).float().mean()
    after = robust(trained_fmnist_model, Square(trained_fmnist_model, eps=0.1, n_queries=300)(x, y), y)
    assert after.float().mean() < clean - 0.2


def test_apgd_t_needs_four_classes():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    with pytest.raises(UsageError, match="at least 4 classes"):
        APGDT(model, eps=0.1, steps=2)(torch.rand(2, 1, 8, 8), torch.tensor([0, 1]))


def test_bf16_pgd_stays_in_the_ball_and_fools(at_fmnist_model, at_batch):
    # that bf16 search takes fp32's verdict at every iterate is tested point by point across the
    # decision boundary in test_attacks.py (test_bf16_search_takes_the_fp32_decision_at_every_iterate)
    x, y = at_batch
    x_adv = PGD(at_fmnist_model, eps=0.1, steps=10, precision="bf16")(x, y)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    assert robust(at_fmnist_model, x_adv, y).float().mean() < robust(at_fmnist_model, x, y).float().mean()
