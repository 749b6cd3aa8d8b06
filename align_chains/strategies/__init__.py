"""Alignment strategies, plain Python. ``get_strategy`` maps a name to its class."""

from __future__ import annotations

from align_chains.errors import UnknownStrategyError
from align_chains.strategies.adaptive_best_of_n import AdaptiveBestOfN
from align_chains.strategies.base import Candidate, Strategy, StrategyResult
from align_chains.strategies.best_of_n import BestOfN
from align_chains.strategies.darwin import Darwin
from align_chains.strategies.early_rejection import EarlyRejectionBestOfN
from align_chains.strategies.reward_guided import RewardGuided
from align_chains.strategies.sea import SEA
from align_chains.strategies.value_guided import ValueGuided

STRATEGIES: dict[str, type[Strategy]] = {
    BestOfN.name: BestOfN,
    AdaptiveBestOfN.name: AdaptiveBestOfN,
    RewardGuided.name: RewardGuided,
    ValueGuided.name: ValueGuided,
    SEA.name: SEA,
    Darwin.name: Darwin,
    EarlyRejectionBestOfN.name: EarlyRejectionBestOfN,
}
_ALIASES = {
    "bon": BestOfN.name,
    "best_of_n": BestOfN.name,
    "bestofn": BestOfN.name,
    "adaptive": AdaptiveBestOfN.name,
    "adaptive_best_of_n": AdaptiveBestOfN.name,
    "args": RewardGuided.name,
    "reward_guided": RewardGuided.name,
    "ivg": ValueGuided.name,
    "value_guided": ValueGuided.name,
    "simple-energy-adaptation": SEA.name,
    "speculative-rejection": EarlyRejectionBestOfN.name,
    "early_rejection": EarlyRejectionBestOfN.name,
}


def canonical_strategy_name(name: str) -> str:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in STRATEGIES:
        raise UnknownStrategyError(f"Unknown strategy {name!r}. Available: {', '.join(sorted(STRATEGIES))}.")
    return key


def get_strategy(name: str) -> type[Strategy]:
    """The strategy class registered under ``name`` (aliases like 'bon' accepted)."""
    return STRATEGIES[canonical_strategy_name(name)]


__all__ = [
    "SEA",
    "STRATEGIES",
    "AdaptiveBestOfN",
    "BestOfN",
    "Candidate",
    "Darwin",
    "EarlyRejectionBestOfN",
    "RewardGuided",
    "Strategy",
    "StrategyResult",
    "ValueGuided",
    "canonical_strategy_name",
    "get_strategy",
]
