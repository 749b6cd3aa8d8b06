"""Work counters every strategy reports: tokens, forward passes, reward calls, seconds."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass


@dataclass
class ComputeCounters:
    """What a request cost. Reported to users in ``response_metadata['compute']``.

    Strategies fill one per run; a chat model reports it as a dict (``as_dict()``).

    Args:
        prompt_tokens: Prompt tokens run through the policy (prefill).
        generated_tokens: Tokens sampled by the policy, EOS included.
        forward_passes: Policy forward calls (prefill and decode steps).
        reward_calls: Batched calls into the reward model.
        reward_items: Responses scored across those calls.
        seconds: Wall-clock seconds of the strategy run.
        batch_size: Prompts that shared this run's forward passes, reward calls and seconds.
        grammar_mask_seconds: Seconds spent computing grammar token masks (part of ``seconds``).
        reward_tokens: Tokens the reward model read to score this prompt's answers, counted by
            rewards that run a model over token ids (classifier, judge) where a strategy scores
            through the common path (Best-of-N, early rejection, ARGS); 0 otherwise.

    Examples:
        >>> from align_chains import ComputeCounters
        >>> counters = ComputeCounters(prompt_tokens=38, generated_tokens=256, forward_passes=32)
        >>> counters.as_dict()["forward_passes"]
        32
    """

    prompt_tokens: int = 0  # prompt tokens run through the policy (prefill)
    generated_tokens: int = 0  # tokens sampled by the policy, EOS included
    forward_passes: int = 0  # policy forward calls (prefill and decode steps)
    reward_calls: int = 0  # batched calls into the reward model
    reward_items: int = 0  # responses scored across those calls
    seconds: float = 0.0  # wall-clock seconds of the strategy run
    batch_size: int = 1  # prompts that shared this run's forward passes, reward calls and seconds
    grammar_mask_seconds: float = 0.0  # of ``seconds``: computing and applying grammar token masks
    reward_tokens: int = 0  # tokens the reward model read for this prompt's answers (where counted)

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

    def __add__(self, other: ComputeCounters) -> ComputeCounters:
        """The work of two runs together (e.g. a retried request): sums, and the larger batch."""
        return ComputeCounters(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            generated_tokens=self.generated_tokens + other.generated_tokens,
            forward_passes=self.forward_passes + other.forward_passes,
            reward_calls=self.reward_calls + other.reward_calls,
            reward_items=self.reward_items + other.reward_items,
            seconds=self.seconds + other.seconds,
            batch_size=max(self.batch_size, other.batch_size),
            grammar_mask_seconds=self.grammar_mask_seconds + other.grammar_mask_seconds,
            reward_tokens=self.reward_tokens + other.reward_tokens,
        )
