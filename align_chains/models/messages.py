"""LangChain messages -> plain role/content dicts for the policy's chat template.

Tool calls in AI messages and ToolMessage results are converted with
``align_chains.models.tool_calls``, so they render on templates with and without tool support.
"""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from align_chains.errors import InvalidInputError
from align_chains.models.chat import Conversation, validate_conversation
from align_chains.models.tool_calls import assistant_with_calls, tool_results

_ROLES: dict[type[BaseMessage], str] = {
    SystemMessage: "system",
    HumanMessage: "user",
    AIMessage: "assistant",
    ToolMessage: "tool",
}


_CALL_BLOCKS = ("tool_use", "tool_call", "function_call", "server_tool_call")


def _text(message: BaseMessage, index: int) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif isinstance(message, AIMessage) and isinstance(block, dict) and block.get("type") in _CALL_BLOCKS:
            continue  # provider-format calls: the message's tool_calls carry them
        else:
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise InvalidInputError(
                f"Message {index} has a {kind!r} content block; local policies take text only. "
                "Pass text content, or describe the attachment in words."
            )
    return "".join(parts)


def to_conversation(messages: Sequence[BaseMessage]) -> Conversation:
    """Convert and validate before any model work."""
    conversation: Conversation = []
    pending_results: list[dict] = []  # consecutive ToolMessages become one turn
    for i, message in enumerate(messages):
        if isinstance(message, ToolMessage):
            pending_results.append(
                {"content": _text(message, i), "tool_call_id": message.tool_call_id, "name": message.name}
            )
            continue
        if pending_results:
            conversation.append(tool_results(pending_results))
            pending_results = []
        if isinstance(message, ChatMessage):
            role = message.role
        else:
            role = next((r for t, r in _ROLES.items() if isinstance(message, t)), None)
        if role is None:
            raise InvalidInputError(
                f"Message {i} is a {type(message).__name__}, which has no chat-template role: "
                "use SystemMessage, HumanMessage, AIMessage or ToolMessage."
            )
        if isinstance(message, AIMessage) and message.tool_calls:
            conversation.append(assistant_with_calls(_text(message, i), message.tool_calls))
        else:
            conversation.append({"role": role, "content": _text(message, i)})
    if pending_results:
        conversation.append(tool_results(pending_results))
    validate_conversation(conversation)
    return conversation
