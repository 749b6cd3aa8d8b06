"""The answer of a search over a wrapped model: the chosen message with how it was chosen.

Shared by every search: the usage summed over the calls paid for, the ``ChatResult`` around the
chosen message, the error when nothing succeeded, and the one stream chunk the answer goes out
as. The choice itself is ``strategies/candidates.py``'s ``best_index`` (ties: the earliest), as
for the local strategies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

from align_chains.chat_models.rerank.calls import Outcome
from align_chains.errors import SamplingFailedError

# what the one stream chunk carries over from the chosen message
_CHUNK_FIELDS = (
    "content",
    "additional_kwargs",
    "tool_calls",
    "invalid_tool_calls",
    "usage_metadata",
    "response_metadata",
)


def summed_usage(usages: Sequence[UsageMetadata | None]) -> UsageMetadata | None:
    """Tokens paid for across the successful calls (None if the wrapped model reports none)."""
    reported = [u for u in usages if u]
    if not reported:
        return None
    keys = ("input_tokens", "output_tokens", "total_tokens")
    return UsageMetadata(**{key: sum(u.get(key, 0) for u in reported) for key in keys})  # type: ignore[typeddict-item]


def describe(exc: BaseException) -> str:
    """An error as recorded in metadata and traces: ``"TypeName: message"``."""
    return f"{type(exc).__name__}: {exc}"


def successes(outcomes: Sequence[Outcome]) -> list[AIMessage]:
    """The successful calls' messages, in order."""
    return [o for o in outcomes if isinstance(o, AIMessage)]


def all_failed(
    outcomes: Sequence[Outcome], calls: int, model_name: str, attempts: int
) -> SamplingFailedError:
    """The error for a prompt none of whose samples succeeded, carrying every sample's error."""
    errors = [o for o in outcomes if not isinstance(o, AIMessage)]
    return SamplingFailedError(
        f"All {len(outcomes)} samples from {model_name} failed after {calls} calls "
        f"({attempts} tries each on transient errors); first error: {describe(errors[0])}",
        errors,
    )


def chat_result(chosen: AIMessage, update: dict[str, Any]) -> ChatResult:
    """The ``ChatResult`` holding a copy of the chosen message with ``update`` applied."""
    return ChatResult(generations=[ChatGeneration(message=chosen.model_copy(update=update))])


def chosen_chunk(message: BaseMessage) -> ChatGenerationChunk:
    """The chosen message as ONE stream chunk, marked last, with its usage and metadata.

    One chunk, because aggregating several re-parses tool-call chunks as partial JSON, which
    would turn an invalid tool call with truncated arguments into a valid call with ``{}``.
    """
    if not isinstance(message, AIMessage):  # a search always answers with the chosen AIMessage
        raise TypeError(f"expected the chosen AIMessage, got a {type(message).__name__}")
    carried = {key: getattr(message, key) for key in _CHUNK_FIELDS}
    return ChatGenerationChunk(message=AIMessageChunk(**carried, chunk_position="last"))
