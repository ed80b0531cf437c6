"""Tables as GitHub Markdown (small and dependency-free)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return str(value).replace("|", "\\|")


def to_markdown(df: pd.DataFrame, index: bool = False) -> str:
    frame = df.reset_index() if index else df
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


#: ``<!-- include PATH "HEADING" -->`` ... ``<!-- /include -->``: a doc quotes one section of a generated
#: report (PATH relative to the doc) instead of retyping its numbers
INCLUDE = re.compile(r'<!-- include (?P<path>\S+) "(?P<heading>[^"]+)" -->\n(?P<body>.*?)<!-- /include -->', re.S)


def markdown_section(text: str, heading: str) -> str:
    """The body of the ``## heading`` section of a Markdown document (up to the next heading of
    level 1 or 2), stripped; KeyError if there is none."""
    lines = text.splitlines()
    try:
        start = lines.index(f"## {heading}") + 1
    except ValueError:
        raise KeyError(heading) from None
    end = next((i for i in range(start, len(lines)) if re.match(r"#{1,2} ", lines[i])), len(lines))
    return "\n".join(lines[start:end]).strip()


def refresh_includes(doc: Path) -> str:
    """``doc``'s text with every include block replaced by the current section of its source."""
    def body(match: re.Match) -> str:
        source = (doc.parent / match["path"]).read_text()
        return (f'<!-- include {match["path"]} "{match["heading"]}" -->\n'
                f'{markdown_section(source, match["heading"])}\n<!-- /include -->')

    return INCLUDE.sub(body, doc.read_text())


def replace_blocks(doc: Path, tables: dict[str, str]) -> None:
    """Replace each ``<!-- NAME -->`` ... ``<!-- /NAME -->`` block of ``doc`` with its generated table;
    a block the doc lacks is an error (nothing is written then)."""
    text = doc.read_text()
    for name, table in tables.items():
        block = re.compile(rf"<!-- {re.escape(name)} -->\n.*?<!-- /{re.escape(name)} -->", re.S)
        if not block.search(text):
            raise ValueError(f"{doc} has no {name} block")
        text = block.sub(lambda _: f"<!-- {name} -->\n{table}\n<!-- /{name} -->", text)
    doc.write_text(text)
