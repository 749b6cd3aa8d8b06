"""Admission control: every request's cost is estimated and refused (400, naming the setting
and the limit) before anything runs; prompts longer than the context never queue."""

from __future__ import annotations

import pytest
from align_chains_server.admission import COST_MODELS, CostLimits, OverBudget, admit, estimate
from align_chains_server.schemas import ChatCompletionRequest
from align_chains_server.service import DEFAULT_LIMITS, RequestError, ServedModel

from align_chains.chat_models import CHAT_MODELS
from align_chains.rewards import CallableReward
from align_chains.testing import tiny_policy

HELLO = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def loaded():
    return tiny_policy(), CallableReward(lambda prompt, response: float(len(response)), name="length")


def served_for(strategy: str, loaded, **kwargs) -> ServedModel:
    served = ServedModel(strategy=strategy, policy_spec="unused", **kwargs)
    served._policy, served._reward = loaded  # what load() would set, without loading from disk
    return served


def plan(served: ServedModel, **body):
    return served.plan(ChatCompletionRequest.model_validate({"messages": HELLO, **body}))


def test_every_servable_strategy_has_a_cost_model_and_defaults_are_admitted(loaded):
    assert set(COST_MODELS) == set(CHAT_MODELS)
    for strategy in CHAT_MODELS:
        planned = plan(served_for(strategy, loaded))
        assert planned.cost.decode_tokens > 0 and planned.cost.forward_passes > 0


def test_the_issues_darwin_request_is_refused_before_it_runs(loaded):
    served = served_for("darwin", loaded)
    with pytest.raises(RequestError) as info:
        plan(served, cycles=100000)
    assert info.value.status == 400 and info.value.param == "cycles"
    assert f"limit of {DEFAULT_LIMITS['cycles']:g}" in info.value.message


def test_settings_each_within_bounds_but_costly_together_are_refused_naming_one(loaded):
    served = served_for("darwin", loaded)
    with pytest.raises(RequestError) as info:
        plan(served, align_chains={"cycles": 20, "n": 64, "k": 3}, max_tokens=400)
    error = info.value
    assert error.status == 400 and error.code == "request_too_expensive"
    assert error.param in ("align_chains.cycles", "align_chains.n", "max_tokens")
    assert "tokens to decode" in error.message and "65,536" in error.message
    assert "can be at most" in error.message
    # the suggested value really fits
    name = error.param.split(".")[-1]
    largest = int(error.message.split("can be at most ")[1].split(".")[0])
    settings = {"cycles": 20, "n": 64, "k": 3, "max_tokens": 400, name: largest}
    admitted = plan(served, align_chains={k: v for k, v in settings.items() if k != "max_tokens"},
                    max_tokens=settings["max_tokens"])  # fmt: skip
    assert admitted.cost.decode_tokens <= CostLimits().decode_tokens


@pytest.mark.parametrize(
    ("strategy", "settings", "param"),
    [
        ("sea", {"iterations": 200, "chains": 16, "max_tokens": 400}, None),
        ("value-guided", {"beams": 16, "samples": 16, "max_tokens": 400}, None),
        ("best-of-n", {"n": 64, "max_tokens": 400, "seed": 1}, None),
        ("reward-guided", {"k": 1000, "max_tokens": 400}, None),
    ],
)
def test_each_strategys_multiplying_settings_are_costed(strategy, settings, param, loaded):
    served = served_for(strategy, loaded, cost_limits=CostLimits(decode_tokens=4096, forward_passes=2000))
    body = {"align_chains": {k: v for k, v in settings.items() if k not in ("max_tokens", "seed")}}
    body.update({k: v for k, v in settings.items() if k in ("max_tokens", "seed")})
    with pytest.raises(RequestError) as info:
        plan(served, **body)
    assert info.value.status == 400 and "over this server's limit" in info.value.message


def test_the_cost_model_counts_what_the_strategy_does(loaded):
    """The estimate is an upper bound of what a run really costs (and not far off for Best-of-N)."""
    served = served_for("best-of-n", loaded)
    planned = plan(served, align_chains={"n": 3}, max_tokens=6, temperature=1.0)
    (result,) = planned.model.run_strategy([planned.conversation])
    real = result.counters
    assert real.generated_tokens <= planned.cost.decode_tokens == 18
    assert real.forward_passes <= planned.cost.forward_passes == 7
    assert real.reward_items <= planned.cost.reward_items == 3


def test_admit_names_a_sent_setting_first():
    settings = {"n": 8, "max_tokens": 1000, "allocation": "uniform", "budget": None}
    with pytest.raises(OverBudget) as info:
        admit("best-of-n", settings, CostLimits(decode_tokens=4000), sent={"max_tokens"})
    assert info.value.param == "max_tokens" and "at most 500" in info.value.message
    assert estimate("best-of-n", {**settings, "max_tokens": 500}).decode_tokens == 4000


def test_a_prompt_longer_than_the_context_is_refused_before_queueing(loaded):
    served = served_for("best-of-n", loaded)
    long = [{"role": "user", "content": "word " * 2000}]
    with pytest.raises(RequestError) as info:
        served.plan(ChatCompletionRequest.model_validate({"messages": long}))
    assert info.value.status == 400 and info.value.param == "messages"
    assert info.value.code == "context_length_exceeded" and "context" in info.value.message


def test_clients_cannot_make_the_server_load_models(loaded):
    served = served_for("value-guided", loaded)
    with pytest.raises(RequestError) as info:
        plan(served, align_chains={"tuned": "/etc/passwd"})
    assert info.value.status == 400 and info.value.param == "align_chains.tuned"
    assert "-o tuned=" in info.value.message


def test_batch_keys_group_equal_settings_and_never_seeded_or_adaptive_requests(loaded):
    served = served_for("best-of-n", loaded)
    a, b = plan(served, max_tokens=4), plan(served, max_tokens=4)
    assert a.batch_key is not None and a.batch_key == b.batch_key
    assert plan(served, max_tokens=5).batch_key != a.batch_key
    assert plan(served, max_tokens=4, stop=["x"]).batch_key != a.batch_key
    assert plan(served, max_tokens=4, seed=3).batch_key is None
    assert plan(served, align_chains={"allocation": "adaptive", "budget": 4}).batch_key is None
