"""Standard (non-adversarial) training: the baseline every robust model is compared with."""

from __future__ import annotations

import torch.nn.functional as F

from classrobust.training.methods.base import TrainingMethod, autocast


class Standard(TrainingMethod):
    name = "standard"
    adversarial = False

    def loss(self, model, x, y, *, eps, seed):
        with autocast(x.device, self.precision):
            logits = model(x)
        return F.cross_entropy(logits.float(), y), logits
