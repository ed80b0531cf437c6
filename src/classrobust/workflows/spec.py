"""Experiment files: a YAML grid of datasets x training methods x seeds, each attacked by one list of attacks.

::

    name: quick-fashion-mnist
    out: runs/experiments/quick-fashion-mnist      # default: runs/experiments/<name>
    seeds: [0]
    train: {epochs: 6, attack_steps: 3}            # TrainConfig fields shared by every run
    datasets:
      fashion-mnist: {model: smallcnn, model_kwargs: {dropout: 0.0}}
      pets: {name: "folder:/data/pets", model: preact-resnet18, train: {epochs: 30}}
    methods:
      pgd-at: {}
      trades: {lr: 0.05}                           # TrainConfig overrides for this method
      trades-b1: {method: "trades:beta=1", baseline: trades}   # an alias, compared against trades
      pgd-at-cal: {base: pgd-at, calibrate: {max_avg_drop: 1.0}}   # `classrobust calibrate` on pgd-at's runs
    eval: {attacks: "fgsm,pgd:steps=20,autoattack", limit: 2000, subset_seed: per-seed}
    ablation:
      remove_confused_class: {method: pgd-at, attack: pgd}

``eval.subset_seed: per-seed`` gives every seed its own class-stratified test subset (the subset
seed is the training seed), so that seeds are independent samples of test points as well as of
training runs; methods of one seed still share their points (paired tests).

Every method is compared against a baseline: the first method unless its entry names another
(``baseline: ALIAS``), so one file can hold several baselines each with its own variants (PGD-AT and
TRADES, each with a class-wise lever); the report compares each group on its own.

Precedence of training settings: ``train`` < the dataset's ``train`` < the method's entry.
Everything is validated by :func:`load_spec` without touching data (``classrobust experiment --check``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from classrobust.defenses.calibrate import CalibrateConfig
from classrobust.errors import UsageError
from classrobust.options import defaults
from classrobust.training.config import TrainConfig
from classrobust.workflows.evaluate import EvalConfig

TOP_KEYS = {"name", "description", "out", "seeds", "train", "datasets", "methods", "eval", "ablation", "temperature", "compare",
            "protocol"}
DATASET_KEYS = {"name", "model", "model_kwargs", "eps", "alpha", "train"}
#: ``alpha: step_size`` in an experiment file: the inner attack's step is the dataset's threat-model
#: step (2/255 on CIFAR-10, 0.01 on MNIST: the papers' choices, docs/attacks.md)
STEP_SIZE = "step_size"
#: the evaluation settings an experiment file may set (EvalConfig fields; their defaults come from there)
EVAL_KEYS = {"attacks", "split", "limit", "subset_seed", "seed", "batch_size", "precision", "mode", "eps"}
ABLATION_KEYS = {"remove_confused_class"}
CONFUSED_KEYS = {"method", "attack", "seeds", "control"}
TEMPERATURE_KEYS = {"values", "steps", "val_limit", "methods"}
#: the seed-level tests' direction, declared before the runs: average and worst-class accuracy
COMPARE_KEYS = {"avg", "worst"}
ALTERNATIVES = ("two-sided", "greater", "less")
#: the defense protocol's section (:mod:`classrobust.workflows.protocol`): a screen file declares the
#: selection and the confirmation; the confirmation file ``select`` writes adds the screen's fingerprint
PROTOCOL_KEYS = {"stage", "attack", "margin", "keep", "target", "confirm", "frontier", "screen", "frozen_at", "chosen"}
TARGET_KEYS = {"attack", "worst_gain", "max_avg_drop", "alpha"}
CONFIRM_KEYS = {"seeds", "out", "eval"}
FRONTIER_KEYS = {"allowances", "of", "fit_steps", "fit_targets", "val_size"}
KEEP = ("best", "per-lever")
CALIBRATE_KEYS = {f.name for f in fields(CalibrateConfig)} - {"eps", "precision"}
#: keys a run's TrainConfig takes from the file (the device comes from the machine)
TRAIN_KEYS = {f.name for f in fields(TrainConfig)} - {"dataset", "model", "method", "seed", "device", "drop_classes"}
EVAL_DEFAULTS = {k: v for k, v in defaults(EvalConfig).items() if k in EVAL_KEYS - {"attacks"}}
#: ``eval.subset_seed`` value that draws each seed's test subset with the run's own seed
PER_SEED = "per-seed"


@dataclass(frozen=True)
class RunSpec:
    """One training run of the grid and the evaluation it gets."""

    key: str  # "<dataset alias>/<method alias>/seed<s>", its directory under <out>/runs
    dataset: str  # the dataset alias in the file
    method: str  # the method alias in the file
    seed: int
    config: TrainConfig
    calibrate: dict[str, Any] | None = None  # an inference-phase run: calibrate ``base``'s checkpoint
    base_key: str | None = None

    @property
    def dataset_name(self) -> str:
        return self.config.dataset


@dataclass(frozen=True)
class ConfusedClassAblation:
    """Retrain ``method`` without the class that receives most of the weak class's flipped points
    (clean-correct, wrong under ``attack``); with ``control``, also without a class drawn at random
    from the others, so that the effect of dropping *a* class is measured too."""

    method: str
    attack: str
    seeds: tuple[int, ...]
    control: bool = True


@dataclass(frozen=True)
class TemperatureStep:
    """Temperature-PGD's T chosen on validation images of the ``methods``' runs among ``values``, then
    scored on the test split against PGD with the same ``steps`` (:mod:`classrobust.workflows.temperature`)."""

    values: tuple[float, ...]
    steps: int = 20
    val_limit: int = 1000
    methods: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProtocolSpec:
    """The defense protocol of an experiment file (:mod:`classrobust.workflows.protocol`).

    A screen (``stage: screen``) runs its grid on validation images (``eval.split: val``) and picks, per
    lever, the setting with the highest mean worst-class robust accuracy among those whose mean paired
    change of the average is at least ``-margin`` points (ties: the higher average); ``keep`` says
    whether the best pick alone or every lever's goes to the confirmation. The confirmation
    (``stage: confirm``, written by ``select``) judges ``target`` on fresh seeds: the worst class's
    mean per-seed gain of at least ``worst_gain`` points, significant by the paired t-test and the exact
    sign-flip test at ``alpha``, and the average non-inferior (its one-sided 95% lower bound above
    ``-max_avg_drop`` points); ``frontier`` names the calibration frontier every lever is compared with.
    """

    stage: str = "screen"
    attack: str | None = None  # the screen's judged attack (default: the last of eval.attacks)
    margin: float = 1.0  # points
    keep: str = "best"
    target: dict[str, Any] = field(default_factory=lambda: {"attack": "autoattack", "worst_gain": 5.0,
                                                            "max_avg_drop": 1.0, "alpha": 0.05})
    confirm: dict[str, Any] = field(default_factory=dict)
    frontier: dict[str, Any] | None = None
    screen: dict[str, Any] | None = None  # confirm stage: the screen's file, fingerprint and read time
    frozen_at: str | None = None
    chosen: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExperimentSpec:
    name: str
    description: str
    out: Path
    seeds: tuple[int, ...]
    datasets: dict[str, dict[str, Any]]
    methods: dict[str, dict[str, Any]]
    train: dict[str, Any]
    eval: dict[str, Any]
    ablation: ConfusedClassAblation | None = None
    temperature: TemperatureStep | None = None
    compare: dict[str, str] = field(default_factory=dict)
    protocol: "ProtocolSpec | None" = None
    source: Path | None = None
    runs: tuple[RunSpec, ...] = field(default=())
    #: method alias -> the alias it is compared against (the first method unless the entry names one)
    baselines: dict[str, str] = field(default_factory=dict)

    def run(self, dataset: str, method: str, seed: int) -> RunSpec:
        return next(r for r in self.runs if (r.dataset, r.method, r.seed) == (dataset, method, seed))

    def eval_config(self, run: RunSpec) -> EvalConfig:
        """The evaluation every run gets; with ``subset_seed: per-seed`` its test subset is drawn with the
        run's own seed."""
        settings = dict(self.eval)
        if settings["subset_seed"] == PER_SEED:
            settings["subset_seed"] = run.seed
        return EvalConfig(**settings)

    def ablation_run(self, base: RunSpec, dropped_class: str) -> RunSpec:
        """The base run retrained without ``dropped_class``."""
        alias = f"{base.method}-without-{_slug(dropped_class)}"
        config = TrainConfig.from_dict({**base.config.to_dict(), "drop_classes": [dropped_class]})
        return RunSpec(f"{base.dataset}/{alias}/seed{base.seed}", base.dataset, alias, base.seed, config)


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return {v: {} for v in value}  # shorthand: a list of names
    if not isinstance(value, dict):
        raise UsageError(f"{where} must be a mapping, got {type(value).__name__}")
    return {str(k): ({} if v is None else v) for k, v in value.items()}


def _only(keys: set[str], allowed: set[str], where: str) -> None:
    unknown = sorted(set(keys) - allowed)
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def _check_attacks(text: Any) -> None:
    from classrobust.attacks import ATTACKS, parse_attack_specs

    if not isinstance(text, str):
        raise UsageError("eval.attacks must be a string like \"fgsm,pgd:steps=20,autoattack\"")
    for name, params in parse_attack_specs(text):
        try:  # the same check, and the same words, as on the command line
            ATTACKS.check_kwargs(name, params)
        except UsageError as exc:
            raise UsageError(f"eval.attacks: {exc}") from None


def _check_dataset(alias: str, entry: dict[str, Any]) -> str:
    from classrobust.data import DATASETS
    from classrobust.data.folder import FOLDER_PREFIX
    from classrobust.models import check_model_name, valid_model_kwargs

    _only(set(entry), DATASET_KEYS, f"datasets.{alias}")
    name = entry.get("name", alias)
    if not str(name).startswith(FOLDER_PREFIX):  # a folder's metadata needs the data; checked at run time
        DATASETS.get(name)
    model = entry.get("model", "smallcnn")
    check_model_name(str(model))
    valid = valid_model_kwargs(str(model))
    if valid is not None:
        bad = sorted(set(entry.get("model_kwargs", {})) - valid)
        if bad:
            raise UsageError(f"datasets.{alias}: model {model!r} has no parameter {', '.join(map(repr, bad))}; "
                             f"valid: {', '.join(sorted(valid))}")
    _only(set(entry.get("train", {}) or {}), TRAIN_KEYS, f"datasets.{alias}.train")
    return name


def load_spec(path: str | Path, out: str | Path | None = None) -> ExperimentSpec:
    """Read and validate an experiment file (no data is read); ``out`` overrides the file's ``out``."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"experiment file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read experiment file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{path}: an experiment file is a mapping with keys {', '.join(sorted(TOP_KEYS))}")
    try:
        return _parse(raw, path, out)
    except UsageError as exc:
        raise UsageError(f"{path}: {exc}") from None


def _parse_seeds(raw: dict[str, Any]) -> list[int]:
    seeds = raw.get("seeds", [0])
    seeds = [seeds] if isinstance(seeds, int) else seeds
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise UsageError("seeds must be a non-empty list of integers")
    if len(set(seeds)) != len(seeds):
        raise UsageError("seeds are listed twice")
    return seeds


def _parse_methods(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    from classrobust.training.methods import parse_method

    methods = _mapping(raw.get("methods"), "methods")
    for alias, entry in methods.items():
        methods[alias] = entry = {k: v for k, v in _mapping(entry, f"methods.{alias}").items() if k != "baseline"}
        if "-without-" in alias or "/" in alias:
            raise UsageError(f"methods.{alias}: a method alias may not contain '/' or '-without-'")
        if "calibrate" in entry:
            _only(set(entry), {"calibrate", "base"}, f"methods.{alias}")
            base = entry.get("base")
            earlier = list(methods)[: list(methods).index(alias)]
            if base not in earlier or "calibrate" in methods[base]:
                raise UsageError(f"methods.{alias}: calibrate needs a base, one of the trained methods listed "
                                 f"before it ({', '.join(a for a in earlier if 'calibrate' not in methods[a])})")
            entry["calibrate"] = _mapping(entry["calibrate"], f"methods.{alias}.calibrate")
            _only(set(entry["calibrate"]), CALIBRATE_KEYS, f"methods.{alias}.calibrate")
            try:
                CalibrateConfig(**entry["calibrate"])
            except (UsageError, TypeError) as exc:
                raise UsageError(f"methods.{alias}.calibrate: {exc}") from None
            continue
        if "beta" in entry:  # the field it was before methods took their settings in the spec
            raise UsageError(f"methods.{alias}: beta is a setting of the method now: "
                             f"method: \"{entry.get('method', alias)}:beta={entry['beta']}\"")
        _only(set(entry), TRAIN_KEYS | {"method"}, f"methods.{alias}")
        parse_method(entry.get("method", alias))
    return methods


def _parse_baselines(raw: dict[str, Any], methods: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Each method's baseline: ``baseline: ALIAS`` in its entry, else the first method."""
    first = next(iter(methods))
    baselines = {}
    for alias, entry in _mapping(raw.get("methods"), "methods").items():
        baseline = entry.get("baseline", first)
        if baseline not in methods:
            raise UsageError(f"methods.{alias}.baseline {baseline!r} is not one of the methods: {', '.join(methods)}")
        if baseline == alias and alias != first:
            raise UsageError(f"methods.{alias}.baseline: a method cannot be its own baseline")
        baselines[alias] = baseline
    return baselines


def _parse_eval(raw: dict[str, Any]) -> dict[str, Any]:
    evaluation = _mapping(raw.get("eval"), "eval")
    _only(set(evaluation), EVAL_KEYS, "eval")
    if "attacks" not in evaluation:
        raise UsageError("eval.attacks is required (e.g. \"fgsm,pgd:steps=20,autoattack\")")
    _check_attacks(evaluation["attacks"])
    evaluation = {**EVAL_DEFAULTS, **evaluation}
    subset_seed = evaluation["subset_seed"]
    if not (subset_seed == PER_SEED or (isinstance(subset_seed, int) and not isinstance(subset_seed, bool))):
        raise UsageError(f"eval.subset_seed must be an integer or {PER_SEED!r}, got {subset_seed!r}")
    for key in ("limit", "batch_size"):
        if evaluation[key] is not None and (not isinstance(evaluation[key], int) or evaluation[key] < 1):
            raise UsageError(f"eval.{key} must be a positive integer, got {evaluation[key]!r}")
    try:
        EvalConfig(**{**evaluation, "subset_seed": 0})
    except UsageError as exc:
        raise UsageError(f"eval.{exc}") from None
    return evaluation


def _parse_ablation(raw: dict[str, Any], methods, evaluation, seeds) -> ConfusedClassAblation | None:
    from classrobust.attacks import parse_attack_specs

    abl = _mapping(raw.get("ablation"), "ablation")
    _only(set(abl), ABLATION_KEYS, "ablation")
    if "remove_confused_class" not in abl:
        return None
    entry = _mapping(abl["remove_confused_class"], "ablation.remove_confused_class")
    _only(set(entry), CONFUSED_KEYS, "ablation.remove_confused_class")
    method = entry.get("method", next(iter(methods)))
    trained = [m for m in methods if "calibrate" not in methods[m]]
    if method not in trained:
        raise UsageError(f"ablation.remove_confused_class.method {method!r} is not one of the trained "
                         f"methods: {', '.join(trained)}")
    names = [n for n, _ in parse_attack_specs(evaluation["attacks"])]
    attack = entry.get("attack", names[-1])
    if attack not in names:
        raise UsageError(f"ablation.remove_confused_class.attack {attack!r} is not in eval.attacks "
                         f"({', '.join(names)})")
    abl_seeds = entry.get("seeds", seeds)
    if not set(abl_seeds) <= set(seeds):
        raise UsageError("ablation.remove_confused_class.seeds must be among the experiment's seeds")
    control = entry.get("control", True)
    if not isinstance(control, bool):
        raise UsageError(f"ablation.remove_confused_class.control must be true or false, got {control!r}")
    return ConfusedClassAblation(method, attack, tuple(abl_seeds), control)


def _parse_temperature(raw: dict[str, Any], methods) -> TemperatureStep | None:
    if raw.get("temperature") is None:
        return None
    entry = _mapping(raw["temperature"], "temperature")
    _only(set(entry), TEMPERATURE_KEYS, "temperature")
    values = entry.get("values")
    if (not isinstance(values, list) or not values or len(set(values)) != len(values)
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values)):
        raise UsageError("temperature.values must be a list of distinct positive numbers (the candidate T)")
    for key, default in (("steps", 20), ("val_limit", 1000)):
        value = entry.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UsageError(f"temperature.{key} must be a positive integer, got {value!r}")
        entry[key] = value
    trained = [m for m in methods if "calibrate" not in methods[m]]
    chosen = entry.get("methods", trained)
    if not isinstance(chosen, list) or not chosen or not set(chosen) <= set(trained):
        raise UsageError(f"temperature.methods must be a list of trained methods ({', '.join(trained)})")
    return TemperatureStep(tuple(float(v) for v in values), entry["steps"], entry["val_limit"], tuple(chosen))


def _parse_compare(raw: dict[str, Any]) -> dict[str, str]:
    entry = _mapping(raw.get("compare"), "compare")
    _only(set(entry), COMPARE_KEYS, "compare")
    for key, value in entry.items():
        if value not in ALTERNATIVES:
            raise UsageError(f"compare.{key} must be one of {', '.join(ALTERNATIVES)}, got {value!r}")
    return dict(entry)


def _number(value: Any, where: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise UsageError(f"{where} must be a number in [{low:g}, {high:g}], got {value!r}")
    return float(value)


def _parse_protocol(raw: dict[str, Any], methods, evaluation, seeds) -> ProtocolSpec | None:
    from classrobust.attacks import parse_attack_specs

    if raw.get("protocol") is None:
        return None
    entry = _mapping(raw["protocol"], "protocol")
    _only(set(entry), PROTOCOL_KEYS, "protocol")
    stage = entry.get("stage", "screen")
    if stage not in ("screen", "confirm"):
        raise UsageError(f"protocol.stage must be screen or confirm, got {stage!r}")
    names = [n for n, _ in parse_attack_specs(evaluation["attacks"])]
    attack = entry.get("attack", names[-1])
    if attack not in names:
        raise UsageError(f"protocol.attack {attack!r} is not in eval.attacks ({', '.join(names)})")
    if stage == "screen" and evaluation.get("split", "test") != "val":
        raise UsageError("a screen chooses on validation images only: set eval.split: val")
    keep = entry.get("keep", "best")
    if keep not in KEEP:
        raise UsageError(f"protocol.keep must be one of {', '.join(KEEP)}, got {keep!r}")
    target = {**ProtocolSpec().target, **_mapping(entry.get("target"), "protocol.target")}
    _only(set(target), TARGET_KEYS, "protocol.target")
    for key, high in (("worst_gain", 100), ("max_avg_drop", 100), ("alpha", 0.5)):
        target[key] = _number(target[key], f"protocol.target.{key}", 0, high)
    if not target["alpha"] > 0:
        raise UsageError("protocol.target.alpha must be above 0")
    _check_attacks(str(target["attack"]))
    confirm = _mapping(entry.get("confirm"), "protocol.confirm")
    _only(set(confirm), CONFIRM_KEYS, "protocol.confirm")
    if stage == "screen":
        confirm_seeds = confirm.get("seeds")
        if (not isinstance(confirm_seeds, list) or not confirm_seeds
                or not all(isinstance(s, int) and not isinstance(s, bool) for s in confirm_seeds)):
            raise UsageError("protocol.confirm.seeds must be a non-empty list of integers (fresh training seeds)")
        if set(confirm_seeds) & set(seeds):
            raise UsageError(f"protocol.confirm.seeds must be disjoint from the screen's seeds (both have "
                             f"{sorted(set(confirm_seeds) & set(seeds))}): a confirmation is on fresh runs")
        confirm_eval = {"attacks": target["attack"], **_mapping(confirm.get("eval"), "protocol.confirm.eval")}
        if confirm_eval.get("split", "test") != "test":
            raise UsageError("protocol.confirm.eval.split: the confirmation is judged on the test split")
        confirm_eval = _parse_eval({"eval": confirm_eval})
        if str(target["attack"]) not in [n for n, _ in parse_attack_specs(confirm_eval["attacks"])]:
            raise UsageError(f"protocol.confirm.eval.attacks must include the target's attack {target['attack']!r}")
        confirm["eval"] = {k: v for k, v in confirm_eval.items() if v is not None}  # a file reads null as {}
    frontier = entry.get("frontier")
    if frontier is not None:
        frontier = _mapping(frontier, "protocol.frontier")
        _only(set(frontier), FRONTIER_KEYS, "protocol.frontier")
        if frontier.get("of", "baselines") not in ("baselines", "all"):
            raise UsageError(f"protocol.frontier.of must be baselines or all, got {frontier['of']!r}")
        allowances = frontier.get("allowances", [0, 0.5, 1, 2, 4])
        if not isinstance(allowances, list) or not allowances:
            raise UsageError("protocol.frontier.allowances must be a list of points, e.g. [0, 0.5, 1, 2, 4]")
        frontier["allowances"] = [_number(a, "protocol.frontier.allowances", 0, 99.99) for a in allowances]
    chosen = entry.get("chosen", [])
    if stage == "confirm" and (not chosen or not set(chosen) <= set(methods)
                               or not (entry.get("screen") or entry.get("frozen_at"))):
        raise UsageError("a confirmation file names its chosen methods and its screen (written by `classrobust "
                         "protocol select`), or, for a design declared without a screen, when it was frozen "
                         "(frozen_at)")
    return ProtocolSpec(stage=stage, attack=attack, margin=_number(entry.get("margin", 1.0), "protocol.margin", 0, 100),
                        keep=keep, target=target, confirm=confirm, frontier=frontier,
                        screen=entry.get("screen"), frozen_at=_timestamp(entry.get("frozen_at")), chosen=tuple(chosen))


def _timestamp(value: Any) -> str | None:
    """An ISO timestamp as text: YAML reads an unquoted one as a datetime."""
    import datetime

    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return value.isoformat(timespec="seconds")
    return None if value is None else str(value)


def _parse(raw: dict[str, Any], path: Path, out: str | Path | None) -> ExperimentSpec:
    _only(set(raw), TOP_KEYS, "experiment")
    name = str(raw.get("name") or path.stem)
    seeds = _parse_seeds(raw)
    train = _mapping(raw.get("train"), "train")
    _only(set(train), TRAIN_KEYS, "train")
    datasets = _mapping(raw.get("datasets"), "datasets")
    if not datasets or not raw.get("methods"):
        raise UsageError("an experiment needs at least one entry under datasets and under methods")
    for alias, entry in datasets.items():
        datasets[alias] = _mapping(entry, f"datasets.{alias}")
        _check_dataset(alias, datasets[alias])
    methods = _parse_methods(raw)
    baselines = _parse_baselines(raw, methods)
    evaluation = _parse_eval(raw)
    ablation = _parse_ablation(raw, methods, evaluation, seeds)
    temperature = _parse_temperature(raw, methods)
    compare = _parse_compare(raw)
    protocol = _parse_protocol(raw, methods, evaluation, seeds)
    runs = _build_runs(datasets, methods, train, seeds)
    out_dir = Path(out) if out is not None else Path(raw.get("out") or f"runs/experiments/{_slug(name)}")
    return ExperimentSpec(name=name, description=str(raw.get("description", "")), out=out_dir,
                          seeds=tuple(seeds), datasets=datasets, methods=methods, train=train, eval=evaluation,
                          ablation=ablation, temperature=temperature, compare=compare, protocol=protocol, source=path, runs=tuple(runs),
                          baselines=baselines)


def _build_runs(datasets, methods, train, seeds) -> list[RunSpec]:
    runs = []
    for d_alias, d_entry in datasets.items():
        for m_alias, m_entry in methods.items():
            for seed in seeds:
                if "calibrate" in m_entry:
                    base = next(r for r in runs if (r.dataset, r.method, r.seed) == (d_alias, m_entry["base"], seed))
                    runs.append(RunSpec(f"{_slug(d_alias)}/{m_alias}/seed{seed}", d_alias, m_alias, seed, base.config,
                                        calibrate=dict(m_entry["calibrate"]), base_key=base.key))
                    continue
                # an experiment's runs train in bf16 unless the file says otherwise (not the machine-dependent
                # "auto"): a grid continued on another machine must match the runs it already has
                settings = {"precision": "bf16", **train, **(d_entry.get("train") or {}),
                            **{k: v for k, v in m_entry.items() if k != "method"}}
                for key in ("eps", "alpha"):
                    if key in d_entry and key not in settings:
                        settings[key] = d_entry[key]
                if settings.get("alpha") == STEP_SIZE:  # the dataset's own step (ThreatModel.step_size)
                    from classrobust.data import get_dataset_info

                    settings["alpha"] = get_dataset_info(d_entry.get("name", d_alias)).threat_model.step_size
                try:
                    config = TrainConfig.from_dict({
                        **settings, "dataset": d_entry.get("name", d_alias), "model": d_entry.get("model", "smallcnn"),
                        "model_kwargs": d_entry.get("model_kwargs", {}), "method": m_entry.get("method", m_alias),
                        "seed": seed})
                except TypeError as exc:
                    raise UsageError(f"bad training settings for {d_alias}/{m_alias}: {exc}") from None
                runs.append(RunSpec(f"{_slug(d_alias)}/{m_alias}/seed{seed}", d_alias, m_alias, seed, config))
    return runs
