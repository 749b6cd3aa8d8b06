"""LlamaIndex adapter: ``AlignedLLM``, a LlamaIndex LLM backed by any aligned chat model."""

from __future__ import annotations

from align_chains_llamaindex.llm import AlignedLLM, to_langchain

__all__ = ["AlignedLLM", "to_langchain"]
