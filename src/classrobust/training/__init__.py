"""Adversarial training: one loop (:func:`train`) with pluggable methods (``METHODS``)."""

from classrobust.training.config import TrainConfig
from classrobust.training.loop import train
from classrobust.training.methods import METHODS, TrainingMethod

__all__ = ["TrainConfig", "train", "METHODS", "TrainingMethod"]
