"""A strategy is one class: registering it makes it reachable by name and as a chat model."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from pydantic import Field, ValidationError

from align_chains.chat_models import CHAT_MODELS, chat_model_class
from align_chains.engine import Decoder
from align_chains.errors import RewardError, UnknownStrategyError
from align_chains.rewards import CallableReward
from align_chains.strategies import (
    STRATEGIES,
    BestOfN,
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

    def _search(self, run: SearchRun, **options: Any) -> list[StrategyResult]:
        completions = Decoder(run.policy, run.counters).generate(run.token_ids, self.n, run.params)
        run.partial = lambda: best_per_prompt(self.name, completions, None, run.counters, run.num_prompts)
        texts = [c.text for c in completions]
        scores = score_texts(
            run.reward, [run.conversations[c.prompt_index] for c in completions], texts, run.counters
        )
        return best_per_prompt(self.name, completions, [-s for s in scores], run.counters, run.num_prompts)


@pytest.fixture
def worst_of_n():
    register_strategy(WorstOfN)
    yield WorstOfN
    unregister_strategy(WorstOfN)


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
