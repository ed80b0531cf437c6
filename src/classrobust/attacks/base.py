"""The one attack base class.

Subclasses implement :meth:`Attack.perturb` on a private copy of the inputs;
the base class does everything every attack must get right:

* the model is put in eval mode and its mode restored afterwards (``try/finally``);
* no parameter gradients are computed or accumulated (``requires_grad`` is
  switched off for the duration and restored);
* the caller's tensors are never modified;
* the result is projected onto the threat model and [0, 1];
* randomness comes from per-sample keyed noise (:mod:`classrobust.attacks.noise`),
  never from the global RNG, so a seed fixes the result and a sample gets the
  same result alone or in any batch;
* bf16 autocast only when asked for (``precision="bf16"``); losses are in fp32.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from classrobust.attacks.losses import LossFn, margin
from classrobust.attacks.balls import make_ball
from classrobust.errors import ClassrobustError, NonFiniteError, UsageError
from classrobust.runtime import autocast, check_precision, fast_layout, fast_weights, model_mode


@contextlib.contextmanager
def frozen_eval(model: nn.Module):
    """The model in eval mode with parameters not requiring gradients, and its convolutions in
    the CPU's fast layout (:func:`fast_weights`); all restored on exit, also after an error.
    Input gradients then cost no parameter-gradient work."""
    frozen = [p for p in model.parameters() if p.requires_grad]
    try:
        with model_mode(model, False):
            for p in frozen:
                p.requires_grad_(False)
            with fast_weights(model):
                yield model
    finally:
        for p in frozen:
            p.requires_grad_(True)


MODES = ("best", "last")
#: evaluation mode drops fooled samples from the batch every this many steps: shrinking needs the
#: device's verdicts on the host (a synchronisation), free on the CPU, a stall on a GPU; between
#: shrinks a fooled sample stays in the batch, frozen at its first fooling iterate (same results)
SHRINK_EVERY = {"cpu": 1, "cuda": 4}


def shrink_interval(device: torch.device) -> int:
    return SHRINK_EVERY.get(device.type, 4)

#: A sample counts as fooled during an attack only if a wrong class beats the true one by this
#: much (in logits): the first fooling iterate sits right at the decision boundary, and the
#: evaluation's own fp32 forward pass, in another batch composition, could round it back.
FOOL_MARGIN = 1e-4
#: bf16 logits only pre-select the samples an fp32 forward pass then judges. A sample is a
#: candidate if its bf16 margin is within this fraction of its largest |logit| of fooling the
#: model: on the demo model, every fp32-fooled iterate that bf16 called correct (47 of 10,235
#: over PGD-20 on 2,000 images) had a bf16 margin within 0.0075 of it; this leaves 4x slack.
BF16_CANDIDATE_SLACK = 1 / 32


#: The margin is absolute, in logit units: the rounding it guards against, measured on the demo
#: model (the same 500 images in other batch sizes and memory layouts), moved logits by at most
#: 3.8e-6, or 3.4e-7 of the largest |logit|. It fits logits of everyday scale (largest |logit|
#: from ~0.1 to ~300); outside that :func:`output_scale_warning` says so.
LOGIT_SCALE_RANGE = (0.1, 300.0)


def output_scale_warning(logits: torch.Tensor) -> str | None:
    """One line if a model's outputs (N, K) do not look like logits the fooling margin fits: a
    probability vector per row, or a median largest |logit| outside :data:`LOGIT_SCALE_RANGE`."""
    logits = logits.detach().float()
    if not len(logits):
        return None
    rows = logits.sum(dim=1)
    if bool(((logits >= -1e-5) & (logits <= 1 + 1e-5)).all() and ((rows - 1).abs() < 1e-4).all()):
        return ("warning: the model's outputs look like probabilities (each row in [0, 1], summing to 1); "
                "attacks and their verdicts expect logits: pass the model without its softmax")
    scale = float(logits.abs().amax(dim=1).median())
    low, high = LOGIT_SCALE_RANGE
    if scale < low:
        return (f"warning: the model's logits are tiny (median largest |logit| {scale:.2g}): the attacks' "
                f"fooling margin ({FOOL_MARGIN:g}, absolute) is a large part of them; rescale the outputs")
    if scale > high:
        return (f"warning: the model's logits are huge (median largest |logit| {scale:.3g}): fp32 rounding may "
                f"exceed the attacks' fooling margin ({FOOL_MARGIN:g}, absolute); rescale the outputs")
    return None


def wrong_by_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N,) bool: the largest other logit exceeds the true logit by more than FOOL_MARGIN."""
    return margin(logits, y) > FOOL_MARGIN


class Attack:
    """Base class: ``x_adv = attack(x, y)``.

    Args:
        model: maps images (N, C, H, W) in [0, 1] to logits (N, K).
        eps: radius of the threat model, in pixel units of [0, 1] images; >= 0. A tensor (N,)
            gives each sample of the (single) batch its own radius (``mode="last"`` only).
        norm: ``"linf"`` or ``"l2"``.
        seed: fixes random starts (per sample, see :mod:`classrobust.attacks.noise`).
        precision: ``"fp32"`` or ``"bf16"`` (autocast for the model's forward/backward).
        mode: ``"best"`` (evaluation mode: a sample stops being attacked at the first
            iterate that fools the model, and that iterate is returned) or ``"last"``
            (every sample runs all iterations; the attack's own final output, e.g. the
            last PGD iterate). Iterative attacks honour it; one-step attacks ignore it.
    """

    #: registry / CLI name, set by subclasses
    name = "attack"
    #: capabilities the library reads from the class (through the registry's builder), never from
    #: name lists: ``steps_sanity_check`` says whether "twice the steps never raises robust accuracy"
    #: applies (an iterative white-box search whose steps are its budget; not a gradient-free
    #: search, an ensemble, or APGD-T, whose nine targets make doubling too costly)
    steps_sanity_check = True

    def __init__(self, model: nn.Module, *, eps: float, norm: str = "linf", seed: int = 0,
                 precision: str = "fp32", mode: str = "best"):
        if not isinstance(model, nn.Module):
            raise UsageError("attack needs an nn.Module model")
        radius: float | torch.Tensor = eps
        self.eps_per_sample: torch.Tensor | None = None
        if isinstance(eps, torch.Tensor):  # one radius per sample (class-wise training budgets)
            if mode != "last":
                raise UsageError("a per-sample eps needs mode='last' (the training-time attack)")
            self.eps_per_sample = eps.detach().float().flatten()
            radius = self.eps_per_sample.view(-1, 1, 1, 1)
            eps = float(self.eps_per_sample.max()) if len(self.eps_per_sample) else 0.0
            if not bool((self.eps_per_sample >= 0).all()):
                raise UsageError("per-sample eps must be >= 0")
        if eps is None or not eps >= 0:
            raise UsageError(f"eps must be >= 0, got {eps}")
        if norm == "linf" and eps > 1:
            raise UsageError(f"L-inf eps {eps} is larger than the image range [0, 1]")
        check_precision(precision)
        if mode not in MODES:
            raise UsageError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.model = model
        self.eps = float(eps)  # the largest radius when eps is per sample
        self.norm = norm
        self.ball = make_ball(norm, self.eps if self.eps_per_sample is None else radius)
        self.seed = int(seed)
        self.precision = precision
        self.mode = mode
        # set for the duration of a __call__: the label maximum and the device-side finiteness flag
        self._label_max: int | None = None
        self._nonfinite: torch.Tensor | None = None

    # -- public -----------------------------------------------------------------
    def __call__(self, x: torch.Tensor, y: torch.Tensor, *, validate: bool = True) -> torch.Tensor:
        """Attack a batch. x: (N, C, H, W) in [0, 1]; y: (N,) int64 -> x_adv like x.

        ``validate=False`` skips the checks of the inputs, the label range and the logits'
        finiteness (four host synchronisations): for callers that check their own data and losses,
        such as the training loop's inner attack.
        """
        if x.shape[0] == 0:
            if validate:
                self._check_inputs(x, y)
            return x.detach().clone()
        x_adv = self._guarded(self.perturb, x, y, validate)
        return self.ball.project(x_adv.detach().to(x.dtype), x)

    def _guarded(self, search, x: torch.Tensor, y: torch.Tensor, validate: bool):
        """``search(x, y)`` on private copies of a non-empty batch, with the model frozen in eval mode
        and the inputs, labels and logits checked (see :meth:`__call__`)."""
        if validate:
            self._check_inputs(x, y)
        if self.eps_per_sample is not None and len(self.eps_per_sample) != len(x):
            raise UsageError(f"per-sample eps has {len(self.eps_per_sample)} entries for a batch of {len(x)}")
        x = x.detach().clone()
        y = y.detach().clone()
        # checks that need the device's values happen once per call, not once per step
        # (each would be a host synchronisation on a GPU): the label range here, the logits'
        # finiteness accumulated on the device and read once at the end
        self._label_max = int(y.max()) if validate else -1
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=x.device)
        try:
            with frozen_eval(self.model):
                found = search(x, y)
            if validate and bool(self._nonfinite):
                raise NonFiniteError("model returned NaN or infinite logits")
        finally:
            self._label_max = self._nonfinite = None
        return found

    def config(self) -> dict[str, Any]:
        """Hyperparameters as recorded next to results."""
        return {"attack": self.name, "eps": self.eps, "norm": self.norm, "seed": self.seed,
                "precision": self.precision, "mode": self.mode}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "attack")
        return f"{type(self).__name__}({args})"

    # -- for subclasses ---------------------------------------------------------
    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Model output as fp32 logits, checked for shape."""
        with autocast(x.device, self.precision):
            out = self.model(fast_layout(x))
        if out.dim() != 2 or out.shape[0] != x.shape[0]:
            raise ClassrobustError(
                f"model returned shape {tuple(out.shape)}; expected logits (N={x.shape[0]}, K)")
        return out.float()

    def loss_grad(self, x_adv: torch.Tensor, y: torch.Tensor, loss_fn: LossFn
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient of the summed per-sample loss w.r.t. the input, and the logits.

        Summing per-sample losses keeps each sample's gradient independent of the batch.
        """
        x_adv = x_adv.detach().requires_grad_(True)
        inside_call = self._nonfinite is not None
        with torch.enable_grad():
            logits = self.logits(x_adv)
            label_max = self._label_max if inside_call else int(y.max())
            if label_max >= logits.shape[1]:
                raise UsageError(f"label {label_max} is out of range for a model with {logits.shape[1]} outputs")
            loss = loss_fn(logits, y)
            finite = torch.isfinite(logits).all()
            if inside_call:
                self._nonfinite |= ~finite
            elif not finite:
                raise NonFiniteError("model returned NaN or infinite logits")
            (grad,) = torch.autograd.grad(loss.sum(), x_adv)
        return grad.detach(), logits.detach()

    @torch.no_grad()
    def fooled(self, x_adv: torch.Tensor, y: torch.Tensor, logits: torch.Tensor | None = None
               ) -> torch.Tensor:
        """(N,) bool: does ``x_adv`` fool the model, by more than FOOL_MARGIN? Decided in fp32.

        ``logits`` already computed in fp32 are reused; bf16 logits only pre-select
        candidates (fooled, or within ``BF16_CANDIDATE_SLACK`` of it), which an fp32 forward
        then judges, so bf16 search takes the same decisions as fp32 at every iterate.
        """
        if logits is None:
            return wrong_by_margin(self.model(fast_layout(x_adv)).float(), y)
        if self.precision == "fp32":
            return wrong_by_margin(logits, y)
        candidates = margin(logits, y) > -BF16_CANDIDATE_SLACK * logits.abs().amax(dim=1)
        if not candidates.any():
            return candidates
        confirmed = torch.zeros_like(candidates)
        idx = candidates.nonzero().flatten()
        confirmed[idx] = wrong_by_margin(self.model(fast_layout(x_adv[idx])).float(), y[idx])
        return confirmed

    # -- checks -----------------------------------------------------------------
    @staticmethod
    def _check_inputs(x: torch.Tensor, y: torch.Tensor) -> None:
        if not torch.is_tensor(x) or not x.is_floating_point():
            raise UsageError("images must be a floating-point tensor")
        if not torch.is_tensor(y) or y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise UsageError(f"labels must be a 1-D tensor of length {x.shape[0]}")
        if y.is_floating_point():
            raise UsageError("labels must be integers")
        if x.numel():
            low, high = torch.stack(torch.aminmax(x.detach())).tolist()  # one synchronisation for both
            if low < 0 or high > 1:
                raise UsageError(f"images must lie in [0, 1] (got [{low:.3g}, {high:.3g}]); "
                                 "normalisation belongs inside the model")
        if y.numel() and int(y.min()) < 0:
            raise UsageError(f"labels must be >= 0, got {int(y.min())}")
