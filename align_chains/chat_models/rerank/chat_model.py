"""Rerank ANY LangChain chat model: sample answers through its own API, keep the reward's best.

This is how a served policy (a ``ChatOpenAI`` pointed at a vLLM or SGLang server, a hosted
model) is aligned when the local engine is not the one generating. ``RerankChatModel`` is the
LangChain layer only: its settings, their checks, callbacks, streaming and batching. The work is
a search class per strategy, picked from ``SEARCHES``: ``uniform.py`` (Best-of-N),
``adaptive.py`` (adaptive Best-of-N), ``darwin.py`` (DARWIN without cache reuse); every call of
the wrapped model goes through ``calls.CallPool`` (concurrency and tenacity retries).

Only response-level strategies can work this way. Strategies that steer decoding token by token
(reward-guided, value-guided) need the policy's logits, and SEA needs gradients through it; a
remote chat model exposes neither, so asking for them is an error at construction.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field, PrivateAttr

from align_chains.chat_models.batching import BatchInOneRun, Requests
from align_chains.chat_models.rerank.adaptive import AdaptiveSearch
from align_chains.chat_models.rerank.calls import CallPool
from align_chains.chat_models.rerank.darwin import DarwinSearch
from align_chains.chat_models.rerank.results import chosen_chunk
from align_chains.chat_models.rerank.search import Search
from align_chains.chat_models.rerank.uniform import UniformSearch
from align_chains.chat_models.settings import strategy_field
from align_chains.errors import InvalidInputError
from align_chains.models.embedded import EMBEDDED_REWARD
from align_chains.rewards import RewardModel, load_reward
from align_chains.strategies import canonical_strategy_name, get_strategy
from align_chains.strategies.darwin import Darwin
from align_chains.strategies.mutation import MutationMode

#: the strategies a wrapped chat model can run, each by its search class
SEARCHES: dict[str, type[Search]] = {
    "best-of-n": UniformSearch,
    "adaptive-best-of-n": AdaptiveSearch,
    "darwin": DarwinSearch,
}
# what each strategy the wrapper cannot run would need from the policy


def _response_level_only(value: str) -> str:
    """The canonical strategy name, or a clear error for one a wrapped chat model cannot run."""
    name = canonical_strategy_name(value)
    needs = get_strategy(name).needs_policy_internals
    if needs is not None:
        raise InvalidInputError(
            f"Strategy {name!r} needs {needs}, which a wrapped chat model does not "
            "expose. Use strategy='best-of-n' here, or run it on a local policy with "
            f"chat_model_class({name!r})(model=...)."
        )
    if name not in SEARCHES:
        raise InvalidInputError(
            f"RerankChatModel does not implement strategy {name!r} yet; supported: {list(SEARCHES)}."
        )
    return name


def _misplaced_settings(strategy: str, given: set[str]) -> None:
    """Raise for settings only another strategy reads (e.g. DARWIN's ``m`` under Best-of-N)."""
    own = SEARCHES[strategy].own_settings
    for name, search in SEARCHES.items():
        misplaced = [key for key in search.own_settings if key in given and key not in own]
        if misplaced:
            raise InvalidInputError(
                f"{', '.join(misplaced)} only apply to strategy={name!r} (this one is {strategy!r}); "
                f"remove them, or set strategy={name!r}."
            )


class RerankChatModel(BatchInOneRun, BaseChatModel):
    """Best-of-N, adaptive Best-of-N or DARWIN over any LangChain chat model, scored by our reward.

    The wrapped model (a ``ChatOpenAI`` pointed at vLLM, SGLang or ``align-chains serve``, a
    hosted model, a fake for tests) generates the candidates through its own API; the reward
    runs here, in one batched call. The answer is the chosen candidate's own message (tool
    calls and all) with ``response_metadata`` saying how it was chosen, and ``usage_metadata``
    summed over the successful samples (when the wrapped model reports usage).

    Args:
        chat_model: The chat model that generates the candidates.
        reward: A ``load_reward`` spec or a RewardModel (default: the embedded MiniLM).
        n: Candidates per prompt (DARWIN: mutations per cycle; default 4).
        strategy: ``"best-of-n"`` (default), ``"adaptive-best-of-n"`` (alias ``"adaptive"``)
            or ``"darwin"``.
        budget: Adaptive: average samples per prompt over a batch (default ``n``).
        exploration: Adaptive: fraction of the budget explored first (default 0.75).
        stop: Stop strings for every call of the wrapped model (a call's ``stop=`` wins).
        max_concurrency: Calls in flight at once (default: all samples of the call, at most 64).
        m: DARWIN: tokens per segment between replacements (continuation only; default 40).
        k: DARWIN: candidates kept at each replacement, ``k <= n`` (default 3).
        cycles: DARWIN: mutation cycles after the first answer (default 3).
        mutation_max_tokens: DARWIN: token cap on the wrapped model's list of rewrites.
        mutation_mode: DARWIN: ``"rewrite"`` (the paper's), ``"guard"`` or ``"restate"`` (see ``Darwin``).
        continuation: DARWIN: ``"none"`` (whole answers) or ``"final-message"`` (continue
            partial answers in m-token calls; the server must continue a trailing assistant
            message).
        max_tokens: Token cap per answer, passed to every answer call as ``max_tokens_param``.
        max_tokens_param: The wrapped model's keyword for that cap (default ``"max_tokens"``).
        continue_kwargs: DARWIN: extra keywords for calls that continue a partial answer.
        seed: DARWIN: seed of the parent and copy choices.
        retry_attempts: Tries per sample on transient errors (default 3).
        retry_wait: First back-off in seconds, doubling (default 0.5).
        retry_max_wait: Longest single back-off in seconds (default 20).

    Examples:
        >>> from langchain_core.language_models import FakeListChatModel
        >>> from align_chains import CallableReward, RerankChatModel
        >>> served = FakeListChatModel(responses=["Sleep.", "Keep a fixed bedtime, skip late coffee."])
        >>> words = CallableReward(lambda prompt, response: len(response.split()), name="words")
        >>> model = RerankChatModel(chat_model=served, reward=words, n=2, max_concurrency=1)
        >>> model.invoke("Tips for better sleep?").content
        'Keep a fixed bedtime, skip late coffee.'
        >>> from langchain_openai import ChatOpenAI  # doctest: +SKIP
        >>> vllm = ChatOpenAI(base_url="http://gpu-host:8000/v1", api_key="-", model="...")  # doctest: +SKIP
        >>> RerankChatModel(chat_model=vllm, reward="minilm", n=8).invoke("...")  # doctest: +SKIP
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
    # DARWIN (strategy="darwin"): the Darwin strategy's own fields (defaults, constraints), see darwin.py
    m: int = strategy_field(Darwin, "m", prefix="DARWIN: ", suffix=" Continuation only.")
    k: int = strategy_field(Darwin, "k", prefix="DARWIN: ")
    cycles: int = strategy_field(Darwin, "cycles", prefix="DARWIN: ")
    mutation_max_tokens: int = strategy_field(Darwin, "mutation_max_tokens", prefix="DARWIN: ")
    mutation_mode: MutationMode = strategy_field(Darwin, "mutation_mode", prefix="DARWIN: ")
    continuation: Literal["none", "final-message", "vllm"] = Field(
        default="none",
        description="DARWIN: 'final-message' continues partial answers in m-token calls (the server must "
        "continue a trailing assistant message); 'vllm': the same, adding vLLM's continue_final_message "
        "request fields (also understood by align-chains serve); 'none': whole answers, no mid-answer "
        "replacement (the authors' mutation_no_replacement ablation, named so in response_metadata).",
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
        search = SEARCHES.get(strategy) if isinstance(strategy, str) else None
        if search is not None:  # else pydantic rejects the strategy's type
            for key, value in search.defaults.items():
                kwargs.setdefault(key, value)
            _misplaced_settings(strategy, set(kwargs))
        super().__init__(**kwargs)
        SEARCHES[self.strategy].check_settings(self, explicit=set(kwargs))

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
            **SEARCHES[self.strategy].identifying_params(self),
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

    def search(self) -> Search:
        """A fresh search of this model's strategy (one per call), with its call pool."""
        pool = CallPool(
            chat_model=self.chat_model,
            max_concurrency=self.max_concurrency,
            attempts=self.retry_attempts,
            wait=self.retry_wait,
            max_wait=self.retry_max_wait,
        )
        return SEARCHES[self.strategy](self, pool)

    # -- running: every prompt of a call (``_generate``, ``batch``) in one search --------------
    def _run_requests(
        self, requests: Requests, stop: list[str] | None, kwargs: dict[str, Any]
    ) -> list[ChatResult | Exception]:
        return self.search().run(requests, stop, kwargs)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return await self.search().arun(messages, stop, run_manager, kwargs)

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
        chunk = chosen_chunk(self._generate(messages, stop, run_manager, **kwargs).generations[0].message)
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
        chunk = chosen_chunk(
            (await self._agenerate(messages, stop, run_manager, **kwargs)).generations[0].message
        )
        if run_manager:
            await run_manager.on_llm_new_token(chunk.message.text, chunk=chunk)
        yield chunk
