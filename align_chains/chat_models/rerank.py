"""Rerank ANY LangChain chat model: sample n answers through its own API, keep the reward's best.

This is how a served policy (a ``ChatOpenAI`` pointed at a vLLM or SGLang server, a hosted
model) is aligned when the local engine is not the one generating: the wrapped model is called
``n`` times concurrently, each call retried on transient errors with tenacity, and the
successful answers are scored by an align_chains reward in one batched call.

DARWIN runs here too, without cache reuse (``rerank_darwin.py``): the wrapped model writes the
mutated instructions and answers them, in m-token calls when it can continue a partial answer.

Only response-level strategies can work this way. Strategies that steer decoding token by token
(reward-guided, value-guided) need the policy's logits, and SEA needs gradients through it; a
remote chat model exposes neither, so asking for them is an error at construction.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Literal

import numpy as np
from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import get_executor_for_config, run_in_executor
from pydantic import ConfigDict, Field, PrivateAttr
from tenacity import AsyncRetrying, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from align_chains.chat_models.batching import batch_with_callbacks
from align_chains.chat_models.messages import to_conversation
from align_chains.chat_models.rerank_darwin import DarwinSearch, check_darwin_settings
from align_chains.errors import AlignChainsError, InvalidInputError, RewardError
from align_chains.models.embedded import EMBEDDED_REWARD
from align_chains.rewards import RewardModel, load_reward
from align_chains.strategies import canonical_strategy_name
from align_chains.strategies.allocation import allocate, exploration_size

# what each strategy the wrapper cannot run would need from the policy
_NEEDS_THE_MODEL = {
    "reward-guided": "the policy's next-token logits at every step (ARGS)",
    "value-guided": "the policy's next-token logits at every step (IVG)",
    "sea": "gradients through the policy's embeddings (SEA)",
}
_SUPPORTED = ("best-of-n", "adaptive-best-of-n", "darwin")
# settings only DARWIN reads; setting one for another strategy is an error
_DARWIN_ONLY = (
    "m",
    "k",
    "cycles",
    "mutation_max_tokens",
    "continuation",
    "continue_kwargs",
    "seed",
)
DARWIN_N = 5  # the paper's mutations per cycle: n's default under strategy="darwin"
_MAX_THREADS = 64  # default thread pool bound when max_concurrency is None

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


def _response_level_only(value: str) -> str:
    """The canonical strategy name, or a clear error for one a wrapped chat model cannot run."""
    name = canonical_strategy_name(value)
    if name in _NEEDS_THE_MODEL:
        raise InvalidInputError(
            f"Strategy {name!r} needs {_NEEDS_THE_MODEL[name]}, which a wrapped chat model does not "
            "expose. Use strategy='best-of-n' here, or run it on a local policy with "
            f"chat_model_class({name!r})(model=...)."
        )
    if name not in _SUPPORTED:
        raise InvalidInputError(
            f"RerankChatModel does not implement strategy {name!r} yet; supported: {list(_SUPPORTED)}."
        )
    return name


class SamplingFailedError(AlignChainsError, RuntimeError):
    """Every sample of a reranked call failed; ``errors`` holds each sample's last exception."""

    def __init__(self, message: str, errors: Sequence[BaseException]) -> None:
        super().__init__(message)
        self.errors = list(errors)


class RerankChatModel(BaseChatModel):
    """Best-of-N, adaptive Best-of-N or DARWIN over any LangChain chat model, scored by our reward.

    >>> from langchain_openai import ChatOpenAI  # doctest: +SKIP
    >>> served = ChatOpenAI(base_url="http://localhost:8000/v1", api_key="EMPTY", model="...")
    >>> RerankChatModel(chat_model=served, reward="minilm", n=8, max_concurrency=8).invoke("...")

    The answer is the chosen candidate's own message (tool calls and all) with
    ``response_metadata`` saying how it was chosen, and ``usage_metadata`` summed over the
    successful samples (when the wrapped model reports usage).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    chat_model: BaseChatModel = Field(description="The chat model that generates the candidates.")
    reward: Any = Field(
        default=EMBEDDED_REWARD,
        description="Reward spec for load_reward(): 'minilm', a model id, a function or a RewardModel.",
    )
    n: int = Field(
        default=4, ge=1, description="Candidates sampled per prompt (DARWIN: mutations per cycle, default 5)."
    )
    strategy: str = Field(
        default="best-of-n",
        description="'best-of-n', 'adaptive-best-of-n' (alias 'adaptive') or 'darwin'.",
    )
    budget: int | None = Field(
        default=None, ge=1, description="Adaptive: average samples per prompt over a batch (default n)."
    )
    exploration: float = Field(
        default=0.75, gt=0.0, le=1.0, description="Adaptive: fraction of the budget explored first."
    )
    stop: list[str] | None = Field(
        default=None, description="Stop strings for every call of the wrapped model (a call's stop= wins)."
    )
    max_concurrency: int | None = Field(
        default=None, ge=1, description="Calls in flight at once (None: all samples of the call, <= 64)."
    )
    # DARWIN (strategy="darwin"; paper defaults), see rerank_darwin.py
    m: int = Field(
        default=40, ge=1, description="DARWIN: tokens per segment between replacements (continuation only)."
    )
    k: int = Field(default=3, ge=1, description="DARWIN: candidates kept at each replacement (k <= n).")
    cycles: int = Field(default=3, ge=1, description="DARWIN: mutation cycles after the first answer.")
    mutation_max_tokens: int = Field(
        default=192, ge=16, description="DARWIN: token cap on the wrapped model's list of rewrites."
    )
    continuation: Literal["none", "final-message"] = Field(
        default="none",
        description="DARWIN: 'final-message' continues partial answers in m-token calls (the server must "
        "continue a trailing assistant message); 'none': whole answers, no mid-answer replacement.",
    )
    max_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Token cap per answer, passed to every answer call as the wrapped model's "
        "max_tokens_param (DARWIN with continuation: default 256; otherwise the wrapped model's own).",
    )
    max_tokens_param: str = Field(
        default="max_tokens", description="The wrapped model's call keyword capping a call's output tokens."
    )
    continue_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="DARWIN: extra call keywords for the calls that continue a partial answer (vLLM: "
        "{'extra_body': {'continue_final_message': True, 'add_generation_prompt': False}}).",
    )
    seed: int | None = Field(default=None, description="DARWIN: seed of the parent and copy choices.")
    retry_attempts: int = Field(default=3, ge=1, description="Tries per sample on transient errors.")
    retry_wait: float = Field(default=0.5, ge=0.0, description="First back-off in seconds (doubles).")
    retry_max_wait: float = Field(default=20.0, ge=0.0, description="Longest single back-off in seconds.")

    _reward: RewardModel | None = PrivateAttr(default=None)
    _load_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, **kwargs: Any) -> None:
        # checked before pydantic so the error stays an InvalidInputError, not a ValidationError
        if isinstance(kwargs.get("strategy"), str):
            kwargs["strategy"] = _response_level_only(kwargs["strategy"])
        strategy = kwargs.get("strategy", "best-of-n")
        if kwargs.get("budget") is not None and strategy != "adaptive-best-of-n":
            raise InvalidInputError(
                "budget= only applies to strategy='adaptive-best-of-n'; for uniform Best-of-N set n= instead."
            )
        if strategy == "darwin":
            kwargs.setdefault("n", DARWIN_N)
        else:
            misplaced = [key for key in _DARWIN_ONLY if key in kwargs]
            if misplaced:
                raise InvalidInputError(
                    f"{', '.join(misplaced)} only apply to strategy='darwin' (this one is {strategy!r}); "
                    "remove them, or set strategy='darwin'."
                )
        super().__init__(**kwargs)
        if self.strategy == "darwin":
            check_darwin_settings(self, explicit=set(kwargs))

    @property
    def adaptive(self) -> bool:
        return self.strategy == "adaptive-best-of-n"

    @property
    def _llm_type(self) -> str:
        return f"align-chains-rerank-{self.strategy}"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "chat_model": self.chat_model._llm_type,
            "reward": self.reward if isinstance(self.reward, str) else repr(self.reward),
            "strategy": self.strategy,
            "n": self.n,
            **(
                {"m": self.m, "k": self.k, "cycles": self.cycles, "continuation": self.continuation}
                if self.strategy == "darwin"
                else {}
            ),
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        """The wrapped model's tracing params (model name, temperature, ...) with this provider."""
        params = self.chat_model._get_ls_params(stop=stop if stop is not None else self.stop, **kwargs)
        params["ls_provider"] = "align_chains"
        params.setdefault("ls_model_name", self.chat_model._llm_type)
        return params

    def load_reward(self) -> RewardModel:
        """Load (once, thread-safely) and return the reward."""
        with self._load_lock:
            if self._reward is None:
                self._reward = load_reward(self.reward)
        return self._reward

    # -- sampling ----------------------------------------------------------------------------
    def _retry_settings(self) -> dict[str, Any]:
        return {
            "stop": stop_after_attempt(self.retry_attempts),
            "wait": wait_exponential(multiplier=self.retry_wait, max=self.retry_max_wait),
            "retry": retry_if_exception(is_transient),
            "reraise": True,
        }

    def _child_config(self, run_manager: Any, manager_class: type) -> RunnableConfig:
        """Config for the wrapped model's calls: traced as children of this run."""
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

    def _sample(
        self,
        requests: Sequence[tuple[list[BaseMessage], Any]],
        counts: Sequence[int],
        stop: list[str] | None,
        kwargs: dict[str, Any],
    ) -> list[tuple[list[AIMessage | BaseException], int]]:
        """``counts[r]`` calls of the wrapped model per (messages, run manager), all in one pool of
        ``max_concurrency`` workers, each call retried; per request: outcomes and calls made."""
        configs = [self._child_config(run_manager, CallbackManager) for _, run_manager in requests]
        stop = stop if stop is not None else self.stop
        jobs = [r for r in range(len(requests)) for _ in range(counts[r])]
        kwargs = self._capped(kwargs)
        outcomes = self._call_many([(requests[r][0], configs[r], {"stop": stop, **kwargs}) for r in jobs])
        grouped: list[list[AIMessage | BaseException]] = [[] for _ in requests]
        calls = [0] * len(requests)
        for r, (outcome, made) in zip(jobs, outcomes, strict=True):
            grouped[r].append(outcome)
            calls[r] += made
        return [(grouped[r], calls[r]) for r in range(len(requests))]

    def _call_many(
        self, jobs: Sequence[tuple[Sequence[BaseMessage], RunnableConfig, dict[str, Any]]]
    ) -> list[tuple[AIMessage | BaseException, int]]:
        """One call of the wrapped model per job (messages, config, call keywords), all in one pool
        of ``max_concurrency`` workers, each retried on transient errors; per job: the message or
        the last exception, and the calls made."""
        if not jobs:
            return []

        def one(job: tuple[Sequence[BaseMessage], RunnableConfig, dict[str, Any]]) -> tuple[Any, int]:
            messages, config, call_kwargs = job
            calls = 0
            try:
                for attempt in Retrying(**self._retry_settings()):
                    with attempt:
                        calls += 1
                        message = self.chat_model.invoke(list(messages), config, **call_kwargs)
            except Exception as exc:  # kept per call: one failure never loses the others
                return exc, calls
            return _checked(message), calls

        pool = RunnableConfig(max_concurrency=self.max_concurrency or min(len(jobs), _MAX_THREADS))
        with get_executor_for_config(pool) as executor:
            return list(executor.map(one, jobs))

    def _run(
        self,
        requests: Sequence[tuple[list[BaseMessage], Any]],
        stop: list[str] | None,
        kwargs: dict[str, Any],
    ) -> list[ChatResult | Exception]:
        """Best-of-N for each request. Uniform: n samples each, all scored in ONE reward call.
        Adaptive (several prompts): d exploration samples each, one reward call, the rest of the
        budget allocated by expected gain (``allocation.allocate``), sampled, one more reward call.
        DARWIN: every prompt searched in lockstep (``rerank_darwin.DarwinSearch``)."""
        if self.strategy == "darwin":
            return DarwinSearch(self, requests, stop, kwargs).run()
        begin = time.perf_counter()
        conversations = [to_conversation(messages) for messages, _ in requests]  # before any call
        reward = self.load_reward()
        k = len(requests)
        d = exploration_size(self.budget or self.n, self.exploration, k) if self.adaptive else self.n
        outcomes: list[list[AIMessage | BaseException]] = [[] for _ in requests]
        calls = [0] * k
        answers: list[list[AIMessage]] = [[] for _ in requests]
        scores: list[list[float]] = [[] for _ in requests]
        details: list[dict[str, Any]] = [{} for _ in requests]
        reward_calls = 0

        def sample_round(counts: Sequence[int]) -> None:
            nonlocal reward_calls
            new: list[list[AIMessage]] = []
            for r, (got, made) in enumerate(self._sample(requests, counts, stop, kwargs)):
                outcomes[r].extend(got)
                calls[r] += made
                new.append([o for o in got if isinstance(o, AIMessage)])
            flat = [(r, m) for r in range(k) for m in new[r]]
            if not flat:
                return
            try:
                got_scores = reward.score([conversations[r] for r, _ in flat], [m.text for _, m in flat])
            except RewardError as exc:
                exc.partial = [a + n for a, n in zip(answers, new, strict=True)]  # samples not lost
                raise
            reward_calls += 1
            for (r, m), sc in zip(flat, got_scores, strict=True):
                answers[r].append(m)
                scores[r].append(sc)

        sample_round([d] * k)
        if self.adaptive and k > 1:
            ok = [r for r in range(k) if scores[r]]  # a prompt with no successful sample gets no more
            extra = allocate([scores[r] for r in ok], self.budget or self.n, rng=np.random.default_rng(0))
            counts = [0] * k
            for r, e in zip(ok, extra, strict=True):
                counts[r] = e
            for r in range(k):
                details[r] = {"exploration_samples": d, "extra_samples": counts[r]}
            if sum(counts):
                sample_round(counts)
        results: list[ChatResult | Exception] = []
        for r in range(k):
            try:
                self._answers(outcomes[r], calls[r])
            except SamplingFailedError as exc:
                results.append(exc)
                continue
            results.append(
                self._result(answers[r], scores[r], outcomes[r], calls[r], begin, reward_calls, details[r])
            )
        return results

    def _capped(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The call keywords with ``max_tokens`` (when set) under the wrapped model's own name."""
        if self.max_tokens is None or self.max_tokens_param in kwargs:
            return kwargs
        return {**kwargs, self.max_tokens_param: self.max_tokens}

    async def _asample(
        self, messages: list[BaseMessage], stop: list[str] | None, run_manager: Any, kwargs: dict[str, Any]
    ) -> tuple[list[AIMessage | BaseException], int]:
        """``n`` concurrent ``ainvoke`` calls (at most ``max_concurrency`` at once), each retried."""
        calls = [0]
        kwargs = self._capped(kwargs)
        stop = stop if stop is not None else self.stop
        config = self._child_config(run_manager, AsyncCallbackManager)
        count = (self.budget or self.n) if self.adaptive else self.n  # one prompt: nothing to reallocate
        gate = asyncio.Semaphore(self.max_concurrency or count)

        async def one() -> AIMessage | BaseException:
            try:
                async for attempt in AsyncRetrying(**self._retry_settings()):
                    with attempt:
                        calls[0] += 1
                        async with gate:
                            message = await self.chat_model.ainvoke(messages, config, stop=stop, **kwargs)
            except Exception as exc:  # kept per sample: one failure never loses the others
                return exc
            return _checked(message)

        outcomes = await asyncio.gather(*(one() for _ in range(count)))
        return list(outcomes), calls[0]

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        (result,) = self._run([(messages, run_manager)], stop, kwargs)
        if isinstance(result, Exception):
            raise result
        return result

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.strategy == "darwin":  # the search's phases are thread pools: run it off the event loop
            sync_manager = run_manager.get_sync() if run_manager is not None else None
            return await run_in_executor(None, self._generate, messages, stop, sync_manager, **kwargs)
        start = time.perf_counter()
        conversation = to_conversation(messages)
        reward = self.load_reward()
        outcomes, calls = await self._asample(messages, stop, run_manager, kwargs)
        answers = self._answers(outcomes, calls)
        scores = await run_in_executor(None, _score, reward, conversation, answers)
        return self._result(answers, scores, outcomes, calls, start)

    # -- streaming: the answer is known only once every sample is scored ---------------------
    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        """Best-of-n, then the chosen answer as one ``chunk_position="last"`` chunk with its usage
        and metadata (the samples are not streamed: which one wins is known once all are scored)."""
        chunk = _chosen_chunk(self._generate(messages, stop, run_manager, **kwargs).generations[0].message)
        if run_manager:
            run_manager.on_llm_new_token(chunk.message.text, chunk=chunk)
        yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        """``_stream`` over the async sampling path (``ainvoke`` of the wrapped model)."""
        chunk = _chosen_chunk(
            (await self._agenerate(messages, stop, run_manager, **kwargs)).generations[0].message
        )
        if run_manager:
            await run_manager.on_llm_new_token(chunk.message.text, chunk=chunk)
        yield chunk

    # -- batching: every prompt's samples in one pool, all scored in one reward call --------
    def batch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[BaseMessage]:
        """Best-of-n for every input; ``max_concurrency`` bounds the calls of the whole batch."""
        return batch_with_callbacks(
            self,
            inputs,
            config,
            return_exceptions,
            kwargs,
            lambda requests, stop: self._run(requests, stop, kwargs),
        )

    async def abatch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[BaseMessage]:
        """``batch`` in a worker thread, so the whole batch still shares one reward call."""
        first = config[0] if isinstance(config, list) and config else config
        return await run_in_executor(
            first, self.batch, inputs, config, return_exceptions=return_exceptions, **kwargs
        )

    # -- choosing ----------------------------------------------------------------------------
    def _answers(self, outcomes: Sequence[AIMessage | BaseException], calls: int) -> list[AIMessage]:
        """The successful samples; raise with every sample's error when there are none."""
        answers = [o for o in outcomes if isinstance(o, AIMessage)]
        if not answers:
            errors = list(outcomes)
            raise SamplingFailedError(
                f"All {len(outcomes)} samples from {type(self.chat_model).__name__} failed after "
                f"{calls} calls "
                f"({self.retry_attempts} tries each on transient errors); first error: "
                f"{type(errors[0]).__name__}: {errors[0]}",
                errors,  # type: ignore[arg-type]
            )
        return answers

    def _result(
        self,
        answers: list[AIMessage],
        scores: list[float],
        outcomes: Sequence[AIMessage | BaseException],
        calls: int,
        start: float,
        reward_calls: int = 1,
        details: dict[str, Any] | None = None,
    ) -> ChatResult:
        errors = [o for o in outcomes if not isinstance(o, AIMessage)]
        texts = [a.text for a in answers]
        best = max(range(len(answers)), key=lambda j: (scores[j], -j))  # ties: earliest
        metadata = {
            **answers[best].response_metadata,
            "strategy": self.strategy,
            "reward": scores[best],
            "candidates": [
                {"text": t, "reward": s, "finish_reason": a.response_metadata.get("finish_reason")}
                for t, s, a in zip(texts, scores, answers, strict=True)
            ],
            "compute": {
                "samples": len(outcomes),
                "calls": calls,
                "failures": len(errors),
                "reward_calls": reward_calls,
                "reward_items": len(texts),
                "seconds": time.perf_counter() - start,
            },
        }
        metadata.update(details or {})
        if errors:
            metadata["failed_samples"] = len(errors)
            metadata["sample_errors"] = [f"{type(e).__name__}: {e}" for e in errors]
        message = answers[best].model_copy(
            update={"response_metadata": metadata, "usage_metadata": _summed_usage(answers)}
        )
        return ChatResult(generations=[ChatGeneration(message=message)])


def _chosen_chunk(message: BaseMessage) -> ChatGenerationChunk:
    """The chosen message as ONE stream chunk, marked last, with its usage and metadata.

    One chunk, because aggregating several re-parses tool-call chunks as partial JSON, which
    would turn an invalid tool call with truncated arguments into a valid call with ``{}``.
    """
    if not isinstance(message, AIMessage):  # _result always answers with the chosen AIMessage
        raise TypeError(f"expected the chosen AIMessage, got a {type(message).__name__}")
    return ChatGenerationChunk(
        message=AIMessageChunk(
            content=message.content,
            additional_kwargs=message.additional_kwargs,
            tool_calls=message.tool_calls,
            invalid_tool_calls=message.invalid_tool_calls,
            usage_metadata=message.usage_metadata,
            response_metadata=message.response_metadata,
            chunk_position="last",
        )
    )


def _checked(message: Any) -> AIMessage | BaseException:
    if isinstance(message, AIMessage):
        return message
    return TypeError(f"the wrapped chat model returned a {type(message).__name__}, not an AIMessage")


def _score(reward: RewardModel, conversation: Any, answers: Sequence[AIMessage]) -> list[float]:
    """All successful samples in one batched reward call; on failure the samples ride on the error."""
    try:
        return reward.score([conversation] * len(answers), [a.text for a in answers])
    except RewardError as exc:
        exc.partial = [list(answers)]  # as in batch: one list of samples per prompt
        raise


def _summed_usage(answers: Sequence[AIMessage]) -> UsageMetadata | None:
    """Tokens paid for across all successful samples (None if the wrapped model reports none)."""
    reported = [a.usage_metadata for a in answers if a.usage_metadata]
    if not reported:
        return None
    keys = ("input_tokens", "output_tokens", "total_tokens")
    return UsageMetadata(**{k: sum(u.get(k, 0) for u in reported) for k in keys})  # type: ignore[typeddict-item]
