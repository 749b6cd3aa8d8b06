"""LangChain chat models, one per strategy, and a name -> class registry for the CLI and server.

The registry derives from the strategy registry: every registered strategy that runs on one
prompt has a chat model, either a hand-written one below or one built from the strategy's own
settings by ``chat_model_for``. A new strategy therefore needs no edit here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from align_chains.chat_models.base import AlignedChatModel
from align_chains.chat_models.best_of_n import BestOfNChatModel
from align_chains.chat_models.darwin import DarwinChatModel
from align_chains.chat_models.rerank import RerankChatModel
from align_chains.chat_models.reward_guided import RewardGuidedChatModel
from align_chains.chat_models.sea import SEAChatModel
from align_chains.chat_models.settings import DELIBERATE_DIFFERENCES, chat_model_for, settings_base
from align_chains.chat_models.value_guided import ValueGuidedChatModel
from align_chains.errors import UnknownStrategyError
from align_chains.strategies import STRATEGIES, canonical_strategy_name
from align_chains.strategies.base import Strategy

# strategies with a hand-written chat model (documentation, chat-only settings); others get a built one
_HAND_WRITTEN: dict[str, type[AlignedChatModel]] = {
    cls.strategy_class.name: cls
    for cls in (BestOfNChatModel, DarwinChatModel, RewardGuidedChatModel, ValueGuidedChatModel, SEAChatModel)
}
_BUILT: dict[type[Strategy], type[AlignedChatModel]] = {}


def chat_model_class(strategy: str) -> type[AlignedChatModel]:
    """The chat model class for a strategy name (raises UnknownStrategyError)."""
    name = canonical_strategy_name(strategy)
    strategy_class = STRATEGIES[name]
    if not strategy_class.one_prompt_chat_model:
        raise UnknownStrategyError(
            f"Strategy {name!r} works across a batch of prompts and has no one-prompt chat model: "
            "use BestOfNChatModel(allocation='adaptive', budget=...).batch([...]) from Python."
        )
    if name in _HAND_WRITTEN:
        return _HAND_WRITTEN[name]
    if strategy_class not in _BUILT:
        _BUILT[strategy_class] = chat_model_for(strategy_class)
    return _BUILT[strategy_class]


class _ChatModels(Mapping[str, type[AlignedChatModel]]):
    """Strategy name -> chat model class, for every registered strategy that has one (live)."""

    def __getitem__(self, name: str) -> type[AlignedChatModel]:
        if name not in STRATEGIES or not STRATEGIES[name].one_prompt_chat_model:
            raise KeyError(name)
        return chat_model_class(name)

    def __iter__(self) -> Iterator[str]:
        return iter([name for name, cls in STRATEGIES.items() if cls.one_prompt_chat_model])

    def __len__(self) -> int:
        return sum(1 for _ in self)


CHAT_MODELS: Mapping[str, type[AlignedChatModel]] = _ChatModels()


__all__ = [
    "CHAT_MODELS",
    "DELIBERATE_DIFFERENCES",
    "AlignedChatModel",
    "BestOfNChatModel",
    "DarwinChatModel",
    "RerankChatModel",
    "RewardGuidedChatModel",
    "SEAChatModel",
    "ValueGuidedChatModel",
    "chat_model_class",
    "chat_model_for",
    "settings_base",
]
