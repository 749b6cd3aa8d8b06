"""Calls of the wrapped chat model: a pool of concurrent calls, each retried on transient errors.

Every search over a wrapped model (uniform, adaptive, DARWIN) goes through ``CallPool``: one job
is (messages, config, call keywords); a batch of jobs runs in threads (``call_many``) or asyncio
tasks (``acall_many``), at most ``max_concurrency`` at once, and each job comes back as its
message or its last exception, with the calls it took. One failure never loses the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import get_executor_for_config
from tenacity import AsyncRetrying, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from align_chains.errors import AlignChainsError

MAX_THREADS = 64  # default thread pool bound when max_concurrency is None

# HTTP statuses worth another try: timeout, too early, rate limit, server-side failures
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_TRANSIENT_NAMES = (
    "timeout",
    "connection",
    "ratelimit",
    "serviceunavailable",
    "internalserver",
    "overloaded",
)

#: one call of the wrapped model: its messages, config (callbacks) and call keywords
Job = tuple[Sequence[BaseMessage], RunnableConfig, dict[str, Any]]
#: what a call came back with: the message, or the exception of its last try
Outcome = AIMessage | BaseException


def is_transient(exc: BaseException) -> bool:
    """Whether a failed chat-model call is worth retrying.

    The rule: builtin ``TimeoutError``/``ConnectionError`` (and subclasses); an exception carrying
    an HTTP status (``status_code``, ``status``, or ``response.status_code``) in
    ``TRANSIENT_STATUS``; or an exception class, anywhere in its MRO, whose name contains
    Timeout, Connection, RateLimit, ServiceUnavailable, InternalServer or Overloaded (the
    openai/httpx/anthropic client errors). Everything else (bad request, auth, validation,
    our own errors) fails at once.
    """
    if isinstance(exc, AlignChainsError):
        return False
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    response = getattr(exc, "response", None)
    for status in (getattr(exc, "status_code", None), getattr(exc, "status", None),
                   getattr(response, "status_code", None)):  # fmt: skip
        if isinstance(status, int) and not isinstance(status, bool):
            return status in TRANSIENT_STATUS
    names = [cls.__name__.lower().replace("_", "") for cls in type(exc).__mro__]
    return any(key in name for name in names for key in _TRANSIENT_NAMES)


def child_config(run_manager: Any, manager_class: type) -> RunnableConfig:
    """Config for the wrapped model's calls: traced as children of ``run_manager``'s run."""
    config = RunnableConfig()
    if run_manager is not None:
        config["callbacks"] = manager_class(
            handlers=[],
            inheritable_handlers=run_manager.inheritable_handlers,
            parent_run_id=run_manager.run_id,
            inheritable_tags=run_manager.inheritable_tags,
            inheritable_metadata=run_manager.inheritable_metadata,
        )
    return config


@dataclass(frozen=True)
class CallPool:
    """Concurrent, retried calls of ``chat_model``: tenacity's exponential back-off from ``wait``
    seconds (doubling, at most ``max_wait``), ``attempts`` tries, only on ``is_transient`` errors."""

    chat_model: BaseChatModel
    max_concurrency: int | None
    attempts: int
    wait: float
    max_wait: float

    def retry_settings(self) -> dict[str, Any]:
        """Keyword arguments of tenacity's ``Retrying``/``AsyncRetrying`` for one call."""
        return {
            "stop": stop_after_attempt(self.attempts),
            "wait": wait_exponential(multiplier=self.wait, max=self.max_wait),
            "retry": retry_if_exception(is_transient),
            "reraise": True,
        }

    def call_many(self, jobs: Sequence[Job]) -> list[tuple[Outcome, int]]:
        """Every job in one thread pool of ``max_concurrency`` workers (default: one per job, at
        most ``MAX_THREADS``); per job: the message or the last exception, and the calls made."""
        if not jobs:
            return []

        def one(job: Job) -> tuple[Outcome, int]:
            messages, config, call_kwargs = job
            calls = 0
            try:
                for attempt in Retrying(**self.retry_settings()):
                    with attempt:
                        calls += 1
                        message = self.chat_model.invoke(list(messages), config, **call_kwargs)
            except Exception as exc:  # kept per call: one failure never loses the others
                return exc, calls
            return checked(message), calls

        pool = RunnableConfig(max_concurrency=self.max_concurrency or min(len(jobs), MAX_THREADS))
        with get_executor_for_config(pool) as executor:
            return list(executor.map(one, jobs))

    async def acall_many(self, jobs: Sequence[Job]) -> list[tuple[Outcome, int]]:
        """``call_many`` with ``ainvoke`` in asyncio tasks, at most ``max_concurrency`` calls in
        flight (a back-off does not hold a slot)."""
        if not jobs:
            return []
        gate = asyncio.Semaphore(self.max_concurrency or len(jobs))

        async def one(job: Job) -> tuple[Outcome, int]:
            messages, config, call_kwargs = job
            calls = 0
            try:
                async for attempt in AsyncRetrying(**self.retry_settings()):
                    with attempt:
                        calls += 1
                        async with gate:
                            message = await self.chat_model.ainvoke(list(messages), config, **call_kwargs)
            except Exception as exc:  # kept per call: one failure never loses the others
                return exc, calls
            return checked(message), calls

        return list(await asyncio.gather(*(one(job) for job in jobs)))


def checked(message: Any) -> Outcome:
    """The wrapped model's answer, or a TypeError (kept as that call's outcome) if not an AIMessage."""
    if isinstance(message, AIMessage):
        return message
    return TypeError(f"the wrapped chat model returned a {type(message).__name__}, not an AIMessage")
