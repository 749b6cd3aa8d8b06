"""Fair turns: groups the scheduler runs side by side share the policy between forward passes
(``align_chains/turns.py``, ``BatchingSettings.max_running``), one pass at a time."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from align_chains import BestOfNChatModel
from align_chains.cancellation import Cancelled
from align_chains.scheduling import BatchingSettings, Scheduler
from align_chains.turns import TurnLock, pass_turn, taking_turns


class PassMeter:
    """Replaces the policy model's ``forward`` for a block: records which thread ran each pass
    and the most threads ever inside a forward at once (each pass is widened by ``delay_s`` so
    an overlap could not go unseen)."""

    def __init__(self, model, delay_s: float = 0.002) -> None:
        self.model, self.original, self.delay_s = model, model.forward, delay_s
        self.inside = self.most_inside = 0
        self.threads: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, *args, **kwargs):
        with self._lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            self.threads.append(threading.current_thread().name)
        try:
            time.sleep(self.delay_s)
            return self.original(*args, **kwargs)
        finally:
            with self._lock:
                self.inside -= 1

    def passes_by_workers(self) -> list[int]:
        """Passes run by each of the scheduler's worker threads that ran any."""
        with self._lock:
            names = [t for t in self.threads if t.startswith("align-chains-worker")]
        return [names.count(name) for name in sorted(set(names))]

    def __enter__(self) -> PassMeter:
        self.model.forward = self
        return self

    def __exit__(self, *exc) -> None:
        del self.model.forward  # the class's forward again


def request(chat: BestOfNChatModel, prompt: str, key: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(chat=chat, prompt=prompt, batch_key=key)


def run_group(requests: list) -> list[str]:
    """What the server does with a group: one strategy run (under the policy's lock)."""
    first = requests[0]
    return [r.text for r in first.chat.run_strategy([r.prompt for r in requests], None)]


def long_and_short(tiny_policy, length_reward) -> tuple[BestOfNChatModel, BestOfNChatModel]:
    common = dict(policy=tiny_policy, reward=length_reward, temperature=1.0)
    return (
        BestOfNChatModel(n=2, max_tokens=160, seed=7, **common),
        BestOfNChatModel(n=1, max_tokens=4, seed=3, **common),
    )


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def short_during_long(tiny_policy, length_reward, max_running: int) -> tuple[dict, Scheduler, PassMeter]:
    """Submit the long request, then the short one once the long one has run 10 passes."""
    long_chat, short_chat = long_and_short(tiny_policy, length_reward)
    scheduler = Scheduler(run_group, BatchingSettings(max_running=max_running))
    finished: dict[str, float] = {}
    results: dict[str, str] = {}
    try:
        with PassMeter(tiny_policy.model) as meter:
            long_job = scheduler.submit(request(long_chat, "Tell me a long story."), scheduler.token(None))
            wait_for(lambda: sum(meter.passes_by_workers()) >= 10)
            short_job = scheduler.submit(request(short_chat, "Hi"), scheduler.token(None))
            jobs = {"long": long_job, "short": short_job}
            for name, job in jobs.items():
                job.future.add_done_callback(lambda _, name=name: finished.setdefault(name, time.monotonic()))
            results = {name: job.future.result(timeout=60) for name, job in jobs.items()}
    finally:
        scheduler.close()
        scheduler.join(10)
    return {"results": results, "finished": finished}, scheduler, meter


def test_a_short_request_finishes_during_a_long_one_which_answers_as_alone(tiny_policy, length_reward):
    long_chat, short_chat = long_and_short(tiny_policy, length_reward)
    alone = {
        "long": long_chat.run_strategy(["Tell me a long story."], None)[0].text,
        "short": short_chat.run_strategy(["Hi"], None)[0].text,
    }
    outcome, scheduler, meter = short_during_long(tiny_policy, length_reward, max_running=2)
    assert outcome["finished"]["short"] < outcome["finished"]["long"]
    assert outcome["results"] == alone  # same seeds, same answers: taking turns changes nothing
    assert meter.most_inside == 1  # never two groups inside a forward pass
    assert scheduler.stats.turns_handed_over >= 2 and scheduler.stats.started_alongside == 1
    assert scheduler.stats.most_running == 2


def test_with_one_running_group_the_short_request_waits_for_the_long_one(tiny_policy, length_reward):
    outcome, scheduler, meter = short_during_long(tiny_policy, length_reward, max_running=1)
    assert outcome["finished"]["long"] < outcome["finished"]["short"]
    assert scheduler.stats.turns_handed_over == 0 and scheduler.stats.started_alongside == 0
    assert meter.most_inside == 1


def test_cancelling_one_running_group_leaves_the_other_undisturbed(tiny_policy, length_reward):
    common = dict(policy=tiny_policy, reward=length_reward, temperature=1.0, n=2, max_tokens=120)
    first, second = BestOfNChatModel(seed=1, **common), BestOfNChatModel(seed=2, **common)
    alone = second.run_strategy(["Write a poem."], None)[0].text
    scheduler = Scheduler(run_group, BatchingSettings(max_running=2))
    try:
        with PassMeter(tiny_policy.model) as meter:
            doomed_token = scheduler.token(None)
            doomed = scheduler.submit(request(first, "Tell me a story."), doomed_token)
            kept = scheduler.submit(request(second, "Write a poem."), scheduler.token(None))
            passes = meter.passes_by_workers
            wait_for(lambda: len(passes()) == 2 and min(passes()) >= 5)  # both are running
            doomed_token.cancel("client disconnected")
            with pytest.raises(Cancelled) as info:
                doomed.future.result(timeout=60)
            assert info.value.reason == "client disconnected"
            assert kept.future.result(timeout=60) == alone
    finally:
        scheduler.close()
        scheduler.join(10)
    assert meter.most_inside == 1 and scheduler.stats.cancelled == 1


def _recording(max_running: int, fits=None) -> tuple[Scheduler, list[str], threading.Event]:
    """A scheduler whose groups (fake, no model) record when they start and end; ``release``
    lets the first group end."""
    events: list[str] = []
    release = threading.Event()

    def fake_group(requests: list) -> list[str]:
        name = requests[0].name
        events.append(f"start {name}")
        if name == "long":
            release.wait(10)
        events.append(f"end {name}")
        return [r.name for r in requests]

    settings = BatchingSettings(window_s=0.0, max_running=max_running)
    return Scheduler(fake_group, settings, fits=fits), events, release


@pytest.mark.parametrize(
    ("key", "fits", "alongside"),
    [
        ("other-settings", None, True),
        ("same-settings", None, False),  # waits for the next batched run of its kind
        ("other-settings", lambda groups: False, False),  # the memory check says no
    ],
)
def test_a_group_starts_beside_a_running_one_only_with_other_settings_and_room(key, fits, alongside):
    scheduler, events, release = _recording(max_running=2, fits=fits)
    try:
        scheduler.submit(SimpleNamespace(name="long", batch_key="same-settings"), scheduler.token(None))
        wait_for(lambda: events == ["start long"])
        short = scheduler.submit(SimpleNamespace(name="short", batch_key=key), scheduler.token(None))
        if alongside:
            assert short.future.result(timeout=5) == "short"
            release.set()
        else:
            time.sleep(0.1)
            assert not short.future.done()
            release.set()
            short.future.result(timeout=5)
    finally:
        release.set()
        scheduler.close()
        scheduler.join(5)
    expected = ["start long", "start short", "end short", "end long"] if alongside else [
        "start long", "end long", "start short", "end short"
    ]  # fmt: skip
    assert events == expected


def test_turn_lock_is_reentrant_and_hands_over_only_to_threads_taking_turns():
    lock = TurnLock()
    log: list[str] = []

    def direct() -> None:  # not taking turns: waits for the whole run, as with an RLock
        with lock:
            log.append("direct")

    def turn_taker() -> None:
        with taking_turns(), lock:
            log.append("taker")

    handed: list[int] = []
    with taking_turns(lambda: handed.append(1)), lock, lock:
        assert not pass_turn()  # nobody waits: a lone run pays nothing
        waiting_direct = threading.Thread(target=direct)
        waiting_direct.start()
        wait_for(lambda: lock.waiting == 1)
        assert not pass_turn()  # a thread that does not take turns is not handed the lock mid-run
        taker = threading.Thread(target=turn_taker)
        taker.start()
        wait_for(lambda: lock.waiting == 2)
        assert pass_turn()  # the taker runs its turn (skipping the direct caller); we get it back
        assert log == ["taker"] and handed == [1]
        log.append("holder")
    waiting_direct.join(5)
    taker.join(5)
    assert log == ["taker", "holder", "direct"]
    with pytest.raises(RuntimeError):
        lock.release()


def test_a_request_waiting_for_memory_is_not_overtaken_by_later_ones():
    def fits(groups: list[list]) -> bool:  # "big" fits beside nothing
        return not any(r.name == "big" for group in groups for r in group)

    scheduler, events, release = _recording(max_running=2, fits=fits)
    try:
        scheduler.submit(SimpleNamespace(name="long", batch_key="a"), scheduler.token(None))
        wait_for(lambda: events == ["start long"])
        big = scheduler.submit(SimpleNamespace(name="big", batch_key="b"), scheduler.token(None))
        small = scheduler.submit(SimpleNamespace(name="small", batch_key="c"), scheduler.token(None))
        time.sleep(0.1)
        assert events == ["start long"]  # small would fit, but big came first
        release.set()
        assert (big.future.result(timeout=5), small.future.result(timeout=5)) == ("big", "small")
    finally:
        release.set()
        scheduler.close()
        scheduler.join(5)
    assert events == ["start long", "end long", "start big", "end big", "start small", "end small"]


def test_sea_gradient_steps_take_turns_too(tiny_policy, length_reward):
    """SEA's passes with gradients and its optimiser steps run between passes, under the turn:
    a short request still finishes first, and SEA's answer is the one it gives alone."""
    from align_chains import SEAChatModel

    sea = SEAChatModel(
        policy=tiny_policy, reward="judge", chains=2, iterations=12, max_tokens=12, seed=0, patience=None
    )
    short = BestOfNChatModel(policy=tiny_policy, reward=length_reward, n=1, max_tokens=4, seed=3)
    alone = sea.run_strategy(["Tell me about the sea."], None)[0].text
    scheduler = Scheduler(run_group, BatchingSettings(max_running=2))
    finished: list[str] = []
    try:
        with PassMeter(tiny_policy.model) as meter:
            long_job = scheduler.submit(request(sea, "Tell me about the sea."), scheduler.token(None))
            wait_for(lambda: sum(meter.passes_by_workers()) >= 10)
            short_job = scheduler.submit(request(short, "Hi"), scheduler.token(None))
            for name, job in (("sea", long_job), ("short", short_job)):
                job.future.add_done_callback(lambda _, name=name: finished.append(name))
            assert long_job.future.result(timeout=120) == alone
            short_job.future.result(timeout=60)
    finally:
        scheduler.close()
        scheduler.join(10)
    assert finished == ["short", "sea"] and meter.most_inside == 1
    assert scheduler.stats.turns_handed_over >= 2
