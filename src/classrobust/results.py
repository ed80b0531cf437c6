"""The one result schema every analysis reads: per-sample predictions per attack.

Everything per class is derived from the per-sample records: the confusion
matrix (true x predicted), then n (row sums), correct (diagonal) and accuracy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from classrobust.errors import UsageError
from classrobust.io import atomic_write_json, check_own_directory, staged_files

CLEAN = "clean"
#: the file that marks a folder as an evaluation result
SUMMARY = "summary.json"
#: the format tag of summary.json (a result written by another version of the schema is refused by name)
RESULT_FORMAT = "classrobust-result/1"
#: files written only when a minimal-norm attack ran (robustness curves, median distances)
DISTANCE_FILES = ("curves.csv", "distances.csv")
#: the fixed grid of curves.csv, in multiples of the attack's eps (eps itself is on it)
CURVE_GRID = np.linspace(0.0, 3.0, 31)


@dataclass
class AttackResult:
    """Outcome of one attack (or ``clean``) over the evaluated samples.

    ``predictions[i]`` is the per-point worst case: the clean prediction where
    the clean model already errs (attacks only run on correctly classified
    points), otherwise the prediction on the adversarial example.
    """

    name: str
    labels: np.ndarray  # (N,) int
    predictions: np.ndarray  # (N,) int
    num_classes: int
    config: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    #: (N,) smallest adversarial distance in the attack's norm, for minimal-norm attacks only:
    #: 0 for clean errors, inf where none was found within the attack's budget
    distances: np.ndarray | None = None
    #: (N,) for AutoAttack only: the index of the member that broke each point (in ``members``'s
    #: order), -1 where none did (a clean error, or a robust point)
    breakers: np.ndarray | None = None
    #: AutoAttack only: per member (in cascade order) its wall ``seconds`` and the ``points`` it attacked
    member_stats: dict[str, dict[str, float]] | None = None

    @property
    def members(self) -> list[str]:
        return list(self.member_stats or {})

    def member_breaks_per_class(self) -> dict[str, np.ndarray]:
        """Per member, (K,) how many points of each class it broke (its marginal contribution)."""
        return {m: np.bincount(self.labels[self.breakers == i], minlength=self.num_classes)
                for i, m in enumerate(self.members)}

    @property
    def confusion(self) -> np.ndarray:
        """(K, K) counts: row = true class, column = predicted class."""
        k = self.num_classes
        return np.bincount(self.labels * k + self.predictions, minlength=k * k).reshape(k, k)

    @property
    def n_per_class(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes)

    @property
    def correct_per_class(self) -> np.ndarray:
        return np.bincount(self.labels[self.predictions == self.labels], minlength=self.num_classes)

    @property
    def accuracy_per_class(self) -> np.ndarray:
        n = self.n_per_class
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, self.correct_per_class / np.maximum(n, 1), np.nan)

    @property
    def accuracy(self) -> float:
        return float((self.predictions == self.labels).mean()) if len(self.labels) else float("nan")

    @property
    def worst_class(self) -> int:
        return int(np.nanargmin(self.accuracy_per_class))

    @property
    def worst_classes(self) -> list[int]:
        """Every class tied at the lowest accuracy (``worst_class`` is the first of them)."""
        acc = self.accuracy_per_class
        return [int(i) for i in np.flatnonzero(acc == np.nanmin(acc))]

    @property
    def best_class(self) -> int:
        return int(np.nanargmax(self.accuracy_per_class))


@dataclass
class ClasswiseResult:
    """Per-sample, per-attack results of one evaluation (clean first)."""

    classes: list[str]
    indices: np.ndarray  # (N,) index of each sample in the test split
    labels: np.ndarray  # (N,)
    attacks: dict[str, AttackResult]
    meta: dict[str, Any] = field(default_factory=dict)
    sanity: dict[str, Any] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def per_class_table(self) -> pd.DataFrame:
        """Long format: one row per (attack, class)."""
        rows = []
        for name, res in self.attacks.items():
            n, correct, acc = res.n_per_class, res.correct_per_class, res.accuracy_per_class
            for k, cls in enumerate(self.classes):
                rows.append({"attack": name, "class_index": k, "class_name": cls, "n": int(n[k]),
                             "correct": int(correct[k]), "accuracy": float(acc[k])})
        return pd.DataFrame(rows)

    def wide_table(self) -> pd.DataFrame:
        """Classes x attacks accuracy (in [0, 1]) with ``n``; what the CLI prints."""
        table = pd.DataFrame({"class": self.classes,
                              "n": self.attacks[CLEAN].n_per_class if CLEAN in self.attacks
                              else np.bincount(self.labels, minlength=self.num_classes)})
        for name, res in self.attacks.items():
            table[name] = res.accuracy_per_class
        return table

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": RESULT_FORMAT, "n": int(len(self.labels)), "classes": self.classes,
                               "attacks": {}}
        for name, res in self.attacks.items():
            acc = res.accuracy_per_class
            out["attacks"][name] = {
                "accuracy": res.accuracy,
                "worst_class": self.classes[res.worst_class],
                "worst_class_index": res.worst_class,
                "worst_class_accuracy": float(acc[res.worst_class]),
                # every class at that accuracy: a tie is not broken silently by class order
                "worst_classes": [self.classes[i] for i in res.worst_classes],
                "best_class": self.classes[res.best_class],
                "best_class_index": res.best_class,
                "best_class_accuracy": float(acc[res.best_class]),
                "gap": float(np.nanmax(acc) - np.nanmin(acc)),
                "seconds": round(res.seconds, 3),
                "config": res.config,
            }
            if res.distances is not None:
                out["attacks"][name]["records_distance"] = True
            if res.member_stats is not None:
                broke = res.member_breaks_per_class()
                out["attacks"][name]["members"] = {m: {**v, "broke": int(broke[m].sum())}
                                                   for m, v in res.member_stats.items()}
        out["collapsed_classes"] = collapsed_classes(self)
        if self.sanity is not None:
            out["sanity"] = self.sanity
        out["meta"] = self.meta
        return out

    def samples_table(self) -> pd.DataFrame:
        """Per-sample records: index, label, each attack's (worst-case) prediction ``pred_<attack>``,
        a minimal-norm attack's distance ``distance_<attack>`` (0: clean error, inf: none found),
        and whether the attack fooled a correctly classified point ``fooled_<attack>``."""
        table = pd.DataFrame({"index": self.indices, "label": self.labels})
        for name, res in self.attacks.items():
            table[f"pred_{name}"] = res.predictions
        for name, res in self.attacks.items():
            if res.distances is not None:
                table[f"distance_{name}"] = res.distances
            if res.breakers is not None:  # the member that broke the point, "" where none did
                names = np.array([*res.members, ""], dtype=object)
                table[f"member_{name}"] = names[res.breakers]
        if CLEAN in self.attacks:
            clean_ok = self.attacks[CLEAN].predictions == self.labels
            for name, res in self.attacks.items():
                if name != CLEAN:  # fooled: correct when clean, wrong under this attack
                    table[f"fooled_{name}"] = clean_ok & (res.predictions != self.labels)
        return table

    def save(self, out_dir: str | Path) -> Path:
        """Write the result files into ``out_dir``, replacing only an earlier result's files there.

        Every file is written to a staging folder first and then renamed into place, so a failure
        leaves the earlier result intact; confusion files of attacks the new result lacks are
        removed; anything else in ``out_dir`` stays. A non-empty ``out_dir`` without a
        ``summary.json`` is refused (it holds someone else's files).
        """
        out_dir = check_own_directory(out_dir, SUMMARY)
        before = out_dir / SUMMARY
        old = json.loads(before.read_text()).get("attacks", {}) if before.is_file() else {}
        stale = [f"confusion_{n}.csv" for n in old if n not in self.attacks]
        curves = self.curve_table()
        if curves.empty and any(info.get("records_distance") for info in old.values()):
            stale += list(DISTANCE_FILES)  # the earlier result's curves, which this one has no data for
        settings = {name: describe_attack(res.config) for name, res in self.attacks.items()}
        with staged_files(out_dir, stale) as stage:
            if not curves.empty:
                curves.assign(settings=curves["attack"].map(settings)).to_csv(stage / DISTANCE_FILES[0], index=False)
                medians = self.distance_table()
                medians.assign(settings=medians["attack"].map(settings)).to_csv(stage / DISTANCE_FILES[1], index=False)
            table = self.per_class_table()
            table.assign(settings=table["attack"].map(settings)).to_csv(stage / "per_class.csv", index=False)
            for name, res in self.attacks.items():
                pd.DataFrame(res.confusion, index=self.classes, columns=self.classes).rename_axis(
                    "true\\predicted").to_csv(stage / f"confusion_{name}.csv")
            self.samples_table().to_csv(stage / "samples.csv.gz", index=False)
            atomic_write_json(stage / SUMMARY, self.summary())
        return out_dir

    def curve_table(self) -> pd.DataFrame:
        """Per-class robustness curves of every minimal-norm attack, long format: robust accuracy
        (share of the class's points whose smallest adversarial distance exceeds r) at each
        distance r where it changes (``kind="step"``, starting at r = 0) and on a fixed grid of
        0 to 3 eps (``kind="grid"``); ``class_index`` -1 is the whole set."""
        rows = []
        for name, res in self.attacks.items():
            if res.distances is None:
                continue
            eps, norm = res.config.get("eps"), res.config.get("norm", "linf")
            grid = CURVE_GRID * eps if eps else CURVE_GRID[:1]
            for k, cls_name, d in self._per_class_distances(res):
                steps = np.unique(np.concatenate([[0.0], d[np.isfinite(d)]]))
                for kind, radii in (("step", steps), ("grid", grid)):
                    robust = (d[None, :] > radii[:, None]).mean(axis=1) if len(d) else np.full(len(radii), np.nan)
                    rows += [{"attack": name, "norm": norm, "eps": eps, "class_index": k, "class_name": cls_name,
                              "kind": kind, "distance": float(r), "robust_accuracy": float(a), "n": len(d)}
                             for r, a in zip(radii, robust)]
        return pd.DataFrame(rows)

    def distance_table(self, confidence: float = 0.95) -> pd.DataFrame:
        """Per class and minimal-norm attack: median smallest adversarial distance with a
        distribution-free ``confidence`` interval (order statistics; inf where over half the points
        were never broken), the share broken within eps, and the share never broken."""
        from scipy.stats import binom

        rows = []
        for name, res in self.attacks.items():
            if res.distances is None:
                continue
            eps = res.config.get("eps")
            for k, cls_name, d in self._per_class_distances(res):
                n = len(d)
                d = np.sort(d)
                # the interval [d_(j), d_(n+1-j)] covers the median with probability 1 - 2 P(B <= j - 1),
                # B ~ Binomial(n, 1/2): the largest j that keeps that at least `confidence` (j >= 1)
                j = 1
                while j < n // 2 and 2 * binom.cdf(j, n, 0.5) <= 1 - confidence:
                    j += 1
                rows.append({"attack": name, "norm": res.config.get("norm", "linf"), "eps": eps,
                             "class_index": k, "class_name": cls_name, "n": n,
                             "median": float(np.median(d)) if n else np.nan,
                             "ci_low": float(d[j - 1]) if n else np.nan,
                             "ci_high": float(d[n - j]) if n else np.nan,
                             "ci_coverage": float(1 - 2 * binom.cdf(j - 1, n, 0.5)) if n else np.nan,
                             "broken_within_eps": float((d <= eps).mean()) if n and eps is not None else np.nan,
                             "never_broken": float(np.isinf(d).mean()) if n else np.nan})
        return pd.DataFrame(rows)

    def _per_class_distances(self, res: AttackResult):
        yield -1, "all", res.distances
        for k, cls_name in enumerate(self.classes):
            yield k, cls_name, res.distances[self.labels == k]

    @classmethod
    def load(cls, out_dir: str | Path) -> "ClasswiseResult":
        """Rebuild a result from ``samples.csv.gz`` and ``summary.json``, without re-attacking."""
        out_dir = Path(out_dir)
        summary = json.loads((out_dir / SUMMARY).read_text())
        if summary.get("format", RESULT_FORMAT) != RESULT_FORMAT:  # results from before the tag have none
            raise UsageError(f"{out_dir / SUMMARY} is in format {summary['format']!r}; this classrobust reads "
                             f"{RESULT_FORMAT!r}")
        samples = pd.read_csv(out_dir / "samples.csv.gz")
        labels = samples["label"].to_numpy()
        k = len(summary["classes"])
        attacks = {name: AttackResult(name, labels, samples[f"pred_{name}"].to_numpy(), k,
                                      info.get("config", {}), info.get("seconds", 0.0),
                                      samples[f"distance_{name}"].to_numpy(dtype=np.float64)
                                      if f"distance_{name}" in samples else None)
                   for name, info in summary["attacks"].items()}
        for name, info in summary["attacks"].items():
            if "members" in info and f"member_{name}" in samples:  # results from before 2026-12-03 have none
                members = list(info["members"])
                column = samples[f"member_{name}"].fillna("").astype(str)
                attacks[name].breakers = np.array([members.index(m) if m else -1 for m in column], dtype=np.int64)
                attacks[name].member_stats = {m: {"seconds": v["seconds"], "points": v["points"]}
                                              for m, v in info["members"].items()}
        return cls(summary["classes"], samples["index"].to_numpy(), labels, attacks, summary.get("meta", {}),
                   summary.get("sanity"))


def format_eps(eps: float | None) -> str:
    """An eps as people write it: ``8/255`` when it is a whole number of 255ths, else ``0.1``."""
    if eps is None:
        return "?"
    steps = eps * 255
    if eps > 0 and abs(steps - round(steps)) < 1e-6 and round(steps) < 255:
        return f"{round(steps)}/255"
    return f"{eps:g}"


#: the config keys :func:`describe_attack` words itself; every other scalar setting is listed as ``key value``
_DESCRIBED = {"attack", "eps", "norm", "version", "standard", "deviations", "attacks", "steps", "alpha", "targeted",
              "rescale_schedule", "restarts", "n_targets", "n_queries", "temperature", "loss", "random_start", "mode",
              "precision", "seed"}


def describe_attack(config: dict[str, Any]) -> str:
    """One line of an attack's resolved settings, from its recorded config (``AttackResult.config``):
    e.g. ``pgd: eps 8/255 (linf), 20 steps, alpha 2/255, random start, mode best, fp32, seed 0``."""
    if config.get("attack") == CLEAN:
        return "clean: no attack"
    parts = [f"eps {format_eps(config.get('eps'))} ({config.get('norm', 'linf')})"]
    if "version" in config:
        parts.append(f"version {config['version']}")
        if "standard" in config:
            parts.append("standard AutoAttack" if config["standard"] else
                         "NOT standard AutoAttack (" + ", ".join(config.get("deviations", [])) + ")")
        members = config.get("attacks", {})
        parts.append("members " + " + ".join(
            f"{n}" + (f" {m['steps']} steps" if "steps" in m else "") + (f" {m['n_targets']} targets"
                                                                         if "n_targets" in m else "")
            + (f" {m['n_queries']} queries" if "n_queries" in m else "") for n, m in members.items()))
    if "steps" in config:
        parts.append(f"{config['steps']} step{'' if config['steps'] == 1 else 's'}")
    if config.get("alpha") is not None:
        parts.append(f"alpha {format_eps(config['alpha'])}")
    if config.get("targeted"):
        parts.append("targeted")
    if config.get("rescale_schedule"):
        parts.append("p schedule rescaled to the queries")
    for key in ("restarts", "n_targets", "n_queries", "temperature", "loss"):
        if key in config:
            parts.append(f"{key.replace('_', ' ')} {config[key]}")
    if config.get("random_start"):
        parts.append("random start")
    # every other setting the attack records (FAB's alpha_max, beta and overshoot, FMN's step schedule,
    # APGD's rho, Square's p_init, ...): a printed line and per_class.csv name all of them
    for key, value in config.items():
        if key not in _DESCRIBED and isinstance(value, (int, float, str, bool)) and not isinstance(value, bool):
            parts.append(f"{key.replace('_', ' ')} {value:g}" if isinstance(value, float) else
                         f"{key.replace('_', ' ')} {value}")
    parts += [f"mode {config.get('mode', '?')}", str(config.get("precision", "?")), f"seed {config.get('seed', '?')}"]
    return f"{config.get('attack', '?')}: " + ", ".join(parts)


def collapsed_classes(result: ClasswiseResult, factor: float = 2.0) -> list[dict[str, Any]]:
    """Classes whose clean accuracy is below ``factor`` times chance (1/K): the model gave up on them."""
    if CLEAN not in result.attacks:
        return []
    acc = result.attacks[CLEAN].accuracy_per_class
    limit = factor / result.num_classes
    return [{"class": result.classes[k], "class_index": k, "clean_accuracy": float(acc[k])}
            for k in range(result.num_classes) if acc[k] < limit]
