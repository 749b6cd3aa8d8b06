"""LangChain chat models, one per strategy, and a name -> class registry for the CLI."""

from __future__ import annotations

from align_chains.chat_models.base import AlignedChatModel
from align_chains.chat_models.best_of_n import BestOfNChatModel
from align_chains.strategies import canonical_strategy_name

CHAT_MODELS: dict[str, type[AlignedChatModel]] = {"best-of-n": BestOfNChatModel}


def chat_model_class(strategy: str) -> type[AlignedChatModel]:
    """The chat model class for a strategy name (raises UnknownStrategyError)."""
    return CHAT_MODELS[canonical_strategy_name(strategy)]


__all__ = ["CHAT_MODELS", "AlignedChatModel", "BestOfNChatModel", "chat_model_class"]
