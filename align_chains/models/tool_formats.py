"""Tool calls in each model family's own format: which family a template is, how its calls are
read back, and how a history carries them (``tool_calls.write_calls`` writes them).

Plain Python, no LangChain. Four families, as vLLM's tool parsers name them:

* ``hermes`` (Qwen 2.5/3, Hermes, SmolLM3): ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``
  per call. The default, and the format of the system-prompt fallback for templates without tools.
* ``llama3_json`` (Llama 3.1/3.2/3.3): a bare JSON object ``{"name": ..., "parameters": {...}}``
  (the ``<|python_tag|>`` prefix of built-in tools is accepted when reading); several calls are
  separated by ``; ``.
* ``mistral`` (Mistral, Mixtral, Nemo): ``[TOOL_CALLS]`` then a JSON list of
  ``{"name", "arguments"}``. Its templates want 9-character alphanumeric call ids.
* ``pythonic`` (Llama 3.2/4 pythonic templates): a Python list of calls, ``[f(a=1, b="x")]``.
  Values are Python literals; JSON's ``true``/``false``/``null`` are read too.

``detect_tool_format(chat_template)`` picks the family from the template's own markers; the
grammar each family's calls are forced with lives in ``chat_models.constraints``.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from align_chains.models.tool_calls import (
    MISTRAL_MARKER,
    NATIVE,
    PYTHON_TAG,
    TOOL_FORMAT,
    Message,
    ParsedCalls,
    for_template,
    parse_tool_calls,
    read_call_items,
    unreadable_call,
    write_calls,
)

TOOL_FORMATS = ("hermes", "llama3_json", "mistral", "pythonic")
DEFAULT_TOOL_FORMAT = "hermes"

# (format, markers that name it), checked in this order: a pythonic Llama template also says
# "ipython", and a Hermes-on-Llama template also says "parameters"
_DETECTION: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("mistral", (MISTRAL_MARKER,)),
    ("pythonic", ("[func_name1(", "python list of", "pythonic")),
    ("hermes", ("<tool_call>",)),
    ("llama3_json", ('"parameters"', PYTHON_TAG, "ipython")),
)
_IDENTIFIER = re.compile(r"\[\s*[A-Za-z_][\w.]*\s*\(")


def detect_tool_format(chat_template: str | None) -> str:
    """The tool-call family a chat template was written for (``hermes`` when nothing says)."""
    for name, markers in _DETECTION:
        if chat_template and any(m in chat_template for m in markers):
            return name
    return DEFAULT_TOOL_FORMAT


def call_markers(tool_format: str) -> tuple[str, ...]:
    """The fixed strings around a call in ``tool_format`` that tokenizers often hold as one token
    (Mistral's ``[TOOL_CALLS]``, a special token; Qwen's ``<tool_call>`` tags, added tokens)."""
    return {"mistral": (MISTRAL_MARKER,), "hermes": ("<tool_call>", "</tool_call>")}.get(tool_format, ())


def native_call_id(call_id: str | None, tool_format: str) -> str | None:
    """The call id a family's template accepts: Mistral's want 9 alphanumeric characters, so
    other ids are mapped (deterministically, so a call and its result keep the same one)."""
    if tool_format != "mistral" or call_id is None:
        return call_id
    if len(call_id) == 9 and call_id.isalnum():
        return call_id
    return hashlib.sha256(call_id.encode()).hexdigest()[:9]


# -- reading ---------------------------------------------------------------------------------------
def parse_calls(tool_format: str, text: str, tool_names: Sequence[str]) -> ParsedCalls:
    """The calls in a response written in ``tool_format``; malformed ones land in ``invalid``.
    Never raises: text that is not a call is the answer's content."""
    if tool_format == "llama3_json":
        return _parse_json_objects(text, tool_names)
    if tool_format == "mistral":
        return _parse_mistral(text, tool_names)
    if tool_format == "pythonic":
        return _parse_pythonic(text, tool_names)
    return parse_tool_calls(text, tool_names)


def _parse_json_objects(text: str, tool_names: Sequence[str]) -> ParsedCalls:
    """Llama 3: the whole answer is one or more JSON objects (``; `` or whitespace between)."""
    body = text.strip().removeprefix(PYTHON_TAG).strip()
    if not body.startswith("{") or '"name"' not in body:
        return ParsedCalls(text)
    decoder, items, at = json.JSONDecoder(), [], 0
    while at < len(body):
        try:
            item, at = decoder.raw_decode(body, at)
        except json.JSONDecodeError as exc:
            error = f"not valid JSON: {exc.msg} at character {exc.pos}"
            return ParsedCalls("", [], [unreadable_call(body, error)])
        items.append(item)
        while at < len(body) and body[at] in "; \n\t":
            at += 1
    calls, invalid = read_call_items(items, tool_names)
    return ParsedCalls("", calls, invalid)


def _parse_mistral(text: str, tool_names: Sequence[str]) -> ParsedCalls:
    """Mistral: ``[TOOL_CALLS]`` and a JSON list (the marker may be missing when a tokenizer drops
    special tokens on decoding: then an answer that is a JSON list of named objects counts)."""
    head, marker, tail = text.partition(MISTRAL_MARKER)
    if not marker:
        head, tail = "", text.strip()
        if not re.match(r'\[\s*\{\s*"name"', tail):
            return ParsedCalls(text)
    try:
        value, _ = json.JSONDecoder().raw_decode(tail.strip())
    except json.JSONDecodeError as exc:
        return ParsedCalls(head.strip(), [], [unreadable_call(tail, f"not valid JSON: {exc.msg}")])
    calls, invalid = read_call_items(value if isinstance(value, list) else [value], tool_names)
    return ParsedCalls(head.strip(), calls, invalid)


_JSON_NAMES = {"true": True, "false": False, "null": None}


def _literal(node: ast.expr) -> Any:
    """A Python literal (JSON's true/false/null included) from its syntax tree."""
    if isinstance(node, ast.Name) and node.id in _JSON_NAMES:
        return _JSON_NAMES[node.id]
    if isinstance(node, ast.List | ast.Tuple):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        pairs = zip(node.keys, node.values, strict=True)
        return {_literal(k): _literal(v) for k, v in pairs if k is not None}
    return ast.literal_eval(node)


def _parse_pythonic(text: str, tool_names: Sequence[str]) -> ParsedCalls:
    """Pythonic: the answer is a Python list of calls with keyword arguments."""
    body = text.strip().removeprefix(PYTHON_TAG).strip()
    if not _IDENTIFIER.match(body):
        return ParsedCalls(text)
    try:
        tree = ast.parse(body, mode="eval").body
        if not isinstance(tree, ast.List) or not all(isinstance(c, ast.Call) for c in tree.elts):
            raise ValueError("not a list of calls")
        items = []
        for call in tree.elts:
            if not isinstance(call.func, ast.Name | ast.Attribute) or call.args:
                raise ValueError("a call needs a plain name and keyword arguments only")
            name = call.func.id if isinstance(call.func, ast.Name) else ast.unparse(call.func)
            items.append({"name": name, "arguments": {k.arg: _literal(k.value) for k in call.keywords}})
    except (SyntaxError, ValueError, TypeError) as exc:
        return ParsedCalls("", [], [unreadable_call(body, f"not a Python list of calls: {exc}")])
    calls, invalid = read_call_items(items, tool_names)
    return ParsedCalls("", calls, invalid)


# -- the history -------------------------------------------------------------------------------------
def template_messages(
    messages: Sequence[Mapping[str, Any]], native: bool, default_format: str = DEFAULT_TOOL_FORMAT
) -> tuple[list[Message], list | None]:
    """``tool_calls.for_template`` in the conversation's tool format (the one its tools were bound
    with, else ``default_format``): a native template gets call ids it accepts, and a template
    without tools gets earlier calls written back in the format the model is asked to write."""
    tool_format = next((m[TOOL_FORMAT] for m in messages if TOOL_FORMAT in m), default_format)
    if tool_format != DEFAULT_TOOL_FORMAT:
        messages = [_in_format(m, tool_format, native) for m in messages]
    return for_template(messages, native)


def _in_format(message: Mapping[str, Any], tool_format: str, native: bool) -> Mapping[str, Any]:
    if NATIVE not in message:
        return message
    if native:
        return {**message, NATIVE: [_native_ids(m, tool_format) for m in message[NATIVE]]}
    turn = message[NATIVE][0] if message["role"] == "assistant" else {}
    functions = [c["function"] for c in turn.get("tool_calls") or ()]
    calls = [{"name": f["name"], "args": f["arguments"]} for f in functions]
    if not calls:
        return message
    written = write_calls(tool_format, calls)
    return {**message, "content": f"{turn['content']}\n{written}" if turn["content"] else written}


def _native_ids(message: Mapping[str, Any], tool_format: str) -> dict[str, Any]:
    out = dict(message)
    if "tool_call_id" in out:
        out["tool_call_id"] = native_call_id(out["tool_call_id"], tool_format)
    if out.get("tool_calls"):
        out["tool_calls"] = [{**c, "id": native_call_id(c.get("id"), tool_format)} for c in out["tool_calls"]]
    return out
