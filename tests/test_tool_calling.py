"""Tool calling and structured output on aligned chat models.

The policy is a tiny Llama taught in this session to answer a few rendered prompts (see
``align_chains.testing.taught_policy``), so its tool calls are its own weights' choices and the
tests are deterministic. Parsing, rendering and the contract are also tested directly.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from langchain_core.exceptions import OutputParserException
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel, Field
from typing_extensions import TypedDict

from align_chains import (
    BestOfNChatModel,
    DarwinChatModel,
    RewardGuidedChatModel,
    SEAChatModel,
    ValueGuidedChatModel,
)
from align_chains.chat_models.output_contract import OutputContract
from align_chains.chat_models.structured import response_format
from align_chains.engine.counters import ComputeCounters
from align_chains.errors import InvalidInputError
from align_chains.models.messages import to_conversation
from align_chains.models.policy import Policy
from align_chains.models.tool_calls import parse_tool_calls
from align_chains.rewards import CallableReward
from align_chains.strategies.base import Candidate, StrategyResult
from align_chains.testing import taught_policy


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def shout(text: str) -> str:
    """Say something loudly."""
    return text.upper()


class Joke(BaseModel):
    """A joke to tell the user."""

    setup: str = Field(description="The question")
    punchline: str = Field(description="The answer")


class JokeDict(TypedDict):
    setup: str
    punchline: str


VALID_CALL = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
BROKEN_CALL = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": oops}}\n</tool_call>'
JOKE = '{"setup": "Why did the cat sit?", "punchline": "To rest."}'
BAD_JOKE = '{"setup": "Why did the cat sit?"}'

TOOLS = {"tools": [add, shout]}
SCHEMA = {"response_format": response_format(Joke, "json_schema")}
SCHEMA_DICT = {"response_format": response_format(JokeDict, "json_schema")}  # a different prompt


def render(policy: Policy, question: str, bind: dict) -> list[int]:
    """The prompt exactly as a chat model bound with ``bind`` renders it."""
    from langchain_core.utils.function_calling import convert_to_openai_tool

    kwargs = dict(bind)
    if "tools" in kwargs:
        kwargs["tools"] = [convert_to_openai_tool(t) for t in kwargs["tools"]]
    contract = OutputContract.from_kwargs(kwargs)
    return policy.render(contract.prepare(to_conversation([HumanMessage(question)])))


@pytest.fixture(scope="module")
def taught(tiny_policy) -> Policy:
    lessons = [
        (render(tiny_policy, "What is 2 plus 3?", TOOLS), VALID_CALL),
        (render(tiny_policy, "Add badly.", TOOLS), BROKEN_CALL),
        # two answers to one prompt: sampling gives either
        (render(tiny_policy, "Add, maybe.", TOOLS), VALID_CALL),
        (render(tiny_policy, "Add, maybe.", TOOLS), BROKEN_CALL),
        (render(tiny_policy, "Tell me a joke.", SCHEMA), JOKE),
        (render(tiny_policy, "Tell me a joke.", SCHEMA_DICT), JOKE),
        (render(tiny_policy, "Tell me half a joke.", SCHEMA), BAD_JOKE),
        (render(tiny_policy, "A joke, maybe.", SCHEMA), JOKE),
        (render(tiny_policy, "A joke, maybe.", SCHEMA), BAD_JOKE),
    ]
    return taught_policy(lessons, steps=100)


def prefers_broken_calls(_prompt, response: str) -> float:
    """A reward that likes exactly the calls the contract must not choose."""
    return 10.0 if "oops" in response else 0.0


def prefers_half_jokes(_prompt, response: str) -> float:
    return 0.0 if "punchline" in response else 10.0


def assert_a_keeper_beat_a_higher_reward(message: AIMessage, bind: dict) -> None:
    """The chosen answer keeps the contract although a breaker had a higher reward."""
    contract = OutputContract.from_kwargs(dict(bind))
    candidates = message.response_metadata["candidates"]
    best = candidates[message.response_metadata["output_check"]["chosen"]]
    chosen = best["reward"]
    assert contract.check(best["text"]) is None and chosen == message.response_metadata["reward"]
    assert any(contract.check(c["text"]) and c["reward"] > chosen for c in candidates)
    assert message.response_metadata["output_check"]["reselected"] is True


def sampled(policy: Policy, reward) -> BestOfNChatModel:
    """Best-of-6 at temperature 1: both taught answers to a two-answer prompt turn up."""
    return BestOfNChatModel(
        model=policy, reward=CallableReward(reward), n=6, temperature=1.0, max_tokens=40, seed=3
    )


def greedy(policy: Policy, **kw) -> BestOfNChatModel:
    return BestOfNChatModel(model=policy, reward=lambda p, r: 0.0, n=1, temperature=0.0, max_tokens=40, **kw)


# -- parsing --------------------------------------------------------------------------------
class TestParse:
    def test_one_call_and_surrounding_text(self):
        parsed = parse_tool_calls(f"Let me add.\n{VALID_CALL}", ["add"])
        assert parsed.content == "Let me add."
        assert [(c["name"], c["args"]) for c in parsed.calls] == [("add", {"a": 2, "b": 3})]
        assert parsed.ok

    def test_several_calls_a_list_and_an_unclosed_block(self):
        text = (
            '<tool_call>[{"name": "add", "arguments": {"a": 1, "b": 1}}, {"name": "shout", '
            '"arguments": {"text": "hi"}}]</tool_call>\n<tool_call>{"name": "add", "arguments": '
            '"{\\"a\\": 5, \\"b\\": 6}"}'
        )
        parsed = parse_tool_calls(text, ["add", "shout"])
        assert [c["name"] for c in parsed.calls] == ["add", "shout", "add"]
        assert parsed.calls[2]["args"] == {"a": 5, "b": 6}  # string arguments are decoded
        assert len({c["id"] for c in parsed.calls}) == 3

    def test_malformed_json_is_an_invalid_call_not_an_exception(self):
        parsed = parse_tool_calls(BROKEN_CALL, ["add"])
        assert parsed.calls == []
        (bad,) = parsed.invalid
        assert bad["name"] == "add" and "not valid JSON" in bad["error"] and "oops" in bad["args"]

    def test_unknown_tool_is_invalid(self):
        parsed = parse_tool_calls('<tool_call>{"name": "rm", "arguments": {}}</tool_call>', ["add"])
        assert parsed.invalid[0]["name"] == "rm" and "no bound tool" in parsed.invalid[0]["error"]

    def test_bare_json_call_and_plain_text(self):
        parsed = parse_tool_calls('{"name": "add", "parameters": {"a": 1, "b": 2}}', ["add"])
        assert parsed.calls[0]["args"] == {"a": 1, "b": 2} and parsed.content == ""
        assert parse_tool_calls("Just text {with braces}.", ["add"]).content == "Just text {with braces}."


# -- rendering ------------------------------------------------------------------------------
HISTORY = [
    SystemMessage("Be brief."),
    HumanMessage("What is 2 plus 3, and shout hi?"),
    AIMessage(
        "",
        tool_calls=[
            {"name": "add", "args": {"a": 2, "b": 3}, "id": "c1"},
            {"name": "shout", "args": {"text": "hi"}, "id": "c2"},
        ],
    ),
    ToolMessage("5", tool_call_id="c1", name="add"),
    ToolMessage("HI", tool_call_id="c2", name="shout"),
]

NATIVE_TEMPLATE = (
    "{% if tools %}TOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}\n{% endif %}"
    "{% for m in messages %}[{{ m.role }}]{{ m.content }}"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}CALL {{ c.function.name }}"
    "{{ c.function.arguments | tojson }};{% endfor %}{% endif %}"
    "{% if m.tool_call_id %}(for {{ m.tool_call_id }}){% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}"
)


class TestRender:
    def test_fallback_template_gets_the_documented_system_prompt(self, tiny_policy):
        assert not tiny_policy.takes_tools
        contract = OutputContract.from_kwargs({"tools": [_spec(add)]})
        text = tiny_policy.tokenizer.decode(tiny_policy.render(contract.prepare(to_conversation(HISTORY))))
        assert text.index("Be brief.") < text.index("<tools>")  # the user's system text comes first
        assert '"name": "add"' in text and "<tool_call>" in text
        assert '{"name": "add", "arguments": {"a": 2, "b": 3}}' in text  # the earlier call
        # both tool results in one user turn
        assert text.count("<|im_start|>user") == 2 and text.count("<tool_response>\n{") == 2
        assert '"content": "HI"' in text

    def test_native_template_gets_tools_calls_and_tool_roles(self, tiny_policy):
        native = replace(tiny_policy, chat_template=NATIVE_TEMPLATE)
        assert native.takes_tools
        contract = OutputContract.from_kwargs({"tools": [_spec(add), _spec(shout)], "tool_choice": "add"})
        text = native.tokenizer.decode(native.render(contract.prepare(to_conversation(HISTORY))))
        assert text.startswith("TOOLS:add;shout;")
        assert "<tool_call>" not in text and "<tools>" not in text  # no fallback prompt
        assert '[system]Be brief.\n\nYou must call the tool "add".' in text
        assert 'CALL add{"a": 2, "b": 3};CALL shout{"text": "hi"};' in text
        assert "[tool]5(for c1)" in text and "[tool]HI(for c2)" in text


def _spec(t) -> dict:
    from langchain_core.utils.function_calling import convert_to_openai_tool

    return convert_to_openai_tool(t)


# -- the contract ---------------------------------------------------------------------------
def _result(texts: list[str], rewards: list[float], best: int) -> StrategyResult:
    candidates = [Candidate(t, r, [1], [0.0], "stop") for t, r in zip(texts, rewards, strict=True)]
    return StrategyResult("x", texts[best], rewards[best], candidates, best, 3, ComputeCounters())


class TestContract:
    def test_checks(self):
        tools = OutputContract.from_kwargs({"tools": [_spec(add), _spec(shout)]})
        assert tools.check("plain answer") is None  # auto: text is fine
        assert "not valid JSON" in tools.check(BROKEN_CALL)
        assert "arguments" in tools.check('<tool_call>{"name": "add", "arguments": {"a": "x"}}</tool_call>')
        forced = OutputContract.from_kwargs({"tools": [_spec(add), _spec(shout)], "tool_choice": "shout"})
        assert "required" in forced.check(VALID_CALL)
        assert OutputContract.from_kwargs({"tools": [_spec(add)], "tool_choice": "any"}).check("hi")
        schema = OutputContract.from_kwargs(dict(SCHEMA))
        assert schema.check(JOKE) is None and schema.check(f"```json\n{JOKE}\n```") is None
        assert "punchline" in schema.check(BAD_JOKE)
        assert OutputContract.from_kwargs({"tools": [_spec(add)], "tool_choice": "none"}) is None

    def test_a_breaker_is_never_chosen_over_a_keeper(self):
        contract = OutputContract.from_kwargs({"tools": [_spec(add)]})
        result = contract.choose(_result([BROKEN_CALL, VALID_CALL, "text"], [9.0, 1.0, 2.0], best=0))
        assert result.best_index == 2 and result.reward == 2.0  # the best keeper, by reward
        check = result.details["output_check"]
        assert check == {
            "chosen": 2, "valid_candidates": 2, "candidates": 3, "valid": True, "error": None,
            "reselected": True,
        }  # fmt: skip
        kept = contract.choose(_result([VALID_CALL, "text"], [1.0, 2.0], best=1))
        assert kept.best_index == 1 and not kept.details["output_check"]["reselected"]
        none = contract.choose(_result([BROKEN_CALL], [1.0], best=0))
        assert none.best_index == 0 and none.details["output_check"]["valid"] is False

    def test_bad_tool_choice_and_response_format_fail_before_any_work(self, tiny_policy):
        model = greedy(tiny_policy)
        with pytest.raises(InvalidInputError, match="names no bound tool"):
            model.bind_tools([add], tool_choice="multiply")
        with pytest.raises(InvalidInputError, match="response_format"):
            model.invoke("hi", response_format={"type": "yaml"})
        with pytest.raises(InvalidInputError, match="method"):
            model.with_structured_output(Joke, method="xml")


# -- chat models ----------------------------------------------------------------------------
class TestToolCalls:
    def test_a_call_becomes_tool_calls(self, taught):
        message = greedy(taught).bind_tools([add, shout]).invoke("What is 2 plus 3?")
        assert message.content == "" and message.invalid_tool_calls == []
        (call,) = message.tool_calls
        assert (call["name"], call["args"], call["type"]) == ("add", {"a": 2, "b": 3}, "tool_call")
        assert message.response_metadata["finish_reason"] == "tool_calls"
        assert add.invoke(call).content == "5"  # the call runs as is

    def test_a_malformed_call_is_invalid_not_an_exception_after_bounded_retries(self, taught):
        # the ranking-only path (constrain=False): under the grammar no malformed call can be written
        message = (
            greedy(taught, output_retries=2, constrain=False).bind_tools([add, shout]).invoke("Add badly.")
        )
        assert message.tool_calls == []
        (bad,) = message.invalid_tool_calls
        assert bad["name"] == "add" and "not valid JSON" in bad["error"]
        check = message.response_metadata["output_check"]
        assert check["attempts"] == 3 and check["valid"] is False
        one = greedy(taught, output_retries=0, constrain=False).bind_tools([add, shout]).invoke("Add badly.")
        assert (
            one.response_metadata["compute"]["forward_passes"] * 3
            == (message.response_metadata["compute"]["forward_passes"])
        )  # every attempt's work is counted

    def test_best_of_n_never_picks_a_broken_call_over_a_valid_one(self, taught):
        model = sampled(taught, prefers_broken_calls).model_copy(update={"constrain": False})
        message = model.bind_tools([add, shout]).invoke("Add, maybe.")
        assert_a_keeper_beat_a_higher_reward(message, {"tools": [_spec(add), _spec(shout)]})
        assert not message.invalid_tool_calls

    def test_streaming_gives_tool_call_chunks(self, taught):
        chunks = list(greedy(taught).bind_tools([add]).stream("What is 2 plus 3?"))
        full = chunks[0]
        for chunk in chunks[1:]:
            full += chunk
        assert full.tool_calls[0]["name"] == "add" and full.tool_calls[0]["args"] == {"a": 2, "b": 3}
        assert full.chunk_position == "last" and full.usage_metadata["output_tokens"] > 0

    def test_batch_applies_the_tools_to_every_prompt(self, taught):
        out = (
            greedy(taught, constrain=False)
            .bind_tools([add, shout])
            .batch(["What is 2 plus 3?", "Add badly."])
        )
        assert out[0].tool_calls and out[1].invalid_tool_calls

    def test_under_the_grammar_the_broken_call_cannot_be_written(self, taught):
        """The policy was taught a malformed call for this prompt; the grammar makes it valid."""
        message = greedy(taught, output_retries=0).bind_tools([add, shout]).invoke("Add badly.")
        assert message.invalid_tool_calls == [] and message.response_metadata["output_check"]["valid"]
        (call,) = message.tool_calls
        assert call["name"] in ("add", "shout")
        assert message.response_metadata["compute"]["grammar_mask_seconds"] > 0

    @pytest.mark.parametrize(
        "make",
        [
            lambda p: RewardGuidedChatModel(model=p, reward=lambda q, r: 0.0, k=2, max_tokens=40),
            lambda p: ValueGuidedChatModel(
                model=p,
                reward=lambda q, r: 0.0,
                beams=1,
                samples=1,
                chunk_tokens=8,
                temperature=0.0,
                max_tokens=40,
            ),
            lambda p: DarwinChatModel(
                model=p, reward=lambda q, r: 0.0, n=2, k=1, cycles=1, m=8, temperature=0.0, max_tokens=40
            ),
        ],
        ids=["reward-guided", "value-guided", "darwin"],
    )
    def test_every_strategy_returns_the_call(self, taught, make):
        message = make(taught).bind_tools([add, shout]).invoke("What is 2 plus 3?")
        assert [(c["name"], c["args"]) for c in message.tool_calls] == [("add", {"a": 2, "b": 3})]


class TestStructuredOutput:
    @pytest.mark.parametrize(
        "schema", [Joke, JokeDict, Joke.model_json_schema()], ids=["pydantic", "typeddict", "json"]
    )
    def test_schemas(self, taught, schema):
        out = greedy(taught).with_structured_output(schema).invoke("Tell me a joke.")
        value = out.model_dump() if isinstance(out, Joke) else out
        assert value == json.loads(JOKE)
        assert isinstance(out, Joke) == (schema is Joke)

    def test_include_raw_and_an_invalid_answer(self, taught):
        model = greedy(taught, output_retries=0, constrain=False)  # ranking only: half a joke is possible
        out = model.with_structured_output(Joke, include_raw=True).invoke("Tell me half a joke.")
        assert out["parsed"] is None and isinstance(out["parsing_error"], Exception)
        assert out["raw"].response_metadata["output_check"]["valid"] is False
        with pytest.raises(OutputParserException):
            model.with_structured_output(Joke).invoke("Tell me half a joke.")
        ok = model.with_structured_output(Joke, include_raw=True).invoke("Tell me a joke.")
        assert ok["parsed"] == Joke.model_validate_json(JOKE) and ok["parsing_error"] is None

    def test_valid_json_outranks_a_higher_reward(self, taught):
        model = sampled(taught, prefers_half_jokes)
        out = model.with_structured_output(Joke, include_raw=True).invoke("A joke, maybe.")
        assert_a_keeper_beat_a_higher_reward(out["raw"], dict(SCHEMA))
        assert out["parsed"] == Joke.model_validate_json(JOKE)

    def test_function_calling_method_uses_a_forced_tool(self, taught):
        runnable = greedy(taught).with_structured_output(Joke, method="function_calling")
        bound = runnable.first
        assert bound.kwargs["tool_choice"] == "any" and bound.kwargs["tools"][0]["function"]["name"] == "Joke"


def test_sea_parses_calls_and_prefers_keepers(taught, tiny_classifier):
    """SEA optimises exactly max_tokens tokens (EOS is masked, as in the paper), so its answers
    rarely end a call cleanly; the guarantee that holds is the contract's ranking."""
    from align_chains.rewards import ClassifierReward

    reward = ClassifierReward(tiny_classifier, taught.tokenizer, name="tiny-rm")
    model = SEAChatModel(model=taught, reward=reward, chains=2, iterations=2, max_tokens=40, temperature=0.0)
    message = model.bind_tools([add, shout]).invoke("What is 2 plus 3?")
    contract = OutputContract.from_kwargs({"tools": [_spec(add), _spec(shout)]})
    kept = [contract.check(c["text"]) is None for c in message.response_metadata["candidates"]]
    assert message.response_metadata["output_check"]["valid"] == any(kept)
    assert bool(message.invalid_tool_calls) == (
        not any(kept) and "<tool_call>" in message.text + str(message.invalid_tool_calls)
    )
