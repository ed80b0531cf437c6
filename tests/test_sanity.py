"""Each sanity check passes on an honest model and fires on a model built to trip it."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from classrobust.attacks import FGSM, PGD
from classrobust.data import make_loader
from classrobust.evaluate import evaluate_classwise
from classrobust.evaluate.sanity import (check_black_box, check_large_eps, check_randomness, check_steps,
                                         check_zero_gradients, run_sanity_checks)


class _ZeroGradRound(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x * 4) / 4

    @staticmethod
    def backward(ctx, grad):
        return torch.zeros_like(grad)


class GradientMasked(nn.Module):
    """Input quantisation with a zero gradient: white-box attacks see nothing."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(_ZeroGradRound.apply(x))


class Noisy(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x) + torch.randn(x.shape[0], 10)


class Constant(nn.Module):
    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([5.0] + [0.0] * 9))

    def forward(self, x):
        return self.bias.expand(x.shape[0], 10) + 0 * x.flatten(1).sum(1, keepdim=True)


@pytest.fixture(scope="module")
def data(fmnist_test_subset):
    return fmnist_test_subset.subset(torch.arange(200))


def _evaluate(model, data, attacks):
    return evaluate_classwise(model, make_loader(data, 100), attacks, progress=False)


def test_honest_model_passes(trained_fmnist_model, data):
    model = trained_fmnist_model
    attacks = {"pgd": PGD(model, eps=0.1, steps=10)}
    result = _evaluate(model, data, attacks)
    report = run_sanity_checks(model, data, result, attacks,
                               lambda n, o: PGD(model, eps=0.1, **o), eps=0.1, n_queries=100, batch_size=100)
    checks = {c["check"]: c for c in report["checks"]}
    assert set(checks) == {"randomised model", "zero gradients", "more steps: pgd", "large eps", "black-box"}
    for name in ("randomised model", "zero gradients", "more steps: pgd", "large eps"):
        assert checks[name]["passed"], checks[name]["detail"]
    assert len(report["warnings"]) == sum(not c["passed"] for c in report["checks"])


def test_gradient_masking_is_flagged(trained_fmnist_model, data):
    model = GradientMasked(trained_fmnist_model).eval()
    attacks = {"pgd": PGD(model, eps=0.1, steps=5, random_start=False)}
    result = _evaluate(model, data, attacks)
    zero = check_zero_gradients(model, data, result, torch.device("cpu"), 100)
    assert not zero["passed"] and sum(zero["per_class"].values()) > 50
    black = check_black_box(model, data, result, 0.1, "fp32", 0, 100, 100)
    assert not black["passed"] and "possible gradient masking" in black["detail"]
    assert black["flagged_classes"]


def test_randomised_model_is_flagged(trained_fmnist_model, data):
    record = check_randomness(Noisy(trained_fmnist_model), data, torch.device("cpu"), 100)
    assert not record["passed"] and "EOT" in record["detail"]


def test_large_eps_flags_a_model_attacks_cannot_move(data):
    model = Constant()
    result = _evaluate(model, data, {})
    record = check_large_eps(model, data, result, 0.1, "fp32", 0, 100)
    assert not record["passed"] and record["flagged_classes"] == ["T-shirt/top"]


def test_more_steps_rising_accuracy_is_flagged(trained_fmnist_model, data):
    model = trained_fmnist_model
    attacks = {"pgd": PGD(model, eps=0.1, steps=10)}
    result = _evaluate(model, data, attacks)
    # a "stronger" attack that is in fact no attack: accuracy rises, the check must fire
    records = check_steps(model, data, result, attacks, lambda n, o: PGD(model, eps=0.0, **o), 100)
    assert len(records) == 1 and not records[0]["passed"] and records[0]["flagged_classes"]
    # one-step attacks are skipped
    assert check_steps(model, data, result, {"fgsm": FGSM(model, eps=0.1)},
                       lambda n, o: FGSM(model, eps=0.1, **o), 100) == []
    # the capability is the attack's, not its name's: the same PGD under a class that opts out (as
    # Square, AutoAttack and APGD-T do) is skipped whatever it is called
    class Opted(PGD):
        steps_sanity_check = False

    assert check_steps(model, data, result, {"pgd": Opted(model, eps=0.1, steps=10)},
                       lambda n, o: PGD(model, eps=0.0, **o), 100) == []
    from classrobust.attacks import ATTACKS

    assert {n for n in ATTACKS.names() if not ATTACKS.get(n).builder.steps_sanity_check} == {"apgd-t", "square",
                                                                                             "autoattack"}


def test_cli_sanity_lands_in_summary(synthetic_env, tmp_path, capsys):
    from classrobust.cli.main import main
    from conftest import TRAIN

    assert main([*TRAIN, "--out", str(tmp_path / "run")]) == 0
    code = main(["eval", "--checkpoint", str(tmp_path / "run" / "model.safetensors"), "--attacks", "fgsm,pgd:steps=2",
                 "--limit", "40", "--sanity", "--sanity-queries", "20", "--out", str(tmp_path / "e"), "--no-progress"])
    assert code == 0
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    names = [c["check"] for c in summary["sanity"]["checks"]]
    assert names == ["randomised model", "zero gradients", "more steps: pgd", "large eps", "black-box"]
    assert "sanity_seconds" in summary["meta"]


def test_only_attacks_that_ran_square_count_as_gradient_free(tiny_model):
    from classrobust.attacks import build_attacks
    from classrobust.evaluate.sanity import ran_gradient_free

    attacks = {**build_attacks("pgd,square,autoattack", tiny_model, eps=0.1),
               "fast": build_attacks("autoattack:version=fast", tiny_model, eps=0.1)["autoattack"]}
    verdicts = {name: ran_gradient_free(a.config()) for name, a in attacks.items()}
    assert verdicts == {"pgd": False, "square": True, "autoattack": True, "fast": False}
