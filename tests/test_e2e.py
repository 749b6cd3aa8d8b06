"""End to end on the real embedded defaults: SmolLM2-135M-Instruct and MiniLM."""

from __future__ import annotations

import math

import pytest
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from align_chains import BestOfNChatModel, load_policy
from align_chains.cli import main
from align_chains.models import EMBEDDED_POLICY

pytestmark = pytest.mark.e2e

PROMPT = "Give me three tips for better sleep."


@pytest.fixture(scope="module")
def model() -> BestOfNChatModel:
    return BestOfNChatModel(n=4, max_tokens=48, seed=0)


def test_best_of_n_on_embedded_defaults(model):
    message = model.invoke(PROMPT)
    meta = message.response_metadata
    assert message.content.strip()
    assert meta["model_name"] == EMBEDDED_POLICY
    rewards = [c["reward"] for c in meta["candidates"]]
    assert len(rewards) == 4 and all(math.isfinite(r) for r in rewards)
    assert meta["reward"] == max(rewards)
    compute = meta["compute"]
    # the prompt is prefilled once for all four candidates
    assert compute["prompt_tokens"] == message.usage_metadata["input_tokens"]
    assert compute["reward_calls"] == 1 and compute["reward_items"] == 4
    assert compute["forward_passes"] <= 48
    # a relevant answer: MiniLM relevance of the chosen sleep advice is clearly positive
    assert meta["reward"] > 0.3


def test_embedded_policy_is_loaded_once_and_shared(model):
    policy, _ = model.load()
    assert load_policy(EMBEDDED_POLICY) is policy
    other = BestOfNChatModel(policy=policy, n=2, max_tokens=8)
    assert other.load()[0] is policy


def test_chain_on_embedded_defaults(model):
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Answer in one sentence."), ("human", "{question}")]
    )
    answer = (prompt | model.bind(max_tokens=24) | StrOutputParser()).invoke(
        {"question": "What is the capital of France?"}
    )
    assert isinstance(answer, str) and answer.strip()


def test_cli_prints_answer_reward_and_compute(capsys):
    assert main(["chat", PROMPT, "--n", "2", "--max-tokens", "24", "--seed", "0", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "reward: " in out and "compute: " in out and "forward passes" in out


def test_adaptive_batch_on_embedded_defaults(model):
    policy, reward = model.load()
    adaptive = BestOfNChatModel(
        policy=policy, reward=reward, allocation="adaptive", budget=4, max_tokens=24, seed=0
    )
    prompts = ["Name a fruit.", "Give me three tips for better sleep.", "What is 2 + 2?"]
    answers = adaptive.batch(prompts)
    samples = [a.response_metadata["samples"] for a in answers]
    assert sum(samples) == 4 * len(prompts)  # the budget is spent exactly
    assert all(s >= 3 for s in samples)  # every prompt keeps its exploration samples
    for a in answers:
        meta = a.response_metadata
        assert meta["reward"] == max(c["reward"] for c in meta["candidates"])
        assert meta["compute"]["reward_calls"] <= 2


def test_darwin_on_embedded_defaults(model):
    from align_chains import DarwinChatModel

    policy, reward = model.load()
    darwin = DarwinChatModel(
        policy=policy, reward=reward, n=3, k=2, m=16, cycles=1, mutation_max_tokens=96, max_tokens=32, seed=0
    )
    meta = darwin.invoke(PROMPT).response_metadata
    rewards = [c["reward"] for c in meta["candidates"]]
    assert len(rewards) == 1 + 3 and all(math.isfinite(r) for r in rewards)
    assert meta["reward"] == max(rewards)
    assert meta["cycles_completed"] == 1 and meta["archive"][0]["instruction"] == PROMPT
    # s0, the mutation list, then one candidate decode with a reward call every 16 tokens
    assert meta["compute"]["reward_calls"] >= 2
    assert meta["compute"]["generated_tokens"] <= 32 + 96 + 3 * 32
