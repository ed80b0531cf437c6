"""Evaluate a checkpoint (or any model) on the test split under attacks, save the results and
write the report: the workflow behind ``classrobust eval``."""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from classrobust.attacks import MODES, build_attacks, parse_attack_specs
from classrobust.errors import CheckpointError, UsageError
from classrobust.io import check_own_directory
from classrobust.options import check_choice, coerce_fields, option
from classrobust.results import SUMMARY, ClasswiseResult
from classrobust.attacks.specs import GLOBAL_OPTIONS
from classrobust.runtime import PRECISIONS, Runtime, barrier, is_main, set_tf32, setup_device


#: the images an evaluation attacks: the test split, or the training run's validation split
SPLITS = ("test", "val")


@dataclass(frozen=True)
class EvalConfig:
    """The settings of an evaluation (``classrobust eval`` builds its options from these)."""

    attacks: str = option("fgsm,pgd,temp-pgd", "comma-separated attacks with per-attack parameters: "
                                                "fgsm,pgd:steps=50,alpha=0.005")
    eps: float | None = option(None, "perturbation budget (default: the checkpoint's training eps, else the "
                                     "dataset's)")
    steps: int | None = option(None, "steps of every iterative attack that takes them")
    alpha: float | None = option(None, "step size of every iterative attack that takes one "
                                       "(default: 2.5 * eps / steps)")
    precision: str = option(GLOBAL_OPTIONS["precision"], "attack arithmetic (predictions are always judged in fp32)",
                            choices=PRECISIONS)
    mode: str = option(GLOBAL_OPTIONS["mode"], "best: stop attacking a sample at its first fooling iterate (evaluation mode); "
                               "last: run every iteration and return the attack's final output", choices=MODES)
    batch_size: int = option(256, "evaluation batch size")
    seed: int = option(GLOBAL_OPTIONS["seed"], "attack seed (random starts)")
    split: str = option("test", "the images attacked: test, or val (the checkpoint's training run's own validation "
                                "split, never the test split: for choosing settings)", choices=SPLITS)
    limit: int | None = option(None, "evaluate a class-stratified subset of N test images")
    subset_seed: int = option(0, "seed of the --limit subset (kept apart from --seed so that evaluations of "
                                 "different models pair up for `compare`)")
    sanity: bool = option(False, "also run the evaluation sanity checks (more steps, large eps, black-box, "
                                 "randomness, zero gradients); results in summary.json")
    sanity_queries: int = option(1000, "Square queries of the black-box sanity check")
    report: bool = option(True, "build report.html")
    superclasses: str | None = option(None, "CSV file with columns class,superclass: per-superclass accuracy in "
                                            "the report (CIFAR-100's coarse classes are built in)")
    allow_tf32: bool = option(False, "allow TF32 in CUDA matmuls and convolutions (off: fp32 verdicts are fp32)")
    workers: int = option(0, "data-loading worker processes (decode folder datasets in parallel); the results "
                             "are the same for every value")

    def __post_init__(self):
        coerce_fields(self)
        for name in ("batch_size", "sanity_queries"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name.replace('_', ' ')} must be >= 1, got {getattr(self, name)}")
        if self.workers < 0:
            raise UsageError(f"workers must be >= 0, got {self.workers}")
        for name in ("limit", "steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UsageError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eps", "alpha"):
            if getattr(self, name) is not None and not getattr(self, name) >= 0:
                raise UsageError(f"{name} must be >= 0, got {getattr(self, name)}")
        check_choice(EvalConfig, "precision", self.precision)
        check_choice(EvalConfig, "mode", self.mode)
        check_choice(EvalConfig, "split", self.split)
        parse_attack_specs(self.attacks)

    def global_attack_options(self, eps: float) -> dict[str, Any]:
        return {"eps": eps, "steps": self.steps, "alpha": self.alpha, "mode": self.mode,
                "precision": self.precision, "seed": self.seed}


def with_l2_radius(config: EvalConfig, eps_l2: float) -> list[tuple[str, dict[str, Any]]]:
    """The attack specs with the dataset's L2 radius for every L2 attack that sets no eps of its own,
    unless ``--eps`` gives one for all: an L-inf budget (0.1) is no L2 radius."""
    from classrobust.attacks import ATTACKS

    specs = []
    for name, own in parse_attack_specs(config.attacks):
        norm = own.get("norm", ATTACKS.get(name).defaults.get("norm", "linf"))
        if norm == "l2" and "eps" not in own and config.eps is None:
            own = {**own, "eps": eps_l2}
        specs.append((name, own))
    return specs


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder holding ``model.safetensors`` (as ``report`` and ``compare`` take)."""
    path = Path(path)
    if path.is_dir():
        if not (path / "model.safetensors").is_file():
            raise UsageError(f"{path} is a folder without model.safetensors; give the checkpoint file")
        return path / "model.safetensors"
    return path


#: ``val_size`` of :func:`validation_split` for the whole held-out part of the training split
WHOLE = None


def validation_split(meta: dict[str, Any], checkpoint, runtime: Runtime, *, val_size: int | None, needs: str):
    """The validation split the checkpoint's training run held out of its training split (its
    fraction, seed and dropped classes), ``val_size`` class-stratified images of it (:data:`WHOLE`:
    all). ``needs`` names what needs it, for the error when the checkpoint has no training config."""
    if not meta.get("config"):
        raise UsageError(f"{checkpoint} has no training config, so its validation split is unknown; {needs} "
                         "needs a checkpoint trained by classrobust")
    from classrobust.data import run_splits
    from classrobust.training import TrainConfig

    size = val_size if val_size is not None else 10 ** 9  # run_splits' None is the run's own val_size
    _, val = run_splits(TrainConfig.from_dict(meta["config"]), root=runtime.data_dir, download=runtime.download,
                        val_size=size)
    return val


@dataclass
class TrainedRun:
    """A checkpoint of a classrobust training run, loaded for a validation-split workflow: the model
    (eval mode, on ``device``), its metadata, its validation split and the eps it is attacked at."""

    checkpoint: Path
    model: torch.nn.Module
    meta: dict[str, Any]
    val: Any
    eps: float
    device: torch.device


def load_trained_run(checkpoint: str | Path, runtime: Runtime, *, val_size: int | None, needs: str,
                     eps: float | None = None, uncalibrated: bool = False) -> TrainedRun:
    """Load ``checkpoint`` (a file or run folder) and its run's validation split (never the test
    split). ``eps`` None: the checkpoint's. ``uncalibrated``: refuse a calibrated checkpoint."""
    from classrobust.checkpoint import load_checkpoint

    path = resolve_checkpoint(checkpoint)
    device, _ = setup_device(runtime.device)
    model, meta = load_checkpoint(path, map_location=device)
    if uncalibrated and meta.get("calibration") is not None:
        raise UsageError(f"{path} is already calibrated; give the original checkpoint")
    val = validation_split(meta, path, runtime, val_size=val_size, needs=needs)
    return TrainedRun(path, model.eval(), meta, val, eps if eps is not None else meta.get("eps"), device)


def check_model_fits(net: torch.nn.Module, test, device: torch.device) -> None:
    """One forward pass on one test image before any attack: a model that does not take the data's
    images, or does not give one logit per class, is a one-line error naming both shapes."""
    x, _ = test[[0]]
    shape = tuple(x.shape[1:])
    try:
        with torch.no_grad():
            out = net.eval()(x.to(device))
    except RuntimeError as exc:
        raise UsageError(f"the model does not take this dataset's images of shape {shape} (C, H, W): "
                         f"{str(exc).splitlines()[0]}") from None
    if out.dim() != 2 or out.shape[1] != len(test.classes):
        raise UsageError(f"the model maps images of shape {shape} to outputs of shape {tuple(out.shape[1:])}; "
                         f"expected one logit per class ({len(test.classes)})")


def default_eval_dir(checkpoint: Path | None, weights: Path | None) -> Path:
    """``eval/`` beside a run's ``model.safetensors``; ``eval-NAME/`` beside any other checkpoint
    ``NAME.safetensors`` (a calibrated copy in the same folder), so two never share one."""
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        stem = checkpoint.name.removesuffix(".safetensors").removesuffix(".json")
        return checkpoint.parent / ("eval" if stem == "model" else f"eval-{stem}")
    return (Path(weights).parent if weights else Path("runs")) / "eval"


def load_model(checkpoint: Path | None, device: torch.device, *, model_name: str | None = None,
               dataset: str | None = None, weights: Path | None = None, normalize: bool = False
               ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``(model in eval mode on device, meta)`` from a classrobust checkpoint, or from a model name (registry
    or ``python:pkg.mod:factory``) with its dataset and optional weights."""
    from classrobust.checkpoint import load_checkpoint, read_checkpoint_meta

    if checkpoint is not None:
        return load_checkpoint(checkpoint, map_location=device)
    if weights is not None and Path(weights).with_suffix(".json").is_file():
        try:  # the weights are a classrobust checkpoint: its sidecar knows its dataset
            own = read_checkpoint_meta(weights)
        except Exception:  # noqa: BLE001 - a user's own JSON beside the weights: not ours to judge
            own = None
        if own is not None and dataset is not None and own["dataset"] != dataset:
            raise UsageError(f"{weights} is a classrobust checkpoint trained on {own['dataset']!r}, not "
                             f"{dataset!r}; evaluate it with --checkpoint {weights}")
    if model_name is None or dataset is None:
        raise UsageError("evaluate a --checkpoint, or a --model with its --dataset")
    from classrobust.data import get_dataset_info
    from classrobust.models import create_model

    info = get_dataset_info(dataset)
    model = create_model(model_name, info, weights=str(weights) if weights else None,
                         normalize=normalize).to(device).eval()
    return model, {"model": model_name, "dataset": dataset, "classes": list(info.classes),
                   "weights": str(weights) if weights else None}


def evaluation_images(meta: dict[str, Any], config: EvalConfig, runtime: Runtime, checkpoint):
    """The images ``config`` evaluates: the test split, or (``split="val"``) the validation split the
    checkpoint's training run carved out of its training split; class-stratified to ``config.limit``."""
    from classrobust.data import get_dataset, stratified_subset

    if config.split == "val":  # the whole held-out part: --limit subsets it
        images = validation_split(meta, checkpoint, runtime, val_size=WHOLE, needs="--split val")
    else:
        images = get_dataset(meta["dataset"], "test", root=runtime.data_dir, download=runtime.download)
    if list(images.classes) != list(meta["classes"]):
        raise CheckpointError(f"{checkpoint} was trained on classes {meta['classes']}, "
                              f"but dataset {meta['dataset']!r} has {images.classes}")
    if config.limit is not None and config.limit < len(images.classes):
        raise UsageError(f"--limit {config.limit} is below the {len(images.classes)} classes: a class-wise "
                         f"evaluation needs at least one image of every class (--limit {len(images.classes)} or more)")
    return stratified_subset(images, config.limit, seed=config.subset_seed) if config.limit is not None else images


def evaluate_checkpoint(checkpoint: str | Path | None = None, out: str | Path | None = None, *,
                        config: EvalConfig | None = None, model: str | None = None, dataset: str | None = None,
                        weights: str | Path | None = None, normalize: bool = False, runtime: Runtime | None = None,
                        extra_meta: dict[str, Any] | None = None, overwrite: bool = False, **settings: Any
                        ) -> tuple[ClasswiseResult, Path]:
    """Class-wise evaluation of a checkpoint on the test split, saved to ``out`` with its report.

    Args:
        checkpoint: a classrobust checkpoint; or None with ``model`` (a registry name or
            ``python:pkg.mod:factory``), ``dataset`` and optional ``weights``.
        out: result directory (default: ``eval/`` beside the checkpoint).
        config: the evaluation settings; ``settings`` (any :class:`EvalConfig` field) override it.
        overwrite: replace an evaluation in ``out`` made with other settings (default: refused, so
            that an earlier evaluation of the same checkpoint is never lost silently).
        runtime: device, data folder, download, progress (:class:`~classrobust.runtime.Runtime`).
    Returns ``(result, out)``. Under torchrun every process evaluates its shard; rank 0 writes.
    """
    config = replace(config or EvalConfig(), **settings)
    runtime = runtime or Runtime()
    checkpoint = resolve_checkpoint(checkpoint) if checkpoint is not None else None
    # checked before any work: an unwritable or foreign folder fails now, not after the attacks
    out = check_own_directory(Path(out) if out is not None else default_eval_dir(checkpoint, weights), SUMMARY)
    dev, _ = setup_device(runtime.device)
    tf32 = set_tf32(config.allow_tf32)
    net, meta = load_model(checkpoint, dev, model_name=model, dataset=dataset,
                           weights=Path(weights) if weights else None, normalize=normalize)
    test = evaluation_images(meta, config, runtime, checkpoint)
    groups = None
    if config.superclasses is not None:  # read and checked against the classes before any attack
        from classrobust.analysis.superclasses import read_superclasses

        groups = read_superclasses(config.superclasses, list(test.classes))
    check_model_fits(net, test, dev)
    # after the checks: a model that cannot run gets its one-line error alone
    if checkpoint is None and weights is None and str(model).startswith("python:"):
        import sys

        print(f"classrobust: warning: --model {model} without --weights: evaluating the weights its factory "
              "returns (untrained, unless the factory loads its own)", file=sys.stderr)
    eps = config.eps if config.eps is not None else meta.get("eps", test.threat_model.eps)
    globals_ = config.global_attack_options(eps)
    attacks = build_attacks(with_l2_radius(config, test.threat_model.eps_l2), net, **globals_)
    run_meta = {"checkpoint": str(checkpoint) if checkpoint else None, "weights": meta.get("weights"),
                "dataset": meta["dataset"], "split": config.split, "model": meta["model"], "eps": eps,
                # the number of test images actually evaluated (a --limit above the split's size is all of it)
                "limit": len(test) if config.limit is not None else None, "subset_seed": config.subset_seed, "seed": config.seed,
                "precision": config.precision, "batch_size": config.batch_size, "device": str(dev),
                "eps_l2": test.threat_model.eps_l2, "torch_version": torch.__version__, "mode": config.mode,
                **tf32, **({"superclasses": groups} if groups else {}), **(extra_meta or {})}
    _check_replaces(out, run_meta, config, overwrite)
    from classrobust.workflows.locks import run_lock

    # two evaluations into one folder at once: the second is refused by name, not both "successful"
    with run_lock(out, str(out)) if is_main() else contextlib.nullcontext():
        return _evaluate_into(out, net, test, attacks, config, globals_, dev, run_meta, runtime.progress)


def _evaluate_into(out, net, test, attacks, config, globals_, dev, run_meta, progress):
    from classrobust.evaluate.sharded import evaluate_dataset

    t0 = time.perf_counter()
    # finished batches wait beside ``out`` until the result is saved: a killed evaluation continues
    resume_dir = out.parent / f".{out.name}.resume"
    result = evaluate_dataset(net, test, attacks, batch_size=config.batch_size, device=dev, progress=progress,
                              meta=run_meta, workers=config.workers, resume_dir=resume_dir)
    result.meta["seconds"] = round(time.perf_counter() - t0, 2)
    if config.sanity:
        _sanity(net, test, result, attacks, config, globals_, dev)
    if is_main():
        result.save(out)
        if config.report:
            from classrobust.report import build_report

            build_report(out)
    barrier()  # under torchrun, the other processes return only once the files are complete
    # past the barrier every process has finished its batches and the result is saved: the kept
    # batches go (each process removes what is left; a folder another one removed is no error)
    shutil.rmtree(resume_dir, ignore_errors=True)
    return result, out


#: the settings two evaluations into one folder must share for the second to replace the first silently
_SAME = ("dataset", "split", "eps", "limit", "subset_seed", "seed", "precision", "mode")


def _check_replaces(out: Path, run_meta: dict[str, Any], config: EvalConfig, overwrite: bool) -> None:
    """Refuse, before any attack, to replace an evaluation in ``out`` made with other settings (another
    attack list, subset, eps, ...) unless ``overwrite``: rerunning the same evaluation is fine."""
    import json

    summary = out / SUMMARY
    if overwrite or not summary.is_file():
        return
    old = json.loads(summary.read_text())
    old_meta = old.get("meta", {})
    differ = [k for k in _SAME if k in old_meta and old_meta.get(k) != run_meta.get(k)]
    old_attacks = [a for a in old.get("attacks", {}) if a != "clean"]
    new_attacks = [n for n, _ in parse_attack_specs(config.attacks)]
    if old_attacks != new_attacks:
        differ.insert(0, f"attacks {','.join(old_attacks)} -> {','.join(new_attacks)}")
    if differ:
        raise UsageError(f"{out} holds an evaluation with other settings ({'; '.join(differ)}); choose another --out, "
                         "or pass --overwrite to replace it")


def _sanity(net, test, result: ClasswiseResult, attacks, config: EvalConfig, globals_: dict[str, Any], device):
    from classrobust.evaluate.sanity import run_sanity_checks

    specs = dict(with_l2_radius(config, test.threat_model.eps_l2))

    def rebuild(name, changes):  # attack ``name`` as evaluated, with ``changes`` on top
        return build_attacks([(name, specs[name])], net, overrides={name: changes}, **globals_)[name]

    t1 = time.perf_counter()
    result.sanity = run_sanity_checks(net, test, result, attacks, rebuild, eps=globals_["eps"],
                                      precision=config.precision, seed=config.seed, device=device,
                                      batch_size=config.batch_size, n_queries=config.sanity_queries)
    result.meta["sanity_seconds"] = round(time.perf_counter() - t1, 2)
