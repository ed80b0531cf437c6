"""Evaluation: model x attacks x loader -> :class:`ClasswiseResult` (per-sample records, per-class counts)."""

from classrobust.evaluate.classwise import evaluate_classwise, predict, worst_case_predictions
from classrobust.results import CLEAN, AttackResult, ClasswiseResult, collapsed_classes

__all__ = ["evaluate_classwise", "predict", "worst_case_predictions", "ClasswiseResult", "AttackResult", "CLEAN", "collapsed_classes"]
