"""The LangChain chat model: messages in, AIMessage with usage and compute metadata out."""

from __future__ import annotations

import asyncio
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, ChatMessage, HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from pydantic import ValidationError

from align_chains import BestOfNChatModel
from align_chains.errors import InvalidInputError, RewardError
from align_chains.rewards import CallableReward


@pytest.fixture
def chat(tiny_policy, length_reward) -> BestOfNChatModel:
    return BestOfNChatModel(
        policy=tiny_policy, reward=length_reward, n=3, max_tokens=10, temperature=1.0, seed=0
    )


class Recorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.events: list[str] = []
        self.tokens: list[str] = []

    def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
        self.events.append("start")

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        self.events.append("end")

    def on_llm_error(self, error: BaseException, **kwargs: Any) -> None:
        self.events.append("error")

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


def test_construction_loads_nothing():
    model = BestOfNChatModel(n=8, max_tokens=32, temperature=0.2, stop=["\n\n"])
    assert model._policy is None and model._reward is None
    assert model.model_name == "smollm2-135m-instruct"
    assert BestOfNChatModel(model="some/model").policy == "some/model"  # LangChain's `model` alias


def test_invoke_returns_message_with_reward_and_compute(chat, tiny_policy):
    message = chat.invoke([SystemMessage("Be brief."), HumanMessage("Name a fruit.")])
    assert isinstance(message, AIMessage)
    meta = message.response_metadata
    assert meta["model_name"] == "tiny-llama"
    assert meta["strategy"] == "best-of-n"
    assert meta["reward"] == max(c["reward"] for c in meta["candidates"]) == float(len(message.content))
    assert len(meta["candidates"]) == 3
    compute = meta["compute"]
    assert set(compute) >= {"prompt_tokens", "generated_tokens", "forward_passes", "reward_calls", "seconds"}
    prompt_len = len(
        tiny_policy.render(
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit."}]
        )
    )
    usage = message.usage_metadata
    assert usage["input_tokens"] == prompt_len == compute["prompt_tokens"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    # every token the policy generated (the convention of docs/getting_started.md#usage-every-token-spent)
    assert usage["output_tokens"] == compute["generated_tokens"]
    details = usage["output_token_details"]
    assert 0 < details["answer"] <= 10 and details["answer"] + details["reasoning"] == usage["output_tokens"]
    assert compute["reward_calls"] == 1 and compute["seconds"] > 0


def test_stream_yields_the_chosen_answer_then_a_last_chunk(chat):
    recorder = Recorder()
    chunks = list(chat.stream("Name a fruit.", config={"callbacks": [recorder]}))
    text = "".join(c.content for c in chunks)
    assert text == chat.invoke("Name a fruit.").content  # same seed, same choice
    assert len(chunks) > 2
    assert chunks[-1].chunk_position == "last"
    assert chunks[-1].usage_metadata["output_tokens"] > 0
    assert chunks[-1].response_metadata["strategy"] == "best-of-n"
    assert "".join(recorder.tokens) == text
    merged = chunks[0]
    for c in chunks[1:]:
        merged = merged + c
    assert merged.content == text and merged.usage_metadata is not None


def test_batch_runs_all_prompts_together_with_callbacks_per_input(chat):
    recorder = Recorder()
    outputs = chat.batch(["Name a fruit.", "Name a color.", "Name a city."], config={"callbacks": [recorder]})
    assert len(outputs) == 3
    assert all(isinstance(o, AIMessage) for o in outputs)
    assert {o.response_metadata["compute"]["batch_size"] for o in outputs} == {3}
    assert recorder.events.count("start") == 3 and recorder.events.count("end") == 3
    assert len({o.id for o in outputs}) == 3


def test_batch_return_exceptions_keeps_good_inputs(chat):
    outputs = chat.batch(
        [[HumanMessage("ok")], [ChatMessage(role="narrator", content="x")]], return_exceptions=True
    )
    assert isinstance(outputs[0], AIMessage)
    assert isinstance(outputs[1], InvalidInputError)
    with pytest.raises(InvalidInputError):
        chat.batch([[HumanMessage("ok")], []])


async def test_async_apis(chat):
    message = await chat.ainvoke("Name a fruit.")
    assert message.content == chat.invoke("Name a fruit.").content
    outputs = await chat.abatch(["a", "b"])
    assert len(outputs) == 2 and outputs[0].response_metadata["compute"]["batch_size"] == 2
    chunks = [c async for c in chat.astream("Name a fruit.")]
    assert chunks[-1].chunk_position == "last"
    results = await asyncio.gather(*(chat.ainvoke(f"Question {i}") for i in range(3)))
    assert all(isinstance(r, AIMessage) for r in results)


def test_concurrent_threads_share_one_model(chat):
    with ThreadPoolExecutor(max_workers=4) as pool:
        messages = list(pool.map(lambda i: chat.invoke(f"Question {i}"), range(6)))
    assert all(m.response_metadata["compute"]["reward_calls"] == 1 for m in messages)
    # each request gets its own counters, not a shared tally
    assert {m.response_metadata["compute"]["batch_size"] for m in messages} == {1}


def test_in_a_chain(chat):
    chain = (
        ChatPromptTemplate.from_messages([("system", "You answer about {topic}."), ("human", "{q}")])
        | chat
        | StrOutputParser()
    )
    assert isinstance(chain.invoke({"topic": "fruit", "q": "Name one."}), str)


def test_per_call_settings_override_the_defaults(chat):
    message = chat.invoke("Name a fruit.", n=5, max_tokens=4)
    assert len(message.response_metadata["candidates"]) == 5
    assert message.usage_metadata["output_token_details"]["answer"] <= 4
    assert message.usage_metadata["output_tokens"] <= 5 * (4 + 1)  # five candidates, each up to an EOS
    with pytest.raises(InvalidInputError, match="does not take"):
        chat.invoke("Name a fruit.", beams=3)


def test_bad_input_gets_clear_errors(chat):
    with pytest.raises(InvalidInputError, match="empty"):
        chat.invoke([])
    with pytest.raises(InvalidInputError, match="role 'narrator'"):
        chat.invoke([ChatMessage(role="narrator", content="Once upon a time")])
    with pytest.raises(InvalidInputError, match="context"):
        chat.invoke("word " * 600)
    with pytest.raises(InvalidInputError, match="image"):
        chat.invoke([HumanMessage(content=[{"type": "image", "url": "http://x/y.png"}])])
    for bad in ({"n": 0}, {"max_tokens": 0}, {"temperature": -0.1}):
        with pytest.raises(ValidationError):
            BestOfNChatModel(**bad)


@pytest.mark.parametrize(
    ("fn", "match"),
    [
        (lambda p, r: math.nan, "non-finite"),
        (lambda ps, rs: [1.0], "returned 1 scores for 3"),
    ],
)
def test_bad_rewards_raise_with_context(tiny_policy, fn, match):
    batched = fn.__code__.co_varnames[0] == "ps"
    model = BestOfNChatModel(
        policy=tiny_policy, reward=CallableReward(fn, batched=batched), n=3, max_tokens=4
    )
    with pytest.raises(RewardError, match=match) as info:
        model.invoke("Hi")
    assert len(info.value.partial[0].candidates) == 3  # generated work is not lost


def test_shared_policy_object(tiny_policy, length_reward):
    a = BestOfNChatModel(policy=tiny_policy, reward=length_reward, max_tokens=4)
    b = BestOfNChatModel(policy=tiny_policy, reward=length_reward, max_tokens=4, n=2)
    a.invoke("Hi")
    b.invoke("Hi")
    assert a._policy is b._policy is tiny_policy


def test_ls_params():
    params = BestOfNChatModel(max_tokens=7, temperature=0.3, stop=["x"])._get_ls_params()
    assert params == {
        "ls_provider": "align_chains",
        "ls_model_name": "smollm2-135m-instruct",
        "ls_model_type": "chat",
        "ls_temperature": 0.3,
        "ls_max_tokens": 7,
        "ls_stop": ["x"],
    }
