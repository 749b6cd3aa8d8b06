"""SEA on tiny models: the soft reward paths, the bridge, the loop, its stopping rules and errors."""

from __future__ import annotations

import math

import pytest
import torch

from align_chains.engine import SamplingParams
from align_chains.errors import InvalidInputError
from align_chains.models.policy import Policy
from align_chains.rewards import CallableReward, ClassifierReward, JudgeReward, RewardModel
from align_chains.rewards.soft import SoftScorer
from align_chains.rewards.vocab_bridge import vocabulary_bridge
from align_chains.strategies import SEA, get_strategy
from align_chains.strategies.sea import noise_level

PROMPT = "Tell me about the sea."
PARAMS = SamplingParams(max_new_tokens=8, temperature=0.8, seed=0)


@pytest.fixture(scope="module")
def minilm_tokenizer():
    from transformers import AutoTokenizer

    from align_chains.models.embedded import minilm_dir

    return AutoTokenizer.from_pretrained(str(minilm_dir()))


class TargetTokensReward(RewardModel):
    """Differentiable toy reward: the share of response positions on a set of target tokens.

    Hard score: the share of the text's tokens in the set. Soft score: the mean probability
    the relaxed response puts on the set. ``nan_rows`` makes the soft score NaN on those rows.
    """

    def __init__(self, policy: Policy, targets: list[int], nan_rows: tuple[int, ...] = ()) -> None:
        self.policy = policy
        self.targets = torch.tensor(targets)
        self.nan_rows = nan_rows
        self.name = "target-tokens"

    def _score(self, prompts, responses):
        scores = []
        for text in responses:
            ids = self.policy.tokenizer(text, add_special_tokens=False)["input_ids"]
            scores.append(sum(i in set(self.targets.tolist()) for i in ids) / max(len(ids), 1))
        return scores

    def soft_scorer(self, prompts, rows, policy) -> SoftScorer:
        reward = self

        class Scorer(SoftScorer):
            def __call__(self, probs):
                value = probs[..., reward.targets].sum(-1).mean(-1)
                if reward.nan_rows:
                    bad = torch.zeros_like(value, dtype=torch.bool)
                    bad[list(reward.nan_rows)] = True
                    value = torch.where(bad, torch.full_like(value, float("nan")), value)
                return value

        return Scorer()


class ConstantSoftReward(TargetTokensReward):
    """Scores every text the same: nothing ever improves."""

    def _score(self, prompts, responses):
        return [0.5] * len(responses)


def common_tokens(policy: Policy) -> list[int]:
    words = [" the", " sea", " is", " blue", " and", ".", " water", " wave"]
    return sorted({policy.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in words})


# -- the noise schedule ------------------------------------------------------------------------
def test_noise_schedule_matches_the_published_one_at_200_iterations():
    levels = (0.1, 0.05, 0.01, 0.001)
    got = {it: noise_level(it, 200, levels) for it in (1, 50, 51, 100, 101, 150, 151, 200)}
    assert got == {1: 0.1, 50: 0.1, 51: 0.05, 100: 0.05, 101: 0.01, 150: 0.01, 151: 0.001, 200: 0.001}


def test_noise_schedule_scales_to_fewer_iterations():
    levels = (0.1, 0.05, 0.01, 0.001)
    assert [noise_level(it, 8, levels) for it in range(1, 9)] == [
        0.1,
        0.1,
        0.05,
        0.05,
        0.01,
        0.01,
        0.001,
        0.001,
    ]
    assert noise_level(1, 1, levels) == 0.1
    assert noise_level(3, 10, ()) == 0.0


# -- the vocabulary bridge ----------------------------------------------------------------------
def test_bridge_matches_tokens_by_normalised_string(smol_tokenizer, minilm_tokenizer):
    bridge = vocabulary_bridge(smol_tokenizer, minilm_tokenizer)
    pairs = dict(zip(bridge.sources.tolist(), bridge.targets.tolist(), strict=True))

    def mapped(text):
        (pid,) = smol_tokenizer(text, add_special_tokens=False)["input_ids"]
        return minilm_tokenizer.convert_ids_to_tokens(pairs[pid]) if pid in pairs else None

    assert mapped(" sleep") == "sleep"  # word-initial BPE piece -> WordPiece word
    assert mapped(" Hello") == "hello"  # case folded: MiniLM lowercases
    assert mapped("ing") == "##ing"  # continuation -> continuation
    assert mapped(".") == "."  # punctuation is a word in WordPiece
    assert not bridge.exact and 0.3 < bridge.coverage < 1.0
    # sparse: two index vectors, never a V x V matrix
    assert bridge.sources.ndim == 1 and bridge.sources.shape == bridge.targets.shape
    assert bridge.size < len(smol_tokenizer)


def test_bridge_sends_no_gradient_to_unmatched_tokens(smol_tokenizer, minilm_tokenizer):
    bridge = vocabulary_bridge(smol_tokenizer, minilm_tokenizer)
    vocab = len(smol_tokenizer)
    probs = torch.full((1, 2, vocab), 1.0 / vocab, requires_grad=True)
    weight = torch.randn(len(minilm_tokenizer), 4)
    bridge.embed(probs, weight).sum().backward()
    matched = torch.zeros(vocab, dtype=torch.bool)
    matched[bridge.sources] = True
    assert torch.all(probs.grad[..., ~matched] == 0)
    assert torch.any(probs.grad[..., matched] != 0)


def test_bridge_puts_unmatched_mass_on_the_unknown_token(smol_tokenizer, minilm_tokenizer):
    bridge = vocabulary_bridge(smol_tokenizer, minilm_tokenizer)
    unmatched = next(i for i in range(len(smol_tokenizer)) if i not in set(bridge.sources.tolist()))
    weight = torch.randn(len(minilm_tokenizer), 4)
    one_hot = torch.nn.functional.one_hot(torch.tensor([[unmatched]]), len(smol_tokenizer)).float()
    assert torch.allclose(bridge.embed(one_hot, weight)[0, 0], weight[minilm_tokenizer.unk_token_id])


def test_same_tokenizer_is_an_exact_bridge(smol_tokenizer):
    bridge = vocabulary_bridge(smol_tokenizer, smol_tokenizer)
    assert bridge.exact and bridge.coverage == 1.0
    probs = torch.softmax(torch.randn(1, 3, len(smol_tokenizer)), -1)
    weight = torch.randn(len(smol_tokenizer), 4)
    assert torch.allclose(bridge.embed(probs, weight), probs @ weight, atol=1e-5)


# -- exact soft paths ----------------------------------------------------------------------------
def _one_hot_of(policy: Policy, text: str) -> torch.Tensor:
    ids = policy.tokenizer(text, add_special_tokens=False)["input_ids"]
    return torch.nn.functional.one_hot(torch.tensor([ids]), policy.vocab_size).float()


def test_judge_soft_score_of_a_one_hot_response_equals_its_hard_score(tiny_policy):
    judge = JudgeReward(tiny_policy, principle="Be kind.")
    text = "The sea is large and blue."
    scorer = judge.soft_scorer([PROMPT], [0], tiny_policy)
    assert scorer.path == "exact" and scorer.coverage == 1.0
    soft = scorer(_one_hot_of(tiny_policy, text))
    assert soft.shape == (1,)
    assert soft.item() == pytest.approx(judge.score([PROMPT], [text])[0], abs=1e-4)


def test_classifier_soft_score_of_a_one_hot_response_equals_its_hard_score(tiny_policy, tiny_classifier):
    reward = ClassifierReward(tiny_classifier, tiny_policy.tokenizer, name="tiny-rm")
    texts = ["The sea is large.", "Waves."]
    scorer = reward.soft_scorer([PROMPT, "Hi"], [0, 1], tiny_policy)
    hard = reward.score([PROMPT, "Hi"], texts)
    for row, text in enumerate(texts):
        probs = _one_hot_of(tiny_policy, text).expand(2, -1, -1)
        assert scorer(probs)[row].item() == pytest.approx(hard[row], abs=1e-4)


def test_soft_scores_carry_gradients_to_the_distributions(tiny_policy, tiny_classifier):
    reward = ClassifierReward(tiny_classifier, tiny_policy.tokenizer)
    scorer = reward.soft_scorer([PROMPT], [0, 0], tiny_policy)
    logits = torch.randn(2, 4, tiny_policy.vocab_size, requires_grad=True)
    scorer(logits.softmax(-1)).sum().backward(inputs=[logits])
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # SEA moves only the logits: neither the reward nor the policy gets gradients
    SEA(chains=1, iterations=2, revise=False).run(PROMPT, tiny_policy, reward, PARAMS)
    assert all(p.grad is None for p in tiny_classifier.parameters())
    assert all(p.grad is None for p in tiny_policy.model.parameters())


def test_a_classifier_with_another_tokenizer_goes_through_the_bridge(tiny_policy, minilm_tokenizer):
    from transformers import LlamaForSequenceClassification

    from tests.conftest import tiny_llama_config

    torch.manual_seed(3)
    config = tiny_llama_config(minilm_tokenizer, num_labels=1, pad_token_id=minilm_tokenizer.pad_token_id)
    reward = ClassifierReward(LlamaForSequenceClassification(config), minilm_tokenizer, name="bert-vocab-rm")
    scorer = reward.soft_scorer([PROMPT], [0], tiny_policy)
    assert scorer.path == "bridge" and 0 < scorer.coverage < 1
    result = SEA(chains=2, iterations=3, revise=False).run(PROMPT, tiny_policy, reward, PARAMS)
    assert result.details["reward_path"] == "bridge"
    assert result.details["vocab_coverage"] == pytest.approx(scorer.coverage)
    assert all(math.isfinite(r["soft_reward"]) for r in result.trace if r["iteration"] > 0)


# -- the loop ------------------------------------------------------------------------------------
def test_soft_reward_rises_over_iterations(tiny_policy):
    reward = TargetTokensReward(tiny_policy, common_tokens(tiny_policy))
    # the random tiny policy ranks the target tokens nowhere in particular: decode unrestricted
    sea = SEA(
        chains=2, iterations=12, lr=0.5, nll_weight=0.0, patience=None, revise=False,
        decode_top_k=tiny_policy.vocab_size,
    )  # fmt: skip
    result = sea.run(PROMPT, tiny_policy, reward, PARAMS)
    soft = {}
    for record in result.trace:
        if record["iteration"] > 0:
            soft.setdefault(record["iteration"], []).append(record["soft_reward"])
    first, last = sum(soft[1]) / 2, sum(soft[12]) / 2
    assert last > first + 0.2
    # the decoded texts follow: the best hard reward beats the initial samples'
    initial = max(r["hard_reward"] for r in result.trace if r["iteration"] == 0)
    assert result.reward > initial


def test_optimised_answers_end_at_a_stop_string_like_sampled_ones(tiny_policy):
    """A stop string cuts the optimised texts (scored as cut) and drops the tokens after it."""
    reward = TargetTokensReward(tiny_policy, common_tokens(tiny_policy))
    sea = SEA(
        chains=2, iterations=6, lr=0.5, nll_weight=0.0, patience=None, revise=False,
        decode_top_k=tiny_policy.vocab_size,
    )  # fmt: skip
    free = sea.run(PROMPT, tiny_policy, reward, PARAMS)
    stop = " wave"  # a target token, so the optimised texts contain it
    assert any(stop in r["text"] for r in free.trace if r["iteration"] > 0)
    result = sea.run(PROMPT, tiny_policy, reward, PARAMS.model_copy(update={"stop": (stop,)}))
    optimised = [r for r in result.trace if r["iteration"] > 0]
    assert optimised and all(stop not in r["text"] for r in optimised)
    assert all(stop not in c.text for c in result.candidates)
    cut = [c for c in result.candidates if c.meta["iteration"] > 0 and c.finish_reason == "stop"]
    assert cut
    for c in cut:  # the tokens end with the one completing the stop string, as the decoder's do
        assert len(c.logprobs) == len(c.token_ids)
        assert stop in tiny_policy.decode(c.token_ids) and stop not in tiny_policy.decode(c.token_ids[:-1])


def test_trace_has_soft_and_hard_rewards_per_chain_and_iteration(tiny_policy):
    reward = TargetTokensReward(tiny_policy, common_tokens(tiny_policy))
    result = SEA(chains=3, iterations=4, patience=None, revise=False).run(PROMPT, tiny_policy, reward, PARAMS)
    assert {(r["chain"], r["iteration"]) for r in result.trace} == {
        (c, i) for c in range(3) for i in range(5)
    }
    for record in result.trace:
        assert {"soft_reward", "hard_reward", "nll", "energy", "noise", "text"} <= set(record)
    assert result.details["iterations"] == 4 and result.details["iterations_per_chain"] == [4, 4, 4]
    assert len(result.candidates) == 3
    assert result.reward == max(c.reward for c in result.candidates)


def test_patience_stops_a_chain_that_stops_improving(tiny_policy):
    reward = ConstantSoftReward(tiny_policy, common_tokens(tiny_policy))
    result = SEA(chains=2, iterations=20, patience=3, revise=False).run(PROMPT, tiny_policy, reward, PARAMS)
    assert result.details["iterations_per_chain"] == [3, 3]
    # nothing beat the initial samples, so they are what each chain keeps
    assert all(c.meta["iteration"] == 0 for c in result.candidates)


def test_revise_rewrites_each_chain_best_text_greedily(tiny_policy):
    from align_chains.engine import Decoder
    from align_chains.strategies.sea import REVISE_INSTRUCTION

    reward = TargetTokensReward(tiny_policy, common_tokens(tiny_policy))
    result = SEA(chains=2, iterations=2, patience=None).run(PROMPT, tiny_policy, reward, PARAMS)
    kinds = [c.meta["kind"] for c in result.candidates]
    assert kinds == ["optimized", "optimized", "revised", "revised"]
    for optimized, revised in zip(result.candidates[:2], result.candidates[2:], strict=True):
        conversation = [
            {"role": "user", "content": PROMPT},
            {"role": "assistant", "content": optimized.text},
            {"role": "user", "content": REVISE_INSTRUCTION},
        ]
        greedy = SamplingParams(max_new_tokens=PARAMS.max_new_tokens, temperature=0.0)
        (expected,) = Decoder(tiny_policy).generate([tiny_policy.render(conversation)], 1, greedy)
        assert revised.text == expected.text
        assert revised.reward == pytest.approx(reward.score([PROMPT], [revised.text])[0])
    assert result.reward == max(c.reward for c in result.candidates)


def test_restricted_decode_equals_a_sequential_top_k_decode(tiny_policy):
    from align_chains.engine import ComputeCounters, Decoder
    from align_chains.strategies.sea_passes import PolicyPasses

    sea = SEA(chains=2, decode_top_k=3)
    ids = [tiny_policy.render([{"role": "user", "content": PROMPT}])]
    passes = PolicyPasses(tiny_policy, ComputeCounters(), sea.decode_top_k, PARAMS.max_new_tokens)
    decoder = Decoder(tiny_policy)
    batch = decoder.start(ids, 2, PARAMS)
    torch.manual_seed(0)
    variable = torch.randn(2, PARAMS.max_new_tokens, tiny_policy.vocab_size)
    hard = variable.argmax(-1)
    step_logits = passes.logits(batch, hard, keep_cache=True)
    tokens, _ = passes.restricted_decode(batch, variable, hard, step_logits)
    # reference: one token at a time, the top-k recomputed from the decoded prefix
    for row in range(2):
        prefix = list(ids[0])
        expected = []
        for t in range(PARAMS.max_new_tokens):
            with torch.no_grad():
                logits = tiny_policy.model(input_ids=torch.tensor([prefix])).logits[0, -1]
            top = logits.topk(3).indices
            token = int(top[variable[row, t, top].argmax()])
            expected.append(token)
            prefix.append(token)
        assert tokens[row].tolist() == expected
    assert batch.cache.get_seq_length() == batch.prompt_width  # the prompt cache is left as found


def test_same_seed_same_result(tiny_policy):
    reward = TargetTokensReward(tiny_policy, common_tokens(tiny_policy))
    sea = SEA(chains=2, iterations=3, patience=None)
    a = sea.run(PROMPT, tiny_policy, reward, PARAMS)
    b = sea.run(PROMPT, tiny_policy, reward, PARAMS)
    assert a.text == b.text
    assert [r["soft_reward"] for r in a.trace] == [r["soft_reward"] for r in b.trace]


def test_several_prompts_run_in_one_batch(tiny_policy):
    reward = TargetTokensReward(tiny_policy, common_tokens(tiny_policy))
    results = SEA(chains=2, iterations=2, revise=False).run_batch(
        [PROMPT, "Name a colour."], tiny_policy, reward, PARAMS
    )
    assert len(results) == 2
    assert results[0].prompt_tokens != results[1].prompt_tokens
    assert all(r.counters.batch_size == 2 for r in results)
    assert {t["prompt"] for t in results[1].trace} == {1}


def test_a_nonfinite_energy_stops_that_chain_and_keeps_its_best(tiny_policy):
    reward = TargetTokensReward(tiny_policy, common_tokens(tiny_policy), nan_rows=(0,))
    result = SEA(chains=2, iterations=4, patience=None, revise=False).run(PROMPT, tiny_policy, reward, PARAMS)
    assert result.flags["nonfinite_energy_chains"] == [0]
    assert result.details["iterations_per_chain"] == [1, 4]
    assert result.candidates[0].meta["iteration"] == 0  # chain 0 keeps its initial sample
    assert result.candidates[0].text == next(
        r["text"] for r in result.trace if r["chain"] == 0 and r["iteration"] == 0
    )


def test_time_budget_returns_the_best_so_far(tiny_policy):
    reward = TargetTokensReward(tiny_policy, common_tokens(tiny_policy))
    result = SEA(chains=2, iterations=50, time_budget_s=1e-6).run(PROMPT, tiny_policy, reward, PARAMS)
    assert result.flags["time_budget_exhausted"] is True
    assert result.flags["revise_skipped"] is True
    assert result.details["iterations"] == 0
    assert result.text and result.reward is not None


# -- errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "settings",
    [{"chains": 0}, {"iterations": 0}, {"lr": 0}, {"decode_top_k": 0}, {"patience": 0}, {"noise": (-0.1,)}],
)
def test_invalid_settings_fail_at_construction(settings):
    with pytest.raises(ValueError):
        SEA(**settings)


def test_invalid_length_fails_before_any_work():
    with pytest.raises(ValueError):
        SamplingParams(max_new_tokens=0)


def test_a_reward_without_a_soft_path_gets_a_clear_error(tiny_policy):
    reward = CallableReward(lambda p, r: 1.0, name="fn")
    with pytest.raises(InvalidInputError, match="best-of-n"):
        SEA(chains=1, iterations=1).run(PROMPT, tiny_policy, reward, PARAMS)


def test_registered_by_name():
    assert get_strategy("sea") is SEA


# -- the chat model ------------------------------------------------------------------------------
@pytest.fixture
def sea_chat(tiny_policy):
    from align_chains import SEAChatModel

    reward = TargetTokensReward(tiny_policy, common_tokens(tiny_policy))
    return SEAChatModel(
        policy=tiny_policy, reward=reward, chains=2, iterations=3, max_tokens=8, seed=0, patience=None
    )


def test_chat_model_reports_reward_iterations_and_compute(sea_chat):
    message = sea_chat.invoke("Tell me about the sea.")
    meta = message.response_metadata
    assert meta["strategy"] == "sea" and meta["model_name"] == "tiny-llama"
    assert meta["reward"] == max(c["reward"] for c in meta["candidates"])
    assert meta["iterations"] == 3 and meta["iterations_per_chain"] == [3, 3]
    assert meta["reward_path"] == "exact"
    compute = meta["compute"]
    # the prompt once, then the revise step's prompts (prompt + best text + instruction) once each
    usage = message.usage_metadata  # input tokens count every prefill; the rendered prompt is the rest
    assert usage["input_tokens"] == compute["prompt_tokens"]
    assert compute["prompt_tokens"] > 2 * (
        usage["input_tokens"] - usage["input_token_details"]["extra_prefill"]
    )
    assert compute["forward_passes"] > 3 and compute["reward_calls"] >= 3 and compute["seconds"] > 0


def test_chat_model_streams_the_answer_and_ends_with_usage(sea_chat):
    chunks = list(sea_chat.stream("Tell me about the sea."))
    assert "".join(c.content for c in chunks) == sea_chat.invoke("Tell me about the sea.").content
    assert chunks[-1].chunk_position == "last" and chunks[-1].usage_metadata is not None


def test_chat_model_settings_are_validated_at_construction():
    from pydantic import ValidationError

    from align_chains import SEAChatModel

    for bad in ({"chains": 0}, {"iterations": 0}, {"lr": 0.0}, {"decode_top_k": 0}, {"max_tokens": 0}):
        with pytest.raises(ValidationError):
            SEAChatModel(**bad)
    model = SEAChatModel()
    assert model._policy is None and model.reward == "judge"  # construction loads nothing


def test_chat_model_default_judge_shares_the_policy(tiny_policy):
    from align_chains import SEAChatModel

    policy, reward = SEAChatModel(policy=tiny_policy).load()
    assert isinstance(reward, JudgeReward) and reward.judge is policy


# -- the judge as an ordinary reward --------------------------------------------------------------
def test_judge_is_a_reward_for_every_strategy(tiny_policy):
    from align_chains.rewards import load_reward
    from align_chains.strategies import BestOfN

    judge = load_reward("judge", policy=tiny_policy, principle="Be kind.")
    assert isinstance(judge, JudgeReward) and judge.judge is tiny_policy and judge.principle == "Be kind."
    result = BestOfN(n=3).run(PROMPT, tiny_policy, judge, PARAMS)
    assert result.reward == max(judge.score([PROMPT] * 3, [c.text for c in result.candidates]))
    # log-odds: P(yes) and P(no) over the judge's single-token spellings
    assert all(len(tiny_policy.tokenizer.decode([i]).strip()) <= 3 for i in judge.yes_ids + judge.no_ids)


def test_judge_rejects_an_empty_principle(tiny_policy):
    with pytest.raises(InvalidInputError, match="principle"):
        JudgeReward(tiny_policy, principle="  ")


# -- the fluency guard ---------------------------------------------------------------------------
def test_repetition_rate_is_the_share_of_repeated_ngrams():
    from align_chains.strategies.fluency_guard import repetition_rate

    assert repetition_rate([1, 2, 1, 2, 1, 2], 2) == pytest.approx(1 - 2 / 5)
    assert repetition_rate([1, 2, 3, 4, 5], 2) == 0.0
    assert repetition_rate([7] * 10, 3) == pytest.approx(1 - 1 / 8)
    assert repetition_rate([1, 2], 3) == 0.0  # no 3-gram at all


def test_guard_verdicts_name_the_reason():
    from align_chains.strategies.fluency_guard import FluencyGuard

    guard = FluencyGuard(nll_margin=1.0, max_repetition=0.3, ngram=2)
    fluent = guard.check([1, 2, 3, 4], [-1.0, -2.0, -1.0, -2.0], reference_nll=1.0)
    assert fluent.admitted and fluent.nll == pytest.approx(1.5)
    assert guard.check([1, 2, 3, 4], [-3.0] * 4, reference_nll=1.0).reason == "nll"
    assert guard.check([5, 5, 5, 5, 5], [-1.0] * 5, reference_nll=1.0).reason == "repetition"
    assert guard.check([], [], reference_nll=1.0).reason == "empty"


def looping_reward(policy: Policy) -> TargetTokensReward:
    """Rewards putting every position on ' the': what scores best is a loop ('the the the ...')."""
    return TargetTokensReward(policy, policy.tokenizer(" the", add_special_tokens=False)["input_ids"][:1])


LOOP_SEA = {
    "chains": 2, "iterations": 12, "lr": 0.5, "nll_weight": 0.0, "patience": None, "revise": False,
    "guard_ngram": 2,
}  # fmt: skip


def test_guard_does_not_choose_a_looping_text_with_a_higher_reward(tiny_policy):
    from align_chains.strategies.fluency_guard import repetition_rate

    reward = looping_reward(tiny_policy)
    top_k = tiny_policy.vocab_size  # the random tiny policy ranks ' the' nowhere in particular
    unguarded = SEA(**LOOP_SEA, decode_top_k=top_k, fluency_guard=False).run(
        PROMPT, tiny_policy, reward, PARAMS
    )
    guarded = SEA(**LOOP_SEA, decode_top_k=top_k).run(PROMPT, tiny_policy, reward, PARAMS)
    # without the guard, the reward picks the loop
    assert repetition_rate(unguarded.best.token_ids, 2) > 0.3
    assert unguarded.details["fluency_guard"] == {"on": False}
    # with it (same seed, same optimisation), a text that does not loop and scores lower
    assert repetition_rate(guarded.best.token_ids, 2) <= 0.3
    assert guarded.reward < unguarded.reward
    excluded = guarded.details["fluency_guard"]["excluded"]
    assert excluded and all(e["kind"] == "optimized" for e in excluded)
    assert any(e["reason"] == "repetition" and e["reward"] == unguarded.reward for e in excluded)
    for e in excluded:  # each says why, with the numbers it was judged on
        assert e["reason"] in {"nll", "repetition"} and e["repetition"] is not None
        if e["reason"] == "repetition":
            assert e["repetition"] > 0.3
        else:
            assert e["nll"] > e["reference_nll"] + guarded.details["fluency_guard"]["nll_margin"]


def test_guard_falls_back_to_the_initial_samples_and_says_so(tiny_policy):
    reward = looping_reward(tiny_policy)
    settings = {**LOOP_SEA, "guard_ngram": 1, "guard_max_repetition": 0.0, "guard_nll_margin": 0.0}
    strict = SEA(**settings, decode_top_k=tiny_policy.vocab_size)
    result = strict.run(PROMPT, tiny_policy, reward, PARAMS)
    # every optimised text repeats ' the', so every chain keeps its sample, and the answer is one
    assert all(c.meta["iteration"] == 0 for c in result.candidates)
    assert result.flags["fluency_guard_fallback"] is True
    samples = [t for t in result.trace if t["iteration"] == 0]
    assert result.reward == max(t["hard_reward"] for t in samples)
    assert result.reward < max(e["reward"] for e in result.details["fluency_guard"]["excluded"])


def test_revisions_are_judged_under_the_plain_prompt_in_one_counted_pass(tiny_policy):
    reward = TargetTokensReward(tiny_policy, common_tokens(tiny_policy))
    base = {"chains": 2, "iterations": 2, "patience": None}
    unguarded = SEA(**base, fluency_guard=False).run(PROMPT, tiny_policy, reward, PARAMS)
    result = SEA(**base, guard_nll_margin=0.0).run(PROMPT, tiny_policy, reward, PARAMS)
    guard = result.details["fluency_guard"]
    assert guard["forward_passes"] == 1
    assert result.counters.forward_passes == unguarded.counters.forward_passes + 1
    prompt_ids = tiny_policy.render([{"role": "user", "content": PROMPT}])
    revised = [c for c in result.candidates if c.meta["kind"] == "revised"]
    assert len(revised) == 2
    for c in revised:
        with torch.inference_mode():  # reference: a full forward over plain prompt + the revision
            logits = (
                tiny_policy.model(input_ids=torch.tensor([[*prompt_ids, *c.token_ids]])).logits[0].float()
            )
        logp = torch.log_softmax(logits[len(prompt_ids) - 1 : -1], -1).gather(
            -1, torch.tensor(c.token_ids)[:, None]
        )
        assert c.meta["guard"]["nll"] == pytest.approx(float(-logp.mean()), abs=1e-3)
        excluded = c.meta["guard"]["nll"] > c.meta["guard"]["reference_nll"]  # margin 0
        assert (c.meta["guard"]["reason"] is not None) == (excluded or c.meta["guard"]["repetition"] > 0.3)
    admitted = [c for c in result.candidates if c.meta["guard"] is None or c.meta["guard"]["reason"] is None]
    assert result.reward == max(c.reward for c in admitted)
    excluded_revisions = [e["chain"] for e in guard["excluded"] if e["kind"] == "revised"]
    assert excluded_revisions == [c.meta["chain"] for c in revised if c.meta["guard"]["reason"] is not None]
