"""The memory estimator: its terms follow the shapes it claims to count (measured checks: docs/gpu.md)."""

from __future__ import annotations

import json

import pytest

from align_chains.cli import main
from align_chains.engine import SamplingParams
from align_chains.errors import InvalidInputError
from align_chains.memory import ModelShape, estimate_memory
from align_chains.rewards import CallableReward, JudgeReward
from align_chains.strategies import SEA, BestOfN

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
