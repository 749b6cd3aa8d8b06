"""Rewards as LangChain Runnables: invoke, one-call batch, inside LCEL chains, clear errors."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.language_models import FakeListChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda, RunnableParallel, RunnablePassthrough

from align_chains import CallableReward, InvalidInputError, RewardModel


class CountingReward(RewardModel):
    """Scores by response length and records every batched call it receives."""

    name = "counting"

    def __init__(self) -> None:
        self.calls: list[tuple[list, list[str]]] = []

    def _score(self, prompts, responses):
        self.calls.append((prompts, responses))
        return [float(len(r)) for r in responses]


def test_invoke_scores_one_pair() -> None:
    reward = CountingReward()
    assert reward.invoke({"prompt": "hi", "response": "hello"}) == 5.0
    assert reward.calls == [([[{"role": "user", "content": "hi"}]], ["hello"])]


def test_batch_is_one_score_call() -> None:
    reward = CountingReward()
    pairs = [{"prompt": f"q{i}", "response": "x" * i} for i in range(5)]
    assert reward.batch(pairs) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert len(reward.calls) == 1 and len(reward.calls[0][1]) == 5


def test_abatch_is_one_score_call() -> None:
    reward = CountingReward()
    pairs = [{"prompt": "q", "response": "ab"}, {"prompt": "q", "response": "abc"}]
    assert asyncio.run(reward.abatch(pairs)) == [2.0, 3.0]
    assert asyncio.run(reward.ainvoke(pairs[0])) == 2.0
    assert len(reward.calls) == 2


def test_messages_and_prompt_values_are_accepted() -> None:
    reward = CountingReward()
    prompt = ChatPromptTemplate.from_messages([("system", "be brief"), ("human", "{q}")]).invoke({"q": "hi"})
    assert reward.invoke({"prompt": prompt, "response": AIMessage(content="abcd")}) == 4.0
    assert reward.invoke({"prompt": [HumanMessage(content="hi")], "response": "ab"}) == 2.0
    assert reward.calls[0][0] == [
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    ]


def test_reward_inside_an_lcel_chain() -> None:
    """A chat model that is not align_chains' answers; the reward scores its answer in the chain."""
    reward = CountingReward()
    model = FakeListChatModel(responses=["short", "a longer answer"])
    chain = RunnableParallel(prompt=RunnablePassthrough(), response=model) | reward
    assert chain.batch(["q1", "q2"], config={"max_concurrency": 1}) == [5.0, 15.0]
    assert len(reward.calls) == 1  # the chain's batch reaches the reward's batch

    # filtering: keep answers that score above a threshold
    keep = RunnablePassthrough.assign(score=reward) | RunnableLambda(lambda d: d["score"] > 6)
    assert keep.invoke({"prompt": "q", "response": "tiny"}) is False


def test_weighted_sums_still_compose_and_run() -> None:
    length = CountingReward()
    bonus = CallableReward(lambda p, r: 1.0 if "please" in r else 0.0, name="polite")
    mixed = 0.5 * length + 2 * bonus
    assert mixed.batch([{"prompt": "q", "response": "please"}, {"prompt": "q", "response": "no"}]) == [
        5.0,
        1.0,
    ]


@pytest.mark.parametrize(
    ("item", "match"),
    [
        ({"prompt": "q"}, r"no \['response'\] key"),
        ({"response": "a"}, r"no \['prompt'\] key"),
        ("just text", "pass a dict"),
        ({"prompt": "q", "response": 3}, "'response' must be a string"),
        ({"prompt": 3, "response": "a"}, "'prompt' must be a string"),
    ],
)
def test_malformed_input_is_a_clear_error(item, match) -> None:
    reward = CountingReward()
    with pytest.raises(InvalidInputError, match=match):
        reward.invoke(item)
    assert reward.calls == []


def test_malformed_item_fails_before_any_scoring() -> None:
    reward = CountingReward()
    with pytest.raises(InvalidInputError, match="input 1"):
        reward.batch([{"prompt": "q", "response": "a"}, {"prompt": "q"}])
    assert reward.calls == []
    out = reward.batch([{"prompt": "q", "response": "a"}, {"prompt": "q"}], return_exceptions=True)
    assert out[0] == 1.0 and isinstance(out[1], InvalidInputError)
    assert len(reward.calls) == 1
