"""Chat messages as plain dicts, validated before any model work."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from align_chains.errors import InvalidInputError

Message = dict[str, Any]
Conversation = list[Message]

KNOWN_ROLES = ("system", "user", "assistant", "tool")
#: message key: a final assistant message with it set is continued, not answered (``Policy.render``)
CONTINUE_FINAL = "continue_final_message"


def as_conversation(prompt: str | Sequence[Mapping[str, Any]]) -> Conversation:
    """Accept a plain string (one user turn) or a list of {'role', 'content'} dicts."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, Mapping) or not isinstance(prompt, Sequence):
        raise InvalidInputError(
            f"A prompt must be a string or a list of role/content messages; got "
            f"{type(prompt).__name__}. A single conversation passed where a list of prompts is "
            "expected must be wrapped: [[{'role': 'user', 'content': ...}]]."
        )
    if not all(isinstance(m, Mapping) for m in prompt):
        raise InvalidInputError("Each message must be a dict with 'role' and 'content' keys.")
    messages = [dict(m) for m in prompt]
    validate_conversation(messages)
    return messages


def validate_conversation(messages: Sequence[Mapping[str, Any]]) -> None:
    """Raise InvalidInputError for an empty list, an unknown role or non-text content."""
    if not messages:
        raise InvalidInputError(
            "The message list is empty: pass at least one user message, e.g. "
            "[{'role': 'user', 'content': 'Hello'}]."
        )
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in KNOWN_ROLES:
            raise InvalidInputError(
                f"Message {i} has role {role!r}, which chat templates cannot take: use one of "
                f"{', '.join(KNOWN_ROLES)} (in LangChain: SystemMessage, HumanMessage, AIMessage, "
                "ToolMessage)."
            )
        if not isinstance(message.get("content"), str):
            raise InvalidInputError(
                f"Message {i} ({role}) has content of type {type(message.get('content')).__name__}; "
                "only text content is supported by local policies."
            )


def last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The most recent user turn: what embedding and rule rewards compare a response to."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return str(message.get("content", ""))
    return str(messages[-1].get("content", "")) if messages else ""
