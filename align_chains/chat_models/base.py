"""The aligned chat-model base class: LangChain semantics over a plain-Python strategy.

Subclasses name a Strategy class and declare its settings as fields with the same names;
everything else (lazy loading, sampling settings, callbacks, batching, tools) is wired here, from
rooms of its own: ``models.messages`` (message conversion), ``output_contract`` (tools, schemas and
their bounded reruns), ``results`` (the AIMessage and its response_metadata), ``streaming`` (text
pieces, live or after the pick).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar, Literal, Self

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from pydantic import ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from align_chains.cancellation import CancelToken, cancel_scope, holding
from align_chains.chat_models.batching import BatchInOneRun, Requests
from align_chains.chat_models.concurrent_calls import ConcurrentCalls
from align_chains.chat_models.constraints import request_grammar
from align_chains.chat_models.output_contract import (
    OutputContract,
    normalise_tool_choice,
    run_keeping_contract,
)
from align_chains.chat_models.results import build_message, chat_result
from align_chains.chat_models.streaming import generation_chunks, live_pieces, text_pieces
from align_chains.chat_models.structured import structured_output_runnable
from align_chains.engine.decoder import Decoder
from align_chains.engine.sampling import SEED_MAX, SamplingParams
from align_chains.errors import InvalidInputError
from align_chains.models.chat import Conversation
from align_chains.models.embedded import EMBEDDED_POLICY, EMBEDDED_REWARD
from align_chains.models.messages import to_conversation
from align_chains.models.policy import Policy, RenderedPrompt, load_policy
from align_chains.progress import NullProgress, TqdmProgress
from align_chains.rewards import RewardModel, load_reward
from align_chains.rewards.specs import parse_reward_spec
from align_chains.strategies.base import Strategy, StrategyResult

_SAMPLING_KWARGS = {
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "time_budget_s",
    "grammar",
    "regex",
    "constrain",
}
# Base settings a strategy may also declare (with its own meaning, which then wins): DARWIN's and
# SEA's time_budget_s return their best answer so far instead of stopping with Cancelled.
SHARED_WITH_STRATEGIES = frozenset({"time_budget_s"})


class AlignedChatModel(ConcurrentCalls, BatchInOneRun, BaseChatModel):
    """A LangChain chat model that answers with an inference-time alignment strategy.

    Construction is cheap: the policy and reward load on first use (or pass loaded objects
    to share them between chat models). Calls on one policy run one at a time.

    Subclasses (``BestOfNChatModel``, ``RewardGuidedChatModel``, ``ValueGuidedChatModel``,
    ``DarwinChatModel``, ``SEAChatModel``) add their strategy's settings; every setting can also
    be passed per call (``model.invoke(prompt, n=8)``). ``response_metadata`` carries
    ``model_name``, ``strategy``, ``reward``, ``candidates`` and ``compute``.

    Args:
        policy: A Hugging Face id, a local directory, ``"smollm2-135m-instruct"`` (the embedded
            default) or a loaded Policy. Also accepted as ``model=``.
        reward: A ``load_reward`` spec (``"minilm"``, a model id or directory, a function
            ``(prompt, response) -> float``, ...) or a RewardModel.
        max_tokens: Maximum new tokens per response.
        temperature: Sampling temperature (0: greedy).
        top_p: Nucleus sampling mass (1: off).
        top_k: Keep the k most likely tokens (0: off).
        stop: Strings that end a response.
        seed: Makes sampling reproducible.
        device: ``"cpu"``, ``"cuda"``, ... (automatic when None).
        dtype: ``"bf16"``, ``"fp32"``, ... (automatic when None).
        device_map: ``"auto"`` to shard a large policy over GPUs.
        show_progress: Show tqdm progress bars while a strategy runs.
        output_retries: With bound tools or a structured-output schema, how many more runs to try
            when no candidate keeps the contract.
        constrain: Constrain decoding to the bound tools' or schema's grammar (default True); False
            keeps ranking and reruns only.
        tool_format: The tool-call format the policy writes: ``"hermes"``, ``"llama3_json"``,
            ``"mistral"`` or ``"pythonic"`` (default: detected from the chat template; see
            docs/tool_calling.md).
        grammar: A Lark grammar every answer must follow.
        regex: A regular expression every answer must match (not together with ``grammar``).
        time_budget_s: Wall-clock budget per call; past it the run is cancelled (``Cancelled``).
        cancel_token: A ``CancelToken`` another thread can cancel to stop the run within a step.
        concurrent_batching: Decode concurrent ``invoke``/``ainvoke`` calls with equal settings as
            one batch (default True; seeded calls always run alone).

    Examples:
        >>> from align_chains import AlignedChatModel, BestOfNChatModel
        >>> model = BestOfNChatModel(model="smollm2-135m-instruct", max_tokens=64, seed=0)
        >>> isinstance(model, AlignedChatModel), model.policy
        (True, 'smollm2-135m-instruct')
        >>> model.invoke("Tips for better sleep?").response_metadata["compute"]  # doctest: +SKIP
    """

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True)

    strategy_class: ClassVar[type[Strategy]]
    settings_from: ClassVar[tuple[type[Strategy], ...]] = ()  # strategies whose fields it exposes
    also_builds: ClassVar[tuple[type[Strategy], ...]] = ()  # others build_strategy may return

    policy: str | Policy = Field(
        default=EMBEDDED_POLICY,
        alias="model",
        description="Hugging Face id, local directory, 'smollm2-135m-instruct', or a loaded Policy.",
    )
    reward: Any = Field(
        default=EMBEDDED_REWARD,
        description="Reward spec for load_reward(): 'minilm', a model id or directory, a "
        "function (prompt, response) -> float, or a RewardModel.",
    )
    max_tokens: int = Field(default=128, ge=1, description="Maximum new tokens per response.")
    temperature: float = Field(default=0.7, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    stop: list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=SEED_MAX, description="0 to 2**63 - 1.")
    device: str | None = Field(default=None, description="'cpu', 'cuda', ... (automatic if None).")
    dtype: str | None = Field(default=None, description="'bf16', 'fp32', ... (automatic if None).")
    device_map: str | None = Field(default=None, description="'auto' to shard a large policy.")
    show_progress: bool = False
    time_budget_s: float | None = Field(
        default=None,
        gt=0,
        description="Wall seconds per call. Strategies with their own budget (DARWIN, SEA) return their "
        "best answer so far, flagged; the others stop at their next step with "
        "align_chains.cancellation.Cancelled, which carries the partial work.",
    )
    cancel_token: CancelToken | None = Field(
        default=None,
        exclude=True,
        description="A cancel hook: call cancel_token.cancel() from any thread to stop a running call at "
        "its next step (also honoured: a token made active with `with token.active():`).",
    )
    concurrent_batching: bool = Field(
        default=True,
        description="Decode concurrent invoke/ainvoke calls (threads, coroutines) with the same settings "
        "as one batch, as batch() does; False runs each call on its own, one after another.",
    )
    output_retries: int = Field(
        default=1,
        ge=0,
        description="With bound tools or a structured-output schema: how many more runs to try when "
        "no candidate keeps the contract (a parsable call to a bound tool, JSON that validates).",
    )

    grammar: str | None = Field(
        default=None,
        description="A Lark grammar (llguidance's dialect) every answer must match, enforced token by token.",
    )
    regex: str | None = Field(default=None, description="A regex every answer must fully match.")
    constrain: bool = Field(
        default=True,
        description="Decode bound tools and structured-output schemas under a grammar, so every "
        "candidate keeps them by construction. False: they are only asked for, ranked and retried.",
    )
    tool_format: Literal["hermes", "llama3_json", "mistral", "pythonic"] | None = Field(
        default=None,
        description="The tool-call format the policy was trained on (hermes, llama3_json, mistral, "
        "pythonic); None detects it from the chat template (hermes when nothing says otherwise).",
    )

    _policy: Policy | None = PrivateAttr(default=None)
    _reward: RewardModel | None = PrivateAttr(default=None)
    _load_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    # -- identity ------------------------------------------------------------------------
    @property
    def _llm_type(self) -> str:
        return f"align-chains-{self.build_strategy().name}"

    @property
    def model_name(self) -> str:
        return self.policy.name if isinstance(self.policy, Policy) else self.policy

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "reward": self.reward if isinstance(self.reward, str) else repr(self.reward),
            "strategy": self.build_strategy().name,
            **self._strategy_settings(),
            **self._sampling().model_dump(),
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="align_chains",
            ls_model_name=kwargs.get("model", self.model_name),
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_tokens", self.max_tokens),
        )
        if stop or self.stop:
            params["ls_stop"] = list(stop or self.stop or [])
        return params

    # -- loading -------------------------------------------------------------------------
    def load(self) -> tuple[Policy, RewardModel]:
        """Load (once, thread-safely) and return the policy and reward."""
        with self._load_lock:
            if self._policy is None:
                self._policy = load_policy(
                    self.policy, device=self.device, dtype=self.dtype, device_map=self.device_map
                )
            if self._reward is None:
                self._reward = load_reward(
                    self.reward, device=self.device, dtype=self.dtype, policy=self._policy
                )
        return self._policy, self._reward

    # -- settings ------------------------------------------------------------------------
    @classmethod
    def strategy_field_names(cls) -> list[str]:
        """The strategy settings this chat model exposes (fields beyond the base class's, and a
        shared base setting such as ``time_budget_s`` where its strategy declares it)."""
        declared = {name for strategy in cls.settings_from for name in strategy.model_fields}
        own = [name for name in cls.model_fields if name not in AlignedChatModel.model_fields]
        return own + sorted(SHARED_WITH_STRATEGIES & declared)

    @classmethod
    def strategy_classes(cls) -> tuple[type[Strategy], ...]:
        """Every strategy ``build_strategy`` may return: what the server must be able to cost and
        bound, and the docs' settings tables read their declarations from."""
        return tuple(dict.fromkeys((*cls.settings_from, *cls.also_builds)))

    def _strategy_settings(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        overrides = overrides or {}
        return {name: overrides.get(name, getattr(self, name)) for name in self.strategy_field_names()}

    def build_strategy(self, **overrides: Any) -> Strategy:
        """The strategy for one call: the class's strategy built from the same-named fields."""
        settings = self._strategy_settings(overrides)
        return self.strategy_class(
            **{k: v for k, v in settings.items() if k in self.strategy_class.model_fields}
        )

    @field_validator("reward")
    @classmethod
    def _reward_spec_parses(cls, value: Any) -> Any:
        """A bad reward spec fails at construction, with the parser's message, not at first call."""
        parse_reward_spec(value)
        return value

    @model_validator(mode="after")
    def _strategy_accepts_settings(self) -> Self:
        """Rules across settings (e.g. DARWIN's ``k <= n``) are the strategy's: building it
        here makes a chat model with invalid settings fail at construction, with its message."""
        try:
            self.build_strategy()
        except ValidationError as exc:
            raise ValueError(strategy_error_message(exc)) from None
        return self

    def _sampling(
        self, stop: list[str] | None = None, overrides: dict[str, Any] | None = None
    ) -> SamplingParams:
        o = overrides or {}
        return SamplingParams(
            max_new_tokens=o.get("max_tokens", self.max_tokens),
            temperature=o.get("temperature", self.temperature),
            top_p=o.get("top_p", self.top_p),
            top_k=o.get("top_k", self.top_k),
            stop=tuple(stop if stop is not None else (self.stop or ())),
            seed=o.get("seed", self.seed),
            grammar=request_grammar(
                o.get("contract"),
                o.get("grammar", self.grammar),
                o.get("regex", self.regex),
                o.get("constrain", self.constrain),
            ),
        )

    def _checked_call_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        allowed = _SAMPLING_KWARGS | set(self.strategy_field_names())
        unknown = sorted(k for k in kwargs if k not in allowed)
        if unknown:
            raise InvalidInputError(
                f"{type(self).__name__} does not take {unknown} at call time. Per-call settings it "
                f"accepts: {sorted(allowed)}."
            )
        return kwargs

    # -- running -------------------------------------------------------------------------
    def _run_kwargs(self) -> dict[str, Any]:
        """Extra keyword arguments for the strategy's ``run_batch`` (e.g. guide models)."""
        return {}

    def run_strategy(
        self,
        conversations: Sequence[Conversation | RenderedPrompt],
        stop: list[str] | None = None,
        *,
        on_commit: Callable[[int, list[int]], None] | None = None,
        contract: OutputContract | None = None,
        **kwargs: Any,
    ) -> list[StrategyResult]:
        """Run the strategy on already-converted conversations (one batched run); a
        ``RenderedPrompt`` of this chat model's policy is run without rendering it again.

        ``on_commit(prompt_index, token_ids)`` is called as a streaming strategy commits tokens.
        With bound tools or a schema (``contract``, or the ``tools``/``tool_choice``/
        ``response_format`` kwargs), candidates that break it are never chosen over ones that
        keep it, and prompts with no keeper are run again, up to ``output_retries`` times.
        """
        contract = contract or self.output_contract(kwargs)
        overrides = self._checked_call_kwargs(kwargs)
        if contract is None:
            return self._run_once(conversations, stop, overrides, on_commit)
        overrides["contract"] = contract
        return run_keeping_contract(
            contract,
            conversations,
            lambda prepared, again: self._run_once(prepared, stop, again, None),
            overrides,
            seed=overrides.get("seed", self.seed),
            retries=self.output_retries,
        )

    def _run_once(
        self,
        conversations: Sequence[Conversation | RenderedPrompt],
        stop: list[str] | None,
        overrides: dict[str, Any],
        on_commit: Callable[[int, list[int]], None] | None,
    ) -> list[StrategyResult]:
        strategy = self.build_strategy(**overrides)
        params = self._sampling(stop, overrides)
        policy, reward = self.load()
        Decoder(policy).compile(params)  # a grammar that does not compile fails before any work
        extra = self._run_kwargs()
        if on_commit is not None and getattr(strategy, "streams", False):
            extra["on_commit"] = on_commit
        progress = TqdmProgress() if self.show_progress else NullProgress()
        budget = overrides.get("time_budget_s", self.time_budget_s)
        if "time_budget_s" in type(strategy).model_fields:
            budget = None  # the strategy keeps its own budget and returns its best so far
        with cancel_scope(budget, self.cancel_token), holding(policy.lock):
            return strategy.run_batch(list(conversations), policy, reward, params, progress=progress, **extra)

    def _run_requests(
        self, requests: Requests, stop: list[str] | None, kwargs: dict[str, Any]
    ) -> list[ChatResult | Exception]:
        """Every request in one strategy run (``_generate`` and ``batch`` both come here)."""
        conversations = [to_conversation(messages) for messages, _ in requests]
        call_kwargs = dict(kwargs)
        contract = self.output_contract(call_kwargs)
        results = self.run_strategy(conversations, stop, contract=contract, **call_kwargs)
        return [chat_result(r, self.model_name, contract) for r in results]

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        """Yield the answer token by token, then a ``chunk_position="last"`` chunk with metadata.

        A strategy that commits tokens as it goes (``streams = True``: ARGS, value-guided
        decoding) runs in a worker thread and its tokens are yielded as they are committed;
        others stream the chosen answer once it is picked.
        """
        conversation = to_conversation(messages)
        kwargs = dict(kwargs)
        contract = self.output_contract(kwargs)
        strategy = self.build_strategy(**self._checked_call_kwargs(dict(kwargs)))
        policy, _ = self.load()
        pieces: Iterable[str]
        if contract is not None:  # text and calls are told apart once the answer is chosen
            (result,) = self.run_strategy([conversation], stop, contract=contract, **kwargs)
            text = build_message(result, self.model_name, contract).text
            pieces, holder = ([text] if text else []), [result]
        elif getattr(strategy, "streams", False):
            pieces, holder = live_pieces(
                lambda on_commit: self.run_strategy([conversation], stop, on_commit=on_commit, **kwargs)[0],
                policy,
                stops=stop if stop is not None else (self.stop or []),
            )
        else:
            (result,) = self.run_strategy([conversation], stop, **kwargs)
            pieces, holder = text_pieces(policy, result.best.token_ids, result.text), [result]
        yield from generation_chunks(pieces, holder, self.model_name, contract, run_manager)

    # -- tools and structured output -----------------------------------------------------
    def output_contract(self, kwargs: dict[str, Any]) -> OutputContract | None:
        """Pop the call's contract kwargs (tools, tool_choice, response_format) into a contract
        whose tool calls are in this model's ``tool_format`` (else the policy's own)."""
        if not kwargs.get("tools"):  # nothing to load the policy for
            return OutputContract.from_kwargs(kwargs)
        policy = self.load()[0]
        tool_format = self.tool_format or policy.tool_format
        return OutputContract.from_kwargs(kwargs, tool_format, policy.call_marker_tokens(tool_format))

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        *,
        tool_choice: str | dict | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Offer tools to the policy: through its chat template when it takes tools, else a
        system prompt asking for ``<tool_call>`` JSON (see ``align_chains.models.tool_calls``).

        ``tool_choice``: "auto" (default), "any"/"required", "none", or a tool's name. Calls
        are parsed into ``AIMessage.tool_calls``; malformed ones into ``invalid_tool_calls``.
        """
        from langchain_core.utils.function_calling import convert_to_openai_tool

        formatted = [convert_to_openai_tool(t) for t in tools]
        normalise_tool_choice(tool_choice, [t["function"]["name"] for t in formatted])  # fail early
        return super().bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        include_raw: bool = False,
        method: Literal["json_schema", "function_calling", "json_mode"] = "json_schema",
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict | Any]:
        """Answers parsed into ``schema`` (a pydantic model, a TypedDict or a JSON schema).

        ``json_schema`` asks for a JSON object in the system prompt and decodes under the
        schema's grammar, so every candidate validates by construction; ``function_calling``
        binds the schema as a forced tool (constrained the same way); ``json_mode`` asks for
        any JSON object (constrained to one). ``strict=False`` turns the grammar off: answers
        are then only ranked and retried against the schema. Default (None, True): constrained.
        See ``chat_models.structured`` and docs/structured_output.md.
        """
        if kwargs:
            raise InvalidInputError(f"with_structured_output() does not take {sorted(kwargs)}.")
        if method == "function_calling":
            if schema is None:
                raise InvalidInputError("method='function_calling' needs a schema.")
            model = self if strict is not False else self.model_copy(update={"constrain": False})
            return super(AlignedChatModel, model).with_structured_output(schema, include_raw=include_raw)
        return structured_output_runnable(
            self, schema, method=method, include_raw=include_raw, constrain=strict is not False
        )


def strategy_error_message(error: ValidationError) -> str:
    """The strategy's own words for why its settings are invalid (one line per problem)."""
    messages = []
    for item in error.errors():
        original = (item.get("ctx") or {}).get("error")
        messages.append(str(original) if original is not None else item["msg"])
    return "; ".join(messages)
