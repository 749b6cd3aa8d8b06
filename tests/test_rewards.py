"""Unit tests for the reward layer (align_chains.rewards) and the Hub resolver's error path.

Everything runs offline on CPU: rule rewards are plain functions, the classifier is the tiny
random Llama from conftest.py, and the embedding reward is the MiniLM shipped as a package.
"""

from __future__ import annotations

import math
import time

import pytest
import torch

from align_chains.errors import InvalidInputError, ModelLoadError, RewardError
from align_chains.models import hub
from align_chains.models.chat import as_conversation
from align_chains.models.hub import resolve_model_dir
from align_chains.rewards import (
    CallableReward,
    ClassifierReward,
    EmbeddingReward,
    JudgeReward,
    RewardModel,
    WeightedReward,
    load_reward,
)
from align_chains.rewards.rules import distinct_bigrams
from align_chains.rewards.specs import (
    EmbeddedSpec,
    FunctionSpec,
    GivenSpec,
    JudgeSpec,
    LexiconSpec,
    ModelSpec,
    RuleSpec,
    WeightedSpec,
    parse_reward_spec,
)

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "first question"},
    {"role": "assistant", "content": "first answer"},
    {"role": "user", "content": "second question"},
]


def _const(value):
    """A per-pair reward function that always returns ``value``."""

    def fn(prompt, response):
        return value

    return fn


# --------------------------------------------------------------------------------------
# RewardModel.score validation (shared by every kind of reward)
# --------------------------------------------------------------------------------------


class TestScoreValidation:
    def test_mismatched_lengths(self, length_reward):
        with pytest.raises(InvalidInputError, match="2 prompts and 1 responses"):
            length_reward.score(["a", "b"], ["x"])

    @pytest.mark.parametrize(
        ("prompts", "responses"),
        [("a prompt", ["x"]), (["a prompt"], "x"), ("a prompt", "x")],
    )
    def test_bare_strings_rejected(self, length_reward, prompts, responses):
        # a bare string would otherwise be scored character by character
        with pytest.raises(InvalidInputError, match="parallel lists"):
            length_reward.score(prompts, responses)

    def test_empty_lists_score_to_empty_list(self):
        calls = []
        reward = CallableReward(lambda p, r: calls.append(r) or 1.0, name="spy")
        assert reward.score([], []) == []
        assert calls == []

    def test_scores_are_floats_in_order(self, length_reward):
        scores = length_reward.score(["p", "p", "p"], ["aaa", "a", "aaaaa"])
        assert scores == [3.0, 1.0, 5.0]
        assert all(type(s) is float for s in scores)

    def test_raising_callable_becomes_reward_error_naming_the_reward(self):
        def boom(prompt, response):
            raise KeyError("missing field")

        reward = CallableReward(boom, name="my-verifier")
        with pytest.raises(RewardError, match="my-verifier") as info:
            reward.score(["p"], ["r"])
        assert "KeyError" in str(info.value)
        assert isinstance(info.value.__cause__, KeyError)

    def test_default_name_is_function_name(self):
        def exact_match(prompt, response):
            raise RuntimeError("down")

        with pytest.raises(RewardError, match="exact_match"):
            CallableReward(exact_match).score(["p"], ["r"])

    @pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
    def test_non_finite_scores_rejected(self, bad):
        reward = CallableReward(lambda p, r: bad if r == "bad" else 1.0, name="nonfinite")
        with pytest.raises(RewardError, match=r"nonfinite.*non-finite.*\[1\]"):
            reward.score(["p", "p"], ["good", "bad"])

    def test_batched_wrong_count_rejected(self):
        reward = CallableReward(lambda ps, rs: [1.0] * (len(rs) - 1), batched=True, name="short")
        with pytest.raises(RewardError, match="returned 2 scores for 3 responses"):
            reward.score(["p"] * 3, ["a", "b", "c"])

    def test_batched_too_many_rejected(self):
        reward = CallableReward(lambda ps, rs: [1.0] * (len(rs) + 1), batched=True, name="long")
        with pytest.raises(RewardError, match="long"):
            reward.score(["p"], ["a"])

    @pytest.mark.parametrize("value", ["high", None, object()])
    def test_non_numeric_per_pair_return_rejected(self, value):
        with pytest.raises(RewardError, match="sequence of numbers"):
            CallableReward(_const(value), name="words").score(["p"], ["r"])

    def test_batched_scalar_return_rejected(self):
        reward = CallableReward(lambda ps, rs: 1.0, batched=True, name="scalar")
        with pytest.raises(RewardError, match="scalar"):
            reward.score(["p", "q"], ["a", "b"])

    def test_batched_string_return_rejected(self):
        reward = CallableReward(lambda ps, rs: "12", batched=True, name="stringy")
        with pytest.raises(RewardError):
            reward.score(["p", "q"], ["a", "b"])

    def test_invalid_conversation_is_input_error(self, length_reward):
        with pytest.raises(InvalidInputError, match="role"):
            length_reward.score([[{"role": "robot", "content": "hi"}]], ["r"])

    def test_single_conversation_instead_of_list_is_input_error(self, length_reward):
        with pytest.raises(InvalidInputError):
            length_reward.score([{"role": "user", "content": "hi"}], ["r"])

    def test_custom_subclass_gets_validation(self):
        class Broken(RewardModel):
            name = "broken-subclass"

            def _score(self, prompts, responses):
                return [float("nan")] * len(responses)

        with pytest.raises(RewardError, match="broken-subclass"):
            Broken().score(["p"], ["r"])


# --------------------------------------------------------------------------------------
# CallableReward
# --------------------------------------------------------------------------------------


class TestCallableReward:
    def test_per_pair_receives_each_pair(self):
        seen = []

        def fn(prompt, response):
            seen.append((prompt, response))
            return len(prompt) * 10 + len(response)

        scores = CallableReward(fn).score(["ab", "abc"], ["x", "xyz"])
        assert scores == [21.0, 33.0]
        assert seen == [("ab", "x"), ("abc", "xyz")]

    def test_batched_receives_lists_once(self):
        calls = []

        def fn(prompts, responses):
            calls.append((list(prompts), list(responses)))
            return [float(len(r)) for r in responses]

        scores = CallableReward(fn, batched=True).score(["p1", "p2", "p3"], ["a", "bb", "ccc"])
        assert scores == [1.0, 2.0, 3.0]
        assert calls == [(["p1", "p2", "p3"], ["a", "bb", "ccc"])]

    def test_batched_may_return_tensor(self):
        reward = CallableReward(lambda ps, rs: torch.tensor([0.5, -1.5]), batched=True)
        assert reward.score(["p", "q"], ["a", "b"]) == [0.5, -1.5]

    def test_prompt_is_last_user_message_of_conversation(self):
        seen = []
        reward = CallableReward(lambda p, r: seen.append(p) or 0.0)
        reward.score([CONVERSATION, "plain prompt"], ["r1", "r2"])
        assert seen == ["second question", "plain prompt"]

    def test_batched_prompt_is_last_user_message(self):
        seen = []
        reward = CallableReward(lambda ps, rs: seen.extend(ps) or [0.0] * len(rs), batched=True)
        reward.score([CONVERSATION], ["r"])
        assert seen == ["second question"]

    @pytest.mark.parametrize("fn", [lambda: 1.0, lambda response: 1.0])
    def test_wrong_arity_rejected_at_construction(self, fn):
        with pytest.raises(InvalidInputError, match=r"\(prompt, response\)"):
            CallableReward(fn)

    def test_too_many_required_args_rejected_at_construction(self):
        with pytest.raises(InvalidInputError):
            CallableReward(lambda prompt, response, judge: 1.0)

    def test_accepted_signatures(self):
        class Verifier:
            def __call__(self, prompt, response):
                return 2.0

        assert CallableReward(Verifier()).score(["p"], ["r"]) == [2.0]
        assert CallableReward(lambda *args: 3.0).score(["p"], ["r"]) == [3.0]
        assert CallableReward(lambda p, r, scale=1.0: 4.0 * scale).score(["p"], ["r"]) == [4.0]

    def test_not_callable_rejected(self):
        with pytest.raises(InvalidInputError, match="callable"):
            CallableReward(42)

    def test_negative_retries_rejected(self):
        with pytest.raises(InvalidInputError, match="retries"):
            CallableReward(_const(1.0), retries=-1)

    def test_retries_recover_flaky_function(self):
        calls = {"n": 0}

        def flaky(prompt, response):
            calls["n"] += 1
            if calls["n"] <= 2:
                raise ConnectionError("verifier unavailable")
            return 0.75

        reward = CallableReward(flaky, retries=2)
        assert reward.score(["p"], ["r"]) == [0.75]
        assert calls["n"] == 3

    def test_retries_exhausted_raise_reward_error(self):
        calls = {"n": 0}

        def always_down(prompt, response):
            calls["n"] += 1
            raise ConnectionError("verifier unavailable")

        with pytest.raises(RewardError, match=r"always_down.*ConnectionError"):
            CallableReward(always_down, retries=1).score(["p"], ["r"])
        assert calls["n"] == 2

    def test_no_retries_by_default(self):
        calls = {"n": 0}

        def flaky(prompt, response):
            calls["n"] += 1
            raise ConnectionError("down")

        with pytest.raises(RewardError):
            CallableReward(flaky).score(["p"], ["r"])
        assert calls["n"] == 1


# --------------------------------------------------------------------------------------
# WeightedReward and the + / * operators
# --------------------------------------------------------------------------------------


class TestWeightedReward:
    def test_operator_weighted_sum_is_exact(self, length_reward):
        words = CallableReward(lambda p, r: float(len(r.split())), name="words")
        combined = 0.5 * length_reward + 2 * words
        assert isinstance(combined, WeightedReward)
        responses = ["one two three", "four", "a b"]
        scores = combined.score(["p"] * 3, responses)
        expected = [0.5 * len(r) + 2 * len(r.split()) for r in responses]
        assert scores == expected

    def test_right_multiplication_and_plain_add(self, length_reward):
        ones = CallableReward(_const(1.0), name="one")
        assert (length_reward * 3).score(["p"], ["abcd"]) == [12.0]
        assert (length_reward + ones).score(["p"], ["abcd"]) == [5.0]

    def test_nested_sums_flatten(self):
        r1, r2, r3 = (CallableReward(_const(float(v)), name=f"r{v}") for v in (1, 10, 100))
        nested = 2 * (r1 + 3 * r2) + r3
        assert [(r.name, w) for r, w in nested.terms] == [("r1", 2.0), ("r10", 6.0), ("r100", 1.0)]
        assert all(not isinstance(r, WeightedReward) for r, _ in nested.terms)
        assert nested.score(["p"], ["r"]) == [2 * 1 + 6 * 10 + 100.0]
        left_nested = r3 + (r1 + r2)
        assert [r.name for r, _ in left_nested.terms] == ["r100", "r1", "r10"]

    def test_name_lists_terms(self, length_reward):
        words = CallableReward(_const(0.0), name="words")
        assert (0.5 * length_reward + 2 * words).name == "0.5*length + 2*words"

    @pytest.mark.parametrize(
        "terms",
        [
            [],
            [(lambda p, r: 1.0, 1.0)],
            [("minilm", 1.0)],
            [(CallableReward(_const(1.0)), "heavy")],
            [(CallableReward(_const(1.0)), None)],
        ],
    )
    def test_invalid_terms_rejected(self, terms):
        with pytest.raises(InvalidInputError):
            WeightedReward(terms)

    def test_adding_non_reward_rejected(self, length_reward):
        with pytest.raises(InvalidInputError, match="RewardModel"):
            length_reward + 3

    def test_load_reward_weighted_list(self):
        def fn1(prompt, response):
            return 1.0

        def fn2(prompt, response):
            return float(len(response))

        reward = load_reward([(fn1, 0.3), (fn2, 0.7)])
        assert isinstance(reward, WeightedReward)
        assert [type(r) for r, _ in reward.terms] == [CallableReward, CallableReward]
        assert [w for _, w in reward.terms] == [0.3, 0.7]
        assert reward.score(["p", "p"], ["ab", "abcd"]) == pytest.approx([0.3 + 1.4, 0.3 + 2.8])

    def test_failing_term_surfaces_its_name(self, length_reward):
        def broken(prompt, response):
            raise RuntimeError("nope")

        combined = length_reward + CallableReward(broken)
        with pytest.raises(RewardError, match="broken"):
            combined.score(["p"], ["r"])


# --------------------------------------------------------------------------------------
# ClassifierReward on the tiny random Llama classifier
# --------------------------------------------------------------------------------------

PAIRS = [
    ("Hi", "Hello!"),
    ("What is two plus two?", "Four."),
    ("Tell me a long story about a dragon.", "Once upon a time a dragon guarded a mountain " * 4),
    (CONVERSATION, "A fairly short reply"),
    ("Why?", "Because the sky scatters blue light more than red light, as Rayleigh showed."),
]


@pytest.fixture
def classifier(tiny_classifier, smol_tokenizer):
    return ClassifierReward(tiny_classifier, smol_tokenizer, name="tiny-rm", batch_size=2)


class TestClassifierReward:
    def test_batched_equals_one_at_a_time(self, classifier):
        prompts = [p for p, _ in PAIRS]
        responses = [r for _, r in PAIRS]
        lengths = {len(t) for t in classifier._texts([as_conversation(p) for p in prompts], responses)}
        assert len(lengths) == len(PAIRS)  # different lengths, so batches really are padded

        batched = classifier.score(prompts, responses)
        single = [classifier.score([p], [r])[0] for p, r in PAIRS]
        assert len(batched) == len(PAIRS)
        assert batched == pytest.approx(single, abs=1e-4)
        # the random head does tell inputs apart, so equal scores above are meaningful
        assert max(single) - min(single) > 1e-3

    def test_batch_size_does_not_change_scores(self, tiny_classifier, smol_tokenizer, classifier):
        prompts = [p for p, _ in PAIRS]
        responses = [r for _, r in PAIRS]
        whole = ClassifierReward(tiny_classifier, smol_tokenizer, batch_size=8)
        assert whole.score(prompts, responses) == pytest.approx(
            classifier.score(prompts, responses), abs=1e-4
        )

    def test_scored_text_is_chat_templated(self, classifier):
        texts = classifier._texts([as_conversation(CONVERSATION)], ["MY-RESPONSE-123"])
        assert len(texts) == 1
        text = texts[0]
        assert "<|im_start|>assistant" in text
        assert "MY-RESPONSE-123" in text
        # the response is the final assistant turn, after the whole conversation
        assert (
            text.index("second question")
            < text.rindex("<|im_start|>assistant")
            < text.index("MY-RESPONSE-123")
        )
        assert "first answer" in text

    def test_response_changes_the_score(self, classifier):
        a, b = classifier.score(["Hi", "Hi"], ["Hello there, friend.", "zzz qqq xxx"])
        assert a != pytest.approx(b, abs=1e-6)

    def test_plain_join_without_chat_template(self, tiny_classifier):
        class NoTemplate:
            chat_template = None
            pad_token_id = 0

        reward = ClassifierReward(tiny_classifier, NoTemplate())
        texts = reward._texts([as_conversation("question")], ["answer"])
        assert texts == ["question\n\nanswer"]

    @pytest.mark.parametrize("label_index", [1, -1, 5])
    def test_invalid_label_index(self, tiny_classifier, smol_tokenizer, label_index):
        with pytest.raises(InvalidInputError, match="label_index"):
            ClassifierReward(tiny_classifier, smol_tokenizer, label_index=label_index)

    def test_invalid_batch_size(self, tiny_classifier, smol_tokenizer):
        with pytest.raises(InvalidInputError, match="batch_size"):
            ClassifierReward(tiny_classifier, smol_tokenizer, batch_size=0)

    def test_name(self, classifier):
        assert classifier.name == "tiny-rm"

    def test_load_reward_from_saved_directory(self, tiny_classifier, smol_tokenizer, classifier, tmp_path):
        tiny_classifier.save_pretrained(tmp_path)
        smol_tokenizer.save_pretrained(tmp_path)
        loaded = load_reward(str(tmp_path), device="cpu")
        assert isinstance(loaded, ClassifierReward)
        assert loaded.model is not tiny_classifier
        prompts = [p for p, _ in PAIRS]
        responses = [r for _, r in PAIRS]
        assert loaded.score(prompts, responses) == pytest.approx(
            classifier.score(prompts, responses), abs=1e-4
        )

    def test_load_reward_from_dir_without_model(self, tmp_path):
        (tmp_path / "notes.txt").write_text("not a model")
        with pytest.raises(ModelLoadError):
            load_reward(str(tmp_path), device="cpu")


# --------------------------------------------------------------------------------------
# EmbeddingReward on the embedded MiniLM
# --------------------------------------------------------------------------------------

BREAD = "How do I bake bread at home?"
ON_TOPIC = "Mix flour, water, yeast and salt, knead the dough, let it rise, then bake it in a hot oven."
OFF_TOPIC = "The stock market closed higher today after technology shares rallied."


@pytest.fixture(scope="module")
def minilm():
    return load_reward("minilm", device="cpu")


class TestEmbeddingReward:
    def test_load_reward_minilm_is_embedding_reward(self, minilm):
        assert isinstance(minilm, EmbeddingReward)
        assert "minilm" in minilm.name

    def test_relevant_beats_off_topic(self, minilm):
        relevant, off_topic = minilm.score([BREAD, BREAD], [ON_TOPIC, OFF_TOPIC])
        assert relevant > off_topic + 0.2
        assert -1.0 - 1e-5 <= off_topic <= relevant <= 1.0 + 1e-5

    def test_conversation_uses_last_user_message(self, minilm):
        conv = [
            {"role": "system", "content": "Talk about finance."},
            {"role": "user", "content": "What did the stock market do?"},
            {"role": "assistant", "content": "It rose."},
            {"role": "user", "content": BREAD},
        ]
        assert minilm.score([conv], [ON_TOPIC]) == pytest.approx(minilm.score([BREAD], [ON_TOPIC]), abs=1e-5)

    def test_batch_with_repeated_prompts_matches_single(self, minilm):
        other = "Which planet is the largest?"
        prompts = [BREAD, other, BREAD]
        responses = [ON_TOPIC, "Jupiter is the largest planet.", OFF_TOPIC]
        batched = minilm.score(prompts, responses)
        single = [minilm.score([p], [r])[0] for p, r in zip(prompts, responses, strict=True)]
        assert batched == pytest.approx(single, abs=1e-4)

    def test_principle_rewards_matching_response(self, minilm):
        prompt = "Can you help me fix my bike chain?"
        polite = "Of course, I'd be glad to help! Thank you for asking, let's fix it together kindly."
        curt = "Put the chain back on the sprocket."
        principled = load_reward("minilm", device="cpu", principle="The reply is polite, warm and kind.")
        base = minilm.score([prompt, prompt], [polite, curt])
        with_principle = principled.score([prompt, prompt], [polite, curt])
        assert with_principle[0] - base[0] > with_principle[1] - base[1]

    def test_principle_weight_zero_is_relevance_only(self, minilm):
        muted = load_reward("minilm", device="cpu", principle="Be polite.", principle_weight=0.0)
        assert muted.score([BREAD], [ON_TOPIC]) == pytest.approx(minilm.score([BREAD], [ON_TOPIC]), abs=1e-5)

    def test_relevance_weight_scales_score(self, minilm):
        doubled = load_reward("minilm", device="cpu", relevance_weight=2.0)
        assert doubled.score([BREAD], [ON_TOPIC])[0] == pytest.approx(
            2 * minilm.score([BREAD], [ON_TOPIC])[0], abs=1e-5
        )

    def test_exemplars_shift_scores(self, minilm):
        prompt = "Explain how to reset my password."
        helpful = "Open settings, choose security, then click reset password."
        rude = "Figure it out yourself, I am not your assistant."
        positive = ["Go to the settings page, pick the security tab and press the reset password button."]
        negative = ["Work it out on your own, I am not here to help you."]
        prompts = [prompt, prompt]
        base = minilm.score(prompts, [helpful, rude])

        pos = load_reward("minilm", device="cpu", positive=positive).score(prompts, [helpful, rude])
        assert pos[0] - base[0] > pos[1] - base[1] + 0.3

        neg = load_reward("minilm", device="cpu", negative=negative).score(prompts, [helpful, rude])
        assert base[1] - neg[1] > base[0] - neg[0] + 0.3

        both = load_reward("minilm", device="cpu", positive=positive, negative=negative)
        (helpful_score, rude_score) = both.score(prompts, [helpful, rude])
        assert helpful_score - rude_score > base[0] - base[1]
        # weight zero switches the exemplars off
        muted = load_reward("minilm", device="cpu", positive=positive, exemplar_weight=0.0)
        assert muted.score(prompts, [helpful, rude]) == pytest.approx(base, abs=1e-5)

    @pytest.mark.parametrize("kwargs", [{"positive": "be nice"}, {"negative": "be rude"}])
    def test_string_exemplars_rejected(self, minilm, kwargs):
        with pytest.raises(InvalidInputError, match="lists"):
            EmbeddingReward(minilm.encoder, **kwargs)
        with pytest.raises(InvalidInputError, match="lists"):
            load_reward("minilm", device="cpu", **kwargs)

    def test_empty_principle_rejected(self, minilm):
        with pytest.raises(InvalidInputError, match="principle"):
            EmbeddingReward(minilm.encoder, principle="   ")

    def test_accepts_encoder_object(self, minilm):
        reward = EmbeddingReward(minilm.encoder)
        assert reward.encoder is minilm.encoder
        assert reward.score([BREAD], [ON_TOPIC]) == pytest.approx(minilm.score([BREAD], [ON_TOPIC]), abs=1e-5)

    def test_encoder_is_reused(self, minilm):
        again = load_reward("minilm", device="cpu")
        assert again is not minilm
        assert again.encoder is minilm.encoder

    def test_aliases_share_encoder(self, minilm):
        assert load_reward("all-minilm-l6-v2", device="cpu").encoder is minilm.encoder


# --------------------------------------------------------------------------------------
# load_reward dispatch and the Hub resolver's error path
# --------------------------------------------------------------------------------------


class TestLoadReward:
    def test_reward_model_returned_unchanged(self, length_reward):
        assert load_reward(length_reward) is length_reward

    def test_plain_function_wrapped(self):
        def keyword_bonus(prompt, response):
            return 1.0 if "please" in response else 0.0

        reward = load_reward(keyword_bonus)
        assert isinstance(reward, CallableReward)
        assert reward.name == "keyword_bonus"
        assert reward.score(["p", "p"], ["please", "no"]) == [1.0, 0.0]

    def test_kwargs_reach_callable_reward(self):
        reward = load_reward(lambda ps, rs: [len(r) for r in rs], batched=True, name="lens")
        assert reward.name == "lens"
        assert reward.score(["p", "p"], ["ab", "abc"]) == [2.0, 3.0]

    @pytest.mark.parametrize("garbage", [42, None, 3.5, [], [1, 2], ["minilm"], "", "   "])
    def test_garbage_rejected(self, garbage):
        with pytest.raises(InvalidInputError):
            load_reward(garbage)

    def test_missing_path_fails_fast(self):
        start = time.monotonic()
        with pytest.raises(ModelLoadError, match="no such directory"):
            load_reward("./no/such/dir")
        assert time.monotonic() - start < 5

    def test_file_instead_of_directory(self, tmp_path):
        path = tmp_path / "weights.bin"
        path.write_bytes(b"\0")
        with pytest.raises(ModelLoadError, match="is a file"):
            load_reward(str(path))

    def test_unknown_hub_id_offline_fails_fast(self, monkeypatch):
        spec = "nonexistent-org/nonexistent-model"
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        start = time.monotonic()
        with pytest.raises(ModelLoadError) as info:
            load_reward(spec)
        elapsed = time.monotonic() - start
        message = str(info.value)
        assert spec in message
        assert "local path" in message
        assert "offline" in message
        assert elapsed < 10, f"took {elapsed:.1f}s: the Hub retry hang is back"

    def test_unknown_hub_id_unreachable_hub(self, monkeypatch):
        # online mode but no network: one quick probe, then a clear error (no download attempt)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: False)
        with pytest.raises(ModelLoadError, match="cannot be reached") as info:
            resolve_model_dir("nonexistent-org/nonexistent-model", what="reward model")
        assert "nonexistent-org/nonexistent-model" in str(info.value)
        assert "reward model" in str(info.value)

    def test_invalid_hub_id(self):
        with pytest.raises(ModelLoadError, match="valid Hugging Face"):
            resolve_model_dir("bad id with spaces!", what="reward model")

    def test_existing_directory_resolves_to_itself(self, tmp_path):
        assert resolve_model_dir(str(tmp_path), what="reward model") == tmp_path

    def test_model_load_error_is_os_error(self):
        # generic handlers written for OSError (what transformers raises) keep working
        with pytest.raises(OSError):
            load_reward("./no/such/dir")


class TestWeightedRewardPolicy:
    """A weighted reward passes ``policy=`` to its terms: a "judge" term judges with it."""

    @pytest.fixture
    def only_given_policy(self, monkeypatch, tiny_policy):
        """Any judge built from a spec instead of the given policy fails the test at once."""
        from align_chains.rewards import judge as judge_module

        real = judge_module.load_policy

        def load_policy(spec, **kwargs):
            assert spec is tiny_policy, f"the judge loaded {spec!r} instead of the given policy"
            return real(spec, **kwargs)

        monkeypatch.setattr(judge_module, "load_policy", load_policy)

    def test_judge_term_of_a_weighted_reward_uses_the_given_policy(self, tiny_policy, only_given_policy):
        reward = load_reward([("judge", 0.5), (_const(1.0), 0.5)], policy=tiny_policy, device="cpu")
        judge = reward.terms[0][0]
        assert judge.judge is tiny_policy
        scores = reward.score(["Name a fruit."], ["An apple."])
        assert len(scores) == 1 and math.isfinite(scores[0])

    def test_chat_model_with_a_weighted_judge_judges_with_its_policy(self, tiny_policy, only_given_policy):
        from align_chains.chat_models import BestOfNChatModel

        model = BestOfNChatModel(policy=tiny_policy, reward=[("judge", 1.0)], n=2, max_tokens=4)
        _, reward = model.load()
        assert reward.terms[0][0].judge is tiny_policy


class TestRewardSpecParser:
    """``parse_reward_spec``: one parser, one syntax for a function, errors before any load."""

    @pytest.mark.parametrize(
        ("spec", "expected"),
        [
            ("minilm", EmbeddedSpec("minilm")),
            ("All-MiniLM-L6-v2", EmbeddedSpec("All-MiniLM-L6-v2")),
            ("judge", JudgeSpec()),
            ("judge:my-org/judge-model", JudgeSpec(model="my-org/judge-model")),
            ("judge-principle: The answer is concise.", JudgeSpec(principle="The answer is concise.")),
            ("rule:distinct", RuleSpec("distinct")),
            ("lexicon:Step, because,step", LexiconSpec(("because", "step"))),
            ("my-org/reward-model", ModelSpec("my-org/reward-model")),
            ("./models/rm", ModelSpec("./models/rm")),
        ],
    )
    def test_strings_parse_to_their_kind(self, spec, expected):
        assert parse_reward_spec(spec) == expected

    def test_python_function_is_imported_and_checked(self):
        parsed = parse_reward_spec("python:align_chains.rewards.rules:distinct_bigrams")
        assert isinstance(parsed, FunctionSpec)
        assert parsed.function is distinct_bigrams
        assert parsed.text == "python:align_chains.rewards.rules:distinct_bigrams"

    def test_bare_module_function_still_works_but_says_what_to_write(self):
        with pytest.warns(FutureWarning, match="write 'python:align_chains.rewards.rules:distinct"):
            parsed = parse_reward_spec("align_chains.rewards.rules:distinct_bigrams")
        assert parsed == parse_reward_spec("python:align_chains.rewards.rules:distinct_bigrams")

    @pytest.mark.parametrize(
        ("spec", "message"),
        [
            ("python:no_such_module_xyz:fn", "cannot import module 'no_such_module_xyz'"),
            ("python:os.path:nope", "has no callable 'nope'"),
            ("python:just_a_module", "python: needs package.module:function"),
            ("rule:nope", r"Unknown rule 'nope'.*distinct"),
            ("lexicon: , ", "lexicon: needs at least one word"),
            ("judge-principle:  ", "judge-principle: needs a sentence"),
            ("  ", "Reward spec is empty"),
        ],
    )
    def test_bad_specs_name_the_bad_part_and_the_fix(self, spec, message):
        with pytest.raises(InvalidInputError, match=message):
            parse_reward_spec(spec)

    def test_weighted_pairs_parse_each_term_and_check_weights(self, length_reward):
        parsed = parse_reward_spec([("rule:distinct", 0.3), (length_reward, 1)])
        assert parsed == WeightedSpec(((RuleSpec("distinct"), 0.3), (GivenSpec(length_reward), 1.0)))
        with pytest.raises(InvalidInputError, match="weight 'heavy'"):
            parse_reward_spec([("minilm", "heavy")])
        with pytest.raises(InvalidInputError, match="Unknown rule"):
            parse_reward_spec([("minilm", 0.5), ("rule:nope", 0.5)])

    def test_load_reward_builds_every_spec_kind_the_evaluation_uses(self, tiny_policy):
        distinct = load_reward("rule:distinct")
        assert distinct.name == "rule:distinct"
        assert distinct.score(["p"], ["a b a b"]) == [pytest.approx(2 / 3)]
        assert load_reward("lexicon:step,because").score(["p"], ["step one"]) == [0.5]
        function = load_reward("python:align_chains.rewards.rules:distinct_bigrams")
        assert function.name == "python:align_chains.rewards.rules:distinct_bigrams"
        judge = load_reward("judge-principle:Be brief.", policy=tiny_policy, device="cpu")
        assert isinstance(judge, JudgeReward) and judge.judge is tiny_policy
        assert judge.principle == "Be brief."
        with pytest.raises(InvalidInputError, match="drop principle="):
            load_reward("judge-principle:Be brief.", policy=tiny_policy, principle="Be kind.")

    def test_settings_for_a_whole_weighted_reward_are_refused(self):
        with pytest.raises(InvalidInputError, match="load each term"):
            load_reward([(_const(1.0), 1.0)], principle="Be kind.")

    def test_a_chat_model_refuses_a_bad_spec_at_construction(self):
        from align_chains.chat_models import BestOfNChatModel

        with pytest.raises(ValueError, match="Unknown rule 'nope'"):
            BestOfNChatModel(reward="rule:nope")
