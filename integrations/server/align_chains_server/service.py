"""One served strategy: the shared policy and reward, per-request settings, and a blocking run.

Nothing here knows about HTTP: ``plan`` turns a parsed request into a validated, admitted chat model
(raising ``RequestError`` with the status and the field to blame), ``run`` executes it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from align_chains.chat_models import AlignedChatModel, chat_model_class
from align_chains.chat_models.results import response_metadata
from align_chains.chat_models.streaming import text_pieces
from align_chains.engine.sampling import SamplingParams
from align_chains.errors import InvalidInputError
from align_chains.memory import MemoryEstimate, ModelShape, RewardFootprint, estimate_memory, reward_footprint
from align_chains.models.chat import CONTINUE_FINAL, Conversation
from align_chains.models.policy import Policy, RenderedPrompt, load_policy
from align_chains.rewards import RewardModel, load_reward
from align_chains.rewards.specs import FunctionSpec, parse_reward_spec
from align_chains.strategies import Cost, NoCostModel, Strategy
from align_chains.strategies.base import StrategyResult
from align_chains.strategies.declarations import default_limits, missing_cost_message
from align_chains_server.admission import (
    DEFAULT_SETTING_LIMITS,
    CostLimits,
    MemoryBudget,
    OverBudget,
    admit,
    admit_memory,
)
from align_chains_server.schemas import ChatCompletionRequest, describe_validation_error
from align_chains_server.tools import (
    BadToolInput,
    OutputRequest,
    Reply,
    build_reply,
    stream_deltas,
    to_conversation,
)

# Per-request sampling settings beyond the OpenAI fields (vLLM accepts top_k the same way), and
# the per-call wall-clock budget every chat model takes.
SAMPLING_EXTRAS = frozenset({"top_k", "time_budget_s"})
# Settings that name models to load: a client may not make the server load weights (set them
# with -o on the command line instead).
SERVER_ONLY = frozenset({"tuned", "untuned"})
# Upper bounds on request settings that multiply work, as the strategies declare them
# (``Strategy.work_bounds``); a served model applies those of its strategies that it has.
DEFAULT_LIMITS = DEFAULT_SETTING_LIMITS


class RequestError(Exception):
    """A request the server refuses: an HTTP status, a message and the field to blame."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        kind: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")
        self.code = code


def resolve_reward_spec(spec: Any) -> Any:
    """A ``python:package.module:function`` spec -> that callable; any other spec is returned as
    is for ``load_reward``. Parsed by the one reward-spec parser, so a bad spec fails here."""
    parsed = parse_reward_spec(spec)
    return parsed.function if isinstance(parsed, FunctionSpec) else spec


@dataclass
class PreparedRequest:
    """A request that passed every check: its chat model, its prompt rendered once, cost and batch key."""

    model: AlignedChatModel
    conversation: Conversation  # as the client sent it
    prompt: RenderedPrompt  # what the strategy runs (tools or schema instructions in), rendered once
    stop: list[str] | None
    cost: Cost
    batch_key: str | None  # requests with equal keys may run as one batch; None: run alone
    stream: bool = False
    output: OutputRequest | None = None  # tools / response format the answer must keep
    memory: MemoryEstimate | None = None  # the estimated peak memory that admitted it

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt.token_ids)


@dataclass(frozen=True)
class SentSettings:
    """What a request sets beyond its messages: strategy settings (top level through extra_body,
    or under ``align_chains``) and the OpenAI sampling fields."""

    settings: dict[str, Any]
    sampling: dict[str, Any]
    nested: frozenset[str]  # the settings sent under ``align_chains``

    @classmethod
    def of(cls, request: ChatCompletionRequest) -> SentSettings:
        settings = request.extra_settings()
        settings.update(request.align_chains or {})
        tokens = request.max_completion_tokens or request.max_tokens
        sampling = {
            name: value
            for name, value in (
                ("max_tokens", tokens),
                ("temperature", request.temperature),
                ("top_p", request.top_p),
                ("seed", request.seed),
            )
            if value is not None
        }
        return cls(settings, sampling, frozenset(request.align_chains or {}))

    def param(self, name: str) -> str:
        """The request field to blame for a setting."""
        return f"align_chains.{name}" if name in self.nested else name


@dataclass
class ServedModel:
    """A strategy's chat model over a policy and reward loaded once and shared by all requests."""

    strategy: str
    policy_spec: str
    reward_spec: Any = None
    defaults: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, float] = field(default_factory=dict)  # --limit: over the strategies' declared ones
    device: str | None = None
    model_id: str | None = None
    dtype: str | None = None  # 'bf16', 'fp32', ... (automatic: bf16 on a CUDA GPU that has it)
    cost_limits: CostLimits = field(default_factory=CostLimits)
    memory_budget: int | None = None  # bytes one request's estimated peak may need; None: from the device
    content_special_tokens: bool = False  # opt-out: special-token strings in content act as control tokens
    tool_format: str | None = None  # the policy's tool-call format; None: detected from its chat template

    def __post_init__(self) -> None:
        self.cls: type[AlignedChatModel] = chat_model_class(self.strategy)
        self.model_id = self.model_id or self.strategy
        for strategy_class in self.cls.strategy_classes():  # a server bounds the work of all it runs
            if not strategy_class.declares_cost():
                raise NoCostModel(missing_cost_message(strategy_class))
        self.limits = {**default_limits(self.cls.strategy_classes()), **self.limits}
        self._policy: Policy | None = None
        self._reward: RewardModel | None = None
        self._memory: tuple[MemoryBudget, ModelShape, RewardFootprint] | None = None
        if self.reward_spec is not None:
            resolve_reward_spec(self.reward_spec)  # a bad reward spec fails before any model loads
        unknown = sorted(set(self.defaults) - self._settable())
        if unknown:
            raise InvalidInputError(
                f"Unknown option(s) {unknown} for strategy {self.strategy!r}; it takes "
                f"{sorted(self._settable())}."
            )
        # validate the server's own defaults now, before any model loads
        model = self.cls(**self._base_fields(policy=self.policy_spec, reward="unused"), **self.defaults)
        for name, limit in self.limits.items():  # a request that sends nothing must be admissible
            value = getattr(model, name, None) if name in self._settable() else None
            if isinstance(value, int | float) and not isinstance(value, bool) and value > limit:
                raise InvalidInputError(
                    f"The default {name}={value} of strategy {self.strategy!r} is above the limit "
                    f"{name}={limit:g}: lower it with `-o {name}=...` or raise `--limit {name}=...`."
                )

    # -- loading -----------------------------------------------------------------------------
    def load(self) -> None:
        """Load the policy and the reward (once); requests share them."""
        if self._policy is not None:
            return
        policy = load_policy(
            self.policy_spec,
            device=self.device,
            dtype=self.dtype,
            content_special_tokens=self.content_special_tokens,
        )
        spec = self.reward_spec if self.reward_spec is not None else self.cls.model_fields["reward"].default
        self._reward = load_reward(
            resolve_reward_spec(spec), device=self.device, dtype=self.dtype, policy=policy
        )
        self._policy = policy

    @property
    def loaded(self) -> bool:
        return self._policy is not None

    @property
    def policy(self) -> Policy:
        if self._policy is None:
            raise RuntimeError("ServedModel.load() has not run")
        return self._policy

    # -- per-request settings ------------------------------------------------------------------
    def _settable(self) -> set[str]:
        return set(self.cls.strategy_field_names()) | SAMPLING_EXTRAS | {"max_tokens", "temperature", "top_p"}

    def setting_limits(self) -> dict[str, float]:
        """The per-setting bounds that apply to this strategy (for /v1/models)."""
        return {k: v for k, v in self.limits.items() if k in self._settable()}

    def strategy_fields(self) -> dict[str, Any]:
        """Name -> JSON-able default of every per-request setting (for /v1/models)."""
        out = {}
        for name in sorted(self._settable()):
            default = self.defaults.get(name, self.cls.model_fields[name].default)
            out[name] = (
                default if isinstance(default, int | float | str | bool | type(None)) else repr(default)
            )
        return out

    def _base_fields(self, **extra: Any) -> dict[str, Any]:
        return {"device": self.device, "dtype": self.dtype, "tool_format": self.tool_format, **extra}

    # -- planning: each check raises RequestError, in the order a request meets them -------------
    def plan(self, request: ChatCompletionRequest) -> PreparedRequest:
        """Validate a request and admit its cost, before it queues: the OpenAI fields and the model
        id, the tools and response format, the settings and their bounds, the conversation
        (rendered once: the run takes its token ids) against the context, then the estimated
        work and peak memory of the strategy the settings build."""
        self._check_served(request)
        output = self.output_request(request)  # tools and response format: checked before queueing
        sent = SentSettings.of(request)
        self._check_settings(sent)
        model = self._chat_model(sent)
        tool_format = model.tool_format or self.policy.tool_format  # --tool-format, else the policy's own
        output = output.in_format(tool_format, self.policy.call_marker_tokens(tool_format))
        conversation = self._conversation(request)
        prompt = self._render(conversation, output, model.max_tokens)
        strategy = model.build_strategy()
        params = SamplingParams(max_new_tokens=model.max_tokens, top_p=model.top_p, top_k=model.top_k)
        cost, memory = self._admit(strategy, params, len(prompt.token_ids), sent)
        # a tool or schema contract is per request: such requests run alone
        key = None if output.contract is not None else batch_key(model, strategy, request.stop_list())
        return PreparedRequest(
            model=model,
            conversation=conversation,
            prompt=prompt,
            stop=request.stop_list(),
            cost=cost,
            batch_key=key,
            stream=request.stream,
            output=output,
            memory=memory,
        )

    def _check_served(self, request: ChatCompletionRequest) -> None:
        """OpenAI features this server cannot honour (400), a model it does not serve (404)."""
        problem = request.unsupported()
        if problem:
            raise RequestError(400, problem[1], param=problem[0])
        if request.model not in (None, "", self.model_id):
            raise RequestError(
                404,
                f"Model {request.model!r} is not served here; this server serves {self.model_id!r}.",
                param="model",
                kind="invalid_request_error",
            )

    def _check_settings(self, sent: SentSettings) -> None:
        """Every setting is one this strategy takes, none names a model to load, none is over its bound."""
        unknown = sorted(k for k in sent.settings if k not in self._settable())
        if unknown:
            raise RequestError(
                400,
                f"Unknown setting {unknown[0]!r} for strategy {self.strategy!r}. Per-request settings it "
                f"accepts (top level via extra_body, or under 'align_chains'): {sorted(self._settable())}.",
                param=sent.param(unknown[0]),
            )
        server_only = sorted(k for k in sent.settings if k in SERVER_ONLY)
        if server_only:
            raise RequestError(
                400,
                f"{server_only[0]!r} names a model to load and cannot be set per request; the server's "
                f"operator sets it with `align-chains serve -o {server_only[0]}=...`.",
                param=sent.param(server_only[0]),
            )
        values = {**self.defaults, **sent.sampling, **sent.settings}
        for name, limit in self.limits.items():
            value = values.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool) and value > limit:
                raise RequestError(
                    400,
                    f"{name}={value} is above this server's limit of {limit:g}; ask for less.",
                    param=sent.param(name),
                )

    def _chat_model(self, sent: SentSettings) -> AlignedChatModel:
        """The request's chat model over the shared policy and reward (its settings validated)."""
        values = {**self.defaults, **sent.sampling, **sent.settings}
        try:
            return self.cls(**self._base_fields(policy=self.policy, reward=self._reward), **values)
        except ValidationError as exc:
            message, param = describe_validation_error(exc)
            raise RequestError(400, message, param=param) from exc

    @staticmethod
    def _conversation(request: ChatCompletionRequest) -> Conversation:
        """The messages as a conversation ending where the model answers (or continues)."""
        last = request.messages[-1].role
        if request.continue_final_message:
            if request.add_generation_prompt or last != "assistant":
                raise RequestError(
                    400,
                    "continue_final_message=true continues the last message, which must be an assistant "
                    "message, and needs add_generation_prompt=false (as in vLLM); end the conversation "
                    "with the partial assistant answer and send both fields.",
                    param="continue_final_message",
                )
        elif not request.add_generation_prompt:
            raise RequestError(
                400,
                "add_generation_prompt=false is only supported together with continue_final_message=true "
                "(continuing a final assistant message); drop it to get a new answer.",
                param="add_generation_prompt",
            )
        elif last not in ("user", "tool"):
            raise RequestError(
                400,
                f"The last message has role {last!r}; end the conversation with a user "
                "message for the model to answer.",
                param="messages",
            )
        try:
            conversation = to_conversation(request.messages)  # tool calls and results included
        except BadToolInput as exc:
            raise RequestError(400, str(exc), param=exc.param) from exc
        if request.continue_final_message:
            conversation[-1][CONTINUE_FINAL] = True  # rendered open: the answer continues it
        return conversation

    def _render(self, conversation: Conversation, output: OutputRequest, max_tokens: int) -> RenderedPrompt:
        """The prompt the strategy will run (the contract's instructions in), validated and rendered
        once; a 400 if it is invalid or it and ``max_tokens`` cannot fit the policy's context."""
        contract = output.contract
        try:
            prompt = self.policy.render_prompt(
                contract.prepare(conversation) if contract is not None else conversation,
                prepared_for=contract,
            )
        except InvalidInputError as exc:
            raise RequestError(400, str(exc), param="messages") from exc
        try:
            self.policy.check_fits(len(prompt.token_ids), max_tokens)
        except InvalidInputError as exc:
            raise RequestError(400, str(exc), param="messages", code="context_length_exceeded") from exc
        return prompt

    def _admit(
        self, strategy: Strategy, params: SamplingParams, prompt_tokens: int, sent: SentSettings
    ) -> tuple[Cost, MemoryEstimate]:
        """The strategy's declared cost and its estimated peak memory, each within this server's
        limits; one refusal (400) naming the setting to lower otherwise."""
        budget, shape, reward = self.memory_plan()

        def peak(strategy: Strategy, params: SamplingParams) -> MemoryEstimate:
            return estimate_memory(strategy, shape, reward, params, prompt_tokens)

        try:
            cost = admit(strategy, params, self.cost_limits, set(sent.settings))
            memory = admit_memory(strategy, params, peak, budget, set(sent.settings) | set(sent.sampling))
        except NoCostModel as exc:
            raise RequestError(400, str(exc), code="no_cost_model") from exc
        except OverBudget as exc:
            param = None if exc.param is None else sent.param(exc.param)
            raise RequestError(400, exc.message, param=param, code=exc.code) from exc
        return cost, memory

    # -- memory admission ------------------------------------------------------------------------
    def memory_plan(self) -> tuple[MemoryBudget, ModelShape, RewardFootprint]:
        """The per-request memory budget and the shapes the estimate reads (worked out once)."""
        if self._memory is None:
            budget = MemoryBudget.resolve(self.memory_budget, self.policy.device)
            model = self.policy.model
            self._memory = (budget, ModelShape.of(model), reward_footprint(self._reward, model))
        return self._memory

    @staticmethod
    def output_request(request: ChatCompletionRequest) -> OutputRequest:
        """What the answer must be (tools, tool_choice, a response format), checked before decoding."""
        try:
            return OutputRequest.from_request(request)
        except BadToolInput as exc:
            raise RequestError(400, str(exc), param=exc.param) from exc

    def fit_together(self, groups: list[list[PreparedRequest]]) -> bool:
        """Whether these groups of requests may run at once (in turns) within the memory budget:
        the policy's and the reward's weights once, plus every request's own estimated terms
        (KV cache, activations, logits, ...). A request without an estimate never runs beside
        another."""
        estimates = [r.memory for group in groups for r in group]
        if not estimates or any(e is None for e in estimates):
            return False
        budget, _, reward = self.memory_plan()
        shared = estimates[0].weights + reward.weights
        return shared + sum(e.total - e.weights - reward.weights for e in estimates) <= budget.bytes

    # -- running (blocking: call from a worker thread) -------------------------------------------
    def _reply(
        self, model: AlignedChatModel, result: StrategyResult, output: OutputRequest | None, stream: bool
    ) -> Reply:
        """The OpenAI message for ``result`` (tool calls parsed by ``output``'s contract), with the
        SSE deltas when the client streams."""
        reply = build_reply(
            result,
            output.contract if output else None,
            model.model_name,
            parallel_tool_calls=output.parallel_tool_calls if output else None,
        )
        if stream:
            reply.deltas = stream_deltas(reply, lambda text: self._pieces(result, text))
        return reply

    def _pieces(self, result: StrategyResult, text: str) -> list[str]:
        """``text`` split at token boundaries (the answer's own tokens when it is the answer)."""
        if text == result.text:
            return list(text_pieces(self.policy, result.best.token_ids, text))
        ids = self.policy.tokenizer(text, add_special_tokens=False)["input_ids"]
        return list(text_pieces(self.policy, ids, text))

    def run_together(self, requests: list[PreparedRequest]) -> list[tuple[StrategyResult, Reply]]:
        """Run requests with one batch key as one batched strategy run (one prefill per prompt,
        one decode batch); each gets its own result, usage, counters and reply. Requests with a
        tool or schema contract never share a key, so they arrive here alone."""
        first = requests[0]
        contract = first.output.contract if first.output else None
        prompts = [r.prompt for r in requests]  # rendered at admission: the run does not render them again
        results = first.model.run_strategy(prompts, first.stop, contract=contract)
        return [
            (result, self._reply(r.model, result, r.output, r.stream))
            for r, result in zip(requests, results, strict=True)
        ]

    def extension(self, model: AlignedChatModel, result: StrategyResult) -> dict[str, Any]:
        """The ``align_chains`` extension field: the chat model's response_metadata, JSON-safe."""
        meta = response_metadata(result, model.model_name)
        meta.pop("model_provider", None)
        return _json_safe(meta)


def batch_key(model: AlignedChatModel, strategy: Strategy, stop: list[str] | None) -> str | None:
    """Requests whose chat models have equal settings (and stop strings) can share one batched
    run, when their strategy says they can (``Strategy.batch_key``: adaptive Best-of-N moves
    samples between the prompts of a batch, so it never shares). Seeded requests never do: a
    seed promises the same answer whatever else is running."""
    key = strategy.batch_key()
    if model.seed is not None or key is None:
        return None
    settings = model.model_dump(exclude={"policy", "reward", "cancel_token"})
    return json.dumps([key, type(model).__name__, settings, stop], sort_keys=True, default=repr)


def _json_safe(value: Any) -> Any:
    """Plain JSON: non-finite floats become None, unknown objects their string form."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    if hasattr(value, "item"):  # numpy / torch scalars
        return _json_safe(value.item())
    return json.loads(json.dumps(value, default=str))
