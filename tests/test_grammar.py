"""Grammar-constrained decoding in the shared engine: every row matches, states follow rows."""

from __future__ import annotations

import json
import re

import pytest
import torch

from align_chains.engine import Decoder, SamplingParams, make_generator
from align_chains.engine.grammar import Grammar
from align_chains.errors import InvalidInputError
from align_chains.models.tool_calls import parse_tool_calls

USER = [{"role": "user", "content": "Describe a city."}]
CITY = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "population": {"type": "integer"}},
    "required": ["name", "population"],
    "additionalProperties": False,
}


def params(grammar: Grammar | None, **kw) -> SamplingParams:
    return SamplingParams(max_new_tokens=kw.pop("max_new_tokens", 48), temperature=1.0, grammar=grammar, **kw)


def test_every_row_of_a_random_model_matches_a_json_schema(tiny_policy):
    from jsonschema import validate

    decoder = Decoder(tiny_policy)
    done = decoder.generate([tiny_policy.render(USER)], 6, params(Grammar.json_schema(CITY), seed=0))
    assert len(done) == 6
    for c in done:
        assert c.finish_reason == "stop", c
        validate(json.loads(c.text), CITY)
    assert decoder.counters.grammar_mask_seconds > 0


def test_regex_and_lark_grammars_constrain_every_row(tiny_policy):
    decoder = Decoder(tiny_policy)
    prompt = tiny_policy.render(USER)
    for c in decoder.generate([prompt], 4, params(Grammar.regex(r"(yes|no), [0-9]{1,3}"), seed=1)):
        assert re.fullmatch(r"(yes|no), [0-9]{1,3}", c.text), c.text
    lark = 'start: "The answer is " ANSWER "."\nANSWER: "red" | "green" | "blue"'
    for c in decoder.generate([prompt], 4, params(Grammar.lark(lark), seed=2)):
        assert c.text in {f"The answer is {w}." for w in ("red", "green", "blue")}, c.text


def test_select_forks_and_drops_grammar_states_with_their_rows(tiny_policy):
    """Duplicating a row mid-answer (beams, DARWIN's replacement) carries its grammar state on."""
    decoder = Decoder(tiny_policy)
    p = params(Grammar.json_schema(CITY), max_new_tokens=60)
    batch = decoder.start([tiny_policy.render(USER)], 3, p)
    generator = make_generator(3, tiny_policy.device)
    decoder.extend(batch, 5, generator=generator)
    batch.select([2, 2, 0])  # row 1 dropped, row 2 duplicated
    assert len(batch.grammar.matchers) == 3
    assert batch.grammar.matchers[0] is not batch.grammar.matchers[1]
    decoder.extend(batch, generator=generator)
    for c in decoder.completions(batch):
        assert c.finish_reason == "stop", c
        json.loads(c.text)


def test_restart_gives_fresh_grammar_states(tiny_policy):
    decoder = Decoder(tiny_policy)
    p = params(Grammar.regex("[a-c]{3}"), seed=4)
    batch = decoder.start([tiny_policy.render(USER)], 2, p)
    decoder.extend(batch, generator=make_generator(4, tiny_policy.device))
    again = decoder.restart(batch, [3])
    decoder.extend(again, generator=make_generator(5, tiny_policy.device))
    assert all(re.fullmatch("[a-c]{3}", c.text) for c in decoder.completions(again))


def test_masked_logits_are_read_by_guided_strategies_and_logprobs_stay_the_policys(tiny_policy):
    decoder = Decoder(tiny_policy)
    batch = decoder.start([tiny_policy.render(USER)], 2, params(Grammar.regex("[0-9]+")))
    raw = batch.next_logits.clone()
    masked = decoder.logits(batch)
    digits = {tiny_policy.tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)}
    finite = set(torch.isfinite(masked[0]).nonzero().flatten().tolist())
    assert digits <= finite and len(finite) < masked.shape[-1] // 10
    token = torch.tensor([min(digits)] * 2)
    decoder.append(batch, token)
    expected = torch.log_softmax(raw, -1)[0, min(digits)]
    torch.testing.assert_close(batch.logprobs[0, 0], expected)


def test_a_complete_grammar_only_allows_eos(tiny_policy):
    decoder = Decoder(tiny_policy)
    batch = decoder.start([tiny_policy.render(USER)], 1, params(Grammar.regex("ok")))
    for piece in tiny_policy.tokenizer.encode("ok", add_special_tokens=False):
        decoder.append(batch, torch.tensor([piece]))
    allowed = torch.isfinite(decoder.logits(batch)[0]).nonzero().flatten().tolist()
    assert set(allowed) <= set(tiny_policy.eos_token_ids) and allowed


def test_a_dead_end_row_ends_with_a_flag_not_a_crash(tiny_policy):
    decoder = Decoder(tiny_policy)
    batch = decoder.start([tiny_policy.render(USER)], 2, params(Grammar.regex("[0-9]{4}")))
    letter = tiny_policy.tokenizer.convert_tokens_to_ids("a")
    digit = tiny_policy.tokenizer.convert_tokens_to_ids("7")
    decoder.append(batch, torch.tensor([letter, digit]))  # row 0 forced off its grammar
    decoder.extend(batch, generator=make_generator(0, tiny_policy.device))
    first, second = decoder.completions(batch)
    assert first.finish_reason == "grammar_dead_end"
    assert second.finish_reason == "stop" and re.fullmatch("[0-9]{4}", second.text)


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda: Grammar.json_schema({"type": "no-such-type"}), "JSON schema"),
        (lambda: Grammar.lark("start: undefined_rule"), "grammar"),
        (lambda: Grammar.regex("(unclosed"), "regex"),
    ],
)
def test_bad_grammars_fail_before_any_decoding(tiny_policy, make, fragment):
    decoder = Decoder(tiny_policy)
    with pytest.raises(InvalidInputError, match=fragment):
        decoder.start([tiny_policy.render(USER)], 1, params(make()))
    assert decoder.counters.forward_passes == 0


def test_sea_refuses_a_grammar_naming_the_strategies_that_can(tiny_policy):
    from align_chains.strategies.sea import SEA

    with pytest.raises(InvalidInputError, match=r"cannot keep to a grammar.*best-of-n"):
        SEA().run_batch(["Hi."], tiny_policy, None, params(Grammar.regex("[0-9]+")))


def test_darwin_holds_its_first_answers_and_its_rewrites_to_the_grammar(tiny_policy, length_reward):
    """DARWIN decodes its prose rewrites of the instruction alongside the first answers when it
    can; under a grammar it must not, or the first answers (and every answer built on them) are free."""
    from align_chains import DarwinChatModel

    model = DarwinChatModel(
        model=tiny_policy, reward=length_reward, n=2, k=1, m=4, cycles=1, mutation_max_tokens=16,
        max_tokens=12, seed=0, regex=r"(yes|no), [0-9]{1,3}",
    )  # fmt: skip
    message = model.invoke("Is it raining?")
    candidates = message.response_metadata["candidates"]
    assert len(candidates) == 3  # the first answer and the cycle's two
    for candidate in candidates:
        assert re.fullmatch(r"(yes|no), [0-9]{1,3}", candidate["text"]), candidate


def test_structured_output_batches_every_prompt_in_one_run_under_the_grammar(tiny_policy, length_reward):
    """``with_structured_output(...).batch`` (one run for all prompts): every result parses, and the
    callbacks see the schema as ``invoke``'s do (the tracing kwarg is not passed to the strategy)."""
    from langchain_core.callbacks import BaseCallbackHandler
    from pydantic import BaseModel, Field

    from align_chains import BestOfNChatModel

    class Flag(BaseModel):
        ok: bool
        code: int = Field(ge=0, le=9)

    class Options(BaseCallbackHandler):
        def __init__(self) -> None:
            self.options: list[dict] = []

        def on_chat_model_start(self, serialized, messages, *, options=None, **kwargs) -> None:
            self.options.append(options)

    handler = Options()
    model = BestOfNChatModel(model=tiny_policy, reward=length_reward, n=2, max_tokens=24, seed=0)
    flags = model.with_structured_output(Flag).batch(["a", "b", "c"], {"callbacks": [handler]})
    assert [type(f) for f in flags] == [Flag] * 3
    assert len(handler.options) == 3
    assert all(o["ls_structured_output_format"]["schema"]["title"] == "Flag" for o in handler.options)


def test_tool_arguments_take_only_the_declared_keys(tiny_policy, length_reward):
    """Under an open schema a small model invents keys until max_tokens cuts the call; the tool-call
    grammar closes every object that lists its properties (as OpenAI strict mode and vLLM do)."""
    from align_chains import BestOfNChatModel
    from align_chains.chat_models.constraints import closed_objects

    place = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 6}},
        "required": ["city"],
    }
    parameters = {"type": "object", "properties": {"where": place}, "required": ["where"]}
    spec = {"name": "weather", "description": "Weather.", "parameters": parameters}
    model = BestOfNChatModel(model=tiny_policy, reward=length_reward, n=4, max_tokens=48, seed=0)
    message = model.bind_tools([spec], tool_choice="weather").invoke("Weather?")
    assert message.response_metadata["output_check"]["valid_candidates"] == 4
    for candidate in message.response_metadata["candidates"]:
        (call,) = parse_tool_calls(candidate["text"], ["weather"]).calls
        assert list(call["args"]) == ["where"] and list(call["args"]["where"]) == ["city"], candidate

    closed = closed_objects(parameters)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["where"]["additionalProperties"] is False
    assert "additionalProperties" not in parameters and "additionalProperties" not in place  # not mutated
    open_on_purpose = {"type": "object", "properties": {}, "additionalProperties": {"type": "integer"}}
    assert closed_objects(open_on_purpose) == open_on_purpose
