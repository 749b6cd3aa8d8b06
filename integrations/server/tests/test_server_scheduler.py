"""The request scheduler on its own: which requests it gathers into one batched run."""

from __future__ import annotations

import time
from types import SimpleNamespace

from align_chains_server.scheduler import BatchingSettings, Scheduler


def _recording_scheduler(window_s: float, run_s: float) -> tuple[Scheduler, list[list[str]]]:
    groups: list[list[str]] = []

    def run_group(requests: list) -> list:
        groups.append([r.name for r in requests])
        time.sleep(run_s)
        return [r.name for r in requests]

    return Scheduler(run_group, BatchingSettings(window_s=window_s, max_batch=8)), groups


def _request(name: str, key: str | None = "same-settings") -> SimpleNamespace:
    return SimpleNamespace(name=name, batch_key=key)


def test_a_client_answered_by_a_run_joins_the_requests_that_queued_behind_it():
    # A runs; B queues behind it; C is sent 30 ms after A is answered (a client sending its next
    # request). B waited for the worker, not for company: the window opens when the worker is
    # free, so B and C run together instead of as two half-full batches.
    scheduler, groups = _recording_scheduler(window_s=0.25, run_s=0.8)
    try:
        a = scheduler.submit(_request("A"), scheduler.token(None))
        time.sleep(0.3)  # past A's window (0.25 s), while A runs (0.8 s)
        b = scheduler.submit(_request("B"), scheduler.token(None))
        a.future.result(timeout=5)
        time.sleep(0.03)
        c = scheduler.submit(_request("C"), scheduler.token(None))
        assert (b.future.result(timeout=5), c.future.result(timeout=5)) == ("B", "C")
    finally:
        scheduler.close()
        scheduler.join(5)
    assert groups == [["A"], ["B", "C"]]


def test_a_lone_request_waits_at_most_the_window_and_incompatible_requests_never_share_a_run():
    scheduler, groups = _recording_scheduler(window_s=0.05, run_s=0.0)
    try:
        started = time.monotonic()
        scheduler.submit(_request("A"), scheduler.token(None)).future.result(timeout=5)
        alone = time.monotonic() - started
        jobs = [
            scheduler.submit(_request("B", key="k1"), scheduler.token(None)),
            scheduler.submit(_request("C", key="k2"), scheduler.token(None)),
            scheduler.submit(_request("D", key=None), scheduler.token(None)),  # seeded: never batched
        ]
        for job in jobs:
            job.future.result(timeout=5)
    finally:
        scheduler.close()
        scheduler.join(5)
    assert alone < 1.0
    assert sorted(map(tuple, groups)) == [("A",), ("B",), ("C",), ("D",)]


def test_the_largest_batch_is_max_batch():
    scheduler, groups = _recording_scheduler(window_s=0.2, run_s=0.0)
    scheduler.batching = BatchingSettings(window_s=0.2, max_batch=3)
    try:
        jobs = [scheduler.submit(_request(str(i)), scheduler.token(None)) for i in range(7)]
        for job in jobs:
            job.future.result(timeout=5)
    finally:
        scheduler.close()
        scheduler.join(5)
    assert [len(g) for g in groups] == [3, 3, 1]
