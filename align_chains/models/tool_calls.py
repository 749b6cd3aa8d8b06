"""Tool calls as text: how tools and calls reach a chat template, and how calls are read back.

Plain Python, no LangChain. A tool is an OpenAI-style function spec
(``{"name", "description", "parameters"}``).

Two ways to put tools in front of a policy:

* **native**: the chat template takes ``tools=`` itself (Qwen, Llama 3.1, Hermes, Mistral...).
  Assistant turns keep their ``tool_calls`` and tool results keep the ``tool`` role.
* **fallback**: the template knows nothing of tools (SmolLM2-135M's). A system message lists
  the tools and asks for calls written as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
  (the Hermes format many open models were trained on). Earlier calls are written back into
  the assistant turns the same way, and tool results become user turns wrapped in
  ``<tool_response>`` tags, so any template can render them.

The calls are asked for in the policy's family format (``write_calls``, ``call_example``;
detection and parsing per family in ``models.tool_formats``); Hermes is the default.

Each converted message carries both forms: its ``role``/``content`` are the fallback form,
which every consumer that ignores extra keys (reward models, judges) reads as plain text, and
its ``"native"`` key holds the messages a tool-aware template gets instead.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Message = dict[str, Any]

NATIVE = "native"  # key of the native form inside a converted message
TOOLS = "tools"  # key of the tool specs on the system message that introduces them

TOOL_FORMAT = "tool_format"  # key of the tool-call format on that system message
MISTRAL_MARKER = "[TOOL_CALLS]"
PYTHON_TAG = "<|python_tag|>"

_CALL_OPEN, _CALL_CLOSE = "<tool_call>", "</tool_call>"
_CALL_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_TEMPLATE_TAKES_TOOLS = re.compile(r"\btools\b")


def template_takes_tools(chat_template: str | None) -> bool:
    """Whether a Jinja chat template renders a ``tools`` variable."""
    return bool(chat_template) and bool(_TEMPLATE_TAKES_TOOLS.search(chat_template))


def tool_choice_instruction(tool_choice: str | None) -> str:
    """One sentence telling the model whether (and which) tool it must call."""
    if tool_choice in (None, "auto"):
        return "Call a tool only when it helps; otherwise answer in plain text."
    if tool_choice == "any":
        return "You must call one of the tools."
    return f'You must call the tool "{tool_choice}".'


def fallback_tool_prompt(
    tools: Sequence[Mapping[str, Any]], tool_choice: str | None, tool_format: str = "hermes"
) -> str:
    """The documented system prompt that offers ``tools`` to a template without tool support."""
    specs = "\n".join(json.dumps(dict(t), ensure_ascii=False) for t in tools)
    return (
        "You can call the following tools. Their signatures, as JSON schemas:\n"
        f"<tools>\n{specs}\n</tools>\n"
        "To call a tool, reply with exactly this, and nothing after it:\n"
        f"{call_example(tool_format)}\n"
        "Tool results come back in <tool_response> tags. "
        f"{tool_choice_instruction(tool_choice)}"
    )


def format_call(name: str, arguments: Mapping[str, Any]) -> str:
    """One call in the fallback text format."""
    body = json.dumps({"name": name, "arguments": dict(arguments)}, ensure_ascii=False)
    return f"{_CALL_OPEN}\n{body}\n{_CALL_CLOSE}"


# -- calls in each family's format (models.tool_formats reads them back) ----------------------
def python_literal(value: Any) -> str:
    """``value`` as a Python literal (JSON's spelling for strings, lists and dicts is Python's too)."""
    if value is True or value is False or value is None:
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(python_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {python_literal(v)}" for k, v in value.items()) + "}"
    return json.dumps(value, ensure_ascii=False)


def write_calls(tool_format: str, calls: Sequence[Mapping[str, Any]]) -> str:
    """Calls (``{"name", "args"}`` each) as ``tool_format`` writes them."""
    pairs = [(c["name"], dict(c.get("args") or {})) for c in calls]
    if tool_format == "llama3_json":
        return "; ".join(json.dumps({"name": n, "parameters": a}, ensure_ascii=False) for n, a in pairs)
    if tool_format == "mistral":
        body = [{"name": n, "arguments": a} for n, a in pairs]
        return MISTRAL_MARKER + json.dumps(body, ensure_ascii=False)
    if tool_format == "pythonic":
        written = (f"{n}({', '.join(f'{k}={python_literal(v)}' for k, v in a.items())})" for n, a in pairs)
        return "[" + ", ".join(written) + "]"
    return "\n".join(format_call(n, a) for n, a in pairs)


def call_example(tool_format: str) -> str:
    """How one call looks in ``tool_format``, for a system prompt."""
    if tool_format == "llama3_json":
        return '{"name": "<tool name>", "parameters": {<arguments as a JSON object>}}'
    if tool_format == "mistral":
        return f'{MISTRAL_MARKER}[{{"name": "<tool name>", "arguments": {{<arguments as a JSON object>}}}}]'
    if tool_format == "pythonic":
        return "[tool_name(argument=value, other=value)]"
    return '<tool_call>\n{"name": "<tool name>", "arguments": {<arguments as a JSON object>}}\n</tool_call>'


def system_with_tools(
    system: str | None,
    tools: Sequence[Mapping[str, Any]],
    tool_choice: str | None,
    tool_format: str = "hermes",
) -> Message:
    """The system message that introduces ``tools``, on top of the user's own system text; the
    calls are asked for in ``tool_format`` (the fallback prompt shows it; see models.tool_formats)."""
    fallback = fallback_tool_prompt(tools, tool_choice, tool_format)
    content = f"{system}\n\n{fallback}" if system else fallback
    native_text = system or ""
    if tool_choice not in (None, "auto"):
        native_text = f"{native_text}\n\n{tool_choice_instruction(tool_choice)}".strip()
    native = [{"role": "system", "content": native_text}] if native_text else []
    return {
        "role": "system",
        "content": content,
        TOOLS: [dict(t) for t in tools],
        TOOL_FORMAT: tool_format,
        NATIVE: native,
    }


def assistant_with_calls(content: str, calls: Sequence[Mapping[str, Any]]) -> Message:
    """An assistant turn that made tool calls (``{"name", "args", "id"}`` each)."""
    written = "\n".join(format_call(c["name"], c.get("args") or {}) for c in calls)
    native_calls = [
        {
            "id": c.get("id"),
            "type": "function",
            "function": {"name": c["name"], "arguments": dict(c.get("args") or {})},
        }
        for c in calls
    ]
    return {
        "role": "assistant",
        "content": f"{content}\n{written}".strip() if content else written,
        NATIVE: [{"role": "assistant", "content": content, "tool_calls": native_calls}],
    }


def tool_results(results: Sequence[Mapping[str, Any]]) -> Message:
    """Consecutive tool results (``{"content", "tool_call_id", "name"}`` each) as one user turn."""
    blocks = []
    for r in results:
        body = {"name": r.get("name"), "content": r["content"]}
        blocks.append(f"<tool_response>\n{json.dumps(body, ensure_ascii=False)}\n</tool_response>")
    native = [
        {
            "role": "tool",
            "content": r["content"],
            "tool_call_id": r.get("tool_call_id"),
            "name": r.get("name"),
        }
        for r in results
    ]
    return {"role": "user", "content": "\n".join(blocks), NATIVE: native}


def for_template(messages: Sequence[Mapping[str, Any]], native: bool) -> tuple[list[Message], list | None]:
    """The messages and ``tools`` argument to hand a chat template of either kind."""
    specs = next((m[TOOLS] for m in messages if TOOLS in m), None)
    tools = [{"type": "function", "function": dict(t)} for t in specs] if specs else None
    out: list[Message] = []
    for m in messages:
        if native and NATIVE in m:
            out.extend(dict(x) for x in m[NATIVE])
        else:
            out.append({k: v for k, v in m.items() if k not in (NATIVE, TOOLS, TOOL_FORMAT)})
    return out, (tools if native else None)


@dataclass
class ParsedCalls:
    """What a response says: its plain text, the calls that parse, and the ones that do not."""

    content: str
    calls: list[dict[str, Any]] = field(default_factory=list)  # {"name", "args", "id"}
    invalid: list[dict[str, Any]] = field(default_factory=list)  # {"name", "args", "id", "error"}

    @property
    def ok(self) -> bool:
        return not self.invalid


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def unreadable_call(raw: str, error: str) -> dict[str, Any]:
    """An invalid call for text that does not read as a call at all (its name if one shows)."""
    name = re.search(r'"name"\s*:\s*"([^"]*)"', raw)
    return {"name": name.group(1) if name else None, "args": raw, "id": _call_id(), "error": error}


def read_call_items(items: Sequence[Any], tool_names: Sequence[str]) -> tuple[list[dict], list[dict]]:
    """Decoded call objects (``{"name", "arguments"|"parameters"}``) as valid and invalid calls."""
    calls, invalid = [], []
    for item in items:
        text = json.dumps(item, ensure_ascii=False)
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            invalid.append({"name": None, "args": text, "id": _call_id(), "error": "no tool name"})
            continue
        args = item.get("arguments", item.get("parameters", {}))
        if isinstance(args, str):
            with contextlib.suppress(json.JSONDecodeError):
                args = json.loads(args) if args.strip() else {}
        error = None
        if item["name"] not in tool_names:
            error = f"no bound tool is named {item['name']!r} (bound: {', '.join(tool_names) or 'none'})"
        elif not isinstance(args, dict):
            error = "the arguments are not a JSON object"
        if error:
            invalid.append({"name": item["name"], "args": json.dumps(args), "id": _call_id(), "error": error})
        else:
            calls.append({"name": item["name"], "args": args, "id": _call_id()})
    return calls, invalid


def _read_call(raw: str, tool_names: Sequence[str]) -> tuple[list[dict], list[dict]]:
    """Calls in one ``<tool_call>`` body: a JSON object, or a list of them."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        return [], [unreadable_call(raw, f"not valid JSON: {exc.msg} at character {exc.pos}")]
    return read_call_items(value if isinstance(value, list) else [value], tool_names)


def parse_tool_calls(text: str, tool_names: Sequence[str]) -> ParsedCalls:
    """Read ``<tool_call>`` blocks (an unclosed last one included) out of a response.

    A response that is nothing but a JSON object with a ``name`` and ``arguments`` (the Llama
    3.1 style) counts as a call too. Malformed calls land in ``invalid``; this never raises.
    """
    blocks = list(_CALL_BLOCK.finditer(text))
    if not blocks:
        stripped = text.strip()
        if stripped.startswith("{") and '"name"' in stripped:
            calls, invalid = _read_call(stripped, tool_names)
            if calls or (invalid and invalid[0]["name"] is not None):
                return ParsedCalls("", calls, invalid)
        return ParsedCalls(text)
    calls: list[dict] = []
    invalid: list[dict] = []
    for block in blocks:
        good, bad = _read_call(block.group(1), tool_names)
        calls += good
        invalid += bad
    content = _CALL_BLOCK.sub("", text).strip()
    return ParsedCalls(content, calls, invalid)
