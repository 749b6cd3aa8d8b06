"""Fair turns on the server: a short request sent during a long one is answered first, but only
when both fit the memory budget together (``ServedModel.fit_together``, ``--max-running``)."""

from __future__ import annotations

import threading
import time

import pytest
from align_chains_server.app import create_app
from align_chains_server.schemas import ChatCompletionRequest
from align_chains_server.service import ServedModel
from fastapi.testclient import TestClient

from align_chains.rewards import CallableReward
from align_chains.scheduling import BatchingSettings
from align_chains.testing import tiny_policy

HELLO = [{"role": "user", "content": "Hi"}]
LONG = {
    "messages": [{"role": "user", "content": "Tell me a story."}],
    "max_tokens": 200,
    "align_chains": {"n": 2},
}
SHORT = {"messages": HELLO, "max_tokens": 4, "align_chains": {"n": 1}}


@pytest.fixture(scope="module")
def loaded():
    return tiny_policy(), CallableReward(lambda prompt, response: float(len(response)), name="length")


def served_for(loaded, memory_budget: int | None = None) -> ServedModel:
    served = ServedModel(strategy="best-of-n", policy_spec="unused", memory_budget=memory_budget)
    served._policy, served._reward = loaded  # what load() would set, without loading from disk
    return served


def plan(served: ServedModel, body: dict):
    return served.plan(ChatCompletionRequest.model_validate(body))


def budget_for_both(loaded) -> int:
    """The smallest budget under which the long and the short request may run at once."""
    served = served_for(loaded)
    long, short = plan(served, LONG).memory, plan(served, SHORT).memory
    return long.total + short.total - short.weights  # the length reward has no weights


def test_requests_run_side_by_side_only_when_their_memory_fits_together(loaded):
    both = budget_for_both(loaded)
    for budget, fits in ((both, True), (both - 1, False)):
        served = served_for(loaded, budget)
        long, short = plan(served, LONG), plan(served, SHORT)  # each alone is admitted
        assert served.fit_together([[long], [short]]) is fits
    served = served_for(loaded, both)
    assert not served.fit_together([[plan(served, LONG)], [plan(served, SHORT), plan(served, SHORT)]])


class SlowPasses:
    """Widens every forward pass of the policy by 2 ms and counts them (the long request then
    takes a few hundred passes' time: long enough to send the short one during it)."""

    def __init__(self, model) -> None:
        self.model, self.original, self.count = model, model.forward, 0

    def __call__(self, *args, **kwargs):
        self.count += 1
        time.sleep(0.002)
        return self.original(*args, **kwargs)

    def __enter__(self) -> SlowPasses:
        self.model.forward = self
        return self

    def __exit__(self, *exc) -> None:
        del self.model.forward


def short_during_long(loaded, budget: int) -> tuple[list[str], dict]:
    """Send the long request, then the short one 20 passes into it; the order they finished in."""
    app = create_app(served_for(loaded, budget), batching=BatchingSettings(max_running=2))
    finished: list[str] = []
    with TestClient(app) as client, SlowPasses(loaded[0].model) as passes:

        def send(name: str, body: dict) -> None:
            response = client.post("/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
            finished.append(name)

        long = threading.Thread(target=send, args=("long", LONG))
        long.start()
        while passes.count < 20:
            time.sleep(0.005)
        send("short", SHORT)
        long.join(60)
        stats = client.get("/health").json()["batches"]
    return finished, stats


def test_a_short_request_is_answered_during_a_long_one_when_both_fit(loaded):
    finished, stats = short_during_long(loaded, budget_for_both(loaded))
    assert finished == ["short", "long"]
    assert stats["started_alongside"] == 1 and stats["turns_handed_over"] >= 2 and stats["most_running"] == 2


def test_a_short_request_that_does_not_fit_beside_the_long_one_waits_for_it(loaded):
    finished, stats = short_during_long(loaded, budget_for_both(loaded) - 1)
    assert finished == ["long", "short"]
    assert stats["started_alongside"] == 0 and stats["turns_handed_over"] == 0
