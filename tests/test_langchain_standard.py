"""langchain-tests' standard unit suite for every aligned chat model."""

from __future__ import annotations

from langchain_tests.unit_tests import ChatModelUnitTests

from align_chains import (
    BestOfNChatModel,
    DarwinChatModel,
    RerankChatModel,
    RewardGuidedChatModel,
    SEAChatModel,
    ValueGuidedChatModel,
)


class TestBestOfNChatModelStandard(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[BestOfNChatModel]:
        return BestOfNChatModel

    @property
    def chat_model_params(self) -> dict:
        # construction is lazy: nothing loads in these tests
        return {"model": "smollm2-135m-instruct", "n": 2}

    # Truthful capability flags: bind_tools and with_structured_output are on the base class;
    # local text-only policies take no images, audio, video or PDFs.
    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False  # the policy is loaded once per chat model, not per call


class TestRewardGuidedChatModelStandard(TestBestOfNChatModelStandard):
    @property
    def chat_model_class(self) -> type[RewardGuidedChatModel]:
        return RewardGuidedChatModel

    @property
    def chat_model_params(self) -> dict:
        return {"model": "smollm2-135m-instruct", "k": 4}


class TestValueGuidedChatModelStandard(TestBestOfNChatModelStandard):
    @property
    def chat_model_class(self) -> type[ValueGuidedChatModel]:
        return ValueGuidedChatModel

    @property
    def chat_model_params(self) -> dict:
        return {"model": "smollm2-135m-instruct", "principle": "Answer concisely and politely."}


class TestSEAChatModelStandard(TestBestOfNChatModelStandard):
    @property
    def chat_model_class(self) -> type[SEAChatModel]:
        return SEAChatModel

    @property
    def chat_model_params(self) -> dict:
        return {"model": "smollm2-135m-instruct", "chains": 2, "iterations": 2}


class TestDarwinChatModelStandard(TestBestOfNChatModelStandard):
    @property
    def chat_model_class(self) -> type[DarwinChatModel]:
        return DarwinChatModel

    @property
    def chat_model_params(self) -> dict:
        return {"model": "smollm2-135m-instruct", "n": 3, "k": 2, "cycles": 1}


class TestRerankChatModelStandard(TestBestOfNChatModelStandard):
    @property
    def chat_model_class(self) -> type[RerankChatModel]:
        return RerankChatModel

    @property
    def chat_model_params(self) -> dict:
        # the wrapped chat model is as lazy as any aligned one: nothing loads in these tests
        return {"chat_model": BestOfNChatModel(model="smollm2-135m-instruct", n=2), "n": 2}

    # The wrapper does not bind tools or schemas: bind them on the wrapped chat model.
    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False
