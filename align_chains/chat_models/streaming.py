"""Streaming an aligned answer: text pieces at token boundaries, live or after the pick.

A strategy that commits tokens as it decodes (``streams = True``: ARGS, value-guided decoding)
runs in a worker thread and its text is yielded as it is committed (``live_pieces``); any other
strategy's chosen answer is split at its token boundaries once it is picked (``text_pieces``).
``generation_chunks`` turns either into the chunks ``BaseChatModel._stream`` yields.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.messages import AIMessageChunk
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGenerationChunk

from align_chains.chat_models.output_contract import OutputContract
from align_chains.chat_models.results import build_message
from align_chains.models.policy import Policy
from align_chains.strategies.base import OnCommit, StrategyResult

logger = logging.getLogger(__name__)

"""``on_commit(prompt_index, token_ids)``: called by a streaming strategy as it commits tokens."""


class StreamClosed(Exception):
    """Raised inside a streaming strategy when its consumer stopped reading."""


def text_pieces(policy: Policy, token_ids: list[int], text: str) -> Iterator[str]:
    """Split ``text`` at token boundaries; the pieces concatenate to exactly ``text``."""
    emitted = 0
    for end in range(1, len(token_ids) + 1):
        prefix = policy.decode(token_ids[:end])[: len(text)]
        if len(prefix) > emitted and not prefix.endswith("\ufffd"):
            yield text[emitted : len(prefix)]
            emitted = len(prefix)
    if emitted < len(text):
        yield text[emitted:]


def live_pieces(
    run: Callable[[OnCommit], StrategyResult], policy: Policy, stops: list[str]
) -> tuple[Iterator[str], list[StrategyResult]]:
    """Text pieces as ``run(on_commit)`` commits tokens in a worker thread; its result lands in the list.

    Text that may still turn out to be a stop string is held back, so no stop string is ever sent.
    When the consumer stops reading, the strategy's next commit raises ``StreamClosed``.
    """
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    closed = threading.Event()
    holder: list[StrategyResult] = []

    def on_commit(_prompt: int, token_ids: list[int]) -> None:
        if closed.is_set():
            raise StreamClosed
        events.put(("tokens", token_ids))

    def work() -> None:
        try:
            events.put(("done", run(on_commit)))
        except BaseException as exc:  # handed to the consuming thread
            events.put(("error", exc))

    # a stop string may only be recognised a few characters late: hold that much text back
    hold = max((len(s) for s in stops), default=0)

    def pieces() -> Iterator[str]:
        worker = threading.Thread(target=work, name="align-chains-stream", daemon=True)
        worker.start()
        ids: list[int] = []
        emitted = ""
        try:
            while True:
                kind, value = events.get()
                if kind == "error":
                    raise value
                if kind == "done":
                    holder.append(value)
                    break
                ids.extend(value)
                text = policy.decode(ids)
                cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
                ready = cut if cut >= 0 else len(text) - hold  # the answer ends before a stop
                if text.endswith("\ufffd") or ready <= len(emitted):
                    continue
                yield text[len(emitted) : ready]
                emitted = text[:ready]
        finally:
            closed.set()
        final = holder[0].text
        if final.startswith(emitted):
            if len(final) > len(emitted):
                yield final[len(emitted) :]
        else:  # never expected: committed tokens always prefix the answer
            logger.warning("streamed text is not a prefix of the final answer; sending the rest as is")
            yield final[len(emitted) :]

    return pieces(), holder


def generation_chunks(
    pieces: Iterable[str],
    holder: list[StrategyResult],
    model_name: str,
    contract: OutputContract | None,
    run_manager: CallbackManagerForLLMRun | None,
) -> Iterator[ChatGenerationChunk]:
    """The text pieces, then the answer's tool calls (if any), then a ``chunk_position="last"`` chunk
    with the usage and response_metadata. ``holder`` has the result once ``pieces`` is exhausted."""
    for piece in pieces:
        chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
        if run_manager:
            run_manager.on_llm_new_token(piece, chunk=chunk)
        yield chunk
    result = holder[0]
    final = build_message(result, model_name, contract)
    calls = [
        tool_call_chunk(name=c["name"], args=json.dumps(c["args"]), id=c["id"], index=i)
        for i, c in enumerate(final.tool_calls)
    ]
    if calls:
        chunk = ChatGenerationChunk(message=AIMessageChunk(content="", tool_call_chunks=calls))
        if run_manager:
            run_manager.on_llm_new_token("", chunk=chunk)
        yield chunk
    yield ChatGenerationChunk(
        message=AIMessageChunk(
            content="",
            usage_metadata=final.usage_metadata,
            response_metadata=final.response_metadata,
            chunk_position="last",
        ),
        generation_info={"finish_reason": result.finish_reason},
    )
