"""The docs' strategy and import-graph tables are rendered from the code and cannot go stale.

``docs/_hooks/tables.py`` renders them (the mkdocs hook calls it for the site; README.md keeps a
generated copy). A toy strategy registered here, with no edit anywhere else, must show up in
every table; README.md's copy must match what the registry renders today.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import Field

from align_chains.strategies import (
    SearchRun,
    Strategy,
    StrategyResult,
    register_strategy,
    unregister_strategy,
)
from align_chains.strategies.card import StrategyCard

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "_hooks"))
import tables  # noqa: E402  (docs/_hooks is not a package)
from import_graph import room_edges  # noqa: E402

# page -> the strategy-table markers it must keep
PAGES = {
    "docs/index.md": ["<!-- strategy-table -->"],
    "docs/strategies.md": ["<!-- strategy-table: choosing -->"],
    "docs/architecture.md": ["<!-- strategy-table -->", "<!-- import-graph-table -->"],
}


class CarefulOfN(Strategy):
    """Toy strategy: declares its card, so the docs present it with no edit outside this class."""

    name: ClassVar[str] = "careful-of-n"
    aliases: ClassVar[tuple[str, ...]] = ("con",)
    card: ClassVar[StrategyCard | None] = StrategyCard(
        "Careful-of-N (toy)", "keeps the most careful answer", "n candidates", "never", page="toy.md"
    )
    n: int = Field(2, ge=1)

    def _search(self, run: SearchRun, **options: Any) -> list[StrategyResult]:
        raise NotImplementedError("documentation only")


class PlainOfN(Strategy):
    """Toy strategy without a card: shown from its name and this first line."""

    name: ClassVar[str] = "plain-of-n"

    def _search(self, run: SearchRun, **options: Any) -> list[StrategyResult]:
        raise NotImplementedError("documentation only")


@pytest.fixture
def toys():
    register_strategy(CarefulOfN)
    register_strategy(PlainOfN)
    yield
    unregister_strategy(PlainOfN)
    unregister_strategy(CarefulOfN)


def _rows(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("| ") and "---" not in line]


def test_readme_strategy_table_is_up_to_date():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert tables.refreshed_readme(text) == text, (
        "README.md's strategy table is stale: run `python docs/_hooks/tables.py`"
    )


@pytest.mark.parametrize("page", sorted(PAGES))
def test_pages_keep_their_generated_tables(page):
    text = (ROOT / page).read_text(encoding="utf-8")
    for marker in PAGES[page]:
        assert marker in text, f"{page} lost its {marker} (its table is generated from the code)"


def test_every_registered_strategy_is_in_every_strategy_table(toys):
    from align_chains.strategies import STRATEGIES
    from align_chains.strategies.card import card_of

    rendered = {page: tables.render((ROOT / page).read_text(encoding="utf-8")) for page in PAGES}
    rendered["README.md"] = tables.refreshed_readme((ROOT / "README.md").read_text(encoding="utf-8"))
    assert "careful-of-n" in STRATEGIES and "plain-of-n" in STRATEGIES
    for page, text in rendered.items():
        rows = "\n".join(_rows(text))
        for name, cls in STRATEGIES.items():
            assert card_of(cls).title in rows, f"{page}'s strategy table misses {name!r}"
    choosing = _rows(rendered["docs/strategies.md"])
    careful = "| [Careful-of-N (toy)](toy.md) | keeps the most careful answer | n candidates | never |"
    assert careful in choosing
    assert any("Toy strategy without a card: shown from its name and this first line" in r for r in choosing)
    overview = _rows(rendered["README.md"])
    careful = (
        "| Careful-of-N (toy) | `CarefulOfNChatModel` | `careful-of-n` (`con`) | [toy.md](docs/toy.md) |"
    )
    assert careful in overview


def test_import_graph_table_lists_every_room_and_its_imports():
    table = tables.import_graph_table()
    edges = room_edges()
    for name in ("cancellation", "evaluation", "memory", "chat_models", "align_chains_server"):
        assert name in edges
    for name, targets in edges.items():
        row = next(r for r in _rows(table) if re.match(rf"\| `{name}(/|\.py)?`", r))
        assert row.split("|")[2].strip() == (", ".join(sorted(targets)) or "—")
    architecture = tables.render((ROOT / "docs/architecture.md").read_text(encoding="utf-8"))
    assert table in architecture
