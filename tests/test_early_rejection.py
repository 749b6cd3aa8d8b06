"""Early-rejection Best-of-N: drops low partial rewards, never re-prefills, α = 0 is Best-of-N."""

from __future__ import annotations

import pytest
import torch

from align_chains.engine import ComputeCounters, Decoder, SamplingParams
from align_chains.errors import InvalidInputError, RewardError
from align_chains.rewards import CallableReward, JudgeReward
from align_chains.rewards.partial import JudgePartialScorer
from align_chains.rewards.soft import split_template
from align_chains.strategies import BestOfN, EarlyRejectionBestOfN, get_strategy
from align_chains.strategies.early_rejection import _Run

PARAMS = SamplingParams(max_new_tokens=16, temperature=1.0, seed=0)
PROMPTS = [
    "Tell me a story.",
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}],
]


def digit_reward() -> CallableReward:
    """Deterministic and order-sensitive: counts letters 'e' (varies between partial answers)."""
    return CallableReward(lambda prompt, response: float(response.count("e")), name="e-count")


def test_zero_rejection_reproduces_best_of_n_on_a_fixed_seed(tiny_policy, length_reward):
    plain = BestOfN(n=4).run_batch(PROMPTS, tiny_policy, length_reward, PARAMS)
    early = EarlyRejectionBestOfN(n=4, rejection=0.0, decision_every=4).run_batch(
        PROMPTS, tiny_policy, length_reward, PARAMS
    )
    for a, b in zip(plain, early, strict=True):
        assert [c.text for c in a.candidates] == [c.text for c in b.candidates]
        assert [c.reward for c in a.candidates] == [c.reward for c in b.candidates]
        assert (a.text, a.best_index, a.reward) == (b.text, b.best_index, b.reward)
        assert a.counters.generated_tokens == b.counters.generated_tokens
        assert a.counters.forward_passes == b.counters.forward_passes
        assert b.counters.reward_calls == 1  # nothing scored before the end


def test_rejection_drops_rows_and_counts_all_the_work(tiny_policy):
    reward = digit_reward()
    n, every = 8, 4
    strategy = EarlyRejectionBestOfN(n=n, rejection=0.5, decision_every=every)
    (result,) = strategy.run_batch(["Tell me a story."], tiny_policy, reward, PARAMS)
    decisions = [r for r in result.trace if r["event"] == "decision"]
    assert [d["step"] for d in decisions] == [4, 8, 12]  # every m tokens while a row can go
    assert [d["rows"] for d in decisions] == [8, 4, 2]
    assert result.details["rejected"] == 7 and result.details["started"] == 8
    # every token sampled, rejected rows' included, is counted: 8*4 + 4*4 + 2*4 + 1*4 at most
    assert result.counters.generated_tokens <= 8 * 4 + 4 * 4 + 2 * 4 + 1 * 4
    assert result.counters.generated_tokens >= sum(c.num_tokens for c in result.candidates)
    assert result.counters.reward_calls == len(decisions) + 1  # one batched call per decision + final
    assert result.counters.reward_items == 8 + 4 + 2 + 1
    assert result.reward == max(c.reward for c in result.candidates)
    assert result.text == result.best.text


def start_run(policy, strategy, reward, prompt, params):
    conversations = [[{"role": "user", "content": prompt}]]
    counters = ComputeCounters()
    return _Run(strategy, policy, reward, conversations, [policy.render(conversations[0])], params, counters)


def test_survivors_are_the_top_partial_answers(tiny_policy):
    reward = digit_reward()
    params = SamplingParams(max_new_tokens=10, temperature=1.0, seed=3)
    run = start_run(
        tiny_policy, EarlyRejectionBestOfN(n=6, rejection=0.5), reward, "Tell me a story.", params
    )
    run.decoder.extend(run.batch, 5, run.generator)
    partial = [c.text for c in run.decoder.completions(run.batch)]
    scores = reward.score(["Tell me a story."] * 6, partial)
    run.decide()
    top = sorted(range(6), key=lambda i: (-scores[i], i))[:3]
    assert sorted(run.origin.tolist()) == sorted(top)
    assert run.batch.size == 3 and run.counters.reward_calls == 1 and run.counters.reward_items == 6


def test_keeping_ties_drops_only_rows_scored_strictly_lower(tiny_policy):
    reward = digit_reward()
    params = SamplingParams(max_new_tokens=10, temperature=1.0, seed=3)
    strategy = EarlyRejectionBestOfN(n=6, rejection=0.5, ties="keep")
    run = start_run(tiny_policy, strategy, reward, "Tell me a story.", params)
    run.decoder.extend(run.batch, 5, run.generator)
    scores = reward.score(["Tell me a story."] * 6, [c.text for c in run.decoder.completions(run.batch)])
    run.decide()
    cut = sorted(scores, reverse=True)[2]
    assert sorted(run.origin.tolist()) == [i for i in range(6) if scores[i] >= cut]


def test_keeping_ties_rejects_nothing_when_every_partial_answer_ties(tiny_policy):
    flat = CallableReward(lambda prompt, response: 1.0, name="flat")
    runs = {
        ties: EarlyRejectionBestOfN(n=4, rejection=0.5, decision_every=4, ties=ties).run_batch(
            ["Tell me a story."], tiny_policy, flat, PARAMS
        )[0]
        for ties in ("order", "keep")
    }
    assert runs["order"].details["rejected"] == 3  # by row order: the reward said nothing
    assert runs["keep"].details["rejected"] == 0 and len(runs["keep"].candidates) == 4
    plain = BestOfN(n=4).run_batch(["Tell me a story."], tiny_policy, flat, PARAMS)[0]
    assert [c.text for c in runs["keep"].candidates] == [c.text for c in plain.candidates]


def test_survivors_caches_equal_a_full_forward(tiny_policy):
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=5)
    run = start_run(
        tiny_policy, EarlyRejectionBestOfN(n=6, rejection=0.5), digit_reward(), "Tell me a story.", params
    )
    prompt = tiny_policy.render([{"role": "user", "content": "Tell me a story."}])
    run.decoder.extend(run.batch, 4, run.generator)
    run.decide()
    batch = run.batch
    assert batch.size == 3
    run.decoder.extend(batch, 4, run.generator)
    logits = run.decoder.logits(batch)
    for row in range(batch.size):
        with torch.inference_mode():
            full = (
                tiny_policy.model(torch.tensor([prompt + batch.tokens[row].tolist()])).logits[0, -1].float()
            )
        torch.testing.assert_close(logits[row], full, atol=1e-4, rtol=1e-4)


def test_incremental_judge_scores_equal_a_full_judge_forward(tiny_policy):
    """The judge's cache follows the batch through decisions and selections, exactly."""
    judge = JudgeReward(tiny_policy, principle="The answer is kind.")
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=7)
    strategy = EarlyRejectionBestOfN(n=4, rejection=0.5)
    run = start_run(tiny_policy, strategy, judge, "Tell me a story.", params)
    assert isinstance(run.scorer, JudgePartialScorer)
    conversation = [{"role": "user", "content": "Tell me a story."}]
    before, after = split_template(lambda text: judge.judge_text(conversation, text))
    encode = lambda text: tiny_policy.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    run.scorer.start([conversation], run.batch.prompt_index.tolist(), params.max_new_tokens)
    run.scorer_started = True
    for steps, keep in ((4, [2, 0]), (3, [1, 1]), (2, [0, 1])):
        run.decoder.extend(run.batch, steps, run.generator)
        batch = run.batch
        answers = [batch.tokens[r, : int(batch.num_tokens[r])].tolist() for r in range(batch.size)]
        scores = run.scorer.score(batch)
        for answer, score in zip(answers, scores, strict=True):
            ids = encode(before) + [t for t in answer if t not in tiny_policy.eos_token_ids] + encode(after)
            with torch.inference_mode():
                full = judge._log_odds(tiny_policy.model(torch.tensor([ids])).logits[:, -1])
            assert score == pytest.approx(float(full), abs=1e-4)
        run.scorer.select(torch.tensor(keep))  # reorder, drop, then duplicate rows
        run.batch.select(torch.tensor(keep))


def test_judge_partial_scoring_runs_end_to_end(tiny_policy):
    judge = JudgeReward(tiny_policy)
    strategy = EarlyRejectionBestOfN(n=4, rejection=0.5, decision_every=4)
    (result,) = strategy.run_batch(["Hi"], tiny_policy, judge, PARAMS)
    assert result.details["partial_scoring"] == "incremental"
    # every candidate's final reward is the judge's own score of its text
    texts = [c.text for c in result.candidates]
    assert [c.reward for c in result.candidates] == pytest.approx(
        judge.score(["Hi"] * len(texts), texts), abs=1e-4
    )
    (text_result,) = strategy.model_copy(update={"partial_scoring": "text"}).run_batch(
        ["Hi"], tiny_policy, judge, PARAMS
    )
    assert text_result.details["partial_scoring"] == "text"
    with pytest.raises(InvalidInputError, match="no incremental partial-scoring path"):
        EarlyRejectionBestOfN(n=4, rejection=0.5, partial_scoring="incremental").run(
            "Hi", tiny_policy, digit_reward(), PARAMS
        )


def test_never_re_prefills(tiny_policy):
    """One prefill over the prompt, then only [rows, 1] decode steps, rows shrinking."""
    shapes = []

    def record(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        shapes.append(tuple(ids.shape))

    hook = tiny_policy.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        (result,) = EarlyRejectionBestOfN(n=8, rejection=0.5, decision_every=4).run_batch(
            ["Tell me a story."], tiny_policy, digit_reward(), PARAMS
        )
    finally:
        hook.remove()
    assert shapes[0] == (1, result.prompt_tokens)  # the one prefill
    assert all(width == 1 for _, width in shapes[1:])  # every later forward feeds one token per row
    rows = [r for r, _ in shapes[1:]]
    assert rows == sorted(rows, reverse=True) and rows[0] == 8 and rows[-1] < 8
    assert result.counters.forward_passes == len(shapes)
    assert result.counters.prompt_tokens == result.prompt_tokens  # nothing prefilled twice


def test_multi_prompt_batch_rejects_per_prompt(tiny_policy):
    results = EarlyRejectionBestOfN(n=4, rejection=0.5, decision_every=4).run_batch(
        PROMPTS, tiny_policy, digit_reward(), PARAMS
    )
    for result in results:
        decisions = [r for r in result.trace if r["event"] == "decision"]
        assert [d["rows"] for d in decisions] == [4, 2]  # each prompt keeps half of its own rows
        assert result.counters.batch_size == 2
        assert result.counters.prompt_tokens == result.prompt_tokens
    assert results[0].prompt_tokens != results[1].prompt_tokens


def test_memory_schedule_decides_when_the_cache_is_full(tiny_policy):
    prompt = tiny_policy.render([{"role": "user", "content": "Hi"}])
    budget = 8 * (len(prompt) + 6)  # full after 6 tokens on 8 rows
    strategy = EarlyRejectionBestOfN(n=8, rejection=0.5, decision_every="memory", memory_tokens=budget)
    batch = Decoder(tiny_policy).start([prompt], 8, PARAMS)
    assert strategy._tokens_to_decision(batch) == 6
    params = SamplingParams(max_new_tokens=len(prompt) + 20, temperature=1.0, seed=0)
    (result,) = strategy.run_batch([[{"role": "user", "content": "Hi"}]], tiny_policy, digit_reward(), params)
    steps = [r["step"] for r in result.trace if r["event"] == "decision"]
    # half the rows left: 4 * (prompt + t) reaches 8 * (prompt + 6) again at t = prompt + 12
    assert steps[:2] == [6, len(prompt) + 12]


def test_reward_failure_keeps_the_candidates(tiny_policy):
    def broken(prompt, response):
        raise RuntimeError("judge offline")

    with pytest.raises(RewardError, match="judge offline") as info:
        EarlyRejectionBestOfN(n=4, rejection=0.5, decision_every=4).run(
            "Hi", tiny_policy, CallableReward(broken), PARAMS
        )
    (partial,) = info.value.partial
    assert len(partial.candidates) == 4 and partial.flags == {"reward_failed": True}
    assert partial.counters.generated_tokens == 4 * 4


def test_bad_settings_fail_on_construction():
    with pytest.raises(ValueError, match="less than 1"):
        EarlyRejectionBestOfN(rejection=1.0)
    with pytest.raises(ValueError, match="positive number of tokens"):
        EarlyRejectionBestOfN(decision_every=0)
    assert get_strategy("speculative-rejection") is EarlyRejectionBestOfN


# -- through BestOfNChatModel ---------------------------------------------------------------
def test_best_of_n_chat_model_with_rejection_batches_and_streams(tiny_policy):
    from align_chains import BestOfNChatModel

    model = BestOfNChatModel(
        policy=tiny_policy, reward=digit_reward(), n=4, rejection=0.5, decision_every=4,
        max_tokens=12, temperature=1.0, seed=0,
    )  # fmt: skip
    assert isinstance(model.build_strategy(), EarlyRejectionBestOfN)
    assert isinstance(BestOfNChatModel(n=4).build_strategy(), BestOfN)  # rejection=0: plain Best-of-N
    first, second = model.batch(["Tell me a story.", "Hi"])
    for message in (first, second):
        meta = message.response_metadata
        assert meta["strategy"] == "early-rejection" and meta["started"] == 4 and meta["rejected"] >= 1
        assert meta["compute"]["batch_size"] == 2
        assert meta["reward"] == max(c["reward"] for c in meta["candidates"])
    chunks = list(model.stream("Tell me a story."))
    streamed = "".join(c.content for c in chunks)
    final = chunks[-1].response_metadata
    assert streamed == model.invoke("Tell me a story.").content
    assert final["strategy"] == "early-rejection" and final["decisions"] >= 1


def test_rejection_needs_uniform_allocation():
    from pydantic import ValidationError

    from align_chains import BestOfNChatModel

    with pytest.raises(ValidationError, match="rejection= applies to uniform"):
        BestOfNChatModel(allocation="adaptive", rejection=0.5)


def test_eval_spec_passes_the_tie_rule_to_the_chat_model():
    from align_chains.evaluation import parse_spec

    (setting,) = parse_spec("early-rejection:n=5:rejection=0.5:ties=keep")
    assert setting.key == "early-rejection:n=5,rejection=0.5,ties=keep"
    assert setting.build().ties == "keep"
    with pytest.raises(InvalidInputError):
        parse_spec("early-rejection:ties=random")
