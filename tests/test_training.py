"""Training methods, schedules, model selection, resume after SIGKILL, and DDP under torchrun."""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from classrobust.cli.main import main
from classrobust.training import METHODS, TrainConfig
from classrobust.training.methods.mart import mart_loss
from classrobust.training.methods.trades import trades_loss
from classrobust.training.schedules import lr_multiplier
from classrobust.runtime import Runtime
from conftest import TRAIN

LOGITS_CLEAN = [[2.0, 0.0], [0.0, 1.0]]
LOGITS_ADV = [[1.0, 1.0], [0.0, 2.0]]
Y = [0, 1]


def softmax(z):
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def test_trades_loss_by_hand():
    beta = 2.0
    ce = sum(-math.log(softmax(z)[t]) for z, t in zip(LOGITS_CLEAN, Y)) / 2
    kl = sum(sum(p * math.log(p / q) for p, q in zip(softmax(zc), softmax(za)))
             for zc, za in zip(LOGITS_CLEAN, LOGITS_ADV)) / 2
    got = trades_loss(torch.tensor(LOGITS_CLEAN), torch.tensor(LOGITS_ADV), torch.tensor(Y), beta)
    assert float(got) == pytest.approx(ce + beta * kl, rel=1e-6)


def test_mart_loss_by_hand():
    beta = 3.0
    total = 0.0
    for zc, za, t in zip(LOGITS_CLEAN, LOGITS_ADV, Y):
        pa, pc = softmax(za), softmax(zc)
        other = max(p for k, p in enumerate(pa) if k != t)
        bce = -math.log(pa[t]) - math.log(1 - other)
        kl = sum(p * math.log(p / q) for p, q in zip(pc, pa))
        total += bce + beta * kl * (1 - pc[t])
    got = mart_loss(torch.tensor(LOGITS_CLEAN), torch.tensor(LOGITS_ADV), torch.tensor(Y), beta)
    assert float(got) == pytest.approx(total / 2, rel=1e-6)


@pytest.mark.parametrize("name", METHODS.names())
def test_each_method_improves_its_own_objective(name, fmnist_test_subset):
    from classrobust.models import create_model

    torch.manual_seed(0)
    model = create_model("smallcnn", "fashion-mnist", dropout=0.0).train()
    method = METHODS.build(name, attack_steps=2, alpha=None, precision="fp32")
    x, y = fmnist_test_subset[torch.arange(0, 600, 5)]  # 120 images, 12 per class
    # lr 0.02: at 0.01 MART's objective first rises; at 0.05 standard training's first steps
    # overshoot on a single batch of 256 (measured then; 120 images since, for the suite's time)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    before = float(method.loss(model, x, y, eps=0.1, seed=1)[0].detach())
    for step in range(40):
        loss, _ = method.loss(model, x, y, eps=0.1, seed=100 + step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = float(method.loss(model, x, y, eps=0.1, seed=1)[0].detach())
    assert model.training
    assert after < before - 0.1, (before, after)
    # the objective is the adversarial one: a method that ignored its inner attack would score the
    # same at eps 0.1 as at eps 0 (only standard training does)
    at_zero = float(method.loss(model, x, y, eps=0.0, seed=1)[0].detach())
    if name == "standard":
        assert after == pytest.approx(at_zero)
    else:
        assert after > at_zero + 0.05, (after, at_zero)


def test_method_specs_are_parsed_checked_and_spelled_one_way():
    from classrobust.errors import UsageError

    config = TrainConfig(method="trades:beta=1.0")
    assert (config.method, config.method_name, config.method_kwargs) == ("trades:beta=1", "trades", {"beta": 1.0})
    assert TrainConfig(method="trades:beta=6").method == "trades"  # the default: one run, one spelling
    assert TrainConfig(method="mart:beta=8/2").method_kwargs == {"beta": 4.0}
    assert TrainConfig(method="pgd-at").method_kwargs == {}
    with pytest.raises(UsageError, match=r"'pgd-at' has no parameter 'beta'; valid: $"):
        TrainConfig(method="pgd-at:beta=1")  # the loop's own settings (attack_steps, ...) are not offered
    with pytest.raises(UsageError, match=r"'trades' has no parameter 'attack_steps'; valid: beta$"):
        TrainConfig(method="trades:attack_steps=3")
    with pytest.raises(UsageError, match="did you mean 'trades'"):
        TrainConfig(method="trade:beta=1")
    with pytest.raises(UsageError, match="trades: beta must be >= 0, got -1"):
        METHODS.build("trades", attack_steps=1, alpha=None, precision="fp32", beta=-1.0)
    with pytest.raises(UsageError, match="must be a number"):
        TrainConfig(method="trades:beta=high")
    with pytest.raises(UsageError, match="names one method"):
        TrainConfig(method="trades,mart")


def test_configs_saved_with_a_beta_field_still_load_as_the_same_run():
    legacy = {**TrainConfig().to_dict(), "method": "trades", "beta": 1.0}
    assert TrainConfig.from_dict(legacy).method == "trades:beta=1"
    assert TrainConfig(method="trades:beta=1").differences(legacy) == []
    assert TrainConfig(method="trades").differences({**legacy, "beta": 6.0}) == []
    assert TrainConfig(method="trades").differences(legacy) == ["method"]
    assert TrainConfig.from_dict({**legacy, "method": "pgd-at"}).method == "pgd-at"  # no beta to carry


def test_a_method_with_its_settings_trains_with_them(synthetic_env, tmp_path, monkeypatch):
    from classrobust.training.methods.trades import TRADES

    seen = []
    real = TRADES.__init__

    @functools.wraps(real)  # keeps the signature the registry reads
    def spy(self, **kwargs):
        seen.append(kwargs["beta"])
        real(self, **kwargs)

    monkeypatch.setattr(TRADES, "__init__", spy)
    assert main([*TRAIN, "--method", "trades:beta=2", "--out", str(tmp_path / "r")]) == 0
    assert seen == [2.0]
    assert json.loads((tmp_path / "r/model.json").read_text())["config"]["method"] == "trades:beta=2"


def test_derived_seeds_are_the_ones_every_result_was_made_with():
    """One helper derives every stream's seed (loader order, inner attack, restarts); the values must
    stay those of the formulas the committed results used."""
    from classrobust.runtime import derive_seed

    assert derive_seed(3, "epoch_order", 5) == 3 * 100_003 + 5
    assert derive_seed(2, "training_step", 11, 1) == 2 * 1_000_003 + 11 * 7 + 1
    assert derive_seed(4, "restart", 2, 3) == 4 + 7919 * 2 + 104729 * 3
    assert derive_seed(4, "restart", 2) == 4 + 7919 * 2
    with pytest.raises(ValueError, match="at most 1"):
        derive_seed(0, "epoch_order", 1, 2)


def test_schedules():
    cyc = lr_multiplier("cyclic", 100)
    assert cyc(0) == 0 and cyc(40) == pytest.approx(1) and cyc(100) == 0 and cyc(70) == pytest.approx(0.5)
    pw = lr_multiplier("piecewise", 100, (0.5, 0.75), 0.1)
    assert (pw(49), pw(50), pw(75)) == (1, pytest.approx(0.1), pytest.approx(0.01))
    cos = lr_multiplier("cosine", 100)
    assert cos(0) == 1 and cos(50) == pytest.approx(0.5) and cos(100) == pytest.approx(0)
    warm = lr_multiplier("constant", 100, warmup_steps=10)
    assert warm(0) == pytest.approx(0.1) and warm(9) == 1 and warm(50) == 1


def test_config_validation_and_differences():
    from classrobust.errors import UsageError

    with pytest.raises(UsageError, match="select must be one of"):
        TrainConfig(select="best")
    assert TrainConfig(lr=0.1).differences(TrainConfig(lr=0.2, epochs=3).to_dict()) == ["epochs", "lr"]
    assert TrainConfig(workers=2).differences(TrainConfig().to_dict()) == []  # never changes the result


def test_loader_workers_give_the_same_weights(synthetic_env, tmp_path):
    # two epochs with a dropout model: the batches (and the global RNG stream the dropout masks come
    # from) must not depend on the worker processes. tqdm.auto's class once called iter() on the
    # loader when built, and a multi-worker iterator prefetches, advancing the sampler: the epoch
    # then saw another permutation.
    runs = {}
    for workers in (0, 2):
        out = tmp_path / f"w{workers}"
        assert main([*TRAIN, "--epochs", "2", "--workers", str(workers), "--out", str(out)]) == 0
        runs[workers] = _weights(out)
    assert json.loads((tmp_path / "w2" / "model.json").read_text())["config"]["workers"] == 2
    for name, tensor in runs[0].items():
        assert torch.equal(tensor, runs[2][name]), name


def test_grad_clip_bounds_every_step(synthetic_env, tmp_path):
    """--grad-clip clips the gradient before each step: clipped to 1e-9 (no weight decay) the weights
    stay where the seed put them; unclipped, the same run moves them."""
    from classrobust.training import loop

    argv = [*TRAIN, "--weight-decay", "0"]
    assert main([*argv, "--grad-clip", "1e-9", "--out", str(tmp_path / "clipped")]) == 0
    assert main([*argv, "--out", str(tmp_path / "free")]) == 0
    saved = json.loads((tmp_path / "clipped" / "model.json").read_text())["config"]
    assert saved["grad_clip"] == 1e-9
    init = loop._prepare(TrainConfig.from_dict(saved), tmp_path / "init", None, False).net.state_dict()
    clipped, free = _weights(tmp_path / "clipped"), _weights(tmp_path / "free")
    # 6 steps of lr 0.02 with a momentum buffer below 10 x 1e-9: far below 1e-6
    assert max(float((clipped[k] - init[k].cpu()).abs().max()) for k in clipped) < 1e-6
    assert max(float((free[k] - init[k].cpu()).abs().max()) for k in free) > 1e-3
    with pytest.raises(Exception, match="grad clip must be > 0"):
        TrainConfig(grad_clip=0.0)


@pytest.mark.parametrize("select", ["avg", "worst-class"])
def test_select_keeps_the_best_epoch(select, synthetic_env, tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TRAIN, "--epochs", "3", "--select", select, "--out", str(out)]) == 0
    log = pd.read_csv(out / "train_log.csv")
    per_epoch = (log[log.class_index == -1].set_index("epoch")["val_pgd_accuracy"] if select == "avg"
                 else log[log.class_index >= 0].groupby("epoch")["val_pgd_accuracy"].min())
    best = int(per_epoch.idxmax())  # first epoch among ties
    meta = json.loads((out / "model.json").read_text())
    assert meta["selected_epoch"] == best
    assert meta["metrics"]["val_pgd_accuracy"] == pytest.approx(
        log[(log.epoch == best) & (log.class_index == -1)]["val_pgd_accuracy"].iloc[0])


def _cli(args, env):
    return [sys.executable, "-m", "classrobust", *map(str, args)]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


@pytest.mark.parametrize("classwise", ["", "class-eps,fawa:start_epoch=1,dafa:warmup_epoch=1,margin=false"])
def test_kill_and_resume_gives_the_same_weights(classwise, synthetic_env, tmp_path):
    """Also with the class-wise levers, whose per-class state must survive the kill."""
    env = {**os.environ, "CLASSROBUST_SYSTEM_DATA": str(synthetic_env), "PYTHONUNBUFFERED": "1"}
    args = ["train", "--train-subset", "400", "--epochs", "4", "--batch-size", "40", "--attack-steps", "4",
            "--val-size", "60", "--precision", "fp32", "--lr", "0.02", "--no-progress", "--seed", "3",
            "--classwise", classwise]
    killed, ref = tmp_path / "killed", tmp_path / "ref"
    state = tmp_path / ".killed.partial" / "train_state.pt"
    proc = subprocess.Popen(_cli([*args, "--out", killed], env), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)  # right after epoch 1's state landed: mid-epoch 2
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not killed.exists(), "the run finished before the kill"
    saved_epoch = torch.load(state, weights_only=True)["epoch"]
    assert 1 <= saved_epoch < 4
    resumed = subprocess.run(_cli([*args, "--out", killed, "--resume"], env), env=env, capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {killed} after epoch {saved_epoch}" in resumed.stdout
    assert main([*args, "--out", str(ref)]) == 0
    a, b = _weights(killed), _weights(ref)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bitwise, fp32 on CPU
    pd.testing.assert_frame_equal(pd.read_csv(killed / "train_log.csv").drop(columns="seconds"),
                                  pd.read_csv(ref / "train_log.csv").drop(columns="seconds"))
    assert not (tmp_path / ".killed.partial").exists()


def test_resume_with_another_config_names_the_keys(synthetic_env, tmp_path, capsys, monkeypatch):
    import classrobust.training.loop as loop

    calls = {"n": 0}
    real = loop.validate

    def die_in_epoch_2(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(loop, "validate", die_in_epoch_2)
    assert main([*TRAIN, "--epochs", "3", "--out", str(tmp_path / "r")]) == 130
    monkeypatch.setattr(loop, "validate", real)
    code = main([*TRAIN, "--epochs", "3", "--lr", "0.1", "--batch-size", "60", "--out", str(tmp_path / "r"),
                 "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "config differs in batch_size, lr" in err
    assert main([*TRAIN, "--epochs", "3", "--out", str(tmp_path / "r"), "--resume"]) == 0
    assert "resuming" in capsys.readouterr().out


def test_torchrun_two_processes(synthetic_env, tmp_path):
    """DDP training on 2 CPU processes (gloo), and a sharded evaluation with exactly the counts
    of a single-process one."""
    env = {**os.environ, "CLASSROBUST_SYSTEM_DATA": str(synthetic_env), "OMP_NUM_THREADS": "1"}
    run = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "-m", "classrobust"]
    proc = subprocess.run([*torchrun, "train", "--train-subset", "300", "--epochs", "1", "--batch-size", "50",
                           "--attack-steps", "2", "--val-size", "100", "--no-progress", "--out", str(run)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((run / "model.json").read_text())
    assert meta["processes"] == 2
    log = pd.read_csv(run / "train_log.csv")
    # validation counts gathered from both shards: the whole split (60 of the generated 600 images)
    assert log[log.class_index >= 0]["n"].sum() == meta["val_size"] == 60
    ck = run / "model.safetensors"
    proc = subprocess.run([*torchrun, "eval", "--checkpoint", str(ck), "--attacks", "fgsm,pgd:steps=3,fmn:steps=5",
                           "--limit", "90", "--no-progress", "--no-report", "--out", str(tmp_path / "e2")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main(["eval", "--checkpoint", str(ck), "--attacks", "fgsm,pgd:steps=3,fmn:steps=5", "--limit", "90",
                 "--no-progress", "--no-report", "--out", str(tmp_path / "e1")]) == 0
    one = pd.read_csv(tmp_path / "e1" / "per_class.csv")
    two = pd.read_csv(tmp_path / "e2" / "per_class.csv")
    pd.testing.assert_frame_equal(one, two)
    s1 = pd.read_csv(tmp_path / "e1" / "samples.csv.gz")
    s2 = pd.read_csv(tmp_path / "e2" / "samples.csv.gz")
    pd.testing.assert_frame_equal(s1, s2)  # the minimal-norm distances gathered from both shards too
    assert "distance_fmn" in s2


def test_torchrun_levers_update_from_every_process(synthetic_env, tmp_path):
    """Under DDP each process sees half of each batch; the training statistics and the class-wise
    levers must use the counts of both (all-reduced), not the main process's half."""
    env = {**os.environ, "CLASSROBUST_SYSTEM_DATA": str(synthetic_env), "OMP_NUM_THREADS": "1"}
    run = tmp_path / "ddp-levers"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "classrobust", "train", "--train-subset", "300", "--epochs", "2",
                           "--batch-size", "50", "--attack-steps", "2", "--val-size", "100", "--classwise",
                           "class-eps", "--no-progress", "--out", str(run)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = pd.read_csv(run / "train_log.csv")
    per_class = log[log.class_index >= 0].sort_values(["epoch", "class_index"])
    first, second = per_class[per_class.epoch == 1], per_class[per_class.epoch == 2]
    assert first["n_train"].sum() == 300  # both processes' shards, not 150
    # class-eps sets each class's radius scale to lam (0.5) + its training robust accuracy
    np.testing.assert_allclose(second["eps_scale"].to_numpy(), 0.5 + first["train_accuracy"].to_numpy(),
                               rtol=1e-6)
    overall = log[(log.class_index == -1) & (log.epoch == 1)]["train_accuracy"].item()
    assert overall == pytest.approx((first["train_accuracy"] * first["n_train"]).sum() / 300)


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_through_the_cli(method, synthetic_env, tmp_path, capsys):
    out = tmp_path / method
    extra = ["--schedule", "cyclic"] if method == "fgsm-rs" else []
    assert main([*TRAIN, "--method", method, *extra, "--out", str(out)]) == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["config"]["method"] == method
    log = pd.read_csv(out / "train_log.csv")
    assert sorted(log["class_name"].unique()) == sorted([*meta["classes"], "all"])


def test_pgd_at_does_not_diverge_across_seeds(tmp_path):
    """Regression: with He-scaled initial logits, PGD-AT at lr 0.05 diverged within 10 steps on
    4 of 6 seeds; smallcnn now starts its last layer at zero."""
    from conftest import require_fmnist
    from classrobust.training import train

    require_fmnist()
    for seed in range(4):
        config = TrainConfig(train_subset=2560, epochs=1, batch_size=128, attack_steps=3, eps_warmup_epochs=1.0,
                             val_size=100, val_attack_steps=1, lr=0.05, model_kwargs={"dropout": 0.0}, seed=seed)
        train(config, tmp_path / f"s{seed}", runtime=Runtime(progress=False, log=lambda s: None))  # raises if it diverges
        log = pd.read_csv(tmp_path / f"s{seed}" / "train_log.csv")
        # finite throughout (what the regression was about; at this budget and lr the model need not learn:
        # seed 0 ends at 6% validation accuracy, a separate matter from divergence)
        assert np.isfinite(log[["train_loss", "val_clean_accuracy", "val_pgd_accuracy"]].to_numpy()).all()


def test_nan_loss_keeps_the_last_good_epoch_for_resume(synthetic_env, tmp_path, capsys, monkeypatch):
    from classrobust.training.methods.pgd_at import PGDAT

    real = PGDAT.loss
    calls = {"n": 0}

    def nan_in_epoch_2(self, model, x, y, *, eps, seed):
        calls["n"] += 1
        loss, logits = real(self, model, x, y, eps=eps, seed=seed)
        return (loss * float("nan"), logits) if calls["n"] > 8 else (loss, logits)  # 6 steps per epoch

    monkeypatch.setattr(PGDAT, "loss", nan_in_epoch_2)
    out = tmp_path / "r"
    assert main([*TRAIN, "--epochs", "3", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "training diverged at epoch 2" in err and "epoch 1 is kept" in err and "Traceback" not in err
    assert not out.exists()
    assert torch.load(tmp_path / ".r.partial" / "train_state.pt", weights_only=True)["epoch"] == 1
    monkeypatch.setattr(PGDAT, "loss", real)
    assert main([*TRAIN, "--epochs", "3", "--out", str(out), "--resume"]) == 0
    assert "resuming" in capsys.readouterr().out and (out / "model.safetensors").is_file()


def test_compile_option_trains(synthetic_env, tmp_path, capsys):
    from classrobust.checkpoint import load_checkpoint

    out = tmp_path / "compiled"
    assert main([*TRAIN, "--compile", "--precision", "fp32", "--out", str(out)]) == 0
    model, meta = load_checkpoint(out / "model.safetensors")
    assert meta["config"]["compile"] is True
    assert not any(k.startswith("_orig_mod") for k in model.state_dict())


def test_drop_classes_leaves_them_out_of_training_and_validation(synthetic_env, tmp_path, capsys):
    from classrobust.data import get_dataset
    from classrobust.data import without_classes

    train = get_dataset("fashion-mnist", "train")
    kept = without_classes(train, ("Shirt", "Coat"))
    assert len(kept) == len(train) - int(((train.targets == 6) | (train.targets == 4)).sum())
    assert not set(kept.targets.tolist()) & {4, 6}
    out = tmp_path / "run"
    assert main([*TRAIN, "--drop-classes", "Shirt,Coat", "--select", "worst-class", "--out", str(out)]) == 0
    log = pd.read_csv(out / "train_log.csv")
    assert set(log[log.n == 0]["class_name"]) == {"Shirt", "Coat"}
    meta = json.loads((out / "model.json").read_text())
    assert meta["config"]["drop_classes"] == ["Shirt", "Coat"] and len(meta["classes"]) == 10
    assert main([*TRAIN, "--drop-classes", "Shirts", "--out", str(tmp_path / "bad")]) == 2
    assert "cannot drop unknown class(es) 'Shirts'" in capsys.readouterr().err
