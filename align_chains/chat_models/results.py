"""A strategy's result as LangChain output: the AIMessage, its usage and its response_metadata.

Public so that everything that serves a strategy's answer (the chat models, the OpenAI-compatible
server) reports it the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import invalid_tool_call, tool_call
from langchain_core.outputs import ChatGeneration, ChatResult

from align_chains.chat_models.output_contract import OutputContract
from align_chains.strategies.base import StrategyResult


@dataclass(frozen=True)
class TokenUsage:
    """What a request spent, in tokens (the convention: docs/getting_started.md#usage-every-token-spent).

    ``output`` is every token the policy generated for the request: the chosen ``answer`` and
    the ``search`` (other candidates, rejected rows, mutations, end-of-turn tokens). ``input``
    is every prompt token the policy prefilled: the rendered ``prompt`` and the ``extra_prefill``
    beyond it (DARWIN's mutation prompts, re-prefills). ``reward_model`` counts the tokens the
    reward model read, where it reports them (classifier and judge rewards); it is another
    model's work, so it is a detail and in neither total.
    """

    prompt: int
    extra_prefill: int
    answer: int
    search: int
    reward_model: int

    @classmethod
    def of(cls, result: StrategyResult) -> TokenUsage:
        counters = result.counters
        answer = result.best.num_tokens
        return cls(
            prompt=result.prompt_tokens,
            extra_prefill=max(counters.prompt_tokens - result.prompt_tokens, 0),
            answer=answer,
            search=max(counters.generated_tokens - answer, 0),
            reward_model=counters.reward_tokens,
        )

    @property
    def input(self) -> int:
        return self.prompt + self.extra_prefill

    @property
    def output(self) -> int:
        return self.answer + self.search

    def openai(self) -> dict[str, Any]:
        """As OpenAI's ``usage``: search tokens are ``reasoning_tokens`` (generated, not returned)."""
        return {
            "prompt_tokens": self.input,
            "completion_tokens": self.output,
            "total_tokens": self.input + self.output,
            "prompt_tokens_details": {
                "cached_tokens": 0,
                "extra_prefill_tokens": self.extra_prefill,
                "reward_model_tokens": self.reward_model,
            },
            "completion_tokens_details": {"reasoning_tokens": self.search, "answer_tokens": self.answer},
        }


def usage_metadata(result: StrategyResult) -> UsageMetadata:
    """Every token the request spent (``TokenUsage``): search tokens are LangChain's ``reasoning``
    output tokens, the chosen answer's are ``answer``; ``input_token_details`` has the extra
    prefill and the reward model's tokens. The rest of the work is in ``response_metadata["compute"]``."""
    usage = TokenUsage.of(result)
    return UsageMetadata(
        input_tokens=usage.input,
        output_tokens=usage.output,
        total_tokens=usage.input + usage.output,
        input_token_details={"extra_prefill": usage.extra_prefill, "reward_model": usage.reward_model},  # type: ignore[typeddict-unknown-key]
        output_token_details={"reasoning": usage.search, "answer": usage.answer},  # type: ignore[typeddict-unknown-key]
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
