"""AlignedLLM: LlamaIndex's LLM interface over an aligned chat model, on tiny models."""

from __future__ import annotations

import pytest
from align_chains_llamaindex import AlignedLLM, to_langchain
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.llms import LLM
from llama_index.core.prompts import PromptTemplate

from align_chains import BestOfNChatModel
from align_chains.errors import InvalidInputError


@pytest.fixture
def llm(llamaindex_policy, length_reward_fn):
    chat_model = BestOfNChatModel(
        policy=llamaindex_policy, reward=length_reward_fn, n=3, max_tokens=6, seed=0
    )
    return AlignedLLM(chat_model=chat_model)


def test_complete_returns_the_best_candidate_with_reward_and_compute(llm):
    assert isinstance(llm, LLM)
    response = llm.complete("Say hello.")
    extra = response.additional_kwargs
    assert response.text
    assert extra["strategy"] == "best-of-n"
    assert (
        extra["reward"] == float(len(response.text)) == max(c["reward"] for c in response.raw["candidates"])
    )
    assert extra["compute"]["reward_items"] == 3
    assert extra["usage"]["output_token_details"]["answer"] <= 6
    assert extra["usage"]["output_tokens"] == extra["compute"]["generated_tokens"]


def test_chat_keeps_roles_and_matches_the_chat_model(llm):
    messages = [
        ChatMessage(role=MessageRole.SYSTEM, content="Be brief."),
        ChatMessage(role=MessageRole.USER, content="Hi."),
        ChatMessage(role=MessageRole.ASSISTANT, content="Hello."),
        ChatMessage(role=MessageRole.USER, content="Tell me a fact."),
    ]
    assert [m.type for m in to_langchain(messages)] == ["system", "human", "ai", "human"]
    response = llm.chat(messages)
    assert response.message.role == MessageRole.ASSISTANT
    direct = llm.chat_model.invoke(to_langchain(messages))  # seeded: the same answer
    assert response.message.content == direct.content


def test_streams_concatenate_to_the_answer_and_end_with_the_reward(llm):
    whole = llm.complete("Say hello.").text
    parts = list(llm.stream_complete("Say hello."))
    assert len(parts) > 2
    assert "".join(p.delta for p in parts) == whole == parts[-1].text
    assert parts[-1].additional_kwargs["reward"] == float(len(whole))
    chat_parts = list(llm.stream_chat([ChatMessage(role=MessageRole.USER, content="Say hello.")]))
    assert chat_parts[-1].message.content == whole


async def test_async_and_per_call_settings(llm):
    response = await llm.acomplete("Say hello.", n=5)
    assert len(response.raw["candidates"]) == 5
    with pytest.raises(InvalidInputError, match="beams"):
        llm.complete("Say hello.", beams=2)


def test_predict_with_a_prompt_template_and_from_strategy(llm, llamaindex_policy, length_reward_fn):
    answer = llm.predict(PromptTemplate("Write one word about {topic}."), topic="sleep")
    assert isinstance(answer, str) and answer
    built = AlignedLLM.from_strategy(
        "best-of-n", policy=llamaindex_policy, reward=length_reward_fn, n=2, max_tokens=4
    )
    assert built.metadata.is_chat_model and built.metadata.num_output == 4
    assert len(built.complete("Hi").raw["candidates"]) == 2
    with pytest.raises(InvalidInputError, match="nope"):
        AlignedLLM.from_strategy("nope")
