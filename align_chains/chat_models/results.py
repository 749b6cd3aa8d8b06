"""A strategy's result as LangChain output: the AIMessage, its usage and its response_metadata.

Public so that everything that serves a strategy's answer (the chat models, the OpenAI-compatible
server) reports it the same way.
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import invalid_tool_call, tool_call
from langchain_core.outputs import ChatGeneration, ChatResult

from align_chains.chat_models.output_contract import OutputContract
from align_chains.strategies.base import StrategyResult


def usage_metadata(result: StrategyResult) -> UsageMetadata:
    """Tokens of the prompt and of the chosen answer (the compute of the whole search is in
    ``response_metadata["compute"]``)."""
    return UsageMetadata(
        input_tokens=result.prompt_tokens,
        output_tokens=result.best.num_tokens,
        total_tokens=result.prompt_tokens + result.best.num_tokens,
    )


def response_metadata(result: StrategyResult, model_name: str) -> dict[str, Any]:
    """What the strategy did: its reward, the counted work, every candidate, and its own details."""
    return {
        "model_name": model_name,
        "model_provider": "align_chains",
        "strategy": result.strategy,
        "reward": result.reward,
        "finish_reason": result.finish_reason,
        "compute": result.counters.as_dict(),
        "candidates": [
            {"text": c.text, "reward": c.reward, "tokens": c.num_tokens, "finish_reason": c.finish_reason}
            for c in result.candidates
        ],
        **result.details,
        **result.flags,
    }


def build_message(
    result: StrategyResult, model_name: str, contract: OutputContract | None = None
) -> AIMessage:
    """The chosen answer as an AIMessage; with bound tools its calls are parsed into ``tool_calls``
    (malformed ones into ``invalid_tool_calls``) and ``finish_reason`` becomes ``"tool_calls"``."""
    usage = usage_metadata(result)
    metadata = response_metadata(result, model_name)
    if contract is None or not contract.tools:
        return AIMessage(content=result.text, usage_metadata=usage, response_metadata=metadata)
    parsed = contract.parse(result.text)
    if parsed.calls:
        metadata["finish_reason"] = "tool_calls"
    return AIMessage(
        content=parsed.content,
        tool_calls=[tool_call(name=c["name"], args=c["args"], id=c["id"]) for c in parsed.calls],
        invalid_tool_calls=[
            invalid_tool_call(name=c["name"], args=c["args"], id=c["id"], error=c["error"])
            for c in parsed.invalid
        ],
        usage_metadata=usage,
        response_metadata=metadata,
    )


def chat_result(
    result: StrategyResult, model_name: str, contract: OutputContract | None = None
) -> ChatResult:
    """``build_message`` wrapped as the ChatResult a BaseChatModel's ``_generate`` returns."""
    message = build_message(result, model_name, contract)
    return ChatResult(
        generations=[
            ChatGeneration(message=message, generation_info={"finish_reason": result.finish_reason})
        ],
        llm_output={"model_name": model_name},
    )
