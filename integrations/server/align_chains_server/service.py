"""One served strategy: the shared policy and reward, per-request settings, and a blocking run.

Nothing here knows about HTTP: ``prepare`` turns a parsed request into a validated chat model
(raising ``RequestError`` with the status and the field to blame), ``run`` executes it.
"""

from __future__ import annotations

import importlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from align_chains.chat_models import AlignedChatModel, chat_model_class
from align_chains.chat_models.results import response_metadata
from align_chains.chat_models.streaming import text_pieces
from align_chains.errors import InvalidInputError
from align_chains.models.chat import CONTINUE_FINAL, Conversation, validate_conversation
from align_chains.models.policy import Policy, load_policy
from align_chains.rewards import RewardModel, load_reward
from align_chains.strategies.base import StrategyResult
from align_chains_server.schemas import ChatCompletionRequest, describe_validation_error

# Per-request sampling settings beyond the OpenAI fields (vLLM accepts top_k the same way).
SAMPLING_EXTRAS = frozenset({"top_k"})
# Upper bounds on request settings that multiply work; applied when the strategy has the field.
DEFAULT_LIMITS: dict[str, float] = {
    "max_tokens": 1024,
    "n": 64,
    "budget": 64,
    "chains": 16,
    "iterations": 200,
}
_MODULE_ATTR = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class RequestError(Exception):
    """A request the server refuses: an HTTP status, a message and the field to blame."""

    def __init__(self, status: int, message: str, *, param: str | None = None, kind: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")


def resolve_reward_spec(spec: Any) -> Any:
    """``package.module:function`` -> that callable; anything else is left for ``load_reward``.

    A command line can only name a reward; this form lets it name a Python function
    ``fn(prompt, response) -> float`` (``judge:<model>`` keeps its meaning).
    """
    if isinstance(spec, str) and _MODULE_ATTR.match(spec) and not spec.lower().startswith("judge:"):
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise InvalidInputError(
                f"Reward {spec!r}: cannot import module {module_name!r} ({exc})."
            ) from exc
        fn = getattr(module, attr, None)
        if not callable(fn):
            raise InvalidInputError(f"Reward {spec!r}: {module_name} has no callable {attr!r}.")
        return fn
    return spec


@dataclass
class ServedModel:
    """A strategy's chat model over a policy and reward loaded once and shared by all requests."""

    strategy: str
    policy_spec: str
    reward_spec: Any = None
    defaults: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    device: str | None = None
    model_id: str | None = None

    def __post_init__(self) -> None:
        self.cls: type[AlignedChatModel] = chat_model_class(self.strategy)
        self.model_id = self.model_id or self.strategy
        self._policy: Policy | None = None
        self._reward: RewardModel | None = None
        unknown = sorted(set(self.defaults) - self._settable())
        if unknown:
            raise InvalidInputError(
                f"Unknown option(s) {unknown} for strategy {self.strategy!r}; it takes "
                f"{sorted(self._settable())}."
            )
        # validate the server's own defaults now, before any model loads
        self.cls(**self._base_fields(policy=self.policy_spec, reward="unused"), **self.defaults)

    # -- loading -----------------------------------------------------------------------------
    def load(self) -> None:
        """Load the policy and the reward (once); requests share them."""
        if self._policy is not None:
            return
        policy = load_policy(self.policy_spec, device=self.device)
        spec = self.reward_spec if self.reward_spec is not None else self.cls.model_fields["reward"].default
        self._reward = load_reward(resolve_reward_spec(spec), device=self.device, policy=policy)
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
        return {"device": self.device, **extra}

    def prepare(
        self, request: ChatCompletionRequest
    ) -> tuple[AlignedChatModel, Conversation, list[str] | None]:
        """Validate everything a client sent; return the chat model for this request."""
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
        settings = request.extra_settings()
        settings.update(request.align_chains or {})
        prefix = {k: ("align_chains." if k in (request.align_chains or {}) else "") for k in settings}
        unknown = sorted(k for k in settings if k not in self._settable())
        if unknown:
            name = unknown[0]
            raise RequestError(
                400,
                f"Unknown setting {name!r} for strategy {self.strategy!r}. Per-request settings it accepts "
                f"(top level via extra_body, or under 'align_chains'): {sorted(self._settable())}.",
                param=prefix[name] + name,
            )
        sampling: dict[str, Any] = {}
        tokens = request.max_completion_tokens or request.max_tokens
        for name, value in (
            ("max_tokens", tokens),
            ("temperature", request.temperature),
            ("top_p", request.top_p),
            ("seed", request.seed),
        ):
            if value is not None:
                sampling[name] = value
        values = {**self.defaults, **sampling, **settings}
        for name, limit in self.limits.items():
            value = values.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool) and value > limit:
                raise RequestError(
                    400,
                    f"{name}={value} is above this server's limit of {limit:g}; ask for less.",
                    param=prefix.get(name, "") + name,
                )
        try:
            model = self.cls(**self._base_fields(policy=self.policy, reward=self._reward), **values)
        except ValidationError as exc:
            message, param = describe_validation_error(exc)
            raise RequestError(400, message, param=param) from exc
        conversation = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in request.messages
        ]
        if request.continue_final_message:
            if request.add_generation_prompt or conversation[-1]["role"] != "assistant":
                raise RequestError(
                    400,
                    "continue_final_message=true continues the last message, which must be an assistant "
                    "message, and needs add_generation_prompt=false (as in vLLM); end the conversation "
                    "with the partial assistant answer and send both fields.",
                    param="continue_final_message",
                )
            conversation[-1][CONTINUE_FINAL] = True
        elif not request.add_generation_prompt:
            raise RequestError(
                400,
                "add_generation_prompt=false is only supported together with continue_final_message=true "
                "(continuing a final assistant message); drop it to get a new answer.",
                param="add_generation_prompt",
            )
        elif conversation[-1]["role"] not in ("user", "tool"):
            raise RequestError(
                400,
                f"The last message has role {conversation[-1]['role']!r}; end the conversation with a user "
                "message for the model to answer.",
                param="messages",
            )
        try:
            validate_conversation(conversation)
        except InvalidInputError as exc:
            raise RequestError(400, str(exc), param="messages") from exc
        return model, conversation, request.stop_list()

    # -- running (blocking: call from a worker thread) -------------------------------------------
    def run(
        self,
        model: AlignedChatModel,
        conversation: Conversation,
        stop: list[str] | None,
        pieces: bool = False,
    ) -> tuple[StrategyResult, list[str]]:
        """Run the strategy (under the policy's lock); with ``pieces`` also split the answer into tokens."""
        (result,) = model.run_strategy([conversation], stop)
        parts = list(text_pieces(self.policy, result.best.token_ids, result.text)) if pieces else []
        return result, parts

    def extension(self, model: AlignedChatModel, result: StrategyResult) -> dict[str, Any]:
        """The ``align_chains`` extension field: the chat model's response_metadata, JSON-safe."""
        meta = response_metadata(result, model.model_name)
        meta.pop("model_provider", None)
        return _json_safe(meta)


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
