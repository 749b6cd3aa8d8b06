"""Cooperative cancellation: a token that long-running work checks at its natural steps.

A ``CancelToken`` is cancelled by whoever owns the work (a server at its timeout or when the
client disconnects, a signal handler, a Ray task) or by its own deadline (``time_budget_s``).
The work calls ``check()`` at each natural step: a decode step, a reward call, a SEA
iteration, a DARWIN segment. ``check()`` raises ``Cancelled``, which carries the work done so
far (``partial``, e.g. the engine's completions at that step, and ``counters``), so a caller
who wants partial results keeps them and one who does not simply lets the error propagate.

The token travels *ambiently* (a context variable), so the engine and the strategies need no
extra argument::

    token = CancelToken(time_budget_s=5.0)
    with token.active():
        model.invoke("...")            # raises Cancelled within one step of the deadline
    # from another thread: token.cancel("client disconnected")

Polling without raising: ``token.cancelled`` (a flag). Nested scopes combine (``cancel_scope``): a
token is cancelled when any of its parents is.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from align_chains.errors import AlignChainsError

_CURRENT: contextvars.ContextVar[CancelToken | None] = contextvars.ContextVar(
    "align_chains_cancel_token", default=None
)


class Cancelled(AlignChainsError):
    """Work stopped because its token was cancelled or its deadline passed.

    ``reason`` says why ("deadline" or the reason given to ``cancel``); ``partial`` holds the
    work done so far when the step that noticed had any (the engine attaches its rows'
    completions); ``counters`` the compute spent until then.
    """

    def __init__(self, reason: str, *, partial: Any = None, counters: Any = None) -> None:
        super().__init__(f"Cancelled: {reason}.")
        self.reason = reason
        self.partial = partial
        self.counters = counters

    def attach(self, *, partial: Any = None, counters: Any = None) -> Cancelled:
        """Record work the innermost step knew about (the first one to attach wins)."""
        if self.partial is None and partial is not None:
            self.partial = partial
        if self.counters is None and counters is not None:
            self.counters = counters
        return self


class CancelToken:
    """A thread-safe cancellation flag with an optional deadline, cancelled with any of its parents."""

    def __init__(self, time_budget_s: float | None = None, *, parents: Sequence[CancelToken] = ()) -> None:
        if time_budget_s is not None and not time_budget_s > 0:
            raise ValueError(f"time_budget_s must be positive, got {time_budget_s!r}.")
        self.deadline = None if time_budget_s is None else time.monotonic() + time_budget_s
        self.parents = tuple(parents)
        self._event = threading.Event()
        self._reason: str | None = None
        self.cancelled_at: float | None = None  # monotonic time of cancel(), for measuring latency

    def cancel(self, reason: str = "cancelled") -> None:
        """Ask the work to stop at its next step (idempotent: the first reason is kept)."""
        if not self._event.is_set():
            self._reason = reason
            self.cancelled_at = time.monotonic()
            self._event.set()

    @property
    def reason(self) -> str | None:
        """Why the token is cancelled, or None while it is not."""
        if self._event.is_set():
            return self._reason
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return "deadline"
        return next((r for r in (p.reason for p in self.parents) if r is not None), None)

    @property
    def cancelled(self) -> bool:
        """True once cancelled, past the deadline, or a parent is cancelled."""
        return self.reason is not None

    def remaining_s(self) -> float | None:
        """Seconds to the nearest deadline (this token's or a parent's); None if there is none."""
        own = None if self.deadline is None else self.deadline - time.monotonic()
        values = [v for v in (own, *(p.remaining_s() for p in self.parents)) if v is not None]
        return min(values) if values else None

    def check(self) -> None:
        """Raise ``Cancelled`` if the work should stop."""
        reason = self.reason
        if reason is not None:
            raise Cancelled(reason)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until ``cancel()`` is called (not the deadline) or ``timeout``; returns the flag."""
        return self._event.wait(timeout)

    @contextmanager
    def active(self) -> Iterator[CancelToken]:
        """Make this the token that ``check_cancelled()`` and the engine see in this thread/context."""
        reset = _CURRENT.set(self)
        try:
            yield self
        finally:
            _CURRENT.reset(reset)


def current() -> CancelToken | None:
    """The token active in this context, if any."""
    return _CURRENT.get()


def check_cancelled() -> None:
    """Raise ``Cancelled`` if the active token (if any) is cancelled; a no-op without one."""
    token = _CURRENT.get()
    if token is not None:
        token.check()


@contextmanager
def cancel_scope(
    time_budget_s: float | None = None, token: CancelToken | None = None
) -> Iterator[CancelToken | None]:
    """Activate, for a block, a token cancelled by any of: ``token``, the deadline
    ``time_budget_s`` from now, and the token already active. With neither argument the active
    token (if any) simply stays in force."""
    outer = current()
    if token is None and time_budget_s is None:
        yield outer
        return
    parents = [t for t in (token, outer) if t is not None]
    if time_budget_s is None and len(parents) == 1:
        combined = parents[0]
    else:
        combined = CancelToken(time_budget_s, parents=parents)
    with combined.active():
        yield combined


@contextmanager
def holding(lock: Any, poll_s: float = 0.05) -> Iterator[None]:
    """Acquire ``lock`` for a block, giving up with ``Cancelled`` if the active token is
    cancelled while waiting: cancelled work queued behind a long run never takes the lock."""
    token = current()
    if token is None:
        with lock:
            yield
        return
    while not lock.acquire(timeout=poll_s):
        token.check()
    try:
        token.check()
        yield
    finally:
        lock.release()
