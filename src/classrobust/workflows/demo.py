"""The demo workflow: train (or reuse) a PGD-AT smallcnn on Fashion-MNIST and evaluate it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from classrobust.errors import CheckpointError
from classrobust.io import check_output_dir, file_sha256
from classrobust.options import plural
from classrobust.results import ClasswiseResult
from classrobust.runtime import Runtime, default_precision, resolve_device
from classrobust.training import TrainConfig, train
from classrobust.workflows.evaluate import evaluate_checkpoint

DEMO_EPOCHS = 6
DEMO_ATTACKS = "fgsm,pgd:steps=20,temp-pgd:steps=20"
#: the demo model as trained once with the default settings (bf16 on a CPU with native bf16, 2026-12-03);
#: shipped so that `classrobust demo` gives the README's table on every machine in minutes
SHIPPED = Path(__file__).resolve().parents[1] / "assets" / "demo"
SHIPPED_FILES = ("model.safetensors", "model.json", "train_log.csv")
SHIPPED_SHA256 = "84a40a77b030193ea990873029096d13899b61248973faef2a493a86f413633e"


def _install_shipped(out: Path, log: Callable[[str], None]) -> None:
    """Copy the shipped demo model into ``out`` after checking its SHA-256."""
    import shutil

    if file_sha256(SHIPPED / "model.safetensors") != SHIPPED_SHA256:
        raise CheckpointError(f"{SHIPPED / 'model.safetensors'} does not have the demo model's SHA-256 "
                              f"{SHIPPED_SHA256[:12]}...; reinstall classrobust or pass --retrain")
    out.mkdir(parents=True, exist_ok=True)
    for name in SHIPPED_FILES:
        shutil.copyfile(SHIPPED / name, out / name)
    log(f"using the shipped demo model (trained once with these settings; sha256 {SHIPPED_SHA256[:12]}...; "
        "--retrain trains it on this machine, about 3 to 17 minutes on a 2-core CPU)")


def demo_config(*, epochs: int | None = None, train_subset: int | None = None, seed: int = 0,
                device: str | None = None) -> TrainConfig:
    """The demo's training run. Dropout off and a 1-epoch eps warm-up: with dropout 0.5 or fewer
    epochs the Shirt class collapses (clean accuracy ~5-10%) within the demo's time budget. lr 0.03
    with a 0.25-epoch warm-up: at lr 0.05 without warm-up, runs diverged to NaN on some seeds.
    Precision follows the hardware (bf16 where it is native)."""
    dev = resolve_device(device)
    return TrainConfig(dataset="fashion-mnist", model="smallcnn", model_kwargs={"dropout": 0.0},
                       method="pgd-at", eps=0.1, attack_steps=3, eps_warmup_epochs=1.0,
                       epochs=epochs or DEMO_EPOCHS, batch_size=128, lr=0.03, lr_warmup_epochs=0.25, val_size=1000,
                       val_attack_steps=10, train_subset=train_subset, seed=seed,
                       precision=default_precision(dev), device=str(dev))


@dataclass
class DemoRun:
    result: ClasswiseResult
    eval_dir: Path
    checkpoint: Path
    trained: bool
    train_seconds: float


def run_demo(out: str | Path = "runs/demo", *, retrain: bool = False, epochs: int | None = None,
             train_subset: int | None = None, limit: int = 2000, seed: int = 0,
             runtime: Runtime | None = None) -> DemoRun:
    """Train the demo model into ``out`` (or reuse one trained with the same config) and evaluate
    ``limit`` class-stratified test images with FGSM, PGD-20 and Temperature-PGD-20."""
    from classrobust.checkpoint import read_checkpoint_meta

    runtime = runtime or Runtime()
    log, device = runtime.log, runtime.device

    out = check_output_dir(out)
    config = demo_config(epochs=epochs, train_subset=train_subset, seed=seed, device=device)
    checkpoint = out / "model.safetensors"
    reuse = False
    defaults = epochs is None and train_subset is None and seed == 0
    if not retrain and defaults and not checkpoint.exists() and not (out / "model.json").exists():
        _install_shipped(out, log)
    if not retrain and defaults and checkpoint.is_file() and file_sha256(checkpoint) == SHIPPED_SHA256:
        reuse = True  # the shipped model, whatever precision or device this machine would train with
    elif checkpoint.exists() and not retrain:
        try:
            saved = read_checkpoint_meta(checkpoint).get("config")
            reuse = saved is not None and not config.differences(saved)
        except CheckpointError:
            reuse = False
        log(f"reusing {checkpoint} (pass --retrain to train again)" if reuse
            else f"{checkpoint} was trained with other settings; training again")
    t0 = time.perf_counter()
    if not reuse:
        log(f"training PGD-AT smallcnn on Fashion-MNIST, eps 0.1, {plural(config.epochs, 'epoch')} "
            f"({config.precision}, {config.device})")
        train(config, out, runtime=runtime, overwrite=True)  # the demo's own folder
    train_seconds = time.perf_counter() - t0
    # attack seed and test subset fixed: demos trained with different --seed compare sample by sample
    result, eval_dir = evaluate_checkpoint(checkpoint, out / "eval", attacks=DEMO_ATTACKS, limit=limit, seed=0,
                                           subset_seed=0, runtime=runtime)
    return DemoRun(result, eval_dir, checkpoint, not reuse, train_seconds)
