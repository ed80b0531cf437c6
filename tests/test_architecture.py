"""The architecture the folders promise: layers that import one way, torch-free analysis and
report, one source of defaults for the CLI and the API, the public API's round trip."""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "classrobust"

#: a module may import only from packages of a lower rank (or its own package)
RANKS = {"__init__": 0, "errors": 0, "io": 1, "options": 1, "registry": 2, "results": 2,
         "runtime": 3, "analysis": 3, "report": 4, "data": 4, "models": 5, "attacks": 6, "evaluate": 7,
         "defenses": 8, "integrations": 8, "checkpoint": 9, "training": 10, "workflows": 11, "cli": 12, "__main__": 13}
#: what analysis and report may import: they read saved results and never load torch
TORCH_FREE = {"errors", "io", "options", "registry", "results", "analysis", "report", "__init__"}


def _imports(path: Path) -> set[str]:
    """Top-level classrobust packages imported anywhere in ``path`` (function bodies included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "classrobust":
                found.add(parts[1] if len(parts) > 1 else "__init__")
    return found


def _package_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def test_every_package_has_a_rank():
    packages = {_package_of(p) for p in PACKAGE.rglob("*.py")}
    assert packages <= set(RANKS), f"add to RANKS (and docs/architecture.md): {packages - set(RANKS)}"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    own = _package_of(path)
    if path == PACKAGE / "__init__.py":  # the lazy public API names every layer
        return
    for target in _imports(path) - {own}:
        assert RANKS[target] < RANKS[own], f"{path.relative_to(PACKAGE)} ({own}) imports {target}, a layer up"
        if own in TORCH_FREE:
            assert target in TORCH_FREE, f"{own} must stay torch-free but imports {target}"


def _module_imports(path: Path) -> set[str]:
    """classrobust modules imported anywhere in ``path`` (function bodies included), dotted."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("classrobust"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("classrobust"))
    return found


def test_no_import_circles_inside_a_layer():
    """Within a package (workflows/ above all) imports point one way too: a circle (experiment ->
    temperature -> experiment) means two modules that cannot be read or changed apart."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("")
        name = "classrobust." + ".".join(p for p in rel.parts if p != "__init__")
        graph[name] = {m for m in _module_imports(path) if m != name}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            for nxt in graph.get(node, ()):
                if nxt == goal:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    workflows = sorted(n for n in graph if n.startswith("classrobust.workflows."))
    circles = [(a, b) for a in workflows for b in graph[a] if b.startswith("classrobust.workflows.") and reaches(b, a)]
    assert not circles, f"import circles: {circles}"


def test_analysis_and_report_load_without_torch():
    code = ("import sys, classrobust, classrobust.report, classrobust.analysis, classrobust.results; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))[:3])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _parsed(argv):
    from classrobust.cli.main import build_parser

    return build_parser().parse_args(argv)


@pytest.mark.parametrize("command, argv, cls", [
    ("train", ["train", "--out", "x"], "classrobust.training:TrainConfig"),
    ("eval", ["eval", "--checkpoint", "x"], "classrobust.workflows.evaluate:EvalConfig"),
    ("calibrate", ["calibrate", "--checkpoint", "x", "--out", "y"], "classrobust.defenses.calibrate:CalibrateConfig"),
])
def test_parser_defaults_are_the_config_defaults(command, argv, cls):
    import importlib

    from classrobust.cli.parsers import config_from_args

    module, _, name = cls.partition(":")
    config_cls = getattr(importlib.import_module(module), name)
    args = _parsed(argv)
    assert config_from_args(config_cls, args) == config_cls()
    cli_fields = {f.name for f in dataclasses.fields(config_cls) if f.metadata.get("cli", True)}
    assert cli_fields <= set(vars(args)), "every option of the config is on the command line"


def test_parser_reads_fractions_and_lists():
    from classrobust.cli.parsers import config_from_args
    from classrobust.training import TrainConfig

    args = _parsed(["train", "--out", "x", "--eps", "8/255", "--drop-classes", "Shirt, Coat",
                    "--lr-milestones", "0.3,0.6", "--compile"])
    config = config_from_args(TrainConfig, args)
    assert config.eps == pytest.approx(8 / 255) and config.drop_classes == ("Shirt", "Coat")
    assert config.lr_milestones == (0.3, 0.6) and config.compile is True


def test_global_attack_options_reach_every_attack_that_takes_them(tiny_model):
    from classrobust.attacks import build_attacks
    from classrobust.errors import UsageError

    attacks = build_attacks("pgd,temp-pgd,apgd-ce", tiny_model, eps=0.1, mode="last", seed=3)
    assert {a.mode for a in attacks.values()} == {"last"} and {a.seed for a in attacks.values()} == {3}
    with pytest.raises(UsageError, match="'fgsm' does not take the global --steps"):
        build_attacks("fgsm,pgd", tiny_model, eps=0.1, steps=20)
    with pytest.raises(UsageError, match="'fgsm' does not take the global --mode"):
        build_attacks("fgsm", tiny_model, eps=0.1, mode="last")
    # AutoAttack keeps its members' steps unless set for it alone
    with pytest.raises(UsageError, match="autoattack:steps=VALUE"):
        build_attacks("pgd,autoattack", tiny_model, eps=0.1, steps=20)
    both = build_attacks("pgd,autoattack:version=fast,steps=7", tiny_model, eps=0.1, steps=20)
    assert both["pgd"].steps == 20 and both["autoattack"].attacks["apgd-ce"].steps == 7
    # per-attack values win over global ones
    assert build_attacks("pgd:steps=5", tiny_model, eps=0.1, steps=20)["pgd"].steps == 5


def test_public_api_is_lazy_and_complete():
    code = ("import sys, classrobust as cr; assert 'torch' not in sys.modules; "
            "names = [n for n in cr.__all__ if n != '__version__']; [getattr(cr, n) for n in names]; "
            "print(len(names))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert int(out) >= 11
    import classrobust as cr

    with pytest.raises(AttributeError):
        cr.no_such_name  # noqa: B018


def _readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_python_round_trip_runs_as_written(synthetic_data_root, tmp_path):
    snippet = _readme_snippet()
    assert "import classrobust as cr" in snippet and "from classrobust" not in snippet
    env = {**os.environ, "CLASSROBUST_SYSTEM_DATA": str(synthetic_data_root),
           "CLASSROBUST_DATA_DIR": str(tmp_path / "datadir"), "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-c", snippet + "\nprint('ROUND TRIP OK', len(table))"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ROUND TRIP OK" in done.stdout
    assert (tmp_path / "runs/api-a/eval/report.html").is_file()
    assert (tmp_path / "runs/api-compare/compare.csv").is_file()


def test_train_names_no_lever():
    source = (PACKAGE / "training" / "loop.py").read_text()
    from classrobust.defenses import LEVERS

    for name in LEVERS.names():
        assert f'"{name}"' not in source, f"the training loop special-cases lever {name!r}"


def test_training_and_calibration_share_one_validation_split(synthetic_env):
    """run_splits is the one recipe: dropped classes are left out of the validation images that
    training selects on and calibration fits on; the test split is never read."""
    import classrobust.data as data
    from classrobust.training import TrainConfig

    config = TrainConfig(drop_classes=("Shirt",), val_size=50, train_subset=120)
    train_set, val = data.run_splits(config)
    shirt = data.get_dataset_info("fashion-mnist").classes.index("Shirt")
    assert len(val) == 50 and len(train_set) == 120
    assert shirt not in val.targets.tolist() and shirt not in train_set.targets.tolist()
    _, bigger = data.run_splits(config, val_size=54)  # calibration asks for its own size of the same split
    assert set(val.indices.tolist()) <= set(data.run_splits(TrainConfig(drop_classes=("Shirt",), val_size=10_000))[1]
                                            .indices.tolist())
    assert shirt not in bigger.targets.tolist() and len(bigger) == 54


def test_a_trained_run_loads_one_way_with_its_runtime(trained_run, tmp_path):
    """load_trained_run: the checkpoint, its training run's validation split (the images run_splits
    gives the training config, never the test split) and its eps; the runtime's data folder and log
    reach it; a checkpoint without a training config is one error naming what needed the split."""
    import classrobust.data as data
    from classrobust.errors import UsageError
    from classrobust.runtime import Runtime
    from classrobust.training import TrainConfig
    from classrobust.workflows.calibrate import calibrate_checkpoint
    from classrobust.workflows.evaluate import load_trained_run

    run = load_trained_run(trained_run, Runtime(), val_size=30, needs="this test")
    _, expected = data.run_splits(TrainConfig.from_dict(run.meta["config"]), val_size=30)
    assert run.val.indices.tolist() == expected.indices.tolist() and run.eps == run.meta["eps"]
    assert not run.model.training and run.checkpoint == trained_run / "model.safetensors"
    heard = []
    calibrate_checkpoint(trained_run, tmp_path / "c.safetensors", val_size=20, steps=1, runtime=Runtime(log=heard.append))
    assert any(line.startswith("calibrating") for line in heard)
    from classrobust.workflows.evaluate import validation_split

    with pytest.raises(UsageError, match=r"^x.safetensors has no training config, so its validation split is "
                                         r"unknown; this test needs a checkpoint trained by classrobust$"):
        validation_split({"dataset": "fashion-mnist"}, "x.safetensors", Runtime(), val_size=3, needs="this test")


def test_the_long_functions_docs_list_are_the_long_functions():
    """docs/architecture.md lists every function over 80 lines with its length: measured here, so
    the numbers stay true when code moves."""
    measured = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 80:
                    measured[f"{path.relative_to(PACKAGE)}: {node.name}"] = lines
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text[text.index("## Long functions kept whole"):]
    listed = {m[0]: int(m[1]) for m in re.findall(r"^- `([^`]+)` \((\d+) lines\)", section, re.M)}
    assert listed == measured
