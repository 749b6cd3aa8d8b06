"""DARWIN's mutation modes that keep the user's constraint: the pure rules (terms, guard,
restatement) on hand-written text, and what each mode hands the candidates on a tiny model."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

import align_chains.strategies.darwin_driver as darwin_module
import align_chains.strategies.darwin_local as local_module
from align_chains.engine import SamplingParams
from align_chains.strategies.darwin import Darwin
from align_chains.strategies.darwin_trace import Mutation
from align_chains.strategies.mutation import (
    ParsedMutations,
    constraint_terms,
    guard_mutations,
    keeps_terms,
    restated,
)

PARAMS = SamplingParams(max_new_tokens=6, temperature=1.0, seed=3)
ORIGINAL = "Write exactly 12 words that use these words: rain, old moon."
KEEPS = "In 12 words, write about rain and an old moon."
LOSES = "Write a short poem about the night sky."


@pytest.mark.parametrize(
    ("instruction", "terms"),
    [
        (ORIGINAL, ["12", "rain", "old moon"]),
        ('Describe a beach without the words "sand" or \u201cocean\u201d.', ["sand", "ocean"]),
        ("Don't say 'hi', it's rude.", ["hi"]),
        ("Write a title, then exactly 3 bullets starting with '- '.", ["3"]),
        ("Tips: be kind, be brief and stay calm.", ["be kind", "be brief", "stay calm"]),
        ("Write two sentences about a party in a clearly negative tone.", []),
        ("Note: this is a long clause that is not a list, really.", []),
    ],
)
def test_constraint_terms_are_numbers_quotes_and_listed_items(instruction, terms):
    assert constraint_terms(instruction) == terms


def test_keeps_terms_matches_whole_words_and_phrases_in_any_case():
    assert keeps_terms("RAIN fell on the Old  Moon in 12 words", ["12", "rain", "old moon"])
    assert not keeps_terms("moonlight and rain, 12 times", ["rain", "moon"])  # "moonlight" is not "moon"
    assert not keeps_terms("rain in 120 words", ["12", "rain"])
    assert keeps_terms("anything at all", [])


def test_guard_replaces_rewrites_that_lose_a_term_of_the_original_by_the_parent():
    parent = "Use rain and an old moon, 12 words, in a poem."
    parsed = ParsedMutations([KEEPS, LOSES, parent], parsed=2)  # the third is the parser's fallback
    guarded, dropped = guard_mutations(parsed, ORIGINAL, parent)
    assert guarded.instructions == [KEEPS, parent, parent] and guarded.parsed == 2
    assert dropped == [None, LOSES, None]
    # the terms are the original's: a parent that already lost one does not lower the bar
    lossy_parent = "Write about rain."
    guarded, dropped = guard_mutations(ParsedMutations(["Rain, in prose."], 1), ORIGINAL, lossy_parent)
    assert guarded.instructions == [lossy_parent] and dropped == ["Rain, in prose."]


def test_restated_keeps_the_original_verbatim_before_the_guidance():
    assert restated(ORIGINAL, LOSES) == f"{ORIGINAL}\n\n{LOSES}"
    assert restated(ORIGINAL, "  write EXACTLY 12 words that use these words: rain, old moon. ") == ORIGINAL


def test_the_paper_mode_is_the_default_and_unknown_modes_are_rejected():
    assert Darwin().mutation_mode == "rewrite"
    with pytest.raises(ValidationError, match="mutation_mode"):
        Darwin(mutation_mode="keep")


@pytest.fixture
def scripted(monkeypatch):
    """The policy's list is always [KEEPS, LOSES, ...]; records the instruction each candidate
    prompt is rendered with (the tiny random model writes no usable list itself)."""

    def fake(text: str, n: int, fallback: str) -> ParsedMutations:
        return ParsedMutations([KEEPS, LOSES, *[f"{KEEPS} Variant {i}." for i in range(n - 2)]], n)

    rendered: list[str] = []
    real = local_module.with_instruction

    def spy(conversation, instruction):
        rendered.append(instruction)
        return real(conversation, instruction)

    monkeypatch.setattr(darwin_module, "parse_mutations", fake)
    monkeypatch.setattr(local_module, "with_instruction", spy)
    return rendered


def _run(tiny_policy, length_reward, mode: str):
    darwin = Darwin(n=3, m=3, k=2, cycles=1, mutation_max_tokens=16, mutation_mode=mode)
    return darwin.run(ORIGINAL, tiny_policy, length_reward, PARAMS)


def test_guard_mode_answers_the_parent_instead_and_counts_the_drop(tiny_policy, length_reward, scripted):
    result = _run(tiny_policy, length_reward, "guard")
    assert result.details["mutations_dropped"] == 1
    mutations = [Mutation.from_record(r) for r in result.trace if r["event"] == "mutation"]
    assert [m.dropped for m in mutations] == [None, LOSES, None]
    assert mutations[1].instruction == mutations[1].parent_instruction == ORIGINAL  # cycle 1's parent: x
    assert LOSES not in scripted and scripted.count(ORIGINAL) == 1
    by_row = {c.meta["mutation"]: c.meta["instruction"] for c in result.candidates if c.meta["cycle"] == 1}
    assert by_row == {0: KEEPS, 1: ORIGINAL, 2: f"{KEEPS} Variant 0."}


def test_restate_mode_answers_the_original_plus_guidance_and_evolves_the_guidance(
    tiny_policy, length_reward, scripted
):
    result = _run(tiny_policy, length_reward, "restate")
    assert result.details["mutations_dropped"] == 0
    guidance = [KEEPS, LOSES, f"{KEEPS} Variant 0."]
    assert scripted == [f"{ORIGINAL}\n\n{text}" for text in guidance]
    cycle_one = [c for c in result.candidates if c.meta["cycle"] == 1]
    assert all(c.meta["instruction"].startswith(f"{ORIGINAL}\n\n") for c in cycle_one)
    archive = [entry["instruction"] for entry in result.details["archive"]]
    assert all("\n\n" not in text for text in archive)  # the guidance, never the composed prompt


def test_rewrite_mode_answers_the_rewrites_as_the_paper_does(tiny_policy, length_reward, scripted):
    result = _run(tiny_policy, length_reward, "rewrite")
    assert scripted == [KEEPS, LOSES, f"{KEEPS} Variant 0."]
    assert result.details["mutations_dropped"] == 0
