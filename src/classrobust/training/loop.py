"""The one training loop: optimiser, schedule, bf16 autocast, per-class validation, model
selection, resume after a kill, and DistributedDataParallel under torchrun."""

from __future__ import annotations

import io
import shutil
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
from classrobust.distributed import init_from_env, is_main, local_device, world
from classrobust.errors import NonFiniteError, UsageError
from classrobust.evaluate import CLEAN
from classrobust.evaluate.sharded import evaluate_dataset
from classrobust.io import atomic_write_bytes, atomic_write_text, check_output_dir, replace_directory
from classrobust.models import create_model
from classrobust.training.classwise import ClasswiseTerms
from classrobust.training.config import TrainConfig
from classrobust.training.methods import METHODS
from classrobust.training.schedules import lr_multiplier

VAL_ATTACK = "pgd"
STATE = "train_state.pt"


def staging_dir(out_dir: Path) -> Path:
    """Where a run lives until it completes (and where ``--resume`` looks)."""
    return out_dir.parent / f".{out_dir.name}.partial"


def resolve_eps(config: TrainConfig, default_eps: float) -> float:
    return default_eps if config.eps is None else config.eps


def without_classes(ds, names: tuple[str, ...]):
    """``ds`` without the samples of the named classes."""
    unknown = [n for n in names if n not in ds.classes]
    if unknown:
        raise UsageError(f"cannot drop unknown class(es) {', '.join(map(repr, unknown))}; "
                         f"{ds.info.name} has: {', '.join(ds.classes)}")
    if len(set(names)) >= len(ds.classes) - 1:
        raise UsageError("dropping these classes leaves fewer than two to train on")
    dropped = torch.tensor([ds.classes.index(n) for n in names])
    return ds.subset(torch.nonzero(~torch.isin(ds.targets, dropped)).flatten())


def validate(model, val_set, config: TrainConfig, eps: float, classes: list[str], device):
    """Per-class clean and PGD accuracy on the validation split (never the test split)."""
    attacks = {}
    if eps > 0:
        attacks[VAL_ATTACK] = PGD(model, eps=eps, steps=config.val_attack_steps, seed=config.seed,
                                  precision=config.precision, mode="best")
    return evaluate_dataset(model, val_set, attacks, batch_size=500, classes=classes, device=device,
                            progress=False)


def log_rows(epoch: int, result, epoch_stats: dict[str, Any],
             per_class: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Long-format log rows: one per class plus one ``all`` row (class_index -1).

    ``per_class`` adds columns of per-class values (K,) to the class rows (the levers' terms).
    """
    clean = result.attacks[CLEAN]
    robust = result.attacks.get(VAL_ATTACK, clean)
    rows = []
    for k, name in enumerate(result.classes):
        extra = {key: float(v[k]) for key, v in (per_class or {}).items()}
        rows.append({"epoch": epoch, **epoch_stats, "class_index": k, "class_name": name,
                     "n": int(clean.n_per_class[k]), "val_clean_accuracy": float(clean.accuracy_per_class[k]),
                     "val_pgd_accuracy": float(robust.accuracy_per_class[k]), **extra})
    rows.append({"epoch": epoch, **epoch_stats, "class_index": -1, "class_name": "all",
                 "n": int(len(result.labels)), "val_clean_accuracy": clean.accuracy,
                 "val_pgd_accuracy": robust.accuracy})
    return rows


def selection_score(rows: list[dict[str, Any]], select: str) -> float:
    """The epoch's score under ``select`` from its log rows (``all`` row last)."""
    if select == "avg":
        return rows[-1]["val_pgd_accuracy"]
    if select == "worst-class":  # classes without validation samples (dropped ones) do not count
        return min(r["val_pgd_accuracy"] for r in rows[:-1] if r["n"] > 0)
    return float(rows[-1]["epoch"])  # "last": the latest epoch wins


def _save_state(path: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def _load_state(path: Path, config: TrainConfig) -> dict[str, Any]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    differing = config.differences(state["config"])
    if differing:
        raise UsageError(f"cannot resume {path.parent}: the config differs in {', '.join(differing)} "
                         "(rerun with the same options, or without --resume to start over)")
    return state


def train(config: TrainConfig, out_dir: str | Path, *, data_dir: str | Path | None = None,
          progress: bool = True, log: Callable[[str], None] = print, resume: bool = False,
          download: bool = False) -> Path:
    """Train per ``config`` and publish ``out_dir/{model.safetensors, model.json, train_log.csv}``.

    The run lives in ``.NAME.partial`` beside ``out_dir`` and saves its full state there after
    every epoch (model, optimiser, RNG, logs, best epoch so far); ``out_dir`` is replaced only
    when training finished, so a failed run leaves an earlier one intact, and ``resume=True``
    continues a killed run from its last completed epoch. Under torchrun the model is wrapped
    in DistributedDataParallel and every global batch is split across the processes; only
    rank 0 writes. Returns the path of the checkpoint's weights.
    """
    method_entry = METHODS.get(config.method)
    device = torch.device(config.device)
    distributed = init_from_env(device)
    device = local_device(device)
    rank, size = world()
    main = rank == 0
    out_dir = check_output_dir(out_dir)
    stage = staging_dir(out_dir)

    full_train = get_dataset(config.dataset, "train", root=data_dir, download=download)
    info = full_train.info
    classes = list(info.classes)
    eps = resolve_eps(config, info.threat_model.eps)
    train_set, val_set = train_val_split(full_train, config.val_fraction, seed=config.seed)
    if config.drop_classes:
        train_set, val_set = (without_classes(s, config.drop_classes) for s in (train_set, val_set))
    if config.train_subset is not None:
        train_set = stratified_subset(train_set, config.train_subset, seed=config.seed)
    val_set = stratified_subset(val_set, config.val_size, seed=config.seed)
    drop_last = len(train_set) > config.batch_size
    steps_per_epoch = len(make_loader(train_set, config.batch_size, drop_last=drop_last))
    if config.batch_size < size:
        raise UsageError(f"batch size {config.batch_size} is smaller than the {size} processes")

    torch.manual_seed(config.seed)  # weight init and dropout
    model = create_model(config.model, info, **config.model_kwargs).to(device)
    if device.type == "cpu":  # oneDNN trains convolutions faster in channels-last (24 s vs 30 s per demo epoch)
        model = model.to(memory_format=torch.channels_last)
    net = model
    if config.compile:  # the training forward/backward and the inner attacks run compiled
        model = torch.compile(model)
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    method_kwargs = {"beta": config.beta} if "beta" in METHODS.valid_kwargs(config.method) else {}
    method = method_entry.builder(attack_steps=config.attack_steps, alpha=config.alpha,
                                  precision=config.precision, **method_kwargs)
    levers = ClasswiseTerms(config.classwise, len(classes), config.method, config.select)
    decay, no_decay = [], []
    for _, p in net.named_parameters():
        (no_decay if p.dim() <= 1 else decay).append(p)
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": config.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=config.lr, momentum=config.momentum, nesterov=True)
    total = steps_per_epoch * config.epochs
    factor = lr_multiplier(config.schedule, total, config.lr_milestones, config.lr_decay,
                           config.lr_warmup_epochs * steps_per_epoch)
    eps_warmup_steps = config.eps_warmup_epochs * steps_per_epoch

    rows: list[dict[str, Any]] = []
    step, start_epoch = 0, 1
    best: dict[str, Any] = {"score": float("-inf"), "epoch": 0, "state": None}
    state = None
    if resume and (stage / STATE).is_file():
        state = _load_state(stage / STATE, config)
    elif resume:
        log(f"no interrupted run at {stage}; starting from the beginning")
    if state is not None:
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        rows, step, start_epoch, best = state["rows"], state["step"], state["epoch"] + 1, state["best"]
        levers.load_state(state.get("classwise", []))
        log(f"resuming {out_dir} after epoch {state['epoch']}")
    elif main:
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
        atomic_write_text(stage / "config.json", pd.Series(config.to_dict()).to_json(indent=2))

    for epoch in range(start_epoch, config.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        loss_sum = 0.0
        class_correct = torch.zeros(len(classes), dtype=torch.long)  # on the trained-on (adversarial) inputs
        class_seen = torch.zeros(len(classes), dtype=torch.long)
        terms_used = levers.per_class() if levers else None
        # the order depends on (seed, epoch) only, so a resumed epoch sees the same batches
        loader = make_loader(train_set, config.batch_size, shuffle=True, seed=config.seed * 100_003 + epoch,
                             drop_last=drop_last)
        bar = tqdm(loader, desc=f"epoch {epoch}/{config.epochs}", disable=not (progress and main), leave=False)
        for x, y in bar:
            if distributed:  # this process's share of the global batch
                x, y = x[rank::size], y[rank::size]
            x, y = fast_layout(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
            lr = config.lr * factor(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            eps_now = eps * min(1.0, (step + 1) / eps_warmup_steps) if eps_warmup_steps > 0 else eps
            seed = config.seed * 1_000_003 + step * 7 + rank
            try:
                extra = {"terms": levers.batch(y)} if levers else {}
                loss, logits = method.loss(model, x, y, eps=eps_now, seed=seed, **extra)
                if not torch.isfinite(loss):
                    raise NonFiniteError(f"loss is {float(loss.detach())}")
            except NonFiniteError as exc:
                kept = f"; epoch {epoch - 1} is kept in {stage} for --resume" if epoch > 1 else ""
                raise NonFiniteError(f"training diverged at epoch {epoch}, step {step} ({exc}){kept}; "
                                     "try a lower --lr") from None
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if levers:
                levers.after_step(net)
            step += 1
            loss_sum += float(loss.detach()) * len(y)
            hit = logits.argmax(1) == y
            class_correct += torch.bincount(y[hit].cpu(), minlength=len(classes))
            class_seen += torch.bincount(y.cpu(), minlength=len(classes))
            if progress and main:
                seen = int(class_seen.sum())
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{int(class_correct.sum()) / seen:.3f}",
                                lr=f"{lr:.3g}")
        train_seconds = time.perf_counter() - t0
        if distributed:  # the epoch's statistics over every process's shard; levers update from these
            counts = torch.stack([class_correct, class_seen]).to(device)
            torch.distributed.all_reduce(counts)
            class_correct, class_seen = counts.cpu()
            summed = torch.tensor([loss_sum], dtype=torch.float64, device=device)
            torch.distributed.all_reduce(summed)
            loss_sum = float(summed)
        correct, seen = int(class_correct.sum()), int(class_seen.sum())
        with np.errstate(invalid="ignore", divide="ignore"):
            train_robust = (class_correct / class_seen).numpy()  # on the trained-on inputs
        result = validate(net, val_set, config, eps, classes, device)
        stats = {"lr": lr, "eps": eps_now, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
                 "seconds": round(train_seconds, 2)}
        per_class = {"train_accuracy": train_robust, "n_train": class_seen.numpy(), **(terms_used or {})}
        epoch_rows = log_rows(epoch, result, stats, per_class)
        if levers:
            levers.end_epoch(epoch=epoch, train_robust=train_robust, model=net,
                             val_clean=result.attacks[CLEAN].accuracy_per_class,
                             val_robust=result.attacks.get(VAL_ATTACK, result.attacks[CLEAN]).accuracy_per_class)
        rows.extend(epoch_rows)
        score = selection_score(epoch_rows, config.select)
        if score > best["score"]:
            best = {"score": score, "epoch": epoch,
                    "state": None if config.select == "last" else
                    {k: v.detach().clone() for k, v in net.state_dict().items()}}
        if main:
            pd.DataFrame(rows).to_csv(stage / "train_log.csv", index=False)
            _save_state(stage / STATE, {"config": config.to_dict(), "epoch": epoch, "step": step,
                                        "model": net.state_dict(), "optimizer": optimizer.state_dict(),
                                        "rng": torch.get_rng_state(), "rows": rows, "best": best,
                                        "classwise": levers.state()})
            clean, robust = epoch_rows[-1]["val_clean_accuracy"], epoch_rows[-1]["val_pgd_accuracy"]
            worst = min(r["val_pgd_accuracy"] for r in epoch_rows[:-1] if r["n"] > 0)
            log(f"epoch {epoch}/{config.epochs}: loss {loss_sum / seen:.3f}, val clean {clean:.1%}, "
                f"val PGD {robust:.1%} (worst class {worst:.1%}), {train_seconds:.0f}s")

    if best["state"] is not None:
        net.load_state_dict(best["state"])
    selected = best["epoch"] if config.select != "last" else config.epochs
    net.eval()
    final = [r for r in rows if r["epoch"] == selected]
    averaged = levers.final_state_dict() if levers else None
    if averaged is not None:  # fawa: the run ends with the admitted weight average, validated again
        current = net.state_dict()
        net.load_state_dict({k: v.to(current[k].dtype) for k, v in averaged.items()})
        final = log_rows(config.epochs, validate(net, val_set, config, eps, classes, device), {})
    if main:
        meta = {
            "model": config.model, "dataset": config.dataset, "classes": classes,
            "model_kwargs": dict(config.model_kwargs), "eps": eps, "seed": config.seed, "config": config.to_dict(),
            "selected_epoch": selected, "processes": size,
            "metrics": {"val_clean_accuracy": final[-1]["val_clean_accuracy"],
                        "val_pgd_accuracy": final[-1]["val_pgd_accuracy"],
                        "val_pgd_accuracy_per_class": [r["val_pgd_accuracy"] for r in final[:-1]],
                        "val_clean_accuracy_per_class": [r["val_clean_accuracy"] for r in final[:-1]]},
            "train_size": len(train_set), "val_size": len(val_set),
        }
        if levers:
            meta["classwise"] = {"spec": config.classwise, "final_terms": {k: v.tolist() for k, v in
                                                                           levers.per_class().items()}}
            if averaged is not None:
                meta["classwise"]["fawa_admitted_epochs"] = next(
                    lv.admitted for lv in levers.levers if lv.name == "fawa")
        save_checkpoint(stage / "model", net.to(memory_format=torch.contiguous_format), meta)
        (stage / STATE).unlink()
        (stage / "config.json").unlink(missing_ok=True)
        replace_directory(stage, out_dir)
    if distributed:
        torch.distributed.barrier()
    return Path(out_dir) / "model.safetensors"
