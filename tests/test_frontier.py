"""The calibration frontier: the fit on per-target margins, the test split untouched while fitting,
the command end to end (files, resume, refusals)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from classrobust.analysis.frontier import frontier_rows, worst_at_cost
from classrobust.models.adjust import ClassLogitAdjust
from classrobust.defenses.frontier import TargetedMargins, fit_offsets, per_class_accuracy, robust_under
from conftest import run


def synthetic_margins(seed=0, n=600, k=4):
    """Margins where class 0 is weak (its points sit close to class 1's boundary)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    m = rng.normal(-2.0, 1.0, size=(n, k))
    m[y == 0, 1] = rng.normal(0.2, 0.6, size=(y == 0).sum())
    m[np.arange(n), y] = -np.inf
    return m, y


def test_robust_under_offsets_is_the_adjusted_models_decision():
    m, y = synthetic_margins()
    b = np.array([0.7, -0.2, 0.0, 0.1])
    # robust iff z_j - z_y < b_y - b_j for every j, i.e. the true class wins after the shift
    expected = np.array([(m[i] + b < b[y[i]]).all() for i in range(len(y))])
    assert np.array_equal(robust_under(m, y, b), expected)


def test_fit_keeps_the_floor_and_the_frontier_rises_with_the_allowance():
    m, y = synthetic_margins()
    base = robust_under(m, y, np.zeros(4))
    worst = []
    for allowance in (0.0, 0.01, 0.02, 0.05, 0.1):
        b = fit_offsets(m, y, base.mean() - allowance)
        ok = robust_under(m, y, b)
        assert ok.mean() >= base.mean() - allowance - 1e-12
        worst.append(per_class_accuracy(ok, y, 4).min())
    assert worst == sorted(worst)  # monotone in the allowance
    assert worst[-1] > per_class_accuracy(base, y, 4).min() + 0.1  # class 0 lifted


def test_targeted_margins_are_attained_by_a_real_point_and_decide_the_adjusted_model(at_fmnist_model, fmnist_test_subset):
    x, y = fmnist_test_subset[torch.arange(0, 600, 20)]
    attack = TargetedMargins(at_fmnist_model, eps=0.1, steps=10, n_targets=9)
    margins = attack.margins(x, y)
    with torch.no_grad():
        clean = at_fmnist_model(x)
    clean_margin = clean - clean.gather(1, y[:, None])
    finite = torch.isfinite(margins)
    assert (margins[finite] >= clean_margin[finite] - 1e-6).all()  # the clean point is one of the iterates
    assert torch.isinf(margins.gather(1, y[:, None])).all()
    # shifting thresholds by offsets makes a point robust only where no target's margin beats them:
    # an untargeted PGD on the adjusted model breaks no point the margins call robust (up to a few
    # where PGD is stronger than this short targeted search)
    from classrobust.attacks import PGD

    b = np.zeros(10)
    b[6] = 1.0  # raise Shirt
    adjusted = ClassLogitAdjust(at_fmnist_model, 10).set(b).eval()
    called = robust_under(margins.double().numpy(), y.numpy(), b)
    with torch.no_grad():
        broken = adjusted(PGD(adjusted, eps=0.1, steps=20)(x, y)).argmax(1) != y
    assert (called & broken.numpy()).sum() <= 1
    assert (~called & ~broken.numpy()).sum() <= 3  # and the margins are not weaker than PGD either


def test_worst_at_cost_interpolates_the_upper_envelope():
    rows = pd.DataFrame({"checkpoint": "a", "average": [70.0, 69.0, 68.0, 66.0], "worst": [20.0, 30.0, 28.0, 40.0]})
    assert worst_at_cost(rows, "a", 69.5) == pytest.approx(25.0)
    # the dominated (68, 28) is not the frontier: between (69, 30) and (66, 40)
    assert worst_at_cost(rows, "a", 67.0) == pytest.approx(30 + 10 * 2 / 3)
    assert np.isnan(worst_at_cost(rows, "a", 71.0))


@pytest.fixture
def instrumented_test_split(monkeypatch):
    """Records every read of a test-split image while the frontier's fit runs."""
    from classrobust.data.base import ImageTensorDataset
    import classrobust.defenses.frontier as frontier

    reads = {"fitting": False, "test_reads_while_fitting": 0, "val_reads_while_fitting": 0}
    original_get, original_fit = ImageTensorDataset.__getitem__, frontier.fit_frontier

    def getitem(self, index):
        if reads["fitting"]:
            key = "test_reads_while_fitting" if self.split == "test" else "val_reads_while_fitting"
            reads[key] += 1
        return original_get(self, index)

    def fit(*args, **kwargs):
        reads["fitting"] = True
        try:
            return original_fit(*args, **kwargs)
        finally:
            reads["fitting"] = False

    monkeypatch.setattr(ImageTensorDataset, "__getitem__", getitem)
    monkeypatch.setattr(frontier, "fit_frontier", fit)
    return reads


def test_frontier_end_to_end_never_reads_the_test_split_while_fitting(trained_run, tmp_path, capsys,
                                                                       instrumented_test_split):
    out = tmp_path / "frontier"
    args = ["frontier", "--checkpoint", trained_run, "--out", out, "--attacks", "pgd:steps=3", "--allowances", "0,2,10",
            "--val-size", "60", "--fit-steps", "3", "--fit-targets", "3", "--limit", "40", "--no-progress"]
    code, stdout, err = run(args, capsys)
    assert code == 0, err
    assert instrumented_test_split["val_reads_while_fitting"] > 0
    assert instrumented_test_split["test_reads_while_fitting"] == 0
    record = json.loads((out / "frontier.json").read_text())
    rows = frontier_rows(record)
    assert len(rows) == 4 and rows["allowance"].isna().sum() == 1  # uncalibrated + 3 allowances
    val = rows.dropna(subset=["allowance"]).sort_values("allowance")
    assert val["val_worst"].is_monotonic_increasing  # the fit's own estimate is monotone
    for name in ("frontier.csv", "frontier.png", "frontier.md"):
        assert (out / name).is_file()
    assert "pgd: eps" in (out / "frontier.md").read_text() and "validation images" in stdout
    # a rerun continues (nothing left to evaluate); other settings are refused, nothing is mixed
    code, _, err = run(args, capsys)
    assert code == 0 and "continuing (4 evaluations done)" in _
    code, _, err = run([a if a != "0,2,10" else "0,3" for a in args], capsys)
    assert code == 2 and "other checkpoints or settings" in err


def test_frontier_refusals(trained_run, tmp_path, capsys):
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("mine")
    code, _, err = run(["frontier", "--checkpoint", trained_run, "--out", tmp_path / "theirs"], capsys)
    assert code == 2 and "did not write" in err and (tmp_path / "theirs" / "notes.txt").read_text() == "mine"
    code, _, err = run(["frontier", "--checkpoint", trained_run, trained_run, "--out", tmp_path / "x"], capsys)
    assert code == 2 and "twice" in err
    code, _, err = run(["frontier", "--checkpoint", trained_run, "--allowances", "-1"], capsys)
    assert code == 2 and "allowances" in err and "\n" == err[-1] and err.count("\n") == 1
