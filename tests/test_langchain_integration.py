"""langchain-tests' standard INTEGRATION suite for every aligned chat model, on tiny random models.

Each class runs the real strategy end to end (decoding, scoring, streaming, batching, callbacks)
on a 2-layer random Llama with SmolLM2's tokenizer and chat template, with small settings so
the whole file stays fast. The policy and rewards are built once per session and shared.
"""

from __future__ import annotations

import functools
import inspect
from functools import lru_cache
from typing import Any

import pytest
from langchain_core.language_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage
from langchain_tests.integration_tests import ChatModelIntegrationTests

from align_chains import (
    BestOfNChatModel,
    DarwinChatModel,
    RerankChatModel,
    RewardGuidedChatModel,
    SEAChatModel,
    ValueGuidedChatModel,
)
from align_chains.models.policy import Policy
from align_chains.rewards import CallableReward, ClassifierReward, RewardModel
from align_chains.testing import smol_tokenizer, tiny_llama_config, tiny_policy


@lru_cache(maxsize=1)
def _policy() -> Policy:
    return tiny_policy(seed=0)


@lru_cache(maxsize=1)
def _classifier_reward() -> RewardModel:
    """A random one-label sequence classifier: incremental for ARGS, differentiable for SEA."""
    import torch
    from transformers import LlamaForSequenceClassification

    tokenizer = smol_tokenizer()
    torch.manual_seed(1)
    model = LlamaForSequenceClassification(tiny_llama_config(tokenizer, num_labels=1))
    return ClassifierReward(model, tokenizer, name="tiny-rm")


_NEEDS_A_COMPETENT_POLICY = (
    "needs a policy that chooses well: the right argument values (input=3), a final answer after "
    "the tool result, or closing its JSON strings within max_tokens=8. Decoding is grammar-"
    "constrained, so the format is right by construction, but a random tiny policy writes strings "
    "that never end (see tests/test_grammar.py, tests/test_e2e_grammar.py, tests/test_agent.py)"
)


def _expected_to_fail(name: str) -> Any:
    """The standard test itself, run and marked xfail (the suite's rule for a known failure)."""
    base = getattr(ChatModelIntegrationTests, name)
    if inspect.iscoroutinefunction(base):

        @functools.wraps(base)
        async def test(self: Any, *args: Any, **kwargs: Any) -> None:
            await base(self, *args, **kwargs)
    else:

        @functools.wraps(base)
        def test(self: Any, *args: Any, **kwargs: Any) -> None:
            base(self, *args, **kwargs)

    return pytest.mark.xfail(reason=_NEEDS_A_COMPETENT_POLICY, strict=False)(test)


LENGTH = CallableReward(lambda prompt, response: float(len(response)), name="length")


class _AlignedIntegrationTests(ChatModelIntegrationTests):
    """Capability flags shared by every aligned chat model (local, text-only policies)."""

    # bind_tools, tool_choice and with_structured_output (json_schema, function_calling,
    # json_mode) are on the base class: AlignedChatModel, via chat_models/output_contract.py.
    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    # Local policies are text-only causal LMs; non-text content blocks are rejected with an
    # InvalidInputError before any model work (align_chains/models/messages.py).
    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def supports_image_urls(self) -> bool:
        return False

    @property
    def supports_pdf_inputs(self) -> bool:
        return False

    @property
    def supports_audio_inputs(self) -> bool:
        return False

    @property
    def supports_video_inputs(self) -> bool:
        return False

    @property
    def supports_image_tool_message(self) -> bool:
        return False

    @property
    def supports_pdf_tool_message(self) -> bool:
        return False

    @property
    def supports_anthropic_inputs(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    # Plain counts only: no audio, reasoning or cache-read/creation token breakdown is reported.
    @property
    def supported_usage_metadata_details(self) -> dict[str, list[Any]]:
        return {"invoke": [], "stream": []}

    # test_stream_time benchmarks replayed HTTP cassettes (VCR); a local policy makes no HTTP
    # calls, and our speed is measured by the scripts under benchmarks/ instead.
    @property
    def enable_vcr_tests(self) -> bool:
        return False

    # The policy is loaded once per chat model (its weights, KV cache layout and tokenizer); a
    # per-call `model=` would mean loading another model mid-call, which we do not do.
    @property
    def supports_model_override(self) -> bool:
        return False

    # These tests pass only if the model chooses well: the right argument VALUES, a final
    # answer after a tool result, or strings short enough that its JSON closes within the
    # suite's max_tokens=8. Decoding is grammar-constrained (docs/structured_output.md), so a
    # call or JSON object is well-formed as far as it gets, but a 2-layer random policy writes
    # strings that never end, and no grammar makes it pick input=3. The same behaviours are
    # tested under the grammar in tests/test_grammar.py (every row valid on the random policy)
    # and tests/test_e2e_grammar.py (SmolLM2), and on a policy
    # taught in the test session: tests/test_tool_calling.py (calls, forced tool_choice,
    # malformed calls, every strategy, structured output for pydantic/TypedDict/JSON schema,
    # include_raw, json ranking) and tests/test_agent.py (a create_agent loop with a real tool).
    # They still run here, marked xfail, so a policy that passes them shows as XPASS.
    test_tool_calling = _expected_to_fail("test_tool_calling")
    test_tool_calling_async = _expected_to_fail("test_tool_calling_async")
    test_bind_runnables_as_tools = _expected_to_fail("test_bind_runnables_as_tools")
    test_tool_choice = _expected_to_fail("test_tool_choice")
    test_tool_calling_with_no_arguments = _expected_to_fail("test_tool_calling_with_no_arguments")
    test_unicode_tool_call_integration = _expected_to_fail("test_unicode_tool_call_integration")
    test_agent_loop = _expected_to_fail("test_agent_loop")
    test_structured_output = _expected_to_fail("test_structured_output")
    test_structured_output_async = _expected_to_fail("test_structured_output_async")
    test_structured_output_pydantic_2_v1 = _expected_to_fail("test_structured_output_pydantic_2_v1")
    test_structured_output_optional_param = _expected_to_fail("test_structured_output_optional_param")
    test_json_mode = _expected_to_fail("test_json_mode")


class TestBestOfNChatModelIntegration(_AlignedIntegrationTests):
    @property
    def chat_model_class(self) -> type[BestOfNChatModel]:
        return BestOfNChatModel

    @property
    def chat_model_params(self) -> dict:
        return {"model": _policy(), "reward": LENGTH, "n": 3, "max_tokens": 8, "seed": 0}


class TestAdaptiveBestOfNChatModelIntegration(TestBestOfNChatModelIntegration):
    @property
    def chat_model_params(self) -> dict:
        return {
            "model": _policy(),
            "reward": LENGTH,
            "allocation": "adaptive",
            "budget": 3,
            "max_tokens": 8,
            "seed": 0,
        }


class TestRewardGuidedChatModelIntegration(_AlignedIntegrationTests):
    @property
    def chat_model_class(self) -> type[RewardGuidedChatModel]:
        return RewardGuidedChatModel

    @property
    def chat_model_params(self) -> dict:
        return {"model": _policy(), "reward": _classifier_reward(), "k": 3, "max_tokens": 8, "seed": 0}


class TestValueGuidedChatModelIntegration(_AlignedIntegrationTests):
    @property
    def chat_model_class(self) -> type[ValueGuidedChatModel]:
        return ValueGuidedChatModel

    @property
    def chat_model_params(self) -> dict:
        return {
            "model": _policy(),
            "reward": LENGTH,
            "principle": "Answer concisely and politely.",
            "chunk_tokens": 4,
            "max_tokens": 8,
            "seed": 0,
        }


class TestDarwinChatModelIntegration(_AlignedIntegrationTests):
    @property
    def chat_model_class(self) -> type[DarwinChatModel]:
        return DarwinChatModel

    @property
    def chat_model_params(self) -> dict:
        return {
            "model": _policy(),
            "reward": LENGTH,
            "n": 2,
            "k": 1,
            "m": 4,
            "cycles": 1,
            "mutation_max_tokens": 16,
            "max_tokens": 8,
            "seed": 0,
        }


class TestSEAChatModelIntegration(_AlignedIntegrationTests):
    @property
    def chat_model_class(self) -> type[SEAChatModel]:
        return SEAChatModel

    @property
    def chat_model_params(self) -> dict:
        return {
            "model": _policy(),
            "reward": _classifier_reward(),
            "chains": 2,
            "iterations": 2,
            "max_tokens": 8,
            "seed": 0,
        }


class TestRerankChatModelIntegration(_AlignedIntegrationTests):
    """Reranking another chat model: Best-of-2 over plain samples of the tiny policy.

    The wrapped model is unseeded so its samples differ, as a served model's would.
    """

    # The wrapper does not bind tools or schemas: bind them on the wrapped chat model.
    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return False

    @property
    def chat_model_class(self) -> type[RerankChatModel]:
        return RerankChatModel

    @property
    def chat_model_params(self) -> dict:
        inner = BestOfNChatModel(model=_policy(), reward=LENGTH, n=1, max_tokens=8)  # n=1: one plain sample
        return {"chat_model": inner, "reward": LENGTH, "n": 2, "retry_wait": 0.0}


def _served_answer(text: str) -> AIMessage:
    """What a served model (ChatOpenAI on vLLM, say) returns: text, usage and its model name."""
    usage = {"input_tokens": 5, "output_tokens": len(text.split()), "total_tokens": 5 + len(text.split())}
    return AIMessage(
        content=text,
        usage_metadata=usage,
        response_metadata={"model_name": "served-llm", "finish_reason": "stop"},
    )


class TestRerankFakeChatModelIntegration(TestRerankChatModelIntegration):
    """Reranking a chat model that is not align_chains' (langchain_core's scripted fake)."""

    @property
    def chat_model_params(self) -> dict:
        answers = ["A short one.", "A somewhat longer answer.", "Héllo, wörld: ünïcode ✓ 你好."]
        inner = FakeMessagesListChatModel(responses=[_served_answer(a) for a in answers])
        # the fake's cursor is not thread-safe, so its calls go one at a time
        return {"chat_model": inner, "reward": LENGTH, "n": 3, "max_concurrency": 1, "retry_wait": 0.0}
