"""Square attack (Andriushchenko et al., ECCV 2020, arXiv:1912.00049), L-inf and L2, score-based.

Gradient-free: it changes the perturbation inside random square windows and keeps a change
when the margin loss (true logit minus the largest other) falls. It needs only the model's
outputs, which is why AutoAttack runs it: if it finds errors that gradient attacks missed,
the gradients are likely masked.

* L-inf: a window's pixels are set to ``x +- eps`` (one sign per channel).
* L2: the perturbation's mass in two windows is moved into the first, on top of a
  centred pattern of opposite-signed halves, and the whole perturbation is rescaled to norm
  ``eps``.

The window's side follows the fraction ``p`` of pixels changed per query, halved after
queries 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000: AutoAttack's (reference) schedule, by
query number and not rescaled to the budget. ``rescale_schedule=True`` stretches it over the
budget as if it had 10,000 queries (the Square paper's code for budgets other than 10,000).
Deviations from the reference (per-sample windows; a window that would not change the point is
flipped) are listed in docs/attacks.md.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from classrobust.attacks.base import FOOL_MARGIN, Attack, shrink_interval
from classrobust.attacks.losses import margin
from classrobust.attacks.noise import sample_keys, uniform_from_keys
from classrobust.attacks.pgd import check_steps
from classrobust.errors import UsageError

#: p is halved once the query number passes each of these
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
#: L2 initialisation: a grid of tiles of side H // this
_L2_TILES = 5


def square_fraction(p_init: float, query: int, n_queries: int, rescale: bool = False) -> float:
    """The fraction of pixels a window covers at 0-based ``query`` (the initialisation not counted)."""
    it = int(query / n_queries * 10000) if rescale else query
    return p_init / 2 ** sum(it > h for h in _HALVINGS)


def l2_pattern(side: int, device=None) -> torch.Tensor:
    """(side, side) L2 window pattern of unit norm: the top half a positive bump, the bottom half a
    negative one, each bump the sum of 1/(k+1)^2 over the nested centred squares k around its centre."""

    def bump(rows: int, cols: int) -> torch.Tensor:
        if rows == 0:
            return torch.zeros(0, cols, device=device)
        r = (torch.arange(rows, device=device) - rows // 2).abs()
        c = (torch.arange(cols, device=device) - cols // 2).abs()
        ring = torch.maximum(r[:, None], c[None, :])  # Chebyshev distance from the centre
        n_rings = max(rows // 2, cols // 2) + 1
        weights = 1.0 / torch.arange(1, n_rings + 1, device=device, dtype=torch.float32) ** 2
        tail = weights.flip(0).cumsum(0).flip(0)  # tail[k] = sum of weights[k:]
        out = tail[ring]
        return out / out.norm()

    pattern = torch.cat([bump(side // 2, side), -bump(side - side // 2, side)])
    return pattern / pattern.norm()


class Square(Attack):
    """``x_adv = Square(model, eps=0.1, n_queries=5000)(x, y)``, L-inf or L2.

    Args:
        n_queries: queries after the initialisation (the model sees each sample up to
            ``n_queries + 1`` times, as in the reference).
        p_init: initial fraction of pixels in a window.
        rescale_schedule: stretch p's schedule over ``n_queries`` (see the module docstring).
    Randomness is keyed per sample (seed and image), like every attack here; each sample draws
    its own windows. A sample stops at the first query that fools the model (both modes).
    """

    name = "square"
    steps_sanity_check = False

    def __init__(self, model: nn.Module, *, eps: float, n_queries: int = 5000, p_init: float = 0.8,
                 rescale_schedule: bool = False, norm: str = "linf", seed: int = 0, precision: str = "fp32",
                 mode: str = "best"):
        super().__init__(model, eps=eps, norm=norm, seed=seed, precision=precision, mode=mode)
        self.n_queries = check_steps(n_queries, "n_queries")
        if not 0 < p_init <= 1:
            raise UsageError(f"p_init must be in (0, 1], got {p_init}")
        self.p_init = float(p_init)
        self.rescale_schedule = bool(rescale_schedule)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "n_queries": self.n_queries, "p_init": self.p_init,
                "rescale_schedule": self.rescale_schedule}

    @torch.no_grad()
    def margins(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -margin(self.logits(x), y)  # z_y - max other: < 0 means fooled

    def side(self, query: int, h: int, w: int) -> int:
        p = square_fraction(self.p_init, query, self.n_queries, self.rescale_schedule)
        side = int(round(math.sqrt(p * h * w)))
        if self.norm == "l2":  # odd and at least 3, so that the pattern has a centre and two halves
            side = max(side, 3)
            side += 1 - side % 2
        return max(1, min(side, h, w))

    @torch.no_grad()
    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.eps == 0:
            return x
        n = len(x)
        keys = sample_keys(x, self.seed)
        best = self._init(x, keys)
        out = best.clone()
        m_best = self.margins(best, y)
        active = ~self.fooled(best, y, None) if self.precision != "fp32" else m_best >= -FOOL_MARGIN
        idx = torch.arange(n, device=x.device)
        idx, x0, ya, xb, mb, kb = idx[active], x[active], y[active], best[active], m_best[active], keys[active]
        # fp32 verdicts need no host read per query: a fooled sample is frozen in the batch (no
        # further proposal is accepted) and the batch shrinks every few queries (each shrink is
        # one synchronisation on a GPU); proposals are keyed per sample, so the result is the
        # same as shrinking after every query. bf16 verdicts are confirmed in fp32 at once.
        every = shrink_interval(x.device) if self.precision == "fp32" else 1
        done = torch.zeros(len(idx), dtype=torch.bool, device=x.device)
        propose = self._linf_proposal if self.norm == "linf" else self._l2_proposal
        for query in range(self.n_queries):
            if len(idx) == 0:
                break
            candidate = propose(x0, xb, kb, query)
            m_new = self.margins(candidate, ya)
            accept = (m_new < mb) & ~done
            xb = torch.where(accept[:, None, None, None], candidate, xb)
            mb = torch.where(accept, m_new, mb)
            fooled = mb < -FOOL_MARGIN
            if self.precision != "fp32" and fooled.any():
                fooled[fooled.clone()] = self.fooled(xb[fooled], ya[fooled], None)
            done = done | fooled
            if ((query + 1) % every == 0 or query == self.n_queries - 1) and done.any():
                out[idx[done]] = xb[done]
                keep = ~done
                idx, x0, ya, xb, mb, kb = idx[keep], x0[keep], ya[keep], xb[keep], mb[keep], kb[keep]
                done = done[keep]
        out[idx] = xb
        return out

    # -- initialisation -----------------------------------------------------------
    def _init(self, x: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if self.norm == "linf":  # vertical stripes of +-eps, one sign per (channel, column)
            stripes = torch.where(uniform_from_keys(keys, (c, 1, w), stream=0) < 0.5, -1.0, 1.0).to(x.dtype)
            return (x + self.eps * stripes).clamp(0, 1)
        # L2: a grid of tiles, each the window pattern with a random sign per channel (and a
        # random orientation), rescaled to norm eps
        tile = max(1, h // _L2_TILES)
        start = max(0, (h - tile * _L2_TILES) // 2)
        grid = list(range(start, h - tile + 1, tile))[: h // tile]
        cols = list(range(start, w - tile + 1, tile))[: w // tile]
        u = uniform_from_keys(keys, (len(grid) * len(cols), c + 1), stream=0)
        pattern = l2_pattern(tile, x.device).to(x.dtype)
        delta = torch.zeros_like(x)
        for t, (top, left) in enumerate((r, q) for r in grid for q in cols):
            sign = torch.where(u[:, t, :c] < 0.5, -1.0, 1.0).to(x.dtype)[:, :, None, None]
            shape = torch.where(u[:, t, c, None, None] < 0.5, pattern, pattern.T)[:, None]
            delta[:, :, top:top + tile, left:left + tile] += sign * shape
        return (x + self.eps * _unit_l2(delta)).clamp(0, 1)

    # -- proposals ------------------------------------------------------------------
    def _window(self, u_top, u_left, side: int, h: int, w: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample window (N, 1, H, W) bool at a random position, and its row/column offsets."""
        top = (u_top * (h - side + 1)).long().clamp(max=h - side)
        left = (u_left * (w - side + 1)).long().clamp(max=w - side)
        rows = torch.arange(h, device=device)[None] - top[:, None]  # (N, H) position within the window
        cols = torch.arange(w, device=device)[None] - left[:, None]
        inside = ((rows >= 0) & (rows < side))[:, None, :, None] & ((cols >= 0) & (cols < side))[:, None, None, :]
        return inside, rows, cols

    def _linf_proposal(self, x0, xb, kb, query: int) -> torch.Tensor:
        _, c, h, w = x0.shape
        side = self.side(query, h, w)
        u = uniform_from_keys(kb, (2 + c,), stream=query + 1)
        window, _, _ = self._window(u[:, 0], u[:, 1], side, h, w, x0.device)
        sign = torch.where(u[:, 2:] < 0.5, -1.0, 1.0).to(x0.dtype)[:, :, None, None]
        proposal = (x0 + self.eps * sign).clamp(0, 1)
        # a window already at the proposed corner would waste the query: flip its signs
        same = ((proposal - xb).abs() * window).flatten(1).amax(dim=1) == 0
        proposal = torch.where(same[:, None, None, None], (x0 - self.eps * sign).clamp(0, 1), proposal)
        return torch.where(window, proposal, xb)

    def _l2_proposal(self, x0, xb, kb, query: int) -> torch.Tensor:
        _, c, h, w = x0.shape
        side = self.side(query, h, w)
        u = uniform_from_keys(kb, (5 + c,), stream=query + 1)
        first, rows, cols = self._window(u[:, 0], u[:, 1], side, h, w, x0.device)
        second, _, _ = self._window(u[:, 2], u[:, 3], side, h, w, x0.device)
        delta = xb - x0
        per_channel = lambda t: t.pow(2).sum(dim=(2, 3), keepdim=True).sqrt()  # noqa: E731
        in_first = per_channel(delta * first)
        in_both = per_channel(delta * (first | second))
        total = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        # the pattern placed at each sample's window, in a random orientation
        pattern = l2_pattern(side, x0.device).to(x0.dtype)
        r, q = rows.clamp(0, side - 1), cols.clamp(0, side - 1)
        placed = torch.where(u[:, 4, None, None] < 0.5, pattern[r[:, :, None], q[:, None, :]],
                             pattern[q[:, None, :], r[:, :, None]])[:, None] * first
        sign = torch.where(u[:, 5:] < 0.5, -1.0, 1.0).to(x0.dtype)[:, :, None, None]
        new = placed * sign + delta * first / (in_first + 1e-12)
        room = ((self.eps ** 2 - total ** 2).clamp_min(0) / c + in_both ** 2).sqrt()
        new = new / (per_channel(new) + 1e-12) * room
        delta = torch.where(first, new, torch.where(second, torch.zeros_like(delta), delta))
        return (x0 + self.eps * _unit_l2(delta)).clamp(0, 1)


def _unit_l2(delta: torch.Tensor) -> torch.Tensor:
    return delta / (delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-12)
