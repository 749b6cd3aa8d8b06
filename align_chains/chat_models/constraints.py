"""Where a call's grammar comes from: bound tools, a structured-output schema, grammar=/regex=.

The output contract (``output_contract``) says what an answer must be and ranks candidates by
it; this module turns the same contract into a ``Grammar`` the decoder enforces token by
token, so every candidate keeps the contract by construction:

* a JSON schema (``with_structured_output``, ``response_format=json_schema``): JSON that
  validates; ``json_mode`` (``response_format=json_object``): any JSON object;
* bound tools: the ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`` format
  the policy is prompted with (``models.tool_calls``; Hermes/Qwen native templates use it too),
  with ``arguments`` valid for the named tool. A named ``tool_choice`` or ``"any"`` forces one
  call; ``"auto"`` is an alternation: one call, OR plain text that does not start with ``<``;
  ``"none"`` unbinds the tools, so no call can be read;
* the user's own Lark grammar (``grammar=``) or regex (``regex=``).
"""

from __future__ import annotations

import json
from typing import Any

from align_chains.chat_models.output_contract import OutputContract
from align_chains.engine.grammar import JSON_LAYOUT, Grammar
from align_chains.errors import InvalidInputError

CALL_OPEN, CALL_CLOSE = "<tool_call>\n", "\n</tool_call>"
_PLAIN_TEXT = r"/[^<\s](?s:.)*/"  # an answer in prose: anything that does not open a tag


_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_ONES = ("items", "additionalProperties", "not", "if", "then", "else", "contains")


def closed_objects(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` on every object that lists its properties
    and says nothing about others (a copy; the caller's schema is left alone).

    A tool's parameters are its signature: keys it does not declare are never used, and under an
    open schema a small model keeps writing invented keys until ``max_tokens`` cuts the call.
    OpenAI's strict mode and vLLM's default (xgrammar strict) close objects the same way.
    """
    if isinstance(schema, list):
        return [closed_objects(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            closed[key] = {name: closed_objects(sub) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS or key in _SCHEMA_ONES:
            closed[key] = closed_objects(value)
        else:
            closed[key] = value
    if "properties" in schema and "additionalProperties" not in schema and "patternProperties" not in schema:
        closed["additionalProperties"] = False
    return closed


def call_schema(tools: tuple[dict[str, Any], ...], tool_choice: str | None) -> dict[str, Any]:
    """The JSON schema of one call's body: a bound tool's name and arguments valid for it (objects
    that declare their properties take no others: see ``closed_objects``)."""
    chosen = [t for t in tools if tool_choice in (None, "any") or t["name"] == tool_choice]
    return {
        "x-guidance": JSON_LAYOUT,  # the layout the prompt shows: '{"name": "add", "arguments": ...}'
        "anyOf": [
            {
                "type": "object",
                "properties": {"name": {"const": t["name"]}, "arguments": closed_objects(t["parameters"])},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for t in chosen
        ],
    }


def tool_call_grammar(tools: tuple[dict[str, Any], ...], tool_choice: str | None) -> Grammar:
    """``<tool_call>`` blocks, newline-separated (parallel calls), OR plain text for ``tool_choice``
    auto; the blocks alone for "any"; exactly one call for a named tool."""
    body = json.dumps(call_schema(tools, tool_choice))
    # one call, or several separated by a newline as a history writes them (parallel tool calls)
    call = (
        f'calls: call ("\\n" call)*\ncall: {json.dumps(CALL_OPEN)} body {json.dumps(CALL_CLOSE)}\n'
        f"body: %json {body}\n"
    )
    if tool_choice is None:
        source = f"start: calls | TEXT\n{call}TEXT: {_PLAIN_TEXT}\n"
        what = "a call to one of " + ", ".join(t["name"] for t in tools) + " or plain text"
    else:  # a named tool is one call to it (OpenAI's forced function); "any" may make several
        source = f"start: {'calls' if tool_choice == 'any' else 'call'}\n{call}"
        what = "a call to " + (tool_choice if tool_choice != "any" else "one of the bound tools")
    try:
        return Grammar(Grammar.lark(source).text, f"tool-call grammar ({what})")
    except InvalidInputError as exc:
        raise InvalidInputError(f"The bound tools' parameter schemas cannot be constrained: {exc}") from exc


def contract_grammar(contract: OutputContract | None) -> Grammar | None:
    """The grammar that makes every answer keep ``contract`` (None when nothing is asked)."""
    if contract is None:
        return None
    answer: Grammar | None = None
    if contract.json_schema is not None:
        answer = Grammar.json_schema(contract.json_schema)
    elif contract.json_mode:
        answer = Grammar.any_json_object()
    if not contract.tools:
        return answer
    calls = tool_call_grammar(contract.tools, contract.tool_choice)
    if answer is None or contract.tool_choice is not None:
        return calls
    forced = tool_call_grammar(contract.tools, "any")  # auto with a schema: a call or the JSON
    return Grammar.any_of([forced, answer], f"{forced.description} or {answer.description}")


def user_grammar(grammar: str | None, regex: str | None) -> Grammar | None:
    """The ``grammar=`` (Lark) or ``regex=`` option as a Grammar; both at once is an error."""
    if grammar is not None and regex is not None:
        raise InvalidInputError("Pass grammar= (a Lark grammar) or regex=, not both.")
    if grammar is not None:
        return Grammar.lark(grammar)
    if regex is not None:
        return Grammar.regex(regex)
    return None


def request_grammar(
    contract: OutputContract | None, grammar: str | None, regex: str | None, constrain: bool
) -> Grammar | None:
    """The one grammar a request decodes under: the user's own, else the contract's."""
    own = user_grammar(grammar, regex)
    if own is not None:
        if contract is not None and constrain:
            raise InvalidInputError(
                "grammar=/regex= and bound tools or a structured-output schema each set the answer's "
                "format: use one, or pass constrain=False to keep the tools/schema as ranking only."
            )
        return own
    return contract_grammar(contract) if constrain else None
