"""DARWIN's per-request caps on a local policy: generated tokens and wall seconds.

When one runs out, the search stops where it is and returns the best answer so far, with
``flags["budget_exhausted"]`` naming the cap (``Budget.reason``).
"""

from __future__ import annotations

import time

from align_chains.engine.counters import ComputeCounters


class BudgetStop(Exception):
    """Raised from a decoding step when a budget would be overrun by the next step."""


class Budget:
    """Per-request caps on generated tokens and wall seconds; remembers which one ran out."""

    def __init__(self, counters: ComputeCounters, max_tokens: int | None, seconds: float | None) -> None:
        self.counters = counters
        self.max_tokens = max_tokens
        self.deadline = None if seconds is None else time.perf_counter() + seconds
        self.reason: str | None = None

    def exhausted(self, next_rows: int) -> bool:
        """Whether a step generating ``next_rows`` tokens must not run."""
        if self.reason is None:
            if self.max_tokens is not None and self.counters.generated_tokens + next_rows > self.max_tokens:
                self.reason = "max_total_tokens"
            elif self.deadline is not None and time.perf_counter() >= self.deadline:
                self.reason = "time_budget_s"
        return self.reason is not None
