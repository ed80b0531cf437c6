"""Nothing lost: reruns replace only their own files, foreign folders are refused before any
work, every checkpoint gets its own evaluation folder, compare writes beside the runs it reads."""

from __future__ import annotations

import json

import pytest

from conftest import TRAIN, run


@pytest.fixture
def trained(synthetic_env, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run([*TRAIN, "--out", out], capsys)
    assert code == 0, err
    return out


def _eval(checkpoint, capsys, *extra):
    return run(["eval", "--checkpoint", checkpoint, "--limit", "20", "--no-progress", "--no-report", *extra], capsys)


def test_rerunning_eval_replaces_only_its_own_files(trained, capsys):
    eval_dir = trained / "eval"
    code, _, err = _eval(trained / "model.safetensors", capsys, "--attacks", "fgsm,pgd:steps=2")
    assert code == 0, err
    (eval_dir / "notes.txt").write_text("mine")
    (eval_dir / "extra").mkdir()
    code, _, err = _eval(trained / "model.safetensors", capsys, "--attacks", "fgsm")
    assert code == 0, err
    assert (eval_dir / "notes.txt").read_text() == "mine" and (eval_dir / "extra").is_dir()
    assert (eval_dir / "confusion_fgsm.csv").is_file()
    assert not (eval_dir / "confusion_pgd.csv").exists()  # the earlier result's own stale file
    assert list(json.loads((eval_dir / "summary.json").read_text())["attacks"]) == ["clean", "fgsm"]


def test_eval_refuses_a_foreign_folder_before_any_work(trained, tmp_path, capsys, monkeypatch):
    import classrobust.workflows.evaluate as ev

    foreign = tmp_path / "theirs"
    foreign.mkdir()
    (foreign / "data.bin").write_bytes(b"keep")
    monkeypatch.setattr(ev, "load_model", lambda *a, **k: pytest.fail("work started"))
    code, _, err = _eval(trained / "model.safetensors", capsys, "--out", foreign)
    assert code == 2 and "did not write" in err and "--out" in err
    assert [p.name for p in foreign.iterdir()] == ["data.bin"] and (foreign / "data.bin").read_bytes() == b"keep"


def test_each_checkpoint_has_its_own_evaluation_folder(trained, capsys):
    code, _, err = _eval(trained / "model.safetensors", capsys, "--attacks", "fgsm")
    assert code == 0, err
    before = (trained / "eval" / "summary.json").read_bytes()
    code, _, err = run(["calibrate", "--checkpoint", trained / "model.safetensors", "--out", trained / "cal",
                        "--val-size", "20", "--steps", "1", "--rounds", "1"], capsys)
    assert code == 0, err
    code, _, err = _eval(trained / "cal.safetensors", capsys, "--attacks", "fgsm")
    assert code == 0, err
    assert (trained / "eval-cal" / "summary.json").is_file()
    assert (trained / "eval" / "summary.json").read_bytes() == before
    meta = json.loads((trained / "eval-cal" / "summary.json").read_text())["meta"]
    assert meta["checkpoint"].endswith("cal.safetensors")


def test_compare_writes_beside_the_evaluations(trained, tmp_path, capsys):
    code, _, err = _eval(trained / "model.safetensors", capsys, "--attacks", "fgsm")
    assert code == 0, err
    code, _, err = run(["compare", trained, trained], capsys)
    assert code == 0, err
    assert (trained / "compare" / "compare.csv").is_file() and not (trained / "eval" / "compare").exists()
    (trained / "compare" / "mine.txt").write_text("mine")
    assert run(["compare", trained, trained], capsys)[0] == 0
    assert (trained / "compare" / "mine.txt").read_text() == "mine"


def test_train_never_replaces_a_run_or_discards_an_interrupted_one_unasked(trained, capsys):
    (trained / "eval").mkdir()
    (trained / "eval" / "notes.txt").write_text("mine")
    code, _, err = run([*TRAIN, "--out", trained], capsys)
    assert code == 2 and "--overwrite" in err
    assert (trained / "eval" / "notes.txt").read_text() == "mine"
    stage = trained.parent / f".{trained.name}.partial"
    stage.mkdir()
    (stage / "train_state.pt").write_bytes(b"an interrupted run")
    code, _, err = run([*TRAIN, "--out", trained], capsys)
    assert code == 2 and "--resume" in err and "--overwrite" in err
    assert (stage / "train_state.pt").read_bytes() == b"an interrupted run"
    code, _, err = run([*TRAIN, "--out", trained, "--overwrite"], capsys)
    assert code == 0, err
    assert not (trained / "eval").exists() and (trained / "model.safetensors").is_file()
