"""Class-wise defenses: inference-phase calibration and the training-phase levers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from classrobust.cli.main import main
from test_cli import TRAIN, run


@pytest.fixture
def trained_run(synthetic_env, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run([*TRAIN, "--epochs", "2", "--out", out], capsys)
    assert code == 0, err
    return out


def test_search_adjustment_raises_the_worst_class_within_the_budget():
    from classrobust.training.calibrate import _accuracies, search_adjustment

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 100)
    clean = rng.normal(size=(300, 3)) + 2.0 * np.eye(3)[y]
    clean[y == 2, 2] -= 1.8  # class 2 is the weak one
    adv = clean - 0.8 * np.eye(3)[y]
    per0, avg0 = _accuracies(clean, adv, y, np.zeros(3), np.ones(3), 3)
    offsets, temps = search_adjustment(clean, adv, y, 3, avg0 - 0.01, np.zeros(3), np.ones(3))
    per, avg = _accuracies(clean, adv, y, offsets, temps, 3)
    assert per0.argmin() == 2 and offsets[2] > 0 and offsets[2] == offsets.max()
    assert per.min() > per0.min() + 0.05 and avg >= avg0 - 0.01
    assert np.all(temps == 1)
    _, temps = search_adjustment(clean, adv, y, 3, avg0 - 0.01, np.zeros(3), np.ones(3), fit_temperature=True)
    assert temps.min() <= 1


def test_calibrate_end_to_end(trained_run, tmp_path, capsys, monkeypatch):
    import classrobust.data as data
    from classrobust.checkpoint import load_checkpoint
    from classrobust.evaluate.sharded import evaluate_dataset
    from classrobust.attacks.pgd import PGD
    from classrobust.training.calibrate import validation_split

    splits = []
    real = data.get_dataset

    def recording(name, split, *a, **k):
        splits.append(split)
        return real(name, split, *a, **k)

    monkeypatch.setattr(data, "get_dataset", recording)
    src = trained_run / "model.safetensors"
    before = src.read_bytes(), (trained_run / "model.json").read_bytes()
    out = tmp_path / "calibrated.safetensors"
    code, stdout, err = run(["calibrate", "--checkpoint", src, "--out", out, "--val-size", "60", "--steps", "3",
                             "--max-avg-drop", "5"], capsys)
    assert code == 0, err
    assert splits and set(splits) == {"train"}  # the test split is never read
    assert (src.read_bytes(), (trained_run / "model.json").read_bytes()) == before  # the input is untouched
    model, meta = load_checkpoint(out)
    cal = meta["calibration"]
    assert cal["fitted_on"] == "validation" and len(cal["offsets"]) == 10
    assert torch.allclose(model.offsets, torch.tensor(cal["offsets"]))
    # attacked end to end with the adjustment inside, the validation numbers are those reported
    val = validation_split(meta, 60)
    result = evaluate_dataset(model, val, {"pgd": PGD(model, eps=meta["eps"], steps=3, seed=0, mode="best")},
                              progress=False)
    assert result.attacks["pgd"].accuracy == pytest.approx(cal["after"]["robust_accuracy"])
    assert result.attacks["pgd"].accuracy_per_class.tolist() == pytest.approx(cal["after"]["robust_per_class"])
    assert cal["after"]["robust_accuracy"] >= cal["before"]["robust_accuracy"] - 0.05 - 1e-9
    assert cal["after"]["worst_robust_accuracy"] >= cal["before"]["worst_robust_accuracy"]
    # the calibrated checkpoint goes through eval like any other
    code, _, err = run(["eval", "--checkpoint", out, "--attacks", "fgsm", "--no-progress", "--no-report",
                        "--out", tmp_path / "eval"], capsys)
    assert code == 0, err


def test_calibrate_refuses_to_overwrite(trained_run, tmp_path, capsys):
    src = trained_run / "model.safetensors"
    code, _, err = run(["calibrate", "--checkpoint", src, "--out", src], capsys)
    assert code == 2 and "is the input checkpoint" in err
    (tmp_path / "exists.safetensors").write_bytes(b"keep me")
    code, _, err = run(["calibrate", "--checkpoint", src, "--out", tmp_path / "exists.safetensors"], capsys)
    assert code == 2 and "already exists" in err
    assert (tmp_path / "exists.safetensors").read_bytes() == b"keep me"
