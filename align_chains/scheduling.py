"""One worker thread that runs requests on a policy, gathering compatible ones into batches.

Used by the server (admitted HTTP requests) and by the chat models (concurrent ``invoke`` /
``ainvoke`` calls from several threads or coroutines, ``chat_models.concurrent_calls``).
Calls on one policy run one at a time under its lock anyway, so a single worker loses nothing
and gains a queue it can look into: when it takes a request it also takes every queued request
with the same batch key (same strategy settings and stop strings, unseeded), waiting at most
``window_s`` for more, up to ``max_batch``, and runs them as one batched strategy run. The window
starts when the first request arrived or when the worker became free, whichever is later: a
request that queued behind a run has waited for the worker, not for company, and the clients
that the run just answered usually send their next request within milliseconds, so they join
the next batch instead of splitting it into two half-full ones. A failing batch is retried
request by request, so one bad request (a reward that raises on its prompt, say) fails alone.

Every request carries a ``CancelToken`` (on the server: deadline = the server's timeout;
cancelled on client disconnect and on shutdown). A batch runs under a token that is cancelled
only when *all* its requests are (or on shutdown), so one client leaving never cancels its
neighbours' work.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from align_chains.cancellation import Cancelled, CancelToken

log = logging.getLogger("align_chains")

SHUTDOWN_REASON = "server shutting down"


@dataclass(frozen=True)
class BatchingSettings:
    """Request batching: how long a request waits for company, and the largest batch.

    ``window_s``: after the first request of a batch arrives (or the worker frees up), how long
    to wait for more. ``delay_factor``: when a run of g requests has just been answered, its
    clients usually come back with their next request; the worker waits up to
    ``delay_factor`` x that run's seconds for g compatible requests (vLLM's
    ``--scheduler-delay-factor`` idea), and never when a lone client is already back.
    """

    window_s: float = 0.05
    max_batch: int = 8
    delay_factor: float = 0.1

    @property
    def enabled(self) -> bool:
        return self.max_batch > 1


@dataclass
class Job:
    """One admitted request waiting for, or in, a run."""

    request: Any  # service.PreparedRequest
    token: CancelToken
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def key(self) -> str | None:
        return self.request.batch_key


class AllCancelled(CancelToken):
    """Cancelled when every member is (or a parent is): the token of a batch of requests."""

    def __init__(self, members: Sequence[CancelToken], parents: Sequence[CancelToken] = ()) -> None:
        super().__init__(parents=parents)
        self.members = list(members)

    @property
    def reason(self) -> str | None:
        own = super().reason
        if own is not None:
            return own
        reasons = [m.reason for m in self.members]
        return reasons[0] if reasons and all(r is not None for r in reasons) else None


@dataclass
class SchedulerStats:
    runs: int = 0  # batched strategy runs
    requests: int = 0  # requests those runs answered
    largest_batch: int = 0
    retried_alone: int = 0  # requests re-run on their own after their batch failed
    cancelled: int = 0  # requests dropped or stopped by their token


class Scheduler:
    """Runs jobs on one worker thread; ``run_group(requests)`` does the (blocking) work."""

    def __init__(
        self, run_group: Callable[[list[Any]], list[Any]], batching: BatchingSettings | None = None
    ) -> None:
        self.run_group = run_group
        self.batching = batching or BatchingSettings()
        self.shutdown = CancelToken()  # the parent of every request's token
        self.stats = SchedulerStats()
        self._pending: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._free_since = 0.0  # monotonic time the worker last finished a run
        self._last_run: tuple[str | None, int, float] = (None, 0, 0.0)  # key, requests, seconds
        self._worker = threading.Thread(target=self._loop, name="align-chains-worker", daemon=True)
        self._worker.start()

    # -- the event-loop side -----------------------------------------------------------------
    def token(self, timeout_s: float | None) -> CancelToken:
        """A request's token: its own deadline, cancelled with the server."""
        return CancelToken(timeout_s, parents=[self.shutdown])

    def submit(self, request: Any, token: CancelToken) -> Job:
        job = Job(request, token)
        with self._cond:
            if self._closed:
                job.future.set_exception(Cancelled(SHUTDOWN_REASON))
                return job
            self._pending.append(job)
            self._cond.notify_all()
        return job

    @property
    def worker(self) -> threading.Thread:
        """The thread that runs the jobs."""
        return self._worker

    @property
    def queued(self) -> int:
        return len(self._pending)

    def close(self, reason: str = SHUTDOWN_REASON) -> None:
        """Cancel everything queued and running; the worker ends after its current step."""
        self.shutdown.cancel(reason)
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        self._worker.join(timeout)
        return not self._worker.is_alive()

    # -- the worker ----------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            group = self._next_group()
            if group is None:
                break
            began = time.monotonic()
            self._run(group)
            self._free_since = time.monotonic()
            self._last_run = (group[0].key, len(group), self._free_since - began)
        with self._cond:  # fail whatever is left
            left, self._pending = list(self._pending), deque()
        for job in left:
            _settle(job, Cancelled(SHUTDOWN_REASON))

    def _next_group(self) -> list[Job] | None:
        with self._cond:
            while True:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return None
                first = self._pending.popleft()
                if first.token.cancelled:
                    self.stats.cancelled += 1
                    _settle(first, Cancelled(first.token.reason or "cancelled"))
                    continue
                break
            group = [first]
            if first.key is None or not self.batching.enabled:
                return group
            deadline = max(first.enqueued, self._free_since) + self.batching.window_s
            last_key, last_size, last_seconds = self._last_run
            expected = min(self.batching.max_batch, last_size) if last_key == first.key else 0
            returning_by = self._free_since + self.batching.delay_factor * last_seconds
            while len(group) < self.batching.max_batch and not self._closed:
                for job in list(self._pending):
                    if len(group) >= self.batching.max_batch:
                        break
                    if job.key == first.key and not job.token.cancelled:
                        self._pending.remove(job)
                        group.append(job)
                until = max(deadline, returning_by) if len(group) < expected else deadline
                wait = until - time.monotonic()
                if len(group) >= self.batching.max_batch or wait <= 0:
                    break
                self._cond.wait(wait)
            return group

    def _run(self, group: list[Job]) -> None:
        token = AllCancelled([j.token for j in group], parents=[self.shutdown])
        try:
            with token.active():
                outcomes = self.run_group([j.request for j in group])
        except Cancelled as exc:
            self.stats.cancelled += len(group)
            for job in group:
                _settle(job, exc)
            return
        except Exception as exc:
            if len(group) == 1:
                _settle(group[0], exc)
                return
            log.warning(
                "a batch of %d requests failed (%s); running them one by one", len(group), type(exc).__name__
            )
            self._run_alone(group)
            return
        self.stats.runs += 1
        self.stats.requests += len(group)
        self.stats.largest_batch = max(self.stats.largest_batch, len(group))
        for job, outcome in zip(group, outcomes, strict=True):
            _settle(job, outcome)

    def _run_alone(self, group: list[Job]) -> None:
        for job in group:
            self.stats.retried_alone += 1
            if job.token.cancelled:
                self.stats.cancelled += 1
                _settle(job, Cancelled(job.token.reason or "cancelled"))
                continue
            try:
                with job.token.active():
                    (outcome,) = self.run_group([job.request])
            except Exception as exc:
                outcome = exc
            else:
                self.stats.runs += 1
                self.stats.requests += 1
            _settle(job, outcome)


def _settle(job: Job, outcome: Any) -> None:
    """Hand a job its result or error (once; a future someone already settled is left alone)."""
    if job.future.done():
        return
    if isinstance(outcome, BaseException):
        job.future.set_exception(outcome)
    else:
        job.future.set_result(outcome)
