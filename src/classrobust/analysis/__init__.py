"""Analyses: pure functions over saved per-sample results (no model is run here, no torch is loaded).

``analysis.compare`` (two evaluations, class by class) and ``analysis.experiment`` (the combined
tables of an experiment grid) build on the functions exported here."""

from classrobust.analysis.confusion import attacked_into, row_normalised, strongest_pairs, top_destinations
from classrobust.analysis.consistency import (attack_consistency, confused_class_ablation, discordant_pairs,
                                              gain_attribution, mcnemar_exact,
                                              rank_correlations, run_consistency, weight_norm_correlation)
from classrobust.analysis.methods import compare_methods, judge_target, seed_interval
from classrobust.analysis.stats import (bootstrap_disparity, disparity, disparity_table, empirical_bayes_intervals,
                                        holm, per_class_table, wilson_interval)
from classrobust.analysis.superclasses import (default_superclasses, read_superclasses, superclass_table)

__all__ = ["compare_methods", "judge_target", "seed_interval", "holm", "confused_class_ablation", "attacked_into", "row_normalised", "strongest_pairs", "top_destinations", "attack_consistency",
           "gain_attribution", "mcnemar_exact", "discordant_pairs", "rank_correlations", "run_consistency",
           "weight_norm_correlation", "bootstrap_disparity", "disparity", "disparity_table",
           "per_class_table", "wilson_interval", "empirical_bayes_intervals", "default_superclasses",
           "read_superclasses", "superclass_table"]
