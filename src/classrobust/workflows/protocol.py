"""The defense protocol (``classrobust protocol screen|select|confirm|verdict``): choose on validation,
freeze, confirm on fresh seeds, judge against a declared target and against the calibration frontier.

1. ``screen SCREEN.yaml``: an experiment file whose ``eval.split`` is ``val`` and which has a
   ``protocol`` section; every run is trained and attacked on its own validation split only.
2. ``select SCREEN.yaml --out CONFIRM.yaml``: applies the declared rule to the finished screen and
   writes the confirmation file (an experiment file: the screen's recipe, the baselines and the
   kept settings, the confirmation's seeds and test evaluation) with the screen file's and screen
   table's sha256 and the time the screen was read. It never overwrites a confirmation that started.
3. ``confirm CONFIRM.yaml``: refuses a confirmation file or a screen file that changed since
   freezing; records when it started (refusing an out folder that already holds results), runs
   the grid, the calibration frontier of every baseline run (and, with ``frontier.of: all``, of every
   run) on the same test images, and writes the verdict.
4. ``verdict CONFIRM.yaml``: the verdict again from the records (``protocol-verdict.{csv,md}``).

The order is recorded in ``<confirm out>/protocol.json`` and checked by the verdict: screen read,
file frozen, confirmation started (before any result), first result seen.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from classrobust.errors import UsageError
from classrobust.io import atomic_write_json, atomic_write_text, file_sha256
from classrobust.workflows.spec import ExperimentSpec, load_spec

if TYPE_CHECKING:  # torch loads only when a command runs
    from classrobust.runtime import Runtime

#: the screen's table and the confirmation's record of order, verdict and frontier folders
SCREEN_TABLE = "protocol-screen.csv"
ORDER = "protocol.json"
VERDICT = "protocol-verdict"
FRONTIER_DIR = "frontier"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _spec(path: str | Path, stage: str, out: str | Path | None = None) -> ExperimentSpec:
    spec = load_spec(path, out)
    if spec.protocol is None or spec.protocol.stage != stage:
        raise UsageError(f"{path} is not a protocol {stage} file (its protocol section's stage is "
                         f"{spec.protocol.stage if spec.protocol else 'missing'})")
    return spec


def _tables(out: Path) -> tuple[dict, "Any", "Any"]:
    """The experiment's index, methods.csv and overview.csv (the report's tables)."""
    import pandas as pd

    index_path, report = out / "experiment.json", out / "report"
    if not index_path.is_file() or not (report / "methods.csv").is_file():
        raise UsageError(f"{out} holds no finished experiment; run it first")
    return (json.loads(index_path.read_text()), pd.read_csv(report / "methods.csv"),
            pd.read_csv(report / "overview.csv"))


def screen(path: str | Path, *, out: str | Path | None = None, runtime: Runtime | None = None) -> "Any":
    """Run the screen's grid (validation images only) and return its selection table
    (:func:`~classrobust.analysis.protocol.screen_choice`), also written to ``<out>/protocol-screen.csv``."""
    from classrobust.workflows.experiment import run_experiment

    spec = _spec(path, "screen", out)
    run_experiment(spec, runtime=runtime)
    return screen_table(spec)


def screen_table(spec: ExperimentSpec):
    from classrobust.analysis.protocol import lever_family, screen_choice
    from classrobust.workflows.experiment import is_finished

    if not is_finished(spec):
        raise UsageError(f"the screen in {spec.out} is not finished; run `classrobust protocol screen "
                         f"{spec.source}` first")
    _, methods, _ = _tables(spec.out)
    families = {alias: lever_family(entry, alias) for alias, entry in spec.methods.items()}
    table = screen_choice(methods, spec.protocol.attack, spec.protocol.margin, families, spec.protocol.keep)
    atomic_write_text(spec.out / SCREEN_TABLE, table.to_csv(index=False, float_format="%.6g"))
    return table


def select(path: str | Path, confirm_path: str | Path, *, out: str | Path | None = None) -> tuple[Path, list[str]]:
    """Write the confirmation file for the finished screen ``path``; returns (its path, the kept methods).
    Refused when no setting is kept, or when ``confirm_path`` exists and is not an unstarted
    confirmation file this command wrote."""
    import yaml

    spec = _spec(path, "screen", out)
    confirm_path = Path(confirm_path)
    if confirm_path.exists():
        try:
            earlier = _spec(confirm_path, "confirm")
        except UsageError:
            raise UsageError(f"{confirm_path} exists and is not a confirmation file; choose another --out") from None
        if (earlier.out / ORDER).is_file():
            raise UsageError(f"{confirm_path}'s confirmation has started ({earlier.out / ORDER}); it is frozen")
    read_at = _now()
    table = screen_table(spec)
    kept = list(table.loc[table["kept"], "method"])
    if not kept:
        raise UsageError(f"no setting of the screen kept the average within {spec.protocol.margin:g} points of its "
                         f"baseline; nothing to confirm (table: {spec.out / SCREEN_TABLE})")
    raw = yaml.safe_load(Path(spec.source).read_text())
    protocol = dict(raw["protocol"])
    confirm = protocol.pop("confirm")
    baselines = [m for m in spec.methods if spec.baselines.get(m) == m or m in spec.baselines.values()]
    methods = {alias: entry for alias, entry in raw["methods"].items() if alias in baselines or alias in kept}
    name = f"{spec.name}-confirm"
    document = {
        "name": name,
        "description": f"confirmation of {spec.name}: {', '.join(kept)} against {', '.join(baselines)} on fresh seeds",
        "out": str(confirm.get("out") or f"runs/experiments/{name}"),
        "seeds": list(confirm["seeds"]), "train": raw.get("train") or {}, "datasets": raw["datasets"],
        "methods": methods, "eval": dict(spec.protocol.confirm["eval"]),
        "compare": {"worst": "greater"},
        "protocol": {**{k: v for k, v in protocol.items() if k not in ("stage", "attack")},
                     "stage": "confirm", "target": dict(spec.protocol.target), "margin": spec.protocol.margin,
                     "chosen": kept,
                     "screen": {"file": str(spec.source), "sha256": file_sha256(spec.source),
                                "table_sha256": file_sha256(spec.out / SCREEN_TABLE), "out": str(spec.out),
                                "read_at": read_at},
                     "frozen_at": _now()},
    }
    header = (f"# Written by `classrobust protocol select {spec.source}` on {document['protocol']['frozen_at']}, "
              "before any\n# confirmation result; `classrobust protocol confirm` refuses it once changed.\n")
    atomic_write_text(confirm_path, header + yaml.safe_dump(document, sort_keys=False))
    _spec(confirm_path, "confirm")  # what was written reads back as a valid confirmation file
    return confirm_path, kept


def _check_frozen(spec: ExperimentSpec, path: Path) -> dict[str, Any]:
    """The recorded order, after checking that neither the confirmation file nor its screen changed."""
    screen_record = spec.protocol.screen or {}  # none: a design declared without a screen
    screen_file = Path(screen_record["file"]) if screen_record else None
    if screen_file is not None and screen_file.is_file() and file_sha256(screen_file) != screen_record["sha256"]:
        raise UsageError(f"the screen file {screen_file} changed after the confirmation was frozen "
                         f"({spec.protocol.frozen_at}); a confirmation stands for the screen it was chosen by")
    table = Path(screen_record["out"]) / SCREEN_TABLE if screen_record else None
    if table is not None and table.is_file() and file_sha256(table) != screen_record["table_sha256"]:
        raise UsageError(f"the screen's table {table} changed after the confirmation was frozen")
    order_path = spec.out / ORDER
    if order_path.is_file():
        order = json.loads(order_path.read_text())
        if order["confirm_sha256"] != file_sha256(path):
            raise UsageError(f"{path} changed after its confirmation started ({order['started_at']}); a frozen "
                             "confirmation is never edited")
        return order
    return {}


def confirm(path: str | Path, *, runtime: Runtime | None = None):
    """Run the frozen confirmation ``path``, the calibration frontiers, and the verdict (returned)."""
    from classrobust.workflows.experiment import run_experiment

    path = Path(path)
    spec = _spec(path, "confirm")
    order = _check_frozen(spec, path)
    if not order:
        if (spec.out / "runs").is_dir() and any((spec.out / "runs").rglob("summary.json")):
            raise UsageError(f"{spec.out} holds results from before this confirmation started; give it a fresh out")
        # a declared design has no screen: its "screen read" is its freezing
        read_at = spec.protocol.screen["read_at"] if spec.protocol.screen else spec.protocol.frozen_at
        order = {"screen_read_at": read_at, "frozen_at": spec.protocol.frozen_at,
                 "started_at": _now(), "confirm_sha256": file_sha256(path)}
        if not read_at <= order["frozen_at"] <= order["started_at"]:
            raise UsageError(f"{path} says it was frozen at {order['frozen_at']}, after now ({order['started_at']}) "
                             "or before its screen was read; a confirmation starts after it is frozen")
        spec.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(spec.out / ORDER, order)
    from classrobust.runtime import Runtime

    runtime = runtime or Runtime()
    run_experiment(spec, runtime=runtime)
    if "first_result_seen_at" not in order:
        order["first_result_seen_at"] = _now()  # an upper bound: the first time a confirm call saw results
        atomic_write_json(spec.out / ORDER, order)
    if spec.protocol.frontier is not None:
        _frontiers(spec, runtime)
    return verdict(path)


def frontier_runs(spec: ExperimentSpec) -> list:
    """The runs whose calibration frontier the confirmation measures: the baselines' (every run's with
    ``frontier.of: all``), calibrated runs never."""
    baselines = set(spec.baselines.values())
    every = spec.protocol.frontier.get("of", "baselines") == "all"
    return [r for r in spec.runs if r.calibrate is None and (every or r.method in baselines)]


def _frontiers(spec: ExperimentSpec, runtime: Runtime) -> None:
    """Each frontier run's frontier, on the very test images and attack its evaluation used."""
    from classrobust.attacks import parse_attack_specs
    from classrobust.workflows.experiment import run_dir, run_state
    from classrobust.workflows.frontier import FrontierConfig, run_frontier

    target = spec.protocol.target["attack"]
    attack = next(f"{n}" + (":" + ",".join(f"{k}={v}" for k, v in p.items()) if p else "")
                  for n, p in parse_attack_specs(spec.eval["attacks"]) if n == target)
    settings = {k: spec.protocol.frontier[k] for k in ("fit_steps", "fit_targets", "val_size")
                if k in spec.protocol.frontier}
    for run in frontier_runs(spec):
        if run_state(spec, run) != "done":
            continue  # diverged: no model to calibrate
        evaluation = spec.eval_config(run)
        config = FrontierConfig(allowances=tuple(spec.protocol.frontier["allowances"]), attacks=attack,
                                limit=evaluation.limit, subset_seed=evaluation.subset_seed, eps=evaluation.eps,
                                seed=evaluation.seed, precision=evaluation.precision, **settings)
        runtime.log(f"{run.key}: calibration frontier")
        run_frontier([run_dir(spec, run) / "model.safetensors"], spec.out / FRONTIER_DIR / run.key, config=config,
                     runtime=runtime.indented())


def verdict(path: str | Path):
    """The verdict of the finished confirmation ``path`` from its records: written to
    ``<out>/protocol-verdict.csv`` and ``.md``, and returned. Refuses a confirmation whose recorded
    order is broken (a result before it started) or whose file or screen changed."""
    import pandas as pd

    from classrobust.analysis.protocol import frontier_gaps, protocol_verdict
    from classrobust.report.protocol import verdict_markdown
    from classrobust.workflows.experiment import is_finished

    path = Path(path)
    spec = _spec(path, "confirm")
    order = _check_frozen(spec, path)
    if not order:
        raise UsageError(f"{path}'s confirmation has not started; run `classrobust protocol confirm {path}`")
    if not is_finished(spec):
        raise UsageError(f"the confirmation in {spec.out} is not finished: no verdict before all its runs")
    stamps = [order["screen_read_at"], order["frozen_at"], order["started_at"], order.get("first_result_seen_at")]
    if None in stamps or stamps != sorted(stamps):
        raise UsageError(f"{spec.out / ORDER} records the steps out of order (screen read, frozen, started, first "
                         f"result: {', '.join(map(str, stamps))})")
    index, methods, overview = _tables(spec.out)
    gaps = None
    if spec.protocol.frontier is not None:
        records = {}
        for run in frontier_runs(spec):
            record = spec.out / FRONTIER_DIR / run.key / "frontier.json"
            if record.is_file():
                records[run.key] = json.loads(record.read_text())
        gaps = frontier_gaps(overview, pd.DataFrame(index["runs"]), records, spec.protocol.target["attack"])
        atomic_write_text(spec.out / f"{VERDICT}-frontier.csv", gaps.to_csv(index=False, float_format="%.6g"))
    table = protocol_verdict(methods, spec.protocol.target, gaps)
    atomic_write_text(spec.out / f"{VERDICT}.csv", table.to_csv(index=False, float_format="%.6g"))
    atomic_write_text(spec.out / f"{VERDICT}.md", verdict_markdown(table, spec.protocol.target, order, gaps))
    return table
