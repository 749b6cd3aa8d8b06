"""Admission control: every request's cost is estimated and refused (400, naming the setting
and the limit) before anything runs; prompts longer than the context never queue."""

from __future__ import annotations

import pytest
from align_chains_server.admission import (
    AUTO_MEMORY_FRACTION,
    CostLimits,
    MemoryBudget,
    OverBudget,
    admit,
    parse_memory_size,
)
from align_chains_server.schemas import ChatCompletionRequest
from align_chains_server.service import DEFAULT_LIMITS, RequestError, ServedModel

from align_chains.chat_models import CHAT_MODELS
from align_chains.engine import SamplingParams
from align_chains.memory import MemoryEstimate, estimate_memory
from align_chains.rewards import CallableReward
from align_chains.strategies import STRATEGIES, BestOfN
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
    declared = {cls.name for name in CHAT_MODELS for cls in CHAT_MODELS[name].strategy_classes()}
    assert set(CHAT_MODELS) <= declared
    assert all(STRATEGIES[name].declares_cost() for name in declared)
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
    strategy = BestOfN(n=8)
    with pytest.raises(OverBudget) as info:
        admit(
            strategy, SamplingParams(max_new_tokens=1000), CostLimits(decode_tokens=4000), sent={"max_tokens"}
        )
    assert info.value.param == "max_tokens" and "at most 500" in info.value.message
    assert strategy.cost(SamplingParams(max_new_tokens=500)).decode_tokens == 4000


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


# -- peak memory (align_chains.memory.estimate_memory) against --max-request-memory ----------------
def _estimate(loaded, n: int, max_tokens: int) -> MemoryEstimate:
    policy, reward = loaded
    prompt = len(policy.render(HELLO))
    return estimate_memory(BestOfN(n=n), policy, reward, SamplingParams(max_new_tokens=max_tokens), prompt)


def test_a_request_over_the_memory_budget_is_refused_naming_the_setting_and_the_fix(loaded):
    budget = _estimate(loaded, n=8, max_tokens=16).total  # Best-of-8 just fits
    served = served_for("best-of-n", loaded, memory_budget=budget)
    admitted = plan(served, align_chains={"n": 8}, max_tokens=16)
    assert admitted.memory is not None and admitted.memory.total == budget
    with pytest.raises(RequestError) as info:
        plan(served, align_chains={"n": 64}, max_tokens=16)
    error = info.value
    assert error.status == 400 and error.code == "memory_budget_exceeded"
    assert error.param == "align_chains.n"
    assert "at its peak" in error.message and "--max-request-memory" in error.message
    assert "n can be at most 8" in error.message  # the largest that fits, found on the estimator
    assert _estimate(loaded, n=9, max_tokens=16).total > budget


def test_the_memory_refusal_blames_a_setting_that_drives_memory(loaded):
    """SEA's [chains, L, V] tensors grow with chains and max_tokens, not with iterations."""
    served = served_for("sea", loaded, memory_budget=64 * 2**20)
    with pytest.raises(RequestError) as info:
        plan(served, align_chains={"iterations": 3, "chains": 8}, max_tokens=200)
    assert info.value.code == "memory_budget_exceeded" and "SEA backward" in info.value.message
    assert info.value.param in ("align_chains.chains", "max_tokens")


def test_memory_refusal_is_an_openai_shaped_400_before_anything_runs(loaded):
    from align_chains_server.app import create_app
    from fastapi.testclient import TestClient

    served = served_for("best-of-n", loaded, memory_budget=_estimate(loaded, n=4, max_tokens=8).total)
    with TestClient(create_app(served)) as client:
        body = {"messages": HELLO, "align_chains": {"n": 4}}
        ok = client.post("/v1/chat/completions", json={**body, "max_tokens": 8})
        big = client.post("/v1/chat/completions", json={**body, "max_tokens": 64})
        limits = client.get("/v1/models").json()["data"][0]["align_chains"]["limits"]
        served_count = client.get("/health").json()["served"]
    assert ok.status_code == 200, ok.text
    assert big.status_code == 400
    error = big.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["code"] == "memory_budget_exceeded" and error["param"] == "max_tokens"
    assert "max_tokens can be at most" in error["message"]
    assert served_count == 1  # only the request that fit ran
    assert limits["memory"] == {"bytes": served.memory_budget, "source": "set by --max-request-memory"}


def test_the_default_memory_budget_comes_from_the_device_and_sizes_parse():
    from align_chains.memory import device_memory

    total, what = device_memory("cpu")
    auto = MemoryBudget.resolve(None, "cpu")
    assert auto.bytes == int(total * AUTO_MEMORY_FRACTION) and what in auto.source
    assert MemoryBudget.resolve(2**30, "cpu") == MemoryBudget(2**30, "set by --max-request-memory")
    assert parse_memory_size("auto") is None
    assert parse_memory_size("24GiB") == 24 * 2**30 and parse_memory_size("512 MiB") == 512 * 2**20
    assert parse_memory_size("8GB") == 8 * 10**9 and parse_memory_size("1e6") == 10**6
    for bad in ("lots", "-1GiB", "0", "12XB"):
        with pytest.raises(ValueError, match="memory"):
            parse_memory_size(bad)


def test_serve_refuses_a_bad_memory_size_before_loading(capsys):
    from align_chains import cli

    with pytest.raises(SystemExit) as info:
        cli.main(["serve", "--max-request-memory", "lots"])
    assert info.value.code == 2 and "--max-request-memory" in capsys.readouterr().err


def test_best_of_n_with_early_rejection_is_costed_as_the_strategy_that_runs(loaded):
    """Served as best-of-n, a request with ``rejection`` runs EarlyRejectionBestOfN: with a
    decision every token its reward items are n x (1 + max_tokens), not Best-of-N's n."""
    served = served_for("best-of-n", loaded, cost_limits=CostLimits(reward_items=500))
    assert plan(served, align_chains={"n": 8}, max_tokens=100).cost.reward_items == 8  # plain Best-of-N
    with pytest.raises(RequestError) as info:
        plan(served, align_chains={"n": 8, "rejection": 0.5, "decision_every": 1}, max_tokens=100)
    error = info.value
    assert error.status == 400 and error.code == "request_too_expensive"
    assert "808 responses to score" in error.message and "early-rejection" in error.message
    assert error.param == "align_chains.n" and "n can be at most 4" in error.message
    admitted = plan(served, align_chains={"n": 4, "rejection": 0.5, "decision_every": 1}, max_tokens=100)
    assert admitted.cost.reward_items == 404


def test_a_request_that_would_run_a_strategy_without_a_cost_model_is_refused(loaded, monkeypatch):
    """A chat model that builds a strategy it does not list (``also_builds``) passes the startup
    check; the request that would run it gets a 400 saying what the strategy lacks."""
    import align_chains_server.service
    from pydantic import Field

    from align_chains.chat_models import settings_base
    from align_chains.strategies import Strategy

    class Unpriced(Strategy):
        name = "unpriced"
        n: int = Field(2, ge=1)

        def _search(self, run, **options):
            raise AssertionError("never runs: refused at admission")

    class ForgetfulChatModel(settings_base(BestOfN)):  # type: ignore[misc]
        def build_strategy(self, **overrides):
            return Unpriced(n=self.n) if self.n > 8 else super().build_strategy(**overrides)

    monkeypatch.setattr(align_chains_server.service, "chat_model_class", lambda name: ForgetfulChatModel)
    served = served_for("forgetful", loaded)
    assert plan(served, align_chains={"n": 8}).cost.reward_items == 8
    with pytest.raises(RequestError) as info:
        plan(served, align_chains={"n": 9})
    assert info.value.status == 400 and info.value.code == "no_cost_model"
    assert "declares no cost model" in info.value.message and "def cost(" in info.value.message
