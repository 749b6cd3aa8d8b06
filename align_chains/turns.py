"""Fair turns on one model: a policy lock that running requests hand to each other between passes.

Every run on a policy holds its lock (``Policy.lock``), so two runs never compute on the model at
the same time (CPU threads would oversubscribe the cores, GPU memory would hold two peaks of
activations). Held for a whole run, though, the lock makes a four-token request wait for all of
a long DARWIN or SEA run. ``TurnLock`` is that lock, reentrant like an ``RLock``, plus turns:

- a thread runs *taking turns* inside ``taking_turns()`` (the scheduler's workers do, one per
  running group of requests);
- ``pass_turn()`` is called before every forward pass (``engine.forward.run``, which owns every
  pass over a cache): when the calling thread holds a ``TurnLock`` while taking turns and
  another thread taking turns waits for it, the lock goes to the longest-waiting such thread
  and the caller queues behind everyone already waiting; otherwise it returns at once, so a
  lone request pays one check per pass;
- all other work of a run (reward calls, SEA's gradient steps, DARWIN's bookkeeping) happens
  between passes with the lock held, so only one run ever executes model code at a time.

Threads that do not take turns (a chat model called directly from several threads with
concurrent batching off) neither hand the lock over nor receive it mid-run: they wait for it in
arrival order, as with an ``RLock``.
"""

from __future__ import annotations

import contextvars
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

#: set while a thread takes turns: called once per turn the thread hands over (for stats)
_TAKING: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "align_chains_taking_turns", default=None
)
_HELD = threading.local()  # .locks: the TurnLocks this thread holds, innermost last


def _held() -> list[TurnLock]:
    locks = getattr(_HELD, "locks", None)
    if locks is None:
        locks = _HELD.locks = []
    return locks


@dataclass(eq=False)
class _Waiter:
    thread: int
    turns: bool  # taking turns: may be handed the lock mid-run
    resuming: bool = False  # handed the lock over mid-run: waits to finish its run
    count: int = 1  # the recursion depth to restore once granted
    granted: bool = False
    event: threading.Event = field(default_factory=threading.Event)


class TurnLock:
    """A reentrant lock granted in arrival order, that a thread taking turns hands over between
    forward passes to another thread taking turns (``pass_turn``). Counts ``handovers``."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._owner: int | None = None
        self._count = 0
        self._queue: deque[_Waiter] = deque()
        self.handovers = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Take the lock (again, if this thread holds it); False if ``timeout`` passed first."""
        me = threading.get_ident()
        with self._mutex:
            if self._owner == me:
                self._count += 1
                return True
            if self._owner is None and not self._queue:
                self._take(me, 1)
                return True
            if not blocking:
                return False
            waiter = _Waiter(me, _TAKING.get() is not None)
            self._queue.append(waiter)
        return self._wait(waiter, None if timeout is None or timeout < 0 else timeout)

    def _wait(self, waiter: _Waiter, timeout: float | None) -> bool:
        waiter.event.wait(timeout)
        with self._mutex:
            if waiter.granted:
                _held().append(self)
                return True
            self._queue.remove(waiter)  # timed out before its turn
            return False

    def _take(self, thread: int, count: int) -> None:
        self._owner, self._count = thread, count
        _held().append(self)

    def _grant(self, waiter: _Waiter) -> None:
        """Make ``waiter`` the owner (called with the mutex held); it records the lock as held."""
        self._owner, self._count = waiter.thread, waiter.count
        waiter.granted = True
        waiter.event.set()

    def release(self) -> None:
        """Release one level; the last one passes the lock to the longest waiter, a run that
        handed it over mid-run first (a thread not taking turns still waits for whole runs)."""
        with self._mutex:
            if self._owner != threading.get_ident():
                raise RuntimeError("cannot release a TurnLock this thread does not hold")
            self._count -= 1
            if self._count:
                return
            _held().remove(self)
            self._owner = None
            nxt = next((w for w in self._queue if w.resuming), self._queue[0] if self._queue else None)
            if nxt is not None:
                self._queue.remove(nxt)
                self._grant(nxt)

    def hand_over(self) -> bool:
        """Give the lock to the longest-waiting thread taking turns, then wait for it back (the
        caller queues behind every thread already waiting). False, at once, when nobody taking
        turns waits. Only the holder calls this, between passes."""
        me = threading.get_ident()
        with self._mutex:
            if self._owner != me:
                return False
            nxt = next((w for w in self._queue if w.turns), None)
            if nxt is None:
                return False
            self._queue.remove(nxt)
            back = _Waiter(me, True, resuming=True, count=self._count)
            self._queue.append(back)
            _held().remove(self)
            self.handovers += 1
            self._grant(nxt)
        self._wait(back, None)
        return True

    @property
    def waiting(self) -> int:
        """Threads queued for the lock."""
        return len(self._queue)

    def __enter__(self) -> TurnLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextmanager
def taking_turns(on_handover: Callable[[], None] = lambda: None) -> Iterator[None]:
    """Run the block taking turns: its ``TurnLock``s are handed to (and received from) other
    threads taking turns at forward-pass boundaries. ``on_handover`` counts the turns given."""
    reset = _TAKING.set(on_handover)
    try:
        yield
    finally:
        _TAKING.reset(reset)


def pass_turn() -> bool:
    """At a forward-pass boundary: hand the policy's lock over if this thread takes turns, holds
    exactly one ``TurnLock`` (no inner lock to deadlock on) and another thread taking turns waits
    for it; back with the lock held. True when a turn was handed over."""
    counted = _TAKING.get()
    locks = getattr(_HELD, "locks", None)
    if counted is None or not locks or len(locks) != 1:
        return False
    if locks[0].hand_over():
        counted()
        return True
    return False
