"""How the documentation presents a strategy: a ``StrategyCard`` declared on the strategy class.

The strategy tables of README.md and the docs are rendered from the registry and these cards
(``docs/_hooks/tables.py``), so a registered strategy appears in them with no edit outside its
own file. A strategy that declares no card still appears, from its name and docstring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from align_chains.strategies.base import Strategy

UNDECLARED = "not declared (give the strategy class a `card`)"


@dataclass(frozen=True)
class StrategyCard:
    """One row of the docs' strategy tables: what a strategy does, costs and is for."""

    title: str  # e.g. "Best-of-N"
    summary: str  # what it does, one clause
    cost: str  # cost per answer
    use_when: str  # when to choose it
    page: str | None = None  # its page under docs/, e.g. "best_of_n.md"
    usage: str | None = None  # how to call it, when that is not its chat model class


def card_of(strategy: type[Strategy]) -> StrategyCard:
    """The strategy's declared card, or one from its name and docstring's first line."""
    if strategy.card is not None:
        return strategy.card
    first = (strategy.__doc__ or "").strip().splitlines()
    return StrategyCard(
        title=strategy.name,
        summary=first[0].rstrip(".") if first else UNDECLARED,
        cost=UNDECLARED,
        use_when=UNDECLARED,
    )
