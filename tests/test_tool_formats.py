"""Tool calls in each model family's own format (issue 27 item 3).

Published chat templates of four families (tests/fixtures/chat_templates/, see SOURCES.md) on
the tiny random model, SmolLM2's tokenizer plus each family's special tokens: the family is
detected from the template, forced calls decode under that family's grammar into the bound
tool with schema-valid arguments, calls round-trip through text, a multi-turn tool
conversation renders where the template puts calls and results, and streamed chunks
reassemble into the same calls.
"""

from __future__ import annotations

import functools
import operator
import re
from pathlib import Path
from typing import Literal

import pytest
from jsonschema import validate
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool

from align_chains import BestOfNChatModel
from align_chains.chat_models.output_contract import OutputContract
from align_chains.errors import InvalidInputError
from align_chains.models.messages import to_conversation
from align_chains.models.policy import Policy
from align_chains.models.tool_calls import write_calls
from align_chains.models.tool_formats import TOOL_FORMATS, detect_tool_format, native_call_id, parse_calls
from align_chains.testing import with_chat_template

TEMPLATES = Path(__file__).parent / "fixtures" / "chat_templates"
LLAMA_SPECIALS = [
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
]
MISTRAL_SPECIALS = [
    "[INST]",
    "[/INST]",
    "[TOOL_CALLS]",
    "[AVAILABLE_TOOLS]",
    "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]",
]
# family -> (template fixture, the special tokens its tokenizer has, the format it must be read as)
FAMILIES = {
    "qwen2.5": ("qwen2.5-instruct.jinja", [], "hermes"),  # its <tool_call> tags are not special
    "llama3.1": ("llama-3.1-instruct.jinja", LLAMA_SPECIALS, "llama3_json"),
    "mistral": ("mistral-nemo-instruct-2407.jinja", MISTRAL_SPECIALS, "mistral"),
    "llama3.2-pythonic": ("llama-3.2-pythonic.jinja", LLAMA_SPECIALS, "pythonic"),
}


@tool
def set_light(room: Literal["kitchen", "hall"], on: bool) -> str:
    """Switch a room's light on or off."""
    return f"{room}: {'on' if on else 'off'}"


SCHEMA = set_light.tool_call_schema.model_json_schema()


@pytest.fixture(scope="module")
def family_policies(tiny_policy) -> dict[str, Policy]:
    return {
        family: with_chat_template(
            tiny_policy,
            (TEMPLATES / template).read_text(),
            specials,
            ("<tool_call>", "</tool_call>") if family == "qwen2.5" else (),  # Qwen's: not special
        )
        for family, (template, specials, _) in FAMILIES.items()
    }


def test_family_is_detected_from_the_template(family_policies, tiny_policy):
    for family, (_, _, expected) in FAMILIES.items():
        assert family_policies[family].tool_format == expected, family
    assert tiny_policy.tool_format == "hermes"  # SmolLM2: no tool support, the Hermes fallback
    assert detect_tool_format("{{ messages }}") == "hermes"


CALLS = [
    {"name": "set_light", "args": {"room": "hall", "on": True}},
    {
        "name": "note",
        "args": {"text": 'say "hi"\nthen\tgo', "tags": ["a", None], "deep": {"x": 1.5, "y": False}},
    },
]


@pytest.mark.parametrize("tool_format", TOOL_FORMATS)
def test_calls_round_trip_through_text(tool_format):
    text = write_calls(tool_format, CALLS)
    parsed = parse_calls(tool_format, text, ["set_light", "note"])
    assert parsed.invalid == [] and parsed.content == ""
    assert [(c["name"], c["args"]) for c in parsed.calls] == [(c["name"], c["args"]) for c in CALLS]
    assert all(c["id"].startswith("call_") for c in parsed.calls)
    prose = parse_calls(tool_format, "The hall light is on.", ["set_light"])
    assert prose.calls == [] and prose.content == "The hall light is on."


@pytest.mark.parametrize(
    ("tool_format", "text", "error"),
    [
        ("llama3_json", '{"name": "fly", "parameters": {}}', "no bound tool is named 'fly'"),
        ("mistral", '[TOOL_CALLS][{"name": "set_light", "arguments": {"room": ', "not valid JSON"),
        ("pythonic", '[set_light("hall", on=True)]', "not a Python list of calls"),
    ],
)
def test_malformed_calls_are_invalid_not_raised(tool_format, text, error):
    parsed = parse_calls(tool_format, text, ["set_light"])
    assert parsed.calls == [] and error in parsed.invalid[0]["error"]


def test_special_tokens_dropped_on_decoding_still_parse():
    """A decoder that skips special tokens drops Mistral's marker and Llama's python tag."""
    mistral = parse_calls(
        "mistral", '[{"name": "set_light", "arguments": {"room": "hall", "on": false}}]', ["set_light"]
    )
    llama = parse_calls(
        "llama3_json", '<|python_tag|>{"name": "set_light", "parameters": {"room": "hall"}}', ["set_light"]
    )
    assert mistral.calls[0]["args"] == {"room": "hall", "on": False}
    assert llama.calls[0]["args"] == {"room": "hall"}


def _model(policy: Policy, length_reward, **kwargs) -> BestOfNChatModel:
    return BestOfNChatModel(
        policy=policy, reward=length_reward, n=2, max_tokens=48, temperature=0.0, seed=0, **kwargs
    )


# the families' own templates, and SmolLM2's (no tool support) with the format set by hand
CASES = [(f, None) for f in FAMILIES] + [("smollm2", "mistral"), ("smollm2", "pythonic")]


@pytest.mark.parametrize(("family", "override"), CASES)
def test_forced_call_is_valid_in_the_family_format(
    family_policies, tiny_policy, length_reward, family, override
):
    policy = tiny_policy if family == "smollm2" else family_policies[family]
    model = _model(policy, length_reward, tool_format=override)
    tool_format = override or FAMILIES[family][2]
    (result,) = model.run_strategy(
        [to_conversation([HumanMessage("Light the hall.")])], tools=[_spec()], tool_choice="set_light"
    )
    opening = {
        "hermes": "<tool_call>",
        "llama3_json": '{"name": ',
        "mistral": "[TOOL_CALLS][",
        "pythonic": "[",
    }
    markers = dict(policy.call_marker_tokens(tool_format))
    if "[TOOL_CALLS]" in markers:  # Mistral's [TOOL_CALLS] is one special token: decoded text drops it
        assert result.best.token_ids[0] == markers["[TOOL_CALLS]"] and result.text.startswith('[{"name": ')
    else:
        if markers:  # Qwen's <tool_call> is one added token: the call opens with it
            assert result.best.token_ids[0] == markers["<tool_call>"]
        assert result.text.startswith(opening[tool_format])
    assert result.details["output_check"]["valid"]
    message = model.bind_tools([set_light], tool_choice="set_light").invoke("Light the hall.")
    (call,) = message.tool_calls
    assert call["name"] == "set_light" and message.response_metadata["finish_reason"] == "tool_calls"
    validate(call["args"], SCHEMA)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_streamed_chunks_reassemble_into_the_same_calls(family_policies, length_reward, family):
    model = _model(family_policies[family], length_reward).bind_tools([set_light], tool_choice="set_light")
    whole = model.invoke("Light the kitchen.")
    streamed = functools.reduce(operator.add, model.stream("Light the kitchen."))
    assert whole.tool_calls and [(c["name"], c["args"]) for c in streamed.tool_calls] == [
        (c["name"], c["args"]) for c in whole.tool_calls
    ]


HISTORY = [
    SystemMessage("Be brief."),
    HumanMessage("Light the hall."),
    AIMessage(
        "", tool_calls=[{"name": "set_light", "args": {"room": "hall", "on": True}, "id": "call_7f3a"}]
    ),
    ToolMessage("hall: on", tool_call_id="call_7f3a", name="set_light"),
]
# where each template puts the call and the result (the rendered text must show them in order)
PLACES = {
    "qwen2.5": [
        "<|im_start|>assistant\n<tool_call>\n"
        '{"name": "set_light", "arguments": {"room": "hall", "on": true}}\n</tool_call>',
        "<|im_start|>user\n<tool_response>\nhall: on\n</tool_response>",
    ],
    "llama3.1": [
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
        '{"name": "set_light", "parameters": {"room": "hall", "on": true}}',
        '<|start_header_id|>ipython<|end_header_id|>\n\n"hall: on"<|eot_id|>',
    ],
    "mistral": [
        '[TOOL_CALLS][{"name": "set_light", "arguments": {"room": "hall", "on": true}, "id": "ID"}]',
        '[TOOL_RESULTS]{"content": hall: on, "call_id": "ID"}[/TOOL_RESULTS]',
    ],
    "llama3.2-pythonic": [
        "<|start_header_id|>assistant<|end_header_id|>\n\n[set_light(room=hall, on=True)]<|eot_id|>",
        '<|start_header_id|>ipython<|end_header_id|>\n\n{"output": "hall: on"}<|eot_id|>',
    ],
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_multi_turn_tool_conversation_renders_as_the_template_intends(family_policies, family):
    policy = family_policies[family]
    contract = OutputContract.from_kwargs({"tools": [_spec()]}, policy.tool_format)
    text = policy.tokenizer.decode(policy.render(contract.prepare(to_conversation(HISTORY))))
    mistral_id = native_call_id("call_7f3a", "mistral")
    assert re.fullmatch(r"[0-9a-f]{9}", mistral_id)
    at = 0
    for piece in PLACES[family]:
        piece = piece.replace('"ID"', f'"{mistral_id}"')
        found = text.find(piece, at)
        assert found >= 0, f"{piece!r} not after {at} in {text!r}"
        at = found + len(piece)


def test_fallback_history_writes_calls_in_the_chosen_format(tiny_policy):
    """SmolLM2's template knows no tools: earlier calls go back into the assistant turn as text,
    in the format the system prompt asks for."""
    contract = OutputContract.from_kwargs({"tools": [_spec()]}, "pythonic")
    text = tiny_policy.tokenizer.decode(tiny_policy.render(contract.prepare(to_conversation(HISTORY))))
    assert "[tool_name(argument=value, other=value)]" in text  # the prompt shows the format
    assert '<|im_start|>assistant\n[set_light(room="hall", on=True)]<|im_end|>' in text
    assert "<tool_response>" in text and "<tool_call>" not in text


def test_unknown_tool_format_is_refused(tiny_policy, length_reward):
    with pytest.raises((ValueError, InvalidInputError), match="tool_format"):
        _model(tiny_policy, length_reward, tool_format="xml")


def _spec() -> dict:
    from langchain_core.utils.function_calling import convert_to_openai_tool

    return convert_to_openai_tool(set_light)


LAMP = {
    "name": "lamp",
    "description": "Set a lamp; every argument is optional.",
    "parameters": {
        "type": "object",
        "properties": {"level": {"type": "integer"}, "on": {"type": "boolean"}, "label": {"type": "string"}},
    },
}


def _accepts(policy: Policy, grammar, text: str) -> bool:
    """Whether the grammar lets ``text`` be decoded in full, ending there."""
    from align_chains.engine.grammar import compile_grammar

    compiled = compile_grammar(grammar, policy.tokenizer, policy.vocab_size, policy.eos_token_ids)
    matcher = compiled.matcher()
    ids = policy.tokenizer(text, add_special_tokens=False)["input_ids"]
    return all(matcher.consume_token(i) for i in ids) and not matcher.is_error() and matcher.is_accepting()


@pytest.mark.parametrize("tool_format", TOOL_FORMATS)
def test_the_grammar_takes_what_the_format_writes_and_nothing_else(tiny_policy, tool_format):
    """Format -> grammar agreement: written calls (optional arguments left out, parallel calls) are
    accepted; a call to an unbound tool, arguments off the schema, or prose under a forced choice are not."""
    from align_chains.chat_models.constraints import tool_call_grammar

    tools = (_spec()["function"], LAMP)
    forced, auto = tool_call_grammar(tools, "any", tool_format), tool_call_grammar(tools, None, tool_format)
    good = [
        [{"name": "lamp", "args": {}}],
        [{"name": "lamp", "args": {"on": False}}],
        [
            {"name": "set_light", "args": {"room": "kitchen", "on": True}},
            {"name": "lamp", "args": {"level": 3}},
        ],
    ]
    for calls in good:
        assert _accepts(tiny_policy, forced, write_calls(tool_format, calls)), calls
        assert _accepts(tiny_policy, auto, write_calls(tool_format, calls)), calls
    for calls in (
        [{"name": "fly", "args": {}}],
        [{"name": "set_light", "args": {"room": "attic", "on": True}}],
    ):
        assert not _accepts(tiny_policy, forced, write_calls(tool_format, calls)), calls
    assert not _accepts(tiny_policy, forced, "The light is on.")
    assert _accepts(tiny_policy, auto, "The light is on.")


@pytest.mark.parametrize("family", ["qwen2.5", "mistral"])
def test_markers_held_as_one_token_are_asked_for_as_that_token(family_policies, family):
    """Qwen's <tool_call> (an added token) and Mistral's [TOOL_CALLS] (a special token) are single
    tokens of their tokenizers: the grammar takes the call as the tokenizer writes it."""
    from align_chains.chat_models.constraints import tool_call_grammar

    policy = family_policies[family]
    tool_format = policy.tool_format
    markers = policy.call_marker_tokens(tool_format)
    assert markers and all(policy.tokenizer.convert_ids_to_tokens(i) == m for m, i in markers)
    grammar = tool_call_grammar((_spec()["function"],), "any", tool_format, markers)
    text = write_calls(tool_format, [{"name": "set_light", "args": {"room": "hall", "on": False}}])
    assert _accepts(policy, grammar, text)
