"""Auto-PGD (Croce & Hein, ICML 2020, arXiv:2003.01690): APGD with CE or DLR loss, and targeted APGD-T.

APGD needs no step size: it starts at ``2 * eps``, adds momentum (0.75), and at
checkpoints ``w_j`` halves the step of every sample whose loss rose in at most ``rho``
of the steps since the last checkpoint, or whose best loss did not move while its step
was unchanged; such a sample continues from its best point, its momentum term then being
``x_best - x_previous`` (as in the reference implementation, fra31/auto-attack).
Deviations from the reference are listed in docs/attacks.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Callable

import torch
from torch import nn

from classrobust.attacks.base import Attack, shrink_interval
from classrobust.attacks.losses import get_loss, targeted_dlr
from classrobust.attacks.pgd import check_steps
from classrobust.errors import UsageError
from classrobust.runtime import derive_seed

MOMENTUM = 0.75


def apgd_checkpoints(steps: int) -> list[int]:
    """Iterations after which the step size may be halved: p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), times ``steps``."""
    p = [0.0, 0.22]
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    # round first: 0.22 + 0.19 is 0.41000000000000003 in floats, whose ceil would be off by one
    its = {math.ceil(round(q * steps, 9)) for q in p[1:]}
    return sorted(i for i in its if 0 < i < steps)


class APGD(Attack):
    """Untargeted APGD. ``x_adv = APGD(model, eps=8/255, loss="ce", steps=100)(x, y)``.

    Args:
        steps: iterations (the paper's N_iter), >= 1.
        loss: ``"ce"`` or ``"dlr"`` (or any registered loss name).
        restarts: further runs from new random starts for the samples not yet fooled.
        rho: the checkpoint success-rate threshold (0.75 in the paper).
        eot: gradients averaged per step over this many forward passes (expectation over
            transformation, for randomised models; AutoAttack's ``rand`` version uses 20).
    Returns, per sample, a fooling iterate if one was found (``mode="best"``: the first, and the
    sample stops there; ``mode="last"``: the last one of the full run), else the highest-loss iterate.
    """

    name = "apgd"

    def __init__(self, model: nn.Module, *, eps: float, steps: int = 100, loss: str = "ce",
                 restarts: int = 1, rho: float = 0.75, eot: int = 1, norm: str = "linf", seed: int = 0,
                 precision: str = "fp32", mode: str = "best"):
        super().__init__(model, eps=eps, norm=norm, seed=seed, precision=precision, mode=mode)
        self.steps = check_steps(steps)
        self.eot = check_steps(eot, "eot")
        self.restarts = check_steps(restarts, "restarts")
        if not 0 < rho <= 1:
            raise UsageError(f"rho must be in (0, 1], got {rho}")
        self.rho = float(rho)
        self.loss_name = loss
        self._loss = get_loss(loss)
        self.checkpoints = apgd_checkpoints(self.steps)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "steps": self.steps, "loss": self.loss_name,
                "restarts": self.restarts, "rho": self.rho, **({"eot": self.eot} if self.eot > 1 else {})}

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        best_loss = torch.full((len(x),), -float("inf"), device=x.device)
        todo = torch.arange(len(x), device=x.device)
        for restart in range(self.restarts):
            x_r, fooled, loss_r = self.run(x[todo], y[todo], lambda logits, yy, aux: self._loss(logits, yy),
                                           None, derive_seed(self.seed, "restart", restart))
            better = fooled | (loss_r > best_loss[todo])
            out[todo[better]] = x_r[better]
            best_loss[todo[better]] = loss_r[better]
            todo = todo[~fooled]
            if len(todo) == 0:
                break
        return out

    def run(self, x: torch.Tensor, y: torch.Tensor,
            loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor],
            aux: torch.Tensor | None, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One APGD run. ``loss(logits, y, aux)`` -> (N,); ``aux`` is a per-sample tensor
        (e.g. target classes) kept aligned with the samples still attacked.

        Returns (x_out, fooled (N,) bool, best loss (N,)).
        """
        n = len(x)
        out = x.clone()
        out_loss = torch.full((n,), -float("inf"), device=x.device)
        done = torch.zeros(n, dtype=torch.bool, device=x.device)
        drop = self.mode == "best"

        def evaluate(s: _APGDState, xs):
            g, logits = self.loss_grad(xs, s.y, lambda lg, yy: loss(lg, yy, s.aux))
            for _ in range(self.eot - 1):  # a randomised model: the expected gradient, the last draw's logits
                g_more, logits = self.loss_grad(xs, s.y, lambda lg, yy: loss(lg, yy, s.aux))
                g = g + g_more
            return g, logits, loss(logits, s.y, s.aux).detach()

        def remember(s: _APGDState, xs, logits) -> None:  # mode last: keep the latest fooling iterate
            fooled = self.fooled(xs, s.y, logits)
            out[s.idx[fooled]] = xs[fooled]
            done[s.idx[fooled]] = True

        every = shrink_interval(x.device)

        def retire(s: _APGDState, xs, logits, flush: bool) -> _APGDState:
            """Evaluation mode: a sample's first fooling iterate is kept; fooled samples leave the batch
            when ``flush`` (every few steps on a GPU, see SHRINK_EVERY; their later steps are ignored)."""
            fooled = self.fooled(xs, s.y, logits) & ~s.found
            s.x_found = torch.where(fooled.view(s.shape), xs, s.x_found)
            s.found = s.found | fooled
            if not flush or not s.found.any():
                return s
            out[s.idx[s.found]] = s.x_found[s.found]
            done[s.idx[s.found]] = True
            return s.keep(~s.found)

        x_start = self.ball.project(x + self.ball.random_init(x, seed), x) if self.eps > 0 else x
        s = _APGDState.start(x, y, aux, x_start, 2.0 * self.eps)
        s.g, logits, s.loss = evaluate(s, x_start)
        s.g_best, s.loss_best, s.loss_best_ck = s.g, s.loss, s.loss.clone()
        if drop:
            s = retire(s, x_start, logits, flush=every == 1)
        else:
            remember(s, x_start, logits)
        last_ck = 0
        for k in range(self.steps):
            if len(s.idx) == 0:
                break
            x_new = self._next_point(s, first=k == 0)
            g_new, logits, l_new = evaluate(s, x_new)
            s.record(x_new, g_new, l_new)
            if drop:
                s = retire(s, x_new, logits, flush=(k + 1) % every == 0 or k == self.steps - 1)
            else:
                remember(s, x_new, logits)
            if k + 1 in self.checkpoints and len(s.idx):
                s.checkpoint(self.rho * (k + 1 - last_ck))
                last_ck = k + 1
        if len(s.idx):
            out_loss[s.idx] = s.loss_best
            unfooled = ~done[s.idx]  # mode last: samples with a fooling iterate keep it
            out[s.idx[unfooled]] = s.x_best[unfooled]
        return out, done, out_loss

    def _next_point(self, s: "_APGDState", *, first: bool) -> torch.Tensor:
        """The step of size eta along the gradient, then (after the first) the momentum mix."""
        z = self.ball.project(self.ball.step(s.x, s.g, s.eta.view(s.shape)), s.x0)
        if first:
            return z
        return self.ball.project(s.x + MOMENTUM * (z - s.x) + (1 - MOMENTUM) * (s.x - s.x_prev), s.x0)


@dataclass
class _APGDState:
    """The per-sample state of one APGD run, for the samples still attacked (all tensors (M, ...))."""

    idx: torch.Tensor  # positions in the run's batch
    x0: torch.Tensor  # clean inputs
    y: torch.Tensor
    aux: torch.Tensor | None
    x: torch.Tensor  # current iterate
    x_prev: torch.Tensor
    eta: torch.Tensor  # step size per sample
    succ: torch.Tensor  # loss increases since the last checkpoint
    reduced_last: torch.Tensor  # step size halved at the last checkpoint
    g: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    x_best: torch.Tensor | None = None
    g_best: torch.Tensor | None = None
    loss_best: torch.Tensor | None = None
    loss_best_ck: torch.Tensor | None = None  # best loss at the last checkpoint
    found: torch.Tensor | None = None  # evaluation mode: fooled, waiting to leave at the next shrink
    x_found: torch.Tensor | None = None  # its first fooling iterate

    @classmethod
    def start(cls, x0, y, aux, x_start, eta0: float) -> "_APGDState":
        n, dev = len(x0), x0.device
        return cls(idx=torch.arange(n, device=dev), x0=x0, y=y, aux=aux, x=x_start, x_prev=x_start,
                   x_best=x_start, eta=torch.full((n,), eta0, device=dev), succ=torch.zeros(n, device=dev),
                   # as the reference: no sample counts as "not halved last time" at the first checkpoint
                   reduced_last=torch.ones(n, dtype=torch.bool, device=dev),
                   found=torch.zeros(n, dtype=torch.bool, device=dev), x_found=x_start)

    @property
    def shape(self) -> tuple[int, ...]:
        return (-1,) + (1,) * (self.x0.dim() - 1)

    def keep(self, mask: torch.Tensor) -> "_APGDState":
        return _APGDState(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[mask])
                             for f in fields(self)})

    def record(self, x_new, g_new, l_new) -> None:
        """Count the loss increase, keep the best point so far, advance the iterate."""
        self.succ += (l_new > self.loss).float()
        better = l_new > self.loss_best
        self.x_best = torch.where(better.view(self.shape), x_new, self.x_best)
        self.g_best = torch.where(better.view(self.shape), g_new, self.g_best)
        self.loss_best = torch.where(better, l_new, self.loss_best)
        self.x_prev, self.x, self.g, self.loss = self.x, x_new, g_new, l_new

    def checkpoint(self, min_successes: float) -> None:
        """Halve eta where at most ``min_successes`` steps raised the loss, or the best loss stalled
        (and eta was not halved at the last checkpoint); those samples continue from their best
        point. ``x_prev`` stays: the next momentum term is ``x_best - x_prev``, as in the reference."""
        stalled = (~self.reduced_last) & (self.loss_best <= self.loss_best_ck)
        reduce = (self.succ <= min_successes) | stalled
        self.eta = torch.where(reduce, self.eta / 2, self.eta)
        r = reduce.view(self.shape)
        self.x = torch.where(r, self.x_best, self.x)
        self.g = torch.where(r, self.g_best, self.g)
        self.reduced_last = reduce
        self.loss_best_ck = self.loss_best.clone()
        self.succ.zero_()


class APGDT(APGD):
    """Targeted APGD with the targeted DLR loss, over the ``n_targets`` classes the
    clean model ranks highest after the top one; each target runs only on the
    samples earlier targets did not fool (untargeted success counts)."""

    name = "apgd-t"
    steps_sanity_check = False

    def __init__(self, model: nn.Module, *, eps: float, steps: int = 100, n_targets: int = 9,
                 restarts: int = 1, rho: float = 0.75, norm: str = "linf", seed: int = 0,
                 precision: str = "fp32", mode: str = "best"):
        super().__init__(model, eps=eps, steps=steps, loss="dlr", restarts=restarts, rho=rho,
                         norm=norm, seed=seed, precision=precision, mode=mode)
        self.n_targets = check_steps(n_targets, "n_targets")
        self.loss_name = "targeted-dlr"

    def config(self) -> dict[str, Any]:
        return {**super().config(), "n_targets": self.n_targets}

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            clean_logits = self.logits(x)
        k = clean_logits.shape[1]
        if k < 4:
            raise UsageError(f"apgd-t needs at least 4 classes (targeted DLR), the model has {k}")
        order = clean_logits.argsort(dim=1, descending=True)
        out = x.clone()
        todo = torch.arange(len(x), device=x.device)
        for t in range(1, min(self.n_targets, k - 1) + 1):
            for restart in range(self.restarts):
                target = order[todo, t]
                x_r, fooled, _ = self.run(x[todo], y[todo], lambda lg, yy, tg: targeted_dlr(lg, yy, tg),
                                          target, derive_seed(self.seed, "restart", restart, t))
                # a sample keeps the output of its last run unless an earlier one fooled it
                out[todo] = x_r
                todo = todo[~fooled]
                if len(todo) == 0:
                    return out
        return out
