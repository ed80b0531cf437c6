"""What the CLI's commands do, once arguments are parsed: build, call, print."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from classrobust.errors import CheckpointError, UsageError
from classrobust.io import check_output_dir


def resolve_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("device cuda requested but CUDA is not available")
    return device


def default_precision(device: torch.device) -> str:
    """bf16 where the hardware runs it natively (AVX-512 BF16 / AMX on CPU, Ampere+ on GPU)."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    try:
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    except (AttributeError, RuntimeError):
        return "fp32"


# -- train ----------------------------------------------------------------------
def run_train(args) -> Path:
    from classrobust.training import TrainConfig, train

    device = resolve_device(args.device)
    check_output_dir(args.out)
    config = TrainConfig(
        dataset=args.dataset, model=args.model, method=args.method, classwise=args.classwise,
        eps=args.eps, alpha=args.alpha,
        attack_steps=args.attack_steps, eps_warmup_epochs=args.eps_warmup_epochs, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, schedule=args.schedule,
        lr_warmup_epochs=args.lr_warmup_epochs, beta=args.beta, select=args.select, compile=args.compile,
        val_size=args.val_size, train_subset=args.train_subset,
        drop_classes=tuple(n.strip() for n in args.drop_classes.split(",") if n.strip()),
        precision=args.precision or default_precision(device), seed=args.seed, device=str(device))
    _check_names(config)
    from classrobust.distributed import is_main

    path = train(config, args.out, data_dir=args.data_dir, progress=not args.no_progress, resume=args.resume,
                 download=args.download)
    if is_main():
        print(f"checkpoint: {path}")
        print(f"training log: {Path(args.out) / 'train_log.csv'}")
    return path


def _check_names(config) -> None:
    from classrobust.data import get_dataset_info
    from classrobust.models import MODELS
    from classrobust.training import METHODS

    get_dataset_info(config.dataset)
    MODELS.get(config.model)
    METHODS.get(config.method)


# -- eval -----------------------------------------------------------------------
def _valid(name: str) -> list[str]:
    from classrobust.attacks import ATTACKS

    return ATTACKS.valid_kwargs(name)


def build_attacks(spec: str, model, *, eps: float, steps: int | None, alpha: float | None,
                  seed: int, precision: str, mode: str = "best",
                  overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Attacks from a CLI spec; global options apply where an attack takes them, per-attack ones win.

    ``overrides`` replaces the per-attack parameters parsed from ``spec``.
    """
    from classrobust.attacks import ATTACKS, create_attack, parse_attack_specs

    attacks = {}
    parsed = parse_attack_specs(spec)
    if overrides is not None:
        parsed = [(name, overrides.get(name, params)) for name, params in parsed]
    for name, overrides_ in parsed:
        valid = ATTACKS.valid_kwargs(name)
        kwargs: dict[str, Any] = {"eps": eps, "seed": seed, "precision": precision}
        if steps is not None and "steps" in valid:
            kwargs["steps"] = steps
        if alpha is not None and "alpha" in valid:
            kwargs["alpha"] = alpha
        if "mode" in valid:
            kwargs["mode"] = mode
        kwargs.update(overrides_)
        attacks[name] = create_attack(name, model, **kwargs)
    return attacks


def evaluate_checkpoint(checkpoint: Path | None, out: Path | None, *, attacks: str, eps: float | None = None,
                        steps: int | None = None, alpha: float | None = None, precision: str = "fp32",
                        mode: str = "best",
                        batch_size: int = 256, seed: int = 0, limit: int | None = None, subset_seed: int = 0,
                        device: str | None = None, data_dir: Path | None = None, download: bool = False,
                        progress: bool = True, sanity: bool = False, sanity_queries: int = 1000,
                        report: bool = True, model_name: str | None = None, dataset: str | None = None,
                        weights: Path | None = None, normalize: bool = False,
                        extra_meta: dict[str, Any] | None = None):
    from classrobust.checkpoint import load_checkpoint
    from classrobust.data import get_dataset, stratified_subset
    from classrobust.distributed import init_from_env, is_main, local_device
    from classrobust.evaluate.sharded import evaluate_dataset

    if batch_size < 1:
        raise UsageError(f"batch size must be >= 1, got {batch_size}")
    if checkpoint is None and (model_name is None or dataset is None):
        raise UsageError("evaluate a --checkpoint, or a --model with its --dataset")
    if checkpoint is not None:
        default_out = Path(checkpoint).parent / "eval"
    else:
        default_out = (Path(weights).parent if weights else Path("runs")) / "eval"
    out = Path(out) if out is not None else default_out
    check_output_dir(out)
    dev = resolve_device(device)
    init_from_env(dev)
    dev = local_device(dev)
    if checkpoint is not None:
        model, meta = load_checkpoint(checkpoint, map_location=dev)
    else:
        from classrobust.data import get_dataset_info
        from classrobust.models import create_model

        info = get_dataset_info(dataset)
        model = create_model(model_name, info, weights=str(weights) if weights else None,
                             normalize=normalize).to(dev).eval()
        meta = {"model": model_name, "dataset": dataset, "classes": list(info.classes),
                "weights": str(weights) if weights else None}
    test = get_dataset(meta["dataset"], "test", root=data_dir, download=download)
    if list(test.classes) != list(meta["classes"]):
        raise CheckpointError(f"{checkpoint} was trained on classes {meta['classes']}, "
                              f"but dataset {meta['dataset']!r} has {test.classes}")
    if limit is not None:
        test = stratified_subset(test, limit, seed=subset_seed)
    eps = eps if eps is not None else meta.get("eps", test.threat_model.eps)
    from classrobust.attacks import parse_attack_specs

    specs = dict(parse_attack_specs(attacks))
    if steps is not None:  # the global --steps, as the rebuilt attacks must see it
        specs = {n: ({"steps": steps, **o} if "steps" in _valid(n) else o) for n, o in specs.items()}
    attack_objs = build_attacks(attacks, model, eps=eps, steps=steps, alpha=alpha, seed=seed,
                                precision=precision, mode=mode)
    run_meta = {"checkpoint": str(checkpoint) if checkpoint else None, "weights": meta.get("weights"),
                "dataset": meta["dataset"], "split": "test",
                "model": meta["model"], "eps": eps, "limit": limit, "subset_seed": subset_seed, "seed": seed,
                "precision": precision,
                "batch_size": batch_size, "device": str(dev), "torch_version": torch.__version__,
                "mode": mode, **(extra_meta or {})}
    t0 = time.perf_counter()
    result = evaluate_dataset(model, test, attack_objs, batch_size=batch_size, device=dev,
                              progress=progress, meta=run_meta)
    result.meta["seconds"] = round(time.perf_counter() - t0, 2)
    if sanity:
        from classrobust.evaluate.sanity import run_sanity_checks

        def rebuild(name, overrides):
            return build_attacks(name, model, eps=eps, steps=None, alpha=alpha, seed=seed,
                                 precision=precision, mode=mode, overrides={name: {**specs[name], **overrides}})[name]

        t1 = time.perf_counter()
        result.sanity = run_sanity_checks(model, test, result, attack_objs, rebuild, eps=eps, precision=precision,
                                          seed=seed, device=dev, batch_size=batch_size, n_queries=sanity_queries)
        result.meta["sanity_seconds"] = round(time.perf_counter() - t1, 2)
    if not is_main():
        return result, out
    result.save(out)
    if report:
        from classrobust.report import build_report

        build_report(out)
    return result, out


def print_result(result, out: Path) -> None:
    from classrobust.report import format_classwise_table, format_warnings

    eps = result.meta.get("eps")
    print(f"\nclass-wise accuracy on {len(result.labels)} test images of {result.meta.get('dataset')}"
          f" (eps = {eps:g}):\n")
    print(format_classwise_table(result))
    for line in format_warnings(result):
        print(line)
    print(f"\nresults: {out}/ (per_class.csv, confusion_<attack>.csv, samples.csv.gz, summary.json)")
    if (out / "report.html").is_file():
        print(f"report: {out / 'report.html'}")


def run_eval(args):
    if args.checkpoint is not None and (args.dataset or args.weights or args.normalize):
        raise UsageError("--dataset, --weights and --normalize go with --model, not --checkpoint")
    result, out = evaluate_checkpoint(
        args.checkpoint, args.out, model_name=args.model, dataset=args.dataset, weights=args.weights,
        normalize=args.normalize, attacks=args.attacks, eps=args.eps, steps=args.steps, alpha=args.alpha,
        precision=args.precision, mode=args.mode, batch_size=args.batch_size, seed=args.seed, limit=args.limit,
        subset_seed=args.subset_seed,
        device=args.device, data_dir=args.data_dir, download=args.download, progress=not args.no_progress,
        sanity=args.sanity, sanity_queries=args.sanity_queries, report=not args.no_report)
    from classrobust.distributed import is_main

    if is_main():
        print_result(result, out)
    return result


# -- calibrate ------------------------------------------------------------------
def calibrate_checkpoint(src: Path, out: Path, *, max_avg_drop: float = 1.0, temperature: bool = False,
                         val_size: int = 2000, steps: int = 10, rounds: int = 3, eps: float | None = None,
                         precision: str = "fp32", seed: int = 0, device: str | None = None,
                         data_dir: Path | None = None, log=print):
    """Calibrate checkpoint ``src`` into the new checkpoint ``out`` (see :mod:`classrobust.training.calibrate`);
    ``max_avg_drop`` in percentage points. Returns ``(out, Calibration)``."""
    from classrobust.checkpoint import load_checkpoint, save_checkpoint
    from classrobust.training.calibrate import calibrate, validation_split

    src, out = Path(src), Path(out)
    if out.suffix != ".safetensors":
        out = out.with_suffix(".safetensors")
    if out.resolve() == src.with_suffix(".safetensors").resolve():
        raise UsageError("--out is the input checkpoint; calibration writes a new checkpoint")
    if out.exists() or out.with_suffix(".json").exists():
        raise UsageError(f"{out} already exists; choose another --out (nothing is overwritten)")
    if out.parent.exists() and not out.parent.is_dir():
        raise UsageError(f"{out.parent} is not a directory")
    dev = resolve_device(device)
    model, meta = load_checkpoint(src, map_location=dev)
    if meta.get("calibration") is not None:
        raise UsageError(f"{src} is already calibrated; calibrate the original checkpoint")
    eps = eps if eps is not None else meta.get("eps")
    val = validation_split(meta, val_size, data_dir=data_dir)
    log(f"calibrating {src} on {len(val)} validation images (PGD-{steps}, eps {eps:g}); "
        f"allowed average loss {max_avg_drop:g} points")
    adjusted, fit = calibrate(model, val, eps=eps, steps=steps, seed=seed, precision=precision,
                              max_avg_drop=max_avg_drop / 100, fit_temperature=temperature, rounds=rounds,
                              device=dev, log=log)
    settings = {"source": str(src), "source_sha256": meta["sha256"], "val_size": len(val), "eps": eps,
                "attack": {"name": "pgd", "steps": steps, "seed": seed, "precision": precision},
                "max_avg_drop": max_avg_drop / 100, "temperature": temperature, "rounds": rounds}
    new_meta = {k: v for k, v in meta.items() if k not in ("format", "classrobust_version", "torch_version",
                                                           "sha256")}
    new_meta["calibration"] = fit.to_meta(settings)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, adjusted.cpu(), new_meta)
    return out, fit


def run_calibrate(args):
    out, fit = calibrate_checkpoint(args.checkpoint, args.out, max_avg_drop=args.max_avg_drop,
                                    temperature=args.temperature, val_size=args.val_size, steps=args.steps,
                                    rounds=args.rounds, eps=args.eps, precision=args.precision, seed=args.seed,
                                    device=args.device, data_dir=args.data_dir)
    b, a = fit.before, fit.after
    classes = read_classes(out)
    print(f"{'class':<14}{'offset':>8}{'temp':>7}{'before':>9}{'after':>9}")
    for name, off, t, rb, ra in zip(classes, fit.offsets, fit.temperatures, b["robust_per_class"],
                                    a["robust_per_class"]):
        print(f"{str(name)[:13]:<14}{off:>8.2f}{t:>7.2f}{100 * rb:>8.1f}%{100 * ra:>8.1f}%")
    print(f"{'all':<14}{'':>15}{100 * b['robust_accuracy']:>8.1f}%{100 * a['robust_accuracy']:>8.1f}%")
    print(f"validation worst class: {b['worst_class']} {100 * b['worst_robust_accuracy']:.1f}% -> "
          f"{a['worst_class']} {100 * a['worst_robust_accuracy']:.1f}% (PGD-{args.steps}, measured end to end)")
    print(f"calibrated checkpoint: {out}")
    return out, fit


def read_classes(checkpoint: Path) -> list[str]:
    from classrobust.checkpoint import read_checkpoint_meta

    return list(read_checkpoint_meta(checkpoint)["classes"])


# -- compare --------------------------------------------------------------------
def run_compare(args):
    from classrobust.report.compare import write_comparison
    from classrobust.report.html import resolve_eval_dir

    out = args.out if args.out is not None else resolve_eval_dir(args.run_b) / "compare"
    check_output_dir(out)
    table, out = write_comparison(args.run_a, args.run_b, out, alpha=args.alpha)
    print(f"A = {args.run_a}\nB = {args.run_b}\n")
    print(f"{'attack':<12}{'class':<14}{'A':>8}{'B':>8}{'B-A':>8}{'p':>10}{'p_holm':>10}")
    for r in table.itertuples():
        mark = "  *" if r.significant else ""
        print(f"{r.attack:<12}{str(r.class_name)[:13]:<14}{100 * r.accuracy_a:>7.1f}%{100 * r.accuracy_b:>7.1f}%"
              f"{100 * r.difference:>+8.1f}{r.p_value:>10.3g}{r.p_holm:>10.3g}{mark}")
    print(f"\n* significant at {args.alpha} (exact McNemar, Holm-adjusted over classes)")
    consistency = pd.read_csv(out / "consistency.csv")
    print("rank consistency of per-class accuracy between A and B: " + ", ".join(
        f"{r.attack} Spearman {r.spearman:.2f} / Kendall {r.kendall:.2f}" for r in consistency.itertuples()))
    print(f"comparison: {out}/ (compare.csv, compare.md, compare.html)")
    return table


# -- demo -----------------------------------------------------------------------
DEMO_EPOCHS = 6
DEMO_ATTACKS = "fgsm,pgd:steps=20,temp-pgd:steps=20"


def demo_config(args, device: torch.device):
    from classrobust.training import TrainConfig

    # Dropout off and a 1-epoch eps warm-up: with dropout 0.5 or fewer epochs the Shirt class
    # collapses (clean accuracy ~5-10%) within the demo's time budget. lr 0.03 with a 0.25-epoch
    # warm-up: at lr 0.05 without warm-up, runs diverged to NaN on some seeds (docs: README).
    return TrainConfig(dataset="fashion-mnist", model="smallcnn", model_kwargs={"dropout": 0.0},
                       method="pgd-at", eps=0.1,
                       attack_steps=3, eps_warmup_epochs=1.0, epochs=args.epochs or DEMO_EPOCHS,
                       batch_size=128, lr=0.03, lr_warmup_epochs=0.25, val_size=1000, val_attack_steps=10,
                       train_subset=args.train_subset, seed=args.seed,
                       precision=default_precision(device), device=str(device))


def run_demo(args):
    from classrobust.checkpoint import read_checkpoint_meta
    from classrobust.training import train

    device = resolve_device(args.device)
    out = check_output_dir(args.out)
    config = demo_config(args, device)
    checkpoint = out / "model.safetensors"
    reuse = False
    if checkpoint.exists() and not args.retrain:
        try:
            reuse = read_checkpoint_meta(checkpoint).get("config") == config.to_dict()
        except CheckpointError:
            reuse = False
        print(f"reusing {checkpoint} (pass --retrain to train again)" if reuse
              else f"{checkpoint} was trained with other settings; training again")
    t0 = time.perf_counter()
    if not reuse:
        print(f"training PGD-AT smallcnn on Fashion-MNIST, eps 0.1, {config.epochs} epochs "
              f"({config.precision}, {device})")
        train(config, out, data_dir=args.data_dir, progress=not args.no_progress)
    train_seconds = time.perf_counter() - t0
    # attack seed and test subset fixed: demos trained with different --seed compare sample by sample
    result, eval_dir = evaluate_checkpoint(checkpoint, out / "eval", attacks=DEMO_ATTACKS, limit=args.limit,
                                           seed=0, subset_seed=0, device=args.device, data_dir=args.data_dir,
                                           progress=not args.no_progress)
    print_result(result, eval_dir)
    print(f"\nmodel: {checkpoint} (+ model.json, train_log.csv)")
    print(f"time: training {train_seconds:.0f}s, evaluation {result.meta['seconds']:.0f}s")
    return result
