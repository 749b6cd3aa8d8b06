"""A strategy is one class: registering it makes it reachable by name and as a chat model."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from pydantic import Field, ValidationError

from align_chains.chat_models import CHAT_MODELS, chat_model_class
from align_chains.engine import Decoder, SamplingParams
from align_chains.errors import RewardError, UnknownStrategyError
from align_chains.memory import estimate_memory
from align_chains.rewards import CallableReward
from align_chains.strategies import (
    STRATEGIES,
    BestOfN,
    Bound,
    Cost,
    NoCostModel,
    SearchRun,
    Strategy,
    StrategyResult,
    canonical_strategy_name,
    get_strategy,
    register_strategy,
    unregister_strategy,
)
from align_chains.strategies.base import score_texts
from align_chains.strategies.best_of_n import best_per_prompt


class WorstOfN(Strategy):
    """Toy strategy: sample ``n`` answers and keep the one the reward likes least."""

    name: ClassVar[str] = "worst-of-n"
    aliases: ClassVar[tuple[str, ...]] = ("won",)

    n: int = Field(3, ge=1, description="Candidates per prompt.")

    # what a server needs to serve it: the settings that multiply its work (with a default bound)
    # and its work as a function of its settings; its memory is the engine's decoding of Cost.rows
    work_bounds: ClassVar[tuple[Bound, ...]] = (Bound("n", 16),)

    def cost(self, params: SamplingParams) -> Cost:
        t = params.max_new_tokens
        return Cost(self.n * t, 1 + t, self.n, self.n, factors=("n", "max_tokens"))

    def _search(self, run: SearchRun, **options: Any) -> list[StrategyResult]:
        completions = Decoder(run.policy, run.counters).generate(run.token_ids, self.n, run.params)
        run.partial = lambda: best_per_prompt(self.name, completions, None, run.counters, run.num_prompts)
        texts = [c.text for c in completions]
        scores = score_texts(
            run.reward, [run.conversations[c.prompt_index] for c in completions], texts, run.counters
        )
        return best_per_prompt(self.name, completions, [-s for s in scores], run.counters, run.num_prompts)


class Unpriced(Strategy):
    """Toy strategy that declares no cost model: it runs, but no server serves it."""

    name: ClassVar[str] = "unpriced"

    n: int = Field(2, ge=1, description="Candidates per prompt.")

    def _search(self, run: SearchRun, **options: Any) -> list[StrategyResult]:
        return WorstOfN._search(self, run, **options)  # type: ignore[arg-type]


@pytest.fixture
def worst_of_n():
    register_strategy(WorstOfN)
    yield WorstOfN
    unregister_strategy(WorstOfN)


@pytest.fixture
def unpriced():
    register_strategy(Unpriced)
    yield Unpriced
    unregister_strategy(Unpriced)


def test_builtin_names_and_aliases_resolve():
    assert get_strategy("bon") is BestOfN and canonical_strategy_name(" ARGS ") == "reward-guided"
    assert canonical_strategy_name("simple-energy-adaptation") == "sea"
    with pytest.raises(UnknownStrategyError, match="Available: "):
        get_strategy("no-such-strategy")


def test_a_registered_strategy_runs_through_a_generated_chat_model(worst_of_n, tiny_policy, length_reward):
    assert get_strategy("won") is worst_of_n and "worst-of-n" in CHAT_MODELS
    cls = chat_model_class("worst-of-n")
    assert cls.strategy_field_names() == ["n"] and cls.model_fields["n"].default == 3
    chat = cls(policy=tiny_policy, reward=length_reward, n=4, max_tokens=8, temperature=1.0, seed=0)
    message = chat.invoke("Hello")
    assert message.response_metadata["strategy"] == "worst-of-n"
    rewards = [c["reward"] for c in message.response_metadata["candidates"]]
    assert (
        len(rewards) == 4
        and message.content
        == min(message.response_metadata["candidates"], key=lambda c: len(c["text"]))["text"]
    )
    assert message.response_metadata["compute"]["seconds"] > 0
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        cls(n=0)


def test_registration_is_undone_and_names_cannot_be_taken_twice(worst_of_n):
    class Impostor(WorstOfN):
        name: ClassVar[str] = "best-of-n"

    with pytest.raises(ValueError, match="taken by BestOfN"):
        register_strategy(Impostor)
    unregister_strategy(worst_of_n)
    assert "worst-of-n" not in STRATEGIES
    with pytest.raises(UnknownStrategyError):
        chat_model_class("won")


def test_the_template_attaches_the_work_done_when_the_reward_fails(tiny_policy):
    def failing(prompt: str, response: str) -> float:
        raise RuntimeError("reward server down")

    with pytest.raises(RewardError) as info:
        WorstOfN(n=2).run("Hello", tiny_policy, CallableReward(failing, name="down"))
    (partial,) = info.value.partial
    assert len(partial.candidates) == 2 and partial.flags == {"reward_failed": True}


def test_the_cli_runs_a_registered_strategy(worst_of_n, monkeypatch, tiny_policy, length_reward, capsys):
    from align_chains import cli

    monkeypatch.setattr("align_chains.chat_models.base.load_policy", lambda *a, **k: tiny_policy)
    monkeypatch.setattr("align_chains.chat_models.base.load_reward", lambda *a, **k: length_reward)
    argv = ["chat", "Hi", "--strategy", "won", "--n", "2", "--max-tokens", "6", "--seed", "0", "--quiet"]
    assert cli.main(argv) == 0
    assert "(worst-of-n, " in capsys.readouterr().out


def test_the_server_serves_a_registered_strategy(worst_of_n, tiny_policy, length_reward):
    """The OpenAI-compatible server finds the toy strategy by name, takes its settings per request,
    and answers with its choice: nothing beyond the one class was registered anywhere."""
    pytest.importorskip("align_chains_server")
    from align_chains_server.app import create_app
    from align_chains_server.service import ServedModel
    from fastapi.testclient import TestClient

    served = ServedModel(strategy="won", policy_spec="tiny", defaults={"max_tokens": 6})
    served._policy, served._reward = tiny_policy, length_reward  # what load() would set, without disk
    with TestClient(create_app(served)) as client:
        assert "n" in client.get("/v1/models").json()["data"][0]["align_chains"]["settings"]
        body = {"messages": [{"role": "user", "content": "Hi"}], "seed": 0, "align_chains": {"n": 3}}
        reply = client.post("/v1/chat/completions", json=body)
    assert reply.status_code == 200, reply.text
    data = reply.json()
    meta = data["align_chains"]
    assert meta["strategy"] == "worst-of-n" and len(meta["candidates"]) == 3
    shortest = min(meta["candidates"], key=lambda c: len(c["text"]))["text"]
    assert data["choices"][0]["message"]["content"] == shortest


def _served(strategy: str, policy, reward, **kwargs):
    pytest.importorskip("align_chains_server")
    from align_chains_server.service import ServedModel

    served = ServedModel(strategy=strategy, policy_spec="tiny", **kwargs)
    served._policy, served._reward = policy, reward  # what load() would set, without disk
    return served


def test_the_server_admits_a_registered_strategy_on_its_own_declarations(
    worst_of_n, tiny_policy, length_reward
):
    """Its cost model costs its requests, its bound limits n, its refusal names its factors."""
    from align_chains_server.admission import CostLimits
    from align_chains_server.schemas import ChatCompletionRequest
    from align_chains_server.service import RequestError

    served = _served("won", tiny_policy, length_reward, cost_limits=CostLimits(decode_tokens=100))

    def plan(**body: Any):
        return served.plan(
            ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "Hi"}], **body})
        )

    assert plan(max_tokens=6, align_chains={"n": 5}).cost == WorstOfN(n=5).cost(
        SamplingParams(max_new_tokens=6)
    )
    assert served.setting_limits()["n"] == 16
    with pytest.raises(RequestError) as info:
        plan(max_tokens=10, align_chains={"n": 16})  # 160 tokens to decode, over 100
    assert "This worst-of-n request (n=16, max_tokens=10)" in info.value.message
    assert info.value.param == "align_chains.n" and "n can be at most 10" in info.value.message
    with pytest.raises(RequestError, match="limit of 16"):
        plan(max_tokens=4, align_chains={"n": 17})


def test_a_registered_strategy_appears_in_the_memory_estimator(worst_of_n, tiny_policy, tmp_path, capsys):
    from align_chains import cli

    params = SamplingParams(max_new_tokens=32)
    worst, best = (estimate_memory(s(n=4), tiny_policy, None, params, 100) for s in (WorstOfN, BestOfN))
    assert worst.strategy == "worst-of-n" and worst.rows == 4 and worst.peak_phase == "decode"
    assert (worst.kv_cache, worst.total) == (best.kv_cache, best.total)  # the engine's decode of its rows
    tiny_policy.model.config.save_pretrained(tmp_path)
    argv = [
        "estimate",
        "--strategy",
        "won",
        "--policy",
        str(tmp_path),
        "-o",
        "n=8",
        "--prompt-tokens",
        "50",
        "60",
    ]
    assert cli.main([*argv, "--json"]) == 0
    assert '"rows": 16' in capsys.readouterr().out


def test_a_registered_strategy_appears_in_the_docs_settings_tables(worst_of_n):
    import importlib.util
    from pathlib import Path

    pytest.importorskip("mkdocs")
    path = Path(__file__).resolve().parents[1] / "docs" / "_hooks" / "site.py"
    spec = importlib.util.spec_from_file_location("docs_site_hook", path)
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    table = hook.settings_table(chat_model_class("worst-of-n"))
    assert "| `n` | `3` | 16 | Candidates per prompt. |" in table
    assert "| `max_tokens` | `128` | 1024 |" in table and "Keeps a grammar" in table


def test_a_strategy_without_a_cost_model_is_refused_by_the_server(
    unpriced, tiny_policy, length_reward, capsys
):
    """It runs on its own, but the server (and the estimator) say what to add instead of guessing."""
    from align_chains import cli

    assert (
        len(Unpriced(n=2).run("Hi", tiny_policy, length_reward, SamplingParams(max_new_tokens=4)).candidates)
        == 2
    )
    with pytest.raises(NoCostModel) as info:
        _served("unpriced", tiny_policy, length_reward)
    message = str(info.value)
    assert "'unpriced' (Unpriced) declares no cost model" in message and "refuses to serve it" in message
    assert "def cost(self, params: SamplingParams) -> Cost:" in message and "return Cost(" in message
    assert cli.main(["serve", "--strategy", "unpriced"]) == 2  # at startup, before loading anything
    assert "declares no cost model" in capsys.readouterr().err
    with pytest.raises(NoCostModel, match="Add a `cost` method to Unpriced"):
        estimate_memory(Unpriced(), tiny_policy, None, SamplingParams(max_new_tokens=8), 10)
