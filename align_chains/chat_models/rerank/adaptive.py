"""Adaptive Best-of-N over a wrapped chat model (Raman, Asi, Kale 2025), see ``strategies/allocation.py``.

A batch of prompts shares a budget of ``budget`` samples per prompt on average: each prompt
gets ``exploration_size`` samples first, all scored in one reward call; the rest of the budget
goes to the prompts whose best answer is most likely to improve (``allocate``), sampled in one
more pool and scored in one more reward call. A single prompt has nothing to reallocate.
"""

from __future__ import annotations

import numpy as np

from align_chains.chat_models.rerank.uniform import Samples, UniformSearch
from align_chains.strategies.allocation import allocate, exploration_size


class AdaptiveSearch(UniformSearch):
    """Uniform sampling of an exploration round, then the rest of the budget where it helps most."""

    def _budget(self) -> int:
        return self.settings.budget or self.settings.n

    def first_round(self, num_prompts: int) -> int:
        return exploration_size(self._budget(), self.settings.exploration, num_prompts)

    def async_samples(self) -> int:
        return self._budget()  # one prompt: nothing to reallocate, the whole budget at once

    def more(self, samples: list[Samples]) -> list[int]:
        """The rest of the budget by expected gain; a prompt with no successful sample gets none."""
        if len(samples) < 2:
            return [0] * len(samples)
        counts = [0] * len(samples)
        ok = [r for r, state in enumerate(samples) if state.scores]
        extra = allocate([samples[r].scores for r in ok], self._budget(), rng=np.random.default_rng(0))
        for r, e in zip(ok, extra, strict=True):
            counts[r] = e
        explored = self.first_round(len(samples))
        for state, count in zip(samples, counts, strict=True):
            state.details = {"exploration_samples": explored, "extra_samples": count}
        return counts
