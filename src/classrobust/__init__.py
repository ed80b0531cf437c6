"""classrobust: class-wise robustness in adversarial training.

After Tian et al., "Analysis and Applications of Class-wise Robustness in Adversarial Training",
KDD 2021 (arXiv:2105.14240).

The public API, loaded lazily (``import classrobust as cr`` imports no torch until a name is used)::

    cr.get_dataset, cr.create_model, cr.create_attack, cr.evaluate_classwise,
    cr.train, cr.TrainConfig, cr.evaluate_checkpoint, cr.EvalConfig, cr.calibrate,
    cr.CalibrateConfig, cr.calibrate_checkpoint, cr.load_checkpoint, cr.save_checkpoint,
    cr.run_experiment, cr.load_experiment, cr.build_report, cr.compare, cr.ClasswiseResult,
    cr.Runtime (device, data folder, download, progress and log of the workflows above)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> "module:attribute"
_API = {
    "get_dataset": "classrobust.data:get_dataset",
    "create_model": "classrobust.models:create_model",
    "create_attack": "classrobust.attacks:create_attack",
    "evaluate_classwise": "classrobust.evaluate:evaluate_classwise",
    "train": "classrobust.training:train",
    "TrainConfig": "classrobust.training:TrainConfig",
    "evaluate_checkpoint": "classrobust.workflows.evaluate:evaluate_checkpoint",
    "EvalConfig": "classrobust.workflows.evaluate:EvalConfig",
    "calibrate": "classrobust.defenses.calibrate:calibrate",
    "CalibrateConfig": "classrobust.defenses.calibrate:CalibrateConfig",
    "calibrate_checkpoint": "classrobust.workflows.calibrate:calibrate_checkpoint",
    "load_checkpoint": "classrobust.checkpoint:load_checkpoint",
    "save_checkpoint": "classrobust.checkpoint:save_checkpoint",
    "run_experiment": "classrobust.workflows.experiment:run_experiment",
    "load_experiment": "classrobust.workflows.spec:load_spec",
    "build_report": "classrobust.report:build_report",
    "compare": "classrobust.report.compare:write_comparison",
    "ClasswiseResult": "classrobust.results:ClasswiseResult",
    "Runtime": "classrobust.runtime:Runtime",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    target = _API.get(name)
    if target is None:
        raise AttributeError(f"module 'classrobust' has no attribute {name!r}")
    module, _, attribute = target.partition(":")
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
