"""The calibration frontier of one or more checkpoints: the workflow behind ``classrobust frontier``.

Per checkpoint: per-target margins on its training run's validation split (never the test split),
one offset fit per allowance (:mod:`classrobust.defenses.frontier`), then the uncalibrated model and
every calibrated one evaluated end to end on the same test images with the attacks given. The
record (``frontier.json``) is rewritten after every evaluation, so a killed run continues where it
stopped; a record made with other settings is refused, never mixed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from classrobust.defenses.frontier import ALLOWANCES
from classrobust.errors import UsageError
from classrobust.options import coerce_fields, option
from classrobust.runtime import PRECISIONS, Runtime

FORMAT = "classrobust-frontier/1"
RECORD = "frontier.json"


@dataclass(frozen=True)
class FrontierConfig:
    """The settings of a frontier (``classrobust frontier`` builds its options from these)."""

    allowances: tuple[float, ...] = option(ALLOWANCES, "average-cost allowances, in points of average validation "
                                                       "robust accuracy", kind="floats")
    attacks: str = option("autoattack", "the attacks every model is judged with on the test split (per-point "
                                        "worst case), as for eval")
    limit: int | None = option(None, "evaluate a class-stratified subset of N test images (the same for every model)")
    subset_seed: int = option(0, "seed of the --limit subset")
    eps: float | None = option(None, "perturbation budget (default: the checkpoint's eps)")
    seed: int = option(0, "attack seed")
    precision: str = option("fp32", "attack arithmetic (verdicts are fp32)", choices=PRECISIONS)
    batch_size: int = option(250, "batch size")
    val_size: int = option(2000, "validation images the offsets are fitted on")
    fit_steps: int = option(50, "steps of the fit's targeted-margin attack, per target")
    fit_targets: int = option(9, "targets of the fit's attack (the classes ranked highest after the top one)")

    def __post_init__(self):
        coerce_fields(self)
        if not self.allowances or any(not 0 <= a < 100 for a in self.allowances):
            raise UsageError(f"allowances must be points in [0, 100), got {self.allowances}")
        for name in ("batch_size", "val_size", "fit_steps", "fit_targets"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name.replace('_', ' ')} must be >= 1, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise UsageError(f"limit must be >= 1, got {self.limit}")
        from classrobust.attacks import parse_attack_specs

        parse_attack_specs(self.attacks)


def run_frontier(checkpoints: Sequence[str | Path], out: str | Path, *, config: FrontierConfig | None = None,
                 runtime: Runtime | None = None, **settings: Any) -> Path:
    """The frontier of each checkpoint (classrobust checkpoints of training runs: their config names
    the validation split) into ``out``: frontier.json (the record), frontier.csv, frontier.png,
    frontier.md, and frontier_seeds.csv with two or more checkpoints; ``runtime``: device, data folder,
    download, progress, log (:class:`~classrobust.runtime.Runtime`). Returns ``out``."""
    import numpy as np
    import torch

    from classrobust.attacks import build_attacks
    from classrobust.checkpoint import load_checkpoint, read_checkpoint_meta
    from classrobust.models.adjust import ClassLogitAdjust
    from classrobust.defenses.frontier import fit_frontier
    from classrobust.evaluate.sharded import evaluate_dataset
    from classrobust.io import atomic_write_json, check_own_directory
    from classrobust.report.frontier import write_frontier_files
    from classrobust.results import describe_attack
    from classrobust.runtime import set_tf32, setup_device
    from classrobust.workflows.evaluate import (EvalConfig, evaluation_images, resolve_checkpoint, validation_split,
                                                with_l2_radius)

    config = replace(config or FrontierConfig(), **settings)
    runtime = runtime or Runtime()
    log, progress = runtime.log, runtime.progress
    if not checkpoints:
        raise UsageError("give at least one checkpoint")
    paths = [resolve_checkpoint(c) for c in checkpoints]
    if len(set(map(str, paths))) != len(paths):
        raise UsageError("a checkpoint is given twice")
    metas = [read_checkpoint_meta(p) for p in paths]
    for p, meta in zip(paths, metas):
        if not meta.get("config"):
            raise UsageError(f"{p} has no training config, so its validation split is unknown; the frontier is "
                             "fitted on a training run's validation split (train it with classrobust)")
        if meta.get("calibration") is not None:
            raise UsageError(f"{p} is already calibrated; give the original checkpoint")
    if len({m["dataset"] for m in metas}) > 1:
        raise UsageError("the checkpoints are of different datasets; a frontier compares runs on one test set")
    out = check_own_directory(Path(out), RECORD)  # before any work
    dev, _ = setup_device(runtime.device)
    set_tf32(False)
    eval_config = EvalConfig(attacks=config.attacks, eps=config.eps, limit=config.limit, subset_seed=config.subset_seed,
                             seed=config.seed, precision=config.precision, batch_size=config.batch_size)
    test = evaluation_images(metas[0], eval_config, runtime, paths[0])
    wanted = {"format": FORMAT, "checkpoints": [str(p) for p in paths],
              "checkpoint_sha256": [m.get("sha256") for m in metas], **asdict(config)}
    wanted["allowances"] = list(config.allowances)
    record_path = out / RECORD
    record = None
    if record_path.is_file():
        import json

        record = json.loads(record_path.read_text())
        if record.get("wanted") != wanted:
            raise UsageError(f"{out} holds a frontier with other checkpoints or settings; choose another --out")
        log(f"frontier: continuing ({len(record['rows'])} evaluations done)")
    for path, meta in zip(paths, metas):
        model, meta = load_checkpoint(path, map_location=dev)
        eps = config.eps if config.eps is not None else meta.get("eps", test.threat_model.eps)
        if record is None:
            record = {"wanted": wanted, "classes": list(test.classes), "fits": {}, "rows": [], "settings": {}}
        fit = record["fits"].get(str(path))
        if fit is None:
            val = validation_split(meta, path, runtime, val_size=config.val_size, needs="the frontier")
            log(f"frontier: {path}: fitting offsets on {len(val)} validation images")
            fitted = fit_frontier(model, val, eps=eps, allowances=config.allowances, steps=config.fit_steps,
                                  n_targets=config.fit_targets, seed=config.seed, precision=config.precision,
                                  batch_size=config.batch_size, device=dev, log=log)
            fit = asdict(fitted)
            record["fits"][str(path)] = fit
            atomic_write_json(record_path, record)
        done = {(r["checkpoint"], r["allowance"]) for r in record["rows"]}
        k = len(test.classes)
        points: list[tuple[float | None, list[float], float, float]] = [
            (None, [0.0] * k, fit["base_average"], fit["base_worst"])]  # the uncalibrated model
        points += list(zip(fit["allowances"], fit["offsets"], fit["val_average"], fit["val_worst"]))
        for allowance, offsets, val_avg, val_worst in points:
            if (str(path), allowance) in done:
                continue
            same = next((r for r in record["rows"] if r["checkpoint"] == str(path) and r["offsets"] == offsets), None)
            if same is not None:  # the same model (e.g. no shift pays at allowance 0): the same evaluation
                record["rows"].append({**same, "allowance": allowance, "val_average": val_avg, "val_worst": val_worst})
                atomic_write_json(record_path, record)
                continue
            adjusted = ClassLogitAdjust(model, k).to(dev).set(offsets).eval()
            attacks = build_attacks(with_l2_radius(eval_config, test.threat_model.eps_l2), adjusted,
                                    **eval_config.global_attack_options(eps))
            what = "uncalibrated" if allowance is None else f"allowance {allowance:g}"
            log(f"frontier: {path}: evaluating the {what} model on {len(test)} test images")
            result = evaluate_dataset(adjusted, test, attacks, batch_size=config.batch_size, device=dev,
                                      progress=progress)
            robust = None
            for name in attacks:  # the per-point worst case over every attack
                ok = result.attacks[name].predictions == result.labels
                robust = ok if robust is None else robust & ok
            record["rows"].append({
                "checkpoint": str(path), "allowance": allowance, "offsets": offsets,
                "val_average": val_avg, "val_worst": val_worst,
                "robust_per_class": np.bincount(result.labels, weights=robust, minlength=k).astype(int).tolist(),
                "n_per_class": np.bincount(result.labels, minlength=k).tolist(),
                "seconds": round(sum(result.attacks[n].seconds for n in attacks), 1)})
            record["settings"] = {
                "dataset": metas[0]["dataset"], "test_images": len(test), "subset_seed": config.subset_seed,
                "attacks_described": "; ".join(describe_attack(result.attacks[n].config) for n in attacks),
                "val_size": fit["val_size"], "fit_attack": fit["settings"]["fit_attack"],
                "torch": torch.__version__, "device": str(dev)}
            atomic_write_json(record_path, record)
    write_frontier_files(record, out)
    return out
