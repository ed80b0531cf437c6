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
from typing import Any

import numpy as np

from classrobust.errors import UsageError
from classrobust.io import atomic_write_json
from classrobust.results import ClasswiseResult
from classrobust.runtime import Runtime, barrier, is_main

#: the file that records the sweep and the chosen temperature
TEMPERATURE_INDEX = "temperature.json"
#: a run's folder for the step: ``validation/`` (the sweep) and ``test/`` (the chosen T)
RUN_FOLDER = "temperature"


def attack_name(temperature: float) -> str:
    return f"temp-pgd@T={temperature:g}"


def sweep_validation(checkpoint: Path, values: list[float], *, steps: int, limit: int, config=None,
                     runtime: Runtime | None = None) -> ClasswiseResult:
    """PGD and Temperature-PGD at every T in ``values`` on ``limit`` class-stratified validation
    images of the run that made ``checkpoint`` (never the test split); attack names ``pgd`` and
    ``temp-pgd@T=<T>``; ``meta["split"]`` is ``"validation"``. ``config``: the
    :class:`~classrobust.workflows.evaluate.EvalConfig` whose eps, seed, precision, mode and batch
    size the test-split evaluation uses too, so that the two differ only in their images."""
    from classrobust.attacks import create_attack
    from classrobust.attacks.specs import attack_kwargs
    from classrobust.evaluate.sharded import evaluate_dataset
    from classrobust.runtime import set_tf32
    from classrobust.workflows.evaluate import EvalConfig, load_trained_run

    config, runtime = config or EvalConfig(), runtime or Runtime(progress=False)
    tf32 = set_tf32(config.allow_tf32)
    run = load_trained_run(checkpoint, runtime, val_size=limit, eps=config.eps, needs="the temperature sweep")
    model, val, eps, dev = run.model, run.val, run.eps, run.device
    specs = [("pgd", {"steps": steps})] + [("temp-pgd", {"steps": steps, "temperature": t}) for t in values]
    globals_ = {**config.global_attack_options(eps), "steps": None}
    attacks = {("pgd" if name == "pgd" else attack_name(own["temperature"])):
               create_attack(name, model, **attack_kwargs([(name, own)], **globals_)[name]) for name, own in specs}
    return evaluate_dataset(model, val, attacks, batch_size=config.batch_size, device=dev, progress=runtime.progress,
                            meta={"checkpoint": str(checkpoint), "split": "validation", "limit": len(val), "eps": eps,
                                  "seed": config.seed, "precision": config.precision, "mode": config.mode, **tf32,
                                  "temperatures": list(values), "steps": steps, "val_limit": limit})


def choose_temperature(sweeps: list[ClasswiseResult], values: list[float]) -> tuple[float, dict[float, float]]:
    """(the T whose Temperature-PGD leaves the lowest validation robust accuracy averaged over the
    runs, {T: that average}); ties go to the T closest to 1 (plain PGD's loss)."""
    means = {t: float(np.mean([s.attacks[attack_name(t)].accuracy for s in sweeps])) for t in values}
    best = min(values, key=lambda t: (means[t], abs(np.log(t))))
    return best, means


def temperature_step(checkpoints: list[Path], folders: list[Path], index_path: Path, settings, configs: list, *,
                     keys: list[str], relative: str, runtime: Runtime | None = None) -> dict[str, Any]:
    """Sweep every checkpoint on its validation images (``<folder>/validation``), choose T
    (:func:`choose_temperature`), record it in ``index_path`` before any test image is attacked with it,
    then PGD and Temperature-PGD at that T on each checkpoint's test images (``<folder>/test``) with
    its evaluation settings ``configs``. ``settings``: a :class:`~classrobust.workflows.spec.TemperatureStep`;
    ``relative``: the folders' name as the index records it. Returns the index entry."""
    from classrobust.workflows.evaluate import evaluate_checkpoint

    runtime = runtime or Runtime(progress=False)
    log = runtime.log

    sweeps = []
    for checkpoint, folder, config, key in zip(checkpoints, folders, configs, keys):
        directory = folder / "validation"  # the index's validation_dir
        wanted = {"temperatures": list(settings.values), "steps": settings.steps, "val_limit": settings.val_limit}
        if (directory / "summary.json").is_file():
            sweep = ClasswiseResult.load(directory)
            if {k: sweep.meta.get(k) for k in wanted} != wanted:
                raise UsageError(f"{directory} was swept with other settings; move it away or choose another "
                                 "out directory")
        else:
            log(f"temperature: {key}: PGD and Temperature-PGD at T = "
                f"{', '.join(f'{t:g}' for t in settings.values)} on {settings.val_limit} validation images")
            sweep = sweep_validation(checkpoint, list(settings.values), steps=settings.steps, limit=settings.val_limit,
                                     config=config, runtime=runtime)
            if is_main():  # under torchrun every process holds the whole sweep; one writes it
                sweep.save(directory)
            barrier()
        sweeps.append(sweep)
    chosen, means = choose_temperature(sweeps, list(settings.values))
    if index_path.is_file() and json.loads(index_path.read_text()).get("chosen") != chosen:
        raise UsageError(f"{index_path} records another chosen temperature; move the temperature results away to "
                         "redo the step")
    entry = {"values": list(settings.values), "steps": settings.steps, "val_limit": settings.val_limit,
             "methods": list(settings.methods), "chosen": chosen, "chosen_on": "validation",
             "validation_accuracy": {f"{t:g}": means[t] for t in settings.values},
             "validation_pgd_accuracy": float(np.mean([s.attacks["pgd"].accuracy for s in sweeps])),
             "order": "T was chosen on the validation sweeps and recorded here before any test image was attacked "
                      "with it",
             "runs": list(keys), "dir": f"{relative}/test".lstrip("/"),
             "validation_dir": f"{relative}/validation".lstrip("/")}
    if is_main():
        atomic_write_json(index_path, entry)
    barrier()
    log(f"temperature: T = {chosen:g} chosen on validation (Temperature-PGD {100 * means[chosen]:.1f}% "
        f"against PGD {100 * entry['validation_pgd_accuracy']:.1f}%, averaged over {len(keys)} run(s))")
    attacks = f"pgd:steps={settings.steps},temp-pgd:steps={settings.steps},temperature={chosen!r}"  # exact T
    for checkpoint, folder, config, key in zip(checkpoints, folders, configs, keys):
        directory = folder / "test"
        if (directory / "summary.json").is_file():
            if ClasswiseResult.load(directory).meta.get("temperature_step") == {"chosen": chosen,
                                                                               "steps": settings.steps}:
                continue
            raise UsageError(f"{directory} was evaluated with another temperature; move it away to redo the step")
        log(f"temperature: {key}: PGD-{settings.steps} and Temperature-PGD-{settings.steps} at T = {chosen:g} "
            "on the test images")
        evaluate_checkpoint(checkpoint, directory, config=replace(config, attacks=attacks, report=False, sanity=False),
                            runtime=runtime, extra_meta={"temperature_step": {"chosen": chosen, "steps": settings.steps}})
    return entry


def sweep_table(entry: dict[str, Any], sweep: ClasswiseResult, test: ClasswiseResult | None = None) -> str:
    """Markdown: per candidate T its validation robust accuracy and worst class against PGD's (the
    choice), then, once scored, PGD and Temperature-PGD at the chosen T on the test images."""
    lines = [f"Temperature-PGD-{entry['steps']} against PGD-{entry['steps']} on {sweep.meta.get('limit')} validation "
             f"images (eps {sweep.meta.get('eps'):g}, seed {sweep.meta.get('seed')}); T chosen on validation: "
             f"the lowest robust accuracy, ties to the T closest to 1.", "",
             "| attack | T | validation robust accuracy | worst class |", "|---|---|---|---|"]
    rows = [("pgd", "-", sweep.attacks["pgd"])] + [
        ("temp-pgd", f"{t:g}" + (" (chosen)" if t == entry["chosen"] else ""), sweep.attacks[attack_name(t)])
        for t in entry["values"]]
    for name, t, r in rows:
        lines.append(f"| {name} | {t} | {100 * r.accuracy:.1f}% | {sweep.classes[r.worst_class]} "
                     f"{100 * r.accuracy_per_class[r.worst_class]:.1f}% |")
    if test is not None:
        lines += ["", f"On {len(test.labels)} test images (the same points for both):", "",
                  "| attack | test robust accuracy | worst class |", "|---|---|---|"]
        for name, r in test.attacks.items():
            if name != "clean":
                lines.append(f"| {name} | {100 * r.accuracy:.1f}% | {test.classes[r.worst_class]} "
                             f"{100 * r.accuracy_per_class[r.worst_class]:.1f}% |")
    return "\n".join(lines) + "\n"


def temperature_for_checkpoint(checkpoint: str | Path, out: str | Path | None = None, *, values: str = "0.05,0.1,0.25,0.5,1,2,4",
                               steps: int = 20, val_limit: int = 1000, limit: int | None = None, subset_seed: int = 0,
                               seed: int = 0, runtime: Runtime | None = None) -> tuple[Path, str]:
    """``classrobust temperature``: the temperature step on one checkpoint into ``out`` (default
    ``temperature/`` beside it); ``values``: comma-separated candidate T. Returns (out, the markdown
    table also written to ``out/temperature.md``)."""
    from classrobust.io import atomic_write_text, check_own_directory
    from classrobust.workflows.evaluate import EvalConfig, resolve_checkpoint
    from classrobust.workflows.spec import TemperatureStep

    try:
        temperatures = tuple(float(v) for v in str(values).split(","))
    except ValueError:
        raise UsageError(f"--values must be comma-separated numbers, got {values!r}") from None
    if any(not t > 0 for t in temperatures) or len(set(temperatures)) != len(temperatures):
        raise UsageError(f"--values must be distinct positive temperatures, got {values!r}")
    checkpoint = resolve_checkpoint(checkpoint)
    out = check_own_directory(Path(out) if out is not None else checkpoint.parent / "temperature", TEMPERATURE_INDEX)
    entry = temperature_step([checkpoint], [out], out / TEMPERATURE_INDEX, TemperatureStep(temperatures, steps, val_limit),
                             [EvalConfig(limit=limit, subset_seed=subset_seed, seed=seed)], keys=[str(checkpoint)],
                             relative="", runtime=runtime or Runtime())
    text = sweep_table(entry, ClasswiseResult.load(out / "validation"), ClasswiseResult.load(out / "test"))
    atomic_write_text(out / "temperature.md", text)
    return out, text
