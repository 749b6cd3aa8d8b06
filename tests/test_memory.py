"""The memory estimator: its terms follow the shapes it claims to count (measured checks: docs/gpu.md)."""

from __future__ import annotations

import json

import pytest
import torch

from align_chains.cli import main
from align_chains.engine import SamplingParams
from align_chains.errors import InvalidInputError
from align_chains.memory import ModelShape, estimate_memory
from align_chains.rewards import CallableReward, JudgeReward
from align_chains.strategies import SEA, BestOfN, Darwin, RewardGuided

PARAMS = SamplingParams(max_new_tokens=32)


def test_kv_cache_weights_and_rows_follow_the_model_and_settings(tiny_policy):
    shape = ModelShape.of(tiny_policy.model)
    config = tiny_policy.model.config
    assert shape.weight_bytes == sum(p.numel() * 4 for p in tiny_policy.model.parameters()) + sum(
        b.numel() * b.element_size() for b in tiny_policy.model.buffers()
    )
    four = estimate_memory(BestOfN(n=4), tiny_policy, None, PARAMS, 100)
    eight = estimate_memory(BestOfN(n=8), tiny_policy, None, PARAMS, 100)
    per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * 8 * 4  # head_dim 32/4
    assert four.kv_cache == 4 * 132 * per_token and eight.kv_cache == 2 * four.kv_cache
    assert four.weights == shape.weight_bytes and four.total == sum(
        getattr(four, name) for name in four.COMPONENTS
    )
    assert four.request == four.total - four.weights and "best-of-n" in four.explain()


def test_sea_counts_its_fp32_tensors_and_a_judge_on_the_policy_adds_no_weights(tiny_policy):
    sea = estimate_memory(SEA(chains=2), tiny_policy, JudgeReward(tiny_policy), PARAMS, 100)
    unit = 2 * 32 * tiny_policy.vocab_size * 4
    assert sea.optimizer_state == 3 * unit and sea.sea_tensors >= 13 * unit
    own = estimate_memory(SEA(chains=2), tiny_policy, CallableReward(lambda p, r: 0.0), PARAMS, 100)
    assert own.reward == 0 and sea.reward > 0  # the judge's caches, not its (shared) weights


def test_bad_input_is_refused_before_any_work(tiny_policy):
    with pytest.raises(InvalidInputError, match="prompt_tokens"):
        estimate_memory(BestOfN(), tiny_policy, None, PARAMS, 0)
    with pytest.raises(InvalidInputError, match="Strategy instance"):
        estimate_memory("best-of-n", tiny_policy, None, PARAMS, 10)


def test_cli_estimate_reads_a_config_and_prints_json(tiny_policy, tmp_path, capsys):
    tiny_policy.model.config.save_pretrained(tmp_path)
    code = main(
        ["estimate", "--policy", str(tmp_path), "-o", "n=8", "--prompt-tokens", "100", "50", "--json"]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rows"] == 16 and out["strategy"] == "best-of-n" and out["total"] > out["weights"] > 0


# SmolLM2-135M's shape (the embedded policy), the model of docs/gpu.md's measured table
SMOLLM2 = ModelShape("smollm2-135m", 134_515_008, torch.float32, 30, 576, 1536, 9, 3, 64, 49152)


def test_the_peak_is_the_phase_holding_the_most_and_the_prefill_cache_is_not_counted_twice():
    """ARGS decodes one row per prompt: with many long prompts the prefill (its own cache plus
    one layer's activations) is the peak, and the engine's preallocated cache, which replaces the
    prefill's layer by layer, is not added on top of it (that over-counted ARGS by 27%)."""
    args = estimate_memory(RewardGuided(k=5), SMOLLM2, None, SamplingParams(max_new_tokens=4), [400] * 8)
    assert args.peak_phase == "prefill"
    assert args.kv_cache == 8 * 400 * SMOLLM2.kv_bytes_per_token
    assert args.activations == SMOLLM2.forward_bytes(8, 400, 400)
    assert args.total == sum(getattr(args, name) for name in args.COMPONENTS)
    best = estimate_memory(BestOfN(n=16), SMOLLM2, None, SamplingParams(max_new_tokens=64), 100)
    assert best.peak_phase == "decode" and best.kv_cache == 16 * 164 * SMOLLM2.kv_bytes_per_token
    assert "peak at decode" in best.explain()


def test_darwin_counts_the_state_transplant_of_a_replacement_round():
    """A replacement builds a cache from index copies of the moved rows' prompt columns, and the
    cache copies them again (state_transplant._prefill_answers): 2 x moved rows x prompt."""
    params = SamplingParams(max_new_tokens=24)
    replaced = estimate_memory(Darwin(n=8, k=3, m=8), SMOLLM2, None, params, 512)
    candidates = 8 * (512 + 24) * SMOLLM2.kv_bytes_per_token
    assert replaced.peak_phase == "replacement"
    assert replaced.kv_cache == candidates + 2 * (8 - 3) * 512 * SMOLLM2.kv_bytes_per_token
    one_segment = estimate_memory(Darwin(n=8, k=3, m=24), SMOLLM2, None, params, 512)  # L <= m: no round
    assert one_segment.peak_phase != "replacement" and one_segment.total < replaced.total


def test_footprint_from_spec_reads_specs_with_the_one_reward_parser():
    from align_chains.memory import footprint_from_spec

    for weightless in ("python:align_chains.rewards.rules:distinct_bigrams", "rule:distinct", "lexicon:a,b"):
        assert footprint_from_spec(weightless, SMOLLM2).weights == 0
        assert footprint_from_spec(weightless, SMOLLM2).shape is None
    judge = footprint_from_spec("judge-principle:Be brief.", SMOLLM2)
    assert judge.kind == "judge" and judge.is_policy and judge.shape is SMOLLM2 and judge.weights == 0
    with pytest.raises(InvalidInputError, match="Unknown rule 'nope'"):
        footprint_from_spec("rule:nope", SMOLLM2)
