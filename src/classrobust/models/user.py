"""Users' own models: ``python:package.module:factory`` and weights files.

The factory is any callable returning an ``nn.Module`` that maps images in [0, 1] to
logits (put normalisation inside, or pass ``normalize=`` to wrap it). Weights load from
``.safetensors`` or from a PyTorch state dict read with ``weights_only=True``, which refuses
pickled code.
"""

from __future__ import annotations

import importlib
import os
import sys
import pickle
from pathlib import Path

import torch
from torch import nn

from classrobust.errors import CheckpointError, UsageError

PREFIX = "python:"


def is_user_model(name: str) -> bool:
    return name.startswith(PREFIX)


def build_user_model(spec: str) -> nn.Module:
    """``python:package.module:factory`` -> ``factory()``, checked to be an ``nn.Module``."""
    target = spec[len(PREFIX):]
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise UsageError(f"user model {spec!r} must look like python:package.module:factory")
    # found from the current folder, as `python -m classrobust` would (the console script's
    # sys.path does not hold it)
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r} for {spec!r}: {exc} (looked in the current folder "
                         f"{cwd} and on PYTHONPATH)") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UsageError(f"{module_name!r} has no callable {attr!r}")
    model = factory()
    if not isinstance(model, nn.Module):
        raise UsageError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a ``.safetensors`` file or a plain state dict (``weights_only=True``) into ``model``, strictly.

    A state dict of a registry model's bare network (without the ``net.`` / ``normalize.``
    prefixes of classrobust's wrapper) goes into the wrapped network.
    """
    state = read_state(path)
    target = model
    if hasattr(model, "normalize") and hasattr(model, "net") and not any(k.startswith("net.") for k in state):
        target = model.net
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = str(exc).strip().splitlines()
        raise CheckpointError(f"{path} does not fit the model: {' '.join(lines[:2])}") from None
    return model


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``torch.save`` file (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        import re

        # torch's message carries terminal colour codes (ESC[1m ...): not for a log file
        first = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()[0]
        raise CheckpointError(f"refused {path}: it is not a plain state dict, and weights_only loading "
                              f"does not run pickled code ({first})") from None
    except Exception as exc:  # truncated / foreign files raise many types
        raise CheckpointError(f"cannot read weights {path}: {exc}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return state
