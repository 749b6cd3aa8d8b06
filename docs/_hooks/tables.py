"""Tables the docs render from the code, so they never drift from it.

- ``<!-- strategy-table -->``: every registered strategy, its chat model, name and page (from
  the strategy registry and each strategy's ``card``);
- ``<!-- strategy-table: choosing -->``: what each does, costs and is for;
- ``<!-- import-graph-table -->``: room -> the rooms it imports, from ``import_graph.GRAPH``
  (the data ``tests/test_import_graph.py`` checks).

``docs/_hooks/site.py`` renders the markers in the site. README.md, which mkdocs does not
render, keeps a generated copy between ``<!-- strategy-table:begin -->`` and
``<!-- strategy-table:end -->``; regenerate it with ``python docs/_hooks/tables.py`` (and
``--check`` exits 1 when it is stale, as ``tests/test_generated_docs.py`` does).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from import_graph import PACKAGES, room_edges

if TYPE_CHECKING:
    from align_chains.strategies.base import Strategy
    from align_chains.strategies.card import StrategyCard

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
STRATEGY_MARKER = re.compile(r"<!--\s*strategy-table(?::\s*(\w+))?\s*-->")
IMPORT_GRAPH_MARKER = re.compile(r"<!--\s*import-graph-table\s*-->")
README_BLOCK = re.compile(r"(<!-- strategy-table:begin -->\n).*?(<!-- strategy-table:end -->)", re.S)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def strategy_rows() -> list[tuple[str, type[Strategy], StrategyCard]]:
    """(name, class, card) for every registered strategy, in registration order."""
    from align_chains.strategies import STRATEGIES
    from align_chains.strategies.card import card_of

    return [(name, cls, card_of(cls)) for name, cls in STRATEGIES.items()]


def _usage(name: str, cls: type[Strategy], card: StrategyCard) -> str:
    from align_chains.chat_models import chat_model_class

    if card.usage:
        return card.usage
    return chat_model_class(name).__name__ if cls.one_prompt_chat_model else "Python API only"


def strategy_table(style: str = "overview", docs_prefix: str = "") -> str:
    """The strategy table; page links get ``docs_prefix`` (``"docs/"`` in the README)."""
    if style == "overview":
        rows = ["| strategy | chat model | name (aliases) | page |", "| --- | --- | --- | --- |"]
        for name, cls, card in strategy_rows():
            names = f"`{name}`" + (f" ({', '.join(f'`{a}`' for a in cls.aliases)})" if cls.aliases else "")
            page = f"[{card.page}]({docs_prefix}{card.page})" if card.page else "—"
            rows.append(f"| {_cell(card.title)} | `{_usage(name, cls, card)}` | {names} | {page} |")
    elif style == "choosing":
        rows = ["| strategy | what it does | cost per answer | use it when |", "| --- | --- | --- | --- |"]
        for _, _, card in strategy_rows():
            title = f"[{_cell(card.title)}]({docs_prefix}{card.page})" if card.page else _cell(card.title)
            rows.append(f"| {title} | {_cell(card.summary)} | {_cell(card.cost)} | {_cell(card.use_when)} |")
    else:
        raise ValueError(f"Unknown strategy-table style {style!r}: use 'overview' or 'choosing'.")
    return "\n".join(rows) + "\n"


def _room_label(name: str) -> str:
    if name in PACKAGES:
        return f"`{name}`" + (" (the package root)" if name == "align_chains" else "")
    folder = PACKAGES["align_chains"] / name
    return f"`{name}/`" if folder.is_dir() else f"`{name}.py`"


def import_graph_table() -> str:
    """Room -> the rooms it imports, lowest rooms first (a room's height: 1 + its highest import)."""
    edges = room_edges()
    height: dict[str, int] = {}

    def level(name: str) -> int:
        if name not in height:
            height[name] = 1 + max((level(t) for t in edges.get(name, ())), default=-1)
        return height[name]

    rows = ["| room | imports |", "| --- | --- |"]
    for name in sorted(edges, key=lambda n: (level(n), n)):
        rows.append(f"| {_room_label(name)} | {', '.join(sorted(edges[name])) or '—'} |")
    return "\n".join(rows) + "\n"


def render(markdown: str, docs_prefix: str = "") -> str:
    """Replace every marker in a page with its table."""
    markdown = STRATEGY_MARKER.sub(
        lambda m: (
            strategy_table(m.group(1) or "overview", docs_prefix)
            if m.group(1) not in ("begin", "end")
            else m.group(0)
        ),
        markdown,
    )
    return IMPORT_GRAPH_MARKER.sub(lambda m: import_graph_table(), markdown)


def refreshed_readme(text: str) -> str:
    """README.md's text with its generated strategy table brought up to date."""
    if not README_BLOCK.search(text):
        raise ValueError(
            "README.md has no <!-- strategy-table:begin --> ... <!-- strategy-table:end --> block."
        )
    table = strategy_table("overview", docs_prefix="docs/")
    return README_BLOCK.sub(lambda m: f"{m.group(1)}{table}{m.group(2)}", text)


def main(argv: list[str]) -> int:
    """``python docs/_hooks/tables.py [--check]``: rewrite (or check) README.md's generated table."""
    text = README.read_text(encoding="utf-8")
    fresh = refreshed_readme(text)
    if "--check" in argv:
        if fresh != text:
            print("README.md's strategy table is stale: run `python docs/_hooks/tables.py`.", file=sys.stderr)
            return 1
        return 0
    README.write_text(fresh, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
