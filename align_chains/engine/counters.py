"""Work counters every strategy reports: tokens, forward passes, reward calls, seconds."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass


@dataclass
class ComputeCounters:
    """What a request cost. Reported to users in ``response_metadata['compute']``."""

    prompt_tokens: int = 0  # prompt tokens run through the policy (prefill)
    generated_tokens: int = 0  # tokens sampled by the policy, EOS included
    forward_passes: int = 0  # policy forward calls (prefill and decode steps)
    reward_calls: int = 0  # batched calls into the reward model
    reward_items: int = 0  # responses scored across those calls
    seconds: float = 0.0  # wall-clock seconds of the strategy run
    batch_size: int = 1  # prompts that shared this run's forward passes, reward calls and seconds

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)

    @contextmanager
    def timed(self) -> Iterator[None]:
        """Add the wall time of the block to ``seconds``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start
