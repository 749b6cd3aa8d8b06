"""LangChain chat models, one per strategy, and a name -> class registry for the CLI."""

from __future__ import annotations

from align_chains.chat_models.base import AlignedChatModel
from align_chains.chat_models.best_of_n import BestOfNChatModel
from align_chains.chat_models.darwin import DarwinChatModel
from align_chains.chat_models.rerank import RerankChatModel
from align_chains.chat_models.reward_guided import RewardGuidedChatModel
from align_chains.chat_models.sea import SEAChatModel
from align_chains.chat_models.value_guided import ValueGuidedChatModel
from align_chains.errors import UnknownStrategyError
from align_chains.strategies import canonical_strategy_name

CHAT_MODELS: dict[str, type[AlignedChatModel]] = {
    "best-of-n": BestOfNChatModel,
    "darwin": DarwinChatModel,
    "reward-guided": RewardGuidedChatModel,
    "value-guided": ValueGuidedChatModel,
    "sea": SEAChatModel,
}


def chat_model_class(strategy: str) -> type[AlignedChatModel]:
    """The chat model class for a strategy name (raises UnknownStrategyError)."""
    name = canonical_strategy_name(strategy)
    if name not in CHAT_MODELS:
        raise UnknownStrategyError(
            f"Strategy {name!r} works across a batch of prompts and has no one-prompt chat model: "
            "use BestOfNChatModel(allocation='adaptive', budget=...).batch([...]) from Python."
        )
    return CHAT_MODELS[name]


__all__ = [
    "CHAT_MODELS",
    "AlignedChatModel",
    "BestOfNChatModel",
    "DarwinChatModel",
    "RerankChatModel",
    "RewardGuidedChatModel",
    "SEAChatModel",
    "ValueGuidedChatModel",
    "chat_model_class",
]
