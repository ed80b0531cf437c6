"""Tables in the docs are generated from committed results: each test rebuilds one and compares."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from classrobust.analysis.protocol import plateau, run_costs, training_logs
from classrobust.report.figures import training_curves
from classrobust.report.protocol import cost_markdown, per_class_markdown, plateau_markdown, target_markdown

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _block(doc: Path, marker: str) -> str:
    text = doc.read_text()
    found = re.search(rf"<!-- {marker} -->\n(.*?)\n<!-- /{marker} -->", text, re.S)
    assert found, f"{doc.name} has no <!-- {marker} --> block"
    return found.group(1).strip()


@pytest.mark.parametrize("marker, members, autoattack", [
    ("attack-members-1000", "attack_members_1000.json", "autoattack_1000_seed0.json"),  # with the reference
    ("attack-members", "attack_members_2000.json", "autoattack_2000_seed0.json"),  # the 2,000 images
])
def test_attack_member_tables_match_their_results(marker, members, autoattack):
    script = _load(ROOT / "benchmarks" / "attack_members.py")
    results = ROOT / "benchmarks" / "results"
    record = json.loads((results / members).read_text())
    aa = json.loads((results / autoattack).read_text())
    assert _block(ROOT / "docs" / "attacks.md", marker) == script.render(record, aa).strip()
    robust = record["robust_per_class"]
    for k in range(len(record["classes"])):  # a stronger attack never leaves more robust than PGD-20 here
        assert robust["apgd-ce"][k] <= robust["pgd-20"][k] + 1 and robust["pgd-20"][k] <= robust["clean"][k]
    # the records' own consistency: the same clean points on both sides; our AutoAttack never leaves
    # more points robust than its first member alone (APGD-CE, the same seed); the members' flips
    # add up to clean - AutoAttack
    run = aa["runs"][0]
    ours = run["robust_per_class"]["ours"]
    for k in range(len(record["classes"])):
        flips = sum(run["member_flips_per_class"][m][k] for m in script.MEMBERS)
        assert record["robust_per_class"]["clean"][k] - flips == ours[k]
        assert ours[k] <= record["robust_per_class"]["apgd-ce"][k]


def _records(pattern: str) -> list[dict]:
    """The committed benchmark records matching ``pattern``, in name order (at least one)."""
    paths = sorted((ROOT / "benchmarks" / "results").glob(pattern))
    assert paths, f"no benchmarks/results/{pattern}"
    return [json.loads(p.read_text()) for p in paths]


def test_autoattack_benchmark_table_matches_its_results():
    script = _load(ROOT / "benchmarks" / "autoattack_speed.py")
    loaded = _records("autoattack_1000_seed*.json")
    assert _block(ROOT / "benchmarks" / "README.md", "autoattack-speed") == script.render(loaded).strip()
    if any("unit_cost_us" in r for r in loaded):  # records with the members' times
        assert _block(ROOT / "benchmarks" / "README.md", "autoattack-members") == script.render_members(loaded).strip()
    # fidelity: on the same model and images our AutoAttack never leaves more points robust than the
    # reference implementation beyond run-to-run noise (random starts and Square's draws differ):
    # at most one image per class
    compared = 0
    for record in loaded:
        for run in record["runs"]:
            counts = run["robust_per_class"]
            if "reference" in counts:
                above = [k for k, (o, r) in enumerate(zip(counts["ours"], counts["reference"])) if o > r + 1]
                assert not above, f"seed {run['seed']}: ours above the reference in classes {above}"
                compared += 1
    assert compared or not any("reference" in r.get("sides", []) for r in loaded)


def test_fab_fix_paragraph_quotes_its_record():
    """The numbers benchmarks/README.md types about the AutoAttack re-run after #32's FAB-T fix."""
    record = json.loads((ROOT / "benchmarks" / "results" / "autoattack_1000_seed0_fab-fixed.json").read_text())
    before = json.loads((ROOT / "benchmarks" / "results" / "autoattack_1000_seed0.json").read_text())
    run, old = record["runs"][0], before["runs"][0]
    text = (ROOT / "benchmarks" / "README.md").read_text()
    paragraph = text[text.index("**After issue #32's FAB-T fix**"):].split("\n\n")[0]
    counts = run["robust_per_class"]
    assert counts["ours"] == old["robust_per_class"]["ours"] and counts["reference"] == old["robust_per_class"]["reference"]
    assert f"ours {sum(counts['ours'])}, the reference {sum(counts['reference'])}" in paragraph
    assert f"{run['seconds']['reference'] / run['seconds']['ours']:.2f}x faster" in paragraph


def test_curve_tightness_table_matches_its_results():
    script = _load(ROOT / "benchmarks" / "curve_tightness.py")
    loaded = _records("curves_*.json")
    assert _block(ROOT / "docs" / "attacks.md", "curve-tightness") == script.render(loaded).strip()
    # the records' own consistency: every method, the source record and AutoAttack's verdicts cover
    # the same points, and no method beats the per-point best it is part of (median ratio >= 1)
    for record in loaded:
        n = len(record["labels"])
        assert all(len(record["distances"][m]) == n for m in record["methods"])
        assert len(record["mindist_source"]) == n == len(record["autoattack_robust"])
        rows = {r["method"]: r for r in script.summary(record)}
        assert rows["mindist"]["median_ratio"] >= 1.0


def test_curve_tightness_prose_matches_its_records():
    """What docs/attacks.md says of the tightness records, checked against them."""
    import numpy as np

    script = _load(ROOT / "benchmarks" / "curve_tightness.py")
    results = ROOT / "benchmarks" / "results"
    linf, l2 = (json.loads((results / f"curves_{n}_200.json").read_text()) for n in ("linf", "l2"))
    rows = {n: {r["method"]: r for r in script.summary(rec)} for n, rec in (("linf", linf), ("l2", l2))}
    assert rows["linf"]["mindist"]["within"] > 0.9  # "more than 90% of the points"
    assert all(c["curve_at_eps"] == c["autoattack"] for c in script.per_class(linf))  # "in every class"
    assert all(rows["linf"][m]["seconds"] > rows["linf"]["mindist"]["seconds"] for m in ("fmn-1000", "fab-t"))
    assert 0.6 <= rows["l2"]["mindist"]["within"] < 0.75 and rows["l2"]["mindist"]["median_ratio"] < 1.005
    assert sum(c["curve_at_eps"] > c["autoattack"] for c in script.per_class(l2)) == 3  # "three classes"
    assert all(1 / 7 < rows[n]["mindist"]["of_autoattack"] < 1 / 5 for n in rows)  # "about a sixth"
    d = {m: np.array(l2["distances"][m]) for m in l2["methods"]}
    best = np.min(np.stack(list(d.values())), 0)
    for m in ("mindist", "fmn-1000"):  # "each find the smallest distance on about two in five points"
        assert 0.35 <= np.mean(d[m] <= best) <= 0.45


def test_autoattack_member_times_against_the_models_own_cost():
    script = _load(ROOT / "benchmarks" / "autoattack_speed.py")
    record = {"unit_cost_us": {"forward": 200.0, "forward_gradient": 500.0}, "n_per_class": [5, 5],
              "runs": [{"seed": 0, "member_seconds": {"apgd-ce": 0.5, "apgd-t": 3.6, "fab-t": 0.0, "square": 8.0},
                        "member_points": {"apgd-ce": 10, "apgd-t": 8, "fab-t": 0, "square": 8}}]}
    rows = script.render_members([record, {"runs": []}]).splitlines()[2:]  # a record without times adds nothing
    assert rows[0] == f"| 10 | 0 | {script.FAB_BEFORE} | apgd-ce | 10 | 0 | 50 | 100 | 50 |"  # 100 gradients x 0.5 ms
    assert rows[1] == f"| 10 | 0 | {script.FAB_BEFORE} | apgd-t | 8 | 4 | 450 | 900 | 450 |"
    assert rows[2] == f"| 10 | 0 | {script.FAB_BEFORE} | fab-t | 0 | 0 |  | 900 | 630 |"  # never reached: no per-point time
    assert rows[3] == f"| 10 | 0 | {script.FAB_BEFORE} | square | 8 | 8 | 1000 | 5000 | 1000 |"


def _per_class(export):
    """The confirmation's per-class table under AutoAttack, from an export's report tables."""
    import pandas as pd

    from classrobust.analysis.protocol import per_class_changes

    report = export / "report"
    return per_class_changes(pd.read_csv(report / "per_class.csv"), pd.read_csv(report / "methods_per_class.csv"),
                             "autoattack", ("pgd-at", "trades"))


def test_lever_screen_table_matches_its_results():
    import pandas as pd

    script = _load(ROOT / "experiments" / "quick" / "screen_levers.py")
    runs = pd.read_csv(ROOT / "docs" / "results" / "lever-screen" / "runs.csv")
    assert _block(ROOT / "docs" / "defenses.md", "lever-screen") == script.render(runs).strip()
    assert _block(ROOT / "docs" / "defenses.md", "lever-tradeoff") == script.render_tradeoff(runs).strip()
    # the screen read the validation split only: every number comes from a training log
    assert set(runs.columns) >= {"val_clean", "val_pgd", "val_worst_pgd"}
    assert not any(c.startswith("test") for c in runs.columns)


def test_lever_tradeoff_pairs_each_setting_with_the_baseline_of_its_seed(tmp_path):
    """The screen's trade-off: differences taken seed by seed (the run is the unit), a seed the baseline
    has not finished left out, intervals only from two seeds on; the plot is written."""
    import pandas as pd

    script = _load(ROOT / "experiments" / "quick" / "screen_levers.py")
    row = lambda setting, seed, avg, worst: {"setting": setting, "classwise": "", "seed": seed,  # noqa: E731
                                             "val_pgd": avg, "val_worst_pgd": worst}
    runs = pd.DataFrame([row("pgd-at", 100, 0.70, 0.30), row("pgd-at", 101, 0.72, 0.40),
                         row("lever", 100, 0.70, 0.36), row("lever", 101, 0.71, 0.44), row("lever", 102, 0.0, 0.0),
                         row("other", 101, 0.74, 0.38)])
    diffs = script.paired_differences(runs).set_index("setting")
    assert diffs.loc["lever", "seeds"] == 2 and diffs.loc["lever", "worst_per_seed"] == pytest.approx([6.0, 4.0])
    assert diffs.loc["lever", "worst_mean"] == pytest.approx(5.0) and diffs.loc["lever", "avg_mean"] == pytest.approx(-0.5)
    # two seeds: t(0.975, 1) = 12.71 times sd / sqrt(2) = 12.71 * 1.414 / 1.414
    assert diffs.loc["lever", "worst_high"] - 5.0 == pytest.approx(12.706, abs=1e-3)
    text = script.render_tradeoff(runs)
    assert "| lever | 2 | +5.0 [-7.7, +17.7] (+6.0, +4.0) | -0.5 [-6.9, +5.9] (+0.0, -1.0) |" in text
    assert "| other | 1 | -2.0 (-2.0) | +2.0 (+2.0) |" in text  # one seed: no interval
    script.tradeoff_plot(runs, tmp_path / "tradeoff.png")
    assert (tmp_path / "tradeoff.png").stat().st_size > 10_000


def test_confirmation_verdict_only_from_a_finished_export(tmp_path):
    """screen_levers.py verdict: refused while the export is unfinished or missing; from a finished one,
    every non-baseline method judged under AutoAttack against the target declared in the script."""
    import pandas as pd

    script = _load(ROOT / "experiments" / "quick" / "screen_levers.py")
    assert script.TARGET == dict(attack="autoattack", worst_gain=5.0, max_avg_drop=1.0, alpha=0.05)
    with pytest.raises(SystemExit, match="no .*methods.csv"):
        script.verdict(tmp_path)
    (tmp_path / "experiment-progress.json").write_text("{}")
    with pytest.raises(SystemExit, match="unfinished"):
        script.verdict(tmp_path)
    (tmp_path / "experiment-progress.json").unlink()
    (tmp_path / "report").mkdir()  # where a finished export's report tables are
    row = lambda attack, method, base, worst, avg, t_p, perm_p: {  # noqa: E731
        "dataset": "fashion-mnist", "attack": attack, "method": method, "baseline_method": base, "seeds": 5,
        "worst_class": "Shirt", "worst_alternative": "greater", "worst_diff_mean": worst,
        "worst_diff_low": worst - 0.02, "worst_diff_high": worst + 0.02, "worst_diff_t_p": t_p,
        "worst_diff_perm_p": perm_p, "avg_diff_mean": avg, "avg_diff_low": avg - 0.01, "avg_diff_high": avg + 0.01,
        "avg_diff_t_p": 0.2, "avg_diff_perm_p": 0.5}
    pd.DataFrame([row("autoattack", "pgd-at", "pgd-at", 0, 0, float("nan"), float("nan")),
                  row("autoattack", "pgd-at+x", "pgd-at", 0.08, -0.004, 0.001, 1 / 32),
                  row("pgd", "pgd-at+x", "pgd-at", 0.0, 0.0, 0.9, 0.9),  # another attack: not judged
                  row("autoattack", "trades+x", "trades", 0.04, 0.0, 0.01, 1 / 32),
                  row("autoattack", "trades", "pgd-at", 0.01, 0.0, 0.5, 0.5)]).to_csv(  # a baseline: not judged
        tmp_path / "report" / "methods.csv")
    table = script.verdict(tmp_path)
    assert list(table.method) == ["pgd-at+x", "trades+x"] and list(table.meets) == [True, False]
    text = target_markdown(table)
    assert "| pgd-at+x | pgd-at | 5 | Shirt | +8.0 [+6.0, +10.0] | 0.001 | 0.031 | -0.4 [-1.4, +0.6] | 0.2, 0.5 | yes " \
           "|  |" in text
    assert "| trades+x | trades | 5 | Shirt | +4.0 [+2.0, +6.0] | 0.01 | 0.031 | +0.0 [-1.0, +1.0] | 0.2, 0.5 | no | " \
           "worst-class gain +4.0 < +5 |" in text
    script.verdict_plot(table, tmp_path / "tradeoff.png")  # the trade-off item 5 asks for when no lever meets it
    assert (tmp_path / "tradeoff.png").stat().st_size > 10_000


def test_confirmation_plateau_reads_the_baselines_validation_logs(tmp_path):
    """The 'worst class has stopped moving' table: per baseline run, its last epoch's worst validation
    class and that class's validation PGD accuracy over the last epochs; levers' logs are not read."""
    import pandas as pd

    script = _load(ROOT / "experiments" / "quick" / "screen_levers.py")

    def log(shirt):  # per-class rows (two classes) and the overall row (-1) per epoch
        rows = []
        for epoch, s in enumerate(shirt, 1):
            rows += [{"epoch": epoch, "class_index": -1, "class_name": "all", "val_clean_accuracy": 0.8,
                      "val_pgd_accuracy": 0.7},
                     {"epoch": epoch, "class_index": 0, "class_name": "Shirt", "val_clean_accuracy": 0.5,
                      "val_pgd_accuracy": s},
                     {"epoch": epoch, "class_index": 1, "class_name": "Bag", "val_clean_accuracy": 0.9,
                      "val_pgd_accuracy": 0.45}]
        return pd.DataFrame(rows)

    for method, seed, shirt in (("pgd-at", 0, [0.1, 0.3, 0.38, 0.40, 0.39]), ("trades", 1, [0.2, 0.5, 0.6, 0.5, 0.55]),
                                ("pgd-at+lever", 0, [0.0] * 5)):
        folder = tmp_path / "runs" / "fashion-mnist" / method / f"seed{seed}"
        folder.mkdir(parents=True)
        log(shirt).to_csv(folder / "train_log.csv", index=False)
    lost = tmp_path / "runs" / "fashion-mnist" / "trades" / "seed2"  # diverged: its log stops early
    lost.mkdir()
    log([0.1, 0.2]).to_csv(lost / "train_log.csv", index=False)
    (lost / "diverged.json").write_text("{}")
    logs = training_logs(tmp_path, ("pgd-at", "trades"))
    assert sorted(logs) == [("pgd-at", 0), ("trades", 1)]
    table = plateau(logs).set_index("method")
    assert table.loc["pgd-at", "worst_class"] == "Shirt" and table.loc["pgd-at", "range"] == pytest.approx(0.02)
    assert table.loc["trades", "worst_class"] == "Bag"  # the last epoch's worst class, not Shirt's history
    assert "| pgd-at | 0 | Shirt | 38.0, 40.0, 39.0 | 2.0 |" in plateau_markdown(table.reset_index())
    training_curves(logs[("trades", 1)]).savefig(tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 10_000


def test_confirmation_cost_reads_each_runs_records(tmp_path):
    """What the confirmation cost: training epochs from the log (once per epoch, not per class row), the
    calibration fit from its record (missing in older records: shown as '-'), the evaluation's seconds."""
    import pandas as pd

    script = _load(ROOT / "experiments" / "quick" / "screen_levers.py")
    base = tmp_path / "runs" / "fashion-mnist" / "pgd-at" / "seed0"
    cal = tmp_path / "runs" / "fashion-mnist" / "pgd-at+cal" / "seed0"
    for folder in (base, cal):
        (folder / "eval").mkdir(parents=True)
        (folder / "eval" / "summary.json").write_text(json.dumps({"meta": {"seconds": 600.0}}))
    (base / "model.json").write_text(json.dumps({"config": {}}))
    (cal / "model.json").write_text(json.dumps({"calibration": {"seconds": 180.0}}))
    pd.DataFrame({"epoch": [1, 1, 2, 2], "class_index": [0, 1, 0, 1], "seconds": [30.0, 30.0, 90.0, 90.0]}
                 ).to_csv(base / "train_log.csv", index=False)
    table = run_costs(tmp_path).set_index("method")
    assert table.loc["pgd-at", "train_s"] == 120.0 and table.loc["pgd-at+cal", "calibrate_s"] == 180.0
    text = cost_markdown(table.reset_index())
    assert "| pgd-at | 1 | 2.0 | - | 10.0 |" in text and "| pgd-at+cal | 1 | - | 3.0 | 10.0 |" in text
    assert "| all | 2 | | | 0.4 h in all (recorded parts) |" in text
    # a diverged run: its completed epochs count in the total, apart from the finished runs' figures
    lost = base.parent / "seed1"
    lost.mkdir()
    (lost / "diverged.json").write_text(json.dumps({"epoch": 2}))
    pd.DataFrame({"epoch": [1, 1], "class_index": [0, 1], "seconds": [360.0, 360.0]}).to_csv(
        lost / "train_log.csv", index=False)
    text = cost_markdown(run_costs(tmp_path))
    assert "| pgd-at | 1 + 1 diverged (6.0 min of training) | 2.0 | - | 10.0 |" in text
    assert "| all | 3 | | | 0.5 h in all (recorded parts) |" in text


def test_defenses_doc_states_the_verdict_only_once_the_confirmation_is_finished():
    """While the committed confirmation export is unfinished the doc has no verdict and says it is
    running; once finished, its verdict table is the one the script rebuilds from the export."""
    script = _load(ROOT / "experiments" / "quick" / "screen_levers.py")
    doc = (ROOT / "docs" / "defenses.md").read_text()
    if (script.CONFIRMED / "experiment-progress.json").exists():
        assert not any(f"<!-- defenses-{name} -->" in doc for name in ("verdict", "per-class", "plateau", "cost"))
        assert "## The confirmation on the test split (issue #15, step 4; running)" in doc
        assert "(`experiments/quick/defenses.yaml`, multi-session) is not finished" in (ROOT / "README.md").read_text()
    else:
        assert "is not finished" not in (ROOT / "README.md").read_text()
        assert _block(ROOT / "docs" / "defenses.md", "defenses-verdict") == \
            target_markdown(script.verdict()).strip()
        assert _block(ROOT / "docs" / "defenses.md", "defenses-per-class") == \
            per_class_markdown(_per_class(script.CONFIRMED), ("pgd-at", "trades")).strip()
        assert _block(ROOT / "docs" / "defenses.md", "defenses-plateau") == \
            plateau_markdown(plateau(training_logs(script.CONFIRMED, script.CONFIRMED_BASELINES))).strip()
        assert _block(ROOT / "docs" / "defenses.md", "defenses-cost") == \
            cost_markdown(run_costs(script.CONFIRMED)).strip()


def test_leak_check_numbers_in_the_defenses_doc_match_the_record():
    record = json.loads((ROOT / "docs" / "results" / "lever-screen" / "leak_dafa-l1-s100.json").read_text())
    text = (ROOT / "docs" / "defenses.md").read_text()
    assert f"+-{record['eps_max']:.2f}" in text
    assert f"call {100 * record['noise_at_eps_max_other_predicted_as_widest']:.0f}% of them Shirt" in text
    assert f"+-0.10 (everybody else's budget)\n{100 * record['noise_at_eps_other_predicted_as_widest']:.1f}%" in text
    assert f"clean Shirt images go to {record['clean_widest_class_predicted_as']}" in text


def test_screen_prose_numbers_match_the_committed_logs():
    """The numbers docs/defenses.md quotes from the screen's runs, read from their committed logs."""
    import pandas as pd

    logs = ROOT / "docs" / "results" / "lever-screen" / "logs"
    text = " ".join((ROOT / "docs" / "defenses.md").read_text().split())

    def shirt(log, epoch, column):
        row = log[(log.epoch == epoch) & (log.class_name == "Shirt")]
        return f"{100 * row[column].item():.1f}"

    base = pd.read_csv(logs / "pgd-at-s100.csv")
    assert f"(Shirt {shirt(base, 13, 'val_pgd_accuracy')}, {shirt(base, 14, 'val_pgd_accuracy')}, " \
           f"{shirt(base, 15, 'val_pgd_accuracy')}% over epochs 13-15)" in text
    wide = pd.read_csv(logs / "dafa-l2-s100.csv")
    end = wide[wide.epoch == 15].set_index("class_name")
    assert (f"(Shirt x{end.eps_scale['Shirt']:.2f}, Sneaker x{end.eps_scale['Sneaker']:.2f}, "
            f"Pullover x{end.eps_scale['Pullover']:.2f}): validation clean accuracy "
            f"{100 * end.val_clean_accuracy['Shirt']:.1f}% on Shirt and "
            f"{100 * end.val_clean_accuracy['Sneaker']:.1f}% on Sneaker") in text
    dafa = pd.read_csv(logs / "dafa-l1-s100.csv")
    assert f"from {shirt(dafa, 10, 'val_clean_accuracy')}% to {float(shirt(dafa, 11, 'val_clean_accuracy')):.0f}%" in text
    assert (f"from {float(shirt(dafa, 10, 'train_accuracy')):.0f}% to {float(shirt(dafa, 11, 'train_accuracy')):.0f}%"
            in text)
    overall = dafa[dafa.class_index == -1].set_index("epoch")["train_loss"]
    assert f"({overall[10]:.2f} to {overall[15]:.2f} by epoch 15)" in text
    # what the screen cost, summed from the logs' per-epoch seconds (one overall row per epoch)
    minutes = [pd.read_csv(f).query("class_index == -1").seconds.sum() / 60 for f in sorted(logs.glob("*.csv"))]
    assert len(minutes) == 16
    assert (f"its 16 runs logged {sum(minutes) / 60:.1f} hours of training epochs on the 2-core CPU, "
            f"{min(minutes):.1f} to {max(minutes):.1f} minutes a run") in text
    # seed 101's collapses, and the pick the selection rule makes from the committed table
    ends = {lam: pd.read_csv(logs / f"dafa-l{lam}-s101.csv").query("epoch == 15").set_index("class_name")
            for lam in (1, 2)}
    assert ("Sneaker at " + " validation clean accuracy with lam 1, ".join(
        f"{100 * ends[lam].val_clean_accuracy['Shirt']:.1f}% and {100 * ends[lam].val_clean_accuracy['Sneaker']:.1f}%"
        for lam in (1, 2)) + " with lam 2") in text
    script = _load(ROOT / "experiments" / "quick" / "screen_levers.py")
    runs = pd.read_csv(ROOT / "docs" / "results" / "lever-screen" / "runs.csv")
    chosen = script.choose(runs).set_index("setting")
    pick = chosen.index[chosen.confirm][0]
    assert f"The rule picks `{pick}` (`{chosen.classwise[pick]}`)" in text
    assert (f"mean worst-class validation PGD-10 accuracy {100 * chosen.val_worst_pgd[pick]:.1f}% against the "
            f"baseline's {100 * chosen.val_worst_pgd['pgd-at']:.1f}%, average {100 * chosen.val_pgd[pick]:.1f}% "
            f"against {100 * chosen.val_pgd['pgd-at']:.1f}%") in text
    assert f"lifts the worst class further ({100 * chosen.val_worst_pgd['wat-e1']:.1f}%)" in text
    diff = script.paired_differences(runs).set_index("setting").avg_mean
    assert f"costs {-diff['wat-e1']:.1f} points of average" in text
    assert f"lifts it to {100 * chosen.val_worst_pgd['reweight-s4']:.1f}% at {-diff['reweight-s4']:.1f} points" in text
    nomargin = runs[runs.setting == "dafa-l1-nomargin"].set_index("seed").val_worst_pgd
    base = runs[runs.setting == "pgd-at"].set_index("seed").val_worst_pgd
    assert (f"Shirt ends at {100 * nomargin[100]:.1f}% and {100 * nomargin[101]:.1f}% validation PGD-10 on seeds 100 "
            f"and 101 against the baseline's {100 * base[100]:.1f}% and {100 * base[101]:.1f}%") in text


def test_included_report_sections_match_their_source(tmp_path):
    from classrobust.report.markdown import INCLUDE, markdown_section, refresh_includes

    # the mechanism itself: a block is replaced by the named section of its source, and only that
    report = tmp_path / "r" / "report.md"
    report.parent.mkdir()
    report.write_text("# T\n\n## A\n\nnote\n\n| x |\n|---|\n| 1 |\n\n## B\n\nother\n")
    doc = tmp_path / "doc.md"
    doc.write_text('intro\n<!-- include r/report.md "A" -->\nstale\n<!-- /include -->\nend\n')
    assert refresh_includes(doc) == 'intro\n<!-- include r/report.md "A" -->\nnote\n\n| x |\n|---|\n| 1 |\n' \
                                    '<!-- /include -->\nend\n'
    # every include block in the docs is its source's current section
    blocks = 0
    for path in sorted((ROOT / "docs").glob("*.md")):
        for match in INCLUDE.finditer(path.read_text()):
            source = (path.parent / match["path"]).read_text()
            assert match["body"].strip() == markdown_section(source, match["heading"]), (
                f"{path.name}: the block from {match['path']} '{match['heading']}' is stale; run "
                "scripts/refresh_doc_includes.py")
            blocks += 1
    assert blocks == sum(p.read_text().count("<!-- include ") for p in (ROOT / "docs").glob("*.md"))


def test_seed_level_defense_table_matches_the_committed_per_class_results():
    import pandas as pd

    from classrobust.report.markdown import to_markdown

    module = _load(ROOT / "scripts" / "seed_table.py")
    table = module.seed_table(pd.read_csv(ROOT / "docs/results/quick-defenses/per_class.csv"), "pgd-at", "Shirt")
    assert _block(ROOT / "docs" / "defenses.md", "defenses-by-seed") == to_markdown(table).strip()
    methods = pd.read_csv(ROOT / "docs/results/quick-defenses/methods.csv")
    for attack in ("clean", "pgd", "autoattack"):
        shown = to_markdown(module.methods_table(methods, attack)).strip()
        assert _block(ROOT / "docs" / "defenses.md", f"defenses-methods-{attack}") == shown
    # a zero-width interval is not printed as one
    assert "[0.0, 0.0]" not in _block(ROOT / "docs" / "defenses.md", "defenses-methods-autoattack")
    reweight = table.set_index(["attack", "method"]).loc[("autoattack", "reweight")]
    assert reweight["Shirt: per seed"] == "+15.0, +4.0, +1.0"  # the numbers the prose quotes
    assert "t p 0.26" in reweight["Shirt: mean"] and "sign-flip p 0.25" in reweight["Shirt: mean"]


def test_seed_pair_summary_matches_the_committed_comparison():
    from classrobust.report.markdown import to_markdown

    module = _load(ROOT / "scripts" / "pair_summary.py")
    comparison, ranks = module.markdown_tables((ROOT / "docs/results/demo_seed0_vs_seed1.md").read_text())[:2]
    table = module.pair_summary(comparison, ranks, "Shirt")
    assert _block(ROOT / "docs" / "seeds.md", "seeds-pair") == to_markdown(table).strip()


def test_quick_experiment_report_rebuilds_from_its_committed_records(tmp_path):
    """The findings' tables come from this report: rebuilt from the committed records, every CSV and
    report.md are what is committed (the version line aside)."""
    import shutil

    from classrobust.report.experiment import build_experiment_report

    committed = ROOT / "docs" / "results" / "quick-fashion-mnist"
    copy = tmp_path / "exp"
    shutil.copytree(committed, copy, ignore=shutil.ignore_patterns("report"))
    build_experiment_report(copy)
    version = re.compile(r"classrobust \S+")
    for name in sorted(p.name for p in (committed / "report").glob("*.csv")) + ["report.md"]:
        rebuilt = version.sub("classrobust", (copy / "report" / name).read_text())
        assert rebuilt == version.sub("classrobust", (committed / "report" / name).read_text()), name


def test_findings_prose_quotes_only_numbers_its_tables_show():
    """A decimal typed into findings.md's prose drifts; each must appear in one of the page's
    generated blocks or in the experiment file's settings (the history section aside)."""
    from classrobust.report.markdown import INCLUDE

    text = (ROOT / "docs" / "findings.md").read_text().split("## Corrections")[0]
    blocks = " ".join(m["body"] for m in INCLUDE.finditer(text))
    prose = INCLUDE.sub("", text)
    # blocks generated from records (each rebuilt by its own test) are tables, not prose
    generated = re.compile(r"<!-- (?P<name>[\w-]+) -->\n(?P<body>.*?)<!-- /(?P=name) -->", re.S)
    blocks += " ".join(m["body"] for m in generated.finditer(prose))
    prose = generated.sub("", prose)
    sources = blocks + (ROOT / "experiments" / "quick" / "fashion-mnist.yaml").read_text()
    missing = [n for n in re.findall(r"(?<![\w.])\d+\.\d+(?![\w.])", prose) if n not in sources]
    assert not missing, f"numbers in findings.md's prose that no included table shows: {missing}"


def test_calibration_why_block_matches_its_record():
    """docs/defenses.md's calibration analysis (issue #15, item 6) is the committed record's rendering,
    measured on the test split after the calibration was fitted on validation."""
    script = _load(ROOT / "experiments" / "quick" / "calibration_why.py")
    record = json.loads((ROOT / "docs" / "results" / "calibration-why.json").read_text())
    assert sum(record["n_per_class"]) == record["settings"]["limit"]  # a finished run, not a partial one
    assert _block(ROOT / "docs" / "defenses.md", "calibration-why") == script.render(record).strip()
    # the prose's numbers, from the record
    text = " ".join((ROOT / "docs" / "defenses.md").read_text().split())
    shirt = record["classes"].index("Shirt")
    n = record["n_per_class"][shirt]
    gain = {a: 100 * (record["robust_per_class"]["calibrated"][a][shirt]
                      - record["robust_per_class"]["base"][a][shirt]) / n
            for a in ("clean", "pgd-20", "cw-20", "apgd-ce", "apgd-t", "autoattack")}
    assert f"Shirt {gain['cw-20']:+.1f} under `cw-20` against {gain['pgd-20']:+.1f} under PGD-20" in text
    assert f"Shirt's gain ({gain['autoattack']:+.1f} under AutoAttack, {gain['clean']:+.1f} clean)" in text
    assert (f"Of the {gain['pgd-20']:.0f} PGD-20 points, APGD-CE takes {gain['pgd-20'] - gain['apgd-ce']:.0f} back "
            f"and APGD-T, alone or inside AutoAttack, {gain['apgd-ce'] - gain['apgd-t']:.0f} more") in text
    transfer = 100 * record["base_autoattack_on_calibrated"][shirt] / n
    own = 100 * record["robust_per_class"]["calibrated"]["autoattack"][shirt] / n
    assert f"{transfer:.1f}% of the base model's AutoAttack points on Shirt" in text and f"against {own:.1f}%" in text


def test_calibration_why_renders_differences_and_member_flips():
    """experiments/quick/calibration_why.py's tables (issue #15, item 6): calibrated minus base in
    points per class and attack, each AutoAttack member's flips side by side (torch-free)."""
    script = _load(ROOT / "experiments" / "quick" / "calibration_why.py")
    classes = ["a", "b"]
    counts = lambda *v: {c: list(v) for c in ["clean", *script.ATTACKS, "autoattack"]}  # noqa: E731
    record = {"settings": {"base": "b.safetensors", "calibrated": "c.safetensors", "limit": 20, "eps": 0.1,
                           "seed": 0},
              "classes": classes, "n_per_class": [10, 10], "offsets": [0.0, 0.5], "machine": "m", "torch": "t",
              "robust_per_class": {"base": counts(8, 2), "calibrated": counts(7, 4)},
              "member_flips_per_class": {"base": {"apgd-ce": [1, 3]}, "calibrated": {"apgd-ce": [2, 1]}},
              "base_autoattack_on_calibrated": [8, 3], "seconds": {"base pgd-20": 1.0}}
    text = script.render(record)
    assert "| b | 10 | 40.0 (+20.0) |" in text and "| a | 10 | 70.0 (-10.0) |" in text
    assert "| all | 20 | 55.0 (+5.0) |" in text and text.count("| 30.0 |") == 1  # base AA points on calibrated
    assert "| b | 3 / 1 |" in text and "| all | 4 / 3 |" in text and "b +0.50" in text
    assert "base `b.safetensors`, calibrated `c.safetensors`" in text


def test_divergence_prose_matches_its_replay_record():
    """The numbers docs/defenses.md gives for the diverged confirmation run, from the replay's record."""
    record = json.loads((ROOT / "docs" / "results" / "divergence-trades-wat-e03-seed1.json").read_text())
    variants = {v["variant"]: v for v in record["variants"]}
    text = " ".join((ROOT / "docs" / "defenses.md").read_text().split())  # line breaks as spaces
    as_run, spike = variants["as-run"], variants["as-run"]["spike"]
    assert f"about {as_run['median_loss']:.1f} per batch" in text
    assert f"jumps to {spike['loss']:.2f} at step {spike['step']} (gradient norm {spike['grad_norm']:.0f};" in text
    assert f"{spike['beta']:g} x a mean KL of {spike['mean_kl']:.2f}" in text
    rest = as_run["losses_from_first_spike"][1:]
    assert rest[-1] is None and not as_run["finite"]  # ends in a non-finite loss
    shown = [f"{rest[0]:.0f}", *(f"{v:.1e}".replace("e+0", "e").replace("e+", "e") for v in rest[1:-1])]
    assert f"then {', '.join(shown)} and NaN within {len(rest)} steps" in text.replace("five", "5")
    assert not variants["other-start"]["finite"] and variants["other-start"]["steps_above_spike"][0] == spike["step"]
    assert variants["fp32"]["finite"] and not variants["fp32"]["steps_above_spike"]
    assert variants["unit-weights"]["finite"] and not variants["unit-weights"]["steps_above_spike"]
    clip = variants["clip10"]
    assert clip["finite"] and clip["steps_above_spike"] == [spike["step"]] and clip["last_step"] >= spike["step"] + 50
    assert f"(one batch at {clip['max_finite_loss']:.2f}, then back to normal)" in text


def test_confirmation_scripts_read_a_real_finished_export(synthetic_env, tmp_path, capsys):
    """The frozen confirmation file, shrunk (2 seeds, 1 epoch on 200 synthetic images, a short AutoAttack),
    run and exported by `classrobust experiment`: the verdict, plateau and cost helpers read that export's
    layout (the unit tests above build their inputs by hand, which once hid a wrong path)."""
    import yaml

    from conftest import run

    script = _load(ROOT / "experiments" / "quick" / "screen_levers.py")
    spec = yaml.safe_load((ROOT / "experiments" / "quick" / "defenses.yaml").read_text())
    spec.update(seeds=[0, 1], out=str(tmp_path / "exp"))
    spec["train"].update(epochs=1, train_subset=200, batch_size=50, val_size=60, attack_steps=1,
                         val_attack_steps=1, precision="fp32", eps_warmup_epochs=0.0, lr_warmup_epochs=0.0)
    for method in spec["methods"].values():
        if "calibrate" in method:
            method["calibrate"].update(max_avg_drop=5.0, val_size=40, steps=2, rounds=1)
    spec["eval"].update(attacks="autoattack:steps=2,n_targets=1,n_queries=5", limit=20)
    path = tmp_path / "confirmation.yaml"
    path.write_text(yaml.safe_dump(spec))
    export = tmp_path / "export"
    code, _, err = run(["experiment", path, "--no-progress"], capsys)
    assert code == 0, err
    code, stdout, err = run(["experiment", path, "--export", export], capsys)
    assert code == 0 and "report:" in stdout, err

    table = script.verdict(export)
    assert set(table.method) == {"pgd-at+wat-e03", "pgd-at+wat-e03+cal", "trades+wat-e03", "trades+wat-e03+cal"}
    assert (table.seeds == 2).all() and table.target_class.notna().all()
    assert "| pgd-at+wat-e03 | pgd-at | 2 |" in target_markdown(table)
    logs = training_logs(export, ("pgd-at", "trades"))
    assert sorted(logs) == [("pgd-at", 0), ("pgd-at", 1), ("trades", 0), ("trades", 1)]
    steady = plateau(logs)
    assert (steady.last_epochs.map(len) == 1).all()  # one epoch trained
    cost = run_costs(export)
    assert len(cost) == 12 and (cost.eval_s > 0).all()
    assert cost[cost.method.str.endswith("+cal")].calibrate_s.gt(0).all()
    assert cost[~cost.method.str.endswith("+cal")].train_s.gt(0).all()
    classes = _per_class(export)
    assert len(classes) == 10 * 6 and set(classes.kind) == {"accuracy", "change"}
    assert set(classes[classes.kind == "accuracy"].method) == {"pgd-at", "trades"}
    text = per_class_markdown(classes, ("pgd-at", "trades"))
    assert text.startswith("| class | pgd-at (2 seeds) | Δ pgd-at+wat-e03 (2 seeds) | Δ pgd-at+wat-e03+cal (2 seeds) "
                           "| trades (2 seeds) |") and text.count("\n") == 11
    script.verdict_plot(table, tmp_path / "tradeoff.png")
    assert (tmp_path / "tradeoff.png").stat().st_size > 10_000


def test_confirmation_findings_quote_the_export():
    """The numbers the confirmation's findings quote in prose, recomputed from the committed export."""
    import pandas as pd

    script = _load(ROOT / "experiments" / "quick" / "screen_levers.py")
    text = re.sub(r"\s+", " ", (ROOT / "docs" / "defenses.md").read_text())
    runs = pd.read_csv(script.CONFIRMED / "report" / "per_class.csv")

    def average(attack):
        rows = runs[runs.attack == attack]
        return rows.groupby(["method", "seed"]).apply(lambda g: 100 * g.correct.sum() / g.n.sum()).unstack()

    def shirt(attack):
        rows = runs[(runs.attack == attack) & (runs.class_name == "Shirt")]
        return 100 * rows.set_index(["method", "seed"]).accuracy.unstack()

    lever = "pgd-at+wat-e03"
    gains = shirt("autoattack").loc[lever] - shirt("autoattack").loc["pgd-at"]
    losses = average("autoattack").loc[lever] - average("autoattack").loc["pgd-at"]
    assert f"per seed {', '.join(f'{v:+.0f}' for v in gains)} points" in text
    assert f"per seed {', '.join(f'{v:+.1f}' for v in losses)} points" in text
    assert (gains > 0).all() and (losses < 0).all()  # "on every seed", both ways
    clean_shirt = (shirt("clean").loc[lever] - shirt("clean").loc["pgd-at"]).mean()
    clean_avg = (average("clean").loc[lever] - average("clean").loc["pgd-at"]).mean()
    assert f"Shirt {clean_shirt:+.1f} points clean, the average clean accuracy {clean_avg:+.1f}" in text
    classes = _per_class(script.CONFIRMED)
    change = classes[classes.method == lever].set_index("class_name").value * 100
    assert (f"T-shirt/top ({change['T-shirt/top']:+.1f}), Coat ({change['Coat']:+.1f}) and Dress "
            f"({change['Dress']:+.1f})") in text
    far = ["Trouser", "Sandal", "Sneaker", "Bag", "Ankle boot"]
    assert f"move by at most {change[far].abs().max():.1f} points" in text
    after = (classes[classes.method == "pgd-at"].set_index("class_name").value * 100 + change)
    assert after.idxmin() == "Shirt" and f"({after['Shirt']:.1f}% against Pullover's and Coat's " \
        f"{after['Pullover']:.1f}%)" in text and round(after["Pullover"], 1) == round(after["Coat"], 1)
    verdict = script.verdict().set_index("method")
    cal = verdict.loc[f"{lever}+cal"]
    assert (f"add +{100 * (cal.worst_diff_mean - verdict.loc[lever].worst_diff_mean):.1f} points on Shirt "
            f"(+{100 * cal.worst_diff_mean:.1f} in all) for {100 * (cal.avg_diff_mean - verdict.loc[lever].avg_diff_mean):.1f}"
            f" of average ({100 * cal.avg_diff_mean:.1f} in all)") in text
    trades = average("autoattack").loc["trades+wat-e03"] - average("autoattack").loc["trades"]
    assert f"seed 3 ({trades[3]:+.1f} points of average" in text
    others = trades.drop(3).dropna()
    assert f"three seeds {others.max():+.1f} to {others.min():+.1f})" in text
    base = runs[(runs.attack.isin(["clean", "autoattack"])) & (runs.class_name == "Shirt")]
    for method in ("pgd-at", "trades"):
        clean, robust = (100 * base[(base.method == method) & (base.attack == a)].accuracy.mean()
                         for a in ("clean", "autoattack"))
        assert f"{clean:.1f}% clean and {robust:.1f}%" in text or f"{clean:.1f}% and {robust:.1f}%" in text


def test_temperature_block_and_prose_match_the_demo_record():
    """docs/temperature.md's table is `classrobust temperature`'s own output, rebuilt from the committed
    record, and its prose numbers are the record's."""
    import json

    from classrobust.results import ClasswiseResult
    from classrobust.workflows.temperature import attack_name, sweep_table

    record = ROOT / "docs" / "results" / "temperature-demo"
    entry = json.loads((record / "temperature.json").read_text())
    validation = ClasswiseResult.load(record / "validation")
    test = ClasswiseResult.load(record / "test")
    text = (ROOT / "docs" / "temperature.md").read_text()
    block = text.split("<!-- temperature-demo -->\n")[1].split("<!-- /temperature-demo -->")[0]
    assert block.rstrip() == sweep_table(entry, validation, test).rstrip()
    lowest = min(entry["values"])
    gap = 100 * (validation.attacks[attack_name(lowest)].accuracy - validation.attacks["pgd"].accuracy)
    assert f"({lowest:g}: {gap:+.1f} points of robust" in text
    test_gap = 100 * abs(test.attacks["temp-pgd"].accuracy - test.attacks["pgd"].accuracy)
    assert f"the two differ by {test_gap:.1f} points on the test images" in text
    assert f"{len(test.labels)} test images" in block and entry["chosen_on"] == "validation"


def test_frontier_design_power_block_and_numbers_match_the_confirmation_records():
    """docs/defenses.md's declared design: the power table is rebuilt from the committed confirmation,
    the variance components and the chosen design's numbers in its prose are the table's, and the
    design file names what the prose declares."""
    import yaml

    from classrobust.analysis.power import export_components, power_table
    from classrobust.report.protocol import power_markdown

    export = ROOT / "docs" / "results" / "defenses-confirmation"
    avg = export_components(export, "pgd-at", "pgd-at+wat-e03", "autoattack", range(5))
    worst = export_components(export, "pgd-at", "pgd-at+wat-e03", "autoattack", range(5), "Shirt")
    avg_table = power_table(avg, [3, 4, 5, 6], [1000, 2000, 5000, 10000])
    worst_table = power_table(worst, [3, 4, 5, 6], [1000, 2000, 5000, 10000], true_diffs=(0.0,), share=0.1)
    text = (ROOT / "docs" / "defenses.md").read_text()
    block = text.split("<!-- frontier-power -->\n")[1].split("\n<!-- /frontier-power -->")[0]
    assert block == power_markdown(avg_table, worst_table)
    assert (f"has variance {avg['total_var']:.2f} (points squared), of which {avg['test_var']:.2f} is the\ntest "
            f"sample at 1,000 images and {avg['train_var']:.2f} the training runs") in text
    assert f"(Shirt, 100 images per seed) {worst['total_var']:.1f}, of which {worst['test_var']:.1f}" in text
    design = yaml.safe_load((ROOT / "experiments" / "frontier" / "levers.yaml").read_text())
    seeds, images = len(design["seeds"]), design["eval"]["limit"]
    chosen = avg_table[(avg_table.seeds == seeds) & (avg_table.images == images)].set_index("true_diff")
    w = worst_table[(worst_table.seeds == seeds) & (worst_table.images == images)]["half_width"].iloc[0]
    assert (f"**Chosen: {seeds} seeds x {images:,} test images** (the average's half-width "
            f"{chosen.loc[0.0, 'half_width']:.2f} points, power {chosen.loc[0.0, 'power']:.2f} if a\nlever costs nothing "
            f"and {chosen.loc[-0.5, 'power']:.2f} if it costs half a point; the worst class's half-width about {w:.1f}") in text
    assert f"Seeds {min(design['seeds'])}-{max(design['seeds'])}" in text
    assert design["protocol"]["frontier"]["allowances"] == [1, 2, 4, 6] and "at 1, 2, 4 and 6 points" in text


def test_grid_jobs_table_matches_its_record():
    import json

    record = json.loads((ROOT / "benchmarks" / "results" / "grid_jobs.json").read_text())
    lines = ["| side | wall time (s) | seed 0 PGD-10 | seed 1 PGD-10 |", "|---|---|---|---|"]
    for side, r in record["sides"].items():
        lines.append(f"| {side} | {r['seconds']:.1f} | {100 * r['runs']['seed0']['pgd']:.1f}% "
                     f"| {100 * r['runs']['seed1']['pgd']:.1f}% |")
    text = (ROOT / "benchmarks" / "README.md").read_text()
    assert text.split("<!-- grid-jobs -->\n")[1].split("\n<!-- /grid-jobs -->")[0] == "\n".join(lines)
    seq, jobs = record["sides"].values()
    assert f"(ratio {jobs['seconds'] / seq['seconds']:.2f})" in text
    gap = 100 * abs(seq["runs"]["seed0"]["pgd"] - jobs["runs"]["seed0"]["pgd"])
    assert f"seed 0's PGD-10 accuracy by {gap:.1f} points" in text
    assert all(seq["runs"][s]["sha256"] != jobs["runs"][s]["sha256"] for s in ("seed0", "seed1"))


def test_corrected_defense_claims_match_the_records():
    """Issue #34, item 4: the sentences corrected on 2026-12-03, each against the value it names."""
    import numpy as np
    import pandas as pd

    export = ROOT / "docs" / "results" / "defenses-confirmation"
    text = re.sub(r"\s+", " ", (ROOT / "docs" / "defenses.md").read_text())
    methods = pd.read_csv(export / "report" / "methods.csv").set_index(["method", "attack"])
    lever = "pgd-at+wat-e03"
    val = []
    for seed in range(5):
        last = []
        for method in ("pgd-at", lever):
            log = pd.read_csv(export / "runs" / "fashion-mnist" / method / f"seed{seed}" / "train_log.csv")
            last.append(log[(log.epoch == log.epoch.max()) & (log.class_index == -1)].val_pgd_accuracy.iloc[0])
        val.append(100 * (last[1] - last[0]))
    assert (f"-{-np.mean(val):.2f} points on validation PGD-10 (the training logs' last epoch), "
            f"-{-100 * methods.loc[(lever, 'pgd'), 'avg_diff_mean']:.2f} on the test split under PGD-20 and "
            f"-{-100 * methods.loc[(lever, 'autoattack'), 'avg_diff_mean']:.2f} under AutoAttack") in text
    shirt = {}
    for seed in (100, 101):
        log = pd.read_csv(ROOT / "docs" / "results" / "lever-screen" / "logs" / f"pgd-at-s{seed}.csv")
        late = log[(log.class_index >= 0) & (log.epoch >= 7)]
        shirt[seed] = 100 * late[late.class_name == "Shirt"].val_clean_accuracy
        if seed == 100:
            assert (late.val_clean_accuracy > 0.5).all()  # "every class of seed 100 is above 50% ... from epoch 7"
    assert f"(Shirt, the weakest, {shirt[100].min():.0f}-{shirt[100].max():.0f}%)" in text
    assert f"Shirt stays at {shirt[101].min():.1f}-{shirt[101].max():.0f}% clean over epochs 7-15" in text


def test_corrected_findings_claims_match_the_records():
    """Issue #34, item 4: the other corrected sentences (lever screen, findings sections 2 and 8, MART's
    average), each checked against the value it names instead of "this decimal appears somewhere"."""
    import numpy as np
    import pandas as pd

    from classrobust.analysis.stats import paired_seed_test

    findings = re.sub(r"\s+", " ", (ROOT / "docs" / "findings.md").read_text())
    defenses = re.sub(r"\s+", " ", (ROOT / "docs" / "defenses.md").read_text())
    # the lever screen: only wat-e1's average has an interval that excludes zero
    script = _load(ROOT / "experiments" / "quick" / "screen_levers.py")
    diffs = script.paired_differences(pd.read_csv(ROOT / "docs" / "results" / "lever-screen" / "runs.csv"))
    excluding = [(r.setting, key) for r in diffs.itertuples() for key in ("worst", "avg")
                 if getattr(r, f"{key}_low") > 0 or getattr(r, f"{key}_high") < 0]
    assert excluding == [("wat-e1", "avg")]
    wat = diffs.set_index("setting").loc["wat-e1"]
    assert (f"but `wat-e1`'s average ({wat.avg_mean:+.1f} [{wat.avg_low:+.1f}, {wat.avg_high:+.1f}]: both seeds lost "
            f"{-max(wat.avg_per_seed):.1f}-{-min(wat.avg_per_seed):.1f} points") in defenses
    # section 2: the classes below the stated floor are exactly those named
    quick = ROOT / "docs" / "results" / "quick-fashion-mnist" / "report"
    into = pd.read_csv(quick / "attacked_into_seeds.csv")
    into = into[into.attack == "autoattack"]
    below = into[into.top3_share < 0.8775]
    assert set(zip(below.method, below.class_name)) == {("pgd-at", "Bag"), ("trades", "Bag"), ("mart", "Bag"),
                                                          ("mart", "Dress"), ("trades", "Dress")}
    share = into.set_index(["method", "class_name"]).top3_share
    assert (f"at least {100 * into.top3_share.min():.1f}% of every class's flipped points, and at least "
            f"{100 * into[~into.index.isin(below.index)].top3_share.min():.1f}%") in findings
    assert (f"Dress under MART ({100 * share[('mart', 'Dress')]:.1f}%) and TRADES "
            f"({100 * share[('trades', 'Dress')]:.1f}%)") in findings
    # section 8: the per-seed average costs and calibration's own increment on Shirt
    report = ROOT / "docs" / "results" / "defenses-confirmation" / "report"
    overview = pd.read_csv(report / "overview.csv")
    acc = overview[overview.attack == "autoattack"].set_index(["method", "seed"]).accuracy
    costs = [100 * (acc[("pgd-at+wat-e03", s)] - acc[("pgd-at", s)]) for s in range(5)]
    assert (", ".join(f"{c:.1f}" for c in costs[:-1]) + f" and {costs[-1]:.1f} points") in findings
    assert f"on the mean ({np.mean(costs):.1f}) but not on seed 3" in findings and costs[3] > -1
    per_class = pd.read_csv(report / "per_class.csv")
    shirt = per_class[(per_class.attack == "autoattack") & (per_class.class_name == "Shirt")].set_index(
        ["method", "seed"]).accuracy
    cal = paired_seed_test([100 * (shirt[("pgd-at+wat-e03+cal", s)] - shirt[("pgd-at+wat-e03", s)]) for s in range(5)])
    assert (f"adds {cal['mean']:+.1f} [{cal['low']:+.1f}, {cal['high']:+.1f}] points on Shirt (paired over the 5 seeds, "
            f"sign-flip p {cal['perm_p']:.2f})") in findings
    # MART's average with its interval
    mart = pd.read_csv(quick / "methods.csv").set_index(["method", "attack"]).loc[("mart", "autoattack")]
    assert (f"(+{100 * mart.avg_diff_mean:.1f} points, within the noise: [{100 * mart.avg_diff_low:+.1f}, "
            f"{100 * mart.avg_diff_high:+.1f}]") in findings


def test_temperature_against_a_margin_loss_block_matches_the_records():
    """Issue #34, item 5: findings section 5's Temperature-PGD vs PGD and CW-20 table, rebuilt from the
    quick experiment's committed records, and the prose's reading of it."""
    from classrobust.analysis.experiment import export_attack_pairs
    from classrobust.report.experiment import attack_pairs_markdown

    table = export_attack_pairs(ROOT / "docs" / "results" / "quick-fashion-mnist", ("pgd-at", "trades", "mart"),
                                range(5), (("Temperature-PGD-20 (T = 0.25) - PGD-20", "temperature/test", "temp-pgd",
                                             "temperature/test", "pgd"),
                                            ("Temperature-PGD-20 (T = 0.25) - CW-20", "temperature/test", "temp-pgd",
                                             "eval", "cw")), (None, "Shirt"))
    assert _block(ROOT / "docs" / "findings.md", "temperature-vs-margin") == attack_pairs_markdown(table).strip()
    cw = table[table.comparison.str.endswith("CW-20")].set_index("class")
    assert -0.15 < cw.loc["all", "mean"] < -0.05 and cw.loc["all", "high"] < 0  # "a tenth of a point stronger"
    assert cw.loc["Shirt", "low"] < 0 < cw.loc["Shirt", "high"] and cw.loc["Shirt", "mean"] >= 0  # "no stronger"


def test_readme_quotes_temperature_against_cw_from_the_records():
    from classrobust.analysis.experiment import export_attack_pairs

    table = export_attack_pairs(ROOT / "docs" / "results" / "quick-fashion-mnist", ("pgd-at", "trades", "mart"),
                                range(5), (("t-cw", "temperature/test", "temp-pgd", "eval", "cw"),))
    text = " ".join((ROOT / "README.md").read_text().split())
    assert f"only {-table['mean'].iloc[0]:.2f} points stronger overall" in text


def test_experiment_report_explains_its_columns_once_and_names_eps():
    """Issue #35, item 14: the long paragraph was repeated under every attack, and no eps was named."""
    report = (ROOT / "docs" / "results" / "quick-fashion-mnist" / "report" / "report.md").read_text()
    assert report.count("McNemar: the worst class's points") == 1
    assert report.count("The columns of the first table of this comparison") == 4  # fgsm, pgd, cw, autoattack
    assert "; eps 0.1; 2000 test images per run" in report.splitlines()[2]
