"""The experiment workflow (``classrobust experiment FILE.yaml``): train and attack every run of a
grid, then one combined report.

Each run lives in ``<out>/runs/<dataset>/<method>/seed<s>/`` (checkpoint, training log, ``eval/``).
A run whose checkpoint was made with the same training config and whose evaluation used the
same settings is skipped; a half-trained run continues from its last completed epoch; a run
made with *other* settings stops the experiment (results are never overwritten).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from classrobust.defenses.calibrate import CalibrateConfig
from classrobust.errors import CheckpointError, UsageError
from classrobust.io import atomic_write_json, check_output_dir
from classrobust.report.experiment import INDEX
from classrobust.runtime import resolve_device
from classrobust.workflows.calibrate import calibrate_checkpoint
from classrobust.workflows.evaluate import EvalConfig, evaluate_checkpoint
from classrobust.workflows.spec import ExperimentSpec, RunSpec


def eval_settings(spec: ExperimentSpec) -> dict[str, Any]:
    return {"attacks": spec.eval["attacks"], **{k: spec.eval[k] for k in sorted(spec.eval) if k != "attacks"}}


def run_dir(spec: ExperimentSpec, run: RunSpec) -> Path:
    return spec.out / "runs" / run.key


def run_state(spec: ExperimentSpec, run: RunSpec) -> str:
    """``"done"``, ``"evaluate"`` (trained), ``"resume"`` (half trained) or ``"train"``."""
    from classrobust.checkpoint import read_checkpoint_meta
    from classrobust.training.loop import STATE, staging_dir

    directory = run_dir(spec, run)
    checkpoint = directory / "model.safetensors"
    if checkpoint.is_file():
        try:
            saved_meta = read_checkpoint_meta(checkpoint)
        except CheckpointError as exc:
            raise UsageError(f"{checkpoint} is unreadable ({exc}); move it away to retrain") from None
        saved = saved_meta.get("config", {})
        if run.calibrate is not None:
            fitted = saved_meta.get("calibration") or {}
            wanted = calibration_settings(run.calibrate)
            if any(fitted.get(k) != v for k, v in wanted.items()):
                raise UsageError(f"{directory} was calibrated with other settings; move it away or give the "
                                 "experiment another out directory")
        # the same run may have been trained on another device
        differing = [k for k in run.config.differences(saved) if k != "device"]
        if differing:
            raise UsageError(f"{directory} was trained with other settings ({', '.join(differing)} differ); "
                             "move it away or give the experiment another out directory")
        summary = directory / "eval" / "summary.json"
        if not summary.is_file():
            return "evaluate"
        saved_eval = json.loads(summary.read_text()).get("meta", {}).get("experiment_eval")
        if saved_eval != eval_settings(spec):
            raise UsageError(f"{directory / 'eval'} was evaluated with other settings; move it away or give the "
                             "experiment another out directory")
        return "done"
    if run.calibrate is not None:
        return "calibrate"
    return "resume" if (staging_dir(directory) / STATE).is_file() else "train"


def calibration_settings(entry: dict[str, Any]) -> dict[str, Any]:
    """What a calibrated checkpoint's meta records for an experiment's calibrate entry."""
    return CalibrateConfig(**entry).recorded()


def _train(spec, run, *, resume, device, data_dir, download, progress, log, tensorboard=None) -> None:
    from classrobust.training import train

    # precision stays the file's (default bf16) on every machine, so that runs stay comparable
    config = replace(run.config, device=str(resolve_device(device)))
    train(config, run_dir(spec, run), data_dir=data_dir, download=download, progress=progress, resume=resume,
          log=lambda m: log(f"  {m}"), tensorboard=None if tensorboard is None else Path(tensorboard) / run.key)


def _evaluate(spec, run, *, device, data_dir, download, progress) -> None:
    directory = run_dir(spec, run)
    evaluate_checkpoint(directory / "model.safetensors", directory / "eval", config=EvalConfig(**spec.eval),
                        device=device, data_dir=data_dir, download=download, progress=progress,
                        extra_meta={"experiment_eval": eval_settings(spec)})


def ensure_run(spec, run, *, device=None, data_dir=None, download=False, progress=True,
               log: Callable[[str], None] = print, tensorboard: Path | None = None) -> str:
    """Bring one run to "done"; returns the state it was found in."""
    state = run_state(spec, run)
    if state == "done":
        log(f"{run.key}: complete, skipped")
        return state
    t0 = time.perf_counter()
    if state == "calibrate":
        base = spec.out / "runs" / run.base_key / "model.safetensors"
        if not base.is_file():
            raise UsageError(f"{run.key} calibrates {run.base_key}, which has no checkpoint yet")
        log(f"{run.key}: calibrating {run.base_key}")
        calibrate_checkpoint(base, run_dir(spec, run) / "model.safetensors", config=CalibrateConfig(**run.calibrate),
                             device=device, data_dir=data_dir, log=lambda m: log(f"  {m}"))
    if state in ("train", "resume"):
        log(f"{run.key}: {'resuming training' if state == 'resume' else 'training'}")
        _train(spec, run, resume=state == "resume", device=device, data_dir=data_dir, download=download,
               progress=progress, log=log, tensorboard=tensorboard)
    log(f"{run.key}: evaluating ({spec.eval['attacks']})")
    _evaluate(spec, run, device=device, data_dir=data_dir, download=download, progress=progress)
    log(f"{run.key}: done in {time.perf_counter() - t0:.0f}s")
    return state


def confused_class(eval_dir: Path, attack: str) -> tuple[str, str]:
    """(weakest class under ``attack``, the class its adversarial examples are most often assigned to)."""
    from classrobust.results import ClasswiseResult

    result = ClasswiseResult.load(eval_dir)
    weakest = result.attacks[attack].worst_class
    adv = result.attacks[attack].predictions[result.labels == weakest]
    counts = np.bincount(adv, minlength=result.num_classes)
    counts[weakest] = -1
    return result.classes[weakest], result.classes[int(np.argmax(counts))]


def ablation_runs(spec: ExperimentSpec) -> list[tuple[RunSpec, RunSpec, str, str]]:
    """(base run, retrained run, weakest class, dropped class) for every finished base run."""
    if spec.ablation is None:
        return []
    out = []
    for dataset in spec.datasets:
        for seed in spec.ablation.seeds:
            base = spec.run(dataset, spec.ablation.method, seed)
            weak, dropped = confused_class(run_dir(spec, base) / "eval", spec.ablation.attack)
            out.append((base, spec.ablation_run(base, dropped), weak, dropped))
    return out


def run_experiment(spec: ExperimentSpec | str | Path, *, device: str | None = None, data_dir: Path | None = None,
                   download: bool = False, progress: bool = True, log: Callable[[str], None] = print,
                   tensorboard: str | Path | None = None) -> Path:
    """Run the grid of ``spec`` (an experiment file or its loaded spec), skipping complete runs, then the
    ablation, and write ``<out>/report``; returns the report path. ``tensorboard``: a folder that gets
    one TensorBoard log per trained run (``DIR/<run key>``)."""
    from classrobust.report.experiment import build_experiment_report
    from classrobust.workflows.spec import load_spec

    if not isinstance(spec, ExperimentSpec):
        spec = load_spec(spec)

    check_output_dir(spec.out)
    if tensorboard is not None:
        from classrobust.integrations.tensorboard import check_tensorboard

        check_tensorboard(tensorboard)
    spec.out.mkdir(parents=True, exist_ok=True)
    runs = list(spec.runs)
    log(f"experiment {spec.name}: {len(runs)} runs"
        + (" + the remove-the-confused-class ablation" if spec.ablation else "") + f" -> {spec.out}")
    for run in runs:
        ensure_run(spec, run, device=device, data_dir=data_dir, download=download, progress=progress, log=log,
                   tensorboard=tensorboard)
    ablations = ablation_runs(spec)
    for base, retrained, weak, dropped in ablations:
        log(f"ablation: {base.key}'s weakest class under {spec.ablation.attack} is {weak!r}, attacked mostly into "
            f"{dropped!r}; retraining without {dropped!r}")
        ensure_run(spec, retrained, device=device, data_dir=data_dir, download=download, progress=progress,
                   log=log, tensorboard=tensorboard)
    index = {
        "name": spec.name, "description": spec.description, "source": str(spec.source),
        "eval": eval_settings(spec),
        "runs": [{"key": r.key, "dataset": r.dataset, "dataset_name": r.dataset_name, "method": r.method,
                  "seed": r.seed, "dir": str(Path("runs") / r.key)} for r in runs],
        "ablation": [{"base": b.key, "retrained": r.key, "dir": str(Path("runs") / r.key), "dataset": b.dataset,
                      "seed": b.seed, "attack": spec.ablation.attack, "weakest_class": w, "dropped_class": d}
                     for b, r, w, d in ablations],
    }
    atomic_write_json(spec.out / INDEX, index)
    return build_experiment_report(spec.out)


def check_experiment(spec: ExperimentSpec) -> list[str]:
    """A plan of what running ``spec`` would do, per run (no data read)."""
    lines = [f"{spec.source}: valid; {len(spec.runs)} runs -> {spec.out}",
             f"attacks: {spec.eval['attacks']} (limit {spec.eval['limit'] or 'all'} test images)"]
    for run in spec.runs:
        c = run.config
        eps = c.eps
        if eps is None and not c.dataset.startswith("folder:"):
            from classrobust.data import get_dataset_info

            eps = get_dataset_info(c.dataset).threat_model.eps
        try:
            state = run_state(spec, run)
        except UsageError as exc:
            state = f"conflict: {exc}"
        what = (f"calibrate {run.base_key} ({run.calibrate or 'defaults'})" if run.calibrate is not None else
                f"{c.model} {c.method}{' ' + c.classwise if c.classwise else ''} {c.epochs} epochs")
        lines.append(f"  {run.key}: {what}, eps {'the dataset default' if eps is None else f'{eps:.4g}'} [{state}]")
    if spec.ablation:
        lines.append(f"  ablation: retrain {spec.ablation.method} without the class that absorbs most of the "
                     f"weakest class's {spec.ablation.attack} examples (seeds {list(spec.ablation.seeds)})")
    return lines
