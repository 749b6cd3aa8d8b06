"""Concurrent calls of one chat model decoded as one batch.

An app that calls a chat model from several threads or coroutines (a web handler per user,
LangGraph's parallel branches, ``asyncio.gather`` over ``ainvoke``) would otherwise run the calls
one after another under the policy's lock. Each policy owns one ``Scheduler``
(``align_chains.scheduling``, the server's too): a call is submitted as a job keyed by its chat
model and settings, and the worker runs every queued job with the same key as ONE strategy run,
exactly as ``batch()`` would. Each call keeps its own callbacks (LangChain started them before
``_generate``), its own errors (a failing batch is re-run call by call) and its own cancellation
(the batch stops only when every member is cancelled).

Seeded calls are never batched (a batch would change which random numbers each one draws), nor are
calls made from the worker itself (a reward that calls a chat model on the same policy).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatResult
from langchain_core.runnables.config import run_in_executor

from align_chains.cancellation import CancelToken, current
from align_chains.models.policy import Policy
from align_chains.scheduling import BatchingSettings, Scheduler

CALL_BATCHING = BatchingSettings(window_s=0.02, max_batch=32, delay_factor=0.1, max_running=1)
"""Concurrent calls wait at most 20 ms for company (a call takes seconds): up to 32 per run. One
group at a time: in-process calls have no memory admission (the server's estimate is what lets
its scheduler run two groups in turns without risking a second peak past the device's memory)."""

_OWNERS_LOCK = threading.Lock()

#: runs the requests of one group: (messages, run manager) pairs, stop, kwargs -> outcomes
RunRequests = Callable[[list[tuple[list[BaseMessage], Any]], "list[str] | None", dict[str, Any]], list[Any]]


@dataclass
class Call:
    """One ``invoke``/``ainvoke`` call waiting for, or in, a batched run."""

    run_requests: RunRequests
    messages: list[BaseMessage]
    run_manager: Any
    stop: list[str] | None
    kwargs: dict[str, Any]
    batch_key: str | None
    cancel_token: CancelToken | None = None


def run_together(calls: Sequence[Call]) -> list[ChatResult | Exception]:
    """Every call of one group (same key: same model, stop and kwargs) in one run."""
    first = calls[0]
    return first.run_requests([(c.messages, c.run_manager) for c in calls], first.stop, first.kwargs)


def scheduler_of(policy: Policy) -> Scheduler:
    """The policy's call scheduler (one worker thread), started on first use."""
    with _OWNERS_LOCK:
        if policy.scheduler is None:
            policy.scheduler = Scheduler(run_together, CALL_BATCHING)
        return policy.scheduler


def call_key(model_id: int, seeded: bool, stop: list[str] | None, kwargs: dict[str, Any]) -> str | None:
    """The batch key of a call: calls with equal keys can share one run; None: run alone."""
    if seeded:
        return None
    try:
        return json.dumps([model_id, stop, kwargs], sort_keys=True)
    except (TypeError, ValueError):  # a kwarg that is not plain data (a tool object, say): alone
        return None


def submit(policy: Policy, call: Call) -> tuple[Any, CancelToken]:
    """Queue a call; (its job, its token). The token follows the caller's active token and the
    chat model's ``cancel_token``, so a call cancelled while it waits never runs."""
    scheduler = scheduler_of(policy)
    parents = (current(), call.cancel_token, scheduler.shutdown)
    token = CancelToken(parents=[t for t in parents if t is not None])
    return scheduler.submit(call, token), token


def on_worker(policy: Policy) -> bool:
    """True when called from the policy's own worker thread (run directly, never queue on it)."""
    scheduler = policy.scheduler
    return scheduler is not None and threading.current_thread() in scheduler.workers


def wait(policy: Policy, call: Call) -> ChatResult:
    """Run a call through the policy's scheduler and block until it is answered."""
    job, _ = submit(policy, call)
    return job.future.result()


async def await_call(policy: Policy, call: Call) -> ChatResult:
    """``wait`` without holding a thread: the coroutine awaits the job; if it is cancelled, so is the call."""
    job, token = submit(policy, call)
    try:
        return await asyncio.wrap_future(job.future)
    except asyncio.CancelledError:
        token.cancel("the caller's task was cancelled")
        raise


class ConcurrentCalls:
    """Mixin for the aligned chat models: ``_generate`` / ``_agenerate`` through the policy's
    scheduler (the host has ``load()``, ``_policy``, ``_run_requests``, ``seed`` and
    ``concurrent_batching``; ``BatchInOneRun`` after it in the bases runs a call on its own)."""

    _policy: Policy | None
    seed: int | None
    concurrent_batching: bool
    cancel_token: CancelToken | None

    def _concurrent_call(
        self, messages: list[BaseMessage], stop: list[str] | None, run_manager: Any, kwargs: dict[str, Any]
    ) -> Call | None:
        """This call as a job for the policy's scheduler, or None to run it here (batching off,
        a seeded call, settings that are not plain data, or a call from the worker itself)."""
        if not self.concurrent_batching or self._policy is None or on_worker(self._policy):
            return None
        seeded = kwargs.get("seed", self.seed) is not None
        key = call_key(id(self), seeded, stop, kwargs)
        if key is None:
            return None
        return Call(self._run_requests, messages, run_manager, stop, dict(kwargs), key, self.cancel_token)

    def _queued(
        self, messages: list[BaseMessage], stop: list[str] | None, run_manager: Any, kwargs: dict[str, Any]
    ) -> Callable[[], ChatResult] | None:
        """``_generate``'s hook: concurrent calls with the same settings are decoded as one batch."""
        self.load()
        call = self._concurrent_call(messages, stop, run_manager, kwargs)
        if call is None:
            return None
        return lambda: wait(self._policy, call)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        """``_generate`` without holding a thread while the call waits for its batch."""
        await run_in_executor(None, self.load)
        call = self._concurrent_call(messages, stop, run_manager, kwargs)
        if call is None:
            return await run_in_executor(None, self._generate, messages, stop, run_manager, **kwargs)
        return await await_call(self._policy, call)
