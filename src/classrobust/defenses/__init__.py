"""Class-wise defenses: training-phase levers (:mod:`~classrobust.defenses.levers`), the
inference-phase calibration (:mod:`~classrobust.defenses.calibrate`) and the per-class logit
adjustment it installs inside the model (:class:`~classrobust.defenses.adjust.ClassLogitAdjust`).

The training loop drives the levers through :class:`ClasswiseTerms` and never names one.
"""

from classrobust.models.adjust import ClassLogitAdjust
# (the fitting function is ``classrobust.defenses.calibrate.calibrate``, also ``cr.calibrate``; it is not
# re-exported here, where its name would hide the module of the same name)
from classrobust.defenses.calibrate import CalibrateConfig, Calibration
from classrobust.defenses.levers import LEVERS, ClasswiseTerms, Lever, check_levers, parse_levers

__all__ = ["ClassLogitAdjust", "CalibrateConfig", "Calibration", "LEVERS", "ClasswiseTerms", "Lever",
           "check_levers", "parse_levers"]
