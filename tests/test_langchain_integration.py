"""langchain-tests' standard INTEGRATION suite for every aligned chat model, on tiny random models.

Each class runs the real strategy end to end (decoding, scoring, streaming, batching, callbacks)
on a 2-layer random Llama with SmolLM2's tokenizer and chat template, with small settings so
the whole file stays fast. The policy and rewards are built once per session and shared.
"""

from __future__ import annotations

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


# --- known failures: xfail(strict=True), each with why, applied per test by _known_failures below ---
# Tools and schemas are decoded under a grammar (docs/structured_output.md), so every call and JSON
# object is well-formed as far as it gets. What no grammar gives a random policy is the room to
# finish (the suite's max_tokens=8) or a good choice. These fail by construction, every run; a
# change that made one pass shows as a failed XPASS(strict), to be looked at. The same behaviours
# pass on policies that can choose: tests/test_tool_calling.py and tests/test_agent.py (a policy
# taught in the test session), tests/test_e2e_grammar.py (SmolLM2).
_CALL_CUT = (
    "a tool call is at least ~25 tokens ('<tool_call>\\n{\"name\": ...'), so max_tokens=8 always "
    "cuts it and no call is read"
)
_JOKE_CUT = (
    "the Joke schema needs 'setup' and 'punchline'; its shortest complete object is 10 tokens, so "
    "max_tokens=8 always cuts it before 'punchline' and the pydantic model does not validate"
)
CONSTRAINED_FAILURES = {
    "test_tool_calling": f"{_CALL_CUT}; beyond that it asserts args == {{'input': 3}}, a value the "
    "policy must choose (the grammar only makes it an integer)",
    "test_tool_calling_async": f"{_CALL_CUT}; beyond that it asserts args == {{'input': 3}}, a value the "
    "policy must choose",
    "test_tool_calling_with_no_arguments": f"{_CALL_CUT}; with room (64 tokens) the random policy "
    "writes a second parallel call (tool_choice='any' allows several) and the test wants exactly one",
    "test_tool_choice": f"{_CALL_CUT}; with 32 tokens it passes for seed 0, but only because the random "
    "integer happens to end: not by construction",
    "test_bind_runnables_as_tools": f"{_CALL_CUT}; beyond that 'answer_style' is a free string the "
    "random policy rarely closes",
    "test_unicode_tool_call_integration": f"{_CALL_CUT}; beyond that it asserts the name contains "
    "'你好', which the policy must copy from the prompt",
    "test_agent_loop": f"{_CALL_CUT}; beyond that tool_choice is 'auto', so the policy must choose to call",
    "test_structured_output[pydantic]": _JOKE_CUT,
    "test_structured_output_async[pydantic]": _JOKE_CUT,
    "test_structured_output_pydantic_2_v1": _JOKE_CUT,
    "test_json_mode": "json_mode allows any JSON object, so the keys 'setup' and 'punchline' are the "
    "policy's choice; and max_tokens=8 always cuts the object",
}
"""Known failures of the grammar-constrained classes, by test name (or name[parameter])."""

_SEA_UNCONSTRAINED = (
    "SEA is not grammar-constrained (its relaxed optimisation cannot keep to a grammar: "
    "constrain=False by design), so the call or JSON must come from the random policy itself"
)
SEA_FAILURES = {
    **CONSTRAINED_FAILURES,
    **{
        name: _SEA_UNCONSTRAINED
        for name in (
            "test_structured_output",
            "test_structured_output_async",
            "test_structured_output_optional_param",
        )
    },
}
"""SEA's known failures: the constrained classes' and every structured-output test."""


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

    known_failures = CONSTRAINED_FAILURES

    @pytest.fixture(autouse=True)
    def _known_failures(self, request: pytest.FixtureRequest) -> None:
        """Mark this class's known failures xfail(strict=True) with their reason; they still run."""
        node = request.node
        reason = self.known_failures.get(node.name) or self.known_failures.get(node.originalname)
        if reason:
            node.add_marker(pytest.mark.xfail(reason=reason, strict=True))


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
    known_failures = SEA_FAILURES

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
