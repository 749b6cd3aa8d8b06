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

Fair turns (``max_running``, default 2): up to that many groups run at once, each on its own
worker thread, taking turns on the policy (``align_chains.turns``): the policy's lock passes
from one running group to the other before every forward pass while both want it, so a
four-token request that arrives during a long DARWIN or SEA run is answered after a few of its
own passes instead of after the whole long run. Only one group computes at any moment (no
oversubscribed cores, no second peak of activations), and a group alone never hands anything
over. A group starts beside a running one only when (a) its batch key differs from every running
group's (a request with the same settings waits for the next batched run of its kind instead of
splitting the batch: that keeps the batched throughput of a uniform load) and (b) the ``fits``
callback, when given, accepts the groups together (the server passes its memory budget: the
estimated peaks of all the requests running at once must fit). ``max_running=1`` is the single
worker of before, group after group.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from align_chains.cancellation import Cancelled, CancelToken
from align_chains.turns import taking_turns

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
    ``max_running``: groups run at once, taking turns on the policy between forward passes
    (1: one group after the other).
    """

    window_s: float = 0.05
    max_batch: int = 8
    delay_factor: float = 0.1
    max_running: int = 2

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
    turns_handed_over: int = 0  # times a running group passed the policy to another between passes
    started_alongside: int = 0  # groups started while another group was running
    most_running: int = 0  # the most groups running at once


#: the server's memory check: may these groups (each a list of requests) run at once?
Fits = Callable[[list[list[Any]]], bool]


class Scheduler:
    """Runs jobs on ``max_running`` worker threads; ``run_group(requests)`` does the (blocking) work."""

    def __init__(
        self,
        run_group: Callable[[list[Any]], list[Any]],
        batching: BatchingSettings | None = None,
        fits: Fits | None = None,
    ) -> None:
        self.run_group = run_group
        self.batching = batching or BatchingSettings()
        if self.batching.max_running < 1:
            raise ValueError(f"max_running must be at least 1, got {self.batching.max_running}.")
        self.fits = fits
        self.shutdown = CancelToken()  # the parent of every request's token
        self.stats = SchedulerStats()
        self._pending: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stats_lock = threading.Lock()
        self._closed = False
        self._running: dict[int, list[Job]] = {}  # worker slot -> its group (also while gathering)
        # the batching window's clock, shared by the workers: when a run last ended, and that run
        self._free_since = 0.0
        self._last_run: tuple[str | None, int, float] = (None, 0, 0.0)  # key, requests, seconds
        self._workers = tuple(
            threading.Thread(target=self._loop, args=(slot,), name=f"align-chains-worker-{slot}", daemon=True)
            for slot in range(self.batching.max_running)
        )
        for worker in self._workers:
            worker.start()

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
        """The first thread that runs the jobs (the only one with ``max_running=1``)."""
        return self._workers[0]

    @property
    def workers(self) -> tuple[threading.Thread, ...]:
        """Every thread that runs jobs, one per group that may run at once."""
        return self._workers

    @property
    def queued(self) -> int:
        return len(self._pending)

    @property
    def running(self) -> int:
        """Groups running (or gathering company) now."""
        return len(self._running)

    def close(self, reason: str = SHUTDOWN_REASON) -> None:
        """Cancel everything queued and running; the workers end after their current step."""
        self.shutdown.cancel(reason)
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for every worker to end (``timeout`` in all); True once none is alive."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for worker in self._workers:
            worker.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(w.is_alive() for w in self._workers)

    # -- the workers ---------------------------------------------------------------------------
    def _loop(self, slot: int) -> None:
        while True:
            group = self._next_group(slot)
            if group is None:
                break
            began = time.monotonic()
            try:
                self._run(group)
            finally:
                with self._cond:
                    self._running.pop(slot, None)
                    self._free_since = time.monotonic()
                    self._last_run = (group[0].key, len(group), self._free_since - began)
                    self._cond.notify_all()  # a group held back by this one may start now
        with self._cond:  # fail whatever is left
            left, self._pending = list(self._pending), deque()
        for job in left:
            _settle(job, Cancelled(SHUTDOWN_REASON))

    def _first_startable(self, slot: int) -> Job | None:
        """The oldest queued job that may start now (cancelled ones are settled on the way);
        waits for one. None once closed. Called with the condition held. A job whose settings
        are running already is passed over (it starts when that run ends); one waiting for
        memory is not (nobody overtakes it, so a stream of small requests cannot starve it)."""
        while not self._closed:
            for job in list(self._pending):
                if job.token.cancelled:
                    self._pending.remove(job)
                    self._count(cancelled=1)
                    _settle(job, Cancelled(job.token.reason or "cancelled"))
                    continue
                if job.key is not None and any(g[0].key == job.key for g in self._running.values()):
                    continue
                if not self._may_join(job, []):
                    break
                self._pending.remove(job)
                self._count(started_alongside=int(bool(self._running)))
                self._running[slot] = [job]
                with self._stats_lock:
                    self.stats.most_running = max(self.stats.most_running, len(self._running))
                return job
            self._cond.wait()
        return None

    def _may_join(self, job: Job, group: list[Job]) -> bool:
        """Whether ``job`` may start (``group`` empty) or join ``group`` beside the running groups:
        when the ``fits`` check accepts them all together."""
        others = [g for g in self._running.values() if g is not group]
        if not others or self.fits is None:
            return True
        return self.fits([[j.request for j in g] for g in others] + [[j.request for j in [*group, job]]])

    def _next_group(self, slot: int) -> list[Job] | None:
        with self._cond:
            first = self._first_startable(slot)
            if first is None:
                return None
            group = self._running[slot]
            if first.key is None or not self.batching.enabled:
                return group
            free_since = self._free_since
            deadline = max(first.enqueued, free_since) + self.batching.window_s
            last_key, last_size, last_seconds = self._last_run
            expected = min(self.batching.max_batch, last_size) if last_key == first.key else 0
            returning_by = free_since + self.batching.delay_factor * last_seconds
            while len(group) < self.batching.max_batch and not self._closed:
                for job in list(self._pending):
                    if len(group) >= self.batching.max_batch:
                        break
                    if job.key == first.key and not job.token.cancelled and self._may_join(job, group):
                        self._pending.remove(job)
                        group.append(job)
                until = max(deadline, returning_by) if len(group) < expected else deadline
                wait = until - time.monotonic()
                if len(group) >= self.batching.max_batch or wait <= 0:
                    break
                self._cond.wait(wait)
            return group

    def _count(self, **increments: int) -> None:
        with self._stats_lock:
            for name, value in increments.items():
                setattr(self.stats, name, getattr(self.stats, name) + value)

    def _turns(self) -> AbstractContextManager[None]:
        """Run a group taking turns on the policy when several may run (never with one)."""
        if self.batching.max_running == 1:
            return nullcontext()
        return taking_turns(lambda: self._count(turns_handed_over=1))

    def _run(self, group: list[Job]) -> None:
        token = AllCancelled([j.token for j in group], parents=[self.shutdown])
        try:
            with token.active(), self._turns():
                outcomes = self.run_group([j.request for j in group])
        except Cancelled as exc:
            self._count(cancelled=len(group))
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
        self._count(runs=1, requests=len(group))
        with self._stats_lock:
            self.stats.largest_batch = max(self.stats.largest_batch, len(group))
        for job, outcome in zip(group, outcomes, strict=True):
            _settle(job, outcome)

    def _run_alone(self, group: list[Job]) -> None:
        for job in group:
            self._count(retried_alone=1)
            if job.token.cancelled:
                self._count(cancelled=1)
                _settle(job, Cancelled(job.token.reason or "cancelled"))
                continue
            try:
                with job.token.active(), self._turns():
                    (outcome,) = self.run_group([job.request])
            except Exception as exc:
                outcome = exc
            else:
                self._count(runs=1, requests=1)
            _settle(job, outcome)


def _settle(job: Job, outcome: Any) -> None:
    """Hand a job its result or error (once; a future someone already settled is left alone)."""
    if job.future.done():
        return
    if isinstance(outcome, BaseException):
        job.future.set_exception(outcome)
    else:
        job.future.set_result(outcome)
