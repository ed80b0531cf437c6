"""The report and compare commands on results made in the test, and report.html in a real browser."""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from classrobust.cli.main import main
from classrobust.evaluate import ClasswiseResult
from classrobust.analysis import holm
from classrobust.analysis.compare import compare_results
from conftest import TRAIN

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--window-size=1280,2000"]
SECTIONS = ["warnings", "table", "disparity", "curves", "confusion", "gain", "weights", "consistency", "training", "sanity"]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, synthetic_data_root):
    """A run trained and evaluated (with sanity checks) through the CLI on generated data."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CLASSROBUST_SYSTEM_DATA", str(synthetic_data_root))
    root = tmp_path_factory.mktemp("report")
    try:
        assert main([*TRAIN, "--epochs", "2", "--out", str(root / "run")]) == 0
        assert main(["eval", "--checkpoint", str(root / "run" / "model.safetensors"), "--attacks",
                     "fgsm,pgd:steps=3,cw:steps=3,fmn:steps=10", "--limit", "100", "--sanity", "--sanity-queries", "20",
                     "--no-progress"]) == 0
    finally:
        mp.undo()
    return root / "run"


def test_eval_builds_the_report(evaluated):
    eval_dir = evaluated / "eval"
    page = (eval_dir / "report.html").read_text()
    for anchor in SECTIONS:
        assert f'id="{anchor}"' in page, anchor
    assert page.count("data:image/png;base64,") >= 8  # self-contained
    figures = {p.name for p in (eval_dir / "report_files" / "figures").iterdir()}
    for name in ("per_class_bars", "curves_fmn", "confusion_pgd", "gain_attribution", "weight_norms", "consistency_spearman",
                 "training_curves"):
        assert {f"{name}.png", f"{name}.svg"} <= figures
    tables = eval_dir / "report_files" / "tables"
    assert (tables / "disparity.md").read_text().startswith("| attack |")
    disp = pd.read_csv(tables / "disparity.csv")
    assert ((disp["gap_ci_low"] <= disp["gap"]) & (disp["gap"] <= disp["gap_ci_high"])).all()
    samples = pd.read_csv(eval_dir / "samples.csv.gz")
    assert {"index", "label", "pred_clean", "pred_pgd", "fooled_pgd", "fooled_cw"} <= set(samples.columns)
    summary = json.loads((eval_dir / "summary.json").read_text())
    assert len(summary["meta"]["classifier_weight_norms"]) == 10
    # the class table ends with the whole set and its interval; every attack's settings are stated
    section = page[page.index('id="table"'):]
    rows = re.findall(r"<tr>(.*?)</tr>", section[:section.index("</table>")], re.S)
    cells = re.findall(r"<t[hd]>(.*?)</t[hd]>", rows[-1], re.S)
    assert cells[0] == "all" and cells[1] == "100" and all(re.fullmatch(r"[\d.]+ \[[\d.]+, [\d.]+\]", c)
                                                          for c in cells[2:])
    assert "pgd: eps 0.1 (linf), 3 steps" in page
    # the minimal-norm attack's curves: read at eps, each class agrees with the attack's own column
    curves = pd.read_csv(eval_dir / "curves.csv")
    at_eps = curves[(curves["kind"] == "grid") & np.isclose(curves["distance"], 0.1) & (curves["class_index"] >= 0)]
    per_class = pd.read_csv(eval_dir / "per_class.csv")
    fmn = per_class[per_class["attack"] == "fmn"].set_index("class_index")["accuracy"]
    np.testing.assert_allclose(at_eps.set_index("class_index")["robust_accuracy"], fmn.loc[at_eps["class_index"]])
    assert "distance_fmn" in samples and (eval_dir / "distances.csv").is_file()
    # the gain section names the 3 most vulnerable classes
    gains = pd.read_csv(eval_dir / "report_files" / "tables" / "gain_attribution.csv")
    named = list(dict.fromkeys(gains.loc[gains["vulnerable"], "class_name"]))
    assert len(named) == 3 and f"first rung: {', '.join(named)}." in html.unescape(page)


def test_report_command_rebuilds_without_a_model(evaluated, capsys, monkeypatch):
    (evaluated / "model.safetensors").unlink()  # the report must not need the model
    report = evaluated / "eval" / "report.html"
    report.unlink()
    assert main(["report", str(evaluated)]) == 0
    assert report.is_file() and str(report) in capsys.readouterr().out


def test_report_refuses_a_directory_without_results(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "holds no evaluation results" in capsys.readouterr().err


def _result(labels, preds_a, name="pgd", indices=None):
    from classrobust.evaluate import AttackResult

    labels = np.asarray(labels)
    attacks = {"clean": AttackResult("clean", labels, labels.copy(), 2),
               name: AttackResult(name, labels, np.asarray(preds_a), 2)}
    return ClasswiseResult(["x", "y"], np.arange(len(labels)) if indices is None else indices, labels, attacks)


def test_compare_statistics_by_hand():
    labels = np.array([0] * 10 + [1] * 10)
    a = _result(labels, labels.copy())
    wrong = labels.copy()
    wrong[:8] = 1  # B loses 8 class-x points that A keeps
    b = _result(labels, wrong)
    table = compare_results(a, b).set_index(["attack", "class_name"])
    row = table.loc[("pgd", "x")]
    assert (row["a_only"], row["b_only"]) == (8, 0)
    assert row["p_value"] == pytest.approx(2 * 0.5 ** 8) and row["difference"] == pytest.approx(-0.8)
    assert row["p_holm"] == pytest.approx(2 * 2 * 0.5 ** 8) and row["significant"]
    # 6 flips: p = 0.031, but Holm over the 2 classes gives 0.0625: not significant
    wrong[6:8] = 0
    row6 = compare_results(a, _result(labels, wrong)).set_index(["attack", "class_name"]).loc[("pgd", "x")]
    assert row6["p_value"] < 0.05 and row6["p_holm"] == pytest.approx(0.0625) and not row6["significant"]
    assert table.loc[("pgd", "y"), "p_value"] == 1.0 and not table.loc[("pgd", "y"), "significant"]
    assert table.loc[("clean", "all"), "difference"] == 0


def test_holm_by_hand():
    np.testing.assert_allclose(holm(np.array([0.01, 0.04, 0.03])), [0.03, 0.06, 0.06])


def test_compare_refuses_different_samples_or_classes():
    from classrobust.errors import UsageError

    labels = np.array([0, 1, 0, 1])
    a = _result(labels, labels)
    with pytest.raises(UsageError, match="different test samples"):
        compare_results(a, _result(labels, labels, indices=np.array([0, 1, 2, 5])))
    other = _result(labels, labels)
    other.classes = ["x", "z"]
    with pytest.raises(UsageError, match="different classes"):
        compare_results(a, other)


def test_compare_command(evaluated, tmp_path, capsys):
    b = tmp_path / "b"
    shutil.copytree(evaluated / "eval", b)
    assert main(["compare", str(evaluated), str(b), "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "exact McNemar" in out
    table = pd.read_csv(tmp_path / "cmp" / "compare.csv")
    assert (table["difference"] == 0).all() and (table["p_value"] == 1).all()
    assert "<table" in (tmp_path / "cmp" / "compare.html").read_text()
    consistency = pd.read_csv(tmp_path / "cmp" / "consistency.csv")
    assert list(consistency["attack"]) == ["clean", "fgsm", "pgd", "cw", "fmn"]
    assert np.allclose(consistency["spearman"].dropna(), 1) and "Spearman" in out
    # a run on other samples is refused with exit code 2
    c = tmp_path / "c"
    shutil.copytree(evaluated / "eval", c)
    samples = pd.read_csv(c / "samples.csv.gz")
    samples["index"] += 1
    samples.to_csv(c / "samples.csv.gz", index=False)
    assert main(["compare", str(evaluated), str(c), "--out", str(tmp_path / "cmp2")]) == 2
    assert "different test samples" in capsys.readouterr().err


def open_in_chromium(report: Path, tmp_path: Path) -> tuple[list, list[str], Path]:
    """(images as [name, complete, width], h2 ids, screenshot) of ``report`` in headless Chromium;
    fails on a SEVERE console message."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.fail("chromium and chromedriver are needed: `make test` installs the Debian packages "
                    "chromium and chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(report.resolve().as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.dataset.figure, i.complete, i.naturalWidth])")
        ids = driver.execute_script("return Array.from(document.querySelectorAll('h2[id]')).map(h => h.id)")
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert not errors, errors
        shot = tmp_path / "report.png"
        driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    return images, ids, shot


def test_report_in_headless_chromium(evaluated, tmp_path):
    images, ids, shot = open_in_chromium(evaluated / "eval" / "report.html", tmp_path)
    assert len(images) >= 8
    broken = [name for name, complete, width in images if not (complete and width > 0)]
    assert not broken, f"figures that did not load: {broken}"
    assert set(SECTIONS) <= set(ids)
    assert shot.stat().st_size > 10_000


def test_committed_experiment_report_in_headless_chromium(tmp_path):
    report = Path(__file__).resolve().parents[1] / "docs/results/quick-fashion-mnist/report/report.html"
    images, ids, shot = open_in_chromium(report, tmp_path)
    assert len(images) >= 2 and all(complete and width > 0 for _, complete, width in images)
    assert {"overview", "into", "ac-fashion-mnist", "dc-fashion-mnist", "gain", "norms", "ablation",
            "temperature-sweep", "temperature", "temperature-gain"} <= set(ids)


def test_a_tie_for_the_worst_class_is_marked():
    """Issue #35, item 14: two classes at the same lowest accuracy (collapsed at 0%) are both named."""
    import numpy as np

    from classrobust.report.tables import format_classwise_table
    from classrobust.results import AttackResult, ClasswiseResult

    labels = np.repeat(np.arange(3), 4)
    preds = np.where(labels == 2, 2, (labels + 1) % 3)  # classes 0 and 1 at 0%, class 2 at 100%
    result = ClasswiseResult(["a", "b", "c"], np.arange(12), labels,
                             {"clean": AttackResult("clean", labels, preds, 3, {"attack": "clean"})})
    text = format_classwise_table(result)
    assert "a +1 tied" in text.splitlines()[-2]
    assert result.summary()["attacks"]["clean"]["worst_classes"] == ["a", "b"]


def test_report_header_names_an_attacks_own_eps(tmp_path):
    """Issue #35, item 14: the header showed only the global eps when an attack ran with its own."""
    import numpy as np

    from classrobust.report import build_report
    from classrobust.results import AttackResult, ClasswiseResult

    labels = np.repeat(np.arange(3), 4)
    attacks = {"clean": AttackResult("clean", labels, labels, 3, {"attack": "clean"}),
               "fgsm": AttackResult("fgsm", labels, labels, 3, {"attack": "fgsm", "eps": 8 / 255, "norm": "linf"}),
               "pgd": AttackResult("pgd", labels, labels, 3, {"attack": "pgd", "eps": 0.1, "norm": "linf"})}
    ClasswiseResult(["a", "b", "c"], np.arange(12), labels, attacks, {"eps": 0.1, "dataset": "toy"}).save(tmp_path / "e")
    build_report(tmp_path / "e")
    page = (tmp_path / "e" / "report.html").read_text()
    assert "eps 0.1 (and 8/255 for attacks with their own)" in page


def test_results_carry_a_format_tag_and_every_attack_setting(tmp_path):
    """Issue #35, item 4: summary.json says its format (another one is refused by name), and the
    recorded description names every setting an attack has (FAB's, FMN's and APGD's were dropped)."""
    import json

    import numpy as np
    import pytest
    from torch import nn

    from classrobust.attacks import create_attack
    from classrobust.errors import UsageError
    from classrobust.results import AttackResult, ClasswiseResult, describe_attack

    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    for name, words in (("fab-t", ("alpha max", "overshoot", "beta")), ("fmn", ("gamma init", "gamma final")),
                        ("apgd-ce", ("rho",)), ("square", ("p init",))):
        text = describe_attack(create_attack(name, model, eps=0.1).config())
        assert all(w in text for w in words), text
    labels = np.arange(3)
    ClasswiseResult(["a", "b", "c"], labels, labels,
                    {"clean": AttackResult("clean", labels, labels, 3, {"attack": "clean"})}).save(tmp_path / "e")
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["format"] == "classrobust-result/1"
    ClasswiseResult.load(tmp_path / "e")
    (tmp_path / "e" / "summary.json").write_text(json.dumps({**summary, "format": "classrobust-result/9"}))
    with pytest.raises(UsageError, match="format 'classrobust-result/9'"):
        ClasswiseResult.load(tmp_path / "e")


def test_a_report_section_is_one_function(tmp_path, monkeypatch):
    """Issue #35, item 3: both reports are a list of section functions on one API (report/page.py:
    Sections, render); adding one to the list puts it on the page, in order, with its table saved."""
    import numpy as np

    import classrobust.report.experiment as experiment_report
    import classrobust.report.html as eval_report
    from classrobust.report import build_report
    from classrobust.report.experiment import build_experiment_report
    from classrobust.report.page import Sections
    from classrobust.results import AttackResult, ClasswiseResult

    def extra(out: Sections, context) -> None:
        out.section("An added section", "added", "one function, appended to the list",
                    pd.DataFrame({"kind": [type(context).__name__]}), "added")

    labels = np.repeat(np.arange(3), 4)
    attacks = {"clean": AttackResult("clean", labels, labels, 3, {"attack": "clean"}),
               "pgd": AttackResult("pgd", labels, (labels + 1) % 3, 3, {"attack": "pgd", "eps": 0.1, "norm": "linf"})}
    ClasswiseResult(["a", "b", "c"], np.arange(12), labels, attacks, {"eps": 0.1, "dataset": "toy"}).save(tmp_path / "e")
    monkeypatch.setattr(eval_report, "EVAL_SECTIONS", (*eval_report.EVAL_SECTIONS, extra))
    page = (build_report(tmp_path / "e")).read_text()
    assert page.index('id="sanity"' if 'id="sanity"' in page else 'id="consistency"' if 'id="consistency"' in page
                      else 'id="confusion"') < page.index('id="added"') and "EvalContext" in page
    assert (tmp_path / "e" / "report_files" / "tables" / "added.csv").is_file()
    # the experiment report: the same API, its own context
    committed = Path(__file__).resolve().parents[1] / "docs/results/quick-fashion-mnist"
    copy = tmp_path / "x"
    shutil.copytree(committed, copy, ignore=shutil.ignore_patterns("report"))
    monkeypatch.setattr(experiment_report, "EXPERIMENT_SECTIONS", (extra, *experiment_report.EXPERIMENT_SECTIONS))
    build_experiment_report(copy)
    md = (copy / "report" / "report.md").read_text()
    assert md.index("## An added section") < md.index("## fashion-mnist") and "ExperimentContext" in md
