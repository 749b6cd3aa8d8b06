"""Tools and structured output over HTTP, on one real server process serving a taught tiny policy.

The policy is a tiny Llama taught here (``align_chains.testing.taught_policy``) to answer the
prompts the server renders for a few requests: a call to ``multiply``, two calls at once, the
final answer once the tool's result is in the history, and a JSON object for a schema. Its calls
are its own weights' choices, so the tests see what a client of a tool-calling model sees: the
official openai client, ``ChatOpenAI(base_url=...)`` and a LangChain agent that runs the tool.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from align_chains_server.schemas import ChatCompletionRequest
from align_chains_server.tools import OutputRequest, to_conversation
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_openai import ChatOpenAI
from openai.lib._parsing._completions import type_to_response_format_param
from pydantic import BaseModel
from server_test_helpers import Server, start_server

from align_chains.models.policy import Policy
from align_chains.testing import taught_policy, tiny_policy

MODEL = "best-of-n"
CALLS: list[tuple[int, int]] = []


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    CALLS.append((a, b))
    return a * b


class City(BaseModel):
    city: str
    country: str


TOOLS = [convert_to_openai_tool(multiply)]  # what ChatOpenAI.bind_tools sends
QUESTION = "What is 17 times 23? Use the multiply tool."
TWO_QUESTIONS = "What are 2 times 3 and 4 times 5?"
CITY_QUESTION = "Name the capital of France."
CALL = '<tool_call>\n{"name": "multiply", "arguments": {"a": 17, "b": 23}}\n</tool_call>'
TWO_CALLS = (
    '<tool_call>\n{"name": "multiply", "arguments": {"a": 2, "b": 3}}\n</tool_call>\n'
    '<tool_call>\n{"name": "multiply", "arguments": {"a": 4, "b": 5}}\n</tool_call>'
)
ANSWER = "17 times 23 is 391."
CITY = '{"city": "Paris", "country": "France"}'


def history_after_call(call_id: str) -> list[dict[str, Any]]:
    """The agent's second request: the question, the call it made, and the tool's result."""
    arguments = json.dumps({"a": 17, "b": 23})
    return [
        {"role": "user", "content": QUESTION},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": "multiply", "arguments": arguments}}
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": "391"},
    ]


def served_prompt(policy: Policy, payload: dict[str, Any]) -> list[int]:
    """The prompt's token ids exactly as the server renders this request body."""
    request = ChatCompletionRequest.model_validate(payload)
    output = OutputRequest.from_request(request)
    conversation = to_conversation(request.messages)
    if output.contract is not None:
        conversation = output.contract.prepare(conversation)
    return policy.render(conversation)


@pytest.fixture(scope="module")
def tool_server(tmp_path_factory) -> Iterator[Server]:
    """One server for the module: Best-of-2, greedy, over a policy taught the lessons above."""
    base = tiny_policy()
    user = [{"role": "user", "content": QUESTION}]
    lessons = [
        (served_prompt(base, {"messages": user, "tools": TOOLS}), CALL),
        (served_prompt(base, {"messages": user, "tools": TOOLS, "tool_choice": "required"}), CALL),
        (served_prompt(base, {"messages": history_after_call("any"), "tools": TOOLS}), ANSWER),
        (
            served_prompt(base, {"messages": [{"role": "user", "content": TWO_QUESTIONS}], "tools": TOOLS}),
            TWO_CALLS,
        ),
        (
            served_prompt(
                base,
                {
                    "messages": [{"role": "user", "content": CITY_QUESTION}],
                    "response_format": type_to_response_format_param(City),
                },
            ),
            CITY,
        ),
    ]
    policy = taught_policy(lessons, steps=100)
    path = tmp_path_factory.mktemp("taught-policy")
    policy.model.save_pretrained(path)
    policy.tokenizer.save_pretrained(path)
    args = ["--policy", str(path), "--reward", "server_test_rewards:length"]
    args += ["-o", "n=2", "-o", "temperature=0", "-o", "max_tokens=96"]
    # start-up is slow on a loaded machine: allow it more than the default two minutes
    server = start_server(args, tmp_path_factory.mktemp("tool-server") / "server.log", wait_s=600)
    yield server
    server.stop()


def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)


def chat_openai(server: Server) -> ChatOpenAI:
    return ChatOpenAI(model=MODEL, base_url=server.base_url, api_key="unused", max_retries=0)


def test_openai_client_gets_a_tool_call_whole_and_streamed(tool_server):
    kwargs = dict(model=MODEL, messages=[{"role": "user", "content": QUESTION}], tools=TOOLS)
    response = client(tool_server).chat.completions.create(**kwargs, tool_choice="required")  # a lesson
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "multiply"
    assert json.loads(call.function.arguments) == {"a": 17, "b": 23}  # arguments: a JSON string
    assert response.model_extra["align_chains"]["output_check"]["valid"] is True

    chunks = list(client(tool_server).chat.completions.create(**kwargs, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    pieces = [d.tool_calls[0] for d in deltas if d.tool_calls]
    assert pieces[0].index == 0 and pieces[0].id.startswith("call_") and pieces[0].function.name == "multiply"
    assert all(p.index == 0 and p.id is None for p in pieces[1:])
    arguments = [p.function.arguments for p in pieces[1:]]
    assert len(arguments) > 1  # the arguments arrive in pieces
    assert json.loads("".join(arguments)) == {"a": 17, "b": 23}
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["tool_calls"]


def test_parallel_tool_calls_false_keeps_one_call(tool_server):
    kwargs = dict(model=MODEL, messages=[{"role": "user", "content": TWO_QUESTIONS}], tools=TOOLS)
    both = client(tool_server).chat.completions.create(**kwargs)
    assert [json.loads(c.function.arguments) for c in both.choices[0].message.tool_calls] == [
        {"a": 2, "b": 3},
        {"a": 4, "b": 5},
    ]
    one = client(tool_server).chat.completions.create(**kwargs, parallel_tool_calls=False)
    (call,) = one.choices[0].message.tool_calls
    assert json.loads(call.function.arguments) == {"a": 2, "b": 3}
    assert one.model_extra["align_chains"]["dropped_tool_calls"] == 1


def test_openai_client_parses_a_json_schema_answer(tool_server):
    response = client(tool_server).chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": CITY_QUESTION}], response_format=City
    )
    assert response.choices[0].message.parsed == City(city="Paris", country="France")


def test_chat_openai_streams_tool_call_chunks(tool_server):
    chunks = list(chat_openai(tool_server).bind_tools([multiply]).stream(QUESTION))
    message = chunks[0]
    for chunk in chunks[1:]:
        message += chunk
    (call,) = message.tool_calls
    assert (call["name"], call["args"]) == ("multiply", {"a": 17, "b": 23})
    assert message.response_metadata["finish_reason"] == "tool_calls"


def test_agent_on_chat_openai_runs_the_tool_and_answers(tool_server):
    agent = create_agent(chat_openai(tool_server), [multiply])
    CALLS.clear()
    state = agent.invoke({"messages": [HumanMessage(QUESTION)]})
    _question, call_message, tool_message, final = state["messages"]
    assert CALLS == [(17, 23)]  # the Python tool ran with the arguments the server returned
    (call,) = call_message.tool_calls
    assert isinstance(tool_message, ToolMessage) and tool_message.content == "391"
    assert tool_message.tool_call_id == call["id"]
    assert isinstance(final, AIMessage) and not final.tool_calls and final.content == ANSWER


BAD_TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}
NOT_AN_OBJECT = {"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "divide"}}},
            "tool_choice.function.name",
            "'divide'",
        ),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice", "not one of"),
        ({"tool_choice": "required"}, "tool_choice", "needs tools"),
        ({"tools": [BAD_TOOL]}, "tools.0.function.parameters", "not a valid JSON schema"),
        ({"tools": [NOT_AN_OBJECT]}, "tools.0.function.parameters", "JSON object"),
        (
            {"tools": [{"type": "function", "function": {"description": "no name"}}]},
            "tools.0.function.name",
            "Field required",
        ),
        ({"tools": TOOLS + TOOLS}, "tools.1.function.name", "unique"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}}},
            "response_format.json_schema.schema",
            "not a valid JSON schema",
        ),
        ({"response_format": {"type": "yaml"}}, "response_format.type", "json_schema"),
        (
            {
                "messages": [
                    *history_after_call("a")[:2],
                    {"role": "tool", "tool_call_id": "b", "content": "1"},
                ]
            },
            "messages.2.tool_call_id",
            "no earlier assistant",
        ),
    ],
)
def test_bad_tools_and_formats_are_400_naming_the_field(tool_server, extra, param, words):
    body = {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}], **extra}
    served = tool_server.health()["served"]
    r = httpx.post(f"{tool_server.base_url}/chat/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and words in error["message"], error
    assert tool_server.health()["served"] == served  # refused before the strategy ran
