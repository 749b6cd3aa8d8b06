"""Concurrent invoke/ainvoke calls of one chat model run as one batch on the policy's scheduler,
each keeping its own result, callbacks, errors and cancellation."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace

import pytest
from langchain_core.callbacks import BaseCallbackHandler

from align_chains import BestOfNChatModel, RewardError
from align_chains.cancellation import Cancelled, CancelToken
from align_chains.chat_models.concurrent_calls import scheduler_of
from align_chains.rewards import CallableReward


class Recorder(BaseCallbackHandler):
    """Records each run's end (with its answer) and errors."""

    def __init__(self) -> None:
        self.ended: list[str] = []
        self.errors: list[BaseException] = []

    def on_llm_end(self, response, **kwargs) -> None:
        self.ended.append(response.generations[0][0].text)

    def on_llm_error(self, error, **kwargs) -> None:
        self.errors.append(error)


class CountingReward(CallableReward):
    """Counts reward calls and their sizes; raises for a prompt containing ``[boom]``."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        super().__init__(self._score_batch, batched=True, name="counting")

    def _score_batch(self, prompts, responses):
        self.calls.append(len(responses))
        if any("[boom]" in p for p in prompts):
            raise RuntimeError("the verifier rejected [boom]")
        return [float(len(r)) for r in responses]


def model(tiny_policy, reward, **kwargs) -> BestOfNChatModel:
    return BestOfNChatModel(policy=tiny_policy, reward=reward, n=2, max_tokens=6, temperature=1.0, **kwargs)


def test_concurrent_ainvoke_calls_share_one_run_with_their_own_callbacks(tiny_policy) -> None:
    reward = CountingReward()
    chat = model(tiny_policy, reward)
    handlers = [Recorder() for _ in range(4)]

    async def main():
        return await asyncio.gather(
            *(chat.ainvoke(f"Say {i}", config={"callbacks": [h]}) for i, h in enumerate(handlers))
        )

    answers = asyncio.run(main())
    assert reward.calls == [8], reward.calls  # 4 calls x n=2 scored in ONE reward call: one run
    for answer, handler in zip(answers, handlers, strict=True):
        assert handler.ended == [answer.content] and not handler.errors
        assert answer.response_metadata["compute"]["batch_size"] == 4


@pytest.fixture
def wide_window(tiny_policy):
    """The policy's scheduler waits 0.5 s for company: threads started together on a loaded
    machine all make it into the first batch."""
    scheduler = scheduler_of(tiny_policy)
    before = scheduler.batching
    scheduler.batching = replace(before, window_s=0.5)
    yield scheduler
    scheduler.batching = before


def test_concurrent_thread_invokes_are_batched_and_errors_stay_with_their_call(
    tiny_policy, wide_window
) -> None:
    reward = CountingReward()
    chat = model(tiny_policy, reward)
    retried = wide_window.stats.retried_alone
    outcomes: dict[int, object] = {}
    start = threading.Barrier(3)

    def call(i: int, prompt: str) -> None:
        start.wait()
        try:
            outcomes[i] = chat.invoke(prompt)
        except Exception as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=call, args=(i, p)) for i, p in enumerate(["a", "b [boom]", "c"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert isinstance(outcomes[1], RewardError) and "[boom]" in str(outcomes[1])
    assert outcomes[0].content is not None and outcomes[2].content is not None
    assert reward.calls[0] == 6  # they ran as one batch first (3 calls x n=2) ...
    assert wide_window.stats.retried_alone - retried == 3  # ... then, as it failed, call by call


def test_seeded_calls_and_disabled_batching_run_on_their_own(tiny_policy) -> None:
    reward = CountingReward()
    seeded = model(tiny_policy, reward, seed=0)

    async def two(chat):
        return await asyncio.gather(chat.ainvoke("x"), chat.ainvoke("y"))

    asyncio.run(two(seeded))
    assert reward.calls == [2, 2]  # seeded: same answers as alone, so never batched
    first, again = asyncio.run(two(seeded))
    assert (first.content, again.content) == tuple(m.content for m in asyncio.run(two(seeded)))
    reward.calls.clear()
    asyncio.run(two(model(tiny_policy, reward, concurrent_batching=False)))
    assert reward.calls == [2, 2]


def test_a_call_cancelled_while_queued_never_runs_and_its_neighbours_finish(tiny_policy) -> None:
    reward = CountingReward()
    chat = model(tiny_policy, reward)
    token = CancelToken()
    token.cancel("the user left")

    async def main():
        async def cancelled_call():
            with token.active():
                return await chat.ainvoke("gone")

        return await asyncio.gather(cancelled_call(), chat.ainvoke("stays"), return_exceptions=True)

    gone, stays = asyncio.run(main())
    assert isinstance(gone, Cancelled) and "the user left" in str(gone)
    assert stays.content is not None and reward.calls == [2]


def test_a_cancelled_ainvoke_task_cancels_its_call(tiny_policy) -> None:
    chat = model(tiny_policy, CountingReward())

    async def main():
        task = asyncio.ensure_future(chat.ainvoke("slow"))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await chat.ainvoke("next")  # the worker is free for the next call

    assert asyncio.run(main()).content is not None
