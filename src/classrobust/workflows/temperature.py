"""Temperature-PGD's temperature chosen on validation images, then scored on the test split.

The experiment step (``temperature:`` in an experiment file) runs, for every trained run of the
listed methods, PGD and Temperature-PGD at each candidate T on the run's own validation images
(the held-out part of its training split, :func:`classrobust.data.run_splits`), picks the T with
the lowest robust accuracy averaged over those runs, records the choice in
``<out>/temperature.json`` and only then attacks each run's test subset with PGD and
Temperature-PGD at that T (same steps, eps and seed), so that the two are paired point by point.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from classrobust.errors import UsageError
from classrobust.io import atomic_write_json
from classrobust.results import ClasswiseResult
from classrobust.runtime import barrier, is_main

#: the file that records the sweep and the chosen temperature
TEMPERATURE_INDEX = "temperature.json"
#: a run's folder for the step: ``validation/`` (the sweep) and ``test/`` (the chosen T)
RUN_FOLDER = "temperature"


def attack_name(temperature: float) -> str:
    return f"temp-pgd@T={temperature:g}"


def sweep_validation(checkpoint: Path, values: list[float], *, steps: int, limit: int, config=None, device=None,
                     data_dir=None, progress: bool = False) -> ClasswiseResult:
    """PGD and Temperature-PGD at every T in ``values`` on ``limit`` class-stratified validation
    images of the run that made ``checkpoint`` (never the test split); attack names ``pgd`` and
    ``temp-pgd@T=<T>``; ``meta["split"]`` is ``"validation"``. ``config``: the
    :class:`~classrobust.workflows.evaluate.EvalConfig` whose eps, seed, precision, mode and batch
    size the test-split evaluation uses too, so that the two differ only in their images."""
    from classrobust.attacks import create_attack
    from classrobust.attacks.specs import attack_kwargs
    from classrobust.checkpoint import load_checkpoint
    from classrobust.data import run_splits
    from classrobust.evaluate.sharded import evaluate_dataset
    from classrobust.runtime import set_tf32, setup_device
    from classrobust.training import TrainConfig
    from classrobust.workflows.evaluate import EvalConfig

    config = config or EvalConfig()
    dev, _ = setup_device(device)
    tf32 = set_tf32(config.allow_tf32)
    model, meta = load_checkpoint(checkpoint, map_location=dev)
    model.eval()
    if not meta.get("config"):
        raise UsageError(f"{checkpoint} has no training config: its validation split is unknown")
    _, val = run_splits(TrainConfig.from_dict(meta["config"]), root=data_dir, val_size=limit)
    eps = config.eps if config.eps is not None else meta["eps"]
    specs = [("pgd", {"steps": steps})] + [("temp-pgd", {"steps": steps, "temperature": t}) for t in values]
    globals_ = {**config.global_attack_options(eps), "steps": None}
    attacks = {("pgd" if name == "pgd" else attack_name(own["temperature"])):
               create_attack(name, model, **attack_kwargs([(name, own)], **globals_)[name]) for name, own in specs}
    return evaluate_dataset(model, val, attacks, batch_size=config.batch_size, device=dev, progress=progress,
                            meta={"checkpoint": str(checkpoint), "split": "validation", "limit": len(val), "eps": eps,
                                  "seed": config.seed, "precision": config.precision, "mode": config.mode, **tf32,
                                  "temperatures": list(values), "steps": steps, "val_limit": limit})


def choose_temperature(sweeps: list[ClasswiseResult], values: list[float]) -> tuple[float, dict[float, float]]:
    """(the T whose Temperature-PGD leaves the lowest validation robust accuracy averaged over the
    runs, {T: that average}); ties go to the T closest to 1 (plain PGD's loss)."""
    means = {t: float(np.mean([s.attacks[attack_name(t)].accuracy for s in sweeps])) for t in values}
    best = min(values, key=lambda t: (means[t], abs(np.log(t))))
    return best, means


def run_temperature_step(spec, runs: list, *, device=None, data_dir=None, download: bool = False,
                         progress: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The experiment's temperature step for ``runs`` (trained RunSpecs); returns the index entry."""
    from classrobust.workflows.evaluate import evaluate_checkpoint
    from classrobust.workflows.experiment import run_dir

    settings = spec.temperature
    sweeps = []
    for run in runs:
        directory = run_dir(spec, run) / RUN_FOLDER / "validation"  # the index's validation_dir
        wanted = {"temperatures": list(settings.values), "steps": settings.steps, "val_limit": settings.val_limit}
        if (directory / "summary.json").is_file():
            sweep = ClasswiseResult.load(directory)
            if {k: sweep.meta.get(k) for k in wanted} != wanted:
                raise UsageError(f"{directory} was swept with other settings; move it away or give the experiment "
                                 "another out directory")
        else:
            log(f"temperature: {run.key}: PGD and Temperature-PGD at T = "
                f"{', '.join(f'{t:g}' for t in settings.values)} on {settings.val_limit} validation images")
            sweep = sweep_validation(run_dir(spec, run) / "model.safetensors", list(settings.values),
                                     steps=settings.steps, limit=settings.val_limit, config=spec.eval_config(run),
                                     device=device, data_dir=data_dir, progress=progress)
            if is_main():  # under torchrun every process holds the whole sweep; one writes it
                sweep.save(directory)
            barrier()
        sweeps.append(sweep)
    chosen, means = choose_temperature(sweeps, list(settings.values))
    index_path = spec.out / TEMPERATURE_INDEX
    if index_path.is_file() and json.loads(index_path.read_text()).get("chosen") != chosen:
        raise UsageError(f"{index_path} records another chosen temperature; move the experiment's temperature "
                         "results away to redo the step")
    entry = {"values": list(settings.values), "steps": settings.steps, "val_limit": settings.val_limit,
             "methods": list(settings.methods), "chosen": chosen, "chosen_on": "validation",
             "validation_accuracy": {f"{t:g}": means[t] for t in settings.values},
             "validation_pgd_accuracy": float(np.mean([s.attacks["pgd"].accuracy for s in sweeps])),
             "order": "T was chosen on the validation sweeps and recorded here before any test image was attacked "
                      "with it",
             "runs": [r.key for r in runs], "dir": f"{RUN_FOLDER}/test", "validation_dir": f"{RUN_FOLDER}/validation"}
    if is_main():
        atomic_write_json(index_path, entry)
    barrier()
    log(f"temperature: T = {chosen:g} chosen on validation (Temperature-PGD {100 * means[chosen]:.1f}% "
        f"against PGD {100 * entry['validation_pgd_accuracy']:.1f}%, averaged over {len(runs)} runs)")
    attacks = f"pgd:steps={settings.steps},temp-pgd:steps={settings.steps},temperature={chosen!r}"  # exact T
    for run in runs:
        directory = run_dir(spec, run) / RUN_FOLDER / "test"
        if (directory / "summary.json").is_file():
            if ClasswiseResult.load(directory).meta.get("temperature_step") == {"chosen": chosen,
                                                                               "steps": settings.steps}:
                continue
            raise UsageError(f"{directory} was evaluated with another temperature; move it away to redo the step")
        log(f"temperature: {run.key}: PGD-{settings.steps} and Temperature-PGD-{settings.steps} at T = {chosen:g} "
            "on the test subset")
        config = replace(spec.eval_config(run), attacks=attacks, report=False, sanity=False)
        evaluate_checkpoint(run_dir(spec, run) / "model.safetensors", directory, config=config, device=device,
                            data_dir=data_dir, download=download, progress=progress,
                            extra_meta={"temperature_step": {"chosen": chosen, "steps": settings.steps}})
    return entry
