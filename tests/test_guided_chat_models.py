"""The ARGS and IVG chat models: live streaming, metadata, settings, errors."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage
from pydantic import ValidationError

from align_chains import RewardGuidedChatModel, ValueGuidedChatModel
from align_chains.chat_models import chat_model_class
from align_chains.errors import InvalidInputError

PRINCIPLE = "Answer concisely and politely."


class Tokens(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


@pytest.fixture
def args_chat(tiny_policy, tiny_classifier, smol_tokenizer) -> RewardGuidedChatModel:
    from align_chains.rewards import ClassifierReward

    reward = ClassifierReward(tiny_classifier, smol_tokenizer, name="tiny-rm")
    return RewardGuidedChatModel(policy=tiny_policy, reward=reward, k=4, max_tokens=10, seed=0)


@pytest.fixture
def ivg_chat(tiny_policy, length_reward) -> ValueGuidedChatModel:
    return ValueGuidedChatModel(
        policy=tiny_policy, reward=length_reward, principle=PRINCIPLE, chunk_tokens=3, max_tokens=10, seed=0
    )


@pytest.mark.parametrize("name", ["args_chat", "ivg_chat"])
def test_stream_equals_invoke_and_ends_with_metadata(request, name):
    chat = request.getfixturevalue(name)
    recorder = Tokens()
    chunks = list(chat.stream("Name a fruit.", config={"callbacks": [recorder]}))
    text = "".join(c.content for c in chunks)
    message = chat.invoke("Name a fruit.")
    assert text == message.content
    assert "".join(recorder.tokens) == text
    assert len(chunks) > 2
    last = chunks[-1]
    assert last.chunk_position == "last" and last.content == ""
    assert last.usage_metadata == message.usage_metadata
    assert last.response_metadata["strategy"] == message.response_metadata["strategy"]


def test_args_streams_tokens_before_the_answer_is_finished(args_chat, monkeypatch):
    """The first chunk reaches the caller while the strategy is still decoding."""
    import threading

    import align_chains.strategies.reward_guided as module

    done: list[bool] = []
    received = threading.Event()
    real = module.RewardGuided.run_batch

    def tracked(self, *args, on_commit=None, **kwargs):
        def gated(prompt: int, token_ids: list[int]) -> None:
            on_commit(prompt, token_ids)
            received.wait(timeout=2)  # hold decoding until the caller has a chunk (or 2 s pass)

        out = real(self, *args, on_commit=gated, **kwargs)
        done.append(True)
        return out

    monkeypatch.setattr(module.RewardGuided, "run_batch", tracked)
    stream = args_chat.stream("Name a fruit.")
    next(stream)
    assert done == []  # a token was delivered before run_batch returned
    received.set()
    list(stream)
    assert done == [True]


def test_stream_reraises_strategy_errors(args_chat):
    with pytest.raises(InvalidInputError, match="context"):
        list(args_chat.stream("Name a fruit.", max_tokens=10_000))


def test_args_metadata(args_chat):
    message = args_chat.invoke("Name a fruit.")
    assert isinstance(message, AIMessage)
    meta = message.response_metadata
    assert meta["strategy"] == "reward-guided" and meta["scoring"] == "ClassifierBranchScorer"
    assert meta["k"] == 4 and isinstance(meta["reward"], float)
    compute = meta["compute"]
    assert compute["prompt_tokens"] == message.usage_metadata["input_tokens"]
    assert compute["reward_calls"] >= message.usage_metadata["output_tokens"]


def test_ivg_metadata_and_per_call_settings(ivg_chat):
    message = ivg_chat.invoke("Name a fruit.", beams=1, samples=3)
    meta = message.response_metadata
    assert meta["strategy"] == "value-guided" and meta["chunk_value"] == "implicit" and meta["token_guidance"]
    assert meta["beams"] == 1 and meta["samples"] == 3 and len(meta["candidates"]) == 3
    assert meta["reward"] == max(c["reward"] for c in meta["candidates"])
    assert meta["compute"]["forward_passes"] <= 10


def test_ivg_with_a_guide_pair_loads_it(tiny_policy, length_reward, smol_tokenizer):
    chat = ValueGuidedChatModel(
        policy=tiny_policy,
        reward=length_reward,
        tuned=tiny_policy,
        untuned=tiny_policy,
        chunk_value="none",
        max_tokens=6,
    )
    meta = chat.invoke("Hi").response_metadata
    assert meta["guide"] == "implicit(tiny-llama vs tiny-llama)"
    assert chat._identifying_params["tuned"] == "tiny-llama"


def test_ivg_without_a_guide_searches_chunks_on_the_reward(tiny_policy, length_reward):
    meta = (
        ValueGuidedChatModel(policy=tiny_policy, reward=length_reward, max_tokens=6, chunk_tokens=3)
        .invoke("Hi")
        .response_metadata
    )
    assert meta["guide"] is None and meta["chunk_value"] == "reward" and not meta["token_guidance"]


@pytest.mark.parametrize(
    ("cls", "settings"),
    [
        (RewardGuidedChatModel, {"k": 0}),
        (RewardGuidedChatModel, {"w": -1}),
        (ValueGuidedChatModel, {"beams": 0}),
        (ValueGuidedChatModel, {"samples": 0}),
        (ValueGuidedChatModel, {"chunk_tokens": 0}),
        (ValueGuidedChatModel, {"w": -1}),
        (ValueGuidedChatModel, {"token_guidance": True}),
        (ValueGuidedChatModel, {"tuned": "a"}),
        (ValueGuidedChatModel, {"principle": "p", "tuned": "a", "untuned": "b"}),
    ],
)
def test_invalid_settings_fail_at_construction(cls, settings):
    with pytest.raises(ValidationError):
        cls(**settings)


def test_registry_and_aliases():
    assert chat_model_class("args") is RewardGuidedChatModel
    assert chat_model_class("ivg") is ValueGuidedChatModel
    model = ValueGuidedChatModel(principle=PRINCIPLE)
    assert model._policy is None and model.top_k == 50


@pytest.mark.parametrize("at", [0, 2])
def test_stream_with_stop_strings_never_sends_text_past_the_stop(args_chat, at):
    full = args_chat.invoke("Name a fruit.", max_tokens=20).content
    assert len(full) > 4
    stop = full[at : at + 2]  # a stop string the unconstrained answer contains (at 0: inside its first token)
    chunks = list(args_chat.stream("Name a fruit.", stop=[stop], max_tokens=20))
    text = "".join(c.content for c in chunks)
    assert text == args_chat.invoke("Name a fruit.", stop=[stop], max_tokens=20).content
    assert stop not in text and full.startswith(text)
