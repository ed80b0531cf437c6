"""Analyses and reports that scale with the number of classes (10, 100, 1,000 on generated data):
the printed table and report.html lead with the extremes, readable heatmaps, empirical-Bayes
intervals beside Wilson's, and a 1,000-class report that stays small and opens fast in Chromium."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from classrobust.results import CLEAN, AttackResult, ClasswiseResult


def generated_result(k: int, per_class: int, seed: int = 0) -> ClasswiseResult:
    """K classes of graded difficulty; attacks flip points mostly into the neighbouring class."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(k), per_class)
    difficulty = rng.beta(2, 2, size=k)[labels]
    neighbour = (labels + 1) % k
    clean = np.where(rng.random(len(labels)) < 0.9 - 0.3 * difficulty, labels, neighbour)
    attacks = {CLEAN: AttackResult(CLEAN, labels, clean, k, {"attack": CLEAN})}
    pred = clean
    for name, strength in (("fgsm", 0.4), ("pgd", 0.6)):
        flip = rng.random(len(labels)) < strength * difficulty
        pred = np.where(flip, np.where(rng.random(len(labels)) < 0.8, neighbour, (labels + 2) % k), pred)
        attacks[name] = AttackResult(name, labels, pred, k, {"attack": name, "eps": 8 / 255})
    return ClasswiseResult([f"class_{i:04d}" for i in range(k)], np.arange(len(labels)), labels, attacks,
                           {"model": "generated", "dataset": f"generated-{k}", "eps": 8 / 255})


@pytest.mark.parametrize("k", [10, 100, 1000])
def test_printed_table_leads_with_the_extremes(k):
    from classrobust.report import format_classwise_table

    result = generated_result(k, 5)
    lines = format_classwise_table(result).splitlines()
    acc = result.attacks["pgd"].accuracy_per_class
    if k <= 20:
        assert sum(line.startswith("class_") for line in lines) == k
        return
    assert lines[0].startswith(f"10 weakest and 10 strongest of {k} classes under pgd")
    rows = [line for line in lines if line.startswith("class_")]
    assert len(rows) == 20 and f"({k - 20} classes between)" in "\n".join(lines)
    shown = [int(line.split()[0][6:]) for line in rows]
    assert max(acc[shown[:10]]) <= min(np.delete(acc, shown))  # the first ten are the weakest
    assert min(acc[shown[10:]]) >= max(np.delete(acc, shown))  # the last ten the strongest


def test_empirical_bayes_intervals_cover_and_shrink():
    from classrobust.analysis.stats import empirical_bayes_intervals, wilson_interval

    rng = np.random.default_rng(0)
    cover_eb, cover_wilson, width_eb, width_wilson = [], [], [], []
    for _ in range(100):  # classes' true accuracies from a beta, 10 test points each
        truth = rng.beta(6, 3, size=100)
        n = np.full(100, 10)
        correct = rng.binomial(n, truth)
        _, low, high, _ = empirical_bayes_intervals(correct, n)
        w_low, w_high = wilson_interval(correct, n)
        cover_eb.append(np.mean((low <= truth) & (truth <= high)))
        cover_wilson.append(np.mean((w_low <= truth) & (truth <= w_high)))
        width_eb.append(np.mean(high - low))
        width_wilson.append(np.mean(w_high - w_low))
    assert 0.92 <= np.mean(cover_eb) <= 0.97 and 0.93 <= np.mean(cover_wilson)
    assert np.mean(width_eb) < 0.9 * np.mean(width_wilson)  # borrowing strength buys narrower intervals
    # identical classes: every estimate is pulled almost to the pooled mean
    n = np.full(50, 20)
    correct = rng.binomial(n, 0.7)
    est, _, _, (a, b) = empirical_bayes_intervals(correct, n)
    assert np.ptp(est) < 0.5 * np.ptp(correct / n) and a + b > 50
    # a class without samples stays unknown
    est, low, _, _ = empirical_bayes_intervals(np.array([3, 0, 5]), np.array([10, 0, 10]))
    assert np.isnan(est[1]) and np.isnan(low[1]) and not np.isnan(est[0])


def test_per_class_csv_has_both_intervals():
    from classrobust.analysis import per_class_table

    table = per_class_table(generated_result(100, 6))
    assert {"ci_low", "ci_high", "eb_accuracy", "eb_low", "eb_high"} <= set(table.columns)
    rows = table[table.attack == "pgd"]
    assert (rows.eb_low <= rows.eb_accuracy).all() and (rows.eb_accuracy <= rows.eb_high).all()
    # shrinkage: the estimates spread less than the raw accuracies
    assert rows.eb_accuracy.std() < rows.accuracy.std()


@pytest.mark.parametrize("k", [100, 1000])
def test_report_with_many_classes_is_small_and_opens_fast(k, tmp_path):
    """Readable at a glance (screenshot taken, every figure loaded), small, and (1,000 classes)
    loaded by Chromium within a second by its own navigation timing."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    from classrobust.report import build_report
    from test_report import CHROMEDRIVER, CHROMIUM, FLAGS, open_in_chromium

    result = generated_result(k, 50 if k == 1000 else 6)
    result.save(tmp_path / "eval")
    report = build_report(tmp_path / "eval", bootstrap_reps=300)
    html = report.read_text()
    assert len(html) < 3_000_000, f"report.html is {len(html)} bytes"
    assert "10 weakest and 10 strongest under pgd lead" in html
    assert html.count("<details>") >= 3  # the full class table, destinations per attack
    assert "empirical Bayes [95%]" in html
    images, ids, shot = open_in_chromium(report, tmp_path)
    broken = [name for name, complete, width in images if not (complete and width > 0)]
    assert not broken and shot.stat().st_size > 10_000
    assert {"table", "confusion", "disparity"} <= set(ids)
    assert len(pd.read_csv(tmp_path / "eval" / "report_files" / "tables" / "per_class_intervals.csv")) == 3 * k
    if k < 1000:
        return
    options = Options()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'profile-timing'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(report.resolve().as_uri())
        # driver.get returns at readyState "complete", which can precede the end of the load
        # event: loadEventEnd is then still 0 (CI saw "0 ms"), so wait until it is set.
        timing = ("const t = performance.getEntriesByType('navigation')[0];"
                  "return t ? t.loadEventEnd - t.startTime : 0;")
        WebDriverWait(driver, 30).until(lambda d: d.execute_script(timing) > 0)
        load_ms = driver.execute_script(timing)
    finally:
        driver.quit()
    print(f"1,000-class report.html loaded in {load_ms:.0f} ms")
    assert 0 < load_ms < 1000, f"report.html took {load_ms:.0f} ms to load"


def test_cifar100_superclasses_cover_the_dataset_exactly():
    from classrobust.analysis import default_superclasses
    from classrobust.analysis.superclasses import CIFAR100_SUPERCLASSES
    from classrobust.data.torchvision_sets import CIFAR100

    members = [c for group in CIFAR100_SUPERCLASSES.values() for c in group]
    assert len(CIFAR100_SUPERCLASSES) == 20 and all(len(g) == 5 for g in CIFAR100_SUPERCLASSES.values())
    assert sorted(members) == sorted(CIFAR100.classes)  # each fine class in exactly one superclass
    groups = default_superclasses(list(CIFAR100.classes))
    assert groups["people"] == ["baby", "boy", "girl", "man", "woman"]
    assert default_superclasses([f"c{i}" for i in range(100)]) is None


def test_superclass_table_by_hand():
    from classrobust.analysis import superclass_table

    labels = np.repeat(np.arange(4), 10)
    preds = labels.copy()
    preds[:7] = 1  # class a: 3 of 10 right
    preds[20:22] = 0  # class c: 8 of 10 right
    result = ClasswiseResult(list("abcd"), np.arange(40), labels,
                             {CLEAN: AttackResult(CLEAN, labels, labels.copy(), 4), "pgd": AttackResult("pgd", labels, preds, 4)})
    table = superclass_table(result, {"ab": ["a", "b"], "cd": ["c", "d"]}).set_index(["attack", "superclass"])
    row = table.loc[("pgd", "ab")]
    assert (row.n, row.correct, row.classes) == (20, 13, 2) and row.accuracy == pytest.approx(0.65)
    assert row.weakest_class == "a" and row.weakest_class_accuracy == pytest.approx(0.3)
    assert table.loc[("pgd", "cd")].correct == 18 and table.loc[("clean", "cd")].accuracy == 1.0


def test_report_superclasses_builtin_and_from_a_file(tmp_path, capsys):
    from classrobust.cli.main import main
    from classrobust.data.torchvision_sets import CIFAR100

    result = generated_result(100, 6)
    result.classes = list(CIFAR100.classes)
    result.save(tmp_path / "eval")
    assert main(["report", str(tmp_path / "eval")]) == 0
    html = (tmp_path / "eval" / "report.html").read_text()
    assert 'id="superclasses"' in html and "aquatic_mammals" in html  # CIFAR-100's, without being asked
    mapping = tmp_path / "groups.csv"
    pd.DataFrame({"class": CIFAR100.classes[:50], "superclass": ["first half"] * 50}).to_csv(mapping, index=False)
    assert main(["report", str(tmp_path / "eval"), "--superclasses", str(mapping)]) == 0
    table = pd.read_csv(tmp_path / "eval" / "report_files" / "tables" / "superclasses_long.csv")
    assert set(table.superclass) == {"first half", "(no superclass)"} and (table.classes == 50).all()
    bad = tmp_path / "bad.csv"
    bad.write_text("class,superclass\nunicorn,myth\n")
    capsys.readouterr()
    assert main(["report", str(tmp_path / "eval"), "--superclasses", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "classes not in the results: unicorn" in err and err.count("\n") == 1
