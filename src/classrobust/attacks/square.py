"""Square attack (Andriushchenko et al., ECCV 2020, arXiv:1912.00049), L-inf, score-based.

Gradient-free: random square windows are set to +-eps per channel and kept when
the margin loss (true logit minus the largest other) falls. It needs only the
model's outputs, which is why AutoAttack runs it: if it finds errors that
gradient attacks missed, the gradients are likely masked.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from classrobust.attacks.base import FOOL_MARGIN, Attack
from classrobust.attacks.losses import margin
from classrobust.attacks.noise import sample_keys, uniform_from_keys
from classrobust.attacks.pgd import check_steps
from classrobust.errors import UsageError

# fraction of pixels changed per query, as a function of the query number (out of
# 10,000; rescaled to the budget): halved at each of these points
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(p_init: float, query: int, n_queries: int) -> float:
    scaled = int(query / n_queries * 10000)
    return p_init / 2 ** sum(scaled > h for h in _HALVINGS)


class Square(Attack):
    """``x_adv = Square(model, eps=0.1, n_queries=5000)(x, y)``; L-inf only.

    Args:
        n_queries: forward passes per sample (the first is the stripe initialisation).
        p_init: initial fraction of pixels in a square.
    Randomness is keyed per sample (seed and image), like every attack here. A
    sample stops at the first query that fools the model (both modes).
    """

    name = "square"

    def __init__(self, model: nn.Module, *, eps: float, n_queries: int = 5000, p_init: float = 0.8,
                 norm: str = "linf", seed: int = 0, precision: str = "fp32", mode: str = "best"):
        if norm != "linf":
            raise UsageError("square is implemented for the L-inf threat model only")
        super().__init__(model, eps=eps, norm=norm, seed=seed, precision=precision, mode=mode)
        self.n_queries = check_steps(n_queries, "n_queries")
        if not 0 < p_init <= 1:
            raise UsageError(f"p_init must be in (0, 1], got {p_init}")
        self.p_init = float(p_init)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "n_queries": self.n_queries, "p_init": self.p_init}

    @torch.no_grad()
    def margins(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -margin(self.logits(x), y)  # z_y - max other: < 0 means fooled

    @torch.no_grad()
    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if self.eps == 0:
            return x
        keys = sample_keys(x, self.seed)
        stripes = torch.where(uniform_from_keys(keys, (c, 1, w), stream=0) < 0.5, -1.0, 1.0).to(x.dtype)
        best = (x + self.eps * stripes).clamp(0, 1)
        out = best.clone()
        idx = torch.arange(n, device=x.device)
        m_best = self.margins(best, y)
        active = ~self.fooled(best, y, None) if self.precision != "fp32" else m_best >= -FOOL_MARGIN
        idx, x0, ya, xb, mb, kb = idx[active], x[active], y[active], best[active], m_best[active], keys[active]
        rows = torch.arange(h, device=x.device)
        cols = torch.arange(w, device=x.device)
        for query in range(1, self.n_queries):
            if len(idx) == 0:
                break
            p = square_fraction(self.p_init, query, self.n_queries)
            side = max(1, min(h - 1, int(round(math.sqrt(p * h * w)))))
            u = uniform_from_keys(kb, (2 + c,), stream=query)
            top = (u[:, 0] * (h - side + 1)).long()
            left = (u[:, 1] * (w - side + 1)).long()
            sign = torch.where(u[:, 2:] < 0.5, -1.0, 1.0).to(x.dtype)[:, :, None, None]
            window = (((rows[None] >= top[:, None]) & (rows[None] < top[:, None] + side))[:, None, :, None]
                      & ((cols[None] >= left[:, None]) & (cols[None] < left[:, None] + side))[:, None, None, :])
            proposal = (x0 + self.eps * sign).clamp(0, 1)
            # a window already at the proposed corner would waste the query: flip its signs
            same = ((proposal - xb).abs() * window).flatten(1).amax(dim=1) == 0
            if same.any():
                proposal = torch.where(same[:, None, None, None], (x0 - self.eps * sign).clamp(0, 1), proposal)
            candidate = torch.where(window, proposal, xb)
            m_new = self.margins(candidate, ya)
            accept = m_new < mb
            xb = torch.where(accept[:, None, None, None], candidate, xb)
            mb = torch.where(accept, m_new, mb)
            fooled = mb < -FOOL_MARGIN
            if self.precision != "fp32" and fooled.any():
                fooled[fooled.clone()] = self.fooled(xb[fooled], ya[fooled], None)
            if fooled.any():
                out[idx[fooled]] = xb[fooled]
                keep = ~fooled
                idx, x0, ya, xb, mb, kb = idx[keep], x0[keep], ya[keep], xb[keep], mb[keep], kb[keep]
        out[idx] = xb
        return out
