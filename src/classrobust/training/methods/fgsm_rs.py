"""Fast adversarial training (Wong et al., ICLR 2020, arXiv:2001.03994): FGSM from a uniform
random start with step 1.25 * eps, used with a cyclic learning rate (``--schedule cyclic``)."""

from __future__ import annotations

import torch.nn.functional as F

from classrobust.runtime import autocast
from classrobust.training.methods.base import TrainingMethod

STEP_FACTOR = 1.25


class FGSMRS(TrainingMethod):
    name = "fgsm-rs"

    def loss(self, model, x, y, *, eps, seed, terms=None):
        if eps > 0:
            alpha = self.alpha if self.alpha is not None else STEP_FACTOR * eps
            x = self.inner_attack(model, x, y, eps=eps, seed=seed, alpha=alpha, steps=1)
        with autocast(x.device, self.precision):
            logits = model(x)
        return F.cross_entropy(logits.float(), y), logits
