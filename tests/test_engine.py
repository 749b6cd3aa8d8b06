"""The decoding engine: prefix sharing is exact, rows can be selected, work is counted."""

from __future__ import annotations

import pytest
import torch

from align_chains.engine import ComputeCounters, Decoder, SamplingParams, make_generator
from align_chains.engine.sampling import filter_logits, sample_tokens
from align_chains.errors import InvalidInputError

USER = [{"role": "user", "content": "Give me three tips for better sleep."}]
OTHER = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit."}]


def full_forward_logits(policy, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return policy.model(torch.tensor([ids])).logits[0].float()


def row_ids(batch, row: int) -> list[int]:
    return batch.tokens[row, : int(batch.num_tokens[row])].tolist()


def test_prefix_shared_logits_match_full_forward(tiny_policy):
    prompt = tiny_policy.render(USER)
    decoder = Decoder(tiny_policy)
    batch = decoder.start([prompt], rows=3, params=SamplingParams(max_new_tokens=8, temperature=1.0))
    decoder.extend(batch, 5, generator=make_generator(0, tiny_policy.device))
    logits = decoder.logits(batch)
    for row in range(3):
        expected = full_forward_logits(tiny_policy, prompt + batch.tokens[row].tolist())[-1]
        torch.testing.assert_close(logits[row], expected, atol=1e-4, rtol=1e-4)


def test_left_padded_prompts_match_unpadded_forward(tiny_policy):
    short, long = tiny_policy.render(OTHER), tiny_policy.render(USER)
    assert len(short) != len(long)
    decoder = Decoder(tiny_policy)
    batch = decoder.start(
        [short, long], rows=[2, 1], params=SamplingParams(max_new_tokens=6, temperature=1.0)
    )
    assert batch.prompt_index.tolist() == [0, 0, 1]
    decoder.extend(batch, 4, generator=make_generator(3, tiny_policy.device))
    logits = decoder.logits(batch)
    for row, prompt in enumerate([short, short, long]):
        expected = full_forward_logits(tiny_policy, prompt + batch.tokens[row].tolist())[-1]
        torch.testing.assert_close(logits[row], expected, atol=1e-4, rtol=1e-4)


def test_logprobs_are_the_policys_own(tiny_policy):
    prompt = tiny_policy.render(USER)
    decoder = Decoder(tiny_policy)
    batch = decoder.start([prompt], rows=2, params=SamplingParams(max_new_tokens=5, temperature=1.0))
    decoder.extend(batch, generator=make_generator(1, tiny_policy.device))
    for row in range(2):
        tokens = batch.tokens[row].tolist()
        full = torch.log_softmax(full_forward_logits(tiny_policy, prompt + tokens), dim=-1)
        expected = [full[len(prompt) - 1 + t, tok].item() for t, tok in enumerate(tokens)]
        torch.testing.assert_close(batch.logprobs[row], torch.tensor(expected), atol=1e-4, rtol=1e-4)


def test_prompt_prefilled_once_and_work_counted(tiny_policy):
    prompt = tiny_policy.render(USER)
    counters = ComputeCounters()
    completions = Decoder(tiny_policy, counters).generate(
        [prompt, prompt], rows=4, params=SamplingParams(max_new_tokens=6, seed=0)
    )
    assert len(completions) == 8
    assert counters.prompt_tokens == len(prompt)  # identical prompts share one prefill row
    assert counters.generated_tokens == sum(c.generated_tokens for c in completions)
    steps = max(c.generated_tokens for c in completions)
    # one prefill, then one pass per fed token; the last sampled token is never fed
    assert counters.forward_passes == 1 + steps - 1


def test_select_reorders_and_duplicates_cache_rows(tiny_policy):
    prompt = tiny_policy.render(USER)
    decoder = Decoder(tiny_policy)
    batch = decoder.start([prompt], rows=3, params=SamplingParams(max_new_tokens=12, temperature=1.0))
    gen = make_generator(5, tiny_policy.device)
    decoder.extend(batch, 3, generator=gen)
    before = decoder.logits(batch).clone()
    tokens_before = batch.tokens.clone()
    batch.select([2, 2, 0, 1])
    assert batch.size == 4
    torch.testing.assert_close(decoder.logits(batch), before[[2, 2, 0, 1]])
    assert torch.equal(batch.tokens, tokens_before[[2, 2, 0, 1]])
    decoder.extend(batch, 3, generator=gen)  # duplicated rows now diverge from shared caches
    logits = decoder.logits(batch)
    for row in range(4):
        expected = full_forward_logits(tiny_policy, prompt + batch.tokens[row].tolist())[-1]
        torch.testing.assert_close(logits[row], expected, atol=1e-4, rtol=1e-4)


def test_select_rejects_bad_rows(tiny_policy):
    decoder = Decoder(tiny_policy)
    batch = decoder.start([tiny_policy.render(USER)], rows=2)
    with pytest.raises(InvalidInputError, match="out of range"):
        batch.select([0, 5])
    with pytest.raises(InvalidInputError):
        batch.select([])


def test_seed_makes_sampling_reproducible(tiny_policy):
    prompt = tiny_policy.render(USER)
    params = SamplingParams(max_new_tokens=10, temperature=1.0, seed=42)
    first = [c.token_ids for c in Decoder(tiny_policy).generate([prompt], 4, params)]
    second = [c.token_ids for c in Decoder(tiny_policy).generate([prompt], 4, params)]
    other = [
        c.token_ids for c in Decoder(tiny_policy).generate([prompt], 4, params.model_copy(update={"seed": 7}))
    ]
    assert first == second
    assert first != other
    assert len({tuple(t) for t in first}) > 1  # rows sample independently


def test_greedy_rows_are_identical(tiny_policy):
    completions = Decoder(tiny_policy).generate(
        [tiny_policy.render(USER)], 3, SamplingParams(max_new_tokens=8, temperature=0)
    )
    assert len({tuple(c.token_ids) for c in completions}) == 1


def test_eos_finishes_a_row_and_is_not_in_the_text(tiny_policy):
    tok = tiny_policy.tokenizer
    decoder = Decoder(tiny_policy)
    batch = decoder.start([tiny_policy.render(USER)], rows=2, params=SamplingParams(max_new_tokens=5))
    hello = tok("Hello", add_special_tokens=False)["input_ids"][0]
    eos = tiny_policy.eos_token_ids[0]
    decoder.append(batch, torch.tensor([hello, hello]))
    decoder.append(batch, torch.tensor([eos, hello]))
    decoder.append(batch, torch.tensor([hello, hello]))  # row 0 is finished: padded, not counted
    assert batch.finished.tolist() == [True, False]
    assert batch.num_tokens.tolist() == [2, 3]
    done = decoder.completions(batch)
    assert done[0].finish_reason == "stop" and done[0].text == "Hello"
    assert done[0].generated_tokens == 2 and done[0].token_ids == [hello]


def test_stop_string_ends_row_and_is_cut(tiny_policy):
    tok = tiny_policy.tokenizer
    params = SamplingParams(max_new_tokens=20, stop=("world",))
    decoder = Decoder(tiny_policy)
    batch = decoder.start([tiny_policy.render(USER)], rows=1, params=params)
    ids = tok("Hello world and more", add_special_tokens=False)["input_ids"]
    for token in ids:
        if batch.done:
            break
        decoder.append(batch, torch.tensor([token]))
    assert batch.finished.item() and batch.stopped.item()
    (done,) = decoder.completions(batch)
    assert done.text == "Hello "
    assert done.finish_reason == "stop"


def test_max_new_tokens_gives_length_finish(tiny_policy):
    params = SamplingParams(max_new_tokens=4, temperature=1.0, seed=0)
    completions = Decoder(tiny_policy).generate([tiny_policy.render(USER)], 2, params)
    # a random 49k-vocabulary model almost never samples EOS in 4 steps
    assert [c.finish_reason for c in completions] == ["length", "length"]
    assert [c.generated_tokens for c in completions] == [4, 4]


def test_prompt_longer_than_context_fails_before_any_forward(tiny_policy):
    counters = ComputeCounters()
    too_long = [tiny_policy.pad_token_id] * (tiny_policy.context_length - 2)
    with pytest.raises(InvalidInputError, match="context of 512 tokens"):
        Decoder(tiny_policy, counters).generate([too_long], 2, SamplingParams(max_new_tokens=8))
    assert counters.forward_passes == 0


def test_bad_rows_argument(tiny_policy):
    prompt = tiny_policy.render(USER)
    with pytest.raises(InvalidInputError, match="rows"):
        Decoder(tiny_policy).start([prompt, prompt], rows=[1])
    with pytest.raises(InvalidInputError):
        Decoder(tiny_policy).start([], rows=1)


def test_sampling_filters():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.5]])
    top2 = filter_logits(logits, SamplingParams(temperature=1.0, top_k=2))
    assert torch.isfinite(top2).tolist() == [[False, True, True, False]]
    # top_p keeps the smallest set whose mass reaches p: the top token alone has > 0.5 here
    nucleus = filter_logits(logits, SamplingParams(temperature=1.0, top_p=0.5))
    assert torch.isfinite(nucleus).tolist() == [[False, True, False, False]]
    assert sample_tokens(logits, SamplingParams(temperature=0)).tolist() == [1]
    gen = torch.Generator().manual_seed(0)
    draws = {sample_tokens(logits, SamplingParams(temperature=1.0, top_k=1), gen).item() for _ in range(20)}
    assert draws == {1}


@pytest.mark.parametrize(
    "bad", [{"max_new_tokens": 0}, {"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"top_k": -1}]
)
def test_invalid_sampling_params(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


def test_sampler_draws_from_the_filtered_distribution():
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0])
    logits = probs.clamp_min(1e-30).log().expand(40_000, -1)
    gen = torch.Generator().manual_seed(0)
    draws = sample_tokens(logits, SamplingParams(temperature=1.0), gen)
    freq = torch.bincount(draws, minlength=5).float() / draws.numel()
    torch.testing.assert_close(freq[:4], probs[:4], atol=0.01, rtol=0)
    assert freq[4] == 0  # a zero-probability token is never drawn
    top2 = sample_tokens(logits, SamplingParams(temperature=1.0, top_k=2), gen)
    assert set(top2.tolist()) == {2, 3}


def test_preallocated_cache_layer_matches_dynamic_layer():
    from transformers.cache_utils import DynamicLayer

    from align_chains.engine.kv_cache import PreallocatedLayer

    torch.manual_seed(0)
    k, v = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    reference = DynamicLayer()
    reference.update(k, v)
    layer = PreallocatedLayer(k, v, capacity=6)  # room for one token, then it must grow
    for step in range(4):
        nk, nv = torch.randn(2, 3, 1, 4), torch.randn(2, 3, 1, 4)
        expected = reference.update(nk, nv)
        got = layer.update(nk, nv)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
        assert layer.get_seq_length() == reference.get_seq_length() == 6 + step
    rows = torch.tensor([1, 1, 0])
    reference.batch_select_indices(rows)
    layer.batch_select_indices(rows)
    nk, nv = torch.randn(3, 3, 1, 4), torch.randn(3, 3, 1, 4)
    assert torch.equal(layer.update(nk, nv)[0], reference.update(nk, nv)[0])
    layer.crop(-2)
    assert layer.get_seq_length() == 8 and torch.equal(layer.keys, reference.keys[:, :, :8])


def test_restart_samples_again_from_the_cached_prompts(tiny_policy):
    short, long = tiny_policy.render(OTHER), tiny_policy.render(USER)
    counters = ComputeCounters()
    decoder = Decoder(tiny_policy, counters)
    params = SamplingParams(max_new_tokens=6, temperature=1.0)
    batch = decoder.start([short, long], rows=2, params=params)
    decoder.extend(batch, generator=make_generator(0, tiny_policy.device))
    prefilled = counters.prompt_tokens
    again = decoder.restart(batch, [3, 1])
    assert again.prompt_index.tolist() == [0, 0, 0, 1]
    assert counters.prompt_tokens == prefilled  # nothing prefilled twice
    torch.testing.assert_close(
        decoder.logits(again)[[0, 3]],
        torch.stack(
            [full_forward_logits(tiny_policy, short)[-1], full_forward_logits(tiny_policy, long)[-1]]
        ),
        atol=1e-4,
        rtol=1e-4,
    )
    decoder.extend(again, 4, generator=make_generator(1, tiny_policy.device))
    logits = decoder.logits(again)
    for row, prompt in enumerate([short, short, short, long]):
        expected = full_forward_logits(tiny_policy, prompt + again.tokens[row].tolist())[-1]
        torch.testing.assert_close(logits[row], expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(InvalidInputError, match="one non-negative count per prompt"):
        decoder.restart(again, [1])


def test_forward_run_over_a_left_padded_cache_matches_unpadded_passes(tiny_policy):
    """engine/forward.py: a block of new tokens (one of them padding) over a left-padded cache
    sees exactly its own row, as a plain pass over the unpadded sequence does."""
    from align_chains.engine.forward import prefill_left_padded, run

    short, long = tiny_policy.render(OTHER), tiny_policy.render(USER)
    prefill = prefill_left_padded(
        tiny_policy.model, [short, long], tiny_policy.pad_token_id, tiny_policy.device
    )
    assert prefill.mask.sum(-1).tolist() == [len(short), len(long)]
    new = torch.tensor([[tiny_policy.pad_token_id, 11, 12], [13, 14, 15]])
    new_mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    out = run(tiny_policy.model, new, cache=prefill.cache, past_mask=prefill.mask, new_mask=new_mask)
    assert (
        out.mask.shape == (2, prefill.mask.shape[1] + 3) and out.cache.get_seq_length() == out.mask.shape[1]
    )
    for row, ids in enumerate([[*short, 11, 12], [*long, 13, 14, 15]]):
        expected = full_forward_logits(tiny_policy, ids)[-2:]
        torch.testing.assert_close(out.logits[row, -2:].float(), expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="exactly one of tokens and embeds"):
        run(tiny_policy.model)
