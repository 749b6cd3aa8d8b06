"""What every search over a wrapped chat model is: the settings it reads and the two ways it runs.

A search class per strategy (``uniform.py``, ``adaptive.py``, ``darwin.py``) subclasses
``Search``; ``RerankChatModel`` picks one from its dispatch table and hands it the model's
settings and a ``CallPool``. A search instance serves one call (``run`` or ``arun``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Protocol

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatResult
from langchain_core.runnables.config import run_in_executor

from align_chains.chat_models.batching import Requests
from align_chains.chat_models.rerank.calls import CallPool
from align_chains.rewards import RewardModel
from align_chains.strategies.mutation import MutationMode


class RerankSettings(Protocol):
    """The settings a search reads (``RerankChatModel``'s fields; see their descriptions there)."""

    chat_model: BaseChatModel
    strategy: str
    n: int
    budget: int | None
    exploration: float
    stop: list[str] | None
    m: int
    k: int
    cycles: int
    mutation_max_tokens: int
    mutation_mode: MutationMode
    continuation: str
    max_tokens: int | None
    max_tokens_param: str
    continue_kwargs: dict[str, Any]
    seed: int | None
    retry_attempts: int

    def load_reward(self) -> RewardModel: ...


class Search(ABC):
    """One strategy's search over a wrapped chat model.

    Class-level facts the chat model reads at construction: ``own_settings`` (settings only this
    strategy reads: setting one under another strategy is an error), ``defaults`` (its own
    defaults of shared settings), ``check_settings`` and ``identifying_params``.
    """

    own_settings: ClassVar[tuple[str, ...]] = ()
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, settings: RerankSettings, pool: CallPool) -> None:
        self.settings = settings
        self.pool = pool

    @classmethod
    def check_settings(cls, settings: RerankSettings, explicit: set[str]) -> None:
        """Construction-time checks beyond each field's own (``explicit``: the settings passed);
        a strategy with none keeps this one."""
        return None

    @classmethod
    def identifying_params(cls, settings: RerankSettings) -> dict[str, Any]:
        """This strategy's settings that tell two models apart (added to ``_identifying_params``)."""
        return {}

    def answer_kwargs(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Keywords of an answer call: the call's stop (else the model's) and, when ``max_tokens``
        is set, the cap under the wrapped model's ``max_tokens_param`` (a call's own value wins)."""
        settings = self.settings
        out = {"stop": stop if stop is not None else settings.stop, **kwargs}
        if settings.max_tokens is not None and settings.max_tokens_param not in kwargs:
            out[settings.max_tokens_param] = settings.max_tokens
        return out

    @abstractmethod
    def run(
        self, requests: Requests, stop: list[str] | None, kwargs: dict[str, Any]
    ) -> list[ChatResult | Exception]:
        """Search every request together; per request its result, or the error that ended it."""

    async def arun(
        self, messages: list[BaseMessage], stop: list[str] | None, run_manager: Any, kwargs: dict[str, Any]
    ) -> ChatResult:
        """One prompt from async code; by default ``run`` in a worker thread (its pools are threads)."""
        sync_manager = run_manager.get_sync() if run_manager is not None else None
        (result,) = await run_in_executor(None, self.run, [(messages, sync_manager)], stop, kwargs)
        if isinstance(result, Exception):
            raise result
        return result
