"""Answers longer than the strategies' default chunking, on the tiny models (issue 15, item 5).

The papers generate up to 2048 tokens; the CPU defaults are short. These runs go several
replacement rounds (DARWIN, m=40 by default) and several chunks (IVG, 30 tokens by default)
past them, and check the long search still does what the short one does.
"""

from __future__ import annotations

import math
import zlib

import pytest
from reference.darwin_reprefill import DarwinReprefill

import align_chains.strategies.darwin_driver as darwin_module
from align_chains.engine import SamplingParams
from align_chains.rewards import CallableReward
from align_chains.strategies import ValueGuided
from align_chains.strategies.darwin import Darwin
from align_chains.strategies.mutation import ParsedMutations

LONG = 200  # five DARWIN segments at the default m=40; seven IVG chunks at the default 30 tokens


def hash_reward() -> CallableReward:
    return CallableReward(lambda p, r: (zlib.crc32(r.encode()) % 1000) / 1000.0, name="hash")


@pytest.fixture
def scripted_mutations(monkeypatch):
    def fake(text: str, n: int, fallback: str) -> ParsedMutations:
        return ParsedMutations([f"{fallback} Variant {i}:{' more' * i}" for i in range(n)], n)

    monkeypatch.setattr(darwin_module, "parse_mutations", fake)


def test_darwin_over_several_replacement_rounds_matches_the_reprefill_reference(
    tiny_policy, scripted_mutations
):
    settings = {"n": 3, "k": 1, "cycles": 1, "mutation_max_tokens": 16}  # m=40, the default
    params = SamplingParams(max_new_tokens=LONG, temperature=1.0, seed=11)
    ours = Darwin(**settings).run("Tell me a long story.", tiny_policy, hash_reward(), params)
    theirs = DarwinReprefill(**settings).run("Tell me a long story.", tiny_policy, hash_reward(), params)
    segments = {e["segment"] for e in ours.trace if e["event"] == "score"}
    assert segments == set(range(1, math.ceil(LONG / 40) + 1))
    rounds = {e["segment"] for e in ours.trace if e["event"] == "replace"}
    assert len(rounds) >= 3, "replacements should happen in several rounds"
    cycle = [c for c in ours.candidates if c.meta["cycle"] == 1]
    assert all(c.finish_reason == "stop" or len(c.token_ids) == LONG for c in cycle)
    assert sorted(c.meta["mutation"] for c in cycle) == [0, 1, 2]  # every instruction to the end
    assert [c.token_ids for c in ours.candidates] == [c.token_ids for c in theirs.candidates]
    assert ours.trace == theirs.trace and ours.text == theirs.text
    assert ours.counters.prompt_tokens < theirs.counters.prompt_tokens


def test_ivg_over_several_chunks(tiny_policy):
    calls: list[int] = []

    def score(prompt, response):
        calls.append(1)
        return float(len(response))

    strategy = ValueGuided(token_guidance=False, chunk_value="reward", beams=2, samples=2)  # 30-token chunks
    params = SamplingParams(max_new_tokens=LONG, temperature=1.0, seed=2)
    result = strategy.run("Tell me a long story.", tiny_policy, CallableReward(score, name="len"), params)
    steps = max(r["step"] for r in result.trace)
    assert steps > 3 * 30, "the random model should write past three chunks"
    assert result.counters.reward_calls == math.ceil(steps / 30)
    assert len(result.best.token_ids) <= LONG and result.reward == float(len(result.text))
    chunk_steps = sorted({r["step"] for r in result.trace})
    assert chunk_steps[:3] == [30, 60, 90]
