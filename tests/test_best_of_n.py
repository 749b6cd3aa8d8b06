"""Best-of-N as plain Python: picks the best, batches prompts, keeps work on reward failure."""

from __future__ import annotations

import pytest

from align_chains.engine import SamplingParams
from align_chains.errors import InvalidInputError, RewardError, UnknownStrategyError
from align_chains.rewards import CallableReward
from align_chains.strategies import BestOfN, get_strategy

PARAMS = SamplingParams(max_new_tokens=12, temperature=1.0, seed=0)


def test_returns_the_highest_reward_candidate(tiny_policy, length_reward):
    result = BestOfN(n=5).run("Tell me a story.", tiny_policy, length_reward, PARAMS)
    assert len(result.candidates) == 5
    rewards = [c.reward for c in result.candidates]
    assert result.reward == max(rewards)
    assert result.text == result.candidates[rewards.index(max(rewards))].text
    assert result.best_index == rewards.index(max(rewards))
    assert [row["chosen"] for row in result.trace].count(True) == 1
    assert result.counters.reward_calls == 1 and result.counters.reward_items == 5
    assert result.counters.prompt_tokens == result.prompt_tokens
    assert result.counters.generated_tokens >= sum(c.num_tokens for c in result.candidates)


def test_ties_go_to_the_first_candidate(tiny_policy):
    constant = CallableReward(lambda p, r: 1.0, name="constant")
    result = BestOfN(n=3).run("Hi", tiny_policy, constant, PARAMS)
    assert result.best_index == 0


def test_batch_of_prompts_runs_in_one_decode(tiny_policy, length_reward):
    prompts = [
        "Name a fruit.",
        [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}],
    ]
    results = BestOfN(n=3).run_batch(prompts, tiny_policy, length_reward, PARAMS)
    assert len(results) == 2
    for result in results:
        assert len(result.candidates) == 3
        assert result.counters.batch_size == 2
        assert result.counters.reward_calls == 1  # all six candidates scored in one call
    assert results[0].prompt_tokens != results[1].prompt_tokens
    assert results[0].counters.forward_passes == results[1].counters.forward_passes  # shared decode


def test_reward_receives_the_original_conversation(tiny_policy):
    seen = []

    def record(prompts, responses):
        seen.extend(prompts)
        return [0.0] * len(responses)

    BestOfN(n=2).run_batch(["first", "second"], tiny_policy, CallableReward(record, batched=True), PARAMS)
    assert seen == ["first", "first", "second", "second"]


def test_reward_failure_keeps_the_candidates(tiny_policy):
    def broken(prompt, response):
        raise RuntimeError("verifier offline")

    with pytest.raises(RewardError, match="verifier offline") as info:
        BestOfN(n=3).run("Hi", tiny_policy, CallableReward(broken), PARAMS)
    (partial,) = info.value.partial
    assert len(partial.candidates) == 3
    assert all(c.reward is None for c in partial.candidates)
    assert partial.flags == {"reward_failed": True}
    assert partial.counters.generated_tokens > 0


def test_bad_prompts_fail_before_any_model_work(tiny_policy, length_reward):
    calls = []
    hook = tiny_policy.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(InvalidInputError, match="empty"):
            BestOfN(n=2).run([], tiny_policy, length_reward, PARAMS)
        with pytest.raises(InvalidInputError, match="role 'narrator'"):
            BestOfN(n=2).run([{"role": "narrator", "content": "x"}], tiny_policy, length_reward, PARAMS)
        with pytest.raises(InvalidInputError, match="context"):
            BestOfN(n=2).run("word " * 600, tiny_policy, length_reward, PARAMS)
    finally:
        hook.remove()
    assert calls == []


def test_invalid_n_is_rejected():
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        BestOfN(n=0)


def test_strategy_registry():
    assert get_strategy("best-of-n") is BestOfN
    assert get_strategy("BoN") is BestOfN
    with pytest.raises(UnknownStrategyError, match="Available: adaptive-best-of-n, best-of-n"):
        get_strategy("beam-me-up")
