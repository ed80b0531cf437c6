"""Nothing lost: reruns replace only their own files, foreign folders are refused before any
work, every checkpoint gets its own evaluation folder, compare writes beside the runs it reads."""

from __future__ import annotations

import json

import pytest

from conftest import TRAIN, run


def _eval(checkpoint, capsys, *extra):
    return run(["eval", "--checkpoint", checkpoint, "--limit", "20", "--no-progress", "--no-report", *extra], capsys)


def test_rerunning_eval_replaces_only_its_own_files(trained_run, capsys):
    eval_dir = trained_run / "eval"
    code, _, err = _eval(trained_run / "model.safetensors", capsys, "--attacks", "fgsm,pgd:steps=2")
    assert code == 0, err
    (eval_dir / "notes.txt").write_text("mine")
    (eval_dir / "extra").mkdir()
    code, _, err = _eval(trained_run / "model.safetensors", capsys, "--attacks", "fgsm")
    assert code == 2 and "other settings" in err  # never replaced silently (issue #35, item 8)
    code, _, err = _eval(trained_run / "model.safetensors", capsys, "--attacks", "fgsm", "--overwrite")
    assert code == 0, err
    assert (eval_dir / "notes.txt").read_text() == "mine" and (eval_dir / "extra").is_dir()
    assert (eval_dir / "confusion_fgsm.csv").is_file()
    assert not (eval_dir / "confusion_pgd.csv").exists()  # the earlier result's own stale file
    assert list(json.loads((eval_dir / "summary.json").read_text())["attacks"]) == ["clean", "fgsm"]


def test_eval_refuses_a_foreign_folder_before_any_work(trained_run, tmp_path, capsys, monkeypatch):
    import classrobust.workflows.evaluate as ev

    foreign = tmp_path / "theirs"
    foreign.mkdir()
    (foreign / "data.bin").write_bytes(b"keep")
    monkeypatch.setattr(ev, "load_model", lambda *a, **k: pytest.fail("work started"))
    code, _, err = _eval(trained_run / "model.safetensors", capsys, "--out", foreign)
    assert code == 2 and "did not write" in err and "--out" in err
    assert [p.name for p in foreign.iterdir()] == ["data.bin"] and (foreign / "data.bin").read_bytes() == b"keep"


def test_each_checkpoint_has_its_own_evaluation_folder(trained_run, capsys):
    code, _, err = _eval(trained_run / "model.safetensors", capsys, "--attacks", "fgsm")
    assert code == 0, err
    before = (trained_run / "eval" / "summary.json").read_bytes()
    code, _, err = run(["calibrate", "--checkpoint", trained_run / "model.safetensors", "--out", trained_run / "cal",
                        "--val-size", "20", "--steps", "1", "--rounds", "1"], capsys)
    assert code == 0, err
    code, _, err = _eval(trained_run / "cal.safetensors", capsys, "--attacks", "fgsm")
    assert code == 0, err
    assert (trained_run / "eval-cal" / "summary.json").is_file()
    assert (trained_run / "eval" / "summary.json").read_bytes() == before
    meta = json.loads((trained_run / "eval-cal" / "summary.json").read_text())["meta"]
    assert meta["checkpoint"].endswith("cal.safetensors")


def test_compare_writes_beside_the_evaluations(trained_run, tmp_path, capsys):
    code, _, err = _eval(trained_run / "model.safetensors", capsys, "--attacks", "fgsm")
    assert code == 0, err
    import shutil

    shutil.copytree(trained_run / "eval", tmp_path / "a-eval")  # A: another folder (compare A A is refused)
    code, _, err = run(["compare", tmp_path / "a-eval", trained_run], capsys)
    assert code == 0, err
    assert (trained_run / "compare" / "compare.csv").is_file() and not (trained_run / "eval" / "compare").exists()
    (trained_run / "compare" / "mine.txt").write_text("mine")
    assert run(["compare", tmp_path / "a-eval", trained_run], capsys)[0] == 0
    assert (trained_run / "compare" / "mine.txt").read_text() == "mine"


def test_train_never_replaces_a_run_or_discards_an_interrupted_one_unasked(trained_run, capsys):
    (trained_run / "eval").mkdir()
    (trained_run / "eval" / "notes.txt").write_text("mine")
    code, _, err = run([*TRAIN, "--out", trained_run], capsys)
    assert code == 2 and "--overwrite" in err
    assert (trained_run / "eval" / "notes.txt").read_text() == "mine"
    stage = trained_run.parent / f".{trained_run.name}.partial"
    stage.mkdir()
    (stage / "train_state.pt").write_bytes(b"an interrupted run")
    code, _, err = run([*TRAIN, "--out", trained_run], capsys)
    assert code == 2 and "--resume" in err and "--overwrite" in err
    assert (stage / "train_state.pt").read_bytes() == b"an interrupted run"
    code, _, err = run([*TRAIN, "--out", trained_run, "--overwrite"], capsys)
    assert code == 0, err
    assert not (trained_run / "eval").exists() and (trained_run / "model.safetensors").is_file()


def test_compare_refuses_evaluations_with_other_settings(trained_run, tmp_path, capsys):
    checkpoint = trained_run / "model.safetensors"
    for name, eps in (("a", "0.1"), ("b", "0.2")):
        code, _, err = _eval(checkpoint, capsys, "--attacks", "fgsm,pgd:steps=2", "--eps", eps, "--out", tmp_path / name)
        assert code == 0, err
    code, _, err = run(["compare", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "c"], capsys)
    assert code == 2 and "fgsm: alpha, eps" in err and "pgd: alpha, eps" in err and "--allow-different-settings" in err
    assert not (tmp_path / "c").exists()
    code, _, err = run(["compare", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "c",
                        "--allow-different-settings"], capsys)
    assert code == 0, err


def test_every_attack_setting_is_printed_and_saved(trained_run, tmp_path, capsys):
    import pandas as pd

    code, out, err = run(["eval", "--checkpoint", trained_run / "model.safetensors", "--limit", "20", "--no-progress",
                          "--no-report", "--out", tmp_path / "e", "--eps", "8/255",
                          "--attacks", "pgd:steps=3,autoattack:version=fast,steps=2"], capsys)
    assert code == 0, err
    assert "pgd: eps 8/255 (linf), 3 steps" in out and "mode best" in out
    assert ("autoattack: eps 8/255 (linf), version fast, NOT standard AutoAttack (version fast, steps 2), "
            "members apgd-ce 2 steps + apgd-t 2 steps 9 targets") in out
    table = pd.read_csv(tmp_path / "e" / "per_class.csv")
    assert set(table.loc[table.attack == "pgd", "settings"]) == {line.strip() for line in out.splitlines()
                                                                 if line.strip().startswith("pgd:")}


def test_a_closed_pipe_ends_the_output_not_the_work(synthetic_env, tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out = tmp_path / "r"
    argv = [sys.executable, "-m", "classrobust", *[str(a) for a in TRAIN], "--epochs", "2", "--out", str(out)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    assert proc.stdout.readline().startswith("precision: ")  # the first line training prints
    proc.stdout.close()  # `| head -1`
    code = proc.wait(timeout=300)
    err = proc.stderr.read()
    assert code == 0, err
    assert "Broken pipe" not in err and "Traceback" not in err
    assert (out / "model.safetensors").is_file()  # epoch 2 ran and the run was published


def test_result_files_get_the_modes_of_any_new_file(trained_run, tmp_path, capsys):
    import os
    import stat

    mask = os.umask(0o022)
    try:
        code, _, err = _eval(trained_run / "model.safetensors", capsys, "--attacks", "fgsm", "--out", tmp_path / "e",
                             "--limit", "20000")
    finally:
        os.umask(mask)
    assert code == 0, err
    for name in ("summary.json", "per_class.csv", "samples.csv.gz"):
        assert stat.S_IMODE((tmp_path / "e" / name).stat().st_mode) == 0o644, name
    assert stat.S_IMODE((trained_run / "model.safetensors").stat().st_mode) == 0o644
    meta = json.loads((tmp_path / "e" / "summary.json").read_text())["meta"]
    assert meta["limit"] == 200  # what was evaluated (the whole generated test split), not what was asked


def test_run_folders_sidecars_shapes_and_factories_from_the_current_folder(trained_run, tmp_path, capsys, monkeypatch):
    # a run folder stands for its model.safetensors
    code, _, err = _eval(trained_run, capsys, "--attacks", "fgsm")
    assert code == 0, err
    assert (trained_run / "eval" / "summary.json").is_file()
    # a classrobust checkpoint given as --weights keeps its own dataset
    code, _, err = run(["eval", "--model", "smallcnn", "--dataset", "mnist", "--weights", trained_run / "model.safetensors",
                        "--attacks", "fgsm", "--limit", "20", "--no-progress", "--out", tmp_path / "m"], capsys)
    assert code == 2 and "trained on 'fashion-mnist', not 'mnist'" in err
    # a python: factory from the current folder; a model that does not take the images: one line, both shapes
    (tmp_path / "shapes_mod.py").write_text("from torch import nn\n\ndef build():\n"
                                            "    return nn.Sequential(nn.Flatten(), nn.Linear(100, 10))\n")
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["eval", "--model", "python:shapes_mod:build", "--dataset", "fashion-mnist", "--attacks", "fgsm",
                        "--limit", "20", "--no-progress", "--out", tmp_path / "s"], capsys)
    assert code == 2 and "shape (1, 28, 28)" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_l2_attacks_take_the_datasets_l2_radius(trained_run, tmp_path, capsys):
    from classrobust.data import DATASETS, get_dataset_info

    code, out, err = _eval(trained_run / "model.safetensors", capsys, "--attacks", "pgd:steps=2,pgd-l2:steps=2",
                           "--out", tmp_path / "e")
    assert code == 0, err
    attacks = json.loads((tmp_path / "e" / "summary.json").read_text())["attacks"]
    assert attacks["pgd"]["config"]["eps"] == pytest.approx(0.1)
    assert attacks["pgd-l2"]["config"]["eps"] == get_dataset_info("fashion-mnist").threat_model.eps_l2 == 1.0
    assert "pgd-l2: eps 1 (l2)" in out
    # an explicit eps wins, per attack or for all
    code, _, err = _eval(trained_run / "model.safetensors", capsys, "--attacks", "pgd-l2:steps=2,eps=0.3",
                         "--out", tmp_path / "f")
    assert json.loads((tmp_path / "f" / "summary.json").read_text())["attacks"]["pgd-l2"]["config"]["eps"] == 0.3
    assert {name: entry.info.threat_model.eps_l2 for name, entry in zip(DATASETS.names(), DATASETS)} == {
        "fashion-mnist": 1.0, "mnist": 2.0, "cifar10": 0.5, "cifar100": 0.5, "svhn": 0.5, "stl10": 1.5,
        "imagenet": 3.0}


@pytest.mark.parametrize("command", ["train", "eval", "calibrate", "compare", "experiment"])
def test_an_output_that_cannot_be_created_fails_before_any_work(command, trained_run, tmp_path, capsys):
    # a folder under a regular file cannot be created, even by root (for whom permission bits do not count)
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    out = blocker / "sub"
    ckpt = trained_run / "model.safetensors"
    spec = tmp_path / "exp.yaml"
    spec.write_text("name: x\nseeds: [0]\ntrain: {epochs: 1, train_subset: 300, val_size: 100}\n"
                    "datasets:\n  fashion-mnist: {model: smallcnn}\nmethods:\n  pgd-at: {}\neval: {attacks: fgsm}\n")
    if command == "compare":
        import shutil

        assert _eval(ckpt, capsys, "--attacks", "fgsm")[0] == 0
        shutil.copytree(trained_run / "eval", tmp_path / "a-eval")
    argv = {"train": [*TRAIN, "--out", out],
            "eval": ["eval", "--checkpoint", ckpt, "--attacks", "fgsm", "--out", out],
            "calibrate": ["calibrate", "--checkpoint", ckpt, "--out", out / "cal.safetensors"],
            "compare": ["compare", tmp_path / "a-eval", trained_run, "--out", out],
            "experiment": ["experiment", spec, "--out", out]}[command]
    code, stdout, err = run(argv, capsys)
    assert code == 2, (stdout, err)
    assert len(err.strip().splitlines()) == 1 and str(blocker) in err, err
    assert "epoch" not in stdout and "calibrating" not in stdout and blocker.read_text() == "mine"


def test_progress_bars_stay_out_of_logs(trained_run, tmp_path):
    import os
    import subprocess
    import sys

    # progress is on by default, but stderr is a file here: no carriage-return updates land in it
    log = tmp_path / "log.txt"
    with log.open("w") as f:
        done = subprocess.run([sys.executable, "-m", "classrobust", "eval", "--checkpoint",
                               str(trained_run / "model.safetensors"), "--attacks", "fgsm", "--limit", "20",
                               "--batch-size", "5", "--no-report", "--out", str(tmp_path / "e")],
                              stdout=f, stderr=subprocess.STDOUT, env={**os.environ}, timeout=300)
    assert done.returncode == 0, log.read_text()
    assert b"\r" not in log.read_bytes(), log.read_bytes()[:300]  # bytes: text mode would turn \r into \n
    assert "fgsm" in log.read_text()
