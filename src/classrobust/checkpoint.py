"""Checkpoints: weights in ``NAME.safetensors`` and a JSON sidecar ``NAME.json``.

The sidecar holds what is needed to rebuild the model (model and dataset
names, model kwargs, class names) plus the training config, seed and metrics,
and the SHA-256 of the weights file, so a sidecar paired with the wrong or a
damaged weights file is refused instead of loaded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from classrobust import __version__
from classrobust.errors import CheckpointError, ClassrobustError
from classrobust.io import atomic_write_files, json_bytes

FORMAT = "classrobust-checkpoint-1"
REQUIRED = ("format", "model", "dataset", "classes", "sha256")


def _paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.with_suffix(".safetensors"), path.with_suffix(".json")


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Save ``model``'s weights and ``meta`` atomically; returns the ``.safetensors`` path.

    ``meta`` must name ``model`` and ``dataset`` (registry names) and ``classes``;
    ``model_kwargs``, ``config``, ``seed`` and ``metrics`` are kept as given.
    """
    weights_path, meta_path = _paths(path)
    for key in ("model", "dataset", "classes"):
        if key not in meta:
            raise ValueError(f"checkpoint meta needs {key!r}")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    blob = st_save(state, metadata={"format": FORMAT})
    full = {"format": FORMAT, "classrobust_version": __version__, "torch_version": torch.__version__,
            **meta, "sha256": hashlib.sha256(blob).hexdigest()}
    atomic_write_files({weights_path: blob, meta_path: json_bytes(full)})
    return weights_path


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    weights_path, meta_path = _paths(path)
    if not meta_path.is_file():
        raise CheckpointError(f"checkpoint sidecar {meta_path} not found")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint sidecar {meta_path} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or any(k not in meta for k in REQUIRED):
        raise CheckpointError(f"checkpoint sidecar {meta_path} lacks one of {', '.join(REQUIRED)}")
    if meta["format"] != FORMAT:
        raise CheckpointError(f"{meta_path} has format {meta['format']!r}, expected {FORMAT!r}")
    return meta


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"
                    ) -> tuple[nn.Module, dict[str, Any]]:
    """Load ``(model, meta)``; the model is in eval mode on ``map_location``.

    Raises :class:`CheckpointError` with a one-line reason for a missing,
    truncated, corrupt or mismatched file.
    """
    from classrobust.models import create_model

    weights_path, meta_path = _paths(path)
    if not weights_path.is_file():
        raise CheckpointError(f"checkpoint weights {weights_path} not found")
    meta = read_checkpoint_meta(path)
    blob = weights_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != meta["sha256"]:
        raise CheckpointError(
            f"{weights_path} does not match its sidecar {meta_path.name} (checksum differs): "
            "the file is truncated, corrupt or from another run")
    try:
        state = st_load(blob)
    except (SafetensorError, Exception) as exc:
        raise CheckpointError(f"{weights_path} is not a readable safetensors file: {exc}") from None
    try:
        model = create_model(meta["model"], meta["dataset"], **meta.get("model_kwargs", {}))
    except ClassrobustError as exc:
        raise CheckpointError(f"{meta_path}: {exc}") from None
    if meta.get("calibration") is not None:  # per-class logit offsets / temperatures, inside the model
        from classrobust.models.adjust import ClassLogitAdjust

        model = ClassLogitAdjust(model, len(meta["classes"]))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(
            f"{weights_path} does not fit model {meta['model']!r}: {' '.join(first[:2])}") from None
    return model.to(map_location).eval(), meta
