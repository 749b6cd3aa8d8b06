"""``AlignedLLM``: a LlamaIndex LLM whose answers come from an align_chains strategy.

Chat messages keep their roles (the policy's own chat template formats them), completions are
one user turn. Every response carries the reward and the compute counters in
``additional_kwargs`` and the chat model's full ``response_metadata`` in ``raw``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from llama_index.core.base.llms.types import ChatMessage as LlamaChatMessage
from llama_index.core.base.llms.types import (
    ChatResponse,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.llms import CustomLLM
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from pydantic import ConfigDict, Field

from align_chains.chat_models import AlignedChatModel, chat_model_class


def to_langchain(messages: Sequence[LlamaChatMessage]) -> list[BaseMessage]:
    """LlamaIndex messages -> LangChain messages, keeping roles (unknown roles pass through by name)."""
    out: list[BaseMessage] = []
    for message in messages:
        text = message.content or ""
        role = message.role
        if role in (MessageRole.SYSTEM, MessageRole.DEVELOPER):
            out.append(SystemMessage(text))
        elif role == MessageRole.USER:
            out.append(HumanMessage(text))
        elif role in (MessageRole.ASSISTANT, MessageRole.CHATBOT, MessageRole.MODEL):
            out.append(AIMessage(text))
        elif role == MessageRole.TOOL:
            out.append(
                ToolMessage(text, tool_call_id=str(message.additional_kwargs.get("tool_call_id", "tool")))
            )
        else:
            out.append(ChatMessage(content=text, role=str(role.value)))
    return out


def _extras(metadata: dict[str, Any]) -> dict[str, Any]:
    return {
        "reward": metadata.get("reward"),
        "compute": metadata.get("compute"),
        "strategy": metadata.get("strategy"),
        "finish_reason": metadata.get("finish_reason"),
    }


class AlignedLLM(CustomLLM):
    """A LlamaIndex ``LLM`` backed by any aligned chat model of align_chains.

    >>> from align_chains import BestOfNChatModel
    >>> llm = AlignedLLM(chat_model=BestOfNChatModel(n=4))  # doctest: +SKIP
    >>> llm = AlignedLLM.from_strategy("sea", iterations=10)  # doctest: +SKIP
    >>> llm.complete("Give me one tip for better sleep.").additional_kwargs["reward"]  # doctest: +SKIP
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    chat_model: AlignedChatModel = Field(description="The aligned chat model that answers.")
    context_window: int = Field(
        default=2048, gt=0, description="The policy's context, for LlamaIndex's packing."
    )

    @classmethod
    def from_strategy(cls, strategy: str, *, context_window: int = 2048, **settings: Any) -> AlignedLLM:
        """Build from a registered strategy name and the chat model's settings (policy, reward, n, ...)."""
        return cls(chat_model=chat_model_class(strategy)(**settings), context_window=context_window)

    @classmethod
    def class_name(cls) -> str:
        return "align_chains_llm"

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=self.context_window,
            num_output=self.chat_model.max_tokens,
            is_chat_model=True,
            model_name=f"{self.chat_model.model_name} ({type(self.chat_model).__name__})",
        )

    # -- chat: roles reach the policy's chat template --------------------------------------------
    @llm_chat_callback()
    def chat(self, messages: Sequence[LlamaChatMessage], **kwargs: Any) -> ChatResponse:
        reply = self.chat_model.invoke(to_langchain(messages), **kwargs)
        meta = dict(reply.response_metadata)
        return ChatResponse(
            message=LlamaChatMessage(role=MessageRole.ASSISTANT, content=reply.content),
            raw=meta,
            additional_kwargs={**_extras(meta), "usage": dict(reply.usage_metadata or {})},
        )

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[LlamaChatMessage], **kwargs: Any) -> ChatResponseGen:
        chunks = self.chat_model.stream(to_langchain(messages), **kwargs)

        def gen() -> ChatResponseGen:
            text = ""
            for chunk in chunks:
                text += chunk.content
                meta = dict(chunk.response_metadata or {})
                yield ChatResponse(
                    message=LlamaChatMessage(role=MessageRole.ASSISTANT, content=text),
                    delta=chunk.content,
                    raw=meta or None,
                    additional_kwargs=_extras(meta) if meta.get("compute") else {},
                )

        return gen()

    # -- completion: the prompt is one user turn ----------------------------------------------------
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        response = self.chat([LlamaChatMessage(role=MessageRole.USER, content=prompt)], **kwargs)
        return CompletionResponse(
            text=response.message.content or "",
            raw=response.raw,
            additional_kwargs=response.additional_kwargs,
        )

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        stream = self.stream_chat([LlamaChatMessage(role=MessageRole.USER, content=prompt)], **kwargs)

        def gen() -> CompletionResponseGen:
            for response in stream:
                yield CompletionResponse(
                    text=response.message.content or "",
                    delta=response.delta,
                    raw=response.raw,
                    additional_kwargs=response.additional_kwargs,
                )

        return gen()
