"""The GPU path, checked on the CPU where the logic allows: host synchronisations per attack and
training step (counted), bf16 detection, SyncBatchNorm, rank-0-only writes and barriers, TF32 off
and recorded, and the CPU path of benchmarks/gpu_check.sh."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

from classrobust.runtime import SyncCounter
from classrobust.runtime import Runtime

ROOT = Path(__file__).resolve().parents[1]


def _count(fn) -> SyncCounter:
    counter = SyncCounter()
    with counter.counting():
        fn()
    return counter


@pytest.mark.parametrize("steps", [5, 20])
def test_pgd_reads_the_device_a_fixed_number_of_times_whatever_its_steps(steps, tiny_model, tiny_batch):
    from classrobust.attacks import PGD

    x, y = tiny_batch
    attack = PGD(tiny_model, eps=0.1, steps=steps, mode="last")
    # checked inputs: the image range (one read for min and max), the label range, finiteness at the end
    assert _count(lambda: attack(x, y)).total <= 4
    # the training loop's inner attack checks nothing per call
    assert _count(lambda: attack(x, y, validate=False)).total == 0


def test_nan_logits_still_stop_the_attack(tiny_batch):
    from classrobust.attacks import PGD
    from classrobust.errors import NonFiniteError

    class NaNNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(64, 4)

        def forward(self, x):
            return self.lin(x.flatten(1)) * float("nan")

    with pytest.raises(NonFiniteError, match="NaN or infinite logits"):
        PGD(NaNNet(), eps=0.1, steps=3, mode="last")(*tiny_batch)


def test_a_training_epoch_reads_the_device_only_every_few_steps(synthetic_env, tmp_path):
    from classrobust.training import TrainConfig
    from classrobust.training.loop import CHECK_EVERY, _prepare, _train_epoch

    config = TrainConfig(train_subset=600, epochs=1, batch_size=10, attack_steps=2, val_size=20, precision="fp32",
                         classwise="reweight")
    run_ = _prepare(config, tmp_path / "run", None, False)
    assert run_.steps_per_epoch >= 50
    counter = _count(lambda: _train_epoch(run_, 1, 0, progress=False))
    # the finiteness check every CHECK_EVERY steps, then a handful of reads of the epoch's statistics
    assert counter.total <= run_.steps_per_epoch // CHECK_EVERY + 10, counter.counts  # measured: 11 for 54 steps


def test_bf16_is_the_default_only_where_it_is_native(monkeypatch):
    from classrobust.runtime import default_precision

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert default_precision(torch.device("cuda")) == "fp32"  # emulated only (pre-Ampere)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert default_precision(torch.device("cuda")) == "bf16"


def test_sync_batchnorm_only_for_batchnorm_models_under_torchrun_on_gpus():
    from classrobust.models import create_model
    from classrobust.training.loop import use_sync_batchnorm

    resnet = create_model("preact-resnet18", "cifar10")
    smallcnn = create_model("smallcnn", "fashion-mnist")
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert use_sync_batchnorm(resnet, cuda, True)
    assert not use_sync_batchnorm(resnet, cuda, False) and not use_sync_batchnorm(resnet, cpu, True)
    assert not use_sync_batchnorm(smallcnn, cuda, True)
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(resnet)
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.modules())


@pytest.fixture
def trained(trained_run):
    return trained_run / "model.safetensors"


def test_only_rank_0_writes_and_every_rank_waits(trained, tmp_path, monkeypatch):
    import classrobust.workflows.calibrate as cal
    import classrobust.workflows.evaluate as ev

    waits = []
    for module in (ev, cal):
        monkeypatch.setattr(module, "is_main", lambda: False)
        monkeypatch.setattr(module, "barrier", lambda name=module.__name__: waits.append(name))
    ev.evaluate_checkpoint(trained, tmp_path / "eval", attacks="fgsm", limit=20, runtime=Runtime(progress=False))
    cal.calibrate_checkpoint(trained, tmp_path / "cal.safetensors", val_size=20, steps=1, rounds=1,
                             runtime=Runtime(log=lambda m: None))
    assert not (tmp_path / "eval").exists() and not (tmp_path / "cal.safetensors").exists()
    assert waits == [ev.__name__, cal.__name__]


def test_temperature_step_writes_on_rank_0_only(trained_run, tmp_path, monkeypatch):
    import shutil

    import classrobust.workflows.evaluate as ev
    import classrobust.workflows.experiment as experiment
    import classrobust.workflows.temperature as temp
    from classrobust.workflows.experiment import run_dir
    from classrobust.workflows.spec import load_spec

    path = tmp_path / "exp.yaml"
    path.write_text("datasets: [fashion-mnist]\nmethods: [pgd-at]\neval: {attacks: pgd, limit: 20}\n"
                    "temperature: {values: [0.5, 1.0], steps: 1, val_limit: 20}\n")
    spec = load_spec(path, out=tmp_path / "exp")
    run = spec.runs[0]
    shutil.copytree(trained_run, run_dir(spec, run))
    waits = []
    for module in (ev, temp):
        monkeypatch.setattr(module, "is_main", lambda: False)
        monkeypatch.setattr(module, "barrier", lambda name=module.__name__: waits.append(name))
    entry = experiment.run_temperature_step(spec, [run], Runtime(progress=False, log=lambda m: None))
    assert entry["chosen"] in (0.5, 1.0)
    # no files: an evaluation's kept batches (the only thing every process writes) are gone once it ends
    assert not (spec.out / "temperature.json").exists()
    assert not [p for p in (run_dir(spec, run) / "temperature").rglob("*") if p.is_file()]
    assert waits == [temp.__name__, temp.__name__, ev.__name__]  # the sweep, the index, the test evaluation


def test_tf32_is_off_and_recorded(trained, tmp_path):
    from classrobust.checkpoint import read_checkpoint_meta
    from classrobust.workflows.evaluate import evaluate_checkpoint

    torch.backends.cuda.matmul.allow_tf32 = True
    result, out = evaluate_checkpoint(trained, tmp_path / "eval", attacks="fgsm", limit=20, runtime=Runtime(progress=False),
                                      report=False)
    assert torch.backends.cuda.matmul.allow_tf32 is False and torch.backends.cudnn.allow_tf32 is False
    assert json.loads((out / "summary.json").read_text())["meta"]["tf32"] is False
    assert read_checkpoint_meta(trained)["tf32"] is False


@pytest.mark.slow
def test_gpu_check_script_cpu_path(tmp_path):
    env = {**os.environ, "GPU_CHECK_DEVICE": "cpu", "GPU_CHECK_TINY": "1"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(tmp_path / "gc")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for step in ("train", "eval", "calibrate", "report", "torchrun", "syncs", "throughput", "determinism"):
        assert f"time {step}:" in done.stdout
    # the CPU's promise: bitwise (the kill and resume itself: tests/test_training.py)
    assert "--deterministic, two runs: bitwise equal" in done.stdout
    assert "gpu_check: all steps passed" in done.stdout
    syncs = [line for line in done.stdout.splitlines() if line.startswith("syncs PGD-")]
    assert syncs and all("per step" in line for line in syncs)


def test_deterministic_sets_the_flags_and_refuses_compile(monkeypatch):
    from classrobust.errors import UsageError
    from classrobust.runtime import set_deterministic
    from classrobust.training import TrainConfig

    with pytest.raises(UsageError, match="--deterministic and --compile"):
        TrainConfig(deterministic=True, compile=True)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    try:
        set_deterministic(True)
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert torch.are_deterministic_algorithms_enabled() and os.environ["CUBLAS_WORKSPACE_CONFIG"]
    finally:
        torch.use_deterministic_algorithms(False)


def test_the_model_is_compiled_after_the_ddp_wrap():
    import torch.distributed as dist

    from classrobust.training.loop import wrap_model

    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:29533", rank=0, world_size=1)
    try:
        model = wrap_model(net, torch.device("cpu"), distributed=True, compile=True)
        assert isinstance(model._orig_mod, nn.parallel.DistributedDataParallel)  # compile(DDP(net))
        assert model._orig_mod.module is net
    finally:
        dist.destroy_process_group()
    assert wrap_model(net, torch.device("cpu"), distributed=False, compile=False) is net


@pytest.mark.parametrize("name", ["pgd", "apgd-ce", "square"])
def test_evaluation_mode_shrinks_every_few_steps_with_the_same_result(name, monkeypatch, at_fmnist_model,
                                                                     fmnist_test_subset):
    from classrobust.attacks import base, create_attack

    x, y = fmnist_test_subset[torch.arange(0, 600, 4)]
    model = at_fmnist_model.double()
    try:
        x = x.double()  # float64: a sample's result does not depend on the batch it shares
        budget = {"n_queries": 12} if name == "square" else {"steps": 12}
        every_step = create_attack(name, model, eps=0.1, seed=3, **budget)(x, y)
        monkeypatch.setitem(base.SHRINK_EVERY, "cpu", 4)  # as on a GPU
        counter = SyncCounter()
        with counter.counting():
            every_fourth = create_attack(name, model, eps=0.1, seed=3, **budget)(x, y, validate=False)
        assert torch.equal(every_step, every_fourth)
        # a read of the verdicts and of the indices per shrink (3 for 12 steps or queries), plus
        # APGD's restart bookkeeping and Square's initial selection once per call
        assert counter.total <= 2 * 3 + {"apgd-ce": 4, "square": 2}.get(name, 0), counter
        with torch.no_grad():
            assert (model(every_fourth).argmax(1) != y).sum() > 10  # the attack did fool points
    finally:
        at_fmnist_model.float()


def test_each_process_reads_only_its_share_of_every_global_batch():
    """Under torchrun every process loads (and a folder dataset decodes) only batch[rank::size]:
    the shards of one global batch together are that batch, in its order."""
    from classrobust.data import DatasetInfo, ImageTensorDataset, ThreatModel, make_loader

    class Counting(ImageTensorDataset):
        read = 0

        def __getitem__(self, index):
            Counting.read += len(index)
            return super().__getitem__(index)

    info = DatasetInfo(name="t", classes=tuple("abcde"), input_shape=(1, 4, 4), threat_model=ThreatModel(eps=0.1, step_size=0.01),
                       mean=(0.5,), std=(0.25,))
    ds = Counting(torch.randint(0, 255, (50, 1, 4, 4), dtype=torch.uint8), torch.arange(50) % 5, info, "train")
    whole = [y for _, y in make_loader(ds, 8, shuffle=True, seed=3)]
    Counting.read = 0
    shards = [[y for _, y in make_loader(ds, 8, shuffle=True, seed=3, shard=(r, 3))] for r in range(3)]
    assert Counting.read == 50  # every image read once over the three processes, not three times
    for b, batch in enumerate(whole):
        rebuilt = torch.empty_like(batch)
        for r in range(3):
            rebuilt[r::3] = shards[r][b]
        assert torch.equal(rebuilt, batch)


def test_throughput_times_whole_batches_without_recompiling(capsys):
    """Why the compiled GPU epoch of 2026-11-27 was 5x slower: 50,000 images in batches of 512 leave a
    last batch of 336, whose new shape made torch.compile recompile (twice: attack and training graphs)
    inside the timed epoch. The benchmark now times whole batches only, as the training loop does
    (drop_last); dynamo's guards are backend-independent, so the cheap ``eager`` backend shows it here."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    torch._dynamo.reset()
    results = gpu_check.throughput(torch.device("cpu"), n_images=5 * 8 + 4, batch=8, steps=1, precision="fp32",
                                   compiled=True, backend="eager", model_name="smallcnn")
    (timed,) = results.values()
    assert timed["recompiled_frames"] == 0
    assert "40 images in" in capsys.readouterr().out  # the last 4 images (a partial batch) are left out
    torch._dynamo.reset()
