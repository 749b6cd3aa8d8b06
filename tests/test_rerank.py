"""RerankChatModel around chat models that are not align_chains': choice, retries, failures."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel, FakeListChatModel, FakeMessagesListChatModel
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.prompts import ChatPromptTemplate
from pydantic import Field, PrivateAttr

from align_chains import CallableReward, InvalidInputError, RerankChatModel, RewardError
from align_chains.chat_models.rerank import is_transient
from align_chains.errors import SamplingFailedError

LENGTH = CallableReward(lambda prompt, response: len(response), name="length")


class ScriptedChat(BaseChatModel):
    """Answers (or raises) from a script, one entry per call, and records concurrency."""

    script: list[Any]
    barrier_parties: int = 0

    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _barrier: threading.Barrier | None = PrivateAttr(default=None)
    _in_flight: int = PrivateAttr(default=0)
    max_in_flight: int = 0
    calls: int = 0

    def model_post_init(self, _context: Any) -> None:
        if self.barrier_parties:
            self._barrier = threading.Barrier(self.barrier_parties, timeout=10)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        with self._lock:
            entry = self.script.pop(0)
            self.calls += 1
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            if self._barrier is not None:
                self._barrier.wait()  # returns only once `barrier_parties` calls are in flight together
            if isinstance(entry, BaseException):
                raise entry
            usage = {"input_tokens": 3, "output_tokens": len(entry), "total_tokens": 3 + len(entry)}
            message = AIMessage(
                content=entry, usage_metadata=usage, response_metadata={"finish_reason": "stop"}
            )
            return ChatResult(generations=[ChatGeneration(message=message)])
        finally:
            with self._lock:
                self._in_flight -= 1


def rerank(chat: BaseChatModel, **kwargs: Any) -> RerankChatModel:
    return RerankChatModel(chat_model=chat, reward=LENGTH, retry_wait=0.0, **kwargs)


def test_best_chosen_by_reward_around_a_langchain_fake() -> None:
    chat = FakeListChatModel(responses=["ok", "the longest answer", "medium one"])
    message = rerank(chat, n=3, max_concurrency=1).invoke("hello")
    assert message.content == "the longest answer"
    meta = message.response_metadata
    assert meta["strategy"] == "best-of-n" and meta["reward"] == len("the longest answer")
    assert sorted(c["text"] for c in meta["candidates"]) == ["medium one", "ok", "the longest answer"]
    assert meta["compute"]["calls"] == 3 and meta["compute"]["failures"] == 0
    assert meta["compute"]["reward_calls"] == 1 and meta["compute"]["reward_items"] == 3
    assert "failed_samples" not in meta


def test_usage_is_summed_and_works_in_a_chain() -> None:
    chat = ScriptedChat(script=["a", "bbb"])
    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | rerank(chat, n=2)
    message = chain.invoke({"q": "hi"})
    assert message.content == "bbb"
    assert message.usage_metadata == {"input_tokens": 6, "output_tokens": 4, "total_tokens": 10}


def test_samples_run_concurrently() -> None:
    chat = ScriptedChat(script=["a", "bb", "ccc", "dddd"], barrier_parties=4)
    assert rerank(chat, n=4, max_concurrency=4).invoke("q").content == "dddd"
    assert chat.max_in_flight == 4


def test_max_concurrency_bounds_parallel_calls() -> None:
    chat = ScriptedChat(script=["a", "bb", "ccc", "dddd"])
    rerank(chat, n=4, max_concurrency=1).invoke("q")
    assert chat.max_in_flight == 1 and chat.calls == 4


def test_transient_failure_is_retried() -> None:
    chat = ScriptedChat(script=[TimeoutError("read timed out"), "a", "bb", "ccc"])
    message = rerank(chat, n=3, max_concurrency=1).invoke("q")
    assert message.content == "ccc"
    assert message.response_metadata["compute"]["calls"] == 4
    assert "failed_samples" not in message.response_metadata


def test_permanent_failure_of_one_sample_keeps_the_others() -> None:
    chat = ScriptedChat(script=[ValueError("400 bad request"), "a", "bbb"])
    message = rerank(chat, n=3, max_concurrency=1).invoke("q")
    assert message.content == "bbb"
    meta = message.response_metadata
    assert meta["failed_samples"] == 1 and "400 bad request" in meta["sample_errors"][0]
    assert meta["compute"]["calls"] == 3  # not retried: not transient
    assert len(meta["candidates"]) == 2


def test_all_failing_raises_with_context() -> None:
    chat = ScriptedChat(script=[TimeoutError("slow")] * 4)
    with pytest.raises(
        SamplingFailedError, match="All 2 samples from ScriptedChat failed after 4 calls"
    ) as info:
        rerank(chat, n=2, retry_attempts=2, max_concurrency=1).invoke("q")
    assert len(info.value.errors) == 2 and all(isinstance(e, TimeoutError) for e in info.value.errors)


def test_async_path_retries_keeps_survivors_and_respects_concurrency() -> None:
    chat = ScriptedChat(script=[TimeoutError("slow"), ValueError("bad"), "a", "bbbb", "cc"])
    message = asyncio.run(rerank(chat, n=4, max_concurrency=2).ainvoke("q"))
    assert message.content == "bbbb"
    meta = message.response_metadata
    assert meta["failed_samples"] == 1 and meta["compute"]["calls"] == 5
    assert chat.max_in_flight <= 2


def test_async_samples_run_concurrently() -> None:
    chat = ScriptedChat(script=["a", "bb", "ccc"], barrier_parties=3)
    assert asyncio.run(rerank(chat, n=3).ainvoke("q")).content == "ccc"
    assert chat.max_in_flight == 3


def test_reward_failure_keeps_the_samples() -> None:
    def broken(prompt: str, response: str) -> float:
        raise RuntimeError("verifier down")

    model = RerankChatModel(chat_model=ScriptedChat(script=["a", "bb"]), reward=broken, n=2)
    with pytest.raises(RewardError, match="verifier down") as info:
        model.invoke("q")
    assert [sorted(m.content for m in samples) for samples in info.value.partial] == [["a", "bb"]]


@pytest.mark.parametrize("strategy", ["reward-guided", "args", "value-guided", "sea"])
def test_logit_and_gradient_strategies_are_refused(strategy: str) -> None:
    with pytest.raises(InvalidInputError, match=r"needs .*(logits|gradients).*best-of-n"):
        rerank(FakeListChatModel(responses=["a"]), strategy=strategy)


class _RateLimitError(Exception):
    pass


class _HTTPError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status_code = status


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (TimeoutError(), True),
        (ConnectionResetError(), True),
        (_RateLimitError(), True),
        (_HTTPError(429), True),
        (_HTTPError(503), True),
        (_HTTPError(400), False),
        (_HTTPError(401), False),
        (ValueError("bad"), False),
        (InvalidInputError("ours"), False),
    ],
)
def test_transient_rule(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


class CountingLength(CallableReward):
    def __init__(self) -> None:
        super().__init__(lambda prompts, responses: [len(r) for r in responses], batched=True, name="len")
        self.calls = 0

    def _score(self, prompts, responses):
        self.calls += 1
        return super()._score(prompts, responses)


def test_batch_scores_all_prompts_in_one_reward_call_and_isolates_failures() -> None:
    reward = CountingLength()
    script = ["a", "bbb", "cc", "dddd", ValueError("400"), ValueError("400")]
    chat = ScriptedChat(script=script)
    model = RerankChatModel(chat_model=chat, reward=reward, n=2, max_concurrency=1, retry_wait=0.0)
    out = model.batch(["p1", "p2", "p3"], return_exceptions=True)
    assert [m.content for m in out[:2]] == ["bbb", "dddd"]
    assert isinstance(out[2], SamplingFailedError)
    assert reward.calls == 1 and chat.calls == 6
    with pytest.raises(SamplingFailedError):
        model.batch(["p"])  # an empty script: the wrapped model fails (IndexError), not transient


def test_abatch_shares_one_reward_call() -> None:
    reward = CountingLength()
    chat = ScriptedChat(script=["a", "bb", "ccc", "d"])
    model = RerankChatModel(chat_model=chat, reward=reward, n=2, max_concurrency=1)
    out = asyncio.run(model.abatch(["p1", "p2"]))
    assert [m.content for m in out] == ["bb", "ccc"]
    assert reward.calls == 1


class PerPromptChat(BaseChatModel):
    """Answers each prompt from its own queue (keyed by the last message's text)."""

    answers: dict[str, list[str]]
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "per-prompt"

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        with self._lock:
            text = self.answers[messages[-1].content].pop(0)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])


def test_adaptive_spends_the_budget_where_rewards_vary() -> None:
    chat = PerPromptChat(
        answers={"flat": ["xx", "xx"], "varied": ["x", "xxxxx", "a", "bb", "ccc", "longest!"]}
    )
    reward = CountingLength()
    model = RerankChatModel(
        chat_model=chat, reward=reward, strategy="adaptive", budget=4, exploration=0.5, max_concurrency=1
    )
    flat, varied = model.batch(["flat", "varied"])
    assert flat.response_metadata["exploration_samples"] == 2
    assert flat.response_metadata["extra_samples"] == 0  # identical rewards: no evidence more helps
    assert varied.response_metadata["extra_samples"] == 4  # the whole remaining budget (2 * 4 - 4)
    assert varied.content == "longest!" and len(varied.response_metadata["candidates"]) == 6
    assert varied.response_metadata["compute"]["reward_calls"] == 2 and reward.calls == 2
    assert chat.answers == {"flat": [], "varied": []}


def test_adaptive_on_one_prompt_is_best_of_budget() -> None:
    chat = ScriptedChat(script=["a", "bbb", "cc"])
    message = RerankChatModel(chat_model=chat, reward=LENGTH, strategy="adaptive", budget=3).invoke("q")
    assert message.content == "bbb" and chat.calls == 3
    chat = ScriptedChat(script=["a", "bbb", "cc"])
    message = asyncio.run(
        RerankChatModel(chat_model=chat, reward=LENGTH, strategy="adaptive", budget=3).ainvoke("q")
    )
    assert message.content == "bbb" and chat.calls == 3


def test_budget_needs_adaptive() -> None:
    with pytest.raises(InvalidInputError, match="budget= only applies"):
        RerankChatModel(chat_model=FakeListChatModel(responses=["a"]), reward=LENGTH, budget=4)


# -- streaming, stop strings, tracing params ------------------------------------------------------
class Tokens(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


def test_stream_sends_the_chosen_answer_as_one_last_chunk_with_usage() -> None:
    recorder = Tokens()
    model = rerank(ScriptedChat(script=["a", "bbb"]), n=2)
    (chunk,) = model.stream("q", config={"callbacks": [recorder]})
    assert chunk.content == "bbb" and recorder.tokens == ["bbb"] and chunk.chunk_position == "last"
    assert chunk.usage_metadata == {"input_tokens": 6, "output_tokens": 4, "total_tokens": 10}
    assert chunk.response_metadata["strategy"] == "best-of-n" and chunk.response_metadata["reward"] == 3
    (achunk,) = asyncio.run(_collect(rerank(ScriptedChat(script=["a", "bbb"]), n=2).astream("q")))
    assert achunk.content == "bbb" and achunk.chunk_position == "last" and achunk.usage_metadata


async def _collect(stream: Any) -> list[Any]:
    return [chunk async for chunk in stream]


def test_stream_keeps_the_chosen_answers_tool_calls_valid_and_invalid() -> None:
    call = {"name": "lookup", "args": {"q": "sea"}, "id": "call_1", "type": "tool_call"}
    bad = {"name": "lookup", "args": "{not json", "id": "call_2", "error": "bad", "type": "invalid_tool_call"}
    chosen = AIMessage(content="calling", tool_calls=[call], invalid_tool_calls=[bad])
    chat = FakeMessagesListChatModel(responses=[AIMessage(content="no"), chosen])
    (chunk,) = rerank(chat, n=2, max_concurrency=1).stream("q")
    assert chunk.text == "calling" and chunk.tool_calls == [call] and chunk.invalid_tool_calls == [bad]


class StopRecorder(BaseChatModel):
    """Answers 'ok' and records the stop strings (and other keywords) each call received."""

    seen: list[Any] = Field(default_factory=list)
    keywords: list[dict[str, Any]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "stop-recorder"

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        self.seen.append(stop)
        self.keywords.append(kwargs)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content="ok"))])


def test_stop_strings_reach_the_wrapped_model() -> None:
    inner = StopRecorder()
    rerank(inner, n=1, stop=["END"]).invoke("q")
    rerank(inner, n=1, stop=["END"]).invoke("q", stop=["HALT"])  # the call's own stop wins
    rerank(inner, n=1, stop=["END"]).batch(["q"])
    asyncio.run(rerank(inner, n=1, stop=["END"]).ainvoke("q"))
    rerank(inner, n=1).invoke("q")
    assert inner.seen == [["END"], ["HALT"], ["END"], ["END"], None]


def test_max_tokens_reaches_every_best_of_n_call_under_the_wrapped_models_name() -> None:
    inner = StopRecorder()
    rerank(inner, n=2, max_tokens=7).invoke("q")
    asyncio.run(rerank(inner, n=1, max_tokens=5, max_tokens_param="num_predict").ainvoke("q"))
    rerank(inner, n=1).invoke("q")
    assert inner.keywords == [{"max_tokens": 7}, {"max_tokens": 7}, {"num_predict": 5}, {}]


def test_tracing_params_name_the_wrapped_model() -> None:
    params = rerank(FakeListChatModel(responses=["a"]), stop=["x"])._get_ls_params()
    assert params["ls_provider"] == "align_chains" and params["ls_model_name"] == "fake-list-chat-model"
    assert params["ls_stop"] == ["x"]
