"""Experiment files: validation without data, a small grid end to end, skip and resume, the ablation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from classrobust.workflows.spec import load_spec
from conftest import run
from classrobust.errors import UsageError

REPO = Path(__file__).resolve().parents[1]

TINY = """
name: tiny
seeds: [0]
train: {epochs: 1, attack_steps: 1, batch_size: 50, val_size: 100, train_subset: 300, lr: 0.02}
datasets:
  fashion-mnist: {model: smallcnn}
methods:
  pgd-at: {}
  trades: {method: "trades:beta=1"}
eval: {attacks: "fgsm,pgd:steps=3", limit: 100}
ablation:
  remove_confused_class: {method: pgd-at, attack: pgd}
temperature: {values: [0.5, 1.0, 2.0], steps: 2, val_limit: 50}
"""


#: the start of a two-seed defense grid (its other methods and eval follow), and a quick calibration
TWO_SEEDS = """
seeds: [0, 1]
train: {epochs: 2, attack_steps: 1, batch_size: 50, val_size: 100, train_subset: 300, lr: 0.02}
datasets: [fashion-mnist]
methods:
  pgd-at: {}
"""
CALIBRATE = "{max_avg_drop: 5.0, val_size: 60, steps: 2, rounds: 1}"


def write(tmp_path, text, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path




def test_two_run_experiment_end_to_end_then_skipped(synthetic_env, tmp_path, capsys):
    path = write(tmp_path, TINY)
    out = tmp_path / "exp"
    code, stdout, err = run(["experiment", path, "--out", out, "--no-progress", "--tensorboard", tmp_path / "tb"],
                            capsys)
    assert code == 0, err
    index = json.loads((out / "experiment.json").read_text())
    assert [r["key"] for r in index["runs"]] == ["fashion-mnist/pgd-at/seed0", "fashion-mnist/trades/seed0"]
    for entry in [*index["runs"], *index["ablation"]]:  # one TensorBoard log per trained run
        key = entry.get("key") or entry["retrained"]
        assert list((tmp_path / "tb" / key).glob("events.out.tfevents.*")), key
    ablation, control = index["ablation"]
    assert (ablation["variant"], control["variant"]) == ("confused", "control")
    assert ablation["weakest_class"] == control["weakest_class"]
    assert len({ablation["weakest_class"], ablation["dropped_class"], control["dropped_class"]}) == 3
    # the weak class is the base run's worst on the validation split (its sidecar), not on the test split
    base_dir = out / "runs/fashion-mnist/pgd-at/seed0"
    sidecar = json.loads((base_dir / "model.json").read_text())
    classes = sidecar["classes"]
    assert ablation["weak_chosen_on"] == "validation"
    assert ablation["weakest_class"] == classes[int(np.argmin(sidecar["metrics"]["val_pgd_accuracy_per_class"]))]
    # the confused class receives most of the weak class's flipped points (correct clean, wrong under pgd)
    samples = pd.read_csv(base_dir / "eval" / "samples.csv.gz")
    weak = classes.index(ablation["weakest_class"])
    wrong = samples[(samples.label == weak) & (samples.pred_pgd != weak)]
    flipped = wrong[wrong.pred_clean == weak]
    # a one-epoch model may flip none of them: then all its wrong predictions choose, and the index says so
    assert ablation["confused_chosen_by"] == ("flipped points" if len(flipped) else
                                              "all wrong predictions (no point was flipped)")
    counts = (flipped if len(flipped) else wrong)["pred_pgd"].value_counts()
    assert counts[classes.index(ablation["dropped_class"])] == counts.max()
    for entry in (ablation, control):
        retrained = json.loads((out / entry["dir"] / "model.json").read_text())
        assert retrained["config"]["drop_classes"] == [entry["dropped_class"]]
    assert json.loads((out / "runs/fashion-mnist/trades/seed0/model.json").read_text())["config"]["method"] == "trades:beta=1"
    report = out / "report"
    assert (report / "report.html").is_file() and (report / "report.md").is_file()
    per_class = pd.read_csv(report / "per_class.csv")
    assert set(per_class["method"]) == {"pgd-at", "trades"}
    assert set(per_class["attack"]) == {"clean", "fgsm", "pgd"} and len(per_class) == 2 * 3 * 10
    dc = pd.read_csv(report / "defense_consistency.csv")
    assert set(dc["attack"]) == {"clean", "fgsm", "pgd"} and (dc[["method_a", "method_b"]].values ==
                                                              ["pgd-at", "trades"]).all()
    assert len(pd.read_csv(report / "attack_consistency.csv")) == 2  # one pair of attacks per run
    ab = pd.read_csv(report / "ablation.csv")
    assert list(ab["variant"]) == ["confused", "control"]
    # both runs of the seed are scored on the same "other classes": all but the weak and the two dropped
    assert ab["other_classes"].nunique() == 1 and len(ab["other_classes"].iloc[0].split(", ")) == 7
    assert len(pd.read_csv(report / "ablation_per_class.csv")) == 2 * 10
    assert ab["now_withstand_of_flipped"].iloc[0] <= ab["flipped"].iloc[0] <= ab["formerly_fooled"].iloc[0] <= ab["n_weakest"].iloc[0]
    assert {"gain_attribution.csv", "weight_norms.csv", "attacked_into.csv", "overview.csv"} <= {
        p.name for p in report.iterdir()}
    # Temperature-PGD: T chosen on validation images of both runs, recorded, then attacked on the test subsets
    chosen = json.loads((out / "temperature.json").read_text())
    assert chosen["chosen"] in (0.5, 1.0, 2.0) and chosen["chosen_on"] == "validation"
    assert chosen["runs"] == ["fashion-mnist/pgd-at/seed0", "fashion-mnist/trades/seed0"]
    means = {float(t): v for t, v in chosen["validation_accuracy"].items()}
    assert means[chosen["chosen"]] == min(means.values())
    for key in chosen["runs"]:
        sweep = json.loads((out / "runs" / key / "temperature/validation/summary.json").read_text())
        assert sweep["meta"]["split"] == "validation" and sweep["n"] == 50
        test = json.loads((out / "runs" / key / "temperature/test/summary.json").read_text())
        main = json.loads((out / "runs" / key / "eval/summary.json").read_text())
        assert test["meta"]["split"] == "test" and test["n"] == main["n"] == 100
        assert test["attacks"]["temp-pgd"]["config"]["temperature"] == chosen["chosen"]
        assert test["attacks"]["pgd"]["config"]["steps"] == test["attacks"]["temp-pgd"]["config"]["steps"] == 2
        # the sweep and the test evaluation differ only in their images: the same attack settings
        assert sweep["attacks"][f"temp-pgd@T={chosen['chosen']:g}"]["config"] == test["attacks"]["temp-pgd"]["config"]
        assert sweep["attacks"]["pgd"]["config"] == test["attacks"]["pgd"]["config"]
    temp_runs = pd.read_csv(report / "temperature_runs.csv")
    assert len(temp_runs) == 2 * 11 and (temp_runs["temperature"] == chosen["chosen"]).all()
    seeds = pd.read_csv(report / "temperature_seeds.csv")
    assert set(seeds["methods"]) == {"all methods", "pgd-at", "trades"} and (seeds["alternative"] == "less").all()
    assert "T = " in (report / "report.md").read_text()
    before = {p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors")}

    code, stdout, err = run(["experiment", path, "--out", out, "--no-progress"], capsys)
    assert code == 0, err
    assert stdout.count("complete, skipped") == 4  # two grid runs and the ablation's two
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors")}

    code, stdout, err = run(["experiment", path, "--out", out, "--check"], capsys)
    assert code == 0 and stdout.count("[done]") == 2

    # the export: records, sidecars and logs without weights, from which the same report is rebuilt
    shared = tmp_path / "shared"
    code, stdout, err = run(["experiment", path, "--out", out, "--export", shared], capsys)
    assert code == 0, err
    assert not list(shared.rglob("*.safetensors")) and list(shared.rglob("samples.csv.gz"))
    assert (shared / "report" / "report.md").read_text() == (report / "report.md").read_text()
    for table in report.glob("*.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(shared / "report" / table.name), pd.read_csv(table))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    code, _, err = run(["experiment", path, "--out", out, "--export", foreign], capsys)
    assert code == 2 and "did not write there" in err and (foreign / "notes.txt").read_text() == "mine"
    # under torchrun only rank 0 writes the index and the report; the others wait at the barrier
    import shutil

    import classrobust.workflows.experiment as experiment

    (out / "experiment.json").unlink()
    shutil.rmtree(report)
    waits = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(experiment, "is_main", lambda: False)
        patch.setattr(experiment, "barrier", lambda: waits.append(1))
        assert run(["experiment", path, "--out", out, "--no-progress"], capsys)[0] == 0
    assert waits == [1] and not (out / "experiment.json").exists() and not report.exists()


def test_changed_settings_never_overwrite_results(synthetic_env, tmp_path, capsys):
    out = tmp_path / "exp"
    one_run = TINY.replace("  trades: {method: \"trades:beta=1\"}\n", "").replace("ablation:\n  remove_confused_class: "
                                                                  "{method: pgd-at, attack: pgd}\n", "")
    assert run(["experiment", write(tmp_path, one_run), "--out", out, "--no-progress"], capsys)[0] == 0
    weights = (out / "runs/fashion-mnist/pgd-at/seed0/model.safetensors").read_bytes()
    code, _, err = run(["experiment", write(tmp_path, one_run.replace("lr: 0.02", "lr: 0.03"), "b.yaml"),
                        "--out", out, "--no-progress"], capsys)
    assert code == 2 and "trained with other settings (lr differ)" in err and err.count("\n") == 1
    code, _, err = run(["experiment", write(tmp_path, one_run.replace("steps=3", "steps=4"), "c.yaml"),
                        "--out", out, "--no-progress"], capsys)
    assert code == 2 and "evaluated with other settings" in err
    assert "steps=3" in err and "-> " in err and "steps=4" in err  # which setting changed (issue #35, item 13)
    assert (out / "runs/fashion-mnist/pgd-at/seed0/model.safetensors").read_bytes() == weights


def test_killed_experiment_resumes_half_trained_run(synthetic_env, tmp_path):
    """SIGKILL during the second epoch of the first run; the rerun resumes it and finishes the grid."""
    text = TINY.replace("epochs: 1", "epochs: 3").replace("train_subset: 300", "train_subset: 500")
    path = write(tmp_path, text.split("ablation:")[0])
    out = tmp_path / "exp"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "classrobust", "experiment", str(path), "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stage = out / "runs/fashion-mnist/pgd-at/.seed0.partial/train_state.pt"
    deadline = time.time() + 120
    while not stage.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert stage.exists(), "the first epoch did not finish in time"
    done = subprocess.run([*cmd, "--check"], env=env, capture_output=True, text=True)
    assert "fashion-mnist/pgd-at/seed0" in done.stdout and "[resume]" in done.stdout, done.stdout
    again = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "fashion-mnist/pgd-at/seed0: resuming training" in again.stdout
    assert "resuming" in again.stdout and "after epoch" in again.stdout
    log = pd.read_csv(out / "runs/fashion-mnist/pgd-at/seed0/train_log.csv")
    assert sorted(log["epoch"].unique()) == [1, 2, 3]
    assert (out / "report" / "report.html").is_file()


@pytest.mark.parametrize("text, message", [
    ("datasets: {fashion-mnist: {}}\nmethods: {pgd-at: {}}\n", "eval.attacks is required"),
    ("datasets: {cifar: {}}\nmethods: {pgd-at: {}}\neval: {attacks: pgd}\n", "unknown dataset 'cifar'"),
    ("datasets: {fashion-mnist: {}}\nmethods: {pgd-att: {}}\neval: {attacks: pgd}\n", "unknown training method"),
    ("datasets: {fashion-mnist: {}}\nmethods: {pgd-at: {}}\neval: {attacks: 'pgd:stepz=3'}\n",
     "eval.attacks: attack 'pgd' has no parameter 'stepz'; valid: eps"),
    ("datasets: {fashion-mnist: {}}\nmethods: {pgd-at: {epoch: 3}}\neval: {attacks: pgd}\n",
     "methods.pgd-at: unknown key(s) epoch"),
    ("datasets: {fashion-mnist: {model: smallcnn, model_kwargs: {width: 3}}}\nmethods: [pgd-at]\n"
     "eval: {attacks: pgd}\n", "model 'smallcnn' has no parameter 'width'; valid: "),
    ("datasets: [fashion-mnist]\nmethods: [pgd-at]\ntrain: {lr: -1}\neval: {attacks: pgd}\n",
     "learning rate must be > 0"),
    ("datasets: [fashion-mnist]\nmethods: [pgd-at]\neval: {attacks: pgd}\n"
     "ablation: {remove_confused_class: {method: trades}}\n", "is not one of the trained methods"),
    ("datasets: [fashion-mnist]\nmethods: {pgd-at: {}, trades: {baseline: mart}}\neval: {attacks: pgd}\n",
     "methods.trades.baseline 'mart' is not one of the methods: pgd-at, trades"),
    ("datasets: [fashion-mnist]\nmethods: {pgd-at: {}, trades: {baseline: trades}}\neval: {attacks: pgd}\n",
     "methods.trades.baseline: a method cannot be its own baseline"),
    ("datasets: [fashion-mnist]\nmethods: [pgd-at]\neval: {attacks: pgd}\nseed: 3\n", "unknown key(s) seed"),
    ("datasets: [fashion-mnist\n", "not valid YAML"),
    ("datasets: [fashion-mnist]\nmethods: [pgd-at]\neval: {attacks: pgd}\ncompare: {worst: up}\n",
     "compare.worst must be one of two-sided, greater, less"),
    ("datasets: [fashion-mnist]\nmethods: [pgd-at]\neval: {attacks: pgd}\ntemperature: {values: [0.5, -1]}\n",
     "temperature.values must be a list of distinct positive numbers"),
    ("datasets: [fashion-mnist]\nmethods: [pgd-at]\neval: {attacks: pgd}\n"
     "temperature: {values: [0.5], methods: [trades]}\n", "temperature.methods must be a list of trained methods"),
    ("datasets: [fashion-mnist]\nmethods: [pgd-at]\neval: {attacks: pgd, subset_seed: each}\n",
     "eval.subset_seed must be an integer or 'per-seed'"),
    ("datasets: [fashion-mnist]\nmethods: [pgd-at]\neval: {attacks: pgd}\n"
     "ablation: {remove_confused_class: {control: 1}}\n", "control must be true or false"),
    ("- a\n- b\n", "an experiment file is a mapping"),
    ("datasets: [fashion-mnist]\nmethods: {trades: {beta: 1.0}}\neval: {attacks: pgd}\n",
     'methods.trades: beta is a setting of the method now: method: "trades:beta=1.0"'),
    ("datasets: [fashion-mnist]\nmethods: {pgd-at: {method: 'pgd-at:beta=1'}}\neval: {attacks: pgd}\n",
     "training method 'pgd-at' has no parameter 'beta'"),
])
def test_bad_experiment_files_are_refused_in_one_line(text, message, tmp_path, capsys):
    code, _, err = run(["experiment", write(tmp_path, text), "--check"], capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_per_seed_test_subsets(tmp_path):
    text = ("seeds: [3, 4]\ndatasets: [fashion-mnist]\nmethods: [pgd-at, trades]\n"
            "eval: {attacks: pgd, limit: 200, subset_seed: per-seed}\n")
    spec = load_spec(write(tmp_path, text))
    # each seed draws its own class-stratified subset; the methods of one seed share theirs (paired tests)
    assert {r.key: spec.eval_config(r).subset_seed for r in spec.runs} == {
        "fashion-mnist/pgd-at/seed3": 3, "fashion-mnist/pgd-at/seed4": 4,
        "fashion-mnist/trades/seed3": 3, "fashion-mnist/trades/seed4": 4}
    fixed = load_spec(write(tmp_path, text.replace("per-seed", "7"), "b.yaml"))
    assert {spec_run.seed: fixed.eval_config(spec_run).subset_seed for spec_run in fixed.runs} == {3: 7, 4: 7}


def test_temperature_is_the_lowest_validation_accuracy_ties_closest_to_one():
    from classrobust.evaluate import AttackResult, ClasswiseResult
    from classrobust.workflows.temperature import attack_name, choose_temperature

    labels = np.repeat([0, 1], 5)

    def sweep(right):  # {T: points right}
        return ClasswiseResult(["a", "b"], np.arange(10), labels, {
            attack_name(t): AttackResult(attack_name(t), labels, np.where(np.arange(10) < k, labels, 1 - labels), 2)
            for t, k in right.items()})

    chosen, means = choose_temperature([sweep({0.5: 4, 1.0: 6, 2.0: 4}), sweep({0.5: 6, 1.0: 6, 2.0: 4})],
                                       [0.5, 1.0, 2.0])
    assert means == {0.5: 0.5, 1.0: 0.6, 2.0: 0.4} and chosen == 2.0
    tie, _ = choose_temperature([sweep({0.25: 4, 0.5: 4, 4.0: 4})], [0.25, 0.5, 4.0])
    assert tie == 0.5  # equal accuracy: the T nearest plain PGD's loss


def test_missing_experiment_file(tmp_path, capsys):
    code, _, err = run(["experiment", tmp_path / "nope.yaml"], capsys)
    assert code == 2 and "does not exist" in err


@pytest.mark.parametrize("path", sorted((REPO / "experiments").rglob("*.yaml")), ids=lambda p: p.name)
def test_shipped_experiment_files_validate_without_data(path, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CLASSROBUST_DATA_DIR", str(tmp_path / "no-data"))
    monkeypatch.setenv("CLASSROBUST_SYSTEM_DATA", str(tmp_path / "no-system-data"))
    code, out, err = run(["experiment", path, "--check", "--out", tmp_path / "out"], capsys)
    spec = load_spec(path)
    # the file is valid and its plan shown; without the data it is not ready to run, and says so (#35, item 13)
    assert code == 1 and out.count("data missing: ") == len(spec.datasets), err
    assert f"valid; {len(spec.runs)} run" in out and len(spec.runs) >= 1
    if len(spec.methods) > 1:  # the plan says what is compared against what
        first = next(iter(spec.methods))
        assert f"against {first}" in out and all(m in out.split("compared: ")[1] for m in list(spec.methods)[1:])


def test_alpha_step_size_is_each_datasets_threat_model_step(tmp_path):
    """Issue #35, item 5: ThreatModel.step_size was unread while the paper files hard-coded it."""
    from classrobust.data import get_dataset_info

    spec = load_spec(write(tmp_path, "train: {alpha: step_size}\ndatasets: {fashion-mnist: {}, digits: {name: mnist}, "
                                     "c10: {name: cifar10, model: preact-resnet18}}\nmethods: [pgd-at]\n"
                                     "eval: {attacks: pgd}\n"))
    steps = {r.dataset: r.config.alpha for r in spec.runs}
    assert steps == {"fashion-mnist": 0.01, "digits": 0.01, "c10": pytest.approx(2 / 255)}
    assert steps["c10"] == get_dataset_info("cifar10").threat_model.step_size


def test_precedence_of_training_settings(tmp_path):
    spec = load_spec(write(tmp_path, """
train: {epochs: 5, lr: 0.1}
datasets:
  fashion-mnist: {eps: 0.2, train: {epochs: 7}}
  digits: {name: mnist}
methods:
  pgd-at: {}
  trades-b1: {method: "trades:beta=1.0", epochs: 9}
seeds: [1, 2]
eval: {attacks: pgd}
"""))
    assert len(spec.runs) == 8
    r = spec.run("fashion-mnist", "pgd-at", 1)
    assert (r.config.epochs, r.config.lr, r.config.eps, r.config.seed) == (7, 0.1, 0.2, 1)
    r = spec.run("fashion-mnist", "trades-b1", 2)
    assert (r.config.method, r.config.method_kwargs, r.config.epochs) == ("trades:beta=1", {"beta": 1.0}, 9)
    r = spec.run("digits", "pgd-at", 1)
    assert (r.config.dataset, r.config.eps, r.key) == ("mnist", None, "digits/pgd-at/seed1")
    with pytest.raises(UsageError, match="seeds are listed twice"):
        load_spec(write(tmp_path, "datasets: [mnist]\nmethods: [pgd-at]\nseeds: [1, 1]\neval: {attacks: pgd}\n"))


def test_defense_grid_with_levers_calibration_and_seeds(synthetic_env, tmp_path, capsys):
    text = TWO_SEEDS + f"""\
  reweight: {{method: pgd-at, classwise: reweight}}
  pgd-at+cal: {{base: pgd-at, calibrate: {CALIBRATE}}}
eval: {{attacks: "pgd:steps=3", limit: 100}}
"""
    out = tmp_path / "exp"
    code, stdout, err = run(["experiment", write(tmp_path, text), "--out", out, "--no-progress"], capsys)
    assert code == 0, err
    assert "fashion-mnist/pgd-at+cal/seed1: calibrating fashion-mnist/pgd-at/seed1" in stdout
    cal = json.loads((out / "runs/fashion-mnist/pgd-at+cal/seed0/model.json").read_text())
    assert cal["calibration"]["max_avg_drop"] == 0.05 and cal["calibration"]["val_size"] == 60
    methods = pd.read_csv(out / "report" / "methods.csv")
    pgd = methods[methods.attack == "pgd"].set_index("method")
    assert list(pgd.index) == ["pgd-at", "reweight", "pgd-at+cal"] and (pgd["seeds"] == 2).all()
    assert pgd.loc["pgd-at", "avg_vs_baseline"] == 0 and pd.isna(pgd.loc["pgd-at", "mcnemar_p"])
    assert 0 <= pgd.loc["reweight", "mcnemar_p_holm"] <= 1
    # the class every method is judged on: the baseline's worst on the validation split, not the test split
    val = np.mean([json.loads((out / f"runs/fashion-mnist/pgd-at/seed{s}/model.json").read_text())
                   ["metrics"]["val_pgd_accuracy_per_class"] for s in (0, 1)], axis=0)
    classes = json.loads((out / "runs/fashion-mnist/pgd-at/seed0/model.json").read_text())["classes"]
    assert (pgd["target_chosen_on"] == "validation").all()
    assert (pgd["worst_class"] == classes[int(np.nanargmin(val))]).all()
    report = (out / "report" / "report.md").read_text()
    assert "methods under pgd" in report
    # seeds are the unit: per-class cells are means over the 2 seeds, and every class has its seed-level test
    per_class = pd.read_csv(out / "report" / "per_class.csv")
    shirt = per_class[(per_class.method == "pgd-at") & (per_class.attack == "pgd") & (per_class.class_index == 6)]
    assert len(shirt) == 2 and "averaged over 2 seeds" in report
    assert f"{100 * shirt['accuracy'].mean():.1f}" in report.split("per-class accuracy under pgd")[1].split("## ")[0]
    by_class = pd.read_csv(out / "report" / "methods_per_class.csv")
    assert len(by_class) == 2 * 2 * 10 and set(by_class["method"]) == {"reweight", "pgd-at+cal"}  # x clean, pgd
    assert (by_class["seeds"] == 2).all() and (by_class["diff_perm_p"] >= 0.5).all()  # 2 seeds: floor 2/4
    disparity = pd.read_csv(out / "report" / "disparity_seeds.csv")
    assert len(disparity) == 3 * 2 and (disparity["worst_low"] <= disparity["worst"]).all()
    assert (disparity["worst"] <= disparity["worst_high"]).all()
    code, stdout, err = run(["experiment", write(tmp_path, text), "--out", out, "--no-progress"], capsys)
    assert code == 0 and stdout.count("complete, skipped") == 6, err
    changed = text.replace("max_avg_drop: 5.0", "max_avg_drop: 2.0")
    code, _, err = run(["experiment", write(tmp_path, changed, "b.yaml"), "--out", out, "--no-progress"], capsys)
    assert code == 2 and "calibrated with other settings" in err


def test_unfinished_experiment_exports_and_continues_from_the_export(synthetic_env, tmp_path, capsys):
    """An unfinished experiment's export keeps finished runs without weights, and the weights only of a
    run that later work still needs (here a calibration's base); `--out EXPORT` continues from it, skips
    what is done, and a final export leaves no weights behind."""
    grid = """
seeds: [0]
train: {epochs: 1, attack_steps: 1, batch_size: 50, val_size: 100, train_subset: 300, lr: 0.02}
datasets: [fashion-mnist]
methods:
  pgd-at: {}
  trades: {method: "trades:beta=1"}
  pgd-at+cal: {base: pgd-at, calibrate: {max_avg_drop: 5.0, val_size: 60, steps: 2, rounds: 1}}
eval: {attacks: "pgd:steps=3", limit: 100}
"""
    first = grid.replace("  trades: {method: \"trades:beta=1\"}\n", "").replace(
        "  pgd-at+cal: {base: pgd-at, calibrate: {max_avg_drop: 5.0, val_size: 60, steps: 2, rounds: 1}}\n", "")
    out, moved = tmp_path / "exp", tmp_path / "moved"
    assert run(["experiment", write(tmp_path, first, "first.yaml"), "--out", out, "--no-progress"], capsys)[0] == 0
    path = write(tmp_path, grid)
    code, stdout, err = run(["experiment", path, "--out", out, "--export", moved], capsys)
    assert code == 0 and "1 finished runs" in stdout and "2 runs to go" in stdout, err
    progress = json.loads((moved / "experiment-progress.json").read_text())
    assert progress["done"] == progress["with_weights"] == ["fashion-mnist/pgd-at/seed0"]
    assert [p.relative_to(moved).as_posix() for p in moved.rglob("*.safetensors")] == [
        "runs/fashion-mnist/pgd-at/seed0/model.safetensors"]  # the pending calibration's base
    assert not (moved / "experiment.json").exists() and not (moved / "report").exists()

    code, stdout, err = run(["experiment", path, "--out", moved, "--no-progress"], capsys)
    assert code == 0, err
    assert "fashion-mnist/pgd-at/seed0: complete, skipped" in stdout and "calibrating fashion-mnist/pgd-at" in stdout
    assert not (moved / "experiment-progress.json").exists()
    summary = json.loads((out / "runs/fashion-mnist/pgd-at/seed0/eval/summary.json").read_text())
    assert json.loads((moved / "runs/fashion-mnist/pgd-at/seed0/eval/summary.json").read_text()) == summary
    # once finished, the export is the weightless one with the report; the earlier export's weights go
    final = tmp_path / "final"
    assert run(["experiment", path, "--out", out, "--export", final], capsys)[0] == 0  # unfinished: partial
    assert list(final.rglob("*.safetensors"))
    code, stdout, err = run(["experiment", path, "--out", moved, "--export", final], capsys)
    assert code == 0 and "report:" in stdout, err
    assert not list(final.rglob("*.safetensors")) and not (final / "experiment-progress.json").exists()
    assert (final / "report" / "report.md").is_file()
    # a sidecar without weights or evaluation cannot be continued: one line, not a retrain over it
    (moved / "runs/fashion-mnist/trades/seed0/model.safetensors").unlink()
    import shutil

    shutil.rmtree(moved / "runs/fashion-mnist/trades/seed0/eval")
    code, _, err = run(["experiment", path, "--out", moved, "--no-progress"], capsys)
    assert code == 2 and "neither weights nor an evaluation" in err and err.count("\n") == 1


def test_calibrate_entry_needs_an_earlier_trained_base(tmp_path, capsys):
    text = ("datasets: [fashion-mnist]\nmethods:\n  cal: {base: pgd-at, calibrate: {}}\n  pgd-at: {}\n"
            "eval: {attacks: pgd}\n")
    code, _, err = run(["experiment", write(tmp_path, text), "--check"], capsys)
    assert code == 2 and "calibrate needs a base" in err


def test_a_diverged_run_is_recorded_and_the_grid_goes_on(synthetic_env, tmp_path, capsys, monkeypatch):
    """trades seed 1 hits a NaN loss in epoch 2: it is recorded (diverged.json, its log so far), the
    calibration on top of it is skipped, every other run finishes, trades is compared on seed 0 only,
    the report lists the divergence, a rerun does not retry it, and the export keeps the record."""
    from classrobust.training.methods.trades import TRADES

    real = TRADES.loss

    def nan_for_seed_1_in_epoch_2(self, model, x, y, *, eps, seed, **kw):
        loss, logits = real(self, model, x, y, eps=eps, seed=seed, **kw)
        step = (seed - 1_000_003) // 7  # the loop's per-step seed for config seed 1
        return (loss * float("nan"), logits) if seed >= 1_000_003 and step >= 8 else (loss, logits)

    monkeypatch.setattr(TRADES, "loss", nan_for_seed_1_in_epoch_2)
    text = TWO_SEEDS + f"""\
  trades: {{method: "trades:beta=1"}}
  trades+cal: {{base: trades, calibrate: {CALIBRATE}}}
eval: {{attacks: "pgd:steps=2", limit: 60}}
"""
    path, out = write(tmp_path, text), tmp_path / "exp"
    # seed 1 first; an export then says what diverged, and the continuation does not retry it
    first = write(tmp_path, text.replace("seeds: [0, 1]", "seeds: [1]"), "first.yaml")
    code, stdout, err = run(["experiment", first, "--out", out, "--no-progress"], capsys)
    assert code == 0, err
    assert "fashion-mnist/trades/seed1: diverged at epoch 2" in stdout
    code, stdout, err = run(["experiment", path, "--out", out, "--export", tmp_path / "partial"], capsys)
    assert code == 0 and "3 finished runs, 2 of them diverged" in stdout and "3 runs to go" in stdout, err
    assert json.loads((tmp_path / "partial/experiment-progress.json").read_text())["diverged"] == [
        "fashion-mnist/trades/seed1", "fashion-mnist/trades+cal/seed1"]
    code, stdout, err = run(["experiment", path, "--out", out, "--no-progress"], capsys)
    assert code == 0, err
    assert "fashion-mnist/trades+cal/seed1: skipped, the training of its base fashion-mnist/trades/seed1 diverged" \
        in stdout and "trades/seed1: skipped, its training diverged" in stdout
    record = json.loads((out / "runs/fashion-mnist/trades/seed1/diverged.json").read_text())
    assert (record["epoch"], record["epochs_completed"], record["config"]["seed"]) == (2, 1, 1)
    assert sorted(pd.read_csv(out / "runs/fashion-mnist/trades/seed1/train_log.csv")["epoch"].unique()) == [1]
    assert not (out / "runs/fashion-mnist/trades+cal/seed1").exists()
    index = json.loads((out / "experiment.json").read_text())
    assert len(index["runs"]) == 4 and [d["key"] for d in index["diverged"]] == [
        "fashion-mnist/trades/seed1", "fashion-mnist/trades+cal/seed1"]
    methods = pd.read_csv(out / "report" / "methods.csv")
    seeds = methods[methods.attack == "pgd"].set_index("method")["seeds"]
    assert seeds.to_dict() == {"pgd-at": 2, "trades": 1, "trades+cal": 1}
    report = (out / "report" / "report.md").read_text()
    assert "## Runs that diverged" in report and "its base fashion-mnist/trades/seed1" in report
    # a rerun skips it (the same seed would diverge again) and changes nothing
    monkeypatch.setattr(TRADES, "loss", real)
    code, stdout, err = run(["experiment", path, "--out", out, "--no-progress"], capsys)
    assert code == 0 and stdout.count("complete, skipped") == 4 and "trades/seed1: skipped, its training" in stdout
    final = tmp_path / "final"
    assert run(["experiment", path, "--out", out, "--export", final], capsys)[0] == 0
    assert (final / "runs/fashion-mnist/trades/seed1/diverged.json").is_file()
    assert "## Runs that diverged" in (final / "report" / "report.md").read_text()


def test_a_finished_experiment_with_a_diverged_ablation_retrain_is_finished(tmp_path, monkeypatch):
    """The index's diverged list holds ablation retrains too; they are not the spec's runs, so they must not
    make a finished experiment look unfinished (its export would then be a progress export)."""
    from classrobust.report.experiment import INDEX
    from classrobust.workflows import experiment

    spec = load_spec(write(tmp_path, TINY), out=tmp_path / "exp")
    spec.out.mkdir()
    monkeypatch.setattr(experiment, "run_state", lambda spec, run: "done")
    retrain = spec.ablation_run(spec.runs[0], "Shirt")
    index = {"runs": [{"key": r.key} for r in spec.runs], "diverged": [{"key": retrain.key}]}
    (spec.out / INDEX).write_text(json.dumps(index))
    assert experiment.is_finished(spec)
    # a spec run that diverged counts as finished; one missing from the index does not
    index = {"runs": [{"key": spec.runs[0].key}], "diverged": [{"key": spec.runs[1].key}, {"key": retrain.key}]}
    (spec.out / INDEX).write_text(json.dumps(index))
    assert experiment.is_finished(spec)
    (spec.out / INDEX).write_text(json.dumps({"runs": [{"key": spec.runs[0].key}], "diverged": [{"key": retrain.key}]}))
    assert not experiment.is_finished(spec)


def test_a_grid_whose_every_run_diverged_says_so_in_one_line(synthetic_env, tmp_path, capsys, monkeypatch):
    from classrobust.training.methods.pgd_at import PGDAT

    real = PGDAT.loss

    def always_nan(self, *args, **kwargs):
        loss, logits = real(self, *args, **kwargs)
        return loss * float("nan"), logits

    monkeypatch.setattr(PGDAT, "loss", always_nan)
    text = TWO_SEEDS.replace("seeds: [0, 1]", "seeds: [0]").replace("epochs: 2", "epochs: 1") + \
        'eval: {attacks: "pgd:steps=2", limit: 60}\n'
    code, stdout, err = run(["experiment", write(tmp_path, text), "--out", tmp_path / "exp", "--no-progress"], capsys)
    assert code == 1 and err.count("\n") == 1 and "every run of" in err and "diverged" in err, err
    assert (tmp_path / "exp/runs/fashion-mnist/pgd-at/seed0/diverged.json").is_file()
    assert not (tmp_path / "exp/experiment.json").exists()


def test_check_passes_when_the_data_is_there(synthetic_env, tmp_path, capsys):
    code, out, err = run(["experiment", write(tmp_path, TWO_SEEDS + 'eval: {attacks: "pgd:steps=3"}\n'), "--check"],
                         capsys)
    assert code == 0 and "data missing" not in out, out + err
