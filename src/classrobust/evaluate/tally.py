"""Small counters for scripts that measure attacks batch by batch into resumable JSON records
(benchmarks and experiment scripts): per-class counts, the still-correct check, timed sections."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
from torch import nn


def add_per_class(counts: list[int], labels: torch.Tensor | np.ndarray) -> None:
    """Add, in place, how many of ``labels`` fall in each class to ``counts``.

    counts: one int per class (length k, a JSON-friendly list); labels: (N,) ints in [0, k)."""
    labels = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    per_class = np.bincount(labels.astype(np.int64), minlength=len(counts))  # negative labels: ValueError
    if len(per_class) > len(counts):
        raise ValueError(f"label {len(per_class) - 1} outside the record's {len(counts)} classes")
    for c, v in enumerate(per_class):
        counts[c] += int(v)


def still_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N,) bool: whether ``model`` (as it is, no gradients) classifies x: (N, C, H, W) in [0, 1] as y: (N,)."""
    with torch.no_grad():
        return model(x).argmax(1) == y


@contextmanager
def timed(seconds: dict[str, float], key: str) -> Iterator[None]:
    """Add the wall-clock seconds the block takes to ``seconds[key]`` (created at 0)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - t0
