"""Rewrite the include blocks of the docs from the generated reports they quote.

    python scripts/refresh_doc_includes.py docs/findings.md docs/defenses.md

Each ``<!-- include PATH "HEADING" -->`` ... ``<!-- /include -->`` block gets the current
``## HEADING`` section of PATH (a report.md, relative to the doc); tests/test_docs.py fails while
any block differs from its source.
"""

import sys
from pathlib import Path

from classrobust.report.markdown import refresh_includes

for name in sys.argv[1:]:
    path = Path(name)
    text = refresh_includes(path)
    if text != path.read_text():
        path.write_text(text)
        print(f"{path}: refreshed")
