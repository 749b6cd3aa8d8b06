"""Cooperative cancellation: the token, the engine's decode steps, reward calls, the policy
lock, and the chat models' ``time_budget_s`` / ``cancel_token``."""

from __future__ import annotations

import functools
import threading
import time

import pytest

from align_chains import cancellation
from align_chains.cancellation import Cancelled, CancelToken
from align_chains.chat_models import BestOfNChatModel
from align_chains.engine.counters import ComputeCounters
from align_chains.engine.decoder import Decoder
from align_chains.engine.sampling import SamplingParams, make_generator
from align_chains.models.policy import Policy
from align_chains.rewards import CallableReward


def test_token_reason_deadline_and_parents():
    token = CancelToken()
    assert not token.cancelled and token.reason is None and token.remaining_s() is None
    token.check()  # no raise
    token.cancel("client disconnected")
    token.cancel("second reason is ignored")
    assert token.reason == "client disconnected"
    with pytest.raises(Cancelled, match="client disconnected"):
        token.check()

    timed = CancelToken(time_budget_s=0.05)
    assert not timed.cancelled and 0 < timed.remaining_s() <= 0.05
    time.sleep(0.06)
    assert timed.reason == "deadline"

    parent = CancelToken()
    child = CancelToken(10.0, parents=[parent])
    assert not child.cancelled
    parent.cancel("shutdown")
    assert child.reason == "shutdown"
    with pytest.raises(ValueError, match="positive"):
        CancelToken(time_budget_s=0)


def test_scope_combines_the_active_token_a_given_token_and_a_budget():
    outer, given = CancelToken(), CancelToken()
    assert cancellation.current() is None
    with outer.active():
        with cancellation.cancel_scope() as same:
            assert same is outer
        with cancellation.cancel_scope(60.0, given) as combined:
            assert cancellation.current() is combined
            cancellation.check_cancelled()
            outer.cancel("outer")
            with pytest.raises(Cancelled, match="outer"):
                cancellation.check_cancelled()
    assert cancellation.current() is None
    cancellation.check_cancelled()  # nothing active: a no-op


def test_decode_stops_at_the_next_step_and_hands_back_partial_rows(tiny_policy):
    counters = ComputeCounters()
    decoder = Decoder(tiny_policy, counters)
    params = SamplingParams(max_new_tokens=40, temperature=1.0, seed=0)
    batch = decoder.start([tiny_policy.render([{"role": "user", "content": "hi"}])], 3, params)
    token = CancelToken()

    def cancel_after_five(b):
        if b.steps == 5:
            token.cancel("enough")

    with token.active(), pytest.raises(Cancelled) as caught:
        decoder.extend(batch, generator=make_generator(0, tiny_policy.device), on_step=cancel_after_five)
    error = caught.value
    assert error.reason == "enough"
    assert batch.steps == 5  # not one step more
    assert len(error.partial) == 3 and all(c.generated_tokens <= 5 for c in error.partial)
    assert error.counters is counters and counters.generated_tokens == sum(
        c.generated_tokens for c in error.partial
    )


def test_a_cancelled_token_stops_reward_calls_and_prefills(tiny_policy):
    calls = []
    reward = CallableReward(lambda p, r: calls.append(r) or 1.0, name="counting")
    token = CancelToken()
    token.cancel("stop")
    with token.active():
        with pytest.raises(Cancelled):
            reward.score(["q"], ["a"])
        with pytest.raises(Cancelled):
            Decoder(tiny_policy).start([[1, 2, 3]], 2)
    assert calls == []
    assert reward.score(["q"], ["a"]) == [1.0]  # without the token it runs


def _slow_policy(policy: Policy, seconds: float) -> Policy:
    """The same weights, each forward pass slowed down: a long-running request in miniature."""
    import copy

    model = copy.copy(policy.model)
    forward = policy.model.forward

    @functools.wraps(forward)
    def slow(*args, **kwargs):
        time.sleep(seconds)
        return forward(*args, **kwargs)

    model.forward = slow
    return Policy(model=model, tokenizer=policy.tokenizer, name="slow-tiny")


def test_chat_model_cancel_hook_stops_a_running_call_within_a_step(tiny_policy, length_reward):
    slow = _slow_policy(tiny_policy, 0.01)
    token = CancelToken()
    model = BestOfNChatModel(
        model=slow, reward=length_reward, n=2, max_tokens=400, temperature=1.0, cancel_token=token
    )
    outcome: dict = {}

    def call():
        try:
            model.invoke("Tell me a long story.")
        except Cancelled as exc:
            outcome["error"] = exc
            outcome["at"] = time.monotonic()

    worker = threading.Thread(target=call)
    worker.start()
    time.sleep(0.3)
    token.cancel("user pressed stop")
    worker.join(timeout=5)
    assert not worker.is_alive()
    error = outcome["error"]
    assert outcome["at"] - token.cancelled_at < 0.5  # a step is ~10 ms here
    assert error.reason == "user pressed stop"
    assert 0 < max(c.generated_tokens for c in error.partial) < 400


def test_chat_model_time_budget_raises_with_partial_work(tiny_policy, length_reward):
    slow = _slow_policy(tiny_policy, 0.01)
    model = BestOfNChatModel(model=slow, reward=length_reward, n=2, max_tokens=400, time_budget_s=0.3)
    began = time.monotonic()
    with pytest.raises(Cancelled) as caught:
        model.invoke("Tell me a long story.")
    assert time.monotonic() - began < 1.5
    assert caught.value.reason == "deadline"
    assert caught.value.partial and caught.value.counters.forward_passes > 1
    # a per-call budget overrides the field; a generous one lets the call finish
    short = model.invoke("Hi", max_tokens=3, time_budget_s=30)
    assert short.response_metadata["compute"]["generated_tokens"] <= 6


def test_cancelled_call_waiting_for_the_policy_lock_gives_up(tiny_policy, length_reward):
    token = CancelToken()
    model = BestOfNChatModel(model=tiny_policy, reward=length_reward, n=1, max_tokens=2, cancel_token=token)
    outcome: dict = {}

    def call():
        try:
            model.invoke("hi")
            outcome["ran"] = True
        except Cancelled as exc:
            outcome["error"] = exc

    with tiny_policy.lock:  # another request holds the policy
        worker = threading.Thread(target=call)
        worker.start()
        time.sleep(0.2)
        token.cancel("timeout")
        worker.join(timeout=2)
        assert not worker.is_alive(), "the queued call kept waiting for the lock"
    assert "ran" not in outcome and outcome["error"].reason == "timeout"
