"""IVG (value-guided decoding) and the implicit reward, on tiny random models."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from align_chains.engine import ComputeCounters, Decoder, SamplingParams
from align_chains.engine.lockstep import Lockstep, View
from align_chains.errors import InvalidInputError
from align_chains.models.policy import Policy
from align_chains.rewards import CallableReward, ImplicitReward
from align_chains.rewards.implicit import with_principle
from align_chains.strategies import BestOfN, ValueGuided, get_strategy
from align_chains.strategies.value_guided import PAIR_GUIDANCE_SCALE, PRINCIPLE_GUIDANCE_SCALE, select_beams
from tests.conftest import tiny_llama_config

PARAMS = SamplingParams(max_new_tokens=12, temperature=0.7, top_k=50, seed=0)
PRINCIPLE = "Answer concisely and politely."


@pytest.fixture(scope="module")
def guide_pair(smol_tokenizer) -> ImplicitReward:
    """Two more random LMs on the policy's vocabulary: a 'tuned' and an 'untuned' guide."""
    from transformers import LlamaForCausalLM

    models = []
    for seed, name in ((2, "tuned-lm"), (3, "untuned-lm")):
        torch.manual_seed(seed)
        models.append(
            Policy(
                model=LlamaForCausalLM(tiny_llama_config(smol_tokenizer)), tokenizer=smol_tokenizer, name=name
            )
        )
    return ImplicitReward(*models)


@pytest.fixture
def length_reward_counted():
    calls = []

    def score(prompts, responses):
        calls.append(len(responses))
        return [float(len(r)) for r in responses]

    reward = CallableReward(score, batched=True, name="length")
    reward.calls = calls
    return reward


def full_logits(policy: Policy, prompt: list[int], tokens: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return policy.model(input_ids=torch.tensor([[*prompt, *tokens]])).logits[0, -1].float()


def test_lockstep_select_keeps_every_views_cache_consistent(tiny_policy, guide_pair):
    convs = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "Name three colours."}]]
    views = [View(tiny_policy, [tiny_policy.render(c) for c in convs]), *guide_pair.views(convs)]
    views.append(View(tiny_policy, [tiny_policy.render(with_principle(c, PRINCIPLE)) for c in convs]))
    lock = Lockstep(views, [2, 1], SamplingParams(max_new_tokens=8), ComputeCounters())
    assert lock.size == 3
    rows: list[list[int]] = [[], [], []]
    prompt_of_row = [0, 0, 1]
    for step, order in enumerate([None, [2, 0, 0, 1], None, [3, 1]]):
        tokens = torch.tensor([100 + 7 * i + step for i in range(lock.size)])
        lock.append(tokens)
        rows = [[*r, int(t)] for r, t in zip(rows, tokens, strict=True)]
        if order is not None:
            lock.select(torch.tensor(order))
            rows = [list(rows[i]) for i in order]
            prompt_of_row = [prompt_of_row[i] for i in order]
    for v, view in enumerate(views):
        logits = lock.logits(v)
        for i, tokens in enumerate(rows):
            expected = full_logits(view.policy, view.prompts[prompt_of_row[i]], tokens)
            torch.testing.assert_close(logits[i], expected, atol=1e-4, rtol=1e-4)


def test_principle_views_share_one_forward_per_token(tiny_policy):
    result = ValueGuided(principle=PRINCIPLE, chunk_value="none").run(
        "Hi", tiny_policy, CallableReward(lambda p, r: 0.0), PARAMS
    )
    steps = len(result.best.token_ids) + (result.finish_reason == "stop")
    assert result.counters.forward_passes == steps  # one prefill, then one forward per fed token
    plain = len(tiny_policy.render([{"role": "user", "content": "Hi"}]))
    principled = len(tiny_policy.render(with_principle([{"role": "user", "content": "Hi"}], PRINCIPLE)))
    assert result.counters.prompt_tokens == plain + principled


def test_token_guidance_with_zero_weight_or_identical_guides_is_plain_sampling(tiny_policy, length_reward):
    plain = Decoder(tiny_policy).generate(
        [tiny_policy.render([{"role": "user", "content": "Hi"}])], 1, PARAMS
    )
    zero = ValueGuided(principle=PRINCIPLE, w=0.0, chunk_value="none").run(
        "Hi", tiny_policy, length_reward, PARAMS
    )
    same = ImplicitReward(tiny_policy, tiny_policy)  # tuned == untuned: the difference is zero
    cancel = ValueGuided(chunk_value="none").run_batch(
        ["Hi"], tiny_policy, length_reward, PARAMS, guide=same
    )[0]
    assert zero.best.token_ids == plain[0].token_ids == cancel.best.token_ids
    guided = ValueGuided(principle=PRINCIPLE, w=3.0, chunk_value="none").run(
        "Hi", tiny_policy, length_reward, PARAMS
    )
    assert guided.best.token_ids != plain[0].token_ids


def test_principle_mode_at_w_1_is_just_the_principled_prompt(tiny_policy, length_reward):
    """With untuned = base, base + 1 * (tuned - base) is the principled prompt: the same tokens."""
    principled = Decoder(tiny_policy).generate(
        [tiny_policy.render(with_principle([{"role": "user", "content": "Hi"}], PRINCIPLE))], 1, PARAMS
    )
    at_one = ValueGuided(principle=PRINCIPLE, w=1.0, chunk_value="none").run(
        "Hi", tiny_policy, length_reward, PARAMS
    )
    assert at_one.best.token_ids == principled[0].token_ids
    default = ValueGuided(principle=PRINCIPLE, chunk_value="none").run(
        "Hi", tiny_policy, length_reward, PARAMS
    )
    assert default.details["w"] == PRINCIPLE_GUIDANCE_SCALE > 1
    assert default.best.token_ids != principled[0].token_ids


def test_default_guidance_scale_depends_on_the_guide(tiny_policy, guide_pair, length_reward):
    assert ValueGuided(principle=PRINCIPLE).guidance_scale(None) == PRINCIPLE_GUIDANCE_SCALE
    assert ValueGuided().guidance_scale(guide_pair) == PAIR_GUIDANCE_SCALE == 1.0
    principle_guide = ImplicitReward(tiny_policy, principle=PRINCIPLE)
    assert ValueGuided().guidance_scale(principle_guide) == PRINCIPLE_GUIDANCE_SCALE
    assert ValueGuided(principle=PRINCIPLE, w=1.25).guidance_scale(None) == 1.25  # set: used as is
    paired = ValueGuided(chunk_value="none").run_batch(
        ["Hi"], tiny_policy, length_reward, PARAMS, guide=guide_pair
    )
    assert paired[0].details["w"] == 1.0


def test_token_level_alone_with_a_guide_pair(tiny_policy, guide_pair, length_reward):
    result = ValueGuided(chunk_value="none").run_batch(
        ["Hi", "Name a fruit."], tiny_policy, length_reward, PARAMS, guide=guide_pair
    )
    for r in result:
        assert r.details["token_guidance"] and r.details["chunk_value"] == "none"
        assert r.details["guide"] == "implicit(tuned-lm vs untuned-lm)"
        assert len(r.candidates) == 1 and r.reward == float(len(r.text))  # scored once by the reward
    # three models step together: one forward each per token
    assert result[0].counters.forward_passes == 3 * max(
        r.best.num_tokens + (r.finish_reason == "stop") for r in result
    )


def test_chunk_level_alone_with_a_reward_model(tiny_policy, length_reward_counted):
    strategy = ValueGuided(token_guidance=False, chunk_value="reward", beams=2, samples=3, chunk_tokens=4)
    result = strategy.run("Hi", tiny_policy, length_reward_counted, PARAMS)
    assert result.details["guide"] is None and not result.details["token_guidance"]
    assert len(result.candidates) == 6
    assert result.reward == max(c.reward for c in result.candidates) == float(len(result.text))
    chunks = len(length_reward_counted.calls)
    assert chunks == 3 and length_reward_counted.calls == [6] * 3  # 12 tokens / 4 per chunk
    assert result.counters.reward_calls == chunks
    values = [r["value"] for r in result.trace if r["step"] == 4]
    assert len(values) == 6


def test_chunk_selection_keeps_the_top_beams(tiny_policy, length_reward):
    """After each chunk the K copies of the best W beams share that beam's prefix."""
    strategy = ValueGuided(token_guidance=False, chunk_value="reward", beams=1, samples=4, chunk_tokens=3)
    result = strategy.run(
        "Hi", tiny_policy, length_reward, SamplingParams(max_new_tokens=6, temperature=1.0, seed=1)
    )
    first_chunk = [r["value"] for r in result.trace if r["step"] == 3]
    assert len(first_chunk) == 4 and len(set(first_chunk)) > 1
    # every final candidate continues the same first-chunk beam: the longest one
    (prefix,) = {tuple(c.token_ids[:3]) for c in result.candidates}
    assert float(len(tiny_policy.decode(prefix))) == max(first_chunk)


def test_spread_cuts_ties_toward_parents_not_yet_kept():
    parents = torch.tensor([[0, 0, 1, 1]])
    # the best row is parent 0's; the second place is a tie of three: parent 1's first child wins
    assert select_beams(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), parents, 2, "spread").tolist() == [[0, 2]]
    # all sixteen rows tied (4 beams x 4 samples): one child of every parent, in row order
    parents16 = torch.arange(4).repeat_interleave(4)[None]
    assert select_beams(torch.zeros(1, 16), parents16, 4, "spread").tolist() == [[0, 4, 8, 12]]
    # three of parent 0's children outrank the rest and are kept; the tied fourth place goes to parent 1
    values = torch.tensor([[1.0, 1.0, 1.0, 0.0] + [0.0] * 12])
    assert select_beams(values, parents16, 4, "spread").tolist() == [[0, 1, 2, 4]]
    # a finished beam's extra copies (-inf) come after every finite row
    values = torch.tensor([[0.5, float("-inf"), 0.0, 0.0]])
    assert select_beams(values, parents, 2, "spread").tolist() == [[0, 2]]


def test_spread_selects_what_order_selects_when_values_are_distinct():
    generator = torch.Generator().manual_seed(0)
    for beams, samples in ((2, 2), (4, 4), (3, 5)):
        width = beams * samples
        values = torch.rand(6, width, generator=generator)  # distinct with probability 1
        parents = torch.randint(0, beams, (6, width), generator=generator)
        order = select_beams(values, parents, beams, "order")
        assert torch.equal(select_beams(values, parents, beams, "spread"), order)
        assert torch.equal(order, values.topk(beams, dim=-1).indices)


def test_spread_keeps_every_lineage_when_the_reward_ties(tiny_policy):
    """A reward that scores every partial answer alike: 'spread' keeps one child of each parent at
    every decision, so the final rows continue both first-chunk beams; seeded runs repeat exactly."""
    flat = CallableReward(lambda prompt, response: 0.0, name="flat")
    strategy = ValueGuided(
        token_guidance=False, chunk_value="reward", beams=2, samples=2, chunk_tokens=3, ties="spread"
    )
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=3)
    result = strategy.run("Hi", tiny_policy, flat, params)
    assert result.details["ties"] == "spread"
    decisions = {}
    for record in result.trace:
        if "kept" in record:
            decisions.setdefault(record["step"], []).append(record)
    assert sorted(decisions) == [3, 6, 9]  # the last chunk's values are the final pick
    for records in decisions.values():
        kept = [r for r in records if r["kept"]]
        assert len(kept) == 2 and len({r["parent"] for r in kept}) == 2
    assert len({tuple(c.token_ids[:3]) for c in result.candidates}) == 2
    again = strategy.run("Hi", tiny_policy, flat, params)
    assert [c.token_ids for c in again.candidates] == [c.token_ids for c in result.candidates]
    assert again.trace == result.trace


def test_chunk_level_with_the_implicit_reward_reuses_decoded_logprobs(tiny_policy):
    strategy = ValueGuided(principle=PRINCIPLE, token_guidance=False, chunk_value="implicit", chunk_tokens=5)
    result = strategy.run("Hi", tiny_policy, CallableReward(lambda p, r: 0.0), PARAMS)
    assert result.details["value"] == "implicit"
    conv = [{"role": "user", "content": "Hi"}]
    implicit = ImplicitReward(tiny_policy, principle=PRINCIPLE)
    tuned, untuned = implicit.views([conv])
    tokens = result.best.token_ids + (
        [tiny_policy.eos_token_ids[0]] if result.finish_reason == "stop" else []
    )
    from align_chains.rewards.implicit import _response_logprob

    expected = _response_logprob(tuned, [tokens]) - _response_logprob(untuned, [tokens])
    assert result.reward == pytest.approx(float(expected[0]), abs=1e-3)
    assert result.counters.forward_passes <= PARAMS.max_new_tokens  # the implicit value cost no extra forward


def test_both_signals_together(tiny_policy, length_reward):
    result = ValueGuided(principle=PRINCIPLE, chunk_tokens=4).run_batch(
        ["Hi", "Name a fruit."], tiny_policy, length_reward, PARAMS
    )
    for r in result:
        assert r.details["token_guidance"] and r.details["chunk_value"] == "implicit"
        assert r.details["beams"] == 2 and r.details["samples"] == 2 and len(r.candidates) == 4
        assert r.reward == max(c.reward for c in r.candidates)


def test_implicit_reward_ranks_candidates_for_best_of_n(tiny_policy):
    implicit = ImplicitReward(tiny_policy, principle=PRINCIPLE)
    result = BestOfN(n=3).run("Hi", tiny_policy, implicit, PARAMS)
    assert result.reward == max(c.reward for c in result.candidates)
    conv = [{"role": "user", "content": "Hi"}]
    text = result.candidates[0].text
    ids = tiny_policy.tokenizer(text, add_special_tokens=False)["input_ids"]
    tuned = tiny_policy.render(with_principle(conv, PRINCIPLE))
    plain = tiny_policy.render(conv)

    def logprob(prompt: list[int]) -> float:
        with torch.inference_mode():
            logits = tiny_policy.model(input_ids=torch.tensor([[*prompt, *ids]])).logits[0].float()
        lp = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
        return float(lp.gather(-1, torch.tensor(ids)[:, None]).sum())

    assert implicit.score(["Hi"], [text])[0] == pytest.approx(logprob(tuned) - logprob(plain), abs=1e-3)


def test_streamed_tokens_are_a_prefix_shared_by_the_beams(tiny_policy, length_reward):
    seen: list[int] = []
    result = ValueGuided(
        token_guidance=False, chunk_value="reward", beams=1, samples=2, chunk_tokens=3
    ).run_batch(["Hi"], tiny_policy, length_reward, PARAMS, on_commit=lambda p, ids: seen.extend(ids))[0]
    assert seen and result.best.token_ids[: len(seen)] == seen


def test_vocabulary_mismatch_is_refused_naming_the_models(smol_tokenizer, tiny_policy, length_reward):
    from transformers import AutoTokenizer, LlamaForCausalLM

    from align_chains.models.embedded import minilm_dir

    bert = AutoTokenizer.from_pretrained(str(minilm_dir()))
    other = Policy(
        model=LlamaForCausalLM(tiny_llama_config(bert, pad_token_id=0)), tokenizer=bert, name="bert-lm",
        chat_template=smol_tokenizer.chat_template,
    )  # fmt: skip
    guide = ImplicitReward(other, principle=PRINCIPLE)
    with pytest.raises(InvalidInputError, match=r"Value guidance \(IVG\).*'bert-lm'.*'tiny-llama'"):
        ValueGuided().run_batch(["Hi"], tiny_policy, length_reward, PARAMS, guide=guide)


@pytest.mark.parametrize(
    "settings",
    [
        {"beams": 0},
        {"samples": 0},
        {"chunk_tokens": 0},
        {"w": -0.5},
        {"w": float("inf")},
        {"principle": ""},
        {"ties": "keep"},
    ],
)
def test_invalid_settings_are_rejected(settings):
    with pytest.raises(ValidationError):
        ValueGuided(**settings)


def test_implicit_guidance_without_a_guide_fails_before_work(tiny_policy, length_reward):
    calls = []
    hook = tiny_policy.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(InvalidInputError, match="needs a guide"):
            ValueGuided(token_guidance=True).run("Hi", tiny_policy, length_reward, PARAMS)
        with pytest.raises(InvalidInputError, match="plain"):
            ValueGuided(principle=PRINCIPLE, token_guidance=False, chunk_value="none").run(
                "Hi", tiny_policy, length_reward, PARAMS
            )
    finally:
        hook.remove()
    assert calls == []
    with pytest.raises(InvalidInputError, match="untuned"):
        ImplicitReward(tiny_policy)


def test_registered_under_its_alias():
    assert get_strategy("ivg") is ValueGuided and get_strategy("value-guided") is ValueGuided
