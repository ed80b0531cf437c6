"""Class-wise training levers, for the training methods that support them (``--classwise SPEC``).

A lever keeps per-class state and updates it at the end of every epoch from that epoch's
per-class numbers; the loop turns the state into per-sample terms of the next epoch's loss:

  * ``weights``      (K,) multiply each sample's loss (its CE term for TRADES), mean 1 over classes;
  * ``reg_weights``  (K,) multiply each sample's TRADES KL term (per-class beta / beta);
  * ``eps_scale``    (K,) multiply the inner attack's eps (and step) per sample.

Levers:
  * ``reweight``  (the seed paper's training-phase lever): weights ~ exp(strength * (mean - a_k))
    from last epoch's per-class validation robust accuracy a_k, smoothed over epochs.
  * ``class-eps`` (after CFA's class-wise calibrated margin/regularisation, Wei et al. CVPR 2023):
    eps_k = (lam + t_k) * eps and, for TRADES, beta_k = (beta_lam + t_k) * beta, t_k the class's
    training robust accuracy in the previous epoch.
  * ``frl``       (after FRL, Xu et al. ICML 2021): Lagrange-style multipliers on per-class
    constraint violations phi_k = err_k - mean(err) - tau of validation errors; weights 1 + lambda_k
    (natural error for the CE term, boundary error for TRADES' KL term) and eps re-margined by
    exp(eps_step * phi_k) on the boundary violations.
  * ``fawa``      (after CFA's fairness-aware weight averaging): an EMA of the weights that only admits
    epochs whose worst-class validation robust accuracy passes a threshold; the run ends with it.
  * ``dafa``      (DAFA, Lee et al. ICLR 2024): once, at a warm-up epoch, the class similarity
    p_ij = mean softmax probability of class j on the trained-on (adversarial) inputs of class i;
    weights w_i = 1 + lam * sum_{j != i} s_ij p_ij p_jj with s_ij = +1 where class i is the harder of
    the two (p_ii < p_jj), else -1; the budget of class i is scaled by w_i too (its margin).
  * ``wat``       (WAT, Li & Liu AAAI 2023): a no-regret (Hedge) game between the classes and the
    average: K + 1 experts, each weighted by exp(eta * its cumulative validation cost); a sample of
    class k is weighted by q_k + q_avg, rescaled to mean 1 over classes. Our cost is the class's
    validation robust *error* (in [0, 1], the bound Hedge's regret guarantee assumes), where the
    paper uses the class's validation loss (docs/defenses.md).

Two levers that set the same term (both the loss weights, both the budgets, ...) cannot be
combined, and ``fawa`` picks the final weights as ``--select`` does: those combinations are refused.

A lever may also supply the run's final weights (:meth:`Lever.final_weights`, with metadata for
the checkpoint), so the training loop never needs to know which lever it runs.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from classrobust.errors import UsageError
from classrobust.registry import Registry


class Lever:
    """Per-class state updated at each epoch's end. Subclasses set what they ``provides``."""

    name = "lever"
    #: which terms it sets: ``weights``, ``reg_weights``, ``eps_scale``, or ``final`` (the run's weights)
    provides: frozenset[str] = frozenset()

    def __init__(self, num_classes: int):
        self.k = num_classes
        self.weights = np.ones(num_classes)
        self.reg_weights = np.ones(num_classes)
        self.eps_scale = np.ones(num_classes)

    def check(self, *, epochs: int) -> None:
        """Raise UsageError if the lever cannot act within a run of ``epochs`` epochs."""

    def needs_train_probs(self, epoch: int, epochs: int) -> bool:
        """Whether epoch ``epoch`` must collect the per-class mean softmax of the trained-on inputs
        (``train_probs`` of :meth:`end_epoch`; a (K, K) accumulation on the device each step)."""
        return False

    def end_epoch(self, *, epoch: int, epochs: int, train_robust: np.ndarray, val_clean: np.ndarray,
                  val_robust: np.ndarray, model: torch.nn.Module, train_probs: np.ndarray | None = None) -> None:
        """Per-class accuracies in [0, 1], shape (K,); NaN for classes without samples.
        ``train_probs`` (K, K), rows = true class (NaN rows for classes without samples): only in
        epochs where :meth:`needs_train_probs` said so."""

    def state(self) -> dict[str, Any]:
        return {"weights": self.weights.tolist(), "reg_weights": self.reg_weights.tolist(),
                "eps_scale": self.eps_scale.tolist()}

    def load_state(self, state: dict[str, Any]) -> None:
        for key in ("weights", "reg_weights", "eps_scale"):
            setattr(self, key, np.asarray(state[key], dtype=float))

    # weight-averaging hooks (fawa)
    def after_step(self, model: torch.nn.Module) -> None:
        pass

    def final_weights(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """``(state_dict, metadata)`` if this lever chooses the run's final weights, else None."""
        return None


def _normalised(w: np.ndarray) -> np.ndarray:
    return w / w.mean()


def _fill(v: np.ndarray) -> np.ndarray:
    """NaN (a class without samples, e.g. a dropped one) -> the mean of the others."""
    v = np.asarray(v, dtype=float)
    return np.where(np.isnan(v), np.nanmean(v), v)


class Reweight(Lever):
    name = "reweight"
    provides = frozenset({"weights"})

    def __init__(self, num_classes: int, *, strength: float = 2.0, smoothing: float = 0.5):
        super().__init__(num_classes)
        if strength < 0 or not 0 <= smoothing < 1:
            raise UsageError("reweight needs strength >= 0 and smoothing in [0, 1)")
        self.strength, self.smoothing = strength, smoothing

    def end_epoch(self, *, val_robust, **_):
        a = _fill(val_robust)
        target = _normalised(np.exp(self.strength * (a.mean() - a)))
        self.weights = _normalised(self.smoothing * self.weights + (1 - self.smoothing) * target)


class ClassEps(Lever):
    name = "class-eps"
    provides = frozenset({"eps_scale", "reg_weights"})

    def __init__(self, num_classes: int, *, lam: float = 0.5, beta_lam: float = 0.5):
        super().__init__(num_classes)
        if lam <= 0 or beta_lam <= 0:
            raise UsageError("class-eps needs lam > 0 and beta_lam > 0")
        self.lam, self.beta_lam = lam, beta_lam

    def end_epoch(self, *, train_robust, **_):
        t = _fill(train_robust)
        self.eps_scale = self.lam + t
        self.reg_weights = self.beta_lam + t


class FRL(Lever):
    name = "frl"
    provides = frozenset({"weights", "reg_weights", "eps_scale"})

    def __init__(self, num_classes: int, *, tau: float = 0.05, weight_step: float = 1.0, eps_step: float = 0.5,
                 max_eps_scale: float = 2.0):
        super().__init__(num_classes)
        if tau < 0 or weight_step < 0 or eps_step < 0 or max_eps_scale < 1:
            raise UsageError("frl needs tau, weight_step, eps_step >= 0 and max_eps_scale >= 1")
        self.tau, self.weight_step, self.eps_step, self.max_eps_scale = tau, weight_step, eps_step, max_eps_scale
        self.lam_nat = np.zeros(num_classes)
        self.lam_bndy = np.zeros(num_classes)

    def end_epoch(self, *, val_clean, val_robust, **_):
        nat_err = 1 - _fill(val_clean)
        bndy_err = np.clip(_fill(val_clean) - _fill(val_robust), 0, 1)  # right when clean, wrong attacked
        phi_nat = nat_err - nat_err.mean() - self.tau
        phi_bndy = bndy_err - bndy_err.mean() - self.tau
        self.lam_nat = np.maximum(0, self.lam_nat + self.weight_step * phi_nat)
        self.lam_bndy = np.maximum(0, self.lam_bndy + self.weight_step * phi_bndy)
        self.weights = _normalised(1 + self.lam_nat + self.lam_bndy)  # PGD-AT's CE is on robust error
        self.reg_weights = _normalised(1 + self.lam_bndy)
        self.eps_scale = np.clip(self.eps_scale * np.exp(self.eps_step * phi_bndy), 1 / self.max_eps_scale,
                                 self.max_eps_scale)

    def state(self):
        return {**super().state(), "lam_nat": self.lam_nat.tolist(), "lam_bndy": self.lam_bndy.tolist()}

    def load_state(self, state):
        super().load_state(state)
        self.lam_nat, self.lam_bndy = np.asarray(state["lam_nat"]), np.asarray(state["lam_bndy"])


class FAWA(Lever):
    """EMA of the weights (per step, ``decay``), committed at an epoch's end only if that epoch's
    worst-class validation robust accuracy is >= ``threshold`` (absolute) or, by default, >= ``relative``
    times the best worst-class accuracy seen so far; otherwise the epoch's updates are discarded."""

    name = "fawa"
    provides = frozenset({"final"})

    def __init__(self, num_classes: int, *, decay: float = 0.995, threshold: float | None = None,
                 relative: float = 0.9, start_epoch: int = 2):
        super().__init__(num_classes)
        if not 0 < decay < 1 or not 0 <= relative <= 1 or start_epoch < 1:
            raise UsageError("fawa needs decay in (0, 1), relative in [0, 1] and start_epoch >= 1")
        self.decay, self.threshold, self.relative, self.start_epoch = decay, threshold, relative, start_epoch
        self.committed: dict[str, torch.Tensor] | None = None
        self.candidate: dict[str, torch.Tensor] | None = None
        self.best_worst = -1.0
        self.admitted: list[int] = []
        self.epoch = 1

    def after_step(self, model):
        if self.epoch < self.start_epoch:
            return
        current = model.state_dict()
        if self.candidate is None:
            # a resumed run's committed average comes back on the CPU: follow the model's device
            base = self.committed if self.committed is not None else current
            self.candidate = {k: (v.detach().float() if v.is_floating_point() else v.detach()).to(
                current[k].device, copy=True) for k, v in base.items()}
        with torch.no_grad():
            for k, v in current.items():
                if v.is_floating_point():
                    self.candidate[k].mul_(self.decay).add_(v.detach().float(), alpha=1 - self.decay)
                else:
                    self.candidate[k].copy_(v)

    def end_epoch(self, *, epoch, val_robust, **_):
        worst = float(np.nanmin(val_robust))
        limit = self.threshold if self.threshold is not None else self.relative * max(self.best_worst, 0.0)
        if self.candidate is not None:
            if worst >= limit:
                self.committed, self.admitted = self.candidate, [*self.admitted, epoch]
            self.candidate = None
        self.best_worst = max(self.best_worst, worst)
        self.epoch = epoch + 1

    def final_weights(self):
        if self.committed is None:
            return None
        return self.committed, {"fawa_admitted_epochs": list(self.admitted)}

    def state(self):
        return {**super().state(), "committed": self.committed, "best_worst": self.best_worst,
                "admitted": list(self.admitted), "epoch": self.epoch}

    def load_state(self, state):
        super().load_state(state)
        self.committed, self.best_worst = state["committed"], state["best_worst"]
        self.admitted, self.epoch, self.candidate = list(state["admitted"]), state["epoch"], None


def dafa_weights(similarity: np.ndarray, lam: float) -> np.ndarray:
    """DAFA's class weights from a class-similarity matrix.

    similarity: (K, K), row i = mean predicted probabilities on class i's samples (NaN rows for
    classes without samples: weight 1, and they shift nobody). Returns (K,):
    w_i = 1 + lam * sum_{j != i} s_ij * p_ij * p_jj, s_ij = +1 if p_ii < p_jj (i is the harder class)
    else -1. A hard class gains in proportion to how much of its mass goes to an easier, confident
    class j; an easy class loses in proportion to how much of its mass goes to harder ones.
    """
    p = np.nan_to_num(np.asarray(similarity, dtype=float), nan=0.0)
    own = np.diag(p)
    sign = np.where(own[:, None] < own[None, :], 1.0, -1.0)
    np.fill_diagonal(sign, 0.0)
    return 1.0 + lam * (sign * p * own[None, :]).sum(axis=1)


class DAFA(Lever):
    """Distance-aware loss weights and margins, set once at ``warmup_epoch`` (default: 65% of the
    run, the paper's 70 of 110 epochs) from that epoch's class similarity on the trained-on inputs.
    ``margin=false``: weights only (the authors' PGD-AT code re-projects every inner step onto the
    common eps, so its PGD-AT margins are in effect off; docs/defenses.md). Weights are floored at
    ``min_weight`` (with many classes or a large ``lam`` the formula can reach 0 or below)."""

    name = "dafa"

    def __init__(self, num_classes: int, *, lam: float = 1.0, warmup_epoch: int | None = None, margin: bool = True,
                 min_weight: float = 0.05):
        super().__init__(num_classes)
        if lam < 0 or (warmup_epoch is not None and warmup_epoch < 1) or not 0 < min_weight <= 1:
            raise UsageError("dafa needs lam >= 0, warmup_epoch >= 1 and min_weight in (0, 1]")
        self.lam, self.warmup_epoch, self.margin, self.min_weight = lam, warmup_epoch, margin, min_weight
        self.provides = frozenset({"weights", "eps_scale"} if margin else {"weights"})
        self.similarity: np.ndarray | None = None

    def _warmup(self, epochs: int) -> int:
        return self.warmup_epoch if self.warmup_epoch is not None else max(1, round(0.65 * epochs))

    def check(self, *, epochs):
        if self._warmup(epochs) >= epochs:
            raise UsageError(f"dafa's warmup_epoch ({self._warmup(epochs)}) must come before the last epoch "
                             f"({epochs}): its weights act from the epoch after")

    def needs_train_probs(self, epoch, epochs):
        return self.similarity is None and epoch == self._warmup(epochs)

    def end_epoch(self, *, epoch, epochs, train_probs=None, **_):
        if train_probs is None or epoch != self._warmup(epochs):
            return
        self.similarity = np.asarray(train_probs, dtype=float)
        self.weights = np.maximum(dafa_weights(self.similarity, self.lam), self.min_weight)
        if self.margin:
            self.eps_scale = self.weights.copy()

    def state(self):
        return {**super().state(), "similarity": None if self.similarity is None else self.similarity.tolist()}

    def load_state(self, state):
        super().load_state(state)
        self.similarity = None if state["similarity"] is None else np.asarray(state["similarity"], dtype=float)


class WAT(Lever):
    """Hedge over K + 1 experts (the classes and their average), costs = validation robust error."""

    name = "wat"
    provides = frozenset({"weights"})

    def __init__(self, num_classes: int, *, eta: float = 1.0):
        super().__init__(num_classes)
        if eta <= 0:
            raise UsageError("wat needs eta > 0")
        self.eta = eta
        self.cumulative_cost = np.zeros(num_classes + 1)
        self.expert_weights = np.ones(num_classes + 1) * num_classes / (num_classes + 1)

    def end_epoch(self, *, val_robust, **_):
        cost = 1.0 - _fill(val_robust)
        self.cumulative_cost = self.cumulative_cost + np.append(cost, cost.mean())
        z = self.eta * self.cumulative_cost
        q = np.exp(z - z.max())
        self.expert_weights = self.k * q / q.sum()  # WAT's scale: the K + 1 weights sum to K
        # WAT's per-sample weight q_k + q_avg averages up to 2: rescaled to mean 1 like every lever
        # here, so a lever never changes the effective learning rate
        self.weights = _normalised(self.expert_weights[:-1] + self.expert_weights[-1])

    def state(self):
        return {**super().state(), "cumulative_cost": self.cumulative_cost.tolist(),
                "expert_weights": self.expert_weights.tolist()}

    def load_state(self, state):
        super().load_state(state)
        self.cumulative_cost = np.asarray(state["cumulative_cost"], dtype=float)
        self.expert_weights = np.asarray(state["expert_weights"], dtype=float)


LEVERS: Registry[Lever] = Registry("class-wise lever", internal=("num_classes",))
LEVERS.register("reweight", summary="per-class loss weights raised for classes weak on validation")(Reweight)
LEVERS.register("class-eps", summary="per-class eps (and TRADES beta) from training robust accuracy (CFA)")(ClassEps)
LEVERS.register("frl", summary="FRL re-weighting and re-margining by per-class constraint violations")(FRL)
LEVERS.register("fawa", summary="weight average admitting only epochs with a good worst class (CFA)")(FAWA)
LEVERS.register("dafa", summary="loss weights and margins from class similarity, set at a warm-up epoch (DAFA)")(DAFA)
LEVERS.register("wat", summary="class weights by a no-regret game against the worst class (WAT)")(WAT)

#: what two levers setting the same term would both set, for the one-line refusal
_TERM_WORDS = {"weights": "the per-class loss weights", "eps_scale": "the per-class budgets",
               "reg_weights": "the per-class TRADES beta", "final": "the final weights"}


def parse_levers(spec: str) -> list[tuple[str, dict[str, Any]]]:
    """``"reweight:strength=3,class-eps"`` -> [(name, params)], names and parameters checked."""
    from classrobust.registry import parse_specs

    return parse_specs(spec, LEVERS) if spec.strip() else []


def check_levers(spec: str, *, method: str, supports_levers: bool, select: str,
                 epochs: int | None = None) -> list[tuple[str, dict[str, Any]]]:
    """Validate a lever spec against the training method (named ``method``; ``supports_levers`` is
    what it declares), the selection rule and the run's length; one-line reasons when refused."""
    levers = parse_levers(spec)
    if not levers:
        return levers
    if not supports_levers:
        raise UsageError(f"training method {method!r} does not support class-wise levers "
                         "(pgd-at and trades do)")
    built = []
    for name, params in levers:
        lever = LEVERS.build(name, 2, **params)  # checks the parameter names and values
        if epochs is not None:
            lever.check(epochs=epochs)
        built.append((name, lever))
    for i, (a, lever_a) in enumerate(built):
        for b, lever_b in built[i + 1:]:
            shared = lever_a.provides & lever_b.provides
            if shared:
                why = " and ".join(_TERM_WORDS[t] for t in sorted(shared, key=list(_TERM_WORDS).index))
                raise UsageError(f"--classwise {a} and {b} cannot be combined: both set {why}")
    names = [n for n, _ in levers]
    if "fawa" in names and select != "last":
        raise UsageError("--classwise fawa chooses the final weights itself; use it with --select last")
    return levers


class ClasswiseTerms:
    """The levers of one run together: per-sample loss weights and budgets for a batch."""

    def __init__(self, spec: str, num_classes: int, *, method: str, supports_levers: bool, select: str,
                 epochs: int | None = None):
        self.levers = [LEVERS.build(n, num_classes, **p) for n, p in
                       check_levers(spec, method=method, supports_levers=supports_levers, select=select, epochs=epochs)]
        self.k = num_classes

    def __bool__(self) -> bool:
        return bool(self.levers)

    def _product(self, key: str) -> np.ndarray:
        out = np.ones(self.k)
        for lever in self.levers:
            out = out * getattr(lever, key)
        return out

    def per_class(self) -> dict[str, np.ndarray]:
        return {key: self._product(key) for key in ("weights", "reg_weights", "eps_scale")}

    def after_step(self, model) -> None:
        for lever in self.levers:
            lever.after_step(model)

    def needs_train_probs(self, epoch: int, epochs: int) -> bool:
        return any(lever.needs_train_probs(epoch, epochs) for lever in self.levers)

    def end_epoch(self, **stats) -> None:
        for lever in self.levers:
            lever.end_epoch(**stats)

    def final_weights(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """The first lever's choice of final weights and its metadata (check_levers allows one)."""
        for lever in self.levers:
            chosen = lever.final_weights()
            if chosen is not None:
                return chosen
        return None

    def state(self) -> list[dict[str, Any]]:
        return [lever.state() for lever in self.levers]

    def load_state(self, states: list[dict[str, Any]]) -> None:
        for lever, state in zip(self.levers, states):
            lever.load_state(copy.deepcopy(state))
