"""SEA end to end on the embedded defaults: the judge's exact path and MiniLM's bridge path."""

from __future__ import annotations

import math

import pytest

from align_chains import SEAChatModel
from align_chains.cli import main

pytestmark = pytest.mark.e2e

PROMPT = "Give me three tips for better sleep."
SMALL = {"chains": 2, "iterations": 2, "max_tokens": 12, "seed": 0}


@pytest.mark.parametrize(("reward", "path"), [("judge", "exact"), ("minilm", "bridge")])
def test_sea_on_embedded_defaults(reward, path):
    message = SEAChatModel(reward=reward, **SMALL).invoke(PROMPT)
    meta = message.response_metadata
    assert message.content.strip()
    assert meta["strategy"] == "sea" and meta["reward_path"] == path
    assert meta["iterations"] == 2
    assert math.isfinite(meta["reward"]) and meta["reward"] == max(c["reward"] for c in meta["candidates"])
    if path == "bridge":
        assert 0.3 < meta["vocab_coverage"] < 1.0
    assert meta["compute"]["reward_calls"] >= 2


@pytest.mark.parametrize("reward", [[], ["--reward", "minilm"]], ids=["judge", "minilm"])
def test_cli_runs_sea(capsys, reward):
    argv = ["chat", PROMPT, "--strategy", "sea", "--quiet", "--max-tokens", "12", "--seed", "0", *reward]
    assert main([*argv, "-o", "iterations=2", "-o", "chains=2"]) == 0
    out = capsys.readouterr().out
    assert "(sea," in out and "reward:" in out
