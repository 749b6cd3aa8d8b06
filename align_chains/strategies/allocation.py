"""Prompt-adaptive sample allocation (Raman, Asi, Kale, "Adaptive Best-of-N Alignment", 2025).

Pure numpy/scipy, no models, so the allocation can be tested and evaluated on its own:

1. fit a Gaussian kernel density to each prompt's exploration rewards (Scott's rule,
   h = sigma * d^(-1/5), which is scipy's ``gaussian_kde(bw_method="scott")`` in one dimension);
2. estimate V(j) = E[max(best so far, j more samples)] by Monte Carlo from that density;
3. hand out the remaining samples greedily by marginal gain V(a + 1) - V(a). The expected
   maximum is increasing and concave in j, so greedy is optimal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.stats import gaussian_kde


def expected_max_curve(
    rewards: Sequence[float], horizon: int, draws: int = 1024, rng: np.random.Generator | None = None
) -> np.ndarray:
    """V(0..horizon): expected best reward after 0..horizon more samples from the rewards' KDE.

    With fewer than two rewards, or all of them equal (zero bandwidth), there is no evidence
    that another sample can beat the best so far, and the curve is flat.
    """
    values = np.asarray(rewards, dtype=float)
    best = float(values.max())
    if horizon <= 0 or values.size < 2 or np.ptp(values) == 0:
        return np.full(max(horizon, 0) + 1, best)
    kde = gaussian_kde(values, bw_method="scott")
    samples = kde.resample(draws * horizon, seed=rng).reshape(draws, horizon)
    # common random numbers across j: the curve is non-decreasing by construction
    running = np.maximum(np.maximum.accumulate(samples, axis=1), best)
    return np.concatenate([[best], running.mean(axis=0)])


def greedy_allocation(curves: Sequence[np.ndarray], extra: int) -> list[int]:
    """Give ``extra`` samples one at a time to the prompt whose expected max gains most.

    Ties (equal gains, flat curves) go to the prompt with fewer extra samples so far, then to
    the earlier prompt, so identical prompts share the budget evenly.
    """
    allocated = [0] * len(curves)
    for _ in range(extra):
        best, best_key = 0, None
        for i, curve in enumerate(curves):
            a = allocated[i]
            gain = curve[a + 1] - curve[a] if a + 1 < len(curve) else -np.inf
            key = (gain, -a, -i)
            if best_key is None or key > best_key:
                best, best_key = i, key
        allocated[best] += 1
    return allocated


def exploration_size(budget: int, exploration: float, num_prompts: int) -> int:
    """Samples per prompt in stage 1: floor(exploration * budget), within [1, budget].

    With one prompt, or a budget below 2, there is nothing to reallocate: every sample is
    spent up front, which is uniform Best-of-budget.
    """
    if num_prompts == 1 or budget < 2:
        return budget
    return min(budget, max(1, math.floor(exploration * budget + 1e-9)))


def allocate(
    exploration_rewards: Sequence[Sequence[float]],
    budget: int,
    draws: int = 1024,
    rng: np.random.Generator | None = None,
) -> list[int]:
    """Extra samples per prompt, given each prompt's exploration rewards and the average budget."""
    spent = sum(len(r) for r in exploration_rewards)
    extra = budget * len(exploration_rewards) - spent
    if extra <= 0:
        return [0] * len(exploration_rewards)
    rng = rng if rng is not None else np.random.default_rng()
    curves = [expected_max_curve(r, extra, draws, rng) for r in exploration_rewards]
    return greedy_allocation(curves, extra)
