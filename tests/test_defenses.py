"""Class-wise defenses: inference-phase calibration and the training-phase levers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import TRAIN, run


@pytest.fixture
def trained_run(synthetic_env, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run([*TRAIN, "--epochs", "2", "--out", out], capsys)
    assert code == 0, err
    return out


def test_search_adjustment_raises_the_worst_class_within_the_budget():
    from classrobust.defenses.calibrate import _accuracies, search_adjustment

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


def test_search_adjustment_fits_a_temperature_where_an_offset_cannot_help():
    """Class 2's own logit is positive on its points and its rival is just ahead, while on the
    other classes' points its logit is negative but close to theirs: an offset on class 2 also
    flips those points, a temperature below 1 on class 2 does not (it pushes negatives down)."""
    from classrobust.defenses.calibrate import _accuracies, search_adjustment

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 100)

    def noise():
        return 0.15 * rng.normal(size=300)

    own = np.where(y == 2, 1.0, 0.3) + noise()
    logits = np.stack([np.where(y == 0, own, -1.0 + noise()), np.where(y == 1, own, -1.0 + noise()),
                       np.where(y == 2, own, -0.1 + noise())], axis=1)
    logits[y == 2, 0] = 1.1 + noise()[:100]
    per0, avg0 = _accuracies(logits, logits, y, np.zeros(3), np.ones(3), 3)
    offsets, temps = search_adjustment(logits, logits, y, 3, avg0 - 0.01, np.zeros(3), np.ones(3))
    per_offsets = _accuracies(logits, logits, y, offsets, temps, 3)[0]
    offsets, temps = search_adjustment(logits, logits, y, 3, avg0 - 0.01, np.zeros(3), np.ones(3),
                                       fit_temperature=True)
    per, avg = _accuracies(logits, logits, y, offsets, temps, 3)
    assert per0.argmin() == 2 and temps[2] < 0.8 and temps[0] == temps[1] == 1
    assert per.min() > per_offsets.min() + 0.1 and avg >= avg0 - 0.01


@pytest.mark.parametrize("fit", ["margins", "pgd-refit"])
def test_calibrate_end_to_end(fit, trained_run, tmp_path, capsys, monkeypatch):
    import classrobust.data as data
    from classrobust.checkpoint import load_checkpoint
    from classrobust.evaluate.sharded import evaluate_dataset
    from classrobust.attacks.pgd import PGD
    from classrobust.data import run_splits
    from classrobust.training import TrainConfig

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
                             "--max-avg-drop", "5", "--fit", fit, "--targets", "4"], capsys)
    assert code == 0, err
    assert splits and set(splits) == {"train"}  # the test split is never read
    assert (src.read_bytes(), (trained_run / "model.json").read_bytes()) == before  # the input is untouched
    model, meta = load_checkpoint(out)
    cal = meta["calibration"]
    assert cal["fitted_on"] == "validation" and len(cal["offsets"]) == 10
    assert cal["seconds"] > 0  # what the fit cost, for an experiment's budget
    assert torch.allclose(model.offsets, torch.tensor(cal["offsets"]))
    # attacked end to end with the adjustment inside, the validation numbers are those reported
    _, val = run_splits(TrainConfig.from_dict(meta["config"]), val_size=60)
    steps = 3 if fit == "pgd-refit" else cal["measured_with"]["steps"]  # a margins fit is measured with PGD-10
    result = evaluate_dataset(model, val, {"pgd": PGD(model, eps=meta["eps"], steps=steps, seed=0, mode="best")},
                              progress=False)
    assert result.attacks["pgd"].accuracy == pytest.approx(cal["after"]["robust_accuracy"])
    assert result.attacks["pgd"].accuracy_per_class.tolist() == pytest.approx(cal["after"]["robust_per_class"])
    if fit == "pgd-refit":  # kept only when the re-attacked model is within the budget and better
        assert cal["after"]["robust_accuracy"] >= cal["before"]["robust_accuracy"] - 0.05 - 1e-9
        assert cal["after"]["worst_robust_accuracy"] >= cal["before"]["worst_robust_accuracy"]
    else:  # `calibrate` is the frontier's one-point case: the same offsets as its fit at this allowance
        from classrobust.defenses.frontier import fit_frontier

        base, _ = load_checkpoint(src)
        frontier = fit_frontier(base, val, eps=meta["eps"], allowances=(5.0,), steps=3, n_targets=4, log=lambda m: None)
        assert cal["offsets"] == pytest.approx(frontier.offsets[0])
        assert cal["attack"]["name"] == "targeted-margins" and cal["fit"] == "margins"
    # the calibrated checkpoint goes through eval like any other
    code, _, err = run(["eval", "--checkpoint", out, "--attacks", "fgsm", "--no-progress", "--no-report",
                        "--out", tmp_path / "eval"], capsys)
    assert code == 0, err


def test_calibrate_takes_its_allowance_in_points(tiny_model):
    from classrobust.defenses.calibrate import calibrate
    from classrobust.errors import UsageError

    with pytest.raises(UsageError, match=r"max average drop must be in \[0, 100\) points, got 150"):
        calibrate(tiny_model, None, eps=0.1, max_avg_drop=150.0)


def test_calibrate_refuses_to_overwrite(trained_run, tmp_path, capsys):
    src = trained_run / "model.safetensors"
    code, _, err = run(["calibrate", "--checkpoint", src, "--out", src], capsys)
    assert code == 2 and "is the input checkpoint" in err
    (tmp_path / "exists.safetensors").write_bytes(b"keep me")
    code, _, err = run(["calibrate", "--checkpoint", src, "--out", tmp_path / "exists.safetensors"], capsys)
    assert code == 2 and "already exists" in err
    assert (tmp_path / "exists.safetensors").read_bytes() == b"keep me"


# -- training-phase levers ---------------------------------------------------------
def test_reweight_raises_the_weak_classes():
    from classrobust.defenses.levers import Reweight

    lever = Reweight(3, strength=2.0, smoothing=0.5)
    lever.end_epoch(epoch=1, train_robust=np.full(3, 0.5), val_clean=np.ones(3), val_robust=np.array([0.2, 0.8, 0.5]),
                    model=None)
    w = lever.weights
    assert w[0] > w[2] > w[1] and w.mean() == pytest.approx(1.0)
    first = w.copy()
    lever.end_epoch(epoch=2, train_robust=np.full(3, 0.5), val_clean=np.ones(3),
                    val_robust=np.array([0.2, 0.8, 0.5]), model=None)
    assert lever.weights[0] > first[0]  # smoothing: the same gap pushes further, gradually
    full = Reweight(3, strength=2.0, smoothing=0.0)
    full.end_epoch(epoch=1, train_robust=None, val_clean=None, val_robust=np.array([0.2, 0.8, np.nan]), model=None)
    assert np.isfinite(full.weights).all()  # a class without validation samples (dropped) gets the mean


def test_class_eps_follows_training_robust_accuracy():
    from classrobust.defenses.levers import ClassEps

    lever = ClassEps(3, lam=0.5, beta_lam=0.3)
    assert np.all(lever.eps_scale == 1)  # before any epoch: the nominal budget
    lever.end_epoch(epoch=1, train_robust=np.array([0.1, 0.9, 0.5]), val_clean=None, val_robust=None, model=None)
    assert lever.eps_scale == pytest.approx([0.6, 1.4, 1.0])
    assert lever.reg_weights == pytest.approx([0.4, 1.2, 0.8])


def test_frl_penalises_violating_classes():
    from classrobust.defenses.levers import FRL

    lever = FRL(3, tau=0.0, weight_step=1.0, eps_step=0.5)
    # class 0: high natural error; class 2: large boundary error (clean right, attacked wrong)
    lever.end_epoch(epoch=1, train_robust=None, val_clean=np.array([0.5, 0.9, 0.9]),
                    val_robust=np.array([0.4, 0.8, 0.3]), model=None)
    assert lever.lam_nat[0] > 0 and lever.lam_nat[1] == 0 and lever.lam_nat[2] == 0
    assert lever.lam_bndy[2] > 0 and lever.lam_bndy[0] == 0
    assert lever.eps_scale[2] > 1 > lever.eps_scale[0]
    assert lever.weights.mean() == pytest.approx(1.0) and lever.weights[1] == lever.weights.min()


def test_fawa_admits_only_good_epochs():
    from classrobust.defenses.levers import FAWA

    model = torch.nn.Linear(2, 2, bias=False)
    lever = FAWA(2, decay=0.5, threshold=0.3, start_epoch=1)
    with torch.no_grad():
        model.weight.fill_(1.0)
    lever.after_step(model)  # EMA starts from the current weights
    lever.end_epoch(epoch=1, val_robust=np.array([0.5, 0.4]))  # admitted
    assert lever.admitted == [1] and torch.equal(lever.final_weights()[0]["weight"], torch.ones(2, 2))
    with torch.no_grad():
        model.weight.fill_(3.0)
    lever.after_step(model)
    assert torch.equal(lever.candidate["weight"], torch.full((2, 2), 2.0))  # 0.5 * 1 + 0.5 * 3
    lever.end_epoch(epoch=2, val_robust=np.array([0.1, 0.9]))  # worst class below the threshold: discarded
    assert lever.admitted == [1] and torch.equal(lever.final_weights()[0]["weight"], torch.ones(2, 2))


def test_weighted_pgd_at_and_trades_losses():
    from classrobust.training.methods.base import weighted_mean
    from classrobust.training.methods.trades import kl_per_sample, trades_loss

    per = torch.tensor([1.0, 2.0, 3.0])
    assert float(weighted_mean(per, {"weights": torch.tensor([2.0, 0.0, 1.0])}, "weights")) == pytest.approx(5 / 3)
    assert float(weighted_mean(per, None, "weights")) == pytest.approx(2.0)
    clean, adv, y = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    terms = {"weights": torch.ones(4), "reg_weights": torch.tensor([0.0, 0.0, 0.0, 4.0])}
    log_c, log_a = torch.log_softmax(clean, 1), torch.log_softmax(adv, 1)
    expected = torch.nn.functional.nll_loss(log_c, y) + 6.0 * (4.0 * kl_per_sample(log_c, log_a)[3]) / 4
    assert float(trades_loss(clean, adv, y, 6.0, terms)) == pytest.approx(float(expected), rel=1e-5)


def test_per_sample_eps_equals_separate_attacks(tiny_model):
    from classrobust.attacks.pgd import PGD

    x = torch.rand(5, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 3, 0])
    eps = torch.tensor([0.0, 0.01, 0.03, 0.05, 0.1])
    together = PGD(tiny_model, eps=eps, steps=4, mode="last")(x, y)
    assert torch.allclose((together - x).abs().flatten(1).amax(1), eps, atol=1e-6)
    for i in range(5):
        alone = PGD(tiny_model, eps=float(eps[i]), steps=4, mode="last")(x[i:i + 1], y[i:i + 1])
        assert torch.allclose(alone, together[i:i + 1], atol=1e-6)
    with pytest.raises(Exception, match="mode='last'"):
        PGD(tiny_model, eps=eps, steps=4, mode="best")


@pytest.mark.parametrize("argv, message", [
    (["--classwise", "reweight,frl"], "reweight and frl cannot be combined"),
    (["--classwise", "class-eps,frl"], "class-eps and frl cannot be combined"),
    (["--classwise", "fawa", "--select", "avg"], "use it with --select last"),
    (["--classwise", "reweight", "--method", "mart"], "training method 'mart' does not support class-wise levers"),
    (["--classwise", "reweight:strenght=2"], "has no parameter 'strenght'"),
    (["--classwise", "rewieght"], "unknown class-wise lever 'rewieght'"),
])
def test_meaningless_lever_combinations_are_refused(argv, message, synthetic_env, tmp_path, capsys):
    code, _, err = run([*TRAIN, *argv, "--out", tmp_path / "run"], capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_levers_change_their_terms_through_the_loop(synthetic_env, tmp_path, capsys):
    import pandas as pd

    out = tmp_path / "run"
    code, _, err = run([*TRAIN, "--epochs", "3", "--classwise", "reweight:strength=3,class-eps,fawa:start_epoch=1",
                        "--out", out], capsys)
    assert code == 0, err
    log = pd.read_csv(out / "train_log.csv")
    log = log[log.class_index >= 0]
    first = log[log.epoch == 1]
    assert (first["weights"] == 1).all() and (first["eps_scale"] == 1).all()  # nothing known before epoch 1
    later = log[log.epoch == 3]
    assert later["weights"].std() > 0 and later["eps_scale"].std() > 0
    # epoch 3's weights follow epoch 2's validation accuracy: the weakest class weighs most
    e2 = log[log.epoch == 2].set_index("class_index")["val_pgd_accuracy"]
    assert later.set_index("class_index")["weights"].idxmax() in set(e2[e2 == e2.min()].index)
    meta = json.loads((out / "model.json").read_text())
    assert meta["classwise"]["spec"].startswith("reweight") and meta["classwise"]["fawa_admitted_epochs"]


def test_dafa_weights_move_weight_from_easy_to_similar_hard_classes():
    from classrobust.defenses.levers import dafa_weights

    # class 0 is hard and confused mostly with class 1 (easy); class 2 is easy and apart
    p = np.array([[0.5, 0.4, 0.1],
                  [0.1, 0.8, 0.1],
                  [0.05, 0.05, 0.9]])
    w = dafa_weights(p, lam=1.0)
    # by hand: w_i = 1 + sum_{j != i} (+1 if p_ii < p_jj else -1) * p_ij * p_jj
    expected = [1 + 0.4 * 0.8 + 0.1 * 0.9, 1 - 0.1 * 0.5 + 0.1 * 0.9, 1 - 0.05 * 0.5 - 0.05 * 0.8]
    assert w == pytest.approx(expected)
    assert w[0] == w.max()  # the hard class gains, most from its similar (confusing) class
    assert dafa_weights(p, lam=0.0) == pytest.approx(np.ones(3))
    with_missing = np.vstack([p, np.full(3, np.nan)])[:, :3]  # a 4th class without samples
    w4 = dafa_weights(np.pad(with_missing, ((0, 0), (0, 1))), lam=1.0)
    assert w4[3] == 1.0 and w4[:3] == pytest.approx(expected)  # it neither gains nor shifts anybody


def test_dafa_sets_weights_and_margins_once_at_its_warmup_epoch():
    from classrobust.defenses.levers import DAFA
    from classrobust.errors import UsageError

    lever = DAFA(3, lam=1.0, warmup_epoch=2)
    assert [lever.needs_train_probs(e, 5) for e in (1, 2, 3)] == [False, True, False]
    p = np.array([[0.5, 0.4, 0.1], [0.1, 0.8, 0.1], [0.05, 0.05, 0.9]])
    lever.end_epoch(epoch=1, epochs=5, val_robust=None)
    assert np.all(lever.weights == 1) and np.all(lever.eps_scale == 1)
    lever.end_epoch(epoch=2, epochs=5, train_probs=p)
    assert lever.weights[0] > 1 and np.array_equal(lever.eps_scale, lever.weights)
    restored = DAFA(3, lam=1.0, warmup_epoch=2)
    restored.load_state(lever.state())
    assert np.array_equal(restored.weights, lever.weights) and np.array_equal(restored.similarity, p)
    assert not restored.needs_train_probs(2, 5)  # a resumed run does not collect again
    assert DAFA(3).needs_train_probs(13, 20) and DAFA(3)._warmup(110) == 72  # default: 65% of the run
    weights_only = DAFA(3, warmup_epoch=1, margin=False)
    weights_only.end_epoch(epoch=1, epochs=3, train_probs=p)
    assert np.all(weights_only.eps_scale == 1) and weights_only.provides == {"weights"}
    floored = DAFA(3, lam=20.0, warmup_epoch=1, min_weight=0.05)  # class 2: 1 - 20 * 0.065 < 0
    floored.end_epoch(epoch=1, epochs=3, train_probs=p)
    assert floored.weights.min() == 0.05
    with pytest.raises(UsageError, match="before the last epoch"):
        DAFA(3, warmup_epoch=5).check(epochs=5)


def test_wat_weights_follow_the_cumulative_worst_class():
    from classrobust.defenses.levers import WAT

    lever = WAT(3, eta=2.0)
    lever.end_epoch(val_robust=np.array([0.5, 0.5, 0.5]))
    assert lever.weights == pytest.approx(np.ones(3))  # equal costs: uniform, mean 1
    lever.end_epoch(val_robust=np.array([0.2, 0.6, 0.7]))
    w1 = lever.weights.copy()
    assert w1[0] > w1[1] > w1[2] and w1.mean() == pytest.approx(1.0)
    # Hedge by hand: experts = classes + their average, weights ~ exp(eta * cumulative error)
    cum = np.array([0.5 + 0.8, 0.5 + 0.4, 0.5 + 0.3])
    cum = np.append(cum, cum.mean())
    q = np.exp(2.0 * cum)
    q = 3 * q / q.sum()
    assert lever.expert_weights == pytest.approx(q)
    by_hand = q[:3] + q[3]
    assert w1 == pytest.approx(by_hand / by_hand.mean())
    lever.end_epoch(val_robust=np.array([0.9, 0.2, 0.7]))  # class 0 recovers: the game follows the sum
    assert lever.weights[1] > w1[1]
    restored = WAT(3, eta=2.0)
    restored.load_state(lever.state())
    restored.end_epoch(val_robust=np.array([0.5, 0.5, 0.5]))
    lever.end_epoch(val_robust=np.array([0.5, 0.5, 0.5]))
    assert restored.weights == pytest.approx(lever.weights)  # the cumulative costs survive a resume


@pytest.mark.parametrize("spec, message", [
    ("dafa,reweight", "dafa and reweight cannot be combined: both set the per-class loss weights"),
    ("wat,frl", "wat and frl cannot be combined: both set the per-class loss weights"),
    ("dafa,class-eps", "dafa and class-eps cannot be combined: both set the per-class budgets"),
    ("dafa:warmup_epoch=3", "dafa's warmup_epoch (3) must come before the last epoch (3)"),
])
def test_new_levers_refuse_what_would_clash(spec, message, synthetic_env, tmp_path, capsys):
    code, _, err = run([*TRAIN, "--epochs", "3", "--classwise", spec, "--out", tmp_path / "run"], capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_dafa_collects_the_class_similarity_in_the_loop(synthetic_env, tmp_path, capsys, monkeypatch):
    """The loop hands DAFA, at its warm-up epoch only, the per-class mean softmax of the trained-on
    inputs; the next epochs train with the weights and margins computed from it (logged per class)."""
    import pandas as pd

    from classrobust.defenses.levers import DAFA, dafa_weights

    seen = []
    original = DAFA.end_epoch

    def spy(self, **stats):
        seen.append((stats["epoch"], stats.get("train_probs")))
        return original(self, **stats)

    monkeypatch.setattr(DAFA, "end_epoch", spy)
    out = tmp_path / "run"
    code, _, err = run([*TRAIN, "--epochs", "3", "--classwise", "dafa:warmup_epoch=1,wat", "--out", out], capsys)
    assert code == 2 and "both set the per-class loss weights" in err  # (wat clashes; now without it)
    code, _, err = run([*TRAIN, "--epochs", "3", "--classwise", "dafa:warmup_epoch=1,fawa:start_epoch=1",
                        "--out", out], capsys)
    assert code == 0, err
    assert [e for e, _ in seen] == [1, 2, 3] and seen[1][1] is None and seen[2][1] is None
    probs = seen[0][1]
    k = probs.shape[0]
    assert probs.shape == (k, k) and np.allclose(probs.sum(1), 1.0)  # rows: mean probability vectors
    log = pd.read_csv(out / "train_log.csv")
    log = log[log.class_index >= 0]
    assert (log[log.epoch == 1]["weights"] == 1).all()
    for epoch in (2, 3):  # fixed after the warm-up: weights from the collected similarity, margins = weights
        terms = log[log.epoch == epoch].sort_values("class_index")
        np.testing.assert_allclose(terms["weights"], np.maximum(dafa_weights(probs, 1.0), 0.05), rtol=1e-6)
        np.testing.assert_allclose(terms["eps_scale"], terms["weights"], rtol=1e-6)


def test_wat_trains_with_trades_as_the_confirmation_runs_it(synthetic_env, tmp_path, capsys):
    """The confirmation carries the screen's `wat` over to TRADES: it trains, and from the second epoch
    its per-class weights (mean 1) differ between classes, logged per epoch."""
    import pandas as pd

    out = tmp_path / "run"
    code, _, err = run([*TRAIN, "--epochs", "3", "--method", "trades:beta=6", "--classwise", "wat:eta=0.3",
                        "--out", out], capsys)
    assert code == 0, err
    log = pd.read_csv(out / "train_log.csv")
    log = log[log.class_index >= 0]
    assert (log[log.epoch == 1]["weights"] == 1).all()
    for epoch in (2, 3):
        weights = log[log.epoch == epoch]["weights"]
        assert weights.mean() == pytest.approx(1.0, abs=1e-5) and weights.std() > 0
