"""The report page: one self-contained HTML file (inline CSS and JavaScript, the data embedded).

The page needs no network: the CSS, the JavaScript (package data files under ``assets/``) and
the data are written into the file. The data goes into ``<script type="application/json">``
blocks with ``<``, ``>`` and ``&`` escaped as JSON ``\\u`` escapes, so no text in an answer can
close the block or open a tag; the page's JavaScript puts every text on the page as text, never
as markup.
"""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

from align_chains.evaluation.report.data import page_data

_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def embed_json(value: Any) -> str:
    """JSON that is safe inside a ``<script>`` element: no ``<``, ``>`` or ``&`` left unescaped."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for char, escaped in _ESCAPES.items():
        text = text.replace(char, escaped)
    return text


def _asset(name: str) -> str:
    return files("align_chains.evaluation.report").joinpath("assets", name).read_text(encoding="utf-8")


def render_page(core: dict[str, Any], details: Any, title: str) -> str:
    """The page's HTML for a core document and its details (see ``report.data``)."""
    values = {
        "TITLE": html.escape(title),
        "TOOL": html.escape(str(core.get("tool", "align-chains"))),
        "CSS": _asset("report.css"),
        "JS": _asset("report.js"),
        "DATA": embed_json(core),
        "DETAILS": embed_json(details),
    }
    # one pass: inserted text (the data above all) is never searched for placeholders again
    return re.sub(r"\{\{([A-Z]+)\}\}", lambda m: values[m.group(1)], _asset("page.html"))


def write_report(sources: Sequence[str | Path], path: str | Path, *, title: str | None = None) -> Path:
    """Write the report of one results file, or of two compared (B against A), to ``path``.

    Every file is read and checked before anything is written; a file the report cannot read
    raises ``EvalFileError`` naming it, the problem and the fix. The page is written atomically.
    """
    core, details = page_data(sources)
    names = " (A) and ".join(Path(s).name for s in sources) + (" (B)" if len(sources) == 2 else "")
    page = render_page(core, details, title or f"align-chains eval report: {names}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path
