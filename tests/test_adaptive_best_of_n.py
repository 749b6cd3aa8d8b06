"""Prompt-adaptive Best-of-N: the allocation math, the strategy, and the chat-model switch."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from pydantic import ValidationError

from align_chains import AdaptiveBestOfN, BestOfNChatModel
from align_chains.engine import SamplingParams
from align_chains.errors import RewardError
from align_chains.rewards import CallableReward
from align_chains.strategies.allocation import (
    allocate,
    expected_max_curve,
    exploration_size,
    greedy_allocation,
)

PARAMS = SamplingParams(max_new_tokens=8, temperature=1.0, seed=0)


# -- allocation math ----------------------------------------------------------------------
def test_greedy_matches_the_hand_computed_optimum():
    # gains A: .5 .25 .125, gains B: .4 .2 .1; with 3 samples the best split is A=2, B=1:
    # (3,0)=.875  (2,1)=.75+.4=1.15  (1,2)=.5+.6=1.1  (0,3)=.7
    a = np.array([0.0, 0.5, 0.75, 0.875])
    b = np.array([0.0, 0.4, 0.6, 0.7])
    assert greedy_allocation([a, b], 3) == [2, 1]


def test_greedy_is_optimal_on_random_concave_curves():
    rng = np.random.default_rng(0)
    for _ in range(30):
        curves = [np.concatenate([[0.0], np.cumsum(np.sort(rng.random(6))[::-1])]) for _ in range(3)]
        extra = 5
        best = max(
            sum(c[a] for c, a in zip(curves, alloc, strict=True))
            for alloc in itertools.product(range(extra + 1), repeat=3)
            if sum(alloc) == extra
        )
        got = greedy_allocation(curves, extra)
        assert sum(got) == extra
        assert sum(c[a] for c, a in zip(curves, got, strict=True)) == pytest.approx(best)


def test_expected_max_curve_shape():
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=50)
    curve = expected_max_curve(rewards, horizon=20, draws=4000, rng=rng)
    assert curve[0] == rewards.max()
    assert np.all(np.diff(curve) >= 0)  # never decreases
    assert curve[-1] > curve[0]  # more samples can beat the best so far
    gains = np.diff(curve)
    assert gains[:5].mean() > gains[-5:].mean()  # diminishing returns


def test_kde_uses_scotts_rule():
    # one exploration point far above the rest: with h = sigma * d^(-1/5) the chance of beating
    # it is small but not zero, so the first gain is positive and smaller than the spread
    rewards = [0.0, 0.1, 0.2, 1.0]
    curve = expected_max_curve(rewards, horizon=1, draws=20000, rng=np.random.default_rng(1))
    assert 0 < curve[1] - curve[0] < 0.5


def test_zero_bandwidth_and_single_reward_give_flat_curves():
    assert np.all(expected_max_curve([0.3, 0.3, 0.3], 5) == 0.3)
    assert np.all(expected_max_curve([0.7], 5) == 0.7)


def test_the_prompt_with_spread_gets_the_extra_samples():
    explored = [[0.5, 0.5, 0.5], [0.0, 0.4, 0.9], [0.2, 0.2, 0.2]]
    extra = allocate(explored, budget=4, rng=np.random.default_rng(0))
    assert extra == [0, 3, 0]


def test_all_equal_rewards_share_the_budget_evenly():
    explored = [[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]]
    assert allocate(explored, budget=3) == [1, 1, 1]


def test_reward_ties_are_deterministic():
    explored = [[0.1, 0.9], [0.1, 0.9]]  # identical prompts: identical gains
    assert allocate(explored, budget=4, rng=np.random.default_rng(0)) == [2, 2]


def test_exploration_size_degenerate_cases():
    assert exploration_size(8, 0.75, 5) == 6
    assert exploration_size(2, 0.75, 5) == 1  # 1.5 rounds down: one sample left to allocate
    assert exploration_size(6, 0.75, 5) == 4
    assert exploration_size(8, 0.75, 1) == 8  # one prompt: uniform Best-of-B
    assert exploration_size(1, 0.75, 5) == 1  # no budget to explore then reallocate
    assert exploration_size(4, 1.0, 5) == 4  # d >= B: nothing left to allocate
    assert exploration_size(4, 0.01, 5) == 1  # at least one exploration sample
    assert allocate([[0.1, 0.2], [0.3, 0.4]], budget=2) == [0, 0]


# -- the strategy on a tiny model ------------------------------------------------------------
def _reward_varies_for(prompt_text: str) -> CallableReward:
    """Length reward on one prompt, constant elsewhere: only that prompt has spread."""
    return CallableReward(lambda p, r: float(len(r)) if p == prompt_text else 1.0, name="varies")


def test_budget_is_spent_exactly_and_goes_where_it_helps(tiny_policy):
    prompts = ["steady one", "vary", "steady two"]
    results = AdaptiveBestOfN(budget=4).run_batch(prompts, tiny_policy, _reward_varies_for("vary"), PARAMS)
    samples = [r.details["samples"] for r in results]
    assert sum(samples) == 4 * 3
    assert [r.details["exploration_samples"] for r in results] == [3, 3, 3]
    assert [r.details["extra_samples"] for r in results] == [0, 3, 0]
    for r in results:
        assert r.reward == max(c.reward for c in r.candidates)
        assert [row["stage"] for row in r.trace].count(1) == 3
        assert r.details["exploration_rewards"] == [c.reward for c in r.candidates[:3]]


def test_stage_two_reuses_the_prompt_caches(tiny_policy, length_reward):
    prompts = ["first prompt", "second, longer prompt here"]
    results = AdaptiveBestOfN(budget=4).run_batch(prompts, tiny_policy, length_reward, PARAMS)
    counters = results[0].counters
    lengths = [len(tiny_policy.render([{"role": "user", "content": p}])) for p in prompts]
    assert sum(r.prompt_tokens for r in results) == sum(lengths)
    # one prefill for both stages, then at most max_new_tokens - 1 fed tokens per stage
    assert counters.forward_passes <= 1 + 2 * (PARAMS.max_new_tokens - 1)
    assert counters.reward_calls == 2


def test_one_prompt_is_uniform_best_of_budget(tiny_policy, length_reward):
    (result,) = AdaptiveBestOfN(budget=5).run_batch(["only"], tiny_policy, length_reward, PARAMS)
    assert result.details["samples"] == 5 and result.details["extra_samples"] == 0
    assert result.counters.reward_calls == 1


def test_reward_failure_in_stage_two_keeps_stage_one(tiny_policy):
    calls = []

    def flaky(prompts, responses):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("judge went away")
        return [float(len(r)) for r in responses]

    with pytest.raises(RewardError, match="judge went away") as info:
        AdaptiveBestOfN(budget=4).run_batch(
            ["a", "b"], tiny_policy, CallableReward(flaky, batched=True), PARAMS
        )
    partial = info.value.partial
    assert [len(r.candidates) >= 3 for r in partial] == [True, True]


@pytest.mark.parametrize("bad", [{"budget": 0}, {"exploration": 0}, {"exploration": 1.5}, {"mc_draws": 1}])
def test_invalid_settings(bad):
    with pytest.raises(ValidationError):
        AdaptiveBestOfN(**bad)


# -- the chat model ----------------------------------------------------------------------
@pytest.fixture
def adaptive_chat(tiny_policy):
    return BestOfNChatModel(
        policy=tiny_policy,
        reward=_reward_varies_for("vary"),
        allocation="adaptive",
        budget=4,
        max_tokens=8,
        temperature=1.0,
        seed=0,
    )


def test_batch_uses_adaptive_allocation(adaptive_chat):
    outputs = adaptive_chat.batch(["steady", "vary", "also steady"])
    meta = [o.response_metadata for o in outputs]
    assert {m["strategy"] for m in meta} == {"adaptive-best-of-n"}
    assert [m["samples"] for m in meta] == [3, 6, 3]
    assert sum(len(m["candidates"]) for m in meta) == 12


async def test_abatch_uses_adaptive_allocation(adaptive_chat):
    outputs = await adaptive_chat.abatch(["steady", "vary", "also steady"])
    assert [o.response_metadata["samples"] for o in outputs] == [3, 6, 3]


def test_invoke_is_uniform_best_of_budget(adaptive_chat):
    meta = adaptive_chat.invoke("vary").response_metadata
    assert meta["samples"] == 4 and meta["extra_samples"] == 0


def test_budget_settings_are_validated():
    with pytest.raises(ValidationError, match="allocation='adaptive'"):
        BestOfNChatModel(budget=8)
    with pytest.raises(ValidationError):
        BestOfNChatModel(allocation="adaptive", budget=0)
    with pytest.raises(ValidationError):
        BestOfNChatModel(allocation="clever")
    assert BestOfNChatModel(allocation="adaptive", n=6).build_strategy().budget == 6
