"""The one training loop: optimiser, schedule, bf16 autocast, per-class validation, model
selection, resume after a kill, and DistributedDataParallel under torchrun."""

from __future__ import annotations

import io
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm  # not tqdm.auto: its asyncio class calls iter() on the loader when built (#17)

from classrobust.attacks.pgd import PGD
from classrobust.checkpoint import save_checkpoint
from classrobust.data import make_loader, run_splits
from classrobust.defenses.levers import ClasswiseTerms
from classrobust.errors import NonFiniteError, TrainingDivergedError, UsageError
from classrobust.evaluate.classwise import progress_lines
from classrobust.evaluate.sharded import evaluate_dataset
from classrobust.io import atomic_write_bytes, atomic_write_text, check_writable, replace_directory
from classrobust.models import check_model_name, create_model
from classrobust.results import CLEAN
from classrobust.runtime import (Runtime, any_rank, derive_seed, fast_layout, set_deterministic, set_tf32,
                                 setup_device, world)
from classrobust.training.config import TrainConfig
from classrobust.training.methods import METHODS
from classrobust.training.schedules import lr_multiplier

VAL_ATTACK = "pgd"
STATE = "train_state.pt"
#: steps between checks that the loss is finite (each check is one host synchronisation)
CHECK_EVERY = 25


def staging_dir(out_dir: Path) -> Path:
    """Where a run lives until it completes (and where ``--resume`` looks)."""
    return out_dir.parent / f".{out_dir.name}.partial"


def resolve_eps(config: TrainConfig, default_eps: float) -> float:
    return default_eps if config.eps is None else config.eps


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
                         "(rerun with the same options to continue, or with --overwrite instead of --resume to discard it and start "
                         "over)")
    return state


@dataclass
class _Run:
    """What :func:`train` prepares once: data, model (and its wrappers), objective, levers, optimiser."""

    config: TrainConfig
    out_dir: Path
    stage: Path
    device: torch.device
    distributed: bool
    rank: int
    size: int
    classes: list[str]
    eps: float
    train_set: Any
    val_set: Any
    drop_last: bool
    steps_per_epoch: int
    net: torch.nn.Module  # the bare network (weights, state dicts, validation)
    model: torch.nn.Module  # what the training step calls: compiled and/or DDP-wrapped ``net``
    method: Any
    levers: ClasswiseTerms
    optimizer: torch.optim.Optimizer
    factor: Callable[[int], float]
    eps_warmup_steps: float

    @property
    def main(self) -> bool:
        return self.rank == 0


def use_sync_batchnorm(net: torch.nn.Module, device: torch.device, distributed: bool) -> bool:
    """BatchNorm statistics synchronised across processes under torchrun on GPUs (each process would
    otherwise normalise with the statistics of its own share of the batch). Not on the CPU, where
    torch's SyncBatchNorm does not run; there each process keeps its own statistics."""
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    return distributed and device.type == "cuda" and has_bn


def wrap_model(net: torch.nn.Module, device: torch.device, *, distributed: bool, compile: bool) -> torch.nn.Module:
    """What the training step calls: ``net`` in DistributedDataParallel under torchrun, then compiled
    (the training forward/backward and the inner attacks). Compiling after the DDP wrap is PyTorch's
    pattern: DDP's graph optimizer then splits the compiled graph at the gradient buckets, so
    gradient communication overlaps the backward pass."""
    model = net
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if compile:
        model = torch.compile(model)
    return model


def check_run_dir(out_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse, before any work, to replace an existing run or discard an interrupted one unasked."""
    if overwrite:
        return
    stage = staging_dir(out_dir)
    if (stage / STATE).is_file() and not resume:
        raise UsageError(f"an interrupted run of {out_dir} is saved in {stage}; pass --resume to continue it, "
                         "or --overwrite to start over")
    if not (stage / STATE).is_file() and out_dir.is_dir() and any(out_dir.iterdir()):
        raise UsageError(f"{out_dir} already exists and is not empty; pass --overwrite to replace it (with "
                         "everything inside, e.g. its eval/), or choose another --out")


def _prepare(config: TrainConfig, out_dir: str | Path, data_dir, download: bool) -> _Run:
    method_entry = METHODS.get(config.method_name)
    check_model_name(config.model)  # a bad name fails before any data is read
    device, distributed = setup_device(config.device)
    rank, size = world()
    out_dir = Path(out_dir)  # checked by train() before any work
    train_set, val_set = run_splits(config, root=data_dir, download=download)
    info = train_set.info
    drop_last = len(train_set) > config.batch_size
    steps_per_epoch = len(make_loader(train_set, config.batch_size, drop_last=drop_last))
    if config.batch_size < size:
        raise UsageError(f"batch size {config.batch_size} is smaller than the {size} processes")

    set_tf32(config.allow_tf32)
    set_deterministic(config.deterministic)
    if device.type == "cuda" and not config.deterministic:  # fixed shapes: let cuDNN pick its fastest kernels
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(config.seed)  # weight init and dropout
    net = create_model(config.model, info, **config.model_kwargs).to(device)
    # channels-last convolutions: oneDNN on the CPU (24 s vs 30 s per demo epoch), tensor cores on GPUs
    # (PGD-10 AT epoch of PreAct ResNet-18 on an H200: 9.9 s vs 11.6 s, benchmarks/README.md)
    net = net.to(memory_format=torch.channels_last)
    if use_sync_batchnorm(net, device, distributed):
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    model = wrap_model(net, device, distributed=distributed, compile=config.compile)
    method = METHODS.build(config.method_name, attack_steps=config.attack_steps, alpha=config.alpha,
                           precision=config.precision, **config.method_kwargs)
    levers = ClasswiseTerms(config.classwise, info.num_classes, method=config.method_name,
                            supports_levers=method_entry.builder.supports_levers, select=config.select,
                            epochs=config.epochs)
    decay, no_decay = [], []
    for _, p in net.named_parameters():
        (no_decay if p.dim() <= 1 else decay).append(p)
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": config.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=config.lr, momentum=config.momentum, nesterov=True)
    factor = lr_multiplier(config.schedule, steps_per_epoch * config.epochs, config.lr_milestones,
                           config.lr_decay, config.lr_warmup_epochs * steps_per_epoch)
    return _Run(config, out_dir, staging_dir(out_dir), device, distributed, rank, size, list(info.classes),
                resolve_eps(config, info.threat_model.eps), train_set, val_set, drop_last, steps_per_epoch, net,
                model, method, levers, optimizer, factor, config.eps_warmup_epochs * steps_per_epoch)


def _restore(run: _Run, resume: bool, log) -> tuple[list[dict[str, Any]], int, int, dict[str, Any]]:
    """(log rows, step, first epoch to run, best epoch so far): from the staged state when resuming,
    else a fresh staging directory."""
    rows: list[dict[str, Any]] = []
    best: dict[str, Any] = {"score": float("-inf"), "epoch": 0, "state": None}
    state = None
    if resume and (run.stage / STATE).is_file():
        state = _load_state(run.stage / STATE, run.config)
    elif resume:
        log(f"no interrupted run at {run.stage}; starting from the beginning")
    if state is not None:
        run.net.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") is not None and run.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], run.device)
        run.levers.load_state(state.get("classwise", []))
        log(f"resuming {run.out_dir} after epoch {state['epoch']}")
        return state["rows"], state["step"], state["epoch"] + 1, state["best"]
    if run.main:
        shutil.rmtree(run.stage, ignore_errors=True)
        run.stage.mkdir(parents=True)
        atomic_write_text(run.stage / "config.json", pd.Series(run.config.to_dict()).to_json(indent=2))
    return rows, 0, 1, best


def _train_epoch(run: _Run, epoch: int, step: int,
                 progress: bool) -> tuple[int, dict[str, Any], dict[str, Any], np.ndarray | None]:
    """One pass over the training set; returns (step, epoch statistics, per-class training numbers,
    the per-class mean softmax of the trained-on inputs (K, K) when a lever asked for it, else None)."""
    config, k = run.config, len(run.classes)
    run.model.train()
    t0 = time.perf_counter()
    # the epoch's statistics stay on the device and are read once at its end (on a GPU every
    # read is a host synchronisation); the loss's finiteness is checked every CHECK_EVERY steps
    loss_sum = torch.zeros((), dtype=torch.float64, device=run.device)
    class_correct = torch.zeros(k, dtype=torch.long, device=run.device)  # on the trained-on (adversarial) inputs
    class_seen = torch.zeros(k, dtype=torch.long, device=run.device)
    nonfinite = torch.zeros((), dtype=torch.bool, device=run.device)
    # row k: summed softmax of the trained-on inputs of class k (DAFA's class similarity)
    prob_sum = (torch.zeros(k, k, dtype=torch.float64, device=run.device)
                if run.levers and run.levers.needs_train_probs(epoch, config.epochs) else None)
    terms_used = run.levers.per_class() if run.levers else None
    # the levers' per-class terms change only between epochs: copied to the device once
    terms_table = {key: torch.as_tensor(v, dtype=torch.float32).to(run.device) for key, v in terms_used.items()
                   if not (key == "eps_scale" and np.all(v == 1))} if terms_used else None
    # the order depends on (seed, epoch) only, so a resumed epoch sees the same batches
    loader = make_loader(run.train_set, config.batch_size, shuffle=True, seed=derive_seed(config.seed, "epoch_order", epoch),
                         drop_last=run.drop_last, shard=(run.rank, run.size) if run.distributed else None,
                         pin_memory=run.device.type == "cuda", num_workers=config.workers)
    # a bar on a terminal; elsewhere (a log file, CI) a line per tenth of the epoch, as evaluation prints
    bar = tqdm(loader, desc=f"epoch {epoch}/{config.epochs}", disable=None if (progress and run.main) else True,
               leave=False)
    batches = (progress_lines(loader, len(loader), f"epoch {epoch}/{config.epochs}")
               if progress and run.main and not sys.stderr.isatty() else bar)
    lr = eps_now = 0.0
    for batch_index, (x, y) in enumerate(batches):
        x, y = fast_layout(x.to(run.device, non_blocking=True)), y.to(run.device, non_blocking=True)
        lr = config.lr * run.factor(step)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        eps_now = run.eps * min(1.0, (step + 1) / run.eps_warmup_steps) if run.eps_warmup_steps > 0 else run.eps
        seed = derive_seed(config.seed, "training_step", step, run.rank)
        try:
            extra = {"terms": {key: t[y] for key, t in terms_table.items()}} if terms_table else {}
            loss, logits = run.method.loss(run.model, x, y, eps=eps_now, seed=seed, **extra)
        except NonFiniteError as exc:
            _diverged(run, epoch, step, str(exc))
        nonfinite |= ~torch.isfinite(loss.detach())
        if (batch_index + 1) % CHECK_EVERY == 0 and any_rank(nonfinite):
            _diverged(run, epoch, step, "non-finite loss")  # every process stops at the same step
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip is not None:  # after DDP's all-reduce: every process clips the same gradient
            torch.nn.utils.clip_grad_norm_(run.net.parameters(), config.grad_clip)
        run.optimizer.step()
        if run.levers:
            run.levers.after_step(run.net)
        step += 1
        loss_sum += loss.detach().double() * len(y)
        hit = logits.argmax(1) == y
        class_correct += torch.bincount(y, weights=hit.to(torch.float32), minlength=k).long()
        class_seen += torch.bincount(y, minlength=k)
        if prob_sum is not None:
            prob_sum.index_add_(0, y, logits.detach().float().softmax(1).double())
        if progress and run.main and batch_index % 10 == 0:  # a terminal's progress bar: a read every 10 steps
            seen = int(class_seen.sum())
            bar.set_postfix(loss=f"{float(loss_sum) / seen:.3f}", acc=f"{int(class_correct.sum()) / seen:.3f}",
                            lr=f"{lr:.3g}")
    if any_rank(nonfinite):
        _diverged(run, epoch, step, "non-finite loss")
    train_seconds = time.perf_counter() - t0
    counts = torch.stack([class_correct, class_seen])
    if run.distributed:  # the epoch's statistics over every process's shard; levers update from these
        torch.distributed.all_reduce(counts)
        torch.distributed.all_reduce(loss_sum)
        if prob_sum is not None:
            torch.distributed.all_reduce(prob_sum)
    class_correct, class_seen = counts.cpu()
    loss_sum = float(loss_sum)
    correct, seen = int(class_correct.sum()), int(class_seen.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        train_robust = (class_correct / class_seen).numpy()  # on the trained-on inputs
    stats = {"lr": lr, "eps": eps_now, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
             "seconds": round(train_seconds, 2)}
    per_class = {"train_accuracy": train_robust, "n_train": class_seen.numpy(), **(terms_used or {})}
    train_probs = None
    if prob_sum is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            train_probs = prob_sum.cpu().numpy() / class_seen.numpy()[:, None]  # NaN rows: no samples
    return step, stats, per_class, train_probs


def _diverged(run: _Run, epoch: int, step: int, what: str):
    kept = f"; epoch {epoch - 1} is kept in {run.stage} for --resume" if epoch > 1 else ""
    raise TrainingDivergedError(f"training diverged at epoch {epoch}, by step {step} ({what}){kept}; "
                                "try a lower --lr or --grad-clip", epoch=epoch, step=step) from None


def _publish(run: _Run, rows: list[dict[str, Any]], best: dict[str, Any]) -> list[dict[str, Any]]:
    """Load the selected (or lever-chosen) weights into the network and, on rank 0, write the
    checkpoint and replace ``out_dir`` with the staged run; returns the published weights' log rows."""
    config = run.config
    if best["state"] is not None:
        run.net.load_state_dict(best["state"])
    selected = best["epoch"] if config.select != "last" else config.epochs
    run.net.eval()
    final = [r for r in rows if r["epoch"] == selected]
    chosen = run.levers.final_weights() if run.levers else None
    if chosen is not None:  # a lever picked the final weights (weight averaging): validate them again
        weights, _ = chosen
        current = run.net.state_dict()
        run.net.load_state_dict({k: v.to(device=current[k].device, dtype=current[k].dtype)
                                 for k, v in weights.items()})
        final = log_rows(config.epochs, validate(run.net, run.val_set, config, run.eps, run.classes, run.device), {})
    if not run.main:
        return final
    meta = {
        "model": config.model, "dataset": config.dataset, "classes": run.classes,
        "model_kwargs": dict(config.model_kwargs), "eps": run.eps, "seed": config.seed, "config": config.to_dict(),
        "selected_epoch": selected, "processes": run.size, "device": str(run.device), "tf32": config.allow_tf32,
        "metrics": {"val_clean_accuracy": final[-1]["val_clean_accuracy"],
                    "val_pgd_accuracy": final[-1]["val_pgd_accuracy"],
                    "val_pgd_accuracy_per_class": [r["val_pgd_accuracy"] for r in final[:-1]],
                    "val_clean_accuracy_per_class": [r["val_clean_accuracy"] for r in final[:-1]]},
        "train_size": len(run.train_set), "val_size": len(run.val_set),
    }
    if run.levers:
        meta["classwise"] = {"spec": config.classwise, "final_terms": {k: v.tolist() for k, v in
                                                                       run.levers.per_class().items()},
                             **(chosen[1] if chosen is not None else {})}
    save_checkpoint(run.stage / "model", run.net.to(memory_format=torch.contiguous_format), meta)
    (run.stage / STATE).unlink()
    (run.stage / "config.json").unlink(missing_ok=True)
    replace_directory(run.stage, run.out_dir)
    return final


def _resolve_precision(config: TrainConfig, log: Callable[[str], None]) -> TrainConfig:
    """``precision="auto"`` made concrete for this machine (bf16 only where it is native: emulated bf16
    is about 5x slower than fp32 on CPUs without it), and the precision said either way."""
    from dataclasses import replace

    from classrobust.runtime import default_precision, resolve_device
    from classrobust.training.config import AUTO

    if config.precision != AUTO:
        log(f"precision: {config.precision}")
        return config
    chosen = default_precision(resolve_device(config.device))
    log(f"precision: {chosen} (auto: {'bf16 is native here' if chosen == 'bf16' else 'no native bf16 here'})")
    return replace(config, precision=chosen)


def train(config: TrainConfig, out_dir: str | Path, *, runtime: Runtime | None = None, resume: bool = False,
          overwrite: bool = False, tensorboard: str | Path | None = None) -> Path:
    """Train per ``config`` and publish ``out_dir/{model.safetensors, model.json, train_log.csv}``.

    The run lives in ``.NAME.partial`` beside ``out_dir`` and saves its full state there after
    every epoch (model, optimiser, RNG, logs, best epoch so far); ``out_dir`` is replaced only
    when training finished, so a failed run leaves an earlier one intact, and ``resume=True``
    continues a killed run from its last completed epoch. Under torchrun the model is wrapped
    in DistributedDataParallel and every global batch is split across the processes; only
    rank 0 writes. Returns the path of the checkpoint's weights.

    An existing non-empty ``out_dir`` is replaced only with ``overwrite=True``; an interrupted run
    staged for ``out_dir`` is continued with ``resume=True`` or discarded with ``overwrite=True``,
    never silently.

    ``tensorboard``: a folder for TensorBoard event files (per-class validation curves and lever
    terms per epoch, the final per-class figure; :mod:`classrobust.integrations.tensorboard`).
    ``runtime``: data folder, download, progress, log (:class:`~classrobust.runtime.Runtime`); its
    device is used where ``config.device`` is None (the config's device is saved with the run).
    """
    runtime = runtime or Runtime()
    data_dir, download, progress, log = runtime.data_dir, runtime.download, runtime.progress, runtime.log
    if config.device is None and runtime.device is not None:
        from dataclasses import replace

        config = replace(config, device=runtime.device)
    check_run_dir(check_writable(out_dir), resume=resume, overwrite=overwrite)
    if tensorboard is not None:
        from classrobust.integrations.tensorboard import TensorBoardLog, check_tensorboard

        check_tensorboard(tensorboard)
    config = _resolve_precision(config, log)
    run = _prepare(config, out_dir, data_dir, download)
    rows, step, start_epoch, best = _restore(run, resume, log)
    board = TensorBoardLog(tensorboard, first_epoch=start_epoch) if tensorboard is not None and run.main else None
    for epoch in range(start_epoch, config.epochs + 1):
        step, stats, per_class, train_probs = _train_epoch(run, epoch, step, progress)
        result = validate(run.net, run.val_set, config, run.eps, run.classes, run.device)
        epoch_rows = log_rows(epoch, result, stats, per_class)
        if run.levers:
            run.levers.end_epoch(epoch=epoch, epochs=config.epochs, train_robust=per_class["train_accuracy"],
                                 model=run.net, train_probs=train_probs,
                                 val_clean=result.attacks[CLEAN].accuracy_per_class,
                                 val_robust=result.attacks.get(VAL_ATTACK, result.attacks[CLEAN]).accuracy_per_class)
        rows.extend(epoch_rows)
        score = selection_score(epoch_rows, config.select)
        if score > best["score"]:
            best = {"score": score, "epoch": epoch,
                    "state": None if config.select == "last" else
                    {k: v.detach().clone() for k, v in run.net.state_dict().items()}}
        if board is not None:
            board.epoch(epoch_rows)
        if run.main:
            pd.DataFrame(rows).to_csv(run.stage / "train_log.csv", index=False)
            _save_state(run.stage / STATE, {"config": config.to_dict(), "epoch": epoch, "step": step,
                                            "model": run.net.state_dict(), "optimizer": run.optimizer.state_dict(),
                                            "rng": torch.get_rng_state(), "rows": rows, "best": best,
                                            "cuda_rng": torch.cuda.get_rng_state(run.device)
                                            if run.device.type == "cuda" else None,
                                            "classwise": run.levers.state()})
            clean, robust = epoch_rows[-1]["val_clean_accuracy"], epoch_rows[-1]["val_pgd_accuracy"]
            worst = min(r["val_pgd_accuracy"] for r in epoch_rows[:-1] if r["n"] > 0)
            log(f"epoch {epoch}/{config.epochs}: loss {stats['train_loss']:.3f}, val clean {clean:.1%}, "
                f"val PGD {robust:.1%} (worst class {worst:.1%}), {stats['seconds']:.0f}s")
    final = _publish(run, rows, best)
    if board is not None:
        selected = final[-1]["epoch"] if final else config.epochs
        board.final(final, f"{config.method}{' ' + config.classwise if config.classwise else ''}, {config.dataset}, "
                           f"seed {config.seed}, eps {run.eps:.4g}: epoch {selected} weights, validation "
                           f"PGD-{config.val_attack_steps}")
        board.close()
    if run.distributed:
        torch.distributed.barrier()
    return Path(out_dir) / "model.safetensors"
