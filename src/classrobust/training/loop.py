"""The one training loop: optimiser, schedule, bf16 autocast, per-class validation, checkpoint."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from classrobust.attacks.base import fast_layout
from classrobust.attacks.pgd import PGD
from classrobust.checkpoint import save_checkpoint
from classrobust.data import get_dataset, make_loader, stratified_subset, train_val_split
from classrobust.errors import NonFiniteError
from classrobust.evaluate import CLEAN, evaluate_classwise
from classrobust.io import atomic_directory
from classrobust.models import create_model
from classrobust.training.config import TrainConfig
from classrobust.training.methods import METHODS
from classrobust.training.schedules import lr_multiplier

VAL_ATTACK = "pgd"


def resolve_eps(config: TrainConfig, default_eps: float) -> float:
    return default_eps if config.eps is None else config.eps


def validate(model, val_loader, config: TrainConfig, eps: float, classes: list[str], device):
    """Per-class clean and PGD accuracy on the validation split (never the test split)."""
    attacks = {}
    if eps > 0:
        attacks[VAL_ATTACK] = PGD(model, eps=eps, steps=config.val_attack_steps, seed=config.seed,
                                  precision=config.precision, mode="best")
    return evaluate_classwise(model, val_loader, attacks, classes=classes, device=device, progress=False)


def log_rows(epoch: int, result, epoch_stats: dict[str, Any]) -> list[dict[str, Any]]:
    """Long-format log rows: one per class plus one ``all`` row (class_index -1)."""
    clean = result.attacks[CLEAN]
    robust = result.attacks.get(VAL_ATTACK, clean)
    rows = []
    for k, name in enumerate(result.classes):
        rows.append({"epoch": epoch, **epoch_stats, "class_index": k, "class_name": name,
                     "n": int(clean.n_per_class[k]), "val_clean_accuracy": float(clean.accuracy_per_class[k]),
                     "val_pgd_accuracy": float(robust.accuracy_per_class[k])})
    rows.append({"epoch": epoch, **epoch_stats, "class_index": -1, "class_name": "all",
                 "n": int(len(result.labels)), "val_clean_accuracy": clean.accuracy,
                 "val_pgd_accuracy": robust.accuracy})
    return rows


def train(config: TrainConfig, out_dir: str | Path, *, data_dir: str | Path | None = None,
          progress: bool = True, log: Callable[[str], None] = print) -> Path:
    """Train per ``config`` and publish ``out_dir/{model.safetensors, model.json, train_log.csv}``.

    Everything is written to a staging directory first; ``out_dir`` is replaced
    only when training finished, so a failed run leaves an earlier one intact.
    Returns the path of the checkpoint's weights.
    """
    method_cls = METHODS.get(config.method).builder
    device = torch.device(config.device)
    torch.manual_seed(config.seed)  # weight init and dropout

    full_train = get_dataset(config.dataset, "train", root=data_dir)
    info = full_train.info
    eps = resolve_eps(config, info.threat_model.eps)
    train_set, val_set = train_val_split(full_train, config.val_fraction, seed=config.seed)
    if config.train_subset is not None:
        train_set = stratified_subset(train_set, config.train_subset, seed=config.seed)
    val_set = stratified_subset(val_set, config.val_size, seed=config.seed)
    loader = make_loader(train_set, config.batch_size, shuffle=True, seed=config.seed,
                         drop_last=len(train_set) > config.batch_size)
    val_loader = make_loader(val_set, 500)

    model = create_model(config.model, info, **config.model_kwargs).to(device)
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    method = method_cls(attack_steps=config.attack_steps, alpha=config.alpha, precision=config.precision)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.dim() <= 1 else decay).append(p)
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": config.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=config.lr, momentum=config.momentum, nesterov=True)
    steps_per_epoch = len(loader)
    total = steps_per_epoch * config.epochs
    factor = lr_multiplier(config.schedule, total, config.lr_milestones, config.lr_decay)
    warmup_steps = config.eps_warmup_epochs * steps_per_epoch

    rows: list[dict[str, Any]] = []
    step = 0
    with atomic_directory(out_dir) as stage:
        for epoch in range(1, config.epochs + 1):
            model.train()
            t0 = time.perf_counter()
            loss_sum, correct, seen = 0.0, 0, 0
            bar = tqdm(loader, desc=f"epoch {epoch}/{config.epochs}", disable=not progress, leave=False)
            for x, y in bar:
                x, y = fast_layout(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
                lr = config.lr * factor(step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                eps_now = eps * min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else eps
                seed = config.seed * 1_000_003 + step
                try:
                    loss, logits = method.loss(model, x, y, eps=eps_now, seed=seed)
                    if not torch.isfinite(loss):
                        raise NonFiniteError(f"loss is {float(loss)}")
                except NonFiniteError as exc:
                    raise NonFiniteError(
                        f"training diverged at epoch {epoch}, step {step} ({exc}); "
                        "try a lower --lr (nothing was written)") from None
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                loss_sum += float(loss.detach()) * len(y)
                correct += int((logits.argmax(1) == y).sum())
                seen += len(y)
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", lr=f"{lr:.3g}")
            train_seconds = time.perf_counter() - t0
            result = validate(model, val_loader, config, eps, list(info.classes), device)
            stats = {"lr": lr, "eps": eps_now, "train_loss": loss_sum / seen,
                     "train_accuracy": correct / seen, "seconds": round(train_seconds, 2)}
            rows.extend(log_rows(epoch, result, stats))
            pd.DataFrame(rows).to_csv(stage / "train_log.csv", index=False)
            clean, robust = rows[-1]["val_clean_accuracy"], rows[-1]["val_pgd_accuracy"]
            worst = min(r["val_pgd_accuracy"] for r in rows[-len(info.classes) - 1:-1])
            log(f"epoch {epoch}/{config.epochs}: loss {loss_sum / seen:.3f}, val clean {clean:.1%}, "
                f"val PGD {robust:.1%} (worst class {worst:.1%}), {train_seconds:.0f}s")
        model.eval()
        final = [r for r in rows if r["epoch"] == config.epochs]
        meta = {
            "model": config.model, "dataset": config.dataset, "classes": list(info.classes),
            "model_kwargs": dict(config.model_kwargs), "eps": eps, "seed": config.seed, "config": config.to_dict(),
            "metrics": {"val_clean_accuracy": final[-1]["val_clean_accuracy"],
                        "val_pgd_accuracy": final[-1]["val_pgd_accuracy"],
                        "val_pgd_accuracy_per_class": [r["val_pgd_accuracy"] for r in final[:-1]],
                        "val_clean_accuracy_per_class": [r["val_clean_accuracy"] for r in final[:-1]]},
            "train_size": len(train_set), "val_size": len(val_set),
        }
        save_checkpoint(stage / "model", model.to(memory_format=torch.contiguous_format), meta)
    return Path(out_dir) / "model.safetensors"
