"""Reports: tables (and later figures, HTML) built from saved results; never runs a model."""

from classrobust.report.tables import format_classwise_table, format_warnings


def build_report(*args, **kwargs):
    """See :func:`classrobust.report.html.build_report` (imported lazily: matplotlib is slow to load)."""
    from classrobust.report.html import build_report as build

    return build(*args, **kwargs)


__all__ = ["format_classwise_table", "format_warnings", "build_report"]
