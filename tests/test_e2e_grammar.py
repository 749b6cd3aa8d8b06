"""Grammar-constrained decoding on the embedded SmolLM2: valid JSON and tool calls by construction."""

from __future__ import annotations

import pytest
from jsonschema import validate
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel, Field

from align_chains import BestOfNChatModel, ForceToolCallMiddleware

pytestmark = pytest.mark.e2e


class City(BaseModel):
    name: str = Field(max_length=40)
    country: str = Field(max_length=40)
    population: int


PROMPTS = [  # written before running: three kinds of city question
    "Tell me about Lyon.",
    "Which city is the capital of Japan? Describe it.",
    "Give me facts about a large city in Brazil.",
]


@pytest.fixture(scope="module")
def model() -> BestOfNChatModel:
    return BestOfNChatModel(n=4, max_tokens=64, seed=0)


def test_structured_output_is_a_valid_instance_for_every_prompt(model):
    structured = model.with_structured_output(City)
    for prompt in PROMPTS:
        assert isinstance(structured.invoke(prompt), City)


def test_best_of_n_with_a_named_tool_choice_calls_it_validly_in_every_candidate(model):
    parameters = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 40}},
        "required": ["city"],
    }
    spec = {"name": "get_weather", "description": "The weather in a city.", "parameters": parameters}
    message = model.bind_tools([spec], tool_choice="get_weather").invoke("Is it raining in Oslo?")
    check = message.response_metadata["output_check"]
    assert check["valid_candidates"] == check["candidates"] == 4
    (call,) = message.tool_calls
    assert call["name"] == "get_weather"
    validate(call["args"], parameters)


def test_create_agent_on_smollm2_runs_a_real_tool_and_answers():
    ran: list[str] = []

    @tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        ran.append(city)
        return f"It is sunny and 21 degrees in {city}."

    # create_agent alone binds tool_choice="auto" and SmolLM2 then answers in prose; the middleware
    # forces the turn's first call (a schema-valid call by the grammar) and holds the next to text
    model = BestOfNChatModel(n=2, max_tokens=40, seed=0)
    agent = create_agent(model, [get_weather], middleware=[ForceToolCallMiddleware("get_weather")])
    state = agent.invoke(
        {"messages": [HumanMessage("What is the weather in Paris? Use the get_weather tool.")]},
        {"recursion_limit": 8},
    )
    messages = state["messages"]
    _question, call_message, tool_message, final = messages  # one tool round, then the answer
    (call,) = call_message.tool_calls
    validate(call["args"], get_weather.tool_call_schema.model_json_schema())  # schema-valid arguments
    assert ran == [call["args"]["city"]] and ran[0]  # the Python tool ran, with the model's argument
    assert isinstance(tool_message, ToolMessage) and tool_message.content.startswith("It is sunny")
    assert isinstance(final, AIMessage) and not final.tool_calls and final.content.strip()
