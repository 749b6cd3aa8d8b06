"""End to end: ARGS and IVG on the embedded defaults (SmolLM2-135M-Instruct, MiniLM), small settings."""

from __future__ import annotations

import math

import pytest

from align_chains import RewardGuidedChatModel, ValueGuidedChatModel
from align_chains.cli import main

pytestmark = pytest.mark.e2e

PROMPT = "Give me three tips for better sleep."


def test_reward_guided_on_embedded_defaults():
    model = RewardGuidedChatModel(k=4, max_tokens=16, seed=0)
    chunks = list(model.stream(PROMPT))
    message = model.invoke(PROMPT)
    assert "".join(c.content for c in chunks) == message.content and message.content.strip()
    meta = message.response_metadata
    assert meta["scoring"] == "TextBranchScorer"  # MiniLM does not share SmolLM2's vocabulary
    assert math.isfinite(meta["reward"]) and meta["reward"] > 0.2  # relevant to the question
    # one branch scoring per generated token (the EOS included: output_tokens counts it), one final
    assert meta["compute"]["reward_calls"] == message.usage_metadata["output_tokens"] + 1
    assert message.usage_metadata["output_token_details"]["reasoning"] == (meta["finish_reason"] == "stop")


def test_value_guided_with_a_principle_on_embedded_defaults():
    model = ValueGuidedChatModel(
        principle="Answer concisely and politely.", max_tokens=24, chunk_tokens=8, seed=0
    )
    message = model.invoke(PROMPT)
    meta = message.response_metadata
    assert message.content.strip()
    assert meta["guide"] == "implicit(smollm2-135m-instruct | principle)"
    assert meta["token_guidance"] and meta["chunk_value"] == "implicit" and len(meta["candidates"]) == 4
    assert meta["compute"]["forward_passes"] <= 24  # the principled prompt rides in the same forwards


@pytest.mark.parametrize(
    "argv",
    [
        ["--strategy", "reward-guided", "-o", "k=3"],
        ["--strategy", "value-guided", "--principle", "Answer concisely.", "-o", "chunk_tokens=6"],
    ],
)
def test_cli_runs_guided_strategies(capsys, argv):
    assert main(["chat", PROMPT, "--max-tokens", "12", "--seed", "0", "--quiet", *argv]) == 0
    out = capsys.readouterr().out
    assert "reward:" in out and "compute:" in out
