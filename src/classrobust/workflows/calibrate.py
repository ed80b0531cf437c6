"""Calibrate a checkpoint into a new one: the workflow behind ``classrobust calibrate``."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from classrobust.defenses.calibrate import CalibrateConfig, Calibration, calibrate
from classrobust.errors import UsageError
from classrobust.io import check_writable
from classrobust.runtime import Runtime, barrier, is_main, set_tf32

#: checkpoint-meta keys that describe the file, not the model, and are rewritten for the new one
_FILE_KEYS = ("format", "classrobust_version", "torch_version", "sha256")


def calibrate_checkpoint(src: str | Path, out: str | Path, *, config: CalibrateConfig | None = None,
                         runtime: Runtime | None = None, **settings: Any) -> tuple[Path, Calibration]:
    """Fit per-class logit offsets for checkpoint ``src`` on its validation split (never the test
    split) and save the calibrated model as the new checkpoint ``out``; ``src`` is never modified.

    ``settings`` (any :class:`CalibrateConfig` field) override ``config``; ``runtime``: device, data
    folder, log (:class:`~classrobust.runtime.Runtime`). Returns ``(out, Calibration)``.
    """
    from classrobust.checkpoint import save_checkpoint
    from classrobust.workflows.evaluate import load_trained_run, resolve_checkpoint

    config = replace(config or CalibrateConfig(), **settings)
    runtime = runtime or Runtime()
    log = runtime.log

    src, out = resolve_checkpoint(src), Path(out)
    if out.suffix != ".safetensors":
        out = out.with_suffix(".safetensors")
    if out.resolve() == src.with_suffix(".safetensors").resolve():
        raise UsageError("--out is the input checkpoint; calibration writes a new checkpoint")
    if out.exists() or out.with_suffix(".json").exists():
        raise UsageError(f"{out} already exists; choose another --out (nothing is overwritten)")
    check_writable(out.parent)  # before the fit: a folder that cannot be made fails now
    set_tf32(False)
    # the training run's own validation split (its fraction, seed and dropped classes); under torchrun
    # the validation attacks are sharded, rank 0 alone writes
    run = load_trained_run(src, runtime, val_size=config.val_size, eps=config.eps, needs="calibration",
                           uncalibrated=True)
    model, meta, val, eps, dev = run.model, run.meta, run.val, run.eps, run.device
    started = time.perf_counter()
    how = (f"targeted margins, {config.fit_steps} steps x {config.targets} targets" if config.fit == "margins"
           else f"PGD-{config.fit_steps} refit")
    log(f"calibrating {src} on {len(val)} validation images ({how}, eps {eps:g}); "
        f"allowed average loss {config.max_avg_drop:g} points")
    adjusted, fit = calibrate(model, val, eps=eps, steps=config.fit_steps, seed=config.seed, precision=config.precision,
                              max_avg_drop=config.max_avg_drop, fit_temperature=config.temperature,
                              rounds=config.rounds, fit=config.fit, targets=config.targets, device=dev, log=log)
    settings_meta = {"source": str(src), "source_sha256": meta["sha256"], "eps": eps, **config.recorded(),
                     "val_size": len(val)}
    new_meta = {k: v for k, v in meta.items() if k not in _FILE_KEYS}
    new_meta["calibration"] = {**fit.to_meta(settings_meta), "seconds": round(time.perf_counter() - started, 2)}
    if is_main():
        out.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(out, adjusted.cpu(), new_meta)
    barrier()
    return out, fit
