"""Tools and structured output over HTTP: OpenAI's wire format <-> the library's output contract.

Three translations, all plain functions so the app only calls them:

* ``contract_kwargs``: ``tools``/``tool_choice``/``parallel_tool_calls``/``response_format``,
  checked (tool schemas, the chosen tool's name, the response schema) and turned into the call
  kwargs every aligned chat model takes (the same ones ``bind_tools`` and
  ``with_structured_output`` bind), so the server gets whatever the library does with them;
* ``to_conversation``: OpenAI history (assistant ``tool_calls``, ``tool`` results) -> the
  library's messages, rendered natively or with the ``<tool_call>`` fallback;
* ``build_reply``: the chosen answer -> ``message.tool_calls`` (arguments as JSON strings) with
  ``finish_reason: "tool_calls"``, and the SSE deltas that stream it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from align_chains.chat_models.output_contract import OutputContract, extract_json
from align_chains.chat_models.results import build_message
from align_chains.errors import InvalidInputError
from align_chains.models.chat import Conversation
from align_chains.models.tool_calls import assistant_with_calls, tool_results
from align_chains.strategies.base import StrategyResult
from align_chains_server.schemas import ChatCompletionRequest, Message

TOOL_CHOICES = ("auto", "none", "required")


class BadToolInput(InvalidInputError):
    """A request whose tools, tool_choice, response_format or tool history cannot be used (a 400)."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def _check_schema(schema: Any, param: str, what: str) -> None:
    """Refuse a value that is not a JSON schema (Draft 2020-12), naming where it breaks."""
    if not isinstance(schema, dict):
        raise BadToolInput(f"{what} must be a JSON schema object, not {type(schema).__name__}.", param)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "the top level"
        raise BadToolInput(
            f"{what} is not a valid JSON schema: at {where}: {exc.message}. Fix the schema "
            "(see https://json-schema.org/draft/2020-12).",
            param,
        ) from None


def _tool_choice(choice: str | dict[str, Any] | None, names: Sequence[str]) -> str | dict[str, Any] | None:
    """OpenAI's tool_choice, checked against the tools the request sent."""
    if choice is None:
        return None
    if isinstance(choice, str):
        if choice not in TOOL_CHOICES:
            raise BadToolInput(
                f"tool_choice={choice!r} is not one of {list(TOOL_CHOICES)} or "
                '{"type": "function", "function": {"name": ...}}.',
                "tool_choice",
            )
        if choice == "required" and not names:
            raise BadToolInput("tool_choice='required' needs tools; send tools=[...].", "tool_choice")
        return choice
    name = (choice.get("function") or {}).get("name") if choice.get("type") == "function" else None
    if not isinstance(name, str):
        raise BadToolInput(
            f"tool_choice={choice!r} is not understood: send "
            '{"type": "function", "function": {"name": "<a tool name>"}}.',
            "tool_choice",
        )
    if name not in names:
        raise BadToolInput(
            f"tool_choice names the tool {name!r}, but the request's tools are: "
            f"{', '.join(names) or '(none)'}. Name one of them, or send it in tools.",
            "tool_choice.function.name",
        )
    return choice


def _response_format(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """OpenAI's response_format, checked; None for plain text."""
    if value is None or value.get("type") == "text":
        return None
    kind = value.get("type")
    if kind == "json_object":
        return {"type": "json_object"}
    if kind != "json_schema":
        raise BadToolInput(
            f"response_format type {kind!r} is not one of 'text', 'json_object', 'json_schema'.",
            "response_format.type",
        )
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise BadToolInput(
            'response_format json_schema needs {"name": ..., "schema": {...}} under "json_schema".',
            "response_format.json_schema",
        )
    if "schema" not in spec:
        raise BadToolInput(
            "response_format.json_schema has no 'schema': send the JSON schema the answer must match.",
            "response_format.json_schema.schema",
        )
    _check_schema(spec["schema"], "response_format.json_schema.schema", "response_format.json_schema.schema")
    return {"type": "json_schema", "json_schema": dict(spec)}


def contract_kwargs(request: ChatCompletionRequest) -> dict[str, Any]:
    """The request's tools and response format as the chat models' call kwargs (checked; may be {})."""
    tools = [t.model_dump(exclude_none=True) for t in request.tools or []]
    names = [t["function"]["name"] for t in tools]
    for i, tool in enumerate(tools):
        duplicate = names.index(tool["function"]["name"]) != i
        if duplicate:
            raise BadToolInput(
                f"Two tools are named {names[i]!r}; tool names must be unique.", f"tools.{i}.function.name"
            )
        params = tool["function"].get("parameters")
        if params is None:
            continue
        param = f"tools.{i}.function.parameters"
        _check_schema(params, param, f"The parameters schema of tool {names[i]!r}")
        if params.get("type", "object") != "object":
            raise BadToolInput(
                f"The parameters of tool {names[i]!r} have type {params['type']!r}; a tool's arguments "
                'are a JSON object: {"type": "object", "properties": {...}}.',
                param,
            )
    kwargs: dict[str, Any] = {}
    choice = _tool_choice(request.tool_choice, names)
    if tools:
        kwargs["tools"] = tools
        if choice is not None:
            kwargs["tool_choice"] = choice
        if request.parallel_tool_calls is not None:
            kwargs["parallel_tool_calls"] = request.parallel_tool_calls
    response_format = _response_format(request.response_format)
    if response_format is not None:
        kwargs["response_format"] = response_format
    return kwargs


@dataclass(frozen=True)
class OutputRequest:
    """What a request asks the answer to be: the library's contract, and OpenAI's
    ``parallel_tool_calls`` (which decides how many calls the reply may carry)."""

    contract: OutputContract | None = None
    parallel_tool_calls: bool | None = None

    @classmethod
    def from_request(cls, request: ChatCompletionRequest) -> OutputRequest:
        """Checked before any decoding; raises ``BadToolInput`` naming the field to fix."""
        kwargs = contract_kwargs(request)
        try:  # the same kwargs bind_tools / with_structured_output bind on a chat model
            contract = OutputContract.from_kwargs(dict(kwargs))
        except InvalidInputError as exc:
            raise BadToolInput(str(exc), "tools") from exc
        return cls(contract, request.parallel_tool_calls)

    def in_format(self, tool_format: str, marker_tokens: tuple[tuple[str, int], ...]) -> OutputRequest:
        """This request with its tool calls asked for, constrained and read in the policy's family's
        format (``models.tool_formats``; ``marker_tokens``: its markers held as one token each)."""
        if self.contract is None or not self.contract.tools:
            return self
        contract = replace(self.contract, tool_format=tool_format, marker_tokens=marker_tokens)
        return replace(self, contract=contract)


# -- the history ---------------------------------------------------------------------------------
def _called(message: Message, i: int) -> list[dict[str, Any]]:
    calls = []
    for j, call in enumerate(message.tool_calls or []):
        try:
            args = json.loads(call.function.arguments) if call.function.arguments.strip() else {}
        except json.JSONDecodeError as exc:
            raise BadToolInput(
                f"messages.{i}.tool_calls.{j}.function.arguments is not valid JSON ({exc.msg}); send the "
                "arguments as a JSON object encoded as a string, as the API returned them.",
                f"messages.{i}.tool_calls.{j}.function.arguments",
            ) from None
        if not isinstance(args, dict):
            raise BadToolInput(
                f"messages.{i}.tool_calls.{j}.function.arguments is not a JSON object.",
                f"messages.{i}.tool_calls.{j}.function.arguments",
            )
        calls.append({"name": call.function.name, "args": args, "id": call.id})
    return calls


def to_conversation(messages: Sequence[Message]) -> Conversation:
    """OpenAI messages -> the library's conversation; consecutive tool results become one turn.

    A ``tool`` message must answer a call an earlier assistant turn made (its ``tool_call_id``);
    the tool's name, which OpenAI clients do not resend, is taken from that call.
    """
    conversation: Conversation = []
    names: dict[str, str] = {}  # call id -> tool name
    pending: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if message.role == "tool":
            if message.tool_call_id is None:
                raise BadToolInput(
                    f"messages.{i} has role 'tool' but no tool_call_id; say which call it answers.",
                    f"messages.{i}.tool_call_id",
                )
            if message.tool_call_id not in names:
                raise BadToolInput(
                    f"messages.{i} answers tool_call_id {message.tool_call_id!r}, but no earlier assistant "
                    f"message made a call with that id (ids so far: {sorted(names) or 'none'}).",
                    f"messages.{i}.tool_call_id",
                )
            pending.append(
                {
                    "content": message.text(),
                    "tool_call_id": message.tool_call_id,
                    "name": message.name or names[message.tool_call_id],
                }
            )
            continue
        if pending:
            conversation.append(tool_results(pending))
            pending = []
        if message.role == "assistant" and message.tool_calls:
            calls = _called(message, i)
            names.update({c["id"]: c["name"] for c in calls})
            conversation.append(assistant_with_calls(message.text(), calls))
        else:
            role = "system" if message.role == "developer" else message.role
            conversation.append({"role": role, "content": message.text()})
    if pending:
        conversation.append(tool_results(pending))
    return conversation


# -- the answer ----------------------------------------------------------------------------------
@dataclass
class Reply:
    """The chosen answer in OpenAI's shape, and what the ``align_chains`` extension adds about it."""

    content: str | None
    finish_reason: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    extension: dict[str, Any] = field(default_factory=dict)
    deltas: list[dict[str, Any]] = field(default_factory=list)  # SSE deltas, when streaming

    def message(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        return out


def _json_content(text: str) -> str:
    """A JSON answer as bare JSON (a fence or surrounding text removed), so clients can json.loads it."""
    try:
        json.loads(text)
        return text
    except json.JSONDecodeError:
        return json.dumps(extract_json(text), ensure_ascii=False)


def build_reply(
    result: StrategyResult,
    contract: OutputContract | None,
    model_name: str,
    *,
    parallel_tool_calls: bool | None = None,
) -> Reply:
    """The OpenAI message for a chosen answer.

    With tools, parsed calls become ``tool_calls`` (``finish_reason: "tool_calls"``) and the text
    around them the content; calls that do not parse leave the text as it was and are listed
    under ``invalid_tool_calls`` in the extension. ``parallel_tool_calls=False`` keeps the first
    call (the rest are counted as ``dropped_tool_calls``). With a response format, an answer that
    keeps it is returned as bare JSON.
    """
    if contract is None:
        return Reply(result.text, result.finish_reason)
    message = build_message(result, model_name, contract)
    calls = list(message.tool_calls)
    extension: dict[str, Any] = {}
    if message.invalid_tool_calls:
        extension["invalid_tool_calls"] = [dict(c) for c in message.invalid_tool_calls]
    if parallel_tool_calls is False and len(calls) > 1:
        extension["dropped_tool_calls"] = len(calls) - 1
        calls = calls[:1]
    if calls:
        openai_calls = [
            {
                "id": c["id"],
                "type": "function",
                "function": {"name": c["name"], "arguments": json.dumps(c["args"], ensure_ascii=False)},
            }
            for c in calls
        ]
        return Reply(message.text or None, "tool_calls", openai_calls, extension)
    content = result.text
    if (contract.json_schema is not None or contract.json_mode) and contract.check(content) is None:
        content = _json_content(content)
    return Reply(content, result.finish_reason, extension=extension)


def stream_deltas(reply: Reply, split: Callable[[str], list[str]]) -> list[dict[str, Any]]:
    """The ``choices[0].delta`` of each SSE chunk after the role chunk: the content in pieces,
    then each call (its index, id, type and name, then its arguments in pieces)."""
    deltas: list[dict[str, Any]] = [{"content": piece} for piece in split(reply.content or "")]
    for index, call in enumerate(reply.tool_calls):
        head = {"index": index, "id": call["id"], "type": "function"}
        deltas.append(
            {"tool_calls": [{**head, "function": {"name": call["function"]["name"], "arguments": ""}}]}
        )
        for piece in split(call["function"]["arguments"]):
            deltas.append({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    return deltas
