"""Experiment files: grids of datasets x training methods x seeds under one list of attacks."""

from classrobust.experiment.spec import ConfusedClassAblation, ExperimentSpec, RunSpec, load_spec

__all__ = ["ConfusedClassAblation", "ExperimentSpec", "RunSpec", "load_spec"]
