"""An agent loop (langchain's create_agent, on LangGraph) driven by aligned chat models.

The first test's policy is a tiny Llama taught in this session to call a real Python tool and
then answer from its result; the second runs the embedded SmolLM2 end to end and checks the
loop's structure, not its wisdom.
"""

from __future__ import annotations

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool

from align_chains import BestOfNChatModel
from align_chains.chat_models.output_contract import OutputContract
from align_chains.models.messages import to_conversation
from align_chains.testing import taught_policy

CALLS: list[tuple[int, int]] = []


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    CALLS.append((a, b))
    return a * b


QUESTION = "What is 17 times 23? Use the multiply tool."
CALL = '<tool_call>\n{"name": "multiply", "arguments": {"a": 17, "b": 23}}\n</tool_call>'
ANSWER = "17 times 23 is 391."


def _prompt(policy, messages) -> list[int]:
    contract = OutputContract.from_kwargs({"tools": [convert_to_openai_tool(multiply)]})
    return policy.render(contract.prepare(to_conversation(messages)))


def test_agent_calls_a_real_tool_and_answers(tiny_policy):
    # what the agent will show the policy at its two steps
    after_call = [
        HumanMessage(QUESTION),
        AIMessage("", tool_calls=[{"name": "multiply", "args": {"a": 17, "b": 23}, "id": "x"}]),
        ToolMessage("391", tool_call_id="x", name="multiply"),
    ]
    policy = taught_policy(
        [(_prompt(tiny_policy, [HumanMessage(QUESTION)]), CALL), (_prompt(tiny_policy, after_call), ANSWER)],
        steps=100,
    )
    model = BestOfNChatModel(model=policy, reward=lambda p, r: 0.0, n=2, temperature=0.0, max_tokens=40)
    agent = create_agent(model, [multiply])
    CALLS.clear()

    state = agent.invoke({"messages": [HumanMessage(QUESTION)]})

    _question, call_message, tool_message, final = state["messages"]
    assert CALLS == [(17, 23)]  # the Python tool ran, with the policy's arguments
    (call,) = call_message.tool_calls
    assert (call["name"], call["args"]) == ("multiply", {"a": 17, "b": 23})
    assert isinstance(tool_message, ToolMessage) and tool_message.content == "391"
    assert tool_message.tool_call_id == call["id"]
    assert isinstance(final, AIMessage) and not final.tool_calls and final.content == ANSWER
    assert final.usage_metadata["input_tokens"] > call_message.usage_metadata["input_tokens"]


@pytest.mark.e2e
def test_agent_loop_on_smollm2_is_well_formed():
    @tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        return f"It is sunny and 21 degrees in {city}."

    model = BestOfNChatModel(n=2, max_tokens=48, seed=0)
    agent = create_agent(model, [get_weather])
    state = agent.invoke(
        {"messages": [HumanMessage("What is the weather in Paris? Use the get_weather tool.")]},
        {"recursion_limit": 8},
    )
    messages = state["messages"]
    assert isinstance(messages[-1], AIMessage) and not messages[-1].tool_calls  # the loop ended
    results = {m.tool_call_id: m for m in messages if isinstance(m, ToolMessage)}
    for message in messages:
        if isinstance(message, AIMessage):
            assert message.response_metadata["model_name"] == "smollm2-135m-instruct"
            assert message.response_metadata["output_check"]["candidates"] == 2
            for call in message.tool_calls:  # every parsed call ran and was answered
                assert call["name"] == "get_weather" and call["id"] in results
                assert results[call["id"]].content.startswith("It is sunny")
