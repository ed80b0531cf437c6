"""The HTML page shell every report shares: one style sheet, one document template, and
:class:`Page`, which collects sections and saves each figure and table beside the page."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from classrobust.report.markdown import to_markdown

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.8em 0}th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
summary{cursor:pointer;color:#2e5c8a;margin:.4em 0}
img{max-width:100%;height:auto;display:block;margin:.6em 0}.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:.4em .8em;margin:.3em 0}
.meta{color:#666;font-size:.85em}.sig{font-weight:bold;color:#b00}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:.5em}
"""



def html_document(title: str, body: str) -> str:
    """A complete HTML page with the shared style."""
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
            f"</title><style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")


class Page:
    """Collects sections; saves each figure as PNG and SVG and each table as CSV and Markdown."""

    def __init__(self, assets: Path):
        self.assets = assets
        (assets / "figures").mkdir(parents=True, exist_ok=True)
        (assets / "tables").mkdir(parents=True, exist_ok=True)
        self.parts: list[str] = []

    def open_details(self, summary: str) -> None:
        """Start a collapsed block (closed with :meth:`close_details`): long tables many classes make."""
        self.parts.append(f"<details><summary>{html.escape(summary)}</summary>")

    def close_details(self) -> None:
        self.parts.append("</details>")

    def h2(self, title: str, anchor: str) -> None:
        self.parts.append(f'<h2 id="{anchor}">{html.escape(title)}</h2>')

    def text(self, text: str, cls: str = "") -> None:
        self.parts.append(f'<p class="{cls}">{html.escape(text)}</p>')

    def figure(self, fig, name: str, alt: str) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        (self.assets / "figures" / f"{name}.png").write_bytes(buf.getvalue())
        fig.savefig(self.assets / "figures" / f"{name}.svg", format="svg")
        data = base64.b64encode(buf.getvalue()).decode("ascii")
        self.parts.append(f'<img alt="{html.escape(alt)}" data-figure="{name}" src="data:image/png;base64,{data}">')

    def table(self, df: pd.DataFrame, name: str, fmt: dict | None = None, index: bool = False) -> None:
        df.to_csv(self.assets / "tables" / f"{name}.csv", index=index)
        (self.assets / "tables" / f"{name}.md").write_text(to_markdown(df, index=index))
        shown = df.copy()
        for col, f in (fmt or {}).items():
            if col in shown:
                shown[col] = shown[col].map(f)
        self.parts.append(shown.to_html(index=index, escape=True, border=0, na_rep=""))


def pct(v: float) -> str:
    return "" if pd.isna(v) else f"{100 * v:.1f}%"


def interval_cell(value: float, low: float, high: float) -> str:
    """An accuracy in % with its interval: ``"61.5 [54.6, 68.0]"``."""
    return f"{100 * value:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


class Sections:
    """A report page and its Markdown twin, written section by section: every report (evaluation,
    experiment) is a sequence of section functions ``(Sections, context) -> None`` run by :func:`render`."""

    def __init__(self, page: Page):
        self.page = page
        self.md: list[str] = []

    def section(self, heading: str, anchor: str, note: str, df: pd.DataFrame, name: str, fmt=None, index_=False):
        """A heading, a note and a table, on the page and in the Markdown twin."""
        self.page.h2(heading, anchor)
        self.page.text(note)
        self.page.table(df, name, fmt, index=index_)
        shown = df.copy()
        for col, f in (fmt or {}).items():
            if col in shown:
                shown[col] = shown[col].map(f)
        self.md.extend([f"## {heading}", "", note, "", to_markdown(shown, index=index_), ""])


#: a report section: adds its part of the page (or nothing, where it has nothing to show)
Section = Callable[[Sections, Any], None]


def render(sections: Sequence[Section], out: Sections, context: Any) -> None:
    """Run each section in order on one page and one context."""
    for section in sections:
        section(out, context)
