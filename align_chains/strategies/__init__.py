"""Alignment strategies, plain Python. ``get_strategy`` maps a name (or alias) to its class.

Each strategy module registers its class with ``@register_strategy``; importing the module is
what makes the strategy reachable by name. The built-in modules are imported here.
"""

from __future__ import annotations

from align_chains.strategies.adaptive_best_of_n import AdaptiveBestOfN
from align_chains.strategies.base import (
    STRATEGIES,
    Candidate,
    SearchRun,
    Strategy,
    StrategyResult,
    canonical_strategy_name,
    register_strategy,
    unregister_strategy,
)
from align_chains.strategies.best_of_n import BestOfN
from align_chains.strategies.darwin import Darwin
from align_chains.strategies.declarations import Bound, Cost, MemoryPlan, MemoryRequest, NoCostModel
from align_chains.strategies.early_rejection import EarlyRejectionBestOfN
from align_chains.strategies.reward_guided import RewardGuided
from align_chains.strategies.sea import SEA
from align_chains.strategies.value_guided import ValueGuided


def get_strategy(name: str) -> type[Strategy]:
    """The strategy class registered under ``name`` (aliases like 'bon' accepted).

    Args:
        name: A registered name or alias, case-insensitive (``"best-of-n"``, ``"bon"``,
            ``"args"``, ``"ivg"``, ``"darwin"``, ``"sea"``, ...).

    Returns:
        The strategy class. An unknown name raises ``UnknownStrategyError`` listing the names.

    Examples:
        >>> from align_chains import get_strategy
        >>> get_strategy("args").__name__
        'RewardGuided'
        >>> get_strategy("ivg")(principle="Be brief.").guidance_scale(None)
        1.5
    """
    return STRATEGIES[canonical_strategy_name(name)]


__all__ = [
    "SEA",
    "STRATEGIES",
    "AdaptiveBestOfN",
    "BestOfN",
    "Bound",
    "Candidate",
    "Cost",
    "Darwin",
    "EarlyRejectionBestOfN",
    "MemoryPlan",
    "MemoryRequest",
    "NoCostModel",
    "RewardGuided",
    "SearchRun",
    "Strategy",
    "StrategyResult",
    "ValueGuided",
    "canonical_strategy_name",
    "get_strategy",
    "register_strategy",
    "unregister_strategy",
]
