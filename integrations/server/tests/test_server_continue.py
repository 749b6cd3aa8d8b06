"""Continuing a final assistant message (vLLM's ``continue_final_message``), and DARWIN over it.

``RerankChatModel(strategy="darwin", continuation="vllm")`` sends every segment after the first
as the conversation plus the partial answer, with ``continue_final_message: true,
add_generation_prompt: false``: the server must render the conversation without a new
generation prompt and write on from the partial answer.
"""

from __future__ import annotations

import openai
import pytest
from langchain_openai import ChatOpenAI

from align_chains import RerankChatModel
from align_chains.models.chat import CONTINUE_FINAL
from align_chains.models.policy import load_policy

MODEL = "best-of-n"
PARTIAL = [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello there"}]
HELLO = PARTIAL[:1]
CONTINUE = {"continue_final_message": True, "add_generation_prompt": False}


def test_a_marked_final_assistant_message_is_left_open(tiny_policy_dir):
    policy = load_policy(str(tiny_policy_dir))
    opened = policy.decode(policy.render([PARTIAL[0]]))
    continued = policy.decode(policy.render([PARTIAL[0], {**PARTIAL[1], CONTINUE_FINAL: True}]))
    closed = policy.decode(policy.render(PARTIAL))
    assert continued == opened + "Hello there"  # the user's turn, the open assistant turn, the partial
    assert closed.startswith(continued) and len(closed) > len(continued)  # unmarked: closed, new turn


def test_the_server_continues_a_final_assistant_message(server):
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    response = client.chat.completions.create(
        model=MODEL, messages=PARTIAL, seed=1, max_tokens=4, extra_body=CONTINUE
    )
    assert response.choices[0].message.content  # only the continuation comes back
    assert 0 < response.usage.completion_tokens_details.model_extra["answer_tokens"] <= 4
    with pytest.raises(openai.BadRequestError, match="add_generation_prompt=false"):
        client.chat.completions.create(
            model=MODEL, messages=PARTIAL, extra_body={"continue_final_message": True}
        )
    with pytest.raises(openai.BadRequestError, match="only supported together with continue_final"):
        client.chat.completions.create(
            model=MODEL, messages=HELLO, extra_body={"add_generation_prompt": False}
        )
    with pytest.raises(openai.BadRequestError, match="must be an assistant message"):
        client.chat.completions.create(model=MODEL, messages=PARTIAL[:1], extra_body=CONTINUE)


def test_darwin_with_mid_answer_replacement_against_the_server(server):
    served = ChatOpenAI(
        model=MODEL,
        base_url=server.base_url,
        api_key="unused",
        max_retries=0,
        seed=3,
        extra_body={"align_chains": {"n": 1}},
    )
    model = RerankChatModel(
        chat_model=served,
        reward=lambda prompt, response: float(len(response)),
        strategy="darwin",
        continuation="vllm",
        n=2,
        k=1,
        m=3,
        cycles=1,
        max_tokens=8,
        mutation_max_tokens=16,
        seed=0,
        retry_attempts=1,
    )
    message = model.invoke("Say hello.")
    meta = message.response_metadata
    assert meta["strategy"] == "darwin" and meta["continuation"] == "vllm"
    assert not meta.get("failed_calls"), meta.get("call_errors")
    cycle = [c for c in meta["candidates"] if c["cycle"] == 1]
    segments = [e for e in meta["trace"] if e["event"] == "score"]
    assert max(e["segment"] for e in segments) >= 2  # answers were continued past one m-token call
    assert any(c["tokens"] > 3 for c in cycle)
    assert meta["compute"]["answer_calls"] > 1 + 2  # s0, then more than one call per candidate
    assert message.content == max(meta["candidates"], key=lambda c: c["reward"])["text"]
