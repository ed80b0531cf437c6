"""Class-wise robustness inside users' own training code: the torchmetrics metric, the Lightning
callback, and TensorBoard logging of training runs (read back from the event files)."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
from torch import nn

from conftest import synthetic_mnist_like

pytest.importorskip("torchmetrics", reason="the integrations extra is part of the test install")


def _learnable(n=120, seed=0):
    images, labels = synthetic_mnist_like(n, seed)
    return torch.from_numpy(images).float().div(255).unsqueeze(1), torch.from_numpy(labels).long()


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 13 * 13, 10))


def test_metric_equals_the_evaluation_pipeline_and_leaves_inputs_and_mode_alone():
    from classrobust.attacks import create_attack
    from classrobust.evaluate import evaluate_classwise
    from classrobust.integrations.metric import ClasswiseRobustAccuracy

    x, y = _learnable()
    model = _net().train()
    attack = create_attack("pgd", model, eps=0.1, steps=5, seed=0)
    metric = ClasswiseRobustAccuracy(attack, num_classes=10)
    x_before = x.clone()
    for i in range(0, len(y), 50):  # uneven batches accumulate
        metric.update(x[i:i + 50], y[i:i + 50])
    out = metric.compute()
    assert torch.equal(x, x_before) and model.training  # inputs untouched, mode restored
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=50)
    ref = evaluate_classwise(model, loader, {"pgd": create_attack("pgd", model, eps=0.1, steps=5, seed=0)},
                             classes=[str(k) for k in range(10)], progress=False)
    np.testing.assert_array_equal(out["n"].numpy(), ref.attacks["clean"].n_per_class)
    np.testing.assert_allclose(out["clean"].numpy(), ref.attacks["clean"].accuracy_per_class)
    np.testing.assert_allclose(out["robust"].numpy(), ref.attacks["pgd"].accuracy_per_class)
    assert float(out["robust_all"]) == pytest.approx(ref.attacks["pgd"].accuracy)
    assert float(out["worst_robust"]) == pytest.approx(np.nanmin(ref.attacks["pgd"].accuracy_per_class))
    assert (out["robust"] <= out["clean"]).all()  # a clean error is never robust
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        metric.update(x[:2], torch.tensor([0, 10]))
    metric.reset()
    assert int(metric.n.sum()) == 0


def test_metric_without_samples_of_a_class_gives_nan_not_zero():
    from classrobust.attacks import create_attack
    from classrobust.integrations.metric import ClasswiseRobustAccuracy

    x, y = _learnable()
    keep = y != 3
    metric = ClasswiseRobustAccuracy(create_attack("fgsm", _net(), eps=0.1), num_classes=10)
    metric.update(x[keep], y[keep])
    out = metric.compute()
    assert int(out["n"][3]) == 0 and torch.isnan(out["robust"][3]) and int(out["worst_class"]) != 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shard_worker(rank, world, port, queue):
    import torch.distributed as dist

    from classrobust.attacks import create_attack
    from classrobust.integrations.metric import ClasswiseRobustAccuracy

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    x, y = _learnable()
    metric = ClasswiseRobustAccuracy(create_attack("pgd", _net(), eps=0.1, steps=3, seed=0), num_classes=10)
    metric.update(x[rank::world], y[rank::world])
    out = metric.compute()  # synchronised: every process sees both shards' counts
    queue.put((rank, out["n"].tolist(), out["robust"].tolist()))
    dist.destroy_process_group()


def test_metric_counts_are_summed_across_processes():
    import torch.multiprocessing as mp

    from classrobust.attacks import create_attack
    from classrobust.integrations.metric import ClasswiseRobustAccuracy

    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = _free_port()
    procs = [ctx.Process(target=_shard_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert all(p.exitcode == 0 for p in procs)
    got = dict((rank, (n, robust)) for rank, n, robust in (queue.get() for _ in range(2)))
    x, y = _learnable()
    alone = ClasswiseRobustAccuracy(create_attack("pgd", _net(), eps=0.1, steps=3, seed=0), num_classes=10)
    for r in range(2):  # the same shards, one call each, as the two processes attacked them
        alone.update(x[r::2], y[r::2])
    ref = alone.compute()
    for rank in range(2):
        assert got[rank][0] == ref["n"].tolist()
        np.testing.assert_allclose(got[rank][1], ref["robust"].numpy())


def test_lightning_callback_logs_per_class_curves(tmp_path):
    pytest.importorskip("lightning")
    import lightning.pytorch as pl
    import pandas as pd
    from lightning.pytorch.loggers import CSVLogger

    from classrobust.attacks import create_attack
    from classrobust.integrations.lightning import ClasswiseRobustness
    from classrobust.integrations.metric import ClasswiseRobustAccuracy

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = _net()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, _):
            x, y = batch
            return nn.functional.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    x, y = _learnable(200, seed=0)
    xv, yv = _learnable(100, seed=1)
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=50, shuffle=True)
    held_out = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xv, yv), batch_size=50)
    names = [f"c{k}" for k in range(10)]
    callback = ClasswiseRobustness(held_out, attack="pgd:steps=3", eps=0.1, every_n_epochs=1, class_names=names)
    module = Module()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, callbacks=[callback], logger=CSVLogger(tmp_path),
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(module, train)
    history = callback.history_frame()
    assert sorted(history.epoch.unique()) == [1, 2] and len(history) == 2 * 10
    assert (history.robust <= history.clean).all() and history.attack.eq("pgd").all()
    # the last evaluation is the final model's, as the metric computes it directly
    direct = ClasswiseRobustAccuracy(create_attack("pgd", module, eps=0.1, steps=3), num_classes=10)
    for xb, yb in held_out:
        direct.update(xb, yb)
    last = history[history.epoch == 2].sort_values("class_index")
    np.testing.assert_allclose(last.robust.to_numpy(), direct.compute()["robust"].numpy())
    logged = pd.read_csv(next(tmp_path.rglob("metrics.csv")))
    assert {"classwise/pgd/robust/c0", "classwise/clean/c9", "classwise/pgd/worst_robust"} <= set(logged.columns)
    assert logged["classwise/pgd/robust/c0"].notna().sum() == 2  # one point per evaluation: a curve


def _scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc, {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_train_tensorboard_logs_what_the_training_log_records(synthetic_env, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    import pandas as pd

    from conftest import run
    from test_defenses import TRAIN

    out, board = tmp_path / "run", tmp_path / "tb"
    code, _, err = run([*TRAIN, "--epochs", "2", "--classwise", "reweight", "--out", out, "--tensorboard", board],
                       capsys)
    assert code == 0, err
    acc, scalars = _scalars(board)
    log = pd.read_csv(out / "train_log.csv")
    assert all(tag.count("/") == 1 for tag in scalars), sorted(scalars)  # "T-shirt/top" is one component
    for _, row in log.iterrows():  # every class, every epoch, the same numbers as train_log.csv
        name, epoch = row.class_name.replace("/", "-"), int(row.epoch)
        assert dict(scalars[f"val_pgd/{name}"])[epoch] == pytest.approx(row.val_pgd_accuracy)
        assert dict(scalars[f"val_clean/{name}"])[epoch] == pytest.approx(row.val_clean_accuracy)
        if row.class_index >= 0:
            assert dict(scalars[f"lever_weights/{name}"])[epoch] == pytest.approx(row.weights)
    assert [s for s, _ in scalars["train/loss"]] == [1, 2]
    assert "final/per_class" in acc.Tags()["images"]


def test_tensorboard_output_is_checked_before_training(synthetic_env, tmp_path, capsys):
    from conftest import run
    from test_defenses import TRAIN

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, err = run([*TRAIN, "--out", tmp_path / "run", "--tensorboard", blocker / "tb"], capsys)
    assert code == 2 and "which is a file" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists() and not (tmp_path / ".run.partial").exists()


@pytest.mark.parametrize("block", [0, 1], ids=["metric", "lightning"])
def test_the_documented_examples_run(block, tmp_path, monkeypatch):
    """docs/integrations.md's Python examples run as written (offline, on the CPU)."""
    import re
    from pathlib import Path

    pytest.importorskip("lightning")
    text = (Path(__file__).resolve().parents[1] / "docs" / "integrations.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)  # Lightning may write beside the working folder
    exec(compile(blocks[block], f"docs/integrations.md[{block}]", "exec"), {"__name__": "__doc_example__"})


def test_a_misspelt_timm_architecture_suggests_the_right_one():
    """Issue #35, item 15: timm:resnet10tt named no close match (resnet10t shares only a prefix of 6)."""
    pytest.importorskip("timm")
    from classrobust.errors import UsageError
    from classrobust.models.timm_models import check_timm_name

    with pytest.raises(UsageError, match="close: resnet10t"):
        check_timm_name("timm:resnet10tt")
