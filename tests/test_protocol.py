"""The defense protocol end to end on a tiny grid: screen (validation only), select (frozen file),
confirm (fresh seeds, frontier of each baseline), verdict; and its refusals."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from classrobust.analysis.protocol import frontier_gaps, screen_choice
from conftest import run

SCREEN = """
name: tiny-screen
out: {out}
seeds: [100, 101]
train: {{epochs: 1, attack_steps: 1, batch_size: 50, val_size: 60, train_subset: 300, lr: 0.02}}
datasets: [fashion-mnist]
methods:
  pgd-at: {{}}
  reweight-s2: {{method: pgd-at, classwise: "reweight:strength=2"}}
  reweight-s4: {{method: pgd-at, classwise: "reweight:strength=4"}}
eval: {{attacks: "pgd:steps=2", split: val, limit: 60}}
protocol:
  margin: 50
  target: {{attack: pgd, worst_gain: 5, max_avg_drop: 1, alpha: 0.05}}
  confirm:
    seeds: [0, 1]
    out: {confirm_out}
    eval: {{attacks: "pgd:steps=2", limit: 40, subset_seed: per-seed}}
  frontier: {{allowances: [0, 5], fit_steps: 2, fit_targets: 2, val_size: 40}}
"""


@pytest.fixture
def test_split_reads(monkeypatch):
    """Counts reads of test-split images; ``reads["phase"]`` names what is running."""
    from classrobust.data.base import ImageTensorDataset

    reads = {"phase": None}
    original = ImageTensorDataset.__getitem__

    def getitem(self, index):
        if self.split == "test":
            reads[reads["phase"]] = reads.get(reads["phase"], 0) + 1
        return original(self, index)

    monkeypatch.setattr(ImageTensorDataset, "__getitem__", getitem)
    return reads


def test_protocol_screen_select_confirm_verdict(synthetic_env, tmp_path, capsys, test_split_reads, monkeypatch):
    screen = tmp_path / "screen.yaml"
    screen.write_text(SCREEN.format(out=tmp_path / "screen", confirm_out=tmp_path / "confirm"))
    confirm = tmp_path / "confirm.yaml"
    # the screen's table cannot be selected from before the screen ran
    code, _, err = run(["protocol", "select", screen, "--out", confirm], capsys)
    assert code == 2 and "not finished" in err and not confirm.exists()

    test_split_reads["phase"] = "screen"
    code, stdout, err = run(["protocol", "screen", screen, "--no-progress"], capsys)
    assert code == 0, err
    assert test_split_reads.get("screen", 0) == 0  # the screen never read a test image
    summary = json.loads((tmp_path / "screen/runs/fashion-mnist/pgd-at/seed100/eval/summary.json").read_text())
    assert summary["meta"]["split"] == "val" and summary["meta"]["limit"] == 60
    table = pd.read_csv(tmp_path / "screen" / "protocol-screen.csv")
    assert set(table["method"]) == {"reweight-s2", "reweight-s4"} and table["kept"].sum() == 1
    assert "| reweight-s" in stdout and "kept" in stdout

    test_split_reads["phase"] = "select"
    code, stdout, err = run(["protocol", "select", screen, "--out", confirm], capsys)
    assert code == 0, err
    frozen = yaml.safe_load(confirm.read_text())
    kept = table.loc[table["kept"], "method"].iloc[0]
    assert list(frozen["methods"]) == ["pgd-at", kept] and frozen["seeds"] == [0, 1]
    assert frozen["eval"]["split"] == "test" and frozen["protocol"]["chosen"] == [kept]
    assert frozen["protocol"]["screen"]["read_at"] <= frozen["protocol"]["frozen_at"]
    # an unstarted confirmation may be written again; a foreign file never
    assert run(["protocol", "select", screen, "--out", confirm], capsys)[0] == 0
    (tmp_path / "notes.yaml").write_text("mine: 1\n")
    code, _, err = run(["protocol", "select", screen, "--out", tmp_path / "notes.yaml"], capsys)
    assert code == 2 and "not a confirmation file" in err and (tmp_path / "notes.yaml").read_text() == "mine: 1\n"

    # the verdict needs a confirmation that ran
    code, _, err = run(["protocol", "verdict", confirm], capsys)
    assert code == 2 and "has not started" in err

    test_split_reads["phase"] = "confirm"
    import classrobust.defenses.frontier as frontier

    original_fit = frontier.fit_frontier

    def fit(*args, **kwargs):  # the frontier's fit reads validation images only
        before = test_split_reads.get("confirm", 0)
        out = original_fit(*args, **kwargs)
        assert test_split_reads.get("confirm", 0) == before
        return out

    monkeypatch.setattr(frontier, "fit_frontier", fit)
    code, stdout, err = run(["protocol", "confirm", confirm, "--no-progress"], capsys)
    assert code == 0, err
    assert test_split_reads.get("confirm", 0) > 0  # the confirmation is judged on test images
    verdict = pd.read_csv(tmp_path / "confirm" / "protocol-verdict.csv")
    assert list(verdict["method"]) == [kept] and verdict["average_rule"].iloc[0] == "non-inferiority"
    assert not verdict["meets"].iloc[0]  # two seeds cannot pass a sign-flip test at 0.05 (floor 1/4)
    gaps = pd.read_csv(tmp_path / "confirm" / "protocol-verdict-frontier.csv")
    assert sorted(gaps["seed"]) == [0, 1] and gaps["gap"].notna().any()
    order = json.loads((tmp_path / "confirm" / "protocol.json").read_text())
    assert order["frozen_at"] <= order["started_at"] <= order["first_result_seen_at"]
    assert "Against the calibration frontier" in stdout and "Order: screen read" in stdout
    for seed in (0, 1):  # the frontier's uncalibrated point is the evaluation itself (same images, attack)
        record = json.loads((tmp_path / f"confirm/frontier/fashion-mnist/pgd-at/seed{seed}/frontier.json").read_text())
        base = next(r for r in record["rows"] if r["allowance"] is None)
        result = json.loads((tmp_path / f"confirm/runs/fashion-mnist/pgd-at/seed{seed}/eval/summary.json").read_text())
        assert sum(base["n_per_class"]) == 40 and record["wanted"]["subset_seed"] == seed
        assert sum(base["robust_per_class"]) == round(result["attacks"]["pgd"]["accuracy"] * 40)

    # frozen from now on: selecting again, editing the confirmation, editing the screen are refused
    code, _, err = run(["protocol", "select", screen, "--out", confirm], capsys)
    assert code == 2 and "has started" in err
    code, _, err = run(["protocol", "verdict", confirm], capsys)
    assert code == 0, err
    original = confirm.read_text()
    confirm.write_text(original.replace("limit: 40", "limit: 30"))
    code, _, err = run(["protocol", "confirm", confirm], capsys)
    assert code == 2 and "changed after its confirmation started" in err
    confirm.write_text(original)
    screen.write_text(screen.read_text().replace("margin: 50", "margin: 40"))
    code, _, err = run(["protocol", "verdict", confirm], capsys)
    assert code == 2 and "screen file" in err and "changed after the confirmation was frozen" in err
    screen.write_text(SCREEN.format(out=tmp_path / "screen", confirm_out=tmp_path / "confirm"))
    # a record whose steps are out of order is refused
    (tmp_path / "confirm" / "protocol.json").write_text(json.dumps({**order, "started_at": "2000-01-01T00:00:00+00:00"}))
    code, _, err = run(["protocol", "verdict", confirm], capsys)
    assert code == 2 and "out of order" in err


@pytest.mark.parametrize("change, message", [
    ("split: val, ", "set eval.split: val"),
    ("seeds: [0, 1]", "disjoint from the screen's seeds"),
    ("margin: 50", "protocol.margin must be a number"),
    ("keep: per-lever", "protocol.keep must be one of"),
])
def test_bad_screen_files_are_refused_in_one_line(change, message, tmp_path, capsys):
    text = SCREEN.format(out=tmp_path / "s", confirm_out=tmp_path / "c")
    text = {"split: val, ": text.replace("split: val, ", ""),
            "seeds: [0, 1]": text.replace("seeds: [0, 1]", "seeds: [0, 100]"),
            "margin: 50": text.replace("margin: 50", "margin: lots"),
            "keep: per-lever": text.replace("margin: 50", "margin: 50\n  keep: all")}[change]
    (tmp_path / "s.yaml").write_text(text)
    code, _, err = run(["protocol", "screen", tmp_path / "s.yaml"], capsys)
    assert code == 2 and message in err and err.count("\n") == 1


def test_screen_choice_rule():
    """Per lever, the highest worst class among settings within the margin; best pick kept alone."""
    rows = [("pgd-at", "pgd-at", 0.0, 0.20, 0.70), ("a1", "pgd-at", -0.005, 0.30, 0.695),
            ("a2", "pgd-at", -0.03, 0.40, 0.67), ("b1", "pgd-at", -0.002, 0.25, 0.698)]
    methods = pd.DataFrame([{"attack": "pgd", "method": m, "baseline_method": b, "avg_diff_mean": d, "worst_any": w,
                             "avg": a} for m, b, d, w, a in rows])
    families = {"a1": "a", "a2": "a", "b1": "b"}
    table = screen_choice(methods, "pgd", 1.0, families).set_index("method")
    assert not table.loc["a2", "eligible"] and table.loc["a1", "picked"] and table.loc["b1", "picked"]
    assert list(table.index[table["kept"]]) == ["a1"]
    assert set(screen_choice(methods, "pgd", 5.0, families, keep="per-lever").query("kept").method) == {"a2", "b1"}


def test_frontier_gap_interpolates_and_says_where_it_cannot():
    record = {"classes": ["a", "b"], "rows": [
        {"checkpoint": "base", "allowance": None, "robust_per_class": [80, 20], "n_per_class": [100, 100],
         "val_average": 0.5, "val_worst": 0.2},
        {"checkpoint": "base", "allowance": 4.0, "robust_per_class": [60, 32], "n_per_class": [100, 100],
         "val_average": 0.46, "val_worst": 0.32}]}  # averages 50 and 46, worst 20 and 32
    runs = pd.DataFrame([{"key": k, "dataset": "d", "method": m, "baseline": "base", "seed": s}
                         for k, m, s in (("b0", "base", 0), ("l0", "lever", 0), ("b1", "base", 1), ("l1", "lever", 1),
                                         ("b2", "base", 2), ("l2", "lever", 2))])
    overview = pd.DataFrame([{"method": "lever", "seed": s, "attack": "aa", "accuracy": a, "worst_accuracy": w}
                             for s, a, w in ((0, 0.48, 0.30), (1, 0.52, 0.25), (2, 0.40, 0.40))])
    gaps = frontier_gaps(overview, runs, {"b0": record, "b1": record, "b2": record}, "aa").set_index("seed")
    assert gaps.loc[0, "gap"] == pytest.approx(30 - 26)  # frontier at 48: halfway between 20 and 32
    assert gaps.loc[1, "gap"] == pytest.approx(25 - 20) and "above the baseline" in gaps.loc[1, "note"]
    assert np.isnan(gaps.loc[2, "gap"]) and "larger allowances" in gaps.loc[2, "note"]


def test_temperature_command_chooses_on_validation_then_scores_the_test_split(trained_run, tmp_path, capsys,
                                                                             test_split_reads, monkeypatch):
    """`classrobust temperature`: the sweep reads validation images only; T is recorded before the test
    split is attacked with it; the test evaluation pairs PGD and Temperature-PGD at that T."""
    import classrobust.workflows.temperature as temperature

    original = temperature.sweep_validation
    seen = {}

    def sweep(*args, **kwargs):
        test_split_reads["phase"] = "sweep"
        try:
            return original(*args, **kwargs)
        finally:
            test_split_reads["phase"] = None

    def evaluate(*args, **kwargs):  # the choice is on disk before the first test image is attacked
        seen["recorded"] = json.loads((tmp_path / "t" / "temperature.json").read_text())["chosen"]
        return original_eval(*args, **kwargs)

    import classrobust.workflows.evaluate as evaluate_module

    original_eval = evaluate_module.evaluate_checkpoint
    monkeypatch.setattr(temperature, "sweep_validation", sweep)
    monkeypatch.setattr(evaluate_module, "evaluate_checkpoint", evaluate)
    code, stdout, err = run(["temperature", "--checkpoint", trained_run, "--values", "0.1,1", "--steps", "2",
                             "--val-limit", "30", "--limit", "40", "--out", tmp_path / "t", "--no-progress"], capsys)
    assert code == 0, err
    assert test_split_reads.get("sweep", 0) == 0 and test_split_reads.get(None, 0) > 0
    entry = json.loads((tmp_path / "t" / "temperature.json").read_text())
    assert seen["recorded"] == entry["chosen"] and entry["chosen_on"] == "validation"
    test = json.loads((tmp_path / "t" / "test" / "summary.json").read_text())
    assert set(test["attacks"]) == {"clean", "pgd", "temp-pgd"} and test["meta"]["split"] == "test"
    assert test["attacks"]["temp-pgd"]["config"]["temperature"] == entry["chosen"]
    assert "(chosen)" in stdout and "validation robust accuracy" in stdout
    code, _, err = run(["temperature", "--checkpoint", trained_run, "--values", "0.1,-1"], capsys)
    assert code == 2 and "positive" in err and err.count("\n") == 1


def test_a_declared_design_confirms_without_a_screen(tmp_path, monkeypatch):
    """A confirmation declared without a screen (the frontier experiment) names when it was frozen;
    its order starts there, and a frozen_at after the start is refused by the verdict's order check."""
    from classrobust.workflows import experiment, protocol

    text = SCREEN.format(out=tmp_path / "d", confirm_out=tmp_path / "unused")
    declared = yaml.safe_load(text)
    declared["eval"] = {"attacks": "pgd:steps=2", "limit": 40}
    declared["protocol"] = {"stage": "confirm", "frozen_at": "2099-01-01T00:00:00+00:00",
                            "chosen": ["reweight-s2"], "target": {"attack": "pgd"}}
    path = tmp_path / "declared.yaml"
    path.write_text(yaml.safe_dump(declared))
    monkeypatch.setattr(experiment, "run_experiment", lambda *a, **k: None)
    monkeypatch.setattr(protocol, "verdict", lambda p: "judged")
    with pytest.raises(Exception, match="after now"):  # frozen in the future: not frozen yet
        protocol.confirm(path)
    assert not (tmp_path / "d" / "protocol.json").exists()
    declared["protocol"]["frozen_at"] = "2026-12-01T00:00:00+00:00"
    path.write_text(yaml.safe_dump(declared))
    assert protocol.confirm(path) == "judged"
    order = json.loads((tmp_path / "d" / "protocol.json").read_text())
    assert order["screen_read_at"] == order["frozen_at"] == "2026-12-01T00:00:00+00:00"
    assert order["frozen_at"] <= order["started_at"] <= order["first_result_seen_at"]
    del declared["protocol"]["frozen_at"]
    path.write_text(yaml.safe_dump(declared))
    code_message = pytest.raises(Exception, protocol.confirm, path)
    assert "frozen_at" in str(code_message.value)
