"""The CLI end to end on generated data, and every bad input it must refuse cleanly."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from classrobust import __version__
from classrobust.attacks import DEFAULT_TEMPERATURE
from classrobust.cli.main import main

from conftest import TRAIN, run


def test_train_then_eval(trained_run, tmp_path, capsys):
    assert {p.name for p in trained_run.iterdir()} == {"model.safetensors", "model.json", "train_log.csv"}
    log = pd.read_csv(trained_run / "train_log.csv")
    assert {"epoch", "class_index", "class_name", "val_clean_accuracy", "val_pgd_accuracy", "lr",
            "train_loss"} <= set(log.columns)
    assert len(log) == 11 and log["class_name"].iloc[-1] == "all"
    meta = json.loads((trained_run / "model.json").read_text())
    assert meta["config"]["train_subset"] == 300 and meta["eps"] == 0.1 and meta["seed"] == 0

    out = tmp_path / "eval"
    code, stdout, err = run(["eval", "--checkpoint", trained_run / "model.safetensors",
                             "--attacks", "fgsm,pgd:steps=3,temp-pgd:steps=3,temperature=2",
                             "--limit", "100", "--out", out, "--no-progress"], capsys)
    assert code == 0, err
    table = pd.read_csv(out / "per_class.csv")
    assert set(table["attack"]) == {"clean", "fgsm", "pgd", "temp-pgd"}
    assert table.groupby("attack")["n"].sum().tolist() == [100] * 4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["attacks"]["pgd"]["config"]["steps"] == 3
    assert summary["attacks"]["temp-pgd"]["config"]["temperature"] == 2
    assert summary["meta"]["split"] == "test" and summary["meta"]["precision"] == "fp32"
    # the printed table: header, 10 classes, overall
    for name in ("T-shirt/top", "Ankle boot", "temp-pgd", "worst class"):
        assert name in stdout


def test_eval_defaults_beside_checkpoint(trained_run, capsys):
    code, _, err = run(["eval", "--checkpoint", trained_run / "model.safetensors", "--attacks", "fgsm",
                        "--limit", "20", "--no-progress", "--precision", "bf16"], capsys)
    assert code == 0, err
    summary = json.loads((trained_run / "eval" / "summary.json").read_text())
    assert summary["attacks"]["fgsm"]["config"]["precision"] == "bf16"


def test_list_and_version(capsys):
    code, out, _ = run(["list"], capsys)
    assert code == 0
    for name in ("fashion-mnist", "mnist", "smallcnn", "fgsm", "pgd", "temp-pgd", "pgd-at", "standard"):
        assert f"  {name} " in out
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and __version__ in capsys.readouterr().out


def test_calibrate_help_says_it_shifts_thresholds(capsys):
    """Issue #15, item 6: calibration is a decision-threshold shift, and its --help says so."""
    with pytest.raises(SystemExit):
        main(["calibrate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "shifts the decision thresholds between classes" in out and "no more robust" in out


@pytest.mark.parametrize("command", ["train", "eval", "report", "compare", "calibrate", "experiment", "demo"])
def test_help_names_each_default_once(command, capsys):
    """An option whose help already says its default (``default: the checkpoint's eps``) does not get a
    second, generated ``(default: none)``."""
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert exc.value.code == 0
    assert not re.search(r"\(default: [^)]*\) \(default:", out)
    options = out.split("options:")[1].split(" --")[1:]  # one piece per option (issue #35: --alpha had two)
    assert all(piece.count("(default") <= 1 for piece in options), [p for p in options if p.count("(default") > 1]


def test_demo_help_shows_its_defaults(capsys):
    """Issue #35, item 15: every demo option that takes a value says its default."""
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    pieces = {piece.split()[0]: piece for piece in out.split("options:")[1].split(" --")[1:]}
    for flag in ("out", "epochs", "train-subset", "limit", "seed"):
        assert "(default" in pieces[flag], flag


@pytest.mark.parametrize("argv, code, message", [
    ([*TRAIN, "--dataset", "cifar99"], 2, "unknown dataset 'cifar99' (did you mean 'cifar10'?); choose one of: fashion-mnist, mnist"),
    ([*TRAIN, "--model", "vgg"], 2, "unknown model 'vgg'; choose one of: smallcnn"),
    ([*TRAIN, "--method", "magic"], 2, "unknown training method 'magic'"),
    ([*TRAIN, "--eps", "-0.1"], 2, "must be >= 0"),
    ([*TRAIN, "--attack-steps", "0"], 2, "must be >= 1"),
    ([*TRAIN, "--batch-size", "0"], 2, "must be >= 1"),
    ([*TRAIN, "--classwise", "reweight:strength=abc"], 2,
     "lever 'reweight': strength must be a number or a fraction like 8/255, got 'abc'"),
    ([*TRAIN, "--epochs", "x"], 2, "expected an integer, got 'x' (see `classrobust train --help`)"),
])
def test_train_bad_input(argv, code, message, synthetic_env, tmp_path, capsys):
    got, out, err = _run_catching_exit([*argv, "--out", tmp_path / "r"], capsys)
    assert got == code
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def _run_catching_exit(argv, capsys):
    try:
        return run(argv, capsys)
    except SystemExit as exc:  # argparse type errors
        out, err = capsys.readouterr()
        return exc.code, out, err


@pytest.mark.parametrize("extra, code, message", [
    (["--attacks", "fgsm,pdg"], 2, "unknown attack 'pdg' (did you mean 'pgd'?); choose one of: fgsm, pgd"),
    (["--attacks", "pgd:stepz=3"], 2, "attack 'pgd' has no parameter 'stepz'"),
    (["--attacks", "pgd:steps=0"], 2, "steps must be an integer >= 1"),
    (["--eps", "-1"], 2, "must be >= 0"),
    (["--eps", "2"], 2, "larger than the image range"),
    (["--steps", "0"], 2, "must be >= 1"),
    (["--batch-size", "0"], 2, "must be >= 1"),
    (["--limit", "0"], 2, "must be >= 1"),
    (["--device", "tpu:9"], 2, "device"),
    (["--attacks", "pgd:steps=abc"], 2, "attack 'pgd': steps must be an integer, got 'abc'"),
    (["--attacks", "pgd:random_start=no"], 2, "attack 'pgd': random_start must be true or false, got 'no'"),
    (["--attacks", "temp-pgd:temperature=abc"], 2, "temperature must be a number or a fraction"),
    (["--attacks", "fgsm,pgd", "--steps", "5"], 2, "attack 'fgsm' does not take the global --steps"),
    (["--mode", "sometimes"], 2, "invalid choice: 'sometimes'"),
])
def test_eval_bad_input(extra, code, message, trained_run, tmp_path, capsys):
    got, _, err = _run_catching_exit(["eval", "--checkpoint", trained_run / "model.safetensors",
                                      "--limit", "20", "--no-progress", "--out", tmp_path / "e", *extra], capsys)
    assert got == code
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1  # one line, no usage block
    assert not (tmp_path / "e").exists()


def test_fractions_and_typed_values_are_accepted(trained_run, tmp_path, capsys):
    import json

    code, _, err = run(["eval", "--checkpoint", trained_run / "model.safetensors", "--limit", "20", "--no-progress",
                        "--no-report", "--out", tmp_path / "e", "--eps", "8/255",
                        "--attacks", "fgsm:eps=4/255,pgd:steps=3,random_start=false"], capsys)
    assert code == 0, err
    attacks = json.loads((tmp_path / "e" / "summary.json").read_text())["attacks"]
    assert attacks["fgsm"]["config"]["eps"] == pytest.approx(4 / 255)
    assert attacks["pgd"]["config"]["eps"] == pytest.approx(8 / 255)
    assert attacks["pgd"]["config"]["random_start"] is False and attacks["pgd"]["config"]["steps"] == 3


def test_table_layout_at_any_name_length_and_limit():
    import numpy as np

    from classrobust.report import format_classwise_table
    from classrobust.results import AttackResult, ClasswiseResult

    classes = ["a-very-long-class-name-indeed", "b", "c"]
    labels = np.array([0, 0, 1, 1])  # class c has no evaluated samples
    attacks = {name: AttackResult(name, labels, labels.copy(), 3) for name in ("clean", "pgd", "autoattack-standard")}
    text = format_classwise_table(ClasswiseResult(classes, np.arange(4), labels, attacks))
    header = text.splitlines()[0]
    assert "a-very-long-class-name-indeed" in text and "pgd autoattack-standard" in " ".join(header.split())
    assert "nan" not in text
    assert len({len(line) for line in text.splitlines()}) == 1  # every line the same width


def test_eval_corrupt_and_missing_checkpoint(trained_run, tmp_path, capsys):
    code, _, err = run(["eval", "--checkpoint", tmp_path / "none.safetensors"], capsys)
    assert code == 1 and "not found" in err
    weights = trained_run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:500])
    code, _, err = run(["eval", "--checkpoint", weights, "--out", tmp_path / "e"], capsys)
    assert code == 1 and "truncated, corrupt" in err and "Traceback" not in err


def test_output_path_is_a_file(trained_run, tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("keep me")
    code, _, err = run(["eval", "--checkpoint", trained_run / "model.safetensors", "--out", blocker,
                        "--limit", "10", "--no-progress"], capsys)
    assert code == 2 and "exists and is not a directory" in err
    code, _, err = run([*TRAIN, "--out", blocker / "sub"], capsys)
    assert code == 2 and "which is a file" in err
    assert blocker.read_text() == "keep me"


def test_missing_data(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CLASSROBUST_SYSTEM_DATA", str(tmp_path / "empty"))
    code, _, err = run([*TRAIN, "--out", tmp_path / "r", "--data-dir", tmp_path / "d"], capsys)
    assert code == 1 and "apt-get install dataset-fashion-mnist" in err and "Traceback" not in err


def test_failed_run_keeps_earlier_checkpoint(trained_run, capsys, monkeypatch):
    before = (trained_run / "model.safetensors").read_bytes()
    import classrobust.training.loop as loop

    def explode(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "validate", explode)
    code, _, err = run([*TRAIN, "--out", trained_run, "--overwrite"], capsys)
    assert code == 130 and "--resume" in err
    assert (trained_run / "model.safetensors").read_bytes() == before
    # the interrupted run waits beside it for --resume; nothing else is left
    assert [p.name for p in trained_run.parent.iterdir() if p.name.startswith(".")] == [".run.partial"]


def test_diverging_training_stops_cleanly(trained_run, capsys):
    before = (trained_run / "model.safetensors").read_bytes()
    code, _, err = run([*TRAIN, "--lr", "1e30", "--out", trained_run, "--overwrite"], capsys)
    assert code == 1 and "training diverged" in err and "Traceback" not in err
    assert (trained_run / "model.safetensors").read_bytes() == before


def test_console_script_and_module(synthetic_env, tmp_path):
    exe = Path(sys.executable).parent / "classrobust"
    env = {**os.environ, "CLASSROBUST_SYSTEM_DATA": str(synthetic_env)}
    for cmd in ([str(exe), "--version"], [sys.executable, "-m", "classrobust", "--version"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        assert proc.returncode == 0 and __version__ in proc.stdout
    proc = subprocess.run([str(exe), "eval", "--checkpoint", str(tmp_path / "x.safetensors")],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("classrobust: error:")


def test_demo_trains_then_reuses(synthetic_env, tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--out", out, "--epochs", "1", "--train-subset", "200", "--limit", "50", "--no-progress"]
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    assert "training PGD-AT smallcnn" in stdout and "Shirt" in stdout and "temp-pgd" in stdout
    assert (out / "model.safetensors").is_file() and (out / "eval" / "per_class.csv").is_file()
    weights = (out / "model.safetensors").read_bytes()
    code, stdout, err = run(argv, capsys)
    assert code == 0 and "reusing" in stdout and "training PGD-AT" not in stdout
    assert (out / "model.safetensors").read_bytes() == weights
    # other settings: the stale model is not reused
    code, stdout, _ = run([*argv[:4], "2", *argv[5:]], capsys)
    assert code == 0 and "trained with other settings" in stdout


def test_train_and_eval_on_an_image_folder(tmp_path, capsys):
    from test_data import write_image_tree

    classes = ["cat", "dog", "fox"]
    write_image_tree(tmp_path / "pets" / "train", classes, 20, size=(16, 16))
    write_image_tree(tmp_path / "pets" / "test", classes, 5, size=(16, 16), seed=1)
    dataset = f"folder:{tmp_path / 'pets'}"
    code, out, err = run(["train", "--dataset", dataset, "--epochs", "1", "--val-size", "6", "--attack-steps", "1",
                          "--batch-size", "16", "--no-progress", "--out", tmp_path / "run"], capsys)
    assert code == 0, err
    code, out, err = run(["eval", "--checkpoint", tmp_path / "run" / "model.safetensors", "--attacks", "fgsm",
                          "--no-progress", "--no-report"], capsys)
    assert code == 0, err
    per_class = pd.read_csv(tmp_path / "run" / "eval" / "per_class.csv")
    assert set(per_class["class_name"]) == set(classes)
    assert json.loads((tmp_path / "run" / "eval" / "summary.json").read_text())["meta"]["eps"] == pytest.approx(8 / 255)


def test_list_shows_an_attacks_parameters(capsys):
    code, out, _ = run(["list", "--attack", "temp-pgd"], capsys)
    assert code == 0 and out.startswith("attack temp-pgd:")
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert {"eps", "alpha", "steps", "temperature", "mode", "precision", "seed"} <= set(lines)
    assert f"default {DEFAULT_TEMPERATURE:g}" in lines["temperature"]
    assert "default 20" in lines["steps"] and "int" in lines["steps"]
    code, _, err = run(["list", "--attack", "nope"], capsys)
    assert code == 2 and "unknown attack 'nope'" in err


def test_eval_superclasses_checked_first_and_reported(trained_run, tmp_path, capsys):
    groups = tmp_path / "groups.csv"
    groups.write_text("class,superclass\nT-shirt/top,tops\nShirt,tops\nPullover,tops\nSneaker,shoes\n"
                      "Sandal,shoes\nAnkle boot,shoes\n")
    out = tmp_path / "eval"
    code, _, err = run(["eval", "--checkpoint", trained_run, "--attacks", "fgsm", "--limit", "50",
                        "--superclasses", groups, "--out", out, "--no-progress"], capsys)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["meta"]["superclasses"]["shoes"] == ["Sandal", "Sneaker", "Ankle boot"]
    assert 'id="superclasses"' in (out / "report.html").read_text()
    bad = tmp_path / "bad.csv"
    bad.write_text("label,group\n")
    code, _, err = run(["eval", "--checkpoint", trained_run, "--attacks", "fgsm", "--superclasses", bad,
                        "--out", tmp_path / "eval2", "--no-progress"], capsys)
    assert code == 2 and "needs columns 'class' and 'superclass'" in err and err.count("\n") == 1
    assert not (tmp_path / "eval2").exists()


def test_eval_never_replaces_an_evaluation_with_other_settings_silently(trained_run, tmp_path, capsys):
    """Issue #35, item 8: an evaluation into a folder holding one with other attacks (the default folder
    beside a checkpoint) is refused before any attack, naming what differs; --overwrite replaces it;
    the same evaluation again is no conflict."""
    import json

    args = ["eval", "--checkpoint", trained_run, "--limit", "20", "--no-progress", "--no-report"]
    code, _, err = run([*args, "--attacks", "fgsm,pgd:steps=2"], capsys)
    assert code == 0, err
    summary = trained_run / "eval" / "summary.json"
    assert set(json.loads(summary.read_text())["attacks"]) == {"clean", "fgsm", "pgd"}
    code, _, err = run([*args, "--attacks", "fgsm"], capsys)
    assert code == 2 and "holds an evaluation with other settings (attacks fgsm,pgd -> fgsm)" in err
    assert set(json.loads(summary.read_text())["attacks"]) == {"clean", "fgsm", "pgd"}  # untouched
    code, _, err = run([*args, "--attacks", "fgsm,pgd:steps=2", "--subset-seed", "3"], capsys)
    assert code == 2 and "subset_seed" in err
    code, _, err = run([*args, "--attacks", "fgsm,pgd:steps=2"], capsys)  # the same evaluation again
    assert code == 0, err
    code, _, err = run([*args, "--attacks", "fgsm", "--overwrite"], capsys)
    assert code == 0, err
    assert set(json.loads(summary.read_text())["attacks"]) == {"clean", "fgsm"}


def test_compare_refuses_one_folder_twice(trained_run, tmp_path, capsys):
    """Issue #35, item 14: `compare A A` compares nothing."""
    code, _, err = run(["eval", "--checkpoint", trained_run, "--attacks", "fgsm", "--limit", "20", "--no-progress",
                        "--no-report"], capsys)
    assert code == 0, err
    code, _, err = run(["compare", trained_run / "eval", trained_run / "eval"], capsys)
    assert code == 2 and "the same folder" in err


def test_interrupted_commands_say_that_rerunning_continues(trained_run, capsys, monkeypatch):
    """Issue #35, item 13: Ctrl-C in eval says what is kept and how to continue."""
    import classrobust.workflows.evaluate as evaluate

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "evaluate_checkpoint", interrupted)
    code, _, err = run(["eval", "--checkpoint", trained_run, "--attacks", "fgsm"], capsys)
    assert code == 130 and "rerun the same command to continue" in err


def test_demo_uses_the_shipped_model_on_every_machine(synthetic_env, tmp_path, capsys, monkeypatch):
    """Issue #35, item 10: with its default settings the demo does not train: it copies the shipped model
    (checked by SHA-256) and evaluates it, whatever precision this machine would train in; --retrain trains;
    a shipped file that lost its checksum is refused in one line."""
    import classrobust.runtime as runtime
    import classrobust.workflows.demo as demo

    monkeypatch.setattr(runtime, "default_precision", lambda device: "fp32")  # an AVX2-only machine
    out = tmp_path / "demo"
    argv = ["demo", "--out", out, "--limit", "20", "--no-progress"]
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    assert "using the shipped demo model" in stdout and "training PGD-AT" not in stdout
    assert (out / "model.safetensors").read_bytes() == (demo.SHIPPED / "model.safetensors").read_bytes()
    code, stdout, err = run(argv, capsys)  # again: reused, not copied or trained
    assert code == 0 and "using the shipped" not in stdout and "training PGD-AT" not in stdout
    assert "no training (an existing model)" in stdout
    bad = tmp_path / "assets"
    bad.mkdir()
    for name in demo.SHIPPED_FILES:
        (bad / name).write_bytes((demo.SHIPPED / name).read_bytes())
    (bad / "model.safetensors").write_bytes(b"not the model")
    monkeypatch.setattr(demo, "SHIPPED", bad)
    code, _, err = run(["demo", "--out", tmp_path / "demo2", "--limit", "20", "--no-progress"], capsys)
    assert code == 1 and "SHA-256" in err and err.count("\n") == 1


@pytest.mark.parametrize("native", ["bf16", "fp32"])
def test_training_precision_follows_the_hardware_and_is_printed(native, synthetic_env, tmp_path, capsys, monkeypatch):
    """Issue #35, item 9: without --precision, training uses bf16 only where it is native (emulated bf16 is
    about 5x slower on CPUs without it), says which, and saves the concrete choice."""
    import classrobust.runtime as runtime
    from conftest import TRAIN

    monkeypatch.setattr(runtime, "default_precision", lambda device: native)
    code, stdout, err = run([*TRAIN, "--out", tmp_path / "run"], capsys)
    assert code == 0, err
    assert f"precision: {native} (auto:" in stdout
    assert json.loads((tmp_path / "run" / "model.json").read_text())["config"]["precision"] == native
    code, stdout, err = run([*TRAIN, "--out", tmp_path / "run2", "--precision", "bf16"], capsys)
    assert code == 0 and "precision: bf16\n" in stdout


def test_config_mistakes_are_named_in_one_line_not_python_internals(synthetic_env, tmp_path, capsys):
    """Issue #35, item 15: wrong types and unknown names in the Python API and in experiment files."""
    from classrobust.errors import UsageError
    from classrobust.training import TrainConfig
    from classrobust.workflows.evaluate import EvalConfig
    from classrobust.workflows.spec import load_spec

    with pytest.raises(UsageError, match="epochs must be an integer, got '3'"):
        TrainConfig(epochs="3")
    with pytest.raises(UsageError, match="did you mean 'pgd-at'"):
        TrainConfig(method="pgdat")  # refused when made, not when training starts
    assert TrainConfig(eps="8/255").eps == pytest.approx(8 / 255) and EvalConfig(eps="8/255").eps == pytest.approx(8 / 255)
    path = tmp_path / "exp.yaml"
    path.write_text("seeds: [0]\ntrain: {epochs: 1}\ndatasets:\n  fashion-mnist: {eps: 8/255}\nmethods: [pgd-at]\n"
                    "eval: {attacks: fgsm}\n")
    assert load_spec(path).runs[0].config.eps == pytest.approx(8 / 255)  # as on the command line
    code, stdout, err = run(["experiment", path, "--check"], capsys)
    assert code == 0, err
    assert "valid; 1 run ->" in stdout and "pgd-at 1 epoch, eps 8/255" in stdout


def test_eval_limit_below_the_number_of_classes_is_refused(trained_run, capsys):
    """Issue #35, item 14: --limit 5 with 10 classes would evaluate 5 classes and name a worst among them."""
    code, _, err = run(["eval", "--checkpoint", trained_run, "--attacks", "fgsm", "--limit", "5"], capsys)
    assert code == 2 and "below the 10 classes" in err and err.count("\n") == 1


def test_a_refused_resume_names_the_flag_that_starts_over(synthetic_env, tmp_path, capsys, monkeypatch):
    """Issue #35, item 13: the resume refusal pointed to "without --resume", which is refused too."""
    import classrobust.training.loop as loop
    from conftest import TRAIN

    out = tmp_path / "run"
    real = loop._train_epoch

    def killed(run_, epoch, *args, **kwargs):  # the first epoch completes and is staged, then a kill
        if epoch == 2:
            raise KeyboardInterrupt
        return real(run_, epoch, *args, **kwargs)

    monkeypatch.setattr(loop, "_train_epoch", killed)
    code, _, err = run([*TRAIN, "--epochs", "2", "--out", out], capsys)
    assert code == 130
    code, _, err = run([*TRAIN, "--epochs", "2", "--out", out, "--resume", "--lr", "0.05"], capsys)
    assert code == 2 and "--overwrite instead of --resume" in err


def test_compare_explains_an_undefined_rank_correlation(tmp_path, capsys):
    """Issue #35, item 14: a constant per-class accuracy makes Spearman undefined; said, not 'nan'."""
    import numpy as np

    from classrobust.results import AttackResult, ClasswiseResult

    labels = np.repeat(np.arange(3), 4)
    for name, preds in (("a", labels.copy()), ("b", np.where(np.arange(12) % 4 < np.repeat([1, 2, 3], 4), labels,
                                                               (labels + 1) % 3))):
        attacks = {n: AttackResult(n, labels, p, 3, {"attack": n}) for n, p in (("clean", labels), ("pgd", preds))}
        ClasswiseResult(["x", "y", "z"], np.arange(12), labels, attacks, {"dataset": "toy"}).save(tmp_path / name)
    code, stdout, err = run(["compare", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "cmp"], capsys)
    assert code == 0, err
    assert "nan" not in stdout.split("rank consistency")[1] and "undefined" in stdout


def test_two_evaluations_into_one_folder_at_once_are_refused(trained_run, capsys):
    """Issue #35, item 13: an evaluation whose folder another one is writing is refused by name."""
    import os
    import socket

    (trained_run / ".eval.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                                        "since": "now"}))
    code, _, err = run(["eval", "--checkpoint", trained_run, "--attacks", "fgsm", "--limit", "20"], capsys)
    assert code == 2 and f"being run by pid {os.getpid()}" in err and not (trained_run / "eval").exists()


def test_data_messages_name_what_is_wrong(synthetic_env, tmp_path):
    """Issue #35, item 15: no Debian package ships MNIST, so none is suggested; a folder dataset whose
    splits disagree names the classes."""
    from classrobust.data import get_dataset
    from classrobust.errors import DataNotFoundError
    from test_data import write_image_tree

    with pytest.raises(DataNotFoundError) as missing:
        get_dataset("mnist", "test")
    assert "apt-get" not in str(missing.value) and "--download" in str(missing.value)
    write_image_tree(tmp_path / "pets" / "train", ["cat", "dog"], 2, size=(8, 8))
    write_image_tree(tmp_path / "pets" / "test", ["cat", "fox"], 2, size=(8, 8))
    with pytest.raises(DataNotFoundError, match="only in train: dog; only in test: fox"):
        get_dataset(f"folder:{tmp_path / 'pets'}", "test")


def test_eval_sanity_says_what_it_checked(trained_run, capsys):
    """Issue #35, item 13: --sanity printed nothing about its checks unless one failed."""
    code, stdout, err = run(["eval", "--checkpoint", trained_run, "--attacks", "pgd:steps=2", "--limit", "20",
                             "--sanity", "--sanity-queries", "20", "--no-progress", "--no-report"], capsys)
    assert code == 0, err
    summary = json.loads((trained_run / "eval" / "summary.json").read_text())["sanity"]["checks"]
    assert f"sanity checks: {sum(c['passed'] for c in summary)} of {len(summary)} passed" in stdout
    for c in summary:
        assert c["check"] in stdout


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["evl"], ["experiment", "--help"], ["demo", "--help"]])
def test_help_version_and_typos_answer_without_torch(argv):
    """Issue #35, item 12: they imported torch (6-13 s on a loaded 2-core machine); only the command
    being run builds its options."""
    code = ("import sys\nfrom classrobust.cli.main import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "print('TORCH', 'torch' in sys.modules)" % argv)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip().endswith("TORCH False"), proc.stdout[-300:] + proc.stderr[-300:]


def test_training_prints_progress_lines_to_a_log_file(synthetic_env, tmp_path, capsys):
    """Issue #35, item 11: with stderr not a terminal (a log file, CI) training printed nothing until the
    epoch ended; it now prints a line per tenth of the epoch, as evaluation does."""
    from conftest import TRAIN

    code, _, err = run([a for a in TRAIN if a != "--no-progress"] + ["--out", tmp_path / "run"], capsys)
    assert code == 0, err
    assert "epoch 1/1: 100% (" in err and err.count("epoch 1/1: ") >= 2


def test_compare_names_its_level_significance_not_alpha(capsys):
    """Issue #35, item 6: --alpha is a step size in eval and was a significance level in compare."""
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    out = capsys.readouterr().out
    assert "--significance" in out and "significance level" in out


def test_parameter_mistakes_are_worded_once_and_list_only_settable_names(tmp_path, capsys):
    """Issue #35, item 15: 'valid:' listed model and num_classes (not a user's to set), an attack's own
    model=... was a traceback, and the same mistake read differently on the command line and in a file."""
    code, _, cli = run(["eval", "--model", "smallcnn", "--dataset", "fashion-mnist", "--attacks", "pgd:foo=1"], capsys)
    assert code == 2 and "valid: eps," in cli and "model" not in cli.split("valid:")[1]
    path = tmp_path / "x.yaml"
    path.write_text('seeds: [0]\ndatasets: [fashion-mnist]\nmethods: [pgd-at]\neval: {attacks: "pgd:foo=1"}\n')
    code, _, yaml_err = run(["experiment", path, "--check"], capsys)
    assert code == 2 and cli.split("error: ")[1] in yaml_err  # the same words, with where in the file
    code, _, err = run([*TRAIN, "--classwise", "reweight:foo=1", "--out", tmp_path / "r"], capsys)
    assert code == 2 and "valid: strength, smoothing" in err
    code, _, err = run(["eval", "--model", "smallcnn", "--dataset", "fashion-mnist", "--attacks", "pgd:model=1"], capsys)
    assert code == 2 and "has no parameter 'model'" in err and "Traceback" not in err
