"""Summaries of evaluation cells: means with bootstrap confidence intervals over prompts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def bootstrap_ci(
    values: Sequence[float], *, resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean, resampling prompts with replacement."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return (float("nan"), float("nan"))
    if data.size == 1:
        return (float(data[0]), float(data[0]))
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return (float(low), float(high))


def win(value: float, baseline: float) -> float:
    """1 for a win, 0.5 for a tie, 0 for a loss."""
    return 1.0 if value > baseline else 0.5 if value == baseline else 0.0


def summarise(cells: Sequence[dict[str, Any]], baseline: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One setting's row: mean rewards and win rates (with CIs) and mean compute per prompt.

    ``baseline`` maps prompt id -> the plain-sample cell of that prompt.
    """
    paired = [c for c in cells if c["prompt"] in baseline]
    rewards = [c["reward"] for c in cells]
    holdouts = [c["holdout"] for c in cells]
    wins = [win(c["reward"], baseline[c["prompt"]]["reward"]) for c in paired]
    holdout_wins = [win(c["holdout"], baseline[c["prompt"]]["holdout"]) for c in paired]

    def mean_ci(values: Sequence[float]) -> dict[str, Any]:
        if not values:
            return {"mean": None, "ci": None}
        return {"mean": float(np.mean(values)), "ci": list(bootstrap_ci(values))}

    compute_keys = ("generated_tokens", "forward_passes", "reward_calls", "reward_items", "seconds")
    row = {
        "prompts": len(cells),
        "reward": mean_ci(rewards),
        "holdout": mean_ci(holdouts),
        "win_rate": mean_ci(wins),
        "holdout_win_rate": mean_ci(holdout_wins),
        "compute": {k: float(np.mean([c["per_prompt"][k] for c in cells])) for k in compute_keys},
    }
    # rates over the cells that have the field (tasks: success; every answer: the fluency gate)
    rates = (("success_rate", "success"), ("constraint_rate", "constraint_met"), ("fluent_rate", "fluent"))
    for name, key in rates:
        values = [float(c[key]) for c in cells if c.get(key) is not None]
        if values:
            row[name] = mean_ci(values)
    return row
