"""Finished-row compaction changes no result, and the stop-string criteria are built once.

The policy is a tiny random model with its EOS logit raised, so rows of one batch end at
different steps (a random model alone almost never samples EOS) and compaction really runs:
every extend-based test counts the compactions it saw.

Tokens, finish reasons and counters must be identical. Log-probabilities and cache values are
compared to 1e-5: a smaller batch takes other matmul kernels on some CPUs (seen on CI's: one
log-probability differed in the 7th digit), which is float rounding, not a changed result.
"""

from __future__ import annotations

import math

import pytest
import torch

from align_chains import testing
from align_chains.engine import Decoder, SamplingParams, compaction, make_generator, sample_tokens
from align_chains.engine.grammar import Grammar
from align_chains.rewards import CallableReward
from align_chains.strategies import BestOfN, EarlyRejectionBestOfN, RewardGuided, ValueGuided
from align_chains.strategies.darwin import Darwin

PARAMS = SamplingParams(max_new_tokens=24, temperature=1.0, seed=0)
CITY = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "population": {"type": "integer"}},
    "required": ["name", "population"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def ending_policy():
    """The tiny random policy with +8 on the EOS logit: of 8 rows, most end before 24 tokens."""
    policy = testing.tiny_policy()
    bias = torch.zeros(policy.vocab_size)
    bias[policy.eos_token_ids[0]] = 8.0
    policy.model.lm_head.register_forward_hook(lambda _m, _i, out: out + bias.to(out.dtype))
    return policy


@pytest.fixture
def compactions(monkeypatch):
    """Compaction as eager as it may be (so short tests exercise it); counts the times it ran."""
    calls = []
    real = compaction.compact

    def counted(batch):
        calls.append(batch.size)
        return real(batch)

    monkeypatch.setattr(compaction, "compact", counted)
    monkeypatch.setattr(compaction.COMPACTION, "min_finished", 0.1)
    monkeypatch.setattr(compaction.COMPACTION, "min_steps_left", 1)
    return calls


def assert_same(on, off, where: str = "result") -> None:
    """Equal, except floats (and float tensors) equal to 1e-5: batch-shape rounding only."""
    if isinstance(on, torch.Tensor) and on.is_floating_point():
        torch.testing.assert_close(on, off, rtol=1e-5, atol=1e-5, msg=lambda m: f"{where}: {m}")
    elif isinstance(on, torch.Tensor):
        assert torch.equal(on, off), where
    elif isinstance(on, float) and isinstance(off, float):
        assert math.isclose(on, off, rel_tol=1e-5, abs_tol=1e-5), f"{where}: {on} != {off}"
    elif isinstance(on, (list, tuple)):
        assert type(on) is type(off) and len(on) == len(off), f"{where}: {on!r} != {off!r}"
        for i, (a, b) in enumerate(zip(on, off, strict=True)):
            assert_same(a, b, f"{where}[{i}]")
    else:
        assert on == off, f"{where}: {on!r} != {off!r}"


def run_both(monkeypatch, compactions, run):
    """``run()`` with compaction off, then on: both results and the compactions of the second."""
    monkeypatch.setattr(compaction.COMPACTION, "enabled", False)
    off = run()
    assert compactions == []
    monkeypatch.setattr(compaction.COMPACTION, "enabled", True)
    return off, run()


def summary(result):
    """Everything a user reads from a strategy's result, counters included."""
    candidates = [(c.text, c.reward, c.token_ids, c.logprobs, c.finish_reason) for c in result.candidates]
    counters = result.counters
    work = (counters.forward_passes, counters.generated_tokens, counters.prompt_tokens)
    return result.text, result.reward, candidates, work


def test_a_compacted_generate_gives_the_same_rows_tokens_and_cache(ending_policy, monkeypatch, compactions):
    prompts = [ending_policy.render([{"role": "user", "content": c}]) for c in ("Hi", "Tell me a story.")]

    def run():
        decoder = Decoder(ending_policy)
        batch = decoder.start(prompts, 6, PARAMS)
        decoder.extend(batch, generator=make_generator(0, ending_policy.device))
        return decoder, batch, decoder.completions(batch), batch.cache.layers[0].keys.shape

    off, on = run_both(monkeypatch, compactions, run)
    (d_off, b_off, c_off, shape_off), (d_on, b_on, c_on, shape_on) = off, on
    assert compactions, "rows should have ended early enough to compact"
    assert_same(
        [(c.token_ids, c.logprobs, c.finish_reason) for c in c_on],
        [(c.token_ids, c.logprobs, c.finish_reason) for c in c_off],
    )
    assert len({c.generated_tokens for c in c_on}) > 2  # rows really ended at different steps
    assert shape_on == shape_off
    for name in ("tokens", "logprobs", "num_tokens", "finished", "stopped", "positions", "attention_mask"):
        assert_same(getattr(b_on, name), getattr(b_off, name), name)
    assert_same(b_on.pending, b_off.pending, "pending")
    assert d_on.counters.forward_passes == d_off.counters.forward_passes
    assert d_on.counters.generated_tokens == d_off.counters.generated_tokens
    # the prompt part of every row's cache is untouched, so a second round reuses it
    width = b_on.prompt_width
    for on, off in zip(b_on.cache.layers, b_off.cache.layers, strict=True):
        assert_same(on.keys[:, :, :width], off.keys[:, :, :width], "prompt keys")
    again = [d.restart(b, [3, 3]) for d, b in ((d_on, b_on), (d_off, b_off))]
    for d, b in zip((d_on, d_off), again, strict=True):
        d.extend(b, generator=make_generator(1, ending_policy.device))
    assert [c.token_ids for c in d_on.completions(again[0])] == [
        c.token_ids for c in d_off.completions(again[1])
    ]


def test_a_row_samples_the_same_token_wherever_it_sits_in_the_batch():
    torch.manual_seed(0)
    logits = torch.randn(8, 50)
    full = sample_tokens(logits, PARAMS, make_generator(5, torch.device("cpu")))
    rows = torch.tensor([1, 4, 6, 7])
    part = sample_tokens(logits[rows], PARAMS, make_generator(5, torch.device("cpu")), rows, total=8)
    assert torch.equal(part, full[rows])


def length_reward():
    return CallableReward(lambda prompt, response: float(len(response)), name="length")


STRATEGIES = {
    "best_of_n": (BestOfN(n=8), PARAMS, True),
    "early_rejection": (EarlyRejectionBestOfN(n=8, rejection=0.5, decision_every=8), PARAMS, True),
    "grammar_best_of_n": (
        BestOfN(n=6),
        SamplingParams(max_new_tokens=40, temperature=1.0, seed=0, grammar=Grammar.json_schema(CITY)),
        True,
    ),
    "darwin": (Darwin(n=8, m=4, k=2, cycles=1, mutation_max_tokens=16), PARAMS, True),
    "args": (RewardGuided(k=4), PARAMS, False),  # its own loop: no extend, nothing to compact
    "ivg": (ValueGuided(principle="Answer politely.", chunk_value="none"), PARAMS, False),
}


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_answers_the_same_with_compaction_on_and_off(
    name, ending_policy, monkeypatch, compactions
):
    strategy, params, compacts = STRATEGIES[name]

    def run():
        results = strategy.run_batch(["Hi", "Tell me a story."], ending_policy, length_reward(), params)
        return [summary(r) for r in results]

    off, on = run_both(monkeypatch, compactions, run)
    assert_same(on, off)
    assert bool(compactions) == compacts


def test_stop_criteria_are_built_once_per_tokenizer_and_stop_strings(tiny_policy):
    prompt = tiny_policy.render([{"role": "user", "content": "Hi"}])
    first = Decoder(tiny_policy).start([prompt], 2, SamplingParams(stop=("\n\n", "User:"))).stop_criteria
    second = Decoder(tiny_policy).start([prompt], 2, SamplingParams(stop=("\n\n", "User:"))).stop_criteria
    assert second is first
    other = Decoder(tiny_policy).start([prompt], 2, SamplingParams(stop=("User:",))).stop_criteria
    assert other is not first
    # a shared criterion still judges each batch by its own tokens
    ends, goes = (tiny_policy.tokenizer.encode(text) for text in ("so User:", "so User"))
    assert first(torch.tensor([ends]), None).tolist() == [True]
    assert first(torch.tensor([goes]), None).tolist() == [False]


def test_a_batch_with_left_padding_keeps_a_padded_row_when_only_unpadded_ones_go_on(
    ending_policy, monkeypatch, compactions
):
    """transformers drops an all-ones attention mask (another attention kernel): when the rows of
    the shorter prompt have ended, one of them rides along so the smaller batch stays padded."""
    short, long = (
        ending_policy.render([{"role": "user", "content": c}]) for c in ("Hi", "Tell me a long story.")
    )
    params = SamplingParams(max_new_tokens=16, temperature=1.0, seed=4)

    def run():
        decoder = Decoder(ending_policy)
        batch = decoder.start([short, long], 6, params)
        generator = make_generator(4, ending_policy.device)
        decoder.extend(batch, 1, generator, compact=False)
        batch.finished[:6] = True  # the short prompt's rows end (as DARWIN's caps end rows)
        decoder.extend(batch, generator=generator)
        return batch

    off, on = run_both(monkeypatch, compactions, run)
    assert compactions and compactions[0] == 12
    for name in ("tokens", "logprobs", "num_tokens", "finished"):
        assert_same(getattr(on, name), getattr(off, name), name)
    kept = compaction.rows_to_keep(off)  # the finished batch: a padded row is all it can keep
    assert kept.numel() == 1 and int(kept[0]) < 6
