"""The request scheduler on its own: which requests it gathers into one batched run."""

from __future__ import annotations

import time
from types import SimpleNamespace

from align_chains.scheduling import BatchingSettings, Scheduler


def _recording_scheduler(
    window_s: float, run_s: float, delay_factor: float = 0.0
) -> tuple[Scheduler, list[list[str]]]:
    groups: list[list[str]] = []

    def run_group(requests: list) -> list:
        groups.append([r.name for r in requests])
        time.sleep(run_s)
        return [r.name for r in requests]

    settings = BatchingSettings(window_s=window_s, max_batch=8, delay_factor=delay_factor)
    return Scheduler(run_group, settings), groups


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


def test_after_a_batched_run_the_worker_waits_for_its_clients_to_come_back():
    # A run of three (A1-A3) takes 1 s; B queued behind it. Its three clients come back 150 ms
    # after their answers: past the 50 ms window, within delay_factor x 1 s = 300 ms. They join B.
    scheduler, groups = _recording_scheduler(window_s=0.05, run_s=1.0, delay_factor=0.3)
    try:
        first = [scheduler.submit(_request(f"A{i}"), scheduler.token(None)) for i in range(3)]
        time.sleep(0.3)
        b = scheduler.submit(_request("B"), scheduler.token(None))
        for job in first:
            job.future.result(timeout=5)
        time.sleep(0.15)
        back = [scheduler.submit(_request(f"C{i}"), scheduler.token(None)) for i in range(3)]
        for job in [b, *back]:
            job.future.result(timeout=5)
    finally:
        scheduler.close()
        scheduler.join(5)
    assert groups == [["A0", "A1", "A2"], ["B", "C0", "C1", "C2"]]


def test_a_lone_client_coming_back_is_not_delayed_by_the_delay_factor():
    scheduler, groups = _recording_scheduler(window_s=0.01, run_s=0.5, delay_factor=1.0)
    try:
        scheduler.submit(_request("A"), scheduler.token(None)).future.result(timeout=5)
        started = time.monotonic()
        scheduler.submit(_request("B"), scheduler.token(None)).future.result(timeout=5)
        second = time.monotonic() - started
    finally:
        scheduler.close()
        scheduler.join(5)
    assert groups == [["A"], ["B"]]
    assert second < 0.5 + 0.3  # its run, not run + 1.0 x 0.5 s of waiting for company
