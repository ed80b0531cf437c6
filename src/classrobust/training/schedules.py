"""Learning-rate schedules as per-iteration multipliers of the base rate."""

from __future__ import annotations

import math
from typing import Callable

from classrobust.errors import UsageError


SCHEDULES = ("piecewise", "cosine", "cyclic", "constant")


def lr_multiplier(schedule: str, total_steps: int, milestones: tuple[float, ...] = (0.5, 0.75),
                  decay: float = 0.1, warmup_steps: float = 0.0) -> Callable[[int], float]:
    """``step -> factor`` of the base learning rate.

    ``piecewise`` multiplies by ``decay`` at each milestone (a fraction of training); ``cosine``
    anneals to 0; ``cyclic`` rises linearly from 0 to 1 over the first 40% and falls back to 0
    (the one-cycle schedule of fast adversarial training); ``constant`` keeps the base rate.
    ``warmup_steps`` ramps any schedule linearly from 0 over that many steps.
    """
    if schedule == "piecewise":
        bounds = [m * total_steps for m in milestones]

        def base(step):
            return decay ** sum(step >= b for b in bounds)
    elif schedule == "cosine":
        def base(step):
            return 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    elif schedule == "cyclic":
        peak = 0.4 * total_steps

        def base(step):
            return step / peak if step < peak else max(0.0, (total_steps - step) / (total_steps - peak))
    elif schedule == "constant":
        def base(step):
            return 1.0
    else:
        raise UsageError(f"unknown schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}")
    if warmup_steps > 0:
        return lambda step: base(step) * min(1.0, (step + 1) / warmup_steps)
    return base
