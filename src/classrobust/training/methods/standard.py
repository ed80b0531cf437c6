"""Standard (non-adversarial) training: the baseline every robust model is compared with."""

from __future__ import annotations

import torch.nn.functional as F

from classrobust.runtime import autocast
from classrobust.training.methods.base import TrainingMethod


class Standard(TrainingMethod):
    name = "standard"

    def loss(self, model, x, y, *, eps, seed, terms=None):
        with autocast(x.device, self.precision):
            logits = model(x)
        return F.cross_entropy(logits.float(), y), logits
