"""Learning-rate schedules as per-iteration multipliers of the base rate."""

from __future__ import annotations

import math
from typing import Callable

from classrobust.errors import UsageError


def lr_multiplier(schedule: str, total_steps: int, milestones: tuple[float, ...] = (0.5, 0.75),
                  decay: float = 0.1) -> Callable[[int], float]:
    """``step -> factor``: ``piecewise`` decays by ``decay`` at each milestone (fraction of training);
    ``cosine`` anneals to 0; ``constant`` keeps the base rate."""
    if schedule == "piecewise":
        bounds = [m * total_steps for m in milestones]
        return lambda step: decay ** sum(step >= b for b in bounds)
    if schedule == "cosine":
        return lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    if schedule == "constant":
        return lambda step: 1.0
    raise UsageError(f"unknown schedule {schedule!r}; choose one of: piecewise, cosine, constant")
