"""Task families: exact rewards on hand-written texts, prefix rules, surrogates, routing into strategies."""

from __future__ import annotations

import pytest
import torch

from align_chains.engine import SamplingParams
from align_chains.errors import InvalidInputError
from align_chains.rewards.prefix import PrefixBranchScorer, PrefixPartialScorer
from align_chains.strategies import SEA, EarlyRejectionBestOfN, RewardGuided, ValueGuided
from align_chains.tasks import FAMILIES, RoutedReward, TaskLineReward, conversation_key, instances
from align_chains.tasks.families import AVOID, KEYWORDS


def fam(name):
    return FAMILIES[name]


def test_keywords_reward_prefix_and_success():
    f, p = fam("keywords"), {"words": ["dog", "river", "bread"]}
    assert f.reward(p, "The dogs ran to the River with bread.") == 1.0
    assert f.success(p, "The dogs ran to the River with bread.")
    assert f.reward(p, "A hotdog by the riverbank.") == pytest.approx(1 / 3)  # "hotdog" is not "dog"
    assert not f.success(p, "A dog sat.")
    # prefix: used words + half a word per missing word that still fits (4 tokens each)
    assert f.prefix(p, "A dog", 8) == pytest.approx((1 + 0.5 * 2) / 3)
    assert f.prefix(p, "A dog", 4) == pytest.approx((1 + 0.5 * 1) / 3)
    assert f.prefix(p, "A dog", 0) == f.reward(p, "A dog")


def test_length_reward_prefix_and_success():
    f, p = fam("length"), {"n": 5, "topic": "x"}
    assert f.success(p, "One two three four five.") and f.reward(p, "One two three four five.") == 1.0
    assert f.reward(p, "One two three four five six seven.") == pytest.approx(0.6)
    assert f.reward(p, "Don't stop.") == pytest.approx(0.4)  # "Don't" is one word
    assert f.prefix(p, "One two", 10) == 1.0  # on track
    assert f.prefix(p, "One two", 2) == pytest.approx(0.4)  # three words cannot fit in two tokens
    assert f.prefix(p, "a b c d e f", 10) == pytest.approx(0.8)  # already over
    assert f.prefix(p, "One two", 0) == f.reward(p, "One two")


def test_format_reward_prefix_and_success():
    f, p = fam("format"), {"k": 2, "topic": "x"}
    good = "Morning Tips\n- Drink water\n- Stretch"
    assert f.success(p, good) and f.reward(p, good) == 1.0
    assert f.reward(p, "- a\n- b\n- c") == pytest.approx(0.5 * 0 + 0.5 * 1.0)  # first bullet is no title
    assert f.reward(p, "Title\n- a\n- b\n- c\n- d") == pytest.approx(0.5)  # 4 bullets for 2
    assert not f.success(p, "Title\n- a\nSome prose\n- b")  # a stray line among the bullets
    assert f.prefix(p, "Morning Ti", 20) == 1.0  # an unfinished title line is on track
    assert f.prefix(p, "Title\n- a\n- b\n- c", 20) == pytest.approx(0.5 + 0.5 * 0.5)
    assert f.prefix(p, good, 0) == f.reward(p, good)


def test_sentiment_uses_vader_compound():
    f = fam("sentiment")
    happy = "What a wonderful, joyful day. I love it!"
    assert f.success({"tone": "positive", "topic": "x"}, happy)
    assert not f.success({"tone": "negative", "topic": "x"}, happy)
    assert f.reward({"tone": "negative", "topic": "x"}, happy) < 0.2
    assert f.reward({"tone": "positive", "topic": "x"}, "The table.") == 0.5  # neutral


def test_avoidance_needs_ten_clean_words():
    f, p = fam("avoidance"), {"words": ["sand", "water"], "topic": "the beach"}
    clean = "The shore is bright and warm, with gulls calling over the waves."
    assert f.success(p, clean) and f.reward(p, clean) == 1.0
    assert not f.success(p, "Bright and warm.")  # too short
    assert f.reward(p, "Bright and warm.") == pytest.approx(0.3)
    assert f.reward(p, clean + " Sandy toes.") == pytest.approx(0.5)
    assert f.prefix(p, "Bright and warm.", 10) == 1.0  # the length part waits for the end
    assert f.prefix(p, "Waterfalls", 10) == 0.5


def test_composite_needs_both():
    f, p = fam("keywords-length"), {"words": ["dog", "moon"], "n": 6}
    assert f.success(p, "The dog howled at the moon.")
    assert not f.success(p, "The dog howled at the bright moon.")
    assert f.reward(p, "The dog howled at the bright moon.") == pytest.approx(0.5 + 0.5 * (1 - 1 / 6))


def test_instances_are_seeded_and_splits_differ():
    for name in FAMILIES:
        dev, again, test = instances(name, "dev", 5), instances(name, "dev", 5), instances(name, "test", 5)
        assert dev == again
        assert [d["reward"] for d in dev] != [t["reward"] for t in test]
        for line in dev:  # every generated instance passes its own validation
            FAMILIES[name].check({k: v for k, v in line["reward"].items() if k != "family"})


def test_pools_are_single_tokens_after_a_space(smol_tokenizer):
    # the surrogate relies on it: each word is one token after a space
    for word in {*KEYWORDS, *(w for _, ws in AVOID for w in ws)}:
        assert len(smol_tokenizer(" " + word, add_special_tokens=False)["input_ids"]) == 1, word


def one_hot(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return torch.nn.functional.one_hot(torch.tensor([ids]), len(tokenizer)).float()


@pytest.mark.parametrize(
    "name,params",
    [
        ("keywords", {"words": ["dog", "river", "bread"]}),
        ("avoidance", {"words": ["sand", "water"], "topic": "x"}),
    ],
)
def test_surrogate_equals_the_exact_reward_on_one_hot_inputs(smol_tokenizer, name, params):
    f = fam(name)
    surrogate = f.surrogate(params, smol_tokenizer)
    texts = [
        "Dogs play by the river while we bake bread in the small warm kitchen today.",
        "A quiet morning: the water is calm, sand everywhere, and no dog in sight at all.",
        "Nothing here mentions any of the listed words, only plain everyday things and more.",
        "The hotdog stand near the riverbank sells bread, sandwiches and waterproof hats now.",
    ]
    for text in texts:
        assert surrogate(one_hot(smol_tokenizer, text)).item() == pytest.approx(f.reward(params, text)), text


def test_surrogate_carries_gradients(smol_tokenizer):
    surrogate = fam("keywords").surrogate({"words": ["dog"]}, smol_tokenizer)
    logits = torch.zeros((1, 4, len(smol_tokenizer)), requires_grad=True)
    surrogate(logits.softmax(-1)).sum().backward()
    dog = smol_tokenizer(" dog", add_special_tokens=False)["input_ids"][0]
    assert logits.grad[0, :, dog].min() > 0  # more " dog" anywhere raises the reward


def routed(tokenizer=None):
    lines = instances("keywords", "dev", 2) + instances("length", "dev", 1)
    routes = {
        conversation_key(line["prompt"]): TaskLineReward(
            FAMILIES[line["reward"]["family"]], {k: v for k, v in line["reward"].items() if k != "family"}
        )
        for line in lines
    }
    return RoutedReward(routes), [line["prompt"] for line in lines]


def test_routed_reward_scores_each_prompt_by_its_own_task():
    reward, prompts = routed()
    text = "cloud stone tree mountain"
    # keywords-dev-0 asks for cloud, stone, tree; dev-1 for mountain, moon, river, shadow;
    # length-dev-0 for 13 words
    assert reward.score(prompts, [text] * 3) == pytest.approx([1.0, 0.25, 1 - 9 / 13])
    with pytest.raises(InvalidInputError, match="no reward of its own"):
        reward.score(["an unknown prompt"], ["x"])


PARAMS = SamplingParams(max_new_tokens=8, temperature=1.0, seed=0)


def test_prefix_strategies_use_the_prefix_rule(tiny_policy):
    reward, prompts = routed()
    (args,) = RewardGuided(k=3).run_batch(prompts[:1], tiny_policy, reward, PARAMS)
    assert args.details["scoring"] == PrefixBranchScorer.__name__
    assert args.reward == reward.score(prompts[:1], [args.text])[0]
    early = EarlyRejectionBestOfN(n=4, rejection=0.5, decision_every=4)
    assert isinstance(reward.partial_scorer(tiny_policy, None), PrefixPartialScorer)
    (res,) = early.run_batch(prompts[2:], tiny_policy, reward, PARAMS)
    assert any(r["event"] == "decision" for r in res.trace)
    ivg_strategy = ValueGuided(beams=2, samples=2, chunk_tokens=4)
    (ivg,) = ivg_strategy.run_batch(prompts[:1], tiny_policy, reward, PARAMS)
    assert ivg.reward == reward.score(prompts[:1], [ivg.text])[0]  # finished: the full reward


def test_sea_follows_the_surrogate_and_refuses_families_without_one(tiny_policy):
    reward, prompts = routed()
    (res,) = SEA(chains=1, iterations=2, revise=False).run_batch(prompts[:1], tiny_policy, reward, PARAMS)
    assert res.reward == reward.score(prompts[:1], [res.text])[0]
    with pytest.raises(InvalidInputError, match="have none"):
        SEA(chains=1, iterations=2).run_batch(prompts[2:], tiny_policy, reward, PARAMS)


def test_branch_scorer_treats_an_eos_branch_as_finished(tiny_policy):
    from align_chains.engine import ComputeCounters
    from align_chains.rewards.base import RewardModel
    from align_chains.rewards.prefix import PrefixScoring

    seen = []

    class Spy(PrefixScoring, RewardModel):
        def _score(self, prompts, responses):
            return [0.0] * len(responses)

        def score_prefix(self, prompts, prefixes, remaining):
            seen.append(list(remaining))
            return [float(r) for r in remaining]

    counters = ComputeCounters()
    scorer = PrefixBranchScorer(Spy(), tiny_policy, counters)
    scorer.start(["Hi"], [0], max_new_tokens=5)
    eos = tiny_policy.eos_token_ids[0]
    values = scorer.score(torch.tensor([[eos, 42]]), torch.tensor([True]))
    assert seen == [[0, 4]] and values.tolist() == [[0.0, 4.0]]  # EOS: nothing left; else 5 - 1
    scorer.commit(torch.tensor([1]), torch.tensor([42]))
    scorer.score(torch.tensor([[7, 8]]), torch.tensor([True]))
    assert seen[-1] == [3, 3] and counters.reward_items == 4
