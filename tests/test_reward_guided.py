"""ARGS (reward-guided token search) as plain Python, on tiny random models."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from reference.naive_args import NaiveClassifierScorer

from align_chains.engine import ComputeCounters, Decoder, SamplingParams
from align_chains.errors import InvalidInputError, RewardError
from align_chains.models.policy import Policy
from align_chains.rewards import CallableReward, ClassifierReward, ImplicitReward
from align_chains.rewards.implicit import ImplicitBranchScorer
from align_chains.rewards.incremental import ClassifierBranchScorer, TextBranchScorer
from align_chains.strategies import RewardGuided, get_strategy
from align_chains.strategies.reward_guided import branch_scorer
from tests.conftest import tiny_llama_config

PARAMS = SamplingParams(max_new_tokens=12, temperature=1.0, seed=0)
PROMPTS = ["Name a fruit.", [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}]]


@pytest.fixture(scope="module")
def classifier_reward(smol_tokenizer, tiny_classifier) -> ClassifierReward:
    tiny_classifier.float()
    return ClassifierReward(tiny_classifier, smol_tokenizer, name="tiny-rm")


@pytest.fixture(scope="module")
def bert_vocab_reward() -> ClassifierReward:
    """A classifier reward whose tokenizer is not the policy's (MiniLM's BERT vocabulary)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from align_chains.models.embedded import minilm_dir

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()))
    torch.manual_seed(4)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return ClassifierReward(LlamaForSequenceClassification(config), tokenizer, name="bert-vocab-rm")


@pytest.mark.parametrize("mode", ["greedy", "sample"])
def test_incremental_scoring_picks_the_same_tokens_as_the_naive_reference(
    tiny_policy, classifier_reward, mode
):
    strategy = RewardGuided(k=6, w=5.0, mode=mode)
    ours = strategy.run_batch(PROMPTS, tiny_policy, classifier_reward, PARAMS)
    naive = strategy.run_batch(
        PROMPTS,
        tiny_policy,
        classifier_reward,
        PARAMS,
        scorer=NaiveClassifierScorer(classifier_reward, ComputeCounters()),
    )
    assert ours[0].details["scoring"] == "ClassifierBranchScorer"
    for a, b in zip(ours, naive, strict=True):
        assert a.best.token_ids == b.best.token_ids
        assert len(a.trace) == len(b.trace) > 0
        for x, y in zip(a.trace, b.trace, strict=True):
            assert x["reward"] == pytest.approx(y["reward"], abs=1e-4)
    # the reward actually steered: some tokens were not the policy's top choice
    assert any(r["rank"] > 0 for result in ours for r in result.trace)


def test_branch_scores_equal_a_full_forward_of_each_branch(tiny_policy, classifier_reward):
    counters = ComputeCounters()
    scorer = ClassifierBranchScorer(classifier_reward, tiny_policy, counters)
    naive = NaiveClassifierScorer(classifier_reward, counters)
    convs = [
        [{"role": "user", "content": "Hello"}],
        [{"role": "user", "content": "A much longer question here?"}],
    ]
    for s in (scorer, naive):
        s.start(convs, [0, 1], 8)
    alive = torch.tensor([True, True])
    for step in range(3):
        candidates = torch.randint(0, 1000, (2, 4), generator=torch.Generator().manual_seed(step))
        torch.testing.assert_close(
            scorer.score(candidates, alive), naive.score(candidates, alive), atol=1e-5, rtol=1e-4
        )
        column = torch.tensor([step % 4, (step + 1) % 4])
        tokens = candidates.gather(-1, column[:, None]).squeeze(-1)
        scorer.commit(column, tokens)
        naive.commit(column, tokens)


def test_zero_weight_or_one_candidate_is_greedy_decoding(tiny_policy, classifier_reward):
    greedy = SamplingParams(max_new_tokens=10, temperature=0.0)
    plain = Decoder(tiny_policy).generate(
        [tiny_policy.render([{"role": "user", "content": "Hi"}])], 1, greedy
    )
    for strategy in (RewardGuided(k=8, w=0.0), RewardGuided(k=1, w=50.0)):
        assert strategy.run("Hi", tiny_policy, classifier_reward, greedy).best.token_ids == plain[0].token_ids


class RecordingScorer(TextBranchScorer):
    """The text fallback, keeping what it scored."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scored: list[torch.Tensor] = []

    def score(self, candidates, alive):
        values = super().score(candidates, alive)
        self.scored.append(values)
        return values


def test_a_heavy_reward_weight_picks_the_best_scored_branch(tiny_policy):
    length = CallableReward(lambda prompt, response: float(len(response)), name="length")
    scorer = RecordingScorer(length, tiny_policy, ComputeCounters())
    result = RewardGuided(k=5, w=1e4).run_batch(["Hi"], tiny_policy, length, PARAMS, scorer=scorer)[0]
    for record, values in zip(result.trace, scorer.scored, strict=False):
        assert values[0, record["rank"]] == values[0].max()
    assert result.reward == float(len(result.text))


def test_sampled_choice_is_reproducible_and_differs_from_greedy(tiny_policy, classifier_reward):
    sampled = RewardGuided(k=10, w=1.0, mode="sample")
    first = sampled.run("Hi", tiny_policy, classifier_reward, PARAMS)
    assert sampled.run("Hi", tiny_policy, classifier_reward, PARAMS).best.token_ids == first.best.token_ids
    greedy = RewardGuided(k=10, w=1.0).run("Hi", tiny_policy, classifier_reward, PARAMS)
    assert greedy.best.token_ids != first.best.token_ids
    assert any(r["rank"] > 0 for r in first.trace)


def test_other_vocabulary_falls_back_to_text_and_incremental_is_refused(tiny_policy, bert_vocab_reward):
    counters = ComputeCounters()
    assert isinstance(branch_scorer(bert_vocab_reward, tiny_policy, counters), TextBranchScorer)
    result = RewardGuided(k=3).run("Hi", tiny_policy, bert_vocab_reward, PARAMS)
    assert result.details["scoring"] == "TextBranchScorer" and result.best.token_ids
    # one text reward call per token (k*1 items each) plus the final score
    assert result.counters.reward_calls == len(result.trace) + 1
    with pytest.raises(InvalidInputError, match=r"bert-vocab-rm.*tiny-llama"):
        RewardGuided(scoring="incremental").run("Hi", tiny_policy, bert_vocab_reward, PARAMS)


def test_text_scoring_can_be_forced_on_a_classifier(tiny_policy, classifier_reward):
    result = RewardGuided(k=3, scoring="text").run("Hi", tiny_policy, classifier_reward, PARAMS)
    assert result.details["scoring"] == "TextBranchScorer"


def test_implicit_reward_scores_branches_from_logits_it_already_has(tiny_policy):
    implicit = ImplicitReward(tiny_policy, principle="Answer in French.")
    counters = ComputeCounters()
    scorer = branch_scorer(implicit, tiny_policy, counters)
    assert isinstance(scorer, ImplicitBranchScorer)
    conv = [{"role": "user", "content": "Say hello"}]
    answer = tiny_policy.tokenizer(" Hello there, my friend", add_special_tokens=False)["input_ids"]
    scorer.start([conv], [0], 16)
    for token in answer[:-1]:
        scorer.score(torch.tensor([[token, 7]]), torch.tensor([True]))
        scorer.commit(torch.tensor([0]), torch.tensor([token]))
    last = scorer.score(torch.tensor([[answer[-1], 7]]), torch.tensor([True]))[0, 0]
    text = tiny_policy.decode(answer)
    assert float(last) == pytest.approx(implicit.score([conv], [text])[0], abs=1e-3)


def test_streams_each_committed_token(tiny_policy, classifier_reward):
    seen: list[tuple[int, list[int]]] = []
    result = RewardGuided(k=4).run_batch(
        ["Hi"], tiny_policy, classifier_reward, PARAMS, on_commit=lambda p, ids: seen.append((p, ids))
    )[0]
    streamed = [t for _, ids in seen for t in ids]
    assert {p for p, _ in seen} == {0}
    assert streamed[: len(result.best.token_ids)] == result.best.token_ids
    assert len(seen) == len(result.trace)


def test_counters_and_metadata(tiny_policy, classifier_reward):
    result = RewardGuided(k=4).run("Hi", tiny_policy, classifier_reward, PARAMS)
    steps = len(result.trace)
    assert result.counters.forward_passes == steps  # prefill + one step per token but the last
    assert result.counters.reward_calls == steps + 2  # reward prefill, one branch forward per token, final
    assert result.counters.generated_tokens == steps
    assert result.reward == pytest.approx(classifier_reward.score(["Hi"], [result.text])[0])
    assert result.details["k"] == 4 and len(result.candidates) == 1


def test_reward_failure_keeps_the_text(tiny_policy):
    def broken(prompt, response):
        raise RuntimeError("verifier offline")

    with pytest.raises(RewardError, match="verifier offline") as info:
        RewardGuided(k=3).run("Hi", tiny_policy, CallableReward(broken), PARAMS)
    assert info.value.partial[0].flags == {"reward_failed": True}


@pytest.mark.parametrize(
    "settings", [{"k": 0}, {"w": -1.0}, {"w": float("nan")}, {"mode": "beam"}, {"scoring": "x"}]
)
def test_invalid_settings_are_rejected(settings):
    with pytest.raises(ValidationError):
        RewardGuided(**settings)


def test_registered_under_its_alias():
    assert get_strategy("args") is RewardGuided and get_strategy("reward-guided") is RewardGuided


def test_other_vocabulary_policy_for_implicit_reward_is_refused(
    smol_tokenizer, tiny_policy, bert_vocab_reward
):
    from transformers import LlamaForCausalLM

    other = Policy(
        model=LlamaForCausalLM(tiny_llama_config(bert_vocab_reward.tokenizer)),
        tokenizer=bert_vocab_reward.tokenizer,
        name="bert-vocab-lm",
        chat_template=smol_tokenizer.chat_template,
    )
    with pytest.raises(InvalidInputError, match=r"'bert-vocab-lm'.*'tiny-llama'.*different tokenizers"):
        ImplicitReward(tiny_policy, other)
