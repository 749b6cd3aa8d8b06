"""Where a call's grammar comes from: bound tools, a structured-output schema, grammar=/regex=.

The output contract (``output_contract``) says what an answer must be and ranks candidates by
it; this module turns the same contract into a ``Grammar`` the decoder enforces token by
token, so every candidate keeps the contract by construction:

* a JSON schema (``with_structured_output``, ``response_format=json_schema``): JSON that
  validates; ``json_mode`` (``response_format=json_object``): any JSON object;
* bound tools: calls in the policy's family format (``models.tool_formats``: Hermes
  ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`` by default, Llama 3 JSON,
  Mistral ``[TOOL_CALLS][...]``, pythonic ``[f(a=1)]``), with arguments valid for the named
  tool. A named ``tool_choice`` forces one call, ``"any"`` one or more; ``"auto"`` is an
  alternation: calls, OR plain text that cannot open one (it does not start with ``<``, say);
  ``"none"`` unbinds the tools, so no call can be read;
* the user's own Lark grammar (``grammar=``) or regex (``regex=``).
"""

from __future__ import annotations

import json
from typing import Any

from align_chains.chat_models.output_contract import OutputContract
from align_chains.engine.grammar import JSON_LAYOUT, Grammar
from align_chains.errors import InvalidInputError
from align_chains.models.tool_calls import MISTRAL_MARKER

CALL_OPEN, CALL_CLOSE = "<tool_call>\n", "\n</tool_call>"
# an answer in prose: anything that cannot open a call (a tag, a JSON object, a list)
_PLAIN_TEXT = {
    "hermes": r"/[^<\s](?s:.)*/",
    "llama3_json": r"/[^{<\s](?s:.)*/",
    "mistral": r"/[^\[\s](?s:.)*/",
    "pythonic": r"/[^\[\s](?s:.)*/",
}


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


def call_schema(
    tools: tuple[dict[str, Any], ...], tool_choice: str | None, arguments: str = "arguments"
) -> dict[str, Any]:
    """The JSON schema of one call's body: a bound tool's name and its ``arguments`` (Llama 3 names
    them ``parameters``) valid for it (objects that declare their properties take no others:
    see ``closed_objects``)."""
    return {
        "x-guidance": JSON_LAYOUT,  # the layout the prompt shows: '{"name": "add", "arguments": ...}'
        "anyOf": [
            {
                "type": "object",
                "properties": {"name": {"const": t["name"]}, arguments: closed_objects(t["parameters"])},
                "required": ["name", arguments],
                "additionalProperties": False,
            }
            for t in _chosen(tools, tool_choice)
        ],
    }


def _chosen(tools: tuple[dict[str, Any], ...], tool_choice: str | None) -> list[dict[str, Any]]:
    return [t for t in tools if tool_choice in (None, "any") or t["name"] == tool_choice]


def _json_calls(
    tools: tuple[dict[str, Any], ...], tool_choice: str | None, tool_format: str, markers: dict[str, int]
) -> str:
    """Lark rules ``call`` (one call) and ``calls`` (one or more) for the JSON-bodied formats."""
    if tool_format == "mistral":  # [TOOL_CALLS] and a list: one item for a single call
        body = call_schema(tools, tool_choice)
        one = {"type": "array", "items": body, "minItems": 1, "maxItems": 1, "x-guidance": JSON_LAYOUT}
        many = {k: v for k, v in one.items() if k != "maxItems"}
        marker = _literal(MISTRAL_MARKER, markers)
        return f"call: {marker} %json {json.dumps(one)}\ncalls: {marker} %json {json.dumps(many)}\n"
    if tool_format == "llama3_json":  # bare objects, "; " between parallel calls
        body = json.dumps(call_schema(tools, tool_choice, "parameters"))
        return f'calls: call ("; " call)*\ncall: %json {body}\n'
    body = json.dumps(call_schema(tools, tool_choice))  # hermes: newline between blocks
    tags = f"{json.dumps(CALL_OPEN)} body {json.dumps(CALL_CLOSE)}"
    if markers:  # <tool_call> and </tool_call> as the tokenizer's own tokens
        tags = f'{_literal("<tool_call>", markers)} "\\n" body "\\n" {_literal("</tool_call>", markers)}'
    return f'calls: call ("\\n" call)*\ncall: {tags}\nbody: %json {body}\n'


def _literal(text: str, markers: dict[str, int]) -> str:
    """``text`` in a Lark rule: the token that holds it, when the tokenizer has one, else the text."""
    return f"<[{markers[text]}]>" if text in markers else json.dumps(text)


def _pythonic_calls(tools: tuple[dict[str, Any], ...], tool_choice: str | None) -> str:
    """Lark rules ``call``/``calls`` for ``[f(a=1, b="x")]``: keyword arguments in the schema's order,
    required ones always, optional ones skippable; booleans as Python's True/False, other values
    as JSON literals (which Python reads alike)."""
    rules, names = [], []
    for i, tool in enumerate(_chosen(tools, tool_choice)):
        schema = closed_objects(tool["parameters"])
        required = set(schema.get("required", ()))
        props = list((schema.get("properties") or {}).items())
        for j, (key, sub) in enumerate(props):
            value = '"True" | "False"' if sub.get("type") == "boolean" else f"%json {json.dumps(sub)}"
            rules.append(f"t{i}_p{j}: {json.dumps(key + '=')} t{i}_v{j}\nt{i}_v{j}: {value}")
        # t{i}_f{j}: the arguments from j on, none written yet; t{i}_m{j}: some already written
        n = len(props)
        rules.append(f't{i}_f{n}: ""\nt{i}_m{n}: ""')
        for j in range(n - 1, -1, -1):
            need = props[j][0] in required
            rules.append(f"t{i}_f{j}: t{i}_p{j} t{i}_m{j + 1}" + ("" if need else f" | t{i}_f{j + 1}"))
            rules.append(f't{i}_m{j}: ", " t{i}_p{j} t{i}_m{j + 1}' + ("" if need else f" | t{i}_m{j + 1}"))
        rules.append(f't{i}: {json.dumps(tool["name"] + "(")} t{i}_f0 ")"')
        names.append(f"t{i}")
    one = " | ".join(names)
    head = f'call: "[" fcall "]"\ncalls: "[" fcall (", " fcall)* "]"\nfcall: {one}\n'
    return head + "\n".join(rules) + "\n"


def tool_call_grammar(
    tools: tuple[dict[str, Any], ...],
    tool_choice: str | None,
    tool_format: str = "hermes",
    marker_tokens: tuple[tuple[str, int], ...] = (),
) -> Grammar:
    """Calls in ``tool_format`` (models.tool_formats), several allowed (parallel calls), OR plain
    text that cannot open a call for ``tool_choice`` auto; the calls alone for "any"; exactly one
    call for a named tool. ``marker_tokens``: markers to ask for as one token each
    (``Policy.call_marker_tokens``)."""
    if tool_format == "pythonic":
        call = _pythonic_calls(tools, tool_choice)
    else:
        call = _json_calls(tools, tool_choice, tool_format, dict(marker_tokens))
    if tool_choice is None:
        source = f"start: calls | TEXT\n{call}TEXT: {_PLAIN_TEXT[tool_format]}\n"
        what = "a call to one of " + ", ".join(t["name"] for t in tools) + " or plain text"
    else:  # a named tool is one call to it (OpenAI's forced function); "any" may make several
        source = f"start: {'calls' if tool_choice == 'any' else 'call'}\n{call}"
        what = "a call to " + (tool_choice if tool_choice != "any" else "one of the bound tools")
    try:
        kind = "tool-call grammar" if tool_format == "hermes" else f"{tool_format} tool-call grammar"
        return Grammar(Grammar.lark(source).text, f"{kind} ({what})")
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
    calls = tool_call_grammar(
        contract.tools, contract.tool_choice, contract.tool_format, contract.marker_tokens
    )
    if answer is None or contract.tool_choice is not None:
        return calls
    forced = tool_call_grammar(
        contract.tools, "any", contract.tool_format
    )  # auto with a schema: a call or the JSON
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
