"""Reports: tables (and later figures, HTML) built from saved results; never runs a model."""

from classrobust.report.tables import format_classwise_table, format_warnings

__all__ = ["format_classwise_table", "format_warnings"]
