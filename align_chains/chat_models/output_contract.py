"""What a call asks the answer to be: bound tools, a forced tool choice, or a JSON schema.

The contract does three jobs around any strategy:

1. ``prepare`` puts the tools or the schema in front of the policy (a system message);
2. ``check`` says what is wrong with a candidate text, if anything (a malformed tool call, a
   call to a tool that is not bound, missing a forced call, JSON that does not validate);
3. ``choose`` re-picks a strategy's answer so that a candidate that breaks the contract is
   never chosen over one that keeps it; among keepers the reward decides, as before.

``run_keeping_contract`` runs a strategy under a contract: prepare, run, choose, and run again
(a bounded number of times) the prompts whose answer still breaks it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from tenacity import Retrying, retry_if_result, stop_after_attempt

from align_chains.errors import InvalidInputError
from align_chains.models.chat import Conversation
from align_chains.models.policy import RenderedPrompt
from align_chains.models.tool_calls import ParsedCalls, system_with_tools
from align_chains.models.tool_formats import parse_calls
from align_chains.strategies.base import StrategyResult
from align_chains.strategies.candidates import best_index

CONTRACT_KWARGS = ("tools", "tool_choice", "response_format", "parallel_tool_calls")


def normalise_tool_choice(tool_choice: Any, tool_names: Sequence[str]) -> str | None:
    """LangChain/OpenAI tool_choice values -> None (auto), "none", "any" or a tool name."""
    if tool_choice in (None, "auto", False):
        return None
    if tool_choice in ("any", "required", True):
        return "any"
    if tool_choice == "none":
        return "none"
    if isinstance(tool_choice, Mapping):
        tool_choice = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
    if isinstance(tool_choice, str) and tool_choice in tool_names:
        return tool_choice
    raise InvalidInputError(
        f"tool_choice={tool_choice!r} names no bound tool. Use 'auto', 'any', 'required', 'none' or "
        f"one of the bound tools' names: {', '.join(tool_names) or '(no tools are bound)'}."
    )


def _function_spec(tool: Mapping[str, Any]) -> dict[str, Any]:
    spec = tool.get("function", tool) if tool.get("type") == "function" else tool
    if not isinstance(spec.get("name"), str):
        raise InvalidInputError(
            f"A bound tool has no name: {dict(tool)!r}. Bind tools with bind_tools(), which converts "
            "functions, pydantic models and LangChain tools to OpenAI-style function specs."
        )
    return {
        "name": spec["name"],
        "description": spec.get("description", ""),
        "parameters": spec.get("parameters") or {"type": "object", "properties": {}},
    }


def extract_json(text: str) -> Any:
    """The JSON value in a response (a Markdown code fence is allowed); raises ValueError."""
    from langchain_core.utils.json import parse_json_markdown

    try:
        return parse_json_markdown(text)
    except (json.JSONDecodeError, ValueError) as exc:
        raise ValueError(f"no JSON value could be read: {exc}") from exc


def schema_errors(value: Any, schema: Mapping[str, Any]) -> str | None:
    """The first JSON-schema violation of ``value``, or None."""
    from jsonschema import Draft202012Validator

    error = next(iter(Draft202012Validator(dict(schema)).iter_errors(value)), None)
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "the top level"
    return f"at {where}: {error.message}"


@dataclass(frozen=True)
class OutputContract:
    """Tools (OpenAI function specs) and/or a JSON schema an answer must keep."""

    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: str | None = None  # None (auto), "any" or a tool name
    json_schema: dict[str, Any] | None = None
    json_mode: bool = False
    tool_format: str = "hermes"  # the policy's tool-call family (models.tool_formats)
    marker_tokens: tuple[tuple[str, int], ...] = ()  # (marker, id) of the format's one-token markers

    @classmethod
    def from_kwargs(
        cls,
        kwargs: dict[str, Any],
        tool_format: str = "hermes",
        marker_tokens: tuple[tuple[str, int], ...] = (),
    ) -> OutputContract | None:
        """Pop the contract's call kwargs (``tools``, ``tool_choice``, ``response_format``); calls
        are asked for, constrained and read in ``tool_format`` (the policy's family), whose marker
        strings are asked for as the tokens in ``marker_tokens`` (``Policy.call_marker_tokens``)."""
        raw_tools = kwargs.pop("tools", None) or ()
        raw_choice = kwargs.pop("tool_choice", None)
        response_format = kwargs.pop("response_format", None)
        kwargs.pop("parallel_tool_calls", None)  # several calls in one answer always parse
        tools = tuple(_function_spec(t) for t in raw_tools)
        choice = normalise_tool_choice(raw_choice, [t["name"] for t in tools])
        if choice == "none":
            tools, choice = (), None
        schema, json_mode = None, False
        if response_format is not None:
            kind = response_format.get("type") if isinstance(response_format, Mapping) else None
            if kind == "json_object":
                json_mode = True
            elif kind == "json_schema":
                spec = response_format.get("json_schema") or {}
                schema = spec.get("schema")
                if not isinstance(schema, Mapping):
                    raise InvalidInputError(
                        "response_format json_schema needs a 'schema' object: "
                        '{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}.'
                    )
            else:
                raise InvalidInputError(
                    f"response_format={response_format!r} is not understood: pass "
                    '{"type": "json_object"} or {"type": "json_schema", "json_schema": {"schema": ...}}, '
                    "or use with_structured_output(schema)."
                )
        if not tools and schema is None and not json_mode:
            return None
        return cls(tools, choice, dict(schema) if schema else None, json_mode, tool_format, marker_tokens)

    @property
    def tool_names(self) -> list[str]:
        return [t["name"] for t in self.tools]

    # -- 1. in front of the policy ---------------------------------------------------------
    def prepare(self, conversation: Conversation | RenderedPrompt) -> Conversation | RenderedPrompt:
        """The conversation with the tools or schema instructions in its system message (a
        ``RenderedPrompt`` already prepared for this contract is returned as it is)."""
        if isinstance(conversation, RenderedPrompt):
            if conversation.prepared_for == self:
                return conversation
            conversation = conversation.conversation
        messages = [dict(m) for m in conversation]
        system = messages.pop(0)["content"] if messages and messages[0]["role"] == "system" else None
        if self.json_schema is not None:
            ask = (
                "Reply with only a JSON object, no other text, that matches this JSON schema:\n"
                + json.dumps(self.json_schema, ensure_ascii=False)
            )
            system = f"{system}\n\n{ask}" if system else ask
        elif self.json_mode:
            ask = "Reply with only a JSON object, no other text."
            system = f"{system}\n\n{ask}" if system else ask
        if self.tools:
            head = system_with_tools(system, self.tools, self.tool_choice, self.tool_format)
        elif system is not None:
            head = {"role": "system", "content": system}
        else:
            return messages
        return [head, *messages]

    # -- 2. what is wrong with a candidate -------------------------------------------------
    def parse(self, text: str) -> ParsedCalls:
        """The text's tool calls (none are read when no tools are bound)."""
        return parse_calls(self.tool_format, text, self.tool_names) if self.tools else ParsedCalls(text)

    def check(self, text: str) -> str | None:
        """Why ``text`` breaks the contract, or None when it keeps it."""
        if self.tools:
            parsed = self.parse(text)
            if parsed.invalid:
                bad = parsed.invalid[0]
                return f"tool call {bad['name'] or '(unnamed)'}: {bad['error']}"
            specs = {t["name"]: t for t in self.tools}
            for call in parsed.calls:
                error = schema_errors(call["args"], specs[call["name"]]["parameters"])
                if error:
                    return f"tool call {call['name']}: arguments {error}"
            if self.tool_choice == "any" and not parsed.calls:
                return "no tool call, but a tool call is required"
            if self.tool_choice not in (None, "any") and all(
                c["name"] != self.tool_choice for c in parsed.calls
            ):
                return f"no call to {self.tool_choice!r}, which is required"
            if parsed.calls:
                return None
        if self.json_schema is not None or self.json_mode:
            try:
                value = extract_json(text)
            except ValueError as exc:
                return str(exc)
            if self.json_schema is None:
                return None if isinstance(value, dict) else "the JSON value is not an object"
            error = schema_errors(value, self.json_schema)
            return f"the JSON does not match the schema {error}" if error else None
        return None

    # -- 3. the pick -----------------------------------------------------------------------
    def choose(self, result: StrategyResult) -> StrategyResult:
        """Re-pick so a keeper always beats a breaker; adds ``output_check`` to the details."""
        errors = [self.check(c.text) for c in result.candidates]
        keepers = [j for j, e in enumerate(errors) if e is None]
        best = result.best_index
        if errors[best] is not None and keepers:  # the best scored keeper, else the first keeper
            best = best_index([c.reward for c in result.candidates], among=keepers)
            best = keepers[0] if best is None else best
        check = {
            "chosen": best,
            "valid_candidates": len(keepers),
            "candidates": len(errors),
            "valid": errors[best] is None,
            "error": errors[best],
            "reselected": best != result.best_index,
        }
        chosen = result.candidates[best]
        return replace(
            result,
            text=chosen.text,
            reward=chosen.reward,
            best_index=best,
            details={**result.details, "output_check": check},
        )


def is_kept(result: StrategyResult) -> bool:
    """Whether a chosen result keeps its contract (results without a contract always do)."""
    return bool(result.details.get("output_check", {}).get("valid", True))


RunStrategy = Callable[[Sequence[Conversation | RenderedPrompt], dict[str, Any]], list[StrategyResult]]
"""``run(conversations, overrides)``: one batched strategy run with per-call setting overrides."""


def run_keeping_contract(
    contract: OutputContract,
    conversations: Sequence[Conversation | RenderedPrompt],
    run: RunStrategy,
    overrides: dict[str, Any],
    *,
    seed: int | None,
    retries: int,
) -> list[StrategyResult]:
    """Run under ``contract``; prompts with no keeper are run again, up to ``retries`` more times.

    Each rerun adds its counters to the prompt's result (the work is counted, never lost), and a
    seeded run is reseeded (``seed + attempts``) since it would only repeat itself.
    ``details["output_check"]["attempts"]`` says how many runs each prompt took.
    """
    prepared = [contract.prepare(c) for c in conversations]
    results = [contract.choose(r) for r in run(prepared, overrides)]
    attempts = [1] * len(results)

    def run_again() -> list[int]:
        todo = [i for i, r in enumerate(results) if not is_kept(r)]
        if not todo:
            return todo
        again = dict(overrides)
        if seed is not None:  # a seeded run would only repeat itself
            again["seed"] = seed + max(attempts[i] for i in todo)
        for i, new in zip(todo, run([prepared[i] for i in todo], again), strict=True):
            new = contract.choose(new)
            attempts[i] += 1
            results[i] = replace(new, counters=results[i].counters + new.counters)
        return [i for i in todo if not is_kept(results[i])]

    if retries:
        Retrying(
            stop=stop_after_attempt(retries),
            retry=retry_if_result(bool),
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
        )(run_again)
    return [
        replace(r, details={**r.details, "output_check": {**r.details["output_check"], "attempts": n}})
        for r, n in zip(results, attempts, strict=True)
    ]
