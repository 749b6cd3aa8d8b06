"""The OpenAI chat-completions request, parsed strictly, and OpenAI-style error bodies.

Fields the OpenAI API defines are declared here; any other top-level field (what the openai
client's ``extra_body`` adds) is a strategy setting, validated later against the chat model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from align_chains.engine.sampling import SEED_MAX

# OpenAI fields we accept and ignore because they do not change the answer.
IGNORED_FIELDS = frozenset({"user", "metadata", "store", "service_tier"})
#: the largest token count a request may name (a context is far shorter; admission checks the real fit)
MAX_TOKENS = 2**31 - 1


def _documented(low: float, high: float) -> Callable[[dict[str, Any]], None]:
    """A JSON-schema edit: the numeric branch shows the served range ``[low, high]``."""

    def edit(schema: dict[str, Any]) -> None:
        for option in schema.get("anyOf", [schema]):
            if option.get("type") in ("integer", "number"):
                option.update(minimum=low, maximum=high)

    return edit


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class FunctionSpec(BaseModel):
    """A tool's function: its name, what it does, and its arguments as a JSON schema."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolSpec(BaseModel):
    """One entry of ``tools``: OpenAI only defines function tools."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionSpec


class CalledFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    arguments: str  # a JSON object, as a string (OpenAI's wire format)


class ToolCall(BaseModel):
    """A call an earlier assistant turn made, sent back in the history."""

    model_config = ConfigDict(extra="forbid")

    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


class Message(BaseModel):
    """One chat message; ``developer`` is OpenAI's newer name for ``system``.

    Assistant turns may carry the ``tool_calls`` they made, and ``tool`` turns the
    ``tool_call_id`` they answer.
    """

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The OpenAI fields of a chat-completions request (extra fields are kept for the strategy)."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(
        default=None, ge=0, le=SEED_MAX, description="Reproducible sampling: 0 to 2**63-1."
    )
    stop: str | list[str] | None = None
    # OpenAI's ranges are parsed; the document shows what is served (n=1, no penalties), and the
    # values in between get ``unsupported``'s message, which says what to send instead
    n: int | None = Field(
        default=None,
        ge=1,
        le=128,
        description="OpenAI's number of choices: only 1 is served.",
        json_schema_extra=_documented(1, 1),
    )
    frequency_penalty: float | None = Field(
        default=None, ge=-2.0, le=2.0, json_schema_extra=_documented(0, 0)
    )
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0, json_schema_extra=_documented(0, 0))
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[ToolSpec] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None
    # vLLM's fields for continuing a final assistant message (DARWIN's mid-answer segments)
    continue_final_message: bool = Field(
        default=False, description="Continue the last (assistant) message instead of answering it."
    )
    add_generation_prompt: bool = Field(
        default=True, description="Open a new assistant turn; must be false with continue_final_message."
    )
    align_chains: dict[str, Any] | None = Field(
        default=None, description="Strategy settings, namespaced (needed for names OpenAI also uses, e.g. n)."
    )

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    def unsupported(self) -> tuple[str, str] | None:
        """The first OpenAI feature this server cannot honour, as (field, reason), or None."""
        if self.n not in (None, 1):
            return "n", (
                "OpenAI's n (number of choices) must be 1: the server returns the one answer the strategy "
                "chose. To set a strategy's own n (e.g. Best-of-N's sample count), send "
                "extra_body={'align_chains': {'n': 8}}."
            )
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name) not in (None, 0, 0.0):
                return name, f"{name} is not supported by local aligned models; leave it unset."
        if self.logit_bias:
            return "logit_bias", "logit_bias is not supported; leave it unset."
        if self.logprobs or self.top_logprobs:
            return "logprobs", "logprobs are not returned by this server; leave logprobs unset."
        if self.functions or self.function_call is not None:
            name = "functions" if self.functions else "function_call"
            return name, (
                f"the legacy {name} field is not supported; send tools=[{{'type': 'function', "
                "'function': {...}}] and tool_choice instead."
            )
        return None

    def extra_settings(self) -> dict[str, Any]:
        """Top-level fields that are not OpenAI fields: strategy settings from extra_body."""
        extra = dict(self.model_extra or {})
        return {k: v for k, v in extra.items() if k not in IGNORED_FIELDS}

    def stop_list(self) -> list[str] | None:
        if self.stop is None:
            return None
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


def openapi_schemas() -> dict[str, Any]:
    """The request body's JSON schemas, for the OpenAPI document's components (what clients and
    schema-driven fuzzers such as Schemathesis read); the body itself is parsed by hand (``_parse``)."""
    schema = ChatCompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    # strategy settings go under ``align_chains`` here (extra top-level fields are accepted too, but
    # which ones depends on the served strategy): the document lists the OpenAI fields only
    schema["additionalProperties"] = False
    return {**defs, "ChatCompletionRequest": schema}


REQUEST_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}},
    }
}


def error_body(
    message: str, *, kind: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The OpenAI error shape, which the openai client turns into its exception classes."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def describe_validation_error(exc: ValidationError, prefix: str = "") -> tuple[str, str | None]:
    """A one-line message naming every bad field, and the first field's name (OpenAI's ``param``)."""
    parts = []
    first: str | None = None
    for problem in exc.errors(include_url=False):
        name = prefix + ".".join(str(p) for p in problem["loc"])
        first = first or name or None
        shown = repr(problem.get("input"))
        if len(shown) > 80:
            shown = shown[:77] + "..."
        parts.append(f"{name or 'body'}: {problem['msg']} (got {shown})")
    return "Invalid request: " + "; ".join(parts), first
