"""The experiment workflow (``classrobust experiment FILE.yaml``): train and attack every run of a
grid, then one combined report.

Each run lives in ``<out>/runs/<dataset>/<method>/seed<s>/`` (checkpoint, training log, ``eval/``).
A run whose checkpoint was made with the same training config and whose evaluation used the
same settings is skipped (its weights may be gone, as in an export: the sidecar and the evaluation
decide); a half-trained run continues from its last completed epoch; a run made with *other*
settings stops the experiment (results are never overwritten). A run whose training diverges (a
non-finite loss) is an outcome, not a crash: it is recorded in ``<run>/diverged.json`` with its log up
to the divergence, the runs that build on it (a calibration) are skipped, the rest of the grid goes on,
and the index and report list it; its method is compared on the seeds that finished. A rerun does not
retry it (on the same machine the same seed diverges again); move ``diverged.json`` away to try.
An unfinished experiment's export
(:func:`export_progress`) is a folder the experiment continues from, on another machine or after
``out`` is lost: ``classrobust experiment FILE --out EXPORT``.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from classrobust.defenses.calibrate import CalibrateConfig
from classrobust.errors import CheckpointError, NonFiniteError, TrainingDivergedError, UsageError
from classrobust.io import atomic_write_json, check_output_dir, check_own_directory
from classrobust.report.experiment import INDEX
from classrobust.options import plural
from classrobust.results import CLEAN, ClasswiseResult, format_eps
from classrobust.runtime import Runtime, barrier, is_main, resolve_device
from classrobust.workflows.calibrate import calibrate_checkpoint
from classrobust.workflows.evaluate import evaluate_checkpoint
from classrobust.workflows.spec import ExperimentSpec, RunSpec


def eval_settings(spec: ExperimentSpec) -> dict[str, Any]:
    return {"attacks": spec.eval["attacks"], **{k: spec.eval[k] for k in sorted(spec.eval) if k != "attacks"}}


def run_dir(spec: ExperimentSpec, run: RunSpec) -> Path:
    return spec.out / "runs" / run.key


#: the record of a run whose training diverged (its presence is the run's final state)
DIVERGED = "diverged.json"


def diverged_record(spec: ExperimentSpec, run: RunSpec) -> dict[str, Any] | None:
    """The divergence record of ``run`` (for a calibration: of its base), or None."""
    key = run.base_key if run.calibrate is not None else run.key
    path = spec.out / "runs" / key / DIVERGED
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    differing = [k for k in run.config.differences(record.get("config", {})) if k != "device"] \
        if run.calibrate is None else []
    if differing:
        raise UsageError(f"{path} records a run with other settings ({', '.join(differing)} differ); move it away "
                         "or give the experiment another out directory")
    return record


def run_state(spec: ExperimentSpec, run: RunSpec) -> str:
    """``"done"``, ``"diverged"`` (its training, or its base's, diverged: final), ``"evaluate"``
    (trained), ``"resume"`` (half trained), ``"calibrate"`` or ``"train"``."""
    from classrobust.checkpoint import read_checkpoint_meta
    from classrobust.training.loop import STATE, staging_dir

    directory = run_dir(spec, run)
    checkpoint = directory / "model.safetensors"
    # the sidecar decides: an exported run (no weights) whose evaluation is there is as done as a local one
    if checkpoint.is_file() or (directory / "model.json").is_file():
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
            if not checkpoint.is_file():
                raise UsageError(f"{directory} has a sidecar but neither weights nor an evaluation; move it away "
                                 "to retrain")
            return "evaluate"
        saved_eval = json.loads(summary.read_text()).get("meta", {}).get("experiment_eval")
        wanted = eval_settings(spec)
        if saved_eval != wanted:
            saved_eval = saved_eval or {}
            differ = ", ".join(f"{k} {saved_eval.get(k)!r} -> {wanted.get(k)!r}" for k in sorted(set(saved_eval) | set(wanted))
                               if saved_eval.get(k) != wanted.get(k))
            raise UsageError(f"{directory / 'eval'} was evaluated with other settings ({differ}); move it away or give the "
                             "experiment another out directory")
        return "done"
    if diverged_record(spec, run) is not None:
        return "diverged"
    if run.calibrate is not None:
        return "calibrate"
    return "resume" if (staging_dir(directory) / STATE).is_file() else "train"


def calibration_settings(entry: dict[str, Any]) -> dict[str, Any]:
    """What a calibrated checkpoint's meta records for an experiment's calibrate entry."""
    return CalibrateConfig(**entry).recorded()


def _train(spec, run, runtime: Runtime, *, resume, tensorboard=None) -> None:
    from classrobust.training import train

    # precision stays the file's (default bf16) on every machine, so that runs stay comparable
    config = replace(run.config, device=str(resolve_device(runtime.device)))
    train(config, run_dir(spec, run), runtime=runtime.indented(), resume=resume,
          tensorboard=None if tensorboard is None else Path(tensorboard) / run.key)


def _evaluate(spec, run, runtime: Runtime) -> None:
    directory = run_dir(spec, run)
    evaluate_checkpoint(directory / "model.safetensors", directory / "eval", config=spec.eval_config(run),
                        runtime=runtime, extra_meta={"experiment_eval": eval_settings(spec)})


def run_temperature_step(spec, runs: list, runtime: Runtime) -> dict[str, Any]:
    """The experiment's temperature step for ``runs`` (trained RunSpecs); returns the index entry."""
    from classrobust.workflows.temperature import RUN_FOLDER, TEMPERATURE_INDEX, temperature_step

    return temperature_step([run_dir(spec, r) / "model.safetensors" for r in runs],
                            [run_dir(spec, r) / RUN_FOLDER for r in runs], spec.out / TEMPERATURE_INDEX,
                            spec.temperature, [spec.eval_config(r) for r in runs], keys=[r.key for r in runs],
                            relative=RUN_FOLDER, runtime=runtime)


def ensure_run(spec, run, runtime: Runtime | None = None, *, tensorboard: Path | None = None) -> str:
    """Bring one run to "done"; returns the state it was found in."""
    runtime = runtime or Runtime()
    log = runtime.log
    state = run_state(spec, run)
    if state == "done":
        log(f"{run.key}: complete, skipped")
        return state
    if state == "diverged":
        record = diverged_record(spec, run)
        whose = "its training" if run.calibrate is None else f"the training of its base {run.base_key}"
        log(f"{run.key}: skipped, {whose} diverged at epoch {record['epoch']} (recorded in "
            f"{record['key']}/{DIVERGED}; move that file away to try again)")
        return state
    from classrobust.workflows.locks import run_lock

    # one launcher per run: a second one (another --jobs process, a Slurm job) is refused by name
    with run_lock(run_dir(spec, run), run.key) if is_main() else contextlib.nullcontext():
        return _work(spec, run, state, runtime, tensorboard=tensorboard)


def _work(spec, run, state, runtime: Runtime, *, tensorboard) -> str:
    t0, log = time.perf_counter(), runtime.log
    if state == "calibrate":
        base = spec.out / "runs" / run.base_key / "model.safetensors"
        if not base.is_file():
            raise UsageError(f"{run.key} calibrates {run.base_key}, which has no checkpoint yet")
        log(f"{run.key}: calibrating {run.base_key}")
        calibrate_checkpoint(base, run_dir(spec, run) / "model.safetensors", config=CalibrateConfig(**run.calibrate),
                             runtime=runtime.indented())
    if state in ("train", "resume"):
        log(f"{run.key}: {'resuming training' if state == 'resume' else 'training'}")
        try:
            _train(spec, run, runtime, resume=state == "resume", tensorboard=tensorboard)
        except TrainingDivergedError as exc:  # every process raises it at the same step
            _record_divergence(spec, run, exc, time.perf_counter() - t0)
            log(f"{run.key}: diverged at epoch {exc.epoch} (non-finite loss by step {exc.step}); recorded in "
                f"{DIVERGED}, the experiment goes on without it")
            return "diverged"
    log(f"{run.key}: evaluating ({spec.eval['attacks']})")
    _evaluate(spec, run, runtime)
    log(f"{run.key}: done in {time.perf_counter() - t0:.0f}s")
    return state


def _record_divergence(spec, run, exc: TrainingDivergedError, seconds: float) -> None:
    """Write ``<run>/diverged.json`` and, beside it, the training log up to the divergence (the staged
    run stays where ``--resume`` finds it)."""
    import shutil

    from classrobust.training.loop import staging_dir

    directory = run_dir(spec, run)
    if is_main():
        directory.mkdir(parents=True, exist_ok=True)
        staged_log = staging_dir(directory) / "train_log.csv"
        if staged_log.is_file():
            shutil.copyfile(staged_log, directory / "train_log.csv")
        atomic_write_json(directory / DIVERGED, {
            "key": run.key, "epoch": exc.epoch, "step": exc.step, "error": str(exc),
            "epochs_completed": exc.epoch - 1, "seconds_this_attempt": round(seconds, 1),
            "config": run.config.to_dict()})
    barrier()


def validation_worst_class(directory: Path) -> int | None:
    """The run's worst class on the validation split, from its training sidecar ``model.json``
    (:func:`~classrobust.analysis.experiment.validation_worst`), or None without one."""
    from classrobust.analysis.experiment import validation_worst

    sidecar = directory / "model.json"
    return validation_worst([json.loads(sidecar.read_text()).get("metrics", {})]) if sidecar.is_file() else None


def confused_class(result: ClasswiseResult, attack: str, weak: int | None = None) -> tuple[str, str, str, str]:
    """(weak class, the class that receives most of its *flipped* points, where the weak class was
    chosen, which points chose the confused class): the flipped points are the weak class's test
    points classified correctly when clean and wrongly under ``attack`` (clean errors are not the
    attack's doing); only when none is flipped do all its wrong predictions under ``attack`` choose,
    and the last element says so. ``weak``: a class index chosen beforehand (the validation split's
    worst class); None takes the worst under ``attack`` on the test results."""
    chosen_on = "validation"
    if weak is None:
        weak, chosen_on = result.attacks[attack].worst_class, "test split"
    adv = result.attacks[attack].predictions
    wrong = (result.labels == weak) & (adv != result.labels)
    flipped = wrong & (result.attacks[CLEAN].predictions == result.labels)
    chosen_by = "flipped points"
    if not flipped.any():
        flipped, chosen_by = wrong, "all wrong predictions (no point was flipped)"
    counts = np.bincount(adv[flipped], minlength=result.num_classes)
    counts[weak] = -1
    return result.classes[weak], result.classes[int(np.argmax(counts))], chosen_on, chosen_by


def control_class(classes: list[str], weak: str, confused: str, seed: int) -> str:
    """The control ablation's class: drawn uniformly, with the run's seed, among the classes other
    than the weak and the confused one."""
    others = [c for c in classes if c not in (weak, confused)]
    return others[int(np.random.default_rng([seed, 2021]).integers(len(others)))]


def ablation_runs(spec: ExperimentSpec) -> list[dict[str, Any]]:
    """One entry per retraining of the ablation, for every finished base run: the base and
    retrained RunSpecs, the weak class, the dropped class, ``variant`` ("confused", or "control":
    a randomly drawn other class) and where the weak class was chosen."""
    if spec.ablation is None:
        return []
    out = []
    for dataset in spec.datasets:
        for seed in spec.ablation.seeds:
            base = spec.run(dataset, spec.ablation.method, seed)
            if run_state(spec, base) == "diverged":
                continue
            directory = run_dir(spec, base)
            result = ClasswiseResult.load(directory / "eval")
            weak, dropped, chosen_on, chosen_by = confused_class(result, spec.ablation.attack,
                                                                 validation_worst_class(directory))
            variants = [("confused", dropped)]
            if spec.ablation.control:
                variants.append(("control", control_class(result.classes, weak, dropped, seed)))
            for variant, cls in variants:
                out.append({"base": base, "retrained": spec.ablation_run(base, cls), "weak": weak, "dropped": cls,
                            "variant": variant, "weak_chosen_on": chosen_on, "confused_chosen_by": chosen_by})
    return out


def run_experiment(spec: ExperimentSpec | str | Path, *, runtime: Runtime | None = None,
                   tensorboard: str | Path | None = None) -> Path:
    """Run the grid of ``spec`` (an experiment file or its loaded spec), skipping complete runs, then the
    ablation, and write ``<out>/report``; returns the report path. ``tensorboard``: a folder that gets
    one TensorBoard log per trained run (``DIR/<run key>``); ``runtime``: device, data folder, download,
    progress, log (:class:`~classrobust.runtime.Runtime`)."""
    runtime = runtime or Runtime()
    log = runtime.log
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
    log(f"experiment {spec.name}: {plural(len(runs), 'run')}"
        + (" + the remove-the-confused-class ablation" if spec.ablation else "") + f" -> {spec.out}")
    # seed by seed, so that an interrupted experiment leaves whole seeds (every method) behind
    states = {}
    for run in sorted(runs, key=lambda r: spec.seeds.index(r.seed)):
        states[run.key] = ensure_run(spec, run, runtime, tensorboard=tensorboard)
    diverged = [r for r in runs if states[r.key] == "diverged"]
    runs = [r for r in runs if states[r.key] != "diverged"]
    if not runs:
        raise NonFiniteError(f"every run of {spec.name} diverged; nothing to compare (records: {DIVERGED} in each "
                             f"run folder under {spec.out / 'runs'})")
    ablations = []
    for a in ablation_runs(spec):
        why = (f"its weak class {a['weak']!r} (worst on the {a['weak_chosen_on']}) is flipped by "
               f"{spec.ablation.attack} mostly into {a['dropped']!r}" if a["variant"] == "confused" else
               f"control: {a['dropped']!r}, drawn at random from the other classes")
        log(f"ablation: {a['base'].key}: {why}; retraining without {a['dropped']!r}")
        if ensure_run(spec, a["retrained"], runtime, tensorboard=tensorboard) == "diverged":
            diverged.append(a["retrained"])
        else:
            ablations.append(a)
    if diverged:
        log(f"{len(diverged)} run(s) diverged and are left out: {', '.join(r.key for r in diverged)}; their "
            "methods are compared on the seeds that finished")
    temperature = None
    if spec.temperature is not None and any(r.method in spec.temperature.methods for r in runs):
        temperature = run_temperature_step(spec, [r for r in runs if r.method in spec.temperature.methods], runtime)
    index = {
        "name": spec.name, "description": spec.description, "source": str(spec.source),
        "eval": eval_settings(spec),
        "runs": [{"key": r.key, "dataset": r.dataset, "dataset_name": r.dataset_name, "method": r.method,
                  "baseline": spec.baselines.get(r.method, next(iter(spec.methods))),
                  "seed": r.seed, "dir": str(Path("runs") / r.key)} for r in runs],
        "diverged": [{"key": r.key, "dataset": r.dataset, "method": r.method, "seed": r.seed,
                      "baseline": spec.baselines.get(r.method, next(iter(spec.methods))),
                      "dir": str(Path("runs") / r.key), **_divergence_summary(diverged_record(spec, r))}
                     for r in diverged],
        "ablation": [{"base": a["base"].key, "retrained": a["retrained"].key,
                      "dir": str(Path("runs") / a["retrained"].key), "dataset": a["base"].dataset,
                      "seed": a["base"].seed, "attack": spec.ablation.attack, "weakest_class": a["weak"],
                      "dropped_class": a["dropped"], "variant": a["variant"], "weak_chosen_on": a["weak_chosen_on"],
                      "confused_chosen_by": a["confused_chosen_by"]}
                     for a in ablations],
        **({"temperature": temperature} if temperature is not None else {}),
        "compare": {"avg": "two-sided", "worst": "two-sided", **spec.compare},
    }
    report = spec.out / "report" / "report.html"
    if is_main():  # under torchrun every process ran the grid; one writes the index and the report
        atomic_write_json(spec.out / INDEX, index)
        (spec.out / PROGRESS).unlink(missing_ok=True)  # continued from an unfinished export: now finished
        report = build_experiment_report(spec.out)
    barrier()
    return report


def _divergence_summary(record: dict[str, Any]) -> dict[str, Any]:
    """What the index says about a diverged run: where it diverged, and whose training it was."""
    return {"diverged_run": record["key"], "epoch": record["epoch"], "step": record["step"],
            **({"declared_failed": record["declared_failed"]} if record.get("declared_failed") else {})}


def declare_failed(spec: ExperimentSpec, key: str, reason: str) -> Path:
    """Record run ``key`` as a final failure (``diverged.json`` with the reason): a run that keeps
    failing is then an outcome the report lists, as a diverged one, and the grid can finish."""
    run = next((r for r in spec.runs if r.key == key), None)
    if run is None:
        raise UsageError(f"{key!r} is not a run of {spec.source}")
    if not reason.strip():
        raise UsageError("--declare-failed needs a reason (say why the run cannot finish)")
    if run_state(spec, run) == "done":
        raise UsageError(f"{key} finished; nothing to declare")
    path = run_dir(spec, run) / DIVERGED
    if path.is_file():
        raise UsageError(f"{path} exists: the run is already final")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"key": run.key, "epoch": 0, "step": 0, "error": f"declared failed: {reason}",
                             "declared_failed": reason, "epochs_completed": 0, "seconds_this_attempt": 0.0,
                             "config": run.config.to_dict()})
    return path


#: per run, what an export keeps: enough to rebuild the report, no weights
EXPORTED_RUN_FILES = ("model.json", "train_log.csv", DIVERGED)
EXPORTED_RESULT_FILES = ("summary.json", "samples.csv.gz", "curves.csv", "distances.csv")


#: the marker of an unfinished experiment's export (a finished one's is the index, ``INDEX``)
PROGRESS = "experiment-progress.json"


def _check_export_dest(out_dir: Path, dest: str | Path) -> Path:
    dest = Path(dest)
    marker = PROGRESS if (dest / PROGRESS).is_file() else INDEX  # either kind of earlier export is ours
    dest = check_own_directory(dest, marker, "--export")
    if dest.resolve() == out_dir.resolve():
        raise UsageError("--export must name another folder than the experiment's")
    return dest


def is_finished(spec: ExperimentSpec) -> bool:
    """Whether ``spec.out`` holds this spec's finished experiment: its index lists exactly the spec's runs
    (not an earlier, smaller grid's) and every run is done."""
    index = spec.out / INDEX
    if not index.is_file():
        return False
    index_data = json.loads(index.read_text())
    keys = {run.key for run in spec.runs}
    # the diverged list also holds ablation retrains, which are not the spec's runs
    listed = {r["key"] for r in index_data.get("runs", [])} | {d["key"] for d in index_data.get("diverged", [])
                                                               if d["key"] in keys}
    return listed == keys and all(run_state(spec, run) in ("done", "diverged") for run in spec.runs)


def export_progress(spec: ExperimentSpec, dest: str | Path) -> dict[str, Any]:
    """Export an *unfinished* experiment into ``dest``: each finished run's sidecar, log and ``eval/``
    records, and the weights only of runs that still have work waiting on them (a trained run not yet
    evaluated, the base of a calibration not yet made), so that ``classrobust experiment FILE --out
    DEST`` continues where ``spec.out`` stopped. Weights an earlier export left in ``dest`` that are no
    longer needed are removed (``dest`` holds only files exports wrote). Returns what the marker
    ``PROGRESS`` records: the runs exported as done (``diverged``: those of them that diverged) and those
    whose weights travel."""
    import shutil

    dest = _check_export_dest(spec.out, dest)
    states = {run.key: run_state(spec, run) for run in spec.runs}
    waiting = {run.base_key for run in spec.runs if run.calibrate is not None and states[run.key] != "done"}
    done = [key for key, state in states.items() if state in ("done", "diverged")]  # diverged: final too
    weighted = [key for key, state in states.items()
                if state == "evaluate" or (key in waiting and state == "done"
                                           and (spec.out / "runs" / key / "model.safetensors").is_file())]
    copies = [f"runs/{key}/{name}" for key in [*done, *weighted] for name in EXPORTED_RUN_FILES]
    copies += [f"runs/{key}/eval/{name}" for key in done for name in EXPORTED_RESULT_FILES]
    copies += [f"runs/{key}/model.safetensors" for key in weighted]
    for stale in dest.glob("runs/**/model.safetensors"):
        if str(stale.relative_to(dest)) not in copies:
            stale.unlink()
    for relative in copies:
        if (spec.out / relative).is_file():
            (dest / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(spec.out / relative, dest / relative)
    progress = {"name": spec.name, "source": str(spec.source), "eval": eval_settings(spec),
                "done": done, "diverged": [key for key, state in states.items() if state == "diverged"],
                "with_weights": weighted,
                "unfinished": [key for key in states if key not in done]}
    atomic_write_json(dest / PROGRESS, progress)
    return progress


def export_experiment(out_dir: str | Path, dest: str | Path) -> Path:
    """Copy what rebuilds the report of the finished experiment in ``out_dir`` into ``dest``: the
    index, every run's per-sample records and summaries (``eval/``, the temperature step's), its
    training sidecar and log, and no weights; then build the report there. ``dest`` is refused if it
    holds files of anything but an earlier export. Returns the report's path. (An unfinished
    experiment: :func:`export_progress`.)"""
    import shutil

    from classrobust.report.experiment import build_experiment_report, load_runs
    from classrobust.workflows.temperature import TEMPERATURE_INDEX

    out_dir = Path(out_dir)
    index, _, _ = load_runs(out_dir)  # refuses an unfinished or foreign folder before anything is copied
    dest = _check_export_dest(out_dir, dest)
    for stale in [*dest.glob("runs/**/model.safetensors"), dest / PROGRESS]:  # an earlier partial export's
        stale.unlink(missing_ok=True)
    folders = [r["dir"] for r in [*index["runs"], *index.get("diverged", [])]] + [a["dir"] for a in index["ablation"]]
    temperature = index.get("temperature")
    results = [f"{d}/eval" for d in folders] + [
        f"{r['dir']}/{sub}" for r in index["runs"] if temperature and r["key"] in temperature["runs"]
        for sub in (temperature["validation_dir"], temperature["dir"])]
    copies = [f"{d}/{name}" for d in folders for name in EXPORTED_RUN_FILES]
    copies += [f"{d}/{name}" for d in results for name in EXPORTED_RESULT_FILES]
    copies += [INDEX] + ([TEMPERATURE_INDEX] if (out_dir / TEMPERATURE_INDEX).is_file() else [])
    for relative in copies:
        if (out_dir / relative).is_file():
            (dest / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out_dir / relative, dest / relative)
    return build_experiment_report(dest)


def missing_data(spec: ExperimentSpec, data_dir=None) -> list[str]:
    """For each dataset of ``spec`` whose files are not where a run would read them, why (a one-line
    message): a grid is not ready to run until this is empty."""
    from classrobust.data import get_dataset
    from classrobust.errors import ClassrobustError

    missing = []
    for alias, entry in spec.datasets.items():
        try:
            get_dataset(entry.get("name", alias), "test", root=data_dir, download=False)
        except ClassrobustError as exc:
            missing.append(f"{alias}: {exc}")
    return missing


def check_experiment(spec: ExperimentSpec) -> list[str]:
    """A plan of what running ``spec`` would do, per run (no data read)."""
    lines = [f"{spec.source}: valid; {plural(len(spec.runs), 'run')} -> {spec.out}",
             f"attacks: {spec.eval['attacks']} (limit {spec.eval['limit'] or 'all'} "
             f"{'validation' if spec.eval.get('split') == 'val' else 'test'} images)"]
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
                f"{c.model} {c.method}{' ' + c.classwise if c.classwise else ''} {plural(c.epochs, 'epoch')}")
        lines.append(f"  {run.key}: {what}, eps {'the dataset default' if eps is None else format_eps(eps)} [{state}]")
    if len(spec.methods) > 1:
        groups: dict[str, list[str]] = {}
        for method, baseline in spec.baselines.items():
            if method != baseline:
                groups.setdefault(baseline, []).append(method)
        lines.append("compared: " + "; ".join(f"{', '.join(m)} against {b}" for b, m in groups.items()))
    if spec.ablation:
        lines.append(f"  ablation: retrain {spec.ablation.method} without the class that receives most of its "
                     f"validation-worst class's flipped {spec.ablation.attack} points"
                     + (", and without a class drawn at random (control)" if spec.ablation.control else "")
                     + f" (seeds {list(spec.ablation.seeds)})")
    if spec.temperature:
        t = spec.temperature
        lines.append(f"  temperature: T among {', '.join(f'{v:g}' for v in t.values)} chosen on {t.val_limit} "
                     f"validation images of the {', '.join(t.methods)} runs, then PGD-{t.steps} against "
                     f"Temperature-PGD-{t.steps} at that T on the test subsets")
    return lines
