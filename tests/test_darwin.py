"""DARWIN on tiny random models: parsing, replacement, archive, budgets, trace, equivalence, errors."""

from __future__ import annotations

import zlib
from collections import Counter

import pytest
import torch
from pydantic import ValidationError
from reference.darwin_reprefill import DarwinReprefill

import align_chains.strategies.darwin_driver as darwin_module
from align_chains import DarwinChatModel, cli
from align_chains.engine import ComputeCounters, Decoder, SamplingParams
from align_chains.engine.prefix_prefill import common_prefix_length, start_sharing_prefix
from align_chains.errors import InvalidInputError, RewardError
from align_chains.models.policy import Policy
from align_chains.rewards import CallableReward
from align_chains.strategies import get_strategy
from align_chains.strategies.darwin import Darwin
from align_chains.strategies.darwin_archive import archive_winners, update_archive
from align_chains.strategies.darwin_population import CachedPopulation
from align_chains.strategies.mutation import (
    ParsedMutations,
    list_complete,
    mutation_request,
    parse_mutations,
    with_instruction,
)

PARAMS = SamplingParams(max_new_tokens=12, temperature=1.0, seed=3)
# a one-character stop string makes the random model's rows end at scattered steps
STOPPING = SamplingParams(max_new_tokens=16, temperature=1.0, seed=5, stop=("k",))
SMALL = {"n": 4, "m": 3, "k": 2, "cycles": 2, "mutation_max_tokens": 16}


def hash_reward() -> CallableReward:
    """Deterministic, but unrelated to length: replacements happen in every segment."""
    return CallableReward(lambda p, r: (zlib.crc32(r.encode()) % 1000) / 1000.0, name="hash")


@pytest.fixture
def scripted_mutations(monkeypatch):
    """Distinct mutations of different lengths, so candidate prompts differ (the random model
    itself writes garbage, which the parser rightly rejects)."""

    def fake(text: str, n: int, fallback: str) -> ParsedMutations:
        return ParsedMutations([f"{fallback} Variant {i}:{' more' * i}" for i in range(n)], n)

    monkeypatch.setattr(darwin_module, "parse_mutations", fake)


def events(result, name):
    return [r for r in result.trace if r["event"] == name]


# -- parsing ---------------------------------------------------------------------------


def test_parses_numbered_lists_in_many_styles():
    text = (
        "Sure! Here are the rewrites:\n"
        "1. How do I sleep better at night?\n"
        "2) What habits improve sleep quality?\n"
        '(3) "Give me advice for falling asleep faster."\n'
        "Instruction 4: **Explain** how to get more restful sleep.\n"
        "[5] Which evening routines help me sleep well?\n"
        "I hope these help!"
    )
    parsed = parse_mutations(text, 5, "orig")
    assert parsed.parsed == 5 and not parsed.fell_back
    assert parsed.instructions == [
        "How do I sleep better at night?",
        "What habits improve sleep quality?",
        "Give me advice for falling asleep faster.",
        "Explain how to get more restful sleep.",
        "Which evening routines help me sleep well?",
    ]


def test_parses_bullets_and_stops_at_n():
    text = "- Tell me how to cook rice.\n* Explain rice cooking step by step.\n• How is rice best cooked?"
    assert parse_mutations(text, 2, "orig").instructions == [
        "Tell me how to cook rice.",
        "Explain rice cooking step by step.",
    ]


def test_short_duplicate_and_junk_items_fall_back_to_the_parent():
    text = "1. Describe a cat.\n2. describe  a CAT.\n3. ??\n4. ok\n5. 12345 678\n\n"
    parsed = parse_mutations(text, 4, "the parent")
    assert parsed.instructions == ["Describe a cat.", "the parent", "the parent", "the parent"]
    assert parsed.parsed == 1 and parsed.fell_back


@pytest.mark.parametrize(
    "text", ["", "   \n\n", "Here is a paragraph without any list at all.", "ĠĠ<|im_end|>ĉ\u0120\u0121"]
)
def test_unparseable_answers_give_n_copies_of_the_parent(text):
    assert parse_mutations(text, 3, "parent") == ParsedMutations(["parent"] * 3, 0)


def test_list_complete_waits_for_the_last_line_to_end():
    assert not list_complete("1. Say hello to me.\n2. Greet me kindly", 2)
    assert list_complete("1. Say hello to me.\n2. Greet me kindly\n", 2)
    assert list_complete("1. Say hello to me.\n2. Greet me kindly\n3. Wave", 2)


def test_mutation_request_is_a_plain_conversation():
    request = mutation_request("Name a fruit.", 3)
    assert [m["role"] for m in request] == ["user", "assistant", "user"]
    assert request[-1]["content"].endswith("Instruction: Name a fruit.")
    assert request[1]["content"].count("\n") == 2  # the example shows three rewrites
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert with_instruction(conversation, "Hello there") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello there"},
    ]
    assert conversation[1]["content"] == "Hi"  # not modified in place


# -- settings --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"n": 2, "k": 3}, "k=3 must not exceed n=2"),
        ({"n": 0}, "greater than or equal to 1"),
        ({"m": 0}, "greater than or equal to 1"),
        ({"cycles": 0}, "greater than or equal to 1"),
        ({"k": 0}, "greater than or equal to 1"),
        ({"time_budget_s": 0}, "greater than 0"),
    ],
)
def test_invalid_settings_are_rejected_at_construction(settings, message):
    with pytest.raises(ValidationError, match=message):
        Darwin(**settings)
    with pytest.raises(ValidationError, match=message):
        DarwinChatModel(**settings)


def test_an_instruction_too_long_to_mutate_fails_before_any_model_work(tiny_policy, length_reward):
    calls = []
    hook = tiny_policy.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(InvalidInputError, match="lower mutation_max_tokens"):
            Darwin(mutation_max_tokens=400).run("Name a fruit.", tiny_policy, length_reward, PARAMS)
    finally:
        hook.remove()
    assert calls == []


def test_registered_under_its_name():
    assert get_strategy("darwin") is Darwin
    assert Darwin().model_dump() == {
        "n": 5, "m": 40, "k": 3, "cycles": 3, "mutation_max_tokens": 192,
        "max_total_tokens": None, "time_budget_s": None, "mutation_mode": "rewrite",
    }  # fmt: skip
    assert DarwinChatModel().top_k == 40 and DarwinChatModel().temperature == 0.7


# -- replacement -----------------------------------------------------------------------


def full_forward_logits(policy, ids):
    with torch.inference_mode():
        return policy.model(torch.tensor([ids])).logits[0, -1].float()


def full_forward_keys(policy, ids, layer=0):
    with torch.inference_mode():
        out = policy.model(torch.tensor([ids]), use_cache=True)
    return out.cache.layers[layer].keys[0]


def test_a_replaced_row_keeps_its_own_prompt_and_continues_the_copied_state(tiny_policy):
    conversation = [{"role": "user", "content": "Name a fruit."}]
    prompts = [
        tiny_policy.render(with_instruction(conversation, text))
        for text in ("Name a fruit.", "Name one fruit that is red, please.", "Fruit?")
    ]
    counters = ComputeCounters()
    decoder = Decoder(tiny_policy, counters)
    pop = CachedPopulation(decoder, prompts, SamplingParams(max_new_tokens=10, temperature=1.0), [0, 0, 0], 1)
    generator = torch.Generator().manual_seed(0)
    pop.extend(3, generator, lambda batch: None)
    before, prefilled, passes = pop.batch.tokens.clone(), pop.prompt_tokens[0], counters.forward_passes
    pop.transplant([2, 0], [1, 1])  # rows 2 and 0 take row 1's partial answer
    assert torch.equal(pop.batch.tokens, before[[1, 1, 1]])
    # only the copied answer is prefilled (2 tokens fed so far; the 3rd is pending), in one forward
    assert pop.prompt_tokens[0] - prefilled == 2 * 2 and counters.forward_passes == passes + 1
    assert pop.batch.prompt_index.tolist() == [0, 1, 2]  # each row keeps its own prompt
    # the replaced rows' caches equal a full forward over (own prompt + copied state)
    mask = pop.batch.attention_mask.bool()
    for row in (0, 2):
        state = before[1, :2].tolist()
        expected = full_forward_keys(tiny_policy, prompts[row] + state, layer=1)
        got = pop.batch.cache.layers[1].keys[row][:, mask[row, : pop.batch.cache.get_seq_length()]]
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    pop.extend(3, generator, lambda batch: None)
    logits = decoder.logits(pop.batch)
    for row in range(3):
        tokens = pop.batch.tokens[row].tolist()
        assert tokens[:3] == before[1].tolist()
        expected = full_forward_logits(tiny_policy, prompts[row] + tokens)
        torch.testing.assert_close(logits[row], expected, atol=1e-4, rtol=1e-4)


def test_a_row_given_a_finished_answer_is_finished_with_it(tiny_policy):
    prompts = [tiny_policy.render([{"role": "user", "content": text}]) for text in ("Hi.", "Hello there.")]
    pop = CachedPopulation(Decoder(tiny_policy), prompts, SamplingParams(max_new_tokens=8), [0, 0], 1)
    pop.extend(2, torch.Generator().manual_seed(0), lambda batch: None)
    pop.finish([0])
    pop.transplant([1], [0])
    assert pop.finished.tolist() == [True, True]
    assert pop.completions()[1].token_ids == pop.completions()[0].token_ids
    assert pop.completions()[1].finish_reason == "stop"


def test_replacement_keeps_the_top_k_and_never_replaces_finished_rows(tiny_policy, scripted_mutations):
    result = Darwin(n=5, m=3, k=2, cycles=2, mutation_max_tokens=16).run(
        "Tell me a story.", tiny_policy, hash_reward(), STOPPING
    )
    scores, replaces = events(result, "score"), events(result, "replace")
    assert replaces, "the hash reward should cause replacements"
    segments = {(r["cycle"], r["segment"]) for r in scores}
    last = {c: max(s for cc, s in segments if cc == c) for c, _ in segments}
    finished_rows = 0
    for cycle, segment in sorted(segments):
        rows = [r for r in scores if (r["cycle"], r["segment"]) == (cycle, segment)]
        by_row = {r["row"]: r for r in rows}
        top = sorted(rows, key=lambda r: (-r["reward"], r["row"]))[:2]
        assert {r["row"] for r in top} == {r["row"] for r in rows if r["top_k"]}
        done = [r for r in replaces if (r["cycle"], r["segment"]) == (cycle, segment)]
        expected = set() if segment == last[cycle] else {
            r["row"] for r in rows if not r["top_k"] and not r["finished"]
        }  # fmt: skip
        assert {r["row"] for r in done} == expected
        for r in done:
            assert by_row[r["source"]]["top_k"]
            assert r["source_reward"] == by_row[r["source"]]["reward"] >= r["reward"]
        finished_rows += sum(r["finished"] and not r["top_k"] for r in rows if segment != last[cycle])
    assert finished_rows > 0, "the stop string should leave some finished rows outside the top k"


def test_after_a_replacement_every_instruction_is_still_decoded(tiny_policy, scripted_mutations):
    result = Darwin(**SMALL).run("Tell me a story.", tiny_policy, hash_reward(), PARAMS)
    scores, replaces = events(result, "score"), events(result, "replace")
    assert replaces, "the hash reward should cause replacements"
    for event in replaces:
        after = next(
            r for r in scores
            if (r["cycle"], r["segment"], r["row"]) == (event["cycle"], event["segment"] + 1, event["row"])
        )  # fmt: skip
        assert after["mutation"] == event["mutation"] == event["row"]  # its own instruction, not the source's
        assert after["reward"] is not None
    for cycle, segment in {(r["cycle"], r["segment"]) for r in scores}:
        rows = [r for r in scores if (r["cycle"], r["segment"]) == (cycle, segment)]
        assert sorted(r["mutation"] for r in rows) == list(range(SMALL["n"]))
    final = [c for c in result.candidates if c.meta["cycle"] > 0]
    assert sorted(c.meta["mutation"] for c in final) == sorted(list(range(SMALL["n"])) * SMALL["cycles"])
    for c in final:
        assert c.meta["instruction"].endswith(f"Variant {c.meta['mutation']}:{' more' * c.meta['mutation']}")


def test_shared_prefix_prefill_matches_a_full_forward(tiny_policy):
    system = {"role": "system", "content": "You answer questions about fruit. " * 6}
    prompts = [
        tiny_policy.render([system, {"role": "user", "content": text}])
        for text in (
            "Name a fruit.",
            "Name a red fruit, please, and say why it is red.",
            "Name a fruit.",
            "Fruit?",
        )
    ]
    shared = common_prefix_length(prompts)
    assert shared >= 40
    counters = ComputeCounters()
    decoder = Decoder(tiny_policy, counters)
    batch, charged = start_sharing_prefix(decoder, prompts, SamplingParams(max_new_tokens=8, temperature=1.0))
    distinct = [prompts[0], prompts[1], prompts[3]]
    assert counters.prompt_tokens == sum(charged) == shared + sum(len(p) - shared for p in distinct)
    assert charged[2] == 0 and counters.forward_passes == 2
    decoder.extend(batch, 4, generator=torch.Generator().manual_seed(1))
    batch.select([1, 3, 3, 0])
    decoder.extend(batch, 3, generator=torch.Generator().manual_seed(2))
    logits = decoder.logits(batch)
    for row, source in enumerate([1, 3, 3, 0]):
        expected = full_forward_logits(tiny_policy, prompts[source] + batch.tokens[row].tolist())
        torch.testing.assert_close(logits[row], expected, atol=1e-4, rtol=1e-4)


# -- equivalence with the re-prefill reference -----------------------------------------


@pytest.mark.parametrize("params", [PARAMS, STOPPING], ids=["length", "stop-strings"])
def test_same_seed_gives_the_same_answers_as_the_reprefill_reference(tiny_policy, scripted_mutations, params):
    prompts = [
        "Name a fruit.",
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    ]
    ours = Darwin(**SMALL).run_batch(prompts, tiny_policy, hash_reward(), params)
    theirs = DarwinReprefill(**SMALL).run_batch(prompts, tiny_policy, hash_reward(), params)
    for a, b in zip(ours, theirs, strict=True):
        assert [c.token_ids for c in a.candidates] == [c.token_ids for c in b.candidates]
        assert [c.text for c in a.candidates] == [c.text for c in b.candidates]
        assert [c.reward for c in a.candidates] == [c.reward for c in b.candidates]
        assert a.text == b.text and a.reward == b.reward
        assert a.trace == b.trace
        assert a.counters.generated_tokens == b.counters.generated_tokens
        assert a.counters.prompt_tokens < b.counters.prompt_tokens  # the reference re-encodes
        assert len(events(a, "replace")) > 0


# -- archive and best ------------------------------------------------------------------


def test_archive_winners_are_the_two_most_frequent_that_beat_the_parent():
    wins = Counter({0: 2, 1: 5, 2: 5, 3: 1})
    final = [(1, 0.4), (1, 0.6), (2, 0.9), (0, 0.95), (3, 0.99)]
    assert archive_winners(wins, final, parent_reward=0.7) == [(2, 0.9, True), (1, 0.6, False)]
    # a winner whose rows were all replaced has no final reward and is not added
    assert archive_winners(Counter({4: 3, 2: 1}), [(2, 0.1)], 0.0) == [(4, None, False), (2, 0.1, True)]
    assert archive_winners(Counter(), [], 0.0) == []


def test_the_archive_drops_a_parent_a_mutation_beat_and_keeps_the_new_reward():
    archive = {"x": 0.5, "y": 0.2}
    final = [(0, 0.9), (1, 0.4), (2, 1.0)]
    winners = update_archive(archive, "x", ["a", "b", "c"], Counter({0: 3, 1: 2}), final)
    assert winners == [(0, 0.9, True), (1, 0.4, False)]
    assert archive == {"y": 0.2, "a": 0.9}  # x was beaten by a: it leaves; c never won, b lost
    # an instruction already there takes the new reward, even a lower one (the authors' overwrite)
    archive = {"x": 0.1, "a": 0.95}
    update_archive(archive, "x", ["a"], Counter({0: 1}), [(0, 0.3)])
    assert archive == {"a": 0.3}
    # a parent that only its own copy beat (a mutation list that fell back to it) stays, rescored
    archive = {"x": 0.1}
    update_archive(archive, "x", ["x", "x"], Counter({0: 2, 1: 1}), [(0, 0.6), (1, 0.2)])
    assert archive == {"x": 0.6}
    # nothing beat the parent: the archive is unchanged
    archive = {"x": 0.8}
    update_archive(archive, "x", ["a"], Counter({0: 1}), [(0, 0.3)])
    assert archive == {"x": 0.8}


def test_archive_grows_only_with_winners_that_beat_their_parent(tiny_policy, scripted_mutations):
    result = Darwin(**SMALL).run("Tell me a story.", tiny_policy, hash_reward(), PARAMS)
    seed = events(result, "seed")[0]
    assert seed["reward"] == result.candidates[0].reward
    replayed = {seed["instruction"]: seed["reward"]}
    for w in events(result, "winner"):
        assert w["added"] == (w["reward"] is not None and w["reward"] > w["parent_reward"])
    assert len(events(result, "winner")) <= 2 * SMALL["cycles"]
    for cycle in (1, 2):
        # every cycle's parent came from the archive as it stood, which the trace lists whole
        listed = {a["instruction"]: a["reward"] for a in events(result, "archive") if a["cycle"] == cycle}
        assert listed == replayed
        drawn = [a for a in events(result, "archive") if a["cycle"] == cycle and a["parent"]]
        (parent,) = [a["instruction"] for a in drawn]
        added = [w for w in events(result, "winner") if w["cycle"] == cycle and w["added"]]
        for w in added:
            replayed[w["instruction"]] = w["reward"]
        if any(w["instruction"] != parent for w in added):
            del replayed[parent]
    assert {a["instruction"]: a["reward"] for a in result.details["archive"]} == replayed
    assert any(w["added"] for w in events(result, "winner")), "the hash reward should let a mutation win"


def test_best_is_over_all_cycles_and_ties_go_to_the_first_answer(tiny_policy, scripted_mutations):
    result = Darwin(**SMALL).run("Tell me a story.", tiny_policy, hash_reward(), PARAMS)
    assert len(result.candidates) == 1 + SMALL["cycles"] * SMALL["n"]
    assert result.reward == max(c.reward for c in result.candidates)
    assert result.text == result.best.text
    assert result.details["cycles_completed"] == 2
    constant = CallableReward(lambda p, r: 0.5, name="constant")
    tie = Darwin(**SMALL).run("Tell me a story.", tiny_policy, constant, PARAMS)
    assert tie.best_index == 0 and tie.best.meta["cycle"] == 0


def test_garbled_mutations_fall_back_without_crashing(tiny_policy, length_reward):
    result = Darwin(n=3, m=4, k=2, cycles=1, mutation_max_tokens=24).run(
        "Name a fruit.", tiny_policy, length_reward, PARAMS
    )
    mutations = events(result, "mutation")
    assert len(mutations) == 3
    for m in mutations:  # the random model writes no list: every mutation is the parent
        assert not m["parsed"] and m["instruction"] == m["parent_instruction"] == "Name a fruit."
    assert len(result.candidates) == 4 and result.reward is not None


def test_policy_template_is_used_for_mutations(tiny_policy, length_reward):
    """No template is hard-coded: a policy with its own template renders the mutation request."""
    template = (
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    custom = Policy(
        model=tiny_policy.model, tokenizer=tiny_policy.tokenizer, name="custom", chat_template=template
    )
    seen = []
    hook = custom.model.register_forward_hook(
        lambda module, args, kwargs, out: seen.append(kwargs["input_ids"]), with_kwargs=True
    )
    try:
        Darwin(n=2, m=4, k=1, cycles=1, mutation_max_tokens=16).run("Hi there", custom, length_reward, PARAMS)
    finally:
        hook.remove()
    prefills = [custom.tokenizer.decode(ids[-1]) for ids in seen if ids.shape[-1] > 1]
    assert any(
        "[user] Rewrite the instruction below" in text and "[assistant] 1." in text for text in prefills
    )


def count_prefills(policy, run):
    """Runs ``run()`` and counts the batches it started (forward passes with no cache yet)."""
    seen = []
    hook = policy.model.register_forward_hook(
        lambda module, args, kwargs, out: seen.append(kwargs.get("cache") is None), with_kwargs=True
    )
    try:
        result = run()
    finally:
        hook.remove()
    return result, sum(seen)


def test_first_answer_and_first_mutations_share_one_decode(tiny_policy, scripted_mutations):
    long_lists = {**SMALL, "mutation_max_tokens": 20}  # longer than the answers' 12 tokens
    result, prefills = count_prefills(
        tiny_policy, lambda: Darwin(**long_lists).run("Tell me a story.", tiny_policy, hash_reward(), PARAMS)
    )
    assert prefills == 4  # s0 + cycle-1 mutations, cycle-1 candidates, cycle-2 mutations, candidates
    s0 = result.candidates[0]
    assert s0.meta["cycle"] == 0 and len(s0.token_ids) <= 12  # s0 keeps its own cap
    if len(s0.token_ids) == 12:
        assert s0.finish_reason == "length"
    # stop strings must not cut a mutation list, so then the two decode apart
    stopping = PARAMS.model_copy(update={"stop": ("k",)})
    _, prefills = count_prefills(
        tiny_policy,
        lambda: Darwin(**long_lists).run("Tell me a story.", tiny_policy, hash_reward(), stopping),
    )
    assert prefills == 5


# -- several prompts, counters, trace --------------------------------------------------


def test_prompts_share_batches_and_counters_add_up(tiny_policy, scripted_mutations):
    counted = []
    reward = CallableReward(
        lambda ps, rs: counted.append(len(rs)) or [float(len(r)) for r in rs], batched=True
    )
    results = Darwin(**SMALL).run_batch(["Name a fruit.", "Name a colour."], tiny_policy, reward, PARAMS)
    a, b = results
    assert a.counters.batch_size == b.counters.batch_size == 2
    assert a.counters.forward_passes == b.counters.forward_passes  # shared decodes
    assert a.counters.reward_calls == b.counters.reward_calls == len(counted)
    assert a.counters.reward_items + b.counters.reward_items == sum(counted)
    for result, text in zip(results, ["Name a fruit.", "Name a colour."], strict=True):
        assert {r["prompt"] for r in result.trace} == {results.index(result)}
        assert result.candidates[0].meta["instruction"] == text
        assert result.counters.generated_tokens >= sum(c.num_tokens for c in result.candidates[:1])
        assert result.prompt_tokens == len(tiny_policy.render([{"role": "user", "content": text}]))


def test_trace_is_flat_records_with_every_event(tiny_policy, scripted_mutations):
    result = Darwin(**SMALL).run("Tell me a story.", tiny_policy, hash_reward(), PARAMS)
    kinds = Counter(r["event"] for r in result.trace)
    assert set(kinds) == {"seed", "archive", "mutation", "score", "replace", "winner", "cycle_end"}
    assert kinds["mutation"] == SMALL["n"] * SMALL["cycles"] and kinds["cycle_end"] == SMALL["cycles"]
    for record in result.trace:
        assert all(isinstance(v, str | int | float | bool | type(None)) for v in record.values())
    best_so_far = [r["best_reward"] for r in events(result, "cycle_end")]
    assert best_so_far == sorted(best_so_far) and best_so_far[-1] == result.reward


def test_a_prompt_whose_candidates_all_ended_sits_out_the_others_segments(tiny_policy, scripted_mutations):
    """As over an API (the same search): a scoring that finds all of a prompt's rows finished is
    that prompt's last in the cycle, while the batch's other prompts go on."""
    prompts = [
        "Name a fruit.",
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "Tell me a story.",
    ]
    results = Darwin(**SMALL).run_batch(prompts, tiny_policy, hash_reward(), STOPPING)
    last_segments = {}
    for p, result in enumerate(results):
        scores = events(result, "score")
        for cycle in {r["cycle"] for r in scores}:
            segments = sorted({r["segment"] for r in scores if r["cycle"] == cycle})
            assert segments == list(range(1, len(segments) + 1))
            for segment in segments[:-1]:  # every scoring before its last found a row to go on
                rows = [r for r in scores if (r["cycle"], r["segment"]) == (cycle, segment)]
                assert not all(r["finished"] for r in rows)
            last_segments[p, cycle] = segments[-1]
    for cycle in (1, 2):
        assert len({last_segments[p, cycle] for p in range(len(prompts))}) > 1, "no prompt ended early"


# -- budgets and failures --------------------------------------------------------------


def test_token_budget_returns_the_best_so_far(tiny_policy, scripted_mutations):
    # s0 takes 12 tokens; the cap runs out in the first cycle's candidates
    result = Darwin(**SMALL, max_total_tokens=40).run("Tell me a story.", tiny_policy, hash_reward(), PARAMS)
    assert result.flags == {"budget_exhausted": "max_total_tokens"}
    assert result.counters.generated_tokens <= 40
    assert result.details["cycles_completed"] == 0
    assert result.reward == max(c.reward for c in result.candidates)
    assert len(result.candidates) in (1, 1 + SMALL["n"])


def test_token_budget_inside_the_first_answer(tiny_policy, length_reward):
    result = Darwin(**SMALL, max_total_tokens=5).run("Tell me a story.", tiny_policy, length_reward, PARAMS)
    assert result.flags == {"budget_exhausted": "max_total_tokens"}
    # s0 and cycle 1's mutation list decode together: two tokens a step, so 4 of the 5
    assert result.counters.generated_tokens == 4 and len(result.candidates) == 1
    assert result.reward == float(len(result.text))


def test_time_budget_returns_the_first_answer(tiny_policy, length_reward):
    result = Darwin(**SMALL, time_budget_s=1e-9).run("Tell me a story.", tiny_policy, length_reward, PARAMS)
    assert result.flags == {"budget_exhausted": "time_budget_s"}
    assert result.counters.generated_tokens == 0 and len(result.candidates) == 1


def test_reward_failure_mid_search_keeps_the_work_done(tiny_policy, scripted_mutations):
    calls = []

    def flaky(prompts, responses):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("reward server down")
        return [float(len(r)) for r in responses]

    with pytest.raises(RewardError, match="reward server down") as info:
        Darwin(**SMALL).run("Tell me a story.", tiny_policy, CallableReward(flaky, batched=True), PARAMS)
    (partial,) = info.value.partial
    assert partial.flags == {"reward_failed": True}
    assert partial.candidates[0].reward is not None  # s0 was scored
    assert partial.reward == partial.candidates[0].reward == float(len(partial.text))
    in_flight = [c for c in partial.candidates if c.meta["cycle"] == 1]
    assert len(in_flight) == SMALL["n"] and all(c.reward is None and c.text for c in in_flight)


# -- LangChain and CLI -----------------------------------------------------------------


def test_chat_model_metadata(tiny_policy, scripted_mutations):
    chat = DarwinChatModel(
        policy=tiny_policy, reward=hash_reward(), max_tokens=12, temperature=1.0, seed=3, **SMALL
    )
    message = chat.invoke("Tell me a story.")
    meta = message.response_metadata
    assert meta["strategy"] == "darwin"
    assert meta["reward"] == max(c["reward"] for c in meta["candidates"])
    assert len(meta["candidates"]) == 1 + SMALL["n"] * SMALL["cycles"]
    assert meta["cycles_completed"] == 2 and meta["archive"][0]["instruction"] == "Tell me a story."
    compute = meta["compute"]
    assert compute["reward_calls"] >= 3 and compute["generated_tokens"] > 0 and compute["seconds"] > 0
    assert "budget_exhausted" not in meta
    capped = chat.invoke("Tell me a story.", max_total_tokens=30).response_metadata
    assert capped["budget_exhausted"] == "max_total_tokens" and capped["compute"]["generated_tokens"] <= 30


def test_cli_runs_darwin(monkeypatch, tiny_policy, length_reward, capsys):
    monkeypatch.setattr("align_chains.chat_models.base.load_policy", lambda *a, **k: tiny_policy)
    monkeypatch.setattr("align_chains.chat_models.base.load_reward", lambda *a, **k: length_reward)
    argv = ["chat", "Hi", "--strategy", "darwin", "--n", "2", "-o", "k=1", "-o", "m=4", "-o", "cycles=1",
            "-o", "mutation_max_tokens=16", "-o", "max_total_tokens=20", "--max-tokens", "8", "--seed", "0",
            "--quiet"]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "(darwin, " in out and "budget exhausted: max_total_tokens" in out


def test_cli_rejects_bad_darwin_settings_before_loading(monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("align_chains.chat_models.base.load_policy", refuse)
    assert cli.main(["chat", "Hi", "--strategy", "darwin", "-o", "k=9", "--quiet"]) == 2
    assert "k=9 must not exceed n=5" in capsys.readouterr().err


def test_trace_plot(tiny_policy, scripted_mutations, tmp_path):
    pytest.importorskip("matplotlib")
    from align_chains.plots import plot_darwin_trace

    result = Darwin(**SMALL).run("Tell me a story.", tiny_policy, hash_reward(), PARAMS)
    figure = plot_darwin_trace(result.trace, tmp_path / "trace.png")
    assert (tmp_path / "trace.png").stat().st_size > 0
    assert [ax.get_title().split(" (")[0] for ax in figure.axes] == ["cycle 1", "cycle 2"]
    with pytest.raises(ValueError, match="no DARWIN scoring records"):
        plot_darwin_trace([{"event": "seed", "reward": 1.0}])
