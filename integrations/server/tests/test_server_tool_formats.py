"""The server asks for, constrains and reads tool calls in the served policy's own family format,
and streams them as OpenAI tool-call deltas that reassemble into the whole reply's calls.

The tiny model wears the published Llama 3.1 and Mistral Nemo templates
(tests/fixtures/chat_templates/); ``--tool-format`` overrides the format on SmolLM2's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from align_chains_server.app import create_app
from align_chains_server.service import ServedModel
from fastapi.testclient import TestClient
from jsonschema import validate

from align_chains.models.policy import Policy
from align_chains.rewards import CallableReward
from align_chains.testing import tiny_policy, with_chat_template

TEMPLATES = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "chat_templates"
LLAMA = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|python_tag|>"]
MISTRAL = ["[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]"]
PARAMETERS = {
    "type": "object",
    "properties": {"room": {"type": "string", "enum": ["kitchen", "hall"]}, "on": {"type": "boolean"}},
    "required": ["room", "on"],
}
TOOL = {
    "type": "function",
    "function": {"name": "set_light", "description": "Switch a light.", "parameters": PARAMETERS},
}
BODY = {
    "messages": [{"role": "user", "content": "Light the hall."}],
    "tools": [TOOL],
    "tool_choice": {"type": "function", "function": {"name": "set_light"}},
}


def served(policy: Policy, tool_format: str | None = None) -> ServedModel:
    model = ServedModel(
        strategy="best-of-n",
        policy_spec="unused",
        defaults={"max_tokens": 48, "temperature": 0, "n": 2},
        tool_format=tool_format,  # align-chains serve --tool-format
    )
    model._policy = policy  # what load() would set, without loading from disk
    model._reward = CallableReward(lambda prompt, response: float(len(response)), name="length")
    return model


def streamed_calls(client: TestClient) -> list[dict[str, Any]]:
    """The tool calls that the SSE deltas of a streamed reply add up to."""
    calls: dict[int, dict[str, Any]] = {}
    with client.stream("POST", "/v1/chat/completions", json={**BODY, "stream": True}) as reply:
        assert reply.status_code == 200
        for line in reply.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:]).get("choices", []):
                for delta in choice["delta"].get("tool_calls") or []:
                    call = calls.setdefault(delta["index"], {"name": "", "arguments": ""})
                    call["name"] += (delta.get("function") or {}).get("name") or ""
                    call["arguments"] += (delta.get("function") or {}).get("arguments") or ""
    return [calls[i] for i in sorted(calls)]


@pytest.mark.parametrize(
    ("template", "specials", "override", "tool_format"),
    [
        ("llama-3.1-instruct.jinja", LLAMA, None, "llama3_json"),
        ("mistral-nemo-instruct-2407.jinja", MISTRAL, None, "mistral"),
        (None, [], "pythonic", "pythonic"),
    ],
)
def test_forced_call_in_the_policy_format_whole_and_streamed(template, specials, override, tool_format):
    base = tiny_policy()
    policy = with_chat_template(base, (TEMPLATES / template).read_text(), specials) if template else base
    model = served(policy, override)
    assert (override or policy.tool_format) == tool_format
    with TestClient(create_app(model)) as client:
        whole = client.post("/v1/chat/completions", json=BODY)
        assert whole.status_code == 200, whole.text
        choice = whole.json()["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        (call,) = choice["message"]["tool_calls"]
        assert call["function"]["name"] == "set_light"
        validate(json.loads(call["function"]["arguments"]), PARAMETERS)
        (streamed,) = streamed_calls(client)
    assert streamed["name"] == "set_light"
    assert json.loads(streamed["arguments"]) == json.loads(call["function"]["arguments"])
