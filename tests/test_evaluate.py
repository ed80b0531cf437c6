"""Class-wise evaluation: counts, confusion, worst-case semantics, saved files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from classrobust.attacks import FGSM, PGD
from classrobust.data import make_loader
from classrobust.errors import UsageError
from classrobust.evaluate import CLEAN, AttackResult, ClasswiseResult, evaluate_classwise
from classrobust.runtime import Runtime


@pytest.fixture(scope="module")
def result(trained_fmnist_model, fmnist_test_subset):
    model = trained_fmnist_model
    attacks = {"fgsm": FGSM(model, eps=0.1), "pgd": PGD(model, eps=0.1, steps=10)}
    return evaluate_classwise(model, make_loader(fmnist_test_subset, 128), attacks, progress=False)


def test_counts_and_confusion(result, fmnist_test_subset):
    assert list(result.attacks) == [CLEAN, "fgsm", "pgd"]
    n = torch.bincount(fmnist_test_subset.targets, minlength=10).numpy()
    for res in result.attacks.values():
        cm = res.confusion
        assert cm.shape == (10, 10)
        np.testing.assert_array_equal(cm.sum(axis=1), n)
        np.testing.assert_array_equal(res.n_per_class, n)
        np.testing.assert_array_equal(np.diag(cm), res.correct_per_class)
        np.testing.assert_allclose(res.accuracy_per_class, np.diag(cm) / n)
        assert res.accuracy == pytest.approx(np.trace(cm) / n.sum())
        assert res.accuracy_per_class[res.worst_class] == res.accuracy_per_class.min()


def test_confusion_matches_sklearn_style_reference(result):
    # an independent count with pandas.crosstab
    res = result.attacks["pgd"]
    ref = pd.crosstab(res.labels, res.predictions).reindex(index=range(10), columns=range(10), fill_value=0)
    np.testing.assert_array_equal(res.confusion, ref.to_numpy())


def test_attacked_points_are_a_subset_of_clean_correct(result):
    clean = result.attacks[CLEAN]
    for name in ("fgsm", "pgd"):
        adv = result.attacks[name]
        robust = adv.predictions == adv.labels
        assert not (robust & (clean.predictions != clean.labels)).any()
        # a clean error keeps its clean prediction
        wrong = clean.predictions != clean.labels
        np.testing.assert_array_equal(adv.predictions[wrong], clean.predictions[wrong])
    assert (result.attacks["pgd"].correct_per_class <= clean.correct_per_class).all()


def test_batch_size_does_not_change_counts(trained_fmnist_model, fmnist_test_subset, result):
    model = trained_fmnist_model
    # fp32 convolutions may differ in the last bit between batch sizes; allow a rare flip
    attacks = {"fgsm": FGSM(model, eps=0.1), "pgd": PGD(model, eps=0.1, steps=10)}
    other = evaluate_classwise(model, make_loader(fmnist_test_subset, 37), attacks, progress=False)
    for name in result.attacks:
        agree = (other.attacks[name].predictions == result.attacks[name].predictions).mean()
        assert agree >= 0.995, (name, agree)


def test_indices_name_test_samples(result, fmnist_test_subset):
    np.testing.assert_array_equal(result.indices, fmnist_test_subset.indices.numpy())


def test_model_mode_restored(trained_fmnist_model, fmnist_test_subset):
    model = trained_fmnist_model.train()
    try:
        evaluate_classwise(model, make_loader(fmnist_test_subset.subset(range(20)), 10), {}, progress=False)
        assert model.training
    finally:
        model.eval()


def test_save_and_load_round_trip(result, tmp_path):
    out = result.save(tmp_path / "eval")
    names = sorted(p.name for p in out.iterdir())
    assert names == ["confusion_clean.csv", "confusion_fgsm.csv", "confusion_pgd.csv",
                     "per_class.csv", "samples.csv.gz", "summary.json"]
    table = pd.read_csv(out / "per_class.csv")
    assert list(table.columns[:6]) == ["attack", "class_index", "class_name", "n", "correct", "accuracy"]
    assert len(table) == 30 and set(table["attack"]) == {"clean", "fgsm", "pgd"}
    summary = json.loads((out / "summary.json").read_text())
    for name in ("clean", "fgsm", "pgd"):
        s = summary["attacks"][name]
        assert {"accuracy", "worst_class", "worst_class_accuracy", "best_class", "best_class_accuracy"} <= set(s)
        assert s["worst_class_accuracy"] <= s["accuracy"] <= s["best_class_accuracy"]
    cm = pd.read_csv(out / "confusion_pgd.csv", index_col=0)
    assert list(cm.columns) == result.classes
    np.testing.assert_array_equal(cm.to_numpy(), result.attacks["pgd"].confusion)
    again = ClasswiseResult.load(out)
    for name in result.attacks:
        np.testing.assert_array_equal(again.attacks[name].confusion, result.attacks[name].confusion)


def test_failed_save_keeps_earlier_result(result, tmp_path, monkeypatch):
    out = result.save(tmp_path / "eval")
    before = (out / "summary.json").read_text()
    bad = ClasswiseResult(result.classes, result.indices, result.labels, dict(result.attacks), {})

    def boom():
        raise RuntimeError("failed halfway")

    monkeypatch.setattr(bad, "samples_table", boom)
    with pytest.raises(RuntimeError):
        bad.save(out)
    assert (out / "summary.json").read_text() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_collapsed_class_is_reported():
    labels = np.repeat(np.arange(3), 10)
    preds = labels.copy()
    preds[labels == 2] = 0  # class 2 never predicted
    res = ClasswiseResult(["a", "b", "c"], np.arange(30), labels,
                          {CLEAN: AttackResult(CLEAN, labels, preds, 3)})
    assert [c["class"] for c in res.summary()["collapsed_classes"]] == ["c"]
    from classrobust.report import format_warnings

    assert "class 'c' has collapsed" in format_warnings(res)[0]


def test_labels_out_of_range(tiny_model):
    x = torch.rand(4, 1, 8, 8)
    loader = [(x, torch.tensor([0, 1, 2, 7]))]
    with pytest.raises(UsageError, match=r"labels must lie in \[0, 4\)"):
        evaluate_classwise(tiny_model, loader, {}, classes=list("abcd"), progress=False)


def test_clean_is_reserved(tiny_model):
    with pytest.raises(UsageError, match="reserved"):
        evaluate_classwise(tiny_model, [], {"clean": FGSM(tiny_model, eps=0.1)}, classes=list("abcd"))


@pytest.mark.parametrize("k", [10, 100, 1000])
def test_many_collapsed_classes_make_one_warning_line(k):
    from classrobust.report import format_warnings

    labels = np.repeat(np.arange(k), 5)
    preds = np.where(labels % 10 < 7, 0, labels)  # 70% of the classes never predicted
    res = ClasswiseResult([f"class_{i:04d}" for i in range(k)], np.arange(len(labels)), labels,
                          {CLEAN: AttackResult(CLEAN, labels, preds, k)})
    lines = format_warnings(res)
    collapsed = len(res.summary()["collapsed_classes"])
    assert collapsed >= 6 and len(lines) == 1
    assert lines[0].startswith(f"warning: {collapsed} of {k} classes have collapsed") and "class_0001" in lines[0]


def test_progress_off_a_terminal_is_ten_lines_not_a_bar(tiny_model, capsys):
    """stderr is not a terminal under pytest: the evaluation reports each tenth once, no bar."""
    x = torch.rand(40, 1, 8, 8)
    y = torch.arange(40) % 4
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=2)  # 20 batches
    evaluate_classwise(tiny_model, loader, {"fgsm": FGSM(tiny_model, eps=0.1)}, classes=list("abcd"), progress=True)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 10 and "\r" not in err
    assert lines[0].startswith("evaluate: 10% (2/20 batches") and lines[-1].startswith("evaluate: 100% (20/20")


def test_loader_workers_do_not_change_results(trained_run, tmp_path):
    from classrobust.workflows.evaluate import evaluate_checkpoint

    results = [evaluate_checkpoint(trained_run / "model.safetensors", tmp_path / f"w{w}", attacks="fgsm,pgd:steps=2",
                                   limit=60, workers=w, runtime=Runtime(progress=False), report=False)[0] for w in (0, 2)]
    assert np.array_equal(results[0].indices, results[1].indices)
    for name in results[0].attacks:
        assert np.array_equal(results[0].attacks[name].predictions, results[1].attacks[name].predictions), name


def test_tally_helpers_count_per_class_check_correctness_and_time():
    """The shared counters the benchmark and experiment scripts use for their resumable records."""
    from classrobust.evaluate.tally import add_per_class, still_correct, timed

    counts = [0, 0, 0, 5]
    add_per_class(counts, torch.tensor([3, 0, 3, 1]))
    add_per_class(counts, np.array([], dtype=np.int64))  # an empty batch (every point broken) adds nothing
    assert counts == [1, 1, 0, 7]
    with pytest.raises(ValueError):  # a label outside the record's classes is an error, not a silent extra class
        add_per_class([0, 0], torch.tensor([2, 3]))

    model = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3, 2))  # class 0 for x[0] large, class 1 for x[1] large, never class 2
    x, y = torch.tensor([[5.0, 0.0], [0.0, 5.0], [5.0, 0.0]]), torch.tensor([0, 0, 2])
    assert still_correct(model, x, y).tolist() == [True, False, False]

    seconds = {"a": 1.0}
    with timed(seconds, "a"):
        pass
    with pytest.raises(RuntimeError), timed(seconds, "b"):  # time is counted even when the block fails
        raise RuntimeError
    assert seconds["a"] >= 1.0 and seconds["b"] >= 0.0 and set(seconds) == {"a", "b"}


def test_killed_evaluation_continues_from_its_finished_batches(tiny_model, tmp_path, monkeypatch):
    """A kill in the third batch leaves two batches in the resume folder; the rerun attacks only the
    rest and gives the uninterrupted predictions. Another model, attack or data recomputes."""
    from classrobust.evaluate import classwise

    x, y = torch.rand(40, 1, 8, 8), torch.arange(40) % 4
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)  # 5 batches
    attacks = {"pgd": PGD(tiny_model, eps=0.1, steps=3)}
    reference = evaluate_classwise(tiny_model, loader, attacks, classes=list("abcd"), progress=False)
    calls, real = [], classwise._attack_batch

    def counted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3 and kill:
            raise KeyboardInterrupt  # the kill
        return real(*args, **kwargs)

    monkeypatch.setattr(classwise, "_attack_batch", counted)
    folder = tmp_path / ".eval.resume"
    kill = True
    with pytest.raises(KeyboardInterrupt):
        evaluate_classwise(tiny_model, loader, attacks, classes=list("abcd"), progress=False, resume_dir=folder)
    assert len(list(folder.glob("batch*.pt"))) == 2
    kill, calls[:] = False, []
    resumed = evaluate_classwise(tiny_model, loader, attacks, classes=list("abcd"), progress=False, resume_dir=folder)
    assert len(calls) == 3  # batches 3-5 only
    for name in reference.attacks:
        np.testing.assert_array_equal(resumed.attacks[name].predictions, reference.attacks[name].predictions)
    assert resumed.attacks["pgd"].seconds > 0
    # other attack settings, other weights or other images: nothing is taken from the folder
    calls[:] = []
    evaluate_classwise(tiny_model, loader, {"pgd": PGD(tiny_model, eps=0.2, steps=3)}, classes=list("abcd"),
                       progress=False, resume_dir=folder)
    assert len(calls) == 5
    with torch.no_grad():
        next(tiny_model.parameters()).add_(0.01)
    calls[:] = []
    evaluate_classwise(tiny_model, loader, {"pgd": PGD(tiny_model, eps=0.2, steps=3)}, classes=list("abcd"),
                       progress=False, resume_dir=folder)
    assert len(calls) == 5
    other = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x.flip(0), y.flip(0)), batch_size=8)
    calls[:] = []
    evaluate_classwise(tiny_model, other, {"pgd": PGD(tiny_model, eps=0.2, steps=3)}, classes=list("abcd"),
                       progress=False, resume_dir=folder)
    assert len(calls) == 5
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="did not write there"):
        evaluate_classwise(tiny_model, loader, attacks, classes=list("abcd"), progress=False, resume_dir=foreign)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_evaluate_checkpoint_removes_its_resume_folder(trained_run, tmp_path):
    from classrobust.workflows.evaluate import evaluate_checkpoint

    result, out = evaluate_checkpoint(trained_run / "model.safetensors", tmp_path / "ev", attacks="fgsm", limit=40,
                                      runtime=Runtime(progress=False), report=False)
    assert (out / "summary.json").is_file() and not (tmp_path / ".ev.resume").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev", "run"]  # run: the trained fixture


@pytest.mark.parametrize("scale, warned", [(1.0, None), (1e-3, "tiny"), (1e4, "huge"), ("softmax", "probabilities")])
def test_outputs_the_fooling_margin_does_not_fit_get_a_one_line_warning(tiny_model, tiny_batch, scale, warned):
    from classrobust.attacks import FGSM
    from classrobust.report import format_warnings

    class Scaled(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            z = self.inner(x)
            return z.softmax(dim=1) if scale == "softmax" else z * scale

    model = Scaled(tiny_model).eval()
    x, y = tiny_batch
    result = evaluate_classwise(model, [(x, y)], {"fgsm": FGSM(model, eps=0.1)}, classes=list("abcd"),
                                progress=False)
    lines = [line for line in format_warnings(result) if "fooling margin" in line or "probabilities" in line]
    if warned is None:
        assert not lines
    else:
        assert len(lines) == 1 and warned in lines[0] and "\n" not in lines[0]
