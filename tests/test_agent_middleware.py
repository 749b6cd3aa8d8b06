"""ForceToolCallMiddleware: a create_agent loop on a random tiny policy calls a real tool, then answers.

Without the middleware the agent binds tools with tool_choice="auto" and the model may write
prose; with it, the turn's first call is forced (a schema-valid call by the grammar) and the
call after the tool result is held to text, so the loop's shape does not depend on the policy.
"""

from __future__ import annotations

from typing import Literal

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool

from align_chains import BestOfNChatModel, ForceToolCallMiddleware, InvalidInputError

RAN: list[str] = []


@tool
def weather(city: Literal["Paris", "Oslo", "Lima"]) -> str:
    """The current weather in a city."""
    RAN.append(city)
    return f"Sunny in {city}."


@tool
def clock(city: Literal["Paris", "Oslo"]) -> str:
    """The local time in a city."""
    RAN.append(f"clock:{city}")
    return "12:00"


def _model(policy) -> BestOfNChatModel:
    return BestOfNChatModel(model=policy, reward=lambda p, r: float(len(r)), n=2, max_tokens=40, seed=0)


def _assert_called_then_answered(messages: list, tool_name: str) -> None:
    question, call_message, tool_message, final = messages
    assert isinstance(question, HumanMessage)
    (call,) = call_message.tool_calls  # a named choice is exactly one call
    assert call["name"] == tool_name and call["args"]["city"] in ("Paris", "Oslo", "Lima")
    assert isinstance(tool_message, ToolMessage) and tool_message.tool_call_id == call["id"]
    assert isinstance(final, AIMessage) and not final.tool_calls  # then="none": the loop ends


def test_a_forced_first_call_runs_the_tool_and_the_next_call_answers(tiny_policy):
    agent = create_agent(
        _model(tiny_policy), [clock, weather], middleware=[ForceToolCallMiddleware(tool_choice="weather")]
    )
    RAN.clear()
    state = agent.invoke({"messages": [HumanMessage("Weather in Oslo?")]}, {"recursion_limit": 8})
    _assert_called_then_answered(state["messages"], "weather")
    assert len(RAN) == 1 and RAN[0] in ("Paris", "Oslo", "Lima")  # the Python tool ran with valid args
    assert state["messages"][-2].content == f"Sunny in {RAN[0]}."


async def test_the_async_agent_is_forced_the_same_way(tiny_policy):
    agent = create_agent(
        _model(tiny_policy), [weather], middleware=[ForceToolCallMiddleware(tool_choice="any")]
    )
    RAN.clear()
    state = await agent.ainvoke({"messages": [HumanMessage("Weather in Lima?")]}, {"recursion_limit": 8})
    _assert_called_then_answered(state["messages"], "weather")
    assert len(RAN) == 1


def test_each_new_human_turn_is_forced_again():
    middleware = ForceToolCallMiddleware(tool_choice="any", then="auto", forced_calls=2)
    call = AIMessage("", tool_calls=[{"name": "weather", "args": {"city": "Oslo"}, "id": "1"}])
    result = ToolMessage("Sunny in Oslo.", tool_call_id="1")
    first_turn = [HumanMessage("a"), call, result]
    assert middleware.choice_for([HumanMessage("a")]) == "any"
    assert middleware.choice_for(first_turn) == "any"  # the second forced call of the turn
    assert middleware.choice_for([*first_turn, call, result]) == "auto"  # forced_calls spent
    assert middleware.choice_for([*first_turn, call, result, AIMessage("done"), HumanMessage("b")]) == "any"


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"tool_choice": "auto"}, "would not force a call"),
        ({"tool_choice": "none"}, "would not force a call"),
        ({"then": ""}, "then=''"),
        ({"forced_calls": 0}, "integer >= 1"),
    ],
)
def test_settings_that_cannot_work_are_refused_at_construction(kwargs, fragment):
    with pytest.raises(InvalidInputError, match=fragment):
        ForceToolCallMiddleware(**kwargs)


def test_a_tool_name_the_agent_lacks_fails_before_the_model_runs(tiny_policy):
    model = _model(tiny_policy)
    agent = create_agent(model, [weather], middleware=[ForceToolCallMiddleware(tool_choice="get_time")])
    with pytest.raises(InvalidInputError, match=r"'get_time' names no tool of this agent.*weather"):
        agent.invoke({"messages": [HumanMessage("Time?")]})
